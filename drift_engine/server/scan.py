"""The ids of every live vector of a collection, for the ``Scan`` RPC.

The engine has no public "list ids" call yet, so this reads the collection's published snapshot (the
``Collection.snapshot`` property) read-only: live entries of the memtables (newest first, a newer level
hides older copies and tombstoned ids) and the rows of L1 segments that are not dead. The server then
fetches vectors and payloads in batches with the public ``Collection.get``, so a row deleted meanwhile
is simply left out and every row returned is the newest version at the time of its batch.

Contract: returns sorted unique int64 ids live at one moment. A segment retired while it is being read
(a concurrent flush, train or compaction) makes the read fail; the whole listing is then retried on the
newer snapshot (a few times, then the error is raised).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_ATTEMPTS = 5


def _hidden(levels: list[Any], ids: np.ndarray) -> np.ndarray:
    hidden = np.zeros(ids.size, dtype=bool)
    for mt in levels:
        hidden |= mt.hides(ids)
    return hidden


def _live_ids_once(snap: Any) -> np.ndarray:
    parts: list[np.ndarray] = []
    levels: list[Any] = []
    for mt in snap.memtables:  # newest first
        ids = np.asarray(mt.items()[0], dtype=np.int64)
        if levels and ids.size:
            ids = ids[~_hidden(levels, ids)]
        parts.append(ids)
        levels.append(mt)
    for seg_id, seg in snap.segments.items():
        ids = seg.ids()[snap.dead[seg_id] == 0]
        if levels and ids.size:
            ids = ids[~_hidden(levels, ids)]
        parts.append(np.asarray(ids, dtype=np.int64))
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate(parts))


def live_ids(col: Any) -> np.ndarray:
    """Sorted ids of every live vector of ``col`` (see the module docstring)."""
    for attempt in range(_ATTEMPTS):
        snap = col.snapshot
        try:
            return _live_ids_once(snap)
        except Exception:
            if attempt == _ATTEMPTS - 1 or col.snapshot is snap:
                raise
    raise AssertionError("unreachable")
