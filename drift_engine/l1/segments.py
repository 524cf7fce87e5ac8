"""Building new L1 data: segment files grouped by bucket, and the header/mask changes of a write.

Contract: ``write_bucketed_segments`` performs step 1 of the commit order (DESIGN §7): it writes new
segment files under fresh names (tmp -> fsync -> rename -> fsync dir) and returns, per bucket, the
extents it wrote. It never touches LMDB; if the caller's LMDB transaction then fails, the new files are
unreferenced and are removed (now, or at the next open).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from drift_engine.index.buckets import Extent
from drift_engine.l1.layout import segment_file_name
from drift_engine.l1.snapshot import BLOCK_CODES, BLOCK_IDS, BLOCK_VECTORS
from drift_engine.storage import sq8 as sq8_codec
from drift_engine.storage.segment import SegmentWriter
from drift_engine.storage.sq8 import SQ8Params

MAX_SEGMENT_BYTES = 256 << 20


@dataclass
class WrittenSegment:
    segment_id: int
    path: str
    n_rows: int
    extents: dict[int, Extent]  # bucket id -> extent
    rows_of: np.ndarray  # int64[n_input]: row in this segment of each input vector it holds (-1 elsewhere)


def rows_cap(dim: int, rows_per_segment: int) -> int:
    return int(max(1024, min(rows_per_segment, MAX_SEGMENT_BYTES // (dim * 5 + 8))))


def write_bucketed_segments(
    seg_dir: str,
    next_segment_id: Callable[[], int],
    sq8: SQ8Params,
    ids: np.ndarray,
    vectors: np.ndarray,
    labels: np.ndarray,
    *,
    rows_per_segment: int,
) -> tuple[list[WrittenSegment], np.ndarray, np.ndarray]:
    """Write ``vectors`` grouped by bucket ``labels``; a bucket never straddles two segments.

    Returns (segments, segment_of_input, row_of_input): for each input vector, the segment id and row it
    was written at.
    """
    n, dim = vectors.shape
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    cuts = np.flatnonzero(np.diff(sorted_labels)) + 1
    group_starts = np.concatenate(([0], cuts)).astype(np.int64)
    group_ends = np.concatenate((cuts, [n])).astype(np.int64)
    cap = rows_cap(dim, rows_per_segment)

    written: list[WrittenSegment] = []
    segment_of = np.empty(n, dtype=np.int64)
    row_of = np.empty(n, dtype=np.int64)
    g = 0
    try:
        while g < len(group_starts):
            first = g
            rows = 0
            while g < len(group_starts) and (rows == 0 or rows + (group_ends[g] - group_starts[g]) <= cap):
                rows += int(group_ends[g] - group_starts[g])
                g += 1
            lo, hi = int(group_starts[first]), int(group_ends[g - 1])
            sel = order[lo:hi]
            seg_id = next_segment_id()
            path = os.path.join(seg_dir, segment_file_name(seg_id))
            seg_vectors = np.ascontiguousarray(vectors[sel])
            with SegmentWriter(path, segment_id=seg_id, dim=dim, meta={"rows": hi - lo}) as writer:
                writer.add_block(BLOCK_CODES, sq8_codec.encode(sq8, seg_vectors))
                writer.add_block(BLOCK_IDS, np.ascontiguousarray(ids[sel], dtype=np.int64))
                writer.add_block(BLOCK_VECTORS, seg_vectors)
                writer.finish()
            extents = {
                int(sorted_labels[group_starts[j]]): Extent(
                    seg_id, int(group_starts[j] - lo), int(group_ends[j] - group_starts[j])
                )
                for j in range(first, g)
            }
            segment_of[sel] = seg_id
            row_of[sel] = np.arange(hi - lo, dtype=np.int64)
            written.append(WrittenSegment(seg_id, path, hi - lo, extents, sel))
    except BaseException:
        remove_files([w.path for w in written])
        raise
    return written, segment_of, row_of


def remove_files(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
