"""Fixtures that run a real ``drift-engine serve`` process (see ``harness``).

- ``server`` (module scope): one shared server on a fresh data directory; tests create uniquely named
  collections in it. ``fresh_server`` (function scope): a private one.
- ``unique_name``: a collection name no other test uses.
Every server started here is stopped at teardown (SIGTERM, then SIGKILL after 30 s).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.integration.harness import ServerProc, start_server

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = start_server(tmp_path_factory.mktemp("srv") / "data")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = start_server(tmp_path_factory.mktemp("srv") / "data")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def unique_name() -> str:
    return f"c{os.getpid()}_{next(_names)}"
