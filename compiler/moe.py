"""Mixture-of-experts MLP on the mesh: tiles, SRAM entries, code and weight image of a
sparse layer (docs/mapping.md, "Mixture of experts").

Placement: **experts spread across the wafer**. Every PE holds a tile of every expert's
gate/up and down matrices, exactly as a dense MLP of `expert_size` (GEMV-A over the whole
mesh for gate/up, GEMV-B for down), so the E experts of a layer form E blocks of equal
size at the same addresses on every PE: expert e's block starts at `e * B` past the
layer's expert base (`B` = `expert_block`). A token's k experts then run over all PEs,
each at the full mesh's bandwidth, and the cycles do not depend on which experts are
chosen (every block has the same shape on every PE).

Data-dependent routing with static per-PE programs: the router GEMV-A leaves each row's
chunk of the logits at its offset in `LG` on the left column; a column tree sums the
zero-padded vectors into (0, 0), which selects the top k with `rargmax` (index of the
maximum) and `ldr` (that index into a register, to address the logit and mask it), computes
the routing weights and the block offsets `id * B`, and multicasts `SEL = [offsets |
weights]` along the top row and down every column. The k experts are joined into k
slots: every PE runs `ldr r4, [SEL + t]` and expert t's gate/up GEMV (tile addressed
`r4 + base`) into slot t of ACC, for t < k; one row tree sums the k slots; the left
column applies the activation to each slot and scales it by its routing weight (the
weighted combine, moved before down, which is linear); one row multicast carries the k
slots; the k down GEMVs accumulate into one ACC; one column tree sums it and the top row
adds it to the residual stream. Biases (gpt-oss) ride in the GEMVs as one more
input element equal to 1 (appended to the last column's hidden chunk and to the last row's
expert-ffn chunk, the smallest chunks, so the tiles rarely grow), so they need no SRAM
outside the tiles.

Units: sizes are elements; offsets are element addresses.
"""

import numpy as np

from compiler.tile import Chunking, MatrixTile, chunk_bounds, masked_bounds, scaled
from emulator.hw.errors import ConfigError

SEL_REG = 4          # register holding the current expert's block offset
MAX_EXACT_OFFSET = 1 << 24   # offsets travel as fp32: exact below 2^24


def has_moe(spec) -> bool:
    """The model has sparse (mixture-of-experts) layers."""
    return spec.moe is not None and len(spec.moe.sparse_layers) > 0


def logit_tree(plan, j: int) -> tuple:
    """Row j's steps in the column tree that gathers the router logits to (0, 0): the tree
    over rows 0 .. R-1 only, R = 1 + the last row holding logits (rows below add zeros).
    Its messages are a subset of the full column tree's, on the same colors."""
    from compiler.route import tree_actions
    rows = np.flatnonzero(plan.vec("router").sizes())
    tree_rows = int(rows[-1]) + 1 if len(rows) else 1
    return tree_actions(j, tree_rows) if j < tree_rows else ()


def has_bias(spec) -> bool:
    """Router or expert biases (gpt-oss): the GEMVs take one more input element, 1."""
    return spec.moe.router_bias or spec.moe.expert_bias


# --------------------------------------------------------------------------- tile hook


def extend_tiles(spec, ph: int, vectors: dict, matrices: dict, wrows: np.ndarray) -> None:
    """Add the MoE vectors and matrices to a tile plan under construction (no-op for dense
    models): `router` (C, E logits), `eff` (C, an expert's ffn), `egu` (C, its gate/up
    rows: per row j gate_j then up_j), `hidden1` / `eff1` (the hidden / ffn inputs with
    the bias element after chunk 0), matrices `router` and `egu` (GEMV-A) and `edown`
    (GEMV-B)."""
    if not has_moe(spec):
        return
    moe, extra = spec.moe, int(has_bias(spec))
    even = not wrows.all()
    router = masked_bounds(moe.num_experts, wrows) if even else chunk_bounds(moe.num_experts, ph)
    eff = masked_bounds(moe.expert_size, wrows) if even else chunk_bounds(moe.expert_size, ph)
    hidden = vectors["hidden"].bounds
    vectors["router"] = Chunking("C", router)
    vectors["eff"] = Chunking("C", eff)
    vectors["egu"] = Chunking("C", scaled(eff, 2))
    vectors["hidden1"] = Chunking("R", (*hidden[:-1], hidden[-1] + extra))
    vectors["eff1"] = Chunking("C", (*eff[:-1], eff[-1] + extra))
    matrices["router"] = MatrixTile("A", "router", "hidden1")
    matrices["egu"] = MatrixTile("A", "egu", "hidden1")
    matrices["edown"] = MatrixTile("B", "hidden", "eff1")


