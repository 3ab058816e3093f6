"""Route pass: colors and router tables for the decode mapping (docs/mapping.md).

Four kinds of flows, each on its own colors, all fixed for the whole step:
- column multicast `MC`: PE (i, 0) -> every (i, j), j > 0 (x of a GEMV-A, relayout);
- row multicast `MR`: PE (0, j) -> every (i, j), i > 0 (x of a GEMV-B, q/k/v, softmax max);
- row tree step s (distance d = 2^s), color `ROW{s}`: PE (i, j) with i % 2d == d sends
  west to (i - d, j) (reductions toward the left column);
- column tree step s, color `COL{s}`: PE (i, j) with j % 2d == d sends north to (i, j - d).

Color budget: ceil(log2 pw) + ceil(log2 ph) + 2, checked against `mesh.num_colors`.
A color's routes from different flows never share a PE, so one static table serves every
message of the step; each (receiver, color) pair has exactly one sender.
"""

import json
from dataclasses import dataclass

import numpy as np

from emulator.hw.errors import FitError
from emulator.hw.mesh import MeshConfig
from isa.opcodes import DIRECTIONS, OPPOSITE, PORT_E, PORT_N, PORT_NAMES, PORT_R, PORT_S, PORT_W

DUMP_FLOWS_PES = 16384   # routes.json lists every flow up to this many PEs


@dataclass(frozen=True)
class Flow:
    """One routed message shape: a source PE and the PEs its color's routes deliver to."""

    name: str
    color: int
    source: tuple[int, int]
    receivers: frozenset            # of (x, y)
    hops: tuple                     # ((x, y, rx mask, tx mask), ...) router entries


@dataclass
class RoutePlan:
    """Output of the route pass: color indices and the router tables."""

    width: int
    height: int
    colors: dict                    # name -> color index
    route_rx: np.ndarray | None = None   # uint8 [W*H, colors]
    route_tx: np.ndarray | None = None

    @property
    def flows(self) -> list:
        """Every flow of the mapping (built on demand, see `build_flows`)."""
        return build_flows(self.width, self.height, self.colors)

    @property
    def num_colors(self) -> int:
        """Colors used."""
        return len(self.colors)

    def row_tree(self) -> list[int]:
        """Colors of the row-tree steps s = 0, 1, ..."""
        return [self.colors[f"ROW{s}"] for s in range(tree_steps(self.width))]

    def col_tree(self) -> list[int]:
        """Colors of the column-tree steps s = 0, 1, ..."""
        return [self.colors[f"COL{s}"] for s in range(tree_steps(self.height))]


def tree_steps(size: int) -> int:
    """ceil(log2 size): steps of a reduction tree over `size` PEs."""
    return max(0, (size - 1).bit_length())


def tree_actions(index: int, size: int) -> tuple:
    """The steps ('recv'|'send', s) PE `index` takes in a tree reduction toward index 0."""
    acts, s = [], 0
    while (1 << s) < size:
        d = 1 << s
        if index % (2 * d) == d:
            acts.append(("send", s))
            break
        if index % (2 * d) == 0 and index + d < size:
            acts.append(("recv", s))
        s += 1
    return tuple(acts)


def color_budget(pw: int, ph: int) -> int:
    """Colors the mapping needs: one per tree step in each direction plus two multicasts."""
    return tree_steps(pw) + tree_steps(ph) + 2


def assign_colors(pw: int, ph: int, mesh: MeshConfig) -> dict:
    """name -> color index; FitError when the mesh has too few colors."""
    need = color_budget(pw, ph)
    if need > mesh.num_colors:
        raise FitError(f"mapping on a {pw}x{ph} mesh needs {need} colors "
                       f"({tree_steps(pw)} row-tree + {tree_steps(ph)} column-tree steps + 2 "
                       f"multicasts), hardware '{mesh.name}' has {mesh.num_colors}")
    colors = {"MC": 0, "MR": 1}
    for s in range(tree_steps(pw)):
        colors[f"ROW{s}"] = len(colors)
    for s in range(tree_steps(ph)):
        colors[f"COL{s}"] = len(colors)
    return colors


def _line_flow(name, color, points, first_rx=PORT_R, deliver_all=False) -> Flow:
    """A flow along a straight line of PEs `points` (source first)."""
    hops, receivers = [], set()
    for n, (x, y) in enumerate(points):
        rx = first_rx if n == 0 else _port_towards(points[n], points[n - 1])
        tx = 0
        if n + 1 < len(points):
            tx |= _port_towards(points[n], points[n + 1])
        if n > 0 and (deliver_all or n + 1 == len(points)):
            tx |= PORT_R
            receivers.add((x, y))
        hops.append((x, y, rx, tx))
    return Flow(name, color, points[0], frozenset(receivers), tuple(hops))


