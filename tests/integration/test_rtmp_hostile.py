"""Hostile and faulty RTMP publishers against a real `twistd wcs` over loopback: each hostile
connection is closed with its reason logged (never a traceback), malformed media is dropped
while its publish goes on, and a healthy ffmpeg publisher keeps working throughout."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest

from tests.integration.conftest import (
    Clip,
    Server,
    decode_png,
    publish,
    publishing,
    read_until_closed,
)
from wcs.rtmp import amf0, chunks, flv
from wcs.rtmp.chunks import ChunkEncoder, Message

pytestmark = pytest.mark.integration

CSID_AUDIO, CSID_VIDEO, CSID_SOURCE = 4, 6, 8


class RawPublisher:
    """An RTMP publisher built from our own encoders, that sends whatever it is told to."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.ports["rtmp"]), timeout=15)
        self.enc = ChunkEncoder()

    def handshake(self) -> None:
        self.sock.sendall(b"\x03" + bytes(1536))
        got = b""
        while len(got) < 3073:
            chunk = self.sock.recv(65536)
            assert chunk, "server closed during the handshake"
            got += chunk
        self.sock.sendall(got[1:1537])

    def message(
        self, type_id: int, payload: bytes, csid: int, stream_id: int = 1, ts: int = 0
    ) -> bytes:
        return self.enc.encode(Message(csid, type_id, stream_id, ts, payload))

    def command(self, *values: object, csid: int = 3, stream_id: int = 0) -> bytes:
        return self.message(chunks.COMMAND_AMF0, amf0.encode(*values), csid, stream_id)

    def prelude(self, name: str) -> bytes:
        return b"".join(
            [
                self.command("connect", 1.0, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live"}),
                self.command("createStream", 2.0, None),
                self.command("publish", 3.0, None, name, "live", csid=CSID_SOURCE, stream_id=1),
            ]
        )

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the server may close before it has read it all
            self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def flv_file_tags(path: Path) -> list[tuple[int, int, bytes]]:
    """(type, timestamp, body) of every tag of an FLV file (its body is an aggregate's layout)."""
    data = path.read_bytes()
    return flv.split_aggregate(data[13:])


def flv_tag(type_id: int, ts: int, body: bytes) -> bytes:
    header = bytes((type_id,)) + len(body).to_bytes(3, "big")
    header += (ts & 0xFFFFFF).to_bytes(3, "big") + bytes((ts >> 24,)) + bytes(3)
    return header + body + (11 + len(body)).to_bytes(4, "big")


def hostile_cases(raw: RawPublisher) -> dict[str, tuple[bytes, str]]:
    """What each hostile client sends after the handshake, and the reason the server logs."""
    nested = flv_tag(chunks.AUDIO, 0, b"\xaf\x01aac")
    for _ in range(3000):
        nested = flv_tag(chunks.AGGREGATE, 0, nested)
    empty = bytes((CSID_AUDIO,)) + bytes(6) + bytes((chunks.AUDIO,)) + (1).to_bytes(4, "little")
    deep_amf0 = b"\x02\x00\x07connect\x00" + bytes(8) + b"\x03\x00\x01a" * 3000 + b"\x05"
    big_chunks = raw.enc.encode(chunks.set_chunk_size_message(65536))
    raw.enc.set_chunk_size(65536)
    # Three messages' first 3 MiB each (48 whole chunks: a 12-byte header, then a 1-byte header
    # before each further chunk): 9 MiB of partial messages.
    three_mib = 3 * 1024 * 1024
    partials = b"".join(
        raw.enc.encode(Message(csid, chunks.VIDEO, 1, 0, bytes(6 * 1024 * 1024)))[
            : 12 + three_mib + three_mib // 65536 - 1
        ]
        for csid in (4, 5, 6)
    )
    raw.enc.set_chunk_size(chunks.DEFAULT_CHUNK_SIZE)
    return {
        "nested aggregates": (
            raw.prelude("nest") + raw.message(chunks.AGGREGATE, nested, CSID_AUDIO),
            r"aggregate message holds a message of type 22",
        ),
        "chunk size 1": (
            raw.enc.encode(chunks.set_chunk_size_message(1)),
            r"invalid chunk size 1: below the minimum of 128",
        ),
        "empty message flood": (
            empty + bytes((0xC0 | CSID_AUDIO,)) * 200_000,
            r"more than 1000 messages per second",
        ),
        "deep AMF0": (
            raw.message(chunks.COMMAND_AMF0, deep_amf0, 3, 0),
            r"AMF0Error: AMF0 nesting deeper than 32 levels",
        ),
        "partial messages over the connection cap": (
            big_chunks + partials,
            r"bytes of partial messages exceed the limit of 8388608 per connection",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "nested aggregates",
        "chunk size 1",
        "empty message flood",
        "deep AMF0",
        "partial messages over the connection cap",
    ],
)
def test_hostile_publisher_is_closed_with_a_reason(
    case: str, server: Server, clips: dict[str, Clip]
) -> None:
    clip = clips["baseline"]
    with publishing(server, "steady", clip.path) as (first, _t0):
        mark = server.log_mark()
        raw = RawPublisher(server)
        try:
            raw.handshake()
            data, reason = hostile_cases(raw)[case]
            raw.send(data)
            read_until_closed(raw.sock)
        finally:
            raw.close()
        server.wait_for_log(r"RTMP .*: closing connection: .*" + reason, start=mark)
        assert first.poll() is None, "the healthy publisher must keep streaming"
        status, body = server.snapshot("steady")
        assert status == 200 and isinstance(body, dict)
        log = "\n".join(server.lines[mark:])
        assert "Traceback" not in log and "Unhandled" not in log, log


def test_malformed_media_is_dropped_and_the_publish_goes_on(
    server: Server, clips: dict[str, Clip]
) -> None:
    clip = clips["baseline"]
    tags = flv_file_tags(clip.path)
    header = next(body for t, _, body in tags if t == chunks.VIDEO and body[1] == 0)
    frames = [(ts, body) for t, ts, body in tags if t == chunks.VIDEO and body[1] == 1]
    mark = server.log_mark()
    raw = RawPublisher(server)
    try:
        raw.handshake()
        raw.send(raw.prelude("flaky"))
        server.wait_for_log(r"publishing flaky ", start=mark)

        def video(body: bytes, ts: int = 0) -> bytes:
            return raw.message(chunks.VIDEO, body, CSID_VIDEO, ts=ts)

        bad_frame = b"\x27\x01\x00\x00\x00" + b"\x00\x00\x10\x00abc"  # NAL length past it
        bad_headers = [
            header[:15],  # truncated avcC
            header[:10] + b"\xff" + header[11:],  # 31 SPS declared
            header[:9] + b"\xfe" + header[10:],  # lengthSize 3
        ]
        data = video(header) + video(bad_frame) + b"".join(video(b) for b in bad_headers)
        # A valid sequence header again, then 1.5 s of the clip.
        data += video(header) + b"".join(video(b, ts) for ts, b in frames[:45])
        raw.send(data)
        server.wait_for_log(r"stream flaky: dropping malformed media", start=mark)
        server.wait_for_log(r"RTMP .*: flaky video H.264 1280x720", start=mark)
        status, body = server.snapshot("flaky")
        assert status == 200 and isinstance(body, dict), body
        assert decode_png(body["data"]).shape == (720, 1280, 3)
        log = "\n".join(server.lines[mark:])
        assert "closing connection" not in log, log
        assert log.count("dropping malformed media") == 1, log
    finally:
        raw.close()


def test_refused_publish_reaches_ffmpeg(server: Server, clips: dict[str, Clip]) -> None:
    """NetStream.Publish.BadName is written before the close, so ffmpeg can print it."""
    clip = clips["baseline"]
    with publishing(server, "taken", clip.path) as (first, _t0):
        second = publish(server.rtmp("taken"), clip.path)
        _, stderr = second.communicate(timeout=30)
        assert second.returncode != 0
        assert "Server error: Stream name is already in use" in stderr.decode(), stderr
        assert first.poll() is None, "the first publisher must keep streaming"
        status, _ = server.snapshot("taken")
        assert status == 200
