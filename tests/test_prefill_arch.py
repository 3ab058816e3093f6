"""Today's architectures on the prefill chips (issue 21): Qwen3 qk-norm and explicit
head_dim, biases, gpt-oss attention sinks, sliding-window layers, YaRN RoPE, and mixtures
of experts (Mixtral, Qwen3-MoE, gpt-oss) with expert parallelism; `--weight-dtype`.

Functional prefill equals the numpy reference (fp32, <= 1e-4) on hypothesis-drawn tiny
configs of each architecture, at prompt lengths past the sliding window; timing-only with
the functional run's expert counts gives the same cycles; the all-to-all and the weight
formats follow their documented closed forms."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import reference
from compiler.frontend import parse_config, resolve_model
from compiler.weights import random_weights
from emulator.hw.dtypes import W_BF16, W_FP8, W_MXFP4, weight_format
from emulator.hw.errors import ConfigError
from emulator.prefill import costs
from emulator.prefill import instructions as instr
from emulator.prefill.model import attention_pairs, lower_prefill
from emulator.prefill.moe import balanced_counts, expert_range
from emulator.prefill.run import choose_chips, hbm_bytes_needed, run_prefill, weight_bytes
from emulator.prefill.verify import verify
from tests.test_prefill import TRN2, make_spec, rel_err
from tests.test_prefill_memo import _compare

TOL = 1e-4


@st.composite
def arch_configs(draw):
    """A tiny HF config of one of the new architectures, sizes drawn."""
    kind = draw(st.sampled_from(["qwen3", "mistral", "mixtral", "qwen3-moe", "gpt-oss"]))
    kv = draw(st.integers(1, 2))
    heads = kv * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([8, 12, 16]))
    layers = draw(st.integers(1, 3))
    cfg = dict(hidden_size=draw(st.sampled_from([32, 48, 64])), num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
               vocab_size=draw(st.integers(32, 120)), max_position_embeddings=4096,
               rms_norm_eps=1e-5, intermediate_size=draw(st.integers(16, 80)))
    experts = draw(st.integers(2, 6))
    top_k = draw(st.integers(1, min(3, experts)))
    if kind == "qwen3":
        cfg.update(architectures=["Qwen3ForCausalLM"], attention_bias=draw(st.booleans()),
                   rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                 "original_max_position_embeddings": 64}
                   if draw(st.booleans()) else None)
    elif kind == "mistral":
        cfg.update(architectures=["MistralForCausalLM"], sliding_window=draw(
            st.integers(1, 40)))
    elif kind == "mixtral":
        cfg.update(architectures=["MixtralForCausalLM"], num_local_experts=experts,
                   num_experts_per_tok=top_k)
    elif kind == "qwen3-moe":
        cfg.update(architectures=["Qwen3MoeForCausalLM"], num_experts=experts,
                   num_experts_per_tok=top_k, moe_intermediate_size=draw(st.integers(8, 40)),
                   norm_topk_prob=draw(st.booleans()),
                   mlp_only_layers=[0] if layers > 1 and draw(st.booleans()) else [])
    else:
        cfg.update(architectures=["GptOssForCausalLM"], num_local_experts=experts,
                   num_experts_per_tok=top_k, sliding_window=draw(st.integers(1, 40)),
                   rope_theta=150000.0,
                   rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                 "beta_slow": 1.0, "original_max_position_embeddings": 64})
    return parse_config(cfg, kind)


def check(spec, P, seed=0, hw=TRN2, chunk=None):
    weights = random_weights(spec, seed)
    tokens = np.random.default_rng(seed + P).integers(0, spec.vocab_size, P)
    result = run_prefill(spec, hw, tokens, weights, dtype="fp32", chunk=chunk)
    logits, cache = reference.prefill(spec, weights, tokens)
    assert rel_err(result.logits_last, logits[-1]) <= TOL
    assert rel_err(result.kv_cache.k, cache.k) <= TOL
    assert rel_err(result.kv_cache.v, cache.v) <= TOL
    for part in result.parts or [result]:
        assert verify(part.program, hw) == []
    return result


@settings(max_examples=10, deadline=None)
@given(arch_configs(), st.integers(1, 200), st.integers(0, 100))
def test_architectures_equal_reference(spec, P, seed):
    check(spec, P, seed)


@pytest.mark.parametrize("name", ["qwen3", "mistral", "mixtral", "qwen3-moe", "gpt-oss"])
def test_long_prompt_past_windows_and_tiles(name):
    """600 tokens: past every sliding window, across 512-key tiles; 2 chips (experts dealt
    over 16 cores, most with none), and chunked."""
    from tests.test_models_moe import CONFIGS
    cfg = dict(CONFIGS["mistral-window" if name == "mistral" else name])
    spec = parse_config(cfg, name)
    check(spec, 600)
    check(spec, 300, hw=dataclasses.replace(TRN2, chips=2))
    check(spec, 300, chunk=128)


def test_sliding_window_skips_key_tiles():
    """A window of 16 visits at most two 512-key tiles per query tile: attention FLOPs and
    TensorE work drop against full attention, exactly as attention_pairs counts."""
    from tests.test_models_moe import CONFIGS
    spec = parse_config(dict(CONFIGS["mistral-window"], sliding_window=16), "w")
    full = dataclasses.replace(spec, layer_types=(), sliding_window=None)
    P = 2048
    a = run_prefill(spec, TRN2, P, dtype="bf16", timing_only=True)
    b = run_prefill(full, TRN2, P, dtype="bf16", timing_only=True)
    fa = [op for op in a.per_op if op["name"] == "attention"]
    fb = [op for op in b.per_op if op["name"] == "attention"]
    d, H = spec.head_dim, spec.num_heads
    assert fa[0]["flops"] == 4.0 * d * H * attention_pairs(0, P, 16)
    assert fb[0]["flops"] == 4.0 * d * H * P * (P + 1) / 2
    assert sum(op["busy"]["tensor"] for op in fa) < sum(op["busy"]["tensor"] for op in fb) / 2


def test_attention_pairs_closed_form():
    for past in range(0, 9):
        for n in range(1, 9):
            for window in (None, 1, 2, 3, 7, 20):
                brute = sum(min(p + 1, window or 10 ** 9) for p in range(past, past + n))
                assert attention_pairs(past, n, window) == brute


# --------------------------------------------------------------------------- experts


@pytest.mark.parametrize("name", ["mixtral", "qwen3-moe", "gpt-oss"])
def test_timing_only_with_router_counts_equals_functional(name):
    from tests.test_models_moe import CONFIGS
    spec = parse_config(CONFIGS[name], name)
    functional = check(spec, 150)
    assert functional.routing == "router"
    counts = functional.expert_counts
    assert set(counts) == set(spec.moe.sparse_layers)
    assert all(sum(c) == 150 * spec.moe.top_k for c in counts.values())
    timing = run_prefill(spec, TRN2, 150, dtype="fp32", timing_only=True, expert_counts=counts)
    assert timing.cycles == functional.cycles
    assert timing.engine_busy == functional.engine_busy
    balanced = run_prefill(spec, TRN2, 150, dtype="fp32", timing_only=True)
    assert balanced.routing == "balanced"
    assert all(list(c) == list(balanced_counts(150, spec.moe.top_k, spec.moe.num_experts))
               for c in balanced.expert_counts.values())
    summary = balanced.summary()["moe"]
    assert summary["routed_tokens_per_layer"] == 150 * spec.moe.top_k


@pytest.mark.parametrize("name,P", [("mixtral", 300), ("qwen3-moe", 1300), ("gpt-oss", 64)])
def test_memoised_experts_equal_explicit(name, P):
    """Timing-only stores one expert of each repeated count (a repeated body); its schedule
    equals the written-out stream's, cycle for cycle and operator for operator."""
    from tests.test_models_moe import CONFIGS
    cfg = dict(CONFIGS[name], num_local_experts=32, num_experts=32, num_experts_per_tok=4)
    if name == "mixtral":
        del cfg["num_experts"]
    explicit, memo, a, b = _compare(parse_config(cfg, name), P, TRN2)
    assert len(memo) < len(explicit) and len(memo.segments) > 0


