"""Everything about one PE of a compiled decode step: the data behind `emu explain`.

For PE (x, y) of a `compiler.decode.Compiled`:
- `buffer_rows`: every SRAM buffer of the shared address map with the bytes this PE
  really uses and the tensor slice it holds (rows / columns of which HF weight, which KV
  positions of which kv head, or what a scratch buffer is for);
- `route_rows`: its router entry per color (rx / tx ports), the flow the entry belongs
  to, its part in it, and which ops of its program send or receive on that color;
- `param_rows`: its per-PE parameters (`%pK`) with their values and meaning;
- `program_listing`: its region's code exactly as the engines execute it
  (`isa.disasm.format_instruction`), with the op-block comments the compiler attached
  and, per instruction, the buffers its addresses point into and its parameters' values;
- `timeline_rows`: per op block (or per instruction), when it started and ended in one
  decode step, from the reference engine's events.

`op_blocks` splits a region's code at the ops the compiler recorded (`Program.region_ops`)
and names every block by op and layer (`L0.qkv`, `L1.attn`, `lm_head`, ...); `emu step
--op` filters events by these names. Times are cycles, sizes elements unless named bytes.
"""

import bisect
import re
from dataclasses import dataclass

from compiler.emit import PARAM_DOC
from compiler.place import BUFFER_DOC, pe_class
from compiler.tile import attn_col_order, gu_row_order, qkv_row_order
from emulator.hw.dtypes import BYTES as DTYPE_BYTES
from emulator.hw.errors import ConfigError
from emulator.hw.mesh import MeshConfig
from isa.asm import DESCRIPTOR_SLOTS, SIGNATURES
from isa.disasm import format_instruction, format_ports
from isa.opcodes import MODE_PARAM, MODE_REG, NUM_SLOTS, SLOT_COLOR, Op, slot_mode
from isa.program import Program

_COUNT = re.compile(r"\bn=(\d+)")



# --------------------------------------------------------------------------- op blocks


@dataclass(frozen=True)
class Block:
    """Instructions start..end-1 of a region, belonging to one op."""

    start: int
    end: int
    op: str          # 'L0.qkv', 'L1.attn', 'lm_head', 'prologue', ...
    comment: str     # the compiler's comment opening the block


def op_blocks(program: Program, region: int) -> list[Block]:
    """The blocks of a region's code: from each op the compiler recorded
    (`Program.region_ops`, e.g. `L0.qkv`) to the next, with the comment at that pc; a
    program without recorded ops (assembly) is split at its comments, each comment naming
    its block ([] without either)."""
    comments = program.region_comments.get(region, {})
    n = int(program.region_len[region])
    ops = program.region_ops.get(region) or {pc: text for pc, text in comments.items()}
    starts = sorted(pc for pc in ops if pc < n)
    if not starts:
        return []
    blocks = []
    if starts[0] > 0:
        blocks.append(Block(0, starts[0], "prologue", "step parameters into registers"))
    for k, pc in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else n
        blocks.append(Block(pc, end, ops[pc], comments.get(pc, ops[pc])))
    return blocks


class OpIndex:
    """pc -> block lookup for every region of a program (built once, used per event)."""

    def __init__(self, program: Program):
        self.blocks = [op_blocks(program, r) for r in range(len(program.region_start))]
        self.starts = [[b.start for b in blocks] for blocks in self.blocks]
        self.program = program

    def block(self, region: int, pc: int) -> Block | None:
        """The block holding instruction `pc` of `region`, or None."""
        starts = self.starts[region]
        k = bisect.bisect_right(starts, pc) - 1
        return self.blocks[region][k] if k >= 0 else None

    def op(self, x: int, y: int, pc: int) -> str:
        """The op name of PE (x, y)'s instruction `pc` ('' without comments)."""
        region = int(self.program.pe_region[y * self.program.width + x])
        block = self.block(region, pc) if region >= 0 else None
        return block.op if block else ""

    def names(self) -> list[str]:
        """Every op name of the program, in first-appearance order."""
        seen: dict = {}
        for blocks in self.blocks:
            for b in blocks:
                seen.setdefault(b.op, None)
        return list(seen)


