"""`emu step FILE|CONFIG`: replay a mesh run event by event, in time order.

    emu step FILE.asm [--mesh WxH] [--hw NAME] [--values] ...
    emu step CONFIG [--hw small] [--mesh WxH] [--dtype] [--position P] [--token T]
                    [--seed N | --values] ...
    common: [--steps N] [--until CYCLE] [--pe X,Y] [--op NAME] [--max-cycles N]

FILE is a mesh assembly file; CONFIG a model config (`.json` or a bundled name such as
`tiny`), compiled for one decode step on a small mesh (the `small` preset, 32 x 32, or
`--mesh`). The run is the reference interpreter's (isa/reference.py), recorded by
`RecordingMachine`, which also keeps the values each instruction wrote or sent. Events
print in time order (start cycle, then PE index), one line each: the cycles, the PE, the
pc, the op block it belongs to (models), the instruction and where its message went or
came from; then the messages in flight at that cycle, and, in functional mode, the values.

Models run timing-only unless `--seed N` (random weights of that seed, a random prompt of
`--position` tokens prefilled by the numpy reference) or `--values` (seed 0) asks for
values. Filters: `--pe X,Y` (events of one PE, messages to or from it), `--op NAME`
(events of the op blocks whose name or comment contains NAME, e.g. `attn`, `L1.qkv`,
`RoPE`). `--until CYCLE` stops after the events starting at or before CYCLE; `--steps N`
after N events. Without `--steps`/`--until` on a terminal it is interactive: Enter shows
the next event, `c N` continues to cycle N, `q` quits. Bad values exit with status 2
naming the valid range.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from emulator import cli_asm
from emulator.errors import ConfigError, MeshFault
from emulator.explain import OpIndex, check_pe
from emulator.hw.mesh import MeshConfig
from isa.opcodes import (
    REDUCTION_OPS,
    SLOT_DST,
    SLOT_DST_STRIDE,
    SLOT_N,
    SLOT_SRC0,
    SLOT_SRC0_STRIDE,
    VECTOR_OPS,
    Op,
)
from isa.program import Program, RunResult
from isa.reference import ReferenceMachine

_ARRIVAL = re.compile(r"\((\d+),(\d+)\) last wavelet at (\d+)")
_COLOR = re.compile(r"\bc(\d+)\b")
SHOWN_IN_FLIGHT = 6
SHOWN_VALUES = 6
HELP = "Enter: next event, c N: continue to cycle N, q: quit"


# --------------------------------------------------------------------------- recording


class RecordingMachine(ReferenceMachine):
    """The reference interpreter, also keeping per event the values the instruction wrote
    (vector ops, reductions, receives) or sent (sends); None in timing-only mode."""

    def __init__(self, program: Program, mesh: MeshConfig, sram, functional: bool,
                 max_cycles: int, in_place: bool = False):
        super().__init__(program, mesh, sram, functional, max_cycles, True, in_place)
        self.values: list = []

    def record(self, pe: int, start: int, pc: int, text: str, detail: str = ""):
        super().record(pe, start, pc, text, detail)
        self.values.append(self.moved(pe, pc) if self.functional else None)

    def moved(self, pe: int, pc: int) -> np.ndarray | None:
        """Values instruction `pc` of PE `pe` just wrote or sent (after it executed)."""
        ins = self.p.region_code(int(self.p.pe_region[pe]))[pc]
        op = Op(int(ins["op"]))
        if op == Op.SEND:
            slots = (SLOT_SRC0, SLOT_SRC0_STRIDE)
        elif op in VECTOR_OPS or op in REDUCTION_OPS or op in (Op.RECV, Op.RECVADD):
            slots = (SLOT_DST, SLOT_DST_STRIDE)
        else:
            return None
        n = 1 if op in REDUCTION_OPS else self.operand(pe, ins, SLOT_N)
        return self.sram[pe, self.descriptor(pe, ins, *slots, n)].copy()


@dataclass
class Recording:
    """A recorded run: events in time order, the values of each, the outcome."""

    program: Program
    events: list
    values: list
    cycles: int | None           # None when the run faulted
    fault: MeshFault | None
    ops: OpIndex
    note: str = ""               # what was run (model, mesh, position, mode)


def record_run(program: Program, mesh: MeshConfig, sram, functional: bool, max_cycles: int,
               in_place: bool = False
               ) -> tuple[RecordingMachine, RunResult | None, MeshFault | None]:
    """Run to the end or to a fault: (machine, result or None, fault or None); the
    machine keeps the events either way."""
    machine = RecordingMachine(program, mesh, sram, functional, max_cycles, in_place)
    try:
        return machine, machine.run(), None
    except MeshFault as fault:
        return machine, None, fault


def recording_of(machine: RecordingMachine, result: RunResult | None,
                 fault: MeshFault | None, note: str = "") -> Recording:
    """Events and values in time order (start cycle, PE index, execution order)."""
    program = machine.p
    events = machine.events or []
    order = sorted(range(len(events)), key=lambda k: (
        events[k].start, events[k].y * program.width + events[k].x, k))
    cycles = None if result is None else int(result.cycles)
    return Recording(program, [events[k] for k in order], [machine.values[k] for k in order],
                     cycles, fault, OpIndex(program), note)


def record_assembly(path: str, mesh_text, hw: str, functional: bool,
                    max_cycles: int) -> Recording:
    """Assemble and record FILE."""
    program, mesh = cli_asm.load_program(path, mesh_text, hw)
    return recording_of(*record_run(program, mesh, None, functional, max_cycles))


def record_model(config: str, hw: str, mesh_text, dtype: str, layout: str, max_context,
                 position: int, token: int, seed: int | None, max_cycles: int) -> Recording:
    """Compile CONFIG and record one decode step (functional when `seed` is given)."""
    from compiler.decode import compile_decode
    from emulator.cli_map import load_target

    spec, mesh, name = load_target(config, hw, mesh_text)
    if not 0 <= token < spec.vocab_size:
        raise ConfigError(f"--token {token} is outside the vocabulary 0..{spec.vocab_size - 1}")
    mode = "timing-only" if seed is None else f"functional, seed {seed}, token {token}"
    note = f"{name} on {mesh.name} {mesh.width}x{mesh.height}, decode position {position} ({mode})"
    if seed is None:
        compiled = compile_decode(spec, mesh, dtype, max_context, layout)
        program = compiled.decode.for_position(_check_position(position, compiled))
        return recording_of(*record_run(program, mesh, None, False, max_cycles), note)
    decoder = _seeded_decoder(spec, mesh, dtype, layout, max_context, position, seed)
    runs = []

    def run(program, mesh, sram=None, functional=True, in_place=False):
        """MeshDecoder's engine hook: the recording reference interpreter."""
        runs.append(record_run(program, mesh, sram, functional, max_cycles, in_place))
        _, result, fault = runs[-1]
        if fault is not None:
            raise fault
        return result

    decoder.run = run
    try:
        decoder.step(token, position)
    except MeshFault:
        pass
    return recording_of(*runs[-1], note)


