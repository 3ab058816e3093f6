"""Decode on the mesh vs the numpy reference: host seconds per token and emulated speed.

Model: hidden 1024, 4 layers, 16 heads, 4 kv heads (head_dim 64), ffn 2816, vocab 8192,
random weights, on a 64 x 64 mesh with WSE-3 PE parameters. fp32 does not fit in 48 KiB
per PE (the weights alone need about 52 KiB per PE), so the default dtype is fp16.

Reports, after a warm-up step (Numba JIT / cache load): host seconds per emulated decode
token (Numba engine, functional, including the host's per-step SRAM writes), seconds per
`compiler.reference.decode_step` (fastest of the steps, medians too, since a shared
machine makes single timings noisy), their ratio (target: at most 10), cycles per
token (emulated) and the implied tokens/s at the mesh clock, and the logits' error
against the reference run with the same rounded weights.

Usage: python benchmarks/bench_decode.py [--dtype fp16] [--mesh 64x64] [--steps 5]
       [--prompt-len 32] [--max-context 256] [--json]
"""

import argparse
import json
import statistics
import time

import numpy as np

from compiler import reference as ref
from compiler.frontend import parse_config
from compiler.weights import random_weights
from emulator.hw.mesh import load_mesh
from emulator.mesh.runtime import MeshDecoder

CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
          "intermediate_size": 2816, "num_hidden_layers": 4, "num_attention_heads": 16,
          "num_key_value_heads": 4, "vocab_size": 8192, "max_position_embeddings": 2048,
          "rms_norm_eps": 1e-5}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--mesh", default="64x64")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-context", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def main():
    args = parse_args()
    width, height = (int(v) for v in args.mesh.lower().split("x"))
    spec = parse_config(CONFIG, "bench_decode")
    mesh = load_mesh("wse3").with_mesh(width, height)
    start = time.perf_counter()
    decoder = MeshDecoder(spec, random_weights(spec, 0), mesh, dtype=args.dtype,
                          engine="numba", max_context=args.max_context)
    compile_s = time.perf_counter() - start
    prompt = list(range(1, args.prompt_len + 1))
    _, cache = ref.prefill(spec, decoder.weights, prompt)
    decoder.load_kv(cache)
    token, pos = prompt[-1], len(prompt)
    decoder.step(token, pos)                     # warm-up: JIT compile or cache load
    ref.decode_step(spec, decoder.weights, token, cache)
    mesh_s, ref_s, cycles, errors = [], [], [], []
    for n in range(1, args.steps + 1):
        t0 = time.perf_counter()
        logits, result = decoder.step(token, pos + n)
        t1 = time.perf_counter()
        expected = ref.decode_step(spec, decoder.weights, token, cache)
        t2 = time.perf_counter()
        mesh_s.append(t1 - t0)
        ref_s.append(t2 - t1)
        cycles.append(result.cycles)
        errors.append(float(np.abs(logits - expected).max() / np.abs(expected).max()))
        token = int(np.argmax(expected))
    per_token, per_ref = min(mesh_s), min(ref_s)
    cycles_per_token = statistics.median(cycles)
    report = {
        "mesh": [width, height], "dtype": args.dtype, "layout": decoder.plan.layout,
        "regions": len(decoder.compiled.decode.program.region_start),
        "sram_bytes_per_pe": decoder.placement.total_bytes,
        "compile_and_load_s": round(compile_s, 3),
        "emulator_s_per_token": round(per_token, 4),
        "emulator_s_per_token_median": round(statistics.median(mesh_s), 4),
        "reference_s_per_step": round(per_ref, 4),
        "reference_s_per_step_median": round(statistics.median(ref_s), 4),
        "slowdown_vs_reference": round(per_token / per_ref, 2),
        "instructions_per_token": result.instructions,
        "cycles_per_token": int(cycles_per_token),
        "clock_hz": mesh.clock_hz,
        "tokens_per_s_at_clock": round(mesh.clock_hz / cycles_per_token, 1),
        "max_rel_logit_error": max(errors),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
