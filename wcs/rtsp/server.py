"""RTSP server: encoders publish with ANNOUNCE/SETUP/RECORD (RTP over TCP or UDP); players watch a
live stream's H.264 with DESCRIBE/SETUP/PLAY (RTP interleaved on the RTSP connection).

One connection carries one session. Bytes go through the pure :class:`RtspParser`; this module
only frames, checks states and talks to the registry, as the RTMP front-end does.
"""

from __future__ import annotations

import random
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from wcs.access import Access, Client, Refused
from wcs.guard import describe, guarded
from wcs.media import h264
from wcs.media.units import MediaUnit
from wcs.rtsp.auth import AuthOutcome, RtspAuthenticator
from wcs.rtsp.h264rtp import CLOCK_RATE, H264Packetizer
from wcs.rtsp.ingest import RtpIngest, Track, describe_tracks
from wcs.rtsp.message import (
    STATUS_REASONS,
    InterleavedFrame,
    RtspEvent,
    RtspParseError,
    RtspParser,
    RtspRequest,
    RtspResponse,
    TransportSpec,
    build_interleaved,
    build_response,
    parse_session,
    parse_transport,
)
from wcs.rtsp.numbers import ascii_uint
from wcs.rtsp.rtp import Bye
from wcs.rtsp.sdp import (
    MediaDescription,
    RtpMap,
    SdpError,
    build_sdp,
    h264_fmtp,
    parse_sdp,
    resolve_control,
)
from wcs.rtsp.udp import MAX_UDP_PAIRS, UdpPair, UdpPoolExhausted, UdpPortPool
from wcs.streams import (
    PROVIDER_RTSP,
    InvalidName,
    Stream,
    StreamError,
    StreamNotFound,
    StreamRegistry,
    check_stream_name,
)

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_SESSION_UDP_PAIRS",
    "REQUEST_DEADLINE",
    "SESSION_TIMEOUT",
    "RTSPServerFactory",
    "RTSPServerProtocol",
    "stream_name_from_url",
]

log = Logger(namespace="wcs.rtsp")

MAX_CONNECTIONS: Final = 1000
# Seconds without an RTSP request or any RTP/RTCP before a session (or an idle connection) ends;
# announced to clients in the Session header so they send keepalives in time.
SESSION_TIMEOUT: Final = 60
# Seconds from the first byte of a request to its last (head and body): a client trickling a
# byte at a time would otherwise hold a connection forever, each complete request counting as
# activity. Interleaved RTP/RTCP frames are not requests and never run against it.
REQUEST_DEADLINE: Final = 10.0
# A wrong login is answered after this many seconds (without blocking the reactor: the
# connection's further input waits); after MAX_AUTH_FAILURES the connection is closed.
AUTH_FAILURE_DELAY: Final = 1.0
MAX_AUTH_FAILURES: Final = 5
# Messages a client may have pipelined behind a held 401 before it is dropped.
MAX_HELD_EVENTS: Final = 64
# UDP pairs one publish session may hold: a video and an audio track, and a spare.
MAX_SESSION_UDP_PAIRS: Final = 4
# An ANNOUNCE SDP is a few hundred bytes; the parser's body limit also bounds SET_PARAMETER.
MAX_BODY: Final = 65536
SERVER_NAME: Final = "wcs"
PUBLIC_METHODS: Final = (
    "OPTIONS",
    "DESCRIBE",
    "ANNOUNCE",
    "SETUP",
    "PLAY",
    "RECORD",
    "TEARDOWN",
    "GET_PARAMETER",
    "SET_PARAMETER",
)
PLAY_PAYLOAD_TYPE: Final = 96
PLAY_CONTROL: Final = "trackID=0"
# RTP packets to players stay below a typical path MTU even inside TCP.
PLAY_MTU: Final = 1400
# What a slow player may have queued in the kernel and Twisted's buffer before it loses frames
# (it then resumes at the next keyframe); a GOP of 720p is ~1 MB.
MAX_PLAYER_BACKLOG: Final = 8 * 1024 * 1024
RTP_PROFILES: Final = frozenset({"RTP/AVP", "RTP/AVPF"})

# Connection states.
INIT: Final = "init"
ANNOUNCED: Final = "announced"  # name reserved, tracks being set up
RECORDING: Final = "recording"
PLAY_READY: Final = "play-ready"  # a player's track is set up
PLAYING: Final = "playing"


def stream_name_from_url(url: str) -> tuple[str, str]:
    """(app, stream name) of ``rtsp://host[:port]/<app>/<name>[?query]`` (or ``/<name>``).

    The name is the last non-empty path segment, percent-decoded, without the query (as RTMP's
    stream key); raises InvalidName when there is none or it is not a valid stream name.
    """
    segments = [unquote(s) for s in _split_url(url).path.split("/") if s]
    if not segments:
        raise InvalidName("the URL has no stream name")
    name = segments[-1]
    check_stream_name(name)
    return "/".join(segments[:-1]), name


def _split_url(url: str) -> SplitResult:
    """urlsplit, with its ValueError (e.g. "Invalid IPv6 URL") as InvalidName."""
    try:
        return urlsplit(url)
    except ValueError as err:
        raise InvalidName(f"unusable URL: {err}") from None


