"""The orchestrator behind `emu run`: prefill -> KV transfer -> KV layout -> decode N tokens.

Functional mode carries real values through both machines (the prefill's KV cache is what
the mesh decodes from); timing-only mode computes no values and gives the same cycles.
Generation is greedy: token 0 is the argmax of the prefill's last-position logits, token i
the argmax of decode step i, so N new tokens take N - 1 decode steps.
Times are seconds unless a name says cycles.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.bound import critical_path_bound
from compiler.decode import compile_decode
from compiler.frontend import ModelSpec, resolve_model
from compiler.numerics import canonical_dtype, dtype_bytes, round_weight_format
from compiler.place import buffer_bytes, pe_class
from compiler.system import compile_system, handoff_seconds, link_seconds, wafers_needed
from compiler.weights import find_checkpoint, load_weights, random_weights
from emulator.hw.errors import ConfigError, FitError
from emulator.hw.link import LinkConfig, load_link
from emulator.hw.mesh import MeshConfig, load_sized_mesh
from emulator.hw.prefill import PrefillConfig, load_prefill
from emulator.inspect.phases import PHASES, layer_cycles, op_spans, phase_cycles
from emulator.limits import check_mapping_memory
from emulator.link.layout import kv_layout_cycles
from emulator.link.transfer import chunk_segments, stream_kv, transfer_kv
from emulator.mesh.batch import BatchDecoder, run_batch_timing
from emulator.mesh.runtime import MeshDecoder, run_timing
from emulator.mesh.system import SystemDecoder, SystemStep, run_system_timing
from emulator.prefill.run import (
    bytes_per_element,
    check_chunk,
    choose_chips,
    parse_chips,
    run_prefill,
)
from emulator.views.trace import TraceBuilder
from isa.program import RunResult

PREFILL_TRACE_SLICES = 20_000
AUTO_PREFILL = ("trn2", "trn3")   # `--prefill-hw auto`: the first whose HBM holds the model


@dataclass
class RunRequest:
    """Everything one `emu run` needs, already loaded and validated."""

    spec: ModelSpec
    model_name: str
    mesh: MeshConfig
    prefill_hw: PrefillConfig
    link: LinkConfig
    prompt: np.ndarray | None        # token ids (None: random prompt of prompt_len)
    prompt_len: int
    max_new_tokens: int
    dtype: str = "fp32"
    weights: dict | None = None      # None in timing-only mode
    timing_only: bool = False
    overlap_kv: bool = False
    engine: str = "numba"
    seed: int = 0
    prefill_chips: int | None = None      # None: the fewest chips whose HBM holds the model
    prefill_dtype: str | None = None      # None: dtype; fp8 (timing-only) for the prefill
    prefill_chunk: int | None = None      # chunked prefill: tokens per chunk (None: one pass)
    batch: int = 1                        # users decoded together on the wafer
    prompts: list | None = None           # batch > 1: each user's token ids (None: random)
    weight_dtype: str | None = None       # None: dtype; bf16 | fp8 | mxfp4 MLP/expert tiles


@dataclass
class RunOutcome:
    """The report dict, the logits [max_new_tokens, vocab] (functional) and the trace."""

    report: dict
    logits: np.ndarray | None
    trace: TraceBuilder = field(repr=False)
    compiled: object = field(default=None, repr=False)   # the decode compilation
    last_step: RunResult | None = field(default=None, repr=False)


def smallest_prefill_chip(spec, dtype: str, prompt_len: int) -> PrefillConfig:
    """The first bundled prefill preset of AUTO_PREFILL whose chips (up to the preset's
    instance) hold weights + KV + activations in HBM; FitError when none does."""
    error = None
    for name in AUTO_PREFILL:
        hw = load_prefill(name)
        try:
            choose_chips(spec, hw, prompt_len, dtype, None)
            return hw
        except FitError as exc:
            error = exc
    raise error


def check_request(req: RunRequest) -> None:
    """ConfigError for requests no stage can serve (before any work is done)."""
    spec = req.spec
    if req.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {req.max_new_tokens}")
    if req.prompt_len < 1:
        raise ConfigError("the prompt must have at least one token")
    total = req.prompt_len + req.max_new_tokens
    if total > spec.max_position_embeddings:
        raise ConfigError(f"prompt ({req.prompt_len}) + new tokens ({req.max_new_tokens}) = "
                          f"{total} positions exceed the model's max_position_embeddings "
                          f"({spec.max_position_embeddings})")
    for prompt in req.prompts or ([] if req.prompt is None else [req.prompt]):
        bad = prompt[(prompt < 0) | (prompt >= spec.vocab_size)]
        if bad.size:
            raise ConfigError(f"--prompt-tokens: token id {int(bad[0])} is outside the "
                              f"vocabulary [0, {spec.vocab_size})")


DEFAULT_MODEL = "tiny"


def parse_prompt(tokens: str | None, length: int | None) -> tuple[np.ndarray | None, int]:
    """(token ids or None, prompt length) from --prompt-tokens / --prompt-len."""
    if tokens is not None and length is not None:
        raise ConfigError("give either --prompt-tokens or --prompt-len, not both")
    if tokens is None:
        return None, 8 if length is None else length
    try:
        ids = np.array([int(t) for t in tokens.split(",") if t.strip()], np.int64)
    except ValueError:
        raise ConfigError(f"--prompt-tokens: expected comma-separated integers, "
                          f"got '{tokens}'") from None
    if ids.size == 0:
        raise ConfigError("--prompt-tokens: the prompt must have at least one token")
    return ids, int(ids.size)


def parse_user_prompts(tokens: str | None, length: int | None,
                       batch: int) -> tuple[list | None, int]:
    """(one token-id array per user or None, the longest prompt length) for `--batch B`:
    `--prompt-tokens` may give B prompts separated by ';' (users at different positions),
    or one prompt every user shares; `--prompt-len N` gives every user a random prompt."""
    if tokens is None or ";" not in tokens:
        ids, n = parse_prompt(tokens, length)
        return (None if ids is None else [ids] * batch), n
    if length is not None:
        raise ConfigError("give either --prompt-tokens or --prompt-len, not both")
    prompts = [parse_prompt(part, None)[0] for part in tokens.split(";")]
    if len(prompts) != batch:
        raise ConfigError(f"--prompt-tokens: {len(prompts)} prompts separated by ';' for "
                          f"--batch {batch}")
    return prompts, max(len(p) for p in prompts)


def build_request(config, hw, mesh_size, prefill_hw, link, weights, seed, prompt_tokens,
                  prompt_len, max_new_tokens, dtype, timing_only, overlap_kv, engine,
                  prefill_chips=None, prefill_dtype=None, prefill_chunk=None, batch=1,
                  weight_dtype=None):
    """Load and check every input of `emu run` (the CLI's option values); returns a
    RunRequest. `hw`, `prefill_hw` and `link` are preset names, JSON files or already
    loaded preset dataclasses (`emu sweep` passes them as data); `prefill_hw` may be
    'auto'."""
    spec = resolve_model(config or DEFAULT_MODEL)
    mesh = load_sized_mesh(hw, mesh_size)
    check_mapping_memory(mesh)
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"--batch must be a positive integer, got {batch}")
    if batch > 1 and mesh.wafers > 1:
        raise ConfigError(f"--batch {batch}: batched decode runs on one wafer; "
                          f"'{mesh.name}' has {mesh.wafers}")
    prompts, length = parse_user_prompts(prompt_tokens, prompt_len, batch)
    prompt = None if prompts is None else prompts[0]
    if timing_only and weights:
        raise ConfigError("--weights and --timing-only exclude each other")
    if weights and seed is not None:
        raise ConfigError("--weights and --seed exclude each other")
    values = None
    if not timing_only:
        source = weights or (folder_weights(config) if seed is None else None)
        values = (load_weights(source, spec) if source
                  else random_weights(spec, 0 if seed is None else seed))
        # the MLP / expert tensors as the mesh stores them (prefill reads the same values)
        values = round_weight_format(values, weight_dtype)
    name = Path(config or DEFAULT_MODEL).name.removesuffix(".json")
    dtype = canonical_dtype(dtype)
    if isinstance(prefill_hw, PrefillConfig):
        chip = prefill_hw
    else:
        chip = (smallest_prefill_chip(spec, dtype, length) if prefill_hw == "auto"
                else load_prefill(prefill_hw))
    return RunRequest(spec=spec, model_name=name, mesh=mesh, prefill_hw=chip,
                      link=link if isinstance(link, LinkConfig) else load_link(link),
                      prompt=prompt, prompt_len=length,
                      max_new_tokens=max_new_tokens, dtype=dtype,
                      weights=values, timing_only=timing_only, overlap_kv=overlap_kv,
                      engine=engine, seed=0 if seed is None else seed,
                      prefill_chips=parse_chips(prefill_chips), prefill_dtype=prefill_dtype,
                      prefill_chunk=check_chunk(prefill_chunk, length),
                      batch=batch, prompts=prompts if batch > 1 else None,
                      weight_dtype=weight_dtype)


def folder_weights(config: str | None) -> Path | None:
    """The checkpoint inside a HuggingFace-style model folder CONFIG (None otherwise)."""
    if config is None or not Path(config).is_dir():
        return None
    return find_checkpoint(config)


def run_report(*, model: str | None = None, hw: str | MeshConfig = "small",
               mesh: str | None = None, prefill_hw: str | PrefillConfig = "auto",
               link: str | LinkConfig = "efa", weights: str | None = None,
               seed: int | None = None, prompt_tokens: str | None = None,
               prompt_len: int | None = None, max_new_tokens: int = 8, dtype: str = "bf16",
               timing_only: bool = False, overlap_kv: bool = False,
               engine: str = "numba", prefill_chips: int | str | None = None,
               prefill_dtype: str | None = None,
               prefill_chunk: int | str | None = None, batch: int = 1,
               weight_dtype: str | None = None) -> dict:
    """The report dict of `emu run` for the options of its command line (long option
    names with `_`; `model` is CONFIG; the defaults are the CLI's). This is `emu sweep`'s
    `run` command; presets may be passed as data."""
    req = build_request(model, hw, mesh, prefill_hw, link, weights, seed, prompt_tokens,
                        prompt_len, max_new_tokens, dtype, timing_only, overlap_kv, engine,
                        prefill_chips, prefill_dtype, prefill_chunk, batch, weight_dtype)
    return run_inference(req).report


class DecodeStage:
    """Decode on the mesh, functional (MeshDecoder) or timing-only (program only).

    With `mesh.wafers > 1` the model is pipelined over the wafers and its LM head sliced
    over them (compiler.system); a step then returns a SystemStep (per-wafer RunResults
    of the layer programs and of the head slices, plus the link seconds).
    """

    def __init__(self, req: RunRequest):
        max_context = req.prompt_len + req.max_new_tokens
        self.req, self.system, self.decoder = req, None, None
        if req.mesh.wafers > 1:
            self._init_system(req, max_context)
        elif req.batch > 1:
            self.compiled = _compile_batched(req, max_context)
            if not req.timing_only:
                self.decoder = BatchDecoder(req.spec, req.weights, req.mesh, req.dtype,
                                            req.engine, req.batch, max_context)
                self.compiled = self.decoder.compiled
        elif req.timing_only:
            self.compiled = compile_decode(req.spec, req.mesh, req.dtype, max_context,
                                           weight_dtype=req.weight_dtype)
        else:
            self.decoder = MeshDecoder(req.spec, req.weights, req.mesh, req.dtype,
                                       req.engine, max_context, weight_dtype=req.weight_dtype)
            self.compiled = self.decoder.compiled

    def _init_system(self, req: RunRequest, max_context: int) -> None:
        if req.timing_only:
            self.system = compile_system(req.spec, req.mesh, req.dtype, max_context,
                                         weight_dtype=req.weight_dtype)
        else:
            self.decoder = SystemDecoder(req.spec, req.weights, req.mesh, req.dtype,
                                         req.engine, max_context,
                                         weight_dtype=req.weight_dtype)
            self.system = self.decoder.system
        self.compiled = self.system.parts[0].compiled

    def load_kv(self, kv_cache) -> None:
        if self.decoder is not None:
            self.decoder.load_kv(kv_cache)

    def step(self, token: int, pos: int):
        """(logits or None, RunResult | SystemStep) of the step at position `pos`."""
        if self.decoder is not None:
            return self.decoder.step(token, pos)
        if self.system is not None:
            return None, run_system_timing(self.system, pos, self.req.engine)
        return None, run_timing(self.compiled, self.req.mesh, pos, self.req.engine)


def _compile_batched(req: RunRequest, max_context: int):
    """The batched decode program (per-user max_context); a ValueError of the compiler
    (no spread layout on this mesh) becomes a ConfigError."""
    try:
        return compile_decode(req.spec, req.mesh, req.dtype, max_context, batch=req.batch)
    except ValueError as exc:
        raise ConfigError(f"--batch {req.batch}: {exc}") from None


def run_inference(req: RunRequest, progress=None) -> RunOutcome:
    """Run the whole request; `progress(done, total)` is called when decoding starts
    (done = 0) and after each decode step."""
    check_request(req)
    stage = DecodeStage(req)     # compiles first: a model or context that does not fit
    if req.batch > 1:
        return _run_batched(req, stage, progress)
    tokens_in = req.prompt if req.prompt is not None else req.prompt_len   # fails here
    prefill = run_prefill(req.spec, req.prefill_hw, tokens_in, req.weights,
                          req.prefill_dtype or req.dtype, req.timing_only, req.seed,
                          chips=req.prefill_chips, chunk=req.prefill_chunk,
                          weight_dtype=req.weight_dtype)
    kv = _transfer(req, prefill)
    stage.load_kv(prefill.kv_cache)
    layout_cycles = kv_layout_cycles(stage.compiled, req.mesh, req.prompt_len, req.dtype)
    rows, tokens, results = _decode(req, stage, prefill, progress)
    report = build_report(req, prefill, kv, layout_cycles, stage, tokens, results)
    logits = None if req.timing_only else np.stack(rows).astype(np.float32)
    trace = build_trace(req, prefill, kv, layout_cycles, results, _wafer_mark_names(stage))
    last = _wafer_results(results[-1])[-1] if results else None
    return RunOutcome(report, logits, trace, stage.compiled, last)


def _user_prompts(req: RunRequest) -> list:
    """Each user's prompt: the request's, or (functional) a random one of prompt_len
    from seed + user, or (timing-only) its length."""
    if req.prompts is not None:
        return list(req.prompts)
    if req.timing_only:
        return [req.prompt_len] * req.batch
    return [np.random.default_rng(req.seed + u).integers(0, req.spec.vocab_size,
                                                         req.prompt_len)
            for u in range(req.batch)]


def _run_batched(req: RunRequest, stage: DecodeStage, progress) -> RunOutcome:
    """B users decode together: each is prefilled alone (its own prompt), its KV cache is
    moved and written into its slot, then every decode step advances all users, each at
    its own position (compiler/batch_emit.py). The report's prefill / KV fields are user
    0's; `users` holds every user's prompt and tokens."""
    prompts = _user_prompts(req)
    prefills, kvs, firsts, done = [], [], [], {}
    for u, prompt in enumerate(prompts):
        key = _length(prompt) if req.timing_only else tuple(int(t) for t in prompt)
        if key not in done:       # equal prompts prefill alike (timing-only: equal lengths)
            done[key] = run_prefill(req.spec, req.prefill_hw, prompt, req.weights,
                                    req.prefill_dtype or req.dtype, req.timing_only,
                                    req.seed, chips=req.prefill_chips,
                                    chunk=req.prefill_chunk)
        prefill = done[key]
        prefills.append(prefill)
        kvs.append(_transfer(dataclasses.replace(req, prompt_len=_length(prompt)), prefill))
        if stage.decoder is not None:
            stage.decoder.load_user_kv(u, prefill.kv_cache)
            firsts.append(prefill.logits_last)
    lengths = [_length(p) for p in prompts]
    layout_cycles = kv_layout_cycles(stage.compiled, req.mesh, lengths[0], req.dtype)
    rows = [[row] for row in firsts]
    tokens = [[int(np.argmax(row))] for row in firsts]
    results, steps = [], req.max_new_tokens - 1
    if progress is not None and steps:
        progress(0, steps)
    for n in range(steps):
        if stage.decoder is not None:
            out, result = stage.decoder.step_users({u: tokens[u][-1] for u in range(req.batch)})
            for u in range(req.batch):
                rows[u].append(out[u])
                tokens[u].append(int(np.argmax(out[u])))
        else:
            result = run_batch_timing(stage.compiled, req.mesh,
                                      [length + n for length in lengths], req.engine)
        results.append(result)
        if progress is not None:
            progress(n + 1, steps)
    report = build_report(req, prefills[0], kvs[0], layout_cycles, stage,
                          tokens[0] if tokens else [], results)
    report["users"] = [{"prompt_tokens": _prompt_list(p), "prompt_len": lengths[u],
                        "tokens": tokens[u] if tokens else [],
                        "ttft_s": prefills[u].seconds + kvs[u].exposed_seconds}
                       for u, p in enumerate(prompts)]
    logits = None if req.timing_only else np.stack([np.stack(r) for r in rows]).astype(
        np.float32)
    trace = build_trace(req, prefills[0], kvs[0], layout_cycles, results,
                        _wafer_mark_names(stage))
    last = results[-1] if results else None
    return RunOutcome(report, logits, trace, stage.compiled, last)


def _length(prompt) -> int:
    """Tokens of a prompt given as ids or as its length."""
    return int(prompt) if isinstance(prompt, (int, np.integer)) else len(prompt)


def _prompt_list(prompt) -> list | None:
    """A prompt's ids as a list (None when only its length is known)."""
    return None if isinstance(prompt, (int, np.integer)) else [int(t) for t in prompt]


def _transfer(req: RunRequest, prefill):
    per_token = req.spec.kv_bytes_per_token(
        bytes_per_element("fp8") if req.prefill_dtype == "fp8" else dtype_bytes(req.dtype))
    if prefill.parts:       # chunked: each chunk's KV streams while the next one computes
        ends = prefill.layer_end_seconds() if req.overlap_kv else None
        return stream_kv(chunk_segments(prefill.chunk_rows, per_token, ends), per_token,
                         req.link)
    layer_ends = None
    if req.overlap_kv:
        ends = [row["end"] for row in prefill.per_layer if row["layer"] >= 0]
        layer_ends = [end / prefill.clock_hz for end in ends]
    return transfer_kv(per_token, req.prompt_len, req.link, layer_ends)


def _decode(req: RunRequest, stage: DecodeStage, prefill, progress):
    """Greedy decode: returns (logit rows, tokens, RunResults of the decode steps).

    Timing-only runs have no logits, so they feed token 0 (timing never depends on it) and
    return no rows and no tokens."""
    rows = [] if req.timing_only else [prefill.logits_last]
    tokens = [int(np.argmax(row)) for row in rows]
    results, steps = [], req.max_new_tokens - 1
    if progress is not None and steps:
        progress(0, steps)
    for n in range(steps):
        row, result = stage.step(tokens[-1] if tokens else 0, req.prompt_len + n)
        results.append(result)
        if row is not None:
            rows.append(row)
            tokens.append(int(np.argmax(row)))
        if progress is not None:
            progress(n + 1, steps)
    return rows, tokens, results


def _wafer_results(result) -> list[RunResult]:
    """The RunResults of one step's layer programs (one per wafer)."""
    return result.results if isinstance(result, SystemStep) else [result]


def _token_runs(result) -> list[RunResult]:
    """Every RunResult of one step: layer programs, then head slices (several wafers)."""
    return result.runs() if isinstance(result, SystemStep) else [result]


def _slowest_head(stage: DecodeStage, result) -> tuple:
    """(RunResult, mark names) of the step's slowest head slice, or None on one wafer."""
    if not isinstance(result, SystemStep) or not result.head_results:
        return None
    w = max(range(len(result.head_results)), key=lambda k: result.head_results[k].cycles)
    return (result.head_results[w],
            stage.system.heads[w].compiled.decode.program.mark_names)


def _mesh_stats(results: list, pes: int) -> dict:
    """Per-token cycles (the wafers' layers summed, plus the slowest head slice on
    several wafers, `SystemStep.cycles`) and utilisation over the decode steps."""
    if not results:
        return {"cycles": [], "cycles_per_token": 0, "pe_utilization": None,
                "link_utilization": None}
    cycles = [r.cycles for r in results]
    runs = [run for r in results for run in _token_runs(r)]
    span = sum(cycles)
    busy = sum(int(run.pe_busy.sum()) for run in runs)
    links = sum(int(run.link_busy.sum()) for run in runs)
    return {"cycles": cycles, "cycles_per_token": span / len(cycles),
            "pe_utilization": busy / (pes * span) if span else None,
            "link_utilization": links / (4 * pes * span) if span else None,
            "instructions_per_token": sum(run.instructions for run in runs) / len(results),
            "messages_per_token": sum(run.messages for run in runs) / len(results)}


def _wafer_mark_names(stage: DecodeStage) -> list[list[str]]:
    """The probe names of each wafer's decode program."""
    if stage.system is None:
        return [stage.compiled.decode.program.mark_names]
    return [part.compiled.decode.program.mark_names for part in stage.system.parts]


def _decode_layer_cycles(stage: DecodeStage, results: list) -> list[int]:
    """Per-layer cycles of the last decode step, over all wafers in layer order."""
    if not results:
        return []
    names = _wafer_mark_names(stage)
    runs = _wafer_results(results[-1])
    return [c for run, marks in zip(runs, names, strict=True) for c in layer_cycles(run, marks)]


def _system_stats(req, stage: DecodeStage, results: list) -> dict:
    """Multi-wafer fields of the decode report (one wafer: wafers 1, no hand-offs)."""
    mesh, max_context = req.mesh, req.prompt_len + req.max_new_tokens
    out = {"wafers": mesh.wafers,
           "wafers_needed": wafers_needed(req.spec, mesh, req.dtype, max_context,
                                          req.weight_dtype),
           "handoff_seconds": 0.0, "handoff_seconds_per_hop": 0.0,
           "wafer_link_bytes_per_s": mesh.wafer_link_bytes_per_s}
    if stage.system is None:
        out["wafer_layers"] = [[0, req.spec.num_layers]]
        out["wafer_cycles"] = [sum(r.cycles for r in results) / len(results)] if results else []
        return out
    out["wafer_layers"] = [[p.start, p.stop] for p in stage.system.parts]
    out["handoff_seconds_per_hop"] = handoff_seconds(req.spec, mesh, req.dtype)
    out["handoff_seconds"] = link_seconds(req.spec, mesh, req.dtype, stage.system.sliced)
    if results:
        per = np.array([[run.cycles for run in r.results] for r in results], np.float64)
        out["wafer_cycles"] = per.mean(axis=0).tolist()
    else:
        out["wafer_cycles"] = []
    return out


def _sram_stats(stage: DecodeStage, mesh: MeshConfig) -> dict:
    """Bytes of SRAM per kind reserved over the PEs of every wafer (per-class maps of the
    layer programs and of the head slices)."""
    parts = [p.compiled for p in stage.system.parts] if stage.system else [stage.compiled]
    heads = [h.compiled for h in stage.system.heads] if stage.system else []
    per_kind = {"weights": 0, "kv": 0, "scratch": 0}
    for compiled in parts + heads:
        for kind, nbytes in _reserved_bytes(compiled).items():
            per_kind[kind] += nbytes
    total = mesh.sram_bytes * mesh.num_pes * len(parts)
    out = {f"{k}_bytes": v for k, v in per_kind.items()}
    out["total_bytes"] = total
    out["free_bytes"] = total - sum(per_kind.values())
    return out


def _reserved_bytes(compiled) -> dict:
    """Bytes per kind reserved on one wafer: each class's buffers times its PEs."""
    placement, plan = compiled.placement, compiled.plan
    count = _class_counts(plan)
    out = {"weights": 0, "kv": 0, "scratch": 0}
    for key, buffers in placement.maps.items():
        for name, buffer in buffers.items():
            if name == "G":
                continue        # overlaid on TMP
            kind = {"weight": "weights"}.get(buffer.kind, buffer.kind)
            size = buffer_bytes({name: buffer}, placement.dtype, placement.weight_dtype)
            out[kind] += size * count.get(key, 0)
    return out


def _class_counts(plan) -> dict:
    """class key -> number of PEs of that class."""
    counts = {}
    for j in range(plan.ph):
        left = pe_class(plan, 0, j)
        counts[left] = counts.get(left, 0) + 1
        if plan.pw > 1:
            other = pe_class(plan, 1, j)
            counts[other] = counts.get(other, 0) + plan.pw - 1
    return counts


def _compiled_parts(stage: DecodeStage) -> list:
    """(compiled program, one-wafer mesh) of every wafer, in wafer order."""
    one = stage.req.mesh.one_wafer()
    if stage.system is None:
        return [(stage.compiled, one)]
    return [(p.compiled, one) for p in stage.system.parts]


def _decode_bound(stage: DecodeStage, pos: int) -> dict:
    """The critical-path bound (compiler/bound.py) of one token at `pos`, summed over the
    wafers' layer programs, plus the largest of the head slices' (they run side by side):
    {stage: cycles, "total": cycles}."""
    out: dict = {}
    heads = [critical_path_bound(h.compiled, _one_wafer(stage), 0)
             for h in (stage.system.distinct_heads().values() if stage.system else ())]
    slowest = [max(heads, key=lambda b: b["total"])] if heads else []
    for bound in [critical_path_bound(c, m, pos) for c, m in _compiled_parts(stage)] + slowest:
        for name, cycles in bound.items():
            out[name] = out.get(name, 0) + cycles
    return out


def _one_wafer(stage: DecodeStage) -> MeshConfig:
    """One wafer of the stage's mesh."""
    return stage.req.mesh.one_wafer()


def _decode_phases(stage: DecodeStage, results: list) -> dict:
    """Cycles of the last decode step by phase (emulator/inspect/phases.py), summed over
    the wafers."""
    out = dict.fromkeys(PHASES, 0)
    if not results:
        return out
    names = _wafer_mark_names(stage)
    runs = list(zip(_wafer_results(results[-1]), names, strict=True))
    head = _slowest_head(stage, results[-1])
    for run, marks in runs + ([head] if head else []):
        for name, cycles in phase_cycles(run, marks).items():
            out[name] += cycles
    return out


def _max_context(stage: DecodeStage) -> int:
    """Tokens of KV cache per user the placement holds (the smallest over the wafers)."""
    return min(compiled.placement.capacity for compiled, _ in _compiled_parts(stage))


def build_report(req, prefill, kv, layout_cycles, stage, tokens, results) -> dict:
    """The JSON report (schema in docs/report.md)."""
    spec, mesh = req.spec, req.mesh
    plan = stage.compiled.plan
    pes = plan.pw * plan.ph * mesh.wafers
    stats = _mesh_stats(results, pes)
    system = _system_stats(req, stage, results)
    tpot = stats["cycles_per_token"] / mesh.clock_hz + system["handoff_seconds"]
    layout_s = layout_cycles / mesh.clock_hz
    ttft = prefill.seconds + kv.exposed_seconds + layout_s
    last_pos = req.prompt_len + req.max_new_tokens - 1
    bound = _decode_bound(stage, max(req.prompt_len, last_pos - 1))
    decode = {"steps": len(results), **stats, "seconds_per_token": tpot,
              "clock_hz": mesh.clock_hz, "pes_used": pes, "mesh": [plan.pw, plan.ph],
              "max_context": _max_context(stage),
              "phases": _decode_phases(stage, results),
              "bound_cycles_per_token": bound["total"],
              "bound_seconds_per_token": bound["total"] / mesh.clock_hz
              + system["handoff_seconds"],
              "bound_cycles_by_stage": {k: v for k, v in bound.items() if k != "total"},
              "sram": _sram_stats(stage, mesh), **system,
              "per_layer_cycles": _decode_layer_cycles(stage, results)}
    return {
        "schema": "emu.report/1",
        "model": {"name": req.model_name, "architecture": spec.architecture,
                  "params": spec.param_count(), "layers": spec.num_layers,
                  "hidden_size": spec.hidden_size, "vocab_size": spec.vocab_size},
        "hardware": {"decode": mesh.name, "prefill": req.prefill_hw.name,
                     "link": req.link.name},
        "mode": "timing-only" if req.timing_only else "functional",
        "dtype": req.dtype, "weight_dtype": req.weight_dtype or req.dtype,
        "engine": req.engine,
        "prompt_len": req.prompt_len,
        "prompt_tokens": None if req.prompt is None else [int(t) for t in req.prompt],
        "tokens": tokens,
        "prefill": {"cycles": prefill.cycles, "seconds": prefill.seconds,
                    "chips": prefill.chips, "dtype": prefill.dtype,
                    "clock_hz": prefill.clock_hz, "roofline_seconds": prefill.roofline_seconds,
                    "flops": prefill.flops, "bytes_moved": prefill.bytes_moved,
                    "engine_utilization": prefill.engine_utilization,
                    "chunk": prefill.chunk, "chunks": prefill.chunk_rows,
                    "per_layer_cycles": [row["cycles"] for row in prefill.per_layer
                                         if row["layer"] >= 0]},
        "kv_transfer": {"bytes": kv.bytes, "bytes_per_token": kv.bytes_per_token,
                        "seconds": kv.seconds, "exposed_seconds": kv.exposed_seconds,
                        "overlapped": kv.overlapped, "link": req.link.name,
                        "bound_seconds": kv.bytes / req.link.total_bandwidth,
                        "layout_cycles": layout_cycles, "layout_seconds": layout_s},
        "decode": decode,
        "ttft_s": ttft, "tpot_s": tpot,
        "tokens_per_s": 1.0 / tpot if tpot else 0.0,
        "batch": req.batch,
        "users": [{"prompt_tokens": None if req.prompt is None
                   else [int(t) for t in req.prompt],
                   "prompt_len": req.prompt_len, "tokens": tokens, "ttft_s": ttft}],
        "aggregate_tokens_per_s": req.batch / tpot if tpot else 0.0,
    }


def build_trace(req, prefill, kv, layout_cycles, results, mark_names) -> TraceBuilder:
    """Perfetto trace: prefill engines, the link, and the wafers' decode steps and ops."""
    trace = TraceBuilder()
    chip = f"prefill chip ({req.prefill_hw.name})"
    for s in prefill.trace_slices(limit=PREFILL_TRACE_SLICES):
        trace.add_slice(chip, s["engine"], s["name"], s["start"], s["duration"], s["args"])
    link = f"link ({req.link.name})"
    kv_start = prefill.seconds + kv.exposed_seconds - kv.seconds
    trace.add_slice(link, "KV cache", "KV transfer", kv_start, kv.seconds,
                    {"bytes": kv.bytes, "bytes_per_token": kv.bytes_per_token})
    wafer = f"wafers ({req.mesh.name})"
    clock = req.mesh.clock_hz
    t = prefill.seconds + kv.exposed_seconds
    trace.add_slice(wafer, "KV layout", "KV layout", t, layout_cycles / clock,
                    {"cycles": layout_cycles})
    t += layout_cycles / clock
    for step, result in enumerate(results):
        for w, run in enumerate(_wafer_results(result)):
            thread = "decode" if req.mesh.wafers == 1 else f"wafer {w}"
            trace.add_slice(wafer, thread, f"decode step {step + 1}", t, run.cycles / clock,
                            {"cycles": run.cycles, "instructions": run.instructions,
                             "messages": run.messages})
            for name, start, end in op_spans(run, mark_names[w]):
                trace.add_slice(wafer, f"{thread} ops", name, t + start / clock,
                                (end - start) / clock, {"cycles": end - start, "step": step + 1})
            t += run.cycles / clock
        if isinstance(result, SystemStep):
            for w, run in enumerate(result.head_results):   # side by side
                trace.add_slice(wafer, f"wafer {w} LM head slice", f"decode step {step + 1}",
                                t, run.cycles / clock, {"cycles": run.cycles,
                                                        "instructions": run.instructions})
            t += result.head_cycles / clock + result.handoff_s
    return trace


def parse_batches(text: str) -> list[int]:
    """`--batch-sweep 1,2,4,...`: distinct positive batch sizes in the given order."""
    try:
        batches = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sweep: expected comma-separated integers, got '{text}'"
                          ) from None
    if not batches or min(batches) < 1 or len(set(batches)) != len(batches):
        raise ConfigError(f"--batch-sweep: expected distinct positive batch sizes, got '{text}'")
    return batches


def batch_sweep(req: RunRequest, batches: list[int], progress=None) -> tuple:
    """Run the request at every batch size (every user with the request's prompt, or a
    random one of its length): (RunOutcome of the largest batch that fits, one point per
    batch: `batch`, `status` ("ok" or the one-line error), `tokens_per_s` (per user),
    `aggregate_tokens_per_s`, `tpot_s`, `cycles_per_token`, `max_context` (per user),
    `phases`). A batch that does not fit is a point with its FitError; ConfigError when
    none fits."""
    points, best = [], None
    for batch in batches:
        prompts = None if req.prompt is None or batch == 1 else [req.prompt] * batch
        one = dataclasses.replace(req, batch=batch, prompts=prompts)
        try:
            outcome = run_inference(one, progress)
        except (FitError, ConfigError) as exc:
            points.append({"batch": batch, "status": str(exc)})
            continue
        report = outcome.report
        points.append({"batch": batch, "status": "ok", "tokens_per_s": report["tokens_per_s"],
                       "aggregate_tokens_per_s": report["aggregate_tokens_per_s"],
                       "tpot_s": report["tpot_s"],
                       "cycles_per_token": report["decode"]["cycles_per_token"],
                       "max_context": report["decode"]["max_context"],
                       "phases": report["decode"]["phases"]})
        if best is None or batch > best.report["batch"]:
            best = outcome
    if best is None:
        raise ConfigError(f"--batch-sweep: no batch fits: {points[0]['status']}")
    best.report["batch_sweep"] = points
    return best, points
