"""Option parsing shared by the `emu` subcommands (one definition of each user-facing rule)."""

import re

from emulator.hw.errors import ConfigError
from emulator.hw.mesh import MeshConfig, load_mesh


def parse_dims(text: str | None, option: str, form: str, example: str):
    """'AxB' -> (A, B) of positive integers, None when absent; ConfigError naming `option`
    and the expected `form` (e.g. 'WxH') when malformed."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
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
    return mesh.with_mesh(*size) if size else mesh
