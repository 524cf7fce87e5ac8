"""Head-to-head: every system at its recall-0.95 operating point, measured in the same time window.

The sweeps run one system after another, minutes apart; on a shared, busy machine the load changes in
between, and a ratio of two sweeps partly measures the neighbours. Here one process loads every index
the sweeps left in the workspace (drift data directories, FAISS ``write_index`` files, the hnswlib
graph), sets each to its operating point — the fastest sweep point (process-CPU q/s) with recall@10 ≥
0.95 — and runs rounds: in each round every system answers the same block of queries, one
``search`` call per query, in an order that rotates from round to round. q/s per system is the median
over rounds (wall clock and process CPU time); recall is over all the benchmark's queries. The
ratio of two systems' medians is the number to quote for "drift vs FAISS in the same run".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import common
from bench.systems import AnnConfig, K, load_data
from bench.threads import pin_runtime


def _opener(entry: dict[str, Any], cfg: AnnConfig, n: int, d: int) -> tuple[Callable[[np.ndarray], Any], Any]:
    """(one-query search function, handle to close) for a workspace entry."""
    kind, path, param = entry["kind"], entry["path"], entry["param"]
    if kind == "drift":
        from drift_engine import Engine

        engine = Engine.open(path, cache_bytes=cfg.cache_bytes)
        col = engine.collection("bench")
        nprobe, rerank = param["nprobe"], param["rerank"]
        return (lambda q: col.search(q, k=K, nprobe=nprobe, rerank=rerank).ids), engine
    if kind == "faiss":
        import faiss

        index = faiss.read_index(path)
        index.nprobe = param["nprobe"]
        return (lambda q: index.search(q[None], K)[1][0]), None
    if kind == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="l2", dim=d)
        index.load_index(path, max_elements=n)
        index.set_ef(max(param["ef"], K))
        return (lambda q: index.knn_query(q, k=K, num_threads=1)[0][0]), None
    raise ValueError(f"unknown index kind {kind!r}")


def head_to_head(cfg: AnnConfig, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure ``entries`` ({label, kind, path, param}) side by side; meant to run in its own process."""
    threads = pin_runtime()
    data = load_data(cfg)
    n, d = data.base.shape
    m = data.queries.shape[0]
    fns: dict[str, Callable[[np.ndarray], Any]] = {}
    handles = []
    out: dict[str, Any] = {}
    for e in entries:
        fn, handle = _opener(e, cfg, n, d)
        fns[e["label"]] = fn
        handles.append(handle)
        found = common.stack_ids([fn(q) for q in data.queries], K)  # also the warm-up
        out[e["label"]] = {"param": e["param"], "recall": round(common.recall_at_k(found, data.gt), 5)}
    block = min(cfg.h2h_block, m)
    labels = list(fns)
    walls: dict[str, list[float]] = {lb: [] for lb in labels}
    cpus: dict[str, list[float]] = {lb: [] for lb in labels}
    for r in range(cfg.h2h_rounds):
        start = (r * block) % m
        qs = np.take(data.queries, np.arange(start, start + block) % m, axis=0)
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for lb in order:
            fn = fns[lb]
            c0 = time.process_time()
            t0 = time.perf_counter()
            for q in qs:
                fn(q)
            walls[lb].append(block / (time.perf_counter() - t0))
            cpus[lb].append(block / max(time.process_time() - c0, 1e-9))
    for lb in labels:
        out[lb].update(
            qps_median=round(float(np.median(walls[lb])), 1),
            qps_cpu_median=round(float(np.median(cpus[lb])), 1),
            qps_best=round(max(walls[lb]), 1),
            qps_rounds=[round(x, 1) for x in walls[lb]],
        )
    for h in handles:
        if h is not None:
            h.close()
    return {"rounds": cfg.h2h_rounds, "block": block, "systems": out, "threads": threads}


def operating_point(run: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest (process-CPU q/s) sweep point of a run with recall >= 0.95."""
    return common.best_qps_at([p for c in run["curves"] for p in c["points"]], key="qps_cpu")
