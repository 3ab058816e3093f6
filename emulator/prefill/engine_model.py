"""The engine model: in-order engine queues running concurrently under data dependencies.

Rules (docs/prefill.md, "Engine model"), times in TensorE cycles:

- An instruction starts when its queue has issued the previous instruction and finished it
  (ordinary queues: DMA, Scalar, Vector, collectives) and when every producer it depends on
  is ready. It then occupies the queue for `cost` cycles; its result is ready `lat` cycles
  after that (DMA latency is pipelined: the queue moves on while the data is in flight).
- TensorE has two stationary buffers. LoadStationary fills the buffer not in use; it waits
  for the previous LoadStationary and for the last MultiplyMoving that read that buffer, so
  it runs in the background of the MultiplyMoving before it. MultiplyMoving waits for the
  previous MultiplyMoving (its initiation interval) and for the load of its stationary.
- Issue is in order on every queue: nothing starts before the previous instruction started.

`schedule_reference` states these rules plainly in Python; `kernels.schedule_kernel` is the
Numba version used by `simulate` on explicit streams (tests check that both agree).

Memoised form (timing-only programs, docs/prefill.md "Host speed"): a program may mark loop
bodies as repeated segments (`Program.segments`) and its decoder layers 2.. as repeats of
layer 1 (`Program.layer_plan`). `kernels.schedule_chunk` runs the segments and fast-forwards
them once their instances become exact shifts of each other; `simulate` runs layer after
layer the same way and fast-forwards the remaining layers once a layer is an exact shift of
the one before (every ready time and every queue state moved by the same delta). The result
equals the schedule of the fully written-out stream (tests compare both).
"""

from dataclasses import dataclass

import numpy as np

from emulator.prefill import instructions as instr
from emulator.prefill import kernels
from emulator.prefill.kernels import KIND_LS, KIND_MM, KIND_PLAIN, schedule_kernel


@dataclass
class Schedule:
    """Start and ready times (TensorE cycles) of every stored instruction, queue busy time
    and the span of every operator.

    For a memoised program, `start` is the start of an instruction's first instance and
    `ready` the ready time of its last instance; the layer template holds layer 1's times.
    """

    start: np.ndarray
    ready: np.ndarray
    busy: np.ndarray          # union of busy intervals per queue, cycles
    queue: np.ndarray         # queue index of every instruction
    op_start: np.ndarray = None   # per operator (program.ops): first start
    op_end: np.ndarray = None     # per operator: last ready time
    makespan: int = -1
    simulated_layers: int = 0     # decoder layers simulated before the fast-forward

    @property
    def cycles(self) -> int:
        """Makespan: the cycle at which the last result is ready."""
        if self.makespan >= 0:
            return self.makespan
        return int(self.ready.max()) if len(self.ready) else 0


def instruction_kinds(code: np.ndarray) -> np.ndarray:
    """Kernel kind of every instruction (plain, LoadStationary, MultiplyMoving)."""
    kind = np.full(len(code), KIND_PLAIN, np.int8)
    kind[code["op"] == instr.LOAD_STATIONARY] = KIND_LS
    kind[code["op"] == instr.MULTIPLY_MOVING] = KIND_MM
    return kind


def schedule_reference(queue, kind, cost, lat, dep, n_queues):
    """Pure-Python statement of the engine rules; returns (start, ready, busy) like the kernel."""
    n = len(queue)
    start, ready, busy = [0] * n, [0] * n, [0] * n_queues
    state = [{"free": 0, "issue": 0, "covered": 0, "mm_free": 0, "ls_free": 0,
              "stat_ready": 0, "buf_end": [0, 0], "cur": 0} for _ in range(n_queues)]
    for i in range(n):
        s = state[queue[i]]
        t = max([s["issue"]] + [ready[d] for d in dep[i] if d >= 0])
        if kind[i] == KIND_LS:
            other = 1 - s["cur"]
            t = max(t, s["ls_free"], s["buf_end"][other])
            end = t + int(cost[i])
            s["ls_free"] = s["stat_ready"] = s["buf_end"][other] = end
            s["cur"] = other
        elif kind[i] == KIND_MM:
            t = max(t, s["mm_free"], s["stat_ready"])
            end = t + int(cost[i])
            s["mm_free"] = end
            s["buf_end"][s["cur"]] = max(s["buf_end"][s["cur"]], end)
        else:
            t = max(t, s["free"])
            end = t + int(cost[i])
            s["free"] = end
        s["issue"] = t
        start[i], ready[i] = t, end + int(lat[i])
        busy[queue[i]] += max(0, end - max(t, s["covered"]))
        s["covered"] = max(s["covered"], end)
    return (np.array(start, np.int64), np.array(ready, np.int64),
            np.array(busy, np.int64))


