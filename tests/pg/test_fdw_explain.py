"""EXPLAIN of scans whose conditions get their values only at run time must not crash the backend.

Multicorn2 3.2 converts an unset datum for such conditions in its ExplainForeignScan (signal 11, the
whole cluster restarts); ``drift_fdw.explain_guard`` hides them from it. Each test checks the backend
that ran the statement is still the same process and still answers.
"""

from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]


@pytest.fixture(scope="module")
def tiny(drift_sql, fdw_server, engine_server):
    name = f"explain_{os.getpid()}"
    with engine_server.client() as client:
        client.create_collection(name, 3).upsert([1, 2, 3], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    with drift_sql.connect() as conn:
        conn.execute(
            "CREATE FOREIGN TABLE explain_t (id bigint, embedding real[], query real[], distance real, tag text) "
            f"SERVER {fdw_server} OPTIONS (collection '{name}')"
        )
    yield "explain_t"
    with drift_sql.connect() as conn:
        conn.execute("DROP FOREIGN TABLE explain_t")
    with engine_server.client() as client:
        client.drop_collection(name)


def _explain(sql, statement: str, params: tuple = ()) -> str:
    pid = sql.execute("SELECT pg_backend_pid()").fetchone()[0]
    lines = [r[0] for r in sql.execute(statement, params).fetchall()]
    assert sql.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    return "\n".join(lines)


@pytest.mark.parametrize(
    "statement",
    [
        "EXPLAIN SELECT id FROM explain_t WHERE query = (SELECT embedding FROM explain_t WHERE id = 1) "
        "ORDER BY distance LIMIT 2",
        "EXPLAIN SELECT id FROM explain_t WHERE id = ANY(ARRAY(SELECT generate_series(1, 3)::bigint))",
        "EXPLAIN (ANALYZE, COSTS OFF) SELECT id FROM explain_t WHERE id = ANY(ARRAY(SELECT g::bigint "
        "FROM generate_series(1, 2) g))",
    ],
)
def test_explain_with_a_subquery_value(sql, tiny, statement) -> None:
    text = _explain(sql, statement)
    assert "values only at run time" in text
    assert sql.execute("SELECT 1").fetchone() == (1,)


def test_explain_execute_of_a_generic_plan(sql, tiny) -> None:
    sql.execute("SET plan_cache_mode = force_generic_plan")
    sql.execute("PREPARE ids(bigint[]) AS SELECT id FROM explain_t WHERE id = ANY($1) ORDER BY id")
    sql.execute("PREPARE knn(real[]) AS SELECT id FROM explain_t WHERE query = $1 ORDER BY distance LIMIT 1")
    assert "values only at run time" in _explain(sql, "EXPLAIN EXECUTE ids('{1,2}')")
    assert "values only at run time" in _explain(sql, "EXPLAIN EXECUTE knn('{0,1,0}')")
    assert sql.execute("EXECUTE ids('{1,3}')").fetchall() == [(1,), (3,)]
    assert sql.execute("EXECUTE knn('{0,1,0}')").fetchall() == [(2,)]
    sql.execute("DEALLOCATE ALL")


def test_explain_still_shows_constants(sql, tiny) -> None:
    text = _explain(sql, "EXPLAIN SELECT id FROM explain_t WHERE query = '{1,0,0}' ORDER BY distance LIMIT 1")
    assert "kNN stream" in text and "values only at run time" not in text
