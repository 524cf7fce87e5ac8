"""Every collection handle implements its Protocol (drift_engine/protocol.py) with the same signatures."""

from __future__ import annotations

import inspect

import pytest

from drift_engine.api import Collection
from drift_engine.protocol import AsyncCollectionAPI, CollectionAPI
from drift_engine.server.aclient import AsyncRemoteCollection
from drift_engine.server.client import RemoteCollection

IMPLEMENTATIONS = [
    (Collection, CollectionAPI),
    (RemoteCollection, CollectionAPI),
    (AsyncRemoteCollection, AsyncCollectionAPI),
]


def _members(protocol: type) -> list[str]:
    return [n for n, v in vars(protocol).items() if callable(v) and (not n.startswith("_") or n == "__len__")]


def _kind(fn: object) -> str:
    if inspect.isasyncgenfunction(fn):
        return "async iterator"
    return "coroutine" if inspect.iscoroutinefunction(fn) else "plain"


@pytest.mark.parametrize(("impl", "protocol"), IMPLEMENTATIONS, ids=lambda x: getattr(x, "__name__", ""))
def test_signatures_match_the_protocol(impl: type, protocol: type) -> None:
    problems = []
    for name in _members(protocol):
        want_fn, got_fn = getattr(protocol, name), getattr(impl, name, None)
        if got_fn is None:
            problems.append(f"{name}: missing")
            continue
        want_kind = _kind(want_fn)
        got_kind = _kind(got_fn)
        if want_kind == "coroutine" and got_kind != "coroutine":
            problems.append(f"{name}: is {got_kind}, the protocol has a coroutine")
        if want_kind == "plain" and got_kind == "coroutine":
            problems.append(f"{name}: is a coroutine, the protocol's is not")
        want = inspect.signature(want_fn).parameters
        got = inspect.signature(got_fn).parameters
        has_var_kw = any(p.kind is p.VAR_KEYWORD for p in got.values())
        for pname, p in want.items():
            q = got.get(pname)
            if q is None:
                if not (p.kind is p.KEYWORD_ONLY and has_var_kw):
                    problems.append(f"{name}: no parameter {pname!r}")
                continue
            if q.kind is not p.kind:
                problems.append(f"{name}({pname}): {q.kind.description}, the protocol has {p.kind.description}")
            if p.default is not inspect.Parameter.empty and q.default != p.default:
                problems.append(f"{name}({pname}): default {q.default!r}, the protocol has {p.default!r}")
        for pname, q in got.items():
            if pname not in want and q.kind not in (q.VAR_KEYWORD, q.VAR_POSITIONAL) and q.default is q.empty:
                problems.append(f"{name}: extra required parameter {pname!r}")
    assert not problems, f"{impl.__name__} vs {protocol.__name__}:\n  " + "\n  ".join(problems)