def _url_key(url: str) -> str:
    """A URL without scheme and authority, trailing slash dropped: clients spell hosts freely."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url  # matches no announced URL
    key = parts.path.rstrip("/")
    if parts.query:
        key += "?" + parts.query.rstrip("/")
    return key


@dataclass
class _Reply:
    status: int
    reason: str | None = None
    headers: list[tuple[str, str]] | None = None
    body: bytes = b""


@dataclass(eq=False)
class _TrackTransport:
    """How one set-up track arrives: interleaved channels on this connection, or a UDP pair."""

    index: int
    spec: TransportSpec
    udp: UdpPair | None = None
    rtp_source: tuple[str, int] | None = None  # latched on the first accepted UDP packet
    stray: int = 0


@implementer(IPushProducer)
class _Player:
    """Sends one live stream's H.264 to one player as RTP on an interleaved channel.

    A StreamSink. It starts at the newest cached keyframe (the stream's GOP, sent at once so the
    player shows a picture immediately), then relays live units. Keyframes get the stream's
    SPS/PPS in front when they lack them (RTMP sends them only in the sequence header).
    """

    def __init__(self, proto: RTSPServerProtocol, stream: Stream, channel: int) -> None:
        self.proto = proto
        self.stream = stream
        self.channel = channel
        self.packetizer = H264Packetizer(PLAY_PAYLOAD_TYPE, random.getrandbits(32), mtu=PLAY_MTU)
        self.wait_key = True
        self.backlog = 0  # bytes written while the transport asked us to pause
        self.paused = False
        self.sent_units = 0
        self.dropped_units = 0
        self.registered = False  # with the transport, as its producer
        self.first_pts: int | None = None

    def start(self) -> None:
        gop = self.stream.gop
        if gop is not None:
            for unit in list(gop.units):
                self._send(unit)
        self.stream.add_sink(self)

    def stop(self) -> None:
        self.stream.remove_sink(self)

    @guarded
    def unit_received(self, stream: Stream, unit: MediaUnit) -> None:
        # Runs inside the publisher's input handling: whatever goes wrong here closes this
        # player, never the publisher.
        if unit.kind == "video":
            self._send(unit)

    def drop(self, reason: str) -> None:
        self.stop()
        self.proto.drop(f"playing {self.stream.name} failed: {reason}")

    def stream_ended(self, stream: Stream) -> None:
        self.proto.player_stream_ended(self)

    def _send(self, unit: MediaUnit) -> None:
        if unit.codec != "H264":
            return
        if self.backlog > MAX_PLAYER_BACKLOG:
            self.dropped_units += 1
            self.wait_key = True
            return
        if self.wait_key and not unit.keyframe:
            return
        self.wait_key = False
        data = unit.data
        params = self.stream.video
        if unit.keyframe and params is not None:
            data = h264.with_parameter_sets(data, params.extradata)
        pts = int(unit.pts * unit.time_base * CLOCK_RATE)
        if self.first_pts is None:
            self.first_pts = pts
        out = b"".join(
            build_interleaved(self.channel, packet.serialize())
            for packet in self.packetizer.packetize(data, pts - self.first_pts)
        )
        if self.paused:
            self.backlog += len(out)
        self.sent_units += 1
        self.proto.transport.write(out)  # type: ignore[union-attr]

    # IPushProducer: the transport tells us when its buffer is full and when it drained.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self.stop()


class RTSPServerProtocol(Protocol):
    """One RTSP connection: an encoder publishing one stream (one session per connection)."""

    factory: RTSPServerFactory

    def __init__(self, registry: StreamRegistry, reactor: Any) -> None:
        self.registry = registry
        self.reactor = reactor
        self.parser = RtspParser(max_body=MAX_BODY)
        self.peer = "?"
        self.peer_host = ""
        self.state = INIT
        self.session_id: str | None = None
        self.stream: Stream | None = None
        self.app = ""
        self.tracks: list[Track] = []
        self.track_keys: list[str] = []
        self.aggregate_key = ""
        self.transports: dict[int, _TrackTransport] = {}
        self.channels: dict[int, tuple[int, bool]] = {}  # interleaved channel -> (track, rtcp?)
        self.ingest: RtpIngest | None = None
        self.player: _Player | None = None
        self.play_stream: Stream | None = None
        self.play_channel = 0
        self.stray_frames = 0
        self._closing = False
        self._last_activity = 0.0
        self._timer: IDelayedCall | None = None
        self._request_timer: IDelayedCall | None = None
        # Parsed input not handled yet: it waits while a failed login's answer is held back.
        self._queue: deque[RtspEvent] = deque()
        self._held: IDelayedCall | None = None
        self.auth_failures = 0
        # A reply that waits for the hook app (ANNOUNCE, DESCRIBE): later input waits too.
        self._pending = False
        self._connect_allowed = False
        self._plays_allowed: set[str] = set()

    # -- connection -----------------------------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer_host = str(getattr(peer, "host", "?"))
        self.peer = f"{self.peer_host}:{getattr(peer, 'port', '?')}"
        self.factory.connections += 1
        if self.factory.connections > self.factory.max_connections:
            self.drop(f"too many RTSP connections (limit {self.factory.max_connections})")
            return
        self._touch()
        self._timer = self.reactor.callLater(self.factory.session_timeout, self._check_timeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Closing first: a hook answer that arrives after this must not publish for a gone client.
        self._closing = True
        self.factory.connections -= 1
        for timer in (self._timer, self._request_timer, self._held):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._request_timer = self._held = None
        self._queue.clear()
        self._end_session("Stopped by publisher stop")

    def drop(self, reason: str, reply: bytes = b"") -> None:
        """Close this connection (and only this one) with a logged reason; `reply` is sent first."""
        if self._closing:
            return
        self._closing = True
        log.warn(
            "RTSP {peer}: closing connection: {reason}",
            peer=self.peer,
            reason=reason,
            stream_name=self.stream.name if self.stream else None,
        )
        transport = self.transport
        assert transport is not None
        if reply:
            transport.write(reply)
            transport.loseConnection()
        else:
            transport.abortConnection()  # type: ignore[attr-defined]

    # -- timeouts -------------------------------------------------------------------------------
    def _touch(self) -> None:
        # Called for every RTP packet: a timestamp, not a timer reset (see _check_timeout).
        self._last_activity = self.reactor.seconds()

    def _check_timeout(self) -> None:
        timeout = self.factory.session_timeout
        idle = self.reactor.seconds() - self._last_activity
        if idle < timeout:
            self._timer = self.reactor.callLater(timeout - idle, self._check_timeout)
            return
        self._timer = None
        if self.session_id is not None:
            self.drop(f"session {self.session_id} timed out: no RTSP or RTP for {timeout} s")
        else:
            self.drop(f"idle timeout: no request for {timeout} s")

    # -- bytes in -------------------------------------------------------------------------------
    @guarded
    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self.parser.feed(data)
        except RtspParseError as err:
            self._parse_error(err)
            return
        self._watch_request(events)
        self._queue.extend(events)
        if (self._held is not None or self._pending) and len(self._queue) > MAX_HELD_EVENTS:
            self.drop(f"more than {MAX_HELD_EVENTS} messages pipelined behind a pending answer")
            return
        self._handle_queue()

    def _handle_queue(self) -> None:
        queue = self._queue
        while queue and self._held is None and not self._pending and not self._closing:
            event = queue.popleft()
            if isinstance(event, InterleavedFrame):
                self._frame(event)
            elif isinstance(event, RtspRequest):
                self._touch()
                self._request(event)
            else:
                self._response(event)

    def _watch_request(self, events: list[RtspEvent]) -> None:
        """Start the request deadline at a request's first bytes; stop it when it completes."""
        timer = self._request_timer
        completed = any(not isinstance(e, InterleavedFrame) for e in events)
        if timer is not None and (completed or not self.parser.in_message):
            if timer.active():
                timer.cancel()
            self._request_timer = timer = None
        if timer is None and self.parser.in_message:
            self._request_timer = self.reactor.callLater(
                self.factory.request_deadline, self._request_too_slow
            )

    def _request_too_slow(self) -> None:
        self._request_timer = None
        deadline = self.factory.request_deadline
        reply = build_response(408, headers=[("Server", SERVER_NAME), ("Connection", "close")])
        self.drop(f"request not complete {deadline:g} s after its first byte", reply)

    def _parse_error(self, err: RtspParseError) -> None:
        reply = build_response(
            err.status, headers=[("Server", SERVER_NAME), ("Connection", "close")]
        )
        self.drop(f"bad RTSP message: {err.reason}", reply)

    def _response(self, response: RtspResponse) -> None:
        # The server sends no requests, so a response is a confused peer; ignore it.
        log.debug(
            "RTSP {peer}: unexpected response {status}", peer=self.peer, status=response.status
        )

    def _frame(self, frame: InterleavedFrame) -> None:
        if self.player is not None:
            self._touch()  # a player's RTCP receiver reports: it is still there
            return
        target = self.channels.get(frame.channel)
        if target is None or self.ingest is None:
            self.stray_frames += 1
            return
        self._touch()
        index, rtcp = target
        if rtcp:
            self.ingest.rtcp(index, frame.payload)
        else:
            self.ingest.rtp(index, frame.payload)

    @guarded
    def _udp_rtp(self, index: int, data: bytes, addr: tuple[str, int]) -> None:
        transport = self.transports.get(index)
        if transport is None or self.ingest is None or self._closing:
            return
        # Only the publisher may feed its tracks: a stray sender's SSRC would make the
        # depacketizer restart and drop frames. The first packet latches the source port.
        if addr[0] != self.peer_host or transport.rtp_source not in (None, addr):
            transport.stray += 1
            if transport.stray == 1:
                log.warn(
                    "RTSP {peer}: {stream_name}: ignoring RTP from {source} (not the publisher)",
                    peer=self.peer,
                    stream_name=self.stream.name if self.stream else None,
                    source=f"{addr[0]}:{addr[1]}",
                )
            return
        transport.rtp_source = addr
        self._touch()
        self.ingest.rtp(index, data)

    @guarded
    def _udp_rtcp(self, index: int, data: bytes, addr: tuple[str, int]) -> None:
        if self.ingest is None or self._closing or addr[0] != self.peer_host:
            return
        self._touch()
        self.ingest.rtcp(index, data)

    # -- requests -------------------------------------------------------------------------------
    def _request(self, req: RtspRequest) -> None:
        log.debug("RTSP {peer}: {method} {uri}", peer=self.peer, method=req.method, uri=req.uri)
        cseq = req.headers.get("CSeq")
        if cseq is None or ascii_uint(cseq.strip(), 0xFFFFFFFF) is None:
            self._send(req, _Reply(400, "Missing or bad CSeq"), None)
            return
        try:
            auth = self._authenticator(req)
            if auth is not None:
                outcome = auth.check(
                    req.method, req.uri, req.headers.get("Authorization"), self.peer
                )
                if not outcome.ok:
                    self._unauthorized(req, cseq.strip(), auth, outcome)
                    return
            reply: _Reply | Deferred[_Reply] | None = self._check_request(req)
            if reply is None:
                handler: Callable[[RtspRequest], _Reply | Deferred[_Reply]] | None = getattr(
                    self, f"rtsp_{req.method}", None
                )
                reply = handler(req) if handler is not None else _Reply(501)
        except Exception as err:
            self._request_failed(req, cseq, err)
            return
        if isinstance(reply, Deferred):
            self._wait_for_reply(req, cseq.strip(), reply)
            return
        self._answer(req, reply, cseq.strip())

    def _request_failed(self, req: RtspRequest, cseq: str, err: BaseException) -> None:
        # The guard's policy (log the reason once, close), but the request gets its answer.
        if not isinstance(err, ValueError):
            log.failure(
                "RTSP {peer}: {method} failed",
                failure=Failure(err),
                peer=self.peer,
                method=req.method,
                level=LogLevel.debug,
            )
        status = 400 if isinstance(err, ValueError) else 500
        headers = [("CSeq", cseq.strip()), ("Server", SERVER_NAME), ("Connection", "close")]
        self.drop(
            f"{req.method} {req.uri[:200]} failed: {describe(err)}",
            build_response(status, headers=headers),
        )

    def _wait_for_reply(self, req: RtspRequest, cseq: str, reply: Deferred[_Reply]) -> None:
        """A reply that may wait for the hook app: if it has not fired yet, this connection's
        input waits behind it. One that has is answered now, and the request loop goes on
        (resuming from here would re-enter it once per pipelined request)."""
        later = False
        fired = False

        def answered(result: _Reply | Failure) -> None:
            nonlocal fired
            fired = True
            if later:
                self._pending = False
            if self._closing:
                return
            if isinstance(result, Failure):
                assert result.value is not None
                self._request_failed(req, cseq, result.value)
                return
            self._answer(req, result, cseq)
            if later:
                self.transport.resumeProducing()  # type: ignore[union-attr]
                self._resume()

        # Not `reply.called`: a Deferred waiting for another one it returned is "called" too.
        reply.addBoth(answered)
        if not fired:
            later = True
            self._pending = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    @guarded
    def _resume(self) -> None:
        self._handle_queue()

    def _answer(self, req: RtspRequest, reply: _Reply, cseq: str) -> None:
        if reply.status >= 400:
            log.info(
                "RTSP {peer}: {method} {uri} -> {status} {reason}",
                peer=self.peer,
                method=req.method,
                uri=req.uri,
                status=reply.status,
                reason=reply.reason or STATUS_REASONS.get(reply.status, ""),
            )
        self._send(req, reply, cseq)

    def _authenticator(self, req: RtspRequest) -> RtspAuthenticator | None:
        """The credentials this request needs, if any: playback (DESCRIBE, a player's SETUP,
        PLAY) is guarded by the factory's play_auth, publishing (ANNOUNCE: SETUP and RECORD
        need its session) by publish_auth."""
        if req.method in ("DESCRIBE", "PLAY") or (req.method == "SETUP" and self.state == INIT):
            return self.factory.play_auth
        if req.method == "ANNOUNCE":
            return self.factory.publish_auth
        return None

    # -- access (REST hooks) ----------------------------------------------------------------------
    def _client(self, uri: str) -> Client:
        """This connection as the hook app sees it; the URL's query is its `custom`."""
        transport = self.transport
        assert transport is not None
        try:
            query = urlsplit(uri).query
        except ValueError:
            query = ""
        custom: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True, max_num_fields=32):
            custom.setdefault(key, value)
        custom.pop("password", None)
        return Client(
            session_id=Client.session_id_of(transport.getPeer(), transport.getHost()),
            provider=PROVIDER_RTSP,
            address=self.peer_host,
            app_key=self.app,
            custom=custom,
        )

    def _connect(self, client: Client) -> Deferred[None]:
        """The connect hook, once per connection."""
        if self._connect_allowed:
            return succeed(None)

        def allowed(_: object) -> None:
            self._connect_allowed = True

        return self.factory.access.connect(client).addCallback(allowed)

    def _allow_play(self, uri: str) -> Deferred[None]:
        """The playStream hook for the stream a URL names, once per name and connection."""
        try:
            _, name = stream_name_from_url(uri.split("?", 1)[0].rstrip("/"))
        except InvalidName:
            return succeed(None)  # answered as a bad name by the handler
        if name in self._plays_allowed:
            return succeed(None)
        client = self._client(uri)

        def ask(_: object) -> Deferred[None]:
            return self.factory.access.play(client, name, secrets.token_hex(8))

        def allowed(_: object) -> None:
            self._plays_allowed.add(name)

        return self._connect(client).addCallback(ask).addCallback(allowed)

    @staticmethod
    def _refused(failure: Failure) -> _Reply:
        failure.trap(Refused)
        return _Reply(403, failure.value.info)  # type: ignore[union-attr]

    def _unauthorized(
        self, req: RtspRequest, cseq: str, auth: RtspAuthenticator, outcome: AuthOutcome
    ) -> None:
        """401 with the challenges. A wrong guess is answered only after a delay (the reactor
        goes on; this connection's further input waits), and a few of them close it."""
        reply = _Reply(401, headers=auth.challenges(stale=outcome.stale))
        if not outcome.failed:
            self._send(req, reply, cseq)  # the first round of every login, or a stale nonce
            return
        self.auth_failures += 1
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self._held = self.reactor.callLater(
            self.factory.auth_failure_delay, self._release, req, reply, cseq
        )

    @guarded
    def _release(self, req: RtspRequest, reply: _Reply, cseq: str) -> None:
        self._held = None
        if self._closing:
            return
        if self.auth_failures >= MAX_AUTH_FAILURES:
            reply.headers = [*(reply.headers or []), ("Connection", "close")]
            self.drop(
                f"{self.auth_failures} failed logins on this connection",
                self._response_bytes(reply, cseq),
            )
            return
        self._send(req, reply, cseq)
        self.transport.resumeProducing()  # type: ignore[union-attr]
        self._handle_queue()

    def _check_request(self, req: RtspRequest) -> _Reply | None:
        """Checks common to every method: unsupported Require options, the Session header."""
        require = req.headers.get("Require")
        if require:
            return _Reply(551, headers=[("Unsupported", require)])
        value = req.headers.get("Session")
        if value is not None:
            try:
                sid, _ = parse_session(value)
            except RtspParseError:
                return _Reply(454)
            if sid != self.session_id:
                return _Reply(454)
        return None

    def _send(self, req: RtspRequest, reply: _Reply, cseq: str | None) -> None:
        self.transport.write(self._response_bytes(reply, cseq))  # type: ignore[union-attr]

    def _response_bytes(self, reply: _Reply, cseq: str | None) -> bytes:
        headers: list[tuple[str, str]] = []
        if cseq is not None:
            headers.append(("CSeq", cseq))
        headers.append(("Server", SERVER_NAME))
        if self.session_id is not None and not any(k == "Session" for k, _ in reply.headers or ()):
            headers.append(("Session", self._session_header()))
        headers.extend(reply.headers or ())
        return build_response(reply.status, reply.reason, headers, reply.body)

    def _session_header(self) -> str:
        return f"{self.session_id};timeout={self.factory.session_timeout}"

    def rtsp_OPTIONS(self, req: RtspRequest) -> _Reply:
        return _Reply(200, headers=[("Public", ", ".join(PUBLIC_METHODS))])

    def rtsp_GET_PARAMETER(self, req: RtspRequest) -> _Reply:
        return _Reply(200)  # a keepalive: the request itself refreshed the session

    def rtsp_SET_PARAMETER(self, req: RtspRequest) -> _Reply:
        if req.body.strip():
            return _Reply(451)
        return _Reply(200)

    # -- playing --------------------------------------------------------------------------------
    def _live_stream(self, uri: str) -> Stream | _Reply:
        """The live stream a play URL names, or the reply refusing it."""
        try:
            _, name = stream_name_from_url(uri)
        except InvalidName as err:
            return _Reply(400, err.info)
        stream = self.registry.get(name)
        if stream is None:
            return _Reply(404, StreamNotFound.info)
        video = stream.video
        if video is None or video.codec != "H264":
            return _Reply(415, "Only H.264 video can be played over RTSP")
        return stream

    def rtsp_DESCRIBE(self, req: RtspRequest) -> Deferred[_Reply]:
        allowed = self._allow_play(req.uri)
        return allowed.addCallback(lambda _: self._describe(req)).addErrback(self._refused)

    def _describe(self, req: RtspRequest) -> _Reply:
        found = self._live_stream(req.uri)
        if isinstance(found, _Reply):
            return found
        video = found.video
        assert video is not None
        fmtp = {"packetization-mode": "1"}
        nals = h264.split_annexb(video.extradata) if video.extradata else []
        sps = next((n for n in nals if h264.nal_type(n) == h264.NAL_SPS), None)
        pps = [n for n in nals if h264.nal_type(n) == h264.NAL_PPS]
        if sps is not None and len(sps) >= 4:
            fmtp = h264_fmtp(sps, pps)
        media = MediaDescription(
            media="video",
            formats=[str(PLAY_PAYLOAD_TYPE)],
            rtpmap={PLAY_PAYLOAD_TYPE: RtpMap("H264", CLOCK_RATE)},
            fmtp={PLAY_PAYLOAD_TYPE: fmtp},
            control=PLAY_CONTROL,
        )
        body = build_sdp([media], session_name=found.name).encode()
        base = req.uri.split("?", 1)[0].rstrip("/") + "/"
        return _Reply(
            200, headers=[("Content-Base", base), ("Content-Type", "application/sdp")], body=body
        )

    def _setup_play(
        self, req: RtspRequest, specs: list[TransportSpec]
    ) -> _Reply | Deferred[_Reply]:
        if any(spec.mode == "RECORD" for spec in specs):
            return _Reply(455, "SETUP before ANNOUNCE")
        # A client may skip DESCRIBE: the hook decides here then.
        track_url = req.uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[0]
        allowed = self._allow_play(track_url)
        return allowed.addCallback(lambda _: self._setup_player(req, specs)).addErrback(
            self._refused
        )

    def _setup_player(self, req: RtspRequest, specs: list[TransportSpec]) -> _Reply:
        path = _url_key(req.uri).partition("?")[0]
        if not path.endswith("/" + PLAY_CONTROL):
            return (
                _Reply(459, "SETUP needs the track URL")
                if self._is_live(req.uri)
                else _Reply(404, StreamNotFound.info)
            )
        found = self._live_stream(req.uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[0])
        if isinstance(found, _Reply):
            return found
        spec = next(
            (
                s
                for s in specs
                if s.protocol in RTP_PROFILES and s.lower == "TCP" and not s.multicast
            ),
            None,
        )
        if spec is None:
            # ffmpeg and GStreamer then retry with TCP.
            return _Reply(461, "Only TCP interleaved for playback")
        pair = spec.interleaved or (0, 1)
        self.play_stream = found
        self.play_channel = pair[0]
        self.state = PLAY_READY
        self.session_id = secrets.token_hex(8).upper()
        answer = TransportSpec(protocol=spec.protocol, lower="TCP", interleaved=pair)
        return _Reply(200, headers=[("Transport", answer.to_header())])

    def _is_live(self, uri: str) -> bool:
        return isinstance(self._live_stream(uri), Stream)

    def rtsp_PLAY(self, req: RtspRequest) -> _Reply:
        if self.state == PLAYING:
            return _Reply(200)
        if self.state != PLAY_READY:
            return _Reply(455, "PLAY before SETUP")
        if req.headers.get("Session") is None:
            return _Reply(454, "Session header missing")
        stream = self.play_stream
        assert stream is not None
        if stream.ended:
            self._end_session("")
            return _Reply(404, StreamNotFound.info)
        self.state = PLAYING
        player = self.player = _Player(self, stream, self.play_channel)
        rtp_info = (
            f"url={req.uri.split('?', 1)[0].rstrip('/')}/{PLAY_CONTROL};"
            f"seq={player.packetizer.seq};rtptime={player.packetizer.timestamp_offset}"
        )
        log.info(
            "RTSP {peer}: playing {stream_name} over TCP", peer=self.peer, stream_name=stream.name
        )
        # The reply goes out first; then the cached GOP and live units follow it.
        self.reactor.callLater(0, self._start_player, player)
        return _Reply(200, headers=[("Range", "npt=0.000-"), ("RTP-Info", rtp_info)])

    @guarded
    def _start_player(self, player: _Player) -> None:
        if self.player is not player or self._closing:
            return
        if player.stream.ended:  # between the PLAY answer and now
            self.player_stream_ended(player)
            return
        self.transport.registerProducer(player, True)  # type: ignore[union-attr]
        player.registered = True
        player.start()

    def player_stream_ended(self, player: _Player) -> None:
        """The played stream is over: say BYE and close, so the player ends too."""
        if self.player is not player:
            return
        rtcp = build_interleaved(self.play_channel + 1, Bye((player.packetizer.ssrc,)).serialize())
        self.transport.write(rtcp)  # type: ignore[union-attr]
        log.info(
            "RTSP {peer}: {stream_name} ended, closing the player",
            peer=self.peer,
            stream_name=player.stream.name,
        )
        self._end_session("")
        self._closing = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def rtsp_PAUSE(self, req: RtspRequest) -> _Reply:
        return _Reply(405, headers=[("Allow", ", ".join(PUBLIC_METHODS))])

    # -- publishing -----------------------------------------------------------------------------
    def rtsp_ANNOUNCE(self, req: RtspRequest) -> _Reply | Deferred[_Reply]:
        if self.state != INIT:
            return _Reply(455, "Already announced on this connection")
        content_type = (req.headers.get("Content-Type") or "application/sdp").split(";")[0]
        if content_type.strip().lower() != "application/sdp":
            return _Reply(415, headers=[("Accept", "application/sdp")])
        try:
            sdp = parse_sdp(req.body)
            aggregate = resolve_control(req.uri, sdp.control)
            tracks = [t for t in describe_tracks(sdp) if t.media.proto.upper() in RTP_PROFILES]
            track_urls = [resolve_control(aggregate, t.media.control) for t in tracks]
        except SdpError as err:
            return self._refuse_announce(req, _Reply(400, f"Bad SDP: {err}"))
        if not tracks or len(tracks) != len(sdp.media):
            return self._refuse_announce(req, _Reply(400, "SDP without RTP/AVP media"))
        try:
            app, name = stream_name_from_url(req.uri)
        except InvalidName as err:
            return self._refuse_announce(req, _Reply(400, err.info), str(err))
        self.app = app
        client = self._client(req.uri)
        msid = secrets.token_hex(16)
        access = self.factory.access
        # The password (if any) was checked as RTSP auth: the hooks decide the rest.
        decision = self._connect(client).addCallback(
            lambda _: access.publish(client, name, msid, None, authenticated=True)
        )

        def allowed(_: object) -> _Reply:
            return self._announced(req, client, app, name, msid, tracks, aggregate, track_urls)

        def refused(failure: Failure) -> _Reply:
            return self._refuse_announce(req, self._refused(failure))

        return decision.addCallbacks(allowed, refused)

    def _announced(
        self,
        req: RtspRequest,
        client: Client,
        app: str,
        name: str,
        msid: str,
        tracks: list[Track],
        aggregate: str,
        track_urls: list[str],
    ) -> _Reply:
        if self._closing:
            return _Reply(503, "Connection closing")
        if self.state != INIT:
            return _Reply(455, "Already announced on this connection")
        try:
            stream = self.registry.publish(name, PROVIDER_RTSP, media_session_id=msid)
        except StreamError as err:
            log.warn(
                "RTSP {peer}: publish of {stream_name!r} refused: {info}",
                peer=self.peer,
                stream_name=name,
                info=err.info,
            )
            return _Reply(400 if isinstance(err, InvalidName) else 403, err.info)
        self.stream = stream
        # Whatever ends the stream from the server's side (/stream/terminate, shutdown, the
        # publish idle watchdog, with or without RECORD) closes this connection with its reason.
        stream.on_end(self._stream_ended)
        self.factory.access.track(client, stream)
        self.app = app
        self.tracks = tracks
        self.aggregate_key = _url_key(aggregate)
        self.track_keys = [_url_key(url) for url in track_urls]
        self.state = ANNOUNCED
        log.info(
            "RTSP {peer}: announced {stream_name} (app {app}): {tracks}",
            peer=self.peer,
            stream_name=name,
            app=app,
            tracks=_describe(tracks),
            user_agent=req.headers.get("User-Agent"),
        )
        return _Reply(200)

    def _stream_ended(self, stream: Stream) -> None:
        if stream is self.stream:  # not our own _end_session, which lets go of it first
            self.drop(f"the server ended {stream.name}: {stream.end_reason}")

    def _refuse_announce(self, req: RtspRequest, reply: _Reply, detail: str = "") -> _Reply:
        log.warn(
            "RTSP {peer}: ANNOUNCE of {uri} refused: {reason}{detail}",
            peer=self.peer,
            uri=req.uri[:200],
            reason=reply.reason,
            detail=f": {detail}" if detail else "",
        )
        return reply

    def _track_of(self, uri: str) -> int | None:
        key = _url_key(uri)
        for index, track_key in enumerate(self.track_keys):
            if track_key == key:
                return index
        return None

    def rtsp_SETUP(self, req: RtspRequest) -> _Reply | Deferred[_Reply]:
        if self.state in (PLAY_READY, PLAYING):
            return _Reply(455, "The stream's one track is already set up")
        if self.state == RECORDING:
            return _Reply(455, "Cannot add tracks while recording")
        if self.state == INIT:
            specs = self._transports(req)
            if isinstance(specs, _Reply):
                return specs
            return self._setup_play(req, specs)
        index = self._track_of(req.uri)
        if index is None:
            if _url_key(req.uri) == self.aggregate_key:
                return _Reply(459, "SETUP needs a track URL")
            return _Reply(404, "No such track")
        if index in self.transports:
            return _Reply(455, "Track already set up")
        if self.session_id is not None and req.headers.get("Session") is None:
            return _Reply(454, "Session header missing")
        specs = self._transports(req)
        if isinstance(specs, _Reply):
            return specs
        chosen: _TrackTransport | None = None
        exhausted = False
        refusal: str | None = None
        for spec in specs:
            if spec.protocol not in RTP_PROFILES or spec.multicast:
                continue
            if spec.mode not in (None, "RECORD"):
                continue
            if spec.lower == "TCP":
                chosen = self._setup_tcp(index, spec)
                if chosen is None:
                    refusal = "No free interleaved channels"
                    continue
            else:
                refusal = self._udp_refusal(spec)
                if refusal is not None:
                    continue
                try:
                    chosen = self._setup_udp(index, spec)
                except UdpPoolExhausted as err:
                    exhausted = True
                    log.warn(
                        "RTSP {peer}: no UDP ports for {stream_name}: {reason}",
                        peer=self.peer,
                        stream_name=self.stream.name if self.stream else None,
                        reason=str(err),
                    )
                    continue
            break
        if chosen is None:
            reason = "UDP port pool exhausted, use TCP" if exhausted else refusal
            return _Reply(461, reason)
        self.transports[index] = chosen
        if self.session_id is None:
            self.session_id = secrets.token_hex(8).upper()
        return _Reply(200, headers=[("Transport", chosen.spec.to_header())])

    @staticmethod
    def _transports(req: RtspRequest) -> list[TransportSpec] | _Reply:
        value = req.headers.get("Transport")
        if not value:
            return _Reply(400, "Missing Transport")
        try:
            return parse_transport(value)
        except RtspParseError as err:
            return _Reply(err.status, err.reason)

    def _udp_refusal(self, spec: TransportSpec) -> str | None:
        """Why this UDP alternative cannot be set up (None: it can)."""
        ports = spec.client_port
        # ffmpeg, GStreamer and live555 send an RTP port and the next one for RTCP (or one
        # port for both); 0 or a reversed range is not a port to send from.
        if ports is not None and (ports[0] < 1 or ports[1] not in (ports[0], ports[0] + 1)):
            return f"Bad client_port {ports[0]}-{ports[1]}"
        held = sum(1 for t in self.transports.values() if t.udp is not None)
        if held >= self.factory.max_session_udp_pairs:
            return f"At most {self.factory.max_session_udp_pairs} UDP tracks per session, use TCP"
        return None

    def _setup_tcp(self, index: int, spec: TransportSpec) -> _TrackTransport | None:
        pair = spec.interleaved
        if (
            pair is None
            or pair[1] != pair[0] + 1
            or pair[0] in self.channels
            or pair[1] in self.channels
        ):
            # Absent, not an RTP/RTCP pair, or taken: pick the lowest free pair (the answer
            # tells the client).
            first = next(
                (
                    c
                    for c in range(0, 256, 2)
                    if c not in self.channels and c + 1 not in self.channels
                ),
                None,
            )
            if first is None:
                return None
            pair = (first, first + 1)
        self.channels[pair[0]] = (index, False)
        self.channels[pair[1]] = (index, True)
        answer = TransportSpec(protocol=spec.protocol, lower="TCP", interleaved=pair, mode="RECORD")
        return _TrackTransport(index, answer)

    def _setup_udp(self, index: int, spec: TransportSpec) -> _TrackTransport:
        udp = self.factory.udp_pool.allocate(
            lambda data, addr: self._udp_rtp(index, data, addr),
            lambda data, addr: self._udp_rtcp(index, data, addr),
        )
        answer = TransportSpec(
            protocol=spec.protocol,
            lower="UDP",
            client_port=spec.client_port,
            server_port=(udp.rtp_port, udp.rtcp_port),
            mode="RECORD",
        )
        return _TrackTransport(index, answer, udp=udp)

    def rtsp_RECORD(self, req: RtspRequest) -> _Reply:
        if self.state == RECORDING:
            return _Reply(200)
        if self.state != ANNOUNCED or not self.transports:
            return _Reply(455, "RECORD before SETUP")
        if req.headers.get("Session") is None:
            return _Reply(454, "Session header missing")
        key = _url_key(req.uri)
        track = self._track_of(req.uri)
        if key != self.aggregate_key and not (track is not None and len(self.transports) == 1):
            if track is not None:
                return _Reply(460)
            return _Reply(404, "Not the announced URL")
        stream = self.stream
        assert stream is not None
        reliable = all(t.udp is None for t in self.transports.values())
        self.ingest = RtpIngest(stream, self.tracks, reliable=reliable)
        self.state = RECORDING
        video = stream.video
        log.info(
            "RTSP {peer}: publishing {stream_name} (app {app}) over {transport}: {tracks}{size}",
            peer=self.peer,
            stream_name=stream.name,
            app=self.app,
            transport="TCP" if reliable else "UDP",
            tracks=_describe([self.tracks[i] for i in sorted(self.transports)]),
            size=f", {video.width}x{video.height}" if video and video.width else "",
        )
        return _Reply(200)

    def rtsp_TEARDOWN(self, req: RtspRequest) -> _Reply:
        if self.session_id is None and self.stream is None:
            return _Reply(454)
        stream = self.stream or self.play_stream
        self._end_session("Stopped by publisher stop")
        log.info(
            "RTSP {peer}: TEARDOWN of {stream_name}",
            peer=self.peer,
            stream_name=stream.name if stream else None,
        )
        return _Reply(200)

    def _end_session(self, reason: str) -> None:
        """End the publish (if any) with `reason`, or stop playing; release ports and session."""
        player, self.player = self.player, None
        self.play_stream = None
        if player is not None:
            player.stop()
            if player.registered:  # not when TEARDOWN comes before the player started
                self.transport.unregisterProducer()  # type: ignore[union-attr]
            log.info(
                "RTSP {peer}: stopped playing {stream_name} ({sent} units sent, {dropped} "
                "dropped for a slow connection)",
                peer=self.peer,
                stream_name=player.stream.name,
                sent=player.sent_units,
                dropped=player.dropped_units,
            )
        stream, self.stream = self.stream, None
        ingest, self.ingest = self.ingest, None
        for transport in self.transports.values():
            if transport.udp is not None:
                transport.udp.release()
        self.transports.clear()
        self.channels.clear()
        self.session_id = None
        self.state = INIT
        if stream is not None:
            if ingest is not None:
                log.debug(
                    "RTSP {peer}: {stream_name} received {stats}",
                    peer=self.peer,
                    stream_name=stream.name,
                    stats=ingest.stats(),
                )
            stream.end(reason)


