"""Running the crash matrix: start driver children with a crash point armed, then verify each data directory.

Contract:

* ``RunSpec`` is one child run (crash point, seed, ``DRIFT_CRASH_SKIP``, ops, settings), optionally followed by
  another run on the same directory (``then``: crash again soon after recovery). ``skip_for`` picks a
  seed-dependent skip below the number of times the workload reaches the point (``EXPECTED_HITS``, measured
  with ``--count-hits``), so most runs die somewhere in the middle of the workload.
* Children are forked from a fork server that has the engine and its numba kernels loaded (``preload``); each
  takes its run's environment and re-arms ``drift_engine.crashpoints`` (reload) before running the driver, so it
  behaves like ``python -m tests.crash.driver`` with ``DRIFT_CRASH_AT`` set, at a third of the start-up cost.
  ``DRIFT_CRASH_SUBPROCESS=1`` uses plain interpreters instead.
* ``run_matrix`` runs jobs ``workers`` at a time and verifies every finished job in this process, one at a
  time: the last child must have died by SIGKILL or finished cleanly; then the directory is reopened and
  checked (``check.verify_open``) against the acknowledged state, with the op in flight allowed per
  ``in_flight_rule`` (with several writer threads: each in-flight op either way); then more writes and a
  flush, search checked again, close, reopen, check again. It returns one ``RunOutcome`` per job; a failure
  carries the message and commands that reproduce the children (from the repository root), and keeps its
  directory (with ``data-as-crashed``, the store as the crash left it).
* A SIGKILL from outside (``RunSpec.kill_at``, ``random_kill``) lands once the child has begun op N, plus a
  few ms: anywhere, not only at a named point.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drift_engine import Engine, crashpoints
from tests.crash import driver
from tests.crash.check import (
    AckLog,
    CrashCheckError,
    acknowledged_state,
    check_search,
    expected_states,
    read_ack_log,
    verify_open,
    write_more,
)
from tests.crash.driver import COLLECTION, CRASH_POINTS, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 120.0

# Hits per point in a 100-op run (``--count-hits``, seeds 1-30): about the 10th percentile, (min-max). wal.* 83
# (71-97); flush.after_segments / after_commit 18 (15-30; bulk writes hit these two only); after_publish /
# after_truncate 16 (14-23); retire.before_delete 18 (13-52); train.* 3 (1-14); maintain.* 2 (1-23: ``maintain``
# ops and the background Maintainer). A skip is drawn below 90 % of it, so a few runs may finish without
# crashing; the matrix asserts that most of them crash.
EXPECTED_HITS = {
    "wal.before_write": 83,
    "wal.after_write": 83,
    "wal.after_fsync": 83,
    "flush.after_segments": 18,
    "flush.after_commit": 18,
    "flush.after_publish": 16,
    "flush.after_truncate": 16,
    "retire.before_delete": 18,
    "train.after_segments": 3,
    "train.after_commit": 3,
    "maintain.after_segments": 3,
    "maintain.after_commit": 3,
}
CALIBRATION_OPS = 100


def random_kill(seed: int, ops: int) -> tuple[int, float]:
    """A seed-dependent moment for an outside SIGKILL: once op N (1..ops) has begun, plus 0-20 ms; or, for one
    seed in ten, 0-300 ms after the start (while the engine opens or creates the collection)."""
    rng = np.random.default_rng([seed, 77])
    if rng.random() < 0.1:
        return 0, float(rng.uniform(0.0, 0.3))
    return int(rng.integers(1, ops + 1)), float(rng.uniform(0.0, 0.02))


def skip_for(point: str, seed: int, ops: int = CALIBRATION_OPS) -> int:
    """A seed-dependent ``DRIFT_CRASH_SKIP`` in ``[0, ~0.9 * expected hits)`` for a run of ``ops`` ops."""
    expected = EXPECTED_HITS[point] * ops / CALIBRATION_OPS
    bound = max(1, int(0.9 * expected))
    return int(np.random.default_rng([seed, CRASH_POINTS.index(point)]).integers(bound))


def in_flight_rule(point: str | None, durability: str) -> str:
    """Whether the write in flight at the crash must be lost, kept, or may be either."""
    if point == "wal.before_write":
        return "absent"  # killed before its record reached the file
    if point == "wal.after_write":
        return "present"  # the record is in the page cache, which a SIGKILL does not lose
    if point == "wal.after_fsync" and durability == "sync":
        return "present"  # in sync mode only the in-flight write's own fsync can reach this point
    return "either"


@dataclass(frozen=True)
class RunSpec:
    """One child run; ``then`` is a follow-up run on the same directory right after it (a second crash)."""

    point: str | None
    seed: int
    ops: int
    settings: Settings = field(default_factory=Settings)
    skip: int | None = None
    count_hits: bool = False  # calibration: the child counts crash-point hits (never crashes)
    run_no: int = 1
    then: RunSpec | None = None
    kill_at: tuple[int, float] | None = None  # SIGKILL from outside once op N has begun, after S more seconds

    @property
    def crash_skip(self) -> int:
        if self.point is None:
            return 0
        return skip_for(self.point, self.seed, self.ops) if self.skip is None else self.skip

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_CRASH_")}
        if self.point is not None:
            env["DRIFT_CRASH_AT"] = self.point
            env["DRIFT_CRASH_SKIP"] = str(self.crash_skip)
        return env

    def driver_args(self, data: str, log: str, base: str) -> list[str]:
        """Arguments of ``python -m tests.crash.driver`` for this run."""
        return [
            "--data",
            data,
            "--log",
            log,
            "--seed",
            str(self.seed),
            "--ops",
            str(self.ops),
            *self.settings.argv(),
            *(["--count-hits"] if self.count_hits else []),
            *(["--run", str(self.run_no), "--base", base] if self.run_no > 1 else []),
        ]

    def runs(self) -> list[RunSpec]:
        return [self, *(self.then.runs() if self.then else [])]

    def repro(self) -> str:
        """Shell commands (run from the repository root) that reproduce the child run(s)."""
        cmds = ["rm -rf crash-data crash-ack.log"]
        for spec in self.runs():
            env = f"DRIFT_CRASH_AT={spec.point} DRIFT_CRASH_SKIP={spec.crash_skip} " if spec.point else ""
            args = shlex.join(spec.driver_args("crash-data", "crash-ack.log", "base.json (kept in the run directory)"))
            cmds.append(f"{env}.venv/bin/python -m tests.crash.driver {args}")
        return "; ".join(cmds)

    def label(self) -> str:
        return " then ".join(
            f"{r.point or 'no-crash'} seed={r.seed} skip={r.crash_skip} {r.settings.durability}"
            + (f" killed once op {r.kill_at[0]} began, +{r.kill_at[1] * 1000:.1f} ms" if r.kill_at else "")
            for r in self.runs()
        )


@dataclass
class RunOutcome:
    spec: RunSpec
    crashed: bool = False  # the (last) child died at its crash point
    seconds: float = 0.0
    in_flight: str | None = None  # the op in flight at the (last) crash, e.g. "upsert"
    error: str | None = None


@dataclass
class _Job:
    spec: RunSpec
    workdir: Path
    returncodes: list[int] = field(default_factory=list)
    stderr: str = ""
    seconds: float = 0.0
    base: dict[int, int] = field(default_factory=dict)  # the state the last run started from

    @property
    def crashed(self) -> bool:
        return bool(self.returncodes) and self.returncodes[-1] == -signal.SIGKILL


def _rule(spec: RunSpec, returncode: int) -> str:
    if spec.settings.threads > 1:
        return "either"  # which thread the point killed is unknown, and the others' writes may be anywhere
    return in_flight_rule(spec.point if returncode == -signal.SIGKILL else None, spec.settings.durability)


def _child_entry(argv: list[str], env: dict[str, str], output: str) -> None:
    """In a child forked by the fork server: take the run's environment, arm its crash point, run the driver."""
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    importlib.reload(crashpoints)  # it reads DRIFT_CRASH_AT / DRIFT_CRASH_SKIP when (re)loaded
    sys.exit(driver.main(argv))


