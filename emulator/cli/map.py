"""`emu map` and `emu explain`: where a model lands on the mesh, and one PE in full.

    emu map CONFIG [--hw NAME|FILE] [--mesh WxH] [--dtype] [--layout] [--max-context N]
                   [--layer N] [--region x0,y0,x1,y1] [--png FILE]
    emu explain CONFIG --pe X,Y [--hw ...] [--mesh WxH] [--dtype] [--layout]
                   [--max-context N] [--position P] [--per-instruction] [--no-timeline]

`emu map` needs only the tile and place passes (emulator/views/mapview.py), so it also draws
models that do not fit, saying by how much. `emu explain` compiles the decode step and
shows what PE (x, y) stores, its routes, its parameters, its program with the op-block
comments, and (meshes up to `TIMELINE_PES` PEs) its timeline in one decode step from the
reference engine (emulator/inspect/explain.py). Both default to the `small` preset (32 x 32).
Bad options are one line on stderr and exit status 2, naming the valid range.
"""

import re

import click
from rich.console import Console
from rich.table import Table

from compiler.frontend import resolve_model
from emulator.cli.common import load_sized_mesh
from emulator.hw.errors import ConfigError
from emulator.hw.mesh import MeshConfig
from emulator.views.tables import fit, output_console

TIMELINE_PES = 4096     # explain replays the whole mesh on the reference engine up to this
PE_TABLE_LIMIT = 64     # `emu map --layer` lists every PE of views up to this many PEs
DEFAULT_HW = "small"


# --------------------------------------------------------------------------- shared options


def load_target(config: str, hw: str, mesh_text: str | None):
    """(ModelSpec, MeshConfig sized by --mesh, model name) for a model command."""
    spec = resolve_model(config)
    mesh = load_sized_mesh(hw, mesh_text)
    name = config.rsplit("/", 1)[-1].removesuffix(".json")
    return spec, mesh, name


def parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    """'x0,y0,x1,y1' -> a tuple (checked against the mesh later)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise ConfigError(f"--region: expected x0,y0,x1,y1 (inclusive corners), got '{text}'")
    x0, y0, x1, y1 = (int(p) for p in parts)
    return x0, y0, x1, y1


def model_options(command):
    """The options every model command shares (applied bottom-up)."""
    options = [
        click.option("--hw", default=DEFAULT_HW, show_default=True, metavar="NAME|FILE",
                     help="Mesh preset (small, wse2, wse3) or JSON file."),
        click.option("--mesh", "mesh_text", metavar="WxH", help="Override the mesh size."),
        click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
                     show_default=True,
                     help="Storage format of weights, KV cache and activations."),
        click.option("--layout", type=click.Choice(["auto", "groups", "even"]),
                     default="auto", show_default=True,
                     help="Chunking of the q/k/v rows over the mesh rows."),
        click.option("--max-context", type=click.IntRange(min=1), default=None,
                     help="KV positions (tokens) held "
                          "[default: min(max_position_embeddings, 256)]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# --------------------------------------------------------------------------- emu map


@click.command("map")
@click.argument("config")
@model_options
@click.option("--layer", type=int, default=None, help="Show layer N's tiles and KV bytes.")
@click.option("--region", "region_text", metavar="x0,y0,x1,y1",
              help="Zoom into this rectangle of PEs (inclusive corners).")
@click.option("--png", "png_path", metavar="FILE|-",
              help="Also draw the map into this PNG file (needs matplotlib).")
@click.option("--width", "max_cols", type=click.IntRange(min=16), default=64,
              show_default=True, help="Terminal map width in characters.")
def map_command(config, hw, mesh_text, dtype, layout, max_context, layer, region_text,
                png_path, max_cols):
    """Map of the mesh: what each PE holds and does (tile + place only)."""
    from emulator.outputs import Outputs
    from emulator.views import mapview

    outputs = Outputs()
    png_file = outputs.file(png_path, "--png")
    spec, mesh, name = load_target(config, hw, mesh_text)
    m = mapview.build_map(spec, mesh, dtype, layout, max_context, name)
    region = mapview.check_region(m, parse_region(region_text))
    mapview.check_layer(m, layer)
    console = output_console()
    if outputs.uses_stdout:                  # `--png -`: the text goes to stderr
        from rich.console import Console
        console = Console(stderr=True, width=console.width)
    for item in mapview.terminal_map(m, region, layer, max_cols):
        console.print(item, overflow="ignore", crop=False, soft_wrap=True)
    if layer is not None:
        console.print(mapview.layer_table(m, layer))
        x0, y0, x1, y1 = region
        if (x1 - x0 + 1) * (y1 - y0 + 1) <= PE_TABLE_LIMIT:
            console.print(mapview.pe_layer_table(m, layer, region))
    if png_file is not None:
        outputs.write_bytes(png_file, mapview.png_bytes(m, region, layer))
        outputs.commit()
        console.print(f"map written to {png_path}")
    if not m.fits:
        click.echo(f"emu: warning: {name} does not fit: {m.status()}", err=True)


# --------------------------------------------------------------------------- emu explain


@click.command("explain")
@click.argument("config")
@click.option("--pe", "pe_text", required=True, metavar="X,Y", help="The PE to explain.")
@model_options
@click.option("--position", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decode position (sets the step parameters and the timeline).")
@click.option("--per-instruction", is_flag=True,
              help="Timeline per instruction instead of per op block.")
@click.option("--op", default=None,
              help="Only the program and timeline of ops whose name contains this "
                   "(e.g. L0.qkv, attn, RoPE).")
@click.option("--no-timeline", is_flag=True, help="Skip the reference-engine run.")
def explain_command(config, pe_text, hw, mesh_text, dtype, layout, max_context, position,
                    per_instruction, op, no_timeline):
    """Everything about one PE: storage, routes, parameters, program and timeline."""
    from compiler.decode import compile_decode
    from emulator.inspect import explain

    spec, mesh, name = load_target(config, hw, mesh_text)
    x, y = explain.check_pe(pe_text, mesh.width, mesh.height)
    compiled = compile_decode(spec, mesh, dtype, max_context, layout)
    dp = compiled.decode
    limit = compiled.placement.max_context
    if position >= limit:
        raise ConfigError(f"--position {position} is outside the KV capacity 0..{limit - 1}")
    program = dp.for_position(position)
    index = explain.OpIndex(program)
    explain.check_op(index, int(program.pe_region[y * program.width + x]), op)
    console = output_console()
    console.print(f"[bold]PE ({x},{y})[/bold] of {name} on {mesh.name} {mesh.width}x"
                  f"{mesh.height} ({compiled.plan.layout} layout, {dtype}), decode position "
                  f"{position}", highlight=False)
    console.print(role_text(dp, program, x, y), highlight=False)
    console.print(_table("stores (SRAM buffers, same addresses on every PE)",
                         explain.buffer_rows(dp, x, y),
                         ("name", "addr", "bytes", "used", "kind", "holds")))
    console.print(_table("routes (router entry per color)",
                         explain.route_rows(dp, program, index, x, y),
                         ("color", "name", "rx", "tx", "flow", "part", "ops")))
    console.print(_table("parameters", explain.param_rows(dp, program, x, y),
                         ("param", "name", "value", "meaning")))
    console.print("[bold]program[/bold] (exactly the instructions the engines execute)")
    for line in explain.program_listing(program, index, x, y, dp.param_names,
                                        compiled.placement, op):
        click.echo(line)
    if not no_timeline:
        print_timeline(console, program, mesh, index, x, y, per_instruction, op)


def role_text(dp, program, x: int, y: int) -> str:
    """A sentence on the PE's role: position, trees, chunks, attention groups."""
    region = int(program.pe_region[y * program.width + x])
    role = dp.roles[region]
    where = ("root (0,0)" if role.left and role.top else "top row" if role.top else
             "left column" if role.left else "interior PE")
    first, groups = dp.plan.groups_on_row(y)
    attention = (f"attention for kv group {first}" if groups == 1 else
                 f"attention for kv groups {first}-{first + groups - 1}" if groups else
                 "no attention (row holds no kv group)")
    return (f"role: {where}; row tree {_tree(role.row_tree, 'W')}; column tree "
            f"{_tree(role.col_tree, 'N')}; hidden chunk k={role.k_hidden}, o_proj input "
            f"chunk {role.k_attn}, ffn chunk {role.k_ffn}; {attention}")


