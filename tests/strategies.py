"""Hypothesis strategies: random valid, deadlock-free mesh programs as assembly text.

`random_programs()` draws a mesh size (1..6 x 1..6) and a seed; `generate_program` turns
them into a `GeneratedProgram` (assembly text + the initial SRAM to run it with). The plan:

- *Phases* (communication): each has its own color; one source PE sends `n` wavelets
  (optionally `repeat` times, in a movr/djnz loop) along a straight row or column path;
  the last PE on the path and a random subset of the intermediate PEs receive (`recv` or
  `recvadd`); intermediate PEs forward (multicast: forward and deliver). Routes come from
  `.route` directives (idle forwarders too) or, for the sender, a `route` instruction.
- Every PE executes its phase roles in the same global order, so the program cannot
  deadlock; barriers are executed by every non-idle PE at the same point of that order.
- PEs with identical roles are grouped into regions (one or several rectangles) sharing
  code; per-PE parameters (p0 loop count, p1 B-zone address, p2 count, p3 A-zone
  address, p4 color) vary addresses, counts and loop trip counts inside a region.
- Compute blocks mix every vector and reduction op with random strides (0 = broadcast),
  lengths (0..8), constant / parameter / register addresses and movr/addr/djnz loops;
  `vgemv` gets 0..4 columns (immediate, %p0 or r6) with column strides 0, 1, 2, m, m+1
  or -m; `vgemm` 0..3 rows of 0..4 columns (batch immediate or r6); `rep` R x S (0..3
  each) copies of a vector op or reduction with address steps per copy.
- `mark` probes (names from MARK_NAMES) sometimes precede or follow steps and sit inside
  loops; some programs declare a shuffled `.marks` subset (possibly with names no
  instruction uses) so ids follow that order, then first appearance.

Values stay finite: SRAM zone A = [0, 32) holds inputs in [0.5, 2] and is never written;
ops that can grow values (vadd vsub vmul vfma vscale vaddi vexp vrsqrt vrecip rsum rdot
vgemv)
read only zone A and write zone B = [32, 96); vmov vmax rmax rargmax vsigmoid and send
read anywhere; `ldr r5` loads a zone-A value (0..2 after truncation) that addresses a
one-element `vmov` into zone B. Accumulation (vfma, recvadd) therefore grows values at
most geometrically in the number of executed instructions, far below the fp32 range.
"""

import random
from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

from isa.disasm import cover

SRAM_WORDS = 96
A_END = 32                  # zone A: read-only inputs [0, A_END)
B_START, B_END = 32, 96     # zone B: results
NUM_PARAMS = 5
NUM_COLORS = 24
MAX_N = 8
DIRS = {"N": (0, -1), "E": (1, 0), "S": (0, 1), "W": (-1, 0)}
OPPOSITE = {"N": "S", "S": "N", "E": "W", "W": "E"}
GROWING = ("vadd", "vsub", "vmul", "vfma", "vscale", "vaddi", "vexp", "vrsqrt", "vrecip",
           "rsum", "rdot", "vgemv", "vgemm")
PRESERVING = ("vmov", "vmax", "rmax", "vsigmoid", "rargmax")
IMMS = ("0.5", "-1.25", "2", "0.001", "-0.0", "1.5e-2", "-2", "0.75")
MARK_NAMES = ("L0.attn", "L0.mlp", "L1.attn", "step_end", "send-phase", "x")


class GeneratedProgram(NamedTuple):
    """A random program: assembly `text`, initial `sram` float32 [W*H, sram_words]."""

    text: str
    sram: np.ndarray
    width: int
    height: int
    seed: int


class Phase(NamedTuple):
    """One communication phase (see module docstring)."""

    color: int
    source: tuple[int, int]
    direction: str
    path: list
    receivers: dict         # (x, y) -> "recv" | "recvadd"
    n: int
    repeat: int
    runtime_route: bool


def random_programs(max_width: int = 6, max_height: int = 6):
    """Strategy of `GeneratedProgram`s on meshes of 1..max_width x 1..max_height PEs."""
    return st.builds(generate_program, st.integers(1, max_width), st.integers(1, max_height),
                     st.integers(0, 2**32 - 1))


