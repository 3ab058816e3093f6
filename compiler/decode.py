"""Decode compilation on one mesh: tile -> place -> route -> emit (`compile_decode`), the
fast-forward's cuts of a compiled step (`layer_cuts`) and the SRAM image of the weights
(`weight_image`). Running the result is the runtime's job (emulator/mesh/runtime.py).

fp16 / bf16: weights, KV cache and host inputs are rounded to that format when stored
(`compiler.numerics.round_to`); arithmetic stays fp32; vector timing uses the format's
SIMD width and the SRAM budget its element size.
"""

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from compiler import moe, reference
from compiler.batching import check_batch, head_group_candidates
from compiler.emit import DecodeProgram, emit_decode, layer_kind, verify_program
from compiler.numerics import canonical_dtype, dtype_bytes
from compiler.place import (
    Placement,
    default_max_context,
    pe_class,
    place,
    spread_shift,
    verify_placement,
    write_c,
    write_matrix,
    write_r,
)
from compiler.route import RoutePlan, route, verify_routes
from compiler.tile import (
    TilePlan,
    attn_col_order,
    band_geometry,
    gu_row_order,
    qkv_row_order,
    row_pairs,
    tile,
    verify_tiles,
)
from emulator.hw.errors import ConfigError, FitError
from emulator.hw.mesh import MeshConfig


@dataclass
class Compiled:
    """Every stage of a compiled decode step."""

    plan: TilePlan
    placement: Placement
    routes: RoutePlan
    decode: DecodeProgram


def compile_decode(spec, mesh: MeshConfig, dtype: str = "fp32", max_context: int | None = None,
                   layout: str = "auto", head: bool = True, batch: int = 1,
                   weight_dtype: str | None = None,
                   head_group: int | None = None) -> Compiled:
    """tile -> place -> route -> emit on the whole mesh.

    `weight_dtype`: storage format of the MLP / expert tiles (`bf16`, `fp8`, `mxfp4`;
    None: `dtype`): SRAM bytes follow it and each use of such a tile is preceded by its
    dequantisation on the PE (docs/mapping.md, "Weight formats").
    `head`: the mesh runs the final norm and LM head (False on all but the last wafer of
    a multi-wafer system, compiler.system).
    `layout`: "spread" (KV cache and attention over every band row, docs/mapping.md),
    "groups" (q/k/v rows chunked by whole kv-head groups), "even" (balanced chunks plus a
    relayout on the left column) or "auto" (`auto_layouts`). Raises FitError when the
    model does not fit.
    `batch`: users decoded together (compiler/batching.py; spread layout only, so B > 1
    with a layout other than spread raises ValueError); `max_context` is per user.
    `head_group`: run the batched LM head in groups of that many users (0: all at once;
    None: all at once if that fits, else `choose_head_group`).
    """
    plan, placement = plan_and_place(spec, mesh, dtype, max_context, layout, head, batch,
                                     weight_dtype, head_group)
    routes = run_pass("route", route, (mesh.width, mesh.height, mesh, plan.bands),
                      lambda out: verify_routes(out, mesh))
    decode = run_pass("emit", emit_decode, (plan, placement, routes, mesh),
                      lambda out: verify_program(out, mesh))
    return Compiled(plan, placement, routes, decode)


