"""drift in the ANN benchmark: build in one process, serve (sweep) in another, on a temporary directory.

Two variants, each its own data directory, load and train:

* ``fresh`` — the index exactly as ``train()`` leaves it: the collection is created with
  ``maintain_duty=0`` (no background Maintainer), so nothing changes it while it is measured;
* ``settled`` — default parameters; after ``train()`` the build runs ``col.maintain()`` until nothing is
  pending (the splits / merges / compactions the background Maintainer would otherwise do in the first
  minute after a train, while it is being measured), timed separately as ``maintain_s``.

Build (``build_drift``): ``Engine.open``, ``create_collection(dim, "l2")``, ``upsert`` in batches of
``cfg.load_batch`` (default durability), ``train()``, [``maintain()``], close. Times: ``load_s``,
``train_s``, ``load_plus_train_s`` (the issue's "train + load" target), ``maintain_s``.
Serve (``serve_drift``): a fresh process opens the directory (``open_s``: load of a persisted index),
warms up, sweeps nprobe × rerank with one ``col.search`` per query, records ``search_batch`` q/s at
``cfg.batch_rerank``, checks that the index did not change during the sweep, and cProfiles
``cfg.profile_queries`` searches at the fastest point with recall ≥ 0.95. Memory: RSS of the serving
process (``memory``) and the peak of the build process (``build_memory``).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from bench import common
from bench.isolate import run_isolated
from bench.systems import AnnConfig, Data, K, index_path, load_data, memory_report, sweep, timed_loop
from bench.threads import pin_runtime

VARIANTS = ("fresh", "settled")
_SHAPE = ("buckets", "segments", "dead_rows", "splits", "merges", "compactions", "recentres")


def _drift_runtime() -> tuple[Any, int]:
    """Import the engine and load its numba kernels (before the memory baseline, as faiss's and
    hnswlib's library code is); return (Engine class, RSS it added)."""
    rss_bare = common.rss_bytes()
    from drift_engine import Engine
    from drift_engine.index import adc

    adc.warmup()
    return Engine, common.rss_bytes() - rss_bare


def build_drift(cfg: AnnConfig, root: str, variant: str) -> dict[str, Any]:
    """Create, load and train a collection in ``root`` (and settle it for ``settled``); close."""
    threads = pin_runtime()
    engine_cls, rss_runtime = _drift_runtime()
    data = load_data(cfg)
    n, d = data.base.shape
    rss0 = common.rss_bytes()
    build: dict[str, Any] = {}
    engine = engine_cls.open(root, cache_bytes=cfg.cache_bytes)
    params = {"maintain_duty": 0.0} if variant == "fresh" else {}
    col = engine.create_collection("bench", dim=d, metric="l2", **params)
    ids = np.arange(n, dtype=np.int64)
    with common.Timer() as t_load:
        for s in range(0, n, cfg.load_batch):
            col.upsert(ids[s : s + cfg.load_batch], data.base[s : s + cfg.load_batch])
    with common.Timer() as t_train:
        info = col.train()
    build.update(load_s=round(t_load.seconds, 3), train_s=round(t_train.seconds, 3), train_info=info)
    build["load_plus_train_s"] = round(t_load.seconds + t_train.seconds, 3)
    build["stats_after_train"] = col.stats()
    if variant == "settled":
        with common.Timer() as t_maint:
            done = []
            for _ in range(max(1, cfg.settle_rounds)):
                m = col.maintain()
                done.append(m)
                if not m.get("jobs") or not m.get("pending"):
                    break
        build["maintain_s"] = round(t_maint.seconds, 3)
        build["maintain"] = done
        build["stats_after_maintain"] = col.stats()
    engine.close()
    return {
        "build": build,
        "build_memory": {
            "rss_baseline_mib": common.mib(rss0),
            "peak_rss_mib": common.mib(common.peak_rss_bytes()),
            "engine_runtime_mib": common.mib(rss_runtime),
        },
        "threads": threads,
    }


def serve_drift(cfg: AnnConfig, root: str, variant: str) -> dict[str, Any]:
    """Open ``root`` in this fresh process, sweep nprobe × rerank, profile the recall-0.95 point."""
    threads = pin_runtime()
    engine_cls, rss_runtime = _drift_runtime()
    data = load_data(cfg)
    rss0 = common.rss_bytes()
    with common.Timer() as t_open:
        engine = engine_cls.open(root, cache_bytes=cfg.cache_bytes)
        col = engine.collection("bench")
    stats = col.stats()
    buckets = int(stats.get("buckets") or 0)
    rss_opened = common.rss_bytes()
    with common.Timer() as t_warm:  # fill the block cache, touch every code path once
        for q in data.queries[: cfg.warmup_queries]:
            col.search(q, k=K, nprobe=max(cfg.nprobes), rerank=max(cfg.reranks))

    curves = []
    for rerank in cfg.reranks:

        def measure(nprobe: int, rerank: int = rerank) -> dict[str, Any]:
            t = timed_loop(
                lambda q: col.search(q, k=K, nprobe=nprobe, rerank=rerank).ids, data.queries, cfg.repeat_below_s
            )
            found = common.stack_ids(t.results, K)
            p = common.point({"nprobe": nprobe, "rerank": rerank}, common.recall_at_k(found, data.gt), t)
            if rerank == cfg.batch_rerank:
                (b_ids, _), b_wall, b_cpu = common.time_batch(
                    lambda qs: col.search_batch(qs, k=K, nprobe=nprobe, rerank=rerank), data.queries
                )
                common.add_batch(p, b_ids, data.gt, b_wall, b_cpu)
            return p

        nprobes = [p for p in cfg.nprobes if buckets <= 0 or p <= buckets]
        points, why = sweep(nprobes, measure, cfg.point_budget_s)
        curves.append({"variant": f"rerank={rerank}", "points": points, "stopped": why})

    after = col.stats()
    changed = {k: [stats.get(k), after.get(k)] for k in _SHAPE if stats.get(k) != after.get(k)}
    out: dict[str, Any] = {
        "system": "drift",
        "drift_variant": variant,
        "variant": f"{variant} buckets={buckets}",
        "nlist": buckets,
        "serve": {"open_s": round(t_open.seconds, 3), "warmup_s": round(t_warm.seconds, 3)},
        "curves": curves,
        "threads": threads,
        "stats_at_open": stats,
        "stats_after_sweep": after,
        "index_changed_during_sweep": changed or None,
        "memory": {**memory_report(rss0, rss_opened), "engine_runtime_mib": common.mib(rss_runtime)},
        "notes": [__doc__.split("\n\n")[1].strip()],
    }
    if cfg.profile_queries:
        out["profile"] = _profile(col, data, curves, cfg.profile_queries)
    engine.close()
    return out


def run_drift(cfg: AnnConfig, variant: str) -> dict[str, Any]:
    """``build_drift`` then ``serve_drift``, each in its own process. The data directory is
    ``<workspace>/drift-<variant>`` (kept for the head-to-head stage; ``bench.ann`` removes the
    workspace), or a temporary directory removed afterwards. Runs in the parent process."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown drift variant {variant!r}; expected one of {VARIANTS}")
    if cfg.workspace:
        root = index_path(cfg, f"drift-{variant}")
        os.makedirs(root, exist_ok=True)
    else:
        root = tempfile.mkdtemp(prefix="drift-bench-", dir=cfg.workdir)
    try:
        built = run_isolated(build_drift, cfg, root, variant)
        if "error" in built:
            return {"system": "drift", "variant": variant, "phase": "build", **built}
        served = run_isolated(serve_drift, cfg, root, variant)
        if "error" in served:
            return {"system": "drift", "variant": variant, "phase": "serve", "build": built["build"], **served}
        out = {**served, "build": built["build"], "build_memory": built["build_memory"]}
        out["build"]["open_s"] = served["serve"]["open_s"]
        return out
    finally:
        if not cfg.workspace:
            shutil.rmtree(root, ignore_errors=True)


def _profile(col: Any, data: Data, curves: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    """cProfile ``n`` single searches at the fastest point (CPU q/s) with recall >= 0.95."""
    best = common.best_qps_at([p for c in curves for p in c["points"]], key="qps_cpu")
    if best is None:
        return None
    nprobe, rerank = best["param"]["nprobe"], best["param"]["rerank"]
    qs = data.queries[np.arange(n) % data.queries.shape[0]]
    prof = cProfile.Profile()
    c0 = time.process_time()
    prof.enable()
    for q in qs:
        col.search(q, k=K, nprobe=nprobe, rerank=rerank)
    prof.disable()
    cpu = time.process_time() - c0
    stats = pstats.Stats(prof)
    rows = []
    for (fname, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = "/".join(fname.replace("\\", "/").split("/")[-2:])
        rows.append(
            {
                "func": f"{short}:{line}({func})",
                "ncalls": ncalls,
                "tottime_us_per_query": round(tottime / n * 1e6, 2),
                "cumtime_us_per_query": round(cumtime / n * 1e6, 2),
            }
        )
    rows.sort(key=lambda r: -r["tottime_us_per_query"])
    return {
        "param": best["param"],
        "queries": n,
        "cpu_us_per_query_profiled": round(cpu / n * 1e6, 1),
        "unprofiled_cpu_us_per_query": round(1e6 / best["qps_cpu"], 1),
        "top_by_tottime": rows[:20],
    }
