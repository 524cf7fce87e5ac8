"""A private, throw-away PostgreSQL cluster for tests (used by the ``pg_cluster`` fixture).

Contract:

- ``find_bindir()`` returns the folder of the PostgreSQL *server* binaries (``initdb``, ``pg_ctl``,
  ``postgres``): ``$DRIFT_PG_BINDIR``, else ``pg_config --bindir`` if it has them, else the highest
  ``/usr/lib/postgresql/<major>/bin``; ``None`` when there is no server.
- ``PgCluster.start()`` makes a temporary folder, ``initdb -A trust -U postgres`` in it and starts the
  server on a free port, listening only on a Unix socket in that folder (and on 127.0.0.1 with
  ``PgCluster(..., tcp=True)``; trust authentication, so only for throw-away clusters). When the tests run as root, both
  run as the ``postgres`` OS user (PostgreSQL refuses root). The server's environment is clean but for
  ``PYTHONPATH=<venv site-packages>:<repo root>`` (so PL/Python imports this repository's
  ``drift_engine`` and the venv's numpy), ``NUMBA_CACHE_DIR`` and ``HOME`` inside the temp folder.
- ``stop()`` runs ``pg_ctl stop -m fast`` (also after a ``start()`` that failed half-way, whenever the data
  folder has a ``postmaster.pid``) and removes the folder (kept when ``DRIFT_PG_KEEP=1``). The cluster is
  registered with ``tests.reaper`` from initdb on, so it is stopped even when the process that started it
  is killed.
- Before starting as root it checks that the ``postgres`` user can reach the repository and the venv;
  when a parent folder blocks it, it grants that folder search (``o+x``, not list) permission only if
  ``CI`` or ``DRIFT_PG_FIX_PERMS=1`` is set, and otherwise fails with the folder named.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests import reaper

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
PG_OS_USER = "postgres"


class ClusterError(RuntimeError):
    """The cluster could not be set up or started; the message says why."""


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / b, os.X_OK) for b in SERVER_BINARIES)


def find_bindir() -> Path | None:
    """The folder with initdb / pg_ctl / postgres, or ``None`` when no PostgreSQL server is installed."""
    env = os.environ.get("DRIFT_PG_BINDIR")
    if env:
        return Path(env) if _has_server(Path(env)) else None
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            bindir = Path(out.stdout.strip())
            if _has_server(bindir):
                return bindir
        except (OSError, subprocess.CalledProcessError):
            pass
    candidates = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        try:
            major = float(d.parent.name)
        except ValueError:
            continue
        if _has_server(d):
            candidates.append((major, d))
    return max(candidates)[1] if candidates else None


def server_major(bindir: Path) -> str:
    """The server's major version, e.g. ``"15"``."""
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1].split(".")[0]


def venv_site_packages(python: str | Path | None = None) -> Path:
    """The purelib folder of the venv the tests run in (or of ``python``, asked in a subprocess)."""
    if python is None:
        default = REPO_ROOT / ".venv" / "bin" / "python"
        if Path(sys.prefix).resolve() == (REPO_ROOT / ".venv").resolve() or not default.exists():
            return Path(sysconfig.get_paths()["purelib"])
        python = default
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _blocking_ancestors(path: Path, uid: int, gids: set[int]) -> list[Path]:
    """Folders from / down to ``path`` that user ``uid`` cannot search (traverse)."""
    blocked = []
    for p in [*reversed(path.parents), path]:
        st = p.stat()
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            blocked.append(p)
    return blocked


