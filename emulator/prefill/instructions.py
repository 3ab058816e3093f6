"""The prefill instruction stream: one flat structured numpy array, one row per instruction.

An instruction names its engine queue (`engine` on `core`), its opcode, its cost in TensorE
cycles (computed at lowering time from the preset, emulator/prefill/costs.py), a completion
latency that does not occupy the queue (DMA), up to `MAX_DEPS` producer instructions it waits
for (indices into the same array, always smaller than its own index, -1 for none) and, for
functional execution, up to four operand views `(tensor, row0, rows, col0, cols)` into the
program's tensor table. Stream order is a valid sequential execution order: running the rows
one after another gives the values, and every engine queue is in order in stream order.

Views: slot 0 is the destination `d`, slot 1 the first input `a`, slot 2 the second input
`b`, slot 3 an auxiliary per-partition column `s`. Tensor -1 means "unused".
"""

from dataclasses import dataclass, field

import numpy as np

# Engines of one NeuronCore, plus the chip-level collective queue.
DMA, PE, ACT, DVE, CC = 0, 1, 2, 3, 4
ENGINE_NAMES = ("dma", "tensor", "scalar", "vector", "collective")
ENGINES_PER_CORE = 4

# Opcodes.
DMA_COPY = 0          # d = a (HBM <-> SBUF), transposed when FLAG_TRANSPOSE
DMA_GATHER = 1        # d = table[a rows by token ids in b].T  (embedding gather + transpose)
LOAD_STATIONARY = 2   # stationary register = a [K, M]
MULTIPLY_MOVING = 3   # d[M, N] (+)= stationary.T @ a[K, N]  (fp32 in PSUM)
ACTIVATE = 4          # d = func(a * imm0 + bias); bias = b column or imm1; s += row sums
VEC_TT = 5            # d = a func b                        (elementwise, two tensors)
VEC_STT = 6           # d = (a func s-column) func2 b       (scalar_tensor_tensor)
VEC_TS = 7            # d = a func (s column or imm0)       (tensor_scalar)
VEC_REDUCE = 8        # d[:, 0] = reduce_func over the free axis of a
VEC_MASK = 9          # d = a where key <= query (and key > query - work when work > 0, a
                      # sliding window) else -inf (-1e30 with a window); imm0 query0, imm1 key0
COLLECTIVE = 10       # func: reduce-scatter / all-gather / wait across cores
VEC_TOPK = 11         # d = the imm0 largest of a per partition (descending; ties: lower
                      # index first), b = their indices (nisa.max8 + nc_find_index8 passes)
DMA_ROUTE = 12        # MoE routing compaction (module docstring of emulator/prefill/moe.py)
OPCODE_NAMES = ("dma_copy", "dma_gather", "load_stationary", "multiply_moving", "activate",
                "tensor_tensor", "scalar_tensor_tensor", "tensor_scalar", "tensor_reduce",
                "causal_mask", "collective", "topk", "dma_route")

# ACTIVATE functions.
F_IDENT, F_EXP, F_SILU, F_SQUARE, F_RSQRT, F_RECIP, F_SIGMOID = 0, 1, 2, 3, 4, 5, 6
ACT_NAMES = ("identity", "exp", "silu", "square", "rsqrt", "reciprocal", "sigmoid")
# Vector ALU operators.
A_ADD, A_SUB, A_MUL, A_MAX, A_DIV, A_BYPASS, A_MIN = 0, 1, 2, 3, 4, 5, 6
ALU_NAMES = ("add", "subtract", "multiply", "max", "divide", "bypass", "min")
# COLLECTIVE functions. An all-to-all moves data only between cores' shares of shared HBM
# tensors (no values change); its combine form sums partial tensors like a reduce-scatter.
C_REDUCE_SCATTER, C_ALL_GATHER, C_WAIT, C_ALL_TO_ALL, C_ALL_TO_ALL_SUM = 0, 1, 2, 3, 4
COLLECTIVE_NAMES = ("reduce_scatter", "all_gather", "wait", "all_to_all", "all_to_all_sum")

# Flags.
FLAG_ACC = 1          # MULTIPLY_MOVING accumulates into d instead of overwriting it
FLAG_TRANSPOSE = 2    # DMA_COPY writes a.T
FLAG_MODEL = 4        # MULTIPLY_MOVING does model arithmetic (counted in FLOPs)
FLAG_BROADCAST = 8    # DMA_COPY repeats a's one row over d's rows (a partition broadcast)
FLAG_COLUMNS = 16     # DMA_GATHER: d[:, j] = a's rows at column ids[j] (ids: row view b)
FLAG_SCATTER = 32     # DMA_COPY: d's rows at column ids[j] (ids: row view b) += a[:, j]
FLAG_ZERO = 64        # DMA_COPY: d = 0 (a memset; a unused)

