"""Numba kernels that turn a Program's per-PE arrays into the engine's inputs
(emulator/mesh/engine.py), in one pass where numpy would make several over strided
copies."""

import numpy as np

from emulator.jit import njit
from emulator.mesh.kernels import pack_ports


@njit(nrt=False)
def pack_routes(route_rx, route_tx, slots, tables):
    """tables[(slot * P + pe) * 2 + side] = the rx (side 0) or tx (side 1) entry of PE pe
    for color slots[slot], in the kernels' packed form (`pack_ports`; route_rx,
    route_tx: [P, colors] unsigned integers)."""
    num_pes = route_rx.shape[0]
    for pe in range(num_pes):
        for slot in range(slots.shape[0]):
            color = slots[slot]
            at = (slot * num_pes + pe) * 2
            for side in range(2):
                entry = route_rx[pe, color] if side == 0 else route_tx[pe, color]
                tables[at + side] = pack_ports(np.int64(entry))
