"""One kNN statement over a sharded table asks every shard at once; shard failures name the shard (DESIGN §14).

A sharded table (``shards.create_sharded_table``) is a ``PARTITION BY HASH (id)`` parent whose partitions
are drift foreign tables on different engine servers, each with the table options ``shard_of`` (the
sharded table's public name: partitions with the same value are *siblings*) and ``shard`` (its own name).
PostgreSQL answers ``ORDER BY distance LIMIT n`` with ``Limit -> Merge Append -> Foreign Scan`` per shard,
and the Merge Append starts its children one after another, so each shard's first search would wait for
the previous one. Multicorn gives a wrapper neither its table's oid nor a way to run SQL from a callback,
hence this module.

Contract:

* Registry: every ``DriftFDW`` instance with ``shard_of`` registers itself (``register``), keyed by its
  ``shard`` name (a re-created instance replaces the old one). ``planned`` stamps an instance with the
  *statement key* when PostgreSQL plans it: (``GetCurrentTransactionStartTimestamp``,
  ``GetCurrentStatementStartTimestamp``, ``GetCurrentCommandId(false)``), read through ctypes; the command
  id changes after every writing command, so a statement after a write never takes an answer from before it.
* Fan-out (``first_answer``): the first shard scan of a statement that finds no answer waiting for itself
  sends, before its own search, the same phase-1 search (``knn``: the query, ``k`` or ``FIRST_K`` rows, the
  pushed-down filter, knobs and whether payloads are wanted) to every sibling that was planned together with
  it (same planning stamp: partitions pruned at plan time are never asked), whose columns are the same,
  whose collection it has described within ``INFO_TTL_S``, and whose engine has a direct fast path. Each is
  sent on that sibling's own pipelined fast-path connection (``DirectClient.send``): no threads, nothing
  runs outside PostgreSQL's main thread. A sibling with no answer sent (none of the above) searches itself.
* A prefetched answer is exactly the call its sibling would make: the sibling's scan recomputes its plan
  and takes the answer only when (instance, statement key, signature) match; it is consumed once. If its
  connection failed in between (the engine restarted, say) the sibling searches itself again, so a
  prefetch never turns a working shard into an error. Answers nobody took (an ``Append`` whose ``Limit``
  stopped early; an error in another shard) are abandoned at the next fan-out: their connection is closed.
  Inside one statement with no write in between, a second identical kNN may take the first one's unused
  answer: the same search, asked a few milliseconds earlier.
* Deeper ``LIMIT``s: phase 2 (the ``SearchStream``) is each shard's own, opened only when the Merge
  Append pulls past the first answer, one shard after another.
* Failures (``shard_problem``): any error of a shard's scan names it (``shard X of T``, with its engine's
  address) and keeps its SQLSTATE; the statement fails, never a partial answer. With the foreign-server
  option ``allow_partial 'true'`` a kNN scan of a shard that cannot be reached (connection refused or lost,
  deadline exceeded: ``is_down``) is skipped with a WARNING naming it instead (``skip_shard``), and the other
  shards' rows are returned. Other scans (full scans, id lookups, the scans of UPDATE / DELETE by id)
  always fail: skipping them could make a write silently miss rows.
* ``ENABLED`` (module global, default True): False turns the fan-out off in this backend (benchmarks).
* Limits: the fan-out covers the first ``knn`` call only (kNN and range conditions); lookups, full scans
  and phase-2 streams run shard after shard. Outside a PostgreSQL backend (no ctypes symbols) nothing is
  prefetched.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any

from drift_engine import errors as de
from drift_fdw import connection as conn
from drift_fdw.knn import FIRST_K
from drift_fdw.options import TableSpec
from drift_fdw.quals import ScanPlan

ENABLED = True  # False: every shard searches itself, one after another (for benchmarks)
STATS: dict[str, int] = {"fanouts": 0, "sent": 0, "taken": 0, "refetched": 0, "abandoned": 0, "skipped": 0}
_GROUPS: dict[str, dict[str, Any]] = {}  # shard_of -> shard name -> DriftFDW instance
_PLANNED: dict[int, tuple[int, int, int]] = {}  # id(instance) -> statement key when last planned
_PENDING: dict[tuple[int, tuple[int, int, int], tuple[Any, ...]], Any] = {}  # (id, stmt, signature) -> pending


def _symbols() -> tuple[Any, Any, Any] | None:
    try:
        lib = ctypes.CDLL(None)
        xact, stmt, cid = (
            lib.GetCurrentTransactionStartTimestamp,
            lib.GetCurrentStatementStartTimestamp,
            lib.GetCurrentCommandId,
        )
    except (OSError, AttributeError):
        return None  # not inside a PostgreSQL backend
    xact.restype = ctypes.c_int64
    stmt.restype = ctypes.c_int64
    cid.argtypes = [ctypes.c_bool]
    cid.restype = ctypes.c_uint32
    return xact, stmt, cid


_FUNCS = _symbols()


def statement_key() -> tuple[int, int, int] | None:
    """(transaction start, statement start, command id) of the running statement; None outside PostgreSQL."""
    if _FUNCS is None:
        return None
    xact, stmt, cid = _FUNCS
    return (int(xact()), int(stmt()), int(cid(False)))


def _key_of(fdw: Any) -> str:
    spec = fdw.spec
    return spec.shard or f"{spec.address}/{spec.collection}"


def register(fdw: Any) -> None:
    """Add a ``DriftFDW`` instance with ``shard_of`` to its sharded table's siblings."""
    group = fdw.spec.shard_of
    if group is None:
        return
    members = _GROUPS.setdefault(group, {})
    old = members.get(_key_of(fdw))
    if old is not None and old is not fdw:
        _drop(lambda key: key[0] == id(old))
        _PLANNED.pop(id(old), None)
    members[_key_of(fdw)] = fdw


