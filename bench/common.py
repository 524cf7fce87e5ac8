"""Shared helpers: timing, recall@k, memory, machine info, JSON output and plots.

Contract:

* ``time_per_query(fn, queries)`` calls ``fn(q)`` once per query row, in order, and returns the
  results, per-query wall latencies, and the wall and process-CPU time of the whole loop; q/s is
  ``m / wall time`` (``qps``) and ``m / CPU time`` (``qps_cpu``: robust to a busy shared machine, where
  a single-threaded process is often descheduled).
* ``recall_at_k(found, gt, k)`` = mean over queries of ``|found[:k] ∩ gt[:k]| / k`` (ids < 0 never
  match). Ground truth ids are row indices of the base set, so every system is loaded with ids 0..n-1.
* ``write_json`` writes ``<out>/<name>.json`` atomically (``.tmp`` then rename), never an absolute
  path of this machine in the content (callers must not pass any).
* Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drift_engine.datasets import pad_ids as stack_ids
from drift_engine.datasets import recall_at_k

__all__ = ["recall_at_k", "stack_ids"]  # re-exported: the one recall / padding helper lives in datasets

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RECALL_TARGET = 0.95


# --------------------------------------------------------------------------------------------- timing
class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


@dataclass
class LoopTiming:
    """One timed pass: per-query ``results``, wall latencies (s), wall and process-CPU seconds."""

    results: list[Any]
    lat: np.ndarray
    wall: float
    cpu: float

    @property
    def m(self) -> int:
        return len(self.results)


def time_per_query(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> LoopTiming:
    """Run ``fn`` on each query row, in order, timing each call (wall) and the whole loop (wall, CPU)."""
    m = queries.shape[0]
    lat = np.empty(m, dtype=np.float64)
    out: list[Any] = [None] * m
    clock = time.perf_counter
    gc.collect()
    c_start = time.process_time()
    t_start = clock()
    for i in range(m):
        t0 = clock()
        out[i] = fn(queries[i])
        lat[i] = clock() - t0
    wall = clock() - t_start
    return LoopTiming(out, lat, wall, time.process_time() - c_start)


def time_batch(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[Any, float, float]:
    """Run ``fn(queries)`` once; return (result, wall seconds, process-CPU seconds)."""
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    res = fn(queries)
    return res, time.perf_counter() - t0, time.process_time() - c0


def point(param: dict[str, Any], recall: float, t: LoopTiming) -> dict[str, Any]:
    """One curve point: {param, recall, qps, qps_cpu, p50_ms, p99_ms, n_queries}.

    ``qps`` = queries / wall time of the loop; ``qps_cpu`` = queries / process CPU time of the loop,
    which leaves out the time the process sat descheduled on a busy machine."""
    return {
        "param": param,
        "recall": round(float(recall), 5),
        "qps": round(t.m / t.wall, 1),
        "qps_cpu": round(t.m / max(t.cpu, 1e-9), 1),
        "p50_ms": round(float(np.percentile(t.lat, 50)) * 1e3, 4),
        "p99_ms": round(float(np.percentile(t.lat, 99)) * 1e3, 4),
        "n_queries": int(t.m),
    }


def add_batch(p: dict[str, Any], found: np.ndarray, gt: np.ndarray, wall: float, cpu: float) -> dict[str, Any]:
    """Add the batched-call q/s (wall and CPU) and its recall (a check) to point ``p``."""
    p["qps_batch"] = round(p["n_queries"] / wall, 1)
    p["qps_batch_cpu"] = round(p["n_queries"] / max(cpu, 1e-9), 1)
    p["recall_batch"] = round(recall_at_k(found, gt), 5)
    return p


# --------------------------------------------------------------------------------------------- recall
def query_subset(nq: int, m: int, seed: int = 0) -> np.ndarray:
    """A fixed, sorted random subset of ``m`` query indices out of ``nq`` (all of them if m >= nq)."""
    if m >= nq:
        return np.arange(nq)
    return np.sort(np.random.default_rng(seed).choice(nq, size=m, replace=False))


# --------------------------------------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident set size of this process now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def mib(n: float | int | None) -> float | None:
    return None if n is None else round(float(n) / (1 << 20), 1)


# --------------------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    except OSError:
        pass
    return []


def _version(dist: str) -> str | None:
    """Installed version of a distribution (pip name), or None."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, memory, Python and library versions, date (no paths, no host name)."""
    import psutil

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_simd_flags": _cpu_flags(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "faiss": _version("faiss-cpu"),
        "hnswlib": _version("hnswlib"),
        "drift_engine": _version("drift-engine"),
        "threads": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")},
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # run benchmarks alone: should be ~0
    }
    try:
        import faiss

        info["faiss_compile_options"] = faiss.get_compile_options()
        info["faiss_simd_level"] = faiss.SIMDConfig.get_level_name()
    except (ImportError, AttributeError):
        pass
    return info


