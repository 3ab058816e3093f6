"""Decode steps on the mesh equal the numpy reference (fp32) for many tiny configurations.

Hypothesis draws head counts, GQA ratios, explicit head_dim, sizes not divisible by the
mesh, biases, tied embeddings, both q/k/v layouts and mesh shapes 3x2 .. 8x4; every case
runs several decode steps after a reference prefill and compares the logits.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import reference as ref
from compiler.decode import compile_decode
from compiler.emit import verify_program
from compiler.frontend import parse_config
from compiler.numerics import round_weights
from compiler.place import verify_placement
from compiler.route import verify_routes
from compiler.tile import hub_stride, verify_tiles
from compiler.weights import random_weights
from emulator.hw.errors import ConfigError, FitError
from emulator.hw.mesh import load_mesh
from emulator.mesh.runtime import MeshDecoder, run_timing
from isa.interpreter import run_reference

MESHES = [(3, 2), (4, 4), (5, 3), (8, 4)]
TOLERANCE = 1e-4
MAX_CONTEXT = 16


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def make_spec(arch="LlamaForCausalLM", hidden=16, heads=4, kv_heads=2, head_dim=None,
              ffn=24, vocab=40, layers=2, tie=False, attention_bias=None, mlp_bias=None):
    """A tiny ModelSpec from keyword arguments."""
    cfg = {"architectures": [arch], "hidden_size": hidden, "intermediate_size": ffn,
           "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "vocab_size": vocab,
           "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": tie}
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    if attention_bias is not None:
        cfg["attention_bias"] = attention_bias
    if mlp_bias is not None:
        cfg["mlp_bias"] = mlp_bias
    return parse_config(cfg, "test")


@st.composite
def cases(draw):
    """(spec, mesh shape, layout, prompt) of a tiny model."""
    kv = draw(st.integers(1, 4))
    heads = kv * draw(st.sampled_from([1, 2, 3, 4]))
    head_dim = draw(st.sampled_from([2, 4, 6, 8]))
    explicit = draw(st.booleans())
    hidden = draw(st.integers(4, 30)) if explicit else heads * head_dim
    arch = draw(st.sampled_from(["LlamaForCausalLM", "Qwen2ForCausalLM",
                                 "MistralForCausalLM"]))
    llama = arch == "LlamaForCausalLM"
    spec = make_spec(arch, hidden, heads, kv, head_dim if explicit else None,
                     ffn=draw(st.integers(3, 40)), vocab=draw(st.integers(5, 50)),
                     layers=draw(st.integers(1, 2)), tie=draw(st.booleans()),
                     attention_bias=draw(st.booleans()) if llama else None,
                     mlp_bias=draw(st.booleans()) if llama else None)
    mesh = draw(st.sampled_from(MESHES))
    layouts = ["groups", "even"] + (["spread"] if mesh[1] >= kv else [])
    layout = draw(st.sampled_from(layouts))
    prompt = draw(st.lists(st.integers(0, spec.vocab_size - 1), min_size=1, max_size=7))
    return spec, mesh, layout, prompt


def run_and_compare(spec, shape, layout, prompt, steps=3, seed=0, engine="numba"):
    """Decode `steps` tokens on the mesh and with the reference; return the worst error."""
    weights = random_weights(spec, seed)
    mesh = load_mesh("small").with_mesh(*shape)
    decoder = MeshDecoder(spec, weights, mesh, engine=engine, max_context=MAX_CONTEXT,
                          layout=layout)
    _, cache = ref.prefill(spec, weights, prompt)
    decoder.load_kv(cache)
    token, worst = int(prompt[-1]), 0.0
    for n in range(steps):
        logits, _ = decoder.step(token, len(prompt) + n)
        expected = ref.decode_step(spec, weights, token, cache)
        worst = max(worst, rel_err(logits, expected))
        token = int(np.argmax(expected))
    return worst, decoder


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_mesh_logits_match_reference(case):
    spec, shape, layout, prompt = case
    worst, decoder = run_and_compare(spec, shape, layout, prompt)
    assert decoder.plan.layout == layout
    assert worst <= TOLERANCE


@pytest.mark.parametrize("shape", MESHES)
def test_every_pass_verifies(shape):
    spec = make_spec(hidden=20, heads=6, kv_heads=3, head_dim=4, ffn=30, vocab=37,
                     attention_bias=True)
    mesh = load_mesh("small").with_mesh(*shape)
    for layout in ("groups", "even") + (("spread",) if shape[1] >= 3 else ()):
        compiled = compile_decode(spec, mesh, max_context=MAX_CONTEXT, layout=layout)
        verify_tiles(compiled.plan)
        verify_placement(compiled.placement, mesh)
        verify_routes(compiled.routes, mesh)
        for pos in (0, 5, MAX_CONTEXT - 1):
            verify_program(compiled.decode, mesh, pos)


def test_reference_engine_agrees_with_numba_engine():
    spec = make_spec(hidden=16, heads=4, kv_heads=2, ffn=10, vocab=23, layers=1)
    a, dec_a = run_and_compare(spec, (3, 2), "even", [1, 2, 3], steps=2, engine="reference")
    b, dec_b = run_and_compare(spec, (3, 2), "even", [1, 2, 3], steps=2, engine="numba")
    assert a <= TOLERANCE and b <= TOLERANCE
    assert [r.cycles for r in dec_a.results] == [r.cycles for r in dec_b.results]
    assert np.array_equal(dec_a.sram, dec_b.sram)


def test_steps_run_in_place_with_the_same_logits_as_copying_runs():
    """MeshDecoder runs the engine in place on its SRAM; forcing a copy per step (the old
    behaviour) gives the same logits, cycles and SRAM bit for bit."""
    spec = make_spec(hidden=16, heads=4, kv_heads=2, ffn=20, vocab=30)
    weights = random_weights(spec, 2)
    mesh = load_mesh("small").with_mesh(4, 4)
    decoders = [MeshDecoder(spec, weights, mesh, max_context=MAX_CONTEXT) for _ in range(2)]
    copying, in_place = decoders
    engine = copying.run
    copying.run = lambda *args, in_place, **kw: engine(*args, in_place=False, **kw)
    _, cache = ref.prefill(spec, weights, [4, 8])
    for decoder in decoders:
        decoder.load_kv(cache)
    sram = in_place.sram
    for n in range(3):
        (a, ra), (b, rb) = (d.step(5 + n, 2 + n) for d in decoders)
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
        assert ra.cycles == rb.cycles
    assert in_place.sram is sram and copying.sram is not sram
    assert np.array_equal(in_place.sram.view(np.uint32), copying.sram.view(np.uint32))


def test_generate_matches_reference_generate():
    spec = make_spec(hidden=16, heads=4, kv_heads=1, ffn=20, vocab=30, tie=True)
    weights = random_weights(spec, 4)
    decoder = MeshDecoder(spec, weights, load_mesh("small").with_mesh(4, 4),
                          max_context=MAX_CONTEXT)
    tokens, logits = decoder.generate([5, 9, 2], 5)
    ref_tokens, ref_logits = ref.generate(spec, weights, [5, 9, 2], 5)
    assert tokens == ref_tokens
    assert logits.shape == (5, spec.vocab_size) and logits.dtype == np.float32
    assert rel_err(logits, ref_logits) <= TOLERANCE
    assert len(decoder.results) == 4 and all(r.cycles > 0 for r in decoder.results)


def test_load_kv_returns_bytes_moved():
    spec = make_spec()
    weights = random_weights(spec, 0)
    decoder = MeshDecoder(spec, weights, load_mesh("small").with_mesh(4, 4),
                          max_context=MAX_CONTEXT)
    _, cache = ref.prefill(spec, weights, [1, 2, 3, 4, 5])
    assert decoder.load_kv(cache) == 5 * spec.kv_bytes_per_token(4)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_is_close_to_reference_with_rounded_weights(dtype):
    spec = make_spec(hidden=16, heads=4, kv_heads=2, ffn=24, vocab=40)
    weights = random_weights(spec, 2)
    mesh = load_mesh("small").with_mesh(4, 4)
    decoder = MeshDecoder(spec, weights, mesh, dtype=dtype, max_context=MAX_CONTEXT)
    assert decoder.compiled.decode.program.dtype == dtype
    rounded = round_weights(weights, dtype)
    _, cache = ref.prefill(spec, rounded, [3, 4])
    decoder.load_kv(cache)
    logits, result = decoder.step(7, 2)
    assert rel_err(logits, ref.decode_step(spec, rounded, 7, cache)) < 2e-2
    fp32 = MeshDecoder(spec, weights, mesh, max_context=MAX_CONTEXT)
    fp32.load_kv(ref.prefill(spec, weights, [3, 4])[1])
    assert fp32.step(7, 2)[1].cycles > result.cycles     # wider SIMD in half precision


def test_timing_only_run_has_the_same_cycles():
    spec = make_spec()
    decoder = MeshDecoder(spec, random_weights(spec, 0), load_mesh("small").with_mesh(5, 3),
                          max_context=MAX_CONTEXT)
    _, result = decoder.step(3, 0)
    program = decoder.compiled.decode.for_position(0)
    timing = run_reference(program, decoder.mesh, functional=False)
    assert timing.cycles == result.cycles
    assert run_timing(decoder.compiled, decoder.mesh, 0).cycles == result.cycles


def test_model_that_does_not_fit_raises_fit_error():
    spec = make_spec(hidden=256, heads=8, kv_heads=2, ffn=1024, vocab=4096, layers=4)
    with pytest.raises(FitError, match=r"needs \d+ bytes of SRAM per PE .* a PE has 49152 "
                                        r"bytes; .*smallest square mesh that fits: \d+x\d+"):
        compile_decode(spec, load_mesh("small").with_mesh(4, 4), layout="even")


def test_step_rejects_a_gap_in_positions():
    spec = make_spec()
    decoder = MeshDecoder(spec, random_weights(spec, 0), load_mesh("small").with_mesh(4, 4),
                          max_context=MAX_CONTEXT)
    with pytest.raises(ConfigError, match="holds 0 positions"):
        decoder.step(1, 3)


@pytest.mark.parametrize("layout", ["groups", "even"])
def test_many_empty_chunks(layout):
    # hidden 6 on 8 columns, ffn 3 and vocab 3 on 4 rows, one kv group for 4 rows
    spec = make_spec(hidden=6, heads=2, kv_heads=1, head_dim=4, ffn=3, vocab=3, layers=2)
    worst, decoder = run_and_compare(spec, (8, 4), layout, [0, 1, 2, 1, 0, 2, 2, 1, 0, 1])
    assert worst <= TOLERANCE
    assert (decoder.plan.vec("hidden").sizes() == 0).any()


@pytest.mark.parametrize("shape,kv_heads", [((4, 16), 2), ((3, 17), 3), ((5, 32), 4)])
def test_hub_rows_match_reference(shape, kv_heads):
    """Tall meshes use hub rows in the even layout (no weights; attention, KV, gather)."""
    spec = make_spec(hidden=24, heads=2 * kv_heads, kv_heads=kv_heads, head_dim=4, ffn=40,
                     vocab=37)
    worst, decoder = run_and_compare(spec, shape, "even", [3, 1, 4, 1, 5], steps=3)
    assert hub_stride(shape[1], kv_heads) >= 4
    assert not decoder.plan.weight_rows()[0] and decoder.plan.vec("qkv").size(0) == 0
    assert worst <= TOLERANCE


@pytest.mark.parametrize("shape,kv_heads,head_dim", [((4, 4), 2, 4), ((5, 7), 3, 8),
                                                    ((4, 8), 1, 2), ((3, 16), 2, 6)])
def test_spread_layout_matches_reference(shape, kv_heads, head_dim):
    """Spread layout: KV over every band row, attention sequence-parallel over columns,
    key dims over the band's rows (docs/mapping.md, "Spread layout")."""
    spec = make_spec(hidden=24, heads=2 * kv_heads, kv_heads=kv_heads, head_dim=head_dim,
                     ffn=40, vocab=37, attention_bias=True)
    worst, decoder = run_and_compare(spec, shape, "spread", [3, 1, 4, 1, 5, 9, 2], steps=3)
    assert worst <= TOLERANCE
    bands = decoder.plan.bands
    assert bands.rows == kv_heads * bands.size and bands.rows <= shape[1] < 2 * bands.rows
    assert "MB" in decoder.compiled.routes.colors or not bands.nv[1:].any()


