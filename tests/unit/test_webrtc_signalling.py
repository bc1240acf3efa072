"""WebSDKSession without sockets: a fake WebSocket transport, fake peers, a Clock; and the full
twisted.web.websocket stack over a StringTransport for the upgrade, framing and byte limits."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from tests.unit.fakes import (
    BIG_PNG,
    FakeConnector,
    ManualPool,
    PendingDirectory,
    PendingHooks,
    publish_now,
    result_now,
)
from tests.unit.rest_client import SlowReader, parse_response
from wcs.access import FAILURE_DELAY, INFO_BAD_PASSWORD, Access
from wcs.config import Settings
from wcs.directory import StreamNotFound
from wcs.media.units import MediaUnit
from wcs.rtsp.pull import PullManager
from wcs.snapshot.service import SnapshotService, SnapshotTimeout
from wcs.streams import PROVIDER_WEBRTC, Stream, StreamHub
from wcs.webrtc.peer import PeerError
from wcs.webrtc.signalling import (
    KEEPALIVE_TIMEOUT,
    MAX_MESSAGE_BYTES,
    MAX_PENDING_BYTES,
    MAX_SNAPSHOTS_IN_FLIGHT,
    MAX_STREAMS_PER_SESSION,
    PING_INTERVAL,
    SERVER_VERSION,
    SHUTDOWN_TIMEOUT,
    ByteBudget,
    SignallingError,
    SignallingFactory,
    WebSDKSession,
    encode_frame,
    parse_frame,
    websocket_site,
)

OFFER = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"


# -- fakes ----------------------------------------------------------------------------------------
class FakeWS:
    """The WebSocketTransport a session writes to."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, list[Any]]] = []
        self.closed_with: int | None = None

    def sendTextMessage(self, text: str) -> None:
        frame = json.loads(text)
        assert set(frame) == {"message", "data"} and isinstance(frame["data"], list)
        self.frames.append((frame["message"], frame["data"]))

    def sendBytesMessage(self, data: bytes) -> None:
        raise AssertionError("the WebSDK API is text only")

    def loseConnection(self, code: int = 1000) -> None:
        self.closed_with = code

    def ping(self, payload: bytes = b"") -> None:
        pass

    def attachProducer(self, producer: object) -> None:
        pass

    def detachProducer(self) -> None:
        pass

    def take(self) -> list[tuple[str, list[Any]]]:
        frames, self.frames = self.frames, []
        return frames

    def named(self, name: str) -> list[Any]:
        return [data[0] for message, data in self.frames if message == name]


class FakePeer:
    def __init__(
        self, stream: Stream, on_connected: Callable[[], None], on_failed: Callable[[str], None]
    ) -> None:
        self.stream = stream
        self.on_connected = on_connected
        self.on_failed = on_failed
        self.offer: str | None = None
        self.answer_d: Deferred[str] = Deferred()
        self.closed = 0

    def answer(self, offer_sdp: str) -> Deferred[str]:
        self.offer = offer_sdp
        return self.answer_d

    def close(self) -> Deferred[None]:
        self.closed += 1
        return succeed(None)


class FakePeers:
    def __init__(self) -> None:
        self.publishers: list[FakePeer] = []
        self.players: list[FakePeer] = []

    def publisher(
        self, stream: Stream, on_connected: Callable[[], None], on_failed: Callable[[str], None]
    ) -> FakePeer:
        peer = FakePeer(stream, on_connected, on_failed)
        self.publishers.append(peer)
        return peer

    def player(
        self, stream: Stream, on_connected: Callable[[], None], on_failed: Callable[[str], None]
    ) -> FakePeer:
        peer = FakePeer(stream, on_connected, on_failed)
        self.players.append(peer)
        return peer


class FakeSnapshots:
    def __init__(self) -> None:
        self.requests: list[tuple[str, Deferred[bytes]]] = []

    def take(self, name: str, *, endpoint: str = "other") -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.requests.append((name, d))
        return d


class Env:
    def __init__(self) -> None:
        self.clock = Clock()
        self.hub = StreamHub()
        self.peers = FakePeers()
        self.snapshots = FakeSnapshots()
        self.pulls: list[str] = []
        self.factory = SignallingFactory(self.hub, self.snapshots, self.clock, peers=self.peers)

    def session(self, *, connect: bool = True) -> tuple[WebSDKSession, FakeWS]:
        session = WebSDKSession(self.factory, "127.0.0.1:5000", None)
        ws = FakeWS()
        session.negotiationStarted(ws)
        session.negotiationFinished()
        if connect:
            send(session, "connection", {"appKey": "defaultApp"})
            ws.take()
        return session, ws


def send(session: WebSDKSession, message: str, obj: object = None) -> None:
    session.textMessageReceived(json.dumps({"message": message, "data": [obj]}))


def publish(env: Env, session: WebSDKSession, name: str = "cam", msid: str = "m1") -> FakePeer:
    send(session, "publishStream", {"mediaSessionId": msid, "name": name, "sdp": OFFER})
    return env.peers.publishers[-1]


@pytest.fixture
def env() -> Env:
    return Env()


# -- frames ---------------------------------------------------------------------------------------
def test_parse_frame() -> None:
    assert parse_frame('{"message":"pong","data":[null]}') == ("pong", None)
    assert parse_frame('{"message":"x","data":[{"a":1},2]}') == ("x", {"a": 1})
    assert parse_frame('{"message":"x"}') == ("x", None)
    for bad in (
        "{nope",
        "[1]",
        '{"data":[]}',
        '{"message":"","data":[]}',
        '{"message":7}',
        '{"message":"x","data":{}}',
        "[" * 100_000 + "]" * 100_000,
        '{"message":"x","data":["' + "a" * MAX_MESSAGE_BYTES + '"]}',
    ):
        with pytest.raises(SignallingError):
            parse_frame(bad)


