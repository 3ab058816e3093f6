"""The fast mesh engine: `run_numba`, a drop-in for `isa.interpreter.run_reference`.

The wrapper validates the program against the mesh (`isa.validate.validate_program`: mesh
dimensions, SRAM budget `sram_words * bytes(dtype) <= sram_bytes`, colors, encoding),
converts the Program to the plain arrays the kernel takes (emulator/mesh/kernels.py), runs
it, and turns the kernel's integer fault record into a `MeshFault` worded like the
reference's. Results agree with the reference exactly (cycles, per-PE times, link loads,
counters) and, in functional mode, bit for bit on SRAM. See docs/engines.md.
"""

import numpy as np

from emulator.hw.errors import ConfigError, MeshFault
from emulator.hw.mesh import MeshConfig
from emulator.mesh import kernels as K
from emulator.mesh.cut_kernels import parked_keys
from emulator.mesh.fast_forward import run_fast_forward
from emulator.mesh.input_kernels import pack_routes
from emulator.mesh.parallel import usable_jobs
from isa.opcodes import (
    MODE_BITS,
    NUM_REGS,
    NUM_SLOTS,
    PORT_E,
    PORT_N,
    PORT_NAMES,
    PORT_S,
    PORT_W,
    SLOT_COLOR,
    SLOT_DST,
    SLOT_DST_STRIDE,
    SLOT_N,
    SLOT_SRC0,
    SLOT_SRC0_STRIDE,
    SLOT_SRC1,
    SLOT_SRC1_STRIDE,
    Op,
)
from isa.program import Program, RunResult
from isa.validate import check_param_table, check_run_memory, run_sram, validate_program

PARALLEL_MIN_PES = 1 << 16   # a fork costs about as much as emulating a 256 x 256 layer

WARM_UP_MESH = (8, 6)   # mesh of the warm-up runs (PEs): the bundled tiny model fits
_WARM = False


def run_numba(program: Program, mesh: MeshConfig, sram=None, functional: bool = True,
              max_cycles: int = 10**9, fast_forward=None, in_place: bool = False,
              jobs: int | None = None) -> RunResult:
    """Run `program` on `mesh` with the Numba engine (same contract as `run_reference`).

    `sram`: optional float32 [W*H, sram_words] initial contents (default: the program's
    `.data`), copied unless `in_place`: then the run updates `sram` itself (a float32
    C-contiguous array; after a fault it holds the partial results) and returns it as
    `RunResult.sram`. Timing-only (`functional=False`) allocates no SRAM or payloads,
    returns `sram=None` and the same timing as a functional run. `fast_forward`: names of
    marks that start repeated blocks (e.g. each decoder layer's first mark); a timing-only
    run then skips the middle blocks exactly when emulator/mesh/fast_forward.py's conditions
    hold (`skipped_blocks` says how many), else runs in full. `jobs`: processes the
    fast-forward may run at once (None: one per CPU for programs of at least PARALLEL_MIN_PES
    PEs, where forking pays off, else 1); the result is the same for any number.
    """
    if fast_forward is not None and functional:
        raise ConfigError(f"{program.source}: fast-forward needs a timing-only run")
    check_run_memory(program, functional, "numba")
    kernel, skipped = KernelRun(program, mesh, sram, functional, max_cycles, in_place), None
    if fast_forward is not None:
        if jobs is None and program.num_pes < PARALLEL_MIN_PES:
            jobs = 1
        skipped = fast_forwarded(kernel, list(fast_forward), usable_jobs(jobs))
    if skipped is None:
        if kernel.started:
            kernel = KernelRun(program, mesh, sram, functional, max_cycles, in_place)
        kernel.run()
    n, pes, links, stats = program.num_pes, kernel.pes, kernel.links, kernel.stats
    finish = pes[:, K.P_FINISH].copy()
    return RunResult(cycles=int(finish.max(initial=0)), pe_finish=finish,
                     pe_busy=pes[:, K.P_BUSY].copy(),
                     link_busy=links.reshape(n, 4, 2)[:, :, 1].copy(),
                     instructions=int(stats[K.ST_INSTRUCTIONS]),
                     messages=int(stats[K.ST_MESSAGES]),
                     sram=kernel.memory if functional else None,
                     mark_first=kernel.marks[:, K.M_FIRST].copy(),
                     mark_last=kernel.marks[:, K.M_LAST].copy(),
                     mark_count=kernel.marks[:, K.M_COUNT].copy(),
                     skipped_blocks=skipped or 0)


