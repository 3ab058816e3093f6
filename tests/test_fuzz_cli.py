"""Fuzzed `emu` command lines: every one exits 0 or 2, never with a traceback.

Hypothesis draws whole command lines with the files they read (tests/fuzz_inputs.py:
model configs and mesh presets with odd field values, mutated assembly, output paths,
option values in and out of range) and runs each in-process through click's CliRunner.
Bounded here (`FUZZ_EXAMPLES`, default 40) so that CI stays fast; benchmarks/fuzz_cli.py
runs the same strategies longer and prints the counts.
"""

import os
import tempfile
from pathlib import Path

from fuzz_inputs import invocations, run_invocation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.cli import main

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzzed_command_lines_exit_0_or_2(data):
    with tempfile.TemporaryDirectory() as folder:
        args = data.draw(invocations(Path(folder)), label="args")
        kind, value = run_invocation(main, args)
        assert kind == "exit", f"emu {' '.join(args)} crashed:\n{value}"
        assert value in (0, 2), f"emu {' '.join(args)} exited {value}"
