"""What every PE of the decode mesh holds and does: the data and pictures behind `emu map`.

`build_map` runs only the tile and place passes (compiler/tile.py, compiler/place.py), so
it works for models far too large to emulate, and for models that do not fit: the
placement is then computed without the capacity check and the map says by how much it
overflows (`MeshMap.status`). Each PE gets one of six roles (docs/mapping.md):

- R, root (0,0): top row and left column at once; root of every reduction tree;
- T, top row (y = 0): its R chunk of the residual stream H and the norm weights;
  RMSNorm, residual adds; sends x down its column;
- L, left column (x = 0): receives its row's GEMV-A outputs (C layout); RoPE, SwiGLU,
  softmax divide, logits;
- A, attention row: the KV cache of its row's kv groups; scores, softmax, weighted values;
- G, GEMV tiles: a tile of every weight matrix; multiplies it by the multicast x, joins
  the reduction trees;
- ".", idle: no weights (model smaller than the mesh); still relays trees and multicasts.

(R, T and L PEs also hold GEMV tiles, and on attention rows a KV cache.) Terminal maps
(`terminal_map`) downsample large meshes to blocks of PEs showing the block's majority
role; PNG maps (`render_png`) draw one labelled cell per PE on small meshes and, on a
wafer, blocks showing their most specific role (root > top > left > attention > GEMV >
idle) so that one-PE-wide rows stay visible, with region labels. Sizes are bytes unless
named otherwise.
"""

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
from rich.table import Table
from rich.text import Text

from compiler.decode import auto_layouts, layout_shift
from compiler.place import (
    OVERLAYS,
    Placement,
    kv_dims_per_row,
    largest_class,
    pe_class,
    pe_usage,
    place,
    row_attention,
)
from compiler.route import band_last_rows, color_budget
from compiler.system import head_mode, head_spec, layer_ranges, sub_spec, vocab_slices
from compiler.tile import TilePlan, tile
from emulator.files import atomic_write_bytes
from emulator.hw.dtypes import BYTES as DTYPE_BYTES
from emulator.hw.errors import ConfigError
from emulator.hw.mesh import MeshConfig
from emulator.views.tables import fit

ROOT, TOP, LEFT, ATTN, GEMV, IDLE = range(6)
LAYER_MATRICES = ("qkv", "o", "gu", "down")
SMALL_PNG = 48          # views up to this many PEs per side get one labelled cell per PE
PNG_MAX_BLOCKS = 600    # larger views are downsampled to at most this many blocks per side
UNBOUNDED_SRAM = 1 << 60


@dataclass(frozen=True)
class RoleKind:
    """How one role is drawn and explained."""

    key: str        # one character in terminal maps and PNG cells
    name: str
    style: str      # rich style
    color: str      # matplotlib colour
    does: str


ROLE_KINDS = (
    RoleKind("R", "root (0,0)", "bold white on red3", "#d62728",
             "top row and left column at once: root of the row and column reduction "
             "trees, finishes RMSNorm (1/sqrt), starts the first multicasts"),
    RoleKind("T", "top row", "bold white on blue", "#1f77b4",
             "its R chunk of the residual stream H and the norm weights; RMSNorm, residual "
             "adds; sends x down its column (MC) for every GEMV-A"),
    RoleKind("L", "left column", "bold white on green4", "#2ca02c",
             "receives its row's GEMV-A outputs (q/k/v, gate/up, logits: C layout); RoPE, "
             "SwiGLU, softmax divide; multicasts along its row (MR)"),
    RoleKind("A", "attention row", "bold black on dark_orange", "#ff9f1c",
             "the KV cache of its row's kv groups (position t on column t mod W); "
             "scores, softmax and weighted values of those heads"),
    RoleKind("G", "GEMV tiles", "black on grey70", "#c9c9c9",
             "a tile of every weight matrix of every layer; multiplies it by the multicast "
             "x and joins the row / column reduction trees"),
    RoleKind(".", "idle", "grey50", "#ffffff",
             "holds no weights (the model is smaller than the mesh); still relays the "
             "trees and multicasts"),
)


