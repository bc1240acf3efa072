"""RTMPServerProtocol over a StringTransport with a Clock: a publisher session as ffmpeg plays it,
built with our own chunk/AMF0 encoders and real H.264 from ffmpeg; limits, timeouts, errors."""

from __future__ import annotations

import functools
import gc
import weakref
from dataclasses import dataclass

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent
from twisted.python.failure import Failure

from tests.unit.fakes import PendingDirectory, PendingHooks, RecordingReader, result_now
from tests.unit.media_fixtures import flv_tag, h264_sample
from wcs import streams
from wcs.access import FAILURE_DELAY, INFO_BAD_PASSWORD, Access
from wcs.media import h264
from wcs.media.units import MediaUnit
from wcs.rest.views import stream_json
from wcs.rtmp import amf0, chunks, flv
from wcs.rtmp.chunks import ChunkDecoder, ChunkEncoder, Message
from wcs.rtmp.handshake import HANDSHAKE_SIZE
from wcs.rtmp.protocol import (
    AMF0_BYTES_PER_TOKEN,
    CLOSE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_AGGREGATE_TAGS,
    MAX_BAD_MEDIA_RUN,
    MAX_CHUNK_STREAMS,
    MAX_CONNECTION_BUFFER,
    MAX_CONNECTIONS,
    MAX_HELD_MESSAGES,
    MAX_MESSAGE_SIZE,
    MESSAGE_BURST,
    MESSAGE_RATE,
    OUT_CHUNK_SIZE,
    WINDOW_ACK_SIZE,
    RTMPServerFactory,
    RTMPServerProtocol,
)
from wcs.streams import Stream, StreamHub

ADDR = IPv4Address("TCP", "127.0.0.1", 50000)
WRAP = 1 << 32
# ffmpeg's chunk stream ids (libavformat/rtmppkt.h).
CSID_NETWORK, CSID_SYSTEM, CSID_AUDIO, CSID_VIDEO, CSID_SOURCE = 2, 3, 4, 6, 8

C1 = b"\x00\x00\x12\x34" + bytes(4) + bytes((i * 7 + 3) % 256 for i in range(HANDSHAKE_SIZE - 8))
C2 = bytes((i * 13 + 1) % 256 for i in range(HANDSHAKE_SIZE))
SERVER_HANDSHAKE = 1 + 2 * HANDSHAKE_SIZE


# -- the client side: bytes an encoder sends ------------------------------------------------------


class Client:
    """Builds what an RTMP publisher sends, with our ChunkEncoder (fmt 0 + fmt 3 chunks)."""

    def __init__(self) -> None:
        self.enc = ChunkEncoder()

    @staticmethod
    def handshake() -> bytes:
        return b"\x03" + C1 + C2

    def message(
        self, type_id: int, payload: bytes, *, csid: int, stream_id: int = 1, ts: int = 0
    ) -> bytes:
        return self.enc.encode(Message(csid, type_id, stream_id, ts, payload))

    def set_chunk_size(self, n: int) -> bytes:
        out = self.enc.encode(chunks.set_chunk_size_message(n))
        self.enc.set_chunk_size(n)
        return out

    def command(self, *values: object, csid: int = CSID_SYSTEM, stream_id: int = 0) -> bytes:
        return self.message(
            chunks.COMMAND_AMF0, amf0.encode(*values), csid=csid, stream_id=stream_id
        )

    def publish_prelude(self, name: str = "cam1?token=x") -> bytes:
        """Everything ffmpeg sends from connect to publish (it waits for answers in between)."""
        return b"".join(
            [
                self.set_chunk_size(4096),
                self.command(
                    "connect",
                    1.0,
                    {
                        "app": "live",
                        "type": "nonprivate",
                        "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)",
                        "tcUrl": "rtmp://127.0.0.1:1935/live",
                    },
                ),
                self.command("releaseStream", 2.0, None, name),
                self.command("FCPublish", 3.0, None, name),
                self.command("createStream", 4.0, None),
                self.command("publish", 5.0, None, name, "live", csid=CSID_SOURCE, stream_id=1),
            ]
        )

    def metadata(self) -> bytes:
        meta = amf0.ECMAArray(
            {
                "duration": 0.0,
                "width": 320.0,
                "height": 240.0,
                "videocodecid": 7.0,
                "framerate": 30.0,
                "encoder": "Lavf61.7.100",
            }
        )
        payload = amf0.encode("@setDataFrame", "onMetaData", meta)
        return self.message(chunks.DATA_AMF0, payload, csid=CSID_SOURCE)

    def video(self, ts: int, payload: bytes) -> bytes:
        return self.message(chunks.VIDEO, payload, csid=CSID_VIDEO, ts=ts)

    def audio(self, ts: int, payload: bytes) -> bytes:
        return self.message(chunks.AUDIO, payload, csid=CSID_AUDIO, ts=ts)


def video_tag(keyframe: bool, packet_type: int, cts: int, body: bytes) -> bytes:
    """FLV AVC video tag body: frame type / codec 7, AVCPacketType, signed 24-bit cts."""
    first = (0x10 if keyframe else 0x20) | 7
    return bytes((first, packet_type)) + cts.to_bytes(3, "big", signed=True) + body


def avcc_frame(nals: list[bytes], length_size: int = 4) -> bytes:
    return b"".join(len(n).to_bytes(length_size, "big") + n for n in nals)


AAC_CONFIG = b"\x12\x10"  # AAC-LC, 44.1 kHz, stereo


def aac_tag(packet_type: int, body: bytes) -> bytes:
    return bytes((0xAF, packet_type)) + body


# -- real H.264 from ffmpeg ---------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    sps: bytes
    pps: bytes
    frames: tuple[tuple[int, int, bool, tuple[bytes, ...]], ...]  # (dts ms, cts ms, key, NALs)


@functools.cache
def media(count: int = 8) -> Media:
    sample = h264_sample()
    units = sample.units[:count]
    first = h264.split_annexb(units[0].data)
    sps = next(n for n in first if h264.nal_type(n) == h264.NAL_SPS)
    pps = next(n for n in first if h264.nal_type(n) == h264.NAL_PPS)
    base = units[0].dts
    frames = []
    for unit in units:
        dts_ms = 1000 + round((unit.dts - base) * unit.time_base * 1000)
        pts_ms = 1000 + round((unit.pts - base) * unit.time_base * 1000)
        nals = tuple(h264.split_annexb(unit.data))
        frames.append((dts_ms, pts_ms - dts_ms, unit.keyframe, nals))
    return Media(sps, pps, tuple(frames))


def sequence_header(m: Media) -> bytes:
    return video_tag(True, 0, 0, h264.build_avcc([m.sps], [m.pps]))


def expected_units(m: Media) -> list[MediaUnit]:
    return [
        MediaUnit("video", "H264", dts + cts, dts, key, h264.to_annexb(nals))
        for dts, cts, key, nals in m.frames
    ]


def full_session(client: Client) -> bytes:
    m = media()
    parts = [client.handshake(), client.publish_prelude(), client.metadata()]
    parts.append(client.video(0, sequence_header(m)))
    for dts, cts, key, nals in m.frames:
        parts.append(client.video(dts, video_tag(key, 1, cts, avcc_frame(list(nals)))))
    return b"".join(parts)


# -- the server side ----------------------------------------------------------------------------


