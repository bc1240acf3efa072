"""RTSPClientProtocol and PullManager over StringTransport + Clock: whole camera sessions scripted
byte for byte (auth, interleaved RTP into a Stream, keepalive, receiver reports, timeouts,
TEARDOWN) and the pull's reconnect policy with a fake connector."""

from __future__ import annotations

import base64
import gc
import hashlib
import weakref
from dataclasses import dataclass, field

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure

from tests.unit.camera import BASE, PUBLIC, SSRC, URL, Cam, camera_sdp, video_rtp
from tests.unit.fakes import FakeConnector, startup_now
from tests.unit.media_fixtures import h264_sample
from wcs.directory import InvalidName, NameInUse
from wcs.rest.views import pull_json
from wcs.rtsp.auth import parse_challenges
from wcs.rtsp.client import (
    AUTH,
    BYE,
    NETWORK,
    NO_MEDIA,
    PROTOCOL,
    REDIRECT,
    REFUSED,
    TIMEOUT,
    ClientConfig,
    RtspClientError,
    RTSPClientProtocol,
)
from wcs.rtsp.ingest import MAX_BAD_RUN, Track
from wcs.rtsp.message import (
    RtspParser,
    RtspResponse,
    parse_transport,
)
from wcs.rtsp.pull import (
    CONNECT_FAILED,
    FAILED,
    PENDING,
    PLAYING,
    RECONNECTING,
    Pull,
    PullManager,
    PullUriError,
    default_stream_name,
    parse_camera_uri,
)
from wcs.rtsp.rtp import Bye, ReceiverReport, RtpPacket, SourceDescription, parse_rtcp
from wcs.streams import StreamHub

NO_MEDIA_CONFIG = ClientConfig(media_timeout=1000.0)


def audio_rtp(seq: int) -> bytes:
    return RtpPacket(
        pt=97, seq=seq, timestamp=seq * 1024, ssrc=0x55, payload=b"\x00\x10\x01"
    ).serialize()


# -- what the client reports -------------------------------------------------------------------


@dataclass
class Sink:
    """Records what the client reports."""

    ready: list[list[Track]] = field(default_factory=list)
    playing: int = 0
    rtp_packets: list[tuple[int, RtpPacket]] = field(default_factory=list)
    rtcp_packets: list[tuple[int, bytes]] = field(default_factory=list)
    closed: list[RtspClientError | None] = field(default_factory=list)
    bye: bool = False

    def session_ready(self, client: RTSPClientProtocol, tracks: list[Track]) -> None:
        self.ready.append(tracks)

    def session_playing(self, client: RTSPClientProtocol) -> None:
        self.playing += 1

    def rtp(self, index: int, packet: RtpPacket) -> None:
        self.rtp_packets.append((index, packet))

    def rtcp(self, index: int, data: bytes) -> bool:
        self.rtcp_packets.append((index, data))
        return self.bye and any(isinstance(p, Bye) for p in parse_rtcp(data))

    def session_closed(self, client: RTSPClientProtocol, error: RtspClientError | None) -> None:
        self.closed.append(error)


def connect(
    url: str = URL, config: ClientConfig | None = None
) -> tuple[RTSPClientProtocol, Cam, Sink, Clock]:
    clock = Clock()
    sink = Sink()
    client = RTSPClientProtocol(url, sink, clock, config or ClientConfig())
    transport = StringTransport()
    client.makeConnection(transport)
    return client, Cam(client, transport), sink, clock


def closed_with(cam: Cam, sink: Sink) -> RtspClientError:
    """The client closed the connection with an error: report it once the close completes."""
    assert cam.tr.disconnecting
    cam.drop()
    assert len(sink.closed) == 1 and sink.closed[0] is not None
    return sink.closed[0]


# -- the whole exchange ------------------------------------------------------------------------


def test_session_from_options_to_play() -> None:
    client, cam, sink, _ = connect()
    options = cam.request("OPTIONS")
    assert options.uri == URL and options.headers["CSeq"] == "1"
    assert options.headers["User-Agent"] == "wcs"
    cam.answer(options, headers=[("Public", PUBLIC)])

    describe = cam.request("DESCRIBE")
    assert describe.uri == URL and describe.headers["Accept"] == "application/sdp"
    assert describe.headers["CSeq"] == "2" and "Authorization" not in describe.headers
    cam.answer(
        describe,
        headers=[("Content-Type", "application/sdp"), ("Content-Base", BASE)],
        body=camera_sdp(),
    )

    # Video and audio are set up; the ONVIF metadata track is not.
    setup = cam.request("SETUP")
    assert setup.uri == BASE + "trackID=0" and "Session" not in setup.headers
    spec = parse_transport(setup.headers["Transport"])[0]
    assert (spec.lower, spec.interleaved, spec.multicast) == ("TCP", (0, 1), False)
    # The camera picks other channels: the client follows its answer.
    cam.answer(
        setup,
        headers=[
            ("Session", "ABCDEF0123;timeout=30"),
            ("Transport", "RTP/AVP/TCP;unicast;interleaved=6-7;ssrc=1234ABCD"),
        ],
    )
    setup = cam.request("SETUP")
    assert setup.uri == BASE + "trackID=1" and setup.headers["Session"] == "ABCDEF0123"
    assert parse_transport(setup.headers["Transport"])[0].interleaved == (0, 1)
    cam.answer(
        setup, headers=[("Session", "ABCDEF0123"), ("Transport", setup.headers["Transport"])]
    )
    assert [[(t.kind, t.codec) for t in tracks] for tracks in sink.ready] == [
        [("video", "H264"), ("audio", "AAC")]
    ]

    play = cam.request("PLAY")
    assert play.uri == BASE and play.headers["Session"] == "ABCDEF0123"
    assert play.headers["Range"] == "npt=0.000-"
    assert sink.playing == 0
    cam.answer(play, headers=[("Session", "ABCDEF0123")])
    assert sink.playing == 1 and client.state == "PLAYING"
    assert client.session_id == "ABCDEF0123" and client.session_timeout == 30

    video = video_rtp()
    cam.rtp(6, video[:5])
    cam.rtp(0, [audio_rtp(1)])
    cam.rtp(9, [audio_rtp(2)])  # a channel nobody set up: ignored
    cam.rtp(7, [b"\x80\xc8\x00\x00"])  # too short for RTCP: ignored
    assert sink.rtp_packets == [(0, RtpPacket.parse(p)) for p in video[:5]] + [
        (1, RtpPacket.parse(audio_rtp(1)))
    ]
    assert client.ignored_frames == 2 and sink.closed == []


