"""WAL record types and their compact binary bodies.

Contract:

* Record type constants (the ``type`` byte of a WAL frame): ``UPSERT = 1``, ``DELETE = 2``,
  ``CREATE = 3``, ``DROP = 4``, ``PARAMS = 5``, ``ABORT = 6``, ``TXN_APPLY = 7``, ``TXN_COMMIT = 8``,
  ``TXN_DONE = 9``.  CREATE / DROP / PARAMS carry a JSON object.  ``TXN_APPLY`` (a collection's WAL) is
  one collection's part of an engine transaction: its sequence number, the rows it upserts and the ids
  it deletes, applied together.  ``TXN_COMMIT`` / ``TXN_DONE`` belong to the engine's transaction log
  (``engine.txn``): the whole committed transaction (every collection's part), and the note that every
  collection has its ``TXN_APPLY``.  ``ABORT`` names the lsn of an earlier record of the same log whose
  write failed after it was logged (the caller got an error): replay must skip that record.  A log's
  reader decides which types it expects; any other type is corruption.
* Every body starts with a format version byte (``BODY_VERSION`` = 1), so a later format can be
  added without ambiguity.  All integers and floats are little-endian.
* Encoders validate their input and raise ``InvalidArgumentError`` (nothing has been written yet).
  Decoders accept exactly the bytes an encoder produced: a short, long or otherwise malformed body
  raises ``CorruptionError`` (the WAL CRC already passed, so this is a software or format error).
* Decoded arrays are fresh, writable, native-endian copies (``int64`` ids, ``float32`` vectors),
  independent of the body buffer.
* Pure functions, no shared state: safe from any thread.

Layouts (version 1)::

    UPSERT  [ver u8][flags u8: bit0 replace][n u32][d u32]
            [ids i64 * n][vectors f32 * n*d, row-major][payload lengths u32 * n; 0xFFFFFFFF = None]
            [payload bytes, concatenated]
    DELETE  [ver u8][n u32][ids i64 * n]
    ABORT   [ver u8][aborted lsn u64]
    JSON    [ver u8][UTF-8 JSON object, compact]
    TXN_APPLY  [ver u8][seq u64][upsert len u32][UPSERT body or nothing][DELETE body or nothing]
    TXN_COMMIT [ver u8][seq u64][groups u32] then per group:
               [name len u16][name UTF-8][upsert len u32][UPSERT body or nothing]
               [delete len u32][DELETE body or nothing]
    TXN_DONE   [ver u8][seq u64]
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from drift_engine.errors import CorruptionError, InvalidArgumentError

UPSERT = 1
DELETE = 2
CREATE = 3
DROP = 4
PARAMS = 5
ABORT = 6
TXN_APPLY = 7
TXN_COMMIT = 8
TXN_DONE = 9

RECORD_TYPES: dict[int, str] = {
    UPSERT: "UPSERT",
    DELETE: "DELETE",
    CREATE: "CREATE",
    DROP: "DROP",
    PARAMS: "PARAMS",
    ABORT: "ABORT",
    TXN_APPLY: "TXN_APPLY",
    TXN_COMMIT: "TXN_COMMIT",
    TXN_DONE: "TXN_DONE",
}

BODY_VERSION = 1

_FLAG_REPLACE = 0x01
_NONE_LEN = 0xFFFFFFFF
_UPSERT_HEAD = struct.Struct("<BBII")  # version, flags, n, d
_DELETE_HEAD = struct.Struct("<BI")  # version, n
_ABORT = struct.Struct("<BQ")  # version, aborted lsn
_I64 = np.dtype("<i8")
_F32 = np.dtype("<f4")
_U32 = np.dtype("<u4")


# --- upsert -----------------------------------------------------------------------------------
def _as_ids(ids: Any, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"{what}: ids must be a 1-D array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{what}: ids must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InvalidArgumentError(f"{what}: ids must fit in int64")
    return np.ascontiguousarray(arr, dtype=_I64)


def encode_upsert(ids: np.ndarray, vectors: np.ndarray, payloads: list[bytes | None], replace: bool) -> bytes:
    """Encode one upsert batch: ``n`` ids, an ``(n, d)`` float32 matrix, ``n`` payloads (bytes or None)."""
    id_arr = _as_ids(ids, "encode_upsert")
    vec = np.asarray(vectors)
    if vec.ndim != 2:
        raise InvalidArgumentError(f"encode_upsert: vectors must be 2-D (n, d), got shape {vec.shape}")
    n, d = vec.shape
    if n != id_arr.shape[0]:
        raise InvalidArgumentError(f"encode_upsert: {id_arr.shape[0]} ids but {n} vectors")
    if vec.size and vec.dtype.kind not in "fiu":
        raise InvalidArgumentError(f"encode_upsert: vectors must be numeric, got dtype {vec.dtype}")
    if len(payloads) != n:
        raise InvalidArgumentError(f"encode_upsert: {n} vectors but {len(payloads)} payloads")
    if n > 0xFFFFFFFF or d > 0xFFFFFFFF:
        raise InvalidArgumentError(f"encode_upsert: batch shape {vec.shape} too large")
    lengths = np.empty(n, dtype=_U32)
    parts: list[bytes] = []
    for i, p in enumerate(payloads):
        if p is None:
            lengths[i] = _NONE_LEN
            continue
        if not isinstance(p, bytes | bytearray | memoryview):
            raise InvalidArgumentError(f"encode_upsert: payload {i} is a {type(p).__name__}, not bytes/None")
        b = bytes(p)
        if len(b) >= _NONE_LEN:
            raise InvalidArgumentError(f"encode_upsert: payload {i} is too large ({len(b)} bytes)")
        lengths[i] = len(b)
        parts.append(b)
    head = _UPSERT_HEAD.pack(BODY_VERSION, _FLAG_REPLACE if replace else 0, n, d)
    vec_bytes = np.ascontiguousarray(vec, dtype=_F32).tobytes()
    return b"".join((head, id_arr.tobytes(), vec_bytes, lengths.tobytes(), *parts))


def decode_upsert(body: bytes) -> tuple[np.ndarray, np.ndarray, list[bytes | None], bool]:
    """Inverse of ``encode_upsert``: ``(ids int64[n], vectors float32[n, d], payloads, replace)``."""
    view = memoryview(body).cast("B")
    if len(view) < _UPSERT_HEAD.size:
        raise CorruptionError(f"UPSERT body: {len(view)} bytes, shorter than its head ({_UPSERT_HEAD.size})")
    version, flags, n, d = _UPSERT_HEAD.unpack_from(view, 0)
    if version != BODY_VERSION:
        raise CorruptionError(f"UPSERT body: unknown format version {version}")
    if flags & ~_FLAG_REPLACE:
        raise CorruptionError(f"UPSERT body: unknown flag bits 0x{flags:02x}")
    off = _UPSERT_HEAD.size
    fixed = n * 8 + n * d * 4 + n * 4
    if len(view) - off < fixed:
        raise CorruptionError(f"UPSERT body: n={n}, d={d} needs >= {off + fixed} bytes, body has {len(view)}")
    ids = np.frombuffer(view, dtype=_I64, count=n, offset=off).astype(np.int64)
    off += n * 8
    vectors = np.frombuffer(view, dtype=_F32, count=n * d, offset=off).astype(np.float32).reshape(n, d)
    off += n * d * 4
    lengths = np.frombuffer(view, dtype=_U32, count=n, offset=off).tolist()
    off += n * 4
    present = sum(x for x in lengths if x != _NONE_LEN)
    if len(view) - off != present:
        raise CorruptionError(
            f"UPSERT body: payload lengths add up to {present} bytes but {len(view) - off} bytes follow"
        )
    raw = view.tobytes()
    payloads: list[bytes | None] = []
    for ln in lengths:
        if ln == _NONE_LEN:
            payloads.append(None)
        else:
            payloads.append(raw[off : off + ln])
            off += ln
    return ids, vectors, payloads, bool(flags & _FLAG_REPLACE)


# --- delete -----------------------------------------------------------------------------------
def encode_delete(ids: np.ndarray) -> bytes:
    """Encode one delete batch of int64 ids."""
    id_arr = _as_ids(ids, "encode_delete")
    if id_arr.shape[0] > 0xFFFFFFFF:
        raise InvalidArgumentError(f"encode_delete: {id_arr.shape[0]} ids is too many for one record")
    return _DELETE_HEAD.pack(BODY_VERSION, id_arr.shape[0]) + id_arr.tobytes()


def decode_delete(body: bytes) -> np.ndarray:
    """Inverse of ``encode_delete``: ``int64[n]``."""
    view = memoryview(body).cast("B")
    if len(view) < _DELETE_HEAD.size:
        raise CorruptionError(f"DELETE body: {len(view)} bytes, shorter than its head ({_DELETE_HEAD.size})")
    version, n = _DELETE_HEAD.unpack_from(view, 0)
    if version != BODY_VERSION:
        raise CorruptionError(f"DELETE body: unknown format version {version}")
    if len(view) != _DELETE_HEAD.size + 8 * n:
        raise CorruptionError(f"DELETE body: n={n} needs {_DELETE_HEAD.size + 8 * n} bytes, has {len(view)}")
    return np.frombuffer(view, dtype=_I64, count=n, offset=_DELETE_HEAD.size).astype(np.int64)


# --- abort ------------------------------------------------------------------------------------
def encode_abort(lsn: int) -> bytes:
    """Encode an ABORT of the record at ``lsn`` (a positive lsn)."""
    if isinstance(lsn, bool) or not isinstance(lsn, int) or not 0 < lsn < 1 << 64:
        raise InvalidArgumentError(f"encode_abort: lsn must be a positive int, got {lsn!r}")
    return _ABORT.pack(BODY_VERSION, lsn)


def decode_abort(body: bytes) -> int:
    """Inverse of ``encode_abort``: the aborted lsn."""
    view = memoryview(body).cast("B")
    if len(view) != _ABORT.size:
        raise CorruptionError(f"ABORT body: {len(view)} bytes, expected {_ABORT.size}")
    version, lsn = _ABORT.unpack_from(view, 0)
    if version != BODY_VERSION:
        raise CorruptionError(f"ABORT body: unknown format version {version}")
    if lsn == 0:
        raise CorruptionError("ABORT body: lsn 0")
    return int(lsn)


# --- CREATE / DROP / PARAMS -------------------------------------------------------------------
def encode_json(obj: dict) -> bytes:
    """Encode a JSON object (dict with string keys; no NaN/Infinity) for CREATE / DROP / PARAMS."""
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"encode_json: expected a dict, got {type(obj).__name__}")
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"encode_json: not JSON-serialisable: {exc}") from exc
    return bytes((BODY_VERSION,)) + text.encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def decode_json(body: bytes) -> dict:
    """Inverse of ``encode_json``."""
    view = memoryview(body).cast("B")
    if len(view) < 1:
        raise CorruptionError("JSON body: empty")
    if view[0] != BODY_VERSION:
        raise CorruptionError(f"JSON body: unknown format version {view[0]}")
    try:
        obj = json.loads(view[1:].tobytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptionError(f"JSON body: not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise CorruptionError(f"JSON body: expected an object, got {type(obj).__name__}")
    return obj


# --- engine transactions ----------------------------------------------------------------------
_SEQ = struct.Struct("<BQ")  # version, transaction sequence number
_U32S = struct.Struct("<I")
_U16S = struct.Struct("<H")


def _seq_ok(seq: int, what: str) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 1 << 64:
        raise InvalidArgumentError(f"{what}: seq must be a positive int, got {seq!r}")


def encode_txn_apply(seq: int, upsert_body: bytes, delete_body: bytes) -> bytes:
    """One collection's part of transaction ``seq``: an UPSERT body (or b"") and a DELETE body (or b"")."""
    _seq_ok(seq, "encode_txn_apply")
    return b"".join((_SEQ.pack(BODY_VERSION, seq), _U32S.pack(len(upsert_body)), upsert_body, delete_body))