def test_encode_frame_always_has_a_data_array() -> None:
    assert json.loads(encode_frame("ping", None)) == {"message": "ping", "data": [None]}
    assert json.loads(encode_frame("setRemoteSDP", "m", "sdp"))["data"] == ["m", "sdp"]


# -- connection, keepalive, errors ----------------------------------------------------------------
def test_connection_answers_user_data_and_version(env: Env) -> None:
    session, ws = env.session(connect=False)
    obj = {"appKey": "defaultApp", "mediaProviders": ["WebRTC"], "clientVersion": "2.0"}
    send(session, "connection", obj)
    (m1, (user,)), (m2, version) = ws.take()
    assert m1 == "getUserData"
    assert user["status"] == "ESTABLISHED" and user["authToken"] == session.auth_token
    assert {k: user[k] for k in obj} == obj  # an echo of what the client sent
    assert (m2, version) == ("getVersion", [SERVER_VERSION])
    send(session, "connection", obj)
    assert ws.named("fail")[0]["apiMethod"] == "connection"


def test_messages_before_connection_fail(env: Env) -> None:
    session, ws = env.session(connect=False)
    send(session, "publishStream", {"mediaSessionId": "m", "name": "n", "sdp": OFFER})
    assert ws.take() == [("fail", [{"apiMethod": "publishStream", "info": "Session not ready"}])]
    assert env.peers.publishers == [] and len(env.hub) == 0


def test_unknown_and_bad_messages_answer_fail_and_keep_the_socket(env: Env) -> None:
    session, ws = env.session()
    send(session, "fooBar", {})
    send(session, "publishStream", {"mediaSessionId": "m", "name": "n"})  # no sdp
    send(session, "publishStream", "not an object")
    fails = ws.named("fail")
    assert fails[0] == {"apiMethod": "fooBar", "info": "Unknown message fooBar"}
    assert fails[1]["info"] == "Bad request: missing sdp"
    assert fails[2]["info"] == "Bad request: data is not an object"
    assert ws.closed_with is None
    # Harmless client messages get no answer at all.
    for name in ("sendStreamEvent", "pushLogs", "pong", "changeMediaState", "sendBitrate"):
        send(session, name, {"x": 1})
    assert len(ws.frames) == 3


def test_client_ping_and_send_data(env: Env) -> None:
    session, ws = env.session()
    send(session, "ping", None)
    send(session, "sendData", {"operationId": "op1", "payload": {"a": 1}})
    assert ws.take() == [
        ("pong", [None]),
        ("DataStatusEvent", [{"operationId": "op1", "status": "ACCEPTED", "info": ""}]),
    ]


@pytest.mark.parametrize("text", ["{oops", '["message"]', '{"message":"x","data":5}'])
def test_malformed_frame_closes_the_socket_with_a_logged_reason(
    env: Env, text: str, log_events: list[LogEvent]
) -> None:
    session, ws = env.session()
    other, other_ws = env.session()
    session.textMessageReceived(text)
    assert ws.closed_with == 1008
    assert any("closing session" in formatEvent(e) for e in log_events)
    send(session, "ping")  # ignored once closing
    assert ws.frames == []
    send(other, "ping")
    assert other_ws.take() == [("pong", [None])] and other_ws.closed_with is None


def test_binary_frame_closes(env: Env) -> None:
    session, ws = env.session()
    session.bytesMessageReceived(b"\x00")
    assert ws.closed_with == 1008


