"""RTSPServerProtocol over a StringTransport, a Clock and a fake UDP reactor: publish sessions as
ffmpeg and GStreamer run them, real H.264 packetized by our own packetizer; every wrong-state
status, taken names, timeouts, garbage, connection and UDP port limits."""

from __future__ import annotations

import base64
import functools
import gc
import re
import weakref
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure

from tests.unit.fakes import (
    FakeReactor,
    PendingDirectory,
    PendingHooks,
    RecordingReader,
    publish_now,
    result_now,
)
from tests.unit.media_fixtures import h264_sample, parameter_sets
from wcs.access import Access
from wcs.directory import InvalidName
from wcs.media import h264
from wcs.media.units import MediaUnit, VideoParams
from wcs.rtsp import egress
from wcs.rtsp.auth import (
    RtspAuthenticator,
    authorization_header,
    choose_challenge,
    parse_challenges,
)
from wcs.rtsp.egress import Player
from wcs.rtsp.h264rtp import H264AccessUnit, H264Depacketizer, H264Packetizer
from wcs.rtsp.ingest import MAX_BAD_RUN
from wcs.rtsp.message import (
    InterleavedFrame,
    RtspParser,
    RtspResponse,
    build_interleaved,
    build_request,
    parse_session,
    parse_transport,
)
from wcs.rtsp.rtp import Bye, RtpPacket, parse_rtcp
from wcs.rtsp.sdp import RtpMap, h264_sprop, parse_sdp, resolve_control
from wcs.rtsp.server import (
    AUTH_FAILURE_DELAY,
    MAX_AUTH_FAILURES,
    MAX_CONNECTIONS,
    REQUEST_DEADLINE,
    SESSION_TIMEOUT,
    RTSPServerFactory,
    RTSPServerProtocol,
    stream_name_from_url,
)
from wcs.rtsp.session import PlayerSession, PublisherSession
from wcs.rtsp.udp import UdpPoolExhausted, UdpPortPool
from wcs.streams import PROVIDER_RTSP, Stream, StreamHub

PEER = IPv4Address("TCP", "10.0.0.7", 50000)
BASE = "rtsp://127.0.0.1:554/live/cam"


# -- media ----------------------------------------------------------------------------------------


@functools.cache
def media() -> tuple[bytes, bytes, tuple[MediaUnit, ...]]:
    sample = h264_sample(bframes=False)
    sps, pps = parameter_sets(sample)
    return sps, pps, sample.units


def announce_sdp(*, audio: bool = True, session_control: str | None = None) -> bytes:
    """The SDP ffmpeg's RTSP muxer announces for H.264 (+ AAC)."""
    sps, pps, _ = media()
    sprop = ",".join(base64.b64encode(n).decode() for n in (sps, pps))
    lines = [
        "v=0",
        "o=- 0 0 IN IP4 127.0.0.1",
        "s=No Name",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "a=tool:libavformat 59.27.100",
    ]
    if session_control is not None:
        lines.append(f"a=control:{session_control}")
    lines += [
        "m=video 0 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        f"a=fmtp:96 packetization-mode=1; sprop-parameter-sets={sprop}; "
        f"profile-level-id={sps[1:4].hex().upper()}",
        "a=control:streamid=0",
    ]
    if audio:
        lines += [
            "m=audio 0 RTP/AVP 97",
            "b=AS:64",
            "a=rtpmap:97 MPEG4-GENERIC/44100/2",
            "a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
            "indexdeltalength=3; config=121056E500",
            "a=control:streamid=1",
        ]
    return ("\r\n".join(lines) + "\r\n").encode()


def rtp_packets(count: int | None = None, ssrc: int = 0x1234) -> list[bytes]:
    """The sample's access units as RTP packets (STAP-A/FU-A as needed), in order."""
    _, _, units = media()
    pack = H264Packetizer(96, ssrc, initial_seq=1000, timestamp_offset=5000)
    first = units[0].pts
    out: list[bytes] = []
    for unit in units[:count]:
        pts = round((unit.pts - first) * unit.time_base * 90000)
        out.extend(p.serialize() for p in pack.packetize(unit.data, pts))
    return out


# -- the client side ------------------------------------------------------------------------------


class Conn:
    """One connection to the server protocol, speaking as an RTSP client."""

    def __init__(self, factory: RTSPServerFactory, peer: IPv4Address = PEER) -> None:
        self.factory = factory
        self.proto: RTSPServerProtocol = factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.proto.makeConnection(self.transport)
        self.cseq = 0
        self.session: str | None = None
        self.parser = RtspParser()
        self.lost = False

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def request(
        self,
        method: str,
        uri: str = BASE,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        session: bool = True,
    ) -> RtspResponse:
        self.cseq += 1
        hdrs = [("CSeq", str(self.cseq))]
        if session and self.session is not None:
            hdrs.append(("Session", self.session))
        hdrs += headers or []
        self.send(build_request(method, uri, hdrs, body))
        response = self.response()
        assert response.headers.get("CSeq") == str(self.cseq)
        return response

    def response(self) -> RtspResponse:
        data = self.transport.value()
        self.transport.clear()
        events = self.parser.feed(data)
        assert len(events) == 1, events
        event = events[0]
        assert isinstance(event, RtspResponse)
        return event

    def announce(self, uri: str = BASE, sdp: bytes | None = None) -> RtspResponse:
        return self.request(
            "ANNOUNCE",
            uri,
            [("Content-Type", "application/sdp")],
            announce_sdp() if sdp is None else sdp,
        )

    def setup(self, transport: str, uri: str = BASE + "/streamid=0") -> RtspResponse:
        r = self.request("SETUP", uri, [("Transport", transport)])
        if r.status == 200:
            self.session = parse_session(r.headers["Session"])[0]
        return r

    def publish_tcp(self, uri: str = BASE) -> None:
        assert self.announce(uri).status == 200
        tcp = "RTP/AVP/TCP;unicast;interleaved={};mode=record"
        assert self.setup(tcp.format("0-1"), uri + "/streamid=0").status == 200
        assert self.setup(tcp.format("2-3"), uri + "/streamid=1").status == 200
        assert self.request("RECORD", uri, [("Range", "npt=0.000-")]).status == 200

    @property
    def publisher(self) -> PublisherSession:
        """The connection's publish session (there must be one)."""
        session = self.proto.session
        assert isinstance(session, PublisherSession)
        return session

    @property
    def player(self) -> Player | None:
        """The connection's RTP egress, once PLAY started one."""
        session = self.proto.session
        return session.player if isinstance(session, PlayerSession) else None

    def close(self) -> None:
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def reactor() -> FakeReactor:
    return FakeReactor()


@pytest.fixture
def hub() -> StreamHub:
    return StreamHub()


@pytest.fixture
def factory(hub: StreamHub, reactor: FakeReactor) -> RTSPServerFactory:
    return RTSPServerFactory(hub, reactor, ip="127.0.0.1")


@pytest.fixture
def conn(factory: RTSPServerFactory) -> Conn:
    return Conn(factory)


