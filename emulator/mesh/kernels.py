"""Numba kernels of the mesh engine: plain arrays and scalars in, plain arrays out.

`run_mesh` executes a whole program with exactly the scheduling of the reference
interpreter (isa/interpreter.py, which defines semantics and timing):
- 4-ary heaps of ready PEs, one int64 key per entry: (clock << shift) | PE index, so
  keys order as (clock, PE index); PEs woken by a delivery wait in a heap of their own
  (`next_pe`);
- activations: a popped PE runs one leading communication op, then local ops and receives
  until the next send, route, barrier or halt; it then either goes on (it is still the
  earliest) or trades places with the smallest ready key (`trade_places`);
- `send` routes the message depth-first over the router tables at once, reserving links,
  and appends one delivery per destination core to a per-(PE, color) FIFO;
- FIFOs are singly linked lists in a record pool (`rec`, rows of REC_* fields) with a free
  list, so memory is bounded by the messages in flight, not by the messages ever sent;
- functional mode copies each message's values once into a payload pool shared by all its
  deliveries; the pool is compacted (live blocks copied to a fresh array) when full.
`mark k` (a probe: 0 cycles, local) updates marks[k] = (first cycle, last cycle, count).
Only `run_mesh` allocates: `advance_mesh` and its helpers are compiled without reference
counting (`njit(nrt=False)`); when a pool is too small they suspend the PE in hand and
return a NEED_* code, and run_mesh grows the pool and resumes.
Faults are reported through `fault` (FAULT_* code, PE, cycle, details); the Python wrapper
(emulator/mesh/engine.py) turns them into `MeshFault` messages worded like the reference's.
"""

import math

import numpy as np

from emulator.jit import njit, prefetch
from isa.opcodes import (
    PORT_R,
    SLOT_COLOR,
    SLOT_DST,
    SLOT_DST_STRIDE,
    SLOT_N,
    SLOT_SRC0,
    SLOT_SRC0_STRIDE,
    SLOT_SRC1,
    SLOT_SRC1_STRIDE,
    Op,
    Status,
)

# PE status (isa/opcodes.py `Status`, as plain ints for the kernels).
READY, BLOCKED, AT_BARRIER, HALTED = (int(s) for s in Status)
PARKED = max(Status) + 1   # stopped at the stop mark (cfg[CFG_STOP_MARK]); not in the heap

# Opcodes (isa/opcodes.py `Op`), as plain ints for the kernels. Numba freezes module
# globals into the compiled (and cached) kernels: after renumbering `Op`, delete
# emulator/mesh/__pycache__/*.nb* (docs/engines.md, "The JIT switch").
(NOP, VMOV, VADD, VSUB, VMUL, VMAX, VFMA, VSCALE, VADDI, VSET, VEXP, VRSQRT, VRECIP, VSIGMOID,
 RSUM, RMAX, RDOT, SEND, RECV, RECVADD, ROUTE, MOVR, ADDR, DJNZ, JMP, BARRIER, HALT, VGEMV,
 MARK, VGEMM, RARGMAX, LDR, REP) = (int(op) for op in Op)   # VGEMV/VGEMM: column count k
# in S_COLOR (VGEMM: batch count B in S_DST_STRIDE); MARK: id in S_DST; REP: counts in S_N
# and S_COLOR, outer address steps in S_DST/S_SRC0/S_SRC1, inner ones in the stride slots
LAST_VECTOR = RDOT   # opcodes 1..16 are vector ops and reductions

# Operand slots (isa/opcodes.py SLOT_*).
S_DST, S_SRC0, S_SRC1, S_N = SLOT_DST, SLOT_SRC0, SLOT_SRC1, SLOT_N
S_DST_STRIDE, S_SRC0_STRIDE, S_SRC1_STRIDE = SLOT_DST_STRIDE, SLOT_SRC0_STRIDE, SLOT_SRC1_STRIDE
S_COLOR = SLOT_COLOR
EXP_LIMIT = 709.782712893384   # log(DBL_MAX): above it math.exp overflows to inf

# cfg[] indices (filled by engine.kernel_config).
CFG_WIDTH, CFG_HEIGHT, CFG_COLORS, CFG_SRAM, CFG_O, CFG_H, CFG_R, CFG_W = range(8)
CFG_B, CFG_MAX_CYCLES, CFG_FUNCTIONAL, CFG_LIVE, CFG_SHIFT, CFG_SLOTS = 8, 9, 10, 11, 12, 13
CFG_STOP_MARK = 14   # a PE about to execute `mark` with this id parks (-1: never)
CFG_T = 15           # cycles per element of vexp/vrsqrt/vrecip/vsigmoid (0: like any op)
CFG_M = 16           # software cycles of every send and recv (message_overhead)
CFG_SIZE = 17
# Color slots: only colors a router can ever carry get FIFO and router-table entries.
# cfg[CFG_SIZE + color] = its slot (-1: never routed), cfg[CFG_SIZE + colors + slot] = color.

# pes[pe, P_*] columns: per-PE state in one 128-byte row (status and wait color use the
# reference's values). The fields an activation or a delivery reads or writes (clock, pc,
# busy, status, wait color, parameter row) share the first 64-byte cache line, the one
# prefetched; registers r0..r7 (columns P_REGS..P_REGS+7) fill the second. P_PARAM_ROW
# is the PE's row of the parameter table (Program.param_index). P_SLACK tracks what
# a PE did first since it left a cut (emulator/mesh/fast_forward.py): SLACK_AT_CUT before the
# cut's own mark, SLACK_FRESH after it until the first op that other PEs or the results
# could see; then SLACK_ABSORBED + s if that op was a receive that completed when its
# message arrived, s >= 0 cycles after the PE could have completed it, else
# SLACK_TAINTED. SLACK_OFF: not tracked.
P_CLOCK, P_PC, P_BUSY, P_STATUS, P_WAIT, P_PARAM_ROW, P_FINISH, P_SLACK = range(8)
SLACK_OFF, SLACK_AT_CUT, SLACK_FRESH, SLACK_TAINTED, SLACK_ABSORBED = range(5)
P_REGS = 8
P_FIELDS = 16

# stats[] indices: counters, free-list head, payload pool top, barrier bookkeeping, heap size.
ST_INSTRUCTIONS, ST_MESSAGES, ST_RECORDS, ST_PAYLOAD = 0, 1, 2, 3
ST_BARRIER_COUNT, ST_BARRIER_MAX, ST_PEAK_RECORDS, ST_HEAP, ST_NEED = 4, 5, 6, 7, 8
# ... and the suspended state: PE in hand (-1: none), its clock and pc, interrupted route.
ST_CUR_PE, ST_CUR_T, ST_CUR_PC, ST_ROUTE_SP, ST_ROUTE_C, ST_ROUTE_N, ST_ROUTE_OFF = range(9, 16)
# ... and for stopping at a mark (emulator/mesh/fast_forward.py): PEs parked, the largest heap
# key of a `send` executed while some PE was parked (-1: none), the smallest send key.
ST_PARKED, ST_PARKED_SEND_MAX, ST_SEND_MIN = 16, 17, 18
ST_WAKE = 19   # size of the wake heap (see `next_pe`)
ST_QUEUED = 20   # deliveries queued in FIFOs, not yet received
ST_SIZE = 21
NO_KEY = 9223372036854775807   # larger than every heap key (int64 max)

# Return codes of `advance_mesh` and its helpers. NEED_*: a pool must grow (stats[ST_NEED] =
# the size needed); run_mesh grows it and resumes.
DONE, FAULTED, BLOCK = 0, -1, -2
ALL_PARKED = 1   # run_mesh: the heap emptied with PEs parked at the stop mark
NEED_SCRATCH, NEED_STACK, NEED_RECORDS, NEED_PAYLOAD = -3, -4, -5, -6

# Fault codes; fault[] = code, PE, cycle, then details F_A.. (meaning per code).
FAULT_NONE, FAULT_SRAM, FAULT_COUNT, FAULT_COLOR, FAULT_CYCLES, FAULT_JUMP = 0, 1, 2, 3, 4, 5
FAULT_LOOP, FAULT_RX, FAULT_NO_TX, FAULT_OFF_MESH, FAULT_LENGTH = 6, 7, 8, 9, 10
FAULT_REGISTER, FAULT_DEADLOCK, FAULT_UNDELIVERED = 11, 12, 13
FAULT_LDR = 14   # ldr of a value that is not a finite int32 (a: address)
LDR_BOUND = 2.0 ** 31   # isa.opcodes.LDR_LIMIT
F_CODE, F_PE, F_CYCLE, F_A, F_B, F_C, F_D, F_E = range(8)
FAULT_SIZE = 8

# marks[k, M_*] columns: first and last cycle at which mark id k ran (-1: never), count.
M_FIRST, M_LAST, M_COUNT = 0, 1, 2
M_FIELDS = 3

# Record pool fields.
REC_NEXT, REC_LAST, REC_LEN, REC_OFF, REC_SRC = range(5)
REC_FIELDS = 5

