"""`emu sweep`: specs, expansion, and sweeps on a 2-worker Dask LocalCluster (started once
for the module): the same rows as the points one by one through `emu run`, a worker killed
mid-sweep, an interrupted sweep resumed without computing a point twice, failing points."""

import dataclasses
import json
import re
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.hw.errors import ConfigError
from emulator.hw.mesh import load_mesh
from emulator.sweep import load_spec, run_sweep
from emulator.sweep.points import flatten, prepare
from emulator.sweep.store import read_results

HELPER = "tests.sweep_helpers:square"


def _main():
    from emulator.cli import main

    return main


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def client():
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)
    with Client(cluster) as c:
        yield c
    cluster.close()


# ----------------------------------------------------------------- specs and points

def test_grid_zip_samples_expand(tmp_path):
    spec = load_spec(write(tmp_path, "g.yaml", """
command: gemm
fixed: {k: 64}
grid:
  m: [1, 2, 3]
  n: [10, 20]
"""))
    assert spec.points == [{"k": 64, "m": m, "n": n} for m in (1, 2, 3) for n in (10, 20)]
    spec = load_spec(write(tmp_path, "z.json", json.dumps(
        {"command": "gemm", "fixed": {"k": 64}, "zip": {"m": [1, 2], "n": [10, 20]}})))
    assert spec.points == [{"k": 64, "m": 1, "n": 10}, {"k": 64, "m": 2, "n": 20}]
    text = json.dumps({"command": "run", "samples": {"n": 50, "seed": 3, "axes": {
        "hw.sram_bytes": {"low": 16384, "high": 65536, "log": True},
        "hw.clock_hz": {"low": 0.5e9, "high": 1.5e9},
        "dtype": ["bf16", "fp32"]}}})
    a = load_spec(write(tmp_path, "s.json", text))
    b = load_spec(write(tmp_path, "s2.json", text))
    assert a.points == b.points and len(a.points) == 50
    for p in a.points:
        assert isinstance(p["hw.sram_bytes"], int) and 16384 <= p["hw.sram_bytes"] <= 65536
        assert isinstance(p["hw.clock_hz"], float) and 0.5e9 <= p["hw.clock_hz"] <= 1.5e9
        assert p["dtype"] in ("bf16", "fp32")
    assert {p["dtype"] for p in a.points} == {"bf16", "fp32"}
    # log-uniform: about half the draws below the geometric mean 32768
    below = sum(p["hw.sram_bytes"] < 32768 for p in a.points)
    assert 12 <= below <= 38


def test_presets_are_data_with_overrides(tmp_path):
    spec = load_spec(write(tmp_path, "p.yaml", """
command: run
fixed: {hw: small, prefill_hw: trn3}
grid:
  hw.sram_bytes: [32768, 65536]
  link.bandwidth_bytes_per_s: [1.0e+11]
"""))
    points = prepare(spec)
    small = load_mesh("small")
    assert [p.options["hw"] for p in points] == [
        dataclasses.replace(small, sram_bytes=v) for v in (32768, 65536)]
    assert points[0].options["prefill_hw"].name == "trn3"
    assert points[0].options["link"].bandwidth_bytes_per_s == 1.0e11
    assert len({p.key for p in points}) == 2


BAD_SPECS = [
    ("a.yaml", "command: run\ngrid:\n  prompt_len: [8]\n  promt_len: [8]\n",
     "a.yaml:4: grid.promt_len: unknown option"),
    ("b.yaml", "command: run\ngrid:\n  hw.sram_byte: [8]\n", "b.yaml:3: grid.hw.sram_byte: "
     "unknown field of hw"),
    ("c.yaml", "command: run\nzip:\n  prompt_len: [8, 16]\n  max_new_tokens: [2]\n",
     "c.yaml:4: zip.max_new_tokens: has 1 values"),
    ("d.yaml", "command: run\ngrid:\n  prompt_len: [8\n", "d.yaml:4: malformed YAML"),
    ("e.json", '{"command": "run",\n "grid": {"prompt_len": [8,]}}', "e.json:2: malformed JSON"),
    ("f.yaml", "command: run\ngrid:\n  hw.sram_bytes:\n    - 4096\n    - -4\n",
     "f.yaml:5: hw.sram_bytes: hw preset 'small': field 'sram_bytes' must be > 0, got -4"),
    ("g.yaml", "command: gemm\ngrid:\n  m: [1]\n", "missing option 'n'"),
    ("h.yaml", "command: run\nsamples:\n  n: 4\n  axes:\n    prompt_len: {low: 9, high: 3}\n",
     "h.yaml:5: samples.axes.prompt_len.high: must be greater than low"),
    ("i.yaml", "command: run\nfixed: {seed: 1}\ngrid:\n  seed: [1, 2]\n",
     "i.yaml:4: grid.seed: also given in 'fixed'"),
    ("j.yaml", "command: serve-me\n", "j.yaml:1: command: unknown command 'serve-me'"),
    ("k.yaml", "command: run\ngrid:\n  prompt_len: [8]\n  prompt_len: [9]\n",
     "k.yaml:4: grid.prompt_len: duplicate key"),
    ("l.yaml", "command: run\ngrid:\n  hw.num_colors: [40]\n",
     "l.yaml:3: hw.num_colors: hw preset 'small': field 'num_colors' must be <= 32"),
    ("m.yaml", "command: run\nfixed: {prefill_hw: auto}\ngrid:\n  prefill_hw.pe_rows: [64]\n",
     "needs a named prefill_hw preset"),
    ("n.yaml", "command: run\ngrid:\n  prompt_len: [[8]]\n",
     "n.yaml:3: grid.prompt_len[0]: expected a number"),
]


