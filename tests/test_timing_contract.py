"""Exact cycle counts of docs/timing.md, on both engines and two parameter sets.

Every expected value is the closed form of docs/timing.md computed from the MeshConfig
fields (o = issue_overhead, h = hop_latency, r = ramp_latency, w = simd width,
B = barrier_latency), checked on the bundled `small` preset (o = h = r = 1, B = 0) and on
a preset with every latency different, so a formula that only holds for the defaults fails.
"""

from dataclasses import replace

import numpy as np
import pytest

from emulator.hw.mesh import MeshConfig, load_mesh
from emulator.mesh.engine import run_numba
from isa.asm import assemble
from isa.interpreter import run_reference
from isa.opcodes import PORT_E, PORT_R, PORT_W

SMALL = load_mesh("small")
ODD = replace(SMALL, issue_overhead=2, hop_latency=3, ramp_latency=2, barrier_latency=5,
              simd_fp16=4, simd_bf16=2)
MESHES = {"small": SMALL, "odd": ODD}
ENGINES = {"reference": run_reference, "numba": run_numba}


@pytest.fixture(params=sorted(MESHES))
def mesh(request) -> MeshConfig:
    """A mesh parameter set (resized per program by `run`)."""
    return MESHES[request.param]


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    """The engine under test."""
    return ENGINES[request.param]


def run(engine, text: str, mesh: MeshConfig, **kw):
    """Assemble `text` and run it on `mesh` resized to the program."""
    program = assemble(text)
    return engine(program, mesh.with_mesh(program.width, program.height), **kw), program


def point_to_point(d: int, n: int) -> str:
    """PE (0,0) sends n wavelets east to PE (d,0); the idle PEs between only forward."""
    forward = f".route c2 rx=W tx=E at 1,0 {d - 1},0\n" if d > 1 else ""
    return f""".mesh {d + 1}x1
.sram 64
{forward}.region src 0,0 0,0
.route c2 rx=R tx=E
    send c2, [0], {n}
    halt
.region dst {d},0 {d},0
.route c2 rx=W tx=R
    recv c2, [0], {n}
    halt
"""


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("n", [0, 1, 4, 16])
def test_point_to_point(engine, mesh, d, n):
    result, _ = run(engine, point_to_point(d, n), mesh)
    o, h, r = mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency
    t_send = 0
    assert result.pe_finish[0] == t_send + o + n                   # send busy o + n
    assert result.pe_finish[d] == t_send + o + 2 * r + d * h + n   # last + 1
    assert result.cycles == o + 2 * r + d * h + n
    assert list(result.link_busy[:d, 1]) == [n] * d                # east links carry n
    assert result.link_busy.sum() == d * n
    assert result.pe_busy[d] == o + n and result.messages == 1   # n = 0 too (timing.md)
    if mesh is SMALL:
        assert result.cycles == n + d + 3                          # docs: bundled presets


