"""The engine's streaming search (DESIGN §6.5) on top of ``Collection.search``: rows in non-decreasing
distance, in rounds of widening searches.

Contract of ``SearchStreamer`` (embedded: ``Collection.search_stream``; the server's ``SearchStream`` and
the fast path's cursors are meant to forward to it):

* Round ``r`` asks ``col.search`` for ``k_r = k * 2**r`` rows (capped at ``max_k``) with ``nprobe`` and
  ``ef`` widened by the same factor, the same ``rerank`` and filter. Round 0 is exactly ``col.search`` with
  the caller's arguments (unset knobs = the collection's parameters, ``nprobe`` 0 = the engine's auto).
* Rows are emitted in **non-decreasing distance** and an id is **never emitted twice**. A row of a wider
  round that is closer than the last row already emitted cannot be placed in order any more: it is not
  emitted and is counted in ``skipped`` (only an approximate earlier round can cause that).
* The stream ends (``done`` with ``end_reason``) when a row is farther than ``max_distance``
  (``"max_distance"``), ``limit`` rows were emitted (``"limit"``), a round found every row it could
  (``"exhausted"``: fewer than ``k_r`` rows at full width, or as many rows as the collection holds), or
  ``k_r`` reached ``max_k`` (``"max_k"``: the engine answers at most ``MAX_K`` rows per search).
* ``next_batch()`` runs rounds only until it has a row to return, so the first batch is ready as soon as
  the first round is (the same work as a unary ``search`` of the same ``k``). It blocks (CPU): servers call
  it on a worker thread. A streamer is used by one caller at a time; dropping it frees everything.
* Payloads, when asked for, are read per batch (the latest committed payload of each id).
* ``close()`` (from any thread) ends the stream: no further round starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from drift_engine.config import MAX_K
from drift_engine.engine.search import auto_nprobe
from drift_engine.engine.validate import finite_or_none
from drift_engine.errors import InvalidArgumentError
from drift_engine.results import StreamBatch, StreamHit

DEFAULT_BATCH = 10
MAX_BATCH_ROWS = 10_000
_MAX_NPROBE = 1_000_000
_MAX_EF = 100_000


def _count(name: str, value: Any, low: int, high: int, default: int | None) -> int | None:
    """``value`` checked against [low, high]; None (and 0 when ``default`` is not None: proto3's unset) = default."""
    if value is None or (value == 0 and default is not None):
        return default
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    if not (low <= int(value) <= high):
        raise InvalidArgumentError(f"{name}={value} is out of range [{low}, {high}]")
    return int(value)


class SearchStreamer:
    """Rounds of widening searches over one collection; see the module docstring."""

    def __init__(
        self,
        col: Any,
        query: Any,
        *,
        k: int | None = None,
        nprobe: int | None = None,
        rerank: int | None = None,
        ef: int | None = None,
        filter: dict[str, Any] | None = None,
        max_distance: float | None = None,
        batch_size: int | None = None,
        limit: int | None = None,
        with_payloads: bool = False,
        max_k: int = MAX_K,
    ) -> None:
        self._col = col
        self._query = query
        self._batch = _count("batch_size", batch_size, 1, MAX_BATCH_ROWS, DEFAULT_BATCH)
        self._max_k = max(1, min(int(max_k), MAX_K))
        self._k = _count("k", k, 1, self._max_k, min(self._batch, self._max_k))
        self._limit = _count("limit", limit, 1, 1 << 62, 0)
        self._bound = finite_or_none(max_distance, "max_distance")
        self._nprobe = _count("nprobe", nprobe, 1, _MAX_NPROBE, None)
        self._ef = _count("ef", ef, 1, _MAX_EF, None)
        self._rerank = rerank
        self._filter = filter
        self._with_payloads = with_payloads
        self._emitted: set[int] = set()
        self._passed: set[int] = set()  # counted as skipped already
        self._pending_ids = np.empty(0, dtype=np.int64)  # rows accepted, not yet returned (in order)
        self._pending_d = np.empty(0, dtype=np.float32)
        self._last = -np.inf
        self._full_width = False
        self._grow = False
        self.rounds = 0
        self.skipped = 0
        self.sent = 0
        self.end_reason = ""

    @property
    def done(self) -> bool:
        return bool(self.end_reason) and not self._pending_ids.size

    def _finish(self, reason: str) -> None:
        if not self.end_reason:
            self.end_reason = reason

    def close(self) -> None:
        """Stop: no further round starts (one already running on another thread finishes on its own)."""
        self._finish("closed")
        self._pending_ids = self._pending_ids[:0]
        self._pending_d = self._pending_d[:0]

    def _widen(self) -> None:
        if self._nprobe is None or self._ef is None:  # the first round used the collection's parameters
            params = self._col.params()
            if self._nprobe is None:
                self._nprobe = int(params["nprobe"]) or auto_nprobe(len(self._col.snapshot.buckets))
            if self._ef is None:
                self._ef = int(params["ef"])
        self._k *= 2
        self._nprobe = min(_MAX_NPROBE, self._nprobe * 2)
        self._ef = min(_MAX_EF, self._ef * 2)

    def _round(self) -> None:
        if self._grow:  # widened lazily, so the batch of the previous round never waits for it
            self._widen()
            self._grow = False
        k_r = min(self._k, self._max_k)
        nprobe = _MAX_NPROBE if self._full_width else self._nprobe
        ef = None if self._ef is None else max(self._ef, k_r)
        res = self._col.search(self._query, k=k_r, nprobe=nprobe, rerank=self._rerank, filter=self._filter, ef=ef)
        self.rounds += 1
        self._accept(res.ids, res.distances)
        if self.end_reason:
            return
        n = len(res)
        if n < k_r:
            if self._full_width:
                self._finish("exhausted")
            self._full_width = True  # a short round at partial width: try every bucket before giving up
        elif n >= len(self._col):
            self._finish("exhausted")
        elif k_r >= self._max_k:
            self._finish("max_k")
        else:
            self._grow = True

    def _accept(self, ids: np.ndarray, dists: np.ndarray) -> None:
        """Queue the rows of a round (sorted by distance) that keep the stream ordered and unique."""
        start = 0 if self._last == -np.inf else int(np.searchsorted(dists, self._last, side="left"))
        for ident in ids[:start].tolist():  # closer than a row already sent: cannot be placed any more
            if ident not in self._emitted and ident not in self._passed:
                self._passed.add(ident)
                self.skipped += 1
        ids, dists = ids[start:], dists[start:]
        if self._emitted and ids.size:
            fresh = np.fromiter((i not in self._emitted for i in ids.tolist()), dtype=bool, count=ids.size)
            ids, dists = ids[fresh], dists[fresh]
        if self._bound is not None:
            end = int(np.searchsorted(dists, self._bound, side="right"))
            if end < ids.size:
                ids, dists = ids[:end], dists[:end]
                self._finish("max_distance")
        if self._limit and len(self._emitted) + ids.size >= self._limit:
            ids, dists = ids[: self._limit - len(self._emitted)], dists[: self._limit - len(self._emitted)]
            self._finish("limit")
        if ids.size:
            self._pending_ids, self._pending_d = ids, dists  # a round runs only when nothing is pending
            self._emitted.update(ids.tolist())
            self._last = float(dists[-1])

    def next_batch(self) -> StreamBatch:
        """The next rows (at most ``batch_size``); ``done`` is set on the last batch (which may be empty)."""
        while not self._pending_ids.size and not self.end_reason:
            self._round()
        take = min(self._batch, self._pending_ids.size)
        ids, self._pending_ids = self._pending_ids[:take], self._pending_ids[take:]
        dists, self._pending_d = self._pending_d[:take], self._pending_d[take:]
        payloads = None
        if self._with_payloads:
            payloads = self._payloads(ids)
        self.sent += take
        return StreamBatch(ids, dists, payloads, self.rounds, self.skipped, self.done, self.end_reason)

    def _payloads(self, ids: np.ndarray) -> list[dict | None]:
        if ids.size == 0:
            return []
        got = self._col.get(ids)
        by_id = dict(zip(got.ids.tolist(), got.payloads, strict=True))
        return [by_id.get(i) for i in ids.tolist()]

    def __iter__(self) -> Iterator[StreamBatch]:
        while True:
            batch = self.next_batch()
            yield batch
            if batch.done:
                return


def search_stream(col: Any, query: Any, k: int | None = None, **options: Any) -> Iterator[StreamHit]:
    """Embedded streaming search: ``StreamHit`` rows of ``col`` (a ``Collection``), lazily, in distance order.

    Same options and semantics as the remote ``RemoteCollection.search_stream`` (see ``SearchStreamer``).
    Closing the generator (or dropping it) ends the stream: no further round starts.
    """
    streamer = SearchStreamer(col, query, k=k, **options)
    try:
        for batch in streamer:
            yield from batch.hits()
    finally:
        streamer.close()
