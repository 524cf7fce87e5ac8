"""wal/records.py: record type constants and body codecs round trip; malformed bodies are corruption."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from drift_engine.errors import CorruptionError, InvalidArgumentError
from drift_engine.wal import records as R


def test_type_constants() -> None:
    assert (R.UPSERT, R.DELETE, R.CREATE, R.DROP, R.PARAMS) == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("replace", [False, True])
def test_upsert_round_trip_batch(replace: bool) -> None:
    rng = np.random.default_rng(0)
    n, d = 1000, 50
    ids = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64)
    ids[:3] = [-1, 0, np.iinfo(np.int64).min]
    vecs = rng.standard_normal((n, d)).astype(np.float32)
    payloads: list[bytes | None] = [[None, b"", b'{"k":%d}' % i][i % 3] for i in range(n)]
    body = R.encode_upsert(ids, vecs, payloads, replace)
    ids2, vecs2, payloads2, replace2 = R.decode_upsert(body)
    assert ids2.dtype == np.int64 and vecs2.dtype == np.float32 and vecs2.shape == (n, d)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(vecs2, vecs)
    assert payloads2 == payloads
    assert payloads2[0] is None and payloads2[1] == b""
    assert replace2 is replace
    assert ids2.flags.writeable and vecs2.flags.writeable  # owned copies, not views of the body


def test_upsert_single_and_empty_and_dtype_coercion() -> None:
    body = R.encode_upsert(np.array([-7]), np.array([[1.5, -2.0, 3.25]], dtype=np.float64), [b"p"], False)
    ids, vecs, payloads, replace = R.decode_upsert(body)
    assert ids.tolist() == [-7] and vecs.tolist() == [[1.5, -2.0, 3.25]]
    assert payloads == [b"p"] and not replace
    empty = R.encode_upsert(np.zeros(0, np.int64), np.zeros((0, 4)), [], True)
    ids, vecs, payloads, replace = R.decode_upsert(empty)
    assert ids.shape == (0,) and vecs.shape == (0, 4) and payloads == [] and replace
    # Non-contiguous / big-endian inputs are encoded by value.
    v = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    _, vecs, _, _ = R.decode_upsert(R.encode_upsert(np.array([1, 2, 3], dtype=">i8"), v, [None] * 3, False))
    np.testing.assert_array_equal(vecs, v.astype(np.float32))


def test_upsert_bad_input() -> None:
    v = np.zeros((2, 3), np.float32)
    with pytest.raises(InvalidArgumentError):
        R.encode_upsert(np.array([1, 2, 3]), v, [None, None], False)  # ids/vectors count
    with pytest.raises(InvalidArgumentError):
        R.encode_upsert(np.array([1, 2]), v, [None], False)  # payload count
    with pytest.raises(InvalidArgumentError):
        R.encode_upsert(np.array([1, 2]), np.zeros(6, np.float32), [None, None], False)  # not 2-D
    with pytest.raises(InvalidArgumentError):
        R.encode_upsert(np.array([1.0, 2.0]), v, [None, None], False)  # float ids
    with pytest.raises(InvalidArgumentError):
        R.encode_upsert(np.array([1, 2]), v, ["str", None], False)  # type: ignore[list-item]


def test_upsert_malformed_bodies() -> None:
    good = R.encode_upsert(np.array([1, 2]), np.ones((2, 3), np.float32), [b"ab", None], True)
    R.decode_upsert(good)
    for bad in (
        b"",
        good[:5],  # shorter than the head
        good[:-1],  # payload bytes missing
        good + b"x",  # trailing garbage
        good[:-2],
        bytes([9]) + good[1:],  # unknown version
        good[:1] + bytes([0x80]) + good[2:],  # unknown flag
        good[:2] + struct.pack("<I", 1000) + good[6:],  # n too large for the body
        good[:6] + struct.pack("<I", 0xFFFFFF) + good[10:],  # d too large for the body
    ):
        with pytest.raises(CorruptionError):
            R.decode_upsert(bad)


def test_delete_round_trip_and_malformed() -> None:
    ids = np.array([5, -5, 0, np.iinfo(np.int64).max, np.iinfo(np.int64).min], dtype=np.int64)
    out = R.decode_delete(R.encode_delete(ids))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, ids)
    assert R.decode_delete(R.encode_delete(np.zeros(0, np.int64))).shape == (0,)
    good = R.encode_delete(ids)
    for bad in (b"", good[:3], good[:-1], good + b"\0", bytes([2]) + good[1:]):
        with pytest.raises(CorruptionError):
            R.decode_delete(bad)
    with pytest.raises(InvalidArgumentError):
        R.encode_delete(np.array([[1, 2]]))


def test_json_round_trip_and_malformed() -> None:
    obj = {"name": "items", "dim": 50, "metric": "l2", "params": {"lambda": 0.3, "tau": 200}, "ü": [1, None]}
    assert R.decode_json(R.encode_json(obj)) == obj
    assert R.decode_json(R.encode_json({})) == {}
    good = R.encode_json(obj)
    for bad in (b"", bytes([7]) + good[1:], good[:-1], b"\x01[1, 2]", b"\x01\xff\xfe", b"\x01NaN"):
        with pytest.raises(CorruptionError):
            R.decode_json(bad)
    with pytest.raises(InvalidArgumentError):
        R.encode_json([1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        R.encode_json({"x": float("nan")})
    with pytest.raises(InvalidArgumentError):
        R.encode_json({"x": object()})
