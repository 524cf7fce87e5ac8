"""The ZeroMQ fast path (DESIGN §11): Search, SearchStream batches and Get over a ROUTER socket on ``ipc://``.

Contract:

* Same schema as gRPC: one ``FastRequest`` frame in (after the REQ envelope), one ``FastReply`` frame out;
  the payload messages are the ones ``DriftService`` uses. Same ``ServiceCore``, so the same limits,
  validation and error mapping (errors travel as ``ErrorStatus``: code, DriftError class, message, hint).
* The token, when the server has one, is checked on every request (constant time), like gRPC's.
* Any frame sequence is safe. A message is ``[peer id (added by the ROUTER), b"", request]``; anything else
  (no delimiter, no body, several body frames, empty or garbage frames, a bad token) is answered with an
  ``INVALID_ARGUMENT`` / ``UNAUTHENTICATED`` ``ErrorStatus`` (as ``[b"", reply]``, what a REQ peer expects)
  and never reaches the engine. A message larger than ``max_message_bytes`` is dropped by ZeroMQ
  (``MAXMSGSIZE``) and that peer disconnected.
* A stream is a cursor (``stream.CursorTable``): ``stream_open`` runs the first round and answers the first
  batch plus a cursor id (0 when that batch is already the last); ``stream_next`` answers the next batch;
  ``stream_close`` or a ``done`` batch frees it. At most ``max_cursors`` are open and at most
  ``max_cursors_per_client`` per peer connection; opening one more evicts the least recently used idle cursor
  (the peer's own first), so one client cannot take streams away from others. Cursors idle longer than
  ``cursor_idle_s`` are dropped. Work happens only when the client asks for a batch.
* No asyncio and no thread hop: a ``zmq.proxy`` (C, without the GIL) forwards messages from the ROUTER to
  ``workers`` threads (DEALER sockets, round-robin); each worker reads a whole message, checks its frames,
  calls the engine and replies on its own thread. A worker survives any error of a request; a supervisor
  thread replaces a worker thread that died anyway (checked every ``SUPERVISE_S``). ``state()`` is ``"ok"``,
  ``"degraded: K of N workers"`` (until replaced) or ``"down"`` (the proxy died); Health reports it, and a
  server whose fast path is down stops advertising it (``ServiceCore.health``).
* Draining (``core.draining``): requests that arrive are answered ``UNAVAILABLE`` at once; ``stop`` waits up
  to ``grace`` seconds for requests being served, then closes the sockets and removes the socket file.
  The ipc socket file has the Unix socket's permissions (bound under the runner's umask, then 0660).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import zmq

from drift_engine.errors import DriftError, EngineUnavailableError, InvalidArgumentError
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.core import ServiceCore
from drift_engine.server.service import check_token, parse_request
from drift_engine.server.stream import CursorTable, next_from_cursor, open_cursor

log = logging.getLogger("drift_engine.server.fastpath")

SUPERVISE_S = 0.2
_INTERNAL = pb.ErrorStatus(code="INTERNAL", error_class="DriftError", message="internal error; see the server log")


class FastPathServer:
    def __init__(
        self,
        core: ServiceCore,
        address: str,
        *,
        token: bytes | None,
        workers: int = 4,
        max_cursors: int = 1024,
        max_cursors_per_client: int = 64,
        cursor_idle_s: float = 60.0,
    ) -> None:
        if not address.startswith("ipc://"):
            raise InvalidArgumentError(f"fast path address must be ipc://PATH, got {address!r}")
        self.core = core
        self.address = address
        self.path = address[len("ipc://") :]
        self._token = token
        self._n_workers = max(1, workers)
        self.cursors = CursorTable(
            max_total=max_cursors,
            max_per_client=max_cursors_per_client,
            idle_s=cursor_idle_s,
            on_count=lambda delta: core.counters.add("active_streams", delta),
        )
        self._lock = threading.Lock()
        self._busy = 0
        self._ctx: zmq.Context | None = None
        self._inproc = f"inproc://drift-fastpath-{id(self)}"
        self._proxy_thread: threading.Thread | None = None
        self._workers: list[threading.Thread | None] = [None] * self._n_workers
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self.restarts = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind (the caller holds the umask) and start the proxy, worker and supervisor threads."""
        ctx = self._ctx = zmq.Context()
        front = ctx.socket(zmq.ROUTER)
        front.setsockopt(zmq.LINGER, 0)
        front.setsockopt(zmq.MAXMSGSIZE, self.core.limits.max_message_bytes + 4096)
        front.bind(self.address)
        os.chmod(self.path, 0o660)
        back = ctx.socket(zmq.DEALER)
        back.setsockopt(zmq.LINGER, 0)
        back.bind(self._inproc)
        self._proxy_thread = threading.Thread(target=self._proxy, args=(front, back), name="drift-fast-proxy")
        self._proxy_thread.daemon = True
        self._proxy_thread.start()
        for i in range(self._n_workers):
            self._start_worker(i)
        self._supervisor = threading.Thread(target=self._supervise, name="drift-fast-supervisor", daemon=True)
        self._supervisor.start()

    def _start_worker(self, i: int) -> None:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._inproc)
        thread = threading.Thread(target=self._work, args=(sock,), name=f"drift-fast-{i}", daemon=True)
        self._workers[i] = thread
        thread.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_S):
            for i, thread in enumerate(self._workers):
                if thread is not None and not thread.is_alive() and not self._stopping.is_set():
                    log.error("fast path worker died; starting a new one", extra={"worker": i})
                    try:
                        self._start_worker(i)
                    except zmq.ZMQError:  # the context is being terminated
                        return
                    self.restarts += 1

    def state(self) -> str:
        """``"ok"``, ``"degraded: K of N workers"`` or ``"down"`` (see the module docstring)."""
        if self._proxy_thread is None or not self._proxy_thread.is_alive():
            return "down"
        alive = sum(1 for t in self._workers if t is not None and t.is_alive())
        if alive == 0:
            return "down"
        if alive < self._n_workers:
            return f"degraded: {alive} of {self._n_workers} workers"
        return "ok"

    def stop(self, grace: float) -> None:
        """Wait up to ``grace`` s for requests being served (new ones are refused while draining), then close."""
        deadline = time.monotonic() + grace
        while self._busy and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        if self._ctx is not None:
            self._ctx.term()  # wakes every thread with ETERM; each closes its socket and exits
            self._ctx = None
        for thread in (self._proxy_thread, *self._workers):
            if thread is not None:
                thread.join(timeout=5)
        self.cursors.close_all()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    @staticmethod
    def _proxy(front: zmq.Socket, back: zmq.Socket) -> None:
        try:
            zmq.proxy(front, back)
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("fast path proxy failed")
        finally:
            front.close(linger=0)
            back.close(linger=0)

    def _work(self, sock: zmq.Socket) -> None:
        try:
            while True:
                frames = sock.recv_multipart()
                try:
                    reply = self.handle(frames)
                except Exception:  # a worker never dies of a request
                    log.exception("fast path message failed")
                    reply = [frames[0], b"", pb.FastReply(error=_INTERNAL).SerializeToString()] if frames else None
                if reply is not None:
                    sock.send_multipart(reply)
        except zmq.ContextTerminated:
            pass
        finally:
            sock.close(linger=0)

    # ------------------------------------------------------------------ requests
    def handle(self, frames: list[bytes]) -> list[bytes] | None:
        """One message from the proxy (``[peer, *what the peer sent]``) -> the frames to send back, or None."""
        if len(frames) < 2:  # no peer frame: nothing to answer to
            return None
        peer, rest = frames[0], frames[1:]
        if len(rest) == 2 and rest[0] == b"":
            reply = self.dispatch(rest[1], peer)
        else:
            n_body = len(rest) - 1 if rest[0] == b"" else len(rest)
            err = InvalidArgumentError(
                f"malformed fast-path message: expected an empty delimiter frame and one request frame, got "
                f"{len(rest)} frame(s) ({'with' if rest[0] == b'' else 'without'} a delimiter, {n_body} body frames)",
                hint="send one FastRequest per message from a REQ socket",
            )
            log.info("fast path refused", extra={"rpc": "?", "code": err.grpc_code, "error": type(err).__name__})
            reply = pb.FastReply(error=cv.error_status(err))
        return [peer, b"", reply.SerializeToString()]

    def dispatch(self, body: bytes, peer: bytes = b"") -> pb.FastReply:
        """One request frame -> one reply message (errors included); ``peer`` owns the cursors it opens."""
        counters = self.core.counters
        counters.add("inflight", 1)
        with self._lock:
            self._busy += 1
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
                return pb.FastReply(batch=self._open(req.stream_open, peer))
            if call == "stream_next":
                return pb.FastReply(batch=self._next(req.stream_next.cursor))
            if call == "stream_close":
                self.cursors.drop(req.stream_close.cursor)
                return pb.FastReply(closed=pb.StreamCursor(cursor=req.stream_close.cursor))
            raise InvalidArgumentError("fast path request names no call")
        except DriftError as err:
            ms = round((time.perf_counter() - t0) * 1e3, 3)
            extra = {"rpc": call, "code": err.grpc_code, "error": type(err).__name__, "ms": ms}
            log.info("fast path refused", extra=extra)
            return pb.FastReply(error=cv.error_status(err))
        except Exception:
            log.exception("fast path call failed", extra={"rpc": call})
            return pb.FastReply(error=_INTERNAL)
        finally:
            with self._lock:
                self._busy -= 1
            counters.add("inflight", -1)

    # ------------------------------------------------------------------ cursors
    def _open(self, request: pb.SearchStreamRequest, peer: bytes) -> pb.SearchStreamBatch:
        return open_cursor(self.core, self.cursors, peer, request)

    def _next(self, cursor_id: int) -> pb.SearchStreamBatch:
        return next_from_cursor(self.core, self.cursors, cursor_id)
