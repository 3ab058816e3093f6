"""emu serve's simulator against queueing theory and against a step-by-step reference.

Costs are injected (FunctionCosts / constant_costs), so service times are exact and the
runs take seconds."""

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.serve.costs import FunctionCosts, constant_costs
from emulator.serve.sim import DONE, REJECTED, Cluster, Network, Simulation
from emulator.serve.workload import Workload, parse_dist, synthetic


def md1_wait(rho: float, service: float) -> float:
    """Pollaczek-Khinchine mean wait in queue of M/D/1."""
    return rho * service / (2 * (1 - rho))


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait_matches_pollaczek_khinchine(rho):
    # One prefill server, deterministic service S, Poisson arrivals, one request per batch
    # (token budget = one prompt), one-token outputs (no decode). The formula is evaluated
    # at the load the sample realised (requests / span of arrivals), which removes most of
    # the run-to-run noise of the arrival count; 200k requests keep the rest below 3 %.
    n, service = 200_000, 1.0
    w = synthetic(rho / service, n, parse_dist("100"), parse_dist("1", "--osl"), seed=7)
    sim = Simulation(w, constant_costs(service, 0.0), Cluster(prefill_token_budget=100)).run()
    wait = np.mean(sim.rec.prefill_start - w.arrival_s)
    realised = n / w.arrival_s[-1] * service
    assert abs(wait / md1_wait(realised, service) - 1) < 0.03
    assert abs(realised / rho - 1) < 0.01
    # the server is busy rho of the time
    assert abs(sim.prefill_busy.sum() / sim.end - realised) < 0.01


def mixed_run(seed=3, n=3000, colocated=False, **cluster):
    w = synthetic(40.0, n, parse_dist("lognormal:200,0.8"), parse_dist("uniform:1,60", "--osl"),
                  seed=seed)
    costs = FunctionCosts("affine", kv_bytes_per_token=1000, max_prompt_tokens=1500,
                          max_context=1600, kv_capacity_tokens=6000, max_batch=8,
                          prefill=lambda t: 0.002 + 1e-5 * t,
                          decode=lambda ctx: 0.004 + 1e-6 * ctx.sum(axis=1),
                          layout=lambda p: 1e-6 * p)
    defaults = dict(prefill_instances=2, decode_instances=3, prefill_token_budget=800,
                    egress_bytes_per_s=2e8, ingress_bytes_per_s=3e8, link_latency_s=1e-4,
                    colocated=colocated)
    defaults.update(cluster)
    return w, costs, Simulation(w, costs, Cluster(**defaults)).run()


@pytest.mark.parametrize("colocated", [False, True])
def test_littles_law_holds_for_every_queue(colocated):
    _, _, sim = mixed_run(colocated=colocated)
    for q in (sim.q_prefill, sim.q_decode, sim.q_transfer, sim.q_batch):
        assert q.length == 0 and q.entered == q.left
        if q.entered:
            L, lam, W = q.area / sim.end, q.entered / sim.end, q.waits / q.left
            assert L == pytest.approx(lam * W, rel=1e-9)
    assert sim.q_prefill.entered > 0 and sim.q_batch.entered > 0


@pytest.mark.parametrize("colocated", [False, True])
def test_requests_are_conserved(colocated):
    w, costs, sim = mixed_run(colocated=colocated)
    rec = sim.rec
    assert np.all((rec.status == DONE) | (rec.status == REJECTED))
    assert (rec.status == REJECTED).sum() == np.sum(w.prompt_tokens > costs.max_prompt_tokens) \
        + np.sum((w.prompt_tokens <= costs.max_prompt_tokens)
                 & (w.prompt_tokens + w.output_tokens - 1 > costs.max_context))
    # every KV reservation released, every batch empty, no transfer in flight
    assert np.all(sim.kv_free == costs.kv_capacity_tokens) and np.all(sim.users == 0)
    assert all(len(b) == 0 for b in sim.batches)
    done = rec.status == DONE
    order = [w.arrival_s, rec.prefill_start, rec.prefill_end]
    for a, b in zip(order, order[1:], strict=False):
        assert np.all(b[done] >= a[done])
    dec = done & (w.output_tokens > 1)
    assert np.all(rec.decode_start[dec] >= rec.transfer_end[dec])
    assert np.all(rec.finish[dec] > rec.decode_start[dec])
    one = done & (w.output_tokens == 1)
    assert np.all(rec.finish[one] == rec.prefill_end[one])


