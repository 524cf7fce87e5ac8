"""One engine client per PostgreSQL backend, and the translation of failures into PostgreSQL errors.

Contract:

* ``client(address, token, timeout, tls=None)`` returns this backend's ``Client`` for that server, made on
  first use and cached module-wide per (address, token, timeout, TLS settings) (the FDW and the ``drift.*``
  SQL functions share it: Multicorn and PL/Python run in one interpreter per backend). Search and get go
  over the fast path when the server offers it (the client decides). ``forget(address)`` drops a client
  after a transport failure so the next call reconnects from scratch (a fresh gRPC channel, no inherited
  back-off).
* TLS settings (``drift_engine.server.tls.ClientTLS``) of an address, first found wins: the ``tls``
  argument; those ``set_tls(address, tls)`` recorded (``TableSpec.parse`` records a foreign server's
  ``tls_*`` options); for a ``tls:HOST:PORT`` address, when called from a PL/Python function (the
  ``drift.*`` SQL functions: SPI is usable only there), the ``tls_*`` options of a foreign server whose
  ``address`` is this one, read from ``pg_foreign_server`` (kept ``TLS_TTL_S`` seconds); else none: a
  ``tls:`` address then trusts the system's CAs, and any other address is plaintext.
* Waiting on the engine honours PostgreSQL's query cancel and ``statement_timeout``: ``cancel_check``
  reads the backend's ``QueryCancelPending`` / ``ProcDiePending`` flags (without servicing them; PostgreSQL
  does that when the error reaches it) and raises ``QueryCancelled``. While a call waits, it also probes the
  server's Unix socket at most once per ``PROBE_EVERY_S`` and gives up early when nobody listens.
* ``problem(exc, address)`` turns any exception from the engine or from conversion into a
  ``SqlProblem(message, hint, sqlstate)`` with a useful hint; a ``DriftError`` gets its class's SQLSTATE
  (``drift_engine.errors``: one table for the FDW and the ``drift.*`` functions), an exception that
  carries PostgreSQL's own SQLSTATE, such as ``plpy.SPIError``, keeps it; ``engine_call(address)`` is the
  context manager that does it (and forgets the client on transport failures). Only an exception nobody
  expected is XX000.
* ``COUNTERS`` counts this backend's engine traffic (kNN queries and the rows they pulled, streams,
  lookups, scans, writes); the SQL function ``drift.backend_stats()`` shows it.
* Nothing here imports numba, hnswlib or LMDB.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import sys
import time
from typing import Any

from drift_engine import errors as de
from drift_engine.errors import DriftError
from drift_engine.server.framing import DEFAULT_CLIENT_SPIN_US
from drift_fdw import errcodes

PROBE_EVERY_S = 1.0
# Microseconds a backend polls for the engine's fast-path reply before blocking, while the engine says it
# has nothing else in flight (``DirectClient``): saves a process wake-up per call. 0 turns it off.
FAST_SPIN_US = DEFAULT_CLIENT_SPIN_US
TLS_TTL_S = 30.0
COUNTERS: dict[str, int] = {
    "clients": 0,
    "knn_queries": 0,
    "engine_rows": 0,
    "streams": 0,
    "stream_batches": 0,
    "streams_closed_early": 0,
    "sql_searches": 0,
    "lookups": 0,
    "scans": 0,
    "scan_rows": 0,
    "write_calls": 0,
    "rows_written": 0,
}

_clients: dict[tuple[str, str | None, float, Any], Any] = {}
_tls: dict[str, Any] = {}  # address -> ClientTLS, from set_tls
_catalog_tls: dict[str, tuple[float, Any]] = {}  # address -> (when read, ClientTLS or None)
_TLS_SQL = "SELECT srvoptions FROM pg_catalog.pg_foreign_server WHERE $1 = ANY (srvoptions)"


class QueryCancelled(Exception):
    """PostgreSQL asked this backend to cancel the statement (or to exit)."""


class SqlProblem(Exception):
    """An error to raise in PostgreSQL: message, hint, SQLSTATE."""

    def __init__(self, message: str, hint: str | None = None, sqlstate: str = "XX000") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.sqlstate = sqlstate


# ------------------------------------------------------------------------------------------ cancel
def _flag(name: str) -> Any:
    try:
        return ctypes.c_int.in_dll(ctypes.CDLL(None), name)
    except (OSError, ValueError):
        return None  # not inside a PostgreSQL backend


_CANCEL = _flag("QueryCancelPending")
_DIE = _flag("ProcDiePending")
_STATEMENT_TIMEOUT, _LOCK_TIMEOUT = 3, 2  # TimeoutId values (utils/timeout.h, PostgreSQL 12 to 17)


def _timeout_indicator() -> Any:
    try:
        fn = ctypes.CDLL(None).get_timeout_indicator
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_bool]
    fn.restype = ctypes.c_bool
    return fn


_TIMEOUT_INDICATOR = _timeout_indicator() if _CANCEL is not None else None


def _cancel_reason() -> str:
    """PostgreSQL's own wording for the pending interrupt (read without resetting anything)."""
    if _DIE is not None and _DIE.value:
        return "terminating connection due to administrator command"
    if _TIMEOUT_INDICATOR is not None:
        if _TIMEOUT_INDICATOR(_STATEMENT_TIMEOUT, False):
            return "canceling statement due to statement timeout"
        if _TIMEOUT_INDICATOR(_LOCK_TIMEOUT, False):
            return "canceling statement due to lock timeout"
    return "canceling statement due to user request"


