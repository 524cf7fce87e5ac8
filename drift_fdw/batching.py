"""Engine calls sized to the server's limits, so SQL never has to split them by hand.

Contract:

* ``rows_per_call(client, address, dim)``: how many rows of ``dim`` dimensions one engine call may carry:
  the server's ``max_batch``, and as many rows as fill three quarters of its ``max_message_bytes`` at
  ``8 + 4 * dim + 256`` bytes a row (id, vector, a modest payload). The limits come from the server's
  Health and are cached per address for ``LIMITS_TTL_S`` (shared by the FDW and the ``drift.*`` functions).
* ``get_many(col, ids, max_rows)``: ``col.get`` of any number of ids, in calls of at most ``max_rows`` ids.
  The result is one ``GetResult``-like object (``ids``, ``vectors``, ``payloads``) in the order of ``ids``,
  each id at most once (its first place; absent ids are left out), exactly as one call of unique ids would
  give. A call the server refuses as too large (payloads bigger than estimated) is retried in halves.
* Nothing here imports numba, hnswlib or LMDB.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from drift_engine.errors import RequestTooLargeError

LIMITS_TTL_S = 30.0
ROW_OVERHEAD_BYTES = 8 + 256
_limits: dict[str, tuple[float, int, int]] = {}  # address -> (asked at, max_batch, max_message_bytes)


@dataclass
class Rows:
    """What ``get_many`` returns: the same fields as the engine client's ``GetResult``."""

    ids: np.ndarray
    vectors: np.ndarray
    payloads: list[Any]

    def __len__(self) -> int:
        return int(self.ids.size)


def server_limits(client: Any, address: str) -> tuple[int, int]:
    """(max_batch, max_message_bytes) of the server at ``address`` (cached, see the module docstring)."""
    hit = _limits.get(address)
    if hit is None or time.monotonic() - hit[0] > LIMITS_TTL_S:
        health = client.health()
        hit = (time.monotonic(), int(health["max_batch"]), int(health["max_message_bytes"]))
        _limits[address] = hit
    return hit[1], hit[2]


def rows_per_call(client: Any, address: str, dim: int) -> int:
    max_batch, max_bytes = server_limits(client, address)
    return max(1, min(max_batch, max_bytes * 3 // 4 // (ROW_OVERHEAD_BYTES + 4 * dim)))


def unique(ids: Iterable[Any]) -> list[int]:
    """``ids`` as ints, NULLs dropped, each once at its first place."""
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def get_many(col: Any, ids: Sequence[int], max_rows: int) -> Rows:
    """``col.get(ids)`` in calls of at most ``max_rows`` ids (see the module docstring)."""
    wanted = unique(ids)
    parts: list[Any] = []
    step = max(1, int(max_rows))
    start = 0
    while start < len(wanted):
        chunk = wanted[start : start + step]
        try:
            parts.append(col.get(chunk))
        except RequestTooLargeError:
            if step == 1:
                raise
            step = max(1, step // 2)
            continue
        start += len(chunk)
    dim = int(getattr(col, "dim", 0))
    if not parts:
        return Rows(np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32), [])
    if len(parts) == 1:
        got = parts[0]
        return Rows(np.asarray(got.ids, dtype=np.int64), np.asarray(got.vectors), list(got.payloads))
    return Rows(
        np.concatenate([np.asarray(p.ids, dtype=np.int64) for p in parts]),
        np.concatenate([np.asarray(p.vectors, dtype=np.float32).reshape(-1, dim) for p in parts]),
        [x for p in parts for x in p.payloads],
    )
