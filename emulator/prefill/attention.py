"""Causal self-attention, flash-attention style (running max and sum), on one core.

For each query head of the core and each tile of 128 queries (queries on partitions), the
keys up to the tile's last query are visited in tiles of 512 (docs/prefill.md, "Attention"):

    S      = Q^T[:, q].T @ K^T[:, k]                 TensorE -> PSUM [128, 512]
    S      = causal_mask(S)                          Vector, diagonal tiles only
    m_new  = max(m, rowmax(S))                       Vector
    P      = exp(scale * S - scale * m_new), l_t = rowsum(P)      Scalar (one instruction)
    alpha  = exp(scale * (m - m_new)); l = l * alpha + l_t        Scalar, Vector
    P^T    = transpose(P) per 128 keys               TensorE (matmul with identity), Scalar copy
    O_t    = sum_s P^T[s].T @ V[s]                   TensorE -> PSUM [128, head_dim]
    O      = O * alpha + O_t                         Vector
    out    = transpose(O / l) -> O^T [head_dim, q]   Vector, TensorE, Scalar; stored to HBM

K^T and V of the core's key/value head stay resident in SBUF while its query heads run.
"""

import numpy as np

from emulator.hw.errors import FitError
from emulator.prefill import costs
from emulator.prefill import instructions as instr
from emulator.prefill.lowering import Lowering, TileMap, chunks, pe_stream

NONE = -1
Q_TILE = 128


class _State:
    """SBUF/PSUM tensors of one attention stream (one query tile in flight) on one core."""

    def __init__(self, L: Lowering, core: int, d: int, kv: tuple, name: str):
        def t(tag, rows, cols, dtype="fp32", space="sbuf"):
            return L.sbuf(f"{name}.{tag}.c{core}", rows, cols, dtype, core, space)

        act, kw = L.act_dtype, L.nmax
        self.k, self.v = kv
        self.tiles = 0
        self.q = [t(f"q{i}", d, Q_TILE, act) for i in range(2)]
        self.s = [t(f"s{i}", Q_TILE, kw, space="psum") for i in range(2)]
        self.sm, self.p = t("smask", Q_TILE, kw), t("p", Q_TILE, kw, act)
        self.m = [t(f"m{i}", Q_TILE, 1) for i in range(2)]
        self.rm, self.negm, self.alpha = t("rowmax", Q_TILE, 1), t("negm", Q_TILE, 1), \
            t("alpha", Q_TILE, 1)
        self.l, self.lt, self.rl = t("l", Q_TILE, 1), t("lt", Q_TILE, 1), t("rl", Q_TILE, 1)
        self.pt, self.pts = t("pt", Q_TILE, kw, space="psum"), t("pts", Q_TILE, kw, act)
        self.ot, self.o = t("ot", Q_TILE, d, space="psum"), t("o", Q_TILE, d)
        self.on, self.oT = t("on", Q_TILE, d, act), t("oT", d, Q_TILE, space="psum")
        self.oTs = t("oTs", d, Q_TILE, act)
        self.last = {"s": [NONE, NONE], "p": NONE, "pt": NONE, "ot": NONE, "q": [NONE, NONE],
                     "sm": NONE, "oTs": NONE}


