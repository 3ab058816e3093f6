"""Every kind of assembly error: `file:line:column: message` saying what was expected."""

import re

import pytest

from emulator.hw.errors import AsmError, EmuError
from isa.asm import assemble, assemble_file

HEADER = ".mesh 2x2\n.sram 64\n.params 2\n.region main 0,0 1,1\n"   # 4 lines

# (name, body appended after HEADER, line, column or None, message fragment)
CASES = [
    ("unknown opcode", "    vfoo [0], [1], 4\n", 5, 5, "unknown opcode 'vfoo'"),
    ("missing operand", "    vadd [0], [1], 4\n", 5, 21, "missing operand: vadd expects"),
    ("missing operand none", "    halt\n    send c1\n", 6, 12, "an SRAM descriptor"),
    ("extra operand", "    vmov [0], [1], 4, 5\n", 5, 23, "extra operand '5'"),
    ("trailing comma", "    vmov [0], [1], 4,\n", 5, 21, "unexpected ',' after the last"),
    ("extra operand nullary", "    halt now\n", 5, 10, "halt takes 0 operand"),
    ("bad register", "    movr r9, 1\n", 5, 10, "bad register 'r9'"),
    ("bad register in address", "    vmov [r8+1], [0], 1\n", 5, 11, "bad register 'r8'"),
    ("bad register form", "    vmov [r1*2], [0], 1\n", 5, 11, "register offset like r1+8"),
    ("bad descriptor", "    vmov [0, [1], 4\n", 5, 10, "expected an SRAM descriptor"),
    ("address without brackets", "    vmov 0, [1], 4\n", 5, 10, "like [A] or [A:S]"),
    ("empty operand", "    vmov [0],, 4\n", 5, 14, "expected an SRAM descriptor"),
    ("bad count", "    vmov [0], [1], four\n", 5, 20, "element count"),
    ("negative count", "    vmov [0], [1], -2\n", 5, 20, "negative element count -2"),
    ("negative address", "    vmov [-1], [0], 4\n", 5, 11, "negative address -1"),
    ("address beyond sram", "    vmov [64], [0], 1\n", 5, 10, "address 64 is beyond .sram 64"),
    ("descriptor beyond sram", "    vmov [0], [60:2], 4\n", 5, 15, "reaches address 66"),
    ("huge immediate", "    vmov [0], [99999999999], 1\n", 5, 16, "does not fit in 32 bits"),
    ("unknown color", "    send c24, [0], 1\n", 5, 10, "unknown color 'c24' (colors are c0..c23)"),
    ("bad color syntax", "    recv 3, [0], 1\n", 5, 10, "expected a color like c0"),
    ("undefined label", "    jmp nowhere\n", 5, 9, "undefined label 'nowhere'"),
    ("duplicate label", "top: nop\ntop: nop\n", 6, 1, "duplicate label 'top'"),
    ("bad label", "    jmp 12\n", 5, 9, "expected a label name"),
    ("unknown directive", ".regoin x 0,0 0,0\n", 5, 1, "unknown directive '.regoin'"),
    ("region outside mesh", ".region b 0,0 2,0\n", 5, 15, "outside the 2x2 mesh"),
    ("region overlap", ".region b 1,1 1,1\n", 5, 11, "overlaps region 'main' at PE (1,1)"),
    ("region odd corners", ".region c 0,0 0,0 1,1\n", 5, 19, "expected two corners"),
    ("region corners reversed", ".region b 1,1 0,0\n", 5, 15, "before the first"),
    ("region bad corner", ".region b 0.0 1,1\n", 5, 11, "expected a corner 'x,y'"),
    ("duplicate region", ".region main 0,0 0,0\n", 5, 9, "duplicate region name 'main'"),
    ("bad port in directive", ".route c0 rx=X tx=E\n", 5, 14, "bad port name 'X'"),
    ("bad port in instruction", "    route c0, W, E|Q\n", 5, 20, "bad port name 'Q'"),
    ("route missing tx", ".route c0 rx=W\n", 5, 15, "missing 'tx=PORTS'"),
    ("route bad field", ".route c0 rx=W out=E\n", 5, 16, "expected 'rx=PORTS'"),
    ("route unknown color", ".route c30 rx=W tx=E\n", 5, 8, "unknown color 'c30'"),
    ("param index in operand", "    vmov [%p2], [0], 1\n", 5, 11, "parameter p2 is not declared"),
    ("param index in directive", ".param p7 = 1\n", 5, 8, "(.params 2 allows p0..p1)"),
    ("param bad name", ".param q0 = 1\n", 5, 8, "expected a parameter name like p0"),
    ("bad expression power", ".param p0 = x ** 2\n", 5, 13, "bad expression"),
    ("bad expression name", ".param p0 = 2*foo\n", 5, 15, "unknown name 'foo'"),
    ("bad expression syntax", ".param p0 = 1 +\n", 5, None, "malformed expression"),
    ("bad expression float", ".param p0 = x / 2\n", 5, 13, "only + - * // %"),
    ("expression division by zero", ".param p0 = x // (y - y)\n", 5, 19, "division by zero"),
    ("expression overflow", ".param p0 = 2147483647 + x\n", 5, 13, "does not fit in 32 bits"),
    ("param without expression", ".param p0 =\n", 5, 12, "expected an integer expression"),
    ("param without equals", ".param p0 1\n", 5, 1, "expected '.param pK = EXPRESSION'"),
    ("bad float", "    vset [0], 4, 1.2.3\n", 5, 18, "expected a float immediate"),
    ("float overflow", "    vset [0], 4, 1e39\n", 5, 18, "outside the fp32 range"),
    ("data beyond sram", ".data 62 1 2 3\n", 5, 7, "goes beyond .sram 64"),
    ("data bad value", ".data 0 1 two\n", 5, 11, "expected a float immediate"),
    ("data bad address", ".data -1 1\n", 5, 7, "non-negative integer address"),
    ("header after region", ".sram 32\n", 5, 1, "'.sram' must come before the first .region"),
    ("bad line directive", ".line x\n", 5, 7, "expected a line number"),
]


