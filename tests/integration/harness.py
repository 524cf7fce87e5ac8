"""Running a real ``drift-engine serve`` process in tests.

``start_server(data, *args, token=None)`` starts ``python -m drift_engine.cli serve --data DATA`` on a Unix
socket in DATA (stderr to ``DATA.log`` beside it) and waits until Health answers; it returns a ``ServerProc``
(``address``, ``client()``, ``stop(signal)``, ``log_text()``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from drift_engine.errors import DriftError
from drift_engine.server.client import Client
from tests import reaper

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProc:
    data: Path
    proc: subprocess.Popen
    log: Path
    token: str | None = None
    extra: list[str] = field(default_factory=list)
    reaper_token: int | None = None  # tests.reaper stops the process if this test run is killed

    @property
    def address(self) -> str:
        return f"unix:{self.data / 'drift.sock'}"

    def client(self, **kwargs) -> Client:
        kwargs.setdefault("token", self.token)
        kwargs.setdefault("timeout", 30)
        return Client(self.address, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not stop within {timeout} s after signal {sig}") from None
        finally:
            if self.proc.poll() is not None:
                reaper.unregister(self.reaper_token)


def serve_cmd(data: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "drift_engine.cli", "serve", "--data", str(data), "--log-level", "debug", *args]


def start_server(data: Path, *args: str, token: str | None = None, wait: bool = True) -> ServerProc:
    data.mkdir(parents=True, exist_ok=True)
    extra = list(args)
    if token is not None:
        token_file = data.parent / f"{data.name}.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        extra += ["--token-file", str(token_file)]
    log = data.parent / f"{data.name}.log"
    with open(log, "ab") as err:
        proc = subprocess.Popen(serve_cmd(data, *extra), stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    server = ServerProc(data, proc, log, token, extra, reaper.register_process(proc.pid))
    if wait:
        wait_healthy(server)
    return server


def wait_healthy(server: ServerProc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    sock = server.data / "drift.sock"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log_text()[-3000:]}")
        if sock.exists():
            try:
                with server.client(timeout=2, fast_path=False) as client:
                    if client.health()["status"] == "SERVING":
                        return
            except DriftError:
                pass
        time.sleep(0.05)
    server.proc.kill()
    raise AssertionError(f"server not healthy within {timeout} s:\n{server.log_text()[-3000:]}")
