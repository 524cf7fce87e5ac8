"""memtable.hnsw: MemTable against a float64 numpy brute force — recall, pgvector distances, replace,
delete/tombstones, int64 ids, growth, filters, freeze, bookkeeping (threads: test_memtable_concurrency)."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine.errors import DimensionMismatchError, InvalidArgumentError, InvalidParameterError
from drift_engine.memtable import hnsw
from drift_engine.memtable.hnsw import MemTable

METRICS = ("l2", "ip", "cosine")
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def _data(n: int, d: int, metric: str, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _ref(metric: str, q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """pgvector distances in float64 (cosine: inputs are unit vectors)."""
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if metric == "l2":
        return np.sqrt(((x64 - q64) ** 2).sum(axis=1))
    if metric == "ip":
        return -(x64 @ q64)
    return 1.0 - (x64 @ q64) / (np.linalg.norm(x64, axis=1) * np.linalg.norm(q64))


@pytest.fixture
def graph_only(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Force unfiltered and filtered searches through hnswlib; count exact fallbacks."""
    monkeypatch.setattr(hnsw, "EXACT_SEARCH_CELLS", 0)
    monkeypatch.setattr(hnsw, "EXACT_FILTER_CELLS", 0)
    monkeypatch.setattr(hnsw, "GRAPH_FILTER_MIN_SELECTIVITY", 0.0)
    calls = {"exact": 0}
    original = MemTable._exact_locked

    def counting(self, q, k, allow):  # type: ignore[no-untyped-def]
        calls["exact"] += 1
        return original(self, q, k, allow)

    monkeypatch.setattr(MemTable, "_exact_locked", counting)
    return calls


def _filled(n: int, d: int, metric: str, seed: int = 0, **kw: int) -> tuple[MemTable, np.ndarray]:
    x = _data(n, d, metric, seed)
    mt = MemTable(d, metric, **kw)
    mt.add(np.arange(n, dtype=np.int64), x, None, lsn=1)
    return mt, x


# --- search quality and distances ----------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRICS)
def test_graph_recall_and_exact_distances(metric: str, graph_only: dict[str, int]) -> None:
    mt, x = _filled(5000, 32, metric, initial_capacity=1024)
    queries = _data(60, 32, metric, seed=1)
    hits = 0
    for q in queries:
        ids, dist = mt.search(q, 10, ef=100)
        assert ids.dtype == np.int64 and dist.dtype == np.float32 and ids.shape == dist.shape == (10,)
        assert np.all(np.diff(dist) >= 0)
        np.testing.assert_allclose(dist, _ref(metric, q, x[ids]), rtol=1e-5, atol=1e-5)
        truth = np.argsort(_ref(metric, q, x), kind="stable")[:10]
        hits += len(set(ids.tolist()) & set(truth.tolist()))
    assert graph_only["exact"] == 0, "the graph path fell back to brute force"
    assert hits / (10 * len(queries)) >= 0.98


@pytest.mark.parametrize("metric", METRICS)
def test_search_exact_is_brute_force(metric: str) -> None:
    mt, x = _filled(700, 16, metric)
    mt.delete(np.arange(0, 700, 3), lsn=2)
    alive = np.setdiff1d(np.arange(700), np.arange(0, 700, 3))
    for q in _data(10, 16, metric, seed=5):
        ids, dist = mt.search_exact(q, 25)
        ref = _ref(metric, q, x[alive])
        order = np.argsort(ref, kind="stable")[:25]
        np.testing.assert_allclose(dist, ref[order], rtol=1e-5, atol=1e-5)
        assert set(ids.tolist()) <= set(alive.tolist())
        np.testing.assert_allclose(dist, _ref(metric, q, x[ids]), rtol=1e-5, atol=1e-5)
        # the default small-table path is exact too
        ids2, dist2 = mt.search(q, 25, ef=10)
        np.testing.assert_array_equal(ids2, ids)
        np.testing.assert_array_equal(dist2, dist)


