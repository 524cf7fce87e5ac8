"""Point reads (``get``) and full scans (``scan``), each answered from ONE pinned snapshot.

Contract:

* ``PointReads.get(snap, ids)`` returns, for each requested id that is live in ``snap``, its vector and
  payload *as of ``snap``*: the newest memtable of ``snap`` that mentions the id decides (live: its
  entry; tombstoned: absent); otherwise the id's live L1 row in ``snap``'s segments, with ``snap``'s
  payload. A flush, bulk write, train or maintenance move that commits while the read runs changes
  nothing in the answer -- no retries, no sleeping, no lock. The current LMDB location of an id is only
  a hint: it is used when it points at a row that is live in ``snap``; otherwise the row is looked up in
  ``snap``'s own segments (``OpenSegment.rows_of``). Payloads of L1 rows come from LMDB unless the
  payload history (``snapshot`` module docstring) says a commit after ``snap`` changed that id, in which
  case the recorded prior state is ``snap``'s.
* Memtables are shared, append-only objects: a write landing in ``snap``'s active memtable during the
  read may or may not be seen (it was not acknowledged before the read started).
* ``PointReads.scan(snap, batch, ...)`` yields ``GetResult`` batches of at most ``batch`` rows: every
  id live in ``snap``, each once, in increasing id order, with the same values ``get(snap, ...)`` returns.
  The active memtable's entries are copied once, under the write lock (so a delete and a re-insert
  cannot both be missed); frozen memtables and segments are immutable. Unrequested vectors are a
  zero-filled read-only view of shape ``(n, dim)`` and unrequested payloads are ``None``.
* An L1 row that LMDB and the payload history say must exist but that ``snap`` does not hold is an
  engine invariant violation: ``CorruptionError`` naming the id, never a silently wrong answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import numpy as np

from drift_engine.engine.results import GetResult
from drift_engine.errors import CorruptionError
from drift_engine.l1 import layout as L
from drift_engine.l1.snapshot import NOT_IN_L1, Snapshot, SnapshotManager
from drift_engine.storage.kv import KV, encode_i64

_MISSING = object()


class PointReads:
    def __init__(self, kv: KV, snapshots: SnapshotManager, dim: int, write_lock: threading.Lock) -> None:
        self._kv = kv
        self._snapshots = snapshots
        self._dim = dim
        self._write_lock = write_lock

    # ------------------------------------------------------------------ get
    def get(self, snap: Snapshot, ids: np.ndarray, *, vectors: bool = True) -> GetResult:
        """Live ids of ``ids`` (request order, duplicates kept) with their vectors and payloads in ``snap``;
        ``vectors=False`` reads no vector (the result's are zeros): what a search's payload loader needs."""
        id_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = id_arr.size
        found = np.zeros(n, dtype=bool)
        out_vec = np.zeros((n, self._dim), dtype=np.float32)
        payloads: list[bytes | None] = [None] * n
        todo = np.arange(n)
        for mt in snap.memtables:  # newest first
            if todo.size == 0:
                break
            hidden = mt.hides(id_arr[todo])
            if not hidden.any():
                continue
            here = todo[hidden]
            got_ids, got_vecs, got_pay = mt.get(id_arr[here])
            row_of = {ident: r for r, ident in enumerate(got_ids.tolist())}
            for j in here.tolist():  # hidden here but not live any more: deleted meanwhile -> absent
                r = row_of.get(int(id_arr[j]))
                if r is not None:
                    found[j] = True
                    out_vec[j] = got_vecs[r]
                    payloads[j] = got_pay[r]
            todo = todo[~hidden]
        if todo.size:
            self._get_l1(snap, id_arr, todo, found, out_vec if vectors else None, payloads)
        keep = np.flatnonzero(found)
        return GetResult(id_arr[keep], out_vec[keep], [_decode(payloads[j]) for j in keep.tolist()])

    def _get_l1(
        self,
        snap: Snapshot,
        id_arr: np.ndarray,
        todo: np.ndarray,
        found: np.ndarray,
        vectors: np.ndarray | None,
        payloads: list[bytes | None],
    ) -> None:
        want = id_arr[todo]
        keys = [encode_i64(i) for i in want.tolist()]
        pays = self._kv.get_many(L.DB_PAYLOAD, keys)
        locs = self._kv.get_many(L.DB_LOC, keys)
        priors = self._priors(snap, want)  # after the LMDB reads (see the snapshot module docstring)
        seg_of = np.full(want.size, -1, dtype=np.int64)
        row_of = np.full(want.size, -1, dtype=np.int64)
        search: list[int] = []
        for k, raw in enumerate(locs):
            prior = priors[k]
            if prior is NOT_IN_L1 or (prior is _MISSING and raw is None):
                continue  # not in snap's L1
            if prior is not _MISSING:
                pays[k] = prior
            if raw is not None:
                loc = L.Location.unpack(raw)
                seg = snap.segments.get(loc.segment)
                live = seg is not None and 0 <= loc.row < seg.n_rows and not snap.dead[loc.segment][loc.row]
                if live and int(seg.ids()[loc.row]) == int(want[k]):
                    seg_of[k], row_of[k] = loc.segment, loc.row
                    continue
            search.append(k)
        if search:
            self._find_in_snapshot(snap, want, np.asarray(search, dtype=np.int64), seg_of, row_of)
        for k in np.flatnonzero(seg_of >= 0).tolist():
            j = int(todo[k])
            found[j] = True
            if vectors is not None:
                vectors[j] = snap.segments[int(seg_of[k])].vectors()[row_of[k]]
            payloads[j] = pays[k]

    def _priors(self, snap: Snapshot, ids: np.ndarray) -> list:
        """Per id: its state as of ``snap`` from the payload history, or ``_MISSING`` (LMDB's is ``snap``'s)."""
        out: list = [_MISSING] * ids.size
        open_ = np.ones(ids.size, dtype=bool)
        for entry in self._snapshots.history_after(snap.l1_lsn):
            hit, pos = entry.lookup(ids)
            hit &= open_
            for k in np.flatnonzero(hit).tolist():
                out[k] = entry.priors[int(pos[k])]
            open_ &= ~hit
            if not open_.any():
                break
        return out

    @staticmethod
    def _find_in_snapshot(
        snap: Snapshot, want: np.ndarray, which: np.ndarray, seg_of: np.ndarray, row_of: np.ndarray
    ) -> None:
        """The live row in ``snap``'s own segments of each id ``want[which]``; it must exist."""
        left = which
        for seg_id, seg in snap.segments.items():
            if left.size == 0:
                break
            rows = seg.rows_of(want[left])
            dead = snap.dead[seg_id]
            hit = rows >= 0
            hit[hit] = dead[rows[hit]] == 0
            seg_of[left[hit]] = seg_id
            row_of[left[hit]] = rows[hit]
            left = left[~hit]
        if left.size:
            missing = want[left[:10]].tolist()
            raise CorruptionError(
                f"id(s) {missing} have an L1 version that snapshot version {snap.version} does not hold "
                "(LMDB and the in-memory L1 state disagree); reopen the collection"
            )

    # ------------------------------------------------------------------ scan
    def scan(self, snap: Snapshot, batch: int, *, vectors: bool = True, payloads: bool = True) -> Iterator[GetResult]:
        """Batches of every live vector of ``snap`` in id order (see the module docstring)."""
        parts_ids: list[np.ndarray] = []
        parts_src: list[np.ndarray] = []  # per row: -1 - memtable copy index, or segment id
        parts_row: list[np.ndarray] = []
        mem_rows: list[tuple[np.ndarray, list[bytes | None]]] = []
        hidden_parts: list[np.ndarray] = []
        for level, mt in enumerate(snap.memtables):  # newest first
            if level == 0:
                with self._write_lock:
                    ids, vecs, pays = mt.items()
                    tomb = mt.tombstones()
            else:
                ids, vecs, pays = mt.items()
                tomb = mt.tombstones()
            ids = np.asarray(ids, dtype=np.int64)
            keep = ~np.isin(ids, np.concatenate(hidden_parts)) if hidden_parts else np.ones(ids.size, dtype=bool)
            rows = np.flatnonzero(keep)
            parts_ids.append(ids[rows])
            parts_src.append(np.full(rows.size, -1 - len(mem_rows), dtype=np.int64))
            parts_row.append(rows.astype(np.int64))
            mem_rows.append((vecs, pays))
            hidden_parts.append(ids)
            hidden_parts.append(np.fromiter(tomb.keys(), dtype=np.int64, count=len(tomb)))
        hidden = np.unique(np.concatenate(hidden_parts)) if hidden_parts else np.empty(0, dtype=np.int64)
        for seg_id, seg in sorted(snap.segments.items()):
            rows = np.flatnonzero(snap.dead[seg_id] == 0)
            ids = seg.ids()[rows]
            if hidden.size and ids.size:
                keep = ~np.isin(ids, hidden)
                rows, ids = rows[keep], ids[keep]
            parts_ids.append(np.asarray(ids, dtype=np.int64))
            parts_src.append(np.full(rows.size, seg_id, dtype=np.int64))
            parts_row.append(rows.astype(np.int64))
        if not parts_ids:
            return
        all_ids = np.concatenate(parts_ids)
        order = np.argsort(all_ids, kind="stable")
        all_ids, src, row = all_ids[order], np.concatenate(parts_src)[order], np.concatenate(parts_row)[order]
        if all_ids.size > 1 and (np.diff(all_ids) == 0).any():
            dup = all_ids[1:][np.diff(all_ids) == 0][:10].tolist()
            raise CorruptionError(f"id(s) {dup} are live twice in snapshot version {snap.version}")
        del parts_ids, parts_src, parts_row, order
        zeros = np.zeros((1, self._dim), dtype=np.float32)
        for start in range(0, all_ids.size, batch):
            b_ids, b_src, b_row = all_ids[start : start + batch], src[start : start + batch], row[start : start + batch]
            n = b_ids.size
            out_vec = np.empty((n, self._dim), dtype=np.float32) if vectors else np.broadcast_to(zeros, (n, self._dim))
            out_pay: list[bytes | None] = [None] * n
            l1 = np.flatnonzero(b_src >= 0)
            if payloads and l1.size:
                raw = self._kv.get_many(L.DB_PAYLOAD, [encode_i64(i) for i in b_ids[l1].tolist()])
                for k, prior in enumerate(self._priors(snap, b_ids[l1])):
                    if prior is NOT_IN_L1:
                        raise CorruptionError(
                            f"id {int(b_ids[l1[k]])} is live in snapshot {snap.version} but "
                            "the payload history says it was not in L1"
                        )
                    out_pay[int(l1[k])] = raw[k] if prior is _MISSING else prior
            for s in np.unique(b_src).tolist():
                sel = np.flatnonzero(b_src == s)
                if s >= 0:
                    if vectors:
                        out_vec[sel] = snap.segments[s].vectors()[b_row[sel]]
                    continue
                vecs, pays = mem_rows[-1 - s]
                if vectors:
                    out_vec[sel] = vecs[b_row[sel]]
                if payloads:
                    for j in sel.tolist():
                        out_pay[j] = pays[int(b_row[j])]
            yield GetResult(b_ids.copy(), out_vec, [_decode(p) for p in out_pay])


def _decode(payload: bytes | None) -> dict | None:
    return None if payload is None else json.loads(payload)
