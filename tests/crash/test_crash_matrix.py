"""The crash matrix (issue 3): SIGKILL the engine at every named crash point, reopen, check every acked write.

Each run starts ``tests.crash.driver`` in a fresh child process with ``DRIFT_CRASH_AT=<point>`` and a
seed-dependent ``DRIFT_CRASH_SKIP``; the parent then reopens the data directory in-process and checks it
(``tests.crash.check``): every acknowledged write present exactly once with its latest value, nothing never
written, deletes stay deleted, LMDB locations agree with the segments, recall unchanged, and the recovered
store takes more writes that survive another reopen.

* ``test_crash_point``: every point, 20 seeds (``slow``: 200), durability ``sync``.
* ``test_unsynced_modes_survive_sigkill``: engine-level ``durability="off"`` / ``"batch"``. A SIGKILL (the
  process dies, the OS and its page cache do not) keeps every acknowledged write even without an fsync per
  write. That is NOT a power-loss test: a power cut may lose the unsynced tail in those modes, which is their
  documented trade-off.
* ``test_crash_again_soon_after_recovery``: crash, then continue on the crashed directory and crash again at
  the same point within the first hits (recovery's own flushes included).
* ``test_sigkill_at_a_random_moment``: SIGKILL from outside, not at a named point.
* ``test_two_writer_threads``: two concurrent writers (group commit; two writes may be in flight).
* ``test_matrix_covers_every_crash_point_of_the_engine``, ``test_clean_run_reaches_every_point``: the matrix
  keeps up with the engine's crash points and the workload reaches each of them.

The terminal summary lists, per point, how many runs actually died there and which op was in flight.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

import drift_engine
from tests.crash.check import read_ack_log
from tests.crash.driver import CRASH_POINTS, Settings
from tests.crash.harness import EXPECTED_HITS, RunOutcome, RunSpec, random_kill, run_matrix
from tests.crash.test_txn_crash import POINTS as TXN_POINTS

FAST_SEEDS = 20
SLOW_SEEDS = 200
OPS = 100
MIN_CRASHED = 0.75  # share of runs per point that must actually die at the point


def _assert_matrix(
    point: str, outcomes: list[RunOutcome], stats: dict, key: str, *, min_crashed: float = MIN_CRASHED
) -> None:
    failures = [o.error for o in outcomes if o.error]
    crashed = sum(o.crashed for o in outcomes)
    in_flight = Counter(o.in_flight or "-" for o in outcomes if o.crashed)
    stats[key] = {"runs": len(outcomes), "crashed": crashed, "failed": len(failures), "in_flight": dict(in_flight)}
    assert not failures, f"{len(failures)} of {len(outcomes)} runs failed:\n" + "\n".join(failures[:5])
    assert crashed >= min_crashed * len(outcomes), (
        f"only {crashed} of {len(outcomes)} runs reached {point}: the workload or EXPECTED_HITS is off"
    )


def _specs(point: str, seeds: range, settings: Settings) -> list[RunSpec]:
    return [RunSpec(point, seed, OPS, settings) for seed in seeds]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_point(point: str, tmp_path: Path, crash_stats: dict) -> None:
    outcomes = run_matrix(_specs(point, range(1, FAST_SEEDS + 1), Settings()), tmp_path)
    _assert_matrix(point, outcomes, crash_stats, f"sync {point}")


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_point_many_seeds(point: str, tmp_path: Path, crash_stats: dict) -> None:
    outcomes = run_matrix(_specs(point, range(1000, 1000 + SLOW_SEEDS), Settings()), tmp_path)
    _assert_matrix(point, outcomes, crash_stats, f"sync {point} (slow)")


@pytest.mark.parametrize(
    ("durability", "point"),
    [
        ("off", "wal.after_write"),
        ("off", "flush.after_commit"),
        ("off", "train.after_commit"),
        ("batch", "wal.after_write"),
    ],
)
def test_unsynced_modes_survive_sigkill(point: str, durability: str, tmp_path: Path, crash_stats: dict) -> None:
    """Engine-level ``durability="off"``/``"batch"``: acked writes sit in the page cache, which SIGKILL keeps."""
    outcomes = run_matrix(_specs(point, range(500, 505), Settings(durability=durability)), tmp_path)
    _assert_matrix(point, outcomes, crash_stats, f"{durability} {point}")


CHAIN_POINTS = (
    "wal.after_write",
    "flush.after_segments",
    "flush.after_commit",
    "flush.after_truncate",
    "retire.before_delete",
    "train.after_commit",
)


def _chains(point: str, seeds: range) -> list[RunSpec]:
    """Crash at ``point``, then continue on the crashed directory and crash there again, soon after recovery."""
    return [RunSpec(point, seed, OPS, then=RunSpec(point, seed, OPS // 2, skip=seed % 3, run_no=2)) for seed in seeds]


@pytest.mark.parametrize("point", CHAIN_POINTS)
def test_crash_again_soon_after_recovery(point: str, tmp_path: Path, crash_stats: dict) -> None:
    outcomes = run_matrix(_chains(point, range(300, 303)), tmp_path)
    _assert_matrix(point, outcomes, crash_stats, f"twice {point}")


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_again_soon_after_recovery_many_seeds(point: str, tmp_path: Path, crash_stats: dict) -> None:
    outcomes = run_matrix(_chains(point, range(3000, 3050)), tmp_path)
    _assert_matrix(point, outcomes, crash_stats, f"twice {point} (slow)")


def _random_kills(seeds: range) -> list[RunSpec]:
    return [RunSpec(None, seed, OPS, kill_at=random_kill(seed, OPS)) for seed in seeds]


def test_sigkill_at_a_random_moment(tmp_path: Path, crash_stats: dict) -> None:
    """SIGKILL from outside, anywhere (not only at named points): once a random op began, plus 0-20 ms."""
    outcomes = run_matrix(_random_kills(range(700, 720)), tmp_path)
    _assert_matrix("a random moment", outcomes, crash_stats, "sync random SIGKILL", min_crashed=0.5)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_many_seeds(tmp_path: Path, crash_stats: dict) -> None:
    outcomes = run_matrix(_random_kills(range(7000, 7200)), tmp_path)
    _assert_matrix("a random moment", outcomes, crash_stats, "sync random SIGKILL (slow)", min_crashed=0.5)


TWO_WRITER_POINTS = ("wal.after_fsync", "flush.after_commit", "flush.after_truncate", "train.after_commit")


def _two_writers(point: str, seeds: range) -> list[RunSpec]:
    """Two writer threads (disjoint ids): group commit, and each thread's write may be in flight at the crash."""
    settings = Settings(threads=2)
    if point == "random":
        return [RunSpec(None, seed, OPS, settings, kill_at=random_kill(seed, OPS)) for seed in seeds]
    return [RunSpec(point, seed, OPS, settings) for seed in seeds]


