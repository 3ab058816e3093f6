"""The example programs in programs/asm: exact cycles from docs/timing.md on both engines.

Each file's header comment derives its cycle count (`cycles = ... = N`); the tests check
the engines against that number, so the comments cannot drift from the behaviour.
"""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from emulator.hw.mesh import load_mesh
from emulator.mesh.engine import run_numba
from isa.asm import assemble, assemble_file
from isa.interpreter import run_reference
from isa.opcodes import Op
from tests.strategies import generate_program, random_programs

PROGRAMS = Path(__file__).resolve().parent.parent / "programs" / "asm"
EXPECTED = {"hello": 8, "row_broadcast": 26, "row_reduce": 84, "contention": 22,
            "gemv4x4": 44}
ENGINES = {"reference": run_reference, "numba": run_numba}


def mesh_for(program, **changes):
    return dataclasses.replace(load_mesh("small").with_mesh(program.width, program.height),
                               **changes)


def documented_cycles(path: Path) -> int:
    """The N of the last 'cycles = ... = N' line of the file's comments."""
    found = re.findall(r"^;\s*cycles = .*?(\d+)\s*$", path.read_text(), re.M)
    assert found, f"{path.name} documents no 'cycles = ...' line"
    return int(found[-1])


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_example_cycles(name, engine):
    path = PROGRAMS / f"{name}.asm"
    program = assemble_file(path)
    assert documented_cycles(path) == EXPECTED[name]
    mesh = mesh_for(program)
    result = ENGINES[engine](program, mesh)
    assert result.cycles == EXPECTED[name]
    timing = ENGINES[engine](program, mesh, functional=False)
    assert timing.cycles == EXPECTED[name] and timing.sram is None
    assert np.array_equal(timing.pe_busy, result.pe_busy)


def test_examples_agree_between_engines():
    for name in EXPECTED:
        program = assemble_file(PROGRAMS / f"{name}.asm")
        mesh = mesh_for(program)
        ref, fast = run_reference(program, mesh), run_numba(program, mesh)
        for field in ("pe_finish", "pe_busy", "link_busy", "sram"):
            assert np.array_equal(getattr(ref, field), getattr(fast, field)), (name, field)
        assert (ref.instructions, ref.messages) == (fast.instructions, fast.messages)


def test_example_values():
    hello = run_reference(*_load("hello"))
    assert hello.sram[1, :4].tolist() == [1, 2, 3, 4]
    broadcast = run_reference(*_load("row_broadcast"))
    assert (broadcast.sram == np.arange(1, 17, dtype=np.float32)).all()
    reduce = run_reference(*_load("row_reduce"))
    assert reduce.sram[0].tolist() == [8.0 * v for v in range(1, 9)]
    contention = run_reference(*_load("contention"))
    assert contention.sram[2, :16].tolist() == [1.0] * 8 + [2.0] * 8
    # Link loads: flow A uses two links, flow B one; the shared link carries both.
    assert contention.link_busy[:, 1].tolist() == [8, 16, 0]


def _load(name):
    program = assemble_file(PROGRAMS / f"{name}.asm")
    return program, mesh_for(program)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_gemv_matches_numpy(engine):
    program, mesh = _load("gemv4x4")
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((16, 16)).astype(np.float32)
    vector = rng.standard_normal(16).astype(np.float32)
    sram = np.zeros((16, program.sram_words), np.float32)
    for py in range(4):
        for px in range(4):
            pe = py * 4 + px
            sram[pe, :16] = matrix[4 * py:4 * py + 4, 4 * px:4 * px + 4].ravel()
            sram[pe, 16:20] = vector[4 * px:4 * px + 4]
    result = ENGINES[engine](program, mesh, sram=sram)
    y = np.concatenate([result.sram[py * 4, 20:24] for py in range(4)])
    np.testing.assert_allclose(y, matrix.astype(np.float64) @ vector, rtol=1e-5, atol=1e-5)
    assert result.cycles == EXPECTED["gemv4x4"]


def test_gemv_demo_data():
    result = run_numba(*_load("gemv4x4"))
    assert result.sram[::4, 20:24].tolist() == [[26, 45, 14, -17]] * 4


POINT_TO_POINT = """.mesh {w}x1
.sram 64
.route c2 rx=W tx=E at 1,0 {last},0
.region src 0,0 0,0
.route c2 rx=R tx=E
    nop
    send c2, [0], {n}
.region dst {d},0 {d},0
.route c2 rx=W tx=R
    recv c2, [0], {n}
    halt
"""


@pytest.mark.parametrize("n, d, o, h, r", [(1, 1, 1, 1, 1), (7, 3, 1, 1, 1), (32, 5, 2, 3, 0),
                                           (5, 2, 0, 1, 4), (64, 1, 3, 2, 2)])
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_point_to_point_closed_form(engine, n, d, o, h, r):
    """last = t_send + o + 2r + d*h + n - 1; the receiver ends at last + 1."""
    text = POINT_TO_POINT.format(w=d + 1, d=d, n=n, last=max(d - 1, 1))
    if d == 1:
        text = text.replace(".route c2 rx=W tx=E at 1,0 1,0\n", "")
    program = assemble(text)
    result = ENGINES[engine](program, mesh_for(program, issue_overhead=o, hop_latency=h,
                                               ramp_latency=r))
    t_send = o + 1                      # after the nop
    assert result.cycles == max(t_send + o + 2 * r + d * h + n, o + n)
    assert result.pe_finish[0] == t_send + o + n


@given(random_programs())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_run_cleanly(generated):
    """Strategy programs never fault or deadlock, keep values finite, and timing-only
    runs report the functional cycles."""
    program = assemble(generated.text)
    mesh = mesh_for(program)
    result = run_reference(program, mesh, sram=generated.sram)
    assert np.isfinite(result.sram).all()
    assert (result.pe_finish[program.pe_region >= 0] > 0).all() or result.cycles == 0
    assert run_reference(program, mesh, functional=False).cycles == result.cycles


def test_random_programs_cover_every_opcode():
    seen = set()
    for seed in range(60):
        program = assemble(generate_program(1 + seed % 6, 1 + seed // 10, seed).text)
        seen |= {Op(int(op)) for op in program.code["op"]}
    assert seen == set(Op)
