"""Today's served models in the frontend and the numpy reference: Qwen3 (qk-norm), Mixtral,
Qwen3-MoE (sparse and dense layers), gpt-oss (attention sinks, alternating sliding-window and
full layers, YaRN RoPE, biases, clamped SwiGLU, fused experts) and Mistral's sliding window.

The reference is checked against HuggingFace transformers (skipped without torch) and, on
its own, against the rules: a sliding layer ignores positions past its window, a sink only
takes probability mass, routing picks and weighs experts as each architecture says,
prefill equals token-by-token decode on hypothesis-drawn configs."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import reference as ref
from compiler.frontend import load_config, parse_config
from compiler.weights import load_weights, random_weights
from emulator.hw.errors import ConfigError

BASE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=64, max_position_embeddings=2048, rms_norm_eps=1e-5)
CONFIGS = {
    "qwen3": dict(BASE, architectures=["Qwen3ForCausalLM"], model_type="qwen3",
                  intermediate_size=48, head_dim=12, attention_bias=True),
    "mixtral": dict(BASE, architectures=["MixtralForCausalLM"], model_type="mixtral",
                    intermediate_size=24, num_local_experts=4, num_experts_per_tok=2,
                    sliding_window=None),
    "qwen3-moe": dict(BASE, architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe",
                      num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=16,
                      head_dim=8, num_experts=6, num_experts_per_tok=2, norm_topk_prob=True,
                      mlp_only_layers=[1]),
    "gpt-oss": dict(BASE, architectures=["GptOssForCausalLM"], model_type="gpt_oss",
                    intermediate_size=16, head_dim=8, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=5, swiglu_limit=7.0,
                    rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                  "beta_slow": 1.0, "truncate": False,
                                  "original_max_position_embeddings": 64},
                    rope_theta=150000.0),
    "mistral-window": dict(BASE, architectures=["MistralForCausalLM"], model_type="mistral",
                           intermediate_size=48, sliding_window=6),
}


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------- frontend


def test_specs_of_each_architecture():
    qwen3 = parse_config(CONFIGS["qwen3"], "q")
    assert qwen3.qk_norm and qwen3.o_proj_bias and qwen3.moe is None
    mixtral = parse_config(CONFIGS["mixtral"], "m")
    assert mixtral.moe.layout == "mixtral" and mixtral.moe.norm_topk_prob
    assert mixtral.moe.sparse_layers == (0, 1) and mixtral.layer_types == ()
    moe = parse_config(CONFIGS["qwen3-moe"], "qm")
    assert moe.moe.sparse_layers == (0, 2) and not moe.is_sparse(1)
    assert "model.layers.1.mlp.gate_proj.weight" in moe.weight_shapes()
    assert "model.layers.0.mlp.experts.5.down_proj.weight" in moe.weight_shapes()
    oss = parse_config(CONFIGS["gpt-oss"], "g")
    assert oss.attention_sinks and oss.o_proj_bias and oss.moe.routing == "topk_softmax"
    assert oss.layer_types == ("sliding_attention", "full_attention")
    assert oss.window(0) == 5 and oss.window(1) is None
    assert oss.rope.rope_type == "yarn" and oss.rope.attention_scaling > 1
    assert all(s.unmapped_features() for s in (qwen3, mixtral, moe, oss))
    window = parse_config(CONFIGS["mistral-window"], "w")
    assert window.layer_types == ("sliding_attention",) * 2 and window.sliding_window == 6


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_config_round_trips(name):
    spec = parse_config(CONFIGS[name], name)
    assert parse_config(spec.to_hf_config(), name) == spec


def test_active_parameters_of_moe():
    spec = parse_config(CONFIGS["mixtral"], "m")
    per_expert = 3 * 24 * 32
    assert spec.param_count() - spec.active_param_count() == 2 * 2 * per_expert


@pytest.mark.parametrize("change, message", [
    ({"num_experts_per_tok": 9}, "exceeds the number of experts"),
    ({"layer_types": ["full_attention"]}, "must list 2 entries"),
    ({"sliding_window": None, "layer_types": ["sliding_attention"] * 2},
     "missing field 'sliding_window'"),
    ({"rope_scaling": {"rope_type": "yarn"}}, "missing field 'rope_scaling.factor'"),
])
def test_bad_moe_and_window_fields(change, message):
    data = dict(CONFIGS["gpt-oss"], **change)
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "cfg.json")


# --------------------------------------------------------------------------- behaviour


def test_sliding_layer_ignores_positions_past_its_window():
    """A one-layer model with a window of 6: the logits at position p depend on tokens
    p-5..p only, so changing any older token changes nothing from p on."""
    data = dict(CONFIGS["mistral-window"], num_hidden_layers=1)
    spec = parse_config(data, "w")
    weights = random_weights(spec, 3)
    tokens = np.random.default_rng(0).integers(0, 64, 20)
    base, _ = ref.prefill(spec, weights, tokens)
    changed = tokens.copy()
    changed[3] = (changed[3] + 1) % 64
    other, _ = ref.prefill(spec, weights, changed)
    np.testing.assert_array_equal(base[9:], other[9:])        # 9 - 6 = 3: outside
    assert not np.allclose(base[3:9], other[3:9])


def test_sinks_only_take_probability_mass():
    spec = parse_config(CONFIGS["gpt-oss"], "g")
    weights = random_weights(spec, 1)
    tokens = [5, 9, 2, 7]
    drained = dict(weights)
    for layer in range(spec.num_layers):
        drained[f"model.layers.{layer}.self_attn.sinks"] = np.full(4, -np.inf, np.float32)
    no_sink = dataclass_without_sinks(spec)
    np.testing.assert_allclose(ref.prefill(spec, drained, tokens)[0],
                               ref.prefill(no_sink, drained, tokens)[0], rtol=1e-6)


def dataclass_without_sinks(spec):
    import dataclasses

    return dataclasses.replace(spec, attention_sinks=False)


def test_routing_rules():
    logits = np.array([[0.1, 2.0, -1.0, 1.0]], np.float32)
    mixtral = parse_config(CONFIGS["mixtral"], "m")
    experts, gates = ref.route(mixtral, logits)
    assert experts.tolist() == [[1, 3]]
    probs = ref.softmax(logits)[0, [1, 3]]
    np.testing.assert_allclose(gates[0], probs / probs.sum(), rtol=1e-6)
    oss = parse_config(CONFIGS["gpt-oss"], "g")
    experts, gates = ref.route(oss, logits)
    np.testing.assert_allclose(gates[0], ref.softmax(np.array([2.0, 1.0], np.float32)),
                               rtol=1e-6)
    qwen = parse_config(dict(CONFIGS["qwen3-moe"], norm_topk_prob=False, num_experts=4), "q")
    experts, gates = ref.route(qwen, logits)
    np.testing.assert_allclose(gates[0], ref.softmax(logits)[0, [1, 3]], rtol=1e-6)


def test_all_experts_equal_a_dense_weighted_sum():
    """With top_k = all experts and renormalised softmax weights, the MoE block is the
    softmax-weighted sum of every expert's SwiGLU output."""
    spec = parse_config(dict(CONFIGS["mixtral"], num_experts_per_tok=4), "m")
    weights = random_weights(spec, 2)
    x = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    names = spec.expert_names(0)
    probs = ref.softmax(x @ weights[names["router"]].T)
    dense = sum(probs[:, [e]] * ref.expert_ffn(spec, weights, names, e, x) for e in range(4))
    np.testing.assert_allclose(ref.moe_mlp(spec, weights, 0, x), dense, rtol=1e-5, atol=1e-7)


