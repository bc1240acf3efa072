"""Fuzz targets for what browsers and HTTP clients send: WebSDK frames into a session, REST JSON
bodies, raw bytes into the REST site's HTTP channel and into the WebSocket listener, and the
Origin/Host headers.

The layers under test guard their input paths (wcs.guard): an unexpected exception becomes a
closed connection and a logged traceback, not an escaping exception. So besides exceptions,
each target fails on any logged failure (a traceback at any level): that is a bug some input
reaches, whatever the guard made of it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import parse_qs

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.fuzz import target
from tests.unit.fakes import PNG, FakeConnector, publish_now
from wcs.config import Settings
from wcs.directory import StreamError, StreamNotFound
from wcs.media.encode import BadImageParam, EncodedImage, ImageSpec
from wcs.rest.images import max_age_of
from wcs.rest.resources import MAX_BODY, RestError, _required_str, build_site
from wcs.rtsp.pull import PullManager
from wcs.snapshot.service import Snapshot, SnapshotService, SnapshotTimeout
from wcs.streams import StreamHub
from wcs.web import jsonin
from wcs.web.origin import OriginPolicy, host_of, parse_origin
from wcs.webrtc.signalling import (
    PING_INTERVAL,
    SignallingFactory,
    WebSDKSession,
    websocket_site,
)

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class FuzzFailure(Exception):
    """A traceback was logged while handling the input."""


@contextlib.contextmanager
def no_logged_failures() -> Iterator[None]:
    """Fail if anything logs a traceback (the guards log, and swallow, what they catch)."""
    failures: list[LogEvent] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_failure") is not None or event.get("log_level") == LogLevel.critical:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield
    finally:
        globalLogPublisher.removeObserver(observe)
    if failures:
        failure = failures[0].get("log_failure")
        if isinstance(failure, Failure):
            raise FuzzFailure(failure.getTraceback())
        raise FuzzFailure(str(failures[0].get("log_format")))


# -- fakes ---------------------------------------------------------------------------------------
class FakeSnapshots:
    """take() and take_image() answer when the fuzzer says: a picture, gone, or a timeout."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], bool]] = []

    def take(self, name: str, *, endpoint: str = "other") -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.pending.append((d, False))
        return d

    def take_image(
        self,
        name: str,
        spec: ImageSpec,
        max_age_ms: int = 0,
        *,
        fail_fast: bool = False,
        endpoint: str = "other",
    ) -> Deferred[Snapshot]:
        d: Deferred[Snapshot] = Deferred()
        self.pending.append((d, True))
        return d

    def fire(self, how: int) -> None:
        if not self.pending:
            return
        d, image = self.pending.pop(0)
        if how == 0:
            d.callback(Snapshot(EncodedImage(PNG, "image/png", 1, 1), 1, "t") if image else PNG)
        elif how == 1:
            d.errback(StreamNotFound("x"))
        else:
            d.errback(SnapshotTimeout(("timeout", "no_video", "unsupported_codec")[how % 3]))


class FakeWS:
    def __init__(self) -> None:
        self.sent = 0

    def sendTextMessage(self, text: str) -> None:
        json.loads(text)  # every frame the server sends is JSON
        self.sent += 1

    def sendBytesMessage(self, data: bytes) -> None:
        raise AssertionError("the WebSDK API is text only")

    def loseConnection(self, code: int = 1000) -> None:
        pass

    def ping(self, payload: bytes = b"") -> None:
        pass

    def attachProducer(self, producer: object) -> None:
        pass

    def detachProducer(self) -> None:
        pass