def plan_and_place(spec, mesh: MeshConfig, dtype: str = "fp32",
                   max_context: int | None = None, layout: str = "auto", head: bool = True,
                   batch: int = 1, weight_dtype: str | None = None,
                   head_group: int | None = None) -> tuple[TilePlan, Placement]:
    """The tile and place passes of `compile_decode` (the first layout that fits): a
    cheap check that a model fits before its code is emitted; FitError otherwise.
    A batch whose LM head of all users at once does not fit runs it in groups of users
    (`choose_head_group`, compiler/batching.py); the FitError names the whole batch."""
    dtype = canonical_dtype(dtype)
    layouts = auto_layouts(spec, mesh) if layout == "auto" else (layout,)
    require_mesh_mapped(spec, layouts, batch)
    error = None
    for name in layouts:
        groups = [0 if head_group is None else head_group]
        if head_group is None and batch > 1 and head and name == "spread":
            groups.append(None)
        for group in groups:
            if group is None:
                group = choose_head_group(spec, mesh, dtype, max_context, batch,
                                          weight_dtype)
                if group is None:
                    break
            shift, capacity = layout_shift(spec, mesh, name, dtype, max_context, head, batch,
                                           weight_dtype, group)
            plan = run_pass("tile", tile, (spec, mesh.width, mesh.height, name, head, shift),
                            verify_tiles)
            if batch != 1:
                plan = dataclasses.replace(plan, batch=batch, head_group=group)
                check_batch(plan)
            try:
                return plan, run_pass("place", place, (plan, mesh, dtype, max_context,
                                                       name == layouts[-1], capacity,
                                                       weight_dtype),
                                      lambda out: verify_placement(out, mesh))
            except FitError as exc:
                error = error if group else exc
    raise error


def choose_head_group(spec, mesh: MeshConfig, dtype: str, max_context: int | None,
                      batch: int, weight_dtype: str | None = None) -> int | None:
    """The LM-head group size of a batch whose whole-batch head does not fit: the largest
    of `head_group_candidates` that holds the context and needs no larger ffn /
    vocabulary shift than the smallest group does (a shift moves vocabulary rows off the
    band rows and lengthens the head's and the MLP's messages on the rows outside, which
    costs more than more groups do). Bisection: a larger group never needs less SRAM.
    None: no candidate fits (or the mesh is too narrow to keep the groups' logits)."""
    candidates = head_group_candidates(batch, mesh.width)     # largest first
    context = max_context or default_max_context(spec)

    def shift(group: int) -> tuple[int, int]:
        return layout_shift(spec, mesh, "spread", dtype, max_context, True, batch,
                            weight_dtype, group)

    if not candidates or shift(candidates[-1])[1] < context:
        return None
    lowest, lo, hi = shift(candidates[-1])[0], 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        s, capacity = shift(candidates[mid])
        if s <= lowest and capacity >= context:
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo]


def mesh_unmapped(spec, layout: str = "spread", batch: int = 1) -> list[str]:
    """The features of `spec` the mesh mapping does not handle (in `layout`, for `batch`
    users: batched decode, compiler/batching.py, maps the dense full-attention models)."""
    features = {"mixture-of-experts MLP": spec.moe is not None and batch > 1}
    if layout != "spread" or batch > 1:
        features.update({"qk-norm": spec.qk_norm, "attention sinks": spec.attention_sinks,
                         "sliding-window attention": bool(spec.layer_types)})
    return [name for name, present in features.items() if present]


def require_mesh_mapped(spec, layouts, batch: int = 1) -> None:
    """ConfigError naming the features of `spec` no layout in `layouts` maps yet."""
    missing = mesh_unmapped(spec, layouts[-1], batch)
    if missing:
        users = f", {batch} users" if batch > 1 else ""
        raise ConfigError(f"decode on the mesh ({layouts[-1]} layout{users}) does not map "
                          f"{spec.architecture}'s {', '.join(missing)} yet; the numpy "
                          f"reference (compiler/reference.py) runs it (docs/models.md)")


def layout_shift(spec, mesh: MeshConfig, layout: str, dtype: str,
                 max_context: int | None, head: bool = True,
                 batch: int = 1, weight_dtype: str | None = None,
                 head_group: int = 0) -> tuple[int, int | None]:
    """(shift, capacity) the tile pass takes for `layout`: the spread layout moves its ffn
    and vocabulary rows off the band rows as far as `max_context` needs
    (compiler.place.spread_shift; with `batch` users, per user); other layouts (0, None)."""
    if layout != "spread":
        return 0, None
    return spread_shift(spec, mesh.width, mesh.height, head,
                        mesh.sram_bytes // dtype_bytes(canonical_dtype(dtype)),
                        max_context or default_max_context(spec), batch, dtype,
                        weight_dtype, head_group)