def long_context_spec():
    """A tiny model whose position table reaches past 1,000 positions."""
    spec = make_spec(hidden=16, heads=4, kv_heads=2, ffn=24, vocab=40, layers=2)
    return dataclasses.replace(spec, max_position_embeddings=2048)


@pytest.mark.parametrize("engine", ["numba", "reference"])
def test_spread_layout_at_more_than_a_thousand_positions(engine):
    """Logits equal the reference after a 1,040-token prompt (131 slots per column on an
    8-column mesh); both engines give the same logits, cycles and SRAM bit for bit."""
    spec = long_context_spec()
    weights = random_weights(spec, 5)
    prompt = np.random.default_rng(5).integers(0, spec.vocab_size, 1040)
    _, cache = ref.prefill(spec, weights, prompt)
    mesh = load_mesh("small").with_mesh(8, 4)
    decoders = [MeshDecoder(spec, weights, mesh, engine=e, max_context=1100)
                for e in ("numba", engine)]
    for decoder in decoders:
        decoder.load_kv(ref.KVCache(cache.k.copy(), cache.v.copy()))
    token = int(prompt[-1])
    for n in range(2):
        (a, ra), (b, rb) = (d.step(token, len(prompt) + n) for d in decoders)
        expected = ref.decode_step(spec, weights, token, cache)
        assert rel_err(a, expected) <= TOLERANCE
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)) and ra.cycles == rb.cycles
        token = int(np.argmax(expected))
    assert np.array_equal(decoders[0].sram.view(np.uint32), decoders[1].sram.view(np.uint32))


