"""`run_prefill`: lower, time and (optionally) execute a prefill; the result and its reports.

Cycles are TensorE cycles of the prefill preset; seconds = cycles / tensor_clock_hz.
The roofline bound of the whole prefill is max(model FLOPs / published peak FLOP/s,
minimum HBM bytes / HBM bandwidth); each operator's bound is computed the same way from its
own FLOPs and bytes.
"""

from dataclasses import dataclass, field

import numpy as np

from compiler.numerics import canonical_dtype
from compiler.reference import KVCache
from emulator.hw.errors import ConfigError, FitError
from emulator.prefill import engine_model, interp
from emulator.prefill import instructions as instr
from emulator.prefill.model import Lowered, lower_prefill

DTYPES = ("bf16", "fp16", "fp32")


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
    cores: int
    program: instr.InstructionStream = field(repr=False)
    schedule: engine_model.Schedule = field(repr=False)

    @property
    def engine_utilization(self) -> dict:
        """Busy fraction of each engine kind over the chip's cores and the whole prefill."""
        span = max(1, self.cycles)
        return {name: busy / (span * (1 if name == "collective" else self.cores))
                for name, busy in self.engine_busy.items()}

    def summary(self) -> dict:
        """JSON-ready report (no per-instruction data)."""
        return {"prefill_hw": self.hw_name, "prompt_len": self.prompt_len, "dtype": self.dtype,
                "cycles": self.cycles, "seconds": self.seconds,
                "roofline_seconds": self.roofline_seconds, "flops": self.flops,
                "achieved_flops_per_s": self.flops / self.seconds if self.seconds else 0.0,
                "engine_busy_cycles": self.engine_busy,
                "engine_utilization": self.engine_utilization,
                "bytes_moved": self.bytes_moved, "instructions": len(self.program),
                "per_layer": self.per_layer, "per_op": self.per_op}

    def trace_slices(self, limit: int | None = None) -> list[dict]:
        """Perfetto-style slices: name, engine, start and duration (seconds), args.

        One slice per instruction of the simulated cores (cores with identical work are
        represented once in timing-only mode); `limit` keeps the first slices only.
        LoadStationary runs in the background of MultiplyMoving, so it gets its own track
        (`coreN.tensor.load`) and slices never overlap on a track.
        """
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
                timing_only: bool = False, seed: int = 0) -> PrefillResult:
    """Prefill `tokens` (token ids, or an int prompt length) of model `spec` on chip `hw`.

    Functional mode (default) computes the logits of the last position and the KV cache
    with `weights` (HF names, float32; random from `seed` when None); timing-only mode
    skips all values. Both give the same cycles.
    """
    spec.require_mapped("prefill")
    dtype = _check_dtype(dtype)
    token_ids, P = _prompt(spec, tokens, seed, timing_only)
    check_capacity(spec, hw, P, dtype)
    lowered = lower_prefill(spec, hw, P, dtype, timing_only)
    sched = engine_model.simulate(lowered.program)
    logits = kv = None
    if not timing_only:
        if weights is None:
            from compiler.weights import random_weights
            weights = random_weights(spec, seed)
        machine = interp.execute(lowered.program, bind_inputs(lowered, spec, weights,
                                                              token_ids))
        logits, kv = _outputs(lowered, spec, machine)
    return _result(lowered, spec, hw, sched, logits, kv)


def _check_dtype(dtype: str) -> str:
    try:
        kind = canonical_dtype(dtype)
    except ValueError as exc:
        raise ConfigError(f"prefill: {exc}") from None
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


def check_capacity(spec, hw, P: int, dtype: str) -> None:
    """FitError when weights + KV cache + activations exceed the chip's HBM."""
    bpe = 4 if dtype == "fp32" else 2
    weights = spec.param_count() * bpe
    kv = spec.kv_bytes_per_token(bpe) * P
    acts = 8 * spec.hidden_size * P * 4 * hw.cores_per_chip
    need = weights + kv + acts
    if need > hw.hbm_bytes:
        raise FitError(f"prefill: model needs {need} bytes of HBM (weights {weights}, KV cache "
                       f"{kv}, activations {acts}), preset '{hw.name}' has {hw.hbm_bytes}")