_FORK_SERVER: multiprocessing.context.BaseContext | None = None
_PROCESS_LOCK = threading.Lock()


def _fork_server() -> multiprocessing.context.BaseContext:
    """A fork server with numpy, numba kernels and the engine already loaded (saves ~0.5 s per child)."""
    global _FORK_SERVER
    if _FORK_SERVER is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["tests.crash.preload"])
        _FORK_SERVER = ctx
    return _FORK_SERVER


def _count_begun(log_path: Path) -> int:
    try:
        return log_path.read_bytes().count(b'"phase": "begin"')
    except FileNotFoundError:
        return 0


def _kill_when_begun(
    log_path: Path, kill_at: tuple[int, float], finished: Callable[[float], bool], kill: Callable[[], None]
) -> None:
    """Watch the ack log; once op ``kill_at[0]`` has begun, wait ``kill_at[1]`` s, then SIGKILL (unless it ended)."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline and not finished(0.002):
        if _count_begun(log_path) >= kill_at[0]:
            if not finished(kill_at[1]):
                kill()
            return


def _start_child(
    argv: list[str], env: dict[str, str], output: Path, log_path: Path, kill_at: tuple[int, float] | None = None
) -> tuple[int, str]:
    """Run the driver with ``argv`` in a fresh child process: (exit code, -9 for SIGKILL; its stderr + stdout)."""
    if os.environ.get("DRIFT_CRASH_SUBPROCESS"):  # plain interpreters, exactly like the reproduce commands
        with open(output, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "tests.crash.driver", *argv],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

            def exited(timeout: float) -> bool:
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    return False
                return True

            if kill_at is not None:
                _kill_when_begun(log_path, kill_at, exited, popen.kill)
            try:
                code = popen.wait(CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
                raise
        return code, output.read_text(errors="replace")
    proc = _fork_server().Process(target=_child_entry, args=(argv, env, str(output)), daemon=True)
    # ``Process.start`` polls every other live child of this process (``multiprocessing.process._cleanup``), and a
    # poll from two threads at once can read a child's status twice and report exit code 255 for it. So start
    # and poll only under one lock, and wait for the exit without polling.
    with _PROCESS_LOCK:
        proc.start()

    def ended(timeout: float) -> bool:
        return bool(multiprocessing.connection.wait([proc.sentinel], timeout))

    def kill() -> None:
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)  # not reaped yet: the sentinel would be ready

    if kill_at is not None:
        _kill_when_begun(log_path, kill_at, ended, kill)
    finished = ended(CHILD_TIMEOUT_S)
    with _PROCESS_LOCK:
        if not finished:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(argv, CHILD_TIMEOUT_S)
        proc.join()
        code = proc.exitcode
    assert code is not None
    return code, output.read_text(errors="replace") if output.exists() else ""


def _run_job(spec: RunSpec, workdir: Path) -> _Job:
    """Run the child(ren) of ``spec`` one after the other in ``workdir`` (no engine opened here)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    job = _Job(spec, workdir)
    log_path, base_path = workdir / "ack.log", workdir / "base.json"
    prev: RunSpec | None = None
    for run in spec.runs():
        if prev is not None:  # tell the next run which states the store may be in now
            log = read_ack_log(str(log_path))
            allowed = [state for _, state in expected_states(log, _rule(prev, job.returncodes[-1]), job.base)]
            named = sorted(log.ever_named | set(job.base))
            base_path.write_text(json.dumps({"states": [sorted(st.items()) for st in allowed], "named": named}))
        t0 = time.perf_counter()
        args = run.driver_args(str(workdir / "data"), str(log_path), str(base_path))
        output = workdir / f"output{run.run_no}.txt"
        returncode, job.stderr = _start_child(args, run.env(), output, log_path, run.kill_at)
        job.seconds += time.perf_counter() - t0
        job.returncodes.append(returncode)
        if returncode not in (0, -signal.SIGKILL):
            break
        if prev is not None:
            log = read_ack_log(str(log_path))
            if log.base_index is None:
                break
            job.base = allowed[log.base_index]
        prev = run
    return job


