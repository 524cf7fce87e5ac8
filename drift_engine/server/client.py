"""The sync client: ``Client(address, token=None)`` mirrors ``Engine``, ``RemoteCollection`` mirrors ``Collection``.

Usage (the same code runs against an embedded ``Engine``)::

    from drift_engine.server.client import Client
    with Client("unix:/var/lib/drift/drift.sock") as client:
        col = client.create_collection("items", dim=50, metric="l2")
        col.upsert([1, 2], vectors, payloads=[{"tag": "a"}, {"tag": "b"}])
        hits = col.search(query, k=10, filter={"tag": "a"})
        for hit in col.search_stream(query, max_distance=0.8):   # lazy, non-decreasing distance
            ...

Contract:

* Same methods, arguments, result types (``SearchResult``, ``GetResult``) and errors as the embedded API:
  arguments are validated locally by the engine's validators, and every error the server raises comes
  back as the same ``DriftError`` subclass (transport failures: ``EngineUnavailableError``,
  ``DeadlineExceededError``, ...). ``*_async`` twins run the sync call on a thread, like the embedded ones;
  ``drift_engine.server.aclient.AsyncClient`` is the native asyncio client.
* One gRPC channel per (address, TLS settings) per process, shared by every ``Client`` (thread-safe); a
  forked child opens its own. TLS (``server/tls.py``): an address ``tls:HOST:PORT``, or ``tls_ca`` (the CA's
  PEM file or bytes) or ``tls`` (a ``ClientTLS``: CA, name to check, pin, client certificate) with
  ``HOST:PORT``; gRPC and the fast path (``fast+tls:``) then both check the server's chain and name, and
  its pin when one is set (gRPC through one probe handshake when the channel opens).
* Calls have a deadline: ``timeout`` seconds (default 30) for data calls, ``admin_timeout`` (default none)
  for train / flush / maintain / create / drop, ``stream_timeout`` (default none) for a whole stream.
* When the server advertises a fast path reachable from here (``fast+unix:`` on this host and ours to open,
  ``fast+tcp:``, ``fast+tls:`` (a wildcard host in it, ``0.0.0.0`` / ``::``, stands for the host dialled,
  which is also the name checked unless ``server_name`` says otherwise), or ZeroMQ's ``ipc://``) and
  ``fast_path`` is true, ``search``, ``get`` and ``search_stream`` use it (same messages, same errors, the
  same token); everything else is gRPC.
  ``cancel_check`` (called every 50 ms while waiting on the fast path or a unary gRPC call) may raise to
  abandon a call (e.g. PostgreSQL's query cancel).
* ``search_stream`` is lazy: nothing is asked of the server before the first row is wanted; over the fast
  path each further batch is fetched only when the previous one is used up. ``close()`` (or leaving a
  ``with`` block) cancels the server's work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np

from drift_engine.errors import DriftError, EngineUnavailableError
from drift_engine.results import GetResult, SearchResult
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb
from drift_engine.server import wire
from drift_engine.server.directclient import DirectClient
from drift_engine.server.drift_pb2_grpc import DriftServiceStub
from drift_engine.server.fastclient import SLICE_S, FastPathClient
from drift_engine.server.remotestream import PendingSearch, RemoteSearchStream
from drift_engine.server.tls import ClientTLS, client_settings
from drift_engine.server.txnclient import RemoteTransaction

_DEFAULT: Any = object()
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


class _Channel:
    def __init__(self, target: str, tls: ClientTLS | None) -> None:
        options = wire.channel_options()
        if tls is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            host, port = _host_port(target)
            if tls.pin is not None:
                tls.probe(host, port, timeout=5.0)
            creds, extra = tls.grpc()
            self.channel = grpc.secure_channel(target, creds, options=options + extra)
        self.stub = DriftServiceStub(self.channel)
        self.refs = 0


_channels: dict[tuple, _Channel] = {}
_channels_lock = threading.Lock()


def _forget_channels() -> None:  # in a forked child: the parent's channels are not ours to use or close
    _channels.clear()


os.register_at_fork(after_in_child=_forget_channels)


class Client:
    """A drift server, used like an embedded ``Engine``."""

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
        fast_path: bool = True,
        cancel_check: Callable[[], None] | None = None,
        fast_spin_us: int = 0,
    ) -> None:
        plain, tls = client_settings(address, tls_ca, tls)
        target, _ = wire.grpc_target(plain)
        self.address = address
        self.timeout = timeout
        self.admin_timeout = admin_timeout
        self.stream_timeout = stream_timeout
        self.cancel_check = cancel_check
        self.fast_spin_us = fast_spin_us  # DirectClient's busy-wait for replies (single-threaded callers only)
        self._token = token
        self._metadata = wire.auth_metadata(token)
        self._tls = tls
        self._key = (target, tls)
        with _channels_lock:
            shared = _channels.get(self._key)
            if shared is None:
                shared = _channels[self._key] = _Channel(target, tls)
            shared.refs += 1
        self._shared = shared
        self.stub = shared.stub
        self._fast: FastPathClient | bool | None = None if fast_path else False
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def invoke(self, method: str, request: Any, timeout: Any = _DEFAULT) -> Any:
        """One unary call with this client's deadline, token and error mapping."""
        fn = getattr(self.stub, method)
        deadline = self.timeout if timeout is _DEFAULT else timeout
        try:
            if self.cancel_check is None:
                return fn(request, timeout=deadline, metadata=self._metadata)
            future = fn.future(request, timeout=deadline, metadata=self._metadata)
            while True:
                try:
                    return future.result(timeout=SLICE_S)
                except grpc.FutureTimeoutError:
                    try:
                        self.cancel_check()
                    except BaseException:
                        future.cancel()
                        raise
        except grpc.RpcError as exc:
            raise self._rpc_error(exc) from None

    def _rpc_error(self, exc: grpc.RpcError) -> DriftError:
        """The DriftError of a failed call; over TLS an unavailable server's error says which CA and name
        were checked, or that the handshake failed (``ClientTLS.grpc_hint``), as the async client does."""
        err = wire.rpc_error(exc)
        if self._tls is not None and isinstance(err, EngineUnavailableError) and err.hint is None:
            err.hint = self._tls.grpc_hint(_host_port(self._key[0])[0], err.message)
        return err

    def stream(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, timeout=self.stream_timeout, metadata=self._metadata)

    def fast(self) -> FastPathClient | DirectClient | None:
        """The fast-path client when the server offers one reachable from here, else None (asked once)."""
        if self._fast is None:
            health = self.health()
            address = health["fast_path"]
            limit = health["max_message_bytes"]
            self._fast = False
            if address.startswith(("fast+unix:", "ipc://")):
                path = address.split(":", 1)[1].removeprefix("//")
                if not os.access(path, os.R_OK | os.W_OK):  # not on this host, or not ours to connect to
                    return None
            if address.startswith("ipc://"):
                self._fast = FastPathClient(
                    address, self._token, max_message_bytes=limit, cancel_check=self.cancel_check
                )
            elif address.startswith("fast+unix:"):
                self._fast = DirectClient(
                    address,
                    self._token,
                    max_message_bytes=limit,
                    cancel_check=self.cancel_check,
                    spin_us=self.fast_spin_us,
                )
            elif address.startswith(("fast+tcp:", "fast+tls:")):
                self._fast = self._tcp_fast(address, limit)
        return self._fast or None

    def _tcp_fast(self, address: str, limit: int) -> DirectClient:
        """The direct client of an advertised ``fast+tcp:`` / ``fast+tls:`` address, as seen from here."""
        scheme, rest = address.split(":", 1)
        host, port = _host_port(rest)
        dialled, _ = _host_port(self._key[0])
        if host in _WILDCARD_HOSTS:  # bound to every interface: reach it where we reached gRPC
            host = dialled
        tls = None
        if scheme == "fast+tls":
            tls = self._tls or ClientTLS()
            tls = tls if tls.server_name else dataclasses.replace(tls, server_name=dialled)
        where = f"{scheme}:[{host}]:{port}" if ":" in host else f"{scheme}:{host}:{port}"
        return DirectClient(
            where,
            self._token,
            max_message_bytes=limit,
            cancel_check=self.cancel_check,
            tls=tls,
            spin_us=self.fast_spin_us,
        )

    # ------------------------------------------------------------------ Engine's methods
    def health(self) -> dict[str, Any]:
        return wire.health_dict(self.invoke("Health", pb.HealthRequest()))

    def create_collection(self, name: str, dim: int, metric: str = "l2", **params: Any) -> RemoteCollection:
        req = wire.create_request(name, dim, metric, params)
        return RemoteCollection(self, self.invoke("CreateCollection", req, self.admin_timeout))

    def collection(self, name: str) -> RemoteCollection:
        return RemoteCollection(self, self.invoke("DescribeCollection", pb.CollectionRequest(collection=name)))

    def has_collection(self, name: str) -> bool:
        return name in self.list_collections()

    def list_collections(self) -> list[str]:
        return list(self.invoke("ListCollections", pb.ListCollectionsRequest()).names)

    def drop_collection(self, name: str) -> None:
        self.invoke("DropCollection", pb.CollectionRequest(collection=name), self.admin_timeout)

    # ------------------------------------------------------------------ engine transactions (engine.txn)
    def transaction(self, txn_id: str | None = None) -> RemoteTransaction:
        """A new server-side transaction handle (``with client.transaction() as t: ...`` commits at the end)."""
        return RemoteTransaction(self, txn_id or f"client-{os.getpid()}-{uuid.uuid4().hex}")

    def _txn(self, field: str, rpc: str, req: Any) -> pb.TxnResponse:
        """A transaction RPC: over the direct fast path when the server offers one (one socket round trip),
        else gRPC. Never retried on either: a call whose reply is lost has an unknown outcome."""
        fast = self.fast()
        if isinstance(fast, DirectClient):
            return fast.call(pb.FastRequest(**{field: req}), self.timeout).txn
        return self.invoke(rpc, req)

    def txn_stage(self, txn_id: str, ops: list[pb.TxnOp], *, prepare: bool = False) -> int:
        """Stage ``ops`` (``txnclient.txn_op`` messages) into ``txn_id``; returns the rows staged. With
        ``prepare``, the transaction is then prepared in the same call and the prepared row count returned."""
        req = pb.StageTxnRequest(txn_id=txn_id, ops=ops, prepare=prepare)
        return int(self._txn("txn_stage", "StageTxn", req).rows)

    def stage_request(self, txn_id: str, *, prepare: bool = False) -> tuple[Any, pb.StageTxnRequest]:
        """(request, stage): an empty ``StageTxn`` to fill (``txn_op(..., into=stage.ops.add())``) and send
        with ``send_stage(request)``. On the direct fast path it is built inside the frame's request, so
        large vectors are not copied from message to message."""
        if isinstance(self.fast(), DirectClient):
            request = pb.FastRequest()
            stage = request.txn_stage
        else:
            request = stage = pb.StageTxnRequest()
        stage.txn_id = txn_id
        stage.prepare = prepare
        return request, stage

    def send_stage(self, request: Any) -> int:
        """Send a ``stage_request``; returns what ``txn_stage`` returns."""
        if isinstance(request, pb.FastRequest):
            fast = self.fast()
            if isinstance(fast, DirectClient):
                return int(fast.call(request, self.timeout).txn.rows)
            request = request.txn_stage  # the fast path went away meanwhile: the same call over gRPC
        return int(self.invoke("StageTxn", request).rows)

    def txn_prepare(self, txn_id: str) -> dict[str, int]:
        return {"rows": int(self._txn("txn_prepare", "PrepareTxn", pb.TxnRequest(txn_id=txn_id)).rows)}

    def txn_commit(self, txn_id: str, durability: str | None = None) -> dict[str, int]:
        resp = self._txn("txn_commit", "CommitTxn", pb.TxnRequest(txn_id=txn_id, durability=durability or ""))
        return {"written": int(resp.written), "deleted": int(resp.deleted), "seq": int(resp.seq)}

    def txn_abort(self, txn_id: str) -> bool:
        return bool(self._txn("txn_abort", "AbortTxn", pb.TxnRequest(txn_id=txn_id)).found)

    def close(self) -> None:
        """Release this client's share of the process-wide channel (closed when the last client lets go)."""
        if self._closed:
            return
        self._closed = True
        with _channels_lock:
            self._shared.refs -= 1
            if self._shared.refs <= 0 and _channels.get(self._key) is self._shared:
                del _channels[self._key]
                self._shared.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r})"


