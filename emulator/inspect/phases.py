"""When each op and layer of a decode step ran, from the compiler's `mark` probes.

Every PE executes `mark L{l}.{op}` as it enters an op (compiler/emit.py), so the step's
RunResult holds, per mark, the first cycle any PE entered that op. An op's span is taken
from its first entry to the first entry of the next op (the step's end for the last); ops
overlap across PEs, so these spans tile the step without gaps: they say when the wavefront
of work moved on, not how long one PE was busy. Cycles of the mesh clock.
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
