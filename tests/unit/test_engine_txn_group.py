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
from drift_engine.errors import CollectionNotFoundError, ConflictError, WritesStoppedError
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
        base = i * 10
        with engine.transaction() as t:
            t.insert(f"c{worker}", np.arange(base, base + 3), vecs(3, base))


def test_concurrent_commits_share_fsyncs_and_all_land(engine, tmp_path) -> None:
    """Commits to different collections share the commit point's fsync; TXN_DONE records are batched."""
    for w in range(THREADS):
        engine.create_collection(f"c{w}", dim=DIM)
    before = engine.txns.wal.stats()["fsyncs"]
    start = threading.Barrier(THREADS)
    group = ThreadGroup()
    for w in range(THREADS):
        group.start(_commit_many, engine, w, start)
    group.join()
    commits = THREADS * PER_THREAD
    assert engine.txns.finish_pending(timeout=30)
    assert all(len(engine.collection(f"c{w}")) == 3 * PER_THREAD for w in range(THREADS))
    fsyncs = engine.txns.wal.stats()["fsyncs"] - before
    # one commit point and one TXN_DONE fsync each without sharing: 2 per commit
    assert fsyncs < commits, f"{fsyncs} transaction-log fsyncs for {commits} concurrent commits"
    assert not any(engine.collection(f"c{w}")._writes.txn_pins for w in range(THREADS))
    engine.close()
    with Engine.open(tmp_path / "data") as again:
        assert not _unfinished(again)  # every commit was finished (TXN_DONE) before close
        assert all(len(again.collection(f"c{w}")) == 3 * PER_THREAD for w in range(THREADS))


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


@pytest.fixture
def paused_commit(monkeypatch):
    """Pause the commit running on thread "T1" right after its commit record is durable (before its apply)."""
    import drift_engine.crashpoints as cp

    reached, go = threading.Event(), threading.Event()
    real = cp.hit

    def hit(name: str) -> None:
        if name == "txn.after_commit_record" and threading.current_thread().name == "T1":
            reached.set()
            go.wait(10)
        real(name)

    monkeypatch.setattr(cp, "hit", hit)
    return reached, go


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except Exception as exc:  # inspected by the test
            out["error"] = exc

    th = threading.Thread(target=run, name="T1")
    th.start()
    return th, out


def test_expect_still_detects_write_skew_with_a_commit_between_log_and_apply(engine, paused_commit) -> None:
    """T1 read y and writes x; T2 read x and writes y. T2 must not validate x while T1 is half done."""
    reached, go = paused_commit
    a = engine.collection("a")
    a.upsert([1, 2], vecs(2))
    rx, ry = a.get([1]).read_lsn, a.get([2]).read_lsn

    def t1() -> dict:
        t = engine.transaction("T1")
        t.expect("a", [2], [ry])
        t.upsert("a", [1], vecs(1, 11))
        return t.commit()

    th, out = _in_thread(t1)
    assert reached.wait(10)
    threading.Timer(0.3, go.set).start()  # T2 below waits for T1's write lock, then validates
    t = engine.transaction("T2")
    t.expect("a", [1], [rx])
    t.upsert("a", [2], vecs(1, 22))
    with pytest.raises(ConflictError):
        t.commit()
    th.join(10)
    assert "result" in out, out
    np.testing.assert_allclose(a.get([2]).vectors, vecs(2)[1:], rtol=1e-6)  # T2 wrote nothing


def test_a_plain_write_of_an_id_being_committed_waits_for_the_commit(engine, paused_commit) -> None:
    """A commit without a prepare reserves nothing: a plain write of its id waits for it, never fails."""
    reached, go = paused_commit
    a = engine.collection("a")

    def t1() -> dict:
        t = engine.transaction("T1")
        t.upsert("a", [7], vecs(1, 1))
        return t.commit()

    th, out = _in_thread(t1)
    assert reached.wait(10)
    threading.Timer(0.3, go.set).start()
    a.upsert([7], vecs(1, 2))  # no ConflictError: ordered after the commit
    th.join(10)
    assert "result" in out, out
    np.testing.assert_allclose(a.get([7]).vectors, vecs(1, 2), rtol=1e-6)


def test_drop_finishes_the_collections_transactions_first_or_refuses(engine, tmp_path, monkeypatch) -> None:
    with engine.transaction() as t:
        t.insert("a", [1, 2], vecs(2))
        t.insert("b", [10], vecs(1))
    engine.drop_collection("a")  # the finisher wrote its TXN_DONE before the drop
    engine.create_collection("a", dim=4)
    assert len(engine.collection("a")) == 0
    held: list = []
    monkeypatch.setattr(engine.txns._finisher, "add", held.append)  # a finisher that cannot finish it
    with engine.transaction() as t:
        t.insert("a", [5], np.ones((1, 4), np.float32))
        t.insert("b", [11], vecs(1))
    with pytest.raises(WritesStoppedError, match="could not be finished"):
        engine.drop_collection("a")
    monkeypatch.undo()
    engine.close()
    with Engine.open(tmp_path / "data") as again:  # recovery finished it into the same (not re-created) a
        assert sorted(again.collection("b").get([10, 11]).ids.tolist()) == [10, 11]
        assert again.collection("a").get([5]).ids.tolist() == [5]
        again.drop_collection("a")
        again.create_collection("a", dim=8)
    with Engine.open(tmp_path / "data") as third:
        assert len(third.collection("a")) == 0


def test_a_part_staged_before_a_drop_and_recreate_fails_the_commit(engine, tmp_path) -> None:
    t = engine.transaction()
    t.insert("a", [1], vecs(1))
    t.insert("b", [2], vecs(1))
    engine.drop_collection("a")
    engine.create_collection("a", dim=4)
    with pytest.raises(CollectionNotFoundError, match="dropped after this transaction staged"):
        t.commit()
    assert len(engine.collection("a")) == 0 and len(engine.collection("b")) == 0
    engine.close()
    with Engine.open(tmp_path / "data") as again:  # and the directory opens
        assert len(again.collection("a")) == 0 and again.collection("a").dim == 4


def test_a_commit_waiting_for_one_collection_never_holds_up_another(engine) -> None:
    a_lock = engine.collection("a")._writes.lock
    a_lock.acquire()  # as a long write to a would
    try:
        blocked = threading.Thread(target=_commit_one, args=(engine, "a", 1), daemon=True)
        blocked.start()
        done = threading.Event()
        threading.Thread(target=lambda: (_commit_one(engine, "b", 2), done.set()), daemon=True).start()
        assert done.wait(10), "a commit to b waited behind one that waits for a's write lock"
    finally:
        a_lock.release()
    blocked.join(10)
    assert len(engine.collection("a")) == 1 and len(engine.collection("b")) == 1


def _commit_one(engine: Engine, name: str, ident: int) -> None:
    with engine.transaction() as t:
        t.upsert(name, [ident], vecs(1, ident))


def test_drop_does_not_wait_for_commits_that_came_after_it(engine) -> None:
    engine.create_collection("c", dim=DIM)
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            _commit_one(engine, "c", i % 500)
            i += 1

    loaders = ThreadGroup()
    for _ in range(4):
        loaders.start(load)
    try:
        dropped = threading.Event()
        threading.Thread(target=lambda: (engine.drop_collection("a"), dropped.set()), daemon=True).start()
        assert dropped.wait(20), "drop_collection waited for the finisher to be idle under a steady load"
    finally:
        stop.set()
        loaders.join()
    assert "a" not in engine.list_collections()
