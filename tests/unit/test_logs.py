"""log_level and log_format: the keys, the level filter, the JSON lines, the observer handed to
twistd, and the did-you-mean hint for misspelt keys."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from twisted.application.service import Application
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, PredicateResult, formatEvent
from twisted.python.failure import Failure

from tests.unit.fakes import NO_LISTENERS, tap_options
from wcs import tap
from wcs.config import ConfigError, Settings, settings_from_properties, suggest_key
from wcs.logs import LEVELS, LevelFilter, build_observer, event_as_json
from wcs.service import WCSService


def event(level: LogLevel, **fields: object) -> LogEvent:
    return {"log_level": level, "log_namespace": "wcs.test", "log_format": "x", **fields}


# -- the keys -----------------------------------------------------------------------------------


def test_defaults_are_info_and_text() -> None:
    assert (Settings().log_level, Settings().log_format) == ("info", "text")


@pytest.mark.parametrize("value", ["debug", "info", "warn", "error", "WARN"])
def test_log_level_values(value: str) -> None:
    settings, _ = settings_from_properties({"log_level": value})
    assert settings.log_level == value.lower()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("log_level", "verbose", "debug or info or warn or error"),
        ("log_format", "xml", "text or json"),
    ],
)
def test_bad_log_values_name_the_choices(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_properties({key: value})
    assert str(info.value) == f"bad value for {key}: {value!r} (expected {expected})"


@pytest.mark.parametrize(
    ("unknown", "meant"),
    [
        ("snapshot_auto_enable", "snapshot_auto_enabled"),
        ("snapshot_auto_enabeld", "snapshot_auto_enabled"),
        ("rest_auth_pasword", "rest_auth_password"),
        ("http_port", "http.port"),
        ("Log_Level", "log_level"),
        ("snapshot_auto_rate_typo", None),  # 5 edits
        ("ipp", None),  # a short key of ours is only ever matched exactly
        ("rtmp.stream_name", None),
        ("x" * 10_000, None),
    ],
)
def test_suggest_key(unknown: str, meant: str | None) -> None:
    assert suggest_key(unknown) == meant


def test_a_misspelt_key_warns_with_the_key_meant(
    fake_reactor: Clock,
    tmp_path: Path,
    log_events: list[LogEvent],
) -> None:
    config = tmp_path / "flashphoner.properties"
    config.write_text(NO_LISTENERS + "snapshot_auto_enable=true\nfoo.bar=1\n")
    tap.makeService(tap_options("--config", str(config)))
    warnings = [formatEvent(e) for e in log_events if e.get("log_level") == LogLevel.warn]
    assert warnings == [
        "unknown configuration key foo.bar ignored",
        "unknown configuration key snapshot_auto_enable ignored "
        "(did you mean snapshot_auto_enabled?)",
    ]


# -- the filter ---------------------------------------------------------------------------------


def test_level_filter_drops_below_its_level_and_follows_changes() -> None:
    keep = LevelFilter(LEVELS["info"])
    assert keep(event(LogLevel.debug)) is PredicateResult.no
    assert keep(event(LogLevel.info)) is PredicateResult.maybe
    keep.level = LEVELS["warn"]
    assert keep(event(LogLevel.info)) is PredicateResult.no
    assert keep(event(LogLevel.warn)) is PredicateResult.maybe
    assert keep(event(LogLevel.critical)) is PredicateResult.maybe
    # What scripts wait for is never filtered.
    assert keep(event(LogLevel.info, log_always=True)) is PredicateResult.maybe
    keep.level = LEVELS["debug"]
    assert keep(event(LogLevel.debug)) is PredicateResult.maybe


# -- JSON ---------------------------------------------------------------------------------------


def captured(logger: Logger) -> list[LogEvent]:
    events: list[LogEvent] = []
    logger.observer = events.append  # type: ignore[assignment]
    return events


def test_json_line_has_the_text_and_the_structured_fields() -> None:
    log = Logger(namespace="wcs.streams")
    events = captured(log)
    log.warn(
        "stream {stream_name} ended: {reason}",
        stream_name="cam1",
        reason="Stopped by publisher stop",
        frames=12,
        raw=b"\xffab",
        peer=("127.0.0.1", 5),
        obj=object(),
    )
    line = event_as_json(events[0])
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert list(record)[:4] == ["time", "level", "namespace", "text"]
    assert record["level"] == "warn"
    assert record["namespace"] == "wcs.streams"
    assert record["text"] == "stream cam1 ended: Stopped by publisher stop"
    assert record["stream_name"] == "cam1" and record["frames"] == 12
    assert record["raw"] == "\ufffdab" and record["peer"] == ["127.0.0.1", 5]
    assert record["obj"].startswith("<object object")
    assert record["time"].endswith("+00:00")
    assert not any(key.startswith("log_") for key in record)


def test_json_line_carries_a_failure_traceback() -> None:
    log = Logger(namespace="wcs.rest")
    events = captured(log)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("REST {path} failed", path="/x")
    record = json.loads(event_as_json(events[0]))
    assert record["level"] == "critical"
    assert "ZeroDivisionError" in record["traceback"]
    assert record["path"] == "/x"


def test_json_line_of_a_legacy_event() -> None:
    # As twisted.python.log.msg() makes it (the HTTP access log).
    legacy: LogEvent = {
        "message": ('"127.0.0.1" - - "GET /health HTTP/1.1" 200',),
        "isError": 0,
        "system": "-",
        "time": 1.0,
        "log_level": LogLevel.info,
        "log_namespace": "twisted.python.log",
        "log_format": "{log_text}",
        "log_text": '"127.0.0.1" - - "GET /health HTTP/1.1" 200',
        "log_time": 1.0,
    }
    record = json.loads(event_as_json(legacy))
    assert record == {
        "time": "1970-01-01T00:00:01.000+00:00",
        "level": "info",
        "namespace": "twisted.python.log",
        "text": '"127.0.0.1" - - "GET /health HTTP/1.1" 200',
    }
    failure = Failure(ValueError("bad"))
    assert (
        "ValueError" in json.loads(event_as_json({**legacy, "log_failure": failure}))["traceback"]
    )


# -- the observer twistd's application uses -----------------------------------------------------


def twistd_tap_options(**values: object) -> dict[str, object]:
    return {"logfile": None, "nodaemon": True, "syslog": False, "prefix": "twisted", **values}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_observer_writes_to_stdout_behind_the_filter(
    monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    keep = LevelFilter(LEVELS["warn"])
    observer = build_observer(twistd_tap_options(logfile="-"), log_format, keep)
    log = Logger(namespace="wcs.test", observer=observer)
    log.info("hidden {n}", n=1)
    log.warn("shown {n}", n=2)
    keep.level = LEVELS["debug"]
    log.debug("now shown {n}", n=3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    if log_format == "json":
        assert [json.loads(line)["text"] for line in lines] == ["shown 2", "now shown 3"]
    else:
        assert "[wcs.test#warn] shown 2" in lines[0]
        assert "[wcs.test#debug] now shown 3" in lines[1]


def test_json_observer_writes_to_the_logfile(tmp_path: Path) -> None:
    path = tmp_path / "wcs.log"
    observer = build_observer(twistd_tap_options(logfile=str(path)), "json", LevelFilter())
    Logger(namespace="wcs.test", observer=observer).info("to a file {n}", n=1)
    assert json.loads(path.read_text())["text"] == "to a file 1"


def test_json_refuses_syslog_and_a_daemon_on_stdout() -> None:
    with pytest.raises(SystemExit):
        build_observer(twistd_tap_options(syslog=True), "json", LevelFilter())
    with pytest.raises(SystemExit):
        build_observer(twistd_tap_options(logfile="-", nodaemon=False), "json", LevelFilter())


def test_under_twistd_the_service_hands_its_observer_to_the_application(
    fake_reactor: Clock,
    tmp_path: Path,
) -> None:
    config = tmp_path / "flashphoner.properties"
    config.write_text(NO_LISTENERS + "log_level=error\nlog_format=json\n")
    opts = tap_options("--config", str(config))
    opts.parent = twistd_tap_options(logfile="-", logger=None)  # type: ignore[assignment]
    service = tap.makeService(opts)
    assert isinstance(service, WCSService)
    assert service.log_filter is not None and service.log_filter.level == LogLevel.error
    assert service.log_observer is not None
    application = Application("wcs")
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver) is service.log_observer
    # Without twistd (makeService called directly) nothing is installed.
    plain = tap.makeService(tap_options("--config", str(config)))
    assert isinstance(plain, WCSService) and plain.log_observer is None
