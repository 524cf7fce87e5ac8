"""Immutable ``.drift`` segment files: a checksummed header, then 4 KiB-aligned checksummed blocks.

File format (version 1, all integers little-endian)::

    offset 0             header region, ``header_size`` bytes (a multiple of 4096, at least one page)
      [0, 48)              fixed struct, ``<8sHHIQIIQII``:
                             magic b"DRIFTSEG", version u16 (=1), flags u16 (=0), dim u32,
                             segment_id u64, n_blocks u32, header_size u32, file_size u64,
                             meta_len u32, header_crc u32 (bytes 44..48)
      [48, 48+64n)         block table, one 64-byte entry per block, ``<16s8sB3xIQQQQ``:
                             kind (ASCII, NUL-padded, 1..16 bytes), dtype (numpy dtype string such as
                             '|u1' '<i8' '<f4', NUL-padded), ndim u8 (1 or 2), crc32c u32,
                             shape[0] u64, shape[1] u64 (0 when ndim == 1), offset u64, nbytes u64
      then                 ``meta_len`` bytes of compact UTF-8 JSON (an object), then zeros up to
                           ``header_size``
    header_size ...      blocks in table order; each starts at a 4096-aligned offset and is padded
                         with zeros to a page multiple, so ``file_size`` is a multiple of 4096.
                         A zero-byte block occupies no space (its offset equals the next block's).

Checksums: ``header_crc`` is the CRC32C of the whole header region ``[0, header_size)`` computed with
the ``header_crc`` field itself set to zero, so a flipped bit anywhere in the header (padding
included) is caught when the file is opened.  Each block's CRC32C covers its ``nbytes`` of data
(not the padding; ``verify`` also checks that the padding is zero).

Durability: ``SegmentWriter`` writes to ``<path>.tmp`` (created with O_EXCL), then ``finish`` writes
the header, fsyncs the file, renames it to ``<path>`` and fsyncs the directory.  A crash before the
rename leaves only the ``.tmp`` file (garbage for the owner to remove); the final name, once it
exists, always names a complete, durable file.  Files are never modified after ``finish``.

Thread-safety: a ``SegmentWriter`` belongs to one thread.  A ``SegmentReader`` is safe to share
between threads: it only uses positional reads (``os.pread`` / ``os.preadv``) on one descriptor and
keeps no mutable state; ``close`` must not race with reads in flight (the owner retires readers
only after every user has left).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

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

MAGIC = b"DRIFTSEG"
FORMAT_VERSION = 1
TMP_SUFFIX = ".tmp"

_FIXED = struct.Struct("<8sHHIQIIQII")
_ENTRY = struct.Struct("<16s8sB3xIQQQQ")
_CRC_FIELD = slice(44, 48)  # position of header_crc inside the fixed struct
_MAX_KIND = 16
_MAX_DTYPE = 8
_ALLOWED_KINDS = "biufc"  # bool, signed, unsigned, float, complex
_DEFAULT_RESERVED_BLOCKS = 63  # with empty meta the header then fits one page
_VERIFY_CHUNK = 1 << 20

assert _FIXED.size == 48 and _ENTRY.size == 64


@dataclass(frozen=True)
class BlockInfo:
    """One block of a segment: what it holds and where."""

    kind: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc: int


@dataclass(frozen=True)
class SegmentInfo:
    """What ``SegmentWriter.finish`` produced."""

    path: str
    segment_id: int
    dim: int
    blocks: tuple[BlockInfo, ...]
    file_size: int
    meta: dict[str, Any]


def _encode_meta(meta: dict[str, Any] | None, path: str) -> bytes:
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise InvalidArgumentError(f"{path}: segment meta must be a dict with string keys")
    try:
        return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{path}: segment meta is not JSON-serialisable: {exc}") from exc


def _pad(raw: bytes, size: int) -> bytes:
    return raw + b"\0" * (size - len(raw))


class SegmentWriter:
    """Writes one segment file; see the module docstring for the format and the commit steps.

    ``expected_blocks`` only sizes the header reservation up front; writing more blocks still works
    (``finish`` then moves the data down once to make room for the larger block table).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        segment_id: int,
        dim: int,
        meta: dict[str, Any] | None = None,
        expected_blocks: int = 0,
    ) -> None:
        self.path = os.fspath(path)
        self.tmp_path = self.path + TMP_SUFFIX
        if not 0 <= segment_id < 1 << 64:
            raise InvalidArgumentError(f"{self.path}: segment_id must fit in u64, got {segment_id}")
        if not 0 <= dim < 1 << 32:
            raise InvalidArgumentError(f"{self.path}: dim must fit in u32, got {dim}")
        if expected_blocks < 0:
            raise InvalidArgumentError(f"{self.path}: expected_blocks must be >= 0, got {expected_blocks}")
        self.segment_id = segment_id
        self.dim = dim
        self._meta_bytes = _encode_meta(meta, self.path)
        self._meta: dict[str, Any] = json.loads(self._meta_bytes)
        if os.path.lexists(self.path):
            raise FileExistsError(f"{self.path}: segment file already exists; segments are written once")
        reserve = max(expected_blocks, _DEFAULT_RESERVED_BLOCKS)
        self._reserved = align_up(_FIXED.size + _ENTRY.size * reserve + len(self._meta_bytes))
        self._next = self._reserved
        self._blocks: list[BlockInfo] = []
        self._fd: int | None = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._state = "open"  # open -> finished | aborted

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # An exception, or leaving the block without finish(), discards the temporary file.
        if self._state != "finished":
            self.abort()

    # -- writing --------------------------------------------------------------------------------
    def _check_open(self) -> int:
        if self._state != "open" or self._fd is None:
            raise InvalidArgumentError(f"{self.path}: segment writer is {self._state}")
        return self._fd

    def add_block(self, kind: str, array: np.ndarray) -> int:
        """Write ``array`` as the next block (at the next 4 KiB-aligned offset); return its index."""
        fd = self._check_open()
        kind_raw = kind.encode("ascii", "strict") if kind.isascii() else b""
        if not 1 <= len(kind_raw) <= _MAX_KIND or b"\0" in kind_raw:
            raise InvalidArgumentError(f"{self.path}: block kind must be 1..{_MAX_KIND} ASCII characters, got {kind!r}")
        arr = np.asarray(array)
        if arr.dtype.kind not in _ALLOWED_KINDS or arr.dtype.fields is not None:
            raise InvalidArgumentError(f"{self.path}: block {kind!r}: dtype {arr.dtype} is not a plain numeric type")
        if arr.ndim not in (1, 2):
            raise InvalidArgumentError(f"{self.path}: block {kind!r}: arrays must be 1-D or 2-D, got {arr.ndim}-D")
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        dtype_str = arr.dtype.str
        if len(dtype_str) > _MAX_DTYPE:
            raise InvalidArgumentError(f"{self.path}: block {kind!r}: dtype string {dtype_str!r} too long")
        if len(self._blocks) >= (1 << 32) - 1:
            raise InvalidArgumentError(f"{self.path}: too many blocks")
        data = memoryview(arr.reshape(-1).view(np.uint8))
        nbytes = len(data)
        offset = self._next
        crc = crc32c(data)
        if nbytes:
            pwrite_all(fd, data, offset)
            padding = align_up(nbytes) - nbytes
            if padding:
                pwrite_all(fd, bytes(padding), offset + nbytes)
        self._blocks.append(
            BlockInfo(kind=kind, dtype=dtype_str, shape=tuple(arr.shape), offset=offset, nbytes=nbytes, crc=crc)
        )
        self._next = offset + align_up(nbytes)
        return len(self._blocks) - 1

    def _header_bytes(self, header_size: int, file_size: int) -> bytes:
        fixed = _FIXED.pack(
            MAGIC,
            FORMAT_VERSION,
            0,
            self.dim,
            self.segment_id,
            len(self._blocks),
            header_size,
            file_size,
            len(self._meta_bytes),
            0,
        )
        parts = [fixed]
        for b in self._blocks:
            shape = (*b.shape, 0) if len(b.shape) == 1 else b.shape
            parts.append(
                _ENTRY.pack(
                    b.kind.encode("ascii"),
                    b.dtype.encode("ascii"),
                    len(b.shape),
                    b.crc,
                    shape[0],
                    shape[1],
                    b.offset,
                    b.nbytes,
                )
            )
        parts.append(self._meta_bytes)
        header = bytearray(_pad(b"".join(parts), header_size))
        header[_CRC_FIELD] = struct.pack("<I", crc32c(header))
        return bytes(header)

    def _make_room(self, fd: int, needed: int) -> None:
        """Move every block down so a header of ``needed`` bytes fits (copying backwards)."""
        delta = needed - self._reserved
        start, pos = self._reserved, self._next
        while pos > start:
            chunk_start = max(start, pos - _VERIFY_CHUNK)
            pwrite_all(fd, pread_exact(fd, pos - chunk_start, chunk_start, path=self.tmp_path), chunk_start + delta)
            pos = chunk_start
        self._blocks = [BlockInfo(b.kind, b.dtype, b.shape, b.offset + delta, b.nbytes, b.crc) for b in self._blocks]
        self._reserved = needed
        self._next += delta

    def finish(self) -> SegmentInfo:
        """Write the header, fsync, rename ``.tmp`` to the final name, fsync the directory."""
        fd = self._check_open()
        try:
            needed = align_up(_FIXED.size + _ENTRY.size * len(self._blocks) + len(self._meta_bytes))
            if needed > self._reserved:
                self._make_room(fd, needed)
            file_size = self._next
            pwrite_all(fd, self._header_bytes(self._reserved, file_size), 0)
            os.ftruncate(fd, file_size)
            os.fsync(fd)
            os.close(fd)
            self._fd = None
            os.rename(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        return SegmentInfo(
            path=self.path,
            segment_id=self.segment_id,
            dim=self.dim,
            blocks=tuple(self._blocks),
            file_size=file_size,
            meta=self._meta,
        )

    def abort(self) -> None:
        """Close and remove the temporary file.  Idempotent; a no-op after ``finish``."""
        if self._state == "finished":
            return
        self._state = "aborted"
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)

    def __del__(self) -> None:
        # Leaked writer: release the descriptor but leave the .tmp file (as a crash would).
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            os.close(fd)


