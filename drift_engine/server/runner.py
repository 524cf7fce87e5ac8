"""Running one server: open the engine, bind the listeners, serve, drain on SIGTERM / SIGINT.

Contract:

* The engine is opened first; its directory lock makes a second server on the same data directory fail
  with ``DirectoryLockedError`` before anything is bound (the CLI prints it and exits non-zero).
* Listen addresses: ``unix:PATH`` (default ``unix:<data>/drift.sock``; socket mode 0660, bound under a
  0117 umask so it is never wider) or ``HOST:PORT``. TCP needs a token (any local user can reach a loopback
  port) unless ``insecure_no_token`` (``--insecure-no-token``) allows it on loopback; beyond loopback the token
  is always required. TLS (``tls_cert`` + ``tls_key``, PEM; ``--tls-cert`` / ``--tls-key``) encrypts every TCP
  listener: gRPC and the direct fast path, which is then ``fast+tls:``; ``tls_client_ca``
  (``--tls-client-ca``) makes both require client certificates signed by that CA. TCP on a non-loopback host
  is refused without TLS unless ``insecure_plaintext`` (``--insecure-plaintext``: queries and the token then
  cross the network in the clear). A certificate or key that does not load stops the start with a
  ``ServerStartupError`` before the engine opens.
  A stale socket file (nobody accepting) is replaced; one a live server
  accepts on is refused. TCP ports are bound without ``SO_REUSEPORT``.
* The fast path for Search / SearchStream batches / Get (``fast_path``): ``"direct"`` (default,
  ``server/direct.py``: one stream socket per client connection) listens on ``fast+unix:<socket>.fast``
  beside a Unix socket (same permissions) and on ``fast+tcp:<host>:<fast_port>`` (``fast+tls:`` with TLS)
  beside a TCP listener (``fast_port`` 0: a free port; the same token, TLS and loopback rules as gRPC; the TLS
  handshake runs on each connection's own thread). ``"zmq"`` is the ZeroMQ path
  (``ipc://<socket>.fast``, Unix sockets only); ``"off"`` none. Health advertises the address.
* Modes: the data directory is private to the server's user. ``serve`` runs under a 0077 umask (restored
  when it returns), so every directory it creates is 0700 and every file 0600 (collections, WAL, segments,
  LMDB, lock), and first tightens what already exists there (``restrict_data_dir``); the sockets are then
  0660 as above.
* Shutdown (SIGTERM / SIGINT): Health reports ``DRAINING``, no new calls are accepted, in-flight calls get
  ``grace`` seconds to finish (streams still open after that are cancelled), then the engine closes
  (memtables flushed, WAL and LMDB fsynced and closed), the socket files are removed and ``serve``
  returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from drift_engine.server.core import ServerLimits, ServiceCore
from drift_engine.server.framing import DEFAULT_SPIN_US
from drift_engine.server.service import DriftService

log = logging.getLogger("drift_engine.server")

SOCKET_NAME = "drift.sock"
FAST_SUFFIX = ".fast"
_MAX_UNIX_PATH = 107


class ServerStartupError(Exception):
    """The server cannot start as configured (the message says why)."""


@dataclass(frozen=True)
class Listen:
    kind: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def grpc_target(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.kind == "unix":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(value: str | None, data_dir: str) -> Listen:
    """``unix:PATH`` / ``unix://PATH`` / ``HOST:PORT`` / ``[V6]:PORT``; ``None`` = the data directory's socket."""
    if not value:
        return Listen("unix", path=os.path.join(os.path.abspath(data_dir), SOCKET_NAME))
    if value.startswith("unix:"):
        path = value[len("unix://") :] if value.startswith("unix://") else value[len("unix:") :]
        if not path:
            raise ServerStartupError(f"--listen {value!r}: empty socket path")
        return Listen("unix", path=os.path.abspath(path))
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ServerStartupError(f"--listen {value!r}: use unix:PATH or HOST:PORT")
    return Listen("tcp", host=host.strip("[]"), port=int(port))