def test_clamped_swiglu():
    spec = parse_config(CONFIGS["gpt-oss"], "g")
    names = spec.expert_names(0)
    f = spec.moe.expert_size
    weights = {names["gate_up"]: np.zeros((4, 32, 2 * f), np.float32),
               names["gate_up_bias"]: np.zeros((4, 2 * f), np.float32),
               names["down"]: np.eye(f, 32, dtype=np.float32)[None].repeat(4, 0),
               names["down_bias"]: np.zeros((4, 32), np.float32)}
    weights[names["gate_up_bias"]][0, 0::2] = 20.0      # gate clamped to 7
    weights[names["gate_up_bias"]][0, 1::2] = -20.0     # up clamped to -7
    out = ref.expert_ffn(spec, weights, names, 0, np.zeros((1, 32), np.float32))
    gate = 7.0 * (1 / (1 + np.exp(-7.0 * 1.702)))
    np.testing.assert_allclose(out[0, :f], (-7.0 + 1) * gate, rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(list(CONFIGS)), seed=st.integers(0, 2**16),
       length=st.integers(2, 14))
def test_prefill_equals_token_by_token_decode(name, seed, length):
    spec = parse_config(CONFIGS[name], name)
    weights = random_weights(spec, seed)
    tokens = np.random.default_rng(seed).integers(0, spec.vocab_size, length)
    logits, _ = ref.prefill(spec, weights, tokens)
    cache = ref.KVCache.empty(spec)
    rows = [ref.decode_step(spec, weights, int(t), cache) for t in tokens]
    assert rel_err(np.stack(rows), logits) <= 1e-5


