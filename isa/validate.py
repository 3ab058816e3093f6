"""Static checks of a Program against a mesh, shared by both engines before they run.

Problems a user's program or compiler can cause (wrong mesh size, SRAM budget exceeded,
bad opcode, operand referencing a missing parameter, `mark` id that is not an immediate
in 0..num_marks-1) raise `ConfigError` or `FitError`.
"""

import numpy as np

from emulator.hw.dtypes import BYTES as DTYPE_BYTES
from emulator.hw.errors import ConfigError, FitError
from emulator.hw.mesh import MeshConfig
from emulator.limits import check_memory
from isa.opcodes import (
    MODE_IMM,
    MODE_PARAM,
    MODE_REG,
    NUM_REGS,
    NUM_SLOTS,
    REPEATABLE_OPS,
    SLOT_DST,
    Op,
)
from isa.program import Program

# Host bytes per PE of an engine run besides the SRAM image: the PE state rows, registers,
# four links with two counters each, router tables and FIFO heads of every color (both
# engines keep int64 rows; measured: the Numba engine's KernelRun holds about 600 B per PE
# on a 24-color program, the reference interpreter about the same in numpy arrays).
RUN_BYTES_PER_PE = 1024
RUN_BYTES_PER_COLOR = 64


def program_bytes_per_pe(num_params: int, num_colors: int) -> int:
    """Host bytes one PE of an assembled program needs while it is built: region index,
    parameter row (int32) and router tables (uint8 per color, rx and tx), twice (the
    assembler's tables and the Program's copies)."""
    return 2 * (4 + 4 * num_params + 2 * num_colors)


def run_memory(program: Program, functional: bool) -> int:
    """Host bytes an engine run of `program` needs: per-PE state, and in functional mode the
    float32 SRAM image and its initial copy."""
    per_pe = RUN_BYTES_PER_PE + RUN_BYTES_PER_COLOR * program.num_colors
    if functional:
        per_pe += 2 * 4 * program.sram_words
    return program.num_pes * per_pe


def check_run_memory(program: Program, functional: bool, engine: str) -> None:
    """ResourceError when the run's arrays would exceed the host memory limit."""
    mode = "functional" if functional else "timing-only"
    check_memory(run_memory(program, functional),
                 f"{program.source}: a {mode} {engine} run on {program.width}x"
                 f"{program.height} PEs")


def validate_program(program: Program, mesh: MeshConfig, columns: tuple | None = None
                     ) -> None:
    """Raise if `program` cannot run on `mesh` (dimensions, SRAM, colors, encoding).
    `columns`: the code's op, modes and operands [N, 8] as contiguous arrays, if the
    caller has them (a wafer's code is then not read again)."""
    where = program.source
    if (program.width, program.height) != (mesh.width, mesh.height):
        raise ConfigError(f"{where}: program is for a {program.width}x{program.height} mesh "
                          f"but the hardware is {mesh.width}x{mesh.height}")
    if program.dtype not in DTYPE_BYTES:
        raise ConfigError(f"{where}: dtype '{program.dtype}' is not one of fp32, fp16, bf16")
    need = program.sram_bytes_needed or program.sram_words * DTYPE_BYTES[program.dtype]
    if need > mesh.sram_bytes:
        raise FitError(f"{where}: program needs {need} bytes of SRAM per PE "
                       f"({program.sram_words} {program.dtype} elements), "
                       f"PE has {mesh.sram_bytes} bytes")
    if program.num_colors > mesh.num_colors:
        raise ConfigError(f"{where}: program routes {program.num_colors} colors, "
                          f"hardware has {mesh.num_colors}")
    _check_arrays(program)
    _check_code(program, columns)


def _check_arrays(program: Program) -> None:
    where, n = program.source, program.num_pes
    shapes = {"pe_region": (n,),
              "route_rx": (n, program.num_colors), "route_tx": (n, program.num_colors)}
    for name, shape in shapes.items():
        if getattr(program, name).shape != shape:
            raise ConfigError(f"{where}: array '{name}' has shape "
                              f"{getattr(program, name).shape}, expected {shape}")
    regions = len(program.region_start)
    if program.pe_region.size and (program.pe_region.max() >= regions
                                   or program.pe_region.min() < -1):
        raise ConfigError(f"{where}: pe_region refers to a region outside 0..{regions - 1}")
    check_param_table(program)


def check_param_table(program: Program) -> None:
    """The factored parameters are well formed: param_rows has at least one row and
    every PE's param_index names one of them (ConfigError naming the program)."""
    where, rows = program.source, program.param_rows
    if program.param_index.shape != (program.num_pes,):
        raise ConfigError(f"{where}: array 'param_index' has shape "
                          f"{program.param_index.shape}, expected ({program.num_pes},)")
    if rows.ndim != 2 or len(rows) == 0:
        raise ConfigError(f"{where}: array 'param_rows' has shape {rows.shape}, expected "
                          f"(rows >= 1, parameters)")
    index = program.param_index
    if index.size and (index.min() < 0 or index.max() >= len(rows)):
        raise ConfigError(f"{where}: param_index refers to a row outside 0..{len(rows) - 1}")


