"""Client-side helpers shared by the sync and async clients: addresses, credentials, request building,
and the mapping of gRPC statuses back to ``DriftError`` subclasses.

Contract:

* Requests are validated here with the engine's own validators (``drift_engine.engine.validate``), so a
  remote call refuses bad input with the same ``DriftError`` subclass and message as the embedded API,
  before anything is sent. Vectors are sent as given (float32); cosine normalisation stays the server's.
* ``rpc_error(exc)`` turns a ``grpc.RpcError`` into the ``DriftError`` the server raised (from the
  ``drift-error-class`` trailing metadata), or, for transport failures without it, into the class of the
  status code: ``UNAVAILABLE`` -> ``EngineUnavailableError``, ``DEADLINE_EXCEEDED`` ->
  ``DeadlineExceededError``, ``RESOURCE_EXHAUSTED`` -> ``RequestTooLargeError``, and so on.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grpc
import numpy as np

from drift_engine.config import DURABILITY_MODES
from drift_engine.engine.validate import as_filter, as_ids, as_k, as_payloads, as_query, as_vectors, finite_or_none
from drift_engine.errors import (
    AuthenticationError,
    CancelledError,
    DeadlineExceededError,
    DriftError,
    EngineUnavailableError,
    InvalidArgumentError,
    PermissionDeniedError,
    RequestTooLargeError,
    error_class,
)
from drift_engine.results import StreamBatch
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb

ERROR_HINT_BIN_KEY = cv.ERROR_HINT_KEY + "-bin"
_TRANSPORT_ERRORS: dict[str, type[DriftError]] = {
    "UNAVAILABLE": EngineUnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "CANCELLED": CancelledError,
    "UNAUTHENTICATED": AuthenticationError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "RESOURCE_EXHAUSTED": RequestTooLargeError,
}


# ------------------------------------------------------------------------------------------ addresses
def grpc_target(address: str) -> tuple[str, str | None]:
    """(gRPC target, Unix socket path or None) of ``unix:PATH`` / ``unix://PATH`` / ``/PATH`` / ``HOST:PORT``."""
    if not isinstance(address, str) or not address:
        raise InvalidArgumentError(f"server address must be a non-empty string, got {address!r}")
    if address.startswith("unix://"):
        path = address[len("unix://") :]
    elif address.startswith("unix:"):
        path = address[len("unix:") :]
    elif address.startswith("/"):
        path = address
    else:
        return address, None
    path = os.path.abspath(path)
    return f"unix:{path}", path


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_send_message_length", -1),
        ("grpc.enable_retries", 0),
    ]


def credentials(tls_ca: bytes | str | None) -> grpc.ChannelCredentials | None:
    """TLS channel credentials from a PEM root certificate (bytes or a file path); None = plaintext."""
    if tls_ca is None:
        return None
    if isinstance(tls_ca, str):
        with open(tls_ca, "rb") as f:
            tls_ca = f.read()
    return grpc.ssl_channel_credentials(root_certificates=tls_ca)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


# ------------------------------------------------------------------------------------------ errors
def rpc_error(exc: grpc.RpcError) -> DriftError:
    """The ``DriftError`` a failed call stands for (see the module docstring)."""
    code_obj = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    code = code_obj.name if code_obj is not None else "UNKNOWN"
    details = (exc.details() if hasattr(exc, "details") else None) or code
    metadata = (exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None) or ()
    cls_name, hint = "", ""
    for key, value in metadata:
        if key == cv.ERROR_CLASS_KEY:
            cls_name = value
        elif key == ERROR_HINT_BIN_KEY:
            hint = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if cls_name:
        return cv.make_error(code, cls_name, details, hint)
    cls = _TRANSPORT_ERRORS.get(code) or error_class("", code)
    return cls(f"{details} (gRPC status {code})")


# ------------------------------------------------------------------------------------------ requests
def opt_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _durability(value: str | None) -> str:
    if value is None:
        return ""
    if value not in DURABILITY_MODES:
        from drift_engine.errors import InvalidParameterError

        raise InvalidParameterError(f"durability must be one of {', '.join(DURABILITY_MODES)}, got {value!r}")
    return value


def _params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, default=lambda o: o.item() if hasattr(o, "item") else str(o))


