"""Exact float32 distances with pgvector semantics (l2 = Euclidean, ip = -dot, cosine = 1 - dot of unit
vectors): the re-rank step after an ADC scan and the brute force of untrained collections and memtables.

Contract: ``exact_distances(metric, query, vectors)`` to every row, ``rerank(metric, query, vectors, rows)``
to ``vectors[rows]`` in ``rows`` order; both validate first (unknown metric, shapes, dtypes, dimension, rows
out of range raise ``InvalidArgumentError`` / ``DimensionMismatchError``). ``_exact_rows`` is the numba kernel
itself, for compiled callers (``engine.fastsearch``): -1 on success, else the index of the first bad row.
Kernels take read-only float32 inputs (one compiled version for disk-backed and fresh arrays), ``nogil``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

from drift_engine.config import METRICS
from drift_engine.errors import DimensionMismatchError, InvalidArgumentError

_METRIC_CODE = {"l2": 0, "ip": 1, "cosine": 2}  # the kernels' metric codes (ADC's prepare_query uses them too)
_F32 = types.Array(types.float32, 1, "C")
_RO_F32 = types.Array(types.float32, 1, "C", readonly=True)
_RO_F32_2D = types.Array(types.float32, 2, "C", readonly=True)
_RO_I64 = types.Array(types.int64, 1, "C", readonly=True)


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _exact_one(code, q, v):
    d = q.shape[0]
    if code == 0:
        acc = np.float32(0.0)
        for j in range(d):
            t = q[j] - v[j]
            acc += t * t
        return np.float32(np.sqrt(acc))
    acc = np.float32(0.0)
    for j in range(d):
        acc += q[j] * v[j]
    if code == 1:
        return -acc
    return np.float32(1.0) - acc


@njit(types.void(types.int64, _RO_F32, _RO_F32_2D, _F32), nogil=True, fastmath=True, cache=True)
def _exact_all(code, q, vectors, out):
    for i in range(vectors.shape[0]):
        out[i] = _exact_one(code, q, vectors[i])


@njit(types.int64(types.int64, _RO_F32, _RO_F32_2D, _RO_I64, _F32), nogil=True, fastmath=True, cache=True)
def _exact_rows(code, q, vectors, rows, out):
    """Exact distances of vectors[rows]; returns -1 on success or the index of the first bad row."""
    n = vectors.shape[0]
    for i in range(rows.shape[0]):
        row = rows[i]
        if row < 0 or row >= n:
            return i
        out[i] = _exact_one(code, q, vectors[row])
    return -1


def _check_exact_args(metric: str, query: np.ndarray, vectors: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    code = _METRIC_CODE.get(metric)
    if code is None:
        raise InvalidArgumentError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    q = np.ascontiguousarray(query, dtype=np.float32)
    if q.ndim != 1:
        raise InvalidArgumentError(f"query must be 1-d, got shape {q.shape}")
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise InvalidArgumentError(
            f"vectors must be a float32 (n_rows, d) array, got {vectors.dtype} shape {vectors.shape}"
        )
    if vectors.shape[1] != q.shape[0]:
        raise DimensionMismatchError(f"vectors have dimension {vectors.shape[1]}, query has {q.shape[0]}")
    return code, q, np.ascontiguousarray(vectors)


def exact_distances(metric: str, query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Exact float32 distances (pgvector semantics) from ``query`` to every row of ``vectors``."""
    code, q, vectors = _check_exact_args(metric, query, vectors)
    out = np.empty(vectors.shape[0], dtype=np.float32)
    _exact_all(code, q, vectors, out)
    return out


def rerank(metric: str, query: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact float32 distances (pgvector semantics) from ``query`` to ``vectors[rows]``, in ``rows`` order."""
    code, q, vectors = _check_exact_args(metric, query, vectors)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if rows.ndim != 1:
        raise InvalidArgumentError(f"rows must be 1-d, got shape {rows.shape}")
    out = np.empty(rows.shape[0], dtype=np.float32)
    bad = _exact_rows(code, q, vectors, rows, out)
    if bad >= 0:
        raise InvalidArgumentError(f"row {int(rows[bad])} is outside the {vectors.shape[0]}-row vector block")
    return out
