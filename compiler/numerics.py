"""Storage-precision helpers: rounding float32 values to fp16 / bf16 and back.

Values are always computed in float32; `round_to` models storing them in a narrower format
(round-to-nearest-even) and reading them back. bf16 rounding is done with integer bit
operations on the float32 representation, so it needs no bf16 support from numpy.
"""

import numpy as np

from emulator.hw.dtypes import dtype_of

_BF16_QUIET_NAN = np.uint32(0x7FC00000)


def canonical_dtype(name) -> str:
    """`fp32`, `fp16` or `bf16` for any accepted spelling (emulator/hw/dtypes.py);
    ValueError for anything else."""
    return dtype_of(name).name


def dtype_bytes(name) -> int:
    """Bytes per element of a storage dtype (fp32: 4, fp16/bf16: 2)."""
    return dtype_of(name).bytes


def float32_to_bf16_bits(x) -> np.ndarray:
    """bf16 bit patterns (uint16) of float32 values, rounding to nearest even; NaN stays NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    lsb = (bits >> np.uint64(16)) & np.uint64(1)
    rounded = (bits + np.uint64(0x7FFF) + lsb) >> np.uint64(16)
    nan_bits = np.uint64(_BF16_QUIET_NAN >> np.uint32(16))
    rounded = np.where(np.isnan(x), (bits >> np.uint64(16)) | nan_bits, rounded)
    return rounded.astype(np.uint16)


def bf16_bits_to_float32(bits) -> np.ndarray:
    """float32 values of bf16 bit patterns (uint16); exact (bf16 is a prefix of float32)."""
    wide = np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
    return wide.view(np.float32)


def round_to(x, dtype: str) -> np.ndarray:
    """float32 array of `x` stored in `dtype` (fp32, fp16 or bf16) and read back."""
    kind = canonical_dtype(dtype)
    x = np.asarray(x, dtype=np.float32)
    if kind == "fp32":
        return x.copy()
    if kind == "fp16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    return bf16_bits_to_float32(float32_to_bf16_bits(x))


def round_weights(weights: dict, dtype: str) -> dict:
    """A copy of a weights dict with every tensor rounded to storage dtype `dtype`."""
    return {name: round_to(value, dtype) for name, value in weights.items()}
