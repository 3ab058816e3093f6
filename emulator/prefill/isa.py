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
VEC_MASK = 9          # d = a where key <= query else -inf (causal; imm0 query0, imm1 key0)
COLLECTIVE = 10       # func: reduce-scatter / all-gather / wait across cores
OPCODE_NAMES = ("dma_copy", "dma_gather", "load_stationary", "multiply_moving", "activate",
                "tensor_tensor", "scalar_tensor_tensor", "tensor_scalar", "tensor_reduce",
                "causal_mask", "collective")

# ACTIVATE functions.
F_IDENT, F_EXP, F_SILU, F_SQUARE, F_RSQRT, F_RECIP = 0, 1, 2, 3, 4, 5
ACT_NAMES = ("identity", "exp", "silu", "square", "rsqrt", "reciprocal")
# Vector ALU operators.
A_ADD, A_SUB, A_MUL, A_MAX, A_DIV, A_BYPASS = 0, 1, 2, 3, 4, 5
ALU_NAMES = ("add", "subtract", "multiply", "max", "divide", "bypass")
# COLLECTIVE functions.
C_REDUCE_SCATTER, C_ALL_GATHER, C_WAIT = 0, 1, 2
COLLECTIVE_NAMES = ("reduce_scatter", "all_gather", "wait")

# Flags.
FLAG_ACC = 1          # MULTIPLY_MOVING accumulates into d instead of overwriting it
FLAG_TRANSPOSE = 2    # DMA_COPY writes a.T
FLAG_MODEL = 4        # MULTIPLY_MOVING does model arithmetic (counted in FLOPs)

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
class Program:
    """A lowered instruction stream with its tensor and operator tables."""

    instr: np.ndarray
    tensors: list[TensorInfo]
    ops: list[OpInfo]
    cores: list[int]                   # core ids present in the stream (simulated cores)
    core_weight: dict = field(default_factory=dict)   # core id -> cores it stands for

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


class Builder:
    """Appends batches of instructions; every batch is built with numpy broadcasting."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.count = 0
        self.tensors: list[TensorInfo] = []
        self.ops: list[OpInfo] = []
        self.op_id = -1

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
        rec = np.zeros(n, INSTR_DTYPE)
        rec["op"], rec["engine"], rec["core"], rec["op_id"] = op, engine, core, self.op_id
        rec["cost"], rec["lat"], rec["func"], rec["func2"] = cost, lat, func, func2
        rec["flags"], rec["work"] = flags, work
        rec["imm"][:, 0], rec["imm"][:, 1] = imm0, imm1
        rec["dep"] = -1
        if len(deps) > MAX_DEPS:
            raise ValueError(f"at most {MAX_DEPS} dependencies per instruction")
        for slot, dep in enumerate(deps):
            rec["dep"][:, slot] = dep
        rec["v"][:, :, 0] = -1
        for slot, view in enumerate((d, a, b, s)):
            if view is not None:
                for k in range(5):
                    rec["v"][:, slot, k] = view[k]
        index = self.count + np.arange(n, dtype=np.int64)
        if np.any(rec["dep"] >= index[:, None]):
            raise ValueError("an instruction may only depend on earlier instructions")
        self.chunks.append(rec)
        self.count += n
        return index

    def one(self, *args, **kwargs) -> int:
        """Append a single instruction; return its index."""
        return int(self.emit(1, *args, **kwargs)[0])

    def program(self, cores, core_weight=None) -> Program:
        """The finished Program."""
        instr = np.concatenate(self.chunks) if self.chunks else np.zeros(0, INSTR_DTYPE)
        weight = core_weight or {c: 1 for c in cores}
        return Program(instr, self.tensors, self.ops, list(cores), weight)