def _tree(actions, direction: str) -> str:
    """'receives at step 0, 1; sends W at step 2' from tree actions."""
    if not actions:
        return "none"
    parts = [f"{'receives' if act == 'recv' else 'sends ' + direction} at step {s}"
             for act, s in actions]
    return ", ".join(parts)


def _table(title: str, rows: list[dict], columns) -> Table:
    """A rich table of dict rows."""
    table = Table(title=title, title_justify="left")
    numeric = {"addr", "bytes", "used", "value", "color", "start", "end", "instrs", "busy",
               "wait"}
    grouped = {"bytes", "used", "start", "end", "busy", "wait"}
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left")
    for row in rows:
        table.add_row(*(f"{row[c]:,}" if c in grouped else str(row[c]) for c in columns))
    return fit(table)


def print_timeline(console: Console, program, mesh: MeshConfig, index, x: int, y: int,
                   per_instruction: bool, op: str | None = None) -> None:
    """The PE's timeline in one decode step (reference engine, timing only)."""
    from emulator.inspect import explain

    if program.num_pes > TIMELINE_PES:
        console.print(f"timeline skipped: the reference engine replays all {program.num_pes:,}"
                      f" PEs; use --mesh WxH with at most {TIMELINE_PES} PEs")
        return
    events, cycles = explain.pe_events(program, mesh, x, y)
    rows = explain.timeline_rows(events, program, index, mesh.issue_overhead, per_instruction,
                                 op)
    for row in rows:
        row["pcs"] = (str(row["first_pc"]) if row["first_pc"] == row["last_pc"]
                      else f"{row['first_pc']}-{row['last_pc']}")
    columns = ("start", "end", "pcs", "op", "instrs", "busy", "wait", "what")
    if per_instruction:
        columns = ("start", "end", "pcs", "op", "busy", "wait", "what", "detail")
    finish = events[-1].end if events else 0
    busy = sum(explain.busy_cycles(e, mesh.issue_overhead) for e in events)
    console.print(_table(f"timeline of PE ({x},{y}) in one decode step (cycles; the step "
                         f"ends at {cycles:,}; this PE halts at {finish:,}, busy {busy:,})",
                         rows, columns))


COMMANDS = [map_command, explain_command]
