"""The FDW's per-statement fast paths: rows as lists in column order, the query parse, and generic plans.

The unit tests need no PostgreSQL; the others run prepared kNN statements through Multicorn2 and check that
PostgreSQL keeps the generic plan (no planning per execution) and returns exactly what a freshly planned
statement returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from drift_fdw.options import TableSpec
from drift_fdw.rows import NULL_VALUE, RowLayout, RowMaker, ValueProblem, echo_vector, parse_vector, vector_literal


@dataclass
class Col:
    type_name: str
    base_type_name: str = ""
    typmod: int = -1
    options: dict[str, str] = field(default_factory=dict)


COLUMNS = {
    "id": Col("bigint"),
    "embedding": Col("real[]"),
    "query": Col("real[]"),
    "distance": Col("real"),
    "k": Col("integer"),
    "tag": Col("text"),
    "year": Col("integer"),
    "extra": Col("jsonb", options={"role": "payload"}),
}


def _spec() -> TableSpec:
    return TableSpec.parse({"collection": "items", "address": "unix:/x.sock"}, COLUMNS)


def test_rows_are_lists_in_column_order() -> None:
    spec = _spec()
    assert list(spec.columns) == list(COLUMNS)  # the order Multicorn reads a list row in
    vec = np.array([0.5, -2.0], dtype=np.float32)
    payload = {"tag": "a", "year": 2001, "n": 1}
    every = set(COLUMNS)
    row = RowMaker(spec, every, "{0.5,-2}", {"k": 5}).make(7, 0.25, vec, payload)
    want_extra = '{"tag": "a", "year": 2001, "n": 1}'
    assert row == [7, vector_literal(vec, False), "{0.5,-2}", 0.25, 5, "a", 2001, want_extra]
    knn = RowMaker(spec, {"id", "distance", "query"}, "{1,2}", {})
    assert knn.make(3, 1.5, None, None) == [3, None, "{1,2}", 1.5, None, None, None, None]
    assert knn.make(4, 2.5, None, None) == [4, None, "{1,2}", 2.5, None, None, None, None]  # template kept
    scan = RowMaker(spec, {"id", "distance", "tag", "year", "query"}, None, {})
    assert scan.make(9, None, None, {"year": 3}) == [9, None, None, None, None, None, 3, None]
    assert scan.make(9, None, None, None) == [9, None, None, None, None, None, None, None]
    assert RowMaker(spec, {"id", "ctid"}, None, {}).make(1, None, None, None)[0] == 1  # not a table column: ignored


def test_rows_in_one_loop_equal_make_per_row() -> None:
    spec = _spec()
    ids, dists = [5, 3, 9], [0.5, 1.25, 2.0]
    for columns in ({"id", "distance", "query", "k"}, {"id", "query"}, {"distance"}, {"query", "k"}):
        maker = RowMaker(spec, columns, "{1,2}", {"k": 3}, RowLayout(spec, frozenset(columns)))
        assert not maker.layout.others
        assert maker.rows(ids, dists) == [maker.make(i, d, None, None) for i, d in zip(ids, dists, strict=True)]
    with pytest.raises(ValueError):  # lists of different lengths are a caller's bug, never a short result
        RowMaker(spec, {"id", "distance"}, None, {}).rows(ids, dists[:2])


def test_query_parse_keeps_its_checks_and_values() -> None:
    col = _spec().column("query")
    items = [repr(float(x)) for x in np.random.default_rng(5).standard_normal(384).astype(np.float32)]
    assert np.array_equal(parse_vector(items, col, 384), np.array([float(v) for v in items], dtype=np.float32))
    assert echo_vector(items, col) == "{" + ",".join(items) + "}"
    assert echo_vector([1, 2.5], col) == "{1,2.5}"  # values that are not text still print
    for bad in (["1", None], [None, "x"]):
        with pytest.raises(ValueProblem, match="NULL element") as err:
            parse_vector(bad, col, 2)
        assert err.value.sqlstate == NULL_VALUE
    with pytest.raises(ValueProblem, match="not a number") as err:
        parse_vector(["1", "x"], col, 2)
    assert err.value.sqlstate == "22P02"
    with pytest.raises(ValueProblem, match="NaN or Infinity"):
        parse_vector(["1", "Infinity"], col, 2)


N, DIM = 400, 16


@pytest.fixture(scope="module")
def knn_table(drift_sql, fdw_server, engine_server):
    rng = np.random.default_rng(21)
    vecs = rng.standard_normal((N, DIM)).astype(np.float32)
    name = f"fdw_fast_{id(vecs) % 100000}"
    with engine_server.client() as client:
        col = client.create_collection(name, DIM)
        col.upsert(np.arange(N), vecs, [{"tag": f"t{i % 4}"} for i in range(N)])
        col.train()
    with drift_sql.connect() as conn:
        conn.execute(
            f"CREATE FOREIGN TABLE {name} (id bigint, query real[], distance real, k int, tag text) "
            f"SERVER {fdw_server} OPTIONS (collection '{name}')"
        )
    yield name, vecs
    with drift_sql.connect() as conn:
        conn.execute(f"DROP FOREIGN TABLE IF EXISTS {name}")
    with engine_server.client() as client:
        client.drop_collection(name)


def _lit(v: np.ndarray) -> str:
    return "{" + ",".join(repr(float(x)) for x in v) + "}"


def _plans(conn: Any, name: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
        (f"%FROM {name} %",),
    ).fetchone()
    return int(row[0]), int(row[1])


@pytest.mark.pg
@pytest.mark.multicorn
@pytest.mark.parametrize(
    ("select", "tail", "generic_wanted"),
    [
        ("id, distance", "ORDER BY distance LIMIT 10", True),
        ("id, distance, query, tag", "ORDER BY distance LIMIT 3", True),
        ("id, distance", "AND tag = 't1' ORDER BY distance LIMIT 5", True),
        # no LIMIT: the generic plan's estimate (a full scan: Multicorn passes no parameter to get_rel_size)
        # is far above k rows, so PostgreSQL plans each execution afresh; the rows must be the same anyway
        ("id, k", "AND k = 5 ORDER BY distance", False),
    ],
)
def test_prepared_knn_keeps_the_generic_plan(
    drift_sql, knn_table, select: str, tail: str, generic_wanted: bool
) -> None:
    name, vecs = knn_table
    stmt = f"SELECT {select} FROM {name} WHERE query = %s {tail}"
    queries = [vecs[i] + 0.01 for i in range(0, 60, 3)]
    with drift_sql.connect() as prepared, drift_sql.connect() as fresh:
        fresh.execute("SET plan_cache_mode = force_custom_plan")
        for q in queries:
            got = prepared.execute(stmt, (_lit(q),), prepare=True).fetchall()
            assert got == fresh.execute(stmt, (_lit(q),), prepare=False).fetchall()
            assert got  # the re-check of query = $1 passed on every row
        generic, custom = _plans(prepared, name)
        if generic_wanted:  # PostgreSQL tries 5 custom plans, then keeps the generic one
            assert generic >= len(queries) - 6 and custom <= 6
    if "query" in select:
        echoed = np.array(got[0][2], dtype=np.float32)
        assert np.array_equal(echoed, queries[-1].astype(np.float32))


@pytest.mark.pg
@pytest.mark.multicorn
def test_list_rows_follow_dropped_and_added_columns(sql, knn_table, fdw_server, engine_server) -> None:
    """Rows are read by position: a dropped column in the middle and one added at the end must not shift them."""
    name, vecs = knn_table
    table = f"{name}_alt"
    sql.execute(
        f"CREATE FOREIGN TABLE {table} (id bigint, gone int, query real[], distance real, tag text) "
        f"SERVER {fdw_server} OPTIONS (collection '{name}')"
    )
    try:
        q = vecs[7] + 0.02
        stmt = f"SELECT id, distance, tag, query FROM {table} WHERE query = %s ORDER BY distance LIMIT 5"
        before = sql.execute(stmt, (_lit(q),)).fetchall()
        sql.execute(f"ALTER FOREIGN TABLE {table} DROP COLUMN gone")
        sql.execute(f"ALTER FOREIGN TABLE {table} ADD COLUMN k int")
        after = sql.execute(stmt, (_lit(q),)).fetchall()
        with engine_server.client() as client:
            want = client.collection(name).search(q, k=5)
        for rows in (before, after):
            assert [r[0] for r in rows] == want.ids.tolist()
            np.testing.assert_allclose([r[1] for r in rows], want.distances, rtol=1e-6)
            assert [r[2] for r in rows] == [f"t{i % 4}" for i in want.ids.tolist()]
            assert all(np.array_equal(np.array(r[3], dtype=np.float32), q.astype(np.float32)) for r in rows)
        assert sql.execute(f"SELECT k, tag FROM {table} WHERE query = %s AND k = 2 ORDER BY distance",
                           (_lit(q),)).fetchall() == [(2, f"t{i % 4}") for i in want.ids.tolist()[:2]]  # fmt: skip
    finally:
        sql.execute(f"DROP FOREIGN TABLE IF EXISTS {table}")
