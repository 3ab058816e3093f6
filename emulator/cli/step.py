"""`emu step FILE|CONFIG`: replay a mesh run event by event, in time order.

    emu step FILE.asm [--mesh WxH] [--hw NAME] [--values] ...
    emu step CONFIG [--hw small] [--mesh WxH] [--dtype] [--position P] [--token T]
                    [--seed N | --values] ...
    common: [--steps N] [--until CYCLE] [--pe X,Y] [--op NAME] [--max-cycles N]

FILE is a mesh assembly file; CONFIG a model config (`.json` or a bundled name such as
`tiny`), compiled for one decode step on a small mesh (the `small` preset, 32 x 32, or
`--mesh`). The run is the reference interpreter's (isa/interpreter.py), recorded by
emulator/inspect/step.py, which also keeps the values each instruction wrote or sent. Events
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
from pathlib import Path

import click
import numpy as np

from emulator.cli import asm as cli_asm
from emulator.hw.errors import ConfigError
from emulator.inspect.explain import check_pe
from emulator.inspect.step import (
    Filters,
    Messages,
    Recording,
    check_filters,
    event_op,
    record_decode_step,
    record_program,
)

SHOWN_IN_FLIGHT = 6
SHOWN_VALUES = 6
HELP = "Enter: next event, c N: continue to cycle N, q: quit"


def record_assembly(path: str, mesh_text, hw: str, functional: bool,
                    max_cycles: int, max_seconds: float | None = None) -> Recording:
    """Assemble and record FILE."""
    program, mesh = cli_asm.load_program(path, mesh_text, hw)
    return record_program(program, mesh, functional, max_cycles, max_seconds)


def record_model(config: str, hw: str, mesh_text, dtype: str, layout: str, max_context,
                 position: int, token: int, seed: int | None, max_cycles: int,
                 max_seconds: float | None = None) -> Recording:
    """Load CONFIG on the mesh and record one decode step."""
    from emulator.cli.map import load_target

    spec, mesh, name = load_target(config, hw, mesh_text)
    return record_decode_step(spec, mesh, dtype, layout, max_context, position, token, seed,
                              max_cycles, name, max_seconds=max_seconds)


# --------------------------------------------------------------------------- formatting


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
        echo(format_event(event, k, op, flying, event.values))
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
    if path.is_dir():
        return True            # a model folder (resolve_model checks its config.json)
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
@click.option("--until", type=int, default=None,
              help="Stop after cycle CYCLE (cycles of the mesh clock).")
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
              help="Models: KV positions (tokens) held.")
@click.option("--position", type=click.IntRange(min=0), default=None,
              help="Models: decode position [default: 0].")
@click.option("--token", type=int, default=None, help="Models: token id [default: 1].")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None,
              help="Models: functional run with random weights of this seed.")
@click.option("--values", is_flag=True, help="Show the values each event moves.")
@click.option("--max-cycles", type=click.IntRange(1, cli_asm.MAX_CYCLES), default=10**7,
              show_default=True, help="Stop with an error after this many cycles (mesh clock).")
@cli_asm.max_seconds_option
def step(file, steps, until, pe_text, op, mesh_text, hw, dtype, layout, max_context,
         position, token, seed, values, max_cycles, max_seconds):
    """Replay FILE's (or one decode step of CONFIG's) execution event by event.

    Without --steps or --until on a terminal: Enter for the next event, `c N` to continue
    to cycle N, q to quit.
    """
    if is_model(file):
        if values and seed is None:
            seed = 0
        rec = record_model(file, hw or "small", mesh_text, dtype, layout, max_context,
                           position or 0, 1 if token is None else token, seed, max_cycles,
                           max_seconds)
    else:
        for name, given in (("--seed", seed), ("--position", position), ("--token", token)):
            if given is not None:
                raise ConfigError(f"{name} applies to model configs, not assembly files")
        rec = record_assembly(file, mesh_text, hw or "wse3", True, max_cycles, max_seconds)
        if not values:
            rec.drop_values()
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
