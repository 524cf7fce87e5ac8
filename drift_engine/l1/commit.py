"""The L1 commit protocol of DESIGN §7: the one way a flush, bulk write, train or maintenance job changes L1.

Contract
--------
``L1Store`` is a collection's L1: its LMDB environment (the single commit point), its segment folder, the
snapshot manager, the segment-id counter and the L1 lock. Every L1 change — Janitor flush and bulk write
(``l1.batch``), train (``l1.train``), split / merge / compaction (``l1.rewrite``) — runs with ``lock`` held, so
no two of them interleave and a compare-and-set read made under the lock is atomic with the commit. Each one is
an ``L1Change``, used as a context manager::

    with store.change(FLUSH) as change:
        written, seg_of, row_of = change.write_segments(sq8, ids, vectors, labels, rows_per_segment=n)
        ...  # headers, masks, the LMDB records: in memory only
        change.commit(stage, fields)

1. ``write_segments`` writes new segment files under fresh names (tmp -> fsync -> rename -> fsync dir,
   ``l1.segments``); ``commit`` then hits the kind's ``<kind>.after_segments`` crash point and opens them;
2. one LMDB write transaction: the caller's records (``stage(batch)``), a ``segment`` record for every new file
   and ``next_segment``; then the ``<kind>.after_commit`` crash point. This is the commit point. If anything
   raises before it (in the ``with`` block or in ``commit``), the new files are removed, the ``on_abort`` undo
   actions run and nothing changed; a crash leaves at most unreferenced files, which the next open removes.
   After it only in-memory assembly remains, so "``commit`` returned" means committed and "raised" means not;
3. publish: one new snapshot (version + 1) with ``fields`` — the new segments added to ``fields["segments"]``,
   every dead mask in ``fields["dead"]`` frozen — by ``Committed.publish()``: at once, unless
   ``publish=False`` (a bulk write publishes after the write path counted the write). ``install`` replaces the
   default publication for a flush, which drops its memtable in the same snapshot (so a vector is never in
   neither and never twice); it is for changes that retire nothing;
4. retire: the ``retired`` segments go to epoch-based reclamation (``l1.snapshot``): closed and deleted once no
   reader is pinned on an older version. The WAL truncation of step 4 belongs to the write path
   (``engine.collection``): L1 knows nothing of the WAL beyond the ``applied_lsn`` a flush records.

Crash points, by kind (``FLUSH`` for flushes and bulk writes, ``TRAIN``, ``MAINTAIN`` for split / merge /
compaction): ``flush.after_segments``, ``flush.after_commit``, ``train.after_segments``, ``train.after_commit``,
``maintain.after_segments``, ``maintain.after_commit``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np

from drift_engine import crashpoints
from drift_engine.config import CollectionConfig
from drift_engine.l1 import layout as L
from drift_engine.l1.hydrate import load_snapshot, next_counter, remove_unreferenced_segments
from drift_engine.l1.segments import WrittenSegment, remove_files, write_bucketed_segments
from drift_engine.l1.snapshot import OpenSegment, SnapshotManager
from drift_engine.storage.cache import S3FIFOCache
from drift_engine.storage.kv import KV, WriteBatch, encode_i64
from drift_engine.storage.sq8 import SQ8Params

FLUSH = "flush"
TRAIN = "train"
MAINTAIN = "maintain"
KINDS = (FLUSH, TRAIN, MAINTAIN)

Stage = Callable[[WriteBatch], None]
Install = Callable[[dict[str, Any]], None]


class L1Store:
    """One collection's L1: LMDB, the segment folder, the snapshots, the segment-id counter and the L1 lock."""

    def __init__(self, kv: KV, seg_dir: str, cache: S3FIFOCache, snapshots: SnapshotManager, *, cache_key: str) -> None:
        self.kv = kv
        self.seg_dir = seg_dir
        self.cache = cache
        self.cache_key = cache_key
        self.snapshots = snapshots
        self.lock = threading.RLock()
        self.next_segment = next_counter(kv, L.KEY_NEXT_SEGMENT)

    @classmethod
    def open(cls, kv: KV, seg_dir: str, cache: S3FIFOCache, *, cache_key: str, config: CollectionConfig) -> L1Store:
        """L1 at open (``l1.hydrate``): LMDB is the truth; unreferenced segment files are removed, then the first
        snapshot is loaded from LMDB and the referenced segments."""
        remove_unreferenced_segments(kv, seg_dir)
        snapshots = SnapshotManager(load_snapshot(kv, seg_dir, cache, collection_key=cache_key, config=config))
        return cls(kv, seg_dir, cache, snapshots, cache_key=cache_key)

    def change(self, kind: str) -> L1Change:
        """A new L1 change of ``kind`` (``FLUSH``, ``TRAIN`` or ``MAINTAIN``); call with ``lock`` held."""
        return L1Change(self, kind)


