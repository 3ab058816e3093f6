"""The longer CLI fuzz run: many hypothesis-drawn `emu` command lines, counted.

    python benchmarks/fuzz_cli.py [--examples N] [--seed S]

Runs tests/test_fuzz_cli.py (command lines drawn by tests/fuzz_inputs.py, each run
in-process through click's CliRunner) with N examples from seed S, and prints how many
inputs were tried, per command and per exit code. A crash (a traceback, or an exit other
than 0 or 2) fails the test: hypothesis shrinks it and pytest prints the smallest command
line; the script then exits 1. (The test runs under pytest so that this script imports
nothing of emulator.cli, as docs/architecture.md asks of benchmarks.)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        counts_file = Path(folder) / "counts.json"
        env = dict(os.environ, FUZZ_EXAMPLES=str(options.examples),
                   FUZZ_SEED=str(options.seed), FUZZ_COUNTS=str(counts_file))
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/test_fuzz_cli.py"], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        counts = json.loads(counts_file.read_text()) if counts_file.exists() else None
    if counts is None:
        print(run.stdout[-4000:], run.stderr[-2000:])
        return 1
    print(f"inputs tried: {counts['tried']} in {elapsed:.0f} s (seed {options.seed}, "
          f"{options.examples} examples asked)")
    print("exit codes: " + ", ".join(f"{code}: {n}" for code, n in
                                     sorted(counts["exit"].items())))
    print("commands: " + ", ".join(f"{name}: {n}" for name, n in
                                   sorted(counts["command"].items())))
    print("result: " + (run.stdout.strip().splitlines() or ["?"])[-1])
    if run.returncode:
        print(run.stdout[-6000:])
    return 1 if run.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
