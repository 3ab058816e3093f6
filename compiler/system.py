"""Multi-wafer decode: a model's layers pipelined over N identical wafers.

A system is `mesh.wafers` copies of one wafer joined by a wafer-to-wafer link
(`mesh.wafer_link_bytes_per_s`, `mesh.wafer_link_latency_s`). Wafer w runs a contiguous
range of layers (near-equal ranges, larger ones first); wafer 0 also takes the token's
embedding (a host write, as on one wafer), the last wafer runs the final norm and the LM
head. Each wafer's program is the one-wafer mapping of a model with only its layers
(compiler.decode.compile_decode with `head` on the last wafer only).

Per-token decode time (docs/mapping.md, "Multi-wafer systems"):

    seconds = sum over wafers of step_cycles(w) / clock + (wafers - 1) * handoff
    handoff = hidden_size * bytes(dtype) / wafer_link_bytes_per_s + wafer_link_latency_s

The wafers run one after another for one token (a pipeline of one user); the hand-off is
the residual stream (the hidden vector) crossing one link. Wafers with the same number of
layers and the same head flag get the same program, so each distinct program is compiled
and emulated once: identical programs give identical cycles (the emulator is
deterministic and timing never depends on values).
"""

import dataclasses
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

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
class System:
    """A model compiled onto `len(parts)` wafers."""

    spec: object
    mesh: MeshConfig
    dtype: str
    parts: list

    @property
    def wafers(self) -> int:
        """Wafers in the system."""
        return len(self.parts)

    def distinct(self) -> dict:
        """`program_key(part)` -> the first part with that program."""
        out = {}
        for part in self.parts:
            out.setdefault(program_key(part), part)
        return out


def program_key(part: WaferPart) -> tuple:
    """What sets a wafer's program: its layer count, head flag and compiled object (parts
    with equal layer counts, head flags and layer kinds share one, `compile_system`)."""
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


def compile_system(spec, mesh: MeshConfig, dtype: str = "bf16", max_context: int | None = None,
                   layout: str = "auto", weight_dtype: str | None = None,
                   jobs: int | None = None) -> System:
    """Compile each distinct wafer program once; FitError naming the wafer that fails.

    Distinct programs compile side by side in forked processes, up to `jobs` at once
    (None: one per CPU; 1: here, one after another); the result does not depend on it."""
    dtype = canonical_dtype(dtype)
    one = dataclasses.replace(mesh, wafers=1)
    todo, keys = {}, []
    ranges = layer_ranges(spec.num_layers, mesh.wafers)
    for w, (start, stop) in enumerate(ranges):
        head = w == len(ranges) - 1
        part = sub_spec(spec, stop - start, start)
        key = (stop - start, head, part.layer_types, part.moe)
        todo.setdefault(key, (w, start, stop, head, part))
        keys.append(key)
    args = [(job, one, dtype, max_context, layout, weight_dtype, mesh.wafers)
            for job in todo.values()]
    for a in args:   # every wafer fits before any code is emitted (a quick FitError)
        _compile_part(a, check=True)
    workers = min(len(args), jobs or os.cpu_count() or 1)
    if workers > 1 and not multiprocessing.current_process().daemon:   # daemons cannot fork
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            done = list(pool.map(_compile_part, args))
    else:
        done = [_compile_part(a) for a in args]
    cache = dict(zip(todo, done, strict=True))
    parts = [WaferPart(w, start, stop, w == len(ranges) - 1, cache[key])
             for w, ((start, stop), key) in enumerate(zip(ranges, keys, strict=True))]
    return System(spec, mesh, dtype, parts)


def _compile_part(args: tuple, check: bool = False) -> Compiled | None:
    """compile_decode of one wafer's part (`check`: only its tile and place passes);
    FitError naming the wafer."""
    (w, start, stop, head, part), one, dtype, max_context, layout, weight_dtype, wafers = args
    compile_ = plan_and_place if check else compile_decode
    try:
        return compile_(part, one, dtype, max_context, layout, head, weight_dtype=weight_dtype)
    except FitError as exc:
        raise FitError(f"wafer {w} of {wafers} (layers {start}..{stop - 1}"
                       f"{', LM head' if head else ''}): {exc}") from None


def handoff_seconds(spec, mesh: MeshConfig, dtype: str) -> float:
    """Seconds for the hidden vector to cross one wafer-to-wafer link."""
    nbytes = spec.hidden_size * dtype_bytes(dtype)
    return nbytes / mesh.wafer_link_bytes_per_s + mesh.wafer_link_latency_s


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


