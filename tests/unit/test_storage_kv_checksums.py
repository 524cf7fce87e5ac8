"""kv.py checksums (issue 13): every value drift writes to LMDB carries a CRC32C; a changed byte fails the read
with a ``CorruptionError`` naming collection, table and key, ``verify`` (and ``drift-engine inspect``) reports it,
and stores of the old format (no checksums) are migrated on a writable open and refused read-only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.errors import CorruptionError
from drift_engine.server.inspect import inspect_data_dir
from drift_engine.storage.kv import FORMAT_VERSION, KV, encode_i64

REPO = Path(__file__).resolve().parents[2]


def _flip_raw(path: Path, db: str, key: bytes, offset: int = -1) -> None:
    """Change one byte of a stored value behind drift's back, with the lmdb library."""
    env = lmdb.open(str(path), subdir=True, max_dbs=16)
    try:
        handle = env.open_db(db.encode(), create=False)
        with env.begin(write=True, db=handle) as txn:
            raw = bytearray(txn.get(key))
            raw[offset] ^= 0x01
            txn.put(key, bytes(raw))
    finally:
        env.close()


def test_flipped_byte_fails_the_read_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "coll" / "meta.lmdb"
    with KV(path) as kv, kv.write() as b:
        b.put("payload", encode_i64(5), b'{"title": "hello"}')
        b.put("payload", encode_i64(6), b'{"title": "world"}')
    _flip_raw(path, "payload", encode_i64(5))
    with KV(path) as kv:
        with pytest.raises(CorruptionError) as info:
            kv.get("payload", encode_i64(5))
        msg = str(info.value)
        assert "'coll'" in msg and "payload" in msg and encode_i64(5).hex() in msg
        with pytest.raises(CorruptionError):
            kv.get_many("payload", [encode_i64(6), encode_i64(5)])
        with pytest.raises(CorruptionError):
            list(kv.iterate("payload"))
        assert kv.get("payload", encode_i64(6)) == b'{"title": "world"}'
        problems = kv.verify()
        assert len(problems) == 1 and "payload" in problems[0] and encode_i64(5).hex() in problems[0]


def test_a_value_moved_to_another_key_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "c" / "meta.lmdb"
    with KV(path) as kv, kv.write() as b:
        b.put("loc", encode_i64(1), b"one")
        b.put("loc", encode_i64(2), b"two")
    env = lmdb.open(str(path), subdir=True, max_dbs=16)
    handle = env.open_db(b"loc", create=False)
    with env.begin(write=True, db=handle) as txn:
        txn.put(encode_i64(2), txn.get(encode_i64(1)))
    env.close()
    with KV(path) as kv, pytest.raises(CorruptionError, match="checksum"):
        kv.get("loc", encode_i64(2))


def test_old_format_store_is_migrated_or_refused_read_only(tmp_path: Path) -> None:
    path = tmp_path / "old" / "meta.lmdb"
    path.mkdir(parents=True)
    env = lmdb.open(str(path), subdir=True, max_dbs=16)
    handle = env.open_db(b"meta")
    with env.begin(write=True, db=handle) as txn:
        txn.put(b"config", b'{"dim": 4}')
    env.close()
    with pytest.raises(CorruptionError, match="format version 1"):
        KV(path, readonly=True)
    with KV(path) as kv:  # a writable open migrates in one transaction
        assert kv.get("meta", b"config") == b'{"dim": 4}'
        assert kv.verify() == []
    with KV(path, readonly=True) as kv:
        assert kv.get("meta", b"config") == b'{"dim": 4}'


def test_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new" / "meta.lmdb"
    KV(path).close()
    env = lmdb.open(str(path), subdir=True, max_dbs=16)
    handle = env.open_db(b"_drift_kv", create=False)
    with env.begin(write=True, db=handle) as txn:
        txn.put(b"format", str(FORMAT_VERSION + 1).encode())
    env.close()
    with pytest.raises(CorruptionError, match="newer"):
        KV(path)


def test_engine_payload_corruption_is_reported_by_inspect(tmp_path: Path) -> None:
    data = tmp_path / "data"
    eng = Engine.open(data, durability="off")
    col = eng.create_collection("docs", 4)
    vecs = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    col.upsert(np.arange(20), vecs, [{"n": i} for i in range(20)])
    col.flush()
    eng.close()
    kv_path = data / "collections" / "docs" / "meta.lmdb"
    assert kv_path.is_dir()
    _flip_raw(kv_path, "payload", encode_i64(7), offset=-2)
    report = inspect_data_dir(str(data))
    assert not report["ok"]
    problems = report["collections"]["docs"]["problems"]
    assert any("payload" in p and encode_i64(7).hex() in p for p in problems), problems
    out = subprocess.run(
        [sys.executable, "-m", "drift_engine.cli", "inspect", "--data", str(data), "--quick"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert "checksum" in json.dumps(json.loads(out.stdout)["collections"]["docs"]["problems"])
    # the engine reads every payload at open (its payload index): the open fails, naming the bad record
    with pytest.raises(CorruptionError, match="collection 'docs', table 'payload', key 8000000000000007"):
        Engine.open(data, durability="off")
