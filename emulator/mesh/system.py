"""Multi-wafer decode at run time: timing-only steps of a `compiler.system.System` (each
distinct wafer program emulated once, in forked processes) and functional decode with one
`MeshDecoder` per wafer (`SystemDecoder`). Per-token time: docs/mapping.md,
"Multi-wafer systems"; the partition itself is compiler/system.py.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from compiler.place import read_r
from compiler.system import (
    System,
    compile_system,
    handoff_seconds,
    program_key,
    sub_spec,
    wafer_weights,
)
from emulator.hw.mesh import MeshConfig
from emulator.mesh.parallel import fork_map, usable_jobs
from emulator.mesh.runtime import MeshDecoder, run_timing


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
    inner = max(1, usable_jobs(jobs) // len(distinct))   # the CPUs left to each program
    runs = fork_map(_timing_job, [(part.compiled, one, pos, engine, True, inner)
                                  for part in distinct.values()], jobs)
    done = dict(zip(distinct, runs, strict=True))
    return system_step(system, [done[program_key(p)] for p in system.parts])


def system_step(system: System, results: list) -> SystemStep:
    """The SystemStep of one token: per-wafer results plus a hand-off per wafer boundary."""
    hops = system.wafers - 1
    return SystemStep(results, hops * handoff_seconds(system.spec, system.mesh, system.dtype))


def _timing_job(job: tuple):
    """run_timing(compiled, mesh, pos, engine, fast_forward, jobs) for fork_map."""
    return run_timing(*job)


class SystemDecoder:
    """Functional decode on a multi-wafer system: one MeshDecoder per wafer.

    The host carries the residual stream between wafers: after wafer w it reads H from
    the top row and writes it into wafer w + 1's H (the link's transfer, timed by
    `handoff_seconds`, not by the engine).
    """

    def __init__(self, spec, weights: dict, mesh: MeshConfig, dtype: str = "fp32",
                 engine: str = "numba", max_context: int | None = None, layout: str = "auto",
                 weight_dtype: str | None = None):
        self.system = compile_system(spec, mesh, dtype, max_context, layout, weight_dtype)
        one = dataclasses.replace(mesh, wafers=1)
        self.spec, self.mesh = spec, mesh
        self.decoders = [MeshDecoder(sub_spec(spec, p.layers, p.start),
                                     wafer_weights(weights, p.start,
                                                                             p.stop),
                                     one, dtype, engine, max_context, layout, head=p.head,
                                     weight_dtype=weight_dtype)
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
