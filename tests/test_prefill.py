"""Prefill on the systolic machine: values equal the numpy reference (fp32 within 1e-4
relative), the KV cache equals the reference's, timing-only gives the same cycles, and the
lowering respects SBUF/PSUM capacity."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import reference
from compiler.frontend import ModelSpec, RopeSpec, load_config
from compiler.weights import random_weights
from emulator.hw.errors import ConfigError, FitError
from emulator.hw.prefill import load_prefill
from emulator.prefill import instructions as instr
from emulator.prefill.model import core_shares
from emulator.prefill.run import run_prefill
from emulator.prefill.verify import verify

TRN2 = load_prefill("trn2")
TOL = 1e-4


def make_spec(hidden=64, heads=4, kv=2, head_dim=16, inter=96, vocab=200, layers=2,
              arch="LlamaForCausalLM", bias=False, mlp_bias=False, tie=False, rope="default"):
    """A small ModelSpec built directly."""
    rope_spec = {"default": RopeSpec(10000.0),
                 "linear": RopeSpec(10000.0, "linear", factor=2.0),
                 "llama3": RopeSpec(500000.0, "llama3", 8.0, 1.0, 4.0, 64)}[rope]
    return ModelSpec(arch, hidden, inter, layers, heads, kv, head_dim, vocab, 1e-5, "silu",
                     bias, mlp_bias, tie, 4096, "float32", rope_spec)


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|."""
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def check_against_reference(spec, P, seed=0, hw=TRN2):
    weights = random_weights(spec, seed)
    tokens = np.random.default_rng(seed + P).integers(0, spec.vocab_size, P)
    result = run_prefill(spec, hw, tokens, weights, dtype="fp32")
    logits, cache = reference.prefill(spec, weights, tokens)
    assert result.logits_last.shape == (spec.vocab_size,)
    assert result.logits_last.dtype == np.float32
    assert rel_err(result.logits_last, logits[-1]) <= TOL
    assert result.kv_cache.k.shape == cache.k.shape == (spec.num_layers, spec.num_kv_heads, P,
                                                        spec.head_dim)
    assert rel_err(result.kv_cache.k, cache.k) <= TOL
    assert rel_err(result.kv_cache.v, cache.v) <= TOL
    return result


@st.composite
def small_models(draw):
    kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    arch = draw(st.sampled_from(["LlamaForCausalLM", "Qwen2ForCausalLM"]))
    bias = draw(st.booleans())
    return make_spec(hidden=draw(st.sampled_from([32, 48, 64, 96, 136])),
                     heads=kv * group, kv=kv,
                     head_dim=draw(st.sampled_from([4, 8, 12, 16, 32])),
                     inter=draw(st.integers(16, 300)), vocab=draw(st.integers(16, 300)),
                     layers=draw(st.integers(1, 2)), arch=arch, bias=bias,
                     mlp_bias=draw(st.booleans()) if arch == "LlamaForCausalLM" else False,
                     tie=draw(st.booleans()),
                     rope=draw(st.sampled_from(["default", "linear", "llama3"])))


@settings(max_examples=12, deadline=None)
@given(small_models(), st.integers(1, 300), st.integers(0, 1000))
def test_values_equal_reference(spec, P, seed):
    check_against_reference(spec, P, seed)


@pytest.mark.parametrize("P", [1, 2, 127, 128, 129, 300])
def test_prompt_lengths_around_tiles(P):
    check_against_reference(make_spec(), P)


def test_zoo_models_and_trn3():
    for name in ("tiny-gqa", "tiny-qwen2", "tiny-llama"):
        spec = load_config(f"programs/models/{name}.json")
        check_against_reference(spec, 77)
    check_against_reference(make_spec(), 200, hw=load_prefill("trn3"))


def test_long_prompt_spans_token_blocks():
    """513 tokens: several 512-token moving tiles and partial tiles everywhere."""
    check_against_reference(make_spec(hidden=32, heads=2, kv=1, inter=40, vocab=64,
                                      layers=1), 513)


@settings(max_examples=8, deadline=None)
@given(small_models(), st.integers(1, 300))
def test_timing_only_same_cycles(spec, P):
    functional = run_prefill(spec, TRN2, P, dtype="bf16")
    timing = run_prefill(spec, TRN2, P, dtype="bf16", timing_only=True)
    assert verify(functional.program, TRN2) == []
    assert functional.cycles == timing.cycles
    assert timing.logits_last is None and timing.kv_cache is None
    assert functional.engine_busy == timing.engine_busy
    assert [op["cycles"] for op in functional.per_op] == [op["cycles"] for op in timing.per_op]


def test_timing_only_copies_layers_exactly():
    """Timing-only lowers layers 0-1 and copies layer 1; functional lowers every layer."""
    spec = make_spec(layers=5)
    functional = run_prefill(spec, TRN2, 150, dtype="fp32")
    timing = run_prefill(spec, TRN2, 150, dtype="fp32", timing_only=True)
    assert functional.cycles == timing.cycles
    assert len(functional.per_layer) == len(timing.per_layer) == 6