# --------------------------------------------------------------------------- input checks


def check_pe(text: str, width: int, height: int) -> tuple[int, int]:
    """'X,Y' -> (x, y) inside the mesh; ConfigError naming the valid range otherwise."""
    match = re.fullmatch(r"\s*(-?\d+)\s*,\s*(-?\d+)\s*", text or "")
    valid = f"x in 0..{width - 1}, y in 0..{height - 1}"
    if not match:
        raise ConfigError(f"--pe: expected X,Y ({valid}), got '{text}'")
    x, y = int(match.group(1)), int(match.group(2))
    if not (0 <= x < width and 0 <= y < height):
        raise ConfigError(f"--pe {x},{y} is outside the {width}x{height} mesh ({valid})")
    return x, y


# --------------------------------------------------------------------------- buffers


def ranges(values) -> str:
    """Sorted unique integers as '0-15, 32-47'."""
    values = sorted(set(int(v) for v in values))
    parts, k = [], 0
    while k < len(values):
        j = k
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[k]) if j == k else f"{values[k]}-{values[j]}")
        k = j + 1
    return ", ".join(parts) if parts else "none"


def _span(a: int, b: int) -> str:
    """Half-open [a, b) as 'a-(b-1)'."""
    return str(a) if b - a == 1 else f"{a}-{b - 1}"


def _rows_text(plan, matrix: str, layer: int | None, r0: int, r1: int) -> str:
    """Which rows of which HF tensors the output rows r0..r1-1 of `matrix` are."""
    spec, p = plan.spec, f"layers.{layer}." if layer is not None else ""
    hd = spec.head_dim
    if matrix == "qkv":
        idx = qkv_row_order(spec, plan)[r0:r1]
        q, k = idx[idx < spec.q_dim], idx[(idx >= spec.q_dim) & (idx < spec.q_dim + spec.kv_dim)]
        v = idx[idx >= spec.q_dim + spec.kv_dim]
        k, v = k - spec.q_dim, v - spec.q_dim - spec.kv_dim
        parts = [f"{p}{name}_proj rows {ranges(rows)} ({'heads' if name == 'q' else 'kv head'}"
                 f" {ranges(rows // hd)})" for name, rows in (("q", q), ("k", k), ("v", v))
                 if rows.size]
        return "; ".join(parts) + " (q, k rows in RoPE pair order)"
    if matrix == "gu":
        idx = gu_row_order(plan)[r0:r1]
        f = spec.intermediate_size
        return (f"{p}gate_proj rows {ranges(idx[idx < f])}; "
                f"{p}up_proj rows {ranges(idx[idx >= f] - f)}")
    if matrix == "lm_head":
        name = "embed_tokens (tied)" if spec.tie_word_embeddings else "lm_head"
        return f"{name} rows {_span(r0, r1)}"
    return f"{p}{'o_proj' if matrix == 'o' else 'down_proj'} rows {_span(r0, r1)}"


def _cols_text(plan, vector: str, c0: int, c1: int) -> str:
    """What input elements c0..c1-1 are."""
    if vector in ("attn", "heads_attn"):
        hd = plan.spec.head_dim
        if plan.bands is not None:
            cols = attn_col_order(plan)[c0:c1]
            return (f"attention output dims {ranges(cols % hd)} of q heads "
                    f"{ranges(sorted(set((cols // hd).tolist())))}")
        return f"cols {_span(c0, c1)} (attention output of q heads {_span(c0 // hd, -(-c1 // hd))})"
    return f"cols {_span(c0, c1)} of {vector}"


