"""index.buckets: incremental drift statistics, serialisation, routing-table construction."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine.errors import CorruptionError, DimensionMismatchError, InvalidArgumentError
from drift_engine.index.buckets import BucketHeader, Extent, routing_table
from drift_engine.index.routing import route


def _stats(v: np.ndarray, centroid: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    v64 = v.astype(np.float64)
    mu = v64.mean(axis=0)
    sq = float((v64**2).sum())
    drift = float(np.linalg.norm(mu - centroid.astype(np.float64)))
    spread = float(np.sqrt(max(sq / len(v) - mu @ mu, 0.0)))
    return mu, sq, drift, spread


def test_add_remove_match_recomputation() -> None:
    rng = np.random.default_rng(0)
    centroid = rng.standard_normal(12).astype(np.float32)
    h = BucketHeader.new(5, centroid)
    assert h.count == 0 and h.running_sum.dtype == np.float64 and not h.running_sum.any()
    assert h.drift() == 0.0 and h.spread() == 0.0
    np.testing.assert_array_equal(h.mean(), centroid)
    live = []
    total_added = 0
    for step in range(30):
        if step % 3 == 2 and len(live) > 10:
            gone = [live.pop(int(rng.integers(len(live)))) for _ in range(4)]
            h.remove(np.stack(gone))
        else:
            batch = (rng.standard_normal((int(rng.integers(1, 20)), 12)) + 3).astype(np.float32)
            h.add(batch)
            live.extend(batch)
            total_added += len(batch)
        v = np.stack(live)
        mu, sq, drift, spread = _stats(v, centroid)
        assert h.count == len(live)
        np.testing.assert_allclose(h.running_sum, v.astype(np.float64).sum(axis=0), rtol=1e-9, atol=1e-9)
        assert h.running_sq == pytest.approx(sq, rel=1e-9)
        np.testing.assert_allclose(h.mean(), mu.astype(np.float32), rtol=1e-6)
        assert h.mean().dtype == np.float32
        assert h.drift() == pytest.approx(drift, rel=1e-9)
        assert h.spread() == pytest.approx(spread, rel=1e-6)
    assert h.inserts_since_centroid == total_added  # additions only, never reduced by removals
    # removing everything resets the sums exactly
    h.remove(np.stack(live))
    assert h.count == 0 and h.running_sq == 0.0 and not h.running_sum.any()
    np.testing.assert_array_equal(h.mean(), centroid)


def test_inserts_since_centroid_counts_additions_only() -> None:
    h = BucketHeader.new(1, np.zeros(3, np.float32))
    h.add(np.ones((4, 3), np.float32))
    h.remove(np.ones((2, 3), np.float32))
    h.add(np.ones(3, np.float32))  # a single (d,) vector is one row
    assert (h.count, h.inserts_since_centroid) == (3, 5)
    h.add(np.zeros((0, 3), np.float32))
    assert (h.count, h.inserts_since_centroid) == (3, 5)


def test_bad_updates_leave_the_header_unchanged() -> None:
    h = BucketHeader.new(1, np.zeros(3, np.float32))
    h.add(np.ones((2, 3), np.float32))
    before = h.to_bytes()
    with pytest.raises(InvalidArgumentError):
        h.remove(np.ones((3, 3), np.float32))
    with pytest.raises(DimensionMismatchError):
        h.add(np.ones((2, 4), np.float32))
    assert h.to_bytes() == before


def test_bytes_round_trip_and_copy() -> None:
    rng = np.random.default_rng(3)
    h = BucketHeader.new(-(2**40), rng.standard_normal(7).astype(np.float32))
    h.add(rng.standard_normal((9, 7)).astype(np.float32))
    h.extents.extend([Extent(3, 0, 9), Extent(2**33, 1 << 20, 5)])
    data = h.to_bytes()
    assert len(data) == 32 + 8 + 7 * 12 + 2 * 24  # compact: fixed head, arrays, extents
    back = BucketHeader.from_bytes(data, 7)
    assert back.bucket_id == h.bucket_id and back.count == 9 and back.inserts_since_centroid == 9
    np.testing.assert_array_equal(back.centroid, h.centroid)
    np.testing.assert_array_equal(back.running_sum, h.running_sum)
    assert back.running_sq == h.running_sq
    assert back.extents == h.extents
    assert back.to_bytes() == data
    assert BucketHeader.from_bytes(BucketHeader.new(0, np.ones(2)).to_bytes(), 2).extents == []
    c = h.copy()
    c.add(np.ones((1, 7), np.float32))
    c.extents.append(Extent(9, 9, 9))
    c.centroid[0] = 42.0
    assert h.count == 9 and len(h.extents) == 2 and h.centroid[0] != 42.0
    assert BucketHeader.from_bytes(data, 7).to_bytes() == data


def test_from_bytes_refuses_damage() -> None:
    h = BucketHeader.new(1, np.ones(4, np.float32))
    h.extents.append(Extent(1, 2, 3))
    data = h.to_bytes()
    with pytest.raises(CorruptionError):
        BucketHeader.from_bytes(data[:-1], 4)
    with pytest.raises(CorruptionError):
        BucketHeader.from_bytes(data + b"\0", 4)
    with pytest.raises(CorruptionError):
        BucketHeader.from_bytes(data, 5)  # wrong dimension shows as a length mismatch
    with pytest.raises(CorruptionError):
        BucketHeader.from_bytes(bytes([99]) + data[1:], 4)  # unknown version
    with pytest.raises(CorruptionError):
        BucketHeader.from_bytes(b"", 4)


def test_routing_table_from_headers() -> None:
    rng = np.random.default_rng(5)
    headers = []
    for b in range(6):
        h = BucketHeader.new(10 + b, rng.standard_normal(5).astype(np.float32))
        if b != 3:  # bucket 13 stays empty
            h.add((rng.standard_normal((20, 5)) + b).astype(np.float32))
        headers.append(h)
    t = routing_table(headers, lam=0.2, tau=50.0)
    assert t.bucket_ids.tolist() == [10, 11, 12, 13, 14, 15]
    np.testing.assert_array_equal(t.centroids, np.stack([h.centroid for h in headers]))
    np.testing.assert_allclose(t.means, np.stack([h.mean() for h in headers]), rtol=1e-6)
    np.testing.assert_allclose(t.spreads, [h.spread() for h in headers], rtol=1e-5)
    assert t.counts.tolist() == [20, 20, 20, 0, 20, 20]
    assert t.inserts.tolist() == [20, 20, 20, 0, 20, 20]
    np.testing.assert_array_equal(t.means[3], headers[3].centroid)  # empty: μ = c
    assert t.spreads[3] == 0
    q = headers[4].mean()
    assert route(t, q, 1, "l2")[0] == 14
    empty = routing_table([], lam=0.0, tau=float("inf"), dim=5)
    assert empty.n_buckets == 0 and route(empty, q, 3, "l2").shape == (0,)
    with pytest.raises(InvalidArgumentError):
        routing_table([], lam=0.0, tau=float("inf"))
    with pytest.raises(DimensionMismatchError):
        routing_table([*headers, BucketHeader.new(99, np.ones(4))], lam=0.0, tau=float("inf"))
