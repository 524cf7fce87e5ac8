"""Named crash points for the crash-test matrix.

Contract: ``hit(name)`` does nothing unless the process was started with ``DRIFT_CRASH_AT=name``
(optionally ``DRIFT_CRASH_SKIP=n``: let the point pass ``n`` times first). Then, on that hit, the
process SIGKILLs itself at once: no cleanup, no buffered output, exactly like a power cut for a
process (the OS page cache survives). Points used by the engine:

* ``wal.before_write``, ``wal.after_write``, ``wal.after_fsync`` (before the write is acknowledged)
* ``flush.after_segments`` (step 1 done), ``flush.after_commit`` (step 2: LMDB committed),
  ``flush.after_publish`` (step 3), ``flush.after_truncate`` (step 4: WAL truncated)
* ``retire.before_delete`` (a retired segment is about to be deleted)
* ``train.after_segments``, ``train.after_commit``
* ``maintain.after_segments`` (a split / merge / compaction wrote its segment), ``maintain.after_commit``
  (its LMDB transaction committed, snapshot not yet published)
* ``txn.before_commit_record``, ``txn.after_commit_record`` (the transaction log's TXN_COMMIT synced: the
  commit point), ``txn.after_apply`` (once per collection part), ``txn.before_done``, ``txn.after_done``
  (``engine.txn``; crash-tested in ``tests/crash/test_txn_crash.py``)
"""

from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("DRIFT_CRASH_AT") or None
_skip = int(os.environ.get("DRIFT_CRASH_SKIP", "0") or 0)

ENABLED = _TARGET is not None


def hit(name: str) -> None:
    global _skip
    if _TARGET is None or name != _TARGET:
        return
    if _skip > 0:
        _skip -= 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
