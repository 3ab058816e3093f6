"""The discrete-event simulation of a serving cluster (SimPy): P prefill instances, D decode
instances, the links between them, and a request stream. Times are seconds of simulated
time; sizes are tokens and bytes.

A request's life (docs/serving.md):
1. arrival; rejected at once (and counted) if it can never be served: prompt longer than
   a prefill instance holds, or prompt + output - 1 positions more than a decode
   instance's `max_context`, or more KV than its pool;
2. FCFS prefill queue shared by the P prefill instances; an idle instance takes the head
   request and, while the batch stays within `prefill_token_budget` prompt tokens (and
   `prefill_max_batch` requests), the next ones in order; the batch costs
   `costs.prefill_seconds(total tokens)`. The first token is produced here: TTFT =
   prefill end - arrival. A request with one output token is done.
   With `prefill_chunk` C (chunked prefill) an instance runs iterations instead: each
   takes, within the token budget (default C) and `prefill_max_batch` requests, one chunk
   of at most C tokens of each request it has started (oldest first, a started request
   stays on its instance: its KV is there), then first chunks of queued requests (FCFS);
   an iteration costs the sum of `costs.prefill_chunk_seconds(n, past)` of its chunks. A
   request leaves the prefill queue when its first chunk starts and its prefill ends
   with its last chunk. With `overlap_kv`, a request admitted to decode when its first
   chunk starts (as below) sends each chunk's KV (`kv_bytes(n)`) as soon as the chunk's
   iteration ends, one flow per chunk; its transfer ends when the last chunk's bytes
   have arrived (then the link latency and the layout);
3. FCFS decode admission: the head request goes to the decode instance with the most
   free KV among those with room for prompt + output positions (reserved until it ends,
   no preemption) and fewer than `max_batch` users; if none has room it waits, and so do
   the requests behind it;
4. KV transfer: `kv_bytes(prompt)` bytes from the prefill instance's egress (link preset
   bandwidth x prefill chips) into the decode instance's ingress (the decode preset's
   `io_bytes_per_s` x wafers); concurrent transfers share both ends max-min fairly
   (progressive filling); then the link latency and the KV layout in the wafer. With
   `overlap_kv` a request admitted when its prefill starts (FCFS, room permitting) streams
   its KV during the prefill, no faster than the layers produce it (an even share of the
   batch's seconds per layer): a flow capped at bytes / prefill seconds until the end;
5. continuous batching: the request joins its decode instance's batch at the next step
   boundary; each step costs `costs.decode_steps` for the batch's KV lengths and gives
   each user one token; after output - 1 steps it is done. TPOT = (end - first token) /
   (output - 1).

Between batch changes a decode instance does not schedule one event per step: it computes
the end times of the steps up to the next completion at once (`Costs.decode_run`) and is
woken early only when a request joins (it then finishes the step in flight). The result
is the same as stepping one event per token.

`colocated=True` is the non-disaggregated baseline: P instances run both phases on the
same chips (no link); an instance runs a prefill batch whenever the head of the prefill
queue fits its KV pool (prefill first, as vLLM), else decode steps.
"""

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from emulator.serve.costs import Costs
from emulator.serve.workload import Workload

# request status codes
PENDING, DONE, REJECTED = 0, 1, 2
REJECT_REASONS = ("prompt longer than a prefill instance holds",
                  "prompt + output longer than a decode instance's max context",
                  "KV larger than a decode instance's pool")


@dataclass
class Cluster:
    """Shape and policies of the simulated cluster."""

    prefill_instances: int = 1
    decode_instances: int = 1
    prefill_token_budget: int = 0          # 0: the cost model's max_prompt_tokens
    prefill_max_batch: int = 1 << 30       # requests per prefill batch
    egress_bytes_per_s: float = 25e9       # per prefill instance (link x chips)
    ingress_bytes_per_s: float = 150e9     # per decode instance (system I/O x wafers)
    link_latency_s: float = 0.0
    colocated: bool = False                # baseline: both phases on the prefill instances
    overlap_kv: bool = False               # stream each layer's KV while the prefill runs
    prefill_chunk: int = 0                 # chunked prefill: tokens per chunk (0: off)

    def check(self) -> None:
        from emulator.hw.errors import ConfigError

        if self.prefill_instances < 1:
            raise ConfigError(f"--prefill-instances must be >= 1, got {self.prefill_instances}")
        if self.decode_instances < 1 and not self.colocated:
            raise ConfigError(f"--decode-instances must be >= 1, got {self.decode_instances}")
        if self.prefill_chunk < 0:
            raise ConfigError(f"--prefill-chunk must be >= 0, got {self.prefill_chunk}")
        if self.prefill_chunk and self.colocated:
            raise ConfigError("--prefill-chunk: chunked prefill is simulated for the "
                              "disaggregated cluster (the baseline prefills whole prompts)")


