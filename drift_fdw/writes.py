"""The per-transaction write buffer of a drift foreign table.

Contract:

* INSERT / UPDATE / DELETE only record their net effect per id here; nothing reaches the engine before
  PostgreSQL's pre-commit, and ``clear()`` (ROLLBACK) leaves no trace. Savepoints: ``sub_begin`` /
  ``sub_rollback`` / ``sub_commit`` undo exactly the changes made since the savepoint.
* Net effect per id, in statement order (``None`` = nothing pending):
  insert: None -> insert, delete -> upsert (replace), insert/upsert -> ``DuplicateId`` at once;
  update: None -> upsert, insert -> insert (new values), upsert -> upsert, delete -> delete (a row
  deleted earlier in this transaction stays deleted); delete: insert -> None, others -> delete.
* ``batches(max_rows)`` yields the engine calls that apply the buffer, in this order: inserts (the engine
  refuses the whole call if one id exists), upserts, deletes; each at most ``max_rows`` rows. When it yields
  a single call, the transaction is applied as one atomic engine batch (one WAL record).
* Versions (write-write conflicts, ``drift_fdw.txn``): ``note_read(ident, read_lsn)`` records the
  ``read_lsn`` of an engine row a scan returned (ids with a pending write are not noted: the buffer decides
  what they look like; at most ``SEEN_CAP`` ids per transaction). ``base(ident, read_lsn)``, called before
  an UPDATE / DELETE changes an id with nothing pending, makes that read the version the write is based
  on (the first write of an id decides). ``expectations()`` lists ``(id, read_lsn)`` of the pending
  upserts and deletes that have one; ``clear()`` forgets it all.
* ``pending(ident)`` / ``rows()`` expose the buffer so scans of the same table in the same transaction
  see its writes (``overlay``): an UPDATE or DELETE of a row inserted earlier in the transaction finds it
  and changes the buffered insert (update: insert stays an insert with the new values; delete: the insert
  is dropped).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from drift_engine.errors import DuplicateIdError

_Row = tuple[str, np.ndarray | None, dict[str, Any] | None]  # (state, vector, payload)


@dataclass
class Batch:
    op: str  # "insert" | "upsert" | "delete"
    ids: list[int]
    vectors: np.ndarray | None = None
    payloads: list[dict[str, Any] | None] | None = None


SEEN_CAP = 1_000_000


class WriteBuffer:
    def __init__(self) -> None:
        self._seen: dict[int, int] = {}  # id -> read_lsn of the engine row last read
        self._base: dict[int, int] = {}  # id -> read_lsn its first write was based on
        self._rows: dict[int, _Row] = {}
        self._undo: list[tuple[int, _Row | None]] = []  # (id, previous row) for savepoints
        self._marks: list[tuple[int, int]] = []  # (level, len(undo)) per open savepoint

    def __len__(self) -> int:
        return len(self._rows)

    def _set(self, ident: int, row: _Row | None) -> None:
        if self._marks:
            self._undo.append((ident, self._rows.get(ident)))
        if row is None:
            self._rows.pop(ident, None)
        else:
            self._rows[ident] = row

    def insert(self, ident: int, vector: np.ndarray, payload: dict[str, Any] | None) -> None:
        prev = self._rows.get(ident)
        state = prev[0] if prev else None
        if state in ("insert", "upsert"):
            raise DuplicateIdError(f"id {ident} was already written in this transaction")
        self._set(ident, ("upsert" if state == "delete" else "insert", vector, payload))

    def update(self, ident: int, vector: np.ndarray, payload: dict[str, Any] | None) -> None:
        prev = self._rows.get(ident)
        state = prev[0] if prev else None
        if state == "delete":
            return
        self._set(ident, ("insert" if state == "insert" else "upsert", vector, payload))

    def delete(self, ident: int) -> None:
        prev = self._rows.get(ident)
        self._set(ident, None if prev and prev[0] == "insert" else ("delete", None, None))

    def note_read(self, ident: int, read_lsn: int) -> None:
        if read_lsn > 0 and ident not in self._rows and (ident in self._seen or len(self._seen) < SEEN_CAP):
            self._seen[ident] = read_lsn

    def seen(self, ident: int) -> int | None:
        return self._seen.get(ident)

    def base(self, ident: int, read_lsn: int) -> None:
        if ident not in self._rows and ident not in self._base:
            self._base[ident] = read_lsn

    def expectations(self) -> list[tuple[int, int]]:
        return [(i, b) for i, b in self._base.items() if i in self._rows and self._rows[i][0] in ("upsert", "delete")]

    def pending(self, ident: int) -> _Row | None:
        """The buffered (state, vector, payload) of ``ident``, or None when nothing is pending for it."""
        return self._rows.get(ident)

    def rows(self) -> list[tuple[int, _Row]]:
        return list(self._rows.items())

    # ------------------------------------------------------------------ transactions
    def clear(self) -> None:
        self._seen.clear()
        self._base.clear()
        self._rows.clear()
        self._undo.clear()
        self._marks.clear()

    def sub_begin(self, level: int) -> None:
        self._marks.append((level, len(self._undo)))

    def sub_commit(self, level: int) -> None:
        while self._marks and self._marks[-1][0] >= level:
            self._marks.pop()
        if not self._marks:
            self._undo.clear()

    def sub_rollback(self, level: int) -> None:
        while self._marks and self._marks[-1][0] >= level:
            _, mark = self._marks.pop()
            while len(self._undo) > mark:
                ident, row = self._undo.pop()
                if row is None:
                    self._rows.pop(ident, None)
                else:
                    self._rows[ident] = row
        if not self._marks:
            self._undo.clear()

    # ------------------------------------------------------------------ apply
    def counts(self) -> dict[str, int]:
        out = {"insert": 0, "upsert": 0, "delete": 0}
        for state, _, _ in self._rows.values():
            out[state] += 1
        return out

    def batches(self, max_rows: int) -> Iterator[Batch]:
        groups: dict[str, list[int]] = {"insert": [], "upsert": [], "delete": []}
        for ident, (state, _, _) in self._rows.items():
            groups[state].append(ident)
        for op in ("insert", "upsert", "delete"):
            ids = groups[op]
            for start in range(0, len(ids), max_rows):
                chunk = ids[start : start + max_rows]
                if op == "delete":
                    yield Batch(op, chunk)
                    continue
                rows = [self._rows[i] for i in chunk]
                vectors = np.stack([r[1] for r in rows]) if rows else None
                payloads = [r[2] for r in rows]
                yield Batch(op, chunk, vectors, payloads if any(p is not None for p in payloads) else None)
