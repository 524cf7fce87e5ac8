"""``drift-engine``: the command line of the engine server.

Commands (exit status 0 on success, 1 when a check fails or the server is unhealthy, 2 on a usage or
startup error, with a one-line ``error: ...`` on stderr):

* ``serve --data DIR [--listen unix:PATH | HOST:PORT] [--token-file F] [--tls-cert C --tls-key K
  [--tls-client-ca CA]] ...`` (a TCP listen needs ``--token-file``, or ``--insecure-no-token`` on loopback;
  beyond loopback also TLS, or ``--insecure-plaintext``; with TLS gRPC and the fast path are both encrypted):
  run the gRPC server (and the fast path for searches beside it) until SIGTERM / SIGINT; logs are
  JSON lines on stderr (``--log-format text`` for people).
* ``status [--address A | --data DIR] [--token-file F] [--tls-ca CA]``: the server's Health as JSON
  (``--address tls:HOST:PORT`` for a TLS server, checked against ``--tls-ca`` or the system's CAs).
* ``stats [--address A | --data DIR] [--token-file F] [--tls-ca CA] [COLLECTION ...]``: per-collection stats
  as JSON.
* ``inspect --data DIR [--collection NAME] [--quick]``: offline consistency check of segment files against
  LMDB, with the CRC32C of every LMDB value (see ``drift_engine.server.inspect``), as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from drift_engine.config import DURABILITY_MODES
from drift_engine.errors import DriftError
from drift_engine.server.framing import DEFAULT_SPIN_US


def _microseconds(text: str) -> int:
    """A whole number of microseconds, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of microseconds >= 0 (0: never)")
    return value


