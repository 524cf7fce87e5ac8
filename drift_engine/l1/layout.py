"""The on-disk layout of one collection and the LMDB record formats.

Directory ``<data>/collections/<name>/``::

    meta.lmdb/              LMDB environment: the single commit point for L1
    segments/NNNNNN.drift   immutable segment files (codes, ids, vectors blocks; rows grouped by bucket)

LMDB sub-databases (keys are ``encode_i64`` so they sort numerically):

* ``meta``: ``config`` (JSON), ``sq8`` (SQ8Params bytes), ``trained`` (b"0"/b"1"),
  ``next_segment``, ``next_bucket``, ``applied_lsn`` (decimal ASCII)
* ``loc``: id -> ``Location`` (bucket, segment, row, lsn)
* ``payload``: id -> compact JSON object
* ``bucket``: bucket id -> ``BucketHeader.to_bytes()``
* ``dead``: segment id -> ``np.packbits`` of the segment's dead-row mask
* ``segment``: segment id -> JSON ``{"file": name, "rows": n}`` (the set of referenced segments)
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import numpy as np

DB_META = "meta"
DB_LOC = "loc"
DB_PAYLOAD = "payload"
DB_BUCKET = "bucket"
DB_DEAD = "dead"
DB_SEGMENT = "segment"
ALL_DBS = (DB_META, DB_LOC, DB_PAYLOAD, DB_BUCKET, DB_DEAD, DB_SEGMENT)

KEY_CONFIG = b"config"
KEY_SQ8 = b"sq8"
KEY_TRAINED = b"trained"
KEY_NEXT_SEGMENT = b"next_segment"
KEY_NEXT_BUCKET = b"next_bucket"
KEY_APPLIED_LSN = b"applied_lsn"

SEGMENT_SUFFIX = ".drift"
_LOC = struct.Struct("<qqqq")


class Location(NamedTuple):
    bucket: int
    segment: int
    row: int
    lsn: int

    def pack(self) -> bytes:
        return _LOC.pack(self.bucket, self.segment, self.row, self.lsn)

    @classmethod
    def unpack(cls, data: bytes) -> Location:
        return cls(*_LOC.unpack(data))


def segments_dir(collection_dir: str) -> str:
    return os.path.join(collection_dir, "segments")


def kv_dir(collection_dir: str) -> str:
    return os.path.join(collection_dir, "meta.lmdb")


def segment_file_name(segment_id: int) -> str:
    return f"{segment_id:06d}{SEGMENT_SUFFIX}"


def pack_dead(mask: np.ndarray) -> bytes:
    return np.packbits(mask.astype(bool)).tobytes()


def unpack_dead(data: bytes, n_rows: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n_rows)
    return np.ascontiguousarray(bits, dtype=np.uint8)


def int_bytes(value: int) -> bytes:
    return str(int(value)).encode()
