"""``python -m drift_engine.demo`` (``make demo``): drift end to end through SQL, on a real dataset.

Starts a private, throw-away PostgreSQL cluster and a drift engine server (``tests/pg/stack.py``; run
from the repository), loads a dataset (default ``glove-6b-50d``, built on first use; ``--rows`` for a
prefix) through SQL — COPY into a staging table, then ``INSERT INTO <foreign table> SELECT ...`` — trains
it with ``drift.train``, and runs kNN, filtered kNN and point queries, printing each statement and its rows
as psql would, then recall@10 against exact ground truth and the latency of the SQL statements.

With Multicorn installed everything goes through the foreign table (``drift_fdw.DriftFDW``); without it the
demo says so and uses the PL/Python functions instead (``drift.upsert`` to load, ``drift.search`` to query).
Payload: ``tag = 't<id % 100>'`` (so ``tag = 't7'`` keeps 1 % of the rows). Exit status 0 on success.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from drift_engine.datasets import load_dataset, recall_at_k

K = 10
N_TAGS = 100
NPROBE = 32
TABLE = "items"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drift_engine.demo", description="drift through SQL, end to end.")
    p.add_argument("--dataset", default="glove-6b-50d", help="dataset name or folder (default: %(default)s)")
    p.add_argument("--rows", type=int, default=0, help="load only the first ROWS vectors (default: all)")
    p.add_argument("--queries", type=int, default=300, help="SQL queries to time (default: %(default)s)")
    return p.parse_args(argv)


def _lit(v: np.ndarray) -> str:
    return "{" + ",".join(f"{x:.9g}" for x in v.tolist()) + "}"


def _short(sql: str) -> str:
    """The statement with a long vector literal abbreviated, for printing."""
    start = sql.find("'{")
    end = sql.find("}'", start)
    if start < 0 or end - start < 60:
        return sql
    body = sql[start + 2 : end].split(",")
    return f"{sql[:start]}'{{{', '.join(body[:3])}, ... ({len(body)} values)}}'{sql[end + 2 :]}"


def _psql(conn: Any, sql: str) -> list[tuple]:
    """Run ``sql`` and print statement and rows the way psql does."""
    cur = conn.execute(sql)
    rows = cur.fetchall()
    names = [d.name for d in cur.description]
    cells = [[_cell(v) for v in r] for r in rows]
    right = [bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(names))]
    widths = [max(len(n), *(len(c[i]) for c in cells)) if cells else len(n) for i, n in enumerate(names)]
    print(f"\npsql> {_short(sql)};")
    print(" " + " | ".join(n.center(w) for n, w in zip(names, widths, strict=True)))
    print("-" + "-+-".join("-" * w for w in widths) + "-")
    for c in cells:
        print(" " + " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(c, widths, right, strict=True)))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return "{" + ",".join(f"{x:g}" for x in v) + "}"
    return str(v)


def _step(label: str, seconds: float, extra: str = "") -> None:
    print(f"  {label:<44} {seconds:7.2f} s  {extra}")


def _exact(base: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Exact L2 top-k ids (brute force, float64), over ``rows`` of ``base`` when given."""
    ids = np.arange(len(base)) if rows is None else rows
    sub = base[ids].astype(np.float64)
    out = np.empty((len(queries), k), dtype=np.int64)
    for i, q in enumerate(queries.astype(np.float64)):
        d = ((sub - q) ** 2).sum(axis=1)
        top = np.argpartition(d, k)[:k]
        out[i] = ids[top[np.argsort(d[top], kind="stable")]]
    return out


class _Via:
    """The SQL of one access path: the foreign table (Multicorn) or the drift.* functions."""

    def __init__(self, fdw: bool, address: str) -> None:
        self.fdw = fdw
        self.server = "'drift'" if fdw else f"'{address}'"

    def knn(self, q: str, k: int, tag: str | None = None) -> str:
        if self.fdw:
            where = f" AND tag = '{tag}'" if tag else ""
            return f"SELECT id, distance, tag FROM {TABLE} WHERE query = '{q}'{where} ORDER BY distance LIMIT {k}"
        flt = f', filter => \'{{"tag": "{tag}"}}\'' if tag else ""
        return (
            f"SELECT id, distance, payload->>'tag' AS tag FROM drift.search('{TABLE}', '{q}', {k}, {self.server}{flt})"
        )

    def lookup(self, ids: list[int]) -> str:
        arr = "{" + ",".join(map(str, ids)) + "}"
        if self.fdw:
            return f"SELECT id, tag, embedding[1:3] AS first_dims FROM {TABLE} WHERE id = ANY('{arr}') ORDER BY id"
        return (
            f"SELECT id, payload->>'tag' AS tag, embedding[1:3] AS first_dims "
            f"FROM drift.get('{TABLE}', '{arr}', {self.server})"
        )


