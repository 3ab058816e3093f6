"""Factored per-PE parameters: `compiler.emit.param_table` (built from per-row and
per-column values) and `isa.program.factor_params` against a dense table built the plain
way, on hypothesis-drawn shapes."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.emit import _Shape, param_table
from isa.asm import assemble
from isa.program import factor_params


def dense_table(ph: int, pw: int, params: dict, left: dict, names: list) -> np.ndarray:
    """The oracle: int32 [ph * pw, parameters], one column at a time."""
    table = np.zeros((ph, pw, max(1, len(names))), np.int32)
    for k, name in enumerate(names):
        if name in left:
            table[:, 0, k] = left[name]
        elif name in params:
            table[:, :, k] = params[name]
    return table.reshape(ph * pw, -1)


@st.composite
def parameter_sets(draw):
    """(ph, pw, params, left, names): values per row, per column, constant, broadcast
    views, 1-D per column, left-column only, both axes, or absent (zero)."""
    ph, pw = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))

    def small(shape):
        return rng.integers(-2, 3, shape)   # few values, so rows and columns repeat

    kinds = draw(st.lists(st.sampled_from(["row", "col", "flat", "const", "view", "left",
                                           "both", "absent"]), max_size=7))
    make = {"row": lambda: small((ph, 1)), "col": lambda: small((1, pw)),
            "flat": lambda: small(pw), "const": lambda: np.int64(rng.integers(-5, 5)),
            "view": lambda: np.broadcast_to(small(pw), (ph, pw)),
            "both": lambda: small((ph, pw))}
    params, left, names = {}, {}, []
    for k, kind in enumerate(kinds):
        name = f"{kind}{k}"
        names.append(name)
        if kind == "left":
            left[name] = small(ph)
        elif kind != "absent":
            params[name] = make[kind]()
    return ph, pw, params, left, names


@settings(max_examples=150, deadline=None)
@given(parameter_sets())
def test_param_table_equals_the_dense_table(case):
    ph, pw, params, left, names = case
    rows, index = param_table(_Shape(pw, ph), params, left, names)
    dense = dense_table(ph, pw, params, left, names)
    assert rows.dtype == np.int32 and index.dtype == np.int32
    assert np.array_equal(rows[index], dense)
    assert len(rows) == len(np.unique(dense, axis=0))   # distinct rows only


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 40), st.integers(0, 4), st.integers(0, 2 ** 32 - 1))
def test_factor_params_round_trip(n, k, seed):
    dense = np.random.default_rng(seed).integers(-3, 3, (n, k)).astype(np.int32)
    rows, index = factor_params(dense)
    assert len(rows) >= 1 and index.shape == (n,)
    assert np.array_equal(rows[index], dense)


def test_assembled_programs_read_parameters_per_pe():
    program = assemble(".mesh 3x2\n.sram 4\n.params 2\n.region a 0,0 2,1\n  nop\n"
                       ".param p0 = 2*x + y\n.param p1 = 7\n")
    assert len(program.param_rows) == 6
    assert [program.param(pe, 0) for pe in range(6)] == [0, 2, 4, 1, 3, 5]
    changed = program.with_params(np.zeros((6, 2), np.int32))
    assert len(changed.param_rows) == 1 and not changed.equals(program)
    assert program.equals(program.with_params(program.params))
