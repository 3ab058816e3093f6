"""Request streams for `emu serve`: trace files, synthetic arrivals and ISL/OSL distributions.

A `Workload` is three aligned arrays: `arrival_s` (seconds from the start, non-decreasing),
`prompt_tokens` and `output_tokens` (positive integers; the output count includes the first
token, which the prefill produces).

Trace files are JSONL (one object per line) or CSV with a header. Columns are found by name:

| field          | emu            | Azure LLM inference trace | BurstGPT          |
|----------------|----------------|---------------------------|-------------------|
| arrival        | `arrival_s`    | `TIMESTAMP`               | `Timestamp`       |
| prompt length  | `prompt_tokens`| `ContextTokens`           | `Request tokens`  |
| output length  | `output_tokens`| `GeneratedTokens`         | `Response tokens` |

Arrival values are seconds, or ISO-8601 date-times (Azure's `TIMESTAMP`); either way the
stream is shifted so that its first request arrives at 0 and sorted by arrival.

DIST (for `--isl` / `--osl`):
- `N`: every request has N tokens;
- `uniform:LO,HI`: integers LO..HI inclusive, equally likely;
- `lognormal:MEDIAN,SIGMA`: round(exp(normal(ln MEDIAN, SIGMA))), at least 1;
- `zipf:A,HI` or `zipf:A,LO,HI`: integers LO..HI (LO default 1) with P(k) proportional
  to k**-A (a bounded Zipf; A > 0);
- `file:PATH` or `file:PATH:COLUMN`: resampled (with replacement) from a column of a trace
  file; without COLUMN, the prompt column for `--isl` and the output column for `--osl`.

Arrivals: `poisson` (exponential gaps of mean 1/RATE) or `gamma:CV` (gamma gaps of mean
1/RATE and coefficient of variation CV; CV > 1 is burstier than Poisson, CV = 1 is Poisson).
Bad input raises ConfigError naming the file and the field (or the option and its value).
"""

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from emulator.hw.errors import ConfigError

ARRIVAL_COLUMNS = ("arrival_s", "TIMESTAMP", "Timestamp")
PROMPT_COLUMNS = ("prompt_tokens", "ContextTokens", "Request tokens")
OUTPUT_COLUMNS = ("output_tokens", "GeneratedTokens", "Response tokens")


@dataclass(frozen=True)
class Workload:
    """A request stream: arrival seconds and prompt/output token counts, one entry each."""

    arrival_s: np.ndarray       # float64 [n], non-decreasing, first 0 for traces
    prompt_tokens: np.ndarray   # int64 [n], >= 1
    output_tokens: np.ndarray   # int64 [n], >= 1 (includes the prefill's first token)
    source: str = "synthetic"

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    def head(self, n: int) -> "Workload":
        """The first n requests."""
        return Workload(self.arrival_s[:n], self.prompt_tokens[:n], self.output_tokens[:n],
                        self.source)

    def describe(self) -> dict:
        """Shape of the stream: counts, rate and token quantiles (JSON-ready)."""
        n = len(self)
        span = float(self.arrival_s[-1] - self.arrival_s[0]) if n > 1 else 0.0

        def q(a):
            return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
                    "p90": float(np.percentile(a, 90)), "max": int(a.max())}
        return {"source": self.source, "requests": n,
                "rate_rps": (n - 1) / span if span > 0 else 0.0,
                "prompt_tokens": q(self.prompt_tokens), "output_tokens": q(self.output_tokens)}


# ------------------------------------------------------------------------------- trace files


def read_table(path) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts of strings/numbers) of a JSONL or CSV file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such workload file")
    text = path.read_text(encoding="utf-8-sig")
    first = next((line for line in text.splitlines() if line.strip()), "")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson") or first.lstrip().startswith("{"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: line {number}: malformed JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: line {number}: expected a JSON object")
            rows.append(row)
        columns = list(rows[0]) if rows else []
        return columns, rows
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in (reader.fieldnames or [])]
    rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in reader]
    return columns, rows


def _find_column(path, columns, names, what: str) -> str:
    for name in names:
        if name in columns:
            return name
    raise ConfigError(f"{path}: no {what} column (expected one of: "
                      f"{', '.join(repr(n) for n in names)})")


