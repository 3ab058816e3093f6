"""Model frontend: a HuggingFace `config.json` -> a validated, frozen `ModelSpec`.

Supported architectures are the dense RMSNorm + RoPE + GQA + SwiGLU decoders
`LlamaForCausalLM`, `MistralForCausalLM` (without sliding-window attention) and
`Qwen2ForCausalLM` (q/k/v biases, without sliding-window attention). RoPE parameters are
accepted in both forms found in the wild: `rope_theta` + `rope_scaling` (older files) and
`rope_parameters` (newer transformers). Every problem raises `ConfigError` naming the file
and the field; see docs/models.md for the full list of fields and defaults.

Units: sizes are element counts, `kv_bytes_per_token` is bytes, `rope.theta` is the RoPE base
(dimensionless), inverse frequencies are radians per position.
"""

import dataclasses
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np

from emulator.hw.errors import ConfigError
from emulator.hw.presets import MAX_INT, parse_json

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MixtralForCausalLM": "mixtral",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GptOssForCausalLM": "gpt_oss",
}
MOE_ARCHITECTURES = ("MixtralForCausalLM", "Qwen3MoeForCausalLM", "GptOssForCausalLM")
QK_NORM_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
LAYER_TYPES = ("full_attention", "sliding_attention")
HIDDEN_ACTS = ("silu",)
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
GPT_OSS_SWIGLU_ALPHA = 1.702   # transformers GptOssConfig defaults of swiglu_alpha
GPT_OSS_SWIGLU_LIMIT = 7.0     # and swiglu_limit
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_ROPE_THETA = 10000.0
DEFAULT_RMS_NORM_EPS = 1e-6
# transformers' per-architecture defaults where they differ from the two above
ARCH_ROPE_THETA = {"MixtralForCausalLM": 1e6, "GptOssForCausalLM": 150000.0}
ARCH_RMS_NORM_EPS = {"MixtralForCausalLM": 1e-5, "GptOssForCausalLM": 1e-5}
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """Rotary position embedding parameters (HF semantics).

    `theta` is the base; `factor` applies to `linear` and `llama3`; the remaining fields are
    the `llama3` band limits (`original_max_position_embeddings` in positions).
    """

    theta: float
    rope_type: str = "default"
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None
    beta_fast: float | None = None           # yarn: rotations of the fast band edge
    beta_slow: float | None = None           # yarn: rotations of the slow band edge
    truncate: bool = True                    # yarn: round the band edges to whole dims
    attention_factor: float | None = None    # yarn: cos/sin scale (None: 0.1 ln(factor) + 1)

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """Inverse frequencies [head_dim // 2] in radians per position, float64 (HF semantics)."""
        exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
        inv_freq = 1.0 / (self.theta ** exponents)
        if self.rope_type == "linear":
            return inv_freq / self.factor
        if self.rope_type == "llama3":
            return self._llama3_scale(inv_freq)
        if self.rope_type == "yarn":
            return self._yarn_blend(inv_freq, head_dim)
        return inv_freq

    @property
    def attention_scaling(self) -> float:
        """The factor HF applies to cos and sin (yarn's mscale; 1 for the other types)."""
        if self.rope_type != "yarn":
            return 1.0
        if self.attention_factor is not None:
            return self.attention_factor
        return 0.1 * math.log(self.factor) + 1.0 if self.factor > 1 else 1.0

    def _yarn_blend(self, inv_freq: np.ndarray, head_dim: int) -> np.ndarray:
        """YaRN: interpolated (inv_freq / factor) below the slow band edge, extrapolated
        (inv_freq) above the fast one, a linear ramp between, as transformers'
        `_compute_yarn_parameters`."""
        old_len = self.original_max_position_embeddings

        def correction_dim(rotations: float) -> float:
            return (head_dim * math.log(old_len / (rotations * 2 * math.pi))) / (
                2 * math.log(self.theta))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        return inv_freq / self.factor * (1 - extrapolation) + inv_freq * extrapolation

    def _llama3_scale(self, inv_freq: np.ndarray) -> np.ndarray:
        """Llama 3.1 frequency-band scaling, as transformers' `_compute_llama3_parameters`."""
        old_len = self.original_max_position_embeddings
        low_wavelen = old_len / self.low_freq_factor
        high_wavelen = old_len / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (old_len / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled)


