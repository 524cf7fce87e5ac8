"""Asymmetric distance computation (ADC) over SQ8 codes (exact re-ranking is ``index/exact.py``, re-exported here).

Contract
--------
* Metrics follow pgvector: ``l2`` = Euclidean distance, ``ip`` = −dot, ``cosine`` = 1 − cos.  For cosine the
  caller has already unit-normalised the stored vectors and the query, so cosine = 1 − q·x.
* SQ8 decoding is ``x̂_j = mins_j + scales_j * code_j``.  ``prepare_query`` folds the query and the SQ8
  parameters into a ``PreparedQuery`` so that, per row, the kernels compute (``c`` = the row's codes)

  - ``KIND_L2``:  ``const + Σ_j w_j (a_j − c_j)²``  with ``a = (q − min)/scale``, ``w = scale²``
    — the **squared** L2 distance between ``q`` and ``x̂`` (``const`` is 0 unless some scale is 0);
  - ``KIND_DOT``: ``const + Σ_j a_j c_j`` with ``a = −q·scale`` and ``const = −q·min`` (ip: ``= −q·x̂``) or
    ``const = 1 − q·min`` (cosine: ``= 1 − q·x̂``).

  The l2 kernel evaluates the sum in the expanded form ``Σ (w c − 2 w a) c + Σ w a²`` (two FMAs per code
  instead of three operations); the float32 rounding this adds is far below the SQ8 quantisation error
  (a near-duplicate's approximate squared distance may come out slightly negative).
* ``scan`` returns the ``r`` smallest approximate distances of the rows in the given ranges, sorted by
  (distance, row) ascending, so ties go to the lower row.  Rows whose ``skip`` byte is non-zero (deleted or
  filtered out) are never returned.  ``scan_into`` accumulates into a ``TopK`` across several calls (e.g.
  several segments) with a caller-chosen ``row_offset`` added to every row it stores.  Ranges must not
  overlap (a row in two ranges would be reported twice); they may come in any order.
* ``exact_distances`` / ``rerank`` (from ``index/exact.py``) return exact float32 distances with pgvector
  semantics (l2 is the square root), ``rerank`` gathering ``vectors[rows]`` inside the kernel (no copy).
* Every kernel is ``@njit(nogil=True, fastmath=True, cache=True)`` with an explicit signature whose inputs
  are read-only arrays (writable ones convert), so one compiled version serves fresh and disk-backed blocks
  and compilation happens once, at import (from numba's on-disk cache after the first run).  Kernels
  release the GIL, so scans run in parallel in a thread pool.  The functions hold no state; ``TopK``
  (``index.topk``) is mutable and not thread-safe.
* Bad arguments (unknown metric, wrong shapes or dtypes, out-of-range rows or ranges, negative ``r``)
  raise ``InvalidArgumentError`` / ``DimensionMismatchError`` and no result is returned (``scan_into``
  may already have offered the rows of earlier, valid ranges to its ``TopK``).

Kernel layout (measured single-threaded on this machine's Xeon, glove 50-d): rows are processed four at a
time so that four independent accumulators hide FMA latency; each row's codes are read with the dimension
padded up to a multiple of 16 (zero weights past ``d``) — the read runs into the next row's codes, which
the zero weights cancel, and the last rows of a block, where that read would leave the array, take an
unpadded loop.  While a range is scanned, the next range is software-prefetched (256 bytes per 4-row
block; ~12 % faster on ranges scattered over a block larger than L2).  The skip byte is only read for
rows that would enter the heap.  Folding helpers into ``inline="always"`` functions was measured ~1.5x
slower (the loop stops vectorising), hence the repeated code in the two scan kernels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from drift_engine.config import METRICS
from drift_engine.errors import DimensionMismatchError, InvalidArgumentError
from drift_engine.index.exact import _METRIC_CODE, exact_distances, rerank
from drift_engine.index.topk import TopK, heap_offer, heap_sort

__all__ = [  # exact_distances / rerank (and _exact_rows for the compiled search) live in index/exact.py
    "KIND_DOT",
    "KIND_L2",
    "METRICS",
    "PreparedQuery",
    "TopK",
    "adc_throughput",
    "exact_distances",
    "prepare_query",
    "rerank",
    "scan",
    "scan_into",
    "warmup",
]

KIND_L2 = 0
KIND_DOT = 1


_PAD = 16  # codes per row are read in multiples of this many bytes (see module docstring)
_PREFETCH_STEP = 256  # bytes of the next range prefetched per 4-row block (measured best of 128..1024)
_PREFETCH_NAME = "llvm.prefetch.p0" if llvm_binding.llvm_version_info >= (15,) else "llvm.prefetch.p0i8"
_EMPTY_SKIP = np.zeros(0, dtype=np.uint8)

# Explicit kernel signatures: inputs are typed read-only (a writable array converts to it), so blocks read
# from disk (read-only buffers) and fresh arrays share one compiled kernel instead of one per combination.
_F32 = types.Array(types.float32, 1, "C")
_I64 = types.Array(types.int64, 1, "C")
_RO_F32 = types.Array(types.float32, 1, "C", readonly=True)
_RO_F32_2D = types.Array(types.float32, 2, "C", readonly=True)
_RO_I64 = types.Array(types.int64, 1, "C", readonly=True)
_RO_U8 = types.Array(types.uint8, 1, "C", readonly=True)
_RO_U8_2D = types.Array(types.uint8, 2, "C", readonly=True)
_HEAP = (_F32, _I64, _I64, types.int64, types.boolean)  # hd, hr, size_arr, row_offset, finish
_SCAN_BLOCK = (_RO_U8_2D, _RO_I64, _RO_I64, _RO_U8, types.boolean)  # codes, starts, counts, skip, has_skip


@dataclass(frozen=True)
class PreparedQuery:
    """A query folded with the SQ8 parameters (see the module docstring for the formulas)."""

    kind: int
    a: np.ndarray  # float32[d]
    w: np.ndarray  # float32[d] (all ones for KIND_DOT: unused)
    const: float

    @property
    def dim(self) -> int:
        return int(self.a.shape[0])


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Prefetch the cache line holding ``arr[idx]`` for reading (all cache levels).  A prefetch never
    faults, so ``idx`` may point past the array."""

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH_NAME)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