@dataclass
class Records:
    """Per-request times (seconds, NaN when not reached) and placement, one entry each."""

    n: int
    status: np.ndarray = None
    reason: np.ndarray = None
    prefill_start: np.ndarray = None
    prefill_end: np.ndarray = None
    transfer_start: np.ndarray = None
    transfer_end: np.ndarray = None
    decode_start: np.ndarray = None
    finish: np.ndarray = None
    prefill_instance: np.ndarray = None
    decode_instance: np.ndarray = None
    slot: np.ndarray = None

    def __post_init__(self):
        nan = np.full(self.n, np.nan)
        for name in ("prefill_start", "prefill_end", "transfer_start", "transfer_end",
                     "decode_start", "finish"):
            setattr(self, name, nan.copy())
        self.status = np.zeros(self.n, np.int8)
        self.reason = np.full(self.n, -1, np.int8)
        for name in ("prefill_instance", "decode_instance", "slot"):
            setattr(self, name, np.full(self.n, -1, np.int32))


@dataclass
class QueueStats:
    """Time-integrated length of one queue (for Little's law and the timeline plot)."""

    name: str
    length: int = 0
    area: float = 0.0          # integral of length over time
    last: float = 0.0
    entered: int = 0
    waits: float = 0.0         # summed time spent inside by those who left
    left: int = 0
    times: list = field(default_factory=list)
    lengths: list = field(default_factory=list)

    def change(self, now: float, delta: int) -> None:
        self.area += self.length * (now - self.last)
        self.last = now
        self.length += delta
        if delta > 0:
            self.entered += delta
        self.times.append(now)
        self.lengths.append(self.length)

    def leave(self, now: float, since: float) -> None:
        self.change(now, -1)
        self.waits += now - since
        self.left += 1

    def close(self, now: float) -> None:
        self.area += self.length * (now - self.last)
        self.last = now


