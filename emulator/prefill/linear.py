"""Projections: weight strips streamed past an SBUF-resident activation block.

`linear_fm` (feature-major output, docs/prefill.md "Projections"):

    for each token block (<= psum_banks/2 tiles of 512 tokens, sized to fit SBUF):
        load X^T[k, n] tiles                      (interleaved with strip 0's weights)
        for each strip g of <= 128 output rows:
            load W^T[k, strip g+1] chunks        (prefetch one strip ahead, 2 buffers)
            for k: LoadStationary W^T[k, g]; for n: MultiplyMoving X^T[k, n] -> PSUM[g%2][n]
            evict PSUM (Scalar/Vector: copy, bias, RoPE, SiLU, gate product); store to HBM

`linear_tm` (token-major output, used for V): the activation tile X^T[k, 128 tokens] is the
stationary operand and the (resident) weight W^T[k, :] the moving one, so the output has
tokens on partitions, the layout the attention P @ V matmul needs.
"""

import numpy as np

from emulator.prefill import costs
from emulator.prefill import instructions as instr
from emulator.prefill.lowering import (
    Lowering,
    Replay,
    Strip,
    chunks,
    pe_stream,
    plan_token_block,
)

NONE = -1


def _war(history: dict, g: int, n: int) -> int:
    """Instruction that last read a buffer slot two strips ago (-1 if none)."""
    prev = history.get(g - 2)
    if prev is None or len(prev) == 0:
        return NONE
    return int(prev[n]) if n < len(prev) else int(prev.max())


class _Buffers:
    """SBUF/PSUM tensors of one projection operator on one core (double-buffered slots)."""

    def __init__(self, L: Lowering, core: int, K: int, block: int, name: str):
        def f(tag, rows, cols, dtype, space="sbuf"):
            return [L.sbuf(f"{name}.{tag}{i}", rows, cols, dtype, core, space) for i in range(2)]

        self.x = L.sbuf(f"{name}.x", K, block, L.act_dtype, core)
        self.w = f("w", K, L.mmax, L.act_dtype)
        self.wq = f("wq", K, L.mmax, "fp32")     # staging of packed weights (--weight-dtype)
        self.ps = f("psum", L.mmax, block, "fp32", "psum")
        self.bias = f("bias", L.mmax, 1, "fp32")
        self.y = f("y", L.mmax, block, L.act_dtype)
        self.yf = f("yf", L.mmax, block, "fp32")
        self.qf = f("qf", L.mmax, block, "fp32")
        self.sg = f("silu", L.mmax, block, "fp32")
        self.t1 = L.sbuf(f"{name}.t1", L.mmax, block, "fp32", core)
        self.t2 = L.sbuf(f"{name}.t2", L.mmax, block, "fp32", core)
        self.ub = L.sbuf(f"{name}.ub", L.mmax, block, "fp32", core)
        self.cos = L.sbuf(f"{name}.cos", L.mmax, block, "fp32", core)
        self.sin = L.sbuf(f"{name}.sin", L.mmax, block, "fp32", core)
        self.sq = L.sbuf(f"{name}.sq", L.mmax, block, "fp32", core)      # qk-norm
        self.rn = L.sbuf(f"{name}.rn", 1, block, "fp32", core)
        self.nw = f("nw", L.mmax, 1, "fp32")

    def token_major(self, L: Lowering, core: int, K: int, ncols: int, name: str) -> None:
        """Buffers of the token-major projection: resident weight, bias rows, PSUM, output."""
        self.tmw = L.sbuf(f"{name}.tmw", K, ncols, L.act_dtype, core)
        self.tmwq = L.sbuf(f"{name}.tmwq", K, ncols, "fp32", core)
        self.tmb = L.sbuf(f"{name}.tmb", L.pmax, ncols, L.act_dtype, core)
        self.tmps = [L.sbuf(f"{name}.tmps{i}", L.pmax, ncols, "fp32", core, "psum")
                     for i in range(2)]
        self.tmy = [L.sbuf(f"{name}.tmy{i}", L.pmax, ncols, L.act_dtype, core)
                    for i in range(2)]


