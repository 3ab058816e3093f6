"""Place pass: TilePlan -> the SRAM layout of every PE (one address map shared by all PEs).

Every PE uses the same addresses, so region code can use immediate addresses; a buffer's
size is the largest size any PE needs (PEs with smaller tiles leave the rest unused; the
PE with the largest tiles decides whether the model fits, so this costs no capacity).
Buffers, in address order (all sizes in elements, `w = SRAM element`):

- weights, per layer: qkv, o, gu, down tiles (column-major, column stride = the largest
  tile row count `mpad`), RMSNorm weights, optional biases; then lm_head and the final
  norm. A tile [m, k] of a matrix lives at `addr + c * mpad + r` for row r, column c.
- KV cache, per layer and per kv group of a row: K and V as [slots, head_dim]
  (`slots = ceil(max_context / pw)`; position t lives on PE (t mod pw, row) in slot
  t div pw, row-major so one `rdot` / `vfma` covers one position).
- scratch: the residual stream H and normalised XN (R chunks), accumulators, the q/k/v
  and attention buffers, softmax scores, RoPE tables written by the host, relayout buffer.

`FitError` when `total_words * bytes(dtype)` exceeds the PE's SRAM; the message gives the
required and available bytes per PE and the smallest square mesh that would fit.
"""

import json
import math
from dataclasses import dataclass, field

import numpy as np

from compiler.tile import TilePlan, tile
from emulator.errors import FitError
from emulator.hw.mesh import DTYPE_BYTES, MeshConfig

DEFAULT_MAX_CONTEXT = 256
MAX_SQUARE_SEARCH = 2048


@dataclass(frozen=True)
class Buffer:
    """One SRAM buffer: first element `addr`, `words` elements, `kind` weight|kv|scratch."""

    addr: int
    words: int
    kind: str


@dataclass(frozen=True)
class Placement:
    """Output of the place pass: the shared SRAM address map (elements) and its budget."""

    plan: TilePlan
    dtype: str
    max_context: int                       # positions the KV cache can hold
    slots: int                             # KV positions per PE: ceil(max_context / pw)
    buffers: dict = field(hash=False)      # name -> Buffer
    total_words: int = 0                   # SRAM elements per PE

    def addr(self, name: str) -> int:
        """First element of buffer `name`."""
        return self.buffers[name].addr

    @property
    def total_bytes(self) -> int:
        """SRAM bytes per PE the program needs."""
        return self.total_words * DTYPE_BYTES[self.dtype]


def default_max_context(spec) -> int:
    """KV positions held for functional runs: min(max_position_embeddings, 256)."""
    return min(spec.max_position_embeddings, DEFAULT_MAX_CONTEXT)


