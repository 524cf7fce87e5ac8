"""End-to-end sanity of the index pieces: k-means buckets + SQ8 + routing + ADC scan + exact re-rank reach
recall@10 >= 0.95 on real SIFT descriptors (bigann-10k) at a modest nprobe."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine.datasets import DatasetNotFoundError, find_dataset, load_dataset, recall_at_k
from drift_engine.index import adc
from drift_engine.index.buckets import BucketHeader, Extent, routing_table
from drift_engine.index.routing import route
from drift_engine.index.train import assign, kmeans


def _ivf_search(name: str, n_buckets: int, nprobe: int, rerank_r: int, k: int = 10) -> tuple[float, float]:
    """(recall@k, mean fraction of rows scanned) of a minimal IVF-SQ8 index built from the index pieces."""
    try:
        find_dataset(name, build=False)
    except DatasetNotFoundError as exc:
        pytest.skip(f"shared datasets not available: {exc}")
    ds = load_dataset(name, build=False)
    x = ds.base
    centroids = kmeans(x, n_buckets, seed=0)
    labels, _ = assign(x, centroids)
    order = np.argsort(labels, kind="stable")  # bucket-contiguous layout, like one segment
    vectors = np.ascontiguousarray(x[order])
    mins = vectors.min(axis=0)
    scales = (vectors.max(axis=0) - mins) / 255.0
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint((vectors - mins) / scales), 0, 255).astype(np.uint8)
    counts = np.bincount(labels, minlength=n_buckets)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    headers = []
    for b in range(n_buckets):
        h = BucketHeader.new(b, centroids[b])
        h.add(vectors[starts[b] : starts[b] + counts[b]])
        h.extents.append(Extent(0, int(starts[b]), int(counts[b])))
        headers.append(h)
    table = routing_table(headers, lam=0.0, tau=float("inf"))
    found = np.full((ds.nq, k), -1, dtype=np.int64)
    scanned = 0
    for i, q in enumerate(ds.queries):
        probe = route(table, q, nprobe, "l2")
        st = np.array([headers[b].extents[0].start for b in probe], dtype=np.int64)
        ct = np.array([headers[b].extents[0].count for b in probe], dtype=np.int64)
        scanned += int(ct.sum())
        pq = adc.prepare_query("l2", q, mins, scales)
        _, rows = adc.scan(pq, codes, st, ct, None, rerank_r)
        exact = adc.rerank("l2", q, vectors, rows)
        best = rows[np.lexsort((rows, exact))[:k]]
        found[i, : best.size] = order[best]
    return recall_at_k(found, ds.gt, k), scanned / (ds.nq * x.shape[0])


def test_ivf_sq8_recall_on_bigann_10k() -> None:
    recall, frac = _ivf_search("bigann-10k", n_buckets=64, nprobe=10, rerank_r=40)
    assert recall >= 0.95, f"recall@10 {recall:.3f} at nprobe 10 of 64 ({frac:.1%} of rows scanned)"
    assert frac < 0.3