class FakePeer:
    def __init__(self, on_connected: Any, on_failed: Any) -> None:
        self.on_connected = on_connected
        self.on_failed = on_failed
        self.answer_d: Deferred[str] = Deferred()

    def answer(self, offer_sdp: str) -> Deferred[str]:
        return self.answer_d

    def close(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


class FakePeers:
    def __init__(self) -> None:
        self.made: list[FakePeer] = []

    def publisher(self, stream: Any, on_connected: Any, on_failed: Any) -> FakePeer:
        self.made.append(FakePeer(on_connected, on_failed))
        return self.made[-1]

    player = publisher

    def event(self, op: int) -> None:
        if not self.made:
            return
        peer = self.made[-1]
        if op == 0 and not peer.answer_d.called:
            peer.answer_d.callback("v=0\r\n")
        elif op == 1 and not peer.answer_d.called:
            from wcs.webrtc.peer import PeerError

            peer.answer_d.errback(PeerError("Unusable SDP offer", "fuzz"))
        elif op == 2:
            peer.on_connected()
        else:
            peer.on_failed("Failed by ICE error")


def split_messages(data: bytes) -> list[bytes]:
    return data.split(b"\n")


# -- targets -------------------------------------------------------------------------------------
@target("websdk_frame")
def websdk_frame(data: bytes) -> None:
    """Lines of `data` are WebSDK text frames; a line starting with 0x01 is an event instead
    (a snapshot or peer outcome, time passing, a stream ending, the client pausing reads)."""
    clock = Clock()
    hub = StreamHub()
    snapshots = FakeSnapshots()
    peers = FakePeers()
    factory = SignallingFactory(hub, snapshots, clock, peers=peers)
    session = WebSDKSession(factory, "127.0.0.1:5000", None)
    with no_logged_failures():
        session.negotiationStarted(cast(Any, FakeWS()))
        session.negotiationFinished()
        for line in split_messages(data):
            if line[:1] != b"\x01":
                session.textMessageReceived(line.decode("utf-8", "replace"))
                continue
            op, arg = (line[1] if len(line) > 1 else 0), line[2:]
            kind = op % 8
            if kind == 0:
                snapshots.fire(op // 8 % 3)
            elif kind == 1:
                peers.event(op // 8 % 4)
            elif kind == 2:
                clock.advance(PING_INTERVAL)
            elif kind == 3:
                for stream in hub.all()[:1]:
                    stream.terminate()
            elif kind == 4:
                with contextlib.suppress(StreamError):
                    publish_now(hub, arg.decode("utf-8", "replace") or "cam", "Flash")
            elif kind == 5 and session.outbox is not None:
                session.outbox.pauseProducing()
            elif kind == 6 and session.outbox is not None:
                session.outbox.resumeProducing()
            else:
                session.bytesMessageReceived(arg)
        session.connectionLost(Failure(ConnectionDone()))
        assert not session.media, "a closed session still holds streams"
        assert session._snapshots >= 0


def _depth(obj: object) -> int:
    if isinstance(obj, list):
        return 1 + max(map(_depth, obj), default=0)
    if isinstance(obj, dict):
        return 1 + max(map(_depth, obj.values()), default=0)
    return 0


@target("rest_body")
def rest_body(data: bytes) -> None:
    """The REST body reader (wcs.web.jsonin, shared with the WebSDK parser) and the checks made
    on what it returns; the nesting scan must agree with the parser on every valid text."""
    try:
        body = jsonin.loads(data)
    except jsonin.JsonInputError:
        return
    text = data.decode(json.detect_encoding(data), "surrogatepass")
    depth = _depth(body)
    assert depth <= jsonin.MAX_JSON_DEPTH
    assert jsonin.nesting_depth(text) == depth, (jsonin.nesting_depth(text), depth)
    if isinstance(body, dict):
        for key in ("streamName", "uri", "name"):
            with contextlib.suppress(RestError):
                _required_str(body, key)


def _segments(data: bytes) -> Iterator[bytes]:
    """Cut `data` into segments whose sizes come from its own first byte."""
    step = (data[0] % 7 + 1) * 7 if data else 1
    for start in range(0, len(data), step):
        yield data[start : start + step]


def _rest_site(data: bytes) -> tuple[Any, Clock, FakeSnapshots]:
    flags = data[0] if data else 0
    settings = Settings(
        disable_rest_auth=not flags & 1,
        rest_auth_password="pw" if flags & 1 else None,
        ws_allowed_origins=("*",) if flags & 2 else (),
    )
    clock = Clock()
    hub = StreamHub()
    publish_now(hub, "cam1", "Flash", media_session_id="msid-1")
    snapshots = FakeSnapshots()
    pulls = PullManager(hub, clock, connector=FakeConnector())
    site = build_site(settings, hub, cast(SnapshotService, snapshots), clock, pulls=pulls)
    return site, clock, snapshots


def _check_bounded(channel: Any, segment: bytes) -> None:
    buffered = len(getattr(channel, "_buffer", b""))
    assert buffered <= channel.MAX_LENGTH + len(segment) + 2, buffered
    pipelined = sum(map(len, channel._dataBuffer))
    assert pipelined <= channel._optimisticEagerReadSize + len(segment), pipelined
    for request in channel.requests:
        if request.content is not None:
            assert len(request.content.getvalue()) <= MAX_BODY


@target("http_request")
def http_request(data: bytes) -> None:
    """Raw bytes into the REST site's HTTP channel: request lines, headers, Content-Length and
    chunked bodies, pipelining; time passes and snapshots complete along the way."""
    site, clock, snapshots = _rest_site(data)
    channel = site.buildProtocol(ADDRESS)
    transport = StringTransport(peerAddress=ADDRESS)
    with no_logged_failures():
        channel.makeConnection(transport)
        for segment in _segments(data[1:]):
            if transport.disconnecting:
                break
            channel.dataReceived(segment)
            _check_bounded(channel, segment)
            snapshots.fire(len(segment) % 3)
            clock.advance(0.01)
        clock.advance(1.0)  # delayed 401s
        while snapshots.pending:
            snapshots.fire(0)
        clock.advance(60.0)
        channel.connectionLost(Failure(ConnectionDone()))


@target("ws_upgrade")
def ws_upgrade(data: bytes) -> None:
    """Raw bytes into the WebSocket listener: the HTTP upgrade, then (masked) frames."""
    clock = Clock()
    hub = StreamHub()
    snapshots = FakeSnapshots()
    factory = SignallingFactory(hub, snapshots, clock, peers=FakePeers())
    flags = data[0] if data else 0
    settings = Settings(ws_allowed_origins=("*",) if flags & 1 else ())
    proto = websocket_site(factory, settings).buildProtocol(ADDRESS)
    assert proto is not None
    transport = StringTransport(peerAddress=ADDRESS)
    # A client sends frames only once the upgrade is answered (RFC 6455 4.1): the request up
    # to its blank line goes first, the rest (frames, or a body) after.
    end = data.find(b"\r\n\r\n", 1)
    head, rest = (data[1 : end + 4], data[end + 4 :]) if end >= 0 else (data[1:], b"")
    with no_logged_failures():
        proto.makeConnection(transport)
        for part in (head, rest):
            for segment in _segments(part):
                if transport.disconnecting:
                    break
                proto.dataReceived(segment)
                snapshots.fire(len(segment) % 3)
                clock.advance(0.01)
        clock.advance(60.0)
        proto.connectionLost(Failure(ConnectionDone()))
        assert not factory.sessions, "a session outlived its connection"


@target("origin")
def origin(data: bytes) -> None:
    """The Origin and Host header parsers and the origin rule: never raise; an origin that
    parses prints as one that parses back to itself."""
    origin_value, _, host_value = data.partition(b"\n")
    parsed = parse_origin(origin_value)
    if parsed is not None:
        assert parse_origin(str(parsed)) == parsed, (parsed, str(parsed))
        assert 0 < parsed.port <= 65535
    host = host_of(host_value)
    assert host is None or host == host.lower()
    for policy in (
        OriginPolicy(()),
        OriginPolicy((), "https://app.example"),
        OriginPolicy(("*",)),
        OriginPolicy(("https://app.example:8443", "http://[::1]:8081")),
    ):
        for value in (origin_value, None):
            refusal = policy.refusal(value, host_value)
            assert refusal is None or isinstance(refusal, str)


@target("image_query")
def image_query(data: bytes) -> None:
    """An image URL's query string and Accept header (`data` split at the first newline), as the
    GET endpoints parse them: only BadImageParam may come out, and a size that passes is within
    the picture's."""
    query_text, _, accept = data.partition(b"\n")
    pairs = parse_qs(query_text.decode("utf-8", "replace"), keep_blank_values=True)
    query: dict[str, str | None] = {key: values[0] for key, values in pairs.items()}
    try:
        spec = ImageSpec.parse(query, accept.decode("latin-1"))
        max_age_of(query.get("maxAge"))
    except BadImageParam as err:
        assert err.param in ("format", "width", "height", "quality", "maxAge"), err.param
        return
    src = (1 + data[0] * 7 if data else 1280, 1 + data[-1] * 5 if data else 720)
    try:
        width, height = spec.size_for(*src)
    except BadImageParam as err:
        assert err.param in ("width", "height"), err.param
        return
    assert 1 <= width <= src[0] and 1 <= height <= src[1], (width, height, src)
    assert spec.width in (None, width) and spec.height in (None, height), (spec, width, height)
