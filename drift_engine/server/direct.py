"""The direct fast path: ``FastRequest`` / ``FastReply`` frames over one stream socket per client connection.

Contract:

* Listens on a Unix socket (``fast+unix:PATH``, mode 0660 like the gRPC socket), on TCP
  (``fast+tcp:HOST:PORT``) or on TCP with TLS (``fast+tls:HOST:PORT``, given the server ``SSLContext`` of
  ``server/tls.py``). Every accepted connection is served by its own thread, which reads a request,
  calls the shared ``ServiceCore`` and writes the reply on the same thread: no proxy and no thread hop, so
  a round trip costs about what the socket costs. At most ``workers`` requests are served at once (the
  other connections' threads wait on a semaphore, not on the GIL: many busy clients then do not thrash
  it). The schema, limits, validation and error mapping are the gRPC service's (errors travel as
  ``ErrorStatus``). Calls: search, get, search streams, and the transaction RPCs (stage, optionally with
  prepare, prepare, commit, abort: what the FDW's writes use).
* TLS: the handshake runs on the connection's own thread, never on the accept loop, under a
  ``HANDSHAKE_S`` timeout, so a slow or silent client holds only its own connection (and one connection
  slot) and a failed handshake (logged with its reason) only closes that connection. A peer whose first
  byte is not a TLS handshake record (a plaintext client) is answered, in plaintext, one error frame
  saying the listener wants TLS, and closed.
* A frame is a little-endian u32 length and then that many bytes. A request longer than the server's
  ``max_message_bytes``, or one that does not parse as a ``FastRequest``, gets an error reply and the
  connection is closed (a stream cannot be resynchronised after a bad length); a worker thread never dies
  of a request. A connection idle for ``idle_s`` seconds is closed. Beyond ``max_connections`` open
  connections a new one is answered ``UNAVAILABLE`` and closed.
* The token, when the server has one, is checked on every request in constant time. A TCP listener needs
  a token unless ``allow_no_token`` (then it must be loopback), and a TCP listener beyond loopback needs
  TLS unless ``allow_plaintext`` — the runner enforces the same rules as for gRPC.
* Stream cursors live in a ``CursorTable`` (``server/stream.py``; the runner shares one between fast paths)
  with the connection as the client: its per-client and server-wide caps evict least recently used idle
  cursors instead of refusing, and a connection's cursors are all dropped when it closes. A plain search
  never takes a cursor, so one client with many streams cannot starve anyone else.
* Busy-waiting (``spin_us`` > 0, ``server/spin.py``): while no request is in flight, one connection's thread
  polls its socket for up to ``spin_us`` microseconds (off the GIL) before blocking in ``recv``, so the next
  request does not pay a thread wake-up; any request that starts stops it. Every reply carries
  ``others_busy``, the requests in flight besides it, so a client busy-waits only on an idle server, and
  ``server_us``, the microseconds from reading the request to its reply.
* Draining (``core.draining``): requests are answered ``UNAVAILABLE``. ``stop(grace)`` waits up to ``grace``
  seconds for requests being served, then closes the listener and every connection and removes the socket
  file. ``serving`` is False once the accept loop has ended (Health reports it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import ssl
import threading
import time

from drift_engine.errors import (
    DriftError,
    EngineUnavailableError,
    InvalidArgumentError,
    RequestTooLargeError,
)
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.core import ServiceCore
from drift_engine.server.framing import (  # noqa: F401 - re-exported: the server's own address helpers
    HEADER,
    TCP_PREFIX,
    TLS_PREFIX,
    UNIX_PREFIX,
    FrameReader,
    is_loopback,
    parse_address,
    recv_exact,
    tcp_address,
)
from drift_engine.server.service import check_token, parse_request
from drift_engine.server.spin import Spinner
from drift_engine.server.stream import CursorTable, next_from_cursor, open_cursor

log = logging.getLogger("drift_engine.server.direct")
# the transaction RPCs over the fast path: FastRequest field -> ServiceCore method (same semantics as gRPC)
_TXN_CALLS = {
    "txn_stage": "stage_txn",
    "txn_prepare": "prepare_txn",
    "txn_commit": "commit_txn",
    "txn_abort": "abort_txn",
}
HANDSHAKE_S = 10.0
_TLS_HANDSHAKE_RECORD = 0x16


def send_frame(sock: socket.socket, body: bytes) -> None:
    sock.sendall(HEADER.pack(len(body)) + body)


class _Connection:
    """One client connection: its socket and its key in the cursor table."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.key = secrets.token_bytes(12)


