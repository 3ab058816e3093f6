"""Prefill presets and the `emu gemm` / `emu prefill` commands: good input prints tables or
one JSON object; bad input exits 2 with one line naming the problem, no traceback."""

import dataclasses
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from emulator.hw import list_presets
from emulator.hw.errors import ConfigError
from emulator.hw.prefill import PrefillConfig, load_prefill


def test_bundled_presets():
    assert {"trn2", "trn3", "trn2-48xl", "trn3-ultraserver"} <= set(list_presets("prefill"))
    assert load_prefill("trn2-48xl").chips == 16 and load_prefill("trn3-ultraserver").chips == 144
    trn2, trn3 = load_prefill("trn2"), load_prefill("trn3")
    assert isinstance(trn2, PrefillConfig)
    assert trn2.cores_per_chip == trn3.cores_per_chip == 8
    assert (trn2.pe_rows, trn2.pe_cols, trn2.tensor_clock_hz) == (128, 128, 2.4e9)
    assert trn2.sbuf_bytes == 28 * 2**20 and trn3.sbuf_bytes == 32 * 2**20
    assert trn2.psum_bytes == trn3.psum_bytes == 2 * 2**20
    assert (trn2.vector_clock_hz, trn3.vector_clock_hz) == (0.96e9, 1.2e9)
    assert trn2.hbm_bytes == 96 * 2**30 and trn3.hbm_bytes == 144 * 2**30
    assert trn2.peak_flops("bf16") == 667e12 and trn3.peak_flops("bf16") == 671e12
    with pytest.raises(dataclasses.FrozenInstanceError):
        trn2.cores_per_chip = 4


def test_every_field_has_a_source():
    from importlib import resources
    for name in ("trn2", "trn3", "trn2-48xl", "trn3-ultraserver"):
        text = resources.files("emulator.hw").joinpath(f"presets/prefill-{name}.json")
        data = json.loads(text.read_text())
        fields = set(PrefillConfig.__dataclass_fields__) - {"name"}
        assert fields <= set(data["sources"]), fields - set(data["sources"])


def _preset_file(tmp_path, **change):
    data = {k: v for k, v in load_prefill("trn2").__dict__.items()}
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "chip.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("change, key", [
    ({"pe_rows": 0}, "pe_rows"),
    ({"tensor_clock_hz": "fast"}, "tensor_clock_hz"),
    ({"dma_latency_s": -1.0}, "dma_latency_s"),
    ({"cores_per_chip": 2.5}, "cores_per_chip"),
    ({"warp_drive": 1}, "warp_drive"),
    ({"pe_rows": 256}, "pe_rows"),
    ({"moving_free_max": 1024}, "moving_free_max"),
    ({"hbm_bytes": None}, "hbm_bytes"),
])
def test_bad_preset_names_the_key(tmp_path, change, key):
    path = _preset_file(tmp_path, **change)
    with pytest.raises(ConfigError, match=key):
        load_prefill(path)
    out = CliRunner().invoke(_main(), ["gemm", "8", "8", "8", "--prefill-hw", path])
    assert out.exit_code == 2
    assert key in out.output and "Traceback" not in out.output