def _check_code(program: Program, columns: tuple | None) -> None:
    code = program.code
    if code.size == 0:
        return
    fields = _Fields(code, columns)
    bad = ~np.isin(fields.op, [int(op) for op in Op])
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(f"{program.source}: instruction {i} (line {code['line'][i]}) has "
                          f"unknown opcode {code['op'][i]}")
    _check_registers(program, fields)
    _check_marks(program, fields)
    _check_params(program, fields)
    _check_repeats(program, fields)


def _check_repeats(program: Program, fields: "_Fields") -> None:
    """Every `rep` is followed, in its region, by a vector op or reduction (its body)."""
    reps = np.flatnonzero(fields.op == int(Op.REP))
    if not reps.size:
        return
    starts = np.asarray(program.region_start, np.int64)
    order = np.argsort(starts, kind="stable")
    ends = np.maximum.accumulate((starts + program.region_len)[order])   # regions by start
    end = ends[np.searchsorted(starts[order], reps, side="right") - 1]
    body = np.minimum(reps + 1, len(fields.op) - 1)
    ok = (reps + 1 < end) & np.isin(fields.op[body],
                                             [int(op) for op in REPEATABLE_OPS])
    if not ok.all():
        i = int(reps[np.argmin(ok)])
        raise ConfigError(f"{program.source}: instruction {i} (line {program.code['line'][i]})"
                          f" is a rep not followed, in its region, by a vector op or "
                          f"reduction to repeat")


class _Fields:
    """Contiguous copies of the code's columns (a structured array's fields are strided,
    so slot-by-slot checks over a whole wafer's code read them once)."""

    def __init__(self, code: np.ndarray, columns: tuple | None = None):
        if columns is None:
            columns = (code["op"], code["modes"], code["a"])
        self.op, modes, self.a = (np.ascontiguousarray(c) for c in columns[:3])
        # modes as little-endian bytes: byte k holds operand k's MODE_BITS (8) mode bits
        self.mode_bytes = np.ascontiguousarray(modes, "<i8").view(np.uint8).reshape(
            len(code), NUM_SLOTS)

    def kind(self, slot: int) -> np.ndarray:
        """uint8 [instructions]: addressing mode kind of operand `slot`."""
        return self.mode_bytes[:, slot] & 0x3


def _check_params(program: Program, fields: _Fields) -> None:
    """Parameter operands `%pK` name a parameter of the program."""
    code, num_params = program.code, program.num_params
    for slot in range(NUM_SLOTS):
        bad = (fields.kind(slot) == MODE_PARAM) & (fields.a[:, slot] >= num_params)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"{program.source}: instruction {i} (line {code['line'][i]}) "
                              f"uses parameter %p{code['a'][i, slot]} but the program has "
                              f"{num_params}")


def _check_registers(program: Program, fields: _Fields) -> None:
    """Register operands (movr/addr/djnz targets and register-relative slots) in r0..r7."""
    where, code = program.source, program.code
    writes = np.isin(fields.op, [int(Op.MOVR), int(Op.ADDR), int(Op.DJNZ), int(Op.LDR)])
    target = fields.a[:, SLOT_DST]
    bad = writes & ((target < 0) | (target >= NUM_REGS))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"{where}: instruction {i} (line {code['line'][i]}) names register "
                          f"r{target[i]}; registers are r0..r{NUM_REGS - 1}")
    for slot in range(NUM_SLOTS):
        bad = fields.kind(slot) > MODE_REG
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"{where}: instruction {i} (line {code['line'][i]}) has an "
                              f"unknown addressing mode in operand {slot}")


def _check_marks(program: Program, fields: _Fields) -> None:
    """`mark` ids: immediates in 0..num_marks-1 (Program.mark_names)."""
    where, code = program.source, program.code
    marks = fields.op == int(Op.MARK)
    if not marks.any():
        return
    bad = marks & (fields.kind(SLOT_DST) != MODE_IMM)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"{where}: instruction {i} (line {code['line'][i]}) is a mark "
                          f"whose id is not an immediate")
    ids = fields.a[:, SLOT_DST]
    bad = marks & ((ids < 0) | (ids >= program.num_marks))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"{where}: instruction {i} (line {code['line'][i]}) records mark "
                          f"id {ids[i]} but the program has {program.num_marks} mark(s)"
                          + (f" (ids 0..{program.num_marks - 1})" if program.num_marks else ""))


def run_sram(program: Program, sram, in_place: bool = False) -> np.ndarray:
    """The SRAM a functional run works on (both engines): the program's initial contents
    when `sram` is None, else a float32 copy of `sram`, or with `in_place` the array
    `sram` itself, which the run then updates (it must be float32, C-contiguous and
    writeable; a run that faults leaves it holding whatever the run wrote before the
    fault). ConfigError if the shape is not [W*H, sram_words]."""
    expected = (program.num_pes, program.sram_words)
    if sram is None:
        return program.initial_sram()
    if in_place:
        if not (isinstance(sram, np.ndarray) and sram.dtype == np.float32
                and sram.flags.c_contiguous and sram.flags.writeable):
            raise ConfigError(f"{program.source}: an in-place run needs the SRAM as a "
                              f"writeable C-contiguous float32 numpy array")
        memory = sram
    else:
        memory = np.array(sram, np.float32, copy=True, order="C")
    if memory.shape != expected:
        raise ConfigError(f"{program.source}: initial SRAM has shape {memory.shape}, "
                          f"expected {expected}")
    return memory
