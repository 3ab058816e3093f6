"""Metrics of a serving run: the report dict (DESIGN.md 5.1 keys and more) and its table.

Times in seconds, energy in joules, money in US dollars.
- TTFT = prefill end - arrival (the prefill instance produces the first token);
- TPOT = (finish - prefill end) / (output tokens - 1), requests with >= 2 output tokens;
- E2E = finish - arrival;
- goodput = completed requests meeting both SLOs (TTFT <= slo_ttft, TPOT <= slo_tpot;
  a one-token request has no TPOT and meets that SLO) per second of `duration_s`, the time
  from 0 (the stream's start) to the last request's end;
- throughput = output tokens of completed requests per second of `duration_s`;
- utilisation: prefill = busy seconds / (P x duration); decode = seconds with a batch
  stepping / (D x duration); link = KV bytes moved / (decode ingress B/s x D x duration);
- energy = sum over instances of busy W x busy s + idle W x idle s; J per token and $
  per million tokens count output tokens (`*_all_tokens` variants count prompt tokens too).
"""

from dataclasses import dataclass

import numpy as np

from emulator.serve.sim import DONE, REJECT_REASONS, REJECTED, Simulation

SCHEMA = "emu.serve.report/1"


@dataclass(frozen=True)
class Bill:
    """Power (W, busy and idle) and price ($/h) of one prefill and one decode instance;
    None where a preset does not say."""

    prefill_busy_w: float | None = None
    prefill_idle_w: float | None = None
    prefill_usd_per_h: float | None = None
    decode_busy_w: float | None = None
    decode_idle_w: float | None = None
    decode_usd_per_h: float | None = None


