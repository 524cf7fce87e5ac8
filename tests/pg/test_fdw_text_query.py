"""A ``text`` query column: the literal reaches the FDW as PostgreSQL got it and is echoed unchanged, so no
row pays ``vector_in`` / ``array_in`` for the re-check of ``query = ...``. Same rows as a ``real[]`` query
column on the same collection, the same refusals of bad literals, prepared statements keep the generic plan."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.pg.test_fdw_rows_fast import _plans

N, DIM = 300, 24

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]


@pytest.fixture(scope="module")
def tables(drift_sql, fdw_server, engine_server):
    rng = np.random.default_rng(8)
    vecs = rng.standard_normal((N, DIM)).astype(np.float32)
    name = f"fdw_textq_{id(vecs) % 100000}"
    with engine_server.client() as client:
        col = client.create_collection(name, DIM)
        col.upsert(np.arange(N), vecs, [{"tag": f"t{i % 3}"} for i in range(N)])
        col.train()
    with drift_sql.connect() as conn:
        conn.execute(
            f"CREATE FOREIGN TABLE {name}_t (id bigint, query text, distance real, tag text) "
            f"SERVER {fdw_server} OPTIONS (collection '{name}')"
        )
        conn.execute(
            f"CREATE FOREIGN TABLE {name}_a (id bigint, query real[], distance real, tag text) "
            f"SERVER {fdw_server} OPTIONS (collection '{name}')"
        )
    yield name, vecs
    with drift_sql.connect() as conn:
        conn.execute(f"DROP FOREIGN TABLE IF EXISTS {name}_t, {name}_a")
    with engine_server.client() as client:
        client.drop_collection(name)


def _lit(v: np.ndarray, brackets: bool) -> str:
    body = ",".join(repr(float(x)) for x in v)
    return f"[{body}]" if brackets else "{" + body + "}"


def test_text_query_rows_equal_the_array_column_and_the_engine(sql, tables, engine_server) -> None:
    name, vecs = tables
    with engine_server.client() as client:
        col = client.collection(name)
        for i in (0, 17, 250):
            q = vecs[i] + 0.03
            want = col.search(q, k=7)
            arr = sql.execute(
                f"SELECT id, distance FROM {name}_a WHERE query = %s ORDER BY distance LIMIT 7", (_lit(q, False),)
            ).fetchall()
            for brackets in (True, False):  # pgvector's '[..]' and the array form '{..}' are both understood
                lit = _lit(q, brackets)
                got = sql.execute(
                    f"SELECT id, distance, query, tag FROM {name}_t WHERE query = %s ORDER BY distance LIMIT 7", (lit,)
                ).fetchall()
                assert [r[0] for r in got] == want.ids.tolist() == [r[0] for r in arr]
                np.testing.assert_allclose([r[1] for r in got], want.distances, rtol=1e-6)
                assert all(r[2] == lit for r in got)  # echoed exactly as given
                assert [r[3] for r in got] == [f"t{j % 3}" for j in want.ids.tolist()]
        flt = sql.execute(
            f"SELECT id FROM {name}_t WHERE query = %s AND tag = 't1' ORDER BY distance LIMIT 5", (_lit(vecs[3], True),)
        ).fetchall()
        assert len(flt) == 5 and all(r[0] % 3 == 1 for r in flt)


@pytest.mark.parametrize(
    ("literal", "message", "sqlstate"),
    [
        ("[1,2", "malformed vector", "22P02"),
        ("[1,x,3]", "not a number", "22P02"),
        ("[1,2,3]", "has 3 dimensions; the collection has 24", None),
        ("[1,NaN," + ",".join(["0"] * 22) + "]", "NaN or Infinity", None),
    ],
)
def test_a_bad_text_query_is_a_clear_error(sql, tables, literal: str, message: str, sqlstate: str | None) -> None:
    name, _ = tables
    with pytest.raises(Exception, match=message) as err:
        sql.execute(f"SELECT id FROM {name}_t WHERE query = %s ORDER BY distance LIMIT 3", (literal,)).fetchall()
    if sqlstate is not None:
        assert getattr(err.value, "sqlstate", None) == sqlstate
    assert sql.execute("SELECT 1").fetchone() == (1,)  # the backend serves the next statement


def test_prepared_text_query_keeps_the_generic_plan(drift_sql, tables) -> None:
    name, vecs = tables
    stmt = f"SELECT id, distance FROM {name}_t WHERE query = %s ORDER BY distance LIMIT 10"
    with drift_sql.connect() as prepared, drift_sql.connect() as fresh:
        fresh.execute("SET plan_cache_mode = force_custom_plan")
        queries: list[Any] = [_lit(vecs[i] - 0.01, True) for i in range(0, 60, 3)]
        for q in queries:
            got = prepared.execute(stmt, (q,), prepare=True).fetchall()
            assert got and got == fresh.execute(stmt, (q,), prepare=False).fetchall()
        generic, custom = _plans(prepared, f"{name}_t")
        assert generic >= len(queries) - 6 and custom <= 6