@dataclass
class MeshMap:
    """A model tiled and placed on a mesh (maybe without fitting), with per-PE roles."""

    model: str
    mesh: MeshConfig
    plan: TilePlan
    placement: Placement
    attempts: dict            # layout -> bytes per PE it needs
    roles: np.ndarray         # int8 [ph, pw], one of ROOT..IDLE
    used: np.ndarray          # int64 [ph, pw] bytes of the tiles, KV and scratch a PE fills
    reserved: dict            # kind -> int64 [ph, pw] bytes of the PE's address map
    head_bytes: int = 0       # bytes every PE reserves for its LM head slice (W > 1 wafers)
    wafer: str = ""           # which wafer of a system is shown ("" on one wafer)

    @property
    def spec(self):
        """The model spec."""
        return self.plan.spec

    @property
    def dtype(self) -> str:
        """Element type of weights and KV cache."""
        return self.placement.dtype

    @property
    def bytes_per_element(self) -> int:
        """Bytes of one stored element."""
        return DTYPE_BYTES[self.placement.dtype]

    @property
    def colors_needed(self) -> int:
        """Router colors the mapping needs."""
        return color_budget(self.plan.pw, self.plan.ph, band_last_rows(self.plan.bands) > 0)

    @property
    def fits(self) -> bool:
        """True when the SRAM map and the colors fit the hardware."""
        return (self.need_bytes <= self.mesh.sram_bytes
                and self.colors_needed <= self.mesh.num_colors)

    @property
    def need_bytes(self) -> int:
        """SRAM bytes per PE the mapping needs: its largest class, plus the LM head
        slice's reservation on a wafer of a system."""
        return self.placement.total_bytes + self.head_bytes

    @property
    def reserved_total(self) -> np.ndarray:
        """int64 [ph, pw]: SRAM bytes each PE's address map reserves (all kinds). The title,
        legend, cells, row notes and SRAM bar all read this (and `reserved`)."""
        return sum(self.reserved.values())

    def fullest_pe(self) -> tuple[int, int]:
        """(y, x) of a PE whose address map is the largest."""
        total = self.reserved_total
        return np.unravel_index(int(total.argmax()), total.shape)

    def bytes_by_kind(self) -> dict:
        """Reserved bytes by buffer kind (weight, kv, scratch) on the fullest PE (its PE
        class's address map, compiler/place.py)."""
        y, x = self.fullest_pe()
        return {kind: int(grid[y, x]) for kind, grid in self.reserved.items()}

    def status(self) -> str:
        """One line: fits (bytes of capacity) or DOES NOT FIT (required vs available)."""
        need, have = self.need_bytes, self.mesh.sram_bytes
        parts = ", ".join(f"{k} {v:,}" for k, v in self.bytes_by_kind().items())
        if self.head_bytes:
            parts += f"; {self.head_bytes:,} of them for the LM head slice"
        tried = "; ".join(f"{name} layout {b:,} B" for name, b in self.attempts.items())
        colors = f"{self.colors_needed} of {self.mesh.num_colors} colors"
        if self.fits:
            return (f"fits: {need:,} of {have:,} bytes of SRAM per PE ({parts}), {colors}, "
                    f"{self.plan.layout} layout")
        why = []
        if need > have:
            why.append(f"needs {need:,} bytes of SRAM per PE ({parts}), a PE has {have:,}")
        if self.colors_needed > self.mesh.num_colors:
            why.append(f"needs {colors}")
        lo, hi = int(self.reserved_total.min()), int(self.reserved_total.max())
        return (f"DOES NOT FIT: {'; '.join(why)} (PEs reserve {lo:,}-{hi:,} B: each PE class "
                f"shares one address map sized for its largest tiles); "
                f"layouts tried: {tried}; showing the {self.plan.layout} layout's placement "
                f"attempt")


# --------------------------------------------------------------------------- building


def build_map(spec, mesh: MeshConfig, dtype: str = "fp32", layout: str = "auto",
              max_context: int | None = None, model: str = "model") -> MeshMap:
    """Tile and place `spec` on the whole mesh; never raises for lack of SRAM.

    `layout` "auto" takes the first of groups, even that fits, else the one needing the
    fewest bytes per PE (as `compile_decode` would try them). On a system of W > 1
    wafers the map shows one wafer (`wafer_map`).
    """
    if mesh.wafers > 1:
        return wafer_map(spec, mesh, dtype, layout, max_context, model)
    return _map(spec, mesh, dtype, layout, max_context, model)


def wafer_map(spec, mesh: MeshConfig, dtype: str, layout: str, max_context: int | None,
              model: str) -> MeshMap:
    """One wafer of a system (compiler/system.py, the LM head as `head_mode` places it):
    with the head sliced, wafer 0 (the largest layer range), its layers placed beside
    the largest head-slice program's reservation, which every PE's address map counts
    too (its bytes by kind added to every PE; docs/mapping.md, "Multi-wafer systems");
    else the last wafer, its layers and the whole LM head."""
    one = mesh.one_wafer()
    if head_mode(spec, mesh, dtype, layout) == "last":
        start, stop = layer_ranges(spec.num_layers, mesh.wafers)[-1]
        wafer = (f"wafer {mesh.wafers - 1} of {mesh.wafers}: layers {start}..{stop - 1} + "
                 f"LM head")
        return _map(sub_spec(spec, stop - start, start), one, dtype, layout, max_context,
                    model, wafer=wafer)
    slices = {v1 - v0: (v0, v1) for v0, v1 in vocab_slices(spec.vocab_size, mesh.wafers)}
    heads = []
    for v0, v1 in slices.values():
        part = head_spec(spec, v0, v1)
        name = auto_layouts(part, one)[0] if layout == "auto" else layout
        heads.append(attempt_placement(part, one, name, dtype, None, head=True))
    head = max(heads, key=lambda p: p.total_bytes)
    start, stop = layer_ranges(spec.num_layers, mesh.wafers)[0]
    v0, v1 = vocab_slices(spec.vocab_size, mesh.wafers)[0]
    wafer = (f"wafer 0 of {mesh.wafers}: layers {start}..{stop - 1} + LM head slice "
             f"{v0}..{v1 - 1}")
    return _map(sub_spec(spec, stop - start, start), one, dtype, layout, max_context, model,
                head, wafer)


def _map(spec, mesh: MeshConfig, dtype: str, layout: str, max_context: int | None,
         model: str, head: Placement | None = None, wafer: str = "") -> MeshMap:
    """`build_map` of one wafer's program: the whole model, or (`head`: the head-slice
    placement beside it) a wafer's layers without the LM head."""
    reserve = 0 if head is None else head.total_bytes
    rest = dataclasses.replace(mesh, sram_bytes=max(1, mesh.sram_bytes - reserve))
    layouts = auto_layouts(spec, mesh) if layout == "auto" else (layout,)
    placements = {name: attempt_placement(spec, rest, name, dtype, max_context, head is None)
                  for name in layouts}
    fitting = [p for p in placements.values() if p.total_bytes <= rest.sram_bytes]
    chosen = fitting[0] if fitting else min(placements.values(), key=lambda p: p.total_bytes)
    plan = chosen.plan
    used = pe_usage(chosen) * DTYPE_BYTES[chosen.dtype]
    reserved = reserved_bytes(chosen)
    if head is not None:   # the slice's program shares every PE (its largest class)
        used = used + pe_usage(head) * DTYPE_BYTES[head.dtype]
        key = largest_class(head)
        kinds = class_kind_words(head.maps[key], head.class_words[key])
        reserved = {k: grid + kinds[k] * DTYPE_BYTES[head.dtype] for k, grid in reserved.items()}
    return MeshMap(model, mesh, plan, chosen,
                   {name: p.total_bytes + reserve for name, p in placements.items()},
                   role_grid(plan), used, reserved, reserve, wafer)


