"""SQL-path benchmark: kNN through the foreign table and through ``drift.search``, beside pgvector's HNSW.

``python -m bench.sql [--dataset glove-6b-50d] [--queries 1000] [--rows N] [--quick] [--out DIR]``

One private PostgreSQL cluster (over TCP, one client) and one drift engine server (``tests/pg/stack.py``),
the dataset loaded through SQL, then:

1. **Writes** — ``INSERT INTO <foreign table> SELECT ... FROM staging`` (multi-row INSERT: ``bulk_insert``,
   50,000 rows per transaction) and ``COPY <foreign table> FROM STDIN`` (through ``drift.enable_copy``) on a
   50,000-row subset, in rows/s including the commit (when the engine applies them); ``drift.train`` time;
   pgvector: INSERT + ``CREATE INDEX ... USING hnsw (m = 16, ef_construction = 64)`` time.
2. **Sweeps** — recall@10 (exact ground truth) and latency of ``... ORDER BY distance LIMIT 10`` over
   ``nprobe`` for drift (the FDW and ``drift.search(..., payloads => false)`` share the engine, so one
   recall per point) and over ``hnsw.ef_search`` for pgvector.
3. **Head to head** — for each system its fastest sweep point with recall >= 0.95, timed again with the
   systems interleaved in blocks of 50 queries (a busy machine then slows all of them alike): p50, p99.
4. **Filtered kNN** — ``tag`` has 100 values (1 % each): queries with ``tag = 't7' ... LIMIT 10``: how many
   return exactly 10 rows, recall against brute force over the matching rows; pgvector with and without
   ``hnsw.iterative_scan``.

Without Multicorn the FDW column is skipped (``drift.search`` and the loader ``drift.upsert`` still run);
without pgvector its column is skipped; each with a note. Writes ``bench/results/sql_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, machine_info, write_json
from drift_engine.datasets import exact_top_k, recall_at_k

K = 10
NPROBES = (8, 12, 16, 24, 32, 48, 64)
EF_SEARCHES = (10, 16, 20, 24, 32, 40, 64, 100)
BLOCK = 50
TARGET = 0.95
N_TAGS = 100


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.sql", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="glove-6b-50d")
    ap.add_argument("--queries", type=int, default=1000, help="queries per sweep point (default %(default)s)")
    ap.add_argument("--rows", type=int, default=0, help="load only the first ROWS vectors (default: all)")
    ap.add_argument("--quick", action="store_true", help="smoke test: bigann-10k, 200 queries, fewer points")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    return ap.parse_args(argv)


def lit(v: np.ndarray, pgvector: bool = False) -> str:
    body = ",".join(f"{x:.9g}" for x in v.tolist())
    return f"[{body}]" if pgvector else f"{{{body}}}"


class System:
    """One SQL access path: its statement, its parameter literals, and how to set its knob."""

    def __init__(self, name: str, sql: str, params: list[str], knob: str) -> None:
        self.name, self.sql, self.params, self.knob = name, sql, params, knob

    def run(self, conn: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(idx), K), -1, dtype=np.int64)
        lat = np.empty(len(idx))
        for j, i in enumerate(idx.tolist()):
            t0 = time.perf_counter()
            rows = conn.execute(self.sql, (self.params[i],)).fetchall()
            lat[j] = time.perf_counter() - t0
            ids[j, : len(rows)] = [r[0] for r in rows[:K]]
        return ids, lat


def summary(lat: np.ndarray) -> dict[str, float]:
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    return {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4), "n": len(lat)}


def load(conn: Any, stack: Any, base: np.ndarray, tags: list[str], out: dict[str, Any]) -> None:
    from tests.pg.stack import copy_text, stage

    n, dim = base.shape
    t0 = time.perf_counter()
    stage(conn, "staging", base, tags)
    out["staging_copy_s"] = round(time.perf_counter() - t0, 2)
    server = "'drift'" if stack.multicorn else f"'{stack.address}'"
    conn.execute(f"SELECT drift.create_collection('items', {dim}, 'l2', {server})")
    t0 = time.perf_counter()
    if stack.multicorn:
        conn.execute(
            "CREATE FOREIGN TABLE items (id bigint, embedding real[], query real[], distance real, "
            "tag text) SERVER drift OPTIONS (collection 'items')"
        )
        for s in range(0, n, 50_000):
            conn.execute(
                "INSERT INTO items (id, embedding, tag) SELECT id, embedding, tag FROM staging "
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
        conn.execute("RESET maintenance_work_mem")
        conn.execute("ANALYZE pv")


def systems(stack: Any, queries: np.ndarray) -> dict[str, System]:
    arr = [lit(q) for q in queries]
    out = {}
    if stack.multicorn:
        out["fdw"] = System("fdw", "SELECT id FROM items WHERE query = %s ORDER BY distance LIMIT 10", arr, "nprobe")
    server = "'drift'" if stack.multicorn else f"'{stack.address}'"
    out["drift.search"] = System(
        "drift.search", f"SELECT id FROM drift.search('items', %s, 10, {server}, payloads => false)", arr, "nprobe"
    )
    if stack.pgvector:
        vec = [lit(q, pgvector=True) for q in queries]
        out["pgvector-hnsw"] = System(
            "pgvector-hnsw", "SELECT id FROM pv ORDER BY embedding <-> %s::vector LIMIT 10", vec, "ef_search"
        )
    return out


def set_knob(conn: Any, sysm: System, value: int, server: str) -> None:
    if sysm.knob == "nprobe":
        conn.execute(f"SELECT drift.set_params('items', {server}, nprobe => {int(value)})")
    else:
        conn.execute(f"SET hnsw.ef_search = {int(value)}")


def sweep(conn: Any, sysm: System, values: tuple[int, ...], gt: np.ndarray, server: str) -> list[dict[str, Any]]:
    idx = np.arange(len(gt))
    curve = []
    for value in values:
        set_knob(conn, sysm, value, server)
        sysm.run(conn, idx[: min(20, len(idx))])  # warm-up (plans, caches)
        ids, lat = sysm.run(conn, idx)
        curve.append({sysm.knob: value, "recall": round(recall_at_k(ids, gt, K), 4), **summary(lat)})
        print(f"  {sysm.name:<14} {sysm.knob}={value:<4} recall {curve[-1]['recall']:.4f}  "
              f"p50 {curve[-1]['p50_ms']:.3f} ms  p99 {curve[-1]['p99_ms']:.3f} ms", flush=True)  # fmt: skip
        if curve[-1]["recall"] >= 0.995:
            break
    return curve


def head_to_head(conn: Any, chosen: dict[str, tuple[System, int]], nq: int, server: str) -> dict[str, Any]:
    """Interleave the systems in blocks of BLOCK queries; each at its chosen knob value."""
    lat: dict[str, list[np.ndarray]] = {name: [] for name in chosen}
    order = np.random.default_rng(0).permutation(nq)
    for start in range(0, nq, BLOCK):
        block = order[start : start + BLOCK]
        for name, (sysm, value) in chosen.items():
            set_knob(conn, sysm, value, server)
            lat[name].append(sysm.run(conn, block)[1])
    return {name: summary(np.concatenate(parts)) for name, parts in lat.items()}


def filtered(conn: Any, stack: Any, base: np.ndarray, queries: np.ndarray, server: str) -> dict[str, Any]:
    m = min(len(queries), 200)
    qs = queries[:m]
    exact = exact_top_k(base, qs, K, rows=np.arange(7, len(base), N_TAGS))
    stmts = {}
    if stack.multicorn:
        stmts["fdw"] = ("SELECT id FROM items WHERE query = %s AND tag = 't7' ORDER BY distance LIMIT 10", False, "")
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
        ids, lat = System(name, sql, [lit(q, vec) for q in qs], "").run(conn, np.arange(m))
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
            load(conn, stack, base, tags, result.setdefault("load", {}))
            print("  " + ", ".join(f"{k} {v}" for k, v in result["load"].items()), flush=True)
            syss = systems(stack, queries)
            curves = {}
            knob_values = {"nprobe": NPROBES, "ef_search": EF_SEARCHES}
            for name, sysm in syss.items():
                values = knob_values[sysm.knob]
                curves[name] = sweep(conn, sysm, values[::2] if args.quick else values, gt, server)
            result["sweeps"] = curves
            chosen = {}
            for name, curve in curves.items():
                ok = [p for p in curve if p["recall"] >= TARGET]
                if ok:
                    best = min(ok, key=lambda p: p["p50_ms"])
                    chosen[name] = (syss[name], best[syss[name].knob])
            result["at_recall_0.95"] = {
                name: {"knob": syss[name].knob, "value": value,
                       "recall": next(p["recall"] for p in curves[name] if p[syss[name].knob] == value)}
                for name, (_, value) in chosen.items()
            }  # fmt: skip
            h2h = head_to_head(conn, chosen, nq, server)
            for name, stats in h2h.items():
                result["at_recall_0.95"][name].update(stats)
            result["filtered"] = filtered(conn, stack, base, queries, server)
    finally:
        stack.stop()
    at = result["at_recall_0.95"]
    if "fdw" in at and "pgvector-hnsw" in at:
        ratio = at["fdw"]["p50_ms"] / at["pgvector-hnsw"]["p50_ms"]
        result["fdw_p50_over_hnsw_p50"] = round(ratio, 3)
        result["target_fdw_p50_le_1.5x_hnsw"] = ratio <= 1.5
    path = write_json(f"sql_{dataset}", result, args.out)
    print_table(result)
    print(f"\nwrote {path.name} in {args.out.name}/")
    return 0


def print_table(result: dict[str, Any]) -> None:
    print(f"\nSQL kNN, {result['dataset']} ({result['rows']:,} rows), LIMIT {K}, 1 client over TCP, "
          f"head to head at recall >= {TARGET}:")  # fmt: skip
    print(f"  {'system':<16} {'knob':<14} {'recall':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in result["at_recall_0.95"].items():
        print(f"  {name:<16} {row['knob'] + '=' + str(row['value']):<14} {row['recall']:>7.4f} "
              f"{row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f}")  # fmt: skip
    if "fdw_p50_over_hnsw_p50" in result:
        print(f"  FDW p50 / HNSW p50 = {result['fdw_p50_over_hnsw_p50']:.2f} (target <= 1.5, stretch <= 1)")
    print("filtered kNN (tag = 't7': 1 % of rows):")
    for name, row in result["filtered"].items():
        print(f"  {name:<24} filled LIMIT in {row['returned_limit_rows']}/{row['queries']}, "
              f"recall {row['recall']:.4f}, p50 {row['p50_ms']:.3f} ms")  # fmt: skip
    print("writes: " + ", ".join(f"{k} {v}" for k, v in result["load"].items()))
    for note in result["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    sys.exit(main())
