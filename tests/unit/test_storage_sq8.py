"""sq8.py: training, encode/decode accuracy, clamping, serialisation, validation, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from drift_engine.errors import CorruptionError, DimensionMismatchError, InvalidArgumentError
from drift_engine.storage.sq8 import SQ8Params, decode, encode, train_sq8


@pytest.fixture
def sample() -> np.ndarray:
    rng = np.random.default_rng(3)
    scales = np.array([0.01, 1.0, 100.0, 5.0, 1e4, 0.5], dtype=np.float32)
    offsets = np.array([0.0, -3.0, 50.0, 1000.0, -2e4, 7.0], dtype=np.float32)
    return (rng.standard_normal((5000, 6)) * scales + offsets).astype(np.float32)


def test_train_uses_clipped_percentiles(sample: np.ndarray) -> None:
    p = train_sq8(sample, clip_percentile=1.0)
    lo = np.percentile(sample, 1.0, axis=0)
    hi = np.percentile(sample, 99.0, axis=0)
    np.testing.assert_allclose(p.mins, lo, rtol=1e-6)
    np.testing.assert_allclose(p.scales, (hi - lo) / 255, rtol=1e-5)
    assert p.mins.dtype == np.float32 and p.scales.dtype == np.float32 and p.dim == 6
    assert np.all(p.scales > 0)
    # an outlier does not stretch the range when clipping, but does with clip 0
    with_outlier = np.vstack([sample, np.full((1, 6), 1e6, dtype=np.float32)])
    assert np.all(train_sq8(with_outlier, 1.0).scales < 1e6 / 255 / 2)
    assert np.all(train_sq8(with_outlier, 0.0).scales > 1e6 / 255 / 2)


def test_round_trip_error_is_at_most_half_a_step(sample: np.ndarray) -> None:
    p = train_sq8(sample, clip_percentile=0.5)
    x = sample
    codes = encode(p, x)
    assert codes.dtype == np.uint8 and codes.shape == x.shape and codes.flags.c_contiguous
    back = decode(p, codes)
    assert back.dtype == np.float32 and back.shape == x.shape
    top = p.mins + 255 * p.scales
    in_range = (x >= p.mins) & (x <= top)
    assert in_range.mean() > 0.98
    err = np.abs(back.astype(np.float64) - x)
    eps = 4 * np.spacing(np.maximum(np.abs(x), np.abs(top)).astype(np.float32)).astype(np.float64)
    bound = p.scales.astype(np.float64) / 2 + eps
    assert np.all(err[in_range] <= np.broadcast_to(bound, x.shape)[in_range])
    # the bound is tight-ish: errors really do reach close to half a step
    assert np.max(err[in_range] / np.broadcast_to(p.scales, x.shape)[in_range]) > 0.45


def test_encode_matches_the_reference_formula(sample: np.ndarray) -> None:
    p = train_sq8(sample)
    x = sample[:777]
    ref = np.clip(np.rint((x - p.mins) / p.scales), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(encode(p, x), ref)
    np.testing.assert_array_equal(encode(p, x[5]), ref[5])  # a single (d,) vector
    np.testing.assert_array_equal(encode(p, x.astype(np.float64)), ref)
    np.testing.assert_array_equal(decode(p, ref), p.mins + p.scales * ref.astype(np.float32))


def test_out_of_range_values_clamp() -> None:
    p = SQ8Params(mins=np.array([0.0, -1.0], np.float32), scales=np.array([1.0, 0.01], np.float32))
    x = np.array([[-5.0, -100.0], [1e9, 100.0], [-np.inf, np.inf], [3.2, -0.5]], dtype=np.float32)
    np.testing.assert_array_equal(encode(p, x), [[0, 0], [255, 255], [0, 255], [3, 50]])
    np.testing.assert_allclose(decode(p, encode(p, x))[1], [255.0, -1.0 + 2.55], rtol=1e-6)


def test_constant_dimension() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 3)).astype(np.float32)
    x[:, 1] = 42.5
    x[:, 2] = 0.0
    p = train_sq8(x)
    assert np.all(p.scales > 0) and np.all(np.isfinite(p.scales))
    assert p.scales[1] < 1e-4 and p.scales[2] < 1e-6
    back = decode(p, encode(p, x))
    assert np.all(back[:, 1] == np.float32(42.5)) and np.all(back[:, 2] == 0.0)
    # a later value slightly off the constant still decodes close to it
    y = np.array([[0.0, 42.6, -0.001]], dtype=np.float32)
    assert abs(decode(p, encode(p, y))[0, 1] - 42.5) < 0.01


def test_bytes_round_trip(sample: np.ndarray) -> None:
    p = train_sq8(sample)
    raw = p.to_bytes()
    assert isinstance(raw, bytes) and len(raw) == 8 * 6
    q = SQ8Params.from_bytes(raw, 6)
    assert q == p
    np.testing.assert_array_equal(q.mins, p.mins)
    np.testing.assert_array_equal(q.scales, p.scales)
    assert q != SQ8Params(mins=p.mins + 1, scales=p.scales)
    with pytest.raises(CorruptionError, match="expected 48 bytes for dim 6, got 47"):
        SQ8Params.from_bytes(raw[:-1], 6)
    with pytest.raises(CorruptionError, match="expected 40 bytes"):
        SQ8Params.from_bytes(raw, 5)
    zero_scale = p.mins.astype("<f4").tobytes() + np.zeros(6, "<f4").tobytes()
    with pytest.raises(CorruptionError, match="scales must be finite and > 0"):
        SQ8Params.from_bytes(zero_scale, 6)


def test_params_are_immutable(sample: np.ndarray) -> None:
    src_mins = np.zeros(2, np.float32)
    p = SQ8Params(mins=src_mins, scales=np.ones(2, np.float32))
    src_mins[0] = 5.0  # the params hold their own copy
    assert p.mins[0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        p.mins[0] = 1.0


@pytest.mark.parametrize(
    ("sample", "clip", "match"),
    [
        (np.array([[0.0, np.nan]], np.float32), 0.1, "NaN or Inf"),
        (np.array([[0.0, np.inf]], np.float32), 0.1, "NaN or Inf"),
        (np.zeros((0, 4), np.float32), 0.1, "non-empty"),
        (np.zeros((4, 0), np.float32), 0.1, "non-empty"),
        (np.zeros(4, np.float32), 0.1, r"\(n, d\)"),
        (np.zeros((4, 4), np.float32), -0.1, r"\[0, 50\)"),
        (np.zeros((4, 4), np.float32), 50.0, r"\[0, 50\)"),
        (np.zeros((4, 4), np.float32), float("nan"), r"\[0, 50\)"),
        (np.zeros((4, 4), np.float32), "x", "number"),
        (np.array([["a"]]), 0.1, "numeric"),
    ],
)
def test_train_refuses_bad_input(sample, clip, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        train_sq8(sample, clip)


def test_encode_decode_refuse_bad_shapes() -> None:
    p = SQ8Params(mins=np.zeros(4, np.float32), scales=np.ones(4, np.float32))
    with pytest.raises(DimensionMismatchError, match=r"expected shape \(n, 4\), got \(2, 3\)"):
        encode(p, np.zeros((2, 3), np.float32))
    with pytest.raises(DimensionMismatchError):
        decode(p, np.zeros((2, 5), np.uint8))
    with pytest.raises(InvalidArgumentError, match="uint8"):
        decode(p, np.zeros((2, 4), np.int32))
    with pytest.raises(InvalidArgumentError, match="float"):
        encode(p, np.zeros((2, 4), np.int32))
    with pytest.raises(InvalidArgumentError):
        SQ8Params(mins=np.zeros(4, np.float32), scales=np.array([1, 1, 0, 1], np.float32))
    assert encode(p, np.zeros((0, 4), np.float32)).shape == (0, 4)


def test_encode_is_fast() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((390_000, 50), dtype=np.float32)
    p = train_sq8(x[:10_000])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        codes = encode(p, x)
        best = min(best, time.perf_counter() - start)
    assert codes.shape == x.shape
    assert best < 0.5, f"encode of 390k x 50 took {best:.3f} s"