def _port_towards(a, b) -> int:
    """The port of PE a facing its neighbour b."""
    for port, dx, dy in DIRECTIONS:
        if (a[0] + dx, a[1] + dy) == tuple(b):
            return port
    raise ValueError(f"{a} and {b} are not neighbours")


def build_flows(pw: int, ph: int, colors: dict) -> list[Flow]:
    """Every flow of the mapping (see module docstring)."""
    flows = []
    if ph > 1:
        for i in range(pw):
            flows.append(_line_flow(f"MC col {i}", colors["MC"], [(i, j) for j in range(ph)],
                                    deliver_all=True))
    if pw > 1:
        for j in range(ph):
            flows.append(_line_flow(f"MR row {j}", colors["MR"], [(i, j) for i in range(pw)],
                                    deliver_all=True))
    for s in range(tree_steps(pw)):
        d = 1 << s
        for j in range(ph):
            for i in range(d, pw, 2 * d):
                flows.append(_line_flow(f"ROW{s} ({i},{j})", colors[f"ROW{s}"],
                                        [(x, j) for x in range(i, i - d - 1, -1)]))
    for s in range(tree_steps(ph)):
        d = 1 << s
        for i in range(pw):
            for j in range(d, ph, 2 * d):
                flows.append(_line_flow(f"COL{s} ({i},{j})", colors[f"COL{s}"],
                                        [(i, y) for y in range(j, j - d - 1, -1)]))
    return flows


def route(pw: int, ph: int, mesh: MeshConfig) -> RoutePlan:
    """The route pass: colors and router tables for a pw x ph mapping (vectorised).

    The flows are not built here (a whole wafer has millions of router entries);
    `plan.flows` builds them on demand for `verify_routes` and the dump.
    """
    colors = assign_colors(pw, ph, mesh)
    plan = RoutePlan(pw, ph, colors)
    plan.route_rx, plan.route_tx = grid_tables(pw, ph, colors)
    return plan


def grid_tables(pw: int, ph: int, colors: dict) -> tuple[np.ndarray, np.ndarray]:
    """Router tables [pw*ph, colors] computed from coordinates (same as `tables`).

    Every entry depends on x alone (row colors) or y alone (column colors), so each color
    is computed on one line [1, pw] or [ph, 1] and broadcast over the mesh.
    """
    X, Y = np.arange(pw)[None, :], np.arange(ph)[:, None]
    rx = np.zeros((ph, pw, len(colors)), np.uint8)
    tx = np.zeros((ph, pw, len(colors)), np.uint8)
    if ph > 1:
        _line_multicast(rx, tx, colors["MC"], Y, ph, PORT_N, PORT_S)
    if pw > 1:
        _line_multicast(rx, tx, colors["MR"], X, pw, PORT_W, PORT_E)
    for s in range(tree_steps(pw)):
        _tree_step(rx, tx, colors[f"ROW{s}"], X, pw, 1 << s, PORT_E, PORT_W)
    for s in range(tree_steps(ph)):
        _tree_step(rx, tx, colors[f"COL{s}"], Y, ph, 1 << s, PORT_S, PORT_N)
    return rx.reshape(pw * ph, -1), tx.reshape(pw * ph, -1)


def _line_multicast(rx, tx, c, pos, size, back, forward) -> None:
    """Entries of a multicast from position 0 along every line of `size` PEs."""
    rx[..., c] = np.where(pos == 0, PORT_R, back)
    tx[..., c] = np.where(pos == 0, forward,
                          np.where(pos < size - 1, forward | PORT_R, PORT_R))


def _tree_step(rx, tx, c, pos, size, d, back, forward) -> None:
    """Entries of one tree step: position p with p % 2d == d sends d hops toward 0."""
    r = pos % (2 * d)
    active = pos - r + d < size            # the segment of this position has a sender
    sender, receiver = r == d, (r == 0) & active
    between = (r > 0) & (r < d) & active
    rx[..., c] = np.select([sender, between | receiver], [PORT_R, back], 0)
    tx[..., c] = np.select([sender | between, receiver], [forward, PORT_R], 0)


