"""The bodies of the ``drift.*`` SQL functions (PL/Python; installed by ``sql/drift--0.1.0.sql``); those of
``drift.validate_table`` are in ``validate``, of the sharded tables' functions in ``shards`` and ``routing``.

Contract:

* Every function names its collection either by foreign table (``table``: a regclass's text) or by
  collection name (``target``) plus ``server``. ``server`` is a foreign server's name (its ``address``
  option, and ``token`` from the current user's or PUBLIC's user mapping) or an engine address
  (``unix:/path``, ``/path`` or ``host:port``; token from the setting ``drift.token``, with a WARNING:
  a setting stored by ALTER ROLE / DATABASE ... SET is readable by every role through
  ``pg_db_role_setting``, so the token belongs in a USER MAPPING of a foreign server, which only its
  user and the server's owner can read). When ``server`` is
  NULL: a drift foreign table called ``target`` supplies collection and server; otherwise the setting
  ``drift.server``; otherwise the only foreign server whose wrapper is ``drift_fdw.DriftFDW``.
  So everything works without Multicorn, given an address.
* Engine calls go through this backend's cached client (``connection``): ``search`` uses the ZeroMQ fast
  path and a SearchStream with ``limit = k``, so a selective filter still returns k rows when they exist.
* Failures raise ``plpy.error(message, hint=..., sqlstate=...)``: a clean ERROR, never a traceback.
* The module imports ``plpy`` only when called inside PostgreSQL; ``_plpy`` can be replaced for tests.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from drift_engine.errors import CollectionNotFoundError, DimensionMismatchError
from drift_fdw import batching
from drift_fdw import connection as conn
from drift_fdw.options import ColumnSpec
from drift_fdw.rows import NULL_VALUE, parse_vector

WRAPPER = "drift_fdw.DriftFDW"
WRAPPERS = (WRAPPER, "drift_fdw.fdw.DriftFDW")
COLLECTION_TTL_S = 30.0
_ADDRESS_RE = re.compile(r"^(unix:|/)|^[A-Za-z0-9_.\-\[\]:]+:\d+$")
_QUERY = ColumnSpec("query", "query", "real[]", "array", "float")
_plans: dict[str, Any] = {}
_collections: dict[tuple[str, str | None, str], tuple[float, Any]] = {}


def _plpy() -> Any:
    return sys.modules["plpy"]


@dataclass(frozen=True)
class Target:
    collection: str
    address: str
    token: str | None
    timeout: float


class _Fail(conn.SqlProblem):
    def __init__(self, message: str, hint: str | None = None, sqlstate: str = "22023") -> None:
        super().__init__(message, hint, sqlstate)


@contextmanager
def _errors(address: str = "") -> Iterator[None]:
    """Turn every failure into plpy.error (message, hint, SQLSTATE)."""
    plpy = _plpy()
    try:
        with conn.engine_call(address):
            yield
    except conn.SqlProblem as p:
        extra = {"hint": p.hint} if p.hint else {}
        plpy.error(p.message, sqlstate=p.sqlstate, **extra)


# ------------------------------------------------------------------------------------------ catalog
def _query(sql: str, types: list[str], values: list[Any]) -> list[Any]:
    plpy = _plpy()
    plan = _plans.get(sql)
    if plan is None:
        plan = _plans[sql] = plpy.prepare(sql, types)
    return list(plpy.execute(plan, values))


def _spi_error() -> type[BaseException]:
    """PL/Python's ``plpy.SPIError`` (a catalog query failed; PL/Python rolled its subtransaction back)."""
    return getattr(_plpy(), "SPIError", ())  # type: ignore[return-value]


def _options(raw: list[str] | None) -> dict[str, str]:
    out = {}
    for item in raw or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