# Interleaved per-(color slot, PE) and per-link arrays: fifo[2f] head, fifo[2f + 1] tail
# (record index + 1; 0: empty, so that a zeroed array, which the OS maps lazily, starts
# with every FIFO empty);
# routes[2f] rx, routes[2f + 1] tx with f = slot * PEs + pe (color-major, so that a message
# crossing a row and PEs activated in index order touch neighbouring entries);
# links[8pe + 2d] the cycle link d (N E S W) of pe is free, links[8pe + 2d + 1] its busy
# wavelet-cycles. A free cycle f stored as -1 - f marks a link not reserved since a cut
# (fast_forward.py); its first reservation, by a message whose head reaches it at cycle
# hd, adds LINK_USED + (slack << LINK_SLACK_SHIFT) to the busy count, with slack =
# hd - f + 1 clamped to 0 .. LINK_SLACK_MAX (0: the message had to wait for the link).
LINK_SLACK_SHIFT, LINK_SLACK_MAX, LINK_USED = 40, (1 << 16) - 1, 1 << 56


@njit(nrt=False, inline="always")
def slot_index(cfg, pe, c):
    """2 * (slot of color c * PEs + pe), or -1 if color c is never routed."""
    slot = cfg[CFG_SIZE + c]
    return -1 if slot < 0 else 2 * (slot * cfg[CFG_WIDTH] * cfg[CFG_HEIGHT] + pe)


# --- heap of (clock << shift | PE) keys ------------------------------------------------
# A 4-ary min-heap: node i has children 4i+1 .. 4i+4 (half the depth of a binary heap, and
# the four children of a node share at most two cache lines). Any array of sorted keys is
# a valid heap.


@njit(nrt=False, inline="always")
def heap_push(heap, size, key):
    """Insert `key` into the heap of `size` entries; return the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 2
        up = heap[parent]
        if key >= up:
            break
        heap[i] = up
        i = parent
    heap[i] = key
    return size + 1


@njit(nrt=False, inline="always")
def sift_down(heap, size, key):
    """Place `key` at the root of a heap of `size` entries whose root slot is free."""
    i = 0
    while True:
        child = 4 * i + 1
        if child >= size:
            break
        prefetch(heap, 4 * child + 1)    # the 16 grandchildren: two cache lines
        prefetch(heap, 4 * child + 9)
        low, best = heap[child], child
        for c in range(child + 1, min(child + 4, size)):
            if heap[c] < low:
                low, best = heap[c], c
        if low >= key:
            break
        heap[i] = low
        i = best
    heap[i] = key


@njit(nrt=False, inline="always")
def heap_pop(heap, size):
    """Remove the minimum; return (its key, the new size). `size` must be > 0."""
    top = heap[0]
    size -= 1
    if size > 0:
        sift_down(heap, size, heap[size])
    return top, size


@njit(nrt=False, inline="always")
def heap_replace(heap, size, key):
    """Pop the minimum and push `key` (greater than it) in one sift; return the minimum."""
    top = heap[0]
    sift_down(heap, size, key)
    return top


# --- operands and faults ---------------------------------------------------------------


@njit(nrt=False, inline="always")
def operand(modes, args, k, slot, params, pes, pe):
    """Integer value of operand `slot` of instruction `k` for PE `pe`."""
    bits = (modes[k] >> (8 * slot)) & 0xFF
    value = args[k, slot]
    kind = bits & 0x3
    if kind == 0:
        return value
    if kind == 1:
        return np.int64(params[pes[pe, P_PARAM_ROW], value])
    return pes[pe, P_REGS + ((bits >> 2) & 0x7)] + value


@njit(nrt=False, inline="always")
def immediate_values(opc, k, n, args, imm, mem, scratch, stats):
    """Values of a vector op whose descriptors are immediates (already checked), over n
    elements of one PE's SRAM row. Returns 0, or NEED_SCRATCH (stats[ST_NEED] = n)."""
    if n <= 0:
        return 0
    if n > scratch.shape[0]:
        stats[ST_NEED] = n
        return NEED_SCRATCH
    vector_values(opc, mem, args[k, S_DST], args[k, S_DST_STRIDE], args[k, S_SRC0],
                  args[k, S_SRC0_STRIDE], args[k, S_SRC1], args[k, S_SRC1_STRIDE], n, imm[k],
                  scratch)
    return 0


@njit(nrt=False, inline="always")
def slot_values(modes, args, k, params, pes, pe):
    """The values of instruction k's eight operand slots, in slot order (S_DST .. S_COLOR);
    all-immediate instructions (modes 0) skip decoding."""
    if modes[k] == 0:
        return (args[k, S_DST], args[k, S_SRC0], args[k, S_SRC1], args[k, S_N],
                args[k, S_DST_STRIDE], args[k, S_SRC0_STRIDE], args[k, S_SRC1_STRIDE],
                args[k, S_COLOR])
    return (operand(modes, args, k, S_DST, params, pes, pe),
            operand(modes, args, k, S_SRC0, params, pes, pe),
            operand(modes, args, k, S_SRC1, params, pes, pe),
            operand(modes, args, k, S_N, params, pes, pe),
            operand(modes, args, k, S_DST_STRIDE, params, pes, pe),
            operand(modes, args, k, S_SRC0_STRIDE, params, pes, pe),
            operand(modes, args, k, S_SRC1_STRIDE, params, pes, pe),
            operand(modes, args, k, S_COLOR, params, pes, pe))


@njit(nrt=False)
def set_fault(fault, code, pe, cycle, a, b, c, d):
    """Record a fault (the kernel returns right after)."""
    fault[F_CODE] = code
    fault[F_PE] = pe
    fault[F_CYCLE] = cycle
    fault[F_A] = a
    fault[F_B] = b
    fault[F_C] = c
    fault[F_D] = d


@njit(nrt=False)
def first_bad_address(base, stride, n, words):
    """Address of the first element of descriptor (base, stride, n) outside 0..words-1,
    or -1 if all are inside (the caller checks the range in O(1) first)."""
    for i in range(n):
        a = base + stride * i
        if a < 0 or a >= words:
            return a
    return -1


@njit(nrt=False, inline="always")
def check_descriptor(base, stride, n, words, fault, pe, t):
    """True if every element of (base, stride, n) is in SRAM; else record FAULT_SRAM."""
    if n == 0:
        return True
    end = base + stride * (n - 1)
    if base >= 0 and end >= 0 and base < words and end < words:
        return True
    set_fault(fault, FAULT_SRAM, pe, t, first_bad_address(base, stride, n, words), 0, 0, 0)
    return False


# --- values ------------------------------------------------------------------------------


@njit(nrt=False)
def exp64(x):
    """math.exp with overflow giving +inf (as the reference's `_exp`)."""
    if x > EXP_LIMIT:
        return math.inf
    return math.exp(x)


@njit(nrt=False)
def max32(a, b):
    """NaN if either is NaN, else a if a >= b else b (the reference's `_max32`)."""
    if a != a or b != b:
        return np.float32(np.nan)
    return a if a >= b else b


@njit(nrt=False)
def reduce_values(op, mem, s0, ss0, s1, ss1, n):
    """rsum / rmax / rdot accumulated sequentially in fp32 from element 0 (stride-1
    operands are read through slices: no negative-index wraparound per element)."""
    if op == RARGMAX:
        acc, idx = np.float32(-np.inf), -1
        for i in range(n):
            if acc != acc:
                break
            v = mem[s0 + ss0 * i]
            if v != v or idx < 0 or v > acc:
                acc, idx = v, i
        return np.float32(idx)
    if op == RMAX:
        acc = np.float32(-np.inf)
        if ss0 == 1:
            a = mem[s0:s0 + n]
            for i in range(n):
                acc = max32(acc, a[i])
        else:
            for i in range(n):
                acc = max32(acc, mem[s0 + ss0 * i])
        return acc
    acc = np.float32(0.0)
    if op == RDOT:
        if ss0 == 1 and ss1 == 1:
            a, b = mem[s0:s0 + n], mem[s1:s1 + n]
            for i in range(n):
                acc = np.float32(acc + np.float32(a[i] * b[i]))
        else:
            for i in range(n):
                acc = np.float32(acc + np.float32(mem[s0 + ss0 * i] * mem[s1 + ss1 * i]))
        return acc
    if ss0 == 1:
        a = mem[s0:s0 + n]
        for i in range(n):
            acc = np.float32(acc + a[i])
    else:
        for i in range(n):
            acc = np.float32(acc + mem[s0 + ss0 * i])
    return acc


@njit(nrt=False, inline="always")
def disjoint(a0, astride, b0, bstride, n):
    """True if descriptors (a0, astride, n) and (b0, bstride, n) share no address range."""
    a1, b1 = a0 + astride * (n - 1), b0 + bstride * (n - 1)
    return max(a0, a1) < min(b0, b1) or max(b0, b1) < min(a0, a1)


@njit(nrt=False, inline="always")
def apart(d0, ds, s0, ss0, n):
    """True if an elementwise loop may write destination element i right after reading
    source element i: the descriptors are disjoint, or identical with a nonzero stride
    (element i then reads only the address it writes)."""
    return disjoint(d0, ds, s0, ss0, n) or (d0 == s0 and ds == ss0 and ds != 0)


