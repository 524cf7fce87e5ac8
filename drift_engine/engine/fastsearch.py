"""The compiled search path: one numba call per query over arrays prepared once per snapshot.

Contract
--------
* ``prepare(snap, metric)`` flattens what a trained snapshot's search reads into a ``Prepared``: the routing
  arrays (drift-corrected centroids about their origin, or directions for ip, ‖ĉ‖², bonus), the SQ8
  parameters, per routing position the bucket's extents as ``(segment index, start, count)`` rows of an
  extent table, and per segment index its codes, vectors, ids and dead-row mask (two numba typed lists of
  read-only arrays; the float and the int arrays are packed into one array each: every argument costs numba's
  dispatch time).  It is built lazily by the first search of a snapshot, memoised on the snapshot (keyed by
  metric) and shared by every search on it; concurrent first searches may both build it (idempotent).
  It returns ``None`` — and searches take the reference path (``engine.search``) — for untrained snapshots,
  and when the snapshot's blocks do not fit in the block cache budget: a ``Prepared`` keeps every block of
  its snapshot resident, which only makes sense while they would be cached anyway.
* ``ivf_fast`` is ``search.ivf_scan`` as one compiled call (routing, probe plan, per-segment ADC scans into
  top-R heaps, the global cut to the best R approximate candidates, exact re-rank, top k by (distance, id)).
  It calls the very same numba kernels the reference path calls, on the same ranges, so it returns the same
  ids and bit-identical distances (``tests/unit/test_fastsearch.py`` compares them on random collections).
* ``search_fast(snap, q, ...)`` is ``search.search_hybrid`` with ``ivf_fast`` as its L1 scan: without
  memtables holding anything and without a filter it is a single compiled call; with memtables the L0
  searches (hnswlib, a separate call) and the hiding of older copies run in Python exactly as in
  ``search_hybrid``; filters use ``search_filtered``'s planning with the allowed masks as skip masks.
  Untrained snapshots, or snapshots that cannot be prepared, go to ``search_hybrid`` itself.
* ``query_vector`` is the cheap form of ``validate.as_query`` for the common case (a float32 C-contiguous
  vector of the right dimension, metric l2 or ip): it returns the caller's array without a copy (it is only
  read during the call); anything else goes through ``as_query``.  Non-finite values are caught inside the
  compiled call (or before the L0 search) and raise the error ``as_query`` raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, typed, types

from drift_engine.engine import search as ref
from drift_engine.engine.validate import as_query
from drift_engine.index.adc import _prepare, _scan_dot, _scan_l2
from drift_engine.index.exact import _exact_rows
from drift_engine.index.routing import _route_one
from drift_engine.index.topk import heap_offer, heap_sort
from drift_engine.l1.snapshot import Snapshot

__all__ = ["Prepared", "ivf_fast", "prepare", "query_vector", "search_fast"]

_METRIC_CODE = {"l2": 0, "ip": 1, "cosine": 2}
_RO_F32 = types.Array(types.float32, 1, "C", readonly=True)
_RO_F32_2D = types.Array(types.float32, 2, "C", readonly=True)
_RO_I64 = types.Array(types.int64, 1, "C", readonly=True)
_RO_U8 = types.Array(types.uint8, 1, "C", readonly=True)
_RO_U8_2D = types.Array(types.uint8, 2, "C", readonly=True)
_F32 = types.Array(types.float32, 1, "C")
_I64 = types.Array(types.int64, 1, "C")

STATUS_NON_FINITE = -1
STATUS_BAD_RANGE = -2
_MEMO_KEY = "fastsearch"


def _readonly(arr: np.ndarray) -> np.ndarray:
    if not arr.flags.writeable:
        return arr
    view = arr.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class Prepared:
    """Per-snapshot arrays of the compiled search (see the module docstring)."""

    metric_code: int
    mode: int  # routing score mode (index.routing._mode)
    d: int
    nb: int
    chat_t: np.ndarray  # float32[d, nb]: centred ĉᵀ (l2, cosine) or directionsᵀ (ip)
    floats: np.ndarray  # float32: mins[d], scales[d], origin[d], ‖ĉ − origin‖²[nb], bonus[nb]
    ints: np.ndarray  # int64: positions[nb] (= arange), ext_off[nb + 1], ext_seg[E], ext_start[E], ext_count[E]
    seg_ids: tuple[int, ...]
    u8: Any  # typed.List of uint8 2-d: codes of segment i at 2i, its dead mask as (1, n_rows) at 2i + 1
    f32: Any  # typed.List of float32 2-d: vectors of segment i at 2i, its ids (int64 as (n_rows, 2) float32) at 2i+1
    skip_memo: dict  # id(masks) -> (masks, typed list): u8 with the filter's allowed masks as skip masks

    def skip_list(self, allowed: Mapping[int, np.ndarray] | None) -> Any:
        """``u8`` (codes and dead masks), or codes and the filter's allowed masks, as a typed list."""
        if allowed is None:
            return self.u8
        hit = self.skip_memo.get(id(allowed))
        if hit is not None and hit[0] is allowed:
            return hit[1]
        lst = typed.List.empty_list(_RO_U8_2D)
        for i, s in enumerate(self.seg_ids):
            lst.append(self.u8[2 * i])
            lst.append(_readonly(np.ascontiguousarray(allowed[s], dtype=np.uint8).reshape(1, -1)))
        if len(self.skip_memo) > 64:
            self.skip_memo.clear()
        self.skip_memo[id(allowed)] = (allowed, lst)
        return lst