MAX_DEPS = 4
D, A, B, S = 0, 1, 2, 3   # view slots

INSTR_DTYPE = np.dtype([
    ("op", np.uint8), ("engine", np.uint8), ("func", np.uint8), ("func2", np.uint8),
    ("flags", np.uint16), ("core", np.int16), ("op_id", np.int32),
    ("cost", np.int32),            # TensorE cycles the instruction occupies its queue
    ("lat", np.int32),             # extra TensorE cycles until its result is usable
    ("dep", np.int32, (MAX_DEPS,)),
    ("work", np.int64),            # bytes moved (DMA, collective) or model FLOPs (matmul)
    ("imm", np.float32, (2,)),
    ("v", np.int32, (4, 5)),       # views: (tensor, row0, rows, col0, cols)
])


@dataclass
class TensorInfo:
    """One tensor of the program: a 2-D array in HBM, SBUF or PSUM (of one core)."""

    name: str
    rows: int
    cols: int
    dtype: str            # storage dtype: fp32, bf16, fp16 (values are rounded on write)
    space: str            # hbm, sbuf, psum
    core: int = -1        # owning core for sbuf/psum tensors, -1 for shared HBM


@dataclass
class OpInfo:
    """One lowered operator (a row of the per-op report)."""

    name: str
    layer: int            # -1 for operators outside the decoder layers
    flops: float = 0.0    # model FLOPs of the whole operator (all cores)
    hbm_bytes: float = 0.0  # bytes the operator must move to or from HBM at least


@dataclass
class InstructionStream:
    """A lowered instruction stream with its tensor and operator tables."""

    instr: np.ndarray
    tensors: list[TensorInfo]
    ops: list[OpInfo]
    cores: list[int]                   # core ids present in the stream (simulated cores)
    core_weight: dict = field(default_factory=dict)   # core id -> cores it stands for
    # Memoised (timing-only) form, docs/prefill.md "Host speed": rows (start, length,
    # repeats) of loop bodies stored once and run `repeats` times; and
    # layer_plan = (layer start, layer length, layers, operators per layer): the stored
    # range [start, start + length) is decoder layer 1, run for layers 1 .. layers-1.
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    layer_plan: tuple | None = None

    def instances(self, layers: bool = True) -> np.ndarray:
        """How many times each stored instruction runs (segment repeats x layers; without
        `layers`, the layer template counts once)."""
        count = np.ones(len(self.instr), np.int64)
        for s0, ln, reps in self.segments:
            count[s0:s0 + ln] = reps
        if layers and self.layer_plan is not None:
            t0, tlen, layers, _ = self.layer_plan
            count[t0:t0 + tlen] *= max(1, layers - 1)
        return count

    def virtual_length(self) -> int:
        """Instructions of the written-out stream this program stands for."""
        return int(self.instances().sum())

    def __len__(self) -> int:
        return len(self.instr)

    def queue_ids(self) -> np.ndarray:
        """Queue index of every instruction: core slot * 4 + engine, collectives last."""
        slot = np.zeros(max(self.cores) + 2, np.int32)
        slot[self.cores] = np.arange(len(self.cores))
        core = self.instr["core"].astype(np.int64)
        queue = slot[np.maximum(core, 0)] * ENGINES_PER_CORE + self.instr["engine"]
        collective = self.instr["engine"] == CC
        queue[collective] = len(self.cores) * ENGINES_PER_CORE
        return queue.astype(np.int32)

    @property
    def num_queues(self) -> int:
        """Engine queues: four per simulated core plus the collective queue."""
        return len(self.cores) * ENGINES_PER_CORE + 1


_VIEW_NAMES = tuple(tuple(f"v{slot}{k}" for k in range(5)) for slot in range(4))
_SCALAR_FIELDS = ("op", "engine", "func", "func2", "flags", "core", "op_id", "cost", "lat",
                  "work")


