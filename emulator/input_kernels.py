"""Numba kernels that turn a Program's per-PE arrays into the engine's inputs
(emulator/mesh_engine.py), in one pass where numpy would make several over strided
copies."""

from emulator.jit import njit


@njit(nrt=False)
def pack_routes(route_rx, route_tx, slots, tables):
    """tables[(slot * P + pe) * 2 + side] = the rx (side 0) or tx (side 1) entry of PE pe
    for color slots[slot], in mesh_kernels' packed form: the N E S W R bits, and bit 5
    if any other bit is set (route_rx, route_tx: [P, colors] unsigned integers)."""
    num_pes = route_rx.shape[0]
    for pe in range(num_pes):
        for slot in range(slots.shape[0]):
            color = slots[slot]
            at = (slot * num_pes + pe) * 2
            for side in range(2):
                entry = route_rx[pe, color] if side == 0 else route_tx[pe, color]
                tables[at + side] = (entry & 31) | (32 if entry > 31 else 0)