def _seeded_decoder(spec, mesh, dtype, layout, max_context, position: int, seed: int):
    """A MeshDecoder with seeded random weights whose KV cache holds `position` tokens of a
    seeded random prompt (prefilled by the numpy reference)."""
    from compiler import reference
    from compiler.decode import MeshDecoder
    from compiler.weights import random_weights

    decoder = MeshDecoder(spec, random_weights(spec, seed), mesh, dtype, engine="reference",
                          max_context=max_context, layout=layout)
    _check_position(position, decoder.compiled)
    if position:
        prompt = np.random.default_rng(seed).integers(0, spec.vocab_size, position)
        _, cache = reference.prefill(spec, decoder.weights, prompt)
        decoder.load_kv(cache)
    return decoder


def _check_position(position: int, compiled) -> int:
    """ConfigError unless 0 <= position < max_context."""
    limit = compiled.placement.max_context
    if not 0 <= position < limit:
        raise ConfigError(f"--position {position} is outside the KV capacity 0..{limit - 1}")
    return position


# --------------------------------------------------------------------------- formatting


def message_records(event) -> list[dict]:
    """Messages started by a send event, from its text and arrival detail."""
    if not event.text.startswith("send"):
        return []
    color = _COLOR.search(event.text)
    return [{"sent": event.start, "arrives": int(t) + 1,
             "color": color.group(1) if color else "?", "src": (event.x, event.y),
             "dst": (int(x), int(y))} for x, y, t in _ARRIVAL.findall(event.detail)]