def test_deterministic_for_a_seed():
    _, _, a = mixed_run(seed=11, n=800)
    _, _, b = mixed_run(seed=11, n=800)
    _, _, c = mixed_run(seed=12, n=800)
    np.testing.assert_array_equal(a.rec.finish, b.rec.finish)
    np.testing.assert_array_equal(a.rec.decode_instance, b.rec.decode_instance)
    assert not np.array_equal(a.rec.finish, c.rec.finish)


def reference_decode(join_times, prompts, steps, costs, max_batch):
    """Step-by-step continuous batching on one instance: at each step boundary the users
    whose KV has arrived join (in order); every step gives each user one token."""
    order = np.argsort(join_times, kind="stable")
    t, nxt, batch, finish = 0.0, 0, [], {}
    while len(finish) < len(order):
        while nxt < len(order) and join_times[order[nxt]] <= t + 1e-9 \
                and len(batch) < max_batch:
            i = order[nxt]
            batch.append([i, prompts[i] + 1, steps[i]])
            nxt += 1
        if not batch:
            t = join_times[order[nxt]]
            continue
        ctx = np.array([[u[1] for u in batch]])
        t += float(costs.decode_steps(ctx)[0])
        for u in batch:
            u[1] += 1
            u[2] -= 1
        for u in [u for u in batch if u[2] == 0]:
            finish[u[0]] = t
        batch = [u for u in batch if u[2] > 0]
    return np.array([finish[i] for i in range(len(order))])


def test_decode_stretches_equal_step_by_step_reference():
    # One decode instance, KV transfer free and instant: requests join when prefill ends.
    rng = np.random.default_rng(5)
    n = 300
    w = Workload(np.sort(rng.uniform(0, 3.0, n)), rng.integers(1, 50, n),
                 rng.integers(2, 40, n))
    costs = FunctionCosts("ref", 0, 1000, 10_000, 1 << 30, 6,
                          prefill=lambda t: 0.001,
                          decode=lambda ctx: 0.003 + 2e-5 * ctx.sum(axis=1) + 1e-3 * ctx.shape[1])
    sim = Simulation(w, costs, Cluster(prefill_token_budget=1, ingress_bytes_per_s=1e30,
                                       egress_bytes_per_s=1e30)).run()
    ref = reference_decode(sim.rec.transfer_end, w.prompt_tokens, w.output_tokens - 1,
                           costs, 6)
    np.testing.assert_allclose(sim.rec.finish, ref, rtol=0, atol=1e-9)


def test_single_user_decode_is_output_minus_one_steps():
    w = Workload(np.array([0.0, 100.0]), np.array([10, 20]), np.array([5, 1]))
    sim = Simulation(w, constant_costs(0.5, 0.25, layout_s=0.125),
                     Cluster(egress_bytes_per_s=1e30, ingress_bytes_per_s=1e30)).run()
    assert sim.rec.prefill_end[0] == 0.5
    assert sim.rec.decode_start[0] == pytest.approx(0.5 + 0.125)
    assert sim.rec.finish[0] == pytest.approx(0.5 + 0.125 + 4 * 0.25)
    assert sim.rec.finish[1] == 100.5      # one output token: done at prefill end


def test_link_bandwidth_is_shared_max_min_fairly():
    env = simpy.Environment()
    # two prefill egresses of 10 B/s, one decode ingress of 12 B/s
    net = Network(env, [10.0, 10.0], [12.0])
    done = {}

    def send(name, src, nbytes, at):
        yield env.timeout(at)
        yield net.send(src, 0, nbytes)
        done[name] = env.now
    env.process(send("a", 0, 60.0, 0.0))
    env.process(send("b", 1, 60.0, 0.0))
    env.process(send("c", 1, 12.0, 100.0))
    env.run()
    # a and b share 12 B/s (6 each): 60 B take 10 s; c alone is egress-bound: 1.2 s
    assert done["a"] == pytest.approx(10.0) and done["b"] == pytest.approx(10.0)
    assert done["c"] == pytest.approx(101.2)
    assert net.busy_bytes[0] == pytest.approx(132.0)