def simulate(program: instr.InstructionStream, engine: str = "numba") -> Schedule:
    """Run the engine model over a program (`engine`: 'numba' or 'reference').

    Explicit programs run through `schedule_kernel` (or `schedule_reference`); memoised ones
    (segments or a layer plan) through `schedule_chunk`, chunk by chunk.
    """
    code = program.instr
    queue = program.queue_ids()
    if len(program.segments) or program.layer_plan is not None:
        if engine != "numba":
            raise ValueError("the reference engine runs explicit programs only")
        return _simulate_memoised(program, queue)
    args = (queue, instruction_kinds(code), code["cost"].astype(np.int64),
            code["lat"].astype(np.int64), np.ascontiguousarray(code["dep"]),
            program.num_queues)
    run = schedule_kernel if engine == "numba" else schedule_reference
    start, ready, busy = run(*args)
    op_start, op_end = op_spans(code["op_id"], start, ready, len(program.ops))
    return Schedule(start, ready, busy, queue, op_start, op_end)


def op_spans(op_id, start, ready, nops, offset=0, out=None):
    """(first start, last ready) per operator id (ids non-decreasing); ids shifted by
    `offset` into the arrays `out` = (op_start, op_end) when given."""
    if out is None:
        out = (np.full(nops, np.iinfo(np.int64).max), np.zeros(nops, np.int64))
    op_id = np.asarray(op_id, np.int64)
    if len(op_id) == 0:
        return out
    present, first = np.unique(op_id, return_index=True)
    order = np.argsort(first)
    present, first = present[order], first[order]
    keep = present >= 0
    lo = np.minimum.reduceat(start, first)[keep]
    hi = np.maximum.reduceat(ready, first)[keep]
    ids = present[keep] + offset
    out[0][ids] = np.minimum(out[0][ids], lo)
    out[1][ids] = np.maximum(out[1][ids], hi)
    return out


def _chunk_deps(code, lo, hi, segments, prev_base):
    """Dependencies of instructions [lo, hi) in chunk-local form (index, kind).

    Inside the chunk: local index, DEP_HERE; into the instance before a segment body:
    slot, DEP_PREV_INSTANCE; before `lo`: index - prev_base, DEP_PREV_CHUNK.
    """
    dep = code["dep"][lo:hi].astype(np.int64)
    kind = np.zeros(dep.shape, np.int64)
    own = np.arange(lo, hi)[:, None]
    for s0, ln, _ in segments:
        rows = slice(s0 - lo, s0 - lo + ln)
        d = dep[rows]
        prev = (d >= s0 - ln) & (d < s0)
        kind[rows] = np.where(prev, kernels.DEP_PREV_INSTANCE, kind[rows])
        dep[rows] = np.where(prev, d - (s0 - ln), d)
    here = (dep >= lo) & (kind == kernels.DEP_HERE)
    before = (dep >= 0) & (dep < lo) & (kind == kernels.DEP_HERE)
    dep = np.where(here, dep - lo, dep)
    dep = np.where(before, dep - prev_base, dep)
    kind = np.where(before, kernels.DEP_PREV_CHUNK, kind)
    if np.any(dep[before] < 0) or np.any((kind == kernels.DEP_HERE) & (dep >= own - lo)):
        raise AssertionError("memoised program: a dependency reaches outside its chunk plan")
    return np.ascontiguousarray(dep), np.ascontiguousarray(kind)


