"""SIGKILL at each maintenance step loses nothing (joins the crash matrix for split / merge / compaction).

A child process loads a collection, trains it, writes a drifted batch and deletes (acknowledged: the calls
returned), records that in a file, then flushes (which splits overfilled buckets inline) and runs ``maintain()``
with ``DRIFT_CRASH_AT`` set to a maintenance crash point
(``maintain.after_segments``: segment written, LMDB not committed; ``maintain.after_commit``: LMDB committed,
snapshot not published; ``retire.before_delete``: a retired segment about to be deleted), optionally after a few
passes (``DRIFT_CRASH_SKIP``). The parent checks the child died by SIGKILL, reopens the data directory and checks
every acknowledged vector is present exactly once with its value, the L1 invariants hold, no unreferenced segment
file is left, and maintenance then runs to completion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.maintenance.verify import check_l1

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from drift_engine import Engine
    data, ack = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(7)
    eng = Engine.open(data)
    col = eng.create_collection("c", 8, target_bucket_size=16, maintain_duty=0.0, memtable_max_vectors=100_000,
                                compact_extents=2)
    base = rng.standard_normal((400, 8)).astype(np.float32)
    col.upsert(np.arange(400), base)
    col.train()
    drifted = (rng.standard_normal((300, 8)) * 0.5 + 2.0).astype(np.float32)
    col.upsert(np.arange(1000, 1300), drifted)
    col.delete(np.arange(0, 400, 3))
    with open(ack, "w") as fh:  # every write above returned: acknowledged (durable in the WAL)
        json.dump({"acked": True}, fh)
    col.flush()  # splits the buckets the drifted batch overfilled, inline (crash points fire here too)
    col.maintain()
    eng.close()
    """
)


def _expected() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(7)
    base = rng.standard_normal((400, 8)).astype(np.float32)
    drifted = (rng.standard_normal((300, 8)) * 0.5 + 2.0).astype(np.float32)
    out = {i: base[i] for i in range(400) if i % 3}
    out.update({1000 + j: drifted[j] for j in range(300)})
    return out


@pytest.mark.parametrize(
    ("point", "skip"),
    [
        ("maintain.after_segments", 0),
        ("maintain.after_segments", 3),
        ("maintain.after_commit", 0),
        ("maintain.after_commit", 3),
        ("retire.before_delete", 1),  # the first retire is train's
    ],
)
def test_sigkill_during_maintenance_loses_nothing(tmp_path, point, skip):
    data, ack = tmp_path / "d", tmp_path / "ack.json"
    env = {**os.environ, "DRIFT_CRASH_AT": point, "DRIFT_CRASH_SKIP": str(skip)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(ack)], env=env, capture_output=True, text=True, timeout=120
    )
    assert ack.exists(), proc.stderr
    assert json.loads(ack.read_text())["acked"]
    assert proc.returncode == -signal.SIGKILL, f"child was not killed at {point}: rc={proc.returncode} {proc.stderr}"
    expected = _expected()
    with Engine.open(data) as eng:
        col = eng.collection("c")
        seg_dir = data / "collections" / "c" / "segments"
        referenced = {seg.path.rsplit(os.sep, 1)[-1] for seg in col.snapshot.segments.values()}
        assert {p.name for p in seg_dir.iterdir()} == referenced  # nothing unreferenced survives the reopen
        for _ in range(2):
            with col._l1_lock:
                assert check_l1(col._kv, col.snapshot) == []
            assert len(col) == len(expected)
            ids = np.array(sorted(expected), dtype=np.int64)
            got = col.get(ids)
            assert got.ids.tolist() == ids.tolist()
            np.testing.assert_array_equal(got.vectors, np.stack([expected[i] for i in ids.tolist()]))
            assert col.get(np.arange(0, 400, 3)).ids.size == 0  # deleted ids stay deleted
            col.maintain()  # and maintenance completes after the crash
        assert col.stats()["maintenance_pending"] == 0
