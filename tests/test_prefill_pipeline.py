"""Pipeline-parallel prefill (`--prefill-stages S`, emulator/prefill/pipeline.py): the
recurrence against its closed form, stage times partitioning every chunk, one stage equal
to the unpipelined prefill, HBM per stage, and one-line errors."""

import json

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.frontend import resolve_model
from emulator.cli import main
from emulator.hw.prefill import load_prefill
from emulator.prefill.pipeline import chunk_stage_seconds, pipeline_seconds, plan_pipeline
from emulator.prefill.run import hbm_bytes_needed, run_prefill
from tests.test_prefill import make_spec

INSTANCE = load_prefill("trn2-48xl")


@settings(max_examples=40, deadline=None)
@given(stages=st.integers(1, 8), chunks=st.integers(1, 12),
       t=st.floats(1e-4, 1.0), h=st.floats(0.0, 0.1))
def test_uniform_pipeline_closed_form(stages, chunks, t, h):
    """Equal stage times T and hand-offs h: F = (S + C - 1) T + (S - 1) h."""
    got = pipeline_seconds([[t] * chunks for _ in range(stages)], [h] * chunks)
    assert got == pytest.approx((stages + chunks - 1) * t + (stages - 1) * h, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(times=st.lists(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
                      min_size=1, max_size=5),
       h=st.lists(st.floats(0.0, 0.1), min_size=3, max_size=3))
def test_pipeline_bounds(times, h):
    """No stage finishes before its own work, nor a chunk before its path through all
    stages; and never later than running everything one after another."""
    got = pipeline_seconds(times, h)
    stages = len(times)
    assert got >= max(sum(row) for row in times) - 1e-12
    for c in range(3):
        assert got >= sum(row[c] for row in times) + (stages - 1) * h[c] - 1e-12
    assert got <= sum(map(sum, times)) + (stages - 1) * sum(h) + 1e-12


@pytest.mark.parametrize("chunk", [None, 40])
def test_stage_times_partition_each_chunk(chunk):
    spec = make_spec(layers=5)
    result = run_prefill(spec, load_prefill("trn2"), 100, timing_only=True, chunk=chunk)
    ranges = [(0, 2), (2, 4), (4, 5)]
    times = chunk_stage_seconds(result, ranges)
    for c, row in enumerate(result.chunk_rows):
        assert sum(t[c] for t in times) == pytest.approx(row["cycles"] / result.clock_hz,
                                                         rel=1e-12)
    one = plan_pipeline(result, spec, INSTANCE, 1)
    assert one.seconds == pytest.approx(result.seconds, rel=1e-12) and one.bubble < 1e-9


def test_stages_run_and_report():
    spec = make_spec(layers=4)
    result = run_prefill(spec, INSTANCE, 96, timing_only=True, chunk=24, chips=1, stages=4)
    pipe = result.pipeline
    assert pipe.stages == 4 and pipe.chips == 4 and len(pipe.layer_ranges) == 4
    assert pipe.seconds < result.seconds
    assert result.summary()["pipeline"]["chips"] == 4


def test_hbm_per_stage_shrinks():
    spec = resolve_model("llama-3.1-70b")
    one = hbm_bytes_needed(spec, INSTANCE, 32768, "bf16", 2)
    four = hbm_bytes_needed(spec, INSTANCE, 32768, "bf16", 2, stages=4)
    assert four["weights"] * 4 == pytest.approx(one["weights"], rel=1e-9)
    assert four["kv"] * 4 == pytest.approx(one["kv"], rel=1e-9)


def test_70b_long_prompt_pipeline_beats_tensor_parallel():
    """70B, 32k tokens on a 16-chip Trn2 instance: 4 stages x 4 chips with 4k chunks
    finish sooner than tensor parallelism over all 16 chips."""
    spec = resolve_model("llama-3.1-70b")
    tp = run_prefill(spec, INSTANCE, 32768, timing_only=True, chips=16)
    pp = run_prefill(spec, INSTANCE, 32768, timing_only=True, chips=4, stages=4, chunk=4096)
    assert pp.pipeline.seconds < tp.seconds


@pytest.mark.parametrize("args, field", [
    (["--prefill-stages", "0"], "--prefill-stages: must be a positive integer"),
    (["--prefill-stages", "x"], "--prefill-stages: must be a positive integer"),
    (["--prefill-stages", "2", "--prefill-chips", "9"], "exceed the 16 chips"),
    (["--prefill-stages", "9"], "outside 1..2"),
])
def test_bad_stages_exit_2(args, field):
    result = CliRunner().invoke(main, ["prefill", "tiny", "--prefill-hw", "trn2-48xl",
                                       "--timing-only", *args])
    assert result.exit_code == 2, result.output
    assert field in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_json_has_the_pipeline():
    result = CliRunner().invoke(main, ["prefill", "tiny", "--prefill-hw", "trn2-48xl",
                                       "--timing-only", "--prefill-stages", "2",
                                       "--prefill-chunk", "32", "--prompt-len", "96",
                                       "--json"])
    assert result.exit_code == 0, result.output
    pipe = json.loads(result.output)["pipeline"]
    assert pipe["stages"] == 2 and pipe["layer_ranges"][0][0] == 0
