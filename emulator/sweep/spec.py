"""Sweep specs: parse a JSON or YAML file, validate it with line-precise errors, expand it
into points.

A spec (DESIGN.md section 5.1, docs/sweeps.md):

    {"command": "run",
     "fixed": {OPTION: VALUE, ...},
     "grid": {AXIS: [VALUES], ...}}          every combination, the first axis slowest
    or "zip": {AXIS: [VALUES], ...}          the i-th values together (equal lengths)
    or "samples": {"n": N, "seed": S,
                   "axes": {AXIS: [VALUES] | {"low": A, "high": B, "log": true}}}

OPTION and AXIS are the command's options (`prompt_len`, `timing_only`, `model`) or preset
fields `hw.FIELD`, `prefill_hw.FIELD`, `link.FIELD`. Every error is a ConfigError
`FILE:LINE: FIELD: problem`, raised before any point runs.
"""

import inspect
import itertools
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml

from emulator.hw.errors import ConfigError
from emulator.sweep.commands import PRESETS, SweepCommand, lookup, options_of

MODES = ("grid", "zip", "samples")
SCALARS = (str, int, float, bool, type(None))
_EMPTY = inspect.Parameter.empty


@dataclass
class Spec:
    """A validated spec and its expanded points."""

    path: str
    command: str                     # as written: a registered name or 'module:function'
    function: object                 # the library function
    registration: SweepCommand | None
    fixed: dict
    mode: str | None                 # 'grid', 'zip', 'samples' or None (one point)
    axes: dict                       # axis -> list of values (samples: the drawn values)
    points: list[dict] = field(repr=False)     # one dict of parameters per point
    sources: list[dict] = field(repr=False)    # per point: parameter -> spec path tuple
    lines: dict = field(repr=False)            # spec path tuple -> line (1-based)

    def where(self, path: tuple) -> str:
        """'FILE:LINE' of a spec path (its nearest located ancestor)."""
        while path and path not in self.lines:
            path = path[:-1]
        line = self.lines.get(path)
        return f"{self.path}:{line}" if line else self.path


class _Located:
    """Raise ConfigErrors as 'FILE:LINE: FIELD: message'."""

    def __init__(self, path: str, lines: dict):
        self.path, self.lines = path, lines

    def error(self, where: tuple, message: str) -> ConfigError:
        probe = where
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        name = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in where)
        name = name.replace(".[", "[")
        prefix = f"{self.path}:{line}" if line else self.path
        return ConfigError(f"{prefix}: {name}: {message}" if name else f"{prefix}: {message}")


