"""Op and layer spans from mark probes tile a decode step exactly."""

from compiler.decode import compile_decode
from compiler.frontend import resolve_model
from emulator.hw.mesh import load_mesh
from emulator.inspect.phases import layer_cycles, op_spans
from emulator.mesh.runtime import run_timing


def test_spans_tile_the_step_and_follow_program_order():
    spec = resolve_model("tiny")
    mesh = load_mesh("small").with_mesh(6, 4)
    compiled = compile_decode(spec, mesh, "fp32", 16)
    run = run_timing(compiled, mesh, 3, "reference")
    names = compiled.decode.program.mark_names
    spans = op_spans(run, names)
    assert [name for name, _, _ in spans] == names
    assert spans[-1][2] == run.cycles
    for (_, _, end), (_, start, _) in zip(spans, spans[1:], strict=False):
        assert end == start
    assert all(start <= end for _, start, end in spans)
    layers = layer_cycles(run, names)
    assert len(layers) == spec.num_layers
    head_and_end = sum(e - s for n, s, e in spans if not n.startswith("L"))
    assert sum(layers) + head_and_end + spans[0][1] == run.cycles
