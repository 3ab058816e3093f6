"""A single GEMM C[M, N] = A[M, K] @ B[K, N]: SCALE-Sim-compatible and Trainium modes.

SCALE-Sim-compatible mode (no overlap, ideal memory) reproduces SCALE-Sim 3.0's compute
cycles on an R x C array (docs/prefill.md, "SCALE-Sim compatibility"):

    WS: folds = ceil(K/R) * ceil(N/C), each 2R + C + M - 2 cycles
    OS: folds = ceil(M/R) * ceil(N/C), each K + R + C - 2 cycles
    IS: folds = ceil(K/R) * ceil(M/C), each 2R + C + N - 2 cycles
    compute cycles = folds * per-fold cycles - 1

Trainium mode lowers the GEMM onto one NeuronCore with the projection kernel of
emulator/prefill/linear.py (A^T strips stationary, B tiles moving; `is` swaps the roles) and
runs the instruction stream, DMA from HBM included, through the engine model.
"""

import math
from dataclasses import dataclass

import numpy as np

from emulator.hw.errors import ConfigError
from emulator.limits import check_memory
from emulator.prefill import engine_model, interp
from emulator.prefill import instructions as instr
from emulator.prefill.linear import linear_fm
from emulator.prefill.lowering import Lowering, Strip, TileMap

DATAFLOWS = ("ws", "os", "is")


@dataclass
class GemmResult:
    """Cycles of one GEMM (TensorE cycles in Trainium mode, array cycles in compat mode)."""

    M: int
    N: int
    K: int
    rows: int
    cols: int
    dataflow: str
    mode: str                 # "scalesim" or "trainium"
    compute_cycles: int       # array busy cycles (Trainium: TensorE busy union)
    total_cycles: int         # end to end (Trainium: including DMA and PSUM eviction)
    roofline_cycles: int      # max(MACs / (rows * cols), bytes / bandwidth), cycles
    clock_hz: float
    folds: int = 0
    fold_cycles: int = 0
    engine_busy: dict | None = None
    program: instr.InstructionStream | None = None
    schedule: engine_model.Schedule | None = None
    values: np.ndarray | None = None

    @property
    def utilization(self) -> float:
        """MACs / (rows * cols * total_cycles)."""
        return self.M * self.N * self.K / (self.rows * self.cols * max(1, self.total_cycles))

    def to_dict(self) -> dict:
        """JSON-ready summary (the `emu gemm --json` object)."""
        out = {"M": self.M, "N": self.N, "K": self.K, "array": [self.rows, self.cols],
               "dataflow": self.dataflow, "mode": self.mode,
               "compute_cycles": self.compute_cycles, "total_cycles": self.total_cycles,
               "utilization": self.utilization, "roofline_cycles": self.roofline_cycles,
               "seconds": self.total_cycles / self.clock_hz}
        if self.mode == "scalesim":
            out.update(folds=self.folds, fold_cycles=self.fold_cycles)
        if self.engine_busy is not None:
            out["engine_busy_cycles"] = self.engine_busy
            out["instructions"] = len(self.program)
        return out


def check_dims(M: int, N: int, K: int, rows: int, cols: int, dataflow: str) -> None:
    """Reject non-positive sizes and unknown dataflows with a ConfigError."""
    for name, value in (("M", M), ("N", N), ("K", K), ("array rows", rows),
                        ("array cols", cols)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"gemm: {name} must be a positive integer, got {value}")
    if dataflow not in DATAFLOWS:
        raise ConfigError(f"gemm: unknown dataflow '{dataflow}' (choose from ws, os, is)")


def scalesim_folds(M: int, N: int, K: int, rows: int, cols: int, dataflow: str):
    """(folds, cycles per fold) of SCALE-Sim 3.0's compute model."""
    check_dims(M, N, K, rows, cols, dataflow)
    if dataflow == "ws":
        return math.ceil(K / rows) * math.ceil(N / cols), 2 * rows + cols + M - 2
    if dataflow == "os":
        return math.ceil(M / rows) * math.ceil(N / cols), K + rows + cols - 2
    return math.ceil(K / rows) * math.ceil(M / cols), 2 * rows + cols + N - 2