def planned(fdw: Any) -> None:
    """Record that PostgreSQL is planning a scan of ``fdw`` in the running statement."""
    if fdw.spec.shard_of is not None:
        key = statement_key()
        if key is not None:
            _PLANNED[id(fdw)] = key


def signature(plan: ScanPlan, want_payloads: bool) -> tuple[Any, ...]:
    """What phase 1 of ``knn_hits`` asks the engine for this plan (equal signatures: the same call)."""
    return (
        plan.query.tobytes() if plan.query is not None else None,
        repr(sorted(plan.filter.items())) if plan.filter else None,
        tuple(sorted(plan.knobs.items())),
        plan.max_distance,
        bool(want_payloads),
    )


def _drop(which: Callable[[tuple[Any, ...]], bool]) -> None:
    for key in [k for k in _PENDING if which(k)]:
        _PENDING.pop(key).abandon()
        STATS["abandoned"] += 1


def abandon_all() -> None:
    """Abandon every prefetched answer not taken yet (their connections are closed)."""
    _drop(lambda key: True)


class _Taken:
    """Phase 1's answer for ``knn_hits``: the prefetched reply, or None (search again) if its connection
    failed after it was sent."""

    def __init__(self, pending: Any) -> None:
        self.pending = pending

    def __call__(self) -> Any:
        try:
            return self.pending.result()
        except de.EngineUnavailableError:
            STATS["refetched"] += 1
            return None


def first_answer(fdw: Any, plan: ScanPlan, want_payloads: bool) -> Callable[[], Any] | None:
    """For ``knn_hits(first=...)``: this shard's prefetched answer when one is waiting, else None after
    sending the same search to the siblings (see the module docstring)."""
    if fdw.spec.shard_of is None or plan.query is None or not ENABLED:
        return None
    stmt = statement_key()
    if stmt is None:
        return None
    sig = signature(plan, want_payloads)
    pending = _PENDING.pop((id(fdw), stmt, sig), None)
    if pending is not None:
        STATS["taken"] += 1
        return _Taken(pending)
    _fan_out(fdw, stmt, plan, sig)
    return None


def _fan_out(fdw: Any, stmt: tuple[int, int, int], plan: ScanPlan, sig: tuple[Any, ...]) -> None:
    from drift_fdw.fdw import INFO_TTL_S

    _drop(lambda key: key[1] != stmt)  # answers sent for earlier statements: never wanted now
    mine = _PLANNED.get(id(fdw))
    if mine is None:
        return
    sent_to: set[str] = set()
    opts = plan.knobs
    now = time.monotonic()
    for sib in list(_GROUPS.get(fdw.spec.shard_of, {}).values()):
        spec: TableSpec = sib.spec
        if sib is fdw or _PLANNED.get(id(sib)) != mine or spec.address in sent_to:
            continue
        if spec.columns != fdw.spec.columns or spec.roles != fdw.spec.roles:
            continue  # its own plan could differ: it searches itself
        if sib._info is None or now - sib._info[0] > INFO_TTL_S:
            continue  # it describes its collection itself first
        key = (id(sib), stmt, sig)
        if key in _PENDING:
            continue
        col = sib._col
        try:
            pending = col.search_send(
                plan.query, k=opts.get("k") or FIRST_K, nprobe=opts.get("nprobe"), rerank=opts.get("rerank"),
                filter=plan.filter or None, ef=opts.get("ef"), with_payloads=sig[-1],
            )  # fmt: skip
        except Exception:  # the sibling's own scan makes the call again and reports what is wrong
            continue
        if pending is None:
            continue
        _PENDING[key] = pending
        sent_to.add(spec.address)
        STATS["sent"] += 1
    if sent_to:
        STATS["fanouts"] += 1


# ------------------------------------------------------------------------------------------ failures
_DOWN = (de.EngineUnavailableError, de.DeadlineExceededError, de.EngineClosedError)


def is_down(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says the shard's engine cannot be reached."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, conn.QueryCancelled):
            return False
        if isinstance(cur, _DOWN):
            return True
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return False


def shard_name(spec: TableSpec) -> str:
    return f"shard {spec.shard or spec.collection} of {spec.shard_of}"


def shard_problem(spec: TableSpec, exc: BaseException) -> conn.SqlProblem:
    """The error of a failed shard scan, naming the shard and its engine (SQLSTATE kept)."""
    p = conn.problem(exc, spec.address)
    text = p.message[len("drift: ") :] if p.message.startswith("drift: ") else p.message
    if is_down(exc):
        message = f"drift: {shard_name(spec)} is unavailable (engine {spec.address}): {text}"
        hint = (p.hint + "; " if p.hint else "") + (
            "no partial answer is returned; the server option allow_partial 'true' answers from the other "
            "shards with a WARNING instead"
        )
        return conn.SqlProblem(message, hint, p.sqlstate)
    return conn.SqlProblem(f"drift: {shard_name(spec)} (engine {spec.address}): {text}", p.hint, p.sqlstate)


def skip_shard(spec: TableSpec, exc: BaseException, mode: str) -> bool:
    """With ``allow_partial``, a kNN scan of an unreachable shard emits a WARNING naming it and returns
    True (the caller returns no rows); otherwise False."""
    if not spec.allow_partial or mode != "knn" or not is_down(exc):
        return False
    from multicorn.utils import log_to_postgres

    p = conn.problem(exc, spec.address)
    STATS["skipped"] += 1
    log_to_postgres(
        f"drift: {shard_name(spec)} is unavailable (engine {spec.address}); answering without its rows",
        logging.WARNING,
        hint=f"allow_partial is set on its foreign server; the shard said: {p.message}",
    )
    return True
