"""Fuzz targets for RTSP: the message parser, SDP, header values, auth (both sides), RTP/RTCP,
the RFC 6184 depacketizer, and whole server and camera-client protocols fed peer bytes.

The protocol targets run with the input guard in place, so they would hide bugs: their `drop`
re-raises whatever exception it is handling unless it is one of the documented ways input is
refused (a parse error answered by the protocol, MediaRejected), so a bug the guard or a
request's catch-all turned into a disconnect still counts as a crash.
"""

from __future__ import annotations

import base64
import contextlib
import random
import sys
from fractions import Fraction
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.fuzz import target
from tests.unit.fakes import FakeReactor, publish_now
from wcs.directory import InvalidName
from wcs.media.h264 import to_annexb
from wcs.media.units import MediaUnit, VideoParams
from wcs.rtsp import server as server_module
from wcs.rtsp import session as session_module
from wcs.rtsp.auth import (
    AuthError,
    RtspAuthenticator,
    authorization_header,
    choose_challenge,
    parse_challenges,
    split_userinfo,
)
from wcs.rtsp.client import ClientConfig, RtspClientError, RTSPClientProtocol
from wcs.rtsp.h264rtp import H264Depacketizer
from wcs.rtsp.ingest import MediaRejected, RtpIngest, describe_tracks
from wcs.rtsp.message import RtspParseError, RtspParser, parse_session, parse_transport
from wcs.rtsp.numbers import ascii_hex, ascii_uint
from wcs.rtsp.pull import PullUriError, parse_camera_uri
from wcs.rtsp.rtp import ReceptionStats, RtcpError, RtpError, RtpPacket, parse_rtcp
from wcs.rtsp.sdp import SdpError, h264_sprop, parse_sdp, resolve_control
from wcs.rtsp.server import RTSPServerFactory, RTSPServerProtocol, stream_name_from_url
from wcs.streams import Stream, StreamHub

# ffmpeg's SPS/PPS for a 320x240 testsrc (the sprop-parameter-sets of its ANNOUNCE).
SPS = base64.b64decode("Z0LADdoFB+wEQAAAAwBAAAAMo8UKqA==")
PPS = base64.b64decode("aM4PyA==")
PEER = IPv4Address("TCP", "10.0.0.7", 50000)


def _chunks(data: bytes) -> list[bytes]:
    """`data` cut at places that depend only on it, as TCP delivers bytes."""
    rng = random.Random(len(data) * 31 + (data[0] if data else 0))
    out, pos = [], 0
    while pos < len(data):
        size = rng.choice((1, 2, 3, 7, 64, 500, 4096))
        out.append(data[pos : pos + size])
        pos += size
    return out


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# --- parsers ----------------------------------------------------------------------------------


def _parse(data: bytes, pieces: list[bytes]) -> list[object] | None:
    """Events of `pieces` fed one by one, or None if the parser refused them."""
    parser = RtspParser(max_body=4096, max_interleaved=4096)
    events: list[object] = []
    try:
        for piece in pieces:
            events += parser.feed(piece)
            parser.in_message  # noqa: B018 - a property that must never raise
    except RtspParseError:
        return None
    return events


@target("rtsp_message")
def rtsp_message(data: bytes) -> None:
    whole = _parse(data, [data])
    split = _parse(data, _chunks(data))
    # Bytes cut elsewhere must give the same messages, or the same refusal.
    if (whole is None) != (split is None) or (whole is not None and whole != split):
        raise AssertionError("the same bytes in other pieces parsed differently")


@target("sdp")
def sdp(data: bytes) -> None:
    try:
        session = parse_sdp(data)
    except SdpError:
        return
    base = "rtsp://cam.example:554/live/ch1?x=1"
    with contextlib.suppress(SdpError):
        resolve_control(base, session.control)
    for track in describe_tracks(session):
        with contextlib.suppress(SdpError):
            resolve_control(base, track.media.control)
        for fmtp in track.media.fmtp.values():
            with contextlib.suppress(SdpError):
                h264_sprop(fmtp)
        track.media.payload_types  # noqa: B018
    # What the ingest does with it: nothing but documented errors.
    stream = Stream("fuzz", "RTSP", max_picture_pixels=1920 * 1088)
    RtpIngest(stream, describe_tracks(session), reliable=True)