class Messages:
    """Every message of a run (from its send events), queried by cycle and PE."""

    def __init__(self, events: list):
        self.records = [m for e in events for m in message_records(e)]
        columns = {key: np.array([m[key] for m in self.records], np.int64).reshape(-1, 2)
                   if key in ("src", "dst") else
                   np.array([m[key] for m in self.records], np.int64)
                   for key in ("sent", "arrives", "src", "dst")}
        self.sent, self.arrives = columns["sent"], columns["arrives"]
        self.src, self.dst = columns["src"], columns["dst"]

    def in_flight(self, cycle: int, pe=None) -> list[dict]:
        """Messages sent at or before `cycle` whose last wavelet has not arrived yet (only
        those from or to `pe` when given)."""
        mask = (self.sent <= cycle) & (cycle < self.arrives)
        if pe is not None:
            mask &= ((self.src == pe).all(axis=1)) | ((self.dst == pe).all(axis=1))
        return [self.records[k] for k in np.flatnonzero(mask)]


def flight_text(flying: list[dict]) -> str:
    """'in flight: 2: c0 (0,0)->(1,0) until 12; ...'."""
    parts = [f"c{m['color']} ({m['src'][0]},{m['src'][1]})->({m['dst'][0]},{m['dst'][1]}) "
             f"until {m['arrives'] - 1}" for m in flying[:SHOWN_IN_FLIGHT]]
    more = f" +{len(flying) - SHOWN_IN_FLIGHT} more" if len(flying) > SHOWN_IN_FLIGHT else ""
    return f"in flight: {len(flying)}: " + "; ".join(parts) + more


def values_text(values: np.ndarray) -> str:
    """'[0.5, -1.25, ...] (16 values)' with fp32 precision."""
    shown = ", ".join(f"{float(v):.7g}" for v in values[:SHOWN_VALUES])
    more = ", ..." if len(values) > SHOWN_VALUES else ""
    return f"[{shown}{more}] ({len(values)} value{'s' if len(values) != 1 else ''})"


def format_event(event, index: int, op: str, flying: list[dict], values) -> str:
    """One line per event, then the messages in flight and the values moved."""
    pe = f"({event.x},{event.y})"
    label = f"{op:<12} " if op else ""
    line = (f"[{index}] cycle {event.start:>6}-{event.end:<6} PE {pe:<9} pc {event.pc:<4} "
            f"{label}{event.text}")
    if event.detail:
        line += f"  | {event.detail}"
    if values is not None and len(values):
        verb = "sent" if event.text.startswith("send") else "wrote"
        line += f"\n      {verb}: {values_text(values)}"
    if flying:
        line += "\n      " + flight_text(flying)
    return line


# --------------------------------------------------------------------------- replay


@dataclass
class Filters:
    """Which events to show."""

    pe: tuple | None = None
    op: str | None = None
    until: int | None = None
    steps: int | None = None

    def match(self, event, op: str, block_comment: str) -> bool:
        """True when the event passes the PE and op filters."""
        if self.pe is not None and (event.x, event.y) != self.pe:
            return False
        if self.op is not None:
            needle = self.op.lower()
            return needle in op.lower() or needle in block_comment.lower()
        return True


def event_op(rec: Recording, event) -> tuple[str, str]:
    """(op name, block comment) of an event ('' for code without comments)."""
    program = rec.program
    region = int(program.pe_region[event.y * program.width + event.x])
    block = rec.ops.block(region, event.pc) if region >= 0 else None
    return (block.op, block.comment) if block else ("", "")


def check_filters(rec: Recording, filters: Filters) -> None:
    """ConfigError naming the valid values for --op and --until."""
    if filters.op is not None:
        names = rec.ops.names()
        needle = filters.op.lower()
        comments = {b.comment.lower() for blocks in rec.ops.blocks for b in blocks}
        if not any(needle in n.lower() for n in names) and not any(
                needle in c for c in comments):
            valid = ", ".join(names) if names else "none (the program has no op comments)"
            raise ConfigError(f"--op {filters.op} matches no op of this program; ops: {valid}")
    if filters.until is not None:
        end = rec.cycles if rec.cycles is not None else max(
            (e.end for e in rec.events), default=0)
        if not 0 <= filters.until <= end:
            raise ConfigError(f"--until {filters.until} is outside the run's cycles 0..{end}")


def replay(rec: Recording, filters: Filters, interactive: bool, echo=click.echo) -> int:
    """Print the matching events in time order; returns how many were shown."""
    messages = Messages(rec.events)
    shown, resume_at = 0, None
    for k, event in enumerate(rec.events):
        if filters.until is not None and event.start > filters.until:
            break
        op, comment = event_op(rec, event)
        if not filters.match(event, op, comment):
            continue
        if filters.steps is not None and shown >= filters.steps:
            break
        if interactive and shown:
            if resume_at is None or event.start > resume_at:
                resume_at = ask(echo)
                if resume_at is False:
                    break
        flying = messages.in_flight(event.start, filters.pe)
        echo(format_event(event, k, op, flying, rec.values[k]))
        shown += 1
    if filters.until is not None:
        flying = messages.in_flight(filters.until, filters.pe)
        echo(f"at cycle {filters.until}: " + (flight_text(flying) if flying
                                               else "no messages in flight"))
    return shown


