"""Mesh engine throughput: emulated instructions per host second.

The workload (`shift_program`): every PE of a W x H mesh runs `iters` iterations of
three fp32 vector ops over 16 elements, a 16-wavelet send to its east neighbour and a
receive from its west neighbour (the first column only sends, the last only receives;
colors alternate by column parity, so each router forwards R->E on one color and W->R on
the other). The Numba engine runs it timing-only and functional after a warm-up call (JIT
compile / cache load); the reference interpreter runs the same code on a smaller mesh and
fewer iterations (it is too slow for the big one) and the speed-up compares rates
(instructions per second), which do not depend on the mesh size for this uniform workload.

`--wafer` also runs the workload timing-only on the whole `wse3` mesh (755 x 1170 PEs)
and prints the peak resident memory of the process.

Usage: python benchmarks/bench_mesh.py [--size 256] [--iters 20] [--ref-size 32]
       [--ref-iters 4] [--repeat 3] [--wafer]
"""

import argparse
import resource
import time

import numpy as np

from emulator.hw.mesh import load_mesh
from emulator.mesh.engine import run_numba
from isa.asm import assemble
from isa.interpreter import run_reference
from isa.opcodes import PORT_E, PORT_R, PORT_W

N = 16   # elements per vector op and wavelets per message


def shift_program(width: int, height: int, iters: int):
    """The east-shift workload on a width x height mesh (width >= 2)."""
    body = [f"    vfma [0], [{N}], [{2 * N}], {N}",
            f"    vadd [{2 * N}], [0], [{3 * N}], {N}",
            f"    vmax [{N}], [{2 * N}], [0], {N}"]
    send, recv = f"    send %p0, [0], {N}", f"    recv %p1, [{3 * N}], {N}"
    lines = [f".mesh {width}x{height}", ".dtype fp32", f".sram {4 * N}", ".params 2"]
    for name, x0, x1, comm in (("first", 0, 0, [send]), ("middle", 1, width - 2, [send, recv]),
                               ("last", width - 1, width - 1, [recv])):
        if x1 < x0:
            continue
        lines += [f".region {name} {x0},0 {x1},{height - 1}",
                  ".param p0 = x % 2", ".param p1 = (x + 1) % 2",
                  f".data 0 {' '.join(['0.5'] * 4 * N)}",
                  f"    movr r0, {iters}", "loop:", *body, *comm, "    djnz r0, loop",
                  "    halt"]
    program = assemble("\n".join(lines) + "\n")
    x = np.arange(width * height) % width
    for color in (0, 1):
        sends = (x % 2 == color) & (x < width - 1)
        receives = (x % 2 != color) & (x > 0)
        program.route_rx[:, color] = np.where(sends, PORT_R, np.where(receives, PORT_W, 0))
        program.route_tx[:, color] = np.where(sends, PORT_E, np.where(receives, PORT_R, 0))
    return program


def rate(run, program, mesh, repeat: int, **kw) -> tuple[float, object]:
    """Best instructions per second over `repeat` runs, and the last result."""
    best, result = 0.0, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run(program, mesh, **kw)
        best = max(best, result.instructions / (time.perf_counter() - start))
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="mesh is size x size PEs")
    parser.add_argument("--iters", type=int, default=20, help="loop iterations per PE")
    parser.add_argument("--ref-size", type=int, default=32, help="reference mesh size")
    parser.add_argument("--ref-iters", type=int, default=4, help="reference iterations")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (best is kept)")
    parser.add_argument("--wafer", action="store_true", help="also run the whole wse3 mesh")
    args = parser.parse_args()
    base = load_mesh("wse3")
    big = shift_program(args.size, args.size, args.iters)
    mesh = base.with_mesh(args.size, args.size)
    small = shift_program(4, 4, 2)
    start = time.perf_counter()
    run_numba(small, base.with_mesh(4, 4), functional=True)
    run_numba(small, base.with_mesh(4, 4), functional=False)
    print(f"warm-up (JIT compile or cache load): {time.perf_counter() - start:.2f} s")
    timing, result = rate(run_numba, big, mesh, args.repeat, functional=False)
    functional, fresult = rate(run_numba, big, mesh, args.repeat, functional=True)
    assert fresult.cycles == result.cycles
    print(f"numba {args.size}x{args.size} PEs, {args.iters} iterations: "
          f"{result.instructions:,} instructions, {result.cycles:,} cycles, "
          f"{result.messages:,} messages")
    print(f"  timing-only: {timing / 1e6:8.2f} M instructions/s")
    print(f"  functional:  {functional / 1e6:8.2f} M instructions/s")
    ref_program = shift_program(args.ref_size, args.ref_size, args.ref_iters)
    ref_mesh = base.with_mesh(args.ref_size, args.ref_size)
    ref_rate, ref_result = rate(run_reference, ref_program, ref_mesh, 1, functional=False)
    check = run_numba(ref_program, ref_mesh, functional=False)
    assert check.cycles == ref_result.cycles and check.instructions == ref_result.instructions
    print(f"reference {args.ref_size}x{args.ref_size} PEs, {args.ref_iters} iterations "
          f"(timing-only): {ref_rate / 1e6:.4f} M instructions/s")
    print(f"speed-up (timing-only rate / reference rate): {timing / ref_rate:,.0f}x")
    if args.wafer:
        wafer(base, args.iters)


def wafer(mesh, iters: int) -> None:
    """The workload on the whole mesh of `mesh`, timing-only, with peak memory."""
    program = shift_program(mesh.width, mesh.height, iters)
    wafer_rate, result = rate(run_numba, program, mesh, 1, functional=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"numba {mesh.width}x{mesh.height} PEs ({mesh.name}), {iters} iterations, "
          f"timing-only: {wafer_rate / 1e6:.2f} M instructions/s, {result.cycles:,} cycles; "
          f"peak resident memory {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