def test_keepalive_pings_and_closes_a_silent_session(env: Env) -> None:
    session, ws = env.session()
    env.clock.advance(PING_INTERVAL)
    assert ws.take() == [("ping", [None])]
    rounds = int(KEEPALIVE_TIMEOUT // PING_INTERVAL) + 2
    for _ in range(rounds):  # the SDK answers every ping: the session stays
        send(session, "pong", None)
        env.clock.advance(PING_INTERVAL)
    assert ws.closed_with is None
    assert [m for m, _ in ws.take()] == ["ping"] * rounds
    # Silence: still open up to the timeout, closed within one more ping interval.
    env.clock.advance(KEEPALIVE_TIMEOUT - PING_INTERVAL)
    assert ws.closed_with is None
    env.clock.advance(2 * PING_INTERVAL)
    assert ws.closed_with == 1008
    session.connectionLost(Failure(ConnectionDone()))
    assert not env.clock.getDelayedCalls()
    assert session not in env.factory.sessions


def test_websocket_pong_counts_as_alive(env: Env) -> None:
    session, ws = env.session()
    for _ in range(10):
        env.clock.advance(PING_INTERVAL)
        session.pongReceived(b"")
    assert ws.closed_with is None


# -- publish --------------------------------------------------------------------------------------
def test_publish_answer_then_publishing_then_unpublish(env: Env) -> None:
    session, ws = env.session()
    peer = publish(env, session)
    stream = env.hub.get("cam")
    assert stream is not None and stream.provider == PROVIDER_WEBRTC
    assert stream.media_session_id == "m1" and peer.stream is stream and peer.offer == OFFER
    assert ws.take() == []  # nothing before the answer
    peer.answer_d.callback("v=0 answer")
    assert ws.take() == [("setRemoteSDP", ["m1", "v=0 answer"])]
    peer.on_connected()
    (status,) = ws.named("notifyStreamStatusEvent")
    assert status["status"] == "PUBLISHING"
    assert (status["mediaSessionId"], status["name"], status["published"]) == ("m1", "cam", True)
    assert status["mediaProvider"] == "WebRTC"
    ws.take()
    send(session, "unPublishStream", {"mediaSessionId": "m1", "name": "cam"})
    (status,) = ws.named("notifyStreamStatusEvent")
    assert (status["status"], status["info"]) == ("UNPUBLISHED", "Stopped by publisher stop")
    assert env.hub.get("cam") is None and stream.end_reason == "Stopped by publisher stop"
    assert peer.closed == 1
    peer.on_connected()  # late callbacks from a closed peer are ignored
    peer.on_failed("Failed by ICE error")
    assert len(ws.frames) == 1


def test_publish_name_in_use_and_invalid_name(env: Env) -> None:
    other = publish_now(env.hub, "cam", "Flash")
    session, ws = env.session()
    send(session, "publishStream", {"mediaSessionId": "m1", "name": "cam", "sdp": OFFER})
    send(session, "publishStream", {"mediaSessionId": "m2", "name": "a/b", "sdp": OFFER})
    infos = [
        (s["mediaSessionId"], s["status"], s["info"]) for s in ws.named("notifyStreamStatusEvent")
    ]
    assert infos == [
        ("m1", "FAILED", "Stream name is already in use"),
        ("m2", "FAILED", "Invalid stream name"),
    ]
    assert env.peers.publishers == [] and env.hub.get("cam") is other
    assert session.media == {}


def test_a_publish_goes_on_once_the_directory_gives_the_name() -> None:
    env = Env()
    directory = PendingDirectory()
    env.hub.directory = directory
    session, ws = env.session()
    send(session, "publishStream", {"mediaSessionId": "m1", "name": "cam", "sdp": OFFER})
    send(session, "publishStream", {"mediaSessionId": "m2", "name": "door", "sdp": OFFER})
    send(session, "publishStream", {"mediaSessionId": "m3", "name": "gone", "sdp": OFFER})
    assert env.peers.publishers == [] and ws.take() == []  # waiting for the directory
    directory.grant("cam")
    (peer,) = env.peers.publishers
    assert peer.stream is env.hub.get("cam")
    directory.refuse("door")  # another server publishes it
    (status,) = ws.named("notifyStreamStatusEvent")
    assert (status["mediaSessionId"], status["status"], status["info"]) == (
        "m2",
        "FAILED",
        "Stream name is already in use",
    )
    send(session, "unPublishStream", {"mediaSessionId": "m3", "name": "gone"})
    directory.grant("gone")  # the answer for a publish stopped meanwhile
    assert env.hub.get("gone") is None and len(env.peers.publishers) == 1
    assert result_now(directory.lookup("gone")) is None  # and the name is given back


def test_publish_answer_failure_ends_the_stream(env: Env) -> None:
    session, ws = env.session()
    peer = publish(env, session)
    peer.answer_d.errback(PeerError("No common codecs", "browser offers AV1 only"))
    (status,) = ws.named("notifyStreamStatusEvent")
    assert (status["status"], status["info"]) == ("FAILED", "No common codecs")
    assert env.hub.get("cam") is None and peer.closed == 1


def test_unexpected_answer_error_is_failed_by_error(env: Env, log_events: list[LogEvent]) -> None:
    session, ws = env.session()
    peer = publish(env, session)
    peer.answer_d.errback(RuntimeError("boom"))
    (status,) = ws.named("notifyStreamStatusEvent")
    assert (status["status"], status["info"]) == ("FAILED", "Failed by error")
    assert any(e.get("log_failure") is not None for e in log_events)


def test_ice_failure_after_answer(env: Env) -> None:
    session, ws = env.session()
    peer = publish(env, session)
    peer.answer_d.callback("answer")
    peer.on_failed("Failed by ICE timeout")
    (status,) = ws.named("notifyStreamStatusEvent")
    assert (status["status"], status["info"]) == ("FAILED", "Failed by ICE timeout")
    stream_gone = env.hub.get("cam") is None
    assert stream_gone and peer.closed == 1


def test_disconnect_ends_the_sessions_streams(env: Env) -> None:
    session, _ = env.session()
    peer = publish(env, session)
    stream = env.hub.get("cam")
    assert stream is not None
    session.connectionLost(Failure(ConnectionDone()))
    assert stream.ended and stream.end_reason == "Stopped by session disconnect"
    assert env.hub.get("cam") is None and peer.closed == 1


def test_rest_terminate_tells_the_publisher(env: Env) -> None:
    session, ws = env.session()
    peer = publish(env, session)
    peer.answer_d.callback("answer")
    stream = env.hub.get("cam")
    assert stream is not None
    stream.terminate()
    status = ws.named("notifyStreamStatusEvent")[-1]
    assert status["status"] == "UNPUBLISHED" and status["info"] == "Stopped by server"
    assert peer.closed == 1 and session.media == {}


def test_stream_and_msid_limits(env: Env) -> None:
    session, ws = env.session()
    publish(env, session, "a", "m1")
    send(session, "publishStream", {"mediaSessionId": "m1", "name": "b", "sdp": OFFER})
    assert ws.named("fail")[-1]["info"] == "MediaSessionId is already in use"
    for i in range(2, MAX_STREAMS_PER_SESSION + 1):
        publish(env, session, f"s{i}", f"m{i}")
    assert len(env.hub) == MAX_STREAMS_PER_SESSION
    send(session, "publishStream", {"mediaSessionId": "extra", "name": "x", "sdp": OFFER})
    status = ws.named("notifyStreamStatusEvent")[-1]
    assert (status["mediaSessionId"], status["status"]) == ("extra", "FAILED")
    assert status["info"] == "Too many streams in one session"
    assert env.hub.get("x") is None


# -- play -----------------------------------------------------------------------------------------
def test_play_then_publisher_leaves(env: Env) -> None:
    source = publish_now(env.hub, "cam", "Flash")
    session, ws = env.session()
    send(session, "playStream", {"mediaSessionId": "p1", "name": "cam", "sdp": OFFER})
    (peer,) = env.peers.players
    assert peer.stream is source
    peer.answer_d.callback("answer")
    peer.on_connected()
    assert [m for m, _ in ws.frames] == ["setRemoteSDP", "notifyStreamStatusEvent"]
    playing = ws.named("notifyStreamStatusEvent")[0]
    assert (playing["status"], playing["published"], playing["name"]) == ("PLAYING", False, "cam")
    assert playing["mediaSessionId"] == "p1"  # the player's id, not the source's
    ws.take()
    source.end("Stopped by publisher stop")
    (status,) = ws.named("notifyStreamStatusEvent")
    assert (status["status"], status["info"]) == ("STOPPED", "Stopped by publisher stop")
    assert peer.closed == 1


def test_stop_stream(env: Env) -> None:
    source = publish_now(env.hub, "cam", "Flash")
    session, ws = env.session()
    send(session, "playStream", {"mediaSessionId": "p1", "name": "cam", "sdp": OFFER})
    send(session, "stopStream", {"mediaSessionId": "p1", "name": "cam"})
    (status,) = ws.named("notifyStreamStatusEvent")
    assert (status["status"], status["info"]) == ("STOPPED", "Stopped by user")
    assert env.peers.players[0].closed == 1 and not source.ended
    send(session, "stopStream", {"mediaSessionId": "p1", "name": "cam"})
    assert ws.named("fail")[-1]["apiMethod"] == "stopStream"


def test_players_that_leave_are_not_kept_by_a_long_lived_stream(env: Env) -> None:
    source = publish_now(env.hub, "cam", "Flash")
    before = len(source._on_end)
    session, _ = env.session()
    for i in range(20):
        send(session, "playStream", {"mediaSessionId": f"p{i}", "name": "cam", "sdp": OFFER})
        send(session, "stopStream", {"mediaSessionId": f"p{i}", "name": "cam"})
    other, _ = env.session()
    send(other, "playStream", {"mediaSessionId": "q", "name": "cam", "sdp": OFFER})
    other.connectionLost(Failure(ConnectionDone()))
    assert len(source._on_end) == before
    assert not source.ended


def test_play_missing_stream_and_rtsp(env: Env) -> None:
    session, ws = env.session()
    send(session, "playStream", {"mediaSessionId": "p1", "name": "nope", "sdp": OFFER})
    send(session, "playStream", {"mediaSessionId": "p2", "name": "rtsp://cam/1", "sdp": OFFER})
    infos = [
        (s["mediaSessionId"], s["status"], s["info"]) for s in ws.named("notifyStreamStatusEvent")
    ]
    assert infos == [
        ("p1", "FAILED", "Stream not found"),
        ("p2", "FAILED", "RTSP pull is not available yet"),
    ]
    assert env.peers.players == []


def test_rtsp_pull_is_injectable(env: Env) -> None:
    pulled = publish_now(env.hub, "door", "RTSP")
    asked: list[str] = []

    def pull(uri: str) -> Deferred[Stream]:
        asked.append(uri)
        return succeed(pulled)

    env.factory.rtsp_pull = pull
    session, ws = env.session()
    send(session, "playStream", {"mediaSessionId": "p1", "name": "rtsp://cam/1", "sdp": OFFER})
    assert asked == ["rtsp://cam/1"] and env.peers.players[0].stream is pulled
    env.factory.rtsp_pull = lambda uri: fail(StreamNotFound(uri))
    send(session, "playStream", {"mediaSessionId": "p2", "name": "rtsp://x/2", "sdp": OFFER})
    assert ws.named("notifyStreamStatusEvent")[-1]["info"] == "Stream not found"


# -- snapshot, availableStream --------------------------------------------------------------------
def test_snapshot_completed(env: Env) -> None:
    publish_now(env.hub, "cam", "Flash")
    session, ws = env.session()
    send(session, "snapshot", {"name": "cam", "mediaSessionId": "s1"})
    ((name, d),) = env.snapshots.requests
    assert name == "cam"
    d.callback(b"\x89PNG-bytes")
    b64 = base64.b64encode(b"\x89PNG-bytes").decode()
    assert ws.take() == [
        (
            "notifyStreamEvent",
            [{"mediaSessionId": "s1", "name": "cam", "type": "snapshotCompleted",
              "payload": {"snapshot": b64}}],
        ),
        (
            "notifyStreamStatusEvent",
            [{"mediaSessionId": "s1", "name": "cam", "status": "SNAPSHOT_COMPLETE", "info": b64}],
        ),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "info"),
    [
        (StreamNotFound("cam"), "Stream not found"),
        (SnapshotTimeout(), "Snapshot response timeout"),
        (RuntimeError("decoder exploded"), "Failed by error"),
    ],
)
def test_snapshot_failed(env: Env, error: Exception, info: str) -> None:
    session, ws = env.session()
    send(session, "snapshot", {"name": "cam", "mediaSessionId": "s1"})
    env.snapshots.requests[0][1].errback(error)
    assert ws.take() == [
        (
            "notifyStreamEvent",
            [{"mediaSessionId": "s1", "name": "cam", "type": "snapshotFailed",
              "payload": {"info": info}}],
        ),
        (
            "notifyStreamStatusEvent",
            [{"mediaSessionId": "s1", "name": "cam", "status": "FAILED", "info": info}],
        ),
    ]  # fmt: skip


