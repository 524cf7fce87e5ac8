"""``python -m drift_engine.demo`` (``make demo``): drift end to end through SQL, on a real dataset.

Starts a private, throw-away PostgreSQL cluster and a drift engine server (``tests/pg/stack.py``; run from
the repository), loads a dataset (default ``glove-6b-50d``, built on first use; ``--rows`` for a prefix)
through SQL — COPY into a staging table, then ``INSERT INTO <foreign table> SELECT ...`` — trains it with
``drift.train``, and prints, as psql would: kNN, filtered kNN, a point lookup, ``EXPLAIN`` (what was pushed
down), a transaction with INSERT / UPDATE / DELETE that is rolled back (nothing of it stays) and the same one
committed. Then recall@10 against exact ground truth and the p50 / p99 of whole SQL statements, side by side
with pgvector's HNSW index over the same rows in the same cluster (rounds interleaved).

With Multicorn installed everything goes through the foreign table (``drift_fdw.DriftFDW``; ``vector(n)``
columns where pgvector is installed, else ``real[]``); without it the demo says why and uses the PL/Python
functions instead (``drift.upsert`` to load, ``drift.search`` to query). Payload: ``tag = 't<id % 100>'``
(so ``tag = 't7'`` keeps 1 % of the rows). Exit status 0 on success.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from drift_engine.datasets import exact_top_k, load_dataset, pad_ids, recall_at_k
from drift_engine.demo_sql import TABLE, Via, psql, short, step, timed, vector_literal

K = 10
N_TAGS = 100
NPROBE = 32
PGVECTOR_M, PGVECTOR_EF_CONSTRUCTION, PGVECTOR_EF_SEARCH = 16, 64, 40
INSERT_STEP = 50_000


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drift_engine.demo", description="drift through SQL, end to end.")
    p.add_argument("--dataset", default="glove-6b-50d", help="dataset name or folder (default: %(default)s)")
    p.add_argument("--rows", type=int, default=0, help="load only the first ROWS vectors (default: all)")
    p.add_argument("--queries", type=int, default=300, help="SQL queries to time (default: %(default)s)")
    p.add_argument("--no-pgvector", action="store_true", help="skip the pgvector HNSW comparison")
    return p.parse_args(argv)


def _load(conn: Any, via: Via, n: int, dim: int) -> None:
    conn.execute(f"SELECT drift.create_collection('{TABLE}', {dim}, 'l2', {via.server})")
    t0 = time.perf_counter()
    if via.fdw:
        conn.execute(via.create_table(dim))
        print(f"  {short(via.create_table(dim))}")
        for s in range(0, n, INSERT_STEP):
            conn.execute(via.insert_select(s, s + INSERT_STEP))
            if sys.stdout.isatty():
                print(f"\r  inserted {min(n, s + INSERT_STEP):>10,} / {n:,}", end="", flush=True)
        if sys.stdout.isatty():
            print("\r" + " " * 40 + "\r", end="")
        label = f"INSERT INTO {TABLE} SELECT ... (FDW)"
    else:
        rows_sql = "SELECT id, embedding, jsonb_build_object(''tag'', tag) AS payload FROM staging"
        conn.execute(f"SELECT drift.upsert('{TABLE}', '{rows_sql}', {via.server})")
        label = "SELECT drift.upsert(...)"
    secs = time.perf_counter() - t0
    step(label, secs, f"{n / secs:,.0f} rows/s, applied at each COMMIT")


def _access_path(stack: Any) -> Via:
    via = Via(stack.multicorn, stack.address, pgvector=stack.pgvector)
    if via.fdw:
        cols = "vector(n)" if via.vector_columns else "real[] (pgvector is not installed)"
        print(f"\nMulticorn is installed: every query below goes through the foreign table '{TABLE}' "
              f"(drift_fdw.DriftFDW), with {cols} columns.\n")  # fmt: skip
    else:
        print("\nMulticorn is NOT installed in this PostgreSQL, so there is no foreign table: the demo uses the "
              "drift.* PL/Python functions instead (drift.upsert to load, drift.search to query). "
              "`make setup` as root builds Multicorn2 from the pinned tarball (scripts/extensions.sh).\n")  # fmt: skip
    return via


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        from tests.pg.stack import Stack, StackError, stage
    except ImportError:
        print("error: run the demo from the repository (it uses tests/pg to start its servers)", file=sys.stderr)
        return 2

    print("drift demo: a private PostgreSQL + the drift engine, through SQL\n")
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset)
    n = ds.n if args.rows <= 0 else min(args.rows, ds.n)
    base = ds.base[:n]
    tags = [f"t{i % N_TAGS}" for i in range(n)]
    print(f"dataset {ds.name}: {n:,} of {ds.n:,} x {ds.dim} float32, {ds.nq:,} queries")
    step("load dataset", time.perf_counter() - t0)
    t0 = time.perf_counter()
    try:
        stack = Stack().start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        step("start PostgreSQL + drift engine server", time.perf_counter() - t0, stack.address)
        via = _access_path(stack)
        with stack.connect() as conn:
            t0 = time.perf_counter()
            stage(conn, "staging", base, tags)
            step("COPY into a staging table", time.perf_counter() - t0)
            _load(conn, via, n, ds.dim)
            t0 = time.perf_counter()
            trained = conn.execute(f"SELECT drift.train('{TABLE}', {via.server})").fetchone()[0]
            step(f"SELECT drift.train('{TABLE}')", time.perf_counter() - t0, f"{trained.get('buckets')} buckets")
            conn.execute(f"SELECT drift.set_params('{TABLE}', {via.server}, nprobe => {NPROBE})")
            print(f"  SELECT drift.set_params('{TABLE}', nprobe => {NPROBE})")
            pgv = None
            if stack.pgvector and not args.no_pgvector:
                pgv = _pgvector_index(conn, ds.dim)
            _show(conn, via, ds, base, n)
            _measure(conn, via, ds, base, n, args.queries, pgv)
            if via.fdw:
                _transactions(conn, via, ds)
            elif not stack.pgvector:
                print("\npgvector is not installed here: no comparison (`make setup` as root builds it).")
    finally:
        stack.stop()
    return 0


def _show(conn: Any, via: Via, ds: Any, base: np.ndarray, n: int) -> None:
    q = ds.queries[0]
    rows = psql(conn, via.knn(q, 5))
    print(f"exact top-5 ids: {exact_top_k(base, q[None], 5)[0].tolist()}  (found: {[r[0] for r in rows]})")
    psql(conn, via.knn(q, 5, tag="t7"))
    print("(tag = 't7' keeps 1 % of the rows; the engine widens its search until LIMIT is filled)")
    psql(conn, via.lookup([0, n // 2, n - 1, -1]))
    if via.fdw:
        sql = "EXPLAIN " + via.knn(q, 5, tag="t7")
        plan = conn.execute(sql).fetchall()
        print(f"\npsql> {short(sql)};")
        print("\n".join("  " + short(r[0]) for r in plan))


def _pgvector_index(conn: Any, dim: int) -> str:
    """The same rows in a plain table with a pgvector HNSW index; returns the table's name."""
    t0 = time.perf_counter()
    conn.execute(f"CREATE TABLE pgv_items (id bigint PRIMARY KEY, embedding vector({dim}))")
    conn.execute("INSERT INTO pgv_items SELECT id, embedding::vector FROM staging")
    conn.execute("SET maintenance_work_mem = '2GB'")
    sql = (
        f"CREATE INDEX ON pgv_items USING hnsw (embedding vector_l2_ops) "
        f"WITH (m = {PGVECTOR_M}, ef_construction = {PGVECTOR_EF_CONSTRUCTION})"
    )
    conn.execute(sql)
    conn.execute(f"SET hnsw.ef_search = {PGVECTOR_EF_SEARCH}")
    step("pgvector: the same rows + " + sql.split(" WITH")[0].replace("CREATE INDEX ON ", "index on "),
         time.perf_counter() - t0, f"m {PGVECTOR_M}, ef_construction {PGVECTOR_EF_CONSTRUCTION}")  # fmt: skip
    return "pgv_items"


