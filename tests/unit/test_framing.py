"""Frames on a stream socket: ``FrameReader`` (the direct server's reader) and the client's ``_read_frame``
return exactly the frames sent, however the bytes are split or batched, and say when the peer closed."""

from __future__ import annotations

import socket
import threading

import pytest

from drift_engine.server.directclient import _read_frame
from drift_engine.server.framing import HEADER, FrameReader


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def _send_in_pieces(sock: socket.socket, data: bytes, piece: int) -> None:
    for i in range(0, len(data), piece):
        sock.sendall(data[i : i + piece])


@pytest.mark.parametrize("piece", [1, 3, 7, 4096, 1 << 20])
def test_frame_reader_returns_each_frame_however_the_bytes_arrive(piece: int) -> None:
    bodies = [b"", b"a", b"hello" * 3, bytes(range(256)) * 5, b"x" * 40_000, b"tail"]
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=_send_in_pieces, args=(a, b"".join(_frame(x) for x in bodies), piece))
        sender.start()
        reader = FrameReader(b, size=64)  # a small buffer: frames straddle refills, one is larger than it
        got = []
        for _ in bodies:
            n = reader.header()
            assert n is not None
            got.append(reader.body(n))
        sender.join()
        a.close()
        assert got == bodies
        assert reader.header() is None  # closed between frames: no error


def test_frame_reader_says_when_the_peer_closes_inside_a_frame() -> None:
    a, b = socket.socketpair()
    with b:
        a.sendall(HEADER.pack(10) + b"abc")
        a.close()
        reader = FrameReader(b)
        assert reader.header() == 10
        with pytest.raises(ConnectionError):
            reader.body(10)
    a, b = socket.socketpair()
    with b:
        a.sendall(b"\x01\x00")  # half a header
        a.close()
        with pytest.raises(ConnectionError):
            FrameReader(b).header()


@pytest.mark.parametrize("size", [0, 5, 16_000, 100_000])
def test_client_reads_one_reply_frame_of_any_size(size: int) -> None:
    a, b = socket.socketpair()
    with a, b:
        body = bytes(i % 251 for i in range(size))
        sender = threading.Thread(target=_send_in_pieces, args=(a, _frame(body), 1000))
        sender.start()
        assert _read_frame(b) == body
        sender.join()


def test_client_refuses_a_second_frame_behind_the_reply_and_a_closed_connection() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(_frame(b"one") + _frame(b"two"))
        with pytest.raises(ConnectionError, match="more than one"):
            _read_frame(b)
    a, b = socket.socketpair()
    with b:
        a.close()
        with pytest.raises(ConnectionError, match="closed"):
            _read_frame(b)
