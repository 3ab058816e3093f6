"""Exact cycle counts of one standalone GEMV-A / GEMV-B (docs/mapping.md, "GEMV cycles").

With divisible sizes and power-of-two mesh sides (k = K / pw columns and m = M / ph rows
per PE for GEMV-A; transposed for GEMV-B), docs/timing.md gives

    GEMV-A = [o + 2r + (ph-1)h + k] + L(k, m) + log2(pw) (o + 2r + m) + (pw-1) h
    L(k, m) = o + ceil(m/w) + [k > 1] (o + (k-1) ceil(m/w))      (vmul, then one vgemv)

(the bracket, the column multicast, is absent when ph == 1); GEMV-B swaps pw and ph.
Sizes that do not divide give per-PE k_i and m_j and trees with unmatched PEs; the closed
form becomes the recurrence `general_cycles` below, also asserted exactly.
"""

import math

import numpy as np
import pytest

from compiler.emit import emit_gemv
from compiler.route import tree_actions
from emulator.hw.mesh import load_mesh
from emulator.mesh.engine import run_numba
from isa.interpreter import run_reference

BASE = load_mesh("small")
DIVISIBLE = [(4, 4, 16, 32), (8, 2, 24, 16), (2, 8, 16, 24), (1, 4, 8, 8), (4, 1, 8, 8),
             (16, 8, 64, 48), (32, 32, 64, 128)]
RAGGED = [(3, 5, 7, 11), (5, 3, 13, 9), (6, 7, 20, 17), (7, 2, 3, 30), (3, 3, 2, 2)]


def local_cycles(k: int, m: int, o: int, w: int) -> int:
    """Cycles of a PE's local columns: vmul (or vset when k == 0), then one vgemv."""
    first = o + math.ceil(m / w)
    return first + (o + (k - 1) * math.ceil(m / w) if k > 1 else 0)


def closed_form(kind, M, K, pw, ph, mesh, dtype) -> int:
    """The documented closed form for divisible sizes and power-of-two sides."""
    o, h, r, w = mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency, mesh.simd_width(dtype)
    if kind == "A":
        k, m, bcast_len, tree_len = K // pw, M // ph, ph, pw
    else:
        k, m, bcast_len, tree_len = K // ph, M // pw, pw, ph
    bcast = o + 2 * r + (bcast_len - 1) * h + k if bcast_len > 1 else 0
    return (bcast + local_cycles(k, m, o, w) + int(math.log2(tree_len)) * (o + 2 * r + m)
            + (tree_len - 1) * h)


def general_cycles(gemv, mesh, dtype) -> int:
    """The model for any sizes: per-line multicast, local columns, then the tree.

    Works in the GEMV-A orientation (line = row j, lanes = columns i); GEMV-B is the same
    with rows and columns exchanged. The tree is replayed in the engines' order (sends
    routed in (cycle, PE) order) with the link rule of docs/timing.md, because with a
    non-power-of-two line a PE without a partner sends early and may share links.
    """
    o, h, r, w = mesh.issue_overhead, mesh.hop_latency, mesh.ramp_latency, mesh.simd_width(dtype)
    out, inp = gemv.out, gemv.inp          # out: one chunk per line; inp: one per lane
    lanes, lines = inp.parts, out.parts
    finish = 0
    for line in range(lines):
        m = out.size(line)
        clock = []
        for lane in range(lanes):
            k = inp.size(lane)
            if lines == 1 or k == 0:
                x = 0
            else:
                x = o + k if line == 0 else o + 2 * r + line * h + k
            clock.append(x + local_cycles(k, m, o, w))
        finish = max(finish, replay_tree(clock, m, o, h, r))
    return finish


def replay_tree(clock: list, m: int, o: int, h: int, r: int) -> int:
    """Finish time of lane 0 after a tree sum of m wavelets starting at `clock` per lane."""
    lanes = len(clock)
    todo = {lane: list(tree_actions(lane, lanes)) for lane in range(lanes)}
    link_free, arrived = {}, {}
    while any(todo.values()):
        ready = [(clock[n], n) for n, acts in todo.items() if acts and
                 (acts[0][0] == "send" or n + (1 << acts[0][1]) in arrived)]
        _, lane = min(ready)
        act, s = todo[lane].pop(0)
        d = 1 << s
        if act == "send":
            head = clock[lane] + o + r
            for link in range(lane, lane - d, -1):
                start = max(head, link_free.get(link, 0))
                link_free[link] = start + m
                head = start + h
            arrived[lane] = head + r + m - 1
            clock[lane] += o + m
        else:
            clock[lane] = max(clock[lane] + o + m, arrived.pop(lane + d) + 1)
    return clock[0]


@pytest.mark.parametrize("kind", ["A", "B"])
@pytest.mark.parametrize("pw,ph,M,K", DIVISIBLE)
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_divisible_gemv_cycles_equal_closed_form(kind, pw, ph, M, K, dtype):
    mesh = BASE.with_mesh(pw, ph)
    gemv = emit_gemv(kind, M, K, pw, ph, mesh, dtype)
    result = run_numba(gemv.program, mesh, functional=False)
    assert result.cycles == closed_form(kind, M, K, pw, ph, mesh, dtype)
    assert result.cycles == general_cycles(gemv, mesh, dtype)


@pytest.mark.parametrize("kind", ["A", "B"])
@pytest.mark.parametrize("pw,ph,M,K", RAGGED)
def test_ragged_gemv_cycles_follow_the_recurrence(kind, pw, ph, M, K):
    mesh = BASE.with_mesh(pw, ph)
    gemv = emit_gemv(kind, M, K, pw, ph, mesh, "fp32")
    result = run_numba(gemv.program, mesh, functional=False)
    assert result.cycles == general_cycles(gemv, mesh, "fp32")


@pytest.mark.parametrize("kind", ["A", "B"])
@pytest.mark.parametrize("pw,ph,M,K", [(4, 4, 16, 32), (3, 5, 7, 11), (5, 3, 13, 9)])
def test_gemv_values_and_engines_agree(kind, pw, ph, M, K):
    mesh = BASE.with_mesh(pw, ph)
    gemv = emit_gemv(kind, M, K, pw, ph, mesh)
    rng = np.random.default_rng(pw * 100 + ph)
    weight = rng.standard_normal((M, K), dtype=np.float32)
    x = rng.standard_normal(K, dtype=np.float32)
    sram = gemv.sram_image(weight, x)
    fast = run_numba(gemv.program, mesh, sram=sram)
    slow = run_reference(gemv.program, mesh, sram=sram)
    assert fast.cycles == slow.cycles
    assert np.array_equal(fast.sram, slow.sram)
    y = gemv.read_y(fast.sram)
    assert np.allclose(y, weight @ x, rtol=1e-5, atol=1e-5)
