"""Client of the direct fast path (``drift_engine.server.direct``): one stream socket per thread and address.

Contract:

* ``DirectClient(address, token, cancel_check=..., tls=...)`` with ``address`` ``fast+unix:PATH``,
  ``fast+tcp:HOST:PORT`` or ``fast+tls:HOST:PORT``. Each thread of each process has its own connection per
  address (and TLS settings), opened on first use and kept (after ``fork`` the child opens its own; the
  parent's sockets are never used from the child).
* ``fast+tls:`` connections handshake when opened (under ``connect_timeout``) and check the server as
  ``tls`` (a ``server/tls.py`` ``ClientTLS``; ``None``: the system's trust store and the address's host
  name) says: chain, name, pin. A failed check raises ``EngineUnavailableError`` saying what failed. ``tls``
  with a plaintext address is refused (``InvalidArgumentError``).
* ``call(request, timeout)`` sends one ``FastRequest`` frame and returns the ``FastReply``. The wait is one
  blocking ``poll`` on the socket, woken the moment the reply arrives; with a ``cancel_check`` (e.g.
  PostgreSQL's query cancel) the poll is cut into slices of ``SLICE_S`` so the check can raise in between —
  a slice ends early when data arrives, so it adds no latency. After a timeout, an interruption or a broken
  connection the socket is discarded and a fresh one is used next time; so is a kept socket the server has
  closed meanwhile (seen before the request is sent).
* Busy-waiting (``spin_us`` > 0, on a machine with more than one CPU): after sending, ``call`` polls the socket
  with a zero timeout for up to ``spin_us`` microseconds before the blocking wait, so a quick reply costs no
  wake-up of this process; only while the server's last reply said it had nothing else in flight
  (``FastReply.others_busy`` 0) and this machine has a CPU to spare (``framing.cpu_to_spare``), so a loaded
  server's clients do not spend its CPUs waiting. A busy-wait that ends without the reply although the
  server spent less than half the budget on the request (``FastReply.server_us``: it could not run meanwhile,
  e.g. scheduled on this very CPU, which the busy-wait holds) makes the next 1, 2, 4 ... ``SPIN_BACKOFF_MAX``
  calls wait without one; a busy-wait that catches its reply ends the back-off, and one that missed a reply
  the server was slow to make (cold caches after an idle spell, a large request) changes nothing. For
  single-threaded callers (a PostgreSQL backend): the loop holds the GIL between polls.
* A broken connection before the request was sent raises ``EngineUnavailableError``; after it was sent,
  also ``EngineUnavailableError`` (the calls on this path only read, so nothing is left half-done).
* A reply carrying ``ErrorStatus`` raises the same ``DriftError`` subclass the server raised; an
  ``UNAVAILABLE`` one also discards the connection (the server may be closing it).
* Pipelining: ``send(request)`` returns a ``SentRequest`` at once and ``receive(ticket, timeout)`` reads its
  reply later (so one thread can have requests in flight to several servers); they use a second connection
  per thread and address, never the one ``call`` uses, with at most one request outstanding on it.
  ``abandon(ticket)`` (or a failed ``receive``) closes that connection, as it would hold an unread reply.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

from google.protobuf.message import DecodeError

from drift_engine.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidArgumentError,
    RequestTooLargeError,
)
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb
from drift_engine.server.framing import HEADER, TLS_PREFIX, cpu_to_spare, parse_address, recv_exact
from drift_engine.server.tls import ClientTLS

SLICE_S = 0.05
READ_BUFFER = 16384  # bytes read at once for a reply (larger replies read the rest exactly)
_state = threading.local()
_FORKS = [0]  # forks of this process so far, as seen by the child: per-thread connections are per process
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))
SPIN_BACKOFF_MAX = 64  # at most this many calls without a busy-wait after busy-waits that missed the reply


def _read_frame(sock: socket.socket) -> bytes:
    """One length-prefixed reply frame; ``ConnectionError`` when the server closed the connection first, or
    sent more than one frame (at most one request is outstanding per connection: the stream is then out of
    step). Usually one ``recv``: header and body arrive together."""
    buf = getattr(_state, "rbuf", None)
    if buf is None:
        buf = _state.rbuf = bytearray(READ_BUFFER)
    view = memoryview(buf)
    got = sock.recv_into(view)
    while 0 < got < HEADER.size:
        more = sock.recv_into(view[got:])
        got = got + more if more else 0
    if got == 0:
        raise ConnectionError("the server closed the connection")
    total = HEADER.size + HEADER.unpack_from(buf)[0]
    if got > total:
        raise ConnectionError("the server sent more than one reply")
    if got == total:
        return bytes(view[HEADER.size : total])
    rest = recv_exact(sock, total - got)
    if rest is None:
        raise ConnectionError("the server closed the connection")
    return bytes(view[HEADER.size : got]) + rest


def _spin(sock: socket.socket, seconds: float) -> bool:
    """Poll ``sock`` with a zero timeout until it is readable (True) or ``seconds`` pass (False: the caller
    blocks as usual): a reply that comes within that time costs no wake-up of this process. Single-threaded callers
    only (a PostgreSQL backend): the loop holds the GIL between polls."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    end = time.perf_counter() + seconds
    while True:
        if poller.poll(0):
            return True
        if time.perf_counter() >= end:
            return False