def expert_sizes(plan) -> tuple[int, int]:
    """(words of one expert's gate/up tile, of its down tile) on every PE."""
    return (plan.kmax("egu") * plan.mpad("egu"), plan.kmax("edown") * plan.mpad("edown"))


def expert_block(plan) -> int:
    """B: elements of one expert's tiles on a PE (the stride between experts)."""
    return sum(expert_sizes(plan))


# --------------------------------------------------------------------------- place hooks


def layer_weight_entries(plan, layer: int) -> list[tuple[str, int, str]]:
    """Weight buffers of sparse layer `layer`: the router tile and the E expert blocks."""
    moe, block = plan.spec.moe, expert_block(plan)
    if moe.num_experts * block >= MAX_EXACT_OFFSET:
        raise ConfigError(f"{moe.num_experts} experts of {block} elements per PE: expert "
                          f"offsets would exceed 2^24 elements (not exact in fp32)")
    return [(f"L{layer}.router", plan.kmax("router") * plan.mpad("router"), "weight"),
            (f"L{layer}.experts", moe.num_experts * block, "weight")]


def common_entries(plan) -> list[tuple[str, int, str]]:
    """Every PE: LG (the zero-padded router logits, summed up the left column) and SEL
    (the chosen experts' block offsets, then their weights)."""
    if not has_moe(plan.spec):
        return []
    moe = plan.spec.moe
    return [("LG", moe.num_experts, "scratch"), ("SEL", 2 * moe.top_k, "scratch")]


def hub_entries(plan) -> list[tuple[str, int, str]]:
    """PE (0, 0): top-k work buffers LW (logits being masked), ID (chosen expert ids),
    TV (their logits) and, for softmax-then-top-k routing, PR (probabilities)."""
    if not has_moe(plan.spec):
        return []
    moe = plan.spec.moe
    out = [("LW", moe.num_experts, "scratch"), ("ID", moe.top_k, "scratch"),
           ("TV", moe.top_k, "scratch")]
    if moe.routing != "topk_softmax":
        out.append(("PR", moe.num_experts, "scratch"))
    return out


def left_entries(plan) -> list[tuple[str, int, str]]:
    """Left column: XT (clamped-SwiGLU temporaries) and CL (the constant -limit)."""
    if not has_moe(plan.spec) or plan.spec.moe.activation != "clamped_swiglu":
        return []
    return [("XT", 2 * plan.vec("eff").max_size, "scratch"), ("CL", 1, "scratch")]


def scratch_sizes(plan) -> dict:
    """Minimum sizes of the shared scratch buffers the MoE code uses: XN holds the hidden
    chunk plus the bias element, XB the k experts' ffn chunks plus it (k slots), ACC the
    k experts' gate/up rows (k slots)."""
    if not has_moe(plan.spec):
        return {}
    k = plan.spec.moe.top_k
    return {"XN": plan.vec("hidden1").max_size, "XB": k * plan.vec("eff1").max_size,
            "ACC": k * plan.mpad("egu"), "TMP": plan.vec("eff").max_size}


def static_params(plan, lg_addr: int | None) -> dict:
    """Per-PE parameters: `m_router`, `m_egu` (rows of the router / gate-up output on the
    row), `moe.lg` (LG + the row's first logit: where the router GEMV accumulates)."""
    if not has_moe(plan.spec):
        return {}
    router = plan.vec("router")
    return {"m_router": router.sizes()[:, None], "m_egu": plan.vec("egu").sizes()[:, None],
            "moe.lg": (lg_addr + np.asarray(router.bounds[:-1], np.int64))[:, None]}


PARAM_DOC = {
    "m_router": "rows of the router GEMV-A output (expert logits) on this row",
    "m_egu": "rows of an expert's gate/up GEMV-A output on this row",
    "moe.lg": "address in LG of this row's first expert logit",
}


# --------------------------------------------------------------------------- weight formats


