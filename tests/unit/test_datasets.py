"""drift_engine.datasets: lookup order, dtypes and shapes on the small shared bigann-10k set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drift_engine import datasets
from drift_engine.datasets import DatasetNotFoundError, find_dataset, load_dataset, recall_at_k


def _bigann_or_skip() -> Path:
    try:
        return find_dataset("bigann-10k", build=False)
    except DatasetNotFoundError as exc:
        pytest.skip(f"shared datasets not available: {exc}")


def test_load_bigann_10k() -> None:
    _bigann_or_skip()
    ds = load_dataset("bigann-10k")
    assert ds.name == "bigann-10k"
    assert (ds.n, ds.dim, ds.nq) == (9500, 128, 500)
    assert ds.base.dtype == np.float32 and ds.queries.dtype == np.float32  # stored as uint8
    assert ds.base.flags.c_contiguous and ds.queries.flags.c_contiguous
    assert ds.gt.dtype == np.int32 and ds.gt.shape == (500, 100)
    assert ds.gt_dist.dtype == np.float32 and ds.gt_dist.shape == (500, 100)
    assert ds.gt.min() >= 0 and ds.gt.max() < ds.n
    assert ds.labels is None and ds.query_labels is None
    assert ds.meta["d"] == 128
    # ground truth is exact: recompute the first query's neighbours by brute force
    d = np.linalg.norm(ds.base.astype(np.float64) - ds.queries[0].astype(np.float64), axis=1)
    order = np.lexsort((np.arange(ds.n), d))[:100]
    np.testing.assert_array_equal(order, ds.gt[0])
    np.testing.assert_allclose(d[order], ds.gt_dist[0], rtol=1e-5)
    assert recall_at_k(ds.gt, ds.gt, 10) == 1.0


def test_env_override_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _bigann_or_skip()
    monkeypatch.setenv("DRIFT_SHARED_DATASETS", str(folder.parent))
    assert datasets.dataset_roots()[0] == folder.parent
    assert find_dataset("bigann-10k") == folder.parent / "bigann-10k"
    assert load_dataset(str(folder)).n == 9500  # a path is accepted too


def test_missing_dataset_names_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRIFT_DATASETS", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError) as info:
        find_dataset("no-such-set")
    message = str(info.value)
    assert "no-such-set" in message
    assert str(tmp_path / "cache" / "no-such-set") in message


def test_recall_at_k_ignores_padding() -> None:
    gt = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 9, -1], [4, 5, 6]])
    assert recall_at_k(found, gt, 3) == pytest.approx(4 / 6)
