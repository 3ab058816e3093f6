"""Chunked prefill (`--prefill-chunk N`): values equal the numpy reference for every chunk
size, one chunk is today's prefill exactly, timing-only equals functional, memoised equals
explicit lowering with earlier chunks in the cache, and the KV stream over the link follows
its documented closed form (docs/prefill.md, "Chunked prefill")."""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import reference
from compiler.weights import random_weights
from emulator.hw.link import LinkConfig, load_link
from emulator.link.transfer import chunk_segments, stream_kv
from emulator.prefill import engine_model
from emulator.prefill.model import lower_prefill
from emulator.prefill.run import run_prefill
from emulator.prefill.verify import verify
from tests.test_prefill import TRN2, make_spec, rel_err, small_models

TOL = 1e-4
SMALL_TILES = dataclasses.replace(TRN2, moving_free_max=128, name="small-tiles")


@st.composite
def prompt_and_chunk(draw):
    """A prompt length 1..260 and a chunk size giving at most 5 chunks."""
    P = draw(st.integers(1, 260))
    return P, draw(st.integers(max(1, math.ceil(P / 5)), P + 3))


def _check_values(spec, P, chunk, seed=0, hw=TRN2):
    weights = random_weights(spec, seed)
    tokens = np.random.default_rng(seed + P).integers(0, spec.vocab_size, P)
    result = run_prefill(spec, hw, tokens, weights, dtype="fp32", chunk=chunk)
    logits, cache = reference.prefill(spec, weights, tokens)
    assert rel_err(result.logits_last, logits[-1]) <= TOL
    assert result.kv_cache.k.shape == cache.k.shape
    assert rel_err(result.kv_cache.k, cache.k) <= TOL
    assert rel_err(result.kv_cache.v, cache.v) <= TOL
    return result


@settings(max_examples=10, deadline=None)
@given(small_models(), prompt_and_chunk(), st.integers(0, 1000))
def test_chunked_values_equal_reference(spec, pc, seed):
    P, chunk = pc
    result = _check_values(spec, P, chunk, seed)
    chunks = math.ceil(P / chunk)
    assert len(result.chunk_rows) == chunks
    assert [r["tokens"] for r in result.chunk_rows] == \
        [min(chunk, P - i * chunk) for i in range(chunks)]


@pytest.mark.parametrize("P,chunk", [(300, 128), (300, 100), (257, 256), (6, 1), (700, 520)])
def test_chunk_boundaries_across_tiles(P, chunk):
    """Chunks that start inside and on 128-query / 512-key tile edges, and one token each."""
    spec = make_spec(hidden=32, heads=2, kv=1, inter=40, vocab=64, layers=1)
    _check_values(spec, P, chunk)


def test_chunked_on_many_chips_and_trn3():
    _check_values(make_spec(heads=6, kv=3, head_dim=8), 150, 64,
                  hw=dataclasses.replace(TRN2, chips=2))
    from emulator.hw.prefill import load_prefill
    _check_values(make_spec(), 200, 90, hw=load_prefill("trn3"))


def test_one_chunk_is_todays_prefill():
    """A chunk equal to (or longer than) the prompt is the unchunked prefill, exactly."""
    spec = make_spec(layers=3)
    base = run_prefill(spec, TRN2, 200, dtype="bf16", timing_only=True)
    for chunk in (200, 201, 10_000):
        one = run_prefill(spec, TRN2, 200, dtype="bf16", timing_only=True, chunk=chunk)
        assert one.cycles == base.cycles
        assert one.per_op == base.per_op and one.engine_busy == base.engine_busy
        assert one.chunk is None and one.parts == []
        assert one.chunk_rows == [{"index": 0, "past": 0, "tokens": 200, "start_cycle": 0,
                                   "end_cycle": base.cycles, "cycles": base.cycles,
                                   "end_seconds": base.seconds, "flops": base.flops}]


