"""wal/log.py: the last record of the log -- a torn write is truncated, a damaged complete record refuses.

A torn tail is a short write: the last record's header is incomplete or its declared length runs past the
end of the file. A record that is complete (its declared length fits in the file) but fails its checksum
was written in full and damaged afterwards: dropping it would drop an acknowledged write, so the log
refuses to open and names the file and offset.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from drift_engine import Engine
from drift_engine.errors import CorruptionError
from drift_engine.wal.log import HEADER_SIZE, REC_HEADER_SIZE, WriteAheadLog, file_name


def make_log(d: Path, n: int) -> list[tuple[int, int, bytes]]:
    with WriteAheadLog(d) as w:
        for lsn in range(1, n + 1):
            w.append(1, b"body-%d" % lsn * 3)
        w.sync(n)
        return list(w.replay())


def last_record_offset(path: Path) -> int:
    data = path.read_bytes()
    off = prev = HEADER_SIZE
    while off < len(data):
        prev = off
        (length,) = struct.unpack_from("<I", data, off)
        off += REC_HEADER_SIZE + length
    return prev


@pytest.mark.parametrize("where", ["body", "crc", "lsn", "type", "length-shorter"])
def test_checksum_failure_of_a_complete_last_record_refuses(tmp_path: Path, where: str) -> None:
    make_log(tmp_path, 10)
    path = tmp_path / file_name(1)
    off = last_record_offset(path)
    raw = bytearray(path.read_bytes())
    if where == "length-shorter":  # still fits in the file: complete, so its checksum decides
        (length,) = struct.unpack_from("<I", raw, off)
        struct.pack_into("<I", raw, off, length - 1)
    else:
        raw[off + {"body": REC_HEADER_SIZE + 1, "crc": 4, "lsn": 8, "type": 16}[where]] ^= 0x04
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError) as ei:
        WriteAheadLog(tmp_path)
    msg = str(ei.value)
    assert str(path) in msg and f"offset {off}" in msg and "refusing to open" in msg
    assert path.read_bytes() == bytes(raw)  # nothing truncated


@pytest.mark.parametrize("cut", ["header", "body", "length-longer"])
def test_torn_last_record_is_truncated_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: str) -> None:
    records = make_log(tmp_path, 10)
    path = tmp_path / file_name(1)
    off = last_record_offset(path)
    raw = bytearray(path.read_bytes())
    if cut == "header":
        raw = raw[: off + REC_HEADER_SIZE - 3]
    elif cut == "body":
        raw = raw[:-2]
    else:  # the declared length runs past the end of the file
        (length,) = struct.unpack_from("<I", raw, off)
        struct.pack_into("<I", raw, off, length + 1)
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="drift_engine.wal.log"):
        w = WriteAheadLog(tmp_path)
    assert f"truncated torn WAL tail at {path} offset {off}:" in caplog.text
    assert path.stat().st_size == off
    assert list(w.replay()) == records[:-1]
    w.close()


def test_acknowledged_delete_in_a_damaged_last_record_is_not_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with Engine.open(tmp_path / "d") as eng:
        col = eng.create_collection("c", 4)
        col.upsert(np.arange(10), rng.standard_normal((10, 4)))
        col.flush()
        assert col.delete([3]) == 1  # acknowledged: the last WAL record
        col.close(flush=False)
    wal_dir = tmp_path / "d" / "collections" / "c" / "wal"
    path = sorted(wal_dir.iterdir())[-1]
    off = last_record_offset(path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # a flipped bit in the delete's body
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError) as ei:
        Engine.open(tmp_path / "d")
    assert str(path) in str(ei.value) and f"offset {off}" in str(ei.value)