def test_rtp_from_the_camera_becomes_stream_units(env: Env) -> None:
    pull = startup_now(env.manager, URL, "door")
    stream = pull.stream
    assert env.hub.get("door") is stream and stream.provider == "RTSP"
    assert stream.status == PENDING and pull.status == PENDING
    _client, cam = env.connector.accept()
    cam.handshake(channels=["0-1", "2-3"])
    # The SDP's sprop-parameter-sets give the size before any media.
    assert stream.video is not None and (stream.video.width, stream.video.height) == (160, 120)
    assert stream.has_audio and stream.audio_codec == "AAC"
    assert stream.status == PENDING

    packets = video_rtp()
    cam.rtp(0, packets)
    cam.rtp(2, [audio_rtp(1), audio_rtp(2)])
    assert stream.status == PLAYING and pull.status == PLAYING
    sample = h264_sample(bframes=False, seconds=1, size="160x120")
    # Every access unit but the last (its end is only known from the next timestamp or marker).
    assert stream.video_units >= len(sample.units) - 1 and stream.audio_units == 2
    assert stream.gop is not None and stream.gop.units[0].keyframe
    assert stream.gop.units[0].data.startswith(b"\x00\x00\x00\x01")


def test_digest_401_retry_and_every_later_request_signed(log_events: list[LogEvent]) -> None:
    url = "rtsp://admin:s%3Acr%40t@10.0.0.2:554/stream1"
    _client, cam, sink, _ = connect(url)
    options = cam.request("OPTIONS")
    assert options.uri == URL  # never the credentials on the wire
    cam.answer(options, headers=[("Public", PUBLIC)])
    describe = cam.request("DESCRIBE")
    challenge = 'Digest realm="IP Camera", nonce="n0nce1", qop="auth", algorithm=MD5'
    cam.answer(
        describe,
        401,
        headers=[("WWW-Authenticate", 'Basic realm="IP Camera"'), ("WWW-Authenticate", challenge)],
    )
    again = cam.request("DESCRIBE")
    assert again.headers["CSeq"] == "3"
    auth = again.headers["Authorization"]
    assert auth.startswith("Digest ")
    check_digest(auth, "DESCRIBE", URL, "admin", "s:cr@t", "n0nce1", nc="00000001")
    cam.answer(
        again,
        headers=[("Content-Type", "application/sdp"), ("Content-Base", BASE)],
        body=camera_sdp(audio=False),
    )
    setup = cam.request("SETUP")
    check_digest(
        setup.headers["Authorization"],
        "SETUP",
        BASE + "trackID=0",
        "admin",
        "s:cr@t",
        "n0nce1",
        nc="00000002",
    )
    cam.answer(setup, headers=[("Session", "S1"), ("Transport", setup.headers["Transport"])])
    play = cam.request("PLAY")
    check_digest(
        play.headers["Authorization"], "PLAY", BASE, "admin", "s:cr@t", "n0nce1", nc="00000003"
    )
    cam.answer(play)
    assert sink.playing == 1 and sink.closed == []
    wire = cam.tr.value()
    assert b"s:cr@t" not in wire and b"s%3Acr%40t" not in wire
    logged = " ".join(formatEvent(e) + repr(e) for e in log_events)
    assert "s:cr@t" not in logged and "s%3Acr%40t" not in logged


def check_digest(
    header: str, method: str, uri: str, user: str, password: str, nonce: str, *, nc: str
) -> None:
    params = parse_challenges(header)[0].params
    assert (params["username"], params["realm"], params["nonce"]) == (user, "IP Camera", nonce)
    assert (params["uri"], params["qop"], params["nc"]) == (uri, "auth", nc)

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{user}:IP Camera:{password}")
    ha2 = md5(f"{method}:{uri}")
    expected = md5(f"{ha1}:{nonce}:{nc}:{params['cnonce']}:auth:{ha2}")
    assert params["response"] == expected


