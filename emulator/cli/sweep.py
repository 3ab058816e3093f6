"""`emu sweep SPEC --out DIR`: run one emu command over the points of a spec on Dask.

A thin wrapper over `emulator.sweep`: a LocalCluster of `--workers` processes (default:
one per core) or an existing scheduler (`--scheduler tcp://HOST:PORT`), a rich progress
bar and the Dask dashboard address on stderr, a summary on stdout. Bad specs and options
exit 2 with one line before any point runs (docs/sweeps.md).
"""

import os

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from emulator.hw.errors import ConfigError


@click.command("sweep")
@click.argument("spec_path", metavar="SPEC")
@click.option("--out", "out_dir", required=True, metavar="DIR",
              help="Folder for results.parquet, results.csv, cache/ and plots/.")
@click.option("--workers", type=int, metavar="N", help="Worker processes of a local Dask cluster "
                                          "(default: one per core).")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="Address of an existing Dask scheduler (instead of a local cluster).")
@click.option("--plots", is_flag=True, help="Write PNGs into DIR/plots: the Pareto frontier "
                                            "and, for two-axis grids, a heatmap.")
@click.option("--pareto", metavar="X[:min|max],Y[:min|max]",
              help="The two columns of the frontier (default: the command's).")
@click.option("--metric", metavar="NAME", help="The heatmap's column (default: the command's).")
def sweep(spec_path, out_dir, workers, scheduler, plots, pareto, metric):
    """Run the points of SPEC (JSON or YAML) and write DIR/results.parquet and .csv."""
    from emulator.sweep import load_spec, local_client, remote_client, run_sweep
    from emulator.sweep.plots import write_sweep_plots
    from emulator.sweep.points import prepare
    from emulator.sweep.store import check_out_dir

    if workers is not None and scheduler:
        raise ConfigError("give either --workers or --scheduler, not both")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    spec = load_spec(spec_path)
    pareto_cols = _pareto_option(pareto, spec) if plots else None
    metric = metric or (spec.registration.metric if spec.registration else None)
    if plots and metric is None and pareto_cols is None:
        raise ConfigError("--plots: give --pareto X,Y and/or --metric NAME for a command "
                          "that is not registered")
    check_out_dir(out_dir)
    points = prepare(spec)          # every preset override checked before the cluster starts
    console = Console(stderr=True)
    if not scheduler:
        _quiet_resource_tracker()
    client = remote_client(scheduler) if scheduler else local_client(
        workers or os.cpu_count() or 1)
    try:
        console.print(f"dask dashboard: {client.dashboard_link}")
        bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), console=console, transient=False)
        task = bar.add_task("sweep", total=len(spec.points))
        with bar:
            outcome = run_sweep(spec, out_dir, client,
                                lambda done, total: bar.update(task, completed=done,
                                                               total=total),
                                points)
    finally:
        _close(client, own=not scheduler)
    pictures = write_sweep_plots(spec, outcome.rows, out_dir, pareto_cols, metric) \
        if plots else []
    click.echo(f"{len(outcome.rows)} points: {len(outcome.rows) - outcome.failed} ok, "
               f"{outcome.failed} failed; {outcome.computed} computed, {outcome.cached} "
               f"from the cache")
    for path in outcome.files + pictures:
        click.echo(f"wrote {path}")


def _pareto_option(text: str | None, spec) -> tuple[str, str] | None:
    """(x, y) of --pareto, or the command's default frontier."""
    if text is None:
        return spec.registration.pareto if spec.registration else None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--pareto: expected two columns X,Y (e.g. "
                          f"decode.sram.total_bytes:min,tokens_per_s:max), got '{text}'")
    return parts[0], parts[1]


def _close(client, own: bool) -> None:
    """Close the client, and the local cluster it started. After Ctrl-C, what the
    cluster's event loop logs while it is torn down mid-task is noise: it is muted, so
    'emu: interrupted' is the one line."""
    import sys

    if isinstance(sys.exc_info()[1], KeyboardInterrupt):
        _mute_logs()
        if own:
            try:
                client.run(_mute_logs)      # the workers' heartbeats fail as the cluster goes
            except Exception:  # noqa: BLE001 - best effort; the cluster closes anyway
                pass
    cluster = client.cluster if own else None
    client.close()
    if cluster is not None:
        cluster.close()


def _quiet_resource_tracker() -> None:
    """After Ctrl-C the local cluster's processes can leave semaphores that
    multiprocessing's resource tracker (a child process that reads PYTHONWARNINGS) cleans
    up with a warning on stderr; it is noise there, so that one warning is filtered."""
    quiet = "ignore:resource_tracker:UserWarning"
    current = os.environ.get("PYTHONWARNINGS")
    if not current or quiet not in current.split(","):
        os.environ["PYTHONWARNINGS"] = f"{current},{quiet}" if current else quiet


def _mute_logs() -> None:
    """Log nothing below CRITICAL from Dask, tornado and asyncio in this process."""
    import logging

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


COMMANDS = [sweep]
