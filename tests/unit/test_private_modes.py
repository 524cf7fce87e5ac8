"""An embedded engine keeps its data private under a permissive umask: new folders 0700, files 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from drift_engine.api import Engine


def test_embedded_engine_creates_private_folders_and_files(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Engine.open(tmp_path / "data") as engine:
            col = engine.create_collection("c", dim=4, auto_train_threshold=0)
            col.upsert(np.arange(50), np.random.default_rng(0).random((50, 4), dtype=np.float32))
            col.flush()
    finally:
        os.umask(old)
    wide = []
    for root, dirs, files in os.walk(tmp_path / "data"):
        for name in [".", *dirs, *files]:
            p = Path(root, name)
            mode = stat.S_IMODE(p.lstat().st_mode)
            if mode & 0o077:  # group or others may read, write or enter
                wide.append(f"{p.relative_to(tmp_path)}: {oct(mode)}")
    assert not wide, wide