@njit(nrt=False)
def unary_slices(op, dst, src, imm):
    """dst[i] = f(src[i]) over two equal-length slices (stride 1, so the loops vectorise
    where the operation allows)."""
    n = dst.shape[0]
    if op == VMOV:
        for i in range(n):
            dst[i] = src[i]
    elif op == VSET:
        for i in range(n):
            dst[i] = imm
    elif op == VSCALE:
        for i in range(n):
            dst[i] = np.float32(src[i] * imm)
    elif op == VADDI:
        for i in range(n):
            dst[i] = np.float32(src[i] + imm)
    elif op == VEXP:
        for i in range(n):
            dst[i] = np.float32(exp64(np.float64(src[i])))
    elif op == VRSQRT:
        for i in range(n):
            dst[i] = np.float32(np.float64(1.0) / np.sqrt(np.float64(src[i])))
    elif op == VRECIP:
        for i in range(n):
            dst[i] = np.float32(np.float64(1.0) / np.float64(src[i]))
    else:
        for i in range(n):
            dst[i] = np.float32(np.float64(1.0)
                                / (np.float64(1.0) + exp64(-np.float64(src[i]))))


@njit(nrt=False)
def unary_loop(op, mem, out, o0, os, s0, ss0, n, imm):
    """out[o0 + os*i] = f(src[i]) for the one-source ops, one loop per opcode."""
    if os == 1 and (ss0 == 1 or op == VSET):
        s = s0 if ss0 == 1 else 0
        unary_slices(op, out[o0:o0 + n], mem[s:s + n], imm)
    elif op == VMOV:
        for i in range(n):
            out[o0 + os * i] = mem[s0 + ss0 * i]
    elif op == VSET:
        for i in range(n):
            out[o0 + os * i] = imm
    elif op == VSCALE:
        for i in range(n):
            out[o0 + os * i] = np.float32(mem[s0 + ss0 * i] * imm)
    elif op == VADDI:
        for i in range(n):
            out[o0 + os * i] = np.float32(mem[s0 + ss0 * i] + imm)
    elif op == VEXP:
        for i in range(n):
            out[o0 + os * i] = np.float32(exp64(np.float64(mem[s0 + ss0 * i])))
    elif op == VRSQRT:
        for i in range(n):
            x = np.float64(mem[s0 + ss0 * i])
            out[o0 + os * i] = np.float32(np.float64(1.0) / np.sqrt(x))
    elif op == VRECIP:
        for i in range(n):
            out[o0 + os * i] = np.float32(np.float64(1.0) / np.float64(mem[s0 + ss0 * i]))
    else:
        for i in range(n):
            x = np.float64(mem[s0 + ss0 * i])
            out[o0 + os * i] = np.float32(np.float64(1.0) / (np.float64(1.0) + exp64(-x)))


@njit(nrt=False)
def binary_slices(op, dst, a, b):
    """dst[i] = a[i] op b[i] over equal-length slices (vadd vsub vmul vmax)."""
    n = dst.shape[0]
    if op == VADD:
        for i in range(n):
            dst[i] = np.float32(a[i] + b[i])
    elif op == VSUB:
        for i in range(n):
            dst[i] = np.float32(a[i] - b[i])
    elif op == VMUL:
        for i in range(n):
            dst[i] = np.float32(a[i] * b[i])
    else:
        for i in range(n):
            dst[i] = max32(a[i], b[i])


@njit(nrt=False)
def binary_scalar(op, dst, a, b):
    """dst[i] = a[i] op b over equal-length slices and one value b (a stride-0 src1)."""
    n = dst.shape[0]
    if op == VADD:
        for i in range(n):
            dst[i] = np.float32(a[i] + b)
    elif op == VSUB:
        for i in range(n):
            dst[i] = np.float32(a[i] - b)
    elif op == VMUL:
        for i in range(n):
            dst[i] = np.float32(a[i] * b)
    else:
        for i in range(n):
            dst[i] = max32(a[i], b)


@njit(nrt=False)
def binary_loop(op, mem, out, o0, os, s0, ss0, s1, ss1, n):
    """out[o0 + os*i] = src0[i] op src1[i] for vadd vsub vmul vmax, one loop per opcode.
    A stride-0 src1 is read once: the caller goes through scratch when the loop could
    write it."""
    if os == 1 and ss0 == 1 and ss1 == 1:
        binary_slices(op, out[o0:o0 + n], mem[s0:s0 + n], mem[s1:s1 + n])
    elif os == 1 and ss0 == 1 and ss1 == 0:
        binary_scalar(op, out[o0:o0 + n], mem[s0:s0 + n], mem[s1])
    elif op == VADD:
        for i in range(n):
            out[o0 + os * i] = np.float32(mem[s0 + ss0 * i] + mem[s1 + ss1 * i])
    elif op == VSUB:
        for i in range(n):
            out[o0 + os * i] = np.float32(mem[s0 + ss0 * i] - mem[s1 + ss1 * i])
    elif op == VMUL:
        for i in range(n):
            out[o0 + os * i] = np.float32(mem[s0 + ss0 * i] * mem[s1 + ss1 * i])
    else:
        for i in range(n):
            out[o0 + os * i] = max32(mem[s0 + ss0 * i], mem[s1 + ss1 * i])


@njit(nrt=False)
def fma_loop(mem, out, o0, os, d0, ds, s0, ss0, s1, ss1, n):
    """out[o0 + os*i] = fp32(dst[i] + fp32(src0[i] * src1[i])) (vfma; the old destination
    is read at d0 + ds*i). The scalar of an axpy (ss1 = 0) is read once: it is not
    written by this loop (the caller goes through scratch when it could be)."""
    if ss1 == 0:
        b = mem[s1]
        if os == 1 and ds == 1 and ss0 == 1:
            dst, old, src = out[o0:o0 + n], mem[d0:d0 + n], mem[s0:s0 + n]
            for i in range(n):
                dst[i] = np.float32(old[i] + np.float32(src[i] * b))
        else:
            for i in range(n):
                out[o0 + os * i] = np.float32(mem[d0 + ds * i]
                                              + np.float32(mem[s0 + ss0 * i] * b))
    elif os == 1 and ds == 1 and ss0 == 1 and ss1 == 1:
        dst, old, a, b = out[o0:o0 + n], mem[d0:d0 + n], mem[s0:s0 + n], mem[s1:s1 + n]
        for i in range(n):
            dst[i] = np.float32(old[i] + np.float32(a[i] * b[i]))
    else:
        for i in range(n):
            out[o0 + os * i] = np.float32(mem[d0 + ds * i]
                                          + np.float32(mem[s0 + ss0 * i] * mem[s1 + ss1 * i]))


@njit(nrt=False, inline="always")
def elementwise(op, mem, out, o0, os, d0, ds, s0, ss0, s1, ss1, n, imm):
    """out[o0 + os*i] = op(element i) for i in 0..n-1 (the opcode is dispatched once, not
    per element); `out` is either the SRAM row itself (o0, os = d0, ds) or the scratch
    buffer (0, 1)."""
    if op == VFMA:
        fma_loop(mem, out, o0, os, d0, ds, s0, ss0, s1, ss1, n)
    elif op == VADD or op == VSUB or op == VMUL or op == VMAX:
        binary_loop(op, mem, out, o0, os, s0, ss0, s1, ss1, n)
    else:
        unary_loop(op, mem, out, o0, os, s0, ss0, n, imm)


@njit(nrt=False)
def vector_values(op, mem, d0, ds, s0, ss0, s1, ss1, n, imm, scratch):
    """Apply a vector op or reduction to one PE's SRAM row with the reference's semantics:
    all sources (and, for vfma, the old destination) are read before any destination
    element is written; with repeated destination addresses the highest index wins.
    Results go straight to SRAM when that cannot be told apart, else via `scratch`."""
    if op >= RSUM:
        mem[d0] = reduce_values(op, mem, s0, ss0, s1, ss1, n)
        return
    if n == 1:   # one element: its sources are read before its write
        elementwise(op, mem, mem, d0, ds, d0, ds, s0, ss0, s1, ss1, 1, imm)
        return
    one_source = op == VMOV or op == VSCALE or op == VADDI or op >= VEXP
    direct = ((ds != 0 or op != VFMA)
              and (op == VSET or apart(d0, ds, s0, ss0, n))
              and (op == VSET or one_source or apart(d0, ds, s1, ss1, n)))
    if direct:
        elementwise(op, mem, mem, d0, ds, d0, ds, s0, ss0, s1, ss1, n, imm)
        return
    elementwise(op, mem, scratch, 0, 1, d0, ds, s0, ss0, s1, ss1, n, imm)
    if ds == 1:
        dst, src = mem[d0:d0 + n], scratch[:n]
        for i in range(n):
            dst[i] = src[i]
    else:
        for i in range(n):
            mem[d0 + ds * i] = scratch[i]


# --- pools (allocating; called only from run_mesh) ----------------------------------------


@njit
def new_records(cap):
    """A record pool of `cap` rows, all on the free list (REC_LEN = -1 marks a free row)."""
    rec = np.empty((cap, REC_FIELDS), np.int64)
    for i in range(cap):
        rec[i, REC_NEXT] = i + 1 if i + 1 < cap else -1
        rec[i, REC_LEN] = -1
    return rec


@njit
def grow_records(rec, stats):
    """The pool with its capacity doubled; the new rows become the free list."""
    cap = rec.shape[0]
    out = np.empty((2 * cap, REC_FIELDS), np.int64)
    out[:cap] = rec
    for i in range(cap, 2 * cap):
        out[i, REC_NEXT] = i + 1 if i + 1 < 2 * cap else stats[ST_RECORDS]
        out[i, REC_LEN] = -1
    stats[ST_RECORDS] = cap
    return out


