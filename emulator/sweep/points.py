"""Points of a sweep: options with presets as data, their cache key, and the point runner.

`prepare` turns a spec's parameter dicts into the keyword arguments of the command's
library function: every preset option (`hw`, `prefill_hw`, `link`) given as a name or a
file is loaded on the client and its `PRESET.FIELD` overrides applied with
`dataclasses.replace` and the preset rules (emulator.hw.presets.replace_fields), so the
workers receive dataclasses and need no preset files. `run_point` runs on a worker: it
calls the function in-process and returns the status and the report's scalars flattened
with dots. Times are host seconds.
"""

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from emulator.hw.errors import ConfigError
from emulator.hw.presets import replace_fields
from emulator.sweep.commands import PRESETS, options_of

_FIELD = re.compile(r"field '([A-Za-z0-9_]+)'")


@dataclass
class Point:
    """One point: its spec parameters, the function's options and its cache key."""

    index: int
    params: dict                     # as written in the spec (the result row's first columns)
    options: dict = field(repr=False)  # keyword arguments of the command (presets as data)
    key: str = ""                    # content hash of command, options, files, emu version


def emu_version() -> str:
    """The installed emu version (the cache is keyed by it)."""
    try:
        return metadata.version("emu-wafer")
    except metadata.PackageNotFoundError:      # a source tree that is not installed
        return "unknown"


def prepare(spec) -> list[Point]:
    """The points of a validated spec, presets loaded and overridden; ConfigError naming the
    spec line of the offending value before any point runs."""
    defaults = options_of(spec.function)
    loaded: dict = {}
    points = []
    for index, (params, sources) in enumerate(zip(spec.points, spec.sources, strict=True)):
        options = {k: v for k, v in params.items() if "." not in k}
        for name, preset in PRESETS.items():
            if name not in defaults:
                continue
            changes = {k.partition(".")[2]: v for k, v in params.items()
                       if k.startswith(name + ".")}
            value = options.get(name, defaults[name])
            if isinstance(value, str) and value == "auto":
                if changes:
                    first = next(k for k in params if k.startswith(name + "."))
                    raise ConfigError(f"{spec.where(sources[first])}: {first}: needs a named "
                                      f"{name} preset, not 'auto' (set {name} in 'fixed')")
                continue
            if not isinstance(value, str):
                continue
            try:
                base = loaded.get((name, value))
                if base is None:
                    base = loaded[(name, value)] = preset.load(value)
            except ConfigError as exc:
                where = sources.get(name, ("fixed",))
                raise ConfigError(f"{spec.where(where)}: {name}: {exc}") from None
            options[name] = _override(spec, name, base, changes, sources)
        points.append(Point(index, dict(params), options))
    version, digests = emu_version(), {}
    for point in points:
        point.key = point_key(spec.command, point.options, version, digests)
    return points


def _override(spec, name: str, base, changes: dict, sources: dict):
    """`base` with `changes` applied; a ConfigError points at the changed field's line."""
    if not changes:
        return base
    try:
        return replace_fields(base, changes, f"{name} preset '{base.name}'")
    except ConfigError as exc:
        match = _FIELD.search(str(exc))
        key = f"{name}.{match.group(1)}" if match else None
        if key not in sources:
            key = next(f"{name}.{k}" for k in changes)
        raise ConfigError(f"{spec.where(sources[key])}: {key}: {exc}") from None


def point_key(command: str, options: dict, version: str, digests: dict | None = None) -> str:
    """sha256 of the command, its options (presets as all their fields), what the files
    the options name hold (file_digest), and the emu version. `digests` memoises
    file_digest by path across the points of a sweep."""
    digests = {} if digests is None else digests
    blob = {"command": command, "version": version, "options": {}, "files": {}}
    for name, value in sorted(options.items()):
        if dataclasses.is_dataclass(value):
            value = {"preset": type(value).__name__, **dataclasses.asdict(value)}
        elif isinstance(value, str) and value and Path(value).exists():
            if value not in digests:
                digests[value] = file_digest(Path(value))
            blob["files"][name] = digests[value]
        blob["options"][name] = value
    text = json.dumps(blob, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


BIG_FILE = 64 << 20     # bytes; larger files are identified by size and mtime, not content


def file_digest(path: Path) -> str:
    """sha256 identifying what a named file holds: its bytes (size and modification time
    beyond BIG_FILE bytes); for a folder (a HuggingFace model), its .json files and the
    other model files (.safetensors, .model, .txt) by name in the same way. Other files in
    a folder are ignored, so an option naming an output folder keeps its key."""
    h = hashlib.sha256()
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and p.suffix in (".json", ".safetensors", ".model", ".txt"))
    for item in files:
        h.update(str(item.relative_to(path) if item != path else item.name).encode())
        stat = item.stat()
        if stat.st_size > BIG_FILE:
            h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            continue
        h.update(item.read_bytes())
    return h.hexdigest()


def flatten(report: dict, prefix: str = "") -> dict:
    """The scalar fields of a nested report, names joined with dots (lists are left out)."""
    out = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (str, bool, int, float)) or value is None:
            out[name] = value
    return out


def one_line(exc: BaseException) -> str:
    """An exception as one line: the EmuError message, or 'Type: message' for others."""
    from emulator.hw.errors import EmuError

    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, EmuError):
        return message or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def run_point(function, options: dict, cache_file: str | None = None,
              meta: dict | None = None) -> dict:
    """Run one point in this process (on a Dask worker): {'status': 'ok' or the one-line
    error, 'values': flattened report scalars, 'host_seconds', 'cacheable'}.

    User errors (EmuError) are results like any other and are cached; other exceptions
    are recorded but not cached, so a fixed bug re-runs them. With `cache_file` (an
    absolute path) the worker first returns an entry already there, and writes its own
    result there when that folder exists on its machine (a shared file system): a point
    that finishes while the client is gone is not computed again by the next run."""
    from emulator.hw.errors import EmuError
    from emulator.sweep.store import read_cache_file, write_cache_file

    if cache_file is not None:
        entry = read_cache_file(cache_file)
        if entry is not None:
            return {"status": entry["status"], "values": entry["values"],
                    "host_seconds": entry["host_seconds"], "cacheable": False}
    started = time.perf_counter()
    try:
        report = function(**options)
        status, values, cacheable = "ok", flatten(report), True
    except EmuError as exc:
        status, values, cacheable = one_line(exc), {}, True
    except Exception as exc:  # noqa: BLE001 - a failing point must not stop the sweep
        status, values, cacheable = one_line(exc), {}, False
    result = {"status": status, "values": values, "cacheable": cacheable,
              "host_seconds": time.perf_counter() - started}
    if cacheable and cache_file is not None and Path(cache_file).parent.is_dir():
        try:
            write_cache_file(cache_file, {**(meta or {}), **result})
        except OSError:
            pass          # the client writes it when the result arrives
    return result
