"""Embedded API: behaviour of Engine/Collection (writes, train, search, get, reopen, stats)."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    DirectoryLockedError,
    DuplicateIdError,
    EngineClosedError,
)


def brute_force(base: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str = "l2") -> np.ndarray:
    if metric == "l2":
        d = np.linalg.norm(base.astype(np.float64) - q, axis=1)
    elif metric == "ip":
        d = -(base.astype(np.float64) @ q)
    else:
        bn = base / np.linalg.norm(base, axis=1, keepdims=True)
        d = 1 - bn.astype(np.float64) @ (q / np.linalg.norm(q))
    order = np.lexsort((ids, d))[:k]
    return ids[order]


@pytest.fixture
def engine(tmp_path):
    eng = Engine.open(tmp_path / "data")
    yield eng
    eng.close()


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_create_list_drop(engine):
    engine.create_collection("a", 4)
    engine.create_collection("b", 8, metric="cosine", nprobe=3)
    assert engine.list_collections() == ["a", "b"]
    assert engine.collection("b").params()["nprobe"] == 3
    with pytest.raises(CollectionExistsError):
        engine.create_collection("a", 4)
    engine.drop_collection("a")
    assert engine.list_collections() == ["b"]
    with pytest.raises(CollectionNotFoundError, match="'a' does not exist"):
        engine.collection("a")


def test_untrained_search_is_exact(engine, rng):
    col = engine.create_collection("c", 16)
    base = rng.standard_normal((500, 16)).astype(np.float32)
    ids = np.arange(1000, 1500, dtype=np.int64)
    col.upsert(ids, base)
    for q in rng.standard_normal((20, 16)).astype(np.float32):
        res = col.search(q, k=7)
        np.testing.assert_array_equal(res.ids, brute_force(base, ids, q, 7))
        assert np.all(np.diff(res.distances) >= 0)
        np.testing.assert_allclose(res.distances[0], np.linalg.norm(base[res.ids[0] - 1000] - q), rtol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_trained_search_high_recall_each_metric(engine, rng, metric):
    col = engine.create_collection("m", 24, metric=metric)
    centers = rng.standard_normal((20, 24)).astype(np.float32) * 4
    base = (centers[rng.integers(0, 20, 4000)] + rng.standard_normal((4000, 24))).astype(np.float32)
    ids = np.arange(4000, dtype=np.int64) * 3 - 5000  # negative ids too
    col.upsert(ids, base)
    col.train(n_buckets=32)
    hits = 0
    for q in rng.standard_normal((50, 24)).astype(np.float32) * 4:
        res = col.search(q, k=10, nprobe=32, rerank=10)
        hits += len(set(res.ids.tolist()) & set(brute_force(base, ids, q, 10, metric).tolist()))
        assert np.all(np.diff(res.distances) >= -1e-6)
    assert hits / 500 >= 0.99


def test_distances_follow_pgvector(engine):
    l2 = engine.create_collection("l2", 2)
    ip = engine.create_collection("ip", 2, metric="ip")
    cos = engine.create_collection("cos", 2, metric="cosine")
    for col in (l2, ip, cos):
        col.upsert([1], [[3.0, 4.0]])
    assert l2.search([0.0, 0.0], k=1).distances[0] == pytest.approx(5.0)
    assert ip.search([1.0, 1.0], k=1).distances[0] == pytest.approx(-7.0)
    assert cos.search([1.0, 0.0], k=1).distances[0] == pytest.approx(1 - 0.6, abs=1e-6)


def test_upsert_replaces_insert_refuses(engine, rng):
    col = engine.create_collection("u", 8)
    base = rng.standard_normal((300, 8)).astype(np.float32)
    col.upsert(np.arange(300), base, payloads=[{"v": 1}] * 300)
    col.train(n_buckets=4)
    new = np.full((1, 8), 9.0, dtype=np.float32)
    col.upsert([5], new, payloads=[{"v": 2}])
    assert len(col) == 300
    got = col.get([5])
    np.testing.assert_array_equal(got.vectors, new)
    assert got.payloads == [{"v": 2}]
    assert col.search(new[0], k=1).ids.tolist() == [5]
    with pytest.raises(DuplicateIdError, match="2 id\\(s\\) already exist: 299, 7"):
        col.insert([299, 7, 1000], rng.standard_normal((3, 8)))
    assert len(col) == 300 and col.get([1000]).ids.size == 0
    assert col.stats()["count"] == 300


def test_delete_hides_and_stats_stay_exact(engine, rng):
    col = engine.create_collection("d", 8)
    base = rng.standard_normal((400, 8)).astype(np.float32)
    col.upsert(np.arange(400), base)
    col.train(n_buckets=8)
    assert col.delete([0, 1, 2, 12345]) == 3
    assert col.delete([0]) == 0
    res = col.search(base[1], k=5, nprobe=8)
    assert 1 not in res.ids.tolist()
    assert col.get([0, 3]).ids.tolist() == [3]
    live = np.arange(3, 400)
    col.flush()  # deletes sit in the memtable as tombstones until the flush applies them to L1
    total = sum(h.count for h in col.snapshot.buckets.values())
    sums = sum(h.running_sum for h in col.snapshot.buckets.values())
    assert total == 397 == len(col)
    np.testing.assert_allclose(sums, base[live].astype(np.float64).sum(axis=0), atol=1e-6)


def test_get_request_order_and_absent(engine, rng):
    col = engine.create_collection("g", 4)
    base = rng.standard_normal((10, 4)).astype(np.float32)
    col.upsert(np.arange(10), base, payloads=[{"i": i} for i in range(10)])
    got = col.get([7, 99, 2, 7])
    assert got.ids.tolist() == [7, 2, 7]
    np.testing.assert_array_equal(got.vectors, base[[7, 2, 7]])
    assert got.payloads == [{"i": 7}, {"i": 2}, {"i": 7}]


def test_filter_equality_fills_k(engine, rng):
    col = engine.create_collection("f", 8)
    base = rng.standard_normal((5000, 8)).astype(np.float32)
    tags = ["rare" if i % 100 == 0 else "common" for i in range(5000)]
    col.upsert(np.arange(5000), base, payloads=[{"tag": t, "n": i % 3} for i, t in enumerate(tags)])
    col.train(n_buckets=50)
    q = rng.standard_normal(8).astype(np.float32)
    res = col.search(q, k=10, nprobe=1, filter={"tag": "rare"})
    assert len(res) == 10
    assert all(i % 100 == 0 for i in res.ids.tolist())
    assert all(p["tag"] == "rare" for p in res.payloads)
    rare = np.arange(0, 5000, 100)
    np.testing.assert_array_equal(res.ids, brute_force(base[rare], rare, q, 10))
    both = col.search(q, k=5, filter={"tag": "common", "n": 2})
    assert all(i % 3 == 2 and i % 100 for i in both.ids.tolist())
    assert len(col.search(q, k=5, filter={"tag": "nope"})) == 0


def test_reopen_gives_identical_results(tmp_path, rng):
    base = rng.standard_normal((3000, 12)).astype(np.float32)
    queries = rng.standard_normal((30, 12)).astype(np.float32)
    with Engine.open(tmp_path / "d") as eng:
        col = eng.create_collection("r", 12)
        col.upsert(np.arange(3000), base, payloads=[{"k": i % 5} for i in range(3000)])
        col.train(n_buckets=16)
        col.upsert([5000], base[:1] + 1)
        col.delete([3, 4])
        col.set_params(nprobe=5)
        before = col.search_batch(queries, k=10)
        before_f = col.search(queries[0], k=10, filter={"k": 2})
        stats = col.stats()
    with Engine.open(tmp_path / "d") as eng:
        col = eng.collection("r")
        after = col.search_batch(queries, k=10)
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])
        np.testing.assert_array_equal(before_f.ids, col.search(queries[0], k=10, filter={"k": 2}).ids)
        assert col.params()["nprobe"] == 5
        assert col.stats()["count"] == stats["count"] == 2999
        assert col.stats()["buckets"] == stats["buckets"]


def test_train_retires_old_segments(tmp_path, rng):
    with Engine.open(tmp_path / "d") as eng:
        col = eng.create_collection("t", 8)
        for start in range(0, 2000, 500):
            col.upsert(np.arange(start, start + 500), rng.standard_normal((500, 8)))
            col.flush()
        seg_dir = tmp_path / "d" / "collections" / "t" / "segments"
        assert len(list(seg_dir.iterdir())) == 4
        col.train(n_buckets=10)
        assert len(list(seg_dir.iterdir())) == 1
        assert len(col) == 2000


def test_unreferenced_segment_removed_at_open(tmp_path, rng):
    with Engine.open(tmp_path / "d") as eng:
        eng.create_collection("x", 4).upsert([1], [[1, 2, 3, 4]])
    stray = tmp_path / "d" / "collections" / "x" / "segments" / "999999.drift"
    stray.write_bytes(b"\0" * 4096)
    with Engine.open(tmp_path / "d") as eng:
        assert not stray.exists()
        assert eng.collection("x").get([1]).ids.tolist() == [1]


def test_directory_lock_and_closed(tmp_path):
    eng = Engine.open(tmp_path / "d")
    with pytest.raises(DirectoryLockedError, match="in use"):
        Engine.open(tmp_path / "d")
    col = eng.create_collection("z", 2)
    eng.close()
    with pytest.raises(EngineClosedError):
        col.search([1, 2])
    with pytest.raises(EngineClosedError):
        eng.list_collections()
    Engine.open(tmp_path / "d").close()


def test_stats_fields(engine, rng):
    col = engine.create_collection("s", 8)
    col.upsert(np.arange(1000), rng.standard_normal((1000, 8)))
    col.train(n_buckets=10)
    col.search(rng.standard_normal(8), k=3)
    st = col.stats()
    for key in (
        "count",
        "buckets",
        "bucket_size_min",
        "bucket_size_median",
        "bucket_size_max",
        "cache_hits",
        "cache_misses",
        "disk_bytes",
    ):
        assert key in st
    assert st["buckets"] == 10 and st["count"] == 1000
    assert st["bucket_size_min"] <= st["bucket_size_median"] <= st["bucket_size_max"]
    assert st["disk_bytes"] > 1000 * 8 * 5
    assert st["cache_hits"] + st["cache_misses"] > 0


def test_recall_on_bigann_10k(engine):
    from drift_engine.datasets import load_dataset

    ds = load_dataset("bigann-10k")
    col = engine.create_collection("bigann", ds.base.shape[1])
    col.upsert(np.arange(len(ds.base)), ds.base)
    col.train()
    ids, _ = col.search_batch(ds.queries, k=10)
    recall = np.mean([len(set(ids[i]) & set(ds.gt[i, :10])) / 10 for i in range(len(ds.queries))])
    assert recall >= 0.95, recall
