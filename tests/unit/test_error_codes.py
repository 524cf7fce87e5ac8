"""Every DriftError carries a gRPC code and a SQLSTATE, and the FDW reports it with that SQLSTATE."""

from __future__ import annotations

import re

import pytest

from drift_engine import errors as E
from drift_fdw.connection import problem


@pytest.mark.parametrize("cls", E.ALL_ERRORS, ids=lambda c: c.__name__)
def test_each_error_class_has_its_codes_and_the_fdw_uses_them(cls: type[E.DriftError]) -> None:
    assert re.fullmatch(r"[0-9A-Z]{5}", cls.sqlstate)
    assert cls.grpc_code.isupper()
    assert E.error_class(cls.__name__, cls.grpc_code) is cls
    got = problem(cls("boom"), "unix:/nowhere")
    assert got.sqlstate == cls.sqlstate and got.message == "drift: boom"


def test_conflicts_are_serialization_failures_and_other_exceptions_are_internal() -> None:
    assert problem(E.ConflictError("row 7 changed")).sqlstate == "40001"
    assert E.sqlstate_of(RuntimeError("x")) == "XX000"
