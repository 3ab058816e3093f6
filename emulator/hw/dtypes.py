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
