"""Fast-path internals (issue 13): the cursor table's caps and eviction, and the worker supervisor — a worker
thread that dies is replaced and Health's state says so meanwhile. In-process, on an ipc socket in tmp_path."""

from __future__ import annotations

import time

import pytest
import zmq

from drift_engine.errors import InvalidArgumentError, RequestTooLargeError
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.core import ServerLimits, ServiceCore
from drift_engine.server.fastpath import FastPathServer
from drift_engine.server.stream import CursorTable


class FakeStreamer:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeEngine:
    def list_collections(self) -> list[str]:
        return []


def test_cursor_table_per_client_cap_evicts_that_clients_oldest_idle():
    counts = []
    table = CursorTable(max_total=10, max_per_client=3, idle_s=60, on_count=counts.append)
    streams = [FakeStreamer() for _ in range(5)]
    ids = [table.add(b"hog", s) for s in streams]
    other = table.add(b"other", FakeStreamer())
    assert table.count(b"hog") == 3 and table.count(b"other") == 1
    assert streams[0].closed and streams[1].closed and not streams[4].closed
    with pytest.raises(InvalidArgumentError, match="expired"):
        table.acquire(ids[0])
    assert table.acquire(other) is not None
    table.release(other, done=False)
    assert sum(counts) == len(table) == 4


def test_cursor_table_full_evicts_from_the_heaviest_client_and_spares_busy_ones():
    table = CursorTable(max_total=4, max_per_client=4, idle_s=60)
    a = [table.add(b"a", FakeStreamer()) for _ in range(3)]
    b = table.add(b"b", FakeStreamer())
    table.acquire(a[0])  # busy: never evicted
    table.add(b"c", FakeStreamer())
    assert table.count(b"a") == 2 and table.count(b"b") == 1 and table.count(b"c") == 1
    with pytest.raises(InvalidArgumentError, match="already serving"):
        table.acquire(a[0])
    table.release(a[0], done=False)
    assert table.acquire(b) is not None  # b's only cursor survived: a held the most


def test_cursor_table_refuses_only_when_every_cursor_is_busy():
    table = CursorTable(max_total=2, max_per_client=2, idle_s=60)
    for cid in [table.add(b"x", FakeStreamer()), table.add(b"y", FakeStreamer())]:
        table.acquire(cid)
    with pytest.raises(RequestTooLargeError, match="serving requests"):
        table.add(b"z", FakeStreamer())


def test_cursor_table_drops_idle_cursors_after_idle_s():
    table = CursorTable(max_total=8, max_per_client=8, idle_s=0.05)
    old = table.add(b"a", FakeStreamer())
    time.sleep(0.1)
    table.add(b"a", FakeStreamer())
    with pytest.raises(InvalidArgumentError, match="expired"):
        table.acquire(old)
    assert table.expired == 1


def _call(sock: zmq.Socket, req: pb.FastRequest) -> pb.FastReply:
    sock.send(req.SerializeToString())
    assert sock.poll(10_000), "no reply"
    return pb.FastReply.FromString(sock.recv())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_is_replaced(tmp_path, monkeypatch):
    core = ServiceCore(FakeEngine(), ServerLimits())
    fast = FastPathServer(core, f"ipc://{tmp_path / 'f.fast'}", token=None, workers=2)
    fast.start()
    core.fast_state = fast.state
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(fast.address)
        close = pb.FastRequest(stream_close=pb.StreamCursor(cursor=7))
        assert _call(sock, close).closed.cursor == 7
        assert fast.state() == "ok" and core.health().status == "SERVING"
        real = fast.handle

        def die_once(frames):
            monkeypatch.setattr(fast, "handle", real)
            raise SystemExit("simulated worker death")  # not an Exception: the worker thread ends

        monkeypatch.setattr(fast, "handle", die_once)
        sock.send(close.SerializeToString())  # this message is lost with its worker
        deadline = time.monotonic() + 10
        while fast.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fast.restarts == 1
        sock.close()
        sock = ctx.socket(zmq.REQ)  # the REQ socket that lost its reply cannot send again
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(fast.address)
        for _ in range(6):  # both workers (round-robin) answer again
            assert _call(sock, close).closed.cursor == 7
        assert fast.state() == "ok"
        health = core.health()
        assert health.status == "SERVING" and health.fast_path_state == "ok"
    finally:
        ctx.destroy(linger=0)
        fast.stop(0)
    assert fast.state() == "down"
    assert core.health().status == "DEGRADED" and core.health().fast_path == ""
