"""Instruction costs of the NKI cost model, in TensorE cycles (docs/prefill.md, "Cost model").

Every function takes the preset and integer sizes (scalars or numpy arrays) and returns
integer TensorE cycles:

- MultiplyMoving: max(N, mm_min_cycles), times mm_fp32_factor for fp32 inputs.
- LoadStationary: ceil(M / ls_speedup), times mm_fp32_factor for fp32 inputs.
- Vector: inputs * ceil(N / vector_elems_per_cycle) + vector_overhead_cycles Vector cycles.
- Scalar: ceil(N / scalar_elems_per_cycle) + scalar_overhead_cycles Scalar cycles.
- DMA: ceil(bytes / bandwidth) occupies the core's DMA queue; dma_latency_s more until use.
- Collectives over C cores (ring): reduce-scatter and all-gather move (C-1)/C of the bytes
  in C-1 steps: (C-1)/C * bytes / collective_bytes_per_s + (C-1) * collective_latency_s.

N is the free size (elements per partition) of the streamed operand; costs in other engines'
clocks are converted with ceil(cycles * tensor_clock_hz / engine_clock_hz).
"""

import numpy as np

from emulator.hw.prefill import PrefillConfig


def _ceil_div(x, y):
    """Integer ceil(x / y) for non-negative integers (scalars or arrays)."""
    return -(-np.asarray(x, dtype=np.int64) // y)


def _to_tensor(hw: PrefillConfig, cycles, clock_hz: float):
    """Engine cycles at `clock_hz` -> TensorE cycles (rounded up)."""
    ratio = hw.tensor_clock_hz / clock_hz
    return np.ceil(np.asarray(cycles, dtype=np.float64) * ratio - 1e-9).astype(np.int64)


def mm_cycles(hw: PrefillConfig, n_moving, dtype: str):
    """MultiplyMoving initiation interval for a moving tile of free size `n_moving`."""
    base = np.maximum(np.asarray(n_moving, dtype=np.int64), hw.mm_min_cycles)
    return base * (hw.mm_fp32_factor if dtype == "fp32" else 1)


def ls_cycles(hw: PrefillConfig, m_stationary, dtype: str):
    """LoadStationary cycles for a stationary tile of free size `m_stationary`."""
    base = _ceil_div(m_stationary, hw.ls_speedup)
    return base * (hw.mm_fp32_factor if dtype == "fp32" else 1)


def vector_cycles(hw: PrefillConfig, n_free, n_inputs: int = 1):
    """Vector engine instruction over `n_free` elements per partition and `n_inputs` tensors."""
    engine = n_inputs * _ceil_div(n_free, hw.vector_elems_per_cycle) + hw.vector_overhead_cycles
    return _to_tensor(hw, engine, hw.vector_clock_hz)


def scalar_cycles(hw: PrefillConfig, n_free):
    """Scalar (activation) engine instruction over `n_free` elements per partition."""
    engine = _ceil_div(n_free, hw.scalar_elems_per_cycle) + hw.scalar_overhead_cycles
    return _to_tensor(hw, engine, hw.scalar_clock_hz)


def dma_cycles(hw: PrefillConfig, nbytes, active_cores: int):
    """Cycles a transfer of `nbytes` occupies one core's DMA queue."""
    seconds = np.asarray(nbytes, dtype=np.float64) / hw.dma_bytes_per_s(active_cores)
    return np.ceil(seconds * hw.tensor_clock_hz - 1e-9).astype(np.int64)


def dma_latency_cycles(hw: PrefillConfig) -> int:
    """Fixed latency of one DMA transfer, TensorE cycles."""
    return hw.tensor_cycles(hw.dma_latency_s)


def ring_cycles(hw: PrefillConfig, nbytes: float, cores: int) -> int:
    """Reduce-scatter or all-gather of `nbytes` (the full tensor) over `cores` cores."""
    if cores <= 1:
        return 0
    steps = cores - 1
    seconds = steps / cores * nbytes / hw.collective_bytes_per_s + steps * hw.collective_latency_s
    return hw.tensor_cycles(seconds)
