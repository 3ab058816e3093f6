"""Multi-wafer decode: a model's layers pipelined over N identical wafers, its LM head
on the last wafer or split by vocabulary over all of them.

A system is `mesh.wafers` copies of one wafer joined by a wafer-to-wafer link
(`mesh.wafer_link_bytes_per_s`, `mesh.wafer_link_latency_s`). Wafer w runs a contiguous
range of layers (near-equal ranges, larger ones first); wafer 0 also takes the token's
embedding (a host write, as on one wafer). The final norm and LM head either run on the
last wafer ("last") or, on W > 1 wafers, are *sliced* ("sliced"): wafer w then also
holds a *head-slice program*, the final norm and the LM head rows of its vocabulary
slice [v0, v1) (near-equal slices, `vocab_slices`), compiled as a model with no layers
and that slice as its vocabulary (`head_spec`). `compile_system(lm_head="auto")` takes
the one that holds the longer context (`head_mode`). A wafer's layer program is the
one-wafer mapping of a model with only its layers (compiler.decode.compile_decode,
`head` on the last wafer of an unsliced system only); in a sliced system it is placed
in the SRAM the head-slice program leaves: every PE reserves the head-slice program's
largest per-PE bytes (`System.reserve_bytes`), so capacity and fit errors count both.

Per-token decode time (docs/mapping.md, "Multi-wafer systems"):

    seconds = (sum over wafers of layer_cycles(w)
               + max over wafers of head_cycles(w)) / clock + link_seconds
    link_seconds = (W - 1) * handoff + broadcast + latency   (sliced)
                 = (W - 1) * handoff                          (last; 0 on one wafer)
    handoff   = hidden_size * bytes(dtype) / wafer_link_bytes_per_s + wafer_link_latency_s
    broadcast = (W - 1) * hidden_size * bytes(dtype) / wafer_link_bytes_per_s
                + wafer_link_latency_s

(no head slices: the max term is 0 and the last wafer's cycles include the head.) The
wafers run their layers one after another for one token (a pipeline of one user); a
hand-off is the residual stream crossing one link; the broadcast sends the last wafer's
(un-normed) residual stream to the W - 1 others through its one system I/O; the head
slices then run side by side and the (max, index) of each slice meets in one link
latency. Wafers with the same layer program share it, slices of the same size share one
head-slice program: each distinct program is compiled and emulated once (the emulator
is deterministic and timing never depends on values).
"""

import dataclasses
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from compiler import reference
from compiler.decode import Compiled, compile_decode, plan_and_place
from compiler.numerics import canonical_dtype, dtype_bytes, mlp_weight_axis
from compiler.tile import chunk_bounds
from emulator.hw.dtypes import weight_format
from emulator.hw.errors import FitError
from emulator.hw.mesh import MeshConfig


@dataclass
class WaferPart:
    """One wafer of a system: its layer range [start, stop) and its program."""

    index: int
    start: int
    stop: int
    head: bool
    compiled: Compiled

    @property
    def layers(self) -> int:
        """Decoder layers on this wafer."""
        return self.stop - self.start


@dataclass
class HeadPart:
    """One wafer's head-slice program: the final norm and LM head rows [v0, v1)."""

    index: int
    v0: int
    v1: int
    compiled: Compiled


@dataclass
class System:
    """A model compiled onto `len(parts)` wafers (`heads`: the vocabulary slices of the
    LM head when it is sliced, else empty and the last wafer's layer program holds it)."""

    spec: object
    mesh: MeshConfig
    dtype: str
    parts: list
    heads: list = dataclasses.field(default_factory=list)
    reserve_bytes: int = 0     # SRAM bytes per PE the head-slice program takes

    @property
    def sliced(self) -> bool:
        """The LM head is sliced over the wafers (else the last wafer holds it)."""
        return bool(self.heads)

    @property
    def wafers(self) -> int:
        """Wafers in the system."""
        return len(self.parts)

    @property
    def layer_mesh(self) -> MeshConfig:
        """One wafer with the SRAM the layer programs are placed in (a PE's SRAM minus
        `reserve_bytes`)."""
        one = self.mesh.one_wafer()
        return dataclasses.replace(one, sram_bytes=one.sram_bytes - self.reserve_bytes)

    def distinct(self) -> dict:
        """`program_key(part)` -> the first part with that program."""
        out = {}
        for part in self.parts:
            out.setdefault(program_key(part), part)
        return out

    def distinct_heads(self) -> dict:
        """id of a head-slice program -> the first head part with it."""
        out = {}
        for head in self.heads:
            out.setdefault(id(head.compiled), head)
        return out


