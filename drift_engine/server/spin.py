"""Busy-waiting for the next request on an idle fast-path connection, off the GIL (the server side).

Why: on the machines we measure (virtual CPUs), a thread blocked in ``recv`` is woken by an interprocess
interrupt and a rescheduled CPU: about 0.1 ms per hop, paid twice per search (request and reply). A
PostgreSQL statement through the FDW pays it on top of everything pgvector pays. Polling the socket for a
short while instead (as ``SO_BUSY_POLL`` and adaptive mutexes do) keeps the hop at the cost of the socket.

Contract:

* ``Spinner(budget_us)``: ``spin(sock) -> bool`` polls ``sock`` with a zero timeout in a loop compiled
  with numba (``nogil``: other threads keep the GIL), until it is readable (True), ``budget_us``
  microseconds pass, or ``interrupt()`` is called (False). The caller then reads from the socket as
  before (blocking), so spinning changes latency only, never what is read. Each poll is followed by a
  ``sched_yield``: a thread woken on the spinning CPU (often the very client whose request we wait for, after
  an idle gap let the scheduler put both on one CPU) runs at once instead of after the budget.
* At most one thread spins at a time (``spin`` returns False at once when another one does), only when the
  machine has no more runnable threads than CPUs (``framing.cpu_to_spare``: several engines on one host
  do not spin each other's CPUs away), and only while the server has no request in flight:
  ``DirectServer`` calls ``interrupt()`` whenever a request starts, so a busy server never spends a core
  on waiting. A TLS socket with decrypted bytes pending is
  readable without polling.
* Disabled (``enabled`` False, ``spin`` returns False at once) when ``budget_us`` is 0, on a machine with
  one CPU, or where the C library's ``poll`` / ``clock_gettime`` cannot be loaded. The loop compiles on a
  background thread when the spinner is made (``ready`` once done; ``spin`` returns False until then).
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import ssl
import threading

import numba
import numpy as np

from drift_engine.server.framing import cpu_to_spare

log = logging.getLogger(__name__)
POLLIN = 0x001
CLOCK_MONOTONIC = 1


def _libc() -> tuple[object, object, object] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        poll = libc.poll
        poll.argtypes = (ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int)
        poll.restype = ctypes.c_int
        clock = libc.clock_gettime
        clock.argtypes = (ctypes.c_int, ctypes.c_void_p)
        clock.restype = ctypes.c_int
        sched_yield = libc.sched_yield
        sched_yield.argtypes = ()
        sched_yield.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return poll, clock, sched_yield


_FUNCS = _libc()


def _compile(poll: object, clock: object, sched_yield: object):
    @numba.njit(nogil=True, cache=False)
    def spin_readable(pollfd: np.ndarray, ts: np.ndarray, budget_ns: int, stop: np.ndarray) -> bool:
        clock(CLOCK_MONOTONIC, ts.ctypes.data)
        end = ts[0] * 1_000_000_000 + ts[1] + budget_ns
        while True:
            pollfd[1] = POLLIN  # events = POLLIN, revents = 0 (struct pollfd's two shorts, little-endian)
            if poll(pollfd.ctypes.data, 1, 0) != 0:
                return True
            if stop[0] != 0:
                return False
            clock(CLOCK_MONOTONIC, ts.ctypes.data)
            if ts[0] * 1_000_000_000 + ts[1] >= end:
                return False
            sched_yield()  # a thread woken on this CPU (the client we wait for, often) runs now, not after the budget

    return spin_readable


class Spinner:
    def __init__(self, budget_us: int) -> None:
        self.budget_ns = max(0, int(budget_us)) * 1000
        self.enabled = bool(self.budget_ns) and (os.cpu_count() or 1) > 1 and _FUNCS is not None
        self._lock = threading.Lock()
        self._stop = np.zeros(1, dtype=np.int32)
        self._pollfd = np.zeros(2, dtype=np.int32)  # struct pollfd {int fd; short events; short revents}
        self._ts = np.zeros(2, dtype=np.int64)  # struct timespec
        self._fn = None
        if self.enabled and np.little_endian:  # compiled in the background: no spinning until it is ready
            threading.Thread(target=self._compile, name="drift-spin-compile", daemon=True).start()

    def _compile(self) -> None:
        try:
            fn = _compile(*_FUNCS)  # type: ignore[misc]
            fn(np.array([-1, 0], dtype=np.int32), np.zeros(2, dtype=np.int64), 0, np.zeros(1, dtype=np.int32))
        except Exception:  # spinning is an optimisation: without it the server works as before
            log.warning("busy-waiting on idle connections is off (the poll loop did not compile)", exc_info=True)
            return
        self._fn = fn

    @property
    def ready(self) -> bool:
        """Enabled and compiled (``spin`` returns False at once before that)."""
        return self._fn is not None

    def _pollfd_for(self, fd: int) -> np.ndarray:
        self._pollfd[0] = fd
        return self._pollfd

    def interrupt(self) -> None:
        """A request started somewhere: stop spinning (the CPU is needed)."""
        self._stop[0] = 1

    def spin(self, sock: socket.socket) -> bool:
        if self._fn is None:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        if not cpu_to_spare() or not self._lock.acquire(blocking=False):
            return False
        try:
            self._stop[0] = 0
            return bool(self._fn(self._pollfd_for(sock.fileno()), self._ts, self.budget_ns, self._stop))
        finally:
            self._lock.release()
