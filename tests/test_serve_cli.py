"""`emu serve` from the command line: the DESIGN 5.1 report keys, outputs, bad input."""

import json

import pytest
from click.testing import CliRunner

from emulator.cli import main
from emulator.views.trace import validate_trace

REPORT_KEYS = ("requests", "completed", "duration_s", "ttft_s", "tpot_s", "e2e_s",
               "goodput_rps", "throughput_tokens_per_s", "utilization", "energy_j_per_token",
               "cost_usd_per_mtok")
SYNTHETIC = ["--rate", "20", "--requests", "120", "--isl", "uniform:8,100",
             "--osl", "uniform:1,30"]


def invoke(*args, cache):
    return CliRunner().invoke(main, ["serve", *args, "--cache-dir", str(cache)],
                              catch_exceptions=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-cache")


def test_report_to_stdout_has_the_design_keys(cache):
    result = invoke(*SYNTHETIC, "--slo-ttft", "0.01", "--slo-tpot", "0.001", "--report", "-",
                    "--quiet", cache=cache)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in REPORT_KEYS:
        assert key in report
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(report[key]) == {"mean", "p50", "p90", "p99"}
    assert set(report["utilization"]) == {"prefill", "decode", "link"}
    assert report["requests"] == 120
    assert report["completed"] + report["rejected"] == 120
    assert report["energy_j_per_token"] > 0 and report["cost_usd_per_mtok"] > 0
    assert report["costs"]["prefill_interp_error"] <= 0.02


def test_files_plots_trace_and_baseline(cache, tmp_path):
    report, trace, plots = tmp_path / "r.json", tmp_path / "t.json", tmp_path / "plots"
    result = invoke(*SYNTHETIC, "--max-batch", "4", "--decode-instances", "2", "--baseline",
                    "--report", str(report), "--trace", str(trace), "--plots", str(plots),
                    cache=cache)
    assert result.exit_code == 0, result.output
    assert "goodput" in result.stdout
    data = json.loads(report.read_text())
    assert data["baseline"]["comparison"]["goodput_ratio"] is not None
    assert data["baseline"]["cluster"]["mode"] == "colocated"
    t = json.loads(trace.read_text())
    assert validate_trace(t) == []
    names = {e["args"]["name"] for e in t["traceEvents"] if e["name"] == "process_name"}
    assert {"prefill instance 0", "decode instance 0"} <= names
    for name in ("latency_cdf.png", "queues.png", "utilization.png", "kv.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG"


def test_search_picks_a_point_and_reports_the_grid(cache, tmp_path):
    result = invoke(*SYNTHETIC, "--search", "--max-instances", "2", "--objective", "chip",
                    "--baseline",
                    "--report", str(tmp_path / "r.json"), "--plots", str(tmp_path / "p"),
                    cache=cache)
    assert result.exit_code == 0, result.output
    search = json.loads((tmp_path / "r.json").read_text())["search"]
    assert len(search["points"]) == 4
    best = max(search["points"], key=lambda q: (q["goodput_per_chip"], -q["chips"]))
    assert (search["best"]["prefill_instances"], search["best"]["decode_instances"]) == \
        (best["prefill_instances"], best["decode_instances"])
    assert (tmp_path / "p" / "search.png").is_file()
    base = search["baseline_points"]
    assert [q["instances"] for q in base] == sorted({q["instances"] for q in base})
    top = max(q["goodput_per_chip"] for q in base)
    assert search["split_benefit"] == pytest.approx(
        max(q["goodput_per_chip"] for q in search["points"]) / top)


def test_closed_system_from_the_command_line(cache):
    result = invoke(*SYNTHETIC, "--closed", "3:0.01", "--report", "-", "--quiet", cache=cache)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "closed: 3 users" in report["workload"]["source"]
    assert report["completed"] + report["rejected"] == 120


def test_workload_file_runs(cache, tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("Timestamp,Request tokens,Response tokens\n0,20,4\n0.5,30,1\n1,300,2\n")
    result = invoke("--workload", str(path), "--report", "-", "--quiet", cache=cache)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["requests"] == 3 and report["completed"] == 2 and report["rejected"] == 1


@pytest.mark.parametrize("args, message", [
    (["--rate", "5"], "missing: --isl, --osl, --requests"),
    ([*SYNTHETIC, "--isl", "uniform:9"], "--isl"),
    ([*SYNTHETIC[:-2], "--osl", "zipf:0,3"], "--osl"),
    ([*SYNTHETIC, "--arrival", "bursty"], "--arrival"),
    ([*SYNTHETIC, "--decode-instances", "0"], "--decode-instances"),
    ([*SYNTHETIC, "--slo-ttft", "-1"], "--slo-ttft"),
    (["--workload", "/no/such.jsonl"], "no such workload file"),
    (["--workload", "x.jsonl", "--rate", "3"], "--workload excludes --rate"),
    ([*SYNTHETIC, "--hw", "nope"], "nope"),
    ([*SYNTHETIC, "--closed", "0:1"], "--closed USERS"),
])
def test_bad_input_is_one_line_and_exit_2(cache, args, message):
    result = CliRunner().invoke(main, ["serve", *args, "--cache-dir", str(cache)])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_output_paths_are_checked_before_work(cache, tmp_path):
    result = CliRunner().invoke(main, ["serve", *SYNTHETIC, "--report", str(tmp_path),
                                       "--cache-dir", str(cache)])
    assert result.exit_code == 2 and "--report" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(main, ["serve", *SYNTHETIC, "--plots", str(blocker),
                                       "--trace", str(tmp_path / "t.json"),
                                       "--cache-dir", str(cache)])
    assert result.exit_code == 2 and "--plots" in result.stderr
    assert not (tmp_path / "t.json").exists()


def test_trace_lanes_never_overlap():
    import numpy as np

    from emulator.serve.trace import lanes

    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 10, 300)
    ends = starts + rng.uniform(0, 2, 300)
    lane = lanes(starts, ends)
    for k in np.unique(lane):
        order = np.argsort(starts[lane == k])
        s, e = starts[lane == k][order], ends[lane == k][order]
        assert np.all(s[1:] >= e[:-1])
    # as few lanes as the deepest overlap needs
    depth = max(np.sum((starts <= t) & (ends > t)) for t in starts)
    assert lane.max() + 1 == depth


def test_serve_as_a_sweep_command_equals_the_cli(cache, tmp_path):
    """The sweep's `serve` command (emulator.serve.options.serve_report) gives the report
    `emu serve --report -` prints, and a serve spec with a preset axis validates."""
    from emulator.sweep.commands import COMMANDS
    from emulator.sweep.points import prepare, run_point
    from emulator.sweep.spec import load_spec

    cli = invoke(*SYNTHETIC, "--report", "-", "--quiet", cache=cache)
    assert cli.exit_code == 0, cli.output
    spec_path = tmp_path / "s.json"
    spec_path.write_text(json.dumps({
        "command": "serve",
        "fixed": {"rate": "20", "requests": "120", "isl": "uniform:8,100",
                  "osl": "uniform:1,30", "cache_dir": str(cache)},
        "grid": {"link.bandwidth_bytes_per_s": [25e9, 50e9]}}))
    points = prepare(load_spec(spec_path))
    assert len(points) == 2
    row = run_point(COMMANDS["serve"].function(), points[0].options)
    assert row["status"] == "ok"
    report = json.loads(cli.stdout)
    assert row["values"]["goodput_rps"] == report["goodput_rps"]
    assert row["values"]["ttft_s.p99"] == report["ttft_s"]["p99"]
