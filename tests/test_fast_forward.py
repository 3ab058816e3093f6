"""The exact layer fast-forward (emulator/fast_forward.py): a fast-forwarded timing-only
run equals the full run in every RunResult field, on random decode programs and against
the reference interpreter; programs that do not qualify run in full with the same
result."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.decode import compile_decode, layer_cuts, run_timing
from emulator.errors import ConfigError, MeshFault
from emulator.hw.mesh import load_mesh
from emulator.mesh_engine import run_numba
from isa.asm import assemble
from isa.reference import run_reference
from tests.test_decode_mesh import make_spec

FIELDS = ("cycles", "instructions", "messages", "pe_finish", "pe_busy", "link_busy",
          "mark_first", "mark_last", "mark_count")
MESHES = [(3, 2), (4, 4), (5, 3), (8, 4), (7, 9)]
JOBS = (1, 2)   # in this process; with the block check and the head in forked children


def assert_same(full, fast) -> None:
    """Every timing field of two RunResults is equal."""
    for name in FIELDS:
        assert np.array_equal(getattr(full, name), getattr(fast, name)), name


@st.composite
def decode_cases(draw, dense: bool):
    """(compiled decode, mesh, position) of a tiny model with 4 to 7 layers. `dense`:
    every vector has at least two elements per mesh row and column, so every PE takes
    part in every layer; otherwise chunks may be empty."""
    shape = draw(st.sampled_from(MESHES))
    least = 2 * max(shape) if dense else 3
    kv = draw(st.integers(1, 3))
    heads = kv * draw(st.sampled_from([1, 2, 3]))
    head_dim = draw(st.sampled_from([2, 4, 6]))
    llama = draw(st.booleans())
    spec = make_spec("LlamaForCausalLM" if llama else "Qwen2ForCausalLM",
                     draw(st.integers(max(4, least), max(30, least))), heads, kv, head_dim,
                     ffn=draw(st.integers(least, 40)), vocab=draw(st.integers(least, 50)),
                     layers=draw(st.integers(4, 7)), tie=draw(st.booleans()),
                     attention_bias=draw(st.booleans()) if llama else None,
                     mlp_bias=draw(st.booleans()) if llama else None)
    mesh = load_mesh("small").with_mesh(*shape)
    compiled = compile_decode(spec, mesh, draw(st.sampled_from(["fp32", "bf16"])), 16,
                              draw(st.sampled_from(["groups", "even"])),
                              head=draw(st.booleans()))
    return compiled, mesh, draw(st.integers(0, 15))


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(decode_cases(dense=True))
def test_fast_forward_skips_all_middle_layers_exactly(case):
    compiled, mesh, pos = case
    full = run_timing(compiled, mesh, pos, fast_forward=False)
    assert full.skipped_blocks == 0
    for jobs in JOBS:
        fast = run_timing(compiled, mesh, pos, jobs=jobs)
        assert_same(full, fast)
        assert fast.skipped_blocks == compiled.plan.spec.num_layers - 2


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(decode_cases(dense=False))
def test_fast_forward_equals_full_run_with_empty_chunks(case):
    """PEs with nothing to do in a layer run ahead, so the mesh state is no uniform shift;
    the run then falls back to a full one (or skips, when it still qualifies)."""
    compiled, mesh, pos = case
    full = run_timing(compiled, mesh, pos, fast_forward=False)
    for jobs in JOBS:
        fast = run_timing(compiled, mesh, pos, jobs=jobs)
        assert_same(full, fast)
        assert fast.skipped_blocks in (0, compiled.plan.spec.num_layers - 2)


def test_fast_forward_equals_reference_interpreter():
    spec = make_spec(hidden=24, heads=4, kv_heads=2, ffn=40, vocab=30, layers=5)
    mesh = load_mesh("small").with_mesh(4, 3)
    compiled = compile_decode(spec, mesh, "fp16", 16, "even")
    expected = run_timing(compiled, mesh, 9, engine="reference")
    for jobs in JOBS:
        fast = run_timing(compiled, mesh, 9, jobs=jobs)
        assert fast.skipped_blocks == 3
        assert_same(expected, fast)


def test_cuts_are_layer_starts_then_head():
    spec = make_spec(layers=4)
    mesh = load_mesh("small").with_mesh(3, 2)
    with_head = compile_decode(spec, mesh, "fp32", 16)
    without = compile_decode(spec, mesh, "fp32", 16, head=False)
    assert layer_cuts(with_head) == ["L0.norm_in", "L1.norm_in", "L2.norm_in", "L3.norm_in",
                                     "head"]
    assert layer_cuts(without)[-1] == "end"


def block_program(counts, register_count=False, tail="", idle=0) -> str:
    """Two PEs, six blocks `mark bK` each: (0,0) adds counts[b] elements and sends 3
    values to (1,0), which receives them. With `register_count` the count of every block
    is r0, which grows by one per block (so the mesh state is no shift between blocks).
    `tail`: an instruction the receiver runs after the last block; `idle`: PEs with no
    region to the right of the two."""
    def blocks(comm):
        lines = ["    movr r0, 2"]
        for b, n in enumerate(counts):
            count = "r0" if register_count else n
            lines += [f"    mark b{b}", f"    vadd [8], [0], [4], {count}", f"    {comm}"]
            lines += ["    addr r0, 1"] if register_count else []
        return "\n".join(lines + ["    mark tail", "    halt"])
    return "\n".join([f".mesh {2 + idle}x1", ".dtype fp32", ".sram 32",
                      ".region sender 0,0 0,0", ".route c0 rx=R tx=E",
                      blocks("send c0, [0], 3"),
                      ".region receiver 1,0 1,0", ".route c0 rx=W tx=R",
                      blocks("recv c0, [16], 3").replace("mark tail", f"mark tail\n    {tail}"),
                      ""])


@pytest.mark.parametrize("jobs, idle", [(1, 0), (2, 0), (1, 1), (2, 1)])
@pytest.mark.parametrize("counts, register_count, qualifies", [
    ([4, 4, 4, 4, 4, 4], False, True),
    ([4, 4, 4, 5, 4, 4], False, False),      # block 3 differs in a count: not equivalent
    ([4, 4, 4, 4, 4, 4], True, False),       # the count grows in a register
])
def test_programs_that_do_not_qualify_run_in_full(counts, register_count, qualifies, jobs,
                                                  idle):
    program = assemble(block_program(counts, register_count, idle=idle), "blocks.asm")
    mesh = load_mesh("small").with_mesh(2 + idle, 1)
    full = run_numba(program, mesh, functional=False)
    fast = run_numba(program, mesh, functional=False,
                     fast_forward=[f"b{b}" for b in range(6)], jobs=jobs)
    assert_same(full, fast)
    assert_same(run_reference(program, mesh, functional=False), fast)
    assert fast.skipped_blocks == (3 if qualifies else 0)


def test_fast_forward_needs_timing_only():
    spec = make_spec(layers=4)
    mesh = load_mesh("small").with_mesh(3, 2)
    compiled = compile_decode(spec, mesh, "fp32", 16)
    with pytest.raises(ConfigError, match="timing-only"):
        run_numba(compiled.decode.for_position(0), mesh, functional=True,
                  fast_forward=layer_cuts(compiled))


@pytest.mark.parametrize("jobs", JOBS)
@pytest.mark.parametrize("tail, limit_cut", [
    ("nop", 1),                      # the last block passes the cycle limit
    ("recv c0, [16], 3", 0),         # after the blocks, a receive nobody sends to
    ("movr r1, 9\n    vadd [28], [0], [4], r1", 0),   # after the blocks, past the SRAM
])
def test_a_fault_is_reported_as_the_full_run_reports_it(tail, limit_cut, jobs):
    program = assemble(block_program([4, 4, 4, 4, 4, 4], tail=tail), "blocks.asm")
    mesh = load_mesh("small").with_mesh(2, 1)
    cuts = [f"b{b}" for b in range(6)] + ["tail"]
    limit = 10**9
    if limit_cut:
        limit = run_numba(program, mesh, functional=False).cycles - 1
    with pytest.raises(MeshFault) as expected:
        run_numba(program, mesh, functional=False, max_cycles=limit)
    with pytest.raises(MeshFault) as got:
        run_numba(program, mesh, functional=False, max_cycles=limit, fast_forward=cuts,
                  jobs=jobs)
    assert str(got.value) == str(expected.value)
