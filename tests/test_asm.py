"""Assembler and disassembler: encodings, directives, expressions and round trips."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.hw.errors import AsmError
from isa.asm import MNEMONICS, SIGNATURES, assemble, assemble_file
from isa.disasm import disassemble, format_instruction
from isa.expr import ExprError, evaluate
from isa.opcodes import (
    MODE_IMM,
    MODE_PARAM,
    MODE_REG,
    PORT_E,
    PORT_N,
    PORT_R,
    PORT_S,
    PORT_W,
    SLOT_COLOR,
    SLOT_DST,
    SLOT_DST_STRIDE,
    SLOT_N,
    SLOT_SRC0,
    SLOT_SRC0_STRIDE,
    SLOT_SRC1,
    SLOT_SRC1_STRIDE,
    Op,
    slot_mode,
)
from tests.strategies import random_programs

DOC_EXAMPLE = """\
; comments start with ';' or '#'
.mesh 4x1                      ; mesh size (the CLI's --mesh overrides)
.dtype fp32                    ; fp32 | fp16 | bf16
.sram 64                       ; SRAM elements used per PE
.params 1                      ; number of per-PE parameters
.region NAME 0,0 3,0
.route c0 rx=R tx=E            ; router entry for the region's PEs ...
.route c0 rx=W tx=R at 3,0 3,0 ; ... or for another rectangle
.param p0 = 4*x + y            ; per-PE value: integer expression of x, y, lx, ly, w, h, W, H
.data 0 1.0 2.0 3.0            ; initial SRAM at address 0 for every PE of the region
loop:                          ; label (region-local)
    vadd [0], [4:2], [r1+8], 4
    djnz r0, loop
    halt
"""

HEADER = ".mesh 2x2\n.sram 64\n.params 2\n.region main 0,0 1,1\n"


def one(text: str):
    """Assemble HEADER + one instruction line and return its row."""
    program = assemble(HEADER + text)
    assert len(program.code) == 1
    return program.code[0]


def test_doc_example_encoding():
    program = assemble(DOC_EXAMPLE, source="doc.asm")
    assert (program.width, program.height, program.dtype, program.sram_words) == (4, 1,
                                                                                   "fp32", 64)
    assert program.region_names == ["NAME"] and list(program.pe_region) == [0, 0, 0, 0]
    vadd, djnz, halt = program.code
    assert vadd["op"] == Op.VADD and vadd["line"] == 12
    assert list(vadd["a"]) == [0, 4, 8, 4, 1, 2, 1, 0]
    assert slot_mode(vadd["modes"], SLOT_SRC1) == (MODE_REG, 1)
    assert slot_mode(vadd["modes"], SLOT_SRC0) == (MODE_IMM, 0)
    assert djnz["op"] == Op.DJNZ and djnz["a"][SLOT_DST] == 0 and djnz["a"][SLOT_SRC0] == 0
    assert halt["op"] == Op.HALT
    assert list(program.params[:, 0]) == [0, 4, 8, 12]
    assert list(program.route_rx[:, 0]) == [PORT_R] * 3 + [PORT_W]
    assert list(program.route_tx[:, 0]) == [PORT_E] * 3 + [PORT_R]
    assert program.initial_sram()[:, :4].tolist() == [[1, 2, 3, 0]] * 4
    assert program.source == "doc.asm"


def test_every_mnemonic_has_a_signature_and_assembles():
    samples = {"dst": "[1]", "rdst": "[1]", "src0": "[2:2]", "src1": "[%p1]", "n": "3",
               "color": "c2", "imm": "1.5", "reg": "r3", "value": "r2-4", "label": "here",
               "rx": "W", "tx": "E|R", "k": "r5", "mark": "m0", "gdst": "[r1+4]",
               "batch": "%p0", "reps": "2", "cols": "%p0", "odst": "r1+2", "osrc0": "0",
               "osrc1": "-3", "idst": "%p1", "isrc0": "r4", "isrc1": "5"}
    assert set(MNEMONICS.values()) == set(Op)
    for name, op in MNEMONICS.items():
        operands = ", ".join(samples[k] for k in SIGNATURES[op])
        row = one(f"here: {name} {operands}")
        assert row["op"] == op
        assert (format_instruction(row, mark_names=["m0"])
                == f"{name} {operands}".replace("here", "L0").rstrip())


def test_operand_forms():
    row = one("vfma [r2+8:0], [%p1:3], [5:r4], r7")
    assert slot_mode(row["modes"], SLOT_DST) == (MODE_REG, 2) and row["a"][SLOT_DST] == 8
    assert row["a"][SLOT_DST_STRIDE] == 0
    assert slot_mode(row["modes"], SLOT_SRC0) == (MODE_PARAM, 0) and row["a"][SLOT_SRC0] == 1
    assert row["a"][SLOT_SRC0_STRIDE] == 3
    assert slot_mode(row["modes"], SLOT_SRC1_STRIDE) == (MODE_REG, 4)
    assert slot_mode(row["modes"], SLOT_N) == (MODE_REG, 7) and row["a"][SLOT_N] == 0
    assert one("vmov [r1-3], [0x10], 2")["a"][SLOT_DST] == -3
    assert one("vmov [r1-3], [0x10], 2")["a"][SLOT_SRC0] == 16


def test_reduction_destination_defaults_to_stride_zero():
    assert one("rsum [60], [0], 8")["a"][SLOT_DST_STRIDE] == 0
    assert one("rdot [60:1], [0], [8], 4")["a"][SLOT_DST_STRIDE] == 1
    assert one("vmov [10], [0], 8")["a"][SLOT_DST_STRIDE] == 1


def test_colors_ports_and_registers():
    send = one("send c23, [0], 4")
    assert send["a"][SLOT_COLOR] == 23 and send["a"][SLOT_SRC0_STRIDE] == 1
    recv = one("recvadd %p1, [4:2], %p0")
    assert slot_mode(recv["modes"], SLOT_COLOR) == (MODE_PARAM, 0) and recv["a"][SLOT_COLOR] == 1
    route = one("route c1, rx=N|S, tx=-")
    assert route["a"][SLOT_SRC0] == PORT_N | PORT_S and route["a"][SLOT_SRC1] == 0
    assert one("route c1, W, E|R|N")["a"][SLOT_SRC1] == PORT_E | PORT_R | PORT_N
    movr = one("movr r7, %p1")
    assert movr["a"][SLOT_DST] == 7 and slot_mode(movr["modes"], SLOT_SRC0)[0] == MODE_PARAM
    assert one("addr r0, -5")["a"][SLOT_SRC0] == -5


@pytest.mark.parametrize("text, value", [("1.5", 1.5), ("-2", -2.0), ("1e-3", 1e-3),
                                         ("inf", np.inf), ("-inf", -np.inf), (".25", 0.25),
                                         ("0.1", np.float32(0.1))])
def test_float_immediates(text, value):
    assert one(f"vset [0], 4, {text}")["imm"] == np.float32(value)


def test_negative_zero_and_nan_immediates():
    assert np.signbit(one("vset [0], 1, -0.0")["imm"])
    assert np.isnan(one("vaddi [0], [0], 1, nan")["imm"])


def test_labels_are_region_local_and_forward():
    program = assemble(""".mesh 2x1
.sram 4
.region a 0,0 0,0
    jmp end
top: nop
    djnz r1, top
end:
.region b 1,0 1,0
top:  end: jmp top   ; two labels on one line
""")
    a = program.region_code(0)
    assert a[0]["a"][SLOT_SRC0] == 3 and a[2]["a"][SLOT_SRC0] == 1
    assert program.region_code(1)[0]["a"][SLOT_SRC0] == 0
    assert program.region_comments == {1: {0: "two labels on one line"}}


def test_param_expressions_vectorised():
    program = assemble(""".mesh 5x4
.params 4
.region r 1,1 3,2
.param p0 = x + 10*y
.param p1 = lx*100 + ly - w*h
.param p2 = (W - x) // 2 % 3 - H
.param p3 = -7 at 2,2 3,2
.param p0 = 99 at 0,0 0,0
""")
    grid = program.params.reshape(4, 5, 4)
    assert grid[1:3, 1:4, 0].tolist() == [[11, 12, 13], [21, 22, 23]]
    assert grid[1:3, 1:4, 1].tolist() == [[-6, 94, 194], [-5, 95, 195]]
    assert grid[1, 1:4, 2].tolist() == [(5 - x) // 2 % 3 - 4 for x in (1, 2, 3)]
    assert grid[:, :, 3][grid[:, :, 3] != 0].tolist() == [-7, -7]
    assert grid[0, 0, 0] == 99 and grid[0, 1, 0] == 0


@given(st.integers(-50, 50), st.integers(1, 9), st.integers(-9, 9), st.sampled_from("+-*"))
@settings(max_examples=60, deadline=None)
def test_expression_evaluator_matches_python(a, b, c, op):
    text = f"(x {op} {a}) // {b} + y % {b} * {c} - (-x)"
    xs, ys = np.meshgrid(np.arange(-3, 4), np.arange(0, 5))
    got = evaluate(text, {"x": xs, "y": ys}, xs.shape)
    want = [[eval(text, {"x": int(x), "y": int(y)}) for x in row_x]
            for row_x, y in zip(xs, ys[:, 0], strict=True)]
    assert got.tolist() == want


@pytest.mark.parametrize("text", ["__import__('os')", "x ** 2", "x / 2", "[1]", "x if y else 1",
                                  "1.5", "z", "x // 0", "f(x)", "x < y", ""])
def test_expression_evaluator_rejects(text):
    with pytest.raises(ExprError):
        evaluate(text, {"x": np.arange(3), "y": np.arange(3)}, (3,))


def test_routes_and_idle_pes():
    program = assemble(""".mesh 3x1
.route c5 rx=W tx=E at 1,0 1,0   ; an idle forwarder
.region src 0,0 0,0
.route c5 rx=R tx=E
.region dst 2,0 2,0
.route c5 rx=W tx=R
.route c5 rx=- tx=- at 0,0 0,0
""", num_colors=8)
    assert program.num_colors == 8
    assert list(program.pe_region) == [0, -1, 1]
    assert list(program.route_rx[:, 5]) == [0, PORT_W, PORT_W]
    assert list(program.route_tx[:, 5]) == [0, PORT_E, PORT_R]


def test_mesh_override_sram_default_and_line_directive():
    text = ".mesh 2x2\n.dtype fp16\n.region a 0,0 0,0\n.line 100\n  nop\n  nop\n"
    program = assemble(text, mesh=(3, 5), sram_bytes=1024)
    assert (program.width, program.height, program.sram_words) == (3, 5, 512)
    assert list(program.code["line"]) == [100, 101]
    assert assemble(text).sram_words == 0


def test_empty_and_data_only_programs():
    program = assemble(".mesh 1x1\n")
    assert len(program.code) == 0 and list(program.pe_region) == [-1]
    program = assemble(".mesh 2x1\n.sram 8\n.region a 0,0 1,0\n.data 6 1 2\n.data 0 -1\n")
    assert program.initial_sram().tolist() == [[-1, 0, 0, 0, 0, 0, 1, 2]] * 2


def test_assemble_file(tmp_path):
    path = tmp_path / "doc.asm"
    path.write_text(DOC_EXAMPLE)
    assert assemble_file(path).equals(assemble(DOC_EXAMPLE))
    assert assemble_file(path).source == str(path)


def test_disassembly_round_trip_with_per_pe_tables():
    text = """.mesh 5x3
.sram 32
.params 3
.route c3 rx=N tx=S at 4,0 4,2
.param p2 = 5 at 4,1 4,1
.region block 0,0 3,2
.route c1 rx=R tx=E|S
.route c1 rx=W tx=R at 2,1 3,2
.route c7 rx=N tx=R at 0,2 0,2
.param p0 = 3 + 2*lx - ly
.param p1 = (x*y) % 4
.param p2 = 7 at 1,1 1,1
.data 4 0.1 -2.5 1e-7 inf
  loop: vsigmoid [%p0:2], [r3-2], %p1   ; squash
    send %p2, [0:0], 2
    djnz r2, loop
    jmp out
out:
"""
    program = assemble(text)
    again = assemble(disassemble(program))
    assert again.equals(program)
    assert again.region_comments == program.region_comments
    assert disassemble(again) == disassemble(program)


def test_regions_of_several_rectangles():
    program = assemble(""".mesh 4x3
.sram 8
.params 1
.region ring 0,0 3,0 0,1 0,2 3,1 3,2
.route c2 rx=R tx=E
.param p0 = 10*lx + ly + w
    nop
.region hole 1,1 2,2
""")
    grid = program.pe_region.reshape(3, 4)
    assert grid.tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]]
    params = program.params[:, 0].reshape(3, 4)
    assert params[0].tolist() == [4, 14, 24, 34] and params[2, 3] == 36
    assert (program.route_tx[:, 2].reshape(3, 4)[grid == 0] != 0).all()
    assert assemble(disassemble(program)).equals(program)


def test_disassembly_of_scattered_regions():
    program = assemble(".mesh 4x4\n.sram 4\n.params 2\n.region even 0,0 0,0\n  nop\n"
                       ".region odd 1,0 1,0\n  halt\n")
    program.pe_region[:] = np.arange(16) % 2          # stripes: not rectangles
    program = program.with_params(np.stack([3 * (np.arange(16) % 4) - 2 * (np.arange(16) // 4)
                                            + 5, np.arange(16) ** 2], axis=1))
    program.route_tx[::3, 4] = 7
    text = disassemble(program)
    assert ".param p0 = 5 + 3*x - 2*y" in text
    assert assemble(text).equals(program)


def test_disassembler_rejects_empty_region():
    program = assemble(".mesh 2x1\n.region a 0,0 0,0\n.region b 1,0 1,0\n")
    program.pe_region[1] = 0
    with pytest.raises(ValueError, match="region 'b' has no PEs"):
        disassemble(program)


@given(random_programs())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_round_trip(generated):
    program = assemble(generated.text, sram_bytes=48 * 1024)
    assert (program.width, program.height) == (generated.width, generated.height)
    assert generated.sram.shape == (program.num_pes, program.sram_words)
    text = disassemble(program)
    again = assemble(text)
    assert again.equals(program)
    assert disassemble(again) == text


def test_disassembly_of_compiler_style_programs():
    """Line fields not matching any layout, multi-line comments, unusual region names."""
    program = assemble(".mesh 3x1\n.sram 8\n.region layer0/attn 0,0 2,0\n  nop\n  vmov [0], "
                       "[4], 4\n  halt\n")
    program.code["line"] = [0, 0, -1]
    program.region_comments = {0: {1: "copy\nthe block"}}
    text = disassemble(program)
    again = assemble(text)
    assert again.equals(program)
    assert again.region_comments == {0: {1: "copy the block"}}


def test_compiled_decode_program_round_trips():
    """The compiler's decode program (scattered regions, per-PE tables, line 0 everywhere)
    survives disassembly."""
    from compiler.decode import compile_decode
    from compiler.frontend import load_config
    from emulator.hw.mesh import load_mesh

    root = Path(__file__).resolve().parent.parent
    spec = load_config(root / "emulator" / "models" / "tiny.json")
    program = compile_decode(spec, load_mesh("small")).decode.program
    again = assemble(disassemble(program), num_colors=program.num_colors)
    assert again.equals(program)


def test_vgemv_encoding_round_trip_and_static_checks():
    row = one("vgemv [r1+4:2], [%p0:12], [3:0], 5, %p1")
    assert row["op"] == Op.VGEMV
    assert row["a"][SLOT_SRC0_STRIDE] == 12 and row["a"][SLOT_SRC1_STRIDE] == 0
    assert row["a"][SLOT_N] == 5
    assert slot_mode(row["modes"], SLOT_COLOR) == (MODE_PARAM, 0) and row["a"][SLOT_COLOR] == 1
    for text in ("vgemv [r1+4:2], [%p0:12], [3:0], 5, %p1", "vgemv [0], [8:4], [40], r2, 3",
                 "vgemv [3:-1], [8:-4], [40:2], 4, r3-1", "vgemv [60], [63], [0], 0, 9"):
        program = assemble(HEADER + "    " + text + "\n")
        assert format_instruction(program.code[0]) == text
        assert assemble(disassemble(program)).equals(program)
    with pytest.raises(AsmError, match="negative column count -2"):
        assemble(HEADER + "    vgemv [0], [8:4], [40], 4, -2\n")
    with pytest.raises(AsmError, match=r"\[8:20\] with 3 columns of 4 elements reaches "
                                       r"address 51, outside .sram 50"):
        assemble(HEADER.replace("64", "50") + "    vgemv [0], [8:20], [40], 4, 3\n")
    with pytest.raises(AsmError, match="reaches address 66"):
        assemble(HEADER + "    vgemv [0], [8], [40:13], 4, 3\n")
    assemble(HEADER + "    vgemv [0], [800:20], [900], 4, 0\n")    # k = 0 touches nothing
