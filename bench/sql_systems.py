"""The systems of the SQL benchmark (``bench.sql``) and how each is timed.

Contract:

* ``System``: one SQL access path — its statement (one ``%s``: the query literal), its query literals, its
  knob (``nprobe`` for drift, given in the statement itself: ``AND nprobe = v`` on the foreign table,
  ``nprobe => v`` for ``drift.search``, so switching systems changes no collection state;
  ``hnsw.ef_search`` / ``ivfflat.probes`` for pgvector, set per session) and the knob values its sweep walks.
* ``sweep`` walks the knob upward on one connection and records recall@10 (against the given exact ground
  truth) and p50 / p99 of whole statements; it stops once recall >= 0.995.
* ``at_recall`` picks each system's fastest sweep point with recall >= a target.
* ``head_to_head`` times the chosen points again with the systems interleaved in blocks of ``BLOCK`` queries
  (a busy machine slows all alike), the systems' order shuffled from block to block (``block_order``): the
  first statement after another system's block runs with colder caches and, for drift, an engine that has
  stopped busy-waiting; in a fixed (or merely rotated) order one system would always follow the same other
  one, and pay that in every block while the system after it never does.
* ``concurrent`` runs ``clients`` processes (one connection each) per system, systems rotating in rounds of
  ``round_s`` seconds, and reports q/s and p50 / p99 per system.
Every statement's latency is wall time in the client, from ``execute`` to the last row fetched.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np

from drift_engine.datasets import pad_ids, recall_at_k

K = 10
BLOCK = 50
STOP_AT_RECALL = 0.995


class System:
    """``sql`` may hold ``{v}``: the knob given in the statement itself (drift's per-query ``nprobe``: nothing
    global changes between statements); otherwise ``knob`` is a session setting (pgvector's)."""

    def __init__(self, name: str, sql: str, params: list[str], knob: str, values: tuple[int, ...]) -> None:
        self.name, self.sql, self.params, self.knob, self.values = name, sql, params, knob, values
        self.value: int | None = None

    @property
    def inline(self) -> bool:
        return "{v}" in self.sql

    def sql_at(self, value: int | None) -> str:
        return self.sql.format(v=int(value)) if self.inline and value is not None else self.sql

    def knob_sql(self, value: int) -> str:
        """The session statement that sets this system's knob to ``value`` ("" for an inline knob)."""
        return "" if self.inline else f"SET {self.knob} = {int(value)}"

    def use(self, conn: Any, value: int) -> None:
        """Run the next statements at knob ``value``."""
        self.value = value
        if not self.inline:
            conn.execute(self.knob_sql(value))

    def run(self, conn: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sql = self.sql_at(self.value)
        found, lat = [], np.empty(len(idx))
        for j, i in enumerate(idx.tolist()):
            t0 = time.perf_counter()
            rows = conn.execute(sql, (self.params[i],)).fetchall()
            lat[j] = time.perf_counter() - t0
            found.append([r[0] for r in rows])
        return pad_ids(found, K), lat


def summary(lat: np.ndarray) -> dict[str, float]:
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    return {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4), "n": len(lat)}


def sweep(conn: Any, sysm: System, gt: np.ndarray, server: str) -> list[dict[str, Any]]:
    idx = np.arange(len(gt))
    curve = []
    for value in sysm.values:
        sysm.use(conn, value)
        sysm.run(conn, idx[: min(20, len(idx))])  # warm-up (plans, caches)
        ids, lat = sysm.run(conn, idx)
        curve.append({"value": value, "recall": round(recall_at_k(ids, gt, K), 4), **summary(lat)})
        print(f"  {sysm.name:<16} {sysm.knob}={value:<4} recall {curve[-1]['recall']:.4f}  "
              f"p50 {curve[-1]['p50_ms']:.3f} ms  p99 {curve[-1]['p99_ms']:.3f} ms", flush=True)  # fmt: skip
        if curve[-1]["recall"] >= STOP_AT_RECALL:
            break
    return curve


def at_recall(curves: dict[str, list[dict[str, Any]]], target: float) -> dict[str, dict[str, Any]]:
    """Each system's fastest (p50) sweep point with recall >= ``target``; systems that never reach it are left out."""
    out = {}
    for name, curve in curves.items():
        ok = [p for p in curve if p["recall"] >= target]
        if ok:
            best = min(ok, key=lambda p: p["p50_ms"])
            out[name] = {"value": best["value"], "recall": best["recall"]}
    return out


def block_order(names: list[str], rng: np.random.Generator) -> list[str]:
    """The systems' order for the next block: a random permutation (each system follows each other alike)."""
    return [names[i] for i in rng.permutation(len(names))]


def head_to_head(
    conn: Any, systems: dict[str, System], chosen: dict[str, dict[str, Any]], nq: int, server: str
) -> dict[str, dict[str, float]]:
    """The chosen points again, systems interleaved in blocks of BLOCK queries (random order, seed 0), their
    order shuffled from block to block; ``first_p50_ms``: the p50 of each block's first statement (right
    after another system's block: colder caches, a drift engine no longer busy-waiting)."""
    lat: dict[str, list[np.ndarray]] = {name: [] for name in chosen}
    first: dict[str, list[float]] = {name: [] for name in chosen}
    order = np.random.default_rng(0).permutation(nq)
    shuffle = np.random.default_rng(2)
    for start in range(0, nq, BLOCK):
        block = order[start : start + BLOCK]
        for name in block_order(list(chosen), shuffle):
            point = chosen[name]
            systems[name].use(conn, point["value"])
            lat[name].append(systems[name].run(conn, block)[1])
            first[name].append(float(lat[name][-1][0]))
    return {
        name: summary(np.concatenate(parts)) | {"first_p50_ms": round(float(np.median(first[name])) * 1e3, 4)}
        for name, parts in lat.items()
    }


def _client(dsn: dict[str, Any], sql: str, params: list[str], setup: str, seconds: float, seed: int, out: Any) -> None:
    import psycopg

    try:
        with psycopg.connect(**dsn, autocommit=True) as conn:
            if setup:
                conn.execute(setup)
            for p in params[:5]:
                conn.execute(sql, (p,)).fetchall()
            order = np.random.default_rng(seed).permutation(len(params))
            lat, i = [], 0
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                conn.execute(sql, (params[order[i % len(order)]],)).fetchall()
                lat.append(time.perf_counter() - t0)
                i += 1
        out.put({"latencies": lat})
    except Exception as exc:  # the parent raises it
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def concurrent(
    dsn: dict[str, Any],
    conn: Any,
    systems: dict[str, System],
    chosen: dict[str, dict[str, Any]],
    server: str,
    *,
    clients: int,
    rounds: int,
    round_s: float,
) -> dict[str, dict[str, float]]:
    """``clients`` processes per system, systems rotating for ``rounds`` rounds of ``round_s`` seconds each."""
    ctx = mp.get_context("spawn")
    lat: dict[str, list[float]] = {name: [] for name in chosen}
    wall: dict[str, float] = dict.fromkeys(chosen, 0.0)
    for r in range(rounds):
        for name, point in chosen.items():
            sysm = systems[name]
            setup = sysm.knob_sql(point["value"])
            sql = sysm.sql_at(point["value"])
            out = ctx.Queue()
            args = [(dsn, sql, sysm.params, setup, round_s, r * 1000 + c, out) for c in range(clients)]
            procs = [ctx.Process(target=_client, args=a) for a in args]
            for p in procs:
                p.start()
            results = [out.get(timeout=round_s + 300) for _ in procs]
            for p in procs:
                p.join(60)
            errors = [x["error"] for x in results if "error" in x]
            if errors:
                raise RuntimeError(f"{name}: {len(errors)} client(s) failed: {errors[0]}")
            for x in results:
                lat[name] += x["latencies"]
            wall[name] += round_s
    return {
        name: {"clients": clients, "qps": round(len(v) / wall[name], 1), **summary(np.array(v))}
        for name, v in lat.items()
    }


def plot(result: dict[str, Any], path: Any) -> None:
    """p50 latency against recall@10, one line per system (the sweeps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in result["sweeps"].items():
        ax.plot([p["recall"] for p in curve], [p["p50_ms"] for p in curve], marker="o", ms=3, label=name)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("p50 of a whole SQL statement (ms)")
    ax.set_yscale("log")
    load = result["machine"].get("load_average_1_5_15")
    ax.set_title(f"SQL kNN, {result['dataset']} ({result['rows']:,} rows), 1 client; load {load}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def after_train(
    conn: Any,
    systems: dict[str, System],
    chosen: dict[str, dict[str, Any]],
    server: str,
    *,
    retrain: str,
    seconds: float,
    nq: int,
) -> dict[str, Any]:
    """The first ``seconds`` after a retrain: ``retrain`` (a statement: the Maintainer back at its default duty,
    then ``drift.train``) runs, then the chosen points of every system run interleaved in blocks of BLOCK // 5
    queries (their order shuffled) until ``seconds`` have passed, while drift's background maintenance does
    what the retrain left."""
    t0 = time.perf_counter()
    conn.execute(retrain)
    train_s = time.perf_counter() - t0
    lat: dict[str, list[np.ndarray]] = {name: [] for name in chosen}
    order = np.random.default_rng(1).permutation(nq)
    block, start, deadline = max(1, BLOCK // 5), 0, time.perf_counter() + seconds
    shuffle = np.random.default_rng(3)
    while time.perf_counter() < deadline:
        idx = order[np.arange(start, start + block) % nq]
        start += block
        for name in block_order(list(chosen), shuffle):
            point = chosen[name]
            systems[name].use(conn, point["value"])
            lat[name].append(systems[name].run(conn, idx)[1])
    out: dict[str, Any] = {"retrain_s": round(train_s, 2), "seconds": seconds}
    out.update({name: summary(np.concatenate(parts)) for name, parts in lat.items()})
    return out