def matrix_slice(plan, matrix: str, layer: int | None, x: int, y: int) -> tuple[int, str]:
    """(elements held, description) of PE (x, y)'s tile of `matrix`."""
    t = plan.matrices[matrix]
    po, pi = (y, x) if t.kind == "A" else (x, y)
    out, inp = plan.vec(t.out), plan.vec(t.inp)
    r0, r1, c0, c1 = out.start(po), out.start(po + 1), inp.start(pi), inp.start(pi + 1)
    if r1 == r0 or c1 == c0:
        return 0, f"empty tile ({r1 - r0} x {c1 - c0})"
    return ((r1 - r0) * (c1 - c0),
            f"{r1 - r0} x {c1 - c0} tile, column-major: {_rows_text(plan, matrix, layer, r0, r1)};"
            f" {_cols_text(plan, t.inp, c0, c1)}")


def _vector_slice(plan, vector: str, on: bool, index: int, what: str) -> tuple[int, str]:
    """(elements, description) of a chunk of an R or C vector held by one PE."""
    chunks = plan.vec(vector)
    if not on:
        return 0, f"unused here ({'top row' if chunks.axis == 'R' else 'left column'} only)"
    a, b = chunks.start(index), chunks.start(index + 1)
    return b - a, f"{what}, elements {_span(a, b) if b > a else 'none'}"


def _kv_slice(dp, layer: int, which: str, a: int, x: int, y: int) -> tuple[int, str]:
    """(elements, description) of a KV cache buffer on PE (x, y)."""
    plan, slots = dp.plan, dp.placement.slots
    first, count = plan.groups_on_row(y)
    if a >= count:
        return 0, f"unused here (row {y} holds {count} kv group(s))"
    hd, pw = plan.spec.head_dim, plan.pw
    last = x + (slots - 1) * pw
    return (slots * hd, f"{'keys (after RoPE)' if which == 'k' else 'values'} of layer "
                        f"{layer}, kv head {first + a}: positions {x}, {x + pw}, ..., {last} "
                        f"(slot s = position s*{pw}+{x}), {slots} slots x {hd}")


