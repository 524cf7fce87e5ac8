"""Sharded tables: one public name over drift collections on several engine servers (DESIGN §14).

``drift.create_sharded_table(name, dim, metric, servers => ARRAY['s1', 's2', ...])`` makes, for N servers:

* ``<name>_shards``: a table ``PARTITION BY HASH (id)`` with the columns ``id bigint NOT NULL, embedding
  real[], query text, distance real, k, nprobe, ef, rerank integer`` (``query text``: each shard's rows
  echo the literal without a per-row ``array_in``; README, query column) and the ``fields`` given (payload
  columns, e.g. ``'tag text, year integer'``); its partitions ``<name>_shard_<i>`` (``MODULUS N, REMAINDER
  i``) are drift foreign tables on the i-th server with the options ``collection`` (``collection``, default
  ``name``), ``dim``, ``metric``, ``shard_of`` (the public name, schema-qualified) and ``shard`` (the
  partition's name). Reads of the parent are answered by PostgreSQL as ``Limit -> Merge Append ->`` one
  distance-ordered scan per shard (``fanout`` sends every shard's first search at once).
* ``<name>``: a view ``SELECT * FROM <name>_shards`` whose triggers (``drift.route``, see ``routing``) put
  each written row straight into the write buffer of the partition PostgreSQL's hash picks for its id (the
  partition ``satisfies_hash_partition`` and ``WHERE id = x`` name), with no SQL statement per row: INSERT
  (also COPY and ``RETURNING``), UPDATE (one that changes ``id`` to another partition's moves the row:
  delete on the old shard, insert on the new one) and DELETE.
* Guards on the parent: ``drift.shard_guard`` refuses INSERT / COPY into ``<name>_shards`` (0A000) before
  any row is routed (Multicorn2 3.2 crashes the backend, signal 11, on a row PostgreSQL routes into a
  foreign partition: ``multicornGetForeignModifyBatchSize`` finds no ``ri_FdwState``), and
  ``drift.shard_key_guard`` refuses an UPDATE of the parent that changes ``id`` (it would be routed too).
* The collections on the engines (``if_not_exists``: reuse ones of the same dimension and metric).

``drift.drop_sharded_table(name)`` drops the view (with its triggers) and the parent (with its partitions), then the
collections (``drop_collections => false`` keeps them; missing ones are ignored, so a retry finishes).

``drift.train``, ``set_params``, ``stats``, ``flush`` and ``maintain`` given the public name or the parent
act on every shard (``group_of`` finds them): train / set_params / maintain return ``{shard: result}``,
flush the total, stats one row per statistic with the total over shards (sums; ``*_min`` / ``*_max`` the
min / max; means and medians the mean of the shards' values; equal values as they are; anything else a
list in shard order) plus a row ``shards`` holding every shard's own statistics. A shard that fails raises
an ERROR naming it; the shards before it have already done their part (the calls are not transactional).

Limits (precisely):

* COMMIT across shards: the writes of a transaction are buffered per shard; each shard's engine (one
  engine transaction per server, ``drift_fdw.txn``) validates and prepares them at PostgreSQL's pre-commit,
  so a duplicate id or a conflict on any shard fails the COMMIT and leaves nothing on any shard; the engines
  then commit one after another once PostgreSQL has committed. There is no coordinator log: if an engine
  dies or restarts (or the backend is killed) between PostgreSQL's commit and that engine's commit, that
  shard misses the transaction while the others have it (reported as a WARNING "outcome unknown" when the
  backend sees it). Atomic per shard always; across shards except in that window. ROLLBACK (or any error
  before COMMIT) leaves nothing on any shard.
* An id-changing UPDATE through the view is a DELETE plus an INSERT on two shards: the same per-shard
  commit applies.
* Rows must not be written to a partition other than the one the hash picks (the view never does); a
  direct ``INSERT INTO <name>_shard_<i>`` is not checked, and such a row is then invisible to
  ``WHERE id = x`` through the view (PostgreSQL prunes to the partition the hash picks).
* The number of shards is fixed at creation (re-sharding means a new sharded table and a copy).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from drift_engine.errors import CollectionNotFoundError
from drift_fdw import sqlapi

BASE_COLUMNS = (
    "id bigint NOT NULL, embedding real[], query text, distance real, k integer, nprobe integer, ef integer, "
    "rerank integer"
)


@dataclass(frozen=True)
class Shard:
    partition: str  # regclass text
    name: str  # the shard option
    server: str  # foreign server name
    target: sqlapi.Target


@dataclass(frozen=True)
class Group:
    public: str  # schema-qualified public name (the shard_of option)
    parent: str  # regclass text of the partitioned parent
    shards: tuple[Shard, ...]


def _plpy() -> Any:
    return sqlapi._plpy()


def _fail(message: str, hint: str | None = None, sqlstate: str = "22023") -> None:
    extra = {"hint": hint} if hint else {}
    _plpy().error(message, sqlstate=sqlstate, **extra)


def _lit(text: str) -> str:
    return _plpy().quote_literal(text)


def _ident(text: str) -> str:
    return _plpy().quote_ident(text)


# ------------------------------------------------------------------------------------------ finding shards
_REL_SQL = """
SELECT c.oid, c.relkind, n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass($1)"""
_SHARDS_SQL = """
SELECT c.oid::regclass::text AS part, i.inhparent::regclass::text AS parent, ft.ftoptions,
       s.oid AS srvid, s.srvname, s.srvoptions
