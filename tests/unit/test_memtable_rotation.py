"""The active memtable is rotated when its graph is mostly dead (engine/writes.py ``DEAD_ROTATE_MIN``):
re-inserting deleted ids or replacing many vectors then writes into a fresh graph, and every read still sees
exactly the latest version of each id."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.engine.writes import DEAD_ROTATE_MIN

DIM = 16
N = DEAD_ROTATE_MIN + 500


def vecs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def col(tmp_path):
    with Engine.open(tmp_path / "data") as eng:
        c = eng.create_collection("c", dim=DIM)
        c.set_params(auto_train_threshold=10**9)  # keep everything in memtables: the rotation is what is tested
        yield c


def test_deleting_most_of_the_active_memtable_rotates_it(col) -> None:
    col.insert(np.arange(N), vecs(N, 1))
    active = col.snapshot.memtables[0]
    assert active.dead_labels == 0
    col.delete(np.arange(N))
    assert col.snapshot.memtables[0] is not active  # rotated: the next inserts get a fresh graph
    assert len(col) == 0
    again = vecs(N, 2)
    col.insert(np.arange(N), again)  # the deleted ids come back
    assert len(col) == N
    assert col.snapshot.memtables[0].dead_labels == 0
    got = col.get(np.arange(0, N, 97))
    np.testing.assert_allclose(got.vectors, again[np.arange(0, N, 97)], rtol=1e-6)
    hit = col.search(again[5], k=1)
    assert hit.ids[0] == 5


def test_replacing_many_vectors_rotates_and_keeps_the_latest(col) -> None:
    col.insert(np.arange(N), vecs(N, 3))
    first = col.snapshot.memtables[0]
    latest = vecs(N, 4)
    col.upsert(np.arange(N), latest)  # every vector replaced: the first graph is now all dead
    col.upsert(np.arange(10), latest[:10])
    assert col.snapshot.memtables[0] is not first
    assert len(col) == N
    np.testing.assert_allclose(col.get(np.arange(N)).vectors, latest, rtol=1e-6)


def test_deletes_below_the_minimum_or_under_half_do_not_rotate(col) -> None:
    n = 3 * DEAD_ROTATE_MIN
    col.insert(np.arange(n), vecs(n, 5))
    active = col.snapshot.memtables[0]
    col.delete(np.arange(DEAD_ROTATE_MIN - 1))  # fewer dead than the minimum
    assert col.snapshot.memtables[0] is active
    col.delete(np.arange(DEAD_ROTATE_MIN - 1, DEAD_ROTATE_MIN + 10))  # past the minimum, but most still live
    assert col.snapshot.memtables[0] is active and active.dead_labels < len(active)
    col.delete(np.arange(DEAD_ROTATE_MIN + 10, n - DEAD_ROTATE_MIN + 10))  # now more dead than live
    assert col.snapshot.memtables[0] is not active
    assert len(col) == DEAD_ROTATE_MIN - 10
