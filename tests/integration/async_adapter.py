"""Drive the asyncio client (``AsyncClient`` / ``AsyncRemoteCollection``) through the sync calls the contract suite
makes: each call runs on one private event loop thread, so one behavioural suite covers the async API too.

``SyncAsyncEngine(make_client)`` makes the client on its loop (a grpc.aio channel belongs to the loop it was
made on) and offers ``create_collection``, ``collection``, ``list_collections``,
``drop_collection`` and ``close``; its collections forward every method, awaiting coroutines and collecting
async iterators into lists (``len(col)`` is ``await col.count()``). Errors propagate unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from drift_engine.protocol import AsyncCollectionAPI


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="contract-async-loop", daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(_as_coro(awaitable), self.loop).result(120)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _as_coro(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _collect(it: Any) -> list[Any]:
    return [x async for x in it]


class SyncAsyncCollection:
    def __init__(self, loop: _Loop, col: AsyncCollectionAPI) -> None:
        assert isinstance(col, AsyncCollectionAPI)
        self._loop, self._col = loop, col
        self.name, self.dim, self.metric = col.name, col.dim, col.metric

    def __len__(self) -> int:
        return int(self._loop.run(self._col.count()))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._col, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            if inspect.isawaitable(out):
                return self._loop.run(out)
            if hasattr(out, "__aiter__"):
                return self._loop.run(_collect(out))
            return out

        return call


class SyncAsyncEngine:
    def __init__(self, make_client: Callable[[], Any]) -> None:
        self._loop = _Loop()

        async def make() -> Any:
            return make_client()

        self._client = self._loop.run(make())

    def create_collection(self, name: str, dim: int, metric: str = "l2", **params: Any) -> SyncAsyncCollection:
        return SyncAsyncCollection(
            self._loop, self._loop.run(self._client.create_collection(name, dim, metric, **params))
        )

    def collection(self, name: str) -> SyncAsyncCollection:
        return SyncAsyncCollection(self._loop, self._loop.run(self._client.collection(name)))

    def list_collections(self) -> list[str]:
        return self._loop.run(self._client.list_collections())

    def drop_collection(self, name: str) -> None:
        self._loop.run(self._client.drop_collection(name))

    def close(self) -> None:
        try:
            self._loop.run(self._client.close())
        finally:
            self._loop.stop()
