"""The Numba mesh engine: faults (worded as the reference words them), pool growth, special
float values, input checks, determinism and the EMU_DISABLE_JIT switch."""

import json
import os
import subprocess
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest

from emulator.hw.errors import ConfigError, FitError, MeshFault
from emulator.hw.mesh import load_mesh
from emulator.mesh import kernels as K
from emulator.mesh.engine import KernelRun, fault_message, run_numba
from isa.asm import assemble
from isa.interpreter import run_reference
from isa.opcodes import PORT_E, PORT_N, PORT_R, PORT_S, PORT_W, SLOT_DST, SLOT_SRC0

SMALL = load_mesh("small")
ROOT = Path(__file__).resolve().parent.parent


def both(program, functional=True, **kw):
    """Run both engines; assert identical results; return the Numba one."""
    mesh = SMALL.with_mesh(program.width, program.height)
    ref = run_reference(program, mesh, functional=functional, **kw)
    fast = run_numba(program, mesh, functional=functional, **kw)
    for name in ("cycles", "instructions", "messages"):
        assert getattr(fast, name) == getattr(ref, name), name
    for name in ("pe_finish", "pe_busy", "link_busy"):
        assert np.array_equal(getattr(fast, name), getattr(ref, name)), name
    if functional:
        assert np.array_equal(fast.sram.view(np.uint32), ref.sram.view(np.uint32))
    return fast


def fault_of(program, **kw) -> str:
    """The MeshFault message of both engines (asserted identical)."""
    mesh = SMALL.with_mesh(program.width, program.height)
    messages = []
    for engine in (run_reference, run_numba):
        with pytest.raises(MeshFault) as info:
            engine(program, mesh, **kw)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    return messages[1]


# --- faults ------------------------------------------------------------------------------


def test_sram_overflow_names_pe_cycle_and_address():
    program = assemble(""".mesh 2x1
.sram 64
.region a 1,0 1,0
    movr r1, 60
    vset [r1], 8, 1.0
""")
    message = fault_of(program)
    assert message == ("<string>: PE (1,0) at cycle 2: SRAM access at element 64 outside "
                       "0..63")
    assert "PE (1,0) at cycle 2" in fault_of(program, functional=False)


def test_negative_stride_below_zero():
    program = assemble(".mesh 1x1\n.sram 8\n.region a 0,0 0,0\n    movr r2, 2\n"
                       "    vmov [r2:-1], [0], 4\n")
    assert fault_of(program).endswith("SRAM access at element -1 outside 0..7")


def test_uninitialised_route():
    program = assemble(".mesh 2x1\n.sram 8\n.region a 0,0 0,0\n    send c3, [0], 2\n")
    assert fault_of(program) == ("<string>: PE (0,0) at cycle 0: message on color 3 reaches "
                                 "PE (0,0) from port R but its route accepts -")


def test_route_with_no_output():
    program = assemble(".mesh 2x1\n.sram 8\n.region a 0,0 0,0\n.route c3 rx=R tx=-\n"
                       "    nop\n    send c3, [0], 2\n")
    assert fault_of(program).endswith("PE (0,0) at cycle 2: color 3 has no route out of "
                                      "PE (0,0)")


def test_route_off_the_mesh():
    program = assemble(""".mesh 3x2
.sram 4
.route c1 rx=W tx=E at 2,1 2,1
.region a 1,1 1,1
.route c1 rx=R tx=E
    send c1, [0], 1
""")
    assert fault_of(program).endswith("route of color 1 leaves the mesh at PE (2,1) going E")


def test_route_loop():
    program = assemble(""".mesh 2x1
.sram 4
.route c0 rx=W tx=W at 1,0 1,0
.region a 0,0 0,0
.route c0 rx=R|E tx=E
    send c0, [0], 1
""")
    assert "route of color 0 loops (passes 3 routers)" in fault_of(program)


def test_message_from_a_rejected_port():
    program = assemble(""".mesh 2x1
.sram 4
.route c0 rx=N tx=R at 1,0 1,0
.region a 0,0 0,0
.route c0 rx=R tx=E
    send c0, [0], 1
""")
    assert fault_of(program).endswith("message on color 0 reaches PE (1,0) from port W but "
                                      "its route accepts N")


