"""Mixture-of-experts MLP on the prefill chips: router, top-k, expert parallelism, grouped
expert GEMMs sized by the tokens each expert receives (docs/prefill.md, "Mixture of
experts").

Per sparse layer, after the MLP add+norm (sequence parallel: core c holds the normalised
tokens of its slice):

    router    logits[E, slice] = W_r^T.T @ xn^T (+ bias)          linear_fm, fp32 out
    top-k     per 128 tokens: logits^T (DMA transpose) -> topk values and ids (VectorE,
              nisa.max8 / nc_find_index8 passes: 2 * ceil(k/8) passes over E); gates:
              softmax over all E then the top k (renormalised with norm_topk_prob;
              Mixtral, Qwen3-MoE) or softmax over the top k logits (gpt-oss)
              ids, gates -> HBM routing tables [P, k]
    dispatch  all-to-all of the routed token copies (P * k * hidden elements) to the cores
              owning the experts (experts dealt contiguously over all cores: expert
              parallelism across the chips)
    route     DMA_ROUTE: each owner compacts the routing tables into its experts' token
              lists and gates (a sort of the (token, slot) pairs by expert; costed as the
              bytes it reads and writes on the core's DMA queue)
    experts   per expert e with n_e tokens: gather its tokens' columns of xn (DMA), then
              gate/up and down as projections over n_e tokens (the grouped GEMM: one
              weight stream per expert, every token it received), SiLU-gated or gpt-oss's
              clamped SwiGLU, expert biases
    combine   each expert's outputs are scaled by the gates (VectorE, gates broadcast over
              the partitions by DMA) and scatter-added into the owner's partial sum
              [hidden, P]; an all-to-all returns them (summing the owners' partials).

Token counts: a functional run lowers the layer's experts after executing the program up
to its routing (`interp.Incremental`): the counts are those of the emulated router. A
timing-only run takes them from `expert_counts` (a dict layer -> counts per expert, e.g.
from a functional run) or from the stated distribution "balanced": each expert receives
floor(P*k/E) tokens and the first (P*k mod E) experts one more.
"""

import math

import numpy as np

from emulator.prefill import costs
from emulator.prefill import instructions as instr
from emulator.prefill.linear import linear_fm
from emulator.prefill.lowering import Strip, TileMap, chunks

NONE = -1


def balanced_counts(P: int, top_k: int, experts: int) -> np.ndarray:
    """Tokens per expert under balanced routing: P*k spread evenly, the remainder to the
    lowest expert ids."""
    base, extra = divmod(P * top_k, experts)
    return np.array([base + (1 if e < extra else 0) for e in range(experts)], np.int64)


def expert_range(E: int, cores: int, c: int) -> tuple[int, int]:
    """(first expert, count) of core c when E experts are dealt over `cores` cores."""
    lo, hi = c * E // cores, (c + 1) * E // cores
    return lo, hi - lo


def moe_weights(low, layer: int) -> dict:
    """HBM tensors of a sparse layer: router (W^T [hidden, E], bias [E, 1]) and, per
    expert, W^T of gate and up [hidden, F] and down [F, hidden] with their biases."""
    s, act, p = low.spec, low.dtype, f"L{layer}."
    moe, H, F = s.moe, s.hidden_size, s.moe.expert_size
    w = {"router": low.hbm(f"{p}router.T", H, moe.num_experts, act),
         "router.b": low.hbm(f"{p}router.bias", moe.num_experts, 1, "fp32")
         if moe.router_bias else NONE}
    for e in range(moe.num_experts):
        for name, shape in (("gate", (H, F)), ("up", (H, F)), ("down", (F, H))):
            w[f"{name}.{e}"] = low.hbm(f"{p}e{e}.{name}.T", *shape, act)
            low.L.packed.add(w[f"{name}.{e}"])
            w[f"{name}.{e}.b"] = (low.hbm(f"{p}e{e}.{name}.bias", shape[1], 1, act)
                                  if moe.expert_bias else NONE)
    return w


