"""Collection statistics: one dict describing a collection's current snapshot, WAL, cache and maintenance.

Contract: ``collection_stats(col, buckets)`` reads the current snapshot once (no pin: only in-memory
headers and file sizes are read) and never blocks writers. ``buckets=True`` adds ``bucket_stats``. The
maintenance part comes from the collection's maintenance runner (``engine.background``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from drift_engine.l1 import layout as L


def collection_stats(col: Any, buckets: bool = False) -> dict[str, Any]:
    """The statistics of ``col`` (a ``Collection``); see ``Collection.stats``."""
    snap = col._snapshots.current
    sizes = np.array([h.count for h in snap.buckets.values()], dtype=np.int64)
    seg_bytes = sum(seg.file_size for seg in snap.segments.values())
    kv_dir = L.kv_dir(col.path)
    kv_bytes = sum(os.path.getsize(os.path.join(kv_dir, f)) for f in os.listdir(kv_dir))
    wal = col._writes.wal.stats()
    cache = col._cache.stats()
    return {
        "name": col.name,
        "dim": col.dim,
        "metric": col.metric,
        "count": len(col),
        "l1_count": snap.live_count,
        "memtable_count": sum(len(m) for m in snap.memtables),
        "frozen_memtables": len(snap.memtables) - 1,
        "trained": snap.trained,
        "buckets": len(snap.buckets),
        "bucket_size_min": int(sizes.min()) if sizes.size else 0,
        "bucket_size_median": float(np.median(sizes)) if sizes.size else 0.0,
        "bucket_size_max": int(sizes.max()) if sizes.size else 0,
        "segments": len(snap.segments),
        "dead_rows": int(sum(int(m.sum()) for m in snap.dead.values())),
        "cache_hits": cache["hits"],
        "cache_misses": cache["misses"],
        "cache_bytes": cache["size_bytes"],
        "disk_bytes": int(seg_bytes + kv_bytes + wal.get("bytes", 0)),
        "segment_bytes": int(seg_bytes),
        "wal_bytes": int(wal.get("bytes", 0)),
        "wal_last_lsn": int(wal.get("last_lsn", 0)),
        "janitor_flushes": col._janitor.flushes if col._janitor else 0,
        "janitor_error": col._janitor.last_error if col._janitor else None,
        "version": snap.version,
        **col._maintenance.stats(snap, col._maintainer.last_error if col._maintainer else None, with_buckets=buckets),
    }