class RemoteCollection:
    """A collection on a server: the methods of the embedded ``Collection``, over the wire."""

    def __init__(self, client: Client, info: pb.CollectionInfo) -> None:
        self._client = client
        self.name = info.name
        self.dim = int(info.dim)
        self.metric = info.metric

    def _req(self) -> pb.CollectionRequest:
        return pb.CollectionRequest(collection=self.name)

    def __len__(self) -> int:
        return int(self._client.invoke("DescribeCollection", self._req()).count)

    def __repr__(self) -> str:
        return f"RemoteCollection({self.name!r}, dim={self.dim}, metric={self.metric!r}, n={len(self)})"

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Any, vectors: Any, payloads: Any = None, *, durability: str | None = None) -> int:
        req = wire.write_request(self.name, self.dim, ids, vectors, payloads, replace=True, durability=durability)
        return int(self._client.invoke("Upsert", req).count)

    def insert(self, ids: Any, vectors: Any, payloads: Any = None, *, durability: str | None = None) -> int:
        req = wire.write_request(self.name, self.dim, ids, vectors, payloads, replace=False, durability=durability)
        return int(self._client.invoke("Upsert", req).count)

    def delete(self, ids: Any, *, durability: str | None = None) -> int:
        return int(self._client.invoke("Delete", wire.delete_request(self.name, ids, durability)).count)

    # ------------------------------------------------------------------ index
    def flush(self) -> int:
        return int(self._client.invoke("Flush", self._req(), self._client.admin_timeout).flushed)

    def train(self, n_buckets: int | None = None, *, progress: Callable[[str, float], None] | None = None) -> dict:
        """Train on the server (``progress``, if given, is called once with ("done", 1.0) at the end)."""
        req = pb.TrainRequest(collection=self.name, n_buckets=wire.opt_int(n_buckets, "n_buckets"))
        result = cv.loads_dict(self._client.invoke("Train", req, self._client.admin_timeout).json, "train result")
        if progress is not None:
            progress("done", 1.0)
        return result

    def maintain(self, max_jobs: int | None = None) -> dict[str, Any]:
        """Run pending maintenance jobs now on the server, most urgent first; returns what was done."""
        req = pb.MaintainRequest(collection=self.name, max_jobs=wire.opt_int(max_jobs, "max_jobs"))
        return cv.loads_dict(self._client.invoke("Maintain", req, self._client.admin_timeout).json, "result")

    def bucket_stats(self) -> list[dict[str, Any]]:
        """Per-bucket drift statistics (``stats(buckets=True)["bucket_stats"]``)."""
        return self.stats(buckets=True).get("bucket_stats", [])

    # ------------------------------------------------------------------ reads
    def _payload_loader(self, ids: np.ndarray) -> list[dict | None]:
        got = self._get(wire.get_request(self.name, ids, skip_vectors=True))
        by_id = dict(zip(got.ids.tolist(), got.payloads, strict=True))
        return [by_id.get(i) for i in ids.tolist()]

    def _get(self, req: pb.GetRequest) -> GetResult:
        fast = self._client.fast()
        if fast is not None:
            resp = fast.call(pb.FastRequest(get=req), self._client.timeout).get
        else:
            resp = self._client.invoke("Get", req)
        return cv.get_result(resp, self.dim)

    def get(self, ids: Any) -> GetResult:
        """Vectors and payloads of the ids that exist, in request order (absent ids are left out)."""
        return self._get(wire.get_request(self.name, ids))

    def search(
        self,
        query: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
        with_payloads: bool = False,
    ) -> SearchResult:
        """The ``k`` nearest live vectors; payloads come with the hits when ``with_payloads``, else on first use."""
        req = wire.search_request(
            self.name, self.dim, query, k, nprobe, rerank, filter, ef, with_payloads=with_payloads
        )
        fast = self._client.fast()
        if fast is not None:
            resp = fast.call(pb.FastRequest(search=req), self._client.timeout).search
        else:
            resp = self._client.invoke("Search", req)
        return cv.search_result(resp, self._payload_loader)

    def search_rows(
        self,
        query: np.ndarray | str,
        k: int,
        *,
        nprobe: int | None = None,
        rerank: int | None = None,
        ef: int | None = None,
        filter_json: str = "",
        with_payloads: bool = False,
    ) -> tuple[list[int], list[float], list[Any] | None]:
        """``search`` as plain lists (ids, distances, payloads or None) for callers that validated their
        arguments (``wire.fast_search_body`` / ``fast_search_request``; the server checks them again): the FDW's
        kNN scans. ``query`` may be a literal (``str``, ``SearchRequest.query_text``): the server parses it, or,
        without a fast path, this client does; one that does not parse raises ``InvalidVectorError``."""
        fast = self._client.fast()
        if fast is None:
            if isinstance(query, str):
                query = cv.query_from_text(query, self.dim)
            res = self.search(query, k, nprobe, rerank, cv.filter_from_json(filter_json), ef=ef,
                              with_payloads=with_payloads)  # fmt: skip
            return res.ids.tolist(), res.distances.tolist(), res.payloads if with_payloads else None
        if isinstance(fast, DirectClient):
            body = wire.fast_search_body(self.name, query, k, nprobe, rerank, ef, filter_json, with_payloads)
            resp = fast.call_encoded(body, self._client.timeout).search
        else:
            req = wire.fast_search_request(self.name, query, k, nprobe, rerank, ef, filter_json, with_payloads)
            resp = fast.call(req, self._client.timeout).search
        payloads = cv.payloads_from_json(resp.payload_json) if resp.has_payloads else None
        return list(resp.ids), list(resp.distances), payloads

    def search_send(
        self,
        query: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
        with_payloads: bool = False,
    ) -> PendingSearch | None:
        """Send ``search(...)`` now over the direct fast path and return without waiting; ``.result()`` later
        gives exactly what ``search`` would have. None when this server has no direct fast path."""
        fast = self._client.fast()
        if not isinstance(fast, DirectClient):
            return None
        req = wire.search_request(
            self.name, self.dim, query, k, nprobe, rerank, filter, ef, with_payloads=with_payloads
        )
        return PendingSearch(self, fast, fast.send(pb.FastRequest(search=req)))

    def search_batch(
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
        return wire.search_batch_result(self._client.invoke("SearchBatch", req))

    def search_stream(self, query: Any, k: int | None = None, **options: Any) -> RemoteSearchStream:
        """Rows (``StreamHit``) in non-decreasing distance, lazily; options as ``stream.SearchStreamer``
        (nprobe, rerank, filter, ef, max_distance, batch_size, limit, with_payloads)."""
        return RemoteSearchStream(self._client, wire.stream_request(self.name, self.dim, query, k=k, **options))

    def scan(
        self, batch_size: int | None = None, *, vectors: bool = True, payloads: bool = True
    ) -> Iterator[GetResult]:
        """Every live vector, in id order, as ``GetResult`` batches (a consistent view per batch)."""
        req = pb.ScanRequest(
            collection=self.name, batch_size=wire.opt_int(batch_size, "batch_size") or 0, skip_vectors=not vectors,
            skip_payloads=not payloads,
        )  # fmt: skip
        call = self._client.stream("Scan", req)
        try:
            for msg in call:
                yield cv.get_result(msg, self.dim)
        except grpc.RpcError as exc:
            raise wire.rpc_error(exc) from None
        finally:
            call.cancel()

    # ------------------------------------------------------------------ params & stats
    def set_params(self, **params: Any) -> dict[str, Any]:
        resp = self._client.invoke("SetParams", wire.params_request(self.name, params), self._client.admin_timeout)
        return cv.loads_dict(resp.params_json, "params")

    def params(self) -> dict[str, Any]:
        return cv.loads_dict(self._client.invoke("GetParams", self._req()).params_json, "params")

    def stats(self, buckets: bool = False) -> dict[str, Any]:
        req = pb.StatsRequest(collection=self.name, buckets=bool(buckets))
        return cv.loads_dict(self._client.invoke("Stats", req).json, "stats")

    # ------------------------------------------------------------------ async twins (a thread each, like embedded)
    async def upsert_async(self, *args: Any, **kwargs: Any) -> int:
        return await asyncio.to_thread(self.upsert, *args, **kwargs)

    async def insert_async(self, *args: Any, **kwargs: Any) -> int:
        return await asyncio.to_thread(self.insert, *args, **kwargs)

    async def delete_async(self, *args: Any, **kwargs: Any) -> int:
        return await asyncio.to_thread(self.delete, *args, **kwargs)

    async def search_async(self, *args: Any, **kwargs: Any) -> SearchResult:
        return await asyncio.to_thread(self.search, *args, **kwargs)

    async def search_batch_async(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        return await asyncio.to_thread(self.search_batch, *args, **kwargs)

    async def get_async(self, *args: Any, **kwargs: Any) -> GetResult:
        return await asyncio.to_thread(self.get, *args, **kwargs)

    async def train_async(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.train, *args, **kwargs)

    async def flush_async(self) -> int:
        return await asyncio.to_thread(self.flush)

    async def maintain_async(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.maintain, *args, **kwargs)
