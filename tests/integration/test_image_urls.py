"""Snapshots at image URLs with real peers: ffmpeg publishing over RTMP, a gst-rtsp-server camera
pulled over RTSP, plain HTTP clients (http.client, urllib) as a dashboard or go2rtc client uses."""

from __future__ import annotations

import io
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.integration.camera import Camera, assert_same_picture, reference_rgb, start_camera
from tests.integration.conftest import (
    FPS,
    Clip,
    Server,
    best_match,
    publish,
    publishing,
    wait_until,
)
from tests.integration.conftest import (
    http_get as get,
)

pytestmark = pytest.mark.integration


def rgb_of(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def test_a_dashboard_gets_the_live_picture_as_a_small_jpeg(
    server: Server, clips: dict[str, Clip]
) -> None:
    clip = clips["bframes_audio"]  # 1280x720, B-frames, GOP 2 s
    with publishing(server, "cam", clip.path) as (_, t0):
        for offset in (1.2, 3.3):
            wait_until(t0 + offset)
            sent = time.monotonic() - t0
            asked_ms = time.time() * 1000
            status, headers, body = get(
                server, "/rest-api/stream/snapshot?streamName=cam&format=jpeg&width=320"
            )
            assert status == 200, body[:300]
            assert headers["content-type"] == "image/jpeg"
            assert headers["cache-control"] == "no-store"
            rgb = rgb_of(body)
            assert rgb.shape == (180, 320, 3)
            index, psnr = best_match(clip, np.asarray(Image.fromarray(rgb).resize((1280, 720))))
            assert psnr > 24, f"matches no source frame (best {index}, {psnr:.1f} dB)"
            assert index >= FPS * sent - 15, f"stale: frame {index} at {sent:.2f} s"
            # Taken within the last moments, by the server's own clock.
            taken = int(headers["x-frame-timestamp"])
            assert asked_ms - 2000 < taken < time.time() * 1000 + 500
            assert 0 <= int(headers["x-frame-age-ms"]) < 2000
            assert headers["etag"].startswith('"') and headers["last-modified"].endswith("GMT")
        # A WebP of the same stream, chosen by the Accept header a browser's <img> sends.
        status, headers, body = get(
            server,
            "/rest-api/stream/snapshot?streamName=cam&height=360",
            {"Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"},
        )
        assert status == 200 and headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(body)).size == (640, 360)


def test_a_poller_with_max_age_and_etag_gets_304_until_the_picture_changes(
    server: Server, clips: dict[str, Clip]
) -> None:
    clip = clips["baseline"]
    with publishing(server, "poll", clip.path):
        path = "/rest-api/stream/snapshot?streamName=poll&format=jpeg&width=160&maxAge=60000"
        status, headers, first = get(server, path)
        assert status == 200 and len(first) > 0
        etag = headers["etag"]
        status, headers, body = get(server, path, {"If-None-Match": etag})
        assert status == 304 and body == b"" and headers["etag"] == etag
        # Without a max age the newest picture is decoded: 30 fps, so a new one by now.
        fresh = path.replace("maxAge=60000", "maxAge=0")
        status, headers, body = get(server, fresh, {"If-None-Match": etag})
        assert status == 200 and headers["etag"] != etag and body


def test_reasons_and_parameter_errors(server: Server) -> None:
    status, headers, body = get(server, "/rest-api/stream/snapshot?streamName=ghost")
    assert status == 404 and headers["x-snapshot-error"] == "stream_not_found"
    assert b'"code":"stream_not_found"' in body
    mark = server.log_mark()
    radio = publish(
        server.rtmp("radio"),
        extra_input=["-f", "lavfi", "-i", "sine=frequency=440", "-c:a", "aac"],
    )
    try:
        server.wait_for_log(r"publishing radio ", start=mark)
        status, headers, body = get(server, "/api/frame.jpeg?src=radio")
        assert status == 409 and headers["x-snapshot-error"] == "no_video", body[:300]
        status, headers, body = get(server, "/rest-api/stream/snapshot?streamName=radio&width=9")
        assert status == 400 and b'"message":"width must be' in body
    finally:
        radio.terminate()
        radio.wait(timeout=10)


@pytest.fixture
def camera() -> Iterator[Camera]:
    with start_camera(size="640x360", gop=15) as cam:
        yield cam


def test_go2rtc_frame_url_of_a_pulled_camera_by_its_rtsp_uri(
    server: Server, camera: Camera
) -> None:
    mark = server.log_mark()
    status, pull = server.rest("/rest-api/rtsp/startup", {"uri": camera.url, "toStream": "door"})
    assert status == 200, pull
    server.wait_for_log(r"RTSP pull door: media flowing", start=mark)
    # go2rtc's client asks by source; here the source is the camera's URI.
    url = f"{server.http}/api/frame.jpeg?src={urllib.parse.quote(camera.url, safe='')}"
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg"
        rgb = rgb_of(response.read())
    assert rgb.shape == (360, 640, 3)
    assert_same_picture(rgb, reference_rgb("smpte", "640x360"), tolerance=16.0)
    assert re.fullmatch(r"\d+", response.headers["X-Frame-Timestamp"])