def rope_tables(spec, P: int):
    """(cos, signed sin) float32 [head_dim, P]; sin's first half negated (rotate_half)."""
    angles = np.outer(np.arange(P, dtype=np.float64), spec.rope_inv_freq())
    angles = np.concatenate([angles, angles], axis=-1)
    cos = np.cos(angles).astype(np.float32).T
    sin = np.sin(angles).astype(np.float32).T
    sin[: spec.head_dim // 2] *= -1
    return cos, sin


def bind_inputs(lowered: Lowered, spec, weights: dict, tokens) -> dict:
    """Initial HBM contents by tensor name: weights (transposed), tokens, RoPE tables."""
    P = lowered.prompt_len
    cos, sin = rope_tables(spec, P)
    lm = weights["model.embed_tokens.weight"] if spec.tie_word_embeddings \
        else weights["lm_head.weight"]
    inputs = {"embed": weights["model.embed_tokens.weight"],
              "tokens": np.asarray(tokens, np.float32)[None, :],
              "rope.cos": cos, "rope.sin": sin,
              "final_norm": weights["model.norm.weight"][:, None], "lm_head.T": lm.T}
    pmax = lowered.program.tensors[lowered.tensors["L0.v.bias_rows"]].rows \
        if "L0.v.bias_rows" in lowered.tensors else 0
    for layer in range(spec.num_layers):
        inputs.update(_layer_inputs(spec, weights, layer, pmax))
    return inputs


def _layer_inputs(spec, weights: dict, layer: int, pmax: int) -> dict:
    """Inputs of one layer: W^T per projection, bias columns, norm weights."""
    p, out = f"model.layers.{layer}.", {}
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
             "down": "mlp.down_proj"}
    for short, hf in names.items():
        out[f"L{layer}.{short}.T"] = weights[f"{p}{hf}.weight"].T
        bias = weights.get(f"{p}{hf}.bias")
        if bias is not None:
            out[f"L{layer}.{short}.bias"] = bias[:, None]
            if short == "v":
                out[f"L{layer}.v.bias_rows"] = np.tile(bias[None, :], (pmax, 1))
    out[f"L{layer}.ln1"] = weights[f"{p}input_layernorm.weight"][:, None]
    out[f"L{layer}.ln2"] = weights[f"{p}post_attention_layernorm.weight"][:, None]
    return out


def _outputs(lowered: Lowered, spec, machine) -> tuple[np.ndarray, KVCache]:
    """Logits of the last position and the KV cache read back from HBM."""
    t = lowered.tensors
    logits = machine.data[t["logits"]][:, 0].astype(np.float32)
    d, P = spec.head_dim, lowered.prompt_len
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
    cycles = sched.cycles
    busy = _engine_busy(program, sched)
    is_dma = code["engine"] == instr.DMA
    is_cc = code["engine"] == instr.CC
    moved = {"hbm_dma": float((code["work"] * weight)[is_dma].sum()),
             "collective": float(code["work"][is_cc].sum())}
    per_op = _per_op(program, sched, weight, hw, lowered.dtype)
    per_layer = _per_layer(per_op)
    flops = sum(op.flops for op in program.ops)
    hbm = sum(op.hbm_bytes for op in program.ops)
    roof = max(flops / hw.peak_flops(lowered.dtype), hbm / hw.hbm_bytes_per_s)
    return PrefillResult(cycles, cycles / hw.tensor_clock_hz, logits, kv, per_layer, per_op,
                         busy, moved, roof, flops, lowered.prompt_len, lowered.dtype, hw.name,
                         hw.tensor_clock_hz, hw.cores_per_chip, program, sched)


