"""WCSService wiring: every listener is a strports service counted by the one connection limiter,
TLS listeners get the checked pair and the handshake guard, a port that cannot be bound stops
start-up, and the cap is fitted to the open-file limit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory

import wcs
from wcs import service as service_module
from wcs.config import Settings
from wcs.limits import LimitedFactory
from wcs.service import WCSService, listen_description
from wcs.tls import HandshakeGuardFactory, ensure_self_signed
from wcs.webrtc.signalling import ByteBudgetFactory

PORTS = {"http_port": 1, "https_port": 2, "rtmp_port": 3, "rtsp_port": 4, "ws_port": 5}


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # the self-signed pair is made in the working directory


def make(**settings: object) -> WCSService:
    return WCSService(Settings(**{**PORTS, "wss_port": 6, **settings}), Clock())  # type: ignore[arg-type]


def test_every_listener_is_wrapped_outermost_by_the_one_limiter() -> None:
    service = make(max_connections=50, max_connections_per_ip=7)
    service._make_factories()
    factories: dict[str, Any] = dict(service.factories)
    assert set(factories) == {"http", "https", "rtmp", "rtsp", "ws", "wss"}
    for label, factory in factories.items():
        assert isinstance(factory, LimitedFactory), label
        assert factory.limiter is service.connections
        assert factory.label == label
        assert factory.per_ip == (label in {"http", "https", "ws", "wss"})
    assert (service.connections.max_connections, service.connections.max_per_ip) == (50, 7)
    # TLS and the WebSocket byte budget stay inside, in their order.
    for label in ("https", "wss"):
        tls = factories[label].wrappedFactory
        assert isinstance(tls, TLSMemoryBIOFactory)
        assert isinstance(tls.wrappedFactory, HandshakeGuardFactory)
        assert tls.wrappedFactory.label == label
    assert isinstance(factories["ws"].wrappedFactory, ByteBudgetFactory)
    wss_guard = factories["wss"].wrappedFactory.wrappedFactory
    assert isinstance(wss_guard.wrappedFactory, ByteBudgetFactory)


def test_a_mismatched_pair_stops_start_up_naming_both_files(tmp_path: Path) -> None:
    cert, _ = ensure_self_signed(str(tmp_path / "a"))
    _, key = ensure_self_signed(str(tmp_path / "b"))
    service = make(https_cert=cert, https_key=key)
    with pytest.raises(SystemExit) as info:
        service._make_factories()
    message = str(info.value.code)
    assert cert in message and key in message
    assert "do not match" in message


LISTENING = {"http": 1, "https": 2, "rtmp": 3, "rtsp": 4, "ws": 5, "wss": 6}


def test_each_port_is_a_strports_service_whose_factory_and_port_are_kept(
    monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    monkeypatch.setattr(service_module, "raise_open_file_limit", lambda: 65536)
    reactor = MemoryReactorClock()
    service = WCSService(Settings(**PORTS, wss_port=6, ip="127.0.0.1"), reactor)  # type: ignore[arg-type]
    assert service.descriptions == {
        label: f"tcp:{port}:interface=127.0.0.1" for label, port in LISTENING.items()
    }
    assert (service.factories, service.listeners, service.ports) == ({}, {}, {})
    assert service.not_ready_reason() == "listeners not bound: " + ", ".join(LISTENING)
    service.startService()
    try:
        assert service.running
        assert service.not_ready_reason() is None  # GET /ready: 200
        assert list(service.listeners) == list(LISTENING)
        for label, listener in service.listeners.items():
            assert isinstance(listener, StreamServerEndpointService)
            assert listener.running and listener.parent is service and listener.name == label
            assert listener.factory is service.factories[label]
        bound = [(port, factory, interface) for port, factory, _, interface in reactor.tcpServers]
        assert bound == [
            (port, service.factories[label], "127.0.0.1") for label, port in LISTENING.items()
        ]
        assert service.bound_ports == LISTENING
        service._ready()  # what the reactor calls once running (not run here: it sets SIGTERM)
        ready = [formatEvent(e) for e in log_events if "wcs ready" in formatEvent(e)]
        ports = "http=1, https=2, rtmp=3, rtsp=4, ws=5, wss=6"
        assert ready == [f"wcs ready: {ports} (pid {os.getpid()}) version {wcs.__version__}"]
        service.stopService()
        assert service.not_ready_reason() == "stopping"
        assert service.ports == {}
        assert not any(listener.running for listener in service.listeners.values())
    finally:
        service.pool.stop()


def test_port_zero_asks_the_os_and_none_disables() -> None:
    service = make(http_port=0, https_port=None, ws_port=None, wss_port=None, rtsp_port=None)
    assert service.descriptions == {
        "http": "tcp:0:interface=0.0.0.0",
        "rtmp": "tcp:3:interface=0.0.0.0",
    }


def test_listen_descriptions_parse_back_to_the_address() -> None:
    reactor = MemoryReactorClock()
    v4 = serverFromString(reactor, listen_description("127.0.0.1", 8081))
    assert isinstance(v4, TCP4ServerEndpoint)
    assert (v4._port, v4._interface) == (8081, "127.0.0.1")
    assert listen_description("::1", 0) == "tcp6:0:interface=\\:\\:1"
    v6 = serverFromString(reactor, listen_description("::1", 0))
    assert isinstance(v6, TCP6ServerEndpoint)
    assert (v6._port, v6._interface) == (0, "::1")


class RtmpPortTaken(MemoryReactorClock):
    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port == 3:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


def test_a_port_that_cannot_be_bound_stops_start_up_with_a_message(
    monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    monkeypatch.setattr(service_module, "raise_open_file_limit", lambda: 65536)
    reactor = RtmpPortTaken()
    service = WCSService(Settings(**PORTS, wss_port=6, ip="127.0.0.1"), reactor)  # type: ignore[arg-type]
    with pytest.raises(SystemExit) as info:
        service.startService()
    reason = "Couldn't listen on 127.0.0.1:3: [Errno 98] Address already in use."
    assert info.value.code == f"wcs: cannot listen on rtmp port 127.0.0.1:3: {reason}"
    critical = [formatEvent(e) for e in log_events if e.get("log_level") == LogLevel.critical]
    assert critical == [f"wcs cannot listen on rtmp port 3: {reason}"]
    # The ports before it were bound, none after it was tried, and nothing else started.
    assert [port for port, *_ in reactor.tcpServers] == [1, 2]
    assert set(service.ports) == {"http", "https"}
    assert not service.running


def test_the_cap_is_fitted_to_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    monkeypatch.setattr(service_module, "raise_open_file_limit", lambda: 1024)
    service = make(max_connections=4000, max_connections_per_ip=128)
    assert service.fit_connections_to_open_files() == 768
    assert service.connections.max_connections == 768
    lines = [(e["log_level"], formatEvent(e)) for e in log_events if "open_files" in e]
    assert lines == [
        (
            LogLevel.info,
            "open-file limit 1024; at most 768 connections over all listeners (128 per client "
            "address on the HTTP, HTTPS, WS and WSS ports)",
        ),
        (
            LogLevel.warn,
            "max_connections 4000 lowered to 768 to fit the open-file limit 1024; raise the hard "
            "limit (LimitNOFILE= under systemd) to allow more",
        ),
    ]


def test_a_high_open_file_limit_keeps_max_connections(
    monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    monkeypatch.setattr(service_module, "raise_open_file_limit", lambda: 524288)
    service = make(max_connections=4000)
    assert service.fit_connections_to_open_files() == 4000
    assert not [e for e in log_events if e.get("log_level") == LogLevel.warn]


# -- the cluster directory (docs/cluster.md) ------------------------------------------------------
class _BoundPort:
    def __init__(self, port: int) -> None:
        self.port = port

    def getHost(self) -> Any:
        return self


def test_without_a_redis_url_the_hub_keeps_its_local_directory() -> None:
    from wcs.directory import LocalDirectory

    service = make()
    assert service.cluster is None
    assert isinstance(service.hub.directory, LocalDirectory) and service.hub.node == "local"
    assert service_module.re.fullmatch(r"[A-Za-z0-9._-]+-[0-9a-f]{6}", service.node_id)
    assert make().node_id != service.node_id


def test_a_redis_url_gives_the_hub_the_shared_directory_and_the_node_id() -> None:
    from wcs.cluster.directory import RedisStreamDirectory

    service = make(
        cluster_redis_url="redis://:s3cret@127.0.0.1:1/0", cluster_node_id="n1", ip="0.0.0.0"
    )
    assert isinstance(service.cluster, RedisStreamDirectory)
    assert service.hub.directory is service.cluster and service.hub.node == "n1"
    assert service.hub.owner("m") == "n1/m"
    assert "s3cret" not in service.cluster.url
    service.ports = {"http": _BoundPort(8081)}  # type: ignore[dict-item]
    assert service.advertise_url() == "http://127.0.0.1:8081"  # a wildcard ip: loopback
    record = service.node_record()
    assert record["url"] == "http://127.0.0.1:8081" and record["version"] == wcs.__version__
    assert record["streams"] == 0 and record["load"] >= 0.0 and record["started_ms"] > 0


def test_the_advertised_url_is_the_configured_one_or_the_bound_port_on_ip() -> None:
    service = make(ip="::1")
    service.ports = {"http": _BoundPort(9000)}  # type: ignore[dict-item]
    assert service.advertise_url() == "http://[::1]:9000"
    service.ports["cluster"] = _BoundPort(9100)  # type: ignore[assignment]
    assert service.advertise_url() == "http://[::1]:9100"  # a worker's private listener
    assert make(cluster_advertise_url="http://10.0.0.5:8081").advertise_url() == (
        "http://10.0.0.5:8081"
    )


def test_ready_says_degraded_while_the_directory_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wcs.rest.health import Degraded

    service = make(cluster_redis_url="redis://127.0.0.1:1")
    service.ports = {label: _BoundPort(1) for label in service.descriptions}  # type: ignore[misc]
    monkeypatch.setattr(service.pool, "started", True)
    assert service.not_ready_reason() is None
    assert service.cluster is not None
    monkeypatch.setattr(service.cluster, "degraded", lambda: "cluster directory unreachable: x")
    reason = service.not_ready_reason()
    assert isinstance(reason, Degraded) and reason == "cluster directory unreachable: x"


def test_a_cluster_node_is_ready_once_its_record_is_in_the_directory(
    monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    """The `wcs ready:` line waits for the directory's first refresh (the node record other
    nodes forward by): before, a node could be ready and not yet reachable through the
    cluster."""
    from twisted.internet.defer import Deferred, succeed

    monkeypatch.setattr(service_module, "raise_open_file_limit", lambda: 65536)
    reactor = MemoryReactorClock()
    cluster = {"ip": "127.0.0.1", "cluster_redis_url": "redis://127.0.0.1:1/0"}
    service = WCSService(Settings(**PORTS, wss_port=6, **cluster), reactor)  # type: ignore[arg-type]
    assert service.cluster is not None
    joined: Deferred[None] = Deferred()
    monkeypatch.setattr(service.cluster, "start", lambda: joined)
    monkeypatch.setattr(service.cluster, "stop", lambda: succeed(None))
    readies: list[bool] = []

    def ready() -> None:
        readies.append(True)

    monkeypatch.setattr(service, "_ready", ready)
    service.startService()
    try:
        # Not when the reactor runs (the other hooks set signal handlers: not run here)...
        assert ready not in reactor.whenRunningHooks
        assert readies == []
        joined.callback(None)  # ...but once the first refresh has written the record.
        assert readies == [True]
    finally:
        service.stopService()
        service.pool.stop()
