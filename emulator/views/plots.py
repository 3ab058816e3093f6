"""PNG pictures of an `emu run` (needs the `plot` extra, matplotlib).

- `sram.png`: SRAM bytes used per PE (heatmap over the mesh).
- `busy.png`: busy cycles per PE during the last decode step.
- `links.png`: wavelets carried by each PE's outgoing links (sum of N, E, S, W) in that step.
- `time.png`: a stacked bar of where the time to the first token and one token goes.
- `batch_sweep.png` (`emu run --batch-sweep`): per-user tokens/s against aggregate
  tokens/s, one point per batch size (the throughput-latency curve).
"""

from pathlib import Path

import numpy as np

from compiler.numerics import dtype_bytes
from compiler.place import pe_usage
from emulator.files import atomic_write_bytes
from emulator.hw.errors import ConfigError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plots needs matplotlib: pip install 'emu-wafer[plot]'") from None
    return plt


def _save(fig, path) -> None:
    """PNG bytes of `fig` into `path`: a file (written atomically) or a dict (kept)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    if isinstance(path, tuple):
        files, name = path
        files[name] = buffer.getvalue()
    else:
        atomic_write_bytes(path, buffer.getvalue())


def heatmap(values: np.ndarray, title: str, unit: str, path, cmap: str = "viridis"):
    """One mesh heatmap: x to the right, y down (row 0 at the top, as in the mesh)."""
    plt = _pyplot()
    ph, pw = values.shape
    fig, ax = plt.subplots(figsize=(min(12, 3 + pw * 0.25), min(10, 2.5 + ph * 0.25)))
    image = ax.imshow(values, cmap=cmap, interpolation="nearest", aspect="equal")
    ax.set_title(title)
    ax.set_xlabel("x (PE column)")
    ax.set_ylabel("y (PE row)")
    fig.colorbar(image, ax=ax, label=unit, shrink=0.8)
    _save(fig, path)
    plt.close(fig)


def time_bars(report: dict, path) -> None:
    """Stacked bars: TTFT = prefill + exposed KV transfer + layout; TPOT = decode step."""
    plt = _pyplot()
    kv = report["kv_transfer"]
    parts = [("prefill", report["prefill"]["seconds"], "tab:blue"),
             ("KV transfer (exposed)", kv["exposed_seconds"], "tab:orange"),
             ("KV layout", kv["layout_seconds"], "tab:green")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    left = 0.0
    for label, seconds, color in parts:
        ax.barh("first token", seconds * 1e6, left=left, color=color, label=label)
        left += seconds * 1e6
    ax.barh("each next token", report["tpot_s"] * 1e6, color="tab:red", label="decode step")
    ax.set_xlabel("microseconds")
    ax.set_title(f"where the time goes: {report['model']['name']} ({report['dtype']})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=8,
              frameon=False)
    _save(fig, path)
    plt.close(fig)


PLOT_NAMES = ("sram.png", "busy.png", "links.png", "time.png")


def render_plots(outcome, req) -> dict[str, bytes]:
    """Every picture of a run: file name -> PNG bytes (nothing written)."""
    files: dict[str, bytes] = {}
    compiled = outcome.compiled
    plan = compiled.plan
    used = pe_usage(compiled.placement) * dtype_bytes(req.dtype)
    heatmap(used, f"SRAM used per PE ({plan.pw}x{plan.ph}, of {req.mesh.sram_bytes} B)",
            "bytes", (files, "sram.png"))
    step = outcome.last_step
    if step is not None:
        heatmap(step.pe_busy.reshape(plan.ph, plan.pw),
                f"busy cycles per PE, one decode step ({step.cycles} cycles)", "cycles",
                (files, "busy.png"), "magma")
        heatmap(step.link_busy.sum(axis=1).reshape(plan.ph, plan.pw),
                "wavelets sent on each PE's outgoing links, one decode step", "wavelets",
                (files, "links.png"), "cividis")
    time_bars(outcome.report, (files, "time.png"))
    return files


def write_plots(outcome, req, directory) -> list[Path]:
    """Write every picture of a run into `directory` (each atomically); returns the paths."""
    directory = Path(directory)
    paths = []
    for name, data in render_plots(outcome, req).items():
        atomic_write_bytes(directory / name, data)
        paths.append(directory / name)
    return paths


BATCH_SWEEP_PNG = "batch_sweep.png"


def batch_sweep_plot(points: list, title: str, path) -> None:
    """Per-user tokens/s (y) against aggregate tokens/s (x), one labelled point per batch
    size that fits (`emulator.run.batch_sweep` points)."""
    plt = _pyplot()
    ok = [p for p in points if p["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x = [p["aggregate_tokens_per_s"] for p in ok]
    y = [p["tokens_per_s"] for p in ok]
    ax.plot(x, y, "o-", color="tab:blue")
    for p, xi, yi in zip(ok, x, y, strict=True):
        ax.annotate(f"B={p['batch']}", (xi, yi), textcoords="offset points", xytext=(6, 4))
    from matplotlib.ticker import FuncFormatter

    thousands = FuncFormatter(lambda v, _: f"{v:,.0f}")
    ax.xaxis.set_major_formatter(thousands)
    ax.yaxis.set_major_formatter(thousands)
    ax.set_xlabel("aggregate tokens/s (all users)")
    ax.set_ylabel("tokens/s per user")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    skipped = [str(p["batch"]) for p in points if p["status"] != "ok"]
    if skipped:
        ax.text(0.01, 0.01, f"does not fit: B = {', '.join(skipped)}", transform=ax.transAxes,
                fontsize=8, color="tab:red")
    _save(fig, path)
    plt.close(fig)
