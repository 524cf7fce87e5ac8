"""COPY into a drift foreign table, through triggers (``drift.enable_copy(table)`` installs them).

Why: Multicorn2 3.2 has no ``BeginForeignInsert``, so PostgreSQL's COPY FROM (and tuple routing into a
foreign partition) calls its ``ExecForeignInsert`` with no state and the backend dies (signal 11). A
``BEFORE`` trigger runs first and can take the row instead.

Contract of ``trigger(TD)`` (the body of ``drift.copy_trigger()``), per statement on one table:

* ``BEFORE ... FOR EACH STATEMENT``: plans ``SELECT 1 FROM <table> LIMIT 0``, which makes Multicorn hand
  over the table's ``DriftFDW`` instance and enlist it in the transaction (so its pre-commit runs). If the
  instance is inside an ordinary INSERT (PostgreSQL asked it for ``modify_batch_size``), nothing changes;
  otherwise the statement is a COPY and its rows are taken by the row trigger.
* ``BEFORE ... FOR EACH ROW`` during a COPY: the row goes into the instance's transaction buffer exactly as
  an INSERT's would (same validation, same errors with hints), and the trigger returns ``SKIP``, so
  PostgreSQL never calls the broken insert path. COPY therefore reports ``COPY 0``; the rows are applied
  at commit and discarded by ROLLBACK, like every other write through the FDW.
* ``AFTER ... FOR EACH STATEMENT``: ends the COPY mode of the table.
* Every row of INSERT, UPDATE and COPY is first checked by ``validate.check_row`` (no multi-dimensional
  arrays: Multicorn would hand them over flattened).
* ``instance(table)`` (the table's instance, enlisted in the running (sub)transaction) and ``call(method,
  *args)`` (an instance's write, its error re-raised with message, hint and SQLSTATE) also serve the
  sharded view's trigger (``routing``).
Only PostgreSQL up to 15 benefits: from 16 on, COPY asks the FDW for a batch size before any trigger
runs, which crashes the same way; there, COPY into a staging table and ``INSERT ... SELECT``.
"""

from __future__ import annotations

import sys
from typing import Any

from drift_fdw import connection as conn
from drift_fdw import errcodes, fdw

_copying: dict[int, Any] = {}  # relid -> DriftFDW instance taking COPY rows


def _plpy() -> Any:
    return sys.modules["plpy"]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def trigger(TD: dict[str, Any]) -> str | None:
    relid = int(TD["relid"])
    if TD["level"] == "STATEMENT":
        if TD["when"] == "BEFORE":
            _copying.pop(relid, None)
            inst = instance(f"{_quote(TD['table_schema'])}.{_quote(TD['table_name'])}")
            if not inst.inserting:
                _copying[relid] = inst
        else:
            _copying.pop(relid, None)
        return None
    from drift_fdw import validate

    validate.check_row(TD)
    if TD["event"] == "UPDATE":
        return None
    inst = _copying.get(relid)
    if inst is None:
        return None  # an ordinary INSERT: the FDW takes the row itself
    call(inst.insert, TD["new"])
    return "SKIP"


def call(method: Any, *args: Any) -> Any:
    """``method(*args)`` of a ``DriftFDW`` instance from a trigger: the FDW's error is raised again as
    ``plpy.error`` with its message, hint and SQLSTATE."""
    try:
        return method(*args)
    except Exception as exc:
        if getattr(exc, "_is_multicorn_exception", False):
            errcodes.claim(exc.message)  # reported here with its code: no longer pending for the log hook
            extra = {"hint": exc.hint} if getattr(exc, "hint", None) else {}
            _plpy().error(exc.message, sqlstate=getattr(exc, "sqlstate", None) or "XX000", **extra)
        raise


def instance(table: str) -> Any:
    """The ``DriftFDW`` instance of the foreign table ``table`` (a quoted, qualified name), enlisted by
    Multicorn in the running (sub)transaction: planning a scan of it makes Multicorn hand it over."""
    fdw.LAST_PLANNED = None
    try:
        _plpy().execute(f"SELECT 1 FROM ONLY {table} LIMIT 0")
    except _plpy().SPIError as exc:  # e.g. a bad table definition: the FDW's error, with its SQLSTATE
        p = conn.problem(exc)
        extra = {"hint": p.hint} if p.hint else {}
        _plpy().error(p.message, sqlstate=p.sqlstate, **extra)
    inst = fdw.LAST_PLANNED
    if inst is None:
        _plpy().error(
            f"drift: {table} is not a drift foreign table",
            hint="drift.enable_copy() and the partitions of a sharded table need drift foreign tables",
        )
    return inst