def test_snapshot_failure_of_own_publish_does_not_fail_the_publish(env: Env) -> None:
    session, ws = env.session()
    publish(env, session, "cam", "m1").answer_d.callback("answer")
    ws.take()
    send(session, "snapshot", {"name": "cam", "mediaSessionId": "m1"})
    env.snapshots.requests[0][1].errback(SnapshotTimeout())
    assert [m for m, _ in ws.frames] == ["notifyStreamEvent"]
    assert "m1" in session.media


def test_snapshot_asks_for_a_keyframe_when_none_is_cached(env: Env) -> None:
    # The asking is the snapshot service's (shared with REST): use the real one here.
    env.factory.snapshots = SnapshotService(env.hub, ManualPool(), env.clock)
    stream = publish_now(env.hub, "cam", "WebRTC")
    asked: list[int] = []
    stream.keyframe_requester = lambda: asked.append(1)
    session, _ = env.session()
    send(session, "snapshot", {"name": "cam", "mediaSessionId": "s1"})
    assert asked == [1]
    stream.push(MediaUnit("video", "VP8", 0, 0, True, b"\x00" * 10))
    send(session, "snapshot", {"name": "cam", "mediaSessionId": "s2"})
    assert asked == [1]  # a GOP is cached: decode that


def test_snapshots_in_flight_are_bounded(env: Env) -> None:
    session, ws = env.session()
    for i in range(MAX_SNAPSHOTS_IN_FLIGHT + 1):
        send(session, "snapshot", {"name": "cam", "mediaSessionId": f"s{i}"})
    assert len(env.snapshots.requests) == MAX_SNAPSHOTS_IN_FLIGHT
    assert ws.named("notifyStreamEvent")[0]["payload"]["info"] == "Too many snapshot requests"
    env.snapshots.requests[0][1].callback(b"png")
    send(session, "snapshot", {"name": "cam", "mediaSessionId": "again"})
    assert len(env.snapshots.requests) == MAX_SNAPSHOTS_IN_FLIGHT + 1


