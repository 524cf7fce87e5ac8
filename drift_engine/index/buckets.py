"""Bucket headers: the RAM state of each L1 bucket (posting list) and its drift statistics (DESIGN §5, §8).

Contract
--------
* A ``BucketHeader`` holds the centroid ``c`` set when the bucket was made, the live count ``n``, the
  float64 ``running_sum`` and ``running_sq`` (sum of squared norms) of the live vectors, the inserts since
  ``c`` was set, and the ``extents`` (row ranges in segment files) holding its data.  Extents may include
  rows deleted later: deletes only update the statistics (``remove``); the skip masks hide the rows.
* ``add``/``remove`` update the statistics incrementally in float64 (exact up to float64 rounding of
  the sums; when the count returns to 0 the sums are reset to exactly 0).  Removing more vectors than are
  live, or vectors of the wrong dimension, raises before anything changes.
* ``mean`` = ``running_sum / n`` (the centroid when empty), ``drift`` = ‖μ − c‖, ``spread`` =
  sqrt(max(running_sq/n − ‖μ‖², 0)) (0 when empty).
* Headers are mutable and not thread-safe: a writer mutates its own ``copy()`` and publishes it in a
  new snapshot; readers never see a header change.
* ``to_bytes`` / ``from_bytes`` use a compact little-endian, versioned layout (version 1)::

      u8 version, u8 flags(0), u16 reserved(0), u32 n_extents,
      i64 bucket_id, i64 count, i64 inserts_since_centroid, f64 running_sq,
      f32[d] centroid, f64[d] running_sum, n_extents × (i64 segment_id, i64 start, i64 count)

  ``from_bytes`` raises ``CorruptionError`` for an unknown version or a length that does not match.
* ``routing_table(headers, lam=, tau=)`` builds the immutable ``RoutingTable`` of a snapshot.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from drift_engine.errors import CorruptionError, DimensionMismatchError, InvalidArgumentError
from drift_engine.index.routing import RoutingTable

__all__ = ["FORMAT_VERSION", "BucketHeader", "Extent", "routing_table"]

FORMAT_VERSION = 1
_HEAD = struct.Struct("<BBHIqqqd")
_EXTENT_DTYPE = np.dtype([("segment_id", "<i8"), ("start", "<i8"), ("count", "<i8")])
_SUM_BLOCK = 4096  # rows per float64 block when summing a batch


@dataclass(frozen=True)
class Extent:
    """Rows ``[start, start + count)`` of one segment's blocks."""

    segment_id: int
    start: int
    count: int


