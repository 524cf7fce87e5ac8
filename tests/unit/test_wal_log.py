"""wal/log.py: append / replay / rotation / truncation, durability modes, group commit, fsync failure."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest import MonkeyPatch

from drift_engine.errors import EngineClosedError, InvalidArgumentError, WritesStoppedError
from drift_engine.wal.log import HEADER_SIZE, WriteAheadLog, file_name
from tests.unit.threadcheck import ThreadGroup

REAL_FDATASYNC = os.fdatasync


def body_for(lsn: int) -> bytes:
    return bytes([lsn % 251]) * (lsn * 7 % 97)


def log_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def counting_fdatasync(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[int]:
    calls: list[int] = []

    def fake(fd: int) -> None:
        calls.append(fd)
        if delay:
            time.sleep(delay)
        REAL_FDATASYNC(fd)

    monkeypatch.setattr(os, "fdatasync", fake)
    return calls


# --- append / replay / rotation ---------------------------------------------------------------
def test_round_trip_across_rotation_and_reopen(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WriteAheadLog(d, max_file_bytes=1024) as w:
        assert (w.last_lsn, w.synced_lsn, w.first_lsn) == (0, 0, 1)
        lsns = [w.append(i % 6, body_for(i + 1)) for i in range(500)]
        assert lsns == list(range(1, 501))
        w.sync(500)
        st = w.stats()
        assert st["appends"] == 500 and st["last_lsn"] == 500 and st["synced_lsn"] == 500
        assert st["files"] == len(log_files(d)) > 10
        assert st["bytes"] == sum((d / n).stat().st_size for n in log_files(d))
        assert list(w.replay()) == [(i, (i - 1) % 6, body_for(i)) for i in range(1, 501)]
    names = log_files(d)
    assert names[0] == file_name(1) == "0000000000000001.log"
    # Every file but the last respects the size limit; names are the first lsn of each file.
    for n in names[:-1]:
        assert (d / n).stat().st_size <= 1024
    with WriteAheadLog(d, max_file_bytes=1024) as w:
        assert w.last_lsn == w.synced_lsn == 500
        got = list(w.replay())
        assert [r[0] for r in got] == list(range(1, 501))
        firsts = [int(n[:16]) for n in log_files(d)]
        starts = {lsn for lsn, _, _ in got}
        assert all(f in starts for f in firsts)
        # replay(after_lsn) filters, at and across file boundaries
        for after in (0, 1, firsts[3] - 1, firsts[3], 499, 500, 10_000):
            assert [r[0] for r in w.replay(after)] == list(range(after + 1, 501))
        assert w.append_sync(9, b"more") == 501
    with WriteAheadLog(d) as w:
        assert w.last_lsn == 501
        assert list(w.replay(499)) == [(500, 499 % 6, body_for(500)), (501, 9, b"more")]


def test_big_record_gets_its_own_file_and_limits(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, max_file_bytes=200, max_record_bytes=1000) as w:
        w.append(1, b"a" * 10)
        w.append(1, b"b" * 1000)  # larger than max_file_bytes: rotated, then written whole
        w.append(1, b"")
        with pytest.raises(InvalidArgumentError):
            w.append(1, b"c" * 1001)
        with pytest.raises(InvalidArgumentError):
            w.append(256, b"")
        with pytest.raises(InvalidArgumentError):
            w.sync(99)  # never appended
        with pytest.raises(InvalidArgumentError):
            w.sync(1, "fast")
        assert log_files(tmp_path) == [file_name(1), file_name(2), file_name(3)]
        assert [len(b) for _, _, b in w.replay()] == [10, 1000, 0]
    assert HEADER_SIZE == 26  # max_file_bytes must exceed the header
    bad_args = ({"durability": "x"}, {"batch_ms": 0}, {"max_file_bytes": 26}, {"max_record_bytes": 0})
    for bad in bad_args:
        with pytest.raises(InvalidArgumentError):
            WriteAheadLog(tmp_path / "x", **bad)  # type: ignore[arg-type]


def test_truncate_upto_removes_only_fully_covered_files(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, max_file_bytes=256) as w:
        for i in range(1, 61):
            w.append(1, body_for(i))
        w.sync(60)
        firsts = [int(n[:16]) for n in log_files(tmp_path)]
        assert len(firsts) >= 5
        # lsn one short of the end of file 2: only file 1 is fully covered
        assert w.truncate_upto(firsts[2] - 2) == 1
        assert [int(n[:16]) for n in log_files(tmp_path)] == firsts[1:]
        assert w.first_lsn == firsts[1]
        assert w.truncate_upto(firsts[2] - 2) == 0
        assert w.truncate_upto(firsts[2] - 1) == 1  # now file 2 is fully covered
        assert w.truncate_upto(0) == 0
        # never the file being appended to, even when every record is covered
        assert w.truncate_upto(10**9) == len(firsts) - 3
        assert log_files(tmp_path) == [file_name(firsts[-1])]
        assert [r[0] for r in w.replay()] == list(range(firsts[-1], 61))
        assert w.stats()["files"] == 1
    with WriteAheadLog(tmp_path, max_file_bytes=256) as w:
        assert w.first_lsn == firsts[-1] and w.last_lsn == 60
        assert w.append_sync(1, b"x") == 61
        assert [r[0] for r in w.replay(59)] == [60, 61]


# --- durability modes -------------------------------------------------------------------------
def test_sync_mode_fsyncs_and_hooks_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    w = WriteAheadLog(tmp_path, crash_hook=events.append)
    calls = counting_fdatasync(monkeypatch)
    assert w.append_sync(1, b"a") == 1
    assert len(calls) == 1 and w.synced_lsn == 1
    assert events == ["wal.before_write", "wal.after_write", "wal.after_fsync"]
    w.sync(1)  # already durable: no new fsync
    assert len(calls) == 1
    w.close()
    w.close()  # idempotent
    assert len(calls) == 1
    with pytest.raises(EngineClosedError):
        w.append(1, b"b")


@pytest.mark.parametrize("mode", ["off", "batch"])
def test_off_and_batch_skip_per_call_fsync(tmp_path: Path, monkeypatch: MonkeyPatch, mode: str) -> None:
    w = WriteAheadLog(tmp_path, durability=mode, batch_ms=50.0)
    calls = counting_fdatasync(monkeypatch)
    t0 = time.perf_counter()
    for i in range(200):
        w.append_sync(1, body_for(i))
    # 200 calls without fsyncs (the batch thread may have run once or twice meanwhile)
    assert len(calls) <= (time.perf_counter() - t0) / 0.05 + 1
    assert w.last_lsn == 200
    if mode == "batch":
        deadline = time.monotonic() + 5
        while w.synced_lsn < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.synced_lsn == 200 and len(calls) >= 1  # the background thread fsynced
    else:
        time.sleep(0.1)
        assert calls == [] and w.synced_lsn == 0
        assert w.append_sync(1, b"x", durability="sync") == 201  # per-call override
        assert len(calls) == 1 and w.synced_lsn == 201
        w.append(1, b"y")
    before = len(calls)
    w.close()
    assert w.synced_lsn == w.last_lsn
    if mode == "off":
        assert len(calls) == before + 1  # close fsyncs what is unsynced
    with WriteAheadLog(tmp_path) as w2:
        assert w2.last_lsn == w.last_lsn


# --- group commit -----------------------------------------------------------------------------
def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = WriteAheadLog(tmp_path)
    calls = counting_fdatasync(monkeypatch, delay=0.002)  # make each fsync take a while
    n_threads, per_thread = 8, 40
    errors: list[str] = []
    got: list[int] = []
    barrier = threading.Barrier(n_threads)

    def worker(k: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            lsn = w.append_sync(1, f"{k}:{i}".encode())
            if lsn > w.synced_lsn:
                errors.append(f"lsn {lsn} returned before durable (synced {w.synced_lsn})")
            got.append(lsn)

    group = ThreadGroup()
    for k in range(n_threads):
        group.start(worker, k)
    group.join()  # all ran to the end, none raised
    assert errors == []
    total = n_threads * per_thread
    assert sorted(got) == list(range(1, total + 1))
    st = w.stats()
    assert st["appends"] == total and st["fsyncs"] == len(calls)
    assert st["fsyncs"] < total / 2, st  # shared: far fewer fsyncs than appends
    assert w.synced_lsn == total
    bodies = {b for _, _, b in w.replay()}
    assert bodies == {f"{k}:{i}".encode() for k in range(n_threads) for i in range(per_thread)}
    w.close()


# --- fsync failure ----------------------------------------------------------------------------
def failing_once(monkeypatch: pytest.MonkeyPatch, before: Callable[[], None] | None = None) -> list[int]:
    state: list[int] = []

    def fake(fd: int) -> None:
        if not state:
            state.append(fd)
            if before is not None:
                before()
            raise OSError(errno.EIO, "Input/output error")
        REAL_FDATASYNC(fd)

    monkeypatch.setattr(os, "fdatasync", fake)
    return state


def test_fsync_failure_stops_writes_for_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = WriteAheadLog(tmp_path)
    assert w.append_sync(1, b"ok") == 1
    failing_once(monkeypatch)
    with pytest.raises(WritesStoppedError) as ei:
        w.append_sync(1, b"lost?")
    msg = str(ei.value)
    assert file_name(1) in msg and "Input/output error" in msg
    assert w.synced_lsn == 1
    # fdatasync works again now, but the log stays failed: no retry-and-ack
    for call in (
        lambda: w.append(1, b"x"),
        lambda: w.append_sync(1, b"x"),
        lambda: w.sync(1),
        lambda: w.sync(2),
        lambda: w.append_sync(1, b"x", durability="off"),
    ):
        with pytest.raises(WritesStoppedError):
            call()
    assert w.stats()["failed"] is True
    w.close()  # no fsync attempt, no error
    with WriteAheadLog(tmp_path) as w2:  # reopening recovers
        assert [r[2] for r in w2.replay()] == [b"ok", b"lost?"]
        assert w2.append_sync(1, b"again") == 3


def test_fsync_failure_fails_every_waiter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = WriteAheadLog(tmp_path)
    in_fsync = threading.Event()
    release = threading.Event()

    def block() -> None:
        in_fsync.set()
        release.wait(5)

    failing_once(monkeypatch, before=block)
    results: list[str] = []

    def writer(body: bytes) -> None:
        try:
            w.append_sync(1, body)
            results.append("ok")
        except WritesStoppedError:
            results.append("stopped")

    group = ThreadGroup()
    group.start(writer, b"leader")
    assert in_fsync.wait(5)
    for i in range(4):
        group.start(writer, b"f%d" % i)
    deadline = time.monotonic() + 5
    while w.last_lsn < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    group.join()
    assert results == ["stopped"] * 5
    w.close()


def test_fsync_failure_in_batch_thread_stops_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = WriteAheadLog(tmp_path, durability="batch", batch_ms=5.0)
    failing_once(monkeypatch)
    w.append_sync(1, b"a")
    deadline = time.monotonic() + 5
    while not w.stats()["failed"] and time.monotonic() < deadline:
        time.sleep(0.005)
    with pytest.raises(WritesStoppedError):
        w.append_sync(1, b"b")
    w.close()
