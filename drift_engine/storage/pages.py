"""Page-level I/O helpers: 4 KiB alignment, CRC32C, positional reads/writes, directory fsync.

Contract:

* ``PAGE_SIZE`` (4096) is the unit every on-disk block is aligned and padded to.
* ``crc32c`` is CRC-32C (Castagnoli), the value an unsigned 32-bit int; ``value`` chains calls, so
  ``crc32c(b, crc32c(a)) == crc32c(a + b)``.
* ``pwrite_all`` / ``pread_exact`` / ``pread_into`` use positional I/O only (``os.pwrite``,
  ``os.pread``, ``os.preadv``): they never move the file offset, so any number of threads may share
  one descriptor.  Short transfers are retried until done; a read that hits end-of-file early is a
  ``CorruptionError`` naming the file, the offset and how many bytes were wanted and got.
* ``fsync_dir`` makes a rename / create / unlink inside a directory durable.

Nothing here buffers: durability of file contents is the caller's ``os.fsync``.
"""

from __future__ import annotations

import os

import crc32c as _crc32c

from drift_engine.errors import CorruptionError, InvalidArgumentError

PAGE_SIZE = 4096

_Buffer = bytes | bytearray | memoryview


def align_up(n: int, page: int = PAGE_SIZE) -> int:
    """Smallest multiple of ``page`` that is >= ``n``."""
    if n < 0:
        raise InvalidArgumentError(f"align_up: size must be >= 0, got {n}")
    if page <= 0:
        raise InvalidArgumentError(f"align_up: page must be > 0, got {page}")
    return (n + page - 1) // page * page


def _as_bytes_view(data: _Buffer) -> memoryview:
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")  # raises TypeError for non-contiguous buffers
    return view


def crc32c(data: _Buffer, value: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``value`` (0 starts a new checksum)."""
    return _crc32c.crc32c(_as_bytes_view(data), value) & 0xFFFFFFFF


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, looping on short writes."""
    view = _as_bytes_view(data)
    done = 0
    total = len(view)
    while done < total:
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(f"pwrite wrote {n} bytes at offset {offset + done} ({total - done} bytes left)")
        done += n


def pread_exact(fd: int, length: int, offset: int, *, path: str) -> bytes:
    """Read exactly ``length`` bytes at ``offset``; end-of-file first is a ``CorruptionError``."""
    if length < 0 or offset < 0:
        raise InvalidArgumentError(f"{path}: bad read of {length} bytes at offset {offset}")
    first = os.pread(fd, length, offset)
    if len(first) == length:
        return first
    parts = [first]
    got = len(first)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got) if parts[-1] else b""
        if not chunk:
            raise CorruptionError(
                f"{path}: short read at offset {offset}: wanted {length} bytes, got {got} (file truncated?)"
            )
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def pread_into(fd: int, buf: memoryview, offset: int, *, path: str) -> None:
    """Fill the writable buffer ``buf`` from ``offset`` (``os.preadv``, no intermediate copy)."""
    view = _as_bytes_view(buf)
    if view.readonly:
        raise InvalidArgumentError(f"{path}: pread_into needs a writable buffer")
    length = len(view)
    got = 0
    while got < length:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            raise CorruptionError(
                f"{path}: short read at offset {offset}: wanted {length} bytes, got {got} (file truncated?)"
            )
        got += n


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync the directory ``path`` so entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