def test_prefill_batches_respect_the_token_budget():
    w = Workload(np.zeros(50), np.full(50, 30), np.ones(50, np.int64))
    sim = Simulation(w, constant_costs(1.0, 0.0), Cluster(prefill_token_budget=100)).run()
    starts, counts = np.unique(sim.rec.prefill_start, return_counts=True)
    assert np.all(counts[:-1] == 3) and counts.sum() == 50       # 3 x 30 <= 100 < 4 x 30
    np.testing.assert_array_equal(starts, np.arange(len(starts)))


def test_requests_that_can_never_fit_are_rejected_and_counted():
    w = Workload(np.array([0.0, 1.0, 2.0, 3.0]), np.array([10, 500, 10, 10]),
                 np.array([5, 5, 400, 5]))
    costs = constant_costs(0.1, 0.01, max_prompt_tokens=100, max_context=200,
                           kv_capacity_tokens=300)
    sim = Simulation(w, costs, Cluster()).run()
    assert sim.rec.status.tolist() == [DONE, REJECTED, REJECTED, DONE]
    assert sim.rec.reason.tolist() == [-1, 0, 1, -1]


def test_decode_admission_waits_for_kv_capacity_fcfs():
    # capacity for one request at a time: the second waits for the first to finish
    w = Workload(np.array([0.0, 0.0]), np.array([50, 50]), np.array([11, 11]))
    costs = constant_costs(0.1, 1.0, kv_capacity_tokens=100, max_batch=4)
    sim = Simulation(w, costs, Cluster(egress_bytes_per_s=1e30,
                                       ingress_bytes_per_s=1e30)).run()
    assert sim.rec.finish[0] == pytest.approx(0.1 + 10)
    assert sim.rec.transfer_start[1] == pytest.approx(sim.rec.finish[0])
    assert sim.rec.finish[1] == pytest.approx(0.1 + 20)


@pytest.mark.parametrize("users, think", [(1, 0.0), (5, 0.05), (20, 0.2)])
def test_closed_system_conserves_requests_and_obeys_the_response_time_law(users, think):
    # N clients, think time Z: at every instant thinking + in system = N, every request is
    # sent once and ends once, and the interactive response time law R = N / X - Z holds
    # (X = completions per second, R = mean time in system).
    rng = np.random.default_rng(2)
    n = 4000
    w = Workload(np.zeros(n), rng.integers(20, 200, n), rng.integers(1, 30, n))
    costs = FunctionCosts("affine", 500, 1000, 2000, 4000, 4,
                          prefill=lambda t: 0.001 + 2e-5 * t,
                          decode=lambda ctx: 0.002 + 1e-6 * ctx.sum(axis=1))
    sim = Simulation(w, costs, Cluster(prefill_instances=2, decode_instances=2,
                                       egress_bytes_per_s=1e8, ingress_bytes_per_s=2e8),
                     closed=(users, think), seed=1).run()
    rec, arr = sim.rec, sim.w.arrival_s
    assert np.all(rec.status == DONE)
    # in system at each arrival: started before and not yet ended (< users: one just left)
    starts, ends = np.sort(arr), np.sort(rec.finish)
    in_system = np.arange(1, n + 1) - np.searchsorted(ends, starts, side="right")
    assert in_system.max() <= users and in_system.min() >= 1
    if users == 1:
        np.testing.assert_array_equal(arr[1:], rec.finish[:-1])    # one at a time
    # each client is, at every instant, thinking or waiting for its one request
    last = np.array([rec.finish[sim.client_of == c].max() for c in range(users)])
    assert np.sum(rec.finish - arr) + np.sum(sim.thinks) == pytest.approx(last.sum(), rel=1e-9)
    X, R = n / sim.end, np.mean(rec.finish - arr)
    # the interactive response time law, up to the sampling noise of the think times
    assert R == pytest.approx(users / X - think, rel=0.02, abs=3 * think / np.sqrt(n))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 120), prefill=st.integers(1, 3), decode=st.integers(1, 3),
       batch=st.integers(1, 6), budget=st.integers(0, 400), colocated=st.booleans(),
       rate=st.floats(1.0, 500.0), seed=st.integers(0, 1000))
