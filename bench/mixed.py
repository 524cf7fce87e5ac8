"""Mixed SQL load: many clients at once, each mixing kNN, filtered kNN and single-row INSERTs.

``python -m bench.mixed [--dataset bigann-10k] [--clients 8] [--seconds 60] [--rows N] [--out DIR]``

One private PostgreSQL cluster and one drift engine server (``tests/pg/stack.py``); the dataset (a small
table) is loaded through the foreign table and trained. Then:

1. **Alone** — one client runs the mix for ``--seconds / 4`` seconds: the p50 of each statement kind and its
   statements/s, the reference the targets are measured against.
2. **Together** — ``--clients`` client processes (one connection each) run the same mix at once for
   ``--seconds``: p50 / p99 per kind, statements/s in all.

The mix, drawn per statement with a per-client seed: 60 % kNN (``WHERE query = ... ORDER BY distance LIMIT
10``), 20 % filtered kNN (``AND tag = 't<i>'``, one of 50 tags), 20 % single-row ``INSERT`` (autocommit, a
new id each). Query vectors cycle through the dataset's queries. The engine's RSS is recorded before and
after. Targets (issue: engine integrity): every kind's p99 together <= 10 x its p50 alone, and statements/s
together >= 4 x alone. The machine's busy CPU time (all processes: clients, backends, engine) is recorded per
phase, so each phase also reports its CPU cost per statement and the throughput the cores would allow at that
cost (``cpu_bound_ceiling``): a lone client that already keeps one of two cores busy can be outrun at most 2x.
Writes ``bench/results/mixed_<dataset>.json``; run it alone (load average recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, machine_info, write_json

K = 10
N_TAGS = 50
MIX = (("knn", 0.6), ("filtered", 0.2), ("insert", 0.2))
TABLE = "mixed_items"
ID_STRIDE = 10_000_000  # in phase p, client c inserts ids (p * 100 + c + 1) * ID_STRIDE + i: never an existing id


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.mixed", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="bigann-10k")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the concurrent phase")
    ap.add_argument("--rows", type=int, default=0, help="load only the first ROWS vectors (default: all)")
    ap.add_argument("--no-train", action="store_true", help="leave the collection untrained (as a new table is)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    return ap.parse_args(argv)


def _vector(v: np.ndarray, pgvector: bool) -> str:
    body = ",".join(f"{x:.9g}" for x in v.tolist())
    return f"[{body}]" if pgvector else "{" + body + "}"


def client_loop(
    dsn: dict[str, Any],
    client: int,
    phase: int,
    seconds: float,
    queries: np.ndarray,
    out: Any,
    start: Any,
    pgvector: bool,
) -> None:
    """Connect, wait at ``start`` (a barrier shared with the parent), run the mix for ``seconds``; put
    ``{kind: [latency s, ...]}`` (or an error) on ``out``."""
    import psycopg

    rng = np.random.default_rng(client)
    kinds = [k for k, _ in MIX]
    weights = np.array([w for _, w in MIX])
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    literals = [_vector(q, pgvector) for q in queries]
    try:
        with psycopg.connect(**dsn, autocommit=True) as conn:
            conn.execute(f"SELECT id FROM {TABLE} WHERE query = %s ORDER BY distance LIMIT 1", (literals[0],))
            start.wait(timeout=300)
            deadline = time.perf_counter() + seconds
            i = 0
            while time.perf_counter() < deadline:
                kind = kinds[rng.choice(len(kinds), p=weights)]
                q = literals[(client * 7919 + i) % len(literals)]
                t0 = time.perf_counter()
                if kind == "knn":
                    sql = f"SELECT id, distance FROM {TABLE} WHERE query = %s ORDER BY distance LIMIT {K}"
                    conn.execute(sql, (q,)).fetchall()
                elif kind == "filtered":
                    sql = f"SELECT id, distance FROM {TABLE} WHERE query = %s AND tag = %s ORDER BY distance LIMIT {K}"
                    conn.execute(sql, (q, f"t{i % N_TAGS}")).fetchall()
                else:
                    new_id = (phase * 100 + client + 1) * ID_STRIDE + i
                    conn.execute(
                        f"INSERT INTO {TABLE} (id, embedding, tag) VALUES (%s, %s, %s)", (new_id, q, f"t{i % N_TAGS}")
                    )
                lat[kind].append(time.perf_counter() - t0)
                i += 1
        out.put({"client": client, "latencies": lat})
    except Exception as exc:  # reported by the parent, which fails the run
        with contextlib.suppress(Exception):
            start.abort()
        out.put({"client": client, "error": f"{type(exc).__name__}: {exc}"})


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent on anything but idle and I/O wait, all cores together."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def run_clients(
    dsn: dict[str, Any], clients: int, phase: int, seconds: float, queries: np.ndarray, pgvector: bool
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(clients + 1)
    procs = [
        ctx.Process(target=client_loop, args=(dsn, c, phase, seconds, queries, out, start, pgvector))
        for c in range(clients)
    ]
    for p in procs:
        p.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client that failed to connect reports it below
        start.wait(timeout=300)
    t0, cpu0 = time.perf_counter(), busy_cpu_s()
    results = [out.get(timeout=seconds + 300) for _ in procs]
    wall, cpu = time.perf_counter() - t0, busy_cpu_s() - cpu0
    for p in procs:
        p.join(60)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    merged: dict[str, list[float]] = {k: [] for k, _ in MIX}
    for r in results:
        for kind, lats in r["latencies"].items():
            merged[kind] += lats
    total = sum(len(v) for v in merged.values())
    summary = {
        kind: {
            "n": len(v),
            "p50_ms": round(float(np.percentile(v, 50)) * 1e3, 3) if v else None,
            "p99_ms": round(float(np.percentile(v, 99)) * 1e3, 3) if v else None,
            "max_ms": round(float(np.max(v)) * 1e3, 3) if v else None,
        }
        for kind, v in merged.items()
    }
    cores = os.cpu_count() or 1
    cpu_ms = 1e3 * cpu / total if total else None
    return {"clients": clients, "seconds": seconds, "wall_s": round(wall, 2), "statements": total,
            "statements_per_s": round(total / seconds, 1), "kinds": summary,
            # every process of the machine: clients, PostgreSQL backends, the engine (run it alone)
            "cpu_busy_s": round(cpu, 2), "cpu_utilisation": round(cpu / (cores * wall), 3),
            "cpu_ms_per_statement": round(cpu_ms, 3) if cpu_ms else None,
            "cpu_bound_ceiling_per_s": round(1e3 * cores / cpu_ms, 1) if cpu_ms else None}  # fmt: skip


def engine_rss_mib(stack: Any) -> float:
    import psutil

    assert stack.engine is not None and stack.engine.proc is not None
    return round(psutil.Process(stack.engine.proc.pid).memory_info().rss / (1 << 20), 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from drift_engine.datasets import load_dataset
    from tests.pg.stack import Stack, stage

    ds = load_dataset(args.dataset)
    n = ds.n if args.rows <= 0 else min(args.rows, ds.n)
    base, tags = ds.base[:n], [f"t{i % N_TAGS}" for i in range(n)]
    result: dict[str, Any] = {"benchmark": "mixed", "dataset": ds.name, "rows": n, "dim": ds.dim,
                              "trained": not args.no_train, "mix": dict(MIX), "machine": machine_info()}  # fmt: skip
    with Stack() as stack:
        if not stack.multicorn:
            print("error: the mixed benchmark needs Multicorn (make setup builds it)", file=sys.stderr)
            return 1
        with stack.connect() as conn:
            stage(conn, "staging", base, tags)
            conn.execute(f"SELECT drift.create_collection('{TABLE}', {ds.dim}, 'l2', 'drift')")
            # embedding vector(n) where pgvector exists; query text (the README's table: no per-row re-parse)
            col_type = f"vector({ds.dim})" if stack.pgvector else "real[]"
            conn.execute(
                f"CREATE FOREIGN TABLE {TABLE} (id bigint, embedding {col_type}, query text, distance real, "
                f"tag text) SERVER drift OPTIONS (collection '{TABLE}')"
            )
            embedding = f"embedding::vector({ds.dim})" if stack.pgvector else "embedding"
            conn.execute(f"INSERT INTO {TABLE} (id, embedding, tag) SELECT id, {embedding}, tag FROM staging")
            if not args.no_train:
                conn.execute(f"SELECT drift.train('{TABLE}', 'drift')")
        dsn = {"host": stack.cluster.host, "port": stack.cluster.port, "user": "postgres", "dbname": "postgres"}
        result["engine_rss_mib_before"] = engine_rss_mib(stack)
        result["fdw_columns"] = {"embedding": "vector(n)" if stack.pgvector else "real[]", "query": "text"}
        result["alone"] = run_clients(dsn, 1, 0, args.seconds / 4, ds.queries, stack.pgvector)
        result["together"] = run_clients(dsn, args.clients, 1, args.seconds, ds.queries, stack.pgvector)
        result["engine_rss_mib_after"] = engine_rss_mib(stack)
    alone, together = result["alone"], result["together"]
    result["targets"] = {
        kind: {
            "p99_over_alone_p50": round(together["kinds"][kind]["p99_ms"] / alone["kinds"][kind]["p50_ms"], 2),
            "met": together["kinds"][kind]["p99_ms"] <= 10 * alone["kinds"][kind]["p50_ms"],
        }
        for kind, _ in MIX
    }
    ratio = together["statements_per_s"] / alone["statements_per_s"]
    result["targets"]["throughput"] = {
        "together_over_alone": round(ratio, 2),
        "met": ratio >= 4,
        # what the machine's cores allow at a lone client's CPU cost per statement
        "cpu_bound_ceiling_over_alone": round(alone["cpu_bound_ceiling_per_s"] / alone["statements_per_s"], 2)
        if alone["cpu_bound_ceiling_per_s"]
        else None,
    }
    path = write_json(f"mixed_{ds.name}", result, args.out)
    print_table(result)
    print(f"wrote {path}")
    return 0


def print_table(r: dict[str, Any]) -> None:
    print(f"mixed SQL load on {r['dataset']} ({r['rows']:,} rows), load average {r['machine']['load_average_1_5_15']}")
    print(f"  {'kind':<10} {'alone p50':>10} {'together p50':>13} {'p99':>9} {'p99/alone p50':>14}")
    for kind, _ in MIX:
        a, t = r["alone"]["kinds"][kind], r["together"]["kinds"][kind]
        print(f"  {kind:<10} {a['p50_ms']:>8.2f}ms {t['p50_ms']:>11.2f}ms {t['p99_ms']:>7.1f}ms "
              f"{r['targets'][kind]['p99_over_alone_p50']:>13.1f}x")  # fmt: skip
    print(f"  statements/s: alone {r['alone']['statements_per_s']}, {r['together']['clients']} clients "
          f"{r['together']['statements_per_s']} ({r['targets']['throughput']['together_over_alone']}x)")  # fmt: skip
    print(f"  CPU per statement: alone {r['alone']['cpu_ms_per_statement']} ms "
          f"(utilisation {r['alone']['cpu_utilisation']:.0%}), together {r['together']['cpu_ms_per_statement']} ms "
          f"(utilisation {r['together']['cpu_utilisation']:.0%}); the cores allow at most "
          f"{r['targets']['throughput']['cpu_bound_ceiling_over_alone']}x a lone client")  # fmt: skip
    print(f"  engine RSS {r['engine_rss_mib_before']} -> {r['engine_rss_mib_after']} MiB")


if __name__ == "__main__":
    sys.exit(main())
