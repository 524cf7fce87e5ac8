"""The asyncio client over TLS (issue 12): ``AsyncClient`` takes the same TLS addresses and arguments as ``Client``
(``tls:HOST:PORT``, ``tls_ca``, ``tls=ClientTLS(...)`` with a name to check, a pin, a client certificate)
against real server processes on 127.0.0.1 with certificates made at test time; its answers equal the sync
client's (over ``fast+tls:`` and gRPC-TLS); a wrong CA, a wrong name, a wrong pin, a plaintext listener and a
missing client certificate are refused with an ``EngineUnavailableError`` that says why, while the server
keeps serving; a pinned client probes once, off the event loop, before its first call, and sends nothing
before that probe passed."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drift_engine.errors import AuthenticationError, EngineUnavailableError, InvalidArgumentError
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.aclient import AsyncClient
from drift_engine.server.client import Client
from drift_engine.server.tls import HANDSHAKE_HINT, ClientTLS
from tests.integration.harness import ServerProc, start_server
from tests.tlscerts import Pki, make_pki

TOKEN = "async-tls-token"
DIM, N = 8, 300
VECTORS = np.random.default_rng(17).standard_normal((N, DIM)).astype(np.float32)
QUERIES = np.random.default_rng(18).standard_normal((4, DIM)).astype(np.float32)


@dataclass
class Served:
    proc: ServerProc
    port: int


def _serve(data: Path, *args: str) -> Served:
    srv = start_server(data, "--listen", "127.0.0.1:0", *args, token=TOKEN, wait=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in srv.log_text().splitlines():
            if '"msg": "serving"' in line:
                return Served(srv, int(json.loads(line)["listen"].rsplit(":", 1)[1]))
        if srv.proc.poll() is not None:
            break
        time.sleep(0.05)
    srv.stop()
    raise AssertionError("no 'serving' log line:\n" + srv.log_text()[-3000:])


def _tls_args(pki: Pki) -> tuple[str, ...]:
    return ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("apki"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Served]:
    srv = _serve(tmp_path_factory.mktemp("atls") / "data", *_tls_args(pki))
    try:
        with Client(f"tls:localhost:{srv.port}", token=TOKEN, tls_ca=str(pki.ca), fast_path=False) as c:
            c.create_collection("items", DIM).upsert(np.arange(N), VECTORS, [{"n": int(i)} for i in range(N)])
        yield srv
    finally:
        assert srv.proc.stop() == 0


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _answers(client: AsyncClient) -> dict[str, Any]:
    """What the tests compare: top-10 of every query, a batch, a stream's first rows, a get, the names."""
    col = await client.collection("items")
    searches = [await col.search(q, k=10) for q in QUERIES]
    batch_ids, batch_d = await col.search_batch(QUERIES, k=5)
    streamed = []
    async for hit in col.search_stream(QUERIES[0], limit=10):
        streamed.append(hit.id)
    got = await col.get([3, 7])
    return {
        "ids": [list(r.ids) for r in searches],
        "dists": [np.asarray(r.distances) for r in searches],
        "payloads": [list(r.payloads) for r in searches],
        "batch": (batch_ids.tolist(), batch_d),
        "stream": streamed,
        "get": (list(got.ids), got.vectors, list(got.payloads)),
        "names": await client.list_collections(),
    }