@target("rtsp_transport")
def rtsp_transport(data: bytes) -> None:
    lines = _text(data).split("\n")
    for line in lines[:8]:
        with contextlib.suppress(RtspParseError):
            for spec in parse_transport(line):
                spec.to_header()
        with contextlib.suppress(RtspParseError):
            parse_session(line)
        ascii_uint(line, 0xFFFFFFFF)
        ascii_hex(line, 8)
        with contextlib.suppress(InvalidName):
            stream_name_from_url(line)
        with contextlib.suppress(AuthError):
            split_userinfo(line)
        with contextlib.suppress(PullUriError):
            parse_camera_uri(line)


@target("rtsp_auth")
def rtsp_auth(data: bytes) -> None:
    text = _text(data)
    head, _, rest = text.partition("\n")
    # The client side: a camera's WWW-Authenticate headers.
    try:
        challenge = choose_challenge(parse_challenges(rest.split("\n")[:16]))
    except AuthError:
        challenge = None
    if challenge is not None:
        with contextlib.suppress(AuthError):
            authorization_header(challenge, "DESCRIBE", "rtsp://h/x", "u", "p", nc=1)
    # The server side: any Authorization header is checked without raising.
    clock = Clock()
    auth = RtspAuthenticator("admin", "s3cret", clock, secret=b"fuzz")
    for header in (head, rest, text):
        auth.check("DESCRIBE", "rtsp://h/live/cam", header, "peer")
    auth.challenges(stale=data[:1] == b"s")


@target("rtp")
def rtp(data: bytes) -> None:
    stats = ReceptionStats(90000)
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        pass
    else:
        again = RtpPacket.parse(packet.serialize())
        if again != packet:
            raise AssertionError("an RTP packet does not survive serialize/parse")
        stats.update(packet, 1.0)
        stats.report_block(2.0)
    with contextlib.suppress(RtcpError):
        parse_rtcp(data)


@target("h264_rtp")
def h264_rtp(data: bytes) -> None:
    """Records of [flags][length][payload]: flags carry the marker, a sequence step and a
    timestamp step, so loss, reordering, duplicates and AU boundaries all happen."""
    if not data:
        return
    window = data[0] % 9
    dep = H264Depacketizer(
        sprop_sps=SPS if data[0] & 0x10 else None,
        sprop_pps=PPS if data[0] & 0x20 else None,
        reorder_window=window,
        max_au_bytes=65536,
        max_nals=64,
        max_pixels=320 * 240 if data[0] & 0x40 else 64 * 64,
    )
    stream = Stream("fuzz", "RTSP")
    pos, seq, ts = 1, 1000, 0
    while pos + 2 <= len(data):
        flags, length = data[pos], data[pos + 1]
        payload = data[pos + 2 : pos + 2 + length]
        pos += 2 + length
        seq = (seq + (flags & 0x07) - 1) & 0xFFFF  # -1..6: duplicates, order, gaps
        ts = (ts + ((flags >> 3) & 0x03) * 3000) & 0xFFFFFFFF
        packet = RtpPacket(96, seq, ts, 0x1234, payload, marker=bool(flags & 0x80))
        for au in dep.push(packet):
            au.video_params()
            stream.push(au.media_unit())
        if dep.bad_run < 0 or dep.rejected < 0:
            raise AssertionError("negative counters")
    dep.flush()


# --- whole protocols --------------------------------------------------------------------------

# Exceptions a protocol may turn into a disconnect on purpose: anything else reaching its guard
# (or a request's catch-all) is a bug the fuzzer must see.
_REFUSALS = (RtspParseError, MediaRejected)


def _reraise_unexpected() -> None:
    err = sys.exc_info()[1]
    if err is not None and not isinstance(err, _REFUSALS):
        raise err


class _StrictServer(RTSPServerProtocol):
    def drop(self, reason: str, reply: bytes = b"") -> None:
        _reraise_unexpected()
        super().drop(reason, reply)


class _StrictClient(RTSPClientProtocol):
    def drop(self, reason: str) -> None:
        _reraise_unexpected()
        super().drop(reason)