def auto_layouts(spec, mesh: MeshConfig) -> tuple[str, ...]:
    """Layouts `layout="auto"` tries in order: spread (KV and attention over the whole
    mesh) when the mesh has a row per kv head, else groups, then even."""
    if band_geometry(mesh.height, spec.num_kv_heads, spec.head_dim) is not None:
        return ("spread",)
    return ("groups", "even")


def verifying() -> bool:
    """True when `EMU_VERIFY` is set to a non-empty value other than 0: every pass's output
    is then checked by its verify function (the test suite sets it, tests/conftest.py)."""
    return os.environ.get("EMU_VERIFY", "") not in ("", "0")


def run_pass(name: str, function, args: tuple, verify):
    """One named compiler pass: `function(*args)`, then `verify(output)` under EMU_VERIFY.
    A verify failure names the pass."""
    output = function(*args)
    if verifying():
        try:
            verify(output)
        except AssertionError as exc:
            raise AssertionError(f"compiler pass {name!r}: {exc}") from exc
    return output


def layer_cuts(compiled: Compiled) -> list[str]:
    """The fast-forward's cuts: the mark starting each decoder layer's QKV projection,
    then the one ending the last layer (`head`, or `end` on a mesh without the LM head).
    Every PE waits at a QKV mark for the normalised input, so the state at one layer's
    cut repeats at the next layer's from the first layer on (emulator/mesh/fast_forward.py
    `block_shift`); the last interval, the rest of the last layer, is a partial block
    (the first layer's code up to `L1.norm_in`)."""
    spec = compiled.plan.spec
    period = kind_period(spec)
    layers = [f"L{layer}.qkv" for layer in range(0, spec.num_layers, period)]
    return layers + ["head" if compiled.plan.head else "end"]


def kind_period(spec) -> int:
    """Smallest p such that layer l + p has layer l's kind (emit.layer_kind) for every l:
    the fast-forward's blocks are p layers (1 for a uniform model, 2 for gpt-oss's
    alternating sliding/full layers; the layer count when there is no period)."""
    kinds = [layer_kind(spec, layer) for layer in range(spec.num_layers)]
    for p in range(1, len(kinds)):
        if all(kinds[i] == kinds[i + p] for i in range(len(kinds) - p)):
            return p
    return max(1, len(kinds))


def weight_image(plan: TilePlan, placement: Placement, weights: dict) -> np.ndarray:
    """float32 [W*H, sram_words]: zeros plus every weight tile at its placed address."""
    spec = plan.spec
    sram = np.zeros((plan.pw * plan.ph, placement.total_words), np.float32)
    qkv_order, gu_order = qkv_row_order(spec, plan), gu_row_order(plan)
    o_order = attn_col_order(plan)
    for layer in range(spec.num_layers):
        sparse = spec.is_sparse(layer)
        p, w = f"L{layer}.", _layer_tensors(weights, layer, sparse)
        write_matrix(sram, plan, "qkv", np.concatenate(w["qkv"])[qkv_order],
                     _addr_of(placement, p + "qkv"))
        write_matrix(sram, plan, "o", w["o"][:, o_order], _addr_of(placement, p + "o"))
        if sparse:
            moe.write_layer(sram, plan, placement, weights, layer,
                            lambda name: _addr_of(placement, name))
        else:
            write_matrix(sram, plan, "gu", np.concatenate(w["gu"])[gu_order],
                         _addr_of(placement, p + "gu"))
            write_matrix(sram, plan, "down", w["down"], _addr_of(placement, p + "down"))
        write_r(sram, plan, "hidden", w["norm_in"], placement.addr(p + "norm_in"))
        write_r(sram, plan, "hidden", w["norm_post"], placement.addr(p + "norm_post"))
        if spec.attention_bias:
            write_c(sram, plan, "qkv", np.concatenate(w["qkv_bias"])[qkv_order],
                    _addr_of(placement, p + "qkv_bias"))
        if spec.o_proj_bias:
            write_r(sram, plan, "hidden", w["o_bias"], placement.addr(p + "o_bias"))
        if spec.mlp_bias and not sparse:
            write_c(sram, plan, "gu", np.concatenate(w["gu_bias"])[gu_order],
                    _addr_of(placement, p + "gu_bias"))
            write_r(sram, plan, "hidden", w["down_bias"], placement.addr(p + "down_bias"))
    if spec.attention_sinks:
        _write_sinks(sram, plan, placement, weights)
    if spec.qk_norm:
        _write_qk_norm(sram, plan, placement, weights)
    if plan.head:
        write_matrix(sram, plan, "lm_head", reference.lm_head_weight(spec, weights),
                     _addr_of(placement, "lm_head"))
        write_r(sram, plan, "hidden", weights["model.norm.weight"],
                placement.addr("norm_final"))
    return sram


