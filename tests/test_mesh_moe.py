"""Today's served models decoded on the mesh (issue 21): mixture-of-experts (router, on-wafer
top-k, experts spread over the wafer, weighted combine), qk-norm, attention sinks,
sliding-window KV rings, YaRN, biases; the `rargmax` / `ldr` instructions they need.

Oracles: the numpy reference (compiler/reference.py, itself checked against transformers
in tests/test_models_moe.py) for logits; the reference engine for the Numba engine; a
full run for the fast-forward; a functional run for timing-only cycles."""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import reference as ref
from compiler.decode import compile_decode, kind_period
from compiler.frontend import parse_config, resolve_model
from compiler.moe import expert_block
from compiler.numerics import round_fp8, round_mxfp4, round_weight_format
from compiler.place import quantized
from compiler.system import sub_spec, wafers_needed
from compiler.weights import random_weights
from emulator.hw.errors import ConfigError, MeshFault
from emulator.hw.mesh import load_mesh
from emulator.mesh.engine import run_numba
from emulator.mesh.runtime import MeshDecoder, run_timing
from isa.asm import assemble
from isa.interpreter import run_reference
from isa.opcodes import Op
from tests.test_fast_forward import JOBS, assert_same

MAX_CONTEXT = 32


def config(arch: str, heads: int, kv: int, head_dim: int, experts: int, top_k: int,
           window: int, layers: int) -> dict:
    """A tiny HF config of architecture `arch` (hidden = heads * 4)."""
    base = dict(hidden_size=4 * heads, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, head_dim=head_dim, vocab_size=48,
                max_position_embeddings=256, rms_norm_eps=1e-5)
    if arch == "qwen3":
        return dict(base, architectures=["Qwen3ForCausalLM"], intermediate_size=20,
                    attention_bias=True)
    if arch == "mixtral":
        return dict(base, architectures=["MixtralForCausalLM"], intermediate_size=12,
                    num_local_experts=experts, num_experts_per_tok=top_k, head_dim=None)
    if arch == "qwen3-moe":
        return dict(base, architectures=["Qwen3MoeForCausalLM"], intermediate_size=20,
                    moe_intermediate_size=10, num_experts=experts, num_experts_per_tok=top_k,
                    norm_topk_prob=True, mlp_only_layers=[1])
    if arch == "gpt-oss":
        return dict(base, architectures=["GptOssForCausalLM"], intermediate_size=10,
                    num_local_experts=experts, num_experts_per_tok=top_k,
                    sliding_window=window, swiglu_limit=7.0,
                    rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                  "beta_slow": 1.0, "truncate": False,
                                  "original_max_position_embeddings": 64})
    return dict(base, architectures=["MistralForCausalLM"], intermediate_size=24,
                sliding_window=window, head_dim=None)


ARCHS = ("qwen3", "mixtral", "qwen3-moe", "gpt-oss", "mistral-window")


def spec_of(arch: str, heads=4, kv=2, head_dim=8, experts=4, top_k=2, window=5, layers=2):
    cfg = {k: v for k, v in config(arch, heads, kv, head_dim, experts, top_k, window,
                                   layers).items() if v is not None}
    return parse_config(cfg, arch)


def mesh_logits(spec, weights, mesh, prompt, steps, engine="numba"):
    decoder = MeshDecoder(spec, weights, mesh, engine=engine, max_context=MAX_CONTEXT)
    return decoder, decoder.generate(prompt, steps)


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(ARCHS), kv=st.sampled_from([1, 2]), group=st.sampled_from([1, 2]),
       head_dim=st.sampled_from([4, 8, 12]), experts=st.integers(2, 6), top_k=st.integers(1, 3),
       window=st.integers(2, 7), w=st.integers(1, 5), h=st.integers(2, 9),
       prompt=st.integers(1, 6), seed=st.integers(0, 1000))
def test_mesh_logits_equal_the_reference(arch, kv, group, head_dim, experts, top_k, window,
                                         w, h, prompt, seed):
    top_k = min(top_k, experts)
    spec = spec_of(arch, heads=kv * group, kv=kv, head_dim=head_dim, experts=experts,
                   top_k=top_k, window=window, layers=3 if arch == "qwen3-moe" else 2)
    h = max(h, kv)
    weights = random_weights(spec, seed)
    tokens = list(np.random.default_rng(seed).integers(0, spec.vocab_size, prompt))
    steps = 8   # positions past every drawn window
    _, (got, rows) = mesh_logits(spec, weights, load_mesh("small").with_mesh(w, h),
                                 tokens, steps)
    want, want_rows = ref.generate(spec, weights, tokens, steps)
    assert rel_err(rows, want_rows) <= 1e-4
    assert got == want


