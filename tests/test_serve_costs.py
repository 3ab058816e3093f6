"""emu serve's cost model: emulator measurements, the disk cache, interpolation error, the
batch hook and the memory-bound baseline."""

import dataclasses
import inspect

import numpy as np
import pytest

from compiler.decode import compile_decode
from compiler.frontend import resolve_model
from emulator.hw.errors import ConfigError
from emulator.hw.mesh import load_mesh
from emulator.hw.prefill import load_prefill
from emulator.mesh.runtime import run_timing
from emulator.prefill.run import run_prefill
from emulator.serve import costs as costs_mod
from emulator.serve.costs import (
    measure_costs,
    sample_points,
    trainium_decode_costs,
    wafer_batch_step,
)


@pytest.fixture(scope="module")
def tiny():
    return resolve_model("tiny"), load_mesh("small"), load_prefill("trn2")


@pytest.fixture(scope="module")
def measured(tiny, tmp_path_factory):
    spec, mesh, hw = tiny
    cache = tmp_path_factory.mktemp("costs")
    costs = measure_costs(spec, "tiny", mesh, hw, prompt_limit=128, context_limit=128,
                          cache_dir=cache)
    return costs, cache


def test_costs_equal_the_emulators_at_sample_points(tiny, measured):
    spec, mesh, hw = tiny
    costs, _ = measured
    for tokens, seconds in costs.prefill_table[[0, -1]]:
        assert seconds == run_prefill(spec, hw, int(tokens), None, "bf16", True).seconds
        assert costs.prefill_seconds(int(tokens)) == seconds
    compiled = compile_decode(spec, mesh, "bf16", costs.max_context)
    for ctx, single, busy in costs.decode_table[[0, -1]]:
        run = run_timing(compiled, mesh, int(ctx) - 1)
        assert single == run.cycles / mesh.clock_hz
        assert busy == run.pe_busy.max() / mesh.clock_hz
        assert costs.decode_step_seconds([int(ctx)]) == pytest.approx(single)


def test_interpolation_error_at_held_out_points_is_within_two_percent(measured):
    costs, _ = measured
    assert costs.info["prefill_interp_error"] <= 0.02
    assert costs.info["decode_interp_error"] <= 0.02
    assert costs.info["prefill_samples"] >= 4 and costs.info["decode_samples"] >= 4


def test_second_measurement_comes_from_the_cache(tiny, measured, monkeypatch):
    spec, mesh, hw = tiny
    costs, cache = measured

    def no_emulation(*args, **kwargs):
        raise AssertionError("emulated although cached")
    monkeypatch.setattr(costs_mod, "_run_prefill", no_emulation)
    monkeypatch.setattr("emulator.mesh.runtime.run_timing", no_emulation)
    again = measure_costs(spec, "tiny", mesh, hw, prompt_limit=128, context_limit=128,
                          cache_dir=cache)
    np.testing.assert_array_equal(again.prefill_table, costs.prefill_table)
    np.testing.assert_array_equal(again.decode_table, costs.decode_table)
    # another preset is another content address
    faster = dataclasses.replace(hw, tensor_clock_hz=hw.tensor_clock_hz * 2)
    with pytest.raises(AssertionError, match="emulated although cached"):
        measure_costs(spec, "tiny", mesh, faster, prompt_limit=128, context_limit=128,
                      cache_dir=cache)


def test_batch_hook_is_the_single_step_for_one_user_and_busy_bound_for_many():
    single = np.array([[2.0, 3.0, 1.0]])
    busy = np.array([[0.5, 1.5, 0.5]])
    assert wafer_batch_step(single[:, :1], busy[:, :1])[0] == 2.0
    assert wafer_batch_step(single, busy)[0] == 3.0                # latency bound
    assert wafer_batch_step(single, busy * 2)[0] == 5.0            # throughput bound


def test_trainium_baseline_decode_is_memory_bound(tiny):
    spec = resolve_model("programs/models/llama-3.1-8b.json")
    hw = load_prefill("trn2")
    table = np.array([[1, 0.001], [1000, 0.1]])
    c = trainium_decode_costs(spec, hw, table, max_prompt_tokens=1000, max_batch=4)
    weights = spec.param_count() * 2
    ctx = np.array([[100, 300]])
    expect = (weights + 400 * spec.kv_bytes_per_token(2)) / hw.hbm_bytes_per_s
    assert c.decode_steps(ctx)[0] == pytest.approx(expect)
    assert c.kv_capacity_tokens == (hw.hbm_bytes - weights - 8 * spec.hidden_size * 1000 * 4
                                    * hw.cores_per_chip) // spec.kv_bytes_per_token(2)


def test_prefill_chips_beyond_one_need_a_multi_chip_prefill_model(tiny):
    spec, mesh, hw = tiny
    if "chips" in inspect.signature(run_prefill).parameters:
        pytest.skip("the prefill model takes chips")
    with pytest.raises(ConfigError, match="--prefill-chips 2"):
        costs_mod._run_prefill(spec, hw, 16, "bf16", 2)


def test_sample_points_cover_the_range():
    pts = sample_points(16, 1000, 2 ** 0.5)
    assert pts[0] == 16 and pts[-1] == 1000 and pts == sorted(set(pts))
    assert all(b / a <= 1.45 for a, b in zip(pts, pts[1:], strict=False))


def test_prefill_chips_reach_the_prefill_model(tiny):
    spec, mesh, hw = tiny
    if "chips" not in inspect.signature(run_prefill).parameters:
        pytest.skip("the prefill model runs on one chip")
    two = costs_mod._run_prefill(spec, hw, 64, "bf16", 2)
    assert two.seconds == run_prefill(spec, hw, 64, None, "bf16", True, chips=2).seconds


def test_a_changed_timing_model_is_a_new_cache_address(tiny, measured, monkeypatch):
    spec, mesh, hw = tiny
    _, cache = measured
    monkeypatch.setattr(costs_mod, "emu_version", lambda: "0.0.0+changed")

    def no_emulation(*args, **kwargs):
        raise AssertionError("emulated")
    monkeypatch.setattr(costs_mod, "_run_prefill", no_emulation)
    with pytest.raises(AssertionError, match="emulated"):
        measure_costs(spec, "tiny", mesh, hw, prompt_limit=128, context_limit=128,
                      cache_dir=cache)
