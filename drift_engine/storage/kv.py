"""LMDB key-value store: one environment (a directory) per collection, named sub-databases.

Contract:

* Durability: the environment is opened with ``sync=True, metasync=True``, so a write batch is
  durable when ``with kv.write()`` returns.  A batch is applied in ONE LMDB write transaction when
  the ``with`` block exits normally; an exception inside the block applies nothing.  Operations
  apply in the order they were buffered (a later put of a key wins over an earlier one).
* ``drop(db)`` empties a sub-database (the name stays).  Sub-databases are created by the first
  batch that writes to them; reading one that does not exist yet sees it empty.
* Map growth: when a batch does not fit (``lmdb.MapFullError``) the map size is doubled
  (``Environment.set_mapsize``) and the whole batch retried.  LMDB requires that no transaction is
  active in the process while the map is resized, so every read holds a shared guard for the life
  of its transaction and the resize waits for those readers to finish.  A thread that still holds
  an open ``iterate`` generator must not write a batch that needs the map to grow: that is refused
  with an error instead of deadlocking.
* Reads: ``get`` / ``get_many`` / ``count`` each run in one read transaction (a consistent
  snapshot); ``iterate`` keeps its read transaction (and the guard) open until the generator is
  exhausted or closed, yields ``(key, value)`` copies in key order, and should be consumed promptly.
* Keys are 1..511 bytes (LMDB's limit); ``encode_i64`` gives int64 keys whose byte order is their
  numeric order.

* Checksums (format version 2): every value is stored as ``u32 CRC32C (little-endian)`` + the value, the
  CRC taken over ``table name, 0, key, value`` (so a value copied to another key or table fails too). Every
  read (``get``, ``get_many``, ``iterate``) verifies it and returns the value without the prefix; a mismatch
  raises ``CorruptionError`` naming the collection (``name``: by default the directory holding the store),
  the table and the key. ``verify()`` checks every value and returns the problems found.
* Format version: the table ``_drift_kv`` holds ``format`` = the version, written when the store is created.
  A store of version 1 (sub-databases but no marker: written before checksums) is migrated by a writable
  open, in one transaction that adds the checksums; a read-only open refuses it with ``CorruptionError``
  saying so. A newer version is refused.

* Modes: the environment directory is 0700 and its files 0600 whatever the umask (tightened on a
  writable open of an older store).

Thread-safety: any number of threads may read concurrently; writes are serialised by a lock.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import lmdb
from crc32c import crc32c as _raw_crc32c

from drift_engine.errors import CorruptionError, EngineClosedError, InvalidArgumentError
from drift_engine.storage.pages import crc32c

FORMAT_VERSION = 2
DIR_MODE = 0o700  # the environment directory and its files are private to the engine's user
FILE_MODE = 0o600
FORMAT_DB = b"_drift_kv"
FORMAT_KEY = b"format"
_CRC = struct.Struct("<I")

_MAX_GROWTHS = 40
_SIGN = 1 << 63
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_U64 = struct.Struct(">Q")


def encode_i64(value: int) -> bytes:
    """8 bytes big-endian with the sign bit flipped: byte order equals numeric order."""
    if not _I64_MIN <= value <= _I64_MAX:
        raise InvalidArgumentError(f"encode_i64: {value} is outside the int64 range")
    return _U64.pack((value + _SIGN) & 0xFFFFFFFFFFFFFFFF)


def decode_i64(data: bytes) -> int:
    """Inverse of ``encode_i64``."""
    if len(data) != 8:
        raise InvalidArgumentError(f"decode_i64: expected 8 bytes, got {len(data)}")
    return _U64.unpack(data)[0] - _SIGN


class _MapGuard:
    """Shared/exclusive guard: readers share it while a transaction is open; resizing excludes them.

    A pending resize stops new readers (so a steady stream of reads cannot starve it), except in a
    thread that already holds a shared token (an open iterator): letting that thread read on avoids
    a deadlock between its nested read and the resize waiting for its iterator.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers: dict[object, int] = {}  # token -> ident of the thread that acquired it
        self._per_thread: dict[int, int] = {}  # thread ident -> tokens it holds
        self._resizing = False

    def acquire_shared(self) -> object:
        token = object()
        me = threading.get_ident()
        with self._cond:
            while self._resizing and me not in self._per_thread:
                self._cond.wait()
            self._readers[token] = me
            self._per_thread[me] = self._per_thread.get(me, 0) + 1
        return token

    def release_shared(self, token: object) -> None:
        with self._cond:
            owner = self._readers.pop(token, None)
            if owner is not None:
                left = self._per_thread[owner] - 1
                if left:
                    self._per_thread[owner] = left
                else:
                    del self._per_thread[owner]
            if not self._readers:
                self._cond.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        token = self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared(token)

    @contextmanager
    def exclusive(self, path: str) -> Iterator[None]:
        with self._cond:
            if threading.get_ident() in self._per_thread:
                raise InvalidArgumentError(
                    f"{path}: cannot grow the LMDB map while this thread holds an open iterate() "
                    "generator; finish or close it before writing"
                )
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            try:
                while self._readers:
                    self._cond.wait()
            except BaseException:
                self._resizing = False
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