class Network:
    """Fluid KV transfers sharing prefill egress and decode ingress max-min fairly.

    Rates are recomputed whenever a transfer starts or ends; one timeout (tagged with a
    generation number, so that a superseded one does nothing) fires at the next end."""

    def __init__(self, env: simpy.Environment, egress: list, ingress: list):
        self.env = env
        self.cap = {("e", i): c for i, c in enumerate(egress)}
        self.cap.update({("i", j): c for j, c in enumerate(ingress)})
        # id -> [remaining bytes, src key, dst key, callback, rate, bytes, own cap or None]
        self.flows = {}
        self.last = 0.0
        self.generation = 0
        self.busy_bytes = np.zeros(len(ingress))
        self.active_time = np.zeros(len(ingress))
        self.next_id = 0

    def send(self, src: int, dst: int, nbytes: float, callback=None,
             cap: float | None = None) -> simpy.Event | None:
        """Start moving `nbytes` from egress src to ingress dst; `callback()` is called when
        they have arrived (without a callback, an event that fires then is returned).
        `cap`: the flow's own rate limit in bytes/s (the rate its bytes are produced at);
        `uncap(self.last_id)` lifts it. The flow's id is `self.last_id`."""
        self.last_id = self.next_id
        self._advance()
        done = None
        if callback is None:
            done = self.env.event()
            callback = done.succeed
        self.flows[self.next_id] = [float(nbytes), ("e", src), ("i", dst), callback, 0.0,
                                    float(nbytes), cap]
        self.next_id += 1
        self._rates()
        self._schedule()
        return done

    def uncap(self, fid: int) -> None:
        """Lift flow fid's own rate cap (its bytes are all produced now)."""
        if fid in self.flows:
            self._advance()
            self.flows[fid][6] = None
            self._rates()
            self._schedule()

    def _schedule(self) -> None:
        self.generation += 1
        if not self.flows:
            return
        dt = min(f[0] / f[4] for f in self.flows.values())
        event = self.env.timeout(max(dt, 0.0))
        event.callbacks.append(lambda _e, g=self.generation: self._fire(g))

    def _fire(self, generation: int) -> None:
        if generation != self.generation:
            return
        self._advance()
        # done: within a billionth of its bytes, or of time the clock can still resolve
        eps = 1e-12 * max(1.0, self.env.now)
        finished = [fid for fid, f in self.flows.items()
                    if f[0] <= 1e-9 * f[5] or f[0] <= f[4] * eps]
        callbacks = [self.flows.pop(fid)[3] for fid in finished]
        if self.flows:
            self._rates()
        self._schedule()
        for callback in callbacks:
            callback()

    def _advance(self) -> None:
        dt = self.env.now - self.last
        self.last = self.env.now
        if dt <= 0 or not self.flows:
            return
        active = set()
        for flow in self.flows.values():
            moved = flow[4] * dt
            flow[0] -= moved
            j = flow[2][1]
            self.busy_bytes[j] += moved
            active.add(j)
        for j in active:
            self.active_time[j] += dt

    def _rates(self) -> None:
        """Progressive filling: raise every unfrozen flow's rate together until a resource
        saturates, freeze the flows through it, repeat (max-min fair shares)."""
        flows = self.flows
        if len(flows) == 1:
            flow = next(iter(flows.values()))
            flow[4] = min(self.cap[flow[1]], self.cap[flow[2]], flow[6] or math.inf)
            return
        left, users = {}, {}
        for fid, flow in flows.items():
            for key in (flow[1], flow[2]):
                if key not in users:
                    users[key] = []
                    left[key] = self.cap[key]
                users[key].append(fid)
            if flow[6] is not None:
                users[("c", fid)] = [fid]
                left[("c", fid)] = flow[6]
        while users:
            key = min(users, key=lambda k: left[k] / len(users[k]))
            share = left[key] / len(users[key])
            for fid in users.pop(key):
                flow = flows[fid]
                flow[4] = share
                for other in (flow[1], flow[2], ("c", fid)):
                    if other != key and other in users:
                        users[other].remove(fid)
                        left[other] -= share
                        if not users[other]:
                            del users[other]


class DecodeBatch:
    """The running batch of one instance: users' KV lengths and steps left; steps a whole
    stretch up to the next completion in one event (module docstring)."""

    def __init__(self, costs: Costs, max_batch: int):
        self.costs = costs
        self.ids = []
        self.ctx = np.zeros(0, np.int64)
        self.left = np.zeros(0, np.int64)
        self.slots = list(range(max_batch - 1, -1, -1)) if max_batch < 4096 else None
        self.slot_of = {}
        self.busy = 0.0

    def __len__(self) -> int:
        return len(self.ids)

    def join(self, rid: int, context: int, steps: int) -> int:
        """Add a user with KV length `context` and `steps` steps to go; its slot number."""
        self.ids.append(rid)
        self.ctx = np.append(self.ctx, context)
        self.left = np.append(self.left, steps)
        slot = self.slots.pop() if self.slots else len(self.ids) - 1
        self.slot_of[rid] = slot
        return slot

    def plan(self) -> np.ndarray:
        """End times (from now) of the steps up to the next completion."""
        return self.costs.decode_run(self.ctx + 1, int(self.left.min()))

    def advance(self, steps: int, seconds: float) -> list:
        """Apply `steps` finished steps taking `seconds`; the ids that are done."""
        self.busy += seconds
        self.ctx += steps
        self.left -= steps
        done_mask = self.left <= 0
        if not done_mask.any():
            return []
        done = [rid for rid, d in zip(self.ids, done_mask, strict=True) if d]
        keep = ~done_mask
        self.ids = [rid for rid, k in zip(self.ids, keep, strict=True) if k]
        self.ctx, self.left = self.ctx[keep], self.left[keep]
        for rid in done:
            slot = self.slot_of.pop(rid)
            if self.slots is not None:
                self.slots.append(slot)
        return done