@pytest.mark.parametrize("name,dense", [("gpt-oss", []), ("qwen3-moe", [0, 2, 4, 6])])
def test_alternating_layers_copied_exactly(name, dense):
    """Layers of two alternating kinds (gpt-oss's sliding/full, dense/sparse) are copied
    from two layers before in timing-only mode; the schedule equals the written-out one."""
    from tests.test_models_moe import CONFIGS
    cfg = dict(CONFIGS[name], num_hidden_layers=7, num_local_experts=16, num_experts=16,
               num_experts_per_tok=4)
    if dense:
        cfg["mlp_only_layers"] = dense
    spec = parse_config(cfg, name)
    explicit, memo, a, b = _compare(spec, 700, TRN2)
    assert [op.layer for op in memo.ops] == [op.layer for op in explicit.ops]
    assert len(memo) < len(explicit) / 1.4


def test_balanced_counts_and_expert_split():
    assert list(balanced_counts(10, 2, 3)) == [7, 7, 6]
    assert sum(balanced_counts(12345, 8, 128)) == 12345 * 8
    C = 16
    ranges = [expert_range(128, C, c) for c in range(C)]
    assert ranges[0] == (0, 8) and sum(n for _, n in ranges) == 128
    assert [expert_range(8, C, c)[1] for c in range(C)].count(0) == 8


