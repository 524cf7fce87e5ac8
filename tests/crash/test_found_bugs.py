"""Engine bugs the crash-matrix work turned up, each as a minimal failing test.

Each is marked ``xfail(strict=True)`` until the engine is fixed: once it passes, the strict mark fails the
suite, so the mark gets removed and the test keeps guarding the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drift_engine import Engine


@pytest.mark.xfail(
    strict=True,
    raises=KeyError,
    reason=(
        "engine/snapshot.py Snapshot.filter_masks (field(default_factory=dict)) is copied by reference by every "
        "dataclasses.replace(...) that publishes a new snapshot, so the per-snapshot memo of "
        "Collection._allowed_masks (engine/collection.py, keyed only by (filter, payload index version)) is "
        "shared by all versions: after an L1 change that leaves the payload index alone (flush, train, "
        "maintenance) a filtered search reuses the masks of an older segment set and raises KeyError in "
        "search._skip_for for the new segment (or, for segments in both, uses stale dead-row bits)"
    ),
)
@pytest.mark.parametrize("change", ["flush", "train"])
def test_filtered_search_after_an_l1_change(tmp_path: Path, change: str) -> None:
    with Engine.open(tmp_path) as engine:
        col = engine.create_collection("c", dim=4, auto_train_threshold=0)
        v = np.eye(4, dtype=np.float32)
        col.upsert([1, 2, 3], v[:3], [{"tag": "a"}] * 3)
        if change == "train":
            col.flush()
        assert col.search(v[0], k=2, filter={"tag": "a"}).ids.tolist()[0] == 1  # memo of this snapshot's segments
        if change == "flush":
            col.flush()  # a new segment; the payload index is unchanged
        else:
            col.train(n_buckets=1)  # new segments, the old ones retired
        assert col.search(v[0], k=2, filter={"tag": "a"}).ids.tolist()[0] == 1
