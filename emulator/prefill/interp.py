"""Functional execution of a prefill instruction stream: the values each instruction computes.

Rows run one after another in stream order (a valid sequential order,
emulator/prefill/instructions.py).
Every tensor holds float32 values; a write rounds to the tensor's storage dtype (bf16/fp16
via compiler.numerics), so bf16 operands reach TensorE rounded and PSUM accumulates in fp32.
Timing is not computed here (engine_model.py); this module only gives values.
"""

import numpy as np

from compiler.numerics import round_to
from emulator.prefill import instructions as instr

_ALU = {
    instr.A_ADD: np.add, instr.A_SUB: np.subtract, instr.A_MUL: np.multiply,
    instr.A_MAX: np.maximum, instr.A_DIV: np.divide, instr.A_BYPASS: lambda x, y: x,
    instr.A_MIN: np.minimum,
}


def _silu(x):
    with np.errstate(over="ignore"):
        return x / (np.float32(1.0) + np.exp(-x))


def _rsqrt(x):
    return np.float32(1.0) / np.sqrt(x)


_ACT = {
    instr.F_IDENT: lambda x: x, instr.F_EXP: np.exp, instr.F_SILU: _silu,
    instr.F_SQUARE: np.square, instr.F_RSQRT: _rsqrt,
    instr.F_RECIP: lambda x: np.float32(1.0) / x,
    instr.F_SIGMOID: lambda x: np.float32(1.0) / (np.float32(1.0) + np.exp(-x)),
}


class Machine:
    """Tensor storage plus the per-core stationary registers."""

    def __init__(self, program: instr.InstructionStream, inputs: dict):
        self.program = program
        self.data = [self._init(t, inputs) for t in program.tensors]
        self.stationary: dict[int, np.ndarray] = {}

    @staticmethod
    def _init(info: instr.TensorInfo, inputs: dict) -> np.ndarray:
        """Initial value of a tensor: a bound input, a constant, or zeros."""
        if info.name in inputs:
            value = np.asarray(inputs[info.name], np.float32).reshape(info.rows, info.cols)
            return round_to(value, info.dtype) if info.dtype != "fp32" else value.copy()
        if info.name == "const:identity":
            return np.eye(info.rows, info.cols, dtype=np.float32)
        if info.name in ("const:ones_col", "const:ones_row"):
            return np.ones((info.rows, info.cols), np.float32)
        return np.zeros((info.rows, info.cols), np.float32)

    def view(self, v) -> np.ndarray:
        """The array region named by a view (tensor, row0, rows, col0, cols)."""
        t, r0, nr, c0, nc = (int(x) for x in v)
        return self.data[t][r0:r0 + nr, c0:c0 + nc]

    def write(self, v, value) -> None:
        """Store `value` into a view, rounding to the tensor's dtype."""
        t, r0, nr, c0, nc = (int(x) for x in v)
        dtype = self.program.tensors[t].dtype
        value = np.asarray(value, np.float32)
        if dtype != "fp32":
            value = round_to(value, dtype)
        self.data[t][r0:r0 + nr, c0:c0 + nc] = value

    def column(self, v, default: float):
        """Per-partition column operand of a view, or the immediate when unused."""
        return self.view(v) if v[0] >= 0 else np.float32(default)

    def step(self, rec) -> None:
        """Execute one instruction record."""
        handler = _HANDLERS.get(int(rec["op"]))
        if handler is not None:
            handler(self, rec)


def _dma_copy(m: Machine, rec):
    if rec["flags"] & instr.FLAG_ZERO:
        m.write(rec["v"][instr.D], np.zeros(tuple(int(x) for x in rec["v"][instr.D][[2, 4]]),
                                            np.float32))
        return
    if rec["flags"] & instr.FLAG_SCATTER:
        d, b = rec["v"][instr.D], rec["v"][instr.B]
        ids = m.view(b)[0].astype(np.int64)
        t, r0, nr = int(d[0]), int(d[1]), int(d[2])
        m.data[t][r0:r0 + nr, ids] += m.view(rec["v"][instr.A])
        return
    src = m.view(rec["v"][instr.A])
    if rec["flags"] & instr.FLAG_BROADCAST:
        src = np.broadcast_to(src, (int(rec["v"][instr.D][2]), src.shape[1]))
    m.write(rec["v"][instr.D], src.T if rec["flags"] & instr.FLAG_TRANSPOSE else src)


def _dma_gather(m: Machine, rec):
    a, b = rec["v"][instr.A], rec["v"][instr.B]
    ids = m.view(b)[0].astype(np.int64)
    table = m.data[int(a[0])]
    if rec["flags"] & instr.FLAG_COLUMNS:
        m.write(rec["v"][instr.D], table[int(a[1]):int(a[1]) + int(a[2]), ids])
        return
    rows = table[ids][:, int(a[3]):int(a[3]) + int(a[4])]
    m.write(rec["v"][instr.D], rows.T)


def _load_stationary(m: Machine, rec):
    m.stationary[int(rec["core"])] = m.view(rec["v"][instr.A]).copy()


def _multiply_moving(m: Machine, rec):
    stat = m.stationary[int(rec["core"])]
    moving = m.view(rec["v"][instr.A])
    product = stat.T.astype(np.float32) @ moving.astype(np.float32)
    dst = rec["v"][instr.D]
    if rec["flags"] & instr.FLAG_ACC:
        product = m.view(dst) + product
    m.write(dst, product)


