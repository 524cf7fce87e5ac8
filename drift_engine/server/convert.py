"""Conversions between the engine's Python values and ``drift.proto`` messages, shared by server and client.

Contract:

* Vectors are packed little-endian float32 bytes, row-major; ``decode_vectors`` refuses byte strings whose
  length is not a whole number of float32 rows (``InvalidVectorError``), never guesses.
* Payloads, filters and parameter dicts are JSON text. A payload is a JSON object or ``"null"`` / ``""``
  (no payload). Bad JSON raises the ``InvalidArgumentError`` subclass the embedded API would raise for the
  same mistake (``InvalidPayloadError``, ``InvalidFilterError``, ``InvalidParameterError``).
* Errors: ``error_fields(err)`` gives the (code, class, message, hint) a status carries, and
  ``make_error(...)`` turns them back into the same ``DriftError`` subclass on the client.
* Nothing here imports grpc or the engine's heavy modules (numba, LMDB): a thin client can use it.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from drift_engine.errors import (
    DriftError,
    InvalidFilterError,
    InvalidParameterError,
    InvalidPayloadError,
    InvalidVectorError,
    error_class,
)
from drift_engine.results import GetResult, SearchResult
from drift_engine.server import drift_pb2 as pb

F32 = np.dtype("<f4")
I64 = np.dtype("<i8")
ERROR_CLASS_KEY = "drift-error-class"
ERROR_HINT_KEY = "drift-error-hint"


# ------------------------------------------------------------------------------------------ vectors
def encode_vectors(array: np.ndarray) -> bytes:
    """Packed little-endian float32 bytes of ``array`` (any shape; row-major)."""
    return np.ascontiguousarray(array, dtype=F32).tobytes()


def decode_vectors(raw: bytes, rows: int, what: str = "vectors") -> np.ndarray:
    """``rows`` x dim float32 from packed bytes; dim is inferred and must be whole (0 rows: shape (0, 0))."""
    if rows < 0:
        raise InvalidVectorError(f"{what}: negative row count {rows}")
    if rows == 0:
        if raw:
            raise InvalidVectorError(f"{what}: {len(raw)} bytes of vector data for 0 rows")
        return np.zeros((0, 0), dtype=np.float32)
    if len(raw) % 4:
        raise InvalidVectorError(f"{what}: {len(raw)} bytes is not a whole number of float32 values")
    values = len(raw) // 4
    if values % rows:
        raise InvalidVectorError(f"{what}: {values} float32 values do not split into {rows} rows of equal length")
    if values == 0:
        raise InvalidVectorError(f"{what}: empty vector (dimension 0)")
    return np.frombuffer(raw, dtype=F32).reshape(rows, values // rows)


def decode_query(raw: bytes) -> np.ndarray:
    """One query vector (1-d float32) from packed bytes."""
    if not raw:
        raise InvalidVectorError("query: empty vector (dimension 0)")
    return decode_vectors(raw, 1, "query")[0]


_F32 = np.float32
_fromstring = np.fromstring
# The finiteness test below squares the vector in float32: elements beyond ~1.8e19 overflow it, are then
# checked exactly, and must not leave numpy's overflow warning in the server log.
warnings.filterwarnings("ignore", "overflow encountered in dot", RuntimeWarning, __name__)


def vector_from_literal(value: str, dim: int | None) -> np.ndarray | None:
    """A ``'[..]'`` / ``'{..}'`` literal (PostgreSQL's ``real[]`` / pgvector's text) of exactly ``dim`` finite
    numbers as float32, parsed by numpy's C text parser in one call; None when it is anything else (the
    FDW's element-wise path then says what is wrong; the server refuses it). The
    finiteness test is one dot product (ndarray's own method: a PostgreSQL backend runs this cold, once
    per statement, where numpy's Python-level wrappers such as ``.all()`` or ``.sum()`` cost more than
    the arithmetic); only a vector whose square overflows float32 takes the exact test."""
    if dim is None or len(value) < 3 or value[0] not in "[{" or value[-1] not in "]}":
        return None
    body = value[1:-1]
    if body.count(",") != dim - 1:
        return None
    try:  # a bad element raises ValueError (numpy 2); a parse that stops early is caught by the size check
        arr = _fromstring(body, _F32, -1, ",")
    except ValueError:
        return None
    if arr.size != dim or (not math.isfinite(arr.dot(arr)) and not np.isfinite(arr).all()):
        return None
    return arr


def query_from_text(text: str, dim: int) -> np.ndarray:
    """``vector_from_literal`` that raises ``InvalidVectorError`` (naming the literal) instead of giving None."""
    q = vector_from_literal(text, dim)
    if q is None:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise InvalidVectorError(f"query_text {shown!r} is not a literal of {dim} finite numbers")
    return q


def query_of(req: pb.SearchRequest, dim: int) -> np.ndarray:
    """A ``SearchRequest``'s query: ``query_text`` parsed when given (``query_from_text``), else ``query``."""
    return query_from_text(req.query_text, dim) if req.query_text else decode_query(req.query)


