"""kv.py: LMDB wrapper batches, atomicity, map growth, ordering of int64 keys, persistence."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from drift_engine.errors import EngineClosedError, InvalidArgumentError
from drift_engine.storage.kv import KV, decode_i64, encode_i64
from tests.unit.threadcheck import ThreadGroup


@pytest.fixture
def kv(tmp_path: Path):
    store = KV(tmp_path / "meta.lmdb")
    yield store
    store.close()


def test_put_get_delete_iterate(kv: KV) -> None:
    assert kv.get("ids", b"a") is None and kv.count("ids") == 0 and list(kv.iterate("ids")) == []
    with kv.write() as b:
        for k in (b"a1", b"a2", b"a3", b"b1", b"ab"):
            b.put("ids", k, k.upper())
        b.put("payloads", b"a1", b"{}")
    assert kv.get("ids", b"a2") == b"A2" and kv.get("payloads", b"a1") == b"{}"
    assert kv.get("ids", b"zz") is None and kv.get("payloads", b"a2") is None
    assert kv.get_many("ids", [b"a1", b"nope", b"b1"]) == [b"A1", None, b"B1"]
    assert kv.get_many("nodb", [b"a1"]) == [None]
    assert kv.count("ids") == 5 and kv.count("payloads") == 1
    assert list(kv.iterate("ids", b"a")) == [(b"a1", b"A1"), (b"a2", b"A2"), (b"a3", b"A3"), (b"ab", b"AB")]
    assert [k for k, _ in kv.iterate("ids")] == [b"a1", b"a2", b"a3", b"ab", b"b1"]
    assert list(kv.iterate("ids", b"c")) == [] and list(kv.iterate("ids", b"a4")) == []
    with kv.write() as b:
        b.delete("ids", b"a2")
        b.delete("ids", b"missing")  # deleting an absent key is fine
        b.put("ids", b"a1", b"new")
    assert kv.get("ids", b"a2") is None and kv.get("ids", b"a1") == b"new" and kv.count("ids") == 4
    key, value = next(iter(kv.iterate("ids")))
    assert type(key) is bytes and type(value) is bytes


def test_ops_apply_in_order_and_drop(kv: KV) -> None:
    with kv.write() as b:
        b.put("d", b"k", b"1")
        b.delete("d", b"k")
        b.put("d", b"j", b"1")
        b.put("d", b"j", b"2")
        b.put("e", b"x", b"y")
        assert len(b) == 5
    assert kv.get("d", b"k") is None and kv.get("d", b"j") == b"2"
    with kv.write() as b:
        b.drop("d")
        b.put("d", b"after", b"1")
    assert list(kv.iterate("d")) == [(b"after", b"1")] and kv.get("e", b"x") == b"y"


def test_exception_inside_with_applies_nothing(kv: KV) -> None:
    with kv.write() as b:
        b.put("ids", b"keep", b"1")
    with pytest.raises(RuntimeError, match="boom"), kv.write() as b:
        b.put("ids", b"new", b"2")
        b.delete("ids", b"keep")
        b.put("fresh_db", b"k", b"v")
        raise RuntimeError("boom")
    assert kv.get("ids", b"keep") == b"1" and kv.get("ids", b"new") is None
    assert kv.count("fresh_db") == 0
    with pytest.raises(InvalidArgumentError, match="after its `with` block"):
        b.put("ids", b"late", b"3")


def test_bad_keys_are_refused_before_anything_is_written(kv: KV) -> None:
    with pytest.raises(InvalidArgumentError, match=r"key must be 1\.\.511 bytes"), kv.write() as b:
        b.put("ids", b"ok", b"1")
        b.put("ids", b"", b"1")
    with pytest.raises(InvalidArgumentError, match=r"key must be 1\.\.511 bytes, got 512"), kv.write() as b:
        b.put("ids", b"x" * 512, b"1")
    with pytest.raises(InvalidArgumentError, match="must be bytes"), kv.write() as b:
        b.put("ids", "str-key", b"1")
    with pytest.raises(InvalidArgumentError, match="sub-database name"), kv.write() as b:
        b.put("", b"k", b"1")
    assert kv.get("ids", b"ok") is None
    with kv.write() as b:
        b.put("ids", bytearray(b"ba"), memoryview(b"mv"))
    assert kv.get("ids", b"ba") == b"mv"


def test_map_full_grows_and_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "grow.lmdb"
    kv = KV(path, map_size=64 << 10)
    start = kv._env.info()["map_size"]
    blob = bytes(range(256)) * 16  # 4 KiB values
    with kv.write() as b:  # one batch far bigger than the map
        for i in range(300):
            b.put("big", encode_i64(i), blob)
    for i in range(300, 400):  # and many small batches
        with kv.write() as b:
            b.put("big", encode_i64(i), blob[: i % 4096 + 1])
    grown = kv._env.info()["map_size"]
    assert grown >= start * 8
    kv.close()
    kv = KV(path, map_size=64 << 10)  # reopen with the tiny size again
    assert kv.count("big") == 400
    assert kv.get("big", encode_i64(0)) == blob and kv.get("big", encode_i64(399)) == blob[: 399 % 4096 + 1]
    assert [decode_i64(k) for k, _ in kv.iterate("big")] == list(range(400))
    with kv.write() as b:  # writing still works (grows again from the reopened size as needed)
        b.put("big", encode_i64(400), blob * 50)
    assert len(kv.get("big", encode_i64(400))) == len(blob) * 50
    kv.close()


def test_readers_in_other_threads_during_map_growth(tmp_path: Path) -> None:
    kv = KV(tmp_path / "rw.lmdb", map_size=64 << 10)
    with kv.write() as b:
        b.put("t", b"anchor", b"A" * 100)
    stop = threading.Event()
    reads: list[int] = []

    def reader() -> None:
        n = 0
        while True:  # at least one read, however quickly the writer finishes
            assert kv.get("t", b"anchor") == b"A" * 100
            for _ in kv.iterate("t", b"anch"):
                pass
            n += 1
            if stop.is_set():
                break
        reads.append(n)

    group = ThreadGroup()
    for _ in range(3):
        group.start(reader)
    try:
        for i in range(40):
            with kv.write() as b:
                b.put("t", encode_i64(i), b"x" * 20_000)
    finally:
        stop.set()
        group.join()  # every reader ended, none raised (a wrong read is re-raised here)
    assert len(reads) == 3 and min(reads) >= 1
    assert kv.count("t") == 41
    assert kv._env.info()["map_size"] > 64 << 10
    kv.close()


def test_growing_while_this_thread_iterates_is_refused_not_deadlocked(tmp_path: Path) -> None:
    kv = KV(tmp_path / "it.lmdb", map_size=64 << 10)
    with kv.write() as b:
        b.put("t", b"a", b"1")
        b.put("t", b"b", b"2")
    it = kv.iterate("t")
    assert next(it) == (b"a", b"1")
    with kv.write() as b:  # a small write while iterating is fine
        b.put("t", b"c", b"3")
    with pytest.raises(InvalidArgumentError, match="open iterate"), kv.write() as b:
        b.put("t", b"big", b"z" * (1 << 20))
    assert next(it) == (b"b", b"2")  # the snapshot is intact and does not see "c"
    assert list(it) == []
    with kv.write() as b:  # once the iterator is done the same write succeeds
        b.put("t", b"big", b"z" * (1 << 20))
    assert kv.count("t") == 4
    kv.close()


def test_reopen_persistence_and_readonly(tmp_path: Path) -> None:
    path = tmp_path / "p.lmdb"
    with KV(path) as kv, kv.write() as b:
        b.put("config", b"dim", b"128")
        b.put("ids", encode_i64(-7), b"loc")
    assert (path / "data.mdb").exists()
    ro = KV(path, readonly=True)
    assert ro.get("config", b"dim") == b"128" and ro.get("ids", encode_i64(-7)) == b"loc"
    assert ro.get("absent", b"x") is None and ro.count("absent") == 0
    with pytest.raises(InvalidArgumentError, match="read-only"), ro.write():
        pass
    ro.close()
    with KV(path) as kv:
        assert kv.get("config", b"dim") == b"128" and list(kv.iterate("ids")) == [(encode_i64(-7), b"loc")]


def test_closed_store_is_refused(tmp_path: Path) -> None:
    kv = KV(tmp_path / "c.lmdb")
    kv.close()
    kv.close()
    assert kv.closed
    with pytest.raises(EngineClosedError, match="closed"):
        kv.get("ids", b"k")
    with pytest.raises(EngineClosedError), kv.write():
        pass


def test_encode_i64_order_and_round_trip() -> None:
    lo, hi = -(2**63), 2**63 - 1
    rng = random.Random(11)
    values = [lo, lo + 1, -(2**32), -256, -255, -2, -1, 0, 1, 2, 255, 256, 2**32, hi - 1, hi]
    values += [rng.randint(lo, hi) for _ in range(2000)]
    encoded = [encode_i64(v) for v in values]
    assert all(len(e) == 8 for e in encoded)
    assert [decode_i64(e) for e in encoded] == values
    assert sorted(values) == [decode_i64(e) for e in sorted(encoded)]
    assert encode_i64(lo) == b"\x00" * 8 and encode_i64(hi) == b"\xff" * 8
    assert encode_i64(-1) < encode_i64(0) < encode_i64(1)
    for bad in (hi + 1, lo - 1):
        with pytest.raises(InvalidArgumentError, match="int64"):
            encode_i64(bad)
    with pytest.raises(InvalidArgumentError, match="8 bytes"):
        decode_i64(b"\x00" * 7)
