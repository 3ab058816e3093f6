"""`emu asm run|disasm`: run and print mesh assembly programs (`emu step`: cli/step.py).

`emu asm run` assembles a file, runs it on the Numba engine (or the reference
interpreter) and reports cycles, per-PE busy/idle cycles and link utilisation as tables
(a summary with the top-10 busiest PEs and links on large meshes) or, with `--json`, one
JSON object. The helpers `load_program` and `stdin_is_tty` serve `emu step`
too. Assembly errors and faults are `EmuError`s: the CLI prints one line and exits with
status 2.
"""

import json
import sys

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from emulator.cli.common import parse_mesh_size, prepare_mesh_kernels
from emulator.hw.mesh import MeshConfig, load_mesh
from emulator.outputs import Outputs
from emulator.views.tables import output_console, print_tables
from isa.asm import assemble_file
from isa.disasm import disassemble
from isa.program import Program, RunResult

TOP = 10
DIRECTION_NAMES = ("N", "E", "S", "W")


# --- shared helpers ----------------------------------------------------------------------
def load_program(path: str, mesh_text: str | None, hw: str) -> tuple[Program, MeshConfig]:
    """Assemble `path` for the hardware preset `hw`, sized by --mesh or the file's .mesh."""
    config = load_mesh(hw)
    program = assemble_file(path, mesh=parse_mesh_size(mesh_text), num_colors=config.num_colors,
                            sram_bytes=config.sram_bytes)
    return program, config.with_mesh(program.width, program.height)


def run_program(program: Program, mesh: MeshConfig, engine: str, functional: bool,
                max_cycles: int, record_events: bool = False,
                max_seconds: float | None = None) -> RunResult:
    """Run on the chosen engine (the reference is imported lazily, Numba too);
    `max_seconds` bounds the reference engine's wall-clock time."""
    if engine == "reference":
        from isa.interpreter import run_reference

        return run_reference(program, mesh, functional=functional, max_cycles=max_cycles,
                             record_events=record_events, max_seconds=max_seconds)
    from emulator.mesh.engine import run_numba

    return run_numba(program, mesh, functional=functional, max_cycles=max_cycles)


mesh_option = click.option("--mesh", "mesh_text", metavar="WxH",
                           help="Mesh size, overriding the file's .mesh.")
MAX_CYCLES = 2**62          # cycle counters are int64
REFERENCE_SECONDS = 300.0   # default wall-clock budget of the reference engine
max_cycles_option = click.option("--max-cycles", type=click.IntRange(1, MAX_CYCLES),
                                 default=10**9, show_default=True,
                                 help="Stop with an error after this many cycles (mesh "
                                      "clock).")
max_seconds_option = click.option(
    "--max-seconds", type=click.FloatRange(min=0, min_open=True), default=REFERENCE_SECONDS,
    show_default=True, help="Wall-clock budget of the reference engine, seconds (exit 2 "
                            "past it).")
hw_option = click.option("--hw", default="wse3", show_default=True, metavar="NAME|FILE",
                         help="Mesh hardware preset (PE and fabric parameters).")


# --- statistics --------------------------------------------------------------------------
def summary(program: Program, mesh: MeshConfig, result: RunResult, engine: str,
            functional: bool) -> dict:
    """The JSON-ready report of one run."""
    cycles = result.cycles
    busy = result.pe_busy
    live = program.pe_region >= 0
    links = result.link_busy
    return {
        "file": program.source,
        "engine": engine,
        "hw": mesh.name,
        "mesh": [program.width, program.height],
        "mode": "functional" if functional else "timing-only",
        "cycles": int(cycles),
        "seconds": cycles / mesh.clock_hz,
        "instructions": int(result.instructions),
        "messages": int(result.messages),
        "active_pes": int(live.sum()),
        "pe_busy_total": int(busy.sum()),
        "pe_busy_max": int(busy.max(initial=0)),
        "pe_busy_mean": float(busy[live].mean()) if live.any() else 0.0,
        "pe_utilization": float(busy[live].mean() / cycles) if live.any() and cycles else 0.0,
        "link_busy_total": int(links.sum()),
        "link_busy_max": int(links.max(initial=0)),
        "links_used": int(np.count_nonzero(links)),
        "busiest_pes": busiest_pes(program, result),
        "busiest_links": busiest_links(program, result),
    }


def busiest_pes(program: Program, result: RunResult, limit: int = TOP) -> list[dict]:
    """The `limit` PEs with the most busy cycles (ties: lower PE index first)."""
    order = np.argsort(-result.pe_busy, kind="stable")[:limit]
    return [pe_row(program, result, int(pe)) for pe in order if result.pe_busy[pe] > 0]


def pe_row(program: Program, result: RunResult, pe: int) -> dict:
    x, y = program.pe_xy(pe)
    region = int(program.pe_region[pe])
    busy = int(result.pe_busy[pe])
    return {"x": x, "y": y, "region": program.region_names[region] if region >= 0 else "-",
            "busy": busy, "idle": int(result.cycles) - busy,
            "finish": int(result.pe_finish[pe])}


