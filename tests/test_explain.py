"""`emu explain`: the program shown is the one the engines execute, storage and routes
match the compiled placement and router tables, the timeline matches the reference
engine, and bad options exit 2 with the valid range."""

import re

import pytest
from click.testing import CliRunner

from compiler.decode import compile_decode
from compiler.frontend import resolve_model
from compiler.place import pe_class
from emulator.cli import main
from emulator.hw.mesh import load_mesh
from emulator.inspect import explain
from emulator.mesh.runtime import run_timing
from isa.disasm import format_instruction, format_ports

MESH = (4, 4)
CONTEXT = 16
ARGS = ["--mesh", "4x4", "--max-context", str(CONTEXT), "--layout", "groups"]
LISTING = re.compile(r"^\s*(\d+)  (\S.*?)(?:\s+; .*)?$")


def emu(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def compiled():
    mesh = load_mesh("small").with_mesh(*MESH)
    return compile_decode(resolve_model("tiny"), mesh, max_context=CONTEXT,
                          layout="groups"), mesh


@pytest.fixture(scope="module")
def explained():
    result = emu("explain", "tiny", "--pe", "1,1", *ARGS)
    assert result.exit_code == 0, result.output
    return result.stdout


def section(text: str, start: str, end: str | None = None) -> list[str]:
    lines = text.splitlines()
    first = next(k for k, line in enumerate(lines) if line.startswith(start))
    last = next((k for k, line in enumerate(lines) if end and k > first
                 and line.startswith(end)), len(lines))
    return lines[first + 1:last]


def test_program_is_what_the_engines_execute(explained, compiled):
    (c, _) = compiled
    program = c.decode.for_position(0)
    region = int(program.pe_region[1 * MESH[0] + 1])
    expected = [format_instruction(ins, program.mark_names)
                for ins in program.region_code(region)]
    listing = section(explained, "program", "timeline")
    shown = [(int(m.group(1)), m.group(2)) for m in map(LISTING.match, listing) if m]
    assert [pc for pc, _ in shown] == list(range(len(expected)))
    assert [text for _, text in shown] == expected
    for comment in program.region_comments[region].values():
        assert any(line.strip().endswith(comment) for line in listing), comment
    assert f"shared by {int((program.pe_region == region).sum())} PE(s)" in listing[0]


def test_op_filter_shows_only_that_block(compiled):
    (c, _) = compiled
    program = c.decode.for_position(0)
    region = int(program.pe_region[1 * MESH[0] + 0])
    blocks = [b for b in explain.op_blocks(program, region) if b.op == "L1.qkv"]
    result = emu("explain", "tiny", "--pe", "0,1", *ARGS, "--op", "L1.qkv")
    assert result.exit_code == 0, result.output
    listing = section(result.stdout, "program", "timeline")
    pcs = [int(m.group(1)) for m in map(LISTING.match, listing) if m]
    assert pcs == [pc for b in blocks for pc in range(b.start, b.end)]
    timeline = [line for line in section(result.stdout, "timeline") if "│" in line]
    assert timeline and all("L1.qkv" in line for line in timeline[1:])


def test_stores_name_addresses_and_tensor_slices(explained, compiled):
    (c, _) = compiled
    spec, plan = c.plan.spec, c.plan
    rows = {line.split("│")[1].strip(): line for line in section(explained, "stores",
                                                                 "routes") if "│" in line}
    for name, buf in c.placement.maps[pe_class(plan, 1, 1)].items():
        assert name in rows, name
        assert f" {buf.addr} " in rows[name]
    group = plan.groups_on_row(1)[0]
    hd, gs = spec.head_dim, spec.group_size
    q_rows = f"q_proj rows {group * gs * hd}-{(group + 1) * gs * hd - 1}"
    assert q_rows in explained
    hidden = plan.vec("hidden")
    assert f"cols {hidden.start(1)}-{hidden.start(2) - 1} of hidden" in explained
    assert f"kv head {group}: positions 1, {1 + MESH[0]}" in explained


def test_routes_match_the_router_tables(explained, compiled):
    (c, _) = compiled
    pe = 1 * MESH[0] + 1
    rows = [line.split("│") for line in section(explained, "routes", "parameters")
            if re.match(r"│\s+\d+ │", line)]
    names = {color: name for name, color in c.routes.colors.items()}
    expected = [(str(k), names[k], format_ports(int(c.routes.route_rx[pe, k])),
                 format_ports(int(c.routes.route_tx[pe, k])))
                for k in range(c.routes.num_colors)
                if c.routes.route_rx[pe, k] or c.routes.route_tx[pe, k]]
    assert [tuple(cell.strip() for cell in row[1:5]) for row in rows] == expected


def test_timeline_matches_the_reference_engine(explained, compiled):
    (c, mesh) = compiled
    rows = [line.split("│") for line in section(explained, "timeline")
            if re.match(r"│\s+[\d,]+ │", line)]
    starts = [int(row[1].replace(",", "")) for row in rows]
    ends = [int(row[2].replace(",", "")) for row in rows]
    assert starts == sorted(starts) and all(e >= s for s, e in zip(starts, ends, strict=True))
    result = run_timing(c, mesh, 0, engine="reference")
    assert ends[-1] == int(result.pe_finish[1 * MESH[0] + 1])
    assert f"the step ends at {result.cycles:,}" in explained
    ops = [row[4].strip() for row in rows]
    assert ops[0] == "prologue" and ops[-1] == "lm_head" and "L0.attn" in ops


def test_op_blocks_cover_the_code(compiled):
    (c, _) = compiled
    program = c.decode.program
    for region in range(len(program.region_start)):
        blocks = explain.op_blocks(program, region)
        assert blocks[0].start == 0 and blocks[-1].end == program.region_len[region]
        assert all(a.end == b.start for a, b in zip(blocks, blocks[1:], strict=False))
        names = {b.op for b in blocks}
        assert {"L0.qkv", "L0.o_proj", "L0.gate_up", "L0.down", "L1.down",
                "lm_head"} <= names


@pytest.mark.parametrize("args, fragment", [
    (["--pe", "4,0"], "--pe 4,0 is outside the 4x4 mesh (x in 0..3, y in 0..3)"),
    (["--pe", "0,-1"], "(x in 0..3, y in 0..3)"),
    (["--pe", "one,two"], "--pe: expected X,Y (x in 0..3, y in 0..3)"),
    (["--pe", "1,1", "--position", "99"], "--position 99 is outside the KV capacity 0..15"),
    (["--pe", "1,1", "--op", "nonsense"], "--op nonsense matches no op of this PE's program"),
])
def test_bad_options_exit_2(args, fragment):
    result = emu("explain", "tiny", *ARGS, *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_spread_layout_stores_follow_the_pes_class():
    """The spread layout's address maps differ per row kind: explain shows the PE's own."""
    mesh = load_mesh("small").with_mesh(*MESH)
    c = compile_decode(resolve_model("tiny"), mesh, max_context=CONTEXT)
    assert c.plan.layout == "spread"
    for x, y in ((1, 0), (1, 1), (0, 1)):
        result = emu("explain", "tiny", "--pe", f"{x},{y}", "--mesh", "4x4", "--max-context",
                     CONTEXT)
        assert result.exit_code == 0, result.output
        rows = {line.split("│")[1].strip(): line for line in
                section(result.stdout, "stores", "routes") if "│" in line}
        buffers = c.placement.maps[pe_class(c.plan, x, y)]
        assert set(buffers) <= set(rows)
        for name, buf in buffers.items():
            assert f" {buf.addr} " in rows[name], name
        assert "L0.k" in rows or "L0.v" in rows


def test_program_notes_name_the_pes_own_buffers():
    """Operand notes resolve addresses in the PE's class map (the spread layout's classes
    lay their buffers out differently): every named buffer contains the address."""
    mesh = load_mesh("small").with_mesh(8, 8)
    c = compile_decode(resolve_model("tiny"), mesh)
    assert c.plan.layout == "spread"
    for x, y in ((1, 1), (3, 0), (0, 5), (2, 6)):
        result = emu("explain", "tiny", "--pe", f"{x},{y}", "--mesh", "8x8")
        assert result.exit_code == 0, result.output
        buffers = c.placement.maps[pe_class(c.plan, x, y)]
        listing = section(result.stdout, "program")
        named = 0
        for line in listing:
            for match in re.finditer(r"\b(?:dst|a|b) (?:r\d+\+)?([A-Za-z][\w.]*)(?:\+(\d+))?",
                                     line.split(";", 1)[-1]):
                name, offset = match.group(1), int(match.group(2) or 0)
                if name in buffers:
                    named += 1
                    assert offset < buffers[name].words, line
                else:
                    assert not name[0].isupper() and "." not in name, line
        assert named > 10
    out = emu("explain", "tiny", "--pe", "1,1", "--mesh", "8x8").stdout
    assert re.search(r"vmul .*; dst QKV, a L0\.qkv, b XN", out)
