"""``SearchStreamer``'s rules on a scripted collection: order, no repeats, skips, widening, every end reason."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine.errors import InvalidArgumentError
from drift_engine.results import SearchResult
from drift_engine.server.stream import SearchStreamer


class Scripted:
    """Answers round r with ``rounds[r]`` (a list of (id, distance)), recording each call's arguments."""

    def __init__(self, rounds: list[list[tuple[int, float]]], size: int = 1000) -> None:
        self.rounds = rounds
        self.size = size
        self.calls: list[dict] = []

    def search(self, query, k, nprobe=None, rerank=None, filter=None, *, ef=None) -> SearchResult:
        self.calls.append({"k": k, "nprobe": nprobe, "ef": ef})
        rows = self.rounds[min(len(self.calls) - 1, len(self.rounds) - 1)][:k]
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return SearchResult(ids, np.array([r[1] for r in rows], dtype=np.float32))

    def params(self) -> dict:
        return {"nprobe": 4, "ef": 16}

    def __len__(self) -> int:
        return self.size

    def get(self, ids):
        raise AssertionError("payloads were not asked for")


def run(col, **options) -> tuple[list[tuple[int, float]], SearchStreamer]:
    streamer = SearchStreamer(col, np.zeros(2, np.float32), **options)
    rows = [hit[:2] for batch in streamer for hit in batch.hits()]
    return rows, streamer


def test_closer_rows_of_wider_rounds_are_skipped_not_reordered():
    col = Scripted(
        [
            [(1, 0.1), (2, 0.3)],
            [(1, 0.1), (3, 0.2), (2, 0.3), (4, 0.4)],
            [(1, 0.1), (3, 0.2), (2, 0.3), (5, 0.35), (4, 0.4), (6, 0.5)],  # 5 < 0.4: skipped too
        ],
        size=6,
    )
    rows, s = run(col, k=2, nprobe=1, batch_size=1)
    assert [r[0] for r in rows] == [1, 2, 4, 6]
    assert np.all(np.diff([r[1] for r in rows]) >= 0)
    assert s.skipped == 2 and s.end_reason == "exhausted"  # round 3 asked 8, got 6 at full width
    assert [c["k"] for c in col.calls] == [2, 4, 8, 8]
    assert [c["nprobe"] for c in col.calls] == [1, 2, 4, 1_000_000]  # short at partial width: all buckets


def test_first_round_uses_collection_defaults_then_widens_from_them():
    col = Scripted([[(i, i / 10) for i in range(100)]])
    run(col, k=5, limit=12)
    assert col.calls[0] == {"k": 5, "nprobe": None, "ef": None}  # exactly a plain search
    assert col.calls[1] == {"k": 10, "nprobe": 8, "ef": 32} and col.calls[2]["k"] == 20


@pytest.mark.parametrize(
    "options,expected_ids,reason",
    [
        ({"limit": 7}, list(range(7)), "limit"),
        ({"max_distance": 0.45}, list(range(5)), "max_distance"),
        ({"max_k": 16}, list(range(16)), "max_k"),
    ],
)
def test_end_reasons(options, expected_ids, reason):
    col = Scripted([[(i, i / 10) for i in range(100)]], size=1000)
    rows, s = run(col, k=4, **options)
    assert [r[0] for r in rows] == expected_ids and s.end_reason == reason and s.done


def test_ties_are_kept_and_close_stops_rounds():
    col = Scripted([[(1, 0.5), (2, 0.5)], [(1, 0.5), (2, 0.5), (3, 0.5), (4, 0.6)]], size=100)
    s = SearchStreamer(col, np.zeros(2, np.float32), k=2, batch_size=2)
    assert s.next_batch().ids.tolist() == [1, 2]
    assert s.next_batch().ids.tolist() == [3, 4]  # an equal distance is still in order
    s.close()
    batch = s.next_batch()
    assert batch.done and batch.end_reason == "closed" and len(col.calls) == 2


def test_bad_options():
    col = Scripted([[(1, 0.1)]])
    for options in ({"batch_size": 0.5}, {"k": -3}, {"limit": -1}, {"nprobe": 0}, {"max_distance": float("nan")}):
        with pytest.raises(InvalidArgumentError):
            SearchStreamer(col, np.zeros(2, np.float32), **options)
