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


# ------------------------------------------------------------------ memoised (segmented) form

# Columns of the per-queue state of `schedule_chunk` (TensorE cycles, except CUR).
FREE, ISSUE, COVERED, MM_FREE, LS_FREE, STAT_READY, BUF0, BUF1, CUR = range(9)
STATE_COLS = 9
TIME_COLS = 8                   # FREE..BUF1 are times; CUR is the current stationary buffer
# Kinds of a dependency of `schedule_chunk`.
DEP_HERE, DEP_PREV_INSTANCE, DEP_PREV_CHUNK = 0, 1, 2


@njit
def _issue(i, q, k, c, la, state, busy, start, ready, t):
    """Start instruction i on queue q no earlier than t (its dependencies' readiness)."""
    if t < state[q, ISSUE]:
        t = state[q, ISSUE]
    if k == KIND_LS:
        other = 1 - state[q, CUR]
        t = max(t, state[q, LS_FREE], state[q, BUF0 + other])
        end = t + c
        state[q, LS_FREE] = end
        state[q, CUR] = other
        state[q, STAT_READY] = end
        state[q, BUF0 + other] = end
    elif k == KIND_MM:
        t = max(t, state[q, MM_FREE], state[q, STAT_READY])
        end = t + c
        state[q, MM_FREE] = end
        b = BUF0 + state[q, CUR]
        if end > state[q, b]:
            state[q, b] = end
    else:
        t = max(t, state[q, FREE])
        end = t + c
        state[q, FREE] = end
    state[q, ISSUE] = t
    start[i] = t
    ready[i] = end + la
    lo = t if t > state[q, COVERED] else state[q, COVERED]
    if end > lo:
        busy[q] += end - lo
    if end > state[q, COVERED]:
        state[q, COVERED] = end


@njit
def _dep_time(d, dk, ready, prev_inst, prev_chunk):
    """Ready time of one dependency (-1: none) by its kind."""
    if d < 0:
        return 0
    if dk == DEP_HERE:
        return ready[d]
    if dk == DEP_PREV_INSTANCE:
        return prev_inst[d]
    return prev_chunk[d]


@njit
def _shifted(state, before, used, delta):
    """True when every time column of the queues in `used` moved by exactly `delta`, or
    stayed below the queue's issue time before the instance (so it can never bind), and
    the stationary buffer index is unchanged."""
    for q in range(state.shape[0]):
        if not used[q]:
            continue
        if state[q, CUR] != before[q, CUR]:
            return False
        for col in range(TIME_COLS):
            moved = state[q, col] - before[q, col]
            if moved == delta:
                continue
            if moved == 0 and state[q, col] < before[q, ISSUE]:
                continue
            return False
    return True


@njit
def schedule_chunk(queue, kind, cost, lat, dep, dep_kind, seg, state, busy, prev_chunk):
    """One pass over a stream whose segments repeat, with periodic fast-forward.

    `seg[s] = (start, length, repeats)`: instructions [start, start+length) run `repeats`
    times back to back (the instances of a loop body); a DEP_PREV_INSTANCE dependency names
    a slot of the previous instance (for the first instance: the `length` instructions just
    before the segment, which have the same shape). Instructions after a segment that
    depend on its slots see the last instance. DEP_PREV_CHUNK dependencies read
    `prev_chunk` (the ready times of the chunk before). `state` [queues, STATE_COLS] and
    `busy` [queues] are updated in place.

    After instance r >= 1 of a segment, if every slot's ready time moved by the same
    delta > 0 against instance r - 1, every time column of the queues the body uses moved
    by delta (or stayed below the issue time, where it never binds), and every dependency
    reaching outside the body is ready no later than its queue's issue time, the remaining
    instances are identical to instance r shifted by multiples of delta: the kernel adds
    them in closed form (times + m*delta, busy + m*(busy of one instance)). This is exact.

    Returns (start of each instruction's first instance, ready time of its last instance,
    instances simulated per segment).
    """
    n = queue.shape[0]
    nq = state.shape[0]
    start = np.zeros(n, np.int64)
    ready = np.zeros(n, np.int64)
    first_start = np.zeros(n, np.int64)
    simulated = np.zeros(seg.shape[0], np.int64)
    empty = np.zeros(1, np.int64)
    i = 0
    sidx = 0
    while i < n:
        if sidx < seg.shape[0] and i == seg[sidx, 0]:
            s0, ln, reps = seg[sidx, 0], seg[sidx, 1], seg[sidx, 2]
            used = np.zeros(nq, np.bool_)
            for j in range(s0, s0 + ln):
                used[queue[j]] = True
            prev = ready[s0 - ln:s0].copy() if s0 >= ln else np.zeros(ln, np.int64)
            before = state.copy()
            busy_before = busy.copy()
            r = 0
            while r < reps:
                if r > 0:
                    prev[:] = ready[s0:s0 + ln]
                    before[:, :] = state
                    busy_before[:] = busy
                for j in range(s0, s0 + ln):
                    t = 0
                    for k in range(dep.shape[1]):
                        v = _dep_time(dep[j, k], dep_kind[j, k], ready, prev, prev_chunk)
                        if v > t:
                            t = v
                    _issue(j, queue[j], kind[j], cost[j], lat[j], state, busy, start, ready, t)
                    if r == 0:
                        first_start[j] = start[j]
                r += 1
                if r < 2 or r >= reps:
                    continue
                delta = ready[s0] - prev[0]
                ok = delta > 0
                for j in range(s0, s0 + ln):
                    if not ok:
                        break
                    if ready[j] - prev[j - s0] != delta:
                        ok = False
                        break
                    for k in range(dep.shape[1]):
                        d, dk = dep[j, k], dep_kind[j, k]
                        if d < 0 or dk == DEP_PREV_INSTANCE or (dk == DEP_HERE and d >= s0):
                            continue
                        v = ready[d] if dk == DEP_HERE else prev_chunk[d]
                        if v > before[queue[j], ISSUE]:
                            ok = False
                            break
                if not ok or not _shifted(state, before, used, delta):
                    continue
                m = reps - r
                for q in range(nq):
                    if not used[q]:
                        continue
                    for col in range(TIME_COLS):
                        if state[q, col] - before[q, col] == delta:
                            state[q, col] += m * delta
                    busy[q] += m * (busy[q] - busy_before[q])
                for j in range(s0, s0 + ln):
                    ready[j] += m * delta
                    start[j] += m * delta
                simulated[sidx] = r
                r = reps
            if simulated[sidx] == 0:
                simulated[sidx] = reps
            i = s0 + ln
            sidx += 1
            continue
        t = 0
        for k in range(dep.shape[1]):
            v = _dep_time(dep[i, k], dep_kind[i, k], ready, empty, prev_chunk)
            if v > t:
                t = v
        _issue(i, queue[i], kind[i], cost[i], lat[i], state, busy, start, ready, t)
        first_start[i] = start[i]
        i += 1
    return first_start, ready, simulated
