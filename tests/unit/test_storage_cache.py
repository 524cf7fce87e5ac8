"""cache.py: S3-FIFO byte bound, counters, scan resistance (vs LRU), loading, threads."""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict

import pytest

from drift_engine.errors import InvalidArgumentError
from drift_engine.storage.cache import S3FIFOCache
from tests.unit.threadcheck import ThreadGroup


def _resident_bytes(cache: S3FIFOCache) -> int:
    return sum(e.nbytes for e in cache._small.values()) + sum(e.nbytes for e in cache._main.values())


class _LRU:
    """The baseline: a byte-bounded LRU."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self.data: OrderedDict[object, tuple[object, int]] = OrderedDict()

    def get(self, key):
        if key not in self.data:
            return None
        self.data.move_to_end(key)
        return self.data[key][0]

    def put(self, key, value, nbytes: int) -> None:
        if key in self.data:
            self.size -= self.data.pop(key)[1]
        self.data[key] = (value, nbytes)
        self.size += nbytes
        while self.size > self.capacity:
            _, (_, n) = self.data.popitem(last=False)
            self.size -= n


def test_hits_misses_and_basic_ops() -> None:
    c = S3FIFOCache(1000)
    assert c.get("a") is None
    c.put("a", "A", 100)
    assert c.get("a") == "A" and c.get("a") == "A"
    assert "a" in c and "b" not in c and len(c) == 1
    assert (c.hits, c.misses, c.size_bytes) == (2, 1, 100)
    c.put("a", "A2", 300)  # replace: size follows the new value
    assert c.get("a") == "A2" and c.size_bytes == 300
    c.invalidate("a")
    c.invalidate("never-there")
    assert c.get("a") is None and c.size_bytes == 0 and len(c) == 0
    c.put("x", 1, 10)
    c.put("y", 2, 20)
    c.clear()
    assert len(c) == 0 and c.size_bytes == 0
    assert c.stats() == {
        "hits": 3,
        "misses": 2,
        "evictions": 0,
        "size_bytes": 0,
        "capacity_bytes": 1000,
        "entries": 0,
    }


def test_value_larger_than_capacity_is_not_cached() -> None:
    c = S3FIFOCache(1000)
    c.put("small", 1, 10)
    c.put("huge", 2, 1001)
    assert "huge" not in c and c.size_bytes == 10
    c.put("small", 3, 5000)  # replacing with an oversized value drops the stale one
    assert "small" not in c and c.size_bytes == 0
    c.put("exact", 4, 1000)
    assert "exact" in c and c.size_bytes == 1000


def test_bad_arguments() -> None:
    with pytest.raises(InvalidArgumentError):
        S3FIFOCache(-1)
    with pytest.raises(InvalidArgumentError):
        S3FIFOCache(100, small_ratio=1.0)
    with pytest.raises(InvalidArgumentError):
        S3FIFOCache(100).put("k", 1, -5)
    zero = S3FIFOCache(0)
    zero.put("k", 1, 1)
    assert len(zero) == 0


def test_byte_bound_is_never_exceeded() -> None:
    rng = random.Random(5)
    c = S3FIFOCache(10_000)
    for _ in range(20_000):
        key = rng.randrange(400)
        op = rng.random()
        if op < 0.5:
            c.put(key, key, rng.choice([1, 10, 100, 700, 3000, 12_000]))
        elif op < 0.95:
            c.get(key)
        else:
            c.invalidate(key)
        assert c.size_bytes <= c.capacity_bytes
        assert c.size_bytes == _resident_bytes(c)
    assert c.evictions > 0 and c.hits > 0 and c.misses > 0
    assert c._ghost_bytes <= c.capacity_bytes  # the ghost queue is bounded too


def test_admission_small_then_ghost_then_main() -> None:
    c = S3FIFOCache(1000)  # small queue: 100 bytes
    c.put("once", 1, 60)
    assert "once" in c._small
    for i in range(20):  # push "once" out of the small queue without hitting it
        c.put(f"cold{i}", i, 60)
    assert "once" not in c and "once" in c._ghost
    c.put("once", 1, 60)  # remembered by the ghost queue: straight into main
    assert "once" in c._main and "once" not in c._ghost


def test_hit_in_small_promotes_to_main_and_main_reinserts_hit_entries() -> None:
    c = S3FIFOCache(1000)
    c.put("hot", "H", 60)
    assert c.get("hot") == "H"  # freq 1 while in the small queue
    for i in range(200):  # cold one-hit keys churn through the small queue
        c.put(f"cold{i}", i, 60)
    assert "hot" in c._main and c.get("hot") == "H"
    # Put main under pressure with entries that are each hit once (so they are promoted too): the
    # oldest main entry "hot" is kept by reinsertion because it keeps being hit; the others go.
    for i in range(300):
        c.put(f"warm{i}", i, 60)
        c.get(f"warm{i}")
        if i % 5 == 0:
            c.get("hot")
    assert "hot" in c._main
    assert "warm0" not in c and "warm1" not in c
    assert c.size_bytes <= c.capacity_bytes


def test_hot_set_survives_a_scan_that_flushes_lru() -> None:
    entry, capacity = 1000, 100_000  # room for 100 entries
    hot = [f"hot{i}" for i in range(50)]
    s3 = S3FIFOCache(capacity)
    lru = _LRU(capacity)

    def access(cache, key) -> bool:
        if cache.get(key) is not None:
            return True
        cache.put(key, key.upper(), entry)
        return False

    for _ in range(5):  # warm-up: the hot set is used repeatedly
        for k in hot:
            access(s3, k)
            access(lru, k)
    for i in range(5000):  # a long one-pass scan of cold keys, 50x the capacity
        access(s3, f"cold{i}")
        access(lru, f"cold{i}")
    s3_hits = sum(access(s3, k) for k in hot)
    lru_hits = sum(access(lru, k) for k in hot)
    assert s3_hits / len(hot) >= 0.9
    assert lru_hits == 0
    assert s3.size_bytes <= capacity


def test_get_or_load_loads_once_and_caches() -> None:
    c = S3FIFOCache(1000)
    calls = []

    def loader():
        calls.append(1)
        return "value", 10

    assert c.get_or_load("k", loader) == "value"
    assert c.get_or_load("k", loader) == "value"
    assert len(calls) == 1 and (c.hits, c.misses) == (1, 1)
    assert c.get_or_load("big", lambda: ("B", 10_000)) == "B"  # returned even if too big to cache
    assert "big" not in c

    def failing():
        raise OSError("disk says no")

    with pytest.raises(OSError, match="disk says no"):
        c.get_or_load("bad", failing)
    assert "bad" not in c and c.get_or_load("bad", loader) == "value"


def test_get_or_load_single_flight_across_threads() -> None:
    c = S3FIFOCache(10_000)
    calls = []
    gate = threading.Event()

    def slow_loader():
        calls.append(threading.get_ident())
        gate.wait(5)
        return "v", 100

    results: list[object] = []

    def load() -> None:
        results.append(c.get_or_load("k", slow_loader))

    group = ThreadGroup()
    for _ in range(8):
        group.start(load)
    time.sleep(0.05)
    gate.set()
    group.join()  # all eight ended and none raised
    assert results == ["v"] * 8 and len(calls) == 1


def test_invalidate_during_load_does_not_cache_stale_value() -> None:
    c = S3FIFOCache(10_000)
    started, release = threading.Event(), threading.Event()

    def loader():
        started.set()
        release.wait(5)
        return "stale", 10

    out: list[object] = []

    def load() -> None:
        out.append(c.get_or_load("k", loader))

    group = ThreadGroup()
    group.start(load)
    assert started.wait(5), "the loader never started"
    c.invalidate("k")
    release.set()
    group.join()  # the loading thread ended and raised nothing
    assert out == ["stale"] and "k" not in c


def test_concurrent_get_put_keeps_the_bound() -> None:
    c = S3FIFOCache(50_000)
    stop = threading.Event()
    violations: list[dict] = []
    ops: list[int] = []
    checks: list[int] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        for _ in range(5000):
            k = rng.randrange(2000)
            if rng.random() < 0.5:
                c.put(k, k, rng.randrange(1, 3000))
            elif rng.random() < 0.9:
                v = c.get(k)
                assert v is None or v == k
            else:
                c.get_or_load(k, lambda k=k: (k, 500))
            n += 1
        ops.append(n)

    def checker() -> None:
        n = 0
        while True:  # at least one check, however quickly the workers finish
            s = c.stats()
            if s["size_bytes"] > s["capacity_bytes"]:
                violations.append(s)
            n += 1
            if stop.is_set():
                break
        checks.append(n)

    checking = ThreadGroup()
    checking.start(checker)
    working = ThreadGroup()
    try:
        for i in range(6):
            working.start(worker, i)
        working.join()  # every worker ended, none raised (a wrong value is re-raised here)
    finally:
        stop.set()
        checking.join()  # the checker ended and raised nothing
    assert ops == [5000] * 6 and len(checks) == 1 and checks[0] >= 1
    assert violations == []
    assert c.size_bytes == _resident_bytes(c) <= c.capacity_bytes
    assert c.hits + c.misses > 0 and c.evictions > 0
