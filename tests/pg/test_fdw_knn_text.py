"""``knn.first_lists`` with a plan whose query is left unparsed: the literal goes to the server; a literal the
server refuses raises the FDW's own error; a server that cannot parse literals (an older one) gets the vector."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from drift_engine.errors import InvalidVectorError
from drift_fdw import knn
from drift_fdw.quals import parse_query, plan_scan
from drift_fdw.rows import ValueProblem
from tests.pg.test_fdw_units import Qual, spec


class FakeCollection:
    dim = 3

    def __init__(self, parses_text: bool) -> None:
        self.parses_text = parses_text
        self.sent: list[Any] = []

    def search_rows(self, query: Any, k: int, **_: Any) -> tuple[list[int], list[float], None]:
        self.sent.append(query)
        if isinstance(query, str) and (not self.parses_text or "x" in query):
            raise InvalidVectorError("query: not a vector")
        return [1, 2], [0.5, 1.5], None


def _plan(literal: str) -> Any:
    plan = plan_scan([Qual("query", "=", literal)], spec(), 3, vectors=False, executing=True)
    assert plan.query is None and plan.query_echo == literal
    return plan


def test_the_literal_goes_to_the_server_unparsed() -> None:
    col = FakeCollection(parses_text=True)
    assert knn.first_lists(col, _plan("{1,2,3}"), "unix:/a") == ([1, 2], [0.5, 1.5])
    assert col.sent == ["{1,2,3}"]


def test_a_refused_literal_raises_the_fdws_own_error() -> None:
    col = FakeCollection(parses_text=True)
    with pytest.raises(Exception) as err:
        knn.first_lists(col, _plan("{1,x,3}"), "unix:/b")
    assert "not a number" in str(err.value) and getattr(err.value, "sqlstate", None) == "22P02"
    with pytest.raises(ValueProblem):  # what the error was made from
        parse_query(_plan("{1,x,3}"), 3)


def test_a_server_without_literals_gets_the_vector_from_then_on() -> None:
    col = FakeCollection(parses_text=False)
    address = "unix:/old-server"
    knn.TEXT_REFUSED.discard(address)
    try:
        assert knn.first_lists(col, _plan("{1,2,3}"), address) == ([1, 2], [0.5, 1.5])
        assert col.sent[0] == "{1,2,3}" and np.array_equal(col.sent[1], np.array([1, 2, 3], dtype=np.float32))
        knn.first_lists(col, _plan("{4,5,6}"), address)
        assert len(col.sent) == 3 and not isinstance(col.sent[2], str)  # parsed here, no second refusal
    finally:
        knn.TEXT_REFUSED.discard(address)