# --------------------------------------------------------------------------- HuggingFace


def _perturb(model, torch, name):
    """Random biases and norms (HF starts them at 0 and 1), decisive routers and sinks,
    and for gpt-oss experts large enough that the SwiGLU clamps engage."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if key.endswith(("router.weight", "gate.weight", "router.bias", "sinks")):
                param.copy_(noise)
            elif key.endswith("gate_up_proj"):
                param.copy_(noise)
            elif key.endswith("bias"):
                param.copy_(0.02 * noise)
            elif key.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * noise)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_matches_huggingface(name, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    data = CONFIGS[name]
    spec = parse_config(data, name)
    torch.manual_seed(0)
    hf_config = transformers.AutoConfig.for_model(**data)
    model = transformers.AutoModelForCausalLM.from_config(
        hf_config, attn_implementation="eager").float().eval()
    _perturb(model, torch, name)
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert load_config(tmp_path / "config.json") == spec
    weights = load_weights(tmp_path, spec)          # the checkpoint as HF publishes it
    rotary = model.model.rotary_emb
    np.testing.assert_allclose(spec.rope_inv_freq(), rotary.inv_freq.double().numpy(),
                               rtol=1e-6)
    assert spec.rope.attention_scaling == pytest.approx(float(rotary.attention_scaling))
    tokens = np.random.default_rng(1).integers(0, spec.vocab_size, 24)
    with torch.no_grad():
        hf_logits = model(torch.tensor(tokens)[None]).logits[0].numpy()
    logits, _ = ref.prefill(spec, weights, tokens)
    assert rel_err(logits, hf_logits) <= 1e-4
    prompt = tokens[:5]
    new = 8
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt)[None], max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    hf_rows = torch.stack(out.logits)[:, 0].numpy()
    got_tokens, rows = ref.generate(spec, weights, prompt.tolist(), new)
    assert got_tokens == out.sequences[0, len(prompt):].tolist()
    assert rel_err(rows, hf_rows) <= 1e-4
    json.dumps(spec.to_hf_config())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_machines_refuse_what_they_do_not_map(name):


    spec = parse_config(CONFIGS[name], name)
    # the mesh (tests/test_mesh_moe.py) and the prefill model (tests/test_prefill_arch.py)
    # map every one of them; the op graph does not yet
    with pytest.raises(ConfigError, match="the op graph does not map .* yet"):
        from emulator.inspect.graph import build_decode_graph

        build_decode_graph(spec, 4)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_emu_run_end_to_end(name, tmp_path):
    """`emu run` of each architecture: prefill on the Trainium model, decode on the mesh;
    the logits equal the numpy reference's (fp32, seeded weights)."""
    from click.testing import CliRunner

    from emulator.cli import main

    spec = parse_config(CONFIGS[name], name)
    path, logits = tmp_path / "config.json", tmp_path / "logits.npy"
    path.write_text(json.dumps(CONFIGS[name]))
    result = CliRunner().invoke(main, ["run", str(path), "--dtype", "fp32", "--seed", "0",
                                       "--prompt-tokens", "1,2,3", "--max-new-tokens", "8",
                                       "--mesh", "4x4", "--logits", str(logits), "--quiet"])
    assert result.exit_code == 0, result.output
    _, want = ref.generate(spec, random_weights(spec, 0), [1, 2, 3], 8)
    assert rel_err(np.load(logits), want) <= 1e-4


@pytest.mark.parametrize("name, total, active", [
    ("gpt-oss-120b", 116.83e9, 5.13e9),     # OpenAI gpt-oss model card (active: no embedding)
    ("gpt-oss-20b", 20.91e9, 3.61e9),
    ("qwen3-235b-a22b", 235e9, 22e9),       # Qwen3 technical report
    ("mixtral-8x7b", 46.7e9, 12.9e9),       # Mistral AI, Mixtral of experts
])
def test_bundled_models_have_their_published_sizes(name, total, active):
    from compiler.frontend import resolve_model

    spec = resolve_model(name)
    embedding = spec.vocab_size * spec.hidden_size if name.startswith("gpt-oss") else 0
    assert spec.param_count() == pytest.approx(total, rel=0.01)
    assert spec.active_param_count() - embedding == pytest.approx(active, rel=0.01)
