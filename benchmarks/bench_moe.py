"""Timing-only decode of a mixture-of-experts model on a multi-wafer system (issue 21).

Compiles the model over the smallest wafer count whose SRAM holds it at its weight
precision (compiler.system.wafers_needed, raised by one while a wafer's per-PE placement
does not fit) and emulates one token at position `--position`; prints the wafer count,
SRAM per PE, the KV capacity, emulated cycles, predicted tokens/s at the preset clock and
at 1.1 GHz, and the host seconds of compile and of the token (target: compile + one token
<= 60 s for gpt-oss-120B).

    python benchmarks/bench_moe.py                       # gpt-oss-120b, wse3, mxfp4
    python benchmarks/bench_moe.py --model qwen3-235b-a22b --weight-dtype fp8
"""

import argparse
import dataclasses
import json
import time

from compiler.frontend import resolve_model
from compiler.system import compile_system, wafers_needed
from emulator.hw.errors import FitError
from emulator.hw.mesh import load_mesh
from emulator.mesh.system import run_system_timing

WSE_FAST_CLOCK_HZ = 1.1e9   # WaferLLM's WSE-2 clock, the upper of the two in DESIGN.md 2.1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt-oss-120b")
    ap.add_argument("--hw", default="wse3")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--weight-dtype", default="mxfp4")
    ap.add_argument("--max-context", type=int, default=4096)
    ap.add_argument("--position", type=int, default=1023)
    ap.add_argument("--wafers", type=int, default=None, help="override the computed count")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    spec = resolve_model(args.model)
    mesh = load_mesh(args.hw)
    needed = wafers_needed(spec, mesh, args.dtype, args.max_context, args.weight_dtype)
    wafers, system, misses = args.wafers or needed, None, []
    while system is None:
        try:
            system = compile_system(spec, dataclasses.replace(mesh, wafers=wafers), args.dtype,
                                    args.max_context, weight_dtype=args.weight_dtype)
        except FitError as exc:
            if args.wafers:
                raise
            misses.append(f"{wafers} wafers: {str(exc)[:160]}...")
            wafers += 1
    t1 = time.perf_counter()
    step = run_system_timing(system, args.position)
    t2 = time.perf_counter()
    seconds = step.seconds(mesh.clock_hz)
    fast = step.cycles / WSE_FAST_CLOCK_HZ + step.handoff_s
    out = {
        "model": args.model, "hw": args.hw, "dtype": args.dtype,
        "weight_dtype": args.weight_dtype, "wafers_needed_by_sram": needed,
        "wafers": wafers, "misses": misses, "max_context": args.max_context,
        "capacity_tokens": min(p.compiled.placement.capacity for p in system.parts),
        "sram_bytes_per_pe": [p.compiled.placement.total_bytes + system.reserve_bytes
                              for p in system.parts],   # layers + the LM head slice
        "position": args.position, "cycles_per_token": step.cycles,
        "handoff_s": step.handoff_s, "seconds_per_token": seconds,
        "tokens_per_s": 1 / seconds, "tokens_per_s_1.1GHz": 1 / fast,
        "skipped_blocks": [r.skipped_blocks for r in step.results],
        "host_compile_s": round(t1 - t0, 2), "host_token_s": round(t2 - t1, 2),
        "host_total_s": round(t2 - t0, 2),
    }
    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key:24s} {value}")


if __name__ == "__main__":
    main()
