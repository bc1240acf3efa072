"""The Flashphoner WebSDK WebSocket API: JSON on twisted.web.websocket, one session per socket.

Each frame is `{"message": NAME, "data": [obj]}` both ways. A session publishes and plays
WebRTC streams (peers from wcs.webrtc.peer), takes snapshots and answers keepalives.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import h11
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError
from wsproto.utilities import ProtocolError as WsProtocolError
from zope.interface import implementer

from wcs.access import Access, Client, Refused
from wcs.config import Settings
from wcs.directory import StreamError, StreamNotFound
from wcs.guard import describe, guarded
from wcs.media.pool import PoolRunner
from wcs.rest.errors import error_json
from wcs.rest.views import StreamViews
from wcs.snapshot.service import SnapshotTimeout
from wcs.streams import PROVIDER_WEBRTC, Stream, StreamHub
from wcs.web import jsonin
from wcs.web.channel import GuardedSite, peer_of
from wcs.web.origin import OriginPolicy
from wcs.web.spliced import Base64Json, base64_json

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
HTTP_TIMEOUT = 30.0  # an idle connection that has not sent its upgrade request
SHUTDOWN_TIMEOUT = 5.0
# Messages waiting while the client does not read (snapshot results are not counted: they wait
# as a reference to the shared PNG, at most MAX_SNAPSHOTS_IN_FLIGHT of them). Past this the
# client is not reading at all; a buffer that stays full for 30 s also closes the connection
# (wcs.web.channel's drain deadline).
MAX_QUEUED_TEXT = 1024 * 1024
# A session closed by us whose socket has not closed by then is aborted.
CLOSE_TIMEOUT = 10.0

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


class SignallingError(ValueError):
    """A frame that is not a WebSDK message at all: the socket is closed."""


class BadRequest(Exception):
    """A message with missing or wrong fields: answered with `fail`, the socket stays."""


class RtspPullUnavailable(StreamError):
    info = "RTSP pull is not available yet"


class RtspWrongFormat(StreamError):
    info = "Rtsp has wrong format"


# -- frames ---------------------------------------------------------------------------------------
def parse_frame(text: str) -> tuple[str, Any]:
    """(message name, first data item) of one client frame; raises SignallingError."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise SignallingError(f"message longer than {MAX_MESSAGE_BYTES} bytes")
    try:
        frame = jsonin.loads(text)
    except ValueError as err:
        raise SignallingError(f"malformed JSON: {err}") from None
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
    def take(self, name: str, *, endpoint: str = ...) -> Deferred[bytes]: ...


# -- output ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Spliced:
    body: Base64Json
    done: Callable[[], None]


def _fragments(body: Base64Json) -> Iterator[tuple[str, bool]]:
    """The text of one message in pieces, each flagged whether it is the last."""
    chunks = body.chunks()
    previous = next(chunks, b"")
    for chunk in chunks:
        yield previous.decode("utf-8"), False
        previous = chunk
    yield previous.decode("utf-8"), True


