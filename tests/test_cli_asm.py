"""`emu asm run|disasm` and `emu step`: output, JSON, stepping and one-line errors (exit 2)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from emulator.cli import asm as cli_asm
from emulator.cli import main
from isa.asm import assemble, assemble_file

PROGRAMS = Path(__file__).resolve().parent.parent / "programs" / "asm"
CYCLES = {"hello": 8, "row_broadcast": 26, "row_reduce": 84, "contention": 22, "gemv4x4": 44}


def emu(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


@pytest.mark.parametrize("engine", ["reference", "numba"])
def test_run_json_for_every_example(engine):
    for name, cycles in CYCLES.items():
        result = emu("asm", "run", PROGRAMS / f"{name}.asm", "--engine", engine, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["cycles"] == cycles and report["engine"] == engine
        assert report["instructions"] > 0 and report["messages"] > 0


def test_run_json_fields_and_timing_only():
    result = emu("asm", "run", PROGRAMS / "contention.asm", "--json", "--timing-only",
                 "--engine", "reference")
    report = json.loads(result.stdout)
    assert report["mode"] == "timing-only" and report["cycles"] == 22
    assert report["mesh"] == [3, 1] and report["hw"] == "wse3"
    assert (report["instructions"], report["messages"]) == (7, 2)
    assert report["link_busy_total"] == 24 and report["link_busy_max"] == 16
    assert report["busiest_links"][0] == {"x": 1, "y": 0, "dir": "E", "busy": 16,
                                          "utilization": 16 / 22}
    assert report["busiest_pes"][0]["x"] == 2 and report["busiest_pes"][0]["busy"] == 18


def test_run_tables_list_every_pe_and_link_on_request():
    result = emu("asm", "run", PROGRAMS / "row_broadcast.asm", "--engine", "reference",
                 "--pes", "--links")
    assert result.exit_code == 0
    out = result.stdout
    assert "cycles" in out and "26" in out and "receivers" in out
    assert "links used" in out and "busiest" not in out
    assert out.count("receivers") == 7          # one row per PE with code (7 receivers)


def test_run_tables_are_summarised_by_default():
    result = emu("asm", "run", PROGRAMS / "row_broadcast.asm", "--mesh", "64x64", "--hw", "small")
    assert result.exit_code == 0, result.output
    out = result.stdout
    words = " ".join(out.split())            # titles wrap to the width of their table
    assert "the 8 busiest PEs of 8 (--pes: all)" in words
    assert "the 7 busiest links of 7 used (--links: all)" in words
    assert out.count("receivers") == 7          # the source and 7 receivers
    assert len(out.splitlines()) < 60


def test_run_tables_large_mesh_are_summarised():
    result = emu("asm", "run", PROGRAMS / "row_broadcast.asm", "--mesh", "40x30",
                 "--hw", "small", "--engine", "reference")
    assert result.exit_code == 0, result.output
    assert "the 8 busiest PEs" in result.stdout and "the 7 busiest links" in result.stdout
    assert result.stdout.count("receivers") == 7
    report = json.loads(emu("asm", "run", PROGRAMS / "row_broadcast.asm", "--mesh", "40x30",
                            "--json").stdout)
    assert report["cycles"] == 26 and len(report["busiest_pes"]) == 8
    assert len(report["busiest_links"]) == 7


def test_disasm_round_trips(tmp_path):
    result = emu("asm", "disasm", PROGRAMS / "gemv4x4.asm")
    assert result.exit_code == 0
    original = assemble_file(PROGRAMS / "gemv4x4.asm")
    assert assemble(result.stdout).equals(original)
    out = tmp_path / "g.asm"
    assert emu("asm", "disasm", PROGRAMS / "gemv4x4.asm", "-o", out).exit_code == 0
    assert out.read_text() == result.stdout


def test_step_prints_events_in_time_order():
    result = emu("step", PROGRAMS / "contention.asm", "--steps", "3")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 3
    assert "PE (0,0)" in lines[0] and "send c0" in lines[0]
    assert "in flight: 2" in result.stdout
    assert "3 of 7 events; program ends at cycle 22" in result.stdout
    everything = emu("step", PROGRAMS / "gemv4x4.asm")
    starts = [int(line.split()[2].split("-")[0]) for line in everything.stdout.splitlines()
              if line.startswith("[")]
    assert starts == sorted(starts) and len(starts) == 104


def test_step_interactive_waits_and_quits(monkeypatch):
    monkeypatch.setattr(cli_asm, "stdin_is_tty", lambda: True)
    result = emu("step", PROGRAMS / "hello.asm", input="\nq\n")
    assert result.exit_code == 0
    assert len([line for line in result.stdout.splitlines() if line.startswith("[")]) == 2
    result = emu("step", PROGRAMS / "hello.asm", input="\n\n\n\n")
    assert "4 of 4 events" in result.stdout


HEADER = ".mesh 2x2\n.sram 64\n.params 1\n.region main 0,0 1,1\n"   # 4 lines
MALFORMED = [
    ("    vfoo [0], 1\n", 5),                        # unknown opcode
    ("    vadd [0], [1], 4\n", 5),                   # missing operand
    ("    vmov [0], [1], 4, 4\n", 5),                # extra operand
    ("    movr r9, 1\n", 5),                         # bad register
    ("    vmov (0), [1], 4\n", 5),                   # bad operand syntax
    ("    vmov [70], [1], 4\n", 5),                  # address beyond .sram
    ("    send c99, [0], 1\n", 5),                   # unknown color
    ("    jmp nowhere\n", 5),                        # undefined label
    ("a: nop\na: nop\n", 6),                         # duplicate label
    (".fancy 1\n", 5),                               # unknown directive
    (".region far 0,0 9,9\n", 5),                    # region outside the mesh
    (".region again 1,1 1,1\n", 5),                  # overlapping region
    (".route c0 rx=Up tx=R\n", 5),                   # bad port name
    ("    vmov [%p3], [0], 1\n", 5),                 # param index >= .params
    (".param p0 = x ** y\n", 5),                     # bad expression
]
MALFORMED_HEADERS = [
    (".mesh 2x2\n    nop\n", 2),                     # instruction before any .region
    (".mesh two-by-two\n", 1),                       # malformed .mesh
    (".mesh 2x2\n.sram 1000000\n", 2),               # .sram larger than the PE's SRAM
]


@pytest.mark.parametrize("text, line", [(HEADER + body, n) for body, n in MALFORMED]
                         + MALFORMED_HEADERS)
def test_malformed_assembly_exits_2_with_line(tmp_path, text, line):
    path = tmp_path / "bad.asm"
    path.write_text(text)
    for command in (["asm", "run", path], ["asm", "disasm", path], ["step", path]):
        result = emu(*command)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert result.stderr.startswith(f"emu: error: {path}:{line}:"), result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


RUNTIME_FAULTS = [
    (".mesh 2x1\n.sram 4\n.region a 0,0 0,0\n  recv c0, [0], 1\n", "deadlock"),
    (".mesh 2x1\n.sram 4\n.region a 0,0 0,0\n.route c0 rx=R tx=W\n  send c0, [0], 1\n",
     "leaves the mesh"),
    (".mesh 1x1\n.sram 4\n.region a 0,0 0,0\n  movr r1, 3\n  vmov [r1], [0], 2\n",
     "outside 0..3"),
    (".mesh 1x1\n.region a 0,0 0,0\ntop: jmp top\n", "cycle limit 1000"),
]


@pytest.mark.parametrize("engine", ["reference", "numba"])
@pytest.mark.parametrize("text, fragment", RUNTIME_FAULTS)
def test_runtime_faults_exit_2(tmp_path, engine, text, fragment):
    path = tmp_path / "fault.asm"
    path.write_text(text)
    result = emu("asm", "run", path, "--engine", engine, "--max-cycles", 1000)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--hw", "nosuch"], "no such mesh preset"),
    (["--mesh", "0x3"], "--mesh: expected WxH"),
    (["--mesh", "1x1"], "outside the 1x1 mesh"),
])
def test_bad_options_exit_2(args, fragment):
    result = emu("asm", "run", PROGRAMS / "hello.asm", *args)
    assert result.exit_code == 2 and fragment in result.stderr
    assert result.stderr.count("\n") == 1


def test_missing_file_and_model_config_for_step(tmp_path):
    result = emu("asm", "run", tmp_path / "none.asm")
    assert result.exit_code == 2 and "cannot read assembly file" in result.stderr
    result = emu("step", tmp_path / "model.json")
    assert result.exit_code == 2 and "expects a mesh assembly file" in result.stderr


def test_step_shows_events_before_a_fault(tmp_path):
    path = tmp_path / "deadlock.asm"
    path.write_text(".mesh 2x1\n.sram 4\n.region a 0,0 1,0\n  nop\n  recv c0, [0], 1\n")
    result = emu("step", path)
    assert result.exit_code == 2
    assert "2 of 2 events before the fault" in result.stdout and "nop" in result.stdout
    assert "deadlock" in result.stderr and result.stderr.count("\n") == 1