def test_available_stream(env: Env) -> None:
    publish_now(env.hub, "cam", "Flash")
    session, ws = env.session()
    send(session, "availableStream", {"mediaSessionId": "a1", "name": "cam"})
    send(session, "availableStream", {"mediaSessionId": "a2", "name": "nope"})
    yes, no = ws.named("availableStream")
    assert (yes["id"], yes["status"]) == ("a1", "true")
    assert (no["id"], no["status"], no["info"]) == ("a2", "false", "Stream not found")


def test_close_all_ends_everything(env: Env) -> None:
    session, ws = env.session()
    peer = publish(env, session)
    done = env.factory.close_all()
    assert done.called and peer.closed == 1
    assert ws.closed_with == 1001 and env.hub.get("cam") is None


def test_close_all_does_not_wait_forever_for_a_peer(env: Env) -> None:
    session, _ = env.session()
    publish(env, session)
    stuck: Deferred[None] = Deferred()
    env.factory.track_close(stuck)
    done = env.factory.close_all()
    assert not done.called
    env.clock.advance(SHUTDOWN_TIMEOUT)
    assert done.called


# -- the real twisted.web.websocket stack over a StringTransport ----------------------------------
class Wire:
    """Bytes to and from websocket_site(), as a wsproto client would exchange them."""

    def __init__(
        self,
        env: Env,
        path: str = "/any/path/here",
        *,
        settings: Settings | None = None,
        headers: list[tuple[str, str]] | None = None,
        transport: StringTransport | None = None,
        accept: bool = True,
    ) -> None:
        site = websocket_site(env.factory, settings or Settings())
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(proto, ByteBudget)
        self.proto: ByteBudget = proto
        self.transport: StringTransport = transport or StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
        )
        self.proto.makeConnection(self.transport)
        self.ws: WSConnection = WSConnection(ConnectionType.CLIENT)
        request = Request(host="localhost", target=path, extra_headers=headers or [])
        self.proto.dataReceived(self.ws.send(request))
        self.handshake: bytes = self.transport.value()
        self.ws.receive_data(self.handshake)
        self.transport.clear()
        self.accepted = any(isinstance(e, AcceptConnection) for e in self.ws.events())
        assert self.accepted == accept, self.handshake

    def send(self, message: str, obj: object) -> None:
        text = json.dumps({"message": message, "data": [obj]})
        self.proto.dataReceived(self.ws.send(TextMessage(data=text)))

    def received(self) -> list[tuple[str, list[Any]]]:
        self.ws.receive_data(self.transport.value())
        self.transport.clear()
        out = []
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                frame = json.loads(event.data)
                out.append((frame["message"], frame["data"]))
        return out


def test_websocket_upgrade_on_any_path_and_messages(env: Env) -> None:
    wire = Wire(env, "/some/deep/path?x=1")
    wire.send("connection", {"appKey": "k"})
    assert [m for m, _ in wire.received()] == ["getUserData", "getVersion"]
    assert len(env.factory.sessions) == 1
    wire.proto.connectionLost(Failure(ConnectionDone()))
    assert len(env.factory.sessions) == 0


