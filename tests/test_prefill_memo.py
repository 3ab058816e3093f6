"""Memoised timing-only prefill: repeated bodies, replayed blocks and fast-forwarded layers
give exactly the schedule of the written-out stream."""

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.hw.prefill import load_prefill
from emulator.prefill import engine_model, kernels
from emulator.prefill.model import lower_prefill
from tests.test_prefill import make_spec

TRN2 = load_prefill("trn2")
# 128-wide key tiles and 512-token projection blocks: many repeats at small prompt lengths
SMALL_TILES = dataclasses.replace(TRN2, moving_free_max=128, name="small-tiles")


@st.composite
def repeated_streams(draw):
    """(prefix, body, reps): random instructions on 3 queues; the body's dependencies point
    inside the body, to the previous instance (offset -length) or into the prefix."""
    n_pre, ln = draw(st.integers(1, 8)), draw(st.integers(1, 6))
    reps = draw(st.integers(2, 12))
    rows = []
    for i in range(n_pre + ln):
        q = draw(st.integers(0, 2))
        kind = draw(st.sampled_from([0, 0, 1, 2])) if q == 0 else 0
        deps = []
        for _ in range(draw(st.integers(0, 2))):
            lo = 0 if i < n_pre else max(0, i - ln - 2)
            if i > lo:
                deps.append(draw(st.integers(lo, i - 1)))
        rows.append((q, kind, draw(st.integers(1, 50)), draw(st.integers(0, 20)), deps))
    return rows[:n_pre], rows[n_pre:], reps


def _arrays(rows):
    n = len(rows)
    dep = np.full((n, 4), -1, np.int64)
    for i, r in enumerate(rows):
        dep[i, :len(r[4])] = r[4]
    return (np.array([r[0] for r in rows], np.int32), np.array([r[1] for r in rows], np.int8),
            np.array([r[2] for r in rows], np.int64), np.array([r[3] for r in rows], np.int64),
            dep)


@settings(max_examples=40, deadline=None)
@given(repeated_streams())
def test_segment_kernel_equals_expanded_stream(stream):
    prefix, body, reps = stream
    n_pre, ln = len(prefix), len(body)
    # written out: prefix, the body as instance "A", then reps instances
    expanded = list(prefix)
    for k in range(reps + 1):
        for r in body:
            deps = [d + k * ln if d >= n_pre else d for d in r[4]]
            expanded.append((*r[:4], deps))
    q, kind, cost, lat, dep = _arrays(expanded)
    start, ready, busy = kernels.schedule_kernel(q, kind, cost, lat, dep, 3)
    # memoised: prefix, A, the body stored once and repeated
    stored = expanded[:n_pre + 2 * ln]
    q, kind, cost, lat, dep = _arrays(stored)
    s0 = n_pre + ln
    dkind = np.zeros_like(dep)
    prev = (dep[s0:] >= n_pre) & (dep[s0:] < s0)
    dkind[s0:][prev] = kernels.DEP_PREV_INSTANCE
    dep[s0:][prev] -= n_pre
    state = np.zeros((3, kernels.STATE_COLS), np.int64)
    mbusy = np.zeros(3, np.int64)
    seg = np.array([[s0, ln, reps]], np.int64)
    first, last, _ = kernels.schedule_chunk(q, kind, cost, lat, dep, dkind, seg, state, mbusy,
                                            np.zeros(1, np.int64))
    assert np.array_equal(last[s0:], ready[-ln:])
    assert np.array_equal(first[s0:], start[s0:s0 + ln])
    assert np.array_equal(last[:s0], ready[:s0])
    assert np.array_equal(mbusy, busy)


def _compare(spec, P, hw=SMALL_TILES):
    explicit = lower_prefill(spec, hw, P, "bf16", timing_only=False).program
    memo = lower_prefill(spec, hw, P, "bf16", timing_only=True).program
    a, b = engine_model.simulate(explicit), engine_model.simulate(memo)
    assert a.cycles == b.cycles
    for slot, core in enumerate(memo.cores):          # representative cores' queues
        e = explicit.cores.index(core)
        assert np.array_equal(a.busy[4 * e:4 * e + 4], b.busy[4 * slot:4 * slot + 4])
    assert a.busy[-1] == b.busy[-1]
    assert np.array_equal(a.op_start, b.op_start) and np.array_equal(a.op_end, b.op_end)
    return explicit, memo, a, b


@settings(max_examples=2, deadline=None)
@given(st.integers(1100, 1400), st.sampled_from([(4, 2, 16), (2, 1, 32), (6, 3, 8)]))
def test_memoised_lowering_equals_explicit(P, heads):
    h, kv, d = heads
    spec = make_spec(heads=h, kv=kv, head_dim=d, layers=3)
    explicit, memo, a, b = _compare(spec, P)
    assert len(memo.segments) > 0 and len(memo) < len(explicit)


def test_layers_fast_forward_exactly():
    spec = make_spec(layers=6, hidden=256, heads=8, kv=2, head_dim=32, inter=512)
    explicit, memo, a, b = _compare(spec, 1500, TRN2)
    assert b.simulated_layers == 3