@dataclass
class ServeOptions:
    data: str
    listen: str | None = None
    token: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_client_ca: bytes | None = None  # PEM CA(s) client certificates must chain to (mutual TLS); needs tls_cert
    limits: ServerLimits = field(default_factory=ServerLimits)
    threads: int = 16
    admin_threads: int = 2
    fast_path: str = "direct"  # "direct" | "zmq" | "off"
    fast_port: int = 0  # the direct fast path's TCP port beside a loopback TCP listener (0: any free port)
    fast_workers: int = 4
    spin_us: int = DEFAULT_SPIN_US  # the direct fast path's busy-wait for a request while idle (server/spin.py)
    cursor_idle_s: float = 60.0
    max_cursors: int = 1024
    max_cursors_per_client: int = 64
    inline_reads: str = "idle"
    grace: float = 10.0
    txn_timeout: float = 60.0  # an open engine transaction idle this long is aborted (a vanished client)
    insecure_no_token: bool = False  # allow TCP without a token (loopback only; the CLI's --insecure-no-token)
    insecure_plaintext: bool = False  # allow TCP beyond loopback without TLS (the CLI's --insecure-plaintext)
    engine_settings: dict[str, Any] = field(default_factory=dict)


FAST_PATHS = ("direct", "zmq", "off")


def fast_address(listen: Listen, opts: ServeOptions) -> str:
    """The fast path's address for this listener, or "" when it has none (see the module docstring)."""
    if opts.fast_path not in FAST_PATHS:
        raise ServerStartupError(f"fast path {opts.fast_path!r}: use one of {', '.join(FAST_PATHS)}")
    if listen.kind == "unix":
        if opts.fast_path == "direct":
            return f"fast+unix:{listen.path}{FAST_SUFFIX}"
        return f"ipc://{listen.path}{FAST_SUFFIX}" if opts.fast_path == "zmq" else ""
    if opts.fast_path == "direct" and (opts.tls_cert or listen.loopback or opts.insecure_plaintext):
        if not 0 <= opts.fast_port < 65536:
            raise ServerStartupError(f"--fast-port {opts.fast_port}: out of range")
        from drift_engine.server.framing import TCP_PREFIX, TLS_PREFIX, tcp_address

        return tcp_address(TLS_PREFIX if opts.tls_cert else TCP_PREFIX, listen.host, opts.fast_port)
    return ""


def check_security(listen: Listen, opts: ServeOptions) -> None:
    if bool(opts.tls_cert) != bool(opts.tls_key):
        raise ServerStartupError("TLS needs both --tls-cert and --tls-key")
    if opts.tls_client_ca and not opts.tls_cert:
        raise ServerStartupError("--tls-client-ca needs TLS: pass --tls-cert and --tls-key too")
    if opts.tls_cert and listen.kind == "unix":
        raise ServerStartupError("TLS applies to TCP listeners only; a Unix socket is protected by its file mode")
    if opts.tls_cert and opts.insecure_plaintext:
        raise ServerStartupError("--insecure-plaintext contradicts --tls-cert: pass one or the other")
    if listen.kind == "tcp" and not listen.loopback:
        missing = [] if opts.tls_cert or opts.insecure_plaintext else ["TLS"]
        missing += [] if opts.token is not None else ["a token"]
        if missing:
            raise ServerStartupError(
                f"refusing to listen on {listen.host}:{listen.port} (not loopback) without {' and '.join(missing)}: "
                "queries, vectors and the token must not cross the network in the clear, and the token is required "
                "beyond loopback (--insecure-no-token applies to loopback only). Pass --tls-cert, --tls-key and "
                "--token-file, listen on 127.0.0.1 / a Unix socket, or (TLS only) pass --insecure-plaintext"
            )
    if listen.kind == "tcp" and opts.token is None and not opts.insecure_no_token:
        raise ServerStartupError(
            f"refusing to listen on TCP {listen.host}:{listen.port} without a token: any local user could connect. "
            "Pass --token-file, listen on a Unix socket (mode 0660), or pass --insecure-no-token to allow it"
        )