def messages(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


# -- publishing ---------------------------------------------------------------------------------


def test_options_lists_methods(conn: Conn) -> None:
    r = conn.request("OPTIONS", "*")
    assert r.status == 200
    public = {m.strip() for m in r.headers["Public"].split(",")}
    assert {"OPTIONS", "ANNOUNCE", "SETUP", "RECORD", "TEARDOWN", "GET_PARAMETER"} <= public
    assert "Session" not in r.headers


def test_full_tcp_publish_feeds_the_stream(
    conn: Conn, hub: StreamHub, log_events: list[LogEvent]
) -> None:
    assert conn.announce(BASE + "?token=abc").status == 200
    stream = hub.get("cam")
    assert stream is not None and stream.provider == PROVIDER_RTSP
    # Width and height are known from sprop-parameter-sets at RECORD, before any keyframe.
    r = conn.setup(
        "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record", BASE + "?token=abc/streamid=0"
    )
    assert r.status == 200
    sid, timeout = parse_session(r.headers["Session"])
    assert timeout == SESSION_TIMEOUT and len(sid) >= 16
    (spec,) = parse_transport(r.headers["Transport"])
    assert spec.lower == "TCP" and spec.interleaved == (0, 1) and spec.mode == "RECORD"
    r = conn.setup(
        "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record", BASE + "?token=abc/streamid=1"
    )
    assert r.status == 200 and parse_session(r.headers["Session"])[0] == sid
    assert conn.request("RECORD", BASE + "?token=abc").status == 200
    assert stream.video is not None and (stream.video.width, stream.video.height) == (320, 240)
    assert stream.audio_codec == "AAC"
    sink = RecordingReader()
    sink.attach(stream)
    _, _, units = media()
    # Interleaved frames split at awkward places, as TCP delivers them.
    data = b"".join(build_interleaved(0, p) for p in rtp_packets())
    for i in range(0, len(data), 777):
        conn.send(data[i : i + 777])
    assert [u.keyframe for u in sink.units] == [u.keyframe for u in units]
    assert all(u.codec == "H264" for u in sink.units)
    assert stream.gop is not None
    assert any(
        "publishing cam (app live) over TCP: video H264, audio AAC, 320x240" in m
        for m in messages(log_events)
    )
    # TEARDOWN ends the stream; the connection stays for the client to close.
    r = conn.request("TEARDOWN", BASE)
    assert r.status == 200
    assert stream.ended and stream.end_reason == "Stopped by publisher stop"
    assert hub.get("cam") is None and sink.ended == [stream]
    assert not conn.transport.disconnecting
    conn.close()


def test_connection_close_ends_the_stream(conn: Conn, hub: StreamHub) -> None:
    conn.publish_tcp()
    stream = hub.get("cam")
    assert stream is not None
    conn.close()
    assert stream.ended and stream.end_reason == "Stopped by publisher stop"
    assert conn.factory.connections == 0


def test_url_with_only_a_name_and_gstreamer_controls(conn: Conn, hub: StreamHub) -> None:
    uri = "rtsp://127.0.0.1:554/door"
    sdp = announce_sdp(audio=False).replace(b"streamid=0", b"stream=0")
    assert conn.announce(uri, sdp).status == 200
    assert (
        conn.setup("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record", uri + "/stream=0").status
        == 200
    )
    # GStreamer's RECORD goes to the aggregate URL with a trailing slash.
    assert conn.request("RECORD", uri + "/").status == 200
    stream = hub.get("door")
    assert stream is not None
    for p in rtp_packets(31):
        conn.send(build_interleaved(0, p))
    assert stream.video_units == 31  # each AU ends on its marker bit


def test_rtcp_and_stray_channels_are_harmless(conn: Conn, hub: StreamHub) -> None:
    conn.publish_tcp()
    stream = hub.get("cam")
    assert stream is not None
    conn.send(build_interleaved(1, Bye((0x1234,)).serialize()))
    conn.send(build_interleaved(9, b"\x80" * 40))  # a channel nobody set up
    conn.send(build_interleaved(0, b"\x00\x01"))  # not RTP
    assert conn.request("GET_PARAMETER").status == 200
    assert conn.proto.stray_frames == 1
    assert not stream.ended


def test_absolute_control_any_host(conn: Conn) -> None:
    sdp = announce_sdp(audio=False).replace(
        b"a=control:streamid=0", b"a=control:" + BASE.encode() + b"/trackID=1"
    )
    assert conn.announce(BASE, sdp).status == 200
    # Any host spelling: only the path matters.
    r = conn.setup("RTP/AVP/TCP;interleaved=0-1", "rtsp://localhost/live/cam/trackID=1")
    assert r.status == 200


def test_interleaved_channels_taken_are_reassigned(conn: Conn) -> None:
    assert conn.announce().status == 200
    assert conn.setup("RTP/AVP/TCP;interleaved=0-1;mode=record").status == 200
    r = conn.setup("RTP/AVP/TCP;interleaved=0-1;mode=record", BASE + "/streamid=1")
    assert r.status == 200
    assert parse_transport(r.headers["Transport"])[0].interleaved == (2, 3)
    # Without interleaved= the server picks the channels.
    conn2 = Conn(conn.factory)
    assert conn2.announce(BASE.replace("cam", "cam2")).status == 200
    r = conn2.setup("RTP/AVP/TCP;unicast", BASE.replace("cam", "cam2") + "/streamid=0")
    assert parse_transport(r.headers["Transport"])[0].interleaved == (0, 1)


@pytest.mark.parametrize("channels", ["0-0", "3-2", "4-9"])
def test_interleaved_channels_that_are_no_pair_are_reassigned(conn: Conn, channels: str) -> None:
    assert conn.announce().status == 200
    r = conn.setup(f"RTP/AVP/TCP;interleaved={channels};mode=record")
    assert r.status == 200 and parse_transport(r.headers["Transport"])[0].interleaved == (0, 1)
    assert conn.publisher.channels == {0: (0, False), 1: (0, True)}


# -- names ----------------------------------------------------------------------------------------


def test_taken_name_is_refused_and_first_keeps_publishing(
    factory: RTSPServerFactory, hub: StreamHub, log_events: list[LogEvent]
) -> None:
    first = Conn(factory)
    first.publish_tcp()
    stream = hub.get("cam")
    second = Conn(factory, IPv4Address("TCP", "10.0.0.8", 50001))
    r = second.announce("rtsp://other:554/app2/cam")
    assert r.status == 403 and r.reason == "Stream name is already in use"
    assert any(
        "RTSP 10.0.0.8:50001: publish of 'cam' refused: Stream name is already in use" in m
        for m in messages(log_events)
    )
    # The refused client cannot go on to SETUP/RECORD.
    assert second.setup(TCP).status == 455
    assert hub.get("cam") is stream and not stream.ended  # type: ignore[union-attr]
    second.close()
    assert not stream.ended  # type: ignore[union-attr]
    for p in rtp_packets(3):
        first.send(build_interleaved(0, p))
    assert stream.video_units == 3  # type: ignore[union-attr]


def test_name_is_reserved_at_announce(factory: RTSPServerFactory, hub: StreamHub) -> None:
    first = Conn(factory)
    assert first.announce().status == 200  # no RECORD yet
    second = Conn(factory)
    assert second.announce().status == 403
    first.close()
    assert hub.get("cam") is None
    assert second.announce().status == 200


@pytest.mark.parametrize(
    "uri",
    [
        "rtsp://127.0.0.1:554/",
        "rtsp://127.0.0.1:554",
        "rtsp://h/live/..",
        "rtsp://h/live/a%2Fb",
        "rtsp://h/live/" + "x" * 256,
    ],
)
def test_invalid_names_are_400(conn: Conn, uri: str, hub: StreamHub) -> None:
    r = conn.announce(uri)
    assert r.status == 400 and r.reason == "Invalid stream name"
    assert len(hub) == 0


def test_stream_name_from_url() -> None:
    assert stream_name_from_url("rtsp://h:554/live/cam2?token=1") == ("live", "cam2")
    assert stream_name_from_url("rtsp://h/cam") == ("", "cam")
    assert stream_name_from_url("rtsp://h/a/b/c/") == ("a/b", "c")
    assert stream_name_from_url("rtsp://h/live/my%20cam") == ("live", "my cam")
    with pytest.raises(InvalidName):
        stream_name_from_url("rtsp://h/?x=1")


def test_bad_announce_bodies(conn: Conn, hub: StreamHub) -> None:
    r = conn.request("ANNOUNCE", BASE, [("Content-Type", "text/plain")], b"hello")
    assert r.status == 415
    r = conn.request(
        "ANNOUNCE", BASE, [("Content-Type", "application/sdp")], b"m=video x RTP/AVP 96\r\n"
    )
    assert r.status == 400 and r.reason.startswith("Bad SDP")
    r = conn.request("ANNOUNCE", BASE, [("Content-Type", "application/sdp")], b"v=0\r\ns=x\r\n")
    assert r.status == 400
    assert len(hub) == 0
    assert conn.announce().status == 200  # the connection is still usable


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"m=video 0 RTP/AVP 96", "m=video \u00b2 RTP/AVP 96".encode()),
        (b"m=video 0 RTP/AVP 96", "m=video 0 RTP/AVP \u00b2".encode()),
        (b"a=rtpmap:96 H264/90000", "a=rtpmap:\u00b2 H264/90000".encode()),
        (b"a=rtpmap:96 H264/90000", "a=rtpmap:96 H264/\u00b2".encode()),
        (b"a=rtpmap:97 MPEG4-GENERIC/44100/2", "a=rtpmap:97 MPEG4-GENERIC/44100/\u00b2".encode()),
        (b"a=fmtp:96 ", "a=fmtp:\u00b2 ".encode()),
        (b"m=audio 0 RTP/AVP 97", "m=audio 0 udp \u00b2".encode()),
        (b"a=control:streamid=0", b"a=control:/track"),
    ],
)
def test_announce_with_unusable_numbers_is_400_with_a_logged_reason(
    conn: Conn,
    hub: StreamHub,
    log_events: list[LogEvent],
    old: bytes,
    new: bytes,
) -> None:
    """Finding 6: a superscript digit in the SDP raised ValueError at the reactor (no answer);
    now the publisher gets 400 with the reason, and the connection stays usable."""
    sdp = announce_sdp().replace(old, new, 1)
    assert sdp != announce_sdp()
    uri = "rtsp://[::1/live/cam" if new == b"a=control:/track" else BASE
    r = conn.request("ANNOUNCE", uri, [("Content-Type", "application/sdp")], sdp)
    assert r.status == 400, r
    assert len(hub) == 0 and not conn.transport.disconnecting
    logged = messages(log_events)
    assert any("ANNOUNCE" in m and "refused" in m for m in logged), logged
    assert conn.announce().status == 200


@pytest.mark.parametrize("cseq", ["\u00b2", "\u0663", "1_0", "+1"])
def test_cseq_must_be_ascii_digits(conn: Conn, cseq: str) -> None:
    conn.send(build_request("OPTIONS", "*", [("CSeq", cseq)]))
    r = conn.response()
    assert r.status == 400 and r.reason == "Missing or bad CSeq"
    assert not conn.transport.disconnecting


@pytest.mark.parametrize("uri", ["rtsp://[::1/live/cam", "rtsp://h\uff03x/live/cam"])
@pytest.mark.parametrize("method", ["ANNOUNCE", "DESCRIBE", "SETUP"])
def test_urls_urlsplit_refuses_are_answered(conn: Conn, uri: str, method: str) -> None:
    headers = [("Content-Type", "application/sdp"), ("Transport", TCP)]
    body = announce_sdp() if method == "ANNOUNCE" else b""
    r = conn.request(method, uri, headers, body)
    assert 400 <= r.status < 500
    assert not conn.transport.disconnecting


