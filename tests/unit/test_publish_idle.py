"""The hub's publish idle watchdog with a Clock (issue #6, finding 18): a publisher that sends
no media for publish_idle_timeout_ms is dropped and its name freed; camera pulls are exempt."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from tests.unit.fakes import publish_now
from wcs.media.units import MediaUnit
from wcs.streams import (
    END_IDLE,
    PROVIDER_RTMP,
    PROVIDER_RTSP,
    PROVIDER_WEBRTC,
    PublishIdleWatchdog,
    Stream,
    StreamHub,
)

TIMEOUT_MS = 10_000


def unit(kind: str = "video") -> MediaUnit:
    return MediaUnit(kind, "H264" if kind == "video" else "AAC", 0, 0, True, b"x")


class Publisher:
    """A front-end connection: on_terminate closes it."""

    def __init__(
        self, hub: StreamHub, name: str, provider: str, *, watch_idle: bool = True
    ) -> None:
        self.closed = 0
        self.stream: Stream = publish_now(
            hub, name, provider, on_terminate=self.close, watch_idle=watch_idle
        )

    def close(self) -> None:
        self.closed += 1


def started(timeout_ms: int = TIMEOUT_MS) -> tuple[StreamHub, Clock, PublishIdleWatchdog]:
    hub, clock = StreamHub(), Clock()
    watchdog = PublishIdleWatchdog(hub, clock, timeout_ms)
    watchdog.start()
    return hub, clock, watchdog


@pytest.mark.parametrize("provider", [PROVIDER_RTMP, PROVIDER_RTSP, PROVIDER_WEBRTC])
def test_publisher_that_stops_sending_is_dropped_and_its_name_freed(
    provider: str, log_events: list[LogEvent]
) -> None:
    hub, clock, _ = started()
    pub = Publisher(hub, "cam1", provider)
    for _ in range(60):  # 30 s of media, one unit every half second: never idle
        pub.stream.push(unit("video" if provider != PROVIDER_WEBRTC else "audio"))
        clock.advance(0.5)
    assert not pub.stream.ended and pub.closed == 0
    stopped_at = clock.seconds()
    while not pub.stream.ended and clock.seconds() < stopped_at + 30:
        clock.advance(0.1)
    waited = clock.seconds() - stopped_at
    assert TIMEOUT_MS / 1000 <= waited <= TIMEOUT_MS / 1000 + 1.5
    assert pub.closed == 1
    assert pub.stream.end_reason == END_IDLE
    assert hub.get("cam1") is None
    again = Publisher(hub, "cam1", provider)
    assert hub.get("cam1") is again.stream
    drops = [e for e in log_events if "no media for" in e.get("log_format", "")]
    assert len(drops) == 1 and drops[0]["stream_name"] == "cam1"


def test_publisher_that_never_sends_is_dropped_after_the_timeout() -> None:
    hub, clock, _ = started()
    pub = Publisher(hub, "silent", PROVIDER_RTMP)
    clock.pump([0.5] * 19)
    assert not pub.stream.ended
    clock.pump([0.5] * 5)
    assert pub.stream.ended and pub.closed == 1


def test_malformed_media_counts_as_activity() -> None:
    hub, clock, _ = started()
    pub = Publisher(hub, "broken", PROVIDER_RTMP)
    for _ in range(40):
        pub.stream.reject_unit("bad NAL")
        clock.advance(0.5)
    assert not pub.stream.ended


def test_camera_pulls_are_exempt() -> None:
    hub, clock, _ = started()
    pull = Publisher(hub, "camera", PROVIDER_RTSP, watch_idle=False)
    pub = Publisher(hub, "encoder", PROVIDER_RTSP)
    clock.pump([1.0] * 60)
    assert pub.stream.ended
    assert not pull.stream.ended and pull.closed == 0
    assert hub.get("camera") is pull.stream


def test_zero_disables_and_stop_stops() -> None:
    hub, clock, watchdog = started(timeout_ms=0)
    pub = Publisher(hub, "cam1", PROVIDER_RTMP)
    clock.pump([1.0] * 100)
    assert not pub.stream.ended and clock.getDelayedCalls() == []
    hub, clock, watchdog = started()
    pub = Publisher(hub, "cam1", PROVIDER_RTMP)
    clock.advance(5)
    watchdog.stop()
    assert clock.getDelayedCalls() == []
    clock.pump([1.0] * 100)
    assert not pub.stream.ended


def test_streams_ended_otherwise_are_forgotten() -> None:
    hub, clock, watchdog = started()
    for i in range(50):
        Publisher(hub, f"s{i}", PROVIDER_RTMP).stream.end()
        clock.advance(1.0)
    assert watchdog._seen == {}