class Harness:
    """One server connection on a StringTransport; decodes what the server writes."""

    def __init__(
        self, hub: StreamHub | None = None, factory: RTMPServerFactory | None = None
    ) -> None:
        self.hub = hub if hub is not None else StreamHub()
        self.factory = factory or RTMPServerFactory(self.hub, clock=Clock())
        clock = self.factory.clock
        assert isinstance(clock, Clock)
        self.clock = clock
        self.proto: RTMPServerProtocol = self.factory.buildProtocol(ADDR)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.client = Client()
        self.sink = RecordingReader()
        self.hub.add_observer(self._observe)
        self.server_handshake = b""
        self._out = bytearray()
        self._decoder = ChunkDecoder()
        self._streams: list[Stream] = []

    def _observe(self, stream: Stream) -> None:
        # Only this connection's publish (a shared hub tells every harness).
        if self.proto.stream is None and not self._streams:
            self._streams.append(stream)
            self.sink.attach(stream)

    def feed(self, data: bytes, *, bytewise: bool = False) -> None:
        if bytewise:
            for i in range(len(data)):
                self.proto.dataReceived(data[i : i + 1])
        else:
            self.proto.dataReceived(data)

    def received(self) -> list[Message]:
        """Server messages written since the last call (the handshake reply is set aside)."""
        self._out += self.transport.value()
        self.transport.clear()
        if not self.server_handshake:
            if len(self._out) < SERVER_HANDSHAKE:
                return []
            self.server_handshake = bytes(self._out[:SERVER_HANDSHAKE])
            del self._out[:SERVER_HANDSHAKE]
        data = bytes(self._out)
        self._out.clear()
        return self._decoder.feed(data)

    def handshake(self) -> None:
        self.feed(self.client.handshake())
        assert self.received() == []
        assert self.server_handshake

    def publish(self, name: str = "cam1?token=x") -> list[Message]:
        self.handshake()
        self.feed(self.client.publish_prelude(name))
        return self.received()

    @property
    def dropped(self) -> bool:
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


def commands(messages: list[Message]) -> list[list[object]]:
    return [amf0.decode(m.payload) for m in messages if m.type_id == chunks.COMMAND_AMF0]


def statuses(messages: list[Message]) -> list[dict[str, object]]:
    out = []
    for values in commands(messages):
        if values[0] == "onStatus":
            info = values[3]
            assert isinstance(info, dict)
            out.append(info)
    return out


# -- the full publisher session -----------------------------------------------------------------


def run_session(bytewise: bool) -> tuple[Harness, list[Message]]:
    h = Harness()
    h.feed(full_session(h.client), bytewise=bytewise)
    return h, h.received()


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-feed", "byte-by-byte"])
def test_publisher_session(bytewise: bool) -> None:
    h, messages = run_session(bytewise)
    assert not h.dropped

    # S0 + S1 + S2: version 3, S2 echoes C1 (its time and random bytes).
    hs = h.server_handshake
    assert len(hs) == 1 + 2 * HANDSHAKE_SIZE
    assert hs[0] == 3
    s1, s2 = hs[1 : 1 + HANDSHAKE_SIZE], hs[1 + HANDSHAKE_SIZE :]
    assert s1[4:8] == bytes(4)
    assert s2[:4] == C1[:4]
    assert s2[8:] == C1[8:]

    # connect: Window Ack Size, Set Peer Bandwidth, Set Chunk Size, then _result.
    control = [(m.type_id, m.payload) for m in messages[:3]]
    assert control == [
        (chunks.WINDOW_ACK_SIZE, WINDOW_ACK_SIZE.to_bytes(4, "big")),
        (chunks.SET_PEER_BANDWIDTH, WINDOW_ACK_SIZE.to_bytes(4, "big") + b"\x02"),
        (chunks.SET_CHUNK_SIZE, OUT_CHUNK_SIZE.to_bytes(4, "big")),
    ]
    assert all(m.csid == 2 and m.stream_id == 0 for m in messages[:3])
    cmds = commands(messages)
    connect_result = cmds[0]
    assert connect_result[:2] == ["_result", 1.0]
    info = connect_result[3]
    assert isinstance(info, dict)
    assert info["code"] == "NetConnection.Connect.Success"
    assert info["level"] == "status"
    # releaseStream, FCPublish, createStream (stream id 1).
    assert cmds[1][:3] == ["_result", 2.0, None]
    assert cmds[2][0] == "onFCPublish"
    assert cmds[3] == ["_result", 4.0, None, 1.0]
    # publish: Stream Begin 1, then onStatus NetStream.Publish.Start on stream 1.
    begin = [m for m in messages if m.type_id == chunks.USER_CONTROL]
    assert [chunks.parse_user_control(m.payload) for m in begin] == [(chunks.STREAM_BEGIN, (1,))]
    on_status = [m for m in messages if m.type_id == chunks.COMMAND_AMF0][-1]
    assert on_status.stream_id == 1
    assert cmds[4][:3] == ["onStatus", 0.0, None]
    status = statuses(messages)
    assert len(status) == 1
    assert status[0]["level"] == "status"
    assert status[0]["code"] == "NetStream.Publish.Start"
    assert len(cmds) == 5

    # The stream: name without the query, provider Flash, H.264 params from the SPS.
    stream = h.hub.get("cam1")
    assert stream is not None
    assert h.hub.get("cam1?token=x") is None
    assert stream.provider == "Flash"
    assert stream.status == "PUBLISHING"
    assert stream.video is not None
    m = media()
    assert (stream.video.codec, stream.video.width, stream.video.height) == ("H264", 320, 240)
    assert stream.video.extradata == h264.to_annexb([m.sps, m.pps])
    assert stream.video.profile == h264.codec_string(h264.parse_sps(m.sps))
    assert stream.has_video and not stream.has_audio

    # Media units: Annex B, pts = dts + cts, keyframe flags; B-frames give pts != dts.
    units = h.sink.units
    assert units == expected_units(m)
    assert any(u.pts != u.dts for u in units)
    assert [u.keyframe for u in units] == [True] + [False] * (len(units) - 1)
    assert all(u.data.startswith(b"\x00\x00\x00\x01") for u in units)
    assert stream.gop is not None and stream.gop.units == units


def test_one_feed_and_byte_by_byte_give_the_same_result() -> None:
    whole, whole_messages = run_session(False)
    single, single_messages = run_session(True)
    assert whole.sink.units == single.sink.units
    assert whole_messages == single_messages
    a, b = whole.hub.get("cam1"), single.hub.get("cam1")
    assert a is not None and b is not None
    assert a.video == b.video
    skip = {"mediaSessionId", "createDate"}
    assert {k: v for k, v in stream_json(a).items() if k not in skip} == {
        k: v for k, v in stream_json(b).items() if k not in skip
    }


def test_server_output_is_a_valid_chunk_stream_at_its_chunk_size() -> None:
    # Larger than one outgoing chunk: the connect answer must be re-chunked at OUT_CHUNK_SIZE.
    h = Harness()
    h.handshake()
    h.feed(h.client.command("connect", 1.0, {"app": "x" * (OUT_CHUNK_SIZE + 100)}))
    messages = h.received()
    assert [m.type_id for m in messages][-1] == chunks.COMMAND_AMF0
    assert commands(messages)[0][:2] == ["_result", 1.0]


# -- audio, unpublish, disconnect ---------------------------------------------------------------


def test_aac_audio() -> None:
    h = Harness()
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    data = h.client.audio(0, aac_tag(0, AAC_CONFIG))
    data += h.client.audio(23, aac_tag(1, b"raw-aac-1"))
    data += h.client.audio(46, aac_tag(1, b"raw-aac-2"))
    h.feed(data, bytewise=True)
    assert not h.dropped
    assert stream.has_audio
    assert stream.audio_codec == "AAC"
    assert stream_json(stream)["hasAudio"] is True
    assert stream_json(stream)["audioCodec"] == "AAC"
    assert h.sink.units == [
        MediaUnit("audio", "AAC", 23, 23, True, b"raw-aac-1"),
        MediaUnit("audio", "AAC", 46, 46, True, b"raw-aac-2"),
    ]
    assert stream.gop is None  # audio is never cached for snapshots