# -- wrong states and bad requests -------------------------------------------------------------


TCP = "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"


def test_state_errors_455(conn: Conn) -> None:
    assert conn.setup(TCP).status == 455  # SETUP before ANNOUNCE
    assert conn.request("RECORD").status == 455  # RECORD before ANNOUNCE
    assert conn.announce().status == 200
    assert conn.request("RECORD").status == 455  # RECORD before SETUP
    assert conn.announce().status == 455  # ANNOUNCE twice
    assert conn.setup(TCP).status == 200
    assert conn.setup(TCP).status == 455  # the same track twice
    assert conn.request("RECORD").status == 200
    assert conn.request("RECORD").status == 200  # already recording: nothing changes
    assert conn.setup(TCP, BASE + "/streamid=1").status == 455  # adding a track while recording
    assert conn.request("PLAY").status == 455


def test_session_errors_454(conn: Conn) -> None:
    assert conn.request("TEARDOWN").status == 454  # no session
    assert conn.request("GET_PARAMETER", headers=[("Session", "NOSUCH")]).status == 454
    assert conn.announce().status == 200
    assert conn.setup(TCP).status == 200
    assert conn.request("RECORD", session=False).status == 454  # RECORD needs the Session header
    r = conn.request("RECORD", session=False, headers=[("Session", "DEADBEEF")])
    assert r.status == 454
    # A second SETUP without the session header is not part of this session.
    r = conn.request("SETUP", BASE + "/streamid=1", [("Transport", TCP)], session=False)
    assert r.status == 454
    assert conn.request("RECORD").status == 200


def test_aggregate_and_track_url_errors(conn: Conn) -> None:
    assert conn.announce().status == 200
    assert conn.setup(TCP, BASE).status == 459  # SETUP on the aggregate URL of 2 tracks
    assert conn.setup(TCP, BASE + "/streamid=7").status == 404
    assert conn.setup(TCP).status == 200
    assert conn.setup(TCP.replace("0-1", "2-3"), BASE + "/streamid=1").status == 200
    assert conn.request("RECORD", BASE + "/streamid=0").status == 460
    assert conn.request("RECORD", "rtsp://127.0.0.1/elsewhere").status == 404
    assert conn.request("RECORD").status == 200


def test_single_track_record_on_track_url(conn: Conn) -> None:
    assert conn.announce(sdp=announce_sdp(audio=False)).status == 200
    assert conn.setup(TCP).status == 200
    assert conn.request("RECORD", BASE + "/streamid=0").status == 200


@pytest.mark.parametrize(
    "transport",
    [
        "RTP/AVP;multicast;destination=224.2.0.1;port=5000-5001",
        "RTP/SAVP/TCP;interleaved=0-1",
        "RTP/AVP/TCP;interleaved=0-1;mode=play",
        "RAW/RAW/UDP;unicast;client_port=5000-5001",
        "RTP/AVP/TCP;interleaved=300-301",
    ],
)
def test_unsupported_transports_461(conn: Conn, transport: str) -> None:
    assert conn.announce().status == 200
    assert conn.setup(transport).status == 461
    assert conn.session is None


def test_missing_transport_is_400(conn: Conn) -> None:
    assert conn.announce().status == 200
    assert conn.request("SETUP", BASE + "/streamid=0").status == 400


def test_method_errors(conn: Conn) -> None:
    assert conn.request("FROBNICATE").status == 501
    assert conn.request("REDIRECT").status == 501
    r = conn.request("PAUSE")
    assert r.status == 405 and "RECORD" in r.headers["Allow"]
    r = conn.request("OPTIONS", headers=[("Require", "implicit-play")])
    assert r.status == 551 and r.headers["Unsupported"] == "implicit-play"
    assert conn.request("SET_PARAMETER", body=b"x: y\r\n").status == 451
    assert conn.request("SET_PARAMETER").status == 200
    r = conn.request("DESCRIBE")
    assert r.status == 404
    assert not conn.transport.disconnecting


def test_missing_cseq_is_400_and_connection_stays(conn: Conn) -> None:
    conn.send(b"OPTIONS * RTSP/1.0\r\n\r\n")
    r = conn.response()
    assert r.status == 400 and "CSeq" not in r.headers
    assert not conn.transport.disconnecting
    assert conn.request("OPTIONS").status == 200


