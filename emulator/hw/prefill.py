"""The prefill machine: one chip of NeuronCore-style cores (Trainium-like).

`PrefillConfig` holds every parameter the prefill lowering and the engine model use
(docs/prefill.md). Units: sizes in bytes (or elements where the name says so), clocks in Hz,
bandwidths in bytes per second, times in seconds unless the name says cycles. "Cycles" of an
engine are cycles of that engine's own clock; the engine model converts everything to
TensorE cycles.
"""

import math
from dataclasses import dataclass, replace

from emulator.hw.presets import load_preset, nonnegative, positive

MATMUL_DTYPES = ("bf16", "fp16", "fp8", "fp32")


@dataclass(frozen=True)
class PrefillConfig:
    """One accelerator chip: `cores_per_chip` NeuronCores sharing HBM, joined by collectives."""

    name: str
    cores_per_chip: int = positive()          # NeuronCores per chip
    pe_rows: int = positive()                 # TensorE rows: max contraction K per matmul
    pe_cols: int = positive()                 # TensorE columns: max stationary free size M
    moving_free_max: int = positive()         # max moving free size N (elements) per matmul
    tensor_clock_hz: float = positive()       # TensorE clock; the unit of reported cycles
    vector_clock_hz: float = positive()       # Vector engine clock
    scalar_clock_hz: float = positive()       # Scalar (activation) engine clock
    mm_min_cycles: int = positive()           # MultiplyMoving minimum initiation interval
    mm_fp32_factor: int = positive()          # fp32 matmul cost multiplier (vs bf16)
    ls_speedup: int = positive()              # LoadStationary speed vs MultiplyMoving
    fp8_contraction_factor: int = positive()  # fp8 packs this many K rows per PE row
    mx_matmul: int = nonnegative()            # 1: TensorE takes MXFP8/MXFP4 with its scales
    sbuf_partitions: int = positive()         # SBUF partitions (= vector/scalar lanes)
    sbuf_partition_bytes: int = positive()    # SBUF bytes per partition
    psum_banks: int = positive()              # PSUM banks per partition
    psum_bank_bytes: int = positive()         # PSUM bytes per bank per partition
    vector_elems_per_cycle: int = positive()  # elements per lane per cycle per input (Vector)
    scalar_elems_per_cycle: int = positive()  # elements per lane per cycle (Scalar)
    vector_overhead_cycles: int = nonnegative()  # Vector cycles a dependent instruction adds
    scalar_min_cycles: int = nonnegative()    # Scalar minimum initiation interval (cycles)
    scalar_bf16_elems_per_cycle: int = positive()  # Scalar lanes' rate, bf16/fp16 in and out
    vector_bf16_tt_speedup: int = positive()  # Vector perf mode: tensor_tensor, bf16 SBUF
    vector_bf16_ts_speedup: int = positive()  # Vector perf mode: tensor_scalar/copy bf16 SBUF
    vector_exp_elems_per_cycle: int = nonnegative()  # Vector exponential rate (0: none)
    dma_engines_per_core: int = positive()    # DMA engines serving one core
    dma_engine_bytes_per_s: float = positive()  # peak bandwidth of one DMA engine
    dma_latency_s: float = nonnegative()      # fixed latency of one DMA transfer
    hbm_bytes: int = positive()               # HBM capacity per chip
    hbm_bytes_per_s: float = positive()       # HBM bandwidth per chip
    collective_bytes_per_s: float = positive()  # ring bandwidth of a collective across cores
    collective_latency_s: float = nonnegative()  # latency of one ring step
    chips: int = positive()                   # chips of the instance the preset names
    link_bytes_per_s: float = positive()      # chip-to-chip ring bandwidth per chip
    link_latency_s: float = nonnegative()     # latency of one chip-to-chip ring step
    peak_bf16_flops: float = positive()       # published dense bf16/fp16 FLOP/s per chip
    peak_fp8_flops: float = positive()        # published dense fp8 FLOP/s per chip
    peak_fp32_flops: float = positive()       # published dense fp32 FLOP/s per chip
    topology: str = ""                        # how the chips are linked (documentation)
    # serving bill (emu serve); None when a preset does not say
    power_busy_w: float | None = positive(default=None)   # W per chip while computing
    power_idle_w: float | None = nonnegative(default=None)  # W per chip while idle
    price_usd_per_hour: float | None = nonnegative(default=None)  # $ per chip-hour

    # ------------------------------------------------------------------ derived sizes

    @property
    def sbuf_bytes(self) -> int:
        """SBUF bytes per core (all partitions)."""
        return self.sbuf_partitions * self.sbuf_partition_bytes

    @property
    def psum_bank_fp32(self) -> int:
        """fp32 elements one PSUM bank holds per partition."""
        return self.psum_bank_bytes // 4

    @property
    def psum_bytes(self) -> int:
        """PSUM bytes per core (all partitions and banks)."""
        return self.sbuf_partitions * self.psum_banks * self.psum_bank_bytes

    def k_max(self, dtype: str) -> int:
        """Max contraction rows per matmul instruction (fp8 packs several rows per PE row)."""
        return self.pe_rows * (self.fp8_contraction_factor if dtype == "fp8" else 1)

    def peak_flops(self, dtype: str) -> float:
        """Published dense FLOP/s per chip for a matmul input dtype (fp8: the chip's fp8 /
        MXFP8 rate)."""
        return {"bf16": self.peak_bf16_flops, "fp16": self.peak_bf16_flops,
                "fp8": self.peak_fp8_flops, "fp32": self.peak_fp32_flops}[dtype]

    def dma_bytes_per_s(self, active_cores: int) -> float:
        """DMA bandwidth of one core when `active_cores` cores share the chip's HBM."""
        engines = self.dma_engines_per_core * self.dma_engine_bytes_per_s
        return min(engines, self.hbm_bytes_per_s / max(1, active_cores))

    def tensor_cycles(self, seconds: float) -> int:
        """TensorE cycles (rounded up) for a duration in seconds."""
        return math.ceil(seconds * self.tensor_clock_hz - 1e-9)

    def with_array(self, rows: int, cols: int) -> "PrefillConfig":
        """The same chip with a TensorE of another shape (rows x cols PEs)."""
        return replace(self, pe_rows=rows, pe_cols=cols)

    def validate(self) -> str | None:
        """Return a description of an impossible combination, or None."""
        if self.pe_rows > self.sbuf_partitions:
            return (f"field 'pe_rows' ({self.pe_rows}) must be <= field 'sbuf_partitions' "
                    f"({self.sbuf_partitions}): matmul rows are fed by SBUF partitions")
        if self.psum_bank_bytes % 4:
            return f"field 'psum_bank_bytes' must be a multiple of 4, got {self.psum_bank_bytes}"
        if self.moving_free_max > self.psum_bank_fp32:
            return (f"field 'moving_free_max' ({self.moving_free_max}) must fit one PSUM bank "
                    f"({self.psum_bank_fp32} fp32 elements from 'psum_bank_bytes')")
        if self.psum_banks < 2:
            return f"field 'psum_banks' must be >= 2 for double buffering, got {self.psum_banks}"
        return None


def load_prefill(name_or_path: str = "trn2") -> PrefillConfig:
    """Load a prefill preset by bundled name (`trn2`, `trn3`) or JSON file path."""
    return load_preset(PrefillConfig, "prefill", name_or_path)
