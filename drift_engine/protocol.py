"""The collection API as a ``typing.Protocol``: what every kind of collection handle offers.

Contract: ``CollectionAPI`` is implemented by the embedded ``Collection`` (``drift_engine.api``) and by the
remote ``RemoteCollection`` (``drift_engine.server.client``); ``AsyncCollectionAPI`` by the asyncio
``AsyncRemoteCollection`` (``drift_engine.server.aclient``), with the same methods as coroutines (``count()``
for ``len``; ``search_stream`` / ``scan`` as async iterators). Same arguments, same result types
(``drift_engine.results``), same errors (``drift_engine.errors``). An implementation may add optional
keyword arguments (e.g. ``with_payloads`` on remote searches), never drop or rename these.
``tests/unit/test_protocol.py`` checks the signatures; ``tests/integration/test_contract.py`` runs one
behavioural suite against every implementation. Importing this module loads numpy only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from drift_engine.results import GetResult, SearchResult, StreamHit


@runtime_checkable
class CollectionAPI(Protocol):
    name: str
    dim: int
    metric: str

    def __len__(self) -> int: ...

    def upsert(self, ids: Any, vectors: Any, payloads: Any = None, *, durability: str | None = None) -> int: ...

    def insert(self, ids: Any, vectors: Any, payloads: Any = None, *, durability: str | None = None) -> int: ...

    def delete(self, ids: Any, *, durability: str | None = None) -> int: ...

    def flush(self) -> int: ...

    def train(
        self, n_buckets: int | None = None, *, progress: Callable[[str, float], None] | None = None
    ) -> dict[str, Any]: ...

    def maintain(self, max_jobs: int | None = None) -> dict[str, Any]: ...

    def get(self, ids: Any) -> GetResult: ...

    def search(
        self,
        query: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
    ) -> SearchResult: ...

    def search_batch(
        self,
        queries: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def search_stream(self, query: Any, k: int | None = None, **options: Any) -> Iterable[StreamHit]: ...

    def scan(
        self, batch_size: int | None = None, *, vectors: bool = True, payloads: bool = True
    ) -> Iterator[GetResult]: ...

    def set_params(self, **params: Any) -> dict[str, Any]: ...

    def params(self) -> dict[str, Any]: ...

    def stats(self, buckets: bool = False) -> dict[str, Any]: ...

    def bucket_stats(self) -> list[dict[str, Any]]: ...


@runtime_checkable
class AsyncCollectionAPI(Protocol):
    name: str
    dim: int
    metric: str

    async def count(self) -> int: ...

    async def upsert(self, ids: Any, vectors: Any, payloads: Any = None, *, durability: str | None = None) -> int: ...

    async def insert(self, ids: Any, vectors: Any, payloads: Any = None, *, durability: str | None = None) -> int: ...

    async def delete(self, ids: Any, *, durability: str | None = None) -> int: ...

    async def flush(self) -> int: ...

    async def train(
        self, n_buckets: int | None = None, *, progress: Callable[[str, float], None] | None = None
    ) -> dict[str, Any]: ...

    async def maintain(self, max_jobs: int | None = None) -> dict[str, Any]: ...

    async def get(self, ids: Any) -> GetResult: ...

    async def search(
        self,
        query: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
    ) -> SearchResult: ...

    async def search_batch(
        self,
        queries: Any,
        k: int = 10,
        nprobe: int | None = None,
        rerank: int | None = None,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def search_stream(self, query: Any, k: int | None = None, **options: Any) -> AsyncIterator[StreamHit]: ...

    def scan(
        self, batch_size: int | None = None, *, vectors: bool = True, payloads: bool = True
    ) -> AsyncIterator[GetResult]: ...

    async def set_params(self, **params: Any) -> dict[str, Any]: ...

    async def params(self) -> dict[str, Any]: ...

    async def stats(self, buckets: bool = False) -> dict[str, Any]: ...

    async def bucket_stats(self) -> list[dict[str, Any]]: ...