def busiest_links(program: Program, result: RunResult, limit: int = TOP) -> list[dict]:
    """The `limit` links (PE, outgoing direction) with the most wavelet-cycles."""
    flat = result.link_busy.ravel()
    order = np.argsort(-flat, kind="stable")[:limit]
    rows = []
    for index in order:
        if flat[index] == 0:
            break
        pe, direction = divmod(int(index), 4)
        x, y = program.pe_xy(pe)
        rows.append({"x": x, "y": y, "dir": DIRECTION_NAMES[direction],
                     "busy": int(flat[index]),
                     "utilization": float(flat[index] / result.cycles) if result.cycles else 0.0})
    return rows


# --- tables --------------------------------------------------------------------------------
def print_report(console: Console, program: Program, result: RunResult, report: dict,
                 all_pes: bool = False, all_links: bool = False):
    """Rich tables: run summary, then the top 10 busiest PEs and links (every PE with code
    and every used link with `all_pes` / `all_links`)."""
    console.print(f"{report['file']} on {report['hw']} {report['mesh'][0]}x"
                  f"{report['mesh'][1]} ({report['engine']} engine, {report['mode']})")
    head = Table()
    head.add_column("metric")
    head.add_column("value", justify="right")
    for key in ("cycles", "seconds", "instructions", "messages", "active_pes",
                "pe_busy_total", "pe_busy_max", "pe_busy_mean", "pe_utilization",
                "link_busy_total", "link_busy_max", "links_used"):
        value = report[key]
        head.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    pes = ([pe_row(program, result, pe) for pe in range(program.num_pes)
            if program.pe_region[pe] >= 0] if all_pes else report["busiest_pes"])
    pe_title = ("PEs" if all_pes else
                f"the {len(pes)} busiest PEs of {report['active_pes']:,} (--pes: all)")
    links = (busiest_links(program, result, limit=4 * program.num_pes) if all_links
             else report["busiest_links"])
    link_title = ("links used" if all_links else f"the {len(links)} busiest links of "
                  f"{report['links_used']:,} used (--links: all)")
    print_tables(console, head,
                 rows_table(pe_title, pes, ("x", "y", "region", "busy", "idle", "finish")),
                 rows_table(link_title, links, ("x", "y", "dir", "busy", "utilization")))


def rows_table(title: str, rows: list[dict], columns) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("region", "dir") else "right")
    for row in rows:
        table.add_row(*(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                        for c in columns))
    return table


# --- commands ------------------------------------------------------------------------------
@click.group()
def asm():
    """Assemble, run and disassemble mesh assembly programs (docs/isa.md)."""


@asm.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@mesh_option
@hw_option
@click.option("--engine", type=click.Choice(["numba", "reference"]), default="numba",
              show_default=True, help="Mesh engine: Numba, or the reference interpreter.")
@click.option("--timing-only", is_flag=True, help="Count cycles without computing values.")
@max_cycles_option
@max_seconds_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--pes", "all_pes", is_flag=True,
              help="List every PE with code (default: the 10 busiest).")
@click.option("--links", "all_links", is_flag=True,
              help="List every used link (default: the 10 busiest).")
def asm_run(file, mesh_text, hw, engine, timing_only, max_cycles, max_seconds, as_json,
            all_pes, all_links):
    """Run FILE and report cycles, PE busy/idle cycles and link utilisation (busy and idle
    in cycles of the preset's clock; utilisation = busy / total cycles)."""
    program, mesh = load_program(file, mesh_text, hw)
    if engine == "numba":
        prepare_mesh_kernels(Console(stderr=True))
    result = run_program(program, mesh, engine, not timing_only, max_cycles,
                         max_seconds=max_seconds)
    report = summary(program, mesh, result, engine, not timing_only)
    if as_json:
        click.echo(json.dumps(report))
    else:
        print_report(output_console(), program, result, report, all_pes, all_links)


@asm.command("disasm")
@click.argument("file", type=click.Path(dir_okay=False))
@mesh_option
@hw_option
@click.option("-o", "--output", metavar="FILE|-",
              help="Write the text to this file instead of stdout.")
def asm_disasm(file, mesh_text, hw, output):
    """Assemble FILE and print its disassembly (which re-assembles to the same program)."""
    outputs = Outputs()
    target = outputs.file(output, "--output")
    program, _ = load_program(file, mesh_text, hw)
    text = disassemble(program)
    if target is not None:
        outputs.write_text(target, text)
        outputs.commit()
    else:
        click.echo(text, nl=False)


def stdin_is_tty() -> bool:
    """True when stdin is an interactive terminal (`emu step` asks through this module, so
    tests patch it here)."""
    return sys.stdin.isatty()


COMMANDS = [asm]
