"""The Flashphoner WebSDK WebSocket API: JSON on twisted.web.websocket, one session per socket.

Each frame is `{"message": NAME, "data": [obj]}` both ways. A session publishes and plays
WebRTC streams (peers from wcs.webrtc.peer), takes snapshots and answers keepalives.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.server import Request, Site
from twisted.web.websocket import WebSocketResource, WebSocketTransport

from wcs.snapshot.service import PoolRunner, SnapshotTimeout
from wcs.streams import PROVIDER_WEBRTC, Stream, StreamError, StreamNotFound, StreamRegistry

log = Logger(namespace="wcs.webrtc")

SERVER_VERSION = "wcs-0.1.0"
# A publish offer is ~10 KB; everything the SDK sends is far below this.
MAX_MESSAGE_BYTES = 256 * 1024
# Slack for the HTTP upgrade request and WebSocket frame headers on top of one message.
MAX_PENDING_BYTES = MAX_MESSAGE_BYTES + 64 * 1024
MAX_SESSIONS = 1000
MAX_STREAMS_PER_SESSION = 16
MAX_SNAPSHOTS_IN_FLIGHT = 8
MAX_ID_CHARS = 256
PING_INTERVAL = 10.0
# No frame at all from the client (pongs included) for this long closes the session.
KEEPALIVE_TIMEOUT = 35.0
HTTP_TIMEOUT = 30.0  # for the upgrade request itself
SHUTDOWN_TIMEOUT = 5.0

# Client messages that need no answer: logs, stats, mute notices, debug switches.
IGNORED = frozenset(
    {
        "pong",
        "sendStreamEvent",
        "pushLogs",
        "submitBugReport",
        "sessionDebug",
        "changeMediaState",
        "sendBitrate",
        "webRTCMetricsBatch",
        "setUserData",
    }
)

INFO_SESSION_DISCONNECT = "Stopped by session disconnect"
INFO_PUBLISHER_STOP = "Stopped by publisher stop"
INFO_USER_STOP = "Stopped by user"
INFO_TOO_MANY_STREAMS = "Too many streams in one session"
INFO_MSID_IN_USE = "MediaSessionId is already in use"
INFO_ERROR = "Failed by error"


class SignallingError(Exception):
    """A frame that is not a WebSDK message at all: the socket is closed."""


class BadRequest(Exception):
    """A message with missing or wrong fields: answered with `fail`, the socket stays."""


class RtspPullUnavailable(StreamError):
    info = "RTSP pull is not available yet"


# -- frames ---------------------------------------------------------------------------------------
def parse_frame(text: str) -> tuple[str, Any]:
    """(message name, first data item) of one client frame; raises SignallingError."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise SignallingError(f"message longer than {MAX_MESSAGE_BYTES} bytes")
    try:
        frame = json.loads(text)
    except ValueError as err:  # JSONDecodeError, and RecursionError's cousin for deep nesting
        raise SignallingError(f"malformed JSON: {err}") from None
    except RecursionError:
        raise SignallingError("JSON nested too deeply") from None
    if not isinstance(frame, dict):
        raise SignallingError("frame is not a JSON object")
    name = frame.get("message")
    if not isinstance(name, str) or not name or len(name) > MAX_ID_CHARS:
        raise SignallingError("frame without a message name")
    data = frame.get("data", [])
    if data is None:
        data = []
    if not isinstance(data, list):
        raise SignallingError(f"{name}: data is not an array")
    return name, (data[0] if data else None)


def encode_frame(message: str, *data: object) -> str:
    """A server frame; the SDK reads `data[0]`, so `data` is always an array."""
    return json.dumps({"message": message, "data": list(data)}, separators=(",", ":"))


def _text(obj: Any, key: str, *, limit: int | None = MAX_ID_CHARS) -> str:
    if not isinstance(obj, dict):
        raise BadRequest("data is not an object")
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"missing {key}")
    if limit is not None and len(value) > limit:
        raise BadRequest(f"{key} longer than {limit} characters")
    return value


