"""kNN rows for the FDW: one unary search first, a SearchStream only when PostgreSQL wants more rows.

Contract of ``knn_hits(col, plan, ...)`` (a generator of ``Hit``):

* Hits come in non-decreasing distance, each id at most once, and stop at the first hit farther than
  ``plan.max_distance`` or after ``k`` hits when the query set ``k``.
* Phase 1 is one unary ``search`` of ``k`` (default ``FIRST_K``) rows: a ``LIMIT`` of up to that many
  costs exactly one engine round trip and leaves nothing open on the server. Only when the consumer asks
  for more does phase 2 open a ``SearchStream`` with the same arguments (its round 0 is the same search):
  rows already emitted are skipped, as is any row closer than the last one emitted (it can no longer be
  placed in order; only concurrent writes cause that), so the contract above holds across the phases.
* ``first`` (``fanout``): a callable giving phase 1's answer when it was already asked for (the very call
  above, sent earlier to run in parallel with other shards), or None to make the call here after all.
* Never silently short: when the engine ends the stream because it hit its per-search cap (``end_reason``
  ``max_k``, ``MAX_K`` = 10,000 rows) and the consumer pulls further, ``StreamCapReached`` is raised (an
  ERROR in PostgreSQL, SQLSTATE 54000 where the caller can set it) instead of ending as if no rows were left.
  This covers ``LIMIT`` beyond the cap and every filter PostgreSQL evaluates itself (``distance > x``...).
* A stream left unfinished (the ``Limit`` node stopped pulling) is closed when the generator is closed
  or dropped; ``streams`` (a set) holds the open ones so an aborted transaction can close them too.
* ``connection.COUNTERS``: ``knn_queries``, ``engine_rows`` (rows received in both phases),
  ``streams``, ``stream_batches``, ``streams_closed_early``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from drift_engine.errors import InvalidVectorError
from drift_engine.server import convert as cv
from drift_fdw import connection as conn
from drift_fdw.quals import ScanPlan, parse_query

FIRST_K = 10
TEXT_REFUSED: set[str] = set()  # addresses whose server refused a query literal that parses here (first_lists)


class StreamCapReached(Exception):
    """The engine ended the stream at its per-search cap (``max_k``) while rows were still wanted."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.sqlstate = "54000"  # program_limit_exceeded


class Hit(NamedTuple):
    id: int
    distance: float
    vector: np.ndarray | None
    payload: dict[str, Any] | None


def _vectors(col: Any, ids: list[int]) -> dict[int, np.ndarray]:
    got = col.get(ids)
    return dict(zip(got.ids.tolist(), got.vectors, strict=True))


def _hits(col: Any, ids: list[int], dists: list[float], payloads: Any, want_vectors: bool) -> list[Hit]:
    vectors = _vectors(col, ids) if want_vectors and ids else {}
    pays = payloads if payloads is not None else [None] * len(ids)
    return [Hit(i, d, vectors.get(i), p) for i, d, p in zip(ids, dists, pays, strict=True)]