def _load(conn: Any, via: _Via, n: int, dim: int) -> None:
    conn.execute(f"SELECT drift.create_collection('{TABLE}', {dim}, 'l2', {via.server})")
    t0 = time.perf_counter()
    if via.fdw:
        conn.execute(
            f"CREATE FOREIGN TABLE {TABLE} (id bigint, embedding real[], query real[], distance real, k int, "
            f"nprobe int, ef int, tag text) SERVER drift OPTIONS (collection '{TABLE}')"
        )
        step = 50_000
        for s in range(0, n, step):
            conn.execute(
                f"INSERT INTO {TABLE} (id, embedding, tag) SELECT id, embedding, tag FROM staging "
                f"WHERE id >= {s} AND id < {s + step}"
            )
            if sys.stdout.isatty():
                print(f"\r  inserted {min(n, s + step):>10,} / {n:,}", end="", flush=True)
        if sys.stdout.isatty():
            print("\r" + " " * 40 + "\r", end="")
        label = f"INSERT INTO {TABLE} SELECT ... (FDW)"
    else:
        rows_sql = "SELECT id, embedding, jsonb_build_object(''tag'', tag) AS payload FROM staging"
        conn.execute(f"SELECT drift.upsert('{TABLE}', '{rows_sql}', {via.server})")
        label = "SELECT drift.upsert(...)"
    secs = time.perf_counter() - t0
    _step(label, secs, f"{n / secs:,.0f} rows/s, applied at each COMMIT")


def _timed(conn: Any, sqls: list[str]) -> tuple[list[list[int]], np.ndarray]:
    for s in sqls[:10]:
        conn.execute(s).fetchall()  # warm-up (connections, caches)
    ids, lat = [], np.empty(len(sqls))
    for i, s in enumerate(sqls):
        t0 = time.perf_counter()
        rows = conn.execute(s).fetchall()
        lat[i] = time.perf_counter() - t0
        ids.append([r[0] for r in rows])
    return ids, lat


def _as_matrix(ids: list[list[int]], k: int) -> np.ndarray:
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for i, row in enumerate(ids):
        out[i, : min(k, len(row))] = row[:k]
    return out


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
    print(f"dataset {ds.name}: {n:,} of {ds.n:,} x {ds.dim} float32, {ds.nq:,} queries ({ds.path})")
    _step("load dataset", time.perf_counter() - t0)
    t0 = time.perf_counter()
    try:
        stack = Stack().start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        _step("start PostgreSQL + drift engine server", time.perf_counter() - t0, stack.address)
        via = _Via(stack.multicorn, stack.address)
        if via.fdw:
            print("\nMulticorn is installed: every query below goes through the foreign table "
                  f"'{TABLE}' (drift_fdw.DriftFDW).\n")  # fmt: skip
        else:
            print("\nMulticorn is NOT installed here: the demo uses the drift.* PL/Python functions instead "
                  "(drift.upsert to load, drift.search to query).\n")  # fmt: skip
        with stack.connect() as conn:
            t0 = time.perf_counter()
            stage(conn, "staging", base, tags)
            _step("COPY into a staging table", time.perf_counter() - t0)
            _load(conn, via, n, ds.dim)
            t0 = time.perf_counter()
            trained = conn.execute(f"SELECT drift.train('{TABLE}', {via.server})").fetchone()[0]
            _step(f"SELECT drift.train('{TABLE}')", time.perf_counter() - t0, f"{trained.get('buckets')} buckets")
            conn.execute(f"SELECT drift.set_params('{TABLE}', {via.server}, nprobe => {NPROBE})")
            print(f"  SELECT drift.set_params('{TABLE}', nprobe => {NPROBE})")
            _show(conn, via, ds, base, n)
            _measure(conn, via, ds, base, n, args.queries)
    finally:
        stack.stop()
    return 0


def _show(conn: Any, via: _Via, ds: Any, base: np.ndarray, n: int) -> None:
    q = ds.queries[0]
    rows = _psql(conn, via.knn(_lit(q), 5))
    print(f"exact top-5 ids: {_exact(base, q[None], 5)[0].tolist()}  (found: {[r[0] for r in rows]})")
    _psql(conn, via.knn(_lit(q), 5, tag="t7"))
    print("(tag = 't7' keeps 1 % of the rows; the engine widens its search until LIMIT is filled)")
    _psql(conn, via.lookup([0, n // 2, n - 1, -1]))
    if via.fdw:
        plan = conn.execute("EXPLAIN " + via.knn(_lit(q), 5, tag="t7")).fetchall()
        print(f"\npsql> EXPLAIN {_short(via.knn(_lit(q), 5, tag='t7'))};")
        print("\n".join("  " + _short(r[0]) for r in plan))


def _measure(conn: Any, via: _Via, ds: Any, base: np.ndarray, n: int, n_queries: int) -> None:
    nq = max(1, min(n_queries, ds.nq))
    queries = ds.queries[:nq]
    gt = ds.gt[:nq] if n == ds.n else _exact(base, queries, K)
    ids, lat = _timed(conn, [via.knn(_lit(q), K) for q in queries])
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    path = "foreign table" if via.fdw else "drift.search"
    print(f"\n{nq} kNN queries (LIMIT {K}, through the {path}, one client, each a whole SQL statement):")
    print(f"  recall@{K} {recall_at_k(_as_matrix(ids, K), gt, K):.4f} against exact ground truth")
    print(f"  latency p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    tagged = np.arange(7, n, N_TAGS)
    m = min(nq, 100)
    fids, flat = _timed(conn, [via.knn(_lit(q), K, tag="t7") for q in queries[:m]])
    full = sum(len(r) == K for r in fids)
    exact = _exact(base, queries[:m], K, rows=tagged)
    print(f"{m} filtered kNN queries (tag = 't7', 1 % of the rows, LIMIT {K}):")
    print(f"  {full} of {m} returned exactly {K} rows; recall@{K} {recall_at_k(_as_matrix(fids, K), exact, K):.4f} "
          f"against brute force over the matching rows; p50 {np.median(flat) * 1e3:.3f} ms")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
