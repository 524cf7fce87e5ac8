"""The engine server (``drift-engine serve``) and its clients (DESIGN §11).

Layout:

* ``drift.proto`` — the one wire schema (gRPC service + fast-path envelope); ``drift_pb2*.py`` are generated
  from it by ``codegen.py`` and committed (``tests/integration/test_codegen.py`` fails when they are stale).
* Server: ``runner.py`` (engine, listeners, signals, drain) -> ``service.py`` (``DriftService`` on grpc.aio:
  auth, parsing, status mapping) and ``fastpath.py`` (ZeroMQ ipc: Search, Get, stream cursors) -> ``core.py``
  (one ``ServiceCore``: limits, validation, engine calls) -> ``drift_engine.api``. ``stream.py`` is the
  streaming search (§6.5) on top of ``Collection.search``; ``scan.py`` lists live ids for ``Scan``.
* Clients: ``client.py`` (sync ``Client`` / ``RemoteCollection``, mirrors ``Engine`` / ``Collection``),
  ``aclient.py`` (asyncio), ``fastclient.py`` (the fast path's REQ side), ``wire.py`` (requests, addresses,
  gRPC status -> ``DriftError``), ``convert.py`` (shared by both sides).
* Tools: ``inspect.py`` (offline segment/LMDB check), ``logs.py`` (JSON log lines).

Importing ``drift_engine.server.client`` does not load the engine's heavy modules (numba, LMDB, hnswlib).
"""