def test_all_to_all_closed_form():
    """(C-1)/C * B/N/C / collective_bw + (C-1) lat_c + (N-1)/N * B/N / link_bw
    + (N-1) lat_l, rounded up once (TensorE cycles)."""
    hw = TRN2
    for chips in (1, 2, 4, 16):
        B = 3 * 2 ** 26
        C = hw.cores_per_chip
        seconds = ((C - 1) / C * (B / chips) / C / hw.collective_bytes_per_s
                   + (C - 1) * hw.collective_latency_s)
        if chips > 1:
            seconds += ((chips - 1) / chips * B / chips / hw.link_bytes_per_s
                        + (chips - 1) * hw.link_latency_s)
        assert costs.all_to_all_cycles(hw, B, C, chips) == hw.tensor_cycles(seconds)


def test_expert_parallel_collectives_in_the_stream():
    """A sparse layer dispatches and combines with all-to-alls of P*k*hidden elements
    costed by all_to_all_cycles; dense layers keep the all-gather / reduce-scatter."""
    from tests.test_models_moe import CONFIGS
    spec = parse_config(CONFIGS["qwen3-moe"], "qm")
    P, chips = 256, 2
    hw = dataclasses.replace(TRN2, chips=chips)
    low = lower_prefill(spec, hw, P, "bf16", True, chips)
    code = low.program.instr
    cc = code[code["engine"] == instr.CC]
    a2a = cc[np.isin(cc["func"], [instr.C_ALL_TO_ALL, instr.C_ALL_TO_ALL_SUM])]
    k, H = spec.moe.top_k, spec.hidden_size
    assert len(a2a) == 2 * len(spec.moe.sparse_layers)
    for row in a2a:
        assert row["work"] == P * k * H * 2
        assert row["cost"] == costs.all_to_all_cycles(hw, P * k * H * 2, 8, chips)


def test_router_skew_costs_time():
    """All tokens on one expert (the worst routing) is slower than balanced routing."""
    from tests.test_models_moe import CONFIGS
    spec = parse_config(CONFIGS["mixtral"], "m")
    P, E, k = 512, spec.moe.num_experts, spec.moe.top_k
    skew = {layer: [P] * k + [0] * (E - k) for layer in spec.moe.sparse_layers}
    worst = run_prefill(spec, TRN2, P, timing_only=True, expert_counts=skew)
    even = run_prefill(spec, TRN2, P, timing_only=True)
    assert worst.cycles > even.cycles
    with pytest.raises(ConfigError):
        run_prefill(spec, TRN2, P, timing_only=True, expert_counts={0: [1, 2]})


# --------------------------------------------------------------------------- weight formats


def test_weight_formats():
    assert W_MXFP4.bits_per_element == 4.25 and W_MXFP4.bytes_for(64) == 34
    assert W_FP8.bytes_for(7) == 7 and W_BF16.bytes_for(3) == 6
    assert weight_format("MXFP4") is W_MXFP4 and weight_format("bfloat16") is W_BF16
    with pytest.raises(ValueError, match="--weight-dtype"):
        weight_format("int4")


