"""The independent numpy fp32 reference forward pass: the oracle every other test compares to.

Written plainly, one function per transformer piece, with HuggingFace semantics: RMSNorm
(`x * 1/sqrt(mean(x^2) + eps) * w`), RoPE with the rotate_half convention (the two halves
of each head are the real and imaginary parts), grouped-query attention with a causal,
max-subtracted softmax, SwiGLU MLP (`down(silu(gate(x)) * up(x))`), optional biases and tied
embeddings. All arithmetic is float32 except the RoPE angle table, which is computed in
float64 and rounded once to float32.

Shapes: hidden states are [tokens, hidden_size]; the KV cache holds post-RoPE keys and
values as [layers, kv_heads, T, head_dim] float32, T = tokens seen so far.
"""

import dataclasses

import numpy as np

from emulator.hw.errors import ConfigError


@dataclasses.dataclass
class KVCache:
    """Keys (after RoPE) and values of every layer: float32 [layers, kv_heads, T, head_dim]."""

    k: np.ndarray
    v: np.ndarray

    @classmethod
    def empty(cls, spec) -> "KVCache":
        """A cache holding no tokens for `spec`."""
        shape = (spec.num_layers, spec.num_kv_heads, 0, spec.head_dim)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    @property
    def length(self) -> int:
        """Number of tokens held (T)."""
        return self.k.shape[2]


# --------------------------------------------------------------------------- building blocks


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """`x @ weight.T (+ bias)` with an HF [out, in] weight."""
    y = x @ weight.T
    return y if bias is None else y + bias


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight."""
    variance = np.mean(x * x, axis=-1, keepdims=True)
    return (x * (np.float32(1.0) / np.sqrt(variance + np.float32(eps)))) * weight


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) (exp overflow for very negative x gives the correct limit 0)."""
    with np.errstate(over="ignore"):
        return x / (np.float32(1.0) + np.exp(-x))


def rope_tables(spec, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) float32 [len(positions), head_dim] for the rotate_half convention, scaled
    by the RoPE type's attention scaling (yarn; 1 otherwise)."""
    angles = np.outer(positions.astype(np.float64), spec.rope_inv_freq())
    angles = np.concatenate([angles, angles], axis=-1)
    scale = spec.rope.attention_scaling
    return (np.cos(angles) * scale).astype(np.float32), (np.sin(angles) * scale).astype(np.float32)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """[-x2, x1] where x1, x2 are the two halves of the last axis."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate x [heads, tokens, head_dim] by the per-token angles in cos/sin [tokens, head_dim]."""
    return x * cos + rotate_half(x) * sin


def softmax(scores: np.ndarray) -> np.ndarray:
    """Max-subtracted softmax over the last axis (masked entries are -inf)."""
    shifted = scores - np.max(scores, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=-1, keepdims=True)


def causal_mask(new_tokens: int, past: int, window: int | None = None) -> np.ndarray:
    """Boolean [new_tokens, past + new_tokens]: True where query i may attend to key j
    (j <= i; with a sliding `window`, also j > i - window: the last `window` positions)."""
    query_pos = past + np.arange(new_tokens)[:, None]
    key_pos = np.arange(past + new_tokens)[None, :]
    mask = key_pos <= query_pos
    if window is not None:
        mask &= key_pos > query_pos - window
    return mask


# --------------------------------------------------------------------------- layers


def _w(weights: dict, name: str) -> np.ndarray | None:
    """A weight tensor by HF name, or None for an absent optional bias."""
    return weights.get(name)


def attention(spec, weights, layer, x, positions, cache_k, cache_v):
    """Self-attention of n new tokens x [n, hidden] over cached + new keys.

    `cache_k`, `cache_v` are this layer's past [kv_heads, past, head_dim]. Returns
    (output [n, hidden], keys [kv_heads, past + n, head_dim], values likewise).
    """
    p = f"model.layers.{layer}.self_attn."
    n = x.shape[0]
    q = linear(x, weights[p + "q_proj.weight"], _w(weights, p + "q_proj.bias"))
    k = linear(x, weights[p + "k_proj.weight"], _w(weights, p + "k_proj.bias"))
    v = linear(x, weights[p + "v_proj.weight"], _w(weights, p + "v_proj.bias"))
    q = q.reshape(n, spec.num_heads, spec.head_dim).transpose(1, 0, 2)
    k = k.reshape(n, spec.num_kv_heads, spec.head_dim).transpose(1, 0, 2)
    v = v.reshape(n, spec.num_kv_heads, spec.head_dim).transpose(1, 0, 2)
    if spec.qk_norm:
        q = rms_norm(q, weights[p + "q_norm.weight"], spec.rms_norm_eps)
        k = rms_norm(k, weights[p + "k_norm.weight"], spec.rms_norm_eps)
    cos, sin = rope_tables(spec, positions)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    keys = np.concatenate([cache_k, k], axis=1)
    values = np.concatenate([cache_v, v], axis=1)
    sinks = weights[p + "sinks"] if spec.attention_sinks else None
    out = _attend(spec, q, keys, values, past=cache_k.shape[1], window=spec.window(layer),
                  sinks=sinks)
    merged = out.transpose(1, 0, 2).reshape(n, spec.q_dim)
    out = linear(merged, weights[p + "o_proj.weight"], _w(weights, p + "o_proj.bias"))
    return out, keys, values