def scalesim_cycles(M: int, N: int, K: int, rows: int = 128, cols: int = 128,
                    dataflow: str = "ws") -> int:
    """SCALE-Sim 3.0 compute cycles: folds * per-fold cycles - 1."""
    folds, per_fold = scalesim_folds(M, N, K, rows, cols, dataflow)
    return folds * per_fold - 1


def gemm_scalesim(M, N, K, rows=128, cols=128, dataflow="ws", clock_hz=1.0) -> GemmResult:
    """SCALE-Sim-compatible GEMM: total cycles = compute cycles (ideal memory, no overlap)."""
    folds, per_fold = scalesim_folds(M, N, K, rows, cols, dataflow)
    cycles = folds * per_fold - 1
    return GemmResult(M, N, K, rows, cols, dataflow, "scalesim", cycles, cycles,
                      math.ceil(M * N * K / (rows * cols)), clock_hz, folds, per_fold)


# Host bytes per lowered instruction, all structures counted (the column lists of the
# builder, the structured record array, the engine model's schedule arrays): tracemalloc
# peaks of 400-760 B per instruction for 8192x4096x1024, 65536x1024x512 and 1024x65536x128;
# this bound is above the largest.
BYTES_PER_INSTRUCTION = 1024
TOKEN_TILE = 128        # moving-operand columns per tile (TileMap's column tile)


def gemm_tiles(M: int, N: int, K: int, rows: int, cols: int) -> int:
    """Matmul tiles of C[M,N] = A[M,K] @ B[K,N] with N on `cols` PE columns and K on `rows`
    PE rows, M in token tiles: an upper bound of the instructions lowered per tile."""
    return math.ceil(N / cols) * math.ceil(M / TOKEN_TILE) * math.ceil(K / rows)


def gemm_host_bytes(hw, M: int, N: int, K: int, dataflow: str = "ws") -> int:
    """Host bytes of lowering and scheduling one GEMM: instructions and producer maps."""
    stat_n, mov_n = (M, N) if dataflow == "ws" else (N, M)
    maps = 8 * (math.ceil(stat_n / hw.pe_cols) + math.ceil(K / hw.pe_rows)) * \
        math.ceil(mov_n / TOKEN_TILE)
    return 2 * BYTES_PER_INSTRUCTION * (gemm_tiles(mov_n, stat_n, K, hw.pe_rows,
                                                   hw.pe_cols) + 8) + maps


def lower_gemm(hw, M: int, N: int, K: int, dataflow: str = "ws", dtype: str = "bf16"):
    """Instruction stream of C = A @ B on core 0; returns (program, output tensor id)."""
    check_dims(M, N, K, hw.pe_rows, hw.pe_cols, dataflow)
    check_memory(gemm_host_bytes(hw, M, N, K, dataflow), f"gemm {M}x{N}x{K}")
    if dataflow == "os":
        raise ConfigError("gemm: Trainium mode supports the ws and is dataflows (TensorE "
                          "keeps one operand stationary); use --scalesim-compat for os")
    builder = instr.Builder()
    L = Lowering(hw, dtype, builder, active_cores=1)
    stat_n, mov_n = (M, N) if dataflow == "ws" else (N, M)
    builder.begin_op("gemm")
    w = builder.tensor("gemm.stationary", K, stat_n, dtype, "hbm")
    x = builder.tensor("gemm.moving", K, mov_n, dtype, "hbm")
    out = builder.tensor("gemm.out", stat_n, mov_n, dtype, "hbm")
    strips = [Strip(w, c, min(hw.pe_cols, stat_n - c), "copy", out, c)
              for c in range(0, stat_n, hw.pe_cols)]
    outs = {out: TileMap(stat_n, mov_n, hw.pe_cols)}
    linear_fm(L, 0, strips, K, 0, mov_n, outs, x=x, name="gemm")
    return builder.program([0]), out