def test_oversized_message_aborts_before_it_is_buffered(
    env: Env, log_events: list[LogEvent]
) -> None:
    wire = Wire(env)
    text = json.dumps({"message": "connection", "data": ["a" * (MAX_PENDING_BYTES + 10)]})
    frame = wire.ws.send(TextMessage(data=text))
    for i in range(0, len(frame), 65536):
        if wire.transport.disconnecting:
            break
        wire.proto.dataReceived(frame[i : i + 65536])
    assert wire.transport.disconnecting
    assert any("without a complete message" in formatEvent(e) for e in log_events)
    assert isinstance(wire.proto, ByteBudget) and wire.proto.pending > MAX_PENDING_BYTES


def test_many_small_messages_never_hit_the_budget(env: Env) -> None:
    wire = Wire(env)
    wire.send("connection", {"appKey": "k"})
    count = 2 * MAX_PENDING_BYTES // 1000  # twice the budget in total, one message at a time
    for _ in range(count):
        wire.send("availableStream", {"mediaSessionId": "a", "name": "n" * 1000})
    assert not wire.transport.disconnecting
    assert len([m for m, _ in wire.received() if m == "availableStream"]) == count


# -- hardening (#6) -------------------------------------------------------------------------------
HEADER_DEADLINE = 10.0  # the deadline for a request's headers
DRAIN_DEADLINE = 30.0


def rejected(wire: Wire) -> tuple[int, dict[str, Any]]:
    response = parse_response(wire.handshake)
    assert response is not None, wire.handshake
    return response.status, response.json()


@pytest.mark.parametrize(
    ("origin", "settings", "accept"),
    [
        (None, Settings(), True),  # not a web page: aiortc, tools
        ("http://localhost:8081", Settings(), True),  # the demo pages, served on http.port
        ("https://LOCALHOST", Settings(), True),  # same host, any scheme and port
        ("https://evil.example", Settings(), False),
        ("null", Settings(), False),
        ("https://evil.example", Settings(ws_allowed_origins=("*",)), True),
        ("https://app.example", Settings(rest_access_control_allow_origin="https://app.example"),
         True),
        ("https://app.example:8443", Settings(ws_allowed_origins=("https://app.example:8443",)),
         True),
        ("http://localhost:8081", Settings(ws_allowed_origins=("https://app.example:8443",)),
         False),
    ],
)  # fmt: skip
def test_websocket_upgrade_checks_the_origin(
    env: Env, origin: str | None, settings: Settings, accept: bool, log_events: list[LogEvent]
) -> None:
    headers = [("Origin", origin)] if origin else []
    wire = Wire(env, settings=settings, headers=headers, accept=accept)
    if accept:
        wire.send("connection", {"appKey": "k"})
        assert [m for m, _ in wire.received()] == ["getUserData", "getVersion"]
        return
    status, body = rejected(wire)
    assert status == 403 and body["status"] == 403
    assert f"Origin {origin} is not an allowed origin" in body["message"]
    assert env.factory.sessions == set()
    assert any("refused the WebSocket upgrade" in formatEvent(e) for e in log_events)


def test_upgrade_request_trickling_in_is_cut_off_at_the_deadline(env: Env) -> None:
    site = websocket_site(env.factory, Settings())
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert proto is not None
    transport = StringTransport()
    proto.makeConnection(transport)
    request = WSConnection(ConnectionType.CLIENT).send(Request(host="localhost", target="/"))
    seconds = 0
    for byte in request:
        if transport.disconnecting:
            break
        proto.dataReceived(bytes([byte]))
        env.clock.advance(1)
        seconds += 1
    assert transport.disconnected and seconds == HEADER_DEADLINE
    assert env.factory.sessions == set()


