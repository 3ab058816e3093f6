"""`emu bench gemv`: compile and emulate one GEMV on the mesh, print its latency.

The GEMV is `y = W x` with W [size, size] mapped as GEMV-A (docs/mapping.md) on the
preset's whole mesh or `--mesh WxH`, run timing-only on the Numba engine. Output:
cycles and microseconds at the preset's clock (`--json`: one JSON object).
"""

import json

import click

from emulator.cli.common import load_sized_mesh
from emulator.hw.errors import ConfigError
from emulator.mesh.bench import bench_gemv


@click.group()
def bench():
    """Micro-benchmarks of compiled kernels on the mesh."""


@bench.command()
@click.option("--hw", default="wse2", show_default=True, help="Mesh preset name or JSON file.")
@click.option("--size", default=16384, show_default=True, type=int,
              help="W is size x size elements, x has size elements.")
@click.option("--mesh", "mesh_size",
              help="Mesh WIDTHxHEIGHT in PEs (default: the whole preset).")
@click.option("--dtype", default="fp16", show_default=True,
              type=click.Choice(["fp32", "fp16", "bf16"]))
@click.option("--kind", default="A", show_default=True, type=click.Choice(["A", "B"]),
              help="GEMV-A (R(x) -> C(y)) or GEMV-B (C(x) -> R(y)).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def gemv(hw, size, mesh_size, dtype, kind, as_json):
    """Compile and emulate one GEMV; print its latency in cycles and microseconds."""
    if size < 1:
        raise ConfigError(f"--size must be positive, got {size}")
    out = bench_gemv(size, load_sized_mesh(hw, mesh_size), dtype, kind)
    if as_json:
        click.echo(json.dumps(out))
        return
    w, h = out["mesh"]
    click.echo(f"GEMV-{kind} [1,{size}] x [{size},{size}] {dtype} on {w}x{h} ({out['hw']}, "
               f"{out['clock_hz'] / 1e6:,.0f} MHz): {out['cycles']:,} cycles = "
               f"{out['seconds'] * 1e6:,.3f} us")


COMMANDS = [bench]
