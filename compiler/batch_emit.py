"""Emit of a batched decode step (B users, spread layout): the code of every role.

Same structure, marks and op names as the one-user step of compiler/emit.py; what changes
(docs/mapping.md, "Batched decode"):

- every GEMV is a GEMM: the multicast carries the B users' input chunks in one message
  (B * k wavelets), one `vgemm` multiplies them by the resident tile (cost o + B * max(k, 1)
  * ceil(m / w)), each tree step sends the B users' partial sums in one message (B * m
  wavelets, parameters `bm_*`). The fabric latency (hops, message levels) is paid once
  per phase; per-PE work and message lengths grow with B.
- RMSNorm, RoPE, SwiGLU and bias adds run per user on the top row / left column (a few
  vector ops each); the residual add is one op over the B rows.
- attention runs per user over that user's KV slice (its own positions, parameters
  `nact@u` ...; a user's scores of all its q heads are one vgemm, the heads as rows),
  with the messages of all users joined: one q/k/v row multicast, one
  score message per step of a band's column tree, one band multicast of [maxima | scores],
  one softmax-state message per step of the row's merge tree.

Per-user arithmetic is the one-user step's, operation by operation (a vgemm row is the
vmul + vgemv it replaces), so each user's logits are bit for bit those the one-user
program computes for it.
"""

