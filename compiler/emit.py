"""Emit pass: TilePlan + Placement + RoutePlan -> a mesh `Program` for one decode step.

Every PE's code is generated from a `Role`: the few facts that change its instruction
sequence (top row / left column, its steps in the row and column reduction trees, the
chunk counts that set how many columns its GEMVs unroll, the kv groups of its row). PEs
with equal roles share one region of code; everything else that differs per PE (output
chunk lengths, relayout addresses, per-step attention counts) is a `%p` parameter. So a
64 x 64 mesh compiles to a few dozen regions.

Per-step parameters (the only differences between decode positions):
- `nloc`: cached positions held by this PE after the step's token is stored (into r2),
- `nfree`: slots - nloc, the slots masked out of the softmax,
- `slot_off`: element offset of the new position's slot, (t div pw) * head_dim (into r1),
- `store_n`: head_dim on the PE owning the new position (t mod pw == i), else 0.

Primitives (docs/mapping.md gives their exact cycle costs):
- column multicast on color MC from (i, 0), row multicast on MR from (0, j);
- GEMV columns: `vmul acc, [W], [x:0], m` then `vgemv acc, [W + mpad : mpad], [x + 1], m,
  k - 1` (one instruction for the other k - 1 columns);
- tree reductions along a row (colors ROW s) or column (COL s): `recvadd` for sums,
  `recv` + `vmax` for maxima; concatenating gathers for relayouts on the left column.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from compiler import moe
from compiler.batching import (
    batch_static_values,
    grouped,
    head_groups,
    user_step_names,
    user_step_values,
)
from compiler.place import (
    Placement,
    kept_range,
    layer_slots,
    multicast_pieces,
    relayouts,
    subtree_ends,
)
from compiler.route import RoutePlan, band_last_rows, route, tree_actions
from compiler.tile import Chunking, TilePlan, chunk_bounds
from emulator.hw.mesh import MeshConfig
from isa.opcodes import (
    INSTR_DTYPE,
    MODE_IMM,
    MODE_PARAM,
    MODE_REG,
    SLOT_COLOR,
    SLOT_DST,
    SLOT_DST_STRIDE,
    SLOT_N,
    SLOT_SRC0,
    SLOT_SRC0_STRIDE,
    SLOT_SRC1,
    SLOT_SRC1_STRIDE,
    Op,
    encode_mode,
)
from isa.program import Program, distinct_rows, factor_params
from isa.validate import validate_program

STEP_PARAMS = ("nloc", "nfree", "slot_off", "store_n")
NEW_SLOT_REG = 1   # register holding the new position's slot offset (slot * head_dim)
NLOC_REG = 2       # register holding nloc
WIN_SLOT_REG = 3   # spread layout: the sliding-window layers' `w.kslot`
WINDOW_PREFIX = "w."   # step parameters of the sliding-window layers
MASK_SCORE = -1.0e30   # spread layout: score of a slot holding no position (exp gives 0)

# Op names of the code blocks emit notes open (Program.region_ops; emu explain, step, map).
OPS = ("rmsnorm", "qkv", "rope", "relayout", "attn", "o_proj", "gate_up", "swiglu", "down",
       "lm_head")
# What each per-PE parameter means (emu explain).
PARAM_DOC = {
    "m_qkv": "rows of the q/k/v GEMV-A output on this row",
    "m_gu": "rows of the gate/up GEMV-A output on this row",
    "m_vocab": "rows of the LM head output (logits) on this row",
    "m_hidden": "rows of the o_proj / down GEMV-B output in this column",
    "nloc": "cached positions on this PE after this step's token (step parameter)",
    "nfree": "KV slots masked out of the softmax (step parameter)",
    "slot_off": "offset of the new position's KV slot (step parameter)",
    "store_n": "head_dim on the PE storing the new k/v, else 0 (step parameter)",
    "nact": "active KV slots per column: pos div pw + 1 (step parameter, spread layout)",
    "kslot": "slot receiving the new k/v: its slot on the owning column, else the spare "
             "slot (step parameter, spread layout)",
    "sc_len": "score elements of all heads (step parameter, spread layout)",
    "pm_len": "maxima + scores message length (step parameter, spread layout)",
    **moe.PARAM_DOC,
}



def step_param_names(plan: TilePlan) -> list[str]:
    """The per-step parameters of a layout (docs/mapping.md): `STEP_PARAMS`, or in the
    spread layout `nact` (active slots), `nfree` (masked slots of a column), `kslot`
    (slot the new K/V goes to: the spare slot off the owning column), `sc_len`, `pm_len`
    (score and max+score message lengths), `sc{h}` (head h's scores) and `mask{h}`
    (its first masked score on this column)."""
    if plan.bands is None:
        return list(STEP_PARAMS)
    heads = range(plan.spec.group_size)
    names = (["nact", "nfree", "kslot", "sc_len", "pm_len"] + [f"sc{h}" for h in heads]
             + [f"mask{h}" for h in heads])
    if plan.spec.layer_types:   # sliding-window layers: the same names for their ring
        names += [WINDOW_PREFIX + n for n in names]
    return names


# --------------------------------------------------------------------------- code builder


@dataclass(frozen=True)
class Param:
    """A per-PE parameter operand `%p<index of name>`."""

    name: str


@dataclass(frozen=True)
class Reg:
    """A register-plus-offset operand `r<index>+offset`."""

    index: int
    offset: int = 0


@dataclass(frozen=True)
class Desc:
    """An SRAM descriptor: address operand (int, Param or Reg) and element stride."""

    addr: object
    stride: int = 1


class CodeBuilder:
    """Accumulates one region's instructions as INSTR_DTYPE rows (plus notes: a comment and
    the op name of the block each note opens)."""

    def __init__(self, param_index: dict, mark_index: dict | None = None):
        self.param_index = param_index
        self.mark_index = mark_index or {}
        self.rows: list = []
        self.notes: dict = {}            # pc -> (comment, op name or None)
        self._note = None

    def mark(self, name: str) -> None:
        """A 0-cycle probe recording when this PE reaches op `name` (docs/isa.md, mark)."""
        self.emit(Op.MARK, {SLOT_DST: self.mark_index[name]})

    def note(self, text: str, op: str | None = None) -> None:
        """Attach `text` as a comment to the next instruction, which opens a block of op
        `op` (one of OPS; inside a decoder layer it is named `L<layer>.<op>`)."""
        assert op is None or op in OPS, f"unknown op {op!r}"
        self._note = (text, op)

    @property
    def pending_note(self) -> bool:
        """A note waits for its instruction."""
        return self._note is not None

    def _operand(self, value) -> tuple[int, int, int]:
        """(mode kind, slot value, register) of an integer operand."""
        if isinstance(value, Param):
            return MODE_PARAM, self.param_index[value.name], 0
        if isinstance(value, Reg):
            return MODE_REG, value.offset, value.index
        return MODE_IMM, int(value), 0

    def emit(self, op: Op, slots: dict, imm: float = 0.0) -> None:
        """Append one instruction; `slots` maps slot index -> operand."""
        modes, args = 0, [0] * 8
        for slot, value in slots.items():
            if type(value) is int:          # immediate: MODE_IMM is 0, no mode bits
                args[slot] = value
                continue
            kind, val, reg = self._operand(value)
            modes |= encode_mode(slot, kind, reg)
            args[slot] = val
        if self._note is not None:
            self.notes[len(self.rows)] = self._note
            self._note = None
        self.rows.append((int(op), modes, args, float(imm)))

    @staticmethod
    def _desc(d) -> Desc:
        return d if isinstance(d, Desc) else Desc(d, 1)

    def vec(self, op: Op, dst, a=None, b=None, n=0, imm: float = 0.0) -> None:
        """A vector op dst[i] = f(a[i], b[i]) over n elements."""
        slots = {SLOT_N: n}
        for (addr_slot, stride_slot), d in (((SLOT_DST, SLOT_DST_STRIDE), dst),
                                            ((SLOT_SRC0, SLOT_SRC0_STRIDE), a),
                                            ((SLOT_SRC1, SLOT_SRC1_STRIDE), b)):
            if d is not None:
                d = self._desc(d)
                slots[addr_slot], slots[stride_slot] = d.addr, d.stride
        self.emit(op, slots, imm)

    def reduce(self, op: Op, dst, a, b=None, n=0) -> None:
        """A reduction into the single element `dst` (stride 0)."""
        self.vec(op, Desc(dst, 0), a, b, n)

    def send(self, color: int, src, n) -> None:
        """send n wavelets from src on color."""
        d = self._desc(src)
        self.emit(Op.SEND, {SLOT_COLOR: color, SLOT_SRC0: d.addr, SLOT_SRC0_STRIDE: d.stride,
                            SLOT_N: n})

    def recv(self, color: int, dst, n, add: bool = False) -> None:
        """recv (or recvadd) one n-wavelet message on color into dst."""
        d = self._desc(dst)
        self.emit(Op.RECVADD if add else Op.RECV,
                  {SLOT_COLOR: color, SLOT_DST: d.addr, SLOT_DST_STRIDE: d.stride, SLOT_N: n})

    def movr(self, reg: int, value) -> None:
        """rK = value."""
        self.emit(Op.MOVR, {SLOT_DST: reg, SLOT_SRC0: value})

    def halt(self) -> None:
        """Stop the PE."""
        self.emit(Op.HALT, {})

    def to_array(self) -> np.ndarray:
        """The instructions as an INSTR_DTYPE array."""
        code = np.zeros(len(self.rows), INSTR_DTYPE)
        if self.rows:
            code["op"] = [r[0] for r in self.rows]
            code["modes"] = [r[1] for r in self.rows]
            code["a"] = np.array([r[2] for r in self.rows], np.int64)
            code["imm"] = [r[3] for r in self.rows]
            code["line"] = np.arange(len(self.rows))
        return code


# --------------------------------------------------------------------------- primitives


@dataclass(frozen=True)
class Fabric:
    """Mesh shape and colors the primitives use."""

    pw: int
    ph: int
    mc: int
    mr: int
    row: tuple      # row-tree colors per step
    col: tuple      # column-tree colors per step
    mb: int = -1    # band multicast (spread layout), -1 when absent

    @classmethod
    def from_routes(cls, routes: RoutePlan) -> "Fabric":
        """The fabric view of a route plan."""
        return cls(routes.width, routes.height, routes.colors["MC"], routes.colors["MR"],
                   tuple(routes.row_tree()), tuple(routes.col_tree()),
                   routes.colors.get("MB", -1))


def col_multicast(b: CodeBuilder, fab: Fabric, top: bool, buf, n) -> None:
    """(i, 0) sends buf[0:n] down column i; every other PE of the column receives it."""
    if fab.ph > 1 and n != 0:
        if top:
            b.send(fab.mc, buf, n)
        else:
            b.recv(fab.mc, buf, n)


def row_multicast(b: CodeBuilder, fab: Fabric, left: bool, buf, n) -> None:
    """(0, j) sends buf[0:n] along row j; every other PE of the row receives it."""
    if fab.pw > 1 and n != 0:
        if left:
            b.send(fab.mr, buf, n)
        else:
            b.recv(fab.mr, buf, n)


def tree_sum(b: CodeBuilder, actions: tuple, colors: tuple, buf, n) -> None:
    """Sum buf[0:n] over a row or column into its first PE (recvadd per received step)."""
    for act, s in actions:
        if act == "recv":
            b.recv(colors[s], buf, n, add=True)
        else:
            b.send(colors[s], buf, n)


def tree_max(b: CodeBuilder, actions: tuple, colors: tuple, buf, scratch, n) -> None:
    """Elementwise max of buf[0:n] over a row into its first PE (recv + vmax)."""
    for act, s in actions:
        if act == "recv":
            b.recv(colors[s], scratch, n)
            b.vec(Op.VMAX, buf, buf, scratch, n)
        else:
            b.send(colors[s], buf, n)


def gemv_columns(b: CodeBuilder, w: int, mpad: int, x: int, acc: int, m, k: int) -> None:
    """acc[0:m] = sum over columns c < k of W[:, c] * x[c] (W column-major, stride mpad).

    Column 0 is a `vmul` (it also clears acc), columns 1..k-1 one `vgemv` (bit for bit the
    same as one `vfma` per column): cost o + ceil(m/w), plus o + (k-1) ceil(m/w) if k > 1.
    """
    if k == 0:
        b.vec(Op.VSET, acc, n=m, imm=0.0)
        return
    b.vec(Op.VMUL, acc, w, Desc(x, 0), m)
    if k > 1:
        b.emit(Op.VGEMV, {SLOT_DST: acc, SLOT_DST_STRIDE: 1, SLOT_SRC0: w + mpad,
                          SLOT_SRC0_STRIDE: mpad, SLOT_SRC1: x + 1, SLOT_SRC1_STRIDE: 1,
                          SLOT_N: m, SLOT_COLOR: k - 1})


def gemv_a(b, fab: Fabric, top: bool, row_tree: tuple, k: int, w: int, mpad: int, x: int,
           acc: int, m) -> None:
    """GEMV-A R(x) -> C(y): multicast x down columns, local columns, reduce along rows."""
    col_multicast(b, fab, top, x, k)
    gemv_columns(b, w, mpad, x, acc, m, k)
    tree_sum(b, row_tree, fab.row, acc, m)


def gemv_b(b, fab: Fabric, left: bool, col_tree: tuple, k: int, w: int, mpad: int, x: int,
           acc: int, m) -> None:
    """GEMV-B C(x) -> R(y): multicast x along rows, local columns, reduce along columns."""
    row_multicast(b, fab, left, x, k)
    gemv_columns(b, w, mpad, x, acc, m, k)
    tree_sum(b, col_tree, fab.col, acc, m)


# --------------------------------------------------------------------------- roles


@dataclass(frozen=True)
class Role:
    """What makes a PE's decode code differ from another's (PEs with equal roles share code)."""

    left: bool          # x == 0
    top: bool           # y == 0
    row_tree: tuple     # tree_actions(x, pw)
    col_tree: tuple     # tree_actions(y, ph)
    k_hidden: int       # R chunk of the hidden vector in column x
    k_attn: int         # o_proj input chunk on row y
    k_ffn: int          # ffn chunk on row y
    groups: int         # kv groups of row y
    wrow: bool = True   # row y holds weight tiles
    band: int = -2      # spread layout: 0 band top row, 1 band row holding keys, 2 other
                        # band row, -1 outside the bands; -2 other layouts
    k2: int = 0         # spread: key dims of row y (2 per RoPE pair)
    nv: int = 0         # spread: value dims of row y
    ktree: tuple = ()   # spread: steps in the band's score tree (rows holding keys)
    mb: str = ""        # spread: "send" (band top), "recv" or "" in the band multicast
    k_exp: int = 0      # MoE: an expert's ffn chunk on row y (compiler/moe.py)
    last_col: bool = False   # MoE with biases: x == pw - 1 (holds the bias input element)
    last_row: bool = False   # MoE with biases: y == ph - 1
    lg_tree: tuple = ()      # MoE: tree_actions of row y in the router logits' column tree
    store: int = -1     # batched, grouped LM head: the group whose logits column x keeps

    @property
    def kind(self) -> tuple:
        """TilePlan.row_kind of the role's row."""
        if self.band == -2:
            return ()
        if self.band < 0:
            return (0, 0, 0)
        return (self.k2, self.nv, 2 if self.top else int(self.band == 0))

    @property
    def key(self) -> tuple:
        """The SRAM class (compiler.place.pe_class) of PEs with this role."""
        attn = self.band >= 0 if self.band != -2 else self.groups > 0
        return (self.wrow, attn, self.left, self.left and self.top, self.kind)