def test_weight_bytes_and_chip_count():
    """HBM holds the layers' matrices at the format's size, the rest in the matmul dtype."""
    spec = resolve_model("gpt-oss-120b")
    packed = sum(int(np.prod(s)) for n, s in spec.weight_shapes().items()
                 if n.startswith("model.layers.") and len(s) >= 2)
    rest = spec.param_count() - packed
    assert weight_bytes(spec, "bf16", W_MXFP4) == -(-packed * 34 // 64) + 2 * rest
    assert weight_bytes(spec, "bf16") == 2 * spec.param_count()
    bf16 = hbm_bytes_needed(spec, TRN2, 1024, "bf16", 1)["weights"]
    mx = hbm_bytes_needed(spec, TRN2, 1024, "bf16", 1, wfmt=W_MXFP4)["weights"]
    assert mx < bf16 / 3
    assert choose_chips(spec, TRN2, 1024, "bf16", None, None, W_MXFP4) == 1
    assert choose_chips(spec, TRN2, 1024, "bf16", None) == 3
    r = run_prefill(make_spec(), TRN2, 64, timing_only=True, weight_dtype="mxfp4")
    assert r.summary()["weight_dtype"] == "mxfp4"


def test_packed_weights_dma_and_dequant():
    """mxfp4 weights: each layer-weight DMA moves 4.25/16 of the bf16 bytes, and one
    Vector dequantisation follows each; values still equal the reference."""
    spec = make_spec(layers=1, hidden=64, inter=128)
    lows = {f: lower_prefill(spec, TRN2, 64, "bf16", False,
                             weight_format=None if f is None else weight_format(f))
            for f in (None, "mxfp4")}
    code = {f: low.program.instr for f, low in lows.items()}
    deq = code["mxfp4"][(code["mxfp4"]["op"] == instr.VEC_TT)
                        & (code["mxfp4"]["func"] == instr.A_BYPASS)]
    assert len(deq) > 0
    dma = {f: c[c["engine"] == instr.DMA]["work"].sum() for f, c in code.items()}
    assert dma["mxfp4"] < dma[None]
    weights = random_weights(spec, 1)
    tokens = np.arange(64) % spec.vocab_size
    r = run_prefill(spec, TRN2, tokens, weights, dtype="fp32", weight_dtype="mxfp4")
    ref, _ = reference.prefill(spec, weights, tokens)
    assert rel_err(r.logits_last, ref[-1]) <= TOL


def test_bad_weight_dtype_exits_2():
    proc = subprocess.run([sys.executable, "-c", "from emulator.cli import main; main()",
                           "prefill", "tiny", "--weight-dtype", "int4"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--weight-dtype" in lines[0]


def test_mx_matmul_reads_mxfp4_without_dequantisation():
    """Trn3 (mx_matmul): MXFP4 weights into an fp8 (MX) matmul need no Vector pass; Trn2
    dequantises them; both move the MXFP4 bytes."""
    from emulator.hw.prefill import load_prefill
    spec = make_spec(layers=1, hidden=256, inter=256)

    def dequants(hw):
        code = lower_prefill(spec, hw, 128, "fp8", True, weight_format=W_MXFP4).program.instr
        return int(np.sum((code["op"] == instr.VEC_TT) & (code["func"] == instr.A_BYPASS)))
    trn3 = load_prefill("trn3")
    assert trn3.mx_matmul == 1 and TRN2.mx_matmul == 0
    assert dequants(trn3) == 0 and dequants(TRN2) > 0


@pytest.mark.parametrize("window,P", [(100, 4100), (600, 3000)])
def test_windowed_attention_memoised_equals_explicit(window, P):
    """Sliding-window super-batches of the same key tiles relative to their group are
    replayed in timing-only mode; the schedule equals the written-out stream's."""
    spec = dataclasses.replace(make_spec(layers=1, heads=8, kv=1, head_dim=16),
                               architecture="MistralForCausalLM", sliding_window=window,
                               layer_types=("sliding_attention",))
    _compare(spec, P, TRN2)