def test_chunks_run_back_to_back():
    """Chunked cycles are the sum of the chunks' own prefills (each lowered with its past):
    chunk i+1 starts when chunk i's last instruction is done."""
    spec = make_spec(layers=2)
    P, chunk = 300, 128
    r = run_prefill(spec, TRN2, P, dtype="bf16", timing_only=True, chunk=chunk)
    total = 0
    for i, row in enumerate(r.chunk_rows):
        past, n = i * chunk, min(chunk, P - i * chunk)
        low = lower_prefill(spec, TRN2, n, "bf16", True, past=past, last=past + n == P)
        cycles = engine_model.simulate(low.program).cycles
        assert row["past"] == past and row["tokens"] == n
        assert row["cycles"] == cycles and row["start_cycle"] == total
        total += cycles
    assert r.cycles == total == r.chunk_rows[-1]["end_cycle"]
    assert sum(op["cycles"] for op in r.per_op) == r.cycles
    assert sum(layer["cycles"] for layer in r.per_layer) == r.cycles
    assert r.flops == pytest.approx(sum(row["flops"] for row in r.chunk_rows))
    # the attention FLOPs of the whole prompt: causal, whichever way it is chunked
    whole = run_prefill(spec, TRN2, P, dtype="bf16", timing_only=True)
    attn = [op["flops"] for op in r.per_op if op["name"] == "attention"]
    attn1 = [op["flops"] for op in whole.per_op if op["name"] == "attention"]
    assert sum(attn) == pytest.approx(sum(attn1))
    slices = r.trace_slices()
    assert {s["args"]["chunk"] for s in slices} == {0, 1, 2}
    summary = r.summary()
    assert summary["chunk"] == chunk and len(summary["chunks"]) == 3
    assert summary["instructions"] == sum(len(p.program) for p in r.parts)


@settings(max_examples=6, deadline=None)
@given(small_models(), prompt_and_chunk())
def test_chunked_timing_only_same_cycles(spec, pc):
    P, chunk = pc
    functional = run_prefill(spec, TRN2, P, dtype="bf16", chunk=chunk)
    timing = run_prefill(spec, TRN2, P, dtype="bf16", timing_only=True, chunk=chunk)
    for part in functional.parts:
        assert verify(part.program, TRN2) == []
    assert functional.cycles == timing.cycles
    assert functional.engine_busy == timing.engine_busy
    assert [op["cycles"] for op in functional.per_op] == [op["cycles"] for op in timing.per_op]


@pytest.mark.parametrize("past,n", [(1024, 300), (1100, 400), (512, 700)])
def test_memoised_chunk_equals_explicit(past, n):
    """A late chunk (many key tiles of earlier chunks: repeated bodies and replayed
    super-batches) schedules exactly as its written-out stream."""
    spec = make_spec(heads=4, kv=2, head_dim=16, layers=3)
    explicit = lower_prefill(spec, SMALL_TILES, n, "bf16", False, past=past).program
    memo = lower_prefill(spec, SMALL_TILES, n, "bf16", True, past=past).program
    a, b = engine_model.simulate(explicit), engine_model.simulate(memo)
    assert a.cycles == b.cycles and a.busy[-1] == b.busy[-1]
    assert np.array_equal(a.op_start, b.op_start) and np.array_equal(a.op_end, b.op_end)
    assert len(memo) < len(explicit)


# --------------------------------------------------------------------------- the link

def _closed_form(segments, link):
    """max_i (e_i + sum_{j>=i} x_j) + latency - e_last (docs/prefill.md)."""
    x = [b / link.total_bandwidth for _, b in segments]
    finish = max(e + sum(x[i:]) for i, (e, _) in enumerate(segments))
    return finish + link.latency_s - segments[-1][0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e-3), st.integers(1, 10**7)), min_size=1,
                max_size=12),
       st.floats(1e9, 1e12), st.floats(0, 1e-5))
def test_stream_closed_form(raw, bandwidth, latency):
    link = LinkConfig("test", bandwidth, latency, 1)
    ends = np.cumsum([e for e, _ in raw]).tolist()
    segments = [(e, b) for e, (_, b) in zip(ends, raw, strict=True)]
    kv = stream_kv(segments, 1, link)
    assert kv.exposed_seconds == pytest.approx(_closed_form(segments, link), rel=1e-9,
                                               abs=1e-15)
    assert kv.bytes == sum(b for _, b in segments)


