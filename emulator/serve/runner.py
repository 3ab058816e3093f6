"""`emu serve` as a library call: load everything, measure (or reuse) the costs, simulate the
disaggregated cluster, optionally the non-disaggregated baseline, and build the report.

Every input is checked (ConfigError, one line naming the option or file) before any
emulation or simulation starts.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emulator.hw.errors import ConfigError
from emulator.serve.costs import Costs, measure_costs, trainium_decode_costs
from emulator.serve.report import Bill, build_report
from emulator.serve.sim import Cluster, Simulation
from emulator.serve.workload import Workload


@dataclass
class ServeRequest:
    """Everything one `emu serve` needs, loaded and validated."""

    spec: object
    model_name: str
    workload: Workload
    prefill_hw: object              # PrefillConfig
    mesh: object                    # MeshConfig (one decode instance = mesh.wafers wafers)
    link: object                    # LinkConfig (one prefill chip's egress)
    prefill_chips: int = 1
    prefill_instances: int = 1
    decode_instances: int = 1
    max_batch: int = 1
    prefill_token_budget: int = 0   # 0: the longest prompt a prefill instance holds
    dtype: str = "bf16"
    slo_ttft: float | None = None
    slo_tpot: float | None = None
    baseline: bool = False
    baseline_instances: int = 0     # 0: as many prefill instances as cost the same per hour
    cache_dir: Path | None = None
    engine: str = "numba"
    costs: Costs | None = None      # injected costs (tests); None: measure by emulation
    overlap_kv: bool = False        # stream KV layer by layer during the prefill
    prefill_chunk: int = 0          # chunked prefill: tokens per chunk (0: off)
    closed: tuple | None = None     # (users, think seconds): a closed system (sim.Simulation)
    seed: int = 0                   # seed of a closed system's think times


@dataclass
class ServeOutcome:
    report: dict
    sim: Simulation
    costs: Costs
    baseline_sim: Simulation | None = None
    extra: dict = field(default_factory=dict)


def _next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def build_costs(req: ServeRequest, progress=None) -> Costs:
    """The cost model for the request's machines, sampled over the workload's range
    (rounded up to a power of two, so that similar workloads share cached points)."""
    if req.costs is not None:
        return req.costs
    w = req.workload
    prompt_limit = _next_pow2(int(w.prompt_tokens.max()))
    context_limit = _next_pow2(int((w.prompt_tokens + w.output_tokens - 1).max()))
    return measure_costs(req.spec, req.model_name, req.mesh, req.prefill_hw, dtype=req.dtype,
                         prefill_chips=req.prefill_chips,
                         prompt_limit=min(prompt_limit, req.spec.max_position_embeddings),
                         context_limit=min(context_limit, req.spec.max_position_embeddings),
                         max_batch=req.max_batch, cache_dir=req.cache_dir,
                         progress=progress, engine=req.engine,
                         prefill_chunk=req.prefill_chunk)


def cluster_for(req: ServeRequest, prefill_instances: int | None = None,
                decode_instances: int | None = None) -> Cluster:
    """The simulated cluster: instance counts, link capacities, batching policy."""
    mesh, link = req.mesh, req.link
    ingress = (mesh.io_bytes_per_s * mesh.wafers if mesh.io_bytes_per_s else math.inf)
    return Cluster(prefill_instances=prefill_instances or req.prefill_instances,
                   decode_instances=decode_instances or req.decode_instances,
                   prefill_token_budget=req.prefill_token_budget,
                   egress_bytes_per_s=link.total_bandwidth * req.prefill_chips,
                   ingress_bytes_per_s=ingress, link_latency_s=link.latency_s,
                   overlap_kv=req.overlap_kv, prefill_chunk=req.prefill_chunk)


def bill_for(req: ServeRequest) -> Bill:
    """Power and price of one prefill instance (chips x chip) and one decode instance
    (wafers x system) from the presets."""
    p, m, chips, wafers = req.prefill_hw, req.mesh, req.prefill_chips, req.mesh.wafers

    def times(x, n):
        return None if x is None else x * n
    return Bill(times(p.power_busy_w, chips), times(p.power_idle_w, chips),
                times(p.price_usd_per_hour, chips), times(m.power_busy_w, wafers),
                times(m.power_idle_w, wafers), times(m.price_usd_per_hour, wafers))


def price_per_hour(req: ServeRequest, bill: Bill, prefill: int, decode: int) -> float | None:
    if bill.prefill_usd_per_h is None or bill.decode_usd_per_h is None:
        return None
    return prefill * bill.prefill_usd_per_h + decode * bill.decode_usd_per_h


def simulate(req: ServeRequest, costs: Costs, prefill: int | None = None,
             decode: int | None = None) -> tuple[Simulation, dict]:
    """Run the disaggregated cluster; (simulation, report)."""
    sim = Simulation(req.workload, costs, cluster_for(req, prefill, decode), req.closed,
                     req.seed).run()
    return sim, build_report(sim, bill_for(req), req.slo_ttft, req.slo_tpot)


def baseline_costs(req: ServeRequest, costs: Costs) -> Costs:
    """Costs of one baseline instance: prefill as measured, decode memory-bound on the
    prefill chips (costs.TrainiumDecodeCosts)."""
    table = getattr(costs, "prefill_table", None)
    if table is None:   # injected costs: sample their prefill function
        xs = np.unique(np.linspace(1, costs.max_prompt_tokens, 64).astype(int))
        table = np.array([[x, costs.prefill_seconds(int(x))] for x in xs])
    return trainium_decode_costs(req.spec, req.prefill_hw, table, dtype=req.dtype,
                                 chips=req.prefill_chips,
                                 max_prompt_tokens=costs.max_prompt_tokens,
                                 max_batch=max(req.max_batch, 1),
                                 info={"prefill_from": costs.name})


def equal_price_instances(req: ServeRequest) -> int | None:
    """Baseline instances costing what the disaggregated cluster costs per hour."""
    bill = bill_for(req)
    price = price_per_hour(req, bill, req.prefill_instances, req.decode_instances)
    return None if price is None else max(1, round(price / bill.prefill_usd_per_h))


def simulate_baseline(req: ServeRequest, bcosts: Costs, n: int) -> tuple[Simulation, dict]:
    """The baseline with n instances (both phases on the prefill chips); (sim, report)."""
    cluster = dataclasses.replace(cluster_for(req, n, 1), colocated=True, prefill_chunk=0)
    sim = Simulation(req.workload, bcosts, cluster, req.closed, req.seed).run()
    bill_b = dataclasses.replace(bill_for(req), decode_busy_w=None, decode_idle_w=None,
                                 decode_usd_per_h=None)
    return sim, build_report(sim, bill_b, req.slo_ttft, req.slo_tpot)


def run_baseline(req: ServeRequest, costs: Costs, disagg_report: dict):
    """The non-disaggregated baseline at equal price per hour (or `baseline_instances`);
    (simulation, report with ratios against the disaggregated run)."""
    bill = bill_for(req)
    price = price_per_hour(req, bill, req.prefill_instances, req.decode_instances)
    n = req.baseline_instances
    if not n:
        if price is None:
            raise ConfigError("--baseline needs price_usd_per_hour in the prefill and decode "
                              "presets (or give --baseline-instances N)")
        n = max(1, round(price / bill.prefill_usd_per_h))
    sim, report = simulate_baseline(req, baseline_costs(req, costs), n)
    b_price = n * bill.prefill_usd_per_h if bill.prefill_usd_per_h is not None else None
    chips_d = req.prefill_instances * req.prefill_chips + req.decode_instances * req.mesh.wafers
    chips_b = n * req.prefill_chips

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b
    g_d, g_b = disagg_report["goodput_rps"], report["goodput_rps"]
    report["comparison"] = {
        "instances": n, "price_usd_per_hour": b_price,
        "disaggregated_price_usd_per_hour": price,
        "goodput_ratio": ratio(g_d, g_b),
        "goodput_per_usd_ratio": ratio(ratio(g_d, price), ratio(g_b, b_price)),
        "goodput_per_chip_ratio": ratio(g_d / chips_d, g_b / chips_b),
        "cost_usd_per_mtok_ratio": ratio(report["cost_usd_per_mtok"],
                                         disagg_report["cost_usd_per_mtok"]),
        "p99_ttft_ratio": ratio(report["ttft_s"]["p99"], disagg_report["ttft_s"]["p99"]),
        "p99_tpot_ratio": ratio(report["tpot_s"]["p99"], disagg_report["tpot_s"]["p99"])}
    return sim, report


def run_serve(req: ServeRequest, progress=None) -> ServeOutcome:
    """Measure costs, simulate, and (with `baseline`) compare; the outcome's report."""
    costs = build_costs(req, progress)
    sim, report = simulate(req, costs)
    report["model"] = req.model_name
    report["hardware"] = {"prefill": req.prefill_hw.name, "prefill_chips": req.prefill_chips,
                          "decode": req.mesh.name, "wafers": req.mesh.wafers,
                          "link": req.link.name}
    bsim = None
    if req.baseline:
        bsim, breport = run_baseline(req, costs, report)
        report["baseline"] = breport
    return ServeOutcome(report, sim, costs, bsim)
