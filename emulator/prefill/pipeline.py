"""Pipeline-parallel prefill: the decoder layers split into stages, chunks flowing through.

`--prefill-stages S` puts the model's layers in S contiguous near-equal ranges (larger
first, compiler.system.layer_ranges), each range on a tensor-parallel group of
`--prefill-chips` chips, so the prefill uses S x chips chips. The prompt's chunks
(`--prefill-chunk`; one chunk without it) flow through the stages: stage s works on chunk c
once stage s-1 has handed chunk c's residual stream over and stage s has finished chunk
c-1 (a chunk's attention needs the KV of the chunks before it, which stay on the stage
holding their layers). With T[s][c] the seconds stage s spends on chunk c and h_c the
hand-off of chunk c (its tokens x hidden x bytes over one chip-to-chip link, plus the
link latency), the finish times are

    F[s][c] = max(F[s-1][c] + h_c, F[s][c-1]) + T[s][c]        (F[-1][c] = F[s][-1] = 0)

and the prefill takes F[S-1][C-1] seconds (`pipeline_seconds`). T comes from the
tensor-parallel group's own emulated prefill of every chunk: chunk c's layer l lasts
from layer l-1's end to layer l's end in that chunk's schedule (layer 0 includes the
embedding); the final norm and LM head, after the last layer, run on the last stage. So
S = 1 gives the unpipelined prefill exactly. Units: seconds unless named.
"""

from dataclasses import dataclass

from compiler.system import layer_ranges
from emulator.hw.errors import ConfigError


@dataclass(frozen=True)
class Pipeline:
    """A pipelined prefill: stage layer ranges, per-stage busy seconds and the total."""

    stages: int
    chips_per_stage: int
    layer_ranges: list          # [(start, stop)] per stage
    stage_seconds: list         # [[T[s][c] for c]] per stage
    handoff_seconds: list       # [h_c] per chunk
    seconds: float              # F[S-1][C-1]

    @property
    def chips(self) -> int:
        """Chips of the whole pipeline."""
        return self.stages * self.chips_per_stage

    @property
    def bubble(self) -> float:
        """Fraction of stage-seconds idle: 1 - busy / (stages x seconds)."""
        busy = sum(sum(row) for row in self.stage_seconds)
        return 1.0 - busy / (self.stages * self.seconds) if self.seconds else 0.0

    def summary(self) -> dict:
        """JSON-ready description (the report's `prefill.pipeline`)."""
        return {"stages": self.stages, "chips_per_stage": self.chips_per_stage,
                "chips": self.chips, "layer_ranges": [list(r) for r in self.layer_ranges],
                "stage_busy_seconds": [sum(row) for row in self.stage_seconds],
                "seconds": self.seconds, "bubble": self.bubble}


def chunk_stage_seconds(result, ranges: list) -> list[list[float]]:
    """T[s][c]: seconds of stage s's layers in chunk c of a (chunked) PrefillResult, the
    final norm and LM head on the last stage; each chunk's stage times sum to its time."""
    parts = result.parts or [result]
    out = [[0.0] * len(parts) for _ in ranges]
    for c, part in enumerate(parts):
        ends = {row["layer"]: row["end"] for row in part.per_layer if row["layer"] >= 0}
        previous = 0
        for s, (_, stop) in enumerate(ranges):
            last = ends[stop - 1]
            out[s][c] = (last - previous) / result.clock_hz
            previous = last
        out[-1][c] += (part.cycles - previous) / result.clock_hz
    return out


def pipeline_seconds(stage_seconds: list, handoff_seconds: list) -> float:
    """F[S-1][C-1] of the recurrence in the module docstring."""
    stages, chunks = len(stage_seconds), len(handoff_seconds)
    done = [0.0] * chunks                   # F[s-1][c] as s advances
    for s in range(stages):
        prev = 0.0                          # F[s][c-1]
        for c in range(chunks):
            ready = done[c] + (handoff_seconds[c] if s else 0.0)
            prev = max(ready, prev) + stage_seconds[s][c]
            done[c] = prev
    return done[-1]


def plan_pipeline(result, spec, hw, stages: int) -> Pipeline:
    """The pipelined schedule of `result` (the tensor-parallel group's prefill, chunked or
    not) over `stages` stages of `result.chips` chips each."""
    check_stages(stages, spec, hw, result.chips)
    ranges = layer_ranges(spec.num_layers, stages)
    times = chunk_stage_seconds(result, ranges)
    nbytes = spec.hidden_size * (4 if result.dtype == "fp32" else 2)
    handoff = [row["tokens"] * nbytes / hw.link_bytes_per_s + hw.link_latency_s
               for row in result.chunk_rows]
    return Pipeline(stages, result.chips, ranges, times, handoff,
                    pipeline_seconds(times, handoff))


def check_stages(stages: int, spec, hw, chips: int) -> None:
    """ConfigError unless 1 <= stages <= layers and stages x chips fit the preset."""
    if stages < 1 or stages > spec.num_layers:
        raise ConfigError(f"--prefill-stages: {stages} is outside 1..{spec.num_layers} "
                          f"(the model's layers)")
    if stages * chips > hw.chips:
        raise ConfigError(f"--prefill-stages: {stages} stages x {chips} chip(s) exceed the "
                          f"{hw.chips} chips of prefill preset '{hw.name}' (field 'chips')")

