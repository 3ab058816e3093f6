"""SIGINT and SIGTERM sent for real to `emu` subprocesses (emulator/cli/interrupts.py).

Each run ends with exit status 130 (SIGINT) or 143 (SIGTERM), exactly one line on stderr,
no traceback, no new or changed output file and no child process left: in a Numba kernel
(the watchdog), in the middle of a simulation with outputs declared, with forked children
(`Forked`, a `fork_map` pool; the signal sent to the parent alone, to the whole process
group as a terminal's Ctrl-C is, or SIGKILL to the parent), and while outputs are being
written.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMU = [sys.executable, "-c", "from emulator.cli import main; main(prog_name='emu')"]
LOOP = ".mesh 1x1\n.region all 0,0 0,0\ntop:\n    nop\n    jmp top\n"


def start(args, cwd, **kwargs):
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kwargs)


def finish(proc, timeout=30):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def gone(pid: int, timeout: float = 5.0) -> bool:
    """The process has exited (absent, or a zombie waiting for a reaper)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def wait_for_line(proc, prefix: str, timeout: float = 60.0) -> str:
    """Read stdout lines until one starts with `prefix`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line starting with {prefix!r}: {proc.stderr.read()}")


def busy(pid: int, seconds: float, timeout: float = 90.0) -> None:
    """Wait until process `pid` has used `seconds` of CPU time (imports done, working)."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.01)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if (int(fields[11]) + int(fields[12])) / tick >= seconds:
            return
    raise AssertionError("the process never got busy")


@pytest.fixture(scope="module")
def warm_kernels(tmp_path_factory):
    """Compile (first run in a fresh clone) or load the mesh kernels once, so that the
    signal below lands in a running kernel, not in the LLVM compiler."""
    folder = tmp_path_factory.mktemp("warm")
    (folder / "halt.asm").write_text(".mesh 1x1\n.region all 0,0 0,0\n    halt\n")
    proc = start(EMU + ["asm", "run", "halt.asm", "--json"], folder)
    assert finish(proc, timeout=600)[0] == 0


@pytest.mark.parametrize("sig,code,text", [(signal.SIGINT, 130, "emu: interrupted"),
                                           (signal.SIGTERM, 143, "emu: terminated")])
def test_signal_inside_a_numba_kernel(tmp_path, warm_kernels, sig, code, text):
    """An endless loop inside the Numba engine's kernel (no Python bytecode runs there):
    the watchdog ends the process within its grace period."""
    (tmp_path / "loop.asm").write_text(LOOP)
    proc = start(EMU + ["asm", "run", "loop.asm", "--json", "--max-cycles", str(2**60)],
                 tmp_path)
    busy(proc.pid, 5.0)        # imports and the kernel's cache load take 2-3 s of CPU
    sent = time.monotonic()
    proc.send_signal(sig)
    status, out, err = finish(proc)
    assert time.monotonic() - sent < 4.0
    assert (status, out, err) == (code, "", text + "\n")


