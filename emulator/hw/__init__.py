"""Hardware descriptions: frozen dataclasses loaded from JSON presets with cited sources.

`load_mesh("wse3")` or `load_mesh("path/to/file.json")`; presets ship in `emulator/hw/presets/`.
"""

from emulator.hw.mesh import MeshConfig, load_mesh
from emulator.hw.presets import list_presets, load_preset

__all__ = ["MeshConfig", "load_mesh", "load_preset", "list_presets"]