@pytest.mark.parametrize("arch", ARCHS)
def test_both_engines_agree(arch):
    spec = spec_of(arch)
    weights = random_weights(spec, 1)
    mesh = load_mesh("small").with_mesh(3, 4)
    (dn, (_, numba_rows)), (dr, (_, ref_rows)) = (
        mesh_logits(spec, weights, mesh, [1, 2, 3], 7, engine) for engine in ("numba",
                                                                           "reference"))
    assert np.array_equal(numba_rows, ref_rows)
    assert [r.cycles for r in dn.results] == [r.cycles for r in dr.results]
    assert rel_err(ref_rows, ref.generate(spec, weights, [1, 2, 3], 7)[1]) <= 1e-4


def test_sliding_window_and_sinks_past_the_window():
    """gpt-oss (window 3, alternating sliding/full layers, sinks): 12 positions, so the
    ring of the sliding layer wraps four times; a sliding-only Mistral likewise."""
    for arch in ("gpt-oss", "mistral-window"):
        spec = spec_of(arch, window=3)
        weights = random_weights(spec, 7)
        decoder, (_, rows) = mesh_logits(spec, weights, load_mesh("small").with_mesh(2, 4),
                                         [5, 6], 11)
        assert rel_err(rows, ref.generate(spec, weights, [5, 6], 11)[1]) <= 1e-4
        # the sliding layer's KV is a ring of ceil(window / pw) = 2 slots per PE (+ spare)
        pl = decoder.placement
        band_top = pl.maps[(True, True, False, False, decoder.plan.row_kind(0))]
        k2 = decoder.plan.row_kind(0)[0]
        assert band_top["L0.k"].words == k2 * 3
    spec = spec_of("gpt-oss", window=3)
    strong = random_weights(spec, 7)
    for name in strong:
        if name.endswith("sinks"):
            strong[name] = np.full_like(strong[name], 4.0)   # sinks take most of the mass
    _, (_, rows) = mesh_logits(spec, strong, load_mesh("small").with_mesh(2, 4), [5, 6], 9)
    assert rel_err(rows, ref.generate(spec, strong, [5, 6], 9)[1]) <= 1e-4


def test_kv_capacity_follows_the_window():
    """Sliding layers hold only ceil(window / pw) slots: an all-sliding Mistral's KV does
    not grow with max_context, so its capacity is the model's limit."""
    mesh = load_mesh("small").with_mesh(4, 4)
    spec = spec_of("mistral-window", window=6)
    small = compile_decode(spec, mesh, max_context=16).placement
    large = compile_decode(spec, mesh, max_context=64).placement
    kv = [sum(b.words for n, b in p.maps[key].items() if b.kind == "kv")
          for p in (small, large) for key in [max(p.maps, key=lambda k: p.class_words[k])]]
    assert kv[0] == kv[1]
    assert large.capacity == spec.max_position_embeddings
    full = dataclasses.replace(spec, layer_types=(), sliding_window=None)
    assert compile_decode(full, mesh, max_context=64).placement.total_words > \
        large.total_words