def dequant_ops(placement, mesh) -> int:
    """Vector passes per element that dequantise an MLP / expert tile before each use:
    the preset's `dequant_ops_<format>` for fp8 and MXFP4 tiles, 0 when the tiles are
    stored in a format the PE computes in (or without a mesh)."""
    fmt = placement.weight_dtype
    if mesh is None or fmt not in ("fp8", "mxfp4"):
        return 0
    return getattr(mesh, f"dequant_ops_{fmt}")


def dequantise(b, ctx, tile, words: int) -> None:
    """Cost of widening a stored tile (`words` elements at `tile`, an address or a
    register operand) to the compute format: `dequant_ops` in-place `vscale ..., 1.0`
    passes (exact on the values, which the host already rounded to the format) of
    o + ceil(words / w) cycles, issued as one `vscale [tile:0], [tile:0], ops * words, 1.0`
    (stride 0: it rewrites the tile's first element with itself, so values are unchanged,
    and costs o + ceil(ops * words / w), one issue overhead less per extra pass)."""
    from compiler.emit import Desc
    from isa.opcodes import Op
    if ctx.dequant_ops and words:
        b.vec(Op.VSCALE, Desc(tile, 0), Desc(tile, 0), n=ctx.dequant_ops * words, imm=1.0)


# --------------------------------------------------------------------------- code


def moe_block(b, ctx, role, layer: int) -> None:
    """One sparse MLP: router GEMV-A into LG, gather to (0, 0), top-k and weights there,
    SEL multicast to every PE, then the k chosen experts joined: k gate/up GEMVs into
    the slots ACC_t and one row tree of all k slots, the activation of each slot into
    XB_t on the left column scaled by its routing weight, one row multicast of the k
    slots, k down GEMVs accumulating into ACC, one column tree and `H += ACC` on the top
    row. The normalised input is in XN on the top row (column 0 also holds the bias
    element)."""
    from compiler.emit import Param, col_multicast, gemv_columns, row_multicast, tree_sum
    from isa.opcodes import Op

    plan, spec, fab, a = ctx.plan, ctx.plan.spec, ctx.fab, ctx.addr
    moe, bias = spec.moe, has_bias(spec)
    E, k = moe.num_experts, moe.top_k
    k_in = role.k_hidden + int(bias and role.last_col)
    lg, sel, xn = a("LG"), a("SEL"), a("XN")
    p = f"L{layer}."
    b.mark(p + "mlp_up")
    b.note("layer {layer}: router GEMV-A into LG, x multicast once for all experts", "gate_up")
    if role.top and role.last_col and bias:
        b.vec(Op.VSET, xn + role.k_hidden, n=1, imm=1.0)
    col_multicast(b, fab, role.top, xn, k_in)
    if role.left:
        b.vec(Op.VSET, lg, n=E, imm=0.0)
    gemv_columns(b, ctx.waddr(p + "router"), plan.mpad("router"), xn, Param("moe.lg"),
                 Param("m_router"), k_in)
    tree_sum(b, role.row_tree, fab.row, Param("moe.lg"), Param("m_router"))
    if role.left:
        tree_sum(b, role.lg_tree, fab.col, lg, E)
    if role.left and role.top:
        select_experts(b, ctx)
    if role.top:
        row_multicast(b, fab, role.left, sel, 2 * k)
    col_multicast(b, fab, role.top, sel, 2 * k)
    experts_gate_up(b, ctx, role, layer, k_in)
    if role.left:
        experts_activation(b, ctx, role)
    b.mark(p + "mlp_down")
    experts_down(b, ctx, role, layer)


def slot_sizes(role, bias: bool) -> tuple[int, int]:
    """(m, f_in) on the role's row: an expert's gate/up outputs (`m_egu` = 2 * its ffn
    chunk) = the stride of the ACC slots, and its down inputs (the ffn chunk plus the
    bias element on the last row) = the stride of the XB slots."""
    return 2 * role.k_exp, role.k_exp + int(bias and role.last_row)


