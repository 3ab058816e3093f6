"""The program container: region code shared by many PEs plus small per-PE arrays.

A `Program` for a W x H mesh is a handful of flat numpy arrays, so a 755 x 1170 wafer needs
no Python object per PE:
- `code`: every region's instructions concatenated (`INSTR_DTYPE` rows); region r owns
  rows `region_start[r] : region_start[r] + region_len[r]`; jump targets are region-local.
- `pe_region[pe]`: the region each PE runs, or -1 for an idle PE (halted at cycle 0).
- per-PE integer parameters that operands may reference (`%pk`), factored: PE `pe`'s
  values are row `param_index[pe]` of `param_rows` (int32 [distinct rows, num_params]).
  Compiled programs have few distinct rows (1,190 for Llama-3.1-8B on 883,350 PEs), so
  neither the compiler nor the engines build the dense table; `params` materialises it
  for small programs and tools, `param(pe, k)` reads one value, `factor_params` and
  `with_params` turn a dense table into this form.
- `route_rx[pe, color]`, `route_tx[pe, color]`: the router table at cycle 0 (port masks).
- `data_*`: initial SRAM contents per region (`.data` directives), applied to every PE of
  the region by `initial_sram`.
- `mark_names[k]`: the name of mark id k (`mark NAME` probes; see docs/isa.md); the
  number of marks is its length.
PE index = y * width + x. SRAM addresses count elements; every element is stored as fp32.
"""

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from isa.opcodes import INSTR_DTYPE


@dataclass
class Program:
    """A mesh program (see module docstring for the meaning of each array)."""

    width: int
    height: int
    dtype: str                      # element type for vector timing: fp32 | fp16 | bf16
    sram_words: int                 # SRAM elements per PE the program may address
    code: np.ndarray                # INSTR_DTYPE [total instructions]
    region_start: np.ndarray        # int32 [regions]
    region_len: np.ndarray          # int32 [regions]
    region_names: list[str]
    pe_region: np.ndarray           # int32 [W*H], -1 = idle
    param_rows: np.ndarray          # int32 [distinct rows, num_params]
    param_index: np.ndarray         # int32 [W*H]: each PE's row of param_rows
    route_rx: np.ndarray            # uint8 [W*H, num_colors]
    route_tx: np.ndarray            # uint8 [W*H, num_colors]
    data_region: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    data_addr: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    data_offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    data_len: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    data_values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    source: str = "<program>"      # file name used in messages
    region_comments: dict = field(default_factory=dict)  # region -> {pc: comment}
    region_ops: dict = field(default_factory=dict)  # region -> {pc: op name of the block}
    mark_names: list[str] = field(default_factory=list)  # mark id -> name
    sram_bytes_needed: int = 0     # SRAM bytes per PE when weights are stored narrower than
                                   # dtype (compiler --weight-dtype); 0: sram_words * bytes

    @property
    def num_marks(self) -> int:
        """Mark ids 0..num_marks-1 that `mark` instructions may record."""
        return len(self.mark_names)

    @property
    def num_pes(self) -> int:
        """PEs in the mesh."""
        return self.width * self.height

    @property
    def num_params(self) -> int:
        """Parameters per PE (operands %p0 .. %p{num_params - 1})."""
        return self.param_rows.shape[1]

    @property
    def params(self) -> np.ndarray:
        """int32 [W*H, num_params], a new dense table (W*H*num_params*4 bytes: meant for
        small programs, tools and tests; engines use the factored form)."""
        return self.param_rows[self.param_index]

    def param(self, pe: int, k: int) -> int:
        """The value of parameter %pk on PE `pe`."""
        return int(self.param_rows[self.param_index[pe], k])

    def with_params(self, params: np.ndarray) -> "Program":
        """A copy with the dense parameter table `params` [W*H, num_params]."""
        rows, index = factor_params(params)
        return dataclasses.replace(self, param_rows=rows, param_index=index)

    @property
    def num_colors(self) -> int:
        """Colors in the router tables."""
        return self.route_rx.shape[1]

    def region_code(self, region: int) -> np.ndarray:
        """The instructions of one region (a view)."""
        start = int(self.region_start[region])
        return self.code[start:start + int(self.region_len[region])]

    def pe_xy(self, pe: int) -> tuple[int, int]:
        """(x, y) coordinates of PE index `pe`."""
        return pe % self.width, pe // self.width

    def initial_sram(self) -> np.ndarray:
        """float32 [W*H, sram_words]: zeros plus every region's `.data` contents."""
        sram = np.zeros((self.num_pes, self.sram_words), np.float32)
        for region, addr, offset, length in zip(self.data_region, self.data_addr,
                                                self.data_offset, self.data_len, strict=True):
            rows = np.flatnonzero(self.pe_region == region)
            values = self.data_values[offset:offset + length]
            sram[rows[:, None], addr + np.arange(length)] = values
        return sram

    def equals(self, other: "Program") -> bool:
        """True when both programs have the same arrays and scalars (ignores `source`)."""
        scalars = ("width", "height", "dtype", "sram_words", "region_names", "mark_names")
        arrays = ("code", "region_start", "region_len", "pe_region", "route_rx",
                  "route_tx", "data_region", "data_addr", "data_offset", "data_len",
                  "data_values")
        return (all(getattr(self, s) == getattr(other, s) for s in scalars)
                and all(np.array_equal(getattr(self, a), getattr(other, a)) for a in arrays)
                and np.array_equal(self.params, other.params))   # row order may differ


def factor_params(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows int32 [R, K], each row's index int32 [N]) of a dense parameter table
    [N, K]; at least one row, so that an engine can always read row 0."""
    params = np.ascontiguousarray(params, np.int32)
    n, k = params.shape
    if n == 0 or k == 0:
        return np.zeros((1, k), np.int32), np.zeros(n, np.int32)
    index, first = distinct_rows(params)
    return params[first], index.astype(np.int32)


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class of each row int64 [N], index of the first row of each class) of a 2-D
    array, where a class is a distinct row. Rows are compared as byte strings: much
    faster than np.unique(axis=0), which compares column by column."""
    rows = np.ascontiguousarray(rows)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return inverse.ravel(), first


def empty_code(n: int = 0) -> np.ndarray:
    """A zeroed instruction array of n rows."""
    return np.zeros(n, INSTR_DTYPE)


@dataclass
class RunResult:
    """What an engine returns; both engines must agree on every field but `events`.

    Times are cycles. `sram` is None in timing-only mode. Per mark id k (Program.mark_names):
    `mark_first[k]` / `mark_last[k]` = the smallest / largest cycle at which any PE executed
    `mark k` (-1 if none did), `mark_count[k]` = how many times it was executed.
    """

    cycles: int                     # max over PEs of the halt time
    pe_finish: np.ndarray           # int64 [W*H] halt time of each PE (0 for idle PEs)
    pe_busy: np.ndarray             # int64 [W*H] cycles spent executing (not waiting)
    link_busy: np.ndarray           # int64 [W*H, 4] wavelet-cycles on each outgoing link N,E,S,W
    instructions: int               # instructions executed, all PEs
    messages: int                   # messages delivered to cores
    sram: np.ndarray | None = None  # float32 [W*H, sram_words] final contents
    events: list | None = None      # reference engine only: per-instruction event records
    mark_first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mark_last: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mark_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    skipped_blocks: int = 0         # Numba engine: blocks fast-forwarded (mesh/fast_forward.py)
