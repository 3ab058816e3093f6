"""The catalogue of bundled hardware presets for `emu presets`: every preset's kind, name
and description, and one preset's fields with value, unit and public source.

Units follow the fields' naming rules (emulator/hw/mesh.py, prefill.py, link.py): a name
ending in `_bytes_per_s` is bytes per second, `_bytes` bytes, `_hz` Hz, `_s` seconds,
`_flops` FLOP/s, `_cycles` or `latency` (on the mesh) cycles; `UNITS` names the rest.
"""

import dataclasses

from emulator.hw.errors import ConfigError
from emulator.hw.link import LinkConfig, load_link
from emulator.hw.mesh import MeshConfig, load_mesh
from emulator.hw.prefill import PrefillConfig, load_prefill
from emulator.hw.presets import list_presets, read_preset_json

KINDS = {"mesh": (MeshConfig, load_mesh), "prefill": (PrefillConfig, load_prefill),
         "link": (LinkConfig, load_link)}
SUFFIX_UNITS = (("_bytes_per_s", "B/s"), ("_bytes", "B"), ("_hz", "Hz"), ("_flops", "FLOP/s"),
                ("_cycles", "cycles"), ("_latency_s", "s"), ("_s", "s"), ("latency", "cycles"),
                ("_w", "W"), ("_usd_per_hour", "$/h"), ("_j", "J"))
UNITS = {"name": "", "width": "PEs", "height": "PEs", "issue_overhead": "cycles",
         "simd_fp32": "elements/cycle", "simd_fp16": "elements/cycle",
         "simd_bf16": "elements/cycle", "vector_elems_per_cycle": "elements/cycle",
         "scalar_elems_per_cycle": "elements/cycle", "mm_fp32_factor": "x",
         "ls_speedup": "x", "fp8_contraction_factor": "x", "mx_matmul": "flag"}


def unit_of(field: str) -> str:
    """The unit of a preset field by the naming rules ('count' for plain numbers)."""
    if field in UNITS:
        return UNITS[field]
    for suffix, unit in SUFFIX_UNITS:
        if field.endswith(suffix):
            return unit
    return "count"


def all_presets() -> list[dict]:
    """Every bundled preset: {kind, name, description}, by kind then name."""
    rows = []
    for kind in KINDS:
        for name in list_presets(kind):
            data, _ = read_preset_json(kind, name)
            rows.append({"kind": kind, "name": name,
                         "description": data.get("description", "")})
    return rows


def kind_of(name: str) -> str:
    """The kind of bundled preset `name` (names are unique across kinds)."""
    kinds = [kind for kind in KINDS if name in list_presets(kind)]
    if not kinds:
        known = ", ".join(row["name"] for row in all_presets())
        raise ConfigError(f"{name}: no such bundled preset (bundled presets: {known})")
    return kinds[0]


def describe(name: str) -> dict:
    """{kind, name, description, fields: [{field, value, unit, source}]} of bundled preset
    `name`, its values loaded and validated through its dataclass."""
    kind = kind_of(name)
    cls, load = KINDS[kind]
    preset = load(name)
    data, _ = read_preset_json(kind, name)
    sources = data.get("sources", {})
    fields = [{"field": f.name, "value": getattr(preset, f.name), "unit": unit_of(f.name),
               "source": sources.get(f.name, "" if f.name == "name" else
                                     "(default of the dataclass)" if f.name not in data
                                     else "")}
              for f in dataclasses.fields(cls)]
    return {"kind": kind, "name": name, "description": data.get("description", ""),
            "fields": fields}