def moe_inputs(spec, weights: dict, layer: int) -> dict:
    """Initial HBM values of a sparse layer's router and experts from HF tensors."""
    names, moe, out = spec.expert_names(layer), spec.moe, {}
    p = f"L{layer}."
    out[f"{p}router.T"] = weights[names["router"]].T
    if moe.router_bias:
        out[f"{p}router.bias"] = weights[names["router_bias"]][:, None]
    for e in range(moe.num_experts):
        if moe.layout == "fused":
            gate_up = weights[names["gate_up"]][e]            # [hidden, 2F] = [in, out]
            bias = weights[names["gate_up_bias"]][e]
            mats = {"gate": gate_up[:, ::2], "up": gate_up[:, 1::2],
                    "down": weights[names["down"]][e]}
            biases = {"gate": bias[::2], "up": bias[1::2],
                      "down": weights[names["down_bias"]][e]}
            for name in mats:
                out[f"{p}e{e}.{name}.T"] = mats[name]
                out[f"{p}e{e}.{name}.bias"] = biases[name][:, None]
        else:
            for name in ("gate", "up", "down"):
                out[f"{p}e{e}.{name}.T"] = weights[names[f"{name}.{e}"]].T
    return out


def _topk_cycles(hw, k: int, E: int) -> int:
    """A top-k over E values per partition: ceil(k/8) max8 passes and as many
    find-index passes, each one Vector pass over E elements."""
    return int(2 * math.ceil(k / 8) * costs.vector_cycles(hw, E, 1))


def _router(low, layer, w, xn, c, t0, nt, ready, ids_t, gates_t, logits_t):
    """Router logits, top-k and gates of core c's token slice; returns the last store."""
    L, s = low.L, low.spec
    moe, E, k = s.moe, s.moe.num_experts, s.moe.top_k
    strips = [Strip(w["router"], e0, min(L.mmax, E - e0), "copy32", logits_t, e0,
                    w["router.b"]) for e0 in range(0, E, L.mmax)]
    last = linear_fm(L, c, strips, s.hidden_size, t0, nt, {logits_t: TileMap(E, low.P, L.mmax)},
                     x=xn, x_ready=ready, name=f"L{layer}.router")

    def sb(tag, cols):
        return L.sbuf(f"L{layer}.route.{tag}.c{c}", L.pmax, cols, "fp32", c)

    lg, ex, vals, idx, gts = sb("logits", E), sb("exp", E), sb("vals", k), sb("ids", k), \
        sb("gates", k)
    mx, nm, sm, rc = sb("max", 1), sb("negmax", 1), sb("sum", 1), sb("recip", 1)
    prev = NONE
    stores = [last]
    for tt, rows in chunks(nt, L.pmax):
        t = t0 + int(tt)
        rows = int(rows)

        def v(tensor, cols, _rows=rows):
            return (tensor, 0, _rows, 0, cols)

        ld = L.b.one(instr.DMA_COPY, instr.DMA, c, int(costs.dma_cycles(
            L.hw, E * rows * 4, L.active_cores)), [last, prev], lat=L.dma_lat,
            work=E * rows * 4, flags=instr.FLAG_TRANSPOSE, d=v(lg, E),
            a=(logits_t, 0, E, t, rows))
        topk = L.b.one(instr.VEC_TOPK, instr.DVE, c, _topk_cycles(L.hw, k, E), [ld],
                       imm0=float(k), d=v(vals, k), a=v(lg, E), b=v(idx, k))
        if moe.routing == "topk_softmax":        # gpt-oss: softmax over the top k logits
            neg = L.vec(c, instr.VEC_TS, instr.A_MUL, 1, 1, deps=[topk], d=v(nm, 1),
                        a=v(vals, 1), imm0=-1.0)
            ev = L.act(c, instr.F_EXP, k, deps=[neg], d=v(gts, k), a=v(vals, k), b=v(nm, 1),
                       s=v(sm, 1))
            total = ev
        else:                                   # softmax over all E, keep the top k
            red = L.vec(c, instr.VEC_REDUCE, instr.A_MAX, E, 1, deps=[ld], d=v(mx, 1),
                        a=v(lg, E))
            neg = L.vec(c, instr.VEC_TS, instr.A_MUL, 1, 1, deps=[red], d=v(nm, 1),
                        a=v(mx, 1), imm0=-1.0)
            ev = L.act(c, instr.F_EXP, k, deps=[neg, topk], d=v(gts, k), a=v(vals, k),
                       b=v(nm, 1))
            if moe.norm_topk_prob:
                total = L.vec(c, instr.VEC_REDUCE, instr.A_ADD, k, 1, deps=[ev], d=v(sm, 1),
                              a=v(gts, k))
            else:
                total = L.act(c, instr.F_EXP, E, deps=[neg], d=v(ex, E), a=v(lg, E),
                              b=v(nm, 1), s=v(sm, 1))
        rec = L.act(c, instr.F_RECIP, 1, deps=[total], d=v(rc, 1), a=v(sm, 1))
        gate = L.vec(c, instr.VEC_TS, instr.A_MUL, k, 1, deps=[rec, ev], d=v(gts, k),
                     a=v(gts, k), s=v(rc, 1))
        st = L.dma(c, np.full(2, rows * k * 4), deps=[np.array([topk, int(np.max(gate))])],
                   d=(np.array([ids_t, gates_t]), t, rows, 0, k),
                   a=(np.array([idx, gts]), 0, rows, 0, k))
        prev = int(st.max())
        stores.append(prev)
    return prev if prev >= 0 else last


