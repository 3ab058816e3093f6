"""Scale features without full-wafer emulation: wafer counts, multi-wafer hand-offs, the
placement of Llama-3.1-8B on WSE-3 (tile + place only) and FitError messages."""

import dataclasses
import os
import time

import numpy as np
import pytest

from compiler import reference
from compiler.frontend import resolve_model
from compiler.place import place
from compiler.system import compile_system, handoff_seconds, layer_ranges, wafers_needed
from compiler.tile import tile
from compiler.weights import random_weights
from emulator.hw.errors import FitError
from emulator.hw.mesh import load_mesh
from emulator.mesh.parallel import Forked, fork_map, shared_empty, usable_jobs
from emulator.mesh.runtime import MeshDecoder
from emulator.mesh.system import SystemDecoder, run_system_timing


def test_wafer_count_is_the_smallest_sram_that_holds_weights_and_kv():
    spec = resolve_model("programs/models/llama-3.1-70b.json")
    wse3 = load_mesh("wse3")
    n = wafers_needed(spec, wse3, "bf16", 16)
    need = spec.param_count() * 2 + spec.kv_bytes_per_token(2) * 16
    wafer = wse3.num_pes * wse3.sram_bytes
    assert (n - 1) * wafer < need <= n * wafer
    assert n == 4
    assert wafers_needed(resolve_model("programs/models/llama-3.1-8b.json"), wse3, "bf16", 16) == 1


def test_layer_ranges_are_contiguous_and_balanced():
    assert layer_ranges(80, 4) == [(0, 20), (20, 40), (40, 60), (60, 80)]
    assert layer_ranges(5, 2) == [(0, 3), (3, 5)]
    with pytest.raises(FitError, match="a wafer would hold none"):
        layer_ranges(2, 3)


@pytest.mark.parametrize("lm_head", ["last", "sliced"])
def test_two_wafers_match_one_wafer_and_count_the_handoff(lm_head):
    spec = resolve_model("programs/models/tiny-gqa.json")
    weights = random_weights(spec, 0)
    base = load_mesh("small").with_mesh(8, 8)
    two = dataclasses.replace(base, wafers=2, wafer_link_bytes_per_s=1e9,
                              wafer_link_latency_s=1e-6)
    logits, cache = reference.prefill(spec, weights, np.array([1, 2, 3]))
    token = int(np.argmax(logits[-1]))
    system = SystemDecoder(spec, weights, two, "fp32", max_context=16, lm_head=lm_head)
    system.load_kv(cache)
    got, step = system.step(token, 3)
    single = MeshDecoder(spec, weights, base, "fp32", max_context=16)
    single.load_kv(cache)
    want, _ = single.step(token, 3)
    assert np.array_equal(got, want)   # the same sums, in the same order, on the slices
    timing = run_system_timing(system.system, 3)
    assert [r.cycles for r in timing.results] == [r.cycles for r in step.results]
    assert [r.cycles for r in timing.head_results] == [r.cycles for r in step.head_results]
    hop = spec.hidden_size * 4 / 1e9 + 1e-6
    assert handoff_seconds(spec, two, "fp32") == pytest.approx(hop)
    if lm_head == "last":
        assert timing.head_results == [] and timing.handoff_s == pytest.approx(hop)
        assert timing.seconds(base.clock_hz) == pytest.approx(timing.cycles / base.clock_hz
                                                              + hop)
    else:   # a hand-off, the broadcast (one copy) and the gather
        assert timing.handoff_s == pytest.approx(2 * hop + 1e-6)


