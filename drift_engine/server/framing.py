"""Framing and addresses of the direct fast path, shared by its server (``direct.py``) and its client
(``directclient.py``).

Contract: a frame is a little-endian u32 length (``HEADER``) and then that many bytes; addresses are
``fast+unix:PATH``, ``fast+tcp:HOST:PORT`` or ``fast+tls:HOST:PORT`` (IPv6 hosts in brackets). This module
imports nothing of the server, so a client (a PostgreSQL backend) that imports it stays thin: no engine,
no numba.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from typing import Any

from drift_engine.errors import InvalidArgumentError

HEADER = struct.Struct("<I")
UNIX_PREFIX = "fast+unix:"
TCP_PREFIX = "fast+tcp:"
TLS_PREFIX = "fast+tls:"
# Busy-waits (server/spin.py, DirectClient.spin_us): how long an idle server polls a connection for its next
# request, and how long a client polls for a reply, before blocking. Both stop when anything else is busy.
DEFAULT_SPIN_US = 1000
DEFAULT_CLIENT_SPIN_US = 500
_CPUS = os.cpu_count() or 1
_loadavg_fd: int | None = None
SPARE_CPU_TTL_S = 0.002
_spare_until = 0.0


def cpu_to_spare() -> bool:
    """True when this machine has a CPU for a busy-wait: no more runnable threads than CPUs, the caller
    included (``/proc/loadavg``'s instant count; False where it cannot be read, and on one CPU). A True is
    kept for ``SPARE_CPU_TTL_S`` (reading the file costs more than the poll it guards); a False is not: the
    count is a snapshot, and one busy instant must not cost the following calls their busy-wait."""
    global _loadavg_fd, _spare_until
    if _CPUS < 2:
        return False
    now = time.monotonic()
    if now < _spare_until:
        return True
    try:
        if _loadavg_fd is None:
            _loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY)
        running = int(os.pread(_loadavg_fd, 128, 0).split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return False
    if running > _CPUS:
        return False
    _spare_until = now + SPARE_CPU_TTL_S
    return True


def parse_address(address: str) -> tuple[int, Any]:
    """``(socket family, bind/connect address)`` of a ``fast+unix:PATH`` or ``fast+tcp:HOST:PORT`` address."""
    if address.startswith(UNIX_PREFIX):
        path = address[len(UNIX_PREFIX) :]
        if not path:
            raise InvalidArgumentError(f"fast path address {address!r} names no socket path")
        return socket.AF_UNIX, path
    for prefix in (TCP_PREFIX, TLS_PREFIX):
        if address.startswith(prefix):
            host, sep, port = address[len(prefix) :].rpartition(":")
            if not sep or not host or not port.isdigit():
                raise InvalidArgumentError(f"fast path address {address!r} is not {prefix}HOST:PORT")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return family, (host, int(port))
    raise InvalidArgumentError(
        f"fast path address must be fast+unix:PATH, fast+tcp:HOST:PORT or fast+tls:HOST:PORT, got {address!r}"
    )


def tcp_address(prefix: str, host: str, port: int) -> str:
    """``fast+tcp:`` / ``fast+tls:`` address of a host (an IPv6 one in brackets) and port."""
    return f"{prefix}[{host}]:{port}" if ":" in host else f"{prefix}{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Exactly ``n`` bytes, or ``None`` when the peer closed before the first byte (EOF mid-frame raises)."""
    if n == 0:
        return b""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            if got == 0:
                return None
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += r
    return bytes(buf)


class FrameReader:
    """Frames from one stream socket with usually one ``recv`` per frame (a server's request stream).

    Reads up to ``size`` bytes at a time and keeps whatever follows a frame (the start of the next one) for
    the next call. ``header()`` is the next frame's length, or None when the peer closed before its first
    byte; ``body(n)`` is its ``n`` bytes. A peer closing inside a frame raises ``ConnectionError``;
    timeouts and socket errors propagate. ``buffered`` says how many bytes are already read."""

    def __init__(self, sock: socket.socket, size: int = 16384) -> None:
        self.sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._lo = 0
        self._hi = 0

    @property
    def buffered(self) -> int:
        return self._hi - self._lo

    def _fill(self, need: int) -> bool:
        """At least ``need`` (<= the buffer's size) bytes buffered: False on EOF with nothing buffered."""
        if self._hi - self._lo >= need:
            return True
        if self._lo:  # move the partial frame to the front
            kept = self._hi - self._lo
            self._buf[:kept] = self._view[self._lo : self._hi]
            self._lo, self._hi = 0, kept
        while self._hi < need:
            got = self.sock.recv_into(self._view[self._hi :])
            if got == 0:
                if self._hi == 0:
                    return False
                raise ConnectionError(f"connection closed {self._hi} bytes into a frame")
            self._hi += got
        return True

    def header(self) -> int | None:
        if not self._fill(HEADER.size):
            return None
        (length,) = HEADER.unpack_from(self._buf, self._lo)
        self._lo += HEADER.size
        return int(length)

    def body(self, n: int) -> bytes:
        if n <= len(self._buf):
            if not self._fill(n):
                raise ConnectionError("connection closed before a frame's body")
            out = bytes(self._view[self._lo : self._lo + n])
            self._lo += n
            return out
        head = bytes(self._view[self._lo : self._hi])  # a large frame: what is buffered, then the rest exactly
        self._lo = self._hi = 0
        rest = recv_exact(self.sock, n - len(head))
        if rest is None:
            raise ConnectionError("connection closed before a frame's body")
        return head + rest
