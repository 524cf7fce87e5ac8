"""Sharded tables benchmark: one public name over 1, 2 and 4 engine servers, beside pgvector HNSW on one table.

``python -m bench.shards [--dataset glove-6b-50d] [--rows 100000] [--queries 300] [--shards 1,2,4] [--out DIR]``

One private PostgreSQL cluster and up to four drift engine servers on this machine (``tests/pg/stack.py``,
``tests/pg/engine.py``: each its own data directory and Unix socket), the first ``--rows`` vectors of the
dataset (0: all) staged in a regular table, then for each shard count N:

1. **Load** — ``drift.create_sharded_table('t<N>', ...)`` over N servers and ``INSERT INTO t<N> SELECT ...
   FROM staging`` through the public name (the view's routing trigger, one transaction, commit included):
   rows/s. For reference, the same rows into one plain drift foreign table directly (``direct``).
2. **Train** — ``drift.train('t<N>')`` (every shard), seconds.
3. **Sweep** — ``drift.set_params('t<N>', nprobe => v)`` for each v, then ``SELECT id FROM t<N> WHERE query
   = $1 ORDER BY distance LIMIT 10`` one client, one statement at a time: recall@10 against the exact top 10
   over the loaded rows, p50 / p99; for N > 1 also with the fan-out off (``fanout.ENABLED = False``: shard
   after shard) at the point chosen.
4. **At recall >= 0.95** — the fastest sweep point reaching it, per configuration.

pgvector (when installed): ``vector(d)`` table, HNSW (m 16, ef_construction 64), ``hnsw.ef_search`` sweep.
All servers share this machine's cores, so N shards here measure the overhead of sharding (routing,
Merge Append, fan-out), not a scale-out: on separate hosts each shard's search runs in parallel for real.
Writes ``bench/results/shards_<dataset>.json`` with the load average before and after: run it alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, machine_info, write_json
from drift_engine.datasets import exact_top_k, load_dataset, recall_at_k

K = 10
NPROBES = (2, 4, 8, 16, 32, 64)
EF_SEARCHES = (10, 16, 32, 64, 128)
TARGET = 0.95
FANOUT_SQL = """CREATE OR REPLACE FUNCTION bench_fanout(on_ boolean) RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import fanout
import json
fanout.ENABLED = on_
return json.dumps(fanout.STATS)
$$"""


def lit(v: np.ndarray, pgvector: bool = False) -> str:
    body = ",".join(f"{x:.9g}" for x in v.tolist())
    return f"[{body}]" if pgvector else "{" + body + "}"


def run(conn: Any, sql: str, params: list[str]) -> tuple[np.ndarray, np.ndarray]:
    found = np.full((len(params), K), -1, dtype=np.int64)
    lat = np.empty(len(params))
    for i, p in enumerate(params):
        t0 = time.perf_counter()
        rows = conn.execute(sql, (p,)).fetchall()
        lat[i] = time.perf_counter() - t0
        ids = [r[0] for r in rows][:K]
        found[i, : len(ids)] = ids
    return found, lat


def point(value: int, found: np.ndarray, lat: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    return {"value": value, "recall": round(recall_at_k(found, gt, K), 4), "p50_ms": round(float(p50), 3),
            "p99_ms": round(float(p99), 3)}  # fmt: skip


def sweep(conn: Any, sql: str, params: list[str], gt: np.ndarray, setter: str, values: tuple[int, ...],
          label: str) -> list[dict[str, Any]]:  # fmt: skip
    curve = []
    for v in values:
        conn.execute(setter.format(v=v))
        run(conn, sql, params[:20])  # warm-up: plans, caches, the fan-out's described siblings
        curve.append(point(v, *run(conn, sql, params), gt))
        c = curve[-1]
        print(f"  {label:<14} {v:<4} recall {c['recall']:.4f} p50 {c['p50_ms']:.3f} ms p99 {c['p99_ms']:.3f} ms",
              flush=True)  # fmt: skip
        if c["recall"] >= 0.995:
            break
    return curve


def best(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [c for c in curve if c["recall"] >= TARGET]
    return min(ok, key=lambda c: c["p50_ms"]) if ok else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="glove-6b-50d")
    ap.add_argument("--rows", type=int, default=100_000, help="load the first ROWS vectors (0: all)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.pg.engine import EngineServer
    from tests.pg.stack import Stack, stage

    counts = [int(x) for x in args.shards.split(",")]
    ds = load_dataset(args.dataset)
    base = ds.base[: args.rows] if args.rows else ds.base
    queries = ds.queries[: args.queries]
    n, dim = base.shape
    print(f"{args.dataset}: {n} rows x {dim}, {len(queries)} queries; exact top {K} ...", flush=True)
    gt = exact_top_k(base, queries, K)
    out: dict[str, Any] = {"dataset": args.dataset, "rows": n, "dim": dim, "queries": len(queries),
                           "load_before": os.getloadavg(), "machine": machine_info(), "configs": {}}  # fmt: skip
    params = [lit(q) for q in queries]
    stack = Stack().start()
    extra: list[Any] = []
    try:
        if not stack.multicorn:
            raise SystemExit("Multicorn is not installed: run `make setup`")
        engines = [stack.engine]
        for _ in range(max(counts) - 1):
            extra.append(EngineServer().start())
        engines += extra
        with stack.connect(autocommit=True) as conn:
            conn.execute(FANOUT_SQL)
            for i, e in enumerate(engines):
                conn.execute(f"CREATE SERVER s{i} FOREIGN DATA WRAPPER multicorn "
                             f"OPTIONS (wrapper 'drift_fdw.DriftFDW', address '{e.address}')")  # fmt: skip
            stage(conn, "staging", base, ["t"] * n)
            conn.execute(f"CREATE FOREIGN TABLE direct (id bigint, embedding real[], tag text) SERVER s0 "
                         f"OPTIONS (collection 'direct', dim '{dim}', create 'true')")  # fmt: skip
            t0 = time.perf_counter()
            conn.execute("INSERT INTO direct (id, embedding, tag) SELECT id, embedding, tag FROM staging")
            out["direct_load_rows_per_s"] = round(n / (time.perf_counter() - t0))
            print(f"direct load: {out['direct_load_rows_per_s']} rows/s", flush=True)
            conn.execute("SELECT drift.drop_collection('direct', 's0')")
            for count in counts:
                out["configs"][str(count)] = config(conn, count, dim, n, params, gt)
            if stack.pgvector:
                out["pgvector-hnsw"] = pgvector(conn, dim, queries, gt)
    finally:
        for e in extra:
            e.stop()
        stack.stop()
    out["load_after"] = os.getloadavg()
    path = write_json(f"shards_{args.dataset}", out, args.out)
    print(f"wrote {path}")
    return 0


def config(conn: Any, count: int, dim: int, n: int, params: list[str], gt: np.ndarray) -> dict[str, Any]:
    name = f"t{count}"
    servers = ", ".join(f"'s{i}'" for i in range(count))
    conn.execute(f"SELECT drift.create_sharded_table('{name}', {dim}, 'l2', servers => ARRAY[{servers}])")
    t0 = time.perf_counter()
    conn.execute(f"INSERT INTO {name} (id, embedding) SELECT id, embedding FROM staging")
    res: dict[str, Any] = {"load_rows_per_s": round(n / (time.perf_counter() - t0))}
    res["rows_per_shard"] = [conn.execute(f"SELECT count(*) FROM {name}_shard_{i}").fetchone()[0]
                             for i in range(count)]  # fmt: skip
    t0 = time.perf_counter()
    conn.execute(f"SELECT drift.train('{name}')")
    res["train_s"] = round(time.perf_counter() - t0, 2)
    print(f"{count} shard(s): load {res['load_rows_per_s']} rows/s, train {res['train_s']} s", flush=True)
    sql = f"SELECT id FROM {name} WHERE query = %s ORDER BY distance LIMIT {K}"
    setter = f"SELECT drift.set_params('{name}', nprobe => {{v}})"
    conn.execute("SELECT bench_fanout(true)")
    res["sweep"] = sweep(conn, sql, params, gt, setter, NPROBES, f"{count} shard(s)")
    res["at_recall_0.95"] = best(res["sweep"])
    chosen = res["at_recall_0.95"]
    if count > 1 and chosen is not None:
        before = conn.execute("SELECT bench_fanout(true)").fetchone()[0]
        conn.execute(setter.format(v=chosen["value"]))
        on = point(chosen["value"], *run(conn, sql, params), gt)
        after = conn.execute("SELECT bench_fanout(false)").fetchone()[0]
        run(conn, sql, params[:20])
        off = point(chosen["value"], *run(conn, sql, params), gt)
        conn.execute("SELECT bench_fanout(true)")
        res["fanout_on"], res["fanout_off"] = on, off
        res["prefetched_per_statement"] = round((after["taken"] - before["taken"]) / len(params), 3)
        print(f"  fan-out on p50 {on['p50_ms']} ms, off {off['p50_ms']} ms", flush=True)
    conn.execute(f"SELECT drift.drop_sharded_table('{name}')")
    return res


def pgvector(conn: Any, dim: int, queries: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    conn.execute(f"CREATE TABLE pv (id bigint PRIMARY KEY, embedding vector({dim}))")
    conn.execute(f"INSERT INTO pv SELECT id, embedding::vector({dim}) FROM staging")
    res["insert_s"] = round(time.perf_counter() - t0, 2)
    conn.execute("SET maintenance_work_mem = '1GB'")
    t0 = time.perf_counter()
    conn.execute("CREATE INDEX ON pv USING hnsw (embedding vector_l2_ops) WITH (m = 16, ef_construction = 64)")
    res["hnsw_build_s"] = round(time.perf_counter() - t0, 2)
    conn.execute("ANALYZE pv")
    sql = f"SELECT id FROM pv ORDER BY embedding <-> %s::vector LIMIT {K}"
    vecs = [lit(q, pgvector=True) for q in queries]
    res["sweep"] = sweep(conn, sql, vecs, gt, "SET hnsw.ef_search = {v}", EF_SEARCHES, "pgvector-hnsw")
    res["at_recall_0.95"] = best(res["sweep"])
    return res


if __name__ == "__main__":
    raise SystemExit(main())