class Committed:
    """An L1 change whose LMDB transaction committed (step 2); ``publish`` performs steps 3 and 4, once."""

    def __init__(
        self, snapshots: SnapshotManager, fields: dict[str, Any], retired: list[OpenSegment], install: Install | None
    ) -> None:
        self.fields = fields
        self.retired = retired
        self._snapshots = snapshots
        self._install = install
        self._published = False

    def publish(self) -> None:
        if self._published:
            raise RuntimeError("an L1 change is published once")
        self._published = True
        if self._install is not None:
            self._install(self.fields)
            return
        fields = self.fields
        self._snapshots.update(
            lambda cur: dataclasses.replace(cur, version=cur.version + 1, **fields), retired=self.retired
        )


class L1Change:
    """One change of L1 in the making (module docstring); use it as a context manager."""

    def __init__(self, store: L1Store, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown L1 change kind {kind!r}")
        self.kind = kind
        self._store = store
        self._written: list[WrittenSegment] = []
        self._undo: list[Callable[[], None]] = []
        self._state = "open"  # -> "committed" or "aborted"

    def __enter__(self) -> L1Change:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state == "open":
            self._abort()

    def write_segments(
        self, sq8: SQ8Params, ids: np.ndarray, vectors: np.ndarray, labels: np.ndarray, *, rows_per_segment: int
    ) -> tuple[list[WrittenSegment], np.ndarray, np.ndarray]:
        """Step 1: ``vectors`` into new segment files grouped by bucket ``labels`` (``write_bucketed_segments``);
        the files are this change's until it commits (removed if it does not)."""
        self._check_open()
        store = self._store
        written, seg_of, row_of = write_bucketed_segments(
            store.seg_dir, store.next_segment.take, sq8, ids, vectors, labels, rows_per_segment=rows_per_segment
        )
        self._written.extend(written)
        return written, seg_of, row_of

    def on_abort(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` if the change does not commit (e.g. drop an in-memory record made for it)."""
        self._undo.append(undo)

    def commit(
        self,
        stage: Stage,
        fields: dict[str, Any],
        *,
        retired: list[OpenSegment] | None = None,
        install: Install | None = None,
        publish: bool = True,
    ) -> Committed:
        """Steps 1 (crash point) to 4 of the module docstring; returns the committed change (already published
        unless ``publish=False``)."""
        self._check_open()
        retired = list(retired or ())
        if install is not None and retired:
            raise ValueError("a change that retires segments is published by the snapshot manager")
        store = self._store
        opened: dict[int, OpenSegment] = {}
        try:
            _after_segments(self.kind)
            for w in self._written:
                opened[w.segment_id] = OpenSegment(w.path, store.cache, collection_key=store.cache_key)
            with store.kv.write() as batch:
                stage(batch)
                for w in self._written:
                    info = {"file": os.path.basename(w.path), "rows": w.n_rows}
                    batch.put(L.DB_SEGMENT, encode_i64(w.segment_id), json.dumps(info).encode())
                batch.put(L.DB_META, L.KEY_NEXT_SEGMENT, L.int_bytes(store.next_segment.peek()))
        except BaseException:
            for seg in opened.values():
                seg.close()
            self._abort()
            raise
        self._state = "committed"
        _after_commit(self.kind)
        fields = dict(fields)
        if opened:
            fields["segments"] = {**fields["segments"], **opened}
        for mask in fields.get("dead", {}).values():
            mask.setflags(write=False)
        committed = Committed(store.snapshots, fields, retired, install)
        if publish:
            committed.publish()
        return committed

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"this L1 change is {self._state}")

    def _abort(self) -> None:
        self._state = "aborted"
        for undo in self._undo:
            undo()
        remove_files([w.path for w in self._written])


def _after_segments(kind: str) -> None:
    """Step 1's crash point (the names are literal: the crash matrix finds them in the source)."""
    if kind == FLUSH:
        crashpoints.hit("flush.after_segments")
    elif kind == TRAIN:
        crashpoints.hit("train.after_segments")
    else:
        crashpoints.hit("maintain.after_segments")


def _after_commit(kind: str) -> None:
    """Step 2's crash point: LMDB committed, the snapshot not yet published."""
    if kind == FLUSH:
        crashpoints.hit("flush.after_commit")
    elif kind == TRAIN:
        crashpoints.hit("train.after_commit")
    else:
        crashpoints.hit("maintain.after_commit")