def load_spec(path) -> Spec:
    """Read, validate and expand the spec file `path` (.json, .yaml or .yml)."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such sweep spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the sweep spec ({exc})") from None
    data, lines = parse_text(text, path)
    return validate(data, path, lines)


def parse_text(text: str, path: str) -> tuple[object, dict]:
    """(data, spec path tuple -> line) of a JSON or YAML text."""
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: malformed JSON at column {exc.colno}: "
                              f"{exc.msg}") from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            node = None          # valid JSON that YAML 1.1 does not read: no line numbers
        lines = {}
        if node is not None:
            _node_lines(node, (), lines, path)
        return data, lines
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    lines = {}
    if node is not None:
        _node_lines(node, (), lines, path)
    return data, lines


def _node_lines(node, where: tuple, lines: dict, path: str) -> None:
    """Record the line of every mapping value and sequence item; reject duplicate keys."""
    lines.setdefault(where, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            name = key.value
            if name in seen:
                raise ConfigError(f"{path}:{key.start_mark.line + 1}: "
                                  f"{'.'.join(map(str, where + (name,)))}: duplicate key")
            seen.add(name)
            lines[where + (name,)] = key.start_mark.line + 1
            _node_lines(value, where + (name,), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[where + (i,)] = item.start_mark.line + 1
            _node_lines(item, where + (i,), lines, path)


def validate(data, path: str, lines: dict) -> Spec:
    """Check a parsed spec and expand its points; ConfigError 'FILE:LINE: FIELD: ...'."""
    at = _Located(path, lines)
    if not isinstance(data, dict):
        raise at.error((), "expected an object with 'command' and 'grid', 'zip' or 'samples'")
    unknown = sorted(set(data) - {"command", "fixed", *MODES})
    if unknown:
        raise at.error((unknown[0],), "unknown key (known: command, fixed, grid, zip, samples)")
    if "command" not in data:
        raise at.error((), "missing key 'command'")
    if not isinstance(data["command"], str):
        raise at.error(("command",), "expected a command name")
    try:
        function, registration = lookup(data["command"])
    except ConfigError as exc:
        raise at.error(("command",), str(exc)) from None
    options = options_of(function)
    kinds = option_kinds(function)
    fixed = data.get("fixed", {})
    if not isinstance(fixed, dict):
        raise at.error(("fixed",), "expected an object of OPTION: VALUE")
    for key, value in fixed.items():
        _check_name(at, options, ("fixed", key), key)
        _check_scalar(at, ("fixed", key), value, kinds.get(key))
    modes = [m for m in MODES if m in data]
    if len(modes) > 1:
        raise at.error((modes[1],), f"give one of grid, zip or samples, not {' and '.join(modes)}")
    mode = modes[0] if modes else None
    if mode is None:
        axes, points, sources = {}, [{}], [{}]
    elif mode == "samples":
        axes, points, sources = _samples(at, options, kinds, data["samples"])
    else:
        axes, points, sources = _table(at, options, kinds, mode, data[mode])
    for axis in axes:
        if axis in fixed:
            raise at.error((mode, axis), "also given in 'fixed'")
    fixed_sources = {key: ("fixed", key) for key in fixed}
    points = [{**fixed, **p} for p in points]
    sources = [{**fixed_sources, **s} for s in sources]
    required = [name for name, default in options.items() if default is _EMPTY]
    for name in required:
        if name not in points[0]:
            raise at.error(("fixed",), f"missing option '{name}' (required by "
                                       f"'{data['command']}')")
    return Spec(path, data["command"], function, registration, fixed, mode, axes, points,
                sources, lines)


def _check_name(at: _Located, options: dict, where: tuple, name) -> None:
    """An OPTION/AXIS must be an option of the command or PRESET.FIELD of one."""
    if not isinstance(name, str):
        raise at.error(where, "expected an option name")
    prefix, dot, field_name = name.partition(".")
    if not dot:
        if name not in options:
            raise at.error(where, f"unknown option (options: {', '.join(options)})")
        return
    if prefix not in PRESETS or prefix not in options:
        usable = [p for p in PRESETS if p in options]
        raise at.error(where, f"unknown preset '{prefix}' (preset options of this command: "
                              f"{', '.join(usable) or 'none'})")
    known = [f.name for f in fields(PRESETS[prefix].cls) if f.name != "name"]
    if field_name not in known:
        raise at.error(where, f"unknown field of {prefix} (fields: {', '.join(known)})")


def option_kinds(function) -> dict:
    """Option -> the scalar types its annotation allows (str, int, float, bool, NoneType);
    options without an annotation, or preset fields, are absent (anything scalar goes)."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no type checks
        return {}
    kinds = {}
    for name, hint in hints.items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union,
                                                                    types.UnionType) else (hint,)
        allowed = tuple(a for a in args if a in SCALARS)
        if allowed:
            kinds[name] = allowed
    return kinds


def _check_scalar(at: _Located, where: tuple, value, kinds: tuple | None = None) -> None:
    """A value must be a finite scalar, of one of `kinds` when given (an int is a float)."""
    if not isinstance(value, SCALARS) or (isinstance(value, float) and not math.isfinite(value)):
        raise at.error(where, f"expected a number, a string, true/false or null, got "
                              f"{json.dumps(value)}")
    if kinds is None:
        return
    ok = any(isinstance(value, k) and not (k is int and isinstance(value, bool))
             for k in kinds) or (float in kinds and isinstance(value, int)
                                 and not isinstance(value, bool))
    if not ok:
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                 type(None): "null"}
        expected = " or ".join(names[k] for k in kinds)
        raise at.error(where, f"expected {expected}, got {json.dumps(value)}")


