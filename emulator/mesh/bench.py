"""Micro-benchmarks of compiled kernels on the mesh: one GEMV compiled and emulated
(timing-only), its cycles and the host time of each stage (`emu bench gemv`,
benchmarks/calibrate.py)."""

import time

from compiler.emit import emit_gemv
from compiler.numerics import canonical_dtype
from emulator.hw.errors import ConfigError
from emulator.hw.mesh import MeshConfig


def bench_gemv(size: int, mesh: MeshConfig, dtype: str = "fp16", kind: str = "A") -> dict:
    """Latency of one [1, size] x [size, size] GEMV on the whole of `mesh`: dict with
    cycles, seconds (at the mesh clock) and host seconds of compile and emulation."""
    if size < 1:
        raise ConfigError(f"GEMV size must be positive, got {size}")
    dtype = canonical_dtype(dtype)
    started = time.perf_counter()
    gemv = emit_gemv(kind, size, size, mesh.width, mesh.height, mesh, dtype)
    compiled = time.perf_counter()
    from emulator.mesh.engine import run_numba

    result = run_numba(gemv.program, mesh, functional=False)
    return {"kind": kind, "size": size, "mesh": [mesh.width, mesh.height], "dtype": dtype,
            "hw": mesh.name, "cycles": result.cycles, "seconds": result.cycles / mesh.clock_hz,
            "clock_hz": mesh.clock_hz, "compile_host_s": compiled - started,
            "emulate_host_s": time.perf_counter() - compiled}
