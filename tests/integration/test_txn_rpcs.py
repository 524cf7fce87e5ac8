"""Engine transactions over gRPC (StageTxn / PrepareTxn / CommitTxn / AbortTxn) against a real server."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from drift_engine.errors import ConflictError, DuplicateIdError, TransactionNotFoundError
from drift_engine.server.txnclient import txn_op
from tests.integration.harness import start_server

DIM = 8


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def small_batch_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("txn") / "data", "--max-batch", "100")
    try:
        yield srv
    finally:
        srv.stop()


def test_a_transaction_larger_than_max_batch_over_two_collections_is_atomic(small_batch_server) -> None:
    with small_batch_server.client() as client:
        a = client.create_collection("a", dim=DIM)
        b = client.create_collection("b", dim=DIM)
        b.insert([5000], vecs(1))
        t = client.transaction()
        for start in range(0, 1000, 100):  # 10 StageTxn calls, each within the server's max_batch
            ids = np.arange(start, start + 100)
            t.insert("a", ids, vecs(100, start))
        t.insert("b", [4999, 5000], vecs(2))  # 5000 exists: nothing at all may be written
        with pytest.raises(DuplicateIdError):
            t.commit()
        assert len(a) == 0 and len(b) == 1
        t = client.transaction()
        for start in range(0, 1000, 100):
            t.insert("a", np.arange(start, start + 100), vecs(100, start))
        t.delete("b", [5000])
        done = t.commit()
        assert (done["written"], done["deleted"]) == (1000, 1) and done["seq"] > 0
        assert len(a) == 1000 and len(b) == 0


def test_conflicts_prepare_and_abort_over_the_wire(small_batch_server) -> None:
    with small_batch_server.client() as client:
        a = client.create_collection("c", dim=DIM)
        a.insert([1, 2], vecs(2))
        seen = a.get([1, 2])
        assert seen.read_lsn > 0
        t1 = client.transaction()
        t1.expect("c", [1], [seen.read_lsn])
        t1.upsert("c", [1], vecs(1, 3))
        a.delete([1])  # a concurrent delete of the row t1 read
        with pytest.raises(ConflictError):
            t1.commit()
        assert len(a.get([1])) == 0  # not resurrected
        t2 = client.transaction()
        t2.delete("c", [2])
        t2.prepare()
        with pytest.raises(ConflictError):
            a.upsert([2], vecs(1))  # held by the prepared transaction
        assert t2.abort() is True
        with pytest.raises(TransactionNotFoundError):
            t2.commit()
        with pytest.raises(Exception, match="op must be one of"):
            txn_op("c", "merge", [1], dim=DIM)


def test_prepared_transactions_do_not_survive_a_restart_and_committed_ones_do(tmp_path_factory) -> None:
    data = tmp_path_factory.mktemp("txn2") / "data"
    srv = start_server(data)
    try:
        with srv.client() as client:
            client.create_collection("d", dim=DIM)
            done = client.transaction()
            done.insert("d", [1], vecs(1))
            done.commit()
            t = client.transaction("in-doubt")
            t.insert("d", [2], vecs(1))
            t.prepare()
    finally:
        srv.stop(signal.SIGKILL)
    srv = start_server(data)
    try:
        with srv.client() as client:
            assert client.collection("d").get([1, 2]).ids.tolist() == [1]
            with pytest.raises(TransactionNotFoundError):
                client.txn_commit("in-doubt")
    finally:
        srv.stop()