@pytest.mark.parametrize("command", ["FCUnpublish", "deleteStream", "closeStream"])
def test_unpublish_ends_the_stream(command: str) -> None:
    h = Harness()
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    args: tuple[object, ...] = (None, "cam1") if command == "FCUnpublish" else (None, 1.0)
    h.feed(h.client.command(command, 6.0, *args))
    assert stream.ended
    assert stream.end_reason == "Stopped by publisher stop"
    assert h.hub.get("cam1") is None
    assert len(h.sink.ended) == 1
    status = statuses(h.received())
    assert [s["code"] for s in status] == ["NetStream.Unpublish.Success"]
    assert not h.dropped
    # ffmpeg sends FCUnpublish then deleteStream: the second one is a no-op.
    h.feed(h.client.command("deleteStream", 7.0, None, 1.0))
    assert statuses(h.received()) == []
    h.lose()
    assert len(h.sink.ended) == 1


def test_connection_lost_mid_publish_ends_the_stream() -> None:
    h = Harness()
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    assert h.factory.connections == 1
    h.lose()
    assert stream.ended
    assert stream.end_reason == "Stopped by publisher stop"
    assert h.hub.get("cam1") is None
    assert len(h.sink.ended) == 1
    assert h.factory.connections == 0
    assert h.clock.getDelayedCalls() == []


def test_republish_after_disconnect_is_a_new_stream() -> None:
    hub = StreamHub()
    first = Harness(hub)
    first.publish()
    old = hub.get("cam1")
    first.lose()
    second = Harness(hub)
    second.publish()
    new = hub.get("cam1")
    assert old is not None and new is not None and new is not old
    assert new.media_session_id != old.media_session_id
    assert not second.dropped


def test_second_publish_of_a_taken_name_is_refused() -> None:
    hub = StreamHub()
    first = Harness(hub)
    first.publish()
    stream = hub.get("cam1")
    assert stream is not None

    second = Harness(hub, first.factory)
    messages = second.publish("cam1?other=1")
    status = statuses(messages)
    assert len(status) == 1
    assert status[0]["level"] == "error"
    assert status[0]["code"] == "NetStream.Publish.BadName"
    assert status[0]["description"] == "Stream name is already in use"
    assert second.dropped
    assert second.proto.stream is None

    # The first publisher is untouched, even after the refused connection goes away.
    second.lose()
    assert hub.get("cam1") is stream
    assert not stream.ended
    assert not first.dropped
    m = media()
    first.feed(first.client.video(0, sequence_header(m)))
    dts, cts, key, nals = m.frames[0]
    first.feed(first.client.video(dts, video_tag(key, 1, cts, avcc_frame(list(nals)))))
    assert first.sink.units == expected_units(m)[:1]
    assert first.factory.connections == 1


@pytest.mark.parametrize("name", ["a/b", "..", ".", "..?token=1", "a\\b", "", "?token=1"])
def test_invalid_names_are_refused(name: str) -> None:
    h = Harness()
    status = statuses(h.publish(name))
    assert len(status) == 1
    assert status[0]["code"] == "NetStream.Publish.BadName"
    assert status[0]["level"] == "error"
    assert status[0]["description"] == "Invalid stream name"
    assert h.dropped
    assert len(h.hub) == 0


def test_terminate_from_the_server_drops_the_publisher() -> None:
    h = Harness()
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    stream.terminate()
    assert h.dropped
    assert stream.ended and stream.end_reason == "Stopped by server"
    h.lose()
    assert stream.end_reason == "Stopped by server"
    assert len(h.sink.ended) == 1


def test_second_publish_on_one_connection_drops_it() -> None:
    h = Harness()
    h.publish()
    h.feed(h.client.command("publish", 6.0, None, "cam2", "live", csid=CSID_SOURCE, stream_id=1))
    assert h.dropped
    assert h.hub.get("cam2") is None


# -- timeouts and limits ------------------------------------------------------------------------


def test_handshake_timeout_drops_the_connection() -> None:
    h = Harness()
    h.clock.advance(HANDSHAKE_TIMEOUT - 0.5)
    assert not h.dropped
    h.clock.advance(0.5)
    assert h.dropped
    assert h.transport.value() == b""


def test_handshake_timeout_after_a_partial_handshake() -> None:
    h = Harness()
    h.feed(b"\x03" + C1)  # C0 + C1 answered, C2 never comes
    assert len(h.transport.value()) == SERVER_HANDSHAKE
    h.clock.advance(HANDSHAKE_TIMEOUT)
    assert h.dropped


def test_idle_timeout_after_the_handshake() -> None:
    h = Harness()
    h.handshake()
    h.clock.advance(HANDSHAKE_TIMEOUT + 1)
    assert not h.dropped
    h.clock.advance(IDLE_TIMEOUT - HANDSHAKE_TIMEOUT - 2)
    assert not h.dropped
    h.feed(h.client.message(chunks.USER_CONTROL, b"\x00\x06\x00\x00\x00\x01", csid=2))
    h.clock.advance(IDLE_TIMEOUT - 1)
    assert not h.dropped  # data reset the idle timer
    h.clock.advance(1)
    assert h.dropped


def test_idle_timeout_ends_a_publish_once_the_connection_is_lost() -> None:
    h = Harness()
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    h.clock.advance(IDLE_TIMEOUT)
    assert h.dropped
    h.lose()
    assert stream.ended and stream.end_reason == "Stopped by publisher stop"


@pytest.mark.parametrize("version", [0, 6, ord("G"), 0xFF])
def test_bad_version_byte_drops_at_once(version: int) -> None:
    h = Harness()
    h.feed(bytes((version,)))
    assert h.dropped
    assert h.transport.value() == b""
    h.feed(C1)  # anything after the drop is ignored
    assert h.transport.value() == b""
    assert h.clock.getDelayedCalls() == []


def test_chunk_stream_error_drops() -> None:
    h = Harness()
    h.handshake()
    # fmt 1 on chunk stream 5, which has never had a fmt 0 chunk.
    h.feed(b"\x45" + bytes(7), bytewise=True)
    assert h.dropped


def test_message_over_max_message_size_drops() -> None:
    h = Harness()
    h.handshake()
    header = bytes((0x06,)) + bytes(3) + (MAX_MESSAGE_SIZE + 1).to_bytes(3, "big")
    header += bytes((chunks.VIDEO,)) + (1).to_bytes(4, "little")
    h.feed(header, bytewise=True)
    assert h.dropped


def test_message_of_exactly_max_message_size_is_accepted() -> None:
    h = Harness()
    h.handshake()
    header = bytes((0x06,)) + bytes(3) + MAX_MESSAGE_SIZE.to_bytes(3, "big")
    header += bytes((chunks.VIDEO,)) + (1).to_bytes(4, "little")
    h.feed(header + bytes(1000))
    assert not h.dropped


def test_too_many_chunk_streams_drops() -> None:
    h = Harness()
    h.handshake()
    # A complete 1-byte message on each of MAX_CHUNK_STREAMS + 1 chunk streams.
    data = b"".join(
        h.client.message(chunks.AUDIO, b"\xaf", csid=csid)
        for csid in range(3, 3 + MAX_CHUNK_STREAMS)
    )
    h.feed(data)
    assert not h.dropped
    h.feed(h.client.message(chunks.AUDIO, b"\xaf", csid=3 + MAX_CHUNK_STREAMS))
    assert h.dropped


def test_connection_limit() -> None:
    hub = StreamHub()
    factory = RTMPServerFactory(hub, clock=Clock())
    factory.connections = MAX_CONNECTIONS - 1
    ok = Harness(hub, factory)
    assert not ok.dropped
    over = Harness(hub, factory)
    assert over.dropped
    over.lose()
    ok.lose()
    assert factory.connections == MAX_CONNECTIONS - 1


def test_bad_amf_command_drops() -> None:
    h = Harness()
    h.handshake()
    h.feed(h.client.message(chunks.COMMAND_AMF0, b"\x02\x00\x10ab", csid=3, stream_id=0))
    assert h.dropped


# -- control messages ---------------------------------------------------------------------------


