"""``python -m drift_engine.demo``: the embedded engine end to end on a real dataset (``make demo``).

Loads a dataset (default ``glove-6b-50d``, built on first use; see ``drift_engine.datasets``), upserts
its base vectors (ids 0..n-1, payload ``{"tag": "t<i % 10>"}``) into a new collection in a temporary
data directory (or ``--data DIR``, where an existing ``demo`` collection is replaced), trains buckets,
then runs ``--queries`` single searches and one ``search_batch``, and prints: timings, the first queries'
top-5 next to the exact neighbours, recall@10 against the dataset's exact ground truth, p50/p99 latency
and queries per second, a filtered search checked against brute force, a point lookup and ``stats()``.
It writes nothing outside the data directory (and the dataset cache). Exit status 0 on success.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from drift_engine.datasets import Dataset, load_dataset, recall_at_k

BATCH = 50_000
K = 10
N_TAGS = 10


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m drift_engine.demo", description="Run the embedded engine on a real dataset."
    )
    p.add_argument("--dataset", default="glove-6b-50d", help="dataset name or folder (default: %(default)s)")
    p.add_argument("--data", type=Path, help="engine data directory (default: a temporary one, removed)")
    p.add_argument("--queries", type=int, default=1000, help="single searches to time (default: %(default)s)")
    return p.parse_args(argv)


@contextmanager
def _data_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="drift-demo-") as tmp:
        yield Path(tmp)


def _step(label: str, seconds: float, extra: str = "") -> None:
    print(f"  {label:<28} {seconds:8.2f} s  {extra}")


def _tag(i: int) -> str:
    return f"t{i % N_TAGS}"


def _load(col: Any, ds: Dataset) -> float:
    tty = sys.stdout.isatty()
    t0 = time.perf_counter()
    for start in range(0, ds.n, BATCH):
        stop = min(start + BATCH, ds.n)
        ids = np.arange(start, stop, dtype=np.int64)
        payloads = [{"tag": _tag(i)} for i in range(start, stop)]
        col.upsert(ids, ds.base[start:stop], payloads=payloads)
        if tty:
            print(f"\r  upserted {stop:>10,} / {ds.n:,}", end="", flush=True)
    if tty:
        print("\r" + " " * 40 + "\r", end="")
    return time.perf_counter() - t0


def _show_first(ids: np.ndarray, dists: np.ndarray, ds: Dataset, rows: int = 3, top: int = 5) -> None:
    print(f"\nfirst {rows} queries, top {top} (found vs exact):")
    print(f"  {'query':>5} {'rank':>4} {'id':>10} {'distance':>10}   {'exact id':>10} {'exact dist':>10}")
    for q in range(min(rows, len(ids))):
        for r in range(top):
            mark = "" if ids[q, r] in ds.gt[q, :top] else "  *"
            print(
                f"  {q:>5} {r + 1:>4} {ids[q, r]:>10} {dists[q, r]:>10.4f}   "
                f"{ds.gt[q, r]:>10} {ds.gt_dist[q, r]:>10.4f}{mark}"
            )
    print("  (* = not among the exact top 5)")


def _filtered_example(col: Any, ds: Dataset) -> None:
    q, tag = ds.queries[0], _tag(3)
    t0 = time.perf_counter()
    res = col.search(q, k=K, filter={"tag": tag})
    ms = (time.perf_counter() - t0) * 1e3
    rows = np.arange(3, ds.n, N_TAGS)  # exactly the ids whose tag is t3
    exact = rows[np.argsort(np.linalg.norm(ds.base[rows] - q, axis=1), kind="stable")[:K]]
    tags_ok = all(p is not None and p.get("tag") == tag for p in res.payloads)
    rec = recall_at_k(res.ids[None, :], exact[None, :], K)
    print(f"\nfiltered search  filter={{'tag': {tag!r}}} (10% of rows), k={K}: {ms:.2f} ms")
    print(f"  ids {res.ids[:5].tolist()} ... payloads all match: {tags_ok}, recall@{K} vs brute force {rec:.3f}")


def _lookup_example(col: Any, ds: Dataset) -> None:
    want = [0, ds.n // 2, ds.n - 1, -12345]
    t0 = time.perf_counter()
    got = col.get(want)
    ms = (time.perf_counter() - t0) * 1e3
    rows = got.ids.astype(np.int64)
    err = float(np.abs(got.vectors - ds.base[rows]).max()) if len(rows) else float("nan")
    print(f"\npoint lookup  get({want}): {ms:.2f} ms")
    print(f"  found ids {rows.tolist()} (absent ids are left out), payloads {got.payloads}")
    print(f"  max |stored - original| = {err:.2e}")


def _show_stats(stats: dict[str, Any]) -> None:
    print("\nstats():")
    items = [f"{k}={v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v}" for k, v in stats.items()]
    line = " "
    for item in items:
        if len(line) + len(item) > 100:
            print(line)
            line = " "
        line += " " + item
    print(line)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from drift_engine.api import Engine  # heavy imports (numba, hnswlib): keep --help fast

    print("drift demo: the embedded engine on a real dataset\n")
    t0 = time.perf_counter()
    ds = load_dataset(args.dataset)
    n_q = max(1, min(args.queries, ds.nq))
    print(f"dataset {ds.name}: {ds.n:,} x {ds.dim} float32, {ds.nq:,} queries with exact top-100 ({ds.path})")
    _step("load dataset", time.perf_counter() - t0)

    with _data_dir(args.data) as data, Engine.open(str(data)) as engine:
        names = [c if isinstance(c, str) else getattr(c, "name", c) for c in engine.list_collections()]
        if "demo" in names:
            engine.drop_collection("demo")
        col = engine.create_collection("demo", ds.dim, metric="l2")
        secs = _load(col, ds)
        _step(f"upsert {ds.n:,} vectors", secs, f"{ds.n / secs:,.0f} vectors/s, batches of {BATCH:,}")
        t0 = time.perf_counter()
        col.train()
        _step("train (k-means + SQ8)", time.perf_counter() - t0, f"data dir {data}")

        queries = ds.queries[:n_q]
        t0 = time.perf_counter()
        col.search(queries[0], k=K)  # the first call may compile kernels
        _step("first search (warm-up)", time.perf_counter() - t0)
        ids = np.full((n_q, K), -1, dtype=np.int64)
        dists = np.full((n_q, K), np.inf, dtype=np.float32)
        lat = np.empty(n_q)
        for i, q in enumerate(queries):
            s = time.perf_counter()
            res = col.search(q, k=K)
            lat[i] = time.perf_counter() - s
            ids[i, : len(res.ids)] = res.ids[:K]
            dists[i, : len(res.ids)] = res.distances[:K]
        _show_first(ids, dists, ds)

        params = col.params()
        knobs = ", ".join(f"{k}={params[k]}" for k in ("nprobe", "rerank") if k in params)
        print(f"\n{n_q:,} single searches, k={K} ({knobs or 'default parameters'}):")
        print(f"  recall@{K} {recall_at_k(ids, ds.gt[:n_q], K):.4f} against exact ground truth")
        p50, p99 = np.percentile(lat, [50, 99]) * 1e3
        print(f"  latency p50 {p50:.3f} ms, p99 {p99:.3f} ms;  {n_q / lat.sum():,.0f} queries/s (one thread)")

        t0 = time.perf_counter()
        b_ids, _ = col.search_batch(queries, k=K)
        secs = time.perf_counter() - t0
        print(
            f"  search_batch of {n_q:,}: {secs:.2f} s, {n_q / secs:,.0f} queries/s, "
            f"recall@{K} {recall_at_k(b_ids, ds.gt[:n_q], K):.4f}"
        )

        _filtered_example(col, ds)
        _lookup_example(col, ds)
        _show_stats(col.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())
