"""SCALE-Sim-compatible GEMM cycles: the fixed numbers of the issue and, for hypothesis-drawn
shapes and arrays, agreement with an explicit fold-by-fold count of SCALE-Sim 3.0's model."""

import json

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.cli import main
from emulator.prefill.gemm import gemm_scalesim, scalesim_cycles


@pytest.mark.parametrize("M, N, K, dataflow, cycles", [
    (128, 128, 128, "ws", 509),
    (128, 128, 128, "os", 381),
    (512, 1024, 1024, "ws", 57_215),
    (512, 1024, 1024, "os", 40_895),
    (512, 1024, 1024, "is", 44_991),
    (512, 4096, 4096, "ws", 915_455),
])
def test_fixed_numbers(M, N, K, dataflow, cycles):
    assert scalesim_cycles(M, N, K, 128, 128, dataflow) == cycles
    out = CliRunner().invoke(main, ["gemm", str(M), str(N), str(K), "--scalesim-compat",
                                    "--dataflow", dataflow, "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["compute_cycles"] == cycles == report["total_cycles"]
    assert 0 < report["utilization"] <= 1


def fold_by_fold(M, N, K, R, C, dataflow):
    """SCALE-Sim 3.0 compute model written as explicit loops over the folds."""
    total = 0
    if dataflow == "ws":      # weights K x N mapped onto R x C, M inputs streamed per fold
        for _k in range(0, K, R):
            for _n in range(0, N, C):
                total += 2 * R + C + M - 2
    elif dataflow == "os":    # outputs M x N mapped, K streamed
        for _m in range(0, M, R):
            for _n in range(0, N, C):
                total += K + R + C - 2
    else:                     # inputs K x M mapped, N streamed
        for _k in range(0, K, R):
            for _m in range(0, M, C):
                total += 2 * R + C + N - 2
    return total - 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 3000),
       st.integers(1, 256), st.integers(1, 256), st.sampled_from(["ws", "os", "is"]))
def test_matches_fold_loops(M, N, K, R, C, dataflow):
    result = gemm_scalesim(M, N, K, R, C, dataflow)
    assert result.compute_cycles == fold_by_fold(M, N, K, R, C, dataflow)
    assert result.total_cycles == result.compute_cycles
    assert result.folds * result.fold_cycles - 1 == result.compute_cycles


def test_array_option():
    out = CliRunner().invoke(main, ["gemm", "64", "64", "64", "--scalesim-compat",
                                    "--array", "32x16", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["compute_cycles"] == fold_by_fold(64, 64, 64, 32, 16, "ws")
