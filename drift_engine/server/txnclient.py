"""Client side of engine transactions (``engine.txn``): building ``TxnOp`` messages and ``RemoteTransaction``.

Contract: ``txn_op`` validates its input locally with the engine's validators (same errors as the embedded
API, before anything is sent). ``RemoteTransaction`` has the methods of the embedded ``Transaction``
(``drift_engine.api``) and calls ``Client.txn_*``; staging is sent at once (one ``StageTxn`` per call), so a
caller chunks large transactions itself (``StageTxn`` obeys the server's ``max_batch`` and message size).
Importing this module loads numpy and the generated protobuf module only.
"""

from __future__ import annotations

from typing import Any

from drift_engine.engine.validate import as_ids, as_payloads, as_vectors
from drift_engine.errors import InvalidArgumentError
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb

OPS = ("insert", "upsert", "delete", "expect")


def txn_op(
    collection: str,
    op: str,
    ids: Any,
    vectors: Any = None,
    payloads: Any = None,
    read_lsns: Any = None,
    *,
    dim: int,
    into: pb.TxnOp | None = None,
) -> pb.TxnOp:
    """One validated ``TxnOp`` message; with ``into`` (an empty one inside a request, e.g. from
    ``Client.stage_request``) that message is filled and returned, so its vectors are never copied."""
    if op not in OPS:
        raise InvalidArgumentError(f"transaction op must be one of {', '.join(OPS)}, got {op!r}")
    id_arr = as_ids(ids)
    msg = pb.TxnOp() if into is None else into
    msg.collection = collection
    msg.op = op
    msg.ids.extend(id_arr.tolist())
    if op in ("insert", "upsert"):
        vec = as_vectors(vectors, dim, "l2", n_expected=id_arr.size)
        if id_arr.size:
            msg.vectors = cv.encode_vectors(vec)
        if payloads is not None:
            pay = as_payloads(payloads, id_arr.size)
            if any(p is not None for p in pay):
                msg.payload_json.extend(p.decode() if p is not None else "null" for p in pay)
    elif op == "expect":
        lsns = [] if read_lsns is None else [int(x) for x in read_lsns]
        if len(lsns) != id_arr.size:
            raise InvalidArgumentError(f"expect: {id_arr.size} ids need as many read_lsns, got {len(lsns)}")
        msg.read_lsns.extend(lsns)
    return msg


class RemoteTransaction:
    """An engine transaction on a server, by id (see ``engine.txn``)."""

    def __init__(self, client: Any, txn_id: str) -> None:
        self.client = client
        self.txn_id = txn_id
        self._dims: dict[str, int] = {}

    def _dim(self, collection: str) -> int:
        if collection not in self._dims:
            self._dims[collection] = self.client.collection(collection).dim
        return self._dims[collection]

    def _stage(self, collection: str, op: str, ids: Any, vectors: Any = None, payloads: Any = None, lsns: Any = None):
        dim = self._dim(collection) if op in ("insert", "upsert") else 0
        return self.client.txn_stage(self.txn_id, [txn_op(collection, op, ids, vectors, payloads, lsns, dim=dim)])

    def insert(self, collection: str, ids: Any, vectors: Any, payloads: Any = None) -> int:
        return self._stage(collection, "insert", ids, vectors, payloads)

    def upsert(self, collection: str, ids: Any, vectors: Any, payloads: Any = None) -> int:
        return self._stage(collection, "upsert", ids, vectors, payloads)

    def delete(self, collection: str, ids: Any) -> int:
        return self._stage(collection, "delete", ids)

    def expect(self, collection: str, ids: Any, read_lsns: Any) -> int:
        return self._stage(collection, "expect", ids, lsns=read_lsns)

    def prepare(self) -> dict[str, int]:
        return self.client.txn_prepare(self.txn_id)

    def commit(self, durability: str | None = None) -> dict[str, int]:
        return self.client.txn_commit(self.txn_id, durability)

    def abort(self) -> bool:
        return self.client.txn_abort(self.txn_id)

    def __enter__(self) -> RemoteTransaction:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
