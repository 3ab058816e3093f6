"""Trainium-mode GEMM and the engine model: closed forms of docs/prefill.md hold exactly.

Closed forms (TensorE cycles; L = LoadStationary, T = MultiplyMoving, d = DMA queue
cycles, lat = DMA latency):
- one 128x128x512 matmul with operands in SBUF: L + T = 32 + 512;
- a K-accumulation chain of n matmuls: L + n*T (each later LoadStationary is hidden);
- a chain whose moving tiles arrive by DMA: lat + max(d + n*T, n*d + T);
- `emu gemm 128 512 128` end to end: dA + dB + lat + T + evict + dC + lat;
- collectives: a ring over the chip's cores then over the chips (latency + bandwidth).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.hw.prefill import load_prefill
from emulator.prefill import costs, engine_model
from emulator.prefill import instructions as instr
from emulator.prefill.engine_model import schedule_reference
from emulator.prefill.gemm import gemm_trainium
from emulator.prefill.kernels import schedule_kernel
from emulator.prefill.verify import verify

HW = load_prefill("trn2")


def chain_program(n, n_moving=512, m=128, dma_bytes=0, dtype="bf16", pairs=False):
    """K-accumulation on core 0: LS + n MultiplyMoving (or n LS/MM pairs when `pairs`),
    moving tiles optionally DMA'd."""
    b = instr.Builder()
    b.begin_op("chain")
    dma = []
    if dma_bytes:
        cost = int(costs.dma_cycles(HW, dma_bytes, 1))
        dma = [b.one(instr.DMA_COPY, instr.DMA, 0, cost, lat=costs.dma_latency_cycles(HW))
               for _ in range(n)]
    for i in range(n):
        if i == 0 or pairs:
            b.one(instr.LOAD_STATIONARY, instr.PE, 0, int(costs.ls_cycles(HW, m, dtype)))
        b.one(instr.MULTIPLY_MOVING, instr.PE, 0, int(costs.mm_cycles(HW, n_moving, dtype)),
              deps=[dma[i]] if dma else [], flags=instr.FLAG_ACC if i else 0)
    return b.program([0])


def test_cost_model_numbers():
    assert int(costs.ls_cycles(HW, 128, "bf16")) == 32
    assert int(costs.mm_cycles(HW, 512, "bf16")) == 512
    assert int(costs.mm_cycles(HW, 16, "bf16")) == 64          # max(N, 64)
    assert int(costs.mm_cycles(HW, 512, "fp32")) == 4 * 512
    # Vector: N Vector cycles per input at 0.96 GHz, in 2.4 GHz TensorE cycles; the
    # 100-cycle overhead only when dependent; bf16 perf mode divides N
    assert int(costs.vector_cycles(HW, 512, 1)) == 512 * 5 // 2 == 1280
    assert int(costs.vector_cycles(HW, 512, 2, speedup=2)) == 1280
    assert int(costs.vector_cycles(HW, 512, 1, speedup=4)) == 320
    assert costs.vector_overhead(HW) == 250
    # Scalar: max(64, N) Scalar cycles at 1.2 GHz
    assert int(costs.scalar_cycles(HW, 512)) == 512 * 2
    assert int(costs.scalar_cycles(HW, 16)) == 64 * 2
    trn3 = load_prefill("trn3")
    assert int(costs.scalar_cycles(trn3, 512, bf16=True)) == 256 * 2   # 2 bf16 per lane
    assert int(costs.scalar_cycles(trn3, 512)) == 512 * 2
    assert int(costs.vector_exp_cycles(trn3, 512)) == 128 * 2          # 4x the Scalar exp


def test_vector_overhead_only_when_dependent():
    b = instr.Builder()
    b.dep_overhead = {instr.DVE: costs.vector_overhead(HW)}
    b.begin_op("v")
    c = int(costs.vector_cycles(HW, 512))
    first = b.one(instr.VEC_TT, instr.DVE, 0, c)
    b.one(instr.VEC_TT, instr.DVE, 0, c)                     # independent: pipelined
    dep = b.one(instr.VEC_TT, instr.DVE, 0, c, deps=[first + 1])   # needs the one before
    b.one(instr.VEC_TT, instr.DVE, 0, c, deps=[first])       # an older producer: no drain
    batch = b.emit(3, instr.VEC_TT, instr.DVE, 0, c, deps=[np.array([dep, dep + 2, first])])
    cost = b.program([0]).instr["cost"]
    assert list(cost[:4]) == [c, c, c + 250, c]
    assert list(cost[batch]) == [c, c + 250, c]
    assert engine_model.simulate(b.program([0])).cycles == 7 * c + 2 * 250