@pytest.mark.parametrize("name,text,message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_exits_2_with_one_line(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        prepare(load_spec(path))
    assert message in str(info.value)
    out = CliRunner().invoke(_main(), ["sweep", str(path), "--out", str(tmp_path / "o")])
    assert out.exit_code == 2, out.output
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emu: error: ") and message in lines[0]
    assert not (tmp_path / "o" / "results.parquet").exists()


def test_bad_options_exit_2(tmp_path):
    path = write(tmp_path, "ok.yaml", "command: gemm\nfixed: {n: 8, k: 8}\ngrid: {m: [8]}\n")
    for args in (["--workers", "0"], ["--workers", "2", "--scheduler", "tcp://x:1"]):
        out = CliRunner().invoke(_main(), ["sweep", str(path), "--out", str(tmp_path), *args])
        assert out.exit_code == 2 and len(out.stderr.strip().splitlines()) == 1
    blocker = write(tmp_path, "file", "")
    out = CliRunner().invoke(_main(), ["sweep", str(path), "--out", str(blocker)])
    assert out.exit_code == 2 and "not a folder" in out.stderr


# ------------------------------------------------------------------ sweeps on Dask

def test_sweep_rows_equal_points_one_by_one(tmp_path, client):
    """Each row is exactly what `emu run` reports for that point alone."""
    spec_path = write(tmp_path, "run.yaml", """
command: run
fixed: {timing_only: true, mesh: 16x16, max_new_tokens: 3, prefill_hw: trn2}
grid:
  hw.sram_bytes: [32768, 49152]
  prompt_len: [8, 16]
""")
    spec = load_spec(spec_path)
    outcome = run_sweep(spec, tmp_path / "out", client)
    rows = read_results(tmp_path / "out" / "results.parquet")
    assert len(rows) == 4 and outcome.computed == 4 and outcome.failed == 0
    for row, params in zip(rows, spec.points, strict=True):
        hw_file = tmp_path / f"hw-{params['hw.sram_bytes']}.json"
        hw_file.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(
            load_mesh("small"), sram_bytes=params["hw.sram_bytes"]))))
        report = tmp_path / "one.json"
        out = CliRunner().invoke(_main(), [
            "run", "--timing-only", "--mesh", "16x16", "--max-new-tokens", "3",
            "--prefill-hw", "trn2", "--hw", str(hw_file), "--prompt-len",
            str(params["prompt_len"]), "--report", str(report), "--quiet"])
        assert out.exit_code == 0, out.output
        alone = flatten(json.loads(report.read_text()))
        del alone["host_seconds"]
        expected = {**params, "status": "ok"}
        expected.update({f"report.{k}" if k in params else k: v for k, v in alone.items()})
        got = {k: v for k, v in row.items() if k != "host_seconds" and v is not None}
        assert got == {k: v for k, v in expected.items() if v is not None}
    csv = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(csv) == 5 and csv[0].startswith('"hw.sram_bytes","prompt_len",'
                                                '"timing_only"') is False
    assert '"decode.cycles_per_token"' in csv[0] and '"status"' in csv[0]
    # the same command again computes nothing
    again = run_sweep(load_spec(spec_path), tmp_path / "out", client)
    assert again.computed == 0 and again.cached == 4
    assert read_results(tmp_path / "out" / "results.parquet") == rows


