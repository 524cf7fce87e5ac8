"""Run a benchmark function in a fresh, spawned Python process.

Each system is measured in its own process so that its resident memory is its own (no allocator
reuse from an earlier system), a crash or error in one system does not lose the others, and JIT or
library state never leaks between systems. The child inherits the parent's environment (the
one-thread variables set by ``bench.threads.pin_env``). Errors come back as ``{"error": traceback}``.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any


def _call(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> dict[str, Any]:
    try:
        return fn(*args)
    except Exception:
        return {"error": traceback.format_exc()}


def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a new spawned process; its dict result, or ``{"error": ...}``."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(_call, fn, args).result()
        except BrokenProcessPool as exc:
            return {"error": f"the benchmark process died: {exc!r}"}