# ---------------------------------------------------------------------------------------------------
# query preparation
# ---------------------------------------------------------------------------------------------------
@njit(
    types.Tuple((types.float64, types.boolean))(types.int64, _RO_F32, _RO_F32, _RO_F32, _F32, _F32),
    nogil=True,
    fastmath=False,
    cache=True,
)
def _prepare(kind_code, q, mins, scales, a, w):
    """Fill a, w; return (const, ok).  kind_code: 0 l2, 1 ip, 2 cosine.  ok is False on non-finite input."""
    d = q.shape[0]
    const = 0.0
    ok = True
    for j in range(d):
        qj = np.float64(q[j])
        mj = np.float64(mins[j])
        sj = np.float64(scales[j])
        if not (np.isfinite(qj) and np.isfinite(mj) and np.isfinite(sj)):
            ok = False
        if kind_code == 0:
            if sj > 0.0:
                a[j] = np.float32((qj - mj) / sj)
                w[j] = np.float32(sj * sj)
            else:  # constant dimension: every code decodes to min
                a[j] = 0.0
                w[j] = 0.0
                const += (qj - mj) * (qj - mj)
        else:
            a[j] = np.float32(-qj * sj)
            w[j] = 1.0
            const -= qj * mj
    if kind_code == 2:
        const += 1.0
    return const, ok


def prepare_query(metric: str, query: np.ndarray, mins: np.ndarray, scales: np.ndarray) -> PreparedQuery:
    """Fold ``query`` and the SQ8 ``mins``/``scales`` (float32[d]) into a ``PreparedQuery`` for ``metric``."""
    code = _METRIC_CODE.get(metric)
    if code is None:
        raise InvalidArgumentError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    q = np.ascontiguousarray(query, dtype=np.float32)
    mins = np.ascontiguousarray(mins, dtype=np.float32)
    scales = np.ascontiguousarray(scales, dtype=np.float32)
    if q.ndim != 1 or q.shape[0] == 0:
        raise InvalidArgumentError(f"query must be a non-empty 1-d vector, got shape {q.shape}")
    d = q.shape[0]
    if mins.shape != (d,) or scales.shape != (d,):
        raise DimensionMismatchError(f"SQ8 parameters have shapes {mins.shape}/{scales.shape}, query has dimension {d}")
    a = np.empty(d, dtype=np.float32)
    w = np.empty(d, dtype=np.float32)
    const, ok = _prepare(code, q, mins, scales, a, w)
    if not ok:
        raise InvalidArgumentError("query and SQ8 parameters must be finite (NaN/Inf found)")
    return PreparedQuery(KIND_L2 if code == 0 else KIND_DOT, a, w, float(const))