def experts_gate_up(b, ctx, role, layer: int, k_in: int) -> None:
    """Every PE: for each slot t, `ldr r4, [SEL + t]` and expert t's gate/up GEMV into
    ACC_t = ACC + t * m; then one row tree of the k slots (k * m elements) to the left
    column."""
    from compiler.emit import Param, Reg, tree_sum
    plan, fab, a = ctx.plan, ctx.fab, ctx.addr
    k, sel, xn, acc = plan.spec.moe.top_k, a("SEL"), a("XN"), a("ACC")
    m = slot_sizes(role, has_bias(plan.spec))[0]
    w = Reg(SEL_REG, ctx.waddr(f"L{layer}.experts"))
    for t in range(k):
        b.note(f"layer {{layer}}: expert slot {t}: gate/up GEMV-A at the chosen block "
               f"into ACC slot {t}", "gate_up")
        load_register(b, sel + t)
        dequantise(b, ctx, w, k_in * plan.mpad("egu"))
        _gemv_reg(b, w, plan.mpad("egu"), xn, acc + t * m, Param("m_egu"), k_in)
    b.note("layer {layer}: one row tree of the k experts' gate/up slots", "gate_up")
    tree_sum(b, role.row_tree, fab.row, acc, k * m)


def experts_activation(b, ctx, role) -> None:
    """Left column: for each slot t, XB_t = w_t * [act(ACC_t); 1 (bias element, last row)]
    with w_t = SEL[k + t] (down is linear: down_t(w_t y_t) = w_t down_t(y_t))."""
    from compiler.emit import Desc
    from isa.opcodes import Op
    a, bias, k = ctx.addr, has_bias(ctx.plan.spec), ctx.plan.spec.moe.top_k
    sel, acc, xb = a("SEL"), a("ACC"), a("XB")
    m, f_in = slot_sizes(role, bias)
    f = role.k_exp
    for t in range(k):
        activation(b, ctx, role, acc + t * m, xb + t * f_in)
        if f_in > f:
            b.vec(Op.VSET, xb + t * f_in + f, n=1, imm=1.0)
        b.vec(Op.VMUL, xb + t * f_in, xb + t * f_in, Desc(sel + k + t, 0), f_in)


def experts_down(b, ctx, role, layer: int) -> None:
    """Every PE: one row multicast of the k scaled slots XB_t (k * f_in elements); expert
    t's down GEMV-B of XB_t accumulating into ACC (t = 0 clears it); one column tree of
    ACC; the top row adds it to the residual stream."""
    from compiler.emit import Param, Reg, row_multicast, tree_sum
    from isa.opcodes import Op
    plan, fab, a = ctx.plan, ctx.fab, ctx.addr
    k, sel, acc, xb = plan.spec.moe.top_k, a("SEL"), a("ACC"), a("XB")
    f_in = slot_sizes(role, has_bias(plan.spec))[1]
    w = Reg(SEL_REG, ctx.waddr(f"L{layer}.experts") + expert_sizes(plan)[0])
    mpad = plan.mpad("edown")
    b.note("layer {layer}: one row multicast of the k experts' weighted activations", "down")
    row_multicast(b, fab, role.left, xb, k * f_in)
    for t in range(k):
        b.note(f"layer {{layer}}: expert slot {t}: down GEMV-B accumulating into ACC", "down")
        load_register(b, sel + t)
        dequantise(b, ctx, w, f_in * mpad)
        if t == 0:
            _gemv_reg(b, w, mpad, xb, acc, Param("m_hidden"), f_in)
        else:
            _gemv_acc(b, w, mpad, xb + t * f_in, acc, Param("m_hidden"), f_in)
    b.note("layer {layer}: one column tree of the experts' sum, H += ACC", "down")
    tree_sum(b, role.col_tree, fab.col, acc, Param("m_hidden"))
    if role.top:
        b.vec(Op.VADD, a("H"), a("H"), acc, role.k_hidden)


def load_register(b, addr: int) -> None:
    """`ldr r4, [addr]` (SEL_REG = the fp32 value at addr, truncated)."""
    from isa.opcodes import SLOT_DST, SLOT_SRC0, SLOT_SRC0_STRIDE, Op
    b.emit(Op.LDR, {SLOT_DST: SEL_REG, SLOT_SRC0: addr, SLOT_SRC0_STRIDE: 1})


def _gemv_reg(b, w, mpad: int, x: int, acc: int, m, k: int) -> None:
    """`gemv_columns` with a register-relative matrix address `w` (emit.Reg)."""
    from compiler.emit import Desc, Reg
    from isa.opcodes import Op
    if k == 0:
        b.vec(Op.VSET, acc, n=m, imm=0.0)
        return
    b.vec(Op.VMUL, acc, w, Desc(x, 0), m)
    _gemv_acc(b, Reg(w.index, w.offset + mpad), mpad, x + 1, acc, m, k - 1)


