"""The ZeroMQ fast path against a hostile peer (issue 13), on a real server process with a token and a small
message cap: no frame sequence kills a worker or blocks other clients, Health tells the fast path's state, and
one client opening many stream cursors cannot take cursors (or kNN) away from everyone else."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from drift_engine.server import drift_pb2 as pb
from tests.integration.harness import start_server

TOKEN = "hostile-probe-token"
DIM = 8
WORKERS = 2


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_server(
        tmp_path_factory.mktemp("hostile") / "data",
        "--max-message-bytes", "65536", "--fast-workers", str(WORKERS),
        "--max-cursors", "64", "--max-cursors-per-client", "8", "--fast-path", "zmq",
        token=TOKEN,
    )  # fmt: skip
    try:
        with server.client() as c:
            col = c.create_collection("items", DIM)
            col.upsert(np.arange(500), np.random.default_rng(0).standard_normal((500, DIM)).astype(np.float32))
        yield server
    finally:
        server.stop()


def fast_address(server) -> str:
    return f"ipc://{server.data / 'drift.sock'}.fast"


def search_msg(token: str = TOKEN) -> bytes:
    query = np.ones(DIM, dtype="<f4").tobytes()
    return pb.FastRequest(
        token=token, search=pb.SearchRequest(collection="items", query=query, k=3)
    ).SerializeToString()


def assert_prompt_search(server) -> None:
    """A normal search over the fast path answers well within its timeout."""
    with server.client(timeout=10) as client:
        assert client.fast() is not None
        t0 = time.monotonic()
        res = client.collection("items").search(np.ones(DIM, dtype=np.float32), k=3)
        assert len(res.ids) == 3
        assert time.monotonic() - t0 < 10
        health = client.health()
        assert health["status"] == "SERVING"
        assert health["fast_path_state"] == "ok", health


MALFORMED = [
    [b"a", b"b"],  # two frames, no envelope delimiter
    [b"", b"x", b"y"],  # delimiter, then two body frames
    [b""],  # only the delimiter
    [b"", b""],  # an empty body
    [b"", b"\xff" * 40],  # garbage
    [b"\x0a\x03abc"],  # no delimiter, a plausible protobuf
    [b"", b"", b"", b""],
    [b"", search_msg("wrong-token")],  # bad token
    [b"", search_msg("")],  # no token
    [b"", search_msg(), b"trailing"],  # a valid request with an extra frame
]


def test_malformed_frames_never_kill_the_fast_path(srv):
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(fast_address(srv))
        for _ in range(4 * WORKERS):
            for frames in MALFORMED:
                dealer.send_multipart(frames)
        # every message is answered with an error or dropped; whatever comes back is an error reply
        replies = 0
        while dealer.poll(2000):
            frames = dealer.recv_multipart()
            assert frames[0] == b"" and len(frames) == 2
            reply = pb.FastReply.FromString(frames[1])
            assert reply.WhichOneof("result") == "error"
            assert reply.error.code in ("INVALID_ARGUMENT", "UNAUTHENTICATED")
            replies += 1
        assert replies > 0
        # REQ peers sending multi-frame requests (REQ adds the delimiter) — the probe's four two-frame messages
        for _ in range(4 * WORKERS):
            req = ctx.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.connect(fast_address(srv))
            req.send_multipart([search_msg(), b"second"])
            assert req.poll(10_000), "no reply to a two-frame request"
            reply = pb.FastReply.FromString(req.recv())
            assert reply.error.code == "INVALID_ARGUMENT" and "frame" in reply.error.message
            req.close()
        # an oversized message is dropped by ZeroMQ (MAXMSGSIZE) and its peer disconnected
        big = ctx.socket(zmq.REQ)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(fast_address(srv))
        big.send(b"\x00" * 200_000)
        assert not big.poll(500)
        big.close()
    finally:
        ctx.destroy(linger=0)
    assert_prompt_search(srv)
    assert srv.proc.poll() is None


def test_many_cursors_from_one_client_leave_others_served(srv):
    ctx = zmq.Context()
    query = np.ones(DIM, dtype="<f4").tobytes()
    open_msg = pb.FastRequest(
        token=TOKEN, stream_open=pb.SearchStreamRequest(collection="items", query=query, k=2, batch_size=2)
    ).SerializeToString()
    try:
        hog = ctx.socket(zmq.REQ)
        hog.setsockopt(zmq.LINGER, 0)
        hog.connect(fast_address(srv))
        cursors = []
        for _ in range(200):  # far more than the server-wide cap of 64
            hog.send(open_msg)
            assert hog.poll(10_000)
            reply = pb.FastReply.FromString(hog.recv())
            assert reply.WhichOneof("result") == "batch", reply.error
            cursors.append(reply.batch.cursor)
        assert all(cursors)
        # the hog's oldest cursors were evicted (it holds at most its per-client share) ...
        hog.send(pb.FastRequest(token=TOKEN, stream_next=pb.StreamCursor(cursor=cursors[0])).SerializeToString())
        assert hog.poll(10_000)
        assert "expired" in pb.FastReply.FromString(hog.recv()).error.message
        hog.send(pb.FastRequest(token=TOKEN, stream_next=pb.StreamCursor(cursor=cursors[-1])).SerializeToString())
        assert hog.poll(10_000)
        assert pb.FastReply.FromString(hog.recv()).WhichOneof("result") == "batch"
        # ... and anyone else still opens streams and searches at once
        with srv.client(timeout=10) as client:
            assert client.health()["active_streams"] <= 8
            col = client.collection("items")
            hits = list(col.search_stream(np.ones(DIM, dtype=np.float32), k=2, batch_size=2, limit=6))
            assert len(hits) == 6
            assert len(col.search(np.ones(DIM, dtype=np.float32), k=5).ids) == 5
    finally:
        ctx.destroy(linger=0)