def ids_array(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64) if len(values) else np.empty(0, dtype=np.int64)


def f32_array(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32) if len(values) else np.empty(0, dtype=np.float32)


# ------------------------------------------------------------------------------------------ JSON
def dumps(obj: Any) -> str:
    """Compact JSON; non-finite floats as ``Infinity`` / ``NaN`` (parameters such as ``tau`` may be inf)."""
    return json.dumps(obj, separators=(",", ":"))


def loads_dict(text: str, what: str, err: type[DriftError] = InvalidParameterError) -> dict[str, Any]:
    """A JSON object (``""`` = empty); anything else raises ``err`` naming ``what``."""
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise err(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise err(f"{what} is nested too deeply to be parsed") from None
    if not isinstance(obj, dict):
        raise err(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def payload_to_json(payload: dict | None) -> str:
    return "null" if payload is None else json.dumps(payload, separators=(",", ":"))


def payloads_from_json(texts: Sequence[str], *, what: str = "payload") -> list[Any]:
    """Parsed payloads (``None`` for ``"null"`` / ``""``); the engine checks that each is an object."""
    out: list[Any] = []
    for row, text in enumerate(texts):
        if not text or text == "null":
            out.append(None)
            continue
        try:
            out.append(json.loads(text))
        except ValueError as exc:
            raise InvalidPayloadError(f"{what} at row {row} is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidPayloadError(f"{what} at row {row} is nested too deeply to be parsed") from None
    return out


def filter_to_json(flt: dict[str, Any] | None) -> str:
    if not flt:
        return ""
    if not isinstance(flt, dict) or not all(isinstance(k, str) for k in flt):
        raise InvalidFilterError("filter must be a dict {payload_key: value} (equality on every key)")
    try:
        return json.dumps(flt, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidFilterError(f"filter is not JSON-serialisable: {exc}") from None


def filter_from_json(text: str) -> dict[str, Any] | None:
    return loads_dict(text, "filter", InvalidFilterError) or None


# ------------------------------------------------------------------------------------------ results
def search_response(result: SearchResult, with_payloads: bool) -> pb.SearchResponse:
    return fill_search_response(pb.SearchResponse(), result, with_payloads)


def fill_search_response(resp: pb.SearchResponse, result: SearchResult, with_payloads: bool) -> pb.SearchResponse:
    """``resp`` (empty; e.g. a reply's submessage, filled in place instead of copied) holding ``result``."""
    resp.ids.extend(result.ids.tolist())
    resp.distances.extend(result.distances.tolist())
    if with_payloads:
        resp.payload_json.extend(payload_to_json(p) for p in result.payloads)
        resp.has_payloads = True
    return resp


def search_result(
    resp: pb.SearchResponse, loader: Callable[[np.ndarray], list[dict | None]] | None = None
) -> SearchResult:
    payloads = payloads_from_json(resp.payload_json) if resp.has_payloads else None
    return SearchResult(ids_array(resp.ids), f32_array(resp.distances), loader, payloads)


def get_response(result: GetResult, *, skip_vectors: bool = False, skip_payloads: bool = False) -> pb.GetResponse:
    resp = pb.GetResponse(ids=result.ids.tolist(), dim=int(result.vectors.shape[1]) if result.vectors.ndim == 2 else 0)
    resp.read_lsn = int(getattr(result, "read_lsn", 0))
    if not skip_vectors:
        resp.vectors = encode_vectors(result.vectors)
    if not skip_payloads:
        resp.payload_json.extend(payload_to_json(p) for p in result.payloads)
    return resp


def get_result(resp: pb.GetResponse, dim: int) -> GetResult:
    ids = ids_array(resp.ids)
    if resp.vectors:
        vectors = np.frombuffer(resp.vectors, dtype=F32).reshape(ids.size, -1).astype(np.float32)
    else:
        vectors = np.zeros((ids.size, dim), dtype=np.float32)
    payloads = payloads_from_json(resp.payload_json) if resp.payload_json else [None] * ids.size
    return GetResult(ids, vectors, payloads, int(resp.read_lsn))


# ------------------------------------------------------------------------------------------ errors
def error_fields(err: DriftError) -> tuple[str, str, str, str]:
    """(gRPC status code name, DriftError class name, message, hint) of an engine error."""
    return err.grpc_code, type(err).__name__, err.message, err.hint or ""


def make_error(code: str, class_name: str, message: str, hint: str = "") -> DriftError:
    """The DriftError the server raised, rebuilt from a status (falls back by code when the class is unknown)."""
    cls = error_class(class_name, code)
    return cls(message, hint=hint or None)


def error_status(err: DriftError) -> pb.ErrorStatus:
    code, name, message, hint = error_fields(err)
    return pb.ErrorStatus(code=code, error_class=name, message=message, hint=hint)
