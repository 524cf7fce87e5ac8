"""drift_fdw's pure-Python parts (options, quals, value conversion, the write buffer): no PostgreSQL needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from drift_engine.errors import DuplicateIdError
from drift_fdw.options import ConfigError, TableSpec
from drift_fdw.quals import plan_scan
from drift_fdw.rows import ValueProblem, array_literal, parse_vector, payload_value, pg_value, vector_literal
from drift_fdw.writes import WriteBuffer


@dataclass
class Col:
    type_name: str
    base_type_name: str = ""
    typmod: int = -1
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class Qual:
    field_name: str
    operator: Any
    value: Any


COLUMNS = {
    "id": Col("bigint"),
    "embedding": Col("real[]"),
    "query": Col("real[]"),
    "distance": Col("real"),
    "k": Col("integer"),
    "nprobe": Col("integer"),
    "tag": Col("text"),
    "year": Col("integer"),
    "score": Col("double precision"),
    "meta": Col("jsonb"),
    "kind": Col("text", options={"field": "type"}),
}
OPTS = {"collection": "items", "address": "unix:/x.sock"}


def spec(**extra: str) -> TableSpec:
    return TableSpec.parse({**OPTS, **extra}, COLUMNS)


def test_options_and_roles() -> None:
    s = spec(dim="3", metric="cosine", create="true", token="t", timeout="5")
    assert s.roles["id"] == "id" and s.roles["distance"] == "distance" and s.vector_dim == 3
    assert s.fields == {"tag": "tag", "year": "year", "score": "score", "meta": "meta", "kind": "type"}
    assert (s.metric, s.create, s.token, s.timeout) == ("cosine", True, "t", 5.0)
    v = TableSpec.parse(OPTS, {"id": Col("bigint"), "embedding": Col("vector(8)", "vector", 8)})
    assert v.vector_dim == 8 and v.column("embedding").pgvector


@pytest.mark.parametrize(
    ("opts", "cols", "message"),
    [
        ({"colection": "x"}, COLUMNS, "unknown option 'colection'"),
        ({"metric": "dot"}, COLUMNS, "unknown metric"),
        ({"create": "true"}, COLUMNS, "needs the dimension"),
        ({"dim": "0"}, COLUMNS, "out of range"),
        ({"dim": "4"}, {"embedding": Col("vector(3)", "vector", 3)}, "disagree"),
        ({}, {"x": Col("real[]", options={"role": "embeding"})}, "unknown role"),
        ({}, {"id": Col("text")}, "has type text"),
        ({}, {"id": Col("bigint"), "b": Col("int", "integer", options={"role": "id"})}, "both have the role"),
    ],
)
def test_bad_options(opts: dict[str, str], cols: dict[str, Col], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        TableSpec.parse({**OPTS, **opts}, cols)
    assert err.value.message.startswith("drift:")


def test_vectors_parse_and_print_exactly() -> None:
    col = spec().column("embedding")
    assert parse_vector(["0.5", "-1", "2e3"], col, 3).tolist() == [0.5, -1.0, 2000.0]
    assert parse_vector("[1,2]", col, 2).tolist() == [1.0, 2.0]
    for bad, message in [
        (["1", "NaN"], "NaN"),
        (["1"], "1 dimensions"),
        (["x"], "not a number"),
        ("[1,2", "malformed"),
    ]:
        with pytest.raises(ValueProblem, match=message):
            parse_vector(bad, col, 2)
    for bad, message in [  # the one-call parsers hand anything odd to the element-wise path and its errors
        ("[1,abc]", "not a number"),
        ("{1,}", "not a number"),
        ("[1,nan]", "NaN"),
        ("[1e50,2]", "NaN or Infinity"),
        ("[1,2,3]", "3 dimensions"),
        ([1.0, None], "NULL element"),
        ([[1.0, 2.0], [3.0, 4.0]], "not a number"),
        ([1.0, float("inf")], "NaN"),
    ]:
        with pytest.raises(ValueProblem, match=message):
            parse_vector(bad, col, 2)
    rng = np.random.default_rng(3)
    many = rng.standard_normal(384).astype(np.float32)
    for value in (vector_literal(many, pgvector=True), vector_literal(many, pgvector=False), many.tolist()):
        assert np.array_equal(parse_vector(value, col, 384), parse_vector(value, col, None))
        assert np.array_equal(parse_vector(value, col, 384), many)
    v = (rng.standard_normal(300) * 10.0 ** rng.integers(-8, 8, 300)).astype(np.float32)
    text = vector_literal(v, pgvector=False)
    assert text.startswith("{") and np.array_equal(np.array(text[1:-1].split(","), dtype=np.float32), v)
    assert vector_literal(np.array([0.1, 2], dtype=np.float32), pgvector=True) == "[0.1,2]"


def test_payload_values_both_ways() -> None:
    s = spec()
    cols = s.columns
    assert payload_value("42", cols["year"]) == 42 and payload_value(7, cols["year"]) == 7
    assert payload_value("0.25", cols["score"]) == 0.25
    assert payload_value('{"a": [1]}', cols["meta"]) == {"a": [1]}
    assert payload_value(None, cols["tag"]) is None
    with pytest.raises(ValueProblem):
        payload_value("Infinity", cols["score"])
    assert pg_value(3, cols["year"], 1) == 3 and pg_value(3.0, cols["year"], 1) == 3
    assert pg_value({"a": 1}, cols["meta"], 1) == '{"a": 1}' and pg_value(5, cols["tag"], 1) == "5"
    with pytest.raises(ValueProblem, match="cannot hold"):
        pg_value("abc", cols["year"], 9)
    assert array_literal(['a"b', None, 1, True]) == '{"a\\"b",NULL,1,t}'


def test_quals_become_a_plan() -> None:
    s = spec()
    q = ["1", "0", "0"]
    plan = plan_scan(
        [Qual("query", "=", q), Qual("tag", "=", "news"), Qual("year", "=", "2020"), Qual("score", "=", 0.5),
         Qual("distance", "<", "0.8"), Qual("distance", "<=", "0.9"), Qual("k", "=", 5)],
        s, 3,
    )  # fmt: skip
    assert plan.mode == "knn" and plan.query.tolist() == [1.0, 0.0, 0.0] and plan.query_echo == "{1,0,0}"
    assert plan.filter == {"tag": "news", "year": 2020} and plan.max_distance == 0.8 and plan.knobs == {"k": 5}
    assert any("score" in left for left in plan.left)
    look = plan_scan([Qual("id", ("=", True), ["3", "1", "3"]), Qual("id", "=", 3)], s, 3)
    assert look.mode == "lookup" and look.ids == [3]
    assert plan_scan([Qual("id", "=", 1), Qual("id", "=", 2)], s, 3).mode == "empty"
    assert plan_scan([Qual("tag", "=", "a"), Qual("tag", "=", "b")], s, 3).mode == "empty"
    assert plan_scan([Qual("kind", "=", "x")], s, 3).filter == {"type": "x"}
    with pytest.raises(ValueProblem, match="needs a query vector"):
        plan_scan([Qual("distance", "<", "1")], s, 3)
    with pytest.raises(ValueProblem, match="per-query setting"):
        plan_scan([Qual("k", ">", 1)], s, 3)
    with pytest.raises(ValueProblem, match="two different query vectors"):
        plan_scan([Qual("query", "=", q), Qual("query", "=", ["0", "1", "0"])], s, 3)


def test_write_buffer_net_effect_and_savepoints() -> None:
    buf = WriteBuffer()
    v = np.zeros(2, dtype=np.float32)
    buf.insert(1, v, {"a": 1})
    buf.update(1, v + 1, None)  # still an insert, with the new values
    buf.delete(2)
    buf.insert(2, v, None)  # delete then insert = replace
    buf.sub_begin(2)
    buf.insert(3, v, None)
    buf.delete(1)
    buf.sub_rollback(2)  # undoes the insert of 3 and the delete of 1
    assert buf.counts() == {"insert": 1, "upsert": 1, "delete": 0}
    with pytest.raises(DuplicateIdError):
        buf.insert(1, v, None)
    buf.delete(5)
    buf.update(5, v, None)  # deleted earlier in the transaction: stays deleted
    batches = list(buf.batches(max_rows=1))
    assert [(b.op, b.ids) for b in batches] == [("insert", [1]), ("upsert", [2]), ("delete", [5])]
    assert batches[0].vectors.tolist() == [[1.0, 1.0]] and batches[0].payloads is None
    buf.clear()
    assert len(buf) == 0 and list(buf.batches(10)) == []