def test_any_small_cluster_conserves_requests_and_keeps_littles_law(
        n, prefill, decode, batch, budget, colocated, rate, seed):
    w = synthetic(rate, n, parse_dist("uniform:1,300"), parse_dist("uniform:1,40", "--osl"),
                  seed=seed)
    costs = FunctionCosts("affine", 100, 250, 280, 900, batch,
                          prefill=lambda t: 1e-3 + 1e-5 * t,
                          decode=lambda ctx: 2e-3 + 1e-6 * ctx.sum(axis=1),
                          layout=lambda p: 1e-6 * p)
    sim = Simulation(w, costs, Cluster(prefill, decode, budget, egress_bytes_per_s=1e6,
                                       ingress_bytes_per_s=2e6, link_latency_s=1e-4,
                                       colocated=colocated)).run()
    rec = sim.rec
    assert np.all((rec.status == DONE) | (rec.status == REJECTED))
    assert np.all(sim.kv_free == costs.kv_capacity_tokens)
    for q in (sim.q_prefill, sim.q_decode, sim.q_transfer, sim.q_batch):
        assert q.length == 0 and q.entered == q.left
        if q.left:
            assert q.area == pytest.approx(q.waits, rel=1e-9, abs=1e-12)
    done = rec.status == DONE
    assert np.all(rec.prefill_start[done] >= w.arrival_s[done])
    assert np.all(rec.finish[done] >= rec.prefill_end[done])
    # batches never exceed the token budget (a single longer prompt runs alone)
    limit = budget or costs.max_prompt_tokens
    for key in set(zip(rec.prefill_instance[done], rec.prefill_start[done], strict=True)):
        members = done & (rec.prefill_instance == key[0]) & (rec.prefill_start == key[1])
        assert members.sum() == 1 or w.prompt_tokens[members].sum() <= limit


@pytest.mark.parametrize("egress, expect", [
    (1000.0, "prefill"),      # the link keeps up: the KV is in when the prefill ends
    (100.0, "link"),          # the link is slower than the prefill: it started early
])
def test_overlap_kv_streams_the_cache_during_prefill(egress, expect):
    # one request: prompt 100 tokens x 2 B = 200 B of KV, prefill 1 s, latency 0.5 s
    w = Workload(np.array([0.0]), np.array([100]), np.array([3]))
    costs = constant_costs(1.0, 0.25, kv_bytes_per_token=2)
    plain = Simulation(w, costs, Cluster(egress_bytes_per_s=egress, ingress_bytes_per_s=1e9,
                                         link_latency_s=0.5)).run()
    both = Simulation(w, costs, Cluster(egress_bytes_per_s=egress, ingress_bytes_per_s=1e9,
                                        link_latency_s=0.5, overlap_kv=True)).run()
    assert plain.rec.transfer_end[0] == pytest.approx(1.0 + 200 / egress + 0.5)
    arrived = 1.0 if expect == "prefill" else 200 / egress
    assert both.rec.transfer_start[0] == 0.0
    assert both.rec.transfer_end[0] == pytest.approx(arrived + 0.5)
    assert both.rec.finish[0] == pytest.approx(arrived + 0.5 + 2 * 0.25)
    assert both.rec.prefill_end[0] == plain.rec.prefill_end[0] == 1.0


def test_overlap_kv_keeps_requests_and_littles_law():
    _, _, sim = mixed_run(overlap_kv=True)
    assert np.all((sim.rec.status == DONE) | (sim.rec.status == REJECTED))
    assert np.all(sim.kv_free == sim.costs.kv_capacity_tokens)
    for q in (sim.q_prefill, sim.q_decode, sim.q_transfer, sim.q_batch):
        assert q.length == 0 and q.entered == q.left
        if q.left:
            assert q.area == pytest.approx(q.waits, rel=1e-9)
    early = sim.rec.transfer_start == sim.rec.prefill_start
    assert early.sum() > 0
