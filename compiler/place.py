"""Place pass: TilePlan -> the SRAM layout of every PE (per-class address maps, overlays).

A PE reserves only the buffers its code touches. PEs fall into a few *classes*, keyed by
`(weights, attn, left, hub)`: the row holds weight tiles, the row runs attention (holds
kv groups), the PE is on the left column, the PE is (0, 0). Every class lays its buffers
out in the same section order, skipping the sections it does not use, so addresses are
the same on every PE of a class (region code uses immediates; a role fixes the class):

1. common (every PE): H, XN, SS, JUNK (stride-0 sink of unwanted multicast pieces),
   ACC, XB, PM (spread layout, band rows), and the R-layout weights used on the top row
   (RMSNorm weights, o/down biases, final norm; a hidden chunk each, on row 0 only in the
   spread layout);
2. weights (rows holding weight tiles): per layer the qkv, o, gu, down tiles (column-major,
   column stride `mpad` = the largest tile row count), C-layout biases; then the LM head;
3. attention (rows with kv groups): the KV cache per layer and kv group of the row, K and
   V as [slots, head_dim] (`slots = ceil(max_context / pw)`; position t on PE
   (t mod pw, row), slot t div pw), QKV, scores SC, MX, MXT, OL, RL, ATT;
4. left column: COS, SIN (attention rows only), TMP, and the relayout buffer G (even
   layout) *overlaid* on TMP (G is live only during a relayout, TMP only in RoPE/SwiGLU).

A batched plan whose LM head runs in groups of users adds HACC and, off the left column,
LOG, and packs buffers with disjoint lifetimes into the region at ACC
(compiler/batching.py). A buffer's size is the largest any PE of its class needs.
`FitError` when the largest class exceeds the PE's SRAM; the message gives the required
and available bytes per PE by kind and the smallest square mesh that would fit. Sizes
are elements unless a name says bytes.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from compiler import moe
from compiler.batching import PACKED, batch_entries, batch_fit_note, grouped
from compiler.tile import Chunking, TilePlan, chunk_bounds, max_shift, tile
from emulator.hw.dtypes import BYTES as DTYPE_BYTES
from emulator.hw.dtypes import weight_format
from emulator.hw.errors import FitError
from emulator.hw.mesh import MeshConfig

DEFAULT_MAX_CONTEXT = 256
MAX_SQUARE_SEARCH = 2048
MAX_PIECES = 16          # multicast pieces of a relayout (docs/mapping.md)
OVERLAYS = {"G": "TMP"}   # buffer -> buffer whose address it shares
CLASS_FIELDS = ("weights", "attention", "left", "hub", "kind")
# What each scratch buffer holds (emu explain, emu map).
BUFFER_DOC = {
    "H": "residual stream: this column's R chunk of h (top row)",
    "XN": "normalised x (R chunk), multicast down the column for GEMV-A",
    "SS": "RMSNorm sum of squares, then 1/rms",
    "ACC": "GEMV accumulator (partial sums, then results: q/k/v, gate/up, logits, "
           "o_proj / down)",
    "QKV": "q/k/v of the row's kv groups (group by group), multicast along the row",
    "XB": "input of o_proj / down (attention output or SiLU(gate)*up)",
    "ATT": "attention output of the row's heads",
    "COS": "RoPE cos table of the position (host-written, left column)",
    "SIN": "RoPE sin table of the position (host-written, left column)",
    "TMP": "temporaries (RoPE products, SiLU)",
    "SC": "attention scores / softmax weights, one per head and KV slot",
    "MX": "per-head score maximum",
    "MXT": "received maxima in the max-reduce tree",
    "OL": "per-head weighted values o and softmax sums l",
    "RL": "1 / l per head",
    "G": "relayout buffer (even layout): the whole q/k/v or attention vector",
    "PM": "spread layout: per-head local score maxima, then scores / softmax weights of "
          "the active KV slots",
    "MO": "spread layout: softmax state [max | sum | weighted values] of this PE's slots",
    "MT": "spread layout: softmax state received in the row's merge tree",
    "NM": "spread layout: merged maxima",
    "AA": "spread layout: rescale factors e^(m1-m), e^(m2-m) of a merge",
    "HACC": "batched LM head in groups: one group's logit accumulator (inside ACC's "
            "region)",
    "LOG": "batched LM head in groups: the logits of group g, kept on column 1 + g",
}



@dataclass(frozen=True)
class Buffer:
    """One SRAM buffer: first element `addr`, `words` elements, `kind` weight|kv|scratch."""

    addr: int
    words: int
    kind: str


@dataclass(frozen=True)
class Placement:
    """Output of the place pass: per-class SRAM address maps (elements) and the budget."""

    plan: TilePlan
    dtype: str
    max_context: int                       # positions the KV cache can hold
    slots: int                             # KV positions per PE: ceil(max_context / pw)
    buffers: dict = field(hash=False)      # name -> Buffer of the first class holding it
    total_words: int = 0                   # SRAM elements of the largest class
    maps: dict = field(default=None, hash=False)     # class key -> {name: Buffer}
    class_words: dict = field(default=None, hash=False)  # class key -> elements
    capacity: int = 0      # largest max_context whose KV fits beside the weights/scratch
    weight_dtype: str | None = None   # storage format of the MLP / expert tiles (None: dtype)
    class_bytes: dict = field(default=None, hash=False)   # class key -> SRAM bytes

    def addr(self, name: str, key: tuple | None = None) -> int:
        """First element of buffer `name` (in class `key`, or the first class holding it)."""
        return (self.buffers if key is None else self.maps[key])[name].addr

    def addr_at(self, name: str, x: int, y: int) -> int:
        """First element of buffer `name` on PE (x, y)."""
        return self.maps[pe_class(self.plan, x, y)][name].addr

    @property
    def total_bytes(self) -> int:
        """SRAM bytes per PE the largest class needs (MLP / expert tiles at the weight
        format's bits, everything else at the dtype's bytes)."""
        if self.class_bytes:
            return max(self.class_bytes.values())
        return self.total_words * DTYPE_BYTES[self.dtype]


def row_attention(plan: TilePlan, y: int) -> bool:
    """Row y holds KV cache (kv groups; in the spread layout: lies in a band)."""
    if plan.bands is not None:
        return plan.bands.local(y) >= 0
    return plan.vec("groups").size(y) > 0


def pe_class(plan: TilePlan, x: int, y: int) -> tuple:
    """Class key (weights, attn, left, hub, kind) of PE (x, y) (`kind`: TilePlan.row_kind)."""
    return (plan.weight_row(y), row_attention(plan, y), x == 0, x == 0 and y == 0,
            plan.row_kind(y))


def classes(plan: TilePlan) -> list[tuple]:
    """Every class key present on the mesh (row kinds x {left column, other columns})."""
    kinds = [(plan.weight_row(j), row_attention(plan, j), plan.row_kind(j))
             for j in range(plan.ph)]
    keys = {(w, a, False, False, k) for w, a, k in set(kinds)} if plan.pw > 1 else set()
    keys |= {(w, a, True, False, k) for w, a, k in set(kinds[1:])}
    w, a, k = kinds[0]
    keys.add((w, a, True, True, k))
    return sorted(keys)


def default_max_context(spec) -> int:
    """KV positions held for functional runs: min(max_position_embeddings, 256)."""
    return min(spec.max_position_embeddings, DEFAULT_MAX_CONTEXT)


# --------------------------------------------------------------------------- relayout geometry


def multicast_pieces(dst: Chunking) -> list[tuple[int, int]]:
    """[start, end) of the messages (0, 0) multicasts down column 0 in a relayout to `dst`.

    The nonempty chunks of `dst` when there are at most MAX_PIECES of them, else
    MAX_PIECES near-equal pieces. A receiver keeps the pieces overlapping its chunk and
    sinks the others into JUNK with stride 0.
    """
    sizes = dst.sizes()
    if np.count_nonzero(sizes) <= MAX_PIECES:
        return [(dst.bounds[j], dst.bounds[j + 1]) for j in range(dst.parts) if sizes[j]]
    b = chunk_bounds(dst.total, MAX_PIECES)
    return [(b[p], b[p + 1]) for p in range(MAX_PIECES) if b[p + 1] > b[p]]


def relayouts(plan: TilePlan) -> dict:
    """name -> (source chunking, destination chunking) of the even layout's relayouts."""
    if plan.layout != "even":
        return {}
    return {"qkv": (plan.vec("qkv"), plan.vec("qkv_attn")),
            "attn": (plan.vec("heads_attn"), plan.vec("attn"))}


