"""What a collection asks of its background workers, which ``drift_engine.api`` builds and hands to it.

Contract: ``engine`` never imports ``maintenance`` (nor the reverse); a ``Collection`` is given a
``BackgroundFactory`` when it is created or opened and calls it once, at the end of its construction, with
itself. The factory returns the collection's ``Background``: three workers seen only through these protocols
(``maintenance.janitor.Janitor``, ``maintenance.runner.MaintenanceRunner`` and
``maintenance.scheduler.Maintainer`` implement them):

* ``JanitorHandle`` — a thread that flushes frozen memtables: ``wake()`` when one is frozen, ``stop()`` joins it
  (at close); ``flushes`` and ``last_error`` are reported by ``Collection.stats``;
* ``MaintenanceHandle`` — runs maintenance jobs under the L1 lock: ``run(max_jobs)`` (``Collection.maintain``),
  ``split_oversized()`` (after every flush and bulk write commits), ``bucket_stats(snap)`` and
  ``stats(snap, last_error, with_buckets=)`` (the maintenance part of ``Collection.stats``);
* ``MaintainerHandle`` — the rate-limited maintenance thread: ``foreground`` is told about every search
  (``begin`` before, ``end(token)`` after) so it paces itself by foreground latency; ``last_error``; ``stop()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from drift_engine.l1.snapshot import Snapshot

if TYPE_CHECKING:
    from drift_engine.engine.collection import Collection


class JanitorHandle(Protocol):
    flushes: int
    last_error: str | None

    def wake(self) -> None: ...

    def stop(self) -> None: ...


class MaintenanceHandle(Protocol):
    def run(self, max_jobs: int | None = None) -> dict[str, Any]: ...

    def split_oversized(self) -> int: ...

    def bucket_stats(self, snap: Snapshot) -> list[dict[str, Any]]: ...

    def stats(self, snap: Snapshot, last_error: str | None, *, with_buckets: bool) -> dict[str, Any]: ...


class ForegroundProbe(Protocol):
    def begin(self) -> Any: ...

    def end(self, token: Any) -> None: ...


class MaintainerHandle(Protocol):
    foreground: ForegroundProbe
    last_error: str | None

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Background:
    """A collection's background workers (module docstring)."""

    janitor: JanitorHandle
    maintenance: MaintenanceHandle
    maintainer: MaintainerHandle


BackgroundFactory = Callable[["Collection"], Background]
