"""Cycles to lay a transferred KV cache out in the wafer's SRAM (docs/timing.md, KV layout).

The cache enters the wafer at its west edge, one stream per mesh row, and flows east along
the row to the PEs that hold it (row j holds the kv-head groups the tile pass gave it; a
position t lives on PE t mod pw). Row j's stream carries
`B_j = prompt_len x groups(j) x 2 x layers x head_dim x bytes` at one wavelet per cycle, so
it finishes `o + 2r + (pw - 1) h + ceil(B_j / wavelet_bytes)` cycles after it starts; rows
stream in parallel and the layout takes the slowest row.
"""

import math

from compiler.numerics import dtype_bytes
from emulator.hw.mesh import MeshConfig


def row_kv_bytes(compiled, prompt_len: int, dtype: str) -> list[int]:
    """KV bytes stored on each mesh row of the mapping."""
    plan = compiled.plan
    spec = plan.spec
    per_group = prompt_len * 2 * spec.num_layers * spec.head_dim * dtype_bytes(dtype)
    return [plan.groups_on_row(j)[1] * per_group for j in range(plan.ph)]


def kv_layout_cycles(compiled, mesh: MeshConfig, prompt_len: int, dtype: str) -> int:
    """Cycles from the first KV wavelet entering the wafer to the last one stored."""
    rows = row_kv_bytes(compiled, prompt_len, dtype)
    busiest = max(rows, default=0)
    if busiest == 0:
        return 0
    pw = compiled.plan.pw
    return (mesh.issue_overhead + 2 * mesh.ramp_latency + (pw - 1) * mesh.hop_latency
            + math.ceil(busiest / mesh.wavelet_bytes))