def piece_bounds(pieces: list) -> tuple[np.ndarray, np.ndarray]:
    """int64 [pieces] starts and ends of `multicast_pieces`."""
    return (np.array([a for a, _ in pieces], np.int64).reshape(-1),
            np.array([b for _, b in pieces], np.int64).reshape(-1))


def kept_range(pieces: list, dst: Chunking) -> tuple[np.ndarray, np.ndarray]:
    """int64 [ph] first and last index of the pieces overlapping each row's chunk of `dst`
    (the pieces it keeps: sorted and disjoint, so they are consecutive; first > last when
    its chunk is empty)."""
    starts, ends = piece_bounds(pieces)
    bounds = np.asarray(dst.bounds, np.int64)
    lo, hi = bounds[:-1], bounds[1:]
    first = np.searchsorted(ends, lo, side="right")
    last = np.where(hi > lo, np.searchsorted(starts, hi, side="left") - 1, first - 1)
    return first, last


def subtree_ends(ph: int) -> np.ndarray:
    """int64 [ph]: one past the last row of each row's subtree in the column gather tree
    (row 0's is the whole column)."""
    j = np.arange(ph)
    out = np.minimum(j + (j & -j), ph)
    out[:1] = ph
    return out


def g_words(plan: TilePlan) -> np.ndarray:
    """int64 [ph]: elements of G row j's left PE needs (gather subtree or kept pieces)."""
    need = np.zeros(plan.ph, np.int64)
    for src, dst in relayouts(plan).values():
        pieces = multicast_pieces(dst)
        (starts, ends), (first, last) = piece_bounds(pieces), kept_range(pieces, dst)
        kept = first <= last
        recv = np.zeros(plan.ph, np.int64)
        recv[kept] = ends[last[kept]] - starts[first[kept]]
        bounds = np.asarray(src.bounds, np.int64)
        gather = bounds[subtree_ends(plan.ph)] - bounds[:-1]
        row = np.maximum(recv, gather)
        row[:1] = max(src.total, dst.total)
        need = np.maximum(need, row)
    return need


# --------------------------------------------------------------------------- sections


