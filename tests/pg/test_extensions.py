"""The extensions `make setup` builds (scripts/extensions.sh) are installed for the test server, at the pinned
versions, and Multicorn's Python package is the venv's (the one the backends import), not the system's.

Outside CI a missing one is a skip with the reason; under ``CI=true`` it is a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pg.cluster import REPO_ROOT, REQUIRED_EXTENSIONS, PgCluster, missing_extension, skip_or_fail

pytestmark = pytest.mark.pg

LOCK = REPO_ROOT / "scripts" / "vendor.lock"
EXTENSION_OF = {"multicorn2": "multicorn", "pgvector": "vector"}


def _pinned() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version, *_ = line.split()
            pins[EXTENSION_OF[name]] = version
    return pins


def test_lock_pins_every_required_extension() -> None:
    assert set(_pinned()) == set(REQUIRED_EXTENSIONS)


@pytest.mark.parametrize("extension", sorted(REQUIRED_EXTENSIONS))
def test_required_extension_is_installed_at_the_pinned_version(pg_cluster: PgCluster, extension: str) -> None:
    with pg_cluster.connect() as conn:
        reason = missing_extension(conn, extension, pg_cluster.bindir)
        if reason is not None:
            skip_or_fail(reason)
        row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = %s", (extension,))
        assert row.fetchone()[0] == _pinned()[extension]


def test_multicorn_python_package_comes_from_the_venv(pg_cluster: PgCluster) -> None:
    with pg_cluster.connect() as conn:
        reason = missing_extension(conn, "multicorn", pg_cluster.bindir)
        if reason is not None:
            skip_or_fail(reason)
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
        conn.execute(
            "CREATE OR REPLACE FUNCTION pg_temp.multicorn_file() RETURNS text LANGUAGE plpython3u AS "
            "$$ import multicorn; return multicorn.__file__ $$"
        )
        path = Path(conn.execute("SELECT pg_temp.multicorn_file()").fetchone()[0])
    assert path.resolve().is_relative_to(pg_cluster.site_packages.resolve()), path
