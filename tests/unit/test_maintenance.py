"""Maintenance (DESIGN §9): split with neighbour stealing, scatter merge, compaction, urgency, the Maintainer,
per-bucket drift statistics, drift-aware routing parameters, and consistency under concurrent writes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.errors import InvalidParameterError
from drift_engine.l1 import rewrite
from drift_engine.maintenance.scheduler import pending_jobs
from drift_engine.maintenance.verify import check_l1
from tests.unit.threadcheck import ThreadGroup

D = 8


@pytest.fixture
def rng():
    return np.random.default_rng(11)


@pytest.fixture
def eng(tmp_path):
    e = Engine.open(tmp_path / "d", durability="off")
    yield e
    e.close()


def make(eng, name="m", **params):
    base = {"target_bucket_size": 32, "maintain_duty": 0.0, "bulk_min": 1_000_000, "memtable_max_vectors": 256}
    return eng.create_collection(name, D, **{**base, **params})


def assert_consistent(col, expected: dict[int, np.ndarray]) -> None:
    """L1 invariants hold and every live id has its newest vector, exactly once (nothing lost or resurrected)."""
    with col._l1_lock:
        assert check_l1(col._kv, col.snapshot) == []
    assert len(col) == len(expected)
    ids = np.array(sorted(expected), dtype=np.int64)
    got = col.get(ids)
    assert got.ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(got.vectors, np.stack([expected[i] for i in ids.tolist()]))


def blobs(rng, n, centre, scale=1.0):
    return (rng.standard_normal((n, D)) * scale + centre).astype(np.float32)


def test_split_keeps_buckets_under_split_size(eng, rng):
    col = make(eng)
    base = blobs(rng, 640, 0.0)
    col.upsert(np.arange(640), base)
    col.train()
    extra = blobs(rng, 900, 1.5, 0.3)  # lands in the few buckets nearest +1.5 (inside the SQ8 ranges)
    col.upsert(np.arange(1000, 1900), extra)
    col.flush()
    split_size = col._config.params.split_size
    assert col.stats()["bucket_size_max"] > split_size
    done = col.maintain()
    assert done["splits"] >= 1 and done["pending"] == 0
    st = col.stats()
    assert st["bucket_size_max"] <= split_size
    expected = {i: v for i, v in zip(range(640), base, strict=True)} | dict(zip(range(1000, 1900), extra, strict=True))
    assert_consistent(col, expected)
    for i in (1000, 1450, 1899):  # every vector is still found
        assert col.search(expected[i], k=1, nprobe=4).ids.tolist() == [i]


def test_split_steals_from_neighbours_and_resets_drift(eng, rng):
    col = make(eng, reassign_neighbors=16)
    col.upsert(np.arange(800), blobs(rng, 800, 0.0))
    col.train()
    col.upsert(np.arange(1000, 1700), blobs(rng, 700, 3.0, 0.7))
    col.flush()
    big = max(col.snapshot.buckets.values(), key=lambda h: h.count)
    out = col._maintenance.run_job("split", big.bucket_id)
    assert out is not None and out["kind"] == "split" and len(out["created"]) >= 2
    assert out["dropped"] == [big.bucket_id]
    for b in out["created"]:
        h = col.snapshot.buckets[b]
        assert h.inserts_since_centroid == 0 and h.drift() < 1e-5 and len(h.extents) == 1
    assert "stolen" in out and "given" in out
    with col._l1_lock:
        assert check_l1(col._kv, col.snapshot) == []


def test_merge_scatters_a_shrunken_bucket(eng, rng):
    col = make(eng)
    vecs = blobs(rng, 600, 0.0)
    col.upsert(np.arange(600), vecs)
    col.train()
    victim = max(col.snapshot.buckets.values(), key=lambda h: h.count)
    members = rewrite.bucket_rows(col.snapshot, victim.bucket_id).ids.tolist()
    col.delete(members[:-3])
    col.flush()
    jobs = pending_jobs(col.snapshot, col._config.params)
    assert any(j.kind == "merge" and j.bucket == victim.bucket_id for j in jobs)
    done = col.maintain()
    assert done["merges"] >= 1
    assert victim.bucket_id not in col.snapshot.buckets
    expected = {i: vecs[i] for i in range(600) if i not in set(members[:-3])}
    assert_consistent(col, expected)


def test_fresh_training_is_left_alone(eng, rng):
    col = make(eng)
    col.upsert(np.arange(300), blobs(rng, 300, 0.0))
    col.train(n_buckets=30)  # 10 per bucket: below merge_size, but just as the user asked
    assert pending_jobs(col.snapshot, col._config.params) == []
    assert col.maintain()["jobs"] == 0


def test_drift_criterion_recentres(eng, rng):
    col = make(eng, drift_split=0.5, reassign_neighbors=0, split_factor=100.0)
    col.upsert(np.arange(400), blobs(rng, 400, 0.0))
    col.train(n_buckets=4)
    h = max(col.snapshot.buckets.values(), key=lambda h: h.count)
    shifted = (h.centroid + 4.0 + rng.standard_normal((150, D)) * 0.3).astype(np.float32)
    col.upsert(np.arange(1000, 1150), shifted)
    col.flush()
    jobs = pending_jobs(col.snapshot, col._config.params)
    assert jobs and jobs[0].kind == "drift"
    done = col.maintain()
    assert done["recentres"] + done["splits"] >= 1
    assert max(b["drift_ratio"] for b in col.bucket_stats()) <= 0.5
    with col._l1_lock:
        assert check_l1(col._kv, col.snapshot) == []


def test_compaction_folds_extents_and_retires_segments(eng, rng, tmp_path):
    col = make(eng, compact_extents=4, target_bucket_size=512)
    col.upsert(np.arange(500), blobs(rng, 500, 0.0))
    col.train(n_buckets=4)
    for step in range(8):
        col.upsert(np.arange(1000 + 50 * step, 1050 + 50 * step), blobs(rng, 50, 0.0))
        col.flush()
    assert max(len(h.extents) for h in col.snapshot.buckets.values()) > 4
    seg_dir = tmp_path / "d" / "collections" / "m" / "segments"
    before = len(list(seg_dir.iterdir()))
    done = col.maintain()
    assert done["compactions"] + done["segment_compactions"] >= 1
    assert max(len(h.extents) for h in col.snapshot.buckets.values()) <= 4
    assert len(list(seg_dir.iterdir())) < before
    with col._l1_lock:
        assert check_l1(col._kv, col.snapshot) == []


def test_bucket_stats_are_exact_after_writes(eng, rng):
    col = make(eng)
    vecs = blobs(rng, 700, 0.0)
    col.upsert(np.arange(700), vecs)
    col.train()
    col.upsert(np.arange(700, 900), blobs(rng, 200, 2.0))
    col.delete(np.arange(0, 700, 3))
    col.upsert(np.arange(1, 100, 3), blobs(rng, 33, -1.0))  # replace some
    col.flush()
    st = col.stats(buckets=True)
    rows = st["bucket_stats"]
    assert sum(r["count"] for r in rows) == st["l1_count"] == len(col)
    for r in rows:
        h = col.snapshot.buckets[r["bucket"]]
        assert r["drift"] == pytest.approx(h.drift(), rel=1e-5, abs=1e-6)
        assert r["spread"] == pytest.approx(h.spread(), rel=1e-4, abs=1e-5)
        assert r["inserts_since_centroid"] == h.inserts_since_centroid
    for key in ("drift_ratio_max", "maintenance_pending", "splits", "merges", "moved_vectors"):
        assert key in st
    with col._l1_lock:
        assert check_l1(col._kv, col.snapshot) == []  # counts and sums equal a recomputation


def test_params_validated_and_lambda_tau_runtime(eng, rng):
    col = make(eng)
    col.upsert(np.arange(500), blobs(rng, 500, 0.0))
    col.train()
    col.upsert(np.arange(500, 700), blobs(rng, 200, 3.0))
    col.flush()
    q = blobs(rng, 20, 1.5)
    plain = col.search_batch(q, k=5, nprobe=2)
    col.set_params(**{"lambda": 0.5, "tau": 20.0})
    assert col.params()["lam"] == 0.5 and col.snapshot.routing.has_bonus
    col.set_params(lam=0.0, tau=float("inf"))
    again = col.search_batch(q, k=5, nprobe=2)
    np.testing.assert_array_equal(plain[0], again[0])  # lambda 0, tau inf: plain IVF again, bit for bit
    for bad in ({"split_factor": 0.5}, {"merge_factor": 2.0}, {"maintain_duty": 1.5}, {"reassign_neighbors": -1}):
        with pytest.raises(InvalidParameterError):
            col.set_params(**bad)
    col.set_params(split_factor=3.0, merge_factor=0.0, drift_split=0.0, maintain_interval=0.5)
    assert col._config.params.split_size == 96 and col._config.params.merge_size == 0


def test_background_maintainer_catches_up(eng, rng):
    col = make(eng, maintain_interval=0.02, maintain_duty=0.0)
    col.upsert(np.arange(640), blobs(rng, 640, 0.0))
    col.train()
    col.upsert(np.arange(1000, 2000), blobs(rng, 1000, 5.0, 0.5))
    col.flush()
    assert col.stats()["maintenance_pending"] > 0
    col.set_params(maintain_duty=0.5)
    deadline = time.time() + 20
    while (col.stats()["maintenance_pending"] or col._maintenance.busy) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # totals are added when the Maintainer's call returns
    st = col.stats()
    assert st["maintenance_pending"] == 0 and st["maintenance_jobs"] > 0 and st["maintainer_error"] is None
    assert st["bucket_size_max"] <= col._config.params.split_size


def test_reopen_after_maintenance(tmp_path, rng):
    vecs = blobs(rng, 1500, 0.0)
    with Engine.open(tmp_path / "d") as eng:
        col = make(eng)
        col.upsert(np.arange(600), vecs[:600])
        col.train()
        col.upsert(np.arange(600, 1500), vecs[600:] + 4)
        col.flush()
        col.maintain()
        q = blobs(rng, 10, 2.0)
        before = col.search_batch(q, k=10, nprobe=4)
        n_buckets = len(col.snapshot.buckets)
    with Engine.open(tmp_path / "d") as eng:
        col = eng.collection("m")
        assert len(col.snapshot.buckets) == n_buckets
        after = col.search_batch(q, k=10, nprobe=4)
        np.testing.assert_array_equal(before[0], after[0])
        with col._l1_lock:
            assert check_l1(col._kv, col.snapshot) == []


def test_compare_and_set_skips_rows_a_writer_moved(eng, rng):
    col = make(eng)
    vecs = blobs(rng, 700, 0.0)
    col.upsert(np.arange(700), vecs)
    col.train()
    snap = col.snapshot
    big = max(snap.buckets.values(), key=lambda h: h.count)
    rows = rewrite.bucket_rows(snap, big.bucket_id)
    other = next(b for b in snap.buckets if b != big.bucket_id)
    moved_id = int(rows.ids[0])
    col.upsert([moved_id], vecs[moved_id][None] + 0.01)  # a concurrent upsert: flushed before the job commits
    col.flush()
    plan = rewrite.Plan("compact", rows, np.full(rows.size, other, dtype=np.int64))
    with col._l1_lock:
        kept, _ = rewrite.check_locations(col._kv, plan)
        assert moved_id not in kept.rows.ids.tolist() and kept.rows.size == rows.size - 1
        dropping = rewrite.Plan("merge", rows, np.full(rows.size, other, dtype=np.int64), drop={big.bucket_id})
        assert rewrite.check_locations(col._kv, dropping) is None  # would orphan the new row: abandoned


def test_concurrent_writes_during_maintenance_never_lost_or_resurrected(eng, rng):
    col = make(eng, memtable_max_vectors=64)
    n = 800
    vecs = blobs(rng, n, 0.0)
    col.upsert(np.arange(n), vecs)
    col.train()
    expected = {i: vecs[i] for i in range(n)}
    stop = threading.Event()
    rounds: list[int] = []

    def maintain_loop():
        n = 0
        while True:  # at least one round, however quickly the writer finishes
            col.maintain(max_jobs=3)
            n += 1
            if stop.is_set():
                break
        rounds.append(n)

    group = ThreadGroup()
    group.start(maintain_loop)
    wr = np.random.default_rng(5)
    try:
        for step in range(60):
            centre = 0.2 * step
            ids = wr.choice(2 * n, 40, replace=False)
            v = blobs(wr, 40, centre, 0.8)
            col.upsert(ids, v)
            expected.update(zip(ids.tolist(), v, strict=True))
            gone = wr.choice(2 * n, 15, replace=False)
            col.delete(gone)
            for g in gone.tolist():
                expected.pop(g, None)
            if step % 10 == 0:
                col.flush()
    finally:
        stop.set()
        group.join()  # the maintainer ended and raised nothing
    assert len(rounds) == 1 and rounds[0] >= 1
    col.flush()
    col.maintain()
    assert col.stats()["splits"] + col.stats()["merges"] > 0
    assert_consistent(col, expected)


def _drifting_stream(rng, n=6000, d=32, k=40):
    """Clusters whose centres walk away from where they started: position t of the stream is at centre
    c_j + t · v_j (a stream where a static IVF's centroids go stale)."""
    start = rng.standard_normal((k, d)) * 2
    velocity = rng.standard_normal((k, d)) * 4
    t = np.sort(rng.random(n))
    j = rng.integers(0, k, n)
    x = start[j] + t[:, None] * velocity[j] + rng.standard_normal((n, d))
    return x.astype(np.float32)


def test_drifting_stream_maintenance_beats_static_ivf(tmp_path, rng):
    base = _drifting_stream(rng)
    n, n_train, nprobe = base.shape[0], base.shape[0] // 5, 1
    dim = base.shape[1]
    queries = base[rng.choice(n, 200, replace=False)] + rng.standard_normal((200, dim)).astype(np.float32) * 0.3
    d2 = (queries**2).sum(1)[:, None] - 2 * queries @ base.T + (base**2).sum(1)[None, :]
    gt = np.argsort(d2, axis=1)[:, :10]
    recall = {}
    with Engine.open(tmp_path / "d", durability="off") as eng:
        common = {"target_bucket_size": 64, "bulk_min": 1, "maintain_duty": 0.0}
        static = eng.create_collection(
            "static", dim, lam=0.0, tau=float("inf"), split_factor=1000.0, drift_split=0.0, **common
        )
        drift = eng.create_collection("drift", dim, **common)
        for col, n_buckets in ((static, n // 64), (drift, None)):
            col.upsert(np.arange(n_train), base[:n_train])
            col.train(n_buckets=n_buckets)
        for lo in range(n_train, n, 200):
            for col in (static, drift):
                col.upsert(np.arange(lo, lo + 200), base[lo : lo + 200])
            drift.maintain()
        for name, col in (("static", static), ("drift", drift)):
            ids, _ = col.search_batch(queries, k=10, nprobe=nprobe)
            recall[name] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), gt.tolist(), strict=True)])
        assert drift.stats()["bucket_size_max"] <= 2 * 64
        with drift._l1_lock:
            assert check_l1(drift._kv, drift.snapshot) == []
    assert recall["drift"] > recall["static"] + 0.03, recall