def _table(at: _Located, options: dict, kinds: dict, mode: str, table
           ) -> tuple[dict, list, list]:
    """Axes, points and value sources of a grid or a zip."""
    if not isinstance(table, dict) or not table:
        raise at.error((mode,), "expected a non-empty object of AXIS: [VALUES]")
    for axis, values in table.items():
        _check_name(at, options, (mode, axis), axis)
        if not isinstance(values, list) or not values:
            raise at.error((mode, axis), "expected a non-empty list of values")
        for i, value in enumerate(values):
            _check_scalar(at, (mode, axis, i), value, kinds.get(axis))
    names = list(table)
    if mode == "zip":
        lengths = {len(v) for v in table.values()}
        if len(lengths) > 1:
            first = len(table[names[0]])
            bad = next(n for n in names if len(table[n]) != first)
            raise at.error((mode, bad), f"has {len(table[bad])} values, '{names[0]}' has "
                                        f"{first}: zip axes need equal lengths")
        combos = [tuple(i for _ in names) for i in range(lengths.pop())]
    else:
        combos = list(itertools.product(*(range(len(table[n])) for n in names)))
    points = [{n: table[n][i] for n, i in zip(names, combo, strict=True)} for combo in combos]
    sources = [{n: (mode, n, i) for n, i in zip(names, combo, strict=True)} for combo in combos]
    return dict(table), points, sources


def _samples(at: _Located, options: dict, kinds: dict, block) -> tuple[dict, list, list]:
    """Axes, points and value sources of `samples` (numpy default_rng(seed), drawn point by
    point, axis by axis in the spec's order)."""
    if not isinstance(block, dict):
        raise at.error(("samples",), "expected an object with n, seed and axes")
    unknown = sorted(set(block) - {"n", "seed", "axes"})
    if unknown:
        raise at.error(("samples", unknown[0]), "unknown key (known: n, seed, axes)")
    n, seed, axes = block.get("n"), block.get("seed", 0), block.get("axes")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise at.error(("samples", "n"), f"expected a positive integer, got {json.dumps(n)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise at.error(("samples", "seed"), f"expected an integer >= 0, got {json.dumps(seed)}")
    if not isinstance(axes, dict) or not axes:
        raise at.error(("samples", "axes"), "expected a non-empty object of AXIS: [VALUES] or "
                                            "{low, high, log}")
    draws = {}
    for axis, rule in axes.items():
        where = ("samples", "axes", axis)
        _check_name(at, options, where, axis)
        draws[axis] = _sampler(at, where, rule, kinds.get(axis))
    rng = np.random.default_rng(seed)
    points = [{axis: draw(rng) for axis, draw in draws.items()} for _ in range(n)]
    sources = [{axis: ("samples", "axes", axis) for axis in draws} for _ in range(n)]
    drawn = {axis: [p[axis] for p in points] for axis in draws}
    return drawn, points, sources


def _sampler(at: _Located, where: tuple, rule, kinds: tuple | None):
    """A function rng -> value for one sampled axis."""
    if isinstance(rule, list):
        if not rule:
            raise at.error(where, "expected a non-empty list of values")
        for i, value in enumerate(rule):
            _check_scalar(at, where + (i,), value, kinds)
        return lambda rng: rule[int(rng.integers(len(rule)))]
    if not isinstance(rule, dict):
        raise at.error(where, "expected a list of values or {low, high, log}")
    unknown = sorted(set(rule) - {"low", "high", "log"})
    if unknown:
        raise at.error(where + (unknown[0],), "unknown key (known: low, high, log)")
    low, high, log = rule.get("low"), rule.get("high"), rule.get("log", False)
    for key, value in (("low", low), ("high", high)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value):
            raise at.error(where + (key,), f"expected a number, got {json.dumps(value)}")
    if not isinstance(log, bool):
        raise at.error(where + ("log",), f"expected true or false, got {json.dumps(log)}")
    if not low < high:
        raise at.error(where + ("high",), f"must be greater than low ({low}), got {high}")
    if log and low <= 0:
        raise at.error(where + ("low",), f"must be > 0 with log: true, got {low}")
    integer = isinstance(low, int) and isinstance(high, int)
    if kinds is not None and int not in kinds and float not in kinds:
        raise at.error(where, "a {low, high} range needs a numeric option")
    if kinds is not None and float not in kinds and not integer:
        raise at.error(where, "low and high must be integers for this option")

    def draw(rng):
        u = rng.random()
        x = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if log \
            else low + u * (high - low)
        return min(high, max(low, round(x))) if integer else float(x)

    return draw
