"""WCSService wiring: every listener is counted by the one connection limiter, TLS listeners get
the checked pair and the handshake guard, and the cap is fitted to the open-file limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory

from wcs import service as service_module
from wcs.config import Settings
from wcs.limits import LimitedFactory
from wcs.service import WCSService
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
    factories: dict[str, Any] = {lst.label: lst._make_factory() for lst in service.listeners}
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
    https = next(lst for lst in service.listeners if lst.label == "https")
    with pytest.raises(SystemExit) as info:
        https._make_factory()
    message = str(info.value.code)
    assert cert in message and key in message
    assert "do not match" in message


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
