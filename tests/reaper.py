"""Stop every server the test run started, even when the run itself dies (SIGKILL, SIGTERM, a crash).

Fixtures stop what they start in ``finally`` blocks; that covers failures and Ctrl-C but not a killed pytest
(or demo, or benchmark). So each server process or PostgreSQL cluster is also *registered* here when it
starts and unregistered when its owner stopped it. The first registration starts a watchdog: a small
process in its own session whose stdin is a pipe from this process. When this process ends, however it
ends, the kernel closes the pipe; the watchdog then reads EOF and stops whatever is still registered:

* a process: SIGTERM, then SIGKILL after ``GRACE_S`` seconds (only if it is still the same process: its
  start time is checked, so a recycled pid is never touched);
* a PostgreSQL cluster: the registered stop command (``pg_ctl stop -m immediate``), then SIGKILL of the
  postmaster named in ``postmaster.pid`` if it is still there.

The registry is a JSON-lines file written with one ``write`` per line and read only by the watchdog.
``python -m tests.reaper REGISTRY`` is the watchdog's entry point. Thread-safe.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

GRACE_S = 5.0
_lock = threading.Lock()
_ids = itertools.count(1)
_state: dict[str, object] = {}


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _append(entry: dict[str, object]) -> None:
    with _lock:
        if "registry" not in _state:
            _start_watchdog()
        line = (json.dumps(entry) + "\n").encode()
        fd = os.open(str(_state["registry"]), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _start_watchdog() -> None:
    folder = Path(tempfile.mkdtemp(prefix="drift-reaper-"))
    registry = folder / "registry.jsonl"
    registry.touch()
    read_end, write_end = os.pipe()  # both non-inheritable; the child gets read_end as its stdin only
    repo = Path(__file__).resolve().parents[1]
    subprocess.Popen(
        [sys.executable, "-m", "tests.reaper", str(registry)],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        start_new_session=True,  # a Ctrl-C of the run's process group must not end the watchdog first
    )
    os.close(read_end)
    _state["registry"] = registry
    _state["pipe"] = write_end  # kept open for this process's lifetime


def register_process(pid: int) -> int:
    """Register a server process; returns the token for ``unregister``."""
    token = next(_ids)
    _append({"id": token, "kind": "process", "pid": pid, "start": _proc_start_time(pid)})
    return token


def register_cluster(stop_argv: Sequence[str], datadir: Path) -> int:
    """Register a PostgreSQL cluster: ``stop_argv`` stops it (run as is), ``datadir`` holds postmaster.pid."""
    token = next(_ids)
    _append({"id": token, "kind": "cluster", "stop": list(stop_argv), "datadir": str(datadir)})
    return token


def unregister(token: int | None) -> None:
    """Its owner stopped it: the watchdog leaves it alone."""
    if token is not None:
        _append({"id": token, "done": True})


# --- the watchdog --------------------------------------------------------------------------------------
def _live_entries(registry: Path) -> list[dict[str, object]]:
    entries: dict[int, dict[str, object]] = {}
    for line in registry.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("done"):
            entries.pop(entry["id"], None)
        else:
            entries[entry["id"]] = entry
    return list(entries.values())


def _stop_process(pid: int, start: object) -> None:
    if start is None or _proc_start_time(pid) != start:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        if _proc_start_time(pid) != start:
            return
        time.sleep(0.05)
    if _proc_start_time(pid) == start:
        os.kill(pid, signal.SIGKILL)


def _stop_cluster(stop_argv: list[str], datadir: Path) -> None:
    subprocess.run(stop_argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)
    try:
        pid = int((datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if _proc_start_time(pid) is not None:
        os.kill(pid, signal.SIGKILL)


def reap(registry: Path) -> None:
    """Stop everything still registered in ``registry`` (what the watchdog does once its owner is gone)."""
    for entry in _live_entries(registry):
        try:
            if entry["kind"] == "process":
                _stop_process(int(entry["pid"]), entry.get("start"))
            elif entry["kind"] == "cluster":
                _stop_cluster(list(entry["stop"]), Path(str(entry["datadir"])))
        except (OSError, subprocess.SubprocessError):
            continue


def _watchdog(registry: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(65536):
        pass  # nothing is ever written; EOF means the owner is gone
    try:
        reap(registry)
    finally:
        registry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            registry.parent.rmdir()


if __name__ == "__main__":
    _watchdog(Path(sys.argv[1]))
