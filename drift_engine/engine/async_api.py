"""``*_async`` twins of a collection's blocking methods, run on the engine's thread pool.

Contract: each ``x_async(*args, **kwargs)`` awaits ``x(*args, **kwargs)`` run in the collection's executor
(``_executor``; the loop's default executor when None), so the event loop never blocks on engine work;
kernels release the GIL, so concurrent awaits use several cores. Results and errors are ``x``'s.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from drift_engine.engine.results import GetResult, SearchResult


class AsyncTwins:
    """Mixin of ``Collection``: the async twins of its sync methods."""

    _executor: Executor | None

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def upsert_async(self, *args: Any, **kwargs: Any) -> int:
        return await self._run(self.upsert, *args, **kwargs)  # type: ignore[attr-defined]

    async def insert_async(self, *args: Any, **kwargs: Any) -> int:
        return await self._run(self.insert, *args, **kwargs)  # type: ignore[attr-defined]

    async def delete_async(self, *args: Any, **kwargs: Any) -> int:
        return await self._run(self.delete, *args, **kwargs)  # type: ignore[attr-defined]

    async def search_async(self, *args: Any, **kwargs: Any) -> SearchResult:
        return await self._run(self.search, *args, **kwargs)  # type: ignore[attr-defined]

    async def search_batch_async(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        return await self._run(self.search_batch, *args, **kwargs)  # type: ignore[attr-defined]

    async def get_async(self, *args: Any, **kwargs: Any) -> GetResult:
        return await self._run(self.get, *args, **kwargs)  # type: ignore[attr-defined]

    async def train_async(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._run(self.train, *args, **kwargs)  # type: ignore[attr-defined]

    async def flush_async(self) -> int:
        return await self._run(self.flush)  # type: ignore[attr-defined]

    async def maintain_async(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._run(self.maintain, *args, **kwargs)  # type: ignore[attr-defined]