KINDS = ("weight", "kv", "scratch")


def class_kind_words(buffers: dict, words: int) -> dict:
    """kind -> elements of one class's address map (`words` long) owned by that kind; an
    overlay counts only where its partner does not reach, so the kinds sum to `words`."""
    owner = np.full(words, -1, np.int8)
    ordered = sorted(buffers.items(), key=lambda item: item[0] in OVERLAYS)
    for name, buf in ordered:
        span = owner[buf.addr:buf.addr + buf.words]
        span[span < 0 if name in OVERLAYS else slice(None)] = KINDS.index(buf.kind)
    return {kind: int(np.count_nonzero(owner == k)) for k, kind in enumerate(KINDS)}


def reserved_bytes(placement: Placement) -> dict:
    """kind -> int64 [ph, pw]: bytes of each PE's address map by kind (weight, kv,
    scratch). Every PE of a class reserves its class's map (compiler/place.py), so the
    largest total equals `placement.total_bytes`."""
    plan, size = placement.plan, DTYPE_BYTES[placement.dtype]
    per_class = {key: class_kind_words(buffers, placement.class_words[key])
                 for key, buffers in placement.maps.items()}
    out = {kind: np.zeros((plan.ph, plan.pw), np.int64) for kind in KINDS}
    for y in range(plan.ph):
        for x, columns in ((0, slice(0, 1)), (1, slice(1, None))):
            if x < plan.pw:
                words = per_class[pe_class(plan, x, y)]
                for kind in KINDS:
                    out[kind][y, columns] = words[kind] * size
    return out


def attempt_placement(spec, mesh: MeshConfig, layout: str, dtype: str,
                      max_context: int | None, head: bool = True) -> Placement:
    """Tile (with the ffn / vocabulary shift `compile_decode` would take) and place, the
    capacity check lifted (the caller compares the bytes)."""
    shift, capacity = layout_shift(spec, mesh, layout, dtype, max_context, head)
    plan = tile(spec, mesh.width, mesh.height, layout, head, shift)
    return place(plan, dataclasses.replace(mesh, sram_bytes=UNBOUNDED_SRAM), dtype,
                 max_context, capacity=capacity)


def tile_elements(plan: TilePlan, matrix: str) -> np.ndarray:
    """int64 [ph, pw]: elements of `matrix` held by each PE."""
    t = plan.matrices[matrix]
    out, inp = plan.vec(t.out).sizes(), plan.vec(t.inp).sizes()
    return np.outer(out, inp) if t.kind == "A" else np.outer(inp, out)


def role_grid(plan: TilePlan) -> np.ndarray:
    """int8 [ph, pw]: the role of every PE (see the module docstring)."""
    holds = sum(tile_elements(plan, m) for m in plan.matrices) > 0
    roles = np.where(holds, GEMV, IDLE).astype(np.int8)
    roles[[row_attention(plan, j) for j in range(plan.ph)], :] = ATTN
    roles[:, 0] = LEFT
    roles[0, :] = TOP
    roles[0, 0] = ROOT
    return roles


def layer_bytes(m: MeshMap, layer: int) -> np.ndarray:
    """int64 [ph, pw]: bytes of layer `layer` on each PE (weight tiles, norms, KV cache)."""
    plan, spec = m.plan, m.spec
    total = sum(tile_elements(plan, name) for name in LAYER_MATRICES)
    hidden = plan.vec("hidden").sizes()
    total[0, :] += 2 * hidden
    if spec.attention_bias:
        total[:, 0] += plan.vec("qkv").sizes()
    if spec.o_proj_bias:
        total[0, :] += hidden
    if spec.mlp_bias:
        total[:, 0] += plan.vec("gu").sizes()
        total[0, :] += hidden
    total += (kv_dims_per_row(plan) * m.placement.slots)[:, None]
    return total * m.bytes_per_element


def check_layer(m: MeshMap, layer: int | None) -> None:
    """ConfigError naming the valid range when `layer` is not a layer of the model."""
    if layer is not None and not 0 <= layer < m.spec.num_layers:
        raise ConfigError(f"--layer {layer} is outside the model's layers "
                          f"0..{m.spec.num_layers - 1}")