def test_cosine_is_one_minus_cos_and_ip_is_minus_dot() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    q = np.array([1.0, 0.0], dtype=np.float32)
    cos = MemTable(2, "cosine")
    cos.add(np.array([1, 2, 3]), a, None, 1)
    ids, dist = cos.search(q, 3, ef=10)
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(dist, [0.0, 1.0, 2.0], atol=1e-6)
    ip = MemTable(2, "ip")
    ip.add(np.array([1, 2, 3]), a * 3, None, 1)
    ids, dist = ip.search(q, 3, ef=10)
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(dist, [-3.0, 0.0, 3.0], atol=1e-6)


def test_empty_and_k_zero() -> None:
    mt = MemTable(4, "l2")
    q = np.zeros(4, dtype=np.float32)
    for ids, dist in (mt.search(q, 5, 10), mt.search_exact(q, 5), mt.search(q, 5, 10, allow=lambda i: True)):
        assert ids.shape == dist.shape == (0,) and ids.dtype == np.int64
    mt.add(np.array([1]), np.ones((1, 4), np.float32), None, 1)
    assert mt.search(q, 0, 10)[0].shape == (0,)
    with pytest.raises(DimensionMismatchError):
        mt.search(np.zeros(5, np.float32), 1, 10)


# --- replace, delete, tombstones, ids ---------------------------------------------------------------------
@pytest.mark.parametrize("graph", [False, True])
def test_replace_delete_readd(graph: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if graph:
        monkeypatch.setattr(hnsw, "EXACT_SEARCH_CELLS", 0)
    mt, x = _filled(300, 8, "l2")
    old, new = x[7].copy(), x[7] + 50.0
    mt.add(np.array([7]), new[None, :], [b"v2"], lsn=2)
    assert len(mt) == 300 and mt.n_ops == 301
    ids, dist = mt.search(old, 300, ef=300)
    assert ids.tolist().count(7) == 1 and len(ids) == 300
    assert dist[ids.tolist().index(7)] == pytest.approx(float(np.linalg.norm(new - old)), rel=1e-5)
    assert mt.search(new, 1, ef=50)[0].tolist() == [7]
    got_ids, got_vecs, got_payloads = mt.get(np.array([7]))
    assert got_ids.tolist() == [7] and got_payloads == [b"v2"]
    np.testing.assert_array_equal(got_vecs[0], new)

    mt.delete(np.array([7, 8]), lsn=3)
    assert mt.lookup(7) == "deleted" and mt.lookup(8) == "deleted" and mt.lookup(9) == "live"
    assert mt.tombstones() == {7: 3, 8: 3}
    assert len(mt) == 298
    ids, _ = mt.search(new, 300, ef=300)
    assert 7 not in ids.tolist() and 8 not in ids.tolist() and len(ids) == 298
    assert mt.get(np.array([7, 8, 9]))[0].tolist() == [9]
    assert mt.payload(7) is None
    assert mt.hides(np.array([7, 8, 9, 12345])).tolist() == [True, True, True, False]

    mt.add(np.array([7]), old[None, :], [b"v3"], lsn=4)  # live again
    assert mt.lookup(7) == "live" and mt.tombstones() == {8: 3} and mt.payload(7) == b"v3"
    ids, dist = mt.search(old, 1, ef=50)
    assert ids.tolist() == [7] and dist[0] == pytest.approx(0.0, abs=1e-6)
    assert (mt.min_lsn, mt.max_lsn) == (1, 4)
    assert mt.n_ops == 302 + 1  # 302 labels used + 1 tombstone


def test_delete_of_absent_id_only_tombstones() -> None:
    mt, _ = _filled(10, 4, "l2")
    mt.delete(np.array([99, -5]), lsn=9)
    assert len(mt) == 10 and mt.tombstones() == {99: 9, -5: 9}
    assert mt.lookup(99) == "deleted" and mt.lookup(100) == "absent"
    assert mt.hides(np.array([99, -5, 3, 100])).tolist() == [True, True, True, False]
    mt.delete(np.array([99]), lsn=11)  # a later delete moves the tombstone's lsn
    assert mt.tombstones()[99] == 11 and mt.max_lsn == 11


@pytest.mark.parametrize("graph", [False, True])
def test_negative_and_extreme_int64_ids(graph: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if graph:
        monkeypatch.setattr(hnsw, "EXACT_SEARCH_CELLS", 0)
    ids = np.array([I64_MIN, I64_MAX, -1, 0, 2**62, -(2**40)], dtype=np.int64)
    x = _data(len(ids), 6, "l2", seed=3)
    mt = MemTable(6, "l2")
    mt.add(ids, x, [bytes([i]) for i in range(len(ids))], lsn=5)
    for i, q in enumerate(x):
        got, dist = mt.search(q, 1, ef=16)
        assert got.tolist() == [int(ids[i])] and dist[0] == pytest.approx(0.0, abs=1e-6)
    found, vecs, payloads = mt.get(np.array([I64_MAX, 17, I64_MIN]))
    assert found.tolist() == [I64_MAX, I64_MIN] and payloads == [b"\x01", b"\x00"]
    np.testing.assert_array_equal(vecs, x[[1, 0]])
    mt.delete(np.array([I64_MIN]), lsn=6)
    assert mt.lookup(I64_MIN) == "deleted" and mt.tombstones() == {I64_MIN: 6}
    assert sorted(mt.search(x[0], 10, ef=16)[0].tolist()) == sorted(ids[1:].tolist())


# --- growth and k ---------------------------------------------------------------------------------------
def test_growth_keeps_everything_searchable(graph_only: dict[str, int]) -> None:
    d, n = 12, 3000
    x = _data(n, d, "l2", seed=7)
    mt = MemTable(d, "l2", initial_capacity=4)
    sizes = [1, 1, 2, 3, 7, 50, 100, 1, 300, 500, 1035, 1000]
    assert sum(sizes) == n
    start, mem = 0, mt.memory_bytes()
    for lsn, size in enumerate(sizes, start=1):
        mt.add(np.arange(start, start + size), x[start : start + size], None, lsn=lsn)
        start += size
    assert len(mt) == n and mt.capacity >= n and mt.capacity == 4 * 2**10  # doubled ten times
    assert mt.memory_bytes() > mem
    for i in range(0, n, 7):
        ids, dist = mt.search(x[i], 1, ef=32)
        assert ids.tolist() == [i] and dist[0] == pytest.approx(0.0, abs=1e-5)
    item_ids, vecs, payloads = mt.items()
    np.testing.assert_array_equal(item_ids, np.arange(n))
    np.testing.assert_array_equal(vecs, x)
    assert payloads == [None] * n
    assert graph_only["exact"] == 0


def test_k_larger_than_live_count_returns_all_live(graph_only: dict[str, int]) -> None:
    mt, x = _filled(12, 5, "ip")
    mt.delete(np.arange(5), lsn=2)
    mt.add(np.array([6]), x[6:7] * 2, None, lsn=3)  # a replaced label must not count as live
    for k, ef in ((7, 1), (50, 10), (1000, 1000)):
        ids, dist = mt.search(x[0], k, ef=ef)
        assert sorted(ids.tolist()) == list(range(5, 12)) and np.all(np.diff(dist) >= 0)
    assert graph_only["exact"] == 0, "k > live count must be answered by the graph, not by a fallback"
    ids, _ = mt.search_exact(x[0], 1000)
    assert sorted(ids.tolist()) == list(range(5, 12))
    mt.delete(np.arange(12), lsn=4)
    assert mt.search(x[0], 10, ef=10)[0].shape == (0,)


class _PausingIndex:
    """Wraps the hnswlib index; runs ``during_add`` after the graph insert, before ``add`` publishes."""

    def __init__(self, index: object, during_add: object) -> None:
        self._index, self._during_add = index, during_add

    def __getattr__(self, name: str) -> object:
        return getattr(self._index, name)

    def add_items(self, *args: object, **kw: object) -> None:
        self._index.add_items(*args, **kw)  # type: ignore[attr-defined]
        self._during_add()  # type: ignore[operator]


@pytest.mark.parametrize("graph", [False, True])
def test_a_batch_becomes_visible_all_at_once(graph: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if graph:
        monkeypatch.setattr(hnsw, "EXACT_SEARCH_CELLS", 0)
    mt, x = _filled(200, 8, "l2")
    new = x[:3] + 0.001  # replaces ids 0..2 with near copies; 500..502 are new
    seen: list[tuple[list[int], list[int]]] = []

    def probe() -> None:  # a reader in the middle of the add: the old state only
        for i in range(3):
            ids, dist = mt.search(x[i], 5, ef=64)
            assert ids.tolist().count(i) == 1 and ids[0] == i and dist[0] == pytest.approx(0.0, abs=1e-6)
        near_new = set()
        for v in new + 0.002:
            near_new.update(mt.search(v, 10, ef=64)[0].tolist())
        seen.append((sorted(near_new & {500, 501, 502}), sorted(mt.items()[0].tolist())[-3:]))
        assert mt.get(np.array([500]))[0].shape == (0,) and mt.lookup(501) == "absent" and len(mt) == 200

    mt._index = _PausingIndex(mt._index, probe)  # type: ignore[assignment]
    mt.add(np.array([0, 1, 2, 500, 501, 502]), np.concatenate([new, new + 0.002]), None, lsn=2)
    assert seen == [([], [197, 198, 199])]
    ids, dist = mt.search(new[0], 6, ef=64)
    assert ids.tolist().count(0) == 1 and ids[0] == 0 and dist[0] == pytest.approx(0.0, abs=1e-6)
    for i, v in enumerate(new + 0.002):
        assert mt.search(v, 1, ef=64)[0].tolist() == [500 + i]
    assert len(mt) == 203


# --- filters --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["exact", "graph"])
def test_filtered_search_fills_k_with_allowed_ids(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "graph":
        monkeypatch.setattr(hnsw, "EXACT_FILTER_CELLS", 0)
        monkeypatch.setattr(hnsw, "GRAPH_FILTER_MIN_SELECTIVITY", 0.0)
    n, d = 4000, 16
    mt, x = _filled(n, d, "l2", seed=11)
    mt.delete(np.arange(0, n, 14), lsn=2)  # every 14th id is deleted (and is a multiple of 7)
    alive = np.setdiff1d(np.arange(n), np.arange(0, n, 14))
    for mod in (7, 97):  # 1/7: found in the first exact chunk; 1/97: needs the wider rounds
        allowed = alive[alive % mod == 0]
        for q in _data(10, d, "l2", seed=12):
            ids, dist = mt.search(q, 10, ef=64, allow=lambda i, m=mod: i % m == 0)
            assert len(ids) == 10 and all(i % mod == 0 and i % 14 != 0 for i in ids.tolist())
            assert np.all(np.diff(dist) >= 0)
            np.testing.assert_allclose(dist, _ref("l2", q, x[ids]), rtol=1e-5, atol=1e-5)
            truth = allowed[np.argsort(_ref("l2", q, x[allowed]), kind="stable")[:10]]
            overlap = len(set(ids.tolist()) & set(truth.tolist()))
            assert overlap == 10 if path == "exact" else overlap >= 8
    # a very selective filter: fewer allowed than k -> all of them (the graph path falls back to exact)
    few = {21, 35, 3999}
    ids, _ = mt.search(x[0], 10, ef=64, allow=lambda i: i in few)
    assert sorted(ids.tolist()) == [21, 35, 3999]
    # every round of the exact widening, down to the final pass over everything left
    for lo in (3990, 3900, 3000, 0):
        ids, dist = mt.search_exact(x[0], 5, allow=lambda i, lo=lo: i >= lo)
        cand = alive[alive >= lo]
        truth = cand[np.argsort(_ref("l2", x[0], x[cand]), kind="stable")[:5]]
        assert ids.tolist() == truth.tolist()


def test_filter_routing_by_size_and_selectivity(monkeypatch: pytest.MonkeyPatch) -> None:
    mt, x = _filled(3000, 8, "l2", seed=13)
    paths: list[str] = []
    for name in ("_exact_locked", "_graph_filtered_locked"):
        original = getattr(MemTable, name)

        def spy(self, *a, _o=original, _n=name):  # type: ignore[no-untyped-def]
            paths.append(_n)
            return _o(self, *a)

        monkeypatch.setattr(MemTable, name, spy)
    mt.search(x[0], 5, ef=32, allow=lambda i: i % 2 == 0)  # small: exact
    monkeypatch.setattr(hnsw, "EXACT_FILTER_CELLS", 0)  # "large" from now on
    mt.search(x[0], 5, ef=32, allow=lambda i: i % 2 == 0)  # broad filter: the graph
    ids, _ = mt.search(x[0], 5, ef=32, allow=lambda i: i % 100 == 0)  # selective (1 %): exact
    assert paths == ["_exact_locked", "_graph_filtered_locked", "_exact_locked"]
    assert all(i % 100 == 0 for i in ids.tolist()) and len(ids) == 5


# --- lifecycle and bookkeeping ---------------------------------------------------------------------------
def test_frozen_refuses_writes_but_serves_reads() -> None:
    mt, x = _filled(50, 4, "l2")
    mt.delete(np.array([3]), lsn=2)
    mt.freeze()
    assert mt.frozen
    with pytest.raises(RuntimeError):
        mt.add(np.array([100]), x[:1], None, lsn=3)
    with pytest.raises(RuntimeError):
        mt.delete(np.array([4]), lsn=3)
    assert len(mt) == 49 and mt.max_lsn == 2
    assert mt.search(x[4], 1, ef=10)[0].tolist() == [4]
    assert mt.get(np.array([4]))[0].tolist() == [4] and mt.lookup(3) == "deleted"
    assert len(mt.items()[0]) == 49 and mt.tombstones() == {3: 2}


def test_items_order_lsns_and_counters() -> None:
    mt = MemTable(3, "l2")
    assert (mt.min_lsn, mt.max_lsn, len(mt), mt.n_ops) == (0, 0, 0, 0)
    v = np.eye(3, dtype=np.float32)
    mt.add(np.array([10, 20, 30]), v, [b"a", None, b"c"], lsn=5)
    mt.add(np.array([20]), v[:1] * 7, [b"b2"], lsn=6)  # a replaced id moves to its newest write
    mt.delete(np.array([10, 40]), lsn=7)
    ids, vecs, payloads, lsns = mt.items(with_lsns=True)
    assert ids.tolist() == [30, 20] and payloads == [b"c", b"b2"] and lsns.tolist() == [5, 6]
    np.testing.assert_array_equal(vecs, np.stack([v[2], v[0] * 7]))
    assert len(mt.items()) == 3
    assert (mt.min_lsn, mt.max_lsn, len(mt)) == (5, 7, 2)
    assert mt.n_ops == 4 + 2  # four labels used, two tombstones
    assert mt.memory_bytes() > 0 and "live=2" in repr(mt)


def test_bad_input_is_refused_and_changes_nothing() -> None:
    mt, _ = _filled(5, 4, "l2")
    with pytest.raises(DimensionMismatchError):
        mt.add(np.array([9]), np.zeros((1, 5), np.float32), None, lsn=2)
    with pytest.raises(InvalidArgumentError):
        mt.add(np.array([9, 9]), np.zeros((2, 4), np.float32), None, lsn=2)
    with pytest.raises(InvalidArgumentError):
        mt.add(np.array([9, 10]), np.zeros((2, 4), np.float32), [b"x"], lsn=2)
    with pytest.raises(InvalidArgumentError):
        mt.add(np.array([9, 10]), np.zeros((3, 4), np.float32), None, lsn=2)
    with pytest.raises(InvalidArgumentError):
        mt.delete(np.array([1.5]), lsn=2)
    assert len(mt) == 5 and mt.n_ops == 5 and mt.max_lsn == 1
    with pytest.raises(InvalidParameterError):
        MemTable(4, "hamming")
    with pytest.raises(InvalidParameterError):
        MemTable(0, "l2")
