"""Split with neighbour stealing (SPFresh's LIRE), and re-centring, DESIGN §9.

Contract: ``plan_split(snap, bucket, ...)`` reads one snapshot and returns an ``l1.rewrite.Plan`` (or ``None`` when
the bucket cannot be usefully split). It never writes; ``l1.rewrite.commit`` applies the plan.

* The bucket's live vectors are clustered into ``k`` pieces: ``k = max(2, round(n / target_bucket_size))`` when
  the bucket is too large, ``max(1, round(n / target))`` when it is split for drift (``k = 1`` re-centres it:
  the new centroid is the mean, which is one Lloyd step for that bucket). k-means (``index.train.kmeans``,
  spherical for ip, whose routing scores a centroid's direction) then nearest-centroid assignment; a piece
  smaller than ``min_piece`` (the merge size, at least) is dissolved into the others, so a split never leaves a
  dust bucket.
* LIRE reassignment, with the collection's own routing score (lam, tau), against the ``reassign_neighbors``
  buckets whose drift-corrected centroids are nearest the old bucket's mean: every vector of the old bucket goes
  to its best bucket among the pieces and those neighbours; a neighbour's vector moves only if a new piece now
  serves it better than its own bucket (it is scored against those two only, straight from the segment blocks,
  so only the stolen rows are copied). A piece left below ``min_piece`` after that is dissolved and the
  reassignment redone.
* Each created bucket's centroid is the plain mean of the vectors it finally holds — for every metric, also
  cosine (a mean of unit vectors lies inside the sphere; normalising it would make the drift ``‖μ − c‖`` and the
  drift criterion fire on every bucket at once) — so its drift starts at 0; its statistics are computed from
  those rows by the commit. The old bucket is dropped. A size split that would leave everything where it is (one
  piece, nothing stolen or given) returns ``None``.
  The plan's ``info`` records the pieces made and the vectors stolen from / given to neighbours.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from drift_engine.config import CollectionParams
from drift_engine.index.buckets import BucketHeader, routing_table
from drift_engine.index.routing import RoutingTable, route_batch
from drift_engine.index.train import assign, kmeans
from drift_engine.l1.rewrite import Plan, Rows, bucket_rows
from drift_engine.l1.snapshot import Snapshot

SPLIT_KMEANS_ITERS = 10


def nearest_buckets(snap: Snapshot, point: np.ndarray, m: int, exclude: set[int]) -> list[int]:
    """Ids of the ``m`` buckets whose drift-corrected centroids (ĉ) are nearest ``point`` (L2)."""
    table = snap.routing
    if table is None or m <= 0:
        return []
    diff = table.adjusted - point.astype(np.float32)
    d2 = np.einsum("ij,ij->i", diff, diff)
    order = np.argsort(d2, kind="stable")
    out: list[int] = []
    for pos in order.tolist():
        b = int(table.bucket_ids[pos])
        if b in exclude:
            continue
        out.append(b)
        if len(out) == m:
            break
    return out


def cluster(vectors: np.ndarray, k: int, *, min_piece: int, seed: int, spherical: bool = False) -> np.ndarray:
    """Labels (int64[n], 0..k'-1) of a k-means split into k' <= k pieces of at least ``min_piece`` rows.

    ``spherical`` (ip): unit centroids, so the nearest one (L2) is the one with the largest inner product —
    the assignment ``route`` makes for ip."""
    n = vectors.shape[0]
    k = max(1, min(k, n // max(1, min_piece)))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    centroids = kmeans(vectors, k, max_iter=SPLIT_KMEANS_ITERS, seed=seed, spherical=spherical)
    while True:
        labels, _ = assign(vectors, centroids)
        counts = np.bincount(labels, minlength=centroids.shape[0])
        small = counts < min_piece
        if not small.any() or centroids.shape[0] == 1:
            break
        keep = ~small
        keep[np.argmax(counts)] = True
        if keep.all():  # only dust pieces would be dropped: drop the smallest one
            keep[np.argmin(counts)] = False
        centroids = centroids[keep]
    _, labels = np.unique(labels, return_inverse=True)
    return labels.astype(np.int64)


def _piece_headers(ids: list[int], vectors: np.ndarray, labels: np.ndarray) -> list[BucketHeader]:
    out = []
    for j, b in enumerate(ids):
        part = vectors[labels == j]
        mean = part.astype(np.float64).mean(axis=0).astype(np.float32)
        header = BucketHeader.new(b, mean)
        header.add(part)
        header.inserts_since_centroid = 0
        out.append(header)
    return out


def _score(v_sq: np.ndarray, dot: np.ndarray, c_sq: np.ndarray, bonus: np.ndarray, metric: str) -> np.ndarray:
    """Routing score (lower is better) from ‖v‖², v·ĉ (ip: v·ĉ/‖ĉ‖), ‖ĉ‖² and the density bonus, as
    ``index.routing``."""
    if metric == "ip":
        return -dot - bonus
    return np.sqrt(np.maximum(v_sq - 2.0 * dot + c_sq, 0.0)) - bonus


def steal_from_neighbours(
    snap: Snapshot, table: RoutingTable, k: int, neighbours: list[int], metric: str
) -> tuple[Rows, np.ndarray]:
    """SPFresh's LIRE test over the live vectors of ``neighbours`` (table rows k, k+1, ...): the rows now better
    served by one of the ``k`` new pieces (table rows 0..k-1) than by their own bucket, and that piece's id.

    Each vector is scored only against its own bucket and the pieces (a neighbour vector never moves between two
    old buckets), straight from the segment blocks: only the stolen rows are copied."""
    centres = table.directions if metric == "ip" else table.adjusted  # what ``route`` scores against
    pieces = centres[:k]
    p_sq, p_bonus = table.adjusted_sq[:k], table.bonus[:k]
    parts: list[Rows] = []
    dsts: list[np.ndarray] = []
    for i, b in enumerate(neighbours):
        row = k + i
        c, c_sq, c_bonus = centres[row], table.adjusted_sq[row], table.bonus[row]
        for ext in snap.buckets[b].extents:
            seg = snap.segments[ext.segment_id]
            v = seg.vectors()[ext.start : ext.start + ext.count]
            live = snap.dead[ext.segment_id][ext.start : ext.start + ext.count] == 0
            v_sq = np.einsum("ij,ij->i", v, v)
            piece = _score(v_sq[:, None], v @ pieces.T, p_sq[None, :], p_bonus[None, :], metric)
            best = np.argmin(piece, axis=1)
            own = _score(v_sq, v @ c, c_sq, c_bonus, metric)
            steal = live & (piece[np.arange(best.size), best] < own)
            if steal.any():
                rows = np.flatnonzero(steal).astype(np.int64) + ext.start
                parts.append(
                    Rows(
                        seg.ids()[rows],
                        seg.vectors()[rows],
                        np.full(rows.size, b, dtype=np.int64),
                        np.full(rows.size, ext.segment_id, dtype=np.int64),
                        rows,
                    )
                )
                dsts.append(table.bucket_ids[best[steal]].astype(np.int64))
    dim = table.dim
    return Rows.concat(parts, dim), (np.concatenate(dsts) if dsts else np.empty(0, dtype=np.int64))


def plan_split(
    snap: Snapshot,
    bucket_id: int,
    params: CollectionParams,
    metric: str,
    new_bucket_id: Callable[[], int],
    *,
    for_drift: bool = False,
) -> Plan | None:
    """Plan the split of ``bucket_id`` (see the module docstring); ``None`` if nothing would improve."""
    rows = bucket_rows(snap, bucket_id)
    n = rows.size
    if n == 0:
        return None
    target = params.target_bucket_size
    k = max(1, round(n / target)) if for_drift else max(2, round(n / target))
    min_piece = max(1, params.merge_size, min(target // 4, n // (2 * k)))
    labels = cluster(rows.vectors, k, min_piece=min_piece, seed=bucket_id & 0x7FFFFFFF, spherical=metric == "ip")
    k = int(labels.max()) + 1
    if k == 1 and not for_drift:
        return None
    piece_ids = [new_bucket_id() for _ in range(k)]
    pieces = _piece_headers(piece_ids, rows.vectors, labels)
    mean = snap.buckets[bucket_id].mean()
    neighbours = nearest_buckets(snap, mean, params.reassign_neighbors, {bucket_id})
    dim = rows.vectors.shape[1]
    others = [snap.buckets[b] for b in neighbours]
    while True:  # LIRE; a piece left with fewer than min_piece rows is dissolved and the rest re-routed
        table = routing_table([*pieces, *others], lam=params.lam, tau=params.tau)
        dst_own = route_batch(table, rows.vectors, 1, metric)[:, 0]
        stolen_rows, nd = steal_from_neighbours(snap, table, len(pieces), neighbours, metric)
        held = [int(np.count_nonzero(dst_own == h.bucket_id) + np.count_nonzero(nd == h.bucket_id)) for h in pieces]
        if len(pieces) == 1 or min(held) >= min_piece:
            break
        pieces.pop(int(np.argmin(held)))
        piece_ids = [h.bucket_id for h in pieces]
    stolen = stolen_rows.size
    parts: list[Rows] = [rows, stolen_rows]
    dsts = [dst_own, nd]
    all_rows = Rows.concat(parts, dim)
    dst = np.concatenate(dsts).astype(np.int64)
    new_buckets = {}
    for b in piece_ids:
        sel = dst == b
        if not sel.any():
            continue
        mean = all_rows.vectors[sel].astype(np.float64).mean(axis=0).astype(np.float32)
        new_buckets[b] = mean
    given = int(np.count_nonzero(~np.isin(dst_own, piece_ids)))
    if not for_drift and len(new_buckets) <= 1 and stolen == 0 and given == 0:
        return None  # the bucket would stay as it is: no progress
    info = {"pieces": len(new_buckets), "stolen": stolen, "given": given}
    kind = "split" if len(new_buckets) > 1 else "recentre"
    return Plan(kind, all_rows, dst, new_buckets=new_buckets, drop={bucket_id}, info=info)
