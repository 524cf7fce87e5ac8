"""SQL-path benchmark: kNN through the foreign table and ``drift.search``, beside pgvector's HNSW and IVFFlat.

``python -m bench.sql [--dataset glove-6b-50d] [--queries 1000] [--rows N] [--clients 8] [--quick] [--out DIR]``

One private PostgreSQL cluster (over TCP) and one drift engine server (``tests/pg/stack.py``), the dataset
loaded through SQL (the foreign table's ``embedding`` column is ``vector(n)`` where pgvector is installed,
``--fdw-columns real[]`` measures the array form; ``drift-fdw`` has a ``text`` query column, as the README
recommends, and ``drift-fdw-vector`` / ``-array`` the same collection through a typed query column), then
(every system in the same run; see ``bench/sql_systems.py`` for how each is timed):

1. **Writes** — ``INSERT INTO <foreign table> SELECT ... FROM staging`` (multi-row INSERT: ``bulk_insert``,
   50,000 rows per transaction) and ``COPY <foreign table> FROM STDIN`` (through ``drift.enable_copy``) on a
   50,000-row subset, in rows/s including the commit (when the engine applies them); ``drift.train`` time;
   then pending maintenance is run and the background Maintainer paused (``maintain_duty`` 0) so nothing
   but the measured statements uses the CPU; pgvector: INSERT + ``CREATE INDEX ... USING hnsw (m = 16,
   ef_construction = 64)`` and ``USING ivfflat (lists = sqrt(n))`` build times (each index on its own copy
   of the table).
2. **Sweeps** — recall@10 (exact ground truth) and p50 / p99 of ``... ORDER BY distance LIMIT 10`` over
   ``nprobe`` for drift (FDW and ``drift.search(..., payloads => false)``), ``hnsw.ef_search`` and
   ``ivfflat.probes`` for pgvector; one client; plotted as ``sql_<dataset>.png`` (p50 against recall).
3. **Head to head at matched recall** — for each target (0.95, 0.99) each system's fastest sweep point with
   at least that recall, timed again with the systems interleaved in blocks of 50 queries, their order
   shuffled per block: p50, p99, and the p50 of each block's first statement (after another system's block).
4. **Concurrency** — at recall >= 0.95: 1 and ``--clients`` client processes per system, systems rotating in
   rounds: q/s, p50, p99.
5. **Filtered kNN** — ``tag`` has 100 values (1 % each): ``tag = 't7' ... LIMIT 10``: how many statements
   return exactly 10 rows, recall against brute force over the matching rows; pgvector HNSW with and without
   ``hnsw.iterative_scan``.
6. **After a retrain** (last, ``--after-train-seconds``, default 60) — the Maintainer back at its default duty,
   ``drift.train`` again, then the chosen points at recall >= 0.95 of every system interleaved (blocks of 10,
   shuffled) for that long
   while drift's background maintenance runs: p50 / p99 per system.

Without Multicorn the FDW column is skipped (``drift.search`` and the loader ``drift.upsert`` still run);
without pgvector its columns are skipped; each with a note. Writes ``bench/results/sql_<dataset>.json`` with
the machine's load average: run it alone.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, machine_info, write_json
from bench.sql_systems import K, System, after_train, at_recall, concurrent, head_to_head, plot, summary, sweep
from drift_engine.config import CollectionParams
from drift_engine.datasets import exact_top_k, recall_at_k

NPROBES = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
EF_SEARCHES = (10, 16, 20, 24, 32, 40, 64, 100, 160, 256, 400)
IVF_PROBES = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)
TARGETS = (0.95, 0.99)
DEFAULT_DUTY = CollectionParams().maintain_duty
N_TAGS = 100


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.sql", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="glove-6b-50d")
    ap.add_argument("--queries", type=int, default=1000, help="queries per sweep point (default %(default)s)")
    ap.add_argument("--rows", type=int, default=0, help="load only the first ROWS vectors (default: all)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default %(default)s)")
    ap.add_argument("--round-seconds", type=float, default=5.0, help="length of one concurrent round")
    ap.add_argument("--rounds", type=int, default=2, help="concurrent rounds per system and client count")
    ap.add_argument("--fdw-columns", choices=("auto", "vector", "real[]"), default="auto",
                    help="type of the foreign table's embedding and query columns; auto: vector(n) where pgvector "
                    "is installed (what the README recommends), else real[]")  # fmt: skip
    ap.add_argument("--after-train-seconds", type=float, default=60.0,
                    help="length of the phase right after a retrain, maintenance running (0: skip)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="smoke test: bigann-10k, 200 queries, fewer points")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    return ap.parse_args(argv)


def lit(v: np.ndarray, pgvector: bool = False) -> str:
    body = ",".join(f"{x:.9g}" for x in v.tolist())
    return f"[{body}]" if pgvector else f"{{{body}}}"


def vector_columns(stack: Any, choice: str) -> bool:
    """Whether the foreign table gets ``vector(n)`` columns (``--fdw-columns``)."""
    if choice == "auto":
        return bool(stack.pgvector)
    if choice == "vector" and not stack.pgvector:
        raise SystemExit("error: --fdw-columns vector needs pgvector (make setup builds it)")
    return choice == "vector"


def load(conn: Any, stack: Any, base: np.ndarray, tags: list[str], out: dict[str, Any], vec_cols: bool) -> None:
    from tests.pg.stack import copy_text, stage

    n, dim = base.shape
    t0 = time.perf_counter()
    stage(conn, "staging", base, tags)
    out["staging_copy_s"] = round(time.perf_counter() - t0, 2)
    server = "'drift'" if stack.multicorn else f"'{stack.address}'"
    conn.execute(f"SELECT drift.create_collection('items', {dim}, 'l2', {server})")
    t0 = time.perf_counter()
    if stack.multicorn:
        col_type = f"vector({dim})" if vec_cols else "real[]"
        conn.execute(  # query text: what the README recommends (the literal is echoed without a parse per row)
            f"CREATE FOREIGN TABLE items (id bigint, embedding {col_type}, query text, distance real, "
            "nprobe int, tag text) SERVER drift OPTIONS (collection 'items')"
        )
        conn.execute(  # the same collection with a typed query column, measured beside it
            f"CREATE FOREIGN TABLE items_typed (id bigint, embedding {col_type}, query {col_type}, distance real, "
            "nprobe int, tag text) SERVER drift OPTIONS (collection 'items')"
        )
        embedding = f"embedding::vector({dim})" if vec_cols else "embedding"
        for s in range(0, n, 50_000):
            conn.execute(
                f"INSERT INTO items (id, embedding, tag) SELECT id, {embedding}, tag FROM staging "
                f"WHERE id >= {s} AND id < {s + 50_000}"
            )
        out["fdw_insert_select_rows_per_s"] = round(n / (time.perf_counter() - t0))
    else:
        rows = "SELECT id, embedding, jsonb_build_object(''tag'', tag) AS payload FROM staging"
        conn.execute(f"SELECT drift.upsert('items', '{rows}', {server})")
        out["sql_upsert_rows_per_s"] = round(n / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    trained = conn.execute(f"SELECT drift.train('items', {server})").fetchone()[0]
    out["drift_train_s"] = round(time.perf_counter() - t0, 2)
    out["drift_buckets"] = trained.get("buckets")
    # Settle, then hold the index still: pending maintenance is run now, and the background Maintainer is
    # paused while the systems are measured (it yields to drift's own searches, not to pgvector's, so left
    # running it would slow pgvector's statements on these 2 cores and favour drift).
    t0 = time.perf_counter()
    settled = conn.execute(f"SELECT drift.maintain('items', {server})").fetchone()[0]
    conn.execute(f"""SELECT drift.set_params('items', {server}, params => '{{"maintain_duty": 0}}')""")
    out["drift_maintain_s"] = round(time.perf_counter() - t0, 2)
    out["drift_maintain_jobs"] = settled.get("jobs") if isinstance(settled, dict) else settled
    if stack.multicorn:
        m = min(n, 50_000)
        conn.execute(f"SELECT drift.create_collection('copied', {dim}, 'l2', {server})")
        conn.execute(
            "CREATE FOREIGN TABLE copied (id bigint, embedding real[], tag text) SERVER drift "
            "OPTIONS (collection 'copied')"
        )
        conn.execute("SELECT drift.enable_copy('copied')")
        data = copy_text(base[:m], tags[:m])
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY copied (id, embedding, tag) FROM STDIN") as cp:
            cp.write(data)
        out["fdw_copy_rows_per_s"] = round(m / (time.perf_counter() - t0))
        assert conn.execute("SELECT count(*) FROM drift.collections('drift') WHERE count = %s", (m,)).fetchone()[0]
    if stack.pgvector:
        t0 = time.perf_counter()
        conn.execute(f"CREATE TABLE pv (id bigint PRIMARY KEY, embedding vector({dim}), tag text)")
        conn.execute(f"INSERT INTO pv SELECT id, embedding::vector({dim}), tag FROM staging")
        out["pgvector_insert_s"] = round(time.perf_counter() - t0, 2)
        conn.execute("SET maintenance_work_mem = '1GB'")
        t0 = time.perf_counter()
        conn.execute("CREATE INDEX ON pv USING hnsw (embedding vector_l2_ops) WITH (m = 16, ef_construction = 64)")
        out["pgvector_hnsw_build_s"] = round(time.perf_counter() - t0, 2)
        lists = max(1, round(math.sqrt(n)))
        conn.execute(f"CREATE TABLE pv_ivf (id bigint PRIMARY KEY, embedding vector({dim}), tag text)")
        conn.execute("INSERT INTO pv_ivf SELECT * FROM pv")
        t0 = time.perf_counter()
        conn.execute(f"CREATE INDEX ON pv_ivf USING ivfflat (embedding vector_l2_ops) WITH (lists = {lists})")
        out["pgvector_ivfflat_build_s"] = round(time.perf_counter() - t0, 2)
        out["pgvector_ivfflat_lists"] = lists
        conn.execute("RESET maintenance_work_mem")
        conn.execute("ANALYZE pv")
        conn.execute("ANALYZE pv_ivf")


def systems(stack: Any, queries: np.ndarray, quick: bool, vec_cols: bool) -> dict[str, System]:
    def values(v: tuple[int, ...]) -> tuple[int, ...]:
        return v[::2] if quick else v

    arr = [lit(q) for q in queries]
    out = {}
    if stack.multicorn:
        fdw_lits = [lit(q, pgvector=True) for q in queries] if vec_cols else arr
        sql = "SELECT id FROM items WHERE query = %s AND nprobe = {v} ORDER BY distance LIMIT 10"
        out["drift-fdw"] = System("drift-fdw", sql, fdw_lits, "nprobe", values(NPROBES))
        typed = "drift-fdw-vector" if vec_cols else "drift-fdw-array"
        sql = "SELECT id FROM items_typed WHERE query = %s AND nprobe = {v} ORDER BY distance LIMIT 10"
        out[typed] = System(typed, sql, fdw_lits, "nprobe", values(NPROBES))
    server = "'drift'" if stack.multicorn else f"'{stack.address}'"
    sql = f"SELECT id FROM drift.search('items', %s, 10, {server}, nprobe => {{v}}, payloads => false)"
    out["drift.search"] = System("drift.search", sql, arr, "nprobe", values(NPROBES))
    if stack.pgvector:
        vec = [lit(q, pgvector=True) for q in queries]
        sql = "SELECT id FROM pv ORDER BY embedding <-> %s::vector LIMIT 10"
        out["pgvector-hnsw"] = System("pgvector-hnsw", sql, vec, "hnsw.ef_search", values(EF_SEARCHES))
        sql = "SELECT id FROM pv_ivf ORDER BY embedding <-> %s::vector LIMIT 10"
        out["pgvector-ivfflat"] = System("pgvector-ivfflat", sql, vec, "ivfflat.probes", values(IVF_PROBES))
    return out


def filtered(
    conn: Any, stack: Any, base: np.ndarray, queries: np.ndarray, server: str, vec_cols: bool
) -> dict[str, Any]:
    m = min(len(queries), 200)
    qs = queries[:m]
    exact = exact_top_k(base, qs, K, rows=np.arange(7, len(base), N_TAGS))
    stmts = {}
    if stack.multicorn:
        stmts["fdw"] = ("SELECT id FROM items WHERE query = %s AND tag = 't7' ORDER BY distance LIMIT 10", vec_cols, "")
    stmts["drift.search"] = (
        f"SELECT id FROM drift.search('items', %s, 10, {server}, filter => '{{\"tag\": \"t7\"}}', payloads => false)",
        False,
        "",
    )
    if stack.pgvector:
        pv = "SELECT id FROM pv WHERE tag = 't7' ORDER BY embedding <-> %s::vector LIMIT 10"
        stmts["pgvector-hnsw"] = (pv, True, "SET hnsw.iterative_scan = off")
        stmts["pgvector-hnsw iterative"] = (pv, True, "SET hnsw.iterative_scan = strict_order")
    out = {}
    for name, (sql, vec, setup) in stmts.items():
        if setup:
            conn.execute(setup)
        ids, lat = System(name, sql, [lit(q, vec) for q in qs], "", ()).run(conn, np.arange(m))
        full = int(((ids >= 0).sum(axis=1) == K).sum())
        out[name] = {"queries": m, "returned_limit_rows": full, "recall": round(recall_at_k(ids, exact, K), 4),
                     **summary(lat)}  # fmt: skip
        print(f"  filtered {name:<24} {full}/{m} filled LIMIT {K}, recall {out[name]['recall']:.4f}, "
              f"p50 {out[name]['p50_ms']:.3f} ms", flush=True)  # fmt: skip
    if stack.pgvector:
        conn.execute("RESET hnsw.iterative_scan")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from drift_engine.datasets import load_dataset
    from tests.pg.stack import Stack, StackError

    dataset = "bigann-10k" if args.quick else args.dataset
    nq_default = 200 if args.quick else args.queries
    ds = load_dataset(dataset)
    n = ds.n if args.rows <= 0 else min(args.rows, ds.n)
    base = np.ascontiguousarray(ds.base[:n])
    nq = min(nq_default, ds.nq)
    queries = ds.queries[:nq]
    gt = ds.gt[:nq, :K] if n == ds.n else exact_top_k(base, queries, K)
    tags = [f"t{i % N_TAGS}" for i in range(n)]
    result: dict[str, Any] = {"benchmark": "sql", "dataset": dataset, "rows": n, "queries": nq, "k": K,
                              "machine": machine_info(), "notes": []}  # fmt: skip
    try:
        stack = Stack(tcp=True).start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        result["multicorn"], result["pgvector"] = stack.multicorn, stack.pgvector
        if not stack.multicorn:
            result["notes"].append("multicorn is not installed: no FDW column (drift.search and drift.upsert only)")
        if not stack.pgvector:
            result["notes"].append("pgvector is not installed: no pgvector column")
        for note in result["notes"]:
            print(f"note: {note}")
        server = "'drift'" if stack.multicorn else f"'{stack.address}'"
        with stack.connect() as conn:
            print(f"loading {n:,} x {ds.dim} ({dataset}) through SQL ...", flush=True)
            vec_cols = vector_columns(stack, args.fdw_columns)
            result["fdw_columns"] = "vector(n)" if vec_cols else "real[]"
            load(conn, stack, base, tags, result.setdefault("load", {}), vec_cols)
            print("  " + ", ".join(f"{k} {v}" for k, v in result["load"].items()), flush=True)
            syss = systems(stack, queries, args.quick, vec_cols)
            result["sweeps"] = {name: sweep(conn, sysm, gt, server) for name, sysm in syss.items()}
            result["knobs"] = {name: sysm.knob for name, sysm in syss.items()}
            result["at_recall"] = {}
            for target in TARGETS:
                chosen = at_recall(result["sweeps"], target)
                for name, stats in head_to_head(conn, syss, chosen, nq, server).items():
                    chosen[name].update(stats)
                result["at_recall"][str(target)] = chosen
            chosen = at_recall(result["sweeps"], TARGETS[0])
            dsn = {"host": "127.0.0.1", "port": stack.cluster.port, "user": "postgres", "dbname": "postgres"}
            result["concurrent"] = {}
            for clients in sorted({1, args.clients}):
                print(f"concurrent: {clients} client(s) per system ...", flush=True)
                result["concurrent"][str(clients)] = concurrent(
                    dsn, conn, syss, chosen, server, clients=clients, rounds=args.rounds, round_s=args.round_seconds
                )
            result["filtered"] = filtered(conn, stack, base, queries, server, vec_cols)
            if args.after_train_seconds > 0:  # last: it changes the index the phases above measured
                print(f"after a retrain: {args.after_train_seconds:.0f} s, maintenance running ...", flush=True)
                duty = f"""'{{"maintain_duty": {DEFAULT_DUTY}}}'"""
                retrain = (
                    f"SELECT drift.set_params('items', {server}, params => {duty}), drift.train('items', {server})"
                )
                result["after_train"] = after_train(
                    conn, syss, chosen, server, retrain=retrain, seconds=args.after_train_seconds, nq=nq
                )
    finally:
        stack.stop()
    result["ratios"] = ratios(result)
    path = write_json(f"sql_{dataset}", result, args.out)
    plot(result, args.out / f"sql_{dataset}.png")
    print_table(result)
    print(f"\nwrote {path.name} in {args.out.name}/")
    return 0


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """drift over pgvector HNSW at each matched recall (p50, p99) and for concurrent q/s."""
    out: dict[str, Any] = {}
    for target, rows in result["at_recall"].items():
        if "pgvector-hnsw" not in rows:
            continue
        ref = rows["pgvector-hnsw"]
        for name in ("drift-fdw", "drift-fdw-vector", "drift-fdw-array", "drift.search"):
            if name in rows:
                out[f"{name}_p50_over_hnsw_at_{target}"] = round(rows[name]["p50_ms"] / ref["p50_ms"], 3)
                out[f"{name}_p99_over_hnsw_at_{target}"] = round(rows[name]["p99_ms"] / ref["p99_ms"], 3)
    after = result.get("after_train", {})
    if "pgvector-hnsw" in after and "drift-fdw" in after:
        out["drift-fdw_p99_over_hnsw_after_train"] = round(
            after["drift-fdw"]["p99_ms"] / after["pgvector-hnsw"]["p99_ms"], 3
        )
    for clients, rows in result.get("concurrent", {}).items():
        if "pgvector-hnsw" in rows and "drift-fdw" in rows:
            out[f"drift-fdw_qps_over_hnsw_{clients}_clients"] = round(
                rows["drift-fdw"]["qps"] / rows["pgvector-hnsw"]["qps"], 3
            )
    return out


def print_table(result: dict[str, Any]) -> None:
    print(f"\nSQL kNN, {result['dataset']} ({result['rows']:,} rows), LIMIT {K}, over TCP, "
          f"foreign table columns {result.get('fdw_columns')}, "
          f"load average {result['machine']['load_average_1_5_15']}:")  # fmt: skip
    for target, rows in result["at_recall"].items():
        print(f"  at recall >= {target} (1 client, systems interleaved):")
        print(f"    {'system':<18} {'knob':<22} {'recall':>7} {'p50 ms':>8} {'p99 ms':>8} {'1st of block p50':>17}")
        for name, row in rows.items():
            knob = f"{result['knobs'][name]}={row['value']}"
            print(f"    {name:<18} {knob:<22} {row['recall']:>7.4f} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
                  f"{row.get('first_p50_ms', float('nan')):>17.3f}")  # fmt: skip
    for clients, rows in result.get("concurrent", {}).items():
        print(f"  concurrent, {clients} client(s), at recall >= {TARGETS[0]}:")
        for name, row in rows.items():
            print(f"    {name:<18} {row['qps']:>9.1f} q/s  p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms")
    for key, value in result["ratios"].items():
        print(f"  {key} = {value}")
    after = result.get("after_train")
    if after:
        print(f"  the first {after['seconds']:.0f} s after a retrain ({after['retrain_s']} s), maintenance running:")
        for name, row in after.items():
            if isinstance(row, dict):
                print(f"    {name:<18} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  ({row['n']} statements)")
    print("filtered kNN (tag = 't7': 1 % of rows):")
    for name, row in result["filtered"].items():
        print(f"  {name:<24} filled LIMIT in {row['returned_limit_rows']}/{row['queries']}, "
              f"recall {row['recall']:.4f}, p50 {row['p50_ms']:.3f} ms")  # fmt: skip
    print("writes: " + ", ".join(f"{k} {v}" for k, v in result["load"].items()))
    for note in result["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    sys.exit(main())
