"""``MemTable``: the L0 level — recent vectors in an hnswlib graph, with deletes and tombstones.

Contract
--------
* **Distances** follow pgvector: ``l2`` = Euclidean, ``ip`` = −dot, ``cosine`` = 1 − cos.  Cosine vectors
  (and queries) arrive already unit-normalised, so cosine is stored in hnswlib's ``ip`` space (no second
  normalisation).  The graph only *selects* candidates: every returned distance is recomputed exactly with
  ``index.adc`` (the kernels L1 re-ranks with), so L0 and L1 report bit-identical distances for the same
  vector.  Results are sorted ascending by distance; ties keep the graph's (or, exact: insertion) order.
* **Ids** are arbitrary int64 (the whole range).  Internally every written vector gets a fresh hnswlib
  label (a running sequence number); ``label -> (id, lsn, vector, payload)`` lives in arrays indexed by
  label and ``id -> current label`` in a dict.  Writing an id again marks its old label deleted; deleting
  an id marks its label deleted and *always* records a tombstone ``id -> lsn``, which also hides older
  copies of the id in L1 or in older memtables (``hides``).  Re-adding a tombstoned id removes the
  tombstone.  Old labels are never reused, so a replaced or deleted vector keeps its graph slot until the
  memtable is dropped; ``n_ops`` counts every label used plus tombstones, so rotation bounds that waste.
* **Visibility and ordering.**  A write becomes visible to readers all at once when ``add``/``delete``
  returns (per call: every id of a batch flips together, and a replaced id never shows both versions or
  neither).  After ``delete`` returns, no search, ``get`` or ``items`` returns the id and ``lookup`` says
  ``"deleted"``.  ``get``/``lookup``/``hides`` are per-id atomic (no batch-wide snapshot).
* **Thread-safety**: one writer at a time (``add``/``delete``/``freeze`` also serialise themselves on a
  mutex, so concurrent writers are safe, just not concurrent), any number of concurrent readers.
  hnswlib's ``add_items`` runs *concurrently* with ``knn_query`` (both release the GIL); only
  ``resize_index``, ``mark_deleted`` and the batch's visibility flip take a readers-writer lock
  exclusively, and every search holds it shared (about 1 µs of overhead).  ``get``, ``lookup``, ``hides``,
  ``payload`` and ``tombstones`` take no lock (single dict reads, atomic under the GIL).  A ``search``
  ``allow`` callback runs while the shared lock is held: it must not call ``search``/``items`` of the
  same memtable and should be quick.
  Caveat: hnswlib's README calls ``add_items`` and ``knn_query`` "not thread-safe" with each other.  In
  ``hnswalg.h`` (0.8) the one unguarded window found is a query reading ``enterpoint_node_`` and then
  ``maxlevel_`` just as an insert raises the graph's top level (about log_M(n) times in a graph's life):
  the query can then read one neighbour list past its allocation.  hnswlib usually rejects the garbage
  ("cand error", a ``RuntimeError``, which ``search`` answers exactly instead) or walks on from a valid
  node (results are still only live labels, re-scored exactly); a crash is possible in principle but has
  not been seen in the stress test.  Serialising ``add_items`` with searches would remove it at the cost
  of reader stalls of a whole batch insert.
* A **frozen** memtable refuses ``add``/``delete`` with ``RuntimeError`` but serves every read.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import hnswlib
import numpy as np

from drift_engine.config import METRICS
from drift_engine.errors import DimensionMismatchError, InvalidArgumentError, InvalidParameterError
from drift_engine.index.adc import exact_distances, rerank

__all__ = ["EXACT_FILTER_CELLS", "EXACT_SEARCH_CELLS", "GRAPH_FILTER_MIN_SELECTIVITY", "METRICS", "MemTable"]

_SPACE = {"l2": "l2", "ip": "ip", "cosine": "ip"}

EXACT_SEARCH_CELLS = 1 << 18
"""Unfiltered searches where labels × dim is at most this are answered by brute force: measured faster than
the graph up to about there (d=50: 4k labels ~35 µs vs ~45 µs; d=384: 1k labels ~42 µs vs ~62 µs), and
exact."""
EXACT_FILTER_CELLS = 1 << 22
"""Filtered searches where labels × dim is at most this (~84k entries at d=50, ~11k at d=384) are answered
by brute force: distances in a numba kernel, then ``allow`` in ascending-distance order until ``k`` pass.
Measured at d=50, k=10, p50 for 50 % / 10 % / 1 % selectivity: 50k entries exact 0.7 / 0.5 / 0.8 ms
(recall 1.0) vs hnswlib's filter callable 1.3 / 1.0 / 6.0 ms (it calls into Python at every visited node);
200k entries exact 3.4 / 6.0 / 8.0 ms vs graph 1.0 / 5.6 / 18.7 ms."""
GRAPH_FILTER_MIN_SELECTIVITY = 0.05
"""Above ``EXACT_FILTER_CELLS``, a filter that accepts fewer than this fraction of a 64-entry sample is
still answered by brute force (hnswlib's filter walk grows like 1/selectivity; see above)."""
_SELECTIVITY_SAMPLE = 64
_UNPARSED = object()
_PARALLEL_MIN = 64  # batches smaller than this are inserted on the calling thread only
_RETRIES = 3  # graph retries when concurrent inserts crowd the candidate pool before falling back to exact

_EMPTY_IDS = np.zeros(0, dtype=np.int64)
_EMPTY_DIST = np.zeros(0, dtype=np.float32)


class _RWLock:
    """Writer-preferring readers-writer lock (not reentrant)."""

    __slots__ = ("_cond", "_readers", "_waiting", "_writer")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0 and self._waiting:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class MemTable:
    """Recent vectors of one collection (L0); see the module docstring for the contract."""

    def __init__(
        self,
        dim: int,
        metric: str,
        *,
        initial_capacity: int = 4096,
        M: int = 16,
        ef_construction: int = 100,
        seed: int = 0,
        num_threads: int = 0,
    ) -> None:
        if metric not in _SPACE:
            raise InvalidParameterError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
        if not 1 <= dim <= 16_000:
            raise InvalidParameterError(f"dimension must be in 1..16000, got {dim}")
        if initial_capacity < 1 or M < 2 or ef_construction < 1:
            raise InvalidParameterError(
                f"need initial_capacity >= 1, M >= 2, ef_construction >= 1; got {initial_capacity}, {M}, "
                f"{ef_construction}"
            )
        self.dim = int(dim)
        self.metric = metric
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self._num_threads = int(num_threads) if num_threads > 0 else (os.cpu_count() or 1)
        self._cap = int(initial_capacity)
        self._index = hnswlib.Index(space=_SPACE[metric], dim=self.dim)
        self._index.init_index(
            max_elements=self._cap, ef_construction=self.ef_construction, M=self.M, random_seed=int(seed)
        )
        # searchKnn explores max(ef_, k) candidates: keep ef_ at 1 and pass the pool as k, so every query
        # chooses its own ef without touching shared index state.
        self._index.set_ef(1)
        # per label (grown together, under the exclusive lock)
        self._vecs = np.zeros((self._cap, self.dim), dtype=np.float32)
        self._ids = np.zeros(self._cap, dtype=np.int64)
        self._lsns = np.zeros(self._cap, dtype=np.int64)
        self._live = np.zeros(self._cap, dtype=np.bool_)
        self._payloads: list[bytes | None] = []
        self._decoded: dict[int, Any] = {}  # label -> filter_fields(), computed once
        self._payload_bytes = 0
        self._n = 0  # labels used and published; every label < _n is live or marked deleted in hnswlib
        self._live_count = 0
        self._where: dict[int, int] = {}  # id -> current (live) label
        self._tomb: dict[int, int] = {}  # id -> lsn of its delete, for ids deleted and not re-added
        self._rw = _RWLock()
        self._writer = threading.Lock()
        self._frozen = False
        self.min_lsn = 0
        self.max_lsn = 0

    # ------------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def n_ops(self) -> int:
        """Labels used (every vector written, replaced or not) plus tombstones: the rotation measure."""
        return self._n + len(self._tomb)

    @property
    def dead_labels(self) -> int:
        """Graph nodes that are marked deleted (a replaced or deleted vector): hnswlib still walks them, so
        inserting into a graph that is mostly dead is many times slower than into a fresh one."""
        return self._n - self._live_count

    @property
    def capacity(self) -> int:
        return self._cap

    def __len__(self) -> int:
        return self._live_count

    def __repr__(self) -> str:
        return (
            f"MemTable(dim={self.dim}, metric={self.metric!r}, live={self._live_count}, labels={self._n}, "
            f"tombstones={len(self._tomb)}, frozen={self._frozen})"
        )

    def memory_bytes(self) -> int:
        """Approximate resident bytes: the hnswlib graph, the label arrays, payloads and the dicts."""
        cap, d, m = self._cap, self.dim, self.M
        level0 = d * 4 + (2 * m * 4 + 4) + 8  # vector, level-0 links (+count), label
        upper = self._n * (m * 4 + 4) // max(m - 1, 1)  # expected upper-level link lists
        graph = cap * (level0 + 40 + 4 + 2) + upper + self._n * 40  # + mutex, level, visited; label map
        ours = cap * (d * 4 + 8 + 8 + 1) + self._n * 8 + self._payload_bytes
        dicts = (len(self._where) + len(self._tomb)) * 100 + len(self._decoded) * 300  # + parsed filter fields
        return int(graph + ours + dicts)

    # ------------------------------------------------------------------------------------------------
    # writes (one writer at a time)
    # ------------------------------------------------------------------------------------------------
    def freeze(self) -> None:
        """Refuse further writes; reads keep working.  Idempotent."""
        with self._writer:
            self._frozen = True

    def add(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[bytes | None] | None, lsn: int) -> None:
        """Insert or replace ``ids`` (unique within the call) with ``vectors`` and ``payloads`` (``None`` =
        no payloads), all at WAL position ``lsn``.  Visible to readers, all together, when it returns."""
        with self._writer:
            self._check_writable()
            ids, vectors, payloads = self._check_batch(ids, vectors, payloads)
            n = ids.shape[0]
            if n == 0:
                return
            id_list: list[int] = ids.tolist()
            if n > 1 and len(set(id_list)) != n:
                raise InvalidArgumentError("ids must be unique within one add call")
            start, end = self._n, self._n + n
            if end > self._cap:
                self._grow(end)
            self._vecs[start:end] = vectors
            self._ids[start:end] = ids
            self._lsns[start:end] = lsn
            self._payloads.extend(payloads)
            self._payload_bytes += sum(len(p) for p in payloads if p is not None)
            where = self._where
            old = [lab for lab in map(where.get, id_list) if lab is not None]
            try:
                # concurrent with readers: the new labels are not live yet, so searches skip them
                self._index.add_items(
                    self._vecs[start:end],
                    np.arange(start, end, dtype=np.uint64),
                    num_threads=self._num_threads if n >= _PARALLEL_MIN else 1,
                )
            except BaseException:
                # Some labels may be in the graph: keep them, never live and never reused.
                self._rw.acquire_write()
                self._n = end
                self._rw.release_write()
                raise
            tomb = self._tomb
            self._rw.acquire_write()
            try:
                for lab in old:
                    self._index.mark_deleted(lab)
                if old:
                    self._live[old] = False
                self._live[start:end] = True
                self._n = end
                self._live_count += n - len(old)
                where.update(zip(id_list, range(start, end), strict=True))
                if tomb:
                    for ident in id_list:
                        tomb.pop(ident, None)
            finally:
                self._rw.release_write()
            self._note_lsn(lsn)

    def delete(self, ids: np.ndarray | Iterable[int], lsn: int) -> None:
        """Delete ``ids``: hide their vectors here and record a tombstone ``id -> lsn`` for each (present
        or not), which also hides older copies elsewhere.  Invisible to readers when it returns."""
        with self._writer:
            self._check_writable()
            id_arr = np.asarray(ids)
            if id_arr.ndim != 1 or (id_arr.size and id_arr.dtype.kind not in "iu"):
                raise InvalidArgumentError(f"ids must be a 1-d integer array, got {id_arr.dtype} {id_arr.shape}")
            id_list = id_arr.astype(np.int64, copy=False).tolist()
            if not id_list:
                return
            where, tomb, live = self._where, self._tomb, self._live
            self._rw.acquire_write()
            try:
                for ident in id_list:
                    tomb[ident] = lsn  # tombstone first: a lockless reader sees "live" or "deleted"
                    lab = where.pop(ident, None)
                    if lab is not None:
                        self._index.mark_deleted(lab)
                        live[lab] = False
                        self._live_count -= 1
            finally:
                self._rw.release_write()
            self._note_lsn(lsn)

    def _check_writable(self) -> None:
        if self._frozen:
            raise RuntimeError("memtable is frozen: it accepts no more writes")

    def _check_batch(
        self, ids: np.ndarray, vectors: np.ndarray, payloads: list[bytes | None] | None
    ) -> tuple[np.ndarray, np.ndarray, list[bytes | None]]:
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise InvalidArgumentError(f"ids must be a 1-d integer array, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64, copy=False)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim == 1 and ids.shape[0] == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.ndim != 2 or vectors.shape[0] != ids.shape[0]:
            raise InvalidArgumentError(f"vectors must have shape ({ids.shape[0]}, {self.dim}), got {vectors.shape}")
        if vectors.shape[1] != self.dim:
            raise DimensionMismatchError(f"vectors have dimension {vectors.shape[1]}, memtable has {self.dim}")
        if payloads is None:
            payloads = [None] * ids.shape[0]
        elif len(payloads) != ids.shape[0]:
            raise InvalidArgumentError(f"{len(payloads)} payloads for {ids.shape[0]} ids")
        return ids, vectors, list(payloads)

    def _grow(self, need: int) -> None:
        cap = self._cap
        while cap < need:
            cap *= 2
        n = self._n
        vecs = np.zeros((cap, self.dim), dtype=np.float32)
        vecs[:n] = self._vecs[:n]  # rows < _n never change: copy outside the exclusive section
        ids = np.zeros(cap, dtype=np.int64)
        ids[:n] = self._ids[:n]
        lsns = np.zeros(cap, dtype=np.int64)
        lsns[:n] = self._lsns[:n]
        self._rw.acquire_write()
        try:
            self._index.resize_index(cap)
            live = np.zeros(cap, dtype=np.bool_)
            live[:n] = self._live[:n]
            self._vecs, self._ids, self._lsns, self._live = vecs, ids, lsns, live
            self._cap = cap
        finally:
            self._rw.release_write()

    def _note_lsn(self, lsn: int) -> None:
        lsn = int(lsn)
        if self.min_lsn == 0 or lsn < self.min_lsn:
            self.min_lsn = lsn
        if lsn > self.max_lsn:
            self.max_lsn = lsn

    # ------------------------------------------------------------------------------------------------
    # search
    # ------------------------------------------------------------------------------------------------
    def search(
        self, query: np.ndarray, k: int, ef: int, allow: Callable[[int], bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` live entries nearest to ``query``: (ids int64, distances float32), ascending.  The
        graph explores ``max(ef, k)`` candidates.  ``allow(id)`` restricts the result to allowed ids and
        still fills ``k`` when that many allowed entries are live."""
        q = self._check_query(query)
        if k <= 0:
            return _EMPTY_IDS, _EMPTY_DIST
        self._rw.acquire_read()
        try:
            live_n = self._live_count
            if live_n == 0:
                return _EMPTY_IDS, _EMPTY_DIST
            if allow is not None:
                if self._n * self.dim <= EXACT_FILTER_CELLS or self._selectivity(allow) < GRAPH_FILTER_MIN_SELECTIVITY:
                    return self._exact_locked(q, k, allow)
                return self._graph_filtered_locked(q, k, max(ef, k), allow)
            if self._n * self.dim <= EXACT_SEARCH_CELLS:
                return self._exact_locked(q, k, None)
            return self._graph_locked(q, k, max(ef, k))
        finally:
            self._rw.release_read()

    def search_exact(
        self, query: np.ndarray, k: int, allow: Callable[[int], bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force ``search``: exact top ``k`` live (and allowed) entries."""
        q = self._check_query(query)
        if k <= 0:
            return _EMPTY_IDS, _EMPTY_DIST
        self._rw.acquire_read()
        try:
            return self._exact_locked(q, k, allow)
        finally:
            self._rw.release_read()

    def _check_query(self, query: np.ndarray) -> np.ndarray:
        q = query if type(query) is np.ndarray and query.dtype == np.float32 else np.asarray(query, np.float32)
        if q.ndim != 1:
            q = q.reshape(-1)
        if q.shape[0] != self.dim:
            raise DimensionMismatchError(f"query has dimension {q.shape[0]}, memtable has {self.dim}")
        return q if q.flags.c_contiguous else np.ascontiguousarray(q)

    def _graph_locked(self, q: np.ndarray, k: int, pool: int) -> tuple[np.ndarray, np.ndarray]:
        live_n = self._live_count
        want = min(k, live_n)
        live = self._live
        pool = min(pool, live_n)  # hnswlib holds >= live_n non-deleted elements: always satisfiable
        for _ in range(_RETRIES):
            try:
                labels, _ = self._index.knn_query(q, k=pool, num_threads=1)
            except RuntimeError:  # fewer than `pool` reachable (see the module docstring)
                break
            labels = labels[0].view(np.int64)
            labels = labels[live[labels]]  # drop labels an in-flight add has not published yet
            if labels.shape[0] >= want:
                return self._finish(q, labels, k)
            if pool >= live_n:
                break
            pool = min(live_n, 2 * pool + (pool - labels.shape[0]))
        return self._exact_locked(q, k, None)

    def _graph_filtered_locked(
        self, q: np.ndarray, k: int, pool: int, allow: Callable[[int], bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        live, ids = self._live, self._ids

        def accept(label: int) -> bool:
            return bool(live[label]) and bool(allow(int(ids[label])))

        try:
            labels, _ = self._index.knn_query(q, k=min(pool, self._live_count), num_threads=1, filter=accept)
        except RuntimeError:  # fewer allowed entries reachable than the pool: answer exactly
            return self._exact_locked(q, k, allow)
        return self._finish(q, labels[0].view(np.int64), k)

    def _finish(self, q: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist = rerank(self.metric, q, self._vecs, labels)
        order = np.argsort(dist, kind="stable")[:k]
        return self._ids[labels[order]], dist[order]

    def _exact_locked(
        self, q: np.ndarray, k: int, allow: Callable[[int], bool] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        n, live_n = self._n, self._live_count
        if live_n == 0:
            return _EMPTY_IDS, _EMPTY_DIST
        live = self._live[:n]
        dist = exact_distances(self.metric, q, self._vecs[:n])
        if live_n < n:
            dist[~live] = np.inf
        if allow is None:
            m = min(k, live_n)
            top = np.argpartition(dist, m - 1)[:m] if m < n else np.arange(n)
            top = top[np.argsort(dist[top], kind="stable")][:m]
            return self._ids[top], dist[top]
        # Ascending distance, calling allow() only until k pass: the closest `chunk` live entries first,
        # then the next closest 8x as many, ..., and finally everything left.
        got: list[int] = []
        done: np.ndarray | None = None  # labels already offered to allow()
        chunk = max(4 * k, 256)
        while True:
            if chunk >= live_n:
                sel = np.flatnonzero(live if done is None else live & ~done)
                sel = sel[np.argsort(dist[sel], kind="stable")]
                got += self._take_allowed(sel, k - len(got), allow)
                break
            work = dist if done is None else np.where(done, np.inf, dist)
            sel = np.argpartition(work, chunk - 1)[:chunk]
            sel = sel[np.argsort(work[sel], kind="stable")]
            sel = sel[live[sel]] if done is None else sel[live[sel] & ~done[sel]]
            got += self._take_allowed(sel, k - len(got), allow)
            if len(got) >= k:
                break
            if done is None:
                done = np.zeros(n, dtype=np.bool_)
            done[sel] = True
            chunk *= 8
        labels = np.asarray(got, dtype=np.int64)
        return self._ids[labels], dist[labels]

    def _take_allowed(self, labels: np.ndarray, k: int, allow: Callable[[int], bool]) -> list[int]:
        out: list[int] = []
        for lab, ident in zip(labels.tolist(), self._ids[labels].tolist(), strict=True):
            if allow(ident):
                out.append(lab)
                if len(out) == k:
                    break
        return out

    def _selectivity(self, allow: Callable[[int], bool]) -> float:
        """Fraction of ``_SELECTIVITY_SAMPLE`` evenly spaced live entries that ``allow`` accepts."""
        labels = np.linspace(0, self._n - 1, _SELECTIVITY_SAMPLE).astype(np.int64)
        sample = self._ids[labels[self._live[labels]]].tolist()
        return sum(1 for ident in sample if allow(ident)) / len(sample) if sample else 1.0

    # ------------------------------------------------------------------------------------------------
    # point reads
    # ------------------------------------------------------------------------------------------------
    def get(self, ids: np.ndarray | Iterable[int]) -> tuple[np.ndarray, np.ndarray, list[bytes | None]]:
        """The live entries among ``ids``, in request order: (found ids, vectors (m, d), payloads)."""
        where, payloads = self._where, self._payloads
        found: list[int] = []
        labels: list[int] = []
        for ident in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            lab = where.get(ident)
            if lab is not None:
                found.append(ident)
                labels.append(lab)
        vecs = self._vecs  # read after the labels: a newer array holds every published row too
        lab_arr = np.asarray(labels, dtype=np.int64)
        return (
            np.asarray(found, dtype=np.int64),
            vecs[lab_arr] if labels else np.zeros((0, self.dim), dtype=np.float32),
            [payloads[lab] for lab in labels],
        )

    def lsn_of(self, ident: int) -> int | None:
        """The WAL position of the live entry of ``ident`` here, or ``None`` when it is not live here."""
        lab = self._where.get(ident)
        return None if lab is None else int(self._lsns[lab])

    def lookup(self, ident: int) -> str:
        """``"live"``, ``"deleted"`` (tombstoned here) or ``"absent"``."""
        if ident in self._where:
            return "live"
        if ident in self._tomb:
            return "deleted"
        return "absent"

    def hides(self, ids: np.ndarray | Iterable[int]) -> np.ndarray:
        """bool per id: live here or tombstoned here, i.e. any older copy elsewhere must be hidden."""
        where, tomb = self._where, self._tomb
        id_list = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        return np.fromiter(((i in tomb or i in where) for i in id_list), dtype=np.bool_, count=len(id_list))

    def hides_as_of(self, ids: np.ndarray | Iterable[int], lsn: int) -> np.ndarray:
        """Like ``hides``, but only counting writes with WAL position <= ``lsn``: a reader that searched this
        memtable when it held nothing newer than ``lsn`` uses it so a write landing mid-query cannot hide an
        older copy the reader never saw replaced (the merge then de-duplicates by id, newest first)."""
        where, tomb, lsns = self._where, self._tomb, self._lsns
        id_list = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        out = np.zeros(len(id_list), dtype=np.bool_)
        for j, ident in enumerate(id_list):
            lab = where.get(ident)
            if lab is not None:
                out[j] = lab < lsns.shape[0] and lsns[lab] <= lsn
            else:
                t = tomb.get(ident)
                out[j] = t is not None and t <= lsn
        return out

    def payload(self, ident: int) -> bytes | None:
        """The payload of live ``ident``; ``None`` when it has none or is not live here."""
        lab = self._where.get(ident)
        return None if lab is None else self._payloads[lab]

    def filter_fields(self, ident: int, canon: Callable[[Any], str]) -> dict[str, str] | None:
        """The payload of live ``ident`` as ``{key: canon(value)}`` for filter tests (``None`` when it has
        none, is not a JSON object or is not live here). Computed once per label and kept (labels are never
        reused and the one caller always passes the same ``canon``: ``validate.canonical_value``), so a
        filtered search that tests the same entries again costs a dict lookup, not a JSON parse."""
        lab = self._where.get(ident)
        if lab is None:
            return None
        got = self._decoded.get(lab, _UNPARSED)
        if got is _UNPARSED:
            raw = self._payloads[lab]
            obj = None if raw is None else json.loads(raw)
            got = {key: canon(value) for key, value in obj.items()} if isinstance(obj, dict) else None
            self._decoded[lab] = got
        return got

    def items(
        self, *, with_lsns: bool = False
    ) -> (
        tuple[np.ndarray, np.ndarray, list[bytes | None]]
        | tuple[np.ndarray, np.ndarray, list[bytes | None], np.ndarray]
    ):
        """Every live entry in insertion order (a replaced id sits where its newest write was):
        (ids, vectors, payloads[, lsns]) — copies, consistent as of one moment."""
        self._rw.acquire_read()
        try:
            labels = np.flatnonzero(self._live[: self._n])
            out_ids, vecs, lsns = self._ids[labels], self._vecs[labels], self._lsns[labels]
        finally:
            self._rw.release_read()
        payloads = [self._payloads[lab] for lab in labels.tolist()]
        if with_lsns:
            return out_ids, vecs, payloads, lsns
        return out_ids, vecs, payloads

    def tombstones(self) -> dict[int, int]:
        """A copy of ``id -> lsn`` for ids deleted here and not re-added."""
        return self._tomb.copy()
