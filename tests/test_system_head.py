"""The LM head sliced by vocabulary over the wafers of a system (compiler/system.py;
docs/mapping.md, "Multi-wafer systems"): logits equal the numpy reference, both engines
agree, the per-token time is the documented closed form, the SRAM reservation is joint
and one-wafer systems are unchanged."""

import copy
import dataclasses

import numpy as np
import pytest

from compiler import reference
from compiler.decode import compile_decode
from compiler.frontend import resolve_model
from compiler.system import (
    compile_system,
    head_mode,
    link_seconds,
    system_capacity,
    vocab_slices,
)
from compiler.weights import random_weights
from emulator.hw.mesh import load_mesh
from emulator.mesh.runtime import run_timing
from emulator.mesh.system import SystemDecoder, run_system_timing

TIGHT_SRAM = 5000   # bytes per PE: tiny-gqa on 3 wafers holds more with the head sliced


def system_mesh(wafers: int, side: int = 8, **fields):
    """A small mesh of `wafers` wafers with a slow link (so link time is visible)."""
    base = load_mesh("small").with_mesh(side, side)
    return dataclasses.replace(base, wafers=wafers, wafer_link_bytes_per_s=2e9,
                               wafer_link_latency_s=3e-6, **fields)


def test_auto_slices_the_head_only_when_that_holds_more():
    spec = resolve_model("programs/models/tiny-gqa.json")
    tight = system_mesh(3, sram_bytes=TIGHT_SRAM)
    last, sliced = (system_capacity(spec, tight, "fp32", lm_head=m) for m in ("last", "sliced"))
    assert sliced > last > 0
    assert head_mode(spec, tight, "fp32") == "sliced"
    assert compile_system(spec, tight, "fp32", 16).sliced
    roomy = system_mesh(3)   # both hold the model's 256 positions: the head stays whole
    assert system_capacity(spec, roomy, "fp32", lm_head="sliced") == 256
    assert system_capacity(spec, roomy, "fp32", lm_head="last") == 256
    assert head_mode(spec, roomy, "fp32") == "last"
    system = compile_system(spec, roomy, "fp32", 16)
    assert not system.sliced and system.parts[-1].head and system.reserve_bytes == 0
    assert head_mode(spec, load_mesh("small").with_mesh(8, 8), "fp32") == "last"


def decode_two(spec, weights, mesh, engine: str = "numba", dtype: str = "fp32"):
    """(logits of two decode steps after a 3-token prefill, reference logits, steps)."""
    prompt = np.array([1, 2, 3])
    logits, cache = reference.prefill(spec, weights, prompt)
    system = SystemDecoder(spec, weights, mesh, dtype, engine, max_context=16,
                           lm_head="sliced")
    system.load_kv(cache)
    ref_cache = copy.deepcopy(cache)
    token, got, want, steps = int(np.argmax(logits[-1])), [], [], []
    for pos in (3, 4):
        row, step = system.step(token, pos)
        got.append(row)
        want.append(reference.decode_step(spec, weights, token, ref_cache))
        steps.append(step)
        token = int(np.argmax(want[-1]))
    return np.stack(got), np.stack(want), steps, system


@pytest.mark.parametrize(("model", "wafers"), [("tiny-llama", 2), ("tiny-gqa", 3),
                                               ("tiny-qwen2", 2)])
def test_sliced_head_logits_equal_the_reference(model, wafers):
    spec = resolve_model(f"programs/models/{model}.json")
    weights = random_weights(spec, 1)
    got, want, _, system = decode_two(spec, weights, system_mesh(wafers))
    assert got.shape == want.shape == (2, spec.vocab_size)
    assert np.abs(got - want).max() <= 1e-4
    assert len(system.heads) == wafers
    assert [(h.v0, h.v1) for h in system.system.heads] == vocab_slices(spec.vocab_size, wafers)


