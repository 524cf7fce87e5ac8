"""Bad input against a real server (token + tight caps): the right status code, the right DriftError class
with a clear message on the client, and the data directory unchanged."""

from __future__ import annotations

import hashlib
import struct

import grpc
import numpy as np
import pytest
import zmq

from drift_engine import errors as E
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.client import Client
from drift_engine.server.fastclient import FastPathClient
from tests.integration.harness import start_server

TOKEN = "s3cret-token"
DIM = 4
CAPS = ("--max-message-bytes", "65536", "--max-batch", "500", "--max-k", "100", "--max-dim", "64")


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("strict") / "data", *CAPS, "--fast-path", "zmq", token=TOKEN)
    with srv.client() as c:
        col = c.create_collection("items", DIM)
        col.upsert(np.arange(50), np.random.default_rng(0).standard_normal((50, DIM)), payloads=[{"a": 1}] * 50)
        c.create_collection("wide", 64)
    try:
        yield srv
    finally:
        srv.stop()


def dir_state(data) -> dict[str, str]:
    """Content hash of every file of the data directory (LMDB's reader lock table and sockets excluded)."""
    out = {}
    for path in sorted(data.rglob("*")):
        if path.is_file() and not path.is_socket() and path.name not in ("lock.mdb", "LOCK"):
            out[str(path.relative_to(data))] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def raw_call(srv, method: str, body: bytes, token: str | None = TOKEN) -> grpc.RpcError:
    with grpc.insecure_channel(srv.address) as channel:
        fn = channel.unary_unary(f"/drift.v1.DriftService/{method}")
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        with pytest.raises(grpc.RpcError) as info:
            fn(body, timeout=10, metadata=metadata)
    return info.value


def trailing(err: grpc.RpcError) -> dict:
    return dict(err.trailing_metadata() or ())


