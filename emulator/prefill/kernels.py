"""Numba kernel of the prefill engine model (semantics: `engine_model.schedule_reference`).

Plain arrays in, plain arrays out. Every instruction i runs on queue `queue[i]`; `kind[i]` is
0 for an ordinary in-order instruction, 1 for LoadStationary and 2 for MultiplyMoving (the
TensorE rules with a double-buffered stationary register, docs/prefill.md). Times are TensorE
cycles; `start` is when the instruction begins occupying its queue and `ready` when its
result may be used (`start + cost + lat`).
"""

import numpy as np

from emulator.jit import njit

KIND_PLAIN, KIND_LS, KIND_MM = 0, 1, 2


@njit
def schedule_kernel(queue, kind, cost, lat, dep, n_queues):
    """Return (start, ready, busy[n_queues]) for one pass over the stream in index order."""
    n = queue.shape[0]
    start = np.zeros(n, np.int64)
    ready = np.zeros(n, np.int64)
    busy = np.zeros(n_queues, np.int64)
    free = np.zeros(n_queues, np.int64)       # plain: end of the last instruction
    issue = np.zeros(n_queues, np.int64)      # start of the last instruction (in-order issue)
    covered = np.zeros(n_queues, np.int64)    # latest end seen (for busy-time union)
    mm_free = np.zeros(n_queues, np.int64)    # end of the last MultiplyMoving
    ls_free = np.zeros(n_queues, np.int64)    # end of the last LoadStationary
    stat_ready = np.zeros(n_queues, np.int64)  # end of the load of the current stationary
    buf_end = np.zeros((n_queues, 2), np.int64)  # last use of each stationary buffer
    cur = np.zeros(n_queues, np.int64)        # buffer holding the current stationary
    for i in range(n):
        q = queue[i]
        t = issue[q]
        for j in range(dep.shape[1]):
            d = dep[i, j]
            if d >= 0 and ready[d] > t:
                t = ready[d]
        k = kind[i]
        if k == KIND_LS:
            other = 1 - cur[q]
            t = max(t, ls_free[q], buf_end[q, other])
            end = t + cost[i]
            ls_free[q] = end
            cur[q] = other
            stat_ready[q] = end
            buf_end[q, other] = end
        elif k == KIND_MM:
            t = max(t, mm_free[q], stat_ready[q])
            end = t + cost[i]
            mm_free[q] = end
            if end > buf_end[q, cur[q]]:
                buf_end[q, cur[q]] = end
        else:
            t = max(t, free[q])
            end = t + cost[i]
            free[q] = end
        issue[q] = t
        start[i] = t
        ready[i] = end + lat[i]
        lo = t if t > covered[q] else covered[q]
        if end > lo:
            busy[q] += end - lo
        if end > covered[q]:
            covered[q] = end
    return start, ready, busy
