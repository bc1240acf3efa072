"""Camera pull end to end: a real gst-rtsp-server camera pulled by `twistd wcs` over /rtsp/startup,
checked through REST snapshots against the camera's own picture."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.integration.camera import (
    Camera,
    assert_same_picture,
    grab_frame,
    reference_rgb,
    start_camera,
)
from tests.integration.conftest import Server, decode_png, start_server

pytestmark = pytest.mark.integration

SIZE = "640x360"
REF_TOLERANCE = 14.0


@pytest.fixture(scope="module")
def smpte() -> np.ndarray:
    return reference_rgb("smpte", SIZE)


@pytest.fixture
def camera() -> Iterator[Camera]:
    with start_camera(size=SIZE, gop=15) as cam:
        yield cam


def startup(server: Server, uri: str, to_stream: str | None = None) -> tuple[int, object]:
    body = {"uri": uri} if to_stream is None else {"uri": uri, "toStream": to_stream}
    return server.rest("/rest-api/rtsp/startup", body)


def wait_playing(server: Server, name: str, start: int = 0, timeout: float = 20.0) -> None:
    server.wait_for_log(
        rf"RTSP pull {re.escape(name)}: media flowing", start=start, timeout=timeout
    )


def snapshot_rgb(server: Server, name: str) -> np.ndarray:
    status, body = server.snapshot(name)
    assert status == 200, body
    assert isinstance(body, dict)
    return decode_png(body["data"])


def find(server: Server, name: str) -> dict[str, object]:
    status, body = server.rest("/rest-api/stream/find", {"name": name})
    assert status == 200, body
    assert isinstance(body, list) and len(body) == 1
    return body[0]


def test_startup_snapshot_find_terminate(server: Server, camera: Camera, smpte: np.ndarray) -> None:
    mark = server.log_mark()
    status, pull = startup(server, camera.url, "door")
    assert status == 200, pull
    assert isinstance(pull, dict)
    assert pull["uri"] == camera.url and pull["localStreamName"] == "door"
    assert pull["status"] in ("PENDING", "PLAYING") and pull["mediaProvider"] == "RTSP"
    wait_playing(server, "door", mark)

    rgb = snapshot_rgb(server, "door")
    assert rgb.shape == (camera.height, camera.width, 3)
    assert_same_picture(rgb, smpte, tolerance=REF_TOLERANCE)
    # ...and the same picture an independent client (ffmpeg) pulls from the camera.
    assert_same_picture(rgb, grab_frame(camera.url), tolerance=REF_TOLERANCE)

    stream = find(server, "door")
    assert stream["mediaProvider"] == "RTSP" and stream["status"] == "PLAYING"
    assert (stream["width"], stream["height"]) == (camera.width, camera.height)
    assert stream["videoCodec"] == "H264" and stream["mediaSessionId"] == pull["mediaSessionId"]

    status, pulls = server.rest("/rest-api/rtsp/find_all", method="GET")
    assert status == 200 and isinstance(pulls, list)
    assert [(p["uri"], p["localStreamName"], p["status"]) for p in pulls] == [
        (camera.url, "door", "PLAYING")
    ]

    # A second pull into the taken name is refused; the first one is untouched.
    status, err = startup(server, camera.url, "door")
    assert status == 409 and isinstance(err, dict)
    assert err["message"] == "Stream name is already in use"

    mark = server.log_mark()
    status, _ = server.rest("/rest-api/rtsp/terminate", {"uri": camera.url})
    assert status == 200
    server.wait_for_log(r"RTSP pull door: stopped", start=mark)
    # The camera session was closed with TEARDOWN (our client logs the camera's answer).
    server.wait_for_log(r"RTSP client .*: TEARDOWN answered 200", start=mark)
    assert server.snapshot("door")[0] == 404
    assert server.rest("/rest-api/stream/find", {"name": "door"})[0] == 404
    assert server.rest("/rest-api/rtsp/find_all")[0] == 404
    assert server.rest("/rest-api/rtsp/terminate", {"uri": camera.url})[0] == 404


def test_default_name_and_uri_as_stream_name(server: Server, camera: Camera) -> None:
    mark = server.log_mark()
    status, pull = startup(server, camera.url)
    assert status == 200 and isinstance(pull, dict)
    parts = urllib.parse.urlsplit(camera.url)
    name = f"{parts.netloc}{parts.path.replace('/', '_')}"
    assert pull["localStreamName"] == name
    wait_playing(server, name, mark)
    # WCS users snapshot a pulled camera by its URI: that works too.
    assert snapshot_rgb(server, camera.url).shape == (camera.height, camera.width, 3)
    assert snapshot_rgb(server, name).shape == (camera.height, camera.width, 3)
    # /stream/terminate of the stream stops the pull.
    mark = server.log_mark()
    assert server.rest("/rest-api/stream/terminate", {"name": name})[0] == 200
    server.wait_for_log(rf"RTSP pull {re.escape(name)}: stopped", start=mark)
    assert server.rest("/rest-api/rtsp/find_all")[0] == 404


@pytest.mark.parametrize("uri", ["http://127.0.0.1/x", "rtsp://", "rtsp://h:99999/x", "x" * 10])
def test_bad_uri_is_400(server: Server, uri: str) -> None:
    status, err = startup(server, uri)
    assert status == 400 and isinstance(err, dict) and err["status"] == 400


def test_digest_auth(server: Server, smpte: np.ndarray) -> None:
    with start_camera(size=SIZE, gop=15, user="admin", password="s3cr:t@/x") as cam:
        mark = server.log_mark()
        status, pull = startup(server, cam.url_with_auth, "authcam")
        assert status == 200 and isinstance(pull, dict)
        assert pull["uri"] == cam.url  # the password is never shown...
        wait_playing(server, "authcam", mark)
        assert_same_picture(snapshot_rgb(server, "authcam"), smpte, tolerance=REF_TOLERANCE)

        mark = server.log_mark()
        status, pull = startup(server, cam.url_with_credentials("admin", "n0t-th3-pw"), "badauth")
        assert status == 200
        server.wait_for_log(r"RTSP pull badauth: .*401.*reconnecting in", start=mark)
        status, pulls = server.rest("/rest-api/rtsp/find_all")
        assert status == 200 and isinstance(pulls, list)
        bad = next(p for p in pulls if p["localStreamName"] == "badauth")
        assert bad["status"] == "FAILED" and "401" in str(bad["info"])
        assert find(server, "badauth")["status"] == "FAILED"
        # ...nor logged.
        assert not any("s3cr" in line or "n0t-th3-pw" in line for line in server.lines)
        assert server.rest("/rest-api/rtsp/terminate", {"toStream": "badauth"})[0] == 200
        assert server.rest("/rest-api/rtsp/terminate", {"toStream": "authcam"})[0] == 200


def test_camera_restart_reconnects(server: Server, smpte: np.ndarray) -> None:
    cam = start_camera(size=SIZE, gop=15, pattern="smpte")
    port = cam.port
    try:
        mark = server.log_mark()
        assert startup(server, cam.url, "cam")[0] == 200
        wait_playing(server, "cam", mark)
        assert_same_picture(snapshot_rgb(server, "cam"), smpte, tolerance=REF_TOLERANCE)

        mark = server.log_mark()
        assert cam.stop() == 0
        server.wait_for_log(r"RTSP pull cam: .*reconnecting in", start=mark)
        stream = find(server, "cam")
        assert stream["status"] == "RECONNECTING"
        # No picture from before the drop: the snapshot times out instead.
        status, err = server.snapshot("cam")
        assert status == 500 and isinstance(err, dict)
        assert err["message"] == "Snapshot response timeout"
    finally:
        cam.stop()

    # The camera comes back on the same port showing something else: the pull reconnects and
    # the snapshot shows the new picture.
    with start_camera(port=port, size=SIZE, gop=15, pattern="red") as again:
        mark = server.log_mark()
        wait_playing(server, "cam", mark, timeout=40)
        assert find(server, "cam")["status"] == "PLAYING"
        rgb = snapshot_rgb(server, "cam")
        assert_same_picture(rgb, reference_rgb("red", SIZE), tolerance=REF_TOLERANCE)
        mark = server.log_mark()
        assert server.rest("/rest-api/rtsp/terminate", {"uri": again.url})[0] == 200
        server.wait_for_log(r"RTSP pull cam: stopped", start=mark)


def test_server_stop_sends_teardown(tmp_path: Path) -> None:
    with start_camera(size="320x240", gop=15) as cam:
        srv = start_server(tmp_path)
        try:
            mark = srv.log_mark()
            assert startup(srv, cam.url, "cam")[0] == 200
            wait_playing(srv, "cam", mark)
        finally:
            code = srv.stop()
        assert code == 0, "\n".join(srv.lines[-30:])
        assert any(re.search(r"TEARDOWN answered 200", line) for line in srv.lines), "\n".join(
            srv.lines[-30:]
        )
        assert not any("reconnecting in" in line for line in srv.lines)
