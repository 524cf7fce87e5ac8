"""Reading through the foreign data wrapper (Multicorn2) against a real engine: the query forms of DESIGN §12."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.pg.cluster import missing_extension, skip_or_fail

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]

N, DIM = 3000, 16
TABLE = "fdw_items"


def _lit(v: np.ndarray) -> str:
    return "{" + ",".join(repr(float(x)) for x in v) + "}"


@pytest.fixture(scope="module")
def items(drift_sql, fdw_server, engine_server):
    """3,000 trained vectors; payload tag (100 values: 1 % each), grp (int), flag (bool), score (float)."""
    rng = np.random.default_rng(11)
    vecs = rng.standard_normal((N, DIM)).astype(np.float32)
    name = f"fdw_read_{id(vecs) % 100000}"
    payloads = [{"tag": f"t{i % 100}", "grp": i % 3, "flag": i % 2 == 0, "score": i / 10} for i in range(N)]
    with engine_server.client() as client:
        col = client.create_collection(name, DIM)
        col.upsert(np.arange(N), vecs, payloads)
        col.train()
    with drift_sql.connect() as conn:
        conn.execute(f"DROP FOREIGN TABLE IF EXISTS {TABLE}")
        conn.execute(
            f"CREATE FOREIGN TABLE {TABLE} (id bigint, embedding real[], query real[], distance real, k int, "
            f"nprobe int, ef int, tag text, grp int, flag boolean, score double precision, extra jsonb "
            f"OPTIONS (role 'payload')) SERVER {fdw_server} OPTIONS (collection '{name}')"
        )
    yield name, vecs
    with drift_sql.connect() as conn:
        conn.execute(f"DROP FOREIGN TABLE IF EXISTS {TABLE}")
    with engine_server.client() as client:
        client.drop_collection(name)


def _engine_rows(sql) -> int:
    return sql.execute("SELECT drift.backend_stats()->>'engine_rows'").fetchone()[0]


def test_knn_rows_equal_the_engine(sql, items, engine_server) -> None:
    name, vecs = items
    for qi in (0, 17, 2500):
        q = vecs[qi] + 0.05
        rows = sql.execute(
            f"SELECT id, distance FROM {TABLE} WHERE query = %s ORDER BY distance LIMIT 10", (_lit(q),)
        ).fetchall()
        with engine_server.client() as client:
            want = client.collection(name).search(q, k=10)
        assert [r[0] for r in rows] == want.ids.tolist()
        np.testing.assert_allclose([r[1] for r in rows], want.distances, rtol=1e-6)


def test_limit_pulls_about_limit_rows(sql, items) -> None:
    _, vecs = items
    before = int(_engine_rows(sql))
    rows = sql.execute(
        f"SELECT id FROM {TABLE} WHERE query = %s ORDER BY distance LIMIT 10", (_lit(vecs[3]),)
    ).fetchall()
    assert len(rows) == 10
    assert int(_engine_rows(sql)) - before == 10
    stats = sql.execute("SELECT drift.backend_stats()").fetchone()[0]
    assert stats["streams"] == 0  # one unary search answered it: nothing left open on the server


def test_deeper_limit_streams_in_order(sql, items) -> None:
    _, vecs = items
    q = vecs[42]
    rows = sql.execute(f"SELECT id, distance FROM {TABLE} WHERE query = %s ORDER BY distance LIMIT 60", (_lit(q),))
    rows = rows.fetchall()
    ids, dists = [r[0] for r in rows], [r[1] for r in rows]
    assert len(rows) == 60 and len(set(ids)) == 60
    assert dists == sorted(dists)
    exact = np.argsort(np.linalg.norm(vecs - q, axis=1))[:60]
    assert len(set(exact.tolist()) & set(ids)) >= 54
    stats = sql.execute("SELECT drift.backend_stats()").fetchone()[0]
    assert stats["streams"] >= 1 and stats["engine_rows"] < 200


def test_selective_filter_fills_the_limit(sql, items) -> None:
    _, vecs = items
    for tag in ("t7", "t99"):
        rows = sql.execute(
            f"SELECT id, tag, distance FROM {TABLE} WHERE query = %s AND tag = %s ORDER BY distance LIMIT 10",
            (_lit(vecs[0]), tag),
        ).fetchall()
        assert len(rows) == 10 and {r[1] for r in rows} == {tag}
        want = [i for i in range(N) if i % 100 == int(tag[1:])]
        exact = sorted(want, key=lambda i: float(np.linalg.norm(vecs[i] - vecs[0])))[:10]
        assert len(set(exact) & {r[0] for r in rows}) >= 8


def test_filters_and_knobs(sql, items) -> None:
    _, vecs = items
    q = _lit(vecs[1])
    rows = sql.execute(
        f"SELECT id, grp, flag, k, nprobe FROM {TABLE} WHERE query = %s AND grp = 2 AND flag AND k = 5 AND nprobe = 64",
        (q,),
    ).fetchall()
    assert len(rows) == 5 and all(r[1] == 2 and r[2] is True and r[3] == 5 and r[4] == 64 for r in rows)
    rows = sql.execute(  # a float filter is left to PostgreSQL, which still gets it right
        f"SELECT id, score FROM {TABLE} WHERE query = %s AND score = 12.5 ORDER BY distance LIMIT 3", (q,)
    ).fetchall()
    assert rows == [(125, 12.5)]


def test_range_query(sql, items) -> None:
    _, vecs = items
    q = vecs[9]
    d = np.linalg.norm(vecs - q, axis=1)
    radius = float(np.sort(d)[25])
    rows = sql.execute(
        f"SELECT id, distance FROM {TABLE} WHERE query = %s AND distance < %s AND nprobe = 100000",
        (_lit(q), radius),
    ).fetchall()
    assert {r[0] for r in rows} == set(np.flatnonzero(d < radius).tolist())
    assert all(r[1] < radius for r in rows)


def test_point_lookups(sql, items) -> None:
    _, vecs = items
    row = sql.execute(f"SELECT id, embedding, tag, grp, flag, extra FROM {TABLE} WHERE id = 5").fetchone()
    assert row[0] == 5 and row[2] == "t5" and row[3] == 2 and row[4] is False
    np.testing.assert_array_equal(np.array(row[1], dtype=np.float32), vecs[5])  # exact float32 round trip
    assert row[5] == {"tag": "t5", "grp": 2, "flag": False, "score": 0.5}
    rows = sql.execute(f"SELECT id FROM {TABLE} WHERE id = ANY(%s) ORDER BY id", ([7, 3, 999_999],)).fetchall()
    assert rows == [(3,), (7,)]
    q = vecs[3]
    rows = sql.execute(
        f"SELECT id, distance FROM {TABLE} WHERE id IN (3, 4, 8) AND query = %s ORDER BY distance", (_lit(q),)
    ).fetchall()
    assert rows[0] == (3, 0.0)
    want = {i: float(np.linalg.norm(vecs[i] - q)) for i in (4, 8)}
    for ident, dist in rows[1:]:
        assert dist == pytest.approx(want[ident], rel=1e-5)
    assert sql.execute(f"SELECT count(*) FROM {TABLE} WHERE id = 3 AND id = 4").fetchone()[0] == 0


def test_full_scan_and_pushed_limit(sql, items) -> None:
    assert sql.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == N
    rows = sql.execute(f"SELECT id FROM {TABLE} LIMIT 4 OFFSET 10").fetchall()
    assert [r[0] for r in rows] == [10, 11, 12, 13]
    plan = "\n".join(r[0] for r in sql.execute(f"EXPLAIN SELECT id FROM {TABLE} LIMIT 4 OFFSET 10"))
    assert "LIMIT 4 OFFSET 10" in plan and "Limit" not in plan.split("\n")[0]
    assert sql.execute(f"SELECT count(*) FROM {TABLE} WHERE tag = 't3'").fetchone()[0] == N // 100


def test_explain_shows_the_pushdown(sql, items) -> None:
    _, vecs = items
    plan = sql.execute(
        f"EXPLAIN SELECT id FROM {TABLE} WHERE query = %s AND tag = 't1' AND score > 3 ORDER BY distance LIMIT 5",
        (_lit(vecs[0]),),
    ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "kNN stream" in text and 'filter tag = "t1"' in text and "ORDER BY distance" in text
    assert "left to PostgreSQL: score > " in text
    assert "Sort" not in text


def test_join_with_a_local_table(sql, items) -> None:
    _, vecs = items
    sql.execute("CREATE TEMP TABLE docs AS SELECT g AS id, 'doc ' || g AS title FROM generate_series(0, 2999) g")
    rows = sql.execute(
        f"SELECT d.title, i.distance FROM {TABLE} i JOIN docs d USING (id) WHERE i.query = %s "
        "ORDER BY i.distance LIMIT 3",
        (_lit(vecs[77]),),
    ).fetchall()
    assert rows[0] == ("doc 77", 0.0) and len(rows) == 3


def test_pgvector_columns(sql, items, fdw_server, drift_sql) -> None:
    name, vecs = items
    reason = missing_extension(sql, "vector", drift_sql.cluster.bindir)
    if reason is not None:
        skip_or_fail(reason)
    sql.execute("CREATE EXTENSION IF NOT EXISTS vector")
    sql.execute(
        f"CREATE FOREIGN TABLE pg_temp.vitems (id bigint, embedding vector({DIM}), query vector({DIM}), "
        f"distance real, tag text) SERVER {fdw_server} OPTIONS (collection '{name}')"
    )
    q = "[" + ",".join(repr(float(x)) for x in vecs[8]) + "]"
    rows = sql.execute(
        "SELECT id, embedding::real[], tag FROM pg_temp.vitems WHERE query = %s::vector ORDER BY distance LIMIT 2",
        (q,),
    ).fetchall()
    assert rows[0][0] == 8 and rows[0][2] == "t8"
    np.testing.assert_array_equal(np.array(rows[0][1], dtype=np.float32), vecs[8])


def test_import_foreign_schema(sql, items, fdw_server) -> None:
    name, _ = items
    sql.execute("DROP SCHEMA IF EXISTS imported CASCADE")
    sql.execute("CREATE SCHEMA imported")
    sql.execute(f'IMPORT FOREIGN SCHEMA drift LIMIT TO ("{name}") FROM SERVER {fdw_server} INTO imported')
    cols = dict(
        sql.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0",
            (f'imported."{name}"',),
        ).fetchall()
    )
    assert cols["id"] == "bigint" and cols["embedding"] == "real[]" and cols["distance"] == "real"
    assert cols["tag"] == "text" and cols["grp"] == "bigint" and cols["flag"] == "boolean"
    assert cols["score"] == "double precision"
    row = sql.execute(f'SELECT id, tag FROM imported."{name}" WHERE id = 12').fetchone()
    assert row == (12, "t12")
    sql.execute("DROP SCHEMA imported CASCADE")


def test_payload_column_is_the_whole_object(sql, items) -> None:
    row = sql.execute(f"SELECT extra FROM {TABLE} WHERE id = 10").fetchone()
    assert row[0] == json.loads('{"tag": "t10", "grp": 1, "flag": true, "score": 1.0}')


def test_fdw_backend_stays_thin(sql, items) -> None:
    _, vecs = items
    sql.execute(f"SELECT id FROM {TABLE} WHERE query = %s ORDER BY distance LIMIT 60", (_lit(vecs[0]),)).fetchall()
    sql.execute(
        "CREATE OR REPLACE FUNCTION pg_temp.heavy() RETURNS text[] LANGUAGE plpython3u AS $$\n"
        "import sys\n"
        "return sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'hnswlib', 'lmdb', 'llvmlite'))\n"
        "$$"
    )
    assert sql.execute("SELECT pg_temp.heavy()").fetchone()[0] == []
