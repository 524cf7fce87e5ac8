"""Sharded tables (``drift_fdw.shards``, ``drift_fdw.fanout``) on real PostgreSQL and three engine servers.

Shards: ``shard_a`` is the session's engine (Unix socket), ``shard_b`` a second one (Unix socket, its own
data directory; the one killed and restarted), ``shard_c`` a third over TCP with TLS on 127.0.0.1 and a
token (in a USER MAPPING), so its fast path is ``fast+tls:``. The reference is one collection on one engine holding
the same rows; searches are exact (untrained, or every bucket probed), so ids and distances must be equal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from tests.pg.engine import EngineServer
from tests.pg.tlsengine import TlsEngine

DIM = 16
N = 2000
RARE = "rare"


def lit(v: Any) -> str:
    return "{" + ",".join(f"{x:.9g}" for x in np.asarray(v, dtype=np.float32).tolist()) + "}"


class TcpEngine(TlsEngine):
    """``shard_c``: an engine server on 127.0.0.1 with TLS (gRPC and the ``fast+tls:`` fast path), token required;
    its foreign server names ``tls:localhost:PORT`` and the CA (``tls_ca``)."""


@pytest.fixture(scope="module")
def engines(engine_server: EngineServer) -> Iterator[dict[str, EngineServer]]:
    b, c = EngineServer(), TcpEngine()
    try:
        b.start()
        c.start()
        assert c.client(token=c.token).health()["fast_path"].startswith("fast+tls:127.0.0.1:")
        yield {"shard_a": engine_server, "shard_b": b, "shard_c": c}
    finally:
        try:
            b.stop()
        finally:
            c.stop()


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    rng = np.random.default_rng(12)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    tags = np.where(rng.random(N) < 0.03, RARE, "common")
    queries = rng.standard_normal((6, DIM)).astype(np.float32)
    return {"vectors": vectors, "tags": tags.tolist(), "queries": queries}


@pytest.fixture(scope="module")
def sharded(fdw_server: str, drift_sql: Any, engines: dict[str, EngineServer], data: dict[str, Any]) -> Iterator[Any]:
    from tests.pg.stack import stage

    name = f"sh{os.getpid()}"
    ref_name = f"{name}_ref"
    with drift_sql.connect() as conn:
        for srv, eng in engines.items():
            tls = f", tls_ca '{eng.ca}'" if isinstance(eng, TlsEngine) else ""
            conn.execute(f"DROP SERVER IF EXISTS {srv} CASCADE")
            conn.execute(f"CREATE SERVER {srv} FOREIGN DATA WRAPPER multicorn "
                         f"OPTIONS (wrapper 'drift_fdw.DriftFDW', address '{eng.address}'{tls})")  # fmt: skip
        conn.execute(f"CREATE USER MAPPING FOR PUBLIC SERVER shard_c OPTIONS (token '{engines['shard_c'].token}')")
        conn.execute(
            "SELECT drift.create_sharded_table(%s, %s, 'l2', servers => ARRAY['shard_a', 'shard_b', 'shard_c'], "
            "fields => 'tag text')",
            (name, DIM),
        )
        stage(conn, f"{name}_staging", data["vectors"], data["tags"])
        conn.execute(f"INSERT INTO {name} (id, embedding, tag) SELECT id, embedding, tag FROM {name}_staging")
        ref = engines["shard_a"].client().create_collection(ref_name, DIM)
        ref.upsert(np.arange(N), data["vectors"], [{"tag": t} for t in data["tags"]])
        conn.execute("""CREATE OR REPLACE FUNCTION public.drift_test_fanout() RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import fanout
