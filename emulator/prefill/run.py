"""`run_prefill`: lower, time and (optionally) execute a prefill; the result and its reports.

Cycles are TensorE cycles of the prefill preset; seconds = cycles / tensor_clock_hz.
The roofline bound of the whole prefill is max(model FLOPs / published peak FLOP/s,
minimum HBM bytes / HBM bandwidth); each operator's bound is computed the same way from its
own FLOPs and bytes.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from compiler.numerics import canonical_dtype
from compiler.reference import KVCache
from emulator.hw.errors import ConfigError, FitError
from emulator.limits import check_memory
from emulator.prefill import engine_model, interp
from emulator.prefill import instructions as instr
from emulator.prefill.gemm import TOKEN_TILE, gemm_tiles
from emulator.prefill.model import Lowered, core_shares, lower_prefill
from emulator.prefill.pipeline import check_stages, plan_pipeline

DTYPES = ("bf16", "fp16", "fp32", "fp8")


@dataclass
class PrefillResult:
    """Timing (and values, in functional mode) of one prefill on one chip."""

    cycles: int                     # TensorE cycles from the first instruction to the last
    seconds: float
    logits_last: np.ndarray | None  # float32 [vocab] at the last prompt position
    kv_cache: KVCache | None        # post-RoPE keys and values [layers, kv_heads, P, d]
    per_layer: list[dict]
    per_op: list[dict]
    engine_busy: dict               # engine -> busy cycles summed over the chip's cores
    bytes_moved: dict               # hbm_dma, collective (bytes)
    roofline_seconds: float
    flops: float                    # model FLOPs of the prefill
    prompt_len: int
    dtype: str
    hw_name: str
    clock_hz: float
    cores: int                      # cores of all chips
    program: instr.InstructionStream = field(repr=False)
    schedule: engine_model.Schedule = field(repr=False)
    chips: int = 1
    host_seconds: float = 0.0       # wall time of lowering + engine model on the host
    chunk: int | None = None        # --prefill-chunk: tokens per chunk (None: one pass)
    weight_dtype: str = ""          # --weight-dtype: storage of the projection weights
    expert_counts: dict = field(default_factory=dict)   # MoE: layer -> tokens per expert
    routing: str = "none"           # MoE counts: router (functional), balanced, given
    parts: list = field(default_factory=list, repr=False)   # chunked: one result per chunk
    chunk_offsets: list = field(default_factory=list)       # chunked: start cycle per chunk
    pipeline: object = None         # --prefill-stages > 1: prefill.pipeline.Pipeline

    @property
    def chunk_rows(self) -> list[dict]:
        """One row per chunk (one row for an unchunked prefill): `index`, `past` (tokens
        before it), `tokens`, `start_cycle`, `end_cycle`, `cycles`, `end_seconds`, `flops`."""
        parts = self.parts or [self]
        offsets = self.chunk_offsets or [0]
        rows, past = [], 0
        for i, (part, off) in enumerate(zip(parts, offsets, strict=True)):
            rows.append({"index": i, "past": past, "tokens": part.prompt_len,
                         "start_cycle": off, "end_cycle": off + part.cycles,
                         "cycles": part.cycles,
                         "end_seconds": (off + part.cycles) / self.clock_hz,
                         "flops": part.flops})
            past += part.prompt_len
        return rows

    @property
    def engine_utilization(self) -> dict:
        """Busy fraction of each engine kind over the chip's cores and the whole prefill."""
        span = max(1, self.cycles)
        return {name: busy / (span * (1 if name == "collective" else self.cores))
                for name, busy in self.engine_busy.items()}

    def layer_end_seconds(self) -> list[list[float]]:
        """Per chunk (one list when unchunked), the time each decoder layer finishes,
        in seconds from the start of the prefill."""
        parts = self.parts or [self]
        offsets = self.chunk_offsets or [0]
        return [[(off + row["end"]) / self.clock_hz for row in part.per_layer
                 if row["layer"] >= 0] for part, off in zip(parts, offsets, strict=True)]

    def moe_summary(self) -> dict | None:
        """MoE routing: where the counts come from, tokens routed per layer, and the
        busiest expert against the mean (None for dense models)."""
        if not self.expert_counts:
            return None
        rows = [np.asarray(c) for c in self.expert_counts.values()]
        mean = max(1e-9, float(np.mean([r.mean() for r in rows])))
        return {"routing": self.routing, "sparse_layers": len(rows),
                "experts": len(rows[0]), "routed_tokens_per_layer": int(rows[0].sum()),
                "max_tokens_per_expert": int(max(r.max() for r in rows)),
                "imbalance": float(max(r.max() for r in rows)) / mean}

    def instructions(self) -> tuple[int, int]:
        """(instructions stored, instructions represented) over all chunks."""
        parts = self.parts or [self]
        return (sum(len(p.program) for p in parts),
                sum(p.program.virtual_length() for p in parts))

    def summary(self) -> dict:
        """JSON-ready report (no per-instruction data)."""
        stored, represented = self.instructions()
        return {"prefill_hw": self.hw_name, "prompt_len": self.prompt_len, "dtype": self.dtype,
                "weight_dtype": self.weight_dtype or self.dtype,
                "chips": self.chips, "cycles": self.cycles, "seconds": self.seconds,
                "roofline_seconds": self.roofline_seconds, "flops": self.flops,
                "achieved_flops_per_s": self.flops / self.seconds if self.seconds else 0.0,
                "engine_busy_cycles": self.engine_busy,
                "engine_utilization": self.engine_utilization,
                "bytes_moved": self.bytes_moved, "instructions": stored,
                "instructions_represented": represented,
                "chunk": self.chunk, "chunks": self.chunk_rows,
                "moe": self.moe_summary(),
                "pipeline": self.pipeline.summary() if self.pipeline else None,
                "per_layer": self.per_layer, "per_op": self.per_op}

    def trace_slices(self, limit: int | None = None) -> list[dict]:
        """Perfetto-style slices: name, engine, start and duration (seconds), args.

        One slice per instruction of the simulated cores (cores with identical work are
        represented once in timing-only mode); `limit` keeps the first slices only.
        LoadStationary runs in the background of MultiplyMoving, so it gets its own track
        (`coreN.tensor.load`) and slices never overlap on a track. A chunked prefill gives
        each chunk's slices in turn, shifted to the chunk's start (args `chunk`).
        """
        if self.parts:
            slices = []
            for i, (part, off) in enumerate(zip(self.parts, self.chunk_offsets, strict=True)):
                left = None if limit is None else limit - len(slices)
                if left is not None and left <= 0:
                    break
                for sl in part.trace_slices(left):
                    sl["start"] += off / self.clock_hz
                    sl["args"]["chunk"] = i
                    slices.append(sl)
            return slices
        code, sched = self.program.instr, self.schedule
        n = len(code) if limit is None else min(limit, len(code))
        ops = self.program.ops
        slices = []
        for i in range(n):
            rec = code[i]
            core = int(rec["core"])
            engine = instr.ENGINE_NAMES[int(rec["engine"])]
            if rec["op"] == instr.LOAD_STATIONARY:
                engine += ".load"
            op = ops[int(rec["op_id"])] if rec["op_id"] >= 0 else None
            slices.append({
                "name": instr.OPCODE_NAMES[int(rec["op"])],
                "engine": engine if core < 0 else f"core{core}.{engine}",
                "start": sched.start[i] / self.clock_hz,
                "duration": int(rec["cost"]) / self.clock_hz,
                "args": {"op": op.name if op else "", "layer": op.layer if op else -1,
                         "cycles": int(rec["cost"]), "index": i}})
        return slices


