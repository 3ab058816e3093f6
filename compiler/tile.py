"""Tile pass: ModelSpec + mesh -> how every vector and weight matrix is split over the PEs.

The whole decode step runs on one rectangle of pw x ph PEs (the mesh); every layer uses
the same PEs (WaferLLM-style), so each PE holds a tile of every weight matrix. Two vector
layouts (docs/mapping.md):

- R(v): v split into pw near-equal chunks, chunk i on PE (i, 0) (top row);
- C(v): v split into ph chunks, chunk j on PE (0, j) (left column).

Chunks are described by `bounds` (element offsets, length parts + 1), so unequal chunks and
empty chunks are allowed. A GEMV of kind "A" maps R(x) -> C(y): PE (i, j) holds
W[rows of C-chunk j, cols of R-chunk i]; kind "B" maps C(x) -> R(y): PE (i, j) holds
W[rows of R-chunk i, cols of C-chunk j].

The q/k/v output vector is ordered group by group (kv head g: its q heads, then k, then v);
q and k rows of every head are permuted so RoPE pairs (d, d + hd/2) sit next to each other.
Layout "groups" chunks the q/k/v rows (and the attention output feeding o_proj) by whole
kv-head groups, exactly the attention layout; layout "even" chunks them into near-equal
pieces (balanced SRAM) and the emitted code re-lays them out on the left column.

In the "even" layout on a tall enough mesh the rows split into two kinds (docs/mapping.md,
"Row kinds"): the *hub rows* `j % stride == 0` hold no weight tiles (row 0 runs the
residual stream and gathers the relayout, the first `num_kv_heads` hub rows run attention
and hold the KV cache), and every other row holds an equal share of every C-chunked
weight matrix. So a PE never reserves both a full weight share and the KV cache.

Units: every size is a number of elements.
"""

import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from compiler.frontend import ModelSpec

LAYOUTS = ("groups", "even", "spread")
MIN_HUB_STRIDE = 4   # hub rows only when at most one row in 4 is a hub


@dataclass(frozen=True)
class Chunking:
    """A vector split into consecutive chunks: chunk p is [bounds[p], bounds[p+1])."""

    axis: str                  # "R": chunk i on PE (i, 0); "C": chunk j on PE (0, j)
    bounds: tuple[int, ...]    # element offsets, non-decreasing, bounds[0] == 0

    @property
    def parts(self) -> int:
        """Number of chunks (pw for R, ph for C)."""
        return len(self.bounds) - 1

    @property
    def total(self) -> int:
        """Length of the whole vector (elements)."""
        return self.bounds[-1]

    def start(self, p: int) -> int:
        """First element of chunk p."""
        return self.bounds[p]

    def size(self, p: int) -> int:
        """Elements in chunk p."""
        return self.bounds[p + 1] - self.bounds[p]

    def sizes(self) -> np.ndarray:
        """int64 [parts]: elements in every chunk (a fresh array)."""
        return self._sizes.copy()

    @cached_property
    def _sizes(self) -> np.ndarray:
        return np.diff(np.asarray(self.bounds, np.int64))

    @cached_property
    def max_size(self) -> int:
        """Largest chunk (elements); 0 for an empty vector."""
        return int(self._sizes.max(initial=0))


@dataclass(frozen=True)
class MatrixTile:
    """How one weight matrix [M, K] (rows in output-vector order) is tiled over the PEs."""

    kind: str   # "A": R(x) -> C(y); "B": C(x) -> R(y)
    out: str    # name of the output vector's chunking
    inp: str    # name of the input vector's chunking