def test_timing_does_not_depend_on_the_routing():
    """Experts are spread over the wafer, so every choice of experts costs the same: two
    weight draws (different experts chosen) and the timing-only run (ldr gives 0: expert
    0 everywhere) have the same cycles."""
    spec = spec_of("gpt-oss", experts=6, top_k=2)
    mesh = load_mesh("small").with_mesh(4, 4)
    cycles, chosen = [], []
    for seed in (0, 1, 2):
        decoder = MeshDecoder(spec, random_weights(spec, seed), mesh, max_context=MAX_CONTEXT)
        _, result = decoder.step(3, 0)
        cycles.append(result.cycles)
        sel = decoder.placement.addr("SEL")
        chosen.append(tuple(decoder.sram[0, sel:sel + 2] // expert_block(decoder.plan)))
    assert len(set(chosen)) > 1, "the draws should route differently"
    timing = run_timing(decoder.compiled, mesh, 0)
    assert len(set(cycles)) == 1 and timing.cycles == cycles[0]


@pytest.mark.parametrize("arch", ["mixtral", "gpt-oss"])
def test_experts_share_their_trees_and_multicasts(arch):
    """The k chosen experts are joined: every PE sends and receives as many messages for
    k = 3 as for k = 1 (one gate/up row tree, one row multicast, one down column tree per
    sparse layer), and the joined gate/up tree and row multicast are k times longer."""
    from compiler.emit import comm_sequences
    mesh = load_mesh("small").with_mesh(3, 4)
    comm = {}
    for k in (1, 3):
        compiled = compile_decode(spec_of(arch, experts=4, top_k=k), mesh,
                                  max_context=MAX_CONTEXT)
        comm[k] = comm_sequences(compiled.decode.for_position(0))
    for one, three in zip(comm[1], comm[3], strict=True):
        assert one.keys() == three.keys()
        assert all(len(one[key]) == len(three[key]) for key in one)
    sends1, sends3 = comm[1][0], comm[3][0]
    tripled = [key for key in sends1
               if any(b == 3 * a != 0 for a, b in zip(sends1[key], sends3[key], strict=True))]
    assert tripled, "no message carries the k joined slots"


def test_logit_tree_spans_only_the_rows_holding_logits():
    """The router logits are gathered by a column tree over rows 0 .. R-1 (R = 1 + the last
    row holding logits): rows below take no step, the others a subset of the full column
    tree's steps."""
    from compiler.emit import pe_role
    from compiler.moe import logit_tree
    from compiler.route import tree_actions
    spec = spec_of("mixtral", experts=3, top_k=2)
    compiled = compile_decode(spec, load_mesh("small").with_mesh(2, 9), max_context=MAX_CONTEXT)
    plan = compiled.plan
    rows = int(np.flatnonzero(plan.vec("router").sizes())[-1]) + 1
    assert rows < plan.ph
    for j in range(plan.ph):
        tree = logit_tree(plan, j)
        assert pe_role(plan, 0, j).lg_tree == tree
        assert set(tree) <= set(tree_actions(j, plan.ph))
        assert (tree == ()) == (j >= rows or rows == 1)


def test_fast_forward_is_exact_over_alternating_layers():
    spec = spec_of("gpt-oss", layers=6)
    assert kind_period(spec) == 2
    mesh = load_mesh("small").with_mesh(4, 4)
    compiled = compile_decode(spec, mesh, max_context=MAX_CONTEXT)
    for pos in (0, 9):
        fast = run_timing(compiled, mesh, pos)
        full = run_timing(compiled, mesh, pos, fast_forward=False)
        assert fast.cycles == full.cycles
        assert np.array_equal(fast.mark_first, full.mark_first)
        assert fast.skipped_blocks > 0


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.integers(5, 8), window=st.integers(2, 7), experts=st.integers(2, 5),
       top_k=st.integers(1, 2), shape=st.sampled_from([(3, 2), (4, 4), (5, 3), (6, 5)]),
       head=st.booleans(), pos=st.integers(0, 12))
def test_fast_forward_equals_the_full_run_on_gpt_oss_like_models(layers, window, experts,
                                                                 top_k, shape, head, pos):
    """Blocks of a sliding/full layer pair, full or partial last blocks (odd or even layer
    counts, with or without the LM head), with one job (the head child waits) and two:
    every timing field equals the full run's."""
    spec = spec_of("gpt-oss", experts=experts, top_k=top_k, window=window, layers=layers)
    mesh = load_mesh("small").with_mesh(*shape)
    compiled = compile_decode(spec, mesh, max_context=MAX_CONTEXT, head=head)
    full = run_timing(compiled, mesh, pos, fast_forward=False)
    for jobs in JOBS:
        fast = run_timing(compiled, mesh, pos, jobs=jobs)
        assert_same(full, fast)
        assert fast.skipped_blocks == (layers - 1) // 2 - 1


def test_groups_layout_refuses_what_only_spread_maps():
    spec = spec_of("gpt-oss")
    with pytest.raises(ConfigError, match="groups layout.*attention sinks"):
        compile_decode(spec, load_mesh("small").with_mesh(4, 4), layout="groups")


# --------------------------------------------------------------------------- ISA

TOPK = """
.mesh 2x1
.sram 32
.region all 0,0 1,0
.data 0 1.0 5.0 -2.0 5.0 3.0
.data 8 3.0
    rargmax [10], [0], 5
    ldr r3, [10]
    ldr r4, [8]
    vmov [12], [r3+0], 1
    vset [r4+0], 1, -inf
    rargmax [11], [0], 5
    rargmax [13], [0], 0
    vmov [r3+16], [12], 1
    halt
"""


@pytest.mark.parametrize("run", [run_reference, run_numba])
def test_rargmax_and_ldr(run):
    program = assemble(TOPK, "topk.asm")
    mesh = load_mesh("small").with_mesh(2, 1)
    result = run(program, mesh)
    sram = result.sram[0]
    assert sram[10] == 1.0 and sram[12] == 5.0 and sram[17] == 5.0   # first of two maxima
    assert sram[3] == -np.inf and sram[11] == 1.0 and sram[13] == 0.0   # n = 0: untouched
    o = mesh.issue_overhead
    # rargmax of 5, 5 and 0 elements, 2 ldr, 2 vmov and 1 vset of one element (fp32)
    assert result.cycles == 2 * (o + 5) + o + 2 * (o + 1) + 3 * (o + 1)
    assert run(program, mesh, functional=False).cycles == result.cycles


@pytest.mark.parametrize("run", [run_reference, run_numba])
def test_ldr_of_a_non_integer_value_faults(run):
    source = TOPK.replace(".data 8 3.0", ".data 8 inf")
    with pytest.raises(MeshFault, match="ldr at element 8"):
        run(assemble(source, "bad.asm"), load_mesh("small").with_mesh(2, 1))


# --------------------------------------------------------------------------- weight formats


@pytest.mark.parametrize("fmt", ["fp8", "mxfp4"])
def test_weight_formats_match_the_reference_with_rounded_weights(fmt):
    spec = spec_of("gpt-oss")
    weights = random_weights(spec, 3)
    mesh = load_mesh("small").with_mesh(3, 4)
    decoder = MeshDecoder(spec, weights, mesh, max_context=MAX_CONTEXT, weight_dtype=fmt)
    _, rows = decoder.generate([1, 2, 3], 4)
    rounded = round_weight_format(weights, fmt)
    assert not np.array_equal(rounded["model.layers.0.mlp.experts.down_proj"],
                              weights["model.layers.0.mlp.experts.down_proj"])
    assert rel_err(rows, ref.generate(spec, rounded, [1, 2, 3], 4)[1]) <= 1e-4


def test_weight_format_sets_sram_bytes_and_dequant_cycles():
    spec = spec_of("mixtral", experts=4)
    mesh = load_mesh("small").with_mesh(4, 4)
    plain = compile_decode(spec, mesh, "bf16", MAX_CONTEXT)
    for fmt, bits, ops in (("fp8", 8, mesh.dequant_ops_fp8), ("mxfp4", 4.25,
                                                             mesh.dequant_ops_mxfp4)):
        packed = compile_decode(spec, mesh, "bf16", MAX_CONTEXT, weight_dtype=fmt)
        pl = packed.placement
        for key, buffers in pl.maps.items():
            q = sum(b.words for n, b in buffers.items() if quantized(n))
            rest = sum(b.words for n, b in buffers.items() if not quantized(n))
            assert q > 0 and pl.class_bytes[key] == 2 * rest + -(-int(q * bits) // 8)
        assert pl.total_bytes < plain.placement.total_bytes
        assert packed.decode.program.sram_bytes_needed == pl.total_bytes
        code = packed.decode.program.code
        deq = code[(code["op"] == Op.VSCALE) & (code["imm"] == 1.0)]
        assert len(deq) and ops > 0
        slower = run_timing(packed, mesh, 5).cycles
        assert slower > run_timing(plain, mesh, 5).cycles


def test_rounding_to_fp8_and_mxfp4():
    assert round_fp8(np.array([1.0625, 1.1875, 500.0, -3e-5])).tolist() == [1.0, 1.25, 448.0,
                                                                           -0.0]
    x = np.linspace(-1, 1, 64, dtype=np.float32)[None]
    y = round_mxfp4(x)
    scales = [2.0 ** (np.floor(np.log2(np.abs(b).max())) - 2) for b in (x[0, :32], x[0, 32:])]
    for block, scale in zip((y[0, :32], y[0, 32:]), scales, strict=True):
        assert set(np.round(np.abs(block) / scale, 6)) <= {0, 0.5, 1, 1.5, 2, 3, 4, 6}
    assert np.abs(y - x).max() <= 0.25 * max(scales) * 2


def test_wafer_count_follows_the_weight_precision():
    spec = resolve_model("gpt-oss-120b")
    wse3 = load_mesh("wse3")
    bf16 = wafers_needed(spec, wse3, "bf16", 4096)
    mxfp4 = wafers_needed(spec, wse3, "bf16", 4096, "mxfp4")
    assert mxfp4 == 2 and bf16 == 6


def test_wafer_parts_keep_their_layer_kinds():
    spec = spec_of("qwen3-moe", layers=3)   # layer 1 dense
    part = sub_spec(spec, 2, 1)
    assert part.moe.sparse_layers == (1,) and not part.is_sparse(0)
    oss = sub_spec(resolve_model("gpt-oss-120b"), 18, 18)
    assert oss.layer_types[:2] == ("sliding_attention", "full_attention")
    assert oss.moe.sparse_layers == tuple(range(18))


@pytest.mark.parametrize("arch", ["qwen3", "qwen3-moe", "dense"])
def test_bands_taller_than_the_head(arch):
    """A band with more rows than head dims (Qwen3-235B-A22B on WSE-3: 4 kv heads, bands
    of 256 rows, hd 128) keeps the rows holding key pairs a prefix, so the score tree (and
    qk-norm's sums of squares) covers every pair."""
    spec = spec_of("mixtral" if arch == "dense" else arch, heads=2, kv=1, head_dim=4)
    if arch == "dense":
        spec = dataclasses.replace(spec, moe=None, architecture="LlamaForCausalLM")
    weights = random_weights(spec, 0)
    decoder, (_, rows) = mesh_logits(spec, weights, load_mesh("small").with_mesh(3, 8),
                                     [1, 2, 3], 5)
    kp = decoder.plan.bands.kp
    assert kp.tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert rel_err(rows, ref.generate(spec, weights, [1, 2, 3], 5)[1]) <= 1e-4


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ARCHS), st.sampled_from([(4, 4), (5, 3), (8, 4), (3, 8), (2, 9)]),
       st.integers(0, 30))