@pytest.mark.parametrize("chips", [1, 2, 4, 16])
@pytest.mark.parametrize("nbytes", [4096, 64 * 2**20])
def test_collective_closed_forms(chips, nbytes):
    """Ring over the chip's C cores, then over the N chips (latency + bandwidth terms)."""
    C = HW.cores_per_chip
    seconds = (C - 1) / C * nbytes / HW.collective_bytes_per_s + (C - 1) * \
        HW.collective_latency_s
    if chips > 1:
        seconds += (chips - 1) / chips * nbytes / HW.link_bytes_per_s + (chips - 1) * \
            HW.link_latency_s
    assert costs.ring_cycles(HW, nbytes, C, chips) == int(np.ceil(seconds * 2.4e9 - 1e-9))
    assert costs.all_reduce_cycles(HW, nbytes, C, chips) == \
        int(np.ceil(2 * seconds * 2.4e9 - 1e-9))
    assert costs.ring_cycles(HW, nbytes, 1, 1) == 0


def test_single_matmul_in_sbuf():
    sched = engine_model.simulate(chain_program(1))
    assert sched.cycles == 32 + 512


@pytest.mark.parametrize("n", [1, 2, 7, 32])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("pairs", [False, True])
def test_k_accumulation_chain(n, dtype, pairs):
    """Later LoadStationary instructions are hidden behind the MultiplyMoving before them."""
    L = int(costs.ls_cycles(HW, 128, dtype))
    T = int(costs.mm_cycles(HW, 512, dtype))
    sched = engine_model.simulate(chain_program(n, dtype=dtype, pairs=pairs))
    assert sched.cycles == L + n * T
    assert sched.busy[instr.PE] == L + n * T


@pytest.mark.parametrize("n, nbytes", [(4, 128 * 512 * 2), (6, 128 * 512 * 4), (5, 8192)])
def test_dma_stall(n, nbytes):
    d = int(costs.dma_cycles(HW, nbytes, 1))
    lat = costs.dma_latency_cycles(HW)
    T = int(costs.mm_cycles(HW, 512, "bf16"))
    with_dma = engine_model.simulate(chain_program(n, dma_bytes=nbytes)).cycles
    assert with_dma == lat + max(d + n * T, n * d + T)
    compute_only = engine_model.simulate(chain_program(n)).cycles
    if d > T:   # DMA-bound: the TensorE waits for every tile
        assert with_dma - compute_only == lat + n * d + T - (32 + n * T)


def test_gemm_single_tile_end_to_end():
    """emu gemm 128 512 128: load A^T, B; LoadStationary; MultiplyMoving; evict; store."""
    r = gemm_trainium(HW, 128, 512, 128)
    dA = int(costs.dma_cycles(HW, 128 * 128 * 2, 1))
    dB = int(costs.dma_cycles(HW, 128 * 512 * 2, 1))
    dC = dB
    lat = costs.dma_latency_cycles(HW)
    evict = int(costs.scalar_cycles(HW, 512))
    assert r.compute_cycles == 32 + 512
    assert r.total_cycles == dA + dB + lat + 512 + evict + dC + lat == 6036


def test_gemm_values_fp32_and_bf16():
    rng = np.random.default_rng(0)
    M, N, K = 200, 700, 300
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    for dataflow in ("ws", "is"):
        r = gemm_trainium(HW, M, N, K, dataflow, "fp32", a, b)
        np.testing.assert_allclose(r.values, a @ b, rtol=1e-5, atol=1e-4)
    r = gemm_trainium(HW, M, N, K, "ws", "bf16", a, b)
    assert np.abs(r.values - a @ b).max() < 0.05 * np.abs(a @ b).max()


def test_gemm_large_is_compute_bound():
    r = gemm_trainium(HW, 512, 4096, 4096)
    assert verify(r.program, HW) == []
    macs_cycles = 512 * 4096 * 4096 // (128 * 128)
    assert r.compute_cycles >= macs_cycles == r.roofline_cycles
    assert r.roofline_cycles <= r.total_cycles < 1.3 * r.roofline_cycles


@st.composite
def random_streams(draw):
    """Random instruction streams: queues, kinds, costs, latencies, backward deps."""
    n = draw(st.integers(1, 60))
    n_queues = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    queue = rng.integers(0, n_queues, n).astype(np.int32)
    kind = np.where(queue == 0, rng.integers(1, 3, n), 0).astype(np.int8)  # queue 0 = PE
    cost = rng.integers(0, 600, n).astype(np.int64)
    lat = rng.integers(0, 50, n).astype(np.int64)
    dep = np.full((n, instr.MAX_DEPS), -1, np.int32)
    for i in range(1, n):
        k = rng.integers(0, instr.MAX_DEPS + 1)
        dep[i, :k] = rng.integers(-1, i, k)
    return queue, kind, cost, lat, dep, n_queues


@settings(max_examples=100, deadline=None)
@given(random_streams())
def test_kernel_matches_reference(stream):
    fast = schedule_kernel(*stream)
    slow = schedule_reference(*stream)
    for x, y in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(x, y)
