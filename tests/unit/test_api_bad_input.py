"""Bad input raises a DriftError subclass that says what and why, and changes nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.errors import (
    CollectionNotFoundError,
    DimensionMismatchError,
    DriftError,
    InvalidArgumentError,
    InvalidFilterError,
    InvalidParameterError,
    InvalidPayloadError,
    InvalidVectorError,
)


@pytest.fixture
def setup(tmp_path):
    eng = Engine.open(tmp_path / "data")
    col = eng.create_collection("c", 4)
    rng = np.random.default_rng(1)
    col.upsert(np.arange(200), rng.standard_normal((200, 4)), payloads=[{"t": i % 2} for i in range(200)])
    col.train(n_buckets=4)
    yield eng, col, tmp_path / "data"
    eng.close()


def fingerprint(col, root) -> tuple:
    q = np.ones(4, dtype=np.float32)
    files = sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs if "lmdb" not in d
    )
    res = col.search(q, k=5)
    return len(col), res.ids.tolist(), files, col.params(), col.snapshot.version


BAD_WRITES = [
    ("wrong dim", lambda c: c.upsert([1000], [[1.0, 2.0, 3.0]]), DimensionMismatchError, "dimension 3"),
    ("nan", lambda c: c.upsert([1000, 1001], [[1, 2, 3, 4], [1, np.nan, 3, 4]]), InvalidVectorError, "row 1"),
    ("inf", lambda c: c.upsert([1000], [[1, 2, np.inf, 4]]), InvalidVectorError, "NaN or Inf"),
    ("empty", lambda c: c.upsert([1000], [[]]), InvalidVectorError, "empty"),
    ("count mismatch", lambda c: c.upsert([1, 2], [[1, 2, 3, 4]]), InvalidArgumentError, "2 ids but 1"),
    ("dup ids", lambda c: c.upsert([9, 9], np.ones((2, 4))), InvalidArgumentError, "id 9 appears more"),
    ("float id", lambda c: c.upsert([1.5], np.ones((1, 4))), InvalidArgumentError, "integers"),
    ("id overflow", lambda c: c.upsert([2**63], np.ones((1, 4))), InvalidArgumentError, "int64"),
    (
        "payload not dict",
        lambda c: c.upsert([1000], np.ones((1, 4)), payloads=["x"]),
        InvalidPayloadError,
        "JSON",
    ),
    (
        "payload nan",
        lambda c: c.upsert([1000], np.ones((1, 4)), payloads=[{"a": float("nan")}]),
        InvalidPayloadError,
        "row 0",
    ),
    (
        "payload count",
        lambda c: c.upsert([1000], np.ones((1, 4)), payloads=[{}, {}]),
        InvalidPayloadError,
        "1 vectors but 2",
    ),
    ("string vector", lambda c: c.upsert([1000], [["a", "b", "c", "d"]]), InvalidVectorError, "numeric"),
]


@pytest.mark.parametrize("name,call,exc,msg", BAD_WRITES, ids=[b[0] for b in BAD_WRITES])
def test_bad_writes_change_nothing(setup, name, call, exc, msg):
    _, col, root = setup
    before = fingerprint(col, root)
    with pytest.raises(exc, match=msg) as info:
        call(col)
    assert isinstance(info.value, DriftError)
    assert fingerprint(col, root) == before


BAD_READS = [
    ("query dim", lambda c: c.search([1.0, 2.0]), DimensionMismatchError, "does not match"),
    ("query nan", lambda c: c.search([1.0, np.nan, 0, 0]), InvalidVectorError, "NaN"),
    ("k zero", lambda c: c.search(np.ones(4), k=0), InvalidArgumentError, "k=0"),
    ("k huge", lambda c: c.search(np.ones(4), k=10**9), InvalidArgumentError, "out of range"),
    ("k float", lambda c: c.search(np.ones(4), k=2.5), InvalidArgumentError, "integer"),
    ("nprobe", lambda c: c.search(np.ones(4), nprobe=0), InvalidArgumentError, "nprobe"),
    ("rerank", lambda c: c.search(np.ones(4), rerank=-1), InvalidArgumentError, "rerank"),
    ("filter type", lambda c: c.search(np.ones(4), filter=["t"]), InvalidFilterError, "dict"),
    ("filter nested", lambda c: c.search(np.ones(4), filter={"t": [1]}), InvalidFilterError, "scalar"),
    ("batch dim", lambda c: c.search_batch(np.ones((3, 5))), DimensionMismatchError, "5"),
]


@pytest.mark.parametrize("name,call,exc,msg", BAD_READS, ids=[b[0] for b in BAD_READS])
def test_bad_reads(setup, name, call, exc, msg):
    _, col, root = setup
    before = fingerprint(col, root)
    with pytest.raises(exc, match=msg):
        call(col)
    assert fingerprint(col, root) == before


def test_bad_params_and_collections(setup):
    eng, col, root = setup
    before = fingerprint(col, root)
    with pytest.raises(InvalidParameterError, match="unknown parameter 'bogus'"):
        col.set_params(bogus=1)
    with pytest.raises(InvalidParameterError, match="'nprobe'=-1 is out of range"):
        col.set_params(nprobe=-1, rerank=3)
    with pytest.raises(InvalidParameterError, match="must not be NaN"):
        col.set_params(lam=float("nan"))
    with pytest.raises(InvalidParameterError, match="boolean"):
        col.set_params(nprobe=True)
    assert fingerprint(col, root) == before
    assert col.params()["rerank"] != 3
    with pytest.raises(InvalidParameterError, match="unknown metric 'hamming'"):
        eng.create_collection("x", 4, metric="hamming")
    with pytest.raises(InvalidParameterError, match="dimension 0 is out of range"):
        eng.create_collection("x", 0)
    with pytest.raises(InvalidParameterError, match="out of range"):
        eng.create_collection("x", 16_001)
    with pytest.raises(InvalidParameterError, match="invalid collection name"):
        eng.create_collection("../evil", 4)
    with pytest.raises(InvalidParameterError, match="unknown parameter"):
        eng.create_collection("x", 4, nprobes=3)
    assert eng.list_collections() == ["c"]
    with pytest.raises(CollectionNotFoundError, match="'nope'"):
        eng.collection("nope")
    with pytest.raises(CollectionNotFoundError):
        eng.drop_collection("nope")
    with pytest.raises(InvalidParameterError, match="unknown engine setting"):
        Engine.open(root.parent / "other", cache_size=1)


def test_train_bad_input(setup, tmp_path):
    eng, col, root = setup
    before = fingerprint(col, root)
    with pytest.raises(InvalidArgumentError, match="more than the 200 vectors"):
        col.train(n_buckets=201)
    with pytest.raises(InvalidArgumentError, match="n_buckets=0"):
        col.train(n_buckets=0)
    assert fingerprint(col, root) == before
    empty = eng.create_collection("empty", 4)
    with pytest.raises(InvalidArgumentError, match="holds no vectors"):
        empty.train()


def test_cosine_zero_vector_refused(setup):
    eng, _, _ = setup
    col = eng.create_collection("cos", 3, metric="cosine")
    with pytest.raises(InvalidVectorError, match="zero vector"):
        col.upsert([1], [[0, 0, 0]])
    assert len(col) == 0