_TABLE_SQL = """
SELECT ft.ftoptions, s.oid AS srvid, s.srvname, s.srvoptions
FROM pg_catalog.pg_foreign_table ft JOIN pg_catalog.pg_foreign_server s ON s.oid = ft.ftserver
WHERE ft.ftrelid = $1::regclass"""
_TABLE_BY_NAME_SQL = """
SELECT ft.ftoptions, s.oid AS srvid, s.srvname, s.srvoptions
FROM pg_catalog.pg_foreign_table ft JOIN pg_catalog.pg_foreign_server s ON s.oid = ft.ftserver
WHERE ft.ftrelid = pg_catalog.to_regclass($1)"""
_SERVER_SQL = "SELECT oid AS srvid, srvname, srvoptions FROM pg_catalog.pg_foreign_server WHERE srvname = $1"
_DRIFT_SERVERS_SQL = "SELECT oid AS srvid, srvname, srvoptions FROM pg_catalog.pg_foreign_server"
_TOKEN_SQL = """
SELECT umoptions FROM pg_catalog.pg_user_mappings
WHERE srvid = $1 AND (usename = current_user OR usename = 'public') ORDER BY usename = 'public' LIMIT 1"""
_SETTING_SQL = "SELECT pg_catalog.current_setting($1, true) AS value"


def _is_drift(srvoptions: list[str] | None) -> bool:
    return _options(srvoptions).get("wrapper", "") in WRAPPERS


def _server_target(collection: str, row: dict[str, Any]) -> Target:
    opts = _options(row["srvoptions"])
    if not _is_drift(row["srvoptions"]):
        raise _Fail(
            f"drift: foreign server {row['srvname']!r} is not a drift server",
            hint=f"its wrapper option must be '{WRAPPER}'",
            sqlstate="42809",  # wrong_object_type
        )
    token_rows = _query(_TOKEN_SQL, ["oid"], [row["srvid"]])
    token = _options(token_rows[0]["umoptions"]).get("token") if token_rows else None
    address = opts.get("address", "")
    if not address:
        raise _Fail(f"drift: foreign server {row['srvname']!r} has no address option")
    return Target(collection, address, token or None, float(opts.get("timeout", "30")))


def _setting(name: str) -> str | None:
    rows = _query(_SETTING_SQL, ["text"], [name])
    value = rows[0]["value"] if rows else None
    return value or None


def _table_target(row: dict[str, Any]) -> Target:
    topts = _options(row["ftoptions"])
    if "collection" not in topts:
        raise _Fail("drift: the foreign table has no collection option")
    return _server_target(topts["collection"], row)


def resolve(target: str | None = None, server: str | None = None, table: str | None = None) -> Target:
    """The collection and engine a call means (see the module docstring)."""
    if table is not None:
        try:
            rows = _query(_TABLE_SQL, ["text"], [table])
        except _spi_error():  # e.g. the OID of a dropped table: its regclass text is a bare number
            raise _Fail(
                f"drift: relation {table} does not exist",
                hint="pass an existing drift foreign table (it may have been dropped), or a collection name and "
                "server => '...'",
                sqlstate="42P01",  # undefined_table
            ) from None
        if not rows:
            raise _Fail(
                f"drift: {table} is not a foreign table",
                hint="pass a drift foreign table, or a collection name and server => '...'",
                sqlstate="42809",  # wrong_object_type
            )
        return _table_target(rows[0])
    if not target:
        raise _Fail("drift: no collection named", hint="pass a collection name or a foreign table")
    if server is None:
        try:
            rows = _query(_TABLE_BY_NAME_SQL, ["text"], [target])
        except _spi_error():  # not a relation name at all (a.b.c.d, an unterminated quote): a collection name
            rows = []
        if rows and _is_drift(rows[0]["srvoptions"]):
            return _table_target(rows[0])
    return resolve_server(server, target)