def stats(values: np.ndarray) -> dict:
    """{mean, p50, p90, p99} of finite values (None each when there are none)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def request_metrics(sim: Simulation) -> dict:
    """Per-request arrays: ttft, tpot (NaN for one-token outputs), e2e; masks."""
    rec, w = sim.rec, sim.w
    done = rec.status == DONE
    ttft = np.where(done, rec.prefill_end - w.arrival_s, np.nan)
    e2e = np.where(done, rec.finish - w.arrival_s, np.nan)
    steps = w.output_tokens - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(done & (steps > 0), (rec.finish - rec.prefill_end) / steps, np.nan)
    return {"done": done, "ttft": ttft, "tpot": tpot, "e2e": e2e}


def little(q, duration: float) -> dict:
    """Little's law terms of a queue: L (time-average length), lambda (entries per second)
    and W (mean time inside); L = lambda W when the queue is empty at both ends."""
    L = q.area / duration if duration > 0 else 0.0
    lam = q.entered / duration if duration > 0 else 0.0
    W = q.waits / q.left if q.left else 0.0
    return {"L": L, "lambda": lam, "W": W, "entered": q.entered, "left": q.left}


def energy_and_cost(sim: Simulation, bill: Bill, duration: float) -> dict:
    """Joules and dollars of the run (None when a power or price field is missing)."""
    c = sim.cluster
    if c.colocated:
        busy = sim.prefill_busy + sim.decode_busy
        groups = [(busy, bill.prefill_busy_w, bill.prefill_idle_w, bill.prefill_usd_per_h)]
    else:
        groups = [(sim.prefill_busy, bill.prefill_busy_w, bill.prefill_idle_w,
                   bill.prefill_usd_per_h),
                  (sim.decode_busy, bill.decode_busy_w, bill.decode_idle_w,
                   bill.decode_usd_per_h)]
    joules = dollars = 0.0
    for busy, w_busy, w_idle, price in groups:
        busy = np.minimum(busy, duration)
        if joules is not None:
            if w_busy is None or w_idle is None:
                joules = None
            else:
                joules += float(np.sum(busy * w_busy + (duration - busy) * w_idle))
        if dollars is not None:
            dollars = None if price is None else dollars + price * len(busy) * duration / 3600
    return {"energy_j": joules, "cost_usd": dollars}


def build_report(sim: Simulation, bill: Bill, slo_ttft: float | None, slo_tpot: float | None,
                 extra: dict | None = None) -> dict:
    """The report of a finished simulation (module docstring)."""
    m = request_metrics(sim)
    w, c = sim.w, sim.cluster
    duration = float(sim.end)
    done = m["done"]
    ok = done.copy()
    if slo_ttft is not None:
        ok &= m["ttft"] <= slo_ttft
    if slo_tpot is not None:
        ok &= ~(m["tpot"] > slo_tpot)          # NaN (one-token output) passes
    out_tokens = int(w.output_tokens[done].sum())
    all_tokens = out_tokens + int(w.prompt_tokens[done].sum())
    n_dec = len(sim.batches)
    ingress = 0 if c.colocated else c.ingress_bytes_per_s * n_dec
    link_util = (float(sim.net.busy_bytes.sum()) / (ingress * duration)
                 if ingress and duration > 0 else None)
    bill_out = energy_and_cost(sim, bill, duration)
    rejected = sim.rec.status == REJECTED
    reasons = {REJECT_REASONS[k]: int(np.sum(sim.rec.reason == k))
               for k in range(len(REJECT_REASONS)) if np.any(sim.rec.reason == k)}

    def per(total, count):
        return None if total is None or not count else total / count
    report = {
        "schema": SCHEMA,
        "requests": len(w), "completed": int(done.sum()),
        "rejected": int(rejected.sum()), "rejected_by_reason": reasons,
        "duration_s": duration,
        "ttft_s": stats(m["ttft"]), "tpot_s": stats(m["tpot"]), "e2e_s": stats(m["e2e"]),
        "slo": {"ttft_s": slo_ttft, "tpot_s": slo_tpot, "met": int(ok.sum()),
                "attainment": float(ok.sum() / done.sum()) if done.any() else None},
        "goodput_rps": float(ok.sum()) / duration if duration > 0 else 0.0,
        "throughput_tokens_per_s": out_tokens / duration if duration > 0 else 0.0,
        "output_tokens": out_tokens, "prompt_tokens": all_tokens - out_tokens,
        "utilization": {
            "prefill": float(sim.prefill_busy.sum() / (len(sim.prefill_busy) * duration))
            if duration > 0 else 0.0,
            "decode": float(sim.decode_busy.sum() / (n_dec * duration))
            if duration > 0 and n_dec else 0.0,
            "link": link_util},
        "energy_j": bill_out["energy_j"], "cost_usd": bill_out["cost_usd"],
        "energy_j_per_token": per(bill_out["energy_j"], out_tokens),
        "energy_j_per_token_all_tokens": per(bill_out["energy_j"], all_tokens),
        "cost_usd_per_mtok": None if bill_out["cost_usd"] is None or not out_tokens
        else bill_out["cost_usd"] / out_tokens * 1e6,
        "cost_usd_per_mtok_all_tokens": None if bill_out["cost_usd"] is None or not all_tokens
        else bill_out["cost_usd"] / all_tokens * 1e6,
        "cluster": {"mode": "colocated" if c.colocated else "disaggregated",
                    "prefill_instances": c.prefill_instances,
                    "decode_instances": 0 if c.colocated else c.decode_instances,
                    "prefill_token_budget": sim.budget, "max_batch": sim.costs.max_batch,
                    "prefill_chunk": c.prefill_chunk or None,
                    "egress_bytes_per_s": c.egress_bytes_per_s,
                    "ingress_bytes_per_s": c.ingress_bytes_per_s,
                    "link_latency_s": c.link_latency_s},
        "queues": {q.name: little(q, duration)
                   for q in (sim.q_prefill, sim.q_decode, sim.q_transfer, sim.q_batch)},
        "costs": {"name": sim.costs.name, "max_prompt_tokens": sim.costs.max_prompt_tokens,
                  "max_context": sim.costs.max_context,
                  "kv_capacity_tokens": sim.costs.kv_capacity_tokens,
                  "kv_bytes_per_token": sim.costs.kv_bytes_per_token, **sim.costs.info},
        "workload": w.describe(),
    }
    if extra:
        report.update(extra)
    return report


def fmt_seconds(x) -> str:
    """A duration with a readable unit (s, ms, us); '-' for None."""
    if x is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(x) >= scale or unit == "us":
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} s"


def summary_tables(report: dict) -> list:
    """Rich tables: headline numbers, latency quantiles, utilisation."""
    from rich.table import Table

    head = Table(title=f"emu serve: {report['cluster']['mode']}, "
                       f"{report['cluster']['prefill_instances']} prefill x "
                       f"{report['cluster']['decode_instances']} decode instances",
                 title_justify="left")
    head.add_column("metric")
    head.add_column("value", justify="right")

    def opt(x, fmt):
        return "-" if x is None else fmt(x)
    rows = [("requests (completed / rejected)",
             f"{report['requests']:,} ({report['completed']:,} / {report['rejected']:,})"),
            ("duration", fmt_seconds(report["duration_s"])),
            ("goodput", f"{report['goodput_rps']:.4g} req/s"),
            ("SLO attainment", opt(report["slo"]["attainment"], lambda v: f"{100 * v:.1f} %")),
            ("throughput", f"{report['throughput_tokens_per_s']:.4g} tokens/s"),
            ("energy per output token", opt(report["energy_j_per_token"],
                                            lambda v: f"{v:.4g} J")),
            ("cost per million output tokens", opt(report["cost_usd_per_mtok"],
                                                   lambda v: f"$ {v:.4g}"))]
    for name, value in rows:
        head.add_row(name, value)
    lat = Table(title="latency", title_justify="left")
    for col in ("", "mean", "p50", "p90", "p99"):
        lat.add_column(col, justify="right" if col else "left")
    for key, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "end to end")):
        q = report[key]
        lat.add_row(name, *(fmt_seconds(q[k]) for k in ("mean", "p50", "p90", "p99")))
    util = Table(title="utilisation and queues (Little's law: L = lambda W)",
                 title_justify="left")
    for col in ("", "utilisation / L", "lambda (1/s)", "W"):
        util.add_column(col, justify="right" if col else "left")
    for name, value in report["utilization"].items():
        util.add_row(name, opt(value, lambda v: f"{100 * v:.3g} %"), "", "")
    for name, q in report["queues"].items():
        util.add_row(name, f"{q['L']:.3g}", f"{q['lambda']:.3g}", fmt_seconds(q["W"]))
    return [head, lat, util]


def baseline_table(report: dict):
    """Rich table: the disaggregated run against the baseline (both phases on the
    prefill chips)."""
    from rich.table import Table

    b = report["baseline"]
    comp = b["comparison"]
    table = Table(title=f"disaggregated vs baseline ({comp['instances']} prefill-chip "
                        f"instances running both phases)", title_justify="left")
    for col in ("", "disaggregated", "baseline", "ratio"):
        table.add_column(col, justify="right" if col else "left")

    def num(x, fmt="{:.4g}"):
        return "-" if x is None else fmt.format(x)
    table.add_row("price per hour", num(comp["disaggregated_price_usd_per_hour"], "$ {:.4g}"),
                  num(comp["price_usd_per_hour"], "$ {:.4g}"), "")
    table.add_row("goodput (req/s)", num(report["goodput_rps"]), num(b["goodput_rps"]),
                  num(comp["goodput_ratio"], "{:.3g} x"))
    table.add_row("goodput per dollar", "", "", num(comp["goodput_per_usd_ratio"], "{:.3g} x"))
    table.add_row("p99 TTFT", fmt_seconds(report["ttft_s"]["p99"]),
                  fmt_seconds(b["ttft_s"]["p99"]), "")
    table.add_row("p99 TPOT", fmt_seconds(report["tpot_s"]["p99"]),
                  fmt_seconds(b["tpot_s"]["p99"]), "")
    table.add_row("$ per million output tokens", num(report["cost_usd_per_mtok"]),
                  num(b["cost_usd_per_mtok"]), "")
    return table
