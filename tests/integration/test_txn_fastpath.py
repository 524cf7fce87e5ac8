"""The transaction RPCs over the direct fast path (server/direct.py, Client.txn_*): stage with prepare in one
call, commit, abort and their errors, against an in-process server and a real server process whose gRPC
transaction RPCs are never used when a fast path is offered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from drift_engine.api import Engine
from drift_engine.errors import ConflictError, DuplicateIdError, InvalidVectorError, TransactionNotFoundError
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.core import ServerLimits, ServiceCore
from drift_engine.server.direct import DirectServer
from drift_engine.server.directclient import DirectClient
from drift_engine.server.txnclient import txn_op
from tests.integration.harness import start_server

DIM = 8


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Engine, DirectClient]]:
    engine = Engine.open(tmp_path / "data")
    engine.create_collection("a", dim=DIM)
    engine.create_collection("b", dim=DIM)
    core = ServiceCore(engine, ServerLimits(max_message_bytes=1 << 20))
    srv = DirectServer(core, f"fast+unix:{tmp_path / 's'}", token=None)
    srv.start()
    try:
        yield engine, DirectClient(srv.address, None)
    finally:
        srv.stop(1)
        engine.close()


def _stage(txn_id: str, ops: list[pb.TxnOp], prepare: bool = False) -> pb.FastRequest:
    return pb.FastRequest(txn_stage=pb.StageTxnRequest(txn_id=txn_id, ops=ops, prepare=prepare))


def test_stage_with_prepare_then_commit_in_two_round_trips(served) -> None:
    engine, fast = served
    ops = [txn_op("a", "insert", [1, 2], vecs(2), dim=DIM), txn_op("b", "upsert", [3], vecs(1, 1), dim=DIM)]
    assert fast.call(_stage("t1", ops, prepare=True), 5).txn.rows == 3  # the prepared rows
    assert engine.txns.pending()[0]["prepared"]
    with pytest.raises(ConflictError):  # prepared: its ids are reserved
        engine.collection("a").insert([1], vecs(1, 2))
    done = fast.call(pb.FastRequest(txn_commit=pb.TxnRequest(txn_id="t1")), 5).txn
    assert (done.written, done.deleted) == (3, 0) and done.seq > 0
    np.testing.assert_allclose(engine.collection("b").get([3]).vectors, vecs(1, 1), rtol=1e-6)
    assert len(engine.collection("a")) == 2 and not engine.txns.pending()


def test_a_failing_prepare_in_the_stage_call_writes_nothing_and_drops_the_transaction(served) -> None:
    engine, fast = served
    engine.collection("a").insert([7], vecs(1))
    ops = [txn_op("a", "insert", [6, 7], vecs(2), dim=DIM)]
    with pytest.raises(DuplicateIdError):
        fast.call(_stage("t2", ops, prepare=True), 5)
    assert len(engine.collection("a")) == 1 and not engine.txns.pending()
    with pytest.raises(TransactionNotFoundError):
        fast.call(pb.FastRequest(txn_commit=pb.TxnRequest(txn_id="t2")), 5)


def test_abort_over_the_fast_path(served) -> None:
    engine, fast = served
    fast.call(_stage("t3", [txn_op("a", "insert", [9], vecs(1), dim=DIM)]), 5)
    assert fast.call(pb.FastRequest(txn_abort=pb.TxnRequest(txn_id="t3")), 5).txn.found
    assert not fast.call(pb.FastRequest(txn_abort=pb.TxnRequest(txn_id="t3")), 5).txn.found
    assert len(engine.collection("a")) == 0


def test_the_client_sends_transactions_over_the_fast_path_when_offered(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        with srv.client() as client:
            client.create_collection("a", dim=DIM)
            assert client.fast() is not None

            def no_grpc(rpc, *args, **kwargs):
                if rpc.endswith("Txn"):
                    raise AssertionError(f"{rpc} went over gRPC although the server offers a fast path")
                return real_invoke(rpc, *args, **kwargs)

            real_invoke, client.invoke = client.invoke, no_grpc
            assert client.txn_stage("x", [txn_op("a", "insert", [1, 2], vecs(2), dim=DIM)], prepare=True) == 2
            assert client.txn_commit("x")["written"] == 2
            tx = client.transaction()
            tx.upsert("a", [2], vecs(1, 5))
            tx.commit()
            client.invoke = real_invoke
            np.testing.assert_allclose(client.collection("a").get([2]).vectors, vecs(1, 5), rtol=1e-6)
        with srv.client(fast_path=False) as grpc_only:  # and the gRPC RPCs still answer the same
            assert grpc_only.txn_stage("y", [txn_op("a", "insert", [3], vecs(1), dim=DIM)], prepare=True) == 1
            assert grpc_only.txn_commit("y")["written"] == 1
            assert len(grpc_only.collection("a")) == 3
    finally:
        srv.stop()


def test_stage_requests_built_in_place_stage_the_same_rows_over_either_transport(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        payloads = [{"tag": "x"}, None, {"n": 3}]
        for fast_path, name in ((True, "fast"), (False, "grpc")):
            with srv.client(fast_path=fast_path) as client:
                client.create_collection(name, dim=DIM)
                request, stage = client.stage_request(f"t-{name}")
                assert isinstance(request, pb.FastRequest) is fast_path
                txn_op(name, "insert", [1, 2, 3], vecs(3, 7), payloads, dim=DIM, into=stage.ops.add())
                assert client.send_stage(request) == 3
                request, stage = client.stage_request(f"t-{name}", prepare=True)
                txn_op(name, "delete", [9], dim=DIM, into=stage.ops.add())
                assert client.send_stage(request) == 3  # with the prepare: the rows the transaction writes
                assert client.txn_commit(f"t-{name}")["written"] == 3
                got = client.collection(name).get([1, 2, 3])
                np.testing.assert_array_equal(got.vectors, vecs(3, 7))
                assert list(got.payloads) == payloads
    finally:
        srv.stop()


@pytest.mark.parametrize("token", [None, "t0ken"])  # the hand-encoded request carries the token when there is one
def test_search_rows_answers_as_search_does_over_either_transport(tmp_path: Path, token: str | None) -> None:
    srv = start_server(tmp_path / "data", token=token)
    try:
        data = vecs(300, 3)
        payloads = [{"tag": f"t{i % 3}"} for i in range(300)]
        query = vecs(1, 4)[0]
        for fast_path in (True, False):
            with srv.client(fast_path=fast_path) as client:
                if fast_path:
                    client.create_collection("s", dim=DIM).upsert(np.arange(300), data, payloads)
                col = client.collection("s")
                for flt, with_payloads, knobs in (
                    (None, False, {}),
                    ({"tag": "t1"}, True, {"nprobe": 2, "rerank": 3}),
                    (None, True, {"ef": 40}),
                ):
                    want = col.search(query, k=7, filter=flt, with_payloads=with_payloads, **knobs)
                    ids, dists, pays = col.search_rows(
                        query, 7, filter_json=json.dumps(flt) if flt else "", with_payloads=with_payloads, **knobs
                    )
                    assert ids == want.ids.tolist() and dists == want.distances.tolist()
                    assert pays == (list(want.payloads) if with_payloads else None)
                    assert all(type(i) is int for i in ids) and all(type(d) is float for d in dists)
                    if flt:
                        assert {p["tag"] for p in pays} == {"t1"}
    finally:
        srv.stop()


def test_search_rows_takes_the_query_as_a_literal_the_server_parses(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        data = vecs(200, 5)
        query = vecs(1, 6)[0]
        literal = "{" + ",".join(repr(float(x)) for x in query.tolist()) + "}"
        for fast_path in (True, False):  # the server parses it, or (gRPC only) the client does
            with srv.client(fast_path=fast_path) as client:
                if fast_path:
                    client.create_collection("t", dim=DIM).upsert(np.arange(200), data)
                col = client.collection("t")
                want = col.search_rows(query, 9, nprobe=3)
                assert col.search_rows(literal, 9, nprobe=3) == want
                assert col.search_rows("[" + literal[1:-1] + "]", 9, nprobe=3) == want
                for bad in ("{1,2}", literal[:-1] + ",1}", literal.replace(literal[1:4], "nan", 1), "junk"):
                    with pytest.raises(InvalidVectorError):
                        col.search_rows(bad, 9)
    finally:
        srv.stop()
