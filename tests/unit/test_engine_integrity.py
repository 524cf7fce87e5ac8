"""Engine integrity (issue 10): a write that raises changed nothing, WAL replay refuses unknown record types,
point reads and scans read one pinned snapshot, embedded streaming search."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from drift_engine import Engine, crashpoints
from drift_engine.errors import CorruptionError
from drift_engine.memtable.hnsw import MemTable
from drift_engine.wal import records
from drift_engine.wal.log import WriteAheadLog
from tests.unit.threadcheck import ThreadGroup

D = 8


@pytest.fixture
def rng():
    return np.random.default_rng(21)


def wal_dir(root: Path, name: str = "c") -> Path:
    return root / "collections" / name / "wal"


def fail_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Make the named crash point raise ENOSPC instead of killing the process."""
    real = crashpoints.hit

    def hit(name: str) -> None:
        if name == point:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        real(name)

    monkeypatch.setattr(crashpoints, "hit", hit)


# ------------------------------------------------------------------ 1. a write that raises changed nothing
def _bulk_setup(eng: Engine, rng: np.random.Generator):
    col = eng.create_collection("c", D, bulk_min=100, auto_train_threshold=0)
    base = rng.standard_normal((50, D)).astype(np.float32)
    col.upsert(np.arange(50), base, payloads=[{"tag": "old"}] * 50)
    col.flush()
    bulk_ids = np.arange(25, 175)  # 25 replace existing ids, 125 are new
    bulk = rng.standard_normal((150, D)).astype(np.float32)
    return col, base, bulk_ids, bulk


def _assert_bulk_absent(col, base: np.ndarray) -> None:
    assert len(col) == 50
    assert len(col.search(base[0], k=200, filter={"tag": "bulk"})) == 0
    assert len(col.search(base[0], k=200, filter={"tag": "old"})) == 50
    got = col.get(np.arange(200))
    assert got.ids.tolist() == list(range(50))
    np.testing.assert_array_equal(got.vectors, base)
    assert got.payloads == [{"tag": "old"}] * 50


