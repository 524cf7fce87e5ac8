"""Engine transactions: writes to several collections that commit or fail as ONE operation.

Contract:

* A transaction has a client-chosen id (``txn_id``, 1..128 printable characters). ``stage`` adds ops to
  it in as many calls as needed: ``insert`` (refused at commit if the id exists), ``upsert``, ``delete``
  (ids that do not exist are ignored), and ``expect`` (the ids the transaction read, each with the
  ``read_lsn`` of its read: ``GetResult.read_lsn``). Within one transaction an id is written at most once
  per collection (the caller nets its own writes). Staging validates the input (dimensions, finite
  values, payloads) but reads no collection state.
* ``prepare`` validates the whole transaction against the current state under the write locks of every
  collection it touches (sorted by name): insert ids must not exist; every expected id must still be live
  with a version (``WritePath.versions``) at or below its ``read_lsn`` -- else ``ConflictError`` (a
  write-write conflict); no id may be held by another prepared transaction -- ``ConflictError``. It then
  *reserves* every id it writes: until it commits or aborts, any other write of those ids (transactional
  or not) raises ``ConflictError``. So a prepared transaction's commit cannot fail on validation. A
  transaction may be staged further after a prepare and prepared again.
* ``commit`` validates (again) under the write locks of every collection it touches, then appends ONE ``TXN_COMMIT``
  record holding every collection's part to the engine's transaction log (``<data>/txnlog``, a
  ``WriteAheadLog``) and syncs it: **that is the commit point**. Then each collection logs and applies
  its part as one ``TXN_APPLY`` record, and the call returns (is acknowledged). Syncing the collections'
  WALs and writing the ``TXN_DONE`` record happen in the background (``engine.txn_done``: batched, never
  before the ``TXN_APPLY`` records are durable); durability does not need them, since the commit record
  holds the whole transaction. A commit that raises before the commit point changed nothing. A failure
  after it (a WAL that cannot be written) raises ``WritesStoppedError``: the transaction is committed and
  the next open finishes applying it.
* ``abort`` drops a staged or prepared transaction and its reservations. A transaction idle longer than
  ``timeout`` seconds (no stage / prepare call) is aborted by a reaper thread (a vanished client), and
  nothing staged or prepared survives a restart: only committed transactions exist after one.
* Locks: the touched collections' write locks (sorted by name) are held from validation until the parts
  are applied in memory (a concurrent write or validation of those collections waits, as for a plain
  write); the engine-wide commit lock, taken after them, only covers the append of the commit record
  (sequence order = log order), so commits of other collections share the commit point's fsync (group
  commit). A part staged into a collection that was dropped (and maybe re-created) since fails the commit
  with ``CollectionNotFoundError`` before anything is written. A commit
  over several collections syncs its commit record whatever the durability mode (see ``_apply_committed``).

Recovery rule (``TxnManager.recover``, run by ``Engine.open`` after every collection has replayed its
WAL): every ``TXN_COMMIT`` in the transaction log without a ``TXN_DONE`` is finished: each collection
part that the collection does not hold yet (no ``TXN_APPLY`` of that sequence number among its retained
WAL records, ``WritePath.txn_seqs``) is applied now; then ``TXN_DONE`` is written. A ``TXN_APPLY`` is
only ever written after its ``TXN_COMMIT`` is durable, and a collection never truncates its WAL past a
``TXN_APPLY`` whose ``TXN_DONE`` is not durable (``WritePath.txn_pins``), so after a crash at any point
a transaction is either absent (crash before its ``TXN_COMMIT`` was durable: it was not acknowledged)
or whole in every collection. Sequence numbers only grow, across restarts too (at least the clock in ns).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drift_engine import crashpoints
from drift_engine.engine.txn_done import CommittedTxn, TxnFinisher
from drift_engine.engine.validate import as_ids, as_payloads, as_vectors
from drift_engine.engine.writes import refuse_existing
from drift_engine.errors import (
    CollectionNotFoundError,
    ConflictError,
    CorruptionError,
    EngineClosedError,
    InvalidArgumentError,
    TransactionNotFoundError,
    WritesStoppedError,
)
from drift_engine.wal import records
from drift_engine.wal.log import DURABILITY_MODES, WriteAheadLog

log = logging.getLogger(__name__)

TXN_DIR = "txnlog"
DEFAULT_TIMEOUT = 60.0  # seconds a staged / prepared transaction may sit idle before it is aborted
OPS = ("insert", "upsert", "delete", "expect")


@dataclass
class _Part:
    """One collection's share of a transaction."""

    rows: dict[int, tuple[np.ndarray, bytes | None, bool]] = field(default_factory=dict)  # id -> (vec, pay, insert)
    deletes: set[int] = field(default_factory=set)
    expect: dict[int, int] = field(default_factory=dict)  # id -> read_lsn
    col: Any = None  # the Collection staged into: a dropped and re-created namesake is another one

    def arrays(self, dim: int) -> tuple[np.ndarray, np.ndarray, list[bytes | None], np.ndarray, np.ndarray]:
        up = np.fromiter(self.rows, dtype=np.int64, count=len(self.rows))
        vecs = np.stack([r[0] for r in self.rows.values()]) if self.rows else np.zeros((0, dim), np.float32)
        pays = [r[1] for r in self.rows.values()]
        inserts = np.fromiter((r[2] for r in self.rows.values()), dtype=bool, count=len(self.rows))
        dels = np.fromiter(sorted(self.deletes), dtype=np.int64, count=len(self.deletes))
        return up, vecs, pays, inserts, dels


