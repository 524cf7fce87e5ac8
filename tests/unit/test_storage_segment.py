"""segment.py: .drift file round trip, alignment, checksums, crash behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from drift_engine.errors import CorruptionError, InvalidArgumentError
from drift_engine.storage.pages import PAGE_SIZE, crc32c
from drift_engine.storage.segment import BlockInfo, SegmentReader, SegmentWriter
from tests.unit.threadcheck import ThreadGroup

REPO_ROOT = Path(__file__).resolve().parents[2]


def _blocks() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [
        ("codes", rng.integers(0, 256, size=(37, 24), dtype=np.uint8)),
        ("ids", rng.integers(-(2**62), 2**62, size=37, dtype=np.int64)),
        ("vectors", rng.standard_normal((37, 24)).astype(np.float32)),
        ("empty2d", np.zeros((0, 24), dtype=np.float32)),
        ("empty1d", np.zeros(0, dtype=np.int64)),
        ("bigend", np.arange(1000, dtype=">f4").reshape(100, 10)),
        ("deleted", rng.integers(0, 2, size=300).astype(bool)),
        ("noncontig", np.arange(200, dtype=np.float64).reshape(20, 10)[:, ::2]),
        ("pagefull", np.arange(1024, dtype=np.uint32)),  # exactly one page, no padding
    ]


def _write(path: Path, blocks=None, **kwargs):
    blocks = _blocks() if blocks is None else blocks
    with SegmentWriter(path, segment_id=kwargs.pop("segment_id", 42), dim=24, **kwargs) as w:
        for i, (kind, arr) in enumerate(blocks):
            assert w.add_block(kind, arr) == i
        return w.finish()


def _flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def test_round_trip_dtypes_shapes_and_alignment(tmp_path: Path) -> None:
    path = tmp_path / "000001.drift"
    info = _write(path, meta={"created_by": "test", "n": 3})
    assert info.path == str(path) and info.segment_id == 42 and info.dim == 24
    assert not os.path.exists(str(path) + ".tmp")
    assert info.file_size == os.path.getsize(path)
    assert info.file_size % PAGE_SIZE == 0
    with SegmentReader(path) as r:
        assert (r.segment_id, r.dim, r.file_size, r.meta) == (
            42,
            24,
            info.file_size,
            {"created_by": "test", "n": 3},
        )
        assert r.blocks == list(info.blocks)
        for i, (kind, original) in enumerate(_blocks()):
            b = r.blocks[i]
            assert b.kind == kind and b.offset % PAGE_SIZE == 0 and b.offset >= PAGE_SIZE
            got = r.read_block(i)
            assert got.shape == original.shape == b.shape
            assert got.dtype == original.dtype.newbyteorder("<")
            assert got.dtype.byteorder in ("<", "|", "=")
            np.testing.assert_array_equal(got, original)
            assert not got.flags.writeable
            assert got.flags.c_contiguous
            if got.size:
                with pytest.raises(ValueError, match="read-only"):
                    got.flat[0] = got.flat[0]
        r.verify()
    # blocks are laid out in order without overlap
    ends = [b.offset + b.nbytes for b in info.blocks]
    assert all(info.blocks[i + 1].offset >= ends[i] for i in range(len(ends) - 1))


def test_many_blocks_grow_the_header(tmp_path: Path) -> None:
    blocks = [(f"b{i}", np.full(i + 1, i, dtype=np.int32)) for i in range(300)]
    info = _write(tmp_path / "big.drift", blocks, meta={"pad": "x" * 5000})
    assert info.blocks[0].offset >= 48 + 64 * 300 + 5000
    with SegmentReader(tmp_path / "big.drift") as r:
        assert len(r.blocks) == 300 and r.meta["pad"] == "x" * 5000
        for i in (0, 1, 150, 299):
            np.testing.assert_array_equal(r.read_block(i), np.full(i + 1, i, dtype=np.int32))
        assert all(b.offset % PAGE_SIZE == 0 for b in r.blocks)
        assert r.file_size % PAGE_SIZE == 0
        r.verify()


def test_expected_blocks_reserves_header_space(tmp_path: Path) -> None:
    blocks = [(f"b{i}", np.arange(5, dtype=np.int16)) for i in range(200)]
    info = _write(tmp_path / "r.drift", blocks, expected_blocks=200)
    assert info.blocks[0].offset == 4 * PAGE_SIZE  # 48 + 200 * 64 + 2 bytes of meta -> 4 pages
    with SegmentReader(tmp_path / "r.drift") as r:
        r.verify()


def test_empty_segment(tmp_path: Path) -> None:
    info = _write(tmp_path / "e.drift", [])
    assert info.blocks == () and info.file_size == PAGE_SIZE
    with SegmentReader(tmp_path / "e.drift") as r:
        assert r.blocks == [] and r.meta == {}
        r.verify()


# -- corruption inside blocks ---------------------------------------------------------------------
_FLIP_BLOCKS = [0, 1, 2, 5, 6, 7, 8]  # every non-empty block of _blocks()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[bytes, tuple[BlockInfo, ...]]:
    path = tmp_path_factory.mktemp("seg") / "pristine.drift"
    info = _write(path)
    return path.read_bytes(), info.blocks


@pytest.mark.parametrize("block", _FLIP_BLOCKS)
@pytest.mark.parametrize("where", ["first", "second", "middle", "last"])
def test_bit_flip_in_any_block_is_detected(tmp_path: Path, pristine, block: int, where: str) -> None:
    data, blocks = pristine
    path = tmp_path / "flip.drift"
    path.write_bytes(data)
    b = blocks[block]
    pos = {"first": 0, "second": 1, "middle": b.nbytes // 2, "last": b.nbytes - 1}[where]
    _flip_bit(path, b.offset + pos, bit=(block + pos) % 8)
    with SegmentReader(path) as r:  # the header is intact, so opening works
        with pytest.raises(CorruptionError) as exc:
            r.read_block(block)
        msg = str(exc.value)
        assert str(path) in msg and f"block {block} ({b.kind})" in msg and "checksum mismatch" in msg
        assert f"offset {b.offset}" in msg
        with pytest.raises(CorruptionError, match=rf"block {block} \({b.kind}\)"):
            r.verify()
        # other blocks are unaffected
        other = next(i for i in _FLIP_BLOCKS if i != block)
        np.testing.assert_array_equal(r.read_block(other), _blocks()[other][1])


def test_bit_flip_in_block_padding_is_caught_by_verify(tmp_path: Path, pristine) -> None:
    data, blocks = pristine
    path = tmp_path / "pad.drift"
    path.write_bytes(data)
    b = blocks[0]  # 37 * 24 bytes: the rest of its page is padding
    _flip_bit(path, b.offset + b.nbytes + 10)
    with SegmentReader(path) as r:
        np.testing.assert_array_equal(r.read_block(0), _blocks()[0][1])
        with pytest.raises(CorruptionError, match=r"block 0 \(codes\): non-zero padding"):
            r.verify()


# -- corruption of the header / file -------------------------------------------------------------
@pytest.mark.parametrize(
    "offset",
    [
        12,  # dim
        16,  # segment_id
        24,  # n_blocks
        40,  # meta_len
        44,  # header_crc itself
        48 + 3,  # block table: kind of block 0
        48 + 64 + 40,  # block table: offset of block 1
        48 + 64 * 9 + 2,  # meta JSON
        PAGE_SIZE - 1,  # zero padding at the end of the header page
    ],
)
def test_corrupted_header_is_refused(tmp_path: Path, pristine, offset: int) -> None:
    data, _ = pristine
    path = tmp_path / "hdr.drift"
    path.write_bytes(data)
    _flip_bit(path, offset, bit=3)
    with pytest.raises(CorruptionError, match=rf"{path}: header checksum mismatch"):
        SegmentReader(path)


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (28, "header_size|truncated|header checksum"),
        (29, "not a page multiple"),
        (30, "truncated"),
        (32, "header checksum mismatch"),
    ],
)
def test_corrupted_size_fields_are_refused(tmp_path: Path, pristine, offset: int, message: str) -> None:
    data, _ = pristine
    path = tmp_path / "size.drift"
    path.write_bytes(data)
    _flip_bit(path, offset, bit=4)
    with pytest.raises(CorruptionError, match=rf"{path}: .*({message})"):
        SegmentReader(path)


def test_wrong_magic_is_refused(tmp_path: Path, pristine) -> None:
    data, _ = pristine
    path = tmp_path / "magic.drift"
    path.write_bytes(b"NOTDRIFT" + data[8:])
    with pytest.raises(CorruptionError, match=rf"{path}: bad magic b'NOTDRIFT'.*not a drift segment"):
        SegmentReader(path)
    path.write_bytes(b"\0" * PAGE_SIZE)
    with pytest.raises(CorruptionError, match="bad magic"):
        SegmentReader(path)


def test_unsupported_version_is_refused(tmp_path: Path, pristine) -> None:
    data, _ = pristine
    path = tmp_path / "v.drift"
    path.write_bytes(data[:8] + (2).to_bytes(2, "little") + data[10:])
    with pytest.raises(CorruptionError, match=rf"{path}: unsupported segment format version 2"):
        SegmentReader(path)


@pytest.mark.parametrize("keep", [0, 10, 100, PAGE_SIZE, PAGE_SIZE + 1, "last-page", "one-byte"])
def test_truncated_file_is_refused(tmp_path: Path, pristine, keep) -> None:
    data, _ = pristine
    size = {"last-page": len(data) - PAGE_SIZE, "one-byte": len(data) - 1}.get(keep, keep)
    path = tmp_path / "trunc.drift"
    path.write_bytes(data[:size])
    with pytest.raises(CorruptionError, match=rf"{path}: .*truncated"):
        SegmentReader(path)


def test_block_outside_the_file_is_refused(tmp_path: Path) -> None:
    # A well-formed header (valid checksum) whose block table points past the end of the file.
    path = tmp_path / "bounds.drift"
    info = _write(path, [("a", np.arange(10, dtype=np.int64))])
    raw = bytearray(path.read_bytes())
    off_field = 48 + 48  # offset u64 inside entry 0
    raw[off_field : off_field + 8] = (info.file_size).to_bytes(8, "little")
    raw[44:48] = b"\0\0\0\0"
    raw[44:48] = crc32c(raw[:PAGE_SIZE]).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match=r"block 0 \(a\) at offset \d+, 80 bytes, lies outside"):
        SegmentReader(path)


# -- writer lifecycle ---------------------------------------------------------------------------
def test_exception_inside_with_aborts(tmp_path: Path) -> None:
    path = tmp_path / "x.drift"
    with pytest.raises(RuntimeError, match="boom"), SegmentWriter(path, segment_id=1, dim=4) as w:
        w.add_block("a", np.zeros((3, 4), dtype=np.float32))
        assert os.path.exists(str(path) + ".tmp")
        raise RuntimeError("boom")
    assert not os.path.exists(path) and not os.path.exists(str(path) + ".tmp")


def test_abort_is_idempotent_and_leaving_without_finish_discards(tmp_path: Path) -> None:
    path = tmp_path / "y.drift"
    w = SegmentWriter(path, segment_id=1, dim=4)
    w.add_block("a", np.zeros(5, dtype=np.uint8))
    w.abort()
    w.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(InvalidArgumentError, match="aborted"):
        w.add_block("b", np.zeros(5, dtype=np.uint8))
    with SegmentWriter(path, segment_id=1, dim=4) as w2:
        w2.add_block("a", np.zeros(5, dtype=np.uint8))
    assert os.listdir(tmp_path) == []


def test_writer_refuses_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "z.drift"
    with pytest.raises(InvalidArgumentError, match="JSON"):
        SegmentWriter(path, segment_id=1, dim=4, meta={"x": object()})
    with SegmentWriter(path, segment_id=1, dim=4) as w:
        for kind, arr in [
            ("", np.zeros(3)),
            ("k" * 17, np.zeros(3)),
            ("naïve", np.zeros(3)),
            ("cube", np.zeros((2, 2, 2))),
            ("scalar", np.float32(1.0)),
            ("objects", np.array([object()])),
            ("strings", np.array(["a", "b"])),
        ]:
            with pytest.raises(InvalidArgumentError, match=str(path)):
                w.add_block(kind, arr)
        w.finish()
    with pytest.raises(FileExistsError):
        SegmentWriter(path, segment_id=2, dim=4)
    with pytest.raises(InvalidArgumentError):
        SegmentWriter(tmp_path / "n.drift", segment_id=-1, dim=4)


def test_reader_index_and_close(tmp_path: Path) -> None:
    path = tmp_path / "c.drift"
    _write(path, [("a", np.arange(4, dtype=np.int64))])
    r = SegmentReader(path)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        r.read_block(1)
    r.close()
    r.close()
    with pytest.raises(InvalidArgumentError, match="closed"):
        r.read_block(0)


def test_concurrent_readers_share_one_reader(tmp_path: Path) -> None:
    path = tmp_path / "t.drift"
    _write(path)
    expected = _blocks()
    reads: list[int] = []
    with SegmentReader(path) as r:

        def work(seed: int) -> None:
            rng = np.random.default_rng(seed)
            n = 0
            for i in rng.integers(0, len(expected), size=200):
                np.testing.assert_array_equal(r.read_block(int(i)), expected[int(i)][1])
                n += 1
            reads.append(n)

        group = ThreadGroup()
        for s in range(6):
            group.start(work, s)
        group.join()  # every reader ended, none raised (a mismatch is re-raised here)
    assert reads == [200] * 6


# -- process boundaries -------------------------------------------------------------------------
def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_crash_before_finish_leaves_only_tmp(tmp_path: Path) -> None:
    proc = _run(
        """
        import os, numpy as np
        from drift_engine.storage.segment import SegmentWriter
        w = SegmentWriter("seg.drift", segment_id=9, dim=8)
        w.add_block("vectors", np.ones((100, 8), dtype=np.float32))
        os._exit(3)  # crash: no finish, no abort, no cleanup
        """,
        tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["seg.drift.tmp"]
    with pytest.raises(FileExistsError):  # O_EXCL: the owner must clear stale .tmp files first
        SegmentWriter(tmp_path / "seg.drift", segment_id=9, dim=8)


def test_finished_segment_is_readable_in_another_process(tmp_path: Path) -> None:
    proc = _run(
        """
        import numpy as np
        from drift_engine.storage.segment import SegmentWriter
        with SegmentWriter("seg.drift", segment_id=5, dim=3, meta={"k": [1, 2]}) as w:
            w.add_block("vectors", np.arange(30, dtype=np.float32).reshape(10, 3))
            w.add_block("ids", np.arange(-5, 5, dtype=np.int64))
            w.finish()
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["seg.drift"]
    with SegmentReader(tmp_path / "seg.drift") as r:
        r.verify()
        assert (r.segment_id, r.dim, r.meta) == (5, 3, {"k": [1, 2]})
        np.testing.assert_array_equal(r.read_block(0), np.arange(30, dtype=np.float32).reshape(10, 3))
        np.testing.assert_array_equal(r.read_block(1), np.arange(-5, 5, dtype=np.int64))
    # and the other way round: a fresh process opens what this one wrote
    _write(tmp_path / "mine.drift")
    proc = _run(
        """
        from drift_engine.storage.segment import SegmentReader
        with SegmentReader("mine.drift") as r:
            r.verify()
            print(r.segment_id, len(r.blocks), int(r.read_block(1).sum()))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["42", str(len(_blocks())), str(int(_blocks()[1][1].sum()))]