@pytest.mark.parametrize(
    "extra",
    [
        b"Content-Length: 10\r\n\r\n0123456789",
        b"Content-Length: " + b"1" * 5000 + b"\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
)
def test_upgrade_request_with_a_body_is_refused(env: Env, extra: bytes) -> None:
    site = websocket_site(env.factory, Settings())
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert proto is not None
    transport = StringTransport()
    proto.makeConnection(transport)
    head = WSConnection(ConnectionType.CLIENT).send(Request(host="localhost", target="/"))
    proto.dataReceived(head[:-2] + extra)  # the handshake's headers, then a body
    response = parse_response(transport.value())
    assert response is not None and response.status == 413
    assert transport.disconnecting and env.factory.sessions == set()


def test_an_unexpected_error_handling_a_message_drops_only_that_session(
    env: Env, monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    def broken(self: WebSDKSession, obj: Any) -> None:
        raise KeyError("a bug some input reaches")

    monkeypatch.setattr(WebSDKSession, "message_availableStream", broken)
    wire = Wire(env)
    other = Wire(env)
    wire.send("connection", {"appKey": "k"})
    other.send("connection", {"appKey": "k"})
    wire.received(), other.received()
    wire.send("availableStream", {"mediaSessionId": "a", "name": "n"})  # must not raise
    assert wire.transport.disconnecting
    assert any(
        "closing session: KeyError: 'a bug some input reaches'" in formatEvent(e)
        for e in log_events
    )
    other.send("ping", None)
    assert other.received() == [("pong", [None])]


def test_unusable_offer_is_failed_with_a_warning(env: Env, log_events: list[LogEvent]) -> None:
    session, ws = env.session()
    peer = publish(env, session)
    peer.answer_d.errback(PeerError("Unusable SDP offer", "AssertionError: bad m-line"))
    (status,) = ws.named("notifyStreamStatusEvent")
    assert (status["status"], status["info"]) == ("FAILED", "Unusable SDP offer")
    warnings = [e for e in log_events if e.get("log_level") == LogLevel.warn]
    assert any("AssertionError: bad m-line" in formatEvent(e) for e in warnings)
    assert not any(e.get("log_failure") is not None for e in log_events)  # no traceback


def test_idle_publisher_terminated_by_the_hub_gets_its_final_status(env: Env) -> None:
    """The hub's publish idle watchdog calls stream.terminate() (#6, finding 18): the SDK is told
    the publish is over, with the stream's end reason, and the peer is closed."""
    session, ws = env.session()
    peer = publish(env, session)
    peer.answer_d.callback("answer")
    peer.on_connected()
    ws.take()
    stream = env.hub.get("cam")
    assert stream is not None
    stream.terminate()
    (status,) = ws.named("notifyStreamStatusEvent")
    assert status["status"] == "UNPUBLISHED" and status["info"] == stream.end_reason
    assert status["mediaSessionId"] == "m1" and peer.closed == 1
    assert session.media == {} and env.hub.get("cam") is None
    peer.on_failed("Failed by ICE keep alive")  # the closed peer's late news: ignored
    assert len(ws.frames) == 1


def reassemble(ws: WSConnection, data: bytes) -> list[str]:
    ws.receive_data(data)
    out, text = [], ""
    for event in ws.events():
        if isinstance(event, TextMessage):
            text += event.data
            if event.message_finished:
                out.append(text)
                text = ""
    return out


def test_snapshot_result_is_produced_as_the_client_reads(env: Env) -> None:
    transport = SlowReader()
    wire = Wire(env, transport=transport)
    wire.send("connection", {"appKey": "k"})
    wire.send("snapshot", {"name": "cam", "mediaSessionId": "s1"})
    transport.read_all()
    env.snapshots.requests[0][1].callback(BIG_PNG)
    # Two messages of 2.7 MB each are due; about one send buffer is queued.
    assert transport.paused and len(transport.value()) < 3 * SlowReader.BUFFER
    (session,) = env.factory.sessions
    assert session._snapshots == 1  # in flight until written out
    wire.send("ping", None)  # answered after the snapshot, never inside its fragments
    while transport.paused:
        transport.read_all()
    transport.read_all()
    assert transport.most_buffered < 3 * SlowReader.BUFFER and session._snapshots == 0
    texts = reassemble(wire.ws, transport.received)
    b64 = base64.b64encode(BIG_PNG).decode()
    assert texts == [
        encode_frame("getUserData", {"appKey": "k", "authToken": session.auth_token,
                                     "status": "ESTABLISHED"}),
        encode_frame("getVersion", SERVER_VERSION),
        encode_frame("notifyStreamEvent", {"mediaSessionId": "s1", "name": "cam",
                                           "type": "snapshotCompleted",
                                           "payload": {"snapshot": b64}}),
        encode_frame("notifyStreamStatusEvent", {"mediaSessionId": "s1", "name": "cam",
                                                 "status": "SNAPSHOT_COMPLETE", "info": b64}),
        encode_frame("pong", None),
    ]  # fmt: skip


def test_session_that_stops_reading_is_dropped_after_the_drain_deadline(
    env: Env, log_events: list[LogEvent]
) -> None:
    transport = SlowReader()
    wire = Wire(env, transport=transport)
    wire.send("connection", {"appKey": "k"})
    wire.send("snapshot", {"name": "cam", "mediaSessionId": "s1"})
    env.snapshots.requests[0][1].callback(BIG_PNG)
    assert transport.paused
    env.clock.advance(DRAIN_DEADLINE)
    assert transport.disconnected
    assert any("output not read by the client for 30 s" in formatEvent(e) for e in log_events)
    wire.proto.connectionLost(Failure(ConnectionDone()))
    assert env.factory.sessions == set() and env.clock.getDelayedCalls() == []


def test_messages_queued_for_a_client_that_does_not_read_are_bounded(
    env: Env, log_events: list[LogEvent]
) -> None:
    transport = SlowReader()
    wire = Wire(env, transport=transport)
    wire.send("connection", {"appKey": "k"})
    wire.send("snapshot", {"name": "cam", "mediaSessionId": "s1"})
    env.snapshots.requests[0][1].callback(BIG_PNG)
    assert transport.paused
    (session,) = env.factory.sessions
    unknown = "x" * 250  # each answered with a ~550-byte `fail`
    for _ in range(5000):  # ~2.7 MB of answers to a client that reads nothing
        if session._closing:
            break
        wire.send(unknown, {})
    assert session._closing
    assert any("client is not reading" in formatEvent(e) for e in log_events)
    env.clock.advance(10)  # a close that cannot be written is cut short
    assert transport.disconnected


@pytest.mark.parametrize(
    "extra",
    [b"Host: other.example\r\n", b"Connection: Upgrade, \xd7\xa9\r\n"],
    ids=["two Host headers (h11)", "non-ASCII Connection (wsproto)"],
)
def test_upgrade_request_the_handshake_refuses_is_a_400_not_a_traceback(
    env: Env, extra: bytes, log_events: list[LogEvent]
) -> None:
    """Found by the fuzz target ws_upgrade: h11's LocalProtocolError and wsproto's
    UnicodeDecodeError are not caught by twisted.web.websocket (a logged traceback and a 500)."""
    site = websocket_site(env.factory, Settings())
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert proto is not None
    transport = StringTransport()
    proto.makeConnection(transport)
    head = WSConnection(ConnectionType.CLIENT).send(Request(host="localhost", target="/"))
    proto.dataReceived(head[:-2] + extra + b"\r\n")
    response = parse_response(transport.value())
    assert response is not None and response.status == 400
    assert response.json()["message"].startswith("Bad WebSocket upgrade request")
    assert not [e for e in log_events if e.get("log_failure") is not None]
    assert env.factory.sessions == set()


def test_ping_after_our_close_aborts_quietly(env: Env, log_events: list[LogEvent]) -> None:
    """Found by the fuzz target ws_upgrade: a client's ping after the server's Close made
    twisted.web.websocket answer with a Pong wsproto refuses (LocalProtocolError)."""
    wire = Wire(env)
    wire.send("connection", {"appKey": "k"})
    wire.proto.dataReceived(wire.ws.send(TextMessage(data="{not json")))  # we close
    assert wire.transport.disconnecting
    wire.proto.dataReceived(b"\x89\x80\x00\x00\x00\x00")  # a masked, empty ping
    assert wire.transport.disconnected
    assert not [e for e in log_events if e.get("log_failure") is not None]


def test_rtsp_names_the_url_parser_refuses(env: Env, log_events: list[LogEvent]) -> None:
    """An rtsp:// name urlsplit refuses (ValueError of its own, not the pull's PullUriError):
    playStream is FAILED and a snapshot fails; the session stays, nothing is stuck."""
    pulls = PullManager(env.hub, env.clock, connector=FakeConnector())
    env.factory.rtsp_pull = pulls.stream_for_player
    env.factory.resolve_name = pulls.resolve
    session, ws = env.session()
    bad = "rtsp://10[0.0.225=4/stream1"
    send(session, "playStream", {"mediaSessionId": "p1", "name": bad, "sdp": OFFER})
    (status,) = ws.named("notifyStreamStatusEvent")
    assert (status["status"], status["info"]) == ("FAILED", "Rtsp has wrong format")
    send(session, "snapshot", {"name": bad, "mediaSessionId": "s1"})
    # No pull has that name: it is looked up as it is, and no stream has it either.
    [(asked, d)] = env.snapshots.requests
    assert asked == bad
    d.errback(StreamNotFound(bad))
    assert ws.named("notifyStreamEvent")[0]["payload"]["info"] == "Stream not found"
    assert ws.closed_with is None and session.media == {} and session._snapshots == 0
    assert not [e for e in log_events if e.get("log_failure") is not None]


# -- access: the publish password and the REST hooks ---------------------------------------------


def access_env(**access_kw: Any) -> Env:
    env = Env()
    env.factory.access = Access(env.clock, **access_kw)
    return env


def test_the_connect_hook_decides_the_session(env: Env) -> None:
    hooks = PendingHooks()
    env = access_env(hooks=hooks)
    session, ws = env.session(connect=False)
    send(session, "connection", {"appKey": "myApp", "custom": {"token": "t1", "password": "p"}})
    assert ws.take() == []  # nothing until the app answers
    body = hooks.answer("connect")
    assert (body["appKey"], body["custom"]) == ("myApp", {"token": "t1"})
    assert body["authToken"] == session.auth_token
    assert [m for m, _ in ws.take()] == ["getUserData", "getVersion"]
    other, other_ws = env.session(connect=False)
    send(other, "connection", {"appKey": "myApp"})
    hooks.answer("connect", refuse="Unknown token")
    assert other_ws.named("fail") == [{"apiMethod": "connection", "info": "Unknown token"}]
    assert other_ws.closed_with is not None and not other.connected


def test_publish_password_from_the_streams_or_the_sessions_custom() -> None:
    env = access_env(publish_password="s3cret")
    session, ws = env.session()
    send(session, "publishStream", {"mediaSessionId": "m1", "name": "a", "sdp": OFFER})
    send(
        session,
        "publishStream",
        {"mediaSessionId": "m2", "name": "b", "sdp": OFFER, "custom": {"password": "s3cret"}},
    )
    assert env.hub.get("b") is not None and env.hub.get("a") is None
    assert ws.named("notifyStreamStatusEvent") == []  # the refusal waits a second
    env.clock.advance(FAILURE_DELAY)
    (failed,) = ws.named("notifyStreamStatusEvent")
    assert (failed["mediaSessionId"], failed["status"], failed["info"]) == (
        "m1",
        "FAILED",
        INFO_BAD_PASSWORD,
    )
    other, _ = env.session(connect=False)
    send(other, "connection", {"appKey": "x", "custom": {"password": "s3cret"}})
    send(other, "publishStream", {"mediaSessionId": "m3", "name": "c", "sdp": OFFER})
    assert env.hub.get("c") is not None


def test_the_hooks_decide_publish_and_play() -> None:
    hooks = PendingHooks()
    env = access_env(hooks=hooks)
    session, ws = env.session(connect=False)
    send(session, "connection", {"appKey": "myApp"})
    hooks.answer("connect")
    ws.take()
    send(session, "publishStream", {"mediaSessionId": "m1", "name": "cam", "sdp": OFFER})
    assert env.hub.get("cam") is None and env.peers.publishers == []
    body = hooks.answer("publishStream")
    assert (body["name"], body["mediaSessionId"], body["mediaProvider"]) == ("cam", "m1", "WebRTC")
    assert env.hub.get("cam") is not None and len(env.peers.publishers) == 1
    send(session, "playStream", {"mediaSessionId": "p1", "name": "cam", "sdp": OFFER})
    hooks.answer("playStream", refuse="Pay first")
    (status,) = [s for s in ws.named("notifyStreamStatusEvent") if s["mediaSessionId"] == "p1"]
    assert (status["status"], status["info"]) == ("FAILED", "Pay first")
    assert env.peers.players == []
    # A publish given up before the app answers publishes nothing.
    send(session, "publishStream", {"mediaSessionId": "m2", "name": "cam2", "sdp": OFFER})
    send(session, "unPublishStream", {"mediaSessionId": "m2"})
    hooks.answer("publishStream")
    assert env.hub.get("cam2") is None
