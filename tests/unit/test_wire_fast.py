"""``wire.fast_search_body`` (the FDW's kNN request, encoded by hand around a cached prefix) parses to the
very message ``fast_search_request`` builds, for every combination of fields, and with the client's token."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from drift_engine.server import drift_pb2 as pb
from drift_engine.server import wire


@pytest.mark.parametrize("dim", [1, 3, 31, 32, 128, 384, 5000])  # the query's length varint: 1, 2 and 3 bytes
def test_hand_encoded_search_parses_equal_to_the_built_message(dim: int) -> None:
    q = np.random.default_rng(dim).standard_normal(dim).astype(np.float32)
    combos = itertools.product(
        ["items", "coll-é", "x" * 200],
        [1, 10, 10_000],
        [None, 1, 300],
        [None, 4],
        [None, 64],
        ["", '{"t":"a"}'],
        [False, True],
    )
    for name, k, nprobe, rerank, ef, flt, pays in combos:
        want = wire.fast_search_request(name, q, k, nprobe, rerank, ef, flt, pays)
        got = pb.FastRequest()
        got.ParseFromString(wire.fast_search_body(name, q, k, nprobe, rerank, ef, flt, pays))
        assert got == want
        assert got.search.HasField("nprobe") == (nprobe is not None)  # optional fields keep their presence
        want.token = "s3cret"
        with_token = pb.FastRequest()
        with_token.ParseFromString(pb.FastRequest(token="s3cret").SerializeToString() + got.SerializeToString())
        assert with_token == want


def test_the_prefix_cache_stays_bounded() -> None:
    q = np.ones(4, dtype=np.float32)
    for k in range(1, 3 * wire._SEARCH_FIXED_MAX):
        wire.fast_search_body("items", q, k, None, None, None, "", False)
    assert len(wire._SEARCH_FIXED) <= wire._SEARCH_FIXED_MAX
