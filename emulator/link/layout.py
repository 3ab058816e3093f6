"""Cycles to lay a transferred KV cache out in the wafer's SRAM (docs/timing.md, KV layout).

The cache enters the wafer at its west edge, one stream per mesh row, and flows east along
the row to the PEs that hold it (row j holds the kv-head groups the tile pass gave it, or
in the spread layout its head dims of its band's group; a position t lives on PE
t mod pw). Row j's stream carries `B_j = prompt_len x kv_dims(j) x layers x bytes`
(`kv_dims(j)` = 2 x head_dim x groups(j), or the spread row's K and V dims) at one
wavelet per cycle, so
it finishes `o + 2r + (pw - 1) h + ceil(B_j / wavelet_bytes)` cycles after it starts; rows
stream in parallel and the layout takes the slowest row.
"""

import math

from compiler.numerics import dtype_bytes
from compiler.place import kv_dims_per_row
from emulator.hw.mesh import MeshConfig


def row_kv_bytes(compiled, prompt_len: int, dtype: str) -> list[int]:
    """KV bytes stored on each mesh row of the mapping: the row's K and V elements per
    position and layer (compiler.place.kv_dims_per_row: 2 x head_dim per kv group, or the
    spread layout's dims of the row) x prompt_len x layers x bytes."""
    plan = compiled.plan
    per_dim = prompt_len * plan.spec.num_layers * dtype_bytes(dtype)
    return [int(d) * per_dim for d in kv_dims_per_row(plan)]


def kv_layout_cycles(compiled, mesh: MeshConfig, prompt_len: int, dtype: str) -> int:
    """Cycles from the first KV wavelet entering the wafer to the last one stored."""
    rows = row_kv_bytes(compiled, prompt_len, dtype)
    busiest = max(rows, default=0)
    if busiest == 0:
        return 0
    pw = compiled.plan.pw
    return (mesh.issue_overhead + 2 * mesh.ramp_latency + (pw - 1) * mesh.hop_latency
            + math.ceil(busiest / mesh.wavelet_bytes))
