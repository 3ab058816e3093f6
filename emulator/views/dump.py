"""Dump every stage of a compiled decode step to a directory (`emu compile --dump DIR`).

Files written (each atomically, after everything has been computed):
- `graph.json`, `graph.dot`: the decode op graph (emulator.inspect.graph) when available
  and it maps the model;
- `tiles.json`: the tile plan (chunk bounds of every vector, tiling of every matrix);
- `placement.json`, `placement.txt`: the SRAM address map and an ASCII map of SRAM use;
- `routes.json`: colors and every flow with its router entries;
- `pe_X_Y.asm`: the code of one representative PE per region, with its parameters
  (named), router entries and section comments;
- `program.asm`: the whole program (isa.disasm) for meshes up to `FULL_PROGRAM_PES` PEs;
- `summary.json`: regions, instructions, colors, SRAM bytes per PE.
"""

import json
from pathlib import Path

from compiler.decode import Compiled, compile_decode
from compiler.emit import DecodeProgram
from compiler.place import ascii_map, dump_placement
from compiler.printing import compiled_text
from compiler.route import dump_routes
from compiler.tile import dump_tiles
from emulator.files import atomic_write_text
from emulator.hw.dtypes import BYTES as DTYPE_BYTES
from emulator.hw.mesh import MeshConfig
from isa.disasm import format_instruction, format_ports

FULL_PROGRAM_PES = 1024


def pe_listing(dp: DecodeProgram, x: int, y: int, pos: int = 0) -> str:
    """Assembly-like listing of PE (x, y)'s code at decode position `pos`."""
    program = dp.for_position(pos)
    pe = y * program.width + x
    region = int(program.pe_region[pe])
    sharing = int((program.pe_region == region).sum())
    role = dp.roles[region]
    lines = [f"; PE ({x},{y}): region {program.region_names[region]} "
             f"(code shared by {sharing} PEs), decode position {pos}",
             f"; role: {role}"]
    for k, name in enumerate(dp.param_names):
        lines.append(f"; %p{k} {name} = {program.param(pe, k)}")
    colors = {c: n for n, c in dp.routes.colors.items()}
    for c in range(program.num_colors):
        rx, tx = int(program.route_rx[pe, c]), int(program.route_tx[pe, c])
        if rx or tx:
            lines.append(f".route c{c} rx={format_ports(rx)} tx={format_ports(tx)}"
                         f"   ; {colors[c]}")
    comments = program.region_comments.get(region, {})
    for pc, ins in enumerate(program.region_code(region)):
        if pc in comments:
            lines.append(f"    ; {comments[pc]}")
        lines.append("    " + format_instruction(ins, program.mark_names))
    return "\n".join(lines) + "\n"


def summary(compiled: Compiled, mesh: MeshConfig) -> dict:
    """Headline numbers of a compiled decode step."""
    program = compiled.decode.program
    return {"mesh": [program.width, program.height], "dtype": program.dtype,
            "layout": compiled.plan.layout, "regions": len(program.region_start),
            "instructions_per_region_total": int(len(program.code)),
            "colors": compiled.routes.num_colors, "hardware_colors": mesh.num_colors,
            "sram_words_per_pe": program.sram_words,
            "sram_bytes_per_pe": program.sram_words * DTYPE_BYTES[program.dtype],
            "hardware_sram_bytes": mesh.sram_bytes,
            "max_context": compiled.placement.max_context,
            "kv_slots_per_pe": compiled.placement.slots}


def stage_files(compiled: Compiled, mesh: MeshConfig, pos: int = 0) -> dict:
    """file name -> text of every stage (graph files excluded)."""
    dp = compiled.decode
    files = {"tiles.json": dump_tiles(compiled.plan),
             "placement.json": dump_placement(compiled.placement, mesh),
             "placement.txt": ascii_map(compiled.placement, mesh),
             "routes.json": dump_routes(compiled.routes),
             "summary.json": json.dumps(summary(compiled, mesh), indent=2) + "\n",
             "ir.txt": compiled_text(compiled)}
    for x, y in dp.representatives:
        files[f"pe_{x}_{y}.asm"] = pe_listing(dp, x, y, pos)
    if dp.program.num_pes <= FULL_PROGRAM_PES:
        from isa.disasm import disassemble
        files["program.asm"] = disassemble(dp.for_position(pos))
    return files


def dump_files(spec, mesh: MeshConfig, dtype: str = "fp32", max_context: int | None = None,
               layout: str = "auto", pos: int = 0) -> tuple[Compiled, dict[str, str]]:
    """Compile `spec` onto `mesh`: (compiled, file name -> text of every stage and the
    op graph); nothing written."""
    compiled = compile_decode(spec, mesh, dtype, max_context, layout)
    files = {}
    graph = _decode_graph(spec, pos, DTYPE_BYTES[compiled.placement.dtype])
    if graph is not None:
        from emulator.inspect.graph import graph_files
        files.update(graph_files(graph))
    files.update(stage_files(compiled, mesh, pos))
    return compiled, files


def dump_all(spec, mesh: MeshConfig, directory, dtype: str = "fp32",
             max_context: int | None = None, layout: str = "auto", pos: int = 0) -> Compiled:
    """Compile `spec` onto `mesh` and write every stage into `directory` (each atomically)."""
    compiled, files = dump_files(spec, mesh, dtype, max_context, layout, pos)
    directory = Path(directory)
    for name, text in files.items():
        atomic_write_text(directory / name, text)
    return compiled


def _decode_graph(spec, pos: int, bytes_per_element: int):
    """The decode op graph, or None when emulator.inspect.graph is not available or does
    not map the model yet (experts, qk-norm, sinks, windows: the mesh stages still dump)."""
    try:
        from emulator.inspect.graph import build_decode_graph
    except ImportError:
        return None
    if spec.unmapped_features():
        return None
    return build_decode_graph(spec, pos, bytes_per_element)