import json
return json.dumps(fanout.STATS)
$$""")
    try:
        yield {"name": name, "ref": ref, "engines": engines}
    finally:
        with drift_sql.connect() as conn:
            conn.execute("SELECT drift.drop_sharded_table(%s)", (name,))
            conn.execute(f"DROP TABLE IF EXISTS {name}_staging")
            for srv in engines:
                conn.execute(f"DROP SERVER IF EXISTS {srv} CASCADE")
        engines["shard_a"].client().drop_collection(ref_name)


def knn(conn: Any, name: str, q: Any, limit: int = 10, where: str = "") -> list[tuple[int, float]]:
    sql = f"SELECT id, distance FROM {name} WHERE query = %s {where} ORDER BY distance LIMIT {limit}"
    return [(int(i), float(d)) for i, d in conn.execute(sql, (lit(q),)).fetchall()]


def ref_knn(ref: Any, q: Any, k: int = 10, **kw: Any) -> list[tuple[int, float]]:
    res = ref.search(q, k=k, **kw)
    return [(int(i), float(np.float32(d))) for i, d in zip(res.ids.tolist(), res.distances.tolist(), strict=True)]


def same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([d for _, d in got], [d for _, d in want], rtol=1e-6, atol=1e-6)


def partition_of(conn: Any, name: str, ident: int) -> str | None:
    """The partition ``SELECT ... WHERE id = x`` reads the row from (``name``: the public name)."""
    row = conn.execute(f"SELECT tableoid::regclass::text FROM {name}_shards WHERE id = %s", (ident,)).fetchone()
    return None if row is None else row[0]


def test_knn_through_the_public_name_equals_one_engine(sql: Any, sharded: dict[str, Any], data: dict[str, Any]):
    name, ref = sharded["name"], sharded["ref"]
    plan = "\n".join(r[0] for r in sql.execute(
        f"EXPLAIN SELECT id FROM {name} WHERE query = %s ORDER BY distance LIMIT 10", (lit(data["queries"][0]),)
    ).fetchall())  # fmt: skip
    assert "Merge Append" in plan and plan.count("Foreign Scan") == 3
    counts = [sql.execute(f"SELECT count(*) FROM {name}_shard_{i}").fetchone()[0] for i in range(3)]
    assert sum(counts) == N and min(counts) > N // 5  # every shard holds a share
    knn(sql, name, data["queries"][0])  # describes every shard's collection (the fan-out needs that)
    before = sql.execute("SELECT public.drift_test_fanout()").fetchone()[0]
    for q in data["queries"]:
        same(knn(sql, name, q), ref_knn(ref, q))
        same(knn(sql, name, q, limit=57), ref_knn(ref, q, k=57))  # deeper: each shard's own stream
    after = sql.execute("SELECT public.drift_test_fanout()").fetchone()[0]
    assert after["taken"] - before["taken"] == 2 * 2 * len(data["queries"])  # both siblings, every statement
    assert after["fanouts"] - before["fanouts"] == 2 * len(data["queries"])


def test_filtered_knn_fills_the_limit_across_shards(sql: Any, sharded: dict[str, Any], data: dict[str, Any]):
    name, ref = sharded["name"], sharded["ref"]
    rare = sum(t == RARE for t in data["tags"])
    assert 20 < rare < 100
    for q in data["queries"][:3]:
        got = knn(sql, name, q, limit=20, where=f"AND tag = '{RARE}'")
        assert len(got) == 20
        same(got, ref_knn(ref, q, k=20, filter={"tag": RARE}))


def test_insert_update_delete_through_the_public_name(sql: Any, sharded: dict[str, Any]):
    name, engines = sharded["name"], sharded["engines"]
    servers = dict(sql.execute(
        f"SELECT c.relname, s.srvname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        f"JOIN pg_foreign_table ft ON ft.ftrelid = c.oid JOIN pg_foreign_server s ON s.oid = ft.ftserver "
        f"WHERE i.inhparent = '{name}_shards'::regclass"
    ).fetchall())  # fmt: skip

    def holders(ident: int) -> list[str]:
        out = []
        for part, srv in sorted(servers.items()):
            eng = engines[srv]
            kw = {"token": eng.token} if isinstance(eng, TcpEngine) else {}
            with eng.client(**kw) as c:
                if len(c.collection(name).get([ident]).ids):
                    out.append(part)
        return out

    vec = "{" + ",".join(["50"] * DIM) + "}"
    back = sql.execute(f"INSERT INTO {name} (id, embedding, tag) VALUES (900001, %s, 'x') RETURNING id, tag",
                       (vec,)).fetchall()  # fmt: skip
    assert back == [(900001, "x")]
    part = partition_of(sql, name, 900001)
    assert part is not None and holders(900001) == [part.rsplit(".", 1)[-1]]
    here = int(part.rsplit("_", 1)[-1])  # the remainder of the partition the row is in

    def elsewhere(i: int) -> bool:
        sql_ = "SELECT satisfies_hash_partition(%s::regclass, 3, %s, %s::bigint)"
        return sql.execute(sql_, (f"{name}_shards", here, i)).fetchone()[0] is False

    new_id = next(i for i in range(900002, 900100) if elsewhere(i))
    sql.execute(f"UPDATE {name} SET id = %s, tag = 'moved' WHERE id = 900001", (new_id,))
    assert partition_of(sql, name, 900001) is None and holders(900001) == []
    moved = partition_of(sql, name, new_id)
    assert moved is not None and moved != part and holders(new_id) == [moved.rsplit(".", 1)[-1]]
    assert sql.execute(f"SELECT tag FROM {name} WHERE id = %s", (new_id,)).fetchone() == ("moved",)
    sql.execute(f"UPDATE {name} SET tag = 'same' WHERE id = %s", (new_id,))
    assert sql.execute(f"SELECT tag FROM {name} WHERE id = %s", (new_id,)).fetchone() == ("same",)
    assert sql.execute(f"DELETE FROM {name} WHERE id = %s", (new_id,)).rowcount == 1
    assert holders(new_id) == []


def test_rollback_across_shards_leaves_nothing(drift_sql: Any, sharded: dict[str, Any]):
    name = sharded["name"]
    ids = list(range(910000, 910012))
    vec = "{" + ",".join(["60"] * DIM) + "}"
    with drift_sql.connect() as conn:
        conn.autocommit = False
        for i in ids:
            conn.execute(f"INSERT INTO {name} (id, embedding, tag) VALUES (%s, %s, 'tx')", (i, vec))
        parts = {partition_of(conn, name, i) for i in ids}
        assert len(parts) == 3  # the transaction sees its own rows, on every shard
        conn.rollback()
        conn.autocommit = True
        assert conn.execute(f"SELECT count(*) FROM {name} WHERE id = ANY(%s)", (ids,)).fetchone()[0] == 0
        assert conn.execute(f"SELECT count(*) FROM {name} WHERE tag = 'tx'").fetchone()[0] == 0


def test_a_commit_one_shard_refuses_leaves_nothing_on_any_shard(
    drift_sql: Any, sharded: dict[str, Any], data: dict[str, Any]
):
    name = sharded["name"]
    ids = list(range(920000, 920012))
    vec = "{" + ",".join(["70"] * DIM) + "}"
    with drift_sql.connect() as conn:
        conn.autocommit = False
        for i in ids:
            conn.execute(f"INSERT INTO {name} (id, embedding, tag) VALUES (%s, %s, 'tx2')", (i, vec))
        conn.execute(f"INSERT INTO {name} (id, embedding, tag) VALUES (7, %s, 'dup')", (vec,))  # id 7 exists
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.commit()
        conn.autocommit = True
        assert conn.execute(f"SELECT count(*) FROM {name} WHERE id = ANY(%s)", (ids,)).fetchone()[0] == 0
        assert conn.execute(f"SELECT tag FROM {name} WHERE id = 7").fetchone() == (data["tags"][7],)


def test_writes_into_the_parent_are_refused_cleanly(sql: Any, sharded: dict[str, Any]):
    name = sharded["name"]
    pid = sql.execute("SELECT pg_backend_pid()").fetchone()[0]
    vec = "{" + ",".join(["1"] * DIM) + "}"
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="write through"):
        sql.execute(f"INSERT INTO {name}_shards (id, embedding) VALUES (1, %s)", (vec,))
    with (
        pytest.raises(psycopg.errors.FeatureNotSupported),
        sql.cursor() as cur,
        cur.copy(f"COPY {name}_shards (id, embedding) FROM STDIN") as cp,
    ):
        cp.write(f"5\t{vec}\n")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="may not change id"):
        sql.execute(f"UPDATE {name}_shards SET id = id + 1000000 WHERE id = 3")
    assert sql.execute("SELECT pg_backend_pid()").fetchone()[0] == pid  # the same backend: no crash
    assert sql.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == N


def test_a_shard_down_is_an_error_naming_it_then_the_same_answers(
    sql: Any, sharded: dict[str, Any], data: dict[str, Any]
):
    name, ref, b = sharded["name"], sharded["ref"], sharded["engines"]["shard_b"]
    part_b = sql.execute(
        "SELECT c.relname FROM pg_foreign_table ft JOIN pg_class c ON c.oid = ft.ftrelid "
        "JOIN pg_foreign_server s ON s.oid = ft.ftserver WHERE s.srvname = 'shard_b'"
    ).fetchone()[0]
    on_b = {r[0] for r in sql.execute(f"SELECT id FROM {part_b}").fetchall()}
    q = data["queries"][1]
    before = knn(sql, name, q, limit=30)
    b.terminate()
    try:
        for _ in range(2):  # also once the client has forgotten the dead connection
            with pytest.raises(psycopg.errors.ConnectionFailure) as err:
                knn(sql, name, q, limit=30)
            assert f"shard {part_b} of " in str(err.value) and "unavailable" in str(err.value)
        sql.execute("ALTER SERVER shard_b OPTIONS (ADD allow_partial 'true')")
        notices: list[str] = []
        sql.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"))
        partial = knn(sql, name, q, limit=30)
        assert any(n.startswith("WARNING") and part_b in n for n in notices)
        want = [(i, d) for i, d in ref_knn(ref, q, k=200) if i not in on_b][:30]
        same(partial, want)
    finally:
        sql.execute("ALTER SERVER shard_b OPTIONS (DROP allow_partial)")
        b.restart()
    same(knn(sql, name, q, limit=30), before)
    same(knn(sql, name, q, limit=30), ref_knn(ref, q, k=30))


def test_admin_functions_act_on_every_shard(sql: Any, sharded: dict[str, Any], data: dict[str, Any]):
    name, ref = sharded["name"], sharded["ref"]
    stats = dict(sql.execute("SELECT name, value FROM drift.stats(%s)", (name,)).fetchall())
    assert stats["count"] == N and len(stats["shards"]) == 3
    assert sum(s["count"] for s in stats["shards"]) == N
    assert dict(sql.execute("SELECT name, value FROM drift.stats(%s::regclass)", (f"{name}_shards",)).fetchall()
                )["count"] == N  # fmt: skip
    assert sql.execute("SELECT drift.flush(%s)", (name,)).fetchone()[0] >= 0
    trained = sql.execute("SELECT drift.train(%s, n_buckets => 8)", (name,)).fetchone()[0]
    assert sorted(trained) == [f"{name}_shard_{i}" for i in range(3)]
    params = sql.execute("SELECT drift.set_params(%s, nprobe => 8)", (name,)).fetchone()[0]
    assert all(p["nprobe"] == 8 for p in params.values())
    assert len(sql.execute("SELECT drift.maintain(%s)", (name,)).fetchone()[0]) == 3
    for q in data["queries"][:3]:  # trained, every bucket probed: still exact
        same(knn(sql, name, q, where="AND nprobe = 8"), ref_knn(ref, q))


# ------------------------------------------------------------------------------------------ routing (drift.route)
EXTREMES = [0, 1, -1, 2, -2, 2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**32, -(2**32), 2**32 + 1, -(2**32) - 1,
            2**62, -(2**62), 2**63 - 2, 2**63 - 1, -(2**63) + 1, -(2**63)]  # fmt: skip


def shard_ids(sharded: dict[str, Any], ids: list[int]) -> list[set[int]]:
    """For each remainder, the ids of ``ids`` its shard's engine holds (read from the engines, not SQL)."""
    out = []
    for eng in sharded["engines"].values():
        kw = {"token": eng.token} if isinstance(eng, TcpEngine) else {}
        with eng.client(**kw) as c:
            col = c.collection(sharded["name"])
            held: set[int] = set()
            for s in range(0, len(ids), 2000):
                held |= set(col.get(ids[s : s + 2000]).ids.tolist())
            out.append(held)
    return out


