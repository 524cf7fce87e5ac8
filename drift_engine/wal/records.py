"""WAL record types and their compact binary bodies.

Contract:

* Record type constants (the ``type`` byte of a WAL frame): ``UPSERT = 1``, ``DELETE = 2``,
  ``CREATE = 3``, ``DROP = 4``, ``PARAMS = 5``, ``ABORT = 6``.  CREATE / DROP / PARAMS carry a JSON
  object.  ``ABORT`` names the lsn of an earlier record of the same log whose write failed after it was
  logged (the caller got an error): replay must skip that record.  A log's reader decides which types
  it expects; any other type is corruption.
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

RECORD_TYPES: dict[int, str] = {
    UPSERT: "UPSERT",
    DELETE: "DELETE",
    CREATE: "CREATE",
    DROP: "DROP",
    PARAMS: "PARAMS",
    ABORT: "ABORT",
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
