"""The ZeroMQ fast path (DESIGN §11): Search, SearchStream batches and Get over a ROUTER socket on ``ipc://``.

Contract:

* Same schema as gRPC: one ``FastRequest`` frame in (after the REQ envelope), one ``FastReply`` frame out;
  the payload messages are the ones ``DriftService`` uses. Same ``ServiceCore``, so the same limits,
  validation and error mapping (errors travel as ``ErrorStatus``: code, DriftError class, message, hint).
* The token, when the server has one, is checked on every request (constant time), like gRPC's.
* A stream is a cursor: ``stream_open`` runs the first round and answers the first batch plus a cursor id
  (0 when that batch is already the last); ``stream_next`` answers the next batch; ``stream_close`` or a
  ``done`` batch frees it. Cursors idle longer than ``cursor_idle_s`` are dropped; at most ``max_cursors``
  are open (``RESOURCE_EXHAUSTED`` beyond). Work happens only when the client asks for a batch.
* No asyncio and no thread hop: a ``zmq.proxy`` (C, without the GIL) forwards requests from the ROUTER to
  ``workers`` threads (REP sockets, round-robin), and each worker parses, calls the engine and replies on
  its own thread. A message larger than ``max_message_bytes`` is dropped by ZeroMQ (``MAXMSGSIZE``) and
  that peer disconnected.
* Draining (``core.draining``): requests that arrive are answered ``UNAVAILABLE`` at once; ``stop`` waits up
  to ``grace`` seconds for requests being served, then closes the sockets and removes the socket file.
  The ipc socket file has the Unix socket's permissions (bound under the runner's umask, then 0660).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field

import zmq

from drift_engine.errors import DriftError, EngineUnavailableError, InvalidArgumentError, RequestTooLargeError
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.core import ServiceCore
from drift_engine.server.service import check_token, parse_request
from drift_engine.server.stream import SearchStreamer

log = logging.getLogger("drift_engine.server.fastpath")


@dataclass
class _Cursor:
    streamer: SearchStreamer
    used: float = field(default_factory=time.monotonic)
    busy: bool = False


class FastPathServer:
    def __init__(
        self,
        core: ServiceCore,
        address: str,
        *,
        token: bytes | None,
        workers: int = 4,
        max_cursors: int = 1024,
        cursor_idle_s: float = 60.0,
    ) -> None:
        if not address.startswith("ipc://"):
            raise InvalidArgumentError(f"fast path address must be ipc://PATH, got {address!r}")
        self.core = core
        self.address = address
        self.path = address[len("ipc://") :]
        self._token = token
        self._n_workers = max(1, workers)
        self._max_cursors = max_cursors
        self._idle = cursor_idle_s
        self._cursors: dict[int, _Cursor] = {}
        self._lock = threading.Lock()
        self._busy = 0
        self._swept = 0.0  # when idle cursors were last looked for
        self._ctx: zmq.Context | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind (the caller holds the umask) and start the proxy and worker threads."""
        ctx = self._ctx = zmq.Context()
        front = ctx.socket(zmq.ROUTER)
        front.setsockopt(zmq.LINGER, 0)
        front.setsockopt(zmq.MAXMSGSIZE, self.core.limits.max_message_bytes + 4096)
        front.bind(self.address)
        os.chmod(self.path, 0o660)
        back = ctx.socket(zmq.DEALER)
        back.setsockopt(zmq.LINGER, 0)
        inproc = f"inproc://drift-fastpath-{id(self)}"
        back.bind(inproc)
        self._threads.append(threading.Thread(target=self._proxy, args=(front, back), name="drift-fast-proxy"))
        for i in range(self._n_workers):
            sock = ctx.socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(inproc)
            self._threads.append(threading.Thread(target=self._work, args=(sock,), name=f"drift-fast-{i}"))
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def stop(self, grace: float) -> None:
        """Wait up to ``grace`` s for requests being served (new ones are refused while draining), then close."""
        deadline = time.monotonic() + grace
        while self._busy and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._ctx is not None:
            self._ctx.term()  # wakes every thread with ETERM; each closes its socket and exits
            self._ctx = None
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            for cursor_id in list(self._cursors):
                self._drop_locked(cursor_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    @staticmethod
    def _proxy(front: zmq.Socket, back: zmq.Socket) -> None:
        try:
            zmq.proxy(front, back)
        except zmq.ContextTerminated:
            pass
        finally:
            front.close(linger=0)
            back.close(linger=0)

    def _work(self, sock: zmq.Socket) -> None:
        try:
            while True:
                body = sock.recv()
                with self._lock:
                    self._busy += 1
                try:
                    reply = self.dispatch(body).SerializeToString()
                finally:
                    with self._lock:
                        self._busy -= 1
                sock.send(reply)
        except zmq.ContextTerminated:
            pass
        finally:
            sock.close(linger=0)

    # ------------------------------------------------------------------ requests
    def dispatch(self, body: bytes) -> pb.FastReply:
        """One request frame -> one reply message (errors included)."""
        counters = self.core.counters
        counters.add("inflight", 1)
        t0 = time.perf_counter()
        call = "?"
        try:
            if self.core.draining:
                raise EngineUnavailableError("the server is shutting down", hint="retry on the restarted server")
            req = parse_request(pb.FastRequest, body, "fast path")
            check_token(self._token, req.token)
            call = req.WhichOneof("call") or "?"
            if call == "search":
                return pb.FastReply(search=self.core.search(req.search))
            if call == "get":
                return pb.FastReply(get=self.core.get(req.get))
            if call == "stream_open":
                return pb.FastReply(batch=self._open(req.stream_open))
            if call == "stream_next":
                return pb.FastReply(batch=self._next(req.stream_next.cursor))
            if call == "stream_close":
                with self._lock:
                    self._drop_locked(req.stream_close.cursor)
                return pb.FastReply(closed=pb.StreamCursor(cursor=req.stream_close.cursor))
            raise InvalidArgumentError("fast path request names no call")
        except DriftError as err:
            ms = round((time.perf_counter() - t0) * 1e3, 3)
            extra = {"rpc": call, "code": err.grpc_code, "error": type(err).__name__, "ms": ms}
            log.info("fast path refused", extra=extra)
            return pb.FastReply(error=cv.error_status(err))
        except Exception:
            log.exception("fast path call failed", extra={"rpc": call})
            status = pb.ErrorStatus(
                code="INTERNAL", error_class="DriftError", message="internal error; see the server log"
            )
            return pb.FastReply(error=status)
        finally:
            counters.add("inflight", -1)

    # ------------------------------------------------------------------ cursors
    def _drop_locked(self, cursor_id: int) -> None:
        if self._cursors.pop(cursor_id, None) is not None:
            self.core.counters.add("active_streams", -1)

    def _sweep_locked(self) -> None:
        now = time.monotonic()
        if now - self._swept < min(1.0, self._idle / 2) and len(self._cursors) < self._max_cursors:
            return
        self._swept = now
        for cursor_id, cur in list(self._cursors.items()):
            if not cur.busy and now - cur.used > self._idle:
                self._drop_locked(cursor_id)
                log.info("stream cursor expired", extra={"cursor": cursor_id})

    def _open(self, request: pb.SearchStreamRequest) -> pb.SearchStreamBatch:
        with self._lock:
            self._sweep_locked()
            if len(self._cursors) >= self._max_cursors:
                raise RequestTooLargeError(
                    f"{len(self._cursors)} stream cursors are open, the limit of this server",
                    hint="close streams you no longer read",
                )
        streamer = self.core.open_stream(request)
        batch = self.core.stream_batch(streamer)
        if not batch.done:
            cursor_id = secrets.randbits(63) or 1
            with self._lock:
                self._cursors[cursor_id] = _Cursor(streamer)
                self.core.counters.add("active_streams", 1)
            batch.cursor = cursor_id
        return batch

    def _next(self, cursor_id: int) -> pb.SearchStreamBatch:
        with self._lock:
            cur = self._cursors.get(cursor_id)
            if cur is None:
                raise InvalidArgumentError(
                    f"unknown or expired stream cursor {cursor_id}", hint="open the stream again"
                )
            if cur.busy:
                raise InvalidArgumentError(f"stream cursor {cursor_id} is already serving a request")
            cur.busy = True
        try:
            batch = self.core.stream_batch(cur.streamer)
        except BaseException:
            with self._lock:
                self._drop_locked(cursor_id)
            raise
        finally:
            with self._lock:
                cur.busy = False
                cur.used = time.monotonic()
        if batch.done:
            with self._lock:
                self._drop_locked(cursor_id)
        else:
            batch.cursor = cursor_id
        return batch
