"""Point lookups of any size: ``id = ANY(...)`` with more ids than one engine call takes is split by the FDW."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]

DIM = 3
STORED = [0, 5, 7, 99_999, 100_000, 100_001, 150_000, 199_999, 250_000]


@pytest.fixture(scope="module")
def spread(drift_sql, fdw_server, engine_server):
    """Rows whose ids fall into different server-sized batches of 0..200,000 (the server's max_batch: 100,000)."""
    name = f"lookups_{os.getpid()}"
    vecs = np.array([[i % 7, (i // 7) % 5, 1.0] for i in STORED], dtype=np.float32)
    with engine_server.client() as client:
        assert client.health()["max_batch"] < 200_000
        client.create_collection(name, DIM).upsert(STORED, vecs, [{"n": i} for i in STORED])
    with drift_sql.connect() as conn:
        conn.execute(
            "CREATE FOREIGN TABLE lk (id bigint, embedding real[], query real[], distance real, n bigint) "
            f"SERVER {fdw_server} OPTIONS (collection '{name}')"
        )
    yield dict(zip(STORED, vecs, strict=True))
    with drift_sql.connect() as conn:
        conn.execute("DROP FOREIGN TABLE lk")
    with engine_server.client() as client:
        client.drop_collection(name)


def test_any_of_200k_ids_is_split_by_the_fdw(sql, spread) -> None:
    ids = [*range(200_001), 5, 150_000, 5]  # duplicates match once, as in PostgreSQL
    rows = sql.execute("SELECT id, n FROM lk WHERE id = ANY(%s)", (ids,)).fetchall()
    assert sorted(rows) == [(i, i) for i in STORED if i <= 200_000]
    assert len(rows) == len({r[0] for r in rows})
    sub = sql.execute(
        "SELECT id FROM lk WHERE id = ANY(ARRAY(SELECT generate_series(0, 200000)::bigint)) ORDER BY id"
    ).fetchall()
    assert [r[0] for r in sub] == [i for i in STORED if i <= 200_000]


def test_knn_over_200k_ids_keeps_distance_order(sql, spread) -> None:
    q = np.array([6.0, 4.0, 1.0], dtype=np.float32)
    rows = sql.execute(
        "SELECT id, distance FROM lk WHERE id = ANY(%s) AND query = %s ORDER BY distance",
        (list(range(200_001)), "{6,4,1}"),
    ).fetchall()
    want = sorted((float(np.linalg.norm(v - q)), i) for i, v in spread.items() if i <= 200_000)
    assert [r[0] for r in rows] == [i for _, i in want]
    np.testing.assert_allclose([r[1] for r in rows], [d for d, _ in want], rtol=1e-6)


def test_big_lookup_sees_the_transactions_writes(sql, spread) -> None:
    with sql.transaction(force_rollback=True):
        sql.execute("INSERT INTO lk (id, embedding, n) VALUES (180000, '{1,1,1}', 1)")
        sql.execute("DELETE FROM lk WHERE id = 99999")
        got = sql.execute("SELECT id FROM lk WHERE id = ANY(%s)", (list(range(200_001)),)).fetchall()
    assert sorted(r[0] for r in got) == sorted([i for i in STORED if i <= 200_000 and i != 99_999] + [180_000])
