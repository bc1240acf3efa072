"""The Dockerfile's HEALTHCHECK command, run as Docker would run it (its exit status is the
verdict), against a real HTTP server on loopback: 0 for a 200 from /health, not 0 for an error
status or nothing listening."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dockerfile
import pytest

from tests.integration.conftest import start_server
from wcs.config import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = type(self).status if self.path == "/health" else 404
        body = b'{"status":"ok"}' if code == 200 else b'{"status":"starting"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health() -> Iterator[tuple[ThreadingHTTPServer, type[Health]]]:
    handler = type("HealthHandler", (Health,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def healthcheck(port: int) -> int:
    """The exit status of the HEALTHCHECK command, aimed at `port` instead of http.port."""
    (check,) = [
        c for c in dockerfile.parse_file(str(REPO / "Dockerfile")) if c.cmd == "HEALTHCHECK"
    ]
    program, *args = check.value[1:]  # after "CMD"
    assert program == "python"  # the image's interpreter; here this venv's
    default = f"127.0.0.1:{Settings().http_port}/"
    assert any(default in a for a in args), args
    args = [a.replace(default, f"127.0.0.1:{port}/") for a in args]
    return subprocess.run([sys.executable, *args], capture_output=True, timeout=30).returncode


def test_healthy_when_health_answers_200(health: tuple[ThreadingHTTPServer, type[Health]]) -> None:
    server, _ = health
    assert healthcheck(server.server_address[1]) == 0


@pytest.mark.parametrize("status", [503, 500, 401])
def test_unhealthy_on_an_error_status(
    health: tuple[ThreadingHTTPServer, type[Health]], status: int
) -> None:
    server, handler = health
    handler.status = status
    assert healthcheck(server.server_address[1]) != 0


def test_unhealthy_when_nothing_listens(health: tuple[ThreadingHTTPServer, type[Health]]) -> None:
    server, _ = health
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    assert healthcheck(port) != 0


def test_the_image_healthcheck_passes_against_a_real_server_with_rest_auth(tmp_path: Path) -> None:
    """The command sends no credentials: /health must answer without them."""
    server = start_server(tmp_path, "disable_rest_auth=false\nrest_auth_password=secret\n")
    try:
        assert healthcheck(server.ports["http"]) == 0
    finally:
        server.stop()
    assert healthcheck(server.ports["http"]) != 0  # stopped: unhealthy