def _stale(sock: socket.socket) -> bool:
    """True when an idle connection has something to read: EOF or stray bytes (the server went away).
    On TLS only application data counts: a protocol record that carries none leaves the socket usable."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if not poller.poll(0):
        return False
    if not isinstance(sock, ssl.SSLSocket):
        return True
    sock.setblocking(False)
    try:
        sock.recv(1)
        return True
    except ssl.SSLWantReadError:
        return False
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.setblocking(True)


def _decode_reply(raw: bytes) -> pb.FastReply:
    """The ``FastReply`` in ``raw``; one carrying ``ErrorStatus`` raises the server's ``DriftError`` class."""
    reply = pb.FastReply()
    reply.ParseFromString(raw)
    if reply.WhichOneof("result") == "error":
        err = reply.error
        raise cv.make_error(err.code, err.error_class, err.message, err.hint)
    return reply


class DirectClient:
    def __init__(
        self,
        address: str,
        token: str | None,
        *,
        max_message_bytes: int = 0,
        cancel_check: Callable[[], None] | None = None,
        connect_timeout: float = 5.0,
        tls: ClientTLS | None = None,
        spin_us: int = 0,
    ) -> None:
        self.family, self.target = parse_address(address)
        if address.startswith(TLS_PREFIX):
            tls = tls or ClientTLS()
        elif tls is not None:
            raise InvalidArgumentError(f"TLS settings were given for the plaintext fast path address {address!r}")
        self.tls = tls
        self._key = (address, tls)
        self.address = address
        self.token = token or ""
        self._token_field = pb.FastRequest(token=self.token).SerializeToString()  # b"" without a token
        self.max_message_bytes = max_message_bytes
        self.cancel_check = cancel_check
        self.connect_timeout = connect_timeout
        # busy-wait for a reply only with a spare CPU, and only while the server said it was otherwise idle
        self.spin_s = max(0, int(spin_us)) / 1e6 if (os.cpu_count() or 1) > 1 else 0.0
        self._server_idle = True
        self._spin_misses = 0  # busy-waits in a row that ended without the reply, the server not to blame
        self._spin_skips = 0  # calls left that wait without busy-waiting (the back-off after a miss)
        self._spin_outcome: bool | None = None  # the last call's busy-wait: None (none), True (hit), False (miss)

    def _spun(self, sock: socket.socket) -> bool:
        """Busy-wait for the reply if the contract says so: True when it arrived meanwhile."""
        self._spin_outcome = None
        if not self.spin_s or not self._server_idle:
            return False
        if self._spin_skips:
            self._spin_skips -= 1
            return False
        if not cpu_to_spare():
            return False
        self._spin_outcome = _spin(sock, self.spin_s)
        return self._spin_outcome

    def _learn(self, reply: pb.FastReply) -> None:
        """What the reply says for the next busy-waits: whether the server is idle, and the back-off."""
        self._server_idle = reply.others_busy == 0
        if self._spin_outcome is None:
            return
        if self._spin_outcome:
            self._spin_misses = 0
        elif reply.server_us * 2e-6 < self.spin_s:  # a quick request whose reply we did not see: back off
            self._spin_skips = min(SPIN_BACKOFF_MAX, 1 << self._spin_misses)
            self._spin_misses = min(self._spin_misses + 1, SPIN_BACKOFF_MAX.bit_length())

    def _connect(self) -> socket.socket:
        """A new connection to the server (TCP without Nagle), blocking once connected."""
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(self.target)
        except OSError as exc:
            sock.close()
            raise EngineUnavailableError(f"cannot connect to the fast path {self.address}: {exc}") from None
        if self.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap(sock, self.target[0], f"the fast path {self.address}")
        sock.settimeout(None)
        return sock

    def _socket(self) -> socket.socket:
        socks = getattr(_state, "socks", None)
        if socks is None or _state.forks != _FORKS[0]:  # a forked child never shares its parent's connections
            socks = _state.socks = {}
            _state.forks = _FORKS[0]
        sock = socks.get(self._key)
        if sock is not None and _stale(sock):  # the server closed it meanwhile (idle timeout, a refusal, a restart)
            self._discard()
            sock = None
        if sock is None:
            sock = self._connect()
            socks[self._key] = sock
        return sock

    def _discard(self) -> None:
        sock = getattr(_state, "socks", {}).pop(self._key, None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        """Close this thread's connection to the address (the next call opens a new one)."""
        self._discard()

    def call(self, request: pb.FastRequest, timeout: float | None) -> pb.FastReply:
        request.token = self.token
        return self._exchange(request.SerializeToString(), timeout)

    def call_encoded(self, body: bytes, timeout: float | None) -> pb.FastReply:
        """``call`` of a ``FastRequest`` already encoded without its token (``wire.fast_search_body``)."""
        return self._exchange(self._token_field + body, timeout)

    def _exchange(self, body: bytes, timeout: float | None) -> pb.FastReply:
        if self.max_message_bytes and len(body) > self.max_message_bytes:
            raise RequestTooLargeError(
                f"request of {len(body)} bytes is over the server's {self.max_message_bytes}-byte message limit"
            )
        sock = self._socket()
        try:
            try:
                sock.sendall(HEADER.pack(len(body)) + body)
            except OSError:
                self._raise_parting_error(sock)  # a server that refused us may have said why before closing
                raise
            if not self._spun(sock):
                self._wait(sock, timeout)
            raw = _read_frame(sock)
        except OSError as exc:
            self._discard()
            raise self._broken(exc) from None
        except BaseException:
            self._discard()
            raise
        try:
            reply = _decode_reply(raw)
            self._learn(reply)
            return reply
        except EngineUnavailableError:  # the server may close after saying so (draining, full, wants TLS)
            self._discard()
            raise

    def _broken(self, exc: OSError) -> EngineUnavailableError:
        """The error for a connection that broke under a call (a TLS one may have been refused a client
        certificate: TLS 1.3 says so only after the handshake, as the session is cut)."""
        hint = None
        if self.tls is not None and not self.tls.cert:
            hint = (
                "if the server was started with --tls-client-ca, it cuts TLS sessions of clients without a "
                "certificate its CA signed (give cert and key: tls_cert / tls_key)"
            )
        return EngineUnavailableError(f"fast path {self.address}: {exc}", hint=hint)

    def _raise_parting_error(self, sock: socket.socket) -> None:
        """Raise the error reply a closing server left in the socket (e.g. "too many connections"), if any."""
        try:
            sock.settimeout(0.5)
            header = recv_exact(sock, HEADER.size)
            raw = recv_exact(sock, HEADER.unpack(header)[0]) if header else None
        except (OSError, ValueError):
            return
        if not raw:
            return
        reply = pb.FastReply()
        try:
            reply.ParseFromString(raw)
        except (DecodeError, RuntimeError, ValueError):  # not a reply: fall back to the transport error
            return
        if reply.WhichOneof("result") == "error":
            self._discard()
            err = reply.error
            raise cv.make_error(err.code, err.error_class, err.message, err.hint)

    def _wait(self, sock: socket.socket, timeout: float | None) -> None:
        """Return once the reply's first byte is readable; raise on timeout or when ``cancel_check`` raises."""
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted bytes already wait in the buffer
            return
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if self.cancel_check is None else SLICE_S
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceededError(f"no reply from {self.address} within {timeout} s")
                wait = left if wait is None else min(wait, left)
            if poller.poll(None if wait is None else max(1, int(wait * 1000))):
                return
            if self.cancel_check is not None:
                self.cancel_check()

    # ------------------------------------------------------------------ pipelined requests (send / receive)
    # A second connection per thread and address carries requests whose reply is read later, so the socket
    # ``call`` uses never holds an unread reply. At most one request is outstanding on it: ``send`` while one
    # is outstanding abandons that one first.
    def _pipe(self) -> socket.socket:
        pipes = getattr(_state, "pipes", None)
        if pipes is None or _state.pipe_forks != _FORKS[0]:
            pipes = _state.pipes = {}
            _state.pipe_forks = _FORKS[0]
        sock = pipes.get(self._key)
        if sock is not None and _stale(sock):
            self._drop_pipe(sock)
            sock = None
        if sock is None:
            sock = self._connect()
            pipes[self._key] = sock
        return sock

    def _drop_pipe(self, sock: socket.socket | None = None) -> None:
        pipes = getattr(_state, "pipes", {})
        current = pipes.get(self._key)
        if current is not None and (sock is None or current is sock):
            pipes.pop(self._key, None)
            with contextlib.suppress(OSError):
                current.close()

    def send(self, request: pb.FastRequest) -> SentRequest:
        """Send one request now and return a ticket; ``receive(ticket)`` reads its reply later (same thread).
        Raises like ``call`` when the request cannot be sent (the connection is then discarded)."""
        request.token = self.token
        body = request.SerializeToString()
        if self.max_message_bytes and len(body) > self.max_message_bytes:
            raise RequestTooLargeError(
                f"request of {len(body)} bytes is over the server's {self.max_message_bytes}-byte message limit"
            )
        outstanding = getattr(_state, "outstanding", None)
        if outstanding is None:
            outstanding = _state.outstanding = {}
        old = outstanding.pop(self._key, None)
        if old is not None and not old.done:
            self.abandon(old)
        sock = self._pipe()
        try:
            sock.sendall(HEADER.pack(len(body)) + body)
        except OSError as exc:
            self._drop_pipe(sock)
            raise self._broken(exc) from None
        ticket = SentRequest(self.address, sock)
        outstanding[self._key] = ticket
        return ticket

    def receive(self, ticket: SentRequest, timeout: float | None) -> pb.FastReply:
        """The reply to a request ``send`` made (once); errors as ``call``. A ticket whose connection was
        discarded meanwhile (abandoned, or a later ``send``) raises ``EngineUnavailableError``."""
        if ticket.done:
            raise EngineUnavailableError(f"fast path {self.address}: this request's reply was already taken")
        ticket.done = True
        sock = ticket.sock
        if getattr(_state, "pipes", {}).get(self._key) is not sock:
            raise EngineUnavailableError(f"fast path {self.address}: the request was abandoned")
        try:
            if not self._spun(sock):
                self._wait(sock, timeout)
            raw = _read_frame(sock)
        except OSError as exc:
            self._drop_pipe(sock)
            raise self._broken(exc) from None
        except BaseException:
            self._drop_pipe(sock)
            raise
        try:
            reply = _decode_reply(raw)
            self._learn(reply)
            return reply
        except EngineUnavailableError:
            self._drop_pipe(sock)
            raise

    def abandon(self, ticket: SentRequest) -> None:
        """Give up a sent request whose reply is not wanted: its connection (which would hold the unread
        reply) is closed; the next ``send`` opens a new one. Never raises."""
        if not ticket.done:
            ticket.done = True
            self._drop_pipe(ticket.sock)


class SentRequest:
    """A request ``DirectClient.send`` sent; its reply is read by ``receive`` or dropped by ``abandon``."""

    __slots__ = ("address", "done", "sock")

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address
        self.sock = sock
        self.done = False
