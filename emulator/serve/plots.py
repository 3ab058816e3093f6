"""PNG pictures of an `emu serve` run (needs matplotlib, the `plot` extra).

- `latency_cdf.png`: CDFs of TTFT and TPOT (the baseline's dashed when it ran), SLOs marked;
- `queues.png`: queue lengths over time (prefill queue, decode admission, KV transfers in
  flight, users decoding);
- `utilization.png`: busy fraction of each prefill and decode instance, and the links;
- `kv.png`: KV occupancy (reserved fraction of the pool) of each decode instance over time;
- `search.png` (with --search): goodput per dollar (or chip) over prefill x decode counts.
Times in seconds. Each drawing function takes a path or a (dict, name) pair
(emulator.views.plots._save), so the command can commit all outputs together.
"""

from pathlib import Path

import numpy as np

from emulator.serve.report import request_metrics
from emulator.views.plots import _pyplot, _save

MAX_POINTS = 4000   # timeline points drawn per series (evenly thinned beyond)


def _thin(t: np.ndarray, y: np.ndarray):
    if t.size <= MAX_POINTS:
        return t, y
    idx = np.linspace(0, t.size - 1, MAX_POINTS).astype(int)
    return t[idx], y[idx]


def _cdf(ax, values, label, style="-"):
    v = np.sort(values[np.isfinite(values)])
    if v.size:
        ax.step(v, np.arange(1, v.size + 1) / v.size, style, where="post", label=label)


def latency_cdf(outcome, path) -> None:
    plt = _pyplot()
    report = outcome.report
    m = request_metrics(outcome.sim)
    mb = request_metrics(outcome.baseline_sim) if outcome.baseline_sim is not None else None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, name, slo in ((axes[0], "ttft", "TTFT", report["slo"]["ttft_s"]),
                               (axes[1], "tpot", "TPOT", report["slo"]["tpot_s"])):
        _cdf(ax, m[key], "disaggregated")
        if mb is not None:
            _cdf(ax, mb[key], "baseline (both phases on prefill chips)", "--")
        if slo is not None:
            ax.axvline(slo, color="red", lw=1, label=f"SLO {slo:g} s")
        finite = m[key][np.isfinite(m[key])]
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
            ax.set_xscale("log")
        ax.set_xlabel(f"{name} (s)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{name} CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)
    plt.close(fig)


def queues(outcome, path) -> None:
    plt = _pyplot()
    sim = outcome.sim
    fig, ax = plt.subplots(figsize=(11, 4))
    for q in (sim.q_prefill, sim.q_decode, sim.q_transfer, sim.q_batch):
        if q.times:
            t, y = _thin(np.array(q.times), np.array(q.lengths))
            ax.step(t, y, where="post", label=q.name, lw=1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests")
    ax.set_title("queue lengths over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def utilization(outcome, path) -> None:
    plt = _pyplot()
    sim, report = outcome.sim, outcome.report
    end = max(sim.end, 1e-30)
    labels, values, colors = [], [], []
    colocated = sim.cluster.colocated
    for k, busy in enumerate(sim.prefill_busy):
        labels.append(f"{'instance' if colocated else 'prefill'} {k}")
        values.append(busy / end)
        colors.append("tab:blue")
    for j, busy in enumerate(sim.decode_busy):
        labels.append(f"instance {j} decode" if colocated else f"decode {j}")
        values.append(busy / end)
        colors.append("tab:orange")
    if not colocated:
        for j, moved in enumerate(sim.net.busy_bytes):
            labels.append(f"link into decode {j}")
            values.append(moved / (sim.cluster.ingress_bytes_per_s * end))
            colors.append("tab:green")
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) + 2), 4))
    ax.bar(range(len(values)), np.array(values) * 100, color=colors)
    ax.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("busy (%)")
    ax.set_ylim(0, 100)
    u = report["utilization"]
    link = "-" if u["link"] is None else f"{100 * u['link']:.1f} %"
    ax.set_title(f"utilisation: prefill {100 * u['prefill']:.1f} %, decode "
                 f"{100 * u['decode']:.1f} %, link {link}")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
    plt.close(fig)


def kv_occupancy(outcome, path) -> None:
    plt = _pyplot()
    sim = outcome.sim
    fig, ax = plt.subplots(figsize=(11, 4))
    for j, (t, occ) in enumerate(sim.kv_samples):
        tt, yy = _thin(np.array(t), np.array(occ))
        ax.step(tt, yy * 100, where="post", lw=1, label=f"decode instance {j}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("KV reserved (% of pool)")
    ax.set_ylim(0, 105)
    ax.set_title(f"KV occupancy (pool {sim.costs.kv_capacity_tokens:,} tokens per instance)")
    ax.grid(alpha=0.3)
    if len(sim.kv_samples) <= 10:
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def search_plot(search: dict, path) -> None:
    plt = _pyplot()
    best = search["best"]
    rows = [r for r in search["points"]
            if r.get("prefill_chips", best.get("prefill_chips")) == best.get("prefill_chips")]
    ps = sorted({r["prefill_instances"] for r in rows})
    ds = sorted({r["decode_instances"] for r in rows})
    key = search["objective_key"]
    grid = np.full((len(ps), len(ds)), np.nan)
    for r in rows:
        if r[key] is not None:
            grid[ps.index(r["prefill_instances"]), ds.index(r["decode_instances"])] = r[key]
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(ds), 1.5 + 0.7 * len(ps)))
    image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(ds)), [str(d) for d in ds])
    ax.set_yticks(range(len(ps)), [str(p) for p in ps])
    ax.set_xlabel("decode instances D")
    ax.set_ylabel("prefill instances P")
    ax.plot(ds.index(best["decode_instances"]), ps.index(best["prefill_instances"]), "r*",
            ms=14)
    label = search["objective"].replace("$", r"\$")      # not matplotlib mathtext
    ax.set_title(f"{label} (best: P={best['prefill_instances']}, "
                 f"D={best['decode_instances']})")
    fig.colorbar(image, ax=ax, label=label)
    _save(fig, path)
    plt.close(fig)


PLOT_NAMES = ("latency_cdf.png", "queues.png", "utilization.png", "kv.png")


def render_plots(outcome, search: dict | None = None) -> dict[str, bytes]:
    """Every picture of a run: file name -> PNG bytes (nothing written)."""
    files: dict[str, bytes] = {}
    for name, draw in zip(PLOT_NAMES, (latency_cdf, queues, utilization, kv_occupancy),
                          strict=True):
        draw(outcome, (files, name))
    if search:
        search_plot(search, (files, "search.png"))
    return files


def write_plots(outcome, directory, search: dict | None = None) -> list[Path]:
    """Write the pictures into `directory` (created; each file atomically); their paths."""
    from emulator.files import atomic_write_bytes

    out = Path(directory)
    paths = []
    for name, data in render_plots(outcome, search).items():
        atomic_write_bytes(out / name, data)
        paths.append(out / name)
    return paths