def program_key(part: WaferPart) -> tuple:
    """What sets a wafer's layer program: its layer count, head flag and compiled object
    (parts with equal layer counts, head flags and layer kinds share one,
    `compile_system`)."""
    return (part.layers, part.head, id(part.compiled))


def model_bytes(spec, dtype: str, max_context: int, weight_dtype: str | None = None) -> int:
    """Bytes of weights plus the KV cache of `max_context` positions (the MLP / expert
    weights at `weight_dtype`'s bits when given, compiler.place.quantized)."""
    nbytes = dtype_bytes(dtype)
    kv = spec.kv_bytes_per_token(nbytes) * max_context
    if weight_dtype is None:
        return spec.param_count() * nbytes + kv
    shapes = spec.weight_shapes()
    mlp = sum(math.prod(s) for n, s in shapes.items() if mlp_weight_axis(n) is not None)
    rest = spec.param_count() - mlp
    bits = weight_format(weight_dtype).bits_per_element
    return rest * nbytes + math.ceil(mlp * bits / 8) + kv


def wafers_needed(spec, mesh: MeshConfig, dtype: str, max_context: int,
                  weight_dtype: str | None = None) -> int:
    """Smallest number of wafers whose SRAM (PEs x SRAM per PE) holds weights + KV cache."""
    return max(1, math.ceil(model_bytes(spec, dtype, max_context, weight_dtype)
                            / (mesh.num_pes * mesh.sram_bytes)))


def layer_ranges(num_layers: int, wafers: int) -> list[tuple[int, int]]:
    """Contiguous near-equal layer ranges [start, stop), one per wafer (larger first)."""
    if wafers > num_layers:
        raise FitError(f"{wafers} wafers for {num_layers} layers: a wafer would hold none")
    b = chunk_bounds(num_layers, wafers)
    return [(b[w], b[w + 1]) for w in range(wafers)]


def sub_spec(spec, layers: int, start: int = 0):
    """The model with only decoder layers start .. start + layers - 1, renumbered from 0
    (one wafer's part; their layer types and sparse MLPs come along)."""
    stop = start + layers
    moe = spec.moe
    if moe is not None:
        moe = dataclasses.replace(moe, sparse_layers=tuple(
            layer - start for layer in moe.sparse_layers if start <= layer < stop))
    return dataclasses.replace(spec, num_layers=layers, moe=moe,
                               layer_types=spec.layer_types[start:stop])


def vocab_slices(vocab_size: int, wafers: int) -> list[tuple[int, int]]:
    """Contiguous near-equal vocabulary slices [v0, v1), one per wafer."""
    b = chunk_bounds(vocab_size, wafers)
    return [(b[w], b[w + 1]) for w in range(wafers)]


def head_spec(spec, v0: int, v1: int):
    """The model a head-slice program compiles: no decoder layers (so no KV cache, no
    attention or MLP features) and the vocabulary rows [v0, v1) of the LM head, untied
    (`head_weights` gives it those rows)."""
    return dataclasses.replace(sub_spec(spec, 0, spec.num_layers), vocab_size=v1 - v0,
                               moe=None, qk_norm=False, attention_sinks=False,
                               tie_word_embeddings=False)


def head_weights(spec, weights: dict, v0: int, v1: int) -> dict:
    """The tensors of a head-slice program: the final norm and LM head rows [v0, v1)."""
    return {"model.norm.weight": weights["model.norm.weight"],
            "lm_head.weight": reference.lm_head_weight(spec, weights)[v0:v1]}


LM_HEAD_MODES = ("auto", "sliced", "last")