def test_bf16_close_to_reference():
    spec = make_spec()
    weights = random_weights(spec, 3)
    tokens = np.arange(40) % spec.vocab_size
    ours = run_prefill(spec, TRN2, tokens, weights, dtype="bf16")
    ref, _ = reference.prefill(spec, weights, tokens)
    assert rel_err(ours.logits_last, ref[-1]) < 0.05
    assert int(np.argmax(ours.logits_last)) == int(np.argmax(ref[-1]))


def test_result_fields_and_trace():
    spec = make_spec()
    r = run_prefill(spec, TRN2, 64, dtype="bf16")
    assert isinstance(r.cycles, int) and r.cycles > 0
    assert r.seconds == pytest.approx(r.cycles / TRN2.tensor_clock_hz)
    assert r.roofline_seconds > 0 and r.flops > 0
    assert sum(op["cycles"] for op in r.per_op) == r.cycles
    assert sum(layer["cycles"] for layer in r.per_layer) == r.cycles
    assert {"dma", "tensor", "scalar", "vector", "collective"} == set(r.engine_busy)
    assert r.bytes_moved["hbm_dma"] > 0 and r.bytes_moved["collective"] > 0
    slices = r.trace_slices(limit=50)
    assert len(slices) == 50
    assert {"name", "engine", "start", "duration", "args"} <= set(slices[0])
    assert all(s["duration"] >= 0 and s["start"] >= 0 for s in slices)
    tracks = {}
    for item in r.trace_slices():
        tracks.setdefault(item["engine"], []).append((item["start"], item["duration"]))
    assert "core0.tensor" in tracks and "core0.tensor.load" in tracks
    for track in tracks.values():       # in-order queues: slices never overlap on a track
        track.sort()
        for (s0, d0), (s1, _) in zip(track, track[1:], strict=False):
            assert s1 >= s0 + d0 - 1e-15
    assert isinstance(r.program.instr, np.ndarray) and r.program.instr.dtype == instr.INSTR_DTYPE


def test_core_split_covers_the_model():
    spec = load_config("programs/models/llama-3.1-8b.json")
    shares = core_shares(spec, TRN2, 2048)
    assert sorted(h for s in shares for h in s.q_heads) == list(range(32))
    assert sum(s.mlp[1] for s in shares) == spec.intermediate_size
    assert sum(s.vocab[1] for s in shares) == spec.vocab_size
    assert sum(s.tokens[1] for s in shares) == 2048
    assert {s.signature(spec.group_size) for s in shares} == {shares[0].signature(4)}


def test_verify_catches_broken_streams():
    r = run_prefill(make_spec(), TRN2, 100, timing_only=True)
    assert verify(r.program, TRN2) == []
    code = r.program.instr
    mm = int(np.flatnonzero(code["op"] == instr.MULTIPLY_MOVING)[0])
    broken = r.program.instr.copy()
    broken["v"][mm, instr.A, 4] = TRN2.moving_free_max + 1
    r.program.instr = broken
    assert any("moving tile too large" in p for p in verify(r.program, TRN2))
    broken = code.copy()
    broken["dep"][5, 0] = 10
    r.program.instr = broken
    assert any("forwards" in p for p in verify(r.program, TRN2))


def test_llama_8b_timing_only():
    spec = load_config("programs/models/llama-3.1-8b.json")
    r = run_prefill(spec, TRN2, 2048, dtype="bf16", timing_only=True)
    assert verify(r.program, TRN2) == []
    assert r.seconds > r.roofline_seconds > 0.04
    assert r.roofline_seconds == pytest.approx(r.flops / 667e12)
    assert r.seconds < 3 * r.roofline_seconds
    assert len(r.per_layer) == 33
    assert r.engine_utilization["tensor"] > 0.5


def test_capacity_errors():
    spec = make_spec()
    with pytest.raises(ConfigError, match="vocabulary"):
        run_prefill(spec, TRN2, [0, spec.vocab_size], dtype="fp32")
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        run_prefill(spec, TRN2, 5000, timing_only=True)
    with pytest.raises(ConfigError, match="dtype"):
        run_prefill(spec, TRN2, 4, dtype="int8")
    with pytest.raises(ConfigError, match="head_dim"):
        run_prefill(make_spec(heads=2, kv=1, head_dim=256), TRN2, 4, timing_only=True)
    small = TRN2.__class__(**{**TRN2.__dict__, "sbuf_partition_bytes": 4096, "name": "tiny"})
    with pytest.raises(FitError, match="SBUF"):
        run_prefill(make_spec(hidden=1024, heads=8, kv=8, head_dim=128), small, 600,
                    timing_only=True)


def test_sbuf_plan_respects_capacity():
    """Token blocks shrink (and weights are re-streamed) when SBUF is smaller."""
    spec = make_spec(hidden=512, heads=4, kv=4, head_dim=128, inter=512, layers=1)
    small = TRN2.__class__(**{**TRN2.__dict__, "sbuf_partition_bytes": 28672, "name": "s"})
    big = run_prefill(spec, TRN2, 1024, timing_only=True)
    tight = run_prefill(spec, small, 1024, timing_only=True)
    assert tight.bytes_moved["hbm_dma"] > big.bytes_moved["hbm_dma"]
    check_against_reference(make_spec(hidden=512, heads=4, kv=4, head_dim=128, inter=256,
                                      layers=1, vocab=64), 700, hw=small)
