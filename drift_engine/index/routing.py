"""Bucket routing: which buckets a query probes, with drift-aware scoring (DESIGN §8).

Contract
--------
* A ``RoutingTable`` is immutable and built once per snapshot from the bucket headers
  (``buckets.routing_table``).  ``RoutingTable.build`` precomputes, per bucket ``b``::

      w(b)     = a_b / (a_b + tau)                 (0 when tau = inf)
      ĉ(b)     = c_b + w(b) · (μ_b − c_b)          (the drift-corrected centroid; exactly c_b when w = 0)
      bonus(b) = lam · r_b · n_b / (n_b + tau)     (0 when tau = inf or lam = 0)

  and ``‖ĉ‖²``.  ``lam = 0, tau = inf`` is plain IVF.
* ``route`` scores every bucket and returns the ``min(nprobe, nb)`` best bucket ids, best first, ties to the
  lower table position.  The score (lower is better) is ``dist(q, ĉ) − bonus`` where ``dist`` is the
  Euclidean distance for ``l2`` and ``cosine`` (unit vectors; centroids are plain means, inside the sphere)
  and ``−q·ĉ/‖ĉ‖`` for ``ip`` (as FAISS IVF-IP, whose centroids are unit length).  Scoring ip by the
  centroid's direction makes the placement of a vector (its best bucket) the nearest unit direction, so
  ``centroid = mean of the bucket's rows`` is a spherical k-means step and maintenance settles; with the raw
  ``−q·ĉ`` the longest centroids win everything and splits and merges chase each other.
  Distances use the expansion ``‖ĉ‖² − 2q·ĉ`` (+‖q‖²) like FAISS, in float32 about the mean of the ĉ
  (which keeps the rounding small for data far from the origin); when no bucket has a bonus the l2/cosine
  ranking uses the squared distance itself, so with ``lam = 0, tau = inf`` the order is nearest-centroid
  order (ĉ = c bit for bit, bonus exactly 0), up to float32 rounding of exact near-ties.
* ``route_batch`` routes many queries (a flush assigning vectors, a batch of searches) with BLAS in blocks;
  it returns ``(m, min(nprobe, nb))`` ids.  Its scores are computed the same way but by a different
  summation order, so near-exact ties may order differently from ``route``.
* All functions are pure; the table may be shared by any number of threads.  ``route`` is one numba
  ``nogil`` call (insertion into a sorted array keeps the best ``nprobe`` when nprobe is small, a stable
  sort otherwise).
* Bad input (unknown metric, ``nprobe < 1``, wrong dimension, negative or non-finite ``lam``, ``tau <= 0``,
  inconsistent table arrays) raises ``InvalidArgumentError`` / ``DimensionMismatchError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit, types

from drift_engine.config import METRICS
from drift_engine.errors import DimensionMismatchError, InvalidArgumentError, InvalidParameterError

__all__ = ["RoutingTable", "route", "route_batch"]

_RO_F32 = types.Array(types.float32, 1, "C", readonly=True)
_RO_F32_2D = types.Array(types.float32, 2, "C", readonly=True)
_RO_I64 = types.Array(types.int64, 1, "C", readonly=True)
_F32 = types.Array(types.float32, 1, "C")
_I64 = types.Array(types.int64, 1, "C")
_BLOCK_BYTES = 4 << 20


@dataclass(frozen=True, eq=False)
class RoutingTable:
    """Per-bucket routing state of one snapshot (see the module docstring).

    Construct with ``build`` (or directly: the derived fields ``adjusted`` = ĉ, ``adjusted_sq`` = ‖ĉ‖²,
    ``bonus`` and ``has_bonus`` are always computed from the others).  All arrays are read-only."""

    bucket_ids: np.ndarray  # int64[nb]
    centroids: np.ndarray  # float32[nb, d]: c, set when the bucket was made
    means: np.ndarray  # float32[nb, d]: μ = running_sum / n (= c when n == 0)
    inserts: np.ndarray  # float64[nb]: a_b, inserts since c was set
    counts: np.ndarray  # float64[nb]: n_b live vectors
    spreads: np.ndarray  # float32[nb]: r_b
    lam: float = 0.0
    tau: float = float("inf")
    adjusted: np.ndarray = field(init=False, repr=False)  # float32[nb, d]: ĉ
    adjusted_sq: np.ndarray = field(init=False, repr=False)  # float32[nb]: ‖ĉ‖²
    origin: np.ndarray = field(init=False, repr=False)  # float32[d]: mean of ĉ (scores are computed about it)
    centered_sq: np.ndarray = field(init=False, repr=False)  # float32[nb]: ‖ĉ − origin‖²
    centered_t: np.ndarray = field(init=False, repr=False)  # float32[d, nb]: (ĉ − origin)ᵀ, C-contiguous
    directions: np.ndarray = field(init=False, repr=False)  # float32[nb, d]: ĉ / ‖ĉ‖ (0 for ĉ = 0), for ip
    directions_t: np.ndarray = field(init=False, repr=False)  # float32[d, nb]: (ĉ / ‖ĉ‖)ᵀ, C-contiguous
    bonus: np.ndarray = field(init=False, repr=False)  # float32[nb]
    has_bonus: bool = field(init=False, repr=False)

    @property
    def n_buckets(self) -> int:
        return int(self.bucket_ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @classmethod
    def build(
        cls,
        bucket_ids: np.ndarray,
        centroids: np.ndarray,
        means: np.ndarray,
        inserts: np.ndarray,
        counts: np.ndarray,
        spreads: np.ndarray,
        *,
        lam: float,
        tau: float,
    ) -> RoutingTable:
        """Validate the per-bucket arrays and precompute ĉ, ‖ĉ‖² and the density bonus."""
        return cls(bucket_ids, centroids, means, inserts, counts, spreads, lam=lam, tau=tau)

    def __post_init__(self) -> None:
        lam = float(self.lam)
        tau = float(self.tau)
        if not np.isfinite(lam) or lam < 0:
            raise InvalidParameterError(f"lambda must be a finite number >= 0, got {lam}")
        if np.isnan(tau) or tau <= 0:
            raise InvalidParameterError(f"tau must be > 0 (inf disables drift correction), got {tau}")
        ids = np.array(self.bucket_ids, dtype=np.int64)
        c = np.array(self.centroids, dtype=np.float32, order="C")
        mu = np.array(self.means, dtype=np.float32, order="C")
        a = np.array(self.inserts, dtype=np.float64)
        n = np.array(self.counts, dtype=np.float64)
        r = np.array(self.spreads, dtype=np.float32)
        nb = ids.shape[0]
        if ids.ndim != 1 or c.ndim != 2 or c.shape[0] != nb or c.shape[1] == 0:
            raise InvalidArgumentError(f"bucket_ids {ids.shape} and centroids {c.shape} do not match")
        if mu.shape != c.shape or a.shape != (nb,) or n.shape != (nb,) or r.shape != (nb,):
            raise InvalidArgumentError(
                f"routing arrays disagree: centroids {c.shape}, means {mu.shape}, inserts {a.shape}, "
                f"counts {n.shape}, spreads {r.shape}"
            )
        if (a < 0).any() or (n < 0).any() or (r < 0).any():
            raise InvalidArgumentError("routing table inserts, counts and spreads must be >= 0")
        if np.isinf(tau):
            adjusted = c  # shared: both are read-only
            bonus = np.zeros(nb, dtype=np.float32)
        else:
            w = a / (a + tau)
            adjusted = (c + w[:, None] * (mu.astype(np.float64) - c)).astype(np.float32)
            still = w == 0
            adjusted[still] = c[still]  # bit-exact c for buckets without inserts
            bonus = (lam * r.astype(np.float64) * (n / (n + tau))).astype(np.float32)
        if not (np.isfinite(adjusted).all() and np.isfinite(bonus).all()):
            raise InvalidArgumentError("routing table has non-finite centroids, means, counts or spreads")
        adjusted_sq = np.einsum("ij,ij->i", adjusted, adjusted).astype(np.float32)
        origin = adjusted.mean(axis=0, dtype=np.float64).astype(np.float32) if nb else np.zeros(c.shape[1], np.float32)
        centered = adjusted - origin
        centered_sq = np.einsum("ij,ij->i", centered, centered).astype(np.float32)
        centered_t = np.ascontiguousarray(centered.T)
        del centered
        norms = np.sqrt(adjusted_sq.astype(np.float64))
        directions = np.where((norms > 0)[:, None], adjusted / np.where(norms > 0, norms, 1.0)[:, None], 0.0).astype(
            np.float32
        )
        directions_t = np.ascontiguousarray(directions.T)
        arrays = (ids, c, mu, a, n, r, adjusted, adjusted_sq, bonus, origin, centered_sq, centered_t)
        for arr in (*arrays, directions, directions_t):
            arr.flags.writeable = False
        values = {
            "bucket_ids": ids,
            "centroids": c,
            "means": mu,
            "inserts": a,
            "counts": n,
            "spreads": r,
            "lam": lam,
            "tau": tau,
            "adjusted": adjusted,
            "adjusted_sq": adjusted_sq,
            "origin": origin,
            "centered_sq": centered_sq,
            "centered_t": centered_t,
            "directions": directions,
            "directions_t": directions_t,
            "bonus": bonus,
            "has_bonus": bool(np.any(bonus != 0)),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)


# ---------------------------------------------------------------------------------------------------
# single-query kernel
# ---------------------------------------------------------------------------------------------------
@njit(
    types.void(_RO_F32, _RO_F32_2D, _RO_F32, _RO_F32, types.int64, _F32),
    nogil=True,
    fastmath=True,
    cache=True,
)
def _scores(q, chat_t, chat_sq, bonus, mode, out):
    """out[b] = score of bucket b, with ĉ (and for l2 also q) taken about the table's origin o.  mode 0:
    ‖ĉ‖² − 2q·ĉ (= ‖q − ĉ‖² − ‖q‖², ranks as squared L2); 1: sqrt(‖q − ĉ‖²) − bonus; 2: −q·u − bonus, where
    ``chat_t`` holds the (uncentred) directions u = ĉ/‖ĉ‖.

    ``chat_t`` is ĉ transposed, (d, nb): the loop over buckets is contiguous and vectorises without
    horizontal sums, eight dimensions per pass (measured 1.9x faster than row-wise dot products at
    nb = 1500, d = 50)."""
    d, nb = chat_t.shape
    f = np.float32(-1.0) if mode == 2 else np.float32(-2.0)
    if mode == 2:
        for b in range(nb):
            out[b] = -bonus[b]
    else:
        for b in range(nb):
            out[b] = chat_sq[b]
    j = 0
    while j + 8 <= d:
        q0 = f * q[j]
        q1 = f * q[j + 1]
        q2 = f * q[j + 2]
        q3 = f * q[j + 3]
        q4 = f * q[j + 4]
        q5 = f * q[j + 5]
        q6 = f * q[j + 6]
        q7 = f * q[j + 7]
        r0 = chat_t[j]
        r1 = chat_t[j + 1]
        r2 = chat_t[j + 2]
        r3 = chat_t[j + 3]
        r4 = chat_t[j + 4]
        r5 = chat_t[j + 5]
        r6 = chat_t[j + 6]
        r7 = chat_t[j + 7]
        for b in range(nb):
            out[b] += ((q0 * r0[b] + q1 * r1[b]) + (q2 * r2[b] + q3 * r3[b])) + (
                (q4 * r4[b] + q5 * r5[b]) + (q6 * r6[b] + q7 * r7[b])
            )
        j += 8
    while j < d:
        qj = f * q[j]
        r0 = chat_t[j]
        for b in range(nb):
            out[b] += qj * r0[b]
        j += 1
    if mode == 1:
        q_sq = np.float32(0.0)
        for j in range(d):
            q_sq += q[j] * q[j]
        for b in range(nb):
            out[b] = np.sqrt(max(q_sq + out[b], np.float32(0.0))) - bonus[b]


@njit(
    _I64(_RO_F32, _RO_F32, _RO_F32_2D, _RO_F32, _RO_F32, types.int64, types.int64, _RO_I64),
    nogil=True,
    fastmath=True,
    cache=True,
)
def _route_one(q, origin, chat_t, chat_sq, bonus, mode, p, bucket_ids):
    d, nb = chat_t.shape
    qc = np.empty(d, dtype=np.float32)
    for j in range(d):  # l2: ‖q − ĉ‖ = ‖(q − o) − (ĉ − o)‖; ip: q as is
        qc[j] = q[j] if mode == 2 else q[j] - origin[j]
    scores = np.empty(nb, dtype=np.float32)
    _scores(qc, chat_t, chat_sq, bonus, mode, scores)
    out = np.empty(p, dtype=np.int64)
    if p * 8 >= nb:
        order = np.argsort(scores, kind="mergesort")
        for i in range(p):
            out[i] = bucket_ids[order[i]]
        return out
    # streaming top-p by insertion into a sorted array (measured faster than a binary heap for p <= nb/8:
    # the p(1 + ln(nb/p)) insertions shift short, predictable runs).  Strict comparisons keep the lower
    # index first among equal scores.
    vd = np.empty(p, dtype=np.float32)
    vr = np.empty(p, dtype=np.int64)
    m = 0
    worst = np.float32(np.inf)
    for i in range(nb):
        s = scores[i]
        if m < p or s < worst:
            j = m if m < p else p - 1
            while j > 0 and vd[j - 1] > s:
                vd[j] = vd[j - 1]
                vr[j] = vr[j - 1]
                j -= 1
            vd[j] = s
            vr[j] = i
            if m < p:
                m += 1
            if m == p:
                worst = vd[p - 1]
    for i in range(p):
        out[i] = bucket_ids[vr[i]]
    return out


def _mode(table: RoutingTable, metric: str) -> int:
    if metric == "ip":
        return 2
    if metric == "l2" or metric == "cosine":
        return 1 if table.has_bonus else 0
    raise InvalidArgumentError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def route(table: RoutingTable, query: np.ndarray, nprobe: int, metric: str) -> np.ndarray:
    """Ids (int64[min(nprobe, nb)]) of the buckets ``query`` should probe, best first."""
    mode = _mode(table, metric)
    if nprobe < 1:
        raise InvalidArgumentError(f"nprobe must be >= 1, got {nprobe}")
    q = np.ascontiguousarray(query, dtype=np.float32)
    if q.ndim != 1 or q.shape[0] != table.centroids.shape[1]:
        raise DimensionMismatchError(f"query has shape {q.shape}, the routing table dimension {table.dim}")
    nb = table.bucket_ids.shape[0]
    if nb == 0:
        return np.empty(0, dtype=np.int64)
    p = min(int(nprobe), nb)
    chat_t = table.directions_t if mode == 2 else table.centered_t
    return _route_one(q, table.origin, chat_t, table.centered_sq, table.bonus, mode, p, table.bucket_ids)


def route_batch(table: RoutingTable, queries: np.ndarray, nprobe: int, metric: str) -> np.ndarray:
    """Ids (int64[m, min(nprobe, nb)]) of the buckets each query row should probe, best first."""
    mode = _mode(table, metric)
    if nprobe < 1:
        raise InvalidArgumentError(f"nprobe must be >= 1, got {nprobe}")
    qs = np.ascontiguousarray(queries, dtype=np.float32)
    if qs.ndim != 2 or qs.shape[1] != table.dim:
        raise DimensionMismatchError(f"queries have shape {qs.shape}, the routing table dimension {table.dim}")
    nb = table.n_buckets
    m = qs.shape[0]
    p = min(int(nprobe), nb)
    out = np.empty((m, p), dtype=np.int64)
    if m == 0 or p == 0:
        return out
    chat_t = table.directions_t * np.float32(-1.0) if mode == 2 else table.centered_t * np.float32(-2.0)
    step = max(1, min(m, max(64, _BLOCK_BYTES // (4 * nb))))
    for lo in range(0, m, step):
        blk = qs[lo : lo + step] if mode == 2 else qs[lo : lo + step] - table.origin
        s = blk @ chat_t
        if mode == 2:
            s -= table.bonus
        else:
            s += table.centered_sq
            if mode == 1:
                s += np.einsum("ij,ij->i", blk, blk)[:, None]
                np.maximum(s, 0.0, out=s)
                np.sqrt(s, out=s)
                s -= table.bonus
        if p == 1:
            pos = np.argmin(s, axis=1)[:, None]
        else:
            if p < nb:
                head = np.argpartition(s, p - 1, axis=1)[:, :p]
                head.sort(axis=1)
            else:
                head = np.broadcast_to(np.arange(nb), s.shape)
            vals = np.take_along_axis(s, head, axis=1)
            pos = np.take_along_axis(head, np.argsort(vals, axis=1, kind="stable"), axis=1)
        out[lo : lo + step] = table.bucket_ids[pos]
    return out
