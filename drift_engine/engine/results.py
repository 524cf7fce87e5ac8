"""Result types returned by searches and point lookups (embedded and remote alike)."""

from __future__ import annotations

from collections.abc import Callable

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
    """``ids`` found (request order), their ``vectors`` (float32, one row per id) and ``payloads``."""

    __slots__ = ("ids", "payloads", "vectors")

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict | None]) -> None:
        self.ids = ids
        self.vectors = vectors
        self.payloads = payloads

    def __len__(self) -> int:
        return int(self.ids.size)

    def __repr__(self) -> str:
        return f"GetResult(ids={self.ids.tolist()})"
