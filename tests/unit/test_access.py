"""wcs.access: the publish password (constant time, delayed failures) and the hook bodies."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.unit.fakes import publish_now, refused_info
from wcs.access import FAILURE_DELAY, INFO_BAD_PASSWORD, Access, Client, Refused

CLIENT = Client("/10.0.0.5:50000/10.0.0.1:1935", "Flash", "10.0.0.5", "live", {"key": "k1"})


class RecordingHooks:
    def __init__(self, refuse: set[str] | None = None) -> None:
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.told: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse or set()

    def ask(self, method: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        self.asked.append((method, body))
        if method in self.refuse:
            d: Deferred[dict[str, Any]] = Deferred()
            d.errback(Refused(f"{method} refused"))
            return d
        return succeed({})

    def tell(self, method: str, body: dict[str, Any]) -> None:
        self.told.append((method, body))


def outcome(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_without_password_or_hooks_everything_is_allowed_at_once() -> None:
    access = Access(Clock())
    assert outcome(access.publish(CLIENT, "cam", "m1", None)) == [None]
    assert outcome(access.play(CLIENT, "cam", "m2")) == [None]
    assert outcome(access.connect(CLIENT)) == [{}]


def test_right_password_is_allowed_at_once() -> None:
    access = Access(Clock(), publish_password="s3cret")
    assert outcome(access.publish(CLIENT, "cam", "m1", "s3cret")) == [None]
    # A protocol that checked the password itself (RTSP Digest) is not asked for it again.
    assert outcome(access.publish(CLIENT, "cam", "m1", None, authenticated=True)) == [None]
    assert access.failed_passwords == 0


def test_wrong_or_missing_password_is_refused_after_the_delay(log_events: list[Any]) -> None:
    clock = Clock()
    hooks = RecordingHooks()
    access = Access(clock, hooks=hooks, publish_password="s3cret")
    for presented in ("wrong", None, "s3cret\u00b2"):
        out = outcome(access.publish(CLIENT, "cam", "m1", presented))
        clock.advance(FAILURE_DELAY - 0.01)
        assert out == []
        clock.advance(0.02)
        assert isinstance(out[0], Failure) and refused_info(out[0]) == INFO_BAD_PASSWORD
    assert hooks.asked == []  # a refused password never reaches the hook app
    assert access.failed_passwords == 3
    lines = [e for e in log_events if "publish refused" in e.get("log_format", "")]
    assert len(lines) == 1  # rate-limited
    assert all("wrong" not in repr(e) and "s3cret" not in repr(e) for e in log_events)


def test_hook_bodies_carry_the_client_and_stream() -> None:
    hooks = RecordingHooks()
    access = Access(Clock(), hooks=hooks, node_id="node-1")
    access.connect(CLIENT)
    access.publish(CLIENT, "cam", "m1", None)
    access.play(CLIENT, "cam", "m2")
    access.unpublished(CLIENT, "cam", "m1")
    common = {
        "nodeId": "node-1",
        "appKey": "live",
        "sessionId": "/10.0.0.5:50000/10.0.0.1:1935",
        "mediaProvider": "Flash",
        "clientAddress": "10.0.0.5",
        "custom": {"key": "k1"},
    }
    assert hooks.asked == [
        ("connect", common),
        ("publishStream", {**common, "name": "cam", "mediaSessionId": "m1", "published": True}),
        ("playStream", {**common, "name": "cam", "mediaSessionId": "m2", "published": False}),
    ]
    assert hooks.told == [("unPublishStream", {**common, "name": "cam", "mediaSessionId": "m1"})]


def test_a_hook_refusal_reaches_the_caller() -> None:
    access = Access(Clock(), hooks=RecordingHooks(refuse={"publishStream"}))
    out = outcome(access.publish(CLIENT, "cam", "m1", None))
    assert isinstance(out[0], Failure) and refused_info(out[0]) == "publishStream refused"


def test_session_id_is_wcs_shaped() -> None:
    class Addr:
        def __init__(self, host: str, port: int) -> None:
            self.host, self.port = host, port

    assert Client.session_id_of(Addr("1.2.3.4", 5), Addr("6.7.8.9", 10)) == "/1.2.3.4:5/6.7.8.9:10"


def test_a_tracked_publish_tells_the_app_when_it_starts_and_ends() -> None:
    from wcs.streams import StreamHub

    hooks = RecordingHooks()
    access = Access(Clock(), hooks=hooks, node_id="node-1")
    stream = publish_now(StreamHub(), "cam", "Flash", media_session_id="m1")
    access.track(CLIENT, stream)
    stream.end("Stopped by publisher stop")
    assert [(m, b.get("status"), b.get("info")) for m, b in hooks.told] == [
        ("StreamStatusEvent", "PUBLISHING", ""),
        ("StreamStatusEvent", "UNPUBLISHED", "Stopped by publisher stop"),
        ("unPublishStream", None, None),
    ]
    assert {b["mediaSessionId"] for _, b in hooks.told} == {"m1"}
