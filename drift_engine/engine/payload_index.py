"""In-memory inverted index over payload values, for equality filters.

Contract: ``(key, canonical JSON value) -> set of ids`` for every top-level scalar field of every live
payload. It is rebuilt from LMDB at open and updated by the single writer after each commit;
``lookup`` is thread-safe and returns a sorted int64 array of the ids matching every key of a filter.
It reflects the latest committed state (a reader on an older snapshot may see newer payload values).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

import numpy as np

from drift_engine.engine.validate import canonical_value


class PayloadIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._postings: dict[str, dict[str, set[int]]] = {}
        self.version = 0

    @staticmethod
    def _fields(payload: bytes | None) -> Iterable[tuple[str, str]]:
        if payload is None:
            return ()
        obj = json.loads(payload)
        return [(k, canonical_value(v)) for k, v in obj.items() if not isinstance(v, dict | list)]

    def add(self, ident: int, payload: bytes | None) -> None:
        with self._lock:
            for key, value in self._fields(payload):
                self._postings.setdefault(key, {}).setdefault(value, set()).add(ident)
            self.version += 1

    def add_many(self, idents: Iterable[int], payloads: Iterable[bytes | None]) -> None:
        """``add`` of each (id, payload) pair, under one lock; equal payloads are parsed once."""
        parsed: dict[bytes, list[set[int]]] = {}
        with self._lock:
            for ident, payload in zip(idents, payloads, strict=True):
                if payload is None:
                    continue
                targets = parsed.get(payload)
                if targets is None:
                    targets = parsed[payload] = [
                        self._postings.setdefault(key, {}).setdefault(value, set())
                        for key, value in self._fields(payload)
                    ]
                for ids in targets:
                    ids.add(ident)
            self.version += 1

    def remove(self, ident: int, payload: bytes | None) -> None:
        with self._lock:
            for key, value in self._fields(payload):
                values = self._postings.get(key)
                if values is None or value not in values:
                    continue
                values[value].discard(ident)
                if not values[value]:
                    del values[value]
                    if not values:
                        del self._postings[key]
            self.version += 1

    def lookup(self, flt: dict[str, str]) -> np.ndarray:
        with self._lock:
            sets = []
            for key, value in flt.items():
                ids = self._postings.get(key, {}).get(value)
                if not ids:
                    return np.empty(0, dtype=np.int64)
                sets.append(ids)
            sets.sort(key=len)
            result = set(sets[0])
            for other in sets[1:]:
                result &= other
            arr = np.fromiter(result, dtype=np.int64, count=len(result))
        arr.sort()
        return arr

    def clear(self) -> None:
        with self._lock:
            self._postings.clear()
            self.version += 1