@functools.lru_cache(maxsize=64)
def _name_crc(name: bytes) -> int:
    return crc32c(name + b"\0")


def _checksum(name: bytes, key: bytes, value: bytes) -> int:
    """CRC32C over ``name``, NUL, ``key``, ``value`` (bytes go straight to the C routine: this runs for every
    value read)."""
    return _raw_crc32c(value, _raw_crc32c(key, _name_crc(name))) & 0xFFFFFFFF


def seal(name: bytes, key: bytes, value: bytes) -> bytes:
    """The stored form of ``value`` under ``key`` of table ``name``: its CRC32C prefix, then the value."""
    return _CRC.pack(_checksum(name, key, value)) + value


def _as_key(value: Any, what: str, path: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgumentError(f"{path}: {what} must be bytes, got {type(value).__name__}")
    return bytes(value)


class WriteBatch:
    """Buffered operations of one ``KV.write()`` block; applied atomically when the block exits."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv
        self._ops: list[tuple[str, bytes, bytes, bytes]] = []
        self._closed = False

    def _add(self, op: str, db: str, key: bytes = b"", value: bytes = b"") -> None:
        if self._closed:
            raise InvalidArgumentError(f"{self._kv.path}: write batch used after its `with` block ended")
        self._ops.append((op, self._kv._db_name(db), key, value))

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._add("put", db, self._kv._check_key(key), _as_key(value, "value", self._kv.path))

    def delete(self, db: str, key: bytes) -> None:
        self._add("delete", db, self._kv._check_key(key))

    def drop(self, db: str) -> None:
        """Remove every entry of ``db``."""
        self._add("drop", db)

    def __len__(self) -> int:
        return len(self._ops)


class KV:
    """An LMDB environment with named sub-databases; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        map_size: int = 64 << 20,
        max_dbs: int = 16,
        readonly: bool = False,
        name: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.name = name if name is not None else os.path.basename(os.path.dirname(os.path.abspath(self.path)))
        if map_size <= 0 or max_dbs <= 0:
            raise InvalidArgumentError(f"{self.path}: map_size and max_dbs must be > 0")
        if not readonly:
            os.makedirs(self.path, mode=DIR_MODE, exist_ok=True)
            os.chmod(self.path, DIR_MODE)
        self.readonly = readonly
        self._env = lmdb.open(
            self.path,
            subdir=True,
            map_size=map_size,
            max_dbs=max_dbs,
            sync=True,
            metasync=True,
            lock=True,
            readonly=readonly,
            mode=FILE_MODE,
        )
        if not readonly:  # a store created before modes were set keeps none wider
            for name in os.listdir(self.path):
                full = os.path.join(self.path, name)
                if os.path.isfile(full):
                    os.chmod(full, FILE_MODE)
        self._max_key = self._env.max_key_size()
        self._write_lock = threading.Lock()
        self._guard = _MapGuard()
        self._dbs: dict[bytes, Any] = {}
        self.closed = False
        with self._env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
        for name in names:  # every key of the main database names a sub-database we created
            try:
                self._dbs[name] = self._env.open_db(name, create=False)
            except lmdb.IncompatibleError as exc:
                self._env.close()
                raise CorruptionError(
                    f"{self.path}: main database key {name!r} is not a sub-database (not a drift KV store?)"
                ) from exc
        try:
            self._check_format()
        except BaseException:
            self._env.close()
            raise

    def _check_format(self) -> None:
        """Create the format marker of a new store, migrate a version-1 store, refuse anything else."""
        marker = None
        handle = self._dbs.get(FORMAT_DB)
        if handle is not None:
            with self._env.begin(db=handle) as txn:
                marker = txn.get(FORMAT_KEY)
        if marker is not None:
            try:
                version = int(marker)
            except ValueError:
                raise CorruptionError(
                    f"{self.path}: LMDB format marker of collection {self.name!r} is unreadable: {marker!r}"
                ) from None
            if version == FORMAT_VERSION:
                return
            if version > FORMAT_VERSION:
                raise CorruptionError(
                    f"{self.path}: LMDB of collection {self.name!r} has format version {version}, written by a "
                    f"newer drift (this one reads version {FORMAT_VERSION})"
                )
            raise CorruptionError(f"{self.path}: unknown LMDB format version {version} in collection {self.name!r}")
        tables = [n for n in self._dbs if n != FORMAT_DB]
        if self.readonly:
            if tables:
                raise CorruptionError(
                    f"{self.path}: LMDB of collection {self.name!r} has format version 1 (no checksums); open it "
                    "once with a writable engine (drift-engine serve, or Engine.open) to migrate it"
                )
            return  # an empty store seen read-only: nothing to check
        ops: list[tuple[str, bytes, bytes, bytes]] = []
        for table in tables:
            with self._env.begin(db=self._dbs[table]) as txn:
                ops.extend(("put", table, bytes(k), seal(table, bytes(k), bytes(v))) for k, v in txn.cursor())
        ops.append(("put", FORMAT_DB, FORMAT_KEY, str(FORMAT_VERSION).encode()))
        self._apply(ops, raw=True)

    def _open_value(self, name: bytes, key: bytes, stored: bytes | None) -> bytes | None:
        """The value of a stored record, checksum verified (``CorruptionError`` on a mismatch)."""
        if stored is None:
            return None
        stored = bytes(stored)
        if len(stored) < _CRC.size or _CRC.unpack_from(stored)[0] != _checksum(name, key, stored[_CRC.size :]):
            raise CorruptionError(
                f"{self.path}: LMDB checksum mismatch in collection {self.name!r}, table "
                f"{name.decode('utf-8', 'replace')!r}, key {key.hex()} ({len(stored)} stored bytes)",
                hint="the value was changed outside drift (disk or memory fault); restore this collection",
            )
        return stored[_CRC.size :]

    # -- helpers --------------------------------------------------------------------------------
    def _db_name(self, db: str) -> bytes:
        if not isinstance(db, str) or not db:
            raise InvalidArgumentError(f"{self.path}: sub-database name must be a non-empty str, got {db!r}")
        return db.encode("utf-8")

    def _check_key(self, key: bytes) -> bytes:
        k = _as_key(key, "key", self.path)
        if not 1 <= len(k) <= self._max_key:
            raise InvalidArgumentError(f"{self.path}: key must be 1..{self._max_key} bytes, got {len(k)}")
        return k

    def _check_open(self) -> None:
        if self.closed:
            raise EngineClosedError(f"{self.path}: KV store is closed")

    def _handle(self, db: str) -> Any | None:
        """The handle of an existing sub-database, or None when it does not exist (yet)."""
        self._check_open()
        name = self._db_name(db)
        handle = self._dbs.get(name)
        if handle is not None or not self.readonly:
            # A writable store creates sub-databases only through its own batches, which register them.
            return handle
        try:  # read-only: another process may have created it since we opened
            handle = self._env.open_db(name, create=False)
        except lmdb.NotFoundError:
            return None
        self._dbs[name] = handle
        return handle

    # -- reads ----------------------------------------------------------------------------------
    def get(self, db: str, key: bytes) -> bytes | None:
        with self._guard.shared():
            handle = self._handle(db)
            if handle is None:
                return None
            with self._env.begin(db=handle) as txn:
                return self._open_value(self._db_name(db), key, txn.get(key))

    def get_many(self, db: str, keys: Iterable[bytes]) -> list[bytes | None]:
        keys = list(keys)
        with self._guard.shared():
            handle = self._handle(db)
            if handle is None:
                return [None] * len(keys)
            name = self._db_name(db)
            with self._env.begin(db=handle) as txn:
                return [self._open_value(name, k, txn.get(k)) for k in keys]

    def iterate(self, db: str, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of ``db`` whose key starts with ``prefix``, in key order, from one snapshot."""
        self._check_open()
        self._db_name(db)
        return self._iterate(db, _as_key(prefix, "prefix", self.path))

    def _iterate(self, db: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        token = self._guard.acquire_shared()
        try:
            handle = self._handle(db)
            if handle is None:
                return
            name = self._db_name(db)
            with self._env.begin(db=handle) as txn, txn.cursor() as cur:
                found = cur.set_range(prefix) if prefix else cur.first()
                while found:
                    key = cur.key()
                    if not key.startswith(prefix):
                        break
                    yield key, self._open_value(name, key, cur.value())
                    found = cur.next()
        finally:
            self._guard.release_shared(token)

    def verify(self) -> list[str]:
        """Check the checksum of every value of every table; one message per bad value (empty: all good)."""
        problems: list[str] = []
        with self._guard.shared():
            self._check_open()
            for name, handle in sorted(self._dbs.items()):
                if name == FORMAT_DB:
                    continue
                with self._env.begin(db=handle) as txn:
                    for key, stored in txn.cursor():
                        try:
                            self._open_value(name, bytes(key), stored)
                        except CorruptionError as exc:
                            problems.append(str(exc))
        return problems

    def count(self, db: str) -> int:
        with self._guard.shared():
            handle = self._handle(db)
            if handle is None:
                return 0
            with self._env.begin() as txn:
                return int(txn.stat(handle)["entries"])

    # -- writes ---------------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[WriteBatch]:
        """``with kv.write() as b: b.put(...)`` -- applied atomically when the block exits cleanly."""
        self._check_open()
        if self.readonly:
            raise InvalidArgumentError(f"{self.path}: KV store is opened read-only")
        batch = WriteBatch(self)
        try:
            yield batch
        finally:
            batch._closed = True
        if batch._ops:
            self._apply(batch._ops)

    def _apply(self, ops: list[tuple[str, bytes, bytes, bytes]], *, raw: bool = False) -> None:
        """Commit ``ops``; values are sealed with their checksum unless ``raw`` (already sealed / the marker)."""
        if not raw:
            ops = [(op, name, key, seal(name, key, value) if op == "put" else value) for op, name, key, value in ops]
        with self._write_lock:
            self._check_open()
            for _ in range(_MAX_GROWTHS):
                if self._apply_once(ops):
                    return
            raise InvalidArgumentError(f"{self.path}: write batch does not fit even after growing the map")

    def _apply_once(self, ops: list[tuple[str, bytes, bytes, bytes]]) -> bool:
        """One attempt: True when committed, False when the map was full (and has been doubled)."""
        new: dict[bytes, Any] = {}
        txn = self._env.begin(write=True)
        try:
            for op, name, key, value in ops:
                handle = self._dbs.get(name)
                if handle is None:
                    handle = new.get(name)
                if handle is None:
                    handle = new[name] = self._env.open_db(name, txn=txn, create=True)
                if op == "put":
                    txn.put(key, value, db=handle)
                elif op == "delete":
                    txn.delete(key, db=handle)
                else:
                    txn.drop(handle, delete=False)
            txn.commit()
        except lmdb.MapFullError:
            # py-lmdb's abort of a write txn waits until no LMDB call is in flight anywhere in the
            # process, and set_mapsize invalidates every open transaction: so first drain our readers
            # (the guard also holds new ones back), then abort and resize.
            try:
                with self._guard.exclusive(self.path):
                    txn.abort()
                    self._env.set_mapsize(self._env.info()["map_size"] * 2)
            finally:
                txn.abort()  # no-op once aborted; releases the txn if the guard refused
            return False
        except lmdb.DbsFullError as exc:
            txn.abort()
            raise InvalidArgumentError(
                f"{self.path}: too many sub-databases (max_dbs is too small for {sorted(new)})"
            ) from exc
        except BaseException:
            txn.abort()
            raise
        self._dbs.update(new)  # handles opened in a committed transaction stay valid
        return True

    def close(self) -> None:
        """Close the environment once no read or write is in flight.  Idempotent."""
        with self._write_lock:
            if self.closed:
                return
            with self._guard.exclusive(self.path):
                self.closed = True
                self._env.close()

    def __enter__(self) -> KV:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