def decode_txn_apply(body: bytes) -> tuple[int, bytes, bytes]:
    """Inverse of ``encode_txn_apply``: ``(seq, upsert body or b"", delete body or b"")``."""
    raw = bytes(body)
    if len(raw) < _SEQ.size + 4:
        raise CorruptionError(f"TXN_APPLY body: {len(raw)} bytes, shorter than its head")
    version, seq = _SEQ.unpack_from(raw, 0)
    if version != BODY_VERSION:
        raise CorruptionError(f"TXN_APPLY body: unknown format version {version}")
    if seq == 0:
        raise CorruptionError("TXN_APPLY body: seq 0")
    (n_up,) = _U32S.unpack_from(raw, _SEQ.size)
    off = _SEQ.size + 4
    if len(raw) - off < n_up:
        raise CorruptionError(f"TXN_APPLY body: upsert part of {n_up} bytes but {len(raw) - off} follow")
    return int(seq), raw[off : off + n_up], raw[off + n_up :]


def encode_txn_commit(seq: int, groups: list[tuple[str, bytes, bytes]]) -> bytes:
    """A whole committed transaction: ``(collection name, UPSERT body or b"", DELETE body or b"")`` per collection."""
    _seq_ok(seq, "encode_txn_commit")
    parts = [_SEQ.pack(BODY_VERSION, seq), _U32S.pack(len(groups))]
    for name, up, dele in groups:
        encoded = name.encode("utf-8")
        if len(encoded) > 0xFFFF:
            raise InvalidArgumentError("encode_txn_commit: collection name too long")
        parts += [_U16S.pack(len(encoded)), encoded, _U32S.pack(len(up)), up, _U32S.pack(len(dele)), dele]
    return b"".join(parts)