def test_basic_auth() -> None:
    _client, cam, _sink, _ = connect("rtsp://viewer:pa%20ss@10.0.0.2/stream1")
    cam.answer(cam.request("OPTIONS"), 401, headers=[("WWW-Authenticate", 'Basic realm="cam"')])
    options = cam.request("OPTIONS")
    token = base64.b64encode(b"viewer:pa ss").decode()
    assert options.headers["Authorization"] == f"Basic {token}"
    cam.answer(options)
    assert cam.request("DESCRIBE").headers["Authorization"] == f"Basic {token}"


def test_wrong_credentials_fail_after_one_retry() -> None:
    _client, cam, sink, _ = connect("rtsp://admin:wrong@10.0.0.2/stream1")
    cam.answer(cam.request("OPTIONS"))
    challenge = [("WWW-Authenticate", 'Digest realm="r", nonce="a"')]
    cam.answer(cam.request("DESCRIBE"), 401, headers=challenge)
    cam.answer(cam.request("DESCRIBE"), 401, headers=challenge)
    assert cam.requests() == []
    err = closed_with(cam, sink)
    assert err.kind == AUTH and err.status == 401 and "credentials refused" in err.reason


def test_401_without_credentials() -> None:
    _client, cam, sink, _ = connect()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), 401, headers=[("WWW-Authenticate", 'Basic realm="r"')])
    err = closed_with(cam, sink)
    assert err.kind == AUTH and "wants credentials" in err.reason


def test_unsupported_challenge() -> None:
    _client, cam, sink, _ = connect("rtsp://u:p@10.0.0.2/x")
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), 401, headers=[("WWW-Authenticate", "Negotiate abc")])
    assert closed_with(cam, sink).kind == AUTH


def test_stale_nonce_is_answered_without_failing() -> None:
    _client, cam, sink, clock = connect("rtsp://u:p@10.0.0.2/stream1", NO_MEDIA_CONFIG)
    cam.answer(cam.request("OPTIONS"), headers=[("Public", PUBLIC)])
    old = [("WWW-Authenticate", 'Digest realm="r", nonce="old"')]
    cam.answer(cam.request("DESCRIBE"), 401, headers=old)
    describe = cam.request("DESCRIBE")
    cam.answer(describe, headers=[("Content-Base", BASE)], body=camera_sdp(audio=False))
    setup = cam.request("SETUP")
    cam.answer(
        setup, headers=[("Session", "S;timeout=20"), ("Transport", setup.headers["Transport"])]
    )
    cam.answer(cam.request("PLAY"))
    clock.advance(10)
    keepalive = cam.request("GET_PARAMETER")
    assert 'nonce="old"' in keepalive.headers["Authorization"]
    # The nonce expired: the camera says stale=true with a new one; the client re-signs.
    stale = [("WWW-Authenticate", 'Digest realm="r", nonce="new", stale=TRUE')]
    cam.answer(keepalive, 401, headers=stale)
    retry = cam.request("GET_PARAMETER")
    params = parse_challenges(retry.headers["Authorization"])[0].params
    assert params["nonce"] == "new"
    cam.answer(retry)
    assert sink.closed == [] and not cam.tr.disconnecting
    # A camera that keeps calling every nonce stale is given up on.
    clock.advance(10)
    req = cam.request("GET_PARAMETER")
    for _ in range(5):  # a first retry, then three stale nonces
        cam.answer(req, 401, headers=stale)
        if cam.tr.disconnecting:
            break
        req = cam.request("GET_PARAMETER")
    assert closed_with(cam, sink).kind == AUTH


# -- keepalive, receiver reports, timeouts ----------------------------------------------------


@pytest.mark.parametrize(
    ("public", "method", "uri"),
    [(PUBLIC, "GET_PARAMETER", BASE), ("OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN", "OPTIONS", URL)],
)
def test_keepalive_every_half_session_timeout(public: str, method: str, uri: str) -> None:
    _client, cam, sink, clock = connect(config=NO_MEDIA_CONFIG)
    cam.handshake(public=public, session="S1;timeout=30", sdp=camera_sdp(audio=False))
    clock.advance(14.9)
    assert cam.requests() == []
    clock.advance(0.1)
    req = cam.request(method)
    assert req.uri == uri and req.headers["Session"] == "S1"
    cam.answer(req)
    clock.advance(14.9)
    assert cam.requests() == []
    clock.advance(0.1)
    cam.answer(cam.request(method))
    assert sink.closed == [] and not cam.tr.disconnecting


def test_keepalive_default_session_timeout_is_60() -> None:
    _client, cam, _sink, clock = connect(config=NO_MEDIA_CONFIG)
    cam.handshake(session="S1", sdp=camera_sdp(audio=False))
    clock.advance(29.9)
    assert cam.requests() == []
    clock.advance(0.1)
    cam.request("GET_PARAMETER")


