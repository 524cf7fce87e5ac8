"""memtable.hnsw under concurrency: 4 reader threads search (plain and filtered, graph and exact paths) while
one writer adds 20k vectors in batches (forcing many resizes), replaces and deletes.  Readers must never see
a deleted id, or an overwritten version, once the write that removed it has returned."""

from __future__ import annotations

import threading

import numpy as np

from drift_engine.memtable import hnsw
from drift_engine.memtable.hnsw import MemTable
from tests.unit.threadcheck import ThreadGroup

D = 16
TOTAL = 20_000
BATCH = 500
REPLACE = 150


class _History:
    """What the writer has made final: deleted ids and, per id, the newest version whose write returned.
    ``versions[id]`` lists every vector ever written for the id (appended before the write starts)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deleted: set[int] = set()
        self.current: dict[int, int] = {}  # id -> index into versions[id] of its newest completed write
        self.versions: dict[int, list[np.ndarray]] = {}

    def snapshot(self) -> tuple[frozenset[int], dict[int, int]]:
        with self.lock:
            return frozenset(self.deleted), dict(self.current)


def _writer(mt: MemTable, hist: _History, rng: np.random.Generator, done: threading.Event) -> None:
    lsn = 0
    try:
        for start in range(0, TOTAL, BATCH):
            lsn += 1
            ids = np.arange(start, start + BATCH, dtype=np.int64)
            vecs = rng.standard_normal((BATCH, D)).astype(np.float32)
            with hist.lock:
                for i, v in zip(ids.tolist(), vecs, strict=True):
                    hist.versions[i] = [v]
            mt.add(ids, vecs, None, lsn)
            with hist.lock:
                hist.current.update(dict.fromkeys(ids.tolist(), 0))
                live = [i for i in hist.current if i not in hist.deleted]
            # replace some live ids with a nearby version (so old and new would both rank)
            lsn += 1
            rep = rng.choice(live, size=REPLACE, replace=False).astype(np.int64)
            with hist.lock:
                rvecs = np.stack([hist.versions[i][-1] for i in rep.tolist()])
                rvecs = (rvecs + 0.05 * rng.standard_normal(rvecs.shape)).astype(np.float32)
                for i, v in zip(rep.tolist(), rvecs, strict=True):
                    hist.versions[i].append(v)
            mt.add(rep, rvecs, None, lsn)
            with hist.lock:
                for i in rep.tolist():
                    hist.current[i] = len(hist.versions[i]) - 1
            # delete a few (never re-added, so a reader may never see them again)
            lsn += 1
            dele = rng.choice(live, size=40, replace=False).astype(np.int64)
            mt.delete(dele, lsn)
            with hist.lock:
                hist.deleted.update(dele.tolist())
    finally:
        done.set()


def _reader(
    mt: MemTable,
    hist: _History,
    seed: int,
    done: threading.Event,
    errors: list[BaseException],
    stats: list[int],
) -> None:
    rng = np.random.default_rng(seed)
    try:
        n = 0
        while not done.is_set() or n < 20:
            deleted, current = hist.snapshot()
            q = rng.standard_normal(D).astype(np.float32)
            mode = n % 4
            if mode == 3:
                ids, dist = mt.search(q, 10, ef=32, allow=lambda i: i % 3 == 0)
                assert all(i % 3 == 0 for i in ids.tolist())
            elif mode == 2:
                ids, dist = mt.search_exact(q, 10)
            else:
                ids, dist = mt.search(q, 10, ef=32)
            id_list = ids.tolist()
            assert len(set(id_list)) == len(id_list), "an id appeared twice"
            assert np.all(np.diff(dist) >= 0)
            assert not deleted.intersection(id_list), "a deleted id was returned after its delete returned"
            with hist.lock:
                versions = {i: list(hist.versions[i]) for i in id_list}
            for i, dd in zip(id_list, dist.tolist(), strict=True):
                # the distance must belong to the newest completed version or a newer (in-flight) one
                ok = [abs(float(np.linalg.norm(v - q)) - dd) < 1e-4 for v in versions[i]]
                first = current.get(i, 0)
                assert any(ok[first:]), f"id {i}: distance of an overwritten version"
            if n % 16 == 0:
                found, _, _ = mt.get(np.array(list(deleted)[:50], dtype=np.int64))
                assert found.shape == (0,)
                assert all(mt.hides(np.array(list(deleted)[:50], dtype=np.int64)))
            n += 1
        stats.append(n)
    except BaseException as exc:
        errors.append(exc)


def test_readers_during_writes_resizes_and_deletes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(hnsw, "EXACT_SEARCH_CELLS", 4096)  # the graph path from 256 labels on
    monkeypatch.setattr(hnsw, "EXACT_FILTER_CELLS", 10_000 * D)  # filtered: exact first, the graph past 10k
    mt = MemTable(D, "l2", initial_capacity=64, ef_construction=40, num_threads=2)
    hist = _History()
    done = threading.Event()
    errors: list[BaseException] = []
    stats: list[int] = []
    group = ThreadGroup()
    for r in range(4):
        group.start(_reader, mt, hist, 100 + r, done, errors, stats)
    group.start(_writer, mt, hist, np.random.default_rng(1), done)
    group.join()  # every thread ended, none raised
    if errors:
        raise errors[0]
    assert len(stats) == 4 and min(stats) >= 20

    # final state is exactly what the writer did
    deleted, current = hist.snapshot()
    expected = {i: hist.versions[i][v] for i, v in current.items() if i not in deleted}
    assert len(mt) == len(expected) == TOTAL - len(deleted)
    assert mt.capacity >= mt.n_ops - len(mt.tombstones()) and mt.capacity == 64 * 2**9
    assert mt.tombstones().keys() == deleted
    ids, vecs, _ = mt.items()
    assert sorted(ids.tolist()) == sorted(expected)
    for i, v in zip(ids.tolist(), vecs, strict=True):
        np.testing.assert_array_equal(v, expected[i])
    exp_ids = np.array(sorted(expected), dtype=np.int64)
    exp_vecs = np.stack([expected[i] for i in exp_ids.tolist()])
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(20):
        q = rng.standard_normal(D).astype(np.float32)
        truth = exp_ids[np.argsort(np.linalg.norm(exp_vecs - q, axis=1), kind="stable")[:10]]
        ex_ids, _ = mt.search_exact(q, 10)
        assert set(ex_ids.tolist()) == set(truth.tolist())
        hits += len(set(mt.search(q, 10, ef=64)[0].tolist()) & set(truth.tolist()))
    assert hits >= 0.9 * 200


def test_delete_and_resize_wait_for_in_flight_searches() -> None:
    """A search holds the memtable shared: mark_deleted and resize (exclusive) wait until it is done."""
    mt = MemTable(4, "l2", initial_capacity=128)
    x = np.random.default_rng(0).standard_normal((128, 4)).astype(np.float32)
    mt.add(np.arange(128), x, None, lsn=1)
    for write, ident, before in (
        (lambda: mt.delete(np.array([5]), lsn=2), 5, "live"),
        (lambda: mt.add(np.arange(1000, 1100), x[:100], None, lsn=3), 1000, "absent"),  # needs a resize
    ):
        entered, release = threading.Event(), threading.Event()

        def blocking_allow(ident: int, entered: threading.Event = entered, release: threading.Event = release) -> bool:
            entered.set()
            assert release.wait(10)
            return True

        group = ThreadGroup()
        group.start(mt.search, x[0], 3, 16, blocking_allow)
        assert entered.wait(10)
        writer = group.start(write)
        writer.join(0.3)
        assert writer.is_alive(), "a write took the exclusive lock while a search was running"
        assert mt.lookup(ident) == before
        release.set()
        group.join()  # both ended and neither raised
    assert mt.lookup(5) == "deleted" and mt.lookup(1000) == "live" and mt.capacity == 256
