"""Search over one pinned snapshot of L1.

Contract: ``search_snapshot`` reads only the snapshot it is given (plus the block cache), never blocks
writers, and returns at most ``k`` (id, distance) pairs sorted by exact distance (pgvector semantics:
l2 = Euclidean, cosine = 1 - cos, ip = -dot), ties broken by lower id. Rows that are dead in the
snapshot, or outside ``allowed`` masks (filters), are never returned.

Trained collections: route to ``nprobe`` buckets (``index.routing``), ADC-scan their extents segment by
segment (one numba call per segment), keep the best ``rerank * k`` approximate candidates per segment and then
overall (every candidate tied with the overall ``rerank * k``-th stays), re-rank them exactly with the float32
vectors. Untrained collections: exact scan of every live row.

``auto_nprobe`` is the number of buckets probed when a collection's ``nprobe`` parameter is 0 (auto).

This is the reference path. ``engine.fastsearch`` runs the same steps as one compiled call over arrays
prepared per snapshot and passes it in as ``ivf``; both give identical ids and distances.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from drift_engine.engine.validate import canonical_value
from drift_engine.index import adc
from drift_engine.index.routing import route
from drift_engine.l1.snapshot import Snapshot

MAX_INTERNAL_K = 100_000
_EMPTY_IDS = np.empty(0, dtype=np.int64)
_EMPTY_DIST = np.empty(0, dtype=np.float32)


def auto_nprobe(n_buckets: int) -> int:
    """Buckets probed when the ``nprobe`` parameter is 0 (auto): about 1.2 sqrt(buckets), at least 8.

    On glove-6b-50d (1,523 buckets) this probes 47 buckets for recall@10 ~0.96 (bench/README.md).
    """
    return int(max(1, min(n_buckets, max(8, round(1.2 * n_buckets**0.5)))))


def _top_k(ids: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest (distance, id) pairs, ascending: exact ties at the k-th distance go to lower ids."""
    if ids.size > k:
        kth = np.partition(dists, k - 1)[k - 1]
        keep = dists <= kth
        ids, dists = ids[keep], dists[keep]
    order = np.lexsort((ids, dists))[:k]
    return ids[order], dists[order]


def _skip_for(snap: Snapshot, seg_id: int, allowed: Mapping[int, np.ndarray] | None) -> np.ndarray:
    if allowed is None:
        return snap.dead[seg_id]
    return allowed[seg_id]