def test_identical_wafers_share_one_program():
    spec = dataclasses.replace(resolve_model("programs/models/tiny-gqa.json"), num_layers=4)
    mesh = dataclasses.replace(load_mesh("small").with_mesh(8, 8), wafers=3)
    system = compile_system(spec, mesh, "fp32", 16, lm_head="last")
    assert [(p.start, p.stop, p.head) for p in system.parts] == [(0, 2, False), (2, 3, False),
                                                                 (3, 4, True)]
    assert len(system.distinct()) == 3 and system.heads == []
    assert system.parts[0].compiled.plan.vec("vocab").total == 0
    system = compile_system(spec, mesh, "fp32", 16, lm_head="sliced")
    assert [(p.start, p.stop, p.head) for p in system.parts] == [(0, 2, False), (2, 3, False),
                                                                 (3, 4, False)]
    assert len(system.distinct()) == 2
    assert all(p.compiled.plan.vec("vocab").total == 0 for p in system.parts)
    assert [(h.v0, h.v1) for h in system.heads] == [(0, 67), (67, 134), (134, 200)]
    assert len(system.distinct_heads()) == 2
    assert [h.compiled.plan.vec("vocab").total for h in system.heads] == [67, 67, 66]


def test_llama_8b_fits_wse3_in_bf16():
    spec = resolve_model("programs/models/llama-3.1-8b.json")
    wse3 = load_mesh("wse3")
    placement = place(tile(spec, wse3.width, wse3.height, "even"), wse3, "bf16", 256)
    assert placement.total_bytes <= wse3.sram_bytes
    kv_and_weights = [k for k, m in placement.maps.items() if k[0] and "L0.k0" in m]
    assert kv_and_weights == [], "no PE reserves both weight tiles and the KV cache"


