"""Opcode table and instruction encoding of the mesh ISA (docs/isa.md is the prose spec).

An instruction is one row of `INSTR_DTYPE`: an opcode, eight integer operand slots, one
float immediate, the addressing mode of each slot, and the source line for messages.
Slots have fixed meanings (SLOT_*), so engines never decode per-opcode layouts.
"""

from enum import IntEnum

import numpy as np

NUM_SLOTS = 8
NUM_REGS = 8
LDR_LIMIT = 2.0 ** 31   # ldr: |value| must be below this (an int32 register value)

# Operand slot meanings.
SLOT_DST = 0      # destination address, register index for movr/addr/djnz, mark id
SLOT_SRC0 = 1     # first source address; value for movr/addr; rx ports for route; jump target
SLOT_SRC1 = 2     # second source address; tx ports for route
SLOT_N = 3        # element / wavelet count
SLOT_DST_STRIDE = 4   # for vgemm the batch count B
SLOT_SRC0_STRIDE = 5
SLOT_SRC1_STRIDE = 6
SLOT_COLOR = 7    # color; for vgemv the column count k

# Addressing modes, 8 bits per slot in `modes`: bits 0-1 kind, bits 2-4 register index.
MODE_IMM = 0      # the slot value itself
MODE_PARAM = 1    # params[pe, value]
MODE_REG = 2      # regs[pe, reg] + value
MODE_BITS = 8

# Router ports (bit masks) and the coordinate step of each direction.
PORT_N, PORT_E, PORT_S, PORT_W, PORT_R = 1, 2, 4, 8, 16
PORT_NAMES = {PORT_N: "N", PORT_E: "E", PORT_S: "S", PORT_W: "W", PORT_R: "R"}
DIRECTIONS = ((PORT_N, 0, -1), (PORT_E, 1, 0), (PORT_S, 0, 1), (PORT_W, -1, 0))
OPPOSITE = {PORT_N: PORT_S, PORT_S: PORT_N, PORT_E: PORT_W, PORT_W: PORT_E}


class Op(IntEnum):
    """Opcodes. Groups: vector (V*), reductions (R*), fabric, scalar/control."""

    NOP = 0
    VMOV = 1
    VADD = 2
    VSUB = 3
    VMUL = 4
    VMAX = 5
    VFMA = 6
    VSCALE = 7
    VADDI = 8
    VSET = 9
    VEXP = 10
    VRSQRT = 11
    VRECIP = 12
    VSIGMOID = 13
    RSUM = 14
    RMAX = 15
    RDOT = 16
    SEND = 17
    RECV = 18
    RECVADD = 19
    ROUTE = 20
    MOVR = 21
    ADDR = 22
    DJNZ = 23
    JMP = 24
    BARRIER = 25
    HALT = 26
    VGEMV = 27        # dst[i] += W[c*ld + i] * x[c*sx], columns c in 0..k-1 (k in SLOT_COLOR)
    MARK = 28         # probe (0 cycles): record this PE's cycle for mark id a[SLOT_DST]
    VGEMM = 29        # B rows: dst[b*m + i] = sum_c W[c*ld + i] * x[b*sx + c] (B: DST_STRIDE)
    RARGMAX = 30      # dst[0] = index (as fp32) of the first maximal src element (MoE top-k)
    LDR = 31          # rK = int(trunc(sram[src])): data-dependent addressing (MoE experts)
    REP = 32          # the next instruction R x S times, its addresses stepped per copy



class Status(IntEnum):
    """A PE's run state, the same in every engine."""

    READY = 0        # in the scheduler's heap
    BLOCKED = 1      # waiting in a receive for a message of one color
    AT_BARRIER = 2   # waiting for every running PE to reach the barrier
    HALTED = 3       # done (or never started: a PE outside every region)


VECTOR_OPS = frozenset({Op.VMOV, Op.VADD, Op.VSUB, Op.VMUL, Op.VMAX, Op.VFMA, Op.VSCALE,
                        Op.VADDI, Op.VSET, Op.VEXP, Op.VRSQRT, Op.VRECIP, Op.VSIGMOID,
                        Op.VGEMV, Op.VGEMM})
REDUCTION_OPS = frozenset({Op.RSUM, Op.RMAX, Op.RDOT, Op.RARGMAX})
# Instructions `rep` may repeat (its body: the instruction after it).
REPEATABLE_OPS = (VECTOR_OPS - {Op.VGEMV, Op.VGEMM}) | REDUCTION_OPS
# `rep` slots: counts R (outer) and S (inner); the body's dst/src0/src1 address steps per
# outer copy and per inner copy.
REP_OUTER_SLOTS = (SLOT_DST, SLOT_SRC0, SLOT_SRC1)
REP_INNER_SLOTS = (SLOT_DST_STRIDE, SLOT_SRC0_STRIDE, SLOT_SRC1_STRIDE)
# Instructions that interact with other PEs: executed only in global time order.
COMM_OPS = frozenset({Op.SEND, Op.RECV, Op.RECVADD, Op.ROUTE, Op.BARRIER, Op.HALT})
# The communication ops that end an activation when they are not its first instruction.
# A receive does not: it only takes the oldest record of its own FIFO, whose order the
# (ordered) sends fix, so running it early changes no cycle: it completes at once if its
# message is queued, else blocks until a delivery wakes the PE at the same clock.
ORDERED_OPS = frozenset({Op.SEND, Op.ROUTE, Op.BARRIER, Op.HALT})
# Emulator probes: local, no cycles, counted as executed instructions.
PROBE_OPS = frozenset({Op.MARK})

INSTR_DTYPE = np.dtype([
    ("op", np.int32),
    ("modes", np.int64),
    ("a", np.int32, (NUM_SLOTS,)),
    ("imm", np.float32),
    ("line", np.int32),
])


def slot_mode(modes: int, slot: int) -> tuple[int, int]:
    """(kind, register index) of operand `slot` in an instruction's `modes` word."""
    bits = (int(modes) >> (MODE_BITS * slot)) & 0xFF
    return bits & 0x3, (bits >> 2) & 0x7


def encode_mode(slot: int, kind: int, reg: int = 0) -> int:
    """The `modes` bits that give operand `slot` addressing `kind` (and register `reg`)."""
    return ((kind & 0x3) | ((reg & 0x7) << 2)) << (MODE_BITS * slot)