def _swiglu(spec):
    """(gate eviction, up eviction, (alpha, limit)) of the experts' activation."""
    if spec.moe.activation == "clamped_swiglu":
        return "oss_gate", "oss_up", (spec.moe.swiglu_alpha, spec.moe.swiglu_limit)
    return "silu", "mul_gate", None


def _expert(low, layer, w, c, e, n, offset, toks_t, gl_t, xn, route, part, bufs):
    """One expert on its n tokens: gather, gate/up, down, gate-scaled scatter-add into the
    core's partial sum; returns the last instruction."""
    L, s = low.L, low.spec
    H, F, act = s.hidden_size, s.moe.expert_size, low.dtype
    p = f"L{layer}.e{e}"
    xe = low.b.tensor(f"{p}.x.c{c}", H, n, act, "hbm")
    gather = L.b.one(instr.DMA_GATHER, instr.DMA, c, int(costs.dma_cycles(
        L.hw, H * n * L.bpe, L.active_cores)), [route], lat=L.dma_lat, work=H * n * L.bpe,
        flags=instr.FLAG_COLUMNS, d=(xe, 0, H, 0, n), a=(xn, 0, H, 0, 1),
        b=(toks_t, 0, 1, offset, n))
    at = low.b.tensor(f"{p}.act.c{c}", F, n, act, "hbm")
    amap = TileMap(F, n, L.mmax)
    g_ev, u_ev, swiglu = _swiglu(s)
    strips = []
    for col in range(0, F, L.mmax):
        m = min(L.mmax, F - col)
        strips.append(Strip(w[f"gate.{e}"], col, m, g_ev, NONE, 0, w[f"gate.{e}.b"]))
        strips.append(Strip(w[f"up.{e}"], col, m, u_ev, at, col, w[f"up.{e}.b"]))
    linear_fm(L, c, strips, H, 0, n, {at: amap}, x=xe, x_ready=gather, swiglu=swiglu,
              name=f"{p}.gate_up")
    ye = low.b.tensor(f"{p}.y.c{c}", H, n, "fp32", "hbm")
    ymap = TileMap(H, n, L.mmax)
    strips = [Strip(w[f"down.{e}"], m0, min(L.mmax, H - m0), "copy32", ye, m0,
                    w[f"down.{e}.b"]) for m0 in range(0, H, L.mmax)]
    linear_fm(L, c, strips, F, 0, n, {ye: ymap}, x=at, x_ready=int(amap.prod.max()),
              name=f"{p}.down")
    ready = int(ymap.prod.max())
    last = ready
    for i, (n0, nw) in enumerate(chunks(n, L.nmax)):
        n0, nw = int(n0), int(nw)
        slot = i % 2            # restarts per expert: experts of equal counts repeat exactly
        gb, yt = bufs["gb"][slot], bufs["yt"][slot]
        gl = L.b.one(instr.DMA_COPY, instr.DMA, c, int(costs.dma_cycles(
            L.hw, nw * 4, L.active_cores)), [ready, bufs["gb_read"][slot]], lat=L.dma_lat,
            work=nw * 4, flags=instr.FLAG_BROADCAST, d=(gb, 0, L.pmax, 0, nw),
            a=(gl_t, 0, 1, offset + n0, nw))
        for f0, fr in chunks(H, L.pmax):
            f0, fr = int(f0), int(fr)
            ld = L.b.one(instr.DMA_COPY, instr.DMA, c, int(costs.dma_cycles(
                L.hw, fr * nw * 4, L.active_cores)), [ready, bufs["yt_read"][slot]],
                lat=L.dma_lat, work=fr * nw * 4, d=(yt, 0, fr, 0, nw), a=(ye, f0, fr, n0, nw))
            mul = L.vec(c, instr.VEC_TT, instr.A_MUL, nw, 2, deps=[ld, gl], d=(yt, 0, fr, 0, nw),
                        a=(yt, 0, fr, 0, nw), b=(gb, 0, fr, 0, nw))
            nbytes = fr * nw * L.partial_bytes
            last = L.b.one(instr.DMA_COPY, instr.DMA, c, int(costs.dma_cycles(
                L.hw, nbytes, L.active_cores)), [int(mul[0]), bufs["memset"]], lat=L.dma_lat,
                work=nbytes, flags=instr.FLAG_SCATTER, d=(part, f0, fr, 0, low.P),
                a=(yt, 0, fr, 0, nw), b=(toks_t, 0, 1, offset + n0, nw))
            bufs["yt_read"][slot] = last
            bufs["gb_read"][slot] = int(mul[0])
    return last