def _block_bytes(snap: Snapshot) -> int:
    d = snap.routing.dim if snap.routing is not None else 0
    return sum(seg.n_rows * (5 * d + 8) for seg in snap.segments.values())


def prepare(snap: Snapshot, metric: str) -> Prepared | None:
    """The ``Prepared`` arrays of ``snap`` for ``metric`` (memoised on the snapshot), or None (module docstring)."""
    memo = snap.prepared
    key = (_MEMO_KEY, metric)
    hit = memo.get(key, False)
    if hit is not False:
        return hit
    prep = _build(snap, metric)
    memo[key] = prep
    return prep


def _build(snap: Snapshot, metric: str) -> Prepared | None:
    table = snap.routing
    if not snap.trained or table is None or snap.sq8 is None or metric not in _METRIC_CODE:
        return None
    segs = list(snap.segments.values())
    if segs and _block_bytes(snap) > segs[0].cache.capacity_bytes:
        return None
    seg_ids = tuple(sorted(snap.segments))
    index_of = {s: i for i, s in enumerate(seg_ids)}
    off = np.zeros(table.n_buckets + 1, dtype=np.int64)
    rows: list[tuple[int, int, int]] = []
    for pos, b in enumerate(table.bucket_ids.tolist()):
        for ext in snap.buckets[b].extents:
            rows.append((index_of[ext.segment_id], ext.start, ext.count))
        off[pos + 1] = len(rows)
    ext = np.array(rows, dtype=np.int64).reshape(-1, 3)
    u8 = typed.List.empty_list(_RO_U8_2D)
    f32 = typed.List.empty_list(_RO_F32_2D)
    for s in seg_ids:
        seg = snap.segments[s]
        seg_ids_block = np.ascontiguousarray(seg.ids(), dtype=np.int64)
        u8.append(_readonly(seg.codes()))
        u8.append(_readonly(np.ascontiguousarray(snap.dead[s], dtype=np.uint8).reshape(1, -1)))
        f32.append(_readonly(seg.vectors()))
        f32.append(_readonly(seg_ids_block.view(np.float32).reshape(-1, 2)))
    if metric == "ip":
        mode, chat_t = 2, table.directions_t
    else:
        mode, chat_t = (1 if table.has_bonus else 0), table.centered_t
    nb = table.n_buckets
    floats = np.concatenate([snap.sq8.mins, snap.sq8.scales, table.origin, table.centered_sq, table.bonus])
    ints = np.concatenate([np.arange(nb, dtype=np.int64), off, ext[:, 0], ext[:, 1], ext[:, 2]])
    return Prepared(
        metric_code=_METRIC_CODE[metric],
        mode=mode,
        d=table.dim,
        nb=nb,
        chat_t=chat_t,
        floats=_readonly(floats.astype(np.float32)),
        ints=_readonly(ints.astype(np.int64)),
        seg_ids=seg_ids,
        u8=u8,
        f32=f32,
        skip_memo={},
    )


