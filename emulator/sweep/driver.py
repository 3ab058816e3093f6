"""Run a sweep on a Dask cluster: one task per point, results cached as they arrive.

`run_sweep(spec, out, client)` prepares every point on the client (presets loaded and
overridden, keys computed; bad specs fail here, before any work), takes finished points
from the cache, submits the rest as Dask tasks (`run_point(function, options, cache
file)`, task key `emu-point-KEY`, so identical points run once), caches each result as it
arrives (the worker has already written it when it shares the folder), and writes the
result tables at the end. A worker that dies mid-task loses nothing: the scheduler runs
the task again on another worker. On Ctrl-C the results that have already arrived are
cached before the sweep stops, so the same command resumes it.
"""

from dataclasses import dataclass, field
from pathlib import Path

from emulator.sweep.points import Point, prepare, run_point
from emulator.sweep.store import (
    build_rows,
    cache_meta,
    cache_path,
    check_out_dir,
    read_cached,
    write_cached,
    write_results,
)


@dataclass
class SweepOutcome:
    """What a sweep did: rows in point order, result files, counts."""

    rows: list[dict]
    files: list[Path]
    points: list[Point] = field(repr=False)
    computed: int = 0      # points run by this sweep
    cached: int = 0        # points taken from the cache
    failed: int = 0        # rows whose status is not 'ok'


def local_client(workers: int, dashboard: str = ":0"):
    """A Dask client on a new LocalCluster of `workers` single-threaded worker processes
    (the emulator's kernels hold the GIL: one point per process). The workers ignore
    Ctrl-C, which reaches the whole process group: the client stops them."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=dashboard, silence_logs=logging.ERROR)
    client = Client(cluster)
    client.register_plugin(IgnoreInterrupts(), name="emu-ignore-interrupts")
    return client


def _ignore_interrupts() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:      # pragma: no cover - distributed is a dependency
    WorkerPlugin = object


class IgnoreInterrupts(WorkerPlugin):
    """A worker plugin (also applied to restarted workers): SIGINT is ignored."""

    def setup(self, worker) -> None:
        _ignore_interrupts()


def remote_client(address: str, timeout: float = 10.0):
    """A Dask client of an existing scheduler (tcp://HOST:PORT); ConfigError when it does
    not answer."""
    from distributed import Client

    from emulator.hw.errors import ConfigError

    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"--scheduler {address}: cannot connect ({one_line_text(exc)})") \
            from None


def one_line_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_sweep(spec, out, client, progress=None, points: list[Point] | None = None
              ) -> SweepOutcome:
    """Run every point of `spec` not in `out`'s cache on `client`; write the results.

    `points`: the spec's prepared points when the caller has already prepared them (to
    check the spec before starting a cluster). `progress(done, total)` is called once the
    cached points are counted and after each point finishes."""
    out = check_out_dir(out)
    points = prepare(spec) if points is None else points
    results: dict = {}
    for point in points:
        entry = read_cached(out, point.key)
        if entry is not None:
            results[point.key] = entry
    cached = sum(1 for p in points if p.key in results)
    todo = {p.key: p for p in points if p.key not in results}
    total = len(points)

    def report_progress():
        if progress is not None:
            done = sum(1 for p in points if p.key in results)
            progress(done, total)

    report_progress()
    computed = 0
    if todo:
        computed = _compute(spec, out, client, todo, results, report_progress)
    rows = build_rows(points, results)
    files = write_results(out, rows)
    failed = sum(1 for row in rows if row["status"] != "ok")
    return SweepOutcome(rows, files, points, computed, cached, failed)


def _compute(spec, out: Path, client, todo: dict, results: dict, report_progress) -> int:
    """Submit the points of `todo`, cache each result as it arrives; returns the count."""
    from distributed import as_completed

    futures = {client.submit(run_point, spec.function, point.options,
                             str(cache_path(out, key).resolve()),
                             cache_meta(key, spec.command, point.params),
                             key=f"emu-point-{key}", pure=False): key
               for key, point in todo.items()}
    computed = 0
    try:
        for future in as_completed(futures):
            key = futures[future]
            results[key] = _collect(spec, out, todo[key], future)
            computed += 1
            report_progress()
    except BaseException:
        # Interrupted: keep whatever has finished, then stop the rest.
        for future, key in futures.items():
            if key not in results and future.status == "finished":
                results[key] = _collect(spec, out, todo[key], future)
        client.cancel(list(futures))
        raise
    return computed


def _collect(spec, out: Path, point: Point, future) -> dict:
    """The result of a finished future, cached when it is a result of the point (not a
    failure of the cluster, such as a task whose workers kept dying)."""
    try:
        result = future.result()
    except Exception as exc:  # noqa: BLE001 - recorded in the row, the sweep goes on
        return {"status": f"dask: {type(exc).__name__}: {one_line_text(exc)}", "values": {},
                "host_seconds": None, "cacheable": False}
    if result.pop("cacheable", False) and read_cached(out, point.key) is None:
        write_cached(out, point.key, spec.command, point.params, result)
    return result