def _live_hub() -> StreamHub:
    hub = StreamHub(max_picture_pixels=1920 * 1088)
    stream = publish_now(hub, "live", "Flash")
    stream.set_video_params(VideoParams("H264", 320, 240, to_annexb([SPS, PPS])))
    idr = to_annexb([SPS, PPS, b"\x65\x88" + bytes(64)])
    stream.push(MediaUnit("video", "H264", 0, 0, True, idr, Fraction(1, 1000)))
    return hub


class _FixedSecrets:
    """Session ids the seeds can name: the server's are random."""

    @staticmethod
    def token_hex(nbytes: int) -> str:
        return "00" * nbytes


@target("rtsp_server")
def rtsp_server(data: bytes) -> None:
    """A whole server connection: `data` is what one client sends (requests, interleaved
    frames, and as UDP datagrams to any port a SETUP bound), with time passing between pieces.
    A first byte "A" turns playback credentials on (admin/s3cret, nonces of a fixed secret).
    Session ids are all zeros, as in the seeds."""
    # The connection's (media session ids, hook tokens) and the sessions' (Session ids).
    random_secrets = server_module.secrets
    server_module.secrets = _FixedSecrets  # type: ignore[assignment]
    session_module.secrets = _FixedSecrets  # type: ignore[assignment]
    try:
        _serve(data)
    finally:
        server_module.secrets = session_module.secrets = random_secrets


def _serve(data: bytes) -> None:
    reactor = FakeReactor()
    hub = _live_hub()
    auth = (
        RtspAuthenticator("admin", "s3cret", reactor, secret=b"fuzz") if data[:1] == b"A" else None
    )
    factory = RTSPServerFactory(hub, reactor, ip="127.0.0.1", play_auth=auth, max_udp_pairs=8)
    proto = _StrictServer(hub, reactor)
    proto.factory = factory
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    for i, chunk in enumerate(_chunks(data)):
        if transport.disconnecting:
            break
        proto.dataReceived(chunk)
        # UDP datagrams to whatever ports a SETUP bound, from the publisher and a stranger.
        if chunk and i % 3 == 0:
            for port in list(reactor.udp.values()):
                port.deliver(chunk, "10.0.0.7", 40000 + i % 2)
        reactor.advance(0.4)
        transport.clear()
    reactor.advance(3.0)  # held 401s, the request deadline
    for stream in hub.all():
        stream.terminate()
    proto.connectionLost(Failure(ConnectionDone()))
    reactor.advance(120.0)
    if factory.connections != 0 or factory.udp_pool.in_use != 0:
        raise AssertionError("a closed connection kept its count or UDP ports")


class _Sink:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.ingest: RtpIngest | None = None

    def session_ready(self, client: RTSPClientProtocol, tracks: list[Any]) -> None:
        self.ingest = RtpIngest(self.stream, tracks, reliable=True)

    def session_playing(self, client: RTSPClientProtocol) -> None:
        pass

    def rtp(self, index: int, packet: RtpPacket) -> None:
        if self.ingest is not None:
            self.ingest.rtp_packet(index, packet)

    def rtcp(self, index: int, data: bytes) -> bool:
        return self.ingest.rtcp(index, data) if self.ingest is not None else False

    def session_closed(self, client: RTSPClientProtocol, error: RtspClientError | None) -> None:
        pass


@target("rtsp_client")
def rtsp_client(data: bytes) -> None:
    """The camera's side of a session: `data` is everything the camera sends, and the client
    answers as it goes (requests, keepalives, receiver reports) on a Clock."""
    clock = Clock()
    stream = Stream("cam", "RTSP", max_picture_pixels=1920 * 1088)
    config = ClientConfig(max_body=8192, max_interleaved=8192)
    client = _StrictClient("rtsp://u:p@10.0.0.2:554/stream1", _Sink(stream), clock, config)
    transport = StringTransport()
    client.makeConnection(transport)
    for chunk in _chunks(data):
        if transport.disconnecting:
            break
        client.dataReceived(chunk)
        clock.advance(0.5)
    client.stop()
    client.connectionLost(Failure(ConnectionDone()))
    clock.advance(60.0)