def expected(ids: list[int]) -> list[set[int]]:
    from drift_fdw import routing

    rem = routing.remainders(ids, 3).tolist()
    return [{i for i, r in zip(ids, rem, strict=True) if r == part} for part in range(3)]


def test_the_python_hash_is_postgresqls(sql: Any):
    from drift_fdw import routing

    rng = np.random.default_rng(5)
    ids = sorted({*EXTREMES, *range(-1500, 1500), *rng.integers(-(2**63), 2**63 - 1, 20_000, dtype=np.int64).tolist(),
                  *(rng.integers(-(2**40), 2**40, 5_000)).tolist()})  # fmt: skip
    sql.execute("DROP TABLE IF EXISTS route_hash")
    sql.execute("CREATE TABLE route_hash (id bigint NOT NULL) PARTITION BY HASH (id)")
    try:
        for m in (1, 2, 3, 4, 7, 16):
            got = sql.execute(
                "SELECT array_agg(r ORDER BY o) FROM unnest(%s::bigint[]) WITH ORDINALITY u(i, o), "
                "generate_series(0, %s - 1) r WHERE satisfies_hash_partition('route_hash'::regclass, %s, r, i)",
                (ids, m, m),
            ).fetchone()[0]
            assert len(got) == len(ids)  # exactly one remainder per id
            assert routing.remainders(ids, m).tolist() == got, m
            assert [routing.remainder(i, m) for i in ids] == got, m
        for r in range(3):  # and where PostgreSQL's tuple routing puts a row
            bound = f"FOR VALUES WITH (MODULUS 3, REMAINDER {r})"
            sql.execute(f"CREATE TABLE route_hash_{r} PARTITION OF route_hash {bound}")
        sql.execute("INSERT INTO route_hash SELECT unnest(%s::bigint[])", (ids,))
        placed = dict(sql.execute("SELECT id, right(tableoid::regclass::text, 1)::int FROM route_hash").fetchall())
        assert [placed[i] for i in ids] == routing.remainders(ids, 3).tolist()
    finally:
        sql.execute("DROP TABLE route_hash")


