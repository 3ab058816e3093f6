"""`mark NAME` probes: 0-cycle local instructions recording, per mark id, the first and last
cycle any PE executed it and how often (RunResult.mark_first / mark_last / mark_count).

Checked: a closed form on a small program, on both engines and two parameter sets; the
engines agree on random programs (which contain marks); marks change no timing; the
assembler's id order (`.marks`, then first appearance) and the disassembler's round trip;
assembler and validate_program errors.
"""

import re
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from emulator.hw.errors import AsmError, ConfigError, MeshFault
from emulator.hw.mesh import load_mesh
from emulator.mesh.engine import run_numba
from isa.asm import assemble
from isa.disasm import disassemble, format_instruction
from isa.interpreter import run_reference
from isa.opcodes import MODE_REG, SLOT_DST, Op, encode_mode
from isa.validate import validate_program
from tests.strategies import random_programs
from tests.test_engine_agreement import assert_same, outcome

SMALL = load_mesh("small")
ODD = replace(SMALL, issue_overhead=2, hop_latency=3, ramp_latency=2, barrier_latency=5,
              simd_fp16=4, simd_bf16=2)
ENGINES = {"reference": run_reference, "numba": run_numba}


def marks_of(result) -> tuple[list, list, list]:
    """(mark_first, mark_last, mark_count) as lists, after checking their dtypes."""
    for name in ("mark_first", "mark_last", "mark_count"):
        assert getattr(result, name).dtype == np.int64, name
    return result.mark_first.tolist(), result.mark_last.tolist(), result.mark_count.tolist()


