"""Exact fast-forward over repeated blocks of code (decoder layers) in timing-only runs.

A decode step runs the same code once per layer; only addresses differ between layers,
and timing never depends on addresses or values. With cut marks c_0 .. c_n (block b runs
from c_b to c_b+1), `run_fast_forward` emulates up to c_1 and on to c_2, checks that the
mesh state at c_2 is the state at c_1 shifted by D cycles, jumps over blocks 2 .. n-1 by
adding D (and block 1's busy cycles, link loads, counters and marks) once per skipped
block, and emulates the code after c_n. The result equals a full run's exactly, or
`run_fast_forward` returns None and the caller runs in full. With two or more jobs, forked
children check the blocks beside block 0 and run the code after c_n beside block 1, from
c_1's state with every pc moved past the skipped blocks (`run_head`, `merge_head`: its
cycles are then (n-1) D early). docs/engines.md ("Fast-forward") states the conditions;
in short:

- blocks: every running PE's code holds each cut mark (`mark NAME`) once, in order; the
  blocks between consecutive cuts that are skipped are *timing-equivalent* to block 1:
  same opcodes, operand modes, static costs, and the same values in every operand slot
  that timing reads (counts, colors, column counts; every slot of control ops; per-PE
  parameter values where a slot takes one), differing at most in addresses and mark ids;
  each mark id belongs to one block;
- cuts: the run stops with every running PE *parked* about to execute the cut mark, no
  message queued or in flight, no route change, and equal registers; link reservations
  either shift by D or are stale (free before any parked PE's clock);
- order: parking holds PEs back while others finish the previous block, which is exact
  only if every `send` executed meanwhile precedes, in (cycle, PE) order, every `send`
  after the cut. The kernel records both keys; the check runs after the fact.

Address faults inside skipped blocks are caught only for immediate operands (static
costs); compiled decode programs are address-checked by `compiler.place`.
"""

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from emulator import mesh_kernels as K
from emulator.errors import MeshFault
from emulator.parallel import Forked, shared_empty
from isa.opcodes import MODE_BITS, MODE_PARAM, NUM_SLOTS, SLOT_COLOR, SLOT_DST, SLOT_N, Op
from isa.program import Program

COUNT_SLOTS = (SLOT_N,)                          # vector ops and reductions
GEMV_SLOTS = (SLOT_N, SLOT_COLOR)                # rows m, columns k
COMM_SLOTS = (SLOT_N, SLOT_COLOR)                # send, recv, recvadd
ALL_SLOTS = tuple(range(NUM_SLOTS))              # control ops, route, barrier, halt
Rows = np.ndarray | slice                         # PE indices, or slice(None) for all PEs


@dataclass(frozen=True)
class Blocks:
    """Repeated blocks of a program: cut mark ids, per-region block geometry, and the
    mark ids of skipped blocks mapped to block 1's (`mark_source[k]` = block-1 id of mark
    k, `mark_block[k]` = its block index, -1 for marks outside skipped blocks)."""

    cut_ids: tuple
    region_block_len: np.ndarray   # int64 [regions]: instructions per block (0: idle region)
    mark_source: np.ndarray
    mark_block: np.ndarray

    @property
    def skipped(self) -> int:
        """Blocks jumped over: those between consecutive cuts but the first two."""
        return len(self.cut_ids) - 3


def relevant_table() -> np.ndarray:
    """bool [opcodes, slots]: the operand slots whose values can change an instruction's
    timing (none for `mark`, whose id is mapped instead)."""
    table = np.ones((max(Op) + 1, NUM_SLOTS), bool)
    for first, last, slots in ((Op.VMOV, Op.RDOT, COUNT_SLOTS), (Op.VGEMV, Op.VGEMV, GEMV_SLOTS),
                               (Op.SEND, Op.RECVADD, COMM_SLOTS), (Op.MARK, Op.MARK, ())):
        table[first:last + 1] = False
        table[first:last + 1, list(slots)] = True
    return table


RELEVANT = relevant_table()