def warm_up() -> bool:
    """Compile the engine's kernels (the first run on a machine, about a minute) or load
    them from Numba's cache (emulator/mesh/__pycache__): one functional step and one
    timing-only, fast-forwarded step of the bundled tiny model on an 8x6 mesh. Once per
    process; returns False when the kernels were already warm."""
    global _WARM
    if _WARM:
        return False
    from compiler.decode import compile_decode, layer_cuts
    from compiler.frontend import resolve_model
    from emulator.hw.mesh import load_mesh

    mesh = load_mesh("small").with_mesh(*WARM_UP_MESH)
    compiled = compile_decode(resolve_model("tiny"), mesh, "bf16")
    program = compiled.decode.for_position(0)
    run_numba(program, mesh, functional=True)
    run_numba(program, mesh, functional=False, fast_forward=layer_cuts(compiled), jobs=1)
    _WARM = True
    return True


def fast_forwarded(kernel: "KernelRun", cut_names: list, jobs: int) -> int | None:
    """run_fast_forward, with a fault counting as a failed attempt: the full run that
    follows then reports the fault exactly as it happens without fast-forwarding."""
    try:
        return run_fast_forward(kernel, cut_names, jobs)
    except MeshFault:
        return None


class KernelRun:
    """The kernel's inputs for one run and, after `run`, its outputs (`pes`, `links`,
    `stats` with e.g. the record pool's final capacity in stats[ST_PEAK_RECORDS], `marks`
    [num_marks, M_FIELDS] first cycle, last cycle, count per mark id)."""

    def __init__(self, program: Program, mesh: MeshConfig, sram, functional: bool,
                 max_cycles: int, in_place: bool = False):
        static = StaticInputs.of(program, mesh)
        check_param_table(program)   # not part of the cached static inputs
        n = program.num_pes
        self.program, self.max_cycles = program, max_cycles
        self.routes_change = static.routes_change
        self.memory = (run_sram(program, sram, in_place) if functional
                       else np.zeros((0, 0), np.float32))
        self.pes = aligned_zeros(n * K.P_FIELDS).reshape(n, K.P_FIELDS)
        self.pes[:, K.P_WAIT] = -1
        self.pes[program.pe_region < 0, K.P_STATUS] = K.HALTED
        self.pes[:, K.P_PARAM_ROW] = program.param_index
        params = np.ascontiguousarray(program.param_rows, np.int32)
        self.links = aligned_zeros(n * 8)
        self.stats = np.zeros(K.ST_SIZE, np.int64)
        self.fault = np.zeros(K.FAULT_SIZE, np.int64)
        self.marks = np.zeros((program.num_marks, K.M_FIELDS), np.int64)
        self.marks[:, K.M_FIRST:K.M_LAST + 1] = -1
        self.pools = None
        self.inputs = (*static.code, params,
                       static.routes.copy(),   # the kernel updates its copy (`route`)
                       static.edges,
                       kernel_config(program, mesh, functional, max_cycles, static.slots))

    def run(self) -> None:
        """Run the kernel to the end; raise MeshFault on a program fault."""
        if self.run_until(-1) != K.DONE:
            raise AssertionError("a run without a stop mark ended parked")

    def run_until(self, stop_mark: int) -> int:
        """Run (or resume) until the end, or until every PE still running is parked
        about to execute `mark stop_mark` (-1: never stop). Returns K.DONE or
        K.ALL_PARKED; raises MeshFault on a program fault."""
        if self.pools is None:
            pe_region, cfg = self.pe_region, self.cfg
            heap = np.empty(2 * len(pe_region), np.int64)   # main and wake heaps
            fifo = np.zeros(2 * len(pe_region) * cfg[K.CFG_SLOTS], np.int32)   # all empty
            size, *rest = K.new_pools(pe_region, cfg, heap)
            self.pools = (heap, fifo, *rest)
            self.stats[K.ST_HEAP] = size
            self.stats[[K.ST_CUR_PE, K.ST_CUR_T]] = -1
        self.cfg[K.CFG_STOP_MARK] = stop_mark
        self.stats[K.ST_PARKED_SEND_MAX] = -1   # the send keys of this call only
        self.stats[K.ST_SEND_MIN] = np.iinfo(np.int64).max
        with np.errstate(all="ignore"):   # only matters with EMU_DISABLE_JIT=1
            code, *grown = K.run_mesh(*self.inputs, self.memory, self.pes, self.links,
                                      self.stats, self.fault, self.marks, *self.pools)
        self.pools = (*self.pools[:2], *grown)
        if self.fault[K.F_CODE] != K.FAULT_NONE:
            raise MeshFault(fault_message(self.program, self.fault, self.pes,
                                          self.max_cycles))
        return code

    @property
    def static_cost(self) -> np.ndarray:
        """Per instruction: its static cost, or a negative code (static_costs)."""
        return self.inputs[4]

    @property
    def pe_region(self) -> np.ndarray:
        """int64 [P]: each PE's region (-1: idle)."""
        return self.inputs[7]

    @property
    def routes(self) -> np.ndarray:
        """The run's router tables (router_tables form; `route` updates them)."""
        return self.inputs[9]

    @property
    def cfg(self) -> np.ndarray:
        """The kernel's cfg array (kernels.CFG_* indices)."""
        return self.inputs[-1]

    @property
    def heap(self) -> np.ndarray:
        """The ready heaps: main (its first stats[ST_HEAP] entries are live), then from
        index P the wake heap (stats[ST_WAKE] entries)."""
        return self.pools[0]

    @property
    def started(self) -> bool:
        """Whether the kernel has run (its pools exist)."""
        return self.pools is not None

    def resume_parked(self) -> None:
        """Make every parked PE ready again at its clock (the heaps must be empty)."""
        count = parked_keys(self.pes, int(self.cfg[K.CFG_SHIFT]), self.heap)
        self.heap[:count].sort()   # sorted keys form a min-heap
        self.stats[K.ST_HEAP] = count
        self.stats[K.ST_PARKED] = 0