class Simulation:
    """One run: build with the workload, costs and cluster, then `run()`."""

    def __init__(self, workload: Workload, costs: Costs, cluster: Cluster,
                 closed: tuple[int, float] | None = None, seed: int = 0):
        """`closed=(users, think_s)`: a closed system instead of the workload's arrival
        times: `users` clients each send a request, wait for its end, think for an
        exponential time of mean `think_s` and send the next (the workload's requests in
        order, their lengths as given), until all are sent."""
        cluster.check()
        self.closed, self.seed = closed, seed
        self.done_events = {}
        self.next_request = 0
        self.thinks = []
        self.client_of = np.full(len(workload), -1, np.int32)
        self.w, self.cluster = workload, cluster
        self.costs = costs
        self.n = len(workload)
        # Python lists: element access in the event loop is several times faster than numpy
        self.arrival = workload.arrival_s.tolist()
        self.prompt = workload.prompt_tokens.tolist()
        self.output = workload.output_tokens.tolist()
        self.rec = Records(self.n)
        self.env = simpy.Environment()
        self.budget = cluster.prefill_token_budget or cluster.prefill_chunk \
            or costs.max_prompt_tokens
        self.prefilled = [0] * self.n           # chunked prefill: prompt tokens done
        self.streams: dict = {}                 # chunked + overlap_kv: i -> [j, flows, done]
        self.started = [[] for _ in range(cluster.prefill_instances)]   # per instance
        self.prefill_queue = deque()
        self.decode_queue = deque()
        self.q_prefill = QueueStats("prefill queue")
        self.q_decode = QueueStats("decode admission queue")
        self.q_transfer = QueueStats("KV transfer")
        self.q_batch = QueueStats("decoding")
        self.idle_prefill = []            # events of idle prefill instances
        self.prefill_busy = np.zeros(cluster.prefill_instances)
        self.decode_busy = np.zeros(0)
        self.completed = 0
        self._all_done = self.env.event()
        n_dec = cluster.prefill_instances if cluster.colocated else cluster.decode_instances
        self.kv_free = np.full(n_dec, costs.kv_capacity_tokens, np.int64)
        self.kv_samples = [([0.0], [0.0]) for _ in range(n_dec)]   # per instance: (t, fraction)
        self.users = np.zeros(n_dec, np.int64)          # admitted (incl. in transfer)
        self.batches = [DecodeBatch(costs, costs.max_batch) for _ in range(n_dec)]
        self.pending = [[] for _ in range(n_dec)]
        self.wakes = [self.env.event() for _ in range(n_dec)]
        if not cluster.colocated:
            self.net = Network(self.env,
                               [cluster.egress_bytes_per_s] * cluster.prefill_instances,
                               [cluster.ingress_bytes_per_s] * n_dec)

    # ------------------------------------------------------------------ arrivals

    def _never_fits(self, i: int) -> int:
        c = self.costs
        p, o = self.prompt[i], self.output[i]
        if p > c.max_prompt_tokens:
            return 0
        if o > 1 and p + o - 1 > c.max_context:
            return 1
        if o > 1 and p + o > c.kv_capacity_tokens:
            return 2
        return -1

    def _arrivals(self):
        env, now = self.env, 0.0
        for i in range(self.n):
            gap = self.arrival[i] - now
            if gap > 0:
                yield env.timeout(gap)
            now = self.arrival[i]
            self._arrive(i)

    def _client(self, c: int, rng, think: float):
        """Client c of a closed system (see __init__); records its requests and the think
        times between them (`client_of`, `thinks`)."""
        env, pause = self.env, None
        while self.next_request < self.n:
            if pause is not None:
                self.thinks.append(pause)
            i = self.next_request
            self.next_request += 1
            self.arrival[i] = env.now
            self.client_of[i] = c
            done = env.event()
            self.done_events[i] = done
            self._arrive(i)
            yield done
            pause = rng.exponential(think) if think > 0 else 0.0
            if pause > 0:
                yield env.timeout(pause)

    def _arrive(self, i: int) -> None:
        """Request i arrives now: rejected if it can never fit, else queued for prefill."""
        reason = self._never_fits(i)
        if reason >= 0:
            self.rec.status[i], self.rec.reason[i] = REJECTED, reason
            self.rec.finish[i] = self.env.now
            self._count_done(i)
            return
        self.prefill_queue.append(i)
        self.q_prefill.change(self.env.now, +1)
        self._kick_prefill()

    def _kick_prefill(self) -> None:
        if self.cluster.colocated:
            idle = [j for j, b in enumerate(self.batches) if len(b) == 0 and not self.pending[j]]
            for j in idle[:1] or range(len(self.wakes)):
                if not self.wakes[j].triggered:
                    self.wakes[j].succeed()
            return
        if self.idle_prefill:
            self.idle_prefill.pop().succeed()

    def _count_done(self, i: int) -> None:
        if self.closed:
            self.done_events.pop(i).succeed()
        self.completed += 1
        if self.completed == self.n:
            self._all_done.succeed()

    # ------------------------------------------------------------------ prefill

    def _take_batch(self, fits=None) -> list:
        """Pop the head request and the following ones within the token budget."""
        q, batch, tokens = self.prefill_queue, [], 0
        while q and len(batch) < self.cluster.prefill_max_batch:
            i = q[0]
            p = self.prompt[i]
            if batch and tokens + p > self.budget:
                break
            if fits is not None and not fits(i):
                break
            q.popleft()
            batch.append(i)
            tokens += p
        return batch

    def _prefill_batch(self, k: int, batch: list):
        env, rec = self.env, self.rec
        now = env.now
        for i in batch:
            self.q_prefill.leave(now, self.arrival[i])
            rec.prefill_start[i] = now
            rec.prefill_instance[i] = k
        seconds = self.costs.prefill_seconds(sum(self.prompt[i] for i in batch))
        c = self.cluster
        early = self._admit_early(batch, seconds) if c.overlap_kv and not c.colocated else {}
        yield env.timeout(seconds)
        self.prefill_busy[k] += seconds
        for fid in early.values():
            self.net.uncap(fid)
        return early

    def _admit_early(self, batch: list, seconds: float) -> dict:
        """--overlap-kv: admit the batch's requests to decode as their prefill starts (in
        order, while nobody waits for admission and there is room) and start their KV
        flows capped at the rate the prefill produces the bytes (layers finish evenly over
        the batch's seconds); {request: flow id}."""
        early = {}
        for i in batch:
            if self.output[i] <= 1:
                continue
            j = self._pick_decode(i) if not self.decode_queue else None
            if j is None:
                break
            self._reserve(j, i)
            self.rec.decode_instance[i] = j
            nbytes = self.costs.kv_bytes(self.prompt[i])
            self._transfer(i, j, cap=nbytes / seconds if seconds > 0 else None)
            early[i] = self.net.last_id
        return early

    def _chunk_iteration(self, k: int):
        """One chunked-prefill iteration of instance k (module docstring, 2.)."""
        env, rec, c = self.env, self.rec, self.cluster
        now, budget, chunks = env.now, self.budget, []
        for i in self.started[k]:
            if budget <= 0 or len(chunks) >= c.prefill_max_batch:
                break
            n = min(c.prefill_chunk, self.prompt[i] - self.prefilled[i], budget)
            chunks.append((i, n))
            budget -= n
        q = self.prefill_queue
        while q and budget > 0 and len(chunks) < c.prefill_max_batch:
            i = q.popleft()
            self.q_prefill.leave(now, self.arrival[i])
            rec.prefill_start[i] = now
            rec.prefill_instance[i] = k
            self.started[k].append(i)
            if c.overlap_kv and self.output[i] > 1 and not self.decode_queue:
                self._stream_start(i)
            n = min(c.prefill_chunk, self.prompt[i], budget)
            chunks.append((i, n))
            budget -= n
        seconds = sum(self.costs.prefill_chunk_seconds(n, self.prefilled[i])
                      for i, n in chunks)
        yield env.timeout(seconds)
        self.prefill_busy[k] += seconds
        now = env.now
        for i, n in chunks:
            self.prefilled[i] += n
            last = self.prefilled[i] == self.prompt[i]
            if i in self.streams:
                self._stream_chunk(i, n, last)
            if not last:
                continue
            self.started[k].remove(i)
            rec.prefill_end[i] = now
            if self.output[i] <= 1:
                self._finish(i, now)
            elif i not in self.streams:
                self.decode_queue.append(i)
                self.q_decode.change(now, +1)

    def _stream_start(self, i: int) -> None:
        """Chunked prefill with overlap_kv: admit request i to decode as its first chunk
        starts, if a decode instance has room (nobody waits ahead of it)."""
        j = self._pick_decode(i)
        if j is None:
            return
        self._reserve(j, i)
        self.rec.decode_instance[i] = j
        self.rec.transfer_start[i] = self.env.now
        self.q_transfer.change(self.env.now, +1)
        self.streams[i] = [j, 0, False]

    def _stream_chunk(self, i: int, n: int, last: bool) -> None:
        """Send the KV of a chunk of n tokens of streaming request i just prefilled."""
        state = self.streams[i]
        state[1] += 1
        state[2] = last
        self.net.send(int(self.rec.prefill_instance[i]), state[0], self.costs.kv_bytes(n),
                      lambda: self._stream_sent(i))

    def _stream_sent(self, i: int) -> None:
        state = self.streams[i]
        state[1] -= 1
        if state[2] and state[1] == 0:
            del self.streams[i]
            self._transfer_sent(i, state[0])

    def _prefill_instance(self, k: int):
        env, rec = self.env, self.rec
        while True:
            if not self.prefill_queue and not self.started[k]:
                wake = env.event()
                self.idle_prefill.append(wake)
                yield wake
                continue
            if self.cluster.prefill_chunk:
                yield from self._chunk_iteration(k)
                self._admit()
                continue
            batch = self._take_batch()
            early = yield from self._prefill_batch(k, batch)
            now = env.now
            for i in batch:
                rec.prefill_end[i] = now
                if self.output[i] <= 1:
                    self._finish(i, now)
                elif i not in early:
                    self.decode_queue.append(i)
                    self.q_decode.change(now, +1)
            self._admit()

    # ------------------------------------------------------------------ admission + link

    def _room(self, j: int, i: int) -> bool:
        need = self.prompt[i] + self.output[i]
        return self.kv_free[j] >= need and self.users[j] < self.costs.max_batch

    def _reserve(self, j: int, i: int) -> None:
        self.kv_free[j] -= self.prompt[i] + self.output[i]
        self.users[j] += 1
        self._kv_sample(j)

    def _release(self, j: int, i: int) -> None:
        self.kv_free[j] += self.prompt[i] + self.output[i]
        self.users[j] -= 1
        self._kv_sample(j)

    def _kv_sample(self, j: int) -> None:
        t, frac = self.kv_samples[j]
        t.append(self.env.now)
        frac.append(1.0 - int(self.kv_free[j]) / self.costs.kv_capacity_tokens)

    def _pick_decode(self, i: int) -> int | None:
        """The decode instance with the most free KV (lowest index on ties) that has room
        for request i's prompt + output positions and a batch slot; None if none has."""
        free, users, limit = self.kv_free, self.users, self.costs.max_batch
        need = self.prompt[i] + self.output[i]
        j, best = None, -1
        for k in range(free.size):
            if free[k] > best and free[k] >= need and users[k] < limit:
                j, best = k, free[k]
        return j

    def _admit(self) -> None:
        """FCFS decode admission (module docstring, step 3)."""
        q = self.decode_queue
        while q:
            i = q[0]
            j = self._pick_decode(i)
            if j is None:
                return
            q.popleft()
            self.q_decode.leave(self.env.now, self.rec.prefill_end[i])
            self._reserve(j, i)
            self.rec.decode_instance[i] = j
            self._transfer(i, j)

    def _transfer(self, i: int, j: int, cap: float | None = None) -> None:
        """Start request i's KV transfer to decode instance j (callbacks, no process)."""
        rec, c, now = self.rec, self.costs, self.env.now
        rec.transfer_start[i] = now
        self.q_transfer.change(now, +1)
        self.net.send(int(rec.prefill_instance[i]), j, c.kv_bytes(self.prompt[i]),
                      lambda: self._transfer_sent(i, j), cap)

    def _transfer_sent(self, i: int, j: int) -> None:
        tail = self.cluster.link_latency_s + self.costs.layout_seconds(self.prompt[i])
        if tail > 0:
            self.env.timeout(tail).callbacks.append(lambda _e: self._transfer_done(i, j))
        else:
            self._transfer_done(i, j)

    def _transfer_done(self, i: int, j: int) -> None:
        now = self.env.now
        self.rec.transfer_end[i] = now
        self.q_transfer.leave(now, self.rec.transfer_start[i])
        self.pending[j].append(i)
        if not self.wakes[j].triggered:
            self.wakes[j].succeed()

    # ------------------------------------------------------------------ decode

    def _join_pending(self, j: int) -> None:
        rec, batch, now = self.rec, self.batches[j], self.env.now
        for i in self.pending[j]:
            rec.decode_start[i] = now
            rec.slot[i] = batch.join(i, self.prompt[i], self.output[i] - 1)
            self.q_batch.change(now, +1)
        self.pending[j] = []

    def _decode_stretch(self, j: int):
        """Run the batch of instance j up to its next completion or an early wake-up."""
        env, batch = self.env, self.batches[j]
        ends = batch.plan()
        start = env.now
        wake = self.wakes[j]
        yield env.timeout(float(ends[-1])) | wake
        elapsed = env.now - start
        if elapsed >= ends[-1] * (1 - 1e-12):
            steps = len(ends)
        else:
            steps = int(np.searchsorted(ends, elapsed, side="right"))
            boundary = float(ends[steps - 1]) if steps else 0.0
            if elapsed > boundary:                     # finish the step in flight
                yield env.timeout(float(ends[steps]) - elapsed)
                steps += 1
            if steps == 0:                             # woken as the stretch began
                return
        now = env.now
        for i in batch.advance(steps, float(ends[steps - 1])):
            self.q_batch.leave(now, self.rec.decode_start[i])
            self._release(j, i)
            self._finish(i, now)

    def _decode_instance(self, j: int):
        env = self.env
        while True:
            if self.wakes[j].triggered:
                self.wakes[j] = env.event()
            self._join_pending(j)
            if len(self.batches[j]) == 0:
                yield self.wakes[j]
                continue
            yield from self._decode_stretch(j)
            self._admit()

    def _colocated_instance(self, j: int):
        """Baseline instance: prefill when the queue's head fits here, else decode."""
        env, rec = self.env, self.rec
        while True:
            if self.wakes[j].triggered:
                self.wakes[j] = env.event()
            batch = self._take_batch(fits=lambda i, j=j: self._claim(j, i))
            if batch:
                yield from self._prefill_batch(j, batch)
                now = env.now
                for i in batch:
                    rec.prefill_end[i] = now
                    if self.output[i] <= 1:
                        self._finish(i, now)
                    else:
                        rec.transfer_start[i] = rec.transfer_end[i] = now
                        self.pending[j].append(i)
                self._join_pending(j)
                continue
            self._join_pending(j)
            if len(self.batches[j]) == 0:
                yield self.wakes[j]
                continue
            yield from self._decode_stretch(j)
            if self.wakes[j].triggered:
                self.wakes[j] = env.event()

    def _claim(self, j: int, i: int) -> bool:
        """Baseline: reserve KV on instance j for request i if it has room (True)."""
        if self.output[i] <= 1:
            return True
        if not self._room(j, i):
            return False
        self._reserve(j, i)
        self.rec.decode_instance[i] = j
        return True

    def _finish(self, i: int, now: float) -> None:
        self.rec.finish[i] = now
        self.rec.status[i] = DONE
        self._count_done(i)

    # ------------------------------------------------------------------ run

    def run(self) -> "Simulation":
        """Simulate until every request is done or rejected; returns self."""
        env, c = self.env, self.cluster
        if self.closed:
            users, think = self.closed
            rng = np.random.default_rng(self.seed)
            for client in range(users):
                env.process(self._client(client, rng, think))
        else:
            env.process(self._arrivals())
        if c.colocated:
            for j in range(c.prefill_instances):
                env.process(self._colocated_instance(j))
        else:
            for k in range(c.prefill_instances):
                env.process(self._prefill_instance(k))
            for j in range(c.decode_instances):
                env.process(self._decode_instance(j))
        if self.n:
            env.run(until=self._all_done)
        self.end = env.now
        if self.closed:
            w = self.w
            self.w = Workload(np.array(self.arrival), w.prompt_tokens, w.output_tokens,
                              f"{w.source}, closed: {self.closed[0]} users, think "
                              f"{self.closed[1]:g} s")
        for q in (self.q_prefill, self.q_decode, self.q_transfer, self.q_batch):
            q.close(self.end)
        self.decode_busy = np.array([b.busy for b in self.batches])
        if not c.colocated:
            self.net._advance()
        return self
