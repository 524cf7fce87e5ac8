"""tests.reaper stops what a killed test run left behind: a killed owner's registered processes and clusters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.pg.cluster import REPO_ROOT

OWNER = textwrap.dedent(
    """
    import subprocess, sys, time
    from pathlib import Path
    from tests import reaper
    out = Path(sys.argv[1])
    keep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    done = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    reaper.register_process(keep.pid)
    token = reaper.register_process(done.pid)
    done.kill(); done.wait(); reaper.unregister(token)  # stopped by its owner: left alone
    marker = out / "cluster-stopped"
    reaper.register_cluster(["touch", str(marker)], out)  # a "cluster" whose stop command leaves a marker
    (out / "pids").write_text(f"{keep.pid}")
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_owner_leaves_nothing_running(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "pids").exists():
            assert owner.poll() is None, "the owner died before registering"
            assert time.monotonic() < deadline, "the owner never registered its processes"
            time.sleep(0.05)
        keep = int((tmp_path / "pids").read_text())
        assert _alive(keep)
    finally:
        owner.kill()  # SIGKILL: no finally block, no atexit in the owner runs
        owner.wait()
    deadline = time.monotonic() + 30
    while (_alive(keep) or not (tmp_path / "cluster-stopped").exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(keep):
        os.kill(keep, signal.SIGKILL)  # the reaper failed: still leave nothing behind
        raise AssertionError("the registered process outlived its killed owner")
    assert (tmp_path / "cluster-stopped").exists(), "the registered cluster's stop command never ran"
