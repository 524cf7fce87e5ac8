"""Crashes around the background finisher of engine transactions (engine/txn_done.py): an acknowledged write
survives two crashes in a row, and a power loss (every WAL cut back to what was fdatasynced) never tears a
transaction over two collections, in every durability mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from drift_engine import Engine
from drift_engine.wal.log import HEADER_SIZE

SMALL_WAL = r"""
import functools, os, signal, sys, numpy as np
import drift_engine.engine.writes as W
W.WriteAheadLog = functools.partial(W.WriteAheadLog, max_file_bytes=1024)  # many WAL files, as a big WAL has
from drift_engine import Engine
"""

FIRST_CRASH = (
    SMALL_WAL
    + r"""
eng = Engine.open(sys.argv[1]); a = eng.create_collection("a", dim=8)
eng.txns._finisher.add = lambda t: None  # the finisher has not got to T1 yet when the crash comes
with eng.transaction() as t:
    t.upsert("a", [5], np.full((1, 8), 1, np.float32))  # T1: a:5 = 1
a.upsert([5], np.full((1, 8), 2, np.float32))  # acknowledged later write: a:5 = 2
for i in range(20):
    a.upsert([100 + i], np.zeros((1, 8), np.float32))
print("acked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
)

SECOND_CRASH = (
    SMALL_WAL
    + r"""
import drift_engine.engine.txn as T
def recover(self):  # a flush of the replayed memtables while recovery runs, then a crash before TXN_DONE
    self._collection("a").flush()
    print("flushed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
T.TxnManager.recover = recover
Engine.open(sys.argv[1])
"""
)


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_an_acknowledged_write_survives_two_crashes_in_a_row(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    first = _run(FIRST_CRASH, data)
    assert first.returncode == -signal.SIGKILL and "acked" in first.stdout, first.stderr
    second = _run(SECOND_CRASH, data)
    assert second.returncode == -signal.SIGKILL and "flushed" in second.stdout, second.stderr
    with Engine.open(data) as eng:
        assert eng.collection("a").get([5]).vectors[0][0] == 2.0  # not T1's older 1.0 re-applied over it


POWER_CUT = r"""
import json, os, signal, sys, numpy as np
import drift_engine.wal.log as wlog
from drift_engine import Engine
synced = open(sys.argv[2], "a")
armed = False
real = wlog.fdatasync
def fdatasync(fd):
    real(fd)
    path = os.readlink(f"/proc/self/fd/{fd}")
    synced.write(json.dumps([path, os.fstat(fd).st_size]) + "\n"); synced.flush()
    if armed and os.sep + os.path.join("a", "wal") + os.sep in path:
        os.kill(os.getpid(), signal.SIGKILL)  # right after collection a's WAL reached the disk
wlog.fdatasync = fdatasync
eng = Engine.open(sys.argv[1], durability=sys.argv[3])
eng.create_collection("a", dim=8); eng.create_collection("b", dim=8)
armed = True
with eng.transaction() as t:
    t.insert("a", [1, 2, 3], np.ones((3, 8), np.float32)); t.insert("b", [10], np.ones((1, 8), np.float32))
print("acked", flush=True)
import time; time.sleep(3)
"""


@pytest.mark.parametrize("mode", ["sync", "batch", "off"])
def test_a_power_loss_never_tears_a_transaction(tmp_path: Path, mode: str) -> None:
    data, synced = tmp_path / "data", tmp_path / "synced.jsonl"
    proc = _run(POWER_CUT, str(data), str(synced), mode)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sizes: dict[str, int] = {}
    for line in synced.read_text().splitlines():
        path, size = json.loads(line)
        sizes[path] = max(size, sizes.get(path, 0))
    for f in data.rglob("*.log"):
        if f.parent.name in ("wal", "txnlog"):
            keep = sizes.get(str(f), HEADER_SIZE)
            if f.stat().st_size > keep:
                os.truncate(f, keep)  # what was never fdatasynced is lost
    with Engine.open(data) as eng:
        a = sorted(i for batch in eng.collection("a").scan(vectors=False) for i in batch.ids.tolist())
        b = sorted(i for batch in eng.collection("b").scan(vectors=False) for i in batch.ids.tolist())
    assert (a, b) in (([1, 2, 3], [10]), ([], [])), f"{mode}: torn transaction a={a} b={b}"
    if "acked" in proc.stdout and mode == "sync":
        assert (a, b) == ([1, 2, 3], [10])
