"""Group commit of engine transactions (engine/txn.py, engine/txn_done.py): concurrent commits share the
commit point's fsync, the collections' WAL syncs and TXN_DONE are written in the background, and every
acknowledged transaction survives a reopen whether or not its TXN_DONE was written."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.errors import ConflictError
from drift_engine.wal import records
from drift_engine.wal.log import WriteAheadLog
from tests.unit.threadcheck import ThreadGroup

DIM = 8
THREADS = 8
PER_THREAD = 25


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def engine(tmp_path):
    eng = Engine.open(tmp_path / "data")
    eng.create_collection("a", dim=DIM)
    eng.create_collection("b", dim=DIM)
    yield eng
    eng.close()


def _commit_many(engine: Engine, worker: int, start: threading.Barrier) -> None:
    start.wait()
    for i in range(PER_THREAD):
        base = (worker * PER_THREAD + i) * 10
        with engine.transaction() as t:
            t.insert("a", np.arange(base, base + 3), vecs(3, base))
            t.insert("b", [base], vecs(1, base + 1))


def test_concurrent_commits_share_fsyncs_and_all_land(engine, tmp_path) -> None:
    before = engine.txns.wal.stats()["fsyncs"]
    start = threading.Barrier(THREADS)
    group = ThreadGroup()
    for w in range(THREADS):
        group.start(_commit_many, engine, w, start)
    group.join()
    commits = THREADS * PER_THREAD
    assert engine.txns.finish_pending(timeout=30)
    assert len(engine.collection("a")) == 3 * commits and len(engine.collection("b")) == commits
    fsyncs = engine.txns.wal.stats()["fsyncs"] - before
    # one commit point and one TXN_DONE fsync each without sharing: 2 per commit
    assert fsyncs < commits, f"{fsyncs} transaction-log fsyncs for {commits} concurrent commits"
    assert not engine.collection("a")._writes.txn_pins and not engine.collection("b")._writes.txn_pins
    engine.close()
    with Engine.open(tmp_path / "data") as again:
        assert not _unfinished(again)  # every commit was finished (TXN_DONE) before close
        assert len(again.collection("a")) == 3 * commits and len(again.collection("b")) == commits


CHILD = """
import os, signal, sys
import numpy as np
from drift_engine import Engine
eng = Engine.open(sys.argv[1])
for name in ("a", "b"):
    eng.create_collection(name, dim=8)
held = []
eng.txns._finisher.add = held.append  # the background finisher never runs: no TXN_DONE, no WAL sync
rng = np.random.default_rng(5)
with eng.transaction() as t:
    t.insert("a", [1, 2], rng.standard_normal((2, 8)).astype(np.float32), [{"k": 1}, None])
    t.insert("b", [3], rng.standard_normal((1, 8)).astype(np.float32))
print("acked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_acknowledged_commit_needs_only_its_commit_record(tmp_path) -> None:
    """Acknowledged = the TXN_COMMIT record is durable. Killed before the finisher ran, and with the
    collections' TXN_APPLY records cut off (a crash before they were synced), the reopen applies the
    transaction from the transaction log alone, and marks it done."""
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(data)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and "acked" in proc.stdout, proc.stderr
    for name in ("a", "b"):
        wal_dir = next(p for p in data.rglob("wal") if p.is_dir() and p.parent.name == name)
        wal = WriteAheadLog(str(wal_dir))
        try:
            applies = [r for r in wal.records(0) if r.type == records.TXN_APPLY]
        finally:
            wal.close()
        assert len(applies) == 1, f"{name}: expected the transaction's TXN_APPLY record in the WAL"
        with open(applies[0].path, "r+b") as f:
            f.truncate(applies[0].offset)
    rng = np.random.default_rng(5)
    want_a, want_b = rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((1, 8)).astype(np.float32)
    with Engine.open(data) as again:
        got = again.collection("a").get([1, 2])
        np.testing.assert_allclose(got.vectors, want_a, rtol=1e-6)
        assert got.payloads[0] == {"k": 1}
        np.testing.assert_allclose(again.collection("b").get([3]).vectors, want_b, rtol=1e-6)
    with Engine.open(data) as third:  # finished and marked done by the first reopen
        assert not _unfinished(third)
        assert len(third.collection("a")) == 2 and len(third.collection("b")) == 1


def _unfinished(engine: Engine) -> set[int]:
    """Sequence numbers of TXN_COMMIT records in the transaction log without a TXN_DONE."""
    committed, done = set(), set()
    for rec in engine.txns.wal.records(0):
        if rec.type == records.TXN_COMMIT:
            committed.add(records.decode_txn_commit(rec.body)[0])
        elif rec.type == records.TXN_DONE:
            done.add(records.decode_txn_done(rec.body))
    return committed - done


def test_a_commit_and_a_plain_write_of_a_reserved_id_conflict(engine) -> None:
    """While a transaction is between its commit record and its apply, its ids are reserved."""
    t = engine.transaction()
    t.insert("a", [42], vecs(1))
    t.prepare()
    with pytest.raises(ConflictError):
        engine.collection("a").insert([42], vecs(1, 1))
    t.commit()
    assert len(engine.collection("a")) == 1
