"""Operating a real `twistd wcs`: /health and /ready, the version everywhere it is shown, log
level and JSON logs, and SIGHUP reloading the configuration file."""

from __future__ import annotations

import base64
import json
import re
import signal
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import wcs
from tests.integration.conftest import start_server
from twisted import copyright

pytestmark = pytest.mark.integration


def get(url: str, auth: str | None = None) -> tuple[int, dict[str, str], object]:
    # The self-signed certificate of the HTTPS listener: trusted here, the probe is the point.
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_health_ready_and_version_on_a_live_server(tmp_path: Path) -> None:
    # REST auth on: the probes still answer without credentials, /rest-api/version does not.
    server = start_server(tmp_path, "disable_rest_auth=false\nrest_auth_password=pw\n")
    try:
        ready = server.wait_for_log(r"wcs ready: .* \(pid \d+\) version (\S+)")
        assert ready[1] == wcs.__version__
        for base in (server.http, server.https):
            status, headers, body = get(base + "/health")
            assert (status, body) == (200, {"status": "ok"})
            assert headers["Server"] == f"wcs/{wcs.__version__} TwistedWeb/{copyright.version}"
            status, _, body = get(base + "/ready")
            assert (status, body) == (200, {"status": "ready"})
        status, headers, _ = get(server.http + "/rest-api/version")
        assert status == 401
        assert headers["Server"].startswith(f"wcs/{wcs.__version__} ")
        status, _, body = get(server.http + "/rest-api/version", auth="admin:pw")
        assert (status, body) == (200, {"version": wcs.__version__})
    finally:
        assert server.stop() == 0


LEVEL = re.compile(r"^\S+ \[[^\]#]+#(\w+)\] ")


def test_json_logs_are_one_object_per_line_with_the_fields(tmp_path: Path) -> None:
    server = start_server(tmp_path, "log_format=json\nsnapshot_auto_enable=true\n")
    try:
        status, _, _ = get(server.http + "/rest-api/stream/find_all")
        assert status == 404
        # The access-log line of that request: a legacy twisted.python.log event.
        server.wait_for_log(r"find_all HTTP/1\.1\\?\" 404")
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.lines if line.strip()]
    assert records and all(isinstance(r, dict) for r in records)
    ready = next(r for r in records if r["text"].startswith("wcs ready: "))
    assert ready["level"] == "info" and ready["namespace"] == "wcs.service"
    assert ready["pid"] == server.proc.pid and ready["version"] == wcs.__version__
    assert ready["ports"] == ", ".join(f"{k}={v}" for k, v in server.ports.items())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", ready["time"])
    unknown = next(r for r in records if "snapshot_auto_enable" in r["text"])
    assert unknown["level"] == "warn"
    assert unknown["key"] == "snapshot_auto_enable"
    assert unknown["suggestion"] == "snapshot_auto_enabled"


def test_log_level_warn_hides_info_lines(tmp_path: Path) -> None:
    server = start_server(tmp_path, "log_level=warn\nsnapshot_auto_enable=true\n")
    try:
        assert get(server.http + "/health")[0] == 200
        # A warning after the request: the request's info access-log line would be before it.
        get(server.http + "/rest-api/stream/find_all", auth="admin:wrong")
        mark = server.log_mark()
        server.wait_for_log(
            r"unknown configuration key snapshot_auto_enable ignored "
            r"\(did you mean snapshot_auto_enabled\?\)"
        )
    finally:
        assert server.stop() == 0
    assert mark > 0
    levels = {}
    for line in server.lines:
        m = LEVEL.match(line)
        if m and "wcs ready: " not in line:
            levels[line] = m[1]
    assert levels and set(levels.values()) <= {"warn", "error", "critical"}, levels
    assert not any("open-file limit" in line or "GET /health" in line for line in server.lines)


def test_sighup_reloads_live_keys_and_refuses_an_invalid_file(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    config = tmp_path / "flashphoner.properties"
    find_all = server.http + "/rest-api/stream/find_all"
    try:
        assert get(find_all)[0] == 404  # no REST auth: straight to "Streams not found"
        config.write_text(
            "ip=127.0.0.1\ndisable_rest_auth=false\nrest_auth_password=pw\n"
            "max_connections=100\nsnapshot_auto_enable=true\nlog_level=warn\n"
        )
        mark = server.log_mark()
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(
            r"config reloaded: disable_rest_auth, rest_auth_password, log_level$", start=mark
        )
        server.wait_for_log(r"config keys ignored until restart: max_connections$", start=mark)
        server.wait_for_log(r"snapshot_auto_enable ignored \(did you mean", start=mark)
        assert server.proc.poll() is None
        assert get(find_all)[0] == 401
        assert get(find_all, auth="admin:pw")[0] == 404

        config.write_text("ip=127.0.0.1\nhttp.port=80a\n")
        mark = server.log_mark()
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(
            r"config not reloaded, the running settings stay: wcs: configuration error: "
            r".*flashphoner\.properties: bad value for http\.port: '80a'",
            start=mark,
        )
        assert server.proc.poll() is None
        assert get(find_all)[0] == 401  # the old settings stay
        assert get(find_all, auth="admin:pw")[0] == 404
    finally:
        assert server.stop() == 0
    # log_level=warn from the first reload on: no more access-log (info) lines.
    after = server.lines[server.lines.index(next(x for x in server.lines if "log_level" in x)) :]
    assert not [x for x in after if "GET /rest-api/stream/find_all" in x], after
    assert any("GET /rest-api/stream/find_all" in x for x in server.lines[:mark])
