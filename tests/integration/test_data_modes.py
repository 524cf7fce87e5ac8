"""File modes (issue 13, DESIGN §11): what a server writes under its data directory is private to its user —
directories 0700, files 0600 (data dir, collections, WAL, segments, LMDB, lock) — while the Unix socket and
the fast-path ipc socket are 0660 (the group may connect). Also without any umask help: KV and segment files
are created 0600 by the storage layer itself."""

from __future__ import annotations

import os
import stat

import numpy as np

from drift_engine.storage.kv import KV
from drift_engine.storage.segment import SegmentWriter
from tests.integration.harness import start_server


def _modes(root) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "sock" if stat.S_ISSOCK(st.st_mode) else "file"
            out[os.path.relpath(os.path.normpath(path), root)] = (kind, stat.S_IMODE(st.st_mode))
    return out


def test_server_data_dir_is_private(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "old-note").write_text("x")
    os.chmod(data / "old-note", 0o644)  # an existing file is tightened too
    old = os.umask(0o022)
    try:
        srv = start_server(data)
    finally:
        os.umask(old)
    try:
        with srv.client() as c:
            col = c.create_collection("m", 4)
            col.upsert(np.arange(300), np.random.default_rng(1).standard_normal((300, 4)).astype(np.float32))
            col.flush()
            col.train()
        modes = _modes(data)
    finally:
        srv.stop()
    assert any(k.endswith(".drift") for k in modes), modes  # segments were written
    assert any("wal" in k for k in modes) and any(k.endswith("data.mdb") for k in modes), modes
    wrong = {}
    for rel, (kind, mode) in modes.items():
        want = {"dir": 0o700, "file": 0o600, "sock": 0o660}[kind]
        if mode != want:
            wrong[rel] = oct(mode)
    assert wrong == {}, wrong
    assert modes["drift.sock"] == ("sock", 0o660) and modes["drift.sock.fast"] == ("sock", 0o660)


def test_storage_creates_private_files_under_a_permissive_umask(tmp_path):
    old = os.umask(0o000)
    try:
        with KV(tmp_path / "c" / "meta.lmdb") as kv, kv.write() as b:
            b.put("t", b"k", b"v")
        w = SegmentWriter(tmp_path / "000001.drift", segment_id=1, dim=4)
        seg_mode = stat.S_IMODE(os.stat(w.tmp_path).st_mode)
        w.abort()
    finally:
        os.umask(old)
    assert seg_mode == 0o600
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE(os.stat(tmp_path / "c" / "meta.lmdb" / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "c" / "meta.lmdb").st_mode) == 0o700