class SegmentReader:
    """Opens a segment, validates its header, reads blocks with checksum verification."""

    path: str
    segment_id: int
    dim: int
    meta: dict[str, Any]
    blocks: list[BlockInfo]
    file_size: int

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._load_header(self._fd)
        except BaseException:
            self.close()
            raise

    def _corrupt(self, problem: str) -> CorruptionError:
        return CorruptionError(f"{self.path}: {problem}")

    def _load_header(self, fd: int) -> None:
        actual_size = os.fstat(fd).st_size
        if actual_size < _FIXED.size:
            raise self._corrupt(f"file is {actual_size} bytes, too short for a segment header (truncated?)")
        first = pread_exact(fd, min(PAGE_SIZE, actual_size), 0, path=self.path)
        magic, version, flags, dim, seg_id, n_blocks, header_size, file_size, meta_len, stored_crc = _FIXED.unpack_from(
            first
        )
        if magic != MAGIC:
            raise self._corrupt(f"bad magic {magic!r} (expected {MAGIC!r}): not a drift segment file")
        if version != FORMAT_VERSION:
            raise self._corrupt(
                f"unsupported segment format version {version} (this build reads {FORMAT_VERSION}); "
                "the header may be corrupt"
            )
        if header_size < PAGE_SIZE or header_size % PAGE_SIZE:
            raise self._corrupt(f"header checksum/size invalid: header_size {header_size} is not a page multiple")
        if header_size > actual_size:
            raise self._corrupt(
                f"header says it is {header_size} bytes but the file has only {actual_size} (truncated?)"
            )
        header = bytearray(first)
        if header_size > len(first):
            header += pread_exact(fd, header_size - len(first), len(first), path=self.path)
        header[_CRC_FIELD] = b"\0\0\0\0"
        computed = crc32c(header)
        if computed != stored_crc:
            raise self._corrupt(f"header checksum mismatch (stored {stored_crc:#010x}, computed {computed:#010x})")
        if flags != 0:
            raise self._corrupt(f"unsupported header flags {flags:#x}")
        if file_size != actual_size:
            raise self._corrupt(
                f"header says the file is {file_size} bytes but it has {actual_size} (truncated or extended)"
            )
        table_end = _FIXED.size + _ENTRY.size * n_blocks
        if table_end + meta_len > header_size:
            raise self._corrupt(f"block table ({n_blocks} blocks) and meta do not fit the {header_size}-byte header")
        blocks = [self._parse_entry(header, i, header_size, file_size) for i in range(n_blocks)]
        self._check_no_overlap(blocks)
        try:
            meta = json.loads(bytes(header[table_end : table_end + meta_len]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._corrupt(f"segment meta is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise self._corrupt("segment meta is not a JSON object")
        self.segment_id = seg_id
        self.dim = dim
        self.meta = meta
        self.blocks = blocks
        self.file_size = file_size
        self._header_size = header_size

    def _parse_entry(self, header: bytearray, i: int, header_size: int, file_size: int) -> BlockInfo:
        kind_raw, dtype_raw, ndim, crc, s0, s1, offset, nbytes = _ENTRY.unpack_from(header, _FIXED.size + i * 64)
        try:
            kind = kind_raw.rstrip(b"\0").decode("ascii")
            dtype = np.dtype(dtype_raw.rstrip(b"\0").decode("ascii"))
        except (UnicodeDecodeError, TypeError, ValueError) as exc:
            raise self._corrupt(f"block {i}: bad kind {kind_raw!r} or dtype {dtype_raw!r}") from exc
        if not kind or dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None:
            raise self._corrupt(f"block {i}: bad kind {kind!r} or dtype {dtype.str!r}")
        if ndim not in (1, 2):
            raise self._corrupt(f"block {i} ({kind}): bad ndim {ndim}")
        shape = (s0,) if ndim == 1 else (s0, s1)
        if s0 * (s1 if ndim == 2 else 1) * dtype.itemsize != nbytes:
            raise self._corrupt(f"block {i} ({kind}): shape {shape} x {dtype.str} does not match {nbytes} bytes")
        if offset % PAGE_SIZE or offset < header_size or offset + nbytes > file_size:
            raise self._corrupt(
                f"block {i} ({kind}) at offset {offset}, {nbytes} bytes, lies outside the data area "
                f"[{header_size}, {file_size}) or is not page-aligned"
            )
        return BlockInfo(kind=kind, dtype=dtype.str, shape=shape, offset=offset, nbytes=nbytes, crc=crc)

    def _check_no_overlap(self, blocks: list[BlockInfo]) -> None:
        order = sorted(range(len(blocks)), key=lambda j: (blocks[j].offset, blocks[j].nbytes))
        for a, b in itertools.pairwise(order):
            if blocks[a].offset + align_up(blocks[a].nbytes) > blocks[b].offset:
                raise self._corrupt(f"blocks {a} and {b} overlap")

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------------
    def _block(self, index: int) -> tuple[int, BlockInfo]:
        fd = self._fd
        if fd is None:
            raise InvalidArgumentError(f"{self.path}: segment reader is closed")
        if not 0 <= index < len(self.blocks):
            raise InvalidArgumentError(f"{self.path}: block index {index} out of range (0..{len(self.blocks) - 1})")
        return fd, self.blocks[index]

    def read_block(self, index: int) -> np.ndarray:
        """Block ``index`` as a read-only array of its dtype and shape; checksum verified."""
        fd, b = self._block(index)
        arr = np.empty(b.shape, dtype=np.dtype(b.dtype))
        view = memoryview(arr.reshape(-1).view(np.uint8))
        if b.nbytes:
            pread_into(fd, view, b.offset, path=self.path)
        computed = crc32c(view)
        if computed != b.crc:
            raise self._corrupt(
                f"block {index} ({b.kind}) at offset {b.offset}: checksum mismatch "
                f"(stored {b.crc:#010x}, computed {computed:#010x})"
            )
        arr.flags.writeable = False
        return arr

    def verify(self) -> None:
        """Check every block's checksum and that inter-block padding is zero."""
        buf = memoryview(bytearray(_VERIFY_CHUNK))
        for i in range(len(self.blocks)):
            fd, b = self._block(i)
            crc, pos, end = 0, b.offset, b.offset + b.nbytes
            while pos < end:
                n = min(_VERIFY_CHUNK, end - pos)
                pread_into(fd, buf[:n], pos, path=self.path)
                crc = crc32c(buf[:n], crc)
                pos += n
            if crc != b.crc:
                raise self._corrupt(
                    f"block {i} ({b.kind}) at offset {b.offset}: checksum mismatch "
                    f"(stored {b.crc:#010x}, computed {crc:#010x})"
                )
            padding = align_up(b.nbytes) - b.nbytes
            if padding and pread_exact(fd, padding, end, path=self.path).count(0) != padding:
                raise self._corrupt(f"block {i} ({b.kind}): non-zero padding after offset {end}")

    def close(self) -> None:
        """Close the descriptor.  Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()