@dataclass
class _Txn:
    txn_id: str
    parts: dict[str, _Part] = field(default_factory=dict)
    touched: float = field(default_factory=time.monotonic)
    prepared: bool = False
    busy: bool = False  # a prepare / commit is running on it
    reserved: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class _Logged:
    """A transaction whose ``TXN_COMMIT`` record is appended: its sequence number, the record's lsn and the
    per-collection arrays to apply: (upsert ids, vectors, payloads, delete ids, the upserts' encoded body,
    reused for the ``TXN_APPLY`` record)."""

    seq: int
    lsn: int
    arrays: dict[str, tuple]
    written: int
    deleted: int


def check_txn_id(txn_id: Any) -> str:
    if not isinstance(txn_id, str) or not 0 < len(txn_id) <= 128 or not txn_id.isprintable():
        raise InvalidArgumentError(f"txn_id must be a printable string of 1..128 characters, got {txn_id!r}")
    return txn_id


class TxnManager:
    """The engine's transactions (see the module docstring). ``collection(name)`` gives an open
    ``Collection`` or raises ``CollectionNotFoundError``."""

    def __init__(
        self,
        path: str,
        collection: Callable[[str], Any],
        names: Callable[[], list[str]],
        *,
        durability: str = "sync",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._collection = collection
        self._names = names
        self._durability = durability
        self.timeout = timeout
        self._lock = threading.Lock()  # the table of transactions
        self._commit_lock = threading.Lock()  # validate + append the commit record (sequence order = log order)
        self._txns: dict[str, _Txn] = {}
        self._closed = False
        self.wal = WriteAheadLog(
            os.path.join(path, TXN_DIR),
            durability=durability,
            max_file_bytes=8 << 20,
            crash_hook=crashpoints.hit if crashpoints.ENABLED else None,
        )
        self._seq = 0
        self._finisher = TxnFinisher(self.wal, crashpoints.hit)
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="drift-txn-reaper", daemon=True)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> int:
        """Finish every committed transaction the log holds (module docstring); returns how many."""
        committed: dict[int, list[tuple[str, bytes, bytes]]] = {}
        done: set[int] = set()
        for rec in self.wal.records(0):
            try:
                if rec.type == records.TXN_COMMIT:
                    seq, groups = records.decode_txn_commit(rec.body)
                    committed[seq] = groups
                elif rec.type == records.TXN_DONE:
                    done.add(records.decode_txn_done(rec.body))
                else:
                    raise CorruptionError(f"record type {rec.type} does not belong in the transaction log")
            except CorruptionError as exc:
                raise CorruptionError(
                    f"{rec.path}: transaction log record at offset {rec.offset} (lsn {rec.lsn}): {exc.message}; "
                    "refusing to open"
                ) from exc
        seen = set(committed)
        for name in self._names():
            seen |= self._collection(name)._writes.txn_seqs
        self._seq = max([0, *seen])
        finished = 0
        for seq in sorted(set(committed) - done):
            for name, up_body, del_body in committed[seq]:
                try:
                    col = self._collection(name)
                except Exception:
                    log.warning("transaction %d: collection %r no longer exists; its part is skipped", seq, name)
                    continue
                writes = col._writes
                if seq in writes.txn_seqs:
                    continue
                up, vecs, pays, _ = records.decode_upsert(up_body) if up_body else _empty_upsert(col.dim)
                dels = records.decode_delete(del_body) if del_body else np.empty(0, dtype=np.int64)
                with writes.lock:
                    lsn = writes.apply_txn_locked(seq, up, vecs, pays, dels)
                writes.wal.sync(lsn, "sync")
            self.wal.sync(self.wal.append(records.TXN_DONE, records.encode_txn_done(seq)), "sync")
            finished += 1
            log.warning("transaction %d was committed but not wholly applied before a crash; finished it", seq)
        for name in self._names():  # every TXN_DONE is durable now: no retained TXN_APPLY is needed any more
            writes = self._collection(name)._writes
            with writes.lock:
                writes.txn_pins.clear()
        last = self.wal.stats()["last_lsn"]
        if last:
            self.wal.truncate_upto(last)
        self._reaper.start()
        return finished

    # ------------------------------------------------------------------ staging
    def stage(
        self,
        txn_id: str,
        collection: str,
        op: str,
        ids: Any,
        vectors: Any = None,
        payloads: Any = None,
        read_lsns: Any = None,
    ) -> int:
        """Add one op (``insert`` / ``upsert`` / ``delete`` / ``expect``) to ``txn_id`` (created on first
        use); returns the number of rows it added."""
        check_txn_id(txn_id)
        if op not in OPS:
            raise InvalidArgumentError(f"transaction op must be one of {', '.join(OPS)}, got {op!r}")
        col = self._collection(collection)
        id_arr = as_ids(ids)
        if op in ("insert", "upsert"):
            vec = as_vectors(vectors, col.dim, col.metric, n_expected=id_arr.size)
            pay = as_payloads(payloads, id_arr.size)
        elif op == "expect":
            bounds = np.asarray([] if read_lsns is None else read_lsns, dtype=np.int64).reshape(-1)
            if bounds.size != id_arr.size or (bounds < 0).any():
                raise InvalidArgumentError(f"expect: {id_arr.size} ids need as many read_lsns >= 0, got {bounds.size}")
        with self._lock:
            txn = self._txns.get(txn_id)
            if txn is None:
                if self._closed:
                    raise EngineClosedError("the engine is closing; no new transactions")
                txn = self._txns[txn_id] = _Txn(txn_id)
            if txn.busy:
                raise InvalidArgumentError(f"transaction {txn_id!r} is being prepared or committed")
            txn.touched = time.monotonic()
            if op != "expect":
                col._writes.last_write = txn.touched  # a staged write is write activity (no auto-train yet)
            part = txn.parts.setdefault(collection, _Part(col=col))
            if part.col is not col:
                raise _dropped(collection)
            ident_list = id_arr.tolist()
            if op == "expect":
                for ident, bound in zip(ident_list, bounds.tolist(), strict=True):
                    part.expect.setdefault(ident, bound)  # the first read counts
                return len(ident_list)
            twice = [i for i in ident_list if i in part.rows or i in part.deletes]
            if twice:
                raise InvalidArgumentError(
                    f"transaction {txn_id!r} writes id(s) {twice[:10]} of {collection!r} twice",
                    hint="send each id's net effect once",
                )
            if op == "delete":
                part.deletes.update(ident_list)
            else:
                for j, ident in enumerate(ident_list):
                    part.rows[ident] = (vec[j], pay[j], op == "insert")
            return len(ident_list)

    # ------------------------------------------------------------------ validation under the locks
    @contextlib.contextmanager
    def _locked(self, txn: _Txn) -> Iterator[dict[str, Any]]:
        cols = {name: self._collection(name) for name in sorted(txn.parts)}
        for col in cols.values():
            col._writes.wait_for_room()
        held: list[Any] = []
        try:
            for name, col in cols.items():
                col._writes.lock.acquire()
                held.append(col._writes.lock)
                col._check_open()
                if txn.parts[name].col is not col:
                    raise _dropped(name)
            yield cols
        finally:
            for lock in reversed(held):
                lock.release()

    def _validate_locked(self, txn: _Txn, cols: dict[str, Any]) -> None:
        conflicts: list[str] = []
        for name, col in cols.items():
            part, writes = txn.parts[name], col._writes
            written = list(part.rows) + sorted(part.deletes)
            held = [i for i in written if writes.reserved.get(i, txn.txn_id) != txn.txn_id]
            if held:
                raise ConflictError(
                    f"{len(held)} id(s) of {name!r} are being written by another prepared transaction: {held[:10]}",
                    hint="retry the transaction",
                )
            inserts = [i for i, r in part.rows.items() if r[2]]
            if inserts:
                arr = np.asarray(inserts, dtype=np.int64)
                refuse_existing(arr, writes.existing(arr)[0])
            if part.expect:
                ids = np.fromiter(part.expect, dtype=np.int64, count=len(part.expect))
                bounds = np.fromiter(part.expect.values(), dtype=np.int64, count=len(part.expect))
                live, version = writes.versions(ids)
                bad = ~live | (version > bounds)
                conflicts += [f"{name}:{i}" for i in ids[bad].tolist()]
        if conflicts:
            shown = ", ".join(conflicts[:10]) + (" ..." if len(conflicts) > 10 else "")
            raise ConflictError(
                f"{len(conflicts)} row(s) this transaction read were changed or deleted by another transaction "
                f"since: {shown}",
                hint="retry the transaction (it was not written)",
            )

    def _take(self, txn_id: str) -> _Txn:
        with self._lock:
            txn = self._txns.get(check_txn_id(txn_id))
            if txn is None:
                raise TransactionNotFoundError(
                    f"transaction {txn_id!r} is unknown (never staged, already finished, aborted, timed out, or "
                    "dropped by an engine restart)",
                    hint="nothing of it was written; run it again",
                )
            if txn.busy:
                raise InvalidArgumentError(f"transaction {txn_id!r} is already being prepared or committed")
            txn.busy = True
            txn.touched = time.monotonic()
            return txn

    def _release(self, txn: _Txn, *, drop: bool) -> None:
        with self._lock:
            txn.busy = False
            txn.touched = time.monotonic()
            if drop:
                self._txns.pop(txn.txn_id, None)

    def _unreserve(self, txn: _Txn) -> None:
        for name, ids in txn.reserved.items():
            try:
                writes = self._collection(name)._writes
            except Exception:
                continue  # dropped
            for ident in ids:
                if writes.reserved.get(ident) == txn.txn_id:
                    del writes.reserved[ident]
        txn.reserved.clear()

    # ------------------------------------------------------------------ prepare / commit / abort
    def prepare(self, txn_id: str) -> dict[str, int]:
        """Validate and reserve (module docstring); a ``ConflictError`` / ``DuplicateIdError`` aborts the
        transaction. Returns the row counts."""
        txn = self._take(txn_id)
        try:
            with self._locked(txn) as cols:
                self._validate_locked(txn, cols)
                for name, part in txn.parts.items():
                    reserved = cols[name]._writes.reserved
                    ids = [*part.rows, *part.deletes]
                    for ident in ids:
                        reserved[ident] = txn.txn_id
                    txn.reserved[name] = ids
            txn.prepared = True
        except BaseException:
            self._unreserve(txn)
            self._release(txn, drop=True)
            raise
        self._release(txn, drop=False)
        return _counts(txn)

    def commit(self, txn_id: str, durability: str | None = None) -> dict[str, int]:
        """Commit ``txn_id`` atomically (module docstring); returns ``{"written", "deleted", "seq"}``.
        ``durability`` (default: the engine's) is how the commit record is synced before it returns."""
        if durability is not None and durability not in DURABILITY_MODES:
            raise InvalidArgumentError(f"durability must be one of {', '.join(DURABILITY_MODES)}, got {durability!r}")
        txn = self._take(txn_id)
        try:
            # The touched collections' write locks are held from validation to the in-memory apply, so no
            # other write or validation of these collections sees the transaction half done; the commit
            # lock (taken after them: lock order write locks -> commit lock) only orders the commit records.
            with self._locked(txn) as cols:
                try:
                    self._validate_locked(txn, cols)
                    with self._commit_lock:
                        logged = self._log_commit_locked(txn, cols)
                    if logged is None:
                        return {"written": 0, "deleted": 0, "seq": 0}
                    return self._apply_committed(txn, cols, logged, durability or self._durability)
                finally:
                    self._unreserve(txn)  # before the write locks go: a waiting writer never sees them
        finally:
            self._unreserve(txn)
            self._release(txn, drop=True)

    def _log_commit_locked(self, txn: _Txn, cols: dict[str, Any]) -> _Logged | None:
        """Under the commit lock and every touched collection's write lock: assign the sequence number and
        append (not sync) the ``TXN_COMMIT`` record. None when the transaction writes nothing."""
        arrays: dict[str, tuple] = {}
        groups: list[tuple[str, bytes, bytes]] = []
        deleted = 0
        for name, col in cols.items():
            part = txn.parts[name]
            if not part.rows and not part.deletes:
                continue
            up, vecs, pays, _inserts, dels = part.arrays(col.dim)
            present = dels[col._writes.existing(dels)[0]] if dels.size else dels
            deleted += int(present.size)
            up_body = records.encode_upsert(up, vecs, pays, True) if up.size else b""
            arrays[name] = (up, vecs, pays, present, up_body)
            groups.append((name, up_body, records.encode_delete(present) if present.size else b""))
        if not groups:
            return None
        self._seq = max(self._seq + 1, time.time_ns())
        crashpoints.hit("txn.before_commit_record")
        self._finisher.begin()
        lsn = None
        try:
            lsn = self.wal.append(records.TXN_COMMIT, records.encode_txn_commit(self._seq, groups))
        finally:
            self._finisher.logged(lsn, frozenset(arrays))
        written = sum(len(txn.parts[n].rows) for n in arrays)
        return _Logged(self._seq, lsn, arrays, written, deleted)

    def _apply_committed(self, txn: _Txn, cols: dict[str, Any], logged: _Logged, mode: str) -> dict[str, int]:
        """Still under the touched collections' write locks, not the commit lock: make the commit record
        durable (the commit point; commits of other collections share the fsync), apply each collection's
        part in memory, hand the rest to the finisher. A transaction over several collections always syncs
        its commit record, whatever ``mode``: a collection's WAL may reach the disk first (its own batch
        thread, a flush), and a ``TXN_APPLY`` that survives without its ``TXN_COMMIT`` would be a torn
        transaction after a power loss."""
        try:
            self.wal.sync(logged.lsn, "sync" if len(logged.arrays) > 1 else mode)  # the commit point
        except BaseException:
            self._finisher.abandon(logged.lsn)
            raise
        crashpoints.hit("txn.after_commit_record")
        applied: list[tuple[Any, int]] = []
        try:
            for name, (up, vecs, pays, dels, up_body) in logged.arrays.items():
                col = cols[name]
                applied.append((col._writes, col.apply_txn_part_locked(logged.seq, up, vecs, pays, dels, up_body)))
                crashpoints.hit("txn.after_apply")
        except BaseException as exc:
            raise WritesStoppedError(
                f"transaction {txn.txn_id!r} is committed (sequence {logged.seq}) but applying it failed: {exc}; "
                "the next open of the engine finishes applying it",
                hint="reopen the engine",
            ) from exc
        self._finisher.add(CommittedTxn(logged.seq, logged.lsn, applied))
        return {"written": logged.written, "deleted": logged.deleted, "seq": logged.seq}

    def finish_pending(self, timeout: float | None = None) -> bool:
        """Wait until every acknowledged transaction so far has its ``TXN_DONE`` (or was left for recovery)."""
        return self._finisher.drain(timeout)

    def unfinished_touching(self, collection: str) -> bool:
        """Whether a committed transaction that wrote to ``collection`` still lacks its ``TXN_DONE``."""
        return self._finisher.unfinished_touching(collection)

    def abort(self, txn_id: str) -> bool:
        """Drop ``txn_id`` and its reservations; False when it was not known (already gone)."""
        with self._lock:
            txn = self._txns.get(check_txn_id(txn_id))
            if txn is None:
                return False
            if txn.busy:
                raise InvalidArgumentError(f"transaction {txn_id!r} is being prepared or committed; cannot abort it")
            del self._txns[txn_id]
        self._unreserve(txn)
        return True

    def pending(self) -> list[dict[str, Any]]:
        """The staged and prepared transactions: id, prepared, idle seconds, rows per collection."""
        now = time.monotonic()
        with self._lock:
            return [
                {"txn_id": t.txn_id, "prepared": t.prepared, "idle_s": now - t.touched, **_counts(t)}
                for t in self._txns.values()
            ]

    # ------------------------------------------------------------------ lifecycle
    def _reap_loop(self) -> None:
        while not self._stop.wait(min(1.0, max(0.05, self.timeout / 4))):
            now = time.monotonic()
            with self._lock:
                idle = [t for t in self._txns.values() if not t.busy and now - t.touched > self.timeout]
                for t in idle:
                    del self._txns[t.txn_id]
            for t in idle:
                self._unreserve(t)
                log.warning("transaction %r sat idle for over %.0f s and was aborted", t.txn_id, self.timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            txns = list(self._txns.values())
            self._txns.clear()
        for t in txns:
            self._unreserve(t)
        self._stop.set()
        if self._reaper.is_alive():
            self._reaper.join()
        self._finisher.close()
        self.wal.close()


def _dropped(name: str) -> CollectionNotFoundError:
    return CollectionNotFoundError(
        f"collection {name!r} was dropped after this transaction staged into it (a collection of that name "
        "now may be another one)",
        hint="nothing of the transaction was written; run it again",
    )


def _counts(txn: _Txn) -> dict[str, int]:
    return {
        "rows": sum(len(p.rows) for p in txn.parts.values()),
        "deletes": sum(len(p.deletes) for p in txn.parts.values()),
        "expects": sum(len(p.expect) for p in txn.parts.values()),
    }


def _empty_upsert(dim: int) -> tuple[np.ndarray, np.ndarray, list[bytes | None], bool]:
    return np.empty(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32), [], True