def test_ping_request_gets_a_ping_response() -> None:
    h = Harness()
    h.handshake()
    h.feed(h.client.enc.encode(chunks.user_control_message(chunks.PING_REQUEST, 123456)))
    messages = h.received()
    assert [chunks.parse_user_control(m.payload) for m in messages] == [
        (chunks.PING_RESPONSE, (123456,))
    ]
    assert messages[0].type_id == chunks.USER_CONTROL and messages[0].csid == 2


def test_acknowledgements_after_the_client_window() -> None:
    h = Harness()
    h.handshake()
    window = 1000
    data = h.client.enc.encode(chunks.window_ack_size_message(window))
    for i in range(40):
        data += h.client.audio(i * 23, aac_tag(1, bytes(100)))
    acks: list[tuple[int, int]] = []  # (bytes fed, acknowledged sequence number)
    for fed in range(1, len(data) + 1):
        h.feed(data[fed - 1 : fed])
        for m in h.received():
            assert m.type_id == chunks.ACKNOWLEDGEMENT
            acks.append((fed, chunks.parse_uint32(m.payload)))
    assert len(acks) == len(data) // window
    assert acks == [(n * window, n * window) for n in range(1, len(acks) + 1)]


def test_no_acknowledgements_without_a_client_window() -> None:
    h = Harness()
    h.handshake()
    h.feed(b"".join(h.client.audio(i, aac_tag(1, bytes(1000))) for i in range(10)))
    assert h.received() == []


def test_unknown_commands_are_ignored_and_play_is_refused() -> None:
    h = Harness()
    h.handshake()
    h.feed(h.client.command("_checkbw", 9.0, None))
    assert h.received() == []
    h.feed(h.client.command("play", 10.0, None, "cam1", csid=CSID_SOURCE, stream_id=1))
    assert [s["code"] for s in statuses(h.received())] == ["NetStream.Play.Failed"]
    assert not h.dropped


def test_media_before_publish_is_ignored() -> None:
    h = Harness()
    h.handshake()
    m = media()
    h.feed(h.client.video(0, sequence_header(m)) + h.client.audio(0, aac_tag(1, b"x")))
    assert not h.dropped
    assert len(h.hub) == 0


def test_frames_before_the_sequence_header_are_skipped() -> None:
    h = Harness()
    h.publish()
    m = media()
    dts, cts, key, nals = m.frames[0]
    frame = video_tag(key, 1, cts, avcc_frame(list(nals)))
    h.feed(h.client.video(dts, frame))
    assert h.sink.units == []
    h.feed(h.client.video(0, sequence_header(m)) + h.client.video(dts, frame))
    assert h.sink.units == expected_units(m)[:1]


# -- aggregates and timestamps ------------------------------------------------------------------


def test_aggregate_message_is_split_with_rebased_timestamps() -> None:
    h = Harness()
    h.publish()
    m = media()
    h.feed(h.client.video(0, sequence_header(m)))
    frames = m.frames[:3]
    tags = b""
    for dts, cts, key, nals in frames:
        # Tag timestamps in the aggregate are on another clock (here +50 s).
        tags += flv_tag(chunks.VIDEO, 50_000 + dts, video_tag(key, 1, cts, avcc_frame(list(nals))))
    tags += flv_tag(chunks.AUDIO, 50_000 + frames[0][0] + 10, aac_tag(1, b"aac"))
    aggregate_ts = 7000
    h.feed(
        h.client.message(chunks.AGGREGATE, tags, csid=CSID_VIDEO, ts=aggregate_ts), bytewise=True
    )
    assert not h.dropped
    shift = aggregate_ts - frames[0][0]
    expected = [
        MediaUnit("video", "H264", u.pts + shift, u.dts + shift, u.keyframe, u.data)
        for u in expected_units(m)[:3]
    ]
    expected.append(MediaUnit("audio", "AAC", aggregate_ts + 10, aggregate_ts + 10, True, b"aac"))
    assert h.sink.units == expected


def test_video_timestamps_wrap_at_2_32() -> None:
    h = Harness()
    h.publish()
    m = media()
    h.feed(h.client.video(WRAP - 200, sequence_header(m)))
    sent = [WRAP - 100, WRAP - 50, 10, 60, 110]
    frames = m.frames[: len(sent)]
    for ts, (_, cts, key, nals) in zip(sent, frames, strict=True):
        h.feed(h.client.video(ts, video_tag(key, 1, cts, avcc_frame(list(nals)))), bytewise=True)
    dts = [u.dts for u in h.sink.units]
    assert dts == [WRAP - 100, WRAP - 50, WRAP + 10, WRAP + 60, WRAP + 110]
    assert [u.pts - u.dts for u in h.sink.units] == [cts for _, cts, _, _ in frames]


def test_timestamps_wrap_with_interleaved_audio_and_video() -> None:
    # BUG (wcs/rtmp/protocol.py, _Timeline): audio and video share one unwrapper that only
    # recognises a backwards jump as a wrap. When audio lags video across the 2**32 point (the
    # video tag after the wrap arrives before the last audio tag of the old lap), the late audio
    # tag looks like a 49-day jump forward and every later unit gets another 2**32 added.
    h = Harness()
    h.publish()
    m = media()
    h.feed(h.client.video(WRAP - 100, sequence_header(m)))
    _, _, _, key_nals = m.frames[0]
    _, _, _, p_nals = m.frames[1]
    h.feed(h.client.video(WRAP - 40, video_tag(True, 1, 0, avcc_frame(list(key_nals)))))
    h.feed(h.client.audio(WRAP - 60, aac_tag(1, b"a1")))
    h.feed(h.client.video(WRAP - 7, video_tag(False, 1, 0, avcc_frame(list(p_nals)))))
    h.feed(h.client.video(26, video_tag(False, 1, 0, avcc_frame(list(p_nals)))))  # wrapped
    h.feed(h.client.audio(WRAP - 37, aac_tag(1, b"a2")))  # audio still on the old lap
    h.feed(h.client.audio(WRAP - 14, aac_tag(1, b"a3")))
    h.feed(h.client.video(59, video_tag(False, 1, 0, avcc_frame(list(p_nals)))))
    h.feed(h.client.audio(9, aac_tag(1, b"a4")))
    got = [(u.kind, u.dts) for u in h.sink.units]
    assert got == [
        ("video", WRAP - 40),
        ("audio", WRAP - 60),
        ("video", WRAP - 7),
        ("video", WRAP + 26),
        ("audio", WRAP - 37),
        ("audio", WRAP - 14),
        ("video", WRAP + 59),
        ("audio", WRAP + 9),
    ]


def test_negative_composition_time() -> None:
    h = Harness()
    h.publish()
    m = media()
    h.feed(h.client.video(0, sequence_header(m)))
    _, _, key, nals = m.frames[0]
    h.feed(h.client.video(5000, video_tag(key, 1, -33, avcc_frame(list(nals)))))
    assert [(u.pts, u.dts) for u in h.sink.units] == [(4967, 5000)]


def test_two_byte_nal_lengths_from_the_sequence_header() -> None:
    h = Harness()
    h.publish()
    m = media()
    h.feed(h.client.video(0, video_tag(True, 0, 0, h264.build_avcc([m.sps], [m.pps], 2))))
    dts, cts, key, nals = m.frames[1]
    h.feed(h.client.video(dts, video_tag(key, 1, cts, avcc_frame(list(nals), 2))))
    assert h.sink.units == [expected_units(m)[1]]


# == hostile and faulty input (the hardening issue) ============================================


def drop_reasons(events: list[LogEvent]) -> list[str]:
    return [
        e["reason"] for e in events if e.get("log_format", "").startswith("RTMP {peer}: closing")
    ]


def failures(events: list[LogEvent]) -> list[LogEvent]:
    """Tracebacks logged at any level: peer input must never produce one."""
    return [e for e in events if "log_failure" in e]


