"""Bounded top-k selection for the numba scan kernels: a max-heap on (distance, row) pairs.

Contract: ``heap_offer`` keeps the ``r`` smallest pairs in lexicographic (distance, row) order, so among
equal distances the lower row wins whatever order rows arrive in; ``heap_sort`` turns the heap into that
ascending order in place.  Both are ``@njit(nogil=True)`` and called from other kernels.  ``TopK`` wraps
one heap's arrays for accumulating across several kernel calls (``adc.scan_into``); it is mutable and not
thread-safe (one per query).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from drift_engine.errors import InvalidArgumentError

__all__ = ["TopK", "heap_offer", "heap_sort"]


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _gt(d1, r1, d2, r2):
    return d1 > d2 or (d1 == d2 and r1 > r2)


@njit(nogil=True, fastmath=True, cache=True)
def heap_offer(hd, hr, size, r, val, row):
    """Offer (val, row) to a max-heap of capacity r holding ``size`` items; returns the new size."""
    if size < r:
        i = size
        while i > 0:
            p = (i - 1) >> 1
            if _gt(hd[p], hr[p], val, row):
                break
            # the parent is below the new item in max-heap order: move it down
            hd[i] = hd[p]
            hr[i] = hr[p]
            i = p
        hd[i] = val
        hr[i] = row
        return size + 1
    if r == 0 or not _gt(hd[0], hr[0], val, row):
        return size
    i = 0
    while True:
        c = 2 * i + 1
        if c >= r:
            break
        if c + 1 < r and _gt(hd[c + 1], hr[c + 1], hd[c], hr[c]):
            c += 1
        if not _gt(hd[c], hr[c], val, row):
            break
        hd[i] = hd[c]
        hr[i] = hr[c]
        i = c
    hd[i] = val
    hr[i] = row
    return size


@njit(nogil=True, fastmath=True, cache=True)
def heap_sort(hd, hr, size):
    """Sort a max-heap of ``size`` items in place into ascending (dist, row) order."""
    for end in range(size - 1, 0, -1):
        vd = hd[end]
        vr = hr[end]
        hd[end] = hd[0]
        hr[end] = hr[0]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= end:
                break
            if c + 1 < end and _gt(hd[c + 1], hr[c + 1], hd[c], hr[c]):
                c += 1
            if not _gt(hd[c], hr[c], vd, vr):
                break
            hd[i] = hd[c]
            hr[i] = hr[c]
            i = c
        hd[i] = vd
        hr[i] = vr


class TopK:
    """A bounded max-heap of the ``r`` best (distance, row) pairs seen so far, for ``scan_into``."""

    __slots__ = ("dist", "r", "rows", "size")

    def __init__(self, r: int) -> None:
        if r < 0:
            raise InvalidArgumentError(f"r must be >= 0, got {r}")
        self.r = int(r)
        self.dist = np.full(self.r, np.inf, dtype=np.float32)
        self.rows = np.full(self.r, -1, dtype=np.int64)
        self.size = np.zeros(1, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.size[0])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(distances float32, stored rows int64), sorted ascending, ties to the lower row; heap unchanged."""
        n = int(self.size[0])
        d = self.dist[:n].copy()
        rows = self.rows[:n].copy()
        heap_sort(d, rows, n)
        return d, rows
