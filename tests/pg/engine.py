"""A drift engine server in a subprocess, reachable by a private PostgreSQL cluster (used by fixtures, demo, bench).

Contract:

- ``EngineServer(python=...).start()`` makes a temporary folder, runs
  ``python -m drift_engine.cli serve --data <tmp>/data --listen unix:<tmp>/drift.sock`` and waits (up to
  ``timeout`` seconds) until Health answers ``SERVING`` on the socket; ``address`` is ``unix:<socket>``.
  The socket's folder is searchable by everyone (``0o711``) so PostgreSQL backends can connect.
- The server runs as the current user (so numba's kernel cache in the repository is reused). When that is
  root, the sockets (gRPC and the ZeroMQ fast path; mode 0660) are handed to the ``postgres`` group, the
  group of the OS user the private cluster's backends run as.
- ``stop()`` sends SIGTERM (a graceful drain), waits, kills after ``grace`` seconds, and removes the folder
  (kept when ``DRIFT_PG_KEEP=1``). ``log()`` returns the tail of the server's stderr. The process is
  registered with ``tests.reaper``, so it is stopped even when the process that started it is killed.
- The server's environment: the caller's, plus ``PYTHONPATH=<repo root>``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests import reaper
from tests.pg.cluster import PG_OS_USER, REPO_ROOT


class EngineError(RuntimeError):
    """The engine server could not be started; the message says why (with its log)."""


class EngineServer:
    def __init__(self, python: str | Path | None = None, *, extra_args: list[str] | None = None) -> None:
        default = REPO_ROOT / ".venv" / "bin" / "python"
        self.python = str(python or (default if default.exists() else sys.executable))
        self.extra_args = list(extra_args or [])
        self.as_root = os.geteuid() == 0
        self.tmp: Path | None = None
        self.socket = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._logfile: Path | None = None
        self._reaper_token: int | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    @property
    def data(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "data"

    def start(self, timeout: float = 60.0) -> EngineServer:
        self.tmp = Path(tempfile.mkdtemp(prefix="drift-eng-"))
        self.tmp.chmod(0o711)
        self.socket = str(self.tmp / "drift.sock")
        self._logfile = self.tmp / "server.log"
        self._spawn()
        self._wait_ready(timeout)
        return self

    def _spawn(self) -> None:
        assert self.tmp is not None and self._logfile is not None
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        argv = [self.python, "-m", "drift_engine.cli", "serve", "--data", str(self.data)]
        argv += ["--listen", self.address, "--log-format", "text", *self.extra_args]
        with open(self._logfile, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO_ROOT)
        self._reaper_token = reaper.register_process(self.proc.pid)

    def _wait_ready(self, timeout: float) -> None:
        from drift_engine.errors import DriftError
        from drift_engine.server.client import Client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EngineError(f"the engine server exited with status {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket):
                try:
                    with Client(self.address, timeout=2.0, fast_path=False) as client:
                        health = client.health()
                    if health["status"] == "SERVING":
                        self._share_sockets(health["fast_path"])
                        return
                except DriftError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise EngineError(f"the engine server did not become healthy within {timeout} s:\n{self.log()}")

    def _share_sockets(self, fast_path: str) -> None:
        if not self.as_root:
            return
        gid = pwd.getpwnam(PG_OS_USER).pw_gid
        paths = [self.socket]
        for prefix in ("ipc://", "fast+unix:"):
            if fast_path.startswith(prefix):
                paths.append(fast_path[len(prefix) :])
        for path in paths:
            os.chown(path, -1, gid)

    def client(self, **kwargs: Any) -> Any:
        from drift_engine.server.client import Client

        return Client(self.address, **kwargs)

    def log(self, tail: int = 40) -> str:
        if self._logfile is None or not self._logfile.exists():
            return ""
        return "\n".join(self._logfile.read_text(errors="replace").splitlines()[-tail:])

    def terminate(self, grace: float = 15.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``grace`` s) but keep its folder."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        reaper.unregister(self._reaper_token)
        self._reaper_token = None

    def restart(self, timeout: float = 60.0) -> None:
        """Start the server again on the same data directory and socket."""
        self.terminate()
        self._spawn()
        self._wait_ready(timeout)

    def stop(self) -> None:
        self.terminate()
        if self.tmp is not None and os.environ.get("DRIFT_PG_KEEP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> EngineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