class _Waiter:
    """The ``cancel_check`` of one client: query cancel + a liveness probe of the server's socket."""

    def __init__(self, unix_path: str | None) -> None:
        self.unix_path = unix_path
        self.last_probe = 0.0

    def __call__(self) -> None:
        if (_CANCEL is not None and _CANCEL.value) or (_DIE is not None and _DIE.value):
            raise QueryCancelled(_cancel_reason())
        now = time.monotonic()
        if self.unix_path and now - self.last_probe >= PROBE_EVERY_S:
            self.last_probe = now
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.unix_path)
            except (FileNotFoundError, ConnectionRefusedError):
                raise de.EngineUnavailableError(f"nobody listens on {self.unix_path} any more") from None
            except OSError:
                pass
            finally:
                probe.close()


# ------------------------------------------------------------------------------------------ clients
def set_tls(address: str, tls: Any) -> None:
    """Use ``tls`` (a ``ClientTLS``) for every later client of ``address`` in this backend."""
    _tls[address] = tls


def _in_plpython() -> bool:
    """True when a PL/Python function is running on this thread's stack (so ``plpy.execute`` may be used)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name.startswith("__plpython_procedure_"):
            return True
        frame = frame.f_back
    return False


def _tls_from_catalog(address: str) -> Any:
    if not address.startswith("tls:"):
        return None
    seen = _catalog_tls.get(address)
    if seen is not None and time.monotonic() - seen[0] < TLS_TTL_S:
        return seen[1]
    plpy = sys.modules.get("plpy")
    if plpy is None or not _in_plpython():
        return None
    from drift_fdw.options import tls_settings

    found = None
    for row in plpy.execute(plpy.prepare(_TLS_SQL, ["text"]), [f"address={address}"]):
        opts = dict(o.split("=", 1) for o in row["srvoptions"] or [] if "=" in o)
        found = tls_settings(opts)
        if found is not None:
            break
    _catalog_tls[address] = (time.monotonic(), found)
    return found


def client(address: str, token: str | None = None, timeout: float = 30.0, tls: Any = None) -> Any:
    if tls is None:
        tls = _tls.get(address) or _tls_from_catalog(address)
    key = (address, token, timeout, tls)
    cli = _clients.get(key)
    if cli is None:
        from drift_engine.server import wire
        from drift_engine.server.client import Client
        from drift_engine.server.tls import client_settings

        plain, _ = client_settings(address)
        _, unix_path = wire.grpc_target(plain)
        cli = Client(  # a backend is single-threaded: it may busy-wait for the engine's replies (directclient)
            address, token=token, timeout=timeout, tls=tls, cancel_check=_Waiter(unix_path), fast_spin_us=FAST_SPIN_US
        )
        _clients[key] = cli
        COUNTERS["clients"] += 1
    return cli


def forget(address: str) -> None:
    """Close and drop every cached client of ``address`` (the next ``client()`` reconnects)."""
    for key in [k for k in _clients if k[0] == address]:
        cli = _clients.pop(key)
        with contextlib.suppress(Exception):  # a broken channel must not mask the real error
            cli.close()


# ------------------------------------------------------------------------------------------ errors
_TRANSPORT = (de.EngineUnavailableError, de.DeadlineExceededError, de.CancelledError, de.EngineClosedError)


def _hint(exc: DriftError, address: str) -> str | None:
    if isinstance(exc, de.DuplicateIdError):
        return "INSERT refuses ids that exist; use UPDATE, or DELETE the row first (nothing was written)"
    if isinstance(exc, de.EngineUnavailableError) and any(
        mark in exc.message for mark in ("CERTIFICATE_VERIFY_FAILED", "Tls handshake", "Ssl handshake")
    ):
        options = (
            f"the engine at {address} did not pass this server's TLS checks: set the foreign server options "
            "tls_ca (the CA that signed the engine's certificate) and, when the certificate names another "
            "host, tls_server_name"
        )
        return f"{options} ({exc.hint})" if exc.hint else options
    if exc.hint:
        return exc.hint
    if isinstance(exc, de.EngineUnavailableError):
        return (
            f"is the drift engine running at {address}?  Start it with  "
            "python -m drift_engine.cli serve --data DIR --listen unix:PATH  and check the socket's permissions"
        )
    if isinstance(exc, de.DeadlineExceededError):
        return "the engine did not answer in time; raise the server option 'timeout' or check the engine's load"
    if isinstance(exc, de.CollectionNotFoundError):
        return "create it with drift.create_collection(...), or the table option create 'true'"
    if isinstance(exc, de.DimensionMismatchError):
        return "every vector must have the collection's dimension"
    if isinstance(exc, de.AuthenticationError):
        return "put the server's token in a user mapping: CREATE USER MAPPING ... OPTIONS (token '...')"
    if isinstance(exc, de.RequestTooLargeError):
        return "send fewer rows per statement or raise the server's --max-message-bytes / --max-batch"
    return None


def problem(exc: BaseException, address: str = "") -> SqlProblem:
    """The ``SqlProblem`` to report for ``exc`` (see the module docstring)."""
    if isinstance(exc, SqlProblem):
        return exc
    if isinstance(exc, QueryCancelled):
        return SqlProblem(str(exc), None, "57014")
    if isinstance(exc, DriftError):
        return SqlProblem(f"drift: {exc.message}", _hint(exc, address), de.sqlstate_of(exc))
    message = getattr(exc, "message", None)
    if message is not None and hasattr(exc, "hint"):  # ConfigError, ValueProblem
        return SqlProblem(str(message), exc.hint, getattr(exc, "sqlstate", None) or "22023")
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:  # plpy.SPIError: a statement PostgreSQL refused
        text = str(exc)
        if sqlstate == "XX000":  # the FDW's own error, caught before PostgreSQL reported it (see errcodes)
            sqlstate = errcodes.claim(text) or "XX000"
        if sqlstate != "XX000":
            return SqlProblem(
                text if text.startswith("drift:") else f"drift: {text}", getattr(exc, "hint", None), sqlstate
            )
    return SqlProblem(
        f"drift: unexpected {type(exc).__name__}: {exc}",
        "this is a bug in drift_fdw; the server log of PostgreSQL has no more detail",
        "XX000",
    )


class engine_call:  # lower case: used like the context-manager function it replaced
    """``with engine_call(address):`` run engine calls; any failure leaves as ``SqlProblem`` (transport
    failures also forget the client). A class, not a generator: it is entered twice per kNN statement."""

    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address = address

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, SqlProblem):
            return False
        if isinstance(exc, (*_TRANSPORT, QueryCancelled)) or type(exc).__name__ in ("ZMQError", "RpcError"):
            forget(self.address)
        if isinstance(exc, GeneratorExit | KeyboardInterrupt | SystemExit):
            return False
        raise problem(exc, self.address) from None
