"""Shared pytest fixtures.

- ``pg_cluster`` (session): a private PostgreSQL server started for this test session (see
  ``tests/pg/cluster.py``): ``.dsn``, ``.host`` (the Unix socket folder), ``.port``, ``.bindir``,
  ``.connect()`` (psycopg, autocommit) and ``.psql(sql)``. Skipped, with the reason, when no PostgreSQL
  server is installed; stopped (``pg_ctl stop -m fast``) and removed at the end of the session.
- Tests marked ``multicorn`` are skipped when the ``multicorn`` extension is not available in that server;
  under ``CI=true`` they fail instead (``tests.pg.cluster.skip_or_fail``): a broken install never passes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg.cluster import ClusterError, PgCluster, find_bindir, missing_extension, server_major, skip_or_fail


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found via $DRIFT_PG_BINDIR, "
            "`pg_config --bindir` or /usr/lib/postgresql/*/bin; run `make setup` (apt package postgresql)"
        )
    cluster = PgCluster(bindir)
    try:
        cluster.start()
    except ClusterError as exc:
        cluster.stop()
        pytest.fail(f"could not start a private PostgreSQL {server_major(bindir)} cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _skip_without_multicorn(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("multicorn") is None:
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    with cluster.connect() as conn:
        reason = missing_extension(conn, "multicorn", cluster.bindir)
    if reason is not None:
        skip_or_fail(reason)
