"""The fast path's busy-waits (server/spin.py, DirectClient's reply spin): they return as soon as the socket is
readable, give up after their budget, stop when interrupted, never spin twice at once, and change no answer."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from drift_engine.server import directclient, spin
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.spin import Spinner

needs_cpus = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="spinning is off on one CPU")


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spinner's own logic, whatever else runs on this machine meanwhile."""
    monkeypatch.setattr(spin, "cpu_to_spare", lambda: True)


def _ready(budget_us: int) -> Spinner:
    spinner = Spinner(budget_us)
    deadline = time.monotonic() + 60
    while not spinner.ready and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spinner.ready
    return spinner


@needs_cpus
def test_the_server_spinner_returns_when_data_arrives_and_gives_up_after_its_budget() -> None:
    spinner = _ready(20_000)
    a, b = socket.socketpair()
    with a, b:
        t0 = time.perf_counter()
        assert spinner.spin(a) is False  # nothing came: the whole budget, then the caller blocks as before
        assert time.perf_counter() - t0 >= 0.019
        threading.Timer(0.002, lambda: b.send(b"x")).start()
        t0 = time.perf_counter()
        assert spinner.spin(a) is True
        assert time.perf_counter() - t0 < 0.019
        assert a.recv(1) == b"x"  # the spin read nothing itself


@needs_cpus
def test_an_interrupt_stops_the_spin_and_only_one_thread_spins_at_once() -> None:
    spinner = _ready(2_000_000)
    a, b = socket.socketpair()
    with a, b:
        out: list[bool] = []
        t = threading.Thread(target=lambda: out.append(spinner.spin(a)))
        t0 = time.perf_counter()
        t.start()
        time.sleep(0.05)
        assert spinner.spin(b) is False  # another thread spins: this one does not
        spinner.interrupt()
        t.join(5)
        assert out == [False] and time.perf_counter() - t0 < 1.0


@needs_cpus
def test_no_spin_without_a_cpu_to_spare(monkeypatch: pytest.MonkeyPatch) -> None:
    spinner = _ready(2_000_000)
    monkeypatch.setattr(spin, "cpu_to_spare", lambda: False)
    a, b = socket.socketpair()
    with a, b:
        t0 = time.perf_counter()
        assert spinner.spin(a) is False and time.perf_counter() - t0 < 0.5


def test_a_zero_budget_disables_the_spinner() -> None:
    spinner = Spinner(0)
    a, b = socket.socketpair()
    with a, b:
        b.send(b"x")
        assert not spinner.enabled and spinner.spin(a) is False


def test_the_client_spin_returns_when_readable_or_after_its_budget() -> None:
    a, b = socket.socketpair()
    with a, b:
        t0 = time.perf_counter()
        directclient._spin(a, 0.01)
        assert time.perf_counter() - t0 >= 0.0095
        b.send(b"x")
        t0 = time.perf_counter()
        directclient._spin(a, 5.0)
        assert time.perf_counter() - t0 < 1.0 and a.recv(1) == b"x"


def test_a_client_busy_wait_that_misses_a_quick_reply_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A miss on a request the server answered quickly (it could not run while we polled) makes the next
    1, 2, 4 ... calls wait without busy-waiting; a hit ends the back-off; a miss on a request the server
    itself was slow on (cold caches, a large request) changes nothing."""
    monkeypatch.setattr(directclient, "cpu_to_spare", lambda: True)
    outcomes: list[bool] = []
    spun: list[int] = []
    monkeypatch.setattr(directclient, "_spin", lambda sock, s: bool(spun.append(1)) or outcomes.pop(0))
    client = directclient.DirectClient("fast+unix:/nonexistent", None, spin_us=100)
    if not client.spin_s:
        pytest.skip("spinning is off on one CPU")
    quick, slow = pb.FastReply(server_us=20), pb.FastReply(server_us=80)

    def calls(n: int, reply: pb.FastReply) -> list[bool]:
        results = []
        for _ in range(n):
            results.append(client._spun(a))
            client._learn(reply)
        return results

    a, b = socket.socketpair()
    with a, b:
        outcomes[:] = [False, False, False]
        assert calls(6, quick) == [False] * 6
        assert len(spun) == 3  # miss, skip 1, miss, skip 2, miss: the third busy-wait came after two skipped calls
        assert calls(4, quick) == [False] * 4 and len(spun) == 3  # then 4 calls skip
        outcomes[:] = [True, True]
        assert calls(2, quick) == [True, True] and len(spun) == 5  # a hit: every call busy-waits again
        outcomes[:] = [False] * 3
        assert calls(3, slow) == [False] * 3 and len(spun) == 8  # slow requests: no back-off
        outcomes[:] = [False] * 10
        calls(200, quick)  # busy-waits at calls 1, 3, 6, 11, 20, 37, 70, 135, 200: the skips stop growing at 64
        assert len(spun) == 8 + 9 and client._spin_skips == directclient.SPIN_BACKOFF_MAX
        client._learn(pb.FastReply(others_busy=1))
        before = len(spun)
        assert client._spun(a) is False and len(spun) == before  # a busy server: no busy-wait at all
