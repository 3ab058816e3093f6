"""`emu serve --search`: the prefill:decode instance counts that maximise goodput per dollar
(or per chip) for a workload and SLOs.

Every (P, D) with 1 <= P, D <= limit is simulated with the same cost model (measured once
per prefill chip count tried, `--search-chips`);
goodput counts requests meeting both SLOs. Per dollar: goodput_rps / (P x prefill $/h + D x
decode $/h); per chip: goodput_rps / (P x prefill chips + D x wafers). The best point is run
again with the full report (and the baseline when asked).
"""

import dataclasses
from dataclasses import dataclass

from emulator.hw.errors import ConfigError
from emulator.serve.runner import (
    ServeOutcome,
    ServeRequest,
    baseline_costs,
    bill_for,
    build_costs,
    equal_price_instances,
    price_per_hour,
    run_serve,
    simulate,
    simulate_baseline,
)


@dataclass
class SearchResult:
    objective: str
    objective_key: str
    points: list
    best: ServeOutcome
    baseline_points: list | None = None

    def to_dict(self) -> dict:
        b = self.best.report
        out = {"objective": self.objective, "objective_key": self.objective_key,
               "points": self.points}
        if self.baseline_points:
            key = self.objective_key
            best_b = max(self.baseline_points, key=lambda q: q[key] or 0.0)
            best_d = max(p[key] or 0.0 for p in self.points)
            out["baseline_points"] = self.baseline_points
            out["baseline_best"] = best_b
            out["split_benefit"] = best_d / best_b[key] if best_b[key] else None
            out["baseline_meets_no_request"] = not any(q["goodput_rps"]
                                                       for q in self.baseline_points)
        return {**out,
                "best": {"prefill_instances": b["cluster"]["prefill_instances"],
                         "decode_instances": b["cluster"]["decode_instances"],
                         "prefill_chips": b["hardware"]["prefill_chips"],
                         self.objective_key: next(
                             p[self.objective_key] for p in self.points
                             if p["prefill_instances"] == b["cluster"]["prefill_instances"]
                             and p["decode_instances"] == b["cluster"]["decode_instances"]
                             and p["prefill_chips"] == b["hardware"]["prefill_chips"])}}


def run_search(req: ServeRequest, limit: int, objective: str = "usd", progress=None,
               chips_options: list[int] | None = None) -> SearchResult:
    """Simulate every (P, D) up to `limit` (for each prefill chip count in `chips_options`,
    default the request's); the best by goodput per dollar or per chip."""
    if objective not in ("usd", "chip"):
        raise ConfigError(f"--objective: expected usd or chip, got '{objective}'")
    key = "goodput_per_usd_hour" if objective == "usd" else "goodput_per_chip"
    points, costs_of = [], {}
    for n_chips in chips_options or [req.prefill_chips]:
        sub = dataclasses.replace(req, prefill_chips=n_chips)
        costs = costs_of[n_chips] = build_costs(sub, progress)
        bill = bill_for(sub)
        if objective == "usd" and price_per_hour(sub, bill, 1, 1) is None:
            raise ConfigError("--search --objective usd needs price_usd_per_hour in the "
                              "prefill and decode presets; use --objective chip")
        for p in range(1, limit + 1):
            for d in range(1, limit + 1):
                _, r = simulate(sub, costs, p, d)
                price = price_per_hour(sub, bill, p, d)
                chips = p * n_chips + d * req.mesh.wafers
                points.append({
                    "prefill_instances": p, "decode_instances": d, "prefill_chips": n_chips,
                    "chips": chips, "price_usd_per_hour": price,
                    "goodput_rps": r["goodput_rps"], "slo_attainment": r["slo"]["attainment"],
                    "ttft_p99_s": r["ttft_s"]["p99"], "tpot_p99_s": r["tpot_s"]["p99"],
                    "cost_usd_per_mtok": r["cost_usd_per_mtok"],
                    "goodput_per_usd_hour": None if price is None
                    else r["goodput_rps"] / price,
                    "goodput_per_chip": r["goodput_rps"] / chips})
    best = max(points, key=lambda q: (q[key] or 0.0, -q["chips"]))
    costs = costs_of[best["prefill_chips"]]
    chosen = dataclasses.replace(req, prefill_instances=best["prefill_instances"],
                                 decode_instances=best["decode_instances"],
                                 prefill_chips=best["prefill_chips"], costs=costs)
    baseline_points = None
    if req.baseline:
        baseline_points = search_baseline(chosen, costs, key, limit)
        top = max(baseline_points, key=lambda q: (q[key] or 0.0, -q["instances"]))
        chosen = dataclasses.replace(chosen, baseline_instances=top["instances"])
    outcome = run_serve(chosen)
    name = "goodput per $/h (req/s per $/h)" if objective == "usd" else \
        "goodput per chip (req/s per chip)"
    return SearchResult(name, key, points, outcome, baseline_points)


