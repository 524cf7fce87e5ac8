"""The SQL text and psql-style printing of ``make demo`` (``drift_engine.demo``).

Contract: ``Via`` builds each statement of one access path — the foreign table (Multicorn; with ``vector(n)``
columns where pgvector is installed, else ``real[]``), or the ``drift.*`` PL/Python functions where Multicorn
is missing — and ``psql`` runs a statement and prints it and its rows the way psql does (long vector literals
abbreviated). Nothing here starts a server.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

TABLE = "items"


def array_literal(v: np.ndarray) -> str:
    """A ``real[]`` literal, 9 significant digits (round-trips float32)."""
    return "{" + ",".join(f"{x:.9g}" for x in v.tolist()) + "}"


def vector_literal(v: np.ndarray) -> str:
    """A pgvector ``vector`` literal."""
    return "[" + ",".join(f"{x:.9g}" for x in v.tolist()) + "]"


def short(sql: str) -> str:
    """``sql`` with each long vector literal abbreviated, for printing."""
    out, pos = [], 0
    while True:
        start = min((i for i in (sql.find("'{", pos), sql.find("'[", pos)) if i >= 0), default=-1)
        if start < 0:
            return "".join(out) + sql[pos:]
        close = "}'" if sql[start + 1] == "{" else "]'"
        end = sql.find(close, start)
        if end < 0:
            return "".join(out) + sql[pos:]
        body = sql[start + 2 : end].split(",")
        out.append(sql[pos:start])
        if end - start < 60:
            out.append(sql[start : end + 2])
        else:
            out.append(f"{sql[start : start + 2]}{', '.join(body[:3])}, ... ({len(body)} values){close}")
        pos = end + 2


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list):
        return "{" + ",".join(f"{x:g}" for x in v) + "}"
    return str(v)


def psql(conn: Any, sql: str) -> list[tuple]:
    """Run ``sql`` and print statement and rows (or the command tag) the way psql does."""
    cur = conn.execute(sql)
    print(f"\npsql> {short(sql)};")
    if cur.description is None:
        print(cur.statusmessage)
        return []
    rows = cur.fetchall()
    names = [d.name for d in cur.description]
    cells = [[_cell(v) for v in r] for r in rows]
    right = [bool(rows) and all(isinstance(r[i], int | float) for r in rows) for i in range(len(names))]
    widths = [max(len(n), *(len(c[i]) for c in cells)) if cells else len(n) for i, n in enumerate(names)]
    print(" " + " | ".join(n.center(w) for n, w in zip(names, widths, strict=True)))
    print("-" + "-+-".join("-" * w for w in widths) + "-")
    for c in cells:
        print(" " + " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(c, widths, right, strict=True)))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return rows


def step(label: str, seconds: float, extra: str = "") -> None:
    print(f"  {label:<52} {seconds:7.2f} s  {extra}")


def timed(conn: Any, sqls: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """Run each statement (after 10 warm-ups); the first column of its rows and its latency in seconds."""
    for s in sqls[:10]:
        conn.execute(s).fetchall()
    ids, lat = [], np.empty(len(sqls))
    for i, s in enumerate(sqls):
        t0 = time.perf_counter()
        rows = conn.execute(s).fetchall()
        lat[i] = time.perf_counter() - t0
        ids.append([r[0] for r in rows])
    return ids, lat


class Via:
    """The SQL of one access path: the foreign table (``fdw``) or the drift.* functions."""

    def __init__(self, fdw: bool, address: str, *, pgvector: bool) -> None:
        self.fdw = fdw
        self.vector_columns = fdw and pgvector  # vector(n) columns: a query literal PostgreSQL parses once
        self.server = "'drift'" if fdw else f"'{address}'"

    def literal(self, v: np.ndarray) -> str:
        return vector_literal(v) if self.vector_columns else array_literal(v)

    def create_table(self, dim: int) -> str:
        vec = f"vector({dim})" if self.vector_columns else "real[]"
        # query text: the literal is echoed into each row as is, no per-row vector_in (README, query column)
        return (
            f"CREATE FOREIGN TABLE {TABLE} (id bigint, embedding {vec}, query text, distance real, k int, "
            f"nprobe int, ef int, tag text) SERVER drift OPTIONS (collection '{TABLE}')"
        )

    def insert_select(self, lo: int, hi: int) -> str:
        emb = "embedding::vector" if self.vector_columns else "embedding"
        return (
            f"INSERT INTO {TABLE} (id, embedding, tag) SELECT id, {emb}, tag FROM staging "
            f"WHERE id >= {lo} AND id < {hi}"
        )

    def knn(self, q: np.ndarray, k: int, tag: str | None = None) -> str:
        lit = self.literal(q)
        if self.fdw:
            where = f" AND tag = '{tag}'" if tag else ""
            return f"SELECT id, distance, tag FROM {TABLE} WHERE query = '{lit}'{where} ORDER BY distance LIMIT {k}"
        flt = f', filter => \'{{"tag": "{tag}"}}\'' if tag else ""
        return (
            f"SELECT id, distance, payload->>'tag' AS tag "
            f"FROM drift.search('{TABLE}', '{lit}', {k}, {self.server}{flt})"
        )

    def lookup(self, ids: list[int]) -> str:
        arr = "{" + ",".join(map(str, ids)) + "}"
        if self.fdw:
            first = "(embedding::real[])[1:3]" if self.vector_columns else "embedding[1:3]"
            return f"SELECT id, tag, {first} AS first_dims FROM {TABLE} WHERE id = ANY('{arr}') ORDER BY id"
        return (
            f"SELECT id, payload->>'tag' AS tag, embedding[1:3] AS first_dims "
            f"FROM drift.get('{TABLE}', '{arr}', {self.server})"
        )