def test_engines_agree_on_a_sliced_system():
    spec = resolve_model("programs/models/tiny-gqa.json")
    weights = random_weights(spec, 2)
    mesh = system_mesh(3)
    fast, _, fast_steps, _ = decode_two(spec, weights, mesh, "numba")
    slow, _, slow_steps, _ = decode_two(spec, weights, mesh, "reference")
    assert np.array_equal(fast, slow)
    for a, b in zip(fast_steps, slow_steps, strict=True):
        assert [r.cycles for r in a.runs()] == [r.cycles for r in b.runs()]
        assert a.seconds(mesh.clock_hz) == b.seconds(mesh.clock_hz)


def test_step_time_is_the_closed_form():
    """seconds = (sum of layer cycles + max of head-slice cycles) / clock
    + (W - 1) * (B / bw + lat) + ((W - 1) * B / bw + lat) + lat, B the hidden bytes."""
    spec = dataclasses.replace(resolve_model("programs/models/tiny-gqa.json"), num_layers=5)
    mesh = system_mesh(3)
    system = compile_system(spec, mesh, "fp32", 16, lm_head="sliced")
    step = run_system_timing(system, 6)
    layers = [r.cycles for r in step.results]
    heads = [r.cycles for r in step.head_results]
    assert len(layers) == len(heads) == 3
    assert step.cycles == sum(layers) + max(heads)
    nbytes, bw, lat, w = spec.hidden_size * 4, 2e9, 3e-6, 3
    links = (w - 1) * (nbytes / bw + lat) + ((w - 1) * nbytes / bw + lat) + lat
    assert step.handoff_s == links
    assert step.seconds(mesh.clock_hz) == (sum(layers) + max(heads)) / mesh.clock_hz + links


def test_timing_only_steps_equal_full_runs():
    """run_system_timing fast-forwards the layer programs; every program run whole at
    the same position gives the same cycles."""
    spec = dataclasses.replace(resolve_model("programs/models/tiny-gqa.json"), num_layers=6)
    mesh = system_mesh(2)
    system = compile_system(spec, mesh, "fp32", 16, lm_head="sliced")
    step = run_system_timing(system, 9)
    for part, got in zip(system.parts, step.results, strict=True):
        full = run_timing(part.compiled, system.layer_mesh, 9, fast_forward=False)
        assert got.cycles == full.cycles and got.instructions == full.instructions
    one = dataclasses.replace(mesh, wafers=1)
    for head, got in zip(system.heads, step.head_results, strict=True):
        assert got.cycles == run_timing(head.compiled, one, 0, engine="reference").cycles


def test_every_pe_reserves_the_head_slice_beside_the_layers():
    spec = resolve_model("programs/models/tiny-gqa.json")
    mesh = system_mesh(3)
    system = compile_system(spec, mesh, "fp32", 16, lm_head="sliced")
    assert system.reserve_bytes == max(h.compiled.placement.total_bytes for h in system.heads)
    assert system.reserve_bytes > 0
    assert system.layer_mesh.sram_bytes == mesh.sram_bytes - system.reserve_bytes
    for part in system.parts:
        assert part.compiled.placement.total_bytes + system.reserve_bytes <= mesh.sram_bytes
    for head in system.heads:   # a head slice holds no KV cache and no attention scratch
        kinds = {b.kind for m in head.compiled.placement.maps.values() for b in m.values()}
        names = {n for m in head.compiled.placement.maps.values() for n in m}
        assert "kv" not in kinds and not {"PM", "QKV", "COS"} & names


