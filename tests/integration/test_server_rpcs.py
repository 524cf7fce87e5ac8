"""Every RPC's happy path against a real server process, over gRPC, the fast path and the asyncio client;
SearchStream's order and uniqueness across rounds; cancelling a stream frees the server's work."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from drift_engine import errors as E
from drift_engine.results import StreamHit
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.aclient import AsyncClient
from tests.integration.harness import start_server

DIM = 16


def brute(base: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    d = np.linalg.norm(base.astype(np.float64) - q, axis=1)
    return np.lexsort((np.arange(len(base)), d))[:k].tolist()


@pytest.fixture(params=["grpc", "fast"])
def client(request, server):
    with server.client(fast_path=request.param == "fast") as c:
        if request.param == "fast":
            assert c.fast() is not None
        yield c


@pytest.fixture
def loaded(client, unique_name):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((3000, DIM)).astype(np.float32)
    col = client.create_collection(unique_name, DIM, nprobe=4)
    col.upsert(np.arange(3000), base, payloads=[{"tag": f"t{i % 5}", "i": i} for i in range(3000)])
    yield col, base, rng
    client.drop_collection(unique_name)


def test_collections_lifecycle(client, unique_name):
    col = client.create_collection(unique_name, 8, metric="cosine", nprobe=3)
    assert (col.name, col.dim, col.metric) == (unique_name, 8, "cosine")
    assert unique_name in client.list_collections() and client.has_collection(unique_name)
    described = client.collection(unique_name)
    assert (described.dim, described.metric, len(described)) == (8, "cosine", 0)
    assert described.params()["nprobe"] == 3
    client.drop_collection(unique_name)
    assert unique_name not in client.list_collections()


def test_writes_reads_and_index(loaded):
    col, base, rng = loaded
    assert len(col) == 3000
    got = col.get([7, 123456, 2])
    assert got.ids.tolist() == [7, 2]
    np.testing.assert_array_equal(got.vectors, base[[7, 2]])
    assert got.payloads == [{"tag": "t2", "i": 7}, {"tag": "t2", "i": 2}]
    q = rng.standard_normal(DIM).astype(np.float32)
    res = col.search(q, k=10)
    assert res.ids.tolist() == brute(base, q, 10)  # untrained: exact
    assert res.payloads[0]["i"] == res.ids[0]  # loaded lazily
    assert col.search(q, k=5, filter={"tag": "t3"}).payloads == [
        {"tag": "t3", "i": int(i)} for i in col.search(q, k=5, filter={"tag": "t3"}).ids
    ]
    ids, dists = col.search_batch(base[:4], k=3)
    assert ids.shape == (4, 3) and ids[:, 0].tolist() == [0, 1, 2, 3] and dists.dtype == np.float32
    assert col.delete([0, 1, 99999]) == 2 and len(col) == 2998
    assert col.insert([5000], base[:1], payloads=[{"tag": "new"}]) == 1
    assert col.flush() >= 0
    info = col.train(n_buckets=16)
    assert info["vectors"] == 2999 and info["buckets"] == 16
    assert col.search(base[0], k=1, nprobe=16).ids.tolist() == [5000]  # id 0 is deleted, 5000 has its vector
    assert col.set_params(nprobe=8, **{"lambda": 0.5})["lam"] == 0.5
    assert col.params()["nprobe"] == 8
    stats = col.stats()
    assert stats["count"] == 2999 and stats["trained"] and stats["buckets"] >= 16  # maintenance may split
    with_buckets = col.stats(buckets=True)  # one snapshot: background maintenance cannot slip in between
    assert len(with_buckets["bucket_stats"]) == with_buckets["buckets"] and isinstance(col.bucket_stats(), list)
    assert isinstance(col.maintain(max_jobs=1), dict)
    scanned = list(col.scan(batch_size=700))
    assert [len(b) for b in scanned] == [700, 700, 700, 700, 199]
    all_ids = np.concatenate([b.ids for b in scanned])
    assert all_ids.tolist() == sorted(set(range(2, 3000)) | {5000})
    np.testing.assert_array_equal(scanned[0].vectors[0], base[2])


def test_health_and_raw_stub(server):
    with server.client(fast_path=False) as c:
        health = c.health()
        assert health["status"] == "SERVING" and health["fast_path"].startswith("fast+unix:")
        assert health["max_k"] == 10_000 and health["pid"] == server.proc.pid
        resp = c.stub.ListCollections(pb.ListCollectionsRequest())
        assert isinstance(resp.names, object)


def test_search_stream_order_no_duplicates_across_rounds(loaded):
    col, _, rng = loaded
    col.train(n_buckets=32)
    q = rng.standard_normal(DIM).astype(np.float32)
    stream = col.search_stream(q, k=10, nprobe=1, batch_size=7)
    hits = list(stream)
    assert stream.rounds > 3 and stream.end_reason == "exhausted"
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids)) and len(ids) + stream.skipped >= 2990
    dists = np.array([h.distance for h in hits])
    assert np.all(np.diff(dists) >= 0)
    assert all(isinstance(h, StreamHit) for h in hits[:3])


def test_search_stream_bound_filter_limit_payloads(loaded):
    col, base, _ = loaded
    q = base[42]
    bounded = list(col.search_stream(q, k=5, max_distance=4.0))
    assert bounded and all(h.distance <= 4.0 for h in bounded)
    exact = np.linalg.norm(base - q, axis=1)
    assert len(bounded) == int((exact <= 4.0).sum())  # untrained: every round is exact
    filtered = list(col.search_stream(q, k=4, filter={"tag": "t1"}, with_payloads=True, limit=25))
    assert len(filtered) == 25 and all(h.payload["tag"] == "t1" for h in filtered)
    assert [h.id for h in filtered] == [i for i in np.argsort(exact, kind="stable").tolist() if i % 5 == 1][:25]


def test_cancel_mid_stream_frees_server_work(server, unique_name):
    rng = np.random.default_rng(5)
    with server.client(fast_path=False) as c:
        col = c.create_collection(unique_name, 32)
        col.upsert(np.arange(40_000), rng.standard_normal((40_000, 32)).astype(np.float32))
        q = rng.standard_normal(32).astype(np.float32)
        full = col.search_stream(q, k=10, batch_size=10)
        n_full = sum(1 for _ in full)
        rounds_full = full.rounds
        before = c.health()["stream_rounds"]
        stream = col.search_stream(q, k=10, batch_size=10)
        first = stream.next_batch()
        assert len(first.ids) == 10
        stream.close()
        deadline = time.monotonic() + 10
        while c.health()["active_streams"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.health()["active_streams"] == 0
        after, settled = c.health()["stream_rounds"], time.monotonic()
        while time.monotonic() - settled < 0.5 and time.monotonic() < deadline:  # a running round may finish
            time.sleep(0.05)
            now = c.health()["stream_rounds"]
            if now != after:
                after, settled = now, time.monotonic()
        assert c.health()["inflight"] == 1  # this Health call
        assert after - before < rounds_full, f"the cancelled stream ran all {rounds_full} rounds ({n_full} rows)"
        c.drop_collection(unique_name)


def test_fast_path_cursor_runs_rounds_on_demand(server, unique_name):
    with server.client() as c:
        col = c.create_collection(unique_name, 8)
        col.upsert(np.arange(5000), np.random.default_rng(1).standard_normal((5000, 8)).astype(np.float32))
        before = c.health()["stream_rounds"]
        stream = col.search_stream(np.zeros(8, np.float32), k=10, batch_size=10)
        next(stream)
        assert c.health()["active_streams"] == 1
        assert c.health()["stream_rounds"] - before == 1  # no read-ahead: one round for the first batch
        rows = [next(stream) for _ in range(15)]  # into the second round
        assert c.health()["stream_rounds"] - before == 2 and len(rows) == 15
        stream.close()
        assert c.health()["active_streams"] == 0
        c.drop_collection(unique_name)


def test_idle_fast_path_cursor_expires(tmp_path):
    srv = start_server(tmp_path / "data", "--cursor-idle", "0.2")
    try:
        with srv.client() as c:
            col = c.create_collection("e", 4)
            col.upsert(np.arange(100), np.random.default_rng(2).standard_normal((100, 4)))
            stream = col.search_stream(np.zeros(4, np.float32), k=5, batch_size=5)
            stream.next_batch()
            assert c.health()["active_streams"] == 1
            time.sleep(1.2)
            col.search_stream(np.zeros(4, np.float32), k=5).next_batch()  # an open sweeps expired cursors
            assert c.health()["active_streams"] == 1  # the new one
            with pytest.raises(E.InvalidArgumentError, match="unknown or expired stream cursor"):
                stream.next_batch()
    finally:
        assert srv.stop() == 0


def test_async_client_every_call(server, unique_name):
    async def main() -> None:
        async with AsyncClient(server.address) as client:
            col = await client.create_collection(unique_name, 4)
            assert unique_name in await client.list_collections()
            vecs = np.eye(4, dtype=np.float32)
            assert await col.upsert([1, 2, 3, 4], vecs, payloads=[{"n": i} for i in range(4)]) == 4
            assert await col.count() == 4
            res = await col.search([1, 0, 0, 0], k=2)
            assert res.ids.tolist()[0] == 1 and res.payloads[0] == {"n": 0}
            assert (await col.get([2])).payloads == [{"n": 1}]
            ids, _ = await col.search_batch(vecs, k=1)
            assert ids[:, 0].tolist() == [1, 2, 3, 4]
            hits = [h async for h in col.search_stream([1, 0, 0, 0], k=1, batch_size=1)]
            assert hits[0].id == 1 and len(hits) == 4
            assert sum([len(b) async for b in col.scan()]) == 4
            assert await col.delete([4]) == 1
            assert (await col.train(n_buckets=1))["vectors"] == 3
            assert await col.flush() >= 0
            assert (await col.set_params(nprobe=2))["nprobe"] == 2 and (await col.params())["nprobe"] == 2
            assert (await col.stats())["count"] == 3
            assert isinstance(await col.maintain(), dict)
            assert (await client.health())["status"] == "SERVING"
            await client.drop_collection(unique_name)

    asyncio.run(main())


def test_sync_async_twins(loaded):
    col, base, _ = loaded

    async def main() -> None:
        res = await col.search_async(base[3], k=1)
        assert res.ids.tolist() == [3]
        assert (await col.get_async([3])).ids.tolist() == [3]

    asyncio.run(main())
