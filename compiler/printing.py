"""Printable forms of the compiler's IRs (TilePlan, Placement, RoutePlan and what they hold)
as s-expressions, one node per line, the way Amaranth prints its netlist: a dataclass is
`(kind field=value ...)` with its nested dataclasses, dicts and lists indented below, a
small array is written out, a large one as its dtype, shape and a digest of its bytes. The
printout is deterministic, so tests compare whole printouts with golden files
(tests/golden/) and a change to a pass shows up as a readable diff.
"""

import dataclasses
import hashlib
import re

import numpy as np

INLINE_ELEMENTS = 32     # arrays and sequences up to this many scalars print in full
SKIPPED_FIELDS = {"spec", "plan"}   # back-references to the IR the node was built from
# optional fields printed only when set (models and weight formats added later)
SKIPPED_WHEN_UNSET = frozenset({"weight_dtype", "class_bytes", "k_exp", "last_col", "last_row",
                                "lg_tree"})


def kind_of(obj) -> str:
    """'tile-plan' for TilePlan: the class name in kebab case."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", type(obj).__name__).lower()


def scalar_text(value) -> str | None:
    """The text of a scalar (None when `value` is not one)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        return value if re.fullmatch(r"[\w.\-/*+]+", value) else repr(value)
    return None


def array_text(array: np.ndarray) -> str:
    """A small array in full, a large one as dtype, shape and sha1 of its bytes."""
    array = np.ascontiguousarray(array)
    shape = "x".join(str(n) for n in array.shape)
    if array.size <= INLINE_ELEMENTS:
        return f"(array {array.dtype} {shape} {' '.join(scalar_text(v) for v in array.flat)})"
    digest = hashlib.sha1(array.tobytes()).hexdigest()[:12]
    return f"(array {array.dtype} {shape} sha1:{digest})"


def inline(value) -> str | None:
    """One-line text of a scalar, array or short sequence of scalars (None otherwise)."""
    text = scalar_text(value)
    if text is not None:
        return text
    if isinstance(value, np.ndarray):
        return array_text(value)
    if isinstance(value, (tuple, list, frozenset, set)) and len(value) <= INLINE_ELEMENTS:
        items = sorted(value) if isinstance(value, (frozenset, set)) else value
        texts = [inline(v) for v in items]
        if all(t is not None for t in texts):
            return "(" + " ".join(texts) + ")"
    return None


def to_sexpr(obj, depth: int = 0) -> str:
    """The s-expression printout of `obj` (an IR node, dict, sequence or scalar)."""
    pad = "  " * depth
    text = inline(obj)
    if text is not None:
        return pad + text
    if dataclasses.is_dataclass(obj):
        return _node(kind_of(obj), [(f.name, getattr(obj, f.name))
                                    for f in dataclasses.fields(obj)
                                    if f.name not in SKIPPED_FIELDS
                                    and not _default_batch(obj, f)
                                    and not (f.name in SKIPPED_WHEN_UNSET
                                             and getattr(obj, f.name) in (None, 0, False))],
                     depth)
    if isinstance(obj, dict):
        return _node("map", sorted(obj.items(), key=lambda kv: str(kv[0])), depth)
    if isinstance(obj, (tuple, list, frozenset, set)):
        items = sorted(obj, key=str) if isinstance(obj, (frozenset, set)) else obj
        return "\n".join([pad + "(seq", *(to_sexpr(v, depth + 1) for v in items)]) + ")"
    return pad + repr(obj)


def _default_batch(obj, f) -> bool:
    """A plan's `batch` field at its default 1 is left out (one-user printouts keep the
    golden files' text); a batched plan prints `batch=B`."""
    return ((f.name == "batch" and obj.batch == 1)
            or (f.name == "head_group" and obj.head_group == 0))


def _node(kind: str, items, depth: int) -> str:
    """`(kind key=inline ...)` then one indented line per nested item."""
    pad = "  " * depth
    heads, bodies = [], []
    for key, value in items:
        text = inline(value)
        if text is not None:
            heads.append(f"{inline(key) or str(key)}={text}")
        else:
            name, flat = inline(key) or str(key), to_sexpr(value)
            bodies.append(f"{pad}  {name}: {flat}" if "\n" not in flat
                          else f"{pad}  {name}:\n{to_sexpr(value, depth + 2)}")
    head = " ".join([f"({kind}", *heads])
    return "\n".join([pad + head, *bodies]) + ")"


def compiled_text(compiled) -> str:
    """Every stage of a compiled decode step but the code: tiles, placement, routes."""
    return "\n".join([to_sexpr(compiled.plan), to_sexpr(compiled.placement),
                      to_sexpr(compiled.routes)]) + "\n"