def _sync_answers(client: Client) -> dict[str, Any]:
    col = client.collection("items")
    searches = [col.search(q, k=10) for q in QUERIES]
    batch_ids, batch_d = col.search_batch(QUERIES, k=5)
    got = col.get([3, 7])
    return {
        "ids": [list(r.ids) for r in searches],
        "dists": [np.asarray(r.distances) for r in searches],
        "payloads": [list(r.payloads) for r in searches],
        "batch": (batch_ids.tolist(), batch_d),
        "stream": [h.id for h in col.search_stream(QUERIES[0], limit=10)],
        "get": (list(got.ids), got.vectors, list(got.payloads)),
        "names": client.list_collections(),
    }


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["ids"] == b["ids"] and a["payloads"] == b["payloads"] and a["names"] == b["names"]
    for x, y in zip(a["dists"], b["dists"], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    assert a["batch"][0] == b["batch"][0]
    np.testing.assert_allclose(a["batch"][1], b["batch"][1], rtol=1e-6, atol=1e-6)
    assert a["stream"] == b["stream"] == a["ids"][0]
    assert a["get"][0] == b["get"][0] == [3, 7] and a["get"][2] == b["get"][2] == [{"n": 3}, {"n": 7}]
    np.testing.assert_array_equal(a["get"][1], b["get"][1])
    np.testing.assert_array_equal(a["get"][1], VECTORS[[3, 7]])


def test_every_address_form_answers_like_the_sync_client(served: Served, pki: Pki) -> None:
    pinned = ClientTLS(ca=str(pki.ca), pin=pki.server_sha256.upper())
    forms: list[tuple[str, dict[str, Any]]] = [
        (f"tls:localhost:{served.port}", {"tls_ca": str(pki.ca)}),
        (f"tls:localhost:{served.port}", {"tls_ca": pki.ca.read_bytes()}),  # the CA as PEM bytes
        (f"localhost:{served.port}", {"tls": ClientTLS(ca=str(pki.ca))}),  # no prefix: tls= says TLS
        (f"127.0.0.1:{served.port}", {"tls_ca": str(pki.ca)}),  # the certificate's IP SAN
        (f"tls:127.0.0.1:{served.port}", {"tls": ClientTLS(ca=str(pki.ca), server_name="localhost")}),
        (f"tls:localhost:{served.port}", {"tls": pinned}),
        (f"tls:localhost:{served.port}", {"tls_ca": str(pki.ca), "tls": ClientTLS(pin=pki.server_sha256)}),
    ]
    with Client(f"tls:localhost:{served.port}", token=TOKEN, tls_ca=str(pki.ca), timeout=20) as fast_c:
        assert fast_c.fast() is not None and fast_c.fast().tls is not None  # the sync side over fast+tls:
        want = _sync_answers(fast_c)
    with Client(f"tls:localhost:{served.port}", token=TOKEN, tls_ca=str(pki.ca), fast_path=False) as grpc_c:
        _assert_same(_sync_answers(grpc_c), want)

    async def main() -> None:
        for address, kw in forms:
            async with AsyncClient(address, token=TOKEN, timeout=20, **kw) as client:
                assert client.tls is not None, address
                _assert_same(await _answers(client), want)

    run(main())


def test_the_token_is_still_required(served: Served, pki: Pki) -> None:
    async def main() -> None:
        async with AsyncClient(f"tls:localhost:{served.port}", token="wrong", tls_ca=str(pki.ca)) as client:
            with pytest.raises(AuthenticationError):
                await client.list_collections()

    run(main())


def test_a_wrong_ca_a_wrong_name_and_a_plaintext_client_are_refused(served: Served, pki: Pki) -> None:
    async def refused(address: str, **kw: Any) -> EngineUnavailableError:
        async with AsyncClient(address, token=TOKEN, timeout=10, **kw) as client:
            with pytest.raises(EngineUnavailableError) as err:
                await client.health()
            with pytest.raises(EngineUnavailableError):  # a stream fails the same way
                async for _ in client.stream("Scan", pb.ScanRequest(collection="items")):
                    pass
        return err.value

    async def main() -> None:
        address = f"tls:localhost:{served.port}"
        wrong_ca = await refused(address, tls_ca=str(pki.other_ca))
        assert "CERTIFICATE_VERIFY_FAILED" in wrong_ca.message
        assert str(pki.other_ca) in (wrong_ca.hint or "") and "'localhost'" in (wrong_ca.hint or "")
        wrong_name = await refused(address, tls=ClientTLS(ca=str(pki.ca), server_name="not-this-server.example"))
        assert "not-this-server.example" in (wrong_name.hint or ""), wrong_name
        plain = await refused(f"localhost:{served.port}")  # plaintext gRPC to the TLS port
        assert plain.hint is None
        async with AsyncClient(address, token=TOKEN, tls_ca=str(pki.ca)) as client:  # still serving
            assert (await client.health())["status"] == "SERVING"

    run(main())


def test_tls_to_a_plaintext_listener_is_refused(tmp_path: Path, pki: Pki) -> None:
    srv = _serve(tmp_path / "data")
    try:

        async def main() -> None:
            async with AsyncClient(f"tls:localhost:{srv.port}", token=TOKEN, tls_ca=str(pki.ca), timeout=10) as c:
                with pytest.raises(EngineUnavailableError) as err:
                    await c.health()
                assert err.value.hint == HANDSHAKE_HINT, err.value
            async with AsyncClient(f"localhost:{srv.port}", token=TOKEN) as c:  # it serves plaintext
                assert (await c.health())["status"] == "SERVING"

        run(main())
    finally:
        assert srv.proc.stop() == 0


class _Spy:
    """A stub that records each RPC asked of it."""

    def __init__(self, stub: Any, calls: list[str]) -> None:
        self._stub = stub
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        self._calls.append(name)
        return getattr(self._stub, name)


def test_a_wrong_pin_is_refused_before_any_call(served: Served, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[tuple[str, int, bool]] = []
    real_probe = ClientTLS.probe

    def counting_probe(self: ClientTLS, host: str, port: int, timeout: float) -> None:
        probes.append((host, port, threading.current_thread() is threading.main_thread()))
        real_probe(self, host, port, timeout)

    monkeypatch.setattr(ClientTLS, "probe", counting_probe)
    calls: list[str] = []

    async def main() -> None:
        bad = ClientTLS(ca=str(pki.ca), pin="ab" * 32)
        async with AsyncClient(f"tls:localhost:{served.port}", token=TOKEN, tls=bad, timeout=10) as client:
            client.stub = _Spy(client.stub, calls)
            for _ in range(2):  # each call probes again, and fails again
                with pytest.raises(EngineUnavailableError, match="is not the pinned") as err:
                    await client.health()
                assert pki.server_sha256 in err.value.message and "certificate changed" in (err.value.hint or "")
            with pytest.raises(EngineUnavailableError, match="is not the pinned"):
                async for _ in client.stream("Scan", pb.ScanRequest(collection="items")):
                    pass
        assert calls == []  # no RPC was started: the token never went to that server
        assert [p[:2] for p in probes] == [("localhost", served.port)] * 3
        probes.clear()
        good = ClientTLS(ca=str(pki.ca), pin=":".join(pki.server_sha256[i : i + 2] for i in range(0, 64, 2)))
        async with AsyncClient(f"tls:localhost:{served.port}", token=TOKEN, tls=good, timeout=10) as client:
            col = await client.collection("items")
            got = await asyncio.gather(*(col.search(q, k=3) for q in QUERIES))  # concurrent first calls
            assert all(len(r.ids) == 3 for r in got)
            await client.health()
        assert len(probes) == 1 and probes[0][2] is False  # one probe, on a worker thread

    run(main())


def test_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    srv = _serve(tmp_path / "data", *_tls_args(pki), "--tls-client-ca", str(pki.ca))
    try:
        mine = ClientTLS(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))

        async def main() -> None:
            async with AsyncClient(f"tls:localhost:{srv.port}", token=TOKEN, tls=mine, timeout=20) as client:
                col = await client.create_collection("m", DIM)
                await col.upsert([1, 2], VECTORS[:2])
                assert list((await col.search(VECTORS[1], k=1)).ids) == [2]
            async with AsyncClient(f"tls:localhost:{srv.port}", token=TOKEN, tls_ca=str(pki.ca), timeout=10) as c:
                with pytest.raises(EngineUnavailableError):
                    await c.health()

        run(main())
        with Client(f"tls:localhost:{srv.port}", token=TOKEN, tls=mine, fast_path=False) as c:
            assert list(c.collection("m").search(VECTORS[1], k=1).ids) == [2]
    finally:
        assert srv.proc.stop() == 0


def test_bad_tls_arguments_are_refused_when_the_client_is_made(tmp_path: Path, pki: Pki) -> None:
    async def main() -> None:
        with pytest.raises(InvalidArgumentError, match="TCP addresses"):
            AsyncClient(f"unix:{tmp_path / 'drift.sock'}", tls_ca=str(pki.ca))
        with pytest.raises(InvalidArgumentError, match="TCP addresses"):
            AsyncClient("tls:unix:/x.sock")
        with pytest.raises(InvalidArgumentError, match="not two different ones"):
            AsyncClient("tls:localhost:1", tls_ca=str(pki.ca), tls=ClientTLS(ca=str(pki.other_ca)))
        with pytest.raises(InvalidArgumentError, match="cannot read the TLS CA file"):
            AsyncClient("tls:localhost:1", tls_ca=str(tmp_path / "missing.pem"))
        with pytest.raises(InvalidArgumentError, match="cannot read the TLS client key file"):
            AsyncClient("tls:localhost:1", tls=ClientTLS(cert=str(pki.client_cert), key=str(tmp_path / "k.pem")))
        async with AsyncClient(f"unix:{tmp_path / 'drift.sock'}") as plain:  # no TLS settings: plaintext
            assert plain.tls is None

    run(main())