def pe_role(plan: TilePlan, i: int, j: int) -> Role:
    """The role of PE (i, j)."""
    band = {"band": -2}
    bands = plan.bands
    if bands is not None:
        r = bands.local(j)
        band = {"band": -1 if r < 0 else 0 if r == 0 else 1 if r < bands.krows else 2}
        if r >= 0:
            last = band_last_rows(bands)
            band.update(k2=2 * int(bands.kp[r]), nv=int(bands.nv[r]),
                        ktree=tree_actions(r, bands.krows) if r < bands.krows else (),
                        mb="send" if r == 0 and last else
                        "recv" if 0 < r <= last and bands.nv[r] else "")
    if "eff" in plan.vectors:
        band["k_exp"] = plan.vec("eff").size(j)
        band["lg_tree"] = moe.logit_tree(plan, j)
        if moe.has_bias(plan.spec):
            band.update(last_col=i == plan.pw - 1, last_row=j == plan.ph - 1)
    if grouped(plan) and 1 <= i <= len(head_groups(plan)):
        band["store"] = i - 1
    return Role(i == 0, j == 0, tree_actions(i, plan.pw), tree_actions(j, plan.ph),
                plan.vec("hidden").size(i), plan.vec("attn").size(j), plan.vec("ffn").size(j),
                plan.groups_on_row(j)[1], plan.weight_row(j), **band)