def check(exc: AsmError, source: str, line: int, column, fragment: str):
    message = str(exc)
    match = re.match(rf"{re.escape(source)}:(\d+):(\d+): (.+)$", message)
    assert match, message
    assert int(match.group(1)) == line, message
    if column is not None:
        assert int(match.group(2)) == column, message
    assert fragment in match.group(3), message


@pytest.mark.parametrize("name, body, line, column, fragment", CASES,
                         ids=[case[0] for case in CASES])
def test_error_after_header(name, body, line, column, fragment):
    with pytest.raises(AsmError) as info:
        assemble(HEADER + body, source="prog.asm")
    check(info.value, "prog.asm", line, column, fragment)


@pytest.mark.parametrize("text, line, column, fragment, kwargs", [
    ("    nop\n", 1, 5, "instruction before any .region", {}),
    (".mesh 2x2\nstart: nop\n", 2, 1, "label 'start' before any .region", {}),
    (".mesh 2x2\n.region b 0,0 1,0 1,0 1,1\n", 2, 19, "region 'b' overlaps region 'b' at "
     "PE (1,0)", {}),
    (".mesh 4by4\n", 1, 7, "malformed .mesh '4by4': expected WxH", {}),
    (".mesh 0x3\n", 1, 7, "malformed .mesh '0x3'", {}),
    (".mesh\n", 1, 6, "malformed .mesh ''", {}),
    (".mesh 2x2\n.mesh 2x2\n", 2, 1, "duplicate '.mesh'", {}),
    (".region a 0,0 0,0\n", 1, 1, "no mesh size", {}),
    (".mesh 2x2\n.dtype fp8\n", 2, 8, "expected a dtype", {}),
    (".mesh 2x2\n.sram 20000\n", 2, 7, ".sram 20000 needs 80000 bytes (fp32) but a PE "
     "has 49152 bytes", {"sram_bytes": 49152}),
    (".mesh 2x2\n.dtype bf16\n.sram 24577\n", 3, 7, "needs 49154 bytes (bf16)",
     {"sram_bytes": 49152}),
    (".mesh 2x2\n.sram -4\n", 2, 7, "expected a non-negative integer after .sram", {}),
    (".mesh 2x2\n.params 100\n", 2, 9, "exceeds the limit", {}),
    (".mesh 2x2\n.route c0 rx=W tx=E\n", 2, 1, "needs 'at x0,y0 x1,y1'", {}),
    (".mesh 2x2\n.param p0 = 1\n", 2, 8, "parameter p0 is not declared (add '.params N')",
     {}),
    (".mesh 2x2\n.params 1\n.param p0 = lx\n", 3, 1, "needs 'at x0,y0 x1,y1'", {}),
    (".mesh 2x2\n.params 1\n.param p0 = lx at 0,0 1,1\n", 3, 13, "unknown name 'lx'", {}),
    (".mesh 2x2\n.data 0 1\n", 2, 1, ".data outside a region", {}),
    (".mesh 2x2\n.region a 0,0 0,0\n  send c3, [0], 1\n", 3, 8, "unknown color 'c3'",
     {"num_colors": 3}),
    (".mesh 2x2\n.region a 0,0 0,0\n  vmov [0], [0], 1\n", 3, 8, "beyond .sram 0", {}),
])
def test_error_without_header(text, line, column, fragment, kwargs):
    with pytest.raises(AsmError) as info:
        assemble(text, **kwargs)
    check(info.value, "<string>", line, column, fragment)


def test_errors_are_emu_errors_and_name_the_file(tmp_path):
    path = tmp_path / "bad.asm"
    path.write_text(HEADER + "    vmov [0], [1]\n")
    with pytest.raises(EmuError, match=rf"^{re.escape(str(path))}:5:"):
        assemble_file(path)
    with pytest.raises(AsmError, match="cannot read assembly file"):
        assemble_file(tmp_path / "missing.asm")


def test_tabs_count_as_one_column_and_comments_are_stripped():
    with pytest.raises(AsmError, match=r"^<string>:5:7: bad register 'r9'"):
        assemble(HEADER + "\tmovr r9, 1 # r9 is not a register\n")
    assemble(HEADER + "\tmovr r7, 1 ; fine; really\n")