def test_spread_attention_grows_with_the_position():
    """Attention scores only the active slots: a later position costs more cycles."""
    spec = long_context_spec()
    mesh = load_mesh("small").with_mesh(8, 4)
    compiled = compile_decode(spec, mesh, max_context=1024, layout="spread")
    cycles = [run_timing(compiled, mesh, pos).cycles for pos in (7, 8 * 64, 1023)]
    assert cycles[0] < cycles[1] < cycles[2]


def test_fit_error_names_the_context_that_would_fit():
    spec = long_context_spec()
    mesh = load_mesh("small").with_mesh(4, 4)
    capacity = compile_decode(spec, mesh, max_context=16, layout="spread").placement.capacity
    assert capacity % 4 == 0 and 16 <= capacity <= spec.max_position_embeddings
    small = dataclasses.replace(mesh, sram_bytes=8192)
    fits = compile_decode(spec, small, max_context=16, layout="spread").placement.capacity
    compile_decode(spec, small, max_context=fits, layout="spread")
    with pytest.raises(FitError, match=f"a context of {fits} tokens would fit"):
        compile_decode(spec, small, max_context=fits + 4, layout="spread")


@pytest.mark.parametrize("shape,kv_heads,head", [((4, 6), 1, True), ((5, 7), 3, True),
                                                 ((4, 6), 1, False)])