FROM pg_catalog.pg_foreign_table ft
JOIN pg_catalog.pg_class c ON c.oid = ft.ftrelid
JOIN pg_catalog.pg_inherits i ON i.inhrelid = c.oid
JOIN pg_catalog.pg_foreign_server s ON s.oid = ft.ftserver
WHERE i.inhparent = $1 OR ft.ftoptions @> ARRAY['shard_of=' || $2]
ORDER BY c.relname"""


def group_of(target: str | None, server: str | None = None, table: str | None = None) -> Group | None:
    """The sharded table ``table`` or ``target`` (no ``server``) names, as its public name or its parent."""
    name = table if table is not None else (target if server is None else None)
    if not name:
        return None
    try:
        rel = sqlapi._query(_REL_SQL, ["text"], [name])
    except sqlapi._spi_error():
        return None
    if not rel or rel[0]["relkind"] not in ("v", "p"):
        return None
    public = f"{rel[0]['nspname']}.{rel[0]['relname']}"
    rows = [
        r
        for r in sqlapi._query(_SHARDS_SQL, ["oid", "text"], [rel[0]["oid"], public])
        if sqlapi._options(r["ftoptions"]).get("shard_of")
    ]
    if not rows:
        return None
    if rel[0]["relkind"] == "p":
        public = sqlapi._options(rows[0]["ftoptions"])["shard_of"]
    shards = []
    for r in rows:
        opts = sqlapi._options(r["ftoptions"])
        shards.append(Shard(r["part"], opts.get("shard") or r["part"], r["srvname"], sqlapi._table_target(r)))
    return Group(public, rows[0]["parent"], tuple(shards))


def _each(group: Group, fn: Any) -> list[tuple[Shard, Any]]:
    """``fn(collection)`` on every shard in order; a failure names the shard."""
    out = []
    for shard in group.shards:
        try:
            with sqlapi.conn.engine_call(shard.target.address):
                out.append((shard, sqlapi._with_collection(shard.target, fn)))
        except sqlapi.conn.SqlProblem as p:
            done = ", ".join(s.name for s, _ in out)
            text = p.message[len("drift: ") :] if p.message.startswith("drift: ") else p.message
            _fail(
                f"drift: shard {shard.name} of {group.public} (server {shard.server}): {text}",
                (p.hint + "; " if p.hint else "") + (f"already done on: {done}" if done else "no shard was changed"),
                p.sqlstate,
            )
    return out


# ------------------------------------------------------------------------------------------ the functions
def train(group: Group, n_buckets: int | None) -> str:
    return sqlapi._json({s.name: r for s, r in _each(group, lambda col: col.train(n_buckets))})


def set_params(group: Group, changes: dict[str, Any]) -> str:
    return sqlapi._json({s.name: r for s, r in _each(group, lambda col: col.set_params(**changes))})


def maintain(group: Group, max_jobs: int | None) -> str:
    return sqlapi._json({s.name: r for s, r in _each(group, lambda col: col.maintain(max_jobs))})


def flush(group: Group) -> int:
    return sum(int(r) for _, r in _each(group, lambda col: col.flush()))


_PER_SHARD = ("name", "version", "wal_last_lsn")


def total(key: str, values: list[Any]) -> Any:
    """The value over all shards of one statistic (see the module docstring)."""
    if key in _PER_SHARD:
        return values
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(nums) == len(values) and values:
        if key.endswith("_min"):
            return min(nums)
        if key.endswith("_max"):
            return max(nums)
        if key.endswith(("_mean", "_median")):
            return sum(nums) / len(nums)
        if all(v == values[0] for v in values) and key in ("dim",):
            return values[0]
        return sum(nums)
    if all(isinstance(v, bool) for v in values):
        return all(values)
    if all(v == values[0] for v in values):
        return values[0]
    return values


def stats(group: Group) -> list[tuple[str, str]]:
    per = _each(group, lambda col: col.stats())
    keys = sorted({k for _, r in per for k in r})
    rows = [(k, sqlapi._json(total(k, [r.get(k) for _, r in per]))) for k in keys if k != "name"]
    rows.append(("name", sqlapi._json(group.public)))
    rows.append(("shards", sqlapi._json([{"shard": s.name, "server": s.server, **r} for s, r in per])))
    return sorted(rows)


# ------------------------------------------------------------------------------------------ create / drop
def _split_name(name: str) -> tuple[str, str]:
    parts = [r["p"] for r in _plpy().execute(f"SELECT unnest(pg_catalog.parse_ident({_lit(name)})) AS p")]
    if len(parts) == 1:
        schema = _plpy().execute("SELECT pg_catalog.current_schema() AS s")[0]["s"]
        if schema is None:
            _fail("drift: no schema to create the sharded table in", hint="qualify the name: schema.name")
        return schema, parts[0]
    if len(parts) != 2:
        _fail(f"drift: {name!r} is not a table name", hint="name or schema.name")
    return parts[0], parts[1]


def _servers(servers: list[str] | None) -> list[dict[str, Any]]:
    if servers is None:
        rows = [r for r in sqlapi._query(sqlapi._DRIFT_SERVERS_SQL, [], []) if sqlapi._is_drift(r["srvoptions"])]
        rows.sort(key=lambda r: r["srvname"])
    else:
        rows = []
        for name in servers:
            found = sqlapi._query(sqlapi._SERVER_SQL, ["text"], [name]) if name else []
            if not found:
                _fail(f"drift: foreign server {name!r} does not exist", "create it first", "42704")
            rows.append(found[0])
    if not rows:
        _fail("drift: no servers for the shards", hint="servers => ARRAY['s1', 's2', ...] (drift foreign servers)")
    names = [r["srvname"] for r in rows]
    if len(set(names)) != len(names):
        _fail("drift: a server is listed twice", hint="one shard per foreign server")
    for r in rows:
        if not sqlapi._is_drift(r["srvoptions"]):
            _fail(f"drift: foreign server {r['srvname']!r} is not a drift server", sqlstate="42809")
    return rows


def create_sharded_table(
    name: str, dim: int, metric: str | None, servers: list[str] | None, fields: str | None,
    collection: str | None, if_not_exists: bool,
) -> str:  # fmt: skip
    plpy = _plpy()
    if dim is None or not 1 <= dim <= 16_000:
        _fail(f"drift: dim = {dim} is out of range [1, 16000]")
    metric = metric or "l2"
    if fields and ";" in fields:
        _fail("drift: fields must be column definitions such as 'tag text, year integer'")
    schema, rel = _split_name(name)
    public = f"{schema}.{rel}"
    coll = collection or rel
    rows = _servers(servers)
    n = len(rows)
    q = _ident(schema)
    parent, view = f"{q}.{_ident(rel + '_shards')}", f"{q}.{_ident(rel)}"
    columns = BASE_COLUMNS + (f", {fields}" if fields else "")
    plpy.execute(f"CREATE TABLE {parent} ({columns}) PARTITION BY HASH (id)")
    parts = []
    for i, r in enumerate(rows):
        part = f"{q}.{_ident(f'{rel}_shard_{i}')}"
        shard = f"{rel}_shard_{i}"
        opts = (f"collection {_lit(coll)}, dim {_lit(str(dim))}, metric {_lit(metric)}, "
                f"shard_of {_lit(public)}, shard {_lit(shard)}")  # fmt: skip
        plpy.execute(
            f"CREATE FOREIGN TABLE {part} PARTITION OF {parent} FOR VALUES WITH (MODULUS {n}, REMAINDER {i}) "
            f"SERVER {_ident(r['srvname'])} OPTIONS ({opts})"
        )
        parts.append(part)
    plpy.execute(f"CREATE VIEW {view} AS SELECT * FROM {parent}")
    route = ", ".join(_lit(a) for a in (public, str(n), *parts))
    plpy.execute(f"CREATE TRIGGER drift_route INSTEAD OF INSERT OR UPDATE OR DELETE ON {view} "
                 f"FOR EACH ROW EXECUTE FUNCTION drift.route({route})")  # fmt: skip
    plpy.execute(f"CREATE TRIGGER drift_route_statement BEFORE INSERT OR UPDATE OR DELETE ON {view} "
                 f"FOR EACH STATEMENT EXECUTE FUNCTION drift.route({route})")  # fmt: skip
    plpy.execute(f"CREATE TRIGGER drift_shard_guard BEFORE INSERT ON {parent} FOR EACH STATEMENT "
                 f"EXECUTE FUNCTION drift.shard_guard({_lit(public)})")  # fmt: skip
    plpy.execute(f"CREATE TRIGGER drift_shard_key_guard BEFORE UPDATE ON {parent} FOR EACH ROW "
                 f"EXECUTE FUNCTION drift.shard_key_guard({_lit(public)})")  # fmt: skip
    plpy.execute(f"COMMENT ON VIEW {view} IS {_lit(f'drift sharded table over {n} shards ({parent})')}")
    created: list[tuple[sqlapi.Target, str]] = []
    out = []
    for i, r in enumerate(rows):
        t = sqlapi._server_target(coll, r)
        with sqlapi._errors(t.address):
            try:
                cli = sqlapi._client(t)
                if if_not_exists and cli.has_collection(coll):
                    col = cli.collection(coll)
                    if col.dim != dim or col.metric != metric:
                        raise sqlapi._Fail(
                            f"drift: collection {coll!r} on server {r['srvname']} has dim {col.dim} and metric "
                            f"{col.metric}, not {dim} and {metric}",
                            sqlstate="42710",
                        )
                else:
                    cli.create_collection(coll, dim, metric)
                    created.append((t, r["srvname"]))
            except Exception:
                _undo(created)
                raise
        out.append({"partition": parts[i], "server": r["srvname"], "remainder": i, "collection": coll})
    return sqlapi._json({"name": public, "parent": parent, "view": view, "modulus": n, "shards": out})


def _undo(created: list[tuple[sqlapi.Target, str]]) -> None:
    """Drop the collections this call created (the SQL objects roll back with the failed statement)."""
    for t, _ in created:
        try:
            with sqlapi.conn.engine_call(t.address):
                sqlapi._client(t).drop_collection(t.collection)
        except sqlapi.conn.SqlProblem:
            pass  # the original error matters more; an empty collection is left behind


def drop_sharded_table(name: str, drop_collections: bool) -> str:
    plpy = _plpy()
    group = group_of(name)
    if group is None:
        _fail(f"drift: {name} is not a sharded table", hint="pass the name given to drift.create_sharded_table",
              sqlstate="42809")  # fmt: skip
    schema, rel = group.public.split(".", 1)
    q = _ident(schema)
    plpy.execute(f"DROP VIEW IF EXISTS {q}.{_ident(rel)}")
    plpy.execute(f"DROP FUNCTION IF EXISTS {q}.{_ident(rel + '_route')}()")  # the routing of earlier versions
    plpy.execute(f"DROP TABLE {group.parent} CASCADE")
    dropped = []
    if drop_collections:
        for shard in group.shards:
            t = shard.target
            sqlapi._collections.pop((t.address, t.token, t.collection), None)
            try:
                with sqlapi.conn.engine_call(t.address), contextlib.suppress(CollectionNotFoundError):
                    sqlapi._client(t).drop_collection(t.collection)
            except sqlapi.conn.SqlProblem as p:
                _fail(
                    f"drift: shard {shard.name} of {group.public} (server {shard.server}): {p.message}",
                    f"collections already dropped: {', '.join(dropped) or 'none'}; the tables are kept (this "
                    "statement rolls back); run drift.drop_sharded_table again once the server is back",
                    p.sqlstate,
                )
            dropped.append(shard.name)
    return json.dumps({"name": group.public, "shards": len(group.shards), "collections_dropped": dropped})
