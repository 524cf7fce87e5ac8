"""INSERT / UPDATE / DELETE through the FDW: buffered per transaction, applied at commit, gone on ROLLBACK."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]

DIM = 4


@pytest.fixture
def table(sql, fdw_server, engine_server, unique_name):
    with engine_server.client() as client:
        client.create_collection(unique_name, DIM)
    tbl = f"w_{unique_name}"
    sql.execute(
        f"CREATE FOREIGN TABLE {tbl} (id bigint, embedding real[], query real[], distance real, "
        f"tag text, n int, ok boolean, score real, meta jsonb) SERVER {fdw_server} "
        f"OPTIONS (collection '{unique_name}')"
    )
    yield tbl, unique_name
    sql.execute(f"DROP FOREIGN TABLE IF EXISTS {tbl}")
    with engine_server.client() as client:
        client.drop_collection(unique_name)


def _engine_ids(engine_server, name: str) -> list[int]:
    with engine_server.client() as client:
        col = client.collection(name)
        return sorted(i for batch in col.scan(vectors=False, payloads=False) for i in batch.ids.tolist())


def test_insert_is_visible_after_commit(sql, table, engine_server) -> None:
    tbl, name = table
    sql.execute(
        f"INSERT INTO {tbl} (id, embedding, tag, n, ok, score, meta) VALUES "
        "(1, '{1,0,0,0}', 'a', 10, true, 0.5, '{\"x\": [1, 2]}'), (2, '{0,1,0,0}', 'b', NULL, false, NULL, NULL)"
    )
    rows = sql.execute(f"SELECT id, embedding, tag, n, ok, score, meta FROM {tbl} ORDER BY id").fetchall()
    assert rows == [
        (1, [1.0, 0.0, 0.0, 0.0], "a", 10, True, 0.5, {"x": [1, 2]}),
        (2, [0.0, 1.0, 0.0, 0.0], "b", None, False, None, None),
    ]
    with engine_server.client() as client:
        got = client.collection(name).get([1, 2])
    assert got.payloads == [
        {"tag": "a", "n": 10, "ok": True, "score": 0.5, "meta": {"x": [1, 2]}},
        {"tag": "b", "ok": False},
    ]


def test_rollback_leaves_nothing(sql, table, engine_server) -> None:
    tbl, name = table
    with sql.transaction(force_rollback=True):
        sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (5, '{{1,2,3,4}}')")
        sql.execute(
            f"INSERT INTO {tbl} (id, embedding) SELECT g, ARRAY[g, 0, 0, 1]::real[] FROM generate_series(6, 50) g"
        )
    assert _engine_ids(engine_server, name) == []
    assert sql.execute(f"SELECT count(*) FROM {tbl}").fetchone()[0] == 0


def test_update_and_delete(sql, table, engine_server) -> None:
    tbl, name = table
    sql.execute(
        f"INSERT INTO {tbl} (id, embedding, tag) "
        "SELECT g, ARRAY[g, 1, 1, 1]::real[], 't' || g FROM generate_series(1, 5) g"
    )
    sql.execute(f"UPDATE {tbl} SET tag = 'changed', embedding = '{{9,9,9,9}}' WHERE id = 2")
    sql.execute(f"UPDATE {tbl} SET id = 40 WHERE id = 3")
    sql.execute(f"DELETE FROM {tbl} WHERE id IN (1, 4)")
    rows = sql.execute(f"SELECT id, embedding, tag FROM {tbl} ORDER BY id").fetchall()
    assert rows == [
        (2, [9.0, 9.0, 9.0, 9.0], "changed"),
        (5, [5.0, 1.0, 1.0, 1.0], "t5"),
        (40, [3.0, 1.0, 1.0, 1.0], "t3"),
    ]
    assert _engine_ids(engine_server, name) == [2, 5, 40]


def test_one_transaction_mixing_writes_and_savepoints(sql, table, engine_server) -> None:
    tbl, name = table
    sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (1, '{{1,1,1,1}}'), (2, '{{2,2,2,2}}')")
    with sql.transaction():
        sql.execute(f"DELETE FROM {tbl} WHERE id = 1")
        sql.execute(f"INSERT INTO {tbl} (id, embedding, tag) VALUES (3, '{{3,3,3,3}}', 'new')")
        with pytest.raises(psycopg.errors.InvalidParameterValue), sql.transaction():  # a savepoint, rolled back
            sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (4, '{{4,4,4,4}}')")
            sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (5, '{{5,5}}')")  # wrong dimension
        sql.execute(f"UPDATE {tbl} SET tag = 'kept' WHERE id = 2")
        assert _engine_ids(engine_server, name) == [1, 2]  # nothing applied before COMMIT
    assert _engine_ids(engine_server, name) == [2, 3]
    assert sql.execute(f"SELECT id, tag FROM {tbl} ORDER BY id").fetchall() == [(2, "kept"), (3, "new")]


def test_duplicate_insert_fails_at_commit_and_writes_nothing(sql, table, engine_server) -> None:
    tbl, name = table
    sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (1, '{{1,1,1,1}}')")
    with pytest.raises(psycopg.Error) as err:
        sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (7, '{{1,1,1,1}}'), (1, '{{2,2,2,2}}')")
    assert "already exist" in err.value.diag.message_primary
    assert "UPDATE" in err.value.diag.message_hint
    assert _engine_ids(engine_server, name) == [1]
    with pytest.raises(psycopg.Error) as err:
        sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (8, '{{1,1,1,1}}'), (8, '{{2,2,2,2}}')")
    assert "already written in this transaction" in err.value.diag.message_primary
    assert sql.execute("SELECT 1").fetchone() == (1,)


def test_multi_row_insert_rate(sql, table, engine_server) -> None:
    tbl, name = table
    n = 5000
    vecs = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    sql.execute("CREATE TEMP TABLE src (id bigint, embedding real[])")
    with sql.cursor().copy("COPY src FROM STDIN") as cp:
        for i, v in enumerate(vecs):
            cp.write_row((i, v.tolist()))
    sql.execute(f"INSERT INTO {tbl} (id, embedding) SELECT id, embedding FROM src")
    assert sql.execute(f"SELECT count(*) FROM {tbl}").fetchone()[0] == n
    with engine_server.client() as client:
        got = client.collection(name).get([0, n - 1])
    np.testing.assert_array_equal(got.vectors, vecs[[0, n - 1]])


def test_copy_through_the_triggers(sql, table, engine_server) -> None:
    tbl, name = table
    sql.execute("SELECT drift.enable_copy(%s)", (tbl,))
    n = 3000
    vecs = np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32)
    with sql.transaction():
        with sql.cursor().copy(f"COPY {tbl} (id, embedding, tag) FROM STDIN") as cp:
            for i, v in enumerate(vecs):
                cp.write_row((i, v.tolist(), f"c{i % 7}"))
        assert _engine_ids(engine_server, name) == []  # applied at commit
    assert sql.execute(f"SELECT count(*) FROM {tbl}").fetchone()[0] == n
    assert sql.execute(f"SELECT tag FROM {tbl} WHERE id = 9").fetchone() == ("c2",)
    with engine_server.client() as client:
        np.testing.assert_array_equal(client.collection(name).get([123]).vectors[0], vecs[123])
    with sql.transaction(force_rollback=True), sql.cursor().copy(f"COPY {tbl} (id, embedding) FROM STDIN") as cp:
        cp.write_row((n + 1, [1.0] * DIM))
    assert sql.execute(f"SELECT count(*) FROM {tbl}").fetchone()[0] == n
    with pytest.raises(psycopg.Error) as err, sql.cursor().copy(f"COPY {tbl} (id, embedding) FROM STDIN") as cp:
        cp.write_row((n + 2, [1.0, 2.0]))
    assert "has 2 dimensions" in err.value.diag.message_primary
    sql.execute(f"INSERT INTO {tbl} (id, embedding) VALUES (-5, '{{1,2,3,4}}')")  # INSERT still goes straight in
    assert sql.execute(f"SELECT id FROM {tbl} WHERE id = -5").fetchall() == [(-5,)]
    sql.execute("SELECT drift.disable_copy(%s)", (tbl,))


def test_insert_select_returning_gives_back_the_staged_rows(sql, table, engine_server) -> None:
    """The FDW returns no row of its own from insert(): RETURNING shows PostgreSQL's row, exactly as staged."""
    tbl, name = table
    n = 2000
    vecs = np.random.default_rng(2).standard_normal((n, DIM)).astype(np.float32)
    sql.execute("CREATE TEMP TABLE stage (id bigint, embedding real[], tag text)")
    with sql.cursor().copy("COPY stage FROM STDIN") as cp:
        for i, v in enumerate(vecs):
            cp.write_row((i, v.tolist(), f"s{i % 5}"))
    cur = sql.execute(f"INSERT INTO {tbl} (id, embedding, tag) SELECT * FROM stage RETURNING id, embedding, tag")
    rows = sorted(cur.fetchall())
    assert cur.rowcount == n and len(rows) == n
    assert [r[0] for r in rows] == list(range(n)) and rows[7][2] == "s2"
    np.testing.assert_array_equal(np.array([r[1] for r in rows], dtype=np.float32), vecs)
    with engine_server.client() as client:
        np.testing.assert_array_equal(client.collection(name).get([0, n - 1]).vectors, vecs[[0, n - 1]])