def test_receiver_reports_over_the_rtcp_channel() -> None:
    _client, cam, _sink, clock = connect()
    cam.handshake(sdp=camera_sdp(audio=False), channels=["4-5"])
    clock.advance(4.0)
    packets = video_rtp(ssrc=0xCAFE, seq=65530)  # wraps around 65535
    cam.rtp(4, packets)
    assert cam.frames == []
    clock.advance(1.0)
    cam.requests()
    assert [f.channel for f in cam.frames] == [5]
    rr, sdes = parse_rtcp(cam.frames[0].payload)
    assert isinstance(rr, ReceiverReport) and isinstance(sdes, SourceDescription)
    (block,) = rr.reports
    assert block.ssrc == 0xCAFE and block.cumulative_lost == 0
    assert block.highest_seq == 65530 + len(packets) - 1  # extended: one wrap
    assert sdes.chunks[0].ssrc == rr.ssrc and sdes.chunks[0].cname
    cam.rtp(4, video_rtp(ssrc=0xCAFE, seq=(65530 + len(packets)) & 0xFFFF)[:3])
    clock.advance(5.0)
    cam.requests()
    assert [f.channel for f in cam.frames] == [5, 5]


def test_no_media_fails_the_session() -> None:
    _client, cam, sink, clock = connect()
    cam.handshake(sdp=camera_sdp(audio=False))
    packets = video_rtp()
    clock.advance(9.9)
    cam.rtp(0, packets[:1])
    clock.advance(9.9)
    assert not cam.tr.disconnecting
    clock.advance(0.3)
    err = closed_with(cam, sink)
    assert err.kind == NO_MEDIA and "no media" in err.reason


def test_unanswered_request_times_out() -> None:
    _client, cam, sink, clock = connect()
    cam.answer(cam.request("OPTIONS"))
    cam.request("DESCRIBE")
    clock.advance(9.9)
    assert not cam.tr.disconnecting
    clock.advance(0.1)
    err = closed_with(cam, sink)
    assert err.kind == TIMEOUT and "DESCRIBE" in err.reason


# -- TEARDOWN and closing ---------------------------------------------------------------------


def test_stop_sends_teardown_and_closes_on_the_answer() -> None:
    client, cam, sink, clock = connect()
    cam.handshake(session="S9;timeout=60", sdp=camera_sdp(audio=False))
    done = client.stop()
    teardown = cam.request("TEARDOWN")
    assert teardown.uri == BASE and teardown.headers["Session"] == "S9"
    assert not cam.tr.disconnecting and not done.called
    cam.answer(teardown)
    assert cam.tr.disconnecting
    cam.drop()
    assert done.called and sink.closed == [None]
    assert clock.getDelayedCalls() == []


def test_stop_without_teardown_answer_closes_after_a_bound() -> None:
    client, cam, sink, clock = connect()
    cam.handshake(sdp=camera_sdp(audio=False))
    done = client.stop()
    cam.request("TEARDOWN")
    clock.advance(1.9)
    assert not cam.tr.disconnecting
    clock.advance(0.1)
    assert cam.tr.disconnecting and not done.called
    # The camera does not even acknowledge the close: the connection is aborted.
    clock.advance(2.0)
    assert cam.tr.disconnecting
    cam.drop()
    assert done.called and sink.closed == [None]


def test_stop_before_a_session_just_closes() -> None:
    client, cam, sink, _clock = connect()
    cam.request("OPTIONS")
    client.stop()
    assert cam.requests() == [] and cam.tr.disconnecting
    cam.drop()
    assert sink.closed == [None]


def test_camera_closing_the_connection_is_an_error() -> None:
    _client, cam, sink, _clock = connect()
    cam.handshake(sdp=camera_sdp(audio=False))
    cam.drop()
    assert sink.closed[0] is not None and sink.closed[0].kind == NETWORK


def test_rtcp_bye_on_video_ends_the_session() -> None:
    _client, cam, sink, _clock = connect()
    sink.bye = True
    cam.handshake(sdp=camera_sdp(audio=False))
    cam.rtp(1, [Bye((SSRC,)).serialize()])
    assert closed_with(cam, sink).kind == BYE


# -- what cameras answer ----------------------------------------------------------------------


def test_describe_refused() -> None:
    _client, cam, sink, _ = connect()
    cam.answer(cam.request("OPTIONS"), 501)  # not fatal: DESCRIBE follows
    cam.answer(cam.request("DESCRIBE"), 404)
    err = closed_with(cam, sink)
    assert (err.kind, err.status, err.reason) == (REFUSED, 404, "DESCRIBE answered 404 Not Found")


def test_redirect_is_reported_with_its_location() -> None:
    _client, cam, sink, _ = connect()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), 302, headers=[("Location", "rtsp://10.0.0.3/s")])
    err = closed_with(cam, sink)
    assert (err.kind, err.location) == (REDIRECT, "rtsp://10.0.0.3/s")


def test_setup_461_says_tcp_is_missing() -> None:
    _client, cam, sink, _ = connect()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), headers=[("Content-Base", BASE)], body=camera_sdp())
    cam.answer(cam.request("SETUP"), 461)
    err = closed_with(cam, sink)
    assert err.kind == REFUSED and "RTP over TCP" in err.reason


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ([("Content-Type", "text/html")], b"<html>", "not SDP"),
        ([], b"m=video x RTP/AVP 96\r\n", "unusable SDP"),
        ([], b"v=0\r\nm=application 0 RTP/AVP 107\r\n", "no audio or video"),
    ],
)
def test_bad_describe_answers(headers: list[tuple[str, str]], body: bytes, message: str) -> None:
    _client, cam, sink, _ = connect()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), headers=headers, body=body)
    err = closed_with(cam, sink)
    assert err.kind == PROTOCOL and message in err.reason


