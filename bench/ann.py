"""Recall@10 vs queries/s on one dataset: drift, FAISS IVF-SQ8, FAISS IVF-Flat and hnswlib.

Order of a run (each system in its own spawned process, see ``bench.isolate``):

1. drift — upsert in 50k batches, ``train()`` with default parameters, reopen, sweep nprobe × rerank;
2. FAISS IVF-SQ8 and IVF-Flat with ``nlist`` = the bucket count drift trained (plus any
   ``extra_nlists``, e.g. 390 ≈ √n for glove, the nlist of the reference numbers), nprobe sweep;
3. hnswlib M=16, ef_construction=200, ef sweep.

The headline q/s is a Python loop with one search call per query, 1 thread, for every system: that
is the path a client of drift's per-query API takes, so it is the apples-to-apples comparison. The
batched q/s (one call for all queries) is recorded beside it as ``qps_batch``.

``run_ann`` writes ``ann_<dataset>.json`` and ``ann_<dataset>.png`` and returns the JSON dict, whose
``summary`` holds, per system and variant: best q/s at recall@10 ≥ 0.95, max recall, build times,
memory; and the ratio of drift's best q/s at recall ≥ 0.95 to FAISS IVF-SQ8's in the same run.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.isolate import run_isolated
from bench.systems import AnnConfig, run_drift, run_faiss, run_hnswlib

TARGET = common.RECALL_TARGET
GLOVE_TARGETS = {"drift_over_faiss_sq8_qps": 2.0, "max_recall": 0.995, "load_plus_train_s": 15.0}


def _log(msg: str) -> None:
    print(f"[ann] {msg}", flush=True)


def _brief(run: dict[str, Any]) -> str:
    if "error" in run:
        return "ERROR: " + run["error"].strip().splitlines()[-1]
    pts = [p for c in run["curves"] for p in c["points"]]
    best = common.best_qps_at(pts)
    top = max((p["recall"] for p in pts), default=0.0)
    at = f"{best['qps']:.0f} q/s at {best['param']}" if best else f"never reaches {TARGET}"
    return f"{at}; max recall {top:.4f}"


def run_ann(
    cfg: AnnConfig, out_dir: Path = common.RESULTS_DIR, systems: tuple[str, ...] | None = None
) -> dict:
    """Benchmark every system on ``cfg.dataset``; write JSON + PNG; return the result dict."""
    systems = systems or ("drift", "faiss-ivfsq8", "faiss-ivfflat", "hnswlib")
    runs: list[dict[str, Any]] = []
    nlist = 0
    if "drift" in systems:
        _log(f"{cfg.dataset}: drift (load, train, sweep)")
        drift = run_isolated(run_drift, cfg)
        runs.append(drift if "error" not in drift else {"system": "drift", "variant": "", **drift})
        _log(f"  drift: {_brief(runs[-1])}")
        nlist = int(drift.get("nlist") or 0)
    ds_info = _dataset_info(cfg.dataset)
    if nlist <= 0:
        nlist = max(1, round(ds_info["n"] / 256))
    nlists = list(dict.fromkeys([nlist, *cfg.extra_nlists]))
    for kind, name in (("sq8", "faiss-ivfsq8"), ("flat", "faiss-ivfflat")):
        if name not in systems:
            continue
        for nl in nlists:
            _log(f"{cfg.dataset}: {name} nlist={nl}")
            res = run_isolated(run_faiss, cfg, kind, nl)
            runs.append(res if "error" not in res else {"system": name, "variant": f"nlist={nl}", **res})
            _log(f"  {name} nlist={nl}: {_brief(runs[-1])}")
    if "hnswlib" in systems:
        _log(f"{cfg.dataset}: hnswlib M={cfg.hnsw_m}")
        res = run_isolated(run_hnswlib, cfg)
        runs.append(res if "error" not in res else {"system": "hnswlib", "variant": "", **res})
        _log(f"  hnswlib: {_brief(runs[-1])}")

    result = {
        "benchmark": "ann",
        "dataset": ds_info,
        "config": {k: v for k, v in asdict(cfg).items() if k != "workdir"},
        "machine": common.machine_info(),
        "method": (
            "recall@10 against exact L2 ground truth on a fixed random subset of the queries (seed "
            f"{cfg.seed}); qps = one search call per query in a Python loop, 1 thread (the per-query "
            "API path, the apples-to-apples comparison); qps_batch = one call for all queries, 1 thread; "
            "each system in its own process; builds single-threaded"
        ),
        "runs": runs,
    }
    result["summary"] = summarize(runs, cfg.dataset)
    name = f"ann_{cfg.dataset}"
    common.write_json(name, result, out_dir)
    plot(result, out_dir / f"{name}.png")
    return result


def _dataset_info(name: str) -> dict[str, Any]:
    from drift_engine.datasets import find_dataset

    meta = json.loads((find_dataset(name) / "meta.json").read_text())
    n = int(meta.get("n") or 0)
    d = int(meta.get("d") or 0)
    if not n or not d:
        base = np.load(find_dataset(name) / "base.npy", mmap_mode="r")
        n, d = int(base.shape[0]), int(base.shape[1])
    return {"name": name, "n": n, "d": d}


def _curve_summary(run: dict[str, Any], points: list[dict[str, Any]]) -> dict[str, Any]:
    best = common.best_qps_at(points)
    best_cpu = common.best_qps_at(points, key="qps_cpu")
    best_b = common.best_qps_at(points, key="qps_batch")
    top = max(points, key=lambda p: (p["recall"], p["qps"]), default=None)
    build = run.get("build", {})
    return {
        "best_qps_at_0.95": best["qps"] if best else None,
        "param_at_0.95": best["param"] if best else None,
        "p50_ms_at_0.95": best["p50_ms"] if best else None,
        "p99_ms_at_0.95": best["p99_ms"] if best else None,
        "best_qps_cpu_at_0.95": best_cpu["qps_cpu"] if best_cpu else None,
        "best_qps_batch_at_0.95": best_b["qps_batch"] if best_b else None,
        "max_recall": top["recall"] if top else None,
        "param_at_max_recall": top["param"] if top else None,
        "qps_at_max_recall": top["qps"] if top else None,
        "build_s": build.get("load_plus_train_s", build.get("total_s")),
        "index_mib": run.get("memory", {}).get("index_mib"),
        "peak_rss_mib": run.get("memory", {}).get("peak_rss_mib"),
    }


def _ratios(drift: dict[str, Any], sq8: list[dict[str, Any]], key: str) -> dict[str, Any]:
    d_best = common.best_qps_at([p for c in drift["curves"] for p in c["points"]], key=key)
    ratios: dict[str, Any] = {}
    bests = []
    for r in sq8:
        f_best = common.best_qps_at(r["curves"][0]["points"], key=key)
        label = "same_nlist" if r["nlist"] == drift["nlist"] else f"nlist={r['nlist']}"
        ratios[label] = round(d_best[key] / f_best[key], 2) if d_best and f_best else None
        if f_best:
            bests.append(f_best[key])
    if d_best and bests:
        ratios["vs_best_faiss_sq8"] = round(d_best[key] / max(bests), 2)
    return ratios


def summarize(runs: list[dict[str, Any]], dataset: str) -> dict[str, Any]:
    """Per system/variant bests, drift vs FAISS IVF-SQ8 ratios, and (glove) the issue's targets."""
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        if "error" in run:
            rows[f"{run['system']} {run.get('variant', '')}".strip()] = {"error": _brief(run)}
            continue
        all_pts = [p for c in run["curves"] for p in c["points"]]
        rows[f"{run['system']} {run['variant']}"] = _curve_summary(run, all_pts)
        if len(run["curves"]) > 1:
            for c in run["curves"]:
                rows[f"{run['system']} {run['variant']} {c['variant']}"] = _curve_summary(run, c["points"])
    out: dict[str, Any] = {"rows": rows}
    drift = next((r for r in runs if r["system"] == "drift" and "error" not in r), None)
    sq8 = [r for r in runs if r["system"] == "faiss-ivfsq8" and "error" not in r]
    if drift is None:
        return out
    ratios = {"wall": _ratios(drift, sq8, "qps"), "cpu": _ratios(drift, sq8, "qps_cpu")}
    out["drift_over_faiss_sq8_qps_at_0.95"] = ratios
    if dataset.startswith("glove"):
        targets: dict[str, Any] = {}
        for clock, rat in ratios.items():
            worst = min((v for v in rat.values() if v is not None), default=None)
            targets[f"drift_over_faiss_sq8_qps ({clock} clock, min over nlists)"] = {
                "value": worst,
                "target": ">= 2.0",
                "met": worst is not None and worst >= 2.0,
            }
        max_rec = max(p["recall"] for c in drift["curves"] for p in c["points"])
        lt = drift["build"].get("load_plus_train_s")
        targets["max_recall"] = {"value": max_rec, "target": ">= 0.995", "met": max_rec >= 0.995}
        targets["load_plus_train_s"] = {"value": lt, "target": "<= 15", "met": lt is not None and lt <= 15.0}
        out["targets"] = targets
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    """recall@10 vs per-query q/s (log x), one curve per system/variant; drift's best frontier bold."""
    curves = []
    for run in result["runs"]:
        if "error" in run:
            continue
        many = len(run["curves"]) > 1
        for c in run["curves"]:
            label = f"{run['system']} {c['variant']}" if many else f"{run['system']} {run['variant']}"
            dashed = run["system"].startswith("faiss") and run.get("nlist") != _drift_nlist(result)
            curves.append(
                {
                    "label": label,
                    "system": run["system"],
                    "points": c["points"],
                    "dashed": dashed,
                    "alpha": 0.45 if many else 1.0,
                }
            )
        if many:
            front = common.pareto([p for c in run["curves"] for p in c["points"]])
            curves.append(
                {
                    "label": f"{run['system']} {run['variant']} (best of all)",
                    "system": run["system"],
                    "points": front,
                }
            )
    ds = result["dataset"]
    m = result["machine"]
    title = (
        f"{ds['name']} ({ds['n']:,}×{ds['d']}), recall@10 vs q/s, 1 thread, one query per call\n"
        f"{m['cpu_model']}, {m['cpu_count_logical']} logical CPUs, {m['date'][:10]}"
    )
    return common.plot_curves(title, curves, path)


def _drift_nlist(result: dict[str, Any]) -> int | None:
    return next((r.get("nlist") for r in result["runs"] if r["system"] == "drift" and "error" not in r), None)