def buffer_sizes(plan: TilePlan, max_context: int) -> list[tuple[str, int, str]]:
    """(name, elements, kind) of every buffer in address order (module docstring)."""
    spec, ng = plan.spec, plan.vec("groups").max_size
    hd, gs, heads = spec.head_dim, spec.group_size, plan.max_heads
    slots = -(-max_context // plan.pw)
    hid, entries = plan.vec("hidden").max_size, []
    for layer in range(spec.num_layers):
        entries += _layer_weights(plan, layer)
    entries += [("lm_head", plan.kmax("lm_head") * plan.mpad("lm_head"), "weight"),
                ("norm_final", hid, "weight")]
    for layer in range(spec.num_layers):
        for a in range(ng):
            entries += [(f"L{layer}.k{a}", hd * slots, "kv"), (f"L{layer}.v{a}", hd * slots, "kv")]
    rope = (gs + 1) * hd // 2
    ffn = plan.vec("ffn").max_size
    acc = max(plan.mpad("gu"), plan.mpad("lm_head"), plan.mpad("o"),
              plan.mpad("qkv") if plan.layout == "even" else 0)
    entries += [("H", hid, "scratch"), ("XN", hid, "scratch"), ("SS", 1, "scratch"),
                ("ACC", acc, "scratch"), ("QKV", ng * plan.group_len, "scratch"),
                ("XB", max(plan.vec("attn").max_size, ffn), "scratch"),
                ("ATT", heads * hd, "scratch"), ("COS", rope, "scratch"),
                ("SIN", rope, "scratch"), ("TMP", max(4 * rope, ffn), "scratch"),
                ("SC", heads * slots, "scratch"), ("MX", heads, "scratch"),
                ("MXT", heads, "scratch"), ("OL", heads * (hd + 1), "scratch"),
                ("RL", heads, "scratch")]
    if plan.layout == "even":
        entries.append(("G", max(plan.vec("qkv").total, spec.q_dim), "scratch"))
    return entries


def _layer_weights(plan: TilePlan, layer: int) -> list[tuple[str, int, str]]:
    """Weight buffers of one decoder layer."""
    spec, p = plan.spec, f"L{layer}."
    hid = plan.vec("hidden").max_size
    out = [(p + m, plan.kmax(m) * plan.mpad(m), "weight") for m in ("qkv", "o", "gu", "down")]
    out += [(p + "norm_in", hid, "weight"), (p + "norm_post", hid, "weight")]
    if spec.attention_bias:
        out.append((p + "qkv_bias", plan.mpad("qkv"), "weight"))
    if spec.o_proj_bias:
        out.append((p + "o_bias", hid, "weight"))
    if spec.mlp_bias:
        out += [(p + "gu_bias", plan.mpad("gu"), "weight"), (p + "down_bias", hid, "weight")]
    return out


def required_words(plan: TilePlan, max_context: int) -> int:
    """SRAM elements per PE the plan needs."""
    return sum(words for _, words, _ in buffer_sizes(plan, max_context))


def place(plan: TilePlan, mesh: MeshConfig, dtype: str = "fp32",
          max_context: int | None = None) -> Placement:
    """The place pass: assign addresses; FitError when the PE's SRAM is too small."""
    spec = plan.spec
    max_context = default_max_context(spec) if max_context is None else max_context
    if max_context < 1:
        raise ValueError(f"max_context must be positive, got {max_context}")
    buffers, addr = {}, 0
    for name, words, kind in buffer_sizes(plan, max_context):
        buffers[name] = Buffer(addr, words, kind)
        addr += words
    placement = Placement(plan, dtype, max_context, -(-max_context // plan.pw), buffers, addr)
    if placement.total_bytes > mesh.sram_bytes:
        raise FitError(_fit_message(placement, mesh))
    return placement


def _fit_message(placement: Placement, mesh: MeshConfig) -> str:
    """Required vs available bytes per PE, by kind, and the smallest square mesh that fits."""
    plan, nbytes = placement.plan, DTYPE_BYTES[placement.dtype]
    by_kind = {}
    for buf in placement.buffers.values():
        by_kind[buf.kind] = by_kind.get(buf.kind, 0) + buf.words * nbytes
    parts = ", ".join(f"{kind} {b}" for kind, b in by_kind.items())
    side = smallest_square(plan.spec, mesh, placement.dtype, placement.max_context, plan.layout)
    hint = (f"smallest square mesh that fits: {side}x{side}" if side else
            f"no square mesh up to {MAX_SQUARE_SEARCH}x{MAX_SQUARE_SEARCH} fits with the "
            f"'{plan.layout}' layout")
    return (f"model does not fit on a {plan.pw}x{plan.ph} mesh ({plan.layout} layout, "
            f"{placement.dtype}, max_context {placement.max_context}): needs "
            f"{placement.total_bytes} bytes of SRAM per PE ({parts}), a PE has "
            f"{mesh.sram_bytes} bytes; {hint}")


def smallest_square(spec, mesh: MeshConfig, dtype: str, max_context: int,
                    layout: str) -> int | None:
    """Side of the smallest n x n mesh on which the model fits, or None up to the limit.

    Starts at the balanced lower bound sqrt(weight bytes / SRAM bytes) and scans upward.
    """
    weight_bytes = spec.param_count() * DTYPE_BYTES[dtype]
    start = max(1, math.isqrt(weight_bytes // mesh.sram_bytes))
    for n in range(start, MAX_SQUARE_SEARCH + 1):
        if required_words(tile(spec, n, n, layout), max_context) * DTYPE_BYTES[dtype] \
                <= mesh.sram_bytes:
            return n
    return None


# --------------------------------------------------------------------------- verify / dump


def verify_placement(placement: Placement, mesh: MeshConfig) -> None:
    """Check buffers are disjoint, inside the SRAM budget, and large enough for every tile."""
    plan, end = placement.plan, 0
    for name, buf in sorted(placement.buffers.items(), key=lambda kv: kv[1].addr):
        assert buf.addr >= end, f"buffer {name} overlaps the previous one"
        assert buf.words >= 0, f"buffer {name} has negative size"
        end = buf.addr + buf.words
    assert end == placement.total_words, "buffers do not end at total_words"
    assert placement.total_bytes <= mesh.sram_bytes, "placement exceeds the PE's SRAM"
    for layer in range(plan.spec.num_layers):
        for m in ("qkv", "o", "gu", "down"):
            _check_tiles(placement, m, f"L{layer}.{m}")
    _check_tiles(placement, "lm_head", "lm_head")


def _check_tiles(placement: Placement, matrix: str, name: str) -> None:
    """Every PE's tile of `matrix` fits its buffer with the shared column stride."""
    plan, words = placement.plan, placement.buffers[name].words
    mpad = plan.mpad(matrix)
    for i in range(plan.pw):
        for j in range(plan.ph):
            m, k = plan.tile_shape(matrix, i, j)
            assert m <= mpad and k * mpad <= words, f"{name}: tile of PE ({i},{j}) too big"


def pe_usage(placement: Placement) -> np.ndarray:
    """int64 [ph, pw]: SRAM elements each PE actually uses (scratch counted everywhere)."""
    plan, spec = placement.plan, placement.plan.spec
    used = np.zeros((plan.ph, plan.pw), np.int64)
    for name, tile_ in plan.matrices.items():
        out, inp = plan.vec(tile_.out).sizes(), plan.vec(tile_.inp).sizes()
        area = np.outer(out, inp) if tile_.kind == "A" else np.outer(inp, out)
        used += area * (1 if name == "lm_head" else spec.num_layers)
    groups = plan.vec("groups").sizes()
    used += (2 * spec.num_layers * spec.head_dim * placement.slots * groups)[:, None]
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
                 addr: int) -> None:
    """Store `values` [M, K] (rows in output-vector order) as every PE's column-major tile."""
    t = plan.matrices[matrix]
    out, inp, mpad = plan.vec(t.out), plan.vec(t.inp), plan.mpad(matrix)
    for j in range(plan.ph):
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
    """Store a C-layout vector: chunk j at `addr` on PE (0, j)."""
    chunks = plan.vec(vector)
    for j in range(plan.ph):
        sram[j * plan.pw, addr:addr + chunks.size(j)] = values[chunks.start(j):chunks.start(j + 1)]


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