def _number(path, line: int, column: str, value, integer: bool) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: row {line}: field '{column}' must be a number, "
                          f"got {value!r}") from None
    if not math.isfinite(x) or (integer and (x < 1 or x != int(x))):
        kind = "a positive integer" if integer else "a finite number"
        raise ConfigError(f"{path}: row {line}: field '{column}' must be {kind}, got {value!r}")
    return x


def _time(path, line: int, column: str, value) -> float:
    """Seconds from a number or an ISO-8601 date-time (Azure's TIMESTAMP)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        text = str(value).strip().replace(" ", "T", 1)
        if "." in text:   # Azure writes 7 fractional digits; Python reads up to 6
            head, frac = text.split(".", 1)
            digits = "".join(ch for ch in frac if ch.isdigit())
            text = f"{head}.{digits[:6]}{frac[len(digits):]}"
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(f"{path}: row {line}: field '{column}' must be seconds or an "
                          f"ISO-8601 time, got {value!r}") from None


def load_workload(path) -> Workload:
    """Read a JSONL/CSV trace (emu, Azure or BurstGPT column names); arrivals start at 0."""
    columns, rows = read_table(path)
    if not rows:
        raise ConfigError(f"{path}: the workload has no requests")
    a = _find_column(path, columns, ARRIVAL_COLUMNS, "arrival")
    p = _find_column(path, columns, PROMPT_COLUMNS, "prompt-length")
    o = _find_column(path, columns, OUTPUT_COLUMNS, "output-length")
    n = len(rows)
    arrival, prompt, output = np.empty(n), np.empty(n, np.int64), np.empty(n, np.int64)
    for i, row in enumerate(rows):
        line = i + 2 if not str(path).endswith((".jsonl", ".ndjson")) else i + 1
        for col in (a, p, o):
            if col not in row or row[col] in (None, ""):
                raise ConfigError(f"{path}: row {line}: missing field '{col}'")
        arrival[i] = _time(path, line, a, row[a])
        prompt[i] = _number(path, line, p, row[p], True)
        output[i] = _number(path, line, o, row[o], True)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - arrival[order][0]
    return Workload(arrival, prompt[order], output[order], str(path))


def column_values(path, column: str | None, role: str) -> np.ndarray:
    """Positive integers of one column of a trace file (for `file:` DISTs)."""
    columns, rows = read_table(path)
    if column is None:
        names = PROMPT_COLUMNS if role == "isl" else OUTPUT_COLUMNS
        column = _find_column(path, columns, names, "prompt-length" if role == "isl"
                              else "output-length")
    elif column not in columns:
        raise ConfigError(f"{path}: no column '{column}' (columns: {', '.join(columns)})")
    values = np.array([_number(path, i + 2, column, row.get(column), True)
                       for i, row in enumerate(rows)], np.int64)
    if values.size == 0:
        raise ConfigError(f"{path}: column '{column}' has no values")
    return values


# ---------------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class Dist:
    """A distribution of positive token counts, parsed from a DIST string."""

    text: str
    kind: str
    params: tuple
    values: np.ndarray | None = None   # file: the column to resample

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n draws (int64, each >= 1)."""
        if self.kind == "fixed":
            return np.full(n, self.params[0], np.int64)
        if self.kind == "uniform":
            lo, hi = self.params
            return rng.integers(lo, hi + 1, n).astype(np.int64)
        if self.kind == "lognormal":
            median, sigma = self.params
            x = np.rint(np.exp(rng.normal(math.log(median), sigma, n)))
            return np.maximum(x, 1).astype(np.int64)
        if self.kind == "zipf":
            a, lo, hi = self.params
            k = np.arange(lo, hi + 1, dtype=np.float64)
            cdf = np.cumsum(k ** -a)
            cdf /= cdf[-1]
            idx = np.searchsorted(cdf, rng.random(n), side="right")
            return (lo + np.minimum(idx, hi - lo)).astype(np.int64)
        return rng.choice(self.values, n).astype(np.int64)

    def upper(self) -> int | None:
        """The largest value the distribution can give (None: unbounded)."""
        if self.kind == "fixed":
            return self.params[0]
        if self.kind in ("uniform",):
            return self.params[1]
        if self.kind == "zipf":
            return self.params[2]
        if self.kind == "file":
            return int(self.values.max())
        return None


