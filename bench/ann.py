"""Recall@10 vs queries/s on one dataset: drift, FAISS IVF-SQ8, FAISS IVF-Flat and hnswlib.

Order of a run (each system in its own spawned process, see ``bench.isolate``; indexes are kept in a
temporary workspace until the end, then removed):

1. drift, variants ``fresh`` and ``settled`` (``bench.ann_drift``): upsert in 50k batches, ``train()``
   with default parameters (``settled``: then ``maintain()`` until nothing is pending), reopen in a fresh
   process, sweep nprobe × rerank;
2. FAISS IVF-SQ8 and IVF-Flat with ``nlist`` = the bucket count drift's ``train()`` made (plus any
   ``extra_nlists``, e.g. 390 ≈ √n for glove, the nlist of the reference numbers), nprobe sweep;
3. hnswlib M=16, ef_construction=200, ef sweep;
4. head-to-head (``bench.h2h``): every system at its recall-0.95 point, in the same time window.

The headline q/s is a Python loop with one search call per query, 1 thread, for every system: that
is the path a client of drift's per-query API takes, so it is the apples-to-apples comparison. It is
reported over wall time (``qps``) and process CPU time (``qps_cpu``); the batched q/s (one call for all
queries) is recorded beside it as ``qps_batch``.

``run_ann`` writes ``ann_<dataset>.json`` and ``ann_<dataset>.png`` and returns the JSON dict, whose
``summary`` holds, per system and variant: best q/s at recall@10 ≥ 0.95, max recall, build times,
memory; the ratio of drift's q/s at recall ≥ 0.95 to FAISS IVF-SQ8's (from the sweeps and from the
head-to-head); and, for glove, the issue's targets.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.ann_drift import run_drift
from bench.h2h import head_to_head, operating_point
from bench.isolate import run_isolated
from bench.systems import AnnConfig, index_path, run_faiss, run_hnswlib

TARGET = common.RECALL_TARGET


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


def run_ann(cfg: AnnConfig, out_dir: Path = common.RESULTS_DIR, systems: tuple[str, ...] | None = None) -> dict:
    """Benchmark every system on ``cfg.dataset``; write JSON + PNG; return the result dict."""
    systems = systems or ("drift", "faiss-ivfsq8", "faiss-ivfflat", "hnswlib")
    workspace = tempfile.mkdtemp(prefix="drift-bench-", dir=cfg.workdir)
    cfg = dataclasses.replace(cfg, workspace=workspace if cfg.h2h_rounds else None)
    try:
        runs = _run_systems(cfg, systems)
        h2h = _head_to_head(cfg, runs) if cfg.h2h_rounds else None
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    result = {
        "benchmark": "ann",
        "dataset": _dataset_info(cfg.dataset),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("workdir", "workspace")},
        "machine": common.machine_info(),
        "method": (
            "recall@10 against exact L2 ground truth on a fixed random subset of the queries (seed "
            f"{cfg.seed}); qps = one search call per query in a Python loop, 1 thread (the per-query "
            "API path, the apples-to-apples comparison); qps_cpu = the same over process CPU time; "
            "qps_batch = one call for all queries, 1 thread; each system in its own process; builds "
            "single-threaded; head_to_head = every system at its recall-0.95 point in the same time window"
        ),
        "runs": runs,
        "head_to_head": h2h,
    }
    result["summary"] = summarize(runs, cfg.dataset, h2h)
    name = f"ann_{cfg.dataset}"
    common.write_json(name, result, out_dir)
    plot(result, out_dir / f"{name}.png")
    return result


def _run_systems(cfg: AnnConfig, systems: tuple[str, ...]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    nlist = 0
    if "drift" in systems:
        for variant in cfg.drift_variants:
            _log(f"{cfg.dataset}: drift {variant} (load, train{', maintain' if variant == 'settled' else ''}, sweep)")
            drift = run_drift(cfg, variant)  # two processes of its own: build, then serve
            runs.append(drift)
            _log(f"  drift {variant}: {_brief(drift)}")
            nlist = nlist or int(drift.get("nlist") or 0)  # FAISS gets the bucket count train() made
    if nlist <= 0:
        nlist = max(1, round(_dataset_info(cfg.dataset)["n"] / 256))
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
    return runs


def _head_to_head(cfg: AnnConfig, runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every run that reached recall 0.95, at its operating point, side by side (``bench.h2h``)."""
    entries = []
    for run in runs:
        op = None if "error" in run else operating_point(run)
        if op is None:
            continue
        label = f"{run['system']} {run['variant']}"
        if run["system"] == "drift":
            entry = {"kind": "drift", "path": index_path(cfg, f"drift-{run['drift_variant']}")}
        elif run["system"].startswith("faiss"):
            entry = {"kind": "faiss", "path": index_path(cfg, f"{run['system']}-nlist{run['nlist']}")}
        else:
            entry = {"kind": "hnswlib", "path": index_path(cfg, "hnswlib")}
        entries.append({**entry, "label": label, "system": run["system"], "param": op["param"]})
    if not entries:
        return None
    _log(f"{cfg.dataset}: head-to-head of {len(entries)} systems at recall 0.95, {cfg.h2h_rounds} rounds")
    res = run_isolated(head_to_head, cfg, entries)
    if "error" in res:
        _log("  head-to-head: " + _brief(res))
        return res
    for e in entries:
        res["systems"][e["label"]]["system"] = e["system"]
    for label, r in res["systems"].items():
        _log(
            f"  {label}: {r['qps_median']:.0f} q/s (CPU {r['qps_cpu_median']:.0f}) "
            f"at {r['param']}, recall {r['recall']}"
        )
    return res


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
        ratios[f"nlist={r['nlist']}"] = round(d_best[key] / f_best[key], 2) if d_best and f_best else None
        if f_best:
            bests.append(f_best[key])
    if d_best and bests:
        ratios["vs_best_faiss_sq8"] = round(d_best[key] / max(bests), 2)
    return ratios


