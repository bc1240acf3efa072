"""A raising reader next to a healthy one (real ffmpeg peers): the faulty RTSP player alone is
closed; the RTMP publisher keeps publishing and a second player keeps getting frames."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration import faulty_wcs
from tests.integration.conftest import (
    Clip,
    Server,
    best_match,
    check_fresh,
    decode_png,
    make_clip,
    publishing,
    start_server,
)

pytestmark = pytest.mark.integration

# The server, with its first RTSP player's reader raising (run as a script: this process's
# Player is left alone).
LAUNCHER = [sys.executable, faulty_wcs.__file__]
FRAMES = 10


@pytest.fixture
def faulty_server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path, launcher=LAUNCHER)
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, "server did not exit cleanly on SIGTERM:\n" + "\n".join(srv.lines[-30:])


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    # Long enough that the publisher is still sending when the last check runs on a busy machine.
    path = tmp_path_factory.mktemp("isolation") / "long.flv"
    return make_clip(path, bframes=False, audio=True, size="640x360", seconds=30)


def rtsp_player(url: str, *out: str) -> subprocess.Popen[bytes]:
    """ffmpeg playing `url` over interleaved TCP into `out`."""
    cmd = ["ffmpeg", "-v", "error", "-y", "-rtsp_transport", "tcp", "-i", url, *out]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def test_raising_reader_is_detached_publisher_and_other_player_carry_on(
    faulty_server: Server, long_clip: Clip
) -> None:
    server = faulty_server
    clip = long_clip
    with publishing(server, "iso", clip.path) as (publisher, t0):
        status, found = server.rest("/rest-api/stream/find", {"name": "iso"})
        assert status == 200 and isinstance(found, list) and len(found) == 1
        msid = found[0]["mediaSessionId"]

        # 1. The first player's reader raises on its first live unit (see faulty_wcs).
        mark = server.log_mark()
        first = rtsp_player(server.rtsp("iso"), "-f", "null", "-")
        try:
            server.wait_for_log(r"RTSP [\d.]+:\d+: playing iso over TCP", start=mark)
            server.wait_for_log(
                r"stream iso: a reader failed and is detached \(RuntimeError: "
                + re.escape(faulty_wcs.FAULT)
                + r"\); the publisher and other readers carry on",
                start=mark,
            )
            server.wait_for_log(
                r"RTSP [\d.]+:\d+: closing connection: playing iso failed: RuntimeError: "
                + re.escape(faulty_wcs.FAULT),
                start=mark,
            )
            # The server closed its connection: ffmpeg ends long before the 30 s stream does.
            first.wait(timeout=20)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert publisher.poll() is None, "the publisher must keep streaming"

        # 2. A second player gets decodable frames of the same stream.
        mark = server.log_mark()
        frames = server.workdir / "frames"
        frames.mkdir()
        second = rtsp_player(server.rtsp("iso"), "-frames:v", str(FRAMES), str(frames / "%02d.png"))
        try:
            _, err = second.communicate(timeout=30)
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()
        assert second.returncode == 0, err
        server.wait_for_log(r"RTSP [\d.]+:\d+: playing iso over TCP", start=mark)
        pictures = sorted(frames.glob("*.png"))
        assert len(pictures) == FRAMES
        for picture in (pictures[0], pictures[-1]):
            rgb = np.asarray(Image.open(picture).convert("RGB"))
            assert rgb.shape == (clip.height, clip.width, 3)
            index, psnr = best_match(clip, rgb)
            assert psnr > 30, f"{picture.name} matches no source frame (best {index}, {psnr:.1f})"

        # 3. The publisher kept publishing: the same stream, and a live picture after the fault.
        assert publisher.poll() is None, "the publisher must keep streaming"
        status, found = server.rest("/rest-api/stream/find", {"name": "iso"})
        assert status == 200 and isinstance(found, list) and len(found) == 1
        assert found[0]["mediaSessionId"] == msid
        assert found[0]["published"] is True and found[0]["status"] == "PUBLISHING"
        status, body = server.snapshot("iso")
        assert status == 200 and isinstance(body, dict)
        rgb = decode_png(body["data"])
        assert rgb.std() > 20, "a flat (grey) picture"
        # The snapshot shows a frame sent now, well after the fault (not a GOP cached before it).
        check_fresh(server, clip, "iso", t0, [time.monotonic() - t0 + 0.2])

        # One reader failed, once; nothing else went wrong, and the publisher was never dropped.
        log = "\n".join(server.lines)
        assert len(re.findall(r"a reader failed and is detached", log)) == 1
        assert not re.search(r"RTMP [\d.]+:\d+: closing connection", log), log
        assert "Unhandled Error" not in log and "on_error failed" not in log
        assert log.count("Traceback (most recent call last)") == 1  # the guard's own report
        assert publisher.poll() is None
