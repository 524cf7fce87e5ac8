"""The ANN benchmark's configuration, sweep helpers, and the FAISS and hnswlib runners.

drift's runner is in ``bench.ann_drift``. Every ``run_*`` function runs in its own (spawned) process,
takes an ``AnnConfig`` (plus system arguments), loads the dataset itself, builds the index
single-threaded, sweeps its search parameter and returns a plain dict::

    {"system", "variant", "build": {... seconds ...}, "memory": {... MiB ...},
     "curves": [{"variant", "points": [{param, recall, qps, p50_ms, p99_ms, n_queries, qps_batch?}]}],
     "notes": [...]}

q/s (``qps``) is always measured as a Python loop of one search call per query (the per-query API path
a client hits); ``qps_batch`` is one call for all queries (FAISS / hnswlib native batching; drift's
``search_batch``). Both single-threaded. Memory: ``rss_*`` are the process RSS after the dataset
is loaded (baseline), after the build and after the sweep; ``index_mib`` = after-sweep − baseline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import common
from bench.threads import pin_runtime

K = 10


@dataclass
class AnnConfig:
    """What to run for one dataset (all values JSON-serialisable)."""

    dataset: str
    n_queries: int = 2000
    nprobes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256])
    reranks: list[int] = field(default_factory=lambda: [1, 2, 4])
    batch_rerank: int = 4  # drift: rerank value whose points also get search_batch q/s
    efs: list[int] = field(default_factory=lambda: [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512])
    extra_nlists: list[int] = field(default_factory=list)
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    load_batch: int = 50_000
    point_budget_s: float = 20.0  # stop a sweep after a point whose query loop took longer
    repeat_below_s: float = 4.0  # a query loop faster than this is run twice, the faster one counts
    cache_bytes: int = 4 << 30
    workdir: str | None = None
    profile_queries: int = 1000  # 0 = no cProfile of drift at its recall-0.95 operating point
    settle_rounds: int = 5  # drift "settled": at most this many col.maintain() rounds after train
    h2h_rounds: int = 6  # head-to-head: rounds of one block of queries per system at its 0.95 point (0 = off)
    h2h_block: int = 500  # queries per system per round
    workspace: str | None = None  # set by bench.ann: where indexes are kept for the head-to-head stage
    drift_variants: list[str] = field(default_factory=lambda: ["fresh", "settled"])
    warmup_queries: int = 100
    seed: int = 0


@dataclass
class Data:
    base: np.ndarray
    queries: np.ndarray
    gt: np.ndarray  # (m, K)


def load_data(cfg: AnnConfig) -> Data:
    from drift_engine.datasets import load_dataset

    ds = load_dataset(cfg.dataset)
    sel = common.query_subset(ds.nq, cfg.n_queries, cfg.seed)
    return Data(ds.base, np.ascontiguousarray(ds.queries[sel]), np.ascontiguousarray(ds.gt[sel, :K]))


def sweep(
    values: list[Any], measure: Callable[[Any], dict[str, Any]], budget_s: float
) -> tuple[list[dict[str, Any]], str]:
    """Measure each value in order; stop early once recall is ~1, has plateaued, or a point was slow.
    Returns (points, why the sweep stopped)."""
    points: list[dict[str, Any]] = []
    for v in values:
        p = measure(v)
        points.append(p)
        if p["recall"] >= 0.9999:
            return points, f"recall ~1 at {p['param']}"
        if p["n_queries"] / p["qps"] > budget_s:
            return points, f"point slower than {budget_s:g} s at {p['param']}"
        if len(points) >= 3 and points[-1]["recall"] - points[-3]["recall"] < 0.0005:
            return points, f"recall plateau at {p['param']}"
    return points, "end of sweep"


def timed_loop(fn: Callable[[np.ndarray], Any], queries: np.ndarray, cheap_s: float) -> common.LoopTiming:
    """``common.time_per_query``, repeated once more when the loop took under ``cheap_s`` seconds;
    the faster repetition counts (a shared machine's noise only ever slows a run down)."""
    t = common.time_per_query(fn, queries)
    if t.wall < cheap_s:
        t2 = common.time_per_query(fn, queries)
        t = common.LoopTiming(
            t.results, t2.lat if t2.wall < t.wall else t.lat, min(t.wall, t2.wall), min(t.cpu, t2.cpu)
        )
    return t


def index_path(cfg: AnnConfig, name: str) -> str:
    """Where a system keeps its index in the workspace for the head-to-head stage."""
    assert cfg.workspace is not None
    return os.path.join(cfg.workspace, name)


def memory_report(rss0: int, rss_built: int) -> dict[str, Any]:
    rss_end = common.rss_bytes()
    return {
        "rss_baseline_mib": common.mib(rss0),
        "rss_after_build_mib": common.mib(rss_built),
        "rss_after_sweep_mib": common.mib(rss_end),
        "peak_rss_mib": common.mib(common.peak_rss_bytes()),
        "index_mib": common.mib(rss_end - rss0),
    }


# --------------------------------------------------------------------------------------------- FAISS
def run_faiss(cfg: AnnConfig, kind: str, nlist: int) -> dict[str, Any]:
    """FAISS IndexIVFScalarQuantizer(QT_8bit) (``kind='sq8'``) or IndexIVFFlat (``'flat'``), nprobe sweep."""
    threads = pin_runtime()
    import faiss

    data = load_data(cfg)
    d = data.base.shape[1]
    rss0 = common.rss_bytes()
    quantizer = faiss.IndexFlatL2(d)
    if kind == "sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
    elif kind == "flat":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    else:
        raise ValueError(f"unknown FAISS kind {kind!r}")
    with common.Timer() as t_train:
        index.train(data.base)
    with common.Timer() as t_add:
        index.add(data.base)
    rss_built = common.rss_bytes()
    build = {
        "train_s": round(t_train.seconds, 3),
        "add_s": round(t_add.seconds, 3),
        "total_s": round(t_train.seconds + t_add.seconds, 3),
    }
    index.nprobe = 16
    index.search(data.queries[: cfg.warmup_queries], K)

    def measure(nprobe: int) -> dict[str, Any]:
        index.nprobe = nprobe
        t = timed_loop(lambda q: index.search(q[None], K)[1][0], data.queries, cfg.repeat_below_s)
        p = common.point({"nprobe": nprobe}, common.recall_at_k(common.stack_ids(t.results, K), data.gt), t)
        (_, b_ids), b_wall, b_cpu = common.time_batch(lambda qs: index.search(qs, K), data.queries)
        return common.add_batch(p, b_ids, data.gt, b_wall, b_cpu)

    nprobes = [p for p in cfg.nprobes if p <= nlist]
    points, why = sweep(nprobes, measure, cfg.point_budget_s)
    name = "faiss-ivfsq8" if kind == "sq8" else "faiss-ivfflat"
    if cfg.workspace:
        faiss.write_index(index, index_path(cfg, f"{name}-nlist{nlist}"))
    return {
        "system": name,
        "variant": f"nlist={nlist}",
        "nlist": nlist,
        "build": build,
        "curves": [{"variant": f"nlist={nlist}", "points": points, "stopped": why}],
        "memory": memory_report(rss0, rss_built),
        "threads": threads,
        "notes": [
            f"{'IndexIVFScalarQuantizer(QT_8bit, by_residual)' if kind == 'sq8' else 'IndexIVFFlat'} "
            "with FAISS defaults; build = train (k-means) + add, 1 thread"
        ],
    }


# --------------------------------------------------------------------------------------------- hnswlib
def run_hnswlib(cfg: AnnConfig) -> dict[str, Any]:
    """hnswlib HNSW (M, ef_construction from cfg), built and searched with one thread, ef sweep."""
    threads = pin_runtime()
    import hnswlib

    data = load_data(cfg)
    n, d = data.base.shape
    rss0 = common.rss_bytes()
    index = hnswlib.Index(space="l2", dim=d)
    with common.Timer() as t_build:
        index.init_index(max_elements=n, M=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction, random_seed=100)
        index.add_items(data.base, np.arange(n), num_threads=1)
    rss_built = common.rss_bytes()
    index.set_ef(64)
    index.knn_query(data.queries[: cfg.warmup_queries], k=K, num_threads=1)

    def measure(ef: int) -> dict[str, Any]:
        index.set_ef(max(ef, K))
        t = timed_loop(lambda q: index.knn_query(q, k=K, num_threads=1)[0][0], data.queries, cfg.repeat_below_s)
        p = common.point({"ef": ef}, common.recall_at_k(common.stack_ids(t.results, K), data.gt), t)
        (b_ids, _), b_wall, b_cpu = common.time_batch(lambda qs: index.knn_query(qs, k=K, num_threads=1), data.queries)
        return common.add_batch(p, b_ids, data.gt, b_wall, b_cpu)

    points, why = sweep(cfg.efs, measure, cfg.point_budget_s)
    if cfg.workspace:
        index.save_index(index_path(cfg, "hnswlib"))
    return {
        "system": "hnswlib",
        "variant": f"M={cfg.hnsw_m},efc={cfg.hnsw_ef_construction}",
        "build": {"total_s": round(t_build.seconds, 3), "threads": 1},
        "curves": [{"variant": f"M={cfg.hnsw_m}", "points": points, "stopped": why}],
        "memory": memory_report(rss0, rss_built),
        "threads": threads,
        "notes": ["ef sweep; ef below k is raised to k"],
    }
