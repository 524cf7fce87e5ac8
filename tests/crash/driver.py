"""Child-process workload of the crash matrix: a seeded mix of writes, flushes, trains and maintenance, with an ack log.

Run as ``python -m tests.crash.driver --data DIR --log FILE --seed S --ops N`` (usually with
``DRIFT_CRASH_AT=<point>`` and ``DRIFT_CRASH_SKIP=<n>`` in the environment, see ``drift_engine.crashpoints``).

Contract:

* The workload is a pure function of ``--seed`` (and the options): op ``i`` (1-based) writes version ``i`` of
  its ids, and the value of an id at a version is re-derivable: ``vector_for(seed, id, version)`` and
  ``payload_for(id, version)``. So the ack log names ids and versions only. Ops: upserts (new ids, replacing
  live ids, re-adding deleted ones; batches of 1-10, one WAL record each), inserts, deletes (sometimes of an id
  never written), bulk upserts (``bulk_min`` ids: straight to L1), ``flush``, ``train`` and ``maintain``
  (when the engine has it). ids span the whole int64 range.
* The log starts with ``{"phase": "start", "run": R, "base": null}``. For every op the driver appends
  ``{"phase": "begin", ...op}`` BEFORE calling the engine and ``{"phase": "ack", "i": i, "result": r}`` only
  AFTER the call returned. Lines go straight to the file with one ``os.write`` each (no user-space buffer), so
  a SIGKILL loses none of them. At most one op is ever begun and not acknowledged: the one in flight when the
  process died.
* After the last op: ``{"phase": "done", "janitor_flushes": n}``, then ``Engine.close()``, then ``{"phase": "closed"}``.
* ``--run R --base FILE`` continues on a crashed directory (a second crash, soon after recovery): FILE holds
  the states the store may be in (``{"states": [[[id, version], ...], ...], "named": [ids]}``); the driver
  finds the one ``col.get`` shows, logs ``{"phase": "start", "run": R, "base": index}`` (or an ``error`` and
  exit 3 when none matches) and goes on from it; run R's ops are numbered ``(R - 1) * 100000 + 1 ...``.
* ``--threads T`` runs T writer threads, each with its own op stream over the ids with ``id % T == t``; op
  numbers (= versions) interleave (``k * T + t + 1``) and ``begin`` lines carry ``"t"``. One op per thread may
  be in flight at a crash.
* ``--count-hits`` (calibration, no crash): counts how often each crash point is reached and logs
  ``{"phase": "hits", "hits": {...}}`` at the end. It replaces ``crashpoints.hit`` in this process only.
* ``--wal-file-bytes`` shrinks the WAL's file size (test-only patch of ``engine.writes.WriteAheadLog`` in this
  process) so WAL rotation and truncation (flush step 4) happen within a short run.

The Janitor (flushes of frozen memtables) and the Maintainer (split / merge / compaction; the run sets a short
``maintain_interval``) work on their own threads, so a flush or maintenance crash point may fire there while
the main thread is in the middle of a write: that write is then the op in flight.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

COLLECTION = "crash"
DIM = 16
N_CENTERS = 8
_ID_OFFSET = 1 << 63  # SeedSequence entropy must be non-negative; ids span the whole int64 range

BASE_POINTS = (
    "wal.before_write",
    "wal.after_write",
    "wal.after_fsync",
    "flush.after_segments",
    "flush.after_commit",
    "flush.after_publish",
    "flush.after_truncate",
    "retire.before_delete",
    "train.after_segments",
    "train.after_commit",
)
MAINTAIN_POINTS = ("maintain.after_segments", "maintain.after_commit")  # split / merge / compaction


def has_maintenance() -> bool:
    """Whether this engine has L1 maintenance (``Collection.maintain``, a background Maintainer)."""
    from drift_engine.engine.collection import Collection

    return hasattr(Collection, "maintain")


CRASH_POINTS = BASE_POINTS + (MAINTAIN_POINTS if has_maintenance() else ())

WRITE_KINDS = ("upsert", "insert", "bulk", "delete")
RUN_STRIDE = 100_000  # op numbers (= versions) of run R start at (R - 1) * RUN_STRIDE + 1
EXIT_BAD_BASE = 3


@dataclass(frozen=True)
class Settings:
    """Collection parameters and engine settings of a run (the parent reopens with the same ones)."""

    durability: str = "sync"
    memtable_max_vectors: int = 24
    bulk_min: int = 40
    auto_train_threshold: int = 0
    target_bucket_size: int = 16
    wal_file_bytes: int = 16 << 10
    maintain_interval: float = 0.05  # the background Maintainer checks often, so it runs during the workload
    threads: int = 1  # writer threads, each with its own ids (id % threads) and op stream

    def collection_params(self) -> dict[str, Any]:
        from drift_engine.config import PARAM_SPECS

        params: dict[str, Any] = {
            "memtable_max_vectors": self.memtable_max_vectors,
            "bulk_min": self.bulk_min,
            "auto_train_threshold": self.auto_train_threshold,
            "target_bucket_size": self.target_bucket_size,
        }
        if "maintain_interval" in PARAM_SPECS:
            params["maintain_interval"] = self.maintain_interval
        return params

    def argv(self) -> list[str]:
        return [
            "--durability",
            self.durability,
            "--memtable",
            str(self.memtable_max_vectors),
            "--bulk-min",
            str(self.bulk_min),
            "--auto-train",
            str(self.auto_train_threshold),
            "--bucket-size",
            str(self.target_bucket_size),
            "--wal-file-bytes",
            str(self.wal_file_bytes),
            "--maintain-interval",
            str(self.maintain_interval),
            "--threads",
            str(self.threads),
        ]


@functools.lru_cache(maxsize=64)
def centers(seed: int) -> np.ndarray:
    """Cluster centres of a seed's data (so ``train`` has structure to find)."""
    return (np.random.default_rng([seed, 7]).normal(size=(N_CENTERS, DIM)) * 3.0).astype(np.float32)


