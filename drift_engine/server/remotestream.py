"""Client-side handles of searches in flight: ``PendingSearch`` (a pipelined fast-path search) and
``RemoteSearchStream`` (a ``SearchStream`` over a fast-path cursor or a gRPC stream), as ``Client`` /
``RemoteCollection`` (``server/client.py``) hand them out.

Contract: ``PendingSearch.result()`` gives exactly what ``RemoteCollection.search`` would have (once), or
``abandon()`` drops it. ``RemoteSearchStream`` is a lazy iterator of ``StreamHit``: nothing is asked of the
server before the first row is wanted, each further batch only when the previous one is used up;
``close()`` (or leaving a ``with`` block) cancels the server's work and is idempotent.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from drift_engine.errors import DriftError
from drift_engine.results import SearchResult, StreamBatch, StreamHit
from drift_engine.server import convert as cv
from drift_engine.server import drift_pb2 as pb
from drift_engine.server import wire
from drift_engine.server.directclient import DirectClient

if TYPE_CHECKING:  # client.py imports this module; the names are for type hints only
    from drift_engine.server.client import Client, RemoteCollection


class PendingSearch:
    """A search ``RemoteCollection.search_send`` sent: ``result()`` once, or ``abandon()``."""

    def __init__(self, collection: RemoteCollection, fast: DirectClient, ticket: Any) -> None:
        self._collection, self._fast, self._ticket = collection, fast, ticket

    def result(self) -> SearchResult:
        resp = self._fast.receive(self._ticket, self._collection._client.timeout).search
        return cv.search_result(resp, self._collection._payload_loader)

    def abandon(self) -> None:
        self._fast.abandon(self._ticket)


class RemoteSearchStream:
    """A lazy iterator of ``StreamHit`` over ``SearchStream`` (fast path cursor or gRPC stream)."""

    def __init__(self, client: Client, request: pb.SearchStreamRequest) -> None:
        self._client = client
        self._request = request
        self._fast = client.fast()
        self._call: Any = None
        self._cursor = 0
        self._started = False
        self._done = False
        self._rows: deque[StreamHit] = deque()
        self.rounds = 0
        self.skipped = 0
        self.end_reason = ""

    def __iter__(self) -> RemoteSearchStream:
        return self

    def __next__(self) -> StreamHit:
        while not self._rows:
            if self._done:
                raise StopIteration
            self._rows.extend(self.next_batch().hits())
        return self._rows.popleft()

    def batches(self) -> Iterator[StreamBatch]:
        """The stream batch by batch (the server's messages), instead of row by row."""
        while not self._done:
            yield self.next_batch()

    def next_batch(self) -> StreamBatch:
        if self._done:
            raise StopIteration
        msg = self._fast_batch() if self._fast is not None else self._grpc_batch()
        self._started = True
        self.rounds, self.skipped = msg.round, msg.skipped
        if msg.done:
            self._done = True
            self.end_reason = msg.end_reason
            self._cursor = 0
        return wire.stream_batch(msg)

    def _fast_batch(self) -> pb.SearchStreamBatch:
        if not self._started:
            req = pb.FastRequest(stream_open=self._request)
        else:
            req = pb.FastRequest(stream_next=pb.StreamCursor(cursor=self._cursor))
        try:
            msg = self._fast.call(req, self._client.timeout).batch
        except BaseException:
            self._done = True
            raise
        self._cursor = msg.cursor
        return msg

    def _grpc_batch(self) -> pb.SearchStreamBatch:
        if self._call is None:
            self._call = self._client.stream("SearchStream", self._request)
        try:
            return next(self._call)
        except StopIteration:  # the server always ends with a done batch; a bare end means it went away
            return pb.SearchStreamBatch(done=True, end_reason="closed", round=self.rounds, skipped=self.skipped)
        except grpc.RpcError as exc:
            self._done = True
            raise wire.rpc_error(exc) from None

    def close(self) -> None:
        """Stop the stream and free the server's work (idempotent)."""
        if self._call is not None:
            self._call.cancel()
        if self._cursor and self._fast is not None:
            cursor, self._cursor = self._cursor, 0
            with contextlib.suppress(DriftError):  # if this fails, the cursor expires on the server anyway
                self._fast.call(pb.FastRequest(stream_close=pb.StreamCursor(cursor=cursor)), self._client.timeout)
        self._done = True
        self._rows.clear()

    def __enter__(self) -> RemoteSearchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()