def _write_sinks(sram: np.ndarray, plan: TilePlan, placement: Placement, weights: dict) -> None:
    """Spread layout: each band row holding value dims keeps its group's sink logits
    (`L{layer}.sinks`, group_size elements) on its left PE."""
    spec, bands, gs = plan.spec, plan.bands, plan.spec.group_size
    for j in range(bands.rows):
        if not bands.nv[bands.local(j)]:
            continue
        g = bands.group(j)
        for layer in range(spec.num_layers):
            sinks = weights[f"model.layers.{layer}.self_attn.sinks"][g * gs:(g + 1) * gs]
            addr = placement.addr_at(f"L{layer}.sinks", 0, j)
            sram[j * plan.pw, addr:addr + gs] = sinks


def _write_qk_norm(sram: np.ndarray, plan: TilePlan, placement: Placement,
                   weights: dict) -> None:
    """Spread layout: each row holding key pairs keeps the q_norm weights of its pair dims
    (once per q head of the group) then the k_norm weights, in QKV order (`L{layer}.qkn`)."""
    spec, bands, half = plan.spec, plan.bands, plan.spec.head_dim // 2
    for j in range(bands.rows):
        r = bands.local(j)
        if not bands.kp[r]:
            continue
        dims = row_pairs(bands, r, half)
        for layer in range(spec.num_layers):
            a = f"model.layers.{layer}.self_attn."
            values = np.concatenate([np.tile(weights[a + "q_norm.weight"][dims],
                                             spec.group_size), weights[a + "k_norm.weight"][dims]])
            addr = placement.addr_at(f"L{layer}.qkn", 0, j)
            sram[j * plan.pw, addr:addr + values.size] = values


def _addr_of(placement: Placement, name: str) -> np.ndarray:
    """int64 [ph]: address of weight buffer `name` on each row (left and other PEs of a
    row share it; -1 where the row's class has no such buffer)."""
    plan = placement.plan
    out = np.full(plan.ph, -1, np.int64)
    for j in range(plan.ph):
        buffers = placement.maps[pe_class(plan, 0, j)]
        if name in buffers:
            out[j] = buffers[name].addr
    return out


def _layer_tensors(weights: dict, layer: int, sparse: bool = False) -> dict:
    """One layer's tensors grouped by the mesh matrices they form (the MoE block of a
    sparse layer is written by compiler.moe)."""
    p = f"model.layers.{layer}."
    a, m = p + "self_attn.", p + "mlp."
    out = {"qkv": [weights[a + f"{n}_proj.weight"] for n in "qkv"],
           "o": weights[a + "o_proj.weight"],
           "norm_in": weights[p + "input_layernorm.weight"],
           "norm_post": weights[p + "post_attention_layernorm.weight"]}
    if not sparse:
        out.update(gu=[weights[m + "gate_proj.weight"], weights[m + "up_proj.weight"]],
                   down=weights[m + "down_proj.weight"])
    if a + "q_proj.bias" in weights:
        out["qkv_bias"] = [weights[a + f"{n}_proj.bias"] for n in "qkv"]
    if a + "o_proj.bias" in weights:
        out["o_bias"] = weights[a + "o_proj.bias"]
    if m + "gate_proj.bias" in weights:
        out["gu_bias"] = [weights[m + "gate_proj.bias"], weights[m + "up_proj.bias"]]
        out["down_bias"] = weights[m + "down_proj.bias"]
    return out