def full_region(m: MeshMap) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the whole mesh, inclusive."""
    return 0, 0, m.plan.pw - 1, m.plan.ph - 1


def check_region(m: MeshMap, region) -> tuple[int, int, int, int]:
    """The region (x0, y0, x1, y1) inclusive, or the whole mesh; ConfigError if outside."""
    if region is None:
        return full_region(m)
    x0, y0, x1, y1 = region
    pw, ph = m.plan.pw, m.plan.ph
    if not (0 <= x0 <= x1 < pw and 0 <= y0 <= y1 < ph):
        raise ConfigError(f"--region {x0},{y0},{x1},{y1} is outside the {pw}x{ph} mesh: "
                          f"need 0 <= x0 <= x1 <= {pw - 1} and 0 <= y0 <= y1 <= {ph - 1}")
    return x0, y0, x1, y1


# --------------------------------------------------------------------------- summaries


def runs(values, first: int = 0) -> str:
    """'8 (x 0-3), 7 (x 4-7)': equal consecutive values with their index ranges."""
    values = list(values)
    parts, start = [], 0
    for k in range(1, len(values) + 1):
        if k == len(values) or values[k] != values[start]:
            a, b = first + start, first + k - 1
            parts.append(f"{values[start]} ({a}-{b})" if b > a else f"{values[start]} ({a})")
            start = k
    if len(parts) > 4:
        parts = parts[:2] + [f"... {len(parts) - 3} more ..."] + parts[-1:]
    return ", ".join(parts)


def chunk_summary(m: MeshMap) -> list[tuple[str, str]]:
    """(vector, 'elements (indices)') rows: how every vector is chunked over the mesh."""
    plan, spec = m.plan, m.spec
    rows = [("hidden per column x (R)", runs(plan.vec("hidden").sizes())),
            ("q/k/v rows per row y (C)", runs(plan.vec("qkv").sizes())),
            ("kv groups per row y", runs(plan.vec("groups").sizes())),
            ("ffn (gate, up) per row y (C)", runs(plan.vec("ffn").sizes())),
            ("vocab (logits) per row y (C)", runs(plan.vec("vocab").sizes()))]
    if plan.layout == "even":
        rows.insert(2, ("attention q/k/v per row y", runs(plan.vec("qkv_attn").sizes())))
    rows.append(("KV slots per PE", f"{m.placement.slots} (position t on column t mod "
                                    f"{plan.pw}, max_context {m.placement.max_context}, "
                                    f"{spec.head_dim} elements each)"))
    return rows


def attention_note(m: MeshMap, y0: int, y1: int) -> str:
    """Which kv groups rows y0..y1 hold ('' when none)."""
    if m.plan.bands is not None:
        bands = m.plan.bands
        rows = [j for j in range(y0, min(y1 + 1, bands.rows))]
        if not rows:
            return ""
        g0, g1 = bands.group(rows[0]), bands.group(rows[-1])
        what = f"band of kv group {g0}" if g0 == g1 else f"bands of kv groups {g0}-{g1}"
        kv = int(m.reserved["kv"][rows].max())
        return f"attention: {what}, KV up to {kv:,} B/PE"
    groups = m.plan.vec("groups")
    rows = [j for j in range(y0, y1 + 1) if groups.size(j)]
    if not rows:
        return ""
    g0, g1 = groups.start(rows[0]), groups.start(rows[-1] + 1) - 1
    what = f"kv group {g0}" if g0 == g1 else f"kv groups {g0}-{g1}"
    where = f" (rows {rows[0]}-{rows[-1]})" if y1 > y0 and len(rows) > 1 else (
        f" (row {rows[0]})" if y1 > y0 else "")
    kv = int(m.reserved["kv"][rows].max())
    return f"attention: {what}{where}, KV up to {kv:,} B/PE"


def legend_rows(m: MeshMap, roles: np.ndarray, used: np.ndarray) -> list[tuple]:
    """(RoleKind, PEs, 'min-max B/PE') for every role present in the view."""
    rows = []
    for code, kind in enumerate(ROLE_KINDS):
        mask = roles == code
        if mask.any():
            lo, hi = int(used[mask].min()), int(used[mask].max())
            rows.append((kind, int(mask.sum()), f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"))
    return rows


# --------------------------------------------------------------------------- terminal


def majority_blocks(grid: np.ndarray, by: int, bx: int, kinds: int = len(ROLE_KINDS)):
    """Downsample an int grid to blocks of by x bx cells: the most frequent value of each
    block (ties: the lower value, i.e. the more specific role); int8 [ceil(h/by), ceil(w/bx)]."""
    h, w = grid.shape
    nby, nbx = -(-h // by), -(-w // bx)
    padded = np.full((nby * by, nbx * bx), -1, np.int64)
    padded[:h, :w] = grid
    blocks = padded.reshape(nby, by, nbx, bx).transpose(0, 2, 1, 3).reshape(nby, nbx, -1)
    counts = np.stack([(blocks == k).sum(axis=2) for k in range(kinds)], axis=2)
    return counts.argmax(axis=2).astype(np.int8)


def mean_blocks(values: np.ndarray, by: int, bx: int) -> np.ndarray:
    """Downsample a float grid to the mean of each by x bx block (edges: partial blocks)."""
    h, w = values.shape
    nby, nbx = -(-h // by), -(-w // bx)
    total = np.zeros((nby * by, nbx * bx))
    count = np.zeros_like(total)
    total[:h, :w], count[:h, :w] = values, 1
    shape = (nby, by, nbx, bx)
    return total.reshape(shape).sum(axis=(1, 3)) / count.reshape(shape).sum(axis=(1, 3))


def terminal_blocks(width: int, height: int, max_cols: int) -> tuple[int, int, int]:
    """(bx, by, characters per cell) for a view of width x height PEs."""
    if width * 2 <= max_cols:
        return 1, 1, 2
    if width <= max_cols:
        return 1, 1, 1
    bx = -(-width // max_cols)
    return bx, 2 * bx, 1


def terminal_map(m: MeshMap, region=None, layer: int | None = None,
                 max_cols: int = 64) -> list:
    """Rich renderables: title, the coloured grid with row notes, legend and chunk tables."""
    x0, y0, x1, y1 = check_region(m, region)
    check_layer(m, layer)
    roles = m.roles[y0:y1 + 1, x0:x1 + 1]
    values = (layer_bytes(m, layer) if layer is not None
              else m.reserved_total)[y0:y1 + 1, x0:x1 + 1]
    bx, by, cw = terminal_blocks(x1 - x0 + 1, y1 - y0 + 1, max_cols)
    shown = majority_blocks(roles, by, bx)
    shade = mean_blocks(values.astype(float), by, bx)
    out = [Text(map_title(m, (x0, y0, x1, y1), layer), style="bold"),
           Text(m.status(), style="green" if m.fits else "bold red")]
    if bx > 1:
        out.append(Text(f"each character = {bx}x{by} PEs (x by y), showing the block's "
                        f"majority role; thin rows are listed on the right"))
    out.append(Text(ruler(x0, x1, bx, cw)))
    peak = float(values.max(initial=0))
    for r in range(shown.shape[0]):
        ya, yb = y0 + r * by, min(y1, y0 + (r + 1) * by - 1)
        line = Text(f"{ya:>5} " if by == 1 else f"{ya:>5}-", style="dim")
        for c in range(shown.shape[1]):
            kind = ROLE_KINDS[shown[r, c]]
            key = kind.key if layer is None else shade_digit(shade[r, c], peak)
            line.append(key.ljust(cw), style=kind.style)
        note = attention_note(m, ya, yb)
        if note:
            line.append("  " + note, style="dim")
        out.append(line)
    if layer is not None:
        out.append(Text(f"digits: layer {layer} bytes per PE (weight tiles, norms, KV) in "
                        f"ninths of the maximum {int(peak):,} B; colour = role"))
    out.append(legend_table(m, roles, m.reserved_total[y0:y1 + 1, x0:x1 + 1]))
    if layer is None:
        out.append(chunk_table(m))
    return out


def map_title(m: MeshMap, region, layer) -> str:
    """'tiny on small 8x8 (groups layout, fp32)[, region ...][, layer N]'."""
    x0, y0, x1, y1 = region
    text = (f"{m.model} on {m.mesh.name} {m.plan.pw}x{m.plan.ph} ({m.plan.layout} layout, "
            f"{m.dtype})" + (f", {m.wafer}" if m.wafer else ""))
    if (x0, y0, x1, y1) != full_region(m):
        text += f", region x {x0}-{x1}, y {y0}-{y1}"
    return text + (f", layer {layer}" if layer is not None else "")


def ruler(x0: int, x1: int, bx: int, cw: int) -> str:
    """Column numbers above the grid (every cell or every few cells)."""
    cells = -(-(x1 - x0 + 1) // bx)
    line = [" "] * (cells * cw)
    step = 5 if cw == 2 else 10
    for c in range(0, cells, step):
        label = str(x0 + c * bx)
        if c * cw + len(label) <= len(line):
            line[c * cw:c * cw + len(label)] = label
    return "      " + "".join(line)


def shade_digit(value: float, peak: float) -> str:
    """'0' for nothing, else 1..9 in proportion to value / peak."""
    if value <= 0 or peak <= 0:
        return "0"
    return str(max(1, min(9, int(np.ceil(9 * value / peak)))))


def legend_table(m: MeshMap, roles: np.ndarray, used: np.ndarray) -> Table:
    """Key, role, PEs, SRAM bytes per PE and what the role does."""
    table = Table(title="legend", title_justify="left")
    for name, justify in (("key", "center"), ("role", "left"), ("PEs", "right"),
                          ("SRAM reserved B/PE", "right"),
                          ("holds and does", "left")):
        table.add_column(name, justify=justify)
    for kind, count, used_text in legend_rows(m, roles, used):
        table.add_row(Text(kind.key, style=kind.style), kind.name, f"{count:,}", used_text,
                      kind.does)
    return fit(table)


def chunk_table(m: MeshMap) -> Table:
    """How the vectors are chunked over columns and rows (elements per chunk)."""
    table = Table(title="chunks: elements (index range)", title_justify="left")
    table.add_column("vector")
    table.add_column("chunks")
    for name, text in chunk_summary(m):
        table.add_row(name, text)
    return fit(table)


def layer_table(m: MeshMap, layer: int) -> Table:
    """Layer `layer`'s buffers: SRAM address, bytes reserved, tile shapes, PEs holding it."""
    check_layer(m, layer)
    pl, nb = m.placement, m.bytes_per_element
    table = Table(title=f"layer {layer}: buffers (same address on every PE)",
                  title_justify="left")
    for name in ("buffer", "addr", "bytes/PE", "tile rows x cols", "split", "PEs"):
        table.add_column(name, justify="left" if name in ("buffer", "split",
                                                          "tile rows x cols") else "right")
    for name, buf in pl.buffers.items():
        if not name.startswith(f"L{layer}."):
            continue
        matrix = name.split(".", 1)[1]
        shape, split, holders = buffer_facts(m, matrix)
        table.add_row(name, str(buf.addr), f"{buf.words * nb:,}", shape, split,
                      f"{holders:,}")
    return fit(table)