@dataclass
class Context:
    """Everything the code generator reads besides the role."""

    plan: TilePlan
    placement: Placement
    fab: Fabric
    param_index: dict
    key: tuple | None = None     # SRAM class of the role being emitted
    dequant_ops: int = 0         # vector passes per element to dequantise an MLP tile
    mark_index: dict = dataclasses.field(default_factory=dict)  # mark name -> id

    def addr(self, name: str) -> int:
        """SRAM address of a buffer in the current role's class, or 0 when the class does
        not hold it (then every instruction naming it has zero elements: e.g. the q/k/v
        GEMV output on a row with an empty q/k/v chunk)."""
        buffers = self.placement.maps[self.key]
        return buffers[name].addr if name in buffers else 0

    def waddr(self, name: str) -> int:
        """Address of a weight tile (0 on rows without weights, see `addr`)."""
        return self.addr(name)

    def for_role(self, role: Role) -> "Context":
        """This context with the address map of `role`'s class."""
        return dataclasses.replace(self, key=role.key)


# --------------------------------------------------------------------------- decode code


def rmsnorm(b: CodeBuilder, ctx: Context, role: Role, gamma: str, label: str = "") -> None:
    """Top row: XN = H / sqrt(mean(H^2) + eps) * gamma (sum reduced to (0,0), multicast back).

    `label`: how the comment names gamma (default: the buffer name).
    """
    spec, fab, a = ctx.plan.spec, ctx.fab, ctx.addr
    k, ss = role.k_hidden, a("SS")
    b.note(f"RMSNorm with {label or gamma}", "rmsnorm")
    if k:
        b.reduce(Op.RDOT, ss, a("H"), a("H"), k)
    else:
        b.vec(Op.VSET, ss, n=1, imm=0.0)
    tree_sum(b, role.row_tree, fab.row, ss, 1)
    if role.left:
        b.vec(Op.VSCALE, ss, ss, n=1, imm=1.0 / spec.hidden_size)
        b.vec(Op.VADDI, ss, ss, n=1, imm=spec.rms_norm_eps)
        b.vec(Op.VRSQRT, ss, ss, n=1)
    row_multicast(b, fab, role.left, ss, 1)
    b.vec(Op.VMUL, a("XN"), a("H"), Desc(ss, 0), k)
    b.vec(Op.VMUL, a("XN"), a("XN"), a(gamma), k)


def rope(b: CodeBuilder, ctx: Context, group: int) -> None:
    """(0, j): rotate the q heads and k of one group in QKV (pairs adjacent) by COS/SIN."""
    spec, a = ctx.plan.spec, ctx.addr
    e = a("QKV") + group * ctx.plan.group_len
    n2 = (spec.group_size + 1) * spec.head_dim // 2
    t1, t2, t3, t4 = (a("TMP") + q * n2 for q in range(4))
    b.note(f"RoPE of group {group}", "rope")
    b.vec(Op.VMUL, t1, Desc(e, 2), a("COS"), n2)
    b.vec(Op.VMUL, t2, Desc(e + 1, 2), a("SIN"), n2)
    b.vec(Op.VMUL, t3, Desc(e + 1, 2), a("COS"), n2)
    b.vec(Op.VMUL, t4, Desc(e, 2), a("SIN"), n2)
    b.vec(Op.VSUB, Desc(e, 2), t1, t2, n2)
    b.vec(Op.VADD, Desc(e + 1, 2), t3, t4, n2)


def relayout(b: CodeBuilder, ctx: Context, role: Role, name: str, src: int, dst: int) -> None:
    """Left column: move a C vector from one chunking to another via (0, 0).

    Each (0, j) copies its chunk into its G, a concatenating tree gathers the vector at
    (0, 0) (each node's G holds its subtree's range), which multicasts it down column 0 in
    pieces (compiler.place.multicast_pieces); each (0, j) keeps the pieces overlapping its
    new chunk (into G) and sinks the others into JUNK with stride 0, then copies out.
    """
    if not role.left:
        return
    fab, g = ctx.fab, ctx.addr("G")
    b.note(f"relayout {name}", "relayout")
    b.vec(Op.VMOV, Desc(Param(f"{name}.in_addr")), src, n=Param(f"{name}.in_len"))
    for act, s in role.col_tree:
        if act == "recv":
            b.recv(fab.col[s], Param(f"{name}.rx{s}_addr"), Param(f"{name}.rx{s}_len"))
        else:
            b.send(fab.col[s], Param(f"{name}.tx_addr"), Param(f"{name}.tx_len"))
    if fab.ph > 1:
        source, target = relayouts(ctx.plan)[name]
        for p, (lo, hi) in enumerate(multicast_pieces(target)):
            if role.top:
                b.send(fab.mc, g + lo, hi - lo)
            else:
                b.recv(fab.mc, Desc(Param(f"{name}.m{p}_addr"), Param(f"{name}.m{p}_stride")),
                       hi - lo)
    b.vec(Op.VMOV, dst, Desc(Param(f"{name}.out_addr")), n=Param(f"{name}.out_len"))


def attention(b: CodeBuilder, ctx: Context, role: Role, layer: int) -> None:
    """Row j: attention of its kv groups over the KV cache spread along the row.

    Slot s of a PE holds one cached position (K and V rows of head_dim elements). Scores
    are one `rdot` per slot; the slots past `nloc` are masked to -inf (`vset` at r2 + SC,
    `nfree` elements), so exp gives them weight 0 and the code is the same at every step.
    """
    plan, spec, fab, a = ctx.plan, ctx.plan.spec, ctx.fab, ctx.addr
    ng, gs, hd, slots = role.groups, spec.group_size, spec.head_dim, ctx.placement.slots
    heads = ng * gs
    sc = [a("SC") + h * slots for h in range(heads)]
    b.note("layer {layer}: attention, multicast q/k/v along the row", "attn")
    row_multicast(b, fab, role.left, a("QKV"), ng * plan.group_len)
    for g in range(ng):
        base = a("QKV") + g * plan.group_len + gs * hd
        for which, off in (("k", 0), ("v", hd)):
            kv = a(f"L{layer}.{which}{g}")
            b.vec(Op.VMOV, Reg(NEW_SLOT_REG, kv), base + off, n=Param("store_n"))
    for h in range(heads):
        g, q = divmod(h, gs)
        kt, qa = a(f"L{layer}.k{g}"), a("QKV") + g * plan.group_len + q * hd
        b.note(f"scores of head {h} of the row", "attn")
        for s in range(slots):
            b.reduce(Op.RDOT, sc[h] + s, kt + s * hd, qa, hd)
        b.vec(Op.VSET, Reg(NLOC_REG, sc[h]), n=Param("nfree"), imm=-np.inf)
        b.vec(Op.VSCALE, sc[h], sc[h], n=slots, imm=float(np.float32(hd ** -0.5)))
        b.reduce(Op.RMAX, a("MX") + h, sc[h], n=slots)
    tree_max(b, role.row_tree, fab.row, a("MX"), a("MXT"), heads)
    row_multicast(b, fab, role.left, a("MX"), heads)
    ol = a("OL")
    for h in range(heads):
        vt = a(f"L{layer}.v{h // gs}")
        b.note(f"softmax numerator and weighted values of head {h}", "attn")
        b.vec(Op.VSUB, sc[h], sc[h], Desc(a("MX") + h, 0), slots)
        b.vec(Op.VEXP, sc[h], sc[h], n=slots)
        b.reduce(Op.RSUM, ol + heads * hd + h, sc[h], n=slots)
        b.vec(Op.VMUL, ol + h * hd, vt, Desc(sc[h], 0), hd)
        for s in range(1, slots):
            b.vec(Op.VFMA, ol + h * hd, vt + s * hd, Desc(sc[h] + s, 0), hd)
    tree_sum(b, role.row_tree, fab.row, ol, heads * (hd + 1))
    if role.left:
        b.note("divide by the softmax denominators", "attn")
        b.vec(Op.VRECIP, a("RL"), ol + heads * hd, n=heads)
        for h in range(heads):
            b.vec(Op.VMUL, a("ATT") + h * hd, ol + h * hd, Desc(a("RL") + h, 0), hd)