def test_failing_point_recorded_and_sweep_goes_on(tmp_path, client):
    spec = load_spec(write(tmp_path, "f.json", json.dumps({
        "command": "run", "fixed": {"timing_only": True, "mesh": "16x16",
                                    "max_new_tokens": 2},
        "grid": {"prompt_len": [8, 100000, 16]}})))
    outcome = run_sweep(spec, tmp_path / "out", client)
    status = [row["status"] for row in outcome.rows]
    assert status[0] == "ok" and status[2] == "ok"
    assert "exceed the model's max_position_embeddings" in status[1]
    assert "\n" not in status[1] and outcome.failed == 1
    assert outcome.rows[1].get("tokens_per_s") is None
    # a bug (not a user error) is recorded too, and not cached: it runs again next time
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = load_spec(write(tmp_path, "b.json", json.dumps({
        "command": HELPER, "fixed": {"marker_dir": str(marks), "bug_at": 1},
        "grid": {"x": [0, 1, 2]}})))
    first = run_sweep(spec, tmp_path / "out2", client)
    assert [r["status"] for r in first.rows] == ["ok", "ZeroDivisionError: integer division "
                                                 "or modulo by zero", "ok"]
    assert [r.get("y") for r in first.rows] == [0, None, 4]
    assert [r.get("nested.half") for r in first.rows] == [0.0, None, 1.0]
    again = run_sweep(spec, tmp_path / "out2", client)
    assert again.computed == 1 and again.cached == 2


def test_killed_worker_loses_no_results(tmp_path, client):
    """The point at x=2 kills its worker process once; Dask runs it again elsewhere."""
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = load_spec(write(tmp_path, "k.json", json.dumps({
        "command": HELPER, "fixed": {"marker_dir": str(marks), "kill_at": 2, "sleep": 0.1},
        "grid": {"x": list(range(6))}})))
    outcome = run_sweep(spec, tmp_path / "out", client)
    assert (marks / "killed").exists()
    assert [r["status"] for r in outcome.rows] == ["ok"] * 6
    assert [r["y"] for r in outcome.rows] == [x * x for x in range(6)]
    assert sorted(int(p.name.split("-")[1]) for p in marks.glob("done-*")) == list(range(6))


def test_interrupted_sweep_resumes_without_computing_twice(tmp_path, client):
    marks = tmp_path / "marks"
    marks.mkdir()
    spec_path = write(tmp_path, "r.json", json.dumps({
        "command": HELPER, "fixed": {"marker_dir": str(marks), "sleep": 0.3},
        "grid": {"x": list(range(8))}}))

    def interrupt(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_spec(spec_path), tmp_path / "out", client, interrupt)
    assert not (tmp_path / "out" / "results.parquet").exists()
    finished = len(list((tmp_path / "out" / "cache").glob("*.json")))
    assert finished >= 3
    _wait_idle(client)      # points that were running when interrupted finish (and cache)
    outcome = run_sweep(load_spec(spec_path), tmp_path / "out", client)
    assert outcome.cached >= finished and outcome.cached + outcome.computed == 8
    assert [r["y"] for r in outcome.rows] == [x * x for x in range(8)]
    done = sorted(int(p.name.split("-")[1]) for p in marks.glob("done-*"))
    assert done == list(range(8))          # every point computed exactly once


def _wait_idle(client, timeout: float = 60.0) -> None:
    """Wait until no worker is executing a task (cancelled tasks run to their end)."""
    deadline = time.monotonic() + timeout
    while any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
        assert time.monotonic() < deadline, "workers still busy"
        time.sleep(0.05)


def test_cli_sweep_with_plots(tmp_path, client):
    """The CLI on an existing scheduler (the module's cluster) with --plots."""
    spec = write(tmp_path, "g.yaml", "command: gemm\nfixed: {k: 256}\ngrid:\n"
                                     "  m: [128, 256]\n  n: [128, 512]\n")
    address = ["--scheduler", client.scheduler.address]
    out = CliRunner().invoke(_main(), ["sweep", str(spec), "--out", str(tmp_path / "o"),
                                       *address, "--plots"])
    assert out.exit_code == 0, out.output
    assert "4 points: 4 ok, 0 failed; 4 computed, 0 from the cache" in out.stdout
    assert "dask dashboard: http" in out.stderr
    rows = read_results(tmp_path / "o" / "results.parquet")
    assert [(r["m"], r["n"]) for r in rows] == [(128, 128), (128, 512), (256, 128),
                                                (256, 512)]
    pngs = sorted(p.name for p in (tmp_path / "o" / "plots").glob("*.png"))
    assert pngs == ["heatmap_utilization.png", "pareto_utilization_vs_total_cycles.png"]
    out = CliRunner().invoke(_main(), ["sweep", str(spec), "--out", str(tmp_path / "o"),
                                       *address, "--plots", "--pareto", "m,nope"])
    assert out.exit_code == 2 and "no column 'nope'" in out.stderr