class StaticInputs:
    """The kernel inputs that do not depend on `params`: code arrays, static costs,
    regions, router tables, mesh edges, color slots. A decode step changes only the
    per-step parameters of its program, so `of` keeps the inputs of the last program it
    prepared (with a copy of the arrays they came from, if at most CACHE_BYTES) and reuses
    them when the next program has the same code, regions, routes, sizes and mesh,
    compared by content (about 1.4 MB for the 64 x 64 decode program, well under a
    millisecond, instead of about 9 ms of validation and preparation)."""

    _last: "StaticInputs | None" = None
    CACHE_BYTES = 32 << 20   # larger programs (a whole wafer) are not kept: their
    #                          preparation is small next to their run

    def __init__(self, program: Program, mesh: MeshConfig):
        columns = code_arrays(program)   # the strided code read once, not by each check
        validate_program(program, mesh, columns)
        self.key, arrays = self.identity(program, mesh)
        small = sum(a.nbytes for a in arrays) <= self.CACHE_BYTES
        self.arrays = tuple(np.array(a, order="C") for a in arrays) if small else None
        self.slots = color_slots(program)
        self.routes_change = bool((columns[0] == Op.ROUTE).any())   # `route` ops
        self.code = (*columns, static_costs(program, mesh, columns),
                     np.ascontiguousarray(program.region_start, np.int64),
                     np.ascontiguousarray(program.region_len, np.int64),
                     np.ascontiguousarray(program.pe_region, np.int64))
        self.routes = router_tables(program, self.slots)
        self.edges = mesh_edges(program.width, program.height)

    @staticmethod
    def identity(program: Program, mesh: MeshConfig) -> tuple[tuple, tuple]:
        """(everything but the arrays that validation and preparation read, those arrays)."""
        key = (mesh, program.width, program.height, program.dtype, program.sram_words,
               program.num_params, program.num_marks, program.code.dtype)
        return key, (program.code, program.region_start, program.region_len,
                     program.pe_region, program.route_rx, program.route_tx)

    def matches(self, program: Program, mesh: MeshConfig) -> bool:
        key, arrays = self.identity(program, mesh)
        return key == self.key and all(
            a.shape == b.shape and a.dtype == b.dtype
            and np.array_equal(np.ascontiguousarray(a).view(np.uint8).ravel(),
                               b.view(np.uint8).ravel())
            for a, b in zip(arrays, self.arrays, strict=True))

    @classmethod
    def of(cls, program: Program, mesh: MeshConfig) -> "StaticInputs":
        """The validated static inputs of `program` on `mesh` (raises as validate_program)."""
        last = cls._last
        if last is not None and last.matches(program, mesh):
            return last   # validation reads nothing else, so it would pass again
        cls._last = None
        inputs = cls(program, mesh)
        if inputs.arrays is not None:   # copies of the arrays, kept for `matches`
            cls._last = inputs
        return inputs