@njit
def grow_rows(stack, need):
    """`stack` (an int64 [rows, 4] array) copied into one with at least `need` rows."""
    rows = stack.shape[0]
    while rows < need:
        rows *= 2
    out = np.empty((rows, stack.shape[1]), np.int64)
    out[:stack.shape[0]] = stack
    return out


PAYLOAD_DOUBLING_LIMIT = 1 << 22   # words (16 MiB): the pool doubles up to this size


@njit
def compact_payloads(pay, rec, stats, need):
    """A fresh payload pool holding every live message's values once (blocks shared by a
    multicast stay shared) with room for `need` more words; REC_OFF fields are rewritten
    and stats[ST_PAYLOAD] set to the words used. The new pool has at least twice the
    words in use plus `need`, and twice the old pool's size up to PAYLOAD_DOUBLING_LIMIT
    (never less than the old size beyond it): with few messages live, a pool sized only
    by its live words would fill again after a few sends (a 64 x 64 decode step
    compacted 3,368 times; now 11)."""
    live = np.flatnonzero((rec[:, REC_LEN] > 0) & (rec[:, REC_OFF] >= 0))
    offs = rec[live, REC_OFF]
    order = np.argsort(offs, kind="mergesort")
    used = 0
    for j in range(order.shape[0]):
        if j == 0 or offs[order[j]] != offs[order[j - 1]]:
            used += rec[live[order[j]], REC_LEN]
    grown = max(min(2 * pay.shape[0], PAYLOAD_DOUBLING_LIMIT), pay.shape[0])
    out = np.empty(max(2 * (used + need), grown, 1024), np.float32)
    top, prev_old, prev_new = 0, -1, -1
    for j in range(order.shape[0]):
        i = live[order[j]]
        old = rec[i, REC_OFF]
        if old != prev_old:
            length = rec[i, REC_LEN]
            out[top:top + length] = pay[old:old + length]
            prev_old, prev_new = old, top
            top += length
        rec[i, REC_OFF] = prev_new
    stats[ST_PAYLOAD] = top
    return out


# --- FIFOs and routing --------------------------------------------------------------------


@njit(nrt=False, inline="always")
def deliver(q, c, f, last, n, off, src, rec, fifo, stats, pes, wake, shift):
    """Append a delivery to FIFO (q, c) (index f = slot_index(cfg, q, c) >= 0; a free
    record must exist), waking q if it waits on c."""
    i = stats[ST_RECORDS]
    stats[ST_RECORDS] = rec[i, REC_NEXT]
    stats[ST_QUEUED] += 1
    rec[i, REC_NEXT] = -1
    rec[i, REC_LAST] = last
    rec[i, REC_LEN] = n
    rec[i, REC_OFF] = off
    rec[i, REC_SRC] = src
    if fifo[f + 1] == 0:
        fifo[f] = i + 1
    else:
        rec[fifo[f + 1] - 1, REC_NEXT] = i
    fifo[f + 1] = i + 1
    stats[ST_MESSAGES] += 1
    if pes[q, P_STATUS] == BLOCKED and pes[q, P_WAIT] == c:
        pes[q, P_STATUS] = READY
        pes[q, P_WAIT] = -1
        stats[ST_WAKE] = heap_push(wake, stats[ST_WAKE], (pes[q, P_CLOCK] << shift) | q)


@njit(nrt=False, inline="always")
def free_record(rec, fifo, f, stats):
    """Unlink the oldest record of FIFO f (fifo index 2f; read its fields first) and free
    its row."""
    i = fifo[f] - 1
    fifo[f] = rec[i, REC_NEXT] + 1
    if fifo[f] == 0:
        fifo[f + 1] = 0
    rec[i, REC_LEN] = -1
    rec[i, REC_NEXT] = stats[ST_RECORDS]
    stats[ST_RECORDS] = i
    stats[ST_QUEUED] -= 1


@njit(nrt=False, inline="always")
def prefetch_router(q, base, routes, links, fifo, pes):
    """Start loading router q's table entry for a color, its links, its FIFO for the color
    and its PE row (`base`: the color's slot_index of PE 0, -1 if never routed; q must be
    on the mesh). A hint for a message that may reach it; no effect on results."""
    if base >= 0:
        prefetch(routes, base + 2 * q)
        prefetch(fifo, base + 2 * q)
    prefetch(links, 8 * q)
    prefetch(pes, q)


@njit(nrt=False, inline="always")
def route_message(pe, c, n, off, sp, cfg, routes, edges, links, stack, rec, fifo, stats, pes,
                  wake, fault, t):
    """Route one message depth-first exactly as the reference: a stack of (router, input
    port, head cycle, hops) rows, out-ports pushed N, E, S, W (so the last pushed goes
    next), delivery to the core (R) after the pushes.

    Resumable: returns 0 when done, -1 on a fault, or sp > 0 when the top entry needs a
    larger stack (sp + 3 rows) or a free record; run_mesh grows them and calls again.
    `edges[q]` has the bit of each port of router q that would leave the mesh. The color's
    table and FIFO entries of router q are at base + 2q (slot_index), computed once per
    message; a router straight ahead was prefetched two hops before, so only the one
    after it is prefetched then."""
    width = cfg[CFG_WIDTH]
    hop, ramp, npes, shift = cfg[CFG_H], cfg[CFG_R], pes.shape[0], cfg[CFG_SHIFT]
    base = slot_index(cfg, 0, c)
    while sp > 0:
        sp -= 1
        if sp + 4 > stack.shape[0] or stats[ST_RECORDS] < 0:
            return sp + 1
        q, in_port, hd, hops = stack[sp, 0], stack[sp, 1], stack[sp, 2], stack[sp, 3]
        if hops > npes:
            set_fault(fault, FAULT_LOOP, pe, t, c, hops, 0, 0)
            return -1
        f = -1 if base < 0 else base + 2 * q
        rx, tx = (0, 0) if f < 0 else (routes[f], routes[f + 1])
        if not rx & in_port:
            set_fault(fault, FAULT_RX, pe, t, c, q, in_port, rx)
            return -1
        if tx == 0:
            set_fault(fault, FAULT_NO_TX, pe, t, c, q, 0, 0)
            return -1
        out = tx & edges[q]
        if out & 15:
            port = out & -out
            set_fault(fault, FAULT_OFF_MESH, pe, t, c, q, port, 0)
            return -1
        for d in range(4):
            port = 1 << d
            if not tx & port:
                continue
            link = 8 * q + 2 * d
            free = links[link]
            if free < 0:   # first reservation since a cut
                free = -1 - free
                slack = min(max(hd - free + 1, 0), LINK_SLACK_MAX)
                links[link + 1] += LINK_USED + (slack << LINK_SLACK_SHIFT)
            start = max(hd, free)
            links[link] = start + n
            links[link + 1] += n
            step = -width if d == 0 else (1 if d == 1 else (width if d == 2 else -1))
            ahead = 1 << ((d + 2) % 4)   # the input port of the next router
            if in_port != ahead:         # not straight on: the next router is cold
                prefetch_router(q + step, base, routes, links, fifo, pes)
            if 0 <= q + 2 * step < npes:
                prefetch_router(q + 2 * step, base, routes, links, fifo, pes)
            stack[sp, 0], stack[sp, 1] = q + step, ahead
            stack[sp, 2], stack[sp, 3] = start + hop, hops + 1
            sp += 1
        if tx & PORT_R:
            deliver(q, c, f, hd + ramp + n - 1, n, off, pe, rec, fifo, stats, pes, wake, shift)
    return 0


# --- instructions --------------------------------------------------------------------------


@njit(nrt=False, inline="always")
def exec_vector(opc, k, modes, args, imm, static_cost, params, pes, pe, t, cfg, sram, scratch,
                fault, stats):
    """A vector op or reduction: check count and descriptors, compute in functional mode.
    Returns the cycles it costs, -1 on a fault, or NEED_SCRATCH (nothing done yet).
    `static_cost[k]` >= 0 is the cost of an instruction whose operands are all immediates
    and valid (checked once by the wrapper); `static_cost[k]` = -2 - L means that only the
    count is not an immediate and every descriptor is inside the SRAM for counts 0..L."""
    cost = static_cost[k]
    if cost >= 0:   # all operands immediate and valid: no decoding or checks
        if not cfg[CFG_FUNCTIONAL]:
            return cost
        status = immediate_values(opc, k, args[k, S_N], args, imm, sram[pe], scratch, stats)
        return cost if status == 0 else status
    functional = cfg[CFG_FUNCTIONAL]
    if cost <= -2:   # only the count is dynamic; descriptors valid for n <= -2 - cost
        n = operand(modes, args, k, S_N, params, pes, pe)
        if n >= 0 and n <= -2 - cost:
            if functional and immediate_values(opc, k, n, args, imm, sram[pe], scratch,
                                               stats) != 0:
                return NEED_SCRATCH
            return vector_cycles(opc, n, cfg)
        # else: decoded and checked below (faults)
    d0, s0, s1, n, ds, ss0, ss1, _ = slot_values(modes, args, k, params, pes, pe)
    if n < 0:
        set_fault(fault, FAULT_COUNT, pe, t, n, 0, 0, 0)
        return FAULTED
    words = cfg[CFG_SRAM]
    if not (check_descriptor(d0, ds, n, words, fault, pe, t)
            and check_descriptor(s0, ss0, n, words, fault, pe, t)
            and check_descriptor(s1, ss1, n, words, fault, pe, t)):
        return FAULTED
    if functional and n > 0:
        if n > scratch.shape[0]:
            stats[ST_NEED] = n
            return NEED_SCRATCH
        vector_values(opc, sram[pe], d0, ds, s0, ss0, s1, ss1, n, imm[k], scratch)
    return vector_cycles(opc, n, cfg)