# -- peers and camera pulls (injected) ------------------------------------------------------------
class MediaPeer(Protocol):
    def answer(self, offer_sdp: str) -> Deferred[str]: ...

    def close(self) -> Deferred[None]: ...


class PeerFactory(Protocol):
    """Makes WebRTC peers; callbacks fire on the reactor thread, at most one of them, once."""

    def publisher(
        self, stream: Stream, on_connected: Callable[[], None], on_failed: Callable[[str], None]
    ) -> MediaPeer: ...

    def player(
        self, stream: Stream, on_connected: Callable[[], None], on_failed: Callable[[str], None]
    ) -> MediaPeer: ...


class AiortcPeers:
    """The real peers (aiortc on the reactor's asyncio loop)."""

    def __init__(self, clock: IReactorTime, run_in_pool: PoolRunner | None = None) -> None:
        self.clock = clock
        self.run_in_pool = run_in_pool

    def publisher(
        self, stream: Stream, on_connected: Callable[[], None], on_failed: Callable[[str], None]
    ) -> MediaPeer:
        from wcs.webrtc.peer import PublishPeer

        return PublishPeer(stream, self.clock, on_connected, on_failed)

    def player(
        self, stream: Stream, on_connected: Callable[[], None], on_failed: Callable[[str], None]
    ) -> MediaPeer:
        from wcs.webrtc.peer import PlayPeer

        return PlayPeer(stream, self.clock, on_connected, on_failed, run_in_pool=self.run_in_pool)


RtspPull = Callable[[str], "Deferred[Stream]"]


def rtsp_pull_unavailable(uri: str) -> Deferred[Stream]:
    """Stand-in for the RTSP camera pull (playStream of an rtsp:// name); replace when it lands."""
    return fail(RtspPullUnavailable(uri))


class SnapshotTaker(Protocol):
    def take(self, name: str) -> Deferred[bytes]: ...


# -- the session ----------------------------------------------------------------------------------
@dataclass(eq=False)
class _Media:
    """One publish or play of this session, by its mediaSessionId."""

    msid: str
    name: str
    publish: bool
    stream: Stream | None = None
    peer: MediaPeer | None = None
    status: str = "PENDING"


