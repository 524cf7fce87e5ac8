"""Checks of a data directory after a crash: the ack log says what must be there, the reopened engine says what is.

Contract:

* ``read_ack_log`` turns a driver's ack log into the acknowledged ops (in order) and the ops in flight (begun,
  never acknowledged; at most one per writer thread). ``expected_states`` gives the states (id -> version) the
  store may be in: the acknowledged state, with or without each in-flight write as the rule allows. A batch is
  one WAL record, so an in-flight batch is all there or not at all.
* ``verify_open`` inspects an open collection (test-only internal access: ``col._l1_lock``, ``col._kv``,
  ``col._snapshots``) and raises ``CrashCheckError`` naming every violation:

  - the visible ids (``col.get`` of every id ever named, and a full enumeration of memtables + live L1 rows)
    are exactly one allowed state, each id once, each with the vector and payload of its latest version;
    nothing that was never written; deletes stay deleted; ``len(col)`` agrees;
  - L1 is consistent: every LMDB location points at a live segment row holding that id (and every live row
    has that location), no live id twice in L1, dead masks / bucket headers in LMDB equal the snapshot's, every
    live segment row lies in exactly one bucket extent, bucket counts and running sums match the live rows, the
    LMDB payload of an L1 row is the one of the row's version, and the segment directory holds exactly the
    files LMDB references;
  - search is unchanged: recall@10 with every bucket probed is >= 0.99 against numpy brute force over the
    expected live vectors, results hold only live ids, once each, with exact distances (also with a filter),
    right after the reopen (memtables replayed from the WAL may still wait for the Janitor).
* ``write_more`` applies a few more writes (new, replaced, deleted ids; a flush) to an open collection and
  returns the new expected state, so a second reopen can check the recovered store keeps accepting writes.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drift_engine.index.buckets import BucketHeader
from drift_engine.l1 import layout as L
from drift_engine.storage.kv import decode_i64, encode_i64
from tests.crash.driver import DIM, WRITE_KINDS, centers, expected_result, payload_for, vector_for, vectors_for

RECALL_MIN = 0.99
K = 10
NPROBE_ALL = 1_000_000  # the API's cap; routing probes min(nprobe, buckets), even if maintenance splits meanwhile


class CrashCheckError(AssertionError):
    """A recovered store violates the crash contract; the message lists every violation found."""


@dataclass
class AckLog:
    """A driver's ack log, parsed."""

    acked: list[dict[str, Any]] = field(default_factory=list)  # of the last run
    in_flight: list[dict[str, Any]] = field(default_factory=list)  # of the last run: one per writer thread at most
    earlier: list[dict[str, Any]] = field(default_factory=list)  # ops of earlier runs (acked or not)
    runs: int = 0
    base_index: int | None = None  # which allowed state the last run found the store in (runs > 1)
    done: bool = False
    closed: bool = False
    errors: list[str] = field(default_factory=list)
    hits: dict[str, int] | None = None

    @property
    def ever_named(self) -> set[int]:
        ids: set[int] = set()
        for op in [*self.earlier, *self.acked, *self.in_flight]:
            ids.update(op.get("ids", ()))
        return ids


def read_ack_log(path: str) -> AckLog:
    out = AckLog()
    begun: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CrashCheckError(f"{path}:{n}: unreadable ack log line {line!r}: {exc}") from None
        phase = rec.pop("phase")
        if phase == "start":  # a new run: what the last one left in flight is settled by ``base``
            out.earlier += [*out.acked, *begun.values()]
            out.acked, out.done, out.closed = [], False, False
            begun.clear()
            out.runs += 1
            out.base_index = rec["base"]
        elif phase == "begin":
            same = [i for i, op in begun.items() if op.get("t", 0) == rec.get("t", 0)]
            if same:
                raise CrashCheckError(f"{path}:{n}: op {rec['i']} begun while op {same[0]} of its thread is in flight")
            begun[rec["i"]] = rec
        elif phase == "ack":
            op = begun.pop(rec["i"])
            op["result"] = rec["result"]
            out.acked.append(op)
        elif phase == "error":
            out.errors.append(f"op {rec['i']}: {rec['error']}")
        elif phase == "done":
            out.done = True
        elif phase == "closed":
            out.closed = True
        elif phase == "hits":
            out.hits = rec["hits"]
    out.in_flight = list(begun.values())
    return out


def apply_op(state: dict[int, int], op: dict[str, Any]) -> dict[int, int]:
    """The state after ``op`` (a new dict; flush/train change nothing logical)."""
    if op["op"] not in WRITE_KINDS:
        return state
    out = dict(state)
    for ident in op["ids"]:
        if op["op"] == "delete":
            out.pop(ident, None)
        else:
            out[ident] = op["version"]
    return out