@njit(nrt=False, inline="always")
def corners_inside(base, stride, n, outer, inner, reps, cols, words):
    """Whether descriptor (base + i * outer + j * inner, stride, n), n > 0, is inside
    0..words-1 for every copy i < reps, j < cols (both > 0): the addresses are affine in
    (i, j), so the four corner copies bound them all."""
    for i in (0, reps - 1):
        for j in (0, cols - 1):
            first = base + i * outer + j * inner
            last = first + stride * (n - 1)
            if first < 0 or last < 0 or first >= words or last >= words:
                return False
    return True


@njit(nrt=False)
def exec_rep(k, op, modes, args, imm, params, pes, pe, t, cfg, sram, scratch, fault, stats):
    """rep R, S (isa/interpreter.py `repeat` defines it): the vector op or reduction at
    k + 1, R * S times with its addresses stepped per copy; every copy is checked before
    any computes. Returns the cycles (R * S times the body's), -1 on a fault, or
    NEED_SCRATCH (nothing done yet)."""
    reps = operand(modes, args, k, S_N, params, pes, pe)
    cols = operand(modes, args, k, S_COLOR, params, pes, pe)
    for count in (reps, cols):
        if count < 0:
            set_fault(fault, FAULT_COUNT, pe, t, count, 3, 0, 0)
            return FAULTED
    b = k + 1
    opc = op[b]
    d0, s0, s1, n, ds, ss0, ss1, _ = slot_values(modes, args, b, params, pes, pe)
    if n < 0:
        set_fault(fault, FAULT_COUNT, pe, t, n, 0, 0, 0)
        return FAULTED
    copies = reps * cols
    if copies == 0 or n == 0:
        return copies * vector_cycles(opc, n, cfg)
    od, o0, o1, _, id_, i0, i1, _ = slot_values(modes, args, k, params, pes, pe)
    words = cfg[CFG_SRAM]
    if not (corners_inside(d0, ds, n, od, id_, reps, cols, words)
            and corners_inside(s0, ss0, n, o0, i0, reps, cols, words)
            and corners_inside(s1, ss1, n, o1, i1, reps, cols, words)):
        for i in range(reps):
            for j in range(cols):
                if not (check_descriptor(d0 + i * od + j * id_, ds, n, words, fault, pe, t)
                        and check_descriptor(s0 + i * o0 + j * i0, ss0, n, words, fault, pe,
                                             t)
                        and check_descriptor(s1 + i * o1 + j * i1, ss1, n, words, fault, pe,
                                             t)):
                    return FAULTED
    if cfg[CFG_FUNCTIONAL]:
        if n > scratch.shape[0]:
            stats[ST_NEED] = n
            return NEED_SCRATCH
        for i in range(reps):
            for j in range(cols):
                vector_values(opc, sram[pe], d0 + i * od + j * id_, ds, s0 + i * o0 + j * i0,
                              ss0, s1 + i * o1 + j * i1, ss1, n, imm[b], scratch)
    return copies * vector_cycles(opc, n, cfg)


