"""A lower bound on the cycles of one decode step of a compiled mapping (its critical path).

`critical_path_bound(compiled, mesh, pos)` follows the chain of dependent stages of a
step: every stage needs the previous stage's result at the far end of the mesh, so the
step takes at least the sum over stages of

- **fabric distance**: the hops the stage's data must travel (a row reduction gathers
  from column pw - 1, a column multicast reaches the last row holding the GEMV's
  outputs, a column tree starts at the last row holding its inputs): `hops * h`;
- **message depth**: every level of a reduction tree and every multicast is one message,
  which costs at least its issue, its software overhead and two ramps, `o + M + 2r`, on
  the chain;
- **per-PE compute**: the vector and GEMV instructions of the busiest PE of the stage
  (docs/timing.md costs: `o + ceil(n / w)`, `o + k * ceil(m / w)` for a `vgemv`).

Message lengths, contention and the skew between rows are left out, so the emulated step
is never below the bound; the gap says how much those cost. The stages are those of
docs/mapping.md (RMSNorm, q/k/v, RoPE, attention, o_proj, RMSNorm, gate/up, SwiGLU,
down per layer, then the final norm and LM head). Units: cycles of the mesh clock.
"""

import numpy as np

from compiler.route import band_last_rows, tree_steps


def critical_path_bound(compiled, mesh, pos: int) -> dict:
    """{stage: cycles} of one decode step at position `pos` and their sum under `total`
    (per-layer stages summed over the layers)."""
    plan = compiled.plan
    spec, pw = plan.spec, plan.pw
    o, h, r = mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency
    w = mesh.simd_width(compiled.placement.dtype)
    msg = o + mesh.message_overhead + 2 * r

    t = mesh.transcendental_cycles

    def vec(n: int) -> int:
        return o + -(-n // w)

    def trans(n: int) -> int:
        """A transcendental (vexp, vrsqrt, vrecip, vsigmoid) over n elements."""
        return o + n * t if t else vec(n)

    def gemv(m: int, k: int) -> int:
        """vmul of column 0 and one vgemv of the other k - 1 columns."""
        return vec(m) + (o + (k - 1) * -(-m // w) if k > 1 else 0) if k else vec(m)

    def gemm(m: int, k: int) -> int:
        """A GEMV phase's local product: `gemv`, or for B > 1 users one vgemm
        (o + B * max(k, 1) * ceil(m / w), compiler/batch_emit.py)."""
        if plan.batch == 1:
            return gemv(m, k)
        return o + plan.batch * max(k, 1) * -(-m // w)

    def stage(hops: int, messages: int, compute: int) -> int:
        return hops * h + messages * msg + compute

    khid = plan.vec("hidden").max_size
    norm = stage(2 * (pw - 1), tree_steps(pw) + 1,
                 vec(khid) + 2 * (o + 1) + trans(1) + 2 * vec(khid))

    def last_row(vector: str) -> int:
        """The last row holding a chunk of `vector` (the chain reaches no further)."""
        rows = np.flatnonzero(plan.vec(vector).sizes())
        return int(rows[-1]) if len(rows) else 0

    def gemv_a(out: str) -> int:
        """x down the columns to the last row with outputs, then its row tree."""
        return stage(last_row(out) + (pw - 1), 1 + tree_steps(pw),
                     gemm(plan.vec(out).max_size, khid))

    def gemv_b(inp: str) -> int:
        """x along the rows, then the column trees from the last row with inputs."""
        last = last_row(inp)
        return stage((pw - 1) + last, 1 + tree_steps(last + 1),
                     gemm(plan.vec("hidden").max_size, plan.vec(inp).max_size) + vec(khid))

    layer = {"norm": 2 * norm, "qkv": gemv_a("qkv"), "o_proj": gemv_b("attn")}
    ffn = plan.vec("ffn").max_size
    layer["mlp"] = gemv_a("gu") + trans(ffn) + 2 * vec(ffn) + gemv_b("ffn")
    layer["rope"], layer["attention"] = attention_bound(plan, compiled.placement, pos, o, h,
                                                        msg, vec, gemv, trans)
    out = {name: cycles * spec.num_layers for name, cycles in layer.items()}
    windowed = [n for n in range(spec.num_layers) if spec.window(n) is not None]
    if windowed and plan.bands is not None:
        # a sliding layer's attention reads min(pos + 1, window) ring entries
        _, ring = attention_bound(plan, compiled.placement, min(pos, spec.sliding_window - 1),
                                  o, h, msg, vec, gemv, trans)
        out["attention"] += (ring - layer["attention"]) * len(windowed)
    sparse = sum(spec.is_sparse(n) for n in range(spec.num_layers))
    if sparse:
        # a sparse layer's chain (compiler/moe.py): the router GEMV-A, its logits up the
        # left column, the top-k at (0, 0), SEL to the far corner; then the far PE's k
        # gate/up GEMVs, one row tree of the k slots, the k activations (each scaled by its
        # weight), one row multicast of the k slots back, the k down GEMVs (t >= 1 one
        # accumulating vgemv each), the column tree of down to the top row and H += ACC
        moe, last, k = spec.moe, last_row("router"), spec.moe.top_k
        eff, out_b = plan.vec("eff").max_size, plan.vec("hidden").max_size
        eff1 = plan.vec("eff1").max_size
        down = gemv(out_b, eff1) + (k - 1) * (o + eff1 * -(-out_b // w) if eff1 else 0)
        experts = (stage(pw - 1, tree_steps(pw), k * gemv(plan.vec("egu").max_size, khid))
                   + k * (trans(eff) + vec(eff) + vec(eff1))
                   + stage(pw - 1, 1, down))
        tail = last_row("eff1")
        moe_mlp = (gemv_a("router") + stage(last, tree_steps(last + 1), 0)
                   + moe.top_k * vec(moe.num_experts)
                   + stage((pw - 1) + (plan.ph - 1), 2, 0) + experts
                   + stage(tail, tree_steps(tail + 1), vec(khid)))
        out["mlp"] = layer["mlp"] * (spec.num_layers - sparse) + moe_mlp * sparse
    out["head"] = (norm + gemv_a("vocab")) if plan.head else 0
    out["total"] = sum(out.values())
    return out


def attention_bound(plan, placement, pos: int, o: int, h: int, msg: int, vec, gemv, trans
                    ) -> tuple[int, int]:
    """(RoPE, attention) cycles of the critical path of one layer's attention."""
    spec, pw = plan.spec, plan.pw
    gs, hd = spec.group_size, spec.head_dim
    bands = plan.bands
    if bands is None:   # a row's whole groups: scores and values over its slots, row trees
        slots, heads = placement.slots, plan.max_heads
        n2 = (gs + 1) * hd // 2
        rope = 6 * vec(n2) * plan.vec("groups").max_size
        compute = heads * (2 * slots * vec(hd) + 4 * vec(slots) + trans(slots))
        attention = ((pw - 1) * 3 * h + (2 * tree_steps(pw) + 2) * msg + compute)
        return rope, attention
    nact = pos // pw + 1
    k2 = int(2 * bands.kp.max())
    nv = int(bands.nv.max())
    rope = 6 * vec((gs + 1) * k2 // 2)
    last = band_last_rows(bands)
    scores = gs * gemv(nact, k2) + vec(gs * nact) + trans(gs * nact) + gs * (2 * vec(nact) + o)
    local = vec(gs) + gs * vec(nact) + gs * nv * vec(nact)
    merge = tree_steps(pw) * (5 * vec(gs) + trans(2 * gs) + 2 * gs * vec(nv) + vec(gs))
    normalize = trans(gs) + gs * vec(nv)
    hops = (pw - 1) + (bands.krows - 1) + last + (pw - 1)
    messages = 1 + tree_steps(bands.krows) + (1 if last else 0) + tree_steps(pw)
    attention = hops * h + messages * msg + scores + local + merge + normalize
    return rope, attention
