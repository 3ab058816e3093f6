"""The decode machine: a wafer-scale 2D mesh of processing elements (PEs).

`MeshConfig` holds every parameter the mesh engines and the timing contract use
(docs/timing.md). Units: sizes in bytes, times in cycles unless the name says seconds/Hz.
"""

from dataclasses import dataclass, replace

from emulator.hw.dtypes import dtype_of
from emulator.hw.presets import load_preset, nonnegative, parse_dims, positive


@dataclass(frozen=True)
class MeshConfig:
    """One wafer (or a multi-wafer system of identical wafers) of PEs joined by a 2D mesh."""

    name: str
    width: int = positive()            # PEs along x (columns)
    height: int = positive()           # PEs along y (rows)
    sram_bytes: int = positive()       # SRAM per PE, bytes
    clock_hz: float = positive()       # PE and fabric clock, Hz
    simd_fp32: int = positive()        # fp32 elements per cycle for vector ops
    simd_fp16: int = positive()        # fp16 elements per cycle (FMAC SIMD width)
    simd_bf16: int = positive()        # bf16 elements per cycle
    hop_latency: int = positive()      # cycles for a wavelet to cross one router-to-router link
    ramp_latency: int = nonnegative()  # cycles between a core and its own router, each way
    num_colors: int = positive()       # routable colors (virtual channels) per router
    issue_overhead: int = nonnegative()  # fixed cycles added to every instruction
    barrier_latency: int = nonnegative()  # cycles from the last PE reaching a barrier to release
    wavelet_bytes: int = positive(default=4)  # payload bytes of one wavelet
    wafers: int = positive(default=1)  # identical wafers in the system (layers pipelined)
    wafer_link_bytes_per_s: float = positive(default=1.0e12)  # wafer-to-wafer bandwidth
    wafer_link_latency_s: float = nonnegative(default=1.0e-6)  # wafer-to-wafer latency
    sram_bytes_per_cycle: float = nonnegative(default=0.0)  # SRAM bandwidth per PE (0: ample)
    transcendental_cycles: int = nonnegative(default=0)  # per element of vexp/vrsqrt/vrecip/
                                                         # vsigmoid (0: like any vector op)
    message_overhead: int = nonnegative(default=0)  # software cycles of every send and recv
    dequant_ops_fp8: int = nonnegative(default=0)    # vector passes per element to widen an
                                                     # fp8 weight to the compute format
    dequant_ops_mxfp4: int = nonnegative(default=0)  # the same for an MXFP4 weight
    # serving (emu serve); per wafer (system); None when a preset does not say
    io_bytes_per_s: float | None = positive(default=None)   # system I/O into one wafer
    power_busy_w: float | None = positive(default=None)     # W per system while decoding
    power_idle_w: float | None = nonnegative(default=None)  # W per system while idle
    price_usd_per_hour: float | None = nonnegative(default=None)  # $ per system-hour

    def simd_width(self, dtype: str) -> int:
        """Elements per cycle of a vector op in `dtype` (a name or a DType): the preset's
        SIMD width, capped by what the PE's SRAM bandwidth can feed. A streaming
        multiply-add touches three elements per lane (it reads the weight and reads and
        writes the accumulator), so the effective width is
        `min(simd, floor(sram_bytes_per_cycle / (3 * bytes)))`, at least 1
        (`sram_bytes_per_cycle` 0: not limited; docs/timing.md)."""
        dt = dtype_of(dtype)
        width = getattr(self, f"simd_{dt.name}")
        if self.sram_bytes_per_cycle > 0:
            fed = int(self.sram_bytes_per_cycle // (3 * dt.bytes))
            width = max(1, min(width, fed))
        return width

    @property
    def num_pes(self) -> int:
        """PEs per wafer."""
        return self.width * self.height

    def with_mesh(self, width: int, height: int) -> "MeshConfig":
        """The same PE and fabric parameters on a mesh of another size."""
        return replace(self, width=width, height=height)

    def one_wafer(self) -> "MeshConfig":
        """One wafer of this system (the same preset with `wafers` = 1)."""
        return replace(self, wafers=1)

    def validate(self) -> str | None:
        """Return a description of an impossible combination, or None."""
        if self.num_colors > 32:
            return f"field 'num_colors' must be <= 32, got {self.num_colors}"
        if self.sram_bytes % 4:
            return f"field 'sram_bytes' must be a multiple of 4, got {self.sram_bytes}"
        return None


def load_mesh(name_or_path: str = "wse3") -> MeshConfig:
    """Load a mesh preset by bundled name (`wse2`, `wse3`, `small`) or JSON file path."""
    return load_preset(MeshConfig, "mesh", name_or_path)


def parse_mesh_size(text: str | None, option: str = "--mesh") -> tuple[int, int] | None:
    """'WxH' -> (W, H), None when absent; ConfigError naming `option` when malformed."""
    return parse_dims(text, option, "WxH", "8x4")


def load_sized_mesh(hw: "str | MeshConfig", mesh_text: str | None) -> MeshConfig:
    """The mesh preset `hw` (a name, a file or an already loaded MeshConfig), resized by a
    --mesh WxH value when given (the host-memory check of mapping onto it is
    emulator.limits.check_mapping_memory)."""
    mesh = hw if isinstance(hw, MeshConfig) else load_mesh(hw)
    size = parse_mesh_size(mesh_text)
    return mesh.with_mesh(*size) if size else mesh