def _activate(m: Machine, rec):
    x = m.view(rec["v"][instr.A]) * np.float32(rec["imm"][0])
    x = x + m.column(rec["v"][instr.B], rec["imm"][1])
    with np.errstate(over="ignore"):
        y = _ACT[int(rec["func"])](x).astype(np.float32)
    if rec["v"][instr.S][0] >= 0:
        m.write(rec["v"][instr.S], y.sum(axis=1, keepdims=True))
    m.write(rec["v"][instr.D], y)


def _tensor_tensor(m: Machine, rec):
    f = _ALU[int(rec["func"])]
    m.write(rec["v"][instr.D], f(m.view(rec["v"][instr.A]), m.view(rec["v"][instr.B])))


def _scalar_tensor_tensor(m: Machine, rec):
    first = _ALU[int(rec["func"])](m.view(rec["v"][instr.A]),
                                   m.column(rec["v"][instr.S], rec["imm"][0]))
    m.write(rec["v"][instr.D], _ALU[int(rec["func2"])](first, m.view(rec["v"][instr.B])))


def _tensor_scalar(m: Machine, rec):
    value = _ALU[int(rec["func"])](m.view(rec["v"][instr.A]),
                                   m.column(rec["v"][instr.S], rec["imm"][0]))
    m.write(rec["v"][instr.D], value)


def _tensor_reduce(m: Machine, rec):
    x = m.view(rec["v"][instr.A])
    reduce = {instr.A_ADD: np.sum, instr.A_MAX: np.max}[int(rec["func"])]
    m.write(rec["v"][instr.D], reduce(x, axis=1, keepdims=True))


def _causal_mask(m: Machine, rec):
    x = m.view(rec["v"][instr.A])
    query = int(rec["imm"][0]) + np.arange(x.shape[0])[:, None]
    key = int(rec["imm"][1]) + np.arange(x.shape[1])[None, :]
    window = int(rec["work"])
    keep = key <= query
    if window:       # a finite fill: a row whose visited keys are all masked so far keeps a
        keep &= key > query - window      # finite max, later rescaled away by alpha = 0
    fill = np.float32(-1e30) if window else np.float32(-np.inf)
    m.write(rec["v"][instr.D], np.where(keep, x, fill))


def _topk(m: Machine, rec):
    x = m.view(rec["v"][instr.A])
    k = int(rec["imm"][0])
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    m.write(rec["v"][instr.D], np.take_along_axis(x, order, axis=1))
    m.write(rec["v"][instr.B], order.astype(np.float32))


def _route(m: Machine, rec):
    """Experts [imm0, imm0 + imm1) of routing ids/gates [tokens, k] (views a, b): the
    (token, gate) pairs routed to each, by expert then token, into rows d / s."""
    ids = m.view(rec["v"][instr.A]).astype(np.int64)
    gates = m.view(rec["v"][instr.B])
    e0, ne = int(rec["imm"][0]), int(rec["imm"][1])
    toks, gs = [], []
    for e in range(e0, e0 + ne):
        t, slot = np.nonzero(ids == e)
        toks.append(t)
        gs.append(gates[t, slot])
    m.write(rec["v"][instr.D], np.concatenate(toks).astype(np.float32)[None, :])
    m.write(rec["v"][instr.S], np.concatenate(gs).astype(np.float32)[None, :])


def _collective(m: Machine, rec):
    if int(rec["func"]) not in (instr.C_REDUCE_SCATTER, instr.C_ALL_TO_ALL_SUM):
        return
    a = rec["v"][instr.A]
    total = sum(m.view((int(a[0]) + i, *a[1:])) for i in range(int(rec["imm"][0])))
    m.write(rec["v"][instr.D], total)


_HANDLERS = {
    instr.DMA_COPY: _dma_copy, instr.DMA_GATHER: _dma_gather,
    instr.LOAD_STATIONARY: _load_stationary, instr.MULTIPLY_MOVING: _multiply_moving,
    instr.ACTIVATE: _activate, instr.VEC_TT: _tensor_tensor, instr.VEC_STT: _scalar_tensor_tensor,
    instr.VEC_TS: _tensor_scalar, instr.VEC_REDUCE: _tensor_reduce, instr.VEC_MASK: _causal_mask,
    instr.COLLECTIVE: _collective, instr.VEC_TOPK: _topk, instr.DMA_ROUTE: _route,
}


class Incremental(Machine):
    """A Machine that runs a stream while it is being built (functional MoE prefill: the
    lowering reads the device's routing before it sizes the expert GEMMs)."""

    def __init__(self, builder: instr.Builder, inputs: dict):
        self.builder, self.inputs, self.done = builder, inputs, 0
        self.program = builder          # `tensors` grows as the lowering registers them
        self.data, self.stationary = [], {}

    def run(self) -> None:
        """Execute the instructions emitted since the last call."""
        tensors = self.builder.tensors
        self.data.extend(self._init(t, self.inputs) for t in tensors[len(self.data):])
        count = self.builder.count
        for rec in self.builder.records(self.done, count):
            self.step(rec)
        self.done = count


def execute(program: instr.InstructionStream, inputs: dict) -> Machine:
    """Run every instruction of `program`; `inputs` binds tensor names to initial values."""
    machine = Machine(program, inputs)
    for rec in program.instr:
        machine.step(rec)
    return machine
