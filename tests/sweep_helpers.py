"""Sweep commands for tests (Dask workers import them as `tests.sweep_helpers:NAME`)."""

import os
import signal
import time
import uuid
from pathlib import Path

from emulator.hw.errors import ConfigError


def square(*, x, marker_dir=None, sleep=0.0, kill_at=None, fail_at=None, bug_at=None):
    """{'y': x*x, 'nested': {'half': x/2}}; leaves a marker file per completed call.

    At x == kill_at the worker process kills itself the first time (a lost worker); at
    x == fail_at it raises a user error, at x == bug_at a ZeroDivisionError."""
    if kill_at is not None and x == kill_at:
        first = Path(marker_dir) / "killed"
        if not first.exists():
            first.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    if fail_at is not None and x == fail_at:
        raise ConfigError(f"x: {x} is the failing point")
    if bug_at is not None and x == bug_at:
        return {"y": 1 // 0}
    time.sleep(sleep)
    if marker_dir is not None:
        (Path(marker_dir) / f"done-{x}-{uuid.uuid4().hex}").touch()
    return {"y": x * x, "nested": {"half": x / 2}, "listed": [x]}