# ---------------------------------------------------------------------------------------------------
# scan kernels
# ---------------------------------------------------------------------------------------------------
@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _offer_row(hd, hr, size, r, val, row, skip, has_skip, row_offset):
    """Offer one computed row (skip-checked) to the heap; returns the new size.  Callers have already
    checked ``val <= threshold`` so this runs for candidates only."""
    if has_skip and skip[row] != 0:
        return size
    return heap_offer(hd, hr, size, r, val, row + row_offset)


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _threshold(hd, size, r):
    """Distance a row must not exceed to enter the heap (+inf while it is not full)."""
    if size < r:
        return np.float32(np.inf)
    return hd[0]


@njit(nogil=True, cache=True, inline="always")
def _next_range_bytes(starts, counts, s, d, total):
    """Byte span [lo, hi) of range s + 1 in the flat code block (empty when there is none)."""
    if s + 1 >= starts.shape[0]:
        return 0, 0
    lo = max(starts[s + 1], 0) * d
    return lo, min(lo + max(counts[s + 1], 0) * d, total)


@njit(nogil=True, cache=True, inline="always")
def _prefetch_ahead(flat, pf, pf_end):
    """Prefetch the next ``_PREFETCH_STEP`` bytes of the next range (pulled towards the cache while the
    current range computes); returns the advanced cursor."""
    if pf < pf_end:
        for k in range(_PREFETCH_STEP // 64):
            _prefetch(flat, pf + 64 * k)
        pf += _PREFETCH_STEP
    return pf


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _offer4(hd, hr, size, r, top, t0, t1, t2, t3, row, skip, has_skip, row_offset):
    """Offer rows row..row+3 with distances t0..t3; returns (size, threshold)."""
    if min(min(t0, t1), min(t2, t3)) <= top:
        if t0 <= top:
            size = _offer_row(hd, hr, size, r, t0, row, skip, has_skip, row_offset)
            top = _threshold(hd, size, r)
        if t1 <= top:
            size = _offer_row(hd, hr, size, r, t1, row + 1, skip, has_skip, row_offset)
            top = _threshold(hd, size, r)
        if t2 <= top:
            size = _offer_row(hd, hr, size, r, t2, row + 2, skip, has_skip, row_offset)
            top = _threshold(hd, size, r)
        if t3 <= top:
            size = _offer_row(hd, hr, size, r, t3, row + 3, skip, has_skip, row_offset)
            top = _threshold(hd, size, r)
    return size, top


@njit(types.int64(_RO_F32, _RO_F32, types.float64, *_SCAN_BLOCK, *_HEAP), nogil=True, fastmath=True, cache=True)
def _scan_l2(a, w, const, codes, starts, counts, skip, has_skip, hd, hr, size_arr, row_offset, finish):
    """Squared-L2 ADC over row ranges into the heap (hd, hr, size_arr[0]).  Returns 0, or -1-i for a bad
    range i.  With ``finish`` the heap is sorted ascending in place afterwards."""
    n = codes.shape[0]
    d = codes.shape[1]
    r = hd.shape[0]
    flat = codes.reshape(n * d)
    total = n * d
    dp = (d + _PAD - 1) // _PAD * _PAD
    wp = np.zeros(dp, dtype=np.float32)
    bp = np.zeros(dp, dtype=np.float32)
    base64 = np.float64(const)
    for j in range(d):
        wp[j] = w[j]
        bp[j] = np.float32(-2.0) * w[j] * a[j]
        base64 += np.float64(w[j]) * np.float64(a[j]) * np.float64(a[j])
    base_const = np.float32(base64)
    size = size_arr[0]
    top = _threshold(hd, size, r)
    for s in range(starts.shape[0]):
        st = starts[s]
        en = st + counts[s]
        if st < 0 or counts[s] < 0 or en > n:
            size_arr[0] = size
            return -1 - s
        row = st
        pf, pf_end = _next_range_bytes(starts, counts, s, d, total)
        # four rows at a time while the padded read of the fourth row stays inside the array
        while row + 4 <= en and (row + 3) * d + dp <= total:
            b0 = row * d
            if pf < pf_end:  # pull the next range towards the cache while this one computes
                for k in range(_PREFETCH_STEP // 64):
                    _prefetch(flat, pf + 64 * k)
                pf += _PREFETCH_STEP
            c0 = flat[b0 : b0 + dp]
            c1 = flat[b0 + d : b0 + d + dp]
            c2 = flat[b0 + 2 * d : b0 + 2 * d + dp]
            c3 = flat[b0 + 3 * d : b0 + 3 * d + dp]
            t0 = np.float32(0.0)
            t1 = np.float32(0.0)
            t2 = np.float32(0.0)
            t3 = np.float32(0.0)
            for j in range(dp):
                wj = wp[j]
                bj = bp[j]
                x0 = np.float32(c0[j])
                x1 = np.float32(c1[j])
                x2 = np.float32(c2[j])
                x3 = np.float32(c3[j])
                t0 += (wj * x0 + bj) * x0
                t1 += (wj * x1 + bj) * x1
                t2 += (wj * x2 + bj) * x2
                t3 += (wj * x3 + bj) * x3
            t0 += base_const
            t1 += base_const
            t2 += base_const
            t3 += base_const
            if min(min(t0, t1), min(t2, t3)) <= top:
                if t0 <= top:
                    size = _offer_row(hd, hr, size, r, t0, row, skip, has_skip, row_offset)
                    top = _threshold(hd, size, r)
                if t1 <= top:
                    size = _offer_row(hd, hr, size, r, t1, row + 1, skip, has_skip, row_offset)
                    top = _threshold(hd, size, r)
                if t2 <= top:
                    size = _offer_row(hd, hr, size, r, t2, row + 2, skip, has_skip, row_offset)
                    top = _threshold(hd, size, r)
                if t3 <= top:
                    size = _offer_row(hd, hr, size, r, t3, row + 3, skip, has_skip, row_offset)
                    top = _threshold(hd, size, r)
            row += 4
        while row < en:
            c0 = codes[row]
            t0 = np.float32(0.0)
            for j in range(d):
                x0 = np.float32(c0[j])
                t0 += (wp[j] * x0 + bp[j]) * x0
            t0 += base_const
            if t0 <= top:
                size = _offer_row(hd, hr, size, r, t0, row, skip, has_skip, row_offset)
                top = _threshold(hd, size, r)
            row += 1
    size_arr[0] = size
    if finish:
        heap_sort(hd, hr, size)
    return 0


@njit(types.int64(_RO_F32, types.float64, *_SCAN_BLOCK, *_HEAP), nogil=True, fastmath=True, cache=True)
def _scan_dot(a, const, codes, starts, counts, skip, has_skip, hd, hr, size_arr, row_offset, finish):
    """``const + a·codes`` ADC over row ranges into the heap; same conventions as ``_scan_l2``."""
    n = codes.shape[0]
    d = codes.shape[1]
    r = hd.shape[0]
    flat = codes.reshape(n * d)
    total = n * d
    dp = (d + _PAD - 1) // _PAD * _PAD
    ap = np.zeros(dp, dtype=np.float32)
    for j in range(d):
        ap[j] = a[j]
    c32 = np.float32(const)
    size = size_arr[0]
    top = _threshold(hd, size, r)
    for s in range(starts.shape[0]):
        st = starts[s]
        en = st + counts[s]
        if st < 0 or counts[s] < 0 or en > n:
            size_arr[0] = size
            return -1 - s
        row = st
        pf, pf_end = _next_range_bytes(starts, counts, s, d, total)
        while row + 4 <= en and (row + 3) * d + dp <= total:
            b0 = row * d
            if pf < pf_end:  # pull the next range towards the cache while this one computes
                for k in range(_PREFETCH_STEP // 64):
                    _prefetch(flat, pf + 64 * k)
                pf += _PREFETCH_STEP
            c0 = flat[b0 : b0 + dp]
            c1 = flat[b0 + d : b0 + d + dp]
            c2 = flat[b0 + 2 * d : b0 + 2 * d + dp]
            c3 = flat[b0 + 3 * d : b0 + 3 * d + dp]
            t0 = np.float32(0.0)
            t1 = np.float32(0.0)
            t2 = np.float32(0.0)
            t3 = np.float32(0.0)
            for j in range(dp):
                aj = ap[j]
                t0 += aj * np.float32(c0[j])
                t1 += aj * np.float32(c1[j])
                t2 += aj * np.float32(c2[j])
                t3 += aj * np.float32(c3[j])
            t0 += c32
            t1 += c32
            t2 += c32
            t3 += c32
            if min(min(t0, t1), min(t2, t3)) <= top:
                if t0 <= top:
                    size = _offer_row(hd, hr, size, r, t0, row, skip, has_skip, row_offset)
                    top = _threshold(hd, size, r)
                if t1 <= top:
                    size = _offer_row(hd, hr, size, r, t1, row + 1, skip, has_skip, row_offset)
                    top = _threshold(hd, size, r)
                if t2 <= top:
                    size = _offer_row(hd, hr, size, r, t2, row + 2, skip, has_skip, row_offset)
                    top = _threshold(hd, size, r)
                if t3 <= top:
                    size = _offer_row(hd, hr, size, r, t3, row + 3, skip, has_skip, row_offset)
                    top = _threshold(hd, size, r)
            row += 4
        while row < en:
            c0 = codes[row]
            t0 = np.float32(0.0)
            for j in range(d):
                t0 += ap[j] * np.float32(c0[j])
            t0 += c32
            if t0 <= top:
                size = _offer_row(hd, hr, size, r, t0, row, skip, has_skip, row_offset)
                top = _threshold(hd, size, r)
            row += 1
    size_arr[0] = size
    if finish:
        heap_sort(hd, hr, size)
    return 0


def _check_scan_args(
    pq: PreparedQuery, codes: np.ndarray, starts: np.ndarray, counts: np.ndarray, skip: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    if codes.dtype != np.uint8 or codes.ndim != 2 or not codes.flags.c_contiguous:
        raise InvalidArgumentError(
            f"codes must be a C-contiguous uint8 (n_rows, d) array, got {codes.dtype} shape {codes.shape}"
        )
    if codes.shape[1] != pq.a.shape[0]:
        raise DimensionMismatchError(f"codes have dimension {codes.shape[1]}, query has {pq.a.shape[0]}")
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if starts.ndim != 1 or starts.shape != counts.shape:
        raise InvalidArgumentError(f"starts/counts must be 1-d of equal length, got {starts.shape}/{counts.shape}")
    if skip is None:
        return starts, counts, _EMPTY_SKIP, False
    if skip.dtype != np.uint8 and skip.dtype != np.bool_:
        raise InvalidArgumentError(f"skip must be uint8 (or bool), got {skip.dtype}")
    if skip.ndim != 1 or skip.shape[0] != codes.shape[0]:
        raise InvalidArgumentError(f"skip has shape {skip.shape}, expected ({codes.shape[0]},)")
    if skip.dtype == np.bool_:
        skip = skip.view(np.uint8)
    return starts, counts, np.ascontiguousarray(skip), True


def _run_scan(pq, codes, starts, counts, skip, has_skip, hd, hr, size_arr, row_offset, finish) -> None:
    if pq.kind == KIND_L2:
        status = _scan_l2(
            pq.a, pq.w, pq.const, codes, starts, counts, skip, has_skip, hd, hr, size_arr, row_offset, finish
        )
    elif pq.kind == KIND_DOT:
        status = _scan_dot(pq.a, pq.const, codes, starts, counts, skip, has_skip, hd, hr, size_arr, row_offset, finish)
    else:
        raise InvalidArgumentError(f"unknown PreparedQuery kind {pq.kind}")
    if status != 0:
        i = -1 - status
        raise InvalidArgumentError(
            f"row range {i} (start {int(starts[i])}, count {int(counts[i])}) is outside the code block "
            f"of {codes.shape[0]} rows"
        )


def scan(
    pq: PreparedQuery,
    codes: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    skip: np.ndarray | None,
    r: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``r`` best rows of ``codes`` within the ranges ``[starts[i], starts[i] + counts[i])``.

    Returns ``(approx_dist float32[<= r], rows int64[<= r])`` sorted ascending (ties to the lower row);
    rows with ``skip[row] != 0`` are left out.  One numba call, whatever the number of ranges.
    """
    if r < 0:
        raise InvalidArgumentError(f"r must be >= 0, got {r}")
    starts, counts, skip_arr, has_skip = _check_scan_args(pq, codes, starts, counts, skip)
    if r == 0:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    hd = np.empty(r, dtype=np.float32)
    hr = np.empty(r, dtype=np.int64)
    size_arr = np.zeros(1, dtype=np.int64)
    _run_scan(pq, codes, starts, counts, skip_arr, has_skip, hd, hr, size_arr, 0, True)
    n = int(size_arr[0])
    if n < r:
        return hd[:n], hr[:n]
    return hd, hr


def scan_into(
    pq: PreparedQuery,
    codes: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    skip: np.ndarray | None,
    topk: TopK,
    row_offset: int = 0,
) -> None:
    """Like ``scan`` but offers the rows (stored as ``row_offset + row``) to ``topk``; read it with
    ``topk.result()``.  Use distinct offsets (e.g. ``segment_index << 40``) to tell code blocks apart."""
    starts, counts, skip_arr, has_skip = _check_scan_args(pq, codes, starts, counts, skip)
    if topk.r == 0:
        return
    _run_scan(pq, codes, starts, counts, skip_arr, has_skip, topk.dist, topk.rows, topk.size, int(row_offset), False)


def adc_throughput(codes: np.ndarray, n_queries: int = 20, *, metric: str = "l2", r: int = 40, seed: int = 0) -> float:
    """Single-thread ``scan`` throughput in code bytes per second (wall clock) over the whole block
    ``codes`` (uint8 (n, d)), for ``n_queries`` random queries in code space (mins 0, scales 1)."""
    rng = np.random.default_rng(seed)
    d = codes.shape[1]
    ones, zeros = np.ones(d, np.float32), np.zeros(d, np.float32)
    pqs = [prepare_query(metric, rng.uniform(0, 255, d).astype(np.float32), zeros, ones) for _ in range(n_queries)]
    starts, counts = np.array([0]), np.array([codes.shape[0]])
    scan(pqs[0], codes[:64], starts, np.array([min(64, codes.shape[0])]), None, r)
    t0 = time.perf_counter()
    for pq in pqs:
        scan(pq, codes, starts, counts, None, r)
    return n_queries * codes.size / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------
# warm-up
# ---------------------------------------------------------------------------------------------------
def warmup() -> None:
    """Load (or compile, the first time) every kernel the query path uses — ADC scans, exact distances,
    the heap helpers and the routing kernel — so that the first query is not slow.  The kernels have
    explicit signatures with read-only inputs, so one compiled version serves writable and read-only
    (disk-backed) blocks alike.  Idempotent; cheap once numba's on-disk cache is populated."""
    from drift_engine.index import routing  # imported here: routing imports this module's package

    q = np.ones(3, dtype=np.float32)
    codes = np.arange(24, dtype=np.uint8).reshape(8, 3)
    vectors = codes.astype(np.float32)
    one, eight, rows = np.array([0]), np.array([8]), np.array([0, 7])
    for metric in METRICS:
        pq = prepare_query(metric, q, np.zeros(3, np.float32), np.ones(3, np.float32))
        scan(pq, codes, one, eight, np.zeros(8, np.uint8), 4)
        top = TopK(4)
        scan_into(pq, codes, one, eight, None, top)
        top.result()
        exact_distances(metric, q, vectors)
        rerank(metric, q, vectors, rows)
        for lam, tau in ((0.0, float("inf")), (0.5, 10.0)):
            table = routing.RoutingTable.build(
                np.arange(3), vectors[:3], vectors[:3], np.zeros(3), np.ones(3), np.ones(3), lam=lam, tau=tau
            )
            routing.route(table, q, 1, metric)