BAD_REQUESTS = [
    # (method, request, status code, DriftError class, message fragment)
    ("Search", pb.SearchRequest(collection="items", query=f32(1, 2, 3, float("nan")), k=3), "INVALID_ARGUMENT",
     E.InvalidVectorError, "contains NaN or Inf"),
    ("Search", pb.SearchRequest(collection="items", query=f32(1, 2, 3), k=3), "INVALID_ARGUMENT",
     E.DimensionMismatchError, "dimension 3 does not match the collection's 4"),
    ("Search", pb.SearchRequest(collection="items", query=b"\x00\x00\x80", k=3), "INVALID_ARGUMENT",
     E.InvalidVectorError, "not a whole number of float32"),
    ("Search", pb.SearchRequest(collection="nope", query=f32(1, 2, 3, 4), k=3), "NOT_FOUND",
     E.CollectionNotFoundError, "collection 'nope' does not exist"),
    ("Search", pb.SearchRequest(collection="items", query=f32(1, 2, 3, 4), k=0), "INVALID_ARGUMENT",
     E.InvalidArgumentError, "k=0 is out of range"),
    ("Search", pb.SearchRequest(collection="items", query=f32(1, 2, 3, 4), k=10**12), "INVALID_ARGUMENT",
     E.InvalidArgumentError, "out of range [1, 100] (this server's max_k)"),
    ("Search", pb.SearchRequest(collection="items", query=f32(1, 2, 3, 4), k=3, filter_json="{bad"),
     "INVALID_ARGUMENT", E.InvalidFilterError, "filter is not valid JSON"),
    ("Upsert", pb.UpsertRequest(collection="items", ids=[900], vectors=f32(1, 2, 3, float("inf")), replace=True),
     "INVALID_ARGUMENT", E.InvalidVectorError, "contains NaN or Inf"),
    ("Upsert", pb.UpsertRequest(collection="items", ids=[900], vectors=f32(1, 2, 3, 4, 5), replace=True),
     "INVALID_ARGUMENT", E.DimensionMismatchError, "dimension 5 does not match"),
    ("Upsert", pb.UpsertRequest(collection="items", ids=[900, 901], vectors=f32(1, 2, 3, 4, 5, 6, 7), replace=True),
     "INVALID_ARGUMENT", E.InvalidVectorError, "do not split into 2 rows"),
    ("Upsert", pb.UpsertRequest(collection="items", ids=[900], vectors=f32(1, 2, 3, 4), payload_json=["[1]"]),
     "INVALID_ARGUMENT", E.InvalidPayloadError, "must be a JSON object"),
    ("Upsert", pb.UpsertRequest(collection="items", ids=[900], vectors=f32(1, 2, 3, 4), payload_json=["{x"]),
     "INVALID_ARGUMENT", E.InvalidPayloadError, "is not valid JSON"),
    ("Upsert", pb.UpsertRequest(collection="items", ids=[1], vectors=f32(1, 2, 3, 4), replace=False),
     "ALREADY_EXISTS", E.DuplicateIdError, "already exist"),
    ("Upsert", pb.UpsertRequest(collection="items", ids=list(range(501)), vectors=f32(*[0.0] * 4) * 501),
     "RESOURCE_EXHAUSTED", E.RequestTooLargeError, "this server's limit is 500"),
    ("Upsert", pb.UpsertRequest(collection="items", ids=[900], vectors=f32(1, 2, 3, 4), durability="maybe"),
     "INVALID_ARGUMENT", E.InvalidParameterError, "durability must be one of"),
    ("CreateCollection", pb.CreateCollectionRequest(name="big", dim=65), "INVALID_ARGUMENT",
     E.InvalidParameterError, "out of range [1, 64] (this server's max_dim)"),
    ("CreateCollection", pb.CreateCollectionRequest(name="bad name!", dim=4), "INVALID_ARGUMENT",
     E.InvalidParameterError, "invalid collection name"),
    ("CreateCollection", pb.CreateCollectionRequest(name="items", dim=4), "ALREADY_EXISTS",
     E.CollectionExistsError, "already exists"),
    ("CreateCollection", pb.CreateCollectionRequest(name="m", dim=4, metric="hamming"), "INVALID_ARGUMENT",
     E.InvalidParameterError, "unknown metric"),
    ("SetParams", pb.SetParamsRequest(collection="items", params_json='{"nprobe": -1}'), "INVALID_ARGUMENT",
     E.InvalidParameterError, "out of range"),
    ("SetParams", pb.SetParamsRequest(collection="items", params_json="[]"), "INVALID_ARGUMENT",
     E.InvalidParameterError, "params must be a JSON object"),
    ("Get", pb.GetRequest(collection="nope", ids=[1]), "NOT_FOUND", E.CollectionNotFoundError, "does not exist"),
    ("DropCollection", pb.CollectionRequest(collection="nope"), "NOT_FOUND", E.CollectionNotFoundError, "nope"),
    ("Train", pb.TrainRequest(collection="items", n_buckets=0), "INVALID_ARGUMENT", E.InvalidArgumentError,
     "n_buckets=0 is out of range"),
]  # fmt: skip


def test_bad_requests_map_to_status_and_class_and_leave_data_unchanged(strict):
    before = dir_state(strict.data)
    with strict.client(fast_path=False) as client:
        for method, request, code, cls, fragment in BAD_REQUESTS:
            err = raw_call(strict, method, request.SerializeToString())
            assert err.code().name == code, (method, request, err.details())
            assert fragment in err.details(), (method, err.details())
            assert trailing(err)["drift-error-class"] == cls.__name__
            with pytest.raises(cls) as info:  # the client raises the engine's own class
                client.invoke(method, request)
            assert type(info.value) is cls and fragment in str(info.value)
    assert dir_state(strict.data) == before


def test_malformed_protobuf_bytes(strict):
    before = dir_state(strict.data)
    for method in ("Search", "Upsert", "CreateCollection", "Health"):
        err = raw_call(strict, method, b"\xff\xff\xff\xff\x0f")
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"for {method}" in err.details() and "malformed" in err.details()
    assert dir_state(strict.data) == before