def _same_step(rec: np.ndarray, start: int, length: int) -> bool:
    """True when instance [start, start+length) relates to the one before it exactly as
    that one relates to its predecessor: same opcodes, queues and costs, dependencies inside
    each instance and into the instance before at the same relative slots, and the same
    absolute dependencies further back (`rec` holds [start - 2*length, start + length))."""
    a, b = rec[length:2 * length], rec[2 * length:]
    if not all(np.array_equal(a[f], b[f]) for f in
               ("op", "engine", "core", "cost", "lat", "flags", "func", "op_id")):
        return False

    def rel(part, own):
        dep = part["dep"].astype(np.int64)
        near = dep >= own - length            # inside itself or the instance before
        return np.where(near, dep - own, np.where(dep >= 0, dep + (1 << 40), -1))

    return np.array_equal(rel(a, start - length), rel(b, start))


def _expert_body(low, runs: list, n: int):
    """Timing-only memoisation of experts (docs/prefill.md, "Host speed"): after three
    consecutive experts of `n` tokens emitted back to back, the third is a repeatable body
    when it relates to the second exactly as the second to the first (`_same_step`) and
    holds no repeated body itself; returns [start, end, runs] or None."""
    if not low.L.memoise or len(runs) < 3:
        return None
    (s0, e0), (s1, e1), (s2, e2) = runs[-3:]
    length = e2 - s2
    if e1 - s1 != length or e0 - s0 != length or s1 != e0 or s2 != e1:
        return None
    if any(s0 <= seg < e2 for seg, _, _ in low.b.segments):
        return None
    return [s2, e2, 1] if _same_step(low.b.records(s0, e2), s2, length) else None


