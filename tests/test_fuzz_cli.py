"""Fuzzed `emu` command lines: every one exits 0 or 2, never with a traceback.

Hypothesis draws whole command lines with the files they read (tests/fuzz_inputs.py:
model configs and mesh presets with odd field values, mutated assembly, output paths,
option values in and out of range) and runs each in-process through click's CliRunner.
Bounded here (`FUZZ_EXAMPLES`, default 40, `FUZZ_SEED` 0) so that CI stays fast;
benchmarks/fuzz_cli.py runs this test with more examples and `FUZZ_COUNTS` set to a file,
into which the test writes what it tried (per command and per exit code).
"""

import collections
import json
import os
import tempfile
from pathlib import Path

import pytest
from fuzz_inputs import invocations, run_invocation
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from emulator.cli import main

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
SEED = int(os.environ.get("FUZZ_SEED", "0"))
COUNTS = os.environ.get("FUZZ_COUNTS")
TRIED = {"tried": 0, "exit": collections.Counter(), "command": collections.Counter()}


@pytest.fixture(scope="module", autouse=True)
def write_counts():
    yield
    if COUNTS:
        Path(COUNTS).write_text(json.dumps(TRIED, indent=2) + "\n")


def command_name(args: list[str]) -> str:
    if not args:
        return "(none)"
    return " ".join(args[:2]) if args[0] == "asm" and len(args) > 1 else args[0]


@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate, Phase.shrink],
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzzed_command_lines_exit_0_or_2(data):
    with tempfile.TemporaryDirectory() as folder:
        args = data.draw(invocations(Path(folder)), label="args")
        kind, value = run_invocation(main, args)
    TRIED["tried"] += 1
    TRIED["command"][command_name(args)] += 1
    TRIED["exit"][str(value) if kind == "exit" else "traceback"] += 1
    assert kind == "exit", f"emu {' '.join(args)} crashed:\n{value}"
    assert value in (0, 2), f"emu {' '.join(args)} exited {value}"