def acknowledged_state(log: AckLog, base: dict[int, int] | None = None) -> tuple[dict[int, int], list[str]]:
    """State after every acknowledged op of the last run (from ``base``), and any acked result that was wrong."""
    state: dict[int, int] = dict(base or {})
    wrong: list[str] = []
    for op in log.acked:
        want = expected_result(op, state)
        if want is not None and op["result"] != want:
            wrong.append(f"op {op['i']} ({op['op']} {op['ids']}) returned {op['result']}, expected {want}")
        state = apply_op(state, op)
    return state, wrong


def expected_states(
    log: AckLog, in_flight_rule: str, base: dict[int, int] | None = None
) -> list[tuple[str, dict[int, int]]]:
    """Allowed states: ``in_flight_rule`` is ``"absent"``, ``"present"`` or ``"either"`` for the op in flight.

    With several writer threads (disjoint ids) each in-flight op may independently be there or not (``"either"``);
    a batch is all there or not at all.
    """
    state, _ = acknowledged_state(log, base)
    ops = [op for op in log.in_flight if op["op"] in WRITE_KINDS and apply_op(state, op) != state]
    if not ops:
        return [("acknowledged", state)]
    if len(ops) == 1:
        allowed = {"absent": [False], "present": [True], "either": [False, True]}[in_flight_rule]
        choices: list[tuple[bool, ...]] = [(a,) for a in allowed]
    else:
        if in_flight_rule != "either":
            raise ValueError(f"{len(ops)} ops in flight: only the 'either' rule applies")
        choices = list(itertools.product((False, True), repeat=len(ops)))
    out = []
    for choice in choices:
        st = state
        for op, applied in zip(ops, choice, strict=True):
            if applied:
                st = apply_op(st, op)
        if not any(choice):
            name = "acknowledged, in-flight op(s) lost"
        else:
            name = (
                "in-flight op(s) "
                + ", ".join(str(op["i"]) for op, a in zip(ops, choice, strict=True) if a)
                + " applied"
            )
        out.append((name, st))
    return out


# ------------------------------------------------------------------------------------------------ observing
def _payload(raw: bytes | None) -> dict | None:
    return None if raw is None else json.loads(raw)


def visible_state(col: Any, snap: Any, seed: int, probe: list[int], problems: list[str]) -> dict[int, int]:
    """id -> version of what the store shows (``get`` and a full enumeration must agree)."""
    # full enumeration: memtables newest first, then live L1 rows not hidden by a memtable
    resolved: dict[int, tuple[np.ndarray, dict | None] | None] = {}
    for level, mt in enumerate(snap.memtables):
        ids, vecs, pays = mt.items()
        if np.unique(ids).size != ids.size:
            problems.append(f"memtable {level} holds an id twice")
        for ident, vec, pay in zip(ids.tolist(), vecs, pays, strict=True):
            resolved.setdefault(ident, (vec, _payload(pay)))
        for ident in mt.tombstones():
            resolved.setdefault(ident, None)
    l1_rows: dict[int, tuple[int, int]] = {}
    for seg_id, seg in sorted(snap.segments.items()):
        live_rows = np.flatnonzero(snap.dead[seg_id] == 0)
        seg_ids, seg_vecs = seg.ids(), seg.vectors()
        for row in live_rows.tolist():
            ident = int(seg_ids[row])
            if ident in l1_rows:
                problems.append(f"id {ident} is live in L1 twice: segment/row {l1_rows[ident]} and {(seg_id, row)}")
            l1_rows[ident] = (seg_id, row)
            if ident not in resolved:
                raw = col._kv.get(L.DB_PAYLOAD, encode_i64(ident))
                resolved[ident] = (seg_vecs[row], _payload(raw))
    enumerated = {i: v for i, v in resolved.items() if v is not None}

    got = col.get(probe)
    by_get = {int(i): (got.vectors[j], got.payloads[j]) for j, i in enumerate(got.ids.tolist())}
    never = sorted(set(enumerated) - set(probe))
    if never:
        problems.append(f"{len(never)} id(s) that were never written are visible: {never[:5]}")
    only_enum = sorted(set(enumerated) & set(probe) - set(by_get))
    only_get = sorted(set(by_get) - set(enumerated))
    if only_enum or only_get:
        problems.append(f"get and enumeration disagree: only enumerated {only_enum[:5]}, only got {only_get[:5]}")

    state: dict[int, int] = {}
    for ident, (vec, pay) in by_get.items():
        if pay is None or "v" not in pay:
            problems.append(f"id {ident}: payload {pay!r} lacks its version")
            continue
        version = int(pay["v"])
        if pay != payload_for(ident, version):
            problems.append(f"id {ident}: payload {pay!r} is not the one version {version} wrote")
        if not np.array_equal(vec, vector_for(seed, ident, version)):
            problems.append(f"id {ident}: vector is not the one version {version} wrote (payload says v={version})")
        if ident in enumerated:
            evec, epay = enumerated[ident]
            if epay != pay or not np.array_equal(evec, vec):
                problems.append(f"id {ident}: get returns version {version}, enumeration {epay}")
        state[ident] = version
    return state