def run_prefill(spec, hw, tokens, weights=None, dtype: str = "bf16",
                timing_only: bool = False, seed: int = 0, chips: int | None = None,
                chunk: int | None = None, weight_dtype=None,
                expert_counts: dict | None = None, stages: int = 1) -> PrefillResult:
    """Prefill `tokens` (token ids, or an int prompt length) of model `spec` on `chips`
    chips of preset `hw` (None: the fewest whose HBM holds weights, KV and activations).

    Functional mode (default) computes the logits of the last position and the KV cache
    with `weights` (HF names, float32; random from `seed` when None); timing-only mode
    skips all values. Both give the same cycles. `chunk` (chunked prefill, docs/prefill.md):
    the prompt runs in passes of `chunk` tokens, each attending to the KV cache of the
    passes before it; None (or a chunk >= the prompt) is one pass. `weight_dtype`
    (`--weight-dtype` bf16|fp8|mxfp4, None: the matmul dtype): the storage of the
    decoder layers' projection weights; HBM sizes and weight DMA follow it, and a format
    other than the matmul's is dequantised on VectorE (values: the weights as given).
    MoE models: functional runs size each expert's GEMMs by the tokens the emulated router
    sends it; timing-only runs by `expert_counts` ({layer: tokens per expert}, one pass
    only) or, when None, balanced routing (docs/prefill.md, "Mixture of experts").
    `stages` > 1: pipeline parallelism, the layers over `stages` groups of `chips` chips
    each (emulator/prefill/pipeline.py); `result.pipeline` holds the pipelined schedule.
    """
    t0 = time.perf_counter()
    require_prefill_features(spec)
    dtype = _check_dtype(dtype)
    if dtype == "fp8" and not timing_only:
        raise ConfigError("prefill: fp8 runs in timing-only mode (values are not rounded to "
                          "fp8); add --timing-only or use bf16")
    token_ids, P = _prompt(spec, tokens, seed, timing_only)
    chunk = check_chunk(chunk, P)
    wfmt = check_weight_dtype(dtype, weight_dtype)
    if expert_counts is not None:
        _check_counts(spec, expert_counts, P, timing_only, chunk)
    chips = choose_chips(spec, hw, P, dtype, chips, chunk, wfmt, stages)
    if stages > 1:
        check_stages(stages, spec, hw, chips)
    if not timing_only and weights is None:
        from compiler.weights import check_weights_memory
        check_weights_memory(spec, "random weights")
    check_memory(prefill_host_bytes(spec, hw, P, timing_only),
                 f"prefill of {P} tokens ({spec.num_layers} layers, hidden "
                 f"{spec.hidden_size}, vocabulary {spec.vocab_size:,})")
    if not timing_only and weights is None:
        from compiler.weights import random_weights
        weights = random_weights(spec, seed)
    parts, kv = [], None
    for past in range(0, P, chunk or P):
        n = min(chunk or P, P - past)
        inputs = None
        if not timing_only and spec.moe is not None:     # executed while it is lowered
            inputs = input_values(spec, weights, token_ids[past:past + n], n, past,
                                  core_shares(spec, hw, n, chips),
                                  hw.pe_rows if spec.attention_bias else 0, kv)
        lowered = lower_prefill(spec, hw, n, dtype, timing_only, chips, past=past,
                                last=past + n == P, weight_format=wfmt,
                                expert_counts=expert_counts, inputs=inputs)
        sched = engine_model.simulate(lowered.program)
        logits = None
        if not timing_only:
            ids = token_ids[past:past + n]
            machine = lowered.machine or interp.execute(
                lowered.program, bind_inputs(lowered, spec, weights, ids, kv))
            logits, kv = _outputs(lowered, spec, machine)
        part = _result(lowered, spec, hw, sched, logits, kv)
        part.expert_counts = _routed(spec, lowered, n)
        parts.append(part)
    result = parts[0] if len(parts) == 1 else _combine(parts, spec, hw, chunk)
    if len(parts) > 1 and spec.moe is not None:
        result.expert_counts = {
            layer: [int(x) for x in np.sum([p.expert_counts[layer] for p in parts], axis=0)]
            for layer in parts[0].expert_counts}
    result.routing = ("none" if spec.moe is None else "router" if not timing_only
                      else "given" if expert_counts is not None else "balanced")
    result.chunk = chunk
    result.weight_dtype = wfmt.name
    if stages > 1:
        result.pipeline = plan_pipeline(result, spec, hw, stages)
    result.host_seconds = time.perf_counter() - t0
    return result


