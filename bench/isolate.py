"""Run a benchmark function in a fresh, spawned Python process, with a time limit.

Each system is measured in its own process so that its resident memory is its own (no allocator
reuse from an earlier system), a crash, hang or error in one system does not lose the others, and
JIT or library state never leaks between systems. The child inherits the parent's environment (the
one-thread variables set by ``bench.threads.pin_env``). Tracebacks are returned with file paths cut to
their last two components, so no absolute path of the machine reaches a results file.

``run_isolated`` returns the function's dict, or ``{"error": ...}`` with the child's traceback, its
exit status, or — after ``timeout_s`` — a note that it was killed (the parent kills that child, and
only that child, by its process handle).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

DEFAULT_TIMEOUT_S = 1800.0


def scrub_paths(text: str) -> str:
    """A traceback with every ``File "/abs/path/x/y.py"`` cut to ``x/y.py`` and the temp, current and home
    folders named ``<tmp>``, ``<cwd>``, ``~`` (no absolute path of the machine in results)."""
    text = re.sub(r'File "([^"]+)"', lambda m: 'File "' + "/".join(m.group(1).split(os.sep)[-2:]) + '"', text)
    for prefix, name in ((tempfile.gettempdir(), "<tmp>"), (os.getcwd(), "<cwd>"), (os.path.expanduser("~"), "~")):
        if len(prefix) > 1:
            text = text.replace(prefix, name)
    return text


def _child(conn: Any, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    try:
        out = fn(*args)
    except BaseException:
        out = {"error": scrub_paths(traceback.format_exc())}
    conn.send(out)
    conn.close()


def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """``fn(*args)`` in a new spawned process; its dict result, or ``{"error": ...}``."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    try:
        if parent.poll(timeout_s):
            try:
                return parent.recv()
            except EOFError:
                pass
        else:
            proc.kill()
            proc.join(10)
            name = getattr(fn, "__name__", str(fn))
            return {"error": f"{name} did not finish within {timeout_s:.0f} s; its process was killed"}
        proc.join(10)
        return {"error": f"the benchmark process died (exit status {proc.exitcode})"}
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
            proc.join(10)