def _spread_kv_slice(dp, layer: int, which: str, x: int, y: int) -> tuple[int, str]:
    """(elements, description) of a spread-layout KV buffer on PE (x, y)."""
    plan, slots = dp.plan, dp.placement.slots
    bands, hd, pw = plan.bands, plan.spec.head_dim, plan.pw
    r = bands.local(y)
    if r < 0:
        return 0, f"unused here (row {y} is outside the bands)"
    if which == "k":
        p = list(range(bands.kp0[r], bands.kp0[r] + bands.kp[r]))
        dims = sorted(p + [d + hd // 2 for d in p])
    else:
        dims = list(range(bands.v0[r], bands.v0[r] + bands.nv[r]))
    if not dims:
        return 0, f"unused here (row {y} holds no {'key' if which == 'k' else 'value'} dims)"
    return (len(dims) * slots, f"{'keys (after RoPE)' if which == 'k' else 'values'} of layer "
            f"{layer}, kv head {bands.group(y)}, dims {ranges(dims)}: positions {x}, "
            f"{x + pw}, ... (slot s = position s*{pw}+{x}), dim-major, {slots} slots + 1 "
            "spare per dim")


def buffer_slice(dp, name: str, x: int, y: int) -> tuple[int, str]:
    """(elements PE (x, y) uses in buffer `name`, what they are)."""
    plan = dp.plan
    layer, _, part = name.partition(".") if name.startswith("L") and "." in name else (
        None, "", name)
    number = int(layer[1:]) if layer else None
    hf = f"layers.{number}." if layer else "model."
    if part in plan.matrices:
        return matrix_slice(plan, part, number, x, y)
    if part in ("k", "v") and plan.bands is not None:
        return _spread_kv_slice(dp, number, part, x, y)
    if re.fullmatch(r"[kv]\d+", part):
        return _kv_slice(dp, number, part[0], int(part[1:]), x, y)
    vectors = {"norm_in": ("hidden", f"{hf}input_layernorm.weight"),
               "norm_post": ("hidden", f"{hf}post_attention_layernorm.weight"),
               "norm_final": ("hidden", "model.norm.weight"),
               "o_bias": ("hidden", f"{hf}o_proj.bias"),
               "down_bias": ("hidden", f"{hf}down_proj.bias"),
               "qkv_bias": ("qkv", f"{hf}q/k/v_proj.bias in q/k/v-vector order"),
               "gu_bias": ("gu", f"{hf}gate/up_proj.bias in gate/up-vector order")}
    if part in vectors:
        vector, what = vectors[part]
        axis = plan.vec(vector).axis
        on, index = (y == 0, x) if axis == "R" else (x == 0, y)
        return _vector_slice(plan, vector, on, index, what)
    words = dp.placement.maps[pe_class(plan, x, y)][name].words
    return words, BUFFER_DOC.get(name, "scratch")


def buffer_rows(dp, x: int, y: int) -> list[dict]:
    """Every buffer of PE (x, y)'s address map (its SRAM class), in address order."""
    nb = DTYPE_BYTES[dp.placement.dtype]
    rows = []
    buffers = dp.placement.maps[pe_class(dp.plan, x, y)]
    for name, buf in sorted(buffers.items(), key=lambda kv: kv[1].addr):
        used, holds = buffer_slice(dp, name, x, y)
        rows.append({"name": name, "addr": buf.addr, "words": buf.words, "kind": buf.kind,
                     "bytes": buf.words * nb, "used": used * nb, "holds": holds})
    return rows


# --------------------------------------------------------------------------- routes


def flow_part(name: str, x: int, y: int, pw: int, ph: int) -> tuple[str, str]:
    """(flow, this PE's part in it) of PE (x, y)'s router entry on the color `name`."""
    if name in ("MC", "MR"):
        column = name == "MC"
        pos, size = (y, ph) if column else (x, pw)
        source = f"({x},0)" if column else f"({0},{y})"
        flow = f"{name}: {source} multicasts along its {'column' if column else 'row'}"
        ahead = "S" if column else "E"
        part = ("source" if pos == 0 else
                f"receives and forwards {ahead}" if pos < size - 1 else "receives (end)")
        return flow, part
    if name == "MB":
        return ("MB: each band's top row multicasts the softmax weights down its column to "
                "the band rows holding value dims", "band multicast")
    s = int(name[3:])
    d = 1 << s
    pos = x if name.startswith("ROW") else y
    r = pos % (2 * d)
    sender, receiver = pos - r + d, pos - r
    at = ((lambda p: f"({p},{y})") if name.startswith("ROW") else (lambda p: f"({x},{p})"))
    flow = f"{name}: tree step {s}, {at(sender)} -> {at(receiver)}"
    part = "sends" if r == d else "receives" if r == 0 else "forwards"
    return flow, part


def comm_ops(program: Program, index: OpIndex, region: int) -> dict:
    """color -> {'send': [op, ...], 'recv': [...]} of a region's communication, in order."""
    out: dict = {}
    for pc, ins in enumerate(program.region_code(region)):
        op = Op(int(ins["op"]))
        if op not in (Op.SEND, Op.RECV, Op.RECVADD):
            continue
        color = int(ins["a"][SLOT_COLOR])
        block = index.block(region, pc)
        name = block.op if block else f"pc {pc}"
        out.setdefault(color, {"send": [], "recv": []})[
            "send" if op == Op.SEND else "recv"].append(name)
    return out


def _ops_text(ops: list[str]) -> str:
    """'4 x: qkv, gate_up (per layer), lm_head' from a list of op names."""
    bare: dict = {}
    for op in ops:
        bare.setdefault(re.sub(r"^L\d+\.", "", op), None)
    return f"{len(ops)} msg: " + ", ".join(bare)


def route_rows(dp, program: Program, index: OpIndex, x: int, y: int) -> list[dict]:
    """Router entries of PE (x, y) per color with flow, part and the ops using it."""
    pe = y * program.width + x
    names = {c: n for n, c in dp.routes.colors.items()}
    region = int(program.pe_region[pe])
    comm = comm_ops(program, index, region) if region >= 0 else {}
    rows = []
    for c in range(program.num_colors):
        rx, tx = int(program.route_rx[pe, c]), int(program.route_tx[pe, c])
        if not (rx or tx):
            continue
        name = names.get(c, f"c{c}")
        flow, part = flow_part(name, x, y, program.width, program.height)
        used = comm.get(c, {"send": [], "recv": []})
        carries = "; ".join(f"{kind} {_ops_text(ops)}" for kind, ops in used.items() if ops)
        rows.append({"color": c, "name": name, "rx": format_ports(rx), "tx": format_ports(tx),
                     "flow": flow, "part": part, "ops": carries or "only forwards"})
    return rows


def param_rows(dp, program: Program, x: int, y: int) -> list[dict]:
    """PE (x, y)'s parameters %pK: name, value, meaning."""
    pe = y * program.width + x
    rows = []
    for k, name in enumerate(dp.param_names):
        meaning = PARAM_DOC.get(name, "even layout: relayout address / length on the left "
                                      "column" if "." in name else "")
        rows.append({"param": f"%p{k}", "name": name, "value": program.param(pe, k),
                     "meaning": meaning})
    return rows


# --------------------------------------------------------------------------- program


class AddressNames:
    """SRAM element address -> 'BUFFER' or 'BUFFER+offset' in one address map: PE (x, y)'s
    class map when given (each PE class lays its buffers out on its own,
    compiler/place.py), else the placement's union of first holders."""

    def __init__(self, placement, x: int | None = None, y: int | None = None):
        buffers = (placement.maps[pe_class(placement.plan, x, y)]
                   if x is not None and placement.maps else placement.buffers)
        items = sorted((b.addr, name) for name, b in buffers.items() if b.words)
        self.addrs = [a for a, _ in items]
        self.names = [n for _, n in items]
        self.words = {n: buffers[n].words for n in self.names}

    def name(self, addr: int) -> str:
        """The buffer holding `addr`, with the offset into it."""
        k = bisect.bisect_right(self.addrs, addr) - 1
        if k < 0 or addr >= self.addrs[k] + self.words[self.names[k]]:
            return str(addr)
        offset = addr - self.addrs[k]
        return self.names[k] + (f"+{offset}" if offset else "")


_OPERAND_LABEL = {"dst": "dst", "rdst": "dst", "src0": "a", "src1": "b"}


def operand_notes(ins, program: Program, pe: int, param_names: list,
                  names: AddressNames | None) -> str:
    """'dst ACC, a L0.qkv+64, b XN; %p0 m_qkv=64' for one instruction on one PE."""
    op = Op(int(ins["op"]))
    notes = []
    for kind in SIGNATURES[op]:
        if kind in DESCRIPTOR_SLOTS and names is not None:
            slot = DESCRIPTOR_SLOTS[kind][0]
            mode, reg = slot_mode(ins["modes"], slot)
            if mode != MODE_PARAM:
                where = names.name(int(ins["a"][slot]))
                notes.append(f"{_OPERAND_LABEL[kind]} {f'r{reg}+' if mode == MODE_REG else ''}"
                             f"{where}")
    params = []
    for slot in range(NUM_SLOTS):
        mode, _ = slot_mode(ins["modes"], slot)
        if mode == MODE_PARAM:
            k = int(ins["a"][slot])
            label = param_names[k] if k < len(param_names) else f"p{k}"
            params.append(f"%p{k} {label}={program.param(pe, k)}")
    return "; ".join(part for part in (", ".join(notes), ", ".join(params)) if part)


def block_matches(block: Block | None, op: str | None) -> bool:
    """True when no filter is given or `op` occurs in the block's name or comment."""
    if op is None:
        return True
    return block is not None and (op.lower() in block.op.lower()
                                  or op.lower() in block.comment.lower())


def check_op(index: OpIndex, region: int, op: str | None) -> None:
    """ConfigError listing the region's op names when `op` matches none of its blocks."""
    if op is None or region < 0:
        return
    blocks = index.blocks[region]
    if not any(block_matches(b, op) for b in blocks):
        names = ", ".join(dict.fromkeys(b.op for b in blocks)) or "none"
        raise ConfigError(f"--op {op} matches no op of this PE's program; ops: {names}")


def program_listing(program: Program, index: OpIndex, x: int, y: int,
                    param_names: list | None = None, placement=None,
                    op: str | None = None) -> list[str]:
    """PE (x, y)'s code: block comments, then `pc  instruction  ; notes` lines (only the
    blocks matching `op` when given)."""
    pe = y * program.width + x
    region = int(program.pe_region[pe])
    if region < 0:
        return [f"; PE ({x},{y}) is idle: it runs no code"]
    code = program.region_code(region)
    sharing = int((program.pe_region == region).sum())
    names = AddressNames(placement, x, y) if placement is not None else None
    starts = {b.start: b for b in index.blocks[region]}
    lines = [f"; PE ({x},{y}) runs region {program.region_names[region]}: "
             f"{len(code)} instructions shared by {sharing} PE(s)"]
    for pc, ins in enumerate(code):
        if not block_matches(index.block(region, pc), op):
            continue
        if pc in starts:
            lines.append(f"       ; [{starts[pc].op}] {starts[pc].comment}")
        text = format_instruction(ins, program.mark_names)
        notes = operand_notes(ins, program, pe, param_names or [], names)
        lines.append(f"{pc:>5}  {text:<42} ; {notes}" if notes else f"{pc:>5}  {text}")
    return lines


# --------------------------------------------------------------------------- timeline


def pe_events(program: Program, mesh: MeshConfig, x: int, y: int,
              max_cycles: int = 10**9) -> tuple[list, int]:
    """(PE (x, y)'s events in execution order, program cycles) from a timing-only run."""
    from isa.interpreter import run_reference

    result = run_reference(program, mesh, functional=False, max_cycles=max_cycles,
                           record_events=True)
    return [e for e in result.events if (e.x, e.y) == (x, y)], int(result.cycles)


def busy_cycles(event, overhead: int) -> int:
    """Cycles the PE worked on an event (a receive's wait for data excluded)."""
    if event.text.startswith("recv"):
        match = _COUNT.search(event.text)
        return overhead + (int(match.group(1)) if match else 0)
    return event.end - event.start


def timeline_rows(events: list, program: Program, index: OpIndex, overhead: int,
                  per_instruction: bool = False, op: str | None = None) -> list[dict]:
    """One row per op block run (consecutive events of one block) or per instruction
    (only the blocks matching `op` when given)."""
    rows: list[dict] = []
    for e in events:
        region = int(program.pe_region[e.y * program.width + e.x])
        block = index.block(region, e.pc)
        if not block_matches(block, op):
            continue
        key = e.pc if per_instruction else (block.start if block else 0)
        if not rows or rows[-1]["key"] != key:
            rows.append({"key": key, "op": block.op if block else "",
                         "what": e.text if per_instruction else (
                             block.comment if block else "code"),
                         "first_pc": e.pc, "last_pc": e.pc, "start": e.start, "end": e.end,
                         "instrs": 0, "busy": 0, "detail": e.detail})
        row = rows[-1]
        row["last_pc"], row["end"] = e.pc, e.end
        row["instrs"] += 1
        row["busy"] += busy_cycles(e, overhead)
    for row in rows:
        row["wait"] = row["end"] - row["start"] - row["busy"]
    return rows