def resolve_server(server: str | None, collection: str = "") -> Target:
    """The engine of a server name or address; NULL: ``drift.server``, else the only drift foreign server."""
    if server is None:
        server = _setting("drift.server")
    if server is None:
        drift = [r for r in _query(_DRIFT_SERVERS_SQL, [], []) if _is_drift(r["srvoptions"])]
        if len(drift) == 1:
            return _server_target(collection, drift[0])
        raise _Fail(
            "drift: which engine? no server given"
            + (f" and {len(drift)} drift servers exist" if drift else " and no drift foreign server exists"),
            hint="pass server => 'name or unix:/path/drift.sock', or SET drift.server = '...'",
        )
    rows = _query(_SERVER_SQL, ["text"], [server])
    if rows:
        return _server_target(collection, rows[0])
    if _ADDRESS_RE.search(server):
        token = _setting("drift.token")
        if token is not None:
            _plpy().warning(
                "drift: using the token from the setting drift.token; set with ALTER ROLE / ALTER DATABASE it is "
                "readable by every role (pg_db_role_setting)",
                hint="create a foreign server for the engine and put the token in a USER MAPPING: CREATE USER "
                "MAPPING FOR CURRENT_USER SERVER s OPTIONS (token '...'); then pass server => 's'",
            )
        return Target(collection, server, token, 30.0)
    raise _Fail(
        f"drift: {server!r} is neither a foreign server nor an engine address",
        hint="an address looks like unix:/run/drift/drift.sock or 127.0.0.1:7070",
        sqlstate="42704",
    )


def _client(t: Target) -> Any:
    return conn.client(t.address, t.token, t.timeout)


def _collection(t: Target) -> Any:
    key = (t.address, t.token, t.collection)
    hit = _collections.get(key)
    if hit is not None and time.monotonic() - hit[0] < COLLECTION_TTL_S:
        return hit[1]
    col = _client(t).collection(t.collection)
    _collections[key] = (time.monotonic(), col)
    return col


def _with_collection(t: Target, fn: Callable[[Any], Any]) -> Any:
    """``fn(collection)``; a stale cached collection (dropped, re-created) is described again once."""
    key = (t.address, t.token, t.collection)
    cached = key in _collections
    try:
        return fn(_collection(t))
    except (CollectionNotFoundError, DimensionMismatchError):
        if not cached:
            raise
        _collections.pop(key, None)
        return fn(_collection(t))


