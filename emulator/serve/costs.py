"""The cost model of `emu serve`: how long each piece of work takes (kept apart from the
scheduler, as in Vidur: the simulator asks, the cost model answers).

Every cost is in seconds; token counts are tokens; bytes are bytes.

A cost model answers:
- `prefill_seconds(tokens)`: one prefill batch holding `tokens` prompt tokens in total (a
  batch of prompts is costed as one prompt of their summed length: the linear layers see
  the same token count; attention across prompt boundaries is counted as if it were one
  sequence, an over-estimate bounded by the attention share of the prefill);
- `decode_steps(contexts)`: seconds of decode steps for a batch, `contexts` a [k, B]
  array (step s, user b: the user's KV length at that step), returning [k];
- `layout_seconds(prompt_tokens)`: laying a transferred KV cache out in the decode SRAM;
- `kv_bytes(prompt_tokens)`: bytes that cross the link;
- limits: `max_prompt_tokens` (the prefill instance's HBM), `max_context` (positions one
  user may reach on a decode instance), `kv_capacity_tokens` (KV positions a decode
  instance holds over all its users), `max_batch` (users decoding together).

Three implementations:
- `FunctionCosts`: costs from Python callables (exact, deterministic; what queueing tests
  inject);
- `TableCosts`: costs measured by the emulators at sample points, interpolated linearly
  (`measure_costs` builds one, caching every measurement on disk, content-addressed by
  the model, the presets, the dtype, the shape and the emu version);
- `trainium_decode_costs`: the non-disaggregated baseline, decode on the prefill chips
  costed memory-bound (`docs/serving.md`, "Baseline").

Batched decode on the wafer: on one wafer with the spread layout, `--max-batch B > 1`
measures emulated batched steps (`measure_batch_decode`: the program compiled for B user
slots, steps of 1, 2, 4, ..., B users at sampled contexts, interpolated by
`batch_table_steps`), the KV pool is B x the per-user context that fits at that batch.
Elsewhere (multi-wafer systems, which do not batch) the BATCH HOOK `wafer_batch_step`
stands in: a step of B users costs

    max( max_b single(ctx_b),  sum_b busy(ctx_b) )

where single(ctx) is the emulated step of one user and busy(ctx) the busiest PE's
executing cycles in it (on the bottleneck wafer of a multi-wafer system) over the clock:
a batch is never faster than one user's step (latency bound: hops, reductions, the
wafer pipeline) and never faster than the busiest PE doing every user's work in turn
(throughput bound). B = 1 gives exactly the emulated step.
"""

import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emulator.hw.errors import ConfigError, FitError

COST_SCHEMA = "emu.serve.costs/1"


def wafer_batch_step(single: np.ndarray, busy: np.ndarray) -> np.ndarray:
    """BATCH HOOK: seconds of decode steps of a batch from per-user single-user step
    seconds and busiest-PE seconds, both [k, B]: max(max_b single, sum_b busy) -> [k].
    Replace with measured batched steps when the mesh mapping decodes several users."""
    return np.maximum(single.max(axis=1), busy.sum(axis=1))


def batch_table_steps(table: np.ndarray, contexts: np.ndarray) -> np.ndarray:
    """Seconds of decode steps [k] of batches with KV lengths `contexts` [k, B] from
    emulated batched steps `table` [[batch, context, seconds]] (`measure_batch_decode`):
    linear in the context (the users' mean: attention is per user and linear in its
    context, the GEMMs do not depend on it) at the sampled batches around B, then linear
    in the batch between them. Exact at the sampled (batch, context) points."""
    batch = contexts.shape[1]
    mean = contexts.mean(axis=1)
    sizes = np.unique(table[:, 0])
    at = []
    for b in sizes:
        rows = table[table[:, 0] == b]
        at.append(np.interp(mean, rows[:, 1], rows[:, 2]))
    at = np.array(at)                                   # [batches, k]
    if len(sizes) == 1:
        return at[0]
    i = int(np.clip(np.searchsorted(sizes, batch) - 1, 0, len(sizes) - 2))
    lo, hi = sizes[i], sizes[i + 1]
    frac = (batch - lo) / (hi - lo)
    return at[i] + frac * (at[i + 1] - at[i])


