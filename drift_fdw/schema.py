"""``IMPORT FOREIGN SCHEMA``: one foreign table definition per engine collection.

Contract of ``import_tables(srv_options, options, restriction_type, restricts)``:

* Lists the server's collections (``LIMIT TO`` / ``EXCEPT`` applied to collection names) and, for each,
  returns a ``TableDefinition`` named like the collection with the columns ``id bigint``, ``embedding`` and
  ``query`` (``real[]``, or ``vector(d)`` with the IMPORT option ``vector 'true'``), ``distance real``,
  ``k`` / ``nprobe`` / ``ef`` ``integer``, and one column per payload field seen in the first ``sample``
  payloads (IMPORT option, default 200; ``0`` = none) typed from the values: ``bigint``, ``double
  precision``, ``boolean``, ``text`` or ``jsonb`` (mixed or nested values). The table option
  ``collection`` names the collection; ``dim`` and ``metric`` are recorded too.
* The engine is reached with the foreign server's own TLS settings (``options.tls_settings``: an address
  ``tls:HOST:PORT`` with its ``tls_ca``, ``tls_server_name``, ``tls_pin``, ``tls_cert`` / ``tls_key``), as a
  table of that server would be; ``tls_*`` options on another address raise ``ConfigError``.
* The remote schema name of the statement is not used (the engine has one namespace). Unknown IMPORT
  options raise ``ConfigError``. Payload keys that would clash with a role column are skipped.
"""

from __future__ import annotations

from typing import Any

from multicorn import ColumnDefinition, TableDefinition

from drift_fdw import connection as conn
from drift_fdw.options import NAMED_ROLES, ConfigError, tls_settings

IMPORT_OPTIONS = ("vector", "sample")


def _json_type(values: list[Any]) -> str:
    kinds = set()
    for v in values:
        if isinstance(v, bool):
            kinds.add("boolean")
        elif isinstance(v, int):
            kinds.add("bigint")
        elif isinstance(v, float):
            kinds.add("double precision")
        elif isinstance(v, str):
            kinds.add("text")
        else:
            kinds.add("jsonb")
    if kinds == {"bigint", "double precision"}:
        return "double precision"
    return kinds.pop() if len(kinds) == 1 else "jsonb"


def _fields(col: Any, sample: int) -> list[tuple[str, str]]:
    if sample <= 0:
        return []
    seen: dict[str, list[Any]] = {}
    taken = 0
    for got in col.scan(min(sample, 1000), vectors=False, payloads=True):
        for payload in got.payloads:
            for key, value in (payload or {}).items():
                if value is not None:
                    seen.setdefault(key, []).append(value)
        taken += len(got)
        if taken >= sample:
            break
    return [(key, _json_type(values)) for key, values in seen.items() if key not in NAMED_ROLES]


def import_tables(
    srv_options: dict[str, str], options: dict[str, str], restriction_type: str | None, restricts: list[str]
) -> list[TableDefinition]:
    unknown = sorted(set(options) - set(IMPORT_OPTIONS))
    if unknown:
        raise ConfigError(
            f"drift: unknown IMPORT FOREIGN SCHEMA option {unknown[0]!r}", hint=f"options: {', '.join(IMPORT_OPTIONS)}"
        )
    use_vector = options.get("vector", "false").lower() in ("true", "t", "on", "yes", "1")
    try:
        sample = int(options.get("sample", "200"))
    except ValueError:
        raise ConfigError(f"drift: IMPORT option sample {options['sample']!r} is not a whole number") from None
    address = srv_options.get("address", "")
    if not address:
        raise ConfigError("drift: the foreign server has no 'address' option")
    timeout = float(srv_options.get("timeout", "30"))
    cli = conn.client(address, srv_options.get("token") or None, timeout, tls=tls_settings(srv_options))
    names = cli.list_collections()
    if restriction_type == "limit":
        names = [n for n in names if n in restricts]
    elif restriction_type == "except":
        names = [n for n in names if n not in restricts]
    tables = []
    for name in sorted(names):
        col = cli.collection(name)
        vec_type = f"vector({col.dim})" if use_vector else "real[]"
        columns = [
            ColumnDefinition("id", type_name="bigint"),
            ColumnDefinition("embedding", type_name=vec_type),
            ColumnDefinition("query", type_name=vec_type),
            ColumnDefinition("distance", type_name="real"),
            ColumnDefinition("k", type_name="integer"),
            ColumnDefinition("nprobe", type_name="integer"),
            ColumnDefinition("ef", type_name="integer"),
        ]
        columns += [ColumnDefinition(key, type_name=pg_type) for key, pg_type in _fields(col, sample)]
        opts = {"collection": name, "dim": str(col.dim), "metric": col.metric}
        tables.append(TableDefinition(name, columns=columns, options=opts))
    return tables