@dataclasses.dataclass(frozen=True)
class MoESpec:
    """A mixture-of-experts MLP (sizes in elements).

    `routing`: "softmax_topk" (Mixtral, Qwen3-MoE: softmax over all experts, keep the top
    k, renormalise them when `norm_topk_prob`) or "topk_softmax" (gpt-oss: the top k
    router logits, softmax over those). `activation`: "silu" (SwiGLU experts) or
    "clamped_swiglu" (gpt-oss: gate clamped above at `swiglu_limit`, up to +-limit,
    `(up + 1) * gate * sigmoid(alpha * gate)`). `layout`: how a checkpoint stores the experts:
    "mixtral" (`block_sparse_moe.experts.E.w1/w3/w2`), "qwen" (`mlp.experts.E.gate_proj/
    up_proj/down_proj`), "fused" (gpt-oss: `mlp.experts.gate_up_proj` [E, hidden, 2F] with
    gate and up interleaved, `down_proj` [E, F, hidden], biases). `sparse_layers`: the
    layers whose MLP is the MoE block; the others are dense SwiGLU of `intermediate_size`.
    """

    num_experts: int
    top_k: int
    expert_size: int
    routing: str
    norm_topk_prob: bool
    router_bias: bool
    expert_bias: bool
    activation: str
    swiglu_alpha: float | None
    swiglu_limit: float | None
    layout: str
    sparse_layers: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A validated decoder-only transformer configuration (sizes in elements)."""

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    hidden_act: str
    attention_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    max_position_embeddings: int
    torch_dtype: str
    rope: RopeSpec
    qk_norm: bool = False                 # RMSNorm of each q and k head before RoPE (Qwen3)
    sliding_window: int | None = None     # positions a sliding layer sees, itself included
    layer_types: tuple[str, ...] = ()     # per layer: full_attention | sliding_attention
    attention_sinks: bool = False         # a learned sink logit per head (gpt-oss)
    moe: MoESpec | None = None

    @property
    def q_dim(self) -> int:
        """Width of the query projection output (num_heads * head_dim) in elements."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projection outputs in elements."""
        return self.num_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads sharing one key/value head (GQA group size)."""
        return self.num_heads // self.num_kv_heads

    @property
    def o_proj_bias(self) -> bool:
        """Whether o_proj has a bias: `attention_bias` covers q, k, v and o in Llama, Qwen3
        and gpt-oss; Qwen2's covers q, k, v only (HF)."""
        return self.attention_bias and self.architecture in (
            "LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "GptOssForCausalLM")

    def window(self, layer: int) -> int | None:
        """Positions layer `layer` attends to (itself included), None for full attention."""
        if self.layer_types and self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    def is_sparse(self, layer: int) -> bool:
        """True when layer `layer`'s MLP is a mixture of experts."""
        return self.moe is not None and layer in self.moe.sparse_layers

    def rope_inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies [head_dim // 2], radians per position, float64."""
        return self.rope.inv_freq(self.head_dim)

    def kv_bytes_per_token(self, bytes_per_element: int) -> int:
        """KV-cache bytes per token: 2 * layers * kv_heads * head_dim * bytes_per_element."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element

    def unmapped_features(self) -> list[str]:
        """The features of this model that the machine models (mesh decode, prefill, the op
        graph) do not map yet; the numpy reference runs them all."""
        features = {"mixture-of-experts MLP": self.moe is not None, "qk-norm": self.qk_norm,
                    "attention sinks": self.attention_sinks,
                    "sliding-window attention": bool(self.layer_types),
                    "yarn RoPE": self.rope.rope_type == "yarn"}
        return [name for name, present in features.items() if present]

    def require_mapped(self, what: str) -> None:
        """ConfigError naming `what` (e.g. 'decode on the mesh') and the features it lacks."""
        missing = self.unmapped_features()
        if missing:
            raise ConfigError(f"{what} does not map {self.architecture}'s "
                              f"{', '.join(missing)} yet; the numpy reference "
                              f"(compiler/reference.py) runs it (docs/models.md)")

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF tensor name -> shape, in checkpoint order (Linear weights are [out, in])."""
        shapes = {"model.embed_tokens.weight": (self.vocab_size, self.hidden_size)}
        for layer in range(self.num_layers):
            shapes.update(self._layer_shapes(layer))
        shapes["model.norm.weight"] = (self.hidden_size,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, self.hidden_size)
        return shapes

    def _layer_shapes(self, layer: int) -> dict[str, tuple[int, ...]]:
        """Tensor shapes of one decoder layer."""
        p = f"model.layers.{layer}."
        h, f = self.hidden_size, self.intermediate_size
        proj_out = {"q": self.q_dim, "k": self.kv_dim, "v": self.kv_dim}
        shapes = {f"{p}input_layernorm.weight": (h,)}
        for name, out in proj_out.items():
            shapes[f"{p}self_attn.{name}_proj.weight"] = (out, h)
            if self.attention_bias:
                shapes[f"{p}self_attn.{name}_proj.bias"] = (out,)
        shapes[f"{p}self_attn.o_proj.weight"] = (h, self.q_dim)
        if self.o_proj_bias:
            shapes[f"{p}self_attn.o_proj.bias"] = (h,)
        if self.qk_norm:
            shapes[f"{p}self_attn.q_norm.weight"] = (self.head_dim,)
            shapes[f"{p}self_attn.k_norm.weight"] = (self.head_dim,)
        if self.attention_sinks:
            shapes[f"{p}self_attn.sinks"] = (self.num_heads,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
        if self.is_sparse(layer):
            shapes.update(self._expert_shapes(p))
            return shapes
        for name, (out, inp) in {"gate": (f, h), "up": (f, h), "down": (h, f)}.items():
            shapes[f"{p}mlp.{name}_proj.weight"] = (out, inp)
            if self.mlp_bias:
                shapes[f"{p}mlp.{name}_proj.bias"] = (out,)
        return shapes

    def _expert_shapes(self, p: str) -> dict[str, tuple[int, ...]]:
        """Tensor shapes of one MoE block, named as the architecture's checkpoints are."""
        moe, h = self.moe, self.hidden_size
        e, f = moe.num_experts, moe.expert_size
        if moe.layout == "fused":
            return {f"{p}mlp.router.weight": (e, h), f"{p}mlp.router.bias": (e,),
                    f"{p}mlp.experts.gate_up_proj": (e, h, 2 * f),
                    f"{p}mlp.experts.gate_up_proj_bias": (e, 2 * f),
                    f"{p}mlp.experts.down_proj": (e, f, h),
                    f"{p}mlp.experts.down_proj_bias": (e, h)}
        block, names = ((f"{p}block_sparse_moe.", ("w1", "w3", "w2")) if moe.layout == "mixtral"
                        else (f"{p}mlp.", ("gate_proj", "up_proj", "down_proj")))
        shapes = {f"{block}gate.weight": (e, h)}
        for expert in range(e):
            gate, up, down = (f"{block}experts.{expert}.{n}.weight" for n in names)
            shapes.update({gate: (f, h), up: (f, h), down: (h, f)})
        return shapes

    def expert_names(self, layer: int) -> dict[str, str]:
        """Checkpoint names of a sparse layer's router and experts: keys `router`,
        `router_bias`, and per expert e `gate.e`, `up.e`, `down.e` (mixtral / qwen layouts)
        or the fused tensors `gate_up`, `gate_up_bias`, `down`, `down_bias`."""
        p, moe = f"model.layers.{layer}.", self.moe
        if moe.layout == "fused":
            x = f"{p}mlp.experts."
            return {"router": f"{p}mlp.router.weight", "router_bias": f"{p}mlp.router.bias",
                    "gate_up": x + "gate_up_proj", "gate_up_bias": x + "gate_up_proj_bias",
                    "down": x + "down_proj", "down_bias": x + "down_proj_bias"}
        block, names = ((f"{p}block_sparse_moe.", ("w1", "w3", "w2")) if moe.layout == "mixtral"
                        else (f"{p}mlp.", ("gate_proj", "up_proj", "down_proj")))
        out = {"router": f"{block}gate.weight"}
        for expert in range(moe.num_experts):
            for role, name in zip(("gate", "up", "down"), names, strict=True):
                out[f"{role}.{expert}"] = f"{block}experts.{expert}.{name}.weight"
        return out

    def active_param_count(self) -> int:
        """Parameters (elements) one token touches: all but the experts it is not routed to."""
        if self.moe is None:
            return self.param_count()
        moe = self.moe
        per_expert = 3 * moe.expert_size * self.hidden_size + (
            2 * moe.expert_size + self.hidden_size if moe.expert_bias else 0)
        idle = (moe.num_experts - moe.top_k) * per_expert * len(moe.sparse_layers)
        return self.param_count() - idle

    def param_count(self) -> int:
        """Number of parameters (elements) in all weight tensors (tied embeddings once)."""
        return sum(math.prod(shape) for shape in self.weight_shapes().values())

    def to_dict(self) -> dict:
        """The spec as a JSON-ready dict keyed by attribute name (`rope` nested)."""
        return dataclasses.asdict(self)

    def to_hf_config(self) -> dict:
        """An HF `config.json` dict (newer `rope_parameters` form) that parses back to self."""
        rope = {"rope_type": self.rope.rope_type, "rope_theta": self.rope.theta}
        for key in ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings"):
            if getattr(self.rope, key) is not None:
                rope[key] = getattr(self.rope, key)
        config = {
            "architectures": [self.architecture],
            "model_type": ARCHITECTURES[self.architecture],
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": self.hidden_act,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": self.torch_dtype,
            "rope_parameters": rope,
        }
        if self.architecture == "LlamaForCausalLM":
            config["attention_bias"] = self.attention_bias
            config["mlp_bias"] = self.mlp_bias
        if self.architecture in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "GptOssForCausalLM"):
            config["attention_bias"] = self.attention_bias
        if self.rope.rope_type == "yarn":
            rope.update(beta_fast=self.rope.beta_fast, beta_slow=self.rope.beta_slow,
                        truncate=self.rope.truncate)
            if self.rope.attention_factor is not None:
                rope["attention_factor"] = self.rope.attention_factor
        config["layer_types"] = list(self.layer_types) or ["full_attention"] * self.num_layers
        config["sliding_window"] = self.sliding_window
        if self.architecture.startswith("Qwen"):
            config["use_sliding_window"] = bool(self.layer_types)
            if self.layer_types:
                config["max_window_layers"] = self.layer_types.index("sliding_attention")
        if self.moe is not None:
            config.update(self._moe_config())
        return config

    def _moe_config(self) -> dict:
        """The MoE fields of the architecture's HF config."""
        moe = self.moe
        if self.architecture == "Qwen3MoeForCausalLM":
            return {"num_experts": moe.num_experts, "num_experts_per_tok": moe.top_k,
                    "moe_intermediate_size": moe.expert_size,
                    "norm_topk_prob": moe.norm_topk_prob, "decoder_sparse_step": 1,
                    "mlp_only_layers": [i for i in range(self.num_layers)
                                        if i not in moe.sparse_layers]}
        out = {"num_local_experts": moe.num_experts, "num_experts_per_tok": moe.top_k}
        if self.architecture == "GptOssForCausalLM":
            out.update(swiglu_alpha=moe.swiglu_alpha, swiglu_limit=moe.swiglu_limit)
        return out


# --------------------------------------------------------------------------- field readers


def _fail(label: str, field: str, problem: str) -> ConfigError:
    """A ConfigError naming the file and the field."""
    return ConfigError(f"{label}: field '{field}' {problem}")


def _lookup(data: dict, key: str, label: str, field: str, default):
    """`data[key]`, or `default` when absent/null; a missing required field raises."""
    value = data.get(key)
    if value is None:
        if default is _MISSING:
            raise ConfigError(f"{label}: missing field '{field}'")
        return default
    return value


def _int(data: dict, key: str, label: str, default=_MISSING, field: str | None = None) -> int:
    """A positive integer field."""
    field = field or key
    value = _lookup(data, key, label, field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(label, field, f"must be a positive integer, got {json.dumps(value)}")
    if value <= 0:
        raise _fail(label, field, f"must be a positive integer, got {value}")
    if value > MAX_INT:
        raise _fail(label, field, f"is out of range (at most 2^62), got {value}")
    return value


def _float(data: dict, key: str, label: str, default=_MISSING, field: str | None = None) -> float:
    """A positive, finite number field, returned as float."""
    field = field or key
    value = _lookup(data, key, label, field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(label, field, f"must be a positive number, got {json.dumps(value)}")
    if isinstance(value, int) and value > MAX_INT:
        raise _fail(label, field, f"is out of range (at most 2^62), got {value}")
    if not (math.isfinite(value) and value > 0):
        raise _fail(label, field, f"must be a positive, finite number, got {value}")
    return float(value)


def _bool(data: dict, key: str, label: str, default: bool) -> bool:
    """A boolean field (JSON true/false)."""
    value = _lookup(data, key, label, key, default)
    if not isinstance(value, bool):
        raise _fail(label, key, f"must be true or false, got {json.dumps(value)}")
    return value


def _choice(value, label: str, field: str, options) -> str:
    """A string field restricted to `options`."""
    if not isinstance(value, str) or value not in options:
        raise _fail(label, field, f"has unsupported value {json.dumps(value)} "
                                  f"(supported: {', '.join(options)})")
    return value


# --------------------------------------------------------------------------- parsing


def _architecture(data: dict, label: str) -> str:
    """The architecture name from `architectures` (or `model_type` when that is absent)."""
    model_types = {v: k for k, v in ARCHITECTURES.items()}
    names = data.get("architectures")
    if names is None:
        model_type = data.get("model_type")
        if model_type is None:
            raise ConfigError(f"{label}: missing field 'architectures'")
        arch = model_types.get(model_type, model_type)
        return _choice(arch, label, "model_type", list(ARCHITECTURES))
    if (not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str)):
        raise _fail(label, "architectures",
                    f"must be a list of one architecture name, got {json.dumps(names)}")
    arch = _choice(names[0], label, "architectures", list(ARCHITECTURES))
    model_type = data.get("model_type")
    if model_type is not None and model_type != ARCHITECTURES[arch]:
        raise _fail(label, "model_type", f"is {json.dumps(model_type)} but 'architectures' "
                                         f"is {arch} (expected '{ARCHITECTURES[arch]}')")
    return arch


def _parse_layer_types(data: dict, label: str, arch: str, layers: int) -> tuple[str, ...]:
    """Per-layer attention kinds: `layer_types` when given, else as transformers derives
    them (Mistral/Mixtral: every layer sliding when `sliding_window` is set; Qwen2/Qwen3:
    layers from `max_window_layers` on when `use_sliding_window`; gpt-oss: alternating,
    sliding first); () when every layer is full attention."""
    given = data.get("layer_types")
    if given is not None:
        if (not isinstance(given, list) or len(given) != layers
                or any(t not in LAYER_TYPES for t in given)):
            raise _fail(label, "layer_types", f"must list {layers} entries, each one of "
                                              f"{', '.join(LAYER_TYPES)}")
        kinds = tuple(given)
    elif arch in ("MistralForCausalLM", "MixtralForCausalLM"):
        sliding = data.get("sliding_window") is not None
        kinds = ("sliding_attention" if sliding else "full_attention",) * layers
    elif arch.startswith("Qwen") and data.get("use_sliding_window"):
        first = data.get("max_window_layers", layers)
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise _fail(label, "max_window_layers", f"must be an integer >= 0, got "
                                                    f"{json.dumps(first)}")
        kinds = tuple("sliding_attention" if i >= first else "full_attention"
                      for i in range(layers))
    elif arch == "GptOssForCausalLM":
        kinds = tuple("sliding_attention" if i % 2 == 0 else "full_attention"
                      for i in range(layers))
    else:
        kinds = ()
    if arch == "LlamaForCausalLM" and "sliding_attention" in kinds:
        raise _fail(label, "layer_types", "cannot name sliding_attention layers for Llama")
    return kinds if "sliding_attention" in kinds else ()


def _parse_window(data: dict, label: str, arch: str, kinds: tuple) -> int | None:
    """`sliding_window` (positions a sliding layer sees) when some layer slides."""
    if not kinds:
        return None
    return _int(data, "sliding_window", label)


def _parse_moe(data: dict, label: str, arch: str, layers: int) -> MoESpec | None:
    """The MoE block of Mixtral, Qwen3-MoE and gpt-oss configs (None for dense models)."""
    if arch not in MOE_ARCHITECTURES:
        return None
    if arch == "Qwen3MoeForCausalLM":
        key = "num_experts" if "num_experts" in data else "num_local_experts"  # newer HF name
        experts = _int(data, key, label, field="num_experts")
        size = _int(data, "moe_intermediate_size", label)
        step = _int(data, "decoder_sparse_step", label, 1)
        dense = data.get("mlp_only_layers") or []
        if not isinstance(dense, list) or any(
                isinstance(i, bool) or not isinstance(i, int) for i in dense):
            raise _fail(label, "mlp_only_layers", "must be a list of layer indices")
        sparse = tuple(i for i in range(layers) if i not in dense and (i + 1) % step == 0)
    else:
        experts = _int(data, "num_local_experts", label)
        size = _int(data, "intermediate_size", label)
        sparse = tuple(range(layers))
    top_k = _int(data, "num_experts_per_tok", label)
    if top_k > experts:
        raise _fail(label, "num_experts_per_tok", f"({top_k}) exceeds the number of "
                                                  f"experts ({experts})")
    if arch == "GptOssForCausalLM":
        return MoESpec(experts, top_k, size, "topk_softmax", False, True, True,
                       "clamped_swiglu",
                       _float(data, "swiglu_alpha", label, GPT_OSS_SWIGLU_ALPHA),
                       _float(data, "swiglu_limit", label, GPT_OSS_SWIGLU_LIMIT), "fused",
                       sparse)
    norm = (True if arch == "MixtralForCausalLM"
            else _bool(data, "norm_topk_prob", label, False))
    layout = "mixtral" if arch == "MixtralForCausalLM" else "qwen"
    return MoESpec(experts, top_k, size, "softmax_topk", norm, False, False, "silu", None,
                   None, layout, sparse)


def _check_rotary_fraction(params: dict, label: str, field: str) -> None:
    """Only full-width RoPE (`partial_rotary_factor` 1) is supported."""
    fraction = params.get("partial_rotary_factor")
    if fraction is not None and fraction != 1:
        raise _fail(label, field, f"is {json.dumps(fraction)}: only full rotary "
                                  "embedding (1.0) is supported")


def _rope_source(data: dict, label: str) -> tuple[dict, str, float]:
    """(rope parameter dict, its field name, fallback theta) in either RoPE form."""
    arch = _architecture(data, label)
    top_theta = _float(data, "rope_theta", label, ARCH_ROPE_THETA.get(arch, DEFAULT_ROPE_THETA))
    params = data.get("rope_parameters")
    if params is None:
        params, where = data.get("rope_scaling"), "rope_scaling"
        params = {} if params is None else params
    else:
        where = "rope_parameters"
        if data.get("rope_scaling") is not None:
            raise _fail(label, "rope_scaling",
                        "is set together with 'rope_parameters'; use one of the two forms")
    if not isinstance(params, dict):
        raise _fail(label, where, f"must be an object, got {json.dumps(params)}")
    return params, where, top_theta


def _parse_rope(data: dict, label: str, max_positions: int) -> RopeSpec:
    """RopeSpec from `rope_theta` + `rope_scaling` or from `rope_parameters`."""
    params, where, top_theta = _rope_source(data, label)
    _check_rotary_fraction(data, label, "partial_rotary_factor")
    _check_rotary_fraction(params, label, f"{where}.partial_rotary_factor")
    theta = top_theta
    if where == "rope_parameters":
        theta = _float(params, "rope_theta", label, top_theta, f"{where}.rope_theta")
    type_key = "rope_type" if "rope_type" in params else "type"
    rope_type = _choice(params.get(type_key, "default"), label, f"{where}.{type_key}",
                        ROPE_TYPES)
    if rope_type == "default":
        return RopeSpec(theta=theta)
    factor = _float(params, "factor", label, field=f"{where}.factor")
    if rope_type == "linear":
        return RopeSpec(theta=theta, rope_type="linear", factor=factor)
    if rope_type == "yarn":
        return _parse_yarn(params, label, where, theta, factor, max_positions)
    return _parse_llama3(params, label, where, theta, factor, max_positions)


def _parse_yarn(params: dict, label: str, where: str, theta: float, factor: float,
                max_positions: int) -> RopeSpec:
    """The yarn band parameters, with transformers' defaults (beta_fast 32, beta_slow 1,
    truncate true, original length = max_position_embeddings)."""
    truncate = params.get("truncate", True)
    if not isinstance(truncate, bool):
        raise _fail(label, f"{where}.truncate", f"must be true or false, got "
                                                 f"{json.dumps(truncate)}")
    attention = params.get("attention_factor")
    return RopeSpec(
        theta=theta, rope_type="yarn", factor=factor,
        original_max_position_embeddings=_int(params, "original_max_position_embeddings",
                                              label, max_positions,
                                              f"{where}.original_max_position_embeddings"),
        beta_fast=_float(params, "beta_fast", label, 32.0, f"{where}.beta_fast"),
        beta_slow=_float(params, "beta_slow", label, 1.0, f"{where}.beta_slow"),
        truncate=truncate,
        attention_factor=None if attention is None else _float(
            params, "attention_factor", label, field=f"{where}.attention_factor"))


def _parse_llama3(params: dict, label: str, where: str, theta: float, factor: float,
                  max_positions: int) -> RopeSpec:
    """The llama3 band parameters; `original_max_position_embeddings` defaults as in HF."""
    low = _float(params, "low_freq_factor", label, field=f"{where}.low_freq_factor")
    high = _float(params, "high_freq_factor", label, field=f"{where}.high_freq_factor")
    if not high > low:
        raise _fail(label, f"{where}.high_freq_factor",
                    f"must be greater than low_freq_factor ({low}), got {high}")
    original = _int(params, "original_max_position_embeddings", label, max_positions,
                    f"{where}.original_max_position_embeddings")
    return RopeSpec(theta=theta, rope_type="llama3", factor=factor, low_freq_factor=low,
                    high_freq_factor=high, original_max_position_embeddings=original)


def _parse_heads(data: dict, label: str, hidden: int) -> tuple[int, int, int]:
    """(num_heads, num_kv_heads, head_dim), checked for GQA divisibility and even head_dim."""
    heads = _int(data, "num_attention_heads", label)
    kv_heads = _int(data, "num_key_value_heads", label, heads)
    if heads % kv_heads:
        raise _fail(label, "num_key_value_heads",
                    f"({kv_heads}) must divide num_attention_heads ({heads})")
    if data.get("head_dim") is None and hidden % heads:
        raise _fail(label, "hidden_size", f"({hidden}) must be a multiple of "
                                          f"num_attention_heads ({heads}) when head_dim is absent")
    head_dim = _int(data, "head_dim", label, hidden // heads)
    if head_dim % 2:
        raise _fail(label, "head_dim", f"must be even for rotary embeddings, got {head_dim}")
    return heads, kv_heads, head_dim


def _parse_biases(data: dict, label: str, arch: str) -> tuple[bool, bool]:
    """(attention_bias, mlp_bias): Llama reads both; Qwen2 has q/k/v biases; Mistral none."""
    fixed_attention = {"Qwen2ForCausalLM": True, "MistralForCausalLM": False,
                       "MixtralForCausalLM": False}.get(arch)
    default = arch == "GptOssForCausalLM" if fixed_attention is None else fixed_attention
    attention = _bool(data, "attention_bias", label, default)
    mlp = _bool(data, "mlp_bias", label, False)
    if fixed_attention is not None and attention != fixed_attention:
        raise _fail(label, "attention_bias", f"cannot be {json.dumps(attention)} for {arch} "
                                             f"(it is always {json.dumps(fixed_attention)})")
    if arch != "LlamaForCausalLM" and mlp:
        raise _fail(label, "mlp_bias", f"cannot be true for {arch} (only Llama has MLP biases)")
    return attention, mlp


def _parse_dtype(data: dict, label: str) -> str:
    """`torch_dtype` (or newer `dtype`), default float32."""
    key = "torch_dtype" if data.get("torch_dtype") is not None else "dtype"
    return _choice(data.get(key) or "float32", label, key, DTYPES)


def parse_config(data: dict, label: str) -> ModelSpec:
    """Validate an HF config dict; `label` (usually the path) prefixes every error message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a JSON object at the top level")
    arch = _architecture(data, label)
    layers = _int(data, "num_hidden_layers", label)
    layer_types = _parse_layer_types(data, label, arch, layers)
    hidden = _int(data, "hidden_size", label)
    heads, kv_heads, head_dim = _parse_heads(data, label, hidden)
    attention_bias, mlp_bias = _parse_biases(data, label, arch)
    max_positions = _int(data, "max_position_embeddings", label)
    hidden_act = _choice(_lookup(data, "hidden_act", label, "hidden_act", "silu"), label,
                         "hidden_act", HIDDEN_ACTS)
    return ModelSpec(
        architecture=arch,
        hidden_size=hidden,
        intermediate_size=_int(data, "intermediate_size", label),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=_int(data, "vocab_size", label),
        rms_norm_eps=_float(data, "rms_norm_eps", label,
                            ARCH_RMS_NORM_EPS.get(arch, DEFAULT_RMS_NORM_EPS)),
        hidden_act=hidden_act,
        attention_bias=attention_bias,
        mlp_bias=mlp_bias,
        tie_word_embeddings=_bool(data, "tie_word_embeddings", label, False),
        max_position_embeddings=max_positions,
        torch_dtype=_parse_dtype(data, label),
        rope=_parse_rope(data, label, max_positions),
        qk_norm=arch in QK_NORM_ARCHITECTURES,
        sliding_window=_parse_window(data, label, arch, layer_types),
        layer_types=layer_types,
        attention_sinks=arch == "GptOssForCausalLM",
        moe=_parse_moe(data, label, arch, layers),
    )


def read_config_json(path) -> dict:
    """Read a JSON file; a missing, unreadable or malformed file raises ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such model config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read model config: {exc}") from None
    return parse_json(text, str(path))


def load_config(path) -> ModelSpec:
    """Load and validate a HuggingFace `config.json` file."""
    return parse_config(read_config_json(path), str(path))


# --------------------------------------------------------------------------- bundled models


def _bundled_dir():
    """The folder of model configs shipped inside the package."""
    return resources.files("emulator").joinpath("models")


def list_bundled_models() -> list[str]:
    """Names of the bundled model configs (`tiny`, ...)."""
    return sorted(p.name[:-5] for p in _bundled_dir().iterdir() if p.name.endswith(".json"))


def bundled_model_path(name: str) -> Path:
    """Path of a bundled model config by name (`tiny` or `tiny.json`)."""
    stem = name[:-5] if name.endswith(".json") else name
    candidate = _bundled_dir().joinpath(f"{stem}.json")
    if not candidate.is_file():
        known = ", ".join(list_bundled_models())
        raise ConfigError(f"{name}: no such bundled model (bundled models: {known})")
    return Path(str(candidate))


def resolve_model(name_or_path) -> ModelSpec:
    """Load a model config from a file path, a HuggingFace-style folder (its
    `config.json`), or else a bundled model name."""
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: a model folder needs a config.json")
        return load_config(path / "config.json")
    if path.is_file():
        return load_config(path)
    stem = path.name[:-5] if path.name.endswith(".json") else path.name
    if path.parent == Path(".") and stem in list_bundled_models():
        return load_config(bundled_model_path(stem))
    known = ", ".join(list_bundled_models())
    raise ConfigError(f"{name_or_path}: no such model config file or bundled model "
                      f"(bundled models: {known})")
