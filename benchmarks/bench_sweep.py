"""`emu sweep` scaling: the same 16 points on a LocalCluster of 1 and of 2 workers.

The points are functional `emu run`s of the bundled tiny model (64 new tokens, prompts of
64-160 tokens, two SRAM sizes, bf16 and fp32), about 1 s each. For reference the bench
first times the same points one by one in this process (no Dask). Each measurement starts a
fresh LocalCluster, warms every worker with one small run (imports and Numba's cached
kernels load; not timed), then times `run_sweep` from submission to the written result
tables in a fresh output folder (no cache hits). Worker counts alternate (1, 2, 1, 2, ...)
so that load from other processes on a shared machine hits both alike; the 1-minute load
average before each measurement is printed with it.

    python benchmarks/bench_sweep.py [--repeats 2]

Prints one line per measurement (wall seconds; the workers' CPU seconds over the sweep and
the cores they kept busy on average, which shows how much CPU the machine gave them) and
the speed-up (median 1-worker seconds / median
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
    "fixed": {"max_new_tokens": 64, "prefill_hw": "trn2"},
    "grid": {"hw.sram_bytes": [32768, 49152], "dtype": ["bf16", "fp32"],
             "prompt_len": [64, 96, 128, 160]},
}


def warm_up() -> int:
    """One small run on a worker (imports, Numba cache); returns the worker's pid."""
    from emulator.run import run_report

    run_report(timing_only=True, max_new_tokens=2)
    return os.getpid()


def serial(spec_path: Path) -> float:
    """Seconds to run the points one by one in this process (the library calls a worker
    makes, without Dask)."""
    from emulator.sweep import load_spec
    from emulator.sweep.points import prepare, run_point

    spec = load_spec(spec_path)
    points = prepare(spec)
    warm_up()
    started = time.perf_counter()
    for point in points:
        assert run_point(spec.function, point.options)["status"] == "ok"
    return time.perf_counter() - started


def measure(workers: int, spec_path: Path) -> tuple[float, float]:
    """(wall seconds, worker CPU seconds) of one sweep of SPEC on a fresh, warmed
    LocalCluster of `workers`."""
    from distributed import Client, LocalCluster

    from emulator.sweep import load_spec, run_sweep

    spec = load_spec(spec_path)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client, tempfile.TemporaryDirectory() as out:
        client.run(warm_up)
        cpu_before = client.run(time.process_time)
        started = time.perf_counter()
        outcome = run_sweep(spec, out, client)
        seconds = time.perf_counter() - started
        cpu_after = client.run(time.process_time)
        cpu = sum(cpu_after[w] - cpu_before[w] for w in cpu_after)
    if outcome.failed or outcome.computed != len(spec.points):
        raise SystemExit(f"bench_sweep: {outcome.failed} points failed, "
                         f"{outcome.computed} computed")
    return seconds, cpu


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
        load = os.getloadavg()[0]
        print(f"one by one in this process: {serial(spec_path):6.2f} s  load before: {load:.2f}",
              flush=True)
        for _ in range(args.repeats):
            for workers in (1, 2):
                load = os.getloadavg()[0]
                seconds, cpu = measure(workers, spec_path)
                times[workers].append(seconds)
                print(f"workers={workers}  {seconds:6.2f} s  ({points / seconds:.2f} points/s)"
                      f"  worker CPU {cpu:6.2f} s = {cpu / seconds:.2f} cores busy"
                      f"  load before: {load:.2f}", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"median: 1 worker {one:.2f} s, 2 workers {two:.2f} s, speed-up {one / two:.2f}x "
          f"(target >= 1.6x)")


if __name__ == "__main__":
    main()
