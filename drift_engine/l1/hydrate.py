"""Rebuilding a collection's in-memory state from LMDB + segment files at open.

Contract: LMDB is the truth. Segment files that LMDB does not reference (left by a crash between
writing a segment and committing it, or by a retire that did not finish) are removed. A referenced
segment that is missing, has the wrong row count, or fails its header checksum is a ``CorruptionError``
naming the file; block checksums are verified when blocks are first read.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np

from drift_engine.config import CollectionConfig
from drift_engine.errors import CorruptionError
from drift_engine.index.buckets import BucketHeader, routing_table
from drift_engine.l1 import layout as L
from drift_engine.l1.snapshot import OpenSegment, Snapshot
from drift_engine.storage.cache import S3FIFOCache
from drift_engine.storage.kv import KV, decode_i64, encode_i64
from drift_engine.storage.pages import fsync_dir
from drift_engine.storage.sq8 import SQ8Params

log = logging.getLogger(__name__)


class Counter:
    """A monotonically increasing id source (segment ids); persisted by the writer in each commit."""

    def __init__(self, start: int) -> None:
        self._next = start
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            value = self._next
            self._next += 1
            return value

    def peek(self) -> int:
        return self._next


def referenced_segments(kv: KV) -> dict[int, dict]:
    return {decode_i64(k): json.loads(v) for k, v in kv.iterate(L.DB_SEGMENT)}


def next_counter(kv: KV, key: bytes) -> Counter:
    stored = kv.get(L.DB_META, key)
    start = int(stored) if stored is not None else 1
    refs = referenced_segments(kv)
    if refs:
        start = max(start, max(refs) + 1)
    return Counter(start)


def remove_unreferenced_segments(kv: KV, seg_dir: str) -> list[str]:
    refs = {info["file"] for info in referenced_segments(kv).values()}
    removed = []
    for name in sorted(os.listdir(seg_dir)):
        if name in refs:
            continue
        if name.endswith(L.SEGMENT_SUFFIX) or name.endswith(L.SEGMENT_SUFFIX + ".tmp"):
            os.unlink(os.path.join(seg_dir, name))
            removed.append(name)
    if removed:
        fsync_dir(seg_dir)
        log.info("removed %d unreferenced segment file(s) in %s", len(removed), seg_dir)
    return removed


def load_snapshot(
    kv: KV, seg_dir: str, cache: S3FIFOCache, *, collection_key: str, config: CollectionConfig
) -> Snapshot:
    dim = config.dim
    trained = kv.get(L.DB_META, L.KEY_TRAINED) == b"1"
    raw_sq8 = kv.get(L.DB_META, L.KEY_SQ8)
    sq8 = SQ8Params.from_bytes(raw_sq8, dim) if raw_sq8 is not None else None
    buckets = {decode_i64(k): BucketHeader.from_bytes(v, dim) for k, v in kv.iterate(L.DB_BUCKET)}
    segments: dict[int, OpenSegment] = {}
    dead: dict[int, np.ndarray] = {}
    try:
        for seg_id, info in sorted(referenced_segments(kv).items()):
            path = os.path.join(seg_dir, info["file"])
            if not os.path.exists(path):
                raise CorruptionError(f"{path}: segment {seg_id} is referenced by LMDB but missing")
            seg = OpenSegment(path, cache, collection_key=collection_key)
            segments[seg_id] = seg
            if seg.segment_id != seg_id or seg.n_rows != int(info["rows"]) or seg.reader.dim != dim:
                raise CorruptionError(
                    f"{path}: header says segment {seg.segment_id} with {seg.n_rows} rows of dim {seg.reader.dim}, "
                    f"LMDB expects segment {seg_id} with {info['rows']} rows of dim {dim}"
                )
            raw_dead = kv.get(L.DB_DEAD, encode_i64(seg_id))
            mask = L.unpack_dead(raw_dead, seg.n_rows) if raw_dead else np.zeros(seg.n_rows, dtype=np.uint8)
            mask.setflags(write=False)
            dead[seg_id] = mask
    except BaseException:
        for seg in segments.values():
            seg.close()
        raise
    for header in buckets.values():
        for ext in header.extents:
            if ext.segment_id not in segments:
                raise CorruptionError(
                    f"bucket {header.bucket_id} has an extent in segment {ext.segment_id}, which LMDB does not list"
                )
    live = kv.count(L.DB_LOC)
    params = config.params
    routing = routing_table(buckets.values(), lam=params.lam, tau=params.tau) if trained else None
    raw_lsn = kv.get(L.DB_META, L.KEY_APPLIED_LSN)
    return Snapshot(0, trained, sq8, buckets, routing, segments, dead, live, l1_lsn=int(raw_lsn) if raw_lsn else 0)
