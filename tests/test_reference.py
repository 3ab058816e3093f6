"""The numpy reference forward pass: self-consistency, GQA/RoPE properties, and agreement with
HuggingFace transformers on tiny random Llama, Mistral and Qwen2 models (when installed)."""

import json
from pathlib import Path

import numpy as np
import pytest

from compiler import reference as ref
from compiler.frontend import load_config, parse_config
from compiler.numerics import round_to
from compiler.weights import load_weights, random_weights
from emulator.hw.errors import ConfigError

MODELS = Path(__file__).resolve().parent.parent / "programs" / "models"
BUNDLED = Path(__file__).resolve().parent.parent / "emulator" / "models" / "tiny.json"
TINY_CONFIGS = ["tiny-llama.json", "tiny-qwen2.json", "tiny-gqa.json"]


def tiny_spec(name="tiny.json"):
    """A tiny spec by file name (the bundled one or one from programs/models)."""
    return load_config(BUNDLED if name == "tiny.json" else MODELS / name)


def rel_err(a, b):
    """max |a - b| / max |b|."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", ["tiny.json", *TINY_CONFIGS])
def test_prefill_matches_token_by_token_decode(name):
    spec = tiny_spec(name)
    weights = random_weights(spec, seed=3)
    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, 12)
    logits, cache = ref.prefill(spec, weights, tokens)
    step_cache = ref.KVCache.empty(spec)
    for i, token in enumerate(tokens):
        step = ref.decode_step(spec, weights, int(token), step_cache)
        assert rel_err(step, logits[i]) < 1e-5
    assert step_cache.length == len(tokens) == cache.length
    assert np.allclose(step_cache.k, cache.k, atol=1e-6)
    assert np.allclose(step_cache.v, cache.v, atol=1e-6)


def test_prefill_then_decode_matches_longer_prefill():
    spec = tiny_spec()
    weights = random_weights(spec, seed=5)
    tokens = [7, 1, 200, 33, 9, 54, 3]
    _, cache = ref.prefill(spec, weights, tokens[:4])
    rows = [ref.decode_step(spec, weights, t, cache) for t in tokens[4:]]
    full, _ = ref.prefill(spec, weights, tokens)
    assert rel_err(np.stack(rows), full[4:]) < 1e-5


def test_kv_cache_shape_and_dtype():
    spec = tiny_spec("tiny-gqa.json")
    _, cache = ref.prefill(spec, random_weights(spec, 0), [1, 2, 3])
    assert cache.k.shape == (spec.num_layers, spec.num_kv_heads, 3, spec.head_dim)
    assert cache.k.dtype == cache.v.dtype == np.float32


def test_generate_rows_and_tokens():
    spec = tiny_spec()
    weights = random_weights(spec, seed=1)
    prompt = [5, 6, 7]
    tokens, logits = ref.generate(spec, weights, prompt, 5)
    assert logits.shape == (5, spec.vocab_size) and logits.dtype == np.float32
    assert tokens == [int(np.argmax(row)) for row in logits]
    full, _ = ref.prefill(spec, weights, prompt + tokens[:-1])
    assert rel_err(logits, full[len(prompt) - 1:]) < 1e-5


def test_causality_future_tokens_do_not_change_past_logits():
    spec = tiny_spec("tiny-qwen2.json")
    weights = random_weights(spec, seed=2)
    a, _ = ref.prefill(spec, weights, [1, 2, 3, 4, 5])
    b, _ = ref.prefill(spec, weights, [1, 2, 3, 9, 11])
    assert np.array_equal(a[:3], b[:3])
    assert not np.allclose(a[3:], b[3:])


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = tiny_spec()
    data = json.loads(BUNDLED.read_text())
    data["num_key_value_heads"] = data["num_attention_heads"]
    mha = parse_config(data, "mha")
    weights = random_weights(gqa, seed=4)
    mha_weights = dict(weights)
    for layer in range(gqa.num_layers):
        for kind in ("k", "v"):
            name = f"model.layers.{layer}.self_attn.{kind}_proj.weight"
            heads = weights[name].reshape(gqa.num_kv_heads, gqa.head_dim, gqa.hidden_size)
            mha_weights[name] = np.repeat(heads, gqa.group_size, axis=0).reshape(
                mha.kv_dim, mha.hidden_size)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    a, _ = ref.prefill(gqa, weights, tokens)
    b, _ = ref.prefill(mha, mha_weights, tokens)
    assert rel_err(a, b) < 1e-5


def test_rope_scores_depend_only_on_relative_position():
    spec = tiny_spec("tiny-llama.json")
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, spec.head_dim)).astype(np.float32)
    k = rng.standard_normal((1, 1, spec.head_dim)).astype(np.float32)

    def score(m, n):
        cos_m, sin_m = ref.rope_tables(spec, np.array([m]))
        cos_n, sin_n = ref.rope_tables(spec, np.array([n]))
        return float(np.sum(ref.apply_rope(q, cos_m, sin_m) * ref.apply_rope(k, cos_n, sin_n)))

    assert score(7, 3) == pytest.approx(score(40, 36), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-3)


def test_biases_and_norm_weights_change_the_output():
    spec = tiny_spec("tiny-qwen2.json")
    weights = random_weights(spec, seed=0)
    base, _ = ref.prefill(spec, weights, [1, 2, 3])
    for name in ("model.layers.0.self_attn.k_proj.bias", "model.norm.weight",
                 "model.layers.1.post_attention_layernorm.weight"):
        changed = dict(weights)
        changed[name] = weights[name] + np.float32(0.5)
        out, _ = ref.prefill(spec, changed, [1, 2, 3])
        assert not np.allclose(out, base), name


def test_tied_embeddings_use_the_embedding_table():
    spec = tiny_spec("tiny-llama.json")
    assert spec.tie_word_embeddings and "lm_head.weight" not in spec.weight_shapes()
    weights = random_weights(spec, seed=0)
    logits, _ = ref.prefill(spec, weights, [4])
    h = weights["model.embed_tokens.weight"][[4]]
    assert ref.lm_head_weight(spec, weights) is weights["model.embed_tokens.weight"]
    assert logits.shape == (1, spec.vocab_size) and np.isfinite(logits).all()
    assert h.shape == (1, spec.hidden_size)


def test_storage_rounding_changes_logits_slightly():
    spec = tiny_spec()
    weights = random_weights(spec, seed=0)
    exact, _ = ref.prefill(spec, weights, [1, 2, 3])
    for dtype, tol in (("fp16", 5e-3), ("bf16", 5e-2)):
        rounded = {n: round_to(w, dtype) for n, w in weights.items()}
        approx, _ = ref.prefill(spec, rounded, [1, 2, 3])
        assert 0 < rel_err(approx, exact) < tol


@pytest.mark.parametrize("tokens", [[], [-1], [256], [1, 2, 999]])
def test_bad_tokens_raise_config_error(tokens):
    spec = tiny_spec()
    with pytest.raises(ConfigError, match="token"):
        ref.prefill(spec, random_weights(spec, 0), tokens)


def test_too_long_sequence_raises_config_error():
    spec = tiny_spec()
    weights = random_weights(spec, 0)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        ref.generate(spec, weights, [1] * 250, 10)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        ref.generate(spec, weights, [1], 0)


# --------------------------------------------------------------------------- HuggingFace


def _hf_config_dicts():
    """Tiny configs covering Llama (tied, llama3 rope; and with all biases), Qwen2, Mistral."""
    configs = {name: json.loads((MODELS / name).read_text()) for name in TINY_CONFIGS}
    biased = json.loads(BUNDLED.read_text())
    biased.update(attention_bias=True, mlp_bias=True)
    configs["llama-biases"] = biased
    return configs


def _perturb(model, torch):
    """Give biases and norm weights random values (HF initialises them to 0 and 1)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("bias"):
                param.copy_(0.02 * noise)
            elif name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * noise)


