"""A collection: wiring of storage, index and snapshots (embedded, in-process).

Contract:

* Writes (``upsert``, ``insert``, ``delete``, ``train``) are serialised by one writer lock and follow the
  commit order of DESIGN §7: new segment files (fsynced, renamed) -> one LMDB write transaction (the
  commit point) -> publish a new snapshot -> retire files no longer referenced. A write that returns
  has been committed durably (LMDB ``sync=True``). A write that raises has changed nothing.
* Reads (``search``, ``search_batch``, ``get``) never take the writer lock: they pin the current
  snapshot, so they run concurrently with writes and always see one committed version.
* Before ``train`` the collection is flat: one bucket, searched exactly. ``train`` clusters all live
  vectors into buckets (k-means) with fresh SQ8 ranges and rewrites L1 in one commit.
* Bad input raises an ``InvalidArgumentError`` subclass before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from drift_engine.config import CollectionConfig
from drift_engine.engine import layout as L
from drift_engine.engine.hydrate import load_snapshot, next_counter, remove_unreferenced_segments
from drift_engine.engine.l1_writer import remove_files, write_bucketed_segments
from drift_engine.engine.payload_index import PayloadIndex
from drift_engine.engine.results import GetResult, SearchResult
from drift_engine.engine.search import search_filtered, search_snapshot
from drift_engine.engine.snapshot import OpenSegment, Snapshot, SnapshotManager
from drift_engine.engine.trainer import train_layout
from drift_engine.engine.validate import (
    as_filter,
    as_ids,
    as_k,
    as_payloads,
    as_positive_int,
    as_query,
    as_vectors,
)
from drift_engine.errors import DuplicateIdError, EngineClosedError, InvalidArgumentError
from drift_engine.index.buckets import BucketHeader, routing_table
from drift_engine.index.routing import route_batch
from drift_engine.storage import sq8 as sq8_codec
from drift_engine.storage.cache import S3FIFOCache
from drift_engine.storage.kv import KV, encode_i64
from drift_engine.storage.pages import fsync_dir

log = logging.getLogger(__name__)


class Collection:
    """One collection of vectors, opened in-process. Use ``Engine`` to create or open it."""

    def __init__(self, path: str, kv: KV, config: CollectionConfig, cache: S3FIFOCache) -> None:
        self.path = path
        self._kv = kv
        self._config = config
        self._cache = cache
        self._seg_dir = L.segments_dir(path)
        self._write_lock = threading.RLock()
        self._closed = False
        self._payloads = PayloadIndex()
        self._next_segment = next_counter(kv, L.KEY_NEXT_SEGMENT)
        remove_unreferenced_segments(kv, self._seg_dir)
        first = load_snapshot(kv, self._seg_dir, cache, collection_key=path, config=config)
        self._snapshots = SnapshotManager(first)
        for key, value in kv.iterate(L.DB_PAYLOAD):
            from drift_engine.storage.kv import decode_i64

            self._payloads.add(decode_i64(key), value)

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str, config: CollectionConfig, cache: S3FIFOCache) -> Collection:
        os.makedirs(L.segments_dir(path), exist_ok=True)
        kv = KV(L.kv_dir(path))
        with kv.write() as batch:
            batch.put(L.DB_META, L.KEY_CONFIG, json.dumps(config.to_dict()).encode())
            batch.put(L.DB_META, L.KEY_TRAINED, b"0")
        fsync_dir(path)
        return cls(path, kv, config, cache)

    @classmethod
    def open(cls, path: str, cache: S3FIFOCache) -> Collection:
        kv = KV(L.kv_dir(path))
        raw = kv.get(L.DB_META, L.KEY_CONFIG)
        if raw is None:
            from drift_engine.errors import CorruptionError

            kv.close()
            raise CorruptionError(f"{L.kv_dir(path)}: collection has no config record")
        return cls(path, kv, CollectionConfig.from_dict(json.loads(raw)), cache)

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self._config.name

    @property
    def dim(self) -> int:
        return self._config.dim

    @property
    def metric(self) -> str:
        return self._config.metric

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshots.current

    def __len__(self) -> int:
        return self._snapshots.current.live_count

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r}, n={len(self)})"

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(f"collection {self.name!r} is closed")

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Any, vectors: Any, payloads: Sequence[dict | None] | None = None) -> int:
        """Insert or replace vectors (and payloads); returns the number written."""
        return self._write(ids, vectors, payloads, replace=True)

    def insert(self, ids: Any, vectors: Any, payloads: Sequence[dict | None] | None = None) -> int:
        """Like ``upsert`` but an id that already exists raises ``DuplicateIdError`` (nothing written)."""
        return self._write(ids, vectors, payloads, replace=False)

    def _write(self, ids: Any, vectors: Any, payloads: Any, *, replace: bool) -> int:
        self._check_open()
        id_arr = as_ids(ids)
        vec = as_vectors(vectors, self.dim, self.metric, n_expected=id_arr.size)
        pay = as_payloads(payloads, id_arr.size)
        if id_arr.size == 0:
            return 0
        with self._write_lock:
            self._check_open()
            snap = self._snapshots.current
            keys = [encode_i64(int(i)) for i in id_arr.tolist()]
            old = self._kv.get_many(L.DB_LOC, keys)
            if not replace:
                dups = [i for i, loc in zip(id_arr.tolist(), old, strict=True) if loc is not None]
                if dups:
                    shown = ", ".join(map(str, dups[:10])) + (" ..." if len(dups) > 10 else "")
                    raise DuplicateIdError(
                        f"{len(dups)} id(s) already exist: {shown}", hint="use upsert to replace them"
                    )
            old_payloads = self._kv.get_many(L.DB_PAYLOAD, keys)
            labels, sq8, buckets = self._assign_buckets(snap, vec)
            written, seg_of, row_of = write_bucketed_segments(
                self._seg_dir,
                self._next_segment.take,
                sq8,
                id_arr,
                vec,
                labels,
                rows_per_segment=self._config.params.rows_per_segment,
            )
            try:
                new_snap = self._commit_write(
                    snap,
                    buckets,
                    sq8,
                    keys,
                    id_arr,
                    vec,
                    pay,
                    old,
                    old_payloads,
                    labels,
                    written,
                    seg_of,
                    row_of,
                )
            except BaseException:
                remove_files([w.path for w in written])
                raise
            self._snapshots.publish(new_snap)
            for i, (before, after) in enumerate(zip(old_payloads, pay, strict=True)):
                ident = int(id_arr[i])
                if before is not None:
                    self._payloads.remove(ident, before)
                self._payloads.add(ident, after)
        return int(id_arr.size)

    def _assign_buckets(
        self, snap: Snapshot, vec: np.ndarray
    ) -> tuple[np.ndarray, Any, dict[int, BucketHeader]]:
        buckets = dict(snap.buckets)
        if snap.trained:
            assert snap.routing is not None
            labels = route_batch(snap.routing, vec, 1, self.metric)[:, 0].astype(np.int64)
            return labels, snap.sq8, buckets
        sq8 = snap.sq8
        if sq8 is None:
            # flat (untrained) collection: provisional ranges from the first batch; train replaces them
            sq8 = sq8_codec.train_sq8(vec, 0.0)
        if 0 not in buckets:
            buckets[0] = BucketHeader.new(0, vec.mean(axis=0).astype(np.float32))
        return np.zeros(vec.shape[0], dtype=np.int64), sq8, buckets

    def _old_vectors(self, snap: Snapshot, locs: list[L.Location]) -> np.ndarray:
        out = np.empty((len(locs), self.dim), dtype=np.float32)
        for j, loc in enumerate(locs):
            out[j] = snap.segments[loc.segment].vectors()[loc.row]
        return out

    def _commit_write(
        self,
        snap: Snapshot,
        buckets: dict[int, BucketHeader],
        sq8: Any,
        keys: list[bytes],
        id_arr: np.ndarray,
        vec: np.ndarray,
        pay: list[bytes | None],
        old: list[bytes | None],
        old_payloads: list[bytes | None],
        labels: np.ndarray,
        written: list,
        seg_of: np.ndarray,
        row_of: np.ndarray,
    ) -> Snapshot:
        old_locs = [L.Location.unpack(b) for b in old if b is not None]
        dead = dict(snap.dead)
        touched_dead: set[int] = set()
        touched_buckets: set[int] = set()
        if old_locs:
            old_vecs = self._old_vectors(snap, old_locs)
            by_bucket: dict[int, list[int]] = {}
            for j, loc in enumerate(old_locs):
                by_bucket.setdefault(loc.bucket, []).append(j)
                if loc.segment not in touched_dead:
                    dead[loc.segment] = dead[loc.segment].copy()
                    touched_dead.add(loc.segment)
                dead[loc.segment][loc.row] = 1
            for b, rows in by_bucket.items():
                header = buckets[b].copy()
                header.remove(old_vecs[rows])
                buckets[b] = header
                touched_buckets.add(b)
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        cuts = np.flatnonzero(np.diff(sorted_labels)) + 1
        for part in np.split(order, cuts):
            b = int(labels[part[0]])
            header = buckets[b] if b in touched_buckets else buckets[b].copy()
            header.add(vec[part])
            buckets[b] = header
            touched_buckets.add(b)
        segments = dict(snap.segments)
        opened: list[OpenSegment] = []
        for w in written:
            for b, ext in w.extents.items():
                buckets[b].extents.append(ext)
            dead[w.segment_id] = np.zeros(w.n_rows, dtype=np.uint8)
        with self._kv.write() as batch:
            for j, key in enumerate(keys):
                loc = L.Location(int(labels[j]), int(seg_of[j]), int(row_of[j]), 0)
                batch.put(L.DB_LOC, key, loc.pack())
                if pay[j] is not None:
                    batch.put(L.DB_PAYLOAD, key, pay[j])
                elif old_payloads[j] is not None:
                    batch.delete(L.DB_PAYLOAD, key)
            for b in touched_buckets:
                batch.put(L.DB_BUCKET, encode_i64(b), buckets[b].to_bytes())
            for s in touched_dead:
                batch.put(L.DB_DEAD, encode_i64(s), L.pack_dead(dead[s]))
            for w in written:
                info = {"file": os.path.basename(w.path), "rows": w.n_rows}
                batch.put(L.DB_SEGMENT, encode_i64(w.segment_id), json.dumps(info).encode())
            batch.put(L.DB_META, L.KEY_NEXT_SEGMENT, L.int_bytes(self._next_segment.peek()))
            if snap.sq8 is None:
                batch.put(L.DB_META, L.KEY_SQ8, sq8.to_bytes())
        for w in written:
            seg = OpenSegment(w.path, self._cache, collection_key=self.path)
            segments[w.segment_id] = seg
            opened.append(seg)
        live = snap.live_count + int(id_arr.size) - len(old_locs)
        return self._make_snapshot(snap, snap.trained, sq8, buckets, segments, dead, live)

    def _make_snapshot(
        self,
        prev: Snapshot,
        trained: bool,
        sq8: Any,
        buckets: dict[int, BucketHeader],
        segments: dict[int, OpenSegment],
        dead: dict[int, np.ndarray],
        live: int,
    ) -> Snapshot:
        params = self._config.params
        routing = routing_table(buckets.values(), lam=params.lam, tau=params.tau) if trained else None
        for mask in dead.values():
            mask.setflags(write=False)
        return Snapshot(prev.version + 1, trained, sq8, buckets, routing, segments, dead, live)

    def delete(self, ids: Any) -> int:
        """Delete ids; ids that do not exist are ignored. Returns how many were deleted."""
        self._check_open()
        id_arr = as_ids(ids, allow_duplicates=True)
        id_arr = np.unique(id_arr)
        if id_arr.size == 0:
            return 0
        with self._write_lock:
            self._check_open()
            snap = self._snapshots.current
            keys = [encode_i64(int(i)) for i in id_arr.tolist()]
            raw = self._kv.get_many(L.DB_LOC, keys)
            present = [(k, L.Location.unpack(b)) for k, b in zip(keys, raw, strict=True) if b is not None]
            if not present:
                return 0
            old_payloads = self._kv.get_many(L.DB_PAYLOAD, [k for k, _ in present])
            locs = [loc for _, loc in present]
            old_vecs = self._old_vectors(snap, locs)
            buckets = dict(snap.buckets)
            dead = dict(snap.dead)
            touched_dead: set[int] = set()
            by_bucket: dict[int, list[int]] = {}
            for j, loc in enumerate(locs):
                by_bucket.setdefault(loc.bucket, []).append(j)
                if loc.segment not in touched_dead:
                    dead[loc.segment] = dead[loc.segment].copy()
                    touched_dead.add(loc.segment)
                dead[loc.segment][loc.row] = 1
            for b, rows in by_bucket.items():
                header = buckets[b].copy()
                header.remove(old_vecs[rows])
                buckets[b] = header
            with self._kv.write() as batch:
                for key, _ in present:
                    batch.delete(L.DB_LOC, key)
                    batch.delete(L.DB_PAYLOAD, key)
                for b in by_bucket:
                    batch.put(L.DB_BUCKET, encode_i64(b), buckets[b].to_bytes())
                for s in touched_dead:
                    batch.put(L.DB_DEAD, encode_i64(s), L.pack_dead(dead[s]))
            new = self._make_snapshot(
                snap, snap.trained, snap.sq8, buckets, dict(snap.segments), dead, snap.live_count - len(locs)
            )
            self._snapshots.publish(new)
            from drift_engine.storage.kv import decode_i64

            for (key, _), payload in zip(present, old_payloads, strict=True):
                self._payloads.remove(decode_i64(key), payload)
        return len(present)

    # ------------------------------------------------------------------ train
    def train(
        self, n_buckets: int | None = None, *, progress: Callable[[str, float], None] | None = None
    ) -> dict[str, Any]:
        """Cluster all live vectors into buckets and rewrite L1 with fresh SQ8 ranges (one commit)."""
        self._check_open()
        if n_buckets is not None:
            n_buckets = as_positive_int("n_buckets", n_buckets, 10_000_000)
        with self._write_lock:
            self._check_open()
            t0 = time.perf_counter()
            snap = self._snapshots.current
            result = train_layout(
                snap,
                self._config,
                self._seg_dir,
                self._next_segment.take,
                n_buckets=n_buckets,
                progress=progress,
            )
            try:
                with self._kv.write() as batch:
                    for db in (L.DB_BUCKET, L.DB_DEAD, L.DB_SEGMENT):
                        batch.drop(db)
                    result.stage(batch)
                    batch.put(L.DB_META, L.KEY_SQ8, result.sq8.to_bytes())
                    batch.put(L.DB_META, L.KEY_TRAINED, b"1")
                    batch.put(L.DB_META, L.KEY_NEXT_SEGMENT, L.int_bytes(self._next_segment.peek()))
            except BaseException:
                remove_files([w.path for w in result.written])
                raise
            segments = {
                w.segment_id: OpenSegment(w.path, self._cache, collection_key=self.path)
                for w in result.written
            }
            dead = {w.segment_id: np.zeros(w.n_rows, dtype=np.uint8) for w in result.written}
            new = self._make_snapshot(
                snap, True, result.sq8, result.buckets, segments, dead, result.n_vectors
            )
            self._snapshots.publish(new, retired=list(snap.segments.values()))
            seconds = time.perf_counter() - t0
        log.info(
            "trained %s: %d vectors into %d buckets in %.2fs",
            self.name,
            result.n_vectors,
            len(result.buckets),
            seconds,
        )
        return {"vectors": result.n_vectors, "buckets": len(result.buckets), "seconds": seconds}

    # ------------------------------------------------------------------ reads
    def _search_args(self, k: Any, nprobe: Any, rerank: Any) -> tuple[int, int, int]:
        params = self._config.params
        k = as_k(k)
        nprobe = params.nprobe if nprobe is None else as_positive_int("nprobe", nprobe, 1_000_000)
        rerank = params.rerank if rerank is None else as_positive_int("rerank", rerank, 1_000)
        return k, nprobe, rerank

    def _allowed_masks(self, snap: Snapshot, flt: dict[str, str]) -> dict[int, np.ndarray]:
        memo_key = (tuple(sorted(flt.items())), self._payloads.version)
        masks = snap.filter_masks.get(memo_key)
        if masks is not None:
            return masks
        allowed_ids = self._payloads.lookup(flt)
        masks = {}
        for seg_id, seg in snap.segments.items():
            keep = np.isin(seg.ids(), allowed_ids, assume_unique=False)
            masks[seg_id] = np.where(keep, snap.dead[seg_id], np.uint8(1)).astype(np.uint8)
        if len(snap.filter_masks) > 64:
            snap.filter_masks.clear()
        snap.filter_masks[memo_key] = masks
        return masks

    def search(
        self,
        query: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
    ) -> SearchResult:
        """The ``k`` nearest live vectors to ``query`` (exact distances, pgvector semantics)."""
        self._check_open()
        q = as_query(query, self.dim, self.metric)
        k, nprobe, rerank = self._search_args(k, nprobe, rerank)
        flt = as_filter(filter)
        with self._snapshots.pin() as snap:
            if flt is None:
                ids, dists = search_snapshot(snap, q, k, nprobe, rerank, self.metric)
            else:
                ids, dists = search_filtered(
                    snap, q, k, nprobe, rerank, self.metric, self._allowed_masks(snap, flt)
                )
        return SearchResult(ids, dists, self._payload_loader)

    def search_batch(
        self,
        queries: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of shape (m, k); missing results are id -1 and distance inf."""
        self._check_open()
        qs = as_vectors(queries, self.dim, self.metric)
        k, nprobe, rerank = self._search_args(k, nprobe, rerank)
        flt = as_filter(filter)
        out_ids = np.full((qs.shape[0], k), -1, dtype=np.int64)
        out_d = np.full((qs.shape[0], k), np.inf, dtype=np.float32)
        with self._snapshots.pin() as snap:
            masks = None if flt is None else self._allowed_masks(snap, flt)
            for i in range(qs.shape[0]):
                if masks is None:
                    ids, dists = search_snapshot(snap, qs[i], k, nprobe, rerank, self.metric)
                else:
                    ids, dists = search_filtered(snap, qs[i], k, nprobe, rerank, self.metric, masks)
                out_ids[i, : ids.size] = ids
                out_d[i, : ids.size] = dists
        return out_ids, out_d

    def _payload_loader(self, ids: np.ndarray) -> list[dict | None]:
        raw = self._kv.get_many(L.DB_PAYLOAD, [encode_i64(int(i)) for i in ids.tolist()])
        return [None if b is None else json.loads(b) for b in raw]

    def get(self, ids: Any) -> GetResult:
        """Vectors and payloads of the ids that exist, in request order (absent ids are left out)."""
        self._check_open()
        id_arr = as_ids(ids, allow_duplicates=True)
        keys = [encode_i64(int(i)) for i in id_arr.tolist()]
        for _attempt in range(8):
            with self._snapshots.pin() as snap:
                raw = self._kv.get_many(L.DB_LOC, keys)
                locs = [None if b is None else L.Location.unpack(b) for b in raw]
                if all(
                    loc is None or (loc.segment in snap.segments and snap.dead[loc.segment][loc.row] == 0)
                    for loc in locs
                ):
                    found = [j for j, loc in enumerate(locs) if loc is not None]
                    vectors = np.empty((len(found), self.dim), dtype=np.float32)
                    for out_row, j in enumerate(found):
                        loc = locs[j]
                        vectors[out_row] = snap.segments[loc.segment].vectors()[loc.row]
                    payload_raw = self._kv.get_many(L.DB_PAYLOAD, [keys[j] for j in found])
                    payloads = [None if b is None else json.loads(b) for b in payload_raw]
                    return GetResult(id_arr[found], vectors, payloads)
            time.sleep(0.001)  # a commit is between LMDB and publish: retry on the next snapshot
        with self._write_lock:
            return self.get(ids)

    # ------------------------------------------------------------------ params & stats
    def set_params(self, **params: Any) -> dict[str, Any]:
        """Change search/maintenance parameters at runtime (validated, persisted); returns all params."""
        self._check_open()
        if not params:
            raise InvalidArgumentError("set_params needs at least one parameter")
        with self._write_lock:
            new_params = self._config.params.updated(**params)
            new_config = CollectionConfig(self.name, self.dim, self.metric, new_params)
            with self._kv.write() as batch:
                batch.put(L.DB_META, L.KEY_CONFIG, json.dumps(new_config.to_dict()).encode())
            self._config = new_config
            snap = self._snapshots.current
            if snap.trained:
                self._snapshots.publish(
                    self._make_snapshot(
                        snap,
                        True,
                        snap.sq8,
                        dict(snap.buckets),
                        dict(snap.segments),
                        dict(snap.dead),
                        snap.live_count,
                    )
                )
        return self.params()

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "metric": self.metric, **self._config.params.to_dict()}

    def stats(self) -> dict[str, Any]:
        snap = self._snapshots.current
        sizes = np.array([h.count for h in snap.buckets.values()], dtype=np.int64)
        seg_bytes = sum(seg.file_size for seg in snap.segments.values())
        kv_bytes = sum(
            os.path.getsize(os.path.join(L.kv_dir(self.path), f)) for f in os.listdir(L.kv_dir(self.path))
        )
        cache = self._cache.stats()
        return {
            "name": self.name,
            "dim": self.dim,
            "metric": self.metric,
            "count": snap.live_count,
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
            "disk_bytes": int(seg_bytes + kv_bytes),
            "segment_bytes": int(seg_bytes),
            "version": snap.version,
        }

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._snapshots.close()
            for seg in self._snapshots.current.segments.values():
                seg.close()
            self._kv.close()