def rope_rows(b: CodeBuilder, ctx: Context, role: Role) -> None:
    """Spread layout, (0, j): rotate the row's RoPE pairs of every q head and of k (the
    first (group_size + 1) * k2 elements of QKV, pairs adjacent) by the row's COS/SIN."""
    a, n2 = ctx.addr, (ctx.plan.spec.group_size + 1) * role.k2 // 2
    e = a("QKV")
    t1, t2, t3, t4 = (a("TMP") + q * n2 for q in range(4))
    b.note("RoPE of the row's pairs", "rope")
    b.vec(Op.VMUL, t1, Desc(e, 2), a("COS"), n2)
    b.vec(Op.VMUL, t2, Desc(e + 1, 2), a("SIN"), n2)
    b.vec(Op.VMUL, t3, Desc(e + 1, 2), a("COS"), n2)
    b.vec(Op.VMUL, t4, Desc(e, 2), a("SIN"), n2)
    b.vec(Op.VSUB, Desc(e, 2), t1, t2, n2)
    b.vec(Op.VADD, Desc(e + 1, 2), t3, t4, n2)


def qk_norm_rows(b: CodeBuilder, ctx: Context, role: Role, layer: int) -> None:
    """Spread layout, (0, j) of a row holding key pairs (qk-norm, Qwen3): SQ = the row's
    partial sums of squares of each q head and of k (stored after the row's q/k/v chunk,
    so the row multicast carries them), then q and k times their norm weights (before
    RoPE). The band top completes the norm (`spread_attention`): 1/rms of the q heads
    scales the scores, 1/rms of each cached key is kept per slot (RK)."""
    gs, k2, a = ctx.plan.spec.group_size, role.k2, ctx.addr
    q = a("QKV")
    sq = q + (gs + 1) * k2 + role.nv
    b.note("qk-norm: partial sums of squares, norm weights", "rope")
    for h in range(gs + 1):
        b.reduce(Op.RDOT, sq + h, q + h * k2, q + h * k2, k2)
    b.vec(Op.VMUL, q, q, a(f"L{layer}.qkn"), (gs + 1) * k2)


def spread_attention(b: CodeBuilder, ctx: Context, role: Role, layer: int) -> None:
    """Spread layout: sequence-parallel attention of row j's band (docs/mapping.md).

    1. (0, j) multicasts the row's q/k/v chunk along the row; the PE of the column owning
       the new position stores k and v into its slot (the others into the spare slot).
    2. Rows holding keys: partial scores of every q head over the row's key dims for the
       active slots (one vmul + vgemv per head), summed up the band's column tree to the
       band's top row, which scales, masks empty slots, takes each head's local maximum
       and exponentiates: PM = [max | p].
    3. The band top multicasts PM down the column to the rows holding value dims; each
       computes its partial softmax state [max | sum | weighted values] and the states
       merge along the row with the online-softmax rule to (0, j), which divides by the
       sum: the row's chunk of the attention output, in XB for o_proj.
    """
    spec, fab, a = ctx.plan.spec, ctx.fab, ctx.addr
    window = spec.window(layer) is not None
    P = _step_param(WINDOW_PREFIX if window else "")
    reg = WIN_SLOT_REG if window else NEW_SLOT_REG
    gs, k2, nv = spec.group_size, role.k2, role.nv
    sp = layer_slots(ctx.plan, layer, ctx.placement.slots) + 1
    q, pm = a("QKV"), a("PM")
    kt, vt = a(f"L{layer}.k"), a(f"L{layer}.v")
    qkn = spec.qk_norm and k2 > 0
    in_tree = spec.qk_norm and role.band in (0, 1)   # the band's score tree sums SQ too
    sq = q + (gs + 1) * k2 + nv
    b.note("layer {layer}: attention, the row's q/k/v along the row", "attn")
    row_multicast(b, fab, role.left, q, (gs + 1) * k2 + nv + (gs + 1) * qkn)
    if k2:
        b.vec(Op.VMOV, Desc(Reg(reg, kt), sp), q + gs * k2, n=k2)
    if nv:
        b.vec(Op.VMOV, Desc(Reg(reg, vt), sp), q + (gs + 1) * k2, n=nv)
    if role.band in (0, 1):
        b.note("attention: partial scores over the row's key dims", "attn")
        for h in range(gs):
            gemv_columns(b, kt, sp, q + h * k2, P(f"sc{h}"), P("nact"), k2)
        tree_sum(b, role.ktree, fab.col, pm + gs, P("sc_len"))
        if in_tree and not qkn:   # a tree row holding no pairs (bands taller than hd)
            b.vec(Op.VSET, sq, n=gs + 1, imm=0.0)
        if in_tree:
            tree_sum(b, role.ktree, fab.col, sq, gs + 1)
    if role.band == 0:
        b.note("attention: band top scales, masks empty slots, local max, exp", "attn")
        b.vec(Op.VSCALE, pm + gs, pm + gs, n=P("sc_len"),
              imm=float(np.float32(spec.head_dim ** -0.5)))
        if in_tree:
            rk = a(f"L{layer}.rk")
            b.note("qk-norm: 1/rms of q heads and k, kept per slot for k", "attn")
            b.vec(Op.VSCALE, sq, sq, n=gs + 1, imm=1.0 / spec.head_dim)
            b.vec(Op.VADDI, sq, sq, n=gs + 1, imm=spec.rms_norm_eps)
            b.vec(Op.VRSQRT, sq, sq, n=gs + 1)
            b.vec(Op.VMOV, Reg(reg, rk), sq + gs, n=1)
            for h in range(gs):
                b.vec(Op.VMUL, P(f"sc{h}"), P(f"sc{h}"), rk, P("nact"))
                b.vec(Op.VMUL, P(f"sc{h}"), P(f"sc{h}"), Desc(sq + h, 0), P("nact"))
        for h in range(gs):
            b.vec(Op.VSET, P(f"mask{h}"), n=P("nfree"), imm=MASK_SCORE)
        for h in range(gs):
            b.reduce(Op.RMAX, pm + h, P(f"sc{h}"), n=P("nact"))
        for h in range(gs):
            b.vec(Op.VSUB, P(f"sc{h}"), P(f"sc{h}"), Desc(pm + h, 0), P("nact"))
        b.vec(Op.VEXP, pm + gs, pm + gs, n=P("sc_len"))
    if role.mb == "send":
        b.send(fab.mb, pm, P("pm_len"))
    elif role.mb == "recv":
        b.recv(fab.mb, pm, P("pm_len"))
    if nv:
        merge_values(b, ctx, role, vt, sp, P, layer)


def _step_param(prefix: str):
    """name -> Param(prefix + name): a layer kind's step parameters."""
    return lambda name: Param(prefix + name)


def merge_values(b: CodeBuilder, ctx: Context, role: Role, vt: int, sp: int,
                 P=Param, layer: int = 0) -> None:
    """Spread layout, rows holding value dims: local softmax state MO = [m | l | o] from
    PM = [m | p], merged along the row to (0, j) with the online-softmax rule
    m = max(m1, m2), l = l1 e^(m1-m) + l2 e^(m2-m), o = o1 e^(m1-m) + o2 e^(m2-m);
    (0, j) writes o / l into XB (the row's chunk of the attention output)."""
    gs, nv, fab, a = ctx.plan.spec.group_size, role.nv, ctx.fab, ctx.addr
    pm, mo, mt, nm, aa = a("PM"), a("MO"), a("MT"), a("NM"), a("AA")
    lo, oo, n = mo + gs, mo + 2 * gs, gs * (2 + nv)
    b.note("attention: local softmax state of the column's slots", "attn")
    b.vec(Op.VMOV, mo, pm, n=gs)
    for h in range(gs):
        b.reduce(Op.RSUM, lo + h, P(f"sc{h}"), n=P("nact"))
    for h in range(gs):
        for d in range(nv):
            b.reduce(Op.RDOT, oo + h * nv + d, vt + d * sp, P(f"sc{h}"), P("nact"))
    for act, s in role.row_tree:
        if act == "send":
            b.send(fab.row[s], mo, n)
            continue
        b.recv(fab.row[s], mt, n)
        b.note("online-softmax merge", "attn")
        b.vec(Op.VMAX, nm, mo, mt, gs)
        b.vec(Op.VSUB, aa, mo, nm, gs)
        b.vec(Op.VSUB, aa + gs, mt, nm, gs)
        b.vec(Op.VEXP, aa, aa, n=2 * gs)
        b.vec(Op.VMUL, lo, lo, aa, gs)
        b.vec(Op.VFMA, lo, mt + gs, aa + gs, gs)
        for h in range(gs):
            b.vec(Op.VMUL, oo + h * nv, oo + h * nv, Desc(aa + h, 0), nv)
            b.vec(Op.VFMA, oo + h * nv, mt + 2 * gs + h * nv, Desc(aa + gs + h, 0), nv)
        b.vec(Op.VMOV, mo, nm, n=gs)
    if role.left and ctx.plan.spec.attention_sinks:
        b.note("attention sinks: l += exp(sink - m)", "attn")
        b.vec(Op.VSUB, aa, a(f"L{layer}.sinks"), mo, gs)
        b.vec(Op.VEXP, aa, aa, n=gs)
        b.vec(Op.VADD, lo, lo, aa, gs)
    if role.left:
        b.note("divide by the softmax sums", "attn")
        b.vec(Op.VRECIP, a("RL"), lo, n=gs)
        for h in range(gs):
            b.vec(Op.VMUL, a("XB") + h * nv, oo + h * nv, Desc(a("RL") + h, 0), nv)


