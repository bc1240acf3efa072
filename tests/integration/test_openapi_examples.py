"""Every example of the OpenAPI document against a live server: each request example is sent
(with real ffmpeg streams for the names the examples use), and the answer must have the status of
the response example of the same name and fit that response's documented body and headers."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Clip, Server, publish, start_server
from tests.unit.openapi_doc import Exchange, document, exchanges, resolve, validate

pytestmark = pytest.mark.integration

DOC = document()
# The streams the examples name: H.264 video, audio only, and video WCS cannot decode (FLV1).
CAM = "cam1"
MIC = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-c:a", "aac"]
FLASH = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15", "-c:v", "flv1"]
CONFIG = "snapshot_taking_interval_ms=1000\n"
AUTH = "disable_rest_auth=false\nrest_auth_password=pw\n"


def order(key: tuple[str, str, str]) -> int:
    """Examples of an empty server first, the pull before its listing, the ends last."""
    _, path, name = key
    if name == "none":
        return 0
    if path == "/rest-api/rtsp/startup":
        return 1
    if name in ("byUri", "byName") and path.endswith("/terminate"):
        return 4 if path.startswith("/rest-api/stream") else 3
    return 2


def call(server: Server, ex: Exchange) -> tuple[int, dict[str, str], bytes]:
    url = server.http + ex.path
    if ex.query:
        url += "?" + urllib.parse.urlencode({k: str(v) for k, v in ex.query.items()})
    data = json.dumps(ex.body).encode() if ex.method == "POST" and ex.body is not None else None
    headers = {"Content-Type": "application/json", **ex.headers}
    req = urllib.request.Request(url, data=data, method=ex.method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


def check(server: Server, ex: Exchange) -> None:
    status, headers, body = call(server, ex)
    label = f"{ex.method} {ex.path} example {ex.name!r}"
    assert status == ex.status, f"{label}: {status} {body[:300]!r}"
    op = DOC["paths"][ex.path][ex.method.lower()]
    response = resolve(DOC, op["responses"][str(status)])
    content_type = headers.get("Content-Type", "")
    content = response.get("content", {})
    assert content_type in content, f"{label}: Content-Type {content_type!r} not documented"
    media = content[content_type]
    if content_type == "application/json":
        validate(DOC, media["schema"], json.loads(body))
    else:
        assert body, label
        # The example of that name is documented for this very image type.
        assert ex.name in media.get("examples", {}), f"{label}: answered {content_type}"
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, header in response.get("headers", {}).items():
        value = lowered.get(name.lower())
        if value is None:
            assert not header.get("required"), f"{label}: header {name} missing"
            continue
        schema = resolve(DOC, header["schema"])
        validate(DOC, header["schema"], int(value) if schema.get("type") == "integer" else value)


def wait_for(server: Server, name: str, state: str, timeout: float = 20.0) -> None:
    """Until /stream/find shows `name` with that video state (a condition, polled)."""
    deadline = time.monotonic() + timeout
    seen: object = None
    while time.monotonic() < deadline:
        status, seen = server.rest("/rest-api/stream/find", {"name": name})
        if status == 200 and isinstance(seen, list) and seen[0]["video"]["state"] == state:
            return
        threading.Event().wait(0.1)  # the poll's interval: the state has no event of its own
    raise AssertionError(f"{name} never reached video state {state}: {seen}")


@contextlib.contextmanager
def streams(server: Server, clip: Clip) -> Iterator[None]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, args in (
            (CAM, ["-stream_loop", "-1", "-i", str(clip.path), "-c", "copy"]),
            ("mic1", MIC),
            ("flash1", FLASH),
        ):
            mark = server.log_mark()
            procs.append(publish(server.rtmp(name), extra_input=args))
            server.wait_for_log(rf"publishing {re.escape(name)} ", start=mark)
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=10)


def test_every_example_against_a_live_server(tmp_path: Path, clips: dict[str, Clip]) -> None:
    every = exchanges(DOC)
    unauthorized = {k: ex for k, ex in every.items() if ex.name == "unauthorized"}
    live = sorted((k for k in every if k not in unauthorized), key=order)
    server = start_server(tmp_path, CONFIG)
    try:
        for key in [k for k in live if order(k) == 0]:
            check(server, every[key])
        with streams(server, clips["baseline"]):
            wait_for(server, CAM, "ok")
            wait_for(server, "flash1", "unsupported_codec")
            for key in [k for k in live if order(k) > 0]:
                check(server, every[key])
    finally:
        assert server.stop() == 0
    assert len(live) > 30

    # The 401s, from a server with REST auth on (the document itself still needs none).
    (tmp_path / "auth").mkdir()
    secured = start_server(tmp_path / "auth", AUTH)
    try:
        assert unauthorized
        for ex in unauthorized.values():
            check(secured, ex)
        check(secured, every[("GET", "/rest-api/openapi.json", "document")])
    finally:
        assert secured.stop() == 0
