"""The direct fast path (server/direct.py + server/directclient.py) over a Unix socket and over TCP: answers,
the token rule, malformed frames, per-connection stream cursors, the connection cap and a clean stop."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from drift_engine.api import Engine
from drift_engine.errors import (
    AuthenticationError,
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidArgumentError,
)
from drift_engine.server import directclient
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.core import ServerLimits, ServiceCore
from drift_engine.server.direct import DirectServer
from drift_engine.server.directclient import DirectClient
from drift_engine.server.stream import CursorTable

DIM, N = 8, 500
TOKEN = "s3cret"


@pytest.fixture
def core(tmp_path: Path) -> Iterator[ServiceCore]:
    engine = Engine.open(tmp_path / "data")
    col = engine.create_collection("c", dim=DIM)
    col.upsert(np.arange(N), np.random.default_rng(0).random((N, DIM), dtype=np.float32))
    try:
        yield ServiceCore(engine, ServerLimits(max_message_bytes=1 << 20))
    finally:
        engine.close()


@pytest.fixture
def unix_server(core: ServiceCore, tmp_path: Path) -> Iterator[DirectServer]:
    cursors = CursorTable(max_total=64, max_per_client=4)
    srv = DirectServer(core, f"fast+unix:{tmp_path / 'fast.sock'}", token=None, cursors=cursors)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(1)


def _search(q: np.ndarray, k: int = 5) -> pb.FastRequest:
    return pb.FastRequest(search=pb.SearchRequest(collection="c", query=q.astype(np.float32).tobytes(), k=k))


def _raw(srv: DirectServer) -> socket.socket:
    s = socket.socket(srv.family, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(srv.bind_to)
    return s


def test_search_over_unix_and_tcp_with_token(core: ServiceCore, unix_server: DirectServer) -> None:
    q = np.full(DIM, 0.5)
    want = list(core.search(_search(q).search).ids)
    assert list(DirectClient(unix_server.address, None).call(_search(q), 5).search.ids) == want
    tcp = DirectServer(core, "fast+tcp:127.0.0.1:0", token=TOKEN.encode())
    tcp.start()
    try:
        assert list(DirectClient(tcp.address, TOKEN).call(_search(q), 5).search.ids) == want
        with pytest.raises(AuthenticationError):
            DirectClient(tcp.address, "wrong").call(_search(q), 5)
        with pytest.raises(AuthenticationError):
            DirectClient(tcp.address, None).call(_search(q), 5)
    finally:
        tcp.stop(1)


def test_tcp_without_a_token_is_refused_unless_allowed(core: ServiceCore) -> None:
    with pytest.raises(InvalidArgumentError, match="no token"):
        DirectServer(core, "fast+tcp:127.0.0.1:0", token=None)
    DirectServer(core, "fast+tcp:127.0.0.1:0", token=None, allow_no_token=True)  # explicitly allowed


def test_malformed_frames_get_an_error_and_never_stop_the_server(unix_server: DirectServer) -> None:
    bad = [
        struct.pack("<I", 5) + b"\xff\xff\xff\xff\xff",  # does not parse
        struct.pack("<I", 2**31),  # over the message limit
        struct.pack("<I", 0),  # an empty request: names no call
        b"\x01\x00",  # half a header, then EOF
        struct.pack("<I", 100) + b"x" * 10,  # a short body, then EOF
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # another protocol
    ]
    for _ in range(50):
        for frame in bad:
            s = _raw(unix_server)
            s.sendall(frame)
            s.shutdown(socket.SHUT_WR)
            data = b""
            checked = frame[:4] in (struct.pack("<I", 5), struct.pack("<I", 2**31), struct.pack("<I", 0))
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except ConnectionResetError:  # closed with our unread bytes in its buffer: fine for the others
                assert not checked, frame
            s.close()
            if checked:
                (length,) = struct.unpack("<I", data[:4])
                reply = pb.FastReply.FromString(data[4 : 4 + length])
                assert reply.WhichOneof("result") == "error", frame
    got = DirectClient(unix_server.address, None).call(_search(np.zeros(DIM)), 5)
    assert len(got.search.ids) == 5
    assert unix_server.serving


def test_cursors_are_capped_per_connection_and_a_plain_search_never_needs_one(unix_server: DirectServer) -> None:
    client = DirectClient(unix_server.address, None)
    opened = []
    for i in range(20):  # 4 per client: older ones are evicted, nothing is refused
        req = pb.FastRequest(
            stream_open=pb.SearchStreamRequest(
                collection="c", query=np.full(DIM, i / 20, dtype=np.float32).tobytes(), batch_size=2
            )
        )
        batch = client.call(req, 5).batch
        assert not batch.done and batch.cursor
        opened.append(batch.cursor)
    assert unix_server.cursors.count(b"") == 0 and len(unix_server.cursors) == 4
    with pytest.raises(InvalidArgumentError, match="unknown or expired"):
        client.call(pb.FastRequest(stream_next=pb.StreamCursor(cursor=opened[0])), 5)
    nxt = client.call(pb.FastRequest(stream_next=pb.StreamCursor(cursor=opened[-1])), 5).batch
    assert len(nxt.ids) == 2
    other = DirectClient(unix_server.address, None)
    results = []

    def search_from_another_thread() -> None:
        results.append(len(other.call(_search(np.ones(DIM)), 5).search.ids))

    thread = threading.Thread(target=search_from_another_thread)
    thread.start()
    thread.join(30)
    assert results == [5]


def test_connections_beyond_the_cap_are_answered_unavailable(core: ServiceCore, tmp_path: Path) -> None:
    srv = DirectServer(core, f"fast+unix:{tmp_path / 'capped.sock'}", token=None, max_connections=2)
    srv.start()
    try:
        held = [_raw(srv), _raw(srv)]
        for s in held:  # make sure both are admitted before the third arrives
            s.sendall(struct.pack("<I", len(_search(np.zeros(DIM)).SerializeToString())))
            s.sendall(_search(np.zeros(DIM)).SerializeToString())
            s.recv(65536)
        with pytest.raises(EngineUnavailableError, match="limit"):
            DirectClient(srv.address, None).call(_search(np.zeros(DIM)), 5)
        for s in held:
            s.close()
    finally:
        srv.stop(1)


def test_stop_closes_connections_and_removes_the_socket(core: ServiceCore, tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"
    srv = DirectServer(core, f"fast+unix:{path}", token=None)
    srv.start()
    client = DirectClient(srv.address, None)
    assert len(client.call(_search(np.zeros(DIM)), 5).search.ids) == 5
    assert oct(path.stat().st_mode & 0o777) == oct(0o660)
    srv.stop(1)
    assert not path.exists() and not srv.serving
    with pytest.raises(EngineUnavailableError):
        client.call(_search(np.zeros(DIM)), 5)


def test_deadline_and_cancel_check_against_a_silent_server(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # accepts, reads, never answers
    silent.bind(str(path))
    silent.listen(4)
    try:
        client = DirectClient(f"fast+unix:{path}", None)
        request = pb.FastRequest(get=pb.GetRequest(collection="x", ids=[1]))
        with pytest.raises(DeadlineExceededError, match="no reply"):
            client.call(request, 0.2)

        class Interrupted(Exception):
            pass

        def cancel() -> None:
            raise Interrupted

        client.cancel_check = cancel
        with pytest.raises(Interrupted):
            client.call(request, None)
    finally:
        silent.close()


def test_replies_say_how_long_the_server_took(
    core: ServiceCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``server_us``: from reading the request to its reply (what a client's busy-wait back-off reads)."""
    srv = DirectServer(core, f"fast+unix:{tmp_path / 'took.sock'}", token=None, spin_us=0)
    srv.start()
    try:
        client = DirectClient(srv.address, None)
        q = np.random.default_rng(2).random(DIM, dtype=np.float32)
        quick = client.call(_search(q), 5)
        assert 0 < quick.server_us < 1_000_000
        real_search = core.search

        def slow_search(req: pb.SearchRequest, out: pb.SearchResponse | None = None) -> pb.SearchResponse:
            threading.Event().wait(0.05)
            return real_search(req, out)

        monkeypatch.setattr(core, "search", slow_search)
        slow = client.call(_search(q), 5)
        assert list(slow.search.ids) == list(quick.search.ids) and slow.server_us >= 50_000
    finally:
        srv.stop(1)


