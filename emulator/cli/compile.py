"""`emu compile`: lower one decode step of a model onto the mesh and dump every stage.

    emu compile CONFIG [--hw NAME|FILE] [--mesh WxH] [--dtype fp32|fp16|bf16]
                [--max-context N] [--layout auto|groups|even] [--position N] [--dump DIR]

CONFIG is a HuggingFace config.json path or a bundled model name. The mapping uses the
whole mesh (`--mesh` overrides the preset's size; the default preset is `small`, 32 x 32).
Prints a summary; with `--dump DIR` writes the op graph, tiles, placement (JSON + ASCII
map), routes and representative per-PE assembly (emulator/views/dump.py). A bad config or a
model that does not fit is one line on stderr and exit status 2.
"""

import json

import click

from compiler.frontend import resolve_model
from emulator.cli.common import load_sized_mesh
from emulator.hw.errors import ConfigError
from emulator.outputs import Outputs
from emulator.views.dump import dump_files, summary


@click.command("compile")
@click.argument("config")
@click.option("--hw", default="small", show_default=True, metavar="NAME|FILE",
              help="Mesh preset (wse2, wse3, small) or JSON file.")
@click.option("--mesh", "mesh_text", metavar="WxH", help="Override the preset's mesh size.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
              show_default=True,
              help="Storage format of weights, KV cache and activations.")
@click.option("--max-context", type=click.IntRange(min=1), default=None,
              help="KV positions (tokens) held on the mesh "
                   "[default: min(max_position_embeddings, 256)].")
@click.option("--layout", type=click.Choice(["auto", "groups", "even"]), default="auto",
              show_default=True, help="Chunking of the q/k/v rows over the mesh rows.")
@click.option("--position", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decode position whose per-step parameters the dumps show.")
@click.option("--dump", "dump_dir", metavar="DIR", help="Write every stage into DIR.")
def compile_command(config, hw, mesh_text, dtype, max_context, layout, position, dump_dir):
    """Compile one decode step of CONFIG onto the mesh."""
    outputs = Outputs()
    folder = outputs.directory(dump_dir, "--dump")
    spec = resolve_model(config)
    mesh = load_sized_mesh(hw, mesh_text)
    limit = max_context or min(spec.max_position_embeddings, 256)
    if position >= limit:
        raise ConfigError(f"--position {position} is outside the KV capacity 0..{limit - 1}")
    if folder is not None:
        compiled, files = dump_files(spec, mesh, dtype, max_context, layout, position)
        for name, text in files.items():
            outputs.write_text(outputs.in_folder(folder, name), text)
        outputs.commit()
    else:
        from compiler.decode import compile_decode
        compiled = compile_decode(spec, mesh, dtype, max_context, layout)
    click.echo(json.dumps(summary(compiled, mesh), indent=2))
    if dump_dir:
        click.echo(f"stages written to {dump_dir}")


COMMANDS = [compile_command]
