"""Finishing committed transactions off the commit path: collection WALs synced, then ``TXN_DONE``.

Contract (the recovery rule of ``engine.txn`` is what makes this safe):

* A transaction is acknowledged once its ``TXN_COMMIT`` record is durable in the transaction log (it holds
  every collection's part in full) and each collection has logged (``TXN_APPLY``) and applied its part in
  memory. Neither the collections' WAL syncs nor the ``TXN_DONE`` record are needed for durability: after a
  crash, recovery re-applies from the ``TXN_COMMIT`` record every part whose ``TXN_APPLY`` did not survive.
* ``TxnFinisher`` does the rest in the background, for many transactions at once: it syncs each touched
  collection's WAL up to the transaction's ``TXN_APPLY`` (one fsync per collection for a whole batch), then
  appends one ``TXN_DONE`` per transaction and syncs the transaction log once. Only then are the
  ``TXN_APPLY`` pins dropped (``WritePath.txn_pins``: a collection never truncates its WAL past a pinned
  record). A ``TXN_DONE`` is therefore never durable before the ``TXN_APPLY`` records it vouches for.
* The transaction log is truncated only below the oldest commit that is not finished (``begin`` registers a
  commit before its record is appended), so recovery always finds every unfinished ``TXN_COMMIT``.
* A part whose collection WAL cannot be synced (the WAL failed, or the collection was closed before its
  records were durable) leaves its transaction unfinished: no ``TXN_DONE``, the commit record is kept, and
  the next open of the engine finishes it.
* ``close`` finishes everything pending (call it before the collections close), then stops the thread.
  Crash points: ``txn.before_done`` (before each ``TXN_DONE`` append) and ``txn.after_done`` (after the
  transaction log sync, once per transaction).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drift_engine.wal import records
from drift_engine.wal.log import WriteAheadLog

log = logging.getLogger(__name__)


@dataclass
class CommittedTxn:
    """A committed, applied transaction waiting for its ``TXN_DONE``: ``parts`` pairs each collection's
    ``WritePath`` with the lsn of its ``TXN_APPLY`` record."""

    seq: int
    commit_lsn: int
    parts: list[tuple[Any, int]]


class TxnFinisher:
    """Background writer of ``TXN_DONE`` records (module docstring)."""

    def __init__(self, wal: WriteAheadLog, hit: Callable[[str], None]) -> None:
        self._wal = wal
        self._hit = hit
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[CommittedTxn] = []
        self._unfinished: dict[int, frozenset[str]] = {}  # commit lsn -> its collections, not finished yet
        self._appending = 0  # commit records being appended, lsn not known yet
        self._added = 0  # transactions queued so far / handled so far (finished or left for recovery)
        self._handled = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="drift-txn-done", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the commit path's side
    def begin(self) -> None:
        """A commit record is about to be appended: no truncation until ``logged`` (or ``abandon``) says
        which lsn it got."""
        with self._cond:
            self._appending += 1

    def logged(self, commit_lsn: int | None, collections: frozenset[str] = frozenset()) -> None:
        """The commit record announced by ``begin`` got ``commit_lsn`` (None: it was never appended); it
        writes to ``collections``."""
        with self._cond:
            self._appending -= 1
            if commit_lsn is not None:
                self._unfinished[commit_lsn] = collections

    def unfinished_touching(self, collection: str) -> bool:
        """Whether a commit writing to ``collection`` has no ``TXN_DONE`` yet (``drain`` first)."""
        with self._cond:
            return any(collection in names for names in self._unfinished.values())

    def abandon(self, commit_lsn: int) -> None:
        """The commit record of ``commit_lsn`` could not be made durable: the log has failed; forget it."""
        with self._cond:
            self._unfinished.pop(commit_lsn, None)

    def add(self, txn: CommittedTxn) -> None:
        """Queue an acknowledged transaction for its ``TXN_DONE``."""
        with self._cond:
            self._pending.append(txn)
            self._added += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ the background side
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
            try:
                self._finish(batch)
            except Exception:
                log.exception("finishing %d committed transaction(s) failed; the next open finishes them", len(batch))
            finally:
                with self._cond:
                    self._handled += len(batch)
                    self._cond.notify_all()

    def _finish(self, batch: list[CommittedTxn]) -> None:
        upto: dict[int, tuple[Any, int]] = {}
        for txn in batch:
            for writes, lsn in txn.parts:
                prev = upto.get(id(writes))
                upto[id(writes)] = (writes, max(lsn, prev[1] if prev else 0))
        durable: dict[int, int] = {}
        for key, (writes, lsn) in upto.items():
            try:
                writes.wal.sync(lsn, "sync")
            except Exception as exc:
                log.warning("a collection WAL could not be synced for committed transactions: %s", exc)
            durable[key] = writes.wal.synced_lsn
        done: list[CommittedTxn] = []
        last = 0
        for txn in batch:
            if all(durable[id(writes)] >= lsn for writes, lsn in txn.parts):
                self._hit("txn.before_done")
                last = self._wal.append(records.TXN_DONE, records.encode_txn_done(txn.seq))
                done.append(txn)
            else:
                log.warning("transaction %d stays unfinished until the next open (collection WAL not durable)", txn.seq)
        if not done:
            return
        self._wal.sync(last, "sync")
        unpin: dict[int, tuple[Any, list[int]]] = {}
        for txn in done:
            for writes, lsn in txn.parts:
                unpin.setdefault(id(writes), (writes, []))[1].append(lsn)
            self._hit("txn.after_done")
        for writes, lsns in unpin.values():  # once per collection and batch: committers hold these locks
            with writes.lock:
                writes.txn_pins.difference_update(lsns)
        with self._cond:  # held across the truncation: no commit record can appear unregistered meanwhile
            for txn in done:
                self._unfinished.pop(txn.commit_lsn, None)
            if not self._appending:
                keep_from = min(self._unfinished, default=None)
                self._wal.truncate_upto(self._wal.stats()["last_lsn"] if keep_from is None else keep_from - 1)

    # ------------------------------------------------------------------ lifecycle
    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every transaction queued before this call is handled (finished, or left for recovery);
        later ones are not waited for. False on timeout or when the thread is gone."""
        with self._cond:
            target = self._added
            return self._cond.wait_for(lambda: self._handled >= target or not self._thread.is_alive(), timeout) and (
                self._handled >= target
            )

    def close(self) -> None:
        """Finish what is pending, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