def test_one_wafer_system_keeps_the_whole_head():
    spec = resolve_model("programs/models/tiny-gqa.json")
    mesh = load_mesh("small").with_mesh(8, 8)
    system = compile_system(spec, mesh, "fp32", 16)
    assert system.heads == [] and system.reserve_bytes == 0 and system.parts[0].head
    alone = compile_decode(spec, mesh, "fp32", 16)
    got, want = system.parts[0].compiled.decode.program, alone.decode.program
    assert np.array_equal(got.code, want.code) and np.array_equal(got.param_rows,
                                                                  want.param_rows)
    assert system.parts[0].compiled.placement.total_bytes == alone.placement.total_bytes
    step = run_system_timing(system, 5)
    assert step.handoff_s == 0.0 and step.head_results == []
    assert step.cycles == run_timing(alone, mesh, 5).cycles


def test_emu_run_reports_the_sliced_system(tmp_path):
    """`emu run` on three wafers whose LM head is sliced: the logits equal the
    reference, and the report's token time is its cycles (layers plus the slowest head
    slice) over the clock plus the link time of `compiler.system.link_seconds`."""
    import json

    from click.testing import CliRunner

    from compiler.weights import save_weights
    from emulator.cli import main

    spec = resolve_model("programs/models/tiny-gqa.json")
    weights = random_weights(spec, 4)
    save_weights(tmp_path / "w.safetensors", weights)
    preset = json.loads(open("emulator/hw/presets/mesh-small.json").read())
    preset.update(name="small-x3", width=8, height=8, wafers=3, sram_bytes=TIGHT_SRAM,
                  wafer_link_bytes_per_s=2e9, wafer_link_latency_s=3e-6)
    (tmp_path / "hw.json").write_text(json.dumps(preset))
    report_path, logits_path = tmp_path / "r.json", tmp_path / "l.npy"
    result = CliRunner().invoke(main, [
        "run", "programs/models/tiny-gqa.json", "--weights", str(tmp_path / "w.safetensors"),
        "--hw", str(tmp_path / "hw.json"), "--prompt-tokens", "4,9,2", "--max-new-tokens", "3",
        "--dtype", "fp32", "--report", str(report_path), "--logits", str(logits_path),
        "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    _, want = reference.generate(spec, weights, [4, 9, 2], 3)
    assert np.abs(np.load(logits_path) - want).max() <= 1e-4
    decode = report["decode"]
    mesh = system_mesh(3, sram_bytes=TIGHT_SRAM)
    links = link_seconds(spec, mesh, "fp32")
    assert decode["max_context"] == system_capacity(spec, mesh, "fp32")
    assert decode["wafer_layers"] == [[0, 1], [1, 2], [2, 3]]
    assert decode["handoff_seconds"] == links
    assert decode["seconds_per_token"] == decode["cycles_per_token"] / mesh.clock_hz + links
    assert sum(decode["phases"].values()) == decode["cycles"][-1]
    assert decode["phases"]["head"] > 0
    assert 0 < decode["bound_cycles_per_token"] <= decode["cycles"][-1]


def test_map_of_a_system_counts_the_head_slice():
    """`emu map` on W > 1 wafers shows wafer 0: its layers placed beside the head-slice
    reservation, which its SRAM numbers count."""
    from emulator.views.mapview import build_map

    spec = resolve_model("programs/models/tiny-gqa.json")
    mesh = system_mesh(3, sram_bytes=TIGHT_SRAM)
    system = compile_system(spec, mesh, "fp32", 16)
    assert system.sliced
    m = build_map(spec, mesh, "fp32", "auto", 16, "tiny")
    assert m.head_bytes == system.reserve_bytes > 0
    assert m.placement.total_bytes == system.parts[0].compiled.placement.total_bytes
    assert m.need_bytes == int(m.reserved_total.max()) == (
        system.parts[0].compiled.placement.total_bytes + system.reserve_bytes)
    assert m.wafer == "wafer 0 of 3: layers 0..0 + LM head slice 0..66" and m.fits
    assert f"{m.head_bytes:,} of them for the LM head slice" in m.status()
    whole = build_map(spec, system_mesh(3), "fp32", "auto", 16, "tiny")
    assert whole.wafer == "wafer 2 of 3: layers 2..2 + LM head" and whole.head_bytes == 0
