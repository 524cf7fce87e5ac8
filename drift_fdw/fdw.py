"""``DriftFDW``: a Multicorn2 foreign data wrapper over one drift collection (DESIGN §12).

Contract (what PostgreSQL sees):

* Scans (see ``quals.plan_scan`` for which conditions are pushed down): kNN (``query = ...``), range
  (``distance < x``), filtered kNN, point lookups (``id = ...`` / ``id = ANY(...)``) and full scans.
  kNN rows come from a generator over the engine's ``SearchStream`` in non-decreasing distance, one batch
  at a time, so a ``Limit`` node above stops the engine early; ``can_sort`` accepts ``distance ASC``.
  ``can_limit`` (PostgreSQL offers it only when there are no quals) is always accepted and then applied
  exactly, since PostgreSQL does not apply an accepted LIMIT / OFFSET again. Only the columns asked for
  are returned (rows are lists in column order, ``rows.RowMaker``); ``query`` and the knobs are echoed
  back so PostgreSQL's re-check of them passes.
* Estimates (``get_rel_size``): a kNN of k rows (default 10) whose width counts the echoed query vector; a
  prepared ``query = $1 ... LIMIT n`` statement therefore keeps PostgreSQL's generic plan (Multicorn passes
  no parameter to ``get_rel_size``, so that plan is estimated as a full scan cut by the LIMIT, which must not
  cost more than the custom plan, or every execution is planned again). That holds for n up to about
  40 x dimensions / the width of the other columns read (``SELECT id``: ~120 at 128-d, ~330 at 384-d).
* kNN never ends silently short: past the engine's per-search cap the scan raises an ERROR (``knn``).
  A scan that has no ``query = <vector>`` condition but reads ``query`` (``query IN (a, b)``, ``query = a
  OR query = b``: Multicorn does not pass those on) raises an ERROR instead of returning no rows.
* Writes: INSERT, UPDATE and DELETE, with ``id`` as rowid, are validated at once and buffered per
  transaction (``writes.WriteBuffer``); pre-commit applies the buffer (one atomic engine batch when it fits
  in one call), ROLLBACK drops it, savepoints are honoured. Inserts go one row per call (batch size 1) so
  ``RETURNING`` returns the row and the command tag counts it: INSERT leaves PostgreSQL's own row in place
  (it is the row as written), UPDATE returns the row as written. A bulk ``INSERT ... SELECT`` runs at the
  speed of batched inserts all the same (measured: 50,000 rows of 128 dimensions at about 12,700 rows/s).
  Scans of the table in the same transaction see the buffer (``overlay``), so UPDATE / DELETE of a row
  inserted earlier in the transaction apply to it.
* ``explain`` lists what was pushed down and what PostgreSQL filters itself; ``import_schema`` creates a
  foreign table per collection (``connection``-level options ``sample`` and ``vector``).
* Every failure reaches PostgreSQL as an ERROR with a hint and the SQLSTATE ``connection.problem`` gives
  it, the same as the ``drift.*`` functions' (``errcodes``: Multicorn itself reports every error as
  XX000); nothing raised here escapes as a Python traceback, and the backend keeps serving.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import numpy as np
from multicorn import ForeignDataWrapper, SortKey, TableDefinition

from drift_engine.errors import CollectionNotFoundError
from drift_fdw import batching, errcodes, explain_guard, fanout, knn, multicorn_glue, overlay, scanrows, txn
from drift_fdw import connection as conn
from drift_fdw.options import ConfigError, TableSpec
from drift_fdw.quals import ScanPlan, parse_query, plan_scan
from drift_fdw.rows import (
    NULL_VALUE,
    RowLayout,
    RowMaker,
    ValueProblem,
    array_literal,
    parse_int,
    parse_vector,
    payload_value,
    vector_literal,
)
from drift_fdw.schema import import_tables
from drift_fdw.writes import WriteBuffer

INFO_TTL_S = 30.0
SCAN_BATCH = 1000
LAST_PLANNED: Any = None  # the instance PostgreSQL planned a scan of most recently (see copyin)
multicorn_glue.memoise_helper_classes()


def _fail(exc: BaseException, address: str = "") -> NoReturn:
    """Report ``exc`` as an ERROR with its SQLSTATE (raises the exception Multicorn turns into ereport)."""
    errcodes.fail(conn.problem(exc, address))


class DriftFDW(ForeignDataWrapper):
    """One instance per foreign table per backend (Multicorn caches it); see the module docstring."""

    def __init__(self, fdw_options: dict[str, str], fdw_columns: dict[str, Any]) -> None:
        super().__init__(fdw_options, fdw_columns)
        try:
            self.spec = TableSpec.parse(dict(fdw_options), fdw_columns)
        except ConfigError as exc:
            _fail(exc)
        self._info: tuple[float, int, str] | None = None  # (described at, dim, metric)
        self._writes = WriteBuffer()
        self._streams: set[Any] = set()
        self._layouts: dict[frozenset[str], tuple[frozenset[str], RowLayout]] = {}
        self.inserting = False  # between PostgreSQL's INSERT set-up (modify_batch_size) and end_modify
        fanout.register(self)  # a shard of a sharded table (option shard_of): see fanout

    # ------------------------------------------------------------------ engine access
    def _client(self) -> Any:
        return conn.client(self.spec.address, self.spec.token, self.spec.timeout)

    def _collection(self) -> Any:
        """The engine collection (described once per ``INFO_TTL_S``; created when ``create 'true'``)."""
        spec = self.spec
        cli = self._client()
        try:
            col = cli.collection(spec.collection)
        except CollectionNotFoundError:
            if not spec.create:
                raise
            col = cli.create_collection(spec.collection, spec.vector_dim, spec.metric or "l2")
        if spec.vector_dim is not None and col.dim != spec.vector_dim:
            raise ConfigError(
                f"drift: collection {spec.collection!r} has {col.dim} dimensions, the foreign table says "
                f"{spec.vector_dim}",
                hint="make the table's dim option / vector(n) columns match the collection",
            )
        if spec.metric is not None and col.metric != spec.metric:
            raise ConfigError(
                f"drift: collection {spec.collection!r} uses metric {col.metric!r}, the foreign table says "
                f"{spec.metric!r}",
                hint="drop the table's metric option or make it match",
            )
        self._col = col
        self._info = (time.monotonic(), col.dim, col.metric)
        return col

    def _col_fresh(self) -> Any:
        if self._info is None or time.monotonic() - self._info[0] > INFO_TTL_S:
            return self._collection()
        return self._col

    @property
    def _dim(self) -> int | None:
        return self._info[1] if self._info is not None else self.spec.vector_dim

    # ------------------------------------------------------------------ planning
    def get_rel_size(self, quals: list[Any], columns: list[str]) -> tuple[int, int]:
        global LAST_PLANNED
        LAST_PLANNED = self
        fanout.planned(self)
        with contextlib.suppress(Exception):  # planning must not fail because of the guard
            explain_guard.protect(self)
        width = 16 * max(1, len(columns))
        if "embedding" in self.spec.roles and self.spec.roles["embedding"] in columns:
            width += 12 * (self._dim or 128)
        try:
            plan = plan_scan(quals, self.spec, None, vectors=False)
        except Exception:
            return (10, width)
        if plan.mode == "lookup":
            return (max(1, len(plan.ids or [])), width)
        if plan.mode == "knn":
            if self.spec.roles.get("query") in columns:  # every kNN row carries the query vector back
                width += 4 * (self._dim or 128) + 24
            return (plan.knobs.get("k", 10), width)
        return (1_000_000, width)

    def get_path_keys(self) -> list[tuple[tuple[str, ...], int]]:
        keys = []
        if "id" in self.spec.roles:
            keys.append(((self.spec.roles["id"],), 1))
        if "query" in self.spec.roles:
            keys.append(((self.spec.roles["query"],), 10))
        return keys

    def can_sort(self, sortkeys: list[SortKey]) -> list[SortKey]:
        distance = self.spec.roles.get("distance")
        first = sortkeys[0] if sortkeys else None
        if first is not None and first.attname == distance and not first.is_reversed and not first.nulls_first:
            return [first]
        return []

    def can_limit(self, limit: int | None, offset: int | None) -> bool:
        return True

    # ------------------------------------------------------------------ scans
    def explain(
        self,
        quals: list[Any],
        columns: list[str],
        sortkeys: list[SortKey] | None = None,
        verbose: bool = False,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[str]:
        try:
            return self._explain_lines(quals, columns, sortkeys, verbose, limit, offset)
        except Exception as exc:  # never raise here: see explain_guard
            return [f"drift: {exc}"]

    def _explain_lines(
        self,
        quals: list[Any],
        columns: list[str],
        sortkeys: list[SortKey] | None,
        verbose: bool,
        limit: int | None,
        offset: int | None,
    ) -> list[str]:
        hidden = explain_guard.take_hidden()
        late = (
            [f"drift: {hidden} condition(s) get their values only at run time (not shown; the plan may change)"]
            if hidden
            else []
        )
        try:
            plan = plan_scan(quals, self.spec, self._dim)
        except (ValueProblem, ConfigError) as exc:
            return [*late, f"drift: {exc}"]
        mode = {"knn": "kNN stream", "lookup": "point lookup", "scan": "full scan", "empty": "no rows"}[plan.mode]
        if hidden and plan.mode == "scan":
            mode = "decided at run time"
        lines = [f"drift: collection {self.spec.collection!r} at {self.spec.address}: {mode}", *late]
        lines += [f"drift pushed down: {p}" for p in plan.pushed]
        if sortkeys:
            lines.append("drift pushed down: ORDER BY " + ", ".join(s.attname for s in sortkeys))
        if limit is not None or offset is not None:
            lines.append(f"drift pushed down: LIMIT {limit} OFFSET {offset or 0}")
        if plan.left:
            lines.append("drift left to PostgreSQL: " + "; ".join(plan.left))
        if verbose:
            lines.append("drift columns: " + ", ".join(sorted(columns)))
        return lines

    def execute(
        self,
        quals: list[Any],
        columns: Any,
        sortkeys: list[SortKey] | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Iterator[list[Any]]:
        if limit == 0:  # nothing to read (drift.enable_copy's triggers plan such a scan to find this instance)
            return iter(())
        address = self.spec.address
        own, layout = self._read_columns(columns)
        at_once = limit is None and not offset and not self._writes and self.spec.shard_of is None
        try:
            with conn.engine_call(address):
                col = self._col_fresh()
                plan = plan_scan(quals, self.spec, col.dim, vectors=False, executing=True)
                if not (at_once and plan.mode == "knn" and not layout.others):
                    parse_query(plan, col.dim)  # else the server parses the literal (knn.first_lists)
        except conn.SqlProblem as exc:
            if self.spec.shard_of is not None:  # name the shard; allow_partial may skip an unreachable one
                if fanout.skip_shard(self.spec, exc, _mode(quals, self.spec)):
                    return iter(())
                exc = fanout.shard_problem(self.spec, exc)
            errcodes.fail(exc)
        query_col = self.spec.roles.get("query")
        if plan.query_echo is None and query_col in own and own != set(self.spec.columns):
            errcodes.fail(  # e.g. query IN (a, b) or query = a OR query = b: Multicorn does not pass those on
                conn.SqlProblem(
                    f"drift: {query_col} only works as  {query_col} = <one vector>  (IN lists and OR of vectors "
                    "are not pushed down, and drift cannot answer them)",
                    hint="run one kNN per query vector, e.g. SELECT ... FROM unnest(...) q, LATERAL (SELECT ... "
                    "WHERE query = q ORDER BY distance LIMIT n) s",
                    sqlstate="0A000",  # feature_not_supported
                )
            )
        if plan.mode == "empty":
            return iter(())
        if plan.mode == "knn" and at_once:
            return self._knn_at_once(col, plan, own, layout)
        rows = self._rows(col, plan, set(own), bool(sortkeys))
        if limit is not None or offset is not None:
            rows = scanrows.window(rows, limit, offset or 0)
        return rows

    def _rows(self, col: Any, plan: ScanPlan, columns: set[str], sort: bool) -> Iterator[list[Any]]:
        try:
            if plan.mode == "lookup":
                yield from self._lookup(col, plan, columns, sort)
            elif plan.mode == "knn":
                yield from self._knn(col, plan, columns)
            else:
                yield from self._scan(col, columns)
        except Exception as exc:  # GeneratorExit (the Limit node stopped) is not an Exception: it passes
            self._info = None  # describe the collection again next time (it may have been re-created)
            if self.spec.shard_of is None:
                _fail(exc, self.spec.address)
            if not fanout.skip_shard(self.spec, exc, plan.mode):
                errcodes.fail(fanout.shard_problem(self.spec, exc))

    def _read_columns(self, columns: Any) -> tuple[frozenset[str], RowLayout]:
        """(the table's columns among ``columns`` (not ctid / tableoid: UPDATE via a view or a parent), their
        row layout), computed once per set of columns."""
        key = columns if isinstance(columns, frozenset) else frozenset(columns)
        got = self._layouts.get(key)
        if got is None:
            own = frozenset(c for c in key if c in self.spec.columns)
            got = self._layouts[key] = (own, RowLayout(self.spec, own))
        return got

    def _knn_at_once(self, col: Any, plan: ScanPlan, columns: frozenset[str], layout: RowLayout) -> Iterator[list[Any]]:
        """A kNN scan with nothing buffered, not a shard (``scanrows.knn_at_once``): the same rows as ``_knn``."""
        try:
            rows, more = scanrows.knn_at_once(self.spec, col, plan, columns, layout, self._streams)
        except Exception as exc:
            self._info = None  # describe the collection again next time (it may have been re-created)
            _fail(exc, self.spec.address)
        return iter(rows) if more is None else itertools.chain(rows, self._guarded(more))

    def _guarded(self, rows: Iterator[list[Any]]) -> Iterator[list[Any]]:
        """``rows`` with the errors of a scan reported as ``_rows`` reports them."""
        try:
            yield from rows
        except Exception as exc:
            self._info = None
            _fail(exc, self.spec.address)

    def _wants(self, columns: set[str]) -> tuple[bool, bool]:
        """(needs payloads, needs vectors) for these columns."""
        spec = self.spec
        payloads = any(spec.columns[c].role in ("field", "payload") for c in columns if c in spec.columns)
        emb = spec.roles.get("embedding")
        return payloads, emb is not None and emb in columns

    def _knn(self, col: Any, plan: ScanPlan, columns: set[str]) -> Iterator[list[Any]]:
        want_payloads, want_vectors = self._wants(columns)
        first = fanout.first_answer(self, plan, want_payloads)  # siblings' searches sent at once (shards)
        hits = knn.knn_hits(col, plan, self.spec.address, want_payloads, want_vectors, self._streams, first)
        if len(self._writes):
            hits = overlay.knn(hits, self._writes, plan, lambda v: scanrows.distances(v, plan.query, col.metric))
        make = RowMaker(self.spec, columns, plan.query_echo, plan.knobs).make
        for hit in hits:
            yield make(hit.id, hit.distance, hit.vector, hit.payload)

    def _lookup(self, col: Any, plan: ScanPlan, columns: set[str], sort: bool) -> Iterator[list[Any]]:
        address = self.spec.address
        with conn.engine_call(address):
            got = None
            if plan.ids:  # any number of ids: split into calls the server takes
                bounded = txn.Bounded(col)
                got = batching.get_many(bounded, plan.ids, batching.rows_per_call(self._client(), address, col.dim))
                for ident in got.ids.tolist():
                    self._writes.note_read(ident, bounded.read_lsn)
        conn.COUNTERS["lookups"] += 1
        rows = overlay.lookup_rows(plan.ids or [], got, self._writes)
        if not rows:
            return
        dists: list[float | None] = [None] * len(rows)
        if plan.query is not None:
            d = scanrows.distances(np.stack([r[1] for r in rows]), plan.query, col.metric)
            dists = d.tolist()
            if sort:
                order = np.argsort(d, kind="stable").tolist()
                rows, dists = [rows[i] for i in order], [dists[i] for i in order]
        make = RowMaker(self.spec, columns, plan.query_echo, plan.knobs).make
        for (ident, vec, payload), dist in zip(rows, dists, strict=True):
            yield make(ident, dist, vec, payload)

    def _scan(self, col: Any, columns: set[str]) -> Iterator[list[Any]]:
        want_payloads, want_vectors = self._wants(columns)
        address = self.spec.address
        conn.COUNTERS["scans"] += 1
        buffered = len(self._writes) > 0
        make = RowMaker(self.spec, columns, None, {}).make
        with conn.engine_call(address):
            batches = col.scan(SCAN_BATCH, vectors=want_vectors, payloads=want_payloads)
        try:
            while True:
                with conn.engine_call(address):
                    got = next(batches, None)
                if got is None:
                    break
                conn.COUNTERS["scan_rows"] += len(got)
                read_lsn = int(getattr(got, "read_lsn", 0))
                for i, ident in enumerate(got.ids.tolist()):
                    if buffered and overlay.hides(self._writes, ident):
                        continue
                    self._writes.note_read(ident, read_lsn)
                    vec = got.vectors[i] if want_vectors else None
                    payload = got.payloads[i] if want_payloads else None
                    yield make(ident, None, vec, payload)
        finally:
            batches.close()
        for ident, vec, payload in overlay.scan_extra(self._writes) if buffered else []:
            yield make(ident, None, vec, payload)

    def end_scan(self) -> None:
        pass  # each scan's generator closes its own stream when PostgreSQL drops it

    # ------------------------------------------------------------------ writes
    @property
    def rowid_column(self) -> str:
        name = self.spec.roles.get("id")
        if name is None:
            _fail(ConfigError("drift: the foreign table has no id column", hint="add a column  id bigint"))
        return name

    @property
    def modify_batch_size(self) -> int:
        """1: PostgreSQL returns no RETURNING rows for batched foreign inserts (and then reports INSERT 0 0),
        and an FDW cannot tell whether the statement has RETURNING. Rows are only buffered here and insert()
        returns nothing to convert, so one call per row costs no more than a batch of them."""
        self.inserting = True  # PostgreSQL asks only when it sets up an INSERT (never for COPY)
        return 1

    def end_modify(self) -> None:
        self.inserting = False

    def _vector_and_payload(self, values: dict[str, Any], ident: int) -> tuple[np.ndarray, dict[str, Any] | None]:
        spec = self.spec
        emb = spec.column("embedding")
        if emb is None:
            raise ConfigError("drift: the foreign table has no embedding column", hint="add  embedding real[]")
        raw = values.get(emb.name)
        if raw is None:
            raise ValueProblem(
                f"drift: id {ident} has no {emb.name}", hint="every row needs its vector", sqlstate=NULL_VALUE
            )
        vec = parse_vector(raw, emb, self._dim)
        if self._info is not None and self._info[2] == "cosine" and not np.any(vec):
            raise ValueProblem(f"drift: id {ident} has a zero vector, which has no direction (cosine metric)")
        payload: dict[str, Any] = {}
        whole = spec.column("payload")
        if whole is not None and values.get(whole.name) is not None:
            obj = payload_value(values[whole.name], whole)
            if not isinstance(obj, dict):
                raise ValueProblem(f"drift: column {whole.name!r} must hold a JSON object")
            payload.update(obj)
        for name, key in spec.fields.items():
            v = payload_value(values.get(name), spec.columns[name])
            if v is not None:
                payload[key] = v
        return vec, payload or None

    def _id_of(self, values: dict[str, Any]) -> int:
        name = self.rowid_column
        if values.get(name) is None:
            raise ValueProblem(f"drift: {name} must not be NULL", hint="every row needs an id", sqlstate=NULL_VALUE)
        return parse_int(values[name], name)

    def _modify(self, fn: Any) -> Any:
        try:
            with conn.engine_call(self.spec.address):
                self._col_fresh()
                return fn()
        except conn.SqlProblem as exc:
            self._info = None
            errcodes.fail(exc)

    def _returned(self, values: dict[str, Any], ident: int, vec: np.ndarray) -> dict[str, Any]:
        """The row as written, for RETURNING (values in a form PostgreSQL's input functions take)."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            c = self.spec.columns.get(name)
            if c is None:
                continue
            if c.role == "id":
                out[name] = ident
            elif c.role == "embedding":
                out[name] = vector_literal(vec, c.pgvector)
            elif isinstance(value, list | tuple):
                out[name] = array_literal(value)
            else:
                out[name] = value
        return out

    def insert(self, values: dict[str, Any]) -> None:
        """Buffer one row. Returns None: Multicorn then leaves PostgreSQL's own row in place, which is the row
        as written (the id as given, the vector's float32 values as PostgreSQL parsed them, payload values as
        given), so RETURNING and the command tag are right without formatting the row again."""

        def run() -> None:
            ident = self._id_of(values)
            vec, payload = self._vector_and_payload(values, ident)
            self._writes.insert(ident, vec, payload)

        self._modify(run)

    def bulk_insert(self, all_values: list[dict[str, Any]]) -> None:
        def run() -> None:
            for values in all_values:
                ident = self._id_of(values)
                self._writes.insert(ident, *self._vector_and_payload(values, ident))

        self._modify(run)

    def update(self, oldvalues: Any, newvalues: dict[str, Any]) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            old = parse_int(oldvalues, self.rowid_column)
            new = self._id_of(newvalues)
            vec, payload = self._vector_and_payload(newvalues, new)
            self._base(old)
            if new != old:
                self._writes.delete(old)
                self._writes.insert(new, vec, payload)
            else:
                self._writes.update(new, vec, payload)
            return self._returned(newvalues, new, vec)

        return self._modify(run)

    def delete(self, oldvalues: Any) -> None:
        def run() -> None:
            ident = parse_int(oldvalues, self.rowid_column)
            self._base(ident)
            self._writes.delete(ident)

        self._modify(run)

    def _base(self, ident: int) -> None:
        """Record the version an UPDATE / DELETE of ``ident`` is based on (``drift_fdw.txn``)."""
        if self._writes.pending(ident) is not None:
            return
        read_lsn = self._writes.seen(ident)
        if read_lsn is None:  # read by a kNN scan (no read_lsn there): bound it now
            read_lsn = self._col_fresh().get([ident]).read_lsn
        self._writes.base(ident, read_lsn)

    # ------------------------------------------------------------------ transactions
    def begin(self, serializable: bool) -> None:
        self._writes.clear()
        self.inserting = False

    def pre_commit(self) -> None:
        """Stage this table's writes into the server's engine transaction and prepare it (``drift_fdw.txn``)."""
        if not len(self._writes) and not self._writes.expectations():
            return
        try:
            with conn.engine_call(self.spec.address):
                self._apply()
        except conn.SqlProblem as exc:
            self._writes.clear()
            self._info = None
            errcodes.fail(exc)

    def _apply(self) -> None:
        txn.prepare(self)
        self._writes.clear()

    def _max_rows(self, col: Any) -> int:
        return batching.rows_per_call(self._client(), self.spec.address, col.dim)

    def commit(self) -> None:
        """PostgreSQL committed: commit the engine transaction (once per server); a WARNING, never an ERROR."""
        self._writes.clear()
        self.inserting = False
        txn.finish(self.spec.address, txn.warn)

    def rollback(self) -> None:
        self._writes.clear()
        self.inserting = False
        txn.abort_all()
        for stream in list(self._streams):
            with contextlib.suppress(Exception):  # never raise during abort
                stream.close()
        self._streams.clear()

    def sub_begin(self, level: int) -> None:
        self._writes.sub_begin(level)

    def sub_commit(self, level: int) -> None:
        self._writes.sub_commit(level)

    def sub_rollback(self, level: int) -> None:
        self._writes.sub_rollback(level)
        self.inserting = False

    # ------------------------------------------------------------------ IMPORT FOREIGN SCHEMA
    @classmethod
    def import_schema(
        cls,
        schema: str,
        srv_options: dict[str, str],
        options: dict[str, str],
        restriction_type: str | None,
        restricts: list[str],
    ) -> list[TableDefinition]:
        address = srv_options.get("address", "")
        try:
            with conn.engine_call(address):
                return import_tables(srv_options, options, restriction_type, restricts)
        except conn.SqlProblem as exc:
            errcodes.fail(exc)
        return []


def _mode(quals: list[Any], spec: TableSpec) -> str:
    """The scan mode the quals ask for, without the collection (``plan_scan`` as at planning)."""
    try:
        return plan_scan(quals, spec, None, vectors=False).mode
    except Exception:
        return "scan"
