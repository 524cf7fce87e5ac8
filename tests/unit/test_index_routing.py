"""index.routing: plain-IVF equivalence at lam=0/tau=inf, drift-aware scoring, batch routing, validation."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine.errors import DimensionMismatchError, InvalidArgumentError
from drift_engine.index.routing import RoutingTable, route, route_batch

INF = float("inf")


def _table(nb: int, d: int, seed: int, *, lam: float = 0.0, tau: float = INF) -> RoutingTable:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((nb, d)).astype(np.float32)
    mu = c + 0.3 * rng.standard_normal((nb, d)).astype(np.float32)
    ids = rng.permutation(10 * nb)[:nb].astype(np.int64) + 1000  # ids unrelated to table position
    inserts = rng.integers(0, 500, nb).astype(np.float64)
    counts = rng.integers(1, 800, nb).astype(np.float64)
    spreads = rng.random(nb).astype(np.float32)
    return RoutingTable.build(ids, c, mu, inserts, counts, spreads, lam=lam, tau=tau)


def _scores64(table: RoutingTable, q: np.ndarray, metric: str) -> np.ndarray:
    c = table.centroids.astype(np.float64)
    q64 = q.astype(np.float64)
    if metric == "ip":  # as FAISS IVF-IP: the inner product with the centroid's direction
        return -(c @ q64) / np.linalg.norm(c, axis=1)
    return ((c - q64) ** 2).sum(axis=1)


def _assert_nearest_order(table: RoutingTable, q: np.ndarray, metric: str, got: np.ndarray) -> None:
    """``got`` is the nearest-centroid order (float64 brute force, ties to the lower position); a swap is
    only tolerated between buckets whose exact scores agree to float32 rounding."""
    score = _scores64(table, q, metric)
    order = np.lexsort((np.arange(len(score)), score))[: got.size]
    if np.array_equal(got, table.bucket_ids[order]):
        return
    pos = {int(b): i for i, b in enumerate(table.bucket_ids)}
    got_scores = score[[pos[int(b)] for b in got]]
    assert len(set(got.tolist())) == got.size
    scale = np.abs(score).max()
    np.testing.assert_allclose(got_scores, score[order], rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("nb", [1, 7, 300, 2000])
def test_plain_ivf_when_lambda_zero_and_tau_inf(metric: str, nb: int) -> None:
    d = 24
    table = _table(nb, d, seed=nb)
    assert not table.has_bonus and not table.bonus.any()
    np.testing.assert_array_equal(table.adjusted, table.centroids)  # ĉ = c bit for bit
    rng = np.random.default_rng(1)
    for nprobe in (1, 5, 40, nb, nb + 10):
        for _ in range(5):
            q = rng.standard_normal(d).astype(np.float32)
            if metric == "cosine":
                q /= np.linalg.norm(q)
            got = route(table, q, nprobe, metric)
            assert got.dtype == np.int64 and got.shape == (min(nprobe, nb),)
            _assert_nearest_order(table, q, metric, got)
            if nprobe <= 40:  # the head is exact (no float32 near-ties among these seeds)
                score = _scores64(table, q, metric)
                head = np.lexsort((np.arange(nb), score))[: got.size]
                np.testing.assert_array_equal(got, table.bucket_ids[head])


def test_lambda_zero_with_finite_tau_still_uses_drift_corrected_centroids() -> None:
    table = _table(50, 8, seed=2, lam=0.0, tau=100.0)
    w = table.inserts / (table.inserts + 100.0)
    exp = table.centroids + w[:, None] * (table.means - table.centroids)
    np.testing.assert_allclose(table.adjusted, exp, rtol=1e-5, atol=1e-6)
    assert not table.has_bonus  # lam = 0: no density bonus
    np.testing.assert_allclose(table.adjusted_sq, (table.adjusted.astype(np.float64) ** 2).sum(1), rtol=1e-5)


def test_drift_aware_route_moves_a_drifted_bucket_up() -> None:
    # bucket 0 was made at the origin but its vectors have moved to (10, 0, 0, 0); bucket 1 sits at 6
    c = np.array([[0, 0, 0, 0], [6, 0, 0, 0], [-6, 0, 0, 0]], dtype=np.float32)
    mu = np.array([[10, 0, 0, 0], [6, 0, 0, 0], [-6, 0, 0, 0]], dtype=np.float32)
    ids = np.array([100, 101, 102])
    inserts = np.array([5000.0, 0.0, 0.0])
    counts = np.array([5000.0, 300.0, 300.0])
    spreads = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    q = np.array([9.5, 0, 0, 0], dtype=np.float32)
    plain = RoutingTable.build(ids, c, mu, inserts, counts, spreads, lam=0.0, tau=INF)
    drift = RoutingTable.build(ids, c, mu, inserts, counts, spreads, lam=0.0, tau=50.0)
    assert route(plain, q, 1, "l2")[0] == 101  # the stale centroid loses the query
    assert route(drift, q, 1, "l2")[0] == 100  # ĉ ≈ μ wins it back
    np.testing.assert_array_equal(route_batch(drift, q[None, :], 1, "l2")[0], [100])


def test_density_bonus_breaks_near_ties_towards_wide_full_buckets() -> None:
    c = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    ids = np.array([7, 8])
    q = np.array([0.01, 0.0], dtype=np.float32)  # slightly closer to bucket 7
    spreads = np.array([0.1, 2.0], dtype=np.float32)  # bucket 8 is much wider
    counts = np.array([1000.0, 1000.0])
    inserts = np.zeros(2)
    t0 = RoutingTable.build(ids, c, c, inserts, counts, spreads, lam=0.0, tau=10.0)
    t1 = RoutingTable.build(ids, c, c, inserts, counts, spreads, lam=0.3, tau=10.0)
    assert route(t0, q, 2, "l2").tolist() == [7, 8]
    assert t1.has_bonus
    np.testing.assert_allclose(t1.bonus, 0.3 * spreads * 1000 / 1010, rtol=1e-6)
    assert route(t1, q, 2, "l2").tolist() == [8, 7]
    assert route_batch(t1, q[None, :], 2, "l2").tolist() == [[8, 7]]
    # ip: the bonus is subtracted from −q·ĉ/‖ĉ‖ too
    assert route(t0, q, 1, "ip").tolist() == [7]
    assert route(t1, q, 1, "ip").tolist() == [8]


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_route_batch_agrees_with_route(metric: str, lam: float) -> None:
    table = _table(500, 16, seed=3, lam=lam, tau=30.0)
    qs = np.random.default_rng(4).standard_normal((300, 16)).astype(np.float32)
    for nprobe in (1, 8, 500):
        batch = route_batch(table, qs, nprobe, metric)
        assert batch.shape == (300, min(nprobe, 500))
        single = np.stack([route(table, q, nprobe, metric) for q in qs])
        # float summation order differs (BLAS vs kernel): allow rare swaps of near-tied neighbours
        assert (batch == single).mean() > 0.99
        assert (batch[:, 0] == single[:, 0]).mean() > 0.99


def test_ip_routes_by_centroid_direction() -> None:
    # a long centroid must not win every ip query: bucket 1 points along q, bucket 0 is long but off-axis
    c = np.array([[10.0, 10.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    ids = np.array([5, 6, 7])
    t = RoutingTable.build(ids, c, c, np.zeros(3), np.ones(3), np.zeros(3, np.float32), lam=0.0, tau=INF)
    q = np.array([1.0, -0.2, 0.0], dtype=np.float32)
    assert route(t, q, 3, "ip").tolist() == [6, 5, 7]  # raw −q·c would put 5 first; the zero centroid scores 0
    assert route_batch(t, q[None, :], 3, "ip").tolist() == [[6, 5, 7]]
    np.testing.assert_allclose(np.linalg.norm(t.directions[:2], axis=1), 1.0, rtol=1e-6)
    assert not t.directions[2].any()


def test_empty_table_and_validation() -> None:
    empty = RoutingTable.build(
        np.zeros(0, np.int64), np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32),
        np.zeros(0), np.zeros(0), np.zeros(0, np.float32), lam=0.0, tau=INF,
    )  # fmt: skip
    assert route(empty, np.ones(3, np.float32), 5, "l2").shape == (0,)
    assert route_batch(empty, np.ones((2, 3), np.float32), 5, "l2").shape == (2, 0)
    table = _table(10, 3, seed=0)
    q = np.ones(3, np.float32)
    with pytest.raises(InvalidArgumentError):
        route(table, q, 0, "l2")
    with pytest.raises(InvalidArgumentError):
        route(table, q, 3, "manhattan")
    with pytest.raises(DimensionMismatchError):
        route(table, np.ones(4, np.float32), 3, "l2")
    with pytest.raises(DimensionMismatchError):
        route_batch(table, np.ones((2, 4), np.float32), 3, "l2")
    args = (table.bucket_ids, table.centroids, table.means, table.inserts, table.counts, table.spreads)
    for lam, tau in ((-1.0, INF), (float("nan"), INF), (0.1, 0.0), (0.1, -5.0), (0.1, float("nan"))):
        with pytest.raises(InvalidArgumentError):
            RoutingTable.build(*args, lam=lam, tau=tau)
    with pytest.raises(InvalidArgumentError):
        RoutingTable.build(table.bucket_ids[:5], *args[1:], lam=0.0, tau=INF)
    assert not table.adjusted.flags.writeable  # immutable snapshot state
