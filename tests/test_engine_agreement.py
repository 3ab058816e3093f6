"""The Numba engine agrees exactly with the reference interpreter on random programs.

Programs come from `tests.strategies.random_programs()` (valid, deadlock-free, every op
and addressing mode, multicast, runtime routes, barriers). Agreement means identical cycles,
per-PE finish and busy times, link loads, instruction and message counts and bit-identical
SRAM, in functional and timing-only mode; for programs broken on purpose (SRAM too small,
a router entry cleared, a cycle limit) it means the same MeshFault message.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.hw.errors import MeshFault
from emulator.hw.mesh import load_mesh
from emulator.mesh.engine import run_numba
from isa.asm import assemble
from isa.interpreter import run_reference
from tests.strategies import random_programs

SMALL = load_mesh("small")


def outcome(engine, program, sram, functional, max_cycles=10**9):
    """An engine's RunResult, or its MeshFault message."""
    mesh = SMALL.with_mesh(program.width, program.height)
    try:
        return engine(program, mesh, sram=sram, functional=functional, max_cycles=max_cycles)
    except MeshFault as fault:
        return str(fault)


def assert_same(ref, fast):
    """Identical results (or identical fault messages)."""
    if isinstance(ref, str) or isinstance(fast, str):
        assert ref == fast
        return
    for name in ("cycles", "instructions", "messages"):
        assert getattr(fast, name) == getattr(ref, name), name
    for name in ("pe_finish", "pe_busy", "link_busy"):
        assert getattr(fast, name).dtype == np.int64
        assert np.array_equal(getattr(fast, name), getattr(ref, name)), name
    if ref.sram is None:
        assert fast.sram is None
    else:
        assert fast.sram.dtype == np.float32
        assert np.array_equal(fast.sram.view(np.uint32), ref.sram.view(np.uint32)), "sram"


@given(random_programs())
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_engines_agree_on_random_programs(generated):
    program = assemble(generated.text, sram_bytes=SMALL.sram_bytes)
    for functional in (True, False):
        ref = outcome(run_reference, program, generated.sram, functional)
        assert not isinstance(ref, str), ref      # the strategy promises valid programs
        assert_same(ref, outcome(run_numba, program, generated.sram, functional))


@given(random_programs(), st.integers(0, 2**32 - 1), st.sampled_from(["sram", "route",
                                                                      "cycles"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_engines_agree_on_broken_programs(generated, seed, breakage):
    rng = np.random.default_rng(seed)
    program = assemble(generated.text, sram_bytes=SMALL.sram_bytes)
    sram, max_cycles = generated.sram, 10**9
    if breakage == "sram":
        program.sram_words = int(rng.integers(1, program.sram_words))
        sram = np.ascontiguousarray(sram[:, :program.sram_words])
    elif breakage == "route":
        used = np.argwhere(program.route_tx)
        if len(used):
            pe, color = used[rng.integers(len(used))]
            table = program.route_rx if rng.integers(2) else program.route_tx
            table[pe, color] = 0
    else:
        max_cycles = int(rng.integers(0, 400))
    for functional in (True, False):
        assert_same(outcome(run_reference, program, sram, functional, max_cycles),
                    outcome(run_numba, program, sram, functional, max_cycles))
