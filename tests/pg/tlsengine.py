"""An engine server over TCP with TLS on 127.0.0.1, reachable by a private PostgreSQL cluster's backends.

Contract:

- ``TlsEngine().start()`` makes a temporary folder (``0o711``), a CA and a server certificate for
  ``localhost`` / ``127.0.0.1`` in ``<tmp>/pki`` (``tests.tlscerts``; the CA file readable by everyone, so
  the backends' OS user can load it; keys ``0o600``), a token, and runs ``drift_engine.cli serve --listen
  127.0.0.1:PORT --tls-cert ... --tls-key ... --token-file ...`` (port 0 the first time: a free one, kept
  across ``restart``). It waits for the "serving" log line and one gRPC-TLS Health.
- ``address`` is ``tls:localhost:PORT`` (what a foreign server's ``address`` option names), ``ca`` the CA
  file (its ``tls_ca`` option), ``token`` the token, ``fast_path`` the advertised ``fast+tls:`` address.
  ``client(**kw)`` is a ``Client`` with the token and the CA filled in.
- Stopping and clean-up are ``EngineServer``'s; ``running_tls_engine()`` is the started-and-stopped form for fixtures.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests import reaper
from tests.pg.cluster import REPO_ROOT
from tests.pg.engine import EngineError, EngineServer
from tests.tlscerts import Pki, make_pki


class TlsEngine(EngineServer):
    def __init__(self, *, extra_args: list[str] | None = None) -> None:
        super().__init__(extra_args=extra_args)
        self.token = secrets.token_hex(16)
        self.port = 0
        self.fast_port = 0
        self.fast_path = ""
        self.pki: Pki | None = None
        self._log_start = 0

    @property
    def address(self) -> str:
        return f"tls:localhost:{self.port}"

    @property
    def ca(self) -> str:
        assert self.pki is not None
        return str(self.pki.ca)

    def _spawn(self) -> None:
        assert self.tmp is not None and self._logfile is not None
        if self.pki is None:
            self.pki = make_pki(self.tmp / "pki")
            (self.tmp / "pki").chmod(0o711)
            self.pki.ca.chmod(0o644)
        token_file = self.tmp / "token"
        token_file.write_text(self.token + "\n")
        token_file.chmod(0o600)
        argv = [self.python, "-m", "drift_engine.cli", "serve", "--data", str(self.data),
                "--listen", f"127.0.0.1:{self.port}", "--token-file", str(token_file),
                "--tls-cert", str(self.pki.server_cert), "--tls-key", str(self.pki.server_key),
                "--log-format", "json", *self.extra_args]  # fmt: skip
        if self.fast_port:
            argv += ["--fast-port", str(self.fast_port)]
        self._log_start = self._logfile.stat().st_size if self._logfile.exists() else 0
        with open(self._logfile, "ab") as log:
            self.proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO_ROOT)  # fmt: skip
        self._reaper_token = reaper.register_process(self.proc.pid)

    def _wait_ready(self, timeout: float) -> None:
        assert self._logfile is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EngineError(f"the TLS engine exited with status {self.proc.returncode}:\n{self.log()}")
            with open(self._logfile, "rb") as f:
                f.seek(self._log_start)
                lines = f.read().decode(errors="replace").splitlines()
            for line in lines:
                if '"msg": "serving"' in line:
                    info = json.loads(line)
                    self.port = int(info["listen"].rsplit(":", 1)[1])
                    self.fast_path = info["fast_path"]
                    self.fast_port = int(self.fast_path.rsplit(":", 1)[1])
                    with self.client(timeout=5, fast_path=False) as c:
                        assert c.health()["status"] == "SERVING"
                    return
            time.sleep(0.05)
        self.stop()
        raise EngineError(f"the TLS engine did not start within {timeout} s:\n{self.log()}")

    def client(self, **kwargs: Any) -> Any:
        from drift_engine.server.client import Client

        kwargs.setdefault("token", self.token)
        kwargs.setdefault("tls_ca", self.ca)
        return Client(self.address, **kwargs)


@contextmanager
def running_tls_engine() -> Iterator[TlsEngine]:
    """A started ``TlsEngine`` for a test fixture (a start failure fails the test), stopped afterwards."""
    import pytest

    eng = TlsEngine()
    try:
        eng.start()
    except EngineError as exc:
        pytest.fail(f"could not start the TLS engine: {exc}")
    try:
        yield eng
    finally:
        eng.stop()
