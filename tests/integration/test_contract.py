"""One contract, four backends: the embedded ``Engine``, the remote ``Client`` over gRPC and over the fast path, and
the asyncio ``AsyncClient`` (driven through ``async_adapter``).

Every test here runs unchanged against each backend (the ``engine`` fixture), with the same arguments, the
same result types and the same errors (class and message).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine import errors as E
from drift_engine.results import GetResult, SearchResult
from drift_engine.server.aclient import AsyncClient
from drift_engine.server.stream import search_stream
from tests.integration.async_adapter import SyncAsyncEngine

_ids = itertools.count()


class Backend:
    """The engine-like object a test uses; names collections uniquely and drops them at the end."""

    def __init__(self, kind: str, engine: Any) -> None:
        self.kind = kind
        self.engine = engine
        self.prefix = f"k{next(_ids)}_"
        self.made: list[str] = []

    def create(self, name: str, dim: int, metric: str = "l2", **params: Any) -> Any:
        self.made.append(self.prefix + name)
        return self.engine.create_collection(self.prefix + name, dim, metric, **params)

    def stream(self, col: Any, query: Any, **options: Any) -> Iterator[Any]:
        if self.kind == "embedded":
            return search_stream(col, query, **options)
        return iter(col.search_stream(query, **options))

    def cleanup(self) -> None:
        for name in self.made:
            if name in self.engine.list_collections():
                self.engine.drop_collection(name)


@pytest.fixture(params=["embedded", "grpc", "fast", "async"])
def backend(request, tmp_path) -> Iterator[Backend]:
    if request.param == "embedded":
        engine = Engine.open(tmp_path / "data")
        yield Backend("embedded", engine)
        engine.close()
        return
    server = request.getfixturevalue("server")
    if request.param == "async":
        engine = SyncAsyncEngine(lambda: AsyncClient(server.address, token=server.token))
        b = Backend("async", engine)
        try:
            yield b
        finally:
            b.cleanup()
            engine.close()
        return
    with server.client(fast_path=request.param == "fast") as client:
        b = Backend(request.param, client)
        try:
            yield b
        finally:
            b.cleanup()


def brute(base: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str = "l2") -> list[int]:
    if metric == "l2":
        d = np.linalg.norm(base.astype(np.float64) - q, axis=1)
    elif metric == "ip":
        d = -(base.astype(np.float64) @ q)
    else:
        bn = base / np.linalg.norm(base, axis=1, keepdims=True)
        d = 1 - bn.astype(np.float64) @ (q / np.linalg.norm(q))
    return ids[np.lexsort((ids, d))[:k]].tolist()


def test_collections(backend):
    a = backend.create("a", 4)
    backend.create("b", 8, metric="cosine", nprobe=3)
    names = backend.engine.list_collections()
    assert a.name in names and backend.prefix + "b" in names
    assert backend.engine.collection(backend.prefix + "b").params()["nprobe"] == 3
    with pytest.raises(E.CollectionExistsError, match="already exists"):
        backend.create("a", 4)
    backend.engine.drop_collection(a.name)
    with pytest.raises(E.CollectionNotFoundError, match=f"'{a.name}' does not exist"):
        backend.engine.collection(a.name)


def test_untrained_search_is_exact_with_types(backend):
    rng = np.random.default_rng(7)
    col = backend.create("x", 16)
    base = rng.standard_normal((500, 16)).astype(np.float32)
    ids = np.arange(1000, 1500, dtype=np.int64) * -1  # negative ids too
    assert col.upsert(ids, base) == 500 and len(col) == 500
    for q in rng.standard_normal((10, 16)).astype(np.float32):
        res = col.search(q, k=7)
        assert isinstance(res, SearchResult) and res.ids.dtype == np.int64 and res.distances.dtype == np.float32
        assert res.ids.tolist() == brute(base, ids, q, 7)
        np.testing.assert_allclose(res.distances[0], np.linalg.norm(base[ids == res.ids[0]][0] - q), rtol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_trained_recall_and_pgvector_distances(backend, metric):
    rng = np.random.default_rng(1)
    col = backend.create("m", 24, metric=metric)
    centers = rng.standard_normal((20, 24)).astype(np.float32) * 4
    base = (centers[rng.integers(0, 20, 3000)] + rng.standard_normal((3000, 24))).astype(np.float32)
    ids = np.arange(3000, dtype=np.int64)
    col.upsert(ids, base)
    col.train(n_buckets=24)
    hits = 0
    for q in rng.standard_normal((30, 24)).astype(np.float32) * 4:
        res = col.search(q, k=10, nprobe=24, rerank=10)
        hits += len(set(res.ids.tolist()) & set(brute(base, ids, q, 10, metric)))
        assert np.all(np.diff(res.distances) >= -1e-6)
    assert hits / 300 >= 0.99
    one = backend.create("one", 2, metric=metric)
    one.upsert([1], [[3.0, 4.0]])
    expected = {"l2": 5.0, "ip": -7.0, "cosine": 1 - 0.6}[metric]
    query = [0.0, 0.0] if metric == "l2" else ([1.0, 1.0] if metric == "ip" else [1.0, 0.0])
    assert one.search(query, k=1).distances[0] == pytest.approx(expected, abs=1e-6)


def test_upsert_insert_delete_get_payloads(backend):
    rng = np.random.default_rng(2)
    col = backend.create("u", 8)
    base = rng.standard_normal((300, 8)).astype(np.float32)
    col.upsert(np.arange(300), base, payloads=[{"v": 1, "tag": f"t{i % 3}"} for i in range(300)])
    new = np.full((1, 8), 9.0, dtype=np.float32)
    col.upsert([5], new, payloads=[{"v": 2}])
    got = col.get([5, 777, 4])
    assert isinstance(got, GetResult) and got.ids.tolist() == [5, 4] and got.vectors.dtype == np.float32
    np.testing.assert_array_equal(got.vectors[0], new[0])
    assert got.payloads == [{"v": 2}, {"v": 1, "tag": "t1"}]
    with pytest.raises(E.DuplicateIdError, match=r"2 id\(s\) already exist: 299, 7"):
        col.insert([299, 7, 1000], rng.standard_normal((3, 8)))
    assert len(col) == 300 and col.get([1000]).ids.size == 0
    assert col.delete([0, 1, 2, 12345]) == 3 and col.delete([0]) == 0 and len(col) == 297
    res = col.search(base[1], k=5)
    assert 1 not in res.ids.tolist()
    flt = col.search(base[10], k=8, filter={"tag": "t1"})
    assert len(flt) == 8 and all(p["tag"] == "t1" for p in flt.payloads)
    assert col.search(base[10], k=3, filter={"tag": "none"}).ids.size == 0


def test_search_batch_and_params_and_stats(backend):
    rng = np.random.default_rng(3)
    col = backend.create("p", 6)
    base = rng.standard_normal((50, 6)).astype(np.float32)
    col.upsert(np.arange(50), base)
    ids, dists = col.search_batch(base[:3], k=60)
    assert ids.shape == dists.shape == (3, 60) and ids.dtype == np.int64 and dists.dtype == np.float32
    assert ids[:, 0].tolist() == [0, 1, 2] and (ids[:, 50:] == -1).all() and np.isinf(dists[:, 50:]).all()
    assert col.set_params(nprobe=5, **{"lambda": 0.25})["lam"] == 0.25
    assert col.params()["nprobe"] == 5 and col.params()["dim"] == 6
    with pytest.raises(E.InvalidParameterError, match="unknown parameter 'bogus'"):
        col.set_params(bogus=1)
    with pytest.raises(E.InvalidParameterError, match="out of range"):
        col.set_params(rerank=0)
    stats = col.stats()
    assert stats["count"] == 50 and stats["dim"] == 6 and stats["name"] == col.name
    col.flush()
    assert col.stats()["memtable_count"] == 0 and col.stats()["l1_count"] == 50
    assert isinstance(col.maintain(), dict)


BAD_CALLS = [
    (lambda c: c.search([1.0, 2.0, 3.0]), E.DimensionMismatchError, "vector dimension 3 does not match"),
    (lambda c: c.search([1.0, np.nan, 0, 0]), E.InvalidVectorError, "contains NaN or Inf"),
    (lambda c: c.search([1.0, 0, 0, 0], k=0), E.InvalidArgumentError, r"k=0 is out of range \[1, 10000\]"),
    (lambda c: c.search([1.0, 0, 0, 0], k=10**6), E.InvalidArgumentError, "out of range"),
    (lambda c: c.search([1.0, 0, 0, 0], filter={"a": [1]}), E.InvalidFilterError, "must be a scalar"),
    (lambda c: c.search([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), E.InvalidVectorError, "one query vector, got 2"),
    (lambda c: c.upsert([1], [[1.0, 0, 0, np.inf]]), E.InvalidVectorError, "contains NaN or Inf"),
    (lambda c: c.upsert([1, 1], np.ones((2, 4))), E.InvalidArgumentError, "appears more than once"),
    (lambda c: c.upsert([1], np.ones((1, 4)), payloads=["x"]), E.InvalidPayloadError, "must be a JSON object"),
    (lambda c: c.upsert([1], np.ones((1, 4)), durability="maybe"), E.InvalidParameterError, "durability"),
    (lambda c: c.get(["a"]), E.InvalidArgumentError, "ids must be"),
    (lambda c: c.train(n_buckets=0), E.InvalidArgumentError, "n_buckets=0 is out of range"),
]


@pytest.mark.parametrize("call,cls,message", BAD_CALLS)
def test_bad_input_same_error_everywhere(backend, call, cls, message):
    col = backend.create("bad", 4)
    col.upsert([7], [[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(cls, match=message) as info:
        call(col)
    assert type(info.value) is cls
    assert len(col) == 1 and col.get([7]).vectors.tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_stream_contract(backend):
    rng = np.random.default_rng(4)
    col = backend.create("s", 8)
    base = rng.standard_normal((2000, 8)).astype(np.float32)
    col.upsert(np.arange(2000), base, payloads=[{"t": i % 4} for i in range(2000)])
    col.train(n_buckets=16)
    q = rng.standard_normal(8).astype(np.float32)
    hits = list(backend.stream(col, q, k=10, nprobe=1, batch_size=9))
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids)) >= 1900
    assert np.all(np.diff([h.distance for h in hits]) >= 0)
    assert hits[0].id == col.search(q, k=1, nprobe=1).ids[0]
    limited = list(backend.stream(col, q, k=3, filter={"t": 2}, limit=12, with_payloads=True))
    assert len(limited) == 12 and all(h.payload == {"t": 2} for h in limited)
    bounded = list(backend.stream(col, q, max_distance=2.0))
    assert bounded and max(h.distance for h in bounded) <= 2.0
    with pytest.raises(E.InvalidArgumentError, match=r"batch_size=-1 is out of range"):
        list(backend.stream(col, q, batch_size=-1))