class DirectServer:
    def __init__(
        self,
        core: ServiceCore,
        address: str,
        *,
        token: bytes | None,
        allow_no_token: bool = False,
        max_connections: int = 256,
        cursors: CursorTable | None = None,
        idle_s: float = 600.0,
        workers: int = 4,
        tls: ssl.SSLContext | None = None,
        allow_plaintext: bool = False,
        spin_us: int = 0,
    ) -> None:
        self.family, self.bind_to = parse_address(address)
        if address.startswith(TLS_PREFIX) != (tls is not None):
            raise InvalidArgumentError(
                f"the fast path on {address}: a fast+tls: address needs a TLS context and only it takes one"
            )
        if self.family != socket.AF_UNIX:
            loopback = is_loopback(self.bind_to[0])
            if token is None and not (allow_no_token and loopback):
                raise InvalidArgumentError(
                    f"the fast path on {address} is TCP and this server has no token",
                    hint="start the server with --token-file (or serve on a Unix socket)",
                )
            if tls is None and not loopback and not allow_plaintext:
                raise InvalidArgumentError(
                    f"the fast path on {address} is beyond loopback and has no TLS",
                    hint="start the server with --tls-cert and --tls-key",
                )
        self._tls = tls
        self._prefix = TLS_PREFIX if tls is not None else TCP_PREFIX
        self.core = core
        self.address = address
        self._token = token
        self._max_connections = max_connections
        if cursors is None:  # (an empty table is falsy: it has a length)
            cursors = CursorTable(on_count=lambda d: core.counters.add("active_streams", d))
        self.cursors = cursors
        self._idle = idle_s
        self._workers = threading.BoundedSemaphore(max(1, workers))
        self._refusers = threading.BoundedSemaphore(8)  # TLS connections being refused at the connection cap
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._busy = 0
        self._spinner = Spinner(spin_us)
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = False
        self.serving = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind (a Unix socket under the caller's umask, then 0660) and start accepting."""
        listener = socket.socket(self.family, socket.SOCK_STREAM)
        if self.family == socket.AF_UNIX:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.bind_to)
            listener.bind(self.bind_to)
            os.chmod(self.bind_to, 0o660)
        else:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(self.bind_to)
            if self.bind_to[1] == 0:  # an ephemeral port: advertise the one the kernel chose
                host, port = listener.getsockname()[:2]
                self.bind_to = (host, port)
                self.address = tcp_address(self._prefix, host, port)
        listener.listen(128)
        self._listener = listener
        self.serving = True
        self._accept_thread = threading.Thread(target=self._accept_loop, name="drift-direct-accept", daemon=True)
        self._accept_thread.start()

    def stop(self, grace: float) -> None:
        self._stopping = True
        deadline = time.monotonic() + grace
        while self._busy and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError, ValueError):  # (the plain socket's shutdown: an SSLSocket's own
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)  # would race the thread reading it)
        if self.family == socket.AF_UNIX:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.bind_to)
        self.serving = False

    def _accept_loop(self) -> None:
        assert self._listener is not None
        try:
            while not self._stopping:
                try:
                    sock, peer = self._listener.accept()
                except OSError:
                    if self._stopping:
                        break
                    time.sleep(0.01)  # e.g. EMFILE: keep serving the connections we have
                    continue
                self._admit(sock, str(peer) if peer else "unix")
        finally:
            self.serving = False

    def _admit(self, sock: socket.socket, peer: str) -> None:
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(sock, peer)
        with self._lock:
            full = len(self._connections) >= self._max_connections
            if not full:
                self._connections.add(conn)
        if full and self._tls is None:
            self._refuse_full(conn)
        elif full and not self._refusers.acquire(blocking=False):
            sock.close()  # a flood: no thread per refusal beyond a few
        elif full:  # the refusal must travel over TLS: handshake off the accept loop first
            threading.Thread(target=self._refuse_full, args=(conn,), name="drift-direct-full", daemon=True).start()
        else:
            threading.Thread(target=self._serve, args=(conn,), name="drift-direct-conn", daemon=True).start()

    def _refuse_full(self, conn: _Connection) -> None:
        err = EngineUnavailableError(
            f"{self._max_connections} fast path connections are open, the limit of this server",
            hint="close idle connections, or raise the server's connection limit",
        )
        try:
            if self._tls is None or self._handshake(conn):
                with contextlib.suppress(OSError):
                    conn.sock.settimeout(1.0)
                    send_frame(conn.sock, pb.FastReply(error=cv.error_status(err)).SerializeToString())
        finally:
            conn.sock.close()
            if self._tls is not None:
                self._refusers.release()

    def _handshake(self, conn: _Connection) -> bool:
        """Turn the connection into TLS (see the module docstring); False when it was refused or failed."""
        assert self._tls is not None
        sock = conn.sock
        sock.settimeout(HANDSHAKE_S)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return False
        if not first:
            return False
        if first[0] != _TLS_HANDSHAKE_RECORD:
            log.info("fast path refused a plaintext client on a TLS listener", extra={"peer": conn.peer})
            err = EngineUnavailableError(
                f"the fast path {self.address} is TLS and this client spoke plaintext",
                hint=f"connect to {self.address} (the address the server's Health advertises) with TLS",
            )
            with contextlib.suppress(OSError):
                send_frame(sock, pb.FastReply(error=cv.error_status(err)).SerializeToString())
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(0.5)  # read what the client sent (for up to a second), so closing does not
                until = time.monotonic() + 1.0  # reset the reply away before the client has read it
                while sock.recv(65536) and time.monotonic() < until:
                    pass
            return False
        try:
            conn.sock = self._tls.wrap_socket(sock, server_side=True)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            log.info("fast path TLS handshake failed", extra={"peer": conn.peer, "error": reason})
            return False
        return True

    def _serve(self, conn: _Connection) -> None:
        limit = self.core.limits.max_message_bytes
        try:
            if self._tls is not None and not self._handshake(conn):
                return
            sock = conn.sock
            sock.settimeout(self._idle)
            reader = FrameReader(sock)
            while True:
                if self._busy == 0 and not reader.buffered:  # an idle server waits for the next request awake
                    self._spinner.spin(sock)
                try:
                    length = reader.header()
                except (TimeoutError, OSError):
                    return
                if length is None:
                    return
                t_read = time.perf_counter()
                if length > limit:
                    err = RequestTooLargeError(f"request of {length} bytes is over this server's {limit}-byte limit")
                    send_frame(sock, pb.FastReply(error=cv.error_status(err)).SerializeToString())
                    return
                try:
                    body = reader.body(length)
                except (TimeoutError, OSError):
                    return
                with self._workers:  # at most ``workers`` requests run at once; the others wait here, off the GIL
                    reply, close = self.dispatch(conn, body)
                reply.others_busy = self._busy
                reply.server_us = min(int((time.perf_counter() - t_read) * 1e6), 0xFFFFFFFF)
                send_frame(sock, reply.SerializeToString())
                if close:
                    return
        except (OSError, ValueError):  # (ValueError: an SSLSocket shut down under us by stop)
            return
        finally:
            with self._lock:
                self._connections.discard(conn)
            self.cursors.drop_client(conn.key)
            with contextlib.suppress(OSError):
                conn.sock.close()

    # ------------------------------------------------------------------ requests
    def dispatch(self, conn: _Connection, body: bytes) -> tuple[pb.FastReply, bool]:
        """One request -> (its reply, whether to close the connection after it)."""
        counters = self.core.counters
        counters.add("inflight", 1)
        with self._lock:
            self._busy += 1
        self._spinner.interrupt()  # another connection's busy-wait gives its core back
        t0 = time.perf_counter()
        call = "?"
        try:
            if self.core.draining or self._stopping:
                raise EngineUnavailableError("the server is shutting down", hint="retry on the restarted server")
            try:
                req = parse_request(pb.FastRequest, body, "fast path")
            except InvalidArgumentError as err:
                return pb.FastReply(error=cv.error_status(err)), True
            check_token(self._token, req.token)
            call = req.WhichOneof("call") or "?"
            if call == "search":
                reply = pb.FastReply()
                reply.search.SetInParent()  # an empty result still answers "search"
                self.core.search(req.search, reply.search)
                return reply, False
            if call == "get":
                return pb.FastReply(get=self.core.get(req.get)), False
            if call == "stream_open":
                return pb.FastReply(batch=self._open(conn, req.stream_open)), False
            if call == "stream_next":
                return pb.FastReply(batch=self._next(req.stream_next.cursor)), False
            if call == "stream_close":
                self.cursors.drop(req.stream_close.cursor)
                return pb.FastReply(closed=pb.StreamCursor(cursor=req.stream_close.cursor)), False
            if call in _TXN_CALLS:
                return pb.FastReply(txn=getattr(self.core, _TXN_CALLS[call])(getattr(req, call))), False
            raise InvalidArgumentError("fast path request names no call")
        except DriftError as err:
            ms = round((time.perf_counter() - t0) * 1e3, 3)
            extra = {"rpc": call, "code": err.grpc_code, "error": type(err).__name__, "ms": ms}
            log.info("fast path refused", extra=extra)
            return pb.FastReply(error=cv.error_status(err)), False
        except Exception:
            log.exception("fast path call failed", extra={"rpc": call})
            status = pb.ErrorStatus(
                code="INTERNAL", error_class="DriftError", message="internal error; see the server log"
            )
            return pb.FastReply(error=status), False
        finally:
            with self._lock:
                self._busy -= 1
            counters.add("inflight", -1)

    def state(self) -> str:
        """``"ok"`` while accepting connections, else ``"down"``."""
        return "ok" if self.serving else "down"

    def _open(self, conn: _Connection, request: pb.SearchStreamRequest) -> pb.SearchStreamBatch:
        return open_cursor(self.core, self.cursors, conn.key, request)

    def _next(self, cursor_id: int) -> pb.SearchStreamBatch:
        return next_from_cursor(self.core, self.cursors, cursor_id)