def compile_system(spec, mesh: MeshConfig, dtype: str = "bf16", max_context: int | None = None,
                   layout: str = "auto", weight_dtype: str | None = None,
                   jobs: int | None = None, lm_head: str = "auto") -> System:
    """Compile each distinct wafer program once; FitError naming the wafer that fails.

    `lm_head`: "sliced" (the LM head sliced by vocabulary over the W > 1 wafers: the
    head-slice programs are placed first, `reserve_bytes` the largest per-PE bytes of
    any of them, then every wafer's layers in what is left), "last" (the whole head on
    the last wafer) or "auto" (`head_mode`). One wafer always holds the whole head.
    Distinct programs compile side by side in forked processes, up to `jobs` at once
    (None: one per CPU; 1: here, one after another); the result does not depend on it."""
    dtype = canonical_dtype(dtype)
    if lm_head not in LM_HEAD_MODES:
        raise ValueError(f"lm_head must be one of {LM_HEAD_MODES}, got {lm_head!r}")
    if lm_head == "auto":
        lm_head = head_mode(spec, mesh, dtype, layout, weight_dtype)
    sliced = mesh.wafers > 1 and lm_head == "sliced"
    head_todo = _head_jobs(spec, mesh, dtype, layout) if sliced else {}
    reserve = _reserve(head_todo.values())
    todo, keys = _layer_jobs(spec, mesh, dtype, max_context, layout, weight_dtype, sliced,
                             reserve)
    args = list(todo.values()) + list(head_todo.values())
    for a in args[:len(todo)]:   # every wafer fits before any code is emitted (a quick FitError)
        _compile_part(a, check=True)
    workers = min(len(args), jobs or os.cpu_count() or 1)
    if workers > 1 and not multiprocessing.current_process().daemon:   # daemons cannot fork
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            done = list(pool.map(_compile_part, args))
    else:
        done = [_compile_part(a) for a in args]
    cache = dict(zip(todo, done[:len(todo)], strict=True))
    head_cache = dict(zip(head_todo, done[len(todo):], strict=True))
    ranges = layer_ranges(spec.num_layers, mesh.wafers)
    parts = [WaferPart(w, start, stop, key[1], cache[key])
             for w, ((start, stop), key) in enumerate(zip(ranges, keys, strict=True))]
    slices = vocab_slices(spec.vocab_size, mesh.wafers) if sliced else []
    heads = [HeadPart(w, v0, v1, head_cache[v1 - v0]) for w, (v0, v1) in enumerate(slices)]
    return System(spec, mesh, dtype, parts, heads, reserve)


def head_mode(spec, mesh: MeshConfig, dtype: str = "bf16", layout: str = "auto",
              weight_dtype: str | None = None) -> str:
    """What `lm_head="auto"` takes: "sliced" when slicing the LM head over the wafers
    lets the system hold a longer context than the whole head on the last wafer does
    (`system_capacity`; Llama-3.1-70B on cs3x4: 73,990 against 55,870), else "last" (a
    tie, e.g. both at the model's limit, keeps the head whole: no broadcast, one program
    fewer; a system whose wafers bind elsewhere, e.g. Qwen3-235B-A22B's longer layer
    ranges, would only lose context to the slices' reservation); "last" on one wafer."""
    if mesh.wafers == 1:
        return "last"
    caps = {mode: system_capacity(spec, mesh, dtype, layout, weight_dtype, mode)
            for mode in ("last", "sliced")}
    return "sliced" if caps["sliced"] > caps["last"] else "last"


def system_capacity(spec, mesh: MeshConfig, dtype: str = "bf16", layout: str = "auto",
                    weight_dtype: str | None = None, lm_head: str = "sliced") -> int:
    """Positions of KV the system holds with the LM head `lm_head` ("sliced" or "last"):
    the smallest `Placement.capacity` over its distinct wafer programs (tile and place
    passes only; 0 when one does not fit even one position)."""
    dtype = canonical_dtype(dtype)
    sliced = mesh.wafers > 1 and lm_head == "sliced"
    try:
        reserve = _reserve(_head_jobs(spec, mesh, dtype, layout).values()) if sliced else 0
        todo, _ = _layer_jobs(spec, mesh, dtype, 1, layout, weight_dtype, sliced, reserve)
        return min(_compile_part(a, check=True)[1].capacity for a in todo.values())
    except FitError:
        return 0


def _layer_jobs(spec, mesh: MeshConfig, dtype: str, max_context: int | None, layout: str,
                weight_dtype: str | None, sliced: bool, reserve: int) -> tuple[dict, list]:
    """(program key -> the `_compile_part` job of its first wafer, each wafer's key) of
    the layer programs: placed in the SRAM left beside `reserve` bytes per PE, the last
    wafer with the whole LM head unless `sliced`. Wafers with equal layer counts, head
    flags and layer kinds share one program."""
    layer_mesh = _layer_mesh(mesh.one_wafer(), reserve, mesh.wafers)
    ranges = layer_ranges(spec.num_layers, mesh.wafers)
    todo, keys = {}, []
    for w, (start, stop) in enumerate(ranges):
        head = not sliced and w == len(ranges) - 1
        part = sub_spec(spec, stop - start, start)
        key = (stop - start, head, part.layer_types, part.moe)
        todo.setdefault(key, ((w, start, stop, head, part), layer_mesh, dtype, max_context,
                              layout, weight_dtype, mesh.wafers, reserve))
        keys.append(key)
    return todo, keys


