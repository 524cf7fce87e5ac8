"""Input validation for the public API.

Contract: every function here either returns a clean, owned value (C-contiguous float32 vectors, int64
ids, JSON-object payloads, normalised for cosine) or raises an ``InvalidArgumentError`` subclass that
says what is wrong and where (row number, id). Nothing is written before validation passes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from drift_engine.config import MAX_BATCH, MAX_K
from drift_engine.errors import (
    DimensionMismatchError,
    InvalidArgumentError,
    InvalidFilterError,
    InvalidParameterError,
    InvalidPayloadError,
    InvalidVectorError,
    RequestTooLargeError,
)

_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def as_ids(ids: Any, *, allow_duplicates: bool = False) -> np.ndarray:
    """int64 ids (1-d); refuses non-integers, out-of-range values and duplicates within one call."""
    if isinstance(ids, int | np.integer) and not isinstance(ids, bool):
        ids = [ids]
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentError(f"ids must be a sequence of integers: {exc}") from None
    if arr.ndim != 1:
        raise InvalidArgumentError(f"ids must be one-dimensional, got shape {arr.shape}")
    if arr.size > MAX_BATCH:
        raise RequestTooLargeError(f"{arr.size} ids in one call; the limit is {MAX_BATCH}")
    if arr.size and arr.dtype == object:
        try:
            values = [int(v) for v in arr]
        except (TypeError, ValueError):
            raise InvalidArgumentError("ids must be integers") from None
        if any(isinstance(v, bool) for v in arr) or any(not (_I64_MIN <= v <= _I64_MAX) for v in values):
            raise InvalidArgumentError("ids must be int64 integers (booleans and out-of-range values refused)")
        arr = np.asarray(values, dtype=np.int64)
    elif arr.size and arr.dtype.kind == "u":
        if int(arr.max()) > _I64_MAX:
            raise InvalidArgumentError("ids must fit in int64")
        arr = arr.astype(np.int64)
    elif arr.size and arr.dtype.kind == "b":
        raise InvalidArgumentError("ids must be integers, got booleans")
    elif arr.size and arr.dtype.kind != "i":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            if np.any(np.abs(arr) >= 2.0**63):
                raise InvalidArgumentError("ids must fit in int64")
            arr = arr.astype(np.int64)
        else:
            raise InvalidArgumentError(f"ids must be integers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if not allow_duplicates and arr.size > 1:
        uniq = np.unique(arr)
        if uniq.size != arr.size:
            sorted_ids = np.sort(arr)
            dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0]
            raise InvalidArgumentError(f"id {int(dup)} appears more than once in one call")
    return arr


def as_vectors(vectors: Any, dim: int, metric: str, *, n_expected: int | None = None) -> np.ndarray:
    """(n, dim) C-contiguous float32, finite, non-empty; unit-normalised for cosine (zero vector refused)."""
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidVectorError(f"vectors must be numeric arrays: {exc}") from None
    if arr.ndim == 1:
        arr = arr.reshape(1, -1) if arr.size else arr.reshape(0, 0)
    if arr.ndim != 2:
        raise InvalidVectorError(f"vectors must be 2-dimensional (n, dim), got shape {arr.shape}")
    if arr.shape[0] > MAX_BATCH:
        raise RequestTooLargeError(f"{arr.shape[0]} vectors in one call; the limit is {MAX_BATCH}")
    if n_expected is not None and arr.shape[0] != n_expected:
        raise InvalidArgumentError(f"{n_expected} ids but {arr.shape[0]} vectors")
    if arr.shape[0] and arr.shape[1] == 0:
        raise InvalidVectorError("empty vector (dimension 0)")
    if arr.shape[0] and arr.shape[1] != dim:
        raise DimensionMismatchError(f"vector dimension {arr.shape[1]} does not match the collection's {dim}")
    arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    # a NaN or an infinity makes the sum non-finite; a finite sum is the common, cheap case (a sum that
    # overflows is checked element by element)
    if arr.size and not math.isfinite(float(arr.sum(dtype=np.float64))) and not np.all(np.isfinite(arr)):
        bad_row = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise InvalidVectorError(f"vector at row {bad_row} contains NaN or Inf")
    if metric == "cosine" and arr.shape[0]:
        norms = np.linalg.norm(arr, axis=1)
        if np.any(norms == 0):
            raise InvalidVectorError(f"zero vector at row {int(np.argmin(norms))} has no direction (cosine metric)")
        arr /= norms[:, None]
    return arr


def as_query(query: Any, dim: int, metric: str) -> np.ndarray:
    arr = as_vectors(query, dim, metric)
    if arr.shape[0] != 1:
        raise InvalidVectorError(f"search takes one query vector, got {arr.shape[0]}")
    return arr[0]


def as_payloads(payloads: Any, n: int) -> list[bytes | None]:
    """One JSON-object payload (or None) per row, serialised to compact UTF-8 JSON bytes."""
    if payloads is None:
        return [None] * n
    if isinstance(payloads, dict) or not isinstance(payloads, Sequence):
        raise InvalidPayloadError("payloads must be a list with one dict (or None) per vector")
    if len(payloads) != n:
        raise InvalidPayloadError(f"{n} vectors but {len(payloads)} payloads")
    out: list[bytes | None] = []
    for row, payload in enumerate(payloads):
        if payload is None:
            out.append(None)
            continue
        if not isinstance(payload, dict) or not all(isinstance(k, str) for k in payload):
            raise InvalidPayloadError(f"payload at row {row} must be a JSON object (dict with str keys)")
        try:
            out.append(json.dumps(payload, separators=(",", ":"), allow_nan=False).encode())
        except (TypeError, ValueError) as exc:
            raise InvalidPayloadError(f"payload at row {row} is not JSON-serialisable: {exc}") from None
    return out


def canonical_value(value: Any) -> str:
    """The key under which a payload value is indexed for equality filters."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def as_filter(flt: Any) -> dict[str, str] | None:
    """Equality filter {key: value} -> {key: canonical JSON value}; None/empty means no filter."""
    if flt is None or flt == {}:
        return None
    if not isinstance(flt, dict) or not all(isinstance(k, str) for k in flt):
        raise InvalidFilterError("filter must be a dict {payload_key: value} (equality on every key)")
    out: dict[str, str] = {}
    for key, value in flt.items():
        if isinstance(value, dict | list):
            raise InvalidFilterError(f"filter value for {key!r} must be a scalar (str, number, bool, null)")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidFilterError(f"filter value for {key!r} must be finite")
        out[key] = canonical_value(value)
    return out


def as_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidArgumentError(f"k must be an integer, got {k!r}")
    if not (1 <= int(k) <= MAX_K):
        raise InvalidArgumentError(f"k={k} is out of range [1, {MAX_K}]")
    return int(k)


def as_positive_int(name: str, value: Any, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    if not (1 <= int(value) <= high):
        raise InvalidArgumentError(f"{name}={value} is out of range [1, {high}]")
    return int(value)


def finite_or_none(value: float | None, what: str) -> float | None:
    """``value`` as a float (infinities allowed), or None; NaN and non-numbers are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise InvalidParameterError(f"{what} must be a number, got {value!r}")
    if math.isnan(value):
        raise InvalidParameterError(f"{what} must not be NaN")
    return float(value)
