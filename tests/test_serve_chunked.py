"""emu serve's chunked-prefill policy (`--prefill-chunk`): the simulator's invariants
(Little's law for every queue, conservation of requests and of prompt tokens), the
iteration rule (chunks within the token budget, a started request stays on its
instance), the chunk costs as increments of the prefill cost, and the emulated chunk
costs of docs/prefill.md behind a measured table."""

import numpy as np
import pytest

from emulator.hw.errors import ConfigError
from emulator.serve.costs import FunctionCosts
from emulator.serve.sim import DONE, REJECTED, Cluster, Simulation
from emulator.serve.workload import Workload, parse_dist, synthetic


def costs_affine():
    return FunctionCosts("affine", kv_bytes_per_token=1000, max_prompt_tokens=1500,
                         max_context=1600, kv_capacity_tokens=6000, max_batch=8,
                         prefill=lambda t: 0.002 + 1e-5 * t + 1e-9 * t * t,
                         decode=lambda ctx: 0.004 + 1e-6 * ctx.sum(axis=1),
                         layout=lambda p: 1e-6 * p)


def run(chunk, budget=0, n=2000, seed=3, prefill_instances=2, rate=40.0, overlap=False):
    w = synthetic(rate, n, parse_dist("lognormal:200,0.8"),
                  parse_dist("uniform:1,60", "--osl"), seed=seed)
    costs = costs_affine()
    cluster = Cluster(prefill_instances=prefill_instances, decode_instances=3,
                      prefill_token_budget=budget, egress_bytes_per_s=2e8,
                      ingress_bytes_per_s=3e8, link_latency_s=1e-4, prefill_chunk=chunk,
                      overlap_kv=overlap)
    return w, costs, Simulation(w, costs, cluster).run()


@pytest.mark.parametrize("chunk,budget,overlap", [(64, 0, False), (128, 512, False),
                                                  (1000, 0, False), (64, 256, True)])
def test_littles_law_and_conservation(chunk, budget, overlap):
    w, costs, sim = run(chunk, budget, overlap=overlap)
    rec = sim.rec
    for q in (sim.q_prefill, sim.q_decode, sim.q_transfer, sim.q_batch):
        assert q.length == 0 and q.entered == q.left
        if q.entered:
            L, lam, W = q.area / sim.end, q.entered / sim.end, q.waits / q.left
            assert L == pytest.approx(lam * W, rel=1e-9)
    assert np.all((rec.status == DONE) | (rec.status == REJECTED))
    done = rec.status == DONE
    # every prompt token of every served request was prefilled exactly once
    assert np.array_equal(np.array(sim.prefilled)[done], w.prompt_tokens[done])
    assert all(not s for s in sim.started) and not sim.streams
    dec = done & (w.output_tokens > 1)
    assert np.all(rec.transfer_end[dec] >= rec.prefill_end[dec])
    if overlap:      # some transfers started with the first chunk, before the prefill end
        assert np.sum(rec.transfer_start[dec] < rec.prefill_end[dec]) > 0
    assert np.all(sim.kv_free == costs.kv_capacity_tokens) and np.all(sim.users == 0)
    assert np.all(rec.prefill_end[done] > rec.prefill_start[done])
    assert np.all(rec.prefill_start[done] >= w.arrival_s[done])


def test_chunk_costs_are_increments():
    c = costs_affine()
    for past, n in ((0, 100), (100, 50), (1000, 333)):
        assert c.prefill_chunk_seconds(n, past) == pytest.approx(
            c.prefill(past + n) - (c.prefill(past) if past else 0.0), rel=1e-12)


def test_one_request_iterations_in_closed_form():
    """One request of P tokens, chunk C, budget C: ceil(P/C) iterations back to back; the
    prefill ends at sum of the increments = prefill_seconds(P) (telescoping)."""
    costs = costs_affine()
    w = Workload(np.array([0.0]), np.array([1000]), np.array([1]), "one")
    sim = Simulation(w, costs, Cluster(prefill_chunk=300)).run()
    assert sim.rec.prefill_end[0] == pytest.approx(costs.prefill(1000), rel=1e-12)
    assert sim.prefill_busy[0] == pytest.approx(costs.prefill(1000), rel=1e-12)


