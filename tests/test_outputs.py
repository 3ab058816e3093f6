"""The output layer (emulator/outputs.py): paths checked first, outputs committed together.

Unit tests of `Outputs` and `emu` runs through click's CliRunner: a symlink is written
through, a FIFO or device is written in place, `-` is stdout, a bad path fails before the
work, and a failure (or an interrupt) at any point of the commit leaves every pre-existing
file as it was and no new file.
"""

import json
import os
import stat
import threading
import time

import pytest
from click.testing import CliRunner

from emulator.cli import main
from emulator.hw.errors import OutputError
from emulator.outputs import Outputs, write_now


def emu(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------ declaring and checking


def test_folder_target_and_file_parent_are_refused(tmp_path):
    (tmp_path / "plain").write_text("x")
    outputs = Outputs()
    with pytest.raises(OutputError, match="--report .*is a folder"):
        outputs.file(tmp_path, "--report")
    with pytest.raises(OutputError, match="--trace .*plain is not a folder"):
        outputs.file(tmp_path / "plain" / "t.json", "--trace")
    with pytest.raises(OutputError, match="--plots .*exists and is not a folder"):
        outputs.directory(tmp_path / "plain", "--plots")
    with pytest.raises(OutputError, match="empty"):
        outputs.file("", "--png")


def test_names_too_long_are_refused_before_the_work(tmp_path):
    with pytest.raises(OutputError, match="too long"):
        Outputs().file(tmp_path / ("x" * 240), "--report")
    with pytest.raises(OutputError, match="too long"):
        Outputs().directory(tmp_path / ("d" * 300), "--plots")


def test_same_path_twice_and_two_stdout_outputs_are_refused(tmp_path):
    outputs = Outputs()
    outputs.file(tmp_path / "a.json", "--report")
    with pytest.raises(OutputError, match="the same file as --report"):
        outputs.file(tmp_path / "." / "a.json", "--trace")
    outputs.file("-", "--trace")
    with pytest.raises(OutputError, match="stdout is already taken"):
        outputs.file("-", "--logits")


def test_nothing_is_written_before_commit_and_nothing_after_a_failure(tmp_path):
    old = tmp_path / "report.json"
    old.write_text("old")
    with pytest.raises(RuntimeError):
        with Outputs() as outputs:
            outputs.write_text(outputs.file(old, "--report"), "new")
            outputs.write_text(outputs.file(tmp_path / "t.json", "--trace"), "new")
            raise RuntimeError("the simulation failed")
    assert old.read_text() == "old"
    assert listing(tmp_path) == ["report.json"]


# ------------------------------------------------------------------ targets


def test_symlink_is_written_through_and_kept(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    os.chmod(real, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real.name)
    write_now(link, b"new")
    assert link.is_symlink() and os.readlink(link) == "real.json"
    assert real.read_text() == "new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640      # an existing file keeps its mode


def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to("made.json")
    write_now(link, b"x")
    assert link.is_symlink() and (tmp_path / "made.json").read_bytes() == b"x"


def test_fifo_is_written_in_place_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_now(fifo, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert listing(tmp_path) == ["pipe"]


def test_dev_null_and_dev_stdout_are_written_in_place(tmp_path, capfd):
    write_now("/dev/null", b"discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    outputs = Outputs()
    target = outputs.file("/dev/stdout", "--report")
    assert target.in_place
    outputs.write_bytes(target, b"to stdout\n")
    outputs.commit()
    assert "to stdout" in capfd.readouterr().out


def test_block_devices_and_sockets_are_refused(tmp_path):
    import socket

    disks = [p for p in ("/dev/loop0", "/dev/sda", "/dev/vda", "/dev/nvme0n1")
             if os.path.exists(p) and stat.S_ISBLK(os.stat(p).st_mode)]
    if disks:
        with pytest.raises(OutputError, match="block device"):
            Outputs().file(disks[0], "--report")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    try:
        with pytest.raises(OutputError, match="socket"):
            Outputs().file(tmp_path / "sock", "--report")
    finally:
        server.close()


def test_dash_is_stdout(capfd):
    outputs = Outputs()
    outputs.write_json(outputs.file("-", "--report"), {"a": 1})
    outputs.commit()
    assert json.loads(capfd.readouterr().out) == {"a": 1}


def test_non_finite_numbers_never_reach_json(tmp_path):
    outputs = Outputs()
    with pytest.raises(OutputError, match="non-finite"):
        outputs.write_json(outputs.file(tmp_path / "r.json", "--report"),
                           {"x": float("inf")})
    assert listing(tmp_path) == []


# ------------------------------------------------------------------ committing together


def test_new_folder_appears_whole_and_missing_parents_are_made(tmp_path):
    outputs = Outputs()
    folder = outputs.directory(tmp_path / "a" / "plots", "--plots")
    for name in ("x.png", "y.png"):
        outputs.write_bytes(outputs.in_folder(folder, name), name.encode())
    outputs.write_text(outputs.file(tmp_path / "b" / "c" / "r.json", "--report"), "{}")
    outputs.commit()
    assert listing(tmp_path) == ["a", "a/plots", "a/plots/x.png", "a/plots/y.png", "b",
                                 "b/c", "b/c/r.json"]
    mode = stat.S_IMODE((tmp_path / "a" / "plots").stat().st_mode)
    assert mode == 0o777 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_failure_during_the_renames_restores_every_old_file(tmp_path, monkeypatch, fail_at):
    """os.replace fails (or is interrupted) at the n-th rename: the files renamed before it
    get their old contents back, new files and temporaries are gone."""
    for name in ("a", "b"):
        (tmp_path / name).write_text(f"old {name}")
    real_replace = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:
            raise KeyboardInterrupt() if fail_at == 2 else OSError(28, "No space left")
        return real_replace(src, dst)

    outputs = Outputs()
    targets = [outputs.file(tmp_path / name, f"--{name}") for name in ("a", "b", "c")]
    for target in targets:
        outputs.write_text(target, "new")
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises((OutputError, KeyboardInterrupt)):
        outputs.commit()
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "a").read_text() == "old a"
    assert (tmp_path / "b").read_text() == "old b"
    assert listing(tmp_path) == ["a", "b"]


def test_failure_while_staging_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "a").write_text("old")
    outputs = Outputs()
    outputs.write_text(outputs.file(tmp_path / "a", "--a"), "new")
    folder = outputs.directory(tmp_path / "new" / "dump", "--dump")
    outputs.write_text(outputs.in_folder(folder, "f.txt"), "new")
    outputs.write_text(outputs.file(tmp_path / "z", "--z"), "new")
    real_mkstemp = __import__("tempfile").mkstemp
    count = []

    def full(*args, **kwargs):
        count.append(1)
        if len(count) == 2:
            raise OSError(28, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr("tempfile.mkstemp", full)
    with pytest.raises(OutputError, match="No space left.*no output was changed"):
        outputs.commit()
    assert listing(tmp_path) == ["a"] and (tmp_path / "a").read_text() == "old"


# ------------------------------------------------------------------ through the CLI


def test_bad_output_fails_before_the_work(tmp_path):
    (tmp_path / "plain").write_text("x")
    report = tmp_path / "report.json"
    report.write_text("old")
    started = time.perf_counter()
    result = emu("run", "--quiet", "--report", report, "--trace", tmp_path / "plain" / "t.json")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "--trace" in result.output
    assert time.perf_counter() - started < 2.0        # nothing was simulated
    assert report.read_text() == "old"


def test_run_commits_all_outputs_or_none(tmp_path, monkeypatch):
    """busy.png is a folder inside an existing --plots folder: refused before the work.
    The disk fills up at the third output of a run: neither the existing report nor any
    other output changes."""
    report = tmp_path / "report.json"
    report.write_text("old")
    plots = tmp_path / "plots"
    (plots / "busy.png").mkdir(parents=True)
    args = ("run", "--quiet", "--max-new-tokens", 2, "--report", report, "--trace",
            tmp_path / "t.json", "--logits", tmp_path / "l.npy")
    started = time.perf_counter()
    result = emu(*args, "--plots", plots)
    assert result.exit_code == 2 and "busy.png: is a folder" in result.output
    assert time.perf_counter() - started < 2.0
    (plots / "busy.png").rmdir()
    real_mkstemp = __import__("tempfile").mkstemp
    count = []

    def full(*args, **kwargs):
        count.append(1)
        if len(count) == 3:
            raise OSError(28, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr("tempfile.mkstemp", full)
    result = emu(*args, "--plots", plots)
    monkeypatch.undo()
    assert result.exit_code == 2 and "No space left" in result.output
    assert report.read_text() == "old"
    assert listing(tmp_path) == ["plots", "report.json"]
    result = emu(*args, "--plots", tmp_path / "fresh")
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["schema"] == "emu.report/1"
    assert listing(tmp_path / "fresh") == ["busy.png", "links.png", "sram.png", "time.png"]
    assert not [p for p in tmp_path.rglob(".*")]


def test_report_dash_goes_to_stdout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = emu("run", "--max-new-tokens", 2, "--timing-only", "--report", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["schema"] == "emu.report/1"   # no tables around it
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(main, ["map", "tiny", "--mesh", "4x4", "--png", "-"])
    assert result.exit_code == 0
    assert result.stdout_bytes.startswith(b"\x89PNG")


def test_map_png_through_symlink_and_dump_into_new_folder(tmp_path):
    real = tmp_path / "real.png"
    real.write_bytes(b"old")
    (tmp_path / "map.png").symlink_to(real)
    result = emu("map", "tiny", "--mesh", "8x8", "--png", tmp_path / "map.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "map.png").is_symlink() and real.read_bytes()[:4] == b"\x89PNG"
    result = emu("compile", "tiny", "--mesh", "8x8", "--dump", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert "summary.json" in listing(tmp_path / "d")


def test_file_inside_a_new_output_folder_is_written_with_it(tmp_path):
    out = tmp_path / "new"
    with Outputs() as outputs:
        folder = outputs.directory(str(out), "--plots", ["a.png"])
        trace = outputs.file(str(out / "deep" / "t.json"), "--trace")
        outputs.write_bytes(outputs.in_folder(folder, "a.png"), b"png")
        outputs.write_json(trace, {"ok": 1})
    assert (out / "a.png").read_bytes() == b"png"
    assert json.loads((out / "deep" / "t.json").read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