@dataclass(frozen=True)
class TilePlan:
    """Output of the tile pass (sizes in elements)."""

    spec: ModelSpec
    pw: int
    ph: int
    layout: str                            # "groups" | "even"
    vectors: dict = field(hash=False)      # name -> Chunking
    matrices: dict = field(hash=False)     # name -> MatrixTile
    head: bool = True                      # final norm + LM head on this mesh
    bands: "Bands | None" = field(default=None, hash=False)   # spread layout geometry
    shift: int = 0     # spread: ffn / vocabulary moved off the band rows (`outside_split`)
    batch: int = 1                         # users decoded together (compiler/batching.py)
    head_group: int = 0    # batched LM head in groups of this many users (0: all at once)

    def row_kind(self, j: int) -> tuple:
        """What sets row j's SRAM class besides its weights and attention: () outside the
        spread layout, else (K dims, V dims, top) of the row (docs/mapping.md, "Spread
        layout"), `top` 0 for most rows, 1 on a band's first row, 2 on row 0 (which also
        holds the R-layout weights: RMSNorm weights, biases of o_proj and down)."""
        if self.bands is None:
            return ()
        r = self.bands.local(j)
        if r < 0:
            return (0, 0, 0)
        return (2 * int(self.bands.kp[r]), int(self.bands.nv[r]), 2 if j == 0 else int(r == 0))

    def weight_row(self, j: int) -> bool:
        """True when row j holds tiles of the C-chunked weight matrices (or may)."""
        return bool(self._weight_rows[j])

    def weight_rows(self) -> np.ndarray:
        """bool [ph]: rows holding weight tiles (every row in the groups layout)."""
        return self._weight_rows.copy()

    @cached_property
    def _weight_rows(self) -> np.ndarray:
        if self.layout in ("groups", "spread"):
            return np.ones(self.ph, bool)
        return ~hub_mask(self.ph, self.spec.num_kv_heads)

    def vec(self, name: str) -> Chunking:
        """The chunking of a vector by name."""
        return self.vectors[name]

    def groups_on_row(self, j: int) -> tuple[int, int]:
        """(first kv group, number of kv groups) handled by row j."""
        groups = self.vectors["groups"]
        return groups.start(j), groups.size(j)

    def heads_on_row(self, j: int) -> int:
        """Query heads whose attention row j computes."""
        return self.groups_on_row(j)[1] * self.spec.group_size

    def tile_shape(self, matrix: str, i: int, j: int) -> tuple[int, int]:
        """(m rows, k columns) of `matrix` held by PE (i, j)."""
        tile = self.matrices[matrix]
        out, inp = self.vectors[tile.out], self.vectors[tile.inp]
        if tile.kind == "A":
            return out.size(j), inp.size(i)
        return out.size(i), inp.size(j)

    def mpad(self, matrix: str) -> int:
        """Column stride of `matrix`'s tiles in SRAM: the largest row count over PEs."""
        return self.vectors[self.matrices[matrix].out].max_size

    def tile_stride(self, matrix: str, j: int) -> int:
        """Column stride of `matrix`'s tiles on row j: `mpad`, except the spread layout's
        q/k/v tiles, packed with the row's own chunk (rows of one kind share it), and its
        gate/up and LM head tiles, padded to the largest chunk of the row's side (band
        rows or rows outside the bands, `side_stride`)."""
        if self.bands is not None and matrix == "qkv":
            return self.vec("qkv").size(j)
        if self.bands is not None and matrix in ("gu", "lm_head"):
            return self.side_stride(matrix, self.bands.local(j) < 0, j == 0)
        return self.mpad(matrix)

    def side_max(self, vector: str, outside: bool, top: bool = False) -> int:
        """Largest chunk of a C vector over the band rows (or the rows outside the bands,
        `outside`; or row 0 alone, `top`: its SRAM class holds only it) of the spread
        layout; the largest chunk over all rows elsewhere."""
        if self.bands is None:
            return self.vec(vector).max_size
        sizes = self.vec(vector)._sizes
        part = sizes[:1] if top else sizes[self.bands.rows:] if outside \
            else sizes[:self.bands.rows]
        return int(part.max(initial=0))

    def side_stride(self, matrix: str, outside: bool, top: bool = False) -> int:
        """Column stride of a GEMV-A matrix's tiles on one side of the bands (`side_max`
        of its output vector): the spread layout sizes band rows, row 0 and the rows
        outside the bands apart."""
        return self.side_max(self.matrices[matrix].out, outside, top)

    def kmax(self, matrix: str) -> int:
        """Largest column count of `matrix`'s tiles over PEs."""
        return self.vectors[self.matrices[matrix].inp].max_size

    @property
    def max_heads(self) -> int:
        """Largest number of query heads on one row."""
        return self.vectors["groups"].max_size * self.spec.group_size

    @property
    def group_len(self) -> int:
        """Elements of one kv group in the q/k/v vector: (group_size + 2) * head_dim."""
        return (self.spec.group_size + 2) * self.spec.head_dim


