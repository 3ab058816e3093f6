"""The assembler: mesh assembly text (docs/isa.md, "Assembly files") -> `Program`.

One pass over the lines. Header directives (.mesh .dtype .sram .params .marks) come first; the
first `.region`, `.route`, `.param`, `.data` or instruction fixes the mesh and allocates the
per-PE tables. Each `.region` starts a new code block; its labels are resolved when the
next region starts or the file ends. Every mistake raises `AsmError` with
`file:line:column: message` saying what was expected.

Operand encoding (isa/opcodes.py): SRAM descriptors fill an address slot and its stride
slot; integer operands are an immediate, a parameter (`%pK`) or a register plus offset
(`rK`, `rK+N`, `rK-N`). A reduction's destination is one element, so `[A]` there encodes
stride 0.

`mark NAME` probes are encoded with their mark id (an immediate) in SLOT_DST; ids follow
the order of the `.marks NAME ...` header directive, then first appearance in the file.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emulator.hw.dtypes import BYTES as DTYPE_BYTES
from emulator.hw.dtypes import NAMES as DTYPES
from emulator.hw.errors import AsmError
from emulator.limits import check_memory
from isa.expr import INT32_MAX, INT32_MIN, ExprError, eval_expr, parse_expr
from isa.opcodes import (
    INSTR_DTYPE,
    MODE_IMM,
    MODE_PARAM,
    MODE_REG,
    NUM_REGS,
    NUM_SLOTS,
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
    encode_mode,
)
from isa.program import Program, factor_params
from isa.validate import program_bytes_per_pe

PORT_BITS = {"N": PORT_N, "E": PORT_E, "S": PORT_S, "W": PORT_W, "R": PORT_R}
MAX_PARAMS = 64

# Operand kinds: ("dst"|"src0"|"src1") descriptors, "rdst" reduction destination, "n",
# "color", "imm", "reg", "value", "label", "rx", "tx", "k" (vgemv column count), "mark"
# (a mark name).
_VEC3 = ("dst", "src0", "src1", "n")
SIGNATURES: dict[Op, tuple[str, ...]] = {
    Op.VMOV: ("dst", "src0", "n"),
    **{op: _VEC3 for op in (Op.VADD, Op.VSUB, Op.VMUL, Op.VMAX, Op.VFMA)},
    Op.VSCALE: ("dst", "src0", "n", "imm"),
    Op.VADDI: ("dst", "src0", "n", "imm"),
    Op.VSET: ("dst", "n", "imm"),
    **{op: ("dst", "src0", "n") for op in (Op.VEXP, Op.VRSQRT, Op.VRECIP, Op.VSIGMOID)},
    Op.RSUM: ("rdst", "src0", "n"),
    Op.RMAX: ("rdst", "src0", "n"),
    Op.RDOT: ("rdst", "src0", "src1", "n"),
    Op.SEND: ("color", "src0", "n"),
    Op.RECV: ("color", "dst", "n"),
    Op.RECVADD: ("color", "dst", "n"),
    Op.ROUTE: ("color", "rx", "tx"),
    Op.MOVR: ("reg", "value"),
    Op.ADDR: ("reg", "value"),
    Op.DJNZ: ("reg", "label"),
    Op.JMP: ("label",),
    Op.BARRIER: (),
    Op.HALT: (),
    Op.NOP: (),
    Op.VGEMV: ("dst", "src0", "src1", "n", "k"),
    Op.VGEMM: ("gdst", "src0", "src1", "n", "k", "batch"),
    Op.MARK: ("mark",),
    Op.RARGMAX: ("rdst", "src0", "n"),
    Op.LDR: ("reg", "src0"),
    Op.REP: ("reps", "cols", "odst", "osrc0", "osrc1", "idst", "isrc0", "isrc1"),
}
# `rep` operand kind -> (slot, what it is): the counts R (outer) and S (inner), then the
# body's dst / src0 / src1 address steps per outer copy and per inner copy.
REP_OPERANDS = {
    "reps": (SLOT_N, "repeat count"), "cols": (SLOT_COLOR, "repeat count"),
    "odst": (SLOT_DST, "address step"), "osrc0": (SLOT_SRC0, "address step"),
    "osrc1": (SLOT_SRC1, "address step"), "idst": (SLOT_DST_STRIDE, "address step"),
    "isrc0": (SLOT_SRC0_STRIDE, "address step"), "isrc1": (SLOT_SRC1_STRIDE, "address step"),
}
MNEMONICS = {op.name.lower(): op for op in SIGNATURES}
OPERAND_HELP = {
    "dst": "an SRAM descriptor like [A] or [A:S]",
    "rdst": "an SRAM descriptor like [A]",
    "src0": "an SRAM descriptor like [A] or [A:S]",
    "src1": "an SRAM descriptor like [A] or [A:S]",
    "n": "an element count (integer, %pK or rK)",
    "k": "a column count (integer, %pK or rK)",
    "gdst": "an SRAM address like [A] (no stride: rows are contiguous)",
    "batch": "a batch count (integer, %pK or rK)",
    "color": "a color like c3 or %pK",
    "imm": "a float immediate like 1.5",
    "reg": "a register r0..r7",
    "value": "an integer, %pK, rK or rK+N",
    "label": "a label",
    "rx": "a port set like W or E|R or -",
    "tx": "a port set like W or E|R or -",
    "mark": "a mark name like L0.attn",
    **{kind: f"a{'n' if what[0] == 'a' else ''} {what} (integer, %pK, rK or rK+N)"
       for kind, (_, what) in REP_OPERANDS.items()},
}
# Descriptor kind -> (address slot, stride slot, default stride).
DESCRIPTOR_SLOTS = {
    "dst": (SLOT_DST, SLOT_DST_STRIDE, 1),
    "rdst": (SLOT_DST, SLOT_DST_STRIDE, 0),
    "src0": (SLOT_SRC0, SLOT_SRC0_STRIDE, 1),
    "src1": (SLOT_SRC1, SLOT_SRC1_STRIDE, 1),
}
HEADER_DIRECTIVES = (".mesh", ".dtype", ".sram", ".params", ".marks")
BODY_DIRECTIVES = (".region", ".route", ".param", ".data", ".line")

_INT = r"[+-]?(?:0[xX][0-9a-fA-F]+|\d+)"
_RE_INT = re.compile(_INT + r"$")
_RE_PARAM = re.compile(r"%p(\d+)$")
_RE_REG = re.compile(r"r(\d+)(?:\s*([+-])\s*(0[xX][0-9a-fA-F]+|\d+))?$")
_RE_COLOR = re.compile(r"c(\d+)$")
_RE_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|nan)$", re.I)
_RE_LABEL = re.compile(r"[A-Za-z_][\w.]*$")
_RE_NAME = re.compile(r"[A-Za-z_][^\s,]*$")
_RE_MARK = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*$")   # a mark name, e.g. L0.attn
MARK_NAME_HELP = "a mark name like L0.attn (a letter or '_', then letters, digits, '.', '_', '-')"


def is_mark_name(text: str) -> bool:
    """True when `text` can be a mark name (and does not read as a register operand)."""
    return bool(_RE_MARK.match(text)) and not _RE_REG.match(text)
_RE_LABEL_PREFIX = re.compile(r"\s*([A-Za-z_][\w.]*)\s*:")
_RE_MESH = re.compile(r"(\d+)\s*[xX]\s*(\d+)$")
_RE_COORD = re.compile(r"(\d+)\s*,\s*(\d+)$")


@dataclass
class Operand:
    """An integer operand: addressing kind, slot value and register index."""

    kind: int
    value: int
    reg: int = 0


@dataclass
class Region:
    """A region being assembled: rectangles, instruction rows, labels and fixups."""

    name: str
    rects: list                                      # (x0, y0, x1, y1), first = origin
    rows: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    fixups: list = field(default_factory=list)      # (row index, label, line, column)
    comments: dict = field(default_factory=dict)
    data: list = field(default_factory=list)        # (addr, float32 values)


class Line:
    """One source line being parsed; knows how to report an error at a column."""

    def __init__(self, source: str, number: int, text: str):
        self.source, self.number, self.text = source, number, text

    def error(self, column: int, message: str) -> AsmError:
        """An AsmError at 0-based `column` of this line."""
        return AsmError(f"{self.source}:{self.number}:{column + 1}: {message}")


def split_fields(text: str, start: int, sep: str | None) -> list[tuple[str, int]]:
    """Split text[start:] on `sep` (None = whitespace); return (field, column) pairs."""
    fields = []
    if sep is None:
        for match in re.finditer(r"\S+", text[start:]):
            fields.append((match.group(), start + match.start()))
        return fields
    pos = start
    for piece in text[start:].split(sep):
        stripped = piece.strip()
        offset = len(piece) - len(piece.lstrip()) if stripped else 0
        fields.append((stripped, pos + offset))
        pos += len(piece) + len(sep)
    return fields


def strip_comment(text: str) -> tuple[str, str | None]:
    """Split a line into code and the comment after the first ';' or '#'."""
    match = re.search(r"[;#]", text)
    if not match:
        return text.rstrip(), None
    return text[:match.start()].rstrip(), text[match.start() + 1:].strip()


class Assembler:
    """State of one assembly: header values, per-PE tables and the regions so far."""

    def __init__(self, source: str, mesh, num_colors: int, sram_bytes: int | None):
        self.source, self.num_colors, self.sram_bytes = source, num_colors, sram_bytes
        self.mesh_override = tuple(mesh) if mesh is not None else None
        self.mesh_size = None
        self.dtype = "fp32"
        self.sram_words = None
        self.num_params = 0
        self.seen_headers: set[str] = set()
        self.frozen = False
        self.regions: list[Region] = []
        self.line_offset = 0
        self.mark_names: list[str] = []
        self.mark_ids: dict[str, int] = {}
        self.pe_region = self.params = self.route_rx = self.route_tx = None

    # --- driver ----------------------------------------------------------------------------
    def run(self, text: str) -> Program:
        """Assemble all lines and build the Program."""
        for number, raw in enumerate(text.splitlines(), start=1):
            self.parse_line(Line(self.source, number, raw))
        if self.regions:
            self.finish_region()
        if not self.frozen:
            self.freeze(Line(self.source, max(len(text.splitlines()), 1), ""), 0)
        return self.build()

    def parse_line(self, line: Line):
        """Parse one line: labels, then a directive or an instruction."""
        code, comment = strip_comment(line.text)
        pos = 0
        while True:
            match = _RE_LABEL_PREFIX.match(code, pos)
            if not match or code[match.end():match.end() + 1] == ":":
                break
            self.label(line, match.group(1), match.start(1))
            pos = match.end()
        rest = code[pos:]
        if not rest.strip():
            return
        col = pos + len(rest) - len(rest.lstrip())
        if rest.lstrip().startswith("."):
            self.directive(line, col)
        else:
            self.instruction(line, col, comment)

    # --- header and tables -------------------------------------------------------------------
    def freeze(self, line: Line, col: int):
        """Fix the mesh size and allocate the per-PE tables (first body statement)."""
        if self.frozen:
            return
        size = self.mesh_override or self.mesh_size
        if size is None:
            raise line.error(col, "no mesh size: add '.mesh WxH' before this line "
                                  "(or pass a mesh)")
        if self.sram_words is None:
            self.sram_words = (self.sram_bytes // DTYPE_BYTES[self.dtype]
                               if self.sram_bytes else 0)
        width, height = size
        n = width * height
        check_memory(n * program_bytes_per_pe(self.num_params, self.num_colors),
                     f"{self.source}: a {width}x{height} mesh program")
        self.width, self.height = width, height
        self.pe_region = np.full(n, -1, np.int32)
        self.params = np.zeros((n, self.num_params), np.int32)
        self.route_rx = np.zeros((n, self.num_colors), np.uint8)
        self.route_tx = np.zeros((n, self.num_colors), np.uint8)
        self.frozen = True

    def directive(self, line: Line, col: int):
        """Dispatch a directive line."""
        fields = split_fields(line.text[:len(strip_comment(line.text)[0])], col, None)
        name = fields[0][0]
        args = fields[1:]
        if name in HEADER_DIRECTIVES:
            self.header(line, name, col, args)
            return
        if name not in BODY_DIRECTIVES:
            known = " ".join(HEADER_DIRECTIVES + BODY_DIRECTIVES)
            raise line.error(col, f"unknown directive '{name}' (expected one of {known})")
        if name == ".line":
            self.line_directive(line, col, args)
            return
        self.freeze(line, col)
        handler = {".region": self.region_directive, ".route": self.route_directive,
                   ".param": self.param_directive, ".data": self.data_directive}[name]
        handler(line, col, args)

    def header(self, line: Line, name: str, col: int, args):
        """.mesh .dtype .sram .params: once each, before any region or table entry."""
        if self.frozen:
            raise line.error(col, f"'{name}' must come before the first .region, .route, "
                                  f".param, .data or instruction")
        if name in self.seen_headers:
            raise line.error(col, f"duplicate '{name}' directive")
        self.seen_headers.add(name)
        end = col + len(name)
        text = " ".join(a for a, _ in args)
        where = args[0][1] if args else end
        if name == ".mesh":
            self.mesh_size = self.parse_mesh(line, where, text)
        elif name == ".dtype":
            if text not in DTYPES:
                raise line.error(where, f"expected a dtype (fp32, fp16 or bf16) after "
                                        f".dtype, got '{text}'")
            self.dtype = text
        elif name == ".sram":
            self.sram_words = self.parse_count(line, where, text, ".sram")
            self.check_sram_budget(line, where)
        elif name == ".marks":
            self.marks_directive(line, where, args)
        else:
            self.num_params = self.parse_count(line, where, text, ".params")
            if self.num_params > MAX_PARAMS:
                raise line.error(where, f".params {self.num_params} exceeds the limit of "
                                        f"{MAX_PARAMS}")

    def marks_directive(self, line: Line, col: int, args):
        """.marks NAME ...: mark ids 0, 1, ... in this order (others follow by first use)."""
        if not args:
            raise line.error(col, "expected one or more mark names after .marks")
        for text, ncol in args:
            if text in self.mark_ids:
                raise line.error(ncol, f"duplicate mark name '{text}' in .marks")
            self.mark_id(line, text, ncol)

    def mark_id(self, line: Line, text: str, col: int) -> int:
        """The id of mark `text`, assigning the next id on first appearance."""
        if text in self.mark_ids:
            return self.mark_ids[text]
        if _RE_REG.match(text) or _RE_PARAM.match(text):
            raise line.error(col, f"expected {MARK_NAME_HELP}, got '{text}' (mark ids "
                                  f"are immediates, not registers or parameters)")
        if not is_mark_name(text):
            raise line.error(col, f"expected {MARK_NAME_HELP}, got '{text}'")
        self.mark_ids[text] = len(self.mark_names)
        self.mark_names.append(text)
        return self.mark_ids[text]

    def check_sram_budget(self, line: Line, col: int):
        """.sram must fit the PE's SRAM when the caller gave its capacity."""
        if self.sram_bytes is None:
            return
        need = self.sram_words * DTYPE_BYTES[self.dtype]
        if need > self.sram_bytes:
            raise line.error(col, f".sram {self.sram_words} needs {need} bytes "
                                  f"({self.dtype}) but a PE has {self.sram_bytes} bytes "
                                  f"of SRAM")

    @staticmethod
    def parse_mesh(line: Line, col: int, text: str) -> tuple[int, int]:
        match = _RE_MESH.match(text)
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise line.error(col, f"malformed .mesh '{text}': expected WxH with positive "
                                  f"integers, e.g. '.mesh 4x4'")
        return int(match.group(1)), int(match.group(2))

    @staticmethod
    def parse_count(line: Line, col: int, text: str, what: str) -> int:
        if not re.fullmatch(r"\d+", text):
            raise line.error(col, f"expected a non-negative integer after {what}, "
                                  f"got '{text}'")
        return int(text)

    def line_directive(self, line: Line, col: int, args):
        """.line N: the next line is recorded as source line N in the instructions."""
        if len(args) != 1 or not re.fullmatch(r"-?\d+", args[0][0]):
            where = args[0][1] if args else col
            raise line.error(where, "expected a line number after .line")
        self.line_offset = int(args[0][0]) - (line.number + 1)

    # --- rectangles ----------------------------------------------------------------------
    def parse_rect(self, line: Line, args, what: str):
        """Two 'x,y' corner fields -> (x0, y0, x1, y1), checked against the mesh."""
        if len(args) != 2:
            where = args[0][1] if args else len(line.text.rstrip())
            raise line.error(where, f"expected two corners 'x0,y0 x1,y1' for {what}")
        corners = []
        for text, col in args:
            match = _RE_COORD.match(text)
            if not match:
                raise line.error(col, f"expected a corner 'x,y' with non-negative "
                                      f"integers, got '{text}'")
            corners.append((int(match.group(1)), int(match.group(2)), col))
        (x0, y0, c0), (x1, y1, c1) = corners
        if x1 < x0 or y1 < y0:
            raise line.error(c1, f"second corner ({x1},{y1}) is before the first ({x0},{y0})")
        if x1 >= self.width or y1 >= self.height:
            raise line.error(c1, f"{what} {x0},{y0} {x1},{y1} is outside the "
                                 f"{self.width}x{self.height} mesh")
        return x0, y0, x1, y1

    def rect_pes(self, rect) -> np.ndarray:
        """PE indices of a rectangle, row-major, shaped [h, w]."""
        x0, y0, x1, y1 = rect
        ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        return ys * self.width + xs

    def split_at(self, line: Line, col: int, args, what: str):
        """Split trailing 'at x0,y0 x1,y1'; return (fields before, list of rectangles):
        the `at` rectangle, or else the current region's rectangles."""
        names = [a for a, _ in args]
        if "at" not in names:
            return args, self.region_rects(line, col, what)
        i = names.index("at")
        return args[:i], [self.parse_rect(line, args[i + 1:], f"'{what} at' rectangle")]

    def region_rects(self, line: Line, col: int, what: str) -> list:
        if not self.regions:
            raise line.error(col, f"{what} outside a region needs 'at x0,y0 x1,y1'")
        return self.regions[-1].rects

    # --- body directives ---------------------------------------------------------------
    def region_directive(self, line: Line, col: int, args):
        """.region NAME x0,y0 x1,y1 [x0,y0 x1,y1 ...]"""
        if not args:
            raise line.error(col, "expected '.region NAME x0,y0 x1,y1'")
        name, name_col = args[0]
        if not _RE_NAME.match(name):
            raise line.error(name_col, f"expected a region name, got '{name}'")
        if any(r.name == name for r in self.regions):
            raise line.error(name_col, f"duplicate region name '{name}'")
        corners = args[1:] or [("", len(line.text.rstrip()))]
        pairs = [corners[i:i + 2] for i in range(0, len(corners), 2)]
        rects = [self.parse_rect(line, pair, f"region '{name}'") for pair in pairs]
        if self.regions:
            self.finish_region()
        index = len(self.regions)
        for rect, pair in zip(rects, pairs, strict=True):
            self.claim(line, pair[0][1], name, rect, index)
        self.regions.append(Region(name, rects))

    def claim(self, line: Line, col: int, name: str, rect, index: int):
        """Assign a rectangle's PEs to region `index`; error if any already has a region."""
        pes = self.rect_pes(rect).ravel()
        taken = self.pe_region[pes]
        if (taken >= 0).any():
            pe = int(pes[np.argmax(taken >= 0)])
            other = taken[np.argmax(taken >= 0)]
            other = name if other == index else self.regions[int(other)].name
            raise line.error(col, f"region '{name}' overlaps region '{other}' at PE "
                                  f"({pe % self.width},{pe // self.width})")
        self.pe_region[pes] = index

    def route_directive(self, line: Line, col: int, args):
        """.route cN rx=PORTS tx=PORTS [at x0,y0 x1,y1]"""
        fields, rects = self.split_at(line, col, args, ".route")
        if not fields:
            raise line.error(col, "expected '.route cN rx=PORTS tx=PORTS'")
        color = self.parse_color_const(line, *fields[0])
        ports = {}
        for text, fcol in fields[1:]:
            key, _, value = text.partition("=")
            if key not in ("rx", "tx") or not _ or key in ports:
                raise line.error(fcol, f"expected 'rx=PORTS' and 'tx=PORTS', got '{text}'")
            ports[key] = self.parse_ports(line, fcol + 3, value)
        for key in ("rx", "tx"):
            if key not in ports:
                raise line.error(len(line.text.rstrip()), f"missing '{key}=PORTS' in .route")
        for rect in rects:
            pes = self.rect_pes(rect).ravel()
            self.route_rx[pes, color] = ports["rx"]
            self.route_tx[pes, color] = ports["tx"]

    def param_directive(self, line: Line, col: int, args):
        """.param pK = EXPR [at x0,y0 x1,y1]"""
        code = strip_comment(line.text)[0]
        start = col + len(".param")
        match = re.match(r"\s*(\S+?)\s*=", code[start:])
        if not match:
            raise line.error(col, "expected '.param pK = EXPRESSION'")
        name, ncol = match.group(1), start + match.start(1)
        index = re.fullmatch(r"%?p(\d+)", name)
        if not index:
            raise line.error(ncol, f"expected a parameter name like p0, got '{name}'")
        self.check_param_index(line, ncol, int(index.group(1)))
        expr_start = start + match.end()
        at = re.search(r"\bat\b", code[expr_start:])
        expr_end = expr_start + at.start() if at else len(code)
        if at:
            rects = [self.parse_rect(line, split_fields(code, expr_start + at.end(), None),
                                     "'.param at' rectangle")]
        else:
            rects = self.region_rects(line, col, ".param")
        for rect in rects:
            values = self.eval_param(line, expr_start, code[expr_start:expr_end], rect)
            self.params[self.rect_pes(rect).ravel(), int(index.group(1))] = values.ravel()

    def eval_param(self, line: Line, start: int, text: str, rect) -> np.ndarray:
        """Evaluate a parameter expression over a rectangle of PEs (int32 results)."""
        x0, y0, x1, y1 = rect
        ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        env = {"x": xs, "y": ys, "W": self.width, "H": self.height}
        if self.regions:
            rx0, ry0, rx1, ry1 = self.regions[-1].rects[0]
            env.update(lx=xs - rx0, ly=ys - ry0, w=rx1 - rx0 + 1, h=ry1 - ry0 + 1)
        start += len(text) - len(text.lstrip())
        text = text.strip()
        try:
            tree = parse_expr(text, env.keys())
            values = eval_expr(tree, env, xs.shape)
        except ExprError as exc:
            raise line.error(start + exc.offset, f"bad expression: {exc}") from None
        bad = (values < INT32_MIN) | (values > INT32_MAX)
        if bad.any():
            iy, ix = np.argwhere(bad)[0]
            raise line.error(start, f"parameter value {int(values[iy, ix])} at PE "
                                    f"({x0 + ix},{y0 + iy}) does not fit in 32 bits")
        return values.astype(np.int32)

    def data_directive(self, line: Line, col: int, args):
        """.data ADDR v0 v1 ...: initial SRAM of every PE of the current region."""
        if not self.regions:
            raise line.error(col, ".data outside a region")
        if len(args) < 2:
            raise line.error(col, "expected '.data ADDRESS VALUE ...'")
        addr_text, acol = args[0]
        if not _RE_INT.match(addr_text) or int(addr_text, 0) < 0:
            raise line.error(acol, f"expected a non-negative integer address, "
                                   f"got '{addr_text}'")
        addr = int(addr_text, 0)
        values = np.array([self.parse_float(line, t, c) for t, c in args[1:]], np.float32)
        if addr + len(values) > self.sram_words:
            raise line.error(acol, f".data of {len(values)} values at {addr} goes beyond "
                                   f".sram {self.sram_words}")
        self.regions[-1].data.append((addr, values))

    # --- instructions --------------------------------------------------------------------
    def label(self, line: Line, name: str, col: int):
        if not self.regions:
            raise line.error(col, f"label '{name}' before any .region")
        region = self.regions[-1]
        if name in region.labels:
            raise line.error(col, f"duplicate label '{name}' in region '{region.name}'")
        region.labels[name] = len(region.rows)

    def instruction(self, line: Line, col: int, comment: str | None):
        """Parse `mnemonic operand, operand, ...` into one encoded row."""
        code = strip_comment(line.text)[0]
        match = re.compile(r"\S+").match(code, col)
        mnemonic = match.group()
        if mnemonic.lower() not in MNEMONICS:
            raise line.error(col, f"unknown opcode '{mnemonic}'")
        if not self.regions:
            raise line.error(col, "instruction before any .region")
        op = MNEMONICS[mnemonic.lower()]
        signature = SIGNATURES[op]
        operands = split_fields(code, match.end(), ",") if code[match.end():].strip() else []
        if len(operands) > len(signature):
            text, ocol = operands[len(signature)]
            if not text:
                raise line.error(ocol - 1, "unexpected ',' after the last operand")
            raise line.error(ocol, f"extra operand '{text}': {mnemonic} takes "
                                   f"{len(signature)} operand(s)")
        if len(operands) < len(signature):
            kind = signature[len(operands)]
            raise line.error(len(code), f"missing operand: {mnemonic} expects "
                                        f"{OPERAND_HELP[kind]} as operand {len(operands) + 1}")
        row = {"op": int(op), "modes": 0, "a": [0] * NUM_SLOTS, "imm": 0.0,
               "line": line.number + self.line_offset}
        for kind, (text, ocol) in zip(signature, operands, strict=True):
            if not text:
                raise line.error(ocol, f"expected {OPERAND_HELP[kind]}")
            self.operand(line, row, op, kind, text, ocol)
        self.check_static_ranges(line, row, op, signature, operands)
        region = self.regions[-1]
        if comment:
            region.comments[len(region.rows)] = comment
        region.rows.append(row)

    def operand(self, line: Line, row: dict, op: Op, kind: str, text: str, col: int):
        """Encode one operand of `kind` into `row`."""
        if kind in DESCRIPTOR_SLOTS:
            self.descriptor(line, row, kind, text, col)
        elif kind == "n":
            self.set_slot(row, SLOT_N, self.parse_value(line, text, col, "element count"))
        elif kind == "k":
            self.set_slot(row, SLOT_COLOR, self.parse_value(line, text, col, "column count"))
        elif kind == "gdst":
            match = re.fullmatch(r"\[([^\]:]*)\]", text)
            if not match:
                raise line.error(col, f"expected {OPERAND_HELP[kind]}, got '{text}'")
            address = self.parse_value(line, match.group(1).strip(), col + 1, "address")
            if address.kind == MODE_IMM and address.value < 0:
                raise line.error(col + 1, f"negative address {address.value}")
            self.set_slot(row, SLOT_DST, address)
        elif kind == "batch":
            self.set_slot(row, SLOT_DST_STRIDE, self.parse_value(line, text, col, "batch count"))
        elif kind in REP_OPERANDS:
            slot, what = REP_OPERANDS[kind]
            self.set_slot(row, slot, self.parse_value(line, text, col, what))
        elif kind == "color":
            self.set_slot(row, SLOT_COLOR, self.parse_color(line, text, col))
        elif kind == "imm":
            row["imm"] = self.parse_float(line, text, col)
        elif kind == "reg":
            row["a"][SLOT_DST] = self.parse_register(line, text, col)
        elif kind == "value":
            self.set_slot(row, SLOT_SRC0, self.parse_value(line, text, col, "value"))
        elif kind == "mark":
            row["a"][SLOT_DST] = self.mark_id(line, text, col)
        elif kind == "label":
            if not _RE_LABEL.match(text):
                raise line.error(col, f"expected a label name, got '{text}'")
            self.regions[-1].fixups.append((len(self.regions[-1].rows), text, line, col))
        else:
            slot = SLOT_SRC0 if kind == "rx" else SLOT_SRC1
            prefix = kind + "="
            if text.startswith(prefix):
                text, col = text[len(prefix):].strip(), col + len(prefix)
            if _RE_PARAM.match(text):
                self.set_slot(row, slot, self.parse_value(line, text, col, "port set"))
            else:
                row["a"][slot] = self.parse_ports(line, col, text)

    @staticmethod
    def set_slot(row: dict, slot: int, operand: Operand):
        row["a"][slot] = operand.value
        row["modes"] |= encode_mode(slot, operand.kind, operand.reg)

    def descriptor(self, line: Line, row: dict, kind: str, text: str, col: int):
        """[A] or [A:S] into an address slot and its stride slot."""
        addr_slot, stride_slot, default_stride = DESCRIPTOR_SLOTS[kind]
        match = re.fullmatch(r"\[([^\]:]*)(?::([^\]]*))?\]", text)
        if not match:
            raise line.error(col, f"expected an SRAM descriptor like [A] or [A:S], "
                                  f"got '{text}'")
        addr_text = match.group(1).strip()
        addr_col = col + 1 + len(match.group(1)) - len(match.group(1).lstrip())
        address = self.parse_value(line, addr_text, addr_col, "address")
        if address.kind == MODE_IMM and address.value < 0:
            raise line.error(addr_col, f"negative address {address.value}")
        self.set_slot(row, addr_slot, address)
        if match.group(2) is None:
            row["a"][stride_slot] = default_stride
            return
        stride_col = col + match.start(2) + len(match.group(2)) - len(match.group(2).lstrip())
        self.set_slot(row, stride_slot,
                      self.parse_value(line, match.group(2).strip(), stride_col, "stride"))

    def check_static_ranges(self, line: Line, row: dict, op: Op, signature, operands):
        """Constant counts must be >= 0 and constant descriptors inside .sram."""
        n_const = self.const_slot(row, SLOT_N) if "n" in signature else None
        if n_const is not None and n_const < 0:
            raise line.error(operands[signature.index("n")][1],
                             f"negative element count {n_const}")
        if op == Op.VGEMV:
            self.check_gemv(line, row, operands, n_const)
            return
        if op == Op.REP:
            for index, kind in enumerate(("reps", "cols")):
                value = self.const_slot(row, REP_OPERANDS[kind][0])
                if value is not None and value < 0:
                    raise line.error(operands[index][1], f"negative repeat count {value}")
            return
        if op == Op.VGEMM:
            for slot, index, what in ((SLOT_COLOR, 4, "column"), (SLOT_DST_STRIDE, 5, "batch")):
                value = self.const_slot(row, slot)
                if value is not None and value < 0:
                    raise line.error(operands[index][1], f"negative {what} count {value}")
            return
        for kind, (text, col) in zip(signature, operands, strict=True):
            if kind in DESCRIPTOR_SLOTS and n_const != 0:
                self.check_descriptor(line, row, kind, text, col, n_const)

    def check_gemv(self, line: Line, row: dict, operands, m):
        """vgemv: constant k >= 0; when m != 0 and k != 0, constant descriptors inside
        .sram (dst: m elements; W: k columns of m elements ld apart; x: k elements)."""
        k = self.const_slot(row, SLOT_COLOR)
        if k is not None and k < 0:
            raise line.error(operands[4][1], f"negative column count {k}")
        if m == 0 or k == 0:
            return
        (dtext, dcol), (wtext, wcol), (xtext, xcol) = operands[:3]
        self.check_descriptor(line, row, "dst", dtext, dcol, m)
        self.check_descriptor(line, row, "src1", xtext, xcol, k)
        base = self.const_slot(row, SLOT_SRC0)
        if base is None:
            return
        if base >= self.sram_words:
            raise line.error(wcol, f"address {base} is beyond .sram {self.sram_words} "
                                   f"(addresses 0..{self.sram_words - 1})")
        ld = self.const_slot(row, SLOT_SRC0_STRIDE)
        if m is None or k is None or ld is None:
            return
        first, last = base, base + (k - 1) * ld
        low, high = min(first, last), max(first, last) + m - 1
        if low < 0 or high >= self.sram_words:
            raise line.error(wcol, f"{wtext} with {k} columns of {m} elements reaches "
                                   f"address {low if low < 0 else high}, outside "
                                   f".sram {self.sram_words}")

    def check_descriptor(self, line, row, kind, text, col, n):
        addr_slot, stride_slot, _ = DESCRIPTOR_SLOTS[kind]
        base = self.const_slot(row, addr_slot)
        if base is None:
            return
        if base >= self.sram_words:
            raise line.error(col, f"address {base} is beyond .sram {self.sram_words} "
                                  f"(addresses 0..{self.sram_words - 1})")
        stride = self.const_slot(row, stride_slot)
        if n is None or stride is None or kind == "rdst":
            return
        last = base + (n - 1) * stride
        if not 0 <= last < self.sram_words:
            raise line.error(col, f"{text} with {n} elements reaches address {last}, "
                                  f"outside .sram {self.sram_words}")

    @staticmethod
    def const_slot(row: dict, slot: int) -> int | None:
        """The slot's value if it is an immediate, else None."""
        kind = (row["modes"] >> (8 * slot)) & 0x3
        return row["a"][slot] if kind == MODE_IMM else None

    # --- scalar operand parsers --------------------------------------------------------
    def parse_value(self, line: Line, text: str, col: int, what: str) -> Operand:
        """An integer, %pK, rK or rK+N / rK-N."""
        if _RE_INT.match(text):
            value = int(text, 0)
            if not INT32_MIN <= value <= INT32_MAX:
                raise line.error(col, f"{what} {value} does not fit in 32 bits")
            return Operand(MODE_IMM, value)
        match = _RE_PARAM.match(text)
        if match:
            index = int(match.group(1))
            self.check_param_index(line, col, index)
            return Operand(MODE_PARAM, index)
        match = _RE_REG.match(text)
        if match:
            reg = self.parse_register(line, f"r{match.group(1)}", col)
            offset = int(match.group(3), 0) if match.group(3) else 0
            offset = -offset if match.group(2) == "-" else offset
            if not INT32_MIN <= offset <= INT32_MAX:
                raise line.error(col, f"register offset {offset} does not fit in 32 bits")
            return Operand(MODE_REG, offset, reg)
        if re.fullmatch(r"r\d+.*", text):
            raise line.error(col, f"expected a register offset like r1+8, got '{text}'")
        raise line.error(col, f"expected {what} as an integer, %pK, rK or rK+N, "
                              f"got '{text}'")

    def check_param_index(self, line: Line, col: int, index: int):
        if index >= self.num_params:
            raise line.error(col, f"parameter p{index} is not declared (.params "
                                  f"{self.num_params} allows p0..p{self.num_params - 1})"
                             if self.num_params else
                             f"parameter p{index} is not declared (add '.params N')")

    @staticmethod
    def parse_register(line: Line, text: str, col: int) -> int:
        match = re.fullmatch(r"r(\d+)", text)
        if not match:
            raise line.error(col, f"expected a register r0..r{NUM_REGS - 1}, got '{text}'")
        if int(match.group(1)) >= NUM_REGS:
            raise line.error(col, f"bad register '{text}' (registers are "
                                  f"r0..r{NUM_REGS - 1})")
        return int(match.group(1))

    def parse_color(self, line: Line, text: str, col: int) -> Operand:
        if _RE_PARAM.match(text):
            return self.parse_value(line, text, col, "color")
        return Operand(MODE_IMM, self.parse_color_const(line, text, col))

    def parse_color_const(self, line: Line, text: str, col: int) -> int:
        match = _RE_COLOR.match(text)
        if not match:
            raise line.error(col, f"expected a color like c0, got '{text}'")
        color = int(match.group(1))
        if color >= self.num_colors:
            raise line.error(col, f"unknown color '{text}' (colors are "
                                  f"c0..c{self.num_colors - 1})")
        return color

    @staticmethod
    def parse_ports(line: Line, col: int, text: str) -> int:
        """'N|E|R' or '-' -> port bit mask."""
        if text == "-":
            return 0
        mask = 0
        pos = col
        for name in text.split("|"):
            if name not in PORT_BITS:
                raise line.error(pos, f"bad port name '{name}' (ports are N E S W R, "
                                      f"joined by '|', or '-' for none)")
            mask |= PORT_BITS[name]
            pos += len(name) + 1
        return mask

    @staticmethod
    def parse_float(line: Line, text: str, col: int) -> float:
        if not _RE_FLOAT.match(text):
            raise line.error(col, f"expected a float immediate like 1.5, got '{text}'")
        value = float(text)
        with np.errstate(over="ignore"):
            single = np.float32(value)
        if np.isinf(single) and not np.isinf(value):
            raise line.error(col, f"float {text} is outside the fp32 range")
        return float(single)

    # --- regions and output --------------------------------------------------------------
    def finish_region(self):
        """Resolve the current region's label references."""
        region = self.regions[-1]
        for index, label, line, col in region.fixups:
            if label not in region.labels:
                raise line.error(col, f"undefined label '{label}' in region '{region.name}'")
            region.rows[index]["a"][SLOT_SRC0] = region.labels[label]

    def build(self) -> Program:
        """Concatenate region code and data into a Program."""
        rows = [row for region in self.regions for row in region.rows]
        code = np.zeros(len(rows), INSTR_DTYPE)
        for i, row in enumerate(rows):
            code[i] = (row["op"], row["modes"], row["a"], row["imm"], row["line"])
        lengths = np.array([len(r.rows) for r in self.regions], np.int32)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int32)
        param_rows, param_index = factor_params(self.params)
        program = Program(
            width=self.width, height=self.height, dtype=self.dtype,
            sram_words=int(self.sram_words), code=code, region_start=starts[:len(lengths)],
            region_len=lengths, region_names=[r.name for r in self.regions],
            pe_region=self.pe_region, param_rows=param_rows, param_index=param_index,
            route_rx=self.route_rx, route_tx=self.route_tx, source=self.source,
            region_comments={i: r.comments for i, r in enumerate(self.regions) if r.comments},
            mark_names=list(self.mark_names))
        self.attach_data(program)
        return program

    def attach_data(self, program: Program):
        """Flatten every region's .data entries into the Program's data arrays."""
        entries = [(i, addr, vals) for i, r in enumerate(self.regions) for addr, vals in r.data]
        lengths = np.array([len(v) for _, _, v in entries], np.int32)
        program.data_region = np.array([i for i, _, _ in entries], np.int32)
        program.data_addr = np.array([a for _, a, _ in entries], np.int32)
        program.data_len = lengths
        program.data_offset = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)[:-1])
                                             ).astype(np.int64)[:len(entries)]
        program.data_values = (np.concatenate([v for _, _, v in entries]).astype(np.float32)
                               if entries else np.zeros(0, np.float32))


def assemble(text: str, source: str = "<string>", mesh=None, num_colors: int = 24,
             sram_bytes: int | None = None) -> Program:
    """Assemble mesh assembly `text` into a Program.

    `mesh`: (W, H) overriding the file's `.mesh`. `num_colors`: router table width.
    `sram_bytes`: the PE's SRAM capacity; when given, `.sram` must fit in it (and a file
    without `.sram` gets the whole capacity).
    """
    return Assembler(source, mesh, num_colors, sram_bytes).run(text)


def assemble_file(path, mesh=None, num_colors: int = 24,
                  sram_bytes: int | None = None) -> Program:
    """Assemble the file at `path`; messages name the file as given."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AsmError(f"{path}: cannot read assembly file ({exc})") from None
    return assemble(text, source=str(path), mesh=mesh, num_colors=num_colors,
                    sram_bytes=sram_bytes)
