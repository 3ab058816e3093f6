"""`emu bench gemv`: compile and emulate one GEMV on the mesh, print its latency.

The GEMV is `y = W x` with W [size, size] mapped as GEMV-A (docs/mapping.md) on the
preset's whole mesh or `--mesh WxH`, run timing-only on the Numba engine. Output:
cycles and microseconds at the preset's clock (`--json`: one JSON object).
"""

import json
import time

import click

from compiler.emit import emit_gemv
from compiler.numerics import canonical_dtype
from emulator.cli_common import load_sized_mesh
from emulator.errors import ConfigError


def bench_gemv(size: int, hw: str = "wse2", mesh_size: str | None = None,
               dtype: str = "fp16", kind: str = "A") -> dict:
    """Latency of one [1, size] x [size, size] GEMV: dict with cycles and seconds."""
    if size < 1:
        raise ConfigError(f"--size must be positive, got {size}")
    mesh = load_sized_mesh(hw, mesh_size)
    shape = (mesh.width, mesh.height)
    dtype = canonical_dtype(dtype)
    started = time.perf_counter()
    gemv = emit_gemv(kind, size, size, shape[0], shape[1], mesh, dtype)
    compiled = time.perf_counter()
    from emulator.mesh_engine import run_numba

    result = run_numba(gemv.program, mesh, functional=False)
    return {"kind": kind, "size": size, "mesh": list(shape), "dtype": dtype, "hw": mesh.name,
            "cycles": result.cycles, "seconds": result.cycles / mesh.clock_hz,
            "clock_hz": mesh.clock_hz, "compile_host_s": compiled - started,
            "emulate_host_s": time.perf_counter() - compiled}


@click.group()
def bench():
    """Micro-benchmarks of compiled kernels on the mesh."""


@bench.command()
@click.option("--hw", default="wse2", show_default=True, help="Mesh preset name or JSON file.")
@click.option("--size", default=16384, show_default=True, type=int,
              help="W is size x size, x has size elements.")
@click.option("--mesh", "mesh_size", help="Mesh WIDTHxHEIGHT (default: the whole preset).")
@click.option("--dtype", default="fp16", show_default=True,
              type=click.Choice(["fp32", "fp16", "bf16"]))
@click.option("--kind", default="A", show_default=True, type=click.Choice(["A", "B"]),
              help="GEMV-A (R(x) -> C(y)) or GEMV-B (C(x) -> R(y)).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def gemv(hw, size, mesh_size, dtype, kind, as_json):
    """Compile and emulate one GEMV; print its latency in cycles and microseconds."""
    out = bench_gemv(size, hw, mesh_size, dtype, kind)
    if as_json:
        click.echo(json.dumps(out))
        return
    w, h = out["mesh"]
    click.echo(f"GEMV-{kind} [1,{size}] x [{size},{size}] {dtype} on {w}x{h} ({out['hw']}, "
               f"{out['clock_hz'] / 1e6:,.0f} MHz): {out['cycles']:,} cycles = "
               f"{out['seconds'] * 1e6:,.3f} us")


COMMANDS = [bench]
