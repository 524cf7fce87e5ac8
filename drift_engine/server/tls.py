"""TLS for drift's TCP transports: the direct fast path (Python ``ssl``) and gRPC (gRPC's own TLS).

Contract:

* ``ClientTLS(ca=None, server_name=None, pin=None, cert=None, key=None)`` says how a client checks a server
  (frozen and hashable: it is part of connection and channel cache keys). ``ca``: the PEM of the CA(s) to
  trust, as a file path or bytes (``None``: the system's trust store). The server's certificate must chain
  to it AND name the host dialled, or ``server_name`` when given (for a server reached by an IP address or
  an alias its certificate does not carry). There is no switch that turns either check off. ``pin``: the
  SHA-256 of the server's certificate (DER, hex; colons and case ignored) — with it, a certificate the CA
  vouches for is still refused unless it is exactly that one. ``cert`` / ``key``: PEM files of a client
  certificate, for servers started with ``--tls-client-ca`` (mutual TLS).
* ``ClientTLS.wrap(sock, host, what)`` runs the handshake on a connected socket (under the socket's
  timeout) and checks the pin; every failure raises ``EngineUnavailableError`` whose message says what
  failed (untrusted certificate, wrong name, pin mismatch, a plaintext or silent peer) with a hint, and
  the socket is closed. ``probe(host, port, timeout)`` does the same on a fresh connection (gRPC cannot
  check a pin itself: a pinned ``Client`` probes once when it opens its channel, a pinned ``AsyncClient``
  once before its first call). ``untrusted_hint(host)`` is the hint of a refused certificate (the CA
  trusted, the name checked); ``grpc_hint(host, message)`` picks it, or ``HANDSHAKE_HINT`` (a plaintext
  listener, a missing client certificate), for a failure gRPC reported, and ``None`` for any other.
* ``ClientTLS.grpc()`` gives gRPC's channel credentials and the extra channel options (the name
  override) for the same checks. An unreadable ``ca`` / ``cert`` / ``key`` file raises
  ``InvalidArgumentError`` naming it.
* ``client_settings(address, tls_ca, tls)`` reads an engine address: ``tls:HOST:PORT`` (or a plain
  ``HOST:PORT`` with ``tls_ca`` / ``tls`` given) means gRPC and the fast path over TLS; returns the address
  without the prefix and the ``ClientTLS`` (``None``: plaintext). TLS on a Unix socket is refused.
* ``server_context(cert_pem, key_pem, client_ca_pem)`` is the fast path's server ``SSLContext``: TLS 1.2
  or newer, no session tickets (so nothing but replies ever arrives on a client's socket), client
  certificates required and checked against ``client_ca_pem`` when it is given. A certificate or key
  that does not load raises ``ssl.SSLError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import grpc

from drift_engine.errors import EngineUnavailableError, InvalidArgumentError

TLS_ADDRESS_PREFIX = "tls:"
HANDSHAKE_HINT = (
    "is that port a TLS listener (started with --tls-cert / --tls-key)? A server that "
    "asks for client certificates (--tls-client-ca) needs cert and key here"
)
_GRPC_REFUSED = ("certificate_verify_failed", "hostname verification check failed")  # gRPC's own wording
_GRPC_HANDSHAKE = ("tls handshake failed", "ssl handshake failed")
_contexts: dict[ClientTLS, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def _normal_pin(pin: str) -> str:
    clean = pin.replace(":", "").strip().lower()
    if len(clean) != 64 or any(c not in "0123456789abcdef" for c in clean):
        raise InvalidArgumentError(
            f"TLS pin {pin!r} is not a SHA-256 fingerprint",
            hint="openssl x509 -in server.pem -noout -fingerprint -sha256 prints it (64 hex digits)",
        )
    return clean


def _read(path_or_pem: bytes | str, what: str) -> bytes:
    if isinstance(path_or_pem, bytes):
        return path_or_pem
    try:
        with open(path_or_pem, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read the TLS {what} file {path_or_pem}: {exc.strerror}") from None


def fingerprint(der: bytes) -> str:
    """The SHA-256 of a DER certificate, lowercase hex (the form ``pin`` takes)."""
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class ClientTLS:
    ca: bytes | str | None = None
    server_name: str | None = None
    pin: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.pin is not None:
            object.__setattr__(self, "pin", _normal_pin(self.pin))
        if bool(self.cert) != bool(self.key):
            raise InvalidArgumentError("a TLS client certificate needs both cert and key")

    # ------------------------------------------------------------------ the fast path (Python ssl)
    def context(self) -> ssl.SSLContext:
        """The client ``SSLContext`` (made once per settings)."""
        with _contexts_lock:
            ctx = _contexts.get(self)
            if ctx is None:
                ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
                if self.ca is not None:
                    pem = _read(self.ca, "CA")
                    try:
                        ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
                    except ssl.SSLError as exc:
                        raise InvalidArgumentError(
                            f"the TLS CA {self._ca_name()} holds no usable certificate: {exc}"
                        ) from None
                if self.cert and self.key:
                    try:
                        ctx.load_cert_chain(self.cert, self.key)
                    except (OSError, ssl.SSLError) as exc:
                        raise InvalidArgumentError(
                            f"cannot load the TLS client certificate {self.cert} / key {self.key}: {exc}"
                        ) from None
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.check_hostname = True
                ctx.verify_mode = ssl.CERT_REQUIRED
                _contexts[self] = ctx
            return ctx

    def _ca_name(self) -> str:
        return "given as PEM bytes" if isinstance(self.ca, bytes) else str(self.ca or "(system trust store)")

    def untrusted_hint(self, host: str) -> str:
        """The hint of a refused server certificate: which CA is trusted and which name is checked."""
        return (
            f"the CA to trust is {self._ca_name()}; the certificate must name {self.server_name or host!r} "
            "(tls_server_name / server_name sets the name to check)"
        )

    def grpc_hint(self, host: str, message: str) -> str | None:
        """The hint for a failed gRPC call's ``message`` over these settings: ``untrusted_hint`` when gRPC
        refused the server's certificate, ``HANDSHAKE_HINT`` for another failed handshake, else ``None``."""
        text = message.lower()
        if any(mark in text for mark in _GRPC_REFUSED):
            return self.untrusted_hint(host)
        if any(mark in text for mark in _GRPC_HANDSHAKE):
            return HANDSHAKE_HINT
        return None

    def wrap(self, sock: socket.socket, host: str, what: str) -> ssl.SSLSocket:
        """Handshake on the connected ``sock`` and check the pin; see the module docstring."""
        name = self.server_name or host
        try:
            ctx = self.context()
        except BaseException:
            sock.close()
            raise
        try:
            tls_sock = ctx.wrap_socket(sock, server_hostname=name)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise EngineUnavailableError(
                f"TLS: {what} presented a certificate this client does not accept: {exc.verify_message}",
                hint=self.untrusted_hint(host),
            ) from None
        except ssl.SSLError as exc:
            sock.close()
            raise EngineUnavailableError(
                f"TLS handshake with {what} failed: {exc.reason or exc}", hint=HANDSHAKE_HINT
            ) from None
        except (TimeoutError, OSError) as exc:
            sock.close()
            raise EngineUnavailableError(
                f"TLS handshake with {what} failed: {exc or type(exc).__name__}",
                hint="a plaintext listener never answers a TLS handshake: is the server started with --tls-cert?",
            ) from None
        if self.pin is not None:
            got = fingerprint(tls_sock.getpeercert(binary_form=True) or b"")
            if not hmac.compare_digest(got, self.pin):
                tls_sock.close()
                raise EngineUnavailableError(
                    f"TLS: {what} presented a certificate whose SHA-256 {got} is not the pinned {self.pin}",
                    hint="the server's certificate changed, or this is not the server you pinned",
                )
        return tls_sock

    def probe(self, host: str, port: int, timeout: float) -> None:
        """One handshake with every check (chain, name, pin) on a fresh connection, then close it."""
        what = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise EngineUnavailableError(f"cannot connect to {what} to check its TLS certificate: {exc}") from None
        self.wrap(sock, host, what).close()

    # ------------------------------------------------------------------ gRPC
    def grpc(self) -> tuple[grpc.ChannelCredentials, list[tuple[str, Any]]]:
        """gRPC channel credentials and extra channel options with the same chain and name checks."""
        root = _read(self.ca, "CA") if self.ca is not None else None
        key = _read(self.key, "client key") if self.key else None
        chain = _read(self.cert, "client certificate") if self.cert else None
        creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return creds, options