def find_blocks(program: Program, cut_names, static_cost: np.ndarray) -> Blocks | None:
    """The repeated blocks delimited by the marks `cut_names`, or None when the program
    does not qualify (fewer than 4 cuts, a running region without them, blocks that
    differ in anything timing reads)."""
    ids = {name: k for k, name in enumerate(program.mark_names)}
    if len(cut_names) < 4 or any(name not in ids for name in cut_names):
        return None
    cut_ids = tuple(ids[name] for name in cut_names)
    order = np.argsort(program.pe_region, kind="stable")
    regions = program.pe_region[order]
    live = np.unique(regions[regions >= 0])
    bounds = np.searchsorted(regions, np.stack([live, live + 1]))
    lengths = np.zeros(len(program.region_start), np.int64)
    mark_source = np.full(program.num_marks, -1, np.int64)
    mark_block = np.full(program.num_marks, -1, np.int64)
    region_starts = {}
    for r, lo, hi in zip(live, *bounds, strict=True):
        starts = region_starts[r] = cut_positions(program, int(r), cut_ids)
        if starts is None:
            return None
        lengths[r] = starts[2] - starts[1]
        if not region_blocks_match(program, int(r), order[lo:hi], starts, static_cost,
                                   mark_source, mark_block):
            return None
    if not marks_unique(program, region_starts, mark_source, mark_block):
        return None
    return Blocks(cut_ids, lengths, mark_source, mark_block)


def cut_positions(program: Program, region: int, cut_ids: tuple) -> np.ndarray | None:
    """pc of each cut mark in a region's code (each exactly once, increasing), or None."""
    lo, n = program.region_start[region], program.region_len[region]
    code = program.code[lo:lo + n]
    marks = np.flatnonzero(code["op"] == Op.MARK)
    mark_ids = code["a"][marks, SLOT_DST]
    starts = []
    for cut in cut_ids:
        where = marks[mark_ids == cut]
        if len(where) != 1:
            return None
        starts.append(int(where[0]))
    starts = np.array(starts, np.int64)
    return starts if (np.diff(starts) > 0).all() else None


def region_blocks_match(program: Program, region: int, pes: np.ndarray, starts: np.ndarray,
                        static_cost: np.ndarray, mark_source: np.ndarray,
                        mark_block: np.ndarray) -> bool:
    """Whether the skipped blocks of a region (run by PEs `pes`; blocks 2 .. n-1 of cuts
    c_0 .. c_n) are timing-equivalent to block 1 (recording their marks' block-1 ids);
    they must all have block 1's length."""
    lo, length = program.region_start[region], starts[2] - starts[1]
    if (np.diff(starts[1:]) != length).any():
        return False
    one = lo + starts[1] + np.arange(length)
    rows = lo + starts[2:-1, None] + np.arange(length)        # [skipped, length]
    code = program.code
    if ((code["op"][rows] != code["op"][one]).any()
            or (code["modes"][rows] != code["modes"][one]).any()):
        return False
    params = RegionParams(program, pes)
    if not (costs_match(program, static_cost, one, rows, params)
            and slots_match(code, one, rows, params)):
        return False
    marks = np.flatnonzero(code["op"][one] == Op.MARK)
    return all(map_marks(code["a"][rows[:, m], SLOT_DST], int(code["a"][one[m], SLOT_DST]),
                         mark_source, mark_block) for m in marks)


class RegionParams:
    """The parameter rows of one region's PEs (indices `pes`), gathered on first use."""

    def __init__(self, program: Program, pes: np.ndarray):
        self.program, self.pes, self._rows = program, pes, None

    @property
    def rows(self) -> np.ndarray:
        """int32 [PEs of the region, num_params]."""
        if self._rows is None:
            self._rows = self.program.params[self.pes]
        return self._rows


def costs_match(program: Program, static_cost: np.ndarray, one: np.ndarray,
                rows: np.ndarray, params: RegionParams) -> bool:
    """Equal static costs (mesh_engine.static_costs), except that an instruction whose
    count is a parameter may have a different address-derived count limit (cost -2 -
    limit) as long as the limit admits the largest count any PE of the region passes."""
    mine, theirs = static_cost[one], static_cost[rows]
    block, offset = np.nonzero(theirs != mine)
    if block.size == 0:
        return True
    index, limit = one[offset], -2 - theirs[block, offset]
    n_mode = (program.code["modes"][index] >> (MODE_BITS * SLOT_N)) & 0x3
    if (mine[offset] > -2).any() or (limit < 0).any() or (n_mode != MODE_PARAM).any():
        return False
    largest = params.rows[:, program.code["a"][index, SLOT_N]].max(axis=0)
    return bool((largest <= limit).all())


