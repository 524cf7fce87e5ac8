"""ADC kernel throughput: SQ8 code bytes scanned per second, one thread, drift vs FAISS.

For each dataset the whole base set is SQ8-encoded (``drift_engine.storage.sq8``) and scanned once per
query for the ``r`` best rows (r = 40 = rerank 4 × k 10):

* ``drift adc.scan full`` — ``drift_engine.index.adc.scan`` over one range covering every row
  (``prepare_query`` is timed separately and excluded);
* ``drift adc.scan full+skip`` — the same with an all-zero skip (deleted-rows) mask;
* ``drift adc.scan probe-shaped`` — 32 ranges of n/⌈n/256⌉ rows at random bucket positions (the shape
  of one IVF probe; includes the per-call overhead that a full scan amortises);
* ``faiss IndexScalarQuantizer QT_8bit`` — FAISS's flat SQ8 search, ``search(q[None], r)``: the same
  bytes, FAISS's SIMD distance code;
* ``faiss IndexFlatL2 (float32)`` — context: the exact scan over 4-byte components (bytes = n·d·4).

Throughput = bytes scanned / time, best and median of ``rounds`` rounds; a round is as many passes over
the ``n_queries`` queries as fill ``MIN_ROUND_S``.
``run_kernel`` runs each dataset in its own process and writes ``kernel.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.isolate import run_isolated
from bench.threads import pin_runtime

R = 40
PROBE_RANGES = 32
TARGET_BUCKET = 256
MIN_ROUND_S = 0.25


def _rate(
    name: str,
    fn: Callable[[np.ndarray], Any],
    queries: np.ndarray,
    bytes_per_query: float,
    rows_per_query: float,
    rounds: int,
) -> dict[str, Any]:
    fn(queries[0])  # compile / warm caches
    t0 = time.perf_counter()
    for q in queries:
        fn(q)
    # repeat the query list so that one round lasts >= MIN_ROUND_S (short scans are timer-noise bound)
    passes = max(1, int(np.ceil(MIN_ROUND_S / max(time.perf_counter() - t0, 1e-9))))
    walls = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _p in range(passes):
            for q in queries:
                fn(q)
        walls.append(time.perf_counter() - t0)
    m = queries.shape[0] * passes
    best, med = min(walls), float(np.median(walls))
    return {
        "name": name,
        "bytes_per_query": int(bytes_per_query),
        "bytes_per_s_best": round(bytes_per_query * m / best),
        "bytes_per_s_median": round(bytes_per_query * m / med),
        "gb_per_s_best": round(bytes_per_query * m / best / 1e9, 3),
        "gb_per_s_median": round(bytes_per_query * m / med / 1e9, 3),
        "rows_per_s_best": round(rows_per_query * m / best),
        "us_per_scan_median": round(med / m * 1e6, 1),
    }


def kernel_dataset(name: str, n_queries: int, rounds: int) -> dict[str, Any]:
    """Measure every kernel on one dataset (meant to run in its own process)."""
    threads = pin_runtime()
    import faiss

    from drift_engine.datasets import load_dataset
    from drift_engine.index import adc
    from drift_engine.storage import sq8

    ds = load_dataset(name)
    base = ds.base
    n, d = base.shape
    queries = np.ascontiguousarray(ds.queries[common.query_subset(ds.nq, n_queries, seed=1)])
    sample = base[np.random.default_rng(0).choice(n, size=min(n, 100_000), replace=False)]
    params = sq8.train_sq8(sample)
    codes = np.ascontiguousarray(sq8.encode(params, base))
    mins, scales = params.mins, params.scales
    full_s = np.array([0], dtype=np.int64)
    full_c = np.array([n], dtype=np.int64)
    zero_skip = np.zeros(n, dtype=np.uint8)
    nb = max(1, -(-n // TARGET_BUCKET))
    size = n // nb
    rng = np.random.default_rng(2)
    pick = np.sort(rng.choice(nb, size=min(PROBE_RANGES, nb), replace=False))
    p_starts = (pick * size).astype(np.int64)
    p_counts = np.full(pick.size, size, dtype=np.int64)
    prepared = [adc.prepare_query("l2", q, mins, scales) for q in queries]

    def drift_scan(starts: np.ndarray, counts: np.ndarray, skip: np.ndarray | None) -> Callable[[np.ndarray], Any]:
        state = {"i": 0}  # the query's position: scans use its prepared form (prepare_query is excluded)

        def fn(_q: np.ndarray) -> Any:
            pq = prepared[state["i"] % len(prepared)]
            state["i"] += 1
            return adc.scan(pq, codes, starts, counts, skip, R)

        return fn

    results = []
    nd = float(n * d)
    results.append(_rate("drift adc.scan full", drift_scan(full_s, full_c, None), queries, nd, n, rounds))
    results.append(_rate("drift adc.scan full+skip", drift_scan(full_s, full_c, zero_skip), queries, nd, n, rounds))
    p_rows = float(p_counts.sum())
    results.append(
        _rate(
            f"drift adc.scan probe-shaped ({pick.size}x{size} rows)",
            drift_scan(p_starts, p_counts, None),
            queries,
            p_rows * d,
            p_rows,
            rounds,
        )
    )
    prep = _rate("drift adc.prepare_query", lambda q: adc.prepare_query("l2", q, mins, scales), queries, 0, 0, rounds)

    sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
    with common.Timer() as t_sq:
        sq.train(base)
        sq.add(base)
    results.append(_rate("faiss IndexScalarQuantizer QT_8bit", lambda q: sq.search(q[None], R), queries, nd, n, rounds))
    flat = faiss.IndexFlatL2(d)
    flat.add(base)
    results.append(
        _rate(
            "faiss IndexFlatL2 (float32, context)",
            lambda q: flat.search(q[None], R),
            queries,
            nd * 4,
            n,
            rounds,
        )
    )
    drift_full = results[0]["bytes_per_s_best"]
    faiss_sq = next(r for r in results if r["name"].startswith("faiss IndexScalar"))["bytes_per_s_best"]
    return {
        "dataset": name,
        "n": int(n),
        "d": int(d),
        "r": R,
        "queries": int(queries.shape[0]),
        "rounds": rounds,
        "results": results,
        "prepare_query_us": prep["us_per_scan_median"],
        "faiss_sq_build_s": round(t_sq.seconds, 3),
        "drift_over_faiss_sq8_bytes_per_s": round(drift_full / faiss_sq, 3),
        "threads": threads,
    }


def run_kernel(
    datasets: list[str], n_queries: int = 20, rounds: int = 3, out_dir: Path = common.RESULTS_DIR
) -> dict[str, Any]:
    """Kernel throughput on each dataset (each in its own process); writes ``kernel.json``."""
    per = []
    for name in datasets:
        print(f"[kernel] {name}", flush=True)
        res = run_isolated(kernel_dataset, name, n_queries, rounds)
        per.append(res if "error" not in res else {"dataset": name, **res})
    result = {
        "benchmark": "kernel",
        "machine": common.machine_info(),
        "method": "bytes of SQ8 codes scanned per second for the top-40 of a whole code block, one query "
        "per call, 1 thread; best and median of rounds",
        "datasets": per,
    }
    common.write_json("kernel", result, out_dir)
    return result