def ue(value: int) -> str:
    code = value + 1
    return "0" * (code.bit_length() - 1) + format(code, "b")


def baseline_sps(width_mbs: int, height_mbs: int) -> bytes:
    """A minimal baseline-profile SPS NAL unit of (width_mbs x height_mbs) macroblocks."""
    bits = format(66, "08b") + "00000000" + format(31, "08b")  # profile, constraints, level
    bits += ue(0) + ue(0) + ue(0) + ue(0) + ue(1) + "0"  # id, frame num, poc, refs, gaps
    bits += ue(width_mbs - 1) + ue(height_mbs - 1) + "1" + "1" + "0" + "0"  # no crop, no VUI
    bits += "1"
    bits += "0" * (-len(bits) % 8)
    return b"\x67" + h264.escape_rbsp(int(bits, 2).to_bytes(len(bits) // 8, "big"))


def publish_with_video(h: Harness) -> Stream:
    """Publish and send one good sequence header and GOP; return the stream."""
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    m = media()
    h.feed(h.client.video(0, sequence_header(m)))
    for dts, cts, key, nals in m.frames:
        h.feed(h.client.video(dts, video_tag(key, 1, cts, avcc_frame(list(nals)))))
    assert stream.gop is not None
    return stream


def good_gop_later(h: Harness, stream: Stream, *, resend_header: bool, shift: int) -> None:
    """Good frames (after a new sequence header if asked) make a snapshot-able GOP again."""
    m = media()
    if resend_header:
        h.feed(h.client.video(shift, sequence_header(m)))
    before = len(h.sink.units)
    for dts, cts, key, nals in m.frames:
        h.feed(h.client.video(dts + shift, video_tag(key, 1, cts, avcc_frame(list(nals)))))
    assert not h.dropped
    pushed = [
        MediaUnit("video", "H264", u.pts + shift, u.dts + shift, u.keyframe, u.data)
        for u in expected_units(m)
    ]
    assert h.sink.units[before:] == pushed
    gop = stream.gop
    assert gop is not None and gop.units == pushed and gop.units[0].keyframe
    assert gop.params.extradata == h264.to_annexb([m.sps, m.pps])


def avcc_record(m: Media) -> bytes:
    return h264.build_avcc([m.sps], [m.pps])


def bad_headers() -> dict[str, bytes]:
    m = media()
    record = avcc_record(m)
    sps_len = len(m.sps)
    thirty_one = record[:5] + bytes((0xE0 | 31,)) + record[6:]
    past_the_tag = record[:6] + (0xFFFF).to_bytes(2, "big") + record[8:]
    length_size_3 = record[:4] + bytes((0xFC | 2,)) + record[5:]
    assert record[6:8] == sps_len.to_bytes(2, "big")
    return {
        "truncated avcC": record[:10],
        "31 SPS declared": thirty_one,
        "SPS length past the tag": past_the_tag,
        "lengthSize 3": length_size_3,
        "no PPS": h264.build_avcc([m.sps], []),
        "truncated SPS": h264.build_avcc([b"\x67\x42\x00\x1e"], [m.pps]),
    }


BAD_HEADERS = [
    "truncated avcC",
    "31 SPS declared",
    "SPS length past the tag",
    "lengthSize 3",
    "no PPS",
    "truncated SPS",
]
BAD_FRAMES = [
    "NAL length past the end",
    "truncated NAL length",
    "unescaped start code in a NAL",
    "too many NAL units",
    "truncated AVC video header",
]


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_malformed_sequence_header_is_dropped_and_the_publish_goes_on(
    case: str, log_events: list[LogEvent]
) -> None:
    h = Harness()
    stream = publish_with_video(h)
    h.feed(h.client.video(5000, video_tag(True, 0, 0, bad_headers()[case])))
    assert not h.dropped
    assert stream.rejected_units == 1
    # The frames that follow need the refused parameters: dropped (not counted), and the GOP
    # from before the encoder changed is no longer served.
    assert stream.gop is None
    before = len(h.sink.units)
    m = media()
    for dts, cts, key, nals in m.frames:
        h.feed(h.client.video(5000 + dts, video_tag(key, 1, cts, avcc_frame(list(nals)))))
    assert len(h.sink.units) == before
    assert stream.gop is None
    assert stream.rejected_units == 1
    good_gop_later(h, stream, resend_header=True, shift=20_000)
    assert not failures(log_events)


def bad_frames() -> dict[str, bytes]:
    m = media()
    _, _, _, nals = m.frames[1]
    frame = avcc_frame(list(nals))
    return {
        "NAL length past the end": video_tag(False, 1, 0, frame + b"\x00\x00\x10\x00abc"),
        "truncated NAL length": video_tag(False, 1, 0, frame + b"\x00\x00"),
        "unescaped start code in a NAL": video_tag(
            False, 1, 0, avcc_frame([nals[0] + b"\x00\x00\x01\x65"])
        ),
        "too many NAL units": video_tag(False, 1, 0, bytes(4 * 2000)),
        "truncated AVC video header": bytes((0x27, 0x01, 0x00)),
    }


@pytest.mark.parametrize("case", BAD_FRAMES)
def test_malformed_frame_is_dropped_and_the_publish_goes_on(
    case: str, log_events: list[LogEvent]
) -> None:
    h = Harness()
    stream = publish_with_video(h)
    pushed = len(h.sink.units)
    h.feed(h.client.video(5000, bad_frames()[case]))
    assert not h.dropped
    assert stream.rejected_units == 1
    assert len(h.sink.units) == pushed
    # The parameters still hold: later frames go on without a new sequence header.
    good_gop_later(h, stream, resend_header=False, shift=20_000)
    [warning] = [e for e in log_events if "dropping malformed media" in e.get("log_format", "")]
    assert warning["reason"].startswith(("H.264 frame: ", "video message: "))
    assert not failures(log_events)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(bytes((0xAF,)), id="truncated AAC header"),
        pytest.param(bytes((0x9F, 0x01, 0x02)), id="truncated enhanced audio header"),
    ],
)
def test_malformed_audio_is_dropped_and_the_publish_goes_on(payload: bytes) -> None:
    h = Harness()
    stream = publish_with_video(h)
    h.feed(h.client.audio(100, aac_tag(0, AAC_CONFIG)) + h.client.audio(123, payload))
    assert not h.dropped
    assert stream.rejected_units == 1
    h.feed(h.client.audio(146, aac_tag(1, b"aac")))
    assert h.sink.units[-1] == MediaUnit("audio", "AAC", 146, 146, True, b"aac")
    good_gop_later(h, stream, resend_header=False, shift=20_000)


def test_malformed_aggregate_is_dropped_and_the_publish_goes_on() -> None:
    h = Harness()
    stream = publish_with_video(h)
    tag = flv_tag(chunks.AUDIO, 0, aac_tag(1, b"aac"))
    h.feed(h.client.message(chunks.AGGREGATE, tag[:-10], csid=CSID_AUDIO))
    too_many = tag * (MAX_AGGREGATE_TAGS + 1)
    h.feed(h.client.message(chunks.AGGREGATE, too_many, csid=CSID_AUDIO))
    assert not h.dropped
    assert stream.rejected_units == 2
    h.feed(h.client.message(chunks.AGGREGATE, tag * MAX_AGGREGATE_TAGS, csid=CSID_AUDIO))
    assert not h.dropped
    good_gop_later(h, stream, resend_header=False, shift=20_000)


