"""Atomic output files for library code and scripts (one file at a time).

Each helper goes through the output layer (emulator/outputs.py): the bytes go to a
temporary file beside the target, renamed over it, so a failure never leaves a partial
file; a symlink is written through (the link kept), and a FIFO, a device or a path under
/dev or /proc is written in place, never replaced. Commands with several outputs use
`emulator.outputs.Outputs` directly, so that all of them are committed together.
"""

import io
import json

import numpy as np

from emulator.outputs import write_now


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    write_now(path, data)


def atomic_write_text(path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    """Write `obj` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path, array) -> None:
    """Save a numpy array in .npy format atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    atomic_write_bytes(path, buffer.getvalue())
