"""The write-ahead log: checksummed, lsn-numbered records in rotating files, with group commit.

Files: ``wal/NNNNNNNNNNNNNNNN.log`` (name = first lsn in the file, 16 decimal digits), each a header and
framed, CRC32C-checked records; the byte format and record classification are in ``wal.frame``.

LSNs are consecutive integers starting at 1 across all files (the first file of a fresh log is
``0000000000000001.log``).  A file is rotated, between records, once appending the next record would
take it past ``max_file_bytes`` (a single record larger than that gets a file of its own).

Ordering and durability:

* ``append`` assigns the next lsn and ``write``s the record (no fsync) under an internal lock, so it
  is safe from several threads; lsn order is file order.  Callers that need lsn order to match another
  order (memtable mutation) hold their own lock around ``append``.
* ``sync(lsn)`` returns once record ``lsn`` is durable per the mode.  ``"sync"``: fdatasync'ed, with
  **group commit** -- a caller arriving when no fsync runs becomes the leader, fdatasyncs everything
  written so far and wakes every waiter it covered; the others wait, so concurrent writers share
  fsyncs.  ``"batch"``: returns at once; a background thread fdatasyncs every ``batch_ms`` (a crash
  may lose the last ``batch_ms`` of acknowledged writes).  ``"off"``: returns at once; fsyncs happen
  only at rotation and ``close`` -- UNSAFE (an OS crash may lose acknowledged writes), for bulk loads.
* Rotation fdatasyncs the old file before creating the next (header and directory fsynced), so a
  later file never exists on disk unless every earlier record is durable.
* If an fsync (or a write) fails the log is **failed**: that call and every later ``append`` / ``sync``
  raises ``WritesStoppedError`` naming the file and the OS error -- never retry-and-ack (after a failed
  fsync the kernel may have dropped the dirty pages).  Reopen to recover.
* WAL before data: persist "applied up to lsn X" elsewhere only after ``sync(X, "sync")`` returned,
  or after a crash new records could reuse lsns believed applied.

Recovery (constructor): ``wal.recovery.recover`` validates every file before touching any; a torn
tail (a short write at the end of the last file) is truncated and logged, anything else bad --
including a complete last record whose checksum fails -- refuses to open, naming file and offset.
The last file is then fdatasynced (records a crashed process left in the page cache become durable
before anyone acts on them); appends continue right after the last good record.

Thread-safety: all public methods may be called from any thread.  ``replay`` snapshots the file list
when iteration starts; run it before appending (concurrent appends may or may not be included), and
not concurrently with ``truncate_upto``.

Crash-test hook: ``crash_hook(point)`` is called with ``"wal.before_write"``, ``"wal.after_write"``
(before any fsync) and ``"wal.after_fsync"`` (group-commit leader, before waking waiters).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from drift_engine.config import DURABILITY_MODES
from drift_engine.errors import EngineClosedError, InvalidArgumentError, WritesStoppedError
from drift_engine.storage.pages import fsync_dir, pwrite_all
from drift_engine.wal.frame import (
    HEADER_SIZE,
    REC,
    REC_HEADER_SIZE,
    WalFile,
    WalRecord,
    file_name,
    record_crc,
    replay_file,
)
from drift_engine.wal.recovery import create_file, fdatasync, recover

log = logging.getLogger(__name__)


CrashHook = Callable[[str], None]

__all__ = ["DURABILITY_MODES", "HEADER_SIZE", "REC_HEADER_SIZE", "WalRecord", "WriteAheadLog", "file_name"]


class WriteAheadLog:
    """Append-only, checksummed, group-committed log of ``(lsn, type, body)`` records (see module doc)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        durability: str = "sync",
        batch_ms: float = 10.0,
        max_file_bytes: int = 64 << 20,
        max_record_bytes: int = 256 << 20,
        crash_hook: CrashHook | None = None,
    ) -> None:
        if durability not in DURABILITY_MODES:
            raise InvalidArgumentError(f"WAL durability must be one of {DURABILITY_MODES}: {durability!r}")
        if not batch_ms > 0:
            raise InvalidArgumentError(f"WAL batch_ms must be > 0, got {batch_ms}")
        if max_file_bytes <= HEADER_SIZE:
            raise InvalidArgumentError(f"WAL max_file_bytes must be > {HEADER_SIZE}, got {max_file_bytes}")
        if not 0 < max_record_bytes <= 0xFFFFFFFF:
            raise InvalidArgumentError(f"WAL max_record_bytes must be in 1..2**32-1, got {max_record_bytes}")
        self._dir = Path(directory)
        self._durability = durability
        self._batch_s = batch_ms / 1000.0
        self._max_file = max_file_bytes
        self._max_record = max_record_bytes
        self._hook = crash_hook

        self._lock = threading.Lock()  # appends, rotation, file list, fd
        self._cond = threading.Condition(threading.Lock())  # group commit: _synced_lsn, _syncing, _failure
        self._syncing = False
        self._failure: str | None = None
        self._closed = False
        self._fsyncs = 0
        self._appends = 0
        self._stop = threading.Event()
        self._batch_thread: threading.Thread | None = None

        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._files, next_lsn = recover(self._dir, self._max_record)
        cur = self._files[-1]
        self._last_lsn = next_lsn - 1
        self._fd = os.open(cur.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fdatasync(self._fd)
            fsync_dir(self._dir)
        except BaseException:
            os.close(self._fd)
            raise
        self._synced_lsn = self._last_lsn

    # --- properties ---------------------------------------------------------------------------
    @property
    def last_lsn(self) -> int:
        """Highest lsn appended (or found at open); 0 for an empty log."""
        return self._last_lsn

    @property
    def synced_lsn(self) -> int:
        """Highest lsn known durable."""
        return self._synced_lsn

    @property
    def first_lsn(self) -> int:
        """Lowest lsn still in the log (records below it were removed by ``truncate_upto``)."""
        with self._lock:
            return self._files[0].first_lsn

    @property
    def durability(self) -> str:
        return self._durability

    # --- replay -------------------------------------------------------------------------------
    def replay(self, after_lsn: int = 0) -> Iterator[tuple[int, int, bytes]]:
        """Yield ``(lsn, type, body)`` for every record with lsn > ``after_lsn``, in lsn order."""
        for rec in self.records(after_lsn):
            yield rec.lsn, rec.type, rec.body

    def records(self, after_lsn: int = 0) -> Iterator[WalRecord]:
        """Like ``replay``, but each record also names its file and offset (for error messages)."""
        with self._lock:
            files = [WalFile(f.path, f.first_lsn, f.size, f.salt) for f in self._files]
        for i, f in enumerate(files):
            if i + 1 < len(files) and files[i + 1].first_lsn - 1 <= after_lsn:
                continue  # every record of this file is <= after_lsn
            yield from replay_file(f, after_lsn)

    # --- writes -------------------------------------------------------------------------------
    def _stopped(self) -> WritesStoppedError:
        return WritesStoppedError(self._failure or "WAL writes stopped")

    def _fail(self, message: str) -> WritesStoppedError:
        with self._cond:
            if self._failure is None:
                self._failure = message
                log.error("%s", message)
            self._cond.notify_all()
        return self._stopped()

    def append(self, rtype: int, body: bytes) -> int:
        """Write one record (no fsync) and return its lsn.  Thread-safe (internally locked)."""
        if not isinstance(rtype, int) or not 0 <= rtype <= 255:
            raise InvalidArgumentError(f"WAL record type must be an int in 0..255, got {rtype!r}")
        view = memoryview(body).cast("B")
        n = len(view)
        if n > self._max_record:
            limit = self._max_record
            raise InvalidArgumentError(f"WAL record body of {n} bytes exceeds max_record_bytes {limit}")
        with self._lock:
            if self._failure is not None:
                raise self._stopped()
            if self._closed:
                raise EngineClosedError("the WAL is closed")
            cur = self._files[-1]
            if cur.size > HEADER_SIZE and cur.size + REC_HEADER_SIZE + n > self._max_file:
                self._rotate()
                cur = self._files[-1]
            lsn = self._last_lsn + 1
            head = REC.pack(n, record_crc(cur.salt, n, lsn, rtype, view), lsn, rtype)
            if self._hook is not None:
                self._hook("wal.before_write")
            try:
                written = os.pwritev(self._fd, [head, view], cur.size)
                if written < REC_HEADER_SIZE + n:
                    pwrite_all(self._fd, (head + view.tobytes())[written:], cur.size + written)
            except OSError as exc:
                raise self._fail(
                    f"WAL write of lsn {lsn} to {cur.path} at offset {cur.size} failed: {exc}; "
                    "writes stopped, reopen the engine"
                ) from exc
            if self._hook is not None:
                self._hook("wal.after_write")
            cur.size += REC_HEADER_SIZE + n
            self._last_lsn = lsn
            self._appends += 1
            return lsn

    def _rotate(self) -> None:
        """Called under ``_lock``: make the current file durable, then start the next one."""
        cur = self._files[-1]
        try:
            fdatasync(self._fd)
        except OSError as exc:
            raise self._fail(
                f"WAL fsync of {cur.path} failed at rotation: {exc}; writes stopped, reopen the engine"
            ) from exc
        with self._cond:
            self._fsyncs += 1
            self._synced_lsn = max(self._synced_lsn, self._last_lsn)
            self._cond.notify_all()
        try:
            new = create_file(self._dir, self._last_lsn + 1)
            fd = os.open(new.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            name = file_name(self._last_lsn + 1)
            msg = f"creating WAL file {name} in {self._dir} failed: {exc}; writes stopped"
            raise self._fail(msg) from exc
        os.close(self._fd)
        self._fd = fd
        self._files.append(new)

    def sync(self, lsn: int, durability: str | None = None) -> None:
        """Return when record ``lsn`` is durable per ``durability`` (default: the log's mode)."""
        mode = self._durability if durability is None else durability
        if mode not in DURABILITY_MODES:
            raise InvalidArgumentError(f"WAL durability must be one of {DURABILITY_MODES}, got {mode!r}")
        if self._failure is not None:
            raise self._stopped()
        if lsn > self._last_lsn:
            raise InvalidArgumentError(f"cannot sync lsn {lsn}: the last appended lsn is {self._last_lsn}")
        if mode == "sync":
            self._sync_upto(lsn)
        elif mode == "batch":
            self._ensure_batch_thread()

    def append_sync(self, rtype: int, body: bytes, durability: str | None = None) -> int:
        """``append`` then ``sync``; returns the lsn once it is durable per the mode."""
        lsn = self.append(rtype, body)
        self.sync(lsn, durability)
        return lsn

    def _sync_upto(self, lsn: int) -> None:
        """Group commit: wait for, or lead, an fdatasync that covers ``lsn``."""
        while True:
            with self._cond:
                while True:
                    if self._failure is not None:
                        raise self._stopped()
                    if self._synced_lsn >= lsn:
                        return
                    if not self._syncing:
                        self._syncing = True
                        break
                    self._cond.wait()
            target = -1
            # Let writers just woken by the previous fsync append first, so this fsync covers them too
            # (8 threads: ~5 -> ~8 records per fsync).  Releases the GIL; costs ~1 us when alone.
            os.sched_yield()
            try:
                with self._lock:
                    if self._fd < 0:
                        raise EngineClosedError(f"the WAL is closed; lsn {lsn} was not synced")
                    target = self._last_lsn
                    fd = os.dup(self._fd)
                    path = self._files[-1].path
                try:
                    fdatasync(fd)
                except OSError as exc:
                    target = -1
                    raise self._fail(
                        f"WAL fsync of {path} failed: {exc}; writes stopped (records after lsn "
                        f"{self._synced_lsn} may not be durable), reopen the engine"
                    ) from exc
                finally:
                    os.close(fd)
                if self._hook is not None:
                    self._hook("wal.after_fsync")
            finally:
                with self._cond:
                    self._syncing = False
                    if target >= 0:
                        self._fsyncs += 1
                        self._synced_lsn = max(self._synced_lsn, target)
                    self._cond.notify_all()

    def _ensure_batch_thread(self) -> None:
        if self._batch_thread is not None:
            return
        with self._lock:
            if self._batch_thread is None and not self._closed:
                t = threading.Thread(target=self._batch_loop, name="drift-wal-batch", daemon=True)
                self._batch_thread = t
                t.start()

    def _batch_loop(self) -> None:
        while not self._stop.wait(self._batch_s):
            if self._failure is not None:
                return
            target = self._last_lsn
            if target > self._synced_lsn:
                try:
                    self._sync_upto(target)
                except (WritesStoppedError, EngineClosedError):
                    return

    # --- maintenance --------------------------------------------------------------------------
    def truncate_upto(self, lsn: int) -> int:
        """Delete whole files whose every record has lsn <= ``lsn`` (never the current file)."""
        with self._lock:
            removed = 0
            while len(self._files) > 1 and self._files[1].first_lsn - 1 <= lsn:
                os.unlink(self._files[0].path)
                del self._files[0]
                removed += 1
            if removed:
                fsync_dir(self._dir)
            return removed

    def close(self) -> None:
        """Stop the batch thread, fdatasync what is unsynced (unless failed), close.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._batch_thread is not None and self._batch_thread is not threading.current_thread():
            self._batch_thread.join()
        try:
            if self._failure is None and self._last_lsn > self._synced_lsn:
                self._sync_upto(self._last_lsn)
        finally:
            with self._lock:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict:
        """Counters: files, bytes, first/last/synced lsn, fsyncs, appends, durability, failed."""
        with self._lock:
            files = len(self._files)
            nbytes = sum(f.size for f in self._files)
            first = self._files[0].first_lsn
        return {
            "files": files,
            "bytes": nbytes,
            "first_lsn": first,
            "last_lsn": self._last_lsn,
            "synced_lsn": self._synced_lsn,
            "fsyncs": self._fsyncs,
            "appends": self._appends,
            "durability": self._durability,
            "failed": self._failure is not None,
        }