def head_reserve_bytes(spec, mesh: MeshConfig, dtype: str = "bf16",
                       layout: str = "auto") -> int:
    """SRAM bytes per PE the head-slice programs of `mesh.wafers` wafers take (their
    largest class; tile and place passes only): what every PE reserves beside the layer
    program of a sliced system (0 on one wafer)."""
    return _reserve(_head_jobs(spec, mesh, canonical_dtype(dtype), layout).values())


def _head_jobs(spec, mesh: MeshConfig, dtype: str, layout: str) -> dict:
    """slice size -> the `_compile_part` job of its first wafer's head-slice program
    (none on one wafer). A head slice holds no KV, so its max_context is the default."""
    if mesh.wafers == 1:
        return {}
    one, out = mesh.one_wafer(), {}
    for w, (v0, v1) in enumerate(vocab_slices(spec.vocab_size, mesh.wafers)):
        out.setdefault(v1 - v0, ((w, v0, v1, head_spec(spec, v0, v1)), one, dtype, None,
                                 layout, None, mesh.wafers, 0))
    return out


def _reserve(head_jobs) -> int:
    """Largest per-PE bytes of the placements of these head-slice jobs (0: none)."""
    return max((_compile_part(a, check=True)[1].total_bytes for a in head_jobs), default=0)


def _layer_mesh(one: MeshConfig, reserve: int, wafers: int) -> MeshConfig:
    """One wafer with `reserve` bytes per PE taken by the head-slice program; FitError
    when the slice leaves nothing."""
    if reserve >= one.sram_bytes:
        raise FitError(f"LM head slice of {wafers} wafers needs {reserve} bytes of SRAM "
                       f"per PE, a PE has {one.sram_bytes} bytes")
    return dataclasses.replace(one, sram_bytes=one.sram_bytes - reserve)


def _compile_part(args: tuple, check: bool = False):
    """compile_decode of one wafer's layers (head flag given) or of its head slice (a
    0-layer job `(w, v0, v1, spec)`); `check`: only its tile and place passes. FitError
    naming the wafer (and the SRAM left beside a head slice of `reserve` bytes)."""
    job, mesh, dtype, max_context, layout, weight_dtype, wafers, reserve = args
    compile_ = plan_and_place if check else compile_decode
    if len(job) == 4:
        w, v0, v1, part = job
        where, head = f"LM head slice {v0}..{v1 - 1}", True
    else:
        w, start, stop, head, part = job
        where = f"layers {start}..{stop - 1}{', LM head' if head else ''}"
    try:
        return compile_(part, mesh, dtype, max_context, layout, head, weight_dtype=weight_dtype)
    except FitError as exc:
        beside = (f"; {mesh.sram_bytes} bytes per PE are left beside the LM head slice "
                  f"({reserve} bytes)" if reserve else "")
        raise FitError(f"wafer {w} of {wafers} ({where}): {exc}{beside}") from None


def handoff_seconds(spec, mesh: MeshConfig, dtype: str) -> float:
    """Seconds for the hidden vector to cross one wafer-to-wafer link."""
    nbytes = spec.hidden_size * dtype_bytes(dtype)
    return nbytes / mesh.wafer_link_bytes_per_s + mesh.wafer_link_latency_s


def broadcast_seconds(spec, mesh: MeshConfig, dtype: str) -> float:
    """Seconds for the last wafer to send the hidden vector to the W - 1 others: the
    copies leave one after another through its system I/O, then one link latency."""
    nbytes = spec.hidden_size * dtype_bytes(dtype)
    return (mesh.wafers - 1) * nbytes / mesh.wafer_link_bytes_per_s + mesh.wafer_link_latency_s


def link_seconds(spec, mesh: MeshConfig, dtype: str, sliced: bool = True) -> float:
    """All link time of one token (module docstring): the W - 1 hand-offs of the layers
    and, with the LM head `sliced`, the broadcast to the head slices and the gather of
    their (max, index) (one link latency; its 8 bytes per wafer are left out). 0 on one
    wafer."""
    if mesh.wafers == 1:
        return 0.0
    hops = (mesh.wafers - 1) * handoff_seconds(spec, mesh, dtype)
    if not sliced:
        return hops
    return hops + broadcast_seconds(spec, mesh, dtype) + mesh.wafer_link_latency_s


def wafer_weights(weights: dict, start: int, stop: int) -> dict:
    """The tensors of layers [start, stop) renamed to 0.., plus the non-layer tensors."""
    out = {}
    for name, value in weights.items():
        if not name.startswith("model.layers."):
            out[name] = value
            continue
        layer, rest = name[len("model.layers."):].split(".", 1)
        if start <= int(layer) < stop:
            out[f"model.layers.{int(layer) - start}.{rest}"] = value
    return out


