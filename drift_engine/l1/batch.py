"""Committing a batch of upserts and deletes to L1 (the Janitor's flush, a bulk write), in the commit order of
DESIGN §7 (``l1.commit``, kind ``FLUSH``).

Contract: ``commit_batch`` is called with the L1 lock held (L1 changes only there: flush, train, maintenance).
It

1. writes the batch's vectors into new segment files, grouped by bucket (routing like search does; one flat
   bucket before the first train) — crash point ``flush.after_segments``;
2. commits one LMDB transaction: locations, payloads, bucket headers (counts and running sums), dead-row masks
   of superseded or deleted rows, the new segments, and ``applied_lsn`` — crash point ``flush.after_commit``;
3. publishes the new L1 fields (trained, sq8, buckets, routing, segments, dead, live_count, l1_lsn): through
   ``install`` when given (a flush drops its memtable in the same snapshot), else in a snapshot of their own —
   at once, or, with ``publish=False``, when the caller calls the returned ``Committed.publish`` (a bulk write).

If it raises, the LMDB transaction did not commit: the new files are removed and nothing changed. Everything
that can fail (writing and opening the new segments, routing) happens before the commit, so a caller may treat
"returned" as "committed" and "raised" as "not committed". Each location records its row's version:
``row_lsns[j]`` (the lsn of the write that made row ``j``, from the memtable) when given, else ``applied_lsn``
(a bulk write: one record).

Before committing, it records the prior L1 state of every id it adds, replaces or deletes in the snapshot
manager's payload history (``l1.snapshot`` module docstring), so readers of older snapshots keep reading their
own payloads; the entry is dropped again if the commit fails.
"""

from __future__ import annotations

import numpy as np

from drift_engine.index.buckets import BucketHeader
from drift_engine.index.routing import route_batch
from drift_engine.l1 import layout as L
from drift_engine.l1.commit import FLUSH, Committed, Install, L1Store
from drift_engine.l1.snapshot import NOT_IN_L1, Snapshot, build_routing
from drift_engine.storage import sq8 as sq8_codec
from drift_engine.storage.kv import WriteBatch, encode_i64


def _old_vectors(snap: Snapshot, locs: list[L.Location], dim: int) -> np.ndarray:
    out = np.empty((len(locs), dim), dtype=np.float32)
    for j, loc in enumerate(locs):
        out[j] = snap.segments[loc.segment].vectors()[loc.row]
    return out


def commit_batch(
    store: L1Store,
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
    install: Install | None = None,
    publish: bool = True,
) -> Committed:
    """Upsert ``ids`` / ``vectors`` / ``payloads`` and delete ``delete_ids`` in L1 (module docstring)."""
    kv, snapshots = store.kv, store.snapshots
    dim = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[0] else None
    up_keys = [encode_i64(i) for i in ids.tolist()]
    del_keys = [encode_i64(i) for i in delete_ids.tolist()]
    raw = kv.get_many(L.DB_LOC, up_keys + del_keys)
    old_locs = [(j, L.Location.unpack(b)) for j, b in enumerate(raw) if b is not None]
    priors: list = [NOT_IN_L1] * len(raw)
    if old_locs:
        old_pay = kv.get_many(L.DB_PAYLOAD, [(up_keys + del_keys)[j] for j, _ in old_locs])
        for (j, _), pay in zip(old_locs, old_pay, strict=True):
            priors[j] = pay
    buckets = dict(snap.buckets)
    dead = dict(snap.dead)
    touched_dead: set[int] = set()
    touched_buckets: set[int] = set()
    seg_dim = next(iter(snap.segments.values())).reader.dim if snap.segments else dim
    if old_locs:
        locs = [loc for _, loc in old_locs]
        old_vecs = _old_vectors(snap, locs, seg_dim)
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

    with store.change(FLUSH) as change:
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
            written, seg_of, row_of = change.write_segments(
                sq8, ids, vectors, labels, rows_per_segment=rows_per_segment
            )
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
        routing = build_routing(snap.trained, buckets, lam, tau)
        history = snapshots.record_priors(applied_lsn, np.concatenate([ids, delete_ids]).astype(np.int64), priors)
        change.on_abort(lambda: snapshots.forget_priors(history))

        def stage(batch: WriteBatch) -> None:
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
            batch.put(L.DB_META, L.KEY_APPLIED_LSN, L.int_bytes(applied_lsn))
            if snap.sq8 is None and sq8 is not None:
                batch.put(L.DB_META, L.KEY_SQ8, sq8.to_bytes())

        superseded = sum(1 for j, _ in old_locs if j < len(up_keys))
        live = snap.live_count + int(ids.size) - superseded - (len(old_locs) - superseded)
        fields = {
            "trained": snap.trained,
            "sq8": sq8,
            "buckets": buckets,
            "routing": routing,
            "segments": dict(snap.segments),
            "dead": dead,
            "live_count": live,
            "l1_lsn": int(applied_lsn),
        }
        return change.commit(stage, fields, install=install, publish=publish)