@dataclass(frozen=True, eq=False)
class Bands:
    """Geometry of the spread layout (docs/mapping.md, "Spread layout").

    kv group g owns the aligned band of rows [g * size, (g + 1) * size) (`size` a power of
    two, `groups * size <= ph`). Its head dims are split over the band's rows: the RoPE
    pairs (p, p + hd/2) of the keys (and of the group's q heads) and the value dims, in
    that order, each pair weighing 2 and each value dim 1, cut into `size` near-equal
    parts. Band-local row r holds pairs [kp0[r], kp0[r] + kp[r]) and value dims
    [v0[r], v0[r] + nv[r]); the rows holding pairs are the prefix [0, krows). Positions are
    spread over the columns: position t on column t mod pw. Units: elements.
    """

    size: int            # rows per band
    groups: int          # kv groups (bands)
    kp0: np.ndarray      # int64 [size] first RoPE pair of each band-local row
    kp: np.ndarray       # int64 [size] pairs held
    v0: np.ndarray       # int64 [size] first value dim
    nv: np.ndarray       # int64 [size] value dims held

    @property
    def rows(self) -> int:
        """Rows of the mesh inside a band (the others hold no KV)."""
        return self.size * self.groups

    @property
    def krows(self) -> int:
        """Band-local rows holding key pairs (a prefix of the band)."""
        return int(np.count_nonzero(self.kp))

    def local(self, j: int) -> int:
        """Band-local index of row j, or -1 outside every band."""
        return j % self.size if j < self.rows else -1

    def group(self, j: int) -> int:
        """kv group of row j (-1 outside every band)."""
        return j // self.size if j < self.rows else -1

    def qkv_len(self, r: int, group_size: int) -> int:
        """q/k/v elements of band-local row r: its pairs of every q head and k, its v dims."""
        return (group_size + 1) * 2 * int(self.kp[r]) + int(self.nv[r])


def band_geometry(ph: int, kv_heads: int, head_dim: int) -> Bands | None:
    """The spread layout's bands on `ph` rows, or None when ph < kv_heads."""
    if ph < kv_heads or kv_heads < 1:
        return None
    size = 1
    while 2 * size * kv_heads <= ph:
        size *= 2
    half, weight = head_dim // 2, 2 * head_dim
    starts = np.concatenate([2 * np.arange(half), 2 * half + np.arange(head_dim)])
    row = starts * size // weight                  # band-local row of each unit
    # a band taller than hd leaves rows without units between used ones; compact the used
    # rows in order, so the rows holding pairs are a prefix (the score tree's rows) and
    # the empty rows are the band's last (identity when every row is used)
    row = np.unique(row, return_inverse=True)[1].reshape(-1)
    is_pair = np.arange(half + head_dim) < half
    kp = np.bincount(row[is_pair], minlength=size).astype(np.int64)
    nv = np.bincount(row[~is_pair], minlength=size).astype(np.int64)
    kp0 = np.concatenate([[0], np.cumsum(kp)[:-1]]).astype(np.int64)
    v0 = np.concatenate([[0], np.cumsum(nv)[:-1]]).astype(np.int64)
    return Bands(size, kv_heads, kp0, kp, v0, nv)


def chunk_bounds(total: int, parts: int) -> tuple[int, ...]:
    """Bounds of `total` elements split into `parts` near-equal chunks (larger ones first)."""
    return _bounds(_chunk_sizes(total, parts))


def _chunk_sizes(total: int, parts: int) -> np.ndarray:
    """int64 [parts]: sizes of `chunk_bounds`."""
    base, extra = divmod(total, parts)
    sizes = np.full(parts, base, np.int64)
    sizes[:extra] += 1
    return sizes


def _bounds(sizes: np.ndarray) -> tuple[int, ...]:
    """Bounds (Python ints) of consecutive chunks of these sizes."""
    return (0, *np.cumsum(sizes).tolist())