# ---------------------------------------------------------------------------------------------------
# the compiled query
# ---------------------------------------------------------------------------------------------------
@njit(
    types.Tuple((_I64, _F32, types.int64))(
        _RO_F32,  # q
        types.int64,  # metric code
        types.int64,  # routing mode
        _RO_F32_2D,  # chat_t
        _RO_F32,  # floats (Prepared.floats)
        _RO_I64,  # ints (Prepared.ints)
        types.ListType(_RO_U8_2D),  # codes and skip masks (Prepared.u8 / skip_list)
        types.ListType(_RO_F32_2D),  # vectors and ids (Prepared.f32)
        types.int64,  # nprobe
        types.int64,  # k
        types.int64,  # r
    ),
    nogil=True,
    fastmath=True,
    cache=True,
)
def _ivf_query(q, code, mode, chat_t, floats, ints, u8, f32, nprobe, k, r):
    """``search.ivf_scan`` in one call; returns (ids, distances, n) with n results, or n < 0 (a STATUS_*).
    The packed arguments are unpacked here (fewer arguments: numba's dispatch costs ~0.1-0.5 µs each)."""
    d = q.shape[0]
    nb = chat_t.shape[1]
    mins = floats[:d]
    scales = floats[d : 2 * d]
    origin = floats[2 * d : 3 * d]
    chat_sq = floats[3 * d : 3 * d + nb]
    bonus = floats[3 * d + nb : 3 * d + 2 * nb]
    positions = ints[:nb]
    ext_off = ints[nb : 2 * nb + 1]
    n_ext = ext_off[nb]
    ext_seg = ints[2 * nb + 1 : 2 * nb + 1 + n_ext]
    ext_start = ints[2 * nb + 1 + n_ext : 2 * nb + 1 + 2 * n_ext]
    ext_count = ints[2 * nb + 1 + 2 * n_ext : 2 * nb + 1 + 3 * n_ext]
    out_ids = np.empty(k, dtype=np.int64)
    out_d = np.empty(k, dtype=np.float32)
    a = np.empty(d, dtype=np.float32)
    w = np.empty(d, dtype=np.float32)
    const, ok = _prepare(code, q, mins, scales, a, w)
    if not ok:
        return out_ids, out_d, STATUS_NON_FINITE
    if nb == 0:
        return out_ids, out_d, 0
    p = min(nprobe, nb)
    probe = _route_one(q, origin, chat_t, chat_sq, bonus, mode, p, positions)
    # probe plan: per segment index, the extents of the probed buckets in probe order
    n_seg = len(u8) // 2
    per_seg = np.zeros(n_seg + 1, dtype=np.int64)
    first = np.full(n_seg, -1, dtype=np.int64)  # first-touch rank of each segment (plan order)
    n_touched = 0
    for i in range(p):
        pos = probe[i]
        for e in range(ext_off[pos], ext_off[pos + 1]):
            s = ext_seg[e]
            if first[s] < 0:
                first[s] = n_touched
                n_touched += 1
            per_seg[s + 1] += 1
    if n_touched == 0:
        return out_ids, out_d, 0
    for s in range(n_seg):
        per_seg[s + 1] += per_seg[s]
    fill = per_seg[:n_seg].copy()
    starts = np.empty(per_seg[n_seg], dtype=np.int64)
    counts = np.empty(per_seg[n_seg], dtype=np.int64)
    for i in range(p):
        pos = probe[i]
        for e in range(ext_off[pos], ext_off[pos + 1]):
            s = ext_seg[e]
            starts[fill[s]] = ext_start[e]
            counts[fill[s]] = ext_count[e]
            fill[s] += 1
    order = np.empty(n_touched, dtype=np.int64)
    for s in range(n_seg):
        if first[s] >= 0:
            order[first[s]] = s
    # per-segment top-r approximate candidates
    hd = np.empty((n_touched, r), dtype=np.float32)
    hr = np.empty((n_touched, r), dtype=np.int64)
    sizes = np.zeros(n_touched, dtype=np.int64)
    size_arr = np.zeros(1, dtype=np.int64)
    n_found = 0
    for t in range(n_touched):
        s = order[t]
        size_arr[0] = 0
        lo, hi = per_seg[s], per_seg[s + 1]
        if code == 0:
            status = _scan_l2(
                a, w, const, u8[2 * s], starts[lo:hi], counts[lo:hi], u8[2 * s + 1][0], True, hd[t], hr[t], size_arr, 0,
                False,
            )  # fmt: skip
        else:
            status = _scan_dot(
                a, const, u8[2 * s], starts[lo:hi], counts[lo:hi], u8[2 * s + 1][0], True, hd[t], hr[t], size_arr, 0,
                False,
            )  # fmt: skip
        if status != 0:
            return out_ids, out_d, STATUS_BAD_RANGE
        sizes[t] = size_arr[0]
        if sizes[t] > 0:
            n_found += 1
    if n_found == 0:
        return out_ids, out_d, 0
    cut = np.float32(np.inf)
    if n_found > 1:  # keep the global best r approximate candidates (all rows tied with the r-th stay)
        total = 0
        for t in range(n_touched):
            total += sizes[t]
        if total > r:
            approx = np.empty(total, dtype=np.float32)
            j = 0
            for t in range(n_touched):
                for i in range(sizes[t]):
                    approx[j] = hd[t, i]
                    j += 1
            approx.sort()
            cut = approx[r - 1]
    # exact re-rank, top k by (distance, id)
    td = np.empty(k, dtype=np.float32)
    ti = np.empty(k, dtype=np.int64)
    m = 0
    rows = np.empty(r, dtype=np.int64)
    dist = np.empty(r, dtype=np.float32)
    for t in range(n_touched):
        s = order[t]
        n_rows = 0
        for i in range(sizes[t]):
            if hd[t, i] <= cut:
                rows[n_rows] = hr[t, i]
                n_rows += 1
        if n_rows == 0:
            continue
        bad = _exact_rows(code, q, f32[2 * s], rows[:n_rows], dist[:n_rows])
        if bad >= 0:
            return out_ids, out_d, STATUS_BAD_RANGE
        seg_ids = f32[2 * s + 1].reshape(-1).view(np.int64)
        for i in range(n_rows):
            m = heap_offer(td, ti, m, k, dist[i], seg_ids[rows[i]])
    heap_sort(td, ti, m)
    for i in range(m):
        out_ids[i] = ti[i]
        out_d[i] = td[i]
    return out_ids, out_d, m


