"""Number formats: one `DType` value per storage format, the single source of its name,
spellings and size in bytes. Hardware presets key their per-format rates (SIMD widths,
matmul rates) by `DType.name`; `compiler.numerics` rounds values to a format.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    """A storage format: canonical name, bytes per element, accepted spellings."""

    name: str
    bytes: int
    spellings: tuple[str, ...]

    def __str__(self) -> str:
        return self.name


FP32 = DType("fp32", 4, ("fp32", "float32"))
FP16 = DType("fp16", 2, ("fp16", "float16", "half"))
BF16 = DType("bf16", 2, ("bf16", "bfloat16"))
FP8 = DType("fp8", 1, ("fp8", "float8", "fp8_e4m3"))

# Formats values are stored in on the mesh and in functional prefill (fp8 is a prefill
# matmul rate only: no value is rounded to it).
STORAGE = (FP32, FP16, BF16)
NAMES = tuple(d.name for d in STORAGE)
BYTES = {d.name: d.bytes for d in STORAGE}
_BY_SPELLING = {s: d for d in STORAGE for s in d.spellings}


def dtype_of(value) -> DType:
    """The storage DType of a name in any accepted spelling (or a DType itself);
    ValueError naming the supported formats otherwise."""
    if isinstance(value, DType) and value in STORAGE:
        return value
    try:
        return _BY_SPELLING[value]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported dtype {value!r} "
                         f"(supported: {', '.join(NAMES)})") from None


@dataclass(frozen=True)
class WeightFormat:
    """How weight tiles are stored in SRAM (`--weight-dtype`): bits per element including
    any block scale, and the storage DType the PE computes in after dequantisation."""

    name: str
    bits: float          # storage bits per element, block scales included
    block: int           # elements sharing one scale (1: no scale)


# fp8: OCP 8-bit floating point (E4M3), 8 bits per element. mxfp4: OCP Microscaling
# Formats (MX) v1.0: blocks of 32 E2M1 (4-bit) elements sharing one 8-bit E8M0 scale,
# 4 + 8 / 32 = 4.25 bits per element (gpt-oss's published expert weights).
WEIGHT_FORMATS = {
    "fp32": WeightFormat("fp32", 32.0, 1),
    "fp16": WeightFormat("fp16", 16.0, 1),
    "bf16": WeightFormat("bf16", 16.0, 1),
    "fp8": WeightFormat("fp8", 8.0, 1),
    "mxfp4": WeightFormat("mxfp4", 4.25, 32),
}


def weight_format(value) -> WeightFormat:
    """The WeightFormat of a name (`bf16`, `fp8`, `mxfp4`, ... or a storage spelling);
    ValueError naming the supported formats otherwise."""
    if isinstance(value, WeightFormat):
        return value
    if value in WEIGHT_FORMATS:
        return WEIGHT_FORMATS[value]
    try:
        return WEIGHT_FORMATS[dtype_of(value).name]
    except ValueError:
        raise ValueError(f"unsupported weight dtype {value!r} "
                         f"(supported: {', '.join(WEIGHT_FORMATS)})") from None
