"""One background thread that sleeps until woken, stopped or a timeout: the shared base of the Janitor and the
Maintainer.

Contract: ``BackgroundLoop(thread_name)`` creates the thread; ``start()`` starts it running ``run()`` (the
subclass's loop). Inside ``run``, ``wait(timeout)`` blocks until ``wake()`` was called (consuming the wake-up),
``stop()`` was called, or ``timeout`` seconds passed, and returns True when stopped; ``sleep(seconds)`` ignores
wake-ups and returns True when stopped; ``stopping`` tells whether ``stop()`` was called. ``stop()`` asks the
loop to end and joins the thread. ``wake`` and ``stop`` are safe from any thread.
"""

from __future__ import annotations

import threading


class BackgroundLoop:
    def __init__(self, thread_name: str) -> None:
        self._cv = threading.Condition()
        self._woken = False
        self._stopped = False
        self._thread = threading.Thread(target=self.run, name=thread_name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        return self._stopped

    def wake(self) -> None:
        with self._cv:
            self._woken = True
            self._cv.notify()

    def wait(self, timeout: float) -> bool:
        """Until woken, stopped or ``timeout`` s; True when stopped."""
        with self._cv:
            self._cv.wait_for(lambda: self._woken or self._stopped, timeout=max(0.0, timeout))
            self._woken = False
            return self._stopped

    def sleep(self, seconds: float) -> bool:
        """``seconds`` s unless stopped first (wake-ups do not end it); True when stopped."""
        with self._cv:
            self._cv.wait_for(lambda: self._stopped, timeout=max(0.0, seconds))
            return self._stopped

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
