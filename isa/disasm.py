"""The disassembler: `Program` -> assembly text that re-assembles to an equal Program.

Layout of the output: the header (.mesh .dtype .sram .params, and .marks listing every
mark name in id order, so ids round-trip even for names no instruction uses); router entries and
parameters of idle PEs as `.route/.param ... at` rectangles; then each region (as one
rectangle, or several when its PEs do not form one) with its router entries (the region's
most common entry per color, then exceptions as rectangles), parameters (a constant, an
affine expression of lx, ly -- x, y for several rectangles -- or a most common value plus
rectangles), `.data` lines and code. Jump targets get labels `L<pc>`. Source line numbers
stored in the instructions are kept with `.line N` directives where the output's own line
numbers differ. The router table width (`num_colors`) is written as a comment: pass it to
`assemble` when it is not the default 24.
"""

from collections import Counter

import numpy as np

from isa.asm import DESCRIPTOR_SLOTS, PORT_BITS, REP_OPERANDS, SIGNATURES, is_mark_name
from isa.opcodes import (
    MODE_IMM,
    MODE_PARAM,
    SLOT_COLOR,
    SLOT_DST,
    SLOT_DST_STRIDE,
    SLOT_N,
    SLOT_SRC0,
    SLOT_SRC1,
    Op,
    slot_mode,
)
from isa.program import Program

JUMPS = (Op.DJNZ, Op.JMP)


def format_float(value) -> str:
    """Shortest text that parses back to the same fp32 value."""
    return str(np.float32(value))


def format_ports(mask: int) -> str:
    """Port bit mask -> 'N|E|R' or '-'."""
    names = [name for name, bit in PORT_BITS.items() if mask & bit]
    return "|".join(names) if names else "-"


def format_value(ins, slot: int) -> str:
    """An integer operand: immediate, %pK or rK[+-N]."""
    kind, reg = slot_mode(ins["modes"], slot)
    value = int(ins["a"][slot])
    if kind == MODE_IMM:
        return str(value)
    if kind == MODE_PARAM:
        return f"%p{value}"
    if value == 0:
        return f"r{reg}"
    return f"r{reg}{'+' if value > 0 else '-'}{abs(value)}"


def format_descriptor(ins, kind: str) -> str:
    addr_slot, stride_slot, default = DESCRIPTOR_SLOTS[kind]
    addr = format_value(ins, addr_slot)
    stride_kind, _ = slot_mode(ins["modes"], stride_slot)
    if stride_kind == MODE_IMM and int(ins["a"][stride_slot]) == default:
        return f"[{addr}]"
    return f"[{addr}:{format_value(ins, stride_slot)}]"


def format_operand(ins, kind: str, mark_names=None) -> str:
    """One operand of `kind` (see isa.asm.SIGNATURES) as assembly text."""
    if kind == "mark":
        k = int(ins["a"][SLOT_DST])
        return mark_names[k] if mark_names is not None and 0 <= k < len(mark_names) else str(k)
    if kind in DESCRIPTOR_SLOTS:
        return format_descriptor(ins, kind)
    if kind == "n":
        return format_value(ins, SLOT_N)
    if kind == "k":
        return format_value(ins, SLOT_COLOR)
    if kind == "gdst":
        return f"[{format_value(ins, SLOT_DST)}]"
    if kind == "batch":
        return format_value(ins, SLOT_DST_STRIDE)
    if kind in REP_OPERANDS:
        return format_value(ins, REP_OPERANDS[kind][0])
    if kind == "color":
        mode, _ = slot_mode(ins["modes"], SLOT_COLOR)
        value = format_value(ins, SLOT_COLOR)
        return f"c{value}" if mode == MODE_IMM else value
    if kind == "imm":
        return format_float(ins["imm"])
    if kind == "reg":
        return f"r{int(ins['a'][SLOT_DST])}"
    if kind == "value":
        return format_value(ins, SLOT_SRC0)
    if kind == "label":
        return f"L{int(ins['a'][SLOT_SRC0])}"
    slot = SLOT_SRC0 if kind == "rx" else SLOT_SRC1
    mode, _ = slot_mode(ins["modes"], slot)
    return format_ports(int(ins["a"][slot])) if mode == MODE_IMM else format_value(ins, slot)