def test_a_long_run_of_bad_frames_closes_the_connection(log_events: list[LogEvent]) -> None:
    h = Harness()
    stream = publish_with_video(h)
    bad = h.client.video(5000, bad_frames()["NAL length past the end"])
    m = media()
    _, _, _, nals = m.frames[1]
    good = h.client.video(5000, video_tag(False, 1, 0, avcc_frame(list(nals))))
    # A good frame in between starts the count again.
    h.feed(bad * (MAX_BAD_MEDIA_RUN - 1) + good + bad * (MAX_BAD_MEDIA_RUN - 1))
    assert not h.dropped
    assert stream.rejected_units == 2 * (MAX_BAD_MEDIA_RUN - 1)
    h.feed(bad)
    assert h.dropped
    [reason] = drop_reasons(log_events)
    assert reason.startswith(f"ProtocolViolation: {MAX_BAD_MEDIA_RUN} malformed media messages")
    assert not failures(log_events)


# -- #2: the picture size limit -----------------------------------------------------------------


def test_sps_over_the_pixel_limit_refuses_the_video_not_the_connection(
    log_events: list[LogEvent],
) -> None:
    h = Harness()
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    m = media()
    huge = baseline_sps(1000, 1000)  # 16000x16000
    assert h264.parse_sps(huge, max_pixels=16000 * 16000).width == 16000
    h.feed(h.client.audio(0, aac_tag(0, AAC_CONFIG)) + h.client.audio(10, aac_tag(1, b"a1")))
    h.feed(h.client.video(20, video_tag(True, 0, 0, h264.build_avcc([huge], [m.pps]))))
    for dts, cts, key, nals in m.frames:
        h.feed(h.client.video(dts, video_tag(key, 1, cts, avcc_frame(list(nals)))))
    h.feed(h.client.audio(2000, aac_tag(1, b"a2")))
    assert not h.dropped
    # No decoder parameters, no GOP, no video unit: nothing could open a decoder for it.
    assert stream.video is None
    assert stream.gop is None
    assert [(u.kind, u.data) for u in h.sink.units] == [("audio", b"a1"), ("audio", b"a2")]
    assert stream.rejected_units == 1
    [warning] = [e for e in log_events if "dropping malformed media" in e.get("log_format", "")]
    assert "16000x16000 is larger than the limit" in warning["reason"]


@pytest.mark.parametrize("limit", [320 * 240 - 1, 320 * 240])
def test_the_streams_pixel_limit_is_the_one_applied(limit: int) -> None:
    h = Harness(StreamHub(max_picture_pixels=limit))
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    h.feed(h.client.video(0, sequence_header(media())))
    assert not h.dropped
    accepted = limit >= 320 * 240
    assert (stream.video is not None) is accepted
    assert stream.rejected_units == (0 if accepted else 1)


# -- #3: what connections may buffer ------------------------------------------------------------

BIG_CHUNK = 65536


