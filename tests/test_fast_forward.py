"""The exact layer fast-forward (emulator/mesh/fast_forward.py): a fast-forwarded timing-only
run equals the full run in every RunResult field, on random decode programs and against
the reference interpreter; programs that do not qualify run in full with the same
result."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.decode import compile_decode, layer_cuts
from emulator.hw.errors import ConfigError, MeshFault
from emulator.hw.mesh import load_mesh
from emulator.mesh import kernels as K
from emulator.mesh.engine import run_numba
from emulator.mesh.fast_forward import Cut, block_layout, block_shift
from emulator.mesh.runtime import run_timing
from isa.asm import assemble
from isa.interpreter import run_reference
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
    layouts = ["groups", "even"] + (["spread"] if shape[1] >= kv else [])
    compiled = compile_decode(spec, mesh, draw(st.sampled_from(["fp32", "bf16"])), 16,
                              draw(st.sampled_from(layouts)), head=draw(st.booleans()))
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


def test_cuts_are_the_qkv_marks_of_every_layer():
    spec = make_spec(layers=4)
    mesh = load_mesh("small").with_mesh(3, 2)
    for head in (True, False):
        compiled = compile_decode(spec, mesh, "fp32", 16, head=head)
        assert layer_cuts(compiled) == ["L0.qkv", "L1.qkv", "L2.qkv", "L3.qkv",
                                        "head" if head else "end"]


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
    assert fast.skipped_blocks == (4 if qualifies else 0)   # blocks 1 .. 4 of b0 .. b5


@pytest.mark.parametrize("register_count, written", [(False, []), (True, [0])])
def test_cuts_keep_only_the_registers_blocks_write(register_count, written):
    """`movr r0, 2` before the first cut writes r0 once; with `register_count` every block
    also adds to it, so cuts must keep r0 (and block_shift compares it)."""
    program = assemble(block_program([4] * 6, register_count), "blocks.asm")
    layout = block_layout(program, [f"b{b}" for b in range(6)])
    assert layout.block_regs.tolist() == written


def dead_register_program(read_first: bool) -> str:
    """`block_program`'s sender with every block setting r1 (`movr r1, 4`) just before the
    vadd whose count it is; with `read_first` a block reads r1 (as a count) before that."""
    lines = []
    for b in range(6):
        lines += [f"    mark b{b}"] + (["    vadd [8], [0], [4], r1"] if read_first else [])
        lines += ["    movr r1, 4", "    vadd [8], [0], [4], r1", "    send c0, [0], 3"]
    receiver = "\n".join(f"    mark b{b}\n    recv c0, [16], 3" for b in range(6))
    return "\n".join([".mesh 2x1", ".dtype fp32", ".sram 32", ".region sender 0,0 0,0",
                      ".route c0 rx=R tx=E", *lines, "    mark tail", "    halt",
                      ".region receiver 1,0 1,0", ".route c0 rx=W tx=R", receiver,
                      "    mark tail", "    halt", ""])


@pytest.mark.parametrize("jobs", JOBS)
@pytest.mark.parametrize("read_first, written, skipped", [(False, [], 4), (True, [1], 3)])
def test_registers_dead_at_every_cut_need_not_repeat(read_first, written, skipped, jobs):
    """r1 holds 0 at the first cut and 4 at every later one; written before any read in
    each block, its value at a cut never matters, so block 0 repeats (4 blocks skipped).
    Read first, it must repeat: block 0 does not, block 1 does (3 skipped)."""
    program = assemble(dead_register_program(read_first), "dead.asm")
    cuts = [f"b{b}" for b in range(6)]
    assert block_layout(program, cuts).block_regs.tolist() == written
    mesh = load_mesh("small").with_mesh(2, 1)
    fast = run_numba(program, mesh, functional=False, fast_forward=cuts, jobs=jobs)
    assert_same(run_reference(program, mesh, functional=False), fast)
    assert fast.skipped_blocks == skipped


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


def chain_program(prologue, before, after, sizes, order, bypass=0, lead=0) -> str:
    """PEs in a row, six blocks `mark bK` each: PE i computes (`before[i]` elements),
    receives `sizes[i-1]` values from PE i-1, computes again (`after[i]`), marks `hK` and
    sends `sizes[i]` values to PE i+1 (receive and send swapped where `order[i]`), on colors
    that alternate along the row. `prologue[i]`: elements PE i adds before the first
    block, so the PEs enter block 0 at different cycles than later blocks. `bypass` > 0:
    the first PE also sends that many values per block straight to the last (color 2,
    through every router between), contending for the links with the row's messages.
    `lead` > 0: before the blocks, the first PE sends that many values to the second, so
    block 0's first message on that link may have to wait for it."""
    n = len(prologue)
    lines = [f".mesh {n}x1", ".dtype fp32", ".sram 32"]
    for i in range(n):
        lines += [f".region p{i} {i},0 {i},0"]
        lines += [f".route c{(i - 1) % 2} rx=W tx=R"] if i > 0 else []
        lines += [f".route c{i % 2} rx=R tx=E"] if i < n - 1 else []
        recv = [f"    recv c{(i - 1) % 2}, [16], {sizes[i - 1]}"] if i > 0 else []
        send = [f"    send c{i % 2}, [0], {sizes[i]}"] if i < n - 1 else []
        comm = send + recv if order[i] and i > 0 else recv + send
        if bypass and n > 2:
            port = "rx=R tx=E" if i == 0 else ("rx=W tx=R" if i == n - 1 else "rx=W tx=E")
            lines += [f".route c2 {port}"]
            comm += ([f"    send c2, [0], {bypass}"] if i == 0 else
                     [f"    recv c2, [24], {bypass}"] if i == n - 1 else [])
        lines += [f"    vadd [8], [0], [4], {prologue[i]}"]
        lines += ([f"    send c0, [0], {lead}"] if lead and i == 0 else
                  [f"    recv c0, [16], {lead}"] if lead and i == 1 else [])
        for b in range(6):
            lines += [f"    mark b{b}", f"    vadd [8], [0], [4], {before[i]}",
                      comm[0] if comm else "    nop", f"    vadd [8], [0], [4], {after[i]}",
                      f"    mark h{b}"]
            lines += comm[1:]
        lines += ["    mark tail", "    halt"]
    return "\n".join(lines + [""])