def check_l1(col: Any, snap: Any, seed: int, problems: list[str]) -> None:
    """LMDB locations / dead masks / bucket headers / segment files agree with the segments' contents."""
    kv = col._kv
    seg_refs = {decode_i64(k): json.loads(v) for k, v in kv.iterate(L.DB_SEGMENT)}
    if set(seg_refs) != set(snap.segments):
        problems.append(f"LMDB segments {sorted(seg_refs)} != snapshot segments {sorted(snap.segments)}")
    on_disk = set(os.listdir(col._seg_dir))
    referenced = {info["file"] for info in seg_refs.values()}
    if on_disk != referenced:
        problems.append(
            f"segment dir: unreferenced {sorted(on_disk - referenced)}, missing {sorted(referenced - on_disk)}"
        )
    for seg_id, seg in snap.segments.items():
        raw = kv.get(L.DB_DEAD, encode_i64(seg_id))
        stored = L.unpack_dead(raw, seg.n_rows) if raw else np.zeros(seg.n_rows, dtype=np.uint8)
        if not np.array_equal(stored, snap.dead[seg_id]):
            problems.append(f"segment {seg_id}: LMDB dead mask differs from the snapshot's")

    # which bucket extent covers each row
    owner = {seg_id: np.full(seg.n_rows, -1, dtype=np.int64) for seg_id, seg in snap.segments.items()}
    for b, header in snap.buckets.items():
        for ext in header.extents:
            if ext.segment_id not in owner:
                problems.append(f"bucket {b}: extent in unknown segment {ext.segment_id}")
                continue
            rows = owner[ext.segment_id][ext.start : ext.start + ext.count]
            if rows.size != ext.count or (rows != -1).any():
                problems.append(f"bucket {b}: extent {ext} overlaps another or runs past its segment")
            rows[:] = b
    for seg_id, rows in owner.items():
        orphans = (rows == -1) & (snap.dead[seg_id] == 0)  # a dead row may lie outside every extent (compaction)
        if orphans.any():
            problems.append(f"segment {seg_id}: {int(orphans.sum())} live row(s) in no bucket extent (unsearchable)")

    stored_buckets = {decode_i64(k): BucketHeader.from_bytes(v, DIM) for k, v in kv.iterate(L.DB_BUCKET)}
    if set(stored_buckets) != set(snap.buckets):
        problems.append(f"LMDB buckets {sorted(stored_buckets)} != snapshot buckets {sorted(snap.buckets)}")
    for b in set(stored_buckets) & set(snap.buckets):
        stored, mem = stored_buckets[b], snap.buckets[b]
        if stored.count != mem.count or stored.extents != mem.extents or stored.to_bytes() != mem.to_bytes():
            problems.append(f"bucket {b}: LMDB header (n={stored.count}) differs from the snapshot's (n={mem.count})")
    locs = {decode_i64(k): L.Location.unpack(v) for k, v in kv.iterate(L.DB_LOC)}
    payloads = {decode_i64(k): json.loads(v) for k, v in kv.iterate(L.DB_PAYLOAD)}
    live_rows = 0
    counts: dict[int, int] = {b: 0 for b in snap.buckets}
    sums: dict[int, np.ndarray] = {b: np.zeros(DIM, dtype=np.float64) for b in snap.buckets}
    for seg_id, seg in snap.segments.items():
        seg_ids, seg_vecs = seg.ids(), seg.vectors()
        for row in np.flatnonzero(snap.dead[seg_id] == 0).tolist():
            live_rows += 1
            ident = int(seg_ids[row])
            b = int(owner[seg_id][row])
            if b in counts:
                counts[b] += 1
                sums[b] += seg_vecs[row].astype(np.float64)
            loc = locs.get(ident)
            if loc is None or (loc.segment, loc.row) != (seg_id, row):
                problems.append(f"live L1 row {(seg_id, row)} holds id {ident} but LMDB locates it at {loc}")
            elif loc.bucket != b:
                problems.append(f"id {ident}: LMDB says bucket {loc.bucket}, its row lies in bucket {b}'s extent")
            pay = payloads.get(ident)
            if pay is None or not np.array_equal(seg_vecs[row], vector_for(seed, ident, int(pay.get("v", -1)))):
                problems.append(f"id {ident}: LMDB payload {pay} does not match the vector in L1 row {(seg_id, row)}")
    for ident, loc in locs.items():
        seg = snap.segments.get(loc.segment)
        if seg is None or not 0 <= loc.row < seg.n_rows:
            problems.append(f"id {ident}: LMDB location {loc} points outside every segment")
        elif int(seg.ids()[loc.row]) != ident or snap.dead[loc.segment][loc.row]:
            problems.append(f"id {ident}: LMDB location {loc} holds id {int(seg.ids()[loc.row])} (dead or other id)")
    if len(locs) != live_rows or snap.live_count != live_rows:
        problems.append(f"L1 live rows {live_rows}, LMDB locations {len(locs)}, snapshot live_count {snap.live_count}")
    if set(payloads) - set(locs):
        problems.append(f"LMDB payloads without a location: {sorted(set(payloads) - set(locs))[:5]}")
    for b, header in snap.buckets.items():
        if header.count != counts[b]:
            problems.append(f"bucket {b}: header count {header.count}, live rows in its extents {counts[b]}")
        elif not np.allclose(header.running_sum, sums[b], rtol=1e-6, atol=1e-3):
            problems.append(f"bucket {b}: running_sum differs from the sum of its live rows")


