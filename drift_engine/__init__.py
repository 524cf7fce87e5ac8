"""drift: a drift-aware vector engine that PostgreSQL queries through a foreign data wrapper.

The package is importable without PostgreSQL. Public API: ``Engine`` and ``Collection`` (from
``drift_engine.api``), the ``DriftError`` hierarchy (``drift_engine.errors``) and the result types.
Heavy modules (numba kernels, LMDB) load on first use of ``Engine`` so that a thin client (inside a
PostgreSQL backend) can import ``drift_engine.errors`` or ``drift_engine.server.client`` cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drift_engine import errors
from drift_engine.errors import DriftError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from drift_engine.api import Collection, Engine

_LAZY = {"Engine": "drift_engine.api", "Collection": "drift_engine.api"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'drift_engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["Collection", "DriftError", "Engine", "errors"]
