"""Lowering a whole prefill (all layers, all cores of one chip) to one instruction stream.

Core split (docs/prefill.md, "Work split across cores"), C = cores_per_chip * chips (tensor
parallel over every core of every chip; collectives run a ring over each chip's cores and
one over the chips):

- attention: tensor parallel by heads. Core c owns query heads [c*H/C, (c+1)*H/C) and
  computes the key/value heads they read (GQA groups; a kv head shared by two cores is
  computed by both). o_proj contracts over the core's heads, giving a partial sum.
- MLP: tensor parallel by columns of the intermediate dimension in tiles of 128; down_proj
  contracts over the core's columns, giving a partial sum.
- Partial sums are combined by a reduce-scatter over the cores (collective on NeuronLink);
  the residual add and RMSNorm run sequence-parallel on each core's slice of ceil(P/C)
  tokens; an all-gather gives every core the normalised activations for the next matmuls.
- lm_head: vocabulary split into C ranges; only the last prompt position is computed.

Cores whose work has the same shape run identical streams, so a timing-only lowering keeps
one representative per group, and lowers decoder layers 0 and 1 only: layers 2.. are copies
of layer 1 with shifted indices (layer 0 differs by its embedding gather). Functional
lowering emits every core and every layer.
"""

import math
from dataclasses import dataclass

import numpy as np

from emulator.hw.errors import ConfigError
from emulator.prefill import attention as attn
from emulator.prefill import instructions as instr
from emulator.prefill import moe as moe_lowering
from emulator.prefill.linear import linear_fm
from emulator.prefill.lowering import Lowering, Strip, TileMap
from emulator.prefill.norm import NormIO, add_norm

NONE = -1