def _describe(tracks: list[Track]) -> str:
    return ", ".join(f"{t.kind} {t.codec}" for t in tracks) or "no tracks"


class RTSPServerFactory(Factory):
    """Makes one RTSPServerProtocol per connection; owns the connection count and UDP port pool."""

    noisy = False

    def __init__(
        self,
        registry: StreamRegistry,
        reactor: Any,
        *,
        ip: str = "0.0.0.0",
        max_connections: int = MAX_CONNECTIONS,
        session_timeout: int = SESSION_TIMEOUT,
        request_deadline: float = REQUEST_DEADLINE,
        udp_port_range: tuple[int, int] | None = None,
        max_udp_pairs: int = MAX_UDP_PAIRS,
        max_session_udp_pairs: int = MAX_SESSION_UDP_PAIRS,
        play_auth: RtspAuthenticator | None = None,
        publish_auth: RtspAuthenticator | None = None,
        access: Access | None = None,
        auth_failure_delay: float = AUTH_FAILURE_DELAY,
    ) -> None:
        self.registry = registry
        self.reactor = reactor
        self.max_connections = max_connections
        self.session_timeout = session_timeout
        self.request_deadline = request_deadline
        self.connections = 0
        self.max_session_udp_pairs = max_session_udp_pairs
        # Credentials for playback (the REST ones when REST auth is on); None: open.
        self.play_auth = play_auth
        self.publish_auth = publish_auth
        self.access = access if access is not None else Access(reactor)
        self.auth_failure_delay = auth_failure_delay
        self.udp_pool = UdpPortPool(reactor, ip, max_pairs=max_udp_pairs, port_range=udp_port_range)

    def buildProtocol(self, addr: Any) -> RTSPServerProtocol:  # type: ignore[override]
        proto = RTSPServerProtocol(self.registry, self.reactor)
        proto.factory = self
        return proto
