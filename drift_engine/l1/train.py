"""Training: cluster every live vector into buckets and lay L1 out anew, in one L1 commit (DESIGN §7).

Contract: ``commit_train`` is called with the L1 lock held. It reads one snapshot (its live rows), runs k-means
and SQ8 training, writes the new layout's segment files (step 1) — crash point ``train.after_segments`` — and
commits one LMDB transaction that replaces every bucket, dead mask and segment record, rewrites every location
(lsn 0: the rows' version is the one recorded under ``lsn_key``, ``max(1, l1_lsn)``), and stores the new SQ8
ranges and ``trained`` — crash point ``train.after_commit`` (``l1.commit``, kind ``TRAIN``). It then publishes
one snapshot with the new L1 (``l1_lsn`` unchanged: a train changes where rows are, not what is stored) and
retires every old segment. Nothing visible changes until that commit; if it raises, nothing changed.

Each bucket's centroid is the plain mean of the rows finally assigned to it (for every metric: a cosine
centroid is a mean of unit vectors, inside the sphere), the same quantity as its running mean, so every drift
statistic is 0 right after training. k-means is spherical for ip only (routing scores an ip centroid by its
direction, ``index.routing``); assignment is by L2 to the k-means centroids, which for unit centroids is the
largest inner product. Unless ``n_buckets`` is given, clusters holding more than the collection's split size are
split before the layout is written (``index.train.balance``), so no split is pending right after training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drift_engine.config import CollectionConfig
from drift_engine.errors import InvalidArgumentError
from drift_engine.index.buckets import BucketHeader
from drift_engine.index.train import assign, balance, kmeans
from drift_engine.l1 import layout as L
from drift_engine.l1.commit import TRAIN, L1Store
from drift_engine.l1.segments import WrittenSegment
from drift_engine.l1.snapshot import Snapshot, build_routing
from drift_engine.storage import sq8 as sq8_codec
from drift_engine.storage.kv import WriteBatch, encode_i64
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

    def stage(self, batch: WriteBatch) -> None:
        """The new layout's locations and bucket headers (the segment records are the commit's)."""
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


def commit_train(
    store: L1Store,
    snap: Snapshot,
    config: CollectionConfig,
    *,
    n_buckets: int | None,
    progress: Callable[[str, float], None] | None,
    lsn_key: bytes,
) -> TrainResult:
    """Retrain L1 from ``snap``'s live rows and commit the new layout (module docstring); call with the L1 lock
    held. ``lsn_key``: the meta record that holds the version of the rows a train rewrote."""
    params = config.params
    ids, vectors, labels, sq8 = cluster(snap, config, n_buckets=n_buckets, progress=progress)
    with store.change(TRAIN) as change:
        written, segment_of, row_of = change.write_segments(
            sq8, ids, vectors, labels, rows_per_segment=params.rows_per_segment
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
        result = TrainResult(sq8, buckets, written, ids, labels, segment_of, row_of)

        def stage(batch: WriteBatch) -> None:
            for db in (L.DB_BUCKET, L.DB_DEAD, L.DB_SEGMENT):
                batch.drop(db)
            result.stage(batch)
            batch.put(L.DB_META, L.KEY_SQ8, sq8.to_bytes())
            batch.put(L.DB_META, L.KEY_TRAINED, b"1")
            batch.put(L.DB_META, lsn_key, L.int_bytes(max(1, snap.l1_lsn)))  # the version of its rows

        fields = {
            "trained": True,
            "sq8": sq8,
            "buckets": buckets,
            "routing": build_routing(True, buckets, params.lam, params.tau),
            "segments": {},
            "dead": {w.segment_id: np.zeros(w.n_rows, dtype=np.uint8) for w in written},
            "live_count": result.n_vectors,
        }
        change.commit(stage, fields, retired=list(snap.segments.values()))
    return result


def cluster(
    snap: Snapshot,
    config: CollectionConfig,
    *,
    n_buckets: int | None,
    progress: Callable[[str, float], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, SQ8Params]:
    """(ids, vectors, bucket labels 0..k'-1, SQ8 ranges) of the new layout of ``snap``'s live rows."""
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
    return ids, vectors, labels.astype(np.int64), sq8