PRIVATE_UMASK = 0o077


def restrict_data_dir(data: str) -> int:
    """Make ``data`` and everything under it private: directories 0700, regular files 0600 (sockets and
    symbolic links are left alone). Creates ``data`` (0700) when missing. Returns how many modes changed."""
    os.makedirs(data, mode=0o700, exist_ok=True)
    changed = 0
    for dirpath, dirnames, filenames in os.walk(data):
        for name, want in [(".", 0o700)] + [(d, 0o700) for d in dirnames] + [(f, 0o600) for f in filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) or stat.S_IMODE(st.st_mode) == want:
                continue
            os.chmod(path, want)
            changed += 1
    return changed


def claim_unix_path(path: str) -> None:
    """Make ``path`` free for a new socket: remove a stale one, refuse a live one or a non-socket."""
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise ServerStartupError(
            f"socket path is {len(os.fsencode(path))} bytes, over the {_MAX_UNIX_PATH} limit: {path}"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerStartupError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: left by a server that did not stop cleanly
        log.info("removed stale socket", extra={"path": path})
        return
    except OSError as exc:
        raise ServerStartupError(f"cannot check socket {path}: {exc}") from None
    finally:
        probe.close()
    raise ServerStartupError(f"{path} is in use by another server")


def tls_context(opts: ServeOptions) -> Any:
    """The fast path's server ``SSLContext`` (None without TLS); a bad certificate or key stops the start."""
    if not opts.tls_cert or not opts.tls_key:
        return None
    import ssl

    from drift_engine.server.tls import server_context

    try:
        return server_context(opts.tls_cert, opts.tls_key, opts.tls_client_ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ServerStartupError(f"cannot use the TLS certificate / key / client CA: {exc}") from None


def _start_fast_path(core: ServiceCore, address: str, opts: ServeOptions, tls: Any = None) -> Any:
    """Start the fast path of ``address`` (direct or ZeroMQ); returns it (``address``, ``state``, ``stop``)."""
    if address.startswith("ipc://"):
        from drift_engine.server.fastpath import FastPathServer

        fast: Any = FastPathServer(
            core,
            address,
            token=opts.token,
            workers=opts.fast_workers,
            max_cursors=opts.max_cursors,
            max_cursors_per_client=opts.max_cursors_per_client,
            cursor_idle_s=opts.cursor_idle_s,
        )
    else:
        from drift_engine.server.direct import DirectServer
        from drift_engine.server.stream import CursorTable

        cursors = CursorTable(
            max_total=opts.max_cursors,
            max_per_client=opts.max_cursors_per_client,
            idle_s=opts.cursor_idle_s,
            on_count=lambda delta: core.counters.add("active_streams", delta),
        )
        fast = DirectServer(
            core,
            address,
            token=opts.token,
            allow_no_token=opts.insecure_no_token,
            cursors=cursors,
            workers=opts.fast_workers,
            tls=tls if address.startswith("fast+tls:") else None,
            allow_plaintext=opts.insecure_plaintext,
            spin_us=opts.spin_us,
        )
    fast.start()
    return fast


def _grpc_options(limits: ServerLimits) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


async def serve(
    opts: ServeOptions,
    *,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a server until SIGTERM / SIGINT (main thread) or ``stop`` is set; see the module docstring."""
    from drift_engine import __version__
    from drift_engine.api import Engine

    listen = parse_listen(opts.listen, opts.data)
    check_security(listen, opts)
    if not (isinstance(opts.txn_timeout, int | float) and 0 < opts.txn_timeout < float("inf")):
        raise ServerStartupError(f"--txn-timeout {opts.txn_timeout}: must be a positive number of seconds")
    base_umask = os.umask(PRIVATE_UMASK)
    try:
        await _serve(opts, listen, __version__, Engine, on_ready, stop)
    finally:
        os.umask(base_umask)


async def _serve(
    opts: ServeOptions,
    listen: Listen,
    version: str,
    engine_cls: Any,
    on_ready: Callable[[dict[str, Any]], None] | None,
    stop: asyncio.Event | None,
) -> None:
    tightened = await asyncio.to_thread(restrict_data_dir, opts.data)
    if tightened:
        log.info("tightened data directory modes", extra={"data": os.path.abspath(opts.data), "changed": tightened})
    stop = stop or asyncio.Event()
    if threading.current_thread() is threading.main_thread():  # from here on, SIGTERM means "drain"
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    fast_addr = fast_address(listen, opts)
    tls = tls_context(opts)
    engine = await asyncio.to_thread(engine_cls.open, opts.data, **opts.engine_settings)
    engine.txns.timeout = opts.txn_timeout
    pool = ThreadPoolExecutor(opts.threads, thread_name_prefix="drift-rpc")
    admin_pool = ThreadPoolExecutor(opts.admin_threads, thread_name_prefix="drift-admin")
    core = ServiceCore(engine, opts.limits, version=version, fast_path=fast_addr)
    server = grpc.aio.server(options=_grpc_options(opts.limits))
    fast = None
    bound: list[str] = []
    try:
        service = DriftService(core, token=opts.token, pool=pool, admin_pool=admin_pool, inline_reads=opts.inline_reads)
        server.add_generic_rpc_handlers((service.generic_handler(),))
        old_umask = os.umask(0o117)
        try:
            if listen.kind == "unix":
                claim_unix_path(listen.path)
                if fast_addr:
                    claim_unix_path(listen.path + FAST_SUFFIX)
            port = _add_port(server, listen, opts)
            if listen.kind == "unix":
                bound.append(listen.path)
            await server.start()
            if listen.kind == "unix":
                os.chmod(listen.path, 0o660)
            if fast_addr:
                fast = _start_fast_path(core, fast_addr, opts, tls)
                core.fast_path = fast.address  # a TCP port 0 is now the port it got
                core.fast_state = fast.state
        finally:
            os.umask(old_umask)
        info = {
            "listen": dataclasses.replace(listen, port=port).grpc_target,
            "fast_path": core.fast_path,
            "data": os.path.abspath(opts.data),
            "pid": os.getpid(),
            "tls": bool(opts.tls_cert),
            "client_certs": bool(opts.tls_client_ca),
            "token": opts.token is not None,
            "collections": engine.list_collections(),
            **core.limits_dict(),
        }
        log.info("serving", extra=info)
        if on_ready is not None:
            on_ready(info)
        await stop.wait()
        log.info("draining", extra={"inflight": core.counters.inflight, "grace_s": opts.grace})
        core.draining = True
        drains = [server.stop(opts.grace)]
        if fast is not None:
            drains.append(asyncio.to_thread(fast.stop, opts.grace))
        await asyncio.gather(*drains)
        fast = None
    finally:
        with contextlib.suppress(Exception):
            await server.stop(None)
        if fast is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(fast.stop, 0)
        pool.shutdown(wait=True, cancel_futures=True)
        admin_pool.shutdown(wait=True, cancel_futures=True)
        await asyncio.to_thread(engine.close)
        for path in bound:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    log.info("stopped", extra={"data": os.path.abspath(opts.data)})


def _add_port(server: grpc.aio.Server, listen: Listen, opts: ServeOptions) -> int:
    target = listen.grpc_target
    try:
        if opts.tls_cert and opts.tls_key:
            creds = grpc.ssl_server_credentials(
                [(opts.tls_key, opts.tls_cert)],
                root_certificates=opts.tls_client_ca,
                require_client_auth=bool(opts.tls_client_ca),
            )
            port = server.add_secure_port(target, creds)
        else:
            port = server.add_insecure_port(target)
    except RuntimeError as exc:
        raise ServerStartupError(f"cannot listen on {target}: {exc}") from None
    if listen.kind == "tcp" and not port:
        raise ServerStartupError(f"cannot listen on {target} (address in use?)")
    return port