PIPELINE = """.mesh 3x1
.sram 64
.marks step.end L0.attn unused
.route c1 rx=W tx=E at 1,0 1,0
.region src 0,0 0,0
.route c1 rx=R tx=E
    mark L0.attn
    vset [0], 5, 1.0
    send c1, [0], 5
    mark L0.mlp
    halt
.region dst 2,0 2,0
.route c1 rx=W tx=R
    mark L0.attn
    recv c1, [8], 5
    mark L0.mlp
    movr r0, 3
loop:
    mark L1_loop
    djnz r0, loop
    mark step.end
    halt
"""


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("mesh", [SMALL, ODD], ids=["small", "odd"])
@pytest.mark.parametrize("functional", [True, False])
def test_closed_form(engine, mesh, functional):
    """PE (0,0): vset at 0, send at vs = o + ceil(5/w), done at vs + o + 5. PE (2,0): the
    recv posted at 0 ends at vs + o + 2r + 2h + 5 (docs/timing.md), then a 3-trip loop of
    mark + djnz (o + 1 each). The idle forwarder (1,0) runs nothing."""
    program = assemble(PIPELINE)
    assert program.mark_names == ["step.end", "L0.attn", "unused", "L0.mlp", "L1_loop"]
    o, h, r, w = (mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency,
                  mesh.simd_width("fp32"))
    result = ENGINES[engine](program, mesh.with_mesh(3, 1), functional=functional)
    vset = o + -(-5 // w)
    sent = vset + o + 5
    received = vset + o + 2 * r + 2 * h + 5
    loop = [received + o + 1 + i * (o + 1) for i in range(3)]     # after movr r0, 3
    end = loop[-1] + o + 1
    first, last, count = marks_of(result)
    assert first == [end, 0, -1, sent, loop[0]]
    assert last == [end, 0, -1, received, loop[-1]]
    assert count == [1, 2, 0, 2, 3]
    # probes cost nothing: no busy cycles, finish times as without them; they count as
    # executed instructions
    assert result.pe_finish.tolist() == [sent, 0, end]
    assert result.pe_busy.tolist() == [sent, 0, o + 5 + (o + 1) * 4]
    assert result.instructions == 5 + 12


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_no_marks_gives_empty_arrays(engine):
    program = assemble(".mesh 1x1\n.sram 4\n.region a 0,0 0,0\n    nop\n")
    assert program.mark_names == [] and program.num_marks == 0
    result = ENGINES[engine](program, SMALL.with_mesh(1, 1))
    assert marks_of(result) == ([], [], [])


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_mark_first_in_activation_after_barrier_and_at_code_end(engine):
    """A mark as the first instruction after a barrier and as the region's last
    instruction (the PE then runs off the end and halts)."""
    program = assemble(""".mesh 2x1
.sram 8
.region a 0,0 0,0
    vset [0], 7, 2.0
    barrier
    mark after
.region b 1,0 1,0
    barrier
    mark after
    mark b.end
""")
    o, b = SMALL.issue_overhead, SMALL.barrier_latency
    leave = o + -(-7 // SMALL.simd_width("fp32")) + b + o
    result = ENGINES[engine](program, SMALL.with_mesh(2, 1))
    assert marks_of(result) == ([leave, leave], [leave, leave], [2, 1])
    assert result.pe_finish.tolist() == [leave, leave]


def strip_marks(text: str) -> str:
    return "\n".join(line for line in text.splitlines()
                     if not line.strip().startswith(("mark ", ".marks"))) + "\n"


@given(random_programs())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_engines_agree_on_marks_in_random_programs(generated):
    """Same marks on both engines (and the same everything else); removing the marks
    changes no cycle count, busy time, link load or SRAM bit."""
    program = assemble(generated.text, sram_bytes=SMALL.sram_bytes)
    bare = assemble(strip_marks(generated.text), sram_bytes=SMALL.sram_bytes)
    for functional in (True, False):
        ref = outcome(run_reference, program, generated.sram, functional)
        fast = outcome(run_numba, program, generated.sram, functional)
        assert not isinstance(ref, str), ref
        assert_same(ref, fast)
        assert marks_of(ref) == marks_of(fast)
        first, last, count = marks_of(ref)
        assert len(first) == program.num_marks
        for f, t, c in zip(first, last, count, strict=True):
            assert (f == t == -1) if c == 0 else (0 <= f <= t <= ref.cycles)
        without = outcome(run_numba, bare, generated.sram, functional)
        assert_same(without, replace(ref, instructions=ref.instructions - sum(count)))


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_cycle_limit_fault_is_unchanged_by_marks(engine):
    """A mark at the cycle limit is fine (it costs 0); the next instruction faults."""
    text = ".mesh 1x1\n.sram 4\n.region a 0,0 0,0\n    nop\n    nop\n    mark m\n    nop\n"
    program = assemble(text)
    o = SMALL.issue_overhead
    result = ENGINES[engine](program, SMALL.with_mesh(1, 1), max_cycles=3 * (o + 1))
    assert marks_of(result) == ([2 * (o + 1)], [2 * (o + 1)], [1])
    with pytest.raises(MeshFault, match="cycle limit"):
        ENGINES[engine](program, SMALL.with_mesh(1, 1), max_cycles=2 * (o + 1))


# --- assembler and disassembler ----------------------------------------------------------


HEADER = ".mesh 2x1\n.sram 8\n"


def test_ids_follow_marks_directive_then_first_appearance():
    program = assemble(HEADER + ".marks z.last a-1\n.region a 0,0 0,0\n    mark b_2\n"
                       "    mark a-1\n    mark b_2\n.region b 1,0 1,0\n    mark Q\n"
                       "    mark z.last\n")
    assert program.mark_names == ["z.last", "a-1", "b_2", "Q"]
    assert program.code["op"].tolist() == [Op.MARK] * 5
    assert program.code["a"][:, SLOT_DST].tolist() == [2, 1, 2, 3, 0]
    assert (program.code["modes"] == 0).all()
    assert [format_instruction(ins, program.mark_names) for ins in program.code] == [
        "mark b_2", "mark a-1", "mark b_2", "mark Q", "mark z.last"]
    assert format_instruction(program.code[0]) == "mark 2"     # no names: the bare id


def test_round_trip_keeps_ids_and_unused_names():
    program = assemble(HEADER + ".marks late early unused\n.region a 0,0 1,0\n"
                       "    mark early   ; attention starts\n    vset [0], 2, 1.0\n"
                       "top: mark L0.attn\n    djnz r1, top\n    mark late\n")
    text = disassemble(program)
    assert ".marks late early unused L0.attn\n" in text
    again = assemble(text)
    assert again.equals(program) and again.mark_names == program.mark_names
    assert again.region_comments == program.region_comments
    assert disassemble(again) == text
    assert "mark early  ; attention starts" in text


def test_equals_compares_mark_names():
    a = assemble(HEADER + ".marks x y\n.region a 0,0 0,0\n    mark x\n")
    b = assemble(HEADER + ".marks x z\n.region a 0,0 0,0\n    mark x\n")
    assert not a.equals(b)
    b.mark_names = ["x", "y"]
    assert a.equals(b)


@given(random_programs())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_with_marks_round_trip(generated):
    program = assemble(generated.text, sram_bytes=48 * 1024)
    text = disassemble(program)
    again = assemble(text)
    assert again.equals(program)
    assert disassemble(again) == text


def test_disassembler_rejects_unwritable_names():
    program = assemble(HEADER + ".region a 0,0 0,0\n    mark ok\n")
    for names in (["has space"], ["r1"], ["9lives"], ["ok", "ok"]):
        program.mark_names = names
        with pytest.raises(ValueError, match="mark name"):
            disassemble(program)


@pytest.mark.parametrize("line, message", [
    ("    mark\n", "5:9: missing operand: mark expects a mark name like L0.attn as operand 1"),
    ("    mark 3\n", "5:10: expected a mark name like L0.attn (a letter or '_', then "
                     "letters, digits, '.', '_', '-'), got '3'"),
    ("    mark L0/attn\n", "5:10: expected a mark name like L0.attn"),
    ("    mark r2\n", "got 'r2' (mark ids are immediates, not registers or parameters)"),
    ("    mark r2+1\n", "got 'r2+1' (mark ids are immediates"),
    ("    mark %p0\n", "got '%p0' (mark ids are immediates"),
    ("    mark a, b\n", "5:13: extra operand 'b': mark takes 1 operand"),
    ("    mark a b\n", "got 'a b'"),
])
def test_assembler_errors(line, message):
    with pytest.raises(AsmError, match=re.escape(message)):
        assemble(HEADER + ".params 1\n.region a 0,0 0,0\n" + line)


@pytest.mark.parametrize("text, message", [
    (".marks\n", "1:7: expected one or more mark names after .marks"),
    (".marks a b a\n", "1:12: duplicate mark name 'a' in .marks"),
    (".marks a r0\n", "1:10: expected a mark name"),
    (".marks a\n.marks b\n", "2:1: duplicate '.marks' directive"),
    (".region a 0,0 0,0\n.marks a\n", "2:1: '.marks' must come before the first .region"),
])
def test_marks_directive_errors(text, message):
    with pytest.raises(AsmError, match=re.escape(message)):
        assemble(text, mesh=(1, 1))


# --- validate_program --------------------------------------------------------------------


def test_validate_rejects_bad_mark_ids_and_modes():
    mesh = SMALL.with_mesh(2, 1)
    program = assemble(HEADER + ".marks a b\n.region a 0,0 0,0\n    nop\n    mark b\n")
    validate_program(program, mesh)
    program.code["a"][1, SLOT_DST] = 2
    with pytest.raises(ConfigError, match=r"instruction 1 \(line 6\) records mark id 2 but "
                                          r"the program has 2 mark\(s\) \(ids 0..1\)"):
        validate_program(program, mesh)
    program.code["a"][1, SLOT_DST] = -1
    with pytest.raises(ConfigError, match="records mark id -1"):
        validate_program(program, mesh)
    program.mark_names = []
    program.code["a"][1, SLOT_DST] = 0
    with pytest.raises(ConfigError, match="records mark id 0 but the program has 0 mark"):
        validate_program(program, mesh)
    program.mark_names = ["a"]
    program.code["modes"][1] = encode_mode(SLOT_DST, MODE_REG, 3)
    for engine in ENGINES.values():
        with pytest.raises(ConfigError, match=r"instruction 1 \(line 6\) is a mark whose "
                                              r"id is not an immediate"):
            engine(program, mesh)