def _non_finite(query: np.ndarray, dim: int, metric: str) -> None:
    as_query(query, dim, metric)  # raises the validation error for the non-finite query
    raise AssertionError("unreachable: the compiled search found a non-finite value as_query accepts")


def ivf_fast(
    prep: Prepared,
    query: np.ndarray,
    k: int,
    nprobe: int,
    rerank: int,
    skip: Any,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``search.ivf_scan`` as one compiled call (``skip``: ``prep.skip_list(allowed)``); None when the compiled
    call refused (non-finite query, bad extent), so the caller can take the reference path, which raises the
    matching error."""
    ids, dists, n = _ivf_query(
        query, prep.metric_code, prep.mode, prep.chat_t, prep.floats, prep.ints, skip, prep.f32, nprobe, k,
        max(k, rerank * k),
    )  # fmt: skip
    if n < 0:
        return None
    return ids[:n], dists[:n]


def query_vector(query: Any, dim: int, metric: str) -> np.ndarray:
    """``validate.as_query`` without the copy for a float32 C-contiguous vector of dimension ``dim`` (l2, ip);
    finiteness is checked by the search itself (module docstring)."""
    if (
        type(query) is np.ndarray
        and query.dtype == np.float32
        and query.ndim == 1
        and query.shape[0] == dim
        and metric != "cosine"
        and query.flags.c_contiguous
    ):
        return query
    return as_query(query, dim, metric)


def search_fast(
    snap: Snapshot,
    query: np.ndarray,
    k: int,
    nprobe: int,
    rerank: int,
    ef: int,
    metric: str,
    masks: Mapping[int, np.ndarray] | None = None,
    flt: dict[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``search.search_hybrid`` with the compiled L1 scan (module docstring): same results."""
    prep = snap.prepared.get((_MEMO_KEY, metric), False)
    if prep is False:
        prep = prepare(snap, metric)
    dim = query.shape[0]
    if prep is None:
        if not np.isfinite(query).all():
            _non_finite(query, dim, metric)
        return ref.search_hybrid(snap, query, k, nprobe, rerank, ef, metric, masks, flt)
    l0_empty = True
    for mt in snap.memtables:
        if mt.n_ops:
            l0_empty = False
            break
    if masks is None and l0_empty:
        got = ivf_fast(prep, query, k, nprobe, rerank, prep.u8)
        if got is None:
            if not np.isfinite(query).all():
                _non_finite(query, dim, metric)
            return ref.search_hybrid(snap, query, k, nprobe, rerank, ef, metric, masks, flt)
        return got
    if not np.isfinite(query).all():
        _non_finite(query, dim, metric)

    def ivf(
        snap: Snapshot, q: np.ndarray, want: int, probe: int, rr: int, _metric: str, allowed: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        got = ivf_fast(prep, q, want, probe, rr, prep.skip_list(allowed))
        return got if got is not None else ref.ivf_scan(snap, q, want, probe, rr, metric, allowed)

    return ref.search_hybrid(snap, query, k, nprobe, rerank, ef, metric, masks, flt, ivf=ivf)