# Features of compiler.frontend.ModelSpec.unmapped_features() the prefill lowering maps.
PREFILL_FEATURES = ("attention sinks", "sliding-window attention", "yarn RoPE", "qk-norm",
                    "mixture-of-experts MLP")


def require_prefill_features(spec) -> None:
    """ConfigError naming the model's features the prefill lowering does not map."""
    missing = [f for f in spec.unmapped_features() if f not in PREFILL_FEATURES]
    if missing:
        raise ConfigError(f"prefill does not map {spec.architecture}'s {', '.join(missing)} "
                          f"yet; the numpy reference (compiler/reference.py) runs it "
                          f"(docs/models.md)")


def _check_counts(spec, counts: dict, P: int, timing_only: bool, chunk) -> None:
    """expert_counts: timing-only, unchunked, one row of E counts summing to P*k per
    sparse layer."""
    moe = spec.moe
    if moe is None or not timing_only or chunk is not None:
        raise ConfigError("expert_counts: only for a timing-only, unchunked prefill of a "
                          "mixture-of-experts model")
    for layer in moe.sparse_layers:
        row = np.asarray(counts.get(layer, ()), np.int64)
        if row.shape != (moe.num_experts,) or row.min() < 0 or row.sum() != P * moe.top_k:
            raise ConfigError(f"expert_counts: layer {layer} needs {moe.num_experts} "
                              f"non-negative counts summing to {P * moe.top_k}")


def _routed(spec, lowered, P: int) -> dict:
    """Tokens per expert of every sparse layer (layers the memoised lowering did not
    lower repeat the balanced counts it used)."""
    if spec.moe is None:
        return {}
    from emulator.prefill.moe import balanced_counts
    moe = spec.moe
    routed = lowered.routed or {}
    return {layer: [int(x) for x in routed.get(
        layer, balanced_counts(P, moe.top_k, moe.num_experts))]
        for layer in moe.sparse_layers}


