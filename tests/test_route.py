"""The route pass: color budget, tree roles, and that every flow reaches exactly its receivers."""

import json

import numpy as np
import pytest

from compiler.route import (
    color_budget,
    dump_routes,
    route,
    tree_actions,
    tree_steps,
    verify_routes,
    walk,
)
from emulator.hw.errors import FitError
from emulator.hw.mesh import load_mesh
from isa.opcodes import PORT_E, PORT_R, PORT_W

MESH = load_mesh("small")


def test_tree_actions_follow_the_logarithmic_tree():
    assert tree_actions(0, 8) == (("recv", 0), ("recv", 1), ("recv", 2))
    assert tree_actions(1, 8) == (("send", 0),)
    assert tree_actions(6, 8) == (("recv", 0), ("send", 1))
    assert tree_actions(4, 6) == (("recv", 0), ("send", 2))
    assert tree_actions(4, 5) == (("send", 2),)
    assert tree_actions(0, 1) == ()


@pytest.mark.parametrize("pw,ph", [(1, 1), (3, 2), (4, 4), (5, 3), (8, 4), (7, 9), (64, 64)])
def test_routes_verify(pw, ph):
    plan = route(pw, ph, MESH.with_mesh(pw, ph))
    verify_routes(plan, MESH.with_mesh(pw, ph))
    assert plan.num_colors == color_budget(pw, ph) == tree_steps(pw) + tree_steps(ph) + 2


def test_row_tree_route_shape():
    plan = route(8, 1, MESH.with_mesh(8, 1))
    c = plan.colors["ROW2"]
    assert plan.route_rx[4, c] == PORT_R and plan.route_tx[4, c] == PORT_W
    assert plan.route_rx[2, c] == PORT_E and plan.route_tx[2, c] == PORT_W
    assert plan.route_tx[0, c] == PORT_R
    assert walk(plan, c, (4, 0)) == {(0, 0)}
    assert walk(plan, plan.colors["MR"], (0, 0)) == {(i, 0) for i in range(1, 8)}


def test_too_many_colors_is_a_fit_error():
    few = load_mesh("small").__class__(**{**load_mesh("small").__dict__, "num_colors": 5})
    with pytest.raises(FitError, match="needs 8 colors"):
        route(8, 8, few.with_mesh(8, 8))


def test_verify_catches_a_broken_table():
    plan = route(4, 4, MESH.with_mesh(4, 4))
    plan.route_tx = plan.route_tx.copy()
    plan.route_tx[1, plan.colors["ROW0"]] = 0
    with pytest.raises(AssertionError):
        verify_routes(plan, MESH.with_mesh(4, 4))


def test_dump_is_json():
    data = json.loads(dump_routes(route(3, 2, MESH.with_mesh(3, 2))))
    assert data["colors"]["MC"] == 0 and data["flows"]
    assert np.all([len(f["receivers"]) >= 1 for f in data["flows"]])
