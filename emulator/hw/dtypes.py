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


# --------------------------------------------------------------------------- weight formats


@dataclass(frozen=True)
class WeightFormat:
    """How projection weights are stored in memory (HBM on the prefill chip, SRAM on the
    wafer), separate from the format matmuls compute in (`--weight-dtype`).

    `element_bits` per weight plus, for block-scaled formats, one `scale_bits` scale per
    `block` consecutive elements along the contraction (input) dimension. OCP
    Microscaling Formats (MX) v1.0: MXFP4 = FP4 (E2M1) elements, blocks of 32, an E8M0
    (8-bit) shared scale, so 4.25 bits per weight. A format narrower than the matmul's is
    dequantised (scaled and widened) before the matmul; emu costs that step on the
    machine that does it (docs/prefill.md, "Weight formats")."""

    name: str
    element_bits: int
    block: int                      # elements per shared scale (0: no block scales)
    scale_bits: int
    spellings: tuple[str, ...]

    @property
    def bits_per_element(self) -> float:
        """Storage bits per weight, block scales included (MXFP4: 4.25)."""
        return self.element_bits + (self.scale_bits / self.block if self.block else 0.0)

    def bytes_for(self, elements: int) -> int:
        """Bytes of `elements` weights in this format (rounded up to whole bytes)."""
        return -(-int(elements) * int(round(self.bits_per_element * 8)) // 64)

    def __str__(self) -> str:
        return self.name


W_FP32 = WeightFormat("fp32", 32, 0, 0, ("fp32", "float32"))
W_BF16 = WeightFormat("bf16", 16, 0, 0, ("bf16", "bfloat16"))
W_FP16 = WeightFormat("fp16", 16, 0, 0, ("fp16", "float16", "half"))
W_FP8 = WeightFormat("fp8", 8, 0, 0, ("fp8", "float8", "fp8_e4m3"))
W_MXFP4 = WeightFormat("mxfp4", 4, 32, 8, ("mxfp4", "mx_fp4"))
WEIGHT_FORMATS = (W_BF16, W_FP8, W_MXFP4)          # the --weight-dtype choices
WEIGHT_NAMES = tuple(f.name for f in WEIGHT_FORMATS)
_WEIGHT_BY_SPELLING = {s: f for f in (*WEIGHT_FORMATS, W_FP32, W_FP16) for s in f.spellings}


def weight_format(value, option: str = "--weight-dtype") -> WeightFormat:
    """The WeightFormat of a name in any accepted spelling (or a WeightFormat); ValueError
    naming `option` and the choices otherwise. fp32 and fp16 are accepted as the storage of
    a run whose weights stay in its compute dtype."""
    if isinstance(value, WeightFormat):
        return value
    try:
        return _WEIGHT_BY_SPELLING[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"{option}: unsupported weight format {value!r} "
                         f"(choices: {', '.join(WEIGHT_NAMES)})") from None


def weight_format_for(compute: str, value=None, option: str = "--weight-dtype"):
    """The weight format of a run computing in `compute` (a DType name or fp8): `value`
    when given, else the compute format itself (no dequantisation)."""
    return weight_format(compute if value is None else value, option)
