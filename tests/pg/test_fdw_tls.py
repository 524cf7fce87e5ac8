"""A foreign server whose engine is reached over TLS (issue 12): address ``tls:localhost:PORT`` and the server
option ``tls_ca``; kNN through SQL (the FDW, over ``fast+tls:``) and ``drift.search`` by server name equal
the engine's own answers; a wrong CA fails the statement with a TLS error and a hint; ``tls_*`` options on
a Unix socket address are refused when the table is defined."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from tests.pg.tlsengine import TlsEngine, running_tls_engine

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]
N, DIM = 1500, 16
SERVER, BAD_SERVER = "drift_tls_test", "drift_tls_wrong_ca"


def lit(v: Any) -> str:
    return "{" + ",".join(f"{x:.9g}" for x in np.asarray(v, dtype=np.float32).tolist()) + "}"


@pytest.fixture(scope="module")
def tls_engine() -> Iterator[TlsEngine]:
    with running_tls_engine() as eng:
        yield eng


@pytest.fixture(scope="module")
def tls_table(drift_sql: Any, fdw_server: str, tls_engine: TlsEngine) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(21)
    vecs = rng.standard_normal((N, DIM)).astype(np.float32)
    name = f"tls{os.getpid()}"
    with tls_engine.client() as c:
        c.create_collection(name, DIM).upsert(np.arange(N), vecs, [{"tag": f"t{i % 7}"} for i in range(N)])
    assert tls_engine.pki is not None
    with drift_sql.connect() as conn:
        for srv, ca in ((SERVER, tls_engine.ca), (BAD_SERVER, str(tls_engine.pki.other_ca))):
            conn.execute(f"DROP SERVER IF EXISTS {srv} CASCADE")
            conn.execute(f"CREATE SERVER {srv} FOREIGN DATA WRAPPER multicorn OPTIONS (wrapper 'drift_fdw.DriftFDW', "
                         f"address '{tls_engine.address}', tls_ca '{ca}')")  # fmt: skip
            conn.execute(f"CREATE USER MAPPING FOR PUBLIC SERVER {srv} OPTIONS (token '{tls_engine.token}')")
            conn.execute(f"CREATE FOREIGN TABLE {srv}_items (id bigint, embedding real[], query real[], "
                         f"distance real, tag text) SERVER {srv} OPTIONS (collection '{name}')")  # fmt: skip
        conn.execute("""CREATE OR REPLACE FUNCTION public.drift_test_fast_paths() RETURNS text[]
LANGUAGE plpython3u AS $$
from drift_fdw import connection
return sorted({getattr(c.fast(), "address", "") for c in connection._clients.values() if c.address.startswith("tls:")})
$$""")
    try:
        yield {"name": name, "vectors": vecs}
    finally:
        with drift_sql.connect() as conn:
            for srv in (SERVER, BAD_SERVER):
                conn.execute(f"DROP SERVER IF EXISTS {srv} CASCADE")
            conn.execute("DROP FUNCTION IF EXISTS public.drift_test_fast_paths()")
        with tls_engine.client() as c:
            c.drop_collection(name)


def test_knn_through_sql_over_tls_equals_the_engine(sql: Any, tls_table: dict[str, Any], tls_engine: TlsEngine):
    vecs = tls_table["vectors"]
    with tls_engine.client() as c:
        col = c.collection(tls_table["name"])
        for qi in (0, 99, 1234):
            q = vecs[qi] + 0.03
            rows = sql.execute(
                f"SELECT id, distance FROM {SERVER}_items WHERE query = %s ORDER BY distance LIMIT 10", (lit(q),)
            ).fetchall()
            want = col.search(q, k=10)
            assert [r[0] for r in rows] == want.ids.tolist()
            np.testing.assert_allclose([r[1] for r in rows], want.distances, rtol=1e-6, atol=1e-6)
            deep = sql.execute(
                f"SELECT id FROM {SERVER}_items WHERE query = %s AND tag = 't3' ORDER BY distance LIMIT 25", (lit(q),)
            ).fetchall()
            assert [r[0] for r in deep] == col.search(q, k=25, filter={"tag": "t3"}).ids.tolist()
    assert sql.execute("SELECT public.drift_test_fast_paths()").fetchone()[0] == [tls_engine.fast_path]


def test_drift_search_by_server_name_reads_the_tls_options(drift_sql: Any, tls_table: dict[str, Any], tls_engine):
    q = tls_table["vectors"][5]
    with drift_sql.connect() as fresh:  # a new backend: nothing parsed a table of this server yet
        got = fresh.execute(
            "SELECT id FROM drift.search(%s, %s::real[], 5, server => %s)", (tls_table["name"], lit(q), SERVER)
        ).fetchall()
    with tls_engine.client() as c:
        assert [r[0] for r in got] == c.collection(tls_table["name"]).search(q, k=5).ids.tolist()


def test_a_wrong_ca_fails_the_statement_with_a_tls_error(sql: Any, tls_table: dict[str, Any]):
    with pytest.raises(psycopg.Error) as err:
        sql.execute(
            f"SELECT id FROM {BAD_SERVER}_items WHERE query = %s ORDER BY distance LIMIT 3",
            (lit(tls_table["vectors"][0]),),
        ).fetchall()
    text = str(err.value) + str(getattr(err.value.diag, "message_hint", "") or "")
    assert "CERTIFICATE_VERIFY_FAILED" in text or "does not accept" in text, text
    assert "tls_ca" in text, text


def test_tls_options_on_a_unix_address_are_refused(sql: Any, fdw_server: str, drift_sql: Any):
    sql.execute("DROP SERVER IF EXISTS drift_tls_unix CASCADE")
    sql.execute("CREATE SERVER drift_tls_unix FOREIGN DATA WRAPPER multicorn OPTIONS (wrapper 'drift_fdw.DriftFDW', "
                f"address '{drift_sql.address}', tls_ca '/nonexistent/ca.pem')")  # fmt: skip
    try:
        with pytest.raises(psycopg.Error, match="need an address 'tls:HOST:PORT'"):
            sql.execute("CREATE FOREIGN TABLE drift_tls_unix_t (id bigint, embedding real[]) SERVER drift_tls_unix "
                        "OPTIONS (collection 'x')")  # fmt: skip
    finally:
        sql.execute("DROP SERVER IF EXISTS drift_tls_unix CASCADE")
