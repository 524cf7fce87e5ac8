"""Test helper: run worker threads and fail the test when one raised, hung, or never ran.

``ThreadGroup.start(fn, *args)`` runs ``fn`` on a daemon thread and records what it raised;
``ThreadGroup.join()`` joins every thread and then asserts that none is still alive, none raised (the
first exception is re-raised, with the others listed), and each one ran to its end. Tests count their
loop iterations themselves when "ran" must mean "did real work".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class ThreadGroup:
    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.errors: list[tuple[str, BaseException]] = []
        self.finished: list[str] = []

    def start(self, fn: Callable[..., Any], *args: Any) -> threading.Thread:
        name = f"{getattr(fn, '__name__', 'worker')}-{len(self._threads)}"

        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # reported by join()
                with self._lock:
                    self.errors.append((name, exc))
            else:
                with self._lock:
                    self.finished.append(name)

        t = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def join(self, timeout: float = 300.0) -> None:
        for t in self._threads:
            t.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"threads still running after join: {alive}"
        if self.errors:
            name, first = self.errors[0]
            others = [f"{n}: {e!r}" for n, e in self.errors[1:]]
            raise AssertionError(f"thread {name} raised {first!r}; others: {others}") from first
        assert len(self.finished) == len(self._threads), (self.finished, [t.name for t in self._threads])
