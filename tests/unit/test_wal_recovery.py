"""wal/log.py recovery at open: torn tails are truncated, corruption in the middle refuses to open."""

from __future__ import annotations

import logging
import os
import shutil
import struct
from pathlib import Path

import pytest

from drift_engine.errors import CorruptionError
from drift_engine.storage.pages import crc32c
from drift_engine.wal.log import HEADER_SIZE, REC_HEADER_SIZE, WriteAheadLog, file_name


def body_for(lsn: int) -> bytes:
    return (b"rec%d-" % lsn) * (lsn % 5 + 1)


def make_log(d: Path, n: int, **kw: int) -> list[tuple[int, int, bytes]]:
    with WriteAheadLog(d, **kw) as w:
        for lsn in range(1, n + 1):
            assert w.append(lsn % 4, body_for(lsn)) == lsn
        w.sync(n)
        return list(w.replay())


def record_offsets(path: Path) -> list[int]:
    """Start offset of every record in a valid file, plus the end offset."""
    data = path.read_bytes()
    offs = [HEADER_SIZE]
    while offs[-1] < len(data):
        (length,) = struct.unpack_from("<I", data, offs[-1])
        offs.append(offs[-1] + REC_HEADER_SIZE + length)
    assert offs[-1] == len(data)
    return offs


def frame(path: Path, lsn: int, rtype: int, body: bytes) -> bytes:
    """A record with a valid CRC for the file at ``path`` (uses that file's salt)."""
    (salt,) = struct.unpack_from("<I", path.read_bytes(), 10)
    crc = crc32c(body, crc32c(struct.pack("<IIQB", salt, len(body), lsn, rtype)))
    return struct.pack("<IIQB", len(body), crc, lsn, rtype) + body


def check_reopen_and_append(d: Path, expected: list[tuple[int, int, bytes]]) -> None:
    """Open: exactly ``expected`` replays; two new appends continue the lsns and survive a reopen."""
    with WriteAheadLog(d) as w:
        assert list(w.replay()) == expected
        base = len(expected)
        assert w.last_lsn == base
        assert w.append_sync(7, b"new-1") == base + 1
        assert w.append(7, b"new-2") == base + 2
    with WriteAheadLog(d) as w:
        assert list(w.replay()) == [*expected, (base + 1, 7, b"new-1"), (base + 2, 7, b"new-2")]


def test_cut_at_every_byte_of_the_last_three_records(tmp_path: Path) -> None:
    src = tmp_path / "src"
    records = make_log(src, 12)
    path = src / file_name(1)
    offs = record_offsets(path)
    data = path.read_bytes()
    first_cut = offs[-4]  # start of the third-to-last record
    assert len(data) - first_cut > 3 * REC_HEADER_SIZE
    for cut in range(first_cut, len(data) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / file_name(1)).write_bytes(data[:cut])
        complete = sum(1 for end in offs[1:] if end <= cut)
        check_reopen_and_append(d, records[:complete])
        shutil.rmtree(d)


def test_cut_inside_the_header_of_the_last_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    records = make_log(src, 40, max_file_bytes=300)
    names = sorted(os.listdir(src))
    assert len(names) >= 3
    last_first = int(names[-1][:16])
    kept = records[: last_first - 1]
    for cut in [*range(HEADER_SIZE), "zeros"]:
        d = tmp_path / f"h{cut}"
        shutil.copytree(src, d)
        raw = (d / names[-1]).read_bytes()
        (d / names[-1]).write_bytes(bytes(HEADER_SIZE + 40) if cut == "zeros" else raw[: int(cut)])
        with caplog.at_level(logging.WARNING, logger="drift_engine.wal.log"):
            check_reopen_and_append(d, kept)
        assert "torn WAL file header" in caplog.text
        caplog.clear()
        shutil.rmtree(d)


@pytest.mark.parametrize("tail", ["zeros", "random", "zeros-big"])
def test_garbage_tail_is_truncated(tmp_path: Path, caplog: pytest.LogCaptureFixture, tail: str) -> None:
    records = make_log(tmp_path, 20)
    path = tmp_path / file_name(1)
    size = path.stat().st_size
    junk = {"zeros": bytes(300), "random": os.urandom(3000), "zeros-big": bytes(1 << 20)}[tail]
    with open(path, "ab") as f:
        f.write(junk)
    with caplog.at_level(logging.WARNING, logger="drift_engine.wal.log"):
        w = WriteAheadLog(tmp_path)
    assert f"truncated torn WAL tail at {path} offset {size}:" in caplog.text
    assert path.stat().st_size == size
    assert list(w.replay()) == records
    w.close()
    check_reopen_and_append(tmp_path, records)