def _first_round(col: Any, plan: ScanPlan, k: int, want_payloads: bool, opts: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Phase 1's (ids, distances, payloads or None) as lists; a remote collection takes the plan's query
    and knobs as they are (validated by ``plan_scan``), with no second check in the client."""
    lean = getattr(col, "search_rows", None)
    query = plan.query if plan.query is not None else plan.query_echo
    if lean is not None and query is not None:
        return lean(
            query, k, nprobe=opts["nprobe"], rerank=opts["rerank"], ef=opts["ef"],
            filter_json=cv.filter_to_json(opts["filter"]), with_payloads=want_payloads,
        )  # fmt: skip
    res = col.search(plan.query, k=k, with_payloads=want_payloads, **opts)
    return res.ids.tolist(), res.distances.tolist(), res.payloads if want_payloads else None


def knn_hits(
    col: Any,
    plan: ScanPlan,
    address: str,
    want_payloads: bool,
    want_vectors: bool,
    streams: set[Any],
    first: Callable[[], Any] | None = None,
) -> Iterator[Hit]:
    hits, done = settle(first_round(col, plan, address, want_payloads, want_vectors, first), plan)
    yield from hits
    if not done:
        yield from after_first(col, plan, address, want_payloads, want_vectors, streams, hits)


def _opts(plan: ScanPlan) -> dict[str, Any]:
    return {
        "nprobe": plan.knobs.get("nprobe"),
        "ef": plan.knobs.get("ef"),
        "rerank": plan.knobs.get("rerank"),
        "filter": plan.filter or None,
    }


def first_round(
    col: Any, plan: ScanPlan, address: str, want_payloads: bool, want_vectors: bool,
    first: Callable[[], Any] | None = None,
) -> list[Hit]:  # fmt: skip
    """Phase 1's hits (one unary search; ``first`` as for ``knn_hits``), before any cut."""
    conn.COUNTERS["knn_queries"] += 1
    with conn.engine_call(address):
        res = first() if first is not None else None
        if res is None:
            ids, dists, pays = _first_round(col, plan, plan.knobs.get("k") or FIRST_K, want_payloads, _opts(plan))
        else:
            ids, dists, pays = res.ids.tolist(), res.distances.tolist(), res.payloads if want_payloads else None
        hits = _hits(col, ids, dists, pays, want_vectors)
    conn.COUNTERS["engine_rows"] += len(hits)
    return hits


def first_lists(col: Any, plan: ScanPlan, address: str) -> tuple[list[int], list[float]]:
    """Phase 1 as ``first_round`` without payloads or vectors: the (ids, distances) lists, before any cut.
    A plan whose query is not parsed yet (``quals.parse_query``) sends its literal for the server to parse
    (``search_rows`` with a ``str``); a literal the server refuses is parsed here, which raises the error
    ``plan_scan`` would have, and a server that cannot parse literals (older) gets the vector instead."""
    conn.COUNTERS["knn_queries"] += 1
    k = plan.knobs.get("k") or FIRST_K
    with conn.engine_call(address):
        if plan.query is None and (address in TEXT_REFUSED or not hasattr(col, "search_rows")):
            parse_query(plan, col.dim)
        try:
            ids, dists, _ = _first_round(col, plan, k, False, _opts(plan))
        except InvalidVectorError:  # the literal (or, from an older server, the missing vector)
            if plan.query is not None:
                raise
            parse_query(plan, col.dim)  # raises the FDW's own error for a bad literal
            TEXT_REFUSED.add(address)
            ids, dists, _ = _first_round(col, plan, k, False, _opts(plan))
    conn.COUNTERS["engine_rows"] += len(ids)
    return ids, dists


def settle_count(distances: list[float], plan: ScanPlan) -> tuple[int, bool]:
    """(how many of phase 1's rows (``distances``, in order) ``knn_hits`` yields, whether the scan ends with
    them: the distance bound or ``k`` stopped it; else phase 2, ``after_first``, follows when pulled)."""
    cap = plan.knobs.get("k")
    bound = plan.max_distance
    if bound is not None:
        for n, distance in enumerate(distances):
            if distance > bound:
                return (n if cap is None or n < cap else cap), True
    if cap is not None and len(distances) >= cap:
        return cap, True
    return len(distances), False


def settle(hits: list[Hit], plan: ScanPlan) -> tuple[list[Hit], bool]:
    """``settle_count`` for hits: (the phase-1 hits ``knn_hits`` yields, whether the scan ends with them)."""
    n, done = settle_count([hit.distance for hit in hits], plan)
    return (hits if n == len(hits) else hits[:n]), done


def after_first(
    col: Any, plan: ScanPlan, address: str, want_payloads: bool, want_vectors: bool, streams: set[Any],
    hits: list[Hit],
) -> Iterator[Hit]:  # fmt: skip
    """Phase 2 after the phase-1 rows ``hits`` (``settle`` said they do not end the scan)."""
    last = hits[-1].distance if hits else -np.inf
    emitted = {hit.id for hit in hits}
    yield from _more(col, plan, address, want_payloads, want_vectors, streams, emitted, last, _opts(plan))


def _more(
    col: Any,
    plan: ScanPlan,
    address: str,
    want_payloads: bool,
    want_vectors: bool,
    streams: set[Any],
    emitted: set[int],
    last: float,
    opts: dict[str, Any],
) -> Iterator[Hit]:
    """Phase 2: a stream with the same arguments, continuing after the rows phase 1 emitted."""
    cap = plan.knobs.get("k")
    first_k = cap or FIRST_K
    with conn.engine_call(address):
        stream = col.search_stream(
            plan.query, k=first_k, batch_size=max(2 * first_k, 20), limit=cap, max_distance=plan.max_distance,
            with_payloads=want_payloads, **opts,
        )  # fmt: skip
    conn.COUNTERS["streams"] += 1
    streams.add(stream)
    finished = False
    try:
        while True:
            with conn.engine_call(address):
                try:
                    batch = stream.next_batch()
                except StopIteration:
                    finished = True
                    return
                hits = _hits(col, batch.ids.tolist(), batch.distances.tolist(), batch.payloads, want_vectors)
            conn.COUNTERS["stream_batches"] += 1
            conn.COUNTERS["engine_rows"] += len(hits)
            for hit in hits:
                if hit.id in emitted or hit.distance < last:
                    continue
                yield hit
                emitted.add(hit.id)
                last = hit.distance
                if cap is not None and len(emitted) >= cap:
                    return
            if batch.done:
                finished = True
                if stream.end_reason == "max_k":
                    raise StreamCapReached(
                        f"drift: the engine stopped this kNN stream after {len(emitted)} rows (its cap of rows "
                        "per search); PostgreSQL wanted more, so the result would be incomplete",
                        hint="add  k = <n>  or a smaller LIMIT, or narrow the query with  distance < x  or a "
                        "filter drift pushes down; a full scan (no query = ...) reads every row",
                    )
                return
    finally:
        streams.discard(stream)
        if not finished:
            conn.COUNTERS["streams_closed_early"] += 1
        try:
            stream.close()  # no engine call when the stream already ended
        except Exception:
            conn.forget(address)  # the server drops idle cursors anyway