def decoder_layer(b: CodeBuilder, ctx: Context, role: Role, layer: int) -> None:
    """One layer: RMSNorm, q/k/v, RoPE, attention, o_proj + residual, RMSNorm, SwiGLU MLP.

    Comments naming the layer are templates with a `{layer}` field (see `layer_code`).
    """
    if ctx.plan.batch > 1:   # B users (compiler/batch_emit.py)
        from compiler.batch_emit import decoder_layer as batched_layer
        return batched_layer(b, ctx, role, layer)
    plan, spec, fab, a = ctx.plan, ctx.plan.spec, ctx.fab, ctx.addr
    p, even, spread = f"L{layer}.", plan.layout == "even", plan.bands is not None
    b.mark(p + "norm_in")
    if role.top:
        rmsnorm(b, ctx, role, p + "norm_in", "L{layer}.norm_in")
    b.mark(p + "qkv")
    qkv_out = a("ACC") if even else a("QKV")
    qkv_stride = (spec.group_size + 1) * role.k2 + role.nv if spread else plan.mpad("qkv")
    b.note("layer {layer}: q/k/v GEMV-A", "qkv")
    gemv_a(b, fab, role.top, role.row_tree, role.k_hidden, ctx.waddr(p + "qkv"), qkv_stride,
           a("XN"), qkv_out, Param("m_qkv"))
    if role.left and spec.attention_bias:
        b.vec(Op.VADD, qkv_out, qkv_out, ctx.waddr(p + "qkv_bias"), Param("m_qkv"))
    if even:
        relayout(b, ctx, role, "qkv", a("ACC"), a("QKV"))
    b.mark(p + "rope")
    if spread:
        if role.left and role.k2 and spec.qk_norm:
            qk_norm_rows(b, ctx, role, layer)
        if role.left and role.k2:
            rope_rows(b, ctx, role)
        b.mark(p + "attn")
        if role.band >= 0:
            spread_attention(b, ctx, role, layer)
    else:
        if role.left:
            for g in range(role.groups):
                rope(b, ctx, g)
        b.mark(p + "attn")
        if role.groups:
            attention(b, ctx, role, layer)
    if even:
        relayout(b, ctx, role, "attn", a("ATT"), a("XB"))
    b.mark(p + "o_proj")
    b.note("layer {layer}: o_proj GEMV-B", "o_proj")
    gemv_b(b, fab, role.left, role.col_tree, role.k_attn, ctx.waddr(p + "o"), plan.mpad("o"),
           a("XB") if even or spread else a("ATT"), a("ACC"), Param("m_hidden"))
    residual(b, ctx, role, p + "o_bias" if spec.o_proj_bias else None)
    b.mark(p + "norm_post")
    if role.top:
        rmsnorm(b, ctx, role, p + "norm_post", "L{layer}.norm_post")
    if spec.is_sparse(layer):
        moe.moe_block(b, ctx, role, layer)
        return
    b.mark(p + "mlp_up")
    b.note("layer {layer}: gate/up GEMV-A", "gate_up")
    gu_stride = plan.side_stride("gu", role.band == -1, role.top)
    moe.dequantise(b, ctx, ctx.waddr(p + "gu"), role.k_hidden * gu_stride)
    gemv_a(b, fab, role.top, role.row_tree, role.k_hidden, ctx.waddr(p + "gu"), gu_stride,
           a("XN"), a("ACC"), Param("m_gu"))
    if role.left:
        swiglu(b, ctx, role, p + "gu_bias" if spec.mlp_bias else None)
    b.mark(p + "mlp_down")
    b.note("layer {layer}: down GEMV-B", "down")
    moe.dequantise(b, ctx, ctx.waddr(p + "down"), role.k_ffn * plan.mpad("down"))
    gemv_b(b, fab, role.left, role.col_tree, role.k_ffn, ctx.waddr(p + "down"), plan.mpad("down"),
           a("XB"), a("ACC"), Param("m_hidden"))
    residual(b, ctx, role, p + "down_bias" if spec.mlp_bias else None)


def residual(b: CodeBuilder, ctx: Context, role: Role, bias: str | None) -> None:
    """Top row: H += ACC (+ bias)."""
    if not role.top:
        return
    a, k = ctx.addr, role.k_hidden
    if bias:
        b.vec(Op.VADD, a("ACC"), a("ACC"), a(bias), k)
    b.vec(Op.VADD, a("H"), a("H"), a("ACC"), k)


def swiglu(b: CodeBuilder, ctx: Context, role: Role, bias: str | None) -> None:
    """(0, j): XB = silu(gate) * up from ACC = [gate_j; up_j]."""
    a, f = ctx.addr, role.k_ffn
    if bias:
        b.vec(Op.VADD, a("ACC"), a("ACC"), ctx.waddr(bias), Param("m_gu"))
    b.note("SiLU(gate) * up", "swiglu")
    b.vec(Op.VSIGMOID, a("TMP"), a("ACC"), n=f)
    b.vec(Op.VMUL, a("TMP"), a("TMP"), a("ACC"), f)
    b.vec(Op.VMUL, a("XB"), a("TMP"), a("ACC") + f, f)


@dataclass
class RegionCode:
    """One region's instructions (INSTR_DTYPE, `line` = index in the region) and notes."""

    code: np.ndarray
    notes: dict             # pc -> (comment, op name or None)

    @property
    def comments(self) -> dict:
        """pc -> comment."""
        return {pc: text for pc, (text, _) in self.notes.items()}

    @property
    def ops(self) -> dict:
        """pc -> op name of the block starting there (Program.region_ops)."""
        return {pc: op for pc, (_, op) in self.notes.items() if op is not None}


def pe_code(ctx: Context, role: Role) -> RegionCode:
    """The whole decode step of a PE with this role: prologue, every layer, LM head, end."""
    if ctx.plan.batch > 1:   # B users (compiler/batch_emit.py)
        from compiler.batch_emit import pe_code as batched_code
        return batched_code(ctx, role)
    ctx = ctx.for_role(role)
    plan, a = ctx.plan, ctx.addr
    start = CodeBuilder(ctx.param_index, ctx.mark_index)
    if plan.bands is not None:
        if role.band >= 0 and (role.k2 or role.nv):
            start.movr(NEW_SLOT_REG, Param("kslot"))
            if plan.spec.layer_types:
                start.movr(WIN_SLOT_REG, Param(WINDOW_PREFIX + "kslot"))
    elif role.groups:
        start.movr(NEW_SLOT_REG, Param("slot_off"))
        start.movr(NLOC_REG, Param("nloc"))
    end = CodeBuilder(ctx.param_index, ctx.mark_index)
    if plan.head:
        end.mark("head")
        if role.top:
            rmsnorm(end, ctx, role, "norm_final")
        end.note("LM head GEMV-A", "lm_head")
        gemv_a(end, ctx.fab, role.top, role.row_tree, role.k_hidden, ctx.waddr("lm_head"),
               plan.side_stride("lm_head", role.band == -1, role.top), a("XN"), a("ACC"),
               Param("m_vocab"))
    end.mark("end")
    end.halt()
    layers, notes = layer_code(ctx, role)
    parts = [start.to_array(), layers, end.to_array()]
    code = np.concatenate(parts)
    code["line"] = np.arange(len(code))
    merged = dict(start.notes)
    merged.update({pc + len(parts[0]): note for pc, note in notes.items()})
    base = len(parts[0]) + len(layers)
    merged.update({pc + base: note for pc, note in end.notes.items()})
    return RegionCode(code, merged)


def layer_kind(spec, layer: int) -> tuple:
    """What sets a decoder layer's code structure: (MoE MLP, sliding window or None)."""
    return (spec.is_sparse(layer), spec.window(layer))


def kind_members(spec) -> dict:
    """layer kind -> its layers in order."""
    out: dict = {}
    for layer in range(spec.num_layers):
        out.setdefault(layer_kind(spec, layer), []).append(layer)
    return out


