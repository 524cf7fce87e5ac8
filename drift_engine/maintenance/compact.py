"""Compaction: rewriting live rows in place to shed dead rows, extents and small segments (DESIGN §9).

Contract: both planners read one snapshot and return an ``l1.rewrite.Plan`` whose rows all stay in their
bucket (destination = source), so no centroid, count or drift statistic changes except that a compacted
bucket's sums are re-derived exactly from its rows (``resync``).

* ``plan_compact_bucket``: every live row of one bucket goes into a single new extent. Run when the bucket
  has more than ``compact_extents`` extents (each flush adds one) or when most rows of its extents are dead.
* ``plan_compact_segments``: every live row of the given segments goes into one new segment, grouped by
  bucket. Run when many small or mostly dead segments accumulate (each flush and each maintenance job
  writes one), so a query touches few segment files; the emptied segments are retired by the commit.
"""

from __future__ import annotations

from drift_engine.l1.rewrite import Plan, Rows, bucket_rows, segment_rows
from drift_engine.l1.snapshot import Snapshot


def plan_compact_bucket(snap: Snapshot, bucket_id: int) -> Plan | None:
    if bucket_id not in snap.buckets:
        return None
    rows = bucket_rows(snap, bucket_id)
    info = {"extents": len(snap.buckets[bucket_id].extents)}
    return Plan("compact", rows, rows.bucket.copy(), resync={bucket_id}, info=info)


def plan_compact_segments(snap: Snapshot, segment_ids: list[int]) -> Plan | None:
    segs = [s for s in segment_ids if s in snap.segments]
    if not segs:
        return None
    dim = snap.segments[segs[0]].reader.dim
    rows = Rows.concat([segment_rows(snap, s) for s in segs], dim)
    return Plan("compact_segments", rows, rows.bucket.copy(), info={"segments": len(segs)})
