"""The Janitor: a background thread per collection that flushes frozen memtables into L1.

Contract: it wakes when a memtable is frozen (``wake``) or every ``interval`` seconds, flushes frozen
memtables oldest first (each flush is one commit: DESIGN §7 steps 1-4, done by the collection's
``flush_one``), and runs an automatic ``train`` once an untrained collection passes its threshold. A
failed job is logged, remembered in ``last_error`` and retried with backoff; it never loses data
(the WAL still holds everything not yet committed to L1). ``stop`` joins the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Janitor:
    def __init__(
        self,
        name: str,
        flush_pending: Callable[[], int],
        auto_train: Callable[[], bool],
        *,
        interval: float = 1.0,
    ) -> None:
        self._flush_pending = flush_pending
        self._auto_train = auto_train
        self._interval = interval
        self._cv = threading.Condition()
        self._wake = False
        self._stop = False
        self.last_error: str | None = None
        self.flushes = 0
        self.auto_trains = 0
        self._thread = threading.Thread(target=self._run, name=f"drift-janitor-{name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        with self._cv:
            self._wake = True
            self._cv.notify()

    def _run(self) -> None:
        backoff = self._interval
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._wake or self._stop, timeout=backoff)
                if self._stop:
                    return
                self._wake = False
            try:
                self.flushes += self._flush_pending()
                if self._auto_train():
                    self.auto_trains += 1
                self.last_error = None
                backoff = self._interval
            except Exception as exc:  # keep the thread alive; the WAL still holds the data
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("janitor job failed; retrying in %.1fs", backoff)
                backoff = min(30.0, backoff * 2)
                time.sleep(0)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join()