@dataclass(eq=False)
class BucketHeader:
    """RAM header of one bucket; see the module docstring."""

    bucket_id: int
    centroid: np.ndarray  # float32[d]
    count: int = 0
    running_sum: np.ndarray = None  # type: ignore[assignment]  # float64[d]; zeros when not given
    running_sq: float = 0.0
    inserts_since_centroid: int = 0
    extents: list[Extent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bucket_id = int(self.bucket_id)
        self.centroid = np.array(self.centroid, dtype=np.float32).reshape(-1)
        d = self.centroid.shape[0]
        if d == 0:
            raise InvalidArgumentError("a bucket centroid must have at least one dimension")
        if self.running_sum is None:
            self.running_sum = np.zeros(d, dtype=np.float64)
        else:
            self.running_sum = np.array(self.running_sum, dtype=np.float64).reshape(-1)
            if self.running_sum.shape[0] != d:
                raise DimensionMismatchError(f"running_sum has dimension {self.running_sum.shape[0]}, centroid has {d}")
        self.count = int(self.count)
        self.running_sq = float(self.running_sq)
        self.inserts_since_centroid = int(self.inserts_since_centroid)
        self.extents = list(self.extents)

    @classmethod
    def new(cls, bucket_id: int, centroid: np.ndarray) -> BucketHeader:
        """An empty bucket with centroid ``centroid``."""
        return cls(bucket_id, centroid)

    @property
    def dim(self) -> int:
        return int(self.centroid.shape[0])

    # --- statistics ---------------------------------------------------------------------------
    def _as_rows(self, vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise DimensionMismatchError(f"vectors have shape {v.shape}, bucket dimension is {self.dim}")
        return v

    @staticmethod
    def _sums(v: np.ndarray) -> tuple[np.ndarray, float]:
        """(sum of rows, sum of squared norms), accumulated in float64 a block of rows at a time (a large
        batch is never copied to float64 whole)."""
        total = np.zeros(v.shape[1], dtype=np.float64)
        sq = 0.0
        for start in range(0, v.shape[0], _SUM_BLOCK):
            block = v[start : start + _SUM_BLOCK].astype(np.float64, copy=False)
            total += block.sum(axis=0)
            sq += float(np.einsum("ij,ij->", block, block))
        return total, sq

    def add(self, vectors: np.ndarray) -> None:
        """Account for newly inserted ``vectors`` ((n, d) or (d,)): count, sums, inserts since centroid."""
        v = self._as_rows(vectors)
        if v.shape[0] == 0:
            return
        total, sq = self._sums(v)
        self.running_sum = self.running_sum + total
        self.running_sq += sq
        self.count += v.shape[0]
        self.inserts_since_centroid += v.shape[0]

    def remove(self, vectors: np.ndarray) -> None:
        """Account for deleted (or moved-away) ``vectors`` that were live in this bucket."""
        v = self._as_rows(vectors)
        n = v.shape[0]
        if n == 0:
            return
        if n > self.count:
            raise InvalidArgumentError(f"cannot remove {n} vectors from bucket {self.bucket_id} of {self.count}")
        self.count -= n
        if self.count == 0:
            self.running_sum = np.zeros(self.dim, dtype=np.float64)
            self.running_sq = 0.0
        else:
            total, sq = self._sums(v)
            self.running_sum = self.running_sum - total
            self.running_sq -= sq

    def mean(self) -> np.ndarray:
        """μ = running_sum / n as float32 (a copy of the centroid when empty)."""
        if self.count == 0:
            return self.centroid.copy()
        return (self.running_sum / self.count).astype(np.float32)

    def drift(self) -> float:
        """δ = ‖μ − c‖ (0 when empty)."""
        if self.count == 0:
            return 0.0
        diff = self.running_sum / self.count - self.centroid.astype(np.float64)
        return float(np.sqrt(diff @ diff))

    def spread(self) -> float:
        """r = sqrt(max(running_sq/n − ‖μ‖², 0)): the RMS distance of the live vectors to their mean."""
        if self.count == 0:
            return 0.0
        mu = self.running_sum / self.count
        return float(np.sqrt(max(self.running_sq / self.count - float(mu @ mu), 0.0)))

    def copy(self) -> BucketHeader:
        """A deep copy (arrays and the extent list are not shared)."""
        return BucketHeader(
            self.bucket_id,
            self.centroid.copy(),
            self.count,
            self.running_sum.copy(),
            self.running_sq,
            self.inserts_since_centroid,
            list(self.extents),
        )

    # --- serialisation ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        ext = np.array([(e.segment_id, e.start, e.count) for e in self.extents], dtype=_EXTENT_DTYPE)
        head = _HEAD.pack(
            FORMAT_VERSION,
            0,
            0,
            len(self.extents),
            self.bucket_id,
            self.count,
            self.inserts_since_centroid,
            self.running_sq,
        )
        return b"".join(
            (
                head,
                self.centroid.astype("<f4", copy=False).tobytes(),
                self.running_sum.astype("<f8", copy=False).tobytes(),
                ext.tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> BucketHeader:
        if dim < 1:
            raise InvalidArgumentError(f"dim must be >= 1, got {dim}")
        buf = memoryview(data)
        if len(buf) < _HEAD.size:
            raise CorruptionError(f"bucket header is {len(buf)} bytes, shorter than its {_HEAD.size}-byte head")
        version, flags, _reserved, n_ext, bucket_id, count, inserts, running_sq = _HEAD.unpack_from(buf, 0)
        if version != FORMAT_VERSION:
            raise CorruptionError(f"bucket header has format version {version}, expected {FORMAT_VERSION}")
        expected = _HEAD.size + dim * 12 + n_ext * _EXTENT_DTYPE.itemsize
        if len(buf) != expected:
            raise CorruptionError(
                f"bucket header {bucket_id} is {len(buf)} bytes, expected {expected} for dim {dim} and {n_ext} extents"
            )
        if flags != 0 or count < 0 or inserts < 0:
            raise CorruptionError(f"bucket header {bucket_id} has invalid fields (flags {flags}, count {count})")
        off = _HEAD.size
        centroid = np.frombuffer(buf, dtype="<f4", count=dim, offset=off).astype(np.float32)
        off += dim * 4
        running_sum = np.frombuffer(buf, dtype="<f8", count=dim, offset=off).astype(np.float64)
        off += dim * 8
        ext = np.frombuffer(buf, dtype=_EXTENT_DTYPE, count=n_ext, offset=off)
        extents = [Extent(int(s), int(st), int(c)) for s, st, c in ext.tolist()]
        return cls(bucket_id, centroid, count, running_sum, running_sq, inserts, extents)


def routing_table(headers: Iterable[BucketHeader], *, lam: float, tau: float, dim: int | None = None) -> RoutingTable:
    """The ``RoutingTable`` of ``headers`` (in iteration order).  ``dim`` is only needed when there are
    no headers (an empty table of that dimension)."""
    hs = list(headers)
    if not hs:
        if dim is None or dim < 1:
            raise InvalidArgumentError("routing_table needs at least one header, or dim for an empty table")
        z = np.zeros((0, dim), dtype=np.float32)
        e = np.zeros(0)
        return RoutingTable.build(np.zeros(0, np.int64), z, z, e, e, e.astype(np.float32), lam=lam, tau=tau)
    d = hs[0].dim
    if any(h.dim != d for h in hs) or (dim is not None and dim != d):
        raise DimensionMismatchError("bucket headers have different dimensions")
    nb = len(hs)
    ids = np.fromiter((h.bucket_id for h in hs), dtype=np.int64, count=nb)
    centroids = np.stack([h.centroid for h in hs])
    sums = np.stack([h.running_sum for h in hs])
    sq = np.fromiter((h.running_sq for h in hs), dtype=np.float64, count=nb)
    inserts = np.fromiter((h.inserts_since_centroid for h in hs), dtype=np.float64, count=nb)
    counts = np.fromiter((h.count for h in hs), dtype=np.float64, count=nb)
    live = counts > 0
    safe = np.where(live, counts, 1.0)
    mu64 = sums / safe[:, None]
    means = np.where(live[:, None], mu64.astype(np.float32), centroids)
    var = sq / safe - np.einsum("ij,ij->i", mu64, mu64)
    spreads = np.where(live, np.sqrt(np.maximum(var, 0.0)), 0.0).astype(np.float32)
    return RoutingTable.build(ids, centroids, means, inserts, counts, spreads, lam=lam, tau=tau)
