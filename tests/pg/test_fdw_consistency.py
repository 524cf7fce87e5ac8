"""Results are complete or refused, never silently short; writes of a transaction are visible to it.

Issue 13: kNN beyond the engine's per-search cap (10,000 rows), ``query IN (...)`` / ``OR``, INSERT ...
RETURNING, and UPDATE / DELETE of a row inserted earlier in the same transaction.
"""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]

BIG = 10_060  # just past the engine's cap of rows per search (MAX_K = 10,000)


@pytest.fixture(scope="module")
def big(drift_sql, fdw_server, engine_server):
    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((BIG, 2)).astype(np.float32)
    name = f"cap_{BIG}_{id(vecs) % 100000}"
    with engine_server.client() as client:
        col = client.create_collection(name, 2)
        for s in range(0, BIG, 5000):
            col.upsert(np.arange(s, min(BIG, s + 5000)), vecs[s : s + 5000])
    with drift_sql.connect() as conn:
        conn.execute(
            "CREATE FOREIGN TABLE cap_t (id bigint, embedding real[], query real[], distance real) "
            f"SERVER {fdw_server} OPTIONS (collection '{name}')"
        )
    yield vecs
    with drift_sql.connect() as conn:
        conn.execute("DROP FOREIGN TABLE cap_t")
    with engine_server.client() as client:
        client.drop_collection(name)


def _complete_or_refused(sql, statement: str, want: int) -> None:
    """The statement returns all ``want`` rows, or fails with the cap's ERROR; never fewer rows."""
    try:
        rows = sql.execute(statement).fetchall()
    except psycopg.Error as exc:
        assert "cap of rows per search" in (exc.diag.message_primary or ""), exc.diag.message_primary
        assert exc.diag.message_hint
        assert sql.execute("SELECT 1").fetchone() == (1,)
        return
    assert len(rows) == want


def test_limit_past_the_cap(sql, big) -> None:
    _complete_or_refused(sql, "SELECT id FROM cap_t WHERE query = '{0,0}' ORDER BY distance LIMIT 10050", 10050)


def test_filter_postgres_applies_past_the_cap(sql, big) -> None:
    d = np.sort(np.linalg.norm(big, axis=1))
    bound = float(d[10_030])  # about 29 rows lie farther, all beyond the first 10,000
    _complete_or_refused(
        sql, f"SELECT id FROM cap_t WHERE query = '{{0,0}}' AND distance > {bound!r} ORDER BY distance LIMIT 5", 5
    )


def test_within_the_cap_is_unchanged(sql, big) -> None:
    rows = sql.execute("SELECT id FROM cap_t WHERE query = '{0,0}' ORDER BY distance LIMIT 9000").fetchall()
    assert len(rows) == 9000 == len({r[0] for r in rows})


@pytest.fixture
def table(sql, fdw_server, engine_server, unique_name):
    with engine_server.client() as client:
        client.create_collection(unique_name, 3).upsert([1, 2], [[1, 0, 0], [0, 1, 0]], [{"tag": "a"}, {"tag": "b"}])
    sql.execute(
        f"CREATE FOREIGN TABLE c_{unique_name} (id bigint, embedding real[], query real[], distance real, tag text) "
        f"SERVER {fdw_server} OPTIONS (collection '{unique_name}')"
    )
    yield f"c_{unique_name}", unique_name
    sql.execute(f"DROP FOREIGN TABLE c_{unique_name}")
    with engine_server.client() as client:
        client.drop_collection(unique_name)


@pytest.mark.parametrize("where", ["query IN ('{1,0,0}', '{0,1,0}')", "query = '{1,0,0}' OR query = '{0,1,0}'"])
def test_several_query_vectors_are_refused(sql, table, where) -> None:
    tbl, _ = table
    with pytest.raises(psycopg.Error) as err:
        sql.execute(f"SELECT id FROM {tbl} WHERE {where}")
    assert "one vector" in err.value.diag.message_primary
    assert "LATERAL" in err.value.diag.message_hint
    assert sql.execute("SELECT 1").fetchone() == (1,)


def test_one_knn_per_vector_with_lateral(sql, table) -> None:
    tbl, _ = table
    rows = sql.execute(
        f"SELECT q.n, s.id FROM (VALUES (1, '{{1,0,0}}'::real[]), (2, '{{0,1,0}}')) q(n, v), "
        f"LATERAL (SELECT id FROM {tbl} WHERE query = q.v ORDER BY distance LIMIT 1) s ORDER BY q.n"
    ).fetchall()
    assert rows == [(1, 1), (2, 2)]


def test_insert_returning(sql, table, engine_server) -> None:
    tbl, name = table
    cur = sql.execute(
        f"INSERT INTO {tbl} (id, embedding, tag) VALUES (7, '{{0,0,1}}', 'c') RETURNING id, embedding, tag"
    )
    assert cur.fetchall() == [(7, [0.0, 0.0, 1.0], "c")]
    assert cur.statusmessage == "INSERT 0 1"
    cur = sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (8, '{{1,1,0}}'), (9, '{{1,0,1}}') RETURNING id")
    assert cur.fetchall() == [(8,), (9,)]
    assert cur.statusmessage == "INSERT 0 2"
    assert sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (10, '{{1,1,1}}')").statusmessage == "INSERT 0 1"
    with engine_server.client() as client:
        assert client.collection(name).get([7, 8, 9, 10]).ids.tolist() == [7, 8, 9, 10]


def test_update_and_delete_of_a_row_inserted_in_the_same_transaction(sql, table, engine_server) -> None:
    tbl, name = table
    with sql.transaction():
        sql.execute(f"INSERT INTO {tbl} (id, embedding, tag) VALUES (5, '{{0,0,1}}', 'new')")
        sql.execute(f"INSERT INTO {tbl} (id, embedding, tag) VALUES (6, '{{0,1,1}}', 'gone')")
        assert sql.execute(f"UPDATE {tbl} SET tag = 'changed' WHERE id = 5").statusmessage == "UPDATE 1"
        assert sql.execute(f"DELETE FROM {tbl} WHERE id = 6").statusmessage == "DELETE 1"
        assert sql.execute(f"UPDATE {tbl} SET tag = 'b2' WHERE id = 2").statusmessage == "UPDATE 1"
        assert sql.execute(f"DELETE FROM {tbl} WHERE id = 1").statusmessage == "DELETE 1"
        # the transaction reads its own writes, in every scan form
        assert sql.execute(f"SELECT id, tag FROM {tbl} ORDER BY id").fetchall() == [(2, "b2"), (5, "changed")]
        assert sql.execute(f"SELECT tag FROM {tbl} WHERE id = ANY('{{1,5,6}}')").fetchall() == [("changed",)]
        knn = sql.execute(f"SELECT id FROM {tbl} WHERE query = '{{0,0,1}}' ORDER BY distance").fetchall()
        assert knn == [(5,), (2,)]
    with engine_server.client() as client:
        got = client.collection(name).get([1, 2, 5, 6])
    assert got.ids.tolist() == [2, 5]
    assert got.payloads == [{"tag": "b2"}, {"tag": "changed"}]