def layer_code(ctx: Context, role: Role) -> tuple[np.ndarray, dict]:
    """(INSTR_DTYPE code, {pc: (comment, op)}) of every decoder layer of a role, back to back.

    Layers of one kind (`layer_kind`) differ only in their mark ids and the addresses of
    their weights and KV cache. When a kind's layers are evenly spaced and the place pass
    lays their buffers out at a constant stride (`check_layer_strides`; always for a
    uniform model), only its first two layers are generated: its n-th layer is the first
    with every operand slot moved by n * (second - first), its comments the templates
    formatted with the layer. Other kinds' layers are generated one by one.
    """
    spec = ctx.plan.spec
    codes, templates = {}, {}
    for members in kind_members(spec).values():
        first, comments = _one_layer(ctx, role, members[0])
        codes[members[0]], templates[members[0]] = first, comments
        if len(members) == 1:
            continue
        if not (_evenly_spaced(members) and _linear_buffers(ctx.placement, tuple(members))):
            for layer in members[1:]:
                codes[layer], templates[layer] = _one_layer(ctx, role, layer)
            continue
        second, _ = _one_layer(ctx, role, members[1])
        for name in ("op", "modes", "imm"):
            assert np.array_equal(first[name], second[name]), "layers differ in structure"
        step = second["a"] - first["a"]
        for n, layer in enumerate(members[1:], start=1):
            code = first.copy()
            code["a"] += n * step
            codes[layer], templates[layer] = code, comments
    parts, notes, base = [], {}, 0
    for layer in range(spec.num_layers):
        parts.append(codes[layer])
        notes.update({pc + base: (text.format(layer=layer), op and f"L{layer}.{op}")
                      for pc, (text, op) in templates[layer].items()})
        base += len(codes[layer])
    return np.concatenate(parts) if parts else np.zeros(0, INSTR_DTYPE), notes


def _evenly_spaced(members: list) -> bool:
    """The layers form an arithmetic progression."""
    return len(set(np.diff(members).tolist())) <= 1


def _linear_buffers(placement: Placement, members: tuple) -> bool:
    """Every per-layer buffer of these layers sits at a constant address stride over
    them in every class (computed once per placement and layer set)."""
    cache = _LINEAR.setdefault(id(placement), (placement, {}))[1]
    if members not in cache:
        cache[members] = _check_linear(placement, members)
    return cache[members]


_LINEAR: dict = {}   # id(placement) -> (placement, {members: bool}); the placement is kept
                     # alive with its entry so the id is not reused (cleared per emit)


def _check_linear(placement: Placement, members: tuple) -> bool:
    """`_linear_buffers` without the cache."""
    for buffers in placement.maps.values():
        prefix = f"L{members[0]}."
        for name in buffers:
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            addrs = np.array([buffers[f"L{layer}.{rest}"].addr for layer in members])
            if not (np.diff(addrs, 2) == 0).all():
                return False
    return True


def _one_layer(ctx: Context, role: Role, layer: int) -> tuple[np.ndarray, dict]:
    """(code, note templates) of decoder layer `layer` of a role, pcs from 0."""
    b = CodeBuilder(ctx.param_index, ctx.mark_index)
    decoder_layer(b, ctx, role, layer)
    assert not b.pending_note, "a layer ends with a comment and no instruction"
    return b.to_array(), b.notes


def check_layer_strides(placement: Placement) -> None:
    """Assert that every per-layer buffer `L{layer}.{name}` sits at a constant address
    stride per layer in every class (what `layer_code` relies on for a model whose layers
    are all of one kind; others are checked per kind by `layer_code`)."""
    layers = placement.plan.spec.num_layers
    if len(kind_members(placement.plan.spec)) > 1:
        return
    for buffers in placement.maps.values():
        for name in buffers:
            if not name.startswith("L0."):
                continue
            rest = name[3:]
            addrs = np.array([buffers[f"L{layer}.{rest}"].addr for layer in range(layers)])
            assert (np.diff(addrs, 2) == 0).all(), f"{name}: per-layer addresses not linear"


# --------------------------------------------------------------------------- parameters


def static_params(plan: TilePlan) -> dict:
    """name -> int64 array broadcastable to [ph, pw]: the GEMV output lengths of every PE."""
    rows = {n: plan.vec(v).sizes() for n, v in (("m_qkv", "qkv"), ("m_gu", "gu"),
                                                 ("m_vocab", "vocab"))}
    params = {n: s[:, None] for n, s in rows.items()}
    params["m_hidden"] = plan.vec("hidden").sizes()[None, :]
    return params


def left_params(plan: TilePlan, placement: Placement) -> dict:
    """name -> int64 [ph]: the relayout parameters of the left-column PEs (0, j) (zero on
    every other PE; none outside the even layout)."""
    params = {}
    if plan.layout == "even":
        g = np.array([placement.addr_at("G", 0, j) for j in range(plan.ph)], np.int64)
        junk = placement.addr("JUNK")
        for name, (src, dst) in relayouts(plan).items():
            params.update(relayout_params(plan, name, src, dst, g, junk))
    return params


def relayout_params(plan: TilePlan, name: str, src: Chunking, dst: Chunking, g: np.ndarray,
                    junk: int) -> dict:
    """Addresses/lengths of the left-column gather and multicast of a relayout: name ->
    int64 [ph], the value on (0, j).

    `g[j]`: address of G on (0, j). Node j's G holds its gather subtree's range of `src`
    from offset 0 (the hub's: the whole vector in order); after the multicast it holds the
    kept pieces from offset 0 (see `relayout`). Units: elements.
    """
    ph, b, ends = plan.ph, src.bounds, subtree_ends(plan.ph)
    cols = {}
    cols["in_addr"], cols["in_len"] = g.copy(), src.sizes()
    tx_addr, tx_len = g.copy(), np.zeros(ph, np.int64)
    for s in range(max(0, (ph - 1).bit_length())):
        d = 1 << s
        rx_addr, rx_len = np.zeros(ph, np.int64), np.zeros(ph, np.int64)
        for j in range(ph):
            if j % (2 * d) == 0 and j + d < ph:
                rx_addr[j] = g[j] + b[j + d] - b[j]
                rx_len[j] = b[min(j + 2 * d, ph)] - b[j + d]
            if j % (2 * d) == d:
                tx_len[j] = b[ends[j]] - b[j]
        cols[f"rx{s}_addr"], cols[f"rx{s}_len"] = rx_addr, rx_len
    cols["tx_addr"], cols["tx_len"] = tx_addr, tx_len
    cols.update(_piece_params(dst, g, junk))
    return {f"{name}.{key}": values for key, values in cols.items()}


def _piece_params(dst: Chunking, g: np.ndarray, junk: int) -> dict:
    """Per row: where each multicast piece lands, and where the row's new chunk starts."""
    ph, pieces = dst.parts, multicast_pieces(dst)
    cols = {f"m{p}_{k}": np.zeros(ph, np.int64) for p in range(len(pieces))
            for k in ("addr", "stride")}
    out_addr = g + np.asarray(dst.bounds[:-1], np.int64)
    kept_first, kept_last = kept_range(pieces, dst)
    for j in range(1, ph):
        lo, hi = kept_first[j], kept_last[j]          # the kept pieces: lo .. hi
        first = pieces[lo][0] if lo <= hi else 0
        for p in range(len(pieces)):
            mine = lo <= p <= hi
            cols[f"m{p}_addr"][j] = g[j] + pieces[p][0] - first if mine else junk
            cols[f"m{p}_stride"][j] = 1 if mine else 0
        out_addr[j] = g[j] + dst.bounds[j] - first
    cols["out_addr"], cols["out_len"] = out_addr, dst.sizes()
    return cols


