"""When each op and layer of a decode step ran, from the compiler's `mark` probes.

Every PE executes `mark L{l}.{op}` as it enters an op (compiler/emit.py), so the step's
RunResult holds, per mark, the first cycle any PE entered that op. An op's span is taken
from its first entry to the first entry of the next op (the step's end for the last); ops
overlap across PEs, so these spans tile the step without gaps: they say when the wavefront
of work moved on, not how long one PE was busy. Cycles of the mesh clock.

`phase_cycles` attributes a step to the report's phases (`PHASES`) from the *last* PE
entering each op instead: every PE passes every mark in program order, so the last
entries are non-decreasing, and the span from the last PE entering an op to the last PE
entering the next one is the time the slowest PE needed to get through it (the critical
path of the step, op by op). Cycles before the first mark and after the last (`end`) are
`other`; the phases sum to the step's cycles.
"""

from isa.program import RunResult


def op_spans(run: RunResult, names: list[str]) -> list[tuple[str, int, int]]:
    """[(op name, start cycle, end cycle)] in program order, for marks some PE reached."""
    reached = [(name, int(run.mark_first[k])) for k, name in enumerate(names)
               if k < len(run.mark_first) and run.mark_first[k] >= 0]
    ends = [start for _, start in reached[1:]] + [run.cycles]
    return [(name, start, end) for (name, start), end in zip(reached, ends, strict=True)]


def layer_cycles(run: RunResult, names: list[str]) -> list[int]:
    """Cycles of each decoder layer: from the first PE entering it to the first entering
    the next layer (or the LM head / the end of the step)."""
    per_layer: dict[int, int] = {}
    for name, start, end in op_spans(run, names):
        if name.startswith("L"):
            layer = int(name[1:].split(".", 1)[0])
            per_layer[layer] = per_layer.get(layer, 0) + end - start
    return [per_layer[k] for k in sorted(per_layer)]


PHASES = ("norm", "qkv", "rope", "attention", "o_proj", "mlp", "head", "other")
OP_PHASES = {"norm_in": "norm", "norm_post": "norm", "qkv": "qkv", "rope": "rope",
             "attn": "attention", "o_proj": "o_proj", "mlp_up": "mlp", "mlp_down": "mlp",
             "head": "head"}


def phase_of(name: str) -> str:
    """The report phase of mark `name` (`L3.attn` -> attention, `head`, `end` -> other)."""
    return OP_PHASES.get(name.split(".", 1)[-1], "other")


def phase_cycles(run: RunResult, names: list[str]) -> dict:
    """Cycles of one step by phase (`PHASES`), from the last PE entering each op; they sum
    to `run.cycles`."""
    out = dict.fromkeys(PHASES, 0)
    reached = [(name, int(run.mark_last[k])) for k, name in enumerate(names)
               if k < len(run.mark_last) and run.mark_count[k] > 0]
    if not reached:
        out["other"] = int(run.cycles)
        return out
    out["other"] += reached[0][1]
    ends = [start for _, start in reached[1:]] + [int(run.cycles)]
    for (name, start), end in zip(reached, ends, strict=True):
        out[phase_of(name)] += max(0, end - start)
    return out
