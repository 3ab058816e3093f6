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

K^T and V are streamed from HBM through SBUF one key tile ahead (two slots each, shared by
the query heads of a batch), so the prompt length is bounded by HBM only; key tiles beyond
a query tile's last query are never visited (causal skipping).
"""

import numpy as np

from emulator.hw.errors import FitError
from emulator.prefill import costs
from emulator.prefill import instructions as instr
from emulator.prefill.lowering import Lowering, Replay, TileMap, chunks, pe_stream

NONE = -1
Q_TILE = 128


class _State:
    """SBUF/PSUM tensors of one attention stream (one query tile in flight) on one core."""

    def __init__(self, L: Lowering, core: int, d: int, name: str):
        def t(tag, rows, cols, dtype="fp32", space="sbuf"):
            return L.sbuf(f"{name}.{tag}.c{core}", rows, cols, dtype, core, space)

        act, kw = L.act_dtype, L.nmax
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


def check_fit(L: Lowering, d: int) -> None:
    """Raise FitError when the attention buffers of one core do not fit an SBUF partition.

    K/V blocks are streamed, so the use does not depend on the prompt length: per stream
    two Q tiles, S/P/P^T tiles and O; per core two K^T blocks and two V blocks.
    """
    kw, bpe = L.nmax, L.bpe
    per_stream = 2 * Q_TILE * bpe + kw * (4 + 2 * bpe) + d * (4 + bpe) + Q_TILE * bpe + 16
    need = 2 * per_stream + 2 * kw * bpe + 2 * -(-kw // Q_TILE) * d * bpe
    if need > L.hw.sbuf_partition_bytes:
        raise FitError(f"attention: head_dim {d} needs {need} bytes of SBUF per partition, "
                       f"{L.hw.sbuf_partition_bytes} available (prefill preset '{L.hw.name}')")


class _KV:
    """Streamed K^T / V blocks of one core: two SBUF slots each, shared by the streams of a
    batch; `last_read` holds the TensorE instruction that last read each slot."""

    def __init__(self, L: Lowering, core: int, d: int, name: str):
        act = L.act_dtype
        self.k = [L.sbuf(f"{name}.kblk{i}.c{core}", d, L.nmax, act, core) for i in range(2)]
        self.v = [L.sbuf(f"{name}.vblk{i}.c{core}", L.nmax, d, act, core) for i in range(2)]
        self.last_read = {("k", 0): NONE, ("k", 1): NONE, ("v", 0): NONE, ("v", 1): NONE}
        self.loads: dict = {}          # key tile -> (K load, V loads per 128 rows)

    def load(self, L, core, k, v, kvh, d, kt, nk, barrier):
        """DMA key tile `kt` (keys [kt*nmax, +nk)) of kv head `kvh` into slot kt % 2, after
        the `barrier` instruction (the projections are stored)."""
        k_t, v_t = k[0], v[0]
        slot, k0 = kt % 2, kt * L.nmax
        k_idx = L.b.one(instr.DMA_COPY, instr.DMA, core, int(_dma(L, d * nk * L.bpe)),
                        [barrier, self.last_read[("k", slot)]],
                        lat=L.dma_lat, work=d * nk * L.bpe, d=(self.k[slot], 0, d, 0, nk),
                        a=(k_t, kvh * d, d, k0, nk))
        vt = chunks(nk, Q_TILE)
        v_idx = L.dma(core, vt[:, 1] * d * L.bpe, deps=[barrier, self.last_read[("v", slot)]],
                      d=(self.v[slot], vt[:, 0], vt[:, 1], 0, d),
                      a=(v_t, k0 + vt[:, 0], vt[:, 1], kvh * d, d))
        self.loads[kt] = (k_idx, v_idx)


def attention(L: Lowering, core: int, heads: list[tuple[int, int]], d: int, P: int,
              q: tuple[int, TileMap], k: tuple[int, TileMap], v: tuple[int, TileMap],
              out: tuple[int, TileMap], scale: float, name: str, streams: int = 2,
              past: int = 0, window: int | None = None, sinks: tuple | None = None) -> int:
    """Attention of the core's heads: `heads` = [(local q head, local kv head)] by kv head.

    q: (HBM tensor [heads*d, P] feature-major, map), P queries at positions past..past+P-1;
    k: (HBM [kv*d, past+P], map); v: (HBM [past+P, kv*d], map): the keys of earlier chunks
    (`past` positions, chunked prefill) and of this one; out: O^T [heads*d, P].
    `window` (sliding-window layers): a query at position p sees keys p-window+1 .. p, so
    key tiles wholly before the window are skipped and tiles reaching before it are
    masked. `sinks` (gpt-oss attention sinks): (HBM tensor [1, heads] of the sink logits,
    the global index of the core's first query head); each query tile's running max
    starts at the sink (in units of the unscaled scores) with running sum 1 and output 0,
    so the sink takes its share of the softmax and contributes no value.
    `streams` (head, query tile) items of the same kv head and key-tile count form a batch:
    their instructions are interleaved stage by stage so the engines overlap, and they
    share the streamed K/V blocks. In a memoised (timing-only) lowering the middle key
    tiles of a batch are one repeated body (`instr.Builder.repeat`). Returns the last
    instruction index.
    """
    check_fit(L, d)
    kvbuf = _KV(L, core, d, name)
    states = [_State(L, core, d, f"{name}.s{i}") for i in range(streams)]
    # A kernel boundary: attention starts once the core's q, k and v are stored.
    barrier = max(int(m.prod.max()) for m in (q[1], k[1], v[1]))
    items = [(kvh, q0, qh) for qh, kvh in heads for q0 in range(0, P, Q_TILE)]
    items.sort(key=lambda item: (item[0], item[1], item[2]))
    batches, i = [], 0

    T = past + P                              # keys: earlier chunks and this one

    def tiles(item):                          # (kv head, first and last+1 key tile)
        g0 = past + item[1]
        lo = max(0, g0 - window + 1) // L.nmax if window else 0
        return item[0], lo, -(-(past + min(P, item[1] + Q_TILE)) // L.nmax)

    while i < len(items):
        batch = [items[i]]
        while (len(batch) < streams and i + len(batch) < len(items)
               and tiles(items[i + len(batch)]) == tiles(items[i])):
            batch.append(items[i + len(batch)])
        batches.append(batch)
        i += len(batch)
    groups: dict = {}
    for batch in batches:                     # super-batches: same kv head and key tiles
        groups.setdefault((batch[0][0], (past + batch[0][1]) // L.nmax), []).append(batch)
    replay = Replay(L.b)
    tiles_tpl: dict = {}
    per_kv = {kvh: sum(1 for _, h in heads if h == kvh) for _, kvh in heads}
    for (kvh, j), group in groups.items():
        ntiles = j + 1
        full = (sum(len(b) for b in group) == per_kv[kvh] * (L.nmax // Q_TILE)
                and (j + 1) * L.nmax <= T and past % L.nmax == 0)
        regular = L.memoise and full and ntiles >= 9 and not window
        reps = (ntiles - 5) // 2 if L.memoise and not window else 0
        key = ("attention", ntiles % 2) if regular else None
        if L.memoise and full and window:     # the same key tiles relative to the group
            key = ("window", tuple((tiles(b[0])[1] - j, tiles(b[0])[2] - j) for b in group))
        tiles_before = [st.tiles for st in states]
        done = replay.replay(kvh, key, reps) if L.memoise else None
        if done is not None:
            _restore(states, kvbuf, done[0], done[1], tiles_tpl[key])
            for batch in group:
                for _, q0, qh in batch:
                    out[1].set(qh * d, d, q0, Q_TILE, L.b.count - 1)
            continue
        start = L.b.count
        for batch in group:
            kvbuf.loads = {}
            kv_end = past + max(min(P, q0 + Q_TILE) for _, q0, _ in batch)
            lo = tiles(batch[0])[1]
            gens = [_query_tile(L, core, states[n], kvbuf, q, k, v, out, kvh, qh, d, q0,
                                min(Q_TILE, P - q0), scale, lead=(n == 0), reps=reps,
                                barrier=barrier, kv_end=kv_end, past=past, lo=lo,
                                window=window or 0, sinks=sinks)
                    for n, (_, q0, qh) in enumerate(batch)]
            _interleave(L, gens, reps)
        if L.memoise:
            old_template = replay.templates.get(key)
            replay.emitted(kvh, key, start, lambda: _snapshot(states, kvbuf))
            if key is not None and replay.templates.get(key) is not old_template:
                tiles_tpl[key] = tiles_before
    return L.b.count - 1


def _snapshot(states, kvbuf):
    """Indices the attention lowering carries from one super-batch to the next."""
    return ([{key: (list(val) if isinstance(val, list) else val)
              for key, val in st.last.items()} for st in states],
            [st.tiles for st in states], dict(kvbuf.last_read))


def _restore(states, kvbuf, move, snap, tiles_before):
    """Set the carried indices after a replayed super-batch (template state moved)."""
    lasts, tiles, reads = snap
    for st, last, t_after, t_before in zip(states, lasts, tiles, tiles_before, strict=True):
        st.last = {key: ([int(move(x)) for x in val] if isinstance(val, list)
                         else int(move(val))) for key, val in last.items()}
        st.tiles += t_after - t_before
    kvbuf.last_read = {key: int(move(val)) for key, val in reads.items()}


def _interleave(L, generators, reps) -> None:
    """Advance emission generators round-robin, one stage each, until all finish.

    A generator yields "body" just before the repeated key tiles and "end" just after them;
    all generators of a batch reach these marks in the same round (identical structure),
    and at "end" the tiles emitted since "body" are marked as repeated `reps` times.
    """
    live = list(generators)
    body_start = None
    while live:
        marks = set()
        for gen in list(live):
            try:
                marks.add(next(gen))
            except StopIteration:
                live.remove(gen)
        if "body" in marks:
            body_start = L.b.count
        elif "end" in marks:
            L.b.repeat(body_start, reps)


def _query_tile(L, core, st, kvbuf, q, k, v, out, kvh, qh, d, q0, rows, scale, lead, reps,
                barrier, kv_end, past=0, lo=0, window=0, sinks=None):
    """One tile of queries of one head (a generator yielding between pipeline stages).

    The lead stream of a batch loads the K/V blocks, one key tile ahead. With `reps` > 1
    key tiles 3 and 4 are the repeated body (marks "body" / "end", see `_interleave`):
    they stand for key tiles 3 .. 2 + 2*reps, and emission resumes at 3 + 2*reps.
    """
    q_t, q_map = q
    slot = st.tiles % 2
    st.tiles += 1
    q_load = L.b.one(instr.DMA_COPY, instr.DMA, core, int(_dma(L, d * rows * L.bpe)),
                     [barrier, st.last["q"][slot]], lat=L.dma_lat,
                     work=d * rows * L.bpe, d=(st.q[slot], 0, d, 0, rows),
                     a=(q_t, qh * d, d, q0, rows))
    end = past + q0 + rows                    # one past the tile's last query position
    ntiles = -(-end // L.nmax)
    if lead:                                  # keys up to the batch's last query
        kvbuf.load(L, core, k, v, kvh, d, lo, min(L.nmax, kv_end - lo * L.nmax), barrier)
    m_cur, kt = 0, lo
    if sinks is not None:                     # running max = sink / scale, sum 1, O = 0
        war = [x for x in (st.last["ot"], st.last.get("on", NONE)) if x >= 0]
        sink = L.b.one(instr.DMA_COPY, instr.DMA, core, int(_dma(L, 4)), [barrier, *war],
                       lat=L.dma_lat, work=4, d=(st.m[0], 0, rows, 0, 1),
                       a=(sinks[0], 0, 1, sinks[1] + qh, 1), flags=instr.FLAG_BROADCAST)
        L.b.one(instr.VEC_TS, instr.DVE, core, int(_vec(L, 1, 1)), [sink], func=instr.A_MUL,
                imm0=1.0 / scale, d=(st.m[0], 0, rows, 0, 1), a=(st.m[0], 0, rows, 0, 1))
        L.b.one(instr.ACTIVATE, instr.ACT, core, int(_act(L, 1)), war, func=instr.F_IDENT,
                imm0=0.0, imm1=1.0, d=(st.l, 0, rows, 0, 1), a=(st.l, 0, rows, 0, 1))
        st.last["ot"] = L.b.one(instr.ACTIVATE, instr.ACT, core, int(_act(L, d)), war,
                                func=instr.F_IDENT, imm0=0.0, d=(st.o, 0, rows, 0, d),
                                a=(st.o, 0, rows, 0, d))
    while kt < ntiles:
        if reps > 1 and kt == 3:
            yield "body"
        if lead and kt + 1 < ntiles:
            kvbuf.load(L, core, k, v, kvh, d, kt + 1, min(L.nmax, kv_end - (kt + 1) * L.nmax),
                       barrier)
        k0 = kt * L.nmax
        m_cur = yield from _key_tile(L, core, st, slot, q_load, kvbuf, kt, d, past + q0, rows,
                                     k0, min(L.nmax, end - k0), m_cur, scale,
                                     first=kt == lo and sinks is None, window=window)
        if reps > 1 and kt == 4:
            yield "end"
            kt = 3 + 2 * reps
            if lead:
                kvbuf.loads[kt] = kvbuf.loads[5]
            continue
        kt += 1
    yield from _finish(L, core, st, out, qh, d, q0, rows)


def _key_tile(L, core, st, slot, q_load, kvbuf, kt, d, q0, rows, k0, nk, m_cur, scale,
              first, window=0):
    """Scores, online softmax and P @ V of one key tile (a generator of pipeline stages);
    returns the current max buffer. `q0` is the absolute position of the tile's first
    query; `first`: the running max, sum and output start from this tile."""
    k_load, _ = kvbuf.loads[kt]
    s = kt % 2
    ls, mm = pe_stream(L, core, 1, 1, rows, [q_load], (st.q[slot], 0, d, 0, rows), d, nk,
                       False, [k_load, st.last["s"][s]],
                       (kvbuf.k[s], 0, d, 0, nk), (st.s[s], 0, rows, 0, nk))
    st.last["q"][slot] = int(ls[0])
    kvbuf.last_read[("k", s)] = int(mm[0, 0])
    yield
    src, src_dep = (st.s[s], 0, rows, 0, nk), int(mm[0, 0])
    # the tile crosses the diagonal, or reaches before the window of its last query
    if k0 + nk - 1 > q0 or (window and k0 <= q0 + rows - 1 - window):
        src_dep = L.b.one(instr.VEC_MASK, instr.DVE, core, int(_vec(L, nk, 1)),
                          [src_dep, st.last["sm"]], work=window,
                          imm0=q0, imm1=k0, d=(st.sm, 0, rows, 0, nk), a=src)
        src = (st.sm, 0, rows, 0, nk)
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
    if L.hw.vector_exp_elems_per_cycle:       # NeuronCore-v4: exponential on VectorE
        exp_engine, exp_cost = instr.DVE, int(costs.vector_exp_cycles(L.hw, nk))
    else:
        exp_engine, exp_cost = instr.ACT, int(_act(L, nk))
    expo = L.b.one(instr.ACTIVATE, exp_engine, core, exp_cost, [negm, src_dep, st.last["p"]],
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
    pv_last = yield from _pv(L, core, st, kvbuf, kt, rows, d, nk, expo)
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


def _pv(L, core, st, kvbuf, kt, rows, d, nk, expo):
    """Transpose P per 128 keys (TensorE), copy P^T to SBUF, accumulate P^T.T @ V in PSUM."""
    _, v_loads = kvbuf.loads[kt]
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
    v_dep = v_loads[sub[:, 0] // Q_TILE]
    _, mm = pe_stream(L, core, n, 1, rows, [copy], (st.pts, 0, sub[:, 1], sub[:, 0], rows),
                      sub[:, 1], d, np.arange(n) > 0, [v_dep, st.last["ot"]],
                      (kvbuf.v[kt % 2], sub[:, 0], sub[:, 1], 0, d), (st.ot, 0, rows, 0, d))
    kvbuf.last_read[("v", kt % 2)] = int(mm[-1, 0])
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
    st.last["on"] = on
    yield
    ident = L.const(core, "identity")
    _, mm = pe_stream(L, core, 1, 1, d, [on], (st.on, 0, rows, 0, d), rows, rows, False, [],
                      (ident, 0, rows, 0, rows), (st.oT, 0, d, 0, rows), model_flops=False)
    yield
    copy = L.b.one(instr.ACTIVATE, instr.ACT, core, int(_act(L, rows)),
                   [mm[0, 0], st.last["oTs"]], func=instr.F_IDENT, imm0=1.0,
                   d=(st.oTs, 0, d, 0, rows), a=(st.oT, 0, d, 0, rows))
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
