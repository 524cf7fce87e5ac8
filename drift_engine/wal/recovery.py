"""Opening a WAL directory: validate every file, then repair what a crashed append can leave behind.

Contract (``recover``), files in lsn order; every file is validated before anything is modified:

* A bad header is ``CorruptionError`` naming the file, except in the LAST file when it is shorter than
  a header or all zeros (crash while creating it): rewritten empty, warning logged.  The file name and
  header ``first_lsn`` must agree, and each file must start right after the previous one's last lsn.
* The first bad record of a file is classified by ``frame.scan_records``.  Only a **torn** record (a
  short write: incomplete header, declared length past the end of the file, or a zero-filled rest of
  the file) in the LAST file, with no valid record (correct CRC, lsn >= expected) at any later offset,
  is a crash's harmless end: the file is truncated there and fsynced, and ``truncated torn WAL tail at
  <file> offset <n>: <reason>`` is logged (warning).  Everything else refuses to open with
  ``CorruptionError("<file>: corrupt WAL record at offset <n>: <reason>; refusing to open")`` and
  touches nothing: any bad record of a non-last file, a **corrupt** record (complete, checksum
  mismatch: written in full, damaged since -- dropping it would drop an acknowledged write, even at the
  very end), and an **intact** one (valid CRC but the wrong lsn, or longer than ``max_record_bytes``).
* Returns the files and the lsn the next append gets.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from drift_engine.errors import CorruptionError
from drift_engine.storage.pages import fsync_dir, pwrite_all
from drift_engine.wal.frame import (
    HEADER_SIZE,
    NAME_RE,
    TORN,
    Mapped,
    WalFile,
    file_name,
    find_valid_record,
    make_header,
    parse_header,
    scan_records,
)

log = logging.getLogger("drift_engine.wal.log")  # one logger for the whole WAL (tests and operators grep it)


def fdatasync(fd: int) -> None:
    # Looked up at call time so tests can monkeypatch os.fdatasync; fsync where fdatasync is missing.
    getattr(os, "fdatasync", os.fsync)(fd)


def create_file(directory: Path, first_lsn: int, *, replace: bool = False) -> WalFile:
    """Create (or, for a torn header, rewrite) the file for ``first_lsn``: header, fsync, dir fsync."""
    path = str(directory / file_name(first_lsn))
    salt = secrets.randbits(32)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)  # private, whatever the umask (the data directory is 0700)
    try:
        pwrite_all(fd, make_header(salt, first_lsn), 0)
        fdatasync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)
    return WalFile(path, first_lsn, HEADER_SIZE, salt)


def recover(directory: Path, max_record: int) -> tuple[list[WalFile], int]:
    """Validate every file, then repair a torn tail / torn last header; ``(files, next lsn)``."""
    matches = (NAME_RE.match(n) for n in os.listdir(directory))
    names = sorted((int(m.group(1)), m.group(0)) for m in matches if m)
    files: list[WalFile] = []
    expected: int | None = None
    torn_tail: tuple[str, int, str] | None = None
    torn_header: str | None = None
    for i, (first, name) in enumerate(names):
        path = str(directory / name)
        last = i == len(names) - 1
        if expected is not None and first != expected:
            raise CorruptionError(
                f"{path}: WAL file starts at lsn {first} but the previous file ends at lsn "
                f"{expected - 1} (lsn gap); refusing to open"
            )
        m = Mapped(path)
        try:
            parsed = parse_header(m.mv[:HEADER_SIZE].tobytes())
            if isinstance(parsed, str):
                if last and (m.size < HEADER_SIZE or m.mv.tobytes().count(0) == m.size):
                    torn_header = f"{path}: torn WAL file header ({parsed})"
                    files.append(WalFile(path, first, 0, 0))
                    expected = first
                    continue
                raise CorruptionError(f"{path}: bad WAL file header: {parsed}; refusing to open")
            salt, hfirst = parsed
            if hfirst != first:
                raise CorruptionError(
                    f"{path}: header first lsn {hfirst} but the file name says {first}; refusing to open"
                )
            end, expected, bad = scan_records(m.mv, m.size, salt, first, max_record)
            if bad is not None:
                reason = bad.reason
                later = None
                if last and bad.kind == TORN:
                    later = find_valid_record(m.mv, end + 1, m.size, salt, expected, max_record)
                    if later is not None:
                        reason += f" (a valid record with lsn {later[1]} follows at offset {later[0]})"
                if not last or bad.kind != TORN or later is not None:
                    raise CorruptionError(f"{path}: corrupt WAL record at offset {end}: {reason}; refusing to open")
                torn_tail = (path, end, reason)
            files.append(WalFile(path, first, end, salt))
        finally:
            m.close()

    # Everything validated: only now modify files.
    if not files:
        files.append(create_file(directory, 1))
        expected = 1
    elif torn_header is not None:
        log.warning("%s: rewriting it as an empty WAL file", torn_header)
        files[-1] = create_file(directory, files[-1].first_lsn, replace=True)
    elif torn_tail is not None:
        path, off, reason = torn_tail
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, off)
            fdatasync(fd)
        finally:
            os.close(fd)
        log.warning("truncated torn WAL tail at %s offset %d: %s", path, off, reason)
    assert expected is not None
    return files, expected
