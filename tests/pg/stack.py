"""The whole SQL stack, private and throw-away: PostgreSQL + a drift engine server + the ``drift`` extension.

Used by ``make demo`` (``drift_engine.demo``) and the SQL benchmark (``bench/sql.py``); the tests use the
same parts through fixtures (``tests/pg/conftest.py``).

Contract:

* ``Stack(tcp=...).start()`` starts a ``PgCluster`` and an ``EngineServer``, installs the extension files
  when they are missing (as root; otherwise ``StackError`` says the exact command), and runs
  ``CREATE EXTENSION drift CASCADE``. When the ``multicorn`` extension is available it also creates the
  foreign server ``drift`` (``multicorn`` is then true); ``pgvector`` tells whether ``CREATE EXTENSION
  vector`` worked. ``stop()`` stops both servers and removes their folders.
* ``stage(conn, table, vectors, tags)`` creates a regular table ``(id bigint, embedding real[], tag text)``
  and fills it with ids 0..n-1 by COPY (fast: rows are formatted with numpy, 9 significant digits, which
  round-trips float32 exactly).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from tests.pg.cluster import ClusterError, PgCluster, find_bindir, has_extension, install_drift_extension
from tests.pg.engine import EngineError, EngineServer

SERVER = "drift"


class StackError(RuntimeError):
    """The stack cannot run here (the message says what to install or run)."""


class Stack:
    def __init__(self, *, tcp: bool = False) -> None:
        self.tcp = tcp
        self.cluster: PgCluster | None = None
        self.engine: EngineServer | None = None
        self.multicorn = False
        self.pgvector = False

    def start(self) -> Stack:
        bindir = find_bindir()
        if bindir is None:
            raise StackError("no PostgreSQL server is installed: run `make setup`")
        try:
            self.cluster = PgCluster(bindir, tcp=self.tcp).start()
            self.engine = EngineServer().start()
        except (ClusterError, EngineError) as exc:
            self.stop()
            raise StackError(str(exc)) from None
        with self.cluster.connect() as conn:
            if not has_extension(conn, "plpython3u"):
                self.stop()
                raise StackError("PL/Python is not installed: run `make setup`")
            reason = install_drift_extension(self.cluster)
            if reason is not None:
                self.stop()
                raise StackError(reason)
            conn.execute("CREATE EXTENSION drift CASCADE")
            if has_extension(conn, "multicorn"):
                conn.execute("CREATE EXTENSION multicorn")
                conn.execute(
                    f"CREATE SERVER {SERVER} FOREIGN DATA WRAPPER multicorn "
                    f"OPTIONS (wrapper 'drift_fdw.DriftFDW', address '{self.engine.address}')"
                )
                self.multicorn = True
            if has_extension(conn, "vector"):
                conn.execute("CREATE EXTENSION vector")
                self.pgvector = True
        return self

    def connect(self, **kwargs: Any) -> Any:
        assert self.cluster is not None
        return self.cluster.connect(tcp=self.tcp, **kwargs)

    @property
    def address(self) -> str:
        assert self.engine is not None
        return self.engine.address

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def copy_text(vectors: np.ndarray, tags: Sequence[str] | None = None, start: int = 0) -> bytes:
    """COPY text rows ``id \\t {v1,...} [\\t tag]`` for ids start.. (9 significant digits: exact for float32)."""
    buf = io.StringIO()
    np.savetxt(buf, vectors, fmt="%.9g", delimiter=",")
    bodies = buf.getvalue().splitlines()
    if tags is None:
        lines = [f"{start + i}\t{{{body}}}\n" for i, body in enumerate(bodies)]
    else:
        lines = [f"{start + i}\t{{{body}}}\t{tag}\n" for i, (body, tag) in enumerate(zip(bodies, tags, strict=True))]
    return "".join(lines).encode()


def stage(conn: Any, table: str, vectors: np.ndarray, tags: Sequence[str], chunk: int = 50_000) -> None:
    """A regular table ``table (id, embedding real[], tag)`` holding ``vectors`` with ids 0..n-1."""
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE UNLOGGED TABLE {table} (id bigint PRIMARY KEY, embedding real[], tag text)")
    with conn.cursor() as cur, cur.copy(f"COPY {table} (id, embedding, tag) FROM STDIN") as cp:
        for s in range(0, len(vectors), chunk):
            cp.write(copy_text(vectors[s : s + chunk], tags[s : s + chunk], start=s))