def create_request(name: str, dim: int, metric: str, params: dict[str, Any]) -> pb.CreateCollectionRequest:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer | float) or int(dim) != dim:
        from drift_engine.errors import InvalidParameterError

        raise InvalidParameterError(f"dimension must be a whole number, got {dim!r}")
    if not isinstance(name, str):
        from drift_engine.errors import InvalidParameterError

        raise InvalidParameterError(f"invalid collection name {name!r}")
    return pb.CreateCollectionRequest(name=name, dim=int(dim), metric=str(metric), params_json=_params_json(params))


def params_request(name: str, params: dict[str, Any]) -> pb.SetParamsRequest:
    return pb.SetParamsRequest(collection=name, params_json=_params_json(params))


def write_request(
    name: str, dim: int, ids: Any, vectors: Any, payloads: Any, *, replace: bool, durability: str | None
) -> pb.UpsertRequest:
    mode = _durability(durability)
    id_arr = as_ids(ids)
    vec = as_vectors(vectors, dim, "l2", n_expected=id_arr.size)
    pay = as_payloads(payloads, id_arr.size)
    req = pb.UpsertRequest(collection=name, ids=id_arr.tolist(), replace=replace, durability=mode)
    if id_arr.size:
        req.vectors = cv.encode_vectors(vec)
    if payloads is not None and any(p is not None for p in pay):
        req.payload_json.extend(p.decode() if p is not None else "null" for p in pay)
    return req


def delete_request(name: str, ids: Any, durability: str | None) -> pb.DeleteRequest:
    mode = _durability(durability)
    return pb.DeleteRequest(collection=name, ids=as_ids(ids, allow_duplicates=True).tolist(), durability=mode)


def get_request(name: str, ids: Any, *, skip_vectors: bool = False) -> pb.GetRequest:
    return pb.GetRequest(collection=name, ids=as_ids(ids, allow_duplicates=True).tolist(), skip_vectors=skip_vectors)


def search_request(
    name: str, dim: int, query: Any, k: Any, nprobe: Any, rerank: Any, flt: Any, ef: Any, *, with_payloads: bool = False
) -> pb.SearchRequest:
    q = as_query(query, dim, "l2")
    as_filter(flt)
    return pb.SearchRequest(
        collection=name,
        query=cv.encode_vectors(q),
        k=as_k(k),
        nprobe=opt_int(nprobe, "nprobe"),
        rerank=opt_int(rerank, "rerank"),
        ef=opt_int(ef, "ef"),
        filter_json=cv.filter_to_json(flt),
        with_payloads=with_payloads,
    )


def fast_search_request(
    name: str,
    query: np.ndarray | str,
    k: int,
    nprobe: int | None,
    rerank: int | None,
    ef: int | None,
    filter_json: str,
    with_payloads: bool,
) -> pb.FastRequest:
    """A fast-path search built in place, with no client-side checks: for callers that validated every
    argument already (the FDW's scan plan: a finite float32 query of the collection's dimension, knobs in
    range, the filter as compact JSON; or the query as a literal, ``str``, which the server parses). The server
    validates the request again, as it does every request."""
    req = pb.FastRequest()
    search = _search_fields(req.search, name, k, nprobe, rerank, ef, filter_json, with_payloads)
    if isinstance(query, str):
        search.query_text = query
    else:
        search.query = query.tobytes()
    return req


def _search_fields(
    search: pb.SearchRequest, name: str, k: int, nprobe: int | None, rerank: int | None, ef: int | None,
    filter_json: str, with_payloads: bool,
) -> pb.SearchRequest:  # fmt: skip
    """``search`` with every field but the query set (the optional knobs only when given)."""
    search.collection = name
    search.k = k
    if nprobe is not None:
        search.nprobe = nprobe
    if rerank is not None:
        search.rerank = rerank
    if ef is not None:
        search.ef = ef
    if filter_json:
        search.filter_json = filter_json
    if with_payloads:
        search.with_payloads = True
    return search