def slots_match(code, one: np.ndarray, rows: np.ndarray, params: RegionParams) -> bool:
    """Every operand slot that timing reads holds the same value in block 1 and in each
    skipped block: equal fields for immediates and registers, equal per-PE values for
    parameters."""
    relevant = RELEVANT[code["op"][one]]                              # [length, slots]
    shifts = MODE_BITS * np.arange(NUM_SLOTS, dtype=np.int64)
    modes = (code["modes"][one].astype(np.int64)[:, None] >> shifts) & 0x3
    from_param = relevant & (modes == MODE_PARAM)
    fixed = relevant & ~from_param
    mine, theirs = code["a"][one], code["a"][rows]                    # theirs: [skipped, ...]
    if (theirs[:, fixed] != mine[fixed]).any():
        return False
    columns = np.broadcast_arrays(mine[from_param], theirs[:, from_param])
    pairs = np.unique(np.stack(columns, axis=-1).reshape(-1, 2), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    if len(pairs) == 0:
        return True
    return bool((params.rows[:, pairs[:, 0]] == params.rows[:, pairs[:, 1]]).all())


def map_marks(ids: np.ndarray, source: int, mark_source: np.ndarray,
              mark_block: np.ndarray) -> bool:
    """Record that mark ids `ids` (one per skipped block, blocks 2, 3, ...) repeat block-1
    mark `source`; False on a contradiction."""
    for block, k in enumerate(ids, start=2):
        if mark_source[k] >= 0 and (mark_source[k], mark_block[k]) != (source, block):
            return False
        mark_source[k], mark_block[k] = source, block
    return True


def marks_unique(program: Program, region_starts: dict, mark_source: np.ndarray,
                 mark_block: np.ndarray) -> bool:
    """Every mark of a skipped block occurs only in that block, and block 1's marks only
    in block 1, so the skipped blocks' mark records are block 1's, shifted
    (`region_starts`: region -> pc of each cut mark)."""
    in_block_one = np.zeros(program.num_marks, bool)
    in_block_one[mark_source[mark_source >= 0]] = True
    for r, starts in region_starts.items():
        lo, n = program.region_start[r], program.region_len[r]
        code = program.code[lo:lo + n]
        pcs = np.flatnonzero(code["op"] == Op.MARK)
        k = code["a"][pcs, SLOT_DST]
        block = np.searchsorted(starts, pcs, "right") - 1
        skipped = (block >= 2) & (block < len(starts) - 1)
        if ((mark_block[k] != np.where(skipped, block, -1)).any()
                or (in_block_one[k] & (block != 1)).any()):
            return False
    return True


@dataclass
class Cut:
    """The kernel state at a cut (copies): per-PE rows, links, marks, counters, routes, and
    the largest send key executed while PEs were parked on the way to it."""

    pes: np.ndarray
    links: np.ndarray
    marks: np.ndarray
    stats: np.ndarray
    routes: np.ndarray
    parked_send_max: int


def take_cut(kernel, live: Rows) -> Cut | None:
    """Snapshot a clean cut (every running PE parked, nothing queued), else None."""
    stats = kernel.stats
    if ((kernel.pes[live, K.P_STATUS] != K.PARKED).any() or stats[K.ST_QUEUED] != 0
            or stats[K.ST_ROUTE_SP] != 0 or stats[K.ST_BARRIER_COUNT] != 0):
        return None
    return Cut(kernel.pes.copy(), kernel.links.copy(), kernel.marks.copy(), stats.copy(),
               kernel.routes.copy(), int(stats[K.ST_PARKED_SEND_MAX]))


def cut_shift(one: Cut, two: Cut, live: Rows) -> int | None:
    """D if cut `two` is cut `one` with every clock shifted by the same D > 0 cycles
    (registers and routes equal; each link's reservation shifted by D or stale, i.e. free
    before every parked PE's clock), else None."""
    d = two.pes[live, K.P_CLOCK] - one.pes[live, K.P_CLOCK]
    if d.size == 0 or d[0] <= 0 or (d != d[0]).any():
        return None
    regs = slice(K.P_REGS, K.P_REGS + 8)
    if (two.pes[live, regs] != one.pes[live, regs]).any() or (two.routes != one.routes).any():
        return None
    free1, free2 = one.links[0::2], two.links[0::2]
    first = one.pes[live, K.P_CLOCK].min()
    ok = (free2 == free1 + d[0]) | ((free1 <= first) & (free2 <= first + d[0]))
    return int(d[0]) if ok.all() else None


def jump(kernel, one: Cut, two: Cut, blocks: Blocks, live: Rows, d: int) -> bool:
    """Advance the parked state `two` over `blocks.skipped` blocks, each a copy of the
    block between the cuts; False if that would pass the cycle limit."""
    n, pes, cfg = blocks.skipped, kernel.pes, kernel.cfg
    if pes[live, K.P_CLOCK].max() + n * d > cfg[K.CFG_MAX_CYCLES]:
        return False
    stale = two.pes[live, K.P_CLOCK].min()
    pes[live, K.P_CLOCK] += n * d
    pes[live, K.P_PC] += n * blocks.region_block_len[kernel.pe_region[live]]
    pes[live, K.P_BUSY] += n * (two.pes[live, K.P_BUSY] - one.pes[live, K.P_BUSY])
    free = kernel.links[0::2]
    free[free > stale] += n * d
    kernel.links[1::2] += n * (two.links[1::2] - one.links[1::2])
    for field in (K.ST_INSTRUCTIONS, K.ST_MESSAGES):
        kernel.stats[field] += n * (two.stats[field] - one.stats[field])
    copy_marks(kernel.marks, one.marks, two.marks, blocks, d)
    return True


def copy_marks(marks: np.ndarray, one: np.ndarray, two: np.ndarray, blocks: Blocks,
               d: int) -> None:
    """Marks of skipped block b: block 1's records shifted by (b - 1) * d cycles."""
    k = np.flatnonzero(blocks.mark_block >= 0)
    src, shift = blocks.mark_source[k], (blocks.mark_block[k] - 1) * d
    count = two[src, K.M_COUNT] - one[src, K.M_COUNT]
    ran = count > 0
    marks[k, K.M_COUNT] = count
    for field in (K.M_FIRST, K.M_LAST):
        marks[k, field] = np.where(ran, two[src, field] + shift, -1)


def run_fast_forward(kernel, cut_names, jobs: int = 1) -> int | None:
    """Run `kernel` (a fresh mesh_engine.KernelRun) to the end with the middle blocks
    between the marks `cut_names` fast-forwarded; the number of blocks skipped, or None
    (the kernel state is then unusable) when a condition of the module docstring fails,
    and the caller runs in full. With `jobs` > 1, forked children check the blocks while
    block 0 is emulated and run the code after the last cut while block 1 is
    (`run_head`)."""
    program = kernel.program
    if len(cut_names) < 4 or not set(cut_names) <= set(program.mark_names):
        return None
    parallel = jobs > 1
    cut_ids = [program.mark_names.index(name) for name in cut_names]
    live = live_rows(kernel.pe_region)
    with Forked(find_blocks, program, cut_names, kernel.static_cost,
                parallel=parallel) as checking:
        one = run_to_cut(kernel, cut_ids[1], live)
        blocks = checking.result()
    if one is None or blocks is None:
        return None
    skip = len(cut_ids) - 2                     # blocks from cut 1 to the last cut
    with HeadJob(kernel, blocks, live, skip) if parallel else nullcontext() as heading:
        kernel.resume_parked()
        two = run_to_cut(kernel, cut_ids[2], live)
        d = None if two is None else cut_shift(one, two, live)
        if d is None or not jump_checked(kernel, one, two, blocks, live, d):
            return None
        if parallel:
            head = heading.result()
            ok = head is not None and merge_head(kernel, one, two, head, live, skip, d)
            return blocks.skipped if ok else None
    kernel.resume_parked()
    kernel.run_until(-1)
    first_send = int(kernel.stats[K.ST_SEND_MIN])
    ok = last_parked_send(kernel, two, blocks.skipped, d) < first_send
    return blocks.skipped if ok else None


def live_rows(pe_region: np.ndarray) -> Rows:
    """The running PEs (those in a region) as an index: a slice when that is all of them,
    which numpy reads and writes without gathering."""
    live = np.flatnonzero(pe_region >= 0)
    return slice(None) if len(live) == len(pe_region) else live


def run_to_cut(kernel, cut: int, live: Rows) -> Cut | None:
    """Run on until every running PE is parked at mark `cut`; the clean cut, else None."""
    return take_cut(kernel, live) if kernel.run_until(cut) == K.ALL_PARKED else None


def send_step(kernel, d: int) -> int:
    """d cycles in heap-key units (a key is (cycle << shift) | PE)."""
    return d << int(kernel.cfg[K.CFG_SHIFT])


def last_parked_send(kernel, two: Cut, skipped: int, d: int) -> int:
    """The largest key of a `send` executed while PEs were parked on the way to the last
    cut: cut 2's, `skipped` blocks of d cycles later. Every send of the code after the
    last cut must come after it."""
    return two.parked_send_max + skipped * send_step(kernel, d)


def jump_checked(kernel, one: Cut, two: Cut, blocks: Blocks, live: Rows,
                 d: int) -> bool:
    """The send-order checks of blocks 0 and 1 (each block's parked sends precede the
    next block's first send), then `jump`."""
    first_sends = int(two.stats[K.ST_SEND_MIN])   # block 1's earliest send key
    return (one.parked_send_max < first_sends
            and two.parked_send_max < first_sends + send_step(kernel, d)
            and jump(kernel, one, two, blocks, live, d))


@dataclass
class HeadRun:
    """What the code after the last cut did, run from cut 1's state with the skipped
    blocks' pcs added (so every cycle is `skip` block lengths D early): final clock, pc,
    status and finish of the live PEs, their busy cycles; link free cycles, link busy
    cycles; counters (and the smallest send key, ST_SEND_MIN) and marks of this code
    alone. `pes` and `links` are in shared memory, written by the child."""

    pes: np.ndarray                # [live, P_FIELDS]
    links: np.ndarray              # as KernelRun.links
    stats: np.ndarray | None = None
    marks: np.ndarray | None = None


def run_head(kernel, blocks: Blocks, live: Rows, skip: int, out: HeadRun) -> tuple | None:
    """Child side: from the parked state at cut 1, move every live PE's pc past `skip`
    blocks, clear the busy cycles, link busy cycles, counters and marks, and run to the
    end. Writes `out.pes` and `out.links`; returns (stats, marks), or None on a fault (the
    caller then runs in full, which reports it)."""
    pes = kernel.pes
    pes[live, K.P_PC] += skip * blocks.region_block_len[kernel.pe_region[live]]
    pes[:, K.P_BUSY] = 0
    kernel.links[1::2] = 0
    kernel.stats[[K.ST_INSTRUCTIONS, K.ST_MESSAGES]] = 0
    kernel.marks[:] = 0
    kernel.marks[:, K.M_FIRST:K.M_LAST + 1] = -1
    kernel.resume_parked()
    try:
        kernel.run_until(-1)
    except MeshFault:
        return None
    out.pes[:] = pes[live]
    out.links[:] = kernel.links
    return kernel.stats, kernel.marks


class HeadJob:
    """`run_head` in a forked child (a context manager; `result()` waits for it): its
    HeadRun, or None after a fault."""

    def __init__(self, kernel, blocks: Blocks, live: Rows, skip: int):
        self.head = HeadRun(shared_empty(kernel.pes[live].shape, np.int64),
                            shared_empty(kernel.links.shape, np.int64))
        self.job = Forked(run_head, kernel, blocks, live, skip, self.head)

    def result(self) -> HeadRun | None:
        ran = self.job.result()
        if ran is None:
            return None
        self.head.stats, self.head.marks = ran
        return self.head

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.job.__exit__(*exc)


def merge_head(kernel, one: Cut, two: Cut, head: HeadRun, live: Rows, skip: int,
               d: int) -> bool:
    """Add a child's `run_head` (every cycle `skip` * d early) to the state after
    `jump`; False if a send of the head would precede a parked send of the last block,
    or a clock would pass the cycle limit."""
    shift = skip * d
    first_send = int(head.stats[K.ST_SEND_MIN]) + send_step(kernel, shift)   # int: no wrap
    if first_send <= last_parked_send(kernel, two, skip - 1, d):
        return False
    pes = kernel.pes
    if head.pes[:, K.P_CLOCK].max(initial=0) + shift > kernel.cfg[K.CFG_MAX_CYCLES]:
        return False
    for field in (K.P_CLOCK, K.P_FINISH):
        pes[live, field] = head.pes[:, field] + shift
    for field in (K.P_PC, K.P_STATUS, K.P_WAIT):
        pes[live, field] = head.pes[:, field]
    pes[live, K.P_BUSY] += head.pes[:, K.P_BUSY]
    stale = one.pes[live, K.P_CLOCK].min()
    free = kernel.links[0::2]
    head_free = head.links[0::2]
    fresh = head_free > stale
    free[fresh] = head_free[fresh] + shift
    kernel.links[1::2] += head.links[1::2]
    for field in (K.ST_INSTRUCTIONS, K.ST_MESSAGES):
        kernel.stats[field] += head.stats[field]
    add_marks(kernel.marks, head.marks, shift)
    return True


def add_marks(marks: np.ndarray, head: np.ndarray, shift: int) -> None:
    """Merge the head's mark records (cycles `shift` early) into `marks`."""
    k = np.flatnonzero(head[:, K.M_COUNT] > 0)
    before = marks[k, K.M_COUNT] > 0
    first, last = head[k, K.M_FIRST] + shift, head[k, K.M_LAST] + shift
    marks[k, K.M_FIRST] = np.where(before, np.minimum(marks[k, K.M_FIRST], first), first)
    marks[k, K.M_LAST] = np.where(before, np.maximum(marks[k, K.M_LAST], last), last)
    marks[k, K.M_COUNT] += head[k, K.M_COUNT]