def _attend(spec, q, keys, values, past: int, window: int | None = None,
            sinks: np.ndarray | None = None) -> np.ndarray:
    """GQA attention: q [heads, n, d], keys/values [kv_heads, T, d] -> [heads, n, d].

    `sinks` [heads] (gpt-oss): one more logit per head in the softmax, with no value: it
    takes probability mass and is dropped."""
    kv_index = np.arange(spec.num_heads) // spec.group_size
    k = keys[kv_index]
    v = values[kv_index]
    scale = np.float32(spec.head_dim ** -0.5)
    scores = (q @ k.transpose(0, 2, 1)) * scale
    mask = causal_mask(q.shape[1], past, window)
    scores = np.where(mask[None], scores, np.float32(-np.inf))
    if sinks is None:
        return softmax(scores) @ v
    sink = np.broadcast_to(sinks.astype(np.float32)[:, None, None], (*scores.shape[:2], 1))
    return softmax(np.concatenate([scores, sink], axis=-1))[..., :-1] @ v


def mlp(spec, weights, layer, x) -> np.ndarray:
    """SwiGLU MLP: down(silu(gate(x)) * up(x)), x [n, hidden]; the MoE block on sparse
    layers."""
    if spec.is_sparse(layer):
        return moe_mlp(spec, weights, layer, x)
    p = f"model.layers.{layer}.mlp."
    gate = linear(x, weights[p + "gate_proj.weight"], _w(weights, p + "gate_proj.bias"))
    up = linear(x, weights[p + "up_proj.weight"], _w(weights, p + "up_proj.bias"))
    return linear(silu(gate) * up, weights[p + "down_proj.weight"],
                  _w(weights, p + "down_proj.bias"))


