"""Negative controls for the crash checks: each kind of damage the matrix looks for is actually caught.

A clean driver run (in-process, no crash) is built once; each test copies it, damages the store or the ack
log in one specific way, and expects ``verify_open`` to fail naming that damage (and the clean copy to pass).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.l1 import layout as L
from drift_engine.storage.kv import encode_i64
from tests.crash.check import (
    CrashCheckError,
    acknowledged_state,
    expected_states,
    read_ack_log,
    verify_open,
)
from tests.crash.driver import COLLECTION, Settings, payload_for, run, vectors_for

SEED = 3
SETTINGS = Settings(wal_file_bytes=0)  # no WAL patch in this (the pytest) process


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("clean")
    run(str(base / "data"), str(base / "ack.log"), SEED, 60, SETTINGS)
    return base


@pytest.fixture
def store(clean_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(clean_run, tmp_path / "run")
    return tmp_path / "run"


def _verify(store: Path, rule: str = "either") -> dict[int, int]:
    log = read_ack_log(str(store / "ack.log"))
    engine = Engine.open(str(store / "data"))
    try:
        return verify_open(engine.collection(COLLECTION), SEED, expected_states(log, rule), log.ever_named)
    finally:
        engine.close()


@pytest.fixture
def col(store: Path) -> Iterator[Any]:
    engine = Engine.open(str(store / "data"))
    try:
        yield engine.collection(COLLECTION)
    finally:
        engine.close()


def _upsert(col: Any, ids: list[int], version: int) -> None:
    col.upsert(ids, vectors_for(SEED, ids, version), [payload_for(i, version) for i in ids])


def _append(store: Path, *records: dict[str, Any]) -> None:
    with open(store / "ack.log", "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def _state(store: Path) -> dict[int, int]:
    return acknowledged_state(read_ack_log(str(store / "ack.log")))[0]


def test_clean_store_passes(store: Path) -> None:
    assert _verify(store) == _state(store)


def test_lost_acknowledged_write_is_caught(store: Path) -> None:
    _append(store, {"phase": "begin", "i": 999, "op": "upsert", "ids": [12345], "version": 999})
    _append(store, {"phase": "ack", "i": 999, "result": 1})
    with pytest.raises(CrashCheckError, match=r"acknowledged id.* missing"):
        _verify(store)


def test_never_written_id_is_caught(store: Path, col: Any) -> None:
    _upsert(col, [777], 5)
    with pytest.raises(CrashCheckError, match="never written"):
        verify_open(col, SEED, [("acknowledged", _state(store))], read_ack_log(str(store / "ack.log")).ever_named)


def test_resurrected_delete_and_stale_value_are_caught(store: Path) -> None:
    log = read_ack_log(str(store / "ack.log"))
    state = _state(store)
    deleted = [i for op in log.acked if op["op"] == "delete" for i in op["ids"] if i not in state]
    live = sorted(state)
    assert deleted and live
    engine = Engine.open(str(store / "data"))
    try:
        col = engine.collection(COLLECTION)
        _upsert(col, deleted[:1], 1)
        _upsert(col, live[:1], 0)  # an older version than the acked one
        with pytest.raises(CrashCheckError) as info:
            verify_open(col, SEED, [("acknowledged", state)], log.ever_named)
    finally:
        engine.close()
    assert "should not be" in str(info.value) and "wrong version" in str(info.value)


def test_in_flight_rule_is_enforced(store: Path) -> None:
    state = _state(store)
    ident = sorted(state)[0]
    _append(store, {"phase": "begin", "i": 998, "op": "upsert", "ids": [ident, 4242], "version": 998})
    engine = Engine.open(str(store / "data"))
    try:
        _upsert(engine.collection(COLLECTION), [ident, 4242], 998)  # the in-flight batch made it
    finally:
        engine.close()
    assert _verify(store, "present")[4242] == 998
    assert _verify(store, "either")[ident] == 998
    with pytest.raises(CrashCheckError, match=r"in-flight op\(s\) lost"):
        _verify(store, "absent")


def test_half_applied_batch_is_caught(store: Path) -> None:
    _append(store, {"phase": "begin", "i": 998, "op": "upsert", "ids": [4242, 4343], "version": 998})
    engine = Engine.open(str(store / "data"))
    try:
        _upsert(engine.collection(COLLECTION), [4242], 998)  # only half of the batch
    finally:
        engine.close()
    with pytest.raises(CrashCheckError, match=r"in-flight op\(s\) 998 applied"):
        _verify(store, "either")


def test_wrong_lmdb_location_is_caught(store: Path, col: Any) -> None:
    col.flush()
    with col._l1_lock:
        (key, raw), *_ = list(col._kv.iterate(L.DB_LOC))
        loc = L.Location.unpack(raw)
        with col._kv.write() as batch:
            batch.put(L.DB_LOC, key, loc._replace(row=loc.row + 1).pack())
    with pytest.raises(CrashCheckError, match="LMDB locat"):
        verify_open(col, SEED, [("acknowledged", _state(store))], read_ack_log(str(store / "ack.log")).ever_named)


def test_leftover_segment_file_is_caught(store: Path, col: Any) -> None:
    with open(os.path.join(col._seg_dir, "999999.drift"), "wb") as f:
        f.write(b"junk")
    with pytest.raises(CrashCheckError, match="unreferenced"):
        verify_open(col, SEED, [("acknowledged", _state(store))], read_ack_log(str(store / "ack.log")).ever_named)


def test_lost_recall_is_caught(store: Path, col: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = col.search_batch

    def worse(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        ids, dists = real(*args, **kwargs)
        ids = ids.copy()
        ids[:, 0] = -1  # the nearest hit of every query goes missing
        return ids, dists

    monkeypatch.setattr(col, "search_batch", worse)
    with pytest.raises(CrashCheckError, match="recall"):
        verify_open(col, SEED, [("acknowledged", _state(store))], read_ack_log(str(store / "ack.log")).ever_named)


def test_lmdb_payload_of_l1_row_is_checked(store: Path, col: Any) -> None:
    col.flush()
    with col._l1_lock:
        key, raw = next(iter(col._kv.iterate(L.DB_PAYLOAD)))
        pay = json.loads(raw)
        pay["v"] += 1
        with col._kv.write() as batch:
            batch.put(L.DB_PAYLOAD, key, json.dumps(pay).encode())
    assert key == encode_i64(int(pay["id"]))
    with pytest.raises(CrashCheckError, match="payload"):
        verify_open(col, SEED, [("acknowledged", _state(store))], read_ack_log(str(store / "ack.log")).ever_named)
