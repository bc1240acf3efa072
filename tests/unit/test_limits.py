"""wcs.limits: the open-file limit, the connection cap formula, throttled logging and the
connection-limiting factory (fake transports and addresses, no sockets)."""

from __future__ import annotations

import resource
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, Logger
from twisted.python.failure import Failure

from tests.unit.fakes import RecordingProtocol, warnings
from wcs.limits import (
    MIN_RESERVE,
    UNLIMITED_TARGET,
    ConnectionLimiter,
    LimitedConnection,
    LimitedFactory,
    LogThrottle,
    connection_cap,
    raise_open_file_limit,
)

NOFILE = resource.RLIMIT_NOFILE
INF = resource.RLIM_INFINITY


class Inner(Factory):
    """Counts how often it was asked for a protocol."""

    def __init__(self, refuse: bool = False) -> None:
        self.built = 0
        self.refuse = refuse

    def buildProtocol(self, addr: Any) -> Protocol | None:
        self.built += 1
        return None if self.refuse else RecordingProtocol()


def addr(host: str = "192.0.2.1", port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def connect(factory: LimitedFactory, host: str = "192.0.2.1") -> LimitedConnection | None:
    """What a listening port does on accept: buildProtocol, then makeConnection (or close)."""
    proto = factory.buildProtocol(addr(host))
    if proto is not None:
        proto.makeConnection(StringTransport(peerAddress=addr(host)))
    return proto


def lose(proto: LimitedConnection | None) -> None:
    assert proto is not None
    proto.connectionLost(Failure(ConnectionDone()))


# -- the open-file limit ------------------------------------------------------------------------


class FakeRlimit:
    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse
        self.calls: list[tuple[int, int]] = []

    def get(self, which: int) -> tuple[int, int]:
        assert which == NOFILE
        return self.limits

    def set(self, which: int, limits: tuple[int, int]) -> None:
        assert which == NOFILE
        self.calls.append(limits)
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    fake = FakeRlimit(1024, 524288)
    assert raise_open_file_limit(fake.get, fake.set) == 524288
    assert fake.calls == [(524288, 524288)]


def test_soft_limit_already_at_the_hard_limit_is_left_alone() -> None:
    fake = FakeRlimit(256, 256)
    assert raise_open_file_limit(fake.get, fake.set) == 256
    assert fake.calls == []


def test_unlimited_hard_limit_asks_for_a_finite_soft_limit() -> None:
    fake = FakeRlimit(1024, INF)
    assert raise_open_file_limit(fake.get, fake.set) == UNLIMITED_TARGET
    assert fake.calls == [(UNLIMITED_TARGET, INF)]


def test_a_refused_raise_is_logged_and_the_current_limit_kept(log_events: list[LogEvent]) -> None:
    fake = FakeRlimit(1024, INF, refuse=True)
    assert raise_open_file_limit(fake.get, fake.set) == 1024
    [line] = warnings(log_events)
    assert "cannot raise the open-file limit from 1024" in line


@pytest.mark.parametrize(
    ("max_connections", "open_files", "cap"),
    [
        (4000, 1024, 768),  # the machine: a quarter kept back
        (4000, 256, 256 - MIN_RESERVE),
        (4000, 4096, 3072),
        (4000, 20000, 4000),  # a high limit leaves max_connections as configured
        (4000, 1 << 20, 4000),
        (100, 1024, 100),
        (4000, 100, 100 - MIN_RESERVE),
        (4000, 10, 1),  # absurdly low: still one connection, never zero or negative
    ],
)
def test_connection_cap_keeps_a_reserve_of_descriptors(
    max_connections: int, open_files: int, cap: int
) -> None:
    assert connection_cap(max_connections, open_files) == cap


# -- throttled logging --------------------------------------------------------------------------


def test_throttle_logs_the_first_event_then_one_line_per_interval(
    log_events: list[LogEvent],
) -> None:
    clock = Clock()
    throttle = LogThrottle(clock, Logger(namespace="test"), interval=10)
    throttle.warn("refused {n}", n=1)
    assert warnings(log_events) == ["refused 1"]
    for n in (2, 3, 4):
        throttle.warn("refused {n}", n=n)
    clock.advance(9.9)
    assert len(warnings(log_events)) == 1
    clock.advance(0.1)
    assert warnings(log_events)[1:] == ["refused 4 [3 such events in the last 10 s]"]
    throttle.warn("refused {n}", n=5)  # inside the next window: held
    clock.advance(10)
    assert warnings(log_events)[2:] == ["refused 5 [1 such events in the last 10 s]"]
    clock.advance(10)  # a quiet window ends the throttling
    assert len(warnings(log_events)) == 3
    assert not clock.getDelayedCalls()
    throttle.warn("refused {n}", n=6)
    assert warnings(log_events)[3:] == ["refused 6"]


# -- the limiting factory -----------------------------------------------------------------------


def limited(
    max_connections: int = 100, per_ip: int = 3
) -> tuple[ConnectionLimiter, Clock, Inner, LimitedFactory, LimitedFactory]:
    """A limiter shared by a web listener (per-address cap) and an ingest one (exempt)."""
    clock = Clock()
    limiter = ConnectionLimiter(clock, max_connections, per_ip)
    web, ingest = Inner(), Inner()
    return (
        limiter,
        clock,
        web,
        limiter.wrap(web, "http", per_ip=True),
        limiter.wrap(ingest, "rtmp", per_ip=False),
    )


def test_an_accepted_connection_passes_bytes_and_is_counted_until_it_closes() -> None:
    limiter, _, _, http, _ = limited()
    proto = connect(http)
    assert isinstance(proto, LimitedConnection)
    inner = proto.wrappedProtocol
    assert isinstance(inner, RecordingProtocol)
    assert inner.transport is proto
    assert proto.getPeer() == addr()
    proto.dataReceived(b"GET / HTTP/1.1\r\n")
    assert inner.received == [b"GET / HTTP/1.1\r\n"]
    assert (limiter.total, limiter.per_ip) == (1, {"192.0.2.1": 1})
    lose(proto)
    assert len(inner.lost) == 1
    assert (limiter.total, limiter.per_ip) == (0, {})


def test_per_address_cap_refuses_before_anything_is_built(log_events: list[LogEvent]) -> None:
    limiter, _, web, http, _ = limited(per_ip=3)
    accepted = [connect(http) for _ in range(3)]
    assert web.built == 3
    assert connect(http) is None  # the port closes the socket: no protocol, no read
    assert web.built == 3
    assert (limiter.total, limiter.refused) == (3, 1)
    assert connect(http, "192.0.2.2") is not None  # another address is not affected
    [line] = warnings(log_events)
    assert line == (
        "refused a connection on http from 192.0.2.1: 3 connections open from this address "
        "(max_connections_per_ip 3)"
    )
    lose(accepted[0])
    assert connect(http) is not None  # room again once one closes


def test_ingest_listeners_count_globally_but_are_exempt_from_the_per_address_cap() -> None:
    limiter, _, _, http, rtmp = limited(per_ip=2)
    encoders = [connect(rtmp) for _ in range(10)]
    assert all(encoders)
    assert limiter.total == 10
    assert limiter.per_ip == {}
    # Encoders from an address do not use up its web connections.
    assert connect(http) is not None
    assert connect(http) is not None
    assert connect(http) is None
    for proto in encoders:
        lose(proto)
    assert limiter.total == 2


def test_global_cap_covers_every_listener(log_events: list[LogEvent]) -> None:
    limiter, _, _, http, rtmp = limited(max_connections=4, per_ip=3)
    protos = [connect(rtmp), connect(http, "192.0.2.7"), connect(rtmp), connect(http, "192.0.2.8")]
    assert all(protos)
    assert connect(rtmp) is None
    assert connect(http, "192.0.2.9") is None
    assert limiter.total == 4
    assert warnings(log_events) == [
        "refused a connection on rtmp from 192.0.2.1: 4 connections open (max_connections 4)"
    ]
    lose(protos[1])
    assert connect(http, "192.0.2.9") is not None


def test_each_cap_is_logged_at_once_and_then_throttled(log_events: list[LogEvent]) -> None:
    limiter, clock, _, http, rtmp = limited(max_connections=5, per_ip=1)
    connect(http)
    for _ in range(3):
        assert connect(http) is None  # the address is at its cap
    for _ in range(4):
        connect(rtmp)
    for _ in range(5):
        assert connect(rtmp) is None  # all listeners are at the global cap
    lines = warnings(log_events)
    assert len(lines) == 2
    assert "max_connections_per_ip 1" in lines[0]
    assert "max_connections 5)" in lines[1]
    clock.advance(10)
    assert warnings(log_events)[2:] == [
        "refused a connection on http from 192.0.2.1: 1 connections open from this address "
        "(max_connections_per_ip 1) [2 such events in the last 10 s]",
        "refused a connection on rtmp from 192.0.2.1: 5 connections open (max_connections 5) "
        "[4 such events in the last 10 s]",
    ]
    assert limiter.refused == 8


def test_a_connection_whose_set_up_fails_is_released_when_lost() -> None:
    limiter, _, _, _, _ = limited()

    class Exploding(RecordingProtocol):
        def connectionMade(self) -> None:
            raise RuntimeError("set-up failed")

    class ExplodingFactory(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            return Exploding()

    factory = limiter.wrap(ExplodingFactory(), "https", per_ip=True)
    exploding = factory.buildProtocol(addr())
    assert exploding is not None
    with pytest.raises(RuntimeError):
        exploding.makeConnection(StringTransport())
    # The port keeps the socket and reports its loss later: that releases it.
    assert limiter.total == 1
    lose(exploding)
    assert (limiter.total, limiter.per_ip) == (0, {})


def test_a_refused_connection_is_never_counted() -> None:
    limiter, _, _, http, _ = limited(max_connections=1)
    first = connect(http)
    for _ in range(5):
        assert connect(http) is None
    assert limiter.total == 1
    lose(first)
    assert (limiter.total, limiter.per_ip) == (0, {})


def test_an_inner_factory_that_refuses_is_not_counted() -> None:
    limiter = ConnectionLimiter(Clock(), 10, 10)
    inner = Inner(refuse=True)
    assert connect(limiter.wrap(inner, "rtsp", per_ip=False)) is None
    assert inner.built == 1
    assert limiter.total == 0


def test_ipv6_addresses_are_counted_per_address() -> None:
    limiter = ConnectionLimiter(Clock(), 10, 1)
    factory = limiter.wrap(Inner(), "ws", per_ip=True)
    assert factory.buildProtocol(IPv6Address("TCP", "2001:db8::1", 1)) is not None
    proto = factory.buildProtocol(IPv6Address("TCP", "2001:db8::1", 2))
    assert proto is not None
    proto.makeConnection(StringTransport())
    assert limiter.per_ip == {"2001:db8::1": 1}
    assert factory.buildProtocol(IPv6Address("TCP", "2001:db8::1", 3)) is None


def test_the_wrapper_is_transparent_to_start_stop_and_log_prefixes() -> None:
    class Named(Inner):
        started = stopped = 0

        def startFactory(self) -> None:
            self.started += 1

        def stopFactory(self) -> None:
            self.stopped += 1

    inner = Named()
    factory: IProtocolFactory = ConnectionLimiter(Clock(), 10, 10).wrap(inner, "rtsp", per_ip=False)
    factory.doStart()
    factory.doStop()
    assert (inner.started, inner.stopped) == (1, 1)
    assert factory.logPrefix() == "Named"  # type: ignore[attr-defined]
    proto = factory.buildProtocol(addr())
    assert proto is not None
    assert proto.logPrefix() == "RecordingProtocol"  # type: ignore[attr-defined]