@pytest.mark.parametrize("name", list(_hf_config_dicts()))
def test_reference_matches_huggingface(name, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    data = _hf_config_dicts()[name]
    spec = parse_config(data, name)
    torch.manual_seed(0)
    hf_config = transformers.AutoConfig.for_model(**data)
    model = transformers.AutoModelForCausalLM.from_config(
        hf_config, attn_implementation="eager").float().eval()
    _perturb(model, torch)
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert load_config(tmp_path / "config.json") == spec  # the newer rope_parameters form
    weights = load_weights(tmp_path / "model.safetensors", spec)
    np.testing.assert_allclose(spec.rope_inv_freq(),
                               model.model.rotary_emb.inv_freq.double().numpy(), rtol=1e-6)
    tokens = np.random.default_rng(1).integers(0, spec.vocab_size, 48)
    with torch.no_grad():
        hf_logits = model(torch.tensor(tokens)[None]).logits[0].numpy()
    logits, _ = ref.prefill(spec, weights, tokens)
    assert rel_err(logits, hf_logits) <= 1e-4
    _check_greedy_generation(spec, weights, model, tokens[:5], torch)


def _check_greedy_generation(spec, weights, model, prompt, torch):
    """HF greedy generate with its KV cache gives the same tokens and per-step logits."""
    new = 6
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt)[None], max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None)
    hf_tokens = out.sequences[0, len(prompt):].tolist()
    hf_logits = torch.stack(out.logits)[:, 0].numpy()
    tokens, logits = ref.generate(spec, weights, prompt.tolist(), new)
    assert tokens == hf_tokens
    assert rel_err(logits, hf_logits) <= 1e-4
