"""Urgency of maintenance jobs, per-bucket drift statistics, and the rate-limited Maintainer thread (DESIGN §9).

Contract
--------
* ``bucket_table(snap, params)`` computes, for every bucket of a trained snapshot, the live count ``n``,
  drift ``δ = ‖μ − c‖``, spread ``r``, inserts since the centroid was set ``a``, extents and dead rows, and the
  urgency of each job kind (a job is pending when its urgency is > 0):

  - ``split``:  ``n / split_size − 1``
  - ``merge``:  ``merge_size / n − 1`` (an empty bucket: ``merge_size``), only for buckets that changed since
    they were laid out (inserts or dead rows), so a freshly trained partition is left as the user asked;
  - ``drift``:  ``δ / (drift_split · r) − 1`` (a re-split, or a re-centre when the bucket is small);
  - ``compact``: half of ``max(extents / compact_extents − 1, 2 · dead share − 1)`` (housekeeping ranks below
    structure).

  ``drift_split = 0``, ``merge_factor = 0`` or ``compact_extents = 0`` turn a kind off. The urgency of a
  bucket is the max of its kinds (DESIGN's ``max(n/split_size − 1, merge_size/n − 1, δ/(drift_split·r) − 1)``).
* ``segment_job`` proposes tiered segment compaction: segments are grouped in size tiers (factor
  ``SEGMENT_TIER_RATIO`` apart) and a tier holding two or more is merged, so about one segment per tier remains
  (every flush and maintenance job writes a segment; each one a query touches costs a kernel call).
* ``pending_jobs`` returns every pending job, most urgent first (a priority queue, rebuilt from each snapshot).
* ``Maintainer``: a daemon thread per collection. Every ``maintain_interval`` seconds (or on ``wake``) it runs
  the most urgent job, one at a time, until none is pending, paced by measured foreground latency rather than
  a fixed duty (``maintenance.throttle``): its ``foreground`` monitor sees every ``Collection.search``; a job
  starts only when no search is in flight (or after ``max_wait``), and after a job the Maintainer sleeps a
  multiple of the job's time that grows while the p99 of searches overlapping jobs exceeds ``max_slowdown``
  times the idle p99 and shrinks (to no pause) when it does not; with no searches lately it runs back to
  back. ``maintain_duty = 0`` parks it (any other value enables it). A failing job is logged, kept in
  ``last_error`` and retried with backoff; it never loses data (a job changes L1 in one commit or not at
  all). ``stop`` joins the thread.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drift_engine.config import CollectionParams
from drift_engine.l1.snapshot import Snapshot
from drift_engine.maintenance.loop import BackgroundLoop
from drift_engine.maintenance.throttle import ForegroundMonitor, LatencyThrottle

log = logging.getLogger(__name__)

SEGMENT_TIER_BASE = 16  # segments below this many target buckets of live rows form tier 0
SEGMENT_TIER_RATIO = 8  # each further tier holds segments this many times larger
MAX_SEGMENTS_PER_MERGE = 32
KINDS = ("split", "merge", "drift", "compact")


@dataclass(order=True)
class Job:
    urgency: float
    kind: str = field(compare=False)
    bucket: int = field(compare=False, default=-1)
    segments: tuple[int, ...] = field(compare=False, default=())
    count: int = field(compare=False, default=0)
    extents: int = field(compare=False, default=0)

    @property
    def key(self) -> tuple:
        """Identity used to avoid retrying a job that did nothing until its bucket changes."""
        return (self.kind, self.bucket, self.count, self.extents, self.segments)


@dataclass
class BucketTable:
    """Per-bucket statistics of one snapshot, in ``snap.routing`` order."""

    ids: np.ndarray
    count: np.ndarray
    drift: np.ndarray
    spread: np.ndarray
    inserts: np.ndarray
    extents: np.ndarray
    dead_rows: np.ndarray
    urgency: dict[str, np.ndarray]

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """(urgency, kind index into KINDS) of each bucket."""
        stack = np.stack([self.urgency[k] for k in KINDS])
        kind = np.argmax(stack, axis=0)
        return stack[kind, np.arange(stack.shape[1])], kind


def bucket_table(snap: Snapshot, params: CollectionParams) -> BucketTable | None:
    table = snap.routing
    if not snap.trained or table is None:
        return None
    ids = table.bucket_ids
    headers = [snap.buckets[b] for b in ids.tolist()]
    n = table.counts
    drift = np.sqrt(np.einsum("ij,ij->i", table.means - table.centroids, table.means - table.centroids))
    drift = np.where(n > 0, drift, 0.0)
    spread = table.spreads.astype(np.float64)
    inserts = table.inserts
    extents = np.fromiter((len(h.extents) for h in headers), dtype=np.float64, count=len(headers))
    ext_rows = np.fromiter((sum(e.count for e in h.extents) for h in headers), dtype=np.float64, count=len(headers))
    dead_rows = np.maximum(ext_rows - n, 0.0)
    none = np.full(n.shape, -np.inf)
    urg: dict[str, np.ndarray] = {}
    urg["split"] = n / params.split_size - 1.0
    merge_size = params.merge_size
    if merge_size > 0 and ids.size > 1:
        changed = (inserts > 0) | (dead_rows > 0)
        m = np.where(n > 0, merge_size / np.maximum(n, 1.0) - 1.0, float(merge_size))
        urg["merge"] = np.where(changed, m, -np.inf)
    else:
        urg["merge"] = none
    if params.drift_split > 0:
        ok = (n >= 2) & (spread > 0) & (inserts > 0)
        urg["drift"] = np.where(ok, drift / (params.drift_split * np.where(ok, spread, 1.0)) - 1.0, -np.inf)
    else:
        urg["drift"] = none
    if params.compact_extents > 0:
        by_extents = extents / params.compact_extents - 1.0
        by_dead = np.where(ext_rows > 0, 2.0 * dead_rows / np.maximum(ext_rows, 1.0) - 1.0, -1.0)
        by_dead = np.where(dead_rows >= 16, by_dead, -1.0)  # a few dead rows are not worth a rewrite
        urg["compact"] = 0.5 * np.maximum(by_extents, by_dead)
    else:
        urg["compact"] = none
    return BucketTable(ids, n, drift, spread, inserts, extents, dead_rows, urg)


def segment_tier(live: int, target_bucket_size: int) -> int:
    """Size tier of a segment holding ``live`` rows: 0 below ``SEGMENT_TIER_BASE`` target buckets, then one tier
    per factor ``SEGMENT_TIER_RATIO``."""
    base = SEGMENT_TIER_BASE * target_bucket_size
    if live < base:
        return 0
    return 1 + int(math.log(live / base, SEGMENT_TIER_RATIO))


def segment_job(snap: Snapshot, params: CollectionParams) -> Job | None:
    """Tiered segment compaction: merge the segments of the smallest tier that holds more than one (mostly dead
    segments count in the tier of their live rows), so a collection keeps about one segment per size tier — a
    query touches few files — while each row is rewritten only about once per tier."""
    tiers: dict[int, list[int]] = {}
    for s, seg in snap.segments.items():
        mask = snap.dead[s]
        live = int(mask.size - np.count_nonzero(mask))
        tiers.setdefault(segment_tier(live, params.target_bucket_size), []).append(s)
        if live * 4 < seg.n_rows and seg.n_rows >= SEGMENT_TIER_BASE * params.target_bucket_size:
            tiers.setdefault(-1, []).append(s)  # mostly dead: worth rewriting even alone
    for tier in sorted(tiers):
        members = tiers[tier]
        if len(members) > 1 or tier == -1:
            chosen = tuple(sorted(members)[:MAX_SEGMENTS_PER_MERGE])
            return Job(0.25, "segments", segments=chosen)
    return None


def pending_jobs(snap: Snapshot, params: CollectionParams) -> list[Job]:
    """Every pending job, most urgent first."""
    bt = bucket_table(snap, params)
    if bt is None:
        return []
    urgency, kind = bt.best()
    jobs = [
        Job(float(urgency[i]), KINDS[kind[i]], int(bt.ids[i]), (), int(bt.count[i]), int(bt.extents[i]))
        for i in np.flatnonzero(urgency > 0).tolist()
    ]
    seg = segment_job(snap, params)
    if seg is not None:
        jobs.append(seg)
    jobs.sort(reverse=True)
    return jobs


def bucket_stats(snap: Snapshot, params: CollectionParams) -> list[dict[str, Any]]:
    """One dict per bucket: bucket, count, drift, spread, drift_ratio (δ/r), inserts_since_centroid, extents,
    dead_rows, urgency and the most urgent job kind (None when nothing is pending)."""
    bt = bucket_table(snap, params)
    if bt is None:
        return []
    urgency, kind = bt.best()
    out = []
    for i, b in enumerate(bt.ids.tolist()):
        r = float(bt.spread[i])
        out.append(
            {
                "bucket": int(b),
                "count": int(bt.count[i]),
                "drift": float(bt.drift[i]),
                "spread": r,
                "drift_ratio": float(bt.drift[i] / r) if r > 0 else 0.0,
                "inserts_since_centroid": int(bt.inserts[i]),
                "extents": int(bt.extents[i]),
                "dead_rows": int(bt.dead_rows[i]),
                "urgency": float(urgency[i]) if np.isfinite(urgency[i]) else None,
                "pending": KINDS[kind[i]] if urgency[i] > 0 else None,
            }
        )
    return out


def maintenance_stats(
    snap: Snapshot,
    params: CollectionParams,
    totals: dict[str, float],
    last_error: str | None,
    *,
    pending: int,
    with_buckets: bool,
) -> dict[str, Any]:
    """The maintenance part of ``Collection.stats``: drift summary, pending jobs (not counting the ones known to
    make no progress), totals since open."""
    per_bucket = bucket_stats(snap, params)
    ratio = np.array([b["drift_ratio"] for b in per_bucket], dtype=np.float64)
    out: dict[str, Any] = {
        "drift_ratio_max": float(ratio.max()) if ratio.size else 0.0,
        "drift_ratio_mean": float(ratio.mean()) if ratio.size else 0.0,
        "maintenance_pending": pending,
        "maintenance_jobs": int(totals.get("jobs", 0)),
        "splits": int(totals.get("splits", 0)),
        "recentres": int(totals.get("recentres", 0)),
        "merges": int(totals.get("merges", 0)),
        "compactions": int(totals.get("compactions", 0) + totals.get("segment_compactions", 0)),
        "moved_vectors": int(totals.get("moved", 0)),
        "maintainer_error": last_error,
    }
    if with_buckets:
        out["bucket_stats"] = per_bucket
    return out


class Maintainer(BackgroundLoop):
    """Background thread running maintenance jobs, paced by foreground latency (module docstring)."""

    def __init__(
        self,
        name: str,
        run_one: Callable[[], bool],
        get_params: Callable[[], CollectionParams],
        *,
        monitor: ForegroundMonitor | None = None,
        throttle: LatencyThrottle | None = None,
    ) -> None:
        super().__init__(f"drift-maintainer-{name}")
        self._run_one = run_one
        self._params = get_params
        self.foreground = monitor if monitor is not None else ForegroundMonitor()
        self.throttle = throttle if throttle is not None else LatencyThrottle(self.foreground)
        self.jobs = 0
        self.busy_seconds = 0.0
        self.paused_seconds = 0.0
        self.last_error: str | None = None
        self.start()

    def run(self) -> None:
        backoff = 0.0
        while not self.wait(max(self._params().maintain_interval, backoff)):
            while not self.stopping:
                if self._params().maintain_duty <= 0:
                    break
                self.throttle.wait_quiet()
                t0 = time.perf_counter()
                self.foreground.job_started()
                try:
                    did = self._run_one()
                except Exception as exc:  # keep the thread alive; a job commits fully or not at all
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("maintenance job failed")
                    backoff = min(60.0, max(1.0, backoff * 2))
                    break
                finally:
                    self.foreground.job_finished()
                backoff = 0.0
                if not did:
                    break
                spent = time.perf_counter() - t0
                self.jobs += 1
                self.busy_seconds += spent
                pause = self.throttle.pause_after(spent)
                self.paused_seconds += pause
                if pause > 0 and self.sleep(pause):
                    return
