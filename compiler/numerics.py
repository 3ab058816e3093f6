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


# --------------------------------------------------------------------------- weight formats

FP8_E4M3_MAX = 448.0          # OCP FP8 E4M3: largest finite value (no infinities)
FP8_E4M3_MIN_EXP = -6         # smallest normal exponent; 3 mantissa bits
MX_E2M1_EMAX = 2              # OCP MX v1.0: largest E2M1 exponent (values up to 6 = 1.5 * 2^2)
MX_E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], np.float64)


def round_fp8(x) -> np.ndarray:
    """float32 of `x` stored as OCP FP8 E4M3 (round to nearest even, saturating at 448)."""
    x = np.asarray(x, np.float64)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.abs(x)))
    quantum = np.exp2(np.maximum(np.where(np.isfinite(e), e, FP8_E4M3_MIN_EXP),
                                 FP8_E4M3_MIN_EXP) - 3)
    return np.clip(np.round(x / quantum) * quantum, -FP8_E4M3_MAX, FP8_E4M3_MAX
                   ).astype(np.float32)


def round_mxfp4(x, axis: int = -1, block: int = 32) -> np.ndarray:
    """float32 of `x` stored as OCP MXFP4: blocks of `block` elements along `axis` share the
    scale 2^(floor(log2 max|x|) - 2) (E8M0); each element is the nearest E2M1 value
    (0, 0.5, 1, 1.5, 2, 3, 4, 6, signed) times the scale, clamped to 6 * scale."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    n = x.shape[-1]
    pad = -n % block
    blocks = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]).reshape(*x.shape[:-1], -1, block)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        scale = np.exp2(np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1.0)))
                                 - MX_E2M1_EMAX, 0.0))
    mag = np.abs(blocks) / scale
    nearest = MX_E2M1_VALUES[np.abs(mag[..., None] - MX_E2M1_VALUES).argmin(axis=-1)]
    out = (np.sign(blocks) * nearest * scale).reshape(*x.shape[:-1], -1)[..., :n]
    return np.moveaxis(out, -1, axis).astype(np.float32)


def mlp_weight_axis(name: str) -> int | None:
    """The input axis of an MLP / expert weight tensor (the ones `--weight-dtype` stores),
    or None for any other tensor: -1 for [out, in] Linear weights, -2 for gpt-oss's fused
    [experts, in, out] tensors."""
    if name.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")):
        return -2
    if ".experts." in name and name.endswith(".weight"):
        return -1
    if name.endswith((".mlp.gate_proj.weight", ".mlp.up_proj.weight", ".mlp.down_proj.weight")):
        return -1
    return None


def round_weight_format(weights: dict, weight_dtype: str | None) -> dict:
    """A copy of `weights` with every MLP / expert weight tensor rounded to the weight
    format (fp8, mxfp4, or a storage dtype); other tensors unchanged."""
    if weight_dtype is None:
        return dict(weights)
    out = {}
    for name, value in weights.items():
        axis = mlp_weight_axis(name)
        if axis is None:
            out[name] = value
        elif weight_dtype == "fp8":
            out[name] = round_fp8(value)
        elif weight_dtype == "mxfp4":
            out[name] = round_mxfp4(value, axis)
        else:
            out[name] = round_to(value, weight_dtype)
    return out