def check_fit(L: Lowering, d: int, P: int) -> None:
    """Raise FitError when one key/value head's K^T and V do not fit an SBUF partition."""
    need = P * L.bpe + -(-P // Q_TILE) * d * L.bpe + 4 * L.nmax * 4 + 4 * d * 4
    if need > L.hw.sbuf_partition_bytes:
        raise FitError(f"attention: a {P}-token prompt needs {need} bytes of SBUF per partition "
                       f"for one key/value head, {L.hw.sbuf_partition_bytes} available "
                       f"(prefill preset '{L.hw.name}')")


def attention(L: Lowering, core: int, heads: list[tuple[int, int]], d: int, P: int,
              q: tuple[int, TileMap], k: tuple[int, TileMap], v: tuple[int, TileMap],
              out: tuple[int, TileMap], scale: float, name: str, streams: int = 2) -> int:
    """Attention of the core's heads: `heads` = [(local q head, local kv head)] by kv head.

    q, k: (HBM tensor [heads*d, P] feature-major, map); v: (HBM [P, kv*d], map); out: O^T.
    `streams` independent (head, query tile) items are software-pipelined: their
    instructions are interleaved stage by stage so the engines overlap. Returns the last
    instruction index.
    """
    check_fit(L, d, P)
    act = L.act_dtype
    kv = (L.sbuf(f"{name}.k.c{core}", d, P, act, core), L.sbuf(f"{name}.v.c{core}", P, d, act,
                                                               core))
    states = [_State(L, core, d, kv, f"{name}.s{i}") for i in range(streams)]
    items = [(kvh, q0, qh) for qh, kvh in heads for q0 in range(0, P, Q_TILE)]
    items.sort(key=lambda item: (item[0], item[1], item[2]))
    loaded, kv_ready = NONE, None
    for i in range(0, len(items), streams):
        group = [it for it in items[i:i + streams] if it[0] == items[i][0]]
        rest = items[i + len(group):i + streams]
        for batch in (group, rest):
            if not batch:
                continue
            if batch[0][0] != loaded:
                kv_ready = _load_kv(L, core, kv, k, v, batch[0][0], d, P, kv_ready)
                loaded = batch[0][0]
            _interleave([_query_tile(L, core, states[j], q, out, qh, d, q0,
                                     min(Q_TILE, P - q0), kv_ready, scale)
                         for j, (_, q0, qh) in enumerate(batch)])
    return L.b.count - 1


def _interleave(generators) -> None:
    """Advance emission generators round-robin, one stage each, until all finish."""
    live = list(generators)
    while live:
        for gen in list(live):
            try:
                next(gen)
            except StopIteration:
                live.remove(gen)


def _load_kv(L, core, kv, k, v, kvh, d, P, previous):
    """Load K^T [d, P] and V [P, d] of one kv head; returns (k loads, v loads) per tile."""
    k_sb, v_sb = kv
    k_t, k_map = k
    v_t, v_map = v
    war = NONE if previous is None else L.b.count - 1
    kt = chunks(P, L.nmax)
    k_dep = np.array([k_map.get(kvh * d, d, int(c), int(w)) for c, w in kt])
    k_idx = L.dma(core, d * kt[:, 1] * L.bpe, deps=[k_dep, war],
                  d=(k_sb, 0, d, kt[:, 0], kt[:, 1]), a=(k_t, kvh * d, d, kt[:, 0], kt[:, 1]))
    vt = chunks(P, Q_TILE)
    v_dep = np.array([v_map.get(int(r), int(n), kvh * d, d) for r, n in vt])
    v_idx = L.dma(core, vt[:, 1] * d * L.bpe, deps=[v_dep, war],
                  d=(v_sb, vt[:, 0], vt[:, 1], 0, d), a=(v_t, vt[:, 0], vt[:, 1], kvh * d, d))
    return k_idx, v_idx


def _query_tile(L, core, st, q, out, qh, d, q0, rows, kv_ready, scale):
    """One tile of queries of one head (a generator yielding between pipeline stages)."""
    q_t, q_map = q
    slot = st.tiles % 2
    st.tiles += 1
    q_load = L.b.one(instr.DMA_COPY, instr.DMA, core, int(_dma(L, d * rows * L.bpe)),
                     [q_map.get(qh * d, d, q0, rows), st.last["q"][slot]], lat=L.dma_lat,
                     work=d * rows * L.bpe, d=(st.q[slot], 0, d, 0, rows),
                     a=(q_t, qh * d, d, q0, rows))
    m_cur = 0
    for kt, k0 in enumerate(range(0, q0 + rows, L.nmax)):
        nk = min(L.nmax, q0 + rows - k0)
        m_cur = yield from _key_tile(L, core, st, slot, q_load, kv_ready, d, q0, rows, kt, k0,
                                     nk, m_cur, scale)
    yield from _finish(L, core, st, out, qh, d, q0, rows)


def _key_tile(L, core, st, slot, q_load, kv_ready, d, q0, rows, kt, k0, nk, m_cur, scale):
    """Scores, online softmax and P @ V of one key tile (a generator of pipeline stages);
    returns the current max buffer."""
    k_loads, v_loads = kv_ready
    s = kt % 2
    ls, mm = pe_stream(L, core, 1, 1, rows, [q_load], (st.q[slot], 0, d, 0, rows), d, nk,
                       False, [k_loads[k0 // L.nmax], st.last["s"][s]],
                       (st.k, 0, d, k0, nk), (st.s[s], 0, rows, 0, nk))
    st.last["q"][slot] = int(ls[0])
    yield
    src, src_dep = (st.s[s], 0, rows, 0, nk), int(mm[0, 0])
    if k0 + nk - 1 > q0:                                  # tile crosses the diagonal
        src_dep = L.b.one(instr.VEC_MASK, instr.DVE, core, int(_vec(L, nk, 1)),
                          [src_dep, st.last["sm"]],
                          imm0=q0, imm1=k0, d=(st.sm, 0, rows, 0, nk), a=src)
        src = (st.sm, 0, rows, 0, nk)
    first = kt == 0
    m_new = m_cur if first else 1 - m_cur
    red = L.b.one(instr.VEC_REDUCE, instr.DVE, core, int(_vec(L, nk, 1)), [src_dep],
                  func=instr.A_MAX, d=(st.m[m_new] if first else st.rm, 0, rows, 0, 1), a=src)
    if not first:
        red = L.b.one(instr.VEC_TT, instr.DVE, core, int(_vec(L, 1, 2)), [red], func=instr.A_MAX,
                      d=(st.m[m_new], 0, rows, 0, 1), a=(st.m[m_cur], 0, rows, 0, 1),
                      b=(st.rm, 0, rows, 0, 1))
    negm = L.b.one(instr.VEC_TS, instr.DVE, core, int(_vec(L, 1, 1)), [red], func=instr.A_MUL,
                   imm0=-scale, d=(st.negm, 0, rows, 0, 1), a=(st.m[m_new], 0, rows, 0, 1))
    yield
    alpha = NONE
    if not first:
        alpha = L.b.one(instr.ACTIVATE, instr.ACT, core, int(_act(L, 1)), [negm], func=instr.F_EXP,
                        imm0=scale, d=(st.alpha, 0, rows, 0, 1),
                        a=(st.m[m_cur], 0, rows, 0, 1), b=(st.negm, 0, rows, 0, 1))
    expo = L.b.one(instr.ACTIVATE, instr.ACT, core, int(_act(L, nk)), [negm, src_dep, st.last["p"]],
                   func=instr.F_EXP, imm0=scale, d=(st.p, 0, rows, 0, nk), a=src,
                   b=(st.negm, 0, rows, 0, 1), s=((st.l if first else st.lt), 0, rows, 0, 1))
    st.last["s"][s] = expo
    if src[0] == st.sm:
        st.last["sm"] = expo
    yield
    if not first:
        L.b.one(instr.VEC_STT, instr.DVE, core, int(_vec(L, 1, 2)), [expo, alpha], func=instr.A_MUL,
                func2=instr.A_ADD, d=(st.l, 0, rows, 0, 1), a=(st.l, 0, rows, 0, 1),
                b=(st.lt, 0, rows, 0, 1), s=(st.alpha, 0, rows, 0, 1))
    pv_last = yield from _pv(L, core, st, rows, d, k0, nk, expo, kv_ready)
    if first:
        o_upd = L.b.one(instr.ACTIVATE, instr.ACT, core, int(_act(L, d)), [pv_last],
                        func=instr.F_IDENT, imm0=1.0, d=(st.o, 0, rows, 0, d),
                        a=(st.ot, 0, rows, 0, d))
    else:
        o_upd = L.b.one(instr.VEC_STT, instr.DVE, core, int(_vec(L, d, 2)), [pv_last, alpha],
                        func=instr.A_MUL, func2=instr.A_ADD, d=(st.o, 0, rows, 0, d),
                        a=(st.o, 0, rows, 0, d), b=(st.ot, 0, rows, 0, d),
                        s=(st.alpha, 0, rows, 0, 1))
    st.last["ot"] = o_upd
    yield
    return m_new


def _pv(L, core, st, rows, d, k0, nk, expo, kv_ready):
    """Transpose P per 128 keys (TensorE), copy P^T to SBUF, accumulate P^T.T @ V in PSUM."""
    _, v_loads = kv_ready
    sub = chunks(nk, Q_TILE)
    n = len(sub)
    ident = L.const(core, "identity")
    ls_t, mm_t = pe_stream(L, core, n, 1, sub[:, 1], [expo], (st.p, 0, rows, sub[:, 0], sub[:, 1]),
                           rows, rows, False, [st.last["pt"]], (ident, 0, rows, 0, rows),
                           (st.pt, 0, sub[:, 1], sub[:, 0], rows), model_flops=False)
    st.last["p"] = int(ls_t[-1])
    yield
    kmax, width = int(sub[:, 1].max()), int(sub[-1, 0]) + rows
    copy = L.b.one(instr.ACTIVATE, instr.ACT, core, int(_act(L, width)), [mm_t[-1, 0]],
                   func=instr.F_IDENT, imm0=1.0, d=(st.pts, 0, kmax, 0, width),
                   a=(st.pt, 0, kmax, 0, width))
    st.last["pt"] = copy
    yield
    v_dep = v_loads[(k0 + sub[:, 0]) // Q_TILE]
    _, mm = pe_stream(L, core, n, 1, rows, [copy], (st.pts, 0, sub[:, 1], sub[:, 0], rows),
                      sub[:, 1], d, np.arange(n) > 0, [v_dep, st.last["ot"]],
                      (st.v, k0 + sub[:, 0], sub[:, 1], 0, d), (st.ot, 0, rows, 0, d))
    yield
    return int(mm[-1, 0])


def _finish(L, core, st, out, qh, d, q0, rows):
    """O / l, transpose to O^T [d, rows], store to the output tensor."""
    out_t, out_map = out
    rl = L.b.one(instr.ACTIVATE, instr.ACT, core, int(_act(L, 1)), [st.last["ot"]],
                 func=instr.F_RECIP, imm0=1.0, d=(st.rl, 0, rows, 0, 1), a=(st.l, 0, rows, 0, 1))
    on = L.b.one(instr.VEC_TS, instr.DVE, core, int(_vec(L, d, 1)), [rl, st.last["ot"]],
                 func=instr.A_MUL, d=(st.on, 0, rows, 0, d), a=(st.o, 0, rows, 0, d),
                 s=(st.rl, 0, rows, 0, 1))
    yield
    ident = L.const(core, "identity")
    _, mm = pe_stream(L, core, 1, 1, d, [on], (st.on, 0, rows, 0, d), rows, rows, False, [],
                      (ident, 0, rows, 0, rows), (st.oT, 0, d, 0, rows), model_flops=False)
    yield
    copy = L.b.one(instr.ACTIVATE, instr.ACT, core, int(_act(L, rows)),
                   [mm[0, 0], st.last["oTs"]],
                   func=instr.F_IDENT, imm0=1.0, d=(st.oTs, 0, d, 0, rows),
                   a=(st.oT, 0, d, 0, rows))
    store = L.b.one(instr.DMA_COPY, instr.DMA, core, int(_dma(L, d * rows * L.bpe)), [copy],
                    lat=L.dma_lat, work=d * rows * L.bpe, d=(out_t, qh * d, d, q0, rows),
                    a=(st.oTs, 0, d, 0, rows))
    st.last["oTs"] = store
    out_map.set(qh * d, d, q0, rows, store)


def _dma(L, nbytes):
    """DMA queue cycles of a transfer."""
    return costs.dma_cycles(L.hw, nbytes, L.active_cores)


def _vec(L, n, inputs):
    """Vector cycles (TensorE clock) over n elements per partition."""
    return costs.vector_cycles(L.hw, n, inputs)


def _act(L, n):
    """Scalar cycles (TensorE clock) over n elements per partition."""
    return costs.scalar_cycles(L.hw, n)
