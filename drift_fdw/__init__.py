"""drift_fdw: the PostgreSQL side of drift. It runs inside PostgreSQL backends (DESIGN §12).

- ``drift_fdw.fdw.DriftFDW`` (also ``drift_fdw.DriftFDW``): the Multicorn2 foreign data wrapper; use it as
  ``CREATE SERVER s FOREIGN DATA WRAPPER multicorn OPTIONS (wrapper 'drift_fdw.DriftFDW', address '...')``.
- ``drift_fdw.sqlapi``: the bodies of the ``drift.*`` PL/Python functions (``sql/drift--*.sql``).
- ``options`` (table options, column roles), ``quals`` (pushdown), ``rows`` (value conversion),
  ``knn`` (kNN rows), ``writes`` (per-transaction buffer), ``txn`` (two-phase commit through engine
  transactions), ``overlay`` (reads see the transaction's writes), ``batching`` (big id lists),
  ``copyin`` (COPY through triggers), ``validate`` (CREATE FOREIGN TABLE checks), ``shards`` / ``fanout`` /
  ``routing`` (sharded tables: DDL, parallel fan-out, the view's write routing), ``schema`` (IMPORT FOREIGN
  SCHEMA), ``connection`` (one engine client per backend, errors, query cancel), ``errcodes`` /
  ``explain_guard`` (SQLSTATEs and EXPLAIN safety on PostgreSQL 15).

Only the thin client is imported here (grpc, zmq, numpy, ``drift_engine.server.client``,
``drift_engine.errors``): never numba, hnswlib or LMDB. ``DriftFDW`` loads lazily, because it needs the
``multicorn`` package, which exists only where Multicorn2 is installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DriftFDW"]


def __getattr__(name: str) -> Any:
    if name == "DriftFDW":
        from drift_fdw.fdw import DriftFDW

        return DriftFDW
    raise AttributeError(f"module 'drift_fdw' has no attribute {name!r}")
