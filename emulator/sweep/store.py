"""The cache of finished points and the result tables of a sweep.

Cache: `DIR/cache/KEY.json`, one file per finished point, KEY the point's content hash
(emulator.sweep.points.point_key: command, options with presets as data, contents of named
files, emu version). The client writes each entry atomically as its result arrives, so an
interrupted sweep keeps every point that finished and a re-run computes only the rest.

Results: `DIR/results.parquet` and `DIR/results.csv`, one row per point in spec order: the
point's parameters, `status` (`ok` or the one-line error), `host_seconds` (host time of the
point when it was computed), then the report's scalar fields flattened with dots. A report
field whose name equals a parameter's is written as `report.NAME`. Both files are written
atomically at the end.
"""

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from emulator.files import atomic_write_bytes, atomic_write_json
from emulator.hw.errors import ConfigError

RESULT_FILES = ("results.parquet", "results.csv")


def check_out_dir(out) -> Path:
    """Create the output folder (and its cache) and check it is writable, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    try:
        (out / "cache").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror})") from None
    for name in RESULT_FILES:
        target = out / name
        if target.is_dir():
            raise ConfigError(f"--out {out}: {name} is a folder")
    return out


def cache_path(out: Path, key: str) -> Path:
    return Path(out) / "cache" / f"{key}.json"


def read_cached(out: Path, key: str) -> dict | None:
    """The cached result of a point, or None (absent or unreadable: computed again)."""
    entry = read_cache_file(cache_path(out, key))
    return entry if entry is not None and entry.get("key") == key else None


def read_cache_file(path) -> dict | None:
    """A cache entry, or None when absent or unreadable."""
    try:
        entry = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    needed = ("key", "status", "values", "host_seconds")
    return entry if isinstance(entry, dict) and all(k in entry for k in needed) else None


def write_cache_file(path, entry: dict) -> None:
    """Write one cache entry atomically (the fields of cache_entry)."""
    atomic_write_json(path, {k: entry[k] for k in ("key", "command", "params", "status",
                                                    "host_seconds", "values")})


def cache_meta(key: str, command: str, params: dict) -> dict:
    """The identifying fields of a cache entry."""
    return {"key": key, "command": command, "params": params}


def write_cached(out: Path, key: str, command: str, params: dict, result: dict) -> None:
    """Store a finished point (atomically)."""
    write_cache_file(cache_path(out, key), {**cache_meta(key, command, params), **result})


def build_rows(points, results: dict) -> list[dict]:
    """Rows in point order from {key: result}."""
    rows = []
    for point in points:
        result = results[point.key]
        row = dict(point.params)
        row["status"] = result["status"]
        row["host_seconds"] = result["host_seconds"]
        for name, value in result["values"].items():
            row[f"report.{name}" if name in point.params or name in ("status", "host_seconds")
                else name] = value
        rows.append(row)
    return rows


def columns_of(rows: list[dict]) -> list[str]:
    """Column names in first-seen order."""
    names: dict = {}
    for row in rows:
        for name in row:
            names.setdefault(name, None)
    return list(names)


def to_table(rows: list[dict]) -> pa.Table:
    """An Arrow table of the rows; a column mixing ints and floats is float, one mixing
    numbers and strings is string."""
    arrays = {}
    for name in columns_of(rows):
        values = [row.get(name) for row in rows]
        kinds = {_kind(v) for v in values if v is not None}
        if "str" in kinds and len(kinds) > 1:
            values = [None if v is None else str(v) for v in values]
        elif kinds == {"int", "float"} or kinds == {"bool", "float"} \
                or kinds == {"bool", "int", "float"}:
            values = [None if v is None else float(v) for v in values]
        elif kinds == {"bool", "int"}:
            values = [None if v is None else int(v) for v in values]
        arrays[name] = pa.array(values)
    return pa.table(arrays)


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "str"


def write_results(out: Path, rows: list[dict]) -> list[Path]:
    """Write results.parquet and results.csv atomically; returns their paths."""
    table = to_table(rows)
    paths = []
    for name, writer in (("results.parquet", pq.write_table),
                         ("results.csv", pacsv.write_csv)):
        sink = pa.BufferOutputStream()
        writer(table, sink)
        atomic_write_bytes(Path(out) / name, sink.getvalue().to_pybytes())
        paths.append(Path(out) / name)
    return paths


def read_results(path) -> list[dict]:
    """The rows of a results.parquet (for tests and plots)."""
    return pq.read_table(path).to_pylist()
