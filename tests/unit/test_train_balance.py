"""``train`` leaves balanced buckets: no bucket over the split size, so maintenance has no split pending right
after it (``index.train.balance``), and recall at equal nprobe matches what maintenance would settle into."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.datasets import DatasetNotFoundError, exact_top_k, find_dataset, load_dataset, recall_at_k
from drift_engine.errors import InvalidArgumentError
from drift_engine.index.train import assign, balance, kmeans
from drift_engine.l1 import train as trainer
from drift_engine.maintenance.scheduler import pending_jobs


def _skewed(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Blobs of very different sizes (a few hold most rows), as k-means meets on real data."""
    sizes = (rng.pareto(1.2, 40) + 1.0) * 10
    sizes = np.maximum(1, (sizes / sizes.sum() * n).astype(int))
    centres = rng.standard_normal((sizes.size, d)) * 4
    x = np.concatenate([centres[i] + rng.standard_normal((s, d)) for i, s in enumerate(sizes)])
    return x.astype(np.float32)


def _split_pending(col) -> int:
    return sum(1 for j in pending_jobs(col.snapshot, col._config.params) if j.kind == "split")


def test_balance_caps_cluster_sizes_and_keeps_nearest_assignment():
    rng = np.random.default_rng(0)
    x = _skewed(rng, 6000, 8)
    cents = kmeans(x, 20, seed=0)
    before = np.bincount(assign(x, cents)[0], minlength=20)
    assert before.max() > 400  # the input really is unbalanced
    out, labels = balance(x, cents, cap=400, target=300)
    counts = np.bincount(labels, minlength=out.shape[0])
    assert counts.max() <= 400
    assert out.shape[0] > 20
    np.testing.assert_array_equal(labels, assign(x, out)[0])  # every row sits with its nearest centroid
    with pytest.raises(InvalidArgumentError):
        balance(x, cents, cap=0, target=300)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_train_leaves_no_split_pending(tmp_path, metric):
    rng = np.random.default_rng(1)
    x = _skewed(rng, 8000, 8)
    with Engine.open(tmp_path / "d", durability="off") as eng:
        col = eng.create_collection("c", 8, metric, target_bucket_size=100, maintain_duty=0.0, auto_train_threshold=0)
        col.upsert(np.arange(x.shape[0]), x)
        col.train()
        assert _split_pending(col) == 0
        assert max(h.count for h in col.snapshot.buckets.values()) <= col._config.params.split_size
        assert sum(h.count for h in col.snapshot.buckets.values()) == x.shape[0]
        assert col.maintain()["splits"] == 0
        col.train(n_buckets=5)  # an explicit bucket count is taken as asked
        assert len(col.snapshot.buckets) == 5


def test_glove_prefix_balanced_after_train(tmp_path, monkeypatch):
    try:
        find_dataset("glove-6b-50d", build=False)
    except DatasetNotFoundError as exc:
        pytest.skip(f"shared datasets not available: {exc}")
    ds = load_dataset("glove-6b-50d", build=False)
    n, nq, nprobe = 100_000, 300, 16
    base, queries = ds.base[:n], ds.queries[:nq]
    gt = exact_top_k(base, queries, 10)

    def recall(col) -> float:
        found = np.stack([col.search(q, k=10, nprobe=nprobe).ids for q in queries])
        return recall_at_k(found, gt, 10)

    with Engine.open(tmp_path / "d", durability="off") as eng:
        fresh = eng.create_collection("balanced", 50, maintain_duty=0.0, auto_train_threshold=0)
        fresh.upsert(np.arange(n), base)
        fresh.train()
        assert _split_pending(fresh) == 0
        balanced_recall = recall(fresh)

        # the old layout (k-means only), then settled by maintenance: what users had after the splits ran
        monkeypatch.setattr(trainer, "balance", lambda x, c, *a, **kw: (c, assign(x, c)[0]))
        old = eng.create_collection("settled", 50, maintain_duty=0.0, auto_train_threshold=0)
        old.upsert(np.arange(n), base)
        old.train()
        assert _split_pending(old) > 20
        old.maintain()
        settled_recall = recall(old)
    assert balanced_recall >= settled_recall - 0.005