def check_search(col: Any, state: dict[int, int], seed: int, problems: list[str]) -> float:
    """Recall@10 (every bucket probed) against brute force over the expected live vectors; returns it."""
    ids = np.array(sorted(state), dtype=np.int64)
    rng = np.random.default_rng([seed, 99])
    c = centers(seed)
    queries = (c[rng.integers(len(c), size=12)] + rng.normal(size=(12, DIM))).astype(np.float32)
    nprobe = NPROBE_ALL
    if ids.size == 0:
        found, _ = col.search_batch(queries, k=K, nprobe=nprobe)
        if (found != -1).any():
            problems.append(f"empty collection returned ids {found[found != -1][:5].tolist()}")
        return 1.0
    vecs = np.stack([vector_for(seed, int(i), state[int(i)]) for i in ids])
    tags = np.array([payload_for(int(i), state[int(i)])["tag"] for i in ids])
    hits = total = 0
    misses: list[str] = []
    for flt in (None, {"tag": "t1"}):
        mask = np.ones(ids.size, dtype=bool) if flt is None else tags == flt["tag"]
        if not mask.any():
            continue
        sub_ids, sub_vecs = ids[mask], vecs[mask]
        found, dists = col.search_batch(queries, k=K, nprobe=nprobe, rerank=200, ef=400, filter=flt)
        k_eff = min(K, sub_ids.size)
        for q, row_ids, row_d in zip(queries, found, dists, strict=True):
            exact = np.linalg.norm(sub_vecs - q, axis=1)
            truth = set(sub_ids[np.argsort(exact, kind="stable")[:k_eff]].tolist())
            got = [int(i) for i in row_ids if i != -1]
            if len(got) != len(set(got)):
                problems.append(f"search (filter {flt}) returned an id twice: {got}")
            stray = [i for i in got if i not in set(sub_ids.tolist())]
            if stray:
                problems.append(f"search (filter {flt}) returned ids not live/matching: {stray[:5]}")
            for i, d in zip(got, row_d[: len(got)], strict=True):
                if i in state:
                    true_d = float(np.linalg.norm(vector_for(seed, i, state[i]) - q))
                    if abs(true_d - float(d)) > 1e-3 * max(1.0, true_d):
                        problems.append(f"search returned id {i} at distance {float(d)}, its vector is at {true_d}")
            hits += len(truth & set(got))
            total += k_eff
            if len(misses) < 3 and truth - set(got):
                misses.append(_describe_miss(col, q, flt, truth - set(got), got, state, seed))
    recall = hits / max(1, total)
    if recall < RECALL_MIN:
        problems.append(
            f"recall@{K} with every bucket probed is {recall:.3f} < {RECALL_MIN}; e.g. " + "; ".join(misses)
        )
    return recall


