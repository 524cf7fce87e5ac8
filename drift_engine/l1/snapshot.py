"""Immutable versions of a collection's L1 state, and epoch-based reclamation of retired files.

Contract:

* A ``Snapshot`` is never mutated after it is published: readers take the current one (a single
  attribute read, no lock) and use it for the whole query. Writers build a new one and publish it.
* Readers ``pin`` the snapshot they use. A segment file retired at version V (no longer referenced by
  V) is closed and deleted only when no reader is pinned on a version older than V, so no reader ever
  sees a deleted file.
* ``OpenSegment`` blocks are read through the shared byte-bounded cache; a block is loaded on first use.
  ``rows_of`` finds ids in a segment (an id occurs at most once per segment) via a sorted index that is
  built on first use and cached like a block.
* ``Snapshot.l1_lsn`` is the ``applied_lsn`` of the L1 state the snapshot holds: every L1 version in it
  was written at an lsn <= ``l1_lsn`` and every L1 commit after it (flush, bulk write) uses a larger one.
* **Payload history** (MVCC for L1 payloads, which live in LMDB only): before an L1 commit that adds,
  replaces or deletes ids (flush, bulk write), the committer records, under the commit's ``applied_lsn``,
  each id's state just before the commit: its payload, or ``NOT_IN_L1``. A reader on snapshot S that
  reads LMDB and *then* ``history_after(S.l1_lsn)`` learns, for every id a later commit touched, its
  state as of S from the oldest such entry (an entry of a commit that then failed records the same,
  still-current state, so it is harmless). Entries are dropped once the current snapshot and every
  pinned one have an ``l1_lsn`` at or past them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from drift_engine import crashpoints
from drift_engine.index.buckets import BucketHeader, routing_table
from drift_engine.index.routing import RoutingTable
from drift_engine.storage.cache import S3FIFOCache
from drift_engine.storage.segment import SegmentReader
from drift_engine.storage.sq8 import SQ8Params

log = logging.getLogger(__name__)

BLOCK_CODES = "codes"
BLOCK_IDS = "ids"
BLOCK_VECTORS = "vectors"


class OpenSegment:
    """An open ``.drift`` segment file; blocks are fetched through the shared cache."""

    def __init__(self, path: str, cache: S3FIFOCache, *, collection_key: str) -> None:
        self.reader = SegmentReader(path)
        self.segment_id = self.reader.segment_id
        self.path = path
        self.cache = cache
        self._key = collection_key
        self._index = {info.kind: i for i, info in enumerate(self.reader.blocks)}
        missing = {BLOCK_CODES, BLOCK_IDS, BLOCK_VECTORS} - set(self._index)
        if missing:
            from drift_engine.errors import CorruptionError

            raise CorruptionError(f"{path}: segment lacks block(s) {sorted(missing)}")
        self.n_rows = int(self.reader.blocks[self._index[BLOCK_IDS]].shape[0])
        self.file_size = self.reader.file_size

    def block(self, kind: str) -> np.ndarray:
        index = self._index[kind]

        def load() -> tuple[np.ndarray, int]:
            arr = self.reader.read_block(index)
            return arr, int(arr.nbytes)

        return self.cache.get_or_load((self._key, self.segment_id, kind), load)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each of ``ids`` in this segment, -1 where it is not here (dead rows included)."""
        index = self._index[BLOCK_IDS]

        def load() -> tuple[tuple[np.ndarray, np.ndarray], int]:
            block = self.reader.read_block(index)
            order = np.argsort(block, kind="stable")
            sorted_ids = block[order]
            return (sorted_ids, order), int(sorted_ids.nbytes + order.nbytes)

        sorted_ids, order = self.cache.get_or_load((self._key, self.segment_id, "id_order"), load)
        ids = np.asarray(ids, dtype=np.int64)
        if sorted_ids.size == 0 or ids.size == 0:
            return np.full(ids.size, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1).astype(np.int64)

    def codes(self) -> np.ndarray:
        return self.block(BLOCK_CODES)

    def ids(self) -> np.ndarray:
        return self.block(BLOCK_IDS)

    def vectors(self) -> np.ndarray:
        return self.block(BLOCK_VECTORS)

    def close(self) -> None:
        for kind in (*self._index, "id_order"):
            self.cache.invalidate((self._key, self.segment_id, kind))
        self.reader.close()


@dataclass(frozen=True)
class Snapshot:
    """One immutable version of a collection's L1 index."""

    version: int
    trained: bool
    sq8: SQ8Params | None
    buckets: Mapping[int, BucketHeader]
    routing: RoutingTable | None
    segments: Mapping[int, OpenSegment]
    dead: Mapping[int, np.ndarray]  # segment id -> uint8[n_rows], 1 = row no longer live
    live_count: int  # live rows in L1 (memtables not included)
    memtables: tuple = ()  # MemTable objects, newest (the active one) first; frozen ones follow
    l1_lsn: int = 0  # applied_lsn of this L1 state (see the module docstring)
    # per-version memo of filter masks; init=False so dataclasses.replace gives each version a fresh dict
    filter_masks: dict = field(default_factory=dict, compare=False, init=False)  # per-snapshot memo, filter -> masks
    # per-version memo of the compiled search's flattened arrays (engine.fastsearch.prepare), metric -> Prepared
    prepared: dict = field(default_factory=dict, compare=False, init=False)

    def skip_mask(self, segment_id: int) -> np.ndarray:
        return self.dead[segment_id]


