"""Prefill machine at production scale: the figures of issue 15, and the calibration rows.

Each case runs in its own process (so its peak memory is its own) and prints host wall and
CPU seconds, peak resident memory, the predicted prefill time and its roofline:

- `70b-16xtrn2`: Llama-3.1-70B on 16 Trn2 chips (trn2-48xl), 32,768-token prompt,
  timing-only (target: host <= 10 s);
- `8b-trn3-128k`: Llama-3.1-8B on one Trn3, 131,072-token prompt, timing-only (target:
  host <= 10 s, peak memory <= 3 GiB);
- `405b-trn2`: Llama-3.1-405B on a Trn2 instance (chip count by HBM), 10,240 tokens;
- `8b-trn3-fp8`: Llama-3.1-8B on one Trn3, 32,768 tokens, bf16 against fp8;
- `8b-trn2-chunked`: Llama-3.1-8B on one Trn2, 32,768 tokens, one pass against chunks of
  8,192 and 2,048 tokens, with the KV exposed on the `efa` link after the last chunk;
- `moe`: gpt-oss-120B (MXFP4 experts) and Qwen3-235B-A22B (bf16 and fp8) prefill,
  timing-only, balanced routing, on the Trn2 instance (chip count from HBM at the weight
  format): host time and predicted TTFT at 1,024 and 8,192 tokens; then gpt-oss-120B at
  1,024 tokens with bf16 weights on Trn2 and with MXFP4 weights on Trn3 (MX matmul with
  --prefill-dtype fp8, and dequantised for bf16);
- `gemm`: the 512x4096x4096 GEMM, SCALE-Sim-compatible and Trainium mode;
- `calibration`: emu's prediction for published Trainium2 measurements
  (`calibration_rows()`, also used by benchmarks/calibrate.py for docs/calibration.md).

Host times depend on the machine's load: the CPU seconds of the process are printed next to
the wall time. Usage:
    python benchmarks/bench_prefill.py [--case NAME ...] [--json]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compiler.frontend import ModelSpec, RopeSpec, load_config  # noqa: E402
from emulator.hw.link import load_link  # noqa: E402
from emulator.hw.prefill import load_prefill  # noqa: E402
from emulator.link.transfer import chunk_segments, stream_kv  # noqa: E402
from emulator.prefill.gemm import gemm_scalesim, gemm_trainium  # noqa: E402
from emulator.prefill.run import run_prefill  # noqa: E402

MODELS = ROOT / "programs" / "models"
CASES = ("gemm", "70b-16xtrn2", "8b-trn3-128k", "405b-trn2", "8b-trn3-fp8", "8b-trn2-chunked",
         "70b-pipeline",
         "moe", "calibration")

# Published measurements (TTFT at batch 1, LLMPerf p50; the 10,000-token prompt runs in the
# context-encoding bucket the tutorial compiles, so emu is run at that bucket's length).
NEURON_SDK = ("aws-neuron/aws-neuron-sdk (GitHub), commit 81ce03ae261e, "
              "libraries/nxd-inference/tutorials/")
PUBLISHED = [
    {"name": "Llama-3.3-70B TTFT, 10,000-token prompt, trn2.48xlarge (16 Trn2), TP64 bf16",
     "model": "70b", "bucket": 12288, "chips": 16, "published_s": 0.8142827898263931,
     "source_text": "AWS Neuron, \"Using Speculative Decoding to improve Llama-3.3-70B "
                    "inference performance on Trn2\" (NxD Inference tutorial, baseline "
                    "without speculation): ttft_s p50 0.814 s, LLMPerf 10,000 input tokens, "
                    "batch 1, TP 64, LNC 2, context buckets 2048/4096/8192/12288; "
                    + NEURON_SDK + "trn2-llama3.3-70b-tutorial.rst"},
    {"name": "Llama-3.1-405B TTFT, 10,000-token prompt, trn2.48xlarge (16 Trn2), TP64 bf16",
     "model": "405b", "bucket": 10240, "chips": 16, "published_s": 2.441959390998818,
     "source_text": "AWS Neuron, \"Using Speculative Decoding and Quantization to improve "
                    "Llama-3.1-405B inference performance on Trn2\" (part 1, bf16 baseline): "
                    "ttft_s p50 2.442 s, LLMPerf 10,000 input tokens, batch 1, TP 64, LNC 2, "
                    "context buckets 2048/4096/10240/12288; "
                    + NEURON_SDK + "trn2-llama3.1-405b-speculative-tutorial.rst"},
]


def llama_405b() -> ModelSpec:
    """Llama-3.1-405B (Meta's config.json: hidden 16384, 126 layers, 128 heads, 8 kv heads,
    intermediate 53248, vocabulary 128256, llama3 RoPE)."""
    rope = RopeSpec(500000.0, "llama3", 8.0, 1.0, 4.0, 8192)
    return ModelSpec("LlamaForCausalLM", 16384, 53248, 126, 128, 8, 128, 128256, 1e-5, "silu",
                     False, False, False, 131072, "bfloat16", rope)


def model(name: str) -> ModelSpec:
    """A model of the benchmark by short name."""
    if name == "405b":
        return llama_405b()
    if name in ("gpt-oss-120b", "qwen3-235b-a22b"):
        from compiler.frontend import resolve_model
        return resolve_model(name)
    return load_config(MODELS / {"8b": "llama-3.1-8b.json", "70b": "llama-3.1-70b.json"}[name])


def timed(fn):
    """(result, host wall seconds, host CPU seconds) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def prefill_case(model_name, hw_name, prompt_len, chips=None, dtype="bf16",
                 chunk=None, weight_dtype=None, stages=1) -> dict:
    """One timing-only prefill with its host cost (and, chunked, the KV stream)."""
    spec, hw = model(model_name), load_prefill(hw_name)
    r, wall, cpu = timed(lambda: run_prefill(spec, hw, prompt_len, dtype=dtype,
                                             timing_only=True, chips=chips, chunk=chunk,
                                             weight_dtype=weight_dtype, stages=stages))
    stored, represented = r.instructions()
    per_token = spec.kv_bytes_per_token(2 if dtype != "fp8" else 1)
    link = load_link("efa")
    segments = (chunk_segments(r.chunk_rows, per_token) if r.chunk
                else [(r.seconds, per_token * prompt_len)])
    kv = stream_kv(segments, per_token, link)
    return {"model": model_name, "prefill_hw": hw.name, "prompt_len": prompt_len,
            "weight_dtype": r.weight_dtype, "chunk": r.chunk, "chunks": len(r.chunk_rows),
            "kv_exposed_s": kv.exposed_seconds, "kv_seconds": kv.seconds,
            "dtype": r.dtype, "chips": r.chips, "host_wall_s": wall, "host_cpu_s": cpu,
            "predicted_s": r.seconds, "roofline_s": r.roofline_seconds,
            "roofline_fraction": r.roofline_seconds / r.seconds, "flops": r.flops,
            "instructions_stored": stored, "instructions_represented": represented,
            "layers_simulated": r.schedule.simulated_layers,
            "engine_utilization": r.engine_utilization,
            "stages": stages, "pipelined_s": r.pipeline.seconds if r.pipeline else r.seconds,
            "bubble": r.pipeline.bubble if r.pipeline else 0.0}


