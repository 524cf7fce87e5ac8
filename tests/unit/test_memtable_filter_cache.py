"""Filtered searches over memtable rows (``MemTable.filter_fields``: each label's payload parsed once and kept):
a replaced or deleted id never matches through a kept parse of its old payload, and repeated filtered
searches return exactly what brute force over the live rows returns."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine import Engine

DIM = 8


@pytest.fixture
def col(tmp_path):
    with Engine.open(tmp_path / "data") as eng:
        c = eng.create_collection("c", dim=DIM)
        c.set_params(auto_train_threshold=10**9)  # the rows stay in the memtable
        yield c


def test_filters_see_each_ids_newest_payload(col) -> None:
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((600, DIM)).astype(np.float32)
    col.insert(np.arange(600), vecs, [{"tag": f"t{i % 6}", "n": i} for i in range(600)])
    q = vecs[10]
    first = col.search(q, k=5, filter={"tag": "t4"})  # parses and keeps every tested label
    assert all(i % 6 == 4 for i in first.ids.tolist())
    moved = first.ids[:2]
    col.upsert(moved, vecs[moved], [{"tag": "elsewhere"}, {"tag": "elsewhere"}])  # same vectors, new tag
    col.delete(first.ids[2:3])
    again = col.search(q, k=5, filter={"tag": "t4"})
    assert not set(again.ids.tolist()) & set(first.ids[:3].tolist())
    assert col.search(q, k=2, filter={"tag": "elsewhere"}).ids.tolist() == sorted(
        moved.tolist(), key=lambda i: float(((vecs[i] - q) ** 2).sum())
    )
    live = [i for i in range(600) if i % 6 == 4 and i not in set(first.ids[:3].tolist())]
    exact = sorted(live, key=lambda i: float(((vecs[i] - q) ** 2).sum()))[:5]
    assert again.ids.tolist() == exact
    assert col.search(q, k=3, filter={"n": 7}).ids.tolist() == [7]  # numbers compare by their JSON form
    assert col.search(q, k=3, filter={"missing": "x"}).ids.size == 0
