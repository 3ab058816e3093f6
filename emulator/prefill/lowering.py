"""Lowering context and the matmul-shaped operators (docs/prefill.md, "Tiling").

Layouts: activations live in HBM feature-major (X^T: features on rows, tokens on columns),
so a projection `Y = X @ W.T` runs as `Y^T[m, n] = W^T[k, m].T @ X^T[k, n]`: the weight strip
W^T[:, m] (K x <=128) is the stationary operand and a token tile of X^T (K x <=512) the
moving one, and Y^T comes out feature-major again. Weights are stored transposed in HBM
(W^T, [in, out]) once at load time.

`linear_fm` streams weight strips past an activation block resident in SBUF: per token
block, X^T is loaded once; each strip of <=128 output rows is K-accumulated over
ceil(K/128) chunks into `nt` PSUM banks (one per 512-token tile, double-buffered across
strips), evicted by the Scalar/Vector engines and stored to HBM.
"""

import math
from dataclasses import dataclass

import numpy as np

from emulator.hw.errors import FitError
from emulator.prefill import costs
from emulator.prefill import instructions as instr


@dataclass
class Strip:
    """<=128 output rows of one projection: W^T[:, col0:col0+m] -> out rows out_row0.."""

    w: int                # HBM tensor id of W^T [in_features, out_features]
    col0: int             # first weight column (output feature) of the strip
    m: int                # output rows of the strip
    evict: str            # copy | copy32 | partial | rope | silu | mul_gate
    out: int = -1         # HBM output tensor id (feature-major), -1 when not stored
    out_row0: int = 0     # first output row in `out`
    bias: int = -1        # HBM bias tensor id [out_features, 1], -1 for none
    row0: int = 0         # first weight row (input feature) of the contraction
    out_col0: int = 0     # column (token) of `out` where token 0 of the projection lands
    norm: int = -1        # qk-norm: HBM RMSNorm weight [m, 1] applied before RoPE, -1 none