class Builder:
    """Appends batches of instructions, stored column-wise until `program()` assembles them.

    `emit` only appends Python references (scalars or arrays per field), so a batch costs a
    few microseconds whatever its size; `program` builds the structured array with one
    vectorised pass per field.
    """

    def __init__(self):
        self.count = 0
        self.tensors: list[TensorInfo] = []
        self.ops: list[OpInfo] = []
        self.op_id = -1
        self.raw: list[tuple[int, np.ndarray]] = []      # (offset, prebuilt records)
        self.col_off: list[int] = []
        self.col_n: list[int] = []
        names = list(_SCALAR_FIELDS) + ["imm0", "imm1"] + [f"dep{i}" for i in range(MAX_DEPS)]
        names += [f"v{slot}{k}" for slot in range(4) for k in range(5)]
        self.cols: dict[str, list] = {name: [] for name in names}
        self.segments: list[tuple[int, int, int]] = []
        self.to_check: list[tuple[int, int, int]] = []   # segments added by `repeat`
        # engine -> TensorE cycles added to an instruction that depends on the instruction
        # just before it on its queue (the engine's pipeline drains; Vector overhead)
        self.dep_overhead: dict[int, int] = {}
        self.last_on_queue: dict[tuple[int, int], int] = {}

    def tensor(self, name, rows, cols, dtype, space, core=-1) -> int:
        """Register a tensor and return its id."""
        self.tensors.append(TensorInfo(name, int(rows), int(cols), dtype, space, core))
        return len(self.tensors) - 1

    def begin_op(self, name: str, layer: int = -1) -> OpInfo:
        """Start a new operator; following instructions are attributed to it."""
        self.ops.append(OpInfo(name, layer))
        self.op_id = len(self.ops) - 1
        return self.ops[-1]

    def emit(self, n, op, engine, core, cost, deps=(), lat=0, func=0, func2=0, flags=0,
             work=0, imm0=0.0, imm1=0.0, d=None, a=None, b=None, s=None) -> np.ndarray:
        """Append `n` instructions (fields broadcast to n); return their indices.

        `deps` is a sequence of at most MAX_DEPS index arrays (or ints), -1 for none; views
        are 5-tuples (tensor, row0, rows, col0, cols) of ints or arrays.
        """
        if n <= 0:
            return np.zeros(0, np.int64)
        if len(deps) > MAX_DEPS:
            raise ValueError(f"at most {MAX_DEPS} dependencies per instruction")
        if isinstance(engine, (int, np.integer)) and int(engine) in self.dep_overhead:
            cost = self._with_overhead(n, int(engine), core, cost, deps)
        self.col_off.append(self.count)
        self.col_n.append(n)
        cols = self.cols
        for name, value in zip(_SCALAR_FIELDS, (op, engine, func, func2, flags, core,
                                                self.op_id, cost, lat, work), strict=True):
            cols[name].append(value)
        cols["imm0"].append(imm0)
        cols["imm1"].append(imm1)
        for slot in range(MAX_DEPS):
            cols[f"dep{slot}"].append(deps[slot] if slot < len(deps) else -1)
        for slot, view in enumerate((d, a, b, s)):
            names = _VIEW_NAMES[slot]
            if view is None:
                cols[names[0]].append(-1)
                for k in range(1, 5):
                    cols[names[k]].append(0)
            else:
                for k in range(5):
                    cols[names[k]].append(view[k])
        index = np.arange(self.count, self.count + n, dtype=np.int64)
        self.count += n
        return index

    def _with_overhead(self, n, engine, core, cost, deps):
        """`cost` plus the engine's overhead where an instruction depends on the one just
        before it on its queue (core must be a scalar for such engines)."""
        key = (int(core), engine)
        prev = np.arange(self.count - 1, self.count + n - 1, dtype=np.int64)
        prev[0] = self.last_on_queue.get(key, -2)
        dependent = np.zeros(n, bool)
        for d in deps:
            dependent |= np.broadcast_to(np.asarray(d, np.int64), (n,)) == prev
        self.last_on_queue[key] = self.count + n - 1
        return np.asarray(cost, np.int64) + self.dep_overhead[engine] * dependent

    def one(self, *args, **kwargs) -> int:
        """Append a single instruction; return its index."""
        return int(self.emit(1, *args, **kwargs)[0])

    def append_records(self, rec: np.ndarray) -> np.ndarray:
        """Append prebuilt INSTR_DTYPE records; return their indices."""
        self.flush()                 # pending column batches never span a prebuilt chunk
        for engine in self.dep_overhead:
            mine = np.flatnonzero(rec["engine"] == engine)
            if len(mine):
                cores, last = np.unique(rec["core"][mine][::-1], return_index=True)
                for core, j in zip(cores, last, strict=True):
                    self.last_on_queue[(int(core), engine)] = self.count + int(mine[::-1][j])
        self.raw.append((self.count, rec))
        index = np.arange(self.count, self.count + len(rec), dtype=np.int64)
        self.count += len(rec)
        return index

    def flush(self) -> None:
        """Turn the pending column batches into one prebuilt chunk (cost: the pending
        instructions only)."""
        if not self.col_n:
            return
        lo = self.col_off[0]
        chunk = self._assemble_cols(lo, self.count - lo)
        self.raw.append((lo, chunk))
        self.col_off, self.col_n = [], []
        self.cols = {name: [] for name in self.cols}

    def records(self, lo: int, hi: int) -> np.ndarray:
        """A copy of instructions [lo, hi) as INSTR_DTYPE records."""
        self.flush()
        out = np.zeros(hi - lo, INSTR_DTYPE)
        for offset, rec in self.raw:
            a, b = max(lo, offset), min(hi, offset + len(rec))
            if a < b:
                out[a - lo:b - lo] = rec[a - offset:b - offset]
        return out

    def add_op_id(self, lo: int, delta: int) -> None:
        """Add `delta` to the operator id of every instruction from `lo` on."""
        self.flush()
        for offset, rec in self.raw:
            if offset + len(rec) > lo:
                rec["op_id"][max(0, lo - offset):] += delta

    def _assemble(self) -> np.ndarray:
        """The structured array of every instruction."""
        self.flush()
        out = np.zeros(self.count, INSTR_DTYPE)
        for offset, rec in self.raw:
            out[offset:offset + len(rec)] = rec
        return out

    def _assemble_cols(self, lo: int, n: int) -> np.ndarray:
        """Records [lo, lo + n) from the pending column batches (contiguous: prebuilt chunks
        flush them first)."""
        out = np.zeros(n, INSTR_DTYPE)
        ns = np.asarray(self.col_n, np.int64)
        firsts = np.cumsum(ns) - ns
        pos = np.repeat(np.asarray(self.col_off, np.int64) - firsts, ns) + np.arange(ns.sum())
        pos -= lo
        for name, values in self.cols.items():
            column = _column(values, ns, firsts)
            if name in _SCALAR_FIELDS:
                out[name][pos] = column
            elif name.startswith("imm"):
                out["imm"][pos, int(name[3])] = column
            elif name.startswith("dep"):
                out["dep"][pos, int(name[3])] = column
            else:
                out["v"][pos, int(name[1]), int(name[2])] = column
        return out

    def repeat(self, start: int, reps: int) -> None:
        """Mark instructions [start, count) as a loop body that runs `reps` times.

        The body's first instance is the stored one; the `count - start` instructions just
        before it must be an instance of the same body (same opcodes, queues, costs, and
        dependencies inside the instance), which the body's instance 0 reads as "the
        previous instance": a dependency into that range means the same slot one instance
        earlier. Later instructions that depend on the body see its last instance.
        Timing only (the values of the skipped instances are not computed).
        """
        length = self.count - start
        if reps > 1 and length > 0:
            self.segments.append((start, length, int(reps)))
            self.to_check.append((start, length, int(reps)))

    def repeat_at(self, start: int, length: int, reps: int) -> None:
        """Mark the stored body [start, start + length) as repeated `reps` times: a copy of
        a body marked by `repeat` (only those are checked when the program is built)."""
        if reps > 1 and length > 0:
            self.segments.append((start, length, int(reps)))

    def program(self, cores, core_weight=None, layer_plan=None) -> InstructionStream:
        """The finished Program (checks that every dependency points backwards)."""
        instr = self._assemble()
        own = np.arange(len(instr))[:, None]
        if np.any(instr["dep"] >= own):
            raise ValueError("an instruction may only depend on earlier instructions")
        weight = core_weight or {c: 1 for c in cores}
        segments = np.array(sorted(self.segments), np.int64).reshape(-1, 3)
        _check_segments(instr, np.array(sorted(self.to_check), np.int64).reshape(-1, 3))
        return InstructionStream(instr, self.tensors, self.ops, list(cores), weight, segments,
                       layer_plan)


