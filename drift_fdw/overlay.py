"""Scans see their own transaction's buffered writes (``writes.WriteBuffer``), so that UPDATE and DELETE
of a row written earlier in the same transaction find it, and SELECT reads what the transaction wrote.

Contract (``buf`` is the table's ``WriteBuffer``; nothing here contacts the engine):

* An id with a pending ``delete`` is hidden; an id with a pending ``insert`` / ``upsert`` shows its
  buffered vector and payload instead of the engine's row (or in addition, when the engine has none).
* ``knn(hits, buf, plan, metric)``: merges, in non-decreasing distance, the engine's hits (buffered ids
  dropped) with the buffered rows that match the pushed-down filter and distance bound; ``k`` still caps.
* ``lookup_rows(ids, got, buf)``: the rows of a point lookup in the order asked.
* ``scan_extra(buf)``: the buffered rows a full scan adds after the engine's rows (engine rows of buffered
  ids are dropped by the caller with ``hides``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from drift_fdw.knn import Hit
from drift_fdw.quals import ScanPlan
from drift_fdw.writes import WriteBuffer

Row = tuple[int, np.ndarray | None, dict[str, Any] | None]


def hides(buf: WriteBuffer, ident: int) -> bool:
    """True when the buffer decides what ``ident`` looks like (the engine's row must not be shown)."""
    return buf.pending(ident) is not None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def matches(payload: dict[str, Any] | None, flt: dict[str, Any]) -> bool:
    """The engine's equality filter, applied to a buffered payload (JSON-exact: ``true`` is not ``1``)."""
    if not flt:
        return True
    if not payload:
        return False
    return all(key in payload and _same(payload[key], value) for key, value in flt.items())


def knn(
    hits: Iterator[Hit], buf: WriteBuffer, plan: ScanPlan, distances: Callable[[np.ndarray], np.ndarray]
) -> Iterator[Hit]:
    live = [(i, r) for i, r in buf.rows() if r[0] != "delete" and matches(r[2], plan.filter)]
    extra: list[Hit] = []
    if live:
        d = distances(np.stack([r[1] for _, r in live]))
        extra = [Hit(i, float(x), r[1], r[2]) for (i, r), x in zip(live, d.tolist(), strict=True)]
        if plan.max_distance is not None:
            extra = [h for h in extra if h.distance <= plan.max_distance]
        extra.sort(key=lambda h: h.distance)
    engine = (h for h in hits if not hides(buf, h.id))
    cap = plan.knobs.get("k")
    for n, hit in enumerate(heapq.merge(engine, extra, key=lambda h: h.distance)):
        if cap is not None and n >= cap:
            return
        yield hit


def lookup_rows(ids: list[int], got: Any, buf: WriteBuffer) -> list[Row]:
    engine: dict[int, Row] = {}
    if got is not None:
        for i, ident in enumerate(got.ids.tolist()):
            engine[ident] = (ident, got.vectors[i], got.payloads[i])
    out: list[Row] = []
    for ident in ids:
        pending = buf.pending(ident)
        if pending is None:
            if ident in engine:
                out.append(engine[ident])
        elif pending[0] != "delete":
            out.append((ident, pending[1], pending[2]))
    return out


def scan_extra(buf: WriteBuffer) -> list[Row]:
    return [(i, r[1], r[2]) for i, r in buf.rows() if r[0] != "delete"]
