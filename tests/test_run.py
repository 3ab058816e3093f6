"""`emu run` end to end: values against the numpy reference, determinism, engines agree,
report keys, KV sizes of published models, and bad input at every stage."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from compiler import reference
from compiler.frontend import load_config, resolve_model
from compiler.weights import random_weights, save_weights
from emulator.cli import main
from emulator.views.trace import validate_trace

REPORT_KEYS = ("tokens", "ttft_s", "tpot_s", "tokens_per_s")
NESTED_KEYS = (("prefill", "cycles"), ("prefill", "seconds"), ("kv_transfer", "bytes"),
               ("kv_transfer", "bytes_per_token"), ("kv_transfer", "seconds"),
               ("decode", "cycles_per_token"), ("decode", "seconds_per_token"))


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def run_json(tmp_path, *args, name="r.json"):
    path = tmp_path / name
    result = invoke("run", *args, "--report", str(path), "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())


def test_functional_pipeline_matches_reference(tmp_path):
    """Prefill on the systolic model, decode on the mesh: tokens and all logits rows."""
    spec = resolve_model("tiny")
    weights = random_weights(spec, 3)
    wpath = tmp_path / "w.safetensors"
    save_weights(wpath, weights)
    prompt = [5, 17, 99, 3]
    logits_path = tmp_path / "l.npy"
    report = run_json(tmp_path, "--weights", str(wpath), "--prompt-tokens", "5,17,99,3",
                      "--max-new-tokens", "5", "--dtype", "fp32", "--mesh", "8x6",
                      "--logits", str(logits_path))
    tokens, ref_logits = reference.generate(spec, weights, prompt, 5)
    logits = np.load(logits_path)
    assert logits.shape == (5, spec.vocab_size) and logits.dtype == np.float32
    rel = np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()
    assert rel <= 1e-4
    assert report["tokens"] == list(tokens)
    for key in REPORT_KEYS:
        assert key in report
    for outer, inner in NESTED_KEYS:
        assert inner in report[outer]
    assert report["decode"]["steps"] == 4
    layers = report["decode"]["per_layer_cycles"]
    assert len(layers) == spec.num_layers and all(c > 0 for c in layers)
    assert sum(layers) < report["decode"]["cycles"][-1]


def test_default_run_prints_table():
    result = invoke("run", "--max-new-tokens", "3")
    assert result.exit_code == 0
    assert "time to first token" in result.output and "tokens/s" in result.output


def test_runs_are_deterministic_and_engines_agree(tmp_path):
    args = ("--mesh", "6x4", "--max-new-tokens", "3", "--prompt-len", "5")
    first = run_json(tmp_path, *args, name="a.json")
    second = run_json(tmp_path, *args, name="b.json")
    ref = run_json(tmp_path, *args, "--engine", "reference", name="c.json")
    def strip(report):
        return {k: v for k, v in report.items() if k not in ("host_seconds", "engine")}

    assert strip(second) == strip(first)
    assert strip(ref) == strip(first)


def test_timing_only_matches_functional_cycles(tmp_path):
    args = ("--mesh", "6x4", "--max-new-tokens", "3", "--prompt-len", "5")
    functional = run_json(tmp_path, *args, name="f.json")
    timing = run_json(tmp_path, *args, "--timing-only", name="t.json")
    assert timing["decode"]["cycles"] == functional["decode"]["cycles"]
    assert timing["prefill"]["cycles"] == functional["prefill"]["cycles"]
    assert timing["kv_transfer"] == functional["kv_transfer"]


def test_kv_bytes_per_token_of_published_models():
    assert load_config("programs/models/llama-3.1-70b.json").kv_bytes_per_token(2) == 327_680
    assert load_config("programs/models/llama-3.1-8b.json").kv_bytes_per_token(2) == 131_072


def test_report_kv_bytes_follow_the_formula(tmp_path):
    spec = resolve_model("tiny")
    report = run_json(tmp_path, "--prompt-len", "6", "--max-new-tokens", "2")
    per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 2
    assert report["kv_transfer"]["bytes_per_token"] == per_token
    assert report["kv_transfer"]["bytes"] == 6 * per_token


def test_overlap_kv_hides_transfer(tmp_path):
    serial = run_json(tmp_path, "--prompt-len", "64", "--max-new-tokens", "2", name="s.json")
    overlap = run_json(tmp_path, "--prompt-len", "64", "--max-new-tokens", "2", "--overlap-kv",
                       name="o.json")
    assert overlap["kv_transfer"]["overlapped"]
    assert overlap["kv_transfer"]["exposed_seconds"] <= serial["kv_transfer"]["exposed_seconds"]
    assert overlap["ttft_s"] <= serial["ttft_s"]


def test_trace_file_schema(tmp_path):
    path = tmp_path / "t.json"
    assert invoke("run", "--max-new-tokens", "3", "--trace", str(path), "--quiet").exit_code == 0
    trace = json.loads(path.read_text())
    assert validate_trace(trace) == []
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert any(n.startswith("prefill chip") for n in names)
    assert any(n.startswith("wafer") for n in names) and any(n.startswith("link") for n in names)
    ops = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"].startswith("L1.")]
    assert {e["name"] for e in ops} >= {"L1.qkv", "L1.attn", "L1.mlp_down"}


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "bad.json").write_text("{ nope")
    cfg = json.loads(open("emulator/models/tiny.json").read())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "arch.json").write_text(json.dumps(cfg))
    (tmp_path / "w.safetensors").write_bytes(b"not a safetensors file")
    hw = json.loads(open("emulator/hw/presets/mesh-small.json").read())
    hw["sram_bytes"] = 0
    (tmp_path / "hw.json").write_text(json.dumps(hw))
    return tmp_path


@pytest.mark.parametrize("args, needle", [
    (["{d}/bad.json"], "malformed JSON"),
    (["{d}/arch.json"], "GPT2LMHeadModel"),
    (["--weights", "{d}/w.safetensors"], "w.safetensors"),
    (["--hw", "{d}/hw.json"], "sram_bytes"),
    (["--hw", "nosuch"], "no such mesh preset"),
    (["--prefill-hw", "trn9"], "no such prefill preset"),
    (["--link", "smoke-signals"], "no such link preset"),
    (["--prompt-tokens", "1,2,99999"], "outside the vocabulary"),
    (["--prompt-tokens", "1,x"], "--prompt-tokens"),
    (["--prompt-len", "300"], "max_position_embeddings"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--mesh", "4by4"], "--mesh"),
    (["--mesh", "1x1"], "fit"),
    (["--timing-only", "--logits", "{d}/l.npy"], "--logits"),
])
def test_bad_input_exits_2_without_files(bad_files, args, needle):
    outputs = [bad_files / n for n in ("r.json", "l.npy", "t.json")]
    args = [a.format(d=bad_files) for a in args]
    result = CliRunner().invoke(main, ["run", *args, "--report", str(outputs[0]),
                                       "--trace", str(outputs[2])])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert result.output.splitlines() == [result.output.strip()]   # one line, nothing else
    assert "Traceback" not in result.output
    assert not any(p.exists() for p in outputs)


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    result = invoke("run", "--max-new-tokens", "2", "--plots", str(tmp_path / "p"), "--quiet")
    assert result.exit_code == 0
    for name in ("sram.png", "busy.png", "links.png", "time.png"):
        data = (tmp_path / "p" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