class WebSDKSession:
    """One WebSocket connection of a WebSDK client (a twisted.web.websocket WebSocketProtocol)."""

    def __init__(self, factory: SignallingFactory, peer: str, budget: ByteBudget | None) -> None:
        self.factory = factory
        self.peer = peer
        self._budget = budget
        self.transport: WebSocketTransport | None = None
        self.media: dict[str, _Media] = {}
        self.connected = False  # the `connection` message was answered
        self.closed = False
        self._closing = False
        self._snapshots = 0
        self._last_heard = factory.clock.seconds()
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = factory.clock
        self.auth_token = str(uuid.uuid4())

    # -- WebSocketProtocol ----------------------------------------------------------------------
    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        if len(self.factory.sessions) >= MAX_SESSIONS:
            self.drop(f"too many WebSocket sessions (limit {MAX_SESSIONS})")
            return
        self.factory.sessions.add(self)
        self._keepalive.start(PING_INTERVAL, now=False)
        log.info("WebSDK {peer}: session open", peer=self.peer)

    def textMessageReceived(self, message: str) -> None:
        if self._budget is not None:
            self._budget.message_done()
        if self._closing:
            return
        self._last_heard = self.factory.clock.seconds()
        try:
            name, obj = parse_frame(message)
        except SignallingError as err:
            self.drop(str(err))
            return
        self.dispatch(name, obj)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        if self._budget is not None:
            self._budget.message_done()
        self.drop("binary frame (the WebSDK API is JSON text)")

    def pongReceived(self, payload: bytes) -> None:
        if self._budget is not None:
            self._budget.message_done()
        self._last_heard = self.factory.clock.seconds()

    def connectionLost(self, reason: Failure) -> None:
        if self.closed:
            return
        self.closed = True
        self._closing = True
        if self._keepalive.running:
            self._keepalive.stop()
        self.factory.sessions.discard(self)
        media, self.media = list(self.media.values()), {}
        for m in media:
            self._release(m, INFO_SESSION_DISCONNECT)
        log.info(
            "WebSDK {peer}: session closed ({streams} streams ended)",
            peer=self.peer,
            streams=len(media),
        )

    # -- helpers ----------------------------------------------------------------------------------
    def send(self, message: str, *data: object) -> None:
        if self._closing or self.transport is None:
            return
        self.transport.sendTextMessage(encode_frame(message, *data))

    def drop(self, reason: str, code: int = 1008) -> None:
        """Close this socket (and only this one) with a logged reason."""
        if self._closing:
            return
        self._closing = True
        log.warn("WebSDK {peer}: closing session: {reason}", peer=self.peer, reason=reason)
        if self.transport is not None:
            self.transport.loseConnection(code)

    def _ping(self) -> None:
        silent = self.factory.clock.seconds() - self._last_heard
        if silent > KEEPALIVE_TIMEOUT:
            self.drop(f"keepalive timeout: nothing received for {silent:.0f} s")
            return
        self.send("ping", None)

    def dispatch(self, name: str, obj: Any) -> None:
        if name in IGNORED:
            return
        handler = getattr(self, f"message_{name}", None)
        if handler is None:
            log.info("WebSDK {peer}: unknown message {name}", peer=self.peer, name=name)
            self.send("fail", {"apiMethod": name, "info": f"Unknown message {name}"})
            return
        if not self.connected and name not in ("connection", "ping"):
            self.send("fail", {"apiMethod": name, "info": "Session not ready"})
            return
        try:
            handler(obj)
        except BadRequest as err:
            log.info("WebSDK {peer}: bad {name} message: {err}", peer=self.peer, name=name, err=err)
            self.send("fail", {"apiMethod": name, "info": f"Bad request: {err}"})

    def _status(self, media: _Media, status: str, info: str = "") -> None:
        """notifyStreamStatusEvent; a final status (FAILED, STOPPED, UNPUBLISHED) forgets it."""
        media.status = status
        body: dict[str, object] = {}
        if media.stream is not None:
            body.update(media.stream.to_json())
        body.update(
            {
                "mediaSessionId": media.msid,
                "name": media.name,
                "published": media.publish,
                "status": status,
                "info": info,
                "mediaProvider": PROVIDER_WEBRTC,
                "record": False,
            }
        )
        body.setdefault("hasVideo", media.publish)
        body.setdefault("hasAudio", media.publish)
        self.send("notifyStreamStatusEvent", body)
        log.info(
            "WebSDK {peer}: {kind} {stream_name} {status} {info}",
            peer=self.peer,
            kind="publish" if media.publish else "play",
            stream_name=media.name,
            msid=media.msid,
            status=status,
            info=info,
        )

    def _active(self, media: _Media) -> bool:
        return not self.closed and self.media.get(media.msid) is media

    def _release(self, media: _Media, reason: str) -> None:
        """Free what a publish/play holds: the peer, and for a publish its stream."""
        peer, media.peer = media.peer, None
        if peer is not None:
            self.factory.track_close(peer.close())
        if media.publish and media.stream is not None:
            media.stream.end(reason)

    def _finish(self, media: _Media, status: str, info: str) -> None:
        if not self._active(media):
            return
        del self.media[media.msid]
        self._release(media, info)
        self._status(media, status, info)

    def _new_media(self, obj: Any, publish: bool) -> _Media | None:
        msid = _text(obj, "mediaSessionId")
        name = _text(obj, "name", limit=1024)
        media = _Media(msid, name, publish)
        if msid in self.media:
            self.send("fail", {"apiMethod": "StreamStatusEvent", "info": INFO_MSID_IN_USE})
            return None
        if len(self.media) >= MAX_STREAMS_PER_SESSION:
            self._status(media, "FAILED", INFO_TOO_MANY_STREAMS)
            return None
        self.media[msid] = media
        return media

    # -- messages -------------------------------------------------------------------------------
    def message_connection(self, obj: Any) -> None:
        if self.connected:
            raise BadRequest("session already established")
        user = dict(obj) if isinstance(obj, dict) else {}
        user.update({"authToken": self.auth_token, "status": "ESTABLISHED"})
        self.connected = True
        self.send("getUserData", user)
        self.send("getVersion", SERVER_VERSION)
        log.info(
            "WebSDK {peer}: connection established (appKey {app_key}, client {client})",
            peer=self.peer,
            app_key=user.get("appKey"),
            client=user.get("clientVersion"),
        )

    def message_ping(self, obj: Any) -> None:
        self.send("pong", None)

    def message_sendData(self, obj: Any) -> None:
        operation = _text(obj, "operationId")
        self.send("DataStatusEvent", {"operationId": operation, "status": "ACCEPTED", "info": ""})

    def message_publishStream(self, obj: Any) -> None:
        sdp = _text(obj, "sdp", limit=None)
        media = self._new_media(obj, publish=True)
        if media is None:
            return
        try:
            stream = self.factory.registry.publish(
                media.name, PROVIDER_WEBRTC, media_session_id=media.msid
            )
        except StreamError as err:
            self._finish(media, "FAILED", err.info)
            return
        self._start_peer(media, stream, sdp)

    def message_playStream(self, obj: Any) -> None:
        sdp = _text(obj, "sdp", limit=None)
        media = self._new_media(obj, publish=False)
        if media is None:
            return
        if media.name.lower().startswith("rtsp://"):
            source = self.factory.rtsp_pull(media.name)
        else:
            stream = self.factory.registry.get(media.name)
            source = fail(StreamNotFound(media.name)) if stream is None else succeed(stream)
        source.addCallbacks(
            lambda stream: self._play(media, stream, sdp), lambda f: self._answer_failed(media, f)
        )

    def _play(self, media: _Media, stream: Stream, sdp: str) -> None:
        if not self._active(media):
            return
        if stream.ended:
            self._finish(media, "FAILED", StreamNotFound.info)
            return
        self._start_peer(media, stream, sdp)

    def _start_peer(self, media: _Media, stream: Stream, sdp: str) -> None:
        """Follow `stream` and answer the offer with a publish or play peer on it."""
        media.stream = stream
        stream.on_end(lambda s: self._source_ended(media, s))
        make = self.factory.peers.publisher if media.publish else self.factory.peers.player
        peer = media.peer = make(
            stream,
            lambda: self._connected(media, "PUBLISHING" if media.publish else "PLAYING"),
            lambda info: self._finish(media, "FAILED", info),
        )
        peer.answer(sdp).addCallbacks(
            lambda answer: self._answered(media, answer), lambda f: self._answer_failed(media, f)
        )

    def _answered(self, media: _Media, answer: str) -> None:
        if self._active(media):
            self.send("setRemoteSDP", media.msid, answer)

    def _answer_failed(self, media: _Media, failure: Failure) -> None:
        info = getattr(failure.value, "info", None)
        if not isinstance(info, str):
            info = INFO_ERROR
            log.failure(
                "WebSDK {peer}: {stream_name} failed",
                failure,
                peer=self.peer,
                stream_name=media.name,
            )
        else:
            log.info(
                "WebSDK {peer}: {stream_name}: {detail}",
                peer=self.peer,
                stream_name=media.name,
                detail=failure.getErrorMessage(),
            )
        self._finish(media, "FAILED", info)

    def _connected(self, media: _Media, status: str) -> None:
        if self._active(media) and media.status == "PENDING":
            self._status(media, status)

    def _source_ended(self, media: _Media, stream: Stream) -> None:
        """The stream ended elsewhere (REST terminate, shutdown, or the publisher left)."""
        if self._active(media):
            self._finish(media, "UNPUBLISHED" if media.publish else "STOPPED", stream.end_reason)

    def message_unPublishStream(self, obj: Any) -> None:
        media = self.media.get(_text(obj, "mediaSessionId"))
        if media is None or not media.publish:
            raise BadRequest("no such publish in this session")
        self._finish(media, "UNPUBLISHED", INFO_PUBLISHER_STOP)

    def message_stopStream(self, obj: Any) -> None:
        media = self.media.get(_text(obj, "mediaSessionId"))
        if media is None or media.publish:
            raise BadRequest("no such play in this session")
        self._finish(media, "STOPPED", INFO_USER_STOP)

    def message_availableStream(self, obj: Any) -> None:
        msid = _text(obj, "mediaSessionId")
        stream = self.factory.registry.get(_text(obj, "name", limit=1024))
        available = stream is not None and not stream.ended
        self.send(
            "availableStream",
            {
                "id": msid,
                "mediaSessionId": msid,
                "status": "true" if available else "false",
                "info": "Available" if available else StreamNotFound.info,
            },
        )

    def message_snapshot(self, obj: Any) -> None:
        name = _text(obj, "name", limit=1024)
        msid = _text(obj, "mediaSessionId")
        if self._snapshots >= MAX_SNAPSHOTS_IN_FLIGHT:
            self._snapshot_failed(msid, name, "Too many snapshot requests")
            return
        # The snapshot service asks the publisher for a keyframe when none is cached.
        self._snapshots += 1
        d = self.factory.snapshots.take(self.factory.resolve_name(name))
        d.addCallbacks(
            lambda png: self._snapshot_done(msid, name, png),
            lambda f: self._snapshot_error(msid, name, f),
        )
        d.addBoth(self._snapshot_finished)

    def _snapshot_finished(self, _: object) -> None:
        self._snapshots -= 1

    def _snapshot_done(self, msid: str, name: str, png: bytes) -> None:
        data = base64.b64encode(png).decode("ascii")
        self.send(
            "notifyStreamEvent",
            {
                "mediaSessionId": msid,
                "name": name,
                "type": "snapshotCompleted",
                "payload": {"snapshot": data},
            },
        )
        self.send(
            "notifyStreamStatusEvent",
            {"mediaSessionId": msid, "name": name, "status": "SNAPSHOT_COMPLETE", "info": data},
        )
        log.info(
            "WebSDK {peer}: snapshot of {stream_name}: {size} bytes",
            peer=self.peer,
            stream_name=name,
            msid=msid,
            size=len(png),
        )

    def _snapshot_error(self, msid: str, name: str, failure: Failure) -> None:
        err = failure.value
        if isinstance(err, StreamError):
            info = err.info
        elif isinstance(err, SnapshotTimeout):
            info = err.message
        else:
            info = INFO_ERROR
            log.failure(
                "WebSDK {peer}: snapshot of {stream_name} failed",
                failure,
                peer=self.peer,
                stream_name=name,
            )
        self._snapshot_failed(msid, name, info)

    def _snapshot_failed(self, msid: str, name: str, info: str) -> None:
        self.send(
            "notifyStreamEvent",
            {
                "mediaSessionId": msid,
                "name": name,
                "type": "snapshotFailed",
                "payload": {"info": info},
            },
        )
        # FAILED makes the SDK drop the stream with that id: fine for the throw-away stream the
        # Stream Snapshot page makes, fatal for a publish or play of this session asking itself.
        if msid not in self.media:
            self.send(
                "notifyStreamStatusEvent",
                {"mediaSessionId": msid, "name": name, "status": "FAILED", "info": info},
            )
        log.info(
            "WebSDK {peer}: snapshot of {stream_name} failed: {info}",
            peer=self.peer,
            stream_name=name,
            msid=msid,
            info=info,
        )

    # -- server shutdown ------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Server stop: end this session's streams and close the socket."""
        media, self.media = list(self.media.values()), {}
        for m in media:
            self._release(m, "Stopped by server")
        self.drop("server shutting down", code=1001)


