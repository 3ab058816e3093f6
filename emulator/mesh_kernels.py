"""Numba kernels of the mesh engine: plain arrays and scalars in, plain arrays out.

`run_mesh` executes a whole program with exactly the scheduling of the reference
interpreter (isa/reference.py, which defines semantics and timing):
- a binary heap of ready PEs keyed by (clock, PE index), stored in two arrays;
- activations: a popped PE runs one leading communication op, then local ops until the next
  communication op (and skips the push/pop when it would be popped again at once);
- `send` routes the message depth-first over the router tables at once, reserving links
  (`link_free`), and appends one delivery per destination core to a per-(PE, color) FIFO;
- FIFOs are singly linked lists in a record pool (`rec`, rows of REC_* fields) with a free
  list, so memory is bounded by the messages in flight, not by the messages ever sent;
- functional mode copies each message's values once into a payload pool shared by all its
  deliveries; the pool is compacted (live blocks copied to a fresh array) when full.
Faults are reported through `fault` (FAULT_* code, PE, cycle, details); the Python wrapper
(emulator/mesh_engine.py) turns them into `MeshFault` messages worded like the reference's.
"""

import math

import numpy as np

from emulator.jit import njit

# PE status (same values as the reference).
READY, BLOCKED, AT_BARRIER, HALTED = 0, 1, 2, 3

# Opcodes (isa/opcodes.py `Op`), as plain ints for the kernels.
NOP, VMOV, VADD, VSUB, VMUL, VMAX, VFMA, VSCALE, VADDI, VSET = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
VEXP, VRSQRT, VRECIP, VSIGMOID, RSUM, RMAX, RDOT = 10, 11, 12, 13, 14, 15, 16
SEND, RECV, RECVADD, ROUTE, MOVR, ADDR, DJNZ, JMP, BARRIER, HALT = range(17, 27)
LAST_VECTOR = RDOT   # opcodes 1..16 are vector ops and reductions

# Operand slots (isa/opcodes.py SLOT_*).
S_DST, S_SRC0, S_SRC1, S_N, S_DST_STRIDE, S_SRC0_STRIDE, S_SRC1_STRIDE, S_COLOR = range(8)
PORT_R = 16
EXP_LIMIT = 709.782712893384   # log(DBL_MAX): above it math.exp overflows to inf

# cfg[] indices (filled by mesh_engine.kernel_config).
CFG_WIDTH, CFG_HEIGHT, CFG_COLORS, CFG_SRAM, CFG_O, CFG_H, CFG_R, CFG_W = range(8)
CFG_B, CFG_MAX_CYCLES, CFG_FUNCTIONAL, CFG_LIVE = 8, 9, 10, 11
CFG_SIZE = 12

# pes[pe, P_*] columns: per-PE state (status and wait color use the reference's values).
P_CLOCK, P_PC, P_BUSY, P_FINISH, P_STATUS, P_WAIT = range(6)
P_FIELDS = 6

# stats[] indices: counters, free-list head, payload pool top, barrier bookkeeping.
ST_INSTRUCTIONS, ST_MESSAGES, ST_RECORDS, ST_PAYLOAD = 0, 1, 2, 3
ST_BARRIER_COUNT, ST_BARRIER_MAX, ST_PEAK_RECORDS = 4, 5, 6
ST_SIZE = 8

# Fault codes; fault[] = code, PE, cycle, then details F_A.. (meaning per code).
FAULT_NONE, FAULT_SRAM, FAULT_COUNT, FAULT_COLOR, FAULT_CYCLES, FAULT_JUMP = 0, 1, 2, 3, 4, 5
FAULT_LOOP, FAULT_RX, FAULT_NO_TX, FAULT_OFF_MESH, FAULT_LENGTH = 6, 7, 8, 9, 10
FAULT_REGISTER, FAULT_DEADLOCK, FAULT_UNDELIVERED = 11, 12, 13
F_CODE, F_PE, F_CYCLE, F_A, F_B, F_C, F_D = range(7)
FAULT_SIZE = 8

# Record pool fields.
REC_NEXT, REC_LAST, REC_LEN, REC_OFF, REC_SRC = range(5)
REC_FIELDS = 5


# --- heap of (clock, PE) ---------------------------------------------------------------


