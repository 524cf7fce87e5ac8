"""Bad input, bad definitions and a failing engine give a clean ERROR with a hint; the backend keeps serving."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

from tests.pg.engine import EngineServer

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]

DIM = 3


@pytest.fixture(scope="module")
def errtable(drift_sql, fdw_server, engine_server):
    name = f"err_{os.getpid()}"
    with engine_server.client() as client:
        col = client.create_collection(name, DIM)
        col.upsert([1, 2, 3], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    with drift_sql.connect() as conn:
        conn.execute(
            f"CREATE FOREIGN TABLE errs (id bigint, embedding real[], query real[], distance real, k int, tag text) "
            f"SERVER {fdw_server} OPTIONS (collection '{name}')"
        )
    yield "errs"
    with drift_sql.connect() as conn:
        conn.execute("DROP FOREIGN TABLE errs")
    with engine_server.client() as client:
        client.drop_collection(name)


def _fails(
    conn, statement: str, message: str, hint: str | None = None, params: tuple = (), sqlstate: str | None = None
) -> None:
    with pytest.raises(psycopg.Error) as err:
        conn.execute(statement, params)
    diag = err.value.diag
    assert message in (diag.message_primary or ""), diag.message_primary
    if hint is not None:
        assert hint in (diag.message_hint or ""), diag.message_hint
    if sqlstate is not None:
        assert diag.sqlstate == sqlstate, (diag.sqlstate, diag.message_primary)
    assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("statement", "message", "hint"),
    [
        ("SELECT id FROM errs WHERE query = '{1,NaN,0}' ORDER BY distance LIMIT 1", "NaN or Infinity", "finite"),
        ("SELECT id FROM errs WHERE query = '{1,0}' ORDER BY distance LIMIT 1", "has 2 dimensions", "exactly 3"),
        ("SELECT id FROM errs WHERE query = '{1,0,x}' ORDER BY distance", "invalid input syntax for type real", None),
        ("SELECT id FROM errs WHERE query = '{1,NULL,0}'", "NULL element", None),
        ("SELECT id FROM errs WHERE distance < 1", "needs a query vector", "query ="),
        ("SELECT id FROM errs WHERE query = '{1,0,0}' AND k = 0", "out of range", None),
        ("SELECT id FROM errs WHERE query = '{1,0,0}' AND k > 3", "per-query setting", "k = 10"),
        ("SELECT id FROM errs WHERE query <> '{1,0,0}'", "only takes", None),
        ("INSERT INTO errs (id, embedding) VALUES (9, '{1,2}')", "has 2 dimensions", "exactly 3"),
        ("INSERT INTO errs (id, embedding) VALUES (9, '{1,Infinity,2}')", "NaN or Infinity", None),
        ("INSERT INTO errs (id, embedding) VALUES (NULL, '{1,1,2}')", "must not be NULL", None),
        ("INSERT INTO errs (id, embedding) VALUES (9, NULL)", "has no embedding", None),
    ],
)
def test_bad_input(sql, errtable, statement, message, hint) -> None:
    _fails(sql, statement, message, hint)


@pytest.mark.parametrize(
    ("columns", "options", "message", "hint"),
    [
        ("id bigint, embedding real[]", "collection 'x', colection 'y'", "unknown option 'colection'", "collection"),
        ("id bigint, embedding real[] OPTIONS (role 'embeding')", "collection 'x'", "unknown role", "roles:"),
        ("id bigint, emb real[] OPTIONS (rol 'embedding')", "collection 'x'", "unknown option 'rol'", "role"),
        ("id text, embedding real[]", "collection 'x'", "has type text", "bigint"),
        ("id bigint, embedding text", "collection 'x'", "has type text", "real[]"),
        ("id bigint, embedding real[]", "dim '3'", "no 'collection' option", "ADD collection"),
        ("id bigint, embedding real[]", "collection 'x', metric 'hamming'", "unknown metric", "l2"),
        ("id bigint, embedding real[]", "collection 'no_such_collection_here'", "does not exist", "create"),
        ("id bigint, a bigint OPTIONS (role 'id')", "collection 'x'", "both have the role 'id'", None),
    ],
)
def test_bad_definitions(sql, fdw_server, columns, options, message, hint) -> None:
    create = f"CREATE FOREIGN TABLE pg_temp.bad ({columns}) SERVER {fdw_server} OPTIONS ({options})"
    if "does not exist" in message:  # only the engine knows: found at first use
        sql.execute(create)
        _fails(sql, "SELECT * FROM pg_temp.bad", message, hint)
        return
    _fails(sql, create, message, hint)  # checked at CREATE FOREIGN TABLE (drift.validate_table)
    with pytest.raises(psycopg.Error) as err:
        sql.execute(create)
    assert err.value.diag.sqlstate == "22023"


def test_create_option_makes_the_collection(sql, fdw_server, engine_server, unique_name) -> None:
    sql.execute(
        f"CREATE FOREIGN TABLE pg_temp.auto (id bigint, embedding real[], tag text) SERVER {fdw_server} "
        f"OPTIONS (collection '{unique_name}', dim '2', metric 'cosine', create 'true')"
    )
    sql.execute("INSERT INTO pg_temp.auto VALUES (1, '{3,4}', 'x')")
    assert sql.execute("SELECT id, embedding, tag FROM pg_temp.auto").fetchall() == [(1, [0.6, 0.8], "x")]
    with engine_server.client() as client:
        assert client.collection(unique_name).metric == "cosine"
        client.drop_collection(unique_name)


@pytest.fixture
def doomed(drift_sql, fdw_server):
    """A second engine with its own foreign server and table, free to be stopped, killed or frozen."""
    srv = EngineServer().start()
    name = f"doomed_{os.getpid()}"
    with srv.client() as client:
        client.create_collection(name, DIM).upsert([1], [[1, 2, 3]])
    with drift_sql.connect() as conn:
        conn.execute(
            f"CREATE SERVER doomed FOREIGN DATA WRAPPER multicorn OPTIONS "
            f"(wrapper 'drift_fdw.DriftFDW', address '{srv.address}', timeout '20')"
        )
        conn.execute(
            "CREATE FOREIGN TABLE doomed_t (id bigint, embedding real[], query real[], distance real) "
            f"SERVER doomed OPTIONS (collection '{name}')"
        )
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        os.kill(srv.proc.pid, signal.SIGCONT)
    srv.stop()
    with drift_sql.connect() as conn:
        conn.execute("DROP SERVER doomed CASCADE")


KNN = "SELECT id FROM doomed_t WHERE query = '{1,2,3}' ORDER BY distance LIMIT 1"


def test_engine_stopped_then_back(sql, doomed) -> None:
    assert sql.execute(KNN).fetchall() == [(1,)]
    doomed.terminate()
    t0 = time.monotonic()
    _fails(sql, KNN, "drift", "is the drift engine running", sqlstate="08006")  # connection_failure
    _fails(sql, "SELECT drift.params('doomed_t')", "drift", "is the drift engine running", sqlstate="08006")
    _fails(sql, "INSERT INTO doomed_t (id, embedding) VALUES (5, '{1,2,3}')", "drift", sqlstate="08006")
    assert time.monotonic() - t0 < 10
    doomed.restart()
    assert sql.execute(KNN).fetchall() == [(1,)]


def test_engine_killed(sql, doomed) -> None:
    assert sql.execute(KNN).fetchall() == [(1,)]
    doomed.proc.kill()
    doomed.proc.wait()
    t0 = time.monotonic()
    _fails(sql, KNN, "drift", "is the drift engine running", sqlstate="08006")
    assert time.monotonic() - t0 < 10


def test_query_cancel_while_the_engine_hangs(sql, doomed) -> None:
    assert sql.execute(KNN).fetchall() == [(1,)]
    os.kill(doomed.proc.pid, signal.SIGSTOP)
    try:
        sql.execute("SET statement_timeout = '1s'")
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as err:
            sql.execute(KNN)
        assert err.value.diag.message_primary == "canceling statement due to statement timeout"
        assert err.value.diag.sqlstate == "57014"  # query_canceled, as PostgreSQL's own timeout
        assert time.monotonic() - t0 < 8
        sql.execute("SET statement_timeout = 0")
    finally:
        os.kill(doomed.proc.pid, signal.SIGCONT)
    assert sql.execute(KNN).fetchall() == [(1,)]
