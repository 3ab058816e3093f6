"""Exact cycles of the spread layout's decode attention (docs/mapping.md, "Spread
layout", closed form): one band of one row, so every PE of the row holds every head dim,
the scores need no column tree and the band multicast is absent; at a position
`pos = m * pw - 1` every column holds `nact = m` positions (nothing is masked), so every
PE does the same local work and the row's online-softmax merge tree is symmetric."""

import dataclasses
import math

import pytest

from compiler.decode import compile_decode
from emulator.hw.mesh import load_mesh
from emulator.inspect.phases import phase_cycles
from emulator.mesh.runtime import run_timing
from tests.test_decode_mesh import make_spec


def attention_closed_form(pw: int, gs: int, hd: int, nact: int, o: int, h: int, r: int,
                          w: int) -> int:
    """Cycles from (0, 0) entering attention to (0, 0) entering o_proj:

        o + 2r + L + W + log2(pw) (o + 2r + n + M) + (2 pw - 2) h + N

    L = (gs + 1) hd + hd: the row multicast of q/k/v; W: one PE's local work (store k
    and v, scores, band-top softmax, local sum and weighted values); n = gs (2 + hd): a
    merge message; M: the merge after each receive; N: the division by the sums."""
    def vec(n):
        return o + math.ceil(n / w)

    L = (gs + 1) * hd + hd
    scores = gs * (vec(nact) + (o + (hd - 1) * math.ceil(nact / w) if hd > 1 else 0))
    softmax = vec(gs * nact) + gs * o + 2 * gs * vec(nact) + vec(gs * nact)
    local = vec(gs) + gs * vec(nact) + gs * hd * vec(nact)
    W = 2 * vec(hd) + scores + softmax + local
    n = gs * (2 + hd)
    M = 6 * vec(gs) + vec(2 * gs) + 2 * gs * vec(hd)
    N = vec(gs) + gs * vec(hd)
    steps = int(math.log2(pw))
    return o + 2 * r + L + W + steps * (o + 2 * r + n + M) + (2 * pw - 2) * h + N


@pytest.mark.parametrize("pw,gs,hd,m,dtype", [(2, 1, 2, 1, "fp32"), (4, 2, 4, 3, "fp32"),
                                             (8, 4, 8, 2, "bf16"), (16, 2, 6, 5, "fp32"),
                                             (8, 3, 4, 7, "bf16")])
def test_spread_attention_cycles_match_the_closed_form(pw, gs, hd, m, dtype):
    spec = make_spec(hidden=24, heads=gs, kv_heads=1, head_dim=hd, ffn=20, vocab=30,
                     layers=2)
    spec = dataclasses.replace(spec, max_position_embeddings=256)
    mesh = load_mesh("small").with_mesh(pw, 1)
    compiled = compile_decode(spec, mesh, dtype, 8 * pw, "spread")
    pos = m * pw - 1
    run = run_timing(compiled, mesh, pos, fast_forward=False)
    phases = phase_cycles(run, compiled.decode.program.mark_names)
    layers = spec.num_layers
    expected = attention_closed_form(pw, gs, hd, m, mesh.issue_overhead, mesh.hop_latency,
                                     mesh.ramp_latency, mesh.simd_width(dtype))
    assert phases["attention"] == layers * expected