def decode_txn_commit(body: bytes) -> tuple[int, list[tuple[str, bytes, bytes]]]:
    """Inverse of ``encode_txn_commit``."""
    raw = bytes(body)
    try:
        version, seq = _SEQ.unpack_from(raw, 0)
        if version != BODY_VERSION:
            raise CorruptionError(f"TXN_COMMIT body: unknown format version {version}")
        (n,) = _U32S.unpack_from(raw, _SEQ.size)
        off = _SEQ.size + 4
        groups = []
        for _ in range(n):
            (ln,) = _U16S.unpack_from(raw, off)
            off += 2
            name = raw[off : off + ln].decode("utf-8")
            off += ln
            pieces = []
            for _part in range(2):
                (m,) = _U32S.unpack_from(raw, off)
                off += 4
                if len(raw) - off < m:
                    raise CorruptionError(f"TXN_COMMIT body: a part of {m} bytes runs past the end")
                pieces.append(raw[off : off + m])
                off += m
            groups.append((name, pieces[0], pieces[1]))
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptionError(f"TXN_COMMIT body: malformed ({exc})") from exc
    if off != len(raw):
        raise CorruptionError(f"TXN_COMMIT body: {len(raw) - off} stray bytes at the end")
    if seq == 0:
        raise CorruptionError("TXN_COMMIT body: seq 0")
    return int(seq), groups


def encode_txn_done(seq: int) -> bytes:
    _seq_ok(seq, "encode_txn_done")
    return _SEQ.pack(BODY_VERSION, seq)


def decode_txn_done(body: bytes) -> int:
    raw = bytes(body)
    if len(raw) != _SEQ.size:
        raise CorruptionError(f"TXN_DONE body: {len(raw)} bytes, expected {_SEQ.size}")
    version, seq = _SEQ.unpack(raw)
    if version != BODY_VERSION or seq == 0:
        raise CorruptionError(f"TXN_DONE body: bad version {version} or seq {seq}")
    return int(seq)