def _finite(obj: Any) -> Any:
    """``obj`` with non-finite floats as the strings ``"Infinity"`` / ``"-Infinity"`` / ``"NaN"`` (valid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        return _finite(obj.item())
    return obj


def _json(obj: Any) -> str:
    return json.dumps(_finite(obj), default=str, sort_keys=True, allow_nan=False)


# ------------------------------------------------------------------------------------------ functions
def _shards() -> Any:
    from drift_fdw import shards

    return shards


def _sharded(target: str | None, server: str | None, table: str | None) -> Any:
    """The sharded table (``shards.Group``) a call names by its public name or parent, else None."""
    return _shards().group_of(target, server, table)


def search(
    target: str | None,
    query: list[float] | None,
    k: int = 10,
    server: str | None = None,
    filter: str | None = None,
    nprobe: int | None = None,
    ef: int | None = None,
    max_distance: float | None = None,
    payloads: bool = True,
    table: str | None = None,
) -> list[tuple[int, float, str | None]]:
    with _errors():
        t = resolve(target, server, table)
    with _errors(t.address):
        if query is None:
            raise _Fail(
                "drift: the query vector is NULL", hint="pass a real[] such as '{0.1,0.2}'", sqlstate=NULL_VALUE
            )
        if k is None:
            raise _Fail(
                "drift: k must not be NULL", hint="k is the number of rows wanted, 1 to 10000", sqlstate=NULL_VALUE
            )
        if not 1 <= k <= 10_000:
            raise _Fail(f"drift: k = {k} is out of range [1, 10000]")
        flt = _filter(filter)

        def run(col: Any) -> list[tuple[int, float, str | None]]:
            out: list[tuple[int, float, str | None]] = []
            vec = parse_vector(query, _QUERY, col.dim)
            stream = col.search_stream(
                vec, k=k, batch_size=k, limit=k, filter=flt, nprobe=nprobe, ef=ef,
                max_distance=max_distance, with_payloads=bool(payloads),
            )  # fmt: skip
            try:
                for batch in stream.batches():
                    pays = batch.payloads or [None] * len(batch.ids)
                    rows = zip(batch.ids.tolist(), batch.distances.tolist(), pays, strict=True)
                    out += [(i, d, None if p is None else json.dumps(p)) for i, d, p in rows]
            finally:
                stream.close()
            conn.COUNTERS["sql_searches"] += 1
            return out

        return _with_collection(t, run)


def get(
    target: str | None, ids: list[int] | None, server: str | None = None, table: str | None = None
) -> list[tuple[int, list[float], str | None]]:
    with _errors():
        t = resolve(target, server, table)
    with _errors(t.address):
        clean = batching.unique(ids or [])
        if not clean:
            return []
        got = _with_collection(
            t, lambda col: batching.get_many(col, clean, batching.rows_per_call(_client(t), t.address, col.dim))
        )
        conn.COUNTERS["lookups"] += 1
        return [
            (i, v.tolist(), None if p is None else json.dumps(p))
            for i, v, p in zip(got.ids.tolist(), got.vectors, got.payloads, strict=True)
        ]


def _filter(filter: str | None) -> dict[str, Any] | None:
    if filter is None:
        return None
    if _depth(filter) > MAX_FILTER_DEPTH:
        raise _Fail(
            f"drift: filter is nested deeper than {MAX_FILTER_DEPTH} levels",
            hint="flatten the filter (a few levels of and / or are plenty)",
        )
    try:
        flt = json.loads(filter)
    except ValueError:
        raise _Fail("drift: filter is not valid JSON") from None
    if not isinstance(flt, dict):
        raise _Fail("drift: filter must be a JSON object", hint='e.g. filter => \'{"category": "news"}\'')
    return flt


MAX_FILTER_DEPTH = 32


def _depth(text: str) -> int:
    """The deepest nesting of objects / arrays in JSON text, read without parsing it (``json.loads`` of a
    very deep value hits Python's recursion limit)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def create_collection(
    name: str, dim: int, metric: str = "l2", server: str | None = None, params: str | None = None,
    if_not_exists: bool = False,
) -> str:  # fmt: skip
    with _errors():
        t = resolve(name, server)
    with _errors(t.address):
        extra = json.loads(params) if params else {}
        if not isinstance(extra, dict):
            raise _Fail("drift: params must be a JSON object")
        cli = _client(t)
        if if_not_exists and cli.has_collection(t.collection):
            col = cli.collection(t.collection)
        else:
            col = cli.create_collection(t.collection, dim, metric or "l2", **extra)
        return _json({"name": col.name, "dim": col.dim, "metric": col.metric, "params": col.params()})


def drop_collection(
    name: str | None, server: str | None = None, if_exists: bool = False, table: str | None = None
) -> bool:
    with _errors():
        t = resolve(name, server, table)
    with _errors(t.address):
        cli = _client(t)
        _collections.pop((t.address, t.token, t.collection), None)
        try:
            cli.drop_collection(t.collection)
        except CollectionNotFoundError:
            if if_exists:
                return False
            raise
        return True


def train(target: str | None, server: str | None = None, n_buckets: int | None = None, table: str | None = None) -> str:
    if (group := _sharded(target, server, table)) is not None:
        return _shards().train(group, n_buckets)
    with _errors():
        t = resolve(target, server, table)
    with _errors(t.address):
        return _json(_with_collection(t, lambda col: col.train(n_buckets)))


def set_params(
    target: str | None, server: str | None, table: str | None, known: dict[str, Any], params: str | None
) -> str:
    group = _sharded(target, server, table)
    with _errors():
        t = resolve(target, server, table) if group is None else None
    with _errors(t.address if t is not None else ""):
        changes = {k: v for k, v in known.items() if v is not None}
        if params:
            extra = json.loads(params)
            if not isinstance(extra, dict):
                raise _Fail("drift: params must be a JSON object", hint="e.g. params => '{\"merge_factor\": 0.2}'")
            changes.update(extra)
        if not changes:
            raise _Fail("drift: no parameter given", hint="e.g. drift.set_params('items', nprobe => 64)")
        if group is not None:
            return _shards().set_params(group, changes)
        return _json(_with_collection(t, lambda col: col.set_params(**changes)))


def params(target: str | None, server: str | None = None, table: str | None = None) -> str:
    with _errors():
        t = resolve(target, server, table)
    with _errors(t.address):
        return _json(_with_collection(t, lambda col: col.params()))


