"""Client of the ZeroMQ fast path (REQ over ``ipc://``), used by the sync ``Client`` for search / get / streams.

Contract:

* One ZeroMQ context per process and one REQ socket per thread (ZeroMQ sockets are not thread-safe);
  after ``fork`` the child starts fresh (the parent's context is never touched from the child).
* ``call(request, timeout)`` sends one ``FastRequest`` and waits for its ``FastReply`` up to ``timeout``
  seconds (``None`` = forever), in slices of ``SLICE_S`` so ``cancel_check`` (e.g. PostgreSQL's query
  cancel) can interrupt the wait by raising. After a timeout or an interruption the socket is discarded
  (a REQ socket cannot send again before it receives) and a fresh one is used next time.
* A reply carrying ``ErrorStatus`` raises the same ``DriftError`` subclass the server raised; a reply that
  does not parse raises ``EngineUnavailableError`` (and the socket is replaced).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import zmq
from google.protobuf.message import DecodeError

from drift_engine.errors import DeadlineExceededError, EngineUnavailableError, RequestTooLargeError
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb

SLICE_S = 0.05
_state = threading.local()
_ctx_lock = threading.Lock()
_ctx: dict[int, zmq.Context] = {}


def _context() -> zmq.Context:
    pid = os.getpid()
    ctx = _ctx.get(pid)
    if ctx is None:
        with _ctx_lock:
            ctx = _ctx.get(pid)
            if ctx is None:
                ctx = zmq.Context()
                _ctx.clear()  # a context inherited from a parent process is abandoned, not closed
                _ctx[pid] = ctx
    return ctx


class FastPathClient:
    def __init__(
        self,
        address: str,
        token: str | None,
        *,
        max_message_bytes: int = 0,
        cancel_check: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.token = token or ""
        self.max_message_bytes = max_message_bytes
        self.cancel_check = cancel_check

    def _socket(self) -> list:
        """This thread's ``[REQ socket, its receive timeout in ms]`` for the address."""
        socks = getattr(_state, "socks", None)
        if socks is None or getattr(_state, "pid", None) != os.getpid():
            socks = _state.socks = {}
            _state.pid = os.getpid()
        entry = socks.get(self.address)
        if entry is None:
            sock = _context().socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.address)
            entry = socks[self.address] = [sock, -1]
        return entry

    def _discard(self) -> None:
        entry = getattr(_state, "socks", {}).pop(self.address, None)
        if entry is not None:
            entry[0].close(linger=0)

    def call(self, request: pb.FastRequest, timeout: float | None) -> pb.FastReply:
        request.token = self.token
        body = request.SerializeToString()
        if self.max_message_bytes and len(body) > self.max_message_bytes:
            raise RequestTooLargeError(
                f"request of {len(body)} bytes is over the server's {self.max_message_bytes}-byte message limit"
            )
        entry = self._socket()
        sock = entry[0]
        try:
            sock.send(body)
        except zmq.ZMQError as exc:
            self._discard()
            raise EngineUnavailableError(f"fast path {self.address}: {exc}") from None
        try:
            raw = self._wait(entry, timeout)
        except BaseException:
            self._discard()
            raise
        reply = pb.FastReply()
        try:
            reply.ParseFromString(raw)
        except (DecodeError, RuntimeError, ValueError) as exc:
            self._discard()
            raise EngineUnavailableError(f"fast path {self.address}: malformed reply ({exc})") from None
        if reply.WhichOneof("result") == "error":
            err = reply.error
            raise cv.make_error(err.code, err.error_class, err.message, err.hint)
        return reply

    def _wait(self, entry: list, timeout: float | None) -> bytes:
        sock = entry[0]
        if self.cancel_check is None:  # one blocking receive, bounded by the socket's receive timeout
            ms = -1 if timeout is None else max(1, int(timeout * 1000))
            if entry[1] != ms:
                sock.setsockopt(zmq.RCVTIMEO, ms)
                entry[1] = ms
            try:
                return sock.recv()
            except zmq.Again:
                raise DeadlineExceededError(f"no reply from {self.address} within {timeout} s") from None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = SLICE_S
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceededError(f"no reply from {self.address} within {timeout} s")
                wait = min(wait, left)
            if sock.poll(max(1, int(wait * 1000)), zmq.POLLIN):
                return sock.recv()
            self.cancel_check()
