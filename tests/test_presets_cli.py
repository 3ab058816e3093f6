"""`emu presets`: every bundled preset listed, each shown with values equal to its loaded
dataclass, a unit per field and its sources; unknown names exit 2."""

import dataclasses
import json

import pytest
from click.testing import CliRunner

from emulator.cli import main
from emulator.hw.catalog import KINDS, all_presets, unit_of
from emulator.hw.presets import list_presets


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_list_names_every_bundled_preset():
    listed = json.loads(invoke("presets", "--json").output)["presets"]
    assert {(r["kind"], r["name"]) for r in listed} == {
        (kind, name) for kind in KINDS for name in list_presets(kind)}
    assert all(r["description"] for r in listed)
    text = invoke("presets").output
    assert all(r["name"] in text for r in listed)


@pytest.mark.parametrize("row", all_presets(), ids=lambda r: r["name"])
def test_show_matches_the_loaded_preset(row):
    info = json.loads(invoke("presets", row["name"], "--json").output)
    cls, load = KINDS[row["kind"]]
    preset = load(row["name"])
    assert [f["field"] for f in info["fields"]] == [f.name for f in dataclasses.fields(cls)]
    for f in info["fields"]:
        assert f["value"] == getattr(preset, f["field"])
        assert f["unit"] == unit_of(f["field"])
        if f["field"] != "name":
            assert f["source"], f"{row['name']}.{f['field']} has no source"
    result = invoke("presets", row["name"])
    assert result.exit_code == 0 and "…" not in result.output


def test_units_follow_the_naming_rules():
    assert unit_of("sram_bytes") == "B" and unit_of("hbm_bytes_per_s") == "B/s"
    assert unit_of("clock_hz") == "Hz" and unit_of("latency_s") == "s"
    assert unit_of("hop_latency") == "cycles" and unit_of("peak_fp8_flops") == "FLOP/s"
    assert unit_of("num_colors") == "count" and unit_of("width") == "PEs"


def test_unknown_preset_exits_2():
    result = invoke("presets", "wse9")
    assert result.exit_code == 2
    assert "wse9: no such bundled preset (bundled presets: cs3x4" in result.output


def test_readme_command_table_matches_emu_help():
    """Every command and subcommand of `emu --help` has a row in the README's table, and
    every row names a real command."""
    import re
    from pathlib import Path

    import click

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("## Commands"):]
    table = table[:table.index("\n\n", table.index("| command |"))]
    rows = set(re.findall(r"^\| `emu ([a-z]+(?: [a-z]+)?)", table, flags=re.M))
    commands = set()
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            commands |= {f"{name} {sub}" for sub in command.commands}
        else:
            commands.add(name)
    rows = {r if r in commands else r.split()[0] for r in rows}
    assert rows == commands
