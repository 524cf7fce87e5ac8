"""Ingest benchmark (issue 3): sustained upserts through the embedded API with flushes running.

Measures, on one dataset (default glove-6b-50d):

* sustained ingest (vectors/s) of the base in batches of ``--batch`` (default 1,000; below ``bulk_min`` so
  every write goes WAL -> memtable -> Janitor flush), in ``sync`` and ``batch`` durability, with 1 and
  8 concurrent writer threads;
* search recall@10 and p50/p99 latency from a reader thread while the ingest runs;
* single-vector upsert latency (p50/p99) in ``sync`` mode, 1 and 8 writers (group commit).

Run: ``python -m bench.ingest [--dataset NAME] [--limit N] [--out bench/results]``. Writes
``ingest_<dataset>.json``. Numbers are wall-clock on a shared machine: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from drift_engine import Engine
from drift_engine.datasets import load_dataset


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


def ingest_run(base: np.ndarray, queries: np.ndarray, *, durability: str, writers: int, batch: int) -> dict:
    n, dim = base.shape
    with tempfile.TemporaryDirectory() as tmp, Engine.open(tmp, durability=durability) as eng:
        col = eng.create_collection("ingest", dim)
        next_start = [0]
        lock = threading.Lock()
        stop = threading.Event()
        latencies: list[float] = []
        found: list[np.ndarray] = []

        def writer() -> None:
            while True:
                with lock:
                    start = next_start[0]
                    next_start[0] += batch
                if start >= n:
                    return
                stop_at = min(n, start + batch)
                col.upsert(np.arange(start, stop_at), base[start:stop_at])

        def reader() -> None:
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                col.search(queries[i % len(queries)], k=10)
                latencies.append(time.perf_counter() - t0)
                i += 1

        rd = threading.Thread(target=reader)
        t0 = time.perf_counter()
        rd.start()
        threads = [threading.Thread(target=writer) for _ in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        stop.set()
        rd.join()
        col.flush()
        ids, _ = col.search_batch(queries, k=10)
        found.append(ids)
        lat = np.array(latencies) * 1e3
        return {
            "durability": durability,
            "writers": writers,
            "batch": batch,
            "vectors": n,
            "seconds": round(seconds, 2),
            "vectors_per_s": round(n / seconds),
            "searches_during_ingest": len(latencies),
            "search_p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
            "search_p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
            "stats": {k: v for k, v in col.stats().items() if isinstance(v, int | float | bool)},
            "_ids": ids,
        }


def single_upsert_latency(dim: int, *, writers: int, per_writer: int) -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, Engine.open(tmp, durability="sync") as eng:
        col = eng.create_collection("single", dim)
        lat: list[float] = []
        lat_lock = threading.Lock()

        def writer(w: int) -> None:
            vecs = rng.standard_normal((per_writer, dim)).astype(np.float32)
            mine = []
            for j in range(per_writer):
                t0 = time.perf_counter()
                col.upsert([w * per_writer + j], vecs[j : j + 1])
                mine.append(time.perf_counter() - t0)
            with lat_lock:
                lat.extend(mine)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        arr = np.array(lat) * 1e3
        return {
            "writers": writers,
            "upserts": len(lat),
            "upserts_per_s": round(len(lat) / seconds),
            "p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p99_ms": round(float(np.percentile(arr, 99)), 3),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="glove-6b-50d")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N base vectors (0 = all)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--single", type=int, default=400, help="single-vector upserts per writer")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    ds = load_dataset(args.dataset)
    base = ds.base[: args.limit] if args.limit else ds.base
    queries = ds.queries[: args.queries]
    # exact ground truth over the ingested prefix (the dataset's gt covers the whole base)
    truth = ds.gt[: args.queries, :10] if base.shape[0] == ds.base.shape[0] else None
    runs = []
    for durability in ("sync", "batch"):
        for writers in (1, 8):
            run = ingest_run(base, queries, durability=durability, writers=writers, batch=args.batch)
            ids = run.pop("_ids")
            run["recall_at_10_after"] = _recall(ids, truth) if truth is not None else None
            runs.append(run)
            print(
                f"{durability:5s} writers={writers}: {run['vectors_per_s']:>7} vec/s, search during ingest "
                f"p50 {run['search_p50_ms']} ms p99 {run['search_p99_ms']} ms, recall after {run['recall_at_10_after']}"
            )
    singles = [single_upsert_latency(base.shape[1], writers=w, per_writer=args.single) for w in (1, 8)]
    for s in singles:
        print(f"single-vector upsert, sync, {s['writers']} writer(s): {s['upserts_per_s']}/s p50 {s['p50_ms']} ms")
    ratio = singles[1]["upserts_per_s"] / max(1, singles[0]["upserts_per_s"])
    out = {
        "benchmark": "ingest",
        "dataset": args.dataset,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": runs,
        "single_vector": singles,
        "group_commit_8_over_1": round(ratio, 2),
        "targets": {
            "sync_batch1000_ge_10000_vps": runs[0]["vectors_per_s"] >= 10_000,
            "group_commit_ge_4x": ratio >= 4,
        },
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"ingest_{args.dataset}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"8 writers / 1 writer (single-vector, sync): {ratio:.2f}x -> {path}")


if __name__ == "__main__":
    main()