def format_instruction(ins, mark_names=None) -> str:
    """One instruction row as assembly text (labels as L<pc>). A `mark` is written with
    its name from `mark_names` (Program.mark_names), or as its bare id without them."""
    op = Op(int(ins["op"]))
    operands = ", ".join(format_operand(ins, kind, mark_names) for kind in SIGNATURES[op])
    return f"{op.name.lower()} {operands}".rstrip()


def cover(grid: np.ndarray, mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """Rectangles (x0, y0, x1, y1, value) of equal values covering every masked cell."""
    height, width = grid.shape
    done = ~mask.copy()
    rects = []
    for y in range(height):
        for x in range(width):
            if done[y, x]:
                continue
            value = grid[y, x]
            x1 = x
            while x1 + 1 < width and not done[y, x1 + 1] and grid[y, x1 + 1] == value:
                x1 += 1
            y1 = y
            while (y1 + 1 < height and not done[y1 + 1, x:x1 + 1].any()
                   and (grid[y1 + 1, x:x1 + 1] == value).all()):
                y1 += 1
            done[y:y1 + 1, x:x1 + 1] = True
            rects.append((x, y, x1, y1, int(value)))
    return rects


def region_rects(program: Program, region: int) -> list[tuple[int, int, int, int]]:
    """Disjoint rectangles covering the PEs that run `region` (one when it is a rectangle)."""
    mask = _grid(program, program.pe_region) == region
    if not mask.any():
        name = program.region_names[region]
        raise ValueError(f"region '{name}' has no PEs and cannot be written as assembly")
    return [rect[:4] for rect in cover(mask.astype(np.int64), mask)]


class Writer:
    """Collects output lines and keeps the `.line` bookkeeping."""

    def __init__(self):
        self.lines: list[str] = []
        self.offset = 0          # recorded line = physical line + offset

    def add(self, text: str):
        self.lines.append(text)

    def instruction(self, text: str, source_line: int):
        """Emit an instruction so that it records `source_line`."""
        physical = len(self.lines) + 1
        if physical + self.offset != source_line:
            self.lines.append(f".line {source_line}")
            self.offset = source_line - (physical + 1)
        self.lines.append(text)


def _at(rect) -> str:
    x0, y0, x1, y1 = rect[:4]
    return f"at {x0},{y0} {x1},{y1}"


def _route_lines(program: Program, mask: np.ndarray, region: bool) -> list[str]:
    """`.route` lines for the masked PEs; in a region, the most common entry of each color
    is written for the whole region and the others as `at` rectangles."""
    grid_rx, grid_tx = _grid(program, program.route_rx), _grid(program, program.route_tx)
    lines = []
    for color in range(program.num_colors):
        pair = grid_rx[:, :, color].astype(np.int64) * 256 + grid_tx[:, :, color]
        default = Counter(pair[mask].tolist()).most_common(1)[0][0] if region else 0
        if default:
            lines.append(_route_text(color, default))
        for rect in cover(pair, mask & (pair != default)):
            lines.append(f"{_route_text(color, rect[4])} {_at(rect)}")
    return lines


def _route_text(color: int, pair: int) -> str:
    return f".route c{color} rx={format_ports(pair // 256)} tx={format_ports(pair % 256)}"


def _affine(values: np.ndarray, mask: np.ndarray, rects: list) -> str | None:
    """An expression equal to `values` on every masked PE: 'c + a*lx + b*ly' for a
    one-rectangle region, 'c + a*x + b*y' otherwise; None when not exactly affine."""
    ys, xs = np.nonzero(mask)
    target = values[mask].astype(np.int64)
    names = [n for n, v in (("x", xs), ("y", ys)) if v.min() != v.max()]
    columns = [np.ones_like(xs)] + [xs if n == "x" else ys for n in names]
    matrix = np.stack(columns, axis=1).astype(np.float64)
    solution = np.linalg.lstsq(matrix, target.astype(np.float64), rcond=None)[0]
    coeffs = np.rint(solution).astype(np.int64)
    if not np.array_equal(matrix.astype(np.int64) @ coeffs, target):
        return None
    c, slopes = int(coeffs[0]), dict(zip(names, (int(k) for k in coeffs[1:]), strict=True))
    a, b = slopes.get("x", 0), slopes.get("y", 0)
    if len(rects) == 1:
        c, names = c + a * rects[0][0] + b * rects[0][1], ("lx", "ly")
    else:
        names = ("x", "y")
    terms = [str(c)] if c or not (a or b) else []
    terms += [f"{k}*{name}" for k, name in ((a, names[0]), (b, names[1])) if k]
    return " + ".join(terms).replace("+ -", "- ")


def _param_lines(program: Program, mask: np.ndarray, rects: list | None) -> list[str]:
    """`.param` lines for the masked PEs; `rects` = the region's rectangles (None: idle
    PEs, written only as `at` rectangles)."""
    params = _grid(program, program.params)
    lines = []
    for k in range(program.num_params):
        values = params[:, :, k]
        expr = _affine(values, mask, rects) if rects else None
        if expr is not None:
            lines += [f".param p{k} = {expr}"] if expr != "0" else []
            continue
        default = Counter(values[mask].tolist()).most_common(1)[0][0] if rects else 0
        lines += [f".param p{k} = {default}"] if default else []
        for rect in cover(values, mask & (values != default)):
            lines.append(f".param p{k} = {rect[4]} {_at(rect)}")
    return lines


def _grid(program: Program, array: np.ndarray) -> np.ndarray:
    """A per-PE array reshaped to [H, W, ...]."""
    return array.reshape(program.height, program.width, *array.shape[1:])


def _idle_lines(program: Program) -> list[str]:
    """Routes and parameters of PEs outside every region."""
    idle = _grid(program, program.pe_region) < 0
    if not idle.any():
        return []
    return _route_lines(program, idle, region=False) + _param_lines(program, idle, None)


def _region_tables(program: Program, region: int, rects: list) -> list[str]:
    """Routes and parameters of one region's PEs."""
    mask = _grid(program, program.pe_region) == region
    return _route_lines(program, mask, region=True) + _param_lines(program, mask, rects)


def _region_data(program: Program, region: int) -> list[str]:
    lines = []
    for r, addr, offset, length in zip(program.data_region, program.data_addr,
                                       program.data_offset, program.data_len, strict=True):
        if r == region:
            values = program.data_values[offset:offset + length]
            lines.append(f".data {int(addr)} " + " ".join(format_float(v) for v in values))
    return lines


def _region_code(program: Program, region: int, out: Writer):
    code = program.region_code(region)
    comments = program.region_comments.get(region, {})
    targets = {int(ins["a"][SLOT_SRC0]) for ins in code if Op(int(ins["op"])) in JUMPS}
    for pc, ins in enumerate(code):
        if pc in targets:
            out.add(f"L{pc}:")
        text = "    " + format_instruction(ins, program.mark_names)
        if pc in comments:
            text += "  ; " + " ".join(str(comments[pc]).split())
        out.instruction(text, int(ins["line"]))
    if len(code) in targets:
        out.add(f"L{len(code)}:")


def _mark_names(program: Program) -> list[str]:
    """The program's mark names, checked to be writable as assembly."""
    names = list(program.mark_names)
    for name in names:
        if not is_mark_name(name):
            raise ValueError(f"mark name '{name}' cannot be written as assembly "
                             f"(letters, digits, '.', '_', '-', starting with a letter or '_')")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"mark name '{dup}' is used for several mark ids")
    return names


def disassemble(program: Program) -> str:
    """Assembly text for `program` (see module docstring)."""
    out = Writer()
    out.add(f"; disassembled from {program.source}; colors: {program.num_colors}")
    out.add(f".mesh {program.width}x{program.height}")
    out.add(f".dtype {program.dtype}")
    out.add(f".sram {program.sram_words}")
    if program.num_params:
        out.add(f".params {program.num_params}")
    if program.mark_names:
        out.add(".marks " + " ".join(_mark_names(program)))
    for line in _idle_lines(program):
        out.add(line)
    for region, name in enumerate(program.region_names):
        rects = region_rects(program, region)
        corners = " ".join(f"{x0},{y0} {x1},{y1}" for x0, y0, x1, y1 in rects)
        out.add("")
        out.add(f".region {name} {corners}")
        for line in _region_tables(program, region, rects) + _region_data(program, region):
            out.add(line)
        _region_code(program, region, out)
    return "\n".join(out.lines) + "\n"
