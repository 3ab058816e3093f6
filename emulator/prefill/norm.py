"""Residual add + RMSNorm on one core's slice of tokens, feature-major (docs/prefill.md).

For every tile of <= 512 tokens of the slice, with the hidden features in chunks of 128
partitions:

    h[f]  = h_prev[f] + delta[f]          DMA loads, Vector add   (layer 0: embedding gather)
    store h[f]                             (the new residual stream)
    sq[f] = h[f]^2                         Scalar
    ss    = sum_f ones^T @ sq[f]           TensorE: cross-partition sum into PSUM [1, n]
    r     = rsqrt(ss / hidden + eps)       Scalar
    rb    = ones_row^T @ r                 TensorE: broadcast r to 128 partitions
    xn[f] = (h[f] * w[f]) * rb             Vector (scalar_tensor_tensor), then store
"""

from dataclasses import dataclass

import numpy as np

from emulator.hw.errors import FitError
from emulator.prefill import instructions as instr
from emulator.prefill.lowering import Lowering, chunks, pe_stream

NONE = -1


@dataclass
class NormIO:
    """Inputs and outputs of one add+norm on a core's token slice."""

    hidden: int
    eps: float
    weight: int               # HBM tensor [hidden, 1] of the norm weight
    h_in: int = NONE          # HBM residual input [hidden, P] (NONE: gather embeddings)
    delta: int = NONE         # HBM residual delta [hidden, P] (NONE: nothing to add)
    h_out: int = NONE         # HBM residual output (NONE: not stored)
    xn_out: int = NONE        # HBM normed output (NONE: keep in SBUF, returned)
    embed: int = NONE         # HBM embedding table [vocab, hidden] for the gather
    tokens: int = NONE        # HBM token ids [1, P]
    ready: int = NONE         # instruction the inputs wait for


def add_norm(L: Lowering, core: int, io: NormIO, c0: int, ncols: int, name: str):
    """Emit add+RMSNorm for tokens [c0, c0+ncols); returns (last store or SBUF xn, deps).

    When `io.xn_out` is NONE the normed block stays in SBUF: the return value is
    (tensor id, producer index per 128-row chunk) for a following matmul.
    """
    fch = chunks(io.hidden, L.pmax)
    nf = len(fch)
    bytes_tok = nf * (3 * 4 + L.bpe) + 4          # h, delta, h^2 (fp32), xn; plus weight
    fit = (L.hw.sbuf_partition_bytes - nf * 4) // bytes_tok
    if fit < 1:
        raise FitError(f"{name}: hidden size {io.hidden} needs {bytes_tok + nf * 4} bytes of "
                       f"SBUF per partition for one token, {L.hw.sbuf_partition_bytes} "
                       f"available (prefill preset '{L.hw.name}')")
    tile = min(ncols, L.nmax, fit if fit < L.pmax else fit // L.pmax * L.pmax)
    weight = L.sbuf(f"{name}.w.c{core}", io.hidden, 1, "fp32", core)
    w_load = L.dma(core, fch[:, 1] * 4, deps=[io.ready], d=(weight, fch[:, 0], fch[:, 1], 0, 1),
                   a=(io.weight, fch[:, 0], fch[:, 1], 0, 1))
    prev = NONE
    result = None
    for start in range(c0, c0 + ncols, tile):
        width = min(tile, c0 + ncols - start)
        result, prev = _tile(L, core, io, fch, start, width, weight, w_load, prev, name)
    return result


def _tile(L, core, io, fch, start, width, weight, w_load, prev, name):
    """One token tile of the add+norm; returns (result, last instruction of the tile)."""
    nf = len(fch)
    f0, fr = fch[:, 0], fch[:, 1]

    def t(tag, rows, cols, dtype="fp32", space="sbuf"):
        return L.sbuf(f"{name}.{tag}.c{core}", rows, cols, dtype, core, space)

    hs, ds, sq = t("h", io.hidden, width), t("d", io.hidden, width), t("sq", io.hidden, width)
    h_ready = _load_residual(L, core, io, fch, start, width, hs, ds, prev)
    if io.h_out >= 0:
        L.dma(core, fr * width * 4, deps=[h_ready], d=(io.h_out, f0, fr, start, width),
              a=(hs, f0, fr, 0, width))
    sq_idx = L.act(core, instr.F_SQUARE, width, deps=[h_ready], d=(sq, f0, fr, 0, width),
                   a=(hs, f0, fr, 0, width), n=nf)
    ones_col, ones_row = L.const(core, "ones_col"), L.const(core, "ones_row")
    ss = t("ss", 1, width, space="psum")
    _, mm = pe_stream(L, core, nf, 1, 1, [], (ones_col, 0, fr, 0, 1), fr, width,
                      np.arange(nf) > 0, [sq_idx], (sq, f0, fr, 0, width),
                      (ss, 0, 1, 0, width), model_flops=False)
    rs = t("r", 1, width)
    r_idx = L.act(core, instr.F_RSQRT, width, deps=[mm[-1, 0]], d=(rs, 0, 1, 0, width),
                  a=(ss, 0, 1, 0, width), scale=1.0 / io.hidden, bias=io.eps)
    rb = t("rb", L.mmax, width, space="psum")
    _, bmm = pe_stream(L, core, 1, 1, L.mmax, [], (ones_row, 0, 1, 0, L.mmax), 1, width,
                       False, [r_idx], (rs, 0, 1, 0, width), (rb, 0, L.mmax, 0, width),
                       model_flops=False)
    dtype = L.act_dtype
    xs = t("xn", io.hidden, width, dtype)
    xn_idx = L.vec(core, instr.VEC_STT, instr.A_MUL, width, 2, deps=[bmm[0, 0], w_load, h_ready],
                   func2=instr.A_MUL, d=(xs, f0, fr, 0, width), a=(hs, f0, fr, 0, width),
                   b=(rb, 0, fr, 0, width), s=(weight, f0, fr, 0, 1), n=nf)
    if io.xn_out < 0:
        return (xs, xn_idx), int(xn_idx[-1])
    stores = L.dma(core, fr * width * L.bpe, deps=[xn_idx], d=(io.xn_out, f0, fr, start, width),
                   a=(xs, f0, fr, 0, width))
    return int(stores[-1]), int(stores[-1])


def _load_residual(L, core, io, fch, start, width, hs, ds, prev):
    """h tile = h_prev + delta (or the gathered embeddings); returns producer per chunk."""
    f0, fr = fch[:, 0], fch[:, 1]
    if io.h_in < 0:
        return L.dma(core, fr * width * L.bpe, deps=[prev], op=instr.DMA_GATHER,
                     d=(hs, f0, fr, 0, width), a=(io.embed, 0, 0, f0, fr),
                     b=(io.tokens, 0, 1, start, width))
    h_load = L.dma(core, fr * width * 4, deps=[io.ready, prev], d=(hs, f0, fr, 0, width),
                   a=(io.h_in, f0, fr, start, width))
    if io.delta < 0:
        return h_load
    d_load = L.dma(core, fr * width * 4, deps=[io.ready, prev], d=(ds, f0, fr, 0, width),
                   a=(io.delta, f0, fr, start, width))
    return L.vec(core, instr.VEC_TT, instr.A_ADD, width, 2, deps=[h_load, d_load],
                 d=(hs, f0, fr, 0, width), a=(hs, f0, fr, 0, width), b=(ds, f0, fr, 0, width),
                 n=len(fch))