def _engine_busy(program: instr.InstructionStream, sched) -> dict:
    """Busy cycles per engine kind, summed over all the chip's cores."""
    busy = dict.fromkeys(instr.ENGINE_NAMES, 0)
    for slot, core in enumerate(program.cores):
        for e in range(instr.ENGINES_PER_CORE):
            q = slot * instr.ENGINES_PER_CORE + e
            busy[instr.ENGINE_NAMES[e]] += int(sched.busy[q]) * program.core_weight[core]
    busy["collective"] = int(sched.busy[-1])
    return busy


def _per_op(program, sched, weight, hw, dtype) -> list[dict]:
    """One row per operator: cycles, span, busy cycles per engine, bytes, FLOPs, roofline.

    `cycles` are the cycles the operator adds to the completion time of the operators
    before it (so they sum to the prefill's cycles); `span` runs from its first
    instruction's start (weight prefetch may start early) to its last result.
    """
    code = program.instr
    op_id = code["op_id"].astype(np.int64)
    nops = len(program.ops)
    start = np.full(nops, np.iinfo(np.int64).max)
    end = np.zeros(nops, np.int64)
    present, first = np.unique(op_id, return_index=True)   # op ids are non-decreasing
    keep = present >= 0
    start[present[keep]] = np.minimum.reduceat(sched.start, first)[keep]
    end[present[keep]] = np.maximum.reduceat(sched.ready, first)[keep]
    key = op_id * len(instr.ENGINE_NAMES) + code["engine"]
    busy = np.bincount(key, weights=code["cost"] * weight,
                       minlength=nops * len(instr.ENGINE_NAMES)).reshape(nops, -1)
    dma = np.bincount(op_id, weights=np.where(code["engine"] == instr.DMA,
                                              code["work"] * weight, 0), minlength=nops)
    rows = []
    done = 0
    for i, op in enumerate(program.ops):
        roof = max(op.flops / hw.peak_flops(dtype), op.hbm_bytes / hw.hbm_bytes_per_s)
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


# Functional mode holds every weight as float32 on the host; beyond this many parameters
# (4 GiB) `emu prefill` asks for --timing-only instead of exhausting host memory.
FUNCTIONAL_MAX_PARAMS = 2**30


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
                         seed=0, weights=None, dtype="bf16", timing_only=False):
    """`run_prefill` from the option values of `emu prefill` (`config` a model name, file
    or folder; `prefill_hw` a preset name, a JSON file or a PrefillConfig; `weights` a
    .safetensors path or None)."""
    from compiler.frontend import resolve_model
    from emulator.hw.prefill import PrefillConfig, load_prefill

    spec = resolve_model(config)
    hw = prefill_hw if isinstance(prefill_hw, PrefillConfig) else load_prefill(prefill_hw)
    tokens = prompt_from_options(prompt_tokens, prompt_len)
    if not timing_only and spec.param_count() > FUNCTIONAL_MAX_PARAMS:
        raise ConfigError(f"{config}: {spec.param_count():,} parameters are too many for a "
                          f"functional run on the host; add --timing-only")
    values = None
    if weights and not timing_only:
        from compiler.weights import load_weights
        values = load_weights(weights, spec)
    return run_prefill(spec, hw, tokens, values, dtype=dtype, timing_only=timing_only,
                       seed=seed)


def prefill_report(*, model: str, prefill_hw="trn2", prompt_len: int | str | None = None,
                   prompt_tokens: str | None = None, seed: int = 0, weights: str | None = None,
                   dtype: str = "bf16", timing_only: bool = False) -> dict:
    """The `emu prefill --json` object for the options of its command line (`emu sweep`'s
    `prefill` command; `model` is CONFIG; the defaults are the CLI's)."""
    result = prefill_from_options(model, prefill_hw, prompt_len, prompt_tokens, seed, weights,
                                  dtype, timing_only)
    report = result.summary()
    report["model"] = str(model)
    if result.logits_last is not None:
        report["logits_last_argmax"] = int(result.logits_last.argmax())
    return report
