"""Option parsing and start-up steps shared by the `emu` subcommands (one definition of
each user-facing rule; the parsing rules live in `emulator.hw` so that `emu sweep`
applies the same ones, and keep their names here)."""

import time

from emulator.hw import mesh as hw_mesh
from emulator.hw.mesh import MeshConfig, parse_mesh_size
from emulator.hw.presets import parse_dims
from emulator.limits import COMPILE_BYTES_PER_PE, check_mapping_memory

__all__ = ["COMPILE_BYTES_PER_PE", "load_sized_mesh", "parse_dims", "parse_mesh_size",
           "prepare_mesh_kernels"]

COMPILE_NOTE_SECONDS = 5.0   # a warm-up longer than this was a compile: say so


def load_sized_mesh(hw: str, mesh_text: str | None) -> MeshConfig:
    """The mesh preset `hw` (name or file), resized by a --mesh WxH value when given;
    ResourceError when mapping onto it would not fit the host's memory."""
    mesh = hw_mesh.load_sized_mesh(hw, mesh_text)
    check_mapping_memory(mesh)
    return mesh


def prepare_mesh_kernels(console) -> None:
    """Compile (first run on a machine) or load the mesh engine's Numba kernels before the
    work starts, with a spinner and the elapsed time on a terminal, and one line afterwards
    when it took long enough to be a compile (emulator/mesh/engine.py `warm_up`)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from emulator.mesh.engine import warm_up

    started = time.perf_counter()
    if console.is_terminal:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            bar.add_task("preparing the mesh kernels (compiled on the first run only, "
                         "about a minute; later runs load them from the cache)")
            warmed = warm_up()
    else:
        warmed = warm_up()
    elapsed = time.perf_counter() - started
    if warmed and elapsed > COMPILE_NOTE_SECONDS:
        console.print(f"emu: compiled the mesh kernels in {elapsed:.1f} s (first run only; "
                      f"cached in emulator/mesh/__pycache__)", highlight=False)