def test_insert_and_copy_through_the_view_land_where_where_id_reads(sql: Any, sharded: dict[str, Any]):
    from tests.pg.stack import copy_text

    name = sharded["name"]
    rng = np.random.default_rng(8)
    big = [i for i in EXTREMES if i not in range(N)]  # ids 0..N-1 exist already
    by_insert = list(dict.fromkeys([*big, *range(-400, 0), *range(1_000_000, 1_000_400)]))
    by_copy = list(range(2_000_000, 2_000_500))
    vecs = rng.standard_normal((len(by_insert) + len(by_copy), DIM)).astype(np.float32)
    lits = [lit(v) for v in vecs[: len(by_insert)]]
    try:
        back = sql.execute(
            f"INSERT INTO {name} (id, embedding, tag) SELECT i, e::real[], 'ins' FROM unnest(%s::bigint[], %s::text[]) "
            "u(i, e) RETURNING id, tag",
            (by_insert, lits),
        ).fetchall()
        assert sorted(back) == sorted((i, "ins") for i in by_insert)
        with sql.cursor() as cur:
            with cur.copy(f"COPY {name} (id, embedding, tag) FROM STDIN") as cp:
                cp.write(copy_text(vecs[len(by_insert) :], ["cp"] * len(by_copy), start=by_copy[0]))
            assert cur.rowcount == len(by_copy)  # COPY counts the rows through the view
        ids = by_insert + by_copy
        assert shard_ids(sharded, ids) == expected(ids)  # on the engine of the partition the hash picks
        for ident in [*big, -400, -1, 1_000_000, 1_000_399, 2_000_000, 2_000_499]:
            want = f"{name}_shard_{next(p for p, s in enumerate(expected([ident])) if s)}"
            assert partition_of(sql, name, ident) == want  # the partition WHERE id = x reads
        got = dict(sql.execute(f"SELECT id, embedding FROM {name} WHERE id = ANY(%s)", (ids,)).fetchall())
        assert len(got) == len(ids)
        np.testing.assert_array_equal(np.array([got[i] for i in ids], dtype=np.float32), vecs)
        assert sql.execute(f"SELECT count(*) FROM {name} WHERE tag = 'cp'").fetchone()[0] == len(by_copy)
        sql.execute(
            "CREATE OR REPLACE FUNCTION pg_temp.heavy() RETURNS text[] LANGUAGE plpython3u AS $$\n"
            "import sys\n"
            "return sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'hnswlib', 'lmdb', 'llvmlite'))\n"
            "$$"
        )
        assert sql.execute("SELECT pg_temp.heavy()").fetchone()[0] == []  # the routing imports the thin client only
    finally:
        sql.execute(f"DELETE FROM {name} WHERE id = ANY(%s)", (by_insert + by_copy,))
    assert shard_ids(sharded, by_insert + by_copy) == [set(), set(), set()]


