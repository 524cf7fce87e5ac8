"""Scatter merge, DESIGN §9.

Contract: ``plan_merge(snap, bucket, metric)`` reads one snapshot and returns an ``l1.rewrite.Plan`` that moves
every live vector of the bucket to its best *other* bucket by the snapshot's own routing score (what a
flush or a query would pick if the bucket did not exist) and drops the bucket; ``None`` when the bucket is
the only one. An empty bucket is simply dropped. The receiving buckets keep their centroids; the moved
vectors count as inserts since their centroids were set (so drift-aware routing sees them).

``plan_reassign(snap, bucket, metric)`` moves only the vectors of a bucket whose best bucket by the same routing
is another one (a Lloyd assignment step for one bucket; run on demand, ``MaintenanceRunner.run_job``).
"""

from __future__ import annotations

import numpy as np

from drift_engine.index.routing import route_batch
from drift_engine.l1.rewrite import Plan, bucket_rows
from drift_engine.l1.snapshot import Snapshot


def plan_merge(snap: Snapshot, bucket_id: int, metric: str) -> Plan | None:
    if snap.routing is None or len(snap.buckets) < 2 or bucket_id not in snap.buckets:
        return None
    rows = bucket_rows(snap, bucket_id)
    if rows.size == 0:
        dst = np.empty(0, dtype=np.int64)
    else:
        best = route_batch(snap.routing, rows.vectors, 2, metric)
        dst = np.where(best[:, 0] == bucket_id, best[:, 1], best[:, 0]).astype(np.int64)
    info = {"receivers": int(np.unique(dst).size)}
    return Plan("merge", rows, dst, drop={bucket_id}, info=info)


def plan_reassign(snap: Snapshot, bucket_id: int, metric: str) -> Plan | None:
    """Move the vectors of ``bucket_id`` whose best bucket by the snapshot's routing is another one there (one
    Lloyd assignment step for one bucket); ``None`` when every vector is already where a query would look."""
    if snap.routing is None or bucket_id not in snap.buckets:
        return None
    rows = bucket_rows(snap, bucket_id)
    if rows.size == 0:
        return None
    best = route_batch(snap.routing, rows.vectors, 1, metric)[:, 0].astype(np.int64)
    away = best != bucket_id
    if not away.any():
        return None
    return Plan("reassign", rows.take(away), best[away], info={"misplaced": int(np.count_nonzero(away))})
