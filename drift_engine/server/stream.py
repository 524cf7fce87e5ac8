"""Open stream cursors of the fast paths (the streaming search itself is ``drift_engine.engine.stream``).

Contract of ``CursorTable`` (the fast path's open streams, keyed by a random 63-bit cursor id):

* At most ``max_total`` cursors, and at most ``max_per_client`` per client (the ZeroMQ peer, i.e. one
  connection). ``add`` never refuses because of those caps: it first drops cursors idle longer than
  ``idle_s``, then evicts the least recently used *idle* cursor of the same client when that client is at its
  cap, and when the table is full the least recently used idle cursor of the client holding the most. Only when
  every cursor is serving a request at this moment (at most one per server worker) does ``add`` raise
  ``RequestTooLargeError``. An evicted or expired cursor is closed; asking for it answers "unknown or expired".
* ``acquire`` marks a cursor busy (one request at a time) and ``release`` marks it used now (or drops it when
  the stream is done); ``drop`` frees one, ``drop_client`` those of one client, ``close_all`` all.
  Thread-safe; ``on_count(delta)`` is called with every change of the number of open cursors (Health's
  ``active_streams``).
* Cursors never touch unary calls: a plain search needs no cursor and never fails for lack of one.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drift_engine.engine.stream import DEFAULT_BATCH, MAX_BATCH_ROWS, SearchStreamer, search_stream
from drift_engine.errors import InvalidArgumentError, RequestTooLargeError

__all__ = [
    "DEFAULT_BATCH",
    "MAX_BATCH_ROWS",
    "CursorTable",
    "SearchStreamer",
    "next_from_cursor",
    "open_cursor",
    "search_stream",
]


@dataclass
class _Cursor:
    streamer: SearchStreamer
    client: bytes
    used: float = field(default_factory=time.monotonic)
    busy: bool = False


class CursorTable:
    """Open stream cursors with a global and a per-client cap and LRU eviction of idle ones (module docstring)."""

    def __init__(
        self,
        *,
        max_total: int = 1024,
        max_per_client: int = 64,
        idle_s: float = 60.0,
        on_count: Callable[[int], None] | None = None,
    ) -> None:
        if max_total < 1 or max_per_client < 1:
            raise InvalidArgumentError(f"cursor caps must be >= 1, got {max_total} and {max_per_client}")
        self.max_total = max_total
        self.max_per_client = min(max_per_client, max_total)
        self.idle_s = idle_s
        self._on_count = on_count
        self._lock = threading.Lock()
        self._cursors: OrderedDict[int, _Cursor] = OrderedDict()  # least recently used first
        self._per_client: dict[bytes, int] = {}
        self._swept = 0.0
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._cursors)

    def count(self, client: bytes) -> int:
        return self._per_client.get(client, 0)

    # ------------------------------------------------------------------ internals (lock held)
    def _pop_locked(self, cursor_id: int) -> _Cursor | None:
        cur = self._cursors.pop(cursor_id, None)
        if cur is None:
            return None
        left = self._per_client[cur.client] - 1
        if left:
            self._per_client[cur.client] = left
        else:
            del self._per_client[cur.client]
        if self._on_count is not None:
            self._on_count(-1)
        cur.streamer.close()
        return cur

    def _sweep_locked(self, now: float) -> None:
        if now - self._swept < min(1.0, self.idle_s / 2) and len(self._cursors) < self.max_total:
            return
        self._swept = now
        for cursor_id, cur in list(self._cursors.items()):
            if now - cur.used <= self.idle_s:
                break  # in LRU order: every later one was used more recently
            if not cur.busy:
                self._pop_locked(cursor_id)
                self.expired += 1

    def _evict_locked(self, client: bytes | None) -> bool:
        """Drop the least recently used idle cursor of ``client`` (any client when None); False if none is idle."""
        for cursor_id, cur in self._cursors.items():
            if not cur.busy and (client is None or cur.client == client):
                self._pop_locked(cursor_id)
                self.evicted += 1
                return True
        return False

    # ------------------------------------------------------------------ API
    def add(self, client: bytes, streamer: SearchStreamer) -> int:
        """Register ``streamer`` for ``client``; returns its cursor id (evicting idle cursors as needed)."""
        now = time.monotonic()
        with self._lock:
            self._sweep_locked(now)
            if self.count(client) >= self.max_per_client:
                self._evict_locked(client)
            while len(self._cursors) >= self.max_total:
                heaviest = max(self._per_client, key=self._per_client.__getitem__)
                if not self._evict_locked(heaviest) and not self._evict_locked(None):
                    raise RequestTooLargeError(
                        f"all {len(self._cursors)} stream cursors of this server are serving requests",
                        hint="retry in a moment",
                    )
            cursor_id = secrets.randbits(63) or 1
            while cursor_id in self._cursors:
                cursor_id = secrets.randbits(63) or 1
            self._cursors[cursor_id] = _Cursor(streamer, client, now)
            self._per_client[client] = self.count(client) + 1
            if self._on_count is not None:
                self._on_count(1)
            return cursor_id

    def acquire(self, cursor_id: int) -> SearchStreamer:
        """The streamer of ``cursor_id``, marked busy; ``InvalidArgumentError`` if unknown, expired or busy."""
        with self._lock:
            cur = self._cursors.get(cursor_id)
            if cur is None:
                raise InvalidArgumentError(
                    f"unknown or expired stream cursor {cursor_id}", hint="open the stream again"
                )
            if cur.busy:
                raise InvalidArgumentError(f"stream cursor {cursor_id} is already serving a request")
            cur.busy = True
            return cur.streamer

    def release(self, cursor_id: int, *, done: bool) -> None:
        """End a request on ``cursor_id``: drop it when ``done``, else mark it used now."""
        with self._lock:
            cur = self._cursors.get(cursor_id)
            if cur is None:
                return
            cur.busy = False
            if done:
                self._pop_locked(cursor_id)
            else:
                cur.used = time.monotonic()
                self._cursors.move_to_end(cursor_id)

    def drop(self, cursor_id: int) -> bool:
        with self._lock:
            return self._pop_locked(cursor_id) is not None

    def drop_client(self, client: bytes) -> int:
        """Free every cursor of ``client`` (its connection closed); returns how many."""
        with self._lock:
            mine = [cursor_id for cursor_id, cur in self._cursors.items() if cur.client == client]
            for cursor_id in mine:
                self._pop_locked(cursor_id)
            return len(mine)

    def close_all(self) -> None:
        with self._lock:
            for cursor_id in list(self._cursors):
                self._pop_locked(cursor_id)


def open_cursor(core: Any, cursors: CursorTable, client: bytes, request: Any) -> Any:
    """A fast path's ``stream_open``: run the first round; a batch that is not the last gets a cursor."""
    streamer = core.open_stream(request)
    batch = core.stream_batch(streamer)
    if not batch.done:
        batch.cursor = cursors.add(client, streamer)
    return batch


def next_from_cursor(core: Any, cursors: CursorTable, cursor_id: int) -> Any:
    """A fast path's ``stream_next``: the next batch of ``cursor_id`` (the cursor is dropped once done)."""
    streamer = cursors.acquire(cursor_id)
    done = True
    try:
        batch = core.stream_batch(streamer)
        done = batch.done
    finally:
        cursors.release(cursor_id, done=done)
    if not done:
        batch.cursor = cursor_id
    return batch
