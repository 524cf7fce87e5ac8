"""index.adc: ADC scan kernels against a numpy brute force over the SQ8-decoded vectors; exact distances."""

from __future__ import annotations

import numpy as np
import pytest

from drift_engine.errors import DimensionMismatchError, InvalidArgumentError
from drift_engine.index import adc

METRICS = ("l2", "ip", "cosine")


def _sq8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mins, scales, codes, decoded) with per-dimension min/max ranges."""
    mins = x.min(axis=0)
    scales = (x.max(axis=0) - mins) / 255.0
    scales[scales == 0] = 1.0
    codes = np.clip(np.rint((x - mins) / scales), 0, 255).astype(np.uint8)
    decoded = mins.astype(np.float64) + scales.astype(np.float64) * codes
    return mins.astype(np.float32), scales.astype(np.float32), codes, decoded


def _data(n: int, d: int, metric: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal(d).astype(np.float32)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q /= np.linalg.norm(q)
    return x, q


def _brute(metric: str, q: np.ndarray, decoded: np.ndarray, rows: np.ndarray) -> np.ndarray:
    v = decoded[rows]
    q64 = q.astype(np.float64)
    if metric == "l2":
        return ((v - q64) ** 2).sum(axis=1)  # the kernels return SQUARED l2
    if metric == "ip":
        return -(v @ q64)
    return 1.0 - v @ q64


def _candidates(starts, counts, skip) -> np.ndarray:
    rows = [np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)]
    out = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return out if skip is None else out[skip[out] == 0]


def _expected(metric, q, decoded, starts, counts, skip, r):
    rows = _candidates(starts, counts, skip)
    dist = _brute(metric, q, decoded, rows)
    order = np.lexsort((rows, dist))[:r]
    return dist[order], rows[order]


def _check(metric, q, mins, scales, codes, decoded, starts, counts, skip, r):
    pq = adc.prepare_query(metric, q, mins, scales)
    got_d, got_rows = adc.scan(pq, codes, np.asarray(starts, np.int64), np.asarray(counts, np.int64), skip, r)
    exp_d, exp_rows = _expected(metric, q, decoded, starts, counts, skip, r)
    assert got_d.dtype == np.float32 and got_rows.dtype == np.int64
    assert got_rows.shape == exp_rows.shape
    tol = 1e-5 * max(1.0, float(np.abs(exp_d).max(initial=0.0)))
    np.testing.assert_allclose(got_d, exp_d, rtol=1e-4, atol=tol)
    assert np.all(np.diff(got_d) >= 0)
    assert len(set(got_rows.tolist())) == got_rows.size
    if not np.array_equal(got_rows, exp_rows):
        # only a float32 near-tie may swap rows: every returned row must be a valid candidate whose
        # exact distance equals the brute-force distance at its rank
        assert np.isin(got_rows, _candidates(starts, counts, skip)).all()
        np.testing.assert_allclose(_brute(metric, q, decoded, got_rows), exp_d, rtol=1e-4, atol=tol)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("d", [1, 3, 16, 50, 128, 130])
def test_scan_matches_brute_force(metric: str, d: int) -> None:
    x, q = _data(700, d, metric, seed=d)
    mins, scales, codes, decoded = _sq8(x)
    rng = np.random.default_rng(100 + d)
    for trial in range(6):
        # disjoint ranges in random order (extents never overlap), some empty
        cuts = np.sort(rng.choice(701, 2 * int(rng.integers(1, 9)), replace=False))
        starts, ends = cuts[0::2], cuts[1::2]
        ends = np.where(rng.random(starts.size) < 0.2, starts, ends)
        perm = rng.permutation(starts.size)
        starts, counts = starts[perm], (ends - starts)[perm]
        skip = (rng.random(700) < 0.25).astype(np.uint8) if trial % 2 else None
        r = int(rng.integers(1, 60))
        _check(metric, q, mins, scales, codes, decoded, starts, counts, skip, r)


@pytest.mark.parametrize("metric", METRICS)
def test_scan_edges(metric: str) -> None:
    x, q = _data(203, 50, metric, seed=7)
    mins, scales, codes, decoded = _sq8(x)
    # r larger than the rows available -> every row, sorted
    _check(metric, q, mins, scales, codes, decoded, [0, 190], [10, 13], None, 1000)
    # the last rows of the block (the unpadded tail path) and the whole block
    _check(metric, q, mins, scales, codes, decoded, [195], [8], None, 5)
    _check(metric, q, mins, scales, codes, decoded, [0], [203], None, 40)
    # empty ranges and no ranges
    _check(metric, q, mins, scales, codes, decoded, [5, 9], [0, 0], None, 10)
    _check(metric, q, mins, scales, codes, decoded, [], [], None, 10)
    # everything skipped
    skip = np.ones(203, dtype=np.uint8)
    _check(metric, q, mins, scales, codes, decoded, [0], [203], skip, 10)
    # a bool mask works like uint8
    bskip = np.zeros(203, dtype=bool)
    bskip[::2] = True
    _check(metric, q, mins, scales, codes, decoded, [0], [203], bskip.view(np.uint8), 30)
    pq = adc.prepare_query(metric, q, mins, scales)
    d1, r1 = adc.scan(pq, codes, np.array([0]), np.array([203]), bskip, 30)
    d2, r2 = adc.scan(pq, codes, np.array([0]), np.array([203]), bskip.view(np.uint8), 30)
    assert np.array_equal(r1, r2) and np.array_equal(d1, d2)
    # r == 0
    d0, r0 = adc.scan(pq, codes, np.array([0]), np.array([203]), None, 0)
    assert d0.shape == (0,) and r0.shape == (0,)


def test_scan_ties_go_to_lower_row_whatever_the_range_order() -> None:
    d = 8
    codes = np.full((40, d), 7, dtype=np.uint8)  # every row identical
    codes[13] = 9
    mins = np.zeros(d, np.float32)
    scales = np.ones(d, np.float32)
    pq = adc.prepare_query("l2", np.full(d, 7.0, np.float32), mins, scales)
    dist, rows = adc.scan(pq, codes, np.array([30, 0, 10]), np.array([10, 10, 10]), None, 5)
    assert rows.tolist() == [0, 1, 2, 3, 4]
    assert np.all(dist == 0)


def test_scan_into_accumulates_across_blocks() -> None:
    x, q = _data(600, 50, "l2", seed=3)
    mins, scales, codes, decoded = _sq8(x)
    top = adc.TopK(25)
    pq = adc.prepare_query("l2", q, mins, scales)
    skip = (np.random.default_rng(0).random(600) < 0.2).astype(np.uint8)
    # two "segments": rows 0..299 and 300..599, stored with distinct offsets
    adc.scan_into(pq, codes[:300], np.array([0]), np.array([300]), skip[:300], top, row_offset=0)
    adc.scan_into(pq, codes[300:], np.array([0]), np.array([300]), skip[300:], top, row_offset=1 << 40)
    got_d, got_rows = top.result()
    rows = np.where(got_rows >= 1 << 40, got_rows - (1 << 40) + 300, got_rows)
    exp_d, exp_rows = _expected("l2", q, decoded, [0], [600], skip, 25)
    assert np.array_equal(rows, exp_rows)
    np.testing.assert_allclose(got_d, exp_d, rtol=1e-4, atol=1e-4)
    assert len(top) == 25
    assert np.array_equal(top.result()[1], got_rows)  # result() leaves the heap usable


def test_prepare_query_formulas_and_zero_scale() -> None:
    rng = np.random.default_rng(5)
    q = rng.standard_normal(6).astype(np.float32)
    mins = rng.standard_normal(6).astype(np.float32)
    scales = rng.random(6).astype(np.float32) + 0.1
    scales[2] = 0.0  # a constant dimension
    codes = rng.integers(0, 256, (20, 6)).astype(np.uint8)
    decoded = mins.astype(np.float64) + scales.astype(np.float64) * codes
    pq = adc.prepare_query("l2", q, mins, scales)
    assert pq.kind == adc.KIND_L2 and np.isfinite(pq.a).all()
    dist, rows = adc.scan(pq, codes, np.array([0]), np.array([20]), None, 20)
    exp = ((decoded - q) ** 2).sum(axis=1)
    np.testing.assert_allclose(dist, exp[rows], rtol=1e-4, atol=1e-5)
    pq_ip = adc.prepare_query("ip", q, mins, scales)
    assert pq_ip.kind == adc.KIND_DOT
    np.testing.assert_allclose(pq_ip.const, -float(q.astype(np.float64) @ mins), rtol=1e-6)
    np.testing.assert_allclose(pq_ip.a, -q * scales, rtol=1e-6)
    pq_cos = adc.prepare_query("cosine", q, mins, scales)
    np.testing.assert_allclose(pq_cos.const, 1.0 - float(q.astype(np.float64) @ mins), rtol=1e-6)


def test_bad_arguments_are_refused() -> None:
    x, q = _data(50, 8, "l2", seed=1)
    mins, scales, codes, _ = _sq8(x)
    with pytest.raises(InvalidArgumentError):
        adc.prepare_query("hamming", q, mins, scales)
    with pytest.raises(DimensionMismatchError):
        adc.prepare_query("l2", q[:7], mins, scales)
    with pytest.raises(InvalidArgumentError):
        adc.prepare_query("l2", np.full(8, np.nan, np.float32), mins, scales)
    pq = adc.prepare_query("l2", q, mins, scales)
    one, fifty = np.array([0]), np.array([50])
    with pytest.raises(InvalidArgumentError, match="outside"):
        adc.scan(pq, codes, np.array([10]), np.array([41]), None, 5)
    with pytest.raises(InvalidArgumentError, match="outside"):
        adc.scan(pq, codes, np.array([-1]), np.array([3]), None, 5)
    with pytest.raises(InvalidArgumentError):
        adc.scan(pq, codes, one, fifty, np.zeros(49, np.uint8), 5)
    with pytest.raises(InvalidArgumentError):
        adc.scan(pq, codes, one, fifty, None, -1)
    with pytest.raises(InvalidArgumentError):
        adc.scan(pq, codes.astype(np.int16), one, fifty, None, 5)
    with pytest.raises(InvalidArgumentError):
        adc.scan(pq, np.asfortranarray(codes), one, fifty, None, 5)
    with pytest.raises(DimensionMismatchError):
        adc.scan(pq, codes[:, :7].copy(), one, fifty, None, 5)


@pytest.mark.parametrize("metric", METRICS)
def test_exact_distances_and_rerank_match_numpy(metric: str) -> None:
    x, q = _data(300, 37, metric, seed=11)
    q64 = q.astype(np.float64)
    x64 = x.astype(np.float64)
    if metric == "l2":
        exp = np.sqrt(((x64 - q64) ** 2).sum(axis=1))
    elif metric == "ip":
        exp = -(x64 @ q64)
    else:
        exp = 1.0 - x64 @ q64
    got = adc.exact_distances(metric, q, x)
    assert got.dtype == np.float32 and got.shape == (300,)
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5)
    rows = np.array([299, 0, 17, 17, 150], dtype=np.int64)
    got_r = adc.rerank(metric, q, x, rows)
    np.testing.assert_allclose(got_r, exp[rows], rtol=1e-5, atol=1e-5)
    assert adc.rerank(metric, q, x, np.zeros(0, np.int64)).shape == (0,)
    ro = x.copy()
    ro.flags.writeable = False  # blocks read from disk are often read-only
    np.testing.assert_array_equal(adc.rerank(metric, q, ro, rows), got_r)


def test_rerank_refuses_out_of_range_rows() -> None:
    x, q = _data(10, 4, "l2", seed=2)
    with pytest.raises(InvalidArgumentError, match="outside"):
        adc.rerank("l2", q, x, np.array([3, 10]))
    with pytest.raises(InvalidArgumentError, match="outside"):
        adc.rerank("l2", q, x, np.array([-1]))
    with pytest.raises(DimensionMismatchError):
        adc.exact_distances("l2", q[:3], x)
    with pytest.raises(InvalidArgumentError):
        adc.exact_distances("l2", q, x.astype(np.float64))


def test_warmup_and_throughput_helper() -> None:
    adc.warmup()
    codes = np.random.default_rng(0).integers(0, 256, (2000, 24), dtype=np.uint8)
    for metric in METRICS:
        bps = adc.adc_throughput(codes, 3, metric=metric)
        assert np.isfinite(bps) and bps > 1e6