def route(spec, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(expert ids [n, k], weights [n, k] float32) of router logits [n, experts]: the
    top k by descending logit (ties: lower id first), weighted as `spec.moe.routing` says."""
    moe = spec.moe
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :moe.top_k]
    top = np.take_along_axis(logits, order, axis=-1)
    if moe.routing == "topk_softmax":
        return order, softmax(top)
    chosen = np.take_along_axis(softmax(logits), order, axis=-1)
    if moe.norm_topk_prob:
        chosen = chosen / np.sum(chosen, axis=-1, keepdims=True)
    return order, chosen.astype(np.float32)


def expert_ffn(spec, weights, names: dict, expert: int, x: np.ndarray) -> np.ndarray:
    """One expert on the tokens routed to it, x [m, hidden] -> [m, hidden]."""
    moe = spec.moe
    if moe.layout != "fused":
        gate = linear(x, weights[names[f"gate.{expert}"]])
        up = linear(x, weights[names[f"up.{expert}"]])
        return linear(silu(gate) * up, weights[names[f"down.{expert}"]])
    gate_up = x @ weights[names["gate_up"]][expert] + weights[names["gate_up_bias"]][expert]
    gate, up = gate_up[:, ::2], gate_up[:, 1::2]
    limit, alpha = np.float32(moe.swiglu_limit), np.float32(moe.swiglu_alpha)
    gate = np.minimum(gate, limit)
    up = np.clip(up, -limit, limit)
    glu = gate * sigmoid(gate * alpha)
    out = ((up + np.float32(1.0)) * glu) @ weights[names["down"]][expert]
    return out + weights[names["down_bias"]][expert]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in float32 (overflow gives the correct limit 0)."""
    with np.errstate(over="ignore"):
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def moe_mlp(spec, weights, layer, x) -> np.ndarray:
    """Mixture of experts, x [n, hidden]: each token's top-k experts, weighted and summed."""
    names = spec.expert_names(layer)
    logits = linear(x, weights[names["router"]], _w(weights, names.get("router_bias", "")))
    experts, gates = route(spec, logits.astype(np.float32))
    out = np.zeros_like(x)
    for expert in np.unique(experts):
        tokens, slot = np.nonzero(experts == expert)
        y = expert_ffn(spec, weights, names, int(expert), x[tokens])
        np.add.at(out, tokens, y * gates[tokens, slot][:, None])
    return out


def decoder_layer(spec, weights, layer, h, positions, cache_k, cache_v):
    """One pre-norm decoder layer; returns (h [n, hidden], keys, values)."""
    p = f"model.layers.{layer}."
    normed = rms_norm(h, weights[p + "input_layernorm.weight"], spec.rms_norm_eps)
    attn, keys, values = attention(spec, weights, layer, normed, positions, cache_k, cache_v)
    h = h + attn
    normed = rms_norm(h, weights[p + "post_attention_layernorm.weight"], spec.rms_norm_eps)
    return h + mlp(spec, weights, layer, normed), keys, values


def lm_head_weight(spec, weights) -> np.ndarray:
    """The output projection [vocab, hidden] (the embedding table when tied)."""
    if spec.tie_word_embeddings:
        return weights["model.embed_tokens.weight"]
    return weights["lm_head.weight"]


# --------------------------------------------------------------------------- forward passes


def _check_tokens(spec, tokens, past: int) -> np.ndarray:
    """Token ids as int64 [n]; out-of-vocabulary ids or positions raise ConfigError."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if tokens.size == 0:
        raise ConfigError("tokens: at least one token is required")
    bad = tokens[(tokens < 0) | (tokens >= spec.vocab_size)]
    if bad.size:
        raise ConfigError(f"tokens: token id {int(bad[0])} is outside the vocabulary "
                          f"[0, {spec.vocab_size})")
    if past + tokens.size > spec.max_position_embeddings:
        raise ConfigError(f"sequence of {past + tokens.size} tokens exceeds the model's "
                          f"max_position_embeddings ({spec.max_position_embeddings})")
    return tokens


def forward(spec, weights, tokens, cache: KVCache) -> tuple[np.ndarray, KVCache]:
    """Run n new tokens after the `cache.length` cached ones; (logits [n, vocab], new cache)."""
    past = cache.length
    tokens = _check_tokens(spec, tokens, past)
    positions = np.arange(past, past + tokens.size)
    h = weights["model.embed_tokens.weight"][tokens].astype(np.float32)
    keys, values = [], []
    for layer in range(spec.num_layers):
        h, k, v = decoder_layer(spec, weights, layer, h, positions,
                                cache.k[layer], cache.v[layer])
        keys.append(k)
        values.append(v)
    h = rms_norm(h, weights["model.norm.weight"], spec.rms_norm_eps)
    logits = (h @ lm_head_weight(spec, weights).T).astype(np.float32)
    return logits, KVCache(np.stack(keys), np.stack(values))


def prefill(spec, weights, tokens) -> tuple[np.ndarray, KVCache]:
    """Process a prompt: (logits [P, vocab] float32, KVCache holding P tokens)."""
    return forward(spec, weights, tokens, KVCache.empty(spec))


def decode_step(spec, weights, token: int, cache: KVCache) -> np.ndarray:
    """Feed one token at position cache.length; returns logits [vocab] and appends to cache."""
    logits, new = forward(spec, weights, [token], cache)
    cache.k, cache.v = new.k, new.v
    return logits[0]


def generate(spec, weights, prompt_tokens, max_new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy generation: (new tokens [N], logits [N, vocab] float32).

    Row 0 is the logits at the last prompt position (prefill); row i (i >= 1) the logits of
    decode step i, which feeds token i-1. Token i is argmax of row i (DESIGN.md `--logits`).
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
    prompt = _check_tokens(spec, prompt_tokens, 0)
    if prompt.size + max_new_tokens - 1 > spec.max_position_embeddings:
        raise ConfigError(f"prompt of {prompt.size} tokens + {max_new_tokens} new tokens exceeds "
                          f"the model's max_position_embeddings ({spec.max_position_embeddings})")
    prompt_logits, cache = prefill(spec, weights, prompt)
    rows = [prompt_logits[-1]]
    tokens = [int(np.argmax(rows[0]))]
    for _ in range(max_new_tokens - 1):
        rows.append(decode_step(spec, weights, tokens[-1], cache))
        tokens.append(int(np.argmax(rows[-1])))
    return tokens, np.stack(rows).astype(np.float32)
