"""`emu sweep` scaling: the same 16 points on a LocalCluster of 1 and of 2 workers.

The points are functional `emu run`s of the bundled tiny model (64 new tokens, prompts of
64-160 tokens, two SRAM sizes, bf16 and fp32), about 1 s each. For reference the bench
first times the same points one by one in this process (no Dask). Each measurement starts a
fresh LocalCluster, warms every worker with one small run (imports and Numba's cached
kernels load; not timed), then times `run_sweep` from submission to the written result
tables in a fresh output folder (no cache hits). Worker counts alternate (1, 2, 1, 2, ...)
so that load from other processes on a shared machine hits both alike; the 1-minute load
average before each measurement is printed with it.

    python benchmarks/bench_sweep.py [--repeats 2] [--by-hand]

`--by-hand` starts the cluster as docs/sweeps.md "A cluster by hand" does (`dask
scheduler` and one `dask worker --nthreads 1` per worker, each in its own session) and
runs the sweep through its address. On Linux with autogroup scheduling
(/proc/sys/kernel/sched_autogroup_enabled = 1) CPU time is shared fairly between
sessions, not processes: a LocalCluster's workers share their session's one share, so on a
machine busy with other sessions a second worker gets no more CPU; workers in their own
sessions each get a share, as workers on separate machines would.

Prints one line per measurement (wall seconds; the workers' CPU seconds over the sweep and
the cores they kept busy on average, which shows how much CPU the machine gave them) and
the speed-up (median 1-worker seconds / median
2-worker seconds). Target on a 2-core machine: >= 1.6x.
"""

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
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


def measure(workers: int, spec_path: Path, by_hand: bool = False) -> tuple[float, float]:
    """(wall seconds, worker CPU seconds) of one sweep of SPEC on a fresh, warmed cluster of
    `workers`: a LocalCluster, or with `by_hand` cluster_by_hand."""
    from emulator.sweep import load_spec, run_sweep

    spec = load_spec(spec_path)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(tempfile.TemporaryDirectory())
        if by_hand:
            client = stack.enter_context(cluster_by_hand(workers, Path(out)))
        else:
            from distributed import Client, LocalCluster

            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=":0", silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        client.run(warm_up)
        cpu_before = client.run(time.process_time)
        started = time.perf_counter()
        outcome = run_sweep(spec, Path(out) / "sweep", client)
        seconds = time.perf_counter() - started
        cpu_after = client.run(time.process_time)
        cpu = sum(cpu_after[w] - cpu_before[w] for w in cpu_after)
    if outcome.failed or outcome.computed != len(spec.points):
        raise SystemExit(f"bench_sweep: {outcome.failed} points failed, "
                         f"{outcome.computed} computed")
    return seconds, cpu


@contextlib.contextmanager
def cluster_by_hand(workers: int, folder: Path):
    """A scheduler and `workers` single-threaded workers, each in its own session; yields a
    connected Client; stops the processes it started (by their ids)."""
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    scheduler_file = folder / f"scheduler-{workers}.json"
    scheduler_file.unlink(missing_ok=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "start_new_session": True}
    procs = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(scheduler_file),
                               "--no-dashboard", "--port", "0"], **quiet)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            if time.monotonic() > deadline:
                raise SystemExit("bench_sweep: the scheduler did not start")
            time.sleep(0.1)
        procs += [subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file),
                                    "--nthreads", "1", "--nworkers", "1", "--no-dashboard"],
                                   **quiet) for _ in range(workers)]
        with Client(scheduler_file=str(scheduler_file)) as client:
            client.wait_for_workers(workers, timeout=120)
            yield client
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2,
                        help="measurements per worker count (alternating)")
    parser.add_argument("--by-hand", action="store_true",
                        help="dask scheduler + one dask worker per session, not a LocalCluster")
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        spec_path = Path(folder) / "bench.json"
        spec_path.write_text(json.dumps(SPEC))
        points = 1
        for values in SPEC["grid"].values():
            points *= len(values)
        kind = "workers in their own sessions (--by-hand)" if args.by_hand else "LocalCluster"
        print(f"{points} points, cores: {os.cpu_count()}, {kind}")
        load = os.getloadavg()[0]
        print(f"one by one in this process: {serial(spec_path):6.2f} s  load before: {load:.2f}",
              flush=True)
        for _ in range(args.repeats):
            for workers in (1, 2):
                load = os.getloadavg()[0]
                seconds, cpu = measure(workers, spec_path, args.by_hand)
                times[workers].append(seconds)
                print(f"workers={workers}  {seconds:6.2f} s  ({points / seconds:.2f} points/s)"
                      f"  worker CPU {cpu:6.2f} s = {cpu / seconds:.2f} cores busy"
                      f"  load before: {load:.2f}", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"median: 1 worker {one:.2f} s, 2 workers {two:.2f} s, speed-up {one / two:.2f}x "
          f"(target >= 1.6x)")


if __name__ == "__main__":
    main()
