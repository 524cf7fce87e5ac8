"""`python -m drift_engine.demo` runs end to end on the small bigann-10k set, through SQL."""

from __future__ import annotations

import pytest

from drift_engine.datasets import DatasetNotFoundError, find_dataset

pytestmark = pytest.mark.pg


def test_demo_runs_on_bigann(pg_cluster, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        find_dataset("bigann-10k", build=False)
    except DatasetNotFoundError as exc:
        pytest.skip(f"shared datasets not available: {exc}")
    from drift_engine.demo import main

    assert main(["--dataset", "bigann-10k", "--queries", "40"]) == 0
    out = capsys.readouterr().out
    assert "recall@10" in out and "40 kNN queries" in out
    assert "returned exactly 10 rows" in out
    assert "(3 rows)" in out  # the point lookup finds 3 of its 4 ids
    assert ("through the foreign table" in out) != ("NOT installed" in out)
    if "through the foreign table" in out:  # the FDW path: EXPLAIN, a rolled-back and a committed transaction
        assert "drift pushed down: filter tag" in out
        assert "(after ROLLBACK: as expected)" in out and "(after COMMIT: as expected)" in out
    if "vector(n) columns" in out:  # pgvector installed: its HNSW index over the same rows, side by side
        assert "pgvector HNSW (ef_search" in out
