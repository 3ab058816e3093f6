"""Op and layer spans from mark probes tile a decode step exactly."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.bound import critical_path_bound
from compiler.decode import compile_decode
from compiler.frontend import resolve_model
from emulator.hw.mesh import load_mesh
from emulator.inspect.phases import PHASES, layer_cycles, op_spans, phase_cycles
from emulator.mesh.runtime import run_timing
from tests.test_decode_mesh import make_spec


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


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(4, 4), (5, 3), (8, 4), (3, 8)]), st.sampled_from(["spread", "groups",
                                                                        "even"]),
       st.integers(1, 3), st.integers(0, 30))
def test_phases_sum_to_the_step_and_the_bound_is_below_it(shape, layout, kv, pos):
    """phase_cycles tiles the step; the critical-path bound (compiler/bound.py) never
    exceeds the emulated cycles."""
    if layout == "spread" and shape[1] < kv:
        layout = "groups"
    spec = make_spec(hidden=24, heads=2 * kv, kv_heads=kv, head_dim=4, ffn=30, vocab=37)
    mesh = load_mesh("small").with_mesh(*shape)
    compiled = compile_decode(spec, mesh, "fp32", 32, layout)
    run = run_timing(compiled, mesh, pos)
    phases = phase_cycles(run, compiled.decode.program.mark_names)
    assert set(phases) == set(PHASES) and sum(phases.values()) == run.cycles
    assert all(v >= 0 for v in phases.values()) and phases["attention"] > 0
    bound = critical_path_bound(compiled, mesh, pos)
    assert 0 < bound["total"] <= run.cycles
    assert bound["total"] == sum(v for k, v in bound.items() if k != "total")
