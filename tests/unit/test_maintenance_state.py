"""Hypothesis state machine: random upserts, deletes, flushes, splits, merges, compactions and maintain() calls.

After every step: each live vector is in exactly one bucket, counts and running sums equal a recomputation,
LMDB agrees with the segments (``maintenance.verify.check_l1``), and the collection holds exactly the model's
vectors (newest version of each id; deleted ids never come back).
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from drift_engine import Engine
from drift_engine.maintenance.verify import check_l1

D = 4
POOL = 400


class MaintenanceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="drift-maint-sm-")
        self.eng = Engine.open(self.dir, durability="off")
        self.col = self.eng.create_collection(
            "sm",
            D,
            target_bucket_size=8,
            memtable_max_vectors=32,
            bulk_min=64,
            maintain_duty=0.0,
            compact_extents=3,
            reassign_neighbors=4,
        )
        self.model: dict[int, np.ndarray] = {}
        self.rng = np.random.default_rng(0)
        self.centre = 0.0

    def teardown(self) -> None:
        self.eng.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _vectors(self, n: int) -> np.ndarray:
        return (self.rng.standard_normal((n, D)) + self.centre).astype(np.float32)

    @rule(n=st.integers(1, 80), drift=st.floats(-1.0, 1.5))
    def upsert(self, n: int, drift: float) -> None:
        self.centre += drift
        ids = self.rng.choice(POOL, size=n, replace=False).astype(np.int64)
        vecs = self._vectors(n)
        self.col.upsert(ids, vecs)
        self.model.update(zip(ids.tolist(), vecs, strict=True))

    @rule(n=st.integers(1, 60))
    def delete(self, n: int) -> None:
        ids = self.rng.choice(POOL, size=n, replace=False).astype(np.int64)
        self.col.delete(ids)
        for i in ids.tolist():
            self.model.pop(i, None)

    @rule()
    def flush(self) -> None:
        self.col.flush()

    @precondition(lambda self: len(self.model) >= 16 and not self.col.snapshot.trained)
    @rule()
    def train(self) -> None:
        self.col.train()

    @precondition(lambda self: self.col.snapshot.trained)
    @rule(pick=st.integers(0, 10_000), kind=st.sampled_from(["split", "merge", "drift", "compact"]))
    def job(self, pick: int, kind: str) -> None:
        buckets = sorted(self.col.snapshot.buckets)
        self.col._maintenance.run_job(kind, buckets[pick % len(buckets)])

    @precondition(lambda self: self.col.snapshot.trained and len(self.col.snapshot.segments) >= 2)
    @rule()
    def compact_segments(self) -> None:
        self.col._maintenance.run_job("segments", segments=tuple(sorted(self.col.snapshot.segments)))

    @precondition(lambda self: self.col.snapshot.trained)
    @rule(max_jobs=st.one_of(st.none(), st.integers(1, 5)))
    def maintain(self, max_jobs: int | None) -> None:
        self.col.maintain(max_jobs)

    @invariant()
    def consistent(self) -> None:
        with self.col._l1_lock:
            problems = check_l1(self.col._kv, self.col.snapshot)
        assert problems == [], problems
        assert len(self.col) == len(self.model)
        ids = np.arange(POOL, dtype=np.int64)
        got = self.col.get(ids)
        assert sorted(got.ids.tolist()) == sorted(self.model)
        for i, v in zip(got.ids.tolist(), got.vectors, strict=True):
            np.testing.assert_array_equal(v, self.model[i])


MaintenanceMachine.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMaintenanceMachine = MaintenanceMachine.TestCase