def test_70b_on_cs3x4_capacity_with_the_lm_head_sliced_over_the_wafers():
    """Placement only: Llama-3.1-70B on four WSE-3 (bf16, 20 layers per wafer). With the
    whole LM head on the last wafer it holds 55,870 positions (the ffn and
    vocabulary rows moved onto the 146 rows outside the bands; 33,975 with the
    near-equal split); a wafer without it holds 80,785. Sliced by vocabulary over the
    four wafers (docs/mapping.md, "Multi-wafer systems"), each wafer's head slice (the
    final norm and 32,064 LM head rows) takes 884 bytes per PE, and the layers in the
    rest hold 73,990 >= 65,536 positions on every wafer, so `lm_head="auto"` slices it."""
    from compiler.decode import plan_and_place
    from compiler.place import best_context, fit_context, spread_shift
    from compiler.system import (
        head_mode,
        head_reserve_bytes,
        head_spec,
        sub_spec,
        system_capacity,
        vocab_slices,
    )

    spec, mesh = resolve_model("programs/models/llama-3.1-70b.json"), load_mesh("cs3x4")
    words = mesh.sram_bytes // 2
    caps, equal = {}, {}
    ranges = layer_ranges(spec.num_layers, mesh.wafers)
    assert {stop - start for start, stop in ranges} == {20}
    part = sub_spec(spec, 20)
    for head in (False, True):
        caps[head] = best_context(part, mesh.width, mesh.height, "spread", head, words)
        equal[head] = fit_context(tile(part, mesh.width, mesh.height, "spread", head), words)
        # a context the near-equal split holds keeps it (shift 0: the fastest)
        assert spread_shift(part, mesh.width, mesh.height, head, words, equal[head])[0] == 0
    assert min(equal.values()) == equal[True] == 33_975
    assert caps == {True: 55_870, False: 80_785}
    slices = vocab_slices(spec.vocab_size, mesh.wafers)
    assert {v1 - v0 for v0, v1 in slices} == {32_064}
    one = dataclasses.replace(mesh, wafers=1)
    _, head = plan_and_place(head_spec(spec, *slices[0]), one, "bf16")
    reserve = head_reserve_bytes(spec, mesh, "bf16")
    assert reserve == head.total_bytes == 884
    sliced = best_context(part, mesh.width, mesh.height, "spread", False,
                          (mesh.sram_bytes - reserve) // 2)
    assert sliced == 73_990 >= 65_536
    # what compile_system(lm_head="auto") compares (tile and place passes only)
    assert system_capacity(spec, mesh, "bf16", lm_head="last") == caps[True]
    assert system_capacity(spec, mesh, "bf16", lm_head="sliced") == sliced
    assert head_mode(spec, mesh, "bf16") == "sliced"


def test_fit_error_names_bytes_class_and_square():
    spec = resolve_model("programs/models/llama-3.1-8b.json")
    wse3 = load_mesh("wse3")
    with pytest.raises(FitError, match=r"needs \d+ bytes of SRAM per PE \(.*PEs.*weight \d+.*\)"
                                       r", a PE has 49152 bytes; .*smallest square mesh"):
        place(tile(spec, 300, 300, "even"), wse3.with_mesh(300, 300), "bf16", 16)


def test_70b_on_one_wafer_names_the_wafer():
    spec = dataclasses.replace(resolve_model("programs/models/llama-3.1-70b.json"))
    mesh = dataclasses.replace(load_mesh("wse3").with_mesh(64, 64), wafers=2)
    with pytest.raises(FitError, match=r"wafer 0 of 2 \(layers 0\.\.39\)"):
        compile_system(spec, mesh, "bf16", 16, layout="even")
    with pytest.raises(FitError, match=r"wafer 0 of 2 \(LM head slice 0\.\.64127\)"):
        compile_system(spec, mesh, "bf16", 16, layout="even", lm_head="sliced")
    two = dataclasses.replace(load_mesh("wse3"), wafers=2)
    with pytest.raises(FitError, match=r"wafer 0 of 2 \(layers 0\.\.39\): .*; \d+ bytes "
                                       r"per PE are left beside the LM head slice \(\d+ "):
        compile_system(spec, two, "bf16", 16, layout="even", lm_head="sliced")


def test_parallel_wafer_emulation_equals_serial():
    spec = dataclasses.replace(resolve_model("programs/models/tiny-gqa.json"), num_layers=5)
    mesh = dataclasses.replace(load_mesh("small").with_mesh(8, 8), wafers=2)
    system = compile_system(spec, mesh, "fp32", 16)
    serial = run_system_timing(system, 7, jobs=1)
    parallel = run_system_timing(system, 7, jobs=2)
    assert len(system.distinct()) == 2
    for a, b in zip(serial.results, parallel.results, strict=True):
        assert a.cycles == b.cycles and a.instructions == b.instructions
        assert np.array_equal(a.pe_busy, b.pe_busy) and np.array_equal(a.link_busy, b.link_busy)
    assert serial.seconds(mesh.clock_hz) == parallel.seconds(mesh.clock_hz)


def test_fork_map_keeps_order_and_runs_serially_for_one_job():
    items = list(range(7))
    assert fork_map(square, items, jobs=3) == [i * i for i in items]
    assert fork_map(square, items, jobs=1) == [i * i for i in items]
    assert fork_map(square, [], jobs=2) == []


def square(x: int) -> int:
    """A job for fork_map."""
    return x * x


@pytest.mark.parametrize("parallel", [True, False])
def test_forked_returns_the_result_and_reraises_the_childs_error(parallel):
    values = np.arange(1000)
    with Forked(np.sum, values, parallel=parallel) as job:
        assert job.result() == values.sum()
    with Forked(int, "not a number", parallel=True) as job, \
            pytest.raises(ValueError, match="not a number"):
        job.result()


def test_a_forked_child_writes_into_shared_memory():
    out = shared_empty((3, 4), np.int64)
    with Forked(out.fill, 7) as job:
        job.result()
    assert out.shape == (3, 4) and (out == 7).all()


def test_an_unneeded_forked_child_is_stopped():
    with Forked(time.sleep, 60) as job:
        pid = job._pid
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, 0)   # already reaped


def test_pool_workers_do_not_fork_again():
    assert fork_map(jobs_in_child, [0, 1], jobs=2) == [1, 1]
    assert usable_jobs(3) == 3


def jobs_in_child(_) -> int:
    """usable_jobs(2) inside a pool worker."""
    return usable_jobs(2)
