"""compiler.frontend: the model zoo, both RoPE forms, HF rope semantics, and malformed configs."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from compiler.frontend import (
    ModelSpec,
    RopeSpec,
    bundled_model_path,
    list_bundled_models,
    load_config,
    parse_config,
    resolve_model,
)
from emulator.hw.errors import ConfigError

MODELS = Path(__file__).resolve().parent.parent / "programs" / "models"
ZOO = sorted(p.name for p in MODELS.glob("*.json"))

# Published parameter counts of the real checkpoints (embeddings included).
PUBLISHED_PARAMS = {
    "llama-3.1-8b.json": 8_030_261_248,
    "llama-3.1-70b.json": 70_553_706_496,
    "mistral-7b.json": 7_248_023_552,
    "qwen2-7b.json": 7_615_616_512,
}


def zoo(name):
    """A zoo config as a dict."""
    return json.loads((MODELS / name).read_text())


@pytest.mark.parametrize("name", ZOO)
def test_zoo_configs_load_and_round_trip(name):
    spec = load_config(MODELS / name)
    assert isinstance(spec, ModelSpec)
    assert parse_config(spec.to_hf_config(), "round trip") == spec
    assert spec.param_count() == sum(math.prod(s) for s in spec.weight_shapes().values())
    assert json.loads(json.dumps(spec.to_dict()))["rope"]["theta"] == spec.rope.theta


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_real_models_have_published_parameter_counts(name):
    assert load_config(MODELS / name).param_count() == PUBLISHED_PARAMS[name]


def test_kv_bytes_per_token_matches_design_examples():
    assert load_config(MODELS / "llama-3.1-8b.json").kv_bytes_per_token(2) == 131_072
    assert load_config(MODELS / "llama-3.1-70b.json").kv_bytes_per_token(2) == 327_680


def test_llama31_fields():
    spec = load_config(MODELS / "llama-3.1-8b.json")
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (32, 32, 8, 128)
    assert spec.rope == RopeSpec(500000.0, "llama3", 8.0, 1.0, 4.0, 8192)
    assert spec.torch_dtype == "bfloat16" and spec.group_size == 4


def test_qwen2_has_qkv_biases_and_ignores_disabled_sliding_window():
    spec = load_config(MODELS / "qwen2-7b.json")
    assert spec.attention_bias and not spec.o_proj_bias and not spec.mlp_bias
    shapes = spec.weight_shapes()
    assert shapes["model.layers.0.self_attn.k_proj.bias"] == (512,)
    assert "model.layers.0.self_attn.o_proj.bias" not in shapes


def test_llama_attention_bias_covers_o_proj_and_mlp_bias():
    data = zoo("tiny-llama.json")
    data.update(attention_bias=True, mlp_bias=True)
    shapes = parse_config(data, "x").weight_shapes()
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f"model.layers.1.self_attn.{name}.bias" in shapes
    assert shapes["model.layers.1.mlp.down_proj.bias"] == (64,)


def test_explicit_nulls_take_defaults():
    data = zoo("tiny-llama.json")
    data.update(hidden_act=None, rms_norm_eps=None, num_key_value_heads=None, head_dim=None,
                torch_dtype=None, attention_bias=None)
    spec = parse_config(data, "x")
    assert (spec.hidden_act, spec.rms_norm_eps, spec.torch_dtype) == ("silu", 1e-6, "float32")
    assert spec.num_kv_heads == spec.num_heads and spec.head_dim == 16
    assert not spec.attention_bias


def test_explicit_head_dim_and_default_kv_heads():
    spec = load_config(MODELS / "tiny-gqa.json")
    assert spec.head_dim == 12 != spec.hidden_size // spec.num_heads
    assert spec.weight_shapes()["model.layers.0.self_attn.o_proj.weight"] == (64, 96)
    data = zoo("tiny-llama.json")
    del data["num_key_value_heads"]
    assert parse_config(data, "x").num_kv_heads == data["num_attention_heads"]


def test_weight_names_follow_hf_order():
    spec = load_config(bundled_model_path("tiny"))
    names = list(spec.weight_shapes())
    assert names[0] == "model.embed_tokens.weight"
    assert names[1:10] == [
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
    ]
    assert names[-2:] == ["model.norm.weight", "lm_head.weight"]


def test_bundled_tiny_model():
    assert "tiny" in list_bundled_models()
    spec = resolve_model("tiny")
    assert spec == load_config(bundled_model_path("tiny.json"))
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads) == (64, 2, 4, 2)
    assert (spec.intermediate_size, spec.vocab_size, spec.max_position_embeddings) == (
        128, 256, 256)
    assert spec.architecture == "LlamaForCausalLM"
    with pytest.raises(ConfigError, match="bundled models: .*tiny"):
        bundled_model_path("huge")
    with pytest.raises(ConfigError, match="no such model config file or bundled model"):
        resolve_model("nope/missing.json")


# --------------------------------------------------------------------------- RoPE


def _llama3(form):
    """The Llama-3.1-8B rope in the old (`rope_scaling`) or new (`rope_parameters`) form."""
    data = zoo("llama-3.1-8b.json")
    if form == "rope_parameters":
        params = dict(data.pop("rope_scaling"), rope_theta=data.pop("rope_theta"))
        data["rope_parameters"] = params
    return data


def test_both_rope_forms_give_the_same_spec():
    assert parse_config(_llama3("rope_scaling"), "a") == parse_config(_llama3("rope_parameters"),
                                                                      "b")


def test_legacy_rope_scaling_type_key():
    data = zoo("tiny-llama.json")
    data["rope_scaling"] = {"type": "linear", "factor": 4.0}
    spec = parse_config(data, "x")
    assert spec.rope == RopeSpec(500000.0, "linear", 4.0)
    base = spec.rope.theta ** -(np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(spec.rope_inv_freq(), base / 4.0, rtol=1e-12)


def test_default_rope_inv_freq():
    spec = load_config(bundled_model_path("tiny"))
    expected = [10000.0 ** (-2 * i / 16) for i in range(8)]
    np.testing.assert_allclose(spec.rope_inv_freq(), expected, rtol=1e-12)
    assert spec.rope_inv_freq().dtype == np.float64


def test_llama3_inv_freq_bands():
    spec = load_config(MODELS / "llama-3.1-8b.json")
    base = RopeSpec(spec.rope.theta).inv_freq(spec.head_dim)
    scaled = spec.rope_inv_freq()
    wavelen = 2 * np.pi / base
    high = wavelen < 8192 / 4
    low = wavelen > 8192 / 1
    np.testing.assert_allclose(scaled[high], base[high])
    np.testing.assert_allclose(scaled[low], base[low] / 8)
    middle = ~high & ~low
    assert middle.any()
    assert np.all((scaled[middle] < base[middle]) & (scaled[middle] > base[middle] / 8))


def test_llama3_inv_freq_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    data = _llama3("rope_scaling")
    spec = parse_config(data, "x")
    hf_config = transformers.LlamaConfig(**data)
    inv_freq, scale = ROPE_INIT_FUNCTIONS["llama3"](hf_config, torch.device("cpu"))
    assert scale == 1.0
    np.testing.assert_allclose(spec.rope_inv_freq(), inv_freq.double().numpy(), rtol=1e-6)


def test_llama3_original_max_positions_defaults_to_max_position_embeddings():
    data = _llama3("rope_parameters")
    del data["rope_parameters"]["original_max_position_embeddings"]
    assert parse_config(data, "x").rope.original_max_position_embeddings == 131072


# --------------------------------------------------------------------------- malformed configs


def _set(path, value):
    """An edit that sets a (dotted) key; value None deletes it."""
    def edit(data):
        *parents, last = path.split(".")
        target = data
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return edit


_DELETE = object()

# (base config, edit, text the message must contain)
BAD_CONFIGS = {
    "missing hidden_size": ("tiny-llama.json", _set("hidden_size", _DELETE), "'hidden_size'"),
    "string hidden_size": ("tiny-llama.json", _set("hidden_size", "64"), "'hidden_size'"),
    "zero layers": ("tiny-llama.json", _set("num_hidden_layers", 0), "'num_hidden_layers'"),
    "negative vocab": ("tiny-llama.json", _set("vocab_size", -5), "'vocab_size'"),
    "bool heads": ("tiny-llama.json", _set("num_attention_heads", True), "'num_attention_heads'"),
    "float ffn": ("tiny-llama.json", _set("intermediate_size", 17.5), "'intermediate_size'"),
    "kv not dividing": ("tiny-gqa.json", _set("num_key_value_heads", 3), "'num_key_value_heads'"),
    "hidden not multiple": ("tiny-qwen2.json", _set("num_attention_heads", 10), "'hidden_size'"),
    "odd head_dim": ("tiny-gqa.json", _set("head_dim", 11), "'head_dim'"),
    "architecture": ("tiny-llama.json", _set("architectures", ["GPT2LMHeadModel"]),
                     "'architectures' has unsupported value \"GPT2LMHeadModel\" (supported: "
                     "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
                     "MixtralForCausalLM, Qwen3MoeForCausalLM, GptOssForCausalLM)"),
    "architectures not a list": ("tiny-llama.json", _set("architectures", "LlamaForCausalLM"),
                                 "'architectures'"),
    "no architecture": ("tiny-llama.json", lambda d: [d.pop("architectures"),
                                                      d.pop("model_type")], "'architectures'"),
    "model_type mismatch": ("tiny-llama.json", _set("model_type", "qwen2"), "'model_type'"),
    "gelu": ("tiny-llama.json", _set("hidden_act", "gelu"), "'hidden_act' has unsupported "
                                                            "value \"gelu\" (supported: silu)"),
    "longrope": ("tiny-llama.json", _set("rope_scaling", {"rope_type": "longrope",
                                                          "factor": 4.0}),
                 "'rope_scaling.rope_type' has unsupported value \"longrope\" "
                 "(supported: default, linear, llama3, yarn)"),
    "dynamic (old key)": ("tiny-llama.json", _set("rope_scaling", {"type": "dynamic",
                                                                   "factor": 2.0}),
                          "'rope_scaling.type'"),
    "linear without factor": ("tiny-gqa.json", _set("rope_parameters.factor", _DELETE),
                              "'rope_parameters.factor'"),
    "llama3 without low": ("tiny-llama.json", _set("rope_scaling.low_freq_factor", _DELETE),
                           "'rope_scaling.low_freq_factor'"),
    "llama3 high <= low": ("tiny-llama.json", _set("rope_scaling.high_freq_factor", 1.0),
                           "'rope_scaling.high_freq_factor'"),
    "rope_theta string": ("tiny-llama.json", _set("rope_theta", "big"), "'rope_theta'"),
    "rope_parameters theta zero": ("tiny-gqa.json", _set("rope_parameters.rope_theta", 0),
                                   "'rope_parameters.rope_theta'"),
    "rope_parameters not dict": ("tiny-gqa.json", _set("rope_parameters", [1]),
                                 "'rope_parameters'"),
    "both rope forms": ("tiny-gqa.json", _set("rope_scaling", {"type": "linear", "factor": 2}),
                        "'rope_scaling'"),
    "partial rotary": ("tiny-llama.json", _set("partial_rotary_factor", 0.5),
                       "'partial_rotary_factor'"),
    "negative eps": ("tiny-llama.json", _set("rms_norm_eps", -1e-5), "'rms_norm_eps'"),
    "bias not bool": ("tiny-llama.json", _set("attention_bias", "yes"), "'attention_bias'"),
    "tie not bool": ("tiny-llama.json", _set("tie_word_embeddings", 1), "'tie_word_embeddings'"),
    "mistral zero window": ("tiny-gqa.json", _set("sliding_window", 0),
                            "'sliding_window' must be a positive integer, got 0"),
    "qwen2 window layers": ("tiny-qwen2.json", lambda d: d.update(use_sliding_window=True,
                                                                  max_window_layers=-1),
                            "'max_window_layers' must be an integer >= 0"),
    "layer types length": ("tiny-qwen2.json", _set("layer_types", ["full_attention"]),
                           "'layer_types' must list"),
    "llama sliding layers": ("tiny-llama.json", lambda d: d.update(
        layer_types=["sliding_attention"] * d["num_hidden_layers"], sliding_window=4),
        "'layer_types' cannot name sliding_attention layers for Llama"),
    "qwen2 without bias": ("tiny-qwen2.json", _set("attention_bias", False), "'attention_bias'"),
    "mistral mlp bias": ("tiny-gqa.json", _set("mlp_bias", True), "'mlp_bias'"),
    "int8 dtype": ("tiny-llama.json", _set("torch_dtype", "int8"),
                   "'torch_dtype' has unsupported value \"int8\" "
                   "(supported: float32, float16, bfloat16)"),
    "missing max positions": ("tiny-qwen2.json", _set("max_position_embeddings", _DELETE),
                              "'max_position_embeddings'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_malformed_config_names_file_and_field(case, tmp_path):
    base, edit, expected = BAD_CONFIGS[case]
    data = copy.deepcopy(zoo(base))
    edit(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("text, expected", [
    ('{"hidden_size": 64,', "malformed JSON at line 1"),
    ("[1, 2]", "expected a JSON object"),
    ("", "malformed JSON"),
])
def test_malformed_json_file(text, expected, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="no such model config file"):
        load_config(tmp_path / "absent.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="binary.json"):
        load_config(tmp_path / "binary.json")