@pytest.mark.parametrize(
    ("setup_headers", "message"),
    [
        ([("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")], "without a Session"),
        ([("Session", "S"), ("Transport", "RTP/AVP;unicast;server_port=5000-5001")], "UDP"),
        ([("Session", "S"), ("Transport", "RTP/AVP/TCP;interleaved=x")], "bad Transport"),
    ],
)
def test_bad_setup_answers(setup_headers: list[tuple[str, str]], message: str) -> None:
    _client, cam, sink, _ = connect()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), headers=[("Content-Base", BASE)], body=camera_sdp())
    cam.answer(cam.request("SETUP"), headers=setup_headers)
    err = closed_with(cam, sink)
    assert err.kind == PROTOCOL and message in err.reason


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"m=video 0 RTP/AVP 96", "m=video \u00b2 RTP/AVP 96".encode()),
        (b"m=video 0 RTP/AVP 96", "m=video 0 RTP/AVP \u00b2".encode()),
        (b"a=rtpmap:96 H264/90000", "a=rtpmap:96 H264/\u00b2".encode()),
        (b"a=rtpmap:97 MPEG4-GENERIC/16000/1", "a=rtpmap:97 MPEG4-GENERIC/16000/\u00b2".encode()),
        (b"a=control:trackID=0", b"a=control:track 0"),
    ],
)
def test_unusable_describe_sdp_fails_the_pull_with_its_reason(
    env: Env, old: bytes, new: bytes
) -> None:
    """Finding 6: a "\u00b2" in the camera's SDP raised ValueError at the reactor, reported as
    "the camera closed the connection" on every reconnect; now the pull says why."""
    sdp = camera_sdp().replace(old, new, 1)
    assert sdp != camera_sdp()
    pull = startup_now(env.manager, URL, "door")
    _, cam = env.connector.accept()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), headers=[("Content-Type", "application/sdp")], body=sdp)
    assert cam.tr.disconnecting
    cam.drop()
    assert pull.status == RECONNECTING
    assert pull.info.startswith("the camera sent an unusable SDP: "), pull.info
    assert "closed the connection" not in pull.info
    assert pull_json(pull)["info"] == pull.info


def test_other_protocols_formats_are_not_payload_types() -> None:
    """A "\u00b2" format of a non-RTP m= line raised ValueError in describe_tracks; such a
    track is just not one we receive."""
    sdp = camera_sdp().replace(
        b"m=application 0 RTP/AVP 107", "m=application 0 udp \u00b2".encode()
    )
    _client, cam, sink, _ = connect()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), headers=[("Content-Base", BASE)], body=sdp)
    assert cam.request("SETUP").uri == BASE + "trackID=0"
    assert sink.closed == []


@pytest.mark.parametrize("cseq", ["\u00b2", "\u0662", "1_0"])
def test_response_with_a_non_ascii_cseq_is_not_a_crash(cseq: str) -> None:
    _client, cam, sink, _ = connect()
    cam.request("OPTIONS")
    cam.send(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\r\n".encode())
    cam.request("DESCRIBE")  # taken as the answer to the oldest request, like a missing CSeq
    assert sink.closed == [] and not cam.tr.disconnecting


def test_camera_reusing_channels_is_refused() -> None:
    _client, cam, sink, _ = connect()
    with pytest.raises(AssertionError):  # handshake stops at the close
        cam.handshake(channels=["0-1", "0-1"])
    assert "reused interleaved channels" in closed_with(cam, sink).reason


def test_garbage_and_oversized_frames_close_the_connection() -> None:
    _, cam, sink, _ = connect()
    cam.send(b"HTTP/1.1 200 OK\r\n\r\n")
    assert closed_with(cam, sink).kind == PROTOCOL

    _client, cam, sink, _ = connect(config=ClientConfig(max_interleaved=1500))
    cam.handshake(sdp=camera_sdp(audio=False))
    cam.send(b"$\x00\x07\xd0" + bytes(2000))
    err = closed_with(cam, sink)
    assert err.kind == PROTOCOL and "exceeds the limit" in err.reason


def test_oversized_sdp_is_refused() -> None:
    _client, cam, sink, _ = connect(config=ClientConfig(max_body=1000))
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), body=camera_sdp() + b"a=x:" + bytes(2000) + b"\r\n")
    assert closed_with(cam, sink).kind == PROTOCOL


def test_answer_without_cseq_goes_to_the_oldest_request() -> None:
    _client, cam, _sink, _ = connect()
    cam.request("OPTIONS")
    cam.send(b"RTSP/1.0 200 OK\r\nPublic: OPTIONS, DESCRIBE\r\n\r\n")
    cam.request("DESCRIBE")


def test_requests_from_the_camera_are_answered() -> None:
    _client, cam, sink, _ = connect()
    cam.request("OPTIONS")
    cam.send(
        b"OPTIONS * RTSP/1.0\r\nCSeq: 77\r\n\r\nANNOUNCE rtsp://x/ RTSP/1.0\r\nCSeq: 78\r\n\r\n"
    )
    assert b"RTSP/1.0 200 OK\r\nCSeq: 77" in cam.tr.value()
    assert b"RTSP/1.0 501 Not Implemented\r\nCSeq: 78" in cam.tr.value()
    # Exactly the two answers (after the client's own OPTIONS), and the session goes on.
    answers = [e for e in RtspParser().feed(cam.tr.value()) if isinstance(e, RtspResponse)]
    assert [(a.status, a.headers["CSeq"]) for a in answers] == [(200, "77"), (501, "78")]
    assert sink.closed == [] and not cam.tr.disconnecting


