"""index.train: k-means on planted clusters, edge cases, validation; assign against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine.errors import InvalidArgumentError
from drift_engine.index.train import assign, default_sample_size, kmeans


def _planted(k: int, per: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k well-separated gaussian blobs: (points, labels, true centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32) * 100.0
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + rng.standard_normal((k * per, d)).astype(np.float32)
    perm = rng.permutation(x.shape[0])
    return x[perm], labels[perm], centres


def _brute_assign(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = ((x[:, None, :].astype(np.float64) - c[None, :, :].astype(np.float64)) ** 2).sum(axis=2)
    return d.argmin(axis=1), d.min(axis=1)


@pytest.mark.parametrize("spherical", [False, True])
def test_kmeans_finds_planted_clusters(spherical: bool) -> None:
    x, labels, centres = _planted(k=12, per=80, d=16, seed=1)
    if spherical:
        # blobs on the sphere: normalise both points and centres
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    c = kmeans(x, 12, seed=3, spherical=spherical)
    assert c.dtype == np.float32 and c.shape == (12, 16)
    if spherical:
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)
    found, _ = assign(x, c)
    # the partition is exactly the planted one (up to renaming clusters)
    pairs = set(zip(labels.tolist(), found.tolist(), strict=True))
    assert len(pairs) == 12
    assert len({a for a, _ in pairs}) == 12 and len({b for _, b in pairs}) == 12
    # and every centroid is the (normalised) mean of its planted blob
    nearest, _ = _brute_assign(c, centres)
    assert sorted(nearest.tolist()) == list(range(12))
    for j in range(12):
        mean = x[labels == nearest[j]].astype(np.float64).mean(axis=0)
        if spherical:
            mean /= np.linalg.norm(mean)
        np.testing.assert_allclose(c[j], mean, rtol=1e-4, atol=1e-4)


def test_kmeans_is_deterministic_and_seed_dependent() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    a = kmeans(x, 20, seed=5)
    b = kmeans(x, 20, seed=5)
    c = kmeans(x, 20, seed=6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_kmeans_k_equals_n_and_duplicates() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    c = kmeans(x, 30)
    # every point is its own centroid
    _, dist = assign(x, c)
    assert dist.max() < 1e-10
    # duplicates: fewer distinct points than k must not crash nor produce non-finite centroids
    dup = np.repeat(x[:4], 5, axis=0)
    c2 = kmeans(dup, 10)
    assert c2.shape == (10, 5) and np.isfinite(c2).all()
    _, dist2 = assign(dup, c2)
    assert dist2.max() < 1e-10
    # k = 1 is the mean
    c1 = kmeans(x, 1)
    np.testing.assert_allclose(c1[0], x.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_kmeans_improves_on_its_seeding_and_reports_progress() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 10)).astype(np.float32)
    seen: list[tuple[str, float]] = []
    c1 = kmeans(x, 25, max_iter=1, seed=1)
    c20 = kmeans(x, 25, max_iter=20, seed=1, progress=lambda s, f: seen.append((s, f)))
    assert assign(x, c20)[1].sum() < assign(x, c1)[1].sum()
    assert seen[0] == ("kmeans++", 0.0)
    assert all(s == "lloyd" for s, _ in seen[1:]) and len(seen) >= 3
    fractions = [f for _, f in seen[1:]]
    assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1.0


def test_kmeans_sample_size() -> None:
    x, labels, _ = _planted(k=5, per=400, d=4, seed=9)
    c = kmeans(x, 5, sample_size=200)
    found, _ = assign(x, c)
    assert len(set(zip(labels.tolist(), found.tolist(), strict=True))) == 5
    assert default_sample_size(10**6, 1500) == 192_000
    assert default_sample_size(1000, 10) == 1000
    assert default_sample_size(10**7, 10**6) == 10**6  # never fewer rows than clusters


def test_kmeans_rejects_bad_input() -> None:
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    for k in (0, -1, 11):
        with pytest.raises(InvalidArgumentError):
            kmeans(x, k)
    with pytest.raises(InvalidArgumentError):
        kmeans(x, 2.5)  # type: ignore[arg-type]
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InvalidArgumentError):
        kmeans(bad, 2)
    bad[3, 1] = np.inf
    with pytest.raises(InvalidArgumentError):
        kmeans(bad, 2)
    with pytest.raises(InvalidArgumentError):
        kmeans(np.zeros((0, 3), np.float32), 1)
    with pytest.raises(InvalidArgumentError):
        kmeans(x[0], 1)
    with pytest.raises(InvalidArgumentError):
        kmeans(x, 3, sample_size=2)
    with pytest.raises(InvalidArgumentError):
        kmeans(x, 3, max_iter=0)


def test_assign_equals_brute_force() -> None:
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((1500, 24)) * 3 + 10).astype(np.float32)  # off the origin on purpose
    c = (rng.standard_normal((97, 24)) * 3 + 10).astype(np.float32)
    labels, dist = assign(x, c, chunk=100)
    exp_labels, exp_dist = _brute_assign(x, c)
    assert labels.dtype == np.int64 and dist.dtype == np.float32
    assert np.array_equal(labels, exp_labels)
    np.testing.assert_allclose(dist, exp_dist, rtol=1e-5)
    # ties go to the lower centroid index
    c2 = np.vstack([c[:3], c[:3]])
    l2, _ = assign(x, c2)
    assert l2.max() < 3
    with pytest.raises(InvalidArgumentError):
        assign(x, c[:, :5])


def test_neighbourhood_iterations_for_larger_k(monkeypatch: pytest.MonkeyPatch) -> None:
    from drift_engine.index import train

    assert 2 * train._NEIGHBOURS < 100 <= train._MAX_NEIGHBOUR_K  # k = 100 takes the neighbourhood path
    x, labels, _ = _planted(k=100, per=20, d=8, seed=4)
    c = kmeans(x, 100, seed=1)
    found, _ = assign(x, c)
    assert len(set(zip(labels.tolist(), found.tolist(), strict=True))) == 100  # planted partition exactly
    # on unstructured data the approximate passes stay close to all-exact Lloyd
    rng = np.random.default_rng(6)
    y = rng.standard_normal((6000, 12)).astype(np.float32)
    approx = assign(y, kmeans(y, 100, seed=2))[1].sum()
    monkeypatch.setattr(train, "_MAX_NEIGHBOUR_K", 0)
    exact = assign(y, kmeans(y, 100, seed=2))[1].sum()
    assert approx < 1.03 * exact


def test_neighbourhood_assignment_kernel() -> None:
    from drift_engine.index.train import _assign_neighbours, _centroid_neighbours

    rng = np.random.default_rng(12)
    x = rng.standard_normal((800, 6)).astype(np.float32)
    c = rng.standard_normal((40, 6)).astype(np.float32)
    start = rng.integers(0, 40, 800).astype(np.int64)
    # every centroid a candidate: exactly the nearest-centroid assignment
    nbrs = _centroid_neighbours(c, 40)
    assert all(sorted(row) == list(range(40)) for row in nbrs.tolist())
    labels, dist = start.copy(), np.empty(800, np.float32)
    inertia = _assign_neighbours(x, c, nbrs, labels, dist)
    exp_labels, exp_dist = _brute_assign(x, c)
    assert np.array_equal(labels, exp_labels)
    np.testing.assert_allclose(dist, exp_dist, rtol=1e-5)
    assert inertia == pytest.approx(exp_dist.sum(), rel=1e-5)
    # few candidates: each centroid's list holds itself and its nearest others; no row gets farther
    nbrs = _centroid_neighbours(c, 5)
    cc = ((c[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(axis=2)
    for i, row in enumerate(nbrs.tolist()):
        assert i in row and set(row) == set(np.argsort(cc[i], kind="stable")[:5].tolist())
    labels = start.copy()
    before = ((x.astype(np.float64) - c[labels]) ** 2).sum(axis=1)
    _assign_neighbours(x, c, nbrs, labels, dist)
    assert all(labels[i] in nbrs[start[i]] for i in range(800))
    assert np.all(dist <= before + 1e-4)
    np.testing.assert_allclose(dist, ((x.astype(np.float64) - c[labels]) ** 2).sum(axis=1), rtol=1e-5)