# ------------------------------------------------------------------------------ interfaces


@dataclass
class Costs:
    """Base class: limits, KV bytes and the derived `decode_run`; subclasses give the costs."""

    name: str
    kv_bytes_per_token: int
    max_prompt_tokens: int
    max_context: int
    kv_capacity_tokens: int
    max_batch: int
    info: dict = field(default_factory=dict)   # provenance and interpolation errors

    def prefill_seconds(self, tokens: int) -> float:
        raise NotImplementedError

    def decode_steps(self, contexts: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def layout_seconds(self, prompt_tokens: int) -> float:
        return 0.0

    def prefill_chunk_seconds(self, tokens: int, past: int) -> float:
        """Seconds of a chunk of `tokens` prompt tokens after `past` prefilled ones: the
        increment prefill_seconds(past + tokens) - prefill_seconds(past). With a cost
        table measured by chunked prefills of the same chunk size (`measure_costs(...,
        prefill_chunk)`) this is the emulated chunk's cost at chunk boundaries: a chunked
        prefill of past + tokens runs the chunks of one of `past` and then this one."""
        if past <= 0:
            return self.prefill_seconds(tokens)
        return self.prefill_seconds(past + tokens) - self.prefill_seconds(past)

    def kv_bytes(self, prompt_tokens: int) -> int:
        """Bytes of KV cache one prompt sends over the link."""
        return int(prompt_tokens) * self.kv_bytes_per_token

    def decode_run(self, contexts: np.ndarray, steps: int) -> np.ndarray:
        """Cumulative end times (seconds from now) of the next `steps` steps of a fixed batch
        whose users have KV lengths `contexts` [B] now (each step adds one position)."""
        grid = contexts[None, :] + np.arange(steps, dtype=np.int64)[:, None]
        return np.cumsum(self.decode_steps(grid))

    def decode_step_seconds(self, contexts) -> float:
        """Seconds of one decode step of a batch with KV lengths `contexts`."""
        return float(self.decode_steps(np.asarray(contexts, np.int64).reshape(1, -1))[0])

    def check(self) -> None:
        for name in ("max_prompt_tokens", "max_context", "kv_capacity_tokens", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"costs '{self.name}': {name} must be >= 1, "
                                  f"got {getattr(self, name)}")


@dataclass
class FunctionCosts(Costs):
    """Costs from callables: `prefill(tokens) -> s`, `decode(contexts [k, B]) -> s [k]`,
    `layout(prompt_tokens) -> s` (exact; for tests and what-if studies)."""

    prefill: object = None
    decode: object = None
    layout: object = None

    def prefill_seconds(self, tokens: int) -> float:
        return float(self.prefill(tokens))

    def decode_steps(self, contexts: np.ndarray) -> np.ndarray:
        return np.asarray(self.decode(contexts), np.float64).reshape(contexts.shape[0])

    def layout_seconds(self, prompt_tokens: int) -> float:
        return 0.0 if self.layout is None else float(self.layout(prompt_tokens))


def constant_costs(prefill_s: float, step_s: float, *, kv_bytes_per_token: int = 1,
                   max_prompt_tokens: int = 1 << 20, max_context: int = 1 << 30,
                   kv_capacity_tokens: int = 1 << 40, max_batch: int = 1 << 20,
                   layout_s: float = 0.0) -> FunctionCosts:
    """Deterministic service times: every prefill batch `prefill_s`, every decode step
    `step_s` whatever the batch (an ideal batching machine)."""
    return FunctionCosts("constant", kv_bytes_per_token, max_prompt_tokens, max_context,
                         kv_capacity_tokens, max_batch,
                         info={"kind": "constant", "prefill_s": prefill_s, "step_s": step_s},
                         prefill=lambda tokens: prefill_s,
                         decode=lambda ctx: np.full(ctx.shape[0], step_s),
                         layout=lambda p: layout_s)


@dataclass
class TableCosts(Costs):
    """Costs interpolated (piecewise linear) between measured sample points.

    `prefill_table`: [[tokens, seconds], ...]; `decode_table`: [[context, single_s,
    busy_s], ...]; layout seconds = layout_fixed_s + layout_per_token_s x prompt tokens
    (exact: the layout is a closed form, emulator/kv_layout.py).
    """

    prefill_table: np.ndarray = None
    decode_table: np.ndarray = None
    layout_fixed_s: float = 0.0
    layout_per_token_s: float = 0.0
    batch_table: np.ndarray = None   # [[batch, context, seconds]]: emulated batched steps

    def prefill_seconds(self, tokens: int) -> float:
        t = self.prefill_table
        return float(np.interp(tokens, t[:, 0], t[:, 1]))

    def decode_steps(self, contexts: np.ndarray) -> np.ndarray:
        if self.batch_table is not None:
            return batch_table_steps(self.batch_table, contexts)
        t = self.decode_table
        single = np.interp(contexts, t[:, 0], t[:, 1])
        busy = np.interp(contexts, t[:, 0], t[:, 2])
        return wafer_batch_step(single, busy)

    def layout_seconds(self, prompt_tokens: int) -> float:
        return self.layout_fixed_s + self.layout_per_token_s * prompt_tokens


@dataclass
class TrainiumDecodeCosts(Costs):
    """Baseline: both phases on the prefill chips. Prefill from the prefill emulator's table;
    a decode step of users with KV lengths ctx_b is memory-bound:

        max( (weight bytes + sum_b ctx_b x KV bytes per token) / (HBM B/s x chips),
             2 x params x B / (peak FLOP/s x chips) )

    the weights are read once per step for the whole batch, each user's KV once, and the
    compute bound counts the multiply-adds of the linear layers. A lower bound on what a
    real decode kernel achieves, so the measured benefit of the split is conservative."""

    prefill_table: np.ndarray = None
    weight_bytes: int = 0
    hbm_bytes_per_s: float = 1.0
    flops_per_user: float = 0.0
    peak_flops: float = 1.0

    def prefill_seconds(self, tokens: int) -> float:
        t = self.prefill_table
        return float(np.interp(tokens, t[:, 0], t[:, 1]))

    def decode_steps(self, contexts: np.ndarray) -> np.ndarray:
        memory = (self.weight_bytes + contexts.sum(axis=1) * self.kv_bytes_per_token)
        compute = self.flops_per_user * contexts.shape[1] / self.peak_flops
        return np.maximum(memory / self.hbm_bytes_per_s, compute)


# ------------------------------------------------------------------------- emulated costs


# Packages whose source decides a measured cost: a change to any file in them is a new
# cache address (over-invalidating, never stale).
TIMING_SOURCES = ("compiler", "isa", "emulator/prefill", "emulator/mesh", "emulator/link",
                  "emulator/hw")
_VERSION = []


def emu_version() -> str:
    """The installed emu version plus a digest of the timing models' source files (part of
    every cache key, so that a changed timing model never reuses old measurements)."""
    if not _VERSION:
        try:
            version = importlib.metadata.version("emu-wafer")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        root = Path(__file__).resolve().parents[2]
        digest = hashlib.sha256()
        for folder in TIMING_SOURCES:
            for path in sorted((root / folder).rglob("*.py")):
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
        _VERSION.append(f"{version}+{digest.hexdigest()[:12]}")
    return _VERSION[0]


def default_cache_dir() -> Path:
    """$EMU_CACHE_DIR, else $XDG_CACHE_HOME/emu, else ~/.cache/emu."""
    if os.environ.get("EMU_CACHE_DIR"):
        return Path(os.environ["EMU_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emu"


def cache_key(parts: dict) -> str:
    """Content address: sha256 of the canonical JSON of `parts`."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class MeasurementCache:
    """One JSON file of measurements per content key: {"key": parts, "points": {id: value}}.
    Points are added as they are measured; the file is rewritten atomically."""

    def __init__(self, directory: Path | None, parts: dict, prefix: str):
        self.parts = parts
        self.path = None
        self.points = {}
        if directory is not None:
            self.path = Path(directory) / f"{prefix}-{cache_key(parts)}.json"
            if self.path.is_file():
                try:
                    data = json.loads(self.path.read_text())
                    if data.get("key") == json.loads(json.dumps(parts, default=str)):
                        self.points = data.get("points", {})
                except (json.JSONDecodeError, OSError):
                    self.points = {}

    def get(self, point, compute):
        """The cached value of `point`, else compute() stored under it."""
        name = str(point)
        if name not in self.points:
            self.points[name] = compute()
            self._save()
        return self.points[name]

    def _save(self) -> None:
        if self.path is None:
            return
        from emulator.files import atomic_write_json
        try:
            atomic_write_json(self.path, {"schema": COST_SCHEMA, "key": self.parts,
                                          "points": self.points})
        except OSError:
            pass   # a read-only cache is not an error: the run measures again next time


def sample_points(lo: int, hi: int, ratio: float) -> list[int]:
    """Integers from lo to hi (both included) in near-geometric steps of `ratio`."""
    points, x = [lo], float(lo)
    while x * ratio < hi:
        x *= ratio
        points.append(int(round(x)))
    points.append(hi)
    return sorted(set(points))


def held_out(points: list[int], limit: int = 4) -> list[int]:
    """Up to `limit` geometric midpoints of neighbouring sample points (where linear
    interpolation is worst), spread over the range."""
    mids = sorted({int(round(math.sqrt(a * b))) for a, b in zip(points, points[1:],
                                                                  strict=False)}
                  - set(points))
    if len(mids) <= limit:
        return mids
    return [mids[round(i * (len(mids) - 1) / (limit - 1))] for i in range(limit)]


def _relative_error(table: np.ndarray, checks: list[tuple[int, float]]) -> float:
    if not checks:
        return 0.0
    xs = np.array([c[0] for c in checks], np.float64)
    ys = np.array([c[1] for c in checks], np.float64)
    est = np.interp(xs, table[:, 0], table[:, 1])
    return float(np.max(np.abs(est - ys) / np.maximum(ys, 1e-30)))


def _spec_parts(spec) -> dict:
    return spec.to_dict() if hasattr(spec, "to_dict") else dataclasses.asdict(spec)


def prefill_max_tokens(spec, hw, dtype: str, chips: int, limit: int) -> int:
    """Longest prompt (<= limit) whose weights, KV and activations fit the prefill HBM."""
    from emulator.prefill.run import check_capacity

    extra = {}
    if chips != 1:
        if "chips" in inspect.signature(check_capacity).parameters:
            extra = {"chips": chips}
        else:   # a one-chip prefill model: count the chips' HBM together
            hw = dataclasses.replace(hw, hbm_bytes=hw.hbm_bytes * chips)

    def fits(p):
        try:
            check_capacity(spec, hw, p, dtype, **extra)
            return True
        except FitError:
            return False
    if not fits(1):
        return 0
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _run_prefill(spec, hw, tokens: int, dtype: str, chips: int, chunk: int | None = None):
    """Timing-only prefill of `tokens` on `chips` chips (chips > 1 needs a prefill model
    that takes a `chips` argument), in chunks of `chunk` tokens when given."""
    from emulator.prefill.run import run_prefill

    if chunk:
        return run_prefill(spec, hw, tokens, None, dtype, True, chips=chips, chunk=chunk)
    if chips != 1:
        if "chips" not in inspect.signature(run_prefill).parameters:
            raise ConfigError(f"--prefill-chips {chips} (or --search-chips): this emu's prefill "
                              f"model runs on one chip only; use 1")
        return run_prefill(spec, hw, tokens, None, dtype, True, chips=chips)
    return run_prefill(spec, hw, tokens, None, dtype, True)


def measure_prefill(spec, hw, dtype: str, chips: int, max_tokens: int, cache: MeasurementCache,
                    ratio: float = 2 ** 0.5, progress=None, chunk: int | None = None):
    """(table [[tokens, seconds]], max relative interpolation error at held-out points);
    with `chunk`, of chunked prefills (docs/prefill.md, "Chunked prefill")."""
    points = sample_points(min(16, max_tokens), max_tokens, ratio)
    extra = held_out(points)

    def measure(p):
        key = f"prefill:{p}" if not chunk else f"prefill:{p}:chunk{chunk}"
        return cache.get(key, lambda: _run_prefill(spec, hw, p, dtype, chips, chunk).seconds)
    rows = []
    for i, p in enumerate(points + extra):
        if progress:
            progress(f"prefill {p} tokens", i, len(points) + len(extra))
        rows.append((p, measure(p)))
    table = np.array(rows[:len(points)], np.float64)
    return table, _relative_error(table, rows[len(points):])


def decode_capacity(spec, mesh, dtype: str) -> int:
    """Positions one user's KV may reach on a decode instance: the largest max_context the
    compiler's place pass fits on every wafer program (layers per wafer; the LM head on
    the last wafer, or sliced by vocabulary over the wafers when that holds more,
    compiler.system.head_mode, each PE then reserving its slice's bytes), with the
    best of the layouts `compile_decode` would try (compiler.place `best_context`: the
    spread layout at its best ffn / vocabulary split)."""

    from compiler.decode import auto_layouts
    from compiler.numerics import dtype_bytes
    from compiler.place import best_context
    from compiler.system import head_mode, head_reserve_bytes, layer_ranges, sub_spec

    sliced = head_mode(spec, mesh, dtype) == "sliced"
    reserve = head_reserve_bytes(spec, mesh, dtype) if sliced else 0
    words = (mesh.sram_bytes - reserve) // dtype_bytes(dtype)
    one = mesh.one_wafer()
    ranges = layer_ranges(spec.num_layers, mesh.wafers)
    parts = {(stop - start, not sliced and w == len(ranges) - 1)
             for w, (start, stop) in enumerate(ranges)}
    worst = None
    for layers, head in sorted(parts):
        part = sub_spec(spec, layers)
        best = max(best_context(part, mesh.width, mesh.height, layout, head, words)
                   for layout in auto_layouts(part, one))
        worst = best if worst is None else min(worst, best)
    if not worst:
        raise FitError(f"decode: {spec.num_layers} layers do not fit {mesh.wafers} "
                       f"{mesh.name} wafer(s) even with one position of KV")
    return worst


def kv_pool_tokens(compiled_parts: list, spec, mesh, dtype: str, head_parts: list = ()) -> int:
    """BATCH HOOK: KV positions a decode instance could hold over all its users: the SRAM
    its placement leaves after weights and scratch (summed over each class's PEs; the
    `head_parts`, head-slice programs of a multi-wafer system, take theirs beside the
    wafers' `compiled_parts`), over KV bytes per token. The one-user mapping of today
    holds `max_context` of them."""
    from compiler.numerics import dtype_bytes
    from compiler.place import pe_class

    nbytes = dtype_bytes(dtype)
    used = 0
    for compiled in list(compiled_parts) + list(head_parts):
        plan, placement = compiled.plan, compiled.placement
        counts = {}
        for j in range(plan.ph):
            for left in (True, False):
                n = 1 if left else plan.pw - 1
                if n:
                    key = pe_class(plan, 0 if left else 1, j)
                    counts[key] = counts.get(key, 0) + n
        for key, buffers in placement.maps.items():
            words = sum(b.words for name, b in buffers.items()
                        if name != "G" and b.kind != "kv")
            used += words * nbytes * counts.get(key, 0)
    total = mesh.sram_bytes * mesh.num_pes * len(compiled_parts)
    return max(0, (total - used) // spec.kv_bytes_per_token(nbytes))


def measure_decode(spec, mesh, dtype: str, max_context: int, cache: MeasurementCache,
                   points_n: int = 6, progress=None, engine: str = "numba"):
    """(table [[context, single_s, busy_s]], max relative interpolation error, layout
    (fixed_s, per_token_s), KV pool tokens) from timing-only decode steps at sample
    positions (context = position + 1: the KV length the step attends over)."""
    from compiler.decode import compile_decode
    from compiler.system import compile_system
    from emulator.link.layout import kv_layout_cycles
    from emulator.mesh.runtime import run_timing
    from emulator.mesh.system import run_system_timing

    compiled = {}

    def system():
        if "s" not in compiled:
            if mesh.wafers > 1:
                compiled["s"] = compile_system(spec, mesh, dtype, max_context)
            else:
                compiled["s"] = compile_decode(spec, mesh, dtype, max_context)
        return compiled["s"]

    def step(pos):
        sysm = system()
        if mesh.wafers > 1:
            st = run_system_timing(sysm, pos, engine, jobs=1)
            single = st.seconds(mesh.clock_hz)
            busy = max(int(r.pe_busy.max()) for r in st.results) / mesh.clock_hz
        else:
            r = run_timing(sysm, mesh, pos, engine)
            single = r.cycles / mesh.clock_hz
            busy = int(r.pe_busy.max()) / mesh.clock_hz
        return [single, busy]

    last = max_context - 1
    points = sorted({int(round(x)) for x in np.linspace(1, last, points_n)})
    extra = sorted({(a + b) // 2 for a, b in zip(points, points[1:], strict=False)}
                   - set(points))[:3]
    rows = []
    for i, pos in enumerate(points + extra):
        if progress:
            progress(f"decode step at position {pos}", i, len(points) + len(extra))
        rows.append([pos + 1, *cache.get(f"decode:{pos}", lambda p=pos: step(p))])
    table = np.array(rows[:len(points)], np.float64)
    err = max(_relative_error(table[:, [0, 1]], [(r[0], r[1]) for r in rows[len(points):]]),
              _relative_error(table[:, [0, 2]], [(r[0], r[2]) for r in rows[len(points):]]))

    def layout():
        sysm = system()
        part = sysm.parts[0].compiled if mesh.wafers > 1 else sysm
        one = mesh.one_wafer()
        a = kv_layout_cycles(part, one, 1, dtype)
        b = kv_layout_cycles(part, one, 1001, dtype)
        per = (b - a) / 1000 / mesh.clock_hz
        return [a / mesh.clock_hz - per, per]
    fixed, per = cache.get("layout", layout)

    def pool():
        sysm = system()
        parts = [p.compiled for p in sysm.parts] if mesh.wafers > 1 else [sysm]
        heads = [h.compiled for h in sysm.heads] if mesh.wafers > 1 else []
        return kv_pool_tokens(parts, spec, mesh, dtype, heads)
    return table, err, (fixed, per), int(cache.get("kv_pool", pool))


def batch_sizes(max_batch: int) -> list[int]:
    """Batches sampled by `measure_batch_decode`: 1, the powers of two below max_batch,
    and max_batch."""
    return sorted({1, max_batch} | {1 << i for i in range(max_batch.bit_length())
                                    if 1 << i < max_batch})


def measure_batch_decode(spec, mesh, dtype: str, max_context: int, max_batch: int,
                         cache: MeasurementCache, points_n: int = 4, progress=None,
                         engine: str = "numba") -> tuple[np.ndarray, int]:
    """Emulated batched decode steps (compiler/batch_emit.py) of one wafer whose program
    holds `max_batch` users: (table [[batch, context, seconds]], KV context per user).
    The program is compiled once for `max_batch` slots with the per-user context that
    fits at that batch (at most `max_context`); a step of b users runs b slots at the
    sampled context and leaves the others idle (the program's width is max_batch),
    sampled at `batch_sizes(max_batch)` x `points_n` contexts."""
    from compiler.decode import compile_decode, layout_shift
    from emulator.mesh.batch import run_batch_timing

    _, capacity = layout_shift(spec, mesh, "spread", dtype, max_context, True, max_batch)
    context = min(max_context, capacity or 0)
    if context < 2:
        raise FitError(f"decode: a batch of {max_batch} users does not fit one {mesh.name} "
                       f"wafer with two positions of KV each")
    compiled = {}

    def step(b: int, pos: int) -> float:
        if "c" not in compiled:
            compiled["c"] = compile_decode(spec, mesh, dtype, context, "spread",
                                           batch=max_batch)
        positions = [pos] * b + [None] * (max_batch - b)
        run = run_batch_timing(compiled["c"], mesh, positions, engine)
        return run.cycles / mesh.clock_hz

    positions = sorted({int(round(x)) for x in np.linspace(0, context - 1, points_n)})
    rows, grid = [], [(b, pos) for b in batch_sizes(max_batch) for pos in positions]
    for i, (b, pos) in enumerate(grid):
        if progress:
            progress(f"batched decode step: {b} users at position {pos}", i, len(grid))
        rows.append([b, pos + 1, cache.get(f"batch{max_batch}:{b}:{pos}",
                                           lambda b=b, p=pos: step(b, p))])
    return np.array(rows, np.float64), context


def measure_costs(spec, model_name: str, mesh, prefill_hw, *, dtype: str = "bf16",
                  prefill_chips: int = 1, prompt_limit: int | None = None,
                  context_limit: int | None = None, max_batch: int = 1,
                  cache_dir: Path | None = None, progress=None,
                  engine: str = "numba", prefill_chunk: int = 0) -> TableCosts:
    """A TableCosts for `spec` on prefill chips x `prefill_hw` and decode `mesh`, measured
    by the emulators (timing-only) at sample points; cached under `cache_dir`.

    `prompt_limit` / `context_limit`: the longest prompt / KV length the workload needs
    (the sampled range; each capped by what the machines hold)."""
    started = time.perf_counter()
    version = emu_version()
    model = _spec_parts(spec)
    p_cap = prefill_max_tokens(spec, prefill_hw, dtype, prefill_chips,
                               spec.max_position_embeddings)
    if p_cap < 1:
        raise FitError(f"prefill: {model_name} does not fit {prefill_chips} x "
                       f"{prefill_hw.name} even for a one-token prompt")
    max_prompt = min(p_cap, prompt_limit or p_cap)
    placement_context = decode_capacity(spec, mesh, dtype)
    max_context = min(placement_context, context_limit or placement_context)
    max_context = max(max_context, 2)
    base = {"emu": version, "model": model, "dtype": dtype}
    pcache = MeasurementCache(cache_dir, {**base, "prefill_hw": dataclasses.asdict(prefill_hw),
                                          "chips": prefill_chips}, "prefill")
    dcache = MeasurementCache(cache_dir, {**base, "mesh": dataclasses.asdict(mesh),
                                          "max_context": max_context, "engine": engine},
                              "decode")
    ptable, perr = measure_prefill(spec, prefill_hw, dtype, prefill_chips, max_prompt, pcache,
                                   progress=progress, chunk=prefill_chunk or None)
    dtable, derr, (lfix, lper), pool = measure_decode(spec, mesh, dtype, max_context, dcache,
                                                progress=progress, engine=engine)
    from compiler.numerics import dtype_bytes
    info = {"kind": "emulated", "emu": version, "model": model_name, "dtype": dtype,
            "prefill_hw": prefill_hw.name, "prefill_chips": prefill_chips,
            "decode_hw": mesh.name, "wafers": mesh.wafers,
            "prefill_chunk": prefill_chunk or None,
            "prefill_samples": int(ptable.shape[0]), "decode_samples": int(dtable.shape[0]),
            "prefill_interp_error": perr, "decode_interp_error": derr,
            "placement_max_context": placement_context, "kv_pool_tokens": pool,
            "cache": [str(c.path) for c in (pcache, dcache) if c.path],
            "measure_seconds": time.perf_counter() - started,
            "batch_model": "hook: max(max single, sum busy)" if max_batch > 1 else "one user"}
    capacity = max_context if max_batch == 1 else max(pool, max_context)
    btable = None
    if max_batch > 1 and batched_wafer(spec, mesh):
        bcache = MeasurementCache(cache_dir, {**base, "mesh": dataclasses.asdict(mesh),
                                              "max_context": max_context, "engine": engine,
                                              "max_batch": max_batch}, "batch")
        btable, max_context = measure_batch_decode(spec, mesh, dtype, max_context, max_batch,
                                                   bcache, progress=progress, engine=engine)
        capacity = max_batch * max_context
        info.update(batch_model="emulated batched steps", batch_samples=int(len(btable)),
                    kv_pool_tokens=capacity, per_user_max_context=max_context)
    costs = TableCosts(f"{model_name} {prefill_chips}x{prefill_hw.name} -> {mesh.name}",
                       spec.kv_bytes_per_token(dtype_bytes(dtype)), max_prompt, max_context,
                       capacity, max_batch,
                       info,
                       prefill_table=ptable, decode_table=dtable,
                       layout_fixed_s=lfix, layout_per_token_s=lper, batch_table=btable)
    costs.check()
    return costs


def batched_wafer(spec, mesh) -> bool:
    """The mesh decodes batches itself (compiler/batch_emit.py): one wafer whose mapping
    is the spread layout; otherwise `wafer_batch_step` stands in."""
    from compiler.decode import auto_layouts

    return mesh.wafers == 1 and auto_layouts(spec, mesh) == ("spread",)


def trainium_decode_costs(spec, prefill_hw, prefill_table: np.ndarray, *, dtype: str = "bf16",
                          chips: int = 1, max_prompt_tokens: int, max_batch: int,
                          info: dict | None = None) -> TrainiumDecodeCosts:
    """The baseline instance (TrainiumDecodeCosts): prefill as measured, decode memory-bound
    on the same chips; KV capacity = HBM left after weights and the longest prompt's
    activations, over KV bytes per token."""
    from compiler.numerics import dtype_bytes

    nbytes = dtype_bytes(dtype)
    weights = spec.param_count() * nbytes
    acts = 8 * spec.hidden_size * max_prompt_tokens * 4 * prefill_hw.cores_per_chip
    per_token = spec.kv_bytes_per_token(nbytes)
    pool = (prefill_hw.hbm_bytes * chips - weights - acts) // per_token
    if pool < 2:
        raise FitError(f"baseline: {chips} x {prefill_hw.name} leave no HBM for a KV cache")
    costs = TrainiumDecodeCosts(
        f"baseline {chips}x{prefill_hw.name}", per_token, max_prompt_tokens,
        min(int(pool), spec.max_position_embeddings), int(pool), max_batch,
        {"kind": "trainium-memory-bound", **(info or {})},
        prefill_table=prefill_table, weight_bytes=weights,
        hbm_bytes_per_s=prefill_hw.hbm_bytes_per_s * chips,
        flops_per_user=2.0 * spec.param_count(),
        peak_flops=prefill_hw.peak_flops(dtype if dtype in ("bf16", "fp16", "fp32") else "bf16")
        * chips)
    costs.check()
    return costs
