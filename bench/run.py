"""Command line: ``python -m bench.run [--suite ann,kernel] [--datasets a,b] [--quick]``.

Pins every numeric library to one thread (before numpy / numba / faiss are imported), runs the
chosen suites, writes ``bench/results/ann_<dataset>.json`` + ``.png`` and ``bench/results/kernel.json``
(or under ``--out``) and prints a compact table. ``--quick`` is a smoke test (bigann-10k, few queries,
few sweep points; well under a minute once numba's cache is warm).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.threads import pin_env

DEFAULT_DATASETS = ("glove-6b-50d", "mnist-784")
QUICK_DATASETS = ("bigann-10k",)
QUERIES = {"glove-6b-50d": 2000, "mnist-784": 1000}
EXTRA_NLISTS = {"glove-6b-50d": [390]}  # 390 ≈ √n: the nlist of the reference FAISS numbers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="ann,kernel", help="comma list of: ann, kernel (default both)")
    ap.add_argument("--datasets", default=None, help="comma list (default glove-6b-50d,mnist-784; quick: bigann-10k)")
    ap.add_argument("--quick", action="store_true", help="smoke test: few queries and sweep points")
    ap.add_argument("--systems", default="drift,faiss-ivfsq8,faiss-ivfflat,hnswlib", help="ann systems to run")
    ap.add_argument("--queries", type=int, default=None, help="queries per dataset (default 2000 glove, 1000 else)")
    ap.add_argument("--point-budget", type=float, default=None, help="stop a sweep after a point slower than this (s)")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile of drift at its 0.95 point")
    ap.add_argument("--no-h2h", action="store_true", help="skip the head-to-head stage")
    ap.add_argument("--drift-variants", default="fresh,settled", help="drift variants: fresh, settled")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default bench/results)")
    ap.add_argument("--workdir", default=None, help="parent folder for drift's temporary data directory")
    return ap.parse_args(argv)


def _config(args: argparse.Namespace, dataset: str) -> Any:
    from bench.systems import AnnConfig

    cfg = AnnConfig(
        dataset=dataset,
        n_queries=args.queries or QUERIES.get(dataset, 1000),
        extra_nlists=list(EXTRA_NLISTS.get(dataset, [])),
        workdir=args.workdir,
    )
    if args.quick:
        cfg.n_queries = args.queries or 200
        cfg.nprobes = [1, 4, 16, 64]
        cfg.reranks = [4]
        cfg.efs = [16, 64, 256]
        cfg.extra_nlists = []
        cfg.point_budget_s = 5.0
        cfg.repeat_below_s = 0.5
        cfg.profile_queries = 200
        cfg.warmup_queries = 20
        cfg.h2h_rounds = 2
        cfg.h2h_block = 100
    if args.point_budget is not None:
        cfg.point_budget_s = args.point_budget
    if args.no_profile:
        cfg.profile_queries = 0
    if args.no_h2h:
        cfg.h2h_rounds = 0
    cfg.drift_variants = [v.strip() for v in args.drift_variants.split(",") if v.strip()]
    return cfg


def _fmt(v: Any, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def print_ann_table(result: dict[str, Any]) -> None:
    ds = result["dataset"]
    summ = result["summary"]
    print(f"\n== {ds['name']} ({ds['n']:,} x {ds['d']}), recall@10, 1 thread, one query per call ==")
    cols = ("q/s@.95", "cpu q/s", "batch", "p50 ms", "max rec", "build s", "idx MiB")
    head = f"{'system':40} " + " ".join(f"{c:>8}" for c in cols)
    print(head)
    print("-" * len(head))
    for name, row in summ["rows"].items():
        if "error" in row:
            print(f"{name:40} {row['error']}")
            continue
        vals = (
            _fmt(row["best_qps_at_0.95"]),
            _fmt(row["best_qps_cpu_at_0.95"]),
            _fmt(row["best_qps_batch_at_0.95"]),
            _fmt(row["p50_ms_at_0.95"], ".3f"),
            _fmt(row["max_recall"], ".4f"),
            _fmt(row["build_s"], ".1f"),
            _fmt(row["index_mib"], ".0f"),
        )
        print(f"{name[:40]:40} " + " ".join(f"{v:>8}" for v in vals))
    for variant, by_clock in summ.get("drift_over_faiss_sq8_qps_at_0.95", {}).items():
        for clock, ratios in by_clock.items():
            print(
                f"drift {variant} / FAISS IVF-SQ8 q/s at recall >= 0.95 ({clock}): "
                + ", ".join(f"{k} {_fmt(v, '.2f')}x" for k, v in ratios.items())
            )
    h2h = result.get("head_to_head") or {}
    if "systems" in h2h:
        print(f"head-to-head at recall >= 0.95 ({h2h['rounds']} rounds x {h2h['block']} queries, same time window):")
        for label, r in h2h["systems"].items():
            print(
                f"   {label[:38]:38} {r['qps_median']:8.0f} q/s  CPU {r['qps_cpu_median']:8.0f} q/s  "
                f"recall {r['recall']:.4f}  {r['param']}"
            )
    for variant, by_nlist in summ.get("drift_over_faiss_sq8_head_to_head", {}).items():
        print(
            f"drift {variant} / FAISS IVF-SQ8 head-to-head: "
            + ", ".join(f"{k} {r['wall']:.2f}x (CPU {r['cpu']:.2f}x)" for k, r in by_nlist.items())
        )
    for name, t in summ.get("targets", {}).items():
        print(f"target {name}: {t['value']} ({t['target']}) {'MET' if t['met'] else 'NOT MET'}")
    for run in result["runs"]:
        b = run.get("build", {}) if run.get("system") == "drift" else {}
        if b:
            extra = f", maintain {b['maintain_s']} s" if "maintain_s" in b else ""
            print(
                f"drift {run['variant']}: load {b.get('load_s')} s, train {b.get('train_s')} s{extra}, "
                f"open {b.get('open_s')} s; index changed during sweep: {run.get('index_changed_during_sweep')}"
            )
        prof = run.get("profile")
        if prof:
            print(
                f"drift {run['variant']} profile at {prof['param']}: {prof['unprofiled_cpu_us_per_query']} us "
                "CPU/query unprofiled; top self time per query (profiled):"
            )
            for r in prof["top_by_tottime"][:8]:
                print(f"   {r['tottime_us_per_query']:8.1f} us  {r['func']}")


def print_kernel_table(result: dict[str, Any]) -> None:
    print("\n== ADC kernel throughput (SQ8 code bytes/s, 1 thread, top-40 per scan; GB/s best / median) ==")
    for ds in result["datasets"]:
        if "error" in ds:
            print(f"{ds['dataset']}: ERROR {ds['error'].strip().splitlines()[-1]}")
            continue
        print(
            f"{ds['dataset']} ({ds['n']:,} x {ds['d']}); "
            f"drift/faiss SQ8 = {ds['drift_over_faiss_sq8_bytes_per_s']}x; "
            f"prepare_query {ds['prepare_query_us']} us"
        )
        for r in ds["results"]:
            print(
                f"   {r['name'][:48]:48} {r['gb_per_s_best']:7.2f} / {r['gb_per_s_median']:6.2f} GB/s "
                f"{r['us_per_scan_median']:9.1f} us/scan"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    early = pin_env()
    if early:
        print(f"warning: {', '.join(early)} imported before the thread pinning", file=sys.stderr)
    from bench import common
    from bench.ann import run_ann
    from bench.kernel import run_kernel

    out = args.out or common.RESULTS_DIR
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = set(suites) - {"ann", "kernel"}
    if unknown:
        print(f"unknown suite(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    default = QUICK_DATASETS if args.quick else DEFAULT_DATASETS
    datasets = [d.strip() for d in args.datasets.split(",")] if args.datasets else list(default)
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    t0 = time.perf_counter()
    failed = False
    if "ann" in suites:
        for ds in datasets:
            res = run_ann(_config(args, ds), out, systems)
            print_ann_table(res)
            failed |= any("error" in r for r in res["runs"])
    if "kernel" in suites:
        kres = run_kernel(datasets, n_queries=5 if args.quick else 20, rounds=2 if args.quick else 3, out_dir=out)
        print_kernel_table(kres)
        failed |= any("error" in d for d in kres["datasets"])
    print(f"\nresults in {out.name}/ ({time.perf_counter() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