# --------------------------------------------------------------------------------------------- output
def write_json(name: str, data: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``data`` as ``<out_dir>/<name>.json`` (atomic rename); return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = out_dir / f"{name}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.name
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def best_qps_at(curve: Sequence[dict[str, Any]], target: float = RECALL_TARGET, key: str = "qps") -> dict | None:
    """The point with the highest ``key`` among those with recall >= target (None if none reaches it)."""
    ok = [p for p in curve if p["recall"] >= target and p.get(key) is not None]
    return max(ok, key=lambda p: p[key]) if ok else None


def pareto(points: Sequence[dict[str, Any]], key: str = "qps") -> list[dict[str, Any]]:
    """The points not beaten on both recall and ``key`` (q/s), sorted by recall."""
    pts = sorted((p for p in points if p.get(key)), key=lambda p: (-p[key], -p["recall"]))
    front, best_recall = [], -1.0
    for p in pts:
        if p["recall"] > best_recall:
            front.append(p)
            best_recall = p["recall"]
    return sorted(front, key=lambda p: p["recall"])


_STYLE = {
    "drift": ("tab:red", "o"),
    "drift-settled": ("tab:orange", "v"),
    "faiss-ivfsq8": ("tab:blue", "s"),
    "faiss-ivfflat": ("tab:green", "^"),
    "hnswlib": ("tab:purple", "D"),
}


def plot_curves(title: str, curves: Sequence[dict[str, Any]], path: Path) -> Path:
    """Recall@10 (y) against per-query q/s (x, log scale): left panel wall-clock q/s, right panel
    process-CPU q/s; one line per curve and a line at recall 0.95.

    Each curve is ``{"label", "system", "points": [{recall, qps, qps_cpu}, ...], "dashed", "alpha",
    "frontier"}``; with ``frontier`` only the points on the recall / q/s frontier are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), dpi=100, sharey=True)
    lo = min((p["recall"] for c in curves for p in c["points"]), default=0.5)
    panels = (("qps", "queries/s (wall clock)"), ("qps_cpu", "queries/s (process CPU time)"))
    for ax, (key, xlabel) in zip(axes, panels, strict=True):
        for c in curves:
            # a frontier, or the points in sweep order (a noisy point then shows as a kink)
            pts = pareto(c["points"], key) if c.get("frontier") else [p for p in c["points"] if p.get(key)]
            if not pts:
                continue
            color, marker = _STYLE.get(c["system"], ("gray", "."))
            ax.plot(
                [p[key] for p in pts],
                [p["recall"] for p in pts],
                marker=marker,
                markersize=3.5,
                linewidth=1.6 if c.get("alpha", 1.0) == 1.0 else 1.0,
                linestyle="--" if c.get("dashed") else "-",
                alpha=c.get("alpha", 1.0),
                color=color,
                label=c["label"],
            )
        ax.axhline(RECALL_TARGET, color="black", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.text(ax.get_xlim()[0], RECALL_TARGET, " recall 0.95", va="bottom", fontsize=8)
        ax.set_xlabel(f"{xlabel}, 1 thread, one query per call (log)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("recall@10")
    axes[0].set_ylim(max(0.0, min(lo, 0.9) - 0.02), 1.002)
    axes[0].legend(fontsize=7.5, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
