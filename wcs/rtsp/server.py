"""RTSP server: encoders publish with ANNOUNCE/SETUP/RECORD (RTP over TCP or UDP); players watch a
live stream's H.264 with DESCRIBE/SETUP/PLAY (RTP interleaved on the RTSP connection).

One connection carries at most one session (session.py: a publisher's or a player's). Bytes go
through the pure :class:`RtspParser`; this module frames them, queues requests, checks logins
and asks the hooks, and hands each request to the connection's session.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from wcs.access import Access, Client, Refused
from wcs.directory import InvalidName, StreamNotFound
from wcs.guard import describe, guarded
from wcs.media import h264
from wcs.rtsp.auth import AuthOutcome, RtspAuthenticator
from wcs.rtsp.egress import PLAY_PAYLOAD_TYPE
from wcs.rtsp.h264rtp import CLOCK_RATE
from wcs.rtsp.ingest import Track, describe_tracks
from wcs.rtsp.message import (
    STATUS_REASONS,
    InterleavedFrame,
    RtspEvent,
    RtspParseError,
    RtspParser,
    RtspRequest,
    RtspResponse,
    TransportSpec,
    build_response,
    parse_session,
)
from wcs.rtsp.numbers import ascii_uint
from wcs.rtsp.sdp import (
    MediaDescription,
    RtpMap,
    SdpError,
    build_sdp,
    h264_fmtp,
    parse_sdp,
    resolve_control,
)
from wcs.rtsp.session import (
    PLAY_CONTROL,
    RTP_PROFILES,
    PlayerSession,
    PublisherSession,
    Reply,
    stream_name_from_url,
    tracks_text,
    transport_specs,
    url_key,
)
from wcs.rtsp.udp import MAX_UDP_PAIRS, UdpPortPool
from wcs.streams import END_PUBLISHER_STOP, PROVIDER_RTSP, Stream, StreamHub

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


class RTSPServerProtocol(Protocol):
    """One RTSP connection: requests in order, logins, hooks, timeouts; its session (an
    encoder's publish or a player's) holds the rest."""

    factory: RTSPServerFactory

    def __init__(self, hub: StreamHub, reactor: Any) -> None:
        self.hub = hub
        self.reactor = reactor
        self.parser = RtspParser(max_body=MAX_BODY)
        self.peer = "?"
        self.peer_host = ""
        self.session: PublisherSession | PlayerSession | None = None
        self.app = ""  # of the URL the client announced: the hook app's app_key
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

    @property
    def session_id(self) -> str | None:
        return self.session.session_id if self.session is not None else None

    @property
    def closing(self) -> bool:
        """The connection is going away: late answers and datagrams are ignored."""
        return self._closing

    # -- connection -----------------------------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.peer_host = str(getattr(peer, "host", "?"))
        self.peer = f"{self.peer_host}:{getattr(peer, 'port', '?')}"
        self.factory.connections += 1
        if self.factory.connections > self.factory.max_connections:
            self.drop(f"too many RTSP connections (limit {self.factory.max_connections})")
            return
        self.touch()
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
        self.end_session("Stopped by publisher stop")

    def drop(self, reason: str, reply: bytes = b"") -> None:
        """Close this connection (and only this one) with a logged reason; `reply` is sent first."""
        if self._closing:
            return
        self._closing = True
        session = self.session
        published = session.stream if isinstance(session, PublisherSession) else None
        log.warn(
            "RTSP {peer}: closing connection: {reason}",
            peer=self.peer,
            reason=reason,
            stream_name=published.name if published else None,
        )
        transport = self.transport
        assert transport is not None
        if reply:
            transport.write(reply)
            transport.loseConnection()
        else:
            transport.abortConnection()  # type: ignore[attr-defined]

    def finish(self) -> None:
        """End the session and close the connection once its output is sent."""
        self.end_session("")
        self._closing = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def end_session(self, reason: str) -> None:
        """End the session (a publisher's stream with `reason`), releasing what it holds."""
        session, self.session = self.session, None
        if session is not None:
            session.close(reason)

    # -- timeouts -------------------------------------------------------------------------------
    def touch(self) -> None:
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
                self.touch()
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
        session = self.session
        if session is None or not session.frame(frame):
            self.stray_frames += 1

    # -- requests -------------------------------------------------------------------------------
    def _request(self, req: RtspRequest) -> None:
        log.debug("RTSP {peer}: {method} {uri}", peer=self.peer, method=req.method, uri=req.uri)
        cseq = req.headers.get("CSeq")
        if cseq is None or ascii_uint(cseq.strip(), 0xFFFFFFFF) is None:
            self._send(req, Reply(400, "Missing or bad CSeq"), None)
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
            reply: Reply | Deferred[Reply] | None = self._check_request(req)
            if reply is None:
                handler: Callable[[RtspRequest], Reply | Deferred[Reply]] | None = getattr(
                    self, f"rtsp_{req.method}", None
                )
                reply = handler(req) if handler is not None else Reply(501)
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

    def _wait_for_reply(self, req: RtspRequest, cseq: str, reply: Deferred[Reply]) -> None:
        """A reply that may wait for the hook app: if it has not fired yet, this connection's
        input waits behind it. One that has is answered now, and the request loop goes on
        (resuming from here would re-enter it once per pipelined request)."""
        later = False
        fired = False

        def answered(result: Reply | Failure) -> None:
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

    def _answer(self, req: RtspRequest, reply: Reply, cseq: str) -> None:
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
        if req.method in ("DESCRIBE", "PLAY") or (req.method == "SETUP" and self.session is None):
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
    def _refused(failure: Failure) -> Reply:
        failure.trap(Refused)
        return Reply(403, failure.value.info)  # type: ignore[union-attr]

    def _unauthorized(
        self, req: RtspRequest, cseq: str, auth: RtspAuthenticator, outcome: AuthOutcome
    ) -> None:
        """401 with the challenges. A wrong guess is answered only after a delay (the reactor
        goes on; this connection's further input waits), and a few of them close it."""
        reply = Reply(401, headers=auth.challenges(stale=outcome.stale))
        if not outcome.failed:
            self._send(req, reply, cseq)  # the first round of every login, or a stale nonce
            return
        self.auth_failures += 1
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self._held = self.reactor.callLater(
            self.factory.auth_failure_delay, self._release, req, reply, cseq
        )

    @guarded
    def _release(self, req: RtspRequest, reply: Reply, cseq: str) -> None:
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

    def _check_request(self, req: RtspRequest) -> Reply | None:
        """Checks common to every method: unsupported Require options, the Session header."""
        require = req.headers.get("Require")
        if require:
            return Reply(551, headers=[("Unsupported", require)])
        value = req.headers.get("Session")
        if value is not None:
            try:
                sid, _ = parse_session(value)
            except RtspParseError:
                return Reply(454)
            if sid != self.session_id:
                return Reply(454)
        return None

    def _send(self, req: RtspRequest, reply: Reply, cseq: str | None) -> None:
        self.transport.write(self._response_bytes(reply, cseq))  # type: ignore[union-attr]

    def _response_bytes(self, reply: Reply, cseq: str | None) -> bytes:
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

    def rtsp_OPTIONS(self, req: RtspRequest) -> Reply:
        return Reply(200, headers=[("Public", ", ".join(PUBLIC_METHODS))])

    def rtsp_GET_PARAMETER(self, req: RtspRequest) -> Reply:
        return Reply(200)  # a keepalive: the request itself refreshed the session

    def rtsp_SET_PARAMETER(self, req: RtspRequest) -> Reply:
        if req.body.strip():
            return Reply(451)
        return Reply(200)

    # -- playing --------------------------------------------------------------------------------
    def _live_stream(self, uri: str) -> Stream | Reply:
        """The live stream a play URL names, or the reply refusing it."""
        try:
            _, name = stream_name_from_url(uri)
        except InvalidName as err:
            return Reply(400, err.info)
        stream = self.hub.get(name)
        if stream is None:
            return Reply(404, StreamNotFound.info)
        video = stream.video
        if video is None or video.codec != "H264":
            return Reply(415, "Only H.264 video can be played over RTSP")
        return stream

    def rtsp_DESCRIBE(self, req: RtspRequest) -> Deferred[Reply]:
        allowed = self._allow_play(req.uri)
        return allowed.addCallback(lambda _: self._describe(req)).addErrback(self._refused)

    def _describe(self, req: RtspRequest) -> Reply:
        found = self._live_stream(req.uri)
        if isinstance(found, Reply):
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
        return Reply(
            200, headers=[("Content-Base", base), ("Content-Type", "application/sdp")], body=body
        )

    def _setup_play(self, req: RtspRequest, specs: list[TransportSpec]) -> Reply | Deferred[Reply]:
        if any(spec.mode == "RECORD" for spec in specs):
            return Reply(455, "SETUP before ANNOUNCE")
        # A client may skip DESCRIBE: the hook decides here then.
        track_url = req.uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[0]
        allowed = self._allow_play(track_url)
        return allowed.addCallback(lambda _: self._setup_player(req, specs)).addErrback(
            self._refused
        )

    def _setup_player(self, req: RtspRequest, specs: list[TransportSpec]) -> Reply:
        path = url_key(req.uri).partition("?")[0]
        if not path.endswith("/" + PLAY_CONTROL):
            return (
                Reply(459, "SETUP needs the track URL")
                if self._is_live(req.uri)
                else Reply(404, StreamNotFound.info)
            )
        found = self._live_stream(req.uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[0])
        if isinstance(found, Reply):
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
            return Reply(461, "Only TCP interleaved for playback")
        session = self.session = PlayerSession(self, found, spec)
        return Reply(200, headers=[("Transport", session.answer.to_header())])

    def _is_live(self, uri: str) -> bool:
        return isinstance(self._live_stream(uri), Stream)

    def rtsp_PLAY(self, req: RtspRequest) -> Reply:
        session = self.session
        if not isinstance(session, PlayerSession):
            return Reply(455, "PLAY before SETUP")
        return session.play(req)

    def rtsp_PAUSE(self, req: RtspRequest) -> Reply:
        return Reply(405, headers=[("Allow", ", ".join(PUBLIC_METHODS))])

    # -- publishing -----------------------------------------------------------------------------
    def rtsp_ANNOUNCE(self, req: RtspRequest) -> Reply | Deferred[Reply]:
        if self.session is not None:
            return Reply(455, "Already announced on this connection")
        content_type = (req.headers.get("Content-Type") or "application/sdp").split(";")[0]
        if content_type.strip().lower() != "application/sdp":
            return Reply(415, headers=[("Accept", "application/sdp")])
        try:
            sdp = parse_sdp(req.body)
            aggregate = resolve_control(req.uri, sdp.control)
            tracks = [t for t in describe_tracks(sdp) if t.media.proto.upper() in RTP_PROFILES]
            track_urls = [resolve_control(aggregate, t.media.control) for t in tracks]
        except SdpError as err:
            return self._refuse_announce(req, Reply(400, f"Bad SDP: {err}"))
        if not tracks or len(tracks) != len(sdp.media):
            return self._refuse_announce(req, Reply(400, "SDP without RTP/AVP media"))
        try:
            app, name = stream_name_from_url(req.uri)
        except InvalidName as err:
            return self._refuse_announce(req, Reply(400, err.info), str(err))
        self.app = app
        client = self._client(req.uri)
        msid = secrets.token_hex(16)
        access = self.factory.access
        # The password (if any) was checked as RTSP auth: the hooks decide the rest.
        decision = self._connect(client).addCallback(
            lambda _: access.publish(client, name, msid, None, authenticated=True)
        )

        def allowed(_: object) -> Reply | Deferred[Reply]:
            return self._announced(req, client, app, name, msid, tracks, aggregate, track_urls)

        def refused(failure: Failure) -> Reply:
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
    ) -> Reply | Deferred[Reply]:
        if self._closing:
            return Reply(503, "Connection closing")
        if self.session is not None:
            return Reply(455, "Already announced on this connection")
        session = PublisherSession(self, app, name, msid, tracks, aggregate, track_urls)
        # Answered once the directory gave (or refused) the name.
        return session.publish(client).addCallback(self._publish_answered, req, session)

    def _publish_answered(
        self, refusal: Reply | None, req: RtspRequest, session: PublisherSession
    ) -> Reply:
        if refusal is not None:
            return refusal
        if self.session is not None:
            session.close(END_PUBLISHER_STOP)
            return Reply(455, "Already announced on this connection")
        self.session = session
        self.app = session.app
        log.info(
            "RTSP {peer}: announced {stream_name} (app {app}): {tracks}",
            peer=self.peer,
            stream_name=session.name,
            app=session.app,
            tracks=tracks_text(session.tracks),
            user_agent=req.headers.get("User-Agent"),
        )
        return Reply(200)

    def _refuse_announce(self, req: RtspRequest, reply: Reply, detail: str = "") -> Reply:
        log.warn(
            "RTSP {peer}: ANNOUNCE of {uri} refused: {reason}{detail}",
            peer=self.peer,
            uri=req.uri[:200],
            reason=reply.reason,
            detail=f": {detail}" if detail else "",
        )
        return reply

    def rtsp_SETUP(self, req: RtspRequest) -> Reply | Deferred[Reply]:
        session = self.session
        if session is not None:
            return session.setup(req)
        specs = transport_specs(req)
        if isinstance(specs, Reply):
            return specs
        return self._setup_play(req, specs)

    def rtsp_RECORD(self, req: RtspRequest) -> Reply:
        session = self.session
        if not isinstance(session, PublisherSession):
            return Reply(455, "RECORD before SETUP")
        return session.record(req)

    def rtsp_TEARDOWN(self, req: RtspRequest) -> Reply:
        session = self.session
        if session is None:
            return Reply(454)
        stream = session.stream
        self.end_session("Stopped by publisher stop")
        log.info(
            "RTSP {peer}: TEARDOWN of {stream_name}",
            peer=self.peer,
            stream_name=stream.name if stream else None,
        )
        return Reply(200)


class RTSPServerFactory(Factory):
    """Makes one RTSPServerProtocol per connection; owns the connection count and UDP port pool."""

    noisy = False

    def __init__(
        self,
        hub: StreamHub,
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
        self.hub = hub
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
        proto = RTSPServerProtocol(self.hub, self.reactor)
        proto.factory = self
        return proto