def buffer_facts(m: MeshMap, matrix: str) -> tuple[str, str, int]:
    """(tile shape range, how it is split, PEs holding a non-empty part) of a layer buffer."""
    plan = m.plan
    if matrix in plan.matrices:
        t = plan.matrices[matrix]
        out, inp = plan.vec(t.out).sizes(), plan.vec(t.inp).sizes()
        shape = f"{_span(out)} x {_span(inp)}"
        split = ("GEMV-A: rows over y, cols over x" if t.kind == "A"
                 else "GEMV-B: rows over x, cols over y")
        return shape, split, int((tile_elements(plan, matrix) > 0).sum())
    if matrix in ("k", "v") and plan.bands is not None:
        dims = kv_dims_per_row(plan)
        return (f"{m.placement.slots + 1} slots x up to {int(dims.max())} dims",
                f"{'K' if matrix == 'k' else 'V'} dims of the row's band, positions over x",
                int((dims > 0).sum()) * plan.pw)
    if matrix[0] in "kv" and matrix[1:].isdigit():
        a = int(matrix[1:])
        rows = int((plan.vec("groups").sizes() > a).sum())
        which = "K" if matrix[0] == "k" else "V"
        return (f"{m.placement.slots} slots x {m.spec.head_dim}",
                f"{which} of the row's kv group #{a}", rows * plan.pw)
    if matrix.endswith("_bias") and matrix.startswith(("qkv", "gu")):
        return _span(plan.vec(matrix.split("_")[0]).sizes()), "left column (C)", plan.ph
    return _span(plan.vec("hidden").sizes()), "top row (R)", plan.pw


