"""The compiled search path (engine.fastsearch) returns exactly what the reference path (engine.search) returns:
same ids, bit-identical distances, on random collections with several segments, deletes, filters, duplicate
vectors (exact ties) and unflushed memtables, for every metric."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.engine import fastsearch
from drift_engine.engine.search import search_hybrid
from drift_engine.engine.validate import as_query
from drift_engine.errors import InvalidVectorError

D = 12


@pytest.fixture
def eng(tmp_path):
    e = Engine.open(tmp_path / "d", durability="off")
    yield e
    e.close()


def _build(eng, rng, metric: str, *, memtable: bool):
    col = eng.create_collection(
        f"c_{metric}_{int(memtable)}",
        D,
        metric,
        target_bucket_size=24,
        maintain_duty=0.0,
        bulk_min=5000,  # the first load goes straight to L1; later writes go through memtables
        memtable_max_vectors=400,
        auto_train_threshold=0,
    )
    centres = rng.standard_normal((6, D)) * 3
    n = 9000  # a filter keeping half of it is too large for the exact filtered scan: IVF with filter masks
    vecs = (centres[rng.integers(0, 6, n)] + rng.standard_normal((n, D))).astype(np.float32)
    vecs[100:140] = vecs[0]  # duplicates: exact distance ties, broken by id
    payloads = [{"tag": int(i % 2)} for i in range(n)]
    col.upsert(np.arange(n), vecs, payloads)
    col.train()
    more = (centres[rng.integers(0, 6, 600)] + 1.5 * rng.standard_normal((600, D))).astype(np.float32)
    col.upsert(np.arange(n, n + 600), more, [{"tag": int(i % 2)} for i in range(600)])
    col.flush()  # a second segment, buckets with several extents
    col.delete(rng.choice(n + 600, 300, replace=False))
    col.upsert(np.arange(200, 260), more[:60])  # replaced ids: dead rows in the first segment
    col.flush()
    if memtable:  # unflushed: deletes and replacements that hide L1 rows, and new rows
        col.delete(np.arange(500, 540))
        col.upsert(np.arange(600, 650), vecs[:50] + 0.01)
        col.upsert(np.arange(5000, 5100), more[:100] * 0.9)
        assert any(len(m) for m in col.snapshot.memtables)
    assert len(col.snapshot.segments) >= 2
    return col, vecs


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("memtable", [False, True])
def test_fast_path_matches_reference(eng, metric, memtable, monkeypatch):
    compiled = {"plain": 0, "filtered": 0}
    real = fastsearch.ivf_fast

    def counting(prep, query, k, nprobe, rerank, skip):
        compiled["plain" if skip is prep.u8 else "filtered"] += 1
        return real(prep, query, k, nprobe, rerank, skip)

    monkeypatch.setattr(fastsearch, "ivf_fast", counting)
    rng = np.random.default_rng(3)
    col, vecs = _build(eng, rng, metric, memtable=memtable)
    queries = np.concatenate([vecs[:5], rng.standard_normal((25, D)).astype(np.float32) * 3])
    snap = col.snapshot
    assert fastsearch.prepare(snap, metric) is not None
    checked = 0
    for qi, raw in enumerate(queries):
        q = as_query(raw, D, metric)  # what col.search searches with (normalised for cosine)
        for k, nprobe, rerank in ((10, 3, 4), (1, 1, 1), (50, 8, 2), (200, 200, 1)):
            for flt in (None, {"tag": qi % 2}):
                masks = None if flt is None else col._allowed_masks(snap, {"tag": str(qi % 2)})
                f = None if flt is None else {"tag": str(qi % 2)}
                want = search_hybrid(snap, q, k, nprobe, rerank, 64, metric, masks, f)
                got = fastsearch.search_fast(snap, q, k, nprobe, rerank, 64, metric, masks, f)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])
                assert got[1].dtype == np.float32 and got[0].dtype == np.int64
                if flt is None:
                    res = col.search(raw, k=k, nprobe=nprobe, rerank=rerank)
                    np.testing.assert_array_equal(res.ids, want[0])
                    np.testing.assert_array_equal(res.distances, want[1])
                checked += 1
    assert checked == len(queries) * 8
    assert compiled["plain"] > 0 and compiled["filtered"] > 0  # both went through the compiled scan


def test_ivf_fast_equals_ivf_scan_with_ties(eng):
    from drift_engine.engine.search import ivf_scan

    rng = np.random.default_rng(5)
    col, vecs = _build(eng, rng, "l2", memtable=False)
    snap = col.snapshot
    prep = fastsearch.prepare(snap, "l2")
    for q in (vecs[0], vecs[100], rng.standard_normal(D).astype(np.float32)):
        for k in (1, 5, 37):
            want = ivf_scan(snap, q, k, 4, 3, "l2")
            got = fastsearch.ivf_fast(prep, q, k, 4, 3, prep.u8)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    # the 41 copies of vecs[0] tie at distance 0: the lowest live ids win
    ids, dists = fastsearch.ivf_fast(prep, vecs[0], 5, 4, 10, prep.u8)
    assert np.all(dists == dists[0]) and list(ids) == sorted(ids)


def test_prepared_once_per_snapshot_and_refreshed_after_publish(eng):
    rng = np.random.default_rng(7)
    col, vecs = _build(eng, rng, "l2", memtable=False)
    snap = col.snapshot
    assert fastsearch.prepare(snap, "l2") is fastsearch.prepare(snap, "l2")
    col.delete([int(col.search(vecs[3], k=1).ids[0])])
    col.flush()
    assert col.snapshot is not snap
    fresh = fastsearch.prepare(col.snapshot, "l2")
    assert fresh is not fastsearch.prepare(snap, "l2")
    res = col.search(vecs[3], k=5, nprobe=4)
    want = search_hybrid(col.snapshot, vecs[3], 5, 4, col.params()["rerank"], 64, "l2")
    np.testing.assert_array_equal(res.ids, want[0])


def test_untrained_and_oversized_snapshots_take_the_reference_path(eng, monkeypatch):
    col = eng.create_collection("u", D, auto_train_threshold=0, maintain_duty=0.0)
    rng = np.random.default_rng(1)
    col.upsert(np.arange(300), rng.standard_normal((300, D)).astype(np.float32))
    col.flush()
    assert fastsearch.prepare(col.snapshot, "l2") is None
    col.train(n_buckets=8)
    seg = next(iter(col.snapshot.segments.values()))
    monkeypatch.setattr(seg.cache, "capacity_bytes", 16)
    assert fastsearch._build(col.snapshot, "l2") is None
    q = rng.standard_normal(D).astype(np.float32)
    monkeypatch.setitem(col.snapshot.prepared, ("fastsearch", "l2"), None)
    want = search_hybrid(col.snapshot, q, 7, 2, 4, 64, "l2")
    res = col.search(q, k=7, nprobe=2, rerank=4)
    np.testing.assert_array_equal(res.ids, want[0])


@pytest.mark.parametrize("case", ["l1", "memtable", "untrained"])
def test_non_finite_query_is_refused(eng, case):
    rng = np.random.default_rng(2)
    if case == "untrained":
        col = eng.create_collection("u", D, auto_train_threshold=0, maintain_duty=0.0)
        col.upsert(np.arange(50), rng.standard_normal((50, D)).astype(np.float32))
    else:
        col, _ = _build(eng, rng, "l2", memtable=case == "memtable")
    q = np.ones(D, dtype=np.float32)
    q[3] = np.nan
    with pytest.raises(InvalidVectorError):
        col.search(q, k=3)
    q[3] = np.inf
    with pytest.raises(InvalidVectorError):
        col.search(q, k=3)


def test_query_vector_copies_only_when_needed():
    q = np.ones(4, dtype=np.float32)
    assert fastsearch.query_vector(q, 4, "l2") is q
    assert fastsearch.query_vector(q, 4, "cosine") is not q  # normalised copy
    assert fastsearch.query_vector([1, 2, 3, 4], 4, "ip").dtype == np.float32
    assert fastsearch.query_vector(np.ones(8, np.float32)[::2], 4, "l2").flags.c_contiguous
