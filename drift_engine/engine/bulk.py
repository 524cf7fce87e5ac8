"""Writes that skip the memtable graph: large batches go WAL -> L1 directly, in one LMDB commit.

Contract (a mixin of ``Collection``):

* ``_bulk_write(ids, vectors, payloads, replace=...)`` -- a plain ``upsert`` / ``insert`` of at least
  ``bulk_min`` rows: under the write lock, the active memtable is frozen and every frozen memtable is
  flushed (so no older version of an id can shadow the new L1 rows), the batch is logged as one ``UPSERT``
  record and fdatasynced, then committed to L1 (``l1.batch.commit_batch``). The write is searchable when
  the call returns. If the L1 apply fails, the logged record is aborted (``WritePath.bulk_locked``) and the
  error raised: nothing changed.
* ``apply_txn_part_locked(seq, up, vectors, payloads, deletes)`` -- a collection's part of a committed engine
  transaction (``engine.txn``; the caller holds the write lock). A part with at least ``bulk_min`` upserts
  and no deletes goes to L1 the same way (``WritePath.apply_txn_bulk_locked``: one ``TXN_APPLY`` record,
  fdatasynced before the LMDB commit, pinned until its ``TXN_DONE`` is durable); any other part goes to the
  active memtable (``WritePath.apply_txn_locked``). Either way it is one record and all or nothing. Building
  a graph for rows that the next flush moves to L1 anyway was most of an ``INSERT ... SELECT``'s engine time.
* After an L1 commit the WAL is truncated as far as memtables and transaction pins allow, and oversized
  buckets are queued for a split; a failure there is logged, never raised (the write happened).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from drift_engine.l1.batch import commit_batch

log = logging.getLogger(__name__)


class L1DirectWrites:
    """Mixin of ``Collection``: the writes that go to L1 without a memtable (see the module docstring)."""

    _writes: Any
    _l1: Any
    _l1_lock: Any
    _snapshots: Any
    _config: Any
    _maintenance: Any
    metric: str
    name: str

    def _bulk_write(self, ids: np.ndarray, vec: np.ndarray, pay: list[bytes | None], *, replace: bool) -> int:
        with self._writes.lock:
            self._check_open()  # type: ignore[attr-defined]
            with self._l1_lock:
                self._flush_all_locked()
                lsn = self._writes.bulk_locked(ids, vec, pay, replace=replace, apply=self._l1_apply(ids, vec, pay))
                self._after_commit(lsn)
        return int(ids.size)

    def apply_txn_part_locked(
        self,
        seq: int,
        up_ids: np.ndarray,
        vectors: np.ndarray,
        payloads: list[bytes | None],
        del_ids: np.ndarray,
        up_body: bytes | None = None,
    ) -> int:
        """Log and apply this collection's part of committed transaction ``seq``; returns its lsn.
        ``up_body``: the upserts already encoded (``records.encode_upsert(..., True)``), or None."""
        if del_ids.size or up_ids.size < self._config.params.bulk_min:
            return self._writes.apply_txn_locked(seq, up_ids, vectors, payloads, del_ids, up_body)
        with self._l1_lock:
            self._flush_all_locked()
            lsn = self._writes.apply_txn_bulk_locked(
                seq, up_ids, vectors, payloads, apply=self._l1_apply(up_ids, vectors, payloads), up_body=up_body
            )
            self._after_commit(lsn)
        return lsn

    def _flush_all_locked(self) -> None:
        """Under the write and L1 locks: every memtable's rows into L1 (an empty active one stays)."""
        self._writes.rotate_locked()
        for mt in self._writes.frozen():
            self._flush_one(mt)  # type: ignore[attr-defined]

    def _l1_apply(
        self, ids: np.ndarray, vec: np.ndarray, pay: list[bytes | None]
    ) -> Callable[[int], Callable[[], None]]:
        def apply(lsn: int) -> Callable[[], None]:
            params = self._config.params
            committed = commit_batch(
                self._l1,
                self._snapshots.current,
                ids,
                vec,
                pay,
                np.empty(0, dtype=np.int64),
                lsn,
                metric=self.metric,
                lam=params.lam,
                tau=params.tau,
                rows_per_segment=params.rows_per_segment,
                publish=False,  # once the write path has counted the write
            )
            return committed.publish

        return apply

    def _after_commit(self, lsn: int) -> None:
        try:
            self._writes.wal.truncate_upto(self._truncatable_lsn(lsn))  # type: ignore[attr-defined]
            self._maintenance.split_oversized()
        except Exception:
            log.exception("%s: housekeeping after the bulk write at lsn %d failed", self.name, lsn)
