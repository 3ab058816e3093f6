"""The longer CLI fuzz run: many hypothesis-drawn `emu` command lines, counted.

    python benchmarks/fuzz_cli.py [--examples N] [--seed S]

Draws command lines with tests/fuzz_inputs.py (the strategies of tests/test_fuzz_cli.py),
runs each in-process through click's CliRunner and prints how many were tried, per
command and per exit code, and every distinct crash (an exit other than 0 or 2, or a
traceback) with one command line that caused it. Exit status 1 when anything crashed.
"""

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_inputs import invocations, run_invocation  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from emulator.cli import main  # noqa: E402


def fuzz(examples: int, seed_value: int) -> dict:
    """Run `examples` drawn command lines; returns the counts and crashes."""
    counts = {"tried": 0, "exit": collections.Counter(), "command": collections.Counter(),
              "crashes": {}}

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        with tempfile.TemporaryDirectory() as folder:
            args = data.draw(invocations(Path(folder)))
            kind, value = run_invocation(main, args)
        counts["tried"] += 1
        name = " ".join(args[:2]) if args[:1] == ["asm"] else (args[0] if args else "(none)")
        counts["command"][name] += 1
        if kind == "crash" or value not in (0, 2):
            key = (value.strip().splitlines()[-1] if kind == "crash" else f"exit {value}")
            counts["crashes"].setdefault(key, (args, value))
            counts["exit"]["crash" if kind == "crash" else value] += 1
        else:
            counts["exit"][value] += 1

    one()
    return counts


def main_() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    started = time.perf_counter()
    counts = fuzz(options.examples, options.seed)
    elapsed = time.perf_counter() - started
    print(f"inputs tried: {counts['tried']} in {elapsed:.0f} s (seed {options.seed})")
    print("exit codes: " + ", ".join(f"{code}: {n}" for code, n in
                                     sorted(counts["exit"].items(), key=str)))
    print("commands: " + ", ".join(f"{name}: {n}" for name, n in
                                   sorted(counts["command"].items())))
    print(f"distinct crashes: {len(counts['crashes'])}")
    for key, (args, value) in counts["crashes"].items():
        print(f"\n--- {key}\nemu {' '.join(args)}\n{value}")
    return 1 if counts["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main_())
