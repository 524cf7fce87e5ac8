"""Server process lifecycle: the directory lock, SIGTERM drain, SIGKILL durability, listeners and their
security rules, socket permissions, structured logs, and the status / stats / inspect commands."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from drift_engine import errors as E
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.client import Client
from drift_engine.server.directclient import DirectClient
from tests.integration.harness import REPO, serve_cmd, start_server


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "drift_engine.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_second_server_on_same_directory_is_refused(fresh_server):
    with fresh_server.client() as c:
        c.create_collection("keep", 4).upsert([1], [[1, 2, 3, 4]])
    second = subprocess.run(serve_cmd(fresh_server.data), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert second.returncode == 2
    assert "error:" in second.stderr and "is in use by another engine" in second.stderr
    with fresh_server.client() as c:
        assert c.health()["status"] == "SERVING" and len(c.collection("keep")) == 1


def test_sockets_are_0660_and_logs_are_json(fresh_server):
    for name in ("drift.sock", "drift.sock.fast"):
        mode = stat.S_IMODE((fresh_server.data / name).stat().st_mode)
        assert mode == 0o660, (name, oct(mode))
    records = [json.loads(line) for line in fresh_server.log_text().splitlines() if line.strip()]
    serving = next(r for r in records if r["msg"] == "serving")
    assert serving["level"] == "info" and serving["max_k"] == 10_000 and serving["token"] is False
    assert {"ts", "logger"} <= set(serving)


def test_sigterm_drains_in_flight_call_and_exits_cleanly(tmp_path):
    srv = start_server(tmp_path / "data")
    rng = np.random.default_rng(0)
    with srv.client() as c:
        col = c.create_collection("t", 32, bulk_min=1_000_000, memtable_max_vectors=1_000_000)
        for start in range(0, 30_000, 10_000):
            col.upsert(np.arange(start, start + 10_000), rng.standard_normal((10_000, 32)), durability="off")
        result: dict = {}

        def train() -> None:
            try:
                result["ok"] = col.train(n_buckets=64)
            except Exception as exc:  # recorded for the assertion below
                result["error"] = exc

        worker = threading.Thread(target=train)
        worker.start()
        deadline = time.monotonic() + 10
        while c.health()["inflight"] < 2 and time.monotonic() < deadline:  # the Health call itself is one
            time.sleep(0.005)
        srv.proc.send_signal(signal.SIGTERM)
        worker.join(timeout=120)
        assert "ok" in result, result.get("error")
        assert result["ok"]["vectors"] == 30_000
        with pytest.raises(E.EngineUnavailableError):
            c.list_collections()
    assert srv.stop(timeout=60) == 0
    assert not (srv.data / "drift.sock").exists() and not (srv.data / "drift.sock.fast").exists()
    assert '"msg": "stopped"' in srv.log_text()
    srv = start_server(srv.data)  # everything was flushed and closed: it all comes back
    with srv.client() as c:
        stats = c.collection("t").stats()
        assert stats["count"] == 30_000 and stats["trained"] and stats["memtable_count"] == 0
    assert srv.stop() == 0


def test_sigkill_during_concurrent_upserts_keeps_every_acknowledged_write(tmp_path):
    srv = start_server(tmp_path / "data")
    with srv.client() as c:
        c.create_collection("w", 8, memtable_max_vectors=500)
    acked: dict[int, np.ndarray] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        rng = np.random.default_rng(w)
        with srv.client(fast_path=False, timeout=10) as c:
            col = c.collection("w")
            batch = 0
            while not stop.is_set():
                ids = np.arange(20) + w * 1_000_000 + batch * 20
                vecs = rng.standard_normal((20, 8)).astype(np.float32)
                try:
                    col.upsert(ids, vecs)
                except E.DriftError:
                    return
                with lock:
                    acked.update(zip(ids.tolist(), vecs, strict=True))
                batch += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) >= 200, "too few writes were acknowledged to test anything"
    srv = start_server(srv.data)  # the stale sockets are replaced
    try:
        with srv.client() as c:
            col = c.collection("w")
            ids = np.fromiter(acked, dtype=np.int64)
            got = col.get(ids)
            assert got.ids.size == ids.size, f"{ids.size - got.ids.size} acknowledged writes lost"
            np.testing.assert_array_equal(got.vectors, np.stack([acked[i] for i in got.ids.tolist()]))
    finally:
        assert srv.stop() == 0


def test_tcp_rules(tmp_path):
    refused = subprocess.run(
        serve_cmd(tmp_path / "a", "--listen", "0.0.0.0:0"), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert refused.returncode == 2 and "without TLS and a token" in refused.stderr
    assert not (tmp_path / "a" / "collections").exists()  # refused before the engine opened
    no_token = subprocess.run(
        serve_cmd(tmp_path / "c", "--listen", "127.0.0.1:0"), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert no_token.returncode == 2 and "without a token" in no_token.stderr
    assert "--insecure-no-token" in no_token.stderr
    assert not (tmp_path / "c" / "collections").exists()
    srv = start_server(tmp_path / "b", "--listen", "127.0.0.1:0", "--insecure-no-token", wait=False)
    try:
        address = _wait_serving(srv)
        assert address.startswith("127.0.0.1:")
        with Client(address) as c:
            assert c.health()["fast_path"].startswith("fast+tcp:127.0.0.1:")  # the direct path beside TCP
            assert c.fast() is not None
    finally:
        assert srv.stop() == 0
    srv = start_server(tmp_path / "t", "--listen", "127.0.0.1:0", token="tcp-tok", wait=False)
    try:
        address = _wait_serving(srv)
        with Client(address, token="tcp-tok") as c:
            assert c.health()["status"] == "SERVING"
            col = c.create_collection("t", 2)
            col.upsert([1, 2], [[0.0, 0.0], [1.0, 1.0]])
            assert c.fast() is not None and col.search([0.9, 0.9], k=1).ids.tolist() == [2]  # over fast+tcp
        with Client(address) as c, pytest.raises(E.AuthenticationError):
            c.health()
        fast = DirectClient(Client(address, token="tcp-tok").health()["fast_path"], None)
        with pytest.raises(E.AuthenticationError):  # the fast path wants the token too
            fast.call(pb.FastRequest(get=pb.GetRequest(collection="t", ids=[1])), 10)
    finally:
        assert srv.stop() == 0


def test_serve_help_documents_the_token_rule():
    out = subprocess.run(
        [*serve_cmd(REPO / "unused")[:3], "serve", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0
    assert "--insecure-no-token" in out.stdout and "--token-file" in out.stdout


def test_tls_and_token_beyond_loopback(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a test certificate: {made.stderr.decode()[-300:]}")
    args = ("--listen", "0.0.0.0:0", "--tls-cert", str(cert), "--tls-key", str(key))
    srv = start_server(tmp_path / "data", *args, token="tok", wait=False)
    try:
        port = _wait_serving(srv).rsplit(":", 1)[1]
        with Client(f"localhost:{port}", token="tok", tls_ca=str(cert)) as c:
            assert c.health()["status"] == "SERVING"
        with Client(f"localhost:{port}", token="nope", tls_ca=str(cert)) as c, pytest.raises(E.AuthenticationError):
            c.health()
        with Client(f"localhost:{port}", token="tok", timeout=3) as c, pytest.raises(E.EngineUnavailableError):
            c.health()  # plaintext to a TLS port
    finally:
        assert srv.stop() == 0


def _wait_serving(srv, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in srv.log_text().splitlines():
            if '"msg": "serving"' in line:
                return json.loads(line)["listen"]
        if srv.proc.poll() is not None:
            raise AssertionError(srv.log_text())
        time.sleep(0.05)
    raise AssertionError("no 'serving' log line")


def test_cli_status_stats_inspect(tmp_path):
    srv = start_server(tmp_path / "data", token="tok")
    token_file = str(tmp_path / "data.token")
    with srv.client() as c:
        col = c.create_collection("s", 8)
        col.upsert(np.arange(3000), np.random.default_rng(0).standard_normal((3000, 8)))
        col.train(n_buckets=8)
    status = cli("status", "--data", str(srv.data), "--token-file", token_file)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "SERVING"
    denied = cli("status", "--data", str(srv.data))
    assert denied.returncode == 1 and "requires a token" in denied.stderr
    stats = cli("stats", "--data", str(srv.data), "--token-file", token_file)
    assert stats.returncode == 0 and json.loads(stats.stdout)["s"]["count"] == 3000
    for _ in range(20):  # with a server running, its background maintenance can show as transient problems
        live = cli("inspect", "--data", str(srv.data))
        assert json.loads(live.stdout)["server_running"] is True
        if live.returncode == 0:
            break
        time.sleep(0.5)
    assert live.returncode == 0, live.stdout
    assert srv.stop() == 0
    down = cli("status", "--data", str(srv.data), "--timeout", "2")
    assert down.returncode == 1 and "error:" in down.stderr
    report = cli("inspect", "--data", str(srv.data))
    assert report.returncode == 0, report.stdout
    body = json.loads(report.stdout)
    s_report = body["collections"]["s"]
    assert body["ok"] and s_report["live"] == 3000 and s_report["trained"] and s_report["buckets"] >= 8
    segment = next((srv.data / "collections" / "s" / "segments").glob("*.drift"))
    raw = bytearray(segment.read_bytes())
    raw[4096 + 10] ^= 0xFF  # one byte of the first block (after the 4 KiB header page)
    segment.write_bytes(bytes(raw))
    broken = cli("inspect", "--data", str(srv.data))
    assert broken.returncode == 1
    problems = json.loads(broken.stdout)["collections"]["s"]["problems"]
    assert any("checksum mismatch" in p and segment.name in p for p in problems), problems
    assert cli("inspect", "--data", str(tmp_path / "missing")).returncode == 2


def test_bad_txn_timeout_is_refused_before_anything_opens(tmp_path):
    out = subprocess.run(
        serve_cmd(tmp_path / "d", "--txn-timeout", "0"), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 2 and "--txn-timeout" in out.stderr
    assert not (tmp_path / "d" / "collections").exists()


@pytest.mark.parametrize("bad", ["-5", "abc"])
def test_bad_spin_us_is_refused_before_anything_opens(tmp_path, bad):
    out = subprocess.run(
        serve_cmd(tmp_path / "d", f"--spin-us={bad}"), capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 2 and "--spin-us" in out.stderr and "microseconds" in out.stderr
    assert not (tmp_path / "d").exists()
