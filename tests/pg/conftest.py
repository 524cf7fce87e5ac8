"""Fixtures for tests against real PostgreSQL + a real drift engine server.

- ``engine_server`` (session): one ``drift_engine.cli serve`` on a Unix socket the cluster's backends can
  reach (``tests/pg/engine.py``); tests create uniquely named collections in it (``unique_name``).
- ``drift_sql`` (session): the private cluster (``pg_cluster``) with ``CREATE EXTENSION drift CASCADE``
  done; skipped, with the reason, without PL/Python or when the extension files cannot be installed.
  ``drift_sql.address`` is the engine's address, usable as the ``server`` argument of ``drift.*``.
- ``fdw_server`` (session): also ``CREATE EXTENSION multicorn`` and a foreign server ``drift_test`` pointing
  at the engine; skipped when Multicorn is not installed (a failure under ``CI=true``).
- ``sql`` (function): a fresh autocommit psycopg connection to the cluster (closed afterwards).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.pg.cluster import (
    PgCluster,
    has_extension,
    install_drift_extension,
    missing_extension,
    server_major,
    skip_or_fail,
)
from tests.pg.engine import EngineError, EngineServer

FDW_SERVER = "drift_test"
_names = itertools.count()


@dataclass
class DriftSql:
    cluster: PgCluster
    engine: EngineServer

    @property
    def address(self) -> str:
        return self.engine.address

    def connect(self, **kwargs: Any) -> Any:
        return self.cluster.connect(**kwargs)


@pytest.fixture(scope="session")
def engine_server() -> Iterator[EngineServer]:
    srv = EngineServer()
    try:
        srv.start()
    except EngineError as exc:
        pytest.fail(f"could not start the drift engine server: {exc}")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def drift_sql(pg_cluster: PgCluster, engine_server: EngineServer) -> DriftSql:
    with pg_cluster.connect() as conn:
        if not has_extension(conn, "plpython3u"):
            major = server_major(pg_cluster.bindir)
            skip_or_fail(f"plpython3u is not installed: apt-get install postgresql-plpython3-{major}")
    reason = install_drift_extension(pg_cluster)
    if reason is not None:
        skip_or_fail(reason)
    with pg_cluster.connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS drift CASCADE")
    return DriftSql(pg_cluster, engine_server)


@pytest.fixture(scope="session")
def fdw_server(drift_sql: DriftSql) -> str:
    with drift_sql.connect() as conn:
        reason = missing_extension(conn, "multicorn", drift_sql.cluster.bindir)
        if reason is not None:
            skip_or_fail(reason)
        conn.execute("CREATE EXTENSION IF NOT EXISTS multicorn")
        conn.execute(f"DROP SERVER IF EXISTS {FDW_SERVER} CASCADE")
        conn.execute(
            f"CREATE SERVER {FDW_SERVER} FOREIGN DATA WRAPPER multicorn "
            f"OPTIONS (wrapper 'drift_fdw.DriftFDW', address '{drift_sql.address}')"
        )
    return FDW_SERVER


@pytest.fixture
def sql(drift_sql: DriftSql) -> Iterator[Any]:
    with drift_sql.connect() as conn:
        yield conn


@pytest.fixture
def unique_name() -> str:
    return f"pg{os.getpid()}_{next(_names)}"
