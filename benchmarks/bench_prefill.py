"""Prefill machine host speed: the 512x4096x4096 GEMM and Llama-3.1-8B prefill on one Trn2.

Reports, each the best of `--repeat` runs after a warm-up call (Numba JIT / cache load):

- the 512x4096x4096 GEMM (M x N x K): host milliseconds in SCALE-Sim-compatible mode (WS
  compute cycles 915,455 on 128x128) and in Trainium mode (instruction stream, DMA from HBM
  included, through the engine model); target under 50 ms;
- timing-only prefill of Llama-3.1-8B (hidden 4096, 32 layers, 32 heads, 8 kv heads,
  head_dim 128, ffn 14336, vocab 128256) with a 2048-token prompt, bf16, on one Trn2 chip:
  host seconds (target under 2 s), the predicted prefill time and its roofline bound
  (model FLOPs at the published 667 dense bf16 TFLOPS per chip, or HBM bytes at 2.9 TB/s).

Usage: python benchmarks/bench_prefill.py [--prefill-hw trn2] [--prompt-len 2048]
       [--repeat 3] [--json]
"""

import argparse
import json
import time
from pathlib import Path

from compiler.frontend import ModelSpec, RopeSpec, load_config
from emulator.hw.prefill import load_prefill
from emulator.prefill.gemm import gemm_scalesim, gemm_trainium
from emulator.prefill.run import run_prefill

LLAMA_CONFIG = Path(__file__).resolve().parents[1] / "programs" / "models" / "llama-3.1-8b.json"


def llama_8b() -> ModelSpec:
    """Llama-3.1-8B from the model zoo, or built directly when the file is absent."""
    if LLAMA_CONFIG.is_file():
        return load_config(LLAMA_CONFIG)
    rope = RopeSpec(500000.0, "llama3", 8.0, 1.0, 4.0, 8192)
    return ModelSpec("LlamaForCausalLM", 4096, 14336, 32, 32, 8, 128, 128256, 1e-5, "silu",
                     False, False, False, 131072, "bfloat16", rope)


def best_of(repeat: int, fn):
    """(best host seconds, last result) of `repeat` calls after one warm-up call."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill-hw", default="trn2")
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hw = load_prefill(args.prefill_hw)

    t_compat, compat = best_of(args.repeat, lambda: gemm_scalesim(512, 4096, 4096))
    t_trn, trn = best_of(args.repeat, lambda: gemm_trainium(hw, 512, 4096, 4096))
    spec = llama_8b()
    t_pre, pre = best_of(args.repeat, lambda: run_prefill(spec, hw, args.prompt_len,
                                                          dtype="bf16", timing_only=True))
    report = {
        "gemm_512x4096x4096": {
            "scalesim_ws_compute_cycles": compat.compute_cycles,
            "scalesim_host_ms": 1e3 * t_compat,
            "trainium_total_cycles": trn.total_cycles,
            "trainium_compute_cycles": trn.compute_cycles,
            "trainium_utilization": trn.utilization,
            "trainium_instructions": len(trn.program),
            "trainium_host_ms": 1e3 * t_trn},
        "llama_3_1_8b_prefill": {
            "prefill_hw": hw.name, "prompt_len": args.prompt_len,
            "host_s": t_pre, "instructions": len(pre.program),
            "predicted_s": pre.seconds, "roofline_s": pre.roofline_seconds,
            "roofline_fraction": pre.roofline_seconds / pre.seconds,
            "model_tflops": pre.flops / 1e12,
            "achieved_tflops_per_s": pre.flops / pre.seconds / 1e12,
            "engine_utilization": pre.engine_utilization}}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    g, p = report["gemm_512x4096x4096"], report["llama_3_1_8b_prefill"]
    print(f"GEMM 512x4096x4096, SCALE-Sim compatible (WS, 128x128): "
          f"{g['scalesim_ws_compute_cycles']:,} compute cycles, "
          f"host {g['scalesim_host_ms']:.3f} ms")
    print(f"GEMM 512x4096x4096, Trainium mode on one {hw.name} core: "
          f"{g['trainium_total_cycles']:,} cycles ({g['trainium_compute_cycles']:,} TensorE "
          f"busy, {100 * g['trainium_utilization']:.1f} % utilisation), "
          f"{g['trainium_instructions']:,} instructions, host {g['trainium_host_ms']:.1f} ms "
          f"(target < 50 ms)")
    print(f"Llama-3.1-8B prefill, {p['prompt_len']} tokens, bf16, timing-only, one {hw.name} "
          f"chip: host {p['host_s']:.3f} s (target < 2 s), {p['instructions']:,} instructions")
    print(f"  predicted prefill time {1e3 * p['predicted_s']:.2f} ms vs roofline bound "
          f"{1e3 * p['roofline_s']:.2f} ms ({p['model_tflops']:.1f} TFLOP at "
          f"{hw.peak_bf16_flops / 1e12:.0f} TFLOPS): {100 * p['roofline_fraction']:.1f} % "
          f"of roofline, {p['achieved_tflops_per_s']:.0f} TFLOPS achieved")
    util = ", ".join(f"{k} {100 * v:.0f} %" for k, v in p["engine_utilization"].items())
    print(f"  engine utilisation: {util}")


if __name__ == "__main__":
    main()