from compiler.batching import grouped, head_groups, kv_stride
from compiler.emit import (
    NEW_SLOT_REG,
    CodeBuilder,
    Context,
    Desc,
    Fabric,
    Param,
    Reg,
    RegionCode,
    Role,
    col_multicast,
    layer_code,
    row_multicast,
    tree_sum,
)
from isa.opcodes import (
    REP_INNER_SLOTS,
    REP_OUTER_SLOTS,
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

MASK_SCORE = -1.0e30   # as compiler.emit (spread layout): a slot holding no position


def repeat(b: CodeBuilder, reps, cols: int = 1, outer: tuple = (0, 0, 0),
           inner: tuple = (0, 0, 0)) -> None:
    """Before the next vector op or reduction: `rep` it reps x cols times, its (dst, src0,
    src1) addresses moved by `outer` per outer copy and by `inner` per inner copy (docs/
    isa.md, rep; it costs what the reps * cols ops it stands for cost). Nothing when
    reps * cols is 1: the op alone is that one copy."""
    if reps == 1 and cols == 1:
        return
    slots = dict(zip(REP_OUTER_SLOTS, outer, strict=True))
    slots.update(zip(REP_INNER_SLOTS, inner, strict=True))
    b.emit(Op.REP, {SLOT_N: reps, SLOT_COLOR: cols, **slots})


def gemm(b: CodeBuilder, batch: int, w: int, ld: int, x: int, acc, m, k: int) -> None:
    """acc[u*m + i] = sum over c < k of W[c*ld + i] * x[u*k + c] for rows u < batch (one
    vgemm; rows of x and acc contiguous). Also the scores of a user's heads (rows =
    heads, `m` = its active slots: head h's scores at sc{h}@u = sc0@u + h * m)."""
    b.emit(Op.VGEMM, {SLOT_DST: acc, SLOT_DST_STRIDE: batch, SLOT_SRC0: w,
                      SLOT_SRC0_STRIDE: ld, SLOT_SRC1: x, SLOT_SRC1_STRIDE: k, SLOT_N: m,
                      SLOT_COLOR: k})


def gemm_a(b, fab: Fabric, batch: int, top: bool, row_tree: tuple, k: int, w: int, ld: int,
           x: int, acc: int, m: str) -> None:
    """Batched GEMV-A: B rows of x down the columns in one message, one vgemm, B rows of
    partial sums along the rows (parameter `b<m>` = B * m wavelets per message)."""
    col_multicast(b, fab, top, x, batch * k)
    gemm(b, batch, w, ld, x, acc, Param(m), k)
    tree_sum(b, row_tree, fab.row, acc, Param("b" + m))


def gemm_b(b, fab: Fabric, batch: int, left: bool, col_tree: tuple, k: int, w: int, ld: int,
           x: int, acc: int, m: str) -> None:
    """Batched GEMV-B: the transpose of `gemm_a` (rows multicast, columns reduced)."""
    row_multicast(b, fab, left, x, batch * k)
    gemm(b, batch, w, ld, x, acc, Param(m), k)
    tree_sum(b, col_tree, fab.col, acc, Param("b" + m))


def rmsnorm(b: CodeBuilder, ctx: Context, role: Role, gamma: str, label: str = "") -> None:
    """Top row, every user: XN_u = H_u / sqrt(mean(H_u^2) + eps) * gamma (the B sums of
    squares reduced to (0, 0) and multicast back in one message each)."""
    spec, fab, a, batch = ctx.plan.spec, ctx.fab, ctx.addr, ctx.plan.batch
    k, ss, h, xn = role.k_hidden, a("SS"), a("H"), a("XN")
    b.note(f"RMSNorm with {label or gamma} (every user)", "rmsnorm")
    if k:
        for u in range(batch):
            b.reduce(Op.RDOT, ss + u, h + u * k, h + u * k, k)
    else:
        b.vec(Op.VSET, ss, n=batch, imm=0.0)
    tree_sum(b, role.row_tree, fab.row, ss, batch)
    if role.left:
        b.vec(Op.VSCALE, ss, ss, n=batch, imm=1.0 / spec.hidden_size)
        b.vec(Op.VADDI, ss, ss, n=batch, imm=spec.rms_norm_eps)
        b.vec(Op.VRSQRT, ss, ss, n=batch)
    row_multicast(b, fab, role.left, ss, batch)
    for u in range(batch):
        b.vec(Op.VMUL, xn + u * k, h + u * k, Desc(ss + u, 0), k)
    for u in range(batch):
        b.vec(Op.VMUL, xn + u * k, xn + u * k, a(gamma), k)


def rope_rows(b: CodeBuilder, ctx: Context, role: Role) -> None:
    """(0, j), every user: rotate the user's RoPE pairs in its QKV row by its COS/SIN."""
    a, gs = ctx.addr, ctx.plan.spec.group_size
    n2, qs = (gs + 1) * role.k2 // 2, (gs + 1) * role.k2 + role.nv
    t1, t2, t3, t4 = (a("TMP") + q * n2 for q in range(4))
    b.note("RoPE of the row's pairs (every user)", "rope")
    for u in range(ctx.plan.batch):
        e, cos, sin = a("QKV") + u * qs, a("COS") + u * n2, a("SIN") + u * n2
        b.vec(Op.VMUL, t1, Desc(e, 2), cos, n2)
        b.vec(Op.VMUL, t2, Desc(e + 1, 2), sin, n2)
        b.vec(Op.VMUL, t3, Desc(e + 1, 2), cos, n2)
        b.vec(Op.VMUL, t4, Desc(e, 2), sin, n2)
        b.vec(Op.VSUB, Desc(e, 2), t1, t2, n2)
        b.vec(Op.VADD, Desc(e + 1, 2), t3, t4, n2)


def attention(b: CodeBuilder, ctx: Context, role: Role, layer: int) -> None:
    """Spread attention of row j's band for every user over that user's KV slice (see
    compiler.emit.spread_attention for one user; the messages of all users are joined)."""
    spec, fab, a, batch = ctx.plan.spec, ctx.fab, ctx.addr, ctx.plan.batch
    gs, k2, nv, slots = spec.group_size, role.k2, role.nv, ctx.placement.slots
    sp = kv_stride(ctx.plan, slots)       # elements per KV dim; user u's slots at u * slots
    qs, q, pm = (gs + 1) * k2 + nv, a("QKV"), a("PM")
    kt, vt = a(f"L{layer}.k"), a(f"L{layer}.v")
    b.note("layer {layer}: attention, every user's q/k/v along the row", "attn")
    row_multicast(b, fab, role.left, q, batch * qs)
    for u in range(batch):
        if k2 or nv:
            b.movr(NEW_SLOT_REG, Param(f"kslot@{u}"))
        if k2:
            b.vec(Op.VMOV, Desc(Reg(NEW_SLOT_REG, kt), sp), q + u * qs + gs * k2, n=k2)
        if nv:
            b.vec(Op.VMOV, Desc(Reg(NEW_SLOT_REG, vt), sp), q + u * qs + (gs + 1) * k2, n=nv)
    if role.band in (0, 1):
        b.note("attention: partial scores over the row's key dims (every user)", "attn")
        for u in range(batch):   # the gs heads' scores of user u: one vgemm (rows = heads)
            gemm(b, gs, kt + u * slots, sp, q + u * qs, Param(f"sc0@{u}"), Param(f"nact@{u}"),
                 k2)
        tree_sum(b, role.ktree, fab.col, pm + batch * gs, Param("sc_len"))
    if role.band == 0:
        b.note("attention: band top scales, masks empty slots, local max, exp", "attn")
        b.vec(Op.VSCALE, pm + batch * gs, pm + batch * gs, n=Param("sc_len"),
              imm=float(spec.head_dim ** -0.5))
        for u in range(batch):   # head h's buffers at sc0@u + h * nact@u (one rep each)
            nact, sc = Param(f"nact@{u}"), Param(f"sc0@{u}")
            repeat(b, gs, outer=(nact, 0, 0))
            b.vec(Op.VSET, Param(f"mask0@{u}"), n=Param(f"nfree@{u}"), imm=MASK_SCORE)
            repeat(b, gs, outer=(1, nact, 0))
            b.reduce(Op.RMAX, pm + u * gs, sc, n=nact)
            repeat(b, gs, outer=(nact, nact, 1))
            b.vec(Op.VSUB, sc, sc, Desc(pm + u * gs, 0), nact)
        b.vec(Op.VEXP, pm + batch * gs, pm + batch * gs, n=Param("sc_len"))
    if role.mb == "send":
        b.send(fab.mb, pm, Param("pm_len"))
    elif role.mb == "recv":
        b.recv(fab.mb, pm, Param("pm_len"))
    if nv:
        merge_values(b, ctx, role, vt, sp, slots)


def merge_values(b: CodeBuilder, ctx: Context, role: Role, vt: int, sp: int,
                 slots: int) -> None:
    """Value rows, every user: local softmax state MO = [m | l | o] (each B * gs wide, o
    dim-major), merged along the row to (0, j) by the online-softmax rule in one message
    per tree step; (0, j) writes user u's o / l into its XB row (u * gs * nv + h * nv + d).
    The weighted values stay one `rdot` per user, head and dim (SIMD over the slots; a
    vgemm with one-element rows would cost a cycle per slot), issued per user as one `rep`
    of gs x nv copies (the sums: one `rep` of gs)."""
    batch, gs, nv, fab, a = ctx.plan.batch, ctx.plan.spec.group_size, role.nv, ctx.fab, ctx.addr
    g = batch * gs
    pm, mo, mt, nm, aa = a("PM"), a("MO"), a("MT"), a("NM"), a("AA")
    lo, oo = mo + g, mo + 2 * g
    b.note("attention: local softmax state of the column's slots (every user)", "attn")
    b.vec(Op.VMOV, mo, pm, n=g)
    for u in range(batch):   # the gs heads' sums of user u: one rep
        nact = Param(f"nact@{u}")
        repeat(b, gs, outer=(1, nact, 0))
        b.reduce(Op.RSUM, lo + u * gs, Param(f"sc0@{u}"), n=nact)
    for u in range(batch):   # heads h (outer) x dims d (inner) of user u: one rep
        nact = Param(f"nact@{u}")
        repeat(b, gs, nv, outer=(1, 0, nact), inner=(g, sp, 0))
        b.reduce(Op.RDOT, oo + u * gs, vt + u * slots, Param(f"sc0@{u}"), nact)
    for act, s in role.row_tree:
        if act == "send":
            b.send(fab.row[s], mo, g * (2 + nv))
            continue
        b.recv(fab.row[s], mt, g * (2 + nv))
        b.note("online-softmax merge (every user)", "attn")
        b.vec(Op.VMAX, nm, mo, mt, g)
        b.vec(Op.VSUB, aa, mo, nm, g)
        b.vec(Op.VSUB, aa + g, mt, nm, g)
        b.vec(Op.VEXP, aa, aa, n=2 * g)
        b.vec(Op.VMUL, lo, lo, aa, g)
        b.vec(Op.VFMA, lo, mt + g, aa + g, g)
        for d in range(nv):
            b.vec(Op.VMUL, oo + d * g, oo + d * g, aa, g)
            b.vec(Op.VFMA, oo + d * g, mt + 2 * g + d * g, aa + g, g)
        b.vec(Op.VMOV, mo, nm, n=g)
    if role.left:
        b.note("divide by the softmax sums", "attn")
        b.vec(Op.VRECIP, a("RL"), lo, n=g)
        for d in range(nv):
            b.vec(Op.VMUL, Desc(a("XB") + d, nv), oo + d * g, a("RL"), g)


def decoder_layer(b: CodeBuilder, ctx: Context, role: Role, layer: int) -> None:
    """One layer for every user (compiler.emit.decoder_layer, spread layout, batched)."""
    plan, spec, fab, a, batch = ctx.plan, ctx.plan.spec, ctx.fab, ctx.addr, ctx.plan.batch
    p, gs = f"L{layer}.", spec.group_size
    qs = (gs + 1) * role.k2 + role.nv
    b.mark(p + "norm_in")
    if role.top:
        rmsnorm(b, ctx, role, p + "norm_in", "L{layer}.norm_in")
    b.mark(p + "qkv")
    b.note("layer {layer}: q/k/v GEMM-A", "qkv")
    gemm_a(b, fab, batch, role.top, role.row_tree, role.k_hidden, ctx.waddr(p + "qkv"), qs,
           a("XN"), a("QKV"), "m_qkv")
    if role.left and spec.attention_bias:
        for u in range(batch):
            b.vec(Op.VADD, a("QKV") + u * qs, a("QKV") + u * qs, ctx.waddr(p + "qkv_bias"),
                  Param("m_qkv"))
    b.mark(p + "rope")
    if role.left and role.k2:
        rope_rows(b, ctx, role)
    b.mark(p + "attn")
    if role.band >= 0:
        attention(b, ctx, role, layer)
    b.mark(p + "o_proj")
    b.note("layer {layer}: o_proj GEMM-B", "o_proj")
    gemm_b(b, fab, batch, role.left, role.col_tree, role.k_attn, ctx.waddr(p + "o"),
           plan.mpad("o"), a("XB"), a("ACC"), "m_hidden")
    residual(b, ctx, role, p + "o_bias" if spec.o_proj_bias else None)
    b.mark(p + "norm_post")
    if role.top:
        rmsnorm(b, ctx, role, p + "norm_post", "L{layer}.norm_post")
    b.mark(p + "mlp_up")
    b.note("layer {layer}: gate/up GEMM-A", "gate_up")
    gemm_a(b, fab, batch, role.top, role.row_tree, role.k_hidden, ctx.waddr(p + "gu"),
           plan.side_stride("gu", role.band == -1, role.top), a("XN"), a("ACC"), "m_gu")
    if role.left:
        swiglu(b, ctx, role, p + "gu_bias" if spec.mlp_bias else None)
    b.mark(p + "mlp_down")
    b.note("layer {layer}: down GEMM-B", "down")
    gemm_b(b, fab, batch, role.left, role.col_tree, role.k_ffn, ctx.waddr(p + "down"),
           plan.mpad("down"), a("XB"), a("ACC"), "m_hidden")
    residual(b, ctx, role, p + "down_bias" if spec.mlp_bias else None)


def residual(b: CodeBuilder, ctx: Context, role: Role, bias: str | None) -> None:
    """Top row: H += ACC (+ bias) for every user (B rows of the column's chunk)."""
    if not role.top:
        return
    a, k, batch = ctx.addr, role.k_hidden, ctx.plan.batch
    if bias:
        for u in range(batch):
            b.vec(Op.VADD, a("ACC") + u * k, a("ACC") + u * k, a(bias), k)
    b.vec(Op.VADD, a("H"), a("H"), a("ACC"), batch * k)


def swiglu(b: CodeBuilder, ctx: Context, role: Role, bias: str | None) -> None:
    """(0, j), every user: XB_u = silu(gate_u) * up_u from ACC_u = [gate_j; up_j]."""
    a, f = ctx.addr, role.k_ffn
    b.note("SiLU(gate) * up (every user)", "swiglu")
    for u in range(ctx.plan.batch):
        acc = a("ACC") + u * 2 * f
        if bias:
            b.vec(Op.VADD, acc, acc, ctx.waddr(bias), Param("m_gu"))
        b.vec(Op.VSIGMOID, a("TMP"), acc, n=f)
        b.vec(Op.VMUL, a("TMP"), a("TMP"), acc, f)
        b.vec(Op.VMUL, a("XB") + u * f, a("TMP"), acc + f, f)


def head_in_groups(b: CodeBuilder, ctx: Context, role: Role) -> None:
    """The LM head in groups of users (compiler.batching.head_groups): per group g of n
    users, the GEMM-A of their n rows of XN into HACC (`h{n}m_vocab` = n * m_vocab
    wavelets per tree step), then (0, j) multicasts the group's logits along row j (color
    MR), so the next group may reuse HACC. The other PEs of the row receive the messages
    after the last group (sends never wait for their receiver, docs/timing.md): column
    1 + g keeps group g's into LOG, the rest sink them into JUNK (stride 0)."""
    plan, fab, a = ctx.plan, ctx.fab, ctx.addr
    k, hacc = role.k_hidden, a("HACC")
    w, ld = ctx.waddr("lm_head"), plan.side_stride("lm_head", role.band == -1, role.top)
    groups = head_groups(plan)
    for first, n in groups:
        b.note(f"LM head GEMM-A of users {first} .. {first + n - 1}", "lm_head")
        col_multicast(b, fab, role.top, a("XN") + first * k, n * k)
        gemm(b, n, w, ld, a("XN") + first * k, hacc, Param("m_vocab"), k)
        tree_sum(b, role.row_tree, fab.row, hacc, Param(f"h{n}m_vocab"))
        if role.left:
            b.send(fab.mr, hacc, Param(f"h{n}m_vocab"))
    if not role.left:
        b.note("logits of every group along the row (column 1 + g keeps group g's)",
               "lm_head")
        for g, (_, n) in enumerate(groups):
            dst = a("LOG") if role.store == g else Desc(a("JUNK"), 0)
            b.recv(fab.mr, dst, Param(f"h{n}m_vocab"))


def pe_code(ctx: Context, role: Role) -> RegionCode:
    """The whole batched step of a PE with this role: every layer, LM head, end (the
    shape of compiler.emit.pe_code; the KV slot register is set per user in attention)."""
    import numpy as np

    ctx = ctx.for_role(role)
    plan, a = ctx.plan, ctx.addr
    end = CodeBuilder(ctx.param_index, ctx.mark_index)
    if plan.head:
        end.mark("head")
        if role.top:
            rmsnorm(end, ctx, role, "norm_final")
        end.note("LM head GEMM-A", "lm_head")
        if grouped(plan):
            head_in_groups(end, ctx, role)
        else:
            gemm_a(end, ctx.fab, plan.batch, role.top, role.row_tree, role.k_hidden,
                   ctx.waddr("lm_head"), plan.side_stride("lm_head", role.band == -1,
                                                          role.top),
                   a("XN"), a("ACC"), "m_vocab")
    end.mark("end")
    end.halt()
    layers, notes = layer_code(ctx, role)
    code = np.concatenate([layers, end.to_array()])
    code["line"] = np.arange(len(code))
    merged = dict(notes)
    merged.update({pc + len(layers): note for pc, note in end.notes.items()})
    return RegionCode(code, merged)
