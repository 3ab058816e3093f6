"""The reference interpreter: the executable definition of the mesh ISA's values and timing.

Written for reading, not speed; the Numba engine (emulator/mesh/engine.py) must agree with
it bit for bit on values and exactly on every cycle count. The rules it implements are
docs/isa.md and docs/timing.md; the scheduling rule that makes runs deterministic is:

- Each PE has a clock. A heap holds ready PEs keyed by (clock, PE index). The minimum is
  popped and runs an *activation*: if its next instruction is a communication instruction
  (send, recv, recvadd, route, barrier, halt) it runs first; then local instructions and
  receives run until the next send, route, barrier or halt, where the PE is pushed back
  with its clock. So sends and route changes happen in global cycle order while local work
  is batched. A receive reads only its own FIFO, whose order the sends fix, so it may run
  early: it completes at once if its message is queued, else blocks, and a delivery wakes
  the PE at the same clock, which gives the same cycles as running it in order.
- `mark` is a local probe: 0 cycles, counted as an executed instruction; it records the
  PE's clock for its mark id (first = min, last = max over all executions, and a count).
- A `send` routes its message at once (depth-first over the router tables, reserving links);
  each destination core gets a delivery in its per-color FIFO, waking a PE blocked on it.
"""

import heapq
import math
import time
from dataclasses import dataclass

import numpy as np

from emulator.hw.errors import BudgetError, MeshFault
from emulator.hw.mesh import MeshConfig
from isa.opcodes import (
    COMM_OPS,
    DIRECTIONS,
    LDR_LIMIT,
    MODE_IMM,
    MODE_PARAM,
    NUM_REGS,
    OPPOSITE,
    ORDERED_OPS,
    PORT_NAMES,
    PORT_R,
    REDUCTION_OPS,
    REP_INNER_SLOTS,
    REP_OUTER_SLOTS,
    SLOT_COLOR,
    SLOT_DST,
    SLOT_DST_STRIDE,
    SLOT_N,
    SLOT_SRC0,
    SLOT_SRC0_STRIDE,
    SLOT_SRC1,
    SLOT_SRC1_STRIDE,
    VECTOR_OPS,
    Op,
    Status,
    slot_mode,
)
from isa.program import Program, RunResult
from isa.validate import check_run_memory, run_sram, validate_program

READY, BLOCKED, AT_BARRIER, HALTED = (int(s) for s in Status)
NAN32 = np.float32("nan")


@dataclass
class Event:
    """One executed instruction (for `emu step` and students). Times in cycles.

    A send also names its color and, per destination core, `((x, y), cycle its last
    wavelet arrives)`; with `record_values` an event keeps the values the instruction
    wrote (vector ops, reductions, receives) or sent (sends), else None."""

    start: int
    end: int
    x: int
    y: int
    pc: int
    text: str
    detail: str = ""
    color: int | None = None
    arrivals: tuple = ()
    values: np.ndarray | None = None


