"""emu serve host speed: 100,000 requests through the SimPy cluster once costs are cached.

Measures the host seconds of `Simulation.run` (target: at most 60 s) for a synthetic chat
stream (Poisson arrivals, prompts lognormal:400,0.9 clipped to the model's range, outputs
lognormal:200,0.7) on 4 prefill x 4 decode instances with 16 users per decode instance.
Costs come from the emulators (tiny bundled model on the `small` mesh by default, or
`--model` and `--hw`), measured once and cached on disk; the cost measurement's host
time is reported separately (cached: near zero on the second run).

Usage: python benchmarks/bench_serve.py [--requests 100000] [--rate R] [--model tiny]
       [--hw small] [--prefill-hw trn2] [--json]
"""

import argparse
import json
import time

import numpy as np

from compiler.frontend import resolve_model
from emulator.hw.link import load_link
from emulator.hw.mesh import load_mesh
from emulator.hw.prefill import load_prefill
from emulator.serve.costs import default_cache_dir, measure_costs
from emulator.serve.report import build_report
from emulator.serve.runner import ServeRequest, bill_for, cluster_for
from emulator.serve.sim import Simulation
from emulator.serve.workload import Workload, parse_dist, synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests/s (default: about 70 %% of the decode capacity)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--hw", default="small")
    parser.add_argument("--prefill-hw", default="trn2")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    spec = resolve_model(args.model)
    mesh, chip = load_mesh(args.hw), load_prefill(args.prefill_hw)
    started = time.perf_counter()
    limit = min(spec.max_position_embeddings, 4096)
    costs = measure_costs(spec, args.model, mesh, chip, prompt_limit=limit // 2,
                          context_limit=limit, max_batch=args.max_batch,
                          cache_dir=default_cache_dir())
    measure_s = time.perf_counter() - started

    isl, osl = parse_dist("lognormal:400,0.9"), parse_dist("lognormal:200,0.7", "--osl")
    prompt_cap = costs.max_prompt_tokens
    out_cap = max(2, costs.max_context - prompt_cap)
    rate = args.rate
    if not rate:
        # decode capacity: users x instances / (output tokens x step at a typical batch)
        step = costs.decode_step_seconds(np.full(args.max_batch, costs.max_context // 2))
        rate = 0.7 * 4 * args.max_batch / (min(200, out_cap) * step)
    w = synthetic(rate, args.requests, isl, osl, seed=0)
    w = Workload(w.arrival_s, np.clip(w.prompt_tokens, 1, prompt_cap),
                 np.clip(w.output_tokens, 1, out_cap), w.source)
    req = ServeRequest(spec=spec, model_name=args.model, workload=w, prefill_hw=chip, mesh=mesh,
                       link=load_link("efa"), prefill_instances=4, decode_instances=4,
                       max_batch=args.max_batch)
    started, cpu = time.perf_counter(), time.process_time()
    sim = Simulation(w, costs, cluster_for(req)).run()
    sim_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    report = build_report(sim, bill_for(req), None, None)
    out = {"requests": args.requests, "rate_rps": rate, "host_seconds": sim_s,
           "host_cpu_seconds": cpu_s,
           "target_seconds": 60.0, "cost_measure_host_seconds": measure_s,
           "completed": report["completed"], "rejected": report["rejected"],
           "simulated_seconds": report["duration_s"],
           "utilization": report["utilization"], "tpot_p99_s": report["tpot_s"]["p99"]}
    if args.json:
        print(json.dumps(out))
        return
    print(f"emu serve: {args.requests:,} requests at {rate:.3g}/s on 4 prefill x 4 decode "
          f"({args.model}, {chip.name} -> {mesh.name}, batch {args.max_batch})")
    print(f"  simulation host time   {sim_s:8.2f} s   (target <= 60 s; CPU {cpu_s:.2f} s)")
    print(f"  cost measurement       {measure_s:8.2f} s   (cached after the first run)")
    print(f"  simulated span         {report['duration_s']:8.2f} s, completed "
          f"{report['completed']:,}, rejected {report['rejected']:,}")
    u = report["utilization"]
    print(f"  utilisation            prefill {u['prefill']:.1%}, decode {u['decode']:.1%}, "
          f"link {u['link']:.1%}")


if __name__ == "__main__":
    main()
