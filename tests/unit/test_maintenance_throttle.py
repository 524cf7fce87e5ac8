"""The Maintainer yields to foreground searches (maintenance.throttle): deterministic tests of the monitor, the
pacing policy (an injected clock) and the Maintainer waiting for in-flight searches (ordering, not timing)."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.config import CollectionParams
from drift_engine.maintenance.scheduler import Maintainer
from drift_engine.maintenance.throttle import MAX_FACTOR, MIN_SAMPLES, ForegroundMonitor, LatencyThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _search(mon: ForegroundMonitor, clock: Clock, seconds: float, *, during_job: bool = False) -> None:
    if during_job:
        mon.job_started()
    token = mon.begin()
    clock.now += seconds
    mon.end(token)
    if during_job:
        mon.job_finished()


def test_monitor_classifies_searches_by_overlap_with_jobs():
    clock = Clock()
    mon = ForegroundMonitor(clock)
    _search(mon, clock, 0.001)
    assert list(mon.idle) == [pytest.approx(0.001)] and not mon.loaded
    _search(mon, clock, 0.002, during_job=True)
    assert list(mon.loaded) == [pytest.approx(0.002)]
    token = mon.begin()  # a job starts and ends while the search runs: it overlapped
    assert mon.in_flight == 1
    mon.job_started()
    mon.job_finished()
    clock.now += 0.003
    mon.end(token)
    assert mon.in_flight == 0
    assert mon.take_loaded() == [pytest.approx(0.002), pytest.approx(0.003)]
    assert not mon.loaded and len(mon.idle) == 1


def test_pause_grows_while_loaded_p99_is_high_and_shrinks_when_it_recovers():
    clock = Clock()
    mon = ForegroundMonitor(clock)
    thr = LatencyThrottle(mon, max_slowdown=1.5, max_pause=10.0)
    assert thr.pause_after(0.01) == 0.0  # no foreground at all: nothing to protect
    for _ in range(MIN_SAMPLES):
        _search(mon, clock, 0.001)
    assert thr.pause_after(0.01) == 0.0  # baseline, but no loaded samples yet
    pauses = []
    for _ in range(4):  # searches overlapping jobs take 3x the idle p99
        for _ in range(MIN_SAMPLES):
            _search(mon, clock, 0.003, during_job=True)
        pauses.append(thr.pause_after(0.01))
    assert pauses == [pytest.approx(0.01), pytest.approx(0.02), pytest.approx(0.04), pytest.approx(0.08)]
    assert thr.last_ratio == pytest.approx(3.0)
    _search(mon, clock, 0.003, during_job=True)  # too few new samples: the factor stays, the sample is kept
    assert thr.pause_after(0.01) == pytest.approx(0.08)
    assert len(mon.loaded) == 1
    recovered = []
    for _ in range(10):  # overlapping searches are as fast as idle ones again: back to no pause
        for _ in range(MIN_SAMPLES):
            _search(mon, clock, 0.001, during_job=True)
        recovered.append(thr.pause_after(0.01))
    # the kept slow sample still counts in the first decision; then the factor halves down to 0
    assert recovered[:3] == [pytest.approx(0.16), pytest.approx(0.08), pytest.approx(0.04)]
    assert recovered[-1] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(recovered))


def test_pause_is_capped_and_dropped_when_the_foreground_goes_quiet():
    clock = Clock()
    mon = ForegroundMonitor(clock)
    thr = LatencyThrottle(mon, max_pause=0.5, active_window=1.0)
    for _ in range(MIN_SAMPLES):
        _search(mon, clock, 0.001)
    for _ in range(20):
        for _ in range(MIN_SAMPLES):
            _search(mon, clock, 0.01, during_job=True)
        pause = thr.pause_after(1.0)
    assert thr.factor == MAX_FACTOR and pause == 0.5
    clock.now += 2.0  # no search ended for longer than active_window
    assert thr.pause_after(1.0) == 0.0 and thr.factor == 0.0


def test_wait_quiet_waits_for_in_flight_searches_up_to_max_wait():
    clock = Clock()
    mon = ForegroundMonitor(clock)
    polls = []
    token = mon.begin()

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        clock.now += seconds
        if len(polls) == 3:
            mon.end(token)

    thr = LatencyThrottle(mon, max_wait=1.0, poll=0.01, sleep=sleep)
    assert thr.wait_quiet() is True and len(polls) == 3 and thr.waits == 1
    assert thr.wait_quiet() is True and len(polls) == 3  # quiet: no wait
    mon.begin()  # never ends
    assert thr.wait_quiet() is False and thr.waits == 2
    assert sum(polls) >= 1.0


def test_maintainer_runs_no_job_while_a_search_is_in_flight():
    ran = threading.Event()
    calls = []

    def run_one() -> bool:
        calls.append(mon.in_flight)
        ran.set()
        return False

    mon = ForegroundMonitor()
    thr = LatencyThrottle(mon, max_wait=3600.0, poll=0.001)
    params = CollectionParams(maintain_interval=3600.0)
    token = mon.begin()
    m = Maintainer("t", run_one, lambda: params, monitor=mon, throttle=thr)
    try:
        m.wake()
        assert not ran.wait(0.3)  # held back by the in-flight search (max_wait is an hour)
        mon.end(token)
        assert ran.wait(30)
        assert calls == [0] and thr.waits == 1
    finally:
        m.stop()


def test_collection_search_feeds_the_monitor(tmp_path):
    rng = np.random.default_rng(0)
    with Engine.open(tmp_path / "d", durability="off") as eng:
        col = eng.create_collection("c", 4, maintain_duty=0.0, auto_train_threshold=0)
        col.upsert(np.arange(500), rng.standard_normal((500, 4)).astype(np.float32))
        col.train(n_buckets=4)
        mon = col._maintainer.foreground
        before = len(mon.idle) + len(mon.loaded)
        for _ in range(5):
            col.search(rng.standard_normal(4).astype(np.float32), k=3)
        with pytest.raises(Exception):  # noqa: B017 - a failing search still ends its sample
            col.search(np.ones(3, dtype=np.float32), k=3)
        assert len(mon.idle) + len(mon.loaded) == before + 5
        assert mon.in_flight == 0
