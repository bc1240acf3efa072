"""Camera pulls as seen from outside (finding 12): every failure before a camera answers in
RTSP reads the same, and rtsp_pull_allowed_networks decides where a pull may connect, after
name resolution and before any packet, for the URI and for every redirect."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
    TimeoutError,
)
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure

from tests.unit.camera import URL, Cam, camera_sdp, video_rtp
from tests.unit.fakes import FakeConnector, startup_now
from wcs.rest.views import pull_json
from wcs.rtsp.pull import (
    CONNECT_FAILED,
    FAILED,
    NOT_ALLOWED,
    PLAYING,
    RECONNECTING,
    Pull,
    PullManager,
    PullUriError,
    address_allowed,
    host_port,
    parse_camera_uri,
    parse_networks,
    reactor_resolver,
)
from wcs.streams import StreamHub


class FakeResolver:
    """Answers names from a table; records what was asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str) -> Deferred[list[str]]:
        self.asked.append(host)
        with contextlib.suppress(ValueError):
            return succeed([str(ipaddress.ip_address(host))])  # a literal, as getaddrinfo does
        if host not in self.table:
            return fail(DNSLookupError(host))
        return succeed(self.table[host])


def manager(
    networks: tuple[str, ...] = (), table: dict[str, list[str]] | None = None
) -> tuple[PullManager, FakeConnector, FakeResolver, Clock]:
    clock = Clock()
    connector = FakeConnector()
    resolver = FakeResolver(table or {})
    pulls = PullManager(
        StreamHub(),
        clock,
        connector=connector,
        allowed_networks=networks,
        resolver=resolver,
    )
    return pulls, connector, resolver, clock


def failed_with(pull: Pull) -> tuple[str, str, str]:
    json = pull_json(pull)
    return pull.status, pull.info, f"{json['status']}|{json['info']}"


# -- one text for every connect failure ------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(),
        NoRouteError(),
        TCPTimedOutError(),
        TimeoutError(),
        ConnectionLost(),
        DNSLookupError("cam.example"),
        OSError(113, "No route to host"),
    ],
)
def test_every_connect_failure_reads_the_same(error: Exception, log_events: list[LogEvent]) -> None:
    """Finding 12: a refused and a filtered port answered differently (a port scanner)."""
    pulls, connector, _, _ = manager()
    pull = startup_now(pulls, URL, "door")
    connector.attempts[-1].deferred.errback(error)
    assert failed_with(pull) == (
        RECONNECTING,
        CONNECT_FAILED,
        f"{RECONNECTING}|{CONNECT_FAILED}",
    )
    assert pull.stream.status == RECONNECTING
    # The operator's log keeps the detail.
    assert any(
        "RTSP pull door: Cannot connect to the camera (" in formatEvent(e) for e in log_events
    )


def silent(cam: Cam) -> None:
    cam.client.connectionLost(None)


def http_server(cam: Cam) -> None:
    cam.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    cam.drop()


def ssh_banner(cam: Cam) -> None:
    cam.send(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    cam.drop()


def no_answer(cam: Cam) -> None:
    clock = cam.client.clock
    assert isinstance(clock, Clock)
    clock.advance(cam.client.config.response_timeout)
    cam.drop()


@pytest.mark.parametrize("peer", [silent, http_server, ssh_banner, no_answer])
def test_an_open_port_that_is_no_rtsp_server_reads_the_same(peer: object) -> None:
    """Until the peer has answered in RTSP, REST cannot tell an open port from a closed one."""
    pulls, connector, _, _ = manager()
    pull = startup_now(pulls, URL, "door")
    _, cam = connector.accept()
    peer(cam)  # type: ignore[operator]
    assert failed_with(pull)[:2] == (RECONNECTING, CONNECT_FAILED)


def test_a_camera_that_answered_reports_what_went_wrong() -> None:
    pulls, connector, _, _ = manager()
    pull = startup_now(pulls, URL, "door")
    _, cam = connector.accept()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), 404)
    cam.drop()
    assert failed_with(pull)[:2] == (FAILED, "DESCRIBE answered 404 Not Found")


# -- allowed networks --------------------------------------------------------------------------


def test_addresses_outside_the_allowed_networks_are_never_connected() -> None:
    pulls, connector, resolver, clock = manager(
        ("10.0.0.0/24", "fd00::/8"),
        {
            "cam.lan": ["10.0.0.7"],
            "evil.example": ["192.168.1.1"],
            "both": ["127.0.0.1", "fd00::5"],
        },
    )
    inside = startup_now(pulls, "rtsp://cam.lan:8554/live", "a")
    assert [(a.host, a.port) for a in connector.attempts] == [("10.0.0.7", 8554)]
    assert inside.status != FAILED
    for uri in ("rtsp://evil.example/x", "rtsp://192.168.1.1/x", "rtsp://127.0.0.1/x"):
        pull = startup_now(pulls, uri)
        assert failed_with(pull)[:2] == (FAILED, NOT_ALLOWED)
    assert len(connector.attempts) == 1  # not a packet to any of them
    # A name with an allowed and a disallowed address: only the allowed one is used.
    startup_now(pulls, "rtsp://both/x")
    assert connector.attempts[-1].host == "fd00::5"
    assert resolver.asked == ["cam.lan", "evil.example", "192.168.1.1", "127.0.0.1", "both"]
    # Refused again after the backoff, by the same check.
    clock.advance(1)
    assert len(connector.attempts) == 2


def test_not_allowed_reads_the_same_whether_or_not_the_host_is_there() -> None:
    """The check comes before any connection: no timing or text tells a live host apart."""
    pulls, connector, _, _ = manager(("10.0.0.0/8",))
    up = startup_now(pulls, "rtsp://192.168.0.10/x", "up")
    down = startup_now(pulls, "rtsp://192.168.0.11/x", "down")
    assert failed_with(up)[1:] == failed_with(down)[1:] == (NOT_ALLOWED, f"{FAILED}|{NOT_ALLOWED}")
    assert connector.attempts == []


