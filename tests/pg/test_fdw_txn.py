"""Transactions through the FDW (drift_fdw/txn.py): one atomic engine commit per PostgreSQL transaction across
foreign tables, nothing left by a transaction PostgreSQL rolls back after pre-commit, and write-write conflicts
raised as SQLSTATE 40001."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]

DIM = 4


@pytest.fixture
def tables(sql, fdw_server, engine_server, unique_name):
    names = [f"{unique_name}_a", f"{unique_name}_b"]
    with engine_server.client() as client:
        for name in names:
            client.create_collection(name, DIM)
    tbls = [f"t_{name}" for name in names]
    for tbl, name in zip(tbls, names, strict=True):
        sql.execute(
            f"CREATE FOREIGN TABLE {tbl} (id bigint, embedding real[], tag text) SERVER {fdw_server} "
            f"OPTIONS (collection '{name}')"
        )
    yield list(zip(tbls, names, strict=True))
    for tbl in tbls:
        sql.execute(f"DROP FOREIGN TABLE IF EXISTS {tbl}")
    with engine_server.client() as client:
        for name in names:
            client.drop_collection(name)


def _ids(engine_server, name: str) -> list[int]:
    with engine_server.client() as client:
        col = client.collection(name)
        return sorted(i for batch in col.scan(vectors=False, payloads=False) for i in batch.ids.tolist())


def test_a_failing_commit_over_two_tables_writes_nothing(sql, tables, engine_server) -> None:
    (ta, na), (tb, nb) = tables
    sql.execute(f"INSERT INTO {tb} (id, embedding) VALUES (7, '{{1,1,1,1}}')")
    with pytest.raises(psycopg.errors.UniqueViolation), sql.transaction():
        sql.execute(
            f"INSERT INTO {ta} (id, embedding) SELECT g, ARRAY[g, 0, 0, 1]::real[] FROM generate_series(1, 500) g"
        )
        sql.execute(f"INSERT INTO {tb} (id, embedding) VALUES (6, '{{1,0,0,0}}'), (7, '{{0,1,0,0}}')")
    assert _ids(engine_server, na) == []  # before: table a's 500 rows were applied at its own pre-commit
    assert _ids(engine_server, nb) == [7]
    with sql.transaction():
        sql.execute(f"INSERT INTO {ta} (id, embedding) VALUES (1, '{{1,0,0,0}}')")
        sql.execute(f"DELETE FROM {tb} WHERE id = 7")
    assert _ids(engine_server, na) == [1] and _ids(engine_server, nb) == []


def test_a_serialization_failure_after_pre_commit_leaves_nothing(sql, tables, engine_server, drift_sql) -> None:
    (ta, na), _ = tables
    local = f"loc_{na}"
    sql.execute(f"CREATE TABLE {local} (k int)")
    try:
        with drift_sql.connect() as c1, drift_sql.connect() as c2:
            for c in (c1, c2):
                c.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            c1.execute(f"SELECT count(*) FROM {local} WHERE k = 1").fetchone()
            c2.execute(f"SELECT count(*) FROM {local} WHERE k = 2").fetchone()
            c1.execute(f"INSERT INTO {local} VALUES (2)")
            c2.execute(f"INSERT INTO {local} VALUES (1)")
            c2.execute(f"INSERT INTO {ta} (id, embedding) VALUES (42, '{{1,2,3,4}}')")
            c1.execute("COMMIT")
            with pytest.raises(psycopg.errors.SerializationFailure):
                c2.execute("COMMIT")  # PostgreSQL checks serializability after the FDW's pre-commit
        assert _ids(engine_server, na) == []  # before: id 42 stayed in the engine
    finally:
        sql.execute(f"DROP TABLE {local}")


def test_update_against_a_committed_delete_is_40001(sql, tables, engine_server, drift_sql) -> None:
    (ta, na), _ = tables
    sql.execute(f"INSERT INTO {ta} (id, embedding, tag) VALUES (1, '{{1,0,0,0}}', 'old'), (2, '{{0,1,0,0}}', 'x')")
    with drift_sql.connect() as c1, drift_sql.connect(autocommit=True) as c2:
        c1.execute("BEGIN")
        c1.execute(f"UPDATE {ta} SET tag = 'new' WHERE id = 1")
        c2.execute(f"DELETE FROM {ta} WHERE id = 1")
        with pytest.raises(psycopg.errors.SerializationFailure, match="concurrent write"):
            c1.execute("COMMIT")
    assert _ids(engine_server, na) == [2]  # before: the deleted row was resurrected


def test_two_concurrent_updates_one_fails_loudly(sql, tables, engine_server, drift_sql) -> None:
    (ta, na), _ = tables
    sql.execute(f"INSERT INTO {ta} (id, embedding, tag) VALUES (1, '{{1,0,0,0}}', 'old')")
    with drift_sql.connect() as c1, drift_sql.connect() as c2:
        for c in (c1, c2):
            c.execute("BEGIN")
        c1.execute(f"UPDATE {ta} SET tag = 'one' WHERE id = 1")
        c2.execute(f"UPDATE {ta} SET tag = 'two' WHERE id = 1")
        c1.execute("COMMIT")
        with pytest.raises(psycopg.errors.SerializationFailure):
            c2.execute("COMMIT")
    with engine_server.client() as client:
        assert client.collection(na).get([1]).payloads == [{"tag": "one"}]  # before: silently 'two'


def test_full_scan_delete_and_reads_of_other_rows_do_not_conflict(sql, tables, engine_server, drift_sql) -> None:
    (ta, na), _ = tables
    sql.execute(f"INSERT INTO {ta} (id, embedding) SELECT g, ARRAY[g, 0, 0, 1]::real[] FROM generate_series(1, 20) g")
    with drift_sql.connect() as c1, drift_sql.connect(autocommit=True) as c2:
        c1.execute("BEGIN")
        c1.execute(f"DELETE FROM {ta} WHERE tag IS NULL AND id <= 10")  # a full scan, filtered by PostgreSQL
        c2.execute(f"UPDATE {ta} SET tag = 'z' WHERE id = 15")  # a row c1 read but does not write
        c1.execute("COMMIT")
    assert _ids(engine_server, na) == list(range(11, 21))
