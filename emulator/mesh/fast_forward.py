"""Exact fast-forward over repeated blocks of code (decoder layers) in timing-only runs.

A decode step runs the same code once per layer; only addresses differ between layers,
and timing never depends on addresses or values. With cut marks c_0 .. c_n (block b runs
from c_b to c_b+1), `run_fast_forward` emulates up to c_0 and on to c_1, checks that
block 0 would run again unchanged D cycles later from the state at c_1 (`block_shift`),
jumps over the full blocks after it by adding D (and block 0's busy cycles, link loads,
counters and marks) once per skipped block, and emulates the rest. If block 0 does not
repeat, it tries block 1 (from c_1 to c_2) the same way. The last interval may be a
*partial* block: block 0's code up to a mark (the tail mark; for a decode step, the rest
of the last layer). The result equals a full run's exactly, or `run_fast_forward` returns
None and the caller runs in full. With two or more jobs, forked children check the
blocks while the first block is emulated and run the code after the full blocks beside
it (`run_head`, `merge_head`: its cycles are then early by the skipped blocks' D), from
where block 0 reaches the tail mark (so nobody emulates the partial block) or else from
the block's first cut. With one job, a child forked at the tail mark still runs that code
(so the partial block is not emulated either), but only after the parent has jumped.
docs/engines.md ("Fast-forward") states the conditions; in short:

- blocks: every running PE's code holds each cut mark (`mark NAME`) once, in order; the
  blocks after block 0 are *timing-equivalent* to it: same opcodes, operand modes,
  static costs, and the same values in every operand slot that timing reads (counts,
  colors, column counts; every slot of control ops; per-PE parameter values where a slot
  takes one), differing at most in addresses and mark ids; each mark id belongs to one
  block;
- cuts: the run stops with every running PE *parked* about to execute the cut mark, no
  message queued or in flight, no route change, and equal registers;
- repetition: from a cut on, the kernel records what each PE and link did first
  (mesh.kernels P_SLACK, LINK_USED). Block b repeats D cycles later if every PE's clock
  moved by D over it, or by less and its first act was a receive that waited for its
  message (so an earlier start changes nothing), and every link's first reservation in
  the block would have started at the same cycle from the later state;
- order: parking holds PEs back while others finish the previous block, which is exact
  only if every `send` executed meanwhile precedes, in (cycle, PE) order, every `send`
  after the cut. The kernel records both keys; the check runs after the fact.

Address faults inside skipped blocks are caught only for immediate operands (static
costs); compiled decode programs are address-checked by `compiler.place`.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from emulator.hw.errors import MeshFault
from emulator.mesh import cut_kernels as C
from emulator.mesh import kernels as K
from emulator.mesh.parallel import Forked, can_fork, shared_empty
from isa.opcodes import (
    MODE_BITS,
    MODE_PARAM,
    MODE_REG,
    NUM_SLOTS,
    SLOT_COLOR,
    SLOT_DST,
    SLOT_DST_STRIDE,
    SLOT_N,
    Op,
)
from isa.program import Program

COUNT_SLOTS = (SLOT_N,)                          # vector ops and reductions
GEMV_SLOTS = (SLOT_N, SLOT_COLOR)                # rows m, columns k
GEMM_SLOTS = (SLOT_N, SLOT_COLOR, SLOT_DST_STRIDE)   # rows m, columns k, batch B
COMM_SLOTS = (SLOT_N, SLOT_COLOR)                # send, recv, recvadd
REP_SLOTS = (SLOT_N, SLOT_COLOR)                 # repeat counts R, S (not address steps)
ALL_SLOTS = tuple(range(NUM_SLOTS))              # control ops, route, barrier, halt


@dataclass(frozen=True)
class Blocks:
    """Repeated blocks of a program: their Layout, and the mark ids of blocks 1 .. n-1
    mapped to block 0's (`mark_source[k]` = block-0 id of mark k, `mark_block[k]` = its
    block index, -1 for marks outside blocks 1 .. n-1)."""

    layout: "Layout"
    mark_source: np.ndarray
    mark_block: np.ndarray

    def skipped(self, template: int) -> int:
        """Full blocks jumped over when block `template` is the one emulated and repeated:
        those after it."""
        return self.layout.full_blocks - 1 - template

    def template_source(self, template: int) -> np.ndarray:
        """For every mark id: the id of its copy in block `template` (-1: none)."""
        if template == 0:
            return self.mark_source
        ids = np.flatnonzero(self.mark_block == template)
        copy = np.full(len(self.mark_source) + 1, -1, np.int64)   # index -1: no mark
        copy[self.mark_source[ids]] = ids
        return copy[self.mark_source]


def relevant_table() -> np.ndarray:
    """bool [opcodes, slots]: the operand slots whose values can change an instruction's
    timing (none for `mark`, whose id is mapped instead)."""
    table = np.ones((max(Op) + 1, NUM_SLOTS), bool)
    for first, last, slots in ((Op.VMOV, Op.RDOT, COUNT_SLOTS), (Op.VGEMV, Op.VGEMV, GEMV_SLOTS),
                               (Op.VGEMM, Op.VGEMM, GEMM_SLOTS),
                               (Op.SEND, Op.RECVADD, COMM_SLOTS), (Op.MARK, Op.MARK, ()),
                               (Op.RARGMAX, Op.RARGMAX, COUNT_SLOTS),
                               (Op.REP, Op.REP, REP_SLOTS)):
        table[first:last + 1] = False
        table[first:last + 1, list(slots)] = True
    return table


RELEVANT = relevant_table()


def find_blocks(program: Program, layout: "Layout", static_cost: np.ndarray) -> Blocks | None:
    """The blocks of `layout` if every block after block 0 is timing-equivalent to it and
    every mark belongs to one block, else None."""
    order = np.argsort(program.pe_region, kind="stable")
    regions = program.pe_region[order]
    live = np.unique(regions[regions >= 0])
    bounds = np.searchsorted(regions, np.stack([live, live + 1]))
    mark_source = np.full(program.num_marks, -1, np.int64)
    mark_block = np.full(program.num_marks, -1, np.int64)
    for r, lo, hi in zip(live, *bounds, strict=True):
        params = RegionParams(program.param_rows, program.param_index, order[lo:hi])
        if not region_blocks_match(program, int(r), params, layout, static_cost,
                                   mark_source, mark_block):
            return None
    if not marks_unique(program, layout.starts, mark_source, mark_block):
        return None
    return Blocks(layout, mark_source, mark_block)


def known_cuts(program: Program, cut_names) -> tuple | None:
    """The mark ids of `cut_names`, or None if there are fewer than 3 or one is unknown."""
    ids = {name: k for k, name in enumerate(program.mark_names)}
    if len(cut_names) < 3 or any(name not in ids for name in cut_names):
        return None
    return tuple(ids[name] for name in cut_names)


@dataclass(frozen=True)
class Layout:
    """Where the blocks lie, read from the cut marks alone (`find_blocks` checks that
    they repeat): the cut mark ids, each running region's pc of every cut mark
    (`starts`), instructions per block and region, the number of full blocks, the
    mark of block 0 where a partial last block ends (-1: the last block is full), and
    the registers any instruction from a region's first cut on may write (the others
    keep their values through every block, so cuts need not keep them), but for those
    dead at every cut (written before read: their values there never matter)."""

    cut_ids: tuple
    starts: dict                   # region -> int64 [cuts]
    lengths: np.ndarray            # int64 [regions]: instructions per block (0: idle)
    full_blocks: int
    tail_mark: int
    block_regs: np.ndarray         # int64 register indices


def block_layout(program: Program, cut_names) -> Layout | None:
    """The Layout of the blocks between the marks `cut_names`, or None if there are fewer
    than 3 cuts, a running region lacks one, the blocks differ in length, or regions
    disagree on whether the last block is partial or where it ends."""
    cut_ids = known_cuts(program, cut_names)
    if cut_ids is None:
        return None
    lengths = np.zeros(len(program.region_start), np.int64)
    starts, tails, order = {}, set(), cut_order(program, cut_ids)
    for r in np.unique(program.pe_region[program.pe_region >= 0]):
        starts[r] = cut_positions(program, int(r), order, len(cut_ids))
        if starts[r] is None:
            return None
        tails.add(region_tail(program, int(r), starts[r]))
        lengths[r] = starts[r][1] - starts[r][0]
    if len(tails) != 1 or None in tails:
        return None
    tail = tails.pop()
    return Layout(cut_ids, starts, lengths, len(cut_ids) - (1 if tail < 0 else 2), tail,
                  written_registers(program, starts))


def written_registers(program: Program, starts: dict) -> np.ndarray:
    """The registers (int64 indices 0..7) that `movr`, `addr`, `djnz` or `ldr` may write from
    each running region's first cut (`starts`) on, except those dead at every cut: in
    every region, the straight-line code from the cut writes them (`movr` or `ldr` not
    reading them) before any instruction reads them and before any jump, or never
    touches them again. Read from block 0 and the code after the last cut alone: the
    other blocks run block 0's instructions (find_blocks, checked before a cut's
    registers are compared), so block 0's first touch is every block's, and a block
    that does not touch the register hands it on to the code after the last cut."""
    code, written, parts = program.code, set(), []
    for r, cuts in starts.items():
        lo, end = program.region_start[r], program.region_start[r] + program.region_len[r]
        region = code[lo + cuts[0]:end]
        writes = np.isin(region["op"], (Op.MOVR, Op.ADDR, Op.DJNZ, Op.LDR))
        written.update(region["a"][writes, SLOT_DST].tolist())
        parts += [code[lo + cuts[0]:lo + cuts[1]], code[lo + cuts[-1]:end]]
    return np.array(sorted(reg for reg in written & set(range(8))
                           if any(first_touch_reads(part, reg) for part in parts)),
                    np.int64)


def first_touch_reads(code: np.ndarray, reg: int) -> bool:
    """Whether straight-line `code`, from its start, reads register `reg` (or jumps)
    before it writes it (`movr` or `ldr` that does not read it); False if it never
    touches it."""
    op, mine = code["op"], code["a"][:, SLOT_DST] == reg
    read = ((op == Op.ADDR) | (op == Op.DJNZ)) & mine
    coded = np.flatnonzero(code["modes"])               # rows with a parameter or register
    bits = np.ascontiguousarray(code["modes"][coded], "<i8").view(np.uint8).reshape(
        len(coded), NUM_SLOTS)                          # byte k: slot k's MODE_BITS bits
    read[coded] |= (((bits & 0x3) == MODE_REG) & ((bits >> 2) == reg)).any(axis=1)
    write = ((op == Op.MOVR) | (op == Op.LDR)) & mine & ~read
    touch = np.flatnonzero(read | write | (op == Op.DJNZ) | (op == Op.JMP))
    return bool(len(touch)) and not write[touch[0]]


def region_tail(program: Program, region: int, starts: np.ndarray) -> int | None:
    """-1 if every block of a region (cut pcs `starts`) has block 0's length; the id of
    the mark in block 0 where a shorter last block ends; None if the blocks differ in
    length otherwise or no mark is there."""
    sizes = np.diff(starts)
    if (sizes[:-1] != sizes[0]).any() or sizes[-1] > sizes[0]:
        return None
    if sizes[-1] == sizes[0]:
        return -1
    ins = program.code[program.region_start[region] + starts[0] + sizes[-1]]
    return int(ins["a"][SLOT_DST]) if ins["op"] == Op.MARK else None


def cut_positions(program: Program, region: int, order: np.ndarray,
                  cuts: int) -> np.ndarray | None:
    """pc of each of the `cuts` cut marks in a region's code (each exactly once,
    increasing; `order`: cut_order), or None."""
    lo, n = program.region_start[region], program.region_len[region]
    code = program.code[lo:lo + n]
    marks = np.flatnonzero(code["op"] == Op.MARK)
    which = order[code["a"][marks, SLOT_DST]]
    hit = which >= 0
    if (np.bincount(which[hit], minlength=cuts) != 1).any():
        return None
    starts = np.empty(cuts, np.int64)
    starts[which[hit]] = marks[hit]
    return starts if (np.diff(starts) > 0).all() else None


def cut_order(program: Program, cut_ids: tuple) -> np.ndarray:
    """For every mark id: its index among the cuts (-1: not a cut)."""
    order = np.full(program.num_marks, -1, np.int64)
    order[list(cut_ids)] = np.arange(len(cut_ids))
    return order


def region_blocks_match(program: Program, region: int, params: "RegionParams",
                        layout: Layout, static_cost: np.ndarray, mark_source: np.ndarray,
                        mark_block: np.ndarray) -> bool:
    """Whether the blocks after block 0 of a region (run by the PEs of `params`) are
    timing-equivalent to it (recording their marks' block-0 ids); a partial last block
    to block 0's beginning."""
    starts = program.region_start[region] + layout.starts[region]
    length, n = starts[1] - starts[0], len(starts) - 1
    for copies, size in ((np.arange(1, layout.full_blocks), length),
                         (np.arange(layout.full_blocks, n), starts[-1] - starts[-2])):
        if len(copies) and not copies_match(program, static_cost, starts, copies, size,
                                            params, (mark_source, mark_block)):
            return False
    return True


def copies_match(program: Program, static_cost: np.ndarray, starts: np.ndarray,
                 copies: np.ndarray, size: int, params: "RegionParams", marks: tuple) -> bool:
    """Whether the first `size` instructions of blocks `copies` (block b starts at code
    index starts[b]) are timing-equivalent to those of block 0; records the copies' mark
    ids in `marks` (mark_source, mark_block)."""
    zero = starts[0] + np.arange(size)
    rows = starts[copies, None] + np.arange(size)                  # [copies, size]
    code = program.code
    if ((code["op"][rows] != code["op"][zero]).any()
            or (code["modes"][rows] != code["modes"][zero]).any()):
        return False
    if not (costs_match(program, static_cost, zero, rows, params)
            and slots_match(code, zero, rows, params)):
        return False
    return all(map_marks(code["a"][rows[:, m], SLOT_DST], int(code["a"][zero[m], SLOT_DST]),
                         copies, *marks) for m in np.flatnonzero(code["op"][zero] == Op.MARK))


class RegionParams:
    """The distinct parameter rows of one region's PEs (indices `pes`), gathered on first
    use from the program's parameter table (`table` [rows, num_params], each PE's row in
    `row_of`: Program.param_rows and param_index)."""

    def __init__(self, table: np.ndarray, row_of: np.ndarray, pes: np.ndarray):
        self.table, self.row_of, self.pes, self._rows = table, row_of, pes, None

    @property
    def rows(self) -> np.ndarray:
        """int32 [distinct rows of the region, num_params]."""
        if self._rows is None:
            self._rows = self.table[np.unique(self.row_of[self.pes])]
        return self._rows


def costs_match(program: Program, static_cost: np.ndarray, zero: np.ndarray,
                rows: np.ndarray, params: RegionParams) -> bool:
    """Equal static costs (engine.static_costs), except that an instruction whose
    count is a parameter may have a different address-derived count limit (cost -2 -
    limit) as long as the limit admits the largest count any PE of the region passes."""
    mine, theirs = static_cost[zero], static_cost[rows]
    block, offset = np.nonzero(theirs != mine)
    if block.size == 0:
        return True
    index, limit = zero[offset], -2 - theirs[block, offset]
    n_mode = (program.code["modes"][index] >> (MODE_BITS * SLOT_N)) & 0x3
    if (mine[offset] > -2).any() or (limit < 0).any() or (n_mode != MODE_PARAM).any():
        return False
    largest = params.rows[:, program.code["a"][index, SLOT_N]].max(axis=0)
    return bool((largest <= limit).all())


def slots_match(code, zero: np.ndarray, rows: np.ndarray, params: RegionParams) -> bool:
    """Every operand slot that timing reads holds the same value in block 0 and in each
    later block: equal fields for immediates and registers, equal per-PE values for
    parameters."""
    relevant = RELEVANT[code["op"][zero]]                             # [length, slots]
    shifts = MODE_BITS * np.arange(NUM_SLOTS, dtype=np.int64)
    modes = (code["modes"][zero].astype(np.int64)[:, None] >> shifts) & 0x3
    from_param = relevant & (modes == MODE_PARAM)
    fixed = relevant & ~from_param
    mine, theirs = code["a"][zero], code["a"][rows]                   # theirs: [blocks, ...]
    if (theirs[:, fixed] != mine[fixed]).any():
        return False
    ours, other = np.broadcast_arrays(mine[from_param], theirs[:, from_param])
    differ = ours != other
    if not differ.any():
        return True
    width = params.table.shape[1]
    pairs = np.unique(ours[differ].astype(np.int64) * width + other[differ])
    return bool((params.rows[:, pairs // width] == params.rows[:, pairs % width]).all())


def map_marks(ids: np.ndarray, source: int, blocks: np.ndarray, mark_source: np.ndarray,
              mark_block: np.ndarray) -> bool:
    """Record that mark ids `ids` (one per block of `blocks`) repeat block-0 mark `source`;
    False on a contradiction."""
    known = mark_source[ids] >= 0
    if ((mark_source[ids[known]] != source) | (mark_block[ids[known]] != blocks[known])).any():
        return False
    mark_source[ids], mark_block[ids] = source, blocks
    return bool((mark_block[ids] == blocks).all())   # else an id repeats among `ids`


def marks_unique(program: Program, region_starts: dict, mark_source: np.ndarray,
                 mark_block: np.ndarray) -> bool:
    """Every mark of a block occurs only in that block, so a skipped block's mark records
    are those of the block it repeats, shifted (`region_starts`: region -> pc of each cut
    mark)."""
    in_block_zero = np.zeros(program.num_marks, bool)
    in_block_zero[mark_source[mark_source >= 0]] = True
    for r, starts in region_starts.items():
        lo, n = program.region_start[r], program.region_len[r]
        code = program.code[lo:lo + n]
        pcs = np.flatnonzero(code["op"] == Op.MARK)
        k = code["a"][pcs, SLOT_DST]
        block = np.searchsorted(starts, pcs, "right") - 1
        later = (block >= 1) & (block < len(starts) - 1)
        if ((mark_block[k] != np.where(later, block, -1)).any()
                or (in_block_zero[k] & (block != 0)).any()):
            return False
    return True


@dataclass
class Cut:
    """The kernel state at a cut (copies): of each running PE its clock, busy cycles,
    P_SLACK and registers; links, marks, counters, routes, the largest send key executed
    while PEs were parked on the way to it, and what each link did first since the
    previous cut (`used`: reserved at least once; `slack`: head cycle minus free cycle at
    that first reservation, capped, -1 if it waited)."""

    clock: np.ndarray              # [running PEs], cycles
    busy: np.ndarray               # [running PEs], cycles
    slack_state: np.ndarray        # [running PEs], P_SLACK
    regs: np.ndarray               # [running PEs, Layout.block_regs]
    links: np.ndarray
    marks: np.ndarray
    stats: np.ndarray
    routes: np.ndarray | None      # None: the program never changes them
    parked_send_max: int
    used: np.ndarray
    slack: np.ndarray

    @property
    def free(self) -> np.ndarray:
        """Each link's free cycle."""
        return self.links[0::2]


def start_tracking(kernel, live: np.ndarray) -> None:
    """From the cut the kernel is parked at on, record what each PE and link does first
    (mesh.kernels P_SLACK and the links' first-reservation encoding)."""
    kernel.pes[live, K.P_SLACK] = K.SLACK_AT_CUT
    C.track_links(kernel.links, False)


def run_to_cut(kernel, cut: int, live: np.ndarray, reg_cols: np.ndarray) -> Cut | None:
    """Run on until every running PE (indices `live`) is parked at mark `cut`: the clean
    cut (keeping the registers `reg_cols`), else None."""
    return (snapshot(kernel, live, reg_cols) if kernel.run_until(cut) == K.ALL_PARKED
            else None)


def snapshot(kernel, live: np.ndarray, reg_cols: np.ndarray,
             tracking: bool = False) -> Cut | None:
    """The parked kernel's state if the cut is clean (every running PE parked, nothing
    queued, no route or barrier half done), else None; of the registers, only `reg_cols`
    (Layout.block_regs) are kept. With `tracking`, the kernel goes on recording first
    acts (only the snapshot's links are decoded). Router tables are kept only if the
    program has `route` instructions."""
    n, stats = len(live), kernel.stats
    clock, busy, slack_state = (np.empty(n, np.int64) for _ in range(3))
    regs = np.empty((n, len(reg_cols)), np.int64)
    unparked = C.pe_fields(kernel.pes, live, clock, busy, slack_state, reg_cols, regs)
    links = np.empty_like(kernel.links)
    used, slack = np.empty(len(links) // 2, np.bool_), np.empty(len(links) // 2, np.int64)
    C.decode_links(kernel.links, links, used, slack, not tracking)   # a decoded copy
    if (unparked or stats[K.ST_QUEUED] != 0 or stats[K.ST_ROUTE_SP] != 0
            or stats[K.ST_BARRIER_COUNT] != 0):
        return None
    routes = kernel.routes.copy() if kernel.routes_change else None
    return Cut(clock, busy, slack_state, regs, links, kernel.marks.copy(), stats.copy(),
               routes, int(stats[K.ST_PARKED_SEND_MAX]), used, slack)


def block_shift(start: Cut, end: Cut) -> int | None:
    """D > 0 if the block from cut `start` to cut `end` would run again unchanged, every
    event D cycles later, from `end`'s state; else None. Registers and router tables must
    be equal. D is the clock shift of every PE whose first act in the block was not a
    receive that waited for its message; the others, and the first reservation of each
    link, may find a different cycle as long as they would start at the same one
    (`starts_alike`)."""
    margin = receive_margin(end.slack_state)
    shifts = np.unique(end.clock[margin < 0] - start.clock[margin < 0])
    if len(shifts) != 1 or shifts[0] <= 0:
        return None
    d = int(shifts[0])
    if (not np.array_equal(end.regs, start.regs)
            or (start.routes is not None and not np.array_equal(end.routes, start.routes))
            or not starts_alike(True, margin, start.clock, end.clock - d)):
        return None
    return d if starts_alike(end.used, end.slack, start.free, end.free - d) else None


def receive_margin(slack_state: np.ndarray) -> np.ndarray:
    """Per PE (P_SLACK values): the cycles its first receive after a cut waited for its
    message, or -1 if its first act was anything else."""
    return np.where(slack_state >= K.SLACK_ABSORBED, slack_state - K.SLACK_ABSORBED, -1)


def starts_alike(acted, margin: np.ndarray, seen: np.ndarray, other: np.ndarray) -> bool:
    """Whether every first act (`acted`: a PE's first receive or act after a cut, a link's
    first reservation) that found cycle `seen` (the PE's clock, the link's free cycle)
    and started `margin` cycles after it (-1: at it) would have started at the same cycle
    had it found cycle `other`."""
    return bool((~np.asarray(acted) | (other == seen)
                 | (margin >= np.maximum(other - seen, 0))).all())


def jump(kernel, start: Cut, end: Cut, blocks: Blocks, live: np.ndarray, d: int,
         template: int, partial: bool = False) -> bool:
    """Advance the parked state `end` over the full blocks after block `template` (the
    block from `start` to `end`), each a copy of it D cycles later; False if that would
    pass the cycle limit. With `partial`, also copy the marks of the partial last block
    (add_partial adds its other increments)."""
    n = blocks.skipped(template)
    if end.clock.max() + n * d > kernel.cfg[K.CFG_MAX_CYCLES]:
        return False
    C.advance_pes(kernel.pes, live, n * d, n * blocks.layout.lengths[kernel.pe_region[live]],
                  n * (end.busy - start.busy))
    kernel.links[0::2][end.used] += n * d
    kernel.links[1::2] += n * (end.links[1::2] - start.links[1::2])
    for field in (K.ST_INSTRUCTIONS, K.ST_MESSAGES):
        kernel.stats[field] += n * (end.stats[field] - start.stats[field])
    last = blocks.layout.full_blocks + partial          # blocks whose marks are copied
    copy_marks(kernel.marks, start.marks, end.marks, blocks, d, template, last)
    span = clock_span(end.clock)
    for b in range(template + 1, last):
        cut_record(kernel.marks, blocks.layout.cut_ids[b], span, (b - template - 1) * d)
    return True


def copy_marks(marks: np.ndarray, start: np.ndarray, end: np.ndarray, blocks: Blocks,
               d: int, template: int, last: int) -> None:
    """Marks of blocks template + 1 .. last - 1: block `template`'s records shifted by
    (b - template) * d cycles for block b."""
    k = np.flatnonzero((blocks.mark_block > template) & (blocks.mark_block < last))
    src = blocks.template_source(template)[k]
    shift = (blocks.mark_block[k] - template) * d
    count = end[src, K.M_COUNT] - start[src, K.M_COUNT]
    ran = count > 0
    marks[k, K.M_COUNT] = count
    for field in (K.M_FIRST, K.M_LAST):
        marks[k, field] = np.where(ran, end[src, field] + shift, -1)


def clock_span(clocks: np.ndarray) -> tuple[int, int]:
    """(earliest, latest) of the PE clocks at a cut."""
    return int(clocks.min()), int(clocks.max())


def cut_record(marks: np.ndarray, cut: int, span: tuple[int, int], shift: int) -> None:
    """The record of cut mark `cut`, run by every running PE at the clocks (`span`:
    earliest, latest) of the state after the repeated block plus `shift`: the clocks at
    which a PE leaves a cut may differ between blocks (block_shift), so its copy is not
    the repeated block's."""
    marks[cut, K.M_FIRST] = span[0] + shift
    marks[cut, K.M_LAST] = span[1] + shift


def run_fast_forward(kernel, cut_names, jobs: int = 1) -> int | None:
    """Run `kernel` (a fresh engine.KernelRun) to the end with the blocks between the
    marks `cut_names` fast-forwarded; the number of blocks skipped, or None (the kernel
    state is then unusable) when a condition of the module docstring fails, and the
    caller runs in full. With `jobs` > 1, a forked child checks the blocks while the
    first is emulated and another runs the code after the last full block (`run_head`);
    with one job, that child (from the tail mark) waits until the parent has jumped."""
    program = kernel.program
    layout = block_layout(program, cut_names)
    if layout is None or layout.full_blocks < 2:
        return None
    live = live_rows(kernel.pe_region)
    with Forked(find_blocks, program, layout, kernel.static_cost,
                parallel=jobs > 1) as checking:
        outcome = run_to_cut(kernel, layout.cut_ids[0], live, layout.block_regs)
        for template in range(min(2, layout.full_blocks - 1)):
            if not isinstance(outcome, Cut):
                break
            attempt = Attempt(template, live, layout, jobs > 1, can_fork())
            outcome = repeat_block(kernel, attempt, outcome, checking)
    return outcome if isinstance(outcome, int) else None


@dataclass(frozen=True)
class Attempt:
    """One try of `repeat_block`: the block to emulate and repeat (`template`), the
    running PEs, the block layout, whether the code after the last full block runs in
    a forked child beside the block (`parallel`), and whether this process may fork."""

    template: int
    live: np.ndarray
    layout: Layout
    parallel: bool
    forkable: bool = True

    @property
    def skip(self) -> int:
        """Full blocks from the template's first cut on."""
        return self.layout.full_blocks - self.template

    @property
    def from_tail(self) -> bool:
        """Whether the child starts where block 0 reaches the partial block's end (the
        tail mark), so that nobody emulates the partial block: only when block 0 is the
        template. With one job too: the child then waits until the parent has jumped
        (`HeadJob` `wait`), so one process runs at a time."""
        return self.forkable and self.template == 0 and self.layout.tail_mark >= 0

    @property
    def forks_head(self) -> bool:
        """Whether the code after the last full block runs in a forked child."""
        return self.parallel or self.from_tail


def repeat_block(kernel, attempt: Attempt, start: Cut, checking: Forked) -> int | Cut | None:
    """From the parked state `start` at the template block's first cut, emulate the block
    and, if it repeats, jump over the full blocks after it and run the code after them
    (in a forked child beside the block when `attempt.parallel`). Returns the blocks
    skipped; or the clean cut after the block when it does not repeat (the kernel is
    parked there); or None when the fast-forward fails."""
    live, template = attempt.live, attempt.template
    start_tracking(kernel, live)
    tail = halfway = None
    if attempt.from_tail:
        kernel.resume_parked()
        if kernel.run_until(attempt.layout.tail_mark) != K.ALL_PARKED:
            return None
        halfway = kernel.stats[[K.ST_PARKED_SEND_MAX, K.ST_SEND_MIN]].copy()
    with (HeadJob(kernel, attempt.layout.lengths, live, attempt.skip, not attempt.parallel)
          if attempt.forks_head else nullcontext()) as heading:
        if attempt.from_tail:   # after the fork: the child need not wait for the copy
            tail = snapshot(kernel, live, attempt.layout.block_regs, tracking=True)
        forking = attempt.forks_head and (tail is not None or not attempt.from_tail)
        kernel.resume_parked()
        end = run_to_cut(kernel, attempt.layout.cut_ids[template + 1], live,
                         attempt.layout.block_regs)
        blocks = checking.result()
        if (end is None or blocks is None
                or (halfway is not None and not join_halves(halfway, end))):
            return None
        d = block_shift(start, end)
        if d is None or not orders_hold(kernel, start, end, d):
            return end
        if not jump(kernel, start, end, blocks, live, d, template, tail is not None):
            return None
        skipped = blocks.skipped(template)
        if forking:
            at = HeadStart.of(kernel, start, tail, end, attempt, d)
            if at.partial is not None:   # while the child runs (a failed merge loses it)
                add_partial(kernel, *at.partial, live, at.shift)
            head = heading.result()
            return skipped if head is not None and merge_head(kernel, at, head) else None
    kernel.resume_parked()
    kernel.run_until(-1)
    first_send = int(kernel.stats[K.ST_SEND_MIN])
    return skipped if last_parked_send(kernel, end, skipped, d) < first_send else None


def join_halves(halfway: np.ndarray, end: Cut) -> bool:
    """Block 0 ran in two calls, parking at the tail mark in between (`halfway`: that
    call's largest parked and smallest send keys): the sends executed while PEs were
    parked there must precede every later send of the block; `end`'s smallest send key
    becomes the whole block's."""
    parked_max, first = halfway
    if parked_max >= end.stats[K.ST_SEND_MIN]:
        return False
    end.stats[K.ST_SEND_MIN] = min(first, end.stats[K.ST_SEND_MIN])
    return True


def live_rows(pe_region: np.ndarray) -> np.ndarray:
    """The running PEs (those in a region): int64 indices."""
    return np.flatnonzero(pe_region >= 0).astype(np.int64)


def send_step(kernel, d: int) -> int:
    """d cycles in heap-key units (a key is (cycle << shift) | PE)."""
    return d << int(kernel.cfg[K.CFG_SHIFT])


def last_parked_send(kernel, end: Cut, skipped: int, d: int) -> int:
    """The largest key of a `send` executed while PEs were parked on the way to the last
    cut: cut `end`'s, `skipped` blocks of d cycles later. Every send of the code after the
    last cut must come after it."""
    return end.parked_send_max + skipped * send_step(kernel, d)


def orders_hold(kernel, start: Cut, end: Cut, d: int) -> bool:
    """The send-order checks of the emulated block and the next: the sends executed while
    PEs were parked at each cut precede the block's first send."""
    first_sends = int(end.stats[K.ST_SEND_MIN])   # the block's earliest send key
    return (start.parked_send_max < first_sends
            and end.parked_send_max < first_sends + send_step(kernel, d))


HEAD_FIELDS = K.P_SLACK + 1   # the PE row's fields a head run hands back


@dataclass
class HeadRun:
    """What the code after the last cut did, run from the template block's first cut with
    the skipped blocks' pcs added (so every cycle is the skipped blocks' D early): final
    clock, pc, status, finish and P_SLACK of the live PEs, their busy cycles; link free
    cycles and busy cycles (with the first-reservation tracking); counters (and the
    smallest send key, ST_SEND_MIN) and marks of this code alone. `pes` and `links` are in
    shared memory, written by the child."""

    pes: np.ndarray                # [live, HEAD_FIELDS]: the PE row up to P_SLACK
    links: np.ndarray              # as KernelRun.links
    stats: np.ndarray | None = None
    marks: np.ndarray | None = None


def run_head(kernel, lengths: np.ndarray, live: np.ndarray, skip: int,
             out: HeadRun) -> tuple | None:
    """Child side (`HeadJob`): from the parked state at a cut, move every live PE's pc
    past `skip` blocks (`lengths`: instructions per block and region), clear the busy
    cycles, link busy cycles, counters and marks, and run to the end. Writes `out.pes`
    and `out.links`; returns (stats, marks), or None on a fault (the caller then runs in
    full, which reports it)."""
    pes = kernel.pes
    C.head_start(pes, live, skip * lengths[kernel.pe_region[live]])
    C.track_links(kernel.links, True)
    kernel.stats[[K.ST_INSTRUCTIONS, K.ST_MESSAGES]] = 0
    kernel.marks[:] = 0
    kernel.marks[:, K.M_FIRST:K.M_LAST + 1] = -1
    kernel.resume_parked()
    try:
        kernel.run_until(-1)
    except MeshFault:
        return None
    C.head_fields(pes, live, out.pes)
    out.links[:] = kernel.links
    return kernel.stats, kernel.marks


def run_head_when_told(go: tuple | None, *args) -> tuple | None:
    """Child side of a `HeadJob`: `run_head(*args)`, after the parent writes to the pipe
    `go` (read and write descriptors; None: at once)."""
    if go is not None:
        os.close(go[1])
        os.read(go[0], 1)
    return run_head(*args)


class HeadJob:
    """`run_head` in a forked child (a context manager; `result()` waits for it): its
    HeadRun, or None after a fault. Both processes then write the PE rows and links, and
    the first to write a page copies it (taking private copies in either process right
    after the fork measured no faster: the child writes faster than a copy is made).
    With `wait`, the child starts only when `result()` is called (one process runs at a
    time; the fork only keeps the state it starts from)."""

    def __init__(self, kernel, lengths: np.ndarray, live: np.ndarray, skip: int,
                 wait: bool = False):
        self.head = HeadRun(shared_empty((len(live), HEAD_FIELDS), np.int64),
                            shared_empty(kernel.links.shape, np.int64))
        self.go = os.pipe() if wait else None
        self.job = Forked(run_head_when_told, self.go, kernel, lengths, live, skip, self.head)
        if self.go is not None:
            os.close(self.go[0])

    def start(self) -> None:
        """Let a waiting child run (no-op otherwise)."""
        if self.go is not None:
            os.write(self.go[1], b"g")
            os.close(self.go[1])
            self.go = None

    def result(self) -> HeadRun | None:
        self.start()
        ran = self.job.result()
        if ran is None:
            return None
        self.head.stats, self.head.marks = ran
        return self.head

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.job.__exit__(*exc)   # kills a child still running or waiting
        if self.go is not None:
            os.close(self.go[1])
            self.go = None


@dataclass
class HeadStart:
    """Where a child's `run_head` started (`origin`, a cut) and the true state there, in
    the child's frame (`shift` cycles early): PE clocks, link free cycles; the cut mark
    the child ran first; the key every send of the child must follow (`parked_bound`,
    true frame); and the partial block's increments nobody emulated (`partial`: the
    cuts it ran between in block 0, or None)."""

    origin: Cut
    live: np.ndarray
    clocks: np.ndarray
    free: np.ndarray
    first_mark: int
    parked_bound: int
    shift: int
    partial: tuple | None

    @classmethod
    def of(cls, kernel, start: Cut, tail: Cut | None, end: Cut, attempt: Attempt,
           d: int) -> "HeadStart":
        """The child started at cut `start` (tail None), or at block 0's tail mark
        (`tail`), with `end` the cut after the repeated block (D = d)."""
        live, skip, cut_ids = attempt.live, attempt.skip, attempt.layout.cut_ids
        unused_free = np.where(end.used, end.free - d, start.free - skip * d)
        if tail is None:
            return cls(start, live, end.clock - d, unused_free,
                       cut_ids[attempt.layout.full_blocks],
                       last_parked_send(kernel, end, skip - 1, d), skip * d, None)
        # Every PE ran the tail mark in block 0: a PE with no first act before it took it
        # as one (a mark), so block_shift held its clock to D; the tail's clocks are true.
        return cls(tail, live, tail.clock,
                   np.where(tail.used, tail.free, unused_free),
                   cut_ids[-1], last_parked_send(kernel, tail, skip, d), skip * d,
                   (start, tail))


def merge_head(kernel, at: HeadStart, head: HeadRun) -> bool:
    """Add a child's `run_head` (every cycle `at.shift` early) to the state after `jump`
    (and `add_partial`, if the child skipped the partial block); False if the child's
    run would differ from the true one (each PE and link must start its first act at the
    same cycle from the child's state as from the true one: `starts_alike`), a send of
    the head would precede a parked send, or a clock would pass the cycle limit. After
    False the kernel state is unusable."""
    live, shift = at.live, at.shift
    first_send = int(head.stats[K.ST_SEND_MIN]) + send_step(kernel, shift)   # int: no wrap
    if (first_send <= at.parked_bound
            or not starts_alike(True, receive_margin(head.pes[:, K.P_SLACK]),
                                at.origin.clock, at.clocks)
            or head.pes[:, K.P_CLOCK].max(initial=0) + shift > kernel.cfg[K.CFG_MAX_CYCLES]
            or not C.merge_links(kernel.links, head.links, at.origin.free, at.free, shift)):
        return False
    C.take_head(kernel.pes, live, head.pes, shift)
    for field in (K.ST_INSTRUCTIONS, K.ST_MESSAGES):
        kernel.stats[field] += head.stats[field]
    add_marks(kernel.marks, head.marks, shift)
    cut_record(kernel.marks, at.first_mark, clock_span(at.clocks), shift)
    return True


def add_partial(kernel, start: Cut, tail: Cut, live: np.ndarray, shift: int) -> None:
    """Add the partial last block, a copy of block 0 from `start` to `tail` `shift`
    cycles later, to the state after `jump`: busy cycles, link loads and free cycles,
    counters (its marks are copied with the full blocks')."""
    C.advance_pes(kernel.pes, live, 0, np.zeros(len(live), np.int64), tail.busy - start.busy)
    C.add_block_links(kernel.links, start.links, tail.links, tail.used, shift)
    for field in (K.ST_INSTRUCTIONS, K.ST_MESSAGES):
        kernel.stats[field] += tail.stats[field] - start.stats[field]


def add_marks(marks: np.ndarray, head: np.ndarray, shift: int) -> None:
    """Merge the head's mark records (cycles `shift` early) into `marks`."""
    k = np.flatnonzero(head[:, K.M_COUNT] > 0)
    before = marks[k, K.M_COUNT] > 0
    first, last = head[k, K.M_FIRST] + shift, head[k, K.M_LAST] + shift
    marks[k, K.M_FIRST] = np.where(before, np.minimum(marks[k, K.M_FIRST], first), first)
    marks[k, K.M_LAST] = np.where(before, np.maximum(marks[k, K.M_LAST], last), last)
    marks[k, K.M_COUNT] += head[k, K.M_COUNT]