def scaled(bounds: tuple[int, ...], factor: int) -> tuple[int, ...]:
    """Bounds of a chunking whose every unit is `factor` elements."""
    return tuple((np.asarray(bounds, np.int64) * factor).tolist())


def masked_bounds(total: int, mask: np.ndarray) -> tuple[int, ...]:
    """Bounds of `total` split near-equally over the rows where `mask` is true (others 0)."""
    sizes = np.zeros(len(mask), np.int64)
    rows = np.flatnonzero(mask)
    sizes[rows] = _chunk_sizes(total, len(rows))
    return _bounds(sizes)


def hub_stride(ph: int, kv_heads: int) -> int:
    """Row stride of the hub rows: the largest power of two leaving >= kv_heads hubs.

    0 (no hub rows: every row holds weights, attention on the first rows) when that
    stride is below MIN_HUB_STRIDE, i.e. when hubs would take over a quarter of the rows.
    """
    stride = 1
    while 2 * stride < ph and -(-ph // (2 * stride)) >= kv_heads:
        stride *= 2
    return stride if stride >= MIN_HUB_STRIDE else 0


def hub_mask(ph: int, kv_heads: int) -> np.ndarray:
    """bool [ph]: the hub rows of the even layout (rows j % stride == 0)."""
    stride = hub_stride(ph, kv_heads)
    if stride == 0:
        return np.zeros(ph, bool)
    return np.arange(ph) % stride == 0


def attention_rows(ph: int, kv_heads: int, layout: str) -> np.ndarray:
    """bool [ph]: rows that run attention (hold kv groups)."""
    mask = np.zeros(ph, bool)
    if layout == "groups" or hub_stride(ph, kv_heads) == 0:
        mask[:min(ph, kv_heads)] = True
        return mask
    hubs = np.flatnonzero(hub_mask(ph, kv_heads))
    mask[hubs[:kv_heads]] = True
    return mask


def tile(spec: ModelSpec, pw: int, ph: int, layout: str = "groups", head: bool = True,
         shift: int = 0) -> TilePlan:
    """The tile pass: chunk every vector over a pw x ph rectangle (see module docstring).

    `head`: whether this mesh runs the final norm and LM head (the last wafer of a system).
    `shift` (spread layout): how far the ffn and vocabulary rows move off the band rows
    onto the rows outside the bands (`outside_split`; 0: near-equal over all rows).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if spec.head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {spec.head_dim}")
    if layout == "spread":
        return _tile_spread(spec, pw, ph, head, shift)
    if layout == "groups":
        groups = chunk_bounds(spec.num_kv_heads, ph)
        wrows = np.ones(ph, bool)
    else:
        groups = masked_bounds(spec.num_kv_heads, attention_rows(ph, spec.num_kv_heads, layout))
        wrows = ~hub_mask(ph, spec.num_kv_heads)
    qkv_len = spec.q_dim + 2 * spec.kv_dim
    ffn = masked_bounds(spec.intermediate_size, wrows)
    vectors = {
        "hidden": Chunking("R", chunk_bounds(spec.hidden_size, pw)),
        "groups": Chunking("C", groups),
        "qkv_attn": Chunking("C", scaled(groups, (spec.group_size + 2) * spec.head_dim)),
        "heads_attn": Chunking("C", scaled(groups, spec.group_size * spec.head_dim)),
        "ffn": Chunking("C", ffn),
        "gu": Chunking("C", scaled(ffn, 2)),
        "vocab": Chunking("C", masked_bounds(spec.vocab_size if head else 0, wrows)),
    }
    if layout == "groups":
        vectors["qkv"] = vectors["qkv_attn"]
        vectors["attn"] = vectors["heads_attn"]
    else:
        vectors["qkv"] = Chunking("C", masked_bounds(qkv_len, wrows))
        vectors["attn"] = Chunking("C", masked_bounds(spec.q_dim, wrows))
    matrices = {
        "qkv": MatrixTile("A", "qkv", "hidden"),
        "o": MatrixTile("B", "hidden", "attn"),
        "gu": MatrixTile("A", "gu", "hidden"),
        "down": MatrixTile("B", "hidden", "ffn"),
        "lm_head": MatrixTile("A", "vocab", "hidden"),
    }
    from compiler import moe  # moe builds on this module
    moe.extend_tiles(spec, ph, vectors, matrices, wrows)
    return TilePlan(spec, pw, ph, layout, vectors, matrices, head)


def max_shift(spec: ModelSpec, ph: int, head: bool) -> int:
    """Largest `shift` of `outside_split` on `ph` rows (0 when no row lies outside the
    bands): every vocabulary row, then every ffn row, on the rows outside the bands."""
    bands = band_geometry(ph, spec.num_kv_heads, spec.head_dim)
    outside = 0 if bands is None else ph - bands.rows
    if outside == 0:
        return 0
    vocab = spec.vocab_size if head else 0
    return (-(-vocab // outside) - vocab // ph) * bool(vocab) \
        + -(-spec.intermediate_size // outside) - spec.intermediate_size // ph


def outside_split(total: int, ph: int, rows: int, per_row: int | None) -> tuple[int, ...]:
    """Bounds of `total` over `ph` rows: near-equal over all rows when `per_row` is None,
    else `per_row` elements on each of the rows `rows..ph-1` outside the bands (at most
    the whole vector) and the rest near-equal over the band rows `0..rows-1`, the larger
    chunks last (row 0 also holds the R-layout weights, so it takes a smaller chunk)."""
    if per_row is None or rows >= ph:
        return chunk_bounds(total, ph)
    out = min(total, per_row * (ph - rows))
    sizes = np.concatenate([_chunk_sizes(total - out, rows)[::-1],
                            _chunk_sizes(out, ph - rows)])
    return _bounds(sizes)


def shift_rows(spec: ModelSpec, ph: int, head: bool, shift: int) -> tuple:
    """(vocabulary, ffn) elements per row outside the bands for `shift` (None: the
    near-equal split). Shift s first moves vocabulary rows (the LM head runs once per
    token, the ffn once per layer), one more per outside row per step, then ffn rows;
    any s > 0 also gives the smaller band chunks to the first band rows (`outside_split`:
    row 0 holds the R-layout weights besides)."""
    if shift <= 0:
        return None, None
    bands = band_geometry(ph, spec.num_kv_heads, spec.head_dim)
    outside = ph - bands.rows
    vocab = spec.vocab_size if head else 0
    v0, v_all = vocab // ph, -(-vocab // outside)
    nv = (v_all - v0) if vocab else 0
    if shift <= nv:   # ffn at its near-equal share outside, row 0 the smaller band chunk
        return v0 + shift, spec.intermediate_size // ph
    return (v_all if vocab else None), spec.intermediate_size // ph + shift - nv


def _tile_spread(spec: ModelSpec, pw: int, ph: int, head: bool, shift: int = 0) -> TilePlan:
    """The tile pass of the spread layout: q/k/v and the attention output chunked by the
    head dims each band row holds (Bands); ffn and vocabulary near-equal over all rows,
    or (`shift` > 0) partly moved onto the rows outside the bands (`shift_rows`), which
    hold no KV; the hidden vector near-equal over the columns."""
    bands = band_geometry(ph, spec.num_kv_heads, spec.head_dim)
    if bands is None:
        raise ValueError(f"the spread layout needs at least num_kv_heads "
                         f"({spec.num_kv_heads}) rows, the mesh has {ph}")
    qkv, attn, groups = (np.zeros(ph, np.int64) for _ in range(3))
    for j in range(bands.rows):
        r = bands.local(j)
        qkv[j] = bands.qkv_len(r, spec.group_size)
        attn[j] = spec.group_size * bands.nv[r]
        groups[j] = 1 if r == 0 else 0
    shift = min(max(0, shift), max_shift(spec, ph, head))
    v_row, f_row = shift_rows(spec, ph, head, shift)
    ffn = outside_split(spec.intermediate_size, ph, bands.rows, f_row)
    vocab = outside_split(spec.vocab_size if head else 0, ph, bands.rows, v_row)
    vectors = {
        "hidden": Chunking("R", chunk_bounds(spec.hidden_size, pw)),
        "groups": Chunking("C", _bounds(groups)),
        "qkv": Chunking("C", _bounds(qkv)),
        "attn": Chunking("C", _bounds(attn)),
        "ffn": Chunking("C", ffn),
        "gu": Chunking("C", scaled(ffn, 2)),
        "vocab": Chunking("C", vocab),
    }
    vectors["qkv_attn"], vectors["heads_attn"] = vectors["qkv"], vectors["attn"]
    matrices = {
        "qkv": MatrixTile("A", "qkv", "hidden"),
        "o": MatrixTile("B", "hidden", "attn"),
        "gu": MatrixTile("A", "gu", "hidden"),
        "down": MatrixTile("B", "hidden", "ffn"),
        "lm_head": MatrixTile("A", "vocab", "hidden"),
    }
    from compiler import moe  # moe builds on this module
    moe.extend_tiles(spec, ph, vectors, matrices, np.ones(ph, bool))
    return TilePlan(spec, pw, ph, "spread", vectors, matrices, head, bands, shift)


# --------------------------------------------------------------------------- row orders


def rope_pair_order(head_dim: int) -> np.ndarray:
    """Permutation of one head's dims so RoPE pairs are adjacent: [0, hd/2, 1, hd/2+1, ...]."""
    half = head_dim // 2
    order = np.empty(head_dim, np.int64)
    order[0::2] = np.arange(half)
    order[1::2] = np.arange(half) + half
    return order


def qkv_row_order(spec: ModelSpec, plan: "TilePlan | None" = None) -> np.ndarray:
    """Rows of concat(q_proj, k_proj, v_proj) in q/k/v-vector order: group by group, or
    in the spread layout row by row (`spread_qkv_order`)."""
    if plan is not None and plan.bands is not None:
        return spread_qkv_order(plan)
    hd, pair = spec.head_dim, rope_pair_order(spec.head_dim)
    rows = []
    for g in range(spec.num_kv_heads):
        for r in range(spec.group_size):
            rows.append((g * spec.group_size + r) * hd + pair)
        rows.append(spec.q_dim + g * hd + pair)
        rows.append(spec.q_dim + spec.kv_dim + g * hd + np.arange(hd))
    return np.concatenate(rows)


def row_pairs(bands: Bands, r: int, half: int) -> np.ndarray:
    """Head dims of band-local row r's RoPE pairs, pairs adjacent: [p, p + hd/2, ...]."""
    p = np.arange(bands.kp0[r], bands.kp0[r] + bands.kp[r])
    return np.stack([p, p + half], axis=1).reshape(-1)


def row_values(bands: Bands, r: int) -> np.ndarray:
    """Value dims held by band-local row r."""
    return np.arange(bands.v0[r], bands.v0[r] + bands.nv[r])


def spread_qkv_order(plan: TilePlan) -> np.ndarray:
    """Spread layout: rows of concat(q, k, v) in q/k/v-vector order. Band row r of group
    g holds, in order, its RoPE pairs of q head 0 .. group_size - 1, its pairs of k, its
    value dims (rows outside every band hold none)."""
    spec, bands = plan.spec, plan.bands
    hd, half, gs = spec.head_dim, spec.head_dim // 2, spec.group_size
    rows = []
    for j in range(bands.rows):
        g, r = bands.group(j), bands.local(j)
        dims = row_pairs(bands, r, half)
        for h in range(gs):
            rows.append((g * gs + h) * hd + dims)
        rows.append(spec.q_dim + g * hd + dims)
        rows.append(spec.q_dim + spec.kv_dim + g * hd
                    + np.arange(bands.v0[r], bands.v0[r] + bands.nv[r]))
    return np.concatenate(rows).astype(np.int64)


def attn_col_order(plan: TilePlan) -> np.ndarray:
    """Columns of o_proj in attention-output order: the identity, or in the spread layout
    per band row its value dims of q head 0, then of head 1, ... of its group."""
    spec, bands = plan.spec, plan.bands
    if bands is None:
        return np.arange(spec.q_dim)
    cols = []
    for j in range(bands.rows):
        g, r = bands.group(j), bands.local(j)
        dims = np.arange(bands.v0[r], bands.v0[r] + bands.nv[r])
        for h in range(spec.group_size):
            cols.append((g * spec.group_size + h) * spec.head_dim + dims)
    return np.concatenate(cols).astype(np.int64)


def gu_row_order(plan: TilePlan) -> np.ndarray:
    """Rows of concat(gate_proj, up_proj) in gu-vector order: per row j gate_j then up_j."""
    ffn, f = plan.vec("ffn"), plan.spec.intermediate_size
    rows = []
    for j in range(plan.ph):
        part = np.arange(ffn.start(j), ffn.start(j + 1))
        rows.extend([part, part + f])
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


# --------------------------------------------------------------------------- verify / dump


def verify_tiles(plan: TilePlan) -> None:
    """Check the tile plan: chunkings cover their vectors, tiles partition every matrix."""
    spec = plan.spec
    totals = {"hidden": spec.hidden_size, "groups": spec.num_kv_heads,
              "qkv": spec.q_dim + 2 * spec.kv_dim, "qkv_attn": spec.q_dim + 2 * spec.kv_dim,
              "heads_attn": spec.q_dim, "attn": spec.q_dim, "ffn": spec.intermediate_size,
              "gu": 2 * spec.intermediate_size, "vocab": spec.vocab_size if plan.head else 0}
    for name, total in totals.items():
        chunks = plan.vec(name)
        parts = plan.pw if chunks.axis == "R" else plan.ph
        assert chunks.parts == parts, f"{name}: {chunks.parts} chunks, expected {parts}"
        assert chunks.bounds[0] == 0 and chunks.total == total, f"{name}: covers {total}?"
        assert (chunks.sizes() >= 0).all(), f"{name}: negative chunk"
    if plan.layout == "groups":
        assert plan.vec("qkv") == plan.vec("qkv_attn") and plan.vec("attn") == plan.vec(
            "heads_attn"), "groups layout: q/k/v chunks must be whole kv groups"
    for name, tile_ in plan.matrices.items():
        rows, cols = plan.vec(tile_.out), plan.vec(tile_.inp)
        assert {rows.axis, cols.axis} == {"R", "C"}, f"{name}: needs one R and one C vector"
        assert (tile_.kind == "A") == (rows.axis == "C"), f"{name}: kind/axes mismatch"
        area = sum(plan.tile_shape(name, i, j)[0] * plan.tile_shape(name, i, j)[1]
                   for i in range(plan.pw) for j in range(plan.ph))
        assert area == rows.total * cols.total, f"{name}: tiles do not partition the matrix"
    order = qkv_row_order(spec, plan)
    assert np.array_equal(np.sort(attn_col_order(plan)), np.arange(spec.q_dim)), \
        "attention output order not a perm"
    assert np.array_equal(np.sort(order), np.arange(totals["qkv"])), "qkv order not a perm"
    gu = gu_row_order(plan)
    assert np.array_equal(np.sort(gu), np.arange(totals["gu"])), "gu order not a perm"


def plan_to_dict(plan: TilePlan) -> dict:
    """A JSON-ready description of the tile plan."""
    vectors = {name: {"axis": c.axis, "bounds": list(c.bounds), "max_chunk": c.max_size}
               for name, c in plan.vectors.items()}
    matrices = {}
    for name, t in plan.matrices.items():
        matrices[name] = {"kind": t.kind, "out": t.out, "in": t.inp,
                          "column_stride": plan.mpad(name), "max_columns": plan.kmax(name),
                          "shape": [plan.vec(t.out).total, plan.vec(t.inp).total]}
    return {"pw": plan.pw, "ph": plan.ph, "layout": plan.layout, "shift": plan.shift,
            "model": {"hidden_size": plan.spec.hidden_size, "num_layers": plan.spec.num_layers,
                      "num_heads": plan.spec.num_heads, "num_kv_heads": plan.spec.num_kv_heads,
                      "head_dim": plan.spec.head_dim,
                      "intermediate_size": plan.spec.intermediate_size,
                      "vocab_size": plan.spec.vocab_size},
            "vectors": vectors, "matrices": matrices}


def dump_tiles(plan: TilePlan) -> str:
    """The tile plan as indented JSON text."""
    return json.dumps(plan_to_dict(plan), indent=2) + "\n"
