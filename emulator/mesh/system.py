"""Multi-wafer decode at run time: timing-only steps of a `compiler.system.System` (each
distinct wafer program emulated once, in forked processes) and functional decode with one
`MeshDecoder` per wafer program (`SystemDecoder`). Per-token time: docs/mapping.md,
"Multi-wafer systems"; the partition itself is compiler/system.py.
"""

from dataclasses import dataclass, field

import numpy as np

from compiler.place import read_r
from compiler.system import (
    System,
    compile_system,
    head_spec,
    head_weights,
    link_seconds,
    program_key,
    sub_spec,
    wafer_weights,
)
from emulator.hw.mesh import MeshConfig
from emulator.mesh.parallel import fork_map, usable_jobs
from emulator.mesh.runtime import MeshDecoder, run_timing

HEAD_POSITION = 0   # a head-slice program holds no KV: every token runs it at position 0


@dataclass
class SystemStep:
    """One token through every wafer: per-wafer RunResults of the layer programs, of the
    head-slice programs (none on one wafer) and the link time."""

    results: list            # RunResult of each wafer's layer program, in wafer order
    handoff_s: float         # all link time of the token (compiler.system.link_seconds)
    head_results: list = field(default_factory=list)   # RunResult of each head slice

    @property
    def layer_cycles(self) -> int:
        """Sum of the wafers' layer-program cycles (mesh clock)."""
        return sum(r.cycles for r in self.results)

    @property
    def head_cycles(self) -> int:
        """Cycles of the slowest head slice (they run side by side; 0 without slices)."""
        return max((r.cycles for r in self.head_results), default=0)

    @property
    def cycles(self) -> int:
        """Compute cycles of the token: the layers one wafer after another, then the
        head slices side by side."""
        return self.layer_cycles + self.head_cycles

    def seconds(self, clock_hz: float) -> float:
        """Per-token decode time: cycles / clock + link time."""
        return self.cycles / clock_hz + self.handoff_s

    def runs(self) -> list:
        """Every RunResult of the token (layer programs, then head slices)."""
        return list(self.results) + list(self.head_results)


def run_system_timing(system: System, pos: int, engine: str = "numba",
                      jobs: int | None = None) -> SystemStep:
    """Timing-only step at position `pos`: each distinct wafer program emulated once, up
    to `jobs` of them at once in forked processes (None: one per CPU; 1: serially here).
    The wafers are independent in timing-only mode, so the results equal a serial run's.
    Head-slice programs run whole (no layers to fast-forward), at `HEAD_POSITION`."""
    one = system.mesh.one_wafer()
    distinct, heads = system.distinct(), system.distinct_heads()
    inner = max(1, usable_jobs(jobs) // (len(distinct) + len(heads)))   # CPUs per program
    layer_jobs = [(part.compiled, system.layer_mesh, pos, engine, True, inner)
                  for part in distinct.values()]
    head_jobs = [(head.compiled, one, HEAD_POSITION, engine, False, inner)
                 for head in heads.values()]
    runs = fork_map(_timing_job, layer_jobs + head_jobs, jobs)
    done = dict(zip(distinct, runs[:len(distinct)], strict=True))
    head_done = dict(zip(heads, runs[len(distinct):], strict=True))
    return system_step(system, [done[program_key(p)] for p in system.parts],
                       [head_done[id(h.compiled)] for h in system.heads])


def system_step(system: System, results: list, head_results: list = ()) -> SystemStep:
    """The SystemStep of one token: per-wafer results plus the token's link time."""
    return SystemStep(results, link_seconds(system.spec, system.mesh, system.dtype,
                                            system.sliced), list(head_results))


def _timing_job(job: tuple):
    """run_timing(compiled, mesh, pos, engine, fast_forward, jobs) for fork_map."""
    return run_timing(*job)


class SystemDecoder:
    """Functional decode on a multi-wafer system: one MeshDecoder per wafer's layers and,
    with the LM head sliced (`lm_head`, compiler.system.compile_system), one per
    vocabulary slice.

    The host carries the residual stream between wafers: after wafer w it reads H from
    the top row and writes it into wafer w + 1's H, and after the last wafer into every
    head slice's H (the links' transfers, timed by `link_seconds`, not by the engine).
    The logits are the slices' logits concatenated.
    """

    def __init__(self, spec, weights: dict, mesh: MeshConfig, dtype: str = "fp32",
                 engine: str = "numba", max_context: int | None = None, layout: str = "auto",
                 weight_dtype: str | None = None, lm_head: str = "auto"):
        self.system = compile_system(spec, mesh, dtype, max_context, layout, weight_dtype,
                                     lm_head=lm_head)
        self.spec, self.mesh = spec, mesh
        layer_mesh = self.system.layer_mesh
        self.decoders = [MeshDecoder(sub_spec(spec, p.layers, p.start),
                                     wafer_weights(weights, p.start, p.stop),
                                     layer_mesh, dtype, engine, max_context, layout,
                                     head=p.head, weight_dtype=weight_dtype)
                         for p in self.system.parts]
        one = mesh.one_wafer()
        self.heads = [MeshDecoder(head_spec(spec, h.v0, h.v1),
                                  head_weights(spec, weights, h.v0, h.v1), one, dtype,
                                  engine, None, layout)
                      for h in self.system.heads]
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
        if not self.heads:
            return logits, system_step(self.system, results)
        slices, head_results = [], []
        for dec in self.heads:
            part, result = dec.step(0, HEAD_POSITION, hidden)   # token unused: H is given
            slices.append(part)
            head_results.append(result)
        return np.concatenate(slices), system_step(self.system, results, head_results)
