"""The ``Scan`` RPC's view of a collection: it forwards to the engine's ``Collection.scan``.

``Collection.scan`` reads one pinned snapshot (``engine.reads``), so a concurrent flush, train or
compaction can neither make a scan fail nor make it miss or repeat a row; nothing here walks snapshot
internals or retries.

Contract:

* ``scan_batches(col, size, skip_vectors, skip_payloads)``: the ``GetResponse`` messages of a scan --
  every live vector of one snapshot, in id order, at most ``size`` rows per message.
* ``live_ids(col)``: sorted unique int64 ids of every vector live in one snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb

_ID_BATCH = 100_000


def scan_batches(col: Any, size: int, skip_vectors: bool, skip_payloads: bool) -> Iterator[pb.GetResponse]:
    """``GetResponse`` messages of every live vector of ``col`` (see the module docstring)."""
    for got in col.scan(size, vectors=not skip_vectors, payloads=not skip_payloads):
        if len(got):
            yield cv.get_response(got, skip_vectors=skip_vectors, skip_payloads=skip_payloads)


def live_ids(col: Any) -> np.ndarray:
    """Sorted ids of every live vector of ``col``, from one pinned snapshot."""
    parts = [got.ids for got in col.scan(_ID_BATCH, vectors=False, payloads=False)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
