"""Applying a batch of upserts and deletes to L1 (the Janitor's flush), in the commit order of DESIGN §7.

Contract: ``apply_batch`` is called with the L1 lock held (L1 changes only there: flush, train,
maintenance). It

1. writes the batch's vectors into new segment files, grouped by bucket (routing like search does;
   one flat bucket before the first train) — crash point ``flush.after_segments``;
2. commits one LMDB transaction: locations, payloads, bucket headers (counts and running sums),
   dead-row masks of superseded or deleted rows, the new segments, and ``applied_lsn`` — crash point
   ``flush.after_commit``;

and returns the new L1 fields for the caller to publish (step 3). If it raises, the LMDB transaction
did not commit: the new files are removed and nothing changed. Everything that can fail (writing and
opening the new segments, routing) happens before the commit; after it only in-memory assembly remains,
so a caller may treat "returned" as "committed" and "raised" as "not committed".
Each location records its row's version: ``row_lsns[j]`` (the lsn of the write that made row ``j``, from
the memtable) when given, else ``applied_lsn`` (a bulk write: one record).

Before committing, it records the prior L1 state of every id it adds, replaces or deletes in the
snapshot manager's payload history (``snapshot`` module docstring), so readers of older snapshots keep
reading their own payloads; the entry is dropped again if the commit fails.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from drift_engine import crashpoints
from drift_engine.index.buckets import BucketHeader, routing_table
from drift_engine.index.routing import route_batch
from drift_engine.l1 import layout as L
from drift_engine.l1.hydrate import Counter
from drift_engine.l1.segments import remove_files, write_bucketed_segments
from drift_engine.l1.snapshot import NOT_IN_L1, OpenSegment, Snapshot, SnapshotManager
from drift_engine.storage import sq8 as sq8_codec
from drift_engine.storage.cache import S3FIFOCache
from drift_engine.storage.kv import KV, encode_i64


@dataclass
class L1Fields:
    """The L1 part of a snapshot: what a flush, train or maintenance job publishes."""

    trained: bool
    sq8: Any
    buckets: dict[int, BucketHeader]
    routing: Any
    segments: dict[int, OpenSegment]
    dead: dict[int, np.ndarray]
    live_count: int
    l1_lsn: int

    def as_changes(self) -> dict[str, Any]:
        for mask in self.dead.values():
            mask.setflags(write=False)
        return {
            "trained": self.trained,
            "sq8": self.sq8,
            "buckets": self.buckets,
            "routing": self.routing,
            "segments": self.segments,
            "dead": self.dead,
            "live_count": self.live_count,
            "l1_lsn": self.l1_lsn,
        }


def build_routing(trained: bool, buckets: dict[int, BucketHeader], lam: float, tau: float) -> Any:
    return routing_table(buckets.values(), lam=lam, tau=tau) if trained and buckets else None


class L1Applier:
    def __init__(
        self,
        kv: KV,
        seg_dir: str,
        cache: S3FIFOCache,
        next_segment: Counter,
        cache_key: str,
        snapshots: SnapshotManager | None = None,
    ) -> None:
        self.kv = kv
        self.seg_dir = seg_dir
        self.cache = cache
        self.next_segment = next_segment
        self.cache_key = cache_key
        self.snapshots = snapshots

    def _old_vectors(self, snap: Snapshot, locs: list[L.Location], dim: int) -> np.ndarray:
        out = np.empty((len(locs), dim), dtype=np.float32)
        for j, loc in enumerate(locs):
            out[j] = snap.segments[loc.segment].vectors()[loc.row]
        return out

    def apply_batch(
        self,
        snap: Snapshot,
        ids: np.ndarray,
        vectors: np.ndarray,
        payloads: list[bytes | None],
        delete_ids: np.ndarray,
        applied_lsn: int,
        *,
        metric: str,
        lam: float,
        tau: float,
        rows_per_segment: int,
        row_lsns: np.ndarray | None = None,
    ) -> L1Fields:
        dim = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[0] else None
        up_keys = [encode_i64(i) for i in ids.tolist()]
        del_keys = [encode_i64(i) for i in delete_ids.tolist()]
        raw = self.kv.get_many(L.DB_LOC, up_keys + del_keys)
        old_locs = [(j, L.Location.unpack(b)) for j, b in enumerate(raw) if b is not None]
        priors: list = [NOT_IN_L1] * len(raw)
        if self.snapshots is not None and old_locs:
            old_pay = self.kv.get_many(L.DB_PAYLOAD, [(up_keys + del_keys)[j] for j, _ in old_locs])
            for (j, _), pay in zip(old_locs, old_pay, strict=True):
                priors[j] = pay
        buckets = dict(snap.buckets)
        dead = dict(snap.dead)
        touched_dead: set[int] = set()
        touched_buckets: set[int] = set()
        seg_dim = next(iter(snap.segments.values())).reader.dim if snap.segments else dim
        if old_locs:
            locs = [loc for _, loc in old_locs]
            old_vecs = self._old_vectors(snap, locs, seg_dim)
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
                touched_buckets.add(b)

        written: list = []
        sq8 = snap.sq8
        labels = np.empty(0, dtype=np.int64)
        seg_of = row_of = labels
        if ids.size:
            if snap.trained:
                labels = route_batch(snap.routing, vectors, 1, metric)[:, 0].astype(np.int64)
            else:
                if sq8 is None:  # flat collection: provisional ranges; train replaces them
                    sq8 = sq8_codec.train_sq8(vectors, 0.0)
                if 0 not in buckets:
                    buckets[0] = BucketHeader.new(0, vectors.mean(axis=0).astype(np.float32))
                labels = np.zeros(ids.size, dtype=np.int64)
            written, seg_of, row_of = write_bucketed_segments(
                self.seg_dir, self.next_segment.take, sq8, ids, vectors, labels, rows_per_segment=rows_per_segment
            )
        new_segments: dict[int, OpenSegment] = {}
        history = None
        try:
            crashpoints.hit("flush.after_segments")
            if ids.size:
                order = np.argsort(labels, kind="stable")
                cuts = np.flatnonzero(np.diff(labels[order])) + 1
                for part in np.split(order, cuts):
                    b = int(labels[part[0]])
                    header = buckets[b] if b in touched_buckets else buckets[b].copy()
                    header.add(vectors[part])
                    buckets[b] = header
                    touched_buckets.add(b)
                for w in written:
                    for b, ext in w.extents.items():
                        buckets[b].extents.append(ext)
                    dead[w.segment_id] = np.zeros(w.n_rows, dtype=np.uint8)
            for w in written:
                new_segments[w.segment_id] = OpenSegment(w.path, self.cache, collection_key=self.cache_key)
            routing = build_routing(snap.trained, buckets, lam, tau)
            if self.snapshots is not None:
                history = self.snapshots.record_priors(
                    applied_lsn, np.concatenate([ids, delete_ids]).astype(np.int64), priors
                )
            with self.kv.write() as batch:
                for j, key in enumerate(up_keys):
                    lsn = applied_lsn if row_lsns is None else int(row_lsns[j])  # the row's own version
                    loc = L.Location(int(labels[j]), int(seg_of[j]), int(row_of[j]), lsn)
                    batch.put(L.DB_LOC, key, loc.pack())
                    if payloads[j] is not None:
                        batch.put(L.DB_PAYLOAD, key, payloads[j])
                    else:
                        batch.delete(L.DB_PAYLOAD, key)
                for key in del_keys:
                    batch.delete(L.DB_LOC, key)
                    batch.delete(L.DB_PAYLOAD, key)
                for b in touched_buckets:
                    batch.put(L.DB_BUCKET, encode_i64(b), buckets[b].to_bytes())
                for s in touched_dead:
                    batch.put(L.DB_DEAD, encode_i64(s), L.pack_dead(dead[s]))
                for w in written:
                    info = {"file": os.path.basename(w.path), "rows": w.n_rows}
                    batch.put(L.DB_SEGMENT, encode_i64(w.segment_id), json.dumps(info).encode())
                batch.put(L.DB_META, L.KEY_NEXT_SEGMENT, L.int_bytes(self.next_segment.peek()))
                batch.put(L.DB_META, L.KEY_APPLIED_LSN, L.int_bytes(applied_lsn))
                if snap.sq8 is None and sq8 is not None:
                    batch.put(L.DB_META, L.KEY_SQ8, sq8.to_bytes())
        except BaseException:
            if history is not None and self.snapshots is not None:
                self.snapshots.forget_priors(history)
            for seg in new_segments.values():
                seg.close()
            remove_files([w.path for w in written])
            raise
        crashpoints.hit("flush.after_commit")
        segments = dict(snap.segments)
        segments.update(new_segments)
        superseded = sum(1 for j, _ in old_locs if j < len(up_keys))
        live = snap.live_count + int(ids.size) - superseded - (len(old_locs) - superseded)
        return L1Fields(snap.trained, sq8, buckets, routing, segments, dead, live, int(applied_lsn))