def test_a_name_that_does_not_resolve_is_a_connect_failure() -> None:
    pulls, connector, _, _ = manager(("10.0.0.0/8",))
    pull = startup_now(pulls, "rtsp://nowhere.example/x")
    assert failed_with(pull)[:2] == (RECONNECTING, CONNECT_FAILED)
    assert connector.attempts == []


def test_every_redirect_is_checked_too() -> None:
    pulls, connector, resolver, clock = manager(
        ("10.0.0.0/24",), {"cam.lan": ["10.0.0.2"], "inner.lan": ["10.0.0.3"], "db": ["10.9.0.1"]}
    )
    pull = startup_now(pulls, "rtsp://u:p@cam.lan/stream1", "door")
    _, cam = connector.accept()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), 302, headers=[("Location", "rtsp://inner.lan/real")])
    cam.drop()
    clock.advance(0)
    assert connector.attempts[-1].host == "10.0.0.3"  # allowed: followed
    _, cam = connector.accept()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), 302, headers=[("Location", "rtsp://db:5432/")])
    cam.drop()
    clock.advance(0)
    assert len(connector.attempts) == 2  # the disallowed target got nothing
    assert failed_with(pull)[:2] == (FAILED, NOT_ALLOWED)
    assert resolver.asked == ["cam.lan", "inner.lan", "db"]
    # The next attempt starts again from the URI the pull was made with.
    clock.advance(1)
    assert connector.attempts[-1].host == "10.0.0.2"
    _, cam = connector.accept()
    cam.handshake(sdp=camera_sdp(audio=False))
    cam.rtp(0, video_rtp())
    assert (pull.status, pull.info) == (PLAYING, "")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("fe80::1%eth0", True),
        ("11.0.0.1", False),
        ("::1", False),
        ("not an address", False),
    ],
)
def test_address_allowed(address: str, allowed: bool) -> None:
    assert address_allowed(address, parse_networks(["10.0.0.0/8", "fe80::/10"])) is allowed


def test_no_networks_means_any_and_no_resolution_step() -> None:
    pulls, connector, resolver, _ = manager()
    startup_now(pulls, "rtsp://cam.local:8554/x", "a")
    assert [(a.host, a.port) for a in connector.attempts] == [("cam.local", 8554)]
    assert resolver.asked == []


class FakeNameResolver:
    """IHostnameResolver: what reactor.nameResolver does, from a table."""

    def __init__(self, table: dict[str, list[IPv4Address | IPv6Address]]) -> None:
        self.table = table

    def resolveHostName(self, receiver: Any, hostName: str, *args: object, **kw: object) -> Any:
        receiver.resolutionBegan(None)
        for address in self.table.get(hostName, []):
            receiver.addressResolved(address)
        receiver.resolutionComplete()
        return receiver


def test_reactor_resolver_collects_the_addresses() -> None:
    reactor = Clock()
    reactor.nameResolver = FakeNameResolver(  # type: ignore[attr-defined]
        {
            "cam": [
                IPv4Address("TCP", "10.0.0.7", 0),
                IPv6Address("TCP", "fd00::7", 0),
                IPv4Address("TCP", "10.0.0.7", 0),
            ]
        }
    )
    resolve = reactor_resolver(reactor)
    assert resolve("cam").result == ["10.0.0.7", "fd00::7"]
    failure = resolve("nowhere")
    errors: list[Failure] = []
    failure.addErrback(errors.append)
    assert errors and errors[0].check(OSError)


# -- camera URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://cam/x", ("cam", 554)),
        ("rtsp://u:p@cam:8554/x", ("cam", 8554)),
        ("rtsp://cam:/x", ("cam", 554)),
        ("rtsp://[fd00::1]:8554/x", ("fd00::1", 8554)),
        ("rtsp://[fd00::1]/x", ("fd00::1", 554)),
        ("rtsp://cam:0/x", ("cam", None)),
        ("rtsp://cam:65536/x", ("cam", None)),
        ("rtsp://cam:\u00b2/x", ("cam", None)),
        ("rtsp://cam:\u0665\u0665\u0664/x", ("cam", None)),  # int() would read 554
        ("rtsp://cam:+554/x", ("cam", None)),
        ("rtsp://[fd00::1]x/y", ("fd00::1", None)),
        ("rtsp://[fd00::1/x", ("", None)),
    ],
)
def test_host_port_reads_ascii_ports_only(url: str, expected: tuple[str, int | None]) -> None:
    assert host_port(url) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("rtsp://[fd00::1/x", "not a usable URL"),
        ("rtsp://cam:\u0665\u0665\u0664/x", "bad port"),
        ("rtsp://cam:\u00b2/x", "bad port"),
    ],
)
def test_camera_uris_urlsplit_or_int_would_get_wrong(uri: str, message: str) -> None:
    """parse_camera_uri let urlsplit's ValueError out (a 500 from /rtsp/startup)."""
    with pytest.raises(PullUriError, match=message):
        parse_camera_uri(uri)


def test_a_redirect_to_a_bad_port_fails_that_attempt() -> None:
    pulls, connector, _, clock = manager()
    pull = startup_now(pulls, URL, "door")
    _, cam = connector.accept()
    cam.answer(cam.request("OPTIONS"))
    cam.answer(cam.request("DESCRIBE"), 302, headers=[("Location", "rtsp://cam:\u00b2/x")])
    cam.drop()
    clock.advance(0)
    assert len(connector.attempts) == 1
    assert pull.status == FAILED and "bad port" in pull.info