def exact_scan(
    snap: Snapshot, query: np.ndarray, k: int, metric: str, allowed: Mapping[int, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over every live row of every segment (untrained collections)."""
    all_ids, all_d = [], []
    for seg_id, seg in snap.segments.items():
        if seg.n_rows == 0:
            continue
        skip = _skip_for(snap, seg_id, allowed)
        live = np.flatnonzero(skip == 0)
        if live.size == 0:
            continue
        dists = adc.rerank(metric, query, seg.vectors(), live.astype(np.int64))
        ids = seg.ids()[live]
        if ids.size > k:
            part = np.argpartition(dists, k - 1)[:k]
            ids, dists = ids[part], dists[part]
        all_ids.append(ids)
        all_d.append(dists)
    if not all_ids:
        return _EMPTY_IDS, _EMPTY_DIST
    return _top_k(np.concatenate(all_ids), np.concatenate(all_d), k)


def probe_plan(snap: Snapshot, bucket_ids: np.ndarray) -> dict[int, tuple[list[int], list[int]]]:
    """segment id -> (starts, counts) of the extents of the probed buckets."""
    plan: dict[int, tuple[list[int], list[int]]] = {}
    buckets = snap.buckets
    for b in bucket_ids.tolist():
        for ext in buckets[b].extents:
            entry = plan.get(ext.segment_id)
            if entry is None:
                plan[ext.segment_id] = ([ext.start], [ext.count])
            else:
                entry[0].append(ext.start)
                entry[1].append(ext.count)
    return plan


def ivf_scan(
    snap: Snapshot,
    query: np.ndarray,
    k: int,
    nprobe: int,
    rerank: int,
    metric: str,
    allowed: Mapping[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Route, ADC-scan, re-rank: the trained-collection search."""
    assert snap.routing is not None and snap.sq8 is not None
    probe = route(snap.routing, query, nprobe, metric)
    plan = probe_plan(snap, probe)
    if not plan:
        return _EMPTY_IDS, _EMPTY_DIST
    pq = adc.prepare_query(metric, query, snap.sq8.mins, snap.sq8.scales)
    r = max(k, rerank * k)
    found: list[tuple[int, np.ndarray, np.ndarray]] = []
    for seg_id, (starts, counts) in plan.items():
        seg = snap.segments[seg_id]
        approx, rows = adc.scan(
            pq,
            seg.codes(),
            np.asarray(starts, dtype=np.int64),
            np.asarray(counts, dtype=np.int64),
            _skip_for(snap, seg_id, allowed),
            r,
        )
        if rows.size:
            found.append((seg_id, approx, rows))
    if not found:
        return _EMPTY_IDS, _EMPTY_DIST
    if len(found) > 1:
        # keep the global best r approximate candidates before paying for exact distances
        approx_all = np.concatenate([f[1] for f in found])
        if approx_all.size > r:
            cut = np.partition(approx_all, r - 1)[r - 1]
            found = [(s, a, rows[a <= cut]) for s, a, rows in found]
    ids_parts, dist_parts = [], []
    for seg_id, _approx, rows in found:
        if rows.size == 0:
            continue
        seg = snap.segments[seg_id]
        dist_parts.append(adc.rerank(metric, query, seg.vectors(), rows))
        ids_parts.append(seg.ids()[rows])
    ids = np.concatenate(ids_parts) if len(ids_parts) > 1 else ids_parts[0]
    dists = np.concatenate(dist_parts) if len(dist_parts) > 1 else dist_parts[0]
    return _top_k(ids, dists, k)


IvfScan = Callable[..., tuple[np.ndarray, np.ndarray]]
"""Signature of ``ivf_scan``: (snap, query, k, nprobe, rerank, metric, allowed) -> (ids, distances)."""


def search_snapshot(
    snap: Snapshot,
    query: np.ndarray,
    k: int,
    nprobe: int,
    rerank: int,
    metric: str,
    allowed: Mapping[int, np.ndarray] | None = None,
    ivf: IvfScan = ivf_scan,
) -> tuple[np.ndarray, np.ndarray]:
    if not snap.trained:
        return exact_scan(snap, query, k, metric, allowed)
    return ivf(snap, query, k, nprobe, rerank, metric, allowed)


def search_filtered(
    snap: Snapshot,
    query: np.ndarray,
    k: int,
    nprobe: int,
    rerank: int,
    metric: str,
    allowed: Mapping[int, np.ndarray],
    ivf: IvfScan = ivf_scan,
) -> tuple[np.ndarray, np.ndarray]:
    """Filtered search, planned by selectivity.

    When the filter keeps few rows (no more than ``nprobe`` average buckets hold), scanning exactly the
    allowed rows is both cheaper and exact. Otherwise the IVF scan widens nprobe until it fills k or has
    probed every bucket, then widens once more so the last-found rows are not just the nearest buckets'.
    """
    n_allowed = sum(int(m.size - np.count_nonzero(m)) for m in allowed.values())
    avg_bucket = snap.live_count / max(1, len(snap.buckets))
    if not snap.trained or n_allowed <= max(4096, nprobe * avg_bucket):
        return exact_scan(snap, query, k, metric, allowed)
    n_buckets = len(snap.buckets)
    probe = nprobe
    while True:
        ids, dists = ivf(snap, query, k, probe, rerank, metric, allowed)
        if probe >= n_buckets:
            return ids, dists
        if ids.size >= k:
            return ivf(snap, query, k, min(n_buckets, probe * 2), rerank, metric, allowed)
        probe = min(n_buckets, probe * 2)


def _payload_matcher(mt, flt: dict[str, str]):
    """allow(id) for a memtable: its payload there has every filter key with the filter's value."""

    items = list(flt.items())

    def allow(ident: int) -> bool:
        fields = mt.filter_fields(ident, canonical_value)
        if fields is None:
            return False
        return all(fields.get(key) == value for key, value in items)

    return allow


def search_hybrid(
    snap: Snapshot,
    query: np.ndarray,
    k: int,
    nprobe: int,
    rerank: int,
    ef: int,
    metric: str,
    masks: Mapping[int, np.ndarray] | None = None,
    flt: dict[str, str] | None = None,
    ivf: IvfScan = ivf_scan,
) -> tuple[np.ndarray, np.ndarray]:
    """L0 (memtables, newest first) + L1, merged by distance; the newest version of an id wins.

    ``ivf`` is the trained L1 scan (``ivf_scan``; ``engine.fastsearch`` passes its compiled equivalent).

    Frozen memtables and L1 are immutable in the pinned snapshot, but the active memtable takes writes
    while we read it. So hiding uses the active memtable's state as of a watermark lsn read before its
    search: a write landing mid-query cannot hide an older copy the search never saw replaced; a write
    the search did see, whose older copy was then not hidden, is removed by the final de-duplication
    (candidates are ordered newest level first, so the first occurrence of an id is its newest).
    """
    mts = [m for m in snap.memtables if m.n_ops]
    watermark = mts[0].max_lsn if mts else 0

    def hidden_by(levels: list, ids: np.ndarray) -> np.ndarray:
        hidden = np.zeros(ids.size, dtype=bool)
        for mt in levels:
            hidden |= mt.hides_as_of(ids, watermark) if mt is mts[0] else mt.hides(ids)
        return hidden

    ids_parts: list[np.ndarray] = []
    dist_parts: list[np.ndarray] = []
    for i, mt in enumerate(mts):
        if len(mt) == 0:
            continue
        allow = None if flt is None else _payload_matcher(mt, flt)
        want_mt = k
        while True:
            ids, dists = mt.search(query, want_mt, max(ef, want_mt), allow)
            if not i or not ids.size:
                break
            keep = ~hidden_by(mts[:i], ids)
            full = ids.size >= want_mt
            ids, dists = ids[keep], dists[keep]
            if ids.size >= k or not full or want_mt >= len(mt):
                break
            want_mt = min(len(mt), want_mt * 2 + int(np.count_nonzero(~keep)))
        ids_parts.append(ids)
        dist_parts.append(dists)
    want = k
    while True:
        if masks is None:
            ids, dists = search_snapshot(snap, query, want, nprobe, rerank, metric, ivf=ivf)
        else:
            ids, dists = search_filtered(snap, query, want, nprobe, rerank, metric, masks, ivf)
        n_hidden = 0
        if mts and ids.size:
            hidden = hidden_by(mts, ids)
            n_hidden = int(np.count_nonzero(hidden))
            ids, dists = ids[~hidden], dists[~hidden]
        if n_hidden == 0 or ids.size >= k or want >= snap.live_count or want >= MAX_INTERNAL_K:
            break
        want = min(MAX_INTERNAL_K, want * 2 + n_hidden)
    ids_parts.append(ids)
    dist_parts.append(dists)
    if len(ids_parts) == 1:
        return ids_parts[0][:k], dist_parts[0][:k]
    all_ids = np.concatenate(ids_parts)
    all_d = np.concatenate(dist_parts)
    uniq, first = np.unique(all_ids, return_index=True)
    if uniq.size != all_ids.size:
        first.sort()
        all_ids, all_d = all_ids[first], all_d[first]
    return _top_k(all_ids, all_d, k)
