"""FDW errors carry the SQLSTATE of the problem (Multicorn alone reports every error as XX000)."""

from __future__ import annotations

import os
import shutil
import subprocess

import psycopg
import pytest

from drift_fdw import errcodes

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]

DIM = 3
TABLE = "codes"


@pytest.fixture(scope="module")
def codes(drift_sql, fdw_server, engine_server):
    name = f"codes_{os.getpid()}"
    with engine_server.client() as client:
        client.create_collection(name, DIM).upsert([1, 2, 3], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    with drift_sql.connect() as conn:
        conn.execute(
            f"CREATE FOREIGN TABLE {TABLE} (id bigint, embedding real[], query real[], distance real, k int, "
            f"nprobe int, tag text) SERVER {fdw_server} OPTIONS (collection '{name}')"
        )
        conn.execute(
            f"CREATE FOREIGN TABLE codes_missing (id bigint, embedding real[]) SERVER {fdw_server} "
            "OPTIONS (collection 'no_such_collection_for_codes')"
        )
    yield TABLE
    with drift_sql.connect() as conn:
        conn.execute(f"DROP FOREIGN TABLE {TABLE}, codes_missing")
    with engine_server.client() as client:
        client.drop_collection(name)


def _sqlstate(conn, statement: str, params: tuple = ()) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as err:
        conn.execute(statement, params)
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the backend still serves
    return err.value


@pytest.mark.parametrize(
    ("statement", "sqlstate", "message"),
    [
        ("SELECT id FROM codes WHERE query = '{1,NaN,0}' ORDER BY distance LIMIT 1", "22023", "NaN or Infinity"),
        ("SELECT id FROM codes WHERE query = '{1,0}' ORDER BY distance LIMIT 1", "22023", "has 2 dimensions"),
        ("SELECT id FROM codes WHERE query = '{1,NULL,0}'", "22004", "NULL element"),
        ("SELECT id FROM codes WHERE query IS NULL", "22004", "query is NULL"),
        ("SELECT id FROM codes WHERE query = '{1,0,0}' AND k = 0", "22023", "out of range"),
        ("SELECT id FROM codes WHERE distance < 1", "22023", "needs a query vector"),
        ("SELECT id FROM codes WHERE query IN ('{1,0,0}', '{0,1,0}')", "0A000", "only works as"),
        ("SELECT id FROM codes_missing", "42704", "does not exist"),
        ("INSERT INTO codes (id, embedding) VALUES (9, '{1,2}')", "22023", "has 2 dimensions"),
        ("INSERT INTO codes (id, embedding) VALUES (NULL, '{1,1,2}')", "22004", "must not be NULL"),
        ("INSERT INTO codes (id, embedding) VALUES (9, NULL)", "22004", "has no embedding"),
    ],
)
def test_fdw_errors_carry_their_sqlstate(sql, codes, statement, sqlstate, message) -> None:
    err = _sqlstate(sql, statement)
    assert message in err.diag.message_primary
    assert err.sqlstate == sqlstate, (err.sqlstate, err.diag.message_primary)


def test_null_knob_and_query_parameters_are_errors_not_empty_results(sql, codes) -> None:
    """A NULL parameter of a generic plan (``k = $1``, ``query = $1``): before, no rows and no reason."""
    sql.execute("SET plan_cache_mode = force_generic_plan")
    sql.execute("PREPARE knn_k(int) AS SELECT id FROM codes WHERE query = '{1,0,0}' AND k = $1 ORDER BY distance")
    sql.execute("PREPARE knn_q(real[]) AS SELECT id FROM codes WHERE query = $1 ORDER BY distance LIMIT 2")
    assert sql.execute("EXECUTE knn_k(2)").fetchall() == [(1,), (2,)]
    err = _sqlstate(sql, "EXECUTE knn_k(NULL)")
    assert err.sqlstate == "22004" and "k must not be NULL" in err.diag.message_primary
    assert "1 to 10000" in err.diag.message_hint
    assert sql.execute("EXECUTE knn_q('{0,1,0}')").fetchall()[0] == (2,)
    err = _sqlstate(sql, "EXECUTE knn_q(NULL)")
    assert err.sqlstate == "22004" and "query is NULL" in err.diag.message_primary


def test_unknown_server_option_at_first_use(sql, drift_sql, codes) -> None:
    """ALTER SERVER is not checked by the event trigger: the FDW refuses the option when it opens the table."""
    sql.execute(
        "CREATE SERVER codes_srv FOREIGN DATA WRAPPER multicorn "
        f"OPTIONS (wrapper 'drift_fdw.DriftFDW', address '{drift_sql.address}')"
    )
    try:
        sql.execute(
            "CREATE FOREIGN TABLE codes_t (id bigint, embedding real[]) SERVER codes_srv OPTIONS (collection 'x')"
        )
        sql.execute("ALTER SERVER codes_srv OPTIONS (ADD colection 'x')")
        err = _sqlstate(sql, "SELECT id FROM codes_t")
        assert "unknown option 'colection'" in err.diag.message_primary
        assert err.sqlstate == "22023"
    finally:
        sql.execute("DROP SERVER codes_srv CASCADE")


def test_other_errors_keep_their_own_codes(sql, codes) -> None:
    """The hook changes only the FDW's own report: PostgreSQL's errors and a same-text XX000 keep theirs."""
    err = _sqlstate(sql, "SELECT id FROM codes WHERE query = '{1,0}' ORDER BY distance")
    assert err.sqlstate == "22023"
    assert _sqlstate(sql, "SELECT 1 / 0").sqlstate == "22012"
    assert _sqlstate(sql, "SELECT id FROM codes WHERE query = '{1,0,x}'").sqlstate == "22P02"  # PostgreSQL's parse
    text = err.diag.message_primary.replace("'", "''")
    raised = _sqlstate(sql, f"DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'XX000', MESSAGE = '{text}'; END $$")
    assert raised.sqlstate == "XX000"  # nothing pending: the FDW's error was reported already
    assert _sqlstate(sql, "SELECT id FROM codes_missing").sqlstate == "42704"  # and it works again afterwards


def test_a_caught_fdw_error_does_not_leak_its_code(sql, codes) -> None:
    """Caught before it is reported, the FDW's error stays pending; a later, different error is untouched."""
    sql.execute(
        "DO $$ BEGIN PERFORM id FROM codes WHERE query = '{1,0}'; "
        "EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'caught %', SQLSTATE; END $$"
    )
    assert _sqlstate(sql, "SELECT 1 / 0").sqlstate == "22012"
    raised = _sqlstate(sql, "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'XX000', MESSAGE = 'drift: else'; END $$")
    assert raised.sqlstate == "XX000"


def test_errordata_offsets_match_the_server_headers() -> None:
    """The ctypes offsets of ``errcodes`` are PostgreSQL 15's ``offsetof(ErrorData, ...)`` (utils/elog.h)."""
    cc, pg_config = shutil.which("cc") or shutil.which("gcc"), shutil.which("pg_config")
    if cc is None or pg_config is None:
        pytest.skip("needs a C compiler and pg_config (postgresql-server-dev) to read the server headers")
    include = subprocess.run([pg_config, "--includedir-server"], capture_output=True, text=True, check=True)
    version = subprocess.run([pg_config, "--version"], capture_output=True, text=True, check=True).stdout
    if f" {errcodes.PG_MAJOR}." not in version:
        pytest.skip(f"the headers are not PostgreSQL {errcodes.PG_MAJOR}'s: {version.strip()}")
    source = (
        '#include "postgres.h"\n#include <stddef.h>\n#include "utils/elog.h"\n'
        f'_Static_assert(offsetof(ErrorData, elevel) == {errcodes.OFF_ELEVEL}, "elevel");\n'
        f'_Static_assert(offsetof(ErrorData, sqlerrcode) == {errcodes.OFF_SQLERRCODE}, "sqlerrcode");\n'
        f'_Static_assert(offsetof(ErrorData, message) == {errcodes.OFF_MESSAGE}, "message");\n'
        f'_Static_assert(ERROR == {errcodes.ERROR_LEVEL}, "ERROR");\n'
        f'_Static_assert(ERRCODE_INTERNAL_ERROR == {errcodes.encode_sqlstate("XX000")}, "XX000");\n'
        f'_Static_assert(ERRCODE_INVALID_PARAMETER_VALUE == {errcodes.encode_sqlstate("22023")}, "22023");\n'
        '_Static_assert(sizeof(void *) == 8, "LP64");\n'
    )
    done = subprocess.run(
        [cc, "-fsyntax-only", "-I", include.stdout.strip(), "-x", "c", "-"],
        input=source,
        capture_output=True,
        text=True,
    )
    if done.returncode and "No such file" in done.stderr:
        pytest.skip(f"the server headers are not installed: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr


def test_sqlstate_encoding() -> None:
    assert errcodes.encode_sqlstate("00000") == 0
    assert errcodes.encode_sqlstate("XX000") == 2600
    with pytest.raises(ValueError):
        errcodes.encode_sqlstate("2202")


def test_fdw_error_inside_a_drift_function_keeps_its_code(sql, codes) -> None:
    """drift.upsert reading the foreign table: PL/Python catches the FDW's error first (plpy.SPIError)."""
    err = _sqlstate(
        sql, "SELECT drift.upsert('codes'::regclass, 'SELECT id, embedding FROM codes WHERE query = ''{1,0}''')"
    )
    assert "has 2 dimensions" in err.diag.message_primary
    assert err.sqlstate == "22023"
    assert "bug" not in (err.diag.message_hint or "")
