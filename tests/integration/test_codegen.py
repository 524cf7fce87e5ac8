"""The committed protobuf / gRPC modules match ``drift.proto``, and every RPC is served and reachable."""

from __future__ import annotations

import inspect

import pytest

from drift_engine.server import codegen, drift_pb2
from drift_engine.server.service import METHODS


def test_generated_code_is_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    for generated in codegen.generate(tmp_path):
        committed = codegen.HERE / generated.name
        assert committed.read_text() == generated.read_text(), (
            f"{generated.name} is stale: run `python -m drift_engine.server.codegen` and commit the result"
        )


def test_grpc_module_imports_package_relative():
    text = (codegen.HERE / "drift_pb2_grpc.py").read_text()
    assert "from . import drift_pb2 as drift__pb2" in text


def test_every_rpc_has_a_handler_and_the_right_types():
    service = drift_pb2.DESCRIPTOR.services_by_name["DriftService"]
    assert set(service.methods_by_name) == set(METHODS)
    for name, desc in service.methods_by_name.items():
        method = METHODS[name]
        assert method.request.DESCRIPTOR is desc.input_type, name
        assert method.stream == desc.server_streaming, name
        assert not desc.client_streaming


def test_every_rpc_is_used_by_the_client():
    from drift_engine.server import aclient, client

    source = inspect.getsource(client) + inspect.getsource(aclient)
    for name in METHODS:
        assert f'"{name}"' in source, f"the client never calls {name}"
