"""SIGHUP's reload (wcs.reload, WCSService.reload): live keys reach the REST site, the WebSocket
origin check, RTSP auth, the gate and the log filter; restart keys keep their running values;
an invalid file changes nothing."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent

from tests.unit.rest_client import Connection, raw_request
from wcs.config import ConfigError, Settings
from wcs.hooks import NoHooks, RestHooks
from wcs.logs import LevelFilter
from wcs.reload import LIVE_KEYS, changed_keys
from wcs.service import WCSService
from wcs.snapshot.auto import AutoSnapshotter
from wcs.web.origin import OriginPolicy

AUTH = {"disable_rest_auth": False, "rest_auth_password": "pw"}


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def make(**settings: object) -> WCSService:
    ports = {"http_port": 1, "https_port": None, "rtmp_port": 3, "rtsp_port": 4, "ws_port": 5}
    service = WCSService(Settings(**{**ports, "wss_port": None, **settings}), Clock())  # type: ignore[arg-type]
    service._make_factories()
    return service


def status(service: WCSService, path: str, user: str | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()} if user else {}
    conn = Connection(service.sites[0])
    conn.send(raw_request("GET", path, None, headers))
    response = conn.response()
    assert response is not None
    return response.status


def reload_with(service: WCSService, settings: Settings) -> None:
    service.reload_source = lambda: settings
    service.reload()


def messages(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if str(e.get("log_namespace")) == "wcs.service"]


def test_changed_keys_split_live_and_restart() -> None:
    old = Settings()
    new = dataclasses.replace(
        old, rest_auth_password="x", log_level="debug", http_port=1, https_cert="c"
    )
    assert changed_keys(old, new) == (
        ["rest_auth_password", "log_level"],
        ["http.port", "https.cert"],
    )
    assert changed_keys(old, old) == ([], [])
    assert "log_format" not in LIVE_KEYS and "rtmp.port" not in LIVE_KEYS


def test_rest_auth_turned_on_and_off(log_events: list[LogEvent]) -> None:
    service = make()
    assert status(service, "/rest-api/stream/find_all") == 404
    reload_with(service, dataclasses.replace(service.settings, **AUTH))  # type: ignore[arg-type]
    assert "config reloaded: disable_rest_auth, rest_auth_password" in messages(log_events)
    assert status(service, "/rest-api/stream/find_all") == 401
    assert status(service, "/rest-api/stream/find_all", "admin:pw") == 404
    # A path answered by a resource made per request reads the new settings too.
    assert status(service, "/rest-api/stream/nosuch/x") in (401, 404)
    assert service.rtsp_factory is not None and service.rtsp_factory.play_auth is not None
    assert service.rtsp_factory.play_auth.password == "pw"
    reload_with(service, dataclasses.replace(service.settings, disable_rest_auth=True))
    assert status(service, "/rest-api/stream/find_all") == 404
    assert service.rtsp_factory.play_auth is None


def test_metrics_auth_follows_the_reloaded_rest_auth_and_its_own_key(
    log_events: list[LogEvent],
) -> None:
    service = make()
    reload_with(service, dataclasses.replace(service.settings, **AUTH))  # type: ignore[arg-type]
    assert status(service, "/metrics") == 401
    assert status(service, "/metrics", "admin:pw") == 200
    reload_with(service, dataclasses.replace(service.settings, metrics_auth=False))
    assert "config reloaded: metrics_auth" in messages(log_events)
    assert status(service, "/metrics") == 200
    assert status(service, "/rest-api/stream/find_all") == 401


def test_cors_origin_reaches_answers_origin_checks_and_the_websocket() -> None:
    service = make()
    reload_with(
        service,
        dataclasses.replace(service.settings, rest_access_control_allow_origin="https://a.example"),
    )
    conn = Connection(service.sites[0])
    conn.send(raw_request("GET", "/rest-api/stream/find_all"))
    response = conn.response()
    assert response is not None
    assert response.header("Access-Control-Allow-Origin") == "https://a.example"
    assert service.sites[0].refusal_headers == (
        (b"Access-Control-Allow-Origin", b"https://a.example"),
    )
    # WebSocket upgrades from pages: the CORS origin is now the one foreign origin allowed.
    ws_origins = service.sites[1].resource.origins
    assert isinstance(ws_origins, OriginPolicy)
    assert ws_origins.refusal(b"https://a.example", b"localhost:5") is None
    assert ws_origins.refusal(b"https://b.example", b"localhost:5") is not None


def test_publish_password_hooks_and_log_level() -> None:
    service = make()
    service.log_filter = LevelFilter()
    new = dataclasses.replace(
        service.settings,
        publish_password="secret",
        rest_hook_url="http://127.0.0.1:9/rest",
        rest_hook_timeout_ms=500,
        log_level="warn",
    )
    reload_with(service, new)
    assert service.access.publish_password == "secret"
    assert isinstance(service.access.hooks, RestHooks)
    assert service.access.hooks.timeout == 0.5
    assert service.log_filter.level == LogLevel.warn
    assert service.rtsp_factory is not None and service.rtsp_factory.publish_auth is not None
    reload_with(service, dataclasses.replace(new, rest_hook_url=None))
    assert isinstance(service.access.hooks, NoHooks)


def test_restart_keys_are_logged_and_keep_their_running_value(log_events: list[LogEvent]) -> None:
    service = make()
    reload_with(service, dataclasses.replace(service.settings, rtmp_port=1935, max_connections=100))
    assert service.settings.rtmp_port == 3 and service.settings.max_connections == 4000
    assert messages(log_events) == ["config keys ignored until restart: rtmp.port, max_connections"]
    warnings = [e for e in log_events if e.get("log_level") == LogLevel.warn]
    assert len(warnings) == 1


def test_an_invalid_file_changes_nothing(log_events: list[LogEvent]) -> None:
    service = make()
    before = service.settings

    def broken() -> Settings:
        raise ConfigError("wcs.properties: bad value for http.port: '80a' (expected a port)")

    service.reload_source = broken
    service.reload()
    assert service.settings is before
    assert messages(log_events) == [
        "config not reloaded, the running settings stay: wcs: configuration error: "
        "wcs.properties: bad value for http.port: '80a' (expected a port)"
    ]
    assert status(service, "/rest-api/stream/find_all") == 404


def test_without_a_config_file_sighup_says_so(log_events: list[LogEvent]) -> None:
    service = make()
    service.reload()
    assert messages(log_events) == ["SIGHUP: no configuration file (--config) to reload"]


def test_an_unchanged_file_says_no_changes(log_events: list[LogEvent]) -> None:
    service = make()
    reload_with(service, service.settings)
    assert messages(log_events) == ["config reloaded: no changes"]


def test_auto_snapshot_rate_and_retention(tmp_path: Path) -> None:
    service = make()
    service.auto = AutoSnapshotter(
        service.hub, service.snapshots, root=tmp_path, rate=30, retention=20, encode=lambda f: b""
    )
    reload_with(
        service,
        dataclasses.replace(service.settings, snapshot_auto_rate=5, snapshot_auto_retention=3),
    )
    assert (service.auto.rate, service.auto.retention) == (5, 3)
    assert service.settings.snapshot_auto_rate == 5