def test_oversize_message(strict):
    before = dir_state(strict.data)
    big = pb.UpsertRequest(collection="items", ids=list(range(400)), vectors=f32(*[0.5] * 4) * 400)
    big.payload_json.extend(['{"pad": "' + "x" * 200 + '"}'] * 400)  # ~90 KB > 64 KiB cap
    err = raw_call(strict, "Upsert", big.SerializeToString())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with strict.client(fast_path=False) as client:
        with pytest.raises(E.RequestTooLargeError, match="RESOURCE_EXHAUSTED"):
            client.invoke("Upsert", big)
        with pytest.raises(E.RequestTooLargeError, match="this server's message limit"):
            client.collection("wide").get(list(range(499)))  # the reply could be 499 x 64 floats
    assert dir_state(strict.data) == before


def test_missing_and_wrong_token(strict):
    for token, fragment in ((None, "requires a token"), ("wrong", "invalid token")):
        err = raw_call(strict, "Health", b"", token=token)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and fragment in err.details()
        with Client(strict.address, token=token, fast_path=False) as client, pytest.raises(E.AuthenticationError):
            client.list_collections()
    fast = FastPathClient(f"ipc://{strict.data / 'drift.sock'}.fast", "wrong")
    with pytest.raises(E.AuthenticationError, match="invalid token"):
        fast.call(pb.FastRequest(get=pb.GetRequest(collection="items", ids=[1])), 10)


def test_fast_path_bad_input(strict):
    with strict.client() as client:
        fast = client.fast()
        assert fast is not None
        nan_query = pb.SearchRequest(collection="items", query=f32(1, 2, float("nan"), 4), k=2)
        with pytest.raises(E.InvalidVectorError, match="NaN"):
            fast.call(pb.FastRequest(search=nan_query), 10)
        with pytest.raises(E.InvalidArgumentError, match="unknown or expired stream cursor"):
            fast.call(pb.FastRequest(stream_next=pb.StreamCursor(cursor=12345)), 10)
        with pytest.raises(E.CollectionNotFoundError):
            fast.call(pb.FastRequest(get=pb.GetRequest(collection="nope", ids=[1])), 10)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{strict.data / 'drift.sock'}.fast")
    sock.send(b"\xff\xff\xff\xff\x0f")
    assert sock.poll(10_000)
    reply = pb.FastReply.FromString(sock.recv())
    sock.close()
    assert reply.error.code == "INVALID_ARGUMENT" and "malformed FastRequest" in reply.error.message


def test_client_side_validation_matches_embedded(strict):
    with strict.client() as client:
        col = client.collection("items")
        with pytest.raises(E.DimensionMismatchError, match="does not match the collection's 4"):
            col.search([1.0, 2.0])
        with pytest.raises(E.InvalidVectorError, match="NaN"):
            col.upsert([1], [[1.0, float("nan"), 0.0, 0.0]])
        with pytest.raises(E.InvalidArgumentError, match="k must be an integer"):
            col.search([1.0, 2.0, 3.0, 4.0], k="ten")
        with pytest.raises(E.InvalidFilterError):
            col.search([1.0, 2.0, 3.0, 4.0], filter={"a": [1]})
        with pytest.raises(E.InvalidPayloadError):
            col.upsert([1], [[1.0, 2.0, 3.0, 4.0]], payloads=[{"x": object()}])


def test_deeply_nested_json_is_invalid_argument_not_internal(strict):
    deep = "[" * 20_000 + "]" * 20_000  # 40 kB: under the strict server's message cap
    with strict.client(fast_path=False) as client:
        col = client.collection("items")
        with pytest.raises(E.InvalidArgumentError, match="nested too deeply"):
            client.invoke("SetParams", pb.SetParamsRequest(collection="items", params_json=deep))
        req = pb.UpsertRequest(collection="items", ids=[999], vectors=f32(1, 2, 3, 4), payload_json=[deep])
        with pytest.raises(E.InvalidPayloadError, match="nested too deeply"):
            client.invoke("Upsert", req)
        assert 999 not in col.get([999]).ids.tolist()