@njit(nrt=False, inline="always")
def vector_cycles(opc, n, cfg):
    """Cycles of a vector op or reduction over n elements (docs/timing.md): o + ceil(n/w),
    or o + n * T for a transcendental (vexp, vrsqrt, vrecip, vsigmoid) when T > 0."""
    if cfg[CFG_T] > 0 and opc >= VEXP and opc <= VSIGMOID:
        return cfg[CFG_O] + n * cfg[CFG_T]
    w = cfg[CFG_W]
    return cfg[CFG_O] + (n if w == 1 else (n + w - 1) // w)


@njit(nrt=False)
def first_bad_matrix(w0, ld, m, cols, words):
    """First address outside 0..words-1 of the columns w0 + c*ld + (0..m-1), column by
    column, or -1."""
    for c in range(cols):
        a = first_bad_address(w0 + ld * c, 1, m, words)
        if a != -1:
            return a
    return -1


@njit(nrt=False)
def check_matrix(w0, ld, m, cols, words, fault, pe, t):
    """True when the cols columns w0 + c*ld + (0..m-1) lie in SRAM (cols >= 1), else
    records a FAULT_SRAM at the first address outside and returns False."""
    w_end = w0 + ld * (cols - 1)
    if min(w0, w_end) >= 0 and max(w0, w_end) + m - 1 < words:
        return True
    set_fault(fault, FAULT_SRAM, pe, t, first_bad_matrix(w0, ld, m, cols, words), 0, 0, 0)
    return False


@njit(nrt=False)
def gemv_values(mem, d0, ds, w0, ld, x0, sx, m, cols, scratch):
    """vgemv on one PE's SRAM row: exactly `cols` consecutive vfmas
    dst[i] = fp32(dst[i] + fp32(W[c*ld + i] * x[c*sx])). When the destination overlaps
    neither the matrix nor the vector (and has distinct addresses), accumulating in place
    column by column is that sequence; otherwise each column runs as a vfma."""
    d_end = d0 + ds * (m - 1)
    w_end = w0 + ld * (cols - 1)
    x_end = x0 + sx * (cols - 1)
    d_lo, d_hi = min(d0, d_end), max(d0, d_end)
    w_lo, w_hi = min(w0, w_end), max(w0, w_end) + m - 1
    x_lo, x_hi = min(x0, x_end), max(x0, x_end)
    if ((ds != 0 or m == 1) and (d_hi < w_lo or w_hi < d_lo)
            and (d_hi < x_lo or x_hi < d_lo)):
        if ds == 1:   # slices: indices provably >= 0, so the inner loop vectorises
            for line in range(w_lo, w_hi + 1, 16):   # the whole tile: misses overlap
                prefetch(mem, line)
            dst = mem[d0:d0 + m]
            for c in range(cols):
                xv = mem[x0 + sx * c]
                col = mem[w0 + ld * c:w0 + ld * c + m]
                for i in range(m):
                    dst[i] = np.float32(dst[i] + np.float32(col[i] * xv))
        else:
            for c in range(cols):
                xv = mem[x0 + sx * c]
                base = w0 + ld * c
                for i in range(m):
                    j = d0 + ds * i
                    mem[j] = np.float32(mem[j] + np.float32(mem[base + i] * xv))
        return
    for c in range(cols):
        vector_values(VFMA, mem, d0, ds, w0 + ld * c, 1, x0 + sx * c, 0, m, np.float32(0),
                      scratch)


@njit(nrt=False)
def exec_gemv(k, modes, args, static_cost, params, pes, pe, t, cfg, sram, scratch, fault,
              stats):
    """vgemv [dst], [W:ld], [x:sx], m, k: check m, k and (when both > 0) the destination,
    matrix and vector elements; compute in functional mode. Returns the cost
    o + k * ceil(m / w), FAULTED, or NEED_SCRATCH (nothing done yet)."""
    functional = cfg[CFG_FUNCTIONAL]
    if static_cost[k] >= 0 and not functional:
        return static_cost[k]
    d0, w0, x0, m, ds, ld, sx, cols = slot_values(modes, args, k, params, pes, pe)
    if m < 0:
        set_fault(fault, FAULT_COUNT, pe, t, m, 0, 0, 0)
        return FAULTED
    if cols < 0:
        set_fault(fault, FAULT_COUNT, pe, t, cols, 1, 0, 0)
        return FAULTED
    if m > 0 and cols > 0:
        words = cfg[CFG_SRAM]
        if not check_descriptor(d0, ds, m, words, fault, pe, t):
            return FAULTED
        if not check_matrix(w0, ld, m, cols, words, fault, pe, t):
            return FAULTED
        if not check_descriptor(x0, sx, cols, words, fault, pe, t):
            return FAULTED
        if functional:
            if m > scratch.shape[0]:
                stats[ST_NEED] = m
                return NEED_SCRATCH
            gemv_values(sram[pe], d0, ds, w0, ld, x0, sx, m, cols, scratch)
    w = cfg[CFG_W]
    return cfg[CFG_O] + cols * (m if w == 1 else (m + w - 1) // w)


@njit(nrt=False)
def exec_gemm(k, modes, args, params, pes, pe, t, cfg, sram, scratch, fault, stats):
    """vgemm [dst], [W:ld], [x:sx], m, k, B (isa/interpreter.py `gemm` defines it): row b
    of the B rows is the vmul of column 0 then the vfmas of columns 1..k-1 (a vgemv),
    into dst + b*m; with k = 0 the row is set to 0.0. Checks m, k, B >= 0, then (m, B > 0)
    the B*m destination elements, then (k > 0) the matrix and the B*k vector elements.
    Returns o + B * max(k, 1) * ceil(m / w), FAULTED, or NEED_SCRATCH (nothing done)."""
    d0, w0, x0, m, batch, ld, sx, cols = slot_values(modes, args, k, params, pes, pe)
    if m < 0:
        set_fault(fault, FAULT_COUNT, pe, t, m, 0, 0, 0)
        return FAULTED
    if cols < 0:
        set_fault(fault, FAULT_COUNT, pe, t, cols, 1, 0, 0)
        return FAULTED
    if batch < 0:
        set_fault(fault, FAULT_COUNT, pe, t, batch, 2, 0, 0)
        return FAULTED
    if m > 0 and batch > 0:
        words = cfg[CFG_SRAM]
        if not check_descriptor(d0, 1, batch * m, words, fault, pe, t):
            return FAULTED
        if cols > 0:
            if not check_matrix(w0, ld, m, cols, words, fault, pe, t):
                return FAULTED
            x_end = x0 + sx * (batch - 1)
            if not (min(x0, x_end) >= 0 and max(x0, x_end) + cols - 1 < words):
                for b in range(batch):   # some row is outside: fault at its first element
                    if not check_descriptor(x0 + b * sx, 1, cols, words, fault, pe, t):
                        return FAULTED
        if cfg[CFG_FUNCTIONAL]:
            if m > scratch.shape[0]:
                stats[ST_NEED] = m
                return NEED_SCRATCH
            mem = sram[pe]
            for b in range(batch):
                row = d0 + b * m
                if cols == 0:
                    for i in range(m):
                        mem[row + i] = np.float32(0.0)
                    continue
                xb = x0 + b * sx
                vector_values(VMUL, mem, row, 1, w0, 1, xb, 0, m, np.float32(0), scratch)
                if cols > 1:
                    gemv_values(mem, row, 1, w0 + ld, ld, xb + 1, 1, m, cols - 1, scratch)
    w = cfg[CFG_W]
    return cfg[CFG_O] + batch * max(cols, 1) * (m if w == 1 else (m + w - 1) // w)


@njit(nrt=False, inline="always")
def exec_control(opc, k, modes, args, params, pes, pe, t, p, ncode, cfg, fault):
    """movr / addr / djnz / jmp / nop (cost o + 1). Returns the next pc, or -1 on a fault
    (register index, cycle limit, jump outside 0..ncode)."""
    rd = args[k, S_DST]
    value = operand(modes, args, k, S_SRC0, params, pes, pe)
    if opc == MOVR or opc == ADDR or opc == DJNZ:
        if rd < 0 or rd >= 8:
            set_fault(fault, FAULT_REGISTER, pe, t, rd, 0, 0, 0)
            return -1
    nxt = p + 1
    if opc == MOVR:
        pes[pe, P_REGS + rd] = value
    elif opc == ADDR:
        pes[pe, P_REGS + rd] += value
    elif opc == DJNZ:
        pes[pe, P_REGS + rd] -= 1
        if pes[pe, P_REGS + rd] != 0:
            nxt = value
    elif opc == JMP:
        nxt = value
    t += cfg[CFG_O] + 1
    if t > cfg[CFG_MAX_CYCLES]:
        set_fault(fault, FAULT_CYCLES, pe, t, 0, 0, 0, 0)
        return -1
    if (opc == DJNZ or opc == JMP) and (nxt < 0 or nxt > ncode):
        set_fault(fault, FAULT_JUMP, pe, t, nxt, ncode, 0, 0)
        return -1
    return nxt


@njit(nrt=False, inline="always")
def exec_ldr(k, modes, args, params, pes, pe, t, cfg, sram, fault):
    """ldr rK, [A]: rK = trunc(sram[A]) (0 in timing-only runs). False on a fault
    (register index, address, value not a finite int32)."""
    rd = args[k, S_DST]
    if rd < 0 or rd >= 8:
        set_fault(fault, FAULT_REGISTER, pe, t, rd, 0, 0, 0)
        return False
    a = operand(modes, args, k, S_SRC0, params, pes, pe)
    if a < 0 or a >= cfg[CFG_SRAM]:
        set_fault(fault, FAULT_SRAM, pe, t, a, 0, 0, 0)
        return False
    value = np.int64(0)
    if cfg[CFG_FUNCTIONAL]:
        v = np.float64(sram[pe, a])
        if not (v > -LDR_BOUND and v < LDR_BOUND):
            set_fault(fault, FAULT_LDR, pe, t, a, 0, 0, 0)
            return False
        value = np.int64(v)
    pes[pe, P_REGS + rd] = value
    return True


@njit(nrt=False, inline="always")
def comm_operands(k, modes, args, params, pes, pe, t, cfg, fault, addr_slot, stride_slot):
    """(color, n, address, stride) of a send (SRC0 slots) or recv (DST slots), checked in
    the reference's order; color -1 after a fault."""
    if modes[k] == 0:
        c, n = args[k, S_COLOR], args[k, S_N]
        a, s = args[k, addr_slot], args[k, stride_slot]
    else:
        c = operand(modes, args, k, S_COLOR, params, pes, pe)
        n = operand(modes, args, k, S_N, params, pes, pe)
        a = operand(modes, args, k, addr_slot, params, pes, pe)
        s = operand(modes, args, k, stride_slot, params, pes, pe)
    if c < 0 or c >= cfg[CFG_COLORS]:
        set_fault(fault, FAULT_COLOR, pe, t, c, 0, 0, 0)
        return -1, 0, 0, 0
    if n < 0:
        set_fault(fault, FAULT_COUNT, pe, t, n, 0, 0, 0)
        return -1, 0, 0, 0
    if not check_descriptor(a, s, n, cfg[CFG_SRAM], fault, pe, t):
        return -1, 0, 0, 0
    return c, n, a, s


@njit(nrt=False, inline="always")
def store_payload(pay, stats, mem, s0, ss0, n):
    """Copy a message's values to the payload pool (which has room); return the offset."""
    top = stats[ST_PAYLOAD]
    if ss0 == 1:
        dst, src = pay[top:top + n], mem[s0:s0 + n]
        for i in range(n):
            dst[i] = src[i]
    else:
        for i in range(n):
            pay[top + i] = mem[s0 + ss0 * i]
    stats[ST_PAYLOAD] = top + n
    return top


@njit(nrt=False, inline="always")
def receive_values(opc, mem, d0, ds, pay, off, n, scratch):
    """recv: dst[i] = w[i]; recvadd: dst[i] = dst[i] + w[i] (all old values read first,
    so with repeated addresses the highest index wins, as in the reference)."""
    if ds == 1:   # distinct destinations: in place, over slices (vectorises)
        dst, src = mem[d0:d0 + n], pay[off:off + n]
        if opc == RECV:
            for i in range(n):
                dst[i] = src[i]
        else:
            for i in range(n):
                dst[i] = np.float32(dst[i] + src[i])
        return
    if opc == RECV:
        for i in range(n):
            mem[d0 + ds * i] = pay[off + i]
        return
    for i in range(n):
        scratch[i] = np.float32(mem[d0 + ds * i] + pay[off + i])
    for i in range(n):
        mem[d0 + ds * i] = scratch[i]


@njit(nrt=False, inline="always")
def exec_receive(opc, k, modes, args, params, pes, pe, t, cfg, sram, pay, rec, fifo, stats,
                 scratch, fault):
    """recv / recvadd. Returns (end cycle, or FAULTED, BLOCK when the FIFO is empty, or
    NEED_SCRATCH; the color; the wavelet count)."""
    c, n, d0, ds = comm_operands(k, modes, args, params, pes, pe, t, cfg, fault, S_DST,
                                 S_DST_STRIDE)
    if c < 0:
        return FAULTED, 0, 0
    if cfg[CFG_FUNCTIONAL] and opc == RECVADD and n > scratch.shape[0]:
        stats[ST_NEED] = n
        return NEED_SCRATCH, c, n
    f = slot_index(cfg, pe, c)
    i = -1 if f < 0 else fifo[f] - 1
    if i < 0:
        return BLOCK, c, n
    length, last, off, src = rec[i, REC_LEN], rec[i, REC_LAST], rec[i, REC_OFF], rec[i, REC_SRC]
    free_record(rec, fifo, f, stats)
    if length != n:
        set_fault(fault, FAULT_LENGTH, pe, t, c, n, length, src)
        fault[F_E] = opc
        return FAULTED, 0, 0
    if cfg[CFG_FUNCTIONAL] and n > 0:
        receive_values(opc, sram[pe], d0, ds, pay, off, n, scratch)
    ready = t + cfg[CFG_O] + cfg[CFG_M] + n
    if pes[pe, P_SLACK] == SLACK_FRESH:
        pes[pe, P_SLACK] = SLACK_ABSORBED + last + 1 - ready if last + 1 >= ready \
            else SLACK_TAINTED
    return max(ready, last + 1), c, n


@njit(nrt=False)
def pack_ports(v):
    """A router table entry as uint8: the N E S W R bits, plus bit 5 if any other bit is set
    (so `tx == 0` keeps its meaning for out-of-range masks)."""
    return np.uint8((v & 31) | (32 if (v & ~31) != 0 else 0))


@njit(nrt=False)
def exec_route(k, modes, args, params, pes, pe, t, cfg, routes, fault):
    """route color, rx, tx: set this PE's router entry. Returns False after a fault."""
    c = operand(modes, args, k, S_COLOR, params, pes, pe)
    if c < 0 or c >= cfg[CFG_COLORS]:
        set_fault(fault, FAULT_COLOR, pe, t, c, 0, 0, 0)
        return False
    f = slot_index(cfg, pe, c)   # >= 0: colors set by `route` have slots
    routes[f] = pack_ports(operand(modes, args, k, S_SRC0, params, pes, pe))
    routes[f + 1] = pack_ports(operand(modes, args, k, S_SRC1, params, pes, pe))
    return True


@njit(nrt=False)
def arrive_at_barrier(pe, t, p, pes, stats, cfg, heap, fault):
    """A PE reaches a barrier; the last arrival releases every PE at max(arrival) + B + o
    (pushed in PE order, pc past the barrier)."""
    pes[pe, P_STATUS] = AT_BARRIER
    pes[pe, P_CLOCK], pes[pe, P_PC] = t, p
    stats[ST_BARRIER_COUNT] += 1
    stats[ST_BARRIER_MAX] = max(stats[ST_BARRIER_MAX], t)
    if stats[ST_BARRIER_COUNT] < cfg[CFG_LIVE]:
        return
    o = cfg[CFG_O]
    leave = stats[ST_BARRIER_MAX] + cfg[CFG_B] + o
    for q in range(pes.shape[0]):
        if pes[q, P_STATUS] != AT_BARRIER:
            continue
        pes[q, P_STATUS] = READY
        pes[q, P_PC] += 1
        pes[q, P_CLOCK] = leave
        pes[q, P_BUSY] += o
        if leave > cfg[CFG_MAX_CYCLES]:
            set_fault(fault, FAULT_CYCLES, q, leave, 0, 0, 0, 0)
            return
        stats[ST_HEAP] = heap_push(heap, stats[ST_HEAP], (leave << cfg[CFG_SHIFT]) | q)
    stats[ST_BARRIER_COUNT] = 0
    stats[ST_BARRIER_MAX] = 0


@njit(nrt=False)
def end_checks(pes, fifo, cfg, fault, rec):
    """After the heap empties: FAULT_DEADLOCK if a PE has not halted, else
    FAULT_UNDELIVERED for the first (PE, color) FIFO still holding messages."""
    for q in range(pes.shape[0]):
        if pes[q, P_STATUS] != HALTED:
            set_fault(fault, FAULT_DEADLOCK, q, pes[q, P_CLOCK], 0, 0, 0, 0)
            return
    npes, first = pes.shape[0], -1   # first: (PE, slot) as PE * slots + slot
    for f in range(fifo.shape[0] // 2):   # color-major order: keep the least (PE, slot)
        if fifo[2 * f] > 0:
            key = (f % npes) * cfg[CFG_SLOTS] + f // npes
            if first < 0 or key < first:
                first = key
    if first >= 0:
        q, slot = first // cfg[CFG_SLOTS], first % cfg[CFG_SLOTS]
        count, i = 0, fifo[2 * (slot * npes + q)] - 1
        while i >= 0:
            count += 1
            i = rec[i, REC_NEXT]
        color = cfg[CFG_SIZE + cfg[CFG_COLORS] + slot]
        set_fault(fault, FAULT_UNDELIVERED, q, 0, color, count, 0, 0)


@njit(nrt=False)
def initial_heap(pe_region, heap):
    """Push every non-idle PE at cycle 0 (keys = PE index, already in heap order)."""
    size = 0
    for pe in range(pe_region.shape[0]):
        if pe_region[pe] >= 0:
            heap[size] = pe
            size += 1
    return size


@njit(nrt=False, inline="always")
def is_ordered(opc):
    """send, route, barrier, halt: they end an activation unless they lead it (receives
    do not: isa/opcodes.py ORDERED_OPS)."""
    return opc == SEND or opc == ROUTE or opc == BARRIER or opc == HALT


# --- the run loop ---------------------------------------------------------------------------


@njit(nrt=False, inline="always")
def taint(pes, pe):
    """The PE in hand does something whose timing others or the results see: a fresh
    P_SLACK becomes SLACK_TAINTED."""
    if pes[pe, P_SLACK] == SLACK_FRESH:
        pes[pe, P_SLACK] = SLACK_TAINTED


@njit(nrt=False, inline="always")
def record_mark(marks, k, t):
    """mark k executed at cycle t: update first (min), last (max) and count."""
    if marks[k, M_COUNT] == 0 or t < marks[k, M_FIRST]:
        marks[k, M_FIRST] = t
    if t > marks[k, M_LAST]:
        marks[k, M_LAST] = t
    marks[k, M_COUNT] += 1


@njit(nrt=False, inline="always")
def suspend(pe, t, p, stats, code):
    """Park the PE in hand (its instruction at p is retried on resume) and return `code`
    to run_mesh, which grows a pool and calls advance_mesh again."""
    stats[ST_CUR_PE] = pe
    stats[ST_CUR_T] = t
    stats[ST_CUR_PC] = p
    return code


@njit(nrt=False, inline="always")
def exec_send(pe, t, k, p, modes, args, params, cfg, sram, pay, routes, edges, links, stack,
              rec, fifo, stats, pes, wake, fault):
    """send: check operands, store the values, route the message (resuming an interrupted
    route if stats[ST_ROUTE_SP] > 0). Returns the wavelet count, or a negative code:
    FAULTED, NEED_PAYLOAD, NEED_STACK, NEED_RECORDS (the PE is then suspended)."""
    sp = stats[ST_ROUTE_SP]
    if sp == 0:
        c, n, s0, ss0 = comm_operands(k, modes, args, params, pes, pe, t, cfg, fault, S_SRC0,
                                      S_SRC0_STRIDE)
        if c < 0:
            return FAULTED
        off = -1
        if cfg[CFG_FUNCTIONAL] and n > 0:
            if stats[ST_PAYLOAD] + n > pay.shape[0]:
                stats[ST_NEED] = n
                return suspend(pe, t, p, stats, NEED_PAYLOAD)
            off = store_payload(pay, stats, sram[pe], s0, ss0, n)
        stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = pe, PORT_R, \
            t + cfg[CFG_O] + cfg[CFG_M] + cfg[CFG_R], 0
        stats[ST_ROUTE_C], stats[ST_ROUTE_N], stats[ST_ROUTE_OFF] = c, n, off
        sp = 1
    c, n, off = stats[ST_ROUTE_C], stats[ST_ROUTE_N], stats[ST_ROUTE_OFF]
    sp = route_message(pe, c, n, off, sp, cfg, routes, edges, links, stack, rec, fifo, stats,
                       pes, wake, fault, t)
    stats[ST_ROUTE_SP] = max(sp, 0)
    if sp < 0:
        return FAULTED
    if sp > 0:
        if sp + 3 > stack.shape[0]:
            stats[ST_NEED] = sp + 3
            return suspend(pe, t, p, stats, NEED_STACK)
        return suspend(pe, t, p, stats, NEED_RECORDS)
    return n


@njit(nrt=False, inline="always")
def note_send(key, stats):
    """Record a send's heap key for the fast-forward's ordering check."""
    if stats[ST_PARKED] > 0 and key > stats[ST_PARKED_SEND_MAX]:
        stats[ST_PARKED_SEND_MAX] = key
    if key < stats[ST_SEND_MIN]:
        stats[ST_SEND_MIN] = key


@njit(nrt=False, inline="always")
def prefetch_pe(q, pes, pe_region, links):
    """Start loading the state PE q's next activation reads: its row, region and links
    (a hint; no effect on results)."""
    prefetch(pes, q)
    prefetch(pe_region, q)
    prefetch(links, 8 * q)


# Ready PEs wait in two heaps: `main` and `wake`, which holds the PEs woken by a delivery.
# A woken PE waits with its old clock, so it is usually the next to run; the small wake
# heap stays in cache, where the same key would climb and fall through the whole main
# heap. The minimum over both is the minimum of one heap holding all keys.


@njit(nrt=False, inline="always")
def wake_first(main, wake, stats):
    """Whether the smallest ready key is in the wake heap."""
    return stats[ST_WAKE] > 0 and (stats[ST_HEAP] == 0 or wake[0] < main[0])


@njit(nrt=False, inline="always")
def earliest(main, wake, stats):
    """The smallest ready key in either heap (NO_KEY when both are empty)."""
    a = main[0] if stats[ST_HEAP] > 0 else NO_KEY
    b = wake[0] if stats[ST_WAKE] > 0 else NO_KEY
    return min(a, b)


@njit(nrt=False, inline="always")
def next_pe(main, wake, stats, shift):
    """The PE to activate next: the suspended one, else the smallest ready key's (-1:
    none)."""
    pe = stats[ST_CUR_PE]
    if pe >= 0:
        stats[ST_CUR_PE] = -1
        return pe
    if wake_first(main, wake, stats):
        key, stats[ST_WAKE] = heap_pop(wake, stats[ST_WAKE])
    elif stats[ST_HEAP] > 0:
        key, stats[ST_HEAP] = heap_pop(main, stats[ST_HEAP])
    else:
        return -1
    return key & ((1 << shift) - 1)


@njit(nrt=False, inline="always")
def trade_places(main, wake, stats, key, shift):
    """The PE in hand (heap key `key`) reaches an ordered op: if a ready key is smaller,
    put it back (into the main heap) and return the PE of the smallest key, else -1."""
    if wake_first(main, wake, stats) and wake[0] < key:
        stats[ST_HEAP] = heap_push(main, stats[ST_HEAP], key)
        top, stats[ST_WAKE] = heap_pop(wake, stats[ST_WAKE])
        return top & ((1 << shift) - 1)
    if stats[ST_HEAP] > 0 and main[0] < key:
        return heap_replace(main, stats[ST_HEAP], key) & ((1 << shift) - 1)
    return -1


@njit(nrt=False)
def advance_mesh(op, modes, args, imm, static_cost, rstart, rlen, pe_region, params, routes,
             edges, cfg, sram, pes, links, stats, fault, heap, fifo, rec, stack, pay, scratch,
             marks):
    """The scheduler loop (allocates nothing). Returns DONE when the heap is empty,
    FAULTED, or a NEED_* code after suspending the PE in hand (see `suspend`)."""
    o, maxc, shift = cfg[CFG_O], cfg[CFG_MAX_CYCLES], cfg[CFG_SHIFT]
    main, wake = heap[:pes.shape[0]], heap[pes.shape[0]:]
    pe = next_pe(main, wake, stats, shift)
    while pe >= 0:
        if stats[ST_CUR_T] >= 0:   # resuming a suspended instruction
            t, p = stats[ST_CUR_T], stats[ST_CUR_PC]
            stats[ST_CUR_T] = -1
        else:
            t, p = pes[pe, P_CLOCK], pes[pe, P_PC]
        after = earliest(main, wake, stats)
        if after != NO_KEY:   # likely the next PE to run: fetch its state meanwhile
            prefetch_pe(after & ((1 << shift) - 1), pes, pe_region, links)
        base, ncode = rstart[pe_region[pe]], rlen[pe_region[pe]]
        first, following = True, -1
        while True:
            if p >= ncode:
                taint(pes, pe)
                pes[pe, P_STATUS] = HALTED
                pes[pe, P_FINISH] = t
                break
            k = base + p
            opc = op[k]
            if not first and is_ordered(opc):
                following = trade_places(main, wake, stats, (t << shift) | pe, shift)
                if following >= 0:
                    break
            first = False
            if opc == NOP or (opc >= MOVR and opc <= JMP):
                p = exec_control(opc, k, modes, args, params, pes, pe, t, p, ncode, cfg, fault)
                if p < 0:
                    return FAULTED
                t += o + 1
                pes[pe, P_BUSY] += o + 1
                stats[ST_INSTRUCTIONS] += 1
                continue
            if opc == LDR:
                if not exec_ldr(k, modes, args, params, pes, pe, t, cfg, sram, fault):
                    return FAULTED
                t += o + 1
                pes[pe, P_BUSY] += o + 1
                stats[ST_INSTRUCTIONS] += 1
                if t > maxc:
                    set_fault(fault, FAULT_CYCLES, pe, t, 0, 0, 0, 0)
                    return FAULTED
                p += 1
                continue
            if opc <= LAST_VECTOR or opc == RARGMAX:
                cost = exec_vector(opc, k, modes, args, imm, static_cost, params, pes, pe, t,
                                   cfg, sram, scratch, fault, stats)
                if cost < 0:
                    return FAULTED if cost == FAULTED else suspend(pe, t, p, stats, cost)
            elif opc == VGEMV:
                cost = exec_gemv(k, modes, args, static_cost, params, pes, pe, t, cfg, sram,
                                 scratch, fault, stats)
                if cost < 0:
                    return FAULTED if cost == FAULTED else suspend(pe, t, p, stats, cost)
            elif opc == VGEMM:
                cost = exec_gemm(k, modes, args, params, pes, pe, t, cfg, sram, scratch,
                                 fault, stats)
                if cost < 0:
                    return FAULTED if cost == FAULTED else suspend(pe, t, p, stats, cost)
            elif opc == REP:
                cost = exec_rep(k, op, modes, args, imm, params, pes, pe, t, cfg, sram,
                                scratch, fault, stats)
                if cost < 0:
                    return FAULTED if cost == FAULTED else suspend(pe, t, p, stats, cost)
                stats[ST_INSTRUCTIONS] += 1   # the body (counted with its rep)
                p += 1
            elif opc == SEND:
                taint(pes, pe)
                n = exec_send(pe, t, k, p, modes, args, params, cfg, sram, pay, routes, edges,
                              links, stack, rec, fifo, stats, pes, wake, fault)
                if n < 0:
                    return n
                note_send((t << shift) | pe, stats)
                cost = o + cfg[CFG_M] + n
            elif opc == RECV or opc == RECVADD:
                end, c, n = exec_receive(opc, k, modes, args, params, pes, pe, t, cfg, sram,
                                         pay, rec, fifo, stats, scratch, fault)
                if end == BLOCK:   # counted when the recv completes
                    pes[pe, P_STATUS] = BLOCKED
                    pes[pe, P_WAIT] = c
                    break
                if end < 0:
                    return FAULTED if end == FAULTED else suspend(pe, t, p, stats, end)
                pes[pe, P_BUSY] += o + cfg[CFG_M] + n
                t = end
                cost = 0
            elif opc == ROUTE:
                taint(pes, pe)
                if not exec_route(k, modes, args, params, pes, pe, t, cfg, routes, fault):
                    return FAULTED
                cost = o + 1
            elif opc == BARRIER:
                taint(pes, pe)
                stats[ST_INSTRUCTIONS] += 1
                arrive_at_barrier(pe, t, p, pes, stats, cfg, main, fault)
                if fault[F_CODE] != FAULT_NONE:
                    return FAULTED
                t, p = pes[pe, P_CLOCK], pes[pe, P_PC]
                break
            elif opc == MARK:   # a probe: 0 cycles (t <= maxc already)
                if args[k, S_DST] == cfg[CFG_STOP_MARK]:
                    pes[pe, P_STATUS] = PARKED
                    stats[ST_PARKED] += 1
                    break
                if pes[pe, P_SLACK] == SLACK_AT_CUT:   # the cut's own mark
                    pes[pe, P_SLACK] = SLACK_FRESH
                else:
                    taint(pes, pe)
                record_mark(marks, args[k, S_DST], t)
                stats[ST_INSTRUCTIONS] += 1
                p += 1
                continue
            else:
                taint(pes, pe)
                stats[ST_INSTRUCTIONS] += 1
                pes[pe, P_STATUS] = HALTED
                pes[pe, P_FINISH] = t
                p += 1
                break
            stats[ST_INSTRUCTIONS] += 1
            t += cost
            pes[pe, P_BUSY] += cost
            if t > maxc:
                set_fault(fault, FAULT_CYCLES, pe, t, 0, 0, 0, 0)
                return FAULTED
            p += 1
        pes[pe, P_CLOCK], pes[pe, P_PC] = t, p
        pe = following if following >= 0 else next_pe(main, wake, stats, shift)
    return DONE


@njit
def new_pools(pe_region, cfg, heap):
    """The pools `run_mesh` works in besides the heap and FIFOs (which the caller
    allocates, so that numpy can back them with huge pages): puts every non-idle PE into
    the main heap (`heap[:P]`; the wake heap is `heap[P:]`) at cycle 0 and returns (its
    size, the record pool, the routing stack, the payload pool, the value scratch; the
    last two empty in timing-only mode)."""
    pay = np.empty(1024 if cfg[CFG_FUNCTIONAL] else 0, np.float32)
    scratch = np.empty(64 if cfg[CFG_FUNCTIONAL] else 0, np.float32)
    return initial_heap(pe_region, heap), new_records(1024), np.empty((64, 4), np.int64), \
        pay, scratch


@njit
def run_mesh(op, modes, args, imm, static_cost, rstart, rlen, pe_region, params, routes,
             edges, cfg, sram, pes, links, stats, fault, marks, heap, fifo, rec, stack, pay,
             scratch):
    """Run a program to completion, to its first fault, or until every PE still running
    is parked at the stop mark (see the module docstring).

    Inputs: code arrays (op, modes, args [N, 8], imm, static_cost), region start/length,
    pe_region, params [P, K], router tables `routes` (interleaved rx/tx in pack_ports form,
    updated in place), edges [P] (ports leaving the mesh), cfg (CFG_*), sram [P, words]
    (functional) or [0, 0]. Outputs, zeroed by the
    caller except pes' status/wait columns: pes [P, P_FIELDS], links [P * 8] (free/busy),
    stats, fault, and marks [num_marks, M_FIELDS] (first/last set to -1 by the caller).
    Pools (from `new_pools`; stats[ST_HEAP] and stats[ST_WAKE] = the sizes of the main
    heap heap[:P] and the wake heap heap[P:]): heaps, FIFO heads and
    tails, record and payload pools, routing stack and scratch. The only allocating
    kernel: it grows a pool whenever `advance_mesh` suspends asking for it, and returns
    (code, rec, stack, pay, scratch) with code DONE, FAULTED or ALL_PARKED, so a caller
    can resume a parked run with the same pools.
    """
    while True:
        code = advance_mesh(op, modes, args, imm, static_cost, rstart, rlen, pe_region, params,
                        routes, edges, cfg, sram, pes, links, stats, fault, heap, fifo, rec,
                        stack, pay, scratch, marks)
        if code == DONE or code == FAULTED:
            break
        if code == NEED_SCRATCH:
            scratch = np.empty(2 * stats[ST_NEED], np.float32)
        elif code == NEED_STACK:
            stack = grow_rows(stack, stats[ST_NEED])
        elif code == NEED_RECORDS:
            rec = grow_records(rec, stats)
        else:
            pay = compact_payloads(pay, rec, stats, stats[ST_NEED])
    stats[ST_PEAK_RECORDS] = rec.shape[0]
    if code == DONE and stats[ST_PARKED] > 0:
        code = ALL_PARKED
    elif code == DONE:
        end_checks(pes, fifo, cfg, fault, rec)
    return code, rec, stack, pay, scratch
