"""Two-phase commit of a PostgreSQL transaction's writes through the drift foreign tables.

Contract (one backend; "server" = one engine address):

* All foreign tables of one server written in a PostgreSQL transaction share ONE engine transaction
  (``engine.txn``), whose id is made here (``pg-<backend pid>-<random>``).
* ``prepare(table)``, from each table's ``pre_commit`` (PostgreSQL's XACT_EVENT_PRE_COMMIT): stages the
  table's buffered writes (``writes.WriteBuffer.batches``) in chunks the server accepts (``StageTxn``),
  plus the versions its UPDATEs / DELETEs were based on (``expect`` ops: the ``read_lsn`` of each row's
  read), the last chunk with ``prepare`` set (so a small write costs one call before the commit): the
  engine validates the whole transaction so far (duplicate ids, rows changed or deleted since they were
  read, ids held by another prepared transaction) and reserves its ids. Any failure raises, so
  PostgreSQL's COMMIT fails with an ERROR and rolls back (which aborts the engine transaction): nothing
  was written. A write-write conflict is SQLSTATE 40001.
* ``finish(address)``, from the first ``commit`` (XACT_EVENT_COMMIT, PostgreSQL has committed): ``CommitTxn``.
  It never raises (PostgreSQL cannot fail a committed transaction): when the engine does not confirm the
  commit, a WARNING says ``outcome unknown`` with what went wrong.
* ``abort_all()``, from ``rollback`` (XACT_EVENT_ABORT): ``AbortTxn`` for every open engine transaction of
  the backend, best effort (an engine transaction nobody commits is dropped after the engine's timeout).

What holds (precisely):

* A PostgreSQL transaction that rolls back -- ROLLBACK, an error at any point including a serialization
  failure after pre-commit, a backend killed before its commit record -- leaves nothing in the engine:
  the engine transaction is aborted, or dropped by the engine's idle timeout or restart.
* A PostgreSQL transaction whose COMMIT returned without a WARNING is wholly in the engine, in every
  foreign table of the server, atomically (one engine commit record).
* The engine writes nothing between PREPARE and COMMIT, and its commit cannot fail on validation once
  prepared. What remains is the window after PostgreSQL's commit record and before the engine's
  acknowledgement: if the backend is killed there, or the engine dies or restarts, or the engine's idle
  timeout passes first, PostgreSQL has committed but the engine may not have. That case is reported (as
  a WARNING "outcome unknown") whenever the backend survives to see it; prepared transactions are not
  kept across an engine restart and are not resolved against PostgreSQL's commit log.
* Conflicts: an UPDATE or DELETE records the ``read_lsn`` of the engine row it was based on (the first
  write of the id in the transaction decides); the engine's commit fails with 40001 if that row was
  changed or deleted since. Rows read through a kNN scan carry no ``read_lsn``; their bound is taken with
  a point read when the row is first written, so a write that lands between the kNN read and the UPDATE
  of the same statement is not detected.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from typing import Any

from drift_engine.errors import ConflictError, DriftError, TransactionNotFoundError
from drift_engine.server.txnclient import txn_op
from drift_fdw import connection as conn

OUTCOME_UNKNOWN = "outcome unknown"


@dataclass
class _Open:
    client: Any
    txn_id: str
    address: str
    durability: str | None
    rows: int = 0


_open: dict[str, _Open] = {}  # address -> this backend's open engine transaction


def _conflict(exc: DriftError) -> conn.SqlProblem:
    if isinstance(exc, TransactionNotFoundError):
        message = f"drift: the engine dropped this transaction before it committed ({exc.message})"
    else:
        message = f"drift: could not serialize access due to a concurrent write ({exc.message})"
    return conn.SqlProblem(message, "retry the transaction (nothing of it was written)", "40001")


def prepare(table: Any) -> None:
    """Stage ``table``'s buffered writes into the server's engine transaction and prepare it (raises
    ``SqlProblem`` on any failure; the caller reports it)."""
    spec = table.spec
    col = table._col_fresh()
    client = table._client()
    state = _open.get(spec.address)
    if state is None:
        state = _open[spec.address] = _Open(
            client, f"pg-{os.getpid()}-{uuid.uuid4().hex}", spec.address, spec.durability
        )
    max_rows = table._max_rows(col)
    buf = table._writes
    try:
        with conn.engine_call(spec.address):
            jobs: list[tuple[str, Any, Any, Any, Any]] = []
            for batch in buf.batches(max_rows):
                jobs.append((batch.op, batch.ids, batch.vectors, batch.payloads, None))
                state.rows += len(batch.ids)
            expect = buf.expectations()
            for start in range(0, len(expect), max_rows):
                part = expect[start : start + max_rows]
                jobs.append(("expect", [i for i, _ in part], None, None, [b for _, b in part]))
            try:  # the last chunk carries the prepare (a single-row INSERT: one round trip here)
                for n, (op, ids, vectors, payloads, lsns) in enumerate(jobs):
                    request, stage = client.stage_request(state.txn_id, prepare=n == len(jobs) - 1)
                    txn_op(col.name, op, ids, vectors, payloads, lsns, dim=col.dim, into=stage.ops.add())
                    client.send_stage(request)
                if not jobs:
                    client.txn_prepare(state.txn_id)
            except (ConflictError, TransactionNotFoundError) as exc:
                _open.pop(spec.address, None)  # the engine dropped it
                raise _conflict(exc) from None
    except conn.SqlProblem:
        raise
    conn.COUNTERS["write_calls"] += 1
    conn.COUNTERS["rows_written"] += len(buf)


def finish(address: str, warn: Any) -> None:
    """Commit the server's engine transaction (after PostgreSQL committed). Never raises: calls
    ``warn(message, hint)`` when the engine did not confirm it."""
    state = _open.pop(address, None)
    if state is None:
        return
    try:
        state.client.txn_commit(state.txn_id, state.durability)
    except BaseException as exc:
        if isinstance(exc, DriftError):
            detail = f"{type(exc).__name__}: {exc.message}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        conn.forget(address)
        warn(
            f"drift: {OUTCOME_UNKNOWN}: PostgreSQL committed, but the engine at {address} did not confirm the "
            f"commit of transaction {state.txn_id} ({state.rows} row(s)): {detail}",
            "check the rows: the engine applies all of the transaction or none of it; it drops a prepared "
            "transaction it could not commit after its idle timeout or a restart",
        )


def abort_all() -> None:
    """Abort every open engine transaction of this backend (best effort, never raises)."""
    for address in list(_open):
        state = _open.pop(address)
        try:
            state.client.txn_abort(state.txn_id)
        except BaseException:
            conn.forget(address)


def warn(message: str, hint: str | None = None) -> None:
    """A WARNING in PostgreSQL (never raises)."""
    from multicorn.utils import WARNING, log_to_postgres

    with contextlib.suppress(Exception):  # a warning must never turn a committed transaction into an error
        log_to_postgres(message, WARNING, hint=hint)


class Bounded:
    """``col`` whose ``get`` also keeps the smallest ``read_lsn`` of the calls (a bound for all their rows)."""

    def __init__(self, col: Any) -> None:
        self.col = col
        self.dim = col.dim
        self.read_lsn: int | None = None

    def get(self, ids: Any) -> Any:
        got = self.col.get(ids)
        lsn = int(getattr(got, "read_lsn", 0))
        self.read_lsn = lsn if self.read_lsn is None else min(self.read_lsn, lsn)
        return got