def test_rollback_and_savepoints_through_the_view(drift_sql: Any, sharded: dict[str, Any]):
    from tests.pg.stack import copy_text

    name = sharded["name"]
    vecs = np.full((300, DIM), 3.0, dtype=np.float32)
    first, second, third = list(range(3_000_000, 3_000_100)), list(range(3_000_100, 3_000_200)), []
    with drift_sql.connect() as conn:
        conn.autocommit = False
        conn.execute(f"INSERT INTO {name} (id, embedding, tag) SELECT i, %s, 'rb' FROM unnest(%s::bigint[]) i",
                     (lit(vecs[0]), first))  # fmt: skip
        with conn.cursor() as cur, cur.copy(f"COPY {name} (id, embedding, tag) FROM STDIN") as cp:
            cp.write(copy_text(vecs[:100], ["rb"] * 100, start=second[0]))
        seen = conn.execute(f"SELECT count(*) FROM {name} WHERE id = ANY(%s)", (first + second,)).fetchone()[0]
        assert seen == 200  # the transaction reads its own rows (the overlay of every shard)
        assert {partition_of(conn, name, i) for i in first} == {f"{name}_shard_{p}" for p in range(3)}
        conn.rollback()
        assert shard_ids(sharded, first + second) == [set(), set(), set()]
        # savepoints: rows of a rolled-back savepoint go, those of a released one and after it stay
        conn.execute(f"INSERT INTO {name} (id, embedding, tag) SELECT i, %s, 'sp' FROM unnest(%s::bigint[]) i",
                     (lit(vecs[0]), first))  # fmt: skip
        conn.execute("SAVEPOINT a")
        conn.execute(f"INSERT INTO {name} (id, embedding, tag) SELECT i, %s, 'sp' FROM unnest(%s::bigint[]) i",
                     (lit(vecs[0]), second[:50]))  # fmt: skip
        conn.execute("RELEASE SAVEPOINT a")
        conn.execute("SAVEPOINT b")  # a new subtransaction at the same level as a
        conn.execute(f"INSERT INTO {name} (id, embedding, tag) SELECT i, %s, 'sp' FROM unnest(%s::bigint[]) i",
                     (lit(vecs[0]), second[50:]))  # fmt: skip
        conn.execute(f"DELETE FROM {name} WHERE id = ANY(%s)", (first[:10],))
        conn.execute("ROLLBACK TO SAVEPOINT b")
        third = list(range(3_000_200, 3_000_230))
        conn.execute(f"INSERT INTO {name} (id, embedding, tag) SELECT i, %s, 'sp' FROM unnest(%s::bigint[]) i",
                     (lit(vecs[0]), third))  # fmt: skip
        conn.commit()
        kept = first + second[:50] + third
        assert shard_ids(sharded, first + second + third) == expected(kept)
        conn.execute(f"DELETE FROM {name} WHERE id = ANY(%s)", (kept,))
        conn.commit()
    assert shard_ids(sharded, kept) == [set(), set(), set()]


