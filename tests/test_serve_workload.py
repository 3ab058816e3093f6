"""emu serve workloads: trace files (emu, Azure, BurstGPT columns), DISTs, arrivals."""

import json

import numpy as np
import pytest

from emulator.hw.errors import ConfigError
from emulator.serve.workload import load_workload, parse_arrival, parse_dist, synthetic


def test_emu_jsonl_and_csv_read_alike(tmp_path):
    rows = [{"arrival_s": 1.5, "prompt_tokens": 10, "output_tokens": 3},
            {"arrival_s": 0.5, "prompt_tokens": 20, "output_tokens": 1}]
    jl = tmp_path / "w.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    csv = tmp_path / "w.csv"
    csv.write_text("arrival_s,prompt_tokens,output_tokens\n1.5,10,3\n0.5,20,1\n")
    for path in (jl, csv):
        w = load_workload(path)
        np.testing.assert_array_equal(w.arrival_s, [0.0, 1.0])     # sorted, shifted to 0
        np.testing.assert_array_equal(w.prompt_tokens, [20, 10])
        np.testing.assert_array_equal(w.output_tokens, [1, 3])


def test_azure_trace_columns_and_timestamps(tmp_path):
    path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:46.6805900,374,44\n"
                    "2023-11-16 18:15:50.9951690,396,109\n")
    w = load_workload(path)
    assert w.arrival_s[1] == pytest.approx(4.314579, abs=1e-6)
    assert w.prompt_tokens.tolist() == [374, 396] and w.output_tokens.tolist() == [44, 109]


def test_burstgpt_columns(tmp_path):
    path = tmp_path / "BurstGPT_1.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    "5,ChatGPT,472,18,490,Conversation log\n"
                    "45,GPT-4,1087,228,1315,Conversation log\n")
    w = load_workload(path)
    assert w.arrival_s.tolist() == [0.0, 40.0]
    assert w.prompt_tokens.tolist() == [472, 1087] and w.output_tokens.tolist() == [18, 228]


@pytest.mark.parametrize("text, message", [
    ("arrival_s,prompt_tokens\n0,5\n", "no output-length column"),
    ("arrival_s,prompt_tokens,output_tokens\n0,five,3\n", "row 2: field 'prompt_tokens'"),
    ("arrival_s,prompt_tokens,output_tokens\n0,0,3\n", "positive integer"),
    ("arrival_s,prompt_tokens,output_tokens\n", "no requests"),
    ("arrival_s,prompt_tokens,output_tokens\nsoon,4,3\n", "field 'arrival_s'"),
])
def test_bad_trace_files_name_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_workload(path)
    assert "bad.csv" in str(info.value)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 2}\n{oops\n')
    with pytest.raises(ConfigError, match="bad.jsonl: line 2"):
        load_workload(path)


def test_dists_sample_their_shapes():
    rng = np.random.default_rng(0)
    assert set(parse_dist("64").sample(rng, 100)) == {64}
    u = parse_dist("uniform:10,20").sample(rng, 20000)
    assert u.min() == 10 and u.max() == 20 and abs(u.mean() - 15) < 0.1
    ln = parse_dist("lognormal:300,0.5").sample(rng, 20000)
    assert abs(np.median(ln) / 300 - 1) < 0.03 and ln.min() >= 1
    z = parse_dist("zipf:1.2,5,50").sample(rng, 20000)
    assert z.min() >= 5 and z.max() <= 50
    k = np.arange(5, 51)
    p = k ** -1.2 / np.sum(k ** -1.2)
    assert abs(np.mean(z == 5) - p[0]) < 0.01


def test_file_dist_resamples_a_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Timestamp,Request tokens,Response tokens\n0,7,1\n1,9,2\n")
    rng = np.random.default_rng(0)
    assert set(parse_dist(f"file:{path}").sample(rng, 200)) == {7, 9}
    assert set(parse_dist(f"file:{path}", "--osl").sample(rng, 200)) == {1, 2}
    assert set(parse_dist(f"file:{path}:Response tokens").sample(rng, 200)) == {1, 2}
    with pytest.raises(ConfigError, match="no column 'nope'"):
        parse_dist(f"file:{path}:nope")


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "uniform:5", "uniform:9,2",
                                  "lognormal:0,1", "zipf:0,10", "gauss:1,2", "file:/no/such"])
def test_bad_dists_name_the_option(text):
    with pytest.raises(ConfigError, match="--osl"):
        parse_dist(text, "--osl")


def test_poisson_and_gamma_arrivals_have_the_asked_rate_and_burstiness():
    isl, osl = parse_dist("8"), parse_dist("2")
    for arrival, cv in (("poisson", 1.0), ("gamma:3", 3.0), ("gamma:0.5", 0.5)):
        w = synthetic(10.0, 50_000, isl, osl, seed=1, arrival=arrival)
        gaps = np.diff(np.concatenate([[0.0], w.arrival_s]))
        assert abs(gaps.mean() * 10 - 1) < 0.03
        assert abs(gaps.std() / gaps.mean() / cv - 1) < 0.05
    with pytest.raises(ConfigError, match="--arrival"):
        parse_arrival("bursty")
    with pytest.raises(ConfigError, match="--rate"):
        synthetic(0.0, 10, isl, osl)


def test_synthetic_is_deterministic_for_a_seed():
    isl, osl = parse_dist("lognormal:100,1"), parse_dist("uniform:1,9")
    a, b = synthetic(3.0, 100, isl, osl, seed=4), synthetic(3.0, 100, isl, osl, seed=4)
    c = synthetic(3.0, 100, isl, osl, seed=5)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.prompt_tokens, c.prompt_tokens)


def test_bundled_workloads_load_and_match_their_documented_shapes():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "programs" / "workloads"
    shapes = {"chat.jsonl": (20, 1000, 100, 400), "summarise.jsonl": (800, 8000, 50, 400),
              "agentic.jsonl": (2000, 32000, 20, 300)}
    for name, (p_lo, p_hi, o_lo, o_hi) in shapes.items():
        w = load_workload(root / name)
        assert len(w) >= 200
        assert p_lo <= np.median(w.prompt_tokens) <= p_hi, name
        assert o_lo <= np.median(w.output_tokens) <= o_hi, name