# -- the listener ---------------------------------------------------------------------------------
class ByteBudget(ProtocolWrapper):
    """Bounds what one connection may send between two complete WebSocket messages.

    twisted.web.websocket buffers a message until it is complete and has no size limit of its
    own, so this counts raw bytes under it and aborts the connection past the budget.
    """

    factory: ByteBudgetFactory

    def __init__(self, factory: WrappingFactory[Any], wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.pending = 0

    def dataReceived(self, data: bytes) -> None:
        self.pending += len(data)
        if self.pending > self.factory.limit:
            peer = self.getPeer()
            log.warn(
                "WebSDK {peer}: closing connection: more than {limit} bytes without a complete "
                "message",
                peer=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
                limit=self.factory.limit,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        super().dataReceived(data)

    def message_done(self) -> None:
        self.pending = 0


class ByteBudgetFactory(WrappingFactory):
    protocol = ByteBudget
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, limit: int = MAX_PENDING_BYTES) -> None:
        super().__init__(wrapped)
        self.limit = limit


class SignallingFactory:
    """Makes a WebSDKSession per upgraded request; owns what all sessions share."""

    def __init__(
        self,
        registry: StreamRegistry,
        snapshots: SnapshotTaker,
        clock: IReactorTime,
        *,
        peers: PeerFactory | None = None,
        rtsp_pull: RtspPull = rtsp_pull_unavailable,
        resolve_name: Callable[[str], str] = lambda name: name,
        run_in_pool: PoolRunner | None = None,
    ) -> None:
        self.registry = registry
        # A pulled camera played as `rtsp://...` is snapshotted by that same name.
        self.resolve_name = resolve_name
        self.snapshots = snapshots
        self.clock = clock
        self.peers: PeerFactory = peers if peers is not None else AiortcPeers(clock, run_in_pool)
        self.rtsp_pull = rtsp_pull
        self.sessions: set[WebSDKSession] = set()
        self._closing: set[Deferred[None]] = set()

    def buildProtocol(self, request: Request) -> WebSDKSession:
        address = request.getClientAddress()
        peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        channel = request.channel
        budget = channel.transport if isinstance(channel.transport, ByteBudget) else None
        # The HTTP idle timeout would otherwise close a long, quiet session; the keepalive
        # pings take over from here.
        channel.setTimeout(None)
        return WebSDKSession(self, peer, budget)

    def track_close(self, d: Deferred[None]) -> None:
        """Remember a peer being closed, so shutdown can wait for its sockets."""
        self._closing.add(d)

        def done(result: object) -> None:
            self._closing.discard(d)
            if isinstance(result, Failure):
                log.failure("closing a WebRTC peer failed", result)

        d.addBoth(done)

    def close_all(self) -> Deferred[Any]:
        """Server stop: end every session, then wait until their peers are closed."""
        for session in list(self.sessions):
            session.shutdown()
        done: Deferred[Any] = DeferredList(list(self._closing))
        # A peer that does not close in time must not hold up the process exit.
        done.addTimeout(SHUTDOWN_TIMEOUT, self.clock, onTimeoutCancel=lambda result, timeout: None)
        return done


class _AnyPath(WebSocketResource):
    """The WebSDK connects to ws://host:port/<anything>: every path is the same endpoint."""

    isLeaf = True


def websocket_site(factory: SignallingFactory) -> IProtocolFactory:
    """The listener's protocol factory: HTTP upgrade to WebSocket on any path, bytes bounded."""
    site = Site(_AnyPath(factory), timeout=HTTP_TIMEOUT)
    site.noisy = False
    site.displayTracebacks = False
    return ByteBudgetFactory(site)
