"""The asyncio client: ``AsyncClient`` / ``AsyncRemoteCollection``, on ``grpc.aio``.

Same methods, arguments, results and errors as ``Client`` / ``RemoteCollection`` (and so as the embedded
``Engine`` / ``Collection``), but every call is a coroutine and the streams are async iterators::

    async with AsyncClient("unix:/var/lib/drift/drift.sock") as client:
        col = await client.collection("items")
        hits = await col.search(query, k=10)
        async for hit in col.search_stream(query, max_distance=0.8):
            ...

Contract: one ``grpc.aio`` channel per ``AsyncClient``, bound to the event loop that first uses it (create
the client inside that loop). Deadlines as in ``Client`` (``timeout``, ``admin_timeout``, ``stream_timeout``).
Always gRPC (the fast paths are for the sync client, which PostgreSQL backends use). Leaving an
``async for`` over a stream early (``break``, an exception, or ``aclose()``) cancels the server's work.

TLS takes the same addresses and arguments as ``Client`` (``server/tls.py`` ``client_settings``): an address
``tls:HOST:PORT``, or ``HOST:PORT`` with ``tls_ca`` (the CA's PEM file or bytes) or ``tls`` (a ``ClientTLS``:
CA, name to check, pin, client certificate); TLS on a Unix socket address is refused (``InvalidArgumentError``,
as is an unreadable CA / certificate / key file, when the client is made). gRPC's channel credentials check
the server's chain and name. gRPC cannot check a pin: with ``pin`` set, the client makes one probe handshake
(``ClientTLS.probe``, on a worker thread so the event loop is not blocked) before its first call, and no call
is sent until the server presented exactly the pinned certificate; a mismatch fails that call (and each later
one, which probes again) with ``EngineUnavailableError`` saying so. A server certificate gRPC refuses (wrong
CA, wrong name) is an ``EngineUnavailableError`` whose hint names the CA trusted and the name checked;
another failed handshake (a plaintext listener, a client certificate the server wants) says that instead
(``ClientTLS.grpc_hint``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np

from drift_engine.errors import DriftError, EngineUnavailableError
from drift_engine.results import GetResult, SearchResult, StreamBatch, StreamHit
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb
from drift_engine.server import wire
from drift_engine.server.drift_pb2_grpc import DriftServiceStub
from drift_engine.server.tls import ClientTLS, client_settings

_DEFAULT: Any = object()
PROBE_TIMEOUT_S = 5.0  # the pin's probe handshake, as the sync Client's


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


class AsyncClient:
    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        timeout: float | None = 30.0,
        admin_timeout: float | None = None,
        stream_timeout: float | None = None,
        tls_ca: bytes | str | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        plain, tls = client_settings(address, tls_ca, tls)
        target, _ = wire.grpc_target(plain)
        options = wire.channel_options()
        self.address = address
        self.timeout = timeout
        self.admin_timeout = admin_timeout
        self.stream_timeout = stream_timeout
        self.tls = tls
        self._target = target
        self._metadata = wire.auth_metadata(token)
        self._pin_checked = tls is None or tls.pin is None
        self._pin_lock: asyncio.Lock | None = None
        if tls is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            creds, extra = tls.grpc()
            self._channel = grpc.aio.secure_channel(target, creds, options=options + extra)
        self.stub = DriftServiceStub(self._channel)

    async def _check_pin(self) -> None:
        """The pinned certificate's probe handshake, once per client before its first call (see the contract)."""
        if self._pin_checked:
            return
        if self._pin_lock is None:
            self._pin_lock = asyncio.Lock()
        async with self._pin_lock:
            if self._pin_checked:
                return
            assert self.tls is not None
            host, port = _host_port(self._target)
            await asyncio.to_thread(self.tls.probe, host, port, PROBE_TIMEOUT_S)
            self._pin_checked = True

    def _error(self, exc: grpc.RpcError) -> DriftError:
        err = wire.rpc_error(exc)
        if self.tls is not None and isinstance(err, EngineUnavailableError) and err.hint is None:
            err.hint = self.tls.grpc_hint(_host_port(self._target)[0], err.message)
        return err

    async def invoke(self, method: str, request: Any, timeout: Any = _DEFAULT) -> Any:
        await self._check_pin()
        deadline = self.timeout if timeout is _DEFAULT else timeout
        try:
            return await getattr(self.stub, method)(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    async def stream(self, method: str, request: Any) -> AsyncIterator[Any]:
        await self._check_pin()
        call = getattr(self.stub, method)(request, timeout=self.stream_timeout, metadata=self._metadata)
        try:
            async for msg in call:
                yield msg
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()

    async def health(self) -> dict[str, Any]:
        return wire.health_dict(await self.invoke("Health", pb.HealthRequest()))

    async def create_collection(self, name: str, dim: int, metric: str = "l2", **params: Any) -> AsyncRemoteCollection:
        req = wire.create_request(name, dim, metric, params)
        return AsyncRemoteCollection(self, await self.invoke("CreateCollection", req, self.admin_timeout))

    async def collection(self, name: str) -> AsyncRemoteCollection:
        info = await self.invoke("DescribeCollection", pb.CollectionRequest(collection=name))
        return AsyncRemoteCollection(self, info)

    async def has_collection(self, name: str) -> bool:
        return name in await self.list_collections()

    async def list_collections(self) -> list[str]:
        return list((await self.invoke("ListCollections", pb.ListCollectionsRequest())).names)

    async def drop_collection(self, name: str) -> None:
        await self.invoke("DropCollection", pb.CollectionRequest(collection=name), self.admin_timeout)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncRemoteCollection:
    def __init__(self, client: AsyncClient, info: pb.CollectionInfo) -> None:
        self._client = client
        self.name = info.name
        self.dim = int(info.dim)
        self.metric = info.metric

    def _req(self) -> pb.CollectionRequest:
        return pb.CollectionRequest(collection=self.name)

    def __repr__(self) -> str:
        return f"AsyncRemoteCollection({self.name!r}, dim={self.dim}, metric={self.metric!r})"

    async def count(self) -> int:
        """The number of live vectors (``len(col)`` of the sync API)."""
        return int((await self._client.invoke("DescribeCollection", self._req())).count)

    async def upsert(self, ids: Any, vectors: Any, payloads: Any = None, *, durability: str | None = None) -> int:
        req = wire.write_request(self.name, self.dim, ids, vectors, payloads, replace=True, durability=durability)
        return int((await self._client.invoke("Upsert", req)).count)

    async def insert(self, ids: Any, vectors: Any, payloads: Any = None, *, durability: str | None = None) -> int:
        req = wire.write_request(self.name, self.dim, ids, vectors, payloads, replace=False, durability=durability)
        return int((await self._client.invoke("Upsert", req)).count)

    async def delete(self, ids: Any, *, durability: str | None = None) -> int:
        return int((await self._client.invoke("Delete", wire.delete_request(self.name, ids, durability))).count)

    async def flush(self) -> int:
        return int((await self._client.invoke("Flush", self._req(), self._client.admin_timeout)).flushed)

    async def train(
        self, n_buckets: int | None = None, *, progress: Callable[[str, float], None] | None = None
    ) -> dict:
        req = pb.TrainRequest(collection=self.name, n_buckets=wire.opt_int(n_buckets, "n_buckets"))
        result = cv.loads_dict((await self._client.invoke("Train", req, self._client.admin_timeout)).json, "result")
        if progress is not None:
            progress("done", 1.0)
        return result

    async def maintain(self, max_jobs: int | None = None) -> dict[str, Any]:
        req = pb.MaintainRequest(collection=self.name, max_jobs=wire.opt_int(max_jobs, "max_jobs"))
        return cv.loads_dict((await self._client.invoke("Maintain", req, self._client.admin_timeout)).json, "result")

    async def get(self, ids: Any) -> GetResult:
        return cv.get_result(await self._client.invoke("Get", wire.get_request(self.name, ids)), self.dim)

    async def search(
        self,
        query: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
        with_payloads: bool = True,
    ) -> SearchResult:
        """The ``k`` nearest live vectors; payloads come with the hits (``with_payloads``, default here, as
        a lazy load cannot be awaited from a property)."""
        req = wire.search_request(
            self.name, self.dim, query, k, nprobe, rerank, filter, ef, with_payloads=with_payloads
        )
        return cv.search_result(await self._client.invoke("Search", req))

    async def search_batch(
        self,
        queries: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        req = wire.search_batch_request(self.name, self.dim, queries, k, nprobe, rerank, filter, ef)
        return wire.search_batch_result(await self._client.invoke("SearchBatch", req))

    async def search_stream_batches(
        self, query: Any, k: int | None = None, **options: Any
    ) -> AsyncIterator[StreamBatch]:
        req = wire.stream_request(self.name, self.dim, query, k=k, **options)
        async for msg in self._client.stream("SearchStream", req):
            yield wire.stream_batch(msg)
            if msg.done:
                return

    async def search_stream(self, query: Any, k: int | None = None, **options: Any) -> AsyncIterator[StreamHit]:
        """``StreamHit`` rows in non-decreasing distance (options as ``RemoteCollection.search_stream``)."""
        async for batch in self.search_stream_batches(query, k, **options):
            for hit in batch.hits():
                yield hit

    async def scan(
        self, batch_size: int | None = None, *, vectors: bool = True, payloads: bool = True
    ) -> AsyncIterator[GetResult]:
        req = pb.ScanRequest(
            collection=self.name,
            batch_size=wire.opt_int(batch_size, "batch_size") or 0,
            skip_vectors=not vectors,
            skip_payloads=not payloads,
        )
        async for msg in self._client.stream("Scan", req):
            yield cv.get_result(msg, self.dim)

    async def set_params(self, **params: Any) -> dict[str, Any]:
        resp = await self._client.invoke(
            "SetParams", wire.params_request(self.name, params), self._client.admin_timeout
        )
        return cv.loads_dict(resp.params_json, "params")

    async def params(self) -> dict[str, Any]:
        return cv.loads_dict((await self._client.invoke("GetParams", self._req())).params_json, "params")

    async def stats(self, buckets: bool = False) -> dict[str, Any]:
        req = pb.StatsRequest(collection=self.name, buckets=bool(buckets))
        return cv.loads_dict((await self._client.invoke("Stats", req)).json, "stats")

    async def bucket_stats(self) -> list[dict[str, Any]]:
        return (await self.stats(buckets=True)).get("bucket_stats", [])