def parse_dist(text: str, option: str = "--isl") -> Dist:
    """Parse a DIST string (module docstring); ConfigError naming `option` when malformed."""
    raw = str(text).strip()
    role = "osl" if "osl" in option else "isl"

    def bad(why: str):
        return ConfigError(f"{option}: {why}, got '{text}' (forms: N, uniform:LO,HI, "
                           f"lognormal:MEDIAN,SIGMA, zipf:A,HI, zipf:A,LO,HI, file:PATH[:COLUMN])")

    def numbers(body: str, count: tuple[int, ...]) -> list[float]:
        try:
            vals = [float(v) for v in body.split(",")]
        except ValueError:
            raise bad("expected numbers") from None
        if len(vals) not in count or not all(math.isfinite(v) for v in vals):
            raise bad(f"expected {' or '.join(map(str, count))} numbers")
        return vals

    def positive_int(v: float, name: str) -> int:
        if v < 1 or v != int(v):
            raise bad(f"{name} must be a positive integer")
        return int(v)

    kind, _, body = raw.partition(":")
    kind = kind.lower()
    if not _:
        try:
            return Dist(raw, "fixed", (positive_int(float(raw), "N"),))
        except ValueError:
            raise bad("expected a DIST") from None
    if kind == "uniform":
        lo, hi = numbers(body, (2,))
        lo, hi = positive_int(lo, "LO"), positive_int(hi, "HI")
        if hi < lo:
            raise bad("HI must be >= LO")
        return Dist(raw, "uniform", (lo, hi))
    if kind == "lognormal":
        median, sigma = numbers(body, (2,))
        if median <= 0 or sigma < 0:
            raise bad("MEDIAN must be > 0 and SIGMA >= 0")
        return Dist(raw, "lognormal", (median, sigma))
    if kind == "zipf":
        vals = numbers(body, (2, 3))
        a, lo, hi = (vals[0], 1, vals[1]) if len(vals) == 2 else vals
        lo, hi = positive_int(lo, "LO"), positive_int(hi, "HI")
        if a <= 0 or hi < lo:
            raise bad("A must be > 0 and HI >= LO")
        if hi - lo > 10_000_000:
            raise bad("HI - LO must be at most 10,000,000")
        return Dist(raw, "zipf", (a, lo, hi))
    if kind == "file":
        path, column = body, None
        if not Path(path).is_file() and ":" in body:
            path, column = body.rsplit(":", 1)
        if not Path(path).is_file():
            raise bad(f"no such file '{path}'")
        return Dist(raw, "file", (path, column), column_values(path, column, role))
    raise bad(f"unknown distribution '{kind}'")


def parse_arrival(text: str) -> tuple[str, float]:
    """('poisson', 1.0) or ('gamma', CV) from --arrival; ConfigError when malformed."""
    raw = str(text).strip().lower()
    if raw == "poisson":
        return "poisson", 1.0
    if raw.startswith("gamma:"):
        try:
            cv = float(raw[6:])
        except ValueError:
            cv = -1.0
        if cv > 0 and math.isfinite(cv):
            return "gamma", cv
    raise ConfigError(f"--arrival: expected poisson or gamma:CV with CV > 0, got '{text}'")


def synthetic(rate: float, requests: int, isl: Dist, osl: Dist, seed: int = 0,
              arrival: str = "poisson") -> Workload:
    """`requests` arrivals at `rate` per second (Poisson or gamma gaps), lengths from the DISTs.

    The first request arrives after one gap (not at 0), so the stream is a stationary
    renewal process from time 0 (what queueing formulas assume)."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ConfigError(f"--rate: must be a positive number of requests per second, "
                          f"got {rate}")
    if requests < 1:
        raise ConfigError(f"--requests: must be a positive integer, got {requests}")
    kind, cv = parse_arrival(arrival)
    rng = np.random.default_rng(seed)
    if kind == "poisson":
        gaps = rng.exponential(1.0 / rate, requests)
    else:
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), requests)
    return Workload(np.cumsum(gaps), isl.sample(rng, requests), osl.sample(rng, requests),
                    f"synthetic {kind} {rate:g}/s, isl {isl.text}, osl {osl.text}")