def check_weight_dtype(dtype: str, weight_dtype):
    """The WeightFormat of --weight-dtype (default: the matmul dtype `dtype`); ConfigError
    for an unknown name (the one parser of emulator.hw.dtypes)."""
    from emulator.hw.dtypes import weight_format_for
    try:
        return weight_format_for(dtype, weight_dtype)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_chunk(chunk, P: int) -> int | None:
    """--prefill-chunk N: a positive integer (ConfigError otherwise); None when absent or
    when one chunk holds the whole prompt."""
    if chunk is None:
        return None
    if isinstance(chunk, bool):
        chunk = str(chunk)
    chunk = parse_positive(chunk, "--prefill-chunk")
    return None if chunk >= P else chunk


def _combine(parts: list[PrefillResult], spec, hw, chunk: int) -> PrefillResult:
    """One result of a chunked prefill: chunks run back to back (chunk i+1's first
    instruction waits for chunk i's last result), so cycles add up; per-operator rows are
    each chunk's, tagged with `chunk` and shifted to the chunk's start; per-layer rows sum
    a layer over the chunks; the roofline is the whole prompt's FLOPs and bytes."""
    offsets, off = [], 0
    per_op = []
    for i, part in enumerate(parts):
        offsets.append(off)
        for row in part.per_op:
            per_op.append({**row, "chunk": i, "start": row["start"] + off,
                           "end": row["end"] + off})
        off += part.cycles
    last = parts[-1]
    busy = {k: sum(p.engine_busy[k] for p in parts) for k in last.engine_busy}
    moved = {k: sum(p.bytes_moved[k] for p in parts) for k in last.bytes_moved}
    flops = sum(p.flops for p in parts)
    hbm = sum(row["min_hbm_bytes"] for row in per_op)
    chips = last.chips
    roof = max(flops / (hw.peak_flops(last.dtype) * chips), hbm / (hw.hbm_bytes_per_s * chips))
    P = sum(p.prompt_len for p in parts)
    return PrefillResult(off, off / hw.tensor_clock_hz, last.logits_last, last.kv_cache,
                         _per_layer(per_op), per_op, busy, moved, roof, flops, P, last.dtype,
                         hw.name, hw.tensor_clock_hz, last.cores, last.program, last.schedule,
                         chips, chunk=chunk, parts=parts, chunk_offsets=offsets)