class TileMap:
    """Producer instruction of every (row tile, 128-token tile) of an HBM tensor."""

    def __init__(self, rows: int, cols: int, row_tile: int, col_tile: int = 128):
        self.row_tile, self.col_tile = row_tile, col_tile
        self.prod = np.full((math.ceil(rows / row_tile), math.ceil(cols / col_tile)), -1,
                            np.int64)

    def _slices(self, r0, nr, c0, nc):
        rows = slice(r0 // self.row_tile, -(-(r0 + nr) // self.row_tile))
        cols = slice(c0 // self.col_tile, -(-(c0 + nc) // self.col_tile))
        return rows, cols

    def set(self, r0, nr, c0, nc, index) -> None:
        """Record `index` as the producer of the region."""
        self.prod[self._slices(r0, nr, c0, nc)] = index

    def fill(self, index) -> None:
        """Record `index` as the producer of the whole tensor (e.g. a collective)."""
        self.prod[:] = index

    def get(self, r0, nr, c0, nc) -> int:
        """Latest producer of the region (producers of one tensor share one in-order queue)."""
        block = self.prod[self._slices(r0, nr, c0, nc)]
        if block.size == 0 or block.min() < 0:
            raise AssertionError("lowering bug: region read before it is written")
        return int(block.max())


class Lowering:
    """Shared state of one lowering: preset, dtypes, the builder and cost helpers."""

    def __init__(self, hw, dtype: str, builder: instr.Builder, active_cores: int):
        self.hw, self.dtype, self.b = hw, dtype, builder
        self.act_dtype = dtype                      # storage dtype of matmul operands
        self.bpe = {"fp32": 4, "fp8": 1}.get(dtype, 2)   # bytes per matmul operand element
        self.active_cores = active_cores
        self.dma_lat = costs.dma_latency_cycles(hw)
        self.pmax = hw.pe_rows                      # partitions per tile
        self.kmax = hw.k_max(dtype)                 # contraction rows per matmul (fp8: packed)
        # row-parallel partial sums (o_proj, down) and their reduce-scatter: fp32 in fp32
        # mode, else bf16 (as tensor-parallel stacks reduce in the activation dtype)
        self.partial_dtype = "fp32" if dtype == "fp32" else "bf16"
        self.partial_bytes = 4 if dtype == "fp32" else 2
        self.mmax = hw.pe_cols                      # stationary columns
        self.nmax = hw.moving_free_max              # moving columns per matmul
        self.consts: dict = {}
        builder.dep_overhead = {instr.DVE: costs.vector_overhead(hw)}
        self.memoise = False     # timing-only: repeated loop bodies stored once
        # --weight-dtype: the storage format of the decoder layers' projection weights
        # (tensor ids in `packed`); a format other than the matmul dtype is DMAed at its
        # own size into a staging buffer and dequantised on VectorE (docs/prefill.md)
        self.weight_format = None
        self.packed: set = set()

    def dequantises(self, w: int) -> bool:
        """True when weight tensor `w` is stored in a format the matmul does not read: not
        the matmul dtype, and not MXFP4 into an fp8 matmul of a chip with microscaled
        matmuls (`mx_matmul`, NeuronCore-v4's nc_matmul_mx applies the scales itself)."""
        fmt = self.weight_format
        if w not in self.packed or fmt is None or fmt.name == self.act_dtype:
            return False
        return not (fmt.block and self.act_dtype == "fp8" and self.hw.mx_matmul)

    def stored_weight_bytes(self, elements: int) -> int:
        """Bytes of `elements` layer weights in the --weight-dtype format (the matmul
        dtype's bytes when none), for the operators' minimum HBM traffic."""
        if self.weight_format is None:
            return int(elements) * self.bpe
        return -(-int(elements) * int(round(self.weight_format.bits_per_element * 8)) // 64)

    def weight_bytes(self, w: int, elements):
        """HBM bytes of `elements` weights of tensor `w` (array-friendly)."""
        elements = np.asarray(elements, np.int64)
        if w not in self.packed or self.weight_format is None:
            return elements * self.bpe
        bits8 = int(round(self.weight_format.bits_per_element * 8))
        return -(-elements * bits8 // 64)

    def dequant(self, core, w: int, loads, rows, cols, stage, dst, deps=()):
        """VectorE dequantisation of weight tiles just loaded into `stage` (views
        (stage, r0, rows, c0, cols) per load) into `dst` (the matmul-dtype buffer):
        values are copied (the weights are given dequantised, compiler/weights.py), the
        cost is one Vector pass over the tile with the block scales as a second input
        (one input for per-channel-scaled fp8). Returns the indices (the LoadStationary
        producers in place of the loads)."""
        inputs = 2 if self.weight_format.block else 1
        cost = costs.vector_cycles(self.hw, cols, inputs)
        n = max(np.size(loads), np.size(cost))
        return self.b.emit(n, instr.VEC_TT, instr.DVE, core, cost, [loads, *deps],
                           func=instr.A_BYPASS, d=dst, a=stage, b=stage)

    # ------------------------------------------------------------------ tensors

    def sbuf(self, name, rows, cols, dtype, core, space="sbuf") -> int:
        """An SBUF (or PSUM) tensor of `core`."""
        return self.b.tensor(name, rows, cols, dtype, space, core)

    def const(self, core: int, kind: str) -> int:
        """Per-core constant SBUF tensor: 'identity' [P, P], 'ones_col' [P, 1], 'ones_row'."""
        key = (core, kind)
        if key not in self.consts:
            shape = {"identity": (self.pmax, self.pmax), "ones_col": (self.pmax, 1),
                     "ones_row": (1, self.mmax)}[kind]
            self.consts[key] = self.b.tensor(f"const:{kind}", *shape, "fp32", "sbuf", core)
        return self.consts[key]

    # ------------------------------------------------------------------ instructions

    def dma(self, core, nbytes, deps=(), d=None, a=None, b=None, op=instr.DMA_COPY, flags=0):
        """DMA transfers (vectorised over array arguments); returns indices."""
        nbytes = np.asarray(nbytes, np.int64)
        n = max(nbytes.size, _batch(d, a, b, deps))
        cost = costs.dma_cycles(self.hw, nbytes, self.active_cores)
        return self.b.emit(n, op, instr.DMA, core, cost, deps, lat=self.dma_lat, flags=flags,
                           work=nbytes, d=d, a=a, b=b)

    def _low(self, view) -> bool:
        """True when a view's tensor is a 16-bit float (bf16/fp16) in SBUF."""
        if view is None:
            return True
        t = self.b.tensors[int(np.ravel(view[0])[0])]
        return t.dtype in ("bf16", "fp16") and t.space == "sbuf"

    def _psum(self, view) -> bool:
        return view is not None and self.b.tensors[int(np.ravel(view[0])[0])].space == "psum"

    def act(self, core, func, n_free, deps=(), d=None, a=None, b=None, s=None, scale=1.0,
            bias=0.0, n=1):
        """Scalar-engine activations: d = func(a * scale + bias-column-b or bias)."""
        cost = costs.scalar_cycles(self.hw, n_free, bf16=self._low(d) and self._low(a))
        n = max(n, np.size(cost), _batch(d, a, b, s, deps))
        return self.b.emit(n, instr.ACTIVATE, instr.ACT, core, cost, deps, func=func,
                           imm0=scale, imm1=bias, d=d, a=a, b=b, s=s)

    def vec(self, core, op, func, n_free, n_inputs, deps=(), d=None, a=None, b=None, s=None,
            func2=0, imm0=0.0, imm1=0.0, n=1):
        """Vector-engine instructions of opcode `op` (bf16 performance mode where the
        operands allow it, docs/prefill.md "Cost model")."""
        cost = costs.vector_cycles(self.hw, n_free, n_inputs, self.vector_speedup(op, d, a, b))
        n = max(n, np.size(cost), _batch(d, a, b, s, deps))
        return self.b.emit(n, op, instr.DVE, core, cost, deps, func=func, func2=func2,
                           imm0=imm0, imm1=imm1, d=d, a=a, b=b, s=s)

    def vector_speedup(self, op, d, a, b) -> int:
        """Trainium2 Vector performance mode: tensor_scalar 4x with bf16 SBUF operands (2x
        with one in PSUM), tensor_tensor 2x with bf16 SBUF operands, else 1."""
        hw = self.hw
        if op == instr.VEC_TS:
            if self._low(d) and self._low(a):
                return hw.vector_bf16_ts_speedup
            if (self._low(d) or self._psum(d)) and (self._low(a) or self._psum(a)) and \
                    not (self._psum(d) and self._psum(a)):
                return hw.vector_bf16_tt_speedup
        if op == instr.VEC_TT and self._low(a) and self._low(b) and self._low(d):
            return hw.vector_bf16_tt_speedup
        return 1

    def ls(self, core, m, deps=(), a=None, n=1):
        """LoadStationary of a [K, m] tile."""
        cost = costs.ls_cycles(self.hw, m, self.dtype)
        n = max(n, np.size(cost), _batch(a, deps))
        return self.b.emit(n, instr.LOAD_STATIONARY, instr.PE, core, cost, deps, a=a)

    def collective(self, func, nbytes, chips, deps, d=None, a=None, count=0):
        """One collective over every core of `chips` chips waiting for `deps` (any number).

        A reduce-scatter sums `count` tensors with consecutive ids starting at view `a`.
        """
        deps = [int(x) for x in deps if x >= 0]
        while len(deps) > instr.MAX_DEPS:          # join long dependency lists with waits
            head = deps[:instr.MAX_DEPS]
            deps = [self.b.one(instr.COLLECTIVE, instr.CC, -1, 0, head, func=instr.C_WAIT)] + \
                deps[instr.MAX_DEPS:]
        if func in (instr.C_ALL_TO_ALL, instr.C_ALL_TO_ALL_SUM):
            cost = costs.all_to_all_cycles(self.hw, nbytes, self.hw.cores_per_chip, chips)
        else:
            cost = costs.ring_cycles(self.hw, nbytes, self.hw.cores_per_chip, chips)
        return self.b.one(instr.COLLECTIVE, instr.CC, -1, cost, deps, func=func, work=int(nbytes),
                          imm0=float(count), d=d, a=a)


class Replay:
    """Memoised lowering (timing-only): a unit of work (a token block of a projection, a
    super-batch of attention) whose shape was emitted before is appended as a copy of
    those instruction records instead of being lowered again.

    The caller reports each unit with `emitted(run, key, start)` (`key` None: irregular)
    or asks `replay(run, key, reps)` first. A unit can be a template when the WINDOW units
    before it are regular units of the same run (a later unit replaces it when the units
    before the template had other lengths); it is replayed when the WINDOW units
    before the new one are regular, of the same run and as long as the template's. The
    copy's dependencies inside the template move to the copy, those into the window move
    to the new window (same lengths, so one shift), those before it stay (constants such
    as a resident weight load). Repeated bodies inside the template are repeated in the
    copy `reps` times. Operand addresses are the template's (unused in timing-only mode).
    """

    WINDOW = 2

    def __init__(self, builder: instr.Builder):
        self.b = builder
        self.templates: dict = {}
        self.history: list = []           # (run, regular, start, length)

    def _window(self, run):
        last = self.history[-self.WINDOW:]
        if len(last) < self.WINDOW or any(h[0] != run or not h[1] for h in last):
            return None
        return last[0][2], tuple(h[3] for h in last)

    def emitted(self, run, key, start: int, snapshot=None) -> None:
        """Record a unit emitted explicitly from `start`; `snapshot()` returns the caller's
        state after it (kept with a template)."""
        length = self.b.count - start
        window = self._window(run) if key is not None else None
        old = self.templates.get(key)
        if window is not None and (old is None or old["lens"] != window[1]):
            segs = [(s0 - start, ln) for s0, ln, _ in self.b.segments
                    if start <= s0 < start + length]
            self.templates[key] = {"rec": self.b.records(start, start + length),
                                   "start": start, "pred": window[0], "lens": window[1],
                                   "segs": segs, "state": snapshot() if snapshot else None}
        self.history.append((run, key is not None, start, length))

    def replay(self, run, key, reps: int = 0):
        """Append a copy of the template `key`; returns (move, template state) where
        `move(indices)` maps the template's instruction indices to the copy's, or None."""
        tpl = self.templates.get(key) if key is not None else None
        window = self._window(run)
        if tpl is None or window is None or window[1] != tpl["lens"]:
            return None
        new = self.b.count
        own, pred = new - tpl["start"], window[0] - tpl["pred"]
        t0, p0 = tpl["start"], tpl["pred"]

        def move(x):
            x = np.asarray(x, np.int64)
            return np.where(x >= t0, x + own, np.where(x >= p0, x + pred, x))

        rec = tpl["rec"].copy()
        rec["dep"] = move(rec["dep"])
        self.b.append_records(rec)
        for s0, ln in tpl["segs"]:
            self.b.repeat_at(new + s0, ln, reps)
        self.history.append((run, True, new, len(rec)))
        return move, tpl["state"]


def _batch(*items) -> int:
    """Largest array length among views / dependency lists (1 for scalars)."""
    size = 1
    for item in items:
        if item is None:
            continue
        for part in item:
            size = max(size, np.size(part))
    return size


def pe_stream(L: Lowering, core, groups: int, per: int, m, ls_deps, ls_view, k_rows, n_cols,
              acc, mm_deps, mm_view, dst_view, model_flops=True):
    """TensorE instructions: `groups` LoadStationary, each followed by `per` MultiplyMoving.

    LS arguments (`m`, `ls_deps`, `ls_view`) broadcast to [groups]; MM arguments (`k_rows`,
    `n_cols`, `acc`, `mm_deps`, `mm_view`, `dst_view`) to [groups * per] in group-major
    order. Each LS loads a [k, m] stationary; each MM multiplies a [k_rows, n_cols] moving
    tile into dst (accumulating where `acc`). Returns (ls indices, mm indices [groups, per]).
    """
    total = groups * (1 + per)
    is_ls = np.zeros((groups, 1 + per), bool)
    is_ls[:, 0] = True
    is_ls = is_ls.ravel()
    count = groups * per

    def spread(ls_value, mm_value):
        """One field over the interleaved stream from its LS and MM parts."""
        out = np.empty((groups, 1 + per), np.int64)
        out[:, 0] = ls_value
        out[:, 1:] = np.reshape(mm_value, (groups, per)) if np.ndim(mm_value) else mm_value
        return out.ravel()

    m_arr = np.broadcast_to(np.asarray(m, np.int64), (groups,))
    k_rows = np.broadcast_to(np.asarray(k_rows, np.int64), (count,))
    n_cols = np.broadcast_to(np.asarray(n_cols, np.int64), (count,))
    acc = np.broadcast_to(np.asarray(acc, bool), (count,))
    cost = spread(costs.ls_cycles(L.hw, m_arr, L.dtype), costs.mm_cycles(L.hw, n_cols, L.dtype))
    flags = np.where(acc, instr.FLAG_ACC, 0) | (instr.FLAG_MODEL if model_flops else 0)
    work = 2 * k_rows * np.repeat(m_arr, per) * n_cols if model_flops else 0
    deps = []
    for slot in range(max(len(ls_deps), len(mm_deps))):
        deps.append(spread(ls_deps[slot] if slot < len(ls_deps) else -1,
                           mm_deps[slot] if slot < len(mm_deps) else -1))
    a = tuple(spread(ls_view[k], mm_view[k]) for k in range(5))
    d = tuple(spread(-1 if k == 0 else 0, dst_view[k]) for k in range(5))
    index = L.b.emit(total, np.where(is_ls, instr.LOAD_STATIONARY, instr.MULTIPLY_MOVING), instr.PE,
                     core, cost, deps, flags=spread(0, flags), work=spread(0, work), d=d, a=a)
    index = index.reshape(groups, 1 + per)
    return index[:, 0], index[:, 1:]


# ---------------------------------------------------------------------- planning


def plan_token_block(L: Lowering, ntok: int, per_token_bytes: int, fixed_bytes: int,
                     what: str) -> int:
    """Largest token block (multiple of 512, else of 128) whose SBUF use fits a partition.

    `per_token_bytes` is the per-partition SBUF use per token of the block, `fixed_bytes`
    the use independent of the block. PSUM allows psum_banks/2 tiles of 512 per strip
    (double-buffered across strips).
    """
    cap = L.hw.sbuf_partition_bytes
    psum_limit = (L.hw.psum_banks // 2) * L.nmax
    want = min(ntok, psum_limit)
    for grain in (L.nmax, L.pmax):
        block = (want // grain) * grain if want >= grain else want
        while block > 0 and fixed_bytes + block * per_token_bytes > cap:
            block -= grain
        if block > 0:
            return block
    raise FitError(f"{what}: needs {fixed_bytes + min(ntok, L.pmax) * per_token_bytes} bytes "
                   f"of SBUF per partition for a {min(ntok, L.pmax)}-token block, "
                   f"{cap} available (prefill preset '{L.hw.name}')")


def chunks(total: int, size: int) -> np.ndarray:
    """[n, 2] array of (start, length) covering range(total) in pieces of `size`."""
    starts = np.arange(0, total, size, dtype=np.int64)
    return np.stack([starts, np.minimum(size, total - starts)], axis=1)