@pytest.mark.parametrize("cpu", [0.3, 0.6, 0.9])
def test_signal_while_starting_up(tmp_path, cpu):
    """The `emu` console script interrupted while it imports its modules or parses options
    (after `cpu` seconds of CPU: the interpreter itself has started): still one line and
    130 (an early handler covers the time before the command's own)."""
    script = Path(sys.executable).parent / "emu"
    if not script.exists():
        pytest.skip("no emu console script beside this python")
    proc = start([str(script), "run", "--quiet", "--report", "r.json"], tmp_path)
    busy(proc.pid, cpu)
    proc.send_signal(signal.SIGINT)
    status, out, err = finish(proc)
    assert (status, err) == (130, "emu: interrupted\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_a_run_leaves_no_output(tmp_path, sig, code):
    report = tmp_path / "report.json"
    report.write_text("old")
    proc = start(EMU + ["run", "--quiet", "--engine", "reference", "--max-new-tokens", "50",
                        "--report", "report.json", "--trace", "t.json", "--plots", "plots"],
                 tmp_path)
    busy(proc.pid, 4.0)        # in the reference engine's decode steps (about 3 s each)
    proc.send_signal(sig)
    status, out, err = finish(proc)
    assert status == code
    assert err == ("emu: interrupted\n" if code == 130 else "emu: terminated\n")
    assert report.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


FORKED = textwrap.dedent("""
    import sys, time
    from emulator.cli.interrupts import interrupt_handling, stop_quietly
    from emulator.mesh.parallel import Forked

    def work():
        time.sleep(120)

    with interrupt_handling():
        try:
            with Forked(work) as job:
                print("child", job._pid, flush=True)
                job.result()
        except KeyboardInterrupt as exc:
            stop_quietly(exc)
""")

POOL = textwrap.dedent("""
    import os, sys, time
    from emulator.cli.interrupts import interrupt_handling, stop_quietly
    from emulator.mesh.parallel import fork_map

    def work(item):
        os.write(1, f"child {os.getpid()}\\n".encode())     # one write: no interleaving
        time.sleep(120)

    with interrupt_handling():
        try:
            fork_map(work, [0, 1], jobs=2)
        except KeyboardInterrupt as exc:
            stop_quietly(exc)
""")


@pytest.mark.parametrize("script", ["forked", "pool"])
@pytest.mark.parametrize("how", ["sigterm-parent", "sigint-group", "sigkill-parent"])
def test_forked_children_never_outlive_the_parent(tmp_path, script, how):
    proc = start([sys.executable, "-c", FORKED if script == "forked" else POOL], tmp_path)
    children = {int(wait_for_line(proc, "child").split()[1])}
    if script == "pool":
        children.add(int(wait_for_line(proc, "child").split()[1]))
    if how == "sigterm-parent":
        proc.send_signal(signal.SIGTERM)
    elif how == "sigint-group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGKILL)
    status, _, err = finish(proc)
    expected = {"sigterm-parent": 143, "sigint-group": 130, "sigkill-parent": -9}[how]
    assert status == expected
    if how != "sigkill-parent":
        assert err in ("emu: terminated\n", "emu: interrupted\n"), err
    for pid in children:
        assert gone(pid), f"child {pid} outlived its parent"


WRITING = textwrap.dedent("""
    from emulator.cli.interrupts import interrupt_handling, stop_quietly
    from emulator.outputs import Outputs

    with interrupt_handling():
        try:
            with Outputs() as outputs:
                outputs.write_text(outputs.file("report.json", "--report"), "new")
                outputs.write_text(outputs.file("new.json", "--trace"), "new")
                outputs.write_text(outputs.file("fifo", "--logits"), "blocked")
                print("committing", flush=True)
        except KeyboardInterrupt as exc:
            stop_quietly(exc)
""")


CONSEQUENCE = textwrap.dedent("""
    import os, signal, time
    import click
    from emulator.cli import main

    @main.command("explode")
    def explode():
        # Numba's dispatcher, interrupted while it converts arguments, raises a SystemError
        # chained to the KeyboardInterrupt; any exception after the signal is its consequence
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise SystemError("CPUDispatcher returned a result with an exception set")

    main(["explode"], prog_name="emu")
""")


def test_exception_caused_by_the_signal_is_the_signal(tmp_path):
    proc = start([sys.executable, "-c", CONSEQUENCE], tmp_path)
    assert finish(proc) == (130, "", "emu: interrupted\n")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_writing_outputs(tmp_path, sig, code):
    """The commit has written its temporary files and blocks opening a FIFO nobody reads:
    the signal there leaves the old report and no new or temporary file."""
    (tmp_path / "report.json").write_text("old")
    os.mkfifo(tmp_path / "fifo")
    proc = start([sys.executable, "-c", WRITING], tmp_path)
    wait_for_line(proc, "committing")
    deadline = time.monotonic() + 20
    while len(list(tmp_path.glob(".*.tmp"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(tmp_path.glob(".*.tmp"))) == 2      # staged, blocked on the FIFO
    proc.send_signal(sig)
    status, _, err = finish(proc)
    assert status == code and err.count("\n") == 1 and "Traceback" not in err
    assert (tmp_path / "report.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "report.json"]


SWALLOWED = textwrap.dedent("""
    import signal
    from emulator.cli.interrupts import interrupt_handling, received

    class Finalised:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)   # the handler runs inside the finaliser
            for _ in range(3):
                pass

    with interrupt_handling():
        Finalised()
        print("received", received(), flush=True)
""")


def test_an_interrupt_raised_in_a_finaliser_is_recorded_not_printed(tmp_path):
    """Python cannot propagate a KeyboardInterrupt out of `__del__` ("Exception ignored
    in ..."): the handlers still record the signal, for the group to end the command on
    it, and print nothing of it."""
    proc = start([sys.executable, "-c", SWALLOWED], tmp_path)
    status, out, err = finish(proc)
    assert (status, out, err) == (0, f"received {int(signal.SIGINT)}\n", "")
