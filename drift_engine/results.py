"""Result types of searches, streaming searches and point lookups, embedded and remote alike.

Contract: plain data (numpy arrays, dicts); importing this module loads numpy only, so clients (the FDW in
PostgreSQL, ``server/client.py``) use these types without importing ``engine/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class SearchResult:
    """``ids`` (int64), ``distances`` (float32, ascending, pgvector semantics) and ``payloads``.

    Payloads are fetched on first access (one LMDB read for the k ids), so a search that never looks at
    them does not pay for them; they reflect the latest committed payload of each id.
    """

    __slots__ = ("_loader", "_payloads", "distances", "ids")

    def __init__(
        self,
        ids: np.ndarray,
        distances: np.ndarray,
        loader: Callable[[np.ndarray], list[dict | None]] | None = None,
        payloads: list[dict | None] | None = None,
    ) -> None:
        self.ids = ids
        self.distances = distances
        self._loader = loader
        self._payloads = payloads

    @property
    def payloads(self) -> list[dict | None]:
        if self._payloads is None:
            self._payloads = self._loader(self.ids) if self._loader is not None else [None] * len(self.ids)
        return self._payloads

    def __len__(self) -> int:
        return int(self.ids.size)

    def __iter__(self):
        return iter(zip(self.ids.tolist(), self.distances.tolist(), strict=True))

    def __repr__(self) -> str:
        return f"SearchResult(ids={self.ids.tolist()}, distances={np.round(self.distances, 4).tolist()})"


class GetResult:
    """``ids`` found (request order), their ``vectors`` (float32, one row per id) and ``payloads``.

    ``read_lsn`` (0 when unknown) bounds the rows' versions: a row changed after this read has a version
    above it (engine transactions use it to detect write-write conflicts, ``engine.txn``)."""

    __slots__ = ("ids", "payloads", "read_lsn", "vectors")

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict | None], read_lsn: int = 0) -> None:
        self.ids = ids
        self.vectors = vectors
        self.payloads = payloads
        self.read_lsn = read_lsn

    def __len__(self) -> int:
        return int(self.ids.size)

    def __repr__(self) -> str:
        return f"GetResult(ids={self.ids.tolist()})"


class StreamHit(NamedTuple):
    """One row of a streaming search."""

    id: int
    distance: float
    payload: dict | None = None


@dataclass
class StreamBatch:
    ids: np.ndarray
    distances: np.ndarray
    payloads: list[dict | None] | None
    round: int
    skipped: int
    done: bool
    end_reason: str = ""

    def hits(self) -> list[StreamHit]:
        payloads = self.payloads if self.payloads is not None else [None] * len(self.ids)
        return [
            StreamHit(i, d, p) for i, d, p in zip(self.ids.tolist(), self.distances.tolist(), payloads, strict=True)
        ]
