"""``drift-engine inspect``: an offline consistency check of a data directory (segment files against LMDB).

For each collection, read-only:

* LMDB opens (an old store without checksums is reported, not migrated: nothing is written), every value
  passes its CRC32C (``KV.verify``), and it holds a valid config record;
* every segment LMDB references exists, and its header matches (id, rows, dimension) — the checks the
  engine makes at open (``hydrate.load_snapshot``);
* with ``verify_blocks``, every block of every referenced segment passes its CRC32C (and zero padding);
* L1 is consistent (``maintenance.verify.check_l1``): each live row in exactly one bucket extent, each id
  live once with LMDB's location, bucket counts and running sums equal to their rows, LMDB's bucket
  headers / dead masks / segment list equal to what the engine would load;
* files the engine would remove at open (unreferenced segments, an unfinished create or drop) and the WAL
  (files, bytes, ``applied_lsn``) are reported as information, not problems.

Nothing is written. The directory's lock is taken for the duration when it is free, so no server starts
in the middle; when a server holds it, the check still runs but concurrent changes can show up as
transient problems (the report says so).
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

from drift_engine.errors import DriftError

_CACHE_BYTES = 256 << 20


def _try_lock(data: str) -> int | None:
    """An fd holding the data directory's lock, or None when a server holds it (or there is no lock file)."""
    from drift_engine.api import LOCK_FILE

    path = os.path.join(data, LOCK_FILE)
    if not os.path.exists(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return -1
    return fd


def inspect_collection(col_dir: str, *, verify_blocks: bool = True) -> dict[str, Any]:
    from drift_engine.config import CollectionConfig
    from drift_engine.l1 import layout as L
    from drift_engine.l1.hydrate import load_snapshot, referenced_segments
    from drift_engine.maintenance.verify import check_l1
    from drift_engine.storage.cache import S3FIFOCache
    from drift_engine.storage.kv import KV

    report: dict[str, Any] = {"ok": False, "problems": [], "notes": []}
    problems: list[str] = report["problems"]
    kv_path = L.kv_dir(col_dir)
    if not os.path.isdir(kv_path):
        problems.append("meta.lmdb is missing")
        return report
    try:
        kv = KV(kv_path, readonly=True)
    except Exception as exc:
        problems.append(f"LMDB does not open: {exc}")
        return report
    snap = None
    try:
        problems.extend(kv.verify())  # every LMDB value's CRC32C, before anything trusts one
        try:
            raw = kv.get(L.DB_META, L.KEY_CONFIG)
        except DriftError as exc:
            problems.append(f"LMDB config record: {exc}")
            return report
        if raw is None:
            problems.append("LMDB has no config record")
            return report
        config = CollectionConfig.from_dict(json.loads(raw))
        applied = kv.get(L.DB_META, L.KEY_APPLIED_LSN)
        report.update(dim=config.dim, metric=config.metric, applied_lsn=int(applied) if applied else 0)
        refs = referenced_segments(kv)
        seg_dir = L.segments_dir(col_dir)
        on_disk = sorted(os.listdir(seg_dir)) if os.path.isdir(seg_dir) else []
        unreferenced = sorted(set(on_disk) - {info["file"] for info in refs.values()})
        if unreferenced:
            report["notes"].append(f"{len(unreferenced)} unreferenced segment file(s), removed at next open")
        wal_dir = os.path.join(col_dir, "wal")
        wal_files = sorted(os.listdir(wal_dir)) if os.path.isdir(wal_dir) else []
        report["wal_files"] = len(wal_files)
        report["wal_bytes"] = sum(os.path.getsize(os.path.join(wal_dir, f)) for f in wal_files)
        try:
            snap = load_snapshot(kv, seg_dir, S3FIFOCache(_CACHE_BYTES), collection_key=col_dir, config=config)
        except (DriftError, OSError, ValueError) as exc:
            problems.append(f"segments do not load: {exc}")
            return report
        report.update(
            trained=snap.trained,
            segments=len(snap.segments),
            buckets=len(snap.buckets),
            rows=sum(seg.n_rows for seg in snap.segments.values()),
            live=snap.live_count,
        )
        if verify_blocks:
            for seg in snap.segments.values():
                try:
                    seg.reader.verify()
                except (DriftError, OSError) as exc:
                    problems.append(str(exc))
        try:
            if not any("checksum mismatch" in p for p in problems):  # L1 reads would stop at the first bad value
                problems.extend(check_l1(kv, snap))
        except (DriftError, OSError, ValueError, KeyError) as exc:
            problems.append(f"L1 check failed: {exc}")
    finally:
        if snap is not None:
            for seg in snap.segments.values():
                seg.close()
        kv.close()
    report["ok"] = not problems
    return report


def inspect_data_dir(data: str, *, collections: list[str] | None = None, verify_blocks: bool = True) -> dict[str, Any]:
    """The report of every collection (or the named ones): ``{"ok", "server_running", "collections": {...}}``."""
    from drift_engine.api import COLLECTIONS_DIR

    root = os.path.join(data, COLLECTIONS_DIR)
    lock_fd = _try_lock(data)
    try:
        names = sorted(os.listdir(root)) if os.path.isdir(root) else []
        report: dict[str, Any] = {"ok": True, "server_running": lock_fd == -1, "notes": [], "collections": {}}
        if lock_fd == -1:
            report["notes"].append("a server holds this directory: concurrent changes may show as problems")
        leftovers = [n for n in names if n.startswith(".")]
        if leftovers:
            report["notes"].append(f"{len(leftovers)} unfinished create/drop folder(s), removed at next open")
        wanted = [n for n in names if not n.startswith(".")]
        if collections:
            missing = sorted(set(collections) - set(wanted))
            for name in missing:
                report["collections"][name] = {"ok": False, "problems": ["no such collection"], "notes": []}
            wanted = [n for n in wanted if n in collections]
        for name in wanted:
            report["collections"][name] = inspect_collection(os.path.join(root, name), verify_blocks=verify_blocks)
        report["ok"] = all(c["ok"] for c in report["collections"].values())
        return report
    finally:
        if lock_fd is not None and lock_fd >= 0:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