def _gemv_acc(b, w, mpad: int, x: int, acc: int, m, k: int) -> None:
    """acc[0:m] += sum over columns c < k of W[:, c] * x[c] (one `vgemv`, none if k = 0;
    W column-major at the register-relative `w`, stride mpad)."""
    from isa.opcodes import (
        SLOT_COLOR,
        SLOT_DST,
        SLOT_DST_STRIDE,
        SLOT_N,
        SLOT_SRC0,
        SLOT_SRC0_STRIDE,
        SLOT_SRC1,
        SLOT_SRC1_STRIDE,
        Op,
    )
    if k > 0:
        b.emit(Op.VGEMV, {SLOT_DST: acc, SLOT_DST_STRIDE: 1, SLOT_SRC0: w,
                          SLOT_SRC0_STRIDE: mpad, SLOT_SRC1: x, SLOT_SRC1_STRIDE: 1,
                          SLOT_N: m, SLOT_COLOR: k})


def select_experts(b, ctx) -> None:
    """(0, 0): LG holds every expert's logit. Top k by repeated `rargmax` (ties: lower id,
    as the reference's stable sort), masking each pick with -inf through `ldr`; weights
    `softmax(top logits)` (topk_softmax) or the picks' softmax probabilities, renormalised
    when `norm_topk_prob`; SEL = [id * B | weights]."""
    from compiler.emit import Desc, Reg
    from isa.opcodes import Op

    spec, a = ctx.plan.spec, ctx.addr
    moe = spec.moe
    E, k = moe.num_experts, moe.top_k
    lg, lw, pr, ids, tv, sel = a("LG"), a("LW"), a("PR"), a("ID"), a("TV"), a("SEL")
    w, ss = sel + k, a("SS")
    b.note("top-k experts at (0, 0)", "gate_up")
    b.vec(Op.VMOV, lw, lg, n=E)
    for t in range(k):
        b.reduce(Op.RARGMAX, ids + t, lw, n=E)
        load_register(b, ids + t)
        b.vec(Op.VMOV, tv + t, Reg(SEL_REG, lg), n=1)
        b.vec(Op.VSET, Reg(SEL_REG, lw), n=1, imm=-np.inf)
    if moe.routing == "topk_softmax":
        _softmax(b, w, tv, k, ss)
    else:
        _softmax(b, pr, lg, E, ss)
        for t in range(k):
            load_register(b, ids + t)
            b.vec(Op.VMOV, w + t, Reg(SEL_REG, pr), n=1)
        if moe.norm_topk_prob:
            b.reduce(Op.RSUM, ss, w, n=k)
            b.vec(Op.VRECIP, ss, ss, n=1)
            b.vec(Op.VMUL, w, w, Desc(ss, 0), k)
    b.vec(Op.VSCALE, sel, ids, n=k, imm=float(expert_block(ctx.plan)))


def _softmax(b, dst: int, src: int, n: int, ss: int) -> None:
    """dst[0:n] = softmax(src[0:n]): max-subtracted exp over the sum (ss: one scratch)."""
    from compiler.emit import Desc
    from isa.opcodes import Op
    b.reduce(Op.RMAX, ss, src, n=n)
    b.vec(Op.VSUB, dst, src, Desc(ss, 0), n)
    b.vec(Op.VEXP, dst, dst, n=n)
    b.reduce(Op.RSUM, ss, dst, n=n)
    b.vec(Op.VRECIP, ss, ss, n=1)
    b.vec(Op.VMUL, dst, dst, Desc(ss, 0), n)


