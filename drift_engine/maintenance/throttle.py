"""Foreground-latency feedback for the background Maintainer (DESIGN §9: "rate-limited so foreground p99 holds").

Contract
--------
* ``ForegroundMonitor`` is told about every foreground search (``begin`` / ``end``, called by
  ``Collection.search``; both are lock-free: counters from ``itertools.count`` and ``deque`` appends, atomic
  under the GIL) and about every maintenance job (``job_started`` / ``job_finished``, by the Maintainer).
  It keeps the searches in flight and two windows of recent latencies: *idle* samples (no job ran at any
  time during the search) and *loaded* samples (a job ran during some part of it).  The idle window's p99 is
  the baseline; the loaded window's p99 is what maintenance currently costs the foreground.
* ``LatencyThrottle`` turns that into the Maintainer's pacing, with no fixed duty:

  - before a job, ``wait_quiet`` waits (polling every ``poll`` seconds) until no search is in flight, for at
    most ``max_wait`` seconds — a job starts in a gap between searches;
  - after a job that took ``t`` seconds, ``pause_after(t)`` is how long to sleep: 0 when no search ended in
    the last ``active_window`` seconds (nothing to protect) or when there is no baseline yet
    (< ``MIN_SAMPLES`` idle samples); otherwise a multiplicative back-off factor ``f`` is doubled (up to
    ``MAX_FACTOR``) when the loaded p99 exceeds ``max_slowdown`` times the idle p99, halved otherwise
    (down to 0), and the pause is ``f · t``, capped at ``max_pause`` so maintenance always progresses.
    Loaded samples are consumed by the decision that reads them (each decision judges the searches that ran
    since the previous one); with fewer than ``MIN_SAMPLES`` new loaded samples the factor is kept.
* Every input is explicit (the clock is injectable), so the policy is tested deterministically.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable

import numpy as np

MIN_SAMPLES = 8
MAX_FACTOR = 64.0
IDLE_WINDOW = 512
LOADED_WINDOW = 256


class ForegroundMonitor:
    """Searches in flight and recent foreground latencies, split by whether maintenance overlapped them."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._begun = itertools.count()
        self._ended = itertools.count()
        self._n_begun = 0
        self._n_ended = 0
        self._epoch = 0  # odd while a job runs; +1 at each job start and finish
        self.idle: deque[float] = deque(maxlen=IDLE_WINDOW)
        self.loaded: deque[float] = deque(maxlen=LOADED_WINDOW)
        self.last_end = -float("inf")

    # -- foreground side --------------------------------------------------------------------------
    def begin(self) -> tuple[float, int]:
        """A search starts; pass the returned token to ``end``."""
        self._n_begun = next(self._begun) + 1
        return self.clock(), self._epoch

    def end(self, token: tuple[float, int]) -> None:
        """The search of ``token`` finished (successfully or not)."""
        t0, epoch0 = token
        now = self.clock()
        self._n_ended = next(self._ended) + 1
        self.last_end = now
        overlapped = (epoch0 & 1) or self._epoch != epoch0
        (self.loaded if overlapped else self.idle).append(now - t0)

    @property
    def in_flight(self) -> int:
        return max(0, self._n_begun - self._n_ended)

    # -- maintenance side -------------------------------------------------------------------------
    def job_started(self) -> None:
        self._epoch += 1 if not self._epoch & 1 else 2

    def job_finished(self) -> None:
        self._epoch += 1 if self._epoch & 1 else 2

    def idle_p99(self) -> float | None:
        """p99 of the idle window (None below ``MIN_SAMPLES`` samples)."""
        samples = list(self.idle)
        return float(np.percentile(samples, 99)) if len(samples) >= MIN_SAMPLES else None

    def take_loaded(self) -> list[float]:
        """Loaded samples since the last call (and clears them)."""
        out = []
        while True:
            try:
                out.append(self.loaded.popleft())
            except IndexError:
                return out


class LatencyThrottle:
    """The Maintainer's pacing from a ``ForegroundMonitor`` (module docstring)."""

    def __init__(
        self,
        monitor: ForegroundMonitor,
        *,
        max_slowdown: float = 1.5,
        max_wait: float = 0.05,
        max_pause: float = 2.0,
        active_window: float = 1.0,
        poll: float = 0.0005,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.monitor = monitor
        self.max_slowdown = float(max_slowdown)
        self.max_wait = float(max_wait)
        self.max_pause = float(max_pause)
        self.active_window = float(active_window)
        self.poll = float(poll)
        self._sleep = sleep
        self.factor = 0.0
        self.last_ratio: float | None = None
        self.waits = 0  # times a job start was deferred because searches were in flight

    def wait_quiet(self) -> bool:
        """Wait until no search is in flight (at most ``max_wait`` s); True when it is quiet."""
        mon = self.monitor
        if mon.in_flight == 0:
            return True
        self.waits += 1
        deadline = mon.clock() + self.max_wait
        while mon.in_flight > 0:
            if mon.clock() >= deadline:
                return False
            self._sleep(self.poll)
        return True

    def pause_after(self, job_seconds: float) -> float:
        """Seconds to sleep after a job that took ``job_seconds`` (module docstring)."""
        mon = self.monitor
        loaded = mon.take_loaded()
        if mon.clock() - mon.last_end > self.active_window:
            self.factor = 0.0  # no foreground searches lately: nothing to protect
            return 0.0
        base = mon.idle_p99()
        if base is None:
            return 0.0
        if len(loaded) >= MIN_SAMPLES:
            ratio = float(np.percentile(loaded, 99)) / max(base, 1e-9)
            self.last_ratio = ratio
            if ratio > self.max_slowdown:
                self.factor = min(MAX_FACTOR, max(1.0, self.factor * 2.0))
            else:
                self.factor = self.factor / 2.0 if self.factor > 0.25 else 0.0
        elif loaded:
            mon.loaded.extendleft(reversed(loaded))  # too few to judge: keep them for the next decision
        return min(self.max_pause, self.factor * max(0.0, job_seconds))