def _read_secret(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            value = f.read().strip()
    except OSError as exc:
        raise SystemExit(_fail(f"cannot read {what} {path}: {exc.strerror}")) from None
    if not value:
        raise SystemExit(_fail(f"{what} {path} is empty"))
    return value


def _fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _address(args: argparse.Namespace) -> str:
    if args.address:
        return args.address
    from drift_engine.server.runner import SOCKET_NAME

    return "unix:" + os.path.join(os.path.abspath(args.data or "."), SOCKET_NAME)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from drift_engine.server.core import ServerLimits
    from drift_engine.server.logs import setup_logging
    from drift_engine.server.runner import ServeOptions, ServerStartupError, serve

    setup_logging(args.log_format, args.log_level)
    token = _read_secret(args.token_file, "token file")
    engine_settings: dict[str, Any] = {"durability": args.durability}
    if args.cache_bytes is not None:
        engine_settings["cache_bytes"] = args.cache_bytes
    try:
        limits = ServerLimits(
            max_message_bytes=args.max_message_bytes, max_batch=args.max_batch, max_k=args.max_k, max_dim=args.max_dim
        )
        opts = ServeOptions(
            data=args.data,
            listen=args.listen,
            token=token,
            tls_cert=_read_secret(args.tls_cert, "TLS certificate"),
            tls_key=_read_secret(args.tls_key, "TLS key"),
            tls_client_ca=_read_secret(args.tls_client_ca, "TLS client CA"),
            insecure_plaintext=args.insecure_plaintext,
            limits=limits,
            threads=args.threads,
            fast_path="off" if args.no_fast_path else args.fast_path,
            fast_port=args.fast_port,
            fast_workers=args.fast_workers,
            spin_us=args.spin_us,
            cursor_idle_s=args.cursor_idle,
            max_cursors=args.max_cursors,
            max_cursors_per_client=args.max_cursors_per_client,
            inline_reads=args.inline_reads,
            grace=args.grace,
            insecure_no_token=args.insecure_no_token,
            txn_timeout=args.txn_timeout,
            engine_settings=engine_settings,
        )
        asyncio.run(serve(opts))
    except (ServerStartupError, DriftError) as exc:
        return _fail(str(exc))
    return 0


# ----------------------------------------------------------------------------------------------- clients
def _client(args: argparse.Namespace) -> Any:
    from drift_engine.server.client import Client

    token = _read_secret(args.token_file, "token file")
    return Client(
        _address(args),
        token=token.decode() if token else None,
        timeout=args.timeout,
        tls_ca=args.tls_ca,
        fast_path=False,
    )


def cmd_status(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            health = client.health()
    except DriftError as exc:
        return _fail(f"{_address(args)}: {exc}", 1)
    _print(health)
    return 0 if health.get("status") == "SERVING" else 1


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            names = args.collections or client.list_collections()
            out = {name: client.collection(name).stats() for name in names}
    except DriftError as exc:
        return _fail(f"{_address(args)}: {exc}", 1)
    _print(out)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from drift_engine.server.inspect import inspect_data_dir

    if not os.path.isdir(args.data):
        return _fail(f"{args.data} is not a directory")
    report = inspect_data_dir(args.data, collections=args.collection or None, verify_blocks=not args.quick)
    _print(report)
    return 0 if report["ok"] else 1


# ----------------------------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    from drift_engine.config import MAX_DIM, MAX_K

    p = argparse.ArgumentParser(prog="drift-engine", description="The drift vector engine server.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gRPC server on a data directory")
    s.add_argument("--data", required=True, help="engine data directory (created if missing; one server per directory)")
    s.add_argument(
        "--listen",
        help="unix:PATH (default unix:DATA/drift.sock) or HOST:PORT (needs --token-file or "
        "--insecure-no-token; beyond loopback --token-file and TLS, or --insecure-plaintext)",
    )
    s.add_argument(
        "--token-file", help="file holding the bearer token clients must present (required for a TCP --listen)"
    )
    s.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="allow a loopback TCP --listen without --token-file (any local user can then connect; "
        "non-loopback TCP always needs TLS and a token)",
    )
    s.add_argument(
        "--tls-cert",
        help="PEM certificate chain (TCP only; with --tls-key): gRPC and the fast path (fast+tls:) use TLS",
    )
    s.add_argument("--tls-key", help="PEM private key (unencrypted) of --tls-cert")
    s.add_argument(
        "--tls-client-ca",
        help="PEM CA certificate(s): require client certificates signed by it (mutual TLS; needs --tls-cert)",
    )
    s.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="allow a non-loopback TCP --listen without TLS (queries, vectors and the token cross the network "
        "in the clear; the token stays required)",
    )
    s.add_argument("--max-message-bytes", type=int, default=64 << 20, help="cap on one message (default %(default)s)")
    s.add_argument("--max-batch", type=int, default=100_000, help="cap on rows per call (default %(default)s)")
    s.add_argument("--max-k", type=int, default=MAX_K, help="cap on k (default %(default)s)")
    s.add_argument("--max-dim", type=int, default=MAX_DIM, help="cap on a collection's dimension (default %(default)s)")
    s.add_argument("--threads", type=int, default=max(16, 4 * (os.cpu_count() or 1)), help="engine worker threads")
    s.add_argument(
        "--fast-path",
        choices=("direct", "zmq", "off"),
        default="direct",
        help="the query path beside gRPC: direct sockets (default; beside a Unix socket or a TCP listener, "
        "fast+tls: with TLS), ZeroMQ ipc (Unix sockets only), or none",
    )
    s.add_argument("--no-fast-path", action="store_true", help="same as --fast-path off")
    s.add_argument(
        "--fast-port", type=int, default=0, help="TCP port of the direct fast path beside a TCP listener (0: any free)"
    )
    s.add_argument(
        "--fast-workers", type=int, default=4, help="fast-path requests served at once (default %(default)s)"
    )
    s.add_argument(
        "--spin-us",
        type=_microseconds,
        default=DEFAULT_SPIN_US,
        help="microseconds an idle server polls a fast-path connection for its next request before blocking (0: "
        "never; default %(default)s): saves a thread wake-up per request, costs that much CPU while idle",
    )
    s.add_argument(
        "--cursor-idle", type=float, default=60.0, help="seconds an unread fast-path stream cursor is kept (default 60)"
    )
    s.add_argument(
        "--max-cursors", type=int, default=1024, help="open fast-path stream cursors, server-wide (default %(default)s)"
    )
    s.add_argument(
        "--max-cursors-per-client",
        type=int,
        default=64,
        help="open fast-path stream cursors per client connection; beyond it the client's least recently used idle "
        "one is evicted (default %(default)s)",
    )
    s.add_argument(
        "--inline-reads",
        choices=("idle", "always", "never"),
        default="idle",
        help="run small gRPC reads on the event loop: when idle (default), always, or never (worker threads)",
    )
    s.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls get at shutdown")
    s.add_argument(
        "--txn-timeout",
        type=float,
        default=60.0,
        help="seconds an open transaction may sit idle before it is aborted (default %(default)s)",
    )
    s.add_argument("--durability", choices=DURABILITY_MODES, default="sync", help="default write durability")
    s.add_argument("--cache-bytes", type=int, help="segment block cache size in bytes")
    s.add_argument("--log-format", choices=("json", "text"), default="json")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    s.set_defaults(func=cmd_serve)

    for name, func, doc in (
        ("status", cmd_status, "a running server's health"),
        ("stats", cmd_stats, "collection stats"),
    ):
        c = sub.add_parser(name, help=doc)
        c.add_argument("--address", help="server address (default unix:DATA/drift.sock)")
        c.add_argument("--data", help="data directory whose socket to use")
        c.add_argument("--token-file", help="file holding the bearer token")
        c.add_argument("--tls-ca", help="PEM CA file to check a TLS server against (address tls:HOST:PORT)")
        c.add_argument("--timeout", type=float, default=10.0, help="seconds (default %(default)s)")
        if name == "stats":
            c.add_argument("collections", nargs="*", help="collection names (default: all)")
        c.set_defaults(func=func)

    i = sub.add_parser("inspect", help="offline consistency check of a data directory (segments vs LMDB)")
    i.add_argument("--data", required=True, help="engine data directory")
    i.add_argument("--collection", action="append", help="only this collection (repeatable)")
    i.add_argument("--quick", action="store_true", help="skip block checksums (headers and LMDB only)")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