def calibration_rows() -> list[dict]:
    """emu's prefill time next to each published TTFT (rows for benchmarks/calibrate.py)."""
    rows = []
    for fig in PUBLISHED:
        case = prefill_case(fig["model"], "trn2-48xl", fig["bucket"], fig["chips"])
        ratio = fig["published_s"] / case["predicted_s"]
        rows.append({"name": fig["name"], "unit": "ms", "predicted": case["predicted_s"] * 1e3,
                     "published": fig["published_s"] * 1e3, "source": "prefill",
                     "source_text": fig["source_text"], "ratio": ratio,
                     "explanation": _explain(fig, case, ratio)})
    return rows


def _explain(fig: dict, case: dict, ratio: float) -> str:
    util = case["engine_utilization"]
    return (f"emu: timing-only prefill of the {fig['bucket']:,}-token context bucket on "
            f"{case['chips']} Trn2 chips ({case['chips'] * 8} physical cores, tensor parallel "
            f"over all of them; collectives as rings over each chip's cores and over the "
            f"chips), {case['predicted_s'] * 1e3:.0f} ms against a roofline of "
            f"{case['roofline_s'] * 1e3:.0f} ms ({100 * case['roofline_fraction']:.0f} % of "
            f"it; TensorE {100 * util['tensor']:.0f} %, DMA {100 * util['dma']:.0f} % busy). "
            f"The measured TTFT also holds what emu does not model: the vLLM/LLMPerf request "
            f"path, on-device sampling of the first token, padding and NEFF launch "
            f"overheads; Neuron runs TP 64 on logical cores (two physical cores each) where "
            f"emu splits over the 128 physical cores. Ratio {ratio:.2f} (measured / emu): "
            f"{'within' if 0.7 <= ratio <= 1.4 else 'outside'} 0.7-1.4.")


def gemm_case() -> dict:
    hw = load_prefill("trn2")
    compat, t_compat, _ = timed(lambda: gemm_scalesim(512, 4096, 4096))
    trn, t_trn, _ = timed(lambda: gemm_trainium(hw, 512, 4096, 4096))
    return {"scalesim_ws_compute_cycles": compat.compute_cycles,
            "scalesim_host_ms": 1e3 * t_compat, "trainium_total_cycles": trn.total_cycles,
            "trainium_compute_cycles": trn.compute_cycles,
            "trainium_utilization": trn.utilization, "trainium_host_ms": 1e3 * t_trn}


