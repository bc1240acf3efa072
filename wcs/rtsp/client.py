"""RTSP client for pulling an IP camera: OPTIONS, DESCRIBE (Basic/Digest), SETUP over TCP
interleaved, PLAY, keepalive, RTCP receiver reports and TEARDOWN, on one TCP connection.

Media goes over the RTSP connection (RTP/AVP/TCP, RFC 2326 10.12): the one transport that works
through NAT and firewalls without a port pool. UDP is not offered.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from wcs.guard import guarded
from wcs.rtsp.auth import (
    AuthError,
    Challenge,
    authorization_header,
    choose_challenge,
    parse_challenges,
    split_userinfo,
)
from wcs.rtsp.ingest import Track, describe_tracks
from wcs.rtsp.message import (
    InterleavedFrame,
    RtspParseError,
    RtspParser,
    RtspRequest,
    RtspResponse,
    build_interleaved,
    build_request,
    build_response,
    is_request_uri,
    parse_session,
    parse_transport,
)
from wcs.rtsp.numbers import ascii_uint
from wcs.rtsp.rtp import (
    ReceptionStats,
    RtcpError,
    RtpError,
    RtpPacket,
    SenderReport,
    build_receiver_report,
    parse_rtcp,
)
from wcs.rtsp.sdp import SdpError, parse_sdp, resolve_control

__all__ = [
    "ClientConfig",
    "PullSink",
    "RTSPClientProtocol",
    "RtspClientError",
]

log = Logger(namespace="wcs.rtsp.client")

USER_AGENT: Final = "wcs"
# RFC 2326 12.37: a Session header without timeout means 60 s.
DEFAULT_SESSION_TIMEOUT: Final = 60
MAX_PENDING: Final = 8  # requests in flight at once (normally 1, plus a keepalive)
MAX_STALE_RETRIES: Final = 3  # new nonces accepted for one request before giving up

# RtspClientError kinds: what went wrong, so the owner can pick a status and a retry policy.
NETWORK, TIMEOUT, AUTH, REFUSED, PROTOCOL, NO_MEDIA, BYE, REDIRECT = (
    "network",
    "timeout",
    "auth",
    "refused",
    "protocol",
    "no-media",
    "bye",
    "redirect",
)


class RtspClientError(Exception):
    """Why a camera session ended; ``kind`` is one of the module's kind constants."""

    def __init__(
        self, reason: str, kind: str, *, status: int | None = None, location: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.status = status
        self.location = location


@dataclass(frozen=True)
class ClientConfig:
    """Timeouts (seconds) and limits of one camera session."""

    response_timeout: float = 10.0  # each request's answer
    media_timeout: float = 10.0  # no RTP for this long after PLAY: the camera is gone
    rr_interval: float = 5.0  # RTCP receiver reports (RFC 3550's minimum interval)
    teardown_timeout: float = 2.0  # waiting for TEARDOWN's answer before closing anyway
    min_keepalive: float = 1.0
    max_header_bytes: int = 16384
    max_body: int = 65536  # DESCRIBE's SDP
    max_interleaved: int = 65535


class PullSink(Protocol):
    """What the client tells its owner (a Pull); all calls come from the reactor thread."""

    def session_ready(self, client: RTSPClientProtocol, tracks: list[Track]) -> None:
        """SETUP done for `tracks`; rtp/rtcp indexes are positions in this list."""

    def session_playing(self, client: RTSPClientProtocol) -> None:
        """PLAY was answered 200: media should flow."""

    def rtp(self, index: int, packet: RtpPacket) -> None: ...

    def rtcp(self, index: int, data: bytes) -> bool:
        """Returns True when the packet is a BYE (the camera ends the stream)."""

    def session_closed(self, client: RTSPClientProtocol, error: RtspClientError | None) -> None:
        """The connection is gone; `error` is None only after `stop()`."""


@dataclass
class _Pending:
    method: str
    uri: str
    headers: list[tuple[str, str]]
    on_response: Callable[[RtspResponse], None]
    timer: IDelayedCall | None = None
    auth_tries: int = 0
    stale_tries: int = 0


@dataclass
class _Channel:
    index: int  # position in the selected track list
    rtcp: bool


@dataclass
class _TrackState:
    track: Track
    control: str
    rtp_channel: int = -1
    rtcp_channel: int = -1
    stats: ReceptionStats = field(default_factory=ReceptionStats)


def select_tracks(tracks: list[Track]) -> list[Track]:
    """The tracks worth receiving: the first video (H.264 preferred) and the first audio."""
    videos = [t for t in tracks if t.kind == "video"]
    video = next((t for t in videos if t.codec == "H264"), videos[0] if videos else None)
    audio = next((t for t in tracks if t.kind == "audio"), None)
    return [t for t in tracks if t is video or t is audio]


class RTSPClientProtocol(TwistedProtocol):
    """One connection to a camera, from OPTIONS to TEARDOWN. Reports to a :class:`PullSink`.

    ``url`` may carry ``user:password@``; the credentials are kept for Authorization headers and
    never logged (logs and errors use the URL without them).
    """

    def __init__(
        self,
        url: str,
        sink: PullSink,
        clock: IReactorTime,
        config: ClientConfig = ClientConfig(),
        *,
        label: str = "",
    ) -> None:
        self.url, self._user, self._password = split_userinfo(url)  # raises AuthError
        self.sink = sink
        self.clock = clock
        self.config = config
        self.label = label or self.url
        self.state = "INIT"  # INIT, OPTIONS, DESCRIBE, SETUP, PLAY, PLAYING, TEARDOWN, CLOSED
        self._parser = RtspParser(
            max_header_bytes=config.max_header_bytes,
            max_body=config.max_body,
            max_interleaved=config.max_interleaved,
        )
        self._cseq = 0
        self._pending: dict[int, _Pending] = {}
        self._challenge: Challenge | None = None
        self._nc = 0
        self._public: set[str] = set()
        self._aggregate = self.url
        self._tracks: list[_TrackState] = []
        self._setup_next = 0
        self._channels: dict[int, _Channel] = {}
        self.session_id: str | None = None
        self.session_timeout = DEFAULT_SESSION_TIMEOUT
        self._ssrc = secrets.randbits(32)
        self._cname = f"wcs@{socket.gethostname()}"[:64]
        self._timers: dict[str, IDelayedCall] = {}
        self._last_media: float | None = None
        self.playing_since: float | None = None
        self.media_packets = 0
        self.ignored_frames = 0
        # Whether the peer has said anything in RTSP yet: until then, it is not a camera.
        self.answered = False
        self._error: RtspClientError | None = None
        self._stopping = False
        self._closed_waiters: list[Deferred[None]] = []
        self._lost = False
        self._closing = False
        self._abort_timer: IDelayedCall | None = None

    # -- twisted protocol ---------------------------------------------------------------------
    def connectionMade(self) -> None:
        if self._stopping:
            self._close()
            return
        self.state = "OPTIONS"
        self._request("OPTIONS", self.url, [], self._on_options)

    @guarded
    def dataReceived(self, data: bytes) -> None:
        if self.state == "CLOSED":
            return
        try:
            events = self._parser.feed(data)
        except RtspParseError as err:
            self._fail(RtspClientError(f"bad data from the camera: {err.reason}", PROTOCOL))
            return
        for event in events:
            if self.state == "CLOSED":
                return
            if isinstance(event, InterleavedFrame):
                self._frame(event)
            elif isinstance(event, RtspResponse):
                self.answered = True
                self._response(event)
            else:
                self.answered = True
                self._server_request(event)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self._closing = True
        self.state = "CLOSED"
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None
        self._cancel_timers()
        for pending in self._pending.values():
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
        self._pending.clear()
        error = self._error
        if error is None and not self._stopping:
            error = RtspClientError("the camera closed the connection", NETWORK)
        waiters, self._closed_waiters = self._closed_waiters, []
        self.sink.session_closed(self, error)
        for d in waiters:
            d.callback(None)

    # -- control from the owner -----------------------------------------------------------------
    def stop(self) -> Deferred[None]:
        """TEARDOWN (if a session exists) and close; fires once the connection is closed."""
        if self._lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        if self._stopping:
            return d
        self._stopping = True
        if self.transport is None:  # not connected yet: connectionMade closes at once
            return d
        if self.session_id is not None and self.state not in ("TEARDOWN", "CLOSED"):
            self._cancel_timers()
            self.state = "TEARDOWN"
            self._request("TEARDOWN", self._aggregate, [], self._on_teardown)
            self._timer("teardown", self.config.teardown_timeout, self._close)
        else:
            self._close()
        return d

    def _on_teardown(self, resp: RtspResponse) -> None:
        log.info(
            "RTSP client {url}: TEARDOWN answered {status}", url=self.label, status=resp.status
        )
        self._close()

    # -- requests and responses -----------------------------------------------------------------
    def _request(
        self,
        method: str,
        uri: str,
        headers: list[tuple[str, str]],
        on_response: Callable[[RtspResponse], None],
        pending: _Pending | None = None,
    ) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._fail(RtspClientError(f"{MAX_PENDING} requests unanswered", TIMEOUT))
            return
        self._cseq += 1
        cseq = self._cseq
        if pending is None:
            pending = _Pending(method, uri, headers, on_response)
        lines: list[tuple[str, str]] = [("CSeq", str(cseq)), ("User-Agent", USER_AGENT)]
        if self.session_id is not None:
            lines.append(("Session", self.session_id))
        lines.extend(headers)
        auth = self._authorization(method, uri)
        if auth is not None:
            lines.append(("Authorization", auth))
        pending.timer = self.clock.callLater(
            self.config.response_timeout, self._response_timeout, cseq
        )
        self._pending[cseq] = pending
        assert self.transport is not None
        self.transport.write(build_request(method, uri, lines))

    def _authorization(self, method: str, uri: str) -> str | None:
        challenge = self._challenge
        if challenge is None or self._user is None:
            return None
        self._nc += 1
        return authorization_header(
            challenge, method, uri, self._user, self._password or "", nc=self._nc
        )

    def _response_timeout(self, cseq: int) -> None:
        pending = self._pending.pop(cseq, None)
        if pending is None:
            return
        if pending.method == "TEARDOWN":
            self._close()
            return
        self._fail(
            RtspClientError(
                f"no answer to {pending.method} within {self.config.response_timeout:g} s", TIMEOUT
            )
        )

    def _response(self, resp: RtspResponse) -> None:
        pending = None
        cseq_text = resp.headers.get("CSeq")
        cseq = ascii_uint(cseq_text.strip(), 0xFFFFFFFF) if cseq_text is not None else None
        if cseq is not None:
            pending = self._pending.pop(cseq, None)
        elif self._pending:
            # Some cameras omit CSeq: the answer is to the oldest request.
            pending = self._pending.pop(min(self._pending))
        if pending is None:
            log.debug(
                "RTSP client {url}: response {status} to no request",
                url=self.label,
                status=resp.status,
            )
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        if resp.status == 401 and pending.method != "TEARDOWN":
            self._unauthorized(pending, resp)
            return
        pending.on_response(resp)

    def _unauthorized(self, pending: _Pending, resp: RtspResponse) -> None:
        if self._user is None:
            self._fail(
                RtspClientError(
                    f"{pending.method}: 401 Unauthorized (the camera wants credentials)",
                    AUTH,
                    status=401,
                )
            )
            return
        try:
            challenge = choose_challenge(parse_challenges(resp.headers.get_all("WWW-Authenticate")))
        except AuthError as err:
            self._fail(RtspClientError(f"bad WWW-Authenticate: {err}", PROTOCOL, status=401))
            return
        if challenge is None:
            self._fail(
                RtspClientError(
                    f"{pending.method}: 401, no authentication scheme we support", AUTH, status=401
                )
            )
            return
        if challenge.stale and pending.auth_tries > 0 and pending.stale_tries < MAX_STALE_RETRIES:
            # Only the nonce expired: our credentials were right, answer the new nonce.
            pending.stale_tries += 1
        elif pending.auth_tries > 0:
            self._fail(
                RtspClientError(
                    f"{pending.method}: 401 Unauthorized (credentials refused)", AUTH, status=401
                )
            )
            return
        pending.auth_tries += 1
        if self._challenge is None or challenge.nonce != self._challenge.nonce:
            self._nc = 0
        self._challenge = challenge
        self._request(pending.method, pending.uri, pending.headers, pending.on_response, pending)

    def _refused(self, method: str, resp: RtspResponse) -> RtspClientError:
        text = f"{method} answered {resp.status} {resp.reason}".rstrip()
        if 300 <= resp.status < 400:
            location = resp.headers.get("Location")
            if location:
                return RtspClientError(text, REDIRECT, status=resp.status, location=location)
        return RtspClientError(text, REFUSED, status=resp.status)

    def _server_request(self, req: RtspRequest) -> None:
        # Some cameras ping their clients (OPTIONS, GET_PARAMETER); anything else is not ours.
        cseq = req.headers.get("CSeq", "0") or "0"
        headers: list[tuple[str, str]] = [("CSeq", cseq)]
        if req.method in ("OPTIONS", "GET_PARAMETER", "SET_PARAMETER"):
            status = 200
            if req.method == "OPTIONS":
                headers.append(("Public", "OPTIONS, GET_PARAMETER"))
        else:
            status = 501
        assert self.transport is not None
        self.transport.write(build_response(status, None, headers))

    # -- the session, step by step --------------------------------------------------------------
    def _on_options(self, resp: RtspResponse) -> None:
        # A camera that answers OPTIONS with an error may still serve DESCRIBE: go on.
        if 200 <= resp.status < 300:
            public = resp.headers.get("Public") or ""
            self._public = {m.strip().upper() for m in public.split(",") if m.strip()}
        self.state = "DESCRIBE"
        self._request("DESCRIBE", self.url, [("Accept", "application/sdp")], self._on_describe)

    def _on_describe(self, resp: RtspResponse) -> None:
        if not 200 <= resp.status < 300:
            self._fail(self._refused("DESCRIBE", resp))
            return
        ctype = (resp.headers.get("Content-Type") or "application/sdp").partition(";")[0]
        if ctype.strip().lower() != "application/sdp":
            self._fail(RtspClientError(f"DESCRIBE answered {ctype[:64]!r}, not SDP", PROTOCOL))
            return
        base = resp.headers.get("Content-Base") or resp.headers.get("Content-Location") or self.url
        base = base.strip()
        try:
            sdp = parse_sdp(resp.body)
            aggregate = resolve_control(base, sdp.control)
            tracks = select_tracks(describe_tracks(sdp))
            controls = [resolve_control(base, t.media.control) for t in tracks]
        except SdpError as err:
            self._fail(RtspClientError(f"the camera sent an unusable SDP: {err}", PROTOCOL))
            return
        if not tracks:
            self._fail(RtspClientError("the camera's SDP has no audio or video", PROTOCOL))
            return
        bad = next((u for u in (aggregate, *controls) if not is_request_uri(u)), None)
        if bad is not None:
            reason = f"the camera sent an unusable SDP: bad control URL {bad[:80]!r}"
            self._fail(RtspClientError(reason, PROTOCOL))
            return
        self._aggregate = aggregate
        self._tracks = [
            _TrackState(t, control, stats=ReceptionStats(t.clock_rate))
            for t, control in zip(tracks, controls, strict=True)
        ]
        log.info(
            "RTSP client {url}: tracks {tracks}",
            url=self.label,
            tracks=", ".join(f"{t.kind} {t.codec}" for t in tracks),
        )
        self.state = "SETUP"
        self._setup_next = 0
        self._setup()

    def _setup(self) -> None:
        i = self._setup_next
        state = self._tracks[i]
        # Propose the next free pair: a camera may pick other channels, we follow its answer.
        channel = 0
        while channel in self._channels or channel + 1 in self._channels:
            channel += 2
        transport = f"RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1}"
        self._request("SETUP", state.control, [("Transport", transport)], self._on_setup)
        state.rtp_channel, state.rtcp_channel = channel, channel + 1

    def _on_setup(self, resp: RtspResponse) -> None:
        if not 200 <= resp.status < 300:
            err = self._refused("SETUP", resp)
            if resp.status == 461:
                err.reason = "SETUP answered 461: the camera does not offer RTP over TCP"
            self._fail(err)
            return
        state = self._tracks[self._setup_next]
        try:
            self._take_session(resp)
            self._take_transport(state, resp)
        except RtspClientError as err:
            self._fail(err)
            return
        self._setup_next += 1
        if self._setup_next < len(self._tracks):
            self._setup()
            return
        self.sink.session_ready(self, [t.track for t in self._tracks])
        if self.state == "CLOSED" or self._stopping:
            return
        self.state = "PLAY"
        self._request("PLAY", self._aggregate, [("Range", "npt=0.000-")], self._on_play)

    def _take_session(self, resp: RtspResponse) -> None:
        value = resp.headers.get("Session")
        if value is None:
            if self.session_id is None:
                raise RtspClientError("SETUP answered without a Session header", PROTOCOL)
            return
        try:
            sid, timeout = parse_session(value)
        except RtspParseError as err:
            raise RtspClientError(f"bad Session header: {err.reason}", PROTOCOL) from None
        if self.session_id is None:
            self.session_id = sid
            if timeout is not None and timeout > 0:
                self.session_timeout = timeout
        elif sid != self.session_id:
            raise RtspClientError("the camera changed the session id between SETUPs", PROTOCOL)

    def _take_transport(self, state: _TrackState, resp: RtspResponse) -> None:
        value = resp.headers.get("Transport")
        channels = (state.rtp_channel, state.rtcp_channel)
        if value is not None:
            try:
                spec = parse_transport(value)[0]
            except RtspParseError as err:
                raise RtspClientError(f"bad Transport header: {err.reason}", PROTOCOL) from None
            if spec.lower != "TCP":
                raise RtspClientError("the camera answered SETUP with a UDP transport", PROTOCOL)
            if spec.interleaved is not None:
                channels = spec.interleaved
        rtp_ch, rtcp_ch = channels
        if rtp_ch in self._channels or rtcp_ch in self._channels or rtp_ch == rtcp_ch:
            raise RtspClientError(f"the camera reused interleaved channels {channels}", PROTOCOL)
        index = self._setup_next
        state.rtp_channel, state.rtcp_channel = rtp_ch, rtcp_ch
        self._channels[rtp_ch] = _Channel(index, False)
        self._channels[rtcp_ch] = _Channel(index, True)

    def _on_play(self, resp: RtspResponse) -> None:
        if not 200 <= resp.status < 300:
            self._fail(self._refused("PLAY", resp))
            return
        self.state = "PLAYING"
        now = self.clock.seconds()
        self.playing_since = now
        if self._last_media is None:
            self._last_media = now
        interval = max(self.config.min_keepalive, self.session_timeout / 2)
        self._timer("keepalive", interval, self._keepalive)
        self._timer("rr", self.config.rr_interval, self._send_reports)
        self._timer("media", self.config.media_timeout, self._check_media)
        log.info(
            "RTSP client {url}: playing (session timeout {timeout} s)",
            url=self.label,
            timeout=self.session_timeout,
        )
        self.sink.session_playing(self)

    # -- while playing --------------------------------------------------------------------------
    def _keepalive(self) -> None:
        method = "GET_PARAMETER" if "GET_PARAMETER" in self._public else "OPTIONS"
        uri = self._aggregate if method == "GET_PARAMETER" else self.url
        self._request(method, uri, [], self._on_keepalive)
        interval = max(self.config.min_keepalive, self.session_timeout / 2)
        self._timer("keepalive", interval, self._keepalive)

    def _on_keepalive(self, resp: RtspResponse) -> None:
        if resp.status == 454:  # Session Not Found: the camera forgot us
            self._fail(self._refused("keepalive", resp))

    def _send_reports(self) -> None:
        now = self.clock.seconds()
        assert self.transport is not None
        for state in self._tracks:
            block = state.stats.report_block(now)
            if block is None:
                continue
            report = build_receiver_report(self._ssrc, [block], self._cname)
            self.transport.write(build_interleaved(state.rtcp_channel, report))
        self._timer("rr", self.config.rr_interval, self._send_reports)

    def _check_media(self) -> None:
        now = self.clock.seconds()
        last = self._last_media if self._last_media is not None else now
        idle = now - last
        if idle >= self.config.media_timeout:
            self._fail(RtspClientError(f"no media from the camera for {idle:.0f} s", NO_MEDIA))
            return
        self._timer("media", self.config.media_timeout - idle, self._check_media)

    def _frame(self, frame: InterleavedFrame) -> None:
        channel = self._channels.get(frame.channel)
        if channel is None or self.state not in ("PLAY", "PLAYING"):
            self.ignored_frames += 1
            return
        state = self._tracks[channel.index]
        now = self.clock.seconds()
        if channel.rtcp:
            self._rtcp(channel.index, state, frame.payload, now)
            return
        try:
            packet = RtpPacket.parse(frame.payload)
        except RtpError:
            self.ignored_frames += 1
            return
        self._last_media = now
        self.media_packets += 1
        state.stats.update(packet, now)
        self.sink.rtp(channel.index, packet)

    def _rtcp(self, index: int, state: _TrackState, data: bytes, now: float) -> None:
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            self.ignored_frames += 1
            return
        for packet in packets:
            if isinstance(packet, SenderReport):
                state.stats.on_sender_report(packet, now)
        if self.sink.rtcp(index, data) and state.track.kind == "video":
            self._fail(RtspClientError("the camera ended the stream (RTCP BYE)", BYE))

    # -- timers and closing -----------------------------------------------------------------
    def _timer(self, name: str, delay: float, f: Callable[[], Any]) -> None:
        old = self._timers.get(name)
        if old is not None and old.active():
            old.cancel()
        self._timers[name] = self.clock.callLater(delay, self._fire, name, f)

    def _fire(self, name: str, f: Callable[[], Any]) -> None:
        self._timers.pop(name, None)
        if self.state != "CLOSED":
            f()

    def _cancel_timers(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def drop(self, reason: str) -> None:
        """What the input guard calls when the camera's bytes made us raise: close, and let the
        pull report the reason and reconnect by its policy."""
        self._fail(RtspClientError(f"unusable data from the camera: {reason}", PROTOCOL))

    def _fail(self, error: RtspClientError) -> None:
        if self._error is None and not self._stopping:
            self._error = error
            log.warn("RTSP client {url}: {reason}", url=self.label, reason=error.reason)
        self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.state = "CLOSED"
        self._cancel_timers()
        if self.transport is not None and not self._lost:
            self.transport.loseConnection()
            # A camera that stops reading would keep a graceful close waiting forever.
            self._abort_timer = self.clock.callLater(self.config.teardown_timeout, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        abort = getattr(self.transport, "abortConnection", None)
        if not self._lost and abort is not None:
            abort()
