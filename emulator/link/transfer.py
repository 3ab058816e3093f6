"""Moving the KV cache from the prefill machine to the decode wafer over a link.

KV bytes per prompt token = 2 x layers x kv_heads x head_dim x bytes per element
(DESIGN.md 2.3). The transfer either starts after prefill ends, or is overlapped layer by
layer: layer l's keys and values leave as soon as prefill of layer l is done, so the link
runs behind the prefill pipeline; a chunked prefill streams each chunk's KV (or each
chunk's layers) while the next chunk computes (`stream_kv`). Times in seconds.

Streaming closed form (docs/prefill.md, "Chunked prefill"): segments i = 0..n-1 become
ready at e_i (non-decreasing) with b_i bytes, x_i = b_i / bandwidth; the link sends them
in order, each when it is ready and the link is free, so the last byte leaves at
F = max_i (e_i + sum_{j>=i} x_j) and arrives F + latency; the time exposed after the
prefill is F + latency - e_{n-1}. For n equal chunks of compute t and transfer x this is
x + latency + (n - 1) * max(0, x - t).
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
    return stream_kv([(done, per_layer) for done in layer_end_seconds], bytes_per_token, link)


def stream_kv(segments: list[tuple[float, float]], bytes_per_token: int,
              link: LinkConfig) -> KVTransfer:
    """Stream KV `segments` = [(ready seconds, bytes)] in order over `link`: each leaves
    when it is ready and the link is free (the recurrence whose closed form the module
    docstring gives); the exposed time is what remains after the last segment is ready."""
    total = sum(b for _, b in segments)
    link_free = 0.0
    for ready, nbytes in segments:
        link_free = max(link_free, ready) + nbytes / link.total_bandwidth
    finish = link_free + (link.latency_s if total else 0.0)
    exposed = max(0.0, finish - segments[-1][0])
    return KVTransfer(int(round(total)), bytes_per_token, link.transfer_seconds(total),
                      exposed, True)


def chunk_segments(chunks: list[dict], bytes_per_token: int,
                   layer_ends: list[list[float]] | None = None) -> list[tuple[float, float]]:
    """KV segments of a chunked prefill: one per chunk (`chunks` rows with `tokens` and
    `end_seconds`, PrefillResult.chunk_rows), or with `layer_ends` (per chunk, the times
    its layers finish) one per chunk and layer, each 1/layers of the chunk's bytes."""
    if layer_ends is None:
        return [(row["end_seconds"], bytes_per_token * row["tokens"]) for row in chunks]
    out = []
    for row, ends in zip(chunks, layer_ends, strict=True):
        share = bytes_per_token * row["tokens"] / len(ends)
        out.extend((end, share) for end in ends)
    return out