def _span(sizes) -> str:
    """'a' or 'a-b' for the range of chunk sizes."""
    lo, hi = int(np.min(sizes)), int(np.max(sizes))
    return str(lo) if lo == hi else f"{lo}-{hi}"


def pe_layer_table(m: MeshMap, layer: int, region) -> Table:
    """One row per PE of a small region: layer `layer`'s tiles and KV bytes on it."""
    x0, y0, x1, y1 = region
    plan = m.plan
    kv = 2 * m.spec.head_dim * m.placement.slots * m.bytes_per_element
    totals = layer_bytes(m, layer)
    table = Table(title=f"layer {layer} per PE (tile rows x cols)", title_justify="left")
    for name in ("x", "y", "role", "q/k/v", "o", "gate/up", "down", "KV B", "layer B"):
        table.add_column(name, justify="left" if name == "role" else "right")
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            tiles = ["x".join(map(str, plan.tile_shape(t, x, y))) for t in LAYER_MATRICES]
            table.add_row(str(x), str(y), ROLE_KINDS[m.roles[y, x]].name, *tiles,
                          f"{kv * plan.vec('groups').size(y):,}", f"{int(totals[y, x]):,}")
    return fit(table)


# --------------------------------------------------------------------------- PNG


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--png needs matplotlib: pip install 'emu-wafer[plot]'") from None
    return plt


