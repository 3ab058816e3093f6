"""Safe integer expressions for per-PE parameters (`.param p0 = 4*x + y`).

An expression is parsed with `ast` and may contain only integer literals, the names given
by the caller (x y lx ly w h W H in the assembler), unary + and -, the binary operators
+ - * // % and parentheses. It is evaluated once for a whole rectangle of PEs with numpy
int64 arrays, with Python's floor semantics for // and %. Anything else raises
`ExprError` carrying the 0-based character offset of the offending part.
"""

import ast

import numpy as np

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

_BINOPS = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.FloorDiv: np.floor_divide,
    ast.Mod: np.mod,
}
_UNARY = {ast.UAdd: np.positive, ast.USub: np.negative}


class ExprError(ValueError):
    """A malformed or unsafe expression; `offset` is where in the text the problem is."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.offset = offset


def parse_expr(text: str, names) -> ast.expr:
    """Parse `text` and check that it uses only the allowed syntax and `names`."""
    stripped = text.strip()
    lead = len(text) - len(text.lstrip())
    if not stripped:
        raise ExprError("expected an integer expression", 0)
    try:
        tree = ast.parse(stripped, mode="eval").body
    except SyntaxError as exc:
        raise ExprError(f"malformed expression ({exc.msg})",
                        lead + max((exc.offset or 1) - 1, 0)) from None
    _check(tree, frozenset(names), lead)
    return tree


def _check(node: ast.AST, names: frozenset, lead: int) -> None:
    """Raise ExprError at the first node outside the allowed grammar."""
    where = lead + getattr(node, "col_offset", 0)
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise ExprError("only + - * // % are allowed in expressions", where)
        _check(node.left, names, lead)
        _check(node.right, names, lead)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise ExprError("only unary + and - are allowed in expressions", where)
        _check(node.operand, names, lead)
    elif isinstance(node, ast.Constant):
        if type(node.value) is not int:
            raise ExprError(f"expected an integer, got {node.value!r}", where)
        if not INT32_MIN <= node.value <= INT32_MAX:
            raise ExprError(f"integer {node.value} does not fit in 32 bits", where)
    elif isinstance(node, ast.Name):
        if node.id not in names:
            allowed = " ".join(sorted(names, key=lambda n: (n.lower(), n)))
            raise ExprError(f"unknown name '{node.id}' (expressions may use: {allowed})",
                            where)
    else:
        raise ExprError("expected an integer expression of + - * // % and parentheses",
                        where)


def eval_expr(tree: ast.expr, env: dict, shape, lead: int = 0) -> np.ndarray:
    """Evaluate a checked expression over numpy arrays; result is int64 of `shape`."""
    value = _eval(tree, env, lead)
    return np.broadcast_to(np.asarray(value, np.int64), shape).copy()


def _eval(node: ast.AST, env: dict, lead: int):
    if isinstance(node, ast.Constant):
        return np.int64(node.value)
    if isinstance(node, ast.Name):
        return np.asarray(env[node.id], np.int64)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env, lead))
    left, right = _eval(node.left, env, lead), _eval(node.right, env, lead)
    if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and np.any(right == 0):
        raise ExprError("division by zero in expression", lead + node.right.col_offset)
    result = _BINOPS[type(node.op)](left, right)
    if np.any(np.abs(result) > 2**40):
        raise ExprError("expression value too large", lead + node.col_offset)
    return result


def evaluate(text: str, env: dict, shape) -> np.ndarray:
    """Parse, check and evaluate `text` over `env` (name -> array broadcastable to shape)."""
    tree = parse_expr(text, env.keys())
    lead = len(text) - len(text.lstrip())
    return eval_expr(tree, env, shape, lead)