def linear_fm(L: Lowering, core: int, strips: list[Strip], K: int, tok0: int, ntok: int,
              outs: dict, x: int = NONE, x_ready: int = NONE, x_sbuf=None, rope=None,
              tm=None, name: str = "linear", swiglu=None) -> int:
    """Emit a feature-major projection of tokens [tok0, tok0+ntok); returns the last index.

    X^T comes from HBM tensor `x` (loads wait for `x_ready`) or, when `x_sbuf` =
    (tensor, producer per k chunk) is given, is already resident in SBUF. `outs` maps output
    tensor ids to their TileMap; `rope` = (cos HBM tensor, sin HBM tensor, head_dim[, qk-norm
    eps]). `tm` =
    (W^T tensor, first column, columns, output [P, columns], bias rows or -1[, output row
    of token 0]) adds a token-major projection of the same activation block after the
    strips (`linear_tm`). `swiglu` = (alpha, limit) of the gpt-oss evictions `oss_gate`
    (g = min(psum + b, limit); g * sigmoid(alpha * g)) and `oss_up`
    ((clip(psum + b, -limit, limit) + 1) * that).
    """
    kch = chunks(K, L.kmax if x_sbuf is None else L.pmax)   # SBUF input: 128-row chunks
    evicts = {s.evict for s in strips}
    per_tok = 4 * 2 + (0 if x_sbuf is not None else len(kch) * L.bpe)
    per_tok += (5 * 4 if "rope" in evicts else 0) + (3 * 4 if "silu" in evicts else 0)
    per_tok += 5 * 4 if "oss_gate" in evicts else 0
    per_tok += 2 * 4 if any(s.norm >= 0 for s in strips) else 0
    fixed = 2 * len(kch) * L.mmax * L.bpe + 2 * 4
    packed = L.dequantises(strips[0].w)
    stage = -(-int(round(L.weight_format.bits_per_element)) // 8) if packed else 0
    fixed += 2 * len(kch) * L.mmax * stage            # staging of packed weight strips
    if tm is not None:
        fixed += (len(kch) * tm[2] + 3 * tm[2]) * L.bpe + 2 * tm[2] * 4
        fixed += len(kch) * tm[2] * stage
    block = plan_token_block(L, ntok, per_tok, fixed, f"{name} (K={K})")
    buf = _Buffers(L, core, K, block, f"{name}.c{core}")
    if tm is not None:
        buf.token_major(L, core, K, tm[2], f"{name}.c{core}")
    state = {"ls": {}, "psum": {}, "y": {}, "qf": {}, "sg_w": {}, "sg_r": {}, "x_read": NONE,
             "norm_eps": rope[3] if rope is not None and len(rope) > 3 else 0.0,
             "swiglu": swiglu}
    replay = Replay(L.b) if L.memoise and x_sbuf is None else None
    g_tpl = None
    for start in range(tok0, tok0 + ntok, block):
        width = min(block, tok0 + ntok - start)
        key = "block" if width == block else None
        if replay is not None:
            done = replay.replay(0, key)
            if done is not None:
                move, (snap, g_after) = done
                state = _moved_state(snap, move, state["g"] + g_after - g_tpl)
                for tmap in outs.values():
                    tmap.set(0, tmap.prod.shape[0] * tmap.row_tile, start, width,
                             L.b.count - 1)
                continue
        first = L.b.count
        g_before = state.get("g", 0)
        x_dep = _block(L, core, strips, kch, start, width, buf, state, outs, x, x_ready,
                       x_sbuf, rope)
        if tm is not None:
            linear_tm(L, core, tm, kch, start, width, buf, state, x_dep, outs)
        if replay is not None:
            old_template = replay.templates.get(key)
            replay.emitted(0, key, first, lambda s=state: (_copy_state(s), s["g"]))
            if key is not None and replay.templates.get(key) is not old_template:
                g_tpl = g_before
    return L.b.count - 1


def _copy_state(state: dict) -> dict:
    """A copy of the projection's carried indices (nested dicts keyed by strip number; only
    the last three strips are ever read again)."""
    out = {}
    g_now = state.get("g", 0)
    for key, val in state.items():
        if isinstance(val, dict):
            out[key] = {g: (np.array(v) if isinstance(v, np.ndarray) else v)
                        for g, v in val.items() if g >= g_now - 3}
        elif isinstance(val, list):
            out[key] = list(val)
        else:
            out[key] = np.array(val) if isinstance(val, np.ndarray) else val
    return out


def _moved_state(snap: dict, move, g_new: int) -> dict:
    """The carried indices after a replayed token block: the template's, moved to the
    copy, with strip numbers renumbered so the last strip is `g_new - 1`."""
    dg = g_new - snap["g"]

    def mv(v):
        if isinstance(v, tuple):
            return tuple(mv(x) for x in v)
        if isinstance(v, np.ndarray):
            return move(v)
        return int(move(v)) if isinstance(v, (int, np.integer)) and v >= 0 else v

    out = {}
    for key, val in snap.items():
        if key == "g":
            out[key] = g_new
        elif isinstance(val, dict):
            out[key] = {g + dg: mv(v) for g, v in val.items()}
        elif isinstance(val, list):
            out[key] = [mv(v) for v in val]
        else:
            out[key] = mv(val)
    return out


def linear_tm(L, core, tm, kch, start, width, buf, state, x_dep, outs):
    """Token-major projection of the resident block: out[t, :] = X^T[:, t].T @ W^T[:, cols].

    Per 128-token tile: LoadStationary X^T[k, tile] and MultiplyMoving the resident weight
    W^T[k, cols] (<= 512 columns per matmul), then evict (plus the bias rows) and store.
    """
    w, col0, ncols, out, bias = tm[:5]
    row_off = tm[5] if len(tm) > 5 else 0       # output row of token 0 (chunked prefill)
    kc = len(kch)
    if "tm_w" not in state:
        packed = L.dequantises(w)
        dst = (buf.tmwq if packed else buf.tmw, kch[:, 0], kch[:, 1], 0, ncols)
        state["tm_w"] = L.dma(core, L.weight_bytes(w, kch[:, 1] * ncols), d=dst,
                              a=(w, kch[:, 0], kch[:, 1], col0, ncols))
        if packed:
            state["tm_w"] = L.dequant(core, w, state["tm_w"], kch[:, 1], ncols, dst,
                                      (buf.tmw, kch[:, 0], kch[:, 1], 0, ncols))
        state["tm_b"] = NONE if bias < 0 else L.b.one(
            instr.DMA_COPY, instr.DMA, core, int(_dma_cost(L, L.pmax * ncols * L.bpe)), [],
            lat=L.dma_lat, work=L.pmax * ncols * L.bpe, d=(buf.tmb, 0, L.pmax, 0, ncols),
            a=(bias, 0, L.pmax, col0, ncols))
        last = [int(np.max(v)) for v in state["psum"].values()] or [NONE]
        state["tm_war"] = [max(last), max(last)]
    cch = chunks(ncols, L.nmax)
    per = len(cch)
    kk, cc = np.repeat(np.arange(kc), per), np.tile(np.arange(per), kc)
    for t0, rows in chunks(width, L.pmax):
        slot = (t0 // L.pmax) % 2
        n = t0 // L.nmax
        _, mm = pe_stream(
            L, core, kc, per, rows, [x_dep[:, n]], (buf.x, kch[:, 0], kch[:, 1], t0, rows),
            kch[kk, 1], cch[cc, 1], kk > 0,
            [state["tm_w"][kk], np.where(kk == 0, state["tm_war"][slot], NONE)],
            (buf.tmw, kch[kk, 0], kch[kk, 1], cch[cc, 0], cch[cc, 1]),
            (buf.tmps[slot], 0, rows, cch[cc, 0], cch[cc, 1]))
        state["x_read"] = int(mm[-1, -1])
        y = (buf.tmy[slot], 0, rows, 0, ncols)
        war = state.setdefault("tm_y", [NONE, NONE])[slot]
        psum = (buf.tmps[slot], 0, rows, 0, ncols)
        if bias >= 0:
            ev = L.vec(core, instr.VEC_TT, instr.A_ADD, ncols, 2, deps=[mm[-1], state["tm_b"], war],
                       d=y, a=psum, b=(buf.tmb, 0, rows, 0, ncols))
        else:
            ev = L.act(core, instr.F_IDENT, ncols, deps=[mm[-1], war], d=y, a=psum)
        state["tm_war"][slot] = int(ev[0])
        store = L.b.one(instr.DMA_COPY, instr.DMA, core, int(_dma_cost(L, rows * ncols * L.bpe)),
                        [int(ev[0])], lat=L.dma_lat, work=rows * ncols * L.bpe,
                        d=(out, row_off + start + t0, rows, 0, ncols), a=y)
        state["tm_y"][slot] = store
        outs[out].set(int(start + t0), int(rows), 0, ncols, store)


def _block(L, core, strips, kch, start, width, buf, state, outs, x, x_ready, x_sbuf, rope):
    """One token block: activation loads, then every strip."""
    nch = chunks(width, L.nmax)
    tables = _load_rope(L, core, buf, rope, start, width, state) if rope else None
    if x_sbuf is None:
        x_dep = _load_block(L, core, strips[0], kch, nch, start, buf, state, x, x_ready)
        x_tensor = buf.x
    else:
        x_tensor, x_dep = x_sbuf[0], np.repeat(np.asarray(x_sbuf[1])[:, None], len(nch), 1)
    base = state.get("g", 0)
    w_loads = {base: state.pop("w0")} if x_sbuf is None else {}
    for j, strip in enumerate(strips):
        g = base + j
        if g not in w_loads:
            w_loads[g] = _load_weights(L, core, strip, kch, buf, state, g)
        if j + 1 < len(strips):
            w_loads[g + 1] = _load_weights(L, core, strips[j + 1], kch, buf, state, g + 1)
        w_idx, bias_idx = w_loads.pop(g)
        mm_last = _strip_matmuls(L, core, strip, kch, nch, buf, state, g, w_idx, x_tensor,
                                 x_dep)
        _evict(L, core, strip, nch, start, buf, state, g, mm_last, bias_idx, outs, tables)
    state["g"] = base + len(strips)
    return x_dep


def _load_rope(L, core, buf, rope, start, width, state):
    """Load the cos / signed-sin tables [head_dim, width] of the block."""
    cos_t, sin_t, d = rope[:3]
    prev = state.get("rope_read", NONE)
    idx = L.dma(core, np.full(2, d * width * 4), deps=[prev],
                d=(np.array([buf.cos, buf.sin]), 0, d, 0, width),
                a=(np.array([cos_t, sin_t]), 0, d, start, width))
    return idx


def _load_block(L, core, strip0, kch, nch, start, buf, state, x, x_ready):
    """Interleaved loads: for each k chunk, W^T[k, strip 0] then X^T[k, every n tile]."""
    kc, nt = len(kch), len(nch)
    per = 1 + nt
    is_w = np.zeros((kc, per), bool)
    is_w[:, 0] = True
    k0 = np.repeat(kch[:, 0], per)
    kr = np.repeat(kch[:, 1], per)
    n0 = np.tile(np.concatenate([[0], nch[:, 0]]), kc)
    nw = np.tile(np.concatenate([[strip0.m], nch[:, 1]]), kc)
    w_flat = is_w.ravel()
    slot = state.get("g", 0) % 2
    packed = L.dequantises(strip0.w)
    nbytes = np.where(w_flat, L.weight_bytes(strip0.w, kr * nw), kr * nw * L.bpe)
    war_w = np.array([_war(state["ls"], state.get("g", 0), int(k)) for k in range(kc)])
    deps = [np.where(w_flat, np.repeat(war_w, per), x_ready),
            np.where(w_flat, NONE, state.get("x_read", NONE))]
    d = (np.where(w_flat, buf.wq[slot] if packed else buf.w[slot], buf.x), k0, kr, n0, nw)
    a = (np.where(w_flat, strip0.w, x), k0 + np.where(w_flat, strip0.row0, 0), kr,
         np.where(w_flat, strip0.col0, start + n0), nw)
    idx = L.dma(core, nbytes, deps=deps, d=d, a=a).reshape(kc, per)
    w_idx = idx[:, 0]
    if packed:
        w_idx = L.dequant(core, strip0.w, w_idx, kch[:, 1], strip0.m,
                          (buf.wq[slot], kch[:, 0], kch[:, 1], 0, strip0.m),
                          (buf.w[slot], kch[:, 0], kch[:, 1], 0, strip0.m))
    state["w0"] = (w_idx, _load_bias(L, core, strip0, buf, state, state.get("g", 0)))
    return idx[:, 1:]


def _load_weights(L, core, strip, kch, buf, state, g):
    """DMA the k chunks of one weight strip into buffer slot g % 2."""
    war = [_war(state["ls"], g, k) for k in range(len(kch))]
    packed = L.dequantises(strip.w)
    dst = (buf.w[g % 2], kch[:, 0], kch[:, 1], 0, strip.m)
    stage = (buf.wq[g % 2], kch[:, 0], kch[:, 1], 0, strip.m)
    idx = L.dma(core, L.weight_bytes(strip.w, kch[:, 1] * strip.m), deps=[np.array(war)],
                d=stage if packed else dst,
                a=(strip.w, strip.row0 + kch[:, 0], kch[:, 1], strip.col0, strip.m))
    if packed:
        idx = L.dequant(core, strip.w, idx, kch[:, 1], strip.m, stage, dst)
    return idx, _load_bias(L, core, strip, buf, state, g)


def _load_bias(L, core, strip, buf, state, g):
    """DMA the bias column of a strip (if any); returns its index or -1."""
    if strip.bias < 0:
        return NONE
    war = state["psum"].get(g - 2)
    dep = int(war.max()) if war is not None and len(war) else NONE
    return L.b.one(instr.DMA_COPY, instr.DMA, core, int(_dma_cost(L, strip.m * 4)), [dep],
                   lat=L.dma_lat, work=strip.m * 4, d=(buf.bias[g % 2], 0, strip.m, 0, 1),
                   a=(strip.bias, strip.col0, strip.m, 0, 1))


def _dma_cost(L, nbytes):
    """DMA queue cycles of `nbytes`."""
    return costs.dma_cycles(L.hw, nbytes, L.active_cores)


def _strip_matmuls(L, core, strip, kch, nch, buf, state, g, w_idx, x_tensor, x_dep):
    """LoadStationary per k chunk, MultiplyMoving per (k, n); returns last MM per n."""
    kc, nt = len(kch), len(nch)
    psum_war = np.array([_war(state["psum"], g, n) for n in range(nt)])
    first = np.zeros((kc, nt), bool)
    first[0] = True
    mm_deps = [x_dep.ravel(), np.where(first, psum_war[None, :], NONE).ravel()]
    kk = np.repeat(np.arange(kc), nt)
    nn = np.tile(np.arange(nt), kc)
    ls, mm = pe_stream(
        L, core, kc, nt, strip.m, [w_idx], (buf.w[g % 2], kch[:, 0], kch[:, 1], 0, strip.m),
        kch[kk, 1], nch[nn, 1], kk > 0, mm_deps,
        (x_tensor, kch[kk, 0], kch[kk, 1], nch[nn, 0], nch[nn, 1]),
        (buf.ps[g % 2], 0, strip.m, nch[nn, 0], nch[nn, 1]))
    state["ls"][g] = ls
    state["x_read"] = int(mm[-1, -1])
    return mm[-1]


def _evict(L, core, strip, nch, start, buf, state, g, mm_last, bias_dep, outs, tables):
    """Drain PSUM of one strip through its eviction recipe and store the result."""
    nt, m, s = len(nch), strip.m, g % 2
    c0, w = nch[:, 0], nch[:, 1]
    y_war = np.array([_war(state["y"], g, n) for n in range(nt)])
    bias = (buf.bias[s], 0, m, 0, 1) if strip.bias >= 0 else None
    psum = (buf.ps[s], 0, m, c0, w)
    if strip.evict in ("copy", "copy32", "partial"):
        tgt = buf.y[s] if strip.evict == "copy" else buf.yf[s]
        first = L.act(core, instr.F_IDENT, w, deps=[mm_last, y_war, bias_dep],
                      d=(tgt, 0, m, c0, w), a=psum, b=bias)
        result, last = (tgt, 0, m, c0, w), first
    elif strip.evict == "rope":
        first, result, last = _rope(L, core, strip, buf, s, c0, w, mm_last, y_war, bias,
                                    bias_dep, tables, state, g)
    elif strip.evict == "silu":
        war = np.array([_war(state["sg_r"], g, n) for n in range(nt)])
        first = L.act(core, instr.F_SILU, w, deps=[mm_last, war, bias_dep],
                      d=(buf.sg[(g // 2) % 2], 0, m, c0, w), a=psum, b=bias)
        state["sg_w"][g] = first
        state["psum"][g] = first
        return
    elif strip.evict == "oss_gate":       # glu = g * sigmoid(alpha g), g = min(psum + b, lim)
        alpha, limit = state["swiglu"]
        war = np.array([_war(state["sg_r"], g, n) for n in range(nt)])
        sgv = (buf.sg[(g // 2) % 2], 0, m, c0, w)
        first = L.act(core, instr.F_IDENT, w, deps=[mm_last, war, bias_dep], d=sgv, a=psum,
                      b=bias)
        clamp = L.vec(core, instr.VEC_TS, instr.A_MIN, w, 1, deps=[first], d=sgv, a=sgv,
                      imm0=limit)
        sig = L.act(core, instr.F_SIGMOID, w, deps=[clamp, state.get("t1_read", NONE)],
                    d=(buf.t1, 0, m, c0, w), a=sgv, scale=alpha)
        glu = L.vec(core, instr.VEC_TT, instr.A_MUL, w, 2, deps=[sig], d=sgv, a=sgv,
                    b=(buf.t1, 0, m, c0, w))
        state["t1_read"] = int(np.max(glu))
        state["sg_w"][g] = glu
        state["psum"][g] = first
        return
    elif strip.evict == "oss_up":         # y = (clip(psum + b, -lim, lim) + 1) * glu
        alpha, limit = state["swiglu"]
        sg = (buf.sg[((g - 1) // 2) % 2], 0, m, c0, w)
        ub = (buf.ub, 0, m, c0, w)
        first = L.act(core, instr.F_IDENT, w, deps=[mm_last, bias_dep,
                                                    state.get("ub_read", NONE)],
                      d=ub, a=psum, b=bias)
        lo = L.vec(core, instr.VEC_TS, instr.A_MIN, w, 1, deps=[first], d=ub, a=ub,
                   imm0=limit)
        hi = L.vec(core, instr.VEC_TS, instr.A_MAX, w, 1, deps=[lo], d=ub, a=ub, imm0=-limit)
        last = L.vec(core, instr.VEC_STT, instr.A_ADD, w, 2,
                     deps=[hi, state["sg_w"][g - 1], y_war], func2=instr.A_MUL,
                     d=(buf.y[s], 0, m, c0, w), a=ub, imm0=1.0, b=sg)
        state["ub_read"] = int(np.max(last))
        state["sg_r"][g - 1] = last
        result = (buf.y[s], 0, m, c0, w)
    else:  # mul_gate: y = silu(gate) * (up + bias)
        sg = (buf.sg[((g - 1) // 2) % 2], 0, m, c0, w)
        up, up_dep = psum, mm_last
        if bias is not None:
            up_dep = L.act(core, instr.F_IDENT, w, deps=[mm_last, bias_dep],
                           d=(buf.ub, 0, m, c0, w), a=psum, b=bias)
            up = (buf.ub, 0, m, c0, w)
        last = L.vec(core, instr.VEC_TT, instr.A_MUL, w, 2, deps=[up_dep, state["sg_w"][g - 1],
                                                              y_war],
                     d=(buf.y[s], 0, m, c0, w), a=sg, b=up)
        first = up_dep if bias is not None else last
        state["sg_r"][g - 1] = last
        result = (buf.y[s], 0, m, c0, w)
    state["psum"][g] = first
    out_dtype_bytes = {"partial": L.partial_bytes, "copy32": 4}.get(strip.evict, L.bpe)
    stores = L.dma(core, m * w * out_dtype_bytes, deps=[last],
                   d=(strip.out, strip.out_row0, m, strip.out_col0 + start + c0, w),
                   a=result)
    state["y"][g] = stores
    tmap = outs[strip.out]
    for n in range(nt):
        tmap.set(strip.out_row0, m, start + int(c0[n]), int(w[n]), int(stores[n]))


def _rope(L, core, strip, buf, s, c0, w, mm_last, y_war, bias, bias_dep, tables, state, g):
    """q = psum (+bias); with qk-norm q = RMSNorm(q) over the head's rows (`_qk_norm`);
    out = q * cos + swap_halves(q) * signed_sin (rotate_half RoPE). Returns (the last
    reader of the strip's PSUM, the result view, the last instruction)."""
    m, half = strip.m, strip.m // 2
    qf_war = np.array([_war(state["qf"], g, n) for n in range(len(c0))])
    act = L.act(core, instr.F_IDENT, w, deps=[mm_last, qf_war, bias_dep],
                d=(buf.qf[s], 0, m, c0, w), a=(buf.ps[s], 0, m, c0, w), b=bias)
    qf = buf.qf[s]
    if strip.norm >= 0:
        act = _qk_norm(L, core, strip, buf, s, c0, w, act, state, tables, g)
    v1 = L.vec(core, instr.VEC_TT, instr.A_MUL, w, 2, deps=[act, tables[0]],
               d=(buf.t1, 0, m, c0, w), a=(qf, 0, m, c0, w), b=(buf.cos, 0, m, c0, w))
    L.vec(core, instr.VEC_TT, instr.A_MUL, w, 2, deps=[act, tables[1]],
               d=(buf.t2, 0, half, c0, w), a=(qf, half, half, c0, w),
               b=(buf.sin, 0, half, c0, w))
    v3 = L.vec(core, instr.VEC_TT, instr.A_MUL, w, 2, deps=[act, tables[1]],
               d=(buf.t2, half, half, c0, w), a=(qf, 0, half, c0, w),
               b=(buf.sin, half, half, c0, w))
    v4 = L.vec(core, instr.VEC_TT, instr.A_ADD, w, 2, deps=[v1, v3, y_war],
               d=(buf.y[s], 0, m, c0, w), a=(buf.t1, 0, m, c0, w), b=(buf.t2, 0, m, c0, w))
    state["qf"][g] = v3
    state["rope_read"] = int(v3.max())
    return act, (buf.y[s], 0, m, c0, w), v4


def _qk_norm(L, core, strip, buf, s, c0, w, act, state, tables, g):
    """RMSNorm of each token's head (the strip's m rows, on partitions) in place in qf:
    squares (Scalar), their sum over the partitions as a ones-column matmul into the
    strip's (already evicted) PSUM, rsqrt(sum / m + eps) (Scalar), a ones-row matmul
    broadcasting it to m partitions, then qf = (qf * weight) * r (Vector), as add_norm
    does for the hidden state. Returns the last instruction (it also last reads PSUM)."""
    m, nt, qf, ps = strip.m, len(c0), buf.qf[s], buf.ps[s]
    eps = state["norm_eps"]
    war = state["psum"].get(g - 2)
    w_load = L.b.one(instr.DMA_COPY, instr.DMA, core, int(_dma_cost(L, m * 4)),
                     [int(war.max()) if war is not None and np.size(war) else NONE],
                     lat=L.dma_lat, work=m * 4, d=(buf.nw[s], 0, m, 0, 1),
                     a=(strip.norm, 0, m, 0, 1))
    sq = L.act(core, instr.F_SQUARE, w, deps=[act, state.get("sq_read", NONE)],
               d=(buf.sq, 0, m, c0, w), a=(qf, 0, m, c0, w), n=nt)
    ones_col, ones_row = L.const(core, "ones_col"), L.const(core, "ones_row")
    _, ss = pe_stream(L, core, 1, nt, 1, [], (ones_col, 0, m, 0, 1), m, w, False, [sq],
                      (buf.sq, 0, m, c0, w), (ps, 0, 1, c0, w), model_flops=False)
    state["sq_read"] = int(ss[0, -1])
    r = L.act(core, instr.F_RSQRT, w, deps=[ss[0], state.get("rn_read", NONE)],
              d=(buf.rn, 0, 1, c0, w), a=(ps, 0, 1, c0, w), scale=1.0 / m, bias=eps, n=nt)
    _, bc = pe_stream(L, core, 1, nt, m, [], (ones_row, 0, 1, 0, m), 1, w, False, [r],
                      (buf.rn, 0, 1, c0, w), (ps, 0, m, c0, w), model_flops=False)
    state["rn_read"] = int(bc[0, -1])
    return L.vec(core, instr.VEC_STT, instr.A_MUL, w, 2, deps=[bc[0], w_load, act],
                 func2=instr.A_MUL, d=(qf, 0, m, c0, w), a=(qf, 0, m, c0, w),
                 b=(ps, 0, m, c0, w), s=(buf.nw[s], 0, m, 0, 1), n=nt)
