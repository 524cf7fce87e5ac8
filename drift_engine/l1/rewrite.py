"""The one L1 rewrite primitive behind split, merge and compaction (DESIGN §7, §9; ``l1.commit``, kind
``MAINTAIN``).

Contract
--------
* A ``Plan`` lists rows to move — id, vector, the location the job read them at (bucket, segment, row) and a
  destination bucket — plus buckets to create (id -> centroid), buckets to drop and existing buckets to
  re-derive exactly ("resync": every live row of such a bucket is in the plan). ``bucket_rows`` and
  ``segment_rows`` read the live rows of a bucket or a segment from a snapshot, for the planners.
* ``commit`` runs with the collection's L1 lock held. Every writer of the LMDB ``loc`` records (flush,
  bulk write, train, maintenance) holds that lock, so the check of step 0 and the commit of step 2 are atomic
  with respect to all of them, exactly as if the check ran inside the write transaction:

  0. compare-and-set: the LMDB location of every moved id is re-read; an id whose location is no longer the
     one the job read (a concurrent upsert or delete got there first and wins) is left alone. If such an id
     belongs to a bucket the plan drops or resyncs, the job is abandoned before anything is written
     (``commit`` returns ``None``);
  1. one new segment file (more only past the row cap) holds the moved rows grouped by destination bucket
     (``write_bucketed_segments``) — crash point ``maintain.after_segments``;
  2. one LMDB transaction: the new locations (original lsn kept), bucket headers, dead masks of the superseded
     rows, the new segment records, removal of dropped buckets and of segments left without any live row,
     ``next_segment`` and ``next_bucket`` — crash point ``maintain.after_commit``;
  3. one snapshot with the routing table rebuilt is published, and
  4. the segments that no longer hold a live row go to epoch-based reclamation.

  If anything fails before the LMDB commit the new files are removed and nothing changed; a crash leaves at
  most unreferenced files, which the next open removes. ``applied_lsn`` and the WAL are not involved:
  maintenance never changes what is stored, only where.
* Statistics stay exact. A created bucket's count, running_sum and running_sq are computed from the rows it
  holds, with inserts_since_centroid = 0. A resynced bucket is recomputed the same way, keeping its centroid
  and adding the rows that came from other buckets to its inserts_since_centroid. Any other bucket is updated
  incrementally: ``remove`` for rows that left, ``add`` for rows that arrived (they count as inserts since
  its centroid). Rows that stay in their bucket (destination = source, compaction) change no statistic.
* Extents whose rows are all dead are dropped from the headers, so a segment with no live row is referenced
  by nothing and is removed in the same transaction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drift_engine.index.buckets import BucketHeader
from drift_engine.l1 import layout as L
from drift_engine.l1.commit import MAINTAIN, L1Store
from drift_engine.l1.snapshot import Snapshot, build_routing
from drift_engine.storage.kv import KV, WriteBatch, encode_i64

_EMPTY_I64 = np.empty(0, dtype=np.int64)


class PlanConflict(Exception):
    """The plan no longer matches L1 (a bucket it drops or resyncs holds rows the plan does not move)."""


@dataclass
class Rows:
    """Live rows of L1: ids, float32 vectors and where each one is (bucket, segment, row)."""

    ids: np.ndarray
    vectors: np.ndarray
    bucket: np.ndarray
    segment: np.ndarray
    row: np.ndarray

    @property
    def size(self) -> int:
        return int(self.ids.size)

    def take(self, sel: np.ndarray) -> Rows:
        return Rows(self.ids[sel], self.vectors[sel], self.bucket[sel], self.segment[sel], self.row[sel])

    @classmethod
    def empty(cls, dim: int) -> Rows:
        return cls(_EMPTY_I64, np.empty((0, dim), np.float32), _EMPTY_I64, _EMPTY_I64, _EMPTY_I64)

    @classmethod
    def concat(cls, parts: list[Rows], dim: int) -> Rows:
        parts = [p for p in parts if p.size]
        if not parts:
            return cls.empty(dim)
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))


def bucket_rows(snap: Snapshot, bucket_id: int) -> Rows:
    """Every live row of one bucket (its extents minus the snapshot's dead rows)."""
    header = snap.buckets[bucket_id]
    parts = []
    for ext in header.extents:
        mask = snap.dead[ext.segment_id][ext.start : ext.start + ext.count]
        live = np.flatnonzero(mask == 0)
        if live.size == 0:
            continue
        rows = live.astype(np.int64) + ext.start
        seg = snap.segments[ext.segment_id]
        parts.append(
            Rows(
                seg.ids()[rows],
                seg.vectors()[rows],
                np.full(rows.size, bucket_id, dtype=np.int64),
                np.full(rows.size, ext.segment_id, dtype=np.int64),
                rows,
            )
        )
    return Rows.concat(parts, header.dim)


def segment_rows(snap: Snapshot, segment_id: int) -> Rows:
    """Every live row of one segment, with the bucket whose extent holds it."""
    parts = []
    for b, header in snap.buckets.items():
        for ext in header.extents:
            if ext.segment_id != segment_id:
                continue
            mask = snap.dead[segment_id][ext.start : ext.start + ext.count]
            rows = np.flatnonzero(mask == 0).astype(np.int64) + ext.start
            if rows.size:
                seg = snap.segments[segment_id]
                parts.append(
                    Rows(
                        seg.ids()[rows],
                        seg.vectors()[rows],
                        np.full(rows.size, b, dtype=np.int64),
                        np.full(rows.size, segment_id, dtype=np.int64),
                        rows,
                    )
                )
    return Rows.concat(parts, snap.segments[segment_id].reader.dim)


@dataclass
class Plan:
    """What a maintenance job wants L1 to become; see the module docstring."""

    kind: str
    rows: Rows  # rows to (re)write, where the job read them
    dst: np.ndarray  # int64[m]: destination bucket of each row
    new_buckets: dict[int, np.ndarray] = field(default_factory=dict)  # created bucket id -> centroid
    drop: set[int] = field(default_factory=set)
    resync: set[int] = field(default_factory=set)
    info: dict[str, Any] = field(default_factory=dict)

    def take(self, sel: np.ndarray) -> Plan:
        return dataclasses.replace(self, rows=self.rows.take(sel), dst=self.dst[sel])


@dataclass
class Outcome:
    """What a committed and published plan did."""

    kind: str
    moved: int  # rows that changed bucket
    rewritten: int  # rows written into the new segment(s)
    skipped: int  # rows left alone by the compare-and-set
    created: list[int]
    dropped: list[int]
    info: dict[str, Any]


def check_locations(kv: KV, plan: Plan) -> tuple[Plan, np.ndarray] | None:
    """Compare-and-set step: keep the rows whose LMDB location is still the one the job read.

    Returns the reduced plan and the lsn of each kept row, or ``None`` when a dropped or resynced bucket
    would keep a row (the job must be re-planned)."""
    r = plan.rows
    raw = kv.get_many(L.DB_LOC, [encode_i64(i) for i in r.ids.tolist()])
    ok = np.zeros(r.size, dtype=bool)
    lsn = np.zeros(r.size, dtype=np.int64)
    for j, (data, b, s, row) in enumerate(zip(raw, r.bucket.tolist(), r.segment.tolist(), r.row.tolist(), strict=True)):
        if data is None:
            continue
        loc = L.Location.unpack(data)
        if loc.bucket == b and loc.segment == s and loc.row == row:
            ok[j] = True
            lsn[j] = loc.lsn
    if ok.all():
        return plan, lsn
    lost = set(r.bucket[~ok].tolist())
    if lost & (plan.drop | plan.resync):
        return None
    return plan.take(ok), lsn[ok]


def _new_headers(snap: Snapshot, plan: Plan) -> tuple[dict[int, BucketHeader], set[int]]:
    """Bucket headers after the moves (extents not yet updated) and the ids of the changed ones."""
    headers = dict(snap.buckets)
    changed: set[int] = set()
    r = plan.rows
    src, dst = r.bucket, plan.dst
    leaving = src != dst
    full = set(plan.new_buckets) | plan.resync

    def own(b: int) -> BucketHeader:
        if b not in changed:
            headers[b] = headers[b].copy()
            changed.add(b)
        return headers[b]

    for b in np.unique(src[leaving]).tolist():
        if b in full or b in plan.drop:
            continue
        own(b).remove(r.vectors[leaving & (src == b)])
    for b in plan.drop:
        header = headers.get(b)
        if header is None:
            raise PlanConflict(f"bucket {b} to drop does not exist")
        if np.any(dst == b) or header.count != int(np.count_nonzero(src == b)):
            raise PlanConflict(f"bucket {b} holds rows the plan does not move")
        del headers[b]
        changed.discard(b)
    for b in np.unique(dst[leaving]).tolist():
        if b in full:
            continue
        own(b).add(r.vectors[leaving & (dst == b)])
    for b in full:
        sel = dst == b
        if b in plan.new_buckets and not sel.any():
            continue  # every row meant for it was left alone by the compare-and-set: do not create it empty
        if b in plan.new_buckets:
            header = BucketHeader.new(b, plan.new_buckets[b])
            inserts = 0
        else:
            old = headers[b]
            if old.count != int(np.count_nonzero(src == b)):
                raise PlanConflict(f"bucket {b} to resync holds rows the plan does not move")
            header = BucketHeader(b, old.centroid.copy(), extents=list(old.extents))
            inserts = old.inserts_since_centroid + int(np.count_nonzero(sel & (src != b)))
        header.add(r.vectors[sel])
        header.inserts_since_centroid = inserts
        headers[b] = header
        changed.add(b)
    for b in np.unique(dst).tolist():  # rows staying put still get a new extent
        own(b)
    return headers, changed


def _strip_dead_extents(
    headers: dict[int, BucketHeader], changed: set[int], dead: dict[int, np.ndarray], segs: set[int]
) -> None:
    """Drop every extent in ``segs`` whose rows are all dead (copying the headers it changes)."""
    for b, header in list(headers.items()):
        if not any(e.segment_id in segs for e in header.extents):
            continue
        keep = [
            e
            for e in header.extents
            if e.segment_id not in segs or not dead[e.segment_id][e.start : e.start + e.count].all()
        ]
        if len(keep) != len(header.extents):
            if b not in changed:
                header = header.copy()
                headers[b] = header
                changed.add(b)
            header.extents = keep


def commit(
    store: L1Store, snap: Snapshot, plan: Plan, *, next_bucket: int, rows_per_segment: int, lam: float, tau: float
) -> Outcome | None:
    """Steps 0-4 of the module docstring. Call with the L1 lock held; ``None`` when the plan is stale."""
    checked = check_locations(store.kv, plan)
    if checked is None:
        return None
    skipped = plan.rows.size - checked[0].rows.size
    plan, lsns = checked
    r = plan.rows
    headers, changed = _new_headers(snap, plan)  # raises PlanConflict before any file is written
    if r.size == 0 and not plan.drop:
        return None
    with store.change(MAINTAIN) as change:
        seg_of = row_of = _EMPTY_I64
        written: list = []
        if r.size:
            written, seg_of, row_of = change.write_segments(
                snap.sq8, r.ids, r.vectors, plan.dst, rows_per_segment=rows_per_segment
            )
        dead = dict(snap.dead)
        touched: set[int] = set()
        for s in np.unique(r.segment).tolist():
            mask = dead[s].copy()
            mask[r.row[r.segment == s]] = 1
            dead[s] = mask
            touched.add(s)
        for w in written:
            dead[w.segment_id] = np.zeros(w.n_rows, dtype=np.uint8)
            for b, ext in w.extents.items():
                headers[b].extents.append(ext)
        empty = {s for s, mask in dead.items() if mask.size == 0 or mask.all()}
        _strip_dead_extents(headers, changed, dead, touched | empty)

        def stage(batch: WriteBatch) -> None:
            for j, key in enumerate(encode_i64(i) for i in r.ids.tolist()):
                loc = L.Location(int(plan.dst[j]), int(seg_of[j]), int(row_of[j]), int(lsns[j]))
                batch.put(L.DB_LOC, key, loc.pack())
            for b in plan.drop:
                batch.delete(L.DB_BUCKET, encode_i64(b))
            for b in changed:
                batch.put(L.DB_BUCKET, encode_i64(b), headers[b].to_bytes())
            for s in touched - empty:
                batch.put(L.DB_DEAD, encode_i64(s), L.pack_dead(dead[s]))
            for s in empty:
                batch.delete(L.DB_DEAD, encode_i64(s))
                batch.delete(L.DB_SEGMENT, encode_i64(s))
            batch.put(L.DB_META, L.KEY_NEXT_BUCKET, L.int_bytes(next_bucket))

        fields = {
            "buckets": headers,
            "routing": build_routing(True, headers, lam, tau),
            "segments": {s: seg for s, seg in snap.segments.items() if s not in empty},
            "dead": {s: mask for s, mask in dead.items() if s not in empty},
        }
        change.commit(stage, fields, retired=[snap.segments[s] for s in empty if s in snap.segments])
    return Outcome(
        kind=plan.kind,
        moved=int(np.count_nonzero(r.bucket != plan.dst)),
        rewritten=int(r.size),
        skipped=int(skipped),
        created=sorted(b for b in plan.new_buckets if b in headers),
        dropped=sorted(plan.drop),
        info=plan.info,
    )


def next_bucket_id(kv: KV, snap: Snapshot) -> int:
    """First bucket id never used: above the persisted counter and every live bucket."""
    stored = kv.get(L.DB_META, L.KEY_NEXT_BUCKET)
    start = int(stored) if stored is not None else 0
    return max([start, *(b + 1 for b in snap.buckets)])
