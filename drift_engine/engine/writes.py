"""The write path: WAL -> active memtable, rotation into frozen memtables, replay at open.

Contract:

* ``WritePath.lock`` orders writes: under it a write is validated against the current state (insert
  of an existing id is refused), framed into one WAL record (a batch is one record: atomic), applied to
  the active memtable, and the live count and payload index are updated. The lock is released before
  waiting for durability, so concurrent writers share one fsync (group commit in ``wal.log``).
* A write is acknowledged (the call returns) only after its record is durable per the durability mode
  (``sync``: fdatasync'ed). Readers may see a write slightly before it is acknowledged; an fsync
  failure stops all later writes (``WritesStoppedError``) and never acknowledges.
* **A write that raises changed nothing.** Its in-memory effects (memtable, live count, payload index)
  happen only once its apply succeeded. When the apply fails after the record was logged, an ``ABORT``
  record naming its lsn is appended and fdatasynced *before* the error reaches the caller, so replay
  skips the logged record: the write is gone now and after any later crash or reopen. The one case
  that cannot be decided in-process is a WAL failure itself (the record or its ``ABORT`` cannot be made
  durable): that raises ``WritesStoppedError``, writes stop, and the write's outcome is whatever the next
  open replays. A crash while a write is in flight (no answer reached the caller) may keep or lose it.
* **Bulk writes** (``bulk_locked``) go WAL (fdatasynced) -> L1 directly (segment files, one LMDB
  commit, via the caller's ``apply``) -> live count and payload index -> publish. Failing anywhere
  before the LMDB commit aborts the record as above; the commit is the point of no return.
* **Replay** at open re-applies records after ``applied_lsn`` in two passes: the first collects the
  lsns named by ``ABORT`` records, the second applies every other ``UPSERT`` / ``DELETE``. A record of
  any other type, a body that does not decode, or an ``ABORT`` naming a later lsn is corruption:
  ``CorruptionError`` naming the WAL file and offset, and the collection does not open.
* The newest version of an id wins: the active memtable over frozen ones (newest first), memtables
  over L1. A memtable tombstone hides every older copy.
* **Engine transactions** (``engine.txn``): ``apply_txn_locked`` logs one ``TXN_APPLY`` record (the
  collection's part of a committed transaction: upserts and deletes together) and applies it like any
  write; replay applies ``TXN_APPLY`` records like ``UPSERT`` + ``DELETE`` and collects their sequence
  numbers (``txn_seqs``, from every retained record) so the engine's recovery knows which committed
  transactions a collection already holds. ``txn_pins`` are the lsns of ``TXN_APPLY`` records whose
  ``TXN_DONE`` is not durable yet: the WAL is never truncated past them (replay pins every retained
  ``TXN_APPLY``; the engine's recovery drops those pins once every ``TXN_DONE`` is durable). ``reserved``
  maps ids to the prepared transaction that holds them: any other write of a reserved id raises
  ``ConflictError``. ``apply_txn_bulk_locked`` logs a large upsert-only part the same way but applies it to
  L1 directly, like a bulk write (``engine.bulk``).
* **Versions**: ``versions(ids)`` gives, per id, whether it is live and the lsn of its current version
  (a memtable entry's own lsn; an L1 row's location lsn, or the train's ``KEY_TRAIN_LSN`` for rows a
  train rewrote). ``visible_lsn`` is an lsn such that every write at or below it is visible to a read
  that starts afterwards (set after each write's apply): a row read after reading ``visible_lsn = B``
  and changed since has a version > B.
* When the active memtable holds ``memtable_max_vectors`` operations it is frozen (still searchable)
  and a fresh one takes writes; the Janitor flushes frozen memtables to L1. Writers wait (backpressure)
  while ``MAX_FROZEN`` frozen memtables are queued.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from drift_engine import crashpoints
from drift_engine.config import CollectionConfig, EngineSettings
from drift_engine.engine.payload_index import PayloadIndex
from drift_engine.errors import ConflictError, CorruptionError, DuplicateIdError, WritesStoppedError
from drift_engine.l1 import layout as L
from drift_engine.l1.snapshot import SnapshotManager
from drift_engine.memtable.hnsw import MemTable
from drift_engine.storage.kv import KV, encode_i64
from drift_engine.wal import records
from drift_engine.wal.frame import WalRecord
from drift_engine.wal.log import WriteAheadLog

log = logging.getLogger(__name__)

MAX_FROZEN = 4
DEAD_ROTATE_MIN = 1024  # dead graph nodes before a mostly dead active memtable is rotated
REPLAYED_TYPES = frozenset({records.UPSERT, records.DELETE, records.ABORT, records.TXN_APPLY})
KEY_TRAIN_LSN = b"train_lsn"  # meta: applied_lsn when the last train rewrote L1 (its rows have location lsn 0)


def refuse_reserved(ids: np.ndarray, reserved: dict[int, str]) -> None:
    """A write of an id a prepared transaction holds raises ``ConflictError`` (nothing written)."""
    if reserved:
        held = [i for i in ids.tolist() if i in reserved]
        if held:
            shown = ", ".join(map(str, held[:10])) + (" ..." if len(held) > 10 else "")
            raise ConflictError(
                f"{len(held)} id(s) are being written by a prepared transaction: {shown}",
                hint="retry once that transaction has committed or aborted",
            )


def refuse_existing(ids: np.ndarray, exists: np.ndarray) -> None:
    """An insert (no replace) that names existing ids raises, listing the first few."""
    if exists.any():
        dups = ids[exists].tolist()
        shown = ", ".join(map(str, dups[:10])) + (" ..." if len(dups) > 10 else "")
        raise DuplicateIdError(f"{len(dups)} id(s) already exist: {shown}", hint="use upsert to replace them")


class WritePath:
    def __init__(
        self,
        col_dir: str,
        get_config: Callable[[], CollectionConfig],
        settings: EngineSettings,
        kv: KV,
        snapshots: SnapshotManager,
        payload_index: PayloadIndex,
        on_frozen: Callable[[], None],
    ) -> None:
        self.lock = threading.Lock()
        self._get_config = get_config
        self._kv = kv
        self._snapshots = snapshots
        self._payloads = payload_index
        self._on_frozen = on_frozen
        self._frozen_cv = threading.Condition()
        self.wal = WriteAheadLog(
            os.path.join(col_dir, "wal"),
            durability=settings.durability,
            batch_ms=settings.batch_ms,
            crash_hook=crashpoints.hit if crashpoints.ENABLED else None,
        )
        self.count = snapshots.current.live_count
        self.last_write = time.monotonic()  # monotonic time of the latest write (for auto-train's idle test)
        self.has_payloads = kv.count(L.DB_PAYLOAD) > 0
        self.visible_lsn = 0
        self.reserved: dict[int, str] = {}
        self.txn_seqs: set[int] = set()
        self.txn_pins: set[int] = set()

    # ------------------------------------------------------------------ memtables
    def new_memtable(self) -> MemTable:
        config = self._get_config()
        return MemTable(config.dim, config.metric, ef_construction=config.params.ef_construction)

    def install_first_memtable(self) -> None:
        active = self.new_memtable()
        self._snapshots.update(lambda cur: dataclasses.replace(cur, version=cur.version + 1, memtables=(active,)))

    def frozen(self) -> list[MemTable]:
        """Frozen memtables, oldest first (the flush order)."""
        return list(reversed(self._snapshots.current.memtables[1:]))

    def rotate_locked(self) -> MemTable | None:
        """Freeze the active memtable (if it holds anything) and install a fresh one. Caller holds ``lock``."""
        active = self._snapshots.current.memtables[0]
        if active.n_ops == 0:
            return None
        active.freeze()
        fresh = self.new_memtable()
        self._snapshots.update(
            lambda cur: dataclasses.replace(cur, version=cur.version + 1, memtables=(fresh, *cur.memtables))
        )
        self._on_frozen()
        return active

    def drop_flushed(self, flushed: MemTable, changes: dict) -> None:
        """Publish L1 ``changes`` and remove the flushed memtable, atomically (one snapshot)."""
        self._snapshots.update(
            lambda cur: dataclasses.replace(
                cur,
                version=cur.version + 1,
                memtables=tuple(m for m in cur.memtables if m is not flushed),
                **changes,
            )
        )
        with self._frozen_cv:
            self._frozen_cv.notify_all()

    def wait_for_room(self, timeout: float | None = None) -> None:
        with self._frozen_cv:
            self._frozen_cv.wait_for(lambda: len(self._snapshots.current.memtables) - 1 < MAX_FROZEN, timeout)

    # ------------------------------------------------------------------ state lookups
    def existing(self, ids: np.ndarray) -> tuple[np.ndarray, list[bytes | None] | None]:
        """Which ids are live now, and (when payloads are in use) their current payloads."""
        n = ids.size
        exists = np.zeros(n, dtype=bool)
        resolved = np.zeros(n, dtype=bool)
        payloads: list[bytes | None] | None = [None] * n if self.has_payloads else None
        id_list = ids.tolist()
        for mt in self._snapshots.current.memtables:
            if len(mt) == 0 and not mt.tombstones():
                continue
            for j in np.flatnonzero(mt.hides(ids) & ~resolved).tolist():
                resolved[j] = True
                if mt.lookup(id_list[j]) == "live":
                    exists[j] = True
                    if payloads is not None:
                        payloads[j] = mt.payload(id_list[j])
        todo = np.flatnonzero(~resolved).tolist()
        if todo:
            keys = [encode_i64(id_list[j]) for j in todo]
            locs = self._kv.get_many(L.DB_LOC, keys)
            found = [(j, key) for j, key, loc in zip(todo, keys, locs, strict=True) if loc is not None]
            for j, _ in found:
                exists[j] = True
            if payloads is not None and found:
                for (j, _), raw in zip(found, self._kv.get_many(L.DB_PAYLOAD, [k for _, k in found]), strict=True):
                    payloads[j] = raw
        return exists, payloads

    # ------------------------------------------------------------------ writes
    def upsert_locked(
        self, ids: np.ndarray, vectors: np.ndarray, payloads: list[bytes | None], *, replace: bool
    ) -> int:
        refuse_reserved(ids, self.reserved)
        exists, old_payloads = self.existing(ids)
        if not replace:
            refuse_existing(ids, exists)
        lsn = self.wal.append(records.UPSERT, records.encode_upsert(ids, vectors, payloads, replace))
        try:
            self._apply_upsert(ids, vectors, payloads, lsn, exists, old_payloads)
        except BaseException as exc:
            self._abort_locked(lsn, exc)
            raise
        self.visible_lsn = lsn
        self._maybe_rotate_locked()
        return lsn

    def bulk_locked(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        payloads: list[bytes | None],
        *,
        replace: bool,
        apply: Callable[[int], Callable[[], None]],
    ) -> int:
        """Log a batch (fdatasynced), then ``apply(lsn)`` it to L1 directly; returns its lsn.

        ``apply`` writes segments and commits LMDB and returns the function that publishes the new
        snapshot; it must raise only if it did not commit. Memtables must hold no version of these ids.
        """
        refuse_reserved(ids, self.reserved)
        exists, old_payloads = self.existing(ids)
        if not replace:
            refuse_existing(ids, exists)
        lsn = self.wal.append(records.UPSERT, records.encode_upsert(ids, vectors, payloads, replace))
        self._apply_l1_locked(lsn, ids, payloads, exists, old_payloads, apply)
        return lsn

    def _apply_l1_locked(
        self,
        lsn: int,
        ids: np.ndarray,
        payloads: list[bytes | None],
        exists: np.ndarray,
        old_payloads: list[bytes | None] | None,
        apply: Callable[[int], Callable[[], None]],
    ) -> None:
        """The logged record ``lsn`` fdatasynced (LMDB must never claim an lsn the WAL could lose), then
        ``apply(lsn)`` to L1 and the write counted and published; a failure aborts the record and raises."""
        try:
            self.wal.sync(lsn, "sync")
            publish = apply(lsn)
        except BaseException as exc:
            self._abort_locked(lsn, exc)
            raise
        # committed: from here on the write is acknowledged state
        self.last_write = time.monotonic()
        self.count += int(ids.size - np.count_nonzero(exists))
        self._update_payload_index(ids, payloads, old_payloads)
        publish()
        self.visible_lsn = lsn

    def _abort_locked(self, lsn: int, exc: BaseException) -> None:
        """Make "record ``lsn`` never happened" durable before its write's error reaches the caller."""
        try:
            self.wal.sync(self.wal.append(records.ABORT, records.encode_abort(lsn)), "sync")
        except BaseException as abort_exc:
            raise WritesStoppedError(
                f"a write failed ({exc!r}) after it was logged at lsn {lsn}, and its ABORT record could not "
                f"be made durable ({abort_exc}); writes stopped: whether that write survives is decided by "
                "the next open's replay",
                hint="reopen the engine",
            ) from exc
        log.warning("write at lsn %d failed after it was logged (%r); aborted it in the WAL", lsn, exc)

    def _update_payload_index(
        self, ids: np.ndarray, payloads: list[bytes | None], old_payloads: list[bytes | None] | None
    ) -> None:
        if old_payloads is not None:
            for ident, old in zip(ids.tolist(), old_payloads, strict=True):
                if old is not None:
                    self._payloads.remove(ident, old)
        if any(p is not None for p in payloads):
            self.has_payloads = True
            self._payloads.add_many(ids.tolist(), payloads)

    def _apply_upsert(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        payloads: list[bytes | None],
        lsn: int,
        exists: np.ndarray,
        old_payloads: list[bytes | None] | None,
    ) -> None:
        self._snapshots.current.memtables[0].add(ids, vectors, payloads, lsn)  # all or nothing
        self.last_write = time.monotonic()
        self.count += int(ids.size - np.count_nonzero(exists))
        self._update_payload_index(ids, payloads, old_payloads)

    def delete_locked(self, ids: np.ndarray) -> tuple[int, int]:
        """(lsn or 0 when nothing existed, number deleted)."""
        refuse_reserved(ids, self.reserved)
        exists, old_payloads = self.existing(ids)
        present = ids[exists]
        if present.size == 0:
            return 0, 0
        lsn = self.wal.append(records.DELETE, records.encode_delete(present))
        try:
            self._apply_delete(
                present,
                lsn,
                None if old_payloads is None else [p for p, e in zip(old_payloads, exists, strict=True) if e],
            )
        except BaseException as exc:
            self._abort_locked(lsn, exc)
            raise
        self.visible_lsn = lsn
        self._maybe_rotate_locked()
        return lsn, int(present.size)

    # ------------------------------------------------------------------ engine transactions
    def versions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(live per id, lsn of its current version; 0 when not live). Caller holds ``lock``."""
        n = ids.size
        live = np.zeros(n, dtype=bool)
        version = np.zeros(n, dtype=np.int64)
        resolved = np.zeros(n, dtype=bool)
        id_list = ids.tolist()
        for mt in self._snapshots.current.memtables:
            for j in np.flatnonzero(mt.hides(ids) & ~resolved).tolist():
                resolved[j] = True
                lsn = mt.lsn_of(id_list[j])
                if lsn is not None:
                    live[j], version[j] = True, lsn
        todo = np.flatnonzero(~resolved).tolist()
        if todo:
            raw_train = self._kv.get(L.DB_META, KEY_TRAIN_LSN)
            train_lsn = int(raw_train) if raw_train is not None else self._snapshots.current.l1_lsn
            locs = self._kv.get_many(L.DB_LOC, [encode_i64(id_list[j]) for j in todo])
            for j, raw in zip(todo, locs, strict=True):
                if raw is not None:
                    lsn = L.Location.unpack(raw).lsn
                    live[j], version[j] = True, lsn if lsn else max(1, train_lsn)
        return live, version

    def apply_txn_locked(
        self,
        seq: int,
        up_ids: np.ndarray,
        vectors: np.ndarray,
        payloads: list[bytes | None],
        del_ids: np.ndarray,
        up_body: bytes | None = None,
    ) -> int:
        """Log and apply this collection's part of committed transaction ``seq`` (one ``TXN_APPLY``
        record; the caller validated it and holds ``lock``); returns its lsn, pinned in ``txn_pins``.
        ``up_body``: the upserts as ``records.encode_upsert(up_ids, vectors, payloads, True)`` gives them,
        when the caller encoded them already (for the commit record)."""
        if up_body is None:
            up_body = records.encode_upsert(up_ids, vectors, payloads, True) if up_ids.size else b""
        del_body = records.encode_delete(del_ids) if del_ids.size else b""
        lsn = self.wal.append(records.TXN_APPLY, records.encode_txn_apply(seq, up_body, del_body))
        self.txn_pins.add(lsn)
        try:
            self._apply_txn(up_ids, vectors, payloads, del_ids, lsn)
        except BaseException as exc:
            self.txn_pins.discard(lsn)
            self._abort_locked(lsn, exc)
            raise
        self.txn_seqs.add(seq)
        self.visible_lsn = lsn
        self._maybe_rotate_locked()
        return lsn

    def apply_txn_bulk_locked(
        self,
        seq: int,
        up_ids: np.ndarray,
        vectors: np.ndarray,
        payloads: list[bytes | None],
        *,
        apply: Callable[[int], Callable[[], None]],
        up_body: bytes | None = None,
    ) -> int:
        """Log this collection's (upsert-only) part of committed transaction ``seq`` as one ``TXN_APPLY``
        record, fdatasync it (LMDB must never claim an lsn the WAL could lose), then ``apply(lsn)`` it to L1
        directly, as ``bulk_locked`` does; returns its lsn, pinned in ``txn_pins``. Memtables must hold no
        version of these ids. If the apply fails, the record is aborted and the error raised. ``up_body``: as for
        ``apply_txn_locked``."""
        exists, old_payloads = self.existing(up_ids)
        body = records.encode_upsert(up_ids, vectors, payloads, True) if up_body is None else up_body
        lsn = self.wal.append(records.TXN_APPLY, records.encode_txn_apply(seq, body, b""))
        self.txn_pins.add(lsn)
        try:
            self._apply_l1_locked(lsn, up_ids, payloads, exists, old_payloads, apply)
        except BaseException:
            self.txn_pins.discard(lsn)
            raise
        self.txn_seqs.add(seq)
        return lsn

    def _apply_txn(
        self, up_ids: np.ndarray, vectors: np.ndarray, payloads: list[bytes | None], del_ids: np.ndarray, lsn: int
    ) -> None:
        if up_ids.size:
            exists, old = self.existing(up_ids)
            self._apply_upsert(up_ids, vectors, payloads, lsn, exists, old)
        if del_ids.size:
            exists, old = self.existing(del_ids)
            present = del_ids[exists]
            if present.size:
                kept = None if old is None else [p for p, e in zip(old, exists, strict=True) if e]
                self._apply_delete(present, lsn, kept)

    def _apply_delete(self, present: np.ndarray, lsn: int, old_payloads: list[bytes | None] | None) -> None:
        self._snapshots.current.memtables[0].delete(present, lsn)
        self.count -= int(present.size)
        if old_payloads is not None:
            for ident, old in zip(present.tolist(), old_payloads, strict=True):
                if old is not None:
                    self._payloads.remove(ident, old)

    def _maybe_rotate_locked(self) -> None:
        """Rotate a full memtable, or one whose graph is mostly dead (at least ``DEAD_ROTATE_MIN`` replaced
        or deleted vectors and no more live ones: hnswlib inserts into such a graph several times slower,
        e.g. re-inserting ids deleted earlier). Housekeeping after an applied write: a failure is logged,
        never raised (the write it follows happened); the next write tries again."""
        mt = self._snapshots.current.memtables[0]
        dead = mt.dead_labels
        mostly_dead = dead >= DEAD_ROTATE_MIN and dead >= len(mt)
        if mostly_dead or mt.n_ops >= self._get_config().params.memtable_max_vectors:
            try:
                self.rotate_locked()
            except Exception:
                log.exception("rotating the full memtable failed; the next write retries")

    # ------------------------------------------------------------------ recovery
    def replay(self, applied_lsn: int) -> int:
        """Re-apply WAL records after ``applied_lsn`` (what L1 already holds) into memtables; returns how
        many writes were re-applied (see the module docstring for aborts and refused records)."""
        aborted: set[int] = set()
        for rec in self.wal.records(applied_lsn):
            if rec.type not in REPLAYED_TYPES:
                name = records.RECORD_TYPES.get(rec.type, "unknown")
                raise _corrupt(rec, f"record type {rec.type} ({name}) does not belong in a collection's WAL")
            if rec.type == records.ABORT:
                target = _decode(rec, records.decode_abort)
                if target >= rec.lsn:
                    raise _corrupt(rec, f"ABORT of lsn {target}, which is not an earlier record")
                aborted.add(target)
        replayed = 0
        with self.lock:
            for rec in self.wal.records(applied_lsn):
                if rec.type == records.ABORT or rec.lsn in aborted:
                    continue
                if rec.type == records.TXN_APPLY:
                    seq, up, dele = _decode(rec, records.decode_txn_apply)
                    up_ids, vectors, payloads, _replace = _decode_part(rec, up, records.decode_upsert)
                    del_ids = _decode_part(rec, dele, records.decode_delete)
                    self._apply_txn(up_ids, vectors, payloads, del_ids, rec.lsn)
                    self.txn_seqs.add(seq)
                    self.txn_pins.add(rec.lsn)  # until the engine's recovery has made every TXN_DONE durable
                elif rec.type == records.UPSERT:
                    ids, vectors, payloads, _replace = _decode(rec, records.decode_upsert)
                    exists, old = self.existing(ids)
                    self._apply_upsert(ids, vectors, payloads, rec.lsn, exists, old)
                else:
                    ids = _decode(rec, records.decode_delete)
                    exists, old = self.existing(ids)
                    present = ids[exists]
                    if present.size:
                        kept = None if old is None else [p for p, e in zip(old, exists, strict=True) if e]
                        self._apply_delete(present, rec.lsn, kept)
                self._maybe_rotate_locked()
                replayed += 1
            old_seqs: dict[int, int] = {}  # transactions already in L1 whose records are still retained
            for rec in self.wal.records(0):
                if rec.lsn > applied_lsn:
                    break
                if rec.type == records.TXN_APPLY:
                    old_seqs[rec.lsn] = _decode(rec, records.decode_txn_apply)[0]
                elif rec.type == records.ABORT:
                    aborted.add(_decode(rec, records.decode_abort))
            self.txn_seqs.update(seq for lsn, seq in old_seqs.items() if lsn not in aborted)
            self.txn_pins.update(lsn for lsn in old_seqs if lsn not in aborted)
            self.visible_lsn = self.wal.stats()["last_lsn"]
        return replayed

    def close(self) -> None:
        self.wal.close()


def _corrupt(rec: WalRecord, reason: str) -> CorruptionError:
    return CorruptionError(f"{rec.path}: WAL record at offset {rec.offset} (lsn {rec.lsn}): {reason}; refusing to open")


def _decode_part(rec: WalRecord, body: bytes, decode: Callable[[bytes], Any]) -> Any:
    """A TXN_APPLY part: an empty part is an empty batch."""
    if not body:
        if decode is records.decode_upsert:
            return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32), [], True
        return np.empty(0, dtype=np.int64)
    return _decode(rec, lambda _b: decode(body))


def _decode(rec: WalRecord, decode: Callable[[bytes], object]) -> Any:
    try:
        return decode(rec.body)
    except CorruptionError as exc:
        raise _corrupt(rec, str(exc)) from exc
