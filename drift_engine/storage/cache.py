"""S3-FIFO cache bounded in bytes (Yang et al., "FIFO queues are all you need", SOSP'23).

Contract:

* Three FIFO queues: a small queue S (``small_ratio`` of the byte capacity, 10 % by default), a main
  queue M, and a ghost queue G that remembers only the keys recently evicted from S.  G is bounded
  to about as many entries as M holds: the sizes of the remembered keys sum to at most M's byte
  budget (each key counted as at least one byte).
* A new key goes to S, or straight to M when G remembers it.  Each resident entry has a frequency
  0..3, bumped by every ``get`` hit (no queue movement on a hit, so a hit is O(1)).
* Eviction runs from S while S holds at least its byte budget (or M is empty): the oldest entry of S
  moves to M with its frequency reset when it was hit while in S, otherwise it is evicted and its
  key remembered in G.  Otherwise it runs from M: the oldest entry of M with frequency > 0 has its
  frequency decremented and is reinserted at M's head; one with frequency 0 is evicted.  Repeated
  one-pass scans therefore churn through S and never displace a hot working set in M.
* ``size_bytes <= capacity_bytes`` holds whenever no call is running inside the cache (every call
  restores it before releasing the lock).  A value larger than the whole capacity is not cached.
* ``hits`` / ``misses`` count ``get`` and ``get_or_load`` lookups; ``evictions`` counts entries
  dropped to make room (not ``invalidate`` / ``clear``).

Thread-safety: one lock guards all state; every operation is O(1) amortised.  ``get_or_load`` runs
the loader outside the lock; concurrent callers for the same missing key wait for the one loader
already running instead of loading again (when it fails, the next caller loads itself).  A value
loaded while ``invalidate(key)`` or ``clear()`` ran is returned to its caller but not cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from drift_engine.errors import InvalidArgumentError

_MAX_FREQ = 3


class _Entry:
    __slots__ = ("freq", "in_small", "nbytes", "value")

    def __init__(self, value: Any, nbytes: int, in_small: bool) -> None:
        self.value = value
        self.nbytes = nbytes
        self.freq = 0
        self.in_small = in_small


class _Load:
    """One in-flight ``get_or_load``: waiters block on ``done``; ``valid`` is cleared by invalidation."""

    __slots__ = ("done", "ok", "valid", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.valid = True
        self.value: Any = None


class S3FIFOCache:
    """Byte-bounded S3-FIFO cache; see the module docstring."""

    def __init__(self, capacity_bytes: int, small_ratio: float = 0.1) -> None:
        if capacity_bytes < 0:
            raise InvalidArgumentError(f"cache capacity must be >= 0 bytes, got {capacity_bytes}")
        if not 0.0 < small_ratio < 1.0:
            raise InvalidArgumentError(f"cache small_ratio must be in (0, 1), got {small_ratio}")
        self.capacity_bytes = int(capacity_bytes)
        self._small_cap = int(capacity_bytes * small_ratio)
        self._ghost_cap = self.capacity_bytes - self._small_cap
        self._lock = threading.Lock()
        self._small: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._main: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._ghost: OrderedDict[Hashable, int] = OrderedDict()  # key -> remembered size (>= 1)
        self._loads: dict[Hashable, _Load] = {}
        self._small_bytes = 0
        self._ghost_bytes = 0
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # -- lookups --------------------------------------------------------------------------------
    def _lookup(self, key: Hashable) -> _Entry | None:
        entry = self._small.get(key)
        return entry if entry is not None else self._main.get(key)

    def get(self, key: Hashable) -> Any | None:
        """The cached value, or None (counted as a miss)."""
        with self._lock:
            entry = self._lookup(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            if entry.freq < _MAX_FREQ:
                entry.freq += 1
            return entry.value

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._small or key in self._main

    def __len__(self) -> int:
        with self._lock:
            return len(self._small) + len(self._main)

    # -- insertion / eviction -------------------------------------------------------------------
    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Insert or replace ``key``; evicts as needed.  Larger than the capacity: not cached."""
        if nbytes < 0:
            raise InvalidArgumentError(f"cache entry size must be >= 0 bytes, got {nbytes}")
        with self._lock:
            self._put_locked(key, value, int(nbytes))

    def _put_locked(self, key: Hashable, value: Any, nbytes: int) -> None:
        entry = self._lookup(key)
        if nbytes > self.capacity_bytes:
            if entry is not None:
                self._remove(key, entry)
            return
        if entry is not None:
            delta = nbytes - entry.nbytes
            entry.value = value
            entry.nbytes = nbytes
            self.size_bytes += delta
            if entry.in_small:
                self._small_bytes += delta
        else:
            remembered = self._ghost.pop(key, None)
            if remembered is not None:
                self._ghost_bytes -= remembered
                self._main[key] = _Entry(value, nbytes, in_small=False)
            else:
                self._small[key] = _Entry(value, nbytes, in_small=True)
                self._small_bytes += nbytes
            self.size_bytes += nbytes
        while self.size_bytes > self.capacity_bytes:
            self._evict_one()

    def _remove(self, key: Hashable, entry: _Entry) -> None:
        if entry.in_small:
            del self._small[key]
            self._small_bytes -= entry.nbytes
        else:
            del self._main[key]
        self.size_bytes -= entry.nbytes

    def _remember(self, key: Hashable, nbytes: int) -> None:
        size = max(nbytes, 1)
        self._ghost[key] = size
        self._ghost_bytes += size
        while self._ghost_bytes > self._ghost_cap and self._ghost:
            _, old = self._ghost.popitem(last=False)
            self._ghost_bytes -= old

    def _evict_one(self) -> None:
        """Evict exactly one entry (moving S -> M and reinserting in M as the algorithm says)."""
        while True:
            if self._small and (self._small_bytes >= self._small_cap or not self._main):
                key, entry = self._small.popitem(last=False)
                self._small_bytes -= entry.nbytes
                if entry.freq > 0:
                    entry.freq = 0
                    entry.in_small = False
                    self._main[key] = entry
                    continue
                self.size_bytes -= entry.nbytes
                self.evictions += 1
                self._remember(key, entry.nbytes)
                return
            if not self._main:
                return  # nothing left (cannot happen while size_bytes > capacity_bytes >= 0)
            key, entry = next(iter(self._main.items()))
            if entry.freq > 0:
                entry.freq -= 1
                self._main.move_to_end(key)
                continue
            del self._main[key]
            self.size_bytes -= entry.nbytes
            self.evictions += 1
            return

    # -- loading --------------------------------------------------------------------------------
    def get_or_load(self, key: Hashable, loader: Callable[[], tuple[Any, int]]) -> Any:
        """The cached value, else ``loader()`` -> (value, nbytes), cached and returned."""
        while True:
            with self._lock:
                entry = self._lookup(key)
                if entry is not None:
                    self.hits += 1
                    if entry.freq < _MAX_FREQ:
                        entry.freq += 1
                    return entry.value
                pending = self._loads.get(key)
                if pending is None:
                    self.misses += 1
                    pending = self._loads[key] = _Load()
                    owner = True
                else:
                    owner = False
            if not owner:
                pending.done.wait()
                if pending.ok:
                    return pending.value
                continue  # the loader failed: try again (probably loading ourselves)
            try:
                value, nbytes = loader()
                if nbytes < 0:
                    raise InvalidArgumentError(f"cache loader returned a negative size {nbytes} for {key!r}")
            except BaseException:
                with self._lock:
                    self._loads.pop(key, None)
                pending.done.set()
                raise
            with self._lock:
                if self._loads.get(key) is pending:
                    del self._loads[key]
                if pending.valid:
                    self._put_locked(key, value, int(nbytes))
            pending.value = value
            pending.ok = True
            pending.done.set()
            return value

    # -- removal --------------------------------------------------------------------------------
    def invalidate(self, key: Hashable) -> None:
        """Drop ``key`` (and forget it in the ghost queue); a load in flight will not be cached."""
        with self._lock:
            entry = self._lookup(key)
            if entry is not None:
                self._remove(key, entry)
            remembered = self._ghost.pop(key, None)
            if remembered is not None:
                self._ghost_bytes -= remembered
            pending = self._loads.pop(key, None)
            if pending is not None:
                pending.valid = False

    def clear(self) -> None:
        """Drop every entry and the ghost queue; counters are kept."""
        with self._lock:
            self._small.clear()
            self._main.clear()
            self._ghost.clear()
            for pending in self._loads.values():
                pending.valid = False
            self._loads.clear()
            self._small_bytes = self._ghost_bytes = self.size_bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "size_bytes": self.size_bytes,
                "capacity_bytes": self.capacity_bytes,
                "entries": len(self._small) + len(self._main),
            }
