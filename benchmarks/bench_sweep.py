"""`emu sweep` scaling: the same 16 points on a LocalCluster of 1 and of 2 workers.

The points are functional `emu run`s of the bundled tiny model (32 new tokens, prompts of
64-160 tokens, two SRAM sizes, bf16 and fp32), about 1 s each. Each measurement starts a
fresh LocalCluster, warms every worker with one small run (imports and Numba's cached
kernels load; not timed), then times `run_sweep` from submission to the written result
tables in a fresh output folder (no cache hits). Worker counts alternate (1, 2, 1, 2, ...)
so that load from other processes on a shared machine hits both alike; the 1-minute load
average before each measurement is printed with it.

    python benchmarks/bench_sweep.py [--repeats 2]

Prints one line per measurement and the speed-up (median 1-worker seconds / median
2-worker seconds). Target on a 2-core machine: >= 1.6x.
"""

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

SPEC = {
    "command": "run",
    "fixed": {"max_new_tokens": 32, "prefill_hw": "trn2"},
    "grid": {"hw.sram_bytes": [32768, 49152], "dtype": ["bf16", "fp32"],
             "prompt_len": [64, 96, 128, 160]},
}


def warm_up() -> int:
    """One small run on a worker (imports, Numba cache); returns the worker's pid."""
    from emulator.run import run_report

    run_report(timing_only=True, max_new_tokens=2)
    return os.getpid()


def measure(workers: int, spec_path: Path) -> float:
    """Seconds of one sweep of SPEC on a fresh, warmed LocalCluster of `workers`."""
    from distributed import Client, LocalCluster

    from emulator.sweep import load_spec, run_sweep

    spec = load_spec(spec_path)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client, tempfile.TemporaryDirectory() as out:
        client.run(warm_up)
        started = time.perf_counter()
        outcome = run_sweep(spec, out, client)
        seconds = time.perf_counter() - started
    if outcome.failed or outcome.computed != len(spec.points):
        raise SystemExit(f"bench_sweep: {outcome.failed} points failed, "
                         f"{outcome.computed} computed")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2,
                        help="measurements per worker count (alternating)")
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        spec_path = Path(folder) / "bench.json"
        spec_path.write_text(json.dumps(SPEC))
        points = 1
        for values in SPEC["grid"].values():
            points *= len(values)
        print(f"{points} points, cores: {os.cpu_count()}")
        for _ in range(args.repeats):
            for workers in (1, 2):
                load = os.getloadavg()[0]
                seconds = measure(workers, spec_path)
                times[workers].append(seconds)
                print(f"workers={workers}  {seconds:6.2f} s  ({points / seconds:.2f} points/s)"
                      f"  load before: {load:.2f}", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"median: 1 worker {one:.2f} s, 2 workers {two:.2f} s, speed-up {one / two:.2f}x "
          f"(target >= 1.6x)")


if __name__ == "__main__":
    main()
