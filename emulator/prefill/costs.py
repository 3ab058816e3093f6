"""Instruction costs of the NKI cost model, in TensorE cycles (docs/prefill.md, "Cost model").

Every function takes the preset and integer sizes (scalars or numpy arrays) and returns
integer TensorE cycles:

- MultiplyMoving: max(N, mm_min_cycles), times mm_fp32_factor for fp32 inputs.
- LoadStationary: ceil(M / ls_speedup), times mm_fp32_factor for fp32 inputs.
- Vector: inputs * ceil(N / (vector_elems_per_cycle * perf-mode speedup)) Vector cycles,
  plus vector_overhead_cycles when it depends on the Vector instruction just before it.
- Scalar: max(scalar_min_cycles, ceil(N / rate)) Scalar cycles (bf16 rate for bf16 in/out).
- DMA: ceil(bytes / bandwidth) occupies the core's DMA queue; dma_latency_s more until use.
- Collectives over C cores on each of N chips: a ring over the cores then one over the
  chips: (C-1)/C * B / collective_bytes_per_s + (C-1) * collective_latency_s
  + (N-1)/N * B / link_bytes_per_s + (N-1) * link_latency_s (all-reduce: twice that).

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


def vector_cycles(hw: PrefillConfig, n_free, n_inputs: int = 1, speedup: int = 1):
    """Vector engine instruction over `n_free` elements per partition and `n_inputs` tensors,
    `speedup` from the bf16 performance mode (1 without). The fixed overhead of a dependent
    instruction is added by the builder (`vector_overhead`)."""
    rate = hw.vector_elems_per_cycle * speedup
    return _to_tensor(hw, n_inputs * _ceil_div(n_free, rate), hw.vector_clock_hz)


def vector_overhead(hw: PrefillConfig) -> int:
    """TensorE cycles a Vector instruction adds when it depends on the one just before it."""
    return int(_to_tensor(hw, hw.vector_overhead_cycles, hw.vector_clock_hz))


def vector_exp_cycles(hw: PrefillConfig, n_free):
    """Vector exponential (NeuronCore-v4 `nisa.exponential`) over `n_free` elements."""
    return _to_tensor(hw, _ceil_div(n_free, hw.vector_exp_elems_per_cycle), hw.vector_clock_hz)


def scalar_cycles(hw: PrefillConfig, n_free, bf16: bool = False):
    """Scalar (activation) instruction over `n_free` elements per partition:
    max(scalar_min_cycles, ceil(N / rate)) Scalar cycles, the bf16 rate when input and
    output are bf16/fp16."""
    rate = hw.scalar_bf16_elems_per_cycle if bf16 else hw.scalar_elems_per_cycle
    engine = np.maximum(_ceil_div(n_free, rate), hw.scalar_min_cycles)
    return _to_tensor(hw, engine, hw.scalar_clock_hz)


def dma_cycles(hw: PrefillConfig, nbytes, active_cores: int):
    """Cycles a transfer of `nbytes` occupies one core's DMA queue."""
    seconds = np.asarray(nbytes, dtype=np.float64) / hw.dma_bytes_per_s(active_cores)
    return np.ceil(seconds * hw.tensor_clock_hz - 1e-9).astype(np.int64)


def dma_latency_cycles(hw: PrefillConfig) -> int:
    """Fixed latency of one DMA transfer, TensorE cycles."""
    return hw.tensor_cycles(hw.dma_latency_s)


def ring_seconds(n: int, nbytes: float, bytes_per_s: float, latency_s: float) -> float:
    """Ring reduce-scatter or all-gather of a tensor of `nbytes` over `n` members:
    (n-1)/n * nbytes / bytes_per_s + (n-1) * latency_s (0 for n <= 1)."""
    if n <= 1:
        return 0.0
    return (n - 1) / n * nbytes / bytes_per_s + (n - 1) * latency_s


def ring_cycles(hw: PrefillConfig, nbytes: float, cores: int, chips: int = 1) -> int:
    """Reduce-scatter or all-gather of `nbytes` (the full tensor) over `cores` cores of each
    of `chips` chips: a ring over the chip's cores (collective_bytes_per_s,
    collective_latency_s), then a ring over the chips, the cores' shards in parallel
    sharing each chip's link (link_bytes_per_s, link_latency_s). TensorE cycles, rounded
    up once."""
    seconds = ring_seconds(cores, nbytes, hw.collective_bytes_per_s, hw.collective_latency_s)
    seconds += ring_seconds(chips, nbytes, hw.link_bytes_per_s, hw.link_latency_s)
    return hw.tensor_cycles(seconds) if seconds else 0


def all_to_all_seconds(n: int, nbytes: float, bytes_per_s: float, latency_s: float) -> float:
    """Pairwise-exchange all-to-all of `nbytes` in total over `n` members, each holding
    nbytes/n and sending (n-1)/n of it in n-1 rounds: (n-1)/n * (nbytes/n) / bytes_per_s
    + (n-1) * latency_s (0 for n <= 1)."""
    if n <= 1:
        return 0.0
    return (n - 1) / n * nbytes / n / bytes_per_s + (n - 1) * latency_s


def all_to_all_cycles(hw: PrefillConfig, nbytes: float, cores: int, chips: int = 1) -> int:
    """All-to-all (MoE token dispatch or combine) of `nbytes` in total over `cores` cores of
    each of `chips` chips: the exchange between the chips (link_bytes_per_s,
    link_latency_s) plus, inside each chip, the exchange of its nbytes/chips among its
    cores (collective_bytes_per_s, collective_latency_s). TensorE cycles, rounded up once."""
    seconds = all_to_all_seconds(cores, nbytes / chips, hw.collective_bytes_per_s,
                                 hw.collective_latency_s)
    seconds += all_to_all_seconds(chips, nbytes, hw.link_bytes_per_s, hw.link_latency_s)
    return hw.tensor_cycles(seconds) if seconds else 0


def all_reduce_cycles(hw: PrefillConfig, nbytes: float, cores: int, chips: int = 1) -> int:
    """All-reduce as reduce-scatter + all-gather: twice the ring terms (rounded up once)."""
    seconds = 2 * ring_seconds(cores, nbytes, hw.collective_bytes_per_s,
                               hw.collective_latency_s)
    seconds += 2 * ring_seconds(chips, nbytes, hw.link_bytes_per_s, hw.link_latency_s)
    return hw.tensor_cycles(seconds) if seconds else 0