def search_baseline(req: ServeRequest, costs, key: str, limit: int) -> list:
    """The baseline (both phases on the prefill chips) at 1, 2, 4, ... instances up to
    twice the equal-price count (at least `limit`): each point's goodput per $/h and chip."""
    bcosts = baseline_costs(req, costs)
    bill = bill_for(req)
    top = max(limit, 2 * (equal_price_instances(req) or limit))
    counts = sorted({min(top, 1 << k) for k in range(top.bit_length() + 1)}
                    | {equal_price_instances(req) or 1})
    out = []
    for n in counts:
        _, r = simulate_baseline(req, bcosts, n)
        price = None if bill.prefill_usd_per_h is None else n * bill.prefill_usd_per_h
        out.append({"instances": n, "chips": n * req.prefill_chips,
                    "price_usd_per_hour": price, "goodput_rps": r["goodput_rps"],
                    "slo_attainment": r["slo"]["attainment"],
                    "ttft_p99_s": r["ttft_s"]["p99"], "tpot_p99_s": r["tpot_s"]["p99"],
                    "goodput_per_usd_hour": None if not price else r["goodput_rps"] / price,
                    "goodput_per_chip": r["goodput_rps"] / (n * req.prefill_chips)})
    return out


def search_tables(search: dict) -> list:
    """Rich table of the search: the ten best points and the chosen one."""
    from rich.table import Table

    from emulator.serve.report import fmt_seconds

    key = search["objective_key"]
    rows = sorted(search["points"], key=lambda q: -(q[key] or 0.0))[:10]
    table = Table(title=f"--search: {search['objective']} (top {len(rows)} of "
                        f"{len(search['points'])})", title_justify="left")
    for col in ("P", "D", "chips/P", "chips", "$/h", "goodput req/s", "SLO met", "p99 TTFT",
                "p99 TPOT", search["objective"].split(" (")[0]):
        table.add_column(col, justify="right")
    best = search["best"]

    def f(x, fmt="{:.4g}"):
        return "-" if x is None else fmt.format(x)
    for q in rows:
        mark = " *" if (q["prefill_instances"], q["decode_instances"], q["prefill_chips"]) == \
            (best["prefill_instances"], best["decode_instances"], best["prefill_chips"]) else ""
        table.add_row(f"{q['prefill_instances']}{mark}", str(q["decode_instances"]),
                      str(q["prefill_chips"]), str(q["chips"]), f(q["price_usd_per_hour"]),
                      f(q["goodput_rps"]),
                      f(q["slo_attainment"], "{:.1%}"), fmt_seconds(q["ttft_p99_s"]),
                      fmt_seconds(q["tpot_p99_s"]), f(q[key]))
    tables = [table]
    if search.get("baseline_points"):
        benefit = ("unbounded: the baseline meets no request's SLOs"
                   if search.get("baseline_meets_no_request")
                   else f(search["split_benefit"], "{:.3g} x"))
        base = Table(title=f"baseline (both phases on the prefill chips): {search['objective']}"
                           f"; split benefit {benefit}",
                     title_justify="left")
        for col in ("instances", "$/h", "goodput req/s", "SLO met", "p99 TTFT", "p99 TPOT",
                    search["objective"].split(" (")[0]):
            base.add_column(col, justify="right")
        for q in search["baseline_points"]:
            base.add_row(str(q["instances"]), f(q["price_usd_per_hour"]), f(q["goodput_rps"]),
                         f(q["slo_attainment"], "{:.1%}"), fmt_seconds(q["ttft_p99_s"]),
                         fmt_seconds(q["tpot_p99_s"]), f(q[key]))
        tables.append(base)
    return tables