def generate_program(width: int, height: int, seed: int) -> GeneratedProgram:
    """A valid, deadlock-free random program for a width x height mesh (deterministic)."""
    rng = random.Random(seed)
    phases = _phases(rng, width, height)
    steps = _steps(rng, len(phases))
    grid, signatures = _regions(rng, width, height, phases)
    sram = _initial_sram(seed, width * height)
    lines = [f"; random program seed={seed}", f".mesh {width}x{height}",
             f".dtype {rng.choice(['fp32', 'fp32', 'fp16', 'bf16'])}",
             f".sram {SRAM_WORDS}", f".params {NUM_PARAMS}"]
    if rng.random() < 0.3:
        lines.append(".marks " + " ".join(rng.sample(MARK_NAMES, rng.randint(1, 4))))
    lines += _idle_routes(phases, grid)
    for index, rects in enumerate(_region_rects(rng, grid)):
        writer = RegionWriter(rng, index, rects, signatures[rects[0][4]], phases, width)
        lines += writer.write(steps, sram)
    return GeneratedProgram("\n".join(lines) + "\n", sram, width, height, seed)


def _region_rects(rng: random.Random, grid: np.ndarray) -> list[list]:
    """Rectangles of equal signature; sometimes those of one signature form one region."""
    rects = cover(grid, grid >= 0)
    if rng.random() < 0.5:
        return [[r] for r in rects]
    merged: dict = {}
    for rect in rects:
        merged.setdefault(rect[4], []).append(rect)
    return list(merged.values())


# --- plan ------------------------------------------------------------------------------
def _phases(rng: random.Random, width: int, height: int) -> list[Phase]:
    if width * height == 1:
        return []
    colors = rng.sample(range(NUM_COLORS), rng.randint(0, 6))
    phases = []
    for color in colors:
        while True:
            sx, sy = rng.randrange(width), rng.randrange(height)
            reach = {"E": width - 1 - sx, "W": sx, "S": height - 1 - sy, "N": sy}
            options = [d for d, r in reach.items() if r > 0]
            if options:
                break
        direction = rng.choice(options)
        dx, dy = DIRS[direction]
        length = rng.randint(1, reach[direction])
        path = [(sx + dx * i, sy + dy * i) for i in range(1, length + 1)]
        receivers = {pe: rng.choice(["recv", "recvadd"]) for pe in path[:-1]
                     if rng.random() < 0.4}
        receivers[path[-1]] = rng.choice(["recv", "recvadd"])
        phases.append(Phase(color, (sx, sy), direction, path, receivers,
                            rng.randint(1, MAX_N), rng.choice([1, 1, 1, 2, 3]),
                            rng.random() < 0.3))
    return phases


def _steps(rng: random.Random, num_phases: int) -> list[tuple]:
    """The global order: compute blocks, phases in order, sometimes barriers."""
    steps = []
    for i in range(num_phases):
        steps += [("compute",)] * rng.randint(0, 2)
        steps.append(("phase", i))
        if rng.random() < 0.15:
            steps.append(("barrier",))
    steps += [("compute",)] * rng.randint(1, 2)
    if rng.random() < 0.2:
        steps.insert(rng.randrange(len(steps) + 1), ("barrier",))
    return steps


def _regions(rng: random.Random, width: int, height: int, phases: list[Phase]):
    """Grid of signature ids (-1 idle) and the list of signatures (role per phase)."""
    roles = {}
    for i, phase in enumerate(phases):
        roles.setdefault(phase.source, {})[i] = "send"
        for pe, kind in phase.receivers.items():
            roles.setdefault(pe, {})[i] = kind
    idle_p = rng.choice([0.0, 0.0, 0.2, 0.5])
    cut_x, cut_y = rng.randint(0, width), rng.randint(0, height)
    ids: dict = {}
    grid = np.full((height, width), -1, np.int64)
    for y in range(height):
        for x in range(width):
            role = roles.get((x, y))
            if role is None and rng.random() < idle_p:
                continue
            key = (tuple(sorted(role.items())) if role else
                   ("free", x >= cut_x, y >= cut_y))
            grid[y, x] = ids.setdefault(key, len(ids))
    if (grid < 0).all():
        grid[0, 0] = ids.setdefault(("free", False, False), len(ids))
    signatures = [dict(key) if key and key[0] != "free" else {} for key in ids]
    return grid, signatures


