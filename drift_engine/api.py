"""The public Python API: ``Engine`` (a data directory) and ``Collection`` (vectors + payloads).

Contract:

* ``Engine.open(path, **settings)`` takes an exclusive lock on the data directory (a second engine,
  in this or another process, gets ``DirectoryLockedError``) and opens every collection found there,
  rebuilding its state from LMDB and segment files.
* Collections live in ``<path>/collections/<name>/``. Creating one writes it under a hidden temporary
  name and renames it into place (all or nothing); dropping one renames it away first, then deletes it.
* The engine is thread-safe: reads run concurrently with one writer per collection.
* Every collection it opens gets its background workers here (``background``): a Janitor (flushes frozen
  memtables, auto-train), a ``MaintenanceRunner`` (split / merge / compaction under the L1 lock) and a
  rate-limited Maintainer thread. This module is where ``engine`` and ``maintenance`` meet: neither imports
  the other (``engine.background`` is the interface).
* Transactions (``engine.txn``): ``transaction()`` (or ``txn_stage`` / ``txn_prepare`` / ``txn_commit`` /
  ``txn_abort`` by id, as the server uses them) write to several collections as ONE atomic operation,
  with write-write conflict detection (``expect``). The transaction log lives in ``<path>/txnlog``;
  opening the engine finishes any committed transaction a crash left half-applied.

Example::

    from drift_engine import Engine
    with Engine.open("/var/lib/drift") as engine:
        col = engine.create_collection("items", dim=50, metric="l2")
        col.upsert([1, 2], vectors, payloads=[{"tag": "a"}, {"tag": "b"}])
        col.train()
        hits = col.search(query, k=10, filter={"tag": "a"})
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from drift_engine.config import (
    CollectionConfig,
    CollectionParams,
    EngineSettings,
    validate_collection_name,
    validate_dim,
    validate_metric,
)
from drift_engine.engine.background import Background
from drift_engine.engine.collection import Collection
from drift_engine.engine.txn import TxnManager
from drift_engine.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    DirectoryLockedError,
    EngineClosedError,
    WritesStoppedError,
)
from drift_engine.index import adc
from drift_engine.maintenance.janitor import Janitor
from drift_engine.maintenance.runner import MaintenanceRunner
from drift_engine.maintenance.scheduler import Maintainer
from drift_engine.storage.cache import S3FIFOCache
from drift_engine.storage.pages import fsync_dir

log = logging.getLogger(__name__)

LOCK_FILE = "LOCK"
COLLECTIONS_DIR = "collections"


def background(col: Collection) -> Background:
    """The background workers of ``col`` (its ``BackgroundFactory``): the maintenance runner over its L1, the
    Janitor (flush + auto-train) and the Maintainer (runs the runner's most urgent job, paced by foreground
    latency). Each thread starts here; ``Collection.close`` stops them."""
    runner = MaintenanceRunner(col.l1, lambda: col.config, lambda: col.closed)
    janitor = Janitor(col.name, col.flush_pending, col.auto_train)
    maintainer = Maintainer(col.name, runner.run_one, lambda: col.config.params)
    return Background(janitor, runner, maintainer)


class Engine:
    """One open data directory. Use ``Engine.open``; close with ``close()`` or a ``with`` block."""

    def __init__(self, path: str, settings: EngineSettings, lock_fd: int) -> None:
        self.path = path
        self.settings = settings
        self._lock_fd = lock_fd
        self._lock = threading.RLock()
        self._closed = False
        self.cache = S3FIFOCache(settings.cache_bytes)
        self.executor = ThreadPoolExecutor(max_workers=settings.search_threads, thread_name_prefix="drift-engine")
        self._root = os.path.join(path, COLLECTIONS_DIR)
        self._collections: dict[str, Collection] = {}
        try:
            for name in sorted(os.listdir(self._root)):
                full = os.path.join(self._root, name)
                if name.startswith("."):
                    shutil.rmtree(full, ignore_errors=True)  # an unfinished create or drop
                    continue
                self._collections[name] = self._open_collection(full)
            self.txns = TxnManager(path, self.collection, self.list_collections, durability=settings.durability)
            self.txns.recover()
        except BaseException:
            if getattr(self, "txns", None) is not None:
                self.txns.close()
            for col in self._collections.values():
                col.close(flush=False)
            self.executor.shutdown(wait=False)
            self._release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike, **settings: Any) -> Engine:
        parsed = EngineSettings.create(**settings)
        path = os.path.abspath(os.fspath(path))
        os.makedirs(path, mode=0o700, exist_ok=True)  # private, whatever the umask (new folders only)
        os.makedirs(os.path.join(path, COLLECTIONS_DIR), mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryLockedError(
                f"data directory {path} is in use by another engine", hint="stop the other engine first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        adc.warmup()
        return cls(path, parsed, fd)

    def _open_collection(self, path: str) -> Collection:
        return Collection.open(path, self.cache, self.settings, self.executor, background=background)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(f"engine at {self.path} is closed")

    def create_collection(self, name: str, dim: int, metric: str = "l2", **params: Any) -> Collection:
        """Create a collection; ``params`` are ``CollectionParams`` fields (nprobe, rerank, lam, ...)."""
        self._check_open()
        name = validate_collection_name(name)
        config = CollectionConfig(
            name, validate_dim(dim), validate_metric(metric), CollectionParams().updated(**params)
        )
        with self._lock:
            self._check_open()
            if name in self._collections:
                raise CollectionExistsError(f"collection {name!r} already exists")
            final = os.path.join(self._root, name)
            staging = os.path.join(self._root, f".{name}.creating")
            shutil.rmtree(staging, ignore_errors=True)
            col = Collection.create(staging, config, self.cache, self.settings, self.executor, background=background)
            col.close()
            os.rename(staging, final)
            fsync_dir(self._root)
            col = self._open_collection(final)
            self._collections[name] = col
            return col

    def collection(self, name: str) -> Collection:
        self._check_open()
        col = self._collections.get(name)
        if col is None:
            raise CollectionNotFoundError(f"collection {name!r} does not exist", hint="create_collection first")
        return col

    def has_collection(self, name: str) -> bool:
        return name in self._collections

    def list_collections(self) -> list[str]:
        self._check_open()
        return sorted(self._collections)

    def drop_collection(self, name: str) -> None:
        self._check_open()
        with self._lock:
            col = self.collection(name)
            col.close()  # waits for a commit applying to it; later ones fail on the closed collection
            # every acknowledged transaction that wrote to it gets its TXN_DONE first: recovery must never
            # apply an old transaction's part to a new collection of the same name
            self.txns.finish_pending()
            if self.txns.unfinished_touching(name):
                raise WritesStoppedError(
                    f"collection {name!r} is closed but not dropped: a committed transaction that wrote to it "
                    "could not be finished (its WAL could not be synced)",
                    hint="reopen the engine (recovery finishes the transaction), then drop the collection",
                )
            del self._collections[name]
            doomed = os.path.join(self._root, f".{name}.dropped-{time.time_ns()}")
            os.rename(os.path.join(self._root, name), doomed)
            fsync_dir(self._root)
            shutil.rmtree(doomed, ignore_errors=True)

    # ------------------------------------------------------------------ transactions (engine.txn)
    def transaction(self, txn_id: str | None = None) -> Transaction:
        """A new transaction handle (``with engine.transaction() as t: t.insert("a", ...)`` commits at
        the end of the block, or aborts if it raises)."""
        self._check_open()
        return Transaction(self, txn_id or f"embedded-{os.getpid()}-{next(_TXN_COUNTER)}")

    def txn_stage(
        self,
        txn_id: str,
        collection: str,
        op: str,
        ids: Any,
        vectors: Any = None,
        payloads: Any = None,
        read_lsns: Any = None,
    ) -> int:
        """Add an op (insert / upsert / delete / expect) to transaction ``txn_id`` (``TxnManager.stage``)."""
        self._check_open()
        return self.txns.stage(txn_id, collection, op, ids, vectors, payloads, read_lsns)

    def txn_prepare(self, txn_id: str) -> dict[str, int]:
        """Validate and reserve ``txn_id`` so its commit cannot fail on validation (``TxnManager.prepare``)."""
        self._check_open()
        return self.txns.prepare(txn_id)

    def txn_commit(self, txn_id: str, durability: str | None = None) -> dict[str, int]:
        """Commit ``txn_id`` as one atomic operation across its collections (``TxnManager.commit``)."""
        self._check_open()
        return self.txns.commit(txn_id, durability)

    def txn_abort(self, txn_id: str) -> bool:
        """Drop ``txn_id`` (staged or prepared); False when it is not known."""
        self._check_open()
        return self.txns.abort(txn_id)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.txns.close()
            for col in self._collections.values():
                col.close()
            self._collections.clear()
            self.cache.clear()
            self.executor.shutdown(wait=True)
            self._release()

    def _release(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)


class Transaction:
    """An engine transaction by id (embedded handle); see ``engine.txn`` for the rules."""

    def __init__(self, engine: Engine, txn_id: str) -> None:
        self.engine = engine
        self.txn_id = txn_id

    def insert(self, collection: str, ids: Any, vectors: Any, payloads: Any = None) -> int:
        return self.engine.txn_stage(self.txn_id, collection, "insert", ids, vectors, payloads)

    def upsert(self, collection: str, ids: Any, vectors: Any, payloads: Any = None) -> int:
        return self.engine.txn_stage(self.txn_id, collection, "upsert", ids, vectors, payloads)

    def delete(self, collection: str, ids: Any) -> int:
        return self.engine.txn_stage(self.txn_id, collection, "delete", ids)

    def expect(self, collection: str, ids: Any, read_lsns: Any) -> int:
        """Fail the commit (``ConflictError``) if any of ``ids`` changed after the read at ``read_lsns``."""
        return self.engine.txn_stage(self.txn_id, collection, "expect", ids, read_lsns=read_lsns)

    def prepare(self) -> dict[str, int]:
        return self.engine.txn_prepare(self.txn_id)

    def commit(self) -> dict[str, int]:
        return self.engine.txn_commit(self.txn_id)

    def abort(self) -> bool:
        return self.engine.txn_abort(self.txn_id)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


_TXN_COUNTER = itertools.count(1)

__all__ = ["Collection", "Engine", "Transaction"]