def test_phases_and_bound_of_todays_models(arch, shape, pos):
    """The phases tile the step and the critical-path bound (with its sparse-layer chain)
    stays below the emulated cycles."""
    from compiler.bound import critical_path_bound
    from emulator.inspect.phases import PHASES, phase_cycles

    spec = spec_of(arch, experts=5, top_k=2)
    mesh = load_mesh("small").with_mesh(*shape)
    compiled = compile_decode(spec, mesh, "fp32", 32)
    run = run_timing(compiled, mesh, pos)
    phases = phase_cycles(run, compiled.decode.program.mark_names)
    assert set(phases) == set(PHASES) and sum(phases.values()) == run.cycles
    bound = critical_path_bound(compiled, mesh, pos)
    assert 0 < bound["total"] <= run.cycles


def test_emu_run_weight_dtype(tmp_path):
    """`emu run --weight-dtype`: the report names the format, SRAM shrinks, dequantisation
    adds cycles (functional values: test_weight_formats_match_the_reference_...)."""
    from click.testing import CliRunner

    from emulator.cli import main

    reports = {}
    for fmt in (None, "fp8", "mxfp4"):
        path = tmp_path / f"{fmt}.json"
        args = ["run", "--max-new-tokens", "3", "--report", str(path), "--quiet"]
        result = CliRunner().invoke(main, args + (["--weight-dtype", fmt] if fmt else []))
        assert result.exit_code == 0, result.output
        reports[fmt] = json.loads(path.read_text())
    assert reports["fp8"]["weight_dtype"] == "fp8" and reports[None]["weight_dtype"] == "bf16"
    sram = {k: r["decode"]["sram"]["weights_bytes"] for k, r in reports.items()}
    assert sram["mxfp4"] < sram["fp8"] < sram[None]
    cycles = {k: r["decode"]["cycles_per_token"] for k, r in reports.items()}
    assert cycles[None] < cycles["fp8"] < cycles["mxfp4"]
    bad = CliRunner().invoke(main, ["run", "--weight-dtype", "fp4"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


@pytest.mark.parametrize("layout, shape", [("groups", (3, 4)), ("even", (4, 16)),
                                           ("even", (3, 4))])
def test_moe_in_every_layout(layout, shape):
    """The MoE block is layout-independent (the even layout's hub rows hold no expert
    tiles); Mixtral and Qwen3-MoE's sparse/dense mix (qk-norm off: spread-only)."""
    for arch in ("mixtral", "qwen3-moe"):
        spec = spec_of(arch)
        if arch == "qwen3-moe":
            spec = dataclasses.replace(spec, qk_norm=False)
        weights = random_weights(spec, 2)
        decoder = MeshDecoder(spec, weights, load_mesh("small").with_mesh(*shape),
                              engine="reference", max_context=MAX_CONTEXT, layout=layout)
        _, rows = decoder.generate([1, 2, 3], 4)
        assert decoder.plan.layout == layout
        assert rel_err(rows, ref.generate(spec, weights, [1, 2, 3], 4)[1]) <= 1e-4


def test_batched_decode_refuses_todays_features():
    """Batched decode (compiler/batching.py) maps dense full-attention models only."""
    mesh = load_mesh("small").with_mesh(4, 4)
    for arch in ("mixtral", "gpt-oss", "qwen3"):
        with pytest.raises(ConfigError, match="2 users\\) does not map"):
            compile_decode(spec_of(arch), mesh, "fp32", MAX_CONTEXT, batch=2)
