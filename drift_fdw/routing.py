"""Writes through a sharded table's view, routed into its shards' transaction buffers (DESIGN §14).

The view ``<name>`` of a sharded table (``shards.create_sharded_table``) has two triggers, both executing
``drift.route(public name, modulus, partition 0, ..., partition N-1)`` (body: ``trigger(TD)``):

* ``INSTEAD OF INSERT OR UPDATE OR DELETE ... FOR EACH ROW``: each row goes to the partition PostgreSQL's
  hash partitioning picks for its ``id`` (``remainder``, equal to ``satisfies_hash_partition`` for a
  ``bigint`` key), straight into that partition's ``DriftFDW`` write buffer through the FDW's own
  ``insert`` / ``update`` / ``delete`` (same validation, errors and hints as a write into the partition).
  No SQL statement runs per row. The rows therefore join the server's engine transaction at COMMIT
  (``drift_fdw.txn``), ROLLBACK and ROLLBACK TO SAVEPOINT drop them, and scans in the same transaction see
  them (``overlay``). INSERT (also COPY and ``RETURNING``), UPDATE and DELETE; an UPDATE that changes ``id``
  to one of another partition moves the row (delete on the old shard, insert on the new one); a NULL ``id``
  is refused (23502); every row is checked by ``validate.check_row`` first. The trigger returns the row
  unchanged, so ``RETURNING`` and the command tag show the rows as written.
* ``BEFORE INSERT OR UPDATE OR DELETE ... FOR EACH STATEMENT``: forgets the partitions' instances, so the
  first row of each statement for a partition finds its instance again (``copyin.instance``: planning
  ``SELECT 1 FROM ONLY <partition> LIMIT 0`` makes Multicorn hand it over and enlist it in the running
  (sub)transaction, so its ``pre_commit`` runs and a ROLLBACK TO SAVEPOINT reaches its buffer). A
  statement's rows are all written in the (sub)transaction it started in, so once per statement is enough:
  the instances are never carried from one statement (or transaction, or savepoint) to the next.

Limits: rows never pass through the partitions' own triggers (a user trigger on a partition does not fire
for writes through the view), and ``validate.check_row`` is the only check the view adds.

Hash (``remainder`` / ``remainders``): PostgreSQL's ``hashint8extended(id, HASH_PARTITION_SEED)`` (the
int8 hash opclass's extended hash: Bob Jenkins' lookup3 ``hash_bytes_uint32_extended`` of the id folded
into 32 bits), combined with ``hash_combine64(0, h)``, modulo the modulus: the partition of a table
``PARTITION BY HASH (id)`` with ``id bigint`` and the default hash operator class, as every sharded table
has. Pure Python and numpy; nothing here imports numba or hnswlib, and nothing but the trigger needs
PostgreSQL.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HASH_PARTITION_SEED = 0x7A5B22367996DCFD  # catalog/partition.h
_COMBINE = 0x49A0F4DD15E5A8E3  # hash_combine64's constant (common/hashfn.h)
_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _seeded_state() -> tuple[int, int, int]:
    """(a, b, c) of ``hash_bytes_uint32_extended`` after the seed's ``mix``: the same for every key."""
    a = b = c = (0x9E3779B9 + 4 + 3923095) & _M32
    a = (a + (HASH_PARTITION_SEED >> 32)) & _M32
    b = (b + (HASH_PARTITION_SEED & _M32)) & _M32
    # fmt: off
    # mix(a, b, c)
    a = (a - c) & _M32; a ^= _rot(c, 4); c = (c + b) & _M32  # noqa: E702
    b = (b - a) & _M32; b ^= _rot(a, 6); a = (a + c) & _M32  # noqa: E702
    c = (c - b) & _M32; c ^= _rot(b, 8); b = (b + a) & _M32  # noqa: E702
    a = (a - c) & _M32; a ^= _rot(c, 16); c = (c + b) & _M32  # noqa: E702
    b = (b - a) & _M32; b ^= _rot(a, 19); a = (a + c) & _M32  # noqa: E702
    c = (c - b) & _M32; c ^= _rot(b, 4); b = (b + a) & _M32  # noqa: E702
    # fmt: on
    return a, b, c


_A, _B, _C = _seeded_state()
# final(a, b, c) starts with  c ^= b; c -= rot(b, 14)  -- b and c do not depend on the key yet
_C1 = ((_C ^ _B) - _rot(_B, 14)) & _M32
_C1_ROT11 = _rot(_C1, 11)


def _fold(ident: int) -> int:
    """``hashint8``'s 32-bit key of an int64: low half XOR high half (XOR its complement when negative)."""
    hi = (ident >> 32) & _M32
    return (ident & _M32) ^ (hi if ident >= 0 else hi ^ _M32)