def gemm_trainium(hw, M: int, N: int, K: int, dataflow: str = "ws", dtype: str = "bf16",
                  a=None, b=None) -> GemmResult:
    """Trainium-mode GEMM on one core; with `a`, `b` arrays it also computes C."""
    program, out = lower_gemm(hw, M, N, K, dataflow, dtype)
    sched = engine_model.simulate(program)
    busy = {name: int(sched.busy[i]) for i, name in enumerate(instr.ENGINE_NAMES[:4])}
    values = None
    if a is not None:
        stat, mov = (np.asarray(a).T, b) if dataflow == "ws" else (np.asarray(b), np.asarray(a).T)
        machine = interp.execute(program, {"gemm.stationary": stat, "gemm.moving": mov})
        c = machine.data[out]
        values = c if dataflow == "ws" else c.T
    factor = hw.mm_fp32_factor if dtype == "fp32" else 1
    bpe = 4 if dtype == "fp32" else 2
    mem = hw.tensor_cycles((M * K + K * N + M * N) * bpe / hw.dma_bytes_per_s(1))
    roof = max(math.ceil(M * N * K / (hw.pe_rows * hw.pe_cols)) * factor, mem)
    return GemmResult(M, N, K, hw.pe_rows, hw.pe_cols, dataflow, "trainium",
                      busy["tensor"], sched.cycles, roof, hw.tensor_clock_hz,
                      engine_busy=busy, program=program, schedule=sched, values=values)


def parse_positive(name: str, text) -> int:
    """A positive integer argument, or a one-line ConfigError naming it."""
    try:
        value = int(str(text).strip().replace("_", ""))
    except ValueError:
        raise ConfigError(f"gemm: {name} must be a positive integer, got '{text}'") from None
    if value < 1:
        raise ConfigError(f"gemm: {name} must be a positive integer, got {value}")
    return value


def gemm_from_options(m, n, k, prefill_hw="trn2", array=None, dataflow="ws",
                      scalesim_compat=False, dtype="bf16") -> GemmResult:
    """One GEMM from the option values of `emu gemm` (M N K as text or ints; `prefill_hw`
    a preset name, a JSON file or a PrefillConfig; `array` 'RxC' or None)."""
    from emulator.hw.prefill import PrefillConfig, load_prefill
    from emulator.hw.presets import parse_dims

    M, N, K = (parse_positive(name, v) for name, v in (("M", m), ("N", n), ("K", k)))
    dataflow = str(dataflow).lower()
    if dataflow not in DATAFLOWS:
        raise ConfigError(f"--dataflow: expected ws, os or is, got '{dataflow}'")
    if dtype not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"--dtype: expected bf16, fp16 or fp32, got '{dtype}'")
    hw = prefill_hw if isinstance(prefill_hw, PrefillConfig) else load_prefill(prefill_hw)
    shape = parse_dims(array, "--array", "RxC", "128x128") or (hw.pe_rows, hw.pe_cols)
    if scalesim_compat:
        return gemm_scalesim(M, N, K, *shape, dataflow, hw.tensor_clock_hz)
    if shape[0] > hw.sbuf_partitions:
        raise ConfigError(f"--array: {shape[0]} rows exceed the {hw.sbuf_partitions} SBUF "
                          f"partitions of preset '{hw.name}'")
    return gemm_trainium(hw.with_array(*shape), M, N, K, dataflow, dtype)


def gemm_report(*, m: int | str, n: int | str, k: int | str, prefill_hw="trn2",
                array: str | None = None, dataflow: str = "ws", scalesim_compat: bool = False,
                dtype: str = "bf16") -> dict:
    """The `emu gemm --json` object for the options of its command line (`emu sweep`'s
    `gemm` command; the defaults are the CLI's)."""
    return gemm_from_options(m, n, k, prefill_hw, array, dataflow, scalesim_compat,
                             dtype).to_dict()
