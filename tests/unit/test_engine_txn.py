"""Engine transactions (drift_engine/engine/txn.py): atomic across collections, conflicts, reservations, expiry."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.errors import ConflictError, DuplicateIdError, TransactionNotFoundError

DIM = 8


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def engine(tmp_path):
    eng = Engine.open(tmp_path / "data")
    eng.create_collection("a", dim=DIM)
    eng.create_collection("b", dim=DIM)
    yield eng
    eng.close()


def test_a_failing_commit_writes_nothing_in_any_collection(engine, tmp_path) -> None:
    engine.collection("b").insert([7], vecs(1))
    t = engine.transaction()
    t.insert("a", np.arange(10_000), vecs(10_000))  # far more than one old engine batch
    t.insert("b", [6, 7], vecs(2))  # 7 exists: the whole transaction fails
    with pytest.raises(DuplicateIdError):
        t.commit()
    assert len(engine.collection("a")) == 0 and len(engine.collection("b")) == 1
    engine.close()
    with Engine.open(tmp_path / "data") as again:
        assert len(again.collection("a")) == 0 and len(again.collection("b")) == 1


def test_a_commit_spans_collections_and_survives_reopen(engine, tmp_path) -> None:
    with engine.transaction() as t:
        t.insert("a", [1, 2], vecs(2), [{"k": 1}, None])
        t.insert("b", [3], vecs(1))
    engine.collection("a").delete([2])
    with engine.transaction() as t:
        t.delete("a", [1])
        t.upsert("b", [3, 4], vecs(2, 1))
    engine.close()
    with Engine.open(tmp_path / "data") as again:
        assert len(again.collection("a")) == 0
        got = again.collection("b").get([3, 4])
        np.testing.assert_allclose(got.vectors, vecs(2, 1), rtol=1e-6)


def test_update_after_a_concurrent_delete_is_a_conflict(engine) -> None:
    a = engine.collection("a")
    a.insert([1], vecs(1))
    seen = a.get([1])
    t1 = engine.transaction()
    t1.expect("a", [1], [seen.read_lsn])
    t1.upsert("a", [1], vecs(1, 5))
    with engine.transaction() as t2:  # t2 deletes the row t1 read, and commits first
        t2.expect("a", [1], [a.get([1]).read_lsn])
        t2.delete("a", [1])
    with pytest.raises(ConflictError, match="changed or deleted"):
        t1.commit()
    assert len(a) == 0  # not resurrected


def test_two_updates_of_one_row_one_loses_loudly(engine) -> None:
    a = engine.collection("a")
    a.insert([1], vecs(1))
    b1, b2 = a.get([1]).read_lsn, a.get([1]).read_lsn
    t1, t2 = engine.transaction(), engine.transaction()
    for t, seed, bound in ((t1, 1, b1), (t2, 2, b2)):
        t.expect("a", [1], [bound])
        t.upsert("a", [1], vecs(1, seed))
    t1.commit()
    with pytest.raises(ConflictError):
        t2.commit()
    np.testing.assert_allclose(a.get([1]).vectors, vecs(1, 1), rtol=1e-6)


def test_flush_and_train_never_hide_a_conflict_and_a_flush_makes_none(engine) -> None:
    a = engine.collection("a")
    a.insert(np.arange(300), vecs(300))
    bound = a.get([5]).read_lsn
    a.flush()  # moves the row to L1 with its own version: no false conflict
    t = engine.transaction()
    t.expect("a", [5], [bound])
    t.upsert("a", [5], vecs(1, 9))
    t.commit()
    bound = a.get([6]).read_lsn
    a.upsert([6], vecs(1, 3))  # a change, then a flush and a train rewrite every L1 row
    a.train(n_buckets=2)
    t = engine.transaction()
    t.expect("a", [6], [bound])
    t.delete("a", [6])
    with pytest.raises(ConflictError):
        t.commit()
    assert len(a.get([6])) == 1


def test_a_prepared_transaction_holds_its_ids(engine) -> None:
    a = engine.collection("a")
    t = engine.transaction()
    t.insert("a", [1], vecs(1))
    t.prepare()
    with pytest.raises(ConflictError, match="prepared transaction"):
        a.upsert([1], vecs(1))
    other = engine.transaction()
    other.delete("a", [1])
    with pytest.raises(ConflictError):
        other.prepare()
    assert t.abort()
    a.upsert([1], vecs(1))  # released
    with pytest.raises(TransactionNotFoundError):
        t.commit()


def test_an_idle_transaction_is_dropped_after_the_timeout(engine) -> None:
    engine.txns.timeout = 0.2
    t = engine.transaction()
    t.insert("a", [1], vecs(1))
    t.prepare()
    deadline = time.monotonic() + 5
    while engine.txns.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.txns.pending() == []
    engine.collection("a").upsert([1], vecs(1))  # the reservation went with it
    with pytest.raises(TransactionNotFoundError):
        t.commit()


def test_a_restart_drops_staged_and_prepared_transactions(engine, tmp_path) -> None:
    t = engine.transaction("keep-me")
    t.insert("a", [1], vecs(1))
    t.prepare()
    engine.close()
    with Engine.open(tmp_path / "data") as again:
        with pytest.raises(TransactionNotFoundError):
            again.txn_commit("keep-me")
        assert len(again.collection("a")) == 0


def test_concurrent_transactions_on_disjoint_ids_all_commit(engine) -> None:
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(20):
                with engine.transaction() as t:
                    t.insert("a", [w * 1000 + i], vecs(1, i))
                    t.insert("b", [w * 1000 + i], vecs(1, i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(engine.collection("a")) == len(engine.collection("b")) == 80