def test_deadlock_lists_waiting_pes_and_colors():
    program = assemble(""".mesh 3x1
.sram 4
.region wait 0,0 1,0
    nop
    recv c7, [0], 1
.region done 2,0 2,0
    halt
""")
    assert fault_of(program) == ("<string>: deadlock: PE (0,0) waits on color 7 since cycle "
                                 "2; PE (1,0) waits on color 7 since cycle 2")


def test_deadlock_at_a_barrier_with_a_halted_pe():
    program = assemble(""".mesh 4x4
.region wait 0,0 3,2
    barrier
.region done 0,3 3,3
    halt
""")
    message = fault_of(program)
    assert message.startswith("<string>: deadlock: PE (0,0) waits at a barrier since cycle 0")
    assert message.endswith("(+4 more); PE (0,3) halted")


def test_cycle_limit():
    program = assemble(".mesh 1x1\n.region a 0,0 0,0\nloop:\n    jmp loop\n")
    o = SMALL.issue_overhead
    limit = 1000
    cycle = (limit // (o + 1) + 1) * (o + 1)
    assert fault_of(program, max_cycles=limit) == (f"<string>: PE (0,0) at cycle {cycle}: "
                                                   f"cycle limit {limit} exceeded")


def test_message_length_mismatch():
    program = assemble(""".mesh 2x1
.sram 8
.region a 0,0 0,0
.route c0 rx=R tx=E
    send c0, [0], 4
.region b 1,0 1,0
.route c0 rx=W tx=R
    recv c0, [0], 5
""")
    assert fault_of(program).endswith("PE (1,0) at cycle 0: recv on color 0 expects 5 "
                                      "wavelets but the message from PE (0,0) has 4")


def test_undelivered_message():
    program = assemble(""".mesh 2x1
.sram 8
.region a 0,0 0,0
.route c2 rx=R tx=E
.route c2 rx=W tx=R at 1,0 1,0
    send c2, [0], 4
    send c2, [0], 4
""")
    assert fault_of(program) == ("<string>: PE (1,0): 2 undelivered message(s) on color 2 "
                                 "when the program ended")


def test_negative_count_bad_color_and_bad_jump():
    counts = assemble(".mesh 1x1\n.sram 4\n.region a 0,0 0,0\n    movr r1, -3\n"
                      "    vadd [0], [0], [0], r1\n")
    assert fault_of(counts).endswith("at cycle 2: negative element count -3")
    colors = assemble(".mesh 1x1\n.sram 4\n.params 1\n.region a 0,0 0,0\n.param p0 = 99\n"
                      "    recv %p0, [0], 0\n", num_colors=24)
    assert fault_of(colors).endswith("color 99 is not defined (colors 0..23)")
    jump = assemble(".mesh 1x1\n.region a 0,0 0,0\nl:\n    jmp l\n")
    jump.code["a"][0, SLOT_SRC0] = 5
    assert fault_of(jump).endswith("at cycle 2: jump to 5 outside the code 0..1")


def test_fit_and_config_errors():
    program = assemble(".mesh 2x2\n.sram 20000\n.region a 0,0 1,1\n    halt\n")
    with pytest.raises(FitError, match="80000 bytes .* PE has 49152 bytes"):
        run_numba(program, SMALL.with_mesh(2, 2))
    small = assemble(".mesh 2x2\n.sram 8\n.region a 0,0 1,1\n    halt\n")
    with pytest.raises(ConfigError, match="2x2 mesh but the hardware is 32x32"):
        run_numba(small, SMALL)
    for run in (run_numba, run_reference):
        with pytest.raises(ConfigError, match="initial SRAM has shape"):
            run(small, SMALL.with_mesh(2, 2), sram=np.zeros((4, 9), np.float32))


# --- pools, values, determinism ----------------------------------------------------------


def stream_program(messages: int, n: int) -> str:
    """PE (0,0) sends `messages` distinct messages of n wavelets (2n + 3o + 1 cycles per
    loop iteration) while PE (1,0) is busy for longer, then receives them all: every
    message is in flight at once (with o = 1)."""
    return f""".mesh 2x1
.sram {2 * n + 1}
.region src 0,0 0,0
.route c0 rx=R tx=E
    movr r0, {messages}
loop:
    vaddi [0], [0], {n}, 1.0
    send c0, [0], {n}
    djnz r0, loop
.region dst 1,0 1,0
.route c0 rx=W tx=R
    vset [{2 * n}:0], {messages * (2 * n + 4)}, 0.0
    movr r0, {messages}
loop:
    recvadd c0, [{n}], {n}
    djnz r0, loop
"""


@pytest.mark.parametrize("messages, n", [(3000, 1), (60, 100), (5, 3000)])
def test_record_and_payload_pools_grow(messages, n):
    result = both(assemble(stream_program(messages, n)))
    assert result.messages == messages
    expected = np.float32(messages * (messages + 1) / 2)
    assert np.all(result.sram[1, n:2 * n] == expected)
    both(assemble(stream_program(messages, n)), functional=False)


def test_record_pool_is_bounded_by_messages_in_flight():
    """Freed records are reused: 20,000 messages consumed as they come need no more than
    the initial pool; 3,000 messages all in flight at once need a pool of 4,096 rows."""
    steady = assemble(""".mesh 2x1
.sram 4
.region src 0,0 0,0
.route c0 rx=R tx=E
    movr r0, 20000
loop:
    send c0, [0], 2
    djnz r0, loop
.region dst 1,0 1,0
.route c0 rx=W tx=R
    movr r0, 20000
loop:
    recv c0, [0], 2
    djnz r0, loop
""")
    for program, capacity in ((steady, 1024), (assemble(stream_program(3000, 1)), 4096)):
        kernel = KernelRun(program, SMALL.with_mesh(2, 1), None, False, 10**9)
        kernel.run()
        assert kernel.stats[K.ST_PEAK_RECORDS] == capacity


def test_engine_cycle_ceiling_message():
    """Clocks beyond 2**(63 - shift) cycles cannot be keyed; that is said, not misreported
    as the caller's cycle limit."""
    program = assemble(".mesh 2x1\n.region a 0,0 0,0\n    halt\n")
    fault = np.zeros(K.FAULT_SIZE, np.int64)
    fault[[K.F_CODE, K.F_PE, K.F_CYCLE]] = K.FAULT_CYCLES, 1, 2**62
    message = fault_message(program, fault, np.zeros((2, K.P_FIELDS), np.int64), 10**19)
    assert message == ("<string>: PE (1,0) at cycle 4611686018427387904: the Numba engine "
                       "supports at most 4611686018427387903 cycles on a mesh of 2 PEs")


def test_deep_routing_stack():
    """A westward comb: each router forwards W and S, the deep branch is routed first, so
    the depth-first stack holds one pending south branch per router (> 64 rows)."""
    width = 90
    program = assemble(f""".mesh {width}x2
.sram 4
.route c0 rx=E tx=W|S|R at 1,0 {width - 2},0
.route c0 rx=E tx=S|R at 0,0 0,0
.route c0 rx=N tx=R at 0,1 {width - 1},1
.region src {width - 1},0 {width - 1},0
.route c0 rx=R tx=W|S
.data 0 1 2 3 4
    send c0, [0], 4
.region row0 0,0 {width - 2},0
    recv c0, [0], 4
.region row1 0,1 {width - 1},1
    recv c0, [0], 4
""")
    result = both(program)
    assert result.messages == 2 * width - 1
    assert np.all(result.sram[:, :4] == [1, 2, 3, 4])


def test_multicast_dag_delivers_once_per_path():
    """Every router forwards E and S: a core receives one copy per path from the source
    (binomial counts, thousands of deliveries in flight) and links carry every copy."""
    size = 7
    receive = "    movr r0, %p0\nloop:\n    recv c0, [2], 2\n    djnz r0, loop\n"
    program = assemble(f""".mesh {size}x{size}
.sram 4
.params 1
.region src 0,0 0,0
.data 0 0.5 1.5
    send c0, [0], 2
.region row 1,0 {size - 1},0
{receive}.region rest 0,1 {size - 1},{size - 1}
{receive}""")
    x, y = (v.ravel() for v in np.meshgrid(np.arange(size), np.arange(size)))
    paths = np.array([comb(int(a + b), int(a)) for a, b in zip(x, y, strict=True)])
    program = program.with_params(paths[:, None])
    program.route_rx[:, 0] = np.where(x + y == 0, PORT_R, PORT_W | PORT_N)
    program.route_tx[:, 0] = (np.where(x + y == 0, 0, PORT_R)
                              | np.where(x < size - 1, PORT_E, 0)
                              | np.where(y < size - 1, PORT_S, 0))
    result = both(program)
    assert result.messages == int(paths[1:].sum()) > 2000
    assert np.all(result.sram[1:, 2:] == [0.5, 1.5])
    both(program, functional=False)


def test_special_values_bit_identical():
    data = "0.0 -0.0 -1.0 1e-45 inf -inf nan 100.0 -100.0 88.8 89.0 -104.0 3.4e38 -7.5"
    for op in ("vrecip", "vrsqrt", "vexp", "vsigmoid", "vmax", "vsub", "vfma", "rmax",
               "rsum", "rdot"):
        program = assemble(f""".mesh 1x1
.sram 64
.region a 0,0 0,0
.data 0 {data}
.data 14 {' '.join(reversed(data.split()))}
    vmov [28], [14], 14
    {op} [28], [0], {"[14], " if op in ("vmax", "vsub", "vfma", "rdot") else ""}14
""")
        both(program)


@pytest.mark.parametrize("line", [
    "vmov [1], [0], 8", "vmov [0], [1], 8", "vadd [2], [0], [4], 8", "vmul [0:2], [1:2], [0], 4",
    "vfma [3:0], [0], [8], 5", "vfma [0], [1], [2], 6", "vfma [6:-1], [0], [1], 5",
    "vset [4:0], 3, 9.5", "vexp [0:0], [1], 4", "vsub [8], [8:0], [9], 6",
    "rsum [2], [0], 8", "rdot [0], [0], [1], 8", "vscale [5:-1], [0], 6, -2.0",
    # identical source and destination (in place), scalar sources inside and outside
    "vmul [0], [0], [12:0], 8", "vmul [0], [0], [3:0], 8", "vadd [0], [0], [0], 8",
    "vexp [2], [2], 6", "vfma [0], [0], [0], 8", "vfma [0], [0], [2:0], 8",
    "vmax [6:-1], [6:-1], [8], 5", "vsub [3:0], [3:0], [9], 4", "vmov [1:2], [1:2], 5",
    "vaddi [0], [0], 10, 0.5", "rmax [0], [0], 10", "vsub [0], [4], [2:0], 8"])
def test_overlapping_operands(line):
    """Sources are read before writes, repeated destinations keep the highest index."""
    program = assemble(f".mesh 1x1\n.sram 16\n.region a 0,0 0,0\n"
                       f".data 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n    {line}\n")
    both(program)


def test_recvadd_into_repeated_address():
    program = assemble(""".mesh 2x1
.sram 8
.region a 0,0 0,0
.route c0 rx=R tx=E
.data 0 1 2 3 4
    send c0, [0], 4
.region b 1,0 1,0
.route c0 rx=W tx=R
.data 0 10
    recvadd c0, [0:0], 4
""")
    assert both(program).sram[1, 0] == 14.0


def test_deterministic_and_timing_only_allocates_no_sram():
    program = assemble(stream_program(40, 7))
    mesh = SMALL.with_mesh(2, 1)
    first, second = run_numba(program, mesh), run_numba(program, mesh)
    assert np.array_equal(first.sram, second.sram) and first.cycles == second.cycles
    timing = run_numba(program, mesh, functional=False)
    assert timing.sram is None and timing.cycles == first.cycles


def test_initial_sram_argument():
    program = assemble(".mesh 2x1\n.sram 4\n.region a 0,0 1,0\n    vscale [0], [0], 4, 2.0\n")
    sram = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = run_numba(program, SMALL.with_mesh(2, 1), sram=sram)
    assert result.sram.tolist() == (2 * sram).tolist()
    assert sram[1, 3] == 7    # the caller's array is not modified


def test_jit_switch_runs_plain_python():
    """EMU_DISABLE_JIT=1 runs the same kernels as plain Python with the same results."""
    code = """
import json, numpy as np
from emulator import jit
from emulator.hw.mesh import load_mesh
from emulator.mesh import kernels as K
from emulator.mesh.engine import KernelRun, fault_message, run_numba
from isa.asm import assemble
from tests.test_mesh_engine import stream_program
assert jit.JIT_DISABLED
r = run_numba(assemble(stream_program(5, 3)), load_mesh("small").with_mesh(2, 1))
print(json.dumps([r.cycles, r.instructions, r.sram.tolist()]))
"""
    env = dict(os.environ, EMU_DISABLE_JIT="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    cycles, instructions, sram = json.loads(out)
    expected = run_reference(assemble(stream_program(5, 3)), SMALL.with_mesh(2, 1))
    assert (cycles, instructions) == (expected.cycles, expected.instructions)
    assert sram == expected.sram.tolist()


def test_register_index_out_of_range_is_rejected_by_both_engines():
    from isa.opcodes import Op

    program = assemble(".mesh 1x1\n.sram 4\n.region a 0,0 0,0\n    movr r1, 3\n    halt\n")
    program.code[0]["a"][SLOT_DST] = 9
    assert program.code[0]["op"] == int(Op.MOVR)
    mesh = load_mesh("small").with_mesh(1, 1)
    for run in (run_reference, run_numba):
        with pytest.raises(ConfigError, match="register r9"):
            run(program, mesh)


# --- vgemv ----------------------------------------------------------------------------------


GEMV_CASES = [   # (dst, W, x, m, k): disjoint, strided, aliasing, broadcast destination
    ("[0]", "[16:8]", "[100]", 8, 10), ("[0:2]", "[32:5]", "[100:3]", 5, 7),
    ("[0]", "[0:3]", "[40]", 4, 6), ("[20:0]", "[60:4]", "[21]", 4, 5),
    ("[10]", "[12:1]", "[9:2]", 3, 9), ("[50:-1]", "[60:-6]", "[48:-1]", 6, 4),
    ("[0]", "[8:8]", "[3:0]", 8, 12), ("[7]", "[7:0]", "[7:0]", 1, 5),
    ("[0]", "[16:8]", "[100]", 0, 3), ("[0]", "[16:8]", "[100]", 3, 0),
]


@pytest.mark.parametrize("dst, w, x, m, k", GEMV_CASES)
def test_vgemv_equals_vfma_columns_bit_for_bit(dst, w, x, m, k):
    """vgemv == k consecutive vfmas (product rounded, then the sum), on both engines, with
    immediate and register operands."""
    rng = np.random.default_rng(m * 100 + k)
    values = " ".join(str(np.float32(v)) for v in rng.uniform(-3, 3, 128))
    head = f".mesh 1x1\n.sram 128\n.region a 0,0 0,0\n.data 0 {values}\n"

    def split(desc):
        base, _, stride = desc[1:-1].partition(":")
        return int(base), int(stride or 1)
    (w0, ld), (x0, sx) = split(w), split(x)
    columns = "".join(f"    vfma {dst}, [{w0 + c * ld}], [{x0 + c * sx}:0], {m}\n"
                      for c in range(k))
    fused = both(assemble(head + f"    vgemv {dst}, {w}, {x}, {m}, {k}\n"))
    registers = both(assemble(head + f"    movr r1, {m}\n    movr r2, {k}\n"
                              f"    vgemv {dst}, {w}, {x}, r1, r2\n"))
    reference = both(assemble(head + columns)) if k else both(assemble(head))
    assert np.array_equal(fused.sram.view(np.uint32), reference.sram.view(np.uint32))
    assert np.array_equal(registers.sram.view(np.uint32), reference.sram.view(np.uint32))
    both(assemble(head + f"    vgemv {dst}, {w}, {x}, {m}, {k}\n"), functional=False)


def test_vgemv_faults():
    head = ".mesh 1x1\n.sram 64\n.region a 0,0 0,0\n"
    negative = assemble(head + "    movr r1, -2\n    vgemv [0], [8:4], [40], 4, r1\n")
    assert fault_of(negative).endswith("at cycle 2: negative column count -2")
    count = assemble(head + "    movr r1, -3\n    vgemv [0], [8:4], [40], r1, r1\n")
    assert fault_of(count).endswith("at cycle 2: negative element count -3")
    # matrix elements are checked column by column: column 1 ends at 8 + 28 + 3 = 39 ...
    matrix = assemble(head + "    movr r1, 28\n    vgemv [0], [8:r1], [40], 4, 3\n")
    assert fault_of(matrix).endswith("SRAM access at element 64 outside 0..63")
    backwards = assemble(head + "    movr r1, -10\n    vgemv [0], [12:r1], [40], 4, 3\n")
    assert fault_of(backwards).endswith("SRAM access at element -8 outside 0..63")
    vector = assemble(head + "    movr r1, 12\n    vgemv [0], [8:4], [40:r1], 4, 3\n")
    assert fault_of(vector).endswith("SRAM access at element 64 outside 0..63")
    dst = assemble(head + "    movr r1, 62\n    vgemv [r1], [8:4], [40], 4, 3\n")
    assert fault_of(dst).endswith("SRAM access at element 64 outside 0..63")
    for functional in (True, False):   # nothing is touched when m = 0 or k = 0
        both(assemble(head + "    movr r1, 999\n    vgemv [r1], [r1], [r1], 0, 3\n"
                      "    vgemv [r1], [r1], [r1], 3, 0\n"), functional=functional)


IN_PLACE = """.mesh 2x1
.sram 8
.region a 0,0 0,0
.route c0 rx=R tx=E
    vadd [4], [0], [2], 2
    send c0, [4], 2
.region b 1,0 1,0
.route c0 rx=W tx=R
    recvadd c0, [0], 2
    vexp [2], [0], 2
"""


@pytest.mark.parametrize("engine", [run_reference, run_numba])
def test_in_place_run_updates_the_given_sram(engine):
    """in_place=True: the run works on `sram` itself and returns it; the same values and
    timing as a copying run, which leaves its input untouched."""
    program = assemble(IN_PLACE)
    mesh = SMALL.with_mesh(2, 1)
    sram = np.arange(16, dtype=np.float32).reshape(2, 8) / 4
    before = sram.copy()
    copied = engine(program, mesh, sram=sram)
    assert np.array_equal(sram, before) and copied.sram is not sram
    result = engine(program, mesh, sram=sram, in_place=True)
    assert result.sram is sram
    assert np.array_equal(sram.view(np.uint32), copied.sram.view(np.uint32))
    assert (result.cycles, result.instructions) == (copied.cycles, copied.instructions)
    assert np.array_equal(result.pe_busy, copied.pe_busy)


@pytest.mark.parametrize("engine", [run_reference, run_numba])
def test_in_place_fault_leaves_partial_results(engine):
    """A fault after some writes: an in-place run leaves them in `sram`."""
    program = assemble(IN_PLACE.replace("    vexp [2], [0], 2\n",
                                              "    movr r1, 9\n    vexp [2], [0], r1\n"))
    mesh = SMALL.with_mesh(2, 1)
    sram = np.ones((2, 8), np.float32)
    with pytest.raises(MeshFault, match="SRAM access at element 8"):
        engine(program, mesh, sram=sram, in_place=True)
    assert np.array_equal(sram[0], [1, 1, 1, 1, 2, 2, 1, 1])   # vadd ran on PE (0,0)
    assert np.array_equal(sram[1], [3, 3, 1, 1, 1, 1, 1, 1])   # recvadd ran on PE (1,0)


@pytest.mark.parametrize("engine", [run_reference, run_numba])
def test_in_place_needs_a_float32_array_of_the_right_shape(engine):
    program = assemble(IN_PLACE)
    mesh = SMALL.with_mesh(2, 1)
    with pytest.raises(ConfigError, match="in-place run needs"):
        engine(program, mesh, sram=np.ones((2, 8)), in_place=True)
    with pytest.raises(ConfigError, match="in-place run needs"):
        engine(program, mesh, sram=np.ones((8, 2), np.float32).T, in_place=True)
    with pytest.raises(ConfigError, match=r"initial SRAM has shape \(2, 7\)"):
        engine(program, mesh, sram=np.ones((2, 7), np.float32), in_place=True)
    assert engine(program, mesh, sram=np.ones((2, 8)), in_place=False).sram.dtype == np.float32


def test_static_inputs_are_reused_only_for_the_same_code_and_routes():
    """KernelRun keeps the params-independent inputs of the last program: a program that
    differs only in `params` reuses them; changing code or routes in place does not."""
    from emulator.mesh.engine import StaticInputs
    program = assemble(IN_PLACE)
    mesh = SMALL.with_mesh(2, 1)
    first = StaticInputs.of(program, mesh)
    again = program.with_params(program.params + 1)
    assert StaticInputs.of(again, mesh) is first
    assert StaticInputs.of(program, SMALL.with_mesh(2, 1)) is first
    program.route_tx[0, 0] = 0                  # mutated in place: prepared again
    assert StaticInputs.of(program, mesh) is not first
    assert "no route out of PE (0,0)" in fault_of(program)
    program.route_tx[0, 0] = PORT_E
    both(program)
    program.code["a"][0, SLOT_DST] = 5          # now vadd [5], [0], [2], 2
    changed = both(program, sram=np.ones((2, 8), np.float32))
    assert StaticInputs.of(program, mesh) is not first
    assert np.array_equal(changed.sram[0], [1, 1, 1, 1, 1, 2, 2, 1])