def client_settings(
    address: str, tls_ca: bytes | str | None = None, tls: ClientTLS | None = None
) -> tuple[str, ClientTLS | None]:
    """(the address without ``tls:``, the TLS settings or ``None``); see the module docstring."""
    if tls is not None and tls_ca is not None:
        if tls.ca is not None and tls.ca != tls_ca:
            raise InvalidArgumentError("give the CA either as tls_ca or in tls, not two different ones")
        tls = dataclasses.replace(tls, ca=tls_ca)
    elif tls_ca is not None:
        tls = ClientTLS(ca=tls_ca)
    if isinstance(address, str) and address.startswith(TLS_ADDRESS_PREFIX):
        address = address[len(TLS_ADDRESS_PREFIX) :]
        tls = tls or ClientTLS()
    if tls is not None and isinstance(address, str) and (address.startswith(("unix:", "/")) or not address):
        raise InvalidArgumentError(
            f"TLS applies to TCP addresses (HOST:PORT), not {address!r}", hint="a Unix socket is guarded by its mode"
        )
    return address, tls


def server_context(cert_pem: bytes, key_pem: bytes, client_ca_pem: bytes | None = None) -> ssl.SSLContext:
    """The fast path's server ``SSLContext``; see the module docstring."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.num_tickets = 0
    with tempfile.TemporaryDirectory(prefix="drift-tls-") as tmp:  # ssl loads a key from files only
        paths = []
        for name, pem in (("cert.pem", cert_pem), ("key.pem", key_pem)):
            path = os.path.join(tmp, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            paths.append(path)
        ctx.load_cert_chain(paths[0], paths[1])
    if client_ca_pem:
        ctx.load_verify_locations(cadata=client_ca_pem.decode("ascii", "replace"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
