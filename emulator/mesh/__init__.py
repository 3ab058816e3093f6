"""The decode machine: the wafer-scale mesh engine (Numba kernels, fast-forward, cuts) and its
runtime (`runtime.MeshDecoder`, `system.SystemDecoder`), which picks the engine and keeps the
SRAM state between steps. The reference interpreter (the spec) is isa/interpreter.py."""