def moe_mlp(low, layer: int, w: dict, xn: int, norm_lasts: dict, delta: int) -> int:
    """The MoE MLP of a sparse layer (module docstring); returns the combine collective."""
    s, L, P = low.spec, low.L, low.P
    moe, H = s.moe, s.hidden_size
    E, k = moe.num_experts, moe.top_k
    op = low.b.begin_op("router", layer)
    ids_t = low.b.tensor(f"L{layer}.route.ids", P, k, "fp32", "hbm")
    gates_t = low.b.tensor(f"L{layer}.route.gates", P, k, "fp32", "hbm")
    logits_t = low.b.tensor(f"L{layer}.route.logits", E, P, "fp32", "hbm")
    low.t[f"L{layer}.route.ids"] = ids_t
    lasts = []
    for share in low.cores:
        t0, nt = share.tokens
        if nt:
            lasts.append(_router(low, layer, w, xn, share.core, t0, nt,
                                 norm_lasts[share.core], ids_t, gates_t, logits_t))
    op.flops = 2.0 * P * H * E
    op.hbm_bytes = L.stored_weight_bytes(H * E) + L.bpe * P * H + 8 * P * k
    dispatch = L.collective(instr.C_ALL_TO_ALL, P * k * H * L.bpe, low.chips, lasts)
    counts = low.expert_counts(layer, ids_t)
    op = low.b.begin_op("experts", layer)
    partial = {sh.core: low.b.tensor(f"L{layer}.moe.partial.c{sh.core}", H, P,
                                     L.partial_dtype, "hbm") for sh in low.cores}
    C = L.hw.cores_per_chip * low.chips
    ends = []
    for share in low.cores:
        c = share.core
        e0, ne = expert_range(E, C, c)
        if ne == 0:
            continue
        part = partial[c]
        total = int(counts[e0:e0 + ne].sum())
        memset = L.b.one(instr.DMA_COPY, instr.DMA, c, int(costs.dma_cycles(
            L.hw, H * P * L.partial_bytes, L.active_cores)), [], lat=L.dma_lat,
            work=H * P * L.partial_bytes, flags=instr.FLAG_ZERO, d=(part, 0, H, 0, P))
        ends.append(memset)
        if total == 0:
            continue
        toks_t = low.b.tensor(f"L{layer}.route.tokens.c{c}", 1, total, "fp32", "hbm")
        gl_t = low.b.tensor(f"L{layer}.route.gatelist.c{c}", 1, total, "fp32", "hbm")
        route = L.b.one(instr.DMA_ROUTE, instr.DMA, c, int(costs.dma_cycles(
            L.hw, 8 * (P * k + total), L.active_cores)), [dispatch], lat=L.dma_lat,
            work=8 * (P * k + total), imm0=float(e0), imm1=float(ne),
            d=(toks_t, 0, 1, 0, total), a=(ids_t, 0, P, 0, k), b=(gates_t, 0, P, 0, k),
            s=(gl_t, 0, 1, 0, total))
        bufs = {"memset": memset, "yt_read": [NONE, NONE], "gb_read": [NONE, NONE],
                "yt": [L.sbuf(f"L{layer}.moe.y{i}.c{c}", L.pmax, L.nmax, "fp32", c)
                       for i in range(2)],
                "gb": [L.sbuf(f"L{layer}.moe.g{i}.c{c}", L.pmax, L.nmax, "fp32", c)
                       for i in range(2)]}
        offset = 0
        body, runs, run_n = None, [], None   # timing-only: a repeated expert (runs > 1)
        for e in range(e0, e0 + ne):
            n = int(counts[e])
            if n and body is not None and run_n == n:
                body[2] += 1                 # an identical expert: one more run of the body
            elif n:
                if body is not None and body[2] > 1:
                    low.b.repeat_at(body[0], body[1] - body[0], body[2])
                body = None
                if n != run_n:
                    runs, run_n = [], n
                before = low.b.count
                ends.append(_expert(low, layer, w, c, e, n, offset, toks_t, gl_t, xn, route,
                                    part, bufs))
                runs.append((before, low.b.count))
                body = _expert_body(low, runs, n)
            offset += n
        if body is not None and body[2] > 1:
            low.b.repeat_at(body[0], body[1] - body[0], body[2])
    routed = int(counts.sum())
    F = moe.expert_size
    op.flops = 6.0 * H * F * routed
    active = int(np.count_nonzero(counts))
    op.hbm_bytes = (L.stored_weight_bytes(3 * H * F * active) + L.bpe * 2 * routed * (H + F)
                    + 4 * routed * H)
    first = partial[low.cores[0].core]
    return L.collective(instr.C_ALL_TO_ALL_SUM, P * k * H * L.partial_bytes, low.chips, ends,
                        d=(delta, 0, H, 0, P), a=(first, 0, H, 0, P), count=len(low.cores))