@njit
def heap_less(ta, pa, tb, pb):
    """(ta, pa) < (tb, pb) lexicographically."""
    return ta < tb or (ta == tb and pa < pb)


@njit
def heap_push(ht, hp, size, t, pe):
    """Insert (t, pe) into the heap of `size` entries; return the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if not heap_less(t, pe, ht[parent], hp[parent]):
            break
        ht[i] = ht[parent]
        hp[i] = hp[parent]
        i = parent
    ht[i] = t
    hp[i] = pe
    return size + 1


@njit
def heap_pop(ht, hp, size):
    """Remove the minimum; return (its PE, the new size). `size` must be > 0."""
    top = hp[0]
    size -= 1
    t, pe = ht[size], hp[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap_less(ht[child + 1], hp[child + 1], ht[child], hp[child]):
            child += 1
        if not heap_less(ht[child], hp[child], t, pe):
            break
        ht[i] = ht[child]
        hp[i] = hp[child]
        i = child
    if size > 0:
        ht[i] = t
        hp[i] = pe
    return top, size


# --- operands and faults ---------------------------------------------------------------


@njit
def operand(modes, args, k, slot, params, regs, pe):
    """Integer value of operand `slot` of instruction `k` for PE `pe`."""
    bits = (modes[k] >> (8 * slot)) & 0xFF
    value = args[k, slot]
    kind = bits & 0x3
    if kind == 0:
        return value
    if kind == 1:
        return np.int64(params[pe, value])
    return regs[pe * 8 + ((bits >> 2) & 0x7)] + value


@njit
def set_fault(fault, code, pe, cycle, a, b, c, d):
    """Record a fault (the first one wins; the kernel returns right after)."""
    fault[F_CODE] = code
    fault[F_PE] = pe
    fault[F_CYCLE] = cycle
    fault[F_A] = a
    fault[F_B] = b
    fault[F_C] = c
    fault[F_D] = d


@njit
def first_bad_address(base, stride, n, words):
    """Address of the first element of descriptor (base, stride, n) outside 0..words-1,
    or -1 if all are inside (the caller checks the range in O(1) first)."""
    for i in range(n):
        a = base + stride * i
        if a < 0 or a >= words:
            return a
    return -1


@njit
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


@njit
def exp64(x):
    """math.exp with overflow giving +inf (as the reference's `_exp`)."""
    if x > EXP_LIMIT:
        return math.inf
    return math.exp(x)


@njit
def max32(a, b):
    """NaN if either is NaN, else a if a >= b else b (the reference's `_max32`)."""
    if a != a or b != b:
        return np.float32(np.nan)
    return a if a >= b else b


@njit
def unary(op, a, imm):
    """fp32 result of a one-source vector op on element `a`."""
    if op == VMOV:
        return a
    if op == VSCALE:
        return np.float32(a * imm)
    if op == VADDI:
        return np.float32(a + imm)
    x = np.float64(a)
    if op == VEXP:
        return np.float32(exp64(x))
    if op == VRSQRT:
        return np.float32(np.float64(1.0) / np.sqrt(x))
    if op == VRECIP:
        return np.float32(np.float64(1.0) / x)
    return np.float32(np.float64(1.0) / (np.float64(1.0) + exp64(-x)))


@njit
def binary(op, d, a, b):
    """fp32 result of a two-source vector op (`d` is the old destination, for vfma)."""
    if op == VADD:
        return np.float32(a + b)
    if op == VSUB:
        return np.float32(a - b)
    if op == VMUL:
        return np.float32(a * b)
    if op == VMAX:
        return max32(a, b)
    return np.float32(d + np.float32(a * b))


@njit
def reduce_values(op, mem, s0, ss0, s1, ss1, n):
    """rsum / rmax / rdot accumulated sequentially in fp32 from element 0."""
    if op == RMAX:
        acc = np.float32(-np.inf)
        for i in range(n):
            acc = max32(acc, mem[s0 + ss0 * i])
        return acc
    acc = np.float32(0.0)
    for i in range(n):
        v = mem[s0 + ss0 * i]
        if op == RDOT:
            v = np.float32(v * mem[s1 + ss1 * i])
        acc = np.float32(acc + v)
    return acc


@njit
def vector_values(op, mem, d0, ds, s0, ss0, s1, ss1, n, imm, scratch):
    """Apply a vector op or reduction to one PE's SRAM row; sources are read before any
    destination element is written (via `scratch`, at least n long)."""
    if op >= RSUM:
        mem[d0] = reduce_values(op, mem, s0, ss0, s1, ss1, n)
        return
    for i in range(n):
        if op == VSET:
            scratch[i] = imm
        elif op == VMOV or op == VSCALE or op == VADDI or op >= VEXP:
            scratch[i] = unary(op, mem[s0 + ss0 * i], imm)
        else:
            scratch[i] = binary(op, mem[d0 + ds * i], mem[s0 + ss0 * i], mem[s1 + ss1 * i])
    for i in range(n):
        mem[d0 + ds * i] = scratch[i]


@njit
def grow_scratch(scratch, n):
    """`scratch`, or a larger one if it is shorter than n."""
    if scratch.shape[0] >= n:
        return scratch
    return np.empty(max(n, 2 * scratch.shape[0]), np.float32)


# --- record pool and payload pool --------------------------------------------------------


@njit
def new_records(cap):
    """A record pool of `cap` rows, all on the free list (REC_LEN = -1 marks a free row)."""
    rec = np.empty((cap, REC_FIELDS), np.int64)
    for i in range(cap):
        rec[i, REC_NEXT] = i + 1 if i + 1 < cap else -1
        rec[i, REC_LEN] = -1
    return rec


@njit
def grow_records(rec):
    """The pool with its capacity doubled; the new rows form the free list (head = old cap)."""
    cap = rec.shape[0]
    out = np.empty((2 * cap, REC_FIELDS), np.int64)
    out[:cap] = rec
    for i in range(cap, 2 * cap):
        out[i, REC_NEXT] = i + 1 if i + 1 < 2 * cap else -1
        out[i, REC_LEN] = -1
    return out


@njit
def compact_payloads(pay, rec, need):
    """A fresh payload pool holding every live message's values once (shared blocks stay
    shared) with room for `need` more words; REC_OFF fields are rewritten. Returns
    (pool, words used)."""
    live = np.flatnonzero((rec[:, REC_LEN] > 0) & (rec[:, REC_OFF] >= 0))
    offs = rec[live, REC_OFF]
    order = np.argsort(offs, kind="mergesort")
    used = 0
    for j in range(order.shape[0]):
        i = live[order[j]]
        if j == 0 or offs[order[j]] != offs[order[j - 1]]:
            used += rec[i, REC_LEN]
    out = np.empty(max(2 * (used + need), 1024), np.float32)
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
    return out, top


@njit
def deliver(q, c, last, n, off, src, rec, head, tail, ncolors, stats, pes, ht, hp, hsize):
    """Append a delivery to FIFO (q, c), waking q if it waits on c. Returns (rec, hsize)."""
    i = stats[ST_RECORDS]
    if i < 0:
        i = rec.shape[0]
        rec = grow_records(rec)
    stats[ST_RECORDS] = rec[i, REC_NEXT]
    rec[i, REC_NEXT] = -1
    rec[i, REC_LAST] = last
    rec[i, REC_LEN] = n
    rec[i, REC_OFF] = off
    rec[i, REC_SRC] = src
    f = q * ncolors + c
    if tail[f] < 0:
        head[f] = i
    else:
        rec[tail[f], REC_NEXT] = i
    tail[f] = i
    stats[ST_MESSAGES] += 1
    if pes[q, P_STATUS] == BLOCKED and pes[q, P_WAIT] == c:
        pes[q, P_STATUS] = READY
        pes[q, P_WAIT] = -1
        hsize = heap_push(ht, hp, hsize, pes[q, P_CLOCK], q)
    return rec, hsize


@njit
def free_record(rec, head, tail, f, stats):
    """Unlink the oldest record of FIFO f (read its fields first) and free its row."""
    i = head[f]
    head[f] = rec[i, REC_NEXT]
    if head[f] < 0:
        tail[f] = -1
    rec[i, REC_LEN] = -1
    rec[i, REC_NEXT] = stats[ST_RECORDS]
    stats[ST_RECORDS] = i


# --- routing -----------------------------------------------------------------------------


@njit
def route_message(pe, c, n, leaves, off, cfg, route_rx, route_tx, link_free, link_busy,
                  stack, rec, head, tail, stats, pes, ht, hp, hsize, fault, t):
    """Route one message depth-first exactly as the reference (stack of (router, input
    port, head cycle, hops); out-ports pushed N, E, S, W, so the last pushed goes next).
    Returns (stack, rec, hsize); on a fault `fault` is set and the rest is undefined."""
    width, height, ncolors = cfg[CFG_WIDTH], cfg[CFG_HEIGHT], cfg[CFG_COLORS]
    hop, ramp, npes = cfg[CFG_H], cfg[CFG_R], width * height
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = pe, PORT_R, leaves, 0
    sp = 1
    while sp > 0:
        sp -= 1
        q, in_port, hd, hops = stack[sp, 0], stack[sp, 1], stack[sp, 2], stack[sp, 3]
        if hops > npes:
            set_fault(fault, FAULT_LOOP, pe, t, c, hops, 0, 0)
            return stack, rec, hsize
        rx, tx = route_rx[q * ncolors + c], route_tx[q * ncolors + c]
        if not rx & in_port:
            set_fault(fault, FAULT_RX, pe, t, c, q, in_port, rx)
            return stack, rec, hsize
        if tx == 0:
            set_fault(fault, FAULT_NO_TX, pe, t, c, q, 0, 0)
            return stack, rec, hsize
        if sp + 4 > stack.shape[0]:
            bigger = np.empty((2 * stack.shape[0], 4), np.int64)
            bigger[:sp] = stack[:sp]
            stack = bigger
        x, y = q % width, q // width
        for d in range(4):
            port = 1 << d
            if not tx & port:
                continue
            nx = x + (1 if d == 1 else (-1 if d == 3 else 0))
            ny = y + (1 if d == 2 else (-1 if d == 0 else 0))
            if nx < 0 or nx >= width or ny < 0 or ny >= height:
                set_fault(fault, FAULT_OFF_MESH, pe, t, c, q, port, 0)
                return stack, rec, hsize
            link = q * 4 + d
            start = max(hd, link_free[link])
            link_free[link] = start + n
            link_busy[link] += n
            stack[sp, 0], stack[sp, 1] = ny * width + nx, 1 << ((d + 2) % 4)
            stack[sp, 2], stack[sp, 3] = start + hop, hops + 1
            sp += 1
        if tx & PORT_R:
            rec, hsize = deliver(q, c, hd + ramp + n - 1, n, off, pe, rec, head, tail,
                                 ncolors, stats, pes, ht, hp, hsize)
    return stack, rec, hsize


# --- instructions ------------------------------------------------------------------------


@njit
def exec_vector(opc, k, modes, args, imm, params, regs, pe, t, cfg, sram, scratch, fault):
    """A vector op or reduction: check count and descriptors, compute in functional mode.
    Returns (cycles it costs or -1 on a fault, scratch)."""
    n = operand(modes, args, k, S_N, params, regs, pe)
    if n < 0:
        set_fault(fault, FAULT_COUNT, pe, t, n, 0, 0, 0)
        return -1, scratch
    words = cfg[CFG_SRAM]
    d0 = operand(modes, args, k, S_DST, params, regs, pe)
    ds = operand(modes, args, k, S_DST_STRIDE, params, regs, pe)
    if not check_descriptor(d0, ds, n, words, fault, pe, t):
        return -1, scratch
    s0 = operand(modes, args, k, S_SRC0, params, regs, pe)
    ss0 = operand(modes, args, k, S_SRC0_STRIDE, params, regs, pe)
    if not check_descriptor(s0, ss0, n, words, fault, pe, t):
        return -1, scratch
    s1 = operand(modes, args, k, S_SRC1, params, regs, pe)
    ss1 = operand(modes, args, k, S_SRC1_STRIDE, params, regs, pe)
    if not check_descriptor(s1, ss1, n, words, fault, pe, t):
        return -1, scratch
    if cfg[CFG_FUNCTIONAL] and n > 0:
        scratch = grow_scratch(scratch, n)
        vector_values(opc, sram[pe], d0, ds, s0, ss0, s1, ss1, n, imm[k], scratch)
    w = cfg[CFG_W]
    return cfg[CFG_O] + (n + w - 1) // w, scratch


@njit
def exec_control(opc, k, modes, args, params, regs, pe, t, p, ncode, cfg, fault):
    """movr / addr / djnz / jmp / nop. Returns the next pc, or -1 on a fault (pes clock
    is updated by the caller)."""
    rd = args[k, S_DST]
    value = operand(modes, args, k, S_SRC0, params, regs, pe)
    if opc == MOVR or opc == ADDR or opc == DJNZ:
        if rd < 0 or rd >= 8:
            set_fault(fault, FAULT_REGISTER, pe, t, rd, 0, 0, 0)
            return -1
    nxt = p + 1
    if opc == MOVR:
        regs[pe * 8 + rd] = value
    elif opc == ADDR:
        regs[pe * 8 + rd] += value
    elif opc == DJNZ:
        regs[pe * 8 + rd] -= 1
        if regs[pe * 8 + rd] != 0:
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


@njit
def color_operand(k, modes, args, params, regs, pe, t, cfg, fault):
    """The color operand, or -1 after recording FAULT_COLOR."""
    c = operand(modes, args, k, S_COLOR, params, regs, pe)
    if c < 0 or c >= cfg[CFG_COLORS]:
        set_fault(fault, FAULT_COLOR, pe, t, c, 0, 0, 0)
        return -1
    return c


@njit
def store_payload(pay, rec, stats, mem, s0, ss0, n):
    """Copy a message's values into the payload pool; return (pool, offset)."""
    top = stats[ST_PAYLOAD]
    if top + n > pay.shape[0]:
        pay, top = compact_payloads(pay, rec, n)
    for i in range(n):
        pay[top + i] = mem[s0 + ss0 * i]
    stats[ST_PAYLOAD] = top + n
    return pay, top


@njit
def receive_values(opc, mem, d0, ds, pay, off, n, scratch):
    """recv: dst[i] = w[i]; recvadd: dst[i] = dst[i] + w[i] (all old values read first,
    so with repeated addresses the highest index wins, as in the reference)."""
    if opc == RECV:
        for i in range(n):
            mem[d0 + ds * i] = pay[off + i]
        return
    for i in range(n):
        scratch[i] = np.float32(mem[d0 + ds * i] + pay[off + i])
    for i in range(n):
        mem[d0 + ds * i] = scratch[i]


@njit
def release_barrier(pes, stats, cfg, ht, hp, hsize, fault):
    """Every PE at the barrier leaves at max(arrival) + B + o, pushed in PE order.
    Returns the heap size (fault set on a cycle-limit overrun)."""
    o = cfg[CFG_O]
    release = stats[ST_BARRIER_MAX] + cfg[CFG_B]
    for q in range(pes.shape[0]):
        if pes[q, P_STATUS] != AT_BARRIER:
            continue
        pes[q, P_STATUS] = READY
        pes[q, P_PC] += 1
        pes[q, P_CLOCK] = release + o
        pes[q, P_BUSY] += o
        if release + o > cfg[CFG_MAX_CYCLES]:
            set_fault(fault, FAULT_CYCLES, q, release + o, 0, 0, 0, 0)
            return hsize
        hsize = heap_push(ht, hp, hsize, release + o, q)
    stats[ST_BARRIER_COUNT] = 0
    stats[ST_BARRIER_MAX] = 0
    return hsize


@njit
def end_checks(pes, head, ncolors, fault, rec):
    """After the heap empties: FAULT_DEADLOCK if a PE has not halted, else
    FAULT_UNDELIVERED for the first (PE, color) FIFO still holding messages."""
    for q in range(pes.shape[0]):
        if pes[q, P_STATUS] != HALTED:
            set_fault(fault, FAULT_DEADLOCK, q, pes[q, P_CLOCK], 0, 0, 0, 0)
            return
    for f in range(head.shape[0]):
        if head[f] >= 0:
            count, i = 0, head[f]
            while i >= 0:
                count += 1
                i = rec[i, REC_NEXT]
            set_fault(fault, FAULT_UNDELIVERED, f // ncolors, 0, f % ncolors, count, 0, 0)
            return


@njit
def initial_heap(pe_region, ht, hp):
    """Push every non-idle PE at cycle 0 (already in heap order); return the size."""
    size = 0
    for pe in range(pe_region.shape[0]):
        if pe_region[pe] >= 0:
            ht[size] = 0
            hp[size] = pe
            size += 1
    return size


@njit
def is_comm(opc):
    """send, recv, recvadd, route, barrier, halt: executed only in global time order."""
    return (SEND <= opc and opc <= ROUTE) or opc >= BARRIER


@njit
def pack_ports(v):
    """A router table entry as uint8: the N E S W R bits, plus bit 5 if any other bit is set
    (so `tx == 0` keeps its meaning for out-of-range masks)."""
    return np.uint8((v & 31) | (32 if (v & ~31) != 0 else 0))


@njit
def exec_send(k, modes, args, params, regs, pe, t, cfg, sram, pay, rec, stats, fault):
    """Check a send's operands and store its values. Returns (color, n, payload offset,
    pool) with color -1 after a fault."""
    c = color_operand(k, modes, args, params, regs, pe, t, cfg, fault)
    if c < 0:
        return -1, 0, -1, pay
    n = operand(modes, args, k, S_N, params, regs, pe)
    if n < 0:
        set_fault(fault, FAULT_COUNT, pe, t, n, 0, 0, 0)
        return -1, 0, -1, pay
    s0 = operand(modes, args, k, S_SRC0, params, regs, pe)
    ss0 = operand(modes, args, k, S_SRC0_STRIDE, params, regs, pe)
    if not check_descriptor(s0, ss0, n, cfg[CFG_SRAM], fault, pe, t):
        return -1, 0, -1, pay
    off = -1
    if cfg[CFG_FUNCTIONAL] and n > 0:
        pay, off = store_payload(pay, rec, stats, sram[pe], s0, ss0, n)
    return c, n, off, pay


@njit
def exec_receive(opc, k, modes, args, params, regs, pe, t, cfg, sram, pay, rec, head, tail,
                 stats, scratch, fault):
    """recv / recvadd. Returns (end cycle, or -1 on a fault, or -2 when the FIFO is empty
    and the PE must block; the color; the wavelet count; scratch)."""
    c = color_operand(k, modes, args, params, regs, pe, t, cfg, fault)
    if c < 0:
        return -1, 0, 0, scratch
    n = operand(modes, args, k, S_N, params, regs, pe)
    if n < 0:
        set_fault(fault, FAULT_COUNT, pe, t, n, 0, 0, 0)
        return -1, 0, 0, scratch
    d0 = operand(modes, args, k, S_DST, params, regs, pe)
    ds = operand(modes, args, k, S_DST_STRIDE, params, regs, pe)
    if not check_descriptor(d0, ds, n, cfg[CFG_SRAM], fault, pe, t):
        return -1, 0, 0, scratch
    f = pe * cfg[CFG_COLORS] + c
    i = head[f]
    if i < 0:
        return -2, c, n, scratch
    length, last, off, src = rec[i, REC_LEN], rec[i, REC_LAST], rec[i, REC_OFF], rec[i, REC_SRC]
    free_record(rec, head, tail, f, stats)
    if length != n:
        set_fault(fault, FAULT_LENGTH, pe, t, c, n, length, src)
        fault[F_D + 1] = opc
        return -1, 0, 0, scratch
    if cfg[CFG_FUNCTIONAL] and n > 0:
        scratch = grow_scratch(scratch, n)
        receive_values(opc, sram[pe], d0, ds, pay, off, n, scratch)
    return max(t + cfg[CFG_O] + n, last + 1), c, n, scratch


@njit
def run_mesh(op, modes, args, imm, rstart, rlen, pe_region, params, route_rx, route_tx,
             cfg, sram, pes, regs, link_busy, stats, fault):
    """Run a program to completion or to its first fault (see the module docstring).

    Inputs: code arrays (op, modes, args [N, 8], imm), region start/length, pe_region,
    params [P, K], router tables route_rx/route_tx [P * colors] (pack_ports form, updated
    in place), cfg (CFG_*), sram [P, words] (functional) or [0, 0]. Outputs, zeroed by the
    caller: pes [P, P_FIELDS], regs [P * 8], link_busy [P * 4], stats, fault.
    """
    npes, ncolors = pe_region.shape[0], cfg[CFG_COLORS]
    o, maxc, functional = cfg[CFG_O], cfg[CFG_MAX_CYCLES], cfg[CFG_FUNCTIONAL] != 0
    ht, hp = np.empty(npes, np.int64), np.empty(npes, np.int64)
    hsize = initial_heap(pe_region, ht, hp)
    head = np.full(npes * ncolors, -1, np.int32)
    tail = np.full(npes * ncolors, -1, np.int32)
    rec = new_records(1024)
    link_free = np.zeros(npes * 4, np.int64)
    stack = np.empty((64, 4), np.int64)
    pay = np.empty(1024 if functional else 0, np.float32)
    scratch = np.empty(64, np.float32)
    while hsize > 0:
        pe, hsize = heap_pop(ht, hp, hsize)
        t, p = pes[pe, P_CLOCK], pes[pe, P_PC]
        region = pe_region[pe]
        base, ncode = rstart[region], rlen[region]
        first = True
        while True:
            if p >= ncode:
                pes[pe, P_STATUS] = HALTED
                pes[pe, P_FINISH] = t
                break
            k = base + p
            opc = op[k]
            if not first and is_comm(opc):
                if hsize > 0 and not heap_less(t, pe, ht[0], hp[0]):
                    hsize = heap_push(ht, hp, hsize, t, pe)
                    break
            first = False
            stats[ST_INSTRUCTIONS] += 1
            if opc == NOP or (opc >= MOVR and opc <= JMP):
                p = exec_control(opc, k, modes, args, params, regs, pe, t, p, ncode, cfg,
                                 fault)
                if p < 0:
                    return
                t += o + 1
                pes[pe, P_BUSY] += o + 1
                continue
            if opc <= LAST_VECTOR:
                cost, scratch = exec_vector(opc, k, modes, args, imm, params, regs, pe, t,
                                            cfg, sram, scratch, fault)
                if cost < 0:
                    return
            elif opc == SEND:
                c, n, off, pay = exec_send(k, modes, args, params, regs, pe, t, cfg, sram,
                                           pay, rec, stats, fault)
                if c < 0:
                    return
                stack, rec, hsize = route_message(
                    pe, c, n, t + o + cfg[CFG_R], off, cfg, route_rx, route_tx, link_free,
                    link_busy, stack, rec, head, tail, stats, pes, ht, hp, hsize, fault, t)
                if fault[F_CODE] != FAULT_NONE:
                    return
                cost = o + n
            elif opc == RECV or opc == RECVADD:
                end, c, n, scratch = exec_receive(opc, k, modes, args, params, regs, pe, t, cfg,
                                               sram, pay, rec, head, tail, stats, scratch,
                                               fault)
                if end == -1:
                    return
                if end == -2:   # blocked: not counted until the recv completes
                    stats[ST_INSTRUCTIONS] -= 1
                    pes[pe, P_STATUS] = BLOCKED
                    pes[pe, P_WAIT] = c
                    break
                pes[pe, P_BUSY] += o + n
                t = end
                cost = 0
            elif opc == ROUTE:
                c = color_operand(k, modes, args, params, regs, pe, t, cfg, fault)
                if c < 0:
                    return
                route_rx[pe * ncolors + c] = pack_ports(
                    operand(modes, args, k, S_SRC0, params, regs, pe))
                route_tx[pe * ncolors + c] = pack_ports(
                    operand(modes, args, k, S_SRC1, params, regs, pe))
                cost = o + 1
            elif opc == BARRIER:
                pes[pe, P_STATUS] = AT_BARRIER
                pes[pe, P_CLOCK], pes[pe, P_PC] = t, p
                stats[ST_BARRIER_COUNT] += 1
                stats[ST_BARRIER_MAX] = max(stats[ST_BARRIER_MAX], t)
                if stats[ST_BARRIER_COUNT] == cfg[CFG_LIVE]:
                    hsize = release_barrier(pes, stats, cfg, ht, hp, hsize, fault)
                    if fault[F_CODE] != FAULT_NONE:
                        return
                    t, p = pes[pe, P_CLOCK], pes[pe, P_PC]
                break
            else:
                pes[pe, P_STATUS] = HALTED
                pes[pe, P_FINISH] = t
                p += 1
                break
            t += cost
            pes[pe, P_BUSY] += cost
            if t > maxc:
                set_fault(fault, FAULT_CYCLES, pe, t, 0, 0, 0, 0)
                return
            p += 1
        pes[pe, P_CLOCK], pes[pe, P_PC] = t, p
    stats[ST_PEAK_RECORDS] = rec.shape[0]
    end_checks(pes, head, ncolors, fault, rec)