@pytest.mark.parametrize("point", [*TWO_WRITER_POINTS, "random"])
def test_two_writer_threads(point: str, tmp_path: Path, crash_stats: dict) -> None:
    outcomes = run_matrix(_two_writers(point, range(800, 804)), tmp_path)
    _assert_matrix(point, outcomes, crash_stats, f"2 writers {point}", min_crashed=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("point", [*CRASH_POINTS, "random"])
def test_two_writer_threads_many_seeds(point: str, tmp_path: Path, crash_stats: dict) -> None:
    outcomes = run_matrix(_two_writers(point, range(8000, 8050)), tmp_path)
    _assert_matrix(point, outcomes, crash_stats, f"2 writers {point} (slow)", min_crashed=0.5)


def test_matrix_covers_every_crash_point_of_the_engine() -> None:
    """Every ``crashpoints.hit("...")`` in the engine (and the WAL hook's points) is in the matrix."""
    root = Path(drift_engine.__file__).parent
    found = set(re.findall(r"""crashpoints\.hit\(\s*["']([\w.]+)["']""", _sources(root)))
    found |= set(re.findall(r"""_hook\(\s*["'](wal\.[\w.]+)["']""", _sources(root / "wal")))
    assert found, "no crash points found in the engine source"
    missing = sorted(found - set(CRASH_POINTS) - {p for p, _ in TXN_POINTS})  # transactions: test_txn_crash
    assert not missing, f"crash points not in the matrix (add them to driver.CRASH_POINTS / EXPECTED_HITS): {missing}"


def _sources(root: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")))


def test_clean_run_reaches_every_point(tmp_path: Path, crash_stats: dict) -> None:
    """A run without a crash verifies like the others, and its workload reaches every point of the matrix."""
    outcomes = run_matrix([RunSpec(None, 7, OPS, count_hits=True)], tmp_path, keep=True)
    _assert_matrix("(none)", outcomes, crash_stats, "no crash", min_crashed=0.0)
    hits = read_ack_log(str(next(tmp_path.glob("run*/ack.log")))).hits or {}
    thin = {p: hits.get(p, 0) for p in CRASH_POINTS if hits.get(p, 0) < EXPECTED_HITS[p] // 2}
    assert not thin, f"crash points the workload barely reaches: {thin} (hits {hits})"