@implementer(IPushProducer)
class Outbox:
    """What one session sends, in order, written only while the client reads.

    The HTTP channel under the WebSocket is the transport's producer and passes its pause and
    resume on to this object. A snapshot result goes out as a fragmented text message produced
    from the shared PNG, one base64 chunk at a time; other messages are small and queued whole,
    up to MAX_QUEUED_TEXT, past which `overflow` is told.
    """

    def __init__(self, transport: WebSocketTransport, overflow: Callable[[str], None]) -> None:
        self._transport = transport
        self._overflow = overflow
        # twisted.web.websocket sends whole messages only; fragments go through its wsproto
        # connection. Without one (another transport), a snapshot result is sent whole.
        self._wsconn = getattr(transport, "_wsconn", None)
        self._raw = getattr(transport, "transport", None)
        self._queue: deque[str | _Spliced] = deque()
        self._queued_text = 0
        self._message: Iterator[tuple[str, bool]] | None = None
        self._message_done: Callable[[], None] | None = None
        self.paused = False
        self.closed = False
        self._pumping = False

    def text(self, text: str) -> None:
        if self.closed:
            return
        self._queue.append(text)
        self._queued_text += len(text)
        self._pump()
        if self._queued_text > MAX_QUEUED_TEXT:
            self._overflow(
                f"client is not reading: more than {MAX_QUEUED_TEXT} bytes of messages queued"
            )

    def spliced(self, body: Base64Json, done: Callable[[], None]) -> None:
        """Send `body` as one message; `done` runs once it is written or dropped."""
        if self.closed:
            done()
            return
        self._queue.append(_Spliced(body, done))
        self._pump()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        self.close()

    def close(self) -> None:
        """Drop what is queued; `done` callbacks still run, so counters stay right."""
        self.closed = True
        if self._message_done is not None:
            done, self._message_done = self._message_done, None
            done()
        self._message = None
        queue, self._queue = self._queue, deque()
        self._queued_text = 0
        for item in queue:
            if isinstance(item, _Spliced):
                item.done()

    def _pump(self) -> None:
        if self._pumping:  # a `done` callback sending more: the running loop takes it
            return
        self._pumping = True
        try:
            while not self.paused and not self.closed:
                if self._message is not None:
                    self._next_fragment()
                elif self._queue:
                    self._start(self._queue.popleft())
                else:
                    return
        except LocalProtocolError:
            # The client has begun the closing handshake: nothing more may be sent.
            self.close()
        finally:
            self._pumping = False

    def _start(self, item: str | _Spliced) -> None:
        if isinstance(item, str):
            self._queued_text -= len(item)
            self._transport.sendTextMessage(item)
        elif self._wsconn is None or self._raw is None:
            try:
                self._transport.sendTextMessage(item.body.joined().decode("utf-8"))
            finally:
                item.done()
        else:
            self._message = _fragments(item.body)
            self._message_done = item.done

    def _next_fragment(self) -> None:
        assert self._message is not None and self._wsconn is not None and self._raw is not None
        text, last = next(self._message)
        frame = self._wsconn.send(TextMessage(data=text, message_finished=last))
        if not last:
            self._raw.write(frame)
            return
        self._message = None
        done, self._message_done = self._message_done, None
        try:
            self._raw.write(frame)
        finally:
            if done is not None:
                done()


def _custom(obj: Any) -> dict[str, Any]:
    """A message's `custom` object for the hook app, without a publish password."""
    custom = obj.get("custom") if isinstance(obj, dict) else None
    if not isinstance(custom, dict):
        return {}
    return {k: v for k, v in custom.items() if k != "password"}


def _password(obj: Any) -> str | None:
    custom = obj.get("custom") if isinstance(obj, dict) else None
    password = custom.get("password") if isinstance(custom, dict) else None
    return password if isinstance(password, str) else None


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
    # What follows the stream's end; forgotten when this media ends first (a long-lived stream
    # would otherwise keep every past player, and its session, alive).
    on_stream_end: Callable[[Stream], object] | None = None


