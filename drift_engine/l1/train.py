"""Training: cluster every live vector into buckets and lay L1 out anew.

Contract: ``train_layout`` reads one pinned snapshot, runs k-means and SQ8 training, and writes new
segment files (step 1 of the commit order). It returns a ``TrainResult`` whose ``stage`` puts every
LMDB record of the new layout into the caller's write batch; the caller commits, publishes and retires
the old segments. Nothing visible changes until that commit.

Each bucket's centroid is the plain mean of the rows finally assigned to it (for every metric: a cosine
centroid is a mean of unit vectors, inside the sphere), the same quantity as its running mean, so every drift
statistic is 0 right after training. k-means is spherical for ip only (routing scores an ip centroid by its
direction, ``index.routing``); assignment is by L2 to the k-means centroids, which for unit centroids is the
largest inner product. Unless ``n_buckets`` is given, clusters holding more than the collection's split size are
split before the layout is written (``index.train.balance``), so no split is pending right after training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drift_engine.config import CollectionConfig
from drift_engine.errors import InvalidArgumentError
from drift_engine.index.buckets import BucketHeader
from drift_engine.index.train import assign, balance, kmeans
from drift_engine.l1 import layout as L
from drift_engine.l1.segments import WrittenSegment, write_bucketed_segments
from drift_engine.l1.snapshot import Snapshot
from drift_engine.storage import sq8 as sq8_codec
from drift_engine.storage.kv import encode_i64
from drift_engine.storage.sq8 import SQ8Params

SQ8_SAMPLE = 200_000


@dataclass
class TrainResult:
    sq8: SQ8Params
    buckets: dict[int, BucketHeader]
    written: list[WrittenSegment]
    ids: np.ndarray
    labels: np.ndarray
    segment_of: np.ndarray
    row_of: np.ndarray

    @property
    def n_vectors(self) -> int:
        return int(self.ids.size)

    def stage(self, batch) -> None:
        pack = L.Location
        for ident, label, seg, row in zip(
            self.ids.tolist(),
            self.labels.tolist(),
            self.segment_of.tolist(),
            self.row_of.tolist(),
            strict=True,
        ):
            batch.put(L.DB_LOC, encode_i64(ident), pack(label, seg, row, 0).pack())
        for b, header in self.buckets.items():
            batch.put(L.DB_BUCKET, encode_i64(b), header.to_bytes())
        for w in self.written:
            info = {"file": os.path.basename(w.path), "rows": w.n_rows}
            batch.put(L.DB_SEGMENT, encode_i64(w.segment_id), json.dumps(info).encode())


def live_vectors(snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every live row of the snapshot, in segment order."""
    ids_parts, vec_parts = [], []
    for seg_id, seg in sorted(snap.segments.items()):
        live = np.flatnonzero(snap.dead[seg_id] == 0)
        if live.size:
            ids_parts.append(seg.ids()[live])
            vec_parts.append(seg.vectors()[live])
    if not ids_parts:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
    return np.concatenate(ids_parts), np.ascontiguousarray(np.concatenate(vec_parts))


def default_bucket_count(n: int, target_bucket_size: int) -> int:
    return int(max(1, min(n, round(n / target_bucket_size))))


def train_layout(
    snap: Snapshot,
    config: CollectionConfig,
    seg_dir: str,
    next_segment_id: Callable[[], int],
    *,
    n_buckets: int | None,
    progress: Callable[[str, float], None] | None,
) -> TrainResult:
    params = config.params
    ids, vectors = live_vectors(snap)
    n = int(ids.size)
    if n == 0:
        raise InvalidArgumentError(f"cannot train collection {config.name!r}: it holds no vectors")
    k = n_buckets if n_buckets is not None else default_bucket_count(n, params.target_bucket_size)
    if k > n:
        raise InvalidArgumentError(f"n_buckets={k} is more than the {n} vectors in collection {config.name!r}")
    spherical = config.metric == "ip"  # ip routes by the centroid's direction (index.routing)
    centroids = kmeans(
        vectors,
        k,
        max_iter=params.kmeans_iters,
        sample_size=params.kmeans_sample or None,
        spherical=spherical,
        progress=progress,
    )
    rng = np.random.default_rng(0)
    sample = vectors if n <= SQ8_SAMPLE else vectors[np.sort(rng.choice(n, SQ8_SAMPLE, replace=False))]
    sq8 = sq8_codec.train_sq8(sample, params.sq8_clip)
    if progress is not None:
        progress("assign", 0.0)
    # ip: unit centroids, so nearest = largest inner product. Unless n_buckets was given, clusters over the
    # split size are split now, as maintenance would split them right after (no split pending after train).
    if n_buckets is None:
        centroids, labels = balance(
            vectors, centroids, params.split_size, params.target_bucket_size, spherical=spherical, rounds=6
        )
    else:
        labels, _ = assign(vectors, centroids)
    _, labels = np.unique(labels, return_inverse=True)  # bucket ids 0..k'-1 (a centroid may have lost every row)
    labels = labels.astype(np.int64)
    written, segment_of, row_of = write_bucketed_segments(
        seg_dir, next_segment_id, sq8, ids, vectors, labels, rows_per_segment=params.rows_per_segment
    )
    buckets: dict[int, BucketHeader] = {}
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    for part in np.split(order, cuts):
        b = int(labels[part[0]])
        members = vectors[part]
        # the centroid is the mean of the rows the bucket finally holds (one Lloyd update after the last
        # assignment), in the same space as the running mean, so drift starts at exactly 0 for every metric
        header = BucketHeader.new(b, members.astype(np.float64).mean(axis=0).astype(np.float32))
        header.add(members)
        header.inserts_since_centroid = 0
        buckets[b] = header
    for w in written:
        for b, ext in w.extents.items():
            buckets[b].extents.append(ext)
    if progress is not None:
        progress("written", 1.0)
    return TrainResult(sq8, buckets, written, ids, labels, segment_of, row_of)
