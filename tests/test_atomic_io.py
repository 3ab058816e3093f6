"""Atomic writes leave either the old file or the whole new one, with normal permissions."""

import os
import stat

import numpy as np
import pytest

from emulator.files import atomic_save_npy, atomic_write_json


def test_written_files_have_umask_permissions(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "l.npy"
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert not path.exists() and list(tmp_path.iterdir()) == []
    atomic_save_npy(path, np.arange(3, dtype=np.float32))
    assert np.load(path).tolist() == [0.0, 1.0, 2.0]