def partial_message(client: Client, csid: int, nbytes: int) -> bytes:
    """The first `nbytes` of a MAX_MESSAGE_SIZE video message on `csid` (chunk size BIG_CHUNK)."""
    full = client.enc.encode(Message(csid, chunks.VIDEO, 1, 0, bytes(MAX_MESSAGE_SIZE)))
    chunks_needed = -(-nbytes // BIG_CHUNK)
    # fmt 0 header (12 bytes), then a 1-byte fmt 3 header before each further chunk.
    return full[: 12 + nbytes + (chunks_needed - 1)]


def test_one_connection_cannot_buffer_more_than_its_cap(log_events: list[LogEvent]) -> None:
    h = Harness()
    h.handshake()
    h.feed(h.client.set_chunk_size(BIG_CHUNK))
    each = 2 * 1024 * 1024 + BIG_CHUNK  # four of these are more than MAX_CONNECTION_BUFFER
    for csid in (4, 5, 6):
        h.feed(partial_message(h.client, csid, each))
    assert not h.dropped
    assert h.factory.buffer_budget.used == 3 * each
    h.feed(partial_message(h.client, 7, each))
    assert h.dropped
    [reason] = drop_reasons(log_events)
    assert reason.endswith(f"exceed the limit of {MAX_CONNECTION_BUFFER} per connection")
    assert reason.startswith("ChunkError: ")
    # Its bytes go back to the server-wide budget at once.
    assert h.factory.buffer_budget.used == 0


def test_all_connections_together_cannot_buffer_more_than_the_server_budget(
    log_events: list[LogEvent],
) -> None:
    hub = StreamHub()
    factory = RTMPServerFactory(hub, clock=Clock(), max_buffer=7 * 1024 * 1024)
    first, second, third = (Harness(hub, factory) for _ in range(3))
    for h in (first, second, third):
        h.handshake()
        h.feed(h.client.set_chunk_size(BIG_CHUNK))
    four_mib = 4 * 1024 * 1024
    first.feed(partial_message(first.client, 6, four_mib))
    second.feed(partial_message(second.client, 6, four_mib))
    assert not first.dropped
    assert second.dropped
    [reason] = drop_reasons(log_events)
    assert reason == (
        "ChunkError: server-wide buffer for partial messages (7340032 bytes) is used up"
    )
    assert factory.buffer_budget.used == four_mib
    # When the first connection's message completes, its bytes are free for others.
    rest = MAX_MESSAGE_SIZE - four_mib
    tail = b"".join(b"\xc6" + bytes(min(BIG_CHUNK, rest - i)) for i in range(0, rest, BIG_CHUNK))
    first.feed(tail)
    assert not first.dropped
    assert factory.buffer_budget.used == 0
    third.feed(partial_message(third.client, 6, four_mib))
    assert not third.dropped
    for h in (first, second, third):
        h.lose()
    assert factory.buffer_budget.used == 0


# -- #5: aggregates and nesting -----------------------------------------------------------------


def test_nested_aggregates_are_refused_without_recursion(log_events: list[LogEvent]) -> None:
    h = Harness()
    h.publish()
    body = flv_tag(chunks.AUDIO, 0, aac_tag(1, b"aac"))
    for _ in range(3000):
        body = flv_tag(chunks.AGGREGATE, 0, body)
    h.feed(h.client.message(chunks.AGGREGATE, body, csid=CSID_AUDIO))
    assert h.dropped
    assert drop_reasons(log_events) == [
        "ProtocolViolation: aggregate message holds a message of type 22 "
        "(only audio, video and data messages may be aggregated)"
    ]
    assert not failures(log_events)
    assert h.sink.units == []


def test_aggregate_carrying_a_command_is_refused(log_events: list[LogEvent]) -> None:
    h = Harness()
    h.publish()
    command = amf0.encode("deleteStream", 6.0, None, 1.0)
    h.feed(
        h.client.message(
            chunks.AGGREGATE, flv_tag(chunks.COMMAND_AMF0, 0, command), csid=CSID_AUDIO
        )
    )
    assert h.dropped
    [reason] = drop_reasons(log_events)
    assert "holds a message of type 20" in reason
    stream = h.hub.get("cam1")
    assert stream is not None and not stream.ended


@pytest.mark.parametrize("marker", [b"\x03\x00\x01a", b"\x08\x00\x00\x00\x01\x00\x01a"])
def test_deeply_nested_amf0_closes_with_an_amf0_error(
    marker: bytes, log_events: list[LogEvent]
) -> None:
    h = Harness()
    h.handshake()
    # 3000 nested objects (or ECMA arrays): each level is a property "a" holding the next.
    body = b"\x02\x00\x07connect" + b"\x00" + bytes(8) + marker * 3000 + b"\x05"
    h.feed(h.client.message(chunks.COMMAND_AMF0, body, csid=CSID_SYSTEM, stream_id=0))
    assert h.dropped
    [reason] = drop_reasons(log_events)
    assert reason.startswith("AMF0Error: AMF0 nesting deeper than 32 levels")
    assert not failures(log_events)


# -- #20 and CPU per byte -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 127])
def test_set_chunk_size_below_128_closes_the_connection(
    size: int, log_events: list[LogEvent]
) -> None:
    h = Harness()
    h.publish()
    h.feed(h.client.enc.encode(chunks.set_chunk_size_message(size)))
    assert h.dropped
    assert drop_reasons(log_events) == [
        f"ChunkError: invalid chunk size {size}: below the minimum of 128"
    ]


def test_set_chunk_size_128_is_accepted() -> None:
    h = Harness()
    h.handshake()
    h.feed(h.client.set_chunk_size(128) + h.client.publish_prelude())
    assert not h.dropped
    assert h.hub.get("cam1") is not None


def empty_messages(n: int) -> bytes:
    """n empty audio messages: one full header, then a 1-byte fmt 3 header each."""
    first = bytes((CSID_AUDIO,)) + bytes(3) + bytes(3) + bytes((chunks.AUDIO,))
    return first + (1).to_bytes(4, "little") + bytes((0xC0 | CSID_AUDIO,)) * (n - 1)


def test_a_flood_of_tiny_messages_closes_the_connection(log_events: list[LogEvent]) -> None:
    # 4 MB of empty messages took 21 s of CPU: a dispatch per byte.
    h = Harness()
    h.handshake()
    h.feed(empty_messages(MESSAGE_BURST))
    assert not h.dropped
    h.feed(empty_messages(2))
    assert h.dropped
    assert drop_reasons(log_events) == [
        f"ProtocolViolation: more than {MESSAGE_RATE:.0f} messages per second "
        f"(burst {MESSAGE_BURST})"
    ]


def test_an_encoders_message_rate_is_never_limited() -> None:
    h = Harness()
    h.handshake()
    # A backlog after a stall, then 30 s at twice a 60 fps stream's rate with audio.
    h.feed(empty_messages(MESSAGE_BURST - 1000))
    for _ in range(30):
        h.clock.advance(1)
        h.feed(empty_messages(int(MESSAGE_RATE) - 1))
    assert not h.dropped


def test_bulky_amf0_costs_like_many_messages(log_events: list[LogEvent]) -> None:
    h = Harness()
    h.handshake()
    # A command of 9000 nulls decodes 9000 values: 0.6 us per byte, not one dispatch.
    nulls = amf0.encode("_checkbw", 1.0, None) + b"\x05" * 9000
    command = h.client.message(chunks.COMMAND_AMF0, nulls, csid=CSID_SYSTEM, stream_id=0)
    allowed = MESSAGE_BURST // (1 + len(nulls) // AMF0_BYTES_PER_TOKEN)
    h.feed(command * allowed)
    assert not h.dropped
    h.feed(command)
    assert h.dropped
    assert "messages per second" in drop_reasons(log_events)[0]


# -- #22: the refusal reaches the client --------------------------------------------------------


def test_refused_publish_is_sent_then_closed_after_the_write() -> None:
    hub = StreamHub()
    first = Harness(hub)
    first.publish()
    second = Harness(hub)  # its own clock
    status = statuses(second.publish("cam1"))
    assert [s["code"] for s in status] == ["NetStream.Publish.BadName"]
    # Closed after the write (not reset under it): the encoder gets to read the refusal.
    assert second.transport.disconnecting
    assert not second.transport.disconnected
    # Input after the refusal is ignored.
    second.feed(second.client.command("publish", 6.0, None, "cam2", "live"))
    assert hub.get("cam2") is None and second.received() == []
    # A peer that does not read is aborted after CLOSE_TIMEOUT.
    second.clock.advance(CLOSE_TIMEOUT - 0.1)
    assert not second.transport.disconnected
    second.clock.advance(0.1)
    assert second.transport.disconnected
    second.lose()
    assert not first.dropped


def test_refused_publisher_that_reads_leaves_no_timer() -> None:
    hub = StreamHub()
    first = Harness(hub)
    first.publish()
    second = Harness(hub)  # its own clock
    second.publish("cam1")
    second.lose()  # the peer read everything and the close completed
    assert second.clock.getDelayedCalls() == []
    assert second.factory.connections == 0


# -- the layer guard ----------------------------------------------------------------------------


def test_any_error_from_peer_input_closes_only_that_connection(
    monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    hub = StreamHub()
    other = Harness(hub)
    other.publish("other")
    h = Harness(hub, other.factory)
    h.publish()

    def broken(payload: bytes) -> flv.AudioTag:
        raise IndexError("a bug a peer can reach")

    monkeypatch.setattr(flv, "parse_audio", broken)
    h.feed(h.client.audio(0, aac_tag(1, b"x")))  # must not raise
    assert h.dropped
    assert drop_reasons(log_events) == ["IndexError: a bug a peer can reach"]
    assert not other.dropped
    stream = hub.get("other")
    assert stream is not None and not stream.ended


ODD_COMMANDS: list[tuple[object, ...]] = [
    ("connect", 1.0, "not an object"),
    ("connect", 1.0, [1.0, 2.0]),
    ("connect", "txn", {"app": 12.0}),
    ("connect",),
    ("releaseStream",),
    ("FCPublish", 3.0, None, {"name": "x"}),
    ("createStream", None),
    ("publish", 5.0, None, 12.0),
    ("publish", 5.0, None, amf0.TypedObject("x", {})),
    ("publish",),
    ("deleteStream", amf0.UNDEFINED),
    ("getStreamLength", 1.0, None, [None]),
    ("play", 1.0, None, amf0.AMF0Date(0.0, 0)),
    ("_checkbw", 1.0),
    ("", 1.0),
    ("command_publish", 1.0),
]


@pytest.mark.parametrize("values", ODD_COMMANDS, ids=repr)
def test_commands_with_odd_argument_types(
    values: tuple[object, ...], log_events: list[LogEvent]
) -> None:
    h = Harness()
    h.handshake()
    h.feed(h.client.command(*values))
    assert not failures(log_events)
    if values[0] == "publish":
        assert h.dropped  # an empty name is refused, with a status
    else:
        assert not h.dropped


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(amf0.encode(None, 1.0), id="no name"),
        pytest.param(b"", id="empty"),
        pytest.param(amf0.encode(1.0, "connect"), id="number for a name"),
    ],
)
def test_nameless_commands_close_with_a_reason(data: bytes, log_events: list[LogEvent]) -> None:
    h = Harness()
    h.handshake()
    h.feed(h.client.message(chunks.COMMAND_AMF0, data, csid=CSID_SYSTEM, stream_id=0))
    assert h.dropped
    assert drop_reasons(log_events) == ["ProtocolViolation: command message without a name"]


@pytest.mark.parametrize(
    ("type_id", "payload", "reason"),
    [
        (chunks.USER_CONTROL, b"\x00", "ChunkError: truncated user control message of 1 bytes"),
        (chunks.WINDOW_ACK_SIZE, b"\x00\x01", "ChunkError: expected a 4-byte value, got 2 bytes"),
        (chunks.ABORT, b"", "ChunkError: expected a 4-byte value, got 0 bytes"),
    ],
)
def test_malformed_control_messages_close_with_a_reason(
    type_id: int, payload: bytes, reason: str, log_events: list[LogEvent]
) -> None:
    h = Harness()
    h.handshake()
    h.feed(h.client.message(type_id, payload, csid=CSID_NETWORK, stream_id=0))
    assert h.dropped
    assert drop_reasons(log_events) == [reason]
    assert not failures(log_events)


def test_harmless_control_messages_are_accepted() -> None:
    h = Harness()
    h.publish()
    for type_id, payload in [
        (chunks.USER_CONTROL, b"\x00\x03\x00\x00\x00\x01\x00\x00\x0b\xb8"),  # buffer length
        (chunks.USER_CONTROL, b"\x00\x06"),  # ping without a timestamp
        (chunks.ACKNOWLEDGEMENT, b"\x00"),
        (chunks.SET_PEER_BANDWIDTH, b""),
        (chunks.SHARED_OBJECT_AMF0, b"\xff"),
        (0, b"x"),
        (chunks.WINDOW_ACK_SIZE, b"\x00\x00\x00\x00"),
    ]:
        h.feed(h.client.message(type_id, payload, csid=CSID_NETWORK, stream_id=0))
    assert not h.dropped