def verify_job(job: _Job) -> RunOutcome:
    """Check a finished job: exit status, ack log, then the reopened store (raises ``CrashCheckError``)."""
    spec, last = job.spec, job.spec.runs()[-1]
    out = RunOutcome(spec, crashed=job.crashed, seconds=job.seconds)
    log_path = job.workdir / "ack.log"
    if log_path.exists():
        log: AckLog | None = read_ack_log(str(log_path))
    else:  # killed before it opened its log: nothing was acknowledged
        log = AckLog() if job.crashed and len(job.returncodes) == 1 else None
    if log is not None and log.errors:
        raise CrashCheckError("the engine returned wrong results: " + "; ".join(log.errors))
    if len(job.returncodes) != len(spec.runs()) or job.returncodes[-1] not in (0, -signal.SIGKILL):
        raise CrashCheckError(f"child exited with {job.returncodes}:\n{job.stderr[-3000:]}")
    if log is None:
        raise CrashCheckError(f"child left no ack log (exit {job.returncodes}):\n{job.stderr[-3000:]}")
    if not out.crashed and not log.closed:
        raise CrashCheckError(f"child exited 0 without finishing its workload:\n{job.stderr[-3000:]}")
    if log.in_flight:
        out.in_flight = "+".join(sorted(op["op"] for op in log.in_flight))
    _, wrong = acknowledged_state(log, job.base)
    if wrong:
        raise CrashCheckError("acknowledged results were wrong: " + "; ".join(wrong))
    allowed = expected_states(log, _rule(last, job.returncodes[-1]), job.base)
    probe = log.ever_named | set(job.base)
    data = str(job.workdir / "data")
    if os.path.isdir(data):  # the store exactly as the crash left it, for a failing run's post-mortem
        shutil.copytree(data, job.workdir / "data-as-crashed")
    engine = Engine.open(data, durability=last.settings.durability)
    try:
        if not engine.has_collection(COLLECTION):
            if log.acked or job.base:
                raise CrashCheckError("the collection is gone after the crash")
            return out
        col = engine.collection(COLLECTION)
        state = verify_open(col, spec.seed, allowed, probe)
        state, named = write_more(col, spec.seed, state, base_version=10**7)
        problems: list[str] = []
        check_search(col, state, spec.seed, problems)  # filtered search again, after write_more's flush
        if problems:
            raise CrashCheckError("\n  ".join(["search after writing more is wrong:", *problems]))
    finally:
        engine.close()
    engine = Engine.open(data, durability=last.settings.durability)
    try:
        try:
            verify_open(engine.collection(COLLECTION), spec.seed, [("after more writes", state)], probe | named)
        except CrashCheckError as exc:
            raise CrashCheckError(f"second reopen, after writing more: {exc}") from None
    finally:
        engine.close()
    return out


def run_matrix(specs: Iterable[RunSpec], base: Path, *, workers: int = 2, keep: bool = False) -> list[RunOutcome]:
    """Run every spec (``workers`` jobs at a time), verify each here; failing runs keep their directory."""
    specs = list(specs)
    outcomes: list[RunOutcome] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crash-child") as pool:
        futures: dict[Future[_Job], tuple[RunSpec, Path]] = {}
        for n, spec in enumerate(specs):
            workdir = base / f"run{n:04d}-{(spec.point or 'none').replace('.', '_')}-s{spec.seed}"
            futures[pool.submit(_run_job, spec, workdir)] = (spec, workdir)
        for fut in as_completed(futures):
            spec, workdir = futures[fut]
            try:
                outcome = verify_job(fut.result())
            except (CrashCheckError, subprocess.TimeoutExpired) as exc:
                outcome = RunOutcome(spec, error=f"{spec.label()}: {exc}\n  reproduce: {spec.repro()}")
            else:
                if not keep:
                    shutil.rmtree(workdir, ignore_errors=True)
            outcomes.append(outcome)
    outcomes.sort(key=lambda o: (o.spec.point or "", o.spec.seed))
    return outcomes
