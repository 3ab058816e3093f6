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
Numba version used by `simulate` (tests check that both agree).
"""

from dataclasses import dataclass

import numpy as np

from emulator.prefill import instructions as instr
from emulator.prefill.kernels import KIND_LS, KIND_MM, KIND_PLAIN, schedule_kernel


@dataclass
class Schedule:
    """Start and ready times (TensorE cycles) of every instruction, and queue busy time."""

    start: np.ndarray
    ready: np.ndarray
    busy: np.ndarray          # union of busy intervals per queue, cycles
    queue: np.ndarray         # queue index of every instruction

    @property
    def cycles(self) -> int:
        """Makespan: the cycle at which the last result is ready."""
        return int(self.ready.max()) if len(self.ready) else 0


def instruction_kinds(rows: np.ndarray) -> np.ndarray:
    """Kernel kind of every instruction row (plain, LoadStationary, MultiplyMoving)."""
    kind = np.full(len(rows), KIND_PLAIN, np.int8)
    kind[rows["op"] == instr.LOAD_STATIONARY] = KIND_LS
    kind[rows["op"] == instr.MULTIPLY_MOVING] = KIND_MM
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
    """Run the engine model over a program (`engine`: 'numba' or 'reference')."""
    rows = program.instr
    queue = program.queue_ids()
    args = (queue, instruction_kinds(rows), rows["cost"].astype(np.int64),
            rows["lat"].astype(np.int64), np.ascontiguousarray(rows["dep"]),
            program.num_queues)
    run = schedule_kernel if engine == "numba" else schedule_reference
    start, ready, busy = run(*args)
    return Schedule(start, ready, busy, queue)