class PgCluster:
    """One private PostgreSQL server; see the module docstring."""

    def __init__(self, bindir: Path, *, site_packages: Path | None = None, tcp: bool = False) -> None:
        self.bindir = bindir
        self.tcp = tcp  # also listen on 127.0.0.1 (``connect(tcp=True)``), e.g. for benchmarks
        self.site_packages = site_packages or venv_site_packages()
        self.as_root = os.geteuid() == 0
        self.tmp: Path | None = None
        self.datadir: Path | None = None
        self.host = ""  # the Unix socket folder
        self.port = 0
        self.logfile: Path | None = None
        self.running = False
        self._pw: pwd.struct_passwd | None = None
        self._reaper_token: int | None = None

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> PgCluster:
        if self.as_root:
            try:
                self._pw = pwd.getpwnam(PG_OS_USER)
            except KeyError as exc:
                raise ClusterError(f"running as root but there is no {PG_OS_USER!r} OS user") from exc
        self.tmp = Path(tempfile.mkdtemp(prefix="drift-pg-"))
        self.datadir = self.tmp / "data"
        sock = self.tmp / "sock"
        sock.mkdir()
        (self.tmp / "home").mkdir()
        self.host = str(sock)
        self.logfile = self.tmp / "server.log"
        if self.as_root:
            self._ensure_reachable([REPO_ROOT, self.site_packages, self.tmp])
            for p in (self.tmp, sock, self.tmp / "home"):
                os.chown(p, self._pw.pw_uid, self._pw.pw_gid)
        initdb_opts = ["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]
        self._run([self._bin("initdb"), "-D", str(self.datadir), *initdb_opts], what="initdb")
        immediate = [self._bin("pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"]
        self._reaper_token = reaper.register_cluster(self._wrap(immediate), self.datadir)
        self.port = free_port()
        listen = "127.0.0.1" if self.tcp else ""
        opts = f"-p {self.port} -k {self.host} -c listen_addresses='{listen}' -c fsync=off"
        start = ["-l", str(self.logfile), "-o", opts, "-w", "-t", "60", "start"]
        self._run([self._bin("pg_ctl"), "-D", str(self.datadir), *start], what="pg_ctl start")
        self.running = True
        return self

    def stop(self) -> None:
        started = self.datadir is not None and (self.running or (self.datadir / "postmaster.pid").exists())
        if started:
            try:
                stop = [self._bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"]
                self._run(stop, what="pg_ctl stop")
            finally:
                self.running = False
        reaper.unregister(self._reaper_token)
        self._reaper_token = None
        if self.tmp is not None and os.environ.get("DRIFT_PG_KEEP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- clients --------------------------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        return f"host={self.host} port={self.port} user=postgres dbname=postgres"

    def connect(self, dbname: str = "postgres", *, tcp: bool = False, **kwargs: Any) -> Any:
        """A psycopg connection (autocommit by default); over TCP when ``tcp`` (needs ``PgCluster(tcp=True)``)."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        host = "127.0.0.1" if tcp else self.host
        return psycopg.connect(host=host, port=self.port, user="postgres", dbname=dbname, **kwargs)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` with psql (stops at the first error); return its unaligned, tuples-only output."""
        cmd = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            dbname,
            "-c",
            sql,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
        if out.returncode != 0:
            raise ClusterError(f"psql failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout.rstrip("\n")

    def server_log(self, tail: int = 40) -> str:
        if self.logfile is None or not self.logfile.exists():
            return ""
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-tail:])

    # --- internals ------------------------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    def server_env(self) -> dict[str, str]:
        assert self.tmp is not None
        return {
            "PATH": f"{self.bindir}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.tmp / "home"),
            "PYTHONPATH": f"{self.site_packages}:{REPO_ROOT}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "NUMBA_CACHE_DIR": str(self.tmp / "home" / "numba-cache"),
        }

    def _wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` with the server's clean environment, as the ``postgres`` OS user when we are root."""
        cmd = ["env", "-i", *(f"{k}={v}" for k, v in self.server_env().items()), *argv]
        return ["runuser", "-u", PG_OS_USER, "--", *cmd] if self.as_root else cmd

    def _run(self, argv: Sequence[str], *, what: str) -> None:
        cmd = self._wrap(argv)
        out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        if out.returncode != 0:
            detail = (out.stderr or out.stdout).strip()
            raise ClusterError(f"{what} failed ({out.returncode}): {detail}\n{self.server_log()}")

    def _ensure_reachable(self, paths: list[Path]) -> None:
        pw = self._pw
        assert pw is not None
        gids = {pw.pw_gid, *(g.gr_gid for g in _groups_of(pw.pw_name))}
        blocked: list[Path] = []
        for p in paths:
            blocked += [b for b in _blocking_ancestors(p.resolve(), pw.pw_uid, gids) if b not in blocked]
        blocked = [b for b in blocked if b != self.tmp]  # chowned to postgres below
        if blocked and (os.environ.get("CI") or os.environ.get("DRIFT_PG_FIX_PERMS") == "1"):
            for b in blocked:
                print(
                    f"pg_cluster: granting o+x (search only) on {b} so {PG_OS_USER} can reach the venv",
                    file=sys.stderr,
                )
                b.chmod(b.stat().st_mode | stat.S_IXOTH)
        elif blocked:
            names = " ".join(str(b) for b in blocked)
            raise ClusterError(
                f"the {PG_OS_USER!r} OS user cannot reach the repository or its venv: no search permission "
                f"on {names}. Run `chmod o+x {names}` or set DRIFT_PG_FIX_PERMS=1 to let the tests do it."
            )
        for p in paths[:2]:  # the folders PL/Python lists and reads (ACLs and all)
            ok = subprocess.run(["runuser", "-u", PG_OS_USER, "--", "test", "-r", str(p), "-a", "-x", str(p)])
            if ok.returncode != 0:
                raise ClusterError(f"the {PG_OS_USER!r} OS user cannot read {p}: PL/Python could not import from it")


def _groups_of(user: str) -> list[Any]:
    import grp

    return [g for g in grp.getgrall() if user in g.gr_mem]


def has_extension(conn: Any, name: str) -> bool:
    """Whether extension ``name`` can be created in this server (it is in ``pg_available_extensions``)."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = %s", (name,))
        return cur.fetchone() is not None


REQUIRED_EXTENSIONS = {
    "multicorn": "Multicorn2 (the foreign data wrapper)",
    "vector": "pgvector (the vector type and the comparison benchmarks)",
}


def missing_extension(conn: Any, name: str, bindir: Path) -> str | None:
    """Why ``CREATE EXTENSION name`` cannot work in this server, or ``None`` when it can."""
    if has_extension(conn, name):
        return None
    what = REQUIRED_EXTENSIONS.get(name, name)
    return (
        f"the {name} extension ({what}) is not available in PostgreSQL {server_major(bindir)}: "
        "`make setup` builds it from the pinned tarball in $DRIFT_VENDOR_DIR or ../shared/vendor "
        "(scripts/extensions.sh); see its output"
    )


def skip_or_fail(reason: str) -> None:
    """Skip the test with ``reason``, or fail it when ``CI`` is set: in CI a missing extension is a broken
    install, never a silent skip."""
    import pytest

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


# --- the drift extension ------------------------------------------------------------------------------
EXTENSION_FILES = ("drift.control", "drift--0.1.0.sql")


def install_drift_extension(cluster: PgCluster) -> str | None:
    """Make ``CREATE EXTENSION drift`` possible in ``cluster``: copy ``sql/drift*`` into the server's
    ``SHAREDIR/extension`` when they are missing or differ (as root; ``make setup`` does the same).
    Returns ``None`` when the installed files match the repository's, else why they cannot be installed."""
    with cluster.connect() as conn:
        sharedir = conn.execute("SELECT setting FROM pg_config WHERE name = 'SHAREDIR'").fetchone()[0]
    dest = Path(sharedir) / "extension"
    stale = [
        name
        for name in EXTENSION_FILES
        if not (dest / name).exists() or (dest / name).read_bytes() != (REPO_ROOT / "sql" / name).read_bytes()
    ]
    if not stale:
        return None
    if os.geteuid() != 0:
        files = " ".join(f"sql/{name}" for name in stale)
        return f"the drift extension files are not installed in {dest}: run `sudo install -m 0644 {files} {dest}/`"
    for name in stale:
        shutil.copyfile(REPO_ROOT / "sql" / name, dest / name)
        (dest / name).chmod(0o644)
    return None