def _route_entries(phases: list[Phase]) -> dict:
    """(x, y) -> list of (color, rx, tx) from `.route` directives (not runtime routes)."""
    entries: dict = {}
    for phase in phases:
        back = OPPOSITE[phase.direction]
        if not phase.runtime_route:
            entries.setdefault(phase.source, []).append((phase.color, "R", phase.direction))
        for pe in phase.path:
            out = [phase.direction] if pe != phase.path[-1] else []
            out += ["R"] if pe in phase.receivers else []
            entries.setdefault(pe, []).append((phase.color, back, "|".join(out)))
    return entries


def _idle_routes(phases: list[Phase], grid: np.ndarray) -> list[str]:
    """`.route ... at` lines for forwarders outside every region."""
    lines = []
    for (x, y), entries in sorted(_route_entries(phases).items()):
        if grid[y, x] < 0:
            lines += [f".route c{c} rx={rx} tx={tx} at {x},{y} {x},{y}" for c, rx, tx in entries]
    return lines


def _initial_sram(seed: int, num_pes: int) -> np.ndarray:
    gen = np.random.default_rng(seed)
    sram = np.empty((num_pes, SRAM_WORDS), np.float32)
    sram[:, :A_END] = gen.uniform(0.5, 2.0, (num_pes, A_END))
    sram[:, A_END:] = gen.uniform(-2.0, 2.0, (num_pes, SRAM_WORDS - A_END))
    return sram