def test_chunking_lets_a_short_prompt_pass_a_long_one():
    """A long prompt then a short one, budget of two chunks: the short one's first (and
    only) chunk runs in the first iteration beside the long one's, so it finishes long
    before the long prompt; without chunking it waits for the whole long prefill."""
    costs = FunctionCosts("linear", 1, 10_000, 20_000, 20_000, 1,
                          prefill=lambda t: 1e-3 * t, decode=lambda ctx: np.zeros(len(ctx)))
    w = Workload(np.array([0.0, 0.001]), np.array([4000, 100]), np.array([1, 1]), "two")
    plain = Simulation(w, costs, Cluster(prefill_token_budget=4000)).run()
    chunked = Simulation(w, costs, Cluster(prefill_chunk=500, prefill_token_budget=1000)).run()
    assert plain.rec.prefill_end[1] == pytest.approx(4.0 + 0.1)
    # iteration 1 (t=0..0.5): long chunk only (the short one has not arrived);
    # iteration 2: long 500 + short 100 -> ends at 0.5 + 0.6
    assert chunked.rec.prefill_end[1] == pytest.approx(1.1)
    assert chunked.rec.prefill_end[0] == pytest.approx(4.1)


def test_started_requests_stay_on_their_instance():
    _, _, sim = run(64, 256, n=500, prefill_instances=3, rate=80.0)
    done = sim.rec.status == DONE
    assert set(np.unique(sim.rec.prefill_instance[done])) == {0, 1, 2}


def test_bad_combinations_are_config_errors():
    w = Workload(np.array([0.0]), np.array([10]), np.array([2]), "one")
    for cluster in (Cluster(prefill_chunk=-1), Cluster(prefill_chunk=8, colocated=True)):
        with pytest.raises(ConfigError):
            Simulation(w, costs_affine(), cluster)


def test_measured_table_uses_chunked_prefills(tmp_path):
    """measure_costs(prefill_chunk=C) samples chunked prefills: the table equals the
    chunked prefill model's seconds at its sample points."""
    from compiler.frontend import resolve_model
    from emulator.hw.mesh import load_sized_mesh
    from emulator.hw.prefill import load_prefill
    from emulator.prefill.run import run_prefill
    from emulator.serve.costs import measure_costs

    spec, hw = resolve_model("tiny"), load_prefill("trn2")
    costs = measure_costs(spec, "tiny", load_sized_mesh("small", None), hw,
                          prompt_limit=64, context_limit=80, cache_dir=tmp_path,
                          prefill_chunk=16)
    assert costs.info["prefill_chunk"] == 16
    for p, seconds in costs.prefill_table[:4]:
        assert seconds == run_prefill(spec, hw, int(p), timing_only=True, chunk=16).seconds


def test_emu_serve_prefill_chunk(tmp_path):
    """`emu serve --prefill-chunk`: the report names the policy; a bad value exits 2."""
    import subprocess
    import sys

    from emulator.serve.options import serve_report

    report = serve_report(rate=5, requests=30, isl="60", osl="3", prefill_chunk=16,
                          cache_dir=str(tmp_path))
    assert report["cluster"]["prefill_chunk"] == 16
    assert report["cluster"]["prefill_token_budget"] == 16
    assert report["completed"] == 30
    proc = subprocess.run([sys.executable, "-c", "from emulator.cli import main; main()",
                           "serve", "--rate", "5", "--requests", "5", "--isl", "60", "--osl",
                           "3", "--prefill-chunk", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--prefill-chunk" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_overlapped_chunks_follow_the_link_closed_form():
    """One request of P tokens in chunks of C, prefill linear (t per chunk), overlap: the
    KV of chunk i leaves when its iteration ends; the link's last byte arrives at
    max_i (e_i + sum_{j>=i} x_j) (docs/prefill.md), then the latency and the layout."""
    P, C, t_tok, bw, lat = 1000, 300, 1e-3, 2e5, 1e-3
    costs = FunctionCosts("linear", 100, 10_000, 20_000, 20_000, 1,
                          prefill=lambda t: t_tok * t, decode=lambda ctx: np.full(len(ctx), 1e-3),
                          layout=lambda p: 2e-3)
    w = Workload(np.array([0.0]), np.array([P]), np.array([3]), "one")
    cluster = Cluster(prefill_chunk=C, overlap_kv=True, egress_bytes_per_s=bw,
                      ingress_bytes_per_s=1e12, link_latency_s=lat)
    sim = Simulation(w, costs, cluster).run()
    sizes = [min(C, P - s) for s in range(0, P, C)]
    ends = np.cumsum([t_tok * n for n in sizes])
    x = [100 * n / bw for n in sizes]
    finish = max(e + sum(x[i:]) for i, e in enumerate(ends))
    assert sim.rec.transfer_start[0] == 0.0
    assert sim.rec.transfer_end[0] == pytest.approx(finish + lat + 2e-3, rel=1e-9)
    plain = Simulation(w, costs, Cluster(prefill_chunk=C, egress_bytes_per_s=bw,
                                         ingress_bytes_per_s=1e12, link_latency_s=lat)).run()
    assert plain.rec.transfer_end[0] == pytest.approx(ends[-1] + sum(x) + lat + 2e-3,
                                                      rel=1e-9)