def test_interleaved_data_before_play_is_ignored() -> None:
    client, cam, sink, _ = connect()
    cam.rtp(0, video_rtp()[:2])
    assert sink.rtp_packets == [] and client.ignored_frames == 2


# -- PullManager --------------------------------------------------------------------------------


@dataclass
class Env:
    hub: StreamHub
    clock: Clock
    connector: FakeConnector
    manager: PullManager


@pytest.fixture
def env() -> Env:
    hub = StreamHub()
    clock = Clock()
    connector = FakeConnector()
    return Env(hub, clock, connector, PullManager(hub, clock, connector=connector))


def play_session(env: Env) -> Cam:
    _, cam = env.connector.accept()
    cam.handshake(sdp=camera_sdp(audio=False))
    cam.rtp(0, video_rtp())
    return cam


def retry_delays(env: Env, pull: Pull, count: int) -> list[float]:
    """Refuse `count` connection attempts in a row; the delays before each next attempt."""
    delays = []
    for _ in range(count):
        env.connector.refuse()
        assert pull.status in (RECONNECTING, FAILED)
        before = len(env.connector.attempts)
        (call,) = env.clock.getDelayedCalls()
        delays.append(call.getTime() - env.clock.seconds())
        env.clock.advance(delays[-1])
        assert len(env.connector.attempts) == before + 1
    return delays


def test_startup_connects_to_host_and_port(env: Env) -> None:
    pull = startup_now(env.manager, "rtsp://user:pw@cam.local:8554/live/ch1?x=1", "door")
    attempt = env.connector.attempts[0]
    assert (attempt.host, attempt.port) == ("cam.local", 8554)
    assert pull.uri == "rtsp://cam.local:8554/live/ch1?x=1" and pull.name == "door"
    assert startup_now(env.manager, "rtsp://cam.local/x").client is not None
    assert env.connector.attempts[1].port == 554
    assert pull_json(pull)["uri"] == "rtsp://cam.local:8554/live/ch1?x=1"
    assert "pw" not in repr(pull_json(pull))


def test_startup_refusals(env: Env) -> None:
    startup_now(env.manager, URL, "door")
    with pytest.raises(NameInUse):
        startup_now(env.manager, URL, "door")
    with pytest.raises(InvalidName):
        startup_now(env.manager, URL, "a/b")
    with pytest.raises(PullUriError):
        startup_now(env.manager, "http://x/y", "other")
    assert [p.name for p in env.manager.find_all()] == ["door"]
    assert len(env.connector.attempts) == 1


def test_reconnect_backoff_doubles_to_the_cap_and_resets_after_a_good_session(env: Env) -> None:
    pull = startup_now(env.manager, URL, "door")
    assert retry_delays(env, pull, 7) == [1, 2, 4, 8, 16, 30, 30]
    assert pull.status == RECONNECTING and pull.info == CONNECT_FAILED
    assert pull.stream.status == RECONNECTING

    cam = play_session(env)
    assert pull.status == PLAYING and pull.stream.gop is not None
    env.clock.advance(3)
    cam.rtp(0, video_rtp(seq=5000)[:1])
    cam.drop()  # a short session (3 s < stable_after): the backoff goes on growing
    assert pull.stream.gop is None  # no stale picture while reconnecting
    assert pull.status == RECONNECTING and pull.stream.status == RECONNECTING
    assert [c.getTime() - env.clock.seconds() for c in env.clock.getDelayedCalls()] == [30]

    env.clock.advance(30)
    cam = play_session(env)
    for _ in range(12):  # media keeps flowing for 12 s: a good session
        env.clock.advance(1)
        cam.rtp(0, video_rtp(seq=7000)[:1])
    cam.drop()
    assert [c.getTime() - env.clock.seconds() for c in env.clock.getDelayedCalls()] == [1]
    env.clock.advance(1)
    assert retry_delays(env, pull, 2) == [2, 4]


def test_camera_refusing_us_is_failed_and_retried(env: Env) -> None:
    pull = startup_now(env.manager, "rtsp://u:wrong@10.0.0.2/stream1", "door")
    _, cam = env.connector.accept()
    cam.answer(cam.request("OPTIONS"))
    challenge = [("WWW-Authenticate", 'Digest realm="r", nonce="a"')]
    cam.answer(cam.request("DESCRIBE"), 401, headers=challenge)
    cam.answer(cam.request("DESCRIBE"), 401, headers=challenge)
    cam.drop()
    assert pull.status == FAILED and pull.stream.status == FAILED
    assert "401" in pull.info and "wrong" not in pull.info
    assert pull_json(pull)["status"] == FAILED
    env.clock.advance(1)
    assert len(env.connector.attempts) == 2


def test_redirect_is_followed_with_the_credentials(env: Env) -> None:
    pull = startup_now(env.manager, "rtsp://u:p@10.0.0.2/stream1", "door")
    _, cam = env.connector.accept()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), 302, headers=[("Location", "rtsp://10.0.0.3:8554/real")])
    cam.drop()
    env.clock.advance(0)
    attempt = env.connector.attempts[-1]
    assert (attempt.host, attempt.port) == ("10.0.0.3", 8554)
    assert attempt.client.url == "rtsp://10.0.0.3:8554/real"
    assert attempt.client._user == "u" and pull.status == PENDING


