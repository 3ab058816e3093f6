"""Recording a mesh run for `emu step`: every executed instruction as an event in time
order, with the values it moved (functional runs) and the op block it belongs to, plus the
messages in flight at any cycle. Runs are the reference interpreter's (isa/interpreter.py),
the living spec, with event recording on; nothing here prints.
"""

from dataclasses import dataclass

import numpy as np

from emulator.hw.errors import ConfigError, MeshFault
from emulator.hw.mesh import MeshConfig
from emulator.inspect.explain import OpIndex
from isa.interpreter import ReferenceMachine
from isa.program import Program, RunResult


@dataclass
class Recording:
    """A recorded run: events in time order (each with its values or None), the outcome."""

    program: Program
    events: list
    cycles: int | None           # None when the run faulted
    fault: MeshFault | None
    ops: OpIndex
    note: str = ""               # what was run (model, mesh, position, mode)

    def drop_values(self) -> None:
        """Forget the recorded values (a run shown without them)."""
        for event in self.events:
            event.values = None


def record_run(program: Program, mesh: MeshConfig, sram, functional: bool, max_cycles: int,
               in_place: bool = False, max_seconds: float | None = None
               ) -> tuple[ReferenceMachine, RunResult | None, MeshFault | None]:
    """Run to the end or to a fault: (machine, result or None, fault or None); the
    machine keeps the events (and, functional, their values) either way. `max_seconds`:
    the reference engine's wall-clock budget (BudgetError past it)."""
    machine = ReferenceMachine(program, mesh, sram, functional, max_cycles, True, in_place,
                               record_values=True, max_seconds=max_seconds)
    try:
        return machine, machine.run(), None
    except MeshFault as fault:
        return machine, None, fault


def recording_of(machine: ReferenceMachine, result: RunResult | None,
                 fault: MeshFault | None, note: str = "") -> Recording:
    """Events in time order (start cycle, PE index, execution order)."""
    program = machine.p
    events = machine.events or []
    order = sorted(range(len(events)), key=lambda k: (
        events[k].start, events[k].y * program.width + events[k].x, k))
    cycles = None if result is None else int(result.cycles)
    return Recording(program, [events[k] for k in order], cycles, fault, OpIndex(program),
                     note)


def record_program(program: Program, mesh: MeshConfig, functional: bool,
                   max_cycles: int, max_seconds: float | None = None) -> Recording:
    """Record a whole program (an assembled file) from its own SRAM image."""
    return recording_of(*record_run(program, mesh, None, functional, max_cycles,
                                    max_seconds=max_seconds))


def record_decode_step(spec, mesh: MeshConfig, dtype: str, layout: str, max_context,
                       position: int, token: int, seed: int | None, max_cycles: int,
                       name: str = "", max_seconds: float | None = None) -> Recording:
    """Compile `spec` onto `mesh` and record the decode step of `token` at `position`:
    timing-only when `seed` is None, else functional with seeded random weights and a
    seeded random prompt of `position` tokens prefilled by the numpy reference."""
    from compiler.decode import compile_decode

    if not 0 <= token < spec.vocab_size:
        raise ConfigError(f"token {token} is outside the vocabulary 0..{spec.vocab_size - 1}")
    mode = "timing-only" if seed is None else f"functional, seed {seed}, token {token}"
    note = (f"{name or spec.name} on {mesh.name} {mesh.width}x{mesh.height}, "
            f"decode position {position} ({mode})")
    if seed is None:
        compiled = compile_decode(spec, mesh, dtype, max_context, layout)
        program = compiled.decode.for_position(check_position(position, compiled))
        return recording_of(*record_run(program, mesh, None, False, max_cycles,
                                        max_seconds=max_seconds), note)
    runs = []

    def recording_engine(program, mesh, sram=None, functional=True, in_place=False):
        """The decoder's engine: the interpreter with event recording."""
        runs.append(record_run(program, mesh, sram, functional, max_cycles, in_place,
                               max_seconds))
        _, result, fault = runs[-1]
        if fault is not None:
            raise fault
        return result

    decoder = seeded_decoder(spec, mesh, dtype, layout, max_context, position, seed,
                             recording_engine)
    try:
        decoder.step(token, position)
    except MeshFault:
        pass
    return recording_of(*runs[-1], note)


def seeded_decoder(spec, mesh, dtype, layout, max_context, position: int, seed: int,
                   engine="reference"):
    """A MeshDecoder with seeded random weights whose KV cache holds `position` tokens of a
    seeded random prompt (prefilled by the numpy reference)."""
    from compiler import reference
    from compiler.weights import random_weights
    from emulator.mesh.runtime import MeshDecoder

    decoder = MeshDecoder(spec, random_weights(spec, seed), mesh, dtype, engine=engine,
                          max_context=max_context, layout=layout)
    check_position(position, decoder.compiled)
    if position:
        prompt = np.random.default_rng(seed).integers(0, spec.vocab_size, position)
        _, cache = reference.prefill(spec, decoder.weights, prompt)
        decoder.load_kv(cache)
    return decoder


def check_position(position: int, compiled) -> int:
    """ConfigError unless 0 <= position < the placement's KV capacity."""
    limit = compiled.placement.max_context
    if not 0 <= position < limit:
        raise ConfigError(f"decode position {position} is outside the KV capacity "
                          f"0..{limit - 1}")
    return position


def message_records(event) -> list[dict]:
    """The messages a send event started: one per destination core."""
    return [{"sent": event.start, "arrives": last + 1, "color": event.color, "src":
             (event.x, event.y), "dst": dst} for dst, last in event.arrivals]


class Messages:
    """Every message of a run (from its send events), queried by cycle and PE."""

    def __init__(self, events: list):
        self.records = [m for e in events for m in message_records(e)]
        self.sent = np.array([m["sent"] for m in self.records], np.int64)
        self.arrives = np.array([m["arrives"] for m in self.records], np.int64)
        self.src = np.array([m["src"] for m in self.records], np.int64).reshape(-1, 2)
        self.dst = np.array([m["dst"] for m in self.records], np.int64).reshape(-1, 2)

    def in_flight(self, cycle: int, pe=None) -> list[dict]:
        """Messages sent at or before `cycle` whose last wavelet has not arrived yet (only
        those from or to `pe` when given)."""
        mask = (self.sent <= cycle) & (cycle < self.arrives)
        if pe is not None:
            mask &= ((self.src == pe).all(axis=1)) | ((self.dst == pe).all(axis=1))
        return [self.records[k] for k in np.flatnonzero(mask)]


@dataclass
class Filters:
    """Which events to show: one PE, ops by name, up to a cycle, at most a count."""

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
    """(op name, block comment) of an event ('' for code without op blocks)."""
    program = rec.program
    region = int(program.pe_region[event.y * program.width + event.x])
    block = rec.ops.block(region, event.pc) if region >= 0 else None
    return (block.op, block.comment) if block else ("", "")


def check_filters(rec: Recording, filters: Filters) -> None:
    """ConfigError naming the valid values of the op and cycle filters."""
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