def test_an_exception_block_undoes_its_rows_through_the_view(sql: Any, sharded: dict[str, Any]):
    name = sharded["name"]
    vec = lit(np.full(DIM, 5.0))
    block = list(range(3_100_000, 3_100_040))
    sql.execute(f"""DO $$
    BEGIN
        INSERT INTO {name} (id, embedding, tag) VALUES (3099999, '{vec}', 'kept');
        BEGIN
            INSERT INTO {name} (id, embedding, tag) SELECT i, '{vec}', 'gone' FROM generate_series(3100000, 3100039) i;
            INSERT INTO {name} (id, embedding, tag) VALUES (3100000, '{vec}', 'dup');  -- refused: the block rolls back
        EXCEPTION WHEN unique_violation THEN
            INSERT INTO {name} (id, embedding, tag) VALUES (3100100, '{vec}', 'handler');
        END;
        INSERT INTO {name} (id, embedding, tag) VALUES (3100101, '{vec}', 'after');
    END $$""")
    kept = [3099999, 3100100, 3100101]
    try:
        assert shard_ids(sharded, block + kept) == expected(kept)
    finally:
        sql.execute(f"DELETE FROM {name} WHERE id = ANY(%s)", (kept,))


def test_updates_through_the_view_move_rows_that_change_shard(drift_sql: Any, sharded: dict[str, Any]):
    name = sharded["name"]
    ids = list(range(4_000_000, 4_000_120))
    moved = [i + 7_000_000 for i in ids]
    vec = lit(np.full(DIM, 4.0))
    with drift_sql.connect() as conn:
        conn.autocommit = True
        conn.execute(f"INSERT INTO {name} (id, embedding, tag) SELECT i, %s, 'u' FROM unnest(%s::bigint[]) i",
                     (vec, ids))  # fmt: skip
        updated = conn.execute(f"UPDATE {name} SET id = id + 7000000, tag = 'm' WHERE id = ANY(%s)", (ids,))
        assert updated.rowcount == 120
        assert shard_ids(sharded, ids + moved) == expected(moved)
        assert sorted(r[0] for r in conn.execute(f"SELECT id FROM {name} WHERE tag = 'm'").fetchall()) == moved
        # in one transaction: insert, move, update in place and delete rows not committed yet
        conn.autocommit = False
        fresh = list(range(4_100_000, 4_100_060))
        conn.execute(f"INSERT INTO {name} (id, embedding, tag) SELECT i, %s, 'f' FROM unnest(%s::bigint[]) i",
                     (vec, fresh))  # fmt: skip
        conn.execute(f"UPDATE {name} SET id = id + 1000, tag = 'f2' WHERE id = ANY(%s)", (fresh[:30],))
        conn.execute(f"UPDATE {name} SET tag = 'f3' WHERE id = ANY(%s)", (fresh[30:],))
        conn.execute(f"DELETE FROM {name} WHERE id = ANY(%s)", (moved[:20],))
        conn.commit()
        final = [i + 1000 for i in fresh[:30]] + fresh[30:] + moved[20:]
        assert shard_ids(sharded, ids + moved + fresh + final) == expected(final)
        tags = dict(conn.execute(f"SELECT id, tag FROM {name} WHERE id = ANY(%s)", (final,)).fetchall())
        assert tags == {**{i + 1000: "f2" for i in fresh[:30]}, **{i: "f3" for i in fresh[30:]},
                        **{i: "m" for i in moved[20:]}}  # fmt: skip
        conn.execute(f"DELETE FROM {name} WHERE id = ANY(%s)", (final,))
        conn.commit()
    assert shard_ids(sharded, final) == [set(), set(), set()]


