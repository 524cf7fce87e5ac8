"""PL/Python in the private cluster imports this repository's drift_engine and the venv's numpy."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy
import pytest

from tests.pg.cluster import REPO_ROOT, PgCluster, has_extension, server_major

pytestmark = pytest.mark.pg

PROBE = """
CREATE OR REPLACE FUNCTION pg_temp.drift_probe() RETURNS text[] LANGUAGE plpython3u AS $$
import sys
import numpy
import drift_engine
return [drift_engine.__file__, numpy.__file__, numpy.__version__, "%d.%d.%d" % sys.version_info[:3]]
$$;
"""


def test_plpython_imports_repo_and_venv(pg_cluster: PgCluster) -> None:
    with pg_cluster.connect() as conn:
        if not has_extension(conn, "plpython3u"):
            major = server_major(pg_cluster.bindir)
            pytest.skip(f"plpython3u is not installed: apt-get install postgresql-plpython3-{major}")
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
        conn.execute(PROBE)
        row = conn.execute("SELECT pg_temp.drift_probe()").fetchone()
    assert row is not None
    engine_file, numpy_file, numpy_version, py_version = row[0]
    assert Path(engine_file).resolve() == (REPO_ROOT / "drift_engine" / "__init__.py").resolve()
    assert Path(numpy_file).resolve().is_relative_to(pg_cluster.site_packages.resolve())
    assert numpy_version == numpy.__version__
    assert py_version == ".".join(map(str, sys.version_info[:3]))


def test_psql_helper(pg_cluster: PgCluster) -> None:
    assert pg_cluster.psql("SELECT 40 + 2") == "42"
    assert str(pg_cluster.port) in pg_cluster.dsn and pg_cluster.host in pg_cluster.dsn
