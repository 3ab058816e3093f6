"""Option parsing and start-up steps shared by the `emu` subcommands (one definition of
each user-facing rule)."""

import re
import time

from emulator.hw.errors import ConfigError
from emulator.hw.mesh import MeshConfig, load_mesh
from emulator.limits import check_memory

# Host bytes per PE of mapping a model onto a mesh (tile, place, route, emit: the per-PE
# region, parameter and router tables). Measured with tracemalloc for `tiny` at
# 64x64 / 128x128 / 256x256 PEs: 268 / 166 / 122 B per PE; this bound is twice the largest.
COMPILE_BYTES_PER_PE = 512

COMPILE_NOTE_SECONDS = 5.0   # a warm-up longer than this was a compile: say so


def parse_dims(text: str | None, option: str, form: str, example: str):
    """'AxB' -> (A, B) of positive integers, None when absent; ConfigError naming `option`
    and the expected `form` (e.g. 'WxH') when malformed."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,18})\s*[xX]\s*(\d{1,18})\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ConfigError(f"{option}: expected {form} with positive integers, "
                          f"e.g. {example}, got '{text}'")
    return int(match.group(1)), int(match.group(2))


def parse_mesh_size(text: str | None, option: str = "--mesh") -> tuple[int, int] | None:
    """'WxH' -> (W, H), None when absent; ConfigError naming `option` when malformed."""
    return parse_dims(text, option, "WxH", "8x4")


def load_sized_mesh(hw: str, mesh_text: str | None) -> MeshConfig:
    """The mesh preset `hw` (name or file), resized by a --mesh WxH value when given."""
    mesh = load_mesh(hw)
    size = parse_mesh_size(mesh_text)
    mesh = mesh.with_mesh(*size) if size else mesh
    check_memory(mesh.num_pes * COMPILE_BYTES_PER_PE,
                 f"mapping onto a {mesh.width}x{mesh.height} mesh")
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
