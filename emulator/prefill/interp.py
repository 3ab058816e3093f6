"""Functional execution of a prefill instruction stream: the values each instruction computes.

Rows run one after another in stream order (a valid sequential order, emulator/prefill/isa.py).
Every tensor holds float32 values; a write rounds to the tensor's storage dtype (bf16/fp16
via compiler.numerics), so bf16 operands reach TensorE rounded and PSUM accumulates in fp32.
Timing is not computed here (engine_model.py); this module only gives values.
"""

import numpy as np

from compiler.numerics import round_to
from emulator.prefill import isa

_ALU = {
    isa.A_ADD: np.add, isa.A_SUB: np.subtract, isa.A_MUL: np.multiply,
    isa.A_MAX: np.maximum, isa.A_DIV: np.divide, isa.A_BYPASS: lambda x, y: x,
}


def _silu(x):
    with np.errstate(over="ignore"):
        return x / (np.float32(1.0) + np.exp(-x))


def _rsqrt(x):
    return np.float32(1.0) / np.sqrt(x)


_ACT = {
    isa.F_IDENT: lambda x: x, isa.F_EXP: np.exp, isa.F_SILU: _silu,
    isa.F_SQUARE: np.square, isa.F_RSQRT: _rsqrt,
    isa.F_RECIP: lambda x: np.float32(1.0) / x,
}


class Machine:
    """Tensor storage plus the per-core stationary registers."""

    def __init__(self, program: isa.Program, inputs: dict):
        self.program = program
        self.data = [self._init(t, inputs) for t in program.tensors]
        self.stationary: dict[int, np.ndarray] = {}

    @staticmethod
    def _init(info: isa.TensorInfo, inputs: dict) -> np.ndarray:
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
    src = m.view(rec["v"][isa.A])
    m.write(rec["v"][isa.D], src.T if rec["flags"] & isa.FLAG_TRANSPOSE else src)


def _dma_gather(m: Machine, rec):
    a, b = rec["v"][isa.A], rec["v"][isa.B]
    ids = m.view(b)[0].astype(np.int64)
    table = m.data[int(a[0])]
    rows = table[ids][:, int(a[3]):int(a[3]) + int(a[4])]
    m.write(rec["v"][isa.D], rows.T)


def _load_stationary(m: Machine, rec):
    m.stationary[int(rec["core"])] = m.view(rec["v"][isa.A]).copy()


def _multiply_moving(m: Machine, rec):
    stat = m.stationary[int(rec["core"])]
    moving = m.view(rec["v"][isa.A])
    product = stat.T.astype(np.float32) @ moving.astype(np.float32)
    dst = rec["v"][isa.D]
    if rec["flags"] & isa.FLAG_ACC:
        product = m.view(dst) + product
    m.write(dst, product)


def _activate(m: Machine, rec):
    x = m.view(rec["v"][isa.A]) * np.float32(rec["imm"][0])
    x = x + m.column(rec["v"][isa.B], rec["imm"][1])
    with np.errstate(over="ignore"):
        y = _ACT[int(rec["func"])](x).astype(np.float32)
    if rec["v"][isa.S][0] >= 0:
        m.write(rec["v"][isa.S], y.sum(axis=1, keepdims=True))
    m.write(rec["v"][isa.D], y)


def _tensor_tensor(m: Machine, rec):
    f = _ALU[int(rec["func"])]
    m.write(rec["v"][isa.D], f(m.view(rec["v"][isa.A]), m.view(rec["v"][isa.B])))


def _scalar_tensor_tensor(m: Machine, rec):
    first = _ALU[int(rec["func"])](m.view(rec["v"][isa.A]),
                                   m.column(rec["v"][isa.S], rec["imm"][0]))
    m.write(rec["v"][isa.D], _ALU[int(rec["func2"])](first, m.view(rec["v"][isa.B])))


def _tensor_scalar(m: Machine, rec):
    value = _ALU[int(rec["func"])](m.view(rec["v"][isa.A]),
                                   m.column(rec["v"][isa.S], rec["imm"][0]))
    m.write(rec["v"][isa.D], value)


def _tensor_reduce(m: Machine, rec):
    x = m.view(rec["v"][isa.A])
    reduce = {isa.A_ADD: np.sum, isa.A_MAX: np.max}[int(rec["func"])]
    m.write(rec["v"][isa.D], reduce(x, axis=1, keepdims=True))


def _causal_mask(m: Machine, rec):
    x = m.view(rec["v"][isa.A])
    query = int(rec["imm"][0]) + np.arange(x.shape[0])[:, None]
    key = int(rec["imm"][1]) + np.arange(x.shape[1])[None, :]
    m.write(rec["v"][isa.D], np.where(key <= query, x, np.float32(-np.inf)))


def _collective(m: Machine, rec):
    if int(rec["func"]) != isa.C_REDUCE_SCATTER:
        return
    a = rec["v"][isa.A]
    total = sum(m.view((int(a[0]) + i, *a[1:])) for i in range(int(rec["imm"][0])))
    m.write(rec["v"][isa.D], total)


_HANDLERS = {
    isa.DMA_COPY: _dma_copy, isa.DMA_GATHER: _dma_gather,
    isa.LOAD_STATIONARY: _load_stationary, isa.MULTIPLY_MOVING: _multiply_moving,
    isa.ACTIVATE: _activate, isa.VEC_TT: _tensor_tensor, isa.VEC_STT: _scalar_tensor_tensor,
    isa.VEC_TS: _tensor_scalar, isa.VEC_REDUCE: _tensor_reduce, isa.VEC_MASK: _causal_mask,
    isa.COLLECTIVE: _collective,
}


def execute(program: isa.Program, inputs: dict) -> Machine:
    """Run every instruction of `program`; `inputs` binds tensor names to initial values."""
    machine = Machine(program, inputs)
    for rec in program.instr:
        machine.step(rec)
    return machine
