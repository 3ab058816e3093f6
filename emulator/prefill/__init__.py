"""The prefill machine: a Trainium-style chip of NeuronCores (docs/prefill.md).

Public API:

- `run_prefill(spec, hw, tokens_or_prompt_len, weights=None, dtype="bf16",
  timing_only=False, seed=0, chips=None, chunk=None, weight_dtype=None,
  expert_counts=None) -> PrefillResult` — lower, time and (functional mode) execute a
  prefill (chunked with `chunk`; MoE experts sized by the emulated router or, timing-only,
  by `expert_counts` / balanced routing); cycles are TensorE cycles of the preset.
- `gemm_trainium(hw, M, N, K, dataflow="ws", dtype="bf16", a=None, b=None)` and
  `gemm_scalesim(M, N, K, rows, cols, dataflow)` / `scalesim_cycles(...)` — one GEMM.
- `lower_prefill`, `engine_model.simulate`, `interp.execute` — the stages, for tools.
"""

from emulator.prefill.gemm import GemmResult, gemm_scalesim, gemm_trainium, scalesim_cycles
from emulator.prefill.run import PrefillResult, run_prefill

__all__ = ["GemmResult", "PrefillResult", "gemm_scalesim", "gemm_trainium", "run_prefill",
           "scalesim_cycles"]
