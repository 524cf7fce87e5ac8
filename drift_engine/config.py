"""Frozen, validated settings.

Two kinds of knobs:

* ``EngineSettings``: per engine process (``Engine.open(path, **settings)``).
* ``CollectionParams``: per collection, stored in the collection's LMDB, changeable at runtime with
  ``set_params`` (except ``dim`` and ``metric``, which are fixed at creation).

Every knob has a default, a range and a one-line trade-off in ``PARAM_DOCS``/``SETTING_DOCS``. Values
are checked when set; a bad one raises ``InvalidParameterError`` naming the knob, the value and the
allowed range, and nothing changes.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from drift_engine.errors import InvalidParameterError

METRICS = ("l2", "cosine", "ip")  # the one definition: everything else imports these
DURABILITY_MODES = ("sync", "batch", "off")
MAX_DIM = 16_000
MAX_K = 10_000
MAX_BATCH = 1_000_000
COLLECTION_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,62}$")
INF = math.inf


@dataclass(frozen=True)
class _Spec:
    kind: type
    low: float
    high: float
    doc: str


PARAM_SPECS: dict[str, _Spec] = {
    "nprobe": _Spec(int, 0, 1_000_000, "buckets scanned per query (0 = auto, ~1.2 sqrt(buckets)): more = recall"),
    "rerank": _Spec(int, 1, 1_000, "candidates re-ranked exactly = rerank * k: lifts the SQ8 ceiling"),
    "ef": _Spec(int, 1, 100_000, "HNSW search breadth in the memtable: more = higher L0 recall"),
    "ef_construction": _Spec(int, 4, 10_000, "HNSW build breadth for memtables: more = better L0 graph, slower writes"),
    "target_bucket_size": _Spec(int, 8, 10_000_000, "train aims at n / target buckets: smaller = finer routing"),
    "kmeans_iters": _Spec(int, 1, 1_000, "Lloyd iterations at train: more = slightly better buckets, slower"),
    "kmeans_sample": _Spec(int, 0, 100_000_000, "vectors sampled for k-means (0 = automatic)"),
    "sq8_clip": _Spec(float, 0.0, 49.0, "percentile clipped per dimension for SQ8 ranges (outliers)"),
    "lam": _Spec(
        float, 0.0, 100.0, "drift routing: weight of bucket spread x density; > 0 = more recall per probe, more scanned"
    ),
    "tau": _Spec(
        float, 0.0, INF, "drift routing: inserts at which a centroid is routed half-way to its mean (inf = plain IVF)"
    ),
    "rows_per_segment": _Spec(int, 1024, 1 << 30, "cap on rows written into one segment file"),
    "split_factor": _Spec(
        float, 1.0, 1000.0, "split a bucket once n > split_factor x target_bucket_size: lower = finer, more moves"
    ),
    "merge_factor": _Spec(
        float, 0.0, 1.0, "scatter a bucket that shrank below merge_factor x target_bucket_size (0 = never)"
    ),
    "drift_split": _Spec(float, 0.0, 1000.0, "re-split a bucket whose drift > drift_split x spread (0 = never)"),
    "reassign_neighbors": _Spec(
        int, 0, 1024, "nearby buckets a split checks for vectors to steal (SPFresh LIRE): more = better, slower"
    ),
    "compact_extents": _Spec(
        int, 0, 1 << 20, "rewrite a bucket into one extent once it has more extents than this (0 = never)"
    ),
    "maintain_duty": _Spec(
        float, 0.0, 1.0, "share of wall time the background Maintainer may work (0 = off; maintain() still runs)"
    ),
    "maintain_interval": _Spec(float, 0.01, 3600.0, "seconds between the Maintainer's checks for pending work"),
    "memtable_max_vectors": _Spec(int, 16, 10_000_000, "writes per memtable before it is frozen and flushed"),
    "bulk_min": _Spec(int, 1, 1 << 40, "batches this large skip the memtable graph and go to L1 in one commit"),
    "auto_train_threshold": _Spec(
        int, 0, 1 << 40, "train automatically once an untrained collection holds this many (0 = never)"
    ),
}

_ALIASES = {"lambda": "lam"}


def canonical_param(name: str) -> str:
    return _ALIASES.get(name, name)


def _check(name: str, value: Any, spec: _Spec) -> Any:
    if isinstance(value, bool):
        raise InvalidParameterError(f"parameter {name!r} must be a number, got a boolean")
    try:
        converted = spec.kind(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidParameterError(f"parameter {name!r} must be {spec.kind.__name__}, got {value!r}") from None
    if spec.kind is int and isinstance(value, float) and not float(value).is_integer():
        raise InvalidParameterError(f"parameter {name!r} must be a whole number, got {value!r}")
    if spec.kind is float and math.isnan(converted):
        raise InvalidParameterError(f"parameter {name!r} must not be NaN")
    if not (spec.low <= converted <= spec.high):
        raise InvalidParameterError(
            f"parameter {name!r}={value!r} is out of range [{spec.low}, {spec.high}] ({spec.doc})"
        )
    return converted


@dataclass(frozen=True)
class CollectionParams:
    """Per-collection search/maintenance parameters (not dim/metric)."""

    nprobe: int = 0
    rerank: int = 4
    ef: int = 64
    ef_construction: int = 40
    target_bucket_size: int = 256
    kmeans_iters: int = 12
    kmeans_sample: int = 0
    sq8_clip: float = 0.05
    lam: float = 0.0
    tau: float = 100.0
    rows_per_segment: int = 1 << 20
    split_factor: float = 1.33
    merge_factor: float = 0.25
    drift_split: float = 0.1
    reassign_neighbors: int = 32
    compact_extents: int = 16
    maintain_duty: float = 0.25
    maintain_interval: float = 1.0
    memtable_max_vectors: int = 65_536
    auto_train_threshold: int = 100_000
    bulk_min: int = 10_000

    @property
    def split_size(self) -> int:
        """A bucket holding more live vectors than this is split (``split_factor`` x target)."""
        return max(2, int(self.split_factor * self.target_bucket_size))

    @property
    def merge_size(self) -> int:
        """A bucket that shrank below this many live vectors is scattered (``merge_factor`` x target)."""
        return int(self.merge_factor * self.target_bucket_size)

    def updated(self, **changes: Any) -> CollectionParams:
        """A copy with ``changes`` applied; unknown names or bad values raise and change nothing."""
        clean: dict[str, Any] = {}
        for raw_name, value in changes.items():
            name = canonical_param(raw_name)
            spec = PARAM_SPECS.get(name)
            if spec is None:
                raise InvalidParameterError(f"unknown parameter {raw_name!r}; known: {', '.join(sorted(PARAM_SPECS))}")
            clean[name] = _check(raw_name, value, spec)
        return replace(self, **clean)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionParams:
        known = {f.name for f in fields(cls)}
        return cls().updated(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class CollectionConfig:
    """Fixed identity of a collection plus its current parameters."""

    name: str
    dim: int
    metric: str
    params: CollectionParams

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "metric": self.metric, "params": self.params.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionConfig:
        return cls(data["name"], int(data["dim"]), data["metric"], CollectionParams.from_dict(data["params"]))


def validate_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME_RE.match(name):
        raise InvalidParameterError(
            f"invalid collection name {name!r}: use 1-63 characters [A-Za-z0-9_.-], starting with a letter or _"
        )
    return name


def validate_dim(dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | float) or int(dim) != dim:
        raise InvalidParameterError(f"dimension must be a whole number, got {dim!r}")
    if not (1 <= int(dim) <= MAX_DIM):
        raise InvalidParameterError(f"dimension {dim} is out of range [1, {MAX_DIM}]")
    return int(dim)


def validate_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise InvalidParameterError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return str(metric)


SETTING_DOCS: dict[str, str] = {
    "cache_bytes": "bytes of decoded segment blocks kept in RAM (S3-FIFO): more = fewer disk reads",
    "durability": "sync (fsync per commit, default) | batch (fsync every batch_ms) | off (unsafe, bulk loads)",
    "batch_ms": "group-commit window in batch mode",
    "search_threads": "threads for CPU kernels (scans release the GIL)",
}


@dataclass(frozen=True)
class EngineSettings:
    cache_bytes: int = 1 << 30
    durability: str = "sync"
    batch_ms: float = 10.0
    search_threads: int = 2

    @classmethod
    def create(cls, **settings: Any) -> EngineSettings:
        known = {f.name for f in fields(cls)}
        for name in settings:
            if name not in known:
                raise InvalidParameterError(f"unknown engine setting {name!r}; known: {', '.join(sorted(known))}")
        made = cls(**settings)
        if isinstance(made.cache_bytes, bool) or not isinstance(made.cache_bytes, int) or made.cache_bytes < 0:
            raise InvalidParameterError(f"cache_bytes must be a non-negative integer, got {made.cache_bytes!r}")
        if made.durability not in DURABILITY_MODES:
            raise InvalidParameterError(f"durability must be sync, batch or off, got {made.durability!r}")
        if not (0.1 <= float(made.batch_ms) <= 10_000):
            raise InvalidParameterError(f"batch_ms must be in [0.1, 10000], got {made.batch_ms!r}")
        if not (1 <= int(made.search_threads) <= 256):
            raise InvalidParameterError(f"search_threads must be in [1, 256], got {made.search_threads!r}")
        return made
