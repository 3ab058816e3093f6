"""Prefill at scale: tensor parallelism over several chips and streamed attention keep the
values of the numpy reference; the chip count, fp8 and large models behave as documented."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import reference
from compiler.frontend import ModelSpec, RopeSpec, load_config
from compiler.weights import random_weights
from emulator.hw.errors import ConfigError, FitError
from emulator.hw.prefill import load_prefill
from emulator.prefill.run import choose_chips, hbm_bytes_needed, run_prefill
from emulator.prefill.verify import verify
from tests.test_prefill import make_spec, rel_err, small_models

TRN2 = load_prefill("trn2")
# 128-wide key tiles: prompts of a few hundred tokens cross several key-tile boundaries
SMALL_TILES = dataclasses.replace(TRN2, moving_free_max=128, name="small-tiles")
TOL = 1e-5


def check(spec, P, chips, hw=SMALL_TILES, seed=0):
    weights = random_weights(spec, seed)
    tokens = np.random.default_rng(seed + P).integers(0, spec.vocab_size, P)
    result = run_prefill(spec, hw, tokens, weights, dtype="fp32", chips=chips)
    logits, cache = reference.prefill(spec, weights, tokens)
    assert result.chips == chips and result.cores == chips * hw.cores_per_chip
    assert rel_err(result.logits_last, logits[-1]) <= TOL
    assert rel_err(result.kv_cache.k, cache.k) <= TOL
    assert rel_err(result.kv_cache.v, cache.v) <= TOL
    return result


@settings(max_examples=6, deadline=None)
@given(small_models(), st.integers(1, 300), st.integers(2, 4), st.integers(0, 100))
def test_tensor_parallel_streamed_attention_equals_reference(spec, P, chips, seed):
    check(spec, P, chips, seed=seed)


@pytest.mark.parametrize("P", [127, 128, 129, 257, 640])
def test_key_tile_boundaries(P):
    r = check(make_spec(hidden=32, heads=4, kv=2, head_dim=8, inter=40, vocab=64, layers=1),
              P, 1)
    assert verify(r.program, SMALL_TILES) == []


def test_tensor_parallel_cycles_same_in_timing_only():
    spec = make_spec(layers=3)
    a = run_prefill(spec, TRN2, 200, dtype="bf16", chips=3)
    b = run_prefill(spec, TRN2, 200, dtype="bf16", chips=3, timing_only=True)
    assert a.cycles == b.cycles and a.engine_busy == b.engine_busy
    single = run_prefill(spec, TRN2, 200, dtype="bf16", timing_only=True, chips=1)
    assert b.bytes_moved["collective"] == single.bytes_moved["collective"]


def test_default_chips_is_the_fewest_that_fit():
    spec = load_config("programs/models/llama-3.1-70b.json")
    need = [hbm_bytes_needed(spec, TRN2, 4096, "bf16", n)["total"] for n in (1, 2)]
    assert need[0] > TRN2.hbm_bytes >= need[1]
    assert choose_chips(spec, TRN2, 4096, "bf16", None) == 2
    with pytest.raises(FitError, match="HBM"):
        choose_chips(spec, TRN2, 4096, "bf16", 1)
    with pytest.raises(ConfigError, match="chips"):
        choose_chips(spec, TRN2, 4096, "bf16", 17)
    small = load_config("programs/models/llama-3.1-8b.json")
    assert choose_chips(small, TRN2, 4096, "bf16", None) == 1


def test_llama_70b_on_a_trn2_instance():
    spec = load_config("programs/models/llama-3.1-70b.json")
    r = run_prefill(spec, load_prefill("trn2-48xl"), 2048, timing_only=True, chips=16)
    assert r.chips == 16 and r.summary()["chips"] == 16
    assert r.seconds > r.roofline_seconds > 0
    assert r.roofline_seconds == pytest.approx(
        max(r.flops / (16 * 667e12), sum(op["min_hbm_bytes"] for op in r.per_op) /
            (16 * 2.9e12)))
    assert len(r.per_layer) == 81 and r.bytes_moved["collective"] > 0


def llama_405b() -> ModelSpec:
    rope = RopeSpec(500000.0, "llama3", 8.0, 1.0, 4.0, 8192)
    return ModelSpec("LlamaForCausalLM", 16384, 53248, 126, 128, 8, 128, 128256, 1e-5, "silu",
                     False, False, False, 131072, "bfloat16", rope)


def test_llama_405b_needs_and_gets_an_instance():
    spec = llama_405b()
    with pytest.raises(FitError):
        choose_chips(spec, TRN2, 1024, "bf16", 4)
    r = run_prefill(spec, TRN2, 1024, timing_only=True)
    assert 8 <= r.chips <= 16 and r.seconds > r.roofline_seconds


def test_fp8_uses_the_fp8_rate_and_one_byte_weights():
    spec = load_config("programs/models/llama-3.1-8b.json")
    trn3 = load_prefill("trn3")
    bf16 = run_prefill(spec, trn3, 1024, timing_only=True, dtype="bf16")
    fp8 = run_prefill(spec, trn3, 1024, timing_only=True, dtype="fp8")
    assert fp8.dtype == "fp8"
    assert fp8.roofline_seconds < bf16.roofline_seconds
    busy = {r: sum(op["busy"]["tensor"] for op in x.per_op if op["name"] == "gate_up")
            for r, x in (("bf16", bf16), ("fp8", fp8))}
    assert busy["fp8"] * 3 < busy["bf16"]            # K packs 4 rows per PE row (MXFP8)
    assert fp8.cycles < bf16.cycles
    need8, need16 = (hbm_bytes_needed(spec, trn3, 1024, d)["weights"] for d in ("fp8", "bf16"))
    assert 2 * need8 == need16
    with pytest.raises(ConfigError, match="timing-only"):
        run_prefill(make_spec(), trn3, 8, dtype="fp8")