_SEARCH_FIXED: dict[tuple[Any, ...], bytes] = {}  # the encoded fixed fields of fast_search_body, per combination
_SEARCH_FIXED_MAX = 256


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def fast_search_body(
    name: str,
    query: np.ndarray | str,
    k: int,
    nprobe: int | None,
    rerank: int | None,
    ef: int | None,
    filter_json: str,
    with_payloads: bool,
) -> bytes:
    """``fast_search_request(...)`` already encoded, without the token (``DirectClient.call_encoded`` adds
    it): a message that parses equal to it. Every field but the query is encoded by protobuf once per
    combination and kept; the query is appended as ``SearchRequest`` field 2 (protobuf reads a message's
    fields in any order), or as ``query_text`` (field 9) when it is a literal (a ``str``). Same callers
    and the same absence of checks as ``fast_search_request``."""
    key = (name, k, nprobe, rerank, ef, filter_json, with_payloads)
    fixed = _SEARCH_FIXED.get(key)
    if fixed is None:
        msg = _search_fields(pb.SearchRequest(), name, k, nprobe, rerank, ef, filter_json, with_payloads)
        if len(_SEARCH_FIXED) >= _SEARCH_FIXED_MAX:
            _SEARCH_FIXED.clear()
        fixed = _SEARCH_FIXED[key] = msg.SerializeToString()
    if isinstance(query, str):  # SearchRequest.query_text: field 9, length-delimited
        q = query.encode()
        search = b"".join((fixed, b"\x4a", _varint(len(q)), q))
    else:  # SearchRequest.query: field 2, length-delimited
        q = query.tobytes()
        search = b"".join((fixed, b"\x12", _varint(len(q)), q))
    return b"".join((b"\x12", _varint(len(search)), search))  # FastRequest.search: field 2, length-delimited


def search_batch_request(
    name: str, dim: int, queries: Any, k: Any, nprobe: Any, rerank: Any, flt: Any, ef: Any
) -> pb.SearchBatchRequest:
    qs = as_vectors(queries, dim, "l2")
    as_filter(flt)
    return pb.SearchBatchRequest(
        collection=name,
        queries=cv.encode_vectors(qs),
        m=qs.shape[0],
        k=as_k(k),
        nprobe=opt_int(nprobe, "nprobe"),
        rerank=opt_int(rerank, "rerank"),
        ef=opt_int(ef, "ef"),
        filter_json=cv.filter_to_json(flt),
    )


def search_batch_result(resp: pb.SearchBatchResponse) -> tuple[np.ndarray, np.ndarray]:
    ids = np.frombuffer(resp.ids, dtype=cv.I64).reshape(resp.m, resp.k).astype(np.int64)
    dists = np.frombuffer(resp.distances, dtype=cv.F32).reshape(resp.m, resp.k).astype(np.float32)
    return ids, dists


def stream_request(
    name: str,
    dim: int,
    query: Any,
    *,
    k: Any = None,
    nprobe: Any = None,
    rerank: Any = None,
    filter: Any = None,
    ef: Any = None,
    max_distance: float | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    with_payloads: bool = False,
) -> pb.SearchStreamRequest:
    q = as_query(query, dim, "l2")
    as_filter(filter)
    req = pb.SearchStreamRequest(
        collection=name,
        query=cv.encode_vectors(q),
        k=opt_int(k, "k") or 0,
        nprobe=opt_int(nprobe, "nprobe"),
        rerank=opt_int(rerank, "rerank"),
        ef=opt_int(ef, "ef"),
        filter_json=cv.filter_to_json(filter),
        batch_size=opt_int(batch_size, "batch_size") or 0,
        limit=opt_int(limit, "limit") or 0,
        with_payloads=with_payloads,
    )
    bound = finite_or_none(max_distance, "max_distance")
    if bound is not None:
        req.max_distance = bound
    return req


def stream_batch(msg: pb.SearchStreamBatch) -> StreamBatch:
    payloads = cv.payloads_from_json(msg.payload_json) if msg.has_payloads else None
    return StreamBatch(
        cv.ids_array(msg.ids), cv.f32_array(msg.distances), payloads, msg.round, msg.skipped, msg.done, msg.end_reason
    )


def health_dict(resp: pb.HealthResponse) -> dict[str, Any]:
    return {
        "status": resp.status,
        "version": resp.version,
        "pid": resp.pid,
        "uptime_s": resp.uptime_s,
        "collections": list(resp.collections),
        "inflight": resp.inflight,
        "active_streams": resp.active_streams,
        "stream_rounds": resp.stream_rounds,
        "fast_path": resp.fast_path,
        "fast_path_state": resp.fast_path_state,
        "max_message_bytes": resp.max_message_bytes,
        "max_batch": resp.max_batch,
        "max_k": resp.max_k,
        "max_dim": resp.max_dim,
    }