@functools.lru_cache(maxsize=1 << 16)
def vector_for(seed: int, ident: int, version: int) -> np.ndarray:
    """The float32 vector that op ``version`` of run ``seed`` writes for ``ident`` (read-only, cached)."""
    rng = np.random.default_rng([seed, ident + _ID_OFFSET, version])
    c = centers(seed)[int(rng.integers(N_CENTERS))]
    vec = (c + rng.normal(size=DIM)).astype(np.float32)
    vec.setflags(write=False)
    return vec


def vectors_for(seed: int, ids: list[int], version: int) -> np.ndarray:
    out = np.empty((len(ids), DIM), dtype=np.float32)
    for j, ident in enumerate(ids):
        out[j] = vector_for(seed, ident, version)
    return out


def payload_for(ident: int, version: int) -> dict[str, Any]:
    """The payload that op ``version`` writes for ``ident``."""
    return {"v": version, "tag": f"t{version % 3}", "id": str(ident)}


@dataclass
class Workload:
    """The seeded op generator; ``live`` / ``deleted`` track what acknowledged ops did (id -> version)."""

    seed: int
    settings: Settings
    run: int = 1
    maintenance: bool = False  # the engine has ``Collection.maintain``: use it as an op
    thread: int = 0  # this stream's ids are those with id % threads == thread
    threads: int = 1
    rng: np.random.Generator = field(init=False)
    live: dict[int, int] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)
    written: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        key = (
            [self.seed, 1]
            if (self.run, self.threads) == (1, 1)
            else [self.seed, 1, self.run, self.thread, self.threads]
        )
        self.rng = np.random.default_rng(key)

    def owns(self, ident: int) -> bool:
        return ident % self.threads == self.thread

    def start_from(self, state: dict[int, int], named: set[int]) -> None:
        """Continue from a recovered ``state`` (every id ever ``named``): keep the ids this stream owns."""
        self.live = {i: v for i, v in state.items() if self.owns(i)}
        self.written = {i for i in named if self.owns(i)}
        self.deleted = sorted(self.written - set(self.live))

    def _new_ids(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            ident = int(self.rng.integers(-(1 << 63), (1 << 63) - 1, dtype=np.int64))
            if ident not in self.written and ident not in out and self.owns(ident):
                out.append(ident)
        return out

    def _pick(self, pool: list[int], n: int) -> list[int]:
        n = min(n, len(pool))
        return [pool[j] for j in sorted(self.rng.choice(len(pool), size=n, replace=False).tolist())]

    def _batch_size(self) -> int:
        return 1 if self.rng.random() < 0.4 else int(self.rng.integers(2, 9))

    def next_op(self, i: int) -> dict[str, Any]:
        """Op number ``i`` (1-based): a dict with ``op`` and, for writes, ``ids`` (and ``version`` = i)."""
        live = list(self.live)
        r = self.rng.random()
        if r < 0.30 or not live:
            return {"op": "upsert", "ids": self._new_ids(self._batch_size()), "version": i}
        if r < 0.52:
            ids = self._pick(live, self._batch_size())
            if self.rng.random() < 0.3:
                ids += self._new_ids(int(self.rng.integers(1, 3)))
            return {"op": "upsert", "ids": ids, "version": i}
        if r < 0.60:
            return {"op": "insert", "ids": self._new_ids(self._batch_size()), "version": i}
        if r < 0.65 and self.deleted:
            return {"op": "upsert", "ids": self._pick(self.deleted, int(self.rng.integers(1, 4))), "version": i}
        if r < 0.80:
            ids = self._pick(live, int(self.rng.integers(1, 5)))
            if self.rng.random() < 0.2:
                ids += self._new_ids(1)  # never written: deleting it is a no-op
            return {"op": "delete", "ids": ids, "version": i}
        if r < 0.83:
            return {"op": "flush"}
        if r < 0.91 and len(live) >= 24:
            k = None if self.rng.random() < 0.3 else int(self.rng.integers(2, min(8, len(live) // 4) + 1))
            return {"op": "train", "n_buckets": k}
        if r < 0.94:
            n = self.settings.bulk_min
            old = self._pick(live, int(self.rng.integers(0, min(n // 2, len(live)) + 1)))
            return {"op": "bulk", "ids": old + self._new_ids(n - len(old)), "version": i}
        if r < 0.98 and self.maintenance:
            return {"op": "maintain"}
        return {"op": "upsert", "ids": self._new_ids(self._batch_size()), "version": i}

    def acknowledge(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind in ("upsert", "insert", "bulk"):
            for ident in op["ids"]:
                self.live[ident] = op["version"]
                self.written.add(ident)
                if ident in self.deleted:
                    self.deleted.remove(ident)
        elif kind == "delete":
            for ident in op["ids"]:
                self.written.add(ident)
                if self.live.pop(ident, None) is not None:
                    self.deleted.append(ident)


def expected_result(op: dict[str, Any], live: dict[int, int]) -> int | None:
    """What the API call of a write op must return, given the acknowledged state before it."""
    if op["op"] in ("upsert", "insert", "bulk"):
        return len(op["ids"])
    if op["op"] == "delete":
        return sum(1 for ident in op["ids"] if ident in live)
    return None


class AckLog:
    """Append-only JSON-lines file written with one ``os.write`` per line (survives SIGKILL)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def _install_hit_counter() -> dict[str, int]:
    from drift_engine import crashpoints

    hits: dict[str, int] = {}

    def count(name: str) -> None:
        hits[name] = hits.get(name, 0) + 1

    crashpoints.hit = count
    crashpoints.ENABLED = True
    return hits


def _shrink_wal_files(max_file_bytes: int) -> None:
    from drift_engine.engine import writes

    writes.WriteAheadLog = functools.partial(writes.WriteAheadLog, max_file_bytes=max_file_bytes)


def open_collection(data: str, settings: Settings) -> tuple[Any, Any]:
    """``Engine.open(data)`` and the crash collection (created with the run's parameters if missing)."""
    from drift_engine import Engine

    engine = Engine.open(data, durability=settings.durability)
    if engine.has_collection(COLLECTION):
        return engine, engine.collection(COLLECTION)
    return engine, engine.create_collection(COLLECTION, dim=DIM, metric="l2", **settings.collection_params())


def run_op(col: Any, seed: int, op: dict[str, Any]) -> Any:
    kind = op["op"]
    if kind in ("upsert", "bulk", "insert"):
        ids, version = op["ids"], op["version"]
        call: Callable[..., Any] = col.insert if kind == "insert" else col.upsert
        return call(ids, vectors_for(seed, ids, version), [payload_for(i, version) for i in ids])
    if kind == "delete":
        return col.delete(op["ids"])
    if kind == "flush":
        return col.flush()
    if kind == "train":
        return col.train(n_buckets=op["n_buckets"])["buckets"]
    if kind == "maintain":
        return col.maintain().get("jobs")
    raise ValueError(f"unknown op {kind!r}")


def match_base(col: Any, base_file: str) -> tuple[int | None, dict[int, int], set[int]]:
    """(index of the allowed state the store is in, or None; that state; every id named so far)."""
    with open(base_file, encoding="utf-8") as f:
        spec = json.load(f)
    states = [{int(i): int(v) for i, v in st} for st in spec["states"]]
    named = {int(i) for i in spec["named"]}.union(*states)
    got = col.get(sorted(named))
    seen = {int(i): int((p or {}).get("v", -1)) for i, p in zip(got.ids.tolist(), got.payloads, strict=True)}
    for index, state in enumerate(states):
        if state == seen:
            return index, state, named
    return None, seen, named


def run(
    data: str,
    log_path: str,
    seed: int,
    n_ops: int,
    settings: Settings,
    *,
    count_hits: bool = False,
    run_no: int = 1,
    base_file: str | None = None,
) -> int:
    hits = _install_hit_counter() if count_hits else None
    if settings.wal_file_bytes:
        _shrink_wal_files(settings.wal_file_bytes)
    log = AckLog(log_path)
    engine, col = open_collection(data, settings)
    n_threads = settings.threads
    works = [Workload(seed, settings, run_no, has_maintenance(), t, n_threads) for t in range(n_threads)]
    base_index = None
    if base_file is not None:
        base_index, state, named = match_base(col, base_file)
        if base_index is None:
            seen = sorted(state.items())[:8]
            log.write({"phase": "error", "i": 0, "error": f"after recovery the store shows no allowed state: {seen}"})
            return EXIT_BAD_BASE
        for work in works:
            work.start_from(state, named)
    log.write({"phase": "start", "run": run_no, "base": base_index})
    first = (run_no - 1) * RUN_STRIDE
    failures: list[BaseException] = []

    def worker(t: int) -> None:
        work = works[t]
        try:
            for k in range(n_ops // n_threads):
                i = first + k * n_threads + t + 1  # unique across threads: the version this op writes
                op = work.next_op(i)
                log.write({"phase": "begin", "i": i, "t": t, **op})
                result = run_op(col, seed, op)
                want = expected_result(op, work.live)
                if want is not None and result != want:
                    log.write({"phase": "error", "i": i, "error": f"{op['op']} returned {result!r}, expected {want}"})
                log.write({"phase": "ack", "i": i, "result": result})
                work.acknowledge(op)
        except BaseException as exc:
            failures.append(exc)
            raise

    if n_threads == 1:
        worker(0)
    else:
        pool = [threading.Thread(target=worker, args=(t,), name=f"crash-writer-{t}") for t in range(n_threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        if failures:
            raise failures[0]
    log.write({"phase": "done", "janitor_flushes": col.stats()["janitor_flushes"]})
    engine.close()
    log.write({"phase": "closed"})
    if hits is not None:
        log.write({"phase": "hits", "hits": hits})
    log.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="engine data directory (created if missing)")
    p.add_argument("--log", required=True, help="acknowledgement log (JSON lines, appended)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--ops", type=int, default=100)
    p.add_argument("--durability", default="sync", choices=("sync", "batch", "off"))
    p.add_argument("--memtable", type=int, default=Settings.memtable_max_vectors)
    p.add_argument("--bulk-min", type=int, default=Settings.bulk_min)
    p.add_argument("--auto-train", type=int, default=Settings.auto_train_threshold)
    p.add_argument("--bucket-size", type=int, default=Settings.target_bucket_size)
    p.add_argument("--wal-file-bytes", type=int, default=Settings.wal_file_bytes, help="0 = engine default")
    p.add_argument("--maintain-interval", type=float, default=Settings.maintain_interval)
    p.add_argument("--threads", type=int, default=Settings.threads, help="writer threads (disjoint ids)")
    p.add_argument("--count-hits", action="store_true", help="calibration: count crash-point hits, never crash")
    p.add_argument("--run", type=int, default=1, help="run number (> 1: continue on a crashed directory)")
    p.add_argument("--base", help="JSON file with the states the store may be in (with --run > 1)")
    a = p.parse_args(argv)
    settings = Settings(
        durability=a.durability,
        memtable_max_vectors=a.memtable,
        bulk_min=a.bulk_min,
        auto_train_threshold=a.auto_train,
        target_bucket_size=a.bucket_size,
        wal_file_bytes=a.wal_file_bytes,
        maintain_interval=a.maintain_interval,
        threads=a.threads,
    )
    return run(a.data, a.log, a.seed, a.ops, settings, count_hits=a.count_hits, run_no=a.run, base_file=a.base)


if __name__ == "__main__":
    sys.exit(main())
