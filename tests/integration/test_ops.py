"""Operating a real `twistd wcs`: /health and /ready, the version everywhere it is shown, log
level and JSON logs, and SIGHUP reloading the configuration file."""

from __future__ import annotations

import base64
import json
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
