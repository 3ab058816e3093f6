"""Option parsing shared by the `emu` subcommands (one definition of each user-facing rule).

The rules live in the library (`emulator.hw`) so that `emu sweep` applies the same ones;
this module keeps the names the subcommands import.
"""

from emulator.hw.mesh import load_sized_mesh, parse_mesh_size
from emulator.hw.presets import parse_dims

__all__ = ["load_sized_mesh", "parse_dims", "parse_mesh_size"]
