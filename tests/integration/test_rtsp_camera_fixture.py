"""The RTSP camera fixture, checked with ffmpeg as an independent client (TCP, UDP, auth)."""

from __future__ import annotations

import socket
import subprocess
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.integration.camera import (
    Camera,
    assert_same_picture,
    ffmpeg_grab,
    grab_frame,
    reference_rgb,
    start_camera,
)

pytestmark = pytest.mark.integration


def describe_status(cam: Camera) -> tuple[int, str]:
    """A bare DESCRIBE without credentials: (status code, WWW-Authenticate header or "")."""
    parts = urllib.parse.urlsplit(cam.url)
    with socket.create_connection((parts.hostname, cam.port), timeout=10) as sock:
        sock.sendall(f"DESCRIBE {cam.url} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 16384:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    auth = next((h.split(":", 1)[1].strip() for h in head if h.lower().startswith("www-auth")), "")
    return status, auth


@pytest.mark.parametrize(
    ("transport", "size"), [("tcp", "1280x720"), ("udp", "640x360"), ("tcp", "320x240")]
)
def test_ffmpeg_pulls_the_source_picture(transport: str, size: str) -> None:
    with start_camera(size=size) as cam:
        assert cam.url == f"rtsp://127.0.0.1:{cam.port}/stream1"
        assert describe_status(cam)[0] == 200
        rgb = grab_frame(cam.url, transport=transport)
    width, height = map(int, size.split("x"))
    assert rgb.shape == (height, width, 3)
    assert_same_picture(rgb, reference_rgb("smpte", size))
    # The comparison must be able to fail: a dimmer pattern and a black frame are told apart.
    with pytest.raises(AssertionError, match="pictures differ"):
        assert_same_picture(rgb, reference_rgb("smpte75", size))
    with pytest.raises(AssertionError, match="pictures differ"):
        assert_same_picture(rgb, np.zeros_like(rgb))


def test_pattern_and_path_are_served() -> None:
    with start_camera(path="/live/ch0", size="320x240", pattern="red", gop=10) as cam:
        assert cam.url.endswith("/live/ch0")
        rgb = grab_frame(cam.url)
        assert ffmpeg_grab(cam.url.replace("/live/ch0", "/nope")).rgb is None
    assert_same_picture(rgb, reference_rgb("red", (320, 240)))
    assert rgb[..., 0].mean() > 200 and rgb[..., 1:].mean() < 40


def test_two_clients_share_the_camera() -> None:
    with start_camera(size="320x240") as cam, ThreadPoolExecutor(2) as pool:
        grabs = list(pool.map(lambda t: grab_frame(cam.url, transport=t), ["tcp", "udp"]))
    ref = reference_rgb("smpte", "320x240")
    for rgb in grabs:
        assert_same_picture(rgb, ref)


def test_digest_auth() -> None:
    with start_camera(size="320x240", user="admin", password="s3cr:t@/x", digest=True) as cam:
        status, challenge = describe_status(cam)
        assert status == 401
        assert challenge.startswith("Digest ") and 'realm="IP Camera"' in challenge
        assert "s3cr" not in cam.url and "%3A" in cam.url_with_auth

        assert_same_picture(grab_frame(cam.url_with_auth), reference_rgb("smpte", "320x240"))
        wrong = ffmpeg_grab(cam.url_with_credentials("admin", "wrong"))
        assert wrong.rgb is None and "401" in wrong.stderr
        anonymous = ffmpeg_grab(cam.url)
        assert anonymous.rgb is None and "401" in anonymous.stderr


def test_basic_auth() -> None:
    with start_camera(size="320x240", user="viewer", password="pa ss", digest=False) as cam:
        status, challenge = describe_status(cam)
        assert status == 401 and challenge.startswith("Basic ")

        assert grab_frame(cam.url_with_auth, transport="udp").shape == (240, 320, 3)
        wrong = ffmpeg_grab(cam.url_with_credentials("viewer", "nope"))
        assert wrong.rgb is None and "401" in wrong.stderr


def test_restart_on_the_same_port() -> None:
    cam = start_camera(size="320x240")
    with cam:
        grab_frame(cam.url)
        # Killed while a client plays, as a camera reboots under a puller: the port must still
        # be free for the new process, despite the old connection.
        mark = cam.log_mark()
        play = ["ffmpeg", "-v", "error", "-nostdin", "-rtsp_transport", "tcp", "-i", cam.url]
        player = subprocess.Popen(
            [*play, "-f", "null", "-"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            cam.wait_for_log(r"client connected", start=mark)
            assert cam.stop() == 0, cam.log_tail()
            # ffmpeg notices the camera went away (EOF) and ends on its own.
            player.wait(timeout=20)
        finally:
            if player.poll() is None:
                player.kill()
                player.wait()
        assert ffmpeg_grab(cam.url, timeout=10).rgb is None
    with start_camera(port=cam.port, size="320x240") as again:
        assert again.url == cam.url
        assert_same_picture(grab_frame(again.url), reference_rgb("smpte", "320x240"))
        assert again.stop() == 0, again.log_tail()


def test_bad_pattern_fails_fast() -> None:
    with pytest.raises(RuntimeError, match="could not set property"):
        start_camera(pattern="no-such-pattern")