@pytest.mark.parametrize("t,x", [(2e-3, 1e-3), (1e-3, 3e-3), (1e-3, 1e-3)])
def test_equal_chunks_closed_form(t, x):
    """n equal chunks of compute t and transfer x: exposed x + latency + (n-1) max(0, x-t)."""
    link = LinkConfig("test", 1e9, 5e-6, 1)
    for n in (1, 2, 7):
        segments = [((i + 1) * t, x * 1e9) for i in range(n)]
        kv = stream_kv(segments, 1, link)
        assert kv.exposed_seconds == pytest.approx(x + 5e-6 + (n - 1) * max(0.0, x - t),
                                                   rel=1e-12)


def test_run_streams_each_chunk():
    """emu run --prefill-chunk: the KV of each chunk leaves when the chunk is done."""
    from emulator.run import run_report

    common = dict(prompt_len=40, max_new_tokens=2, timing_only=True, link="efa")
    report = run_report(prefill_chunk=16, **common)
    link = load_link("efa")
    chunks = report["prefill"]["chunks"]
    assert [c["tokens"] for c in chunks] == [16, 16, 8] and report["prefill"]["chunk"] == 16
    per_token = report["kv_transfer"]["bytes_per_token"]
    segments = [(c["end_seconds"], per_token * c["tokens"]) for c in chunks]
    assert report["kv_transfer"]["exposed_seconds"] == pytest.approx(
        _closed_form(segments, link), rel=1e-12)
    assert report["ttft_s"] == pytest.approx(
        report["prefill"]["seconds"] + report["kv_transfer"]["exposed_seconds"]
        + report["kv_transfer"]["layout_seconds"], rel=1e-12)
    overlap = run_report(prefill_chunk=16, overlap_kv=True, **common)
    assert overlap["kv_transfer"]["exposed_seconds"] <= report["kv_transfer"]["exposed_seconds"]
    plain = run_report(**common)
    assert plain["prefill"]["chunk"] is None and len(plain["prefill"]["chunks"]) == 1


def test_chunk_segments_per_layer():
    rows = [{"tokens": 4, "end_seconds": 1.0}, {"tokens": 2, "end_seconds": 2.0}]
    assert chunk_segments(rows, 10) == [(1.0, 40), (2.0, 20)]
    assert chunk_segments(rows, 10, [[0.5, 1.0], [1.5, 2.0]]) == \
        [(0.5, 20.0), (1.0, 20.0), (1.5, 10.0), (2.0, 10.0)]


# --------------------------------------------------------------------------- command line

def _emu(*args):
    return subprocess.run([sys.executable, "-c", "from emulator.cli import main; main()",
                           *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_bad_chunk_exits_2(value):
    for cmd in (["prefill", "tiny"], ["run", "--timing-only"]):
        proc = _emu(*cmd, "--prefill-chunk", value)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "--prefill-chunk" in lines[0]


def test_prefill_json_reports_chunks():
    proc = _emu("prefill", "tiny", "--prompt-len", "100", "--prefill-chunk", "40",
                "--timing-only", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("cycles", "seconds", "chips", "flops", "roofline_seconds",
                "engine_utilization"):
        assert key in out
    assert out["chunk"] == 40 and [c["tokens"] for c in out["chunks"]] == [40, 40, 20]
    assert out["cycles"] == out["chunks"][-1]["end_cycle"]
    table = _emu("prefill", "tiny", "--prompt-len", "100", "--prefill-chunk", "40")
    assert table.returncode == 0 and "chunks of 40 tokens" in table.stdout


def test_run_decodes_from_the_chunked_cache():
    """emu run --prefill-chunk (functional): the decode steps read the KV cache the chunks
    built, so every logit row equals the unchunked run's."""
    from emulator.run import build_request, run_inference

    def logits(chunk):
        req = build_request(None, "small", None, "auto", "efa", None, None, None, 40, 4,
                            "fp32", False, False, "numba", prefill_chunk=chunk)
        return run_inference(req).logits
    assert rel_err(logits(16), logits(None)) <= TOL