def test_bad_version_is_505_and_closes(conn: Conn, log_events: list[LogEvent]) -> None:
    conn.send(b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n")
    r = conn.response()
    assert r.status == 505
    assert conn.transport.disconnecting
    assert any(
        "closing connection: bad RTSP message: unsupported version RTSP/2.0" in m
        for m in messages(log_events)
    )


@pytest.mark.parametrize(
    ("garbage", "status", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not an RTSP version"),
        (b"OPTIONS * RTSP/1.0\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 400, "header"),
        (b"\x16\x03\x01" + bytes(range(256)) * 80, 400, "header block exceeds"),
        (
            b"ANNOUNCE rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 99999999\r\n\r\n",
            413,
            "exceeds the limit",
        ),
    ],
)
def test_garbage_closes_that_connection_only(
    factory: RTSPServerFactory,
    hub: StreamHub,
    log_events: list[LogEvent],
    garbage: bytes,
    status: int,
    reason: str,
) -> None:
    healthy = Conn(factory)
    healthy.publish_tcp()
    bad = Conn(factory, IPv4Address("TCP", "10.6.6.6", 6666))
    bad.send(garbage)
    assert bad.response().status == status
    assert bad.transport.disconnecting
    assert any(
        m.startswith("RTSP 10.6.6.6:6666: closing connection: bad RTSP message") and reason in m
        for m in messages(log_events)
    )
    bad.send(b"OPTIONS * RTSP/1.0\r\nCSeq: 2\r\n\r\n")  # ignored after the close
    assert bad.transport.value() == b""
    bad.close()
    assert not healthy.transport.disconnecting
    assert healthy.request("GET_PARAMETER").status == 200
    assert hub.get("cam") is not None


# -- timeouts -------------------------------------------------------------------------------------


def test_idle_connection_times_out(
    conn: Conn, reactor: FakeReactor, log_events: list[LogEvent]
) -> None:
    reactor.advance(SESSION_TIMEOUT - 1)
    assert conn.request("OPTIONS").status == 200  # any request counts
    reactor.advance(SESSION_TIMEOUT - 1)
    assert not conn.transport.disconnecting
    reactor.advance(1)
    assert conn.transport.disconnecting
    assert any(
        "closing connection: idle timeout: no request for 60 s" in m for m in messages(log_events)
    )


def test_trickled_request_is_closed_at_the_deadline(
    conn: Conn, reactor: FakeReactor, log_events: list[LogEvent]
) -> None:
    """Finding 13: a byte per second completes a request every ~40 s, each counting as activity,
    so the connection lived forever; a request must now be whole 10 s after its first byte."""
    request = build_request("OPTIONS", "*", [("CSeq", "1"), ("User-Agent", "x" * 20)])
    assert len(request) > REQUEST_DEADLINE + 1
    for i in range(int(REQUEST_DEADLINE)):
        conn.send(request[i : i + 1])
        reactor.advance(1)
        if i < REQUEST_DEADLINE - 1:
            assert not conn.transport.disconnecting
    assert conn.transport.disconnecting
    r = conn.response()
    assert r.status == 408 and r.headers["Connection"] == "close"
    assert any(
        "closing connection: request not complete 10 s after its first byte" in m
        for m in messages(log_events)
    )
    conn.close()
    assert reactor.getDelayedCalls() == []


def test_request_deadline_starts_at_each_request(conn: Conn, reactor: FakeReactor) -> None:
    one = build_request("OPTIONS", "*", [("CSeq", "1")])
    two = build_request("OPTIONS", "*", [("CSeq", "2")])
    conn.send(b"\r\n")  # a keep-alive CRLF between messages starts nothing
    reactor.advance(30)
    conn.send(one[:5])
    reactor.advance(9.5)
    conn.send(one[5:] + two[:5])  # the first completes, the second begins now
    assert conn.response().headers["CSeq"] == "1"
    reactor.advance(9.5)
    assert not conn.transport.disconnecting
    conn.send(two[5:])
    assert conn.response().headers["CSeq"] == "2"
    reactor.advance(REQUEST_DEADLINE * 3)
    assert not conn.transport.disconnecting  # between requests only the idle timeout runs
    # A body counts too: Content-Length promised and never sent.
    conn.send(build_request("SET_PARAMETER", "*", [("CSeq", "3")], b"12345")[:-5])
    reactor.advance(REQUEST_DEADLINE)
    assert conn.transport.disconnecting and conn.response().status == 408


def test_interleaved_frames_never_run_against_the_request_deadline(
    conn: Conn, reactor: FakeReactor, hub: StreamHub
) -> None:
    conn.publish_tcp()
    stream = hub.get("cam")
    assert stream is not None
    # A recording publisher's frames arrive in pieces over a long time, between keepalives.
    data = b"".join(build_interleaved(0, p) for p in rtp_packets(20))
    for i in range(0, len(data), 97):
        conn.send(data[i : i + 97])
        reactor.advance(0.5)
    assert reactor.seconds() > 3 * REQUEST_DEADLINE
    assert conn.request("GET_PARAMETER").status == 200
    reactor.advance(REQUEST_DEADLINE * 2)
    assert not conn.transport.disconnecting and stream.video_units >= 19


def test_session_kept_alive_by_rtp_and_keepalives(
    conn: Conn, reactor: FakeReactor, hub: StreamHub, log_events: list[LogEvent]
) -> None:
    conn.publish_tcp()
    stream = hub.get("cam")
    assert stream is not None
    packets = rtp_packets(10)
    for p in packets[:5]:
        reactor.advance(50)
        conn.send(build_interleaved(0, p))
    reactor.advance(50)
    assert conn.request("GET_PARAMETER").status == 200
    reactor.advance(59.5)
    assert not conn.transport.disconnecting
    reactor.advance(1)
    assert conn.transport.disconnecting
    assert any(
        f"session {conn.session} timed out: no RTSP or RTP for 60 s" in m
        for m in messages(log_events)
    )
    conn.close()
    assert stream.ended


def test_announce_without_record_times_out(
    conn: Conn, reactor: FakeReactor, hub: StreamHub
) -> None:
    assert conn.announce().status == 200
    reactor.advance(SESSION_TIMEOUT)
    assert conn.transport.disconnecting
    conn.close()
    assert hub.get("cam") is None


def test_timers_are_cancelled_on_close(conn: Conn, reactor: FakeReactor) -> None:
    conn.publish_tcp()
    conn.close()
    assert reactor.getDelayedCalls() == []


# -- limits and termination -------------------------------------------------------------------


def test_connection_limit(hub: StreamHub, reactor: FakeReactor, log_events: list[LogEvent]) -> None:
    factory = RTSPServerFactory(hub, reactor, max_connections=2)
    a, b = Conn(factory), Conn(factory)
    c = Conn(factory)
    assert not a.transport.disconnecting and not b.transport.disconnecting
    assert c.transport.disconnecting and c.transport.value() == b""
    assert any("too many RTSP connections (limit 2)" in m for m in messages(log_events))
    c.close()
    assert factory.connections == 2
    a.close()
    d = Conn(factory)
    assert not d.transport.disconnecting
    assert MAX_CONNECTIONS == 1000


def test_terminate_drops_the_publisher(
    conn: Conn, hub: StreamHub, log_events: list[LogEvent]
) -> None:
    conn.publish_tcp()
    stream = hub.get("cam")
    assert stream is not None
    stream.terminate()
    assert conn.transport.disconnecting
    assert stream.ended and stream.end_reason == "Stopped by server"
    assert any(
        "closing connection: the server ended cam: Stopped by server" in m
        for m in messages(log_events)
    )
    conn.close()


@pytest.mark.parametrize("recording", [True, False])
def test_a_stream_ended_by_the_server_closes_the_publisher_with_the_reason(
    conn: Conn, hub: StreamHub, log_events: list[LogEvent], recording: bool
) -> None:
    """Finding 18: the publish idle watchdog ends a stream with no media (one that did ANNOUNCE
    and never RECORD too); the publisher's connection must close, with that reason."""
    if recording:
        conn.publish_tcp()
    else:
        assert conn.announce().status == 200
    stream = hub.get("cam")
    assert stream is not None and stream.watch_idle
    stream.end("Failed by RTP activity")  # what Stream.terminate(reason) ends with
    assert conn.transport.disconnecting
    assert any(
        "closing connection: the server ended cam: Failed by RTP activity" in m
        for m in messages(log_events)
    )
    conn.close()
    assert hub.get("cam") is None
    # The name is free for the encoder's reconnect.
    again = Conn(conn.factory)
    assert again.announce().status == 200


def test_teardown_and_close_end_the_stream_without_closing_twice(
    conn: Conn, hub: StreamHub, log_events: list[LogEvent]
) -> None:
    conn.publish_tcp()
    assert conn.request("TEARDOWN").status == 200
    assert not conn.transport.disconnecting  # our own end does not close the connection
    assert not any("closing connection" in m for m in messages(log_events))


# -- UDP ------------------------------------------------------------------------------------------


def udp_setup(conn: Conn, track: int, ports: str = "5000-5001") -> RtspResponse:
    return conn.setup(
        f"RTP/AVP/UDP;unicast;client_port={ports};mode=record", f"{BASE}/streamid={track}"
    )


def test_udp_publish(
    conn: Conn, reactor: FakeReactor, hub: StreamHub, log_events: list[LogEvent]
) -> None:
    assert conn.announce().status == 200
    r = udp_setup(conn, 0)
    assert r.status == 200
    (spec,) = parse_transport(r.headers["Transport"])
    assert spec.lower == "UDP" and spec.client_port == (5000, 5001) and spec.mode == "RECORD"
    assert spec.server_port is not None
    rtp_port, rtcp_port = spec.server_port
    assert rtcp_port == rtp_port + 1
    assert reactor.udp[rtp_port].interface == "127.0.0.1"
    assert conn.request("RECORD").status == 200
    stream = hub.get("cam")
    assert stream is not None
    packets = rtp_packets(11)
    for p in packets:
        reactor.udp[rtp_port].deliver(p)
    reactor.udp[rtcp_port].deliver(Bye((0x1234,)).serialize(), port=40001)
    assert stream.video_units == 11
    assert any(
        "publishing cam (app live) over UDP: video H264, 320x240" in m for m in messages(log_events)
    )
    # Only the publisher feeds the track: another host, or another port of the publisher, is
    # ignored (its SSRC would restart the depacketizer).
    intruder = rtp_packets(12, ssrc=0x9999)
    for p in intruder:
        reactor.udp[rtp_port].deliver(p, host="10.9.9.9")
        reactor.udp[rtp_port].deliver(p, port=40002)
    assert stream.video_units == 11
    assert conn.publisher.transports[0].stray == 2 * len(intruder)
    assert (
        sum(
            "ignoring RTP from 10.9.9.9:40000 (not the publisher)" in m
            for m in messages(log_events)
        )
        == 1
    )
    # UDP traffic alone keeps the session alive.
    reactor.advance(59)
    reactor.udp[rtp_port].deliver(packets[0])  # a duplicate is activity too
    reactor.advance(59)
    assert not conn.transport.disconnecting
    assert conn.request("TEARDOWN").status == 200
    assert reactor.udp == {} and conn.factory.udp_pool.in_use == 0
    assert stream.ended


def test_udp_pool_exhaustion_falls_back_or_461(
    hub: StreamHub, reactor: FakeReactor, log_events: list[LogEvent]
) -> None:
    factory = RTSPServerFactory(hub, reactor, max_udp_pairs=1)
    a = Conn(factory)
    assert a.announce().status == 200
    assert udp_setup(a, 0).status == 200
    r = udp_setup(a, 1)
    assert r.status == 461 and r.reason == "UDP port pool exhausted, use TCP"
    assert any(
        "no UDP ports for cam: all 1 UDP port pairs are in use" in m for m in messages(log_events)
    )
    # A client offering TCP as a second choice gets it (ffmpeg's default order is UDP, TCP).
    r = a.setup(
        "RTP/AVP/UDP;unicast;client_port=5002-5003;mode=record,"
        "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record",
        BASE + "/streamid=1",
    )
    assert r.status == 200 and parse_transport(r.headers["Transport"])[0].lower == "TCP"
    # Closing the connection gives the pair back.
    a.close()
    assert factory.udp_pool.in_use == 0 and reactor.udp == {}
    b = Conn(factory)
    assert b.announce().status == 200
    assert udp_setup(b, 0).status == 200


@pytest.mark.parametrize("ports", ["0-0", "0", "0-1", "5001-5000", "5000-5007", "5000-4999"])
def test_bad_client_ports_are_461(conn: Conn, reactor: FakeReactor, ports: str) -> None:
    """Finding 21: client_port=0-0 was accepted and took a pair from the pool."""
    assert conn.announce().status == 200
    r = udp_setup(conn, 0, ports)
    assert r.status == 461 and r.reason.startswith("Bad client_port"), r
    assert reactor.udp == {} and conn.factory.udp_pool.in_use == 0
    # Offered with TCP as the second choice, TCP is used.
    r = conn.setup(
        f"RTP/AVP/UDP;unicast;client_port={ports};mode=record,"
        "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
    )
    assert r.status == 200 and parse_transport(r.headers["Transport"])[0].lower == "TCP"


@pytest.mark.parametrize("ports", ["5000-5001", "5000", "41234-41235", "5000-5000", "5001-5002"])
def test_client_ports_real_clients_send_are_accepted(conn: Conn, ports: str) -> None:
    assert conn.announce().status == 200
    assert udp_setup(conn, 0, ports).status == 200


def test_a_session_holds_at_most_four_udp_pairs(hub: StreamHub, reactor: FakeReactor) -> None:
    """Finding 21: 16 connections of 16 UDP tracks each emptied the server-wide pool."""
    factory = RTSPServerFactory(hub, reactor, max_udp_pairs=16)
    tracks = 6
    sdp = announce_sdp(audio=False)
    video = sdp[sdp.index(b"m=video") :]
    sdp += b"".join(
        video.replace(b"streamid=0", f"streamid={i}".encode()) for i in range(1, tracks)
    )
    conns = [Conn(factory, IPv4Address("TCP", "10.0.0.7", 50000 + i)) for i in range(4)]
    for n, conn in enumerate(conns):
        uri = BASE.replace("cam", f"cam{n}")
        assert conn.announce(uri, sdp).status == 200
        got = [
            conn.setup(
                f"RTP/AVP/UDP;unicast;client_port={5000 + 2 * i}-{5001 + 2 * i};mode=record",
                f"{uri}/streamid={i}",
            )
            for i in range(tracks)
        ]
        assert [r.status for r in got] == [200] * 4 + [461] * 2
        assert got[4].reason == "At most 4 UDP tracks per session, use TCP"
        # TCP stays open to the tracks past the cap.
        r = conn.setup(
            "RTP/AVP/UDP;unicast;client_port=6000-6001;mode=record,RTP/AVP/TCP;unicast;mode=record",
            f"{uri}/streamid=4",
        )
        assert r.status == 200 and parse_transport(r.headers["Transport"])[0].lower == "TCP"
    assert factory.udp_pool.in_use == 16
    conns[0].close()
    assert factory.udp_pool.in_use == 12


def test_udp_pool_ephemeral_pairs_are_consecutive(reactor: FakeReactor) -> None:
    pool = UdpPortPool(reactor, "0.0.0.0", max_pairs=4)
    reactor.taken = {40001, 40003}  # the port after the kernel's pick is taken twice
    pair = pool.allocate(lambda d, a: None, lambda d, a: None)
    assert (pair.rtp_port, pair.rtcp_port) == (40004, 40005)
    assert sorted(reactor.udp) == [40004, 40005]  # the failed attempts were unbound
    pair.release()
    pair.release()  # idempotent
    assert pool.in_use == 0 and reactor.udp == {}


def test_udp_pool_gives_up_after_bounded_attempts(reactor: FakeReactor) -> None:
    pool = UdpPortPool(reactor, "0.0.0.0")
    reactor.taken = {40000 + i for i in range(1, 200, 2)}  # every odd port taken
    with pytest.raises(UdpPoolExhausted, match="no free pair"):
        pool.allocate(lambda d, a: None, lambda d, a: None)
    assert reactor.binds <= 32 and reactor.udp == {}


def test_udp_pool_range(reactor: FakeReactor) -> None:
    pool = UdpPortPool(reactor, "0.0.0.0", max_pairs=10, port_range=(6001, 6008))
    reactor.taken = {6003}
    got = [pool.allocate(lambda d, a: None, lambda d, a: None) for _ in range(2)]
    # 6002 has no free 6003; pairs start on even ports.
    assert [(p.rtp_port, p.rtcp_port) for p in got] == [(6004, 6005), (6006, 6007)]
    with pytest.raises(UdpPoolExhausted):
        pool.allocate(lambda d, a: None, lambda d, a: None)
    got[0].release()
    again = pool.allocate(lambda d, a: None, lambda d, a: None)
    assert again.rtp_port == 6004
    with pytest.raises(ValueError):
        UdpPortPool(reactor, "0.0.0.0", port_range=(7000, 6000))


def test_factory_wiring(hub: StreamHub, reactor: FakeReactor) -> None:
    factory = RTSPServerFactory(hub, reactor, ip="::1", session_timeout=5)
    conn = Conn(factory)
    conn.publish_tcp()
    assert factory.udp_pool.interface == "::1"
    reactor.advance(5)
    assert conn.transport.disconnecting


# -- playing --------------------------------------------------------------------------------------


def live_stream(hub: StreamHub, name: str = "cam") -> Stream:
    """A published stream with real H.264 parameters, as RTMP or RTSP ingest leaves it."""
    sps, pps, _ = media()
    stream = publish_now(hub, name, "Flash")
    info = h264.parse_sps(sps)
    stream.set_video_params(
        VideoParams("H264", info.width, info.height, h264.to_annexb([sps, pps]))
    )
    return stream


def video_units(strip_params: bool = False) -> list[MediaUnit]:
    _, _, units = media()
    if not strip_params:
        return list(units)
    out = []
    for u in units:
        nals = [
            n
            for n in h264.split_annexb(u.data)
            if h264.nal_type(n) not in (h264.NAL_SPS, h264.NAL_PPS)
        ]
        out.append(
            MediaUnit(u.kind, u.codec, u.pts, u.dts, u.keyframe, h264.to_annexb(nals), u.time_base)
        )
    return out


def played(data: bytes, channel: int = 0) -> list[H264AccessUnit]:
    """The access units a player gets out of the interleaved RTP the server wrote."""
    dep = H264Depacketizer(reorder_window=0)
    aus: list[H264AccessUnit] = []
    for event in RtspParser().feed(data):
        assert isinstance(event, InterleavedFrame)
        if event.channel == channel:
            aus += dep.push(RtpPacket.parse(event.payload))
    return aus


def play_setup(conn: Conn, uri: str = BASE) -> RtspResponse:
    r = conn.request("DESCRIBE", uri, [("Accept", "application/sdp")])
    assert r.status == 200
    base = r.headers["Content-Base"]
    sdp = parse_sdp(r.body)
    control = resolve_control(base, sdp.media[0].control)
    r = conn.setup("RTP/AVP/TCP;unicast;interleaved=0-1", control)
    assert r.status == 200
    return r


def start_playing(conn: Conn, hub: StreamHub, reactor: FakeReactor) -> Stream:
    """A live stream, and `conn` playing it (PLAY answered, the player attached)."""
    stream = live_stream(hub)
    play_setup(conn)
    assert conn.request("PLAY").status == 200
    reactor.advance(0)
    return stream


def test_describe_live_stream(conn: Conn, hub: StreamHub) -> None:
    live_stream(hub)
    r = conn.request("DESCRIBE", BASE + "?x=1")
    assert r.status == 200 and r.headers["Content-Type"] == "application/sdp"
    assert r.headers["Content-Base"] == BASE + "/"
    sdp = parse_sdp(r.body)
    (video,) = sdp.media
    assert video.rtpmap[96] == RtpMap("H264", 90000)
    sps, pps, _ = media()
    assert h264_sprop(video.fmtp[96])[:2] == (sps, [pps])
    assert video.control == "trackID=0"


def test_describe_errors(conn: Conn, hub: StreamHub) -> None:
    r = conn.request("DESCRIBE")
    assert r.status == 404 and r.reason == "Stream not found"
    publish_now(hub, "radio", "Flash").set_audio_codec("AAC")
    assert conn.request("DESCRIBE", BASE.replace("cam", "radio")).status == 415
    assert conn.request("DESCRIBE", "rtsp://h/").status == 400


def test_play_sends_cached_gop_then_live_units(
    conn: Conn, hub: StreamHub, reactor: FakeReactor
) -> None:
    stream = live_stream(hub)
    units = video_units()
    gop_starts = [i for i, u in enumerate(units) if u.keyframe]
    second_gop = gop_starts[1]
    for u in units[: second_gop + 5]:  # a player joining 5 frames into the second GOP
        stream.push(u)
    assert conn.setup("RTP/AVP/TCP;interleaved=0-1", BASE).status == 459
    r = play_setup(conn)
    (spec,) = parse_transport(r.headers["Transport"])
    assert spec.interleaved == (0, 1)
    assert conn.request("PLAY", session=False).status == 454
    r = conn.request("PLAY", BASE + "/")
    assert r.status == 200
    assert "seq=" in r.headers["RTP-Info"] and r.headers["Range"] == "npt=0.000-"
    reactor.advance(0)
    for u in units[second_gop + 5 : second_gop + 10]:
        stream.push(u)
    aus = played(conn.transport.value())
    # The keyframe and the 4 frames after it from the cache, then 5 live ones (the last AU
    # completes on its marker bit).
    assert len(aus) == 10 and aus[0].keyframe
    assert [list(au.nals) for au in aus] == [
        h264.split_annexb(u.data) for u in units[second_gop : second_gop + 10]
    ]
    conn.transport.clear()
    assert conn.request("PLAY").status == 200  # already playing
    assert conn.request("RECORD").status == 455
    assert conn.setup("RTP/AVP/TCP;interleaved=2-3", BASE + "/trackID=0").status == 455
    conn.transport.clear()
    assert conn.request("TEARDOWN").status == 200
    stream.push(units[second_gop + 10])
    assert conn.transport.value() == b""  # detached
    assert not stream.ended


def test_play_adds_parameter_sets_to_bare_keyframes(
    conn: Conn, hub: StreamHub, reactor: FakeReactor
) -> None:
    stream = start_playing(conn, hub, reactor)
    conn.transport.clear()
    for u in video_units(strip_params=True)[:3]:
        stream.push(u)
    aus = played(conn.transport.value())
    assert len(aus) == 3 and aus[0].keyframe  # decodable: SPS/PPS came with it
    nal_types = [h264.nal_type(n) for n in aus[0].nals]
    assert nal_types[:2] == [7, 8]


def test_play_udp_only_is_461_and_play_before_setup_455(conn: Conn, hub: StreamHub) -> None:
    live_stream(hub)
    assert conn.request("PLAY").status == 455
    r = conn.setup("RTP/AVP;unicast;client_port=5000-5001", BASE + "/trackID=0")
    assert r.status == 461
    assert (
        conn.setup("RTP/AVP/TCP;interleaved=0-1", BASE.replace("cam", "nope") + "/trackID=0").status
        == 404
    )


def test_slow_player_drops_to_next_keyframe(
    conn: Conn, hub: StreamHub, reactor: FakeReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(egress, "MAX_PLAYER_QUEUE", 5)
    stream = start_playing(conn, hub, reactor)
    player = conn.player
    assert conn.transport.producer is player
    assert player is not None and player.reader is not None
    units = video_units()
    gop_starts = [i for i, u in enumerate(units) if u.keyframe]
    assert gop_starts[1] > 6  # the first GOP overflows the queue
    player.pauseProducing()  # the transport's buffer is full: the reader queues
    before = len(conn.transport.value())
    for u in units[: gop_starts[1] + 3]:
        stream.push(u)
    assert len(conn.transport.value()) == before  # nothing written while paused
    # The first GOP overflowed: what was queued and the rest of that GOP are skipped.
    assert player.reader.discarded == gop_starts[1]
    conn.transport.clear()
    player.resumeProducing()  # drained: resume at the keyframe it skipped to
    stream.push(units[gop_starts[1] + 3])
    aus = played(conn.transport.value())
    assert (
        len(aus) == 4
        and aus[0].keyframe
        and list(aus[0].nals) == h264.split_annexb(units[gop_starts[1]].data)
    )
    assert not any(a.keyframe for a in aus[1:])
    conn.close()
    assert player.dropped_units == gop_starts[1]


def test_stream_end_closes_the_player(
    conn: Conn, hub: StreamHub, reactor: FakeReactor, log_events: list[LogEvent]
) -> None:
    stream = start_playing(conn, hub, reactor)
    conn.transport.clear()
    stream.end("Stopped by publisher stop")
    events = RtspParser().feed(conn.transport.value())
    assert len(events) == 1 and isinstance(events[0], InterleavedFrame)
    assert events[0].channel == 1 and isinstance(parse_rtcp(events[0].payload)[0], Bye)
    assert conn.transport.disconnecting
    assert any(
        "RTSP 10.0.0.7:50000: cam ended, closing the player" in m for m in messages(log_events)
    )
    conn.close()


def test_player_connection_close_detaches(conn: Conn, hub: StreamHub, reactor: FakeReactor) -> None:
    stream = start_playing(conn, hub, reactor)
    player = conn.player
    conn.close()
    assert player is not None and stream.readers == []
    assert not stream.ended


# -- the input guard: nothing a peer sends reaches the reactor -------------------------------------


def test_a_request_handler_raising_is_answered_and_closes(
    conn: Conn, hub: StreamHub, log_events: list[LogEvent], monkeypatch: Any
) -> None:
    def broken(req: object) -> None:
        raise RuntimeError("handler bug")

    monkeypatch.setattr(conn.proto, "rtsp_DESCRIBE", broken)
    r = conn.request("DESCRIBE")  # no exception escapes dataReceived
    assert r.status == 500 and r.headers["Connection"] == "close"
    assert conn.transport.disconnecting
    assert any(
        "closing connection: DESCRIBE" in m and "RuntimeError: handler bug" in m
        for m in messages(log_events)
    )


def test_media_path_raising_closes_only_that_connection(
    factory: RTSPServerFactory,
    reactor: FakeReactor,
    hub: StreamHub,
    log_events: list[LogEvent],
    monkeypatch: Any,
) -> None:
    other = Conn(factory, IPv4Address("TCP", "10.0.0.8", 50001))
    other.publish_tcp(BASE.replace("cam", "other"))
    tcp = Conn(factory)
    tcp.publish_tcp()
    assert tcp.publisher.ingest is not None

    def broken(index: int, data: bytes) -> None:
        raise KeyError("ingest bug")

    monkeypatch.setattr(tcp.publisher.ingest, "rtp", broken)
    tcp.send(build_interleaved(0, rtp_packets(1)[0]))  # does not raise
    assert tcp.transport.disconnecting
    assert any("closing connection: KeyError: 'ingest bug'" in m for m in messages(log_events))
    tcp.close()
    assert hub.get("cam") is None

    udp = Conn(factory, IPv4Address("TCP", "10.0.0.9", 50002))
    assert udp.announce(BASE.replace("cam", "udp")).status == 200
    r = udp.setup(
        "RTP/AVP/UDP;unicast;client_port=5000-5001;mode=record",
        BASE.replace("cam", "udp") + "/streamid=0",
    )
    (spec,) = parse_transport(r.headers["Transport"])
    assert spec.server_port is not None
    assert udp.request("RECORD", BASE.replace("cam", "udp")).status == 200
    assert udp.publisher.ingest is not None
    monkeypatch.setattr(udp.publisher.ingest, "rtcp", broken)
    reactor.udp[spec.server_port[1]].deliver(b"\x80\xc9\x00\x01\x00\x00\x00\x01", "10.0.0.9")
    assert udp.transport.disconnecting
    # The healthy publisher never noticed.
    assert not other.transport.disconnecting
    other.send(build_interleaved(0, rtp_packets(1)[0]))
    assert hub.get("other") is not None


# -- malformed media: dropped and counted, the publish goes on -------------------------------------


def malformed_aus(first_seq: int, count: int, ssrc: int = 0x1234) -> list[bytes]:
    """`count` access units of one FU-A fragment with a bad header each (RFC 6184 malformed)."""
    return [
        RtpPacket(96, (first_seq + i) & 0xFFFF, 900_000 + 3000 * i, ssrc, b"\x7c", True).serialize()
        for i in range(count)
    ]


def test_malformed_units_are_dropped_and_only_a_long_run_closes(
    conn: Conn, hub: StreamHub, log_events: list[LogEvent]
) -> None:
    """Finding 17: one bad NAL unit must not end the publish; a long run of them does."""
    conn.publish_tcp()
    stream = hub.get("cam")
    assert stream is not None
    good = rtp_packets(3)
    for p in good:
        conn.send(build_interleaved(0, p))
    units = stream.video_units
    seq = RtpPacket.parse(good[-1]).seq + 1
    for p in malformed_aus(seq, MAX_BAD_RUN - 1):
        conn.send(build_interleaved(0, p))
    assert not conn.transport.disconnecting
    assert stream.rejected_units == MAX_BAD_RUN - 1 and not stream.ended
    assert (
        sum("dropping malformed media: FU-A with a bad header" in m for m in messages(log_events))
        == 1
    )
    assert conn.request("GET_PARAMETER").status == 200
    # One more in the run: the publisher is dropped with the reason.
    conn.send(build_interleaved(0, malformed_aus(seq + MAX_BAD_RUN - 1, 1)[0]))
    assert conn.transport.disconnecting
    assert any(
        f"closing connection: MediaRejected: {MAX_BAD_RUN} malformed video access units in a "
        "row (last: FU-A with a bad header)" in m
        for m in messages(log_events)
    )
    assert stream.video_units == units
    conn.close()
    assert stream.ended


def test_a_good_unit_ends_the_run(conn: Conn, hub: StreamHub) -> None:
    conn.publish_tcp()
    stream = hub.get("cam")
    assert stream is not None
    _, _, units = media()
    pack = H264Packetizer(96, 0x1234, initial_seq=1000, timestamp_offset=5000)
    for round_ in range(3):
        # A keyframe, then most of a run of garbage.
        for packet in pack.packetize(units[0].data, round_ * 900_000):
            conn.send(build_interleaved(0, packet.serialize()))
        seq = pack.seq
        for garbage in malformed_aus(seq, MAX_BAD_RUN - 10):
            conn.send(build_interleaved(0, garbage))
        pack.seq = (seq + MAX_BAD_RUN - 10) & 0xFFFF
    assert not conn.transport.disconnecting
    assert stream.rejected_units == 3 * (MAX_BAD_RUN - 10) and stream.video_units >= 2


def test_picture_over_max_picture_pixels_refuses_the_video_not_the_session(
    reactor: FakeReactor, log_events: list[LogEvent]
) -> None:
    hub = StreamHub(max_picture_pixels=1000)
    conn = Conn(RTSPServerFactory(hub, reactor))
    conn.publish_tcp()
    stream = hub.get("cam")
    assert stream is not None
    assert stream.video == VideoParams("H264") and stream.rejected_units == 1
    assert any(
        "SPS picture size 320x240 is larger than the limit of 1000 pixels" in m
        for m in messages(log_events)
    )
    for p in rtp_packets(30):
        conn.send(build_interleaved(0, p))
    audio = RtpPacket(97, 1, 0, 0x55, b"\x00\x10\x01").serialize()
    conn.send(build_interleaved(2, audio))
    assert stream.video_units == 0 and stream.gop is None and stream.audio_units == 1
    assert not conn.transport.disconnecting and not stream.ended
    assert conn.request("GET_PARAMETER").status == 200


def test_bad_sprop_is_counted_and_the_publish_goes_on(conn: Conn, hub: StreamHub) -> None:
    sdp = re.sub(
        rb"sprop-parameter-sets=[^;\r]+", b"sprop-parameter-sets=!!notbase64", announce_sdp()
    )
    assert conn.announce(BASE, sdp).status == 200
    tcp = "RTP/AVP/TCP;unicast;interleaved={};mode=record"
    assert conn.setup(tcp.format("0-1"), BASE + "/streamid=0").status == 200
    assert conn.request("RECORD").status == 200
    stream = hub.get("cam")
    assert stream is not None and stream.rejected_units == 1
    for p in rtp_packets(5):  # ffmpeg's keyframes carry SPS/PPS in-band
        conn.send(build_interleaved(0, p))
    assert stream.video_units == 5


# -- memory: an ended session is freed by reference counting alone ------------------------------


def test_ended_sessions_are_freed_without_the_garbage_collector(
    hub: StreamHub, reactor: FakeReactor
) -> None:
    """Publishers (TCP and UDP) and a player: once their connections are gone, nothing of
    theirs (protocol, stream, ingest, depacketizer, UDP ports, player) waits for a full GC."""
    factory = RTSPServerFactory(hub, reactor)
    gc.collect()
    gc.disable()
    try:
        tcp = Conn(factory)
        tcp.publish_tcp()
        for p in rtp_packets(10):
            tcp.send(build_interleaved(0, p))
        udp = Conn(factory, IPv4Address("TCP", "10.0.0.7", 50001))
        assert udp.announce(BASE.replace("cam", "udp")).status == 200
        assert (
            udp.setup(
                "RTP/AVP/UDP;unicast;client_port=5000-5001;mode=record",
                BASE.replace("cam", "udp") + "/streamid=0",
            ).status
            == 200
        )
        assert udp.request("RECORD", BASE.replace("cam", "udp")).status == 200
        (port,) = [p for p in reactor.udp.values() if p.port % 2 == 0]
        for p in rtp_packets(5):
            port.deliver(p)
        player = Conn(factory, IPv4Address("TCP", "10.0.0.8", 50002))
        assert play_setup(player).status == 200
        assert player.request("PLAY").status == 200
        reactor.advance(0)
        assert player.player is not None
        objects = []
        for conn in (tcp, udp):
            assert conn.publisher.ingest is not None and conn.publisher.stream is not None
            objects += [conn.proto, conn.publisher, conn.publisher.stream, conn.publisher.ingest]
            objects += [t.depacketizer for t in conn.publisher.ingest.tracks if t.depacketizer]
        objects += [
            player.proto,
            player.proto.session,
            player.player,
            *(t.udp for t in udp.publisher.transports.values()),
        ]
        refs = [weakref.ref(o) for o in objects]
        del objects, port
        for conn in (player, udp, tcp):
            conn.close()
        del tcp, udp, player, conn
        assert reactor.getDelayedCalls() == [] and reactor.udp == {}
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        gc.enable()


# -- playback credentials (REST auth on) --------------------------------------------------------


@pytest.fixture
def guarded_factory(hub: StreamHub, reactor: FakeReactor) -> RTSPServerFactory:
    auth = RtspAuthenticator("admin", "s3cret", reactor, realm="wcs")
    return RTSPServerFactory(hub, reactor, play_auth=auth)


def login(conn: Conn, response: RtspResponse, method: str, uri: str, password: str) -> str:
    challenge = choose_challenge(parse_challenges(response.headers.get_all("WWW-Authenticate")))
    assert challenge is not None
    return authorization_header(challenge, method, uri, "admin", password)


def test_playback_needs_the_credentials_when_set(
    guarded_factory: RTSPServerFactory, hub: StreamHub, reactor: FakeReactor
) -> None:
    """Finding 9: with REST auth on, DESCRIBE/SETUP/PLAY needed nothing."""
    stream = live_stream(hub)
    for u in video_units()[:3]:
        stream.push(u)
    conn = Conn(guarded_factory)
    assert conn.request("OPTIONS").status == 200  # not guarded
    r = conn.request("DESCRIBE")
    assert r.status == 401 and r.body == b""
    challenges = parse_challenges(r.headers.get_all("WWW-Authenticate"))
    assert [(c.scheme, c.params.get("algorithm")) for c in challenges] == [
        ("digest", "SHA-256"),
        ("digest", "MD5"),
        ("basic", None),
    ]
    r = conn.request(
        "DESCRIBE", headers=[("Authorization", login(conn, r, "DESCRIBE", BASE, "s3cret"))]
    )
    assert r.status == 200 and b"m=video" in r.body
    control = BASE + "/trackID=0"
    tcp = [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")]
    assert conn.request("SETUP", control, tcp).status == 401
    challenge = conn.request("SETUP", control, tcp)
    auth = [("Authorization", login(conn, challenge, "SETUP", control, "s3cret"))]
    r = conn.request("SETUP", control, tcp + auth)
    assert r.status == 200
    conn.session = parse_session(r.headers["Session"])[0]
    assert conn.request("PLAY").status == 401
    auth = [("Authorization", login(conn, challenge, "PLAY", BASE, "s3cret"))]
    assert conn.request("PLAY", headers=auth).status == 200
    reactor.advance(0)
    assert conn.player is not None
    # Basic works as well (what a camera-style client sends up front).
    other = Conn(guarded_factory)
    basic = "Basic " + base64.b64encode(b"admin:s3cret").decode()
    assert other.request("DESCRIBE", headers=[("Authorization", basic)]).status == 200


def test_a_wrong_password_is_answered_after_a_delay_and_input_waits(
    guarded_factory: RTSPServerFactory, hub: StreamHub, reactor: FakeReactor
) -> None:
    live_stream(hub)
    conn = Conn(guarded_factory)
    first = conn.request("DESCRIBE")
    wrong = login(conn, first, "DESCRIBE", BASE, "guess")
    conn.cseq += 1
    conn.send(
        build_request("DESCRIBE", BASE, [("CSeq", str(conn.cseq)), ("Authorization", wrong)])
        + build_request("OPTIONS", "*", [("CSeq", str(conn.cseq + 1))])
    )
    assert conn.transport.value() == b""  # held: the reactor is free, this connection waits
    assert conn.transport.producerState == "paused"
    reactor.advance(0.99)
    assert conn.transport.value() == b""
    reactor.advance(0.01)
    answers = RtspParser().feed(conn.transport.value())
    conn.transport.clear()
    assert [(a.status, a.headers["CSeq"]) for a in answers] == [  # type: ignore[union-attr]
        (401, str(conn.cseq)),
        (200, str(conn.cseq + 1)),  # the pipelined request, in order, after the delay
    ]
    assert conn.transport.producerState == "producing"
    conn.cseq += 1
    # The right password still works on the same connection.
    good = login(conn, first, "DESCRIBE", BASE, "s3cret")
    assert conn.request("DESCRIBE", headers=[("Authorization", good)]).status == 200


def test_repeated_wrong_logins_close_the_connection(
    guarded_factory: RTSPServerFactory, hub: StreamHub, reactor: FakeReactor
) -> None:
    live_stream(hub)
    conn = Conn(guarded_factory)
    basic = [("Authorization", "Basic " + base64.b64encode(b"admin:guess").decode())]
    for attempt in range(1, MAX_AUTH_FAILURES + 1):
        conn.cseq += 1
        conn.send(build_request("DESCRIBE", BASE, [("CSeq", str(conn.cseq)), *basic]))
        reactor.advance(AUTH_FAILURE_DELAY)
        r = conn.response()
        assert r.status == 401
        assert conn.transport.disconnecting == (attempt == MAX_AUTH_FAILURES)
    assert r.headers["Connection"] == "close"


def test_stale_nonce_is_answered_at_once_with_stale(hub: StreamHub, reactor: FakeReactor) -> None:
    auth = RtspAuthenticator("admin", "s3cret", reactor, nonce_lifetime=30)
    live_stream(hub)
    conn = Conn(RTSPServerFactory(hub, reactor, play_auth=auth))
    first = conn.request("DESCRIBE")
    reactor.advance(31)
    late = login(conn, first, "DESCRIBE", BASE, "s3cret")
    r = conn.request("DESCRIBE", headers=[("Authorization", late)])
    assert r.status == 401
    assert all(c.stale for c in parse_challenges(r.headers.get_all("WWW-Authenticate"))[:2])
    fresh = login(conn, r, "DESCRIBE", BASE, "s3cret")
    assert conn.request("DESCRIBE", headers=[("Authorization", fresh)]).status == 200


def test_publishing_stays_open_with_playback_credentials(
    guarded_factory: RTSPServerFactory, hub: StreamHub
) -> None:
    conn = Conn(guarded_factory)
    conn.publish_tcp()  # ANNOUNCE, SETUP, RECORD without Authorization
    assert hub.get("cam") is not None


def test_teardown_right_after_play_before_the_player_started(
    conn: Conn, hub: StreamHub, reactor: FakeReactor
) -> None:
    """Found by the rtsp_server fuzz target: PLAY then TEARDOWN in one read unregistered a
    producer that was never registered (StringTransport raises, as other transports may)."""
    live_stream(hub)
    play_setup(conn)
    conn.cseq += 2
    session = [("Session", conn.session or "")]
    conn.send(
        build_request("PLAY", BASE, [("CSeq", str(conn.cseq - 1)), *session])
        + build_request("TEARDOWN", BASE, [("CSeq", str(conn.cseq)), *session])
    )
    answers = RtspParser().feed(conn.transport.value())
    assert [a.status for a in answers] == [200, 200]  # type: ignore[union-attr]
    assert not conn.transport.disconnecting
    reactor.advance(0)  # the player's start, now moot
    assert conn.player is None and conn.transport.producer is None


def test_pipelined_requests_answered_at_once_are_all_answered(conn: Conn, hub: StreamHub) -> None:
    """A DESCRIBE's reply is a Deferred (the play hook may wait), usually fired already: each
    one re-entered the request loop, so 400 pipelined in one read lost 141 answers to a
    RecursionError. Replies that are ready are answered inline, in order."""
    live_stream(hub)
    count = 2000
    conn.send(
        b"".join(build_request("DESCRIBE", BASE, [("CSeq", str(i + 1))]) for i in range(count))
    )
    answers = RtspParser().feed(conn.transport.value())
    assert [(a.status, a.headers["CSeq"]) for a in answers] == [  # type: ignore[union-attr]
        (200, str(i + 1)) for i in range(count)
    ]
    assert not conn.transport.disconnecting


def test_a_failing_player_is_closed_and_the_publisher_goes_on(
    factory: RTSPServerFactory,
    hub: StreamHub,
    reactor: FakeReactor,
    log_events: list[LogEvent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A player's unit_received runs inside the publisher's dataReceived: a player's failure
    must close the player only."""
    publisher = Conn(factory)
    publisher.publish_tcp()
    packets = rtp_packets(40)
    for p in packets[:10]:
        publisher.send(build_interleaved(0, p))
    player = Conn(factory, IPv4Address("TCP", "10.0.0.8", 50001))
    play_setup(player)
    assert player.request("PLAY").status == 200
    reactor.advance(0)
    assert player.player is not None

    def broken(data: bytes, pts: int) -> list[RtpPacket]:
        raise OverflowError("packetizer bug")

    monkeypatch.setattr(player.player.packetizer, "packetize", broken)
    for p in packets[10:]:
        publisher.send(build_interleaved(0, p))  # does not raise
    assert player.transport.disconnecting and not publisher.transport.disconnecting
    assert any(
        "playing cam failed: OverflowError: packetizer bug" in m for m in messages(log_events)
    )
    stream = hub.get("cam")
    assert stream is not None and stream.video_units >= 35 and not stream.ended


# -- access: the publish password and the REST hooks ---------------------------------------------


def publish_guarded(hub: StreamHub, reactor: FakeReactor, **access_kw: Any) -> Conn:
    access = Access(reactor, **access_kw)
    auth = RtspAuthenticator(None, "pub-secret", reactor, realm="wcs-publish")
    return Conn(RTSPServerFactory(hub, reactor, publish_auth=auth, access=access))


def raw_request(conn: Conn, method: str, uri: str = BASE, **kw: Any) -> None:
    conn.cseq += 1
    headers = [("CSeq", str(conn.cseq)), *kw.pop("headers", [])]
    conn.send(build_request(method, uri, headers, kw.pop("body", b"")))


def responses(conn: Conn) -> list[RtspResponse]:
    data = conn.transport.value()
    conn.transport.clear()
    return [e for e in conn.parser.feed(data) if isinstance(e, RtspResponse)]


def test_announce_needs_the_publish_password_any_user(hub: StreamHub, reactor: FakeReactor) -> None:
    conn = publish_guarded(hub, reactor)
    r = conn.announce()
    assert r.status == 401 and 'realm="wcs-publish"' in r.headers["WWW-Authenticate"]
    assert hub.get("cam") is None
    challenge = choose_challenge(parse_challenges(r.headers.get_all("WWW-Authenticate")))
    assert challenge is not None
    auth = authorization_header(challenge, "ANNOUNCE", BASE, "obs", "pub-secret")
    r = conn.request(
        "ANNOUNCE",
        headers=[("Content-Type", "application/sdp"), ("Authorization", auth)],
        body=announce_sdp(),
    )
    assert r.status == 200 and hub.get("cam") is not None
    # Playback needs nothing here (REST auth off): answered (no video yet), not challenged.
    assert Conn(conn.factory).request("DESCRIBE").status == 415


def test_the_hooks_decide_an_announce_and_later_requests_wait(
    hub: StreamHub, reactor: FakeReactor
) -> None:
    hooks = PendingHooks()
    conn = Conn(RTSPServerFactory(hub, reactor, access=Access(reactor, hooks=hooks)))
    sdp = [("Content-Type", "application/sdp")]
    raw_request(conn, "ANNOUNCE", BASE + "?key=k1", headers=sdp, body=announce_sdp())
    raw_request(conn, "OPTIONS", "*")
    assert responses(conn) == []  # the OPTIONS behind it waits too
    connect = hooks.answer("connect")
    assert connect["mediaProvider"] == PROVIDER_RTSP and connect["custom"] == {"key": "k1"}
    assert responses(conn) == []
    publish = hooks.answer("publishStream")
    assert publish["name"] == "cam" and publish["appKey"] == "live"
    assert [r.status for r in responses(conn)] == [200, 200]
    stream = hub.get("cam")
    assert stream is not None and stream.media_session_id == publish["mediaSessionId"]
    assert [(m, b["status"]) for m, b in hooks.told] == [("StreamStatusEvent", "PUBLISHING")]


def hooked_announce(hub: StreamHub, reactor: FakeReactor) -> tuple[Conn, PendingHooks]:
    """A connection whose ANNOUNCE of `cam` waits for hooks the test answers by hand."""
    hooks = PendingHooks()
    conn = Conn(RTSPServerFactory(hub, reactor, access=Access(reactor, hooks=hooks)))
    raw_request(
        conn, "ANNOUNCE", headers=[("Content-Type", "application/sdp")], body=announce_sdp()
    )
    return conn, hooks


def test_a_publisher_gone_before_the_answer_publishes_nothing(
    hub: StreamHub, reactor: FakeReactor
) -> None:
    conn, hooks = hooked_announce(hub, reactor)
    hooks.answer("connect")
    conn.close()
    hooks.answer("publishStream")
    assert hub.get("cam") is None
    assert not [m for m, _ in hooks.told if m == "StreamStatusEvent"]


def test_an_announce_is_answered_once_the_directory_answers(reactor: FakeReactor) -> None:
    directory = PendingDirectory()
    hub = StreamHub(directory=directory)
    sdp = [("Content-Type", "application/sdp")]
    first, second, gone = (Conn(RTSPServerFactory(hub, reactor)) for _ in range(3))
    raw_request(first, "ANNOUNCE", headers=sdp, body=announce_sdp())
    raw_request(second, "ANNOUNCE", BASE.replace("cam", "door"), headers=sdp, body=announce_sdp())
    raw_request(gone, "ANNOUNCE", BASE.replace("cam", "gone"), headers=sdp, body=announce_sdp())
    assert responses(first) == responses(second) == []
    directory.grant("cam")
    [r] = responses(first)
    assert r.status == 200 and hub.get("cam") is not None
    directory.refuse("door")
    [r] = responses(second)
    assert (r.status, r.reason) == (403, "Stream name is already in use")
    gone.close()
    directory.grant("gone")
    assert hub.get("gone") is None and result_now(directory.lookup("gone")) is None


def test_an_announce_refused_by_the_hook_is_403_with_its_reason(
    hub: StreamHub, reactor: FakeReactor
) -> None:
    conn, hooks = hooked_announce(hub, reactor)
    hooks.answer("connect")
    hooks.answer("publishStream", refuse="Not your stream")
    [r] = responses(conn)
    assert (r.status, r.reason) == (403, "Not your stream")
    assert hub.get("cam") is None
    # The connect hook is asked once per connection.
    raw_request(conn, "DESCRIBE")
    hooks.answer("playStream")
    assert [m for m, _, _ in hooks.asked] == ["connect", "publishStream", "playStream"]


def test_the_play_hook_decides_describe_and_a_setup_without_describe(
    hub: StreamHub, reactor: FakeReactor
) -> None:
    stream = live_stream(hub)
    for u in video_units()[:3]:
        stream.push(u)
    hooks = PendingHooks()
    factory = RTSPServerFactory(hub, reactor, access=Access(reactor, hooks=hooks))
    conn = Conn(factory)
    raw_request(conn, "DESCRIBE")
    hooks.answer("connect")
    hooks.answer("playStream", refuse="No viewers")
    [r] = responses(conn)
    assert (r.status, r.reason) == (403, "No viewers")
    other = Conn(factory)
    tcp = [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")]
    raw_request(other, "SETUP", BASE + "/trackID=0", headers=tcp)
    hooks.answer("connect")
    play = hooks.answer("playStream")
    assert play["name"] == "cam" and play["published"] is False
    [r] = responses(other)
    assert r.status == 200


def test_a_player_paused_during_the_gop_replay_queues_the_rest(hub: StreamHub) -> None:
    """The transport may fill up while the cached GOP is replayed: the rest waits."""
    stream = live_stream(hub)
    units = video_units()
    gop_end = next(i for i, u in enumerate(units) if u.keyframe and i > 0)
    for u in units[:gop_end]:
        stream.push(u)

    class FullAfterOneWrite:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)
            player.pauseProducing()  # as a transport whose buffer is full

    session = FullAfterOneWrite()
    player = Player(session, stream, 0)  # type: ignore[arg-type]
    player.attach()
    assert player.reader is not None
    assert len(session.writes) == 1 and player.reader.queued == gop_end - 1
    player.resumeProducing()  # one more unit, then full again
    assert len(session.writes) == 2 and player.reader.queued == gop_end - 2
    player.detach()
    assert stream.readers == []