def aligned_zeros(size: int) -> np.ndarray:
    """int64 zeros starting on a 64-byte boundary (so per-PE rows share no cache line)."""
    buf = np.zeros(size + 8, np.int64)
    skip = (-buf.ctypes.data % 64) // 8
    return buf[skip:skip + size]


def code_arrays(program: Program) -> tuple:
    """(op, modes, args [N, 8], imm) as contiguous int64 / float32 arrays."""
    code = program.code
    args = np.ascontiguousarray(code["a"], np.int64).reshape(len(code), NUM_SLOTS)
    return (np.ascontiguousarray(code["op"], np.int64),
            np.ascontiguousarray(code["modes"], np.int64), args,
            np.ascontiguousarray(code["imm"], np.float32))


def static_costs(program: Program, mesh: MeshConfig, columns: tuple | None = None
                 ) -> np.ndarray:
    """int64 per instruction: o + ceil(n / w) (a transcendental: o + n * T when the preset's
    `transcendental_cycles` T > 0) for a vector op or reduction whose operands are all
    immediates and whose descriptors are inside the SRAM, else -1 (decoded and checked
    when executed). `columns`: the program's `code_arrays`, if already made."""
    code = program.code
    op, all_modes = (columns[0], columns[1]) if columns is not None else (code["op"],
                                                                          code["modes"])
    cost = np.full(len(code), -1, np.int64)
    w = mesh.simd_width(program.dtype)
    vector = np.flatnonzero(((op >= Op.VMOV) & (op <= Op.RDOT)) | (op == Op.RARGMAX))
    a, modes = code["a"][vector].astype(np.int64), all_modes[vector]
    n = a[:, SLOT_N]
    ok = (modes == 0) & (n >= 0)
    last = np.maximum(n - 1, 0)
    for addr, stride in ((SLOT_DST, SLOT_DST_STRIDE), (SLOT_SRC0, SLOT_SRC0_STRIDE),
                         (SLOT_SRC1, SLOT_SRC1_STRIDE)):
        ends = (a[:, addr], a[:, addr] + a[:, stride] * last)
        inside = np.logical_and.reduce([(e >= 0) & (e < program.sram_words) for e in ends])
        ok &= inside | (n == 0)
    ops = op[vector]
    slow = ((ops >= Op.VEXP) & (ops <= Op.VSIGMOID)) if mesh.transcendental_cycles else False
    cycles = np.where(slow, mesh.issue_overhead + n * mesh.transcendental_cycles,
                      mesh.issue_overhead + -(-n // w))
    cost[vector] = np.where(ok, cycles, -1)
    dynamic_n = (modes & ~np.int64(0xFF << (MODE_BITS * SLOT_N)) == 0) & (modes != 0)
    if dynamic_n.any():
        limit = count_limits(a[dynamic_n], program.sram_words)
        cost[vector[dynamic_n]] = np.where(limit >= 1, -2 - limit, -1)
    gemv = np.flatnonzero((op == Op.VGEMV) & (all_modes == 0))
    if len(gemv):
        cost[gemv] = gemv_costs(code["a"][gemv].astype(np.int64), program.sram_words,
                                mesh.issue_overhead, w)
    return cost


def count_limits(a: np.ndarray, words: int) -> np.ndarray:
    """For instruction rows `a` [N, 8] with immediate descriptors: the largest count L
    (capped at 2**31) such that every descriptor is inside 0..words-1 for all counts
    1..L; 0 if even one element is outside."""
    cap = np.int64(1 << 31)
    limit = np.full(len(a), cap, np.int64)
    for addr, stride in ((SLOT_DST, SLOT_DST_STRIDE), (SLOT_SRC0, SLOT_SRC0_STRIDE),
                         (SLOT_SRC1, SLOT_SRC1_STRIDE)):
        base, step = a[:, addr], a[:, stride]
        room = np.where(step > 0, (words - 1 - base) // np.maximum(step, 1),
                        np.where(step < 0, base // np.maximum(-step, 1), cap))
        inside = (base >= 0) & (base < words)
        limit = np.minimum(limit, np.where(inside, np.minimum(room + 1, cap), 0))
    return limit


def gemv_costs(a: np.ndarray, words: int, o: int, w: int) -> np.ndarray:
    """Static costs o + k * ceil(m / w) of all-immediate vgemv rows `a` [N, 8] whose
    counts are >= 0 and whose elements are all inside the SRAM, else -1."""
    m, k = a[:, SLOT_N], a[:, SLOT_COLOR]
    ok = (m >= 0) & (k >= 0)
    empty = (m == 0) | (k == 0)
    m1, k1 = np.maximum(m - 1, 0), np.maximum(k - 1, 0)
    inside = np.ones(len(a), bool)
    for addr, stride, count in ((SLOT_DST, SLOT_DST_STRIDE, m1), (SLOT_SRC1, SLOT_SRC1_STRIDE, k1)):
        for e in (a[:, addr], a[:, addr] + a[:, stride] * count):
            inside &= (e >= 0) & (e < words)
    w_end = a[:, SLOT_SRC0] + a[:, SLOT_SRC0_STRIDE] * k1
    inside &= (np.minimum(a[:, SLOT_SRC0], w_end) >= 0)
    inside &= (np.maximum(a[:, SLOT_SRC0], w_end) + m1 < words)
    ok &= inside | empty
    return np.where(ok, o + k * -(-m // w), -1)


def mesh_edges(width: int, height: int) -> np.ndarray:
    """uint8 [W*H]: the port bits (N E S W) of each router that lead off the mesh."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    edges = ((y == 0) * PORT_N | (x == width - 1) * PORT_E | (y == height - 1) * PORT_S
             | (x == 0) * PORT_W)
    return edges.astype(np.uint8).ravel()


def color_slots(program: Program) -> np.ndarray:
    """The colors a router can ever carry, in increasing order: those with an entry in the
    initial tables or set by a `route` instruction (all of them if a `route` takes its
    color from a parameter or register). Other colors get no FIFO or table entries."""
    code = program.code
    route = code["op"] == Op.ROUTE
    colors = program.num_colors
    if (((code["modes"][route] >> (MODE_BITS * SLOT_COLOR)) & 0x3) != 0).any():
        return np.arange(colors)
    used = (program.route_rx != 0).any(axis=0) | (program.route_tx != 0).any(axis=0)
    set_by_code = code["a"][route, SLOT_COLOR]
    used[set_by_code[(set_by_code >= 0) & (set_by_code < colors)]] = True
    return np.flatnonzero(used)


def router_tables(program: Program, slots: np.ndarray) -> np.ndarray:
    """uint8 [slots * P * 2]: rx and tx of each (color slot, PE) interleaved (color-major,
    kernels.slot_index), each entry in `pack_ports` form (the N E S W R bits, bit 5
    if any other bit is set)."""
    tables = np.empty(len(slots) * program.num_pes * 2, np.uint8)
    rx, tx = (np.ascontiguousarray(table) for table in (program.route_rx, program.route_tx))
    pack_routes(rx, tx, np.ascontiguousarray(slots, np.int64), tables)
    return tables


def key_shift(num_pes: int) -> int:
    """Bits of the PE index in a heap key (clock << shift | PE)."""
    return max(1, int(num_pes - 1).bit_length())


def kernel_config(program: Program, mesh: MeshConfig, functional: bool,
                  max_cycles: int, slots: np.ndarray | None = None) -> np.ndarray:
    """The kernel's cfg array (kernels.CFG_* indices). The kernel's cycle limit is
    also capped so that heap keys fit in int64 (2**(63 - shift) cycles, far beyond any
    run that finishes: 8.8e12 cycles on a 755 x 1170 wafer). `slots`: color_slots(program)
    when already known."""
    shift = key_shift(program.num_pes)
    slots = color_slots(program) if slots is None else slots
    cfg = np.zeros(K.CFG_SIZE + program.num_colors + len(slots), np.int64)
    cfg[K.CFG_SLOTS] = len(slots)
    cfg[K.CFG_SIZE:K.CFG_SIZE + program.num_colors] = -1
    cfg[K.CFG_SIZE + slots] = np.arange(len(slots))
    cfg[K.CFG_SIZE + program.num_colors:] = slots
    cfg[K.CFG_WIDTH], cfg[K.CFG_HEIGHT] = program.width, program.height
    cfg[K.CFG_COLORS], cfg[K.CFG_SRAM] = program.num_colors, program.sram_words
    cfg[K.CFG_O], cfg[K.CFG_H] = mesh.issue_overhead, mesh.hop_latency
    cfg[K.CFG_R], cfg[K.CFG_W] = mesh.ramp_latency, mesh.simd_width(program.dtype)
    cfg[K.CFG_B] = mesh.barrier_latency
    cfg[K.CFG_T] = mesh.transcendental_cycles
    cfg[K.CFG_M] = mesh.message_overhead
    cfg[K.CFG_MAX_CYCLES] = min(max_cycles, (1 << (63 - shift)) - 1)
    cfg[K.CFG_FUNCTIONAL] = int(bool(functional))
    cfg[K.CFG_LIVE] = int(np.count_nonzero(program.pe_region >= 0))
    cfg[K.CFG_SHIFT] = shift
    cfg[K.CFG_STOP_MARK] = -1
    return cfg


# --- fault messages (worded as isa/interpreter.py words them) -------------------------------


def port_list(mask: int) -> str:
    """'N|E' style names of the ports in a mask, '-' for none."""
    names = [name for bit, name in PORT_NAMES.items() if mask & bit]
    return "|".join(names) if names else "-"


def fault_message(program: Program, fault: np.ndarray, pes: np.ndarray,
                  max_cycles: int) -> str:
    """The MeshFault message for the kernel's fault record."""
    code = int(fault[K.F_CODE])
    pe, cycle = int(fault[K.F_PE]), int(fault[K.F_CYCLE])
    a, b, c, d = (int(v) for v in fault[K.F_A:K.F_A + 4])
    if code == K.FAULT_DEADLOCK:
        return deadlock_message(program, pes)
    if code == K.FAULT_UNDELIVERED:
        return (f"{program.source}: PE {xy(program, pe)}: {b} undelivered message(s) on "
                f"color {a} when the program ended")
    if code == K.FAULT_CYCLES and cycle <= max_cycles:
        limit = (1 << (63 - key_shift(program.num_pes))) - 1
        return (f"{program.source}: PE {xy(program, pe)} at cycle {cycle}: the Numba engine "
                f"supports at most {limit} cycles on a mesh of {program.num_pes} PEs")
    return f"{program.source}: PE {xy(program, pe)} at cycle {cycle}: " + fault_detail(
        program, code, a, b, c, d, int(fault[K.F_E]), max_cycles)


def fault_detail(program: Program, code: int, a: int, b: int, c: int, d: int, e: int,
                 max_cycles: int) -> str:
    """The part of a per-PE fault message after 'PE (x,y) at cycle t: '."""
    details = {
        K.FAULT_SRAM: lambda: f"SRAM access at element {a} outside "
                              f"0..{program.sram_words - 1}",
        K.FAULT_COUNT: lambda: f"negative {('element', 'column', 'batch', 'repeat')[b]} count {a}",
        K.FAULT_COLOR: lambda: f"color {a} is not defined "
                               f"(colors 0..{program.num_colors - 1})",
        K.FAULT_CYCLES: lambda: f"cycle limit {max_cycles} exceeded",
        K.FAULT_JUMP: lambda: f"jump to {a} outside the code 0..{b}",
        K.FAULT_LOOP: lambda: f"route of color {a} loops (passes {b} routers)",
        K.FAULT_RX: lambda: f"message on color {a} reaches PE {xy(program, b)} from port "
                            f"{PORT_NAMES[c]} but its route accepts {port_list(d)}",
        K.FAULT_NO_TX: lambda: f"color {a} has no route out of PE {xy(program, b)}",
        K.FAULT_OFF_MESH: lambda: f"route of color {a} leaves the mesh at PE "
                                  f"{xy(program, b)} going {PORT_NAMES[c]}",
        K.FAULT_LENGTH: lambda: f"{Op(e).name.lower()} on color {a} expects {b} wavelets "
                                f"but the message from PE {xy(program, d)} has {c}",
        K.FAULT_REGISTER: lambda: f"register r{a} does not exist (r0..r{NUM_REGS - 1})",
        K.FAULT_LDR: lambda: f"ldr at element {a}: the value is not a finite int32",
    }
    return details[code]()


def deadlock_message(program: Program, pes: np.ndarray) -> str:
    """Deadlock: up to 8 stuck PEs with what they wait for, as the reference lists them."""
    status = pes[:, K.P_STATUS]
    stuck = np.flatnonzero(status != K.HALTED)
    parts = []
    for pe in stuck[:8]:
        what = (f"waits on color {int(pes[pe, K.P_WAIT])}" if status[pe] == K.BLOCKED
                else "waits at a barrier")
        parts.append(f"PE {xy(program, pe)} {what} since cycle {int(pes[pe, K.P_CLOCK])}")
    more = f" (+{stuck.size - 8} more)" if stuck.size > 8 else ""
    halted = np.flatnonzero((status == K.HALTED) & (program.pe_region >= 0))
    note = (f"; PE {xy(program, int(halted[0]))} halted"
            if (status == K.AT_BARRIER).any() and halted.size else "")
    return f"{program.source}: deadlock: {'; '.join(parts)}{more}{note}"


def xy(program: Program, pe: int) -> str:
    """'(x,y)' of PE index `pe`."""
    x, y = program.pe_xy(int(pe))
    return f"({x},{y})"
