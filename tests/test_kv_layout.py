"""KV layout into the wafer (emulator/link/layout.py): the closed form, and the spread
layout streaming over every band row of the west edge, faster than the wafer's I/O."""

import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.decode import compile_decode
from compiler.frontend import resolve_model
from compiler.place import kv_dims_per_row
from compiler.tile import tile
from emulator.hw.mesh import load_mesh
from emulator.link.layout import kv_layout_cycles, row_kv_bytes


@settings(max_examples=15, deadline=None)
@given(side=st.integers(4, 10), prompt=st.integers(1, 300),
       dtype=st.sampled_from(["fp32", "bf16"]))
def test_layout_cycles_follow_the_closed_form(side, prompt, dtype):
    mesh = load_mesh("small").with_mesh(side, side)
    spec = resolve_model("tiny")
    compiled = compile_decode(spec, mesh, dtype=dtype, max_context=max(prompt, side))
    size = 4 if dtype == "fp32" else 2
    rows = [int(d) * prompt * spec.num_layers * size for d in kv_dims_per_row(compiled.plan)]
    assert row_kv_bytes(compiled, prompt, dtype) == rows
    expect = (mesh.issue_overhead + 2 * mesh.ramp_latency
              + (compiled.plan.pw - 1) * mesh.hop_latency
              + math.ceil(max(rows) / mesh.wavelet_bytes))
    assert kv_layout_cycles(compiled, mesh, prompt, dtype) == expect


def test_no_prompt_costs_nothing():
    mesh = load_mesh("small").with_mesh(6, 6)
    compiled = compile_decode(resolve_model("tiny"), mesh)
    assert kv_layout_cycles(compiled, mesh, 0, "fp32") == 0


@pytest.mark.parametrize("prompt", [8192])
def test_spread_layout_uses_the_whole_west_edge(prompt):
    """8B on WSE-3: 1,024 of 1,170 rows carry KV, so laying out an 8k-token cache runs at
    over 3 TB/s, far above the CS-3's 150 GB/s of I/O (the link, not the layout, bounds
    the transfer)."""
    mesh = load_mesh("wse3")
    plan = tile(resolve_model("llama-3.1-8b"), mesh.width, mesh.height, "spread")
    compiled = SimpleNamespace(plan=plan)     # the layout reads only the tile plan
    rows = row_kv_bytes(compiled, prompt, "bf16")
    assert sum(1 for r in rows if r) >= 0.875 * compiled.plan.ph
    seconds = kv_layout_cycles(compiled, mesh, prompt, "bf16") / mesh.clock_hz
    assert sum(rows) / seconds > 20 * mesh.io_bytes_per_s