def test_errors_through_the_view_keep_their_sqlstate(sql: Any, sharded: dict[str, Any]):
    name = sharded["name"]
    vec = lit(np.ones(DIM))
    with pytest.raises(psycopg.errors.NotNullViolation, match='column "id"'):
        sql.execute(f"INSERT INTO {name} (id, embedding) VALUES (NULL, %s)", (vec,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="dimensions"):
        sql.execute(f"INSERT INTO {name} (id, embedding) VALUES (5000000, '{{1,2}}')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="multi-dimensional"):
        sql.execute(f"INSERT INTO {name} (id, embedding) VALUES (5000000, '{{{{1,2}},{{3,4}}}}')")
    with pytest.raises(psycopg.errors.UniqueViolation):  # twice in one statement: refused at once
        sql.execute(f"INSERT INTO {name} (id, embedding) VALUES (5000001, %s), (5000001, %s)", (vec, vec))
    assert shard_ids(sharded, [5000000, 5000001]) == [set(), set(), set()]


def test_20k_rows_through_the_view_equal_the_same_loaded_directly(sql: Any, sharded: dict[str, Any]):
    from tests.pg.stack import copy_text, stage

    name = sharded["name"]
    n, base = 20_000, 6_000_000
    rng = np.random.default_rng(20)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    tags = [f"t{i % 7}" for i in range(n)]
    ids = list(range(base, base + n))
    direct = f"{name}_direct"
    stage(sql, f"{name}_batch", vecs[: n // 2], tags[: n // 2])
    sql.execute(f"CREATE FOREIGN TABLE {direct} (id bigint, embedding real[], tag text) SERVER shard_a "
                f"OPTIONS (collection '{direct}', dim '{DIM}', create 'true')")  # fmt: skip
    try:
        for table in (name, direct):  # half by INSERT ... SELECT, half by COPY, one transaction each
            with sql.transaction():
                sql.execute(f"INSERT INTO {table} (id, embedding, tag) SELECT id + {base}, embedding, tag "
                            f"FROM {name}_batch")  # fmt: skip
                with sql.cursor() as cur, cur.copy(f"COPY {table} (id, embedding, tag) FROM STDIN") as cp:
                    cp.write(copy_text(vecs[n // 2 :], tags[n // 2 :], start=base + n // 2))
        held = shard_ids(sharded, ids)
        assert held == expected(ids) and sum(map(len, held)) == n
        with sharded["engines"]["shard_a"].client() as c:
            want = c.collection(direct).get(ids)
            assert sorted(want.ids.tolist()) == ids
        got: dict[int, tuple[Any, Any]] = {}
        for eng in sharded["engines"].values():
            kw = {"token": eng.token} if isinstance(eng, TcpEngine) else {}
            with eng.client(**kw) as c:
                col = c.collection(name)
                for s in range(0, n, 2000):
                    part = col.get(ids[s : s + 2000])
                    got.update(zip(part.ids.tolist(), zip(part.vectors, part.payloads, strict=True), strict=True))
        assert sorted(got) == ids
        for i, ident in enumerate(want.ids.tolist()):
            np.testing.assert_array_equal(got[ident][0], want.vectors[i])
            assert got[ident][1] == want.payloads[i] == {"tag": tags[ident - base]}
    finally:
        sql.execute(f"DELETE FROM {name} WHERE id >= {base} AND id < {base + n}")
        sql.execute(f"SELECT drift.drop_collection('{direct}'::regclass)")
        sql.execute(f"DROP FOREIGN TABLE {direct}")
        sql.execute(f"DROP TABLE {name}_batch")
    assert sum(map(len, shard_ids(sharded, ids))) == 0
