"""TLS on TCP (issue 12, transport across hosts): real server processes on 127.0.0.1 with a certificate made
at test time, searched over ``fast+tls:`` and gRPC-TLS (answers equal to the embedded engine's); a wrong CA,
a wrong name, a wrong pin and a plaintext client are refused with clear errors while the server keeps
serving; hostile handshakes never take a worker; mutual TLS; and the start-up rules (TLS beyond loopback
unless --insecure-plaintext, the token always on TCP)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from drift_engine.api import Engine
from drift_engine.errors import AuthenticationError, EngineUnavailableError, InvalidArgumentError
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.client import Client
from drift_engine.server.direct import DirectServer
from drift_engine.server.directclient import DirectClient
from drift_engine.server.runner import ServeOptions, ServerStartupError, check_security, parse_listen
from drift_engine.server.tls import ClientTLS
from tests.integration.harness import ServerProc, serve_cmd, start_server
from tests.tlscerts import Pki, make_pki

TOKEN = "tls-test-token"
DIM, N = 8, 400
WORKERS = 2
VECTORS = np.random.default_rng(7).standard_normal((N, DIM)).astype(np.float32)
QUERIES = np.random.default_rng(8).standard_normal((5, DIM)).astype(np.float32)


@dataclass
class TlsServer:
    proc: ServerProc
    grpc_port: int
    fast_path: str


def serving_info(srv: ServerProc, timeout: float = 60) -> dict:
    """The server's "serving" log line (listen address, fast path, tls, ...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in srv.log_text().splitlines():
            if '"msg": "serving"' in line:
                return json.loads(line)
        if srv.proc.poll() is not None:
            raise AssertionError(srv.log_text()[-3000:])
        time.sleep(0.05)
    raise AssertionError("no 'serving' log line:\n" + srv.log_text()[-3000:])


