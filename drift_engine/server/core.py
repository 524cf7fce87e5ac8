"""Transport-independent request handling: protobuf request in, protobuf response out, engine in between.

Contract:

* ``ServiceCore`` is shared by the gRPC service and the ZeroMQ fast path, so both apply the same limits
  (``ServerLimits``), the same validation and the same error mapping. Its methods are synchronous and
  thread-safe (the engine is); callers run the heavy ones on worker threads.
* Every method either returns a response message or raises a ``DriftError``. Bad input is refused before
  the engine writes anything (the engine validates again, as for embedded callers).
* ``health`` reports the fast path's state (``fast_state``, from ``FastPathServer.state``): while it is
  ``"down"`` the status is ``DEGRADED`` and the fast path is not advertised, so clients use gRPC.
* The server talks to the engine only through ``Engine`` / ``Collection``'s public methods, plus
  ``scan.scan_batches`` for ``Scan`` (one pinned snapshot, see there).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from drift_engine.config import MAX_BATCH, MAX_DIM, MAX_K
from drift_engine.errors import InvalidArgumentError, InvalidParameterError, InvalidPayloadError, RequestTooLargeError
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.scan import scan_batches
from drift_engine.server.stream import DEFAULT_BATCH, MAX_BATCH_ROWS, SearchStreamer

DEFAULT_SCAN_BATCH = 1000


@dataclass(frozen=True)
class ServerLimits:
    """Explicit caps of one server (each at most the engine's own limit)."""

    max_message_bytes: int = 64 << 20  # one request or response message
    max_batch: int = 100_000  # ids / vectors / queries in one call
    max_k: int = MAX_K
    max_dim: int = MAX_DIM
    stream_batch: int = DEFAULT_BATCH  # default rows per SearchStream message
    scan_batch: int = DEFAULT_SCAN_BATCH  # default rows per Scan message

    def __post_init__(self) -> None:
        checks = {
            "max_message_bytes": (self.max_message_bytes, 1024, 2**31 - 1),
            "max_batch": (self.max_batch, 1, MAX_BATCH),
            "max_k": (self.max_k, 1, MAX_K),
            "max_dim": (self.max_dim, 1, MAX_DIM),
            "stream_batch": (self.stream_batch, 1, MAX_BATCH_ROWS),
            "scan_batch": (self.scan_batch, 1, MAX_BATCH_ROWS),
        }
        for name, (value, low, high) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidParameterError(f"server limit {name}={value!r} is out of range [{low}, {high}]")


class Counters:
    """Live counters reported by Health (updated from the event loop and worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inflight = 0
        self.active_streams = 0
        self.stream_rounds = 0

    def add(self, name: str, delta: int) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + delta)


class ServiceCore:
    def __init__(self, engine: Any, limits: ServerLimits, *, version: str = "", fast_path: str = "") -> None:
        self.engine = engine
        self.limits = limits
        self.version = version
        self.fast_path = fast_path
        self.fast_state: Callable[[], str] | None = None  # set by the runner once the fast path is up
        self.counters = Counters()
        self.started = time.monotonic()
        self.draining = False

    # ------------------------------------------------------------------ checks
    def _col(self, name: str) -> Any:
        return self.engine.collection(name)

    def _check_rows(self, n: int, what: str) -> None:
        if n > self.limits.max_batch:
            raise RequestTooLargeError(
                f"{n} {what} in one call; this server's limit is {self.limits.max_batch}",
                hint="split the call into smaller batches",
            )

    def _check_k(self, k: int) -> int:
        if isinstance(k, int) and k > self.limits.max_k:
            raise InvalidArgumentError(f"k={k} is out of range [1, {self.limits.max_k}] (this server's max_k)")
        return k

    def _check_reply(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.limits.max_message_bytes:
            raise RequestTooLargeError(
                f"the {what} reply would be about {n_bytes} bytes; this server's message limit is "
                f"{self.limits.max_message_bytes}",
                hint="ask for fewer rows per call",
            )

    @staticmethod
    def _opt(msg: Any, field: str) -> int | None:
        return getattr(msg, field) if msg.HasField(field) else None

    # ------------------------------------------------------------------ collections
    def info(self, col: Any) -> pb.CollectionInfo:
        params = col.params()
        return pb.CollectionInfo(
            name=col.name, dim=col.dim, metric=col.metric, count=len(col), params_json=cv.dumps(params)
        )

    def create_collection(self, req: pb.CreateCollectionRequest) -> pb.CollectionInfo:
        if req.dim > self.limits.max_dim:
            raise InvalidParameterError(
                f"dimension {req.dim} is out of range [1, {self.limits.max_dim}] (this server's max_dim)"
            )
        params = cv.loads_dict(req.params_json, "params")
        col = self.engine.create_collection(req.name, req.dim, req.metric or "l2", **params)
        return self.info(col)

    def drop_collection(self, req: pb.CollectionRequest) -> pb.DropCollectionResponse:
        self.engine.drop_collection(req.collection)
        return pb.DropCollectionResponse()

    def list_collections(self, req: pb.ListCollectionsRequest) -> pb.ListCollectionsResponse:
        return pb.ListCollectionsResponse(names=self.engine.list_collections())

    def describe_collection(self, req: pb.CollectionRequest) -> pb.CollectionInfo:
        return self.info(self._col(req.collection))

    # ------------------------------------------------------------------ writes
    def upsert(self, req: pb.UpsertRequest) -> pb.WriteResponse:
        col = self._col(req.collection)
        n = len(req.ids)
        self._check_rows(n, "vectors")
        vectors = cv.decode_vectors(req.vectors, n)
        payloads = None
        if req.payload_json:
            if len(req.payload_json) != n:
                raise InvalidPayloadError(f"{n} vectors but {len(req.payload_json)} payloads")
            payloads = cv.payloads_from_json(req.payload_json)
        write = col.upsert if req.replace else col.insert
        count = write(cv.ids_array(req.ids), vectors, payloads, durability=req.durability or None)
        return pb.WriteResponse(count=count)

    def delete(self, req: pb.DeleteRequest) -> pb.WriteResponse:
        col = self._col(req.collection)
        self._check_rows(len(req.ids), "ids")
        return pb.WriteResponse(count=col.delete(cv.ids_array(req.ids), durability=req.durability or None))

    # ------------------------------------------------------------------ transactions (engine.txn)
    def stage_txn(self, req: pb.StageTxnRequest) -> pb.TxnResponse:
        """Stage ``req.ops`` into transaction ``req.txn_id`` (each op checked against the limits first); with
        ``req.prepare``, then prepare it (``prepare_txn``) and answer with the prepared row count."""
        self._check_rows(sum(len(op.ids) for op in req.ops), "rows")
        staged = []
        for op in req.ops:
            self._col(op.collection)
            n = len(op.ids)
            vectors = payloads = None
            if op.op in ("insert", "upsert"):
                vectors = cv.decode_vectors(op.vectors, n)
                if op.payload_json:
                    if len(op.payload_json) != n:
                        raise InvalidPayloadError(f"{n} vectors but {len(op.payload_json)} payloads")
                    payloads = cv.payloads_from_json(op.payload_json)
            staged.append((op, vectors, payloads))
        rows = 0
        for op, vectors, payloads in staged:
            rows += self.engine.txn_stage(
                req.txn_id, op.collection, op.op, cv.ids_array(op.ids), vectors, payloads, list(op.read_lsns)
            )
        if req.prepare:
            return self.prepare_txn(pb.TxnRequest(txn_id=req.txn_id))
        return pb.TxnResponse(rows=rows)

    def prepare_txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        return pb.TxnResponse(rows=self.engine.txn_prepare(req.txn_id)["rows"])

    def commit_txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        done = self.engine.txn_commit(req.txn_id, req.durability or None)
        return pb.TxnResponse(written=done["written"], deleted=done["deleted"], seq=done["seq"])

    def abort_txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        return pb.TxnResponse(found=self.engine.txn_abort(req.txn_id))

    # ------------------------------------------------------------------ reads
    def get(self, req: pb.GetRequest) -> pb.GetResponse:
        col = self._col(req.collection)
        self._check_rows(len(req.ids), "ids")
        if not req.skip_vectors:
            self._check_reply(len(req.ids) * (col.dim * 4 + 16), "get")
        got = col.get(cv.ids_array(req.ids))
        return cv.get_response(got, skip_vectors=req.skip_vectors, skip_payloads=req.skip_payloads)

    def search(self, req: pb.SearchRequest, out: pb.SearchResponse | None = None) -> pb.SearchResponse:
        """The search ``req`` asks for; its response written into ``out`` (an empty message, e.g. the fast
        path's reply field, so nothing is copied) when given."""
        col = self._col(req.collection)
        res = col.search(
            cv.query_of(req, col.dim),
            k=self._check_k(req.k),
            nprobe=self._opt(req, "nprobe"),
            rerank=self._opt(req, "rerank"),
            filter=cv.filter_from_json(req.filter_json),
            ef=self._opt(req, "ef"),
        )
        return cv.fill_search_response(pb.SearchResponse() if out is None else out, res, req.with_payloads)

    def search_batch(self, req: pb.SearchBatchRequest) -> pb.SearchBatchResponse:
        col = self._col(req.collection)
        self._check_rows(req.m, "queries")
        self._check_k(req.k)
        self._check_reply(max(req.m, 0) * max(req.k, 0) * 12, "search_batch")
        ids, dists = col.search_batch(
            cv.decode_vectors(req.queries, req.m, "queries"),
            k=req.k,
            nprobe=self._opt(req, "nprobe"),
            rerank=self._opt(req, "rerank"),
            filter=cv.filter_from_json(req.filter_json),
            ef=self._opt(req, "ef"),
        )
        return pb.SearchBatchResponse(
            ids=ids.astype(cv.I64).tobytes(), distances=dists.astype(cv.F32).tobytes(), m=ids.shape[0], k=ids.shape[1]
        )

    def open_stream(self, req: pb.SearchStreamRequest) -> SearchStreamer:
        """A streamer for ``req`` (validated); its rounds run on ``next_batch`` (``stream_batch`` below)."""
        col = self._col(req.collection)
        return SearchStreamer(
            col,
            cv.decode_query(req.query),
            k=self._check_k(req.k) or None,
            nprobe=self._opt(req, "nprobe"),
            rerank=self._opt(req, "rerank"),
            ef=self._opt(req, "ef"),
            filter=cv.filter_from_json(req.filter_json),
            max_distance=req.max_distance if req.HasField("max_distance") else None,
            batch_size=req.batch_size or self.limits.stream_batch,
            limit=req.limit or None,
            with_payloads=req.with_payloads,
            max_k=self.limits.max_k,
        )

    def stream_batch(self, streamer: SearchStreamer) -> pb.SearchStreamBatch:
        """Run ``streamer`` to its next batch (blocking: call on a worker thread)."""
        rounds = streamer.rounds
        batch = streamer.next_batch()
        self.counters.add("stream_rounds", streamer.rounds - rounds)
        msg = pb.SearchStreamBatch(
            ids=batch.ids.tolist(),
            distances=batch.distances.tolist(),
            round=batch.round,
            skipped=batch.skipped,
            done=batch.done,
            end_reason=batch.end_reason,
        )
        if batch.payloads is not None:
            msg.payload_json.extend(cv.payload_to_json(p) for p in batch.payloads)
            msg.has_payloads = True
        return msg

    def scan(self, req: pb.ScanRequest) -> Iterator[pb.GetResponse]:
        """Batches of every live vector, in id order (a blocking iterator: step it on a worker thread)."""
        col = self._col(req.collection)
        size = req.batch_size or self.limits.scan_batch
        if not 1 <= size <= MAX_BATCH_ROWS:
            raise InvalidArgumentError(f"batch_size={size} is out of range [1, {MAX_BATCH_ROWS}]")
        if not req.skip_vectors:
            self._check_reply(size * (col.dim * 4 + 16), "scan")
        return self._scan_batches(col, size, req.skip_vectors, req.skip_payloads)

    @staticmethod
    def _scan_batches(col: Any, size: int, skip_vectors: bool, skip_payloads: bool) -> Iterator[pb.GetResponse]:
        return scan_batches(col, size, skip_vectors, skip_payloads)  # one pinned snapshot end to end

    # ------------------------------------------------------------------ index, params, stats
    def train(self, req: pb.TrainRequest) -> pb.JsonResponse:
        col = self._col(req.collection)
        return pb.JsonResponse(json=cv.dumps(col.train(self._opt(req, "n_buckets"))))

    def set_params(self, req: pb.SetParamsRequest) -> pb.ParamsResponse:
        col = self._col(req.collection)
        return pb.ParamsResponse(params_json=cv.dumps(col.set_params(**cv.loads_dict(req.params_json, "params"))))

    def get_params(self, req: pb.CollectionRequest) -> pb.ParamsResponse:
        return pb.ParamsResponse(params_json=cv.dumps(self._col(req.collection).params()))

    def stats(self, req: pb.StatsRequest) -> pb.JsonResponse:
        return pb.JsonResponse(json=cv.dumps(self._col(req.collection).stats(buckets=req.buckets)))

    def flush(self, req: pb.CollectionRequest) -> pb.FlushResponse:
        return pb.FlushResponse(flushed=self._col(req.collection).flush())

    def maintain(self, req: pb.MaintainRequest) -> pb.JsonResponse:
        col = self._col(req.collection)
        return pb.JsonResponse(json=cv.dumps(col.maintain(self._opt(req, "max_jobs"))))

    def health(self, req: pb.HealthRequest | None = None) -> pb.HealthResponse:
        c = self.counters
        lim = self.limits
        fast_state = self.fast_state() if self.fast_state is not None else ""
        status = "DRAINING" if self.draining else "DEGRADED" if fast_state == "down" else "SERVING"
        return pb.HealthResponse(
            status=status,
            version=self.version,
            pid=os.getpid(),
            uptime_s=time.monotonic() - self.started,
            collections=self.engine.list_collections() if not self.draining else [],
            inflight=c.inflight,
            active_streams=c.active_streams,
            stream_rounds=c.stream_rounds,
            fast_path=self.fast_path if fast_state != "down" else "",  # new clients then use gRPC
            fast_path_state=fast_state,
            max_message_bytes=lim.max_message_bytes,
            max_batch=lim.max_batch,
            max_k=lim.max_k,
            max_dim=lim.max_dim,
        )

    def limits_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self.limits)