def common_entries(plan: TilePlan, slots: int = 0, outside: bool = False,
                   top: bool = True) -> list[tuple[str, int, str]]:
    """Buffers of every PE: scratch of the GEMVs and the top row's R-layout weights.

    H, XN, SS, JUNK and ACC come first, at the same address on every PE (the host reads
    the logits from ACC); then XB; ACC and XB are sized for the row's side of the bands
    (`outside`: rows outside the bands of the spread layout, whose ffn and LM head
    chunks may be larger, `TilePlan.side_max`); then, on band rows only, PM (spread), at
    one address on every band row (the step parameters name it; rows outside the bands
    run no attention); then the R-layout weights (RMSNorm weights, o / down biases, the
    final norm), which only the top row uses: the spread layout reserves them on row 0
    only (`top`), the others on every PE."""
    spec, hid = plan.spec, plan.vec("hidden").max_size
    vocab = plan.side_max("vocab", outside)
    acc = max(plan.side_max("gu", outside), 0 if grouped(plan) else vocab, plan.mpad("o"),
              plan.mpad("qkv") if plan.layout == "even" else 0)
    xb = max(plan.vec("attn").max_size if plan.layout in ("even", "spread") else 0,
             plan.side_max("ffn", outside))
    need = moe.scratch_sizes(plan)
    out = [("H", hid, "scratch"), ("XN", max(hid, need.get("XN", 0)), "scratch"),
           ("SS", 1, "scratch"), ("JUNK", 1, "scratch")]
    out += moe.common_entries(plan)       # LG, SEL: one address on every PE
    out.append(("ACC", max(acc, need.get("ACC", 0)), "scratch"))
    if grouped(plan):   # the LM head's accumulator of one group (compiler/batching.py)
        out.append(("HACC", plan.head_group * vocab, "scratch"))
    out.append(("XB", max(xb, need.get("XB", 0)), "scratch"))
    if plan.bands is not None and not outside and spec.num_layers:
        out.append(("PM", spec.group_size * (1 + slots), "scratch"))
    if plan.bands is not None and not top:
        return out
    for layer in range(spec.num_layers):
        p = f"L{layer}."
        out += [(p + "norm_in", hid, "weight"), (p + "norm_post", hid, "weight")]
        if spec.o_proj_bias:
            out.append((p + "o_bias", hid, "weight"))
        if spec.mlp_bias:
            out.append((p + "down_bias", hid, "weight"))
    if plan.head:
        out.append(("norm_final", hid, "weight"))
    return out


def weight_entries(plan: TilePlan, kind: tuple = (),
                   outside: bool = False) -> list[tuple[str, int, str]]:
    """Weight tiles of the C-chunked matrices (rows holding weights). In the spread layout
    the q/k/v and o tiles are sized for the row kind (`TilePlan.row_kind`), the gate/up,
    down and LM head tiles for the row's side of the bands (`outside`)."""
    spec, out = plan.spec, []
    sizes = {m: plan.kmax(m) * plan.mpad(m) for m in ("qkv", "o", "gu", "down")}
    lm_head = plan.kmax("lm_head") * plan.mpad("lm_head")
    if plan.bands is not None:
        k2, nv, top = kind
        m_qkv = (spec.group_size + 1) * k2 + nv
        top = top == 2   # row 0: a class of its own
        sizes["qkv"] = plan.kmax("qkv") * m_qkv
        sizes["o"] = spec.group_size * nv * plan.mpad("o")
        sizes["gu"] = plan.kmax("gu") * plan.side_stride("gu", outside, top)
        sizes["down"] = plan.side_max("ffn", outside, top) * plan.mpad("down")
        lm_head = plan.kmax("lm_head") * plan.side_stride("lm_head", outside, top)
    for layer in range(spec.num_layers):
        p = f"L{layer}."
        sparse = spec.is_sparse(layer)
        mlp = () if sparse else ("gu", "down")
        out += [(p + m, sizes[m], "weight") for m in ("qkv", "o", *mlp)]
        if sparse:
            out += moe.layer_weight_entries(plan, layer)
        if spec.attention_bias:
            out.append((p + "qkv_bias", plan.mpad("qkv"), "weight"))
        if spec.mlp_bias and not sparse:
            out.append((p + "gu_bias", plan.mpad("gu"), "weight"))
    if plan.head:
        out.append(("lm_head", lm_head, "weight"))
    return out


def attention_entries(plan: TilePlan, slots: int) -> list[tuple[str, int, str]]:
    """KV cache and attention scratch (rows with kv groups)."""
    spec, ng = plan.spec, plan.vec("groups").max_size
    hd, heads, out = spec.head_dim, plan.max_heads, []
    for layer in range(spec.num_layers):
        for a in range(ng):
            out += [(f"L{layer}.k{a}", hd * slots, "kv"), (f"L{layer}.v{a}", hd * slots, "kv")]
    out += [("QKV", ng * plan.group_len, "scratch"), ("SC", heads * slots, "scratch"),
            ("MX", heads, "scratch"), ("MXT", heads, "scratch"),
            ("OL", heads * (hd + 1), "scratch"), ("RL", heads, "scratch"),
            ("ATT", heads * hd, "scratch")]
    return out