def step_values(plan: TilePlan, slots: int, pos: int,
                placement: Placement | None = None) -> dict:
    """name -> int64 [ph, pw] (read-only views) of the per-step parameters for decode
    position `pos` (`placement`: needed by the spread layout, for the PM address)."""
    pw, ph, hd = plan.pw, plan.ph, plan.spec.head_dim
    i = np.arange(pw)
    if plan.bands is not None:
        out = spread_step_values(plan, slots, pos, pos, pm_addr(placement))
        window = plan.spec.sliding_window
        if plan.spec.layer_types:   # a ring of `window` entries: pos goes to pos mod window
            wslots = -(-min(window, slots * pw) // pw)
            ring = spread_step_values(plan, wslots, min(pos, window - 1), pos % window,
                                      pm_addr(placement))
            out.update({WINDOW_PREFIX + k: v for k, v in ring.items()})
        return {k: np.broadcast_to(np.asarray(v, np.int64), (ph, pw)) for k, v in out.items()}
    nloc = np.where(i <= pos, (pos - i) // pw + 1, 0)
    store = np.where(i == pos % pw, hd, 0)
    return {"nloc": np.broadcast_to(nloc, (ph, pw)),
            "nfree": np.broadcast_to(slots - nloc, (ph, pw)),
            "slot_off": np.broadcast_to(np.int64((pos // pw) * hd), (ph, pw)),
            "store_n": np.broadcast_to(store, (ph, pw))}


def pm_addr(placement: Placement) -> int:
    """Address of the score buffer PM the spread layout's step parameters name (0 in a
    program without layers, which reserves none and runs no attention)."""
    pm = placement.buffers.get("PM")
    return 0 if pm is None else pm.addr


def spread_step_values(plan: TilePlan, slots: int, last: int, store: int, pm: int) -> dict:
    """Spread-layout step parameters when entries 0..last hold positions and the new one
    goes to entry `store` (full attention: both the position; a sliding-window ring:
    min(pos, window - 1) and pos mod window). Entry e is on column e mod pw, slot
    e div pw; `slots` is the layer's slots per PE (the spare slot is `slots`)."""
    pw, gs = plan.pw, plan.spec.group_size
    i = np.arange(pw)
    nact = last // pw + 1
    nloc = np.where(i <= last, (last - i) // pw + 1, 0)
    sc = pm + gs + nact * np.arange(gs)
    out = {"nact": nact, "nfree": nact - nloc,
           "kslot": np.where(i == store % pw, store // pw, slots),
           "sc_len": gs * nact, "pm_len": gs * (1 + nact)}
    out.update({f"sc{h}": sc[h] for h in range(gs)})
    out.update({f"mask{h}": sc[h] + nloc for h in range(gs)})
    return out


# --------------------------------------------------------------------------- programs


@dataclass
class DecodeProgram:
    """The emitted decode step: program template plus what is needed to fill step params."""

    program: Program            # step parameters zero; use `for_position`
    plan: TilePlan
    placement: Placement
    routes: RoutePlan
    param_names: list
    roles: list                 # Role of each region
    representatives: list       # (x, y) of the first PE of each region
    static_values: dict         # name -> values broadcastable to [ph, pw] (`static_params`)
    left_values: dict           # name -> [ph], on the left column only (`left_params`)

    def for_position(self, pos: int) -> Program:
        """The program of the decode step at position `pos` (0-based): the template with
        the step parameters' values (a new factored table; a few ms on a whole WSE-3)."""
        if self.plan.batch > 1:
            return self.for_users([pos] * self.plan.batch)
        self._check_position(pos)
        values = {**self.static_values, **step_values(self.plan, self.placement.slots, pos,
                                                      self.placement)}
        rows, index = param_table(self.plan, values, self.left_values, self.param_names)
        return dataclasses.replace(self.program, param_rows=rows, param_index=index)

    def for_users(self, positions) -> Program:
        """The program of a batched step (compiler/batching.py): `positions` has one entry
        per user slot, the position that user decodes at, or None for an idle slot."""
        for pos in positions:
            if pos is not None:
                self._check_position(pos)
        values = {**self.static_values,
                  **user_step_values(self.plan, self.placement.slots, list(positions),
                                     pm_addr(self.placement))}
        rows, index = param_table(self.plan, values, self.left_values, self.param_names)
        return dataclasses.replace(self.program, param_rows=rows, param_index=index)

    def _check_position(self, pos: int) -> None:
        """ValueError unless `pos` is inside the KV capacity."""
        if not 0 <= pos < self.placement.max_context:
            raise ValueError(f"position {pos} outside the KV capacity "
                             f"0..{self.placement.max_context - 1}")


def assign_roles(plan: TilePlan) -> tuple[list, np.ndarray, list]:
    """(distinct roles in first-PE order, region of every PE [W*H], first PE of each).

    A role is a column fact (x) combined with a row fact (y), so roles are found per
    column and per row and combined with array operations (fast on a whole wafer).
    """
    pw, ph = plan.pw, plan.ph
    cols = [pe_role(plan, i, 0) for i in range(pw)]
    rows = [pe_role(plan, 0, j) for j in range(ph)]
    col_keys = [(r.left, r.row_tree, r.k_hidden, r.last_col, r.store) for r in cols]
    row_keys = [(r.top, r.col_tree, r.k_attn, r.k_ffn, r.groups, r.wrow, r.band, r.k2, r.nv,
                 r.ktree, r.mb, r.k_exp, r.last_row, r.lg_tree) for r in rows]
    ci = _class_index(col_keys)
    rj = _class_index(row_keys)
    pair = (rj[:, None] * (ci.max() + 1) + ci[None, :]).reshape(-1)
    _, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
    order = np.argsort(first)                      # regions numbered in first-PE order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    pe_region = rank[inverse].astype(np.int32)
    reps = [(int(f % pw), int(f // pw)) for f in first[order]]
    row_fields = ("top", "col_tree", "k_attn", "k_ffn", "groups", "wrow", "band", "k2", "nv",
                  "ktree", "mb", "k_exp", "last_row", "lg_tree")
    roles = [dataclasses.replace(cols[x], **{f: getattr(rows[y], f) for f in row_fields})
             for x, y in reps]
    return roles, pe_region, reps


def _class_index(keys: list) -> np.ndarray:
    """int64 [len(keys)]: index of each key among the distinct keys."""
    index: dict = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], np.int64)


def assemble_regions(plan: TilePlan, pe_region: np.ndarray, codes: list, names: list,
                     params: dict, param_names: list, routes: RoutePlan, sram_words: int,
                     dtype: str, source: str, left: dict | None = None) -> Program:
    """Pack per-role code (RegionCode), the PE -> region map, parameters and routes into a
    Program.

    `params`: name -> values broadcastable to [ph, pw]; `left`: name -> [ph], values on the
    left column only. Parameters in neither (the step parameters) are zero.
    """
    arrays = [c.code for c in codes]
    lengths = np.array([len(x) for x in arrays], np.int32)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int32)
    param_rows, param_index = param_table(plan, params, left or {}, param_names)
    return Program(width=plan.pw, height=plan.ph, dtype=dtype, sram_words=sram_words,
                   code=np.concatenate(arrays), region_start=starts, region_len=lengths,
                   region_names=names, pe_region=pe_region,
                   param_rows=param_rows, param_index=param_index,
                   route_rx=routes.route_rx.copy(), route_tx=routes.route_tx.copy(),
                   source=source, region_comments={r: c.comments for r, c in enumerate(codes)},
                   region_ops={r: c.ops for r, c in enumerate(codes) if c.ops})


def param_table(plan: TilePlan, params: dict, left: dict,
                param_names: list) -> tuple[np.ndarray, np.ndarray]:
    """Program.param_rows and param_index (int32 [distinct rows, parameters], int32
    [W*H]) of `assemble_regions`: parameter k is params[name] (broadcast to [ph, pw]), or
    left[name] on the left column's PEs (0, j) and zero elsewhere, or zero. Parameters
    that vary along one axis only are combined per row and per column, so no [W*H,
    parameters] table is built unless a parameter varies along both."""
    ph, pw, k = plan.ph, plan.pw, max(1, len(param_names))
    by_row, by_col, on_left = (np.zeros((n, k), np.int64) for n in (ph, pw, ph))
    both = {}   # column -> [ph, pw] values of a parameter varying along both axes
    for i, name in enumerate(param_names):
        if name in left:
            on_left[:, i] = left[name]
            continue
        values = _varying_axes(params.get(name, 0))
        if values.shape[1] == 1:
            by_row[:, i] = values[:, 0]
        elif values.shape[0] == 1:
            by_col[:, i] = values[0]
        else:
            both[i] = values
    if both:   # factor the dense table
        dense = by_row[:, None] + by_col[None, :]
        for i, values in both.items():
            dense[:, :, i] = values
        dense[:, 0] += on_left
        return factor_params(dense.reshape(ph * pw, k))
    row_ids, row_first = distinct_rows(np.hstack([by_row, on_left]))
    left_col = (np.arange(pw) == 0)[:, None]
    col_ids, col_first = distinct_rows(np.hstack([by_col, left_col]))
    combos = (by_row[row_first][:, None] + by_col[col_first][None, :]
              + left_col[col_first][None, :] * on_left[row_first][:, None])
    rows, combo_row = factor_params(combos.reshape(-1, k))
    return rows, combo_row[row_ids[:, None] * len(col_first) + col_ids[None, :]].ravel()


def _varying_axes(values) -> np.ndarray:
    """`values` (broadcastable to [ph, pw]) as a 2-D array with length 1 along each axis
    it does not vary along as far as its strides show (a broadcast view's are 0)."""
    values = np.asarray(values, np.int64)
    values = values.reshape((1,) * (2 - values.ndim) + values.shape)
    if values.shape[0] > 1 and values.strides[0] == 0:
        values = values[:1]
    if values.shape[1] > 1 and values.strides[1] == 0:
        values = values[:, :1]
    return values


LAYER_OPS = ("norm_in", "qkv", "rope", "attn", "o_proj", "norm_post", "mlp_up", "mlp_down")


def decode_mark_names(plan: TilePlan) -> list[str]:
    """Probe names of a decode step, in program order: `L{layer}.{op}` for every op of
    every layer, then `head` (final norm + LM head, when on this mesh) and `end`."""
    names = [f"L{layer}.{op}" for layer in range(plan.spec.num_layers) for op in LAYER_OPS]
    return names + (["head"] if plan.head else []) + ["end"]


def emit_decode(plan: TilePlan, placement: Placement, routes: RoutePlan,
                mesh: MeshConfig | None = None, source: str = "<decode>") -> DecodeProgram:
    """The emit pass: one decode step as a Program with per-role regions."""
    params, left = static_params(plan), left_params(plan, placement)
    if moe.has_moe(plan.spec):
        params.update(moe.static_params(plan, placement.addr("LG")))
    if plan.batch > 1:
        params.update(batch_static_values(plan, params))
    param_names = list(params) + list(left) + (user_step_names(plan) if plan.batch > 1
                                               else step_param_names(plan))
    marks = decode_mark_names(plan)
    ctx = Context(plan, placement, Fabric.from_routes(routes),
                  {n: k for k, n in enumerate(param_names)},
                  mark_index={n: k for k, n in enumerate(marks)},
                  dequant_ops=moe.dequant_ops(placement, mesh))
    roles, pe_region, reps = assign_roles(plan)
    check_layer_strides(placement)
    try:
        codes = [pe_code(ctx, role) for role in roles]
    finally:
        _LINEAR.pop(id(placement), None)
    names = [f"role{r}_x{x}_y{y}" for r, (x, y) in enumerate(reps)]
    program = assemble_regions(plan, pe_region, codes, names, params, param_names, routes,
                               placement.total_words, placement.dtype, source, left)
    program.mark_names = marks
    if placement.weight_dtype is not None:
        program.sram_bytes_needed = placement.total_bytes
    return DecodeProgram(program, plan, placement, routes, param_names, roles, reps,
                         params, left)


# --------------------------------------------------------------------------- standalone GEMV


@dataclass
class GemvProgram:
    """A standalone GEMV on a pw x ph mesh: W tile at `w`, x chunks at `x`, y at `y`."""

    program: Program
    kind: str
    out: Chunking       # y chunking (C for A, R for B)
    inp: Chunking       # x chunking (R for A, C for B)
    w: int
    x: int
    y: int
    mpad: int

    def pe(self, po: int, pi: int) -> int:
        """PE index holding output chunk `po` and input chunk `pi`."""
        i, j = (pi, po) if self.kind == "A" else (po, pi)
        return j * self.program.width + i

    def sram_image(self, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
        """float32 [W*H, sram_words] with the tiles of `weight` [M, K] and x in its layout."""
        sram = np.zeros((self.program.num_pes, self.program.sram_words), np.float32)
        out, inp = self.out, self.inp
        for po in range(out.parts):
            for pi in range(inp.parts):
                m, k = out.size(po), inp.size(pi)
                block = weight[out.start(po):out.start(po) + m, inp.start(pi):inp.start(pi) + k]
                tile = sram[self.pe(po, pi), self.w:self.w + k * self.mpad]
                tile.reshape(k, self.mpad)[:, :m] = block.T
        for pi in range(inp.parts):
            sram[self.pe(0, pi), self.x:self.x + inp.size(pi)] = \
                x[inp.start(pi):inp.start(pi + 1)]
        return sram

    def read_y(self, sram: np.ndarray) -> np.ndarray:
        """y gathered from the first PE of every output chunk (float32 [M])."""
        out = self.out
        return np.concatenate([sram[self.pe(po, 0), self.y:self.y + out.size(po)]
                               for po in range(out.parts)]).astype(np.float32)


def emit_gemv(kind: str, m_total: int, k_total: int, pw: int, ph: int, mesh: MeshConfig,
              dtype: str = "fp32") -> GemvProgram:
    """A program computing y = W x for W [m_total, k_total] with GEMV-A or GEMV-B."""
    if kind == "A":
        out = Chunking("C", chunk_bounds(m_total, ph))
        inp = Chunking("R", chunk_bounds(k_total, pw))
    else:
        out = Chunking("R", chunk_bounds(m_total, pw))
        inp = Chunking("C", chunk_bounds(k_total, ph))
    mpad, kmax = out.max_size, inp.max_size
    w, x, y = 0, kmax * mpad, kmax * mpad + kmax
    routes = route(pw, ph, mesh.with_mesh(pw, ph))
    fab = Fabric.from_routes(routes)
    roles, codes = {}, []
    pe_region = np.zeros(pw * ph, np.int32)
    m = np.zeros((ph, pw), np.int64)
    for j in range(ph):
        for i in range(pw):
            po, pi = (j, i) if kind == "A" else (i, j)
            m[j, i] = out.size(po)
            key = (i == 0, j == 0, tree_actions(i, pw), tree_actions(j, ph), inp.size(pi))
            if key not in roles:
                roles[key] = len(roles)
                b = CodeBuilder({"m": 0})
                if kind == "A":
                    gemv_a(b, fab, j == 0, key[2], key[4], w, mpad, x, y, Param("m"))
                else:
                    gemv_b(b, fab, i == 0, key[3], key[4], w, mpad, x, y, Param("m"))
                b.halt()
                codes.append(RegionCode(b.to_array(), b.notes))
            pe_region[j * pw + i] = roles[key]
    shape = _Shape(pw, ph)
    program = assemble_regions(shape, pe_region, codes, [f"gemv{r}" for r in range(len(codes))],
                               {"m": m}, ["m"], routes, y + mpad, dtype, f"<gemv-{kind}>")
    return GemvProgram(program, kind, out, inp, w, x, y, mpad)


@dataclass(frozen=True)
class _Shape:
    """The mesh shape `assemble_regions` needs from a plan."""

    pw: int
    ph: int


# --------------------------------------------------------------------------- verify


def verify_program(dp: DecodeProgram, mesh: MeshConfig, pos: int = 0) -> None:
    """Check the emitted program: it validates on the mesh, every PE has code, and every
    sender's message sequence on a color equals each of its receivers' receive sequence
    (same count and lengths), so no receive can block forever or mismatch."""
    program = dp.for_position(pos)
    validate_program(program, mesh)
    assert (program.pe_region >= 0).all(), "a PE of the rectangle has no code"
    sends, recvs = comm_sequences(program)
    for flow in dp.routes.flows:
        sent = sends.pop((flow.source, flow.color), [])
        for r in flow.receivers:
            got = recvs.pop((r, flow.color), [])
            assert got == sent, (f"{flow.name}: PE {flow.source} sends {sent} but PE {r} "
                                 f"receives {got}")
    left_over = sorted(k for k in sends if sends[k])
    assert not left_over, f"sends with no route: {left_over}"
    unmatched = sorted(k for k in recvs if recvs[k])
    assert not unmatched, f"receives with no sender: {unmatched}"


def comm_sequences(program: Program) -> tuple[dict, dict]:
    """((x, y), color) -> list of message lengths sent / received, in program order."""
    comm = {}
    for r in range(len(program.region_start)):
        code = program.region_code(r)
        ops = [(k, int(ins["op"])) for k, ins in enumerate(code)
               if int(ins["op"]) in (Op.SEND, Op.RECV, Op.RECVADD)]
        comm[r] = [(op, int(code[k]["a"][SLOT_COLOR]), _n_operand(code[k])) for k, op in ops]
    sends, recvs = {}, {}
    for pe in range(program.num_pes):
        region = int(program.pe_region[pe])
        if region < 0:
            continue
        xy = program.pe_xy(pe)
        for op, color, (kind, value) in comm[region]:
            n = program.param(pe, value) if kind == MODE_PARAM else value
            target = sends if op == Op.SEND else recvs
            target.setdefault((xy, color), []).append(n)
    return sends, recvs


def _n_operand(ins) -> tuple[int, int]:
    """(mode kind, value) of an instruction's element-count operand (no registers used)."""
    kind = (int(ins["modes"]) >> (8 * SLOT_N)) & 0x3
    assert kind != MODE_REG, "element counts of emitted code never use registers"
    return kind, int(ins["a"][SLOT_N])