def test_busy_waits_change_no_answer_and_replies_say_what_else_was_in_flight(
    core: ServiceCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = DirectServer(core, f"fast+unix:{tmp_path / 'spin.sock'}", token=None, spin_us=2000, workers=8)
    srv.start()
    try:
        rng = np.random.default_rng(1)
        queries = rng.random((20, DIM), dtype=np.float32)
        want = [list(core.search(_search(q).search).ids) for q in queries]
        client = DirectClient(srv.address, None, spin_us=2000)
        spins: list[bool] = []
        real_spin = directclient._spin
        monkeypatch.setattr(directclient, "cpu_to_spare", lambda: True)  # whatever else runs on this machine
        monkeypatch.setattr(directclient, "SPIN_BACKOFF_MAX", 0)  # a reply later than 2 ms (a busy CI) skips none
        monkeypatch.setattr(directclient, "_spin", lambda sock, s: bool(spins.append(True)) or real_spin(sock, s))
        for q, ids in zip(queries, want, strict=True):
            reply = client.call(_search(q), 5)
            assert list(reply.search.ids) == ids and reply.others_busy == 0
        assert len(spins) == len(queries)  # a lone client on an idle server busy-waits every time
        hold = threading.Event()
        real_search = core.search

        def slow_search(req: pb.SearchRequest, out: pb.SearchResponse | None = None) -> pb.SearchResponse:
            if req.k == 7:
                hold.wait(10)  # a request of another connection stays in flight
            return real_search(req, out)

        monkeypatch.setattr(core, "search", slow_search)
        other = threading.Thread(target=lambda: DirectClient(srv.address, None).call(_search(queries[0], 7), 20))
        other.start()
        try:
            for _ in range(200):
                if srv._busy:
                    break
                threading.Event().wait(0.01)
            spins.clear()
            reply = client.call(_search(queries[1]), 5)
            assert list(reply.search.ids) == want[1]
            assert reply.others_busy == 1 and spins == [True]  # the server was idle when it answered last time
            assert list(client.call(_search(queries[2]), 5).search.ids) == want[2]
            assert len(spins) == 1  # ... but not after a reply that said another request was in flight
        finally:
            hold.set()
            other.join(10)
    finally:
        srv.stop(1)