def test_rows_outside_the_bands_take_ffn_and_vocabulary(shape, kv_heads, head):
    """Spread layout, a context the near-equal split does not hold: the compiler moves
    vocabulary, then ffn rows onto the rows outside the bands (`spread_shift`), the
    smallest shift that fits; logits still equal the reference (docs/mapping.md, "Rows
    outside the bands")."""
    from compiler.place import fit_context, spread_shift
    from compiler.tile import max_shift, tile

    spec = dataclasses.replace(make_spec(hidden=16, heads=2 * kv_heads, kv_heads=kv_heads,
                                         head_dim=4, ffn=64, vocab=90, layers=2),
                               max_position_embeddings=4096)
    mesh = dataclasses.replace(load_mesh("small").with_mesh(*shape), sram_bytes=3072)
    words = mesh.sram_bytes // 4
    equal = fit_context(tile(spec, *shape, "spread", head), words)
    shift, best = spread_shift(spec, *shape, head, words)
    assert 0 < shift <= max_shift(spec, shape[1], head) and best > equal
    # the best over every shift, by brute force
    assert best == max(fit_context(tile(spec, *shape, "spread", head, s), words)
                       for s in range(max_shift(spec, shape[1], head) + 1))
    assert spread_shift(spec, *shape, head, words, equal)[0] == 0
    compiled = compile_decode(spec, mesh, max_context=best, layout="spread", head=head)
    plan = compiled.plan
    assert plan.shift == shift and compiled.placement.capacity == best
    assert plan.side_max("ffn", True) + plan.side_max("vocab", True) \
        > plan.side_max("ffn", False) + plan.side_max("vocab", False)
    with pytest.raises(FitError, match=f"a context of {best} tokens would fit"):
        compile_decode(spec, mesh, max_context=best + shape[0], layout="spread", head=head)
    if not head:
        return
    weights = random_weights(spec, 3)
    prompt = np.random.default_rng(3).integers(0, spec.vocab_size, best - 2)
    _, cache = ref.prefill(spec, weights, prompt)
    decoder = MeshDecoder(spec, weights, mesh, max_context=best, layout="spread")
    assert decoder.plan.shift == shift
    decoder.load_kv(cache)
    token = int(prompt[-1])
    for n in range(2):
        logits, _ = decoder.step(token, len(prompt) + n)
        expected = ref.decode_step(spec, weights, token, cache)
        assert rel_err(logits, expected) <= TOLERANCE
        token = int(np.argmax(expected))
