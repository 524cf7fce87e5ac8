"""Client plumbing: one channel per process, deadlines, ``cancel_check``, addresses, transport errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from drift_engine import errors as E
from drift_engine.server import client as client_mod
from drift_engine.server import drift_pb2 as pb
from drift_engine.server import wire
from drift_engine.server.client import Client
from drift_engine.server.fastclient import FastPathClient


class Interrupted(Exception):
    pass


def test_addresses():
    assert wire.grpc_target("unix:/run/drift.sock") == ("unix:/run/drift.sock", "/run/drift.sock")
    assert wire.grpc_target("unix:///run/drift.sock") == ("unix:/run/drift.sock", "/run/drift.sock")
    assert wire.grpc_target("/run/drift.sock") == ("unix:/run/drift.sock", "/run/drift.sock")
    assert wire.grpc_target("127.0.0.1:7000") == ("127.0.0.1:7000", None)
    with pytest.raises(E.InvalidArgumentError):
        wire.grpc_target("")


def test_one_channel_per_process(server):
    a = server.client()
    b = server.client(fast_path=False)
    try:
        assert a.stub is b.stub
        a.close()
        assert b.list_collections() is not None  # still open for the other client
    finally:
        a.close()
        b.close()
    assert not any(key[0] == f"unix:{server.data / 'drift.sock'}" for key in client_mod._channels)


def test_no_server_is_engine_unavailable(tmp_path):
    with Client(f"unix:{tmp_path / 'none.sock'}", timeout=2) as c, pytest.raises(E.EngineUnavailableError):
        c.list_collections()


def test_grpc_deadline_and_cancel_check(server, unique_name):
    rng = np.random.default_rng(0)
    with server.client(fast_path=False) as c:
        col = c.create_collection(unique_name, 32, bulk_min=1_000_000)
        col.upsert(np.arange(15_000), rng.standard_normal((15_000, 32)), durability="off")
    with server.client(fast_path=False, admin_timeout=0.05) as c, pytest.raises(E.DeadlineExceededError):
        c.collection(unique_name).train(n_buckets=64)
    calls = []

    def cancel() -> None:
        calls.append(time.monotonic())
        raise Interrupted

    with server.client(fast_path=False, cancel_check=cancel) as c:
        col = c.collection(unique_name)  # quick: answered before the first check
        t0 = time.monotonic()
        with pytest.raises(Interrupted):
            col.train(n_buckets=64)
        assert calls and time.monotonic() - t0 < 2
    with server.client(fast_path=False) as c:
        c.drop_collection(unique_name)


def test_fast_path_deadline_and_cancel_check(tmp_path):
    address = f"ipc://{tmp_path / 'silent.fast'}"
    ctx = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)  # receives, never answers
    silent.bind(address)
    try:
        fast = FastPathClient(address, None)
        request = pb.FastRequest(get=pb.GetRequest(collection="x", ids=[1]))
        t0 = time.monotonic()
        with pytest.raises(E.DeadlineExceededError, match="no reply"):
            fast.call(request, 0.2)
        assert 0.15 < time.monotonic() - t0 < 2

        def cancel() -> None:
            raise Interrupted

        fast.cancel_check = cancel
        with pytest.raises(Interrupted):
            fast.call(request, None)
        fast.cancel_check = None
        with pytest.raises(E.DeadlineExceededError):  # a fresh socket after the abandoned one
            fast.call(request, 0.1)
    finally:
        silent.close(linger=0)
        ctx.term()


def test_fast_path_from_many_threads(server, unique_name):
    with server.client() as c:
        col = c.create_collection(unique_name, 4)
        col.upsert(np.arange(100), np.eye(4)[np.arange(100) % 4] * (1 + np.arange(100)[:, None]))
        errors: list[BaseException] = []

        def reader(t: int) -> None:
            try:
                for i in range(50):
                    assert col.get([(t * 7 + i) % 100]).ids.tolist() == [(t * 7 + i) % 100]
                    assert len(col.search(np.eye(4)[t % 4], k=3)) == 3
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        c.drop_collection(unique_name)
