"""IMPORT FOREIGN SCHEMA from a foreign server whose engine is reached over TLS (issue 12): the import uses the
server's own ``tls_*`` options (here a private CA, and a pin), in a fresh backend where no table of that
server was parsed yet; it creates one table per collection with the payload columns typed, and a kNN through
an imported table returns the engine's own answer. A wrong pin fails the import with the pin's error, and
``tls_*`` options on a Unix socket address are refused."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from tests.pg.tlsengine import TlsEngine, running_tls_engine

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]
N, DIM = 800, 12
SERVER, PINNED, BAD_PIN = "drift_tls_import", "drift_tls_import_pinned", "drift_tls_import_bad_pin"
SCHEMA = f"tls_imported_{os.getpid()}"


def lit(v: Any) -> str:
    return "{" + ",".join(f"{x:.9g}" for x in np.asarray(v, dtype=np.float32).tolist()) + "}"


@pytest.fixture(scope="module")
def tls_engine() -> Iterator[TlsEngine]:
    with running_tls_engine() as eng:
        yield eng


@pytest.fixture(scope="module")
def imported(drift_sql: Any, fdw_server: str, tls_engine: TlsEngine) -> Iterator[dict[str, Any]]:
    """Two collections in the TLS engine and three foreign servers of it (the CA; the CA and the right pin;
    the CA and a wrong pin), none with a table yet."""
    rng = np.random.default_rng(31)
    vecs = rng.standard_normal((N, DIM)).astype(np.float32)
    names = [f"tlsimp{os.getpid()}_a", f"tlsimp{os.getpid()}_b"]
    payloads = [{"tag": f"t{i % 5}", "grp": i % 3, "score": i / 7, "flag": i % 2 == 0} for i in range(N)]
    with tls_engine.client() as c:
        c.create_collection(names[0], DIM).upsert(np.arange(N), vecs, payloads)
        c.create_collection(names[1], DIM, metric="cosine").upsert([1, 2], vecs[:2])
    assert tls_engine.pki is not None
    pins = {SERVER: None, PINNED: tls_engine.pki.server_sha256, BAD_PIN: "ab" * 32}
    with drift_sql.connect() as conn:
        for srv, pin in pins.items():
            conn.execute(f"DROP SERVER IF EXISTS {srv} CASCADE")
            pin_option = f", tls_pin '{pin}'" if pin else ""
            conn.execute(f"CREATE SERVER {srv} FOREIGN DATA WRAPPER multicorn OPTIONS (wrapper 'drift_fdw.DriftFDW', "
                         f"address '{tls_engine.address}', tls_ca '{tls_engine.ca}'{pin_option})")  # fmt: skip
            conn.execute(f"CREATE USER MAPPING FOR PUBLIC SERVER {srv} OPTIONS (token '{tls_engine.token}')")
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    try:
        yield {"names": names, "vectors": vecs}
    finally:
        with drift_sql.connect() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            for srv in pins:
                conn.execute(f"DROP SERVER IF EXISTS {srv} CASCADE")
        with tls_engine.client() as c:
            for name in names:
                c.drop_collection(name)


def _columns(conn: Any, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (table,),
    ).fetchall()
    return dict(rows)


def test_import_from_a_tls_server_creates_the_tables_and_knn_equals_the_engine(
    drift_sql: Any, imported: dict[str, Any], tls_engine: TlsEngine
) -> None:
    a, b = imported["names"]
    vecs = imported["vectors"]
    with drift_sql.connect() as fresh:  # a new backend: only the server's options can say how to reach it
        fresh.execute(f"CREATE SCHEMA {SCHEMA}")
        fresh.execute(f'IMPORT FOREIGN SCHEMA drift LIMIT TO ("{a}", "{b}") FROM SERVER {SERVER} INTO {SCHEMA}')
        options = dict(
            fresh.execute(
                "SELECT c.relname, f.ftoptions FROM pg_foreign_table f JOIN pg_class c ON c.oid = f.ftrelid "
                "WHERE c.relnamespace = %s::regnamespace",
                (SCHEMA,),
            ).fetchall()
        )
        assert sorted(options) == [a, b]
        assert f"collection={a}" in options[a] and f"dim={DIM}" in options[a] and "metric=cosine" in options[b]
        cols = _columns(fresh, f'{SCHEMA}."{a}"')
        assert cols["id"] == "bigint" and cols["embedding"] == "real[]" and cols["distance"] == "real"
        assert cols["tag"] == "text" and cols["grp"] == "bigint" and cols["flag"] == "boolean"
        assert cols["score"] == "double precision"
        with tls_engine.client() as c:
            col = c.collection(a)
            for qi in (0, 321, 799):
                q = vecs[qi] + 0.02
                rows = fresh.execute(
                    f'SELECT id, distance, tag FROM {SCHEMA}."{a}" WHERE query = %s ORDER BY distance LIMIT 10',
                    (lit(q),),
                ).fetchall()
                want = col.search(q, k=10)
                assert [r[0] for r in rows] == want.ids.tolist()
                np.testing.assert_allclose([r[1] for r in rows], want.distances, rtol=1e-6, atol=1e-6)
                assert [r[2] for r in rows] == [p["tag"] for p in want.payloads]
        assert fresh.execute(f'SELECT count(*) FROM {SCHEMA}."{b}"').fetchone()[0] == 2


def test_import_checks_the_servers_pin(drift_sql: Any, imported: dict[str, Any]) -> None:
    a = imported["names"][0]
    schema = f"{SCHEMA}_pin"
    with drift_sql.connect() as fresh:
        fresh.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        fresh.execute(f"CREATE SCHEMA {schema}")
        try:
            fresh.execute(f'IMPORT FOREIGN SCHEMA drift LIMIT TO ("{a}") FROM SERVER {PINNED} INTO {schema}')
            assert list(_columns(fresh, f'{schema}."{a}"'))[:2] == ["id", "embedding"]
        finally:
            fresh.execute(f"DROP SCHEMA {schema} CASCADE")
    with drift_sql.connect() as fresh:
        fresh.execute(f"CREATE SCHEMA {schema}")
        try:
            with pytest.raises(psycopg.Error, match="is not the pinned") as err:
                fresh.execute(f'IMPORT FOREIGN SCHEMA drift LIMIT TO ("{a}") FROM SERVER {BAD_PIN} INTO {schema}')
            assert err.value.sqlstate == "08006"
        finally:
            fresh.execute(f"DROP SCHEMA {schema} CASCADE")


def test_tls_options_on_a_unix_address_refuse_the_import(sql: Any, drift_sql: Any) -> None:
    sql.execute("DROP SERVER IF EXISTS drift_tls_import_unix CASCADE")
    sql.execute("CREATE SERVER drift_tls_import_unix FOREIGN DATA WRAPPER multicorn OPTIONS (wrapper "
                f"'drift_fdw.DriftFDW', address '{drift_sql.address}', tls_ca '/nonexistent/ca.pem')")  # fmt: skip
    schema = f"{SCHEMA}_unix"
    sql.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    sql.execute(f"CREATE SCHEMA {schema}")
    try:
        with pytest.raises(psycopg.Error, match="need an address 'tls:HOST:PORT'"):
            sql.execute(f"IMPORT FOREIGN SCHEMA drift FROM SERVER drift_tls_import_unix INTO {schema}")
        made = sql.execute("SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace", (schema,))
        assert made.fetchone()[0] == 0
    finally:
        sql.execute(f"DROP SCHEMA {schema} CASCADE")
        sql.execute("DROP SERVER IF EXISTS drift_tls_import_unix CASCADE")
