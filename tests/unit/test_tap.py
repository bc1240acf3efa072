"""`twistd wcs` entry point: options, configuration errors, unknown keys, reactor choice.

makeService() and install_reactor() touch the global reactor, so in this process makeService runs
with install_reactor replaced by a Clock; the real reactor choice is tested in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.python import usage

from tests.unit.fakes import NO_LISTENERS, tap_options
from wcs import tap
from wcs.service import WCSService

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- options ------------------------------------------------------------------------------------


def test_options_config() -> None:
    assert tap_options()["config"] is None
    assert tap_options("--config", "/etc/wcs/flashphoner.properties")["config"] == (
        "/etc/wcs/flashphoner.properties"
    )
    assert tap_options("--config=a.properties")["config"] == "a.properties"
    assert tap_options("-c", "b.properties")["config"] == "b.properties"


def test_options_refuse_unknown_flags_and_arguments() -> None:
    with pytest.raises(usage.UsageError):
        tap_options("--nope")
    with pytest.raises(usage.UsageError):
        tap_options("--config")
    with pytest.raises(usage.UsageError):
        tap_options("stray-argument")


# -- makeService --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("snapshot_auto_rate=abc", "snapshot_auto_rate"),
        ("http.port=99999", "http.port"),
        ("snapshot_auto_naming=byDate", "snapshot_auto_naming"),
        ("disable_rest_auth=maybe", "disable_rest_auth"),
        ("ip=999.1.1.1", "ip"),
        ("snapshot_taking_attempts=0", "snapshot_taking_attempts"),
    ],
)
def test_bad_config_value_stops_with_the_key_named(
    fake_reactor: Clock, tmp_path: Path, line: str, key: str
) -> None:
    config = tmp_path / "flashphoner.properties"
    config.write_text(f"# comment\nhttp.port=8081\n{line}\n")
    with pytest.raises(SystemExit) as info:
        tap.makeService(tap_options("--config", str(config)))
    message = str(info.value.code)
    assert key in message
    assert str(config) in message


def test_missing_config_file_stops(fake_reactor: Clock, tmp_path: Path) -> None:
    missing = tmp_path / "nope.properties"
    with pytest.raises(SystemExit) as info:
        tap.makeService(tap_options("--config", str(missing)))
    assert str(missing) in str(info.value.code)


def test_unknown_keys_are_logged_and_ignored(
    fake_reactor: Clock, tmp_path: Path, log_events: list[LogEvent]
) -> None:
    config = tmp_path / "flashphoner.properties"
    config.write_text(NO_LISTENERS + "snapshot_auto_rate=7\nfoo.bar=1\nsnapshot_auto_rate_typo=3\n")
    service = tap.makeService(tap_options("--config", str(config)))
    assert isinstance(service, WCSService)
    assert service.reactor is fake_reactor
    assert service.settings.snapshot_auto_rate == 7
    assert service.settings.http_port is None
    assert service.descriptions == {}
    assert not service.running
    warnings = [e for e in log_events if e.get("log_level") == LogLevel.warn and "key" in e]
    assert sorted(e["key"] for e in warnings) == ["foo.bar", "snapshot_auto_rate_typo"]
    for event in warnings:
        assert event["key"] in formatEvent(event)
    assert list(tmp_path.iterdir()) == [config]  # nothing written at start-up


def test_no_config_gives_the_defaults(fake_reactor: Clock, log_events: list[LogEvent]) -> None:
    service = tap.makeService(tap_options())
    assert isinstance(service, WCSService)
    assert service.settings.http_port == 8081
    assert set(service.descriptions) >= {"http", "rtmp"}
    assert not [e for e in log_events if e.get("log_level") == LogLevel.warn and "key" in e]


def test_ephemeral_ports_bind_every_enabled_listener_to_a_port_the_os_picks(
    fake_reactor: Clock, tmp_path: Path
) -> None:
    assert not tap_options()["ephemeral-ports"]
    config = tmp_path / "flashphoner.properties"
    config.write_text("ip=127.0.0.1\nhttp.port=8081\nws.port=0\nwss.port=\n")
    service = tap.makeService(tap_options("--config", str(config), "--ephemeral-ports"))
    assert isinstance(service, WCSService)
    s = service.settings
    assert (s.http_port, s.https_port, s.rtmp_port, s.rtsp_port) == (0, 0, 0, 0)
    assert (s.ws_port, s.wss_port) == (None, None)  # disabled in the file: still disabled
    assert service.descriptions == {
        label: "tcp:0:interface=127.0.0.1" for label in ("http", "https", "rtmp", "rtsp")
    }


# -- the reactor, in subprocesses ---------------------------------------------------------------


def test_install_reactor_installs_asyncio_on_uvloop_when_none_is_installed(
    tmp_path: Path,
) -> None:
    code = (
        "import sys\n"
        "assert 'twisted.internet.reactor' not in sys.modules\n"
        "from wcs.tap import install_reactor\n"
        "r = install_reactor()\n"
        "from twisted.internet import reactor\n"
        "from twisted.internet.asyncioreactor import AsyncioSelectorReactor\n"
        "print(type(r).__name__, isinstance(r, AsyncioSelectorReactor), r is reactor)\n"
        "print(install_reactor() is r, type(r._asyncioEventloop).__module__)\n"
        "r.callLater(0, r.stop)\n"
        "r.run()\n"
        "print('ran')\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "AsyncioSelectorReactor",
        "True",
        "True",
        "True",
        "uvloop",
        "ran",
    ]


def test_install_reactor_accepts_a_preinstalled_asyncio_reactor(tmp_path: Path) -> None:
    code = (
        "from twisted.internet import asyncioreactor\n"
        "asyncioreactor.install()\n"
        "from twisted.internet import reactor\n"
        "from wcs.tap import install_reactor\n"
        "print(install_reactor() is reactor)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"]


def test_install_reactor_refuses_another_reactor(tmp_path: Path) -> None:
    code = (
        "from twisted.internet import selectreactor\n"
        "selectreactor.install()\n"
        "from wcs.tap import install_reactor\n"
        "install_reactor()\n"
        "print('not refused')\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode != 0
    assert "not refused" not in result.stdout
    assert "Traceback" not in result.stderr  # a SystemExit message, not a crash
    assert "SelectReactor" in result.stderr
    assert "asyncio" in result.stderr


def test_twistd_with_a_bad_value_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "flashphoner.properties"
    config.write_text(NO_LISTENERS + "snapshot_auto_rate=abc\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "wcs", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "snapshot_auto_rate" in output
    assert "abc" in output
    assert "Traceback" not in output