@dataclass(frozen=True)
class CoreShare:
    """The work of one core: head, column, vocabulary and token ranges (start, count)."""

    core: int
    q_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    mlp: tuple[int, int]
    vocab: tuple[int, int]
    tokens: tuple[int, int]
    experts: tuple[int, int] = (0, 0)     # MoE: first expert and count (expert parallel)

    def signature(self, group_size: int, counts=None) -> tuple:
        """Shape of the work: cores with equal signatures run identical streams (`counts`:
        tokens per expert, when the model has experts)."""
        pattern = tuple(h // group_size - self.kv_heads[0] for h in self.q_heads)
        e0, ne = self.experts
        routed = () if counts is None else tuple(int(x) for x in counts[e0:e0 + ne])
        return (len(self.q_heads), len(self.kv_heads), pattern, self.mlp[1], self.vocab[1],
                self.tokens[1], routed)


def _split(total: int, parts: int, c: int) -> tuple[int, int]:
    """Contiguous range of item c when `total` items are dealt evenly over `parts`."""
    lo, hi = c * total // parts, (c + 1) * total // parts
    return lo, hi - lo


def core_shares(spec, hw, prompt_len: int, chips: int = 1) -> list[CoreShare]:
    """How the cores of `chips` chips split one prefill (see the module docstring)."""
    C = hw.cores_per_chip * chips
    mlp_tiles = math.ceil(spec.intermediate_size / hw.pe_cols)
    vocab_chunk = math.ceil(spec.vocab_size / C)
    token_chunk = math.ceil(prompt_len / C)
    shares = []
    for c in range(C):
        h0, nh = _split(spec.num_heads, C, c)
        heads = tuple(range(h0, h0 + nh))
        kv = tuple(sorted({h // spec.group_size for h in heads}))
        t0, nt = _split(mlp_tiles, C, c)
        m0 = t0 * hw.pe_cols
        mlp = (m0, max(0, min(spec.intermediate_size, (t0 + nt) * hw.pe_cols) - m0))
        v0 = min(spec.vocab_size, c * vocab_chunk)
        tok0 = min(prompt_len, c * token_chunk)
        experts = moe_lowering.expert_range(spec.moe.num_experts, C, c) if spec.moe else (0, 0)
        if spec.moe and len(spec.moe.sparse_layers) == spec.num_layers:
            mlp = (0, 0)                # no dense MLP anywhere: no dense columns to split
        shares.append(CoreShare(c, heads, kv, mlp,
                                (v0, min(spec.vocab_size, v0 + vocab_chunk) - v0),
                                (tok0, min(prompt_len, tok0 + token_chunk) - tok0), experts))
    return shares


def attention_pairs(past: int, n: int, window: int | None) -> float:
    """(query, key) pairs of attention scores for queries at positions past..past+n-1:
    position p sees min(p + 1, window) keys (causal; a sliding window caps it)."""
    a, b = past, past + n - 1
    if not window:
        window = b + 1
    c = min(b, window - 1)                    # positions that see every key before them
    uncapped = (c + 1) * (c + 2) / 2 - a * (a + 1) / 2 if a <= c else 0.0
    return uncapped + max(0, b - max(a, window) + 1) * window


def check_supported(spec, hw) -> None:
    """Reject models the lowering cannot map (head_dim beyond the array)."""
    if spec.head_dim > hw.pe_rows or spec.head_dim > hw.pe_cols:
        raise ConfigError(f"prefill: head_dim {spec.head_dim} exceeds the {hw.pe_rows}x"
                          f"{hw.pe_cols} TensorE array of preset '{hw.name}'")
    if spec.head_dim % 2:
        raise ConfigError(f"prefill: head_dim {spec.head_dim} must be even for RoPE")


@dataclass
class Lowered:
    """A lowered prefill: the program plus what is needed to bind inputs and read outputs."""

    program: instr.InstructionStream
    shares: list[CoreShare]
    tensors: dict             # role -> tensor id (inputs, KV per layer/core, logits)
    prompt_len: int
    dtype: str
    chips: int = 1
    past: int = 0             # chunked prefill: positions of earlier chunks in the KV cache
    last: bool = True         # chunked prefill: the last chunk (computes the logits)
    routed: dict | None = None    # MoE: layer -> tokens per expert
    machine: object = None        # functional MoE: the executed machine (interp)


class _PrefillLowering:
    """Emits the stream layer by layer (see `lower_prefill`)."""

    def __init__(self, spec, hw, P: int, dtype: str, cores: list[CoreShare], chips: int = 1,
                 past: int = 0, counts=None, machine_inputs=None):
        self.spec, self.hw, self.P, self.dtype = spec, hw, P, dtype
        self.past = past          # KV positions before this chunk (chunked prefill)
        self.counts = counts      # MoE timing-only: None (balanced) or {layer: counts}
        self.routed: dict = {}    # MoE: layer -> tokens per expert used by the lowering
        self.machine = None       # functional MoE: the stream runs while it is built
        self.b = instr.Builder()
        self.L = Lowering(hw, dtype, self.b, active_cores=hw.cores_per_chip)
        self.cores = cores
        self.t: dict = {}
        self.chips = chips
        if machine_inputs is not None:
            from emulator.prefill.interp import Incremental
            self.machine = Incremental(self.b, machine_inputs)

    def expert_counts(self, layer: int, ids_t: int) -> np.ndarray:
        """Tokens per expert of a sparse layer: from the routing the emulated router wrote
        (functional: the stream so far is executed first), else the given or the balanced
        counts (moe.py)."""
        moe = self.spec.moe
        if self.machine is not None:
            self.machine.run()
            ids = self.machine.data[ids_t].astype(np.int64)
            counts = np.bincount(ids.ravel(), minlength=moe.num_experts)
        elif self.counts is not None:
            counts = np.asarray(self.counts[layer], np.int64)
        else:
            counts = moe_lowering.balanced_counts(self.P, moe.top_k, moe.num_experts)
        self.routed[layer] = counts
        return counts

    # -------------------------------------------------------------- tensors

    def hbm(self, role: str, rows: int, cols: int, dtype: str) -> int:
        """A shared HBM tensor named by its role (inputs are bound by this name)."""
        tid = self.b.tensor(role, rows, cols, dtype, "hbm")
        self.t[role] = tid
        return tid

    def inputs(self) -> None:
        """HBM tensors of the embedding, token ids and RoPE tables."""
        s, act = self.spec, self.dtype
        self.hbm("embed", s.vocab_size, s.hidden_size, act)
        self.hbm("tokens", 1, self.P, "fp32")
        self.hbm("rope.cos", s.head_dim, self.P, "fp32")
        self.hbm("rope.sin", s.head_dim, self.P, "fp32")
        self.hbm("final_norm", s.hidden_size, 1, act)
        self.hbm("lm_head.T", s.hidden_size, s.vocab_size, act)
        self.hbm("logits", s.vocab_size, 1, "fp32")

    def layer_weights(self, layer: int) -> dict:
        """HBM tensors of one layer's weights (transposed, [in, out]) and biases."""
        s, act, p = self.spec, self.dtype, f"L{layer}."
        shapes = {"q": (s.hidden_size, s.q_dim), "k": (s.hidden_size, s.kv_dim),
                  "v": (s.hidden_size, s.kv_dim), "o": (s.q_dim, s.hidden_size)}
        if not s.is_sparse(layer):
            shapes.update({"gate": (s.hidden_size, s.intermediate_size),
                           "up": (s.hidden_size, s.intermediate_size),
                           "down": (s.intermediate_size, s.hidden_size)})
        w = {name: self.hbm(f"{p}{name}.T", *shape, act) for name, shape in shapes.items()}
        self.L.packed.update(w.values())       # stored in --weight-dtype
        biases = {"q": s.attention_bias, "k": s.attention_bias, "o": s.o_proj_bias,
                  "gate": s.mlp_bias, "up": s.mlp_bias, "down": s.mlp_bias}
        for name, present in biases.items():
            w[f"{name}.b"] = self.hbm(f"{p}{name}.bias", shapes[name][1], 1, act) \
                if present and name in shapes else NONE
        if s.is_sparse(layer):
            w.update(moe_lowering.moe_weights(self, layer))
        w["v.b"] = self.hbm(f"{p}v.bias_rows", self.L.pmax, s.kv_dim, act) \
            if s.attention_bias else NONE
        w["sinks"] = self.hbm(f"{p}sinks", 1, s.num_heads, "fp32") if s.attention_sinks \
            else NONE
        for name in ("q_norm", "k_norm"):
            w[name] = self.hbm(f"{p}{name}", s.head_dim, 1, act) if s.qk_norm else NONE
        w["ln1"] = self.hbm(f"{p}ln1", s.hidden_size, 1, act)
        w["ln2"] = self.hbm(f"{p}ln2", s.hidden_size, 1, act)
        return w

    # -------------------------------------------------------------- operators

    def norm_op(self, name, layer, io_for, c_ready, gather: bool = True):
        """Add+norm on every core's token slice, then an all-gather; returns the gather
        (without `gather`: {core: its last store}, for the MoE dispatch)."""
        op = self.b.begin_op(name, layer)
        s = self.spec
        lasts = {}
        for share in self.cores:
            t0, nt = share.tokens
            if nt:
                lasts[share.core] = add_norm(self.L, share.core, io_for(c_ready), t0, nt,
                                             f"L{layer}.{name}")
        H, P = s.hidden_size, self.P
        op.flops = 4.0 * H * P
        op.hbm_bytes = H * P * (4 + 4 + 4 + self.L.bpe)
        if not gather:
            return lasts
        return self.L.collective(instr.C_ALL_GATHER, H * P * self.L.bpe, self.chips,
                                 list(lasts.values()))

    def qkv_op(self, layer, w, xn, ready):
        """q, k (with RoPE) feature-major and v token-major per core; returns per-core maps."""
        op = self.b.begin_op("qkv", layer)
        s, d, P = self.spec, self.spec.head_dim, self.P
        out = {}
        rope = (self.t["rope.cos"], self.t["rope.sin"], d, s.rms_norm_eps)
        for share in self.cores:
            if not share.q_heads:
                continue
            c = share.core
            nq, nkv = len(share.q_heads), len(share.kv_heads)
            T = self.past + P           # the KV cache holds earlier chunks and this one
            qt = self.b.tensor(f"L{layer}.q.c{c}", nq * d, P, self.dtype, "hbm")
            kt = self.b.tensor(f"L{layer}.k.c{c}", nkv * d, T, self.dtype, "hbm")
            vt = self.b.tensor(f"L{layer}.v.c{c}", T, nkv * d, self.dtype, "hbm")
            maps = {qt: TileMap(nq * d, P, d), kt: TileMap(nkv * d, P, d),
                    vt: TileMap(P, nkv * d, self.L.pmax, nkv * d)}
            strips = [Strip(w["q"], h * d, d, "rope", qt, i * d, w["q.b"], norm=w["q_norm"])
                      for i, h in enumerate(share.q_heads)]
            strips += [Strip(w["k"], h * d, d, "rope", kt, i * d, w["k.b"],
                             out_col0=self.past, norm=w["k_norm"])
                       for i, h in enumerate(share.kv_heads)]
            tm = (w["v"], share.kv_heads[0] * d, nkv * d, vt, w["v.b"], self.past)
            linear_fm(self.L, c, strips, s.hidden_size, 0, P, maps, x=xn, x_ready=ready,
                      rope=rope, tm=tm, name=f"L{layer}.qkv")
            out[c] = {"q": (qt, maps[qt]), "k": (kt, maps[kt]), "v": (vt, maps[vt])}
        op.flops = 2.0 * P * s.hidden_size * (s.q_dim + 2 * s.kv_dim)
        op.hbm_bytes = (self.L.stored_weight_bytes(s.hidden_size * (s.q_dim + 2 * s.kv_dim))
                        + self.L.bpe * (P * s.hidden_size + P * (s.q_dim + 2 * s.kv_dim)))
        return out

    def attention_op(self, layer, qkv, w=None):
        """Flash attention per core; returns per-core (O^T tensor, map)."""
        op = self.b.begin_op("attention", layer)
        s, d, P = self.spec, self.spec.head_dim, self.P
        out = {}
        scale = float(np.float32(d ** -0.5))
        for share in self.cores:
            if not share.q_heads:
                continue
            c = share.core
            nq = len(share.q_heads)
            ot = self.b.tensor(f"L{layer}.o.c{c}", nq * d, P, self.dtype, "hbm")
            omap = TileMap(nq * d, P, d)
            heads = [(i, h // s.group_size - share.kv_heads[0])
                     for i, h in enumerate(share.q_heads)]
            sinks = (w["sinks"], share.q_heads[0]) if w is not None and w["sinks"] >= 0 \
                else None
            attn.attention(self.L, c, heads, d, P, qkv[c]["q"], qkv[c]["k"], qkv[c]["v"],
                           (ot, omap), scale, f"L{layer}.attn", past=self.past,
                           window=s.window(layer), sinks=sinks)
            out[c] = (ot, omap)
        op.flops = 4.0 * d * s.num_heads * attention_pairs(self.past, P, s.window(layer))
        op.hbm_bytes = self.L.bpe * (2 * P * s.q_dim + 2 * (self.past + P) * s.kv_dim)
        return out

    def reduce_proj_op(self, name, layer, weight, bias, K_of, x_of, delta):
        """Row-parallel projection to hidden (o_proj / down_proj) + reduce-scatter."""
        op = self.b.begin_op(name, layer)
        s, P, H = self.spec, self.P, self.spec.hidden_size
        pdtype = self.L.partial_dtype
        partial = {sh.core: self.b.tensor(f"L{layer}.{name}.partial.c{sh.core}", H, P, pdtype,
                                          "hbm") for sh in self.cores}
        lasts = []
        bias_core = next(sh.core for sh in self.cores if K_of(sh)[0] > 0)
        for share in self.cores:
            K, row0 = K_of(share)
            if K == 0:
                continue
            c = share.core
            x, xmap = x_of(share)
            pt = partial[c]
            core_bias = bias if c == bias_core else NONE      # the bias is added once
            strips = [Strip(weight, m0, min(self.L.mmax, H - m0), "partial", pt, m0, core_bias,
                            row0) for m0 in range(0, H, self.L.mmax)]
            ready = int(xmap.prod.max())
            lasts.append(linear_fm(self.L, c, strips, K, 0, P, {pt: TileMap(H, P, self.L.mmax)},
                                   x=x, x_ready=ready, name=f"L{layer}.{name}"))
        first = partial[self.cores[0].core]
        cc = self.L.collective(instr.C_REDUCE_SCATTER, H * P * self.L.partial_bytes, self.chips,
                               lasts,
                               d=(delta, 0, H, 0, P), a=(first, 0, H, 0, P),
                               count=len(self.cores))
        inner = s.q_dim if name == "o_proj" else s.intermediate_size
        op.flops = 2.0 * P * inner * H
        op.hbm_bytes = (self.L.stored_weight_bytes(inner * H)
                        + self.L.bpe * (P * inner + P * H))
        return cc

    def gate_up_op(self, layer, w, xn, ready):
        """gate/up strips per core with the SiLU product evicted; returns per-core maps."""
        op = self.b.begin_op("gate_up", layer)
        s, P = self.spec, self.P
        out = {}
        for share in self.cores:
            m0, mc = share.mlp
            if mc == 0:
                continue
            c = share.core
            at = self.b.tensor(f"L{layer}.act.c{c}", mc, P, self.dtype, "hbm")
            amap = TileMap(mc, P, self.L.mmax)
            strips = []
            for col in range(m0, m0 + mc, self.L.mmax):
                m = min(self.L.mmax, m0 + mc - col)
                strips.append(Strip(w["gate"], col, m, "silu", NONE, 0, w["gate.b"]))
                strips.append(Strip(w["up"], col, m, "mul_gate", at, col - m0, w["up.b"]))
            linear_fm(self.L, c, strips, s.hidden_size, 0, P, {at: amap}, x=xn,
                      x_ready=ready, name=f"L{layer}.gate_up")
            out[c] = (at, amap)
        op.flops = 4.0 * P * s.hidden_size * s.intermediate_size
        op.hbm_bytes = (self.L.stored_weight_bytes(2 * s.hidden_size * s.intermediate_size)
                        + self.L.bpe * (P * s.hidden_size + P * s.intermediate_size))
        return out

    # -------------------------------------------------------------- layers

    def layer(self, layer: int, prev: dict) -> dict:
        """Emit one decoder layer; `prev` holds the previous layer's h and delta tensors."""
        return self.layer_tail(self.layer_head(layer, prev))

    def layer_head(self, layer: int, prev: dict) -> dict:
        """Weights, tensors and the attention add+norm of a layer (layer 0: embeddings)."""
        s, P, H = self.spec, self.P, self.spec.hidden_size
        w = self.layer_weights(layer)
        act = self.dtype
        ctx = {"layer": layer, "w": w}
        for name, dtype in (("h_attn", "fp32"), ("h_mlp", "fp32"), ("xn_attn", act),
                            ("xn_mlp", act), ("delta_attn", "fp32"), ("delta_mlp", "fp32")):
            ctx[name] = self.b.tensor(f"L{layer}.{name}", H, P, dtype, "hbm")

        def io1(ready):
            if prev is None:
                return NormIO(H, s.rms_norm_eps, w["ln1"], h_out=ctx["h_attn"],
                              xn_out=ctx["xn_attn"], embed=self.t["embed"],
                              tokens=self.t["tokens"], ready=ready)
            return NormIO(H, s.rms_norm_eps, w["ln1"], prev["h"], prev["delta"],
                          ctx["h_attn"], ctx["xn_attn"], ready=ready)

        ctx["g1"] = self.norm_op("attn_norm", layer, io1, NONE if prev is None else prev["cc"])
        return ctx

    def layer_tail(self, ctx: dict) -> dict:
        """qkv, attention, o_proj, MLP add+norm, gate/up and down of a layer."""
        s, H, layer, w = self.spec, self.spec.hidden_size, ctx["layer"], ctx["w"]
        qkv = self.qkv_op(layer, w, ctx["xn_attn"], ctx["g1"])
        o = self.attention_op(layer, qkv, w)
        d = s.head_dim
        cc1 = self.reduce_proj_op(
            "o_proj", layer, w["o"], w["o.b"],
            lambda sh: (len(sh.q_heads) * d, sh.q_heads[0] * d if sh.q_heads else 0),
            lambda sh: o[sh.core], ctx["delta_attn"])
        sparse = s.is_sparse(layer)
        g2 = self.norm_op("mlp_norm", layer, lambda ready: NormIO(
            H, s.rms_norm_eps, w["ln2"], ctx["h_attn"], ctx["delta_attn"], ctx["h_mlp"],
            ctx["xn_mlp"], ready=ready), cc1, gather=not sparse)
        if sparse:
            cc2 = moe_lowering.moe_mlp(self, layer, w, ctx["xn_mlp"], g2, ctx["delta_mlp"])
        else:
            act_maps = self.gate_up_op(layer, w, ctx["xn_mlp"], g2)
            cc2 = self.reduce_proj_op("down", layer, w["down"], w["down.b"],
                                      lambda sh: (sh.mlp[1], sh.mlp[0]),
                                      lambda sh: act_maps[sh.core], ctx["delta_mlp"])
        self.t[f"L{layer}.k"] = {c: v["k"][0] for c, v in qkv.items()}
        self.t[f"L{layer}.v"] = {c: v["v"][0] for c, v in qkv.items()}
        return {"h": ctx["h_mlp"], "delta": ctx["delta_mlp"], "cc": cc2}

    def final(self, prev: dict) -> None:
        """Final norm of the last position and the lm_head over each core's vocabulary."""
        s, H, P = self.spec, self.spec.hidden_size, self.P
        op = self.b.begin_op("lm_head", -1)
        logits = self.t["logits"]
        lmap = {logits: TileMap(s.vocab_size, 1, self.L.mmax)}
        for share in self.cores:
            v0, vc = share.vocab
            if vc == 0:
                continue
            c = share.core
            io = NormIO(H, s.rms_norm_eps, self.t["final_norm"], prev["h"], prev["delta"],
                        ready=prev["cc"])
            xs = add_norm(self.L, c, io, P - 1, 1, "final_norm")
            strips = [Strip(self.t["lm_head.T"], v, min(self.L.mmax, v0 + vc - v), "copy32",
                            logits, v) for v in range(v0, v0 + vc, self.L.mmax)]
            linear_fm(self.L, c, strips, H, 0, 1, lmap, x_sbuf=xs, name="lm_head")
        op.flops = 2.0 * H * s.vocab_size
        op.hbm_bytes = self.L.bpe * H * s.vocab_size


def lower_prefill(spec, hw, prompt_len: int, dtype: str, timing_only: bool,
                  chips: int = 1, past: int = 0, last: bool = True,
                  weight_format=None, expert_counts=None, inputs=None) -> Lowered:
    """Lower a prefill of `prompt_len` tokens on `chips` chips; see the module docstring.

    Chunked prefill (docs/prefill.md, "Chunked prefill"): `past` tokens of the prompt were
    prefilled before (their keys and values are in HBM, columns/rows 0..past-1 of each
    layer's K and V tensors); this chunk's tokens sit at positions past..past+prompt_len-1,
    and only the `last` chunk computes the final norm and logits. `weight_format`
    (emulator.hw.dtypes.WeightFormat, None: the matmul dtype) is the storage of the
    decoder layers' projection weights. MoE: `expert_counts` ({layer: tokens per expert},
    timing-only; None: balanced); `inputs` (functional MoE: the HBM inputs) makes the
    lowering execute the stream as it is built, so the experts are sized by the emulated
    router (the executed machine is returned in `Lowered.machine`)."""
    check_supported(spec, hw)
    shares = core_shares(spec, hw, prompt_len, chips)
    weight = {}
    moe = spec.moe
    layer_counts = None
    if moe is not None and timing_only:
        layer_counts = (moe_lowering.balanced_counts(prompt_len, moe.top_k, moe.num_experts)
                        if expert_counts is None else None)
    if timing_only and (moe is None or layer_counts is not None):
        reps = {}
        bias_cores = ()      # the core adding a row-parallel bias works differently
        if spec.o_proj_bias:
            bias_cores += (next(sh.core for sh in shares if sh.q_heads),)
        if spec.mlp_bias:
            bias_cores += (next(sh.core for sh in shares if sh.mlp[1]),)
        for share in shares:
            key = (share.signature(spec.group_size, layer_counts), share.core in bias_cores)
            reps.setdefault(key, share)
            weight[reps[key].core] = weight.get(reps[key].core, 0) + 1
        cores = list(reps.values())
    else:
        cores = shares
        weight = {sh.core: 1 for sh in shares}
    low = _PrefillLowering(spec, hw, prompt_len, dtype, cores, chips, past, expert_counts,
                           inputs if (moe is not None and not timing_only) else None)
    low.L.memoise = timing_only
    low.L.weight_format = weight_format
    low.inputs()
    plan = None
    if timing_only and uniform_layers(spec) and expert_counts is None:
        prev, plan = _timing_layers(low, spec.num_layers)
    elif timing_only and expert_counts is None:
        prev = _periodic_layers(low, spec)
    else:
        prev = None
        for layer in range(spec.num_layers):
            prev = low.layer(layer, prev)
    if last:
        low.final(prev)
    if plan is not None:
        _virtual_ops(low.b, plan)
    if low.machine is not None:
        low.machine.run()
    program = low.b.program([sh.core for sh in cores], weight, plan)
    return Lowered(program, shares, low.t, prompt_len, dtype, chips, past, last, low.routed,
                   low.machine)


def uniform_layers(spec) -> bool:
    """True when every decoder layer has the same shape of work (attention window, dense or
    expert MLP), so a timing-only lowering may copy layer 1 for all later layers; otherwise
    (gpt-oss's alternating sliding/full layers, Qwen3-MoE's dense layers) every layer is
    lowered, each still memoised inside."""
    kinds = {(spec.window(layer), spec.is_sparse(layer)) for layer in range(spec.num_layers)}
    return len(kinds) == 1


def _timing_layers(low: _PrefillLowering, layers: int):
    """Timing-only layers: layer 0 explicit; layer 1 = its own add+norm + a copy of layer
    0's tail; layers 2.. are not stored: the program's layer plan runs layer 1 again for
    them (engine_model fast-forwards once a layer is an exact shift of the one before).
    Returns (the last stored layer's outputs, layer plan or None)."""
    b = low.b
    ctx = low.layer_head(0, None)
    tail0, tail_ops0 = b.count, len(b.ops)
    prev = low.layer_tail(ctx)
    if layers == 1:
        return prev, None
    start1, ops1 = b.count, len(b.ops)
    ctx = low.layer_head(1, prev)
    shift = b.count - tail0
    _append_copy(b, b.records(tail0, start1), shift, b.ops[tail_ops0:ops1], len(b.ops) - tail_ops0,
                 layer_shift=1)
    for s0, ln, reps in list(b.segments):
        if tail0 <= s0 < start1:
            b.repeat_at(s0 + shift, ln, reps)
    prev = {"h": prev["h"], "delta": prev["delta"], "cc": prev["cc"] + shift}
    plan = (start1, b.count - start1, layers, len(b.ops) - ops1)
    return prev, plan


def _periodic_layers(low: _PrefillLowering, spec) -> dict:
    """Timing-only layers of two alternating kinds (gpt-oss: sliding, full, sliding, ...):
    layers 0-3 are lowered; a later layer l of the same kind as l-2 is appended as a copy
    of layer l-2's records with dependencies and operator ids moved by the distance, when
    layer l-1 is as long as layer l-3 (so the copy's dependencies into the previous layer
    land on the same slots of l-1); otherwise it is lowered. Returns the last layer's
    outputs (h, delta, last collective)."""
    b = low.b
    kinds = [(spec.window(layer), spec.is_sparse(layer)) for layer in range(spec.num_layers)]
    start, ops, prevs = [], [], []
    prev = None
    for layer in range(spec.num_layers):
        start.append(b.count)
        ops.append(len(b.ops))
        if (layer >= 4 and kinds[layer] == kinds[layer - 2]
                and kinds[layer - 1] == kinds[layer - 3]
                and start[layer] - start[layer - 1] == start[layer - 2] - start[layer - 3]):
            src = layer - 2
            shift = start[layer] - start[src]
            _append_copy(b, b.records(start[src], start[src + 1]), shift,
                         b.ops[ops[src]:ops[src + 1]], ops[layer] - ops[src], layer_shift=2)
            for s0, ln, reps in list(b.segments):
                if start[src] <= s0 < start[src + 1]:
                    b.repeat_at(s0 + shift, ln, reps)
            old = prevs[src]
            prev = {"h": old["h"], "delta": old["delta"], "cc": old["cc"] + shift}
        else:
            prev = low.layer(layer, prev)
        prevs.append(prev)
    return prev


def _append_copy(b: instr.Builder, records: np.ndarray, shift: int, ops: list, op_shift: int,
                 layer_shift: int) -> None:
    """Append a copy of `records` with dependencies and operator ids shifted."""
    rec = records                       # a copy already (Builder.records)
    rec["dep"] = np.where(rec["dep"] >= 0, rec["dep"] + shift, -1)
    rec["op_id"] += op_shift
    b.append_records(rec)
    for op in ops:
        b.ops.append(instr.OpInfo(op.name, op.layer + layer_shift, op.flops, op.hbm_bytes))


def _virtual_ops(b: instr.Builder, plan) -> None:
    """Operator table of the whole prefill: layer 1's operators repeated for layers 2..,
    the final operators' ids moved after them."""
    t0, tlen, layers, opl = plan
    first_final = t0 + tlen
    op1 = int(b.records(t0, t0 + 1)["op_id"][0])
    tail = b.ops[op1 + opl:]
    layer1 = b.ops[op1:op1 + opl]
    copies = [instr.OpInfo(op.name, op.layer + k, op.flops, op.hbm_bytes)
              for k in range(1, layers - 1) for op in layer1]
    b.add_op_id(first_final, len(copies))
    b.ops[op1 + opl:] = copies + tail