def build_routing(trained: bool, buckets: Mapping[int, BucketHeader], lam: float, tau: float) -> RoutingTable | None:
    """A snapshot's routing table over ``buckets`` (None before the first train: L1 is one flat bucket)."""
    return routing_table(buckets.values(), lam=lam, tau=tau) if trained and buckets else None


NOT_IN_L1 = object()  # payload history: the id had no L1 version before that commit


@dataclass(frozen=True)
class PriorState:
    """Payload history entry: the state of ``ids`` (sorted) just before the L1 commit at ``l1_lsn``."""

    l1_lsn: int
    ids: np.ndarray
    priors: list  # per id: payload bytes, None (no payload) or NOT_IN_L1

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bool per id: recorded here, index into ``priors``)."""
        if self.ids.size == 0 or ids.size == 0:
            return np.zeros(ids.size, dtype=bool), np.zeros(ids.size, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
        return self.ids[pos] == ids, pos


class SnapshotManager:
    """Publishes snapshots and deletes retired segment files once no older reader remains."""

    def __init__(self, first: Snapshot) -> None:
        self._lock = threading.Lock()
        self._current = first
        self._pins: dict[int, int] = {}
        self._pin_l1: dict[int, int] = {}  # pinned version -> its l1_lsn
        self._retired: list[tuple[int, OpenSegment]] = []  # (version that stopped using it, segment)
        self._history: list[PriorState] = []  # commit order

    @property
    def current(self) -> Snapshot:
        return self._current

    @contextmanager
    def pin(self) -> Iterator[Snapshot]:
        snap = self.acquire()
        try:
            yield snap
        finally:
            self.release(snap)

    def acquire(self) -> Snapshot:
        """Pin the current snapshot and return it; every ``acquire`` needs exactly one ``release`` (``pin`` is
        the context-manager form; this pair saves the generator on the search path)."""
        with self._lock:
            snap = self._current
            version = snap.version
            self._pins[version] = self._pins.get(version, 0) + 1
            self._pin_l1[version] = snap.l1_lsn
        return snap

    def release(self, snap: Snapshot) -> None:
        """Drop one pin taken by ``acquire``."""
        with self._lock:
            version = snap.version
            left = self._pins[version] - 1
            if left:
                self._pins[version] = left
            else:
                del self._pins[version]
                del self._pin_l1[version]
                self._trim_history_locked()
            doomed = self._collect_locked() if self._retired else None
        if doomed:
            self._delete(doomed)

    def publish(self, snap: Snapshot, retired: list[OpenSegment] | None = None) -> None:
        self.update(lambda _current: snap, retired)

    def update(self, make: Callable[[Snapshot], Snapshot], retired: list[OpenSegment] | None = None) -> Snapshot:
        """Publish ``make(current)`` atomically (``make`` runs under the publish lock: keep it cheap)."""
        with self._lock:
            snap = make(self._current)
            self._current = snap
            for seg in retired or ():
                self._retired.append((snap.version, seg))
            self._trim_history_locked()
            doomed = self._collect_locked()
        self._delete(doomed)
        return snap

    # ------------------------------------------------------------------ payload history
    def record_priors(self, l1_lsn: int, ids: np.ndarray, priors: list) -> PriorState:
        """Before an L1 commit at ``l1_lsn``: the state of ``ids`` just before it (module docstring)."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        entry = PriorState(int(l1_lsn), ids[order], [priors[j] for j in order.tolist()])
        with self._lock:
            self._history.append(entry)
        return entry

    def forget_priors(self, entry: PriorState) -> None:
        """Drop an entry whose commit failed."""
        with self._lock:
            self._history = [e for e in self._history if e is not entry]

    def history_after(self, l1_lsn: int) -> list[PriorState]:
        """Entries of commits after ``l1_lsn``, oldest first. Read it after reading LMDB."""
        with self._lock:
            return [e for e in self._history if e.l1_lsn > l1_lsn]

    def _trim_history_locked(self) -> None:
        if not self._history:
            return
        floor = min([self._current.l1_lsn, *self._pin_l1.values()])
        if self._history[0].l1_lsn <= floor:
            self._history = [e for e in self._history if e.l1_lsn > floor]

    def _collect_locked(self) -> list[OpenSegment]:
        if not self._retired:
            return []
        oldest_pin = min(self._pins) if self._pins else None
        keep, doomed = [], []
        for version, seg in self._retired:
            if oldest_pin is None or oldest_pin >= version:
                doomed.append(seg)
            else:
                keep.append((version, seg))
        self._retired = keep
        return doomed

    @staticmethod
    def _delete(doomed: list[OpenSegment]) -> None:
        dirs = set()
        for seg in doomed:
            crashpoints.hit("retire.before_delete")
            seg.close()
            try:
                os.unlink(seg.path)
                dirs.add(os.path.dirname(seg.path))
            except FileNotFoundError:
                pass
            log.debug("deleted retired segment %s", seg.path)
        for d in dirs:
            from drift_engine.storage.pages import fsync_dir

            fsync_dir(d)

    def retired_count(self) -> int:
        with self._lock:
            return len(self._retired)

    def close(self) -> None:
        with self._lock:
            doomed = [seg for _, seg in self._retired]
            self._retired = []
        self._delete(doomed)