def test_terminate_sends_teardown_and_stops_reconnecting(env: Env) -> None:
    pull = startup_now(env.manager, URL, "door")
    cam = play_session(env)
    stream = pull.stream
    assert env.manager.terminate(URL) is pull
    teardown = cam.request("TEARDOWN")
    assert stream.ended and env.hub.get("door") is None
    assert env.manager.find_all() == [] and env.manager.find("door") is None
    cam.answer(teardown)
    cam.drop()
    assert env.clock.getDelayedCalls() == []
    assert len(env.connector.attempts) == 1
    assert env.manager.terminate(URL) is None


def test_stream_terminate_stops_the_pull(env: Env) -> None:
    pull = startup_now(env.manager, URL, "door")
    cam = play_session(env)
    pull.stream.terminate()  # /stream/terminate
    cam.request("TEARDOWN")
    assert env.manager.find_all() == [] and not pull.wanted
    cam.drop()
    env.clock.advance(60)
    assert len(env.connector.attempts) == 1


def test_terminate_while_connecting_or_waiting(env: Env) -> None:
    pull = startup_now(env.manager, URL, "a")
    attempt = env.connector.attempts[0]
    env.manager.terminate("a")
    assert attempt.deferred.called  # the connection attempt was cancelled
    attempt.deferred.addErrback(lambda f: None)

    pull = startup_now(env.manager, URL, "b")
    env.connector.refuse()
    assert env.clock.getDelayedCalls()
    env.manager.terminate("b")
    assert env.clock.getDelayedCalls() == [] and not pull.wanted


def test_stop_all_waits_for_teardown(env: Env) -> None:
    startup_now(env.manager, URL, "a")
    cam = play_session(env)
    startup_now(env.manager, "rtsp://10.0.0.9/x", "b")  # still connecting
    done = env.manager.stop_all()
    assert not done.called
    teardown = cam.request("TEARDOWN")
    cam.answer(teardown)
    cam.drop()
    assert done.called and env.manager.find_all() == [] and len(env.hub) == 0


def test_when_playing(env: Env) -> None:
    pull = startup_now(env.manager, URL, "a")
    d = pull.when_playing()
    assert not d.called
    play_session(env)
    assert d.result is pull
    assert pull.when_playing().result is pull
    other = startup_now(env.manager, "rtsp://10.0.0.9/x", "b")
    failed = other.when_playing()
    errors: list[Failure] = []
    failed.addErrback(errors.append)
    env.manager.terminate("b")
    assert errors and errors[0].check(RtspClientError)


def test_find_resolve_and_default_names(env: Env) -> None:
    pull = startup_now(env.manager, "rtsp://u:p@10.0.0.2:554/stream1")
    assert pull.name == "10.0.0.2:554_stream1"
    for key in ("10.0.0.2:554_stream1", URL, "rtsp://u:p@10.0.0.2:554/stream1"):
        assert env.manager.find(key) is pull
    assert env.manager.resolve(URL) == pull.name
    assert env.manager.resolve("rtsp://other/x") == "rtsp://other/x"
    assert env.manager.resolve("plain") == "plain"
    assert env.manager.find(URL) is pull
    assert startup_now(env.manager, "rtsp://10.0.0.5/a").name == "10.0.0.5_a"


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("rtsp://cam:554/live/ch1", "cam:554_live_ch1"),
        ("rtsp://cam/", "cam"),
        ("RTSP://Cam/a\\b", "Cam_a_b"),
        ("rtsp://cam/a?x=1/2", "cam_a?x=1_2"),
    ],
)
def test_default_stream_name(uri: str, name: str) -> None:
    assert default_stream_name(uri) == name


def test_long_default_names_stay_unique() -> None:
    a = default_stream_name("rtsp://cam/" + "x" * 400 + "a")
    b = default_stream_name("rtsp://cam/" + "x" * 400 + "b")
    assert a != b and len(a.encode()) <= 255 and len(b.encode()) <= 255


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "required"),
        ("http://cam/x", "rtsp://"),
        ("rtsps://cam/x", "not supported"),
        ("rtsp:cam/x", "rtsp://"),
        ("rtsp://", "no host"),
        ("rtsp://cam:99999/x", "bad port"),
        ("rtsp://cam:0/x", "bad port"),
        ("rtsp://cam/x y", "spaces"),
        ("rtsp://cam/x#frag", "fragment"),
        ("rtsp://a:b@c@cam/x", "malformed credentials"),
        ("rtsp://:pw@cam/x", "malformed credentials"),
        ("rtsp://u:%zz@cam/x", "malformed credentials"),
        ("rtsp://cam/" + "x" * 3000, "longer than"),
    ],
)
def test_bad_camera_uris(uri: str, message: str) -> None:
    with pytest.raises(PullUriError, match=message):
        parse_camera_uri(uri)


def test_good_camera_uris() -> None:
    assert parse_camera_uri("rtsp://a%40b:p%3A%2F@cam:8554/x?y=1") == (
        "rtsp://cam:8554/x?y=1",
        "rtsp://a%40b:p%3A%2F@cam:8554/x?y=1",
    )
    assert parse_camera_uri("rtsp://[::1]:554/x")[0] == "rtsp://[::1]:554/x"