def activation(b, ctx, role, acc: int, xb: int) -> None:
    """(0, j): xb[0:f] = act(acc) with acc = [gate_j; up_j]: SiLU(gate) * up, or gpt-oss's
    clamped SwiGLU (gate = min(gate, L), up = clip(up, -L, L),
    XB = (up + 1) * gate * sigmoid(alpha * gate); min(g, L) computed as -max(-g, -L))."""
    from compiler.emit import Desc
    from isa.opcodes import Op

    a, f, moe = ctx.addr, role.k_exp, ctx.plan.spec.moe
    b.note("expert activation", "swiglu")
    if moe.activation == "silu":
        tmp = a("TMP")
        b.vec(Op.VSIGMOID, tmp, acc, n=f)
        b.vec(Op.VMUL, tmp, tmp, acc, f)
        b.vec(Op.VMUL, xb, tmp, acc + f, f)
        return
    xt, cl = a("XT"), a("CL")
    g, s = xt, xt + f
    limit, alpha = float(moe.swiglu_limit), float(moe.swiglu_alpha)
    b.vec(Op.VSET, cl, n=1, imm=-limit)
    b.vec(Op.VSCALE, g, acc, n=f, imm=-1.0)
    b.vec(Op.VMAX, g, g, Desc(cl, 0), f)
    b.vec(Op.VSCALE, g, g, n=f, imm=-1.0)               # gate = min(gate, L)
    b.vec(Op.VMAX, xb, acc + f, Desc(cl, 0), f)          # up = max(up, -L)
    b.vec(Op.VSCALE, xb, xb, n=f, imm=-1.0)
    b.vec(Op.VMAX, xb, xb, Desc(cl, 0), f)
    b.vec(Op.VSCALE, xb, xb, n=f, imm=-1.0)              # up = min(up, L)
    b.vec(Op.VSCALE, s, g, n=f, imm=alpha)
    b.vec(Op.VSIGMOID, s, s, n=f)
    b.vec(Op.VMUL, s, g, s, f)                           # glu = gate * sigmoid(alpha gate)
    b.vec(Op.VADDI, xb, xb, n=f, imm=1.0)
    b.vec(Op.VMUL, xb, xb, s, f)                         # (up + 1) * glu


# --------------------------------------------------------------------------- weights


def with_bias_column(w: np.ndarray, bias: np.ndarray | None, at: int) -> np.ndarray:
    """[M, K] -> [M, K + 1] with `bias` (zeros when None) inserted as column `at`."""
    col = np.zeros(w.shape[0], np.float32) if bias is None else bias.astype(np.float32)
    return np.concatenate([w[:, :at], col[:, None], w[:, at:]], axis=1)


def expert_matrices(spec, weights: dict, layer: int, expert: int) -> tuple:
    """(gate [F, H], up [F, H], down [H, F], gate bias, up bias, down bias) of one expert
    as HF Linear-style [out, in] matrices (biases None when absent)."""
    names = spec.expert_names(layer)
    if spec.moe.layout != "fused":
        return (weights[names[f"gate.{expert}"]], weights[names[f"up.{expert}"]],
                weights[names[f"down.{expert}"]], None, None, None)
    gu = weights[names["gate_up"]][expert]            # [H, 2F], gate/up interleaved
    gub = weights[names["gate_up_bias"]][expert]
    return (gu[:, ::2].T, gu[:, 1::2].T, weights[names["down"]][expert].T,
            gub[::2], gub[1::2], weights[names["down_bias"]][expert])


def write_layer(sram: np.ndarray, plan, placement, weights: dict, layer: int, addr_of) -> None:
    """Store sparse layer `layer`'s router tile and expert blocks (`addr_of(name)`: int64
    [ph] address of a weight buffer per row, compiler.decode._addr_of)."""
    from compiler.place import write_matrix
    spec = plan.spec
    names, bias = spec.expert_names(layer), has_bias(spec)
    at = spec.hidden_size
    router = weights[names["router"]]
    if bias:
        router = with_bias_column(router, weights.get(names.get("router_bias", "")), at)
    write_matrix(sram, plan, "router", router, addr_of(f"L{layer}.router"))
    base = addr_of(f"L{layer}.experts")
    block, gu_words = expert_block(plan), expert_sizes(plan)[0]
    eff = plan.vec("eff")
    order = np.concatenate([np.concatenate([np.arange(eff.start(j), eff.start(j + 1)),
                                            spec.moe.expert_size
                                            + np.arange(eff.start(j), eff.start(j + 1))])
                            for j in range(plan.ph)]).astype(np.int64)
    f_at = spec.moe.expert_size
    for e in range(spec.moe.num_experts):
        gate, up, down, gb, ub, db = expert_matrices(spec, weights, layer, e)
        gu = np.concatenate([gate, up])
        gu_bias = None if gb is None else np.concatenate([gb, ub])
        if bias:
            gu = with_bias_column(gu, gu_bias, at)
            down = with_bias_column(down, db, f_at)
        write_matrix(sram, plan, "egu", gu[order], base + e * block)
        write_matrix(sram, plan, "edown", down, base + e * block + gu_words)
