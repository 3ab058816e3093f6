"""The network link that carries the KV cache from the prefill machine to the decode wafer.

Units: bytes per second, seconds. `num_links` parallel links add their bandwidth.
"""

from dataclasses import dataclass

from emulator.hw.presets import load_preset, nonnegative, positive


@dataclass(frozen=True)
class LinkConfig:
    """A point-to-point link (or a bundle of identical links) between the two machines."""

    name: str
    bandwidth_bytes_per_s: float = positive()  # one link, one direction
    latency_s: float = nonnegative()           # first byte sent -> first byte received
    num_links: int = positive(default=1)       # parallel links used by one transfer

    @property
    def total_bandwidth(self) -> float:
        """Bytes per second over all links."""
        return self.bandwidth_bytes_per_s * self.num_links

    def transfer_seconds(self, nbytes: int) -> float:
        """Seconds to move `nbytes` over the link: latency + bytes / bandwidth (0 for 0 B)."""
        return 0.0 if nbytes <= 0 else self.latency_s + nbytes / self.total_bandwidth


def load_link(name_or_path: str = "efa") -> LinkConfig:
    """Load a link preset by bundled name (`efa`, `direct`) or JSON file path."""
    return load_preset(LinkConfig, "link", name_or_path)