def test_redirect_loops_and_bad_targets_fall_back_to_backoff(env: Env) -> None:
    pull = startup_now(env.manager, URL, "door")
    for hop in range(6):
        _, cam = env.connector.accept()
        cam.answer(cam.request("OPTIONS"))
        cam.answer(cam.request("DESCRIBE"), 302, headers=[("Location", f"rtsp://10.0.1.{hop}/")])
        cam.drop()
        env.clock.advance(0)
    # Five hops followed; the sixth redirect counts as a failure: back to the URI, after 1 s.
    assert [a.host for a in env.connector.attempts] == ["10.0.0.2"] + [
        f"10.0.1.{i}" for i in range(5)
    ]
    assert pull.status == RECONNECTING and "302" in pull.info
    env.clock.advance(1)
    assert env.connector.attempts[-1].host == "10.0.0.2"

    _, cam = env.connector.accept()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), 302, headers=[("Location", "http://10.0.0.7/x")])
    cam.drop()
    env.clock.advance(0)
    assert pull.status == FAILED and "rtsp://" in pull.info
    assert env.connector.attempts[-1].host == "10.0.0.2"


def test_connector_raising_is_a_failed_attempt() -> None:
    hub = StreamHub()
    clock = Clock()

    def broken(host: str, port: int, client: RTSPClientProtocol) -> Deferred[object]:
        raise ValueError("bad host name")

    pull = startup_now(PullManager(hub, clock, connector=broken), URL, "door")
    assert pull.status == RECONNECTING and pull.info == CONNECT_FAILED
    assert len(clock.getDelayedCalls()) == 1


def test_anything_raising_on_camera_input_fails_the_session_with_a_reason(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layer guard: an exception from the camera's bytes closes this connection, the pull
    reports why and reconnects by its policy; nothing reaches the reactor."""
    pull = startup_now(env.manager, URL, "door")
    _client, cam = env.connector.accept()
    cam.handshake(sdp=camera_sdp(audio=False))

    def broken(index: int, packet: RtpPacket) -> None:
        raise IndexError("ingest bug")

    monkeypatch.setattr(pull, "rtp", broken)
    cam.rtp(0, video_rtp()[:1])  # does not raise
    assert cam.tr.disconnecting
    cam.drop()
    assert pull.status == RECONNECTING
    assert pull.info == "unusable data from the camera: IndexError: ingest bug"
    env.clock.advance(1)
    assert len(env.connector.attempts) == 2


def test_camera_malformed_units_are_counted_and_a_long_run_reconnects() -> None:
    """Finding 17 on the pull side: bad units are dropped and counted, the pull keeps going;
    only a long run of them closes the session (the pull reconnects with the reason)."""
    hub = StreamHub(max_picture_pixels=1000)  # the camera's 160x120 is too large
    clock = Clock()
    connector = FakeConnector()
    pull = startup_now(PullManager(hub, clock, connector=connector), URL, "door")
    _, cam = connector.accept()
    cam.handshake(sdp=camera_sdp(audio=False))
    stream = pull.stream
    assert stream.rejected_units == 1 and stream.video is not None and stream.video.width == 0
    video = video_rtp()
    cam.rtp(0, video)
    assert stream.video_units == 0 and not cam.tr.disconnecting  # video refused, session stays
    seq = RtpPacket.parse(video[-1]).seq + 1
    garbage = [
        RtpPacket(96, (seq + i) & 0xFFFF, 900_000 + 3000 * i, SSRC, b"\x7c", True).serialize()
        for i in range(MAX_BAD_RUN)
    ]
    cam.rtp(0, garbage[:-1])
    assert not cam.tr.disconnecting
    cam.rtp(0, garbage[-1:])
    assert cam.tr.disconnecting
    cam.drop()
    assert pull.status == RECONNECTING
    assert pull.info.startswith(
        f"unusable data from the camera: MediaRejected: {MAX_BAD_RUN} malformed video access units"
    )
    clock.advance(1)
    assert len(connector.attempts) == 2


def test_an_ended_pull_is_freed_without_the_garbage_collector(env: Env) -> None:
    """A terminated pull, its stream, client, ingest and depacketizer are freed by reference
    counting alone (the stream's on_terminate and the closing client used to keep a cycle)."""
    gc.collect()
    gc.disable()
    try:
        pull = startup_now(env.manager, URL, "door")
        cam = play_session(env)
        client = pull.client
        assert client is not None and pull._ingest is not None
        refs = [
            weakref.ref(o)
            for o in (
                pull,
                pull.stream,
                client,
                pull._ingest,
                pull._ingest.tracks[0].depacketizer,
            )
        ]
        env.manager.terminate("door")
        cam.answer(cam.request("TEARDOWN"))
        cam.drop()
        del pull, client, cam
        env.connector.attempts.clear()
        assert env.clock.getDelayedCalls() == [] and env.manager.find_all() == []
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        gc.enable()


def test_camera_pulls_are_exempt_from_the_publish_idle_timeout(env: Env) -> None:
    """Finding 18: a pull reconnects by its own policy; the idle watchdog must leave it be."""
    pull = startup_now(env.manager, URL, "door")
    assert pull.stream.watch_idle is False