def test_user_preset_file(tmp_path):
    path = _preset_file(tmp_path, name="mychip", pe_rows=64, pe_cols=64)
    out = CliRunner().invoke(_main(), ["gemm", "128", "128", "128", "--prefill-hw", path,
                                       "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["array"] == [64, 64]


def _main():
    from emulator.cli import main
    return main


@pytest.mark.parametrize("args", [
    ["gemm", "12", "x", "3"],
    ["gemm", "0", "4", "4"],
    ["gemm", "4", "4", "-2"],
    ["gemm", "4", "4", "4", "--array", "12"],
    ["gemm", "4", "4", "4", "--array", "0x4"],
    ["gemm", "4", "4", "4", "--dataflow", "xs"],
    ["gemm", "4", "4", "4", "--dataflow", "os"],
    ["gemm", "4", "4", "4", "--prefill-hw", "trn9"],
    ["gemm", "4", "4", "4", "--dtype", "int4"],
    ["prefill", "no-such-model.json"],
    ["prefill", "tiny", "--prompt-len", "0"],
    ["prefill", "tiny", "--prompt-len", "many"],
    ["prefill", "tiny", "--prompt-tokens", "1,a"],
    ["prefill", "tiny", "--prompt-tokens", "99999"],
    ["prefill", "tiny", "--dtype", "fp64"],
    ["prefill", "programs/models/llama-3.1-8b.json"],
    ["prefill", "tiny", "--prefill-chips", "0"],
    ["prefill", "tiny", "--prefill-chips", "17", "--timing-only"],
    ["prefill", "tiny", "--prefill-dtype", "fp8"],
])
def test_bad_input_exits_2_with_one_line(args):
    proc = subprocess.run([sys.executable, "-c", "from emulator.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emu: error:"), proc.stderr
    assert proc.stdout == ""


def test_gemm_tables_and_json():
    runner = CliRunner()
    out = runner.invoke(_main(), ["gemm", "512", "1024", "1024"])
    assert out.exit_code == 0, out.output
    assert "compute cycles" in out.output and "roofline" in out.output
    out = runner.invoke(_main(), ["gemm", "128", "512", "128", "--json"])
    report = json.loads(out.output)
    assert report["compute_cycles"] == 544 and report["total_cycles"] == 6036
    assert {"compute_cycles", "total_cycles", "utilization"} <= set(report)


def test_prefill_command():
    runner = CliRunner()
    out = runner.invoke(_main(), ["prefill", "tiny", "--prompt-len", "40"])
    assert out.exit_code == 0, out.output
    for text in ("per layer", "per operator", "engine utilisation", "roofline"):
        assert text in out.output
    out = runner.invoke(_main(), ["prefill", "tiny", "--prompt-len", "40", "--timing-only",
                                  "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["cycles"] > 0 and report["prompt_len"] == 40
    assert len(report["per_layer"]) == 3
    # DESIGN.md 5.1: emu prefill --json
    assert {"cycles", "seconds", "chips", "flops", "roofline_seconds",
            "engine_utilization"} <= set(report)
    assert report["chips"] == 1 and report["seconds"] >= report["roofline_seconds"]
    out = runner.invoke(_main(), ["prefill", "tiny", "--prompt-len", "40", "--timing-only",
                                  "--json", "--prefill-chips", "2", "--prefill-hw",
                                  "trn2-48xl"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["chips"] == 2


def test_layer_table_collapses_equal_layers():
    from emulator.cli.prefill import collapse_layers
    rows = [{"layer": k, "cycles": c, "roofline_cycles": 5, "dma_bytes": 1.0}
            for k, c in enumerate([9, 7, 7, 7, 8])] + \
        [{"layer": -1, "cycles": 3, "roofline_cycles": 1, "dma_bytes": 1.0}]
    assert [label for label, _ in collapse_layers(rows)] == ["0", "1-3", "4", "lm_head"]


def test_emu_run_prefill_chips_and_dtype(tmp_path):
    """emu run --prefill-chips N reports prefill.chips; fp8 prefill in timing-only mode
    carries one-byte KV to the decode side."""
    path = tmp_path / "r.json"
    runner = CliRunner()
    out = runner.invoke(_main(), ["run", "--max-new-tokens", "2", "--timing-only",
                                  "--prefill-chips", "2", "--report", str(path), "--quiet"])
    assert out.exit_code == 0, out.output
    report = json.loads(path.read_text())
    assert report["prefill"]["chips"] == 2 and report["prefill"]["dtype"] == "bf16"
    out = runner.invoke(_main(), ["run", "--max-new-tokens", "2", "--timing-only",
                                  "--prefill-dtype", "fp8", "--report", str(path), "--quiet"])
    assert out.exit_code == 0, out.output
    fp8 = json.loads(path.read_text())
    assert fp8["prefill"]["dtype"] == "fp8" and fp8["prefill"]["chips"] == 1
    assert 2 * fp8["kv_transfer"]["bytes_per_token"] == report["kv_transfer"]["bytes_per_token"]
    out = runner.invoke(_main(), ["run", "--prefill-chips", "x", "--quiet"])
    assert out.exit_code == 2 and "--prefill-chips" in out.output
