"""`python -m drift_engine.demo` runs end to end on the small bigann-10k set (a smoke test of the API)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drift_engine.datasets import DatasetNotFoundError, find_dataset


def test_demo_runs_on_bigann(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        find_dataset("bigann-10k", build=False)
    except DatasetNotFoundError as exc:
        pytest.skip(f"shared datasets not available: {exc}")
    from drift_engine.demo import main

    assert main(["--dataset", "bigann-10k", "--data", str(tmp_path / "data"), "--queries", "50"]) == 0
    out = capsys.readouterr().out
    assert "recall@10" in out and "search_batch of 50" in out
    assert "payloads all match: True" in out
    assert "found ids [0, 4750, 9499]" in out