@dataclass
class Delivery:
    """A message waiting in a core's FIFO: `last` = cycle its last wavelet arrives."""

    last: int
    length: int
    values: np.ndarray | None
    source: int


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _max32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise max: NaN if either is NaN, else a if a >= b else b."""
    out = np.where(a >= b, a, b).astype(np.float32)
    out[np.isnan(a) | np.isnan(b)] = NAN32
    return out


def _sequential_sum(values: np.ndarray) -> np.float32:
    """fp32 sum accumulated from +0.0 in index order (one rounding per addition)."""
    return np.add.accumulate(np.concatenate(([np.float32(0)], values)), dtype=np.float32)[-1]


def _sequential_max(values: np.ndarray) -> np.float32:
    """fp32 max accumulated from -inf in index order with the `_max32` rule."""
    acc = np.float32(-np.inf)
    for v in values:
        acc = np.float32(NAN32 if (acc != acc or v != v) else (acc if acc >= v else v))
    return acc


def _sequential_argmax(values: np.ndarray) -> np.float32:
    """Index (fp32) of the first element equal to `_sequential_max(values)`: a strictly
    larger element or the first NaN takes over (with no elements nothing is written)."""
    acc, idx = np.float32(-np.inf), -1
    for i, v in enumerate(values):
        if acc != acc:
            break
        if v != v or idx < 0 or v > acc:
            acc, idx = v, i
    return np.float32(idx)


def _transcendental(op: Op, v: np.ndarray) -> np.ndarray:
    """fp32(f(fp64 x)) for vexp, vrsqrt, vrecip, vsigmoid."""
    x = v.astype(np.float64)
    with np.errstate(all="ignore"):
        if op == Op.VEXP:
            out = np.array([_exp(float(e)) for e in x], np.float64)
        elif op == Op.VRSQRT:
            out = 1.0 / np.sqrt(x)
        elif op == Op.VRECIP:
            out = 1.0 / x
        else:
            out = 1.0 / (1.0 + np.array([_exp(-float(e)) for e in x], np.float64))
        return out.astype(np.float32)


class ReferenceMachine:
    """State of one run: PE clocks, registers, SRAM, router tables, links and FIFOs."""

    def __init__(self, program: Program, mesh: MeshConfig, sram, functional: bool,
                 max_cycles: int, record_events: bool, in_place: bool = False,
                 record_values: bool = False, max_seconds: float | None = None):
        validate_program(program, mesh)
        check_run_memory(program, functional, "reference")
        self.p, self.mesh = program, mesh
        n = program.num_pes
        self.functional, self.max_cycles = functional, max_cycles
        self.max_seconds = max_seconds
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.ticks = 0
        self.width = mesh.simd_width(program.dtype)
        self.sram = run_sram(program, sram, in_place) if functional else None
        self.clock = np.zeros(n, np.int64)
        self.pc = np.zeros(n, np.int64)
        self.regs = np.zeros((n, NUM_REGS), np.int64)
        self.status = np.where(program.pe_region < 0, HALTED, READY)
        self.waiting_color = np.full(n, -1, np.int64)
        self.busy = np.zeros(n, np.int64)
        self.finish = np.zeros(n, np.int64)
        self.route_rx = program.route_rx.astype(np.int64)
        self.route_tx = program.route_tx.astype(np.int64)
        self.link_free = np.zeros((n, 4), np.int64)
        self.link_busy = np.zeros((n, 4), np.int64)
        self.fifos: dict[tuple[int, int], list[Delivery]] = {}
        self.barrier_arrivals: dict[int, int] = {}
        self.instructions = self.messages = 0
        self.events = [] if record_events else None
        self.record_values = record_events and record_values and functional
        self.sent = None   # (color, arrivals) of the send being recorded
        self.mark_first = np.full(program.num_marks, -1, np.int64)
        self.mark_last = np.full(program.num_marks, -1, np.int64)
        self.mark_count = np.zeros(program.num_marks, np.int64)
        self.heap = [(0, pe) for pe in range(n) if self.status[pe] == READY]

    # --- helpers -------------------------------------------------------------------------
    def xy(self, pe: int) -> str:
        x, y = self.p.pe_xy(pe)
        return f"({x},{y})"

    def fault(self, pe: int, message: str):
        raise MeshFault(f"{self.p.source}: PE {self.xy(pe)} at cycle {int(self.clock[pe])}: "
                        f"{message}")

    def operand(self, pe: int, ins, slot: int) -> int:
        """The integer value of operand `slot` for PE `pe` (immediate, parameter, register)."""
        kind, reg = slot_mode(ins["modes"], slot)
        value = int(ins["a"][slot])
        if kind == MODE_IMM:
            return value
        if kind == MODE_PARAM:
            return self.p.param(pe, value)
        return int(self.regs[pe, reg]) + value

    def addresses(self, pe: int, base: int, stride: int, n: int) -> np.ndarray:
        """SRAM element indices of a descriptor; faults when any is outside the SRAM."""
        idx = base + stride * np.arange(n, dtype=np.int64)
        if n and (idx.min() < 0 or idx.max() >= self.p.sram_words):
            bad = int(idx[(idx < 0) | (idx >= self.p.sram_words)][0])
            self.fault(pe, f"SRAM access at element {bad} outside 0..{self.p.sram_words - 1}")
        return idx

    def descriptor(self, pe: int, ins, addr_slot: int, stride_slot: int, n: int):
        return self.addresses(pe, self.operand(pe, ins, addr_slot),
                              self.operand(pe, ins, stride_slot), n)

    def length(self, pe: int, ins) -> int:
        n = self.operand(pe, ins, SLOT_N)
        if n < 0:
            self.fault(pe, f"negative element count {n}")
        return n

    def color(self, pe: int, ins) -> int:
        c = self.operand(pe, ins, SLOT_COLOR)
        if not 0 <= c < self.p.num_colors:
            self.fault(pe, f"color {c} is not defined (colors 0..{self.p.num_colors - 1})")
        return c

    def advance(self, pe: int, cost: int):
        self.clock[pe] += cost
        self.busy[pe] += cost
        if self.clock[pe] > self.max_cycles:
            self.fault(pe, f"cycle limit {self.max_cycles} exceeded")
        self.ticks += 1
        if self.deadline is not None and not self.ticks & 0x3FF:
            self.check_budget(pe)

    def check_budget(self, pe: int):
        """BudgetError once the wall-clock budget (`max_seconds`) has run out."""
        if time.monotonic() > self.deadline:
            raise BudgetError(f"{self.p.source}: the reference engine's time budget of "
                              f"{self.max_seconds:g} s ran out at cycle "
                              f"{int(self.clock[pe]):,} after {self.instructions:,} "
                              f"instructions (raise --max-seconds, lower --max-cycles, or "
                              f"use --engine numba)")

    def vector_cost(self, n: int, op: Op | None = None) -> int:
        """o + ceil(n / w); a transcendental costs o + n * T when the preset's
        `transcendental_cycles` T > 0 (docs/timing.md)."""
        t = self.mesh.transcendental_cycles
        if t and op in (Op.VEXP, Op.VRSQRT, Op.VRECIP, Op.VSIGMOID):
            return self.mesh.issue_overhead + n * t
        return self.mesh.issue_overhead + -(-n // self.width)

    def record(self, pe: int, start: int, pc: int, text: str, detail: str = ""):
        if self.events is not None:
            x, y = self.p.pe_xy(pe)
            color, arrivals = self.sent or (None, ())
            values = self.moved(pe, pc) if self.record_values else None
            self.events.append(Event(start, int(self.clock[pe]), x, y, pc, text, detail,
                                     color, arrivals, values))
        self.sent = None

    def moved(self, pe: int, pc: int) -> np.ndarray | None:
        """Values instruction `pc` of PE `pe` just wrote or sent (after it executed)."""
        ins = self.p.region_code(int(self.p.pe_region[pe]))[pc]
        op = Op(int(ins["op"]))
        if op == Op.SEND:
            slots = (SLOT_SRC0, SLOT_SRC0_STRIDE)
        elif op in VECTOR_OPS or op in REDUCTION_OPS or op in (Op.RECV, Op.RECVADD):
            slots = (SLOT_DST, SLOT_DST_STRIDE)
        else:
            return None
        n = 1 if op in REDUCTION_OPS else self.operand(pe, ins, SLOT_N)
        if op == Op.VGEMM:   # B rows of m contiguous elements
            n *= self.operand(pe, ins, SLOT_DST_STRIDE)
            return self.sram[pe, self.addresses(pe, self.operand(pe, ins, SLOT_DST), 1, n)].copy()
        return self.sram[pe, self.descriptor(pe, ins, *slots, n)].copy()

    # --- the run loop --------------------------------------------------------------------
    def run(self) -> RunResult:
        heapq.heapify(self.heap)
        while self.heap:
            _, pe = heapq.heappop(self.heap)
            self.activate(pe)
        self.check_end()
        return RunResult(
            cycles=int(self.finish.max(initial=0)), pe_finish=self.finish, pe_busy=self.busy,
            link_busy=self.link_busy, instructions=self.instructions, messages=self.messages,
            sram=self.sram, events=self.events, mark_first=self.mark_first,
            mark_last=self.mark_last, mark_count=self.mark_count)

    def activate(self, pe: int):
        """Run PE `pe` from its pc: one leading communication op, then local ops."""
        code = self.p.region_code(int(self.p.pe_region[pe]))
        first = True
        while True:
            pc = int(self.pc[pe])
            if pc >= len(code):
                self.halt(pe)
                return
            ins = code[pc]
            op = Op(int(ins["op"]))
            if op in ORDERED_OPS and not first:
                heapq.heappush(self.heap, (int(self.clock[pe]), pe))
                return
            first = False
            start = int(self.clock[pe])
            if op in COMM_OPS:
                text, detail, go_on = self.communicate(pe, ins, op)
            elif op in (Op.MOVR, Op.ADDR, Op.DJNZ, Op.JMP, Op.NOP):
                text, detail, go_on = self.control(pe, ins, op), "", True
            elif op == Op.VGEMV:
                (text, detail), go_on = self.gemv(pe, ins), True
            elif op == Op.VGEMM:
                (text, detail), go_on = self.gemm(pe, ins), True
            elif op == Op.MARK:
                text, detail, go_on = self.mark(pe, ins), "", True
            elif op == Op.LDR:
                text, detail, go_on = self.load_register(pe, ins), "", True
            elif op == Op.REP:
                (text, detail), go_on = self.repeat(pe, ins, code[pc + 1]), True
            else:
                (text, detail), go_on = self.vector(pe, ins, op), True
            if text is not None:
                self.instructions += 1
                self.record(pe, start, pc, text, detail)
            if not go_on:
                return

    # --- local instructions --------------------------------------------------------------
    def control(self, pe: int, ins, op: Op) -> str:
        rd = int(ins["a"][SLOT_DST])
        value = self.operand(pe, ins, SLOT_SRC0)
        self.pc[pe] += 1
        if op == Op.MOVR:
            self.regs[pe, rd] = value
        elif op == Op.ADDR:
            self.regs[pe, rd] += value
        elif op == Op.DJNZ:
            self.regs[pe, rd] -= 1
            if self.regs[pe, rd] != 0:
                self.pc[pe] = value
        elif op == Op.JMP:
            self.pc[pe] = value
        self.advance(pe, self.mesh.issue_overhead + 1)
        if op in (Op.DJNZ, Op.JMP):
            code_len = int(self.p.region_len[self.p.pe_region[pe]])
            if not 0 <= self.pc[pe] <= code_len:
                self.fault(pe, f"jump to {int(self.pc[pe])} outside the code 0..{code_len}")
        return f"{op.name.lower()} r{rd}, {value}" if op != Op.NOP else "nop"

    def load_register(self, pe: int, ins) -> str:
        """ldr rK, [A]: rK = the fp32 element at A truncated toward zero (o + 1 cycles).
        Faults: a register outside r0..r7, A outside the SRAM, a value that is not finite
        or outside the int32 range. Timing-only runs hold no values: rK = 0."""
        rd = int(ins["a"][SLOT_DST])
        if not 0 <= rd < NUM_REGS:
            self.fault(pe, f"register r{rd} does not exist (r0..r{NUM_REGS - 1})")
        addr = self.operand(pe, ins, SLOT_SRC0)
        if not 0 <= addr < self.p.sram_words:
            self.fault(pe, f"SRAM access at element {addr} outside "
                           f"0..{self.p.sram_words - 1}")
        value = 0
        if self.functional:
            v = float(self.sram[pe, addr])
            if not (math.isfinite(v) and -LDR_LIMIT < v < LDR_LIMIT):
                self.fault(pe, f"ldr at element {addr}: the value is not a finite int32")
            value = int(v)
        self.regs[pe, rd] = value
        self.advance(pe, self.mesh.issue_overhead + 1)
        self.pc[pe] += 1
        return f"ldr r{rd}, [{addr}] = {value}"

    def mark(self, pe: int, ins) -> str:
        """mark k: record this PE's clock for mark id k (an immediate in 0..num_marks-1,
        checked by validate_program). A probe: costs 0 cycles, no busy time."""
        k = int(ins["a"][SLOT_DST])
        t = int(self.clock[pe])
        self.mark_first[k] = t if self.mark_count[k] == 0 else min(int(self.mark_first[k]), t)
        self.mark_last[k] = max(int(self.mark_last[k]), t)
        self.mark_count[k] += 1
        self.pc[pe] += 1
        return f"mark {self.p.mark_names[k]}"

    def vector(self, pe: int, ins, op: Op) -> tuple[str, str]:
        n = self.length(pe, ins)
        dst, src0, src1 = self.vector_descriptors(pe, ins, n, (0, 0, 0))
        if self.functional and n:
            self.compute(pe, ins, op, dst, src0, src1)
        self.advance(pe, self.vector_cost(n, op))
        self.pc[pe] += 1
        return f"{op.name.lower()} [{dst[0] if n else '-'}] n={n}", ""

    def vector_descriptors(self, pe: int, ins, n: int, offsets: tuple) -> list:
        """The dst, src0 and src1 element indices of a vector op or reduction over n
        elements, each address moved by its entry of `offsets` (checked in that order)."""
        return [self.addresses(pe, self.operand(pe, ins, addr) + offset,
                               self.operand(pe, ins, stride), n)
                for (addr, stride), offset in zip(((SLOT_DST, SLOT_DST_STRIDE),
                                                   (SLOT_SRC0, SLOT_SRC0_STRIDE),
                                                   (SLOT_SRC1, SLOT_SRC1_STRIDE)),
                                                  offsets, strict=True)]

    def repeat(self, pe: int, ins, body) -> tuple[str, str]:
        """rep R, S, steps: the body (the next instruction, a vector op or reduction, by
        validate_program) R * S times, copy (i, j) in order i = 0 .. R-1, j = 0 .. S-1
        with each of its dst / src0 / src1 addresses moved by i * (outer step) + j *
        (inner step). Checks in order: R >= 0, S >= 0 ("negative repeat count"), the
        body's count n >= 0, then every copy's descriptors (copy by copy, each as the body
        checks them), all at the rep's issue cycle, before any copy computes. Cost R * S
        times the body's cost (0 for no copy); the pc moves past the body. A rep and its
        body count as two executed instructions."""
        reps = [self.operand(pe, ins, slot) for slot in (SLOT_N, SLOT_COLOR)]
        for count in reps:
            if count < 0:
                self.fault(pe, f"negative repeat count {count}")
        op = Op(int(body["op"]))
        n = self.length(pe, body)
        outer = [self.operand(pe, ins, slot) for slot in REP_OUTER_SLOTS]
        inner = [self.operand(pe, ins, slot) for slot in REP_INNER_SLOTS]
        copies = [self.vector_descriptors(pe, body, n, tuple(
                      i * o + j * s for o, s in zip(outer, inner, strict=True)))
                  for i in range(reps[0]) for j in range(reps[1])]
        if self.functional and n:
            for dst, src0, src1 in copies:
                self.compute(pe, body, op, dst, src0, src1)
        self.advance(pe, len(copies) * self.vector_cost(n, op))
        self.instructions += 1
        self.pc[pe] += 2
        return f"rep {reps[0]}x{reps[1]} {op.name.lower()} n={n}", ""

    def gemv(self, pe: int, ins) -> tuple[str, str]:
        """vgemv [dst], [W:ld], [x:sx], m, k: exactly k consecutive vfmas in column order,
        `vfma [dst], [W + c*ld], [x + c*sx : 0], m` for c in 0..k-1, in one instruction
        costing o + k * ceil(m / w). Checks: m (SLOT_N), then k (SLOT_COLOR), then, when
        m > 0 and k > 0, the m destination elements, the m * k matrix elements (column by
        column) and the k vector elements, each set faulting at its first element outside
        the SRAM. With m = 0 or k = 0 nothing is touched and the cost is o."""
        m = self.length(pe, ins)
        k = self.operand(pe, ins, SLOT_COLOR)
        if k < 0:
            self.fault(pe, f"negative column count {k}")
        if m and k:
            dst = self.descriptor(pe, ins, SLOT_DST, SLOT_DST_STRIDE, m)
            w0, ld = self.operand(pe, ins, SLOT_SRC0), self.operand(pe, ins, SLOT_SRC0_STRIDE)
            cols = w0 + ld * np.arange(k, dtype=np.int64)        # column starts
            matrix = (cols[:, None] + np.arange(m, dtype=np.int64)[None, :]).ravel()
            bad = (matrix < 0) | (matrix >= self.p.sram_words)
            if bad.any():
                self.fault(pe, f"SRAM access at element {int(matrix[bad][0])} outside "
                               f"0..{self.p.sram_words - 1}")
            xs = self.descriptor(pe, ins, SLOT_SRC1, SLOT_SRC1_STRIDE, k)
            if self.functional:
                step = np.arange(m, dtype=np.int64)
                for c in range(k):
                    self.compute(pe, ins, Op.VFMA, dst, cols[c] + step,
                                 np.full(m, xs[c], np.int64))
        self.advance(pe, self.mesh.issue_overhead + k * -(-m // self.width))
        self.pc[pe] += 1
        return f"vgemv [{self.operand(pe, ins, SLOT_DST) if m and k else '-'}] m={m} k={k}", ""

    def gemm(self, pe: int, ins) -> tuple[str, str]:
        """vgemm [dst], [W:ld], [x:sx], m, k, B: B rows of a tile matrix product, row b
        exactly `vmul [dst + b*m], [W], [x + b*sx : 0], m` then k - 1 consecutive
        `vfma [dst + b*m], [W + c*ld], [x + b*sx + c : 0], m` (c = 1 .. k-1), rows in order;
        with k = 0 row b is set to 0.0. Cost o + B * max(k, 1) * ceil(m / w). Checks: m,
        k, B >= 0 (in that order), then, when m > 0 and B > 0, the B*m destination
        elements, then (k > 0) the matrix column by column and the B*k vector elements."""
        m = self.length(pe, ins)
        k = self.operand(pe, ins, SLOT_COLOR)
        batch = self.operand(pe, ins, SLOT_DST_STRIDE)
        if k < 0:
            self.fault(pe, f"negative column count {k}")
        if batch < 0:
            self.fault(pe, f"negative batch count {batch}")
        if m and batch:
            d0 = self.operand(pe, ins, SLOT_DST)
            dst = self.addresses(pe, d0, 1, batch * m)
            x0, sx = self.operand(pe, ins, SLOT_SRC1), self.operand(pe, ins, SLOT_SRC1_STRIDE)
            step = np.arange(m, dtype=np.int64)
            if k:
                w0, ld = self.operand(pe, ins, SLOT_SRC0), self.operand(pe, ins, SLOT_SRC0_STRIDE)
                cols = w0 + ld * np.arange(k, dtype=np.int64)
                matrix = (cols[:, None] + step[None, :]).ravel()
                bad = (matrix < 0) | (matrix >= self.p.sram_words)
                if bad.any():
                    self.fault(pe, f"SRAM access at element {int(matrix[bad][0])} outside "
                                   f"0..{self.p.sram_words - 1}")
                xs = (x0 + sx * np.arange(batch, dtype=np.int64)[:, None]
                      + np.arange(k, dtype=np.int64)[None, :]).ravel()
                bad = (xs < 0) | (xs >= self.p.sram_words)
                if bad.any():
                    self.fault(pe, f"SRAM access at element {int(xs[bad][0])} outside "
                                   f"0..{self.p.sram_words - 1}")
            if self.functional:
                for b in range(batch):
                    row = dst[b * m:(b + 1) * m]
                    if not k:
                        self.compute(pe, ins, Op.VSET, row, row, row, imm=0.0)
                        continue
                    x = x0 + b * sx
                    self.compute(pe, ins, Op.VMUL, row, cols[0] + step, np.full(m, x, np.int64))
                    for c in range(1, k):
                        self.compute(pe, ins, Op.VFMA, row, cols[c] + step,
                                     np.full(m, x + c, np.int64))
        self.advance(pe, self.mesh.issue_overhead + batch * max(k, 1) * -(-m // self.width))
        self.pc[pe] += 1
        return (f"vgemm [{self.operand(pe, ins, SLOT_DST) if m and batch else '-'}] m={m} "
                f"k={k} B={batch}", "")

    def compute(self, pe: int, ins, op: Op, dst, src0, src1, imm: float | None = None):
        """Apply a vector or reduction op to this PE's SRAM (sources read before writes)."""
        mem = self.sram[pe]
        a, b, d = mem[src0].copy(), mem[src1].copy(), mem[dst].copy()
        imm = np.float32(ins["imm"] if imm is None else imm)
        with np.errstate(all="ignore"):
            if op == Op.RARGMAX:
                mem[dst[0]] = _sequential_argmax(a)
                return
            if op in (Op.RSUM, Op.RMAX, Op.RDOT):
                values = {Op.RSUM: a, Op.RMAX: a, Op.RDOT: a * b}[op]
                reduce = _sequential_max if op == Op.RMAX else _sequential_sum
                mem[dst[0]] = reduce(values)
                return
            results = {
                Op.VMOV: lambda: a, Op.VADD: lambda: a + b, Op.VSUB: lambda: a - b,
                Op.VMUL: lambda: a * b, Op.VMAX: lambda: _max32(a, b),
                Op.VFMA: lambda: d + a * b, Op.VSCALE: lambda: a * imm,
                Op.VADDI: lambda: a + imm, Op.VSET: lambda: np.full(len(dst), imm, np.float32),
            }
            out = results[op]() if op in results else _transcendental(op, a)
        mem[dst] = out.astype(np.float32)

    # --- communication -------------------------------------------------------------------
    def communicate(self, pe: int, ins, op: Op) -> tuple[str | None, str, bool]:
        """Execute a communication op; returns (text or None if blocked, detail, go on)."""
        if op == Op.SEND:
            return (*self.send(pe, ins), True)
        if op in (Op.RECV, Op.RECVADD):
            text, detail = self.receive(pe, ins, op)
            return text, detail, text is not None
        if op == Op.ROUTE:
            c = self.color(pe, ins)
            rx, tx = self.operand(pe, ins, SLOT_SRC0), self.operand(pe, ins, SLOT_SRC1)
            self.route_rx[pe, c], self.route_tx[pe, c] = rx, tx
            self.advance(pe, self.mesh.issue_overhead + 1)
            self.pc[pe] += 1
            return f"route c{c}, rx={_ports(rx)}, tx={_ports(tx)}", "", True
        if op == Op.BARRIER:
            return self.barrier(pe), "", False
        self.halt(pe)
        return "halt", "", False

    def halt(self, pe: int):
        self.status[pe] = HALTED
        self.finish[pe] = self.clock[pe]

    def send(self, pe: int, ins) -> tuple[str, str]:
        c, n = self.color(pe, ins), self.length(pe, ins)
        src = self.descriptor(pe, ins, SLOT_SRC0, SLOT_SRC0_STRIDE, n)
        values = self.sram[pe, src].copy() if self.functional else None
        leaves = (int(self.clock[pe]) + self.mesh.issue_overhead + self.mesh.message_overhead
                  + self.mesh.ramp_latency)
        arrivals = self.route(pe, c, n, leaves, values)
        self.advance(pe, self.mesh.issue_overhead + self.mesh.message_overhead + n)
        self.pc[pe] += 1
        detail = ", ".join(f"{self.xy(q)} last wavelet at {t}" for q, t in arrivals)
        if self.events is not None:
            self.sent = (c, tuple((self.p.pe_xy(q), t) for q, t in arrivals))
        return f"send c{c}, n={n}", f"to {detail}" if detail else ""

    def route(self, pe: int, c: int, n: int, leaves: int, values) -> list[tuple[int, int]]:
        """Route one message depth-first; return [(destination PE, last arrival cycle)].

        Stack order: output ports are visited in the order N, E, S, W, R at each router;
        neighbours are pushed in that order, so the last pushed (westmost) is routed next.
        """
        ramp = self.mesh.ramp_latency
        stack, arrivals = [(pe, PORT_R, leaves, 0)], []
        while stack:
            q, in_port, head, hops = stack.pop()
            if hops > self.p.num_pes:
                self.fault(pe, f"route of color {c} loops (passes {hops} routers)")
            rx, tx = int(self.route_rx[q, c]), int(self.route_tx[q, c])
            if not rx & in_port:
                self.fault(pe, f"message on color {c} reaches PE {self.xy(q)} from port "
                               f"{PORT_NAMES[in_port]} but its route accepts {_ports(rx)}")
            if tx == 0:
                self.fault(pe, f"color {c} has no route out of PE {self.xy(q)}")
            for direction, (port, dx, dy) in enumerate(DIRECTIONS):
                if tx & port:
                    stack.append(self.hop(pe, q, direction, port, dx, dy, c, n, head, hops))
                    self.link_busy[q, direction] += n
            if tx & PORT_R:
                last = head + ramp + n - 1
                arrivals.append((q, last))
                self.deliver(q, c, Delivery(last, n, values, pe))
        return arrivals

    def hop(self, pe, q, direction, port, dx, dy, c, n, head, hops):
        """Reserve the link leaving router q through `port`; return the next stack entry."""
        x, y = self.p.pe_xy(q)
        nx, ny = x + dx, y + dy
        if not (0 <= nx < self.p.width and 0 <= ny < self.p.height):
            self.fault(pe, f"route of color {c} leaves the mesh at PE {self.xy(q)} "
                           f"going {PORT_NAMES[port]}")
        start = max(head, int(self.link_free[q, direction]))
        self.link_free[q, direction] = start + n
        return (ny * self.p.width + nx, OPPOSITE[port], start + self.mesh.hop_latency,
                hops + 1)

    def deliver(self, q: int, c: int, delivery: Delivery):
        self.fifos.setdefault((q, c), []).append(delivery)
        self.messages += 1
        if self.status[q] == BLOCKED and self.waiting_color[q] == c:
            self.status[q] = READY
            self.waiting_color[q] = -1
            heapq.heappush(self.heap, (int(self.clock[q]), q))

    def receive(self, pe: int, ins, op: Op) -> tuple[str | None, str]:
        c, n = self.color(pe, ins), self.length(pe, ins)
        dst = self.descriptor(pe, ins, SLOT_DST, SLOT_DST_STRIDE, n)
        queue = self.fifos.get((pe, c))
        if not queue:
            self.status[pe], self.waiting_color[pe] = BLOCKED, c
            return None, ""
        msg = queue.pop(0)
        if msg.length != n:
            self.fault(pe, f"{op.name.lower()} on color {c} expects {n} wavelets but the "
                           f"message from PE {self.xy(msg.source)} has {msg.length}")
        if self.functional and n:
            mem = self.sram[pe]
            mem[dst] = (mem[dst] + msg.values) if op == Op.RECVADD else msg.values
        o = self.mesh.issue_overhead + self.mesh.message_overhead
        end = max(int(self.clock[pe]) + o + n, msg.last + 1)
        self.busy[pe] += o + n
        self.clock[pe] = end
        self.pc[pe] += 1
        if end > self.max_cycles:
            self.fault(pe, f"cycle limit {self.max_cycles} exceeded")
        return (f"{op.name.lower()} c{c}, n={n}",
                f"from PE {self.xy(msg.source)}, last wavelet arrived at {msg.last}")

    def barrier(self, pe: int) -> str:
        """Arrive at a barrier; the last arrival releases every PE at max(arrival) + B + o."""
        self.status[pe] = AT_BARRIER
        self.barrier_arrivals[pe] = int(self.clock[pe])
        live = int(np.count_nonzero(self.p.pe_region >= 0))
        if len(self.barrier_arrivals) < live:
            return "barrier (waiting)"
        release = max(self.barrier_arrivals.values()) + self.mesh.barrier_latency
        for q in sorted(self.barrier_arrivals):
            self.clock[q] = release
            self.status[q] = READY
            self.pc[q] += 1
            self.advance(q, self.mesh.issue_overhead)
            heapq.heappush(self.heap, (int(self.clock[q]), q))
        self.barrier_arrivals.clear()
        return f"barrier (all released at {release})"

    def check_end(self):
        """After the heap empties: every PE must have halted and every message been read."""
        stuck = np.flatnonzero(self.status != HALTED)
        if stuck.size:
            parts = []
            for pe in stuck[:8]:
                what = (f"waits on color {int(self.waiting_color[pe])}"
                        if self.status[pe] == BLOCKED else "waits at a barrier")
                parts.append(f"PE {self.xy(pe)} {what} since cycle {int(self.clock[pe])}")
            more = f" (+{stuck.size - 8} more)" if stuck.size > 8 else ""
            halted = np.flatnonzero((self.status == HALTED) & (self.p.pe_region >= 0))
            note = (f"; PE {self.xy(int(halted[0]))} halted"
                    if self.barrier_arrivals and halted.size else "")
            raise MeshFault(f"{self.p.source}: deadlock: {'; '.join(parts)}{more}{note}")
        for (q, c), queue in sorted(self.fifos.items()):
            if queue:
                raise MeshFault(f"{self.p.source}: PE {self.xy(q)}: {len(queue)} undelivered "
                                f"message(s) on color {c} when the program ended")


def _ports(mask: int) -> str:
    names = [name for bit, name in PORT_NAMES.items() if mask & bit]
    return "|".join(names) if names else "-"


def run_reference(program: Program, mesh: MeshConfig, sram=None, functional: bool = True,
                  max_cycles: int = 10**9, record_events: bool = False,
                  in_place: bool = False, max_seconds: float | None = None) -> RunResult:
    """Run `program` on `mesh` with the reference interpreter.

    `sram`: optional float32 [W*H, sram_words] initial contents (default: the program's
    `.data`), copied unless `in_place`: then the run updates `sram` itself (a float32
    C-contiguous array; after a fault it holds the partial results) and returns it as
    `RunResult.sram`. Timing-only (`functional=False`) computes no values and returns
    `sram=None`. `max_seconds`: a wall-clock budget; past it the run stops with a
    `BudgetError` (checked every 1024 instructions).
    """
    machine = ReferenceMachine(program, mesh, sram, functional, max_cycles, record_events,
                               in_place, max_seconds=max_seconds)
    return machine.run()