def spread_attention_entries(plan: TilePlan, kind: tuple,
                             slots: int) -> list[tuple[str, int, str]]:
    """KV cache and attention scratch of a band row of the spread layout (kind: K dims,
    V dims, band top). K and V are dim-major, `slots + 1` elements per dim (the last slot
    takes the store of PEs not owning the new position); PM holds the heads' maxima then
    their scores [head][slot]; MO the merge state [max | sum | weighted values]."""
    spec, (k2, nv, _) = plan.spec, kind
    heads, out = spec.group_size, []
    for layer in range(spec.num_layers):
        sp = layer_slots(plan, layer, slots) + 1
        out += [(f"L{layer}.k", k2 * sp, "kv"), (f"L{layer}.v", nv * sp, "kv")]
        if spec.qk_norm and kind[2]:   # band top: 1/rms of each cached key
            out.append((f"L{layer}.rk", sp, "kv"))
    # qk-norm: the row's partial sums of squares ride along (every band row reserves them)
    out.append(("QKV", (heads + 1) * k2 + nv + (heads + 1) * spec.qk_norm, "scratch"))
    if nv:
        out += [("MO", heads * (2 + nv), "scratch"), ("MT", heads * (2 + nv), "scratch"),
                ("NM", heads, "scratch"), ("AA", 2 * heads, "scratch")]
    return out