@st.composite
def chains(draw):
    n = draw(st.integers(2, 6))
    counts = st.lists(st.integers(1, 8), min_size=n, max_size=n)
    return (draw(counts), draw(counts), draw(counts), draw(counts),
            draw(st.lists(st.booleans(), min_size=n, max_size=n)), draw(st.integers(0, 8)),
            draw(st.integers(0, 16)))


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(chains(), st.sampled_from(JOBS), st.booleans())
def test_blocks_entered_at_other_cycles_fast_forward_exactly(chain, jobs, partial):
    """Block 0 starts from the prologue's clocks, later blocks from the previous block's:
    the fast-forward repeats block 0 only where the different start cannot matter
    (block_shift), else block 1, else runs in full; every field equals the full run's.
    With `partial`, the last cut is `h5`, so the last block is block 0's beginning (up to
    `h0`), which the forked head skips when block 0 repeats."""
    program = assemble(chain_program(*chain), "chain.asm")
    mesh = load_mesh("small").with_mesh(len(chain[0]), 1)
    full = run_reference(program, mesh, functional=False)
    cuts = [f"b{b}" for b in range(6)] + (["h5"] if partial else [])
    fast = run_numba(program, mesh, functional=False, fast_forward=cuts, jobs=jobs)
    assert_same(full, fast)
    assert fast.skipped_blocks in (0, 3, 4)


def synthetic_cut(clocks, slack_states, free, used=None, slack=None) -> Cut:
    """A Cut of len(clocks) PEs with these clocks and P_SLACK values, one link per PE
    (the north one) with free cycle `free` and first-reservation tracking (used, slack)."""
    n = len(clocks)
    links = np.zeros(8 * n, np.int64)
    links[0::8] = free
    used_all, slack_all = np.zeros(4 * n, bool), np.full(4 * n, -1)
    used_all[0::4] = False if used is None else used
    slack_all[0::4] = -1 if slack is None else slack
    return Cut(np.array(clocks), np.zeros(n, np.int64), np.array(slack_states),
               np.zeros((n, 8), np.int64), links, np.zeros((0, 3), np.int64),
               np.zeros(K.ST_SIZE, np.int64), None, -1, used_all, slack_all)


@pytest.mark.parametrize("late_clock, repeats", [(105, True), (113, True), (114, False)])
def test_a_pe_that_waited_for_its_message_may_start_elsewhere(late_clock, repeats):
    """PE 0's first act was a send: it must move by exactly D = 100. PE 1's first act was
    a receive that waited 3 cycles: from its later state it may start any earlier, or up
    to 3 cycles later, than 100 cycles after its start in the block."""
    waited = K.SLACK_ABSORBED + 3
    start = synthetic_cut([10, 10], [K.SLACK_OFF] * 2, [0, 0])
    end = synthetic_cut([110, late_clock], [K.SLACK_TAINTED, waited], [0, 0])
    assert block_shift(start, end) == (100 if repeats else None)


@pytest.mark.parametrize("end_free, used, slack, repeats", [
    (160, False, -1, True),    # not reserved in the block: its free cycle cannot matter
    (150, True, -1, True),     # the same cycle, 100 later
    (130, True, -1, False),    # earlier, but the first reservation had to wait for it
    (130, True, 0, True),      # earlier, and the first reservation did not wait
    (160, True, 10, True),     # 10 later, and the first reservation had 10 cycles to spare
    (161, True, 10, False),    # 11 later
])
def test_a_link_may_be_free_at_another_cycle_only_where_that_cannot_matter(end_free, used,
                                                                           slack, repeats):
    start = synthetic_cut([10, 10], [K.SLACK_OFF] * 2, [50, 0])
    end = synthetic_cut([110, 110], [K.SLACK_TAINTED] * 2, [end_free, 0], [used, False],
                        [slack, -1])
    assert block_shift(start, end) == (100 if repeats else None)


@pytest.mark.parametrize("jobs", JOBS)
def test_fast_forward_is_exact_with_message_and_transcendental_costs(jobs):
    """The WSE presets' per-message software overhead and transcendental cost change no
    field between a fast-forwarded and a full run (spread layout, 5 layers)."""
    spec = make_spec("LlamaForCausalLM", 24, 4, 2, 4, ffn=30, vocab=40, layers=5)
    mesh = dataclasses.replace(load_mesh("small").with_mesh(8, 4), message_overhead=5,
                               transcendental_cycles=10)
    compiled = compile_decode(spec, mesh, "bf16", 16, "spread")
    full = run_timing(compiled, mesh, 11, fast_forward=False)
    fast = run_timing(compiled, mesh, 11, jobs=jobs)
    assert fast.skipped_blocks > 0
    assert_same(full, fast)
