"""Moving the KV cache from the prefill machine to the decode wafer over a link.

KV bytes per prompt token = 2 x layers x kv_heads x head_dim x bytes per element
(DESIGN.md 2.3). The transfer either starts after prefill ends, or is overlapped layer by
layer: layer l's keys and values leave as soon as prefill of layer l is done, so the link
runs behind the prefill pipeline. Times in seconds.
"""

from dataclasses import dataclass

from emulator.hw.link import LinkConfig


@dataclass(frozen=True)
class KVTransfer:
    """Result of one KV transfer. `exposed_seconds`: time added to TTFT after prefill ends."""

    bytes: int
    bytes_per_token: int
    seconds: float
    exposed_seconds: float
    overlapped: bool


def kv_bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, elem_bytes: int) -> int:
    """Bytes of keys plus values per prompt token."""
    return 2 * num_layers * kv_heads * head_dim * elem_bytes


def transfer_kv(bytes_per_token: int, prompt_len: int, link: LinkConfig,
                layer_end_seconds: list[float] | None = None) -> KVTransfer:
    """Time the transfer of `prompt_len` tokens' KV over `link`.

    Without `layer_end_seconds` the whole cache moves after prefill. With it (the time at
    which prefill finishes each layer, in order), layer l's share is sent when both that
    layer is done and the link is free; the exposed time is what remains after the last
    layer finishes.
    """
    total = bytes_per_token * prompt_len
    seconds = link.transfer_seconds(total)
    if not layer_end_seconds:
        return KVTransfer(total, bytes_per_token, seconds, seconds, False)
    per_layer = total / len(layer_end_seconds)
    link_free = 0.0
    for done in layer_end_seconds:
        link_free = max(link_free, done) + per_layer / link.total_bandwidth
    finish = link_free + (link.latency_s if total else 0.0)
    exposed = max(0.0, finish - layer_end_seconds[-1])
    return KVTransfer(total, bytes_per_token, seconds, exposed, True)