def priority_blocks(grid: np.ndarray, b: int) -> np.ndarray:
    """Downsample to b x b blocks showing the most specific role (the smallest code)."""
    h, w = grid.shape
    nby, nbx = -(-h // b), -(-w // b)
    padded = np.full((nby * b, nbx * b), IDLE, np.int8)
    padded[:h, :w] = grid
    return padded.reshape(nby, b, nbx, b).min(axis=(1, 3))


def render_png(m: MeshMap, path, region=None, layer: int | None = None) -> None:
    """Write the map as a PNG (atomically); see `png_bytes`."""
    atomic_write_bytes(path, png_bytes(m, region, layer))


def png_bytes(m: MeshMap, region=None, layer: int | None = None) -> bytes:
    """The map as PNG bytes.

    Small views: one labelled cell per PE. Large views: the whole view downsampled, with
    one-PE-wide rows and columns drawn as lines and labelled, beside a zoom of its
    top-left corner at one cell per PE. Below both: the per-PE SRAM budget.
    """
    plt = _pyplot()
    region = check_region(m, region)
    check_layer(m, layer)
    x0, y0, x1, y1 = region
    w, h = x1 - x0 + 1, y1 - y0 + 1
    if max(w, h) <= SMALL_PNG:
        cell = min(0.55, 11.0 / max(w, h))
        map_w, map_h = max(5.0, w * cell), max(4.0, h * cell)
        fig = plt.figure(figsize=(map_w + 5.5, map_h + 2.4))
        grid = fig.add_gridspec(2, 1, height_ratios=[map_h, 1.0], hspace=0.3)
        ax = fig.add_subplot(grid[0])
        _draw_cells(ax, m, region, layer, labels=max(w, h) <= DETAIL_CELLS)
        _legend(ax, m, region, (1.02, 1.0))
        budget = fig.add_subplot(grid[1])
    else:
        map_h = 9.0
        map_w = max(4.0, map_h * w / h)
        fig = plt.figure(figsize=(map_w + 7.0, map_h + 2.4))
        grid = fig.add_gridspec(2, 2, height_ratios=[map_h, 1.0], width_ratios=[map_w, 6.0],
                                hspace=0.25, wspace=0.15)
        ax = fig.add_subplot(grid[0, 0])
        _draw_wafer(fig, ax, m, region, layer)
        zoom = (x0, y0, min(x1, x0 + ZOOM[0] - 1), min(y1, y0 + ZOOM[1] - 1))
        zoom_ax = fig.add_subplot(grid[0, 1])
        _draw_cells(zoom_ax, m, zoom, None, labels=False)
        zoom_ax.set_title(f"zoom: x {zoom[0]}-{zoom[2]}, y {zoom[1]}-{zoom[3]} (one cell "
                          f"per PE)", fontsize=9, loc="left")
        _mark_zoom(ax, zoom)
        _legend(zoom_ax, m, region, (0.0, -0.12))
        budget = fig.add_subplot(grid[1, :])
    ax.set_title(map_title(m, region, layer) + "\n" + _wrap(m.status(), 100),
                 fontsize=10, color="black" if m.fits else "#b00000", loc="left")
    _draw_budget(budget, m)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


ZOOM = (16, 12)     # PEs (x, y) of the corner zoom beside a large map
DETAIL_CELLS = 20   # cells carry kv groups and bytes up to this many PEs per side


def _wrap(text: str, width: int) -> str:
    """Break a long line at spaces."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _rgb(codes: np.ndarray) -> np.ndarray:
    """float [h, w, 3] colours of role codes."""
    from matplotlib.colors import to_rgb

    palette = np.array([to_rgb(k.color) for k in ROLE_KINDS])
    return palette[codes]


def _legend(ax, m: MeshMap, region, anchor) -> None:
    """Role patches with PE counts and SRAM bytes used, beside or below the map."""
    from matplotlib.patches import Patch

    x0, y0, x1, y1 = region
    rows = legend_rows(m, m.roles[y0:y1 + 1, x0:x1 + 1],
                       m.reserved_total[y0:y1 + 1, x0:x1 + 1])
    handles = [Patch(facecolor=kind.color, edgecolor="black",
                     label=f"{kind.key}  {kind.name}: {count:,} PEs, {text} B reserved")
               for kind, count, text in rows]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=anchor, fontsize=8,
              frameon=False, title="role (PEs in view, SRAM reserved per PE)", title_fontsize=9,
              alignment="left")


def _draw_cells(ax, m: MeshMap, region, layer, labels: bool) -> None:
    """One cell per PE in its role colour; with `labels`, the key, kv groups and bytes
    (all layers, or layer `layer`), else the key only."""
    x0, y0, x1, y1 = region
    roles = m.roles[y0:y1 + 1, x0:x1 + 1]
    values = (layer_bytes(m, layer) if layer is not None
              else m.reserved_total)[y0:y1 + 1, x0:x1 + 1]
    ax.imshow(_rgb(roles), extent=(x0 - 0.5, x1 + 0.5, y1 + 0.5, y0 - 0.5),
              interpolation="nearest")
    w, h = roles.shape[1], roles.shape[0]
    size = max(5.0, min(8.0, (100.0 if labels else 220.0) / max(w, h)))
    groups = m.plan.vec("groups")
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            code = int(m.roles[y, x])
            label = ROLE_KINDS[code].key
            if labels:
                if groups.size(y) and code != IDLE:
                    label += f" g{_range_text(groups.start(y), groups.start(y + 1) - 1)}"
                label += f"\n{_kib(int(values[y - y0, x - x0]))}"
            ax.text(x, y, label, ha="center", va="center", fontsize=size,
                    color="white" if code in (ROOT, TOP, LEFT) else "black")
    ax.set_xticks(range(x0, x1 + 1, max(1, -(-w // 16))))
    ax.set_yticks(range(y0, y1 + 1, max(1, -(-h // 16))))
    ax.set_xticks(np.arange(x0 - 0.5, x1 + 1), minor=True)
    ax.set_yticks(np.arange(y0 - 0.5, y1 + 1), minor=True)
    ax.grid(which="minor", color="black", linewidth=0.4)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("x (PE column)")
    ax.set_ylabel("y (PE row)")
    what = f"layer {layer} bytes" if layer is not None else "SRAM bytes reserved"
    note = attention_note(m, y0, y1)
    ax.text(1.02, 0.0, (f"cell: role key, kv groups held (gN),\n{what} (K = 1024 B)"
                        if labels else "cell: role key") + (f"\n{note}" if note else ""),
            transform=ax.transAxes, fontsize=8, va="bottom")


def _range_text(a: int, b: int) -> str:
    return str(a) if a == b else f"{a}-{b}"


def _kib(n: int) -> str:
    """Bytes as '512' or '19.8K'."""
    return str(n) if n < 1024 else f"{n / 1024:.1f}K"


def _draw_wafer(fig, ax, m: MeshMap, region, layer) -> None:
    """A downsampled map (or layer heatmap) with its thin rows drawn and labelled."""
    x0, y0, x1, y1 = region
    roles = m.roles[y0:y1 + 1, x0:x1 + 1]
    b = max(1, -(-max(roles.shape) // PNG_MAX_BLOCKS))
    extent = (x0 - 0.5, x0 + roles.shape[1] - 0.5, y0 + roles.shape[0] - 0.5, y0 - 0.5)
    if layer is None:
        ax.imshow(_rgb(priority_blocks(roles, b)), extent=extent, interpolation="nearest",
                  aspect="equal")
        note = f"each block = {b}x{b} PEs, most specific role shown"
    else:
        values = mean_blocks(layer_bytes(m, layer)[y0:y1 + 1, x0:x1 + 1].astype(float), b, b)
        image = ax.imshow(values, extent=extent, interpolation="nearest", aspect="equal",
                          cmap="viridis")
        fig.colorbar(image, ax=ax, label=f"layer {layer} bytes per PE", shrink=0.5,
                     location="bottom", pad=0.08)
        note = f"each block = {b}x{b} PEs (mean)"
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_ylabel("y (PE row)")
    if layer is None:
        _draw_thin_rows(ax, m, region)
        _draw_bands(ax, m, region)
        note += "; 1-PE rows drawn as thick lines"
    ax.set_xlabel(f"x (PE column); {note}", fontsize=8)
    _label_regions(ax, m, region)


def _draw_thin_rows(ax, m: MeshMap, region) -> None:
    """Thick lines over the top row, left column and the attention rows of the older
    layouts (too thin to see); the spread layout's bands are areas (`_draw_bands`)."""
    x0, y0, x1, y1 = region
    rows = [j for j in range(y0, y1 + 1) if m.plan.vec("groups").size(j)]
    if rows and m.plan.bands is None:
        ax.plot([x0, x1], [(rows[0] + rows[-1]) / 2] * 2, color=ROLE_KINDS[ATTN].color,
                lw=4, solid_capstyle="butt")
    if y0 == 0:
        ax.plot([x0, x1], [0, 0], color=ROLE_KINDS[TOP].color, lw=3, solid_capstyle="butt")
    if x0 == 0:
        ax.plot([0, 0], [y0, y1], color=ROLE_KINDS[LEFT].color, lw=3, solid_capstyle="butt")
    if x0 == 0 and y0 == 0:
        ax.plot([0], [0], "s", color=ROLE_KINDS[ROOT].color, markersize=7)


def _mark_zoom(ax, zoom) -> None:
    """A dashed rectangle on the large map where the zoom panel looks."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = zoom
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                           edgecolor="black", linestyle="--", lw=1.2))


def _label_regions(ax, m: MeshMap, region) -> None:
    """Boxes with arrows naming the top row, left column, attention rows and the body."""
    x0, y0, x1, y1 = region
    w, h = x1 - x0 + 1, y1 - y0 + 1
    box = {"boxstyle": "round", "facecolor": "white", "alpha": 0.92, "edgecolor": "0.4"}
    arrow = {"arrowstyle": "->", "color": "black", "lw": 1.2}
    plan = m.plan
    labels = []
    if y0 == 0:
        labels.append((f"top row y=0 ({plan.pw:,} PEs): residual stream H in R chunks of "
                       f"{_span(plan.vec('hidden').sizes())}, RMSNorm, residual adds; sends "
                       f"x down every column", (x0 + 0.85 * w, 0), (0.40, 0.08)))
    rows = [j for j in range(y0, y1 + 1) if row_attention(plan, j)]
    if rows:
        note = attention_note(m, rows[0], rows[-1]).removeprefix("attention: ")
        labels.append((f"attention rows y={_range_text(rows[0], rows[-1])}: {note}, "
                       f"scores, softmax, weighted values{band_text(plan)}",
                       (x0 + 0.2 * w, (rows[0] + rows[-1]) / 2), (0.16, 0.24)))
    if x0 == 0:
        labels.append((f"left column x=0 ({plan.ph:,} PEs): GEMV-A outputs in C chunks "
                       f"(q/k/v, gate/up, logits), RoPE, SwiGLU", (0, y0 + 0.8 * h),
                       (0.12, 0.80)))
    for text, target, (fx, fy) in labels:
        ax.annotate(_wrap(text, 38), xy=target, xytext=(x0 + fx * w, y0 + fy * h),
                    fontsize=8, bbox=box, arrowprops=arrow, va="center")
    roles = m.roles[y0:y1 + 1, x0:x1 + 1]
    for code, text in ((GEMV, "GEMV tiles: each PE holds a tile of every weight matrix of "
                              "every layer"),
                       (IDLE, "idle: no weights")):
        ys, xs = np.nonzero(roles == code)
        if len(xs) > 0.05 * roles.size:
            ax.text(x0 + xs.mean(), y0 + ys.mean(), _wrap(text, 30), ha="center",
                    va="center", fontsize=9, bbox=box)


def band_text(plan: TilePlan) -> str:
    """How a band of the spread layout splits its rows ('' for other layouts)."""
    bands = plan.bands
    if bands is None:
        return ""
    return (f"; each band of {bands.size} rows: rows 0-{bands.krows - 1} hold key (and q) "
            f"RoPE pairs, rows {bands.krows}-{bands.size - 1} value dims; the band's top "
            f"row finishes its scores")


def _draw_bands(ax, m: MeshMap, region) -> None:
    """Thin lines between the bands of the spread layout, each labelled with its kv group
    at the right edge, and a dotted line where each band's value rows start."""
    bands, (x0, y0, x1, y1) = m.plan.bands, region
    if bands is None:
        return
    for g in range(bands.groups):
        top, values = g * bands.size, g * bands.size + bands.krows
        if y0 <= top <= y1 and top > y0:
            ax.plot([x0, x1], [top - 0.5] * 2, color="black", lw=0.6)
        if y0 <= values <= y1 and bands.krows < bands.size:
            ax.plot([x0, x1], [values - 0.5] * 2, color="black", lw=0.4, linestyle=":")
        mid = top + bands.size / 2
        if y0 <= mid <= y1:
            ax.text(x1 + 0.01 * (x1 - x0 + 1), mid, f"g{g}", fontsize=7, va="center")


def _draw_budget(ax, m: MeshMap) -> None:
    """A stacked bar of the reserved bytes per PE by kind against the PE's SRAM."""
    kinds = m.bytes_by_kind()
    colors = {"weight": "#4c72b0", "kv": "#dd8452", "scratch": "#8c8c8c"}
    left = 0
    for kind, value in kinds.items():
        ax.barh(0, value, left=left, color=colors[kind], label=f"{kind} {value:,} B")
        left += value
    cap = m.mesh.sram_bytes
    ax.axvline(cap, color="#b00000", linestyle="--", lw=1.5)
    ax.text(cap, 0.45, f"SRAM per PE {cap:,} B ", color="#b00000", fontsize=8, va="bottom",
            ha="right")
    ax.set_xlim(0, max(left, cap) * 1.08)
    ax.set_yticks([])
    ax.set_ylim(-0.6, 0.9)
    verdict = "fits" if m.fits else "DOES NOT FIT"
    ax.set_title(f"SRAM address map of the fullest PE class ({m.plan.layout} layout, "
                 f"{m.dtype}): {left:,} B, {verdict}", fontsize=9, loc="left")
    ax.set_xlabel("bytes")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
