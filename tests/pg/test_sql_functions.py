"""The ``drift.*`` PL/Python functions against a real engine server, without Multicorn (server = an address)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import psycopg
import pytest

from tests.pg.cluster import REPO_ROOT

pytestmark = pytest.mark.pg

DIM = 8


def _lit(v: np.ndarray) -> str:
    return "{" + ",".join(repr(float(x)) for x in v) + "}"


@pytest.fixture
def loaded(sql, drift_sql, unique_name):
    """A collection of 300 vectors loaded through drift.upsert from a temporary table."""
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((300, DIM)).astype(np.float32)
    addr = drift_sql.address
    sql.execute("SELECT drift.create_collection(%s, %s, 'l2', %s)", (unique_name, DIM, addr))
    sql.execute("CREATE TEMP TABLE src (id bigint, embedding real[], payload jsonb)")
    with sql.cursor() as cur:
        cur.executemany(
            "INSERT INTO src VALUES (%s, %s, %s)",
            [(i, _lit(v), json.dumps({"tag": f"t{i % 10}", "n": i})) for i, v in enumerate(vecs)],
        )
    n = sql.execute("SELECT drift.upsert(%s, 'SELECT id, embedding, payload FROM src', %s)", (unique_name, addr))
    assert n.fetchone()[0] == 300
    yield unique_name, vecs
    sql.execute("SELECT drift.drop_collection(%s, %s, if_exists => true)", (unique_name, addr))


def test_search_equals_the_engine(sql, drift_sql, engine_server, loaded) -> None:
    name, vecs = loaded
    q = vecs[5] + 0.01
    rows = sql.execute(
        "SELECT id, distance, payload FROM drift.search(%s, %s, 10, %s)", (name, _lit(q), drift_sql.address)
    )
    rows = rows.fetchall()
    with engine_server.client() as client:
        want = client.collection(name).search(q, k=10)
    assert [r[0] for r in rows] == want.ids.tolist()
    np.testing.assert_allclose([r[1] for r in rows], want.distances, rtol=1e-6)
    assert rows[0][0] == 5 and rows[0][2] == {"tag": "t5", "n": 5}
    exact = np.argsort(np.linalg.norm(vecs - q, axis=1))[:10]
    assert len(set(exact.tolist()) & {r[0] for r in rows}) >= 9


def test_search_filter_k_and_max_distance(sql, drift_sql, loaded) -> None:
    name, vecs = loaded
    q = _lit(vecs[0])
    rows = sql.execute(
        "SELECT id, payload->>'tag' FROM drift.search(%s, %s, 7, %s, filter => '{\"tag\": \"t3\"}')",
        (name, q, drift_sql.address),
    ).fetchall()
    assert len(rows) == 7 and {r[1] for r in rows} == {"t3"}
    rows = sql.execute(
        "SELECT id, distance FROM drift.search(%s, %s, 300, %s, max_distance => 3.0)", (name, q, drift_sql.address)
    ).fetchall()
    d = np.linalg.norm(vecs - vecs[0], axis=1)
    assert {r[0] for r in rows} == set(np.flatnonzero(d <= 3.0).tolist())
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)


def test_admin_functions(sql, drift_sql, loaded) -> None:
    name, _ = loaded
    addr = drift_sql.address
    out = sql.execute("SELECT drift.set_params(%s, %s, lambda => 0.3, tau => 200, nprobe => 4)", (name, addr))
    params = out.fetchone()[0]
    assert params["lam"] == 0.3 and params["tau"] == 200 and params["nprobe"] == 4
    assert sql.execute("SELECT drift.params(%s, %s)->>'nprobe'", (name, addr)).fetchone()[0] == "4"
    trained = sql.execute("SELECT drift.train(%s, %s, n_buckets => 4)", (name, addr)).fetchone()[0]
    assert trained["vectors"] == 300 and trained["buckets"] == 4
    stats = dict(sql.execute("SELECT name, value FROM drift.stats(%s, %s)", (name, addr)).fetchall())
    assert stats["buckets"] == 4
    assert sql.execute("SELECT drift.flush(%s, %s)", (name, addr)).fetchone()[0] >= 0
    assert isinstance(sql.execute("SELECT drift.maintain(%s, %s)", (name, addr)).fetchone()[0], dict)
    cols = sql.execute("SELECT name, dim, metric, count FROM drift.collections(%s)", (addr,)).fetchall()
    assert (name, DIM, "l2", 300) in cols
    assert sql.execute("SELECT drift.health(%s)->>'status'", (addr,)).fetchone()[0] == "SERVING"
    deleted = sql.execute("SELECT drift.delete(%s, '{1,2,99999}', %s)", (name, addr)).fetchone()[0]
    assert deleted == 2
    assert (
        sql.execute("SELECT count(*) FROM drift.search(%s, %s, 300, %s)", (name, _lit(np.zeros(DIM)), addr)).fetchone()[
            0
        ]
        == 298
    )


def test_create_drop_and_the_server_setting(sql, drift_sql, unique_name) -> None:
    sql.execute("SELECT set_config('drift.server', %s, false)", (drift_sql.address,))
    info = sql.execute("SELECT drift.create_collection(%s, 3, 'cosine')", (unique_name,)).fetchone()[0]
    assert info["dim"] == 3 and info["metric"] == "cosine"
    again = sql.execute("SELECT drift.create_collection(%s, 3, if_not_exists => true)", (unique_name,)).fetchone()[0]
    assert again["metric"] == "cosine"
    assert sql.execute("SELECT drift.drop_collection(%s)", (unique_name,)).fetchone()[0] is True
    assert sql.execute("SELECT drift.drop_collection(%s, if_exists => true)", (unique_name,)).fetchone()[0] is False


@pytest.mark.parametrize(
    ("call", "message", "hint"),
    [
        ("drift.search(%(c)s, '{1,2}', 5, %(a)s)", "2 dimensions; the collection has 8", "exactly 8"),
        ("drift.search(%(c)s, '{1,2,3,4,5,6,7,NaN}', 5, %(a)s)", "NaN or Infinity", "finite"),
        ("drift.search(%(c)s, NULL, 5, %(a)s)", "query vector is NULL", "real[]"),
        ("drift.search('no_such_collection', '{1}', 5, %(a)s)", "does not exist", None),
        ("drift.params(%(c)s, 'no_such_server')", "neither a foreign server nor an engine address", "unix:"),
        ("drift.set_params(%(c)s, %(a)s, nprobe => -3)", "nprobe", None),
        ("drift.search(%(c)s, '{1,2,3,4,5,6,7,8}', 5, %(a)s, filter => '[1]')", "JSON object", None),
        ("drift.params(%(c)s, 'unix:/nonexistent/drift.sock')", "drift", "is the drift engine running"),
        ("drift.search(%(c)s, '{1,2,3,4,5,6,7,8}', NULL, %(a)s)", "k must not be NULL", "1 to 10000"),
        (
            "drift.search(%(c)s, '{1,2,3,4,5,6,7,8}', 5, %(a)s, filter => "
            + "'"
            + '{"a": ' * 3000
            + "1"
            + "}" * 3000
            + "')",
            "nested deeper than 32",
            "flatten",
        ),
    ],
)
def test_bad_input_is_a_clean_error(sql, drift_sql, loaded, call, message, hint) -> None:
    name, _ = loaded
    with pytest.raises(psycopg.Error) as err:
        sql.execute("SELECT * FROM " + call, {"c": name, "a": drift_sql.address})
    diag = err.value.diag
    assert message in diag.message_primary
    if hint is not None:
        assert diag.message_hint and hint in diag.message_hint
    assert diag.sqlstate != "XX000"
    assert sql.execute("SELECT 1").fetchone() == (1,)  # the backend still serves


@pytest.mark.parametrize(
    ("call", "sqlstate", "message", "hint"),
    [
        ("drift.params(%(gone)s::regclass)", "42P01", "does not exist", "drift foreign table"),
        ("drift.params('pg_catalog.pg_class'::regclass)", "42809", "is not a foreign table", "drift foreign table"),
        ("drift.params('a.b.c.d')", "42704", "collection 'a.b.c.d' does not exist", None),
        ("drift.params('\"unterminated')", "42704", "does not exist", None),
        ("drift.search('a.b.c.d', '{1}')", "42704", "does not exist", None),
        ("drift.params(%(c)s, 'no_such_server')", "42704", "neither a foreign server", "unix:"),
        ("drift.health('no_such_server')", "42704", "neither a foreign server", "unix:"),
        ("drift.search(%(c)s, NULL, 5, %(a)s)", "22004", "query vector is NULL", "real[]"),
        ("drift.search(%(c)s, '{1,2,3,4,5,6,7,8}', NULL, %(a)s)", "22004", "k must not be NULL", "1 to 10000"),
        ("drift.upsert(%(c)s, 'SELECT no_such_column', %(a)s)", "42703", "no_such_column", None),
    ],
)
def test_bad_names_and_nulls_have_their_sqlstate(sql, drift_sql, loaded, call, sqlstate, message, hint) -> None:
    name, _ = loaded
    sql.execute("CREATE TEMP TABLE soon_gone (x int)")
    gone = sql.execute("SELECT 'soon_gone'::regclass::oid::text").fetchone()[0]
    sql.execute("DROP TABLE soon_gone")
    sql.execute("SELECT set_config('drift.server', %s, false)", (drift_sql.address,))  # names resolve with no server
    with pytest.raises(psycopg.Error) as err:
        sql.execute("SELECT * FROM " + call, {"c": name, "a": drift_sql.address, "gone": gone})
    diag = err.value.diag
    assert message in diag.message_primary
    assert diag.sqlstate == sqlstate, (diag.sqlstate, diag.message_primary)
    assert "bug in drift_fdw" not in (diag.message_hint or "")
    if hint is not None:
        assert diag.message_hint and hint in diag.message_hint
    assert sql.execute("SELECT 1").fetchone() == (1,)


def test_get_of_more_ids_than_one_call_takes(sql, drift_sql, loaded) -> None:
    """drift.get splits the ids into server-sized calls: each id once, in the order first asked."""
    name, vecs = loaded
    ids = [299, 5, 150_000, 5, 7, *range(1_000, 201_000), 0, 299, 42]  # > the server's max_batch (100,000)
    rows = sql.execute("SELECT id, embedding FROM drift.get(%s, %s, %s)", (name, ids, drift_sql.address)).fetchall()
    assert [r[0] for r in rows] == [299, 5, 7, 0, 42]
    np.testing.assert_allclose(rows[0][1], vecs[299])


def test_backend_imports_stay_thin(sql, drift_sql, loaded) -> None:
    name, _ = loaded
    sql.execute("SELECT * FROM drift.search(%s, '{1,2,3,4,5,6,7,8}', 3, %s)", (name, drift_sql.address))
    sql.execute(
        "CREATE OR REPLACE FUNCTION pg_temp.heavy() RETURNS text[] LANGUAGE plpython3u AS $$\n"
        "import sys\n"
        "return sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'hnswlib', 'lmdb', 'llvmlite'))\n"
        "$$"
    )
    assert sql.execute("SELECT pg_temp.heavy()").fetchone()[0] == []
    stats = sql.execute("SELECT drift.backend_stats()").fetchone()[0]
    assert stats["sql_searches"] >= 1 and stats["clients"] >= 1


def test_thin_imports_in_plain_python() -> None:
    code = (
        "import sys, drift_fdw.sqlapi, drift_fdw.quals, drift_fdw.knn, drift_fdw.writes\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('numba', 'hnswlib', 'lmdb', 'llvmlite')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
