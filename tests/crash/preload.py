"""Preloaded by the crash matrix's fork server: the engine, its numba kernels and the harness, so children start fast.

Importing this module must not start threads (the fork server forks from it).
"""

from __future__ import annotations

import drift_engine.api  # noqa: F401  (the import is the point)
import tests.crash.harness  # noqa: F401
from drift_engine.index import adc

adc.warmup()