def _describe_miss(
    col: Any, q: np.ndarray, flt: dict | None, missed: set[int], got: list[int], state: dict[int, int], seed: int
) -> str:
    """Where the true neighbours a search missed live now (memtable level / L1 segment, row), for the report."""
    snap = col.snapshot
    where: dict[int, str] = {}
    for level, mt in enumerate(snap.memtables):
        for ident in missed:
            if ident not in where and mt.lookup(ident) != "absent":
                where[ident] = f"memtable {level} ({mt.lookup(ident)}, {len(mt)} live, frozen={mt.frozen})"
    for seg_id, seg in snap.segments.items():
        for row in np.flatnonzero(np.isin(seg.ids(), list(missed))).tolist():
            ident = int(seg.ids()[row])
            where.setdefault(ident, f"segment {seg_id} row {row} dead={int(snap.dead[seg_id][row])}")
    dist = {i: round(float(np.linalg.norm(vector_for(seed, i, state[i]) - q)), 3) for i in missed}
    got_d = [round(float(np.linalg.norm(vector_for(seed, i, state[i]) - q)), 3) for i in got if i in state]
    return (
        f"filter {flt}: missed {[(i, dist[i], where.get(i, '?')) for i in sorted(missed)]}, got distances {got_d}, "
        f"trained={snap.trained} buckets={len(snap.buckets)} memtables={[len(m) for m in snap.memtables]} "
        f"segments={len(snap.segments)}"
    )


def inspect(col: Any, seed: int, probe: list[int]) -> tuple[dict[int, int], list[str]]:
    """(visible state, problems) of an open collection, taken with the L1 lock held (no Janitor flush meanwhile)."""
    problems: list[str] = []
    with col._l1_lock, col._snapshots.pin() as snap:
        state = visible_state(col, snap, seed, probe, problems)
        check_l1(col, snap, seed, problems)
        if len(col) != len(state):
            problems.append(f"len(col) = {len(col)} but {len(state)} ids are visible")
    return state, problems


def diff_states(seen: dict[int, int], want: dict[int, int]) -> list[str]:
    missing = sorted(set(want) - set(seen))
    extra = sorted(set(seen) - set(want))
    stale = sorted(i for i in set(want) & set(seen) if want[i] != seen[i])
    out = []
    if missing:
        out.append(f"{len(missing)} acknowledged id(s) missing, e.g. {[(i, want[i]) for i in missing[:4]]}")
    if extra:
        out.append(f"{len(extra)} id(s) present that should not be (deleted or never acked): {extra[:4]}")
    if stale:
        out.append(f"{len(stale)} id(s) with a wrong version (seen, want): {[(seen[i], want[i]) for i in stale[:4]]}")
    return out


def verify_open(col: Any, seed: int, allowed: list[tuple[str, dict[int, int]]], probe: set[int]) -> dict[int, int]:
    """Check an open collection against the allowed states; returns the state it is in (raises otherwise)."""
    seen, problems = inspect(col, seed, sorted(probe))
    chosen = None
    mismatches: list[str] = []
    for name, want in allowed:
        diff = diff_states(seen, want)
        if not diff:
            chosen = want
            break
        mismatches.append(f"vs {name}: " + "; ".join(diff))
    if chosen is None:
        problems.extend(mismatches)
    else:
        check_search(col, chosen, seed, problems)
    if problems:
        raise CrashCheckError("\n  ".join(["recovered store is wrong:", *problems]))
    assert chosen is not None
    return chosen


def write_more(col: Any, seed: int, state: dict[int, int], base_version: int) -> tuple[dict[int, int], set[int]]:
    """A few writes after recovery (new, replace, delete, flush, new); returns (new state, ids named)."""
    rng = np.random.default_rng([seed, 4242])
    state = dict(state)
    named: set[int] = set()
    version = base_version

    def upsert(ids: list[int]) -> None:
        nonlocal version
        version += 1
        col.upsert(ids, vectors_for(seed, ids, version), [payload_for(i, version) for i in ids])
        state.update(dict.fromkeys(ids, version))
        named.update(ids)

    def fresh(n: int) -> list[int]:
        return [int(x) for x in rng.integers(-(1 << 62), 1 << 62, size=n, dtype=np.int64)]

    for _ in range(3):
        upsert(fresh(4))
    live = sorted(state)
    upsert([live[j] for j in rng.choice(len(live), size=min(5, len(live)), replace=False).tolist()])
    doomed = [live[j] for j in rng.choice(len(live), size=min(4, len(live)), replace=False).tolist()]
    want = sum(1 for i in doomed if i in state)
    if col.delete(doomed) != want:
        raise CrashCheckError(f"delete after recovery returned a wrong count (expected {want})")
    for i in doomed:
        state.pop(i, None)
    named.update(doomed)
    col.flush()
    upsert(fresh(3))
    return state, named