def _check_segments(instr: np.ndarray, segments: np.ndarray) -> None:
    """Every repeated body equals the instance stored before it (see `Builder.repeat`)."""
    if not len(segments):
        return
    idx = np.concatenate([np.arange(s0, s0 + ln) for s0, ln, _ in segments])
    shift = np.repeat(segments[:, 1], segments[:, 1])
    start = np.repeat(segments[:, 0], segments[:, 1])
    body, prev = instr[idx], instr[idx - shift]
    same = all(np.array_equal(body[f], prev[f]) for f in
               ("op", "engine", "core", "cost", "lat", "flags", "func", "op_id"))
    inner_b = body["dep"] >= start[:, None]
    inner_p = prev["dep"] >= (start - shift)[:, None]
    same = same and np.array_equal(inner_b, inner_p) and np.array_equal(
        np.where(inner_b, body["dep"] - shift[:, None], -1), np.where(inner_p, prev["dep"], -1))
    if not same or np.any(np.diff(segments[:, 0]) < segments[:-1, 1]):
        raise AssertionError("lowering bug: a repeated body differs from the instance before it")


def _column(values: list, ns: np.ndarray, firsts: np.ndarray) -> np.ndarray:
    """One field over all column batches: scalars repeated, arrays broadcast in place."""
    is_array = [isinstance(v, np.ndarray) and v.ndim > 0 for v in values]
    base = np.asarray([0 if arr else v for v, arr in zip(values, is_array, strict=True)])
    column = np.repeat(base, ns)
    for j, arr in enumerate(is_array):
        if arr:
            column[firsts[j]:firsts[j] + ns[j]] = values[j]
    return column
