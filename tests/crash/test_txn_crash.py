"""SIGKILL of the engine server inside multi-collection transaction commits (engine/txn.py's recovery rule):
after a restart every acknowledged transaction is whole in every collection, every unacknowledged one is
whole or absent -- never partial."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import numpy as np
import pytest

from drift_engine.errors import DriftError
from tests.integration.harness import start_server

DIM = 8
ROWS = 50  # rows per collection per transaction
TXNS = 12

POINTS = [
    ("txn.before_commit_record", 3),
    ("txn.after_commit_record", 3),
    ("txn.after_apply", 6),  # 6 passes = 3 transactions of 2 collections: dies after the 4th's first collection
    ("txn.after_apply", 7),  # after the 4th's second collection, before its WALs are synced
    ("txn.before_done", 4),
    ("txn.after_done", 4),
    ("wal.after_fsync", 9),  # somewhere among the txn log's and the collections' fsyncs
    ("flush.after_commit", 1),  # a flush between transactions (TXN_APPLY records pinned in the WAL)
]


@contextmanager
def crash_env(point: str, skip: int):
    old = {k: os.environ.get(k) for k in ("DRIFT_CRASH_AT", "DRIFT_CRASH_SKIP")}
    os.environ["DRIFT_CRASH_AT"], os.environ["DRIFT_CRASH_SKIP"] = point, str(skip)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ids_of(txn: int, col: int) -> np.ndarray:
    return np.arange(ROWS) + txn * 1000 + col * 100_000


def vecs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, DIM)).astype(np.float32)


@pytest.mark.parametrize(("point", "skip"), POINTS, ids=[f"{p}-{s}" for p, s in POINTS])
def test_a_killed_commit_is_whole_or_absent(tmp_path, point: str, skip: int) -> None:
    data = tmp_path / "data"
    srv = start_server(data, "--fast-path", "off")
    try:
        with srv.client() as client:
            for name in ("a", "b"):
                client.create_collection(name, dim=DIM)
            client.collection("a").insert([-1], vecs(0)[:1])  # stays through every transaction
    finally:
        srv.stop()
    with crash_env(point, skip):
        srv = start_server(data, "--fast-path", "off")
    acked: list[int] = []
    try:
        with srv.client(timeout=10) as client:
            for t in range(1, TXNS + 1):
                try:
                    tx = client.transaction()
                    tx.insert("a", ids_of(t, 0), vecs(t))
                    tx.insert("b", ids_of(t, 1), vecs(t + 100))
                    if t > 1:  # and delete half of the previous transaction's rows, in both collections
                        tx.delete("a", ids_of(t - 1, 0)[: ROWS // 2])
                        tx.delete("b", ids_of(t - 1, 1)[: ROWS // 2])
                    tx.commit()
                except DriftError:
                    break
                acked.append(t)
                if t % 3 == 0:
                    try:
                        client.collection("a").flush()  # L1 commit between transactions
                    except DriftError:
                        break
        died = srv.proc.wait(timeout=30)
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)
    assert died == -signal.SIGKILL, f"the server was not killed at {point} (exit {died}); acked {acked}"
    srv = start_server(data, "--fast-path", "off")
    try:
        with srv.client() as client:
            a, b = client.collection("a"), client.collection("b")
            present = {
                name: set(i for batch in col.scan(vectors=False, payloads=False) for i in batch.ids.tolist())
                for name, col in (("a", a), ("b", b))
            }
        assert -1 in present["a"]
        if (point, skip) == ("txn.after_apply", 6):  # committed, applied to a only: the restart finished it in b
            assert "not wholly applied before a crash; finished it" in srv.log_text()
        last = max(acked, default=0)
        for t in range(1, TXNS + 1):
            deleted_by_next = t + 1 <= last or (t + 1 == last + 1 and _applied(present, t + 1))
            for c, name in ((0, "a"), (1, "b")):
                want = set(ids_of(t, c).tolist())
                if deleted_by_next:
                    want -= set(ids_of(t, c)[: ROWS // 2].tolist())
                got = want & present[name] if t <= last else set(ids_of(t, c).tolist()) & present[name]
                if t <= last:
                    assert got == want, f"acknowledged transaction {t} is not whole in {name} after a crash at {point}"
                elif t == last + 1:
                    applied = _applied(present, t)
                    assert got == (set(ids_of(t, c).tolist()) if applied else set()), (
                        f"in-flight transaction {t} is partial in {name} after a crash at {point}"
                    )
                else:
                    assert not got, f"transaction {t} was never sent but has rows in {name}"
    finally:
        srv.stop()


def _applied(present: dict[str, set[int]], t: int) -> bool:
    """Whether in-flight transaction ``t`` is there (judged by collection a; b must then agree)."""
    return bool(set(ids_of(t, 0).tolist()) & present["a"])