# --- region code -----------------------------------------------------------------------
class RegionWriter:
    """Writes one region: directives, then code following the global step order."""

    def __init__(self, rng, index, rects, roles, phases, mesh_width):
        self.rng, self.index, self.rects = rng, index, [r[:4] for r in rects]
        self.roles, self.phases, self.mesh_width = roles, phases, mesh_width
        self.lines: list[str] = []
        self.labels = 0
        self.color_param = None
        self.free_regs = [2, 3, 4]

    def write(self, steps, sram) -> list[str]:
        corners = " ".join(f"{x0},{y0} {x1},{y1}" for x0, y0, x1, y1 in self.rects)
        self.lines = ["", f".region R{self.index} {corners}"]
        self.directives(sram)
        for step in steps:
            self.maybe_mark()
            if step[0] == "compute":
                self.compute_block()
            elif step[0] == "barrier":
                self.emit("barrier")
            else:
                self.phase(step[1])
        self.maybe_mark()
        if self.rng.random() < 0.7:
            self.emit("halt")
        return self.lines

    def maybe_mark(self, p: float = 0.15):
        """Sometimes a `mark` probe."""
        if self.rng.random() < p:
            self.emit(f"mark {self.rng.choice(MARK_NAMES)}")

    def emit(self, text: str):
        comment = "  ; note" if self.rng.random() < 0.05 else ""
        self.lines.append(f"    {text}{comment}")

    def label(self) -> str:
        self.labels += 1
        return f"L{self.labels}"

    # directives
    def pes(self) -> list[tuple[int, int]]:
        """(x, y) of every PE of the region."""
        return [(x, y) for x0, y0, x1, y1 in self.rects
                for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)]

    def directives(self, sram):
        pes = self.pes()
        for (x, y), entries in sorted(_route_entries(self.phases).items()):
            if (x, y) in pes:
                single = len(pes) == 1 and self.rng.random() < 0.5
                at = "" if single else f" at {x},{y} {x},{y}"
                self.lines += [f".route c{c} rx={rx} tx={tx}{at}" for c, rx, tx in entries]
        rng = self.rng
        exprs = [
            f"1 + ({rng.randint(0, 3)}*x + {rng.randint(0, 3)}*y + {rng.randint(0, 5)}) % 3",
            f"{B_START} + ({rng.randint(0, 5)}*lx + {rng.randint(0, 5)}*ly + w + H) % 16",
            f"(x*y + {rng.randint(0, 9)} + W) % {MAX_N + 1}",
            f"(lx // 2 + {rng.randint(1, 4)}*ly + h) % 8",
        ]
        for k, expr in enumerate(exprs):
            if k != 2 or rng.random() < 0.85:     # p0, p1, p3 must stay in range
                self.lines.append(f".param p{k} = {expr}")
        if rng.random() < 0.3:
            x, y = rng.choice(pes)
            self.lines.append(f".param p2 = {rng.randint(0, MAX_N)} at {x},{y} {x},{y}")
        first = min(self.roles, default=None)
        if first is not None and rng.random() < 0.5:
            self.color_param = first
            self.lines.append(f".param p4 = {self.phases[first].color}")
        if rng.random() < 0.4:
            self.data(sram)

    def data(self, sram):
        rng = self.rng
        count = rng.randint(1, 6)
        if rng.random() < 0.5:
            addr, low, high = rng.randint(0, A_END - count), 0.5, 2.0
        else:
            addr, low, high = rng.randint(B_START, B_END - count), -2.0, 2.0
        values = np.float32([round(rng.uniform(low, high), 3) for _ in range(count)])
        self.lines.append(f".data {addr} " + " ".join(str(v) for v in values))
        for x, y in self.pes():
            sram[y * self.mesh_width + x, addr:addr + count] = values

    # communication
    def phase(self, i: int):
        role = self.roles.get(i)
        if role is None:
            return
        phase = self.phases[i]
        color = "%p4" if self.color_param == i else f"c{phase.color}"
        if role == "send" and phase.runtime_route:
            self.emit(f"route {color}, R, {phase.direction}")
        n = self.count_operand(phase.n)
        self.free_regs = [2, 3, 4]
        if role == "send":
            stride = self.rng.choice([0, 1, 1, 2])
            base = self.rng.randint(0, SRAM_WORDS - 1 - (phase.n - 1) * stride)
            body = f"send {color}, {self.desc(base, stride)}, {n}"
        else:
            stride = self.rng.choice([1, 1, 2, 0])
            body = f"{role} {color}, {self.b_address(phase.n, stride)}, {n}"
        self.repeat(body, phase.repeat)

    def count_operand(self, n: int) -> str:
        if self.rng.random() < 0.3:
            self.emit(f"movr r6, {n}")
            return "r6"
        return str(n)

    def repeat(self, body: str, times: int):
        if times == 1:
            self.emit(body)
            return
        label = self.label()
        self.emit(f"movr r7, {times}")
        self.lines.append(f"{label}:")
        self.emit(body)
        self.maybe_mark(0.3)
        self.emit(f"djnz r7, {label}")

    # addresses
    @staticmethod
    def desc(base, stride, default=1) -> str:
        return f"[{base}]" if stride == default else f"[{base}:{stride}]"

    def b_address(self, n_max: int, stride: int) -> str:
        """A destination in zone B: constant, %p1 or a register form."""
        choice = self.rng.random()
        if choice < 0.3 and 47 + max(n_max - 1, 0) * stride < B_END:
            return self.desc("%p1", stride)
        span = max(n_max - 1, 0) * stride
        base = self.rng.randint(B_START, B_END - 1 - span)
        if choice < 0.5 and self.free_regs:
            reg = self.free_regs.pop(0)
            offset = self.rng.randint(-4, 4)
            self.emit(f"movr r{reg}, {base - offset}")
            sign = "+" if offset >= 0 else "-"
            return self.desc(f"r{reg}{sign}{abs(offset)}", stride)
        return self.desc(base, stride)

    def a_address(self, n_max: int, stride: int) -> str:
        """A source in zone A: constant or %p3."""
        if self.rng.random() < 0.3 and 7 + max(n_max - 1, 0) * stride < A_END:
            return self.desc("%p3", stride)
        return self.desc(self.rng.randint(0, A_END - 1 - max(n_max - 1, 0) * stride), stride)

    def any_address(self, n_max: int, stride: int) -> str:
        if self.rng.random() < 0.5:
            return self.a_address(n_max, stride)
        return self.b_address(n_max, stride)

    # compute
    def compute_block(self):
        rng = self.rng
        choice = rng.random()
        if choice < 0.2:
            self.loop_block()
        elif choice < 0.25:
            label = self.label()
            self.emit(f"jmp {label}")
            self.emit("vset [40], 3, 9.0")
            self.lines.append(f"{label}:")
        for _ in range(rng.randint(1, 3)):
            self.compute_op()
        if rng.random() < 0.1:
            self.emit("nop")

    def compute_op(self):
        rng = self.rng
        self.free_regs = [2, 3, 4]     # one address register per operand
        op = rng.choice(GROWING + PRESERVING + ("vset", "ldr", "rep"))
        if op == "rep":
            self.rep_op()
            return
        if op == "ldr":   # a zone-A value (0.5 .. 2) truncated to 0..2 addresses zone B
            self.emit(f"ldr r5, [{rng.randint(0, A_END - 1)}]")
            self.emit(f"vmov [r5+{B_START + 8}], {self.any_address(1, 1)}, 1")
            return
        n_text, n_max = self.count()
        if op == "vgemv":
            self.gemv(n_text, n_max)
            return
        if op == "vgemm":
            self.gemm(n_text, n_max)
            return
        source = self.a_address if op in GROWING else self.any_address
        strides = [rng.choice([0, 1, 1, 1, 2, 3]) for _ in range(3)]
        if op in ("rsum", "rmax", "rdot", "rargmax"):
            dst = f"[{rng.randint(B_START, B_END - 1)}]"
        else:
            dst = self.b_address(n_max, rng.choice([1, 1, 2, 0]))
        sources = [source(n_max, s) for s in strides[:2]]
        imm = rng.choice(IMMS)
        operands = {
            "vset": [dst, n_text, imm],
            "vscale": [dst, sources[0], n_text, imm],
            "vaddi": [dst, sources[0], n_text, imm],
        }.get(op)
        if operands is None:
            two = op in ("vadd", "vsub", "vmul", "vmax", "vfma", "rdot")
            operands = [dst] + sources[:2 if two else 1] + [n_text]
        self.emit(f"{op} " + ", ".join(operands))

    def rep_op(self):
        """rep R, S (0..3 each: immediate, %p0 = 1..3, or r6 / r5) of a vector op or reduction
        over 0..4 elements, with address steps 0..3 (immediate or %p0) per outer and per
        inner copy; every copy reads zone A (growing ops) or anywhere, writes zone B."""
        rng = self.rng
        op = rng.choice(tuple(o for o in GROWING + PRESERVING + ("vset",)
                              if o not in ("vgemv", "vgemm")))
        counts, steps = [], []
        for reg in ("r6", "r5"):
            count = rng.randint(0, 3)
            if rng.random() < 0.2:
                counts.append(("%p0", 3))
            elif rng.random() < 0.2:
                self.emit(f"movr {reg}, {count}")
                counts.append((reg, count))
            else:
                counts.append((str(count), count))
        for _ in range(6):
            step = rng.choice([0, 1, 1, 2, 3])
            steps.append(("%p0", 3) if rng.random() < 0.15 else (str(step), step))
        n = rng.randint(0, 4)
        reduction = op in ("rsum", "rmax", "rdot", "rargmax")
        strides = [0 if reduction else rng.choice([0, 1, 1, 2]),
                   rng.choice([0, 1, 1, 2]), rng.choice([0, 1, 1, 2])]
        (r_text, r_max), (s_text, s_max) = counts
        reach = [max(n - 1, 0) * strides[i] + max(r_max - 1, 0) * steps[i][1]
                 + max(s_max - 1, 0) * steps[3 + i][1] for i in range(3)]
        zone_a = op in GROWING
        bases = [rng.randint(B_START, B_END - 1 - reach[0]) if reach[0] < B_END - B_START
                 else None]
        for r in reach[1:]:
            low, high = (0, A_END) if zone_a or rng.random() < 0.5 else (B_START, B_END)
            bases.append(rng.randint(low, high - 1 - r) if r < high - low else None)
        if None in bases:
            return
        descs = [self.desc(b, st) for b, st in zip(bases, strides, strict=True)]
        imm = rng.choice(IMMS)
        operands = {"vset": [descs[0], str(n), imm],
                    "vscale": [descs[0], descs[1], str(n), imm],
                    "vaddi": [descs[0], descs[1], str(n), imm]}.get(op)
        if operands is None:
            two = op in ("vadd", "vsub", "vmul", "vmax", "vfma", "rdot")
            operands = descs[:3 if two else 2] + [str(n)]
        self.emit(f"rep {r_text}, {s_text}, " + ", ".join(t for t, _ in steps))
        self.emit(f"{op} " + ", ".join(operands))

    def gemv(self, m_text: str, m_max: int):
        """vgemv [dst in B], [W:ld in A], [x:sx in A], m, k (k immediate, %p0 or r6)."""
        rng = self.rng
        choice = rng.random()
        if choice < 0.2:
            k_text, k_max = "%p0", 3
        else:
            k = rng.randint(0, 4)
            k_text, k_max = str(k), k
            if choice < 0.35:
                self.emit(f"movr r6, {k}")
                k_text = "r6"
        ld = rng.choice([0, 1, 2, max(m_max, 1), m_max + 1, -max(m_max, 1)])
        reach = max(k_max - 1, 0) * abs(ld) + max(m_max - 1, 0)
        if reach >= A_END:
            ld = rng.choice([0, 1])
            reach = max(k_max - 1, 0) * ld + max(m_max - 1, 0)
        low = max(k_max - 1, 0) * -ld if ld < 0 else 0
        base = rng.randint(low, low + A_END - 1 - reach)
        dst = self.b_address(m_max, rng.choice([1, 1, 2, 0]))
        x = self.a_address(k_max, rng.choice([0, 1, 1, 2]))
        self.emit(f"vgemv {dst}, {self.desc(base, ld)}, {x}, {m_text}, {k_text}")

    def gemm(self, m_text: str, m_max: int):
        """vgemm [dst in B], [W:ld in A], [x:sx in A], m, k, b: b (0..3, immediate or
        r6) rows of k (0..4) contiguous x elements sx apart, b * m contiguous results."""
        rng = self.rng
        k, batch = rng.randint(0, 4), rng.randint(0, 3)
        b_text = str(batch)
        if rng.random() < 0.2:
            self.emit(f"movr r6, {batch}")
            b_text = "r6"
        ld = rng.choice([0, 1, max(m_max, 1), m_max + 1])
        reach = max(k - 1, 0) * ld + max(m_max - 1, 0)
        if reach >= A_END:
            ld, reach = 1, max(k - 1, 0) + max(m_max - 1, 0)
        w = rng.randint(0, A_END - 1 - reach)
        sx = rng.choice([0, 1, k, k + 1])
        x_reach = max(batch - 1, 0) * sx + max(k - 1, 0)
        x = rng.randint(0, A_END - 1 - x_reach)
        dst = self.b_address(m_max * max(batch, 1), 1)
        self.emit(f"vgemm {dst}, {self.desc(w, ld)}, {self.desc(x, sx)}, {m_text}, {k}, "
                  f"{b_text}")

    def count(self) -> tuple[str, int]:
        """An element count operand and its largest value."""
        choice = self.rng.random()
        if choice < 0.2:
            return "%p2", MAX_N
        n = self.rng.randint(0, MAX_N)
        if choice < 0.35:
            self.emit(f"movr r5, {n}")
            return "r5", n
        return str(n), n

    def loop_block(self):
        """movr/addr/djnz loop writing a moving window of zone B."""
        rng = self.rng
        count = "%p0" if rng.random() < 0.5 else str(rng.randint(1, 3))
        step, n, stride = rng.randint(0, 4), rng.randint(1, 4), rng.choice([1, 2])
        base = rng.randint(B_START, B_END - 1 - 2 * step - (n - 1) * stride)
        label = self.label()
        self.emit(f"movr r0, {count}")
        self.emit(f"movr r1, {base}")
        self.lines.append(f"{label}:")
        op = rng.choice(("vfma", "vmul", "vexp", "vsigmoid", "vadd"))
        srcs = [self.a_address(n, rng.choice([0, 1])) for _ in range(2)]
        srcs = srcs if op in ("vfma", "vmul", "vadd") else srcs[:1]
        self.maybe_mark(0.3)
        self.emit(f"{op} {self.desc('r1', stride)}, {', '.join(srcs)}, {n}")
        self.emit(f"addr r1, {step}")
        self.emit(f"djnz r0, {label}")
