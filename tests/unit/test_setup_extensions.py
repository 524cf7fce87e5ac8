"""scripts/extensions.sh refuses a tarball whose checksum is not the pinned one, and skips what is installed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.pg.cluster import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "extensions.sh"
SHARED_VENDOR = REPO_ROOT.parent / "shared" / "vendor"


def _pg_config() -> Path:
    found = shutil.which("pg_config") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_config"))), None)
    if found is None:
        pytest.skip("no pg_config: PostgreSQL's build files are not installed (make setup installs them)")
    return Path(found)


def _fake_pg_config(tmp: Path) -> Path:
    """A pg_config whose pkglibdir / sharedir are empty folders: nothing looks installed."""
    (tmp / "lib").mkdir()
    (tmp / "share" / "extension").mkdir(parents=True)
    fake = tmp / "pg_config"
    fake.write_text(
        "#!/bin/bash\n"
        f'case "$1" in --pkglibdir) echo {tmp}/lib;; --sharedir) echo {tmp}/share;; '
        f'*) exec {_pg_config()} "$@";; esac\n'
    )
    fake.chmod(0o755)
    return fake


def _run(tmp: Path, vendor: Path, **env: str) -> subprocess.CompletedProcess[str]:
    venv = tmp / "venv"
    venv.mkdir(exist_ok=True)
    full = {k: v for k, v in os.environ.items() if k != "DRIFT_SKIP_EXTENSIONS"}
    full |= {"DRIFT_VENDOR_DIR": str(vendor), "DRIFT_VENDOR_CACHE": str(tmp / "cache"), **env}
    cmd = ["bash", str(SCRIPT), str(_fake_pg_config(tmp)), str(venv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=120)


def test_a_tarball_with_another_checksum_is_refused(tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "multicorn2-3.2.tar.gz").write_bytes(b"not the release")
    out = _run(tmp_path, vendor)
    assert out.returncode == 1
    assert "refusing to build it" in out.stderr and "scripts/vendor.lock pins" in out.stderr
    assert not (tmp_path / "venv" / "build" / "extensions" / "multicorn2-3.2").exists()


def test_a_tarball_that_its_sha256sums_disowns_is_refused(tmp_path: Path) -> None:
    real = SHARED_VENDOR / "multicorn2-3.2.tar.gz"
    if not real.exists():
        pytest.skip("../shared/vendor has no multicorn2-3.2.tar.gz")
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    shutil.copy(real, vendor / real.name)
    other = hashlib.sha256(b"something else").hexdigest()
    (vendor / "SHA256SUMS").write_text(f"{other}  {real.name}\n")
    out = _run(tmp_path, vendor)
    assert out.returncode == 1
    assert "its SHA256SUMS lists" in out.stderr


def test_skip_variable_skips_everything(tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "multicorn2-3.2.tar.gz").write_bytes(b"would be refused if looked at")
    out = _run(tmp_path, vendor, DRIFT_SKIP_EXTENSIONS="1")
    assert out.returncode == 0 and out.stderr == ""
