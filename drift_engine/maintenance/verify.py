"""Consistency check of a collection's L1 (an fsck for buckets): what maintenance must never break.

Contract: ``check_l1(kv, snap)`` reads LMDB and one snapshot (call it with the collection's L1 lock held, or on
a quiescent collection) and returns a list of human-readable problems, empty when L1 is consistent:

* every live row (not dead in its segment's mask) lies in exactly one extent of exactly one bucket, extents do
  not overlap, and every extent lies inside a referenced segment;
* every id appears in exactly one live row, and LMDB ``loc`` maps it to that (bucket, segment, row); LMDB holds
  no other location; ``live_count`` equals the number of locations;
* each bucket's count equals its live rows, and running_sum / running_sq equal a float64 recomputation from
  those rows (relative tolerance ``rtol`` of the data's scale);
* LMDB's bucket headers, dead masks and segment list equal the snapshot's.
"""

from __future__ import annotations

import numpy as np

from drift_engine.index.buckets import BucketHeader
from drift_engine.l1 import layout as L
from drift_engine.l1.hydrate import referenced_segments
from drift_engine.l1.snapshot import Snapshot
from drift_engine.storage.kv import KV, decode_i64, encode_i64


def check_l1(kv: KV, snap: Snapshot, *, rtol: float = 1e-6) -> list[str]:
    problems: list[str] = []
    covered = {s: np.zeros(seg.n_rows, dtype=np.int32) for s, seg in snap.segments.items()}
    seen: dict[int, tuple[int, int, int]] = {}
    for b, header in snap.buckets.items():
        ids_parts, vec_parts = [], []
        for ext in header.extents:
            if ext.segment_id not in snap.segments:
                problems.append(f"bucket {b}: extent in unknown segment {ext.segment_id}")
                continue
            seg = snap.segments[ext.segment_id]
            if ext.start < 0 or ext.count < 0 or ext.start + ext.count > seg.n_rows:
                problems.append(f"bucket {b}: extent {ext} outside segment of {seg.n_rows} rows")
                continue
            covered[ext.segment_id][ext.start : ext.start + ext.count] += 1
            live = np.flatnonzero(snap.dead[ext.segment_id][ext.start : ext.start + ext.count] == 0) + ext.start
            ids = seg.ids()[live]
            ids_parts.append(ids)
            vec_parts.append(seg.vectors()[live])
            for ident, row in zip(ids.tolist(), live.tolist(), strict=True):
                if ident in seen:
                    problems.append(f"id {ident} is live twice: {seen[ident]} and {(b, ext.segment_id, row)}")
                seen[ident] = (b, ext.segment_id, row)
        vecs = np.concatenate(vec_parts).astype(np.float64) if vec_parts else np.zeros((0, header.dim))
        if vecs.shape[0] != header.count:
            problems.append(f"bucket {b}: count {header.count} but {vecs.shape[0]} live rows")
            continue
        scale = max(1.0, float(np.abs(vecs).sum())) if vecs.size else 1.0
        if not np.allclose(header.running_sum, vecs.sum(axis=0), rtol=0, atol=rtol * scale):
            problems.append(f"bucket {b}: running_sum differs from its rows")
        sq = float(np.einsum("ij,ij->", vecs, vecs))
        if abs(header.running_sq - sq) > rtol * max(1.0, sq):
            problems.append(f"bucket {b}: running_sq {header.running_sq} but rows give {sq}")
    for s, cov in covered.items():
        if (cov > 1).any():
            problems.append(f"segment {s}: {int((cov > 1).sum())} rows in more than one extent")
        orphans = np.flatnonzero((cov == 0) & (snap.dead[s] == 0))
        if orphans.size:
            problems.append(f"segment {s}: {orphans.size} live rows in no bucket")
    locs = {decode_i64(k): L.Location.unpack(v) for k, v in kv.iterate(L.DB_LOC)}
    for ident, where in seen.items():
        loc = locs.get(ident)
        if loc is None:
            problems.append(f"id {ident} is live at {where} but LMDB has no location")
        elif (loc.bucket, loc.segment, loc.row) != where:
            problems.append(f"id {ident}: LMDB says {tuple(loc)[:3]}, segments say {where}")
    extra = set(locs) - set(seen)
    if extra:
        problems.append(f"{len(extra)} LMDB locations point at no live row, e.g. {sorted(extra)[:5]}")
    if snap.live_count != len(locs):
        problems.append(f"snapshot live_count {snap.live_count} but LMDB has {len(locs)} locations")
    dim = next(iter(snap.buckets.values())).dim if snap.buckets else 0
    stored = {decode_i64(k): v for k, v in kv.iterate(L.DB_BUCKET)}
    if set(stored) != set(snap.buckets):
        problems.append(f"LMDB buckets {sorted(set(stored) ^ set(snap.buckets))[:5]} differ from the snapshot's")
    for b, raw in stored.items():
        if b in snap.buckets and BucketHeader.from_bytes(raw, dim).to_bytes() != snap.buckets[b].to_bytes():
            problems.append(f"bucket {b}: LMDB header differs from the snapshot's")
    refs = referenced_segments(kv)
    if set(refs) != set(snap.segments):
        problems.append(f"LMDB segments {sorted(refs)} differ from the snapshot's {sorted(snap.segments)}")
    for s in set(refs) & set(snap.segments):
        raw = kv.get(L.DB_DEAD, encode_i64(s))
        mask = L.unpack_dead(raw, snap.segments[s].n_rows) if raw else np.zeros(snap.segments[s].n_rows, np.uint8)
        if not np.array_equal(mask, snap.dead[s]):
            problems.append(f"segment {s}: LMDB dead mask differs from the snapshot's")
    return problems