def run_case(name: str) -> dict:
    """Run one case in this process; adds the process's peak resident memory."""
    if name == "gemm":
        out = gemm_case()
    elif name == "70b-16xtrn2":
        out = prefill_case("70b", "trn2-48xl", 32768, chips=16)
    elif name == "8b-trn3-128k":
        out = prefill_case("8b", "trn3", 131072)
    elif name == "405b-trn2":
        out = prefill_case("405b", "trn2-48xl", 10240)
    elif name == "8b-trn3-fp8":
        out = {"bf16": prefill_case("8b", "trn3", 32768),
               "fp8": prefill_case("8b", "trn3", 32768, dtype="fp8")}
    elif name == "moe":
        out = {"cases": [prefill_case(m, "trn2-48xl", p, dtype=dt, weight_dtype=wd)
                         for m, dt, wd in (("gpt-oss-120b", "bf16", "mxfp4"),
                                           ("qwen3-235b-a22b", "bf16", None),
                                           ("qwen3-235b-a22b", "fp8", None))
                         for p in (1024, 8192)]
               + [prefill_case("gpt-oss-120b", hw, 1024, dtype=dt, weight_dtype=wd)
                  for hw, dt, wd in (("trn2-48xl", "bf16", None),
                                     ("trn3-ultraserver", "fp8", "mxfp4"),
                                     ("trn3-ultraserver", "bf16", "mxfp4"))]}
    elif name == "70b-pipeline":
        out = {"cases": [prefill_case("70b", "trn2-48xl", 32768, chips=16),
                         prefill_case("70b", "trn2-48xl", 32768, chips=4, stages=4,
                                      chunk=4096),
                         prefill_case("70b", "trn2-48xl", 32768, chips=2, stages=8,
                                      chunk=2048)]}
    elif name == "8b-trn2-chunked":
        out = {"cases": [prefill_case("8b", "trn2", 32768, chunk=c)
                         for c in (None, 8192, 2048)]}
    else:
        out = {"rows": calibration_rows()}
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def describe(name: str, r: dict) -> list[str]:
    """Human-readable lines of one case."""
    def pre(p):
        return (f"{p['model']} {p['prompt_len']:,} tokens {p['dtype']} on {p['chips']} x "
                f"{p['prefill_hw']}: predicted {p['predicted_s'] * 1e3:,.1f} ms (roofline "
                f"{p['roofline_s'] * 1e3:,.1f} ms, {100 * p['roofline_fraction']:.0f} %); "
                f"host {p['host_wall_s']:.2f} s wall, {p['host_cpu_s']:.2f} s CPU; "
                f"{p['instructions_stored']:,} instructions stored for "
                f"{p['instructions_represented']:,}, {p['layers_simulated']} layers simulated")
    mem = f"peak memory {r['peak_rss_gib']:.2f} GiB"
    if name == "gemm":
        return [f"GEMM 512x4096x4096: SCALE-Sim WS {r['scalesim_ws_compute_cycles']:,} "
                f"compute cycles; Trainium mode {r['trainium_total_cycles']:,} cycles "
                f"({100 * r['trainium_utilization']:.1f} % utilisation), host "
                f"{r['trainium_host_ms']:.1f} ms"]
    if name == "8b-trn3-fp8":
        b, f = r["bf16"], r["fp8"]
        return [pre(b), pre(f), f"fp8 / bf16 predicted time: "
                                f"{f['predicted_s'] / b['predicted_s']:.2f}; {mem}"]
    if name == "moe":
        return [pre(p) + f"; weights {p['weight_dtype']}; TTFT (prefill + KV exposed on "
                f"efa) {(p['predicted_s'] + p['kv_exposed_s']) * 1e3:,.1f} ms"
                for p in r["cases"]] + [mem]
    if name == "8b-trn2-chunked":
        return [pre(p) + f"; chunk {p['chunk'] or 'none'} ({p['chunks']} pass(es)): KV "
                f"{p['kv_seconds'] * 1e3:.1f} ms on efa, exposed after prefill "
                f"{p['kv_exposed_s'] * 1e3:.1f} ms" for p in r["cases"]] + [mem]
    if name == "70b-pipeline":
        return [f"{p['stages']} stage(s) x {p['chips']} chip(s), chunk {p['chunk'] or 'none'}: "
                f"prefill {p['pipelined_s'] * 1e3:,.1f} ms (one stage group alone "
                f"{p['predicted_s'] * 1e3:,.1f} ms), bubble {100 * p['bubble']:.1f} %, host "
                f"{p['host_wall_s']:.2f} s" for p in r["cases"]] + [mem]
    if name == "calibration":
        return [f"{row['name']}: emu {row['predicted']:,.0f} ms, published "
                f"{row['published']:,.0f} ms, ratio {row['ratio']:.2f}" for row in r["rows"]]
    return [pre(r) + f"; {mem}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=CASES,
                        help="run only these cases (default: all)")
    parser.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.inline:                       # child process: one case, JSON on stdout
        print(json.dumps(run_case(args.case[0])))
        return
    results = {}
    for name in args.case or CASES:
        proc = subprocess.run([sys.executable, __file__, "--inline", "--case", name],
                              capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout)
        if not args.json:
            for line in describe(name, results[name]):
                print(f"[{name}] {line}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