def layer_slots(plan: TilePlan, layer: int, slots: int) -> int:
    """KV slots per PE of `layer`: `slots`, or for a sliding-window layer the ring of its
    `window` positions, ceil(min(window, max_context) / pw) (position t in ring entry
    t mod window, on column (t mod window) mod pw, slot (t mod window) div pw)."""
    window = plan.spec.window(layer)
    return slots if window is None else min(slots, -(-window // plan.pw))


def left_entries(plan: TilePlan, key: tuple, g_need: np.ndarray) -> list[tuple[str, int, str]]:
    """Left-column buffers of class `key`: RoPE tables, TMP and the overlaid G."""
    spec, attn = plan.spec, key[1] and plan.spec.num_layers > 0
    if plan.bands is not None:
        k2, nv, _ = key[4] if attn else (0, 0, 0)
        rope = (spec.group_size + 1) * k2 // 2
        out = [("COS", rope, "scratch"), ("SIN", rope, "scratch")] if rope else []
        if nv:
            out.append(("RL", spec.group_size, "scratch"))
        if k2 and spec.qk_norm:
            out += [(f"L{layer}.qkn", (spec.group_size + 1) * k2, "weight")
                    for layer in range(spec.num_layers)]
        if nv and spec.attention_sinks:
            out += [(f"L{layer}.sinks", spec.group_size, "weight")
                    for layer in range(spec.num_layers)]
        out.append(("TMP", max(4 * rope, plan.side_max("ffn", not attn),
                               moe.scratch_sizes(plan).get("TMP", 0)), "scratch"))
        return out + moe.left_entries(plan) + (moe.hub_entries(plan) if key[3] else [])
    rope = (spec.group_size + 1) * spec.head_dim // 2
    out = [("COS", rope, "scratch"), ("SIN", rope, "scratch")] if attn else []
    out.append(("TMP", max(4 * rope if attn else 0, plan.vec("ffn").max_size,
                           moe.scratch_sizes(plan).get("TMP", 0)), "scratch"))
    if plan.layout == "even":
        rows = ((plan.weight_rows() == key[0]) & ((plan.vec("groups").sizes() > 0) == key[1])
                & ((np.arange(plan.ph) == 0) == key[3]))
        out.append(("G", int(g_need[rows].max(initial=0)), "scratch"))
    # after G, which overlays TMP and may run past it
    return out + moe.left_entries(plan) + (moe.hub_entries(plan) if key[3] else [])


def class_entries(plan: TilePlan, key: tuple, slots: int, g_need: np.ndarray) -> list:
    """(name, elements, kind) of class `key`'s buffers in address order."""
    weights, attn, left = key[:3]
    outside = plan.bands is not None and not attn
    out = common_entries(plan, slots, outside, plan.bands is None or key[4][2] == 2)
    if weights:
        out += weight_entries(plan, key[4], outside)
    attn = attn and plan.spec.num_layers > 0   # a head-only program holds no KV
    if attn and plan.bands is not None:
        out += spread_attention_entries(plan, key[4], slots)
    elif attn:
        out += attention_entries(plan, slots)
    if left:
        out += left_entries(plan, key, g_need)
    elif grouped(plan):   # one head group's logits, kept on column 1 + g (batching.py)
        out.append(("LOG", plan.head_group * plan.side_max("vocab", outside), "scratch"))
    return out


def layout_class(entries: list) -> tuple[dict, int]:
    """({name: Buffer}, elements) with overlays sharing their partner's address."""
    buffers, addr = {}, 0
    for name, words, kind, *packed in entries:
        if packed:   # inside the region at ACC (compiler.batching.pack_entries)
            buffers[name] = Buffer(buffers["ACC"].addr + packed[0], words, kind)
            continue
        if name in OVERLAYS and OVERLAYS[name] in buffers:
            base = buffers[OVERLAYS[name]]
            buffers[name] = Buffer(base.addr, words, kind)
            addr = max(addr, base.addr + words)
            continue
        buffers[name] = Buffer(addr, words, kind)
        addr += words
    return buffers, addr


def quantized(name: str) -> bool:
    """Whether buffer `name` is stored in the weight format (`--weight-dtype`): the MLP
    and expert tiles (dense gate/up and down, every expert block), as gpt-oss's MXFP4
    checkpoints quantize; attention, router, norms and the LM head stay in the dtype."""
    return name.startswith("L") and name.rsplit(".", 1)[-1] in ("gu", "down", "experts")


def buffer_bytes(buffers: dict, dtype: str, weight_dtype: str | None) -> int:
    """SRAM bytes of one class's buffers: quantized tiles at the weight format's bits
    (rounded up to whole bytes), the rest at the dtype's bytes per element."""
    nbytes = DTYPE_BYTES[dtype]
    if weight_dtype is None:
        return sum(b.words for b in buffers.values()) * nbytes
    q = sum(b.words for n, b in buffers.items() if quantized(n))
    rest = sum(b.words for n, b in buffers.items() if not quantized(n))
    return rest * nbytes + math.ceil(q * weight_format(weight_dtype).bits_per_element / 8)


def class_maps(plan: TilePlan, max_context: int) -> tuple[dict, dict]:
    """(class key -> {name: Buffer}, class key -> elements) of every class on the mesh."""
    slots, g_need = -(-max_context // plan.pw), g_words(plan)
    maps, words = {}, {}
    for key in classes(plan):
        maps[key], words[key] = layout_class(batch_entries(plan, class_entries(
            plan, key, slots, g_need), slots))
    return maps, words


def required_words(plan: TilePlan, max_context: int) -> int:
    """SRAM elements per PE the plan needs (its largest class)."""
    return max(class_maps(plan, max_context)[1].values())


def place(plan: TilePlan, mesh: MeshConfig, dtype: str = "fp32",
          max_context: int | None = None, hint: bool = True,
          capacity: int | None = None, weight_dtype: str | None = None) -> Placement:
    """The place pass: assign addresses per class; FitError when SRAM is too small.

    `hint=False` leaves the smallest fitting square out of the FitError message (it is
    a scan over mesh sizes; callers that try another layout next skip it).
    `capacity`: the context reported as `Placement.capacity` (default: this plan's
    `fit_context`; the spread layout passes the best over its shifts, `spread_shift`).
    `weight_dtype`: the MLP / expert tiles' storage format (`buffer_bytes`).
    """
    spec = plan.spec
    max_context = default_max_context(spec) if max_context is None else max_context
    if max_context < 1:
        raise ValueError(f"max_context must be positive, got {max_context}")
    maps, words = class_maps(plan, max_context)
    union = {}
    for key in sorted(maps, key=lambda k: -words[k]):
        for name, buf in maps[key].items():
            union.setdefault(name, buf)
    if weight_dtype is not None:
        weight_dtype = weight_format(weight_dtype).name
    placement = Placement(plan, dtype, max_context, -(-max_context // plan.pw), union,
                          max(words.values()), maps, words,
                          fit_context(plan, mesh.sram_bytes // DTYPE_BYTES[dtype], "all",
                                      dtype, weight_dtype)
                          if capacity is None else capacity, weight_dtype,
                          {k: buffer_bytes(m, dtype, weight_dtype) for k, m in maps.items()}
                          if weight_dtype is not None else None)
    if placement.total_bytes > mesh.sram_bytes:
        raise FitError(_fit_message(placement, mesh, hint))
    return placement


def fit_context(plan: TilePlan, sram_words: int, side: str = "all", dtype: str = "fp32",
                weight_dtype: str | None = None) -> int:
    """The largest max_context (a multiple of pw) whose per-class SRAM fits `sram_words`
    elements per PE: every class needs `a + b * slots` elements (KV and score buffers
    grow linearly with the slots per PE), so the slots that fit are
    min over classes of floor((sram_words - a) / b); 0 when nothing fits.
    `side` "band" / "outside" takes the minimum over the classes of the band rows / of
    the rows outside the bands only (spread layout; "all": every class). With a
    `weight_dtype` the same in bytes (`buffer_bytes`, budget sram_words * bytes(dtype)).
    A sliding-window layer's ring stops growing at its window, so the linear model is
    conservative when the window exceeds pw."""
    return side_contexts(plan, sram_words, dtype, weight_dtype)[side]


def side_contexts(plan: TilePlan, sram_words: int, dtype: str = "fp32",
                  weight_dtype: str | None = None) -> dict:
    """{"all", "band", "outside"} -> `fit_context` of that side, from one pair of class
    maps (rows outside the bands exist only in the spread layout; elsewhere every class
    counts as "band"); in bytes with a `weight_dtype`."""
    if weight_dtype is None:
        one, two = class_maps(plan, plan.pw)[1], class_maps(plan, 2 * plan.pw)[1]
    else:
        one, two = ({k: buffer_bytes(m, dtype, weight_dtype)
                     for k, m in class_maps(plan, c * plan.pw)[0].items()} for c in (1, 2))
        sram_words = sram_words * DTYPE_BYTES[dtype]
    limit = plan.spec.max_position_embeddings
    slots = {"band": None, "outside": None}
    full = {"band": False, "outside": False}
    for key, w1 in one.items():
        side = "outside" if plan.bands is not None and not key[1] else "band"
        b = two[key] - w1
        a = w1 - b
        if a > sram_words:
            full[side] = True
        elif b > 0:
            fit = (sram_words - a) // b
            slots[side] = fit if slots[side] is None else min(slots[side], fit)
    out = {side: 0 if full[side] else limit if slots[side] is None
           else min(limit, max(0, slots[side]) * plan.pw) for side in slots}
    out["all"] = min(out.values())
    return out


def spread_shift(spec, pw: int, ph: int, head: bool, sram_words: int,
                 max_context: int | None = None, batch: int = 1, dtype: str = "fp32",
                 weight_dtype: str | None = None, head_group: int = 0) -> tuple[int, int]:
    """(shift, capacity) of the spread layout's ffn / vocabulary split (docs/mapping.md,
    "Rows outside the bands"): `capacity` is the largest context over every shift
    (`compiler.tile.shift_rows`), `shift` the smallest one whose placement holds
    min(max_context, capacity) positions (None: the capacity), so a context the
    near-equal split holds keeps it (the fastest: the rows outside the bands then
    finish their GEMVs with the others).

    Moving rows off the band rows never lowers the band rows' capacity and never raises
    that of the rows outside (which hold no KV, only the score buffer PM), so the best
    split is where the two cross: found by bisection, about 3 log2(max_shift) place
    evaluations. `batch`: the contexts are per user of that many users decoding together
    (compiler/batching.py), the LM head in groups of `head_group` (0: all at once)."""
    top, memo = max_shift(spec, ph, head), {}

    def caps(s: int) -> tuple[int, int]:
        if s not in memo:
            plan = tile(spec, pw, ph, "spread", head, s)
            if batch != 1:   # contexts per user of `batch` users (compiler/batching.py)
                plan = dataclasses.replace(plan, batch=batch, head_group=head_group)
            fit = side_contexts(plan, sram_words, dtype, weight_dtype)
            memo[s] = (fit["band"], fit["outside"])
        return memo[s]

    def first(pred, lo: int, hi: int) -> int:
        """Smallest s in [lo, hi) with pred(s) (pred monotone), else hi."""
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    cross = first(lambda s: caps(s)[0] >= caps(s)[1], 0, top + 1)
    best = max(min(caps(s)) for s in (cross - 1, cross) if 0 <= s <= top)
    want = best if max_context is None else min(max_context, best)
    # below the crossing the band rows bind (their capacity rises with s): the first
    # shift reaching `want` there, else the crossing itself
    return first(lambda s: caps(s)[0] >= want, 0, min(cross, top + 1)), best


def best_context(spec, pw: int, ph: int, layout: str, head: bool, sram_words: int) -> int:
    """The largest context a layout holds on a pw x ph mesh (`fit_context`; the spread
    layout takes the best ffn / vocabulary split, `spread_shift`)."""
    if layout == "spread":
        return spread_shift(spec, pw, ph, head, sram_words)[1]
    return fit_context(tile(spec, pw, ph, layout, head), sram_words)


def largest_class(placement: Placement) -> tuple:
    """Key of the class needing the most SRAM."""
    sizes = placement.class_bytes or placement.class_words
    return max(sizes, key=lambda k: sizes[k])


def class_name(key: tuple) -> str:
    """A readable name of a class key."""
    weights, attn, left, hub = key[:4]
    parts = ["PE (0,0)" if hub else "left-column PEs" if left else "PEs"]
    kind = key[4] if len(key) > 4 else ()
    if kind:
        k2, nv, top = kind
        where = {0: "", 1: " (band top)", 2: " (row 0)"}[int(top)]
        parts.append(f"of band rows with {k2} K and {nv} V dims{where}"
                     if attn else "of rows outside the bands")
        return " ".join(parts)
    parts.append("of weight rows" if weights else "of hub rows")
    if attn:
        parts.append("with attention/KV")
    return " ".join(parts)


def _fit_message(placement: Placement, mesh: MeshConfig, hint: bool = True) -> str:
    """Required vs available bytes per PE, by kind, and the smallest square mesh that fits."""
    plan = placement.plan
    key = largest_class(placement)
    by_kind = {}
    for name, buf in placement.maps[key].items():
        size = buffer_bytes({name: buf}, placement.dtype, placement.weight_dtype)
        by_kind[buf.kind] = by_kind.get(buf.kind, 0) + size
    parts = ", ".join(f"{kind} {b}" for kind, b in by_kind.items())
    hint = hint and plan.layout != "spread"   # spread: the context that fits is the hint
    side = smallest_square(plan.spec, mesh, placement.dtype, placement.max_context,
                           plan.layout) if hint else None
    hint = "" if not hint else (f"smallest square mesh that fits: {side}x{side}" if side else
            f"no square mesh up to {MAX_SQUARE_SEARCH}x{MAX_SQUARE_SEARCH} fits with the "
            f"'{plan.layout}' layout")
    fits = (f"a context of {placement.capacity} tokens would fit" if placement.capacity
            else "no context fits beside the weights and scratch")
    if plan.batch > 1:
        words = mesh.sram_bytes // DTYPE_BYTES[placement.dtype]
        fits = batch_fit_note(placement, words, fit_context)
    return (f"model does not fit on a {plan.pw}x{plan.ph} mesh ({plan.layout} layout, "
            f"{placement.dtype}, max_context {placement.max_context}): needs "
            f"{placement.total_bytes} bytes of SRAM per PE ({class_name(key)}: {parts}), "
            f"a PE has {mesh.sram_bytes} bytes; {fits}" + (f"; {hint}" if hint else ""))


def smallest_square(spec, mesh: MeshConfig, dtype: str, max_context: int,
                    layout: str) -> int | None:
    """Side of the smallest n x n mesh on which the model fits, or None up to the limit.

    Starts at the larger of two lower bounds, the balanced sqrt(weight bytes / SRAM bytes)
    and `kv_min_side`, and scans upward (bisection would be wrong: hub rows make the need
    non-monotonic in n).
    """
    weight_bytes = spec.param_count() * DTYPE_BYTES[dtype]
    start = max(1, math.isqrt(weight_bytes // mesh.sram_bytes),
                kv_min_side(spec, mesh, dtype, max_context))
    for n in range(start, MAX_SQUARE_SEARCH + 1):
        if required_words(tile(spec, n, n, layout), max_context) * DTYPE_BYTES[dtype] \
                <= mesh.sram_bytes:
            return n
    return None


def kv_min_side(spec, mesh: MeshConfig, dtype: str, max_context: int) -> int:
    """Smallest width n for which one kv group's cache fits a PE: an attention PE holds
    K and V of every layer for ceil(max_context / n) slots of head_dim elements (a bound
    for any layout; MAX_SQUARE_SEARCH + 1 when no width fits)."""
    group_bytes = spec.num_layers * 2 * spec.head_dim * DTYPE_BYTES[dtype]
    slots = mesh.sram_bytes // group_bytes if group_bytes else max_context
    if slots == 0:
        return MAX_SQUARE_SEARCH + 1
    return -(-max_context // slots)


# --------------------------------------------------------------------------- verify / dump


def verify_placement(placement: Placement, mesh: MeshConfig) -> None:
    """Check every class map: buffers disjoint (but declared overlays), inside the SRAM
    budget, and large enough for every tile."""
    for key, buffers in placement.maps.items():
        end = 0
        for name, buf in sorted(buffers.items(), key=lambda kv: kv[1].addr):
            assert buf.words >= 0, f"buffer {name} has negative size"
            overlay = OVERLAYS.get(name) in buffers or name in OVERLAYS.values()
            if grouped(placement.plan) and (name in PACKED or name == "ACC"):
                acc = buffers["ACC"]
                overlay = overlay or name == "ACC" or (
                    acc.addr <= buf.addr and buf.addr + buf.words <= acc.addr + acc.words)
            assert buf.addr >= end or overlay, f"{key}: buffer {name} overlaps the previous one"
            end = max(end, buf.addr + buf.words)
        assert end == placement.class_words[key], f"{key}: buffers do not end at its size"
    assert placement.total_bytes <= mesh.sram_bytes, "placement exceeds the PE's SRAM"
    plan = placement.plan
    for layer in range(plan.spec.num_layers):
        sparse = plan.spec.is_sparse(layer)
        for m in ("qkv", "o", "router") if sparse else ("qkv", "o", "gu", "down"):
            _check_tiles(placement, m, f"L{layer}.{m}")
    if plan.head:
        _check_tiles(placement, "lm_head", "lm_head")


def _check_tiles(placement: Placement, matrix: str, name: str) -> None:
    """Every PE's tile of `matrix` fits its buffer with its row's column stride."""
    plan = placement.plan
    t = plan.matrices[matrix]
    out, inp = plan.vec(t.out).sizes(), plan.vec(t.inp).sizes()
    area = np.outer(out, inp) if t.kind == "A" else np.outer(inp, out)   # [ph, pw]
    held = area.max(axis=1) > 0
    for j in np.flatnonzero(held):
        stride = plan.tile_stride(matrix, int(j))
        rows, cols = (out[j], inp.max()) if t.kind == "A" else (out.max(), inp[j])
        assert rows <= stride, f"{name}: a tile on row {j} has more rows than its stride"
        assert plan.weight_row(int(j)), f"{name}: tiles on a row without weights"
        for x in {0, min(1, plan.pw - 1)}:
            words = placement.maps[pe_class(plan, x, int(j))][name].words
            assert cols * stride <= words, f"{name}: a tile on row {j} exceeds its buffer"


def kv_dims_per_row(plan: TilePlan) -> np.ndarray:
    """int64 [ph]: KV elements each PE of a row holds per cached position on it and per
    layer (K and V dims; 2 * head_dim per kv group outside the spread layout)."""
    if plan.bands is None:
        return 2 * plan.spec.head_dim * plan.vec("groups").sizes()
    out = np.zeros(plan.ph, np.int64)
    b = plan.bands
    local = np.arange(b.rows) % b.size
    out[:b.rows] = 2 * b.kp[local] + b.nv[local]
    return out


def pe_usage(placement: Placement) -> np.ndarray:
    """int64 [ph, pw]: SRAM elements of tiles, KV and R-layout weights each PE uses, plus
    every scratch buffer of any class (an upper bound on scratch; the exact reservation of
    a PE is `Placement.class_words[pe_class(plan, x, y)]`)."""
    plan, spec = placement.plan, placement.plan.spec
    used = np.zeros((plan.ph, plan.pw), np.int64)
    sparse = sum(spec.is_sparse(layer) for layer in range(spec.num_layers))
    copies = {"lm_head": 1, "router": sparse, "gu": spec.num_layers - sparse,
              "down": spec.num_layers - sparse}
    if sparse:
        copies.update(egu=sparse * spec.moe.num_experts, edown=sparse * spec.moe.num_experts)
    for name, tile_ in plan.matrices.items():
        out, inp = plan.vec(tile_.out).sizes(), plan.vec(tile_.inp).sizes()
        area = np.outer(out, inp) if tile_.kind == "A" else np.outer(inp, out)
        used += area * copies.get(name, spec.num_layers)
    kv_slots = sum(layer_slots(plan, layer, placement.slots) for layer in range(spec.num_layers))
    used += (kv_dims_per_row(plan) * kv_slots)[:, None]
    used += sum(b.words for b in placement.buffers.values() if b.kind == "scratch")
    used[0, :] += (2 * spec.num_layers + 1) * plan.vec("hidden").sizes()
    return used


def ascii_map(placement: Placement, mesh: MeshConfig, max_width: int = 96) -> str:
    """A text map of SRAM use per PE (one character per PE or per block of PEs)."""
    used = pe_usage(placement) * DTYPE_BYTES[placement.dtype]
    frac = used / mesh.sram_bytes
    plan = placement.plan
    block = max(1, -(-max(plan.pw, plan.ph) // max_width))
    levels = " .:-=+*#%@"
    lines = [f"SRAM use per PE on a {plan.pw}x{plan.ph} mesh ({plan.layout} layout, "
             f"{placement.dtype}); each character = {block}x{block} PE(s), darkest of block",
             f"legend: '{levels}' = 0-10%, 10-20%, ... 90-100% of {mesh.sram_bytes} bytes",
             f"min {int(used.min())} bytes, max {int(used.max())} bytes, "
             f"reserved {placement.total_bytes} bytes"]
    for y in range(0, plan.ph, block):
        row = ""
        for x in range(0, plan.pw, block):
            f = float(frac[y:y + block, x:x + block].max())
            row += levels[min(len(levels) - 1, int(f * len(levels)))]
        lines.append(row)
    return "\n".join(lines) + "\n"


def placement_to_dict(placement: Placement, mesh: MeshConfig) -> dict:
    """A JSON-ready description of the address map and the per-PE usage summary."""
    used = pe_usage(placement) * DTYPE_BYTES[placement.dtype]
    return {"dtype": placement.dtype, "max_context": placement.max_context,
            "classes": [{"key": dict(zip(CLASS_FIELDS, key, strict=True)),
                         "name": class_name(key), "words": words,
                         "bytes": words * DTYPE_BYTES[placement.dtype]}
                        for key, words in placement.class_words.items()],
            "kv_slots_per_pe": placement.slots, "total_words": placement.total_words,
            "total_bytes": placement.total_bytes, "sram_bytes": mesh.sram_bytes,
            "used_bytes": {"min": int(used.min()), "max": int(used.max()),
                           "mean": float(used.mean())},
            "buffers": {name: {"addr": b.addr, "words": b.words, "kind": b.kind}
                        for name, b in placement.buffers.items()}}


def dump_placement(placement: Placement, mesh: MeshConfig) -> str:
    """The placement as indented JSON text."""
    return json.dumps(placement_to_dict(placement, mesh), indent=2) + "\n"


# --------------------------------------------------------------------------- host writes


def write_matrix(sram: np.ndarray, plan: TilePlan, matrix: str, values: np.ndarray,
                 addr) -> None:
    """Store `values` [M, K] (rows in output-vector order) as every PE's column-major tile
    at `addr` (one address, or int64 [ph]: row j's)."""
    t = plan.matrices[matrix]
    out, inp = plan.vec(t.out), plan.vec(t.inp)
    rows_addr = np.broadcast_to(np.asarray(addr, np.int64), (plan.ph,))
    for j in range(plan.ph):
        mpad, addr = plan.tile_stride(matrix, j), int(rows_addr[j])
        for i in range(plan.pw):
            po, pi = (j, i) if t.kind == "A" else (i, j)
            m, k = out.size(po), inp.size(pi)
            if m == 0 or k == 0:
                continue
            block = values[out.start(po):out.start(po) + m, inp.start(pi):inp.start(pi) + k]
            region = sram[j * plan.pw + i, addr:addr + k * mpad].reshape(k, mpad)
            region[:, :m] = block.T


def write_r(sram: np.ndarray, plan: TilePlan, vector: str, values: np.ndarray,
            addr: int) -> None:
    """Store an R-layout vector: chunk i at `addr` on PE (i, 0)."""
    chunks = plan.vec(vector)
    for i in range(plan.pw):
        sram[i, addr:addr + chunks.size(i)] = values[chunks.start(i):chunks.start(i + 1)]


def write_c(sram: np.ndarray, plan: TilePlan, vector: str, values: np.ndarray,
            addr: int) -> None:
    """Store a C-layout vector: chunk j at `addr` (or `addr[j]`) on PE (0, j)."""
    chunks = plan.vec(vector)
    rows_addr = np.broadcast_to(np.asarray(addr, np.int64), (plan.ph,))
    for j in range(plan.ph):
        a = int(rows_addr[j])
        sram[j * plan.pw, a:a + chunks.size(j)] = values[chunks.start(j):chunks.start(j + 1)]


def read_c(sram: np.ndarray, plan: TilePlan, vector: str, addr: int) -> np.ndarray:
    """Read a C-layout vector back from the left column (float32 [total])."""
    chunks = plan.vec(vector)
    return np.concatenate([sram[j * plan.pw, addr:addr + chunks.size(j)]
                           for j in range(plan.ph)]).astype(np.float32)


def read_r(sram: np.ndarray, plan: TilePlan, vector: str, addr: int) -> np.ndarray:
    """Read an R-layout vector back from the top row (float32 [total])."""
    chunks = plan.vec(vector)
    return np.concatenate([sram[i, addr:addr + chunks.size(i)]
                           for i in range(plan.pw)]).astype(np.float32)
