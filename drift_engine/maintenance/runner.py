"""Running maintenance jobs against a collection's L1 (used by ``Collection.maintain``, the Maintainer and the
write path; wired into a collection by ``drift_engine.api``).

Contract:

* ``run(max_jobs)`` takes jobs from ``scheduler.pending_jobs`` most urgent first and runs each one entirely under
  the collection's L1 lock — read the snapshot, plan (``split`` / ``drift`` re-split or re-centre / ``merge`` /
  ``compact`` / ``segments``), ``l1.rewrite.commit`` (compare-and-set, then the L1 commit protocol: segment, one
  LMDB transaction, publish, retire) — then releases the lock before the next job, so flushes interleave between
  jobs and each hold is one job long (milliseconds for buckets of a few hundred vectors). It stops when nothing is
  pending, after ``max_jobs`` jobs, or when the collection closes, and returns a summary of what it did. A job
  that cannot make progress (a bucket k-means cannot divide, a stale plan) is remembered by its bucket's identity
  and not retried until that bucket changes; a call runs at most ``4 · buckets + 64`` jobs, so a pathological
  ping-pong cannot spin forever.
* ``split_oversized()`` is called by the write path after a flush or bulk write commits (L1 lock held): it splits
  at once every bucket over the hard cap ``max(split_size, 2 × target_bucket_size)``, so one large write never
  leaves an oversized bucket behind when it returns.
* ``run_job(kind, bucket)`` runs one named job now, pending or not (tests, operators; ``reassign`` moves a bucket's
  vectors whose best bucket is another one — a Lloyd assignment step).
* ``busy`` / ``generation`` tell whether a job is running and how many started (read-only, for benchmarks);
  ``totals`` accumulates the summaries since open (thread-safe).
* ``bucket_stats(snap)`` and ``stats(snap, last_error, with_buckets=)`` are the maintenance part of
  ``Collection.bucket_stats`` / ``Collection.stats`` for one snapshot (``scheduler.bucket_stats`` /
  ``scheduler.maintenance_stats``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from drift_engine.config import CollectionConfig
from drift_engine.l1 import rewrite
from drift_engine.l1.commit import L1Store
from drift_engine.l1.snapshot import Snapshot
from drift_engine.maintenance.compact import plan_compact_bucket, plan_compact_segments
from drift_engine.maintenance.merge import plan_merge, plan_reassign
from drift_engine.maintenance.scheduler import Job, bucket_stats, maintenance_stats, pending_jobs
from drift_engine.maintenance.split import plan_split

log = logging.getLogger(__name__)

COUNTERS = ("jobs", "splits", "recentres", "merges", "reassigns", "compactions", "segment_compactions", "noops")
_KIND_COUNTER = {
    "split": "splits",
    "recentre": "recentres",
    "merge": "merges",
    "reassign": "reassigns",
    "compact": "compactions",
    "compact_segments": "segment_compactions",
}
_MAX_SKIP = 100_000


class _Ids:
    def __init__(self, start: int) -> None:
        self.next = start

    def take(self) -> int:
        value = self.next
        self.next += 1
        return value


class MaintenanceRunner:
    def __init__(
        self,
        store: L1Store,
        get_config: Callable[[], CollectionConfig],
        is_closed: Callable[[], bool],
    ) -> None:
        self._store = store
        self._snapshots = store.snapshots
        self._config = get_config
        self._lock = store.lock
        self._closed = is_closed
        self._skip: set[tuple] = set()
        self.busy = False  # a job is running now (read by benchmarks to class foreground latencies)
        self.generation = 0  # jobs started since open
        self._stats_lock = threading.Lock()
        self.totals: dict[str, float] = {c: 0 for c in (*COUNTERS, "moved", "rewritten", "skipped", "seconds")}

    def pending(self) -> list[Job]:
        snap = self._snapshots.current
        return [j for j in pending_jobs(snap, self._config().params) if j.key not in self._skip]

    def _plan(self, snap: Snapshot, job: Job, ids: _Ids) -> rewrite.Plan | None:
        config = self._config()
        params, metric = config.params, config.metric
        if job.kind == "segments":
            return plan_compact_segments(snap, list(job.segments))
        if job.bucket not in snap.buckets:
            return None
        if job.kind == "split":
            return plan_split(snap, job.bucket, params, metric, ids.take)
        if job.kind == "drift":
            return plan_split(snap, job.bucket, params, metric, ids.take, for_drift=True)
        if job.kind == "merge":
            return plan_merge(snap, job.bucket, metric)
        if job.kind == "compact":
            return plan_compact_bucket(snap, job.bucket)
        if job.kind == "reassign":
            return plan_reassign(snap, job.bucket, metric)
        raise ValueError(f"unknown maintenance job kind {job.kind!r}")

    def _run_job(self, job: Job) -> rewrite.Outcome | None:
        """Plan and commit (and publish) one job under the L1 lock; None when it did nothing."""
        snap = self._snapshots.current
        ids = _Ids(rewrite.next_bucket_id(self._store.kv, snap))
        plan = self._plan(snap, job, ids)
        if plan is None:
            return None
        params = self._config().params
        try:
            return rewrite.commit(
                self._store,
                snap,
                plan,
                next_bucket=ids.next,
                rows_per_segment=params.rows_per_segment,
                lam=params.lam,
                tau=params.tau,
            )
        except rewrite.PlanConflict as exc:
            log.info("maintenance %s of bucket %d abandoned: %s", job.kind, job.bucket, exc)
            return None

    def run(self, max_jobs: int | None = None) -> dict[str, Any]:
        """Run pending jobs now (most urgent first); returns what was done (see the module docstring)."""
        t0 = time.perf_counter()
        summary: dict[str, Any] = {c: 0 for c in COUNTERS}
        summary.update(moved=0, rewritten=0, skipped=0, buckets_before=len(self._snapshots.current.buckets))
        cap = 4 * len(self._snapshots.current.buckets) + 64
        budget = cap if max_jobs is None else max_jobs
        while summary["jobs"] < budget and summary["jobs"] + summary["noops"] < cap:
            with self._lock:
                if self._closed():
                    break
                jobs = self.pending()
                if not jobs:
                    break
                job = jobs[0]
                self.busy = True
                self.generation += 1
                try:
                    outcome = self._run_job(job)
                finally:
                    self.busy = False
            if outcome is None:
                summary["noops"] += 1
                if len(self._skip) > _MAX_SKIP:
                    self._skip.clear()
                self._skip.add(job.key)
                continue
            summary["jobs"] += 1
            summary[_KIND_COUNTER[outcome.kind]] += 1
            summary["moved"] += outcome.moved
            summary["rewritten"] += outcome.rewritten
            summary["skipped"] += outcome.skipped
        summary["buckets_after"] = len(self._snapshots.current.buckets)
        summary["pending"] = len(self.pending())
        summary["seconds"] = round(time.perf_counter() - t0, 6)
        self._account(summary)
        return summary

    def run_job(self, kind: str, bucket: int = -1, segments: tuple[int, ...] = ()) -> dict[str, Any] | None:
        """Run one named job now, pending or not (``split``, ``drift``, ``merge``, ``compact`` of ``bucket``, or
        ``segments``); returns what it did, or None when it could not make progress."""
        with self._lock:
            if self._closed():
                return None
            snap = self._snapshots.current
            if not snap.trained:
                return None
            header = snap.buckets.get(bucket)
            job = Job(0.0, kind, bucket, tuple(segments), header.count if header else 0)
            self.busy = True
            self.generation += 1
            try:
                outcome = self._run_job(job)
            finally:
                self.busy = False
        if outcome is None:
            return None
        return {
            "kind": outcome.kind,
            "moved": outcome.moved,
            "rewritten": outcome.rewritten,
            "skipped": outcome.skipped,
            "created": outcome.created,
            "dropped": outcome.dropped,
            **outcome.info,
        }

    def split_oversized(self) -> int:
        """Split, right now, every bucket over the hard cap ``max(split_size, 2 x target_bucket_size)``.

        Called by the write path (flush, bulk write) after its commit, under the L1 lock, so a bucket that one
        large write overfilled is back under the cap before the write returns. Returns the splits done."""
        done = 0
        with self._lock:
            snap = self._snapshots.current
            params = self._config().params
            if self._closed() or not snap.trained:
                return 0
            cap = max(params.split_size, 2 * params.target_bucket_size)
            for _ in range(4 * len(snap.buckets) + 64):
                snap = self._snapshots.current
                over = [
                    Job(0.0, "split", h.bucket_id, (), h.count, len(h.extents))
                    for h in snap.buckets.values()
                    if h.count > cap
                ]
                job = next((j for j in over if j.key not in self._skip), None)
                if job is None:
                    break
                outcome = self._run_job(job)
                if outcome is None:
                    self._skip.add(job.key)
                    continue
                done += 1
                self._account({"jobs": 1, _KIND_COUNTER[outcome.kind]: 1, "moved": outcome.moved})
        return done

    def _account(self, summary: dict[str, Any]) -> None:
        with self._stats_lock:
            for key in self.totals:
                self.totals[key] += summary.get(key, 0)

    def run_one(self) -> bool:
        """One job (for the Maintainer): True when a job changed L1."""
        return self.run(max_jobs=1)["jobs"] > 0

    def bucket_stats(self, snap: Snapshot) -> list[dict[str, Any]]:
        """Per-bucket drift statistics of ``snap`` (``scheduler.bucket_stats``)."""
        return bucket_stats(snap, self._config().params)

    def stats(self, snap: Snapshot, last_error: str | None, *, with_buckets: bool) -> dict[str, Any]:
        """The maintenance part of ``Collection.stats`` for ``snap`` (``scheduler.maintenance_stats``)."""
        return maintenance_stats(
            snap,
            self._config().params,
            self.totals,
            last_error,
            pending=len(self.pending()),
            with_buckets=with_buckets,
        )
