"""Checks of drift foreign tables and of the rows written into them (PL/Python; see ``sql/drift--0.1.0.sql``).

Contract:

* ``validate_table(table)`` (body of ``drift.validate_table(regclass)``, run by the extension's event
  trigger at CREATE / ALTER FOREIGN TABLE and IMPORT FOREIGN SCHEMA): checks the table's options (server's,
  table's, the current user's or PUBLIC's user mapping) and columns exactly as ``DriftFDW`` will
  (``options.TableSpec.parse``), so a bad definition fails there with ERROR 22023 and a hint, naming the
  table, instead of at first use. A relation that is not a foreign table is left alone. Multicorn2 has no
  validator hook for the wrapper class, hence the event trigger.
* ``check_row(TD)``: refuses (22023, with a hint) a row whose ``TD["new"]`` holds a multi-dimensional
  array, which Multicorn would hand over flattened (a 2-D embedding or payload array would be stored
  flat). Called for every row by the COPY trigger (``copyin``) and the sharded view's trigger (``routing``).
* Failures raise ``plpy.error(message, hint=..., sqlstate=...)``: a clean ERROR, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drift_fdw import sqlapi

_COLUMNS_SQL = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name,
       pg_catalog.format_type(a.atttypid, NULL) AS base_type_name, a.atttypmod AS typmod, a.attfdwoptions
FROM pg_catalog.pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""


@dataclass(frozen=True)
class _Column:
    type_name: str
    base_type_name: str
    typmod: int
    options: dict[str, str]


def validate_table(table: str) -> None:
    """Check a drift foreign table's options and columns as ``DriftFDW`` will (see the module docstring)."""
    from drift_fdw.options import ConfigError, TableSpec

    with sqlapi._errors():
        rows = sqlapi._query(sqlapi._TABLE_SQL, ["text"], [table])
        if not rows:
            return
        options = {**sqlapi._options(rows[0]["srvoptions"]), **sqlapi._options(rows[0]["ftoptions"])}
        options.pop("wrapper", None)
        token_rows = sqlapi._query(sqlapi._TOKEN_SQL, ["oid"], [rows[0]["srvid"]])
        if token_rows:
            options.update(sqlapi._options(token_rows[0]["umoptions"]))
        columns = {
            r["attname"]: _Column(
                r["type_name"], r["base_type_name"], int(r["typmod"]), sqlapi._options(r["attfdwoptions"])
            )
            for r in sqlapi._query(_COLUMNS_SQL, ["text"], [table])
        }
        try:
            TableSpec.parse(options, columns)
        except ConfigError as exc:
            raise sqlapi._Fail(f"{exc.message} (foreign table {table})", exc.hint) from None


def check_row(TD: dict[str, Any]) -> None:
    """Refuse a multi-dimensional array in the new row (see the module docstring). PostgreSQL's arrays are
    rectangular, so a value is multi-dimensional exactly when its first element is a list."""
    for name, value in (TD.get("new") or {}).items():
        if isinstance(value, list) and value and isinstance(value[0], list):
            sqlapi._plpy().error(
                f"drift: column {name!r} holds a multi-dimensional array, which drift would flatten",
                hint="store a 1-D array (an embedding is always 1-D); use jsonb for nested lists",
                sqlstate="22023",
            )
