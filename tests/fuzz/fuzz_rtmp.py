"""Fuzz targets for what an RTMP publisher sends: handshake, chunk stream, AMF0, FLV tags, H.264
(avcC, AVCC frames, SPS, Annex B), and one whole RTMPServerProtocol on a fake transport.

Targets that feed a stream take a first control byte that picks the read size (so incremental
parsing is fuzzed too; 0xFF is one read), then the bytes. Seeds were captured from ffmpeg and
GStreamer publishing a one-second 64x48 clip to our own server (what it received after
the handshake), plus crafted cases from the hardening issue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.fuzz import target
from tests.unit.fakes import publish_now
from wcs.guard import describe
from wcs.media import h264
from wcs.media.h264 import H264Error
from wcs.rtmp import amf0, flv
from wcs.rtmp.amf0 import AMF0Error
from wcs.rtmp.chunks import BufferBudget, ChunkDecoder, ChunkError
from wcs.rtmp.flv import FLVError
from wcs.rtmp.handshake import HANDSHAKE_SIZE, HandshakeError, ServerHandshake
from wcs.rtmp.protocol import (
    IDLE_TIMEOUT,
    MAX_AGGREGATE_TAGS,
    MAX_NALS_PER_FRAME,
    ProtocolViolation,
    RTMPServerFactory,
    RTMPServerProtocol,
)
from wcs.streams import StreamHub

# What the protocol's layer guard turns into "close this connection": the parsers' documented
# errors. Anything else escaping the unguarded dataReceived is a bug a peer can reach.
PEER_ERRORS = (ChunkError, AMF0Error, FLVError, H264Error, HandshakeError, ProtocolViolation)

CLIENT_HANDSHAKE = (
    b"\x03"
    + bytes(8)
    + bytes((i * 7 + 3) % 256 for i in range(HANDSHAKE_SIZE - 8))
    + bytes((i * 13 + 1) % 256 for i in range(HANDSHAKE_SIZE))
)
ADDR = IPv4Address("TCP", "127.0.0.1", 50000)


def reads(data: bytes) -> Iterator[bytes]:
    """Split `data[1:]` into reads of a size chosen by `data[0]` (0xFF: one read)."""
    if not data:
        return
    body = data[1:]
    step = len(body) if data[0] == 0xFF else 1 + data[0] * 7
    for start in range(0, len(body), max(step, 1)):
        yield body[start : start + step]


@target("rtmp_handshake")
def rtmp_handshake(data: bytes) -> None:
    hs = ServerHandshake(random_bytes=bytes, uptime_ms=lambda: 1234)
    sent = b""
    fed = 0
    with contextlib.suppress(HandshakeError):
        for chunk in reads(data):
            fed += len(chunk)
            out, done, rest = hs.feed(chunk)
            sent += out
            if done:
                # C0 + C1 + C2 consumed, the rest handed on to the chunk stream.
                assert fed - len(rest) == 1 + 2 * HANDSHAKE_SIZE
                assert len(sent) == 1 + 2 * HANDSHAKE_SIZE
                assert hs.done
                return
        assert len(sent) in (0, 1 + 2 * HANDSHAKE_SIZE)


@target("rtmp_chunks")
def rtmp_chunks(data: bytes) -> None:
    budget = BufferBudget(1 << 20)
    decoder = ChunkDecoder(
        max_message_size=64 * 1024, max_chunk_streams=8, max_buffered=96 * 1024, budget=budget
    )
    try:
        for chunk in reads(data):
            for message in decoder.feed(chunk, max_messages=2000):
                assert len(message.payload) <= decoder.max_message_size
            assert decoder.buffered == budget.used <= decoder.max_buffered
    except ChunkError:
        pass
    decoder.close()
    assert budget.used == 0


@target("amf0")
def amf0_decode(data: bytes) -> None:
    try:
        values = amf0.decode(data)
    except AMF0Error:
        return
    # Whatever decodes can be encoded back (the server echoes names and objects).
    amf0.encode(*values)


@target("flv")
def flv_tags(data: bytes) -> None:
    with contextlib.suppress(FLVError):
        flv.video_codec_name(flv.parse_video(data))
    with contextlib.suppress(FLVError):
        flv.audio_codec_name(flv.parse_audio(data))
    try:
        tags = flv.split_aggregate(data, max_tags=MAX_AGGREGATE_TAGS)
    except FLVError:
        return
    for type_id, _, body in tags:
        assert 0 <= type_id < 32
        with contextlib.suppress(FLVError):
            flv.parse_video(body) if type_id == 9 else flv.parse_audio(body)


@target("h264")
def h264_parsers(data: bytes) -> None:
    for length_size in (1, 2, 4):
        with contextlib.suppress(H264Error):
            nals = h264.split_avcc(data, length_size, max_nals=MAX_NALS_PER_FRAME)
            assert all(nals) and len(nals) <= MAX_NALS_PER_FRAME
            h264.contains_idr(nals)
    with contextlib.suppress(H264Error):
        config = h264.parse_avcc(data)
        assert config.length_size in (1, 2, 4)
        for sps in config.sps:
            with contextlib.suppress(H264Error):
                h264.parse_sps(sps)
    with contextlib.suppress(H264Error):
        info = h264.parse_sps(data)
        assert 0 < info.width * info.height <= h264.MAX_PICTURE_PIXELS
        h264.codec_string(info)
    nals = h264.split_annexb(data)
    with contextlib.suppress(H264Error):
        h264.with_parameter_sets(data, data[:32])
    assert all(nals)
    assert h264.unescape_rbsp(h264.escape_rbsp(data)) == data


class _Protocol(RTMPServerProtocol):
    """Records the reason it was dropped for, instead of only logging it."""

    reasons: list[str]

    def drop(self, reason: str, *, flush: bool = False) -> None:
        self.reasons.append(reason)
        super().drop(reason, flush=flush)


@target("rtmp_protocol")
def rtmp_protocol(data: bytes) -> None:
    clock = Clock()
    hub = StreamHub(max_picture_pixels=1920 * 1088)
    taken = publish_now(hub, "taken", "Flash")  # a publish of this name is refused (BadName)
    factory = RTMPServerFactory(hub, clock=clock, max_buffer=4 * 1024 * 1024)
    proto = _Protocol(hub, clock=clock, buffer_budget=factory.buffer_budget)
    proto.reasons = []
    proto.factory = factory
    transport = StringTransport(peerAddress=ADDR)
    proto.makeConnection(transport)
    unguarded = RTMPServerProtocol.dataReceived.__wrapped__  # type: ignore[attr-defined]
    # The handshake is spent here, so the fuzzer's bytes all go to the chunk stream.
    for chunk in [CLIENT_HANDSHAKE, *reads(data)]:
        try:
            unguarded(proto, chunk)
        except PEER_ERRORS as err:
            proto.drop(describe(err))  # as the guard does
        clock.advance(0.01)
    assert len(proto.reasons) <= 1
    clock.advance(IDLE_TIMEOUT + 1)
    assert transport.disconnecting
    proto.connectionLost()
    assert factory.connections == 0
    assert factory.buffer_budget.used == 0
    assert proto.stream is None
    assert hub.all() == [taken]
