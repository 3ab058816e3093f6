"""Sweep pictures (PNG, matplotlib): the Pareto frontier of two columns and heatmaps of
a metric over two-axis grids.

A column is a parameter or a flattened report field of results.parquet; `NAME:min` or
`NAME:max` says which way is better (default: x smaller, y larger). Only rows with status
`ok` are plotted; a heatmap cell whose point failed is grey and marked 'x'.
"""

import math
from pathlib import Path

from emulator.hw.errors import ConfigError


def parse_goal(text: str, default: str) -> tuple[str, str]:
    """'NAME[:min|:max]' -> (name, 'min'|'max')."""
    name, _, goal = text.rpartition(":") if text.endswith((":min", ":max")) else (text, "",
                                                                                   default)
    return name, goal or default


def pareto_front(points: list[tuple[float, float]], x_goal: str, y_goal: str) -> list[int]:
    """Indices of the points no other point beats on both coordinates (ties kept once),
    sorted by x."""
    sx = 1.0 if x_goal == "min" else -1.0
    sy = 1.0 if y_goal == "min" else -1.0
    order = sorted(range(len(points)), key=lambda i: (sx * points[i][0], sy * points[i][1]))
    front, best = [], math.inf
    for i in order:
        y = sy * points[i][1]
        if y < best:
            front.append(i)
            best = y
    return sorted(front, key=lambda i: points[i][0])


def _numeric(rows: list[dict], name: str, what: str) -> None:
    if not any(name in row for row in rows):
        names = sorted({k for row in rows for k in row})
        raise ConfigError(f"{what}: no column '{name}' in the results (columns: "
                          f"{', '.join(names)})")


def plot_pareto(rows: list[dict], x: str, y: str, path, params=(), title: str = "") -> Path:
    """Scatter of every ok point, the frontier highlighted and its points labelled with the
    `params` that vary; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (xname, xgoal), (yname, ygoal) = parse_goal(x, "min"), parse_goal(y, "max")
    _numeric(rows, xname, "--pareto")
    _numeric(rows, yname, "--pareto")
    ok = [r for r in rows if r.get("status") == "ok" and _is_number(r.get(xname))
          and _is_number(r.get(yname))]
    if not ok:
        raise ConfigError(f"--pareto: no point finished with numbers in '{xname}' and "
                          f"'{yname}'")
    pts = [(float(r[xname]), float(r[yname])) for r in ok]
    front = pareto_front(pts, xgoal, ygoal)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=28, color="#9aa7b8",
               label=f"points ({len(pts)})")
    fx = [pts[i][0] for i in front]
    fy = [pts[i][1] for i in front]
    ax.plot(fx, fy, "-o", color="#d9480f", ms=6, lw=1.6,
            label=f"Pareto frontier ({len(front)})", drawstyle="steps-post"
            if (xgoal == "min") == (ygoal == "max") else "steps-pre")
    labels = _point_labels(ok, [p for p in params if p not in (xname, yname)])
    for i in front:
        if labels[i]:
            ax.annotate(labels[i], pts[i], textcoords="offset points", xytext=(6, -10),
                        fontsize=7, color="#5c2a0a")
    ax.set_xlabel(f"{xname} ({'lower' if xgoal == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{yname} ({'lower' if ygoal == 'min' else 'higher'} is better)")
    _log_if_wide(ax, [p[0] for p in pts], "x")
    _log_if_wide(ax, [p[1] for p in pts], "y")
    _byte_ticks(ax.xaxis, xname)
    _byte_ticks(ax.yaxis, yname)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or f"Pareto frontier: {yname} vs {xname}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_heatmap(rows: list[dict], x_axis: str, y_axis: str, metric: str, path,
                 title: str = "") -> Path:
    """Heatmap of `metric` over the values of two grid axes; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = parse_goal(metric, "max")[0]
    _numeric(rows, metric, "--metric")
    xs = _distinct(r.get(x_axis) for r in rows)
    ys = _distinct(r.get(y_axis) for r in rows)
    grid = np.full((len(ys), len(xs)), np.nan)
    failed = np.zeros_like(grid, dtype=bool)
    for r in rows:
        i, j = ys.index(r.get(y_axis)), xs.index(r.get(x_axis))
        if r.get("status") == "ok" and _is_number(r.get(metric)):
            grid[i, j] = float(r[metric])
        else:
            failed[i, j] = True
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(xs), 1.4 + 0.6 * len(ys)), dpi=120)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d0d0d0")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower")
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(ys)):
        for j in range(len(xs)):
            if failed[i, j]:
                ax.text(j, i, "x", ha="center", va="center", color="#7a0000", fontsize=9)
            elif np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < mid else "black")
    ax.set_xticks(range(len(xs)), [_tick(v, x_axis) for v in xs], fontsize=8)
    ax.set_yticks(range(len(ys)), [_tick(v, y_axis) for v in ys], fontsize=8)
    ax.set_xlabel(x_axis)
    ax.set_ylabel(y_axis)
    fig.colorbar(image, ax=ax, label=metric)
    note = " (x: the point failed)" if failed.any() else ""
    ax.set_title(title or f"{metric}{note}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_sweep_plots(spec, rows: list[dict], out, pareto: tuple[str, str] | None,
                      metric: str | None) -> list[Path]:
    """The sweep's pictures in `out`/plots: the frontier of `pareto` (x, y) when given, and
    a heatmap of `metric` when the spec is a grid over two axes."""
    folder = Path(out) / "plots"
    written = []
    if pareto is not None:
        x, y = pareto
        name = f"pareto_{_slug(parse_goal(y, 'max')[0])}_vs_{_slug(parse_goal(x, 'min')[0])}"
        params = list(spec.fixed) + list(spec.axes)
        written.append(plot_pareto(rows, x, y, folder / f"{name}.png", params))
    if metric is not None and spec.mode == "grid" and len(spec.axes) == 2:
        x_axis, y_axis = list(spec.axes)[1], list(spec.axes)[0]
        name = f"heatmap_{_slug(parse_goal(metric, 'max')[0])}"
        written.append(plot_heatmap(rows, x_axis, y_axis, metric, folder / f"{name}.png"))
    return written