def _pgvector_knn(table: str, q: np.ndarray, k: int) -> str:
    lit = vector_literal(q)
    return f"SELECT id, embedding <-> '{lit}' AS distance FROM {table} ORDER BY embedding <-> '{lit}' LIMIT {k}"


def _interleaved(conn: Any, a: list[str], b: list[str]) -> tuple[list[list[int]], np.ndarray, list, np.ndarray]:
    """Both statement lists, one of each in turn (who goes first alternates), so both see the same machine."""
    ids_a, lat_a, ids_b, lat_b = [], [], [], []
    for i, (sa, sb) in enumerate(zip(a, b, strict=True)):
        order = ((sa, ids_a, lat_a), (sb, ids_b, lat_b))
        for s, ids, lat in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            rows = conn.execute(s).fetchall()
            lat.append(time.perf_counter() - t0)
            ids.append([r[0] for r in rows])
    return ids_a, np.array(lat_a), ids_b, np.array(lat_b)


def _measure(conn: Any, via: Via, ds: Any, base: np.ndarray, n: int, n_queries: int, pgv: str | None) -> None:
    nq = max(1, min(n_queries, ds.nq))
    queries = ds.queries[:nq]
    gt = ds.gt[:nq] if n == ds.n else exact_top_k(base, queries, K)
    drift_sql = [via.knn(q, K) for q in queries]
    path = "foreign table" if via.fdw else "drift.search"
    rows = []
    if pgv is None:
        ids, lat = timed(conn, drift_sql)
        rows.append((f"drift ({path}, nprobe {NPROBE})", ids, lat))
    else:
        pg_sql = [_pgvector_knn(pgv, q, K) for q in queries]
        timed(conn, drift_sql[:10] + pg_sql[:10])  # warm-up of both
        ids, lat, pids, plat = _interleaved(conn, drift_sql, pg_sql)
        rows.append((f"drift ({path}, nprobe {NPROBE})", ids, lat))
        rows.append((f"pgvector HNSW (ef_search {PGVECTOR_EF_SEARCH})", pids, plat))
    print(f"\n{nq} kNN queries (LIMIT {K}, one client, each a whole SQL statement, same cluster, same rows):")
    print(f"  {'system':<42} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for label, found, lat in rows:
        p50, p99 = np.percentile(lat, [50, 99]) * 1e3
        print(f"  {label:<42} {recall_at_k(pad_ids(found, K), gt, K):9.4f} {p50:8.3f} {p99:8.3f}")
    print("  (recall@10 against exact ground truth; a demo, not a benchmark: `python -m bench.sql` measures)")
    tagged = np.arange(7, n, N_TAGS)
    m = min(nq, 100)
    fids, flat = timed(conn, [via.knn(q, K, tag="t7") for q in queries[:m]])
    full = sum(len(r) == K for r in fids)
    exact = exact_top_k(base, queries[:m], K, rows=tagged)
    print(f"{m} filtered kNN queries (tag = 't7', 1 % of the rows, LIMIT {K}):")
    print(f"  {full} of {m} returned exactly {K} rows; recall@{K} {recall_at_k(pad_ids(fids, K), exact, K):.4f} "
          f"against brute force over the matching rows; p50 {np.median(flat) * 1e3:.3f} ms")  # fmt: skip


def _transactions(conn: Any, via: Via, ds: Any) -> None:
    """INSERT / UPDATE / DELETE in one transaction: rolled back (nothing stays), then committed."""
    new = via.literal(ds.queries[1])
    check = f"SELECT id, tag FROM {TABLE} WHERE id = ANY('{{-1,0,1}}') ORDER BY id"
    writes = [
        f"INSERT INTO {TABLE} (id, embedding, tag) VALUES (-1, '{new}', 'new')",
        f"UPDATE {TABLE} SET tag = 'changed' WHERE id = 0",
        f"DELETE FROM {TABLE} WHERE id = 1",
    ]
    print("\nWrites are buffered per transaction and applied at COMMIT; ROLLBACK leaves no trace:")
    for end in ("ROLLBACK", "COMMIT"):
        psql(conn, "BEGIN")
        for sql in writes:
            psql(conn, sql)
        psql(conn, end)
        rows = psql(conn, check)
        want = [(0, "t0"), (1, "t1")] if end == "ROLLBACK" else [(-1, "new"), (0, "changed")]
        verdict = "as expected" if [tuple(r) for r in rows] == want else f"UNEXPECTED, wanted {want}"
        print(f"(after {end}: {verdict})")


if __name__ == "__main__":
    sys.exit(main())
