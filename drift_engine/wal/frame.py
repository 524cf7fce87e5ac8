"""WAL file format: file header, record framing and checksums, and read-only walking of a file's records.

Contract (all integers little-endian)::

    header (26 bytes)   magic b"DRIFTWAL", format version u16, salt u32 (random per file),
                        first_lsn u64, header_crc u32 (CRC32C of the 22 bytes before it)
    records             [len u32][crc u32][lsn u64][type u8][body: len bytes]
                        crc = CRC32C(salt u32 + len u32 + lsn u64 + type u8 + body)

``scan_records`` classifies the first bad record of a file (see ``BadRecord``): **torn** when it is a
short write (its header is incomplete, its declared length runs past the end of the file, or everything
from it to the end of the file is zero bytes: the file was extended but the record never written),
**corrupt** when it is complete (its declared length fits) but fails its checksum, **intact** when its
checksum is valid but it is still wrong (an unexpected lsn, longer than ``max_record_bytes``). Only a
torn record can be the harmless end of a crashed append; ``log.WriteAheadLog`` decides what to do.

Pure functions over read-only mappings: safe from any thread.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from drift_engine.errors import CorruptionError
from drift_engine.storage.pages import crc32c

MAGIC = b"DRIFTWAL"
FORMAT_VERSION = 1

_HEADER_BODY = struct.Struct("<8sHIQ")  # magic, version, salt, first_lsn
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER_BODY.size + _HEADER_CRC.size  # 26
REC = struct.Struct("<IIQB")  # len, crc, lsn, type
REC_HEADER_SIZE = REC.size  # 17
_CRC_PREFIX = struct.Struct("<IIQB")  # salt, len, lsn, type
NAME_RE = re.compile(r"^(\d{16})\.log$")
_SCAN_CHUNK = 1 << 20

TORN = "torn"
CORRUPT = "corrupt"
INTACT = "intact"


def file_name(first_lsn: int) -> str:
    """The file name of the WAL file whose first record has ``first_lsn``."""
    return f"{first_lsn:016d}.log"


def make_header(salt: int, first_lsn: int) -> bytes:
    body = _HEADER_BODY.pack(MAGIC, FORMAT_VERSION, salt, first_lsn)
    return body + _HEADER_CRC.pack(crc32c(body))


def parse_header(buf: bytes) -> tuple[int, int] | str:
    """``(salt, first_lsn)`` or the reason the header is bad."""
    if len(buf) < HEADER_SIZE:
        return f"file is {len(buf)} bytes, shorter than the {HEADER_SIZE}-byte header"
    magic, version, salt, first_lsn = _HEADER_BODY.unpack_from(buf, 0)
    (stored,) = _HEADER_CRC.unpack_from(buf, _HEADER_BODY.size)
    if crc32c(buf[: _HEADER_BODY.size]) != stored:
        return "header checksum mismatch"
    if magic != MAGIC:
        return f"bad magic {magic!r}"
    if version != FORMAT_VERSION:
        return f"unsupported WAL format version {version}"
    return salt, first_lsn


def record_crc(salt: int, length: int, lsn: int, rtype: int, body: bytes | memoryview) -> int:
    return crc32c(body, crc32c(_CRC_PREFIX.pack(salt, length, lsn, rtype)))


@dataclass(slots=True)
class WalFile:
    path: str
    first_lsn: int
    size: int  # bytes of header + good records
    salt: int


class BadRecord(NamedTuple):
    """The first bad record of a file: its offset, why, and its kind (``TORN``, ``CORRUPT``, ``INTACT``)."""

    offset: int
    reason: str
    kind: str


class WalRecord(NamedTuple):
    """One replayed record and where it is stored."""

    lsn: int
    type: int
    body: bytes
    path: str
    offset: int


def _all_zero(mv: memoryview, start: int, end: int) -> bool:
    return not np.frombuffer(mv[start:end], dtype=np.uint8).any()


def scan_records(
    mv: memoryview, size: int, salt: int, expected: int, max_rec: int
) -> tuple[int, int, BadRecord | None]:
    """Walk records from the header on: ``(end, next_lsn, bad)``.

    ``end`` is the offset just past the last good record (where ``bad`` starts, if there is one) and
    ``next_lsn`` the lsn the next record must carry.
    """
    off = HEADER_SIZE
    while off < size:
        if size - off < REC_HEADER_SIZE:
            reason = f"incomplete record header ({size - off} of {REC_HEADER_SIZE} bytes)"
            return off, expected, BadRecord(off, reason, TORN)
        length, stored, lsn, rtype = REC.unpack_from(mv, off)
        start = off + REC_HEADER_SIZE
        if length > size - start:
            reason = f"record length {length} runs past end of file ({size - start} left)"
            return off, expected, BadRecord(off, reason, TORN)
        crc_ok = record_crc(salt, length, lsn, rtype, mv[start : start + length]) == stored
        if not crc_ok and _all_zero(mv, off, size):
            reason = f"{size - off} zero bytes where a record should start (file extended, record never written)"
            return off, expected, BadRecord(off, reason, TORN)
        if length > max_rec:
            reason = f"record length {length} exceeds max_record_bytes {max_rec}"
            if crc_ok:
                reason += " (the record is intact: reopen with a larger max_record_bytes)"
            return off, expected, BadRecord(off, reason, INTACT if crc_ok else CORRUPT)
        if not crc_ok:
            reason = f"checksum mismatch in a complete record (lsn field {lsn}, length {length})"
            return off, expected, BadRecord(off, reason, CORRUPT)
        if lsn != expected:
            return off, expected, BadRecord(off, f"lsn {lsn} where lsn {expected} was expected", INTACT)
        off = start + length
        expected += 1
    return off, expected, None


def _le(a: np.ndarray, c0: int, c1: int, k: int, nbytes: int) -> np.ndarray:
    out = a[c0 + k : c1 + k].astype(np.uint64)
    for j in range(1, nbytes):
        out |= a[c0 + k + j : c1 + k + j].astype(np.uint64) << np.uint64(8 * j)
    return out


def find_valid_record(
    mv: memoryview, start: int, end: int, salt: int, expected: int, max_record: int
) -> tuple[int, int] | None:
    """First ``(offset, lsn)`` in ``[start, end)`` where a valid record with lsn >= ``expected`` starts."""
    npos = end - REC_HEADER_SIZE - start + 1
    if npos <= 0:
        return None
    a = np.frombuffer(mv[start:end], dtype=np.uint8)
    room_base = end - start - REC_HEADER_SIZE
    for c0 in range(0, npos, _SCAN_CHUNK):
        c1 = min(npos, c0 + _SCAN_CHUNK)
        lengths = _le(a, c0, c1, 0, 4).astype(np.int64)
        room = room_base - np.arange(c0, c1, dtype=np.int64)
        mask = (lengths <= min(max_record, room_base)) & (lengths <= room)
        if not mask.any():
            continue
        mask &= _le(a, c0, c1, 8, 8) >= np.uint64(expected)
        for idx in np.flatnonzero(mask).tolist():
            p = start + c0 + idx
            length, stored, lsn, rtype = REC.unpack_from(mv, p)
            body = mv[p + REC_HEADER_SIZE : p + REC_HEADER_SIZE + length]
            if record_crc(salt, length, lsn, rtype, body) == stored:
                return p, lsn
    return None


class Mapped:
    """Read-only mapping of the first ``size`` bytes of a file (``mv`` is empty when size is 0)."""

    def __init__(self, path: str, size: int | None = None) -> None:
        self._mm: mmap.mmap | None = None
        with open(path, "rb") as f:
            actual = os.fstat(f.fileno()).st_size
            self.size = actual if size is None else size
            if self.size > actual:
                raise CorruptionError(f"{path}: WAL file is {actual} bytes, expected at least {self.size}")
            if self.size > 0:
                self._mm = mmap.mmap(f.fileno(), self.size, access=mmap.ACCESS_READ)
        self.mv = memoryview(self._mm) if self._mm is not None else memoryview(b"")

    def close(self) -> None:
        try:
            self.mv.release()
            if self._mm is not None:
                self._mm.close()
        except BufferError:  # a slice is still referenced; the mapping closes when it is collected
            pass


def replay_file(f: WalFile, after_lsn: int) -> Iterator[WalRecord]:
    """Every record of the validated file ``f`` with lsn > ``after_lsn``, with its offset."""
    m = Mapped(f.path, f.size)
    try:
        mv = m.mv
        off, expected = HEADER_SIZE, f.first_lsn
        while off < f.size:
            # The file was validated at open; re-check anyway (it may have been damaged since).
            ok = f.size - off >= REC_HEADER_SIZE
            length, stored, lsn, rtype = REC.unpack_from(mv, off) if ok else (0, 0, 0, 0)
            start = off + REC_HEADER_SIZE
            ok = ok and length <= f.size - start and lsn == expected
            body = mv[start : start + length].tobytes() if ok and lsn > after_lsn else b""
            if not ok or (lsn > after_lsn and record_crc(f.salt, length, lsn, rtype, body) != stored):
                raise CorruptionError(f"{f.path}: corrupt WAL record at offset {off} found on replay")
            if lsn > after_lsn:
                yield WalRecord(lsn, rtype, body, f.path, off)
            off = start + length
            expected += 1
    finally:
        m.close()