def row_hash(ident: int) -> int:
    """``hash_combine64(0, hashint8extended(ident, HASH_PARTITION_SEED))`` as PostgreSQL computes it."""
    a = (_A + _fold(ident)) & _M32
    c = _C1
    # fmt: off
    a ^= c; a = (a - _C1_ROT11) & _M32  # noqa: E702
    b = _B ^ a; b = (b - _rot(a, 25)) & _M32  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _M32  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _M32  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _M32  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _M32  # noqa: E702
    # fmt: on
    return (((b << 32) | c) + _COMBINE) & _M64


def remainder(ident: int, modulus: int) -> int:
    """The remainder of the hash partition (``MODULUS modulus``) that holds ``ident``."""
    return row_hash(ident) % modulus


def _nrot(x: np.ndarray, k: int) -> np.ndarray:
    return (x << np.uint32(k)) | (x >> np.uint32(32 - k))


def remainders(ids: Any, modulus: int) -> np.ndarray:
    """``remainder`` of every id (int64 array in, int64 array out), vectorized."""
    v = np.asarray(ids, dtype=np.int64)
    lo = (v & _M32).astype(np.uint32)
    hi = ((v >> 32) & _M32).astype(np.uint32)
    k = np.where(v >= 0, lo ^ hi, lo ^ ~hi)
    with np.errstate(over="ignore"):
        a = k + np.uint32(_A)
        b = np.full_like(a, _B)
        c = np.full_like(a, _C)
        # fmt: off
        c ^= b; c -= _nrot(b, 14)  # noqa: E702
        a ^= c; a -= _nrot(c, 11)  # noqa: E702
        b ^= a; b -= _nrot(a, 25)  # noqa: E702
        c ^= b; c -= _nrot(b, 16)  # noqa: E702
        a ^= c; a -= _nrot(c, 4)  # noqa: E702
        b ^= a; b -= _nrot(a, 14)  # noqa: E702
        c ^= b; c -= _nrot(b, 24)  # noqa: E702
        # fmt: on
        h = (b.astype(np.uint64) << np.uint64(32)) | c.astype(np.uint64)
        h += np.uint64(_COMBINE)
    return (h % np.uint64(modulus)).astype(np.int64)


# ------------------------------------------------------------------------------------------ the trigger
@dataclass
class _Route:
    args: tuple[str, ...]
    public: str
    modulus: int
    parts: tuple[str, ...]
    insts: list[Any] = field(default_factory=list)  # per remainder: the instance found in this statement


_routes: dict[str, _Route] = {}  # the view's relid -> its partitions and their enlisted instances


def _plpy() -> Any:
    return sys.modules["plpy"]


def _route(TD: dict[str, Any]) -> _Route:
    args = tuple(TD["args"] or ())
    route = _routes.get(TD["relid"])
    if route is None or route.args != args:
        if len(args) < 3 or not args[1].isdigit() or int(args[1]) != len(args) - 2:
            _plpy().error("drift: drift.route() needs (public name, modulus, one partition per remainder)",
                          sqlstate="39P01")  # fmt: skip
        route = _routes[TD["relid"]] = _Route(args, args[0], int(args[1]), args[2:])
        route.insts = [None] * route.modulus
    return route


def _instance(route: _Route, index: int) -> Any:
    inst = route.insts[index]
    if inst is None:
        from drift_fdw import copyin

        inst = route.insts[index] = copyin.instance(route.parts[index])
    return inst


def _id(route: _Route, row: dict[str, Any]) -> int:
    ident = row.get("id")
    if ident is None:
        _plpy().error(f'null value in column "id" of relation "{route.public}"', sqlstate="23502")
    return int(ident)


def trigger(TD: dict[str, Any]) -> None:
    route = _route(TD)
    if TD["level"] == "STATEMENT":
        route.insts = [None] * route.modulus  # a new statement: find (and enlist) the instances again
        return None
    from drift_fdw import copyin, validate

    validate.check_row(TD)
    event, n = TD["event"], route.modulus
    if event == "INSERT":
        new = TD["new"]
        copyin.call(_instance(route, remainder(_id(route, new), n)).insert, new)
        return None
    old_id = int(TD["old"]["id"])
    old = remainder(old_id, n)
    if event == "DELETE":
        copyin.call(_instance(route, old).delete, old_id)
        return None
    new = TD["new"]
    new_part = remainder(_id(route, new), n)
    if new_part == old:  # the FDW's update also handles a changed id within the partition
        copyin.call(_instance(route, old).update, old_id, new)
    else:  # the row moves to another shard
        copyin.call(_instance(route, old).delete, old_id)
        copyin.call(_instance(route, new_part).insert, new)
    return None
