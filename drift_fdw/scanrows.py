"""Rows of the FDW's scans: a kNN scan's phase 1 built at once, an accepted LIMIT / OFFSET, distances.

Contract:

* ``knn_at_once(spec, col, plan, columns, layout, streams)`` -> ``(rows, more)``: the rows ``DriftFDW._knn``
  yields for a kNN scan with nothing buffered that is not a shard, phase 1's as one list (``rows``) and
  phase 2 (``knn.after_first``) as a generator ``more`` that only runs if PostgreSQL pulls past ``rows``
  (None when phase 1 ends the scan). When the columns read need neither vectors nor payloads
  (``layout.others`` empty: the usual ``SELECT id, distance``), the rows come straight from the engine's
  id and distance lists, with no ``Hit`` and no call per row, and a query left unparsed by the plan goes to
  the server as its literal (``knn.first_lists``); otherwise the query is parsed here and the rows come
  through ``Hit`` and ``RowMaker.make``. Errors propagate; the caller reports them.
* ``window(rows, limit, offset)`` applies an accepted LIMIT / OFFSET exactly (PostgreSQL will not again).
* ``distances(vectors, query, metric)``: the engine's distance definitions (pgvector semantics), for rows
  the engine did not rank (buffered writes, point lookups with a query).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from drift_fdw import knn
from drift_fdw.options import TableSpec
from drift_fdw.quals import ScanPlan, parse_query
from drift_fdw.rows import RowLayout, RowMaker


def knn_at_once(
    spec: TableSpec, col: Any, plan: ScanPlan, columns: frozenset[str], layout: RowLayout, streams: set[Any]
) -> tuple[list[list[Any]], Iterator[list[Any]] | None]:
    """See the module docstring."""
    maker = RowMaker(spec, columns, plan.query_echo, plan.knobs, layout)
    address = spec.address
    if not layout.others:
        ids, dists = knn.first_lists(col, plan, address)
        n, done = knn.settle_count(dists, plan)
        if n < len(ids):
            ids, dists = ids[:n], dists[:n]
        rows = maker.rows(ids, dists)
        if done:
            return rows, None
        hits = [knn.Hit(i, d, None, None) for i, d in zip(ids, dists, strict=True)]
        return rows, _phase2(col, plan, address, streams, hits, maker)
    parse_query(plan, col.dim)
    want_payloads = any(c.role in ("field", "payload") for _, c in layout.others)
    want_vectors = any(c.role == "embedding" for _, c in layout.others)
    hits, done = knn.settle(knn.first_round(col, plan, address, want_payloads, want_vectors), plan)
    make = maker.make
    rows = [make(h.id, h.distance, h.vector, h.payload) for h in hits]
    if done:
        return rows, None
    more = knn.after_first(col, plan, address, want_payloads, want_vectors, streams, hits)
    return rows, (make(h.id, h.distance, h.vector, h.payload) for h in more)


def _phase2(
    col: Any, plan: ScanPlan, address: str, streams: set[Any], hits: list[knn.Hit], maker: RowMaker
) -> Iterator[list[Any]]:
    """Phase 2's rows, run only when pulled; the stream needs the query vector (phase 1 may have sent text)."""
    parse_query(plan, col.dim)
    for h in knn.after_first(col, plan, address, False, False, streams, hits):
        yield maker.make(h.id, h.distance, None, None)


def window(rows: Iterator[list[Any]], limit: int | None, offset: int) -> Iterator[list[Any]]:
    """Apply an accepted LIMIT / OFFSET exactly (PostgreSQL will not apply it again)."""
    if limit is not None and limit <= 0:
        return
    for n, row in enumerate(rows):
        if n < offset:
            continue
        yield row
        if limit is not None and n + 1 >= offset + limit:
            return


def distances(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Distances of stored vectors to ``query`` with the engine's definitions (pgvector semantics)."""
    v = np.asarray(vectors, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    if metric == "ip":
        return -(v @ q)
    if metric == "cosine":
        qn = q / max(float(np.linalg.norm(q)), 1e-30)
        norms = np.maximum(np.linalg.norm(v, axis=1), 1e-30)
        return 1.0 - (v @ qn) / norms
    return np.sqrt(np.maximum(((v - q) ** 2).sum(axis=1), 0.0))