def choose_chips(spec, hw, P: int, dtype: str, chips: int | None,
                 chunk: int | None = None, wfmt=None, stages: int = 1) -> int:
    """`chips` checked against the preset (1 .. hw.chips) and HBM, or, when None, the
    smallest chip count whose HBM holds the weights, KV cache and activations (of one
    `chunk` of tokens when chunked; of the largest of `stages` pipeline stages)."""
    if chips is not None:
        if chips < 1 or chips > hw.chips:
            raise ConfigError(f"--prefill-chips: {chips} is outside 1..{hw.chips} (field "
                              f"'chips' of prefill preset '{hw.name}')")
        check_capacity(spec, hw, P, dtype, chips, chunk, wfmt, stages)
        return chips
    most = max(1, hw.chips // stages)
    for n in range(1, most + 1):
        if hbm_bytes_needed(spec, hw, P, dtype, n, chunk, wfmt, stages)["total"] <= hw.hbm_bytes:
            return n
    check_capacity(spec, hw, P, dtype, most, chunk, wfmt, stages)
    return most


# Host bytes per lowered prefill instruction (builder columns, the record array, the
# schedule): tracemalloc peaks of 276-280 B per instruction for Llama-3.1-8B (1, 128 and
# 8192 tokens) and 70B (128 tokens), up to 900 B for tiny models; fixed overhead below.
PREFILL_BYTES_PER_INSTRUCTION = 512
PREFILL_FIXED_BYTES = 64 << 20
PREFILL_TIMING_BYTES = 2 << 30   # timing-only peak: 0.99 GiB measured, 8B at 131,072 tokens
PREFILL_TILE_OVERHEAD = 8   # instructions per weight tile besides one per token tile
PREFILL_LAYER_OVERHEAD = 256  # instructions per layer besides its tiles (norms, RoPE, ...)


def prefill_instructions(spec, hw, P: int) -> int:
    """An upper bound (within about 3x) of the instructions lowered for a prefill of P
    tokens: on each core, its share of every weight tile once per 128-token tile plus a
    fixed overhead, and the attention tiles of its heads (quadratic in P). Measured against
    the lowering: 8B at 1 / 128 / 8192 tokens 388k / 205k / 3.43M instructions (bound 479k
    / 266k / 4.7M); 70B on trn3 at 128 tokens 1.75M (bound 4.7M)."""
    rows, cols, cores = hw.pe_rows, hw.pe_cols, max(1, hw.cores_per_chip)
    h, f, q, kv = spec.hidden_size, spec.intermediate_size, spec.q_dim, spec.kv_dim
    weight_tiles = (gemm_tiles(TOKEN_TILE, q + 2 * kv, h, rows, cols)
                    + gemm_tiles(TOKEN_TILE, h, q, rows, cols)
                    + gemm_tiles(TOKEN_TILE, 2 * f, h, rows, cols)
                    + gemm_tiles(TOKEN_TILE, h, f, rows, cols))
    token_tiles = -(-P // TOKEN_TILE)
    per_layer = (-(-weight_tiles // cores) * (token_tiles + PREFILL_TILE_OVERHEAD)
                 + 2 * -(-spec.num_heads // cores) * token_tiles ** 2
                 + PREFILL_LAYER_OVERHEAD * token_tiles)
    head = gemm_tiles(TOKEN_TILE, spec.vocab_size, h, rows, cols) * PREFILL_TILE_OVERHEAD
    return spec.num_layers * per_layer + head + PREFILL_LAYER_OVERHEAD


def prefill_host_bytes(spec, hw, P: int, timing_only: bool) -> int:
    """Host bytes of lowering, scheduling and (functional) interpreting a prefill of P
    tokens, weights excluded (compiler.weights guards those): functional, every instruction
    and the float32 activations of every layer and the attention scores; timing-only
    lowering stores each repeated tile, block and layer once (docs/prefill.md), so its
    instructions barely grow with P: PREFILL_TIMING_BYTES bounds it."""
    need = PREFILL_FIXED_BYTES
    if timing_only:
        return need + PREFILL_TIMING_BYTES
    if not timing_only:
        need += PREFILL_BYTES_PER_INSTRUCTION * prefill_instructions(spec, hw, P)
        h, f, q, kv = spec.hidden_size, spec.intermediate_size, spec.q_dim, spec.kv_dim
        per_layer = P * (3 * h + q + 2 * kv + 3 * f) + spec.num_heads * P * P
        need += 4 * (spec.num_layers * per_layer + spec.vocab_size)
    return need


def _check_dtype(dtype: str) -> str:
    if dtype == "fp8":
        return "fp8"
    try:
        kind = canonical_dtype(dtype)
    except ValueError as exc:
        raise ConfigError(f"prefill: {exc} (or fp8)") from None
    return kind


def _prompt(spec, tokens, seed: int, timing_only: bool):
    """(token ids or None, prompt length) with range checks (ConfigError)."""
    if isinstance(tokens, (int, np.integer)) and not isinstance(tokens, bool):
        P = int(tokens)
        ids = None if timing_only else np.random.default_rng(seed).integers(
            0, spec.vocab_size, P)
    else:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        P = ids.size
        bad = ids[(ids < 0) | (ids >= spec.vocab_size)]
        if bad.size:
            raise ConfigError(f"prompt: token id {int(bad[0])} is outside the vocabulary "
                              f"[0, {spec.vocab_size})")
    if P < 1:
        raise ConfigError(f"prompt: the prompt length must be at least 1, got {P}")
    if P > spec.max_position_embeddings:
        raise ConfigError(f"prompt: {P} tokens exceed the model's max_position_embeddings "
                          f"({spec.max_position_embeddings})")
    return ids, P


def hbm_bytes_needed(spec, hw, P: int, dtype: str, chips: int = 1,
                     chunk: int | None = None, wfmt=None, stages: int = 1) -> dict:
    """HBM bytes one chip needs for a prefill of P tokens over `chips` chips (tensor
    parallel): its share of the weights and of the KV cache (all P tokens), plus the
    activations of one layer as the lowering lays them out for P tokens, or for one
    `chunk` of tokens in a chunked prefill (residual, delta and partial sums in fp32; the
    normalised input, q/k/v/o and the MLP activation in the matmul dtype; one fp32
    partial sum per core for the reduce-scatter). The decoder layers' projection and
    expert matrices are stored in `wfmt` (a WeightFormat; None: the matmul dtype).
    With `stages` pipeline stages a chip holds the largest stage's share,
    ceil(layers / stages) / layers, of the weights and KV cache (an upper bound: the
    embedding and LM head are counted in every stage's share)."""
    bpe = bytes_per_element(dtype)
    share = -(-spec.num_layers // stages) / spec.num_layers
    weights = weight_bytes(spec, dtype, wfmt) * share / chips
    kv = spec.kv_bytes_per_token(bpe) * P * share / chips
    H = spec.hidden_size
    sharded = (2 * spec.q_dim + 2 * spec.kv_dim + spec.intermediate_size) * bpe / chips
    acts = min(P, chunk or P) * (3 * H * 4 + 2 * H * bpe + sharded + hw.cores_per_chip * H * 4)
    return {"weights": int(weights), "kv": int(kv), "activations": int(acts),
            "total": int(weights + kv + acts)}


def weight_bytes(spec, dtype: str, wfmt=None) -> int:
    """Bytes of the model's weights: the decoder layers' matrices (2-D and fused 3-D
    tensors under `model.layers.`) in `wfmt`, everything else (embeddings, lm_head, norms,
    biases, sinks) in the matmul dtype."""
    bpe = bytes_per_element(dtype)
    packed = 0
    for name, shape in spec.weight_shapes().items():
        if name.startswith("model.layers.") and len(shape) >= 2:
            packed += int(np.prod(shape))
    rest = spec.param_count() - packed
    stored = packed * bpe if wfmt is None else -(-packed * round(wfmt.bits_per_element * 8)
                                                  // 64)
    return int(stored + rest * bpe)


def bytes_per_element(dtype: str) -> int:
    """Bytes of one weight / KV / matmul operand element."""
    return {"fp32": 4, "fp8": 1}.get(dtype, 2)


def check_capacity(spec, hw, P: int, dtype: str, chips: int = 1,
                   chunk: int | None = None, wfmt=None, stages: int = 1) -> None:
    """FitError when weights + KV cache + activations exceed a chip's HBM."""
    need = hbm_bytes_needed(spec, hw, P, dtype, chips, chunk, wfmt, stages)
    if need["total"] > hw.hbm_bytes:
        where = f" per stage of {stages} pipeline stages" if stages > 1 else ""
        raise FitError(f"prefill: model needs {need['total']} bytes of HBM per chip on "
                       f"{chips} chip(s){where} (weights {need['weights']}, KV cache {need['kv']}, "
                       f"activations {need['activations']}), preset '{hw.name}' has "
                       f"{hw.hbm_bytes}")


def rope_tables(spec, P: int, past: int = 0):
    """(cos, signed sin) float32 [head_dim, P] of positions past..past+P-1; sin's first
    half negated (rotate_half); both scaled by the RoPE type's attention scaling (YaRN)."""
    angles = np.outer(np.arange(past, past + P, dtype=np.float64), spec.rope_inv_freq())
    angles = np.concatenate([angles, angles], axis=-1)
    scale = spec.rope.attention_scaling
    cos = (np.cos(angles) * scale).astype(np.float32).T
    sin = (np.sin(angles) * scale).astype(np.float32).T
    sin[: spec.head_dim // 2] *= -1
    return cos, sin


def bind_inputs(lowered: Lowered, spec, weights: dict, tokens,
                past_kv: KVCache | None = None) -> dict:
    """Initial HBM contents by tensor name: weights (transposed), tokens, RoPE tables, and
    in a chunked prefill the KV cache of the earlier chunks (`past_kv`, `lowered.past`
    positions) in the first columns / rows of each layer's K / V tensors."""
    pmax = lowered.program.tensors[lowered.tensors["L0.v.bias_rows"]].rows \
        if "L0.v.bias_rows" in lowered.tensors else 0
    return input_values(spec, weights, tokens, lowered.prompt_len, lowered.past,
                        lowered.shares, pmax, past_kv)


def input_values(spec, weights: dict, tokens, P: int, past: int, shares, pmax: int,
                 past_kv: KVCache | None = None) -> dict:
    """`bind_inputs` before the stream exists (functional MoE lowering): P tokens after
    `past`, the core split `shares`, `pmax` rows of the v bias tile (0: none)."""
    cos, sin = rope_tables(spec, P, past)
    lm = weights["model.embed_tokens.weight"] if spec.tie_word_embeddings \
        else weights["lm_head.weight"]
    inputs = {"embed": weights["model.embed_tokens.weight"],
              "tokens": np.asarray(tokens, np.float32)[None, :],
              "rope.cos": cos, "rope.sin": sin,
              "final_norm": weights["model.norm.weight"][:, None], "lm_head.T": lm.T}
    for layer in range(spec.num_layers):
        inputs.update(_layer_inputs(spec, weights, layer, pmax))
    if past:
        d, T = spec.head_dim, past + P
        for share in shares:
            if not share.q_heads:
                continue
            nkv = len(share.kv_heads)
            for layer in range(spec.num_layers):
                k = np.zeros((nkv * d, T), np.float32)
                v = np.zeros((T, nkv * d), np.float32)
                for i, kvh in enumerate(share.kv_heads):
                    k[i * d:(i + 1) * d, :past] = past_kv.k[layer, kvh, :past].T
                    v[:past, i * d:(i + 1) * d] = past_kv.v[layer, kvh, :past]
                inputs[f"L{layer}.k.c{share.core}"] = k
                inputs[f"L{layer}.v.c{share.core}"] = v
    return inputs


def _layer_inputs(spec, weights: dict, layer: int, pmax: int) -> dict:
    """Inputs of one layer: W^T per projection, bias columns, norm weights."""
    p, out = f"model.layers.{layer}.", {}
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
             "down": "mlp.down_proj"}
    if spec.is_sparse(layer):
        from emulator.prefill.moe import moe_inputs
        out.update(moe_inputs(spec, weights, layer))
        for short in ("gate", "up", "down"):
            del names[short]
    for short, hf in names.items():
        out[f"L{layer}.{short}.T"] = weights[f"{p}{hf}.weight"].T
        bias = weights.get(f"{p}{hf}.bias")
        if bias is not None:
            out[f"L{layer}.{short}.bias"] = bias[:, None]
            if short == "v":
                out[f"L{layer}.v.bias_rows"] = np.tile(bias[None, :], (pmax, 1))
    for name in ("q_norm", "k_norm"):
        if f"{p}self_attn.{name}.weight" in weights:
            out[f"L{layer}.{name}"] = weights[f"{p}self_attn.{name}.weight"][:, None]
    if f"{p}self_attn.sinks" in weights:
        out[f"L{layer}.sinks"] = weights[f"{p}self_attn.sinks"][None, :]
    out[f"L{layer}.ln1"] = weights[f"{p}input_layernorm.weight"][:, None]
    out[f"L{layer}.ln2"] = weights[f"{p}post_attention_layernorm.weight"][:, None]
    return out


def _outputs(lowered: Lowered, spec, machine) -> tuple[np.ndarray, KVCache]:
    """Logits of the last position and the KV cache read back from HBM."""
    t = lowered.tensors
    logits = machine.data[t["logits"]][:, 0].astype(np.float32) if lowered.last else None
    d, P = spec.head_dim, lowered.past + lowered.prompt_len
    shape = (spec.num_layers, spec.num_kv_heads, P, d)
    k, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for share in lowered.shares:
        for i, kvh in enumerate(share.kv_heads):
            for layer in range(spec.num_layers):
                kt = machine.data[t[f"L{layer}.k"][share.core]]
                vt = machine.data[t[f"L{layer}.v"][share.core]]
                k[layer, kvh] = kt[i * d:(i + 1) * d].T
                v[layer, kvh] = vt[:, i * d:(i + 1) * d]
    return logits, KVCache(k, v)


def _result(lowered: Lowered, spec, hw, sched, logits, kv) -> PrefillResult:
    """Aggregate the schedule into per-op, per-layer and per-engine reports."""
    program = lowered.program
    code = program.instr
    weight = np.ones(len(code))
    for core, count in program.core_weight.items():
        weight[code["core"] == core] = count
    runs = program.instances()
    cycles = sched.cycles
    busy = _engine_busy(program, sched)
    is_dma = code["engine"] == instr.DMA
    is_cc = code["engine"] == instr.CC
    moved = {"hbm_dma": float((code["work"] * weight * runs)[is_dma].sum()),
             "collective": float((code["work"] * runs)[is_cc].sum())}
    per_op = _per_op(program, sched, weight, hw, lowered.dtype, lowered.chips)
    per_layer = _per_layer(per_op)
    flops = sum(op.flops for op in program.ops)
    hbm = sum(op.hbm_bytes for op in program.ops)
    chips = lowered.chips
    roof = max(flops / (hw.peak_flops(lowered.dtype) * chips),
               hbm / (hw.hbm_bytes_per_s * chips))
    return PrefillResult(cycles, cycles / hw.tensor_clock_hz, logits, kv, per_layer, per_op,
                         busy, moved, roof, flops, lowered.prompt_len, lowered.dtype, hw.name,
                         hw.tensor_clock_hz, hw.cores_per_chip * chips, program, sched, chips)


def _engine_busy(program: instr.InstructionStream, sched) -> dict:
    """Busy cycles per engine kind, summed over all the chip's cores."""
    busy = dict.fromkeys(instr.ENGINE_NAMES, 0)
    for slot, core in enumerate(program.cores):
        for e in range(instr.ENGINES_PER_CORE):
            q = slot * instr.ENGINES_PER_CORE + e
            busy[instr.ENGINE_NAMES[e]] += int(sched.busy[q]) * program.core_weight[core]
    busy["collective"] = int(sched.busy[-1])
    return busy


def _per_op(program, sched, weight, hw, dtype, chips=1) -> list[dict]:
    """One row per operator: cycles, span, busy cycles per engine, bytes, FLOPs, roofline.

    `cycles` are the cycles the operator adds to the completion time of the operators
    before it (so they sum to the prefill's cycles); `span` runs from its first
    instruction's start (weight prefetch may start early) to its last result. In a
    memoised program the operators of layers 2.. have layer 1's busy cycles and bytes.
    """
    code = program.instr
    op_id = code["op_id"].astype(np.int64)
    nops = len(program.ops)
    start, end = sched.op_start, sched.op_end
    runs = weight * program.instances(layers=False)
    key = op_id * len(instr.ENGINE_NAMES) + code["engine"]
    busy = np.bincount(key, weights=code["cost"] * runs,
                       minlength=nops * len(instr.ENGINE_NAMES)).reshape(nops, -1)
    dma = np.bincount(op_id, weights=np.where(code["engine"] == instr.DMA,
                                              code["work"] * runs, 0), minlength=nops)
    if program.layer_plan is not None:
        t0, tlen, layers, opl = program.layer_plan
        if tlen:
            op1 = int(op_id[t0])
            for k in range(2, layers):
                lo = op1 + (k - 1) * opl
                busy[lo:lo + opl] = busy[op1:op1 + opl]
                dma[lo:lo + opl] = dma[op1:op1 + opl]
    rows = []
    done = 0
    for i, op in enumerate(program.ops):
        roof = max(op.flops / (hw.peak_flops(dtype) * chips),
                   op.hbm_bytes / (hw.hbm_bytes_per_s * chips))
        has = start[i] <= end[i]
        added = max(0, int(end[i]) - done)
        done = max(done, int(end[i]))
        rows.append({"name": op.name, "layer": op.layer,
                     "start": int(start[i]) if has else 0, "end": int(end[i]),
                     "span": int(end[i] - start[i]) if has else 0, "cycles": added,
                     "busy": {n: int(busy[i, e]) for e, n in enumerate(instr.ENGINE_NAMES)},
                     "dma_bytes": float(dma[i]), "flops": op.flops,
                     "min_hbm_bytes": op.hbm_bytes,
                     "roofline_cycles": hw.tensor_cycles(roof)})
    return rows


def _per_layer(per_op: list[dict]) -> list[dict]:
    """Per decoder layer (-1: outside the layers): totals of its operators' rows."""
    layers: dict[int, dict] = {}
    for op in per_op:
        row = layers.setdefault(op["layer"], {"layer": op["layer"], "cycles": 0, "end": 0,
                                              "flops": 0.0, "dma_bytes": 0.0,
                                              "roofline_cycles": 0})
        row["end"] = max(row["end"], op["end"])
        for key in ("cycles", "flops", "dma_bytes", "roofline_cycles"):
            row[key] += op[key]
    return [layers[k] for k in sorted(layers, key=lambda x: (x < 0, x))]


def parse_positive(text, flag: str) -> int | None:
    """The value of option `flag` (a positive integer) or None when not given."""
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{flag}: must be a positive integer, got '{text}'")
    return value


def parse_chips(text) -> int | None:
    """--prefill-chips N (a positive integer) or None."""
    return parse_positive(text, "--prefill-chips")


def prompt_from_options(text: str | None, prompt_len) -> int | list[int]:
    """Token ids from --prompt-tokens, else the --prompt-len (default 128)."""
    if text is None:
        if prompt_len is None:
            return 128
        try:
            value = int(prompt_len)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"--prompt-len: must be a positive integer, got '{prompt_len}'")
        return value
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--prompt-tokens: expected comma-separated integers, got "
                          f"'{text}'") from None


def prefill_from_options(config, prefill_hw="trn2", prompt_len=None, prompt_tokens=None,
                         seed=0, weights=None, dtype="bf16", timing_only=False, chips=None,
                         chunk=None, weight_dtype=None, stages=None):
    """`run_prefill` from the option values of `emu prefill` (`config` a model name, file
    or folder; `prefill_hw` a preset name, a JSON file or a PrefillConfig; `weights` a
    .safetensors path or None; `chips` the --prefill-chips text or None)."""
    from compiler.frontend import resolve_model
    from emulator.hw.prefill import PrefillConfig, load_prefill

    spec = resolve_model(config)
    hw = prefill_hw if isinstance(prefill_hw, PrefillConfig) else load_prefill(prefill_hw)
    tokens = prompt_from_options(prompt_tokens, prompt_len)
    values = None
    if weights and not timing_only:
        from compiler.weights import load_weights
        values = load_weights(weights, spec)
    return run_prefill(spec, hw, tokens, values, dtype=dtype, timing_only=timing_only,
                       seed=seed, chips=parse_chips(chips), chunk=chunk,
                       weight_dtype=weight_dtype,
                       stages=parse_positive(stages, "--prefill-stages") or 1)


def prefill_report(*, model: str, prefill_hw="trn2", prompt_len: int | str | None = None,
                   prompt_tokens: str | None = None, seed: int = 0, weights: str | None = None,
                   dtype: str = "bf16", prefill_chips: int | str | None = None,
                   timing_only: bool = False, prefill_chunk: int | str | None = None,
                   weight_dtype: str | None = None,
                   prefill_stages: int | str | None = None) -> dict:
    """The `emu prefill --json` object for the options of its command line (`emu sweep`'s
    `prefill` command; `model` is CONFIG; the defaults are the CLI's)."""
    result = prefill_from_options(model, prefill_hw, prompt_len, prompt_tokens, seed, weights,
                                  dtype, timing_only, prefill_chips, prefill_chunk,
                                  weight_dtype, prefill_stages)
    report = result.summary()
    report["model"] = str(model)
    if result.logits_last is not None:
        report["logits_last_argmax"] = int(result.logits_last.argmax())
    return report
