"""Write path: WAL + memtables + Janitor flush + hybrid search, versions, recovery, concurrency."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.errors import DuplicateIdError, InvalidParameterError
from tests.unit.threadcheck import ThreadGroup


@pytest.fixture
def rng():
    return np.random.default_rng(3)


def open_engine(path, **settings):
    return Engine.open(path, **settings)


def test_searchable_as_soon_as_upsert_returns(tmp_path, rng):
    with open_engine(tmp_path / "d") as eng:
        col = eng.create_collection("c", 16)
        base = rng.standard_normal((3000, 16)).astype(np.float32)
        col.upsert(np.arange(3000), base)
        col.train(n_buckets=16)
        for i in range(20):
            v = rng.standard_normal(16).astype(np.float32) * 10
            col.upsert([10_000 + i], v[None])
            assert col.search(v, k=1).ids.tolist() == [10_000 + i]
        assert col.stats()["memtable_count"] == 20
        assert len(col) == 3020


def test_newest_version_wins_across_levels(tmp_path, rng):
    with open_engine(tmp_path / "d") as eng:
        col = eng.create_collection("c", 8, memtable_max_vectors=16)
        base = rng.standard_normal((500, 8)).astype(np.float32)
        col.upsert(np.arange(500), base, payloads=[{"v": 0}] * 500)
        col.train(n_buckets=8)
        target = np.full(8, 5.0, dtype=np.float32)
        # version 1 lands in a memtable that is frozen/flushed, version 2 stays in the active one
        col.upsert([7], target[None] * 0.5, payloads=[{"v": 1}])
        col.upsert(np.arange(1000, 1020), rng.standard_normal((20, 8)))  # rotates (16 ops per memtable)
        col.upsert([7], target[None], payloads=[{"v": 2}])
        for _ in range(2):
            res = col.search(target, k=3, nprobe=8)
            assert res.ids[0] == 7 and res.distances[0] == pytest.approx(0.0, abs=1e-5)
            assert res.ids.tolist().count(7) == 1
            got = col.get([7])
            np.testing.assert_array_equal(got.vectors[0], target)
            assert got.payloads == [{"v": 2}]
            col.flush()
        assert len(col) == 520


def test_delete_in_memtable_hides_l1_copy_and_survives_flush(tmp_path, rng):
    with open_engine(tmp_path / "d") as eng:
        col = eng.create_collection("c", 8)
        base = rng.standard_normal((400, 8)).astype(np.float32)
        col.upsert(np.arange(400), base)
        col.train(n_buckets=4)
        assert col.delete([5, 6, 9999]) == 2
        assert 5 not in col.search(base[5], k=10, nprobe=4).ids.tolist()
        assert col.get([5, 6, 7]).ids.tolist() == [7]
        col.flush()
        assert 5 not in col.search(base[5], k=10, nprobe=4).ids.tolist()
        assert len(col) == 398 == col.stats()["l1_count"]
        col.upsert([5], base[5:6])
        assert col.search(base[5], k=1, nprobe=4).ids.tolist() == [5]


def test_insert_refuses_existing_in_memtable_and_l1(tmp_path, rng):
    with open_engine(tmp_path / "d") as eng:
        col = eng.create_collection("c", 4)
        col.upsert(np.arange(100), rng.standard_normal((100, 4)))
        col.flush()
        col.insert([200], rng.standard_normal((1, 4)))
        with pytest.raises(DuplicateIdError, match="2 id"):
            col.insert([50, 200, 300], rng.standard_normal((3, 4)))
        assert col.get([300]).ids.size == 0
        col.delete([200])
        col.insert([200], rng.standard_normal((1, 4)))  # a deleted id can be inserted again
        assert len(col) == 101


def test_rotation_and_janitor_flush(tmp_path, rng):
    with open_engine(tmp_path / "d") as eng:
        col = eng.create_collection("c", 8, memtable_max_vectors=50)
        base = rng.standard_normal((1000, 8)).astype(np.float32)
        for start in range(0, 1000, 10):
            col.upsert(np.arange(start, start + 10), base[start : start + 10])
        col.flush()
        st = col.stats()
        assert st["frozen_memtables"] == 0 and st["l1_count"] == 1000 and st["memtable_count"] == 0
        assert st["janitor_flushes"] + st["segments"] > 1
        ids, _ = col.search_batch(base[:50], k=1)
        np.testing.assert_array_equal(ids[:, 0], np.arange(50))


def test_wal_replay_after_unflushed_close(tmp_path, rng):
    base = rng.standard_normal((300, 8)).astype(np.float32)
    eng = open_engine(tmp_path / "d")
    col = eng.create_collection("c", 8)
    col.upsert(np.arange(200), base[:200])
    col.train(n_buckets=4)
    col.upsert(np.arange(200, 300), base[200:], payloads=[{"late": True}] * 100)
    col.delete([0, 1])
    col.upsert([2], base[3:4])
    col.close(flush=False)  # memtable content lives only in the WAL now
    eng.close()
    with open_engine(tmp_path / "d") as eng:
        col = eng.collection("c")
        assert len(col) == 298
        assert col.stats()["memtable_count"] == 100 + 1
        assert col.get([0, 1]).ids.size == 0
        np.testing.assert_array_equal(col.get([2]).vectors[0], base[3])
        assert col.get([250]).payloads == [{"late": True}]
        assert col.search(base[250], k=1, nprobe=4).ids.tolist() == [250]


def test_bulk_batch_goes_to_l1_and_wins_over_memtable(tmp_path, rng):
    with open_engine(tmp_path / "d") as eng:
        col = eng.create_collection("c", 8, bulk_min=100)
        col.upsert([1], np.ones((1, 8)))  # memtable version
        base = rng.standard_normal((150, 8)).astype(np.float32)
        col.upsert(np.arange(150), base)  # bulk: flushes memtables first, then writes L1 directly
        st = col.stats()
        assert st["memtable_count"] == 0 and st["l1_count"] == 150
        np.testing.assert_array_equal(col.get([1]).vectors[0], base[1])
        assert col.search(base[1], k=1).ids.tolist() == [1]


def test_durability_modes(tmp_path, rng):
    with open_engine(tmp_path / "d", durability="batch", batch_ms=5) as eng:
        col = eng.create_collection("c", 4)
        col.upsert([1], rng.standard_normal((1, 4)))
        col.upsert([2], rng.standard_normal((1, 4)), durability="sync")
        col.upsert([3], rng.standard_normal((1, 4)), durability="off")
        with pytest.raises(InvalidParameterError, match="durability"):
            col.upsert([4], rng.standard_normal((1, 4)), durability="fast")
        assert len(col) == 3
    with open_engine(tmp_path / "d") as eng:
        assert len(eng.collection("c")) == 3


def test_readers_see_each_live_vector_exactly_once_during_flushes(tmp_path, rng):
    n = 600
    with open_engine(tmp_path / "d") as eng:
        col = eng.create_collection("c", 8, memtable_max_vectors=40, auto_train_threshold=0)
        col.upsert(np.arange(n), rng.standard_normal((n, 8)))
        stop = threading.Event()
        searches = [0]

        def reader() -> None:
            q = np.zeros(8, dtype=np.float32)
            while not stop.is_set():
                res = col.search(q, k=n + 50)
                ids = res.ids.tolist()
                assert len(ids) == len(set(ids)), f"duplicate ids: {len(ids) - len(set(ids))}"
                assert len(ids) == n, f"saw {len(ids)} of {n} live vectors"
                searches[0] += 1

        group = ThreadGroup()
        for _ in range(2):
            group.start(reader)
        writer_rng = np.random.default_rng(9)
        try:
            for _ in range(30):
                ids = writer_rng.choice(n, 20, replace=False)
                col.upsert(ids, writer_rng.standard_normal((20, 8)))  # replace: the count never changes
            col.flush()
            while searches[0] < 2:  # the readers really ran against the writes (not only after them)
                col.upsert(ids, writer_rng.standard_normal((20, 8)))
        finally:
            stop.set()
            group.join()
        assert searches[0] >= 2


def test_no_reader_sees_a_deleted_file_during_train(tmp_path, rng):
    with open_engine(tmp_path / "d") as eng:
        col = eng.create_collection("c", 8)
        base = rng.standard_normal((3000, 8)).astype(np.float32)
        col.upsert(np.arange(3000), base)
        stop = threading.Event()
        counts: list[int] = []

        def reader() -> None:
            while not stop.is_set():
                counts.append(len(col.search(base[0], k=5, nprobe=64)))
                assert col.get([1, 2, 3]).ids.tolist() == [1, 2, 3]

        group = ThreadGroup()
        for _ in range(2):
            group.start(reader)
        try:
            for k in (4, 8, 16, 4):
                col.train(n_buckets=k)
        finally:
            stop.set()
            group.join()
        assert counts and all(c == 5 for c in counts)
        seg_dir = tmp_path / "d" / "collections" / "c" / "segments"
        assert len(list(seg_dir.iterdir())) == 1


def test_async_api(tmp_path, rng):
    async def main() -> None:
        with open_engine(tmp_path / "d") as eng:
            col = eng.create_collection("c", 4)
            base = rng.standard_normal((50, 4)).astype(np.float32)
            await asyncio.gather(*(col.upsert_async([i], base[i : i + 1]) for i in range(50)))
            res = await col.search_async(base[7], k=1)
            assert res.ids.tolist() == [7]
            assert await col.delete_async([7]) == 1
            got = await col.get_async([7, 8])
            assert got.ids.tolist() == [8]
            assert len(col) == 49

    asyncio.run(main())