def test_point_to_point_south_and_late_receiver(engine, mesh):
    """A column route, and a receiver that posts its recv after the message arrived."""
    n, d, late = 6, 3, 100
    text = f""".mesh 1x{d + 1}
.sram 16
.route c0 rx=N tx=S at 0,1 0,{d - 1}
.region src 0,0 0,0
.route c0 rx=R tx=S
    send c0, [0], {n}
.region dst 0,{d} 0,{d}
.route c0 rx=N tx=R
    vset [0:0], {late}, 0.0
    recv c0, [0], {n}
"""
    result, _ = run(engine, text, mesh)
    o, h, r = mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency
    w = mesh.simd_width("fp32")
    posted = o + -(-late // w)
    assert posted + o + n > o + 2 * r + d * h + n       # the message waited for the core
    assert result.pe_finish[d] == max(posted + o + n, o + 2 * r + d * h + n)
    assert list(result.link_busy[:d, 2]) == [n] * d


def test_row_broadcast_by_multicast(engine, mesh):
    """One send reaches every PE of a row: each sees its own distance, links carry it once."""
    width, n = 6, 5
    text = f""".mesh {width}x1
.sram 8
.region src 0,0 0,0
.route c1 rx=R tx=E
.data 0 1 2 3 4 5
    send c1, [0], {n}
.region row 1,0 {width - 1},0
.route c1 rx=W tx=E|R
.route c1 rx=W tx=R at {width - 1},0 {width - 1},0
    recv c1, [0], {n}
"""
    result, program = run(engine, text, mesh)
    o, h, r = mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency
    for x in range(1, width):
        assert result.pe_finish[x] == o + 2 * r + x * h + n
    assert list(result.link_busy[:, 1]) == [n] * (width - 1) + [0]
    assert result.messages == width - 1
    assert np.all(result.sram[1:, :n] == np.arange(1, n + 1))


def test_chain_reduction_along_a_row(engine, mesh):
    """PE x adds the partial sum from the west to its own values and passes it east."""
    width, n = 5, 4
    result = engine(chain_program(width, n), mesh.with_mesh(width, 1))
    o, h, r = mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency
    step = o + 2 * r + h + n          # one hop; the next send issues as the recvadd ends
    for x in range(width):
        assert result.pe_finish[x] == x * step + (o + n if x < width - 1 else 0)
    assert result.sram[:, :n].tolist() == [[x + 1.0] * n for x in range(width)]
    assert list(result.link_busy[:, 1]) == [n] * (width - 1) + [0]


def chain_program(width: int, n: int):
    """The chain: colors alternate by column parity so each router injects (R -> E) on one
    color and delivers (W -> R) on the other."""
    lines = [f".mesh {width}x1", ".sram 8", ".params 2"]
    for name, x0, x1, body in (("first", 0, 0, ["send %p0, [0], N"]),
                               ("middle", 1, width - 2, ["recvadd %p1, [0], N",
                                                         "send %p0, [0], N"]),
                               ("last", width - 1, width - 1, ["recvadd %p1, [0], N"])):
        lines += [f".region {name} {x0},0 {x1},0", ".param p0 = x % 2",
                  ".param p1 = (x + 1) % 2", ".data 0 1 1 1 1"]
        lines += ["    " + line.replace("N", str(n)) for line in body]
    program = assemble("\n".join(lines) + "\n")
    x = np.arange(width)
    for color in (0, 1):
        sends = (x % 2 == color) & (x < width - 1)
        receives = (x % 2 != color) & (x > 0)
        program.route_rx[:, color] = np.where(sends, PORT_R, np.where(receives, PORT_W, 0))
        program.route_tx[:, color] = np.where(sends, PORT_E, np.where(receives, PORT_R, 0))
    return program


def contention_program(n1: int, n2: int, second_only: bool = False) -> str:
    """Flow 1 (c0) from (0,0) and flow 2 (c1) from (1,1) both reach router (1,0) one hop
    after leaving their source and share its east link to (2,0), which receives c1 first."""
    first = "" if second_only else f"    send c0, [0], {n1}\n"
    recv0 = "" if second_only else f"    recv c0, [0], {n1}\n"
    return f""".mesh 3x2
.sram 32
.route c0 rx=W tx=E at 1,0 1,0
.route c1 rx=S tx=E at 1,0 1,0
.region a 0,0 0,0
.route c0 rx=R tx=E
{first}.region b 1,1 1,1
.route c1 rx=R tx=N
    send c1, [0], {n2}
.region sink 2,0 2,0
.route c0 rx=W tx=R
.route c1 rx=W tx=R
    recv c1, [0], {n2}
{recv0}"""


def test_two_flows_contend_for_one_link(engine, mesh):
    n1, n2 = 7, 3
    o, h, r = mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency
    alone, _ = run(engine, contention_program(n1, n2, second_only=True), mesh)
    both, _ = run(engine, contention_program(n1, n2), mesh)
    uncontended = o + 2 * r + 2 * h + n2          # last + 1 of flow 2 over 2 hops
    assert alone.pe_finish[2] == uncontended
    # Flow 1 is routed first (PE 0 before PE 4 at cycle 0) and holds link (1,0)->E for n1
    # cycles from the moment both heads reach router (1,0): flow 2 arrives n1 later.
    assert both.pe_busy[2] == (o + n2) + (o + n1)
    assert both.pe_finish[2] == (uncontended + n1) + o + n1
    assert both.link_busy[1, 1] == n1 + n2 and alone.link_busy[1, 1] == n2


def test_link_reserved_in_routing_order(engine, mesh):
    """The documented approximation: a message reserves every link of its path when its
    send executes, so a message routed later waits for it even where it would physically
    have got the link first (here by h cycles)."""
    n1, n2 = 5, 4
    text = f""".mesh 3x1
.sram 16
.region a 0,0 0,0
.route c0 rx=R tx=E
    send c0, [0], {n1}
.region b 1,0 1,0
.route c0 rx=W tx=E
.route c1 rx=R tx=E
    send c1, [0], {n2}
.region sink 2,0 2,0
.route c0 rx=W tx=R
.route c1 rx=W tx=R
    recv c1, [0], {n2}
    recv c0, [0], {n1}
"""
    result, _ = run(engine, text, mesh)
    o, h, r = mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency
    link_free = (o + r + h) + n1                  # flow 1 holds (1,0)->E from o + r + h
    last2 = link_free + h + r + n2 - 1
    assert last2 + 1 == (o + 2 * r + h + n2) + n1 + h   # n1 + h later than uncontended
    assert result.pe_finish[2] == max(last2 + 1, o + n2) + o + n1


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100])
def test_local_vector_op(engine, mesh, dtype, n):
    text = f""".mesh 1x1
.dtype {dtype}
.sram 512
.region a 0,0 0,0
    vadd [0], [128], [256], {n}
    rsum [400], [0], {n}
    movr r0, 3
    halt
"""
    result, _ = run(engine, text, mesh)
    o, w = mesh.issue_overhead, mesh.simd_width(dtype)
    vector = o + -(-n // w)
    assert result.pe_finish[0] == 2 * vector + (o + 1)
    assert result.pe_busy[0] == result.cycles == 2 * vector + o + 1
    assert result.instructions == 4


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("m, k", [(0, 5), (5, 0), (1, 1), (7, 3), (8, 4), (9, 2), (33, 6)])
@pytest.mark.parametrize("functional", [True, False])
def test_vgemv_cost(engine, mesh, dtype, m, k, functional):
    """vgemv costs o + k * ceil(m / w) (o when m or k is 0), with immediate and register
    counts."""
    text = f""".mesh 1x1
.dtype {dtype}
.sram 512
.region a 0,0 0,0
    vgemv [0], [64:40], [400], {m}, {k}
    movr r1, {m}
    movr r2, {k}
    vgemv [0:2], [64:-40], [300:2], r1, r2
    halt
"""
    text = text.replace("[64:-40]", f"[{64 + 40 * max(k - 1, 0)}:-40]")
    result, _ = run(engine, text, mesh, functional=functional)
    o, w = mesh.issue_overhead, mesh.simd_width(dtype)
    gemv = o + k * -(-m // w)
    assert result.pe_finish[0] == result.cycles == 2 * gemv + 2 * (o + 1)
    assert result.pe_busy[0] == result.cycles and result.instructions == 5


def test_barrier(engine, mesh):
    """Every PE leaves at max(arrival) + B + o; idle PEs do not take part."""
    text = """.mesh 3x2
.sram 256
.params 1
.region work 0,0 2,0
.param p0 = 10 + 40 * x
    vset [0], %p0, 1.0
    barrier
    nop
"""
    result, _ = run(engine, text, mesh)
    o, B, w = mesh.issue_overhead, mesh.barrier_latency, mesh.simd_width("fp32")
    arrivals = [o + -(-(10 + 40 * x) // w) for x in range(3)]
    leave = max(arrivals) + B + o
    assert list(result.pe_finish) == [leave + o + 1] * 3 + [0] * 3
    assert list(result.pe_busy[:3]) == [a + o + o + 1 for a in arrivals]
    assert result.instructions == 9


def test_timing_only_gives_the_same_cycles(engine, mesh):
    program = chain_program(6, 5)
    m = mesh.with_mesh(6, 1)
    functional, timing = engine(program, m), engine(program, m, functional=False)
    assert timing.sram is None and functional.sram is not None
    assert timing.cycles == functional.cycles
    assert np.array_equal(timing.pe_finish, functional.pe_finish)
    assert np.array_equal(timing.link_busy, functional.link_busy)
