"""`emu step CONFIG`: one decode step of a compiled model, event by event: time order,
filters, --until, the values moved (against the numpy reference and the receivers),
interactive commands, and exit-2 errors naming the valid range."""

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compiler import reference
from compiler.decode import compile_decode
from compiler.frontend import resolve_model
from compiler.weights import random_weights
from emulator.cli import asm as cli_asm
from emulator.cli import main
from emulator.hw.mesh import load_mesh
from emulator.mesh.runtime import MeshDecoder, run_timing

ARGS = ["--mesh", "4x4", "--max-context", "16"]
EVENT = re.compile(r"^\[(\d+)\] cycle\s+(\d+)-(\d+)\s+PE \((\d+),(\d+)\)\s+pc (\d+)\s+(\S+)\s+"
                   r"(.*)$")
VALUES = re.compile(r"^\s+(sent|wrote): \[(.*?)(?:, \.\.\.)?\] \((\d+) values?\)$")
PROGRAMS = Path(__file__).resolve().parent.parent / "programs" / "asm"


def emu(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def events(stdout: str) -> list[tuple]:
    """(index, start, end, x, y, pc, op, text, values or None) of every event line."""
    out = []
    for line in stdout.splitlines():
        match = EVENT.match(line)
        if match:
            k, start, end, x, y, pc = (int(g) for g in match.groups()[:6])
            out.append([k, start, end, x, y, pc, match.group(7), match.group(8), None])
            continue
        values = VALUES.match(line)
        if values and out:
            out[-1][8] = np.array([float(v) for v in values.group(2).split(", ")])
    return out


@pytest.fixture(scope="module")
def timing():
    mesh = load_mesh("small").with_mesh(4, 4)
    compiled = compile_decode(resolve_model("tiny"), mesh, max_context=16)
    return run_timing(compiled, mesh, 0, engine="reference")


def test_steps_in_time_order(timing):
    result = emu("step", "tiny", *ARGS, "--steps", "60")
    assert result.exit_code == 0, result.output
    shown = events(result.stdout)
    assert len(shown) == 60
    starts = [e[1] for e in shown]
    assert starts == sorted(starts)
    assert [e[0] for e in shown] == list(range(60))
    assert shown[0][6] == "prologue" and shown[0][7].startswith("movr")
    last = result.stdout.splitlines()[-1]
    assert last == f"60 of {timing.instructions} events; program ends at cycle {timing.cycles}"


def test_until_stops_at_the_cycle_and_shows_messages_in_flight():
    result = emu("step", "tiny", *ARGS, "--until", "120")
    assert result.exit_code == 0, result.output
    shown = events(result.stdout)
    assert shown and all(e[1] <= 120 for e in shown)
    assert max(e[1] for e in shown) > 90
    assert "at cycle 120: " in result.stdout
    assert "in flight: " in result.stdout and "->" in result.stdout


def test_pe_and_op_filters():
    result = emu("step", "tiny", *ARGS, "--pe", "1,1", "--op", "attn", "--steps", "30")
    assert result.exit_code == 0, result.output
    shown = events(result.stdout)
    assert len(shown) == 30
    assert all((e[3], e[4]) == (1, 1) and e[6].endswith(".attn") for e in shown)
    assert [e[5] for e in shown] == sorted(e[5] for e in shown)
    assert "matching events" in result.stdout.splitlines()[-1]


def test_values_match_the_numpy_reference_and_the_reference_engine():
    spec = resolve_model("tiny")
    weights = random_weights(spec, 3)
    logits = reference.decode_step(spec, weights, 5, reference.KVCache.empty(spec))
    result = emu("step", "tiny", *ARGS, "--seed", "3", "--token", "5", "--pe", "0,1",
                 "--op", "lm_head")
    assert result.exit_code == 0, result.output
    shown = [e for e in events(result.stdout) if e[7].startswith("recvadd")]
    final = shown[-1][8]
    rows = spec.vocab_size // 4
    assert np.allclose(final, logits[rows:rows + len(final)], rtol=1e-5, atol=1e-6)
    mesh = load_mesh("small").with_mesh(4, 4)
    decoder = MeshDecoder(spec, weights, mesh, engine="reference", max_context=16)
    _, run = decoder.step(5, 0)
    acc = decoder.placement.addr("ACC")
    sram = run.sram[1 * 4 + 0, acc:acc + len(final)]
    assert np.array_equal(np.array([float(f"{v:.7g}") for v in sram]), final)


def test_sent_values_arrive_unchanged():
    result = emu("step", "tiny", *ARGS, "--seed", "0", "--until", "200", "--op", "qkv")
    assert result.exit_code == 0, result.output
    shown = events(result.stdout)
    sends = [e for e in shown if e[7].startswith("send c0")]
    recvs = [e for e in shown if e[7].startswith("recv c0")]
    assert sends and recvs
    for recv in recvs:
        source = re.search(r"from PE \((\d+),(\d+)\)", recv[7]).groups()
        send = next(e for e in sends if (e[3], e[4]) == tuple(map(int, source)))
        assert np.array_equal(send[8], recv[8])


def test_values_with_a_prefilled_cache():
    spec = resolve_model("tiny")
    weights = random_weights(spec, 1)
    prompt = np.random.default_rng(1).integers(0, spec.vocab_size, 3)
    _, cache = reference.prefill(spec, weights, prompt)
    logits = reference.decode_step(spec, weights, 7, cache)
    result = emu("step", "tiny", *ARGS, "--seed", "1", "--position", "3", "--token", "7",
                 "--pe", "0,0", "--op", "lm_head")
    assert result.exit_code == 0, result.output
    final = [e for e in events(result.stdout) if e[7].startswith("recvadd")][-1][8]
    assert np.allclose(final, logits[:len(final)], rtol=1e-5, atol=1e-6)


def test_interactive_next_continue_quit(monkeypatch):
    everything = events(emu("step", "tiny", *ARGS, "--pe", "0,0", "--steps", "10000").stdout)
    monkeypatch.setattr(cli_asm, "stdin_is_tty", lambda: True)
    result = emu("step", "tiny", *ARGS, "--pe", "0,0", input="\nc 300\nhelp\nq\n")
    assert result.exit_code == 0, result.output
    expected = [e[0] for n, e in enumerate(everything) if n < 2 or e[1] <= 300]
    assert [e[0] for e in events(result.stdout)] == expected
    assert len(expected) < len(everything)
    assert "Enter: next event, c N: continue to cycle N, q: quit" in result.stdout


def test_assembly_files_still_step_with_values():
    result = emu("step", PROGRAMS / "hello.asm", "--values")
    assert result.exit_code == 0, result.output
    assert "sent: [1, 2, 3, 4] (4 values)" in result.stdout
    assert "wrote: [1, 2, 3, 4] (4 values)" in result.stdout
    assert result.stdout.splitlines()[-1] == "4 of 4 events; program ends at cycle 8"


@pytest.mark.parametrize("args, fragment", [
    (["--until", "99999999"], "--until 99999999 is outside the run's cycles 0.."),
    (["--until", "-1"], "--until -1 is outside the run's cycles 0.."),
    (["--pe", "4,4"], "--pe 4,4 is outside the 4x4 mesh (x in 0..3, y in 0..3)"),
    (["--op", "nonsense"], "--op nonsense matches no op of this program; ops: prologue"),
    (["--position", "16"], "decode position 16 is outside the KV capacity 0..15"),
    (["--seed", "0", "--token", "256"], "token 256 is outside the vocabulary 0..255"),
])
def test_bad_options_exit_2(args, fragment):
    result = emu("step", "tiny", *ARGS, *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_model_options_on_assembly_and_missing_configs_exit_2(tmp_path):
    result = emu("step", PROGRAMS / "hello.asm", "--seed", "1")
    assert result.exit_code == 2 and "--seed applies to model configs" in result.stderr
    result = emu("step", tmp_path / "absent.json")
    assert result.exit_code == 2 and "no such file" in result.stderr
