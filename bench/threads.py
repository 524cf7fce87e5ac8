"""One-thread setup for every benchmark (imports nothing heavy, so it can run first).

``pin_env()`` must run before numpy, numba or faiss is imported: their thread pools read these
variables once, at import. ``pin_runtime()`` then also tells already-imported libraries (faiss's
OpenMP pool, numba's pool) to use one thread, and reports what it found. Child processes started
afterwards inherit the environment, so they are pinned too.
"""

from __future__ import annotations

import os
import sys
from typing import Any

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_HEAVY = ("numpy", "numba", "faiss")


def pin_env() -> list[str]:
    """Set every thread-count variable to 1; return the heavy modules that were already imported
    (their pools may already be sized: the caller should warn)."""
    for var in THREAD_VARS:
        os.environ[var] = "1"
    return [m for m in _HEAVY if m in sys.modules]


def pin_runtime() -> dict[str, Any]:
    """Pin faiss and numba to one thread at run time too; return the thread counts now in effect."""
    pin_env()
    info: dict[str, Any] = {var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    try:
        import faiss

        faiss.omp_set_num_threads(1)
        info["faiss_omp_threads"] = int(faiss.omp_get_max_threads())
    except ImportError:
        info["faiss_omp_threads"] = None
    try:
        import numba

        numba.set_num_threads(1)
        info["numba_threads"] = int(numba.get_num_threads())
    except ImportError:
        info["numba_threads"] = None
    return info