# -- #18: terminated publishes, and what an ended connection keeps alive ------------------------


def test_terminate_says_why(log_events: list[LogEvent]) -> None:
    h = Harness()
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    stream.terminate()
    assert h.dropped
    assert drop_reasons(log_events) == ["publish terminated: Stopped by server"]


def test_terminate_by_the_idle_watchdog_says_why(log_events: list[LogEvent]) -> None:
    h = Harness()
    h.publish()
    stream = h.hub.get("cam1")
    assert stream is not None
    stream.terminate(streams.END_IDLE)  # what PublishIdleWatchdog does
    assert drop_reasons(log_events) == [f"publish terminated: {streams.END_IDLE}"]


def test_an_ended_connection_is_freed_by_reference_counting() -> None:
    hub = StreamHub()
    factory = RTMPServerFactory(hub, clock=Clock())
    gc.disable()
    try:
        proto = factory.buildProtocol(ADDR)
        transport = StringTransport()
        proto.makeConnection(transport)
        client = Client()
        m = media()
        data = client.handshake() + client.publish_prelude() + client.metadata()
        data += client.video(0, sequence_header(m))
        for dts, cts, key, nals in m.frames:
            data += client.video(dts, video_tag(key, 1, cts, avcc_frame(list(nals))))
        data += partial_message(client, 9, 1000)  # a partial message held at the end
        proto.dataReceived(data)
        stream = hub.get("cam1")
        assert stream is not None and stream.gop is not None
        proto.connectionLost(Failure(ConnectionDone()))
        refs = weakref.ref(proto), weakref.ref(stream)
        del proto, stream, transport
        assert [r() for r in refs] == [None, None]
        assert factory.buffer_budget.used == 0
    finally:
        gc.enable()


# -- access: publish password and REST hooks ---------------------------------------------------


def access_harness(**access_kw: object) -> Harness:
    clock = Clock()
    hub = StreamHub()
    access = Access(clock, **access_kw)  # type: ignore[arg-type]
    return Harness(hub, RTMPServerFactory(hub, clock=clock, access=access))


def test_right_publish_password_publishes() -> None:
    h = access_harness(publish_password="s3cret")
    messages = h.publish("cam1?password=s3cret")
    assert [s["code"] for s in statuses(messages)] == ["NetStream.Publish.Start"]
    assert h.hub.get("cam1") is not None


@pytest.mark.parametrize("name", ["cam1?password=wrong", "cam1", "cam1?password=s3cret%C2%B2"])
def test_wrong_or_missing_publish_password_is_refused_after_a_delay(name: str) -> None:
    h = access_harness(publish_password="s3cret")
    assert statuses(h.publish(name)) == []
    assert not h.dropped
    h.clock.advance(FAILURE_DELAY)
    [status] = statuses(h.received())
    assert (status["code"], status["description"]) == (
        "NetStream.Publish.Unauthorized",
        INFO_BAD_PASSWORD,
    )
    assert h.dropped
    assert h.hub.get("cam1") is None


def test_hooks_decide_connect_and_publish_and_messages_wait_for_them() -> None:
    hooks = PendingHooks()
    h = access_harness(hooks=hooks, publish_password="s3cret")
    h.handshake()
    h.feed(h.client.publish_prelude("cam1?password=s3cret&key=k1"))
    assert commands(h.received()) == []  # nothing answered before the app allows the connect
    connect = hooks.answer("connect")
    assert connect["custom"] == {}
    assert connect["appKey"] == "live"
    assert connect["sessionId"] == "/192.168.1.1:54321/10.0.0.1:12345"  # StringTransport's
    replies = [c[0] for c in commands(h.received())]
    assert replies[:2] == ["_result", "_result"]  # connect, releaseStream: held, then handled
    publish = hooks.answer("publishStream")
    assert publish["custom"] == {"key": "k1"}  # the password is checked, never passed on
    assert publish["name"] == "cam1"
    assert [s["code"] for s in statuses(h.received())] == ["NetStream.Publish.Start"]
    stream = h.hub.get("cam1")
    assert stream is not None and stream.media_session_id == publish["mediaSessionId"]
    assert [(m, b.get("status")) for m, b in hooks.told] == [("StreamStatusEvent", "PUBLISHING")]
    h.lose()
    assert [m for m, _ in hooks.told][1:] == ["StreamStatusEvent", "unPublishStream"]


def test_a_refused_connect_is_answered_with_an_error_and_closed() -> None:
    hooks = PendingHooks()
    h = access_harness(hooks=hooks)
    h.handshake()
    h.feed(h.client.publish_prelude("cam1"))
    hooks.answer("connect", refuse="Unknown key")
    [reply] = commands(h.received())
    assert reply[0] == "_error"
    assert reply[3] == {
        "level": "error",
        "code": "NetConnection.Connect.Rejected",
        "description": "Unknown key",
    }
    assert h.dropped
    assert not [m for m, _, _ in hooks.asked if m == "publishStream"]


def test_a_publish_refused_by_the_hook_carries_its_reason() -> None:
    hooks = PendingHooks()
    h = access_harness(hooks=hooks)
    h.handshake()
    h.feed(h.client.publish_prelude("cam1"))
    hooks.answer("connect")
    hooks.answer("publishStream", refuse="Stream not allowed")
    [status] = statuses(h.received())
    assert (status["code"], status["description"]) == (
        "NetStream.Publish.Unauthorized",
        "Stream not allowed",
    )
    assert h.dropped and h.hub.get("cam1") is None


def test_a_publisher_gone_before_the_answer_publishes_nothing() -> None:
    hooks = PendingHooks()
    h = access_harness(hooks=hooks)
    h.handshake()
    h.feed(h.client.publish_prelude("cam1"))
    hooks.answer("connect")
    h.lose()
    hooks.answer("publishStream")
    assert h.hub.get("cam1") is None


def test_publish_is_answered_once_the_directory_gives_the_name() -> None:
    directory = PendingDirectory()
    h = Harness(StreamHub(directory=directory))
    assert statuses(h.publish("cam1")) == []  # waiting for the directory
    assert h.hub.get("cam1") is None
    directory.grant("cam1")
    assert [s["code"] for s in statuses(h.received())] == ["NetStream.Publish.Start"]
    assert h.hub.get("cam1") is not None and h.proto.stream is h.hub.get("cam1")


def test_a_name_the_directory_refuses_is_bad_name_in_use() -> None:
    directory = PendingDirectory()
    h = Harness(StreamHub(directory=directory))
    h.publish("cam1")
    directory.refuse("cam1")
    (status,) = statuses(h.received())
    assert (status["code"], status["description"]) == (
        "NetStream.Publish.BadName",
        "Stream name is already in use",
    )
    assert h.dropped and h.hub.get("cam1") is None


def test_a_publisher_gone_before_the_directory_answers_publishes_nothing() -> None:
    directory = PendingDirectory()
    h = Harness(StreamHub(directory=directory))
    h.publish("cam1")
    h.lose()
    directory.grant("cam1")
    assert h.hub.get("cam1") is None
    assert result_now(directory.lookup("cam1")) is None


def test_a_directory_that_fails_instead_of_answering_ends_the_connection() -> None:
    directory = PendingDirectory()
    h = Harness(StreamHub(directory=directory))
    h.publish("cam1")
    [(_, _, d)] = directory.pending
    d.errback(ConnectionError("directory unreachable"))  # not an answer: a fault
    assert h.dropped and h.hub.get("cam1") is None


def test_a_client_that_does_not_wait_for_answers_is_closed() -> None:
    hooks = PendingHooks()
    h = access_harness(hooks=hooks)
    h.handshake()
    h.feed(h.client.publish_prelude("cam1"))
    for i in range(MAX_HELD_MESSAGES):
        h.feed(h.client.command("releaseStream", float(10 + i), None, "cam1"))
    assert h.dropped