def ask(echo):
    """Read a command: None = next event, an int = continue to that cycle, False = quit."""
    while True:
        try:
            answer = click.prompt("", default="", show_default=False, prompt_suffix="")
        except (click.Abort, EOFError):
            return False
        answer = answer.strip().lower()
        if not answer:
            return None
        if answer.startswith("q"):
            return False
        match = re.fullmatch(r"c\s*(\d+)", answer)
        if match:
            return int(match.group(1))
        echo(HELP)


def is_model(file: str) -> bool:
    """True for a model config (.json path or bundled name), False for assembly."""
    from compiler.frontend import list_bundled_models

    path = Path(file)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"{file}: no such file; emu step expects a mesh assembly file "
                              f"(.asm) or a model config (.json, or a bundled model name: "
                              f"{', '.join(list_bundled_models())})")
        return True
    return not path.exists() and file in list_bundled_models()


# --------------------------------------------------------------------------- command


@click.command()
@click.argument("file", metavar="FILE|CONFIG")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Print this many events (default: all; interactive on a terminal).")
@click.option("--until", type=int, default=None, help="Stop after cycle CYCLE.")
@click.option("--pe", "pe_text", metavar="X,Y", help="Only events of this PE.")
@click.option("--op", default=None, help="Only events of ops whose name contains this "
                                         "(e.g. attn, L1.qkv, RoPE).")
@click.option("--mesh", "mesh_text", metavar="WxH", help="Mesh size override.")
@click.option("--hw", default=None, metavar="NAME|FILE",
              help="Mesh preset [default: wse3 for assembly, small for models].")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
              show_default=True, help="Models: element type.")
@click.option("--layout", type=click.Choice(["auto", "groups", "even"]), default="auto",
              show_default=True, help="Models: q/k/v row layout.")
@click.option("--max-context", type=click.IntRange(min=1), default=None,
              help="Models: KV positions held.")
@click.option("--position", type=click.IntRange(min=0), default=None,
              help="Models: decode position [default: 0].")
@click.option("--token", type=int, default=None, help="Models: token id [default: 1].")
@click.option("--seed", type=int, default=None,
              help="Models: functional run with random weights of this seed.")
@click.option("--values", is_flag=True, help="Show the values each event moves.")
@click.option("--max-cycles", type=click.IntRange(min=1), default=10**7, show_default=True)
def step(file, steps, until, pe_text, op, mesh_text, hw, dtype, layout, max_context,
         position, token, seed, values, max_cycles):
    """Replay FILE's (or one decode step of CONFIG's) execution event by event.

    Without --steps or --until on a terminal: Enter for the next event, `c N` to continue
    to cycle N, q to quit.
    """
    if is_model(file):
        if values and seed is None:
            seed = 0
        rec = record_model(file, hw or "small", mesh_text, dtype, layout, max_context,
                           position or 0, 1 if token is None else token, seed, max_cycles)
    else:
        for name, given in (("--seed", seed), ("--position", position), ("--token", token)):
            if given is not None:
                raise ConfigError(f"{name} applies to model configs, not assembly files")
        rec = record_assembly(file, mesh_text, hw or "wse3", True, max_cycles)
        if not values:
            rec.values = [None] * len(rec.events)
    program = rec.program
    pe = check_pe(pe_text, program.width, program.height) if pe_text else None
    filters = Filters(pe, op, until, steps)
    check_filters(rec, filters)
    interactive = steps is None and until is None and cli_asm.stdin_is_tty()
    if rec.note:
        click.echo(rec.note)
    shown = replay(rec, filters, interactive)
    total = sum(filters.match(e, *event_op(rec, e)) for e in rec.events)
    counted = (f"{shown} of {total} events" if total == len(rec.events)
               else f"{shown} of {total} matching events ({len(rec.events)} in all)")
    if rec.fault is not None:
        click.echo(f"{counted} before the fault")
        raise rec.fault
    click.echo(f"{counted}; program ends at cycle {rec.cycles}")


COMMANDS = [step]
