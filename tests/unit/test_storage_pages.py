"""pages.py: alignment, CRC32C, positional I/O helpers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from drift_engine.errors import CorruptionError, InvalidArgumentError
from drift_engine.storage.pages import (
    PAGE_SIZE,
    align_up,
    crc32c,
    fsync_dir,
    pread_exact,
    pread_into,
    pwrite_all,
)


def test_align_up() -> None:
    assert PAGE_SIZE == 4096
    assert [align_up(n) for n in (0, 1, 4095, 4096, 4097, 8192)] == [0, 4096, 4096, 4096, 8192, 8192]
    assert align_up(5, 4) == 8
    with pytest.raises(InvalidArgumentError):
        align_up(-1)


def test_crc32c_known_vector_and_chaining() -> None:
    # The standard CRC-32C check value (RFC 3720, appendix B.4).
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283
    assert crc32c(b"") == 0
    arr = np.arange(100, dtype=np.float32)
    assert crc32c(memoryview(arr)) == crc32c(arr.tobytes())
    assert crc32c(bytearray(b"abc")) == crc32c(b"abc")


@pytest.fixture
def fd(tmp_path):
    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    yield fd
    os.close(fd)


def test_pwrite_and_pread_round_trip(fd: int) -> None:
    data = bytes(range(256)) * 40
    pwrite_all(fd, data, 100)
    pwrite_all(fd, memoryview(b"xyz"), 0)
    assert os.fstat(fd).st_size == 100 + len(data)
    assert pread_exact(fd, len(data), 100, path="f.bin") == data
    assert pread_exact(fd, 3, 0, path="f.bin") == b"xyz"
    buf = np.zeros(len(data), dtype=np.uint8)
    pread_into(fd, memoryview(buf), 100, path="f.bin")
    assert buf.tobytes() == data


def test_short_read_is_corruption_naming_file_and_offset(fd: int) -> None:
    pwrite_all(fd, b"a" * 10, 0)
    with pytest.raises(CorruptionError, match=r"f\.bin: short read at offset 4: wanted 20 bytes, got 6"):
        pread_exact(fd, 20, 4, path="f.bin")
    buf = bytearray(20)
    with pytest.raises(CorruptionError, match=r"f\.bin: short read at offset 4: wanted 20 bytes, got 6"):
        pread_into(fd, memoryview(buf), 4, path="f.bin")
    with pytest.raises(CorruptionError, match="got 0"):
        pread_exact(fd, 1, 10, path="f.bin")
    assert pread_exact(fd, 0, 10, path="f.bin") == b""


def test_pread_into_refuses_read_only_buffer(fd: int) -> None:
    pwrite_all(fd, b"abcd", 0)
    with pytest.raises(InvalidArgumentError):
        pread_into(fd, memoryview(b"1234"), 0, path="f.bin")


def test_fsync_dir(tmp_path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")
