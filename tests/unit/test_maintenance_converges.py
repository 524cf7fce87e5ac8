"""Maintenance settles for every metric (issue 13): drift statistics are exactly zero right after ``train``
(the centroid is the mean of the rows the bucket holds, in the space of the running mean, also for cosine), and
an idle collection after a burst of inserts reaches zero pending jobs within a bounded number of jobs."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.maintenance.verify import check_l1

D = 16
N_TRAIN = 4000
N_MORE = 800


def _data(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    pick = rng.integers(0, centres.shape[0], n)
    return (centres[pick] + 0.3 * rng.standard_normal((n, D))).astype(np.float32)


@pytest.fixture
def eng(tmp_path):
    e = Engine.open(tmp_path / "d", durability="off")
    yield e
    e.close()


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_drift_is_zero_right_after_train(eng, metric):
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((12, D))
    col = eng.create_collection("c", D, metric, target_bucket_size=64, maintain_duty=0.0, bulk_min=1_000_000)
    col.upsert(np.arange(N_TRAIN), _data(rng, centres, N_TRAIN))
    col.train()
    for b in col.bucket_stats():
        assert b["drift"] <= 1e-5 * max(b["spread"], 1e-3), b
        assert b["drift_ratio"] <= 1e-4, b
    st = col.stats()
    assert st["drift_ratio_mean"] <= 1e-4 and st["drift_ratio_max"] <= 1e-4
    for h in col.snapshot.buckets.values():  # the centroid is the mean of the bucket's rows
        np.testing.assert_allclose(h.centroid, h.running_sum / h.count, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_idle_after_inserts_settles(eng, metric):
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((12, D))
    col = eng.create_collection(
        "c", D, metric, target_bucket_size=64, maintain_duty=0.0, bulk_min=1_000_000, memtable_max_vectors=100_000
    )
    col.upsert(np.arange(N_TRAIN), _data(rng, centres, N_TRAIN))
    col.train()
    col.maintain()  # whatever the fresh partition needs (oversized k-means clusters)
    buckets = len(col.snapshot.buckets)
    col.upsert(np.arange(N_TRAIN, N_TRAIN + N_MORE), _data(rng, centres, N_MORE))
    col.flush()
    budget = 2 * buckets  # jobs allowed to absorb the inserts
    jobs = moved = 0
    while jobs < budget:
        done = col.maintain(max_jobs=budget - jobs)
        jobs += done["jobs"]
        moved += done["moved"]
        if done["pending"] == 0 or done["jobs"] == 0:
            break
    st = col.stats()
    assert st["maintenance_pending"] == 0, (metric, jobs, moved, st["maintenance_pending"])
    total = N_TRAIN + N_MORE
    assert moved <= 2 * total, (metric, moved)  # settling moves a fraction of the data, not many times all of it
    assert len(col.snapshot.buckets) <= 2 * buckets
    with col._l1_lock:
        assert check_l1(col._kv, col.snapshot) == []
    assert len(col) == total