def _h2h_ratios(h2h: dict[str, Any] | None, drift_label: str) -> dict[str, Any]:
    """drift's head-to-head q/s over each FAISS IVF-SQ8's (medians; wall and CPU clocks)."""
    if not h2h or "systems" not in h2h or drift_label not in h2h["systems"]:
        return {}
    d = h2h["systems"][drift_label]
    out: dict[str, Any] = {}
    for label, f in h2h["systems"].items():
        if f.get("system") == "faiss-ivfsq8":
            out[label.split(" ", 1)[1]] = {
                "wall": round(d["qps_median"] / f["qps_median"], 2),
                "cpu": round(d["qps_cpu_median"] / f["qps_cpu_median"], 2),
            }
    return out


def summarize(runs: list[dict[str, Any]], dataset: str, h2h: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per system/variant bests, drift vs FAISS IVF-SQ8 ratios (sweeps and head-to-head), and (glove) the
    issue's targets — the q/s target judged on the head-to-head ratio when there is one."""
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
    drifts = [r for r in runs if r["system"] == "drift" and "error" not in r]
    sq8 = [r for r in runs if r["system"] == "faiss-ivfsq8" and "error" not in r]
    ratios: dict[str, Any] = {}
    h2h_ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for drift in drifts:
        v = drift.get("drift_variant", drift["variant"])
        ratios[v] = {"wall": _ratios(drift, sq8, "qps"), "cpu": _ratios(drift, sq8, "qps_cpu")}
        h2h_ratios[v] = _h2h_ratios(h2h, f"drift {drift['variant']}")
        if not dataset.startswith("glove"):
            continue
        if h2h_ratios[v]:
            source = "head-to-head"
            by_clock = {c: [r[c] for r in h2h_ratios[v].values()] for c in ("wall", "cpu")}
        else:
            source = "sweeps"
            by_clock = {c: [x for x in ratios[v][c].values() if x is not None] for c in ("wall", "cpu")}
        for clock, values in by_clock.items():
            worst = min(values, default=None)
            targets[f"{v}: drift/faiss-sq8 q/s at 0.95 ({source}, {clock}, min over nlists)"] = {
                "value": worst,
                "target": ">= 2.0",
                "met": worst is not None and worst >= 2.0,
            }
        max_rec = max(p["recall"] for c in drift["curves"] for p in c["points"])
        lt = drift["build"].get("load_plus_train_s")
        targets[f"{v}: max recall"] = {"value": max_rec, "target": ">= 0.995", "met": max_rec >= 0.995}
        targets[f"{v}: load + train s"] = {"value": lt, "target": "<= 15", "met": lt is not None and lt <= 15.0}
    if ratios:
        out["drift_over_faiss_sq8_qps_at_0.95"] = ratios
    if any(h2h_ratios.values()):
        out["drift_over_faiss_sq8_head_to_head"] = h2h_ratios
    if targets:
        out["targets"] = targets
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    """recall@10 vs per-query q/s (log x): FAISS / hnswlib one curve per run (FAISS dashed when its nlist is
    not drift's bucket count); drift one frontier per variant over its rerank values."""
    curves = []
    for run in result["runs"]:
        if "error" in run:
            continue
        if run["system"] == "drift":  # one frontier per variant, over its rerank values
            settled = run.get("drift_variant") == "settled"
            reranks = ",".join(c["variant"].split("=")[-1] for c in run["curves"])
            curves.append(
                {
                    "label": f"drift {run['variant']} (best of rerank {reranks})",
                    "system": "drift-settled" if settled else "drift",
                    "points": [p for c in run["curves"] for p in c["points"]],
                    "frontier": True,
                }
            )
            continue
        dashed = run["system"].startswith("faiss") and run.get("nlist") != _drift_nlist(result)
        for c in run["curves"]:
            curves.append(
                {
                    "label": f"{run['system']} {run['variant']}",
                    "system": run["system"],
                    "points": c["points"],
                    "dashed": dashed,
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
    """The bucket count the first drift variant trained (the nlist FAISS was given to match it)."""
    return next((r.get("nlist") for r in result["runs"] if r["system"] == "drift" and "error" not in r), None)
