"""``DriftService`` on ``grpc.aio``: every RPC of ``drift.proto``, with auth, limits and error mapping.

Contract:

* Handlers take the raw request bytes and parse them here, so a malformed message is answered with
  ``INVALID_ARGUMENT`` and a clear message (grpc's own deserializer would answer ``INTERNAL``).
* When the server has a token, every call must carry ``authorization: Bearer <token>`` (compared in
  constant time); otherwise ``UNAUTHENTICATED``. Health too: an unauthenticated peer learns nothing.
* A ``DriftError`` becomes the status ``grpc_code`` of its class, details = its message, and trailing
  metadata ``drift-error-class`` (class name) and ``drift-error-hint-bin`` (UTF-8 hint), so the client
  raises the same subclass. Any other exception is logged with its traceback and answered ``INTERNAL``
  with a generic message.
* Engine calls run on worker threads (``pool``; ``admin_pool`` for train / flush / maintain / create /
  drop, so long jobs never starve searches); the event loop only parses, checks and serialises. Cheap
  calls (health, list, describe, params) run inline. Small reads (Search with k <= 100, Get of <= 100
  ids, the first round of a SearchStream) run inline too when ``inline_reads`` is "idle" and nothing else
  is in flight (the thread hop costs more than such a search), "always", or never ("never").
* ``SearchStream``: strictly non-decreasing distances, never an id twice (``stream.SearchStreamer``); one
  round at a time on a worker thread, one message per batch. gRPC server streaming cannot see the reader's
  demand, so the server runs ahead of a slow reader until HTTP/2 flow control stops it; when the client
  cancels, the handler is cancelled at its next await, the streamer is closed (a round already running
  finishes, no other starts) and dropped. The fast path's cursors are demand-driven instead.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from drift_engine.errors import AuthenticationError, DriftError, InvalidArgumentError
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.core import ServiceCore

log = logging.getLogger("drift_engine.server")

SERVICE_NAME = "drift.v1.DriftService"
ERROR_HINT_BIN_KEY = cv.ERROR_HINT_KEY + "-bin"
AUTH_KEY = "authorization"
INLINE_READS = ("idle", "always", "never")
INLINE_MAX_ROWS = 100  # a read runs inline only when it asks for at most this many rows


@dataclass(frozen=True)
class Method:
    request: type
    handler: str  # ServiceCore method name
    where: str = "pool"  # "inline" | "pool" | "admin" | "read" (inline or pool, per ``inline_reads``)
    stream: bool = False


METHODS: dict[str, Method] = {
    "CreateCollection": Method(pb.CreateCollectionRequest, "create_collection", "admin"),
    "DropCollection": Method(pb.CollectionRequest, "drop_collection", "admin"),
    "ListCollections": Method(pb.ListCollectionsRequest, "list_collections", "inline"),
    "DescribeCollection": Method(pb.CollectionRequest, "describe_collection", "inline"),
    "Upsert": Method(pb.UpsertRequest, "upsert"),
    "Delete": Method(pb.DeleteRequest, "delete"),
    "Get": Method(pb.GetRequest, "get", "read"),
    "Search": Method(pb.SearchRequest, "search", "read"),
    "SearchBatch": Method(pb.SearchBatchRequest, "search_batch"),
    "SearchStream": Method(pb.SearchStreamRequest, "open_stream", stream=True),
    "Scan": Method(pb.ScanRequest, "scan", stream=True),
    "Train": Method(pb.TrainRequest, "train", "admin"),
    "SetParams": Method(pb.SetParamsRequest, "set_params", "admin"),
    "GetParams": Method(pb.CollectionRequest, "get_params", "inline"),
    "Stats": Method(pb.StatsRequest, "stats"),
    "Flush": Method(pb.CollectionRequest, "flush", "admin"),
    "Maintain": Method(pb.MaintainRequest, "maintain", "admin"),
    "StageTxn": Method(pb.StageTxnRequest, "stage_txn"),
    "PrepareTxn": Method(pb.TxnRequest, "prepare_txn"),
    "CommitTxn": Method(pb.TxnRequest, "commit_txn"),
    "AbortTxn": Method(pb.TxnRequest, "abort_txn"),
    "Health": Method(pb.HealthRequest, "health", "inline"),
}


def parse_request(cls: type, raw: bytes, method: str) -> Any:
    """``cls`` parsed from ``raw``; malformed bytes raise ``InvalidArgumentError`` naming the method."""
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidArgumentError(f"malformed {cls.__name__} for {method}: {exc}") from None
    return msg


def check_token(expected: bytes | None, presented: str | bytes | None) -> None:
    """Constant-time check of a bearer token; raises ``AuthenticationError``."""
    if expected is None:
        return
    if not presented:
        raise AuthenticationError("this server requires a token", hint="pass token= to Client (or --token-file)")
    if isinstance(presented, str):
        presented = presented.encode("utf-8", "surrogateescape")
    if presented.startswith(b"Bearer "):
        presented = presented[7:]
    if not hmac.compare_digest(presented, expected):
        raise AuthenticationError("invalid token")


def _serialize(msg: Any) -> bytes:
    return msg.SerializeToString()


class DriftService:
    """Builds the generic handler of ``DriftService`` over a ``ServiceCore``."""

    def __init__(
        self,
        core: ServiceCore,
        *,
        token: bytes | None,
        pool: Executor,
        admin_pool: Executor,
        inline_reads: str = "idle",
    ) -> None:
        if inline_reads not in INLINE_READS:
            raise ValueError(f"inline_reads must be one of {INLINE_READS}, got {inline_reads!r}")
        self.core = core
        self._token = token
        self._pools = {"pool": pool, "admin": admin_pool}
        self._inline_reads = inline_reads

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for name, method in METHODS.items():
            if method.stream:
                behavior = self._stream_behavior(name, method)
                handlers[name] = grpc.unary_stream_rpc_method_handler(behavior, response_serializer=_serialize)
            else:
                behavior = self._unary_behavior(name, method)
                handlers[name] = grpc.unary_unary_rpc_method_handler(behavior, response_serializer=_serialize)
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    # ------------------------------------------------------------------ shared steps
    def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        if self._token is None:
            return
        presented = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_KEY:
                presented = value
                break
        check_token(self._token, presented)

    async def _abort(self, context: grpc.aio.ServicerContext, name: str, err: BaseException, t0: float) -> None:
        ms = (time.perf_counter() - t0) * 1e3
        if isinstance(err, DriftError):
            code, cls_name, message, hint = cv.error_fields(err)
            log.info("rpc refused", extra={"rpc": name, "code": code, "error": cls_name, "ms": round(ms, 3)})
        else:
            code, cls_name, message, hint = (
                "INTERNAL",
                "DriftError",
                f"internal error in {name}; see the server log",
                "",
            )
            log.error("rpc failed", exc_info=err, extra={"rpc": name, "code": code, "ms": round(ms, 3)})
        metadata = ((cv.ERROR_CLASS_KEY, cls_name), (ERROR_HINT_BIN_KEY, hint.encode()))
        await context.abort(grpc.StatusCode[code], message, trailing_metadata=metadata)

    def _read_inline(self, request: Any) -> bool:
        """Whether a small read runs on the event loop: always, never, or only when nothing else is in flight."""
        mode = self._inline_reads
        if mode == "never":
            return False
        if isinstance(request, pb.GetRequest):
            rows = len(request.ids)
        else:  # Search, or the first round of a SearchStream (k 0 = its batch size)
            rows = request.k or getattr(request, "batch_size", 0) or self.core.limits.stream_batch
        if not 0 < rows <= INLINE_MAX_ROWS:
            return False
        return mode == "always" or self.core.counters.inflight <= 1

    def _run(self, where: str, fn: Callable[..., Any], *args: Any) -> Any:
        return asyncio.get_running_loop().run_in_executor(self._pools[where], fn, *args)

    # ------------------------------------------------------------------ unary
    def _unary_behavior(self, name: str, method: Method) -> Callable[..., Any]:
        fn = getattr(self.core, method.handler)
        counters = self.core.counters

        async def behavior(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            counters.add("inflight", 1)
            failure: BaseException | None = None
            try:
                self._authenticate(context)
                request = parse_request(method.request, raw, name)
                if method.where == "inline" or (method.where == "read" and self._read_inline(request)):
                    return fn(request)
                return await self._run("admin" if method.where == "admin" else "pool", fn, request)
            except Exception as exc:
                failure = exc
            finally:
                counters.add("inflight", -1)
                if log.isEnabledFor(logging.DEBUG) and failure is None:
                    log.debug(
                        "rpc", extra={"rpc": name, "code": "OK", "ms": round((time.perf_counter() - t0) * 1e3, 3)}
                    )
            await self._abort(context, name, failure, t0)

        behavior.__name__ = name
        return behavior

    # ------------------------------------------------------------------ server streaming
    def _stream_behavior(self, name: str, method: Method) -> Callable[..., AsyncIterator[Any]]:
        step = self._search_stream_steps if name == "SearchStream" else self._scan_steps
        counters = self.core.counters

        async def behavior(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            t0 = time.perf_counter()
            counters.add("inflight", 1)
            counters.add("active_streams", 1)
            failure: BaseException | None = None
            sent = 0
            try:
                self._authenticate(context)
                request = parse_request(method.request, raw, name)
                async for msg in step(request):
                    yield msg
                    sent += 1
            except Exception as exc:
                failure = exc
            finally:
                counters.add("inflight", -1)
                counters.add("active_streams", -1)
                if failure is None:
                    ms = round((time.perf_counter() - t0) * 1e3, 3)
                    log.debug("stream ended", extra={"rpc": name, "messages": sent, "ms": ms})
            if failure is not None:
                await self._abort(context, name, failure, t0)

        behavior.__name__ = name
        return behavior

    async def _search_stream_steps(self, request: pb.SearchStreamRequest) -> AsyncIterator[pb.SearchStreamBatch]:
        streamer = self.core.open_stream(request)
        try:
            if self._read_inline(request):  # the first round is a small search: same rule as a unary Search
                msg = self.core.stream_batch(streamer)
                yield msg
                if msg.done:
                    return
            while True:
                msg = await self._run("pool", self.core.stream_batch, streamer)
                yield msg
                if msg.done:
                    return
        finally:  # the client cancelled, or the stream ended: a round running on a worker starts no other
            streamer.close()

    async def _scan_steps(self, request: pb.ScanRequest) -> AsyncIterator[pb.GetResponse]:
        batches = await self._run("pool", self.core.scan, request)
        while True:
            msg = await self._run("pool", next, batches, None)
            if msg is None:
                return
            yield msg
