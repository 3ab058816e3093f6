"""`verify(program, hw)`: the hardware rules an instruction stream must obey, checked vectorised.

- dependencies point to earlier instructions;
- every view lies inside its tensor; SBUF/PSUM views span at most `sbuf_partitions` rows;
- LoadStationary reads SBUF, [K, M] with K <= pe_rows and M <= pe_cols;
- MultiplyMoving reads an SBUF moving tile [K, N] with the K of its core's current
  stationary and N <= moving_free_max, and writes [M, N] into one PSUM bank (N fp32 <=
  psum_bank_fp32 per partition);
- DMA moves between HBM and SBUF (or HBM and HBM);
- Scalar and Vector instructions read and write SBUF or PSUM only.

Returns a list of problems (empty when the stream is valid); tests assert it is empty for
every lowered program.
"""

import numpy as np

from emulator.prefill import instructions as instr

SPACES = {"hbm": 0, "sbuf": 1, "psum": 2}


def verify(program: instr.InstructionStream, hw) -> list[str]:
    """Problems of `program` on chip `hw` (see module docstring)."""
    code = program.instr
    if len(code) == 0:
        return []
    problems = []
    own = np.arange(len(code))[:, None]
    if np.any(code["dep"] >= own):
        problems.append("a dependency points forwards")
    space, rows, cols = _tensor_table(program)
    v = code["v"].astype(np.int64)
    used = v[:, :, 0] >= 0
    t = np.where(used, v[:, :, 0], 0)
    inside = (v[:, :, 1] + v[:, :, 2] <= rows[t]) & (v[:, :, 3] + v[:, :, 4] <= cols[t])
    _flag(problems, used & ~inside, code, "view outside its tensor")
    on_chip = used & (space[t] > 0)
    _flag(problems, on_chip & (v[:, :, 2] > hw.sbuf_partitions), code,
          "SBUF/PSUM view spans too many partitions")
    op = code["op"]
    ls, mm = op == instr.LOAD_STATIONARY, op == instr.MULTIPLY_MOVING
    a, d = v[:, instr.A], v[:, instr.D]
    _flag(problems, ls & ((a[:, 2] > hw.pe_rows) | (a[:, 4] > hw.pe_cols)), code,
          "stationary tile larger than the array")
    _flag(problems, (ls | mm) & (space[t[:, instr.A]] != SPACES["sbuf"]), code,
          "matmul operand not in SBUF")
    _flag(problems, mm & ((a[:, 2] > hw.pe_rows) | (a[:, 4] > hw.moving_free_max)), code,
          "moving tile too large")
    _flag(problems, mm & ((space[t[:, instr.D]] != SPACES["psum"]) |
                          (d[:, 4] > hw.psum_bank_fp32)), code, "matmul output not one PSUM bank")
    stat = _current_stationary(code)
    k_match = stat >= 0
    k_match[mm] &= a[mm, 2] == a[np.maximum(stat[mm], 0), 2]
    m_match = d[:, 2] == a[np.maximum(stat, 0), 4]
    _flag(problems, mm & ~(k_match & m_match), code, "matmul shapes disagree with the stationary")
    dma = code["engine"] == instr.DMA
    _flag(problems, dma & used[:, instr.D] & (space[t[:, instr.D]] == SPACES["psum"]), code,
          "DMA into PSUM")
    compute = (code["engine"] == instr.ACT) | (code["engine"] == instr.DVE)
    _flag(problems, compute[:, None] & used & (space[t] == SPACES["hbm"]), code,
          "Scalar/Vector instruction touches HBM")
    return problems


def _tensor_table(program):
    """(space code, rows, cols) arrays indexed by tensor id."""
    space = np.array([SPACES[x.space] for x in program.tensors] or [0])
    rows = np.array([x.rows for x in program.tensors] or [0])
    cols = np.array([x.cols for x in program.tensors] or [0])
    return space, rows, cols


def _current_stationary(rows) -> np.ndarray:
    """For every instruction, the index of the last LoadStationary of its core (-1: none)."""
    current = np.full(len(rows), -1, np.int64)
    for core in np.unique(rows["core"]):
        pos = np.flatnonzero((rows["core"] == core) & (rows["engine"] == instr.PE))
        ls_here = np.where(rows["op"][pos] == instr.LOAD_STATIONARY, pos, -1)
        current[pos] = np.maximum.accumulate(ls_here)
    return current


def _flag(problems: list, bad, rows, what: str) -> None:
    """Append one message for a rule if any instruction (or view) breaks it."""
    bad = np.asarray(bad)
    if bad.ndim > 1:
        bad = bad.any(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        problems.append(f"{what}: {int(bad.sum())} instructions, first #{first} "
                        f"({instr.OPCODE_NAMES[int(rows['op'][first])]})")
