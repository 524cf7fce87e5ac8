"""A collection: wiring of the write path (WAL + memtables), L1 (buckets on disk) and snapshots.

Contract:

* **Writes** (``upsert``, ``insert``, ``delete``) go WAL -> active memtable under one write lock
  (``engine.writes``); a call returns once its record is durable per the durability mode, and the
  written vectors are searchable as soon as it returns. A write that raises changed nothing, now or
  after a reopen (a failed apply is cancelled by a durable ``ABORT`` WAL record before the error is
  raised); only ``WritesStoppedError`` (the WAL itself failed) leaves the outcome to the next open.
  Large batches (``bulk_min``), and large parts of engine transactions, go WAL -> L1 directly, in one LMDB
  commit (``engine.bulk``).
* **L1 changes** (Janitor flush, bulk write, ``train``, maintenance) run under the L1 lock, never the write
  lock, and all go through the one commit protocol of DESIGN §7 (``l1.commit``): segment files -> one LMDB
  transaction (commit point, with ``applied_lsn``) -> publish one snapshot (a flush publishes L1 + memtables
  together, so a vector is never in neither and never twice) -> retire files once no reader can see them;
  after a flush this module truncates the WAL.
* **Reads** (``search``, ``search_batch``, ``get``, ``scan``, ``search_stream``) pin the current snapshot
  and never wait for writers; L0 and L1 results are merged by distance and the newest version of an id
  wins. ``get`` and ``scan`` answer entirely from their pinned snapshot (``engine.reads``): a concurrent
  flush, train or maintenance move never makes them fail, retry or return a stale or torn row.
  ``scan`` holds its pin until the generator is exhausted or closed. ``search_stream`` is the engine's
  streaming search (``engine.stream``).
* Before the first ``train`` L1 is flat (one bucket, searched exactly); ``auto_train_threshold`` trains
  it in the background once the collection is large enough.
* **Background workers** (Janitor, maintenance runner, Maintainer) are built by the ``BackgroundFactory``
  the collection is opened with (``drift_engine.api`` wires ``maintenance`` in; ``engine.background``).
* Sync methods have ``*_async`` twins that run them on the engine's thread pool (kernels release the GIL).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from drift_engine import crashpoints
from drift_engine.config import DURABILITY_MODES, CollectionConfig, EngineSettings
from drift_engine.engine.async_api import AsyncTwins
from drift_engine.engine.background import BackgroundFactory, JanitorHandle, MaintainerHandle, MaintenanceHandle
from drift_engine.engine.bulk import L1DirectWrites
from drift_engine.engine.fastsearch import query_vector, search_fast
from drift_engine.engine.payload_index import PayloadIndex
from drift_engine.engine.reads import PointReads
from drift_engine.engine.results import GetResult, SearchResult
from drift_engine.engine.search import auto_nprobe, search_hybrid
from drift_engine.engine.stats import collection_stats
from drift_engine.engine.stream import StreamHit, search_stream
from drift_engine.engine.validate import as_filter, as_ids, as_k, as_payloads, as_positive_int, as_vectors
from drift_engine.engine.writes import KEY_TRAIN_LSN, WritePath
from drift_engine.errors import CorruptionError, EngineClosedError, InvalidArgumentError, InvalidParameterError
from drift_engine.l1 import layout as L
from drift_engine.l1.batch import commit_batch
from drift_engine.l1.commit import L1Store
from drift_engine.l1.snapshot import Snapshot, build_routing
from drift_engine.l1.train import commit_train
from drift_engine.storage.cache import S3FIFOCache
from drift_engine.storage.kv import KV, decode_i64
from drift_engine.storage.pages import fsync_dir

log = logging.getLogger(__name__)
# Seconds without writes before an automatic train. SQL loads reach the engine once per statement (the FDW
# buffers a transaction's rows until its commit): a pause of 1 s was the next 50,000-row statement being
# parsed, and trained a load midway, so the rest of it went through inline splits.
AUTO_TRAIN_IDLE = 5.0


class Collection(L1DirectWrites, AsyncTwins):
    """One collection of vectors, opened in-process. Use ``Engine`` to create or open it."""

    def __init__(
        self,
        path: str,
        kv: KV,
        config: CollectionConfig,
        cache: S3FIFOCache,
        settings: EngineSettings,
        executor: Executor | None = None,
        *,
        background: BackgroundFactory,
    ) -> None:
        self.path = path
        self._kv = kv
        self._config = config
        self._cache = cache
        self._executor = executor
        self._seg_dir = L.segments_dir(path)
        self._closed = False
        self._payloads = PayloadIndex()
        self._l1 = L1Store.open(kv, self._seg_dir, cache, cache_key=path, config=config)
        self._l1_lock = self._l1.lock  # every L1 change holds it (``l1.commit``)
        self._snapshots = self._l1.snapshots
        for key, value in kv.iterate(L.DB_PAYLOAD):
            self._payloads.add(decode_i64(key), value)
        self._writes = WritePath(
            path, lambda: self._config, settings, kv, self._snapshots, self._payloads, on_frozen=self._wake_janitor
        )
        self._reads = PointReads(kv, self._snapshots, config.dim, self._writes.lock)
        self._janitor: JanitorHandle | None = None
        self._maintainer: MaintainerHandle | None = None
        try:
            self._writes.install_first_memtable()
            self._writes.replay(self._snapshots.current.l1_lsn)
        except BaseException:
            self._writes.close()
            for seg in self._snapshots.current.segments.values():
                seg.close()
            raise
        workers = background(self)
        self._maintenance: MaintenanceHandle = workers.maintenance
        self._janitor = workers.janitor
        self._maintainer = workers.maintainer
        if len(self._snapshots.current.memtables) > 1:
            self._janitor.wake()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str,
        config: CollectionConfig,
        cache: S3FIFOCache,
        settings: EngineSettings,
        executor: Executor | None = None,
        *,
        background: BackgroundFactory,
    ) -> Collection:
        os.makedirs(path, mode=0o700, exist_ok=True)  # private, whatever the umask (new folders only)
        os.makedirs(L.segments_dir(path), mode=0o700, exist_ok=True)
        kv = KV(L.kv_dir(path))
        with kv.write() as batch:
            batch.put(L.DB_META, L.KEY_CONFIG, json.dumps(config.to_dict()).encode())
            batch.put(L.DB_META, L.KEY_TRAINED, b"0")
        fsync_dir(path)
        return cls(path, kv, config, cache, settings, executor, background=background)

    @classmethod
    def open(
        cls,
        path: str,
        cache: S3FIFOCache,
        settings: EngineSettings,
        executor: Executor | None = None,
        *,
        background: BackgroundFactory,
    ) -> Collection:
        kv = KV(L.kv_dir(path))
        raw = kv.get(L.DB_META, L.KEY_CONFIG)
        if raw is None:
            kv.close()
            raise CorruptionError(f"{L.kv_dir(path)}: collection has no config record")
        try:
            config = CollectionConfig.from_dict(json.loads(raw))
            return cls(path, kv, config, cache, settings, executor, background=background)
        except BaseException:
            kv.close()
            raise

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

    @property
    def config(self) -> CollectionConfig:
        """The current configuration (``set_params`` replaces it)."""
        return self._config

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def l1(self) -> L1Store:
        """The collection's L1 (``l1.commit``): what its maintenance runner changes, under ``l1.lock``."""
        return self._l1

    def __len__(self) -> int:
        return self._writes.count

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r}, n={len(self)})"

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(f"collection {self.name!r} is closed")

    def _janitor_retry_soon(self) -> None:
        timer = threading.Timer(AUTO_TRAIN_IDLE, self._wake_janitor)
        timer.daemon = True
        timer.start()

    def _wake_janitor(self) -> None:
        if self._janitor is not None:
            self._janitor.wake()

    # ------------------------------------------------------------------ writes
    def upsert(
        self, ids: Any, vectors: Any, payloads: Sequence[dict | None] | None = None, *, durability: str | None = None
    ) -> int:
        """Insert or replace vectors (and payloads); returns the number written once durable."""
        return self._write(ids, vectors, payloads, replace=True, durability=durability)

    def insert(
        self, ids: Any, vectors: Any, payloads: Sequence[dict | None] | None = None, *, durability: str | None = None
    ) -> int:
        """Like ``upsert`` but an id that already exists raises ``DuplicateIdError`` (nothing written)."""
        return self._write(ids, vectors, payloads, replace=False, durability=durability)

    @staticmethod
    def _durability(durability: str | None) -> str | None:
        if durability is not None and durability not in DURABILITY_MODES:
            raise InvalidParameterError(f"durability must be one of {', '.join(DURABILITY_MODES)}, got {durability!r}")
        return durability

    def _write(self, ids: Any, vectors: Any, payloads: Any, *, replace: bool, durability: str | None) -> int:
        self._check_open()
        durability = self._durability(durability)
        id_arr = as_ids(ids)
        vec = as_vectors(vectors, self.dim, self.metric, n_expected=id_arr.size)
        pay = as_payloads(payloads, id_arr.size)
        if id_arr.size == 0:
            return 0
        if id_arr.size >= self._config.params.bulk_min:
            return self._bulk_write(id_arr, vec, pay, replace=replace)
        self._writes.wait_for_room()
        with self._writes.lock:
            self._check_open()
            lsn = self._writes.upsert_locked(id_arr, vec, pay, replace=replace)
        self._writes.wal.sync(lsn, durability)
        return int(id_arr.size)

    def delete(self, ids: Any, *, durability: str | None = None) -> int:
        """Delete ids; ids that do not exist are ignored. Returns how many were deleted, once durable."""
        self._check_open()
        durability = self._durability(durability)
        id_arr = np.unique(as_ids(ids, allow_duplicates=True))
        if id_arr.size == 0:
            return 0
        self._writes.wait_for_room()
        with self._writes.lock:
            self._check_open()
            lsn, deleted = self._writes.delete_locked(id_arr)
        if lsn:
            self._writes.wal.sync(lsn, durability)
        return deleted

    # ------------------------------------------------------------------ flush (Janitor) and train
    def flush(self) -> int:
        """Freeze the active memtable and flush every frozen one into L1; returns when committed."""
        self._check_open()
        with self._writes.lock:
            self._writes.rotate_locked()
        return self.flush_pending()

    def flush_pending(self) -> int:
        flushed = 0
        with self._l1_lock:
            for mt in self._writes.frozen():
                if self._closed:
                    break
                self._flush_one(mt)
                flushed += 1
        return flushed

    def _flush_one(self, mt) -> None:
        params = self._config.params
        ids, vectors, payloads, row_lsns = mt.items(with_lsns=True)
        tomb = mt.tombstones()
        delete_ids = np.fromiter(tomb.keys(), dtype=np.int64, count=len(tomb))
        applied = mt.max_lsn
        # LMDB must never claim an lsn the WAL could lose (batch/off modes): make it durable first
        self._writes.wal.sync(applied, "sync")
        commit_batch(
            self._l1,
            self._snapshots.current,
            ids,
            vectors,
            payloads,
            delete_ids,
            applied,
            metric=self.metric,
            lam=params.lam,
            tau=params.tau,
            rows_per_segment=params.rows_per_segment,
            row_lsns=row_lsns,
            install=lambda fields: self._writes.drop_flushed(mt, fields),  # L1 and memtables in one snapshot
        )
        crashpoints.hit("flush.after_publish")
        self._writes.wal.truncate_upto(self._truncatable_lsn(applied))
        crashpoints.hit("flush.after_truncate")
        self._maintenance.split_oversized()

    def _truncatable_lsn(self, applied: int) -> int:
        pending = [m.min_lsn for m in self._snapshots.current.memtables if m.n_ops and m.min_lsn]
        pending += list(self._writes.txn_pins)  # TXN_APPLY records the engine's recovery may still need
        return min([applied, *(p - 1 for p in pending)])

    def auto_train(self) -> bool:
        """The Janitor's hook: train an untrained collection once it passes the threshold and writes pause
        (AUTO_TRAIN_IDLE s), or once it holds 4x the threshold: a bulk load then trains once, at its end, not
        midway and again. True when it trained."""
        threshold = self._config.params.auto_train_threshold
        if self._closed or threshold <= 0 or self._snapshots.current.trained or len(self) < threshold:
            return False
        idle = time.monotonic() - self._writes.last_write
        if idle < AUTO_TRAIN_IDLE and len(self) < 4 * threshold:
            self._janitor_retry_soon()
            return False
        try:
            self.train()
        except EngineClosedError:
            return False  # closed while it ran: nothing was committed, nothing to report
        return True

    def train(
        self, n_buckets: int | None = None, *, progress: Callable[[str, float], None] | None = None
    ) -> dict[str, Any]:
        """Flush, then cluster all live vectors into buckets and rewrite L1 with fresh SQ8 ranges (one commit).

        Writes continue into memtables while training runs; they are flushed into the new buckets after it.
        """
        self._check_open()
        if n_buckets is not None:
            n_buckets = as_positive_int("n_buckets", n_buckets, 10_000_000)
        self.flush()
        with self._l1_lock:
            self.flush_pending()
            self._check_open()
            t0 = time.perf_counter()
            result = commit_train(
                self._l1,
                self._snapshots.current,
                self._config,
                n_buckets=n_buckets,
                progress=progress,
                lsn_key=KEY_TRAIN_LSN,
            )
            seconds = time.perf_counter() - t0
        log.info("trained %s: %d vectors, %d buckets, %.2fs", self.name, result.n_vectors, len(result.buckets), seconds)
        return {"vectors": result.n_vectors, "buckets": len(result.buckets), "seconds": seconds}

    # ------------------------------------------------------------------ maintenance (split / merge / compact)
    def maintain(self, max_jobs: int | None = None) -> dict[str, Any]:
        """Run pending maintenance jobs now, most urgent first (``maintenance.runner``); returns what was done.

        The background Maintainer runs the same jobs on its own, rate-limited by ``maintain_duty``."""
        self._check_open()
        if max_jobs is not None:
            max_jobs = as_positive_int("max_jobs", max_jobs, 10_000_000)
        return self._maintenance.run(max_jobs)

    def bucket_stats(self) -> list[dict[str, Any]]:
        """Per-bucket drift statistics of the current snapshot (``maintenance.scheduler.bucket_stats``)."""
        return self._maintenance.bucket_stats(self._snapshots.current)

    # ------------------------------------------------------------------ reads
    def _search_args(self, k: Any, nprobe: Any, rerank: Any, ef: Any) -> tuple[int, int, int, int]:
        params = self._config.params
        k = as_k(k)
        if nprobe is None:
            nprobe = params.nprobe or auto_nprobe(len(self._snapshots.current.buckets))
        else:
            nprobe = as_positive_int("nprobe", nprobe, 1_000_000)
        rerank = params.rerank if rerank is None else as_positive_int("rerank", rerank, 1_000)
        ef = params.ef if ef is None else as_positive_int("ef", ef, 100_000)
        return k, nprobe, rerank, ef

    def _allowed_masks(self, snap: Snapshot, flt: dict[str, str]) -> dict[int, np.ndarray]:
        memo_key = (tuple(sorted(flt.items())), self._payloads.version)
        masks = snap.filter_masks.get(memo_key)
        if masks is not None:
            return masks
        allowed_ids = self._payloads.lookup(flt)
        masks = {}
        for seg_id, seg in snap.segments.items():
            keep = np.isin(seg.ids(), allowed_ids)
            masks[seg_id] = np.where(keep, snap.dead[seg_id], np.uint8(1)).astype(np.uint8)
        if len(snap.filter_masks) > 64:
            snap.filter_masks.clear()
        snap.filter_masks[memo_key] = masks
        return masks

    def _search_one(
        self, snap: Snapshot, q: np.ndarray, k: int, nprobe: int, rerank: int, ef: int, flt: dict[str, str] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        masks = None if flt is None else self._allowed_masks(snap, flt)
        return search_hybrid(snap, q, k, nprobe, rerank, ef, self.metric, masks, flt)

    def search(
        self,
        query: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
    ) -> SearchResult:
        """The ``k`` nearest live vectors to ``query`` (exact distances, pgvector semantics)."""
        self._check_open()
        q = query_vector(query, self.dim, self.metric)
        k, nprobe, rerank, ef = self._search_args(k, nprobe, rerank, ef)
        flt = None if filter is None else as_filter(filter)
        fg = self._maintainer.foreground if self._maintainer is not None else None
        token = fg.begin() if fg is not None else 0
        snap = self._snapshots.acquire()
        try:
            masks = None if flt is None else self._allowed_masks(snap, flt)
            ids, dists = search_fast(snap, q, k, nprobe, rerank, ef, self.metric, masks, flt)
        finally:
            self._snapshots.release(snap)
            if fg is not None:
                fg.end(token)
        return SearchResult(ids, dists, self._payload_loader)

    def search_batch(
        self,
        queries: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of shape (m, k); missing results are id -1 and distance inf."""
        self._check_open()
        qs = as_vectors(queries, self.dim, self.metric)
        k, nprobe, rerank, ef = self._search_args(k, nprobe, rerank, ef)
        flt = as_filter(filter)
        out_ids = np.full((qs.shape[0], k), -1, dtype=np.int64)
        out_d = np.full((qs.shape[0], k), np.inf, dtype=np.float32)
        with self._snapshots.pin() as snap:
            for i in range(qs.shape[0]):
                ids, dists = self._search_one(snap, qs[i], k, nprobe, rerank, ef, flt)
                out_ids[i, : ids.size] = ids
                out_d[i, : ids.size] = dists
        return out_ids, out_d

    def _payload_loader(self, ids: np.ndarray) -> list[dict | None]:
        with self._snapshots.pin() as snap:
            got = self._reads.get(snap, as_ids(ids, allow_duplicates=True), vectors=False)
        by_id = dict(zip(got.ids.tolist(), got.payloads, strict=True))
        return [by_id.get(i) for i in ids.tolist()]

    def get(self, ids: Any) -> GetResult:
        """Vectors and payloads of the ids that exist, in request order (absent ids are left out); read
        from one pinned snapshot (``engine.reads``)."""
        self._check_open()
        id_arr = as_ids(ids, allow_duplicates=True)
        bound = self._writes.visible_lsn  # before the pin: see ``read_lsn`` in engine.writes
        with self._snapshots.pin() as snap:
            got = self._reads.get(snap, id_arr)
        got.read_lsn = bound
        return got

    def scan(
        self, batch_size: int | None = None, *, vectors: bool = True, payloads: bool = True
    ) -> Iterator[GetResult]:
        """Every live vector, in id order, in ``GetResult`` batches of at most ``batch_size`` rows (default
        1000), all from one pinned snapshot (held until the generator is exhausted or closed; consume it
        promptly). ``vectors=False`` / ``payloads=False`` skip reading them (zero vectors / ``None`` payloads)."""
        self._check_open()
        batch = as_positive_int("batch_size", 1000 if batch_size is None else batch_size, 1_000_000)
        return self._scan(batch, vectors=vectors, payloads=payloads)

    def _scan(self, batch: int, *, vectors: bool, payloads: bool) -> Iterator[GetResult]:
        bound = self._writes.visible_lsn
        with self._snapshots.pin() as snap:
            for got in self._reads.scan(snap, batch, vectors=vectors, payloads=payloads):
                got.read_lsn = bound
                yield got

    def search_stream(self, query: Any, k: int | None = None, **options: Any) -> Iterator[StreamHit]:
        """Rows (``StreamHit``) in non-decreasing distance, lazily, never an id twice (``engine.stream``):
        options ``nprobe``, ``rerank``, ``ef``, ``filter``, ``max_distance``, ``batch_size``, ``limit``,
        ``with_payloads``, ``max_k``."""
        self._check_open()
        return search_stream(self, query, k, **options)

    # ------------------------------------------------------------------ params & stats
    def set_params(self, **params: Any) -> dict[str, Any]:
        """Change search/maintenance parameters at runtime (validated, persisted); returns all params."""
        self._check_open()
        if not params:
            raise InvalidArgumentError("set_params needs at least one parameter")
        with self._l1_lock:
            new_params = self._config.params.updated(**params)
            new_config = CollectionConfig(self.name, self.dim, self.metric, new_params)
            with self._kv.write() as batch:
                batch.put(L.DB_META, L.KEY_CONFIG, json.dumps(new_config.to_dict()).encode())
            self._config = new_config
            self._snapshots.update(
                lambda cur: dataclasses.replace(
                    cur,
                    version=cur.version + 1,
                    routing=build_routing(cur.trained, dict(cur.buckets), new_params.lam, new_params.tau),
                )
            )
        return self.params()

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "metric": self.metric, **self._config.params.to_dict()}

    def stats(self, buckets: bool = False) -> dict[str, Any]:
        """Collection statistics (``engine.stats``); ``buckets=True`` adds ``bucket_stats``: one dict per
        bucket with count, drift, spread, inserts_since_centroid, extents, dead_rows and the pending job."""
        return collection_stats(self, buckets)

    # ------------------------------------------------------------------ lifecycle
    def close(self, *, flush: bool = True) -> None:
        """Stop the Janitor, flush memtables to L1 (best effort: the WAL holds them anyway), fsync, close."""
        with self._writes.lock:
            if self._closed:
                return
            self._closed = True
        if self._maintainer is not None:
            self._maintainer.stop()
        if self._janitor is not None:
            self._janitor.stop()
        if flush:
            try:
                with self._writes.lock:
                    self._writes.rotate_locked()
                with self._l1_lock:
                    for mt in self._writes.frozen():
                        self._flush_one(mt)
            except Exception:
                log.exception("flush at close failed; the WAL keeps the data for the next open")
        with self._l1_lock:
            self._writes.close()
            self._snapshots.close()
            for seg in self._snapshots.current.segments.values():
                seg.close()
            self._kv.close()