def start_tls(data: Path, pki: Pki, *extra: str) -> TlsServer:
    args = ("--listen", "127.0.0.1:0", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--fast-workers", str(WORKERS), *extra)  # fmt: skip
    srv = start_server(data, *args, token=TOKEN, wait=False)
    try:
        info = serving_info(srv)
    except BaseException:
        srv.stop()
        raise
    return TlsServer(srv, int(info["listen"].rsplit(":", 1)[1]), info["fast_path"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsServer]:
    srv = start_tls(tmp_path_factory.mktemp("tls") / "data", pki)
    try:
        with Client(f"tls:localhost:{srv.grpc_port}", token=TOKEN, tls_ca=str(pki.ca), fast_path=False) as c:
            col = c.create_collection("items", DIM)
            col.upsert(np.arange(N), VECTORS, [{"n": int(i)} for i in range(N)])
        yield srv
    finally:
        assert srv.proc.stop() == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list]:
    """The embedded engine's answers to QUERIES (untrained: exact) as (ids, distances)."""
    engine = Engine.open(tmp_path_factory.mktemp("embedded") / "data")
    try:
        col = engine.create_collection("items", dim=DIM)
        col.upsert(np.arange(N), VECTORS)
        yield [(list(r.ids), np.asarray(r.distances)) for r in (col.search(q, k=10) for q in QUERIES)]
    finally:
        engine.close()


def tls_client(srv: TlsServer, pki: Pki, **kwargs) -> Client:
    kwargs.setdefault("tls_ca", str(pki.ca))
    kwargs.setdefault("token", TOKEN)
    return Client(f"tls:localhost:{srv.grpc_port}", timeout=20, **kwargs)


def fast_search(fast: DirectClient, q: np.ndarray, k: int = 10) -> pb.SearchResponse:
    req = pb.FastRequest(search=pb.SearchRequest(collection="items", query=q.astype(np.float32).tobytes(), k=k))
    return fast.call(req, 20).search


def test_fast_tls_and_grpc_tls_answer_like_the_embedded_engine(tls_server: TlsServer, pki: Pki, reference) -> None:
    assert tls_server.fast_path.startswith("fast+tls:127.0.0.1:")
    with tls_client(tls_server, pki) as fast_c, tls_client(tls_server, pki, fast_path=False) as grpc_c:
        health = fast_c.health()
        assert health["fast_path"] == tls_server.fast_path and health["fast_path_state"] == "ok"
        fast = fast_c.fast()
        assert isinstance(fast, DirectClient) and fast.tls is not None and fast.address == tls_server.fast_path
        fcol, gcol = fast_c.collection("items"), grpc_c.collection("items")
        for q, (ids, dists) in zip(QUERIES, reference, strict=True):
            over_fast, over_grpc = fcol.search(q, k=10), gcol.search(q, k=10)
            assert list(over_fast.ids) == list(over_grpc.ids) == ids
            np.testing.assert_allclose(over_fast.distances, dists, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(over_grpc.distances, dists, rtol=1e-5, atol=1e-6)
        streamed = [hit.id for _, hit in zip(range(10), fcol.search_stream(QUERIES[0]), strict=False)]
        assert streamed == reference[0][0]
        got = fcol.get([3, 5])
        assert list(got.ids) == [3, 5]
        np.testing.assert_array_equal(got.vectors, VECTORS[[3, 5]])
        pending = fcol.search_send(QUERIES[1], k=10)  # the pipelined connection sharding uses
        assert pending is not None and list(pending.result().ids) == reference[1][0]
    with Client(f"127.0.0.1:{tls_server.grpc_port}", token=TOKEN, tls_ca=str(pki.ca)) as by_ip:  # the IP SAN
        assert list(by_ip.collection("items").search(QUERIES[0], k=10).ids) == reference[0][0]
        assert by_ip.fast() is not None


def test_the_token_is_still_required_over_tls(tls_server: TlsServer, pki: Pki) -> None:
    with pytest.raises(AuthenticationError):
        fast_search(DirectClient(tls_server.fast_path, "wrong", tls=ClientTLS(ca=str(pki.ca))), QUERIES[0])
    with tls_client(tls_server, pki, token="wrong") as c, pytest.raises(AuthenticationError):
        c.list_collections()


def test_a_wrong_ca_a_wrong_name_and_a_wrong_pin_are_refused(tls_server: TlsServer, pki: Pki) -> None:
    wrong_ca = ClientTLS(ca=str(pki.other_ca))
    with pytest.raises(EngineUnavailableError, match=r"does not accept.*unable to get local issuer") as err:
        fast_search(DirectClient(tls_server.fast_path, TOKEN, tls=wrong_ca), QUERIES[0])
    assert str(pki.other_ca) in (err.value.hint or "")
    with (
        tls_client(tls_server, pki, tls_ca=str(pki.other_ca)) as c,
        pytest.raises(EngineUnavailableError, match="CERTIFICATE_VERIFY_FAILED") as grpc_err,
    ):
        c.health()
    assert str(pki.other_ca) in (grpc_err.value.hint or "")  # gRPC too says which CA was trusted
    wrong_name = ClientTLS(ca=str(pki.ca), server_name="not-this-server.example")
    with pytest.raises(EngineUnavailableError, match=r"does not accept.*(mismatch|match)"):
        fast_search(DirectClient(tls_server.fast_path, TOKEN, tls=wrong_name), QUERIES[0])
    with tls_client(tls_server, pki, tls_ca=None, tls=wrong_name) as c, pytest.raises(EngineUnavailableError):
        c.health()
    bad_pin = ClientTLS(ca=str(pki.ca), pin="ab" * 32)
    with pytest.raises(EngineUnavailableError, match="is not the pinned"):
        fast_search(DirectClient(tls_server.fast_path, TOKEN, tls=bad_pin), QUERIES[0])
    with pytest.raises(EngineUnavailableError, match="is not the pinned"):
        tls_client(tls_server, pki, tls_ca=None, tls=bad_pin)
    with pytest.raises(InvalidArgumentError, match="SHA-256"):
        ClientTLS(ca=str(pki.ca), pin="not-hex")
    pinned = ClientTLS(ca=str(pki.ca), pin=":".join(pki.server_sha256[i : i + 2] for i in range(0, 64, 2)).upper())
    with tls_client(tls_server, pki, tls_ca=None, tls=pinned) as c:
        assert len(c.collection("items").search(QUERIES[0], k=3).ids) == 3
        assert c.fast() is not None and c.fast().tls.pin == pki.server_sha256


def test_a_plaintext_client_gets_a_clear_error_and_the_server_keeps_serving(tls_server: TlsServer, pki: Pki) -> None:
    plain = tls_server.fast_path.replace("fast+tls:", "fast+tcp:")
    for _ in range(3):
        with pytest.raises(EngineUnavailableError, match="is TLS and this client spoke plaintext"):
            fast_search(DirectClient(plain, TOKEN), QUERIES[0])
    with (
        Client(f"localhost:{tls_server.grpc_port}", token=TOKEN, timeout=3) as c,
        pytest.raises(EngineUnavailableError),
    ):
        c.health()  # plaintext gRPC to the TLS port
    with tls_client(tls_server, pki) as c:
        assert len(c.collection("items").search(QUERIES[0], k=3).ids) == 3
    assert "refused a plaintext client on a TLS listener" in tls_server.proc.log_text()


def test_bad_handshakes_never_take_a_worker(tls_server: TlsServer, pki: Pki) -> None:
    host, port = tls_server.fast_path.removeprefix("fast+tls:").rsplit(":", 1)
    target = (host, int(port))

    def raw() -> socket.socket:
        return socket.create_connection(target, timeout=10)

    silent = [raw() for _ in range(3 * WORKERS)]  # connect, then say nothing: each waits in its own handshake
    half = [raw() for _ in range(3 * WORKERS)]
    for s in half:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, then nothing
    for _ in range(10):  # garbage after a TLS record header, then EOF
        s = raw()
        s.sendall(b"\x16\x03\x01\x00\x20" + b"\x00" * 32)
        s.shutdown(socket.SHUT_WR)
        try:  # the server hangs up (an alert, then EOF, or a reset) well within the socket's timeout
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        s.close()
    for _ in range(5):  # a client that hangs up mid-handshake
        ctx = ssl.create_default_context(cafile=str(pki.other_ca))
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw(), server_hostname="localhost")
    try:
        answers: list[int] = []

        def search() -> None:
            with tls_client(tls_server, pki) as c:
                t0 = time.monotonic()
                for q in QUERIES:
                    assert len(c.collection("items").search(q, k=5).ids) == 5
                answers.append(int(time.monotonic() - t0 < 10))

        threads = [threading.Thread(target=search) for _ in range(2 * WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert answers == [1] * (2 * WORKERS)  # all answered promptly while the stalled handshakes are held
    finally:
        for s in silent + half:
            s.close()
    log = tls_server.proc.log_text()
    assert "fast path TLS handshake failed" in log
    with tls_client(tls_server, pki) as c:
        assert c.health()["fast_path_state"] == "ok"


def test_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    srv = start_tls(tmp_path / "data", pki, "--tls-client-ca", str(pki.ca))
    try:
        assert serving_info(srv.proc)["client_certs"] is True
        mine = ClientTLS(ca=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key))
        with tls_client(srv, pki, tls_ca=None, tls=mine) as c:
            c.create_collection("m", DIM).upsert([1, 2], VECTORS[:2])
            assert list(c.collection("m").search(VECTORS[1], k=1).ids) == [2]
            assert c.fast() is not None and c.fast().tls.cert == str(pki.client_cert)
        with pytest.raises(EngineUnavailableError, match=r"(?i)certificate"):
            fast_search(DirectClient(srv.fast_path, TOKEN, tls=ClientTLS(ca=str(pki.ca))), QUERIES[0])
        with tls_client(srv, pki) as c, pytest.raises(EngineUnavailableError):
            c.health()
        with tls_client(srv, pki, tls_ca=None, tls=mine) as c:
            assert c.health()["status"] == "SERVING"
    finally:
        assert srv.proc.stop() == 0


def _refused(tmp_path: Path, *args: str) -> str:
    done = subprocess.run([*serve_cmd(tmp_path / "data"), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    return done.stderr


def test_startup_rules(tmp_path: Path, pki: Pki) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    err = _refused(tmp_path, "--listen", "0.0.0.0:0", "--token-file", str(token_file))
    assert "not loopback) without TLS" in err and "--insecure-plaintext" in err
    assert "without a token" in _refused(tmp_path, "--listen", "0.0.0.0:0", *tls, "--insecure-no-token")
    assert "without TLS and a token" in _refused(tmp_path, "--listen", "0.0.0.0:0", "--insecure-no-token")
    assert "contradicts" in _refused(tmp_path, "--listen", "127.0.0.1:0", "--token-file", str(token_file), *tls,
                                     "--insecure-plaintext")  # fmt: skip
    not_a_key = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.ca))
    assert "cannot use the TLS" in _refused(tmp_path, "--listen", "127.0.0.1:0", "--token-file", str(token_file),
                                            *not_a_key)  # fmt: skip

    def rule(listen: str, **kw) -> None:
        check_security(parse_listen(listen, str(tmp_path)), ServeOptions(data=str(tmp_path), **kw))

    rule("127.0.0.1:0", token=b"t")  # loopback without TLS: as before
    rule("127.0.0.1:0", insecure_no_token=True)
    rule("10.1.2.3:7070", token=b"t", tls_cert=b"c", tls_key=b"k")
    rule("10.1.2.3:7070", token=b"t", insecure_plaintext=True)
    for bad in (
        dict(token=b"t"),
        dict(insecure_no_token=True, insecure_plaintext=True),
        dict(tls_cert=b"c", tls_key=b"k", insecure_no_token=True),
        dict(token=b"t", tls_client_ca=b"ca"),
    ):
        with pytest.raises(ServerStartupError):
            rule("10.1.2.3:7070", **bad)


def test_insecure_plaintext_beyond_loopback_serves_the_fast_path_where_the_client_dialled(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", "--listen", "0.0.0.0:0", "--insecure-plaintext", token=TOKEN, wait=False)
    try:
        info = serving_info(srv)
        assert info["fast_path"].startswith("fast+tcp:0.0.0.0:") and info["tls"] is False
        with Client(f"127.0.0.1:{info['listen'].rsplit(':', 1)[1]}", token=TOKEN, timeout=20) as c:
            c.create_collection("p", DIM).upsert([1, 2], VECTORS[:2])
            fast = c.fast()
            assert isinstance(fast, DirectClient) and fast.address.startswith("fast+tcp:127.0.0.1:")
            assert list(c.collection("p").search(VECTORS[0], k=1).ids) == [1]
    finally:
        assert srv.stop() == 0


def test_direct_server_rules(tmp_path: Path, pki: Pki) -> None:
    from drift_engine.server.core import ServerLimits, ServiceCore
    from drift_engine.server.tls import server_context

    engine = Engine.open(tmp_path / "data")
    try:
        core = ServiceCore(engine, ServerLimits())
        ctx = server_context(pki.server_cert.read_bytes(), pki.server_key.read_bytes())
        with pytest.raises(InvalidArgumentError, match="no TLS"):
            DirectServer(core, "fast+tcp:10.1.2.3:0", token=b"t")
        DirectServer(core, "fast+tcp:10.1.2.3:0", token=b"t", allow_plaintext=True)
        with pytest.raises(InvalidArgumentError, match="TLS context"):
            DirectServer(core, "fast+tls:127.0.0.1:0", token=b"t")
        with pytest.raises(InvalidArgumentError, match="TLS context"):
            DirectServer(core, "fast+tcp:127.0.0.1:0", token=b"t", tls=ctx)
        with pytest.raises(InvalidArgumentError, match="no token"):
            DirectServer(core, "fast+tls:10.1.2.3:0", token=None, allow_no_token=True, tls=ctx)
        with pytest.raises(InvalidArgumentError, match="plaintext"):
            DirectClient("fast+tcp:127.0.0.1:1", None, tls=ClientTLS())
    finally:
        engine.close()


def test_cli_status_over_tls(tls_server: TlsServer, pki: Pki, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    base = [*serve_cmd(tmp_path / "unused")[:3], "status", "--address", f"tls:localhost:{tls_server.grpc_port}",
            "--token-file", str(token_file), "--timeout", "10"]  # fmt: skip
    ok = subprocess.run([*base, "--tls-ca", str(pki.ca)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["fast_path"] == tls_server.fast_path
    wrong = subprocess.run([*base, "--tls-ca", str(pki.other_ca)], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in wrong.stderr


def test_tls_connections_beyond_the_cap_are_told_so_over_tls(tmp_path: Path, pki: Pki) -> None:
    from drift_engine.server.core import ServerLimits, ServiceCore
    from drift_engine.server.direct import HEADER
    from drift_engine.server.tls import server_context

    engine = Engine.open(tmp_path / "data")
    try:
        engine.create_collection("items", dim=DIM).upsert(np.arange(N), VECTORS)
        ctx = server_context(pki.server_cert.read_bytes(), pki.server_key.read_bytes())
        srv = DirectServer(ServiceCore(engine, ServerLimits()), "fast+tls:127.0.0.1:0", token=b"t", tls=ctx,
                           max_connections=2)  # fmt: skip
        srv.start()
        tls = ClientTLS(ca=str(pki.ca), server_name="localhost")
        held = []
        try:
            body = pb.FastRequest(token="t", search=pb.SearchRequest(collection="items", query=QUERIES[0].tobytes(),
                                                                     k=3)).SerializeToString()  # fmt: skip
            for _ in range(2):  # two admitted connections, each answered once
                s = tls.wrap(socket.create_connection(srv.bind_to, timeout=10), "127.0.0.1", "cap test")
                s.sendall(HEADER.pack(len(body)) + body)
                assert s.recv(65536)
                held.append(s)
            with pytest.raises(EngineUnavailableError, match="the limit of this server"):
                fast_search(DirectClient(srv.address, "t", tls=tls), QUERIES[0])
            held.pop().close()
            deadline = time.monotonic() + 10
            while True:  # the freed slot is taken again once the server has noticed the close
                try:
                    assert len(fast_search(DirectClient(srv.address, "t", tls=tls), QUERIES[0], k=3).ids) == 3
                    break
                except EngineUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            for s in held:
                s.close()
            srv.stop(1)
    finally:
        engine.close()