class WebSDKSession:
    """One WebSocket connection of a WebSDK client (a twisted.web.websocket WebSocketProtocol)."""

    def __init__(
        self,
        factory: SignallingFactory,
        peer: str,
        budget: ByteBudget | None,
        channel: http.HTTPChannel | None = None,
    ) -> None:
        self.factory = factory
        self.peer = peer
        self._budget = budget
        # The HTTP channel the upgrade came through: still the transport's producer, it tells
        # the outbox when the client stops and starts reading again.
        self._channel = channel
        self.transport: WebSocketTransport | None = None
        self.outbox: Outbox | None = None
        self._abort_call: IDelayedCall | None = None
        self.media: dict[str, _Media] = {}
        self.connected = False  # the `connection` message was answered
        self._connecting = False  # the connect hook is deciding
        self._connection_data: dict[str, Any] = {}  # what `connection` sent (its custom)
        self.closed = False
        self._closing = False
        self._snapshots = 0
        self._last_heard = factory.clock.seconds()
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = factory.clock
        self.auth_token = str(uuid.uuid4())
        # This session as the hook app sees it (completed by the factory and by `connection`).
        self.client = Client(
            f"/{peer}", PROVIDER_WEBRTC, peer.rsplit(":", 1)[0], auth_token=self.auth_token
        )

    # -- WebSocketProtocol ----------------------------------------------------------------------
    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.transport = transport
        self.outbox = Outbox(transport, self.drop)
        if self._channel is not None:
            self._channel.registerProducer(self.outbox, True)

    def negotiationFinished(self) -> None:
        if len(self.factory.sessions) >= MAX_SESSIONS:
            self.drop(f"too many WebSocket sessions (limit {MAX_SESSIONS})")
            return
        self.factory.sessions.add(self)
        self._keepalive.start(PING_INTERVAL, now=False)
        log.info("WebSDK {peer}: session open", peer=self.peer)

    @guarded
    def textMessageReceived(self, message: str) -> None:
        """One WebSDK message: a bad one is a `fail` answer (see dispatch); anything else it
        makes us raise closes this session with a logged reason (the guard)."""
        if self._budget is not None:
            self._budget.message_done()
        if self._closing:
            return
        self._last_heard = self.factory.clock.seconds()
        try:
            name, obj = parse_frame(message)
        except SignallingError as err:  # expected, and its message says it all
            self.drop(str(err))
            return
        self.dispatch(name, obj)

    @guarded
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
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self.outbox is not None:
            self.outbox.close()
            if self._channel is not None:
                self._channel.unregisterProducer()
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
        if self._closing or self.outbox is None:
            return
        self.outbox.text(encode_frame(message, *data))

    def drop(self, reason: str, code: int = 1008) -> None:
        """Close this socket (and only this one) with a logged reason."""
        if self._closing:
            return
        self._closing = True
        log.warn("WebSDK {peer}: closing session: {reason}", peer=self.peer, reason=reason)
        if self.outbox is not None:
            self.outbox.close()
        if self.transport is not None:
            try:
                self.transport.loseConnection(code)
            except LocalProtocolError:  # the closing handshake is over: just close
                raw = getattr(self.transport, "transport", None)
                if raw is not None:
                    raw.loseConnection()
            # A close waits for the send buffer to empty; a client that never reads must not
            # hold the connection open on that.
            self._abort_call = self.factory.clock.callLater(CLOSE_TIMEOUT, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        raw = getattr(self.transport, "transport", None)
        if raw is not None and not self.closed:
            log.warn("WebSDK {peer}: connection did not close: aborting it", peer=self.peer)
            raw.abortConnection()

    @guarded
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
            body.update(self.factory.views.stream_json(media.stream))
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
        on_stream_end, media.on_stream_end = media.on_stream_end, None
        if media.stream is not None and on_stream_end is not None:
            media.stream.remove_on_end(on_stream_end)
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
        if self.connected or self._connecting:
            raise BadRequest("session already established")
        user = dict(obj) if isinstance(obj, dict) else {}
        app_key = user.get("appKey")
        self._connection_data = user
        self.client = replace(
            self.client,
            app_key=app_key if isinstance(app_key, str) else "",
            custom=_custom(user),
        )
        self._connecting = True
        self.factory.access.connect(self.client).addCallbacks(
            lambda _: self._established(user), self._connect_refused
        )

    @guarded
    def _connect_refused(self, failure: Failure) -> None:
        failure.trap(Refused)
        info = failure.value.info  # type: ignore[union-attr]
        self.send("fail", {"apiMethod": "connection", "info": info})
        self.drop(f"connection refused: {info}")

    @guarded
    def _established(self, user: dict[str, Any]) -> None:
        self._connecting = False
        if self._closing:
            return
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
        # The password may come with the stream's or with the session's custom object.
        password = _password(obj)
        if password is None:
            password = _password(self._connection_data)
        client = self._client_for(obj)
        self.factory.access.publish(client, media.name, media.msid, password).addCallbacks(
            lambda _: self._publish(media, client, sdp),
            lambda f: self._refused(media, f),
        )

    @guarded
    def _publish(self, media: _Media, client: Client, sdp: str) -> None:
        if not self._active(media):
            return
        # PUBLISHING is sent once the directory gave the name to this server.
        self.factory.hub.publish(
            media.name, PROVIDER_WEBRTC, media_session_id=media.msid
        ).addCallbacks(
            lambda stream: self._published(media, client, sdp, stream),
            lambda f: self._name_refused(media, f),
        )

    @guarded
    def _published(self, media: _Media, client: Client, sdp: str, stream: Stream) -> None:
        if not self._active(media):
            stream.end()  # named for a publish that was stopped (or a session gone) meanwhile
            return
        self.factory.access.track(client, stream)
        self._start_peer(media, stream, sdp)

    @guarded
    def _name_refused(self, media: _Media, failure: Failure) -> None:
        failure.trap(StreamError)
        if self._active(media):
            self._finish(media, "FAILED", failure.value.info)  # type: ignore[union-attr]

    @guarded
    def _refused(self, media: _Media, failure: Failure) -> None:
        failure.trap(Refused)
        info = failure.value.info  # type: ignore[union-attr]
        log.info(
            "WebSDK {peer}: {stream_name} refused: {info}",
            peer=self.peer,
            stream_name=media.name,
            info=info,
        )
        self._finish(media, "FAILED", info)

    def _client_for(self, obj: Any) -> Client:
        """The session's client, with this stream's own `custom` over the session's."""
        return self.client.with_custom(_custom(obj))

    def message_playStream(self, obj: Any) -> None:
        sdp = _text(obj, "sdp", limit=None)
        media = self._new_media(obj, publish=False)
        if media is None:
            return
        self.factory.access.play(self._client_for(obj), media.name, media.msid).addCallbacks(
            lambda _: self._find_source(media, sdp), lambda f: self._refused(media, f)
        )

    @guarded
    def _find_source(self, media: _Media, sdp: str) -> None:
        if not self._active(media):
            return
        source: Deferred[Stream]
        if media.name.lower().startswith("rtsp://"):
            try:
                source = self.factory.rtsp_pull(media.name)
            except ValueError as err:  # a URI the pull's parser refuses in a way of its own
                source = fail(RtspWrongFormat(str(err)))
        else:
            stream = self.factory.hub.get(media.name)
            source = fail(StreamNotFound(media.name)) if stream is None else succeed(stream)
        source.addCallbacks(
            lambda stream: self._play(media, stream, sdp), lambda f: self._answer_failed(media, f)
        )

    @guarded
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
        media.on_stream_end = lambda s: self._source_ended(media, s)
        stream.on_end(media.on_stream_end)
        make = self.factory.peers.publisher if media.publish else self.factory.peers.player
        peer = media.peer = make(
            stream,
            lambda: self._connected(media, "PUBLISHING" if media.publish else "PLAYING"),
            lambda info: self._peer_failed(media, info),
        )
        peer.answer(sdp).addCallbacks(
            lambda answer: self._answered(media, answer), lambda f: self._answer_failed(media, f)
        )

    @guarded
    def _peer_failed(self, media: _Media, info: str) -> None:
        self._finish(media, "FAILED", info)

    @guarded
    def _answered(self, media: _Media, answer: str) -> None:
        if self._active(media):
            self.send("setRemoteSDP", media.msid, answer)

    @guarded
    def _answer_failed(self, media: _Media, failure: Failure) -> None:
        err = failure.value
        info = getattr(err, "info", None)
        if not isinstance(info, str):
            info = INFO_ERROR
            log.failure(
                "WebSDK {peer}: {stream_name} failed",
                failure,
                peer=self.peer,
                stream_name=media.name,
            )
        elif isinstance(err, StreamError):  # not found, name in use: the client's business
            log.info(
                "WebSDK {peer}: {stream_name}: {detail}",
                peer=self.peer,
                stream_name=media.name,
                detail=failure.getErrorMessage(),
            )
        else:  # the peer could not be set up: an unusable offer, no common codec, ICE
            log.warn(
                "WebSDK {peer}: {kind} {stream_name} failed: {info}: {detail}",
                peer=self.peer,
                kind="publish" if media.publish else "play",
                stream_name=media.name,
                info=info,
                detail=describe(err) if isinstance(err, BaseException) else str(err),
            )
        self._finish(media, "FAILED", info)

    @guarded
    def _connected(self, media: _Media, status: str) -> None:
        if self._active(media) and media.status == "PENDING":
            self._status(media, status)

    @guarded
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
        stream = self.factory.hub.get(_text(obj, "name", limit=1024))
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
        try:
            local = self.factory.resolve_name(name)
        except ValueError:  # an rtsp:// name no camera pull could have: no such stream
            self._snapshot_failed(msid, name, StreamNotFound.info)
            return
        # The snapshot service asks the publisher for a keyframe when none is cached.
        # In flight until its result is written out (or dropped), not merely computed.
        self._snapshots += 1
        d = self.factory.snapshots.take(local, endpoint="websdk")
        d.addCallbacks(
            lambda png: self._snapshot_done(msid, name, png),
            lambda f: self._snapshot_error(msid, name, f),
        )

    def _snapshot_finished(self) -> None:
        self._snapshots -= 1

    @guarded
    def _snapshot_done(self, msid: str, name: str, png: bytes) -> None:
        outbox = self.outbox
        if self._closing or outbox is None:
            self._snapshot_finished()
            return
        # Both forms the SDK reads, each carrying the PNG as base64: produced from the shared
        # PNG as the client reads, never as private copies of the whole text.
        event = base64_json(
            lambda data: encode_frame(
                "notifyStreamEvent",
                {
                    "mediaSessionId": msid,
                    "name": name,
                    "type": "snapshotCompleted",
                    "payload": {"snapshot": data},
                },
            ),
            png,
        )
        status = base64_json(
            lambda data: encode_frame(
                "notifyStreamStatusEvent",
                {"mediaSessionId": msid, "name": name, "status": "SNAPSHOT_COMPLETE", "info": data},
            ),
            png,
        )
        outbox.spliced(event, lambda: None)
        outbox.spliced(status, self._snapshot_finished)
        log.info(
            "WebSDK {peer}: snapshot of {stream_name}: {size} bytes",
            peer=self.peer,
            stream_name=name,
            msid=msid,
            size=len(png),
        )

    @guarded
    def _snapshot_error(self, msid: str, name: str, failure: Failure) -> None:
        self._snapshot_finished()
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
        self.dropped = False

    @guarded
    def dataReceived(self, data: bytes) -> None:
        """Every byte of the listener, HTTP upgrade and WebSocket frames alike, under one
        guard: whatever the client's bytes make the layers above raise closes this one
        connection with a logged reason."""
        if self.dropped:
            return
        self.pending += len(data)
        if self.pending > self.factory.limit:
            self.drop(f"more than {self.factory.limit} bytes without a complete message")
            return
        try:
            super().dataReceived(data)
        except LocalProtocolError:
            # twisted.web.websocket answers a ping even after our Close went out, which wsproto
            # refuses: the client kept talking on a socket we are closing. Close it now.
            self.dropped = True
            self.transport.abortConnection()  # type: ignore[union-attr]

    def drop(self, reason: str) -> None:
        self.dropped = True
        log.warn(
            "WebSDK {peer}: closing connection: {reason}",
            peer=peer_of(self),
            reason=reason,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

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
        hub: StreamHub,
        snapshots: SnapshotTaker,
        clock: IReactorTime,
        *,
        peers: PeerFactory | None = None,
        rtsp_pull: RtspPull = rtsp_pull_unavailable,
        resolve_name: Callable[[str], str] = lambda name: name,
        run_in_pool: PoolRunner | None = None,
        access: Access | None = None,
        views: StreamViews | None = None,
    ) -> None:
        self.hub = hub
        self.views = views if views is not None else StreamViews()
        self.access = access if access is not None else Access(clock)
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
        session = WebSDKSession(self, peer, budget, channel)
        session.client = Client(
            session_id=Client.session_id_of(address, request.getHost()),
            provider=PROVIDER_WEBRTC,
            address=str(getattr(address, "host", "?")),
            auth_token=session.auth_token,
        )
        return session

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
    """The WebSDK connects to ws://host:port/<anything>: every path is the same endpoint,
    open to pages of the allowed origins (and to clients that are not web pages)."""

    isLeaf = True

    def __init__(self, factory: SignallingFactory, origins: OriginPolicy) -> None:
        super().__init__(factory)
        self.origins = origins

    def render_GET(self, request: Request) -> bytes | int:
        host = request.getHeader(b"host")
        for origin in request.requestHeaders.getRawHeaders(b"origin") or []:
            refusal = self.origins.refusal(origin, host)
            if refusal is not None:
                log.warn(
                    "WebSDK {peer}: refused the WebSocket upgrade: {refusal} "
                    "(a page allowed to connect belongs in ws_allowed_origins)",
                    peer=peer_of(request.channel.transport if request.channel else None),
                    refusal=refusal,
                )
                return self._refuse(request, http.FORBIDDEN, f"{refusal} (see ws_allowed_origins)")
        try:
            return super().render_GET(request)
        except (h11.ProtocolError, WsProtocolError, ValueError) as err:
            # Twisted catches wsproto's RemoteProtocolError only; h11 refuses e.g. a request
            # with two Host headers with its own LocalProtocolError, and wsproto decodes a
            # Connection or Upgrade header as ASCII (UnicodeDecodeError).
            log.warn(
                "WebSDK {peer}: refused the WebSocket upgrade: {reason}",
                peer=peer_of(request.channel.transport if request.channel else None),
                reason=describe(err),
            )
            return self._refuse(request, http.BAD_REQUEST, f"Bad WebSocket upgrade request: {err}")

    @staticmethod
    def _refuse(request: Request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        path = (request.path or b"").decode("utf-8", "replace")
        return error_json(status, message, path)


def websocket_site(factory: SignallingFactory, settings: Settings) -> IProtocolFactory:
    """The listener's protocol factory: HTTP upgrade to WebSocket on any path, for the allowed
    origins, with the HTTP layer's deadlines (wcs.web.channel), no request body, bytes bounded."""
    site = GuardedSite(
        _AnyPath(factory, OriginPolicy.from_settings(settings)),
        reactor=factory.clock,
        max_body=0,
        idle_timeout=HTTP_TIMEOUT,
    )
    return ByteBudgetFactory(site)