def _point_labels(rows: list[dict], params: list[str]) -> list[str]:
    """Short labels naming the parameters that vary between the rows."""
    varying = [k for k in params if len({str(r.get(k)) for r in rows}) > 1]
    return [", ".join(f"{k.split('.')[-1]}={_tick(r.get(k), k)}" for k in varying[:3])
            for r in rows]


def _distinct(values) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    try:
        return sorted(out)
    except TypeError:
        return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _tick(value, name: str = "") -> str:
    """A short label; byte sizes that are whole KiB as 'NKi'."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if "bytes" in name and isinstance(value, int) and not isinstance(value, bool) \
            and value >= 1024 and value % 1024 == 0:
        return f"{value // 1024}Ki"
    return str(value)


def _log_if_wide(ax, values, axis: str) -> None:
    values = [v for v in values if v > 0]
    if values and max(values) / min(values) > 100:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _byte_ticks(axis, name: str) -> None:
    """Ticks of a linear byte-valued axis at multiples of a power of two, labelled in
    KiB / MiB / GiB / TiB."""
    if "bytes" not in name or axis.get_scale() != "linear":
        return
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    low, high = sorted(axis.get_view_interval())
    if high > low:
        axis.set_major_locator(MultipleLocator(2.0 ** math.floor(math.log2((high - low) / 5))))

    def label(value, _pos):
        for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
                           ("KiB", 1 << 10)):
            if abs(value) >= size:
                return f"{value / size:.4g} {unit}"
        return f"{value:.4g} B"

    axis.set_major_formatter(FuncFormatter(label))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _save(fig, path) -> Path:
    """Save a figure atomically as PNG."""
    import io

    import matplotlib.pyplot as plt

    from emulator.files import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
