"""xray_site.request_body: gunicorn's request body read in 64 KiB blocks gives the same bytes as
gunicorn's own 1 KiB reads, in far fewer rounds, for every body reader gunicorn has."""
from __future__ import annotations

import random
import socket

import pytest
from gunicorn.http.body import Body, ChunkedReader, EOFReader, LengthReader
from gunicorn.http.unreader import IterUnreader, SocketUnreader

from xray_site import request_body

PAYLOAD = random.Random(7).randbytes(300_000)
ORIGINAL = Body.read


class Counting:
    def __init__(self, reader):
        self.reader, self.calls = reader, 0

    def read(self, size):
        self.calls += 1
        return self.reader.read(size)


def _socket_chunks(data: bytes, chunk: int = 8192):
    return [data[i:i + chunk] for i in range(0, len(data), chunk)]


def _chunked(data: bytes) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _socket_chunks(data, 5000))
    return out + b"0\r\n\r\n"


READERS = {
    "length": lambda: LengthReader(IterUnreader(_socket_chunks(PAYLOAD)), len(PAYLOAD)),
    "eof": lambda: EOFReader(IterUnreader(_socket_chunks(PAYLOAD))),
    "chunked": lambda: ChunkedReader(type("Req", (), {"trailers": []})(), IterUnreader(_socket_chunks(_chunked(PAYLOAD)))),
}


def _read_all(read, kind: str, sizes: list[int | None]) -> tuple[list[bytes], int]:
    counting = Counting(READERS[kind]())
    body = Body(counting)
    pieces = [read(body, size) for size in sizes]
    return pieces, counting.calls


@pytest.mark.parametrize("kind", sorted(READERS))
def test_the_same_bytes_as_gunicorns_own_read(kind):
    rng = random.Random(kind)
    sizes = [rng.choice([1, 100, 1023, 1024, 1025, 8192, 65536, 65537, 200_000]) for _ in range(12)] + [None]
    ours, our_calls = _read_all(request_body.read, kind, sizes)
    theirs, their_calls = _read_all(ORIGINAL, kind, sizes)
    assert ours == theirs
    assert b"".join(ours) == PAYLOAD
    if kind == "length":   # 1 KiB at a time: ~300 rounds; 64 KiB blocks: a handful
        assert their_calls > 250 and our_calls < 20, (their_calls, our_calls)


def test_a_whole_upload_in_a_few_rounds():
    counting = Counting(READERS["length"]())
    assert request_body.read(Body(counting), len(PAYLOAD)) == PAYLOAD and counting.calls <= 6


def test_installed_by_the_gunicorn_config(monkeypatch):
    """gunicorn.conf.py installs it (in the master, so every forked worker reads this way)."""
    import runpy
    from pathlib import Path

    monkeypatch.setattr(Body, "read", ORIGINAL)
    monkeypatch.setattr(SocketUnreader.__init__, "__defaults__", (8192,))   # gunicorn's own
    runpy.run_path(str(Path(request_body.__file__).parents[1] / "gunicorn.conf.py"))
    assert Body.read is request_body.read
    left, right = socket.socketpair()
    with left, right:   # the socket is read in 64 KiB: a whole film in a few receive calls
        assert SocketUnreader(left).mxchunk == request_body.BLOCK
        right.sendall(PAYLOAD[:120_000])
        reader, got = SocketUnreader(left), []
        while sum(map(len, got)) < 120_000:
            got.append(reader.read())
        assert b"".join(got) == PAYLOAD[:120_000] and len(got) <= 4, len(got)
