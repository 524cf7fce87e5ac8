"""A large part of an engine transaction goes to L1 directly (engine/bulk.py): it is whole, searchable and
counted like any write, and a crash or a failed L1 apply at any point around its commit never loses or
doubles an acknowledged (or committed) row."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.errors import WritesStoppedError

N = 500
DIM = 8


def _vectors(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _open_with_rows(path: Path) -> tuple[Engine, object]:
    eng = Engine.open(str(path))
    col = eng.create_collection("a", dim=DIM, bulk_min=100, auto_train_threshold=0, maintain_duty=0.0)
    return eng, col


def test_a_large_part_goes_to_l1_whole_and_replaces_older_versions(tmp_path: Path) -> None:
    eng, col = _open_with_rows(tmp_path / "d")
    with eng:
        col.upsert(np.arange(10), _vectors(1, 10))  # older versions in the memtable
        first = _vectors(2)
        with eng.transaction() as t:
            t.upsert("a", np.arange(N), first, [{"tag": f"t{i % 5}"} for i in range(N)])
        snap = col.snapshot
        assert all(m.n_ops == 0 for m in snap.memtables)  # nothing went through a memtable graph
        assert len(col) == N and snap.live_count == N
        np.testing.assert_array_equal(col.get(np.arange(N)).vectors, first)
        hit = col.search(first[7], k=1)
        assert int(hit.ids[0]) == 7
        tagged = col.search(first[3], k=N, filter={"tag": "t3"})
        assert sorted(tagged.ids.tolist()) == list(range(3, N, 5))
        second = _vectors(3)
        with eng.transaction() as t:
            t.upsert("a", np.arange(N), second)
        assert len(col) == N
        np.testing.assert_array_equal(col.get(np.arange(N)).vectors, second)
        with eng.transaction() as t:  # a part with deletes takes the memtable path, and is whole too
            t.upsert("a", np.arange(N, 2 * N), _vectors(4))
            t.delete("a", [0, 1])
        assert len(col) == 2 * N - 2 and col.snapshot.memtables[0].n_ops > 0
    with Engine.open(str(tmp_path / "d")) as eng:
        col = eng.collection("a")
        assert len(col) == 2 * N - 2
        np.testing.assert_array_equal(col.get(np.arange(2, N)).vectors, second[2:])


CRASH = r"""
import os, signal, sys, numpy as np
from drift_engine import Engine
import drift_engine.engine.bulk as B
where = sys.argv[2]
eng = Engine.open(sys.argv[1])
a = eng.create_collection("a", dim=8, bulk_min=100, auto_train_threshold=0, maintain_duty=0.0)
a.upsert(np.arange(10), np.full((10, 8), 9, np.float32))
eng.txns._finisher.add = lambda t: None  # no TXN_DONE before the crash
real = B.commit_batch
def commit_batch(*args, **kwargs):
    if where == "before_l1":
        os.kill(os.getpid(), signal.SIGKILL)  # TXN_APPLY is durable, L1 does not hold the rows
    out = real(*args, **kwargs)
    if where == "after_l1":
        os.kill(os.getpid(), signal.SIGKILL)  # L1 holds the rows, nothing was acknowledged yet
    return out
B.commit_batch = commit_batch
vec = np.random.default_rng(5).standard_normal((500, 8)).astype(np.float32)
with eng.transaction() as t:
    t.upsert("a", np.arange(500), vec)
print("acked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("where", ["before_l1", "after_l1", "after_ack"])
def test_a_crash_around_the_l1_apply_keeps_the_transaction_whole_and_once(tmp_path: Path, where: str) -> None:
    data = str(tmp_path / "data")
    run = subprocess.run([sys.executable, "-c", CRASH, data, where], capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert ("acked" in run.stdout) == (where == "after_ack")
    expected = np.random.default_rng(5).standard_normal((N, DIM)).astype(np.float32)
    for _ in range(2):  # and again after the recovery's own state was written
        with Engine.open(data) as eng:
            col = eng.collection("a")
            assert len(col) == N  # the commit record was durable: the transaction is there, once
            np.testing.assert_array_equal(col.get(np.arange(N)).vectors, expected)
            assert eng.txns.pending() == []


def test_a_failed_l1_apply_is_finished_by_the_next_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import drift_engine.engine.bulk as bulk

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("no space left on device (simulated)")

    eng, col = _open_with_rows(tmp_path / "d")
    vec = _vectors(6)
    monkeypatch.setattr(bulk, "commit_batch", broken)
    with pytest.raises(WritesStoppedError, match="committed"), eng.transaction() as t:
        t.upsert("a", np.arange(N), vec)
    assert len(col) == 0  # nothing of it is visible in this process
    monkeypatch.undo()
    eng.close()
    with Engine.open(str(tmp_path / "d")) as eng:
        col = eng.collection("a")
        assert len(col) == N
        np.testing.assert_array_equal(col.get(np.arange(N)).vectors, vec)