def test_pareto_front_against_brute_force():
    import itertools

    from emulator.sweep.plots import pareto_front

    pts = [(x, y) for x, y in itertools.product(range(5), repeat=2)][::3] + [(2.5, 9)]
    for xg, yg in itertools.product(("min", "max"), repeat=2):
        sx, sy = (1 if xg == "min" else -1), (1 if yg == "min" else -1)

        def beats(a, b, sx=sx, sy=sy):
            return (sx * a[0] <= sx * b[0] and sy * a[1] <= sy * b[1]) and a != b

        expected = {p for p in pts if not any(beats(q, p) for q in pts)}
        assert {pts[i] for i in pareto_front(pts, xg, yg)} == expected


def test_registered_run_defaults_match_the_cli():
    """run_report's defaults are emu run's (the sweep's options mean what the CLI's do)."""
    from emulator.cli.run import run
    from emulator.sweep.commands import COMMANDS, options_of

    unset = getattr(click.core, "UNSET", None)     # click >= 8.2: no default
    cli = {p.name: p.default if p.default is not unset
           else (False if getattr(p, "is_flag", False) else None) for p in run.params}
    for name, default in options_of(COMMANDS["run"].function()).items():
        cli_name = {"model": "config", "mesh": "mesh_size"}.get(name, name)
        assert cli[cli_name] == default, name


def test_cli_ctrl_c_then_same_command_resumes(tmp_path):
    """`emu sweep` interrupted by SIGINT to its process group (as Ctrl-C does) exits 130 with
    one line; the same command then computes only the rest, no point twice."""
    import os
    import signal
    import subprocess
    import sys

    marks = tmp_path / "marks"
    marks.mkdir()
    spec = write(tmp_path, "c.json", json.dumps({
        "command": HELPER, "fixed": {"marker_dir": str(marks), "sleep": 0.4},
        "grid": {"x": list(range(6))}}))
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-c", "from emulator.cli import main; main()", "sweep",
               str(spec), "--out", str(tmp_path / "o"), "--workers", "1"]
    proc = subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "o" / "cache").glob("*.json"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "emu: interrupted" and "Traceback" not in err
    assert not (tmp_path / "o" / "results.parquet").exists()
    again = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert "6 points: 6 ok" in again.stdout and "from the cache" in again.stdout
    done = sorted(int(p.name.split("-")[1]) for p in marks.glob("done-*"))
    assert done == list(range(6))


def test_option_types_checked_with_lines(tmp_path):
    cases = [("command: run\ngrid:\n  prompt_len: [8, '16']\n",
              ":3: grid.prompt_len[1]: expected an integer or null, got \"16\""),
             ("command: run\nfixed:\n  timing_only: 1\n",
              ":3: fixed.timing_only: expected true or false, got 1"),
             ("command: run\nsamples:\n  n: 2\n  axes:\n    prompt_len: {low: 8.5, high: 64}\n",
              ":5: samples.axes.prompt_len: low and high must be integers"),
             ("command: run\nsamples:\n  n: 2\n  axes:\n    dtype: {low: 1, high: 2}\n",
              ":5: samples.axes.dtype: a {low, high} range needs a numeric option")]
    for i, (text, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=".*" + re.escape(message)):
            load_spec(write(tmp_path, f"t{i}.yaml", text))
    # preset fields take ints for float fields; gemm's M N K take ints or strings
    load_spec(write(tmp_path, "ok.yaml", "command: gemm\nfixed: {n: '8', k: 8}\n"
                                         "grid: {m: [8], prefill_hw.tensor_clock_hz: [1]}\n"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 512), min_size=1, max_size=4, unique=True),
                min_size=1, max_size=3),
       st.sampled_from(["grid", "zip"]))
def test_grid_and_zip_expansion_property(tmp_path_factory, axes_values, mode):
    """grid: every combination exactly once, the first axis slowest; zip: the i-th values."""
    import itertools

    names = ["m", "n", "k"][:len(axes_values)]
    if mode == "zip":
        length = min(len(v) for v in axes_values)
        axes_values = [v[:length] for v in axes_values]
    table = dict(zip(names, axes_values, strict=True))
    fixed = {n: 8 for n in ("m", "n", "k") if n not in table}
    path = tmp_path_factory.mktemp("p") / "s.json"
    path.write_text(json.dumps({"command": "gemm", "fixed": fixed, mode: table}))
    spec = load_spec(path)
    if mode == "grid":
        combos = list(itertools.product(*axes_values))
    else:
        combos = list(zip(*axes_values, strict=True))
    assert spec.points == [{**fixed, **dict(zip(names, c, strict=True))} for c in combos]
    keys = {p.key for p in prepare(spec)}
    assert len(keys) == len(set(combos))
