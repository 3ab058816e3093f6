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
from dataclasses import dataclass

import numpy as np

from compiler.decode import Compiled, MeshDecoder, compile_decode, run_timing
from compiler.numerics import canonical_dtype, dtype_bytes
from compiler.place import read_r
from compiler.tile import chunk_bounds
from emulator.errors import FitError
from emulator.hw.mesh import MeshConfig
from emulator.parallel import fork_map


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
        """(layers, head) -> the first part with that program."""
        out = {}
        for part in self.parts:
            out.setdefault((part.layers, part.head), part)
        return out


def model_bytes(spec, dtype: str, max_context: int) -> int:
    """Bytes of weights plus the KV cache of `max_context` positions."""
    nbytes = dtype_bytes(canonical_dtype(dtype))
    return spec.param_count() * nbytes + spec.kv_bytes_per_token(nbytes) * max_context


def wafers_needed(spec, mesh: MeshConfig, dtype: str, max_context: int) -> int:
    """Smallest number of wafers whose SRAM (PEs x SRAM per PE) holds weights + KV cache."""
    return max(1, math.ceil(model_bytes(spec, dtype, max_context)
                            / (mesh.num_pes * mesh.sram_bytes)))


def layer_ranges(num_layers: int, wafers: int) -> list[tuple[int, int]]:
    """Contiguous near-equal layer ranges [start, stop), one per wafer (larger first)."""
    if wafers > num_layers:
        raise FitError(f"{wafers} wafers for {num_layers} layers: a wafer would hold none")
    b = chunk_bounds(num_layers, wafers)
    return [(b[w], b[w + 1]) for w in range(wafers)]


def sub_spec(spec, layers: int):
    """The model with only `layers` decoder layers (the shape of one wafer's part)."""
    return dataclasses.replace(spec, num_layers=layers)


def compile_system(spec, mesh: MeshConfig, dtype: str = "bf16", max_context: int | None = None,
                   layout: str = "auto") -> System:
    """Compile each distinct wafer program once; FitError naming the wafer that fails."""
    dtype = canonical_dtype(dtype)
    one = dataclasses.replace(mesh, wafers=1)
    cache, parts = {}, []
    ranges = layer_ranges(spec.num_layers, mesh.wafers)
    for w, (start, stop) in enumerate(ranges):
        head = w == len(ranges) - 1
        key = (stop - start, head)
        if key not in cache:
            try:
                cache[key] = compile_decode(sub_spec(spec, stop - start), one, dtype,
                                            max_context, layout, head)
            except FitError as exc:
                raise FitError(f"wafer {w} of {mesh.wafers} (layers {start}..{stop - 1}"
                               f"{', LM head' if head else ''}): {exc}") from None
        parts.append(WaferPart(w, start, stop, head, cache[key]))
    return System(spec, mesh, dtype, parts)


def handoff_seconds(spec, mesh: MeshConfig, dtype: str) -> float:
    """Seconds for the hidden vector to cross one wafer-to-wafer link."""
    nbytes = spec.hidden_size * dtype_bytes(canonical_dtype(dtype))
    return nbytes / mesh.wafer_link_bytes_per_s + mesh.wafer_link_latency_s


@dataclass
class SystemStep:
    """One token through every wafer: per-wafer RunResults and the hand-off time."""

    results: list            # RunResult per wafer, in wafer order
    handoff_s: float         # all hand-offs of the token, seconds

    @property
    def cycles(self) -> int:
        """Sum of the wafers' step cycles (mesh clock)."""
        return sum(r.cycles for r in self.results)

    def seconds(self, clock_hz: float) -> float:
        """Per-token decode time: wafer cycles / clock + hand-offs."""
        return self.cycles / clock_hz + self.handoff_s


def run_system_timing(system: System, pos: int, engine: str = "numba",
                      jobs: int | None = None) -> SystemStep:
    """Timing-only step at position `pos`: each distinct wafer program emulated once, up
    to `jobs` of them at once in forked processes (None: one per CPU; 1: serially here).
    The wafers are independent in timing-only mode, so the results equal a serial run's."""
    one = dataclasses.replace(system.mesh, wafers=1)
    distinct = system.distinct()
    runs = fork_map(_timing_job, [(part.compiled, one, pos, engine)
                                  for part in distinct.values()], jobs)
    done = dict(zip(distinct, runs, strict=True))
    return system_step(system, [done[(p.layers, p.head)] for p in system.parts])


def system_step(system: System, results: list) -> SystemStep:
    """The SystemStep of one token: per-wafer results plus a hand-off per wafer boundary."""
    hops = system.wafers - 1
    return SystemStep(results, hops * handoff_seconds(system.spec, system.mesh, system.dtype))


def _timing_job(job: tuple):
    """run_timing(compiled, mesh, pos, engine) for fork_map."""
    return run_timing(*job)


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


class SystemDecoder:
    """Functional decode on a multi-wafer system: one MeshDecoder per wafer.

    The host carries the residual stream between wafers: after wafer w it reads H from
    the top row and writes it into wafer w + 1's H (the link's transfer, timed by
    `handoff_seconds`, not by the engine).
    """

    def __init__(self, spec, weights: dict, mesh: MeshConfig, dtype: str = "fp32",
                 engine: str = "numba", max_context: int | None = None, layout: str = "auto"):
        self.system = compile_system(spec, mesh, dtype, max_context, layout)
        one = dataclasses.replace(mesh, wafers=1)
        self.spec, self.mesh = spec, mesh
        self.decoders = [MeshDecoder(sub_spec(spec, p.layers), wafer_weights(weights, p.start,
                                                                             p.stop),
                                     one, dtype, engine, max_context, layout, head=p.head)
                         for p in self.system.parts]
        self.compiled = self.system.parts[-1].compiled

    def load_kv(self, cache) -> int:
        """Write each wafer's layers of a prefilled cache; returns the bytes moved."""
        moved = 0
        for part, dec in zip(self.system.parts, self.decoders, strict=True):
            sl = slice(part.start, part.stop)
            moved += dec.load_kv(type(cache)(cache.k[sl], cache.v[sl]))
        return moved

    def step(self, token: int, pos: int) -> tuple[np.ndarray, SystemStep]:
        """One token through every wafer: (logits float32 [vocab], SystemStep)."""
        hidden, results = None, []
        for dec in self.decoders:
            logits, result = dec.step(token, pos, hidden)
            results.append(result)
            hidden = read_r(dec.sram, dec.plan, "hidden", dec.placement.addr("H"))
        return logits, system_step(self.system, results)