def _refuses_unchanged(d: Path, path: Path, offset: int, **kw: int) -> CorruptionError:
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(CorruptionError) as ei:
        WriteAheadLog(d, **kw)
    msg = str(ei.value)
    assert str(path) in msg and f"offset {offset}" in msg and "refusing to open" in msg
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # nothing modified
    return ei.value


@pytest.mark.parametrize("where", ["body", "length", "lsn", "crc", "type"])
def test_corrupt_record_in_the_middle_refuses(tmp_path: Path, where: str) -> None:
    make_log(tmp_path, 30)
    path = tmp_path / file_name(1)
    offs = record_offsets(path)
    off = offs[3]  # the fourth record; 26 valid records follow it
    rel = {"body": REC_HEADER_SIZE + 2, "length": 1, "lsn": 8, "crc": 5, "type": 16}
    raw = bytearray(path.read_bytes())
    raw[off + rel[where]] ^= 0x10
    path.write_bytes(bytes(raw))
    err = _refuses_unchanged(tmp_path, path, off)
    assert "corrupt WAL record" in str(err)


def test_corruption_in_a_non_last_file_refuses_even_at_its_end(tmp_path: Path) -> None:
    make_log(tmp_path, 40, max_file_bytes=300)
    second = tmp_path / sorted(os.listdir(tmp_path))[1]
    offs = record_offsets(second)
    raw = bytearray(second.read_bytes())
    raw[-1] ^= 0xFF  # the last record of a non-last file
    second.write_bytes(bytes(raw))
    _refuses_unchanged(tmp_path, second, offs[-2])
    second.write_bytes(bytes(raw[:-3]))  # a "torn" non-last file is corruption too
    _refuses_unchanged(tmp_path, second, offs[-2])


def test_bad_headers_and_lsn_gaps_refuse(tmp_path: Path) -> None:
    make_log(tmp_path, 40, max_file_bytes=300)
    names = sorted(os.listdir(tmp_path))
    assert len(names) >= 4
    # a damaged header in a non-last file
    p = tmp_path / names[1]
    raw = p.read_bytes()
    p.write_bytes(b"X" + raw[1:])
    with pytest.raises(CorruptionError, match=names[1]):
        WriteAheadLog(tmp_path)
    p.write_bytes(raw)
    # a damaged (not torn: non-zero, full size) header in the last file
    last = tmp_path / names[-1]
    raw_last = last.read_bytes()
    last.write_bytes(raw_last[:12] + bytes([raw_last[12] ^ 1]) + raw_last[13:])
    with pytest.raises(CorruptionError, match=names[-1]):
        WriteAheadLog(tmp_path)
    last.write_bytes(raw_last)
    # file name disagreeing with the header's first lsn
    os.rename(tmp_path / names[0], tmp_path / file_name(2))
    with pytest.raises(CorruptionError, match="file name says"):
        WriteAheadLog(tmp_path)
    os.rename(tmp_path / file_name(2), tmp_path / names[0])
    # a missing middle file: lsn gap
    os.rename(tmp_path / names[2], tmp_path / "aside")
    with pytest.raises(CorruptionError, match="lsn gap"):
        WriteAheadLog(tmp_path)
    os.rename(tmp_path / "aside", tmp_path / names[2])
    with WriteAheadLog(tmp_path) as w:
        assert w.last_lsn == 40


def test_intact_records_that_no_torn_write_explains_refuse(tmp_path: Path) -> None:
    records = make_log(tmp_path, 5)
    path = tmp_path / file_name(1)
    size = path.stat().st_size
    # An intact record whose lsn skips ahead, at the very end of the last file.
    with open(path, "ab") as f:
        f.write(frame(path, 7, 1, b"skipped an lsn"))
    _refuses_unchanged(tmp_path, path, size)
    os.truncate(path, size)
    # An intact record longer than max_record_bytes: refuse rather than drop an acknowledged write.
    with open(path, "ab") as f:
        f.write(frame(path, 6, 1, b"z" * 500))
    err = _refuses_unchanged(tmp_path, path, size, max_record_bytes=100)
    assert "max_record_bytes" in str(err)
    with WriteAheadLog(tmp_path) as w:
        assert [r[0] for r in w.replay()] == [r[0] for r in records] + [6]