def tables(plan: RoutePlan) -> tuple[np.ndarray, np.ndarray]:
    """Router tables from the flows; raises if two flows give one PE a role on one color."""
    n = plan.width * plan.height
    rx = np.zeros((n, plan.num_colors), np.uint8)
    tx = np.zeros((n, plan.num_colors), np.uint8)
    owner: dict[tuple[int, int], str] = {}
    for flow in plan.flows:
        for x, y, r, t in flow.hops:
            pe = y * plan.width + x
            key = (pe, flow.color)
            if key in owner:
                raise AssertionError(f"PE ({x},{y}) has two roles on color {flow.color}: "
                                     f"{owner[key]} and {flow.name}")
            owner[key] = flow.name
            rx[pe, flow.color], tx[pe, flow.color] = r, t
    return rx, tx


# --------------------------------------------------------------------------- verify / dump


def walk(plan: RoutePlan, color: int, source: tuple[int, int]) -> set:
    """PEs a message sent by `source` on `color` reaches, following the router tables.

    Raises AssertionError if the route leaves the mesh, loops or enters a refusing port.
    """
    w, h = plan.width, plan.height
    stack, seen, delivered = [(source, PORT_R)], set(), set()
    while stack:
        (x, y), in_port = stack.pop()
        assert (x, y) not in seen, f"color {color} from {source} loops at ({x},{y})"
        seen.add((x, y))
        pe = y * w + x
        rx, tx = int(plan.route_rx[pe, color]), int(plan.route_tx[pe, color])
        assert rx & in_port, (f"color {color} from {source} enters ({x},{y}) by "
                              f"{PORT_NAMES[in_port]} which its route refuses")
        assert tx, f"color {color} from {source} has no route out of ({x},{y})"
        for port, dx, dy in DIRECTIONS:
            if tx & port:
                nx, ny = x + dx, y + dy
                assert 0 <= nx < w and 0 <= ny < h, (f"color {color} from {source} leaves "
                                                     f"the mesh at ({x},{y})")
                stack.append(((nx, ny), OPPOSITE[port]))
        if tx & PORT_R and (x, y) != source:
            delivered.add((x, y))
    return delivered


def verify_routes(plan: RoutePlan, mesh: MeshConfig) -> None:
    """Check the color budget, one role per PE and color, and that every flow's message
    reaches exactly its receivers without leaving the mesh."""
    assert plan.num_colors <= mesh.num_colors, "more colors than the hardware has"
    rx, tx = tables(plan)
    assert np.array_equal(rx, plan.route_rx) and np.array_equal(tx, plan.route_tx), \
        "router tables differ from the flows"
    flows = plan.flows
    for flow in flows:
        got = walk(plan, flow.color, flow.source)
        assert got == set(flow.receivers), (f"{flow.name}: reaches {sorted(got)}, expected "
                                            f"{sorted(flow.receivers)}")
    senders = {}
    for flow in flows:
        for r in flow.receivers:
            key = (r, flow.color)
            assert key not in senders, f"PE {r} receives color {flow.color} from two sources"
            senders[key] = flow.source


def routes_to_dict(plan: RoutePlan) -> dict:
    """A JSON-ready description of the colors and flows."""
    def ports(mask):
        names = [n for bit, n in PORT_NAMES.items() if mask & bit]
        return "|".join(names) if names else "-"

    return {"width": plan.width, "height": plan.height, "colors": plan.colors,
            "flows": [{"name": f.name, "color": f.color, "source": list(f.source),
                       "receivers": sorted(list(r) for r in f.receivers),
                       "routers": [[x, y, ports(r), ports(t)] for x, y, r, t in f.hops]}
                      for f in plan.flows]}


def dump_routes(plan: RoutePlan, max_pes: int = DUMP_FLOWS_PES) -> str:
    """Colors and flows as JSON text (one flow per line; flows omitted on big meshes)."""
    if plan.width * plan.height > max_pes:
        entries = {name: int(np.count_nonzero(plan.route_tx[:, c]))
                   for name, c in plan.colors.items()}
        return json.dumps({"width": plan.width, "height": plan.height,
                           "colors": plan.colors, "router_entries_per_color": entries,
                           "flows": f"omitted above {max_pes} PEs"}, indent=2) + "\n"
    data = routes_to_dict(plan)
    flows = data.pop("flows")
    head = json.dumps(data, indent=2)[:-2]
    body = ",\n".join("    " + json.dumps(f) for f in flows)
    return head + ',\n  "flows": [\n' + body + "\n  ]\n}\n"