@pytest.mark.parametrize("point", ["flush.after_segments", "lmdb"])
def test_bulk_write_whose_l1_apply_fails_changed_nothing_even_after_reopen(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    with Engine.open(tmp_path / "d") as eng:
        col, base, bulk_ids, bulk = _bulk_setup(eng, rng)
        with monkeypatch.context() as m:
            if point == "lmdb":
                from drift_engine.storage.kv import KV

                real_apply = KV._apply

                def failing_apply(self, ops):
                    if any(db == b"loc" for _, db, _, _ in ops):
                        raise OSError(errno.EIO, "LMDB commit failed (injected)")
                    return real_apply(self, ops)

                m.setattr(KV, "_apply", failing_apply)
            else:
                fail_at(m, point)
            with pytest.raises(OSError, match="injected"):
                col.upsert(bulk_ids, bulk, payloads=[{"tag": "bulk"}] * 150)
        _assert_bulk_absent(col, base)
        seg_dir = tmp_path / "d" / "collections" / "c" / "segments"
        assert len(list(seg_dir.iterdir())) == len(col.snapshot.segments)  # its new files are gone
        col.close(flush=False)
    with Engine.open(tmp_path / "d") as eng:
        col = eng.collection("c")
        _assert_bulk_absent(col, base)  # replay does not resurrect it
        col.upsert(bulk_ids, bulk, payloads=[{"tag": "bulk"}] * 150)  # and writes go on
        assert len(col) == 175
        assert len(col.search(base[0], k=200, filter={"tag": "bulk"})) == 150
    with Engine.open(tmp_path / "d") as eng:
        assert len(eng.collection("c")) == 175


def test_bulk_write_refused_then_process_killed_stays_gone(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import errno, os, signal, sys
        import numpy as np
        from drift_engine import Engine, crashpoints
        rng = np.random.default_rng(1)
        eng = Engine.open(sys.argv[1])
        col = eng.create_collection("c", 8, bulk_min=100, auto_train_threshold=0)
        col.upsert(np.arange(50), rng.standard_normal((50, 8)))
        col.flush()
        real = crashpoints.hit
        def hit(name):
            if name == "flush.after_segments":
                raise OSError(errno.ENOSPC, "injected")
            real(name)
        crashpoints.hit = hit
        try:
            col.upsert(np.arange(50, 250), rng.standard_normal((200, 8)))
        except OSError:
            print("refused", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        print("accepted", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "d")], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "refused"
    with Engine.open(tmp_path / "d") as eng:
        col = eng.collection("c")
        assert len(col) == 50
        assert col.get(np.arange(50, 250)).ids.size == 0


def test_small_write_whose_memtable_apply_fails_is_not_replayed(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Engine.open(tmp_path / "d") as eng:
        col = eng.create_collection("c", D)
        col.upsert([1, 2], rng.standard_normal((2, D)))
        with monkeypatch.context() as m:

            def broken_add(self, *args, **kwargs):
                raise MemoryError("injected")

            m.setattr(MemTable, "add", broken_add)
            with pytest.raises(MemoryError, match="injected"):
                col.upsert([3], rng.standard_normal((1, D)))
        assert len(col) == 2 and col.get([3]).ids.size == 0
        col.upsert([4], rng.standard_normal((1, D)))
        col.close(flush=False)
    with Engine.open(tmp_path / "d") as eng:
        col = eng.collection("c")
        assert sorted(col.get([1, 2, 3, 4]).ids.tolist()) == [1, 2, 4]
        assert len(col) == 3


# ------------------------------------------------------------------ 2. replay refuses unknown record types
@pytest.mark.parametrize("rtype", [99, records.CREATE, records.PARAMS])
def test_replay_refuses_an_unknown_or_unexpected_record_type(tmp_path: Path, rng: np.random.Generator, rtype: int):
    with Engine.open(tmp_path / "d") as eng:
        col = eng.create_collection("c", D)
        col.upsert([1, 2], rng.standard_normal((2, D)))
        col.close(flush=False)
    with WriteAheadLog(wal_dir(tmp_path / "d")) as w:
        lsn = w.append(rtype, records.encode_json({"x": 1}))
        w.sync(lsn)
        rec = next(r for r in w.records() if r.lsn == lsn)
        path, offset = rec.path, rec.offset
    with pytest.raises(CorruptionError) as ei:
        Engine.open(tmp_path / "d")
    msg = str(ei.value)
    assert path in msg and f"offset {offset}" in msg and str(rtype) in msg


# ------------------------------------------------------------------ 4. point reads through the pinned snapshot
def _versioned(ids: np.ndarray, version: int) -> np.ndarray:
    """Vectors that name their id and version: column 0 = version, column 1 = id."""
    v = np.zeros((ids.size, D), dtype=np.float32)
    v[:, 0] = version
    v[:, 1] = ids
    v[:, 2:] = np.random.default_rng(version).standard_normal((ids.size, D - 2)) * 0.01 + (version % 7)
    return v


def test_get_between_an_l1_commit_and_its_publish_is_exact(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Engine.open(tmp_path / "d", durability="off") as eng:
        params = {"target_bucket_size": 32, "maintain_duty": 0.0, "bulk_min": 1_000_000, "memtable_max_vectors": 256}
        col = eng.create_collection("c", D, **params)
        base = rng.standard_normal((640, D)).astype(np.float32)
        col.upsert(np.arange(640), base)
        col.train()
        extra = (rng.standard_normal((900, D)) * 0.3 + 1.5).astype(np.float32)
        col.upsert(np.arange(1000, 1900), extra)
        col.flush()
        expected = dict(zip(range(640), base, strict=True)) | dict(zip(range(1000, 1900), extra, strict=True))
        ids = np.array(sorted(expected), dtype=np.int64)
        want = np.stack([expected[i] for i in ids.tolist()])
        checked: list[str] = []
        real = crashpoints.hit

        def hit(name: str) -> None:
            if name in ("maintain.after_commit", "flush.after_commit"):
                got = col.get(ids)  # LMDB has the new locations, the published snapshot the old ones
                assert got.ids.tolist() == ids.tolist(), name
                np.testing.assert_array_equal(got.vectors, want)
                checked.append(name)
            real(name)

        monkeypatch.setattr(crashpoints, "hit", hit)
        assert col.maintain()["splits"] >= 1
        col.upsert([5], base[5:6] + 1)
        expected[5] = base[5] + 1
        want[ids.tolist().index(5)] = expected[5]
        col.flush()
        assert "maintain.after_commit" in checked and "flush.after_commit" in checked


def test_gets_during_flush_and_maintenance_are_never_stale_or_torn(tmp_path: Path) -> None:
    n = 600
    with Engine.open(tmp_path / "d", durability="off") as eng:
        params = {"target_bucket_size": 32, "maintain_duty": 0.0, "memtable_max_vectors": 64}
        col = eng.create_collection("c", D, bulk_min=150, **params)
        ids = np.arange(n)
        col.upsert(ids, _versioned(ids, 1), payloads=[{"v": 1}] * n)
        col.train()
        acked = np.ones(n, dtype=np.int64)  # newest version acknowledged per id
        stop = [False]
        reads = [0]
        moved = [0]

        def writer() -> None:
            wr = np.random.default_rng(4)
            for version in range(2, 60):
                size = 200 if version % 9 == 0 else 30  # every 9th is a bulk write straight to L1
                chosen = np.sort(wr.choice(n, size, replace=False))
                col.upsert(chosen, _versioned(chosen, version), payloads=[{"v": version}] * size)
                acked[chosen] = version
                if version % 5 == 0:
                    col.flush()
                if version % 7 == 0:
                    moved[0] += col.maintain(max_jobs=4)["moved"]
            stop[0] = True

        def reader(seed: int) -> None:
            rr = np.random.default_rng(seed)
            while not stop[0]:
                want = np.sort(rr.choice(n, 40, replace=False))
                floor = acked[want].copy()
                got = col.get(want)
                assert got.ids.tolist() == want.tolist()
                versions = got.vectors[:, 0].astype(np.int64)
                np.testing.assert_array_equal(got.vectors[:, 1], want)
                assert [p["v"] for p in got.payloads] == versions.tolist()  # vector and payload agree
                assert (versions >= floor).all(), "a get returned a version older than one acknowledged"
                reads[0] += 1

        group = ThreadGroup()
        group.start(writer)
        for s in range(3):
            group.start(reader, 100 + s)
        group.join()
        assert reads[0] > 0
        assert moved[0] > 0  # maintenance moved rows while gets ran


def test_a_pinned_snapshot_reads_its_own_versions(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "d") as eng:
        col = eng.create_collection("c", D, bulk_min=100, auto_train_threshold=0)
        ids = np.arange(300)
        col.upsert(ids, _versioned(ids, 1), payloads=[{"v": 1}] * 300)
        col.flush()
        col.upsert([1000], _versioned(np.array([1000]), 1))  # the active memtable of `old` holds a write
        with col._snapshots.pin() as old:
            # bulk: rotates `old`'s active memtable (so later writes land in a newer one), flushes it, then L1
            col.upsert(ids[:200], _versioned(ids[:200], 2), payloads=[{"v": 2}] * 200)
            col.delete([7, 250])
            col.flush()
            col.train(n_buckets=4)
            got = col._reads.get(old, ids)  # what a get pinned on `old` reads
            assert got.ids.tolist() == ids.tolist()
            np.testing.assert_array_equal(got.vectors, _versioned(ids, 1))
            assert got.payloads == [{"v": 1}] * 300
        now = col.get(ids)
        assert 7 not in now.ids.tolist() and 250 not in now.ids.tolist()
        assert {p["v"] for p, i in zip(now.payloads, now.ids.tolist(), strict=True) if i < 200} == {2}


# ------------------------------------------------------------------ 5. scan and embedded streaming search
def test_scan_yields_every_live_vector_once_from_one_snapshot(tmp_path: Path) -> None:
    n = 900
    with Engine.open(tmp_path / "d", durability="off") as eng:
        col = eng.create_collection("c", D, memtable_max_vectors=64, target_bucket_size=32, maintain_duty=0.0)
        ids = np.arange(n)
        col.upsert(ids, _versioned(ids, 1), payloads=[{"v": 1}] * n)
        col.train()
        col.upsert(ids[:40], _versioned(ids[:40], 2), payloads=[{"v": 2}] * 40)  # memtable versions
        col.delete([3, 500])
        it = col.scan(100)
        first = next(it)
        # writes, flushes, train and maintenance while the scan is under way do not show in it
        col.upsert(np.arange(n, n + 50), _versioned(np.arange(n, n + 50), 3))
        col.delete([10, 600])
        col.flush()
        col.maintain()
        col.train(n_buckets=8)
        batches = [first, *it]
        assert all(len(b) <= 100 for b in batches)
        got_ids = np.concatenate([b.ids for b in batches])
        live = [i for i in range(n) if i not in (3, 500)]
        assert got_ids.tolist() == live  # in id order, each once
        vectors = np.concatenate([b.vectors for b in batches])
        versions = vectors[:, 0].astype(np.int64)
        np.testing.assert_array_equal(vectors[:, 1], got_ids)
        assert versions.tolist() == [2 if i < 40 else 1 for i in live]
        assert [p["v"] for b in batches for p in b.payloads] == versions.tolist()
        ids_only = list(col.scan(1000, vectors=False, payloads=False))
        assert len(ids_only) == 1 and ids_only[0].ids.size == n + 50 - 4
        assert ids_only[0].payloads == [None] * (n + 46) and ids_only[0].vectors.shape == (n + 46, D)


def test_scan_during_concurrent_maintenance_never_fails(tmp_path: Path) -> None:
    n = 800
    with Engine.open(tmp_path / "d", durability="off") as eng:
        col = eng.create_collection("c", D, memtable_max_vectors=64, target_bucket_size=32, maintain_duty=0.0)
        ids = np.arange(n)
        col.upsert(ids, _versioned(ids, 1))
        col.train()
        stop = [False]
        scans = [0]

        def churn() -> None:
            wr = np.random.default_rng(2)
            for version in range(2, 30):
                chosen = wr.choice(n, 60, replace=False)
                col.upsert(chosen, _versioned(chosen, version))  # replace: the live set never changes
                col.flush()
                col.maintain(max_jobs=3)
                if version % 10 == 0:
                    col.train()
            stop[0] = True

        def scanner() -> None:
            while not stop[0]:
                got = np.concatenate([b.ids for b in col.scan(128, payloads=False)])
                assert got.tolist() == list(range(n))
                scans[0] += 1

        group = ThreadGroup()
        group.start(churn)
        group.start(scanner)
        group.start(scanner)
        group.join()
        assert scans[0] > 0


def test_embedded_search_stream_matches_search(tmp_path: Path, rng: np.random.Generator) -> None:
    with Engine.open(tmp_path / "d") as eng:
        col = eng.create_collection("c", D)
        base = rng.standard_normal((500, D)).astype(np.float32)
        col.upsert(np.arange(500), base, payloads=[{"tag": f"t{i % 5}"} for i in range(500)])
        col.train(n_buckets=8)
        q = base[3]
        hits = list(col.search_stream(q, k=10, nprobe=1, batch_size=7, limit=60))
        assert len(hits) == 60 and len({h.id for h in hits}) == 60
        dists = [h.distance for h in hits]
        assert dists == sorted(dists)
        assert [h.id for h in hits[:7]] == col.search(q, k=10, nprobe=1).ids[:7].tolist()  # round 0
        exact = col.search(q, k=60, nprobe=8)
        filtered = list(col.search_stream(q, filter={"tag": "t1"}, with_payloads=True, limit=25))
        assert len(filtered) == 25 and all(h.payload == {"tag": "t1"} for h in filtered)
        bounded = list(col.search_stream(q, max_distance=float(exact.distances[4])))
        assert [h.id for h in bounded] == exact.ids[:5].tolist()
        everything = list(col.search_stream(q, batch_size=100))
        assert sorted(h.id for h in everything) == list(range(500))
