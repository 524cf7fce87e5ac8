"""The Janitor: a background thread per collection that flushes frozen memtables into L1.

Contract: it wakes when a memtable is frozen (``wake``) or every ``interval`` seconds, flushes frozen
memtables oldest first (each flush is one commit: DESIGN §7 steps 1-4, done by the ``flush_pending`` it is
given), and runs an automatic ``train`` (``auto_train``) once an untrained collection passes its threshold. A
failed job is logged, remembered in ``last_error`` and retried with backoff; it never loses data
(the WAL still holds everything not yet committed to L1). ``stop`` joins the thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from drift_engine.maintenance.loop import BackgroundLoop

log = logging.getLogger(__name__)


class Janitor(BackgroundLoop):
    def __init__(
        self,
        name: str,
        flush_pending: Callable[[], int],
        auto_train: Callable[[], bool],
        *,
        interval: float = 1.0,
    ) -> None:
        super().__init__(f"drift-janitor-{name}")
        self._flush_pending = flush_pending
        self._auto_train = auto_train
        self._interval = interval
        self.last_error: str | None = None
        self.flushes = 0
        self.auto_trains = 0
        self.start()

    def run(self) -> None:
        backoff = self._interval
        while not self.wait(backoff):
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
