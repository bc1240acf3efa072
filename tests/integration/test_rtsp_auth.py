"""RTSP playback credentials with real clients against a real `twistd wcs` with REST auth on
(disable_rest_auth=false): ffmpeg and GStreamer play a stream ffmpeg publishes with the REST
credentials (Digest), and are refused with a wrong password or none; publishing stays open.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, start_server

pytestmark = pytest.mark.integration

USER, PASSWORD = "admin", "s3:cr@t"


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[Server]:
    extra = f"disable_rest_auth=false\nrest_auth_user={USER}\nrest_auth_password={PASSWORD}\n"
    server = start_server(tmp_path, extra)
    try:
        yield server
    finally:
        assert server.stop() == 0


def url(server: Server, name: str, credentials: str = "") -> str:
    return f"rtsp://{credentials}127.0.0.1:{server.ports['rtsp']}/live/{name}"


@pytest.fixture
def publisher(auth_server: Server) -> Iterator[str]:
    """ffmpeg publishing over RTSP without credentials (ANNOUNCE stays open)."""
    mark = auth_server.log_mark()
    cmd = ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"]
    cmd += ["-t", "60", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0"]
    cmd += ["-pix_fmt", "yuv420p", "-f", "rtsp", "-rtsp_transport", "tcp"]
    proc = subprocess.Popen(
        [*cmd, url(auth_server, "cam")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        auth_server.wait_for_log(r"publishing cam \(app live\) over TCP", start=mark)
        yield "cam"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def play(url: str) -> subprocess.CompletedProcess[str]:
    cmd = ["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i", url]
    cmd += ["-frames:v", "10", "-f", "null", "-"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def quoted(text: str) -> str:
    return text.replace(":", "%3A").replace("@", "%40")


def test_ffmpeg_plays_with_the_password_and_is_refused_without(
    auth_server: Server, publisher: str
) -> None:
    """Finding 9: with REST auth on, RTSP playback needed nothing."""
    credentials = f"{USER}:{quoted(PASSWORD)}@"
    mark = auth_server.log_mark()
    done = play(url(auth_server, publisher, credentials))
    assert done.returncode == 0, done.stderr
    auth_server.wait_for_log(r"playing cam over TCP", start=mark)

    mark = auth_server.log_mark()
    refused = play(url(auth_server, publisher))
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr
    wrong = play(url(auth_server, publisher, f"{USER}:guess@"))
    assert wrong.returncode != 0 and "401" in wrong.stderr, wrong.stderr
    auth_server.wait_for_log(r"RTSP authentication failed \(realm wcs\): ", start=mark)
    assert not any("playing cam" in line for line in auth_server.lines[mark:])
    # The refusals cost the publisher nothing.
    done = play(url(auth_server, publisher, credentials))
    assert done.returncode == 0, done.stderr


def gst_play(url: str, user: str, password: str) -> subprocess.CompletedProcess[str]:
    cmd = ["gst-launch-1.0", "-q", "rtspsrc", f"location={url}", "protocols=tcp"]
    cmd += [f"user-id={user}", f"user-pw={password}", "!", "rtph264depay", "!", "h264parse"]
    cmd += ["!", "identity", "eos-after=10", "!", "fakesink"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_gstreamer_plays_with_the_password_and_is_refused_without(
    auth_server: Server, publisher: str
) -> None:
    mark = auth_server.log_mark()
    done = gst_play(url(auth_server, publisher), USER, PASSWORD)
    assert done.returncode == 0, done.stderr
    auth_server.wait_for_log(r"playing cam over TCP", start=mark)
    mark = auth_server.log_mark()
    wrong = gst_play(url(auth_server, publisher), USER, "guess")
    assert wrong.returncode != 0 and "Unauthorized" in wrong.stderr + wrong.stdout
    # rtspsrc answers every challenge with the same wrong password: a few, then it is closed.
    auth_server.wait_for_log(r"closing connection: 5 failed logins on this connection", start=mark)
    assert not any("playing cam" in line for line in auth_server.lines[mark:])