class _Chunk:
    """The kernel inputs of one stored range [lo, hi) of a memoised program."""

    def __init__(self, program, queue, kinds, lo, hi, prev_base):
        code = program.instr
        seg = program.segments
        inside = (seg[:, 0] >= lo) & (seg[:, 0] < hi) if len(seg) else np.zeros(0, bool)
        self.seg = np.ascontiguousarray(seg[inside] if len(seg) else
                                        np.zeros((0, 3), np.int64))
        self.dep, self.kind_dep = _chunk_deps(code, lo, hi, self.seg, prev_base)
        self.seg = self.seg.copy()
        self.seg[:, 0] -= lo
        self.queue = np.ascontiguousarray(queue[lo:hi])
        self.kind = np.ascontiguousarray(kinds[lo:hi])
        self.cost = code["cost"][lo:hi].astype(np.int64)
        self.lat = code["lat"][lo:hi].astype(np.int64)
        self.op_id = code["op_id"][lo:hi]
        self.lo, self.hi = lo, hi

    def run(self, state, busy, prev):
        """Schedule the chunk from `state`; returns (first starts, last ready times)."""
        start, ready, _ = kernels.schedule_chunk(self.queue, self.kind, self.cost, self.lat,
                                                 self.dep, self.kind_dep, self.seg, state,
                                                 busy, prev)
        return start, ready


def _simulate_memoised(program: instr.InstructionStream, queue: np.ndarray) -> Schedule:
    """Chunk by chunk: the prefix (embeddings, layer 0), layer 1 repeated, the final part."""
    code = program.instr
    n = len(code)
    kinds = instruction_kinds(code)
    nq = program.num_queues
    state = np.zeros((nq, kernels.STATE_COLS), np.int64)
    busy = np.zeros(nq, np.int64)
    nops = len(program.ops)
    spans = (np.full(nops, np.iinfo(np.int64).max), np.zeros(nops, np.int64))
    start = np.zeros(n, np.int64)
    ready = np.zeros(n, np.int64)
    plan = program.layer_plan
    t0, tlen, layers, opl = (n, 0, 1, 0) if plan is None else plan
    head = _Chunk(program, queue, kinds, 0, t0, 0)
    start[:t0], ready[:t0] = head.run(state, busy, np.zeros(1, np.int64))
    op_spans(head.op_id, start[:t0], ready[:t0], nops, out=spans)
    makespan = int(ready[:t0].max()) if t0 else 0
    last, simulated = ready[:t0], 1
    if layers > 1 and tlen:
        body = _Chunk(program, queue, kinds, t0, t0 + tlen, t0 - tlen)
        prev = np.zeros(tlen, np.int64)
        lo = max(0, t0 - tlen)
        prev[lo - (t0 - tlen):] = ready[lo:t0]
        before = prev_ready = None
        k = 1
        while k < layers:
            before, busy_before = state.copy(), busy.copy()
            s_k, r_k = body.run(state, busy, prev)
            offset = (k - 1) * opl
            op_spans(body.op_id, s_k, r_k, nops, offset=offset, out=spans)
            if k == 1:
                start[t0:t0 + tlen], ready[t0:t0 + tlen] = s_k, r_k
            makespan = max(makespan, int(r_k.max()))
            prev_ready, prev = prev, r_k
            simulated = k + 1
            k += 1
            if k - 1 >= 2 and k < layers:
                delta = int(r_k[0] - prev_ready[0])
                used = np.zeros(nq, np.bool_)
                used[body.queue] = True
                if delta > 0 and np.all(r_k - prev_ready == delta) and \
                        kernels._shifted(state, before, used, delta):
                    m = layers - k
                    moved = (state[:, :kernels.TIME_COLS] - before[:, :kernels.TIME_COLS]) == delta
                    state[:, :kernels.TIME_COLS] += np.where(moved, m * delta, 0)
                    busy += m * (busy - busy_before)
                    for j in range(1, m + 1):
                        op_spans(body.op_id, s_k + j * delta, r_k + j * delta, nops,
                                 offset=offset + j * opl, out=spans)
                    prev = r_k + m * delta
                    makespan = max(makespan, int(prev.max()))
                    k = layers
        last = prev
    if t0 + tlen < n:
        base = t0 if (layers > 1 and tlen) else 0
        tail = _Chunk(program, queue, kinds, t0 + tlen, n, base)
        s_f, r_f = tail.run(state, busy, np.ascontiguousarray(last))
        start[t0 + tlen:], ready[t0 + tlen:] = s_f, r_f
        op_spans(tail.op_id, s_f, r_f, nops, out=spans)
        makespan = max(makespan, int(r_f.max()))
    return Schedule(start, ready, busy, queue, spans[0], spans[1], makespan, simulated)
