"""Loading and validating hardware presets.

A preset is a JSON object whose keys are the fields of a frozen dataclass, plus the
optional documentation keys `description` and `sources` (field name -> public source).
A preset is named by a bundled name (`wse3`) or by a path to a user's JSON file. Every
problem (unknown key, missing key, wrong type, non-positive size, a number that is not
finite such as `Infinity` or `NaN`, an integer beyond `MAX_INT`) raises `ConfigError`
naming the file and the key. `parse_json` is the one JSON reader of every input file
(presets, model configs): malformed text, numbers too long to convert and nesting too deep
are ConfigErrors too.
"""

import dataclasses
import json
import re
import types
import typing
from importlib import resources
from pathlib import Path

from emulator.hw.errors import ConfigError

DOC_KEYS = ("description", "sources")
MAX_INT = 2**62     # integers are held in int64 arrays and counters


def parse_json(text: str, label: str):
    """Parse JSON text; every failure is one ConfigError naming `label`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{label}: malformed JSON at line {exc.lineno} column {exc.colno}: "
                          f"{exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError(f"{label}: unreadable JSON: {reason}") from None


def check_number(label: str, key: str, value, integer: bool = False):
    """A finite number within the int64-safe range, or ConfigError naming the field."""
    import math

    if integer:
        if abs(value) > MAX_INT:
            raise ConfigError(f"{label}: field '{key}' is out of range (|value| <= 2^62), "
                              f"got {value}")
    elif not math.isfinite(value):
        raise ConfigError(f"{label}: field '{key}' must be a finite number, got {value}")
    elif abs(value) > 1e300:
        raise ConfigError(f"{label}: field '{key}' is out of range, got {value}")
    return value


def preset_dir():
    """The folder of bundled presets (a Traversable inside the installed package)."""
    return resources.files("emulator.hw").joinpath("presets")


def list_presets(kind: str) -> list[str]:
    """Names of bundled presets of a kind (`mesh`, `prefill`, `link`, `system`)."""
    prefix = f"{kind}-"
    names = [p.name for p in preset_dir().iterdir() if p.name.endswith(".json")]
    return sorted(n[len(prefix):-5] for n in names if n.startswith(prefix))


def read_preset_json(kind: str, name_or_path: str) -> tuple[dict, str]:
    """Return (parsed JSON object, label used in messages) for a preset name or a file path."""
    bundled = preset_dir().joinpath(f"{kind}-{name_or_path}.json")
    if bundled.is_file():
        text, label = bundled.read_text(encoding="utf-8"), f"{kind} preset '{name_or_path}'"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            known = ", ".join(list_presets(kind))
            raise ConfigError(
                f"{name_or_path}: no such {kind} preset or file (bundled {kind} presets: {known})"
            )
        try:
            text, label = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{name_or_path}: cannot read {kind} preset: {exc}") from None
    data = parse_json(text, label)
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a JSON object at the top level")
    return data, label


def _check_type(label: str, key: str, value, annotation):
    """Coerce/validate one value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _check_type(label, key, value, options[0])
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok:
            check_number(label, key, value, integer=True)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(check_number(label, key, value, integer=isinstance(value, int)))
    elif annotation is str:
        ok = isinstance(value, str)
    elif origin is dict or annotation is dict:
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"{label}: field '{key}' must be {name}, got {json.dumps(value)}")
    return value


def build_dataclass(cls, data: dict, label: str):
    """Build a frozen dataclass from a dict, rejecting unknown, missing and mistyped keys.

    Fields whose metadata has `positive=True` must be > 0; `nonnegative=True` must be >= 0.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields) - set(DOC_KEYS))
    if unknown:
        raise ConfigError(f"{label}: unknown field '{unknown[0]}' "
                          f"(known fields: {', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        if name not in data:
            has_default = (field.default is not dataclasses.MISSING
                           or field.default_factory is not dataclasses.MISSING)
            if not has_default:
                raise ConfigError(f"{label}: missing field '{name}'")
            continue
        value = _check_type(label, name, data[name], hints[name])
        if field.metadata.get("positive") and value is not None and not value > 0:
            raise ConfigError(f"{label}: field '{name}' must be > 0, got {value}")
        if field.metadata.get("nonnegative") and value is not None and not value >= 0:
            raise ConfigError(f"{label}: field '{name}' must be >= 0, got {value}")
        values[name] = value
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        problem = check()
        if problem:
            raise ConfigError(f"{label}: {problem}")
    return obj


def load_preset(cls, kind: str, name_or_path: str):
    """Load a preset of `kind` into dataclass `cls` from a bundled name or a JSON path."""
    data, label = read_preset_json(kind, name_or_path)
    if "name" not in data and "name" in {f.name for f in dataclasses.fields(cls)}:
        data["name"] = Path(name_or_path).stem
    return build_dataclass(cls, data, label)


def positive(**kwargs):
    """Field metadata marker: the value must be > 0."""
    return dataclasses.field(metadata={"positive": True}, **kwargs)


def nonnegative(**kwargs):
    """Field metadata marker: the value must be >= 0."""
    return dataclasses.field(metadata={"nonnegative": True}, **kwargs)


def replace_fields(obj, changes: dict, label: str):
    """`obj` (a frozen preset dataclass) with some fields changed by `dataclasses.replace`,
    each change checked by the rules `build_dataclass` applies to a preset file (known field,
    type, > 0 / >= 0 markers) and the result by the class's `validate`; ConfigError naming
    `label` and the field otherwise."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    values = {}
    for key, value in changes.items():
        field = fields.get(key)
        if field is None:
            raise ConfigError(f"{label}: unknown field '{key}' "
                              f"(known fields: {', '.join(sorted(fields))})")
        value = _check_type(label, key, value, hints[key])
        if field.metadata.get("positive") and value is not None and not value > 0:
            raise ConfigError(f"{label}: field '{key}' must be > 0, got {value}")
        if field.metadata.get("nonnegative") and value is not None and not value >= 0:
            raise ConfigError(f"{label}: field '{key}' must be >= 0, got {value}")
        values[key] = value
    new = dataclasses.replace(obj, **values)
    check = getattr(new, "validate", None)
    problem = check() if check is not None else None
    if problem:
        raise ConfigError(f"{label}: {problem}")
    return new


def parse_dims(text: str | None, option: str, form: str, example: str):
    """'AxB' -> (A, B) of positive integers, None when absent; ConfigError naming `option`
    and the expected `form` (e.g. 'WxH') when malformed."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,18})\s*[xX]\s*(\d{1,18})\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ConfigError(f"{option}: expected {form} with positive integers, "
                          f"e.g. {example}, got '{text}'")
    return int(match.group(1)), int(match.group(2))
