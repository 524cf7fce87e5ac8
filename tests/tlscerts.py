"""Throw-away TLS material for tests, made with the ``openssl`` command line.

``make_pki(folder)`` writes a CA, a server certificate signed by it for ``localhost`` and ``127.0.0.1``, a
client certificate signed by it, and a second, unrelated CA (the "wrong" one), all P-256 and valid for a
day; it returns their paths (``Pki``) and the SHA-256 of the server certificate. It skips the test when
``openssl`` is missing or fails.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    server_sha256: str


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')[-300:]}")


def _ca(folder: Path, name: str) -> None:
    _run("req", "-x509", *_KEY, "-days", "1", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out",
         f"{name}.pem", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip


def _leaf(folder: Path, name: str, cn: str, ext: str) -> None:
    (folder / f"{name}.ext").write_text(ext)
    _run("req", *_KEY, "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "1", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip


def make_pki(folder: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    _ca(folder, "ca")
    _ca(folder, "other")
    server_ext = "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    _leaf(folder, "server", "localhost", server_ext)
    _leaf(folder, "client", "drift-test-client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for key in folder.glob("*.key"):
        key.chmod(0o600)
    der = ssl.PEM_cert_to_DER_cert((folder / "server.pem").read_text())
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=folder / "other.pem",
        server_sha256=hashlib.sha256(der).hexdigest(),
    )
