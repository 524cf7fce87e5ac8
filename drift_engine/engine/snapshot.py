"""Immutable versions of a collection's L1 state, and epoch-based reclamation of retired files.

Contract:

* A ``Snapshot`` is never mutated after it is published: readers take the current one (a single
  attribute read, no lock) and use it for the whole query. Writers build a new one and publish it.
* Readers ``pin`` the snapshot they use. A segment file retired at version V (no longer referenced by
  V) is closed and deleted only when no reader is pinned on a version older than V, so no reader ever
  sees a deleted file.
* ``OpenSegment`` blocks are read through the shared byte-bounded cache; a block is loaded on first use.
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
from drift_engine.index.buckets import BucketHeader
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

    def codes(self) -> np.ndarray:
        return self.block(BLOCK_CODES)

    def ids(self) -> np.ndarray:
        return self.block(BLOCK_IDS)

    def vectors(self) -> np.ndarray:
        return self.block(BLOCK_VECTORS)

    def close(self) -> None:
        for kind in self._index:
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
    # per-version memo of filter masks; init=False so dataclasses.replace gives each version a fresh dict
    filter_masks: dict = field(default_factory=dict, compare=False, init=False)  # per-snapshot memo, filter -> masks

    def skip_mask(self, segment_id: int) -> np.ndarray:
        return self.dead[segment_id]


class SnapshotManager:
    """Publishes snapshots and deletes retired segment files once no older reader remains."""

    def __init__(self, first: Snapshot) -> None:
        self._lock = threading.Lock()
        self._current = first
        self._pins: dict[int, int] = {}
        self._retired: list[tuple[int, OpenSegment]] = []  # (version that stopped using it, segment)

    @property
    def current(self) -> Snapshot:
        return self._current

    @contextmanager
    def pin(self) -> Iterator[Snapshot]:
        with self._lock:
            snap = self._current
            self._pins[snap.version] = self._pins.get(snap.version, 0) + 1
        try:
            yield snap
        finally:
            with self._lock:
                left = self._pins[snap.version] - 1
                if left:
                    self._pins[snap.version] = left
                else:
                    del self._pins[snap.version]
                doomed = self._collect_locked()
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
            doomed = self._collect_locked()
        self._delete(doomed)
        return snap

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