def stats(target: str | None, server: str | None = None, table: str | None = None) -> list[tuple[str, str]]:
    if (group := _sharded(target, server, table)) is not None:
        return _shards().stats(group)
    with _errors():
        t = resolve(target, server, table)
    with _errors(t.address):
        result = _with_collection(t, lambda col: col.stats())
        return [(key, _json(result[key])) for key in sorted(result)]


def flush(target: str | None, server: str | None = None, table: str | None = None) -> int:
    if (group := _sharded(target, server, table)) is not None:
        return _shards().flush(group)
    with _errors():
        t = resolve(target, server, table)
    with _errors(t.address):
        return int(_with_collection(t, lambda col: col.flush()))


def maintain(
    target: str | None, server: str | None = None, max_jobs: int | None = None, table: str | None = None
) -> str:
    if (group := _sharded(target, server, table)) is not None:
        return _shards().maintain(group, max_jobs)
    with _errors():
        t = resolve(target, server, table)
    with _errors(t.address):
        return _json(_with_collection(t, lambda col: col.maintain(max_jobs)))


def collections(server: str | None = None) -> list[tuple[str, int, str, int]]:
    with _errors():
        t = resolve_server(server)
    with _errors(t.address):
        cli = _client(t)
        out = []
        for name in cli.list_collections():
            col = cli.collection(name)
            out.append((name, col.dim, col.metric, len(col)))
        return out


def health(server: str | None = None) -> str:
    with _errors():
        t = resolve_server(server)
    with _errors(t.address):
        return _json(_client(t).health())


def backend_stats() -> str:
    return _json(dict(conn.COUNTERS))


def upsert(target: str | None, rows_query: str, server: str | None = None, batch_size: int = 10_000,
           table: str | None = None) -> int:  # fmt: skip
    """Upsert the rows of ``rows_query`` (columns id, embedding[, payload]) in batches; returns the count.

    Each batch is applied (and durable) when sent: this is a loader, not transactional like the FDW.
    """
    with _errors():
        t = resolve(target, server, table)
    with _errors(t.address):
        if not 1 <= (batch_size or 0) <= 100_000:
            raise _Fail(f"drift: batch_size = {batch_size} is out of range [1, 100000]")
        plpy = _plpy()
        col = _collection(t)
        total = 0
        cursor = plpy.cursor(rows_query)
        while True:
            rows = cursor.fetch(batch_size)
            if not rows:
                break
            ids, vectors, payloads = _load_rows(rows, col.dim)
            col.upsert(ids, vectors, payloads)
            total += len(ids)
            conn.COUNTERS["write_calls"] += 1
            conn.COUNTERS["rows_written"] += len(ids)
        return total


def _load_rows(rows: Any, dim: int) -> tuple[list[int], list[Any], list[Any] | None]:
    names = list(rows[0].keys())
    id_col = "id" if "id" in names else names[0]
    emb_col = "embedding" if "embedding" in names else names[1] if len(names) > 1 else None
    pay_col = "payload" if "payload" in names else names[2] if len(names) > 2 else None
    if emb_col is None:
        raise _Fail("drift: the rows query must return id, embedding [, payload]")
    spec = ColumnSpec(emb_col, "embedding", "real[]", "array", "float")
    ids, vectors, payloads = [], [], []
    for r in rows:
        if r[id_col] is None:
            raise _Fail("drift: a row has a NULL id")
        ids.append(int(r[id_col]))
        vectors.append(parse_vector(r[emb_col], spec, dim))
        p = r[pay_col] if pay_col else None
        payloads.append(json.loads(p) if isinstance(p, str) else p)
    return ids, vectors, payloads if any(p is not None for p in payloads) else None


def delete(target: str | None, ids: list[int] | None, server: str | None = None, table: str | None = None) -> int:
    with _errors():
        t = resolve(target, server, table)
    with _errors(t.address):
        clean = [int(i) for i in ids or [] if i is not None]
        if not clean:
            return 0
        return int(_with_collection(t, lambda col: col.delete(clean)))
