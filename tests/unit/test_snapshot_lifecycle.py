"""An ended publish is freed by reference counting alone (issue #6, finding 1): with the garbage
collector off, no Stream, FrameSource, decoder, codec context or decoded frame of ended streams
stays alive, through the hub and snapshot code and through a real RTMP connection."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import pytest
from av.video.frame import VideoFrame
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.unit.fakes import publish_now, result_now
from tests.unit.media_fixtures import flv_clip, h264_sample, png_rgb
from tests.unit.snapshot_env import Env
from wcs.media.decoder import DecodedFrame, StreamDecoder
from wcs.rtmp import amf0, chunks
from wcs.rtmp.chunks import ChunkEncoder, Message
from wcs.rtmp.handshake import HANDSHAKE_SIZE
from wcs.rtmp.protocol import RTMPServerFactory, RTMPServerProtocol
from wcs.snapshot.auto import AutoStream
from wcs.snapshot.service import FrameSource
from wcs.streams import PROVIDER_RTMP, Stream

STREAMS = 6
WATCHED: tuple[type, ...] = (
    Stream,
    FrameSource,
    StreamDecoder,
    AutoStream,
    DecodedFrame,
    VideoFrame,
    av.CodecContext,
    RTMPServerProtocol,
)


def alive() -> Counter[str]:
    """Objects of the watched kinds the garbage collector could find right now."""
    return Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, WATCHED))


@pytest.fixture
def media() -> None:
    """Made before the baseline is counted: the cached reference pictures hold VideoFrames."""
    h264_sample(bframes=True)
    flv_clip()


@pytest.fixture
def no_gc(media: None) -> Iterator[Callable[[], Counter[str]]]:
    """The collector off for the test; yields a function giving what it leaves alive."""
    gc.collect()
    before = alive()
    gc.disable()
    try:
        yield lambda: alive() - before
    finally:
        gc.enable()


class Publisher:
    """A front-end's publisher connection: like the real ones, it and its stream refer to each
    other (on_terminate, keyframe_requester)."""

    def __init__(self, env: Env, name: str) -> None:
        self.dropped = False
        self.stream = publish_now(env.hub, name, PROVIDER_RTMP, on_terminate=lambda: self.drop())
        self.stream.keyframe_requester = self.request_keyframe

    def drop(self) -> None:
        self.dropped = True

    def request_keyframe(self) -> None:
        pass


def test_ended_streams_and_their_decoders_are_freed_without_gc(
    tmp_path: Path, no_gc: Callable[[], Counter[str]]
) -> None:
    sample = h264_sample(bframes=True)
    env = Env(tmp_path, rate=10, retention=3)
    publishers = []
    for i in range(STREAMS):
        publisher = Publisher(env, f"cam{i}")
        publishers.append(publisher)
        for n, unit in enumerate(sample.units[: 20 + 10 * i]):
            publisher.stream.push(unit)
            if n in (5, 17):
                png_rgb(result_now(env.snapshots.take(f"cam{i}")))
    # Some streams also get an on-demand snapshot pending at the end, one is terminated.
    pending = env.snapshots.take("cam0")
    assert no_gc()["StreamDecoder"] == STREAMS
    assert no_gc()["CodecContext"] + no_gc()["VideoCodecContext"] == STREAMS
    for publisher in publishers[1:]:
        publisher.stream.end()
    publishers[0].stream.terminate()
    assert publishers[0].dropped
    pending.addErrback(lambda f: None)
    del publisher, pending
    publishers.clear()
    assert len(env.hub) == 0 and env.auto.streams == {}
    assert len(list((tmp_path / "cam5").iterdir())) == 3
    left = no_gc()
    assert left == Counter(), f"still alive after the streams ended: {dict(left)}"


def rtmp_session(name: str) -> bytes:
    """Handshake, connect/createStream/publish, then every tag of a real FLV file."""
    enc = ChunkEncoder()

    def message(csid: int, type_id: int, stream_id: int, ts: int, payload: bytes) -> bytes:
        return enc.encode(Message(csid, type_id, stream_id, ts, payload))

    parts = [b"\x03" + bytes(2 * HANDSHAKE_SIZE)]
    parts.append(enc.encode(chunks.set_chunk_size_message(4096)))
    enc.set_chunk_size(4096)
    for stream_id, values in (
        (0, ("connect", 1.0, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live"})),
        (0, ("createStream", 2.0, None)),
        (1, ("publish", 3.0, None, name, "live")),
    ):
        parts.append(message(3, chunks.COMMAND_AMF0, stream_id, 0, amf0.encode(*values)))
    for tag in flv_clip():
        csid = {chunks.AUDIO: 4, chunks.VIDEO: 6}.get(tag.kind, 8)
        parts.append(message(csid, tag.kind, 1, tag.timestamp, tag.payload))
    return b"".join(parts)


def test_ended_rtmp_publishes_are_freed_without_gc(
    tmp_path: Path, no_gc: Callable[[], Counter[str]]
) -> None:
    env = Env(tmp_path, rate=10, retention=3)
    factory = RTMPServerFactory(env.hub, clock=Clock())
    for i in range(STREAMS):
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + i))
        proto.makeConnection(StringTransport())
        proto.dataReceived(rtmp_session(f"cam{i}"))
        assert env.hub.get(f"cam{i}") is not None
        png_rgb(result_now(env.snapshots.take(f"cam{i}")))
        if i % 2:
            proto.connectionLost(Failure(ConnectionDone()))
        else:
            env.hub.get(f"cam{i}").terminate()  # type: ignore[union-attr]
            assert proto.transport.disconnecting or proto._dropping  # type: ignore[union-attr]
            proto.connectionLost(Failure(ConnectionDone()))
    del proto
    assert len(env.hub) == 0
    written = sorted(p.name for p in (tmp_path / "cam0").iterdir())
    assert written == ["000001.png", "000002.png", "000003.png"]
    left = no_gc()
    assert left == Counter(), f"still alive after the connections closed: {dict(left)}"
