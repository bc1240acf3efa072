"""GStreamer as the RTMP encoder: rtmpsink (librtmp, the stack OBS grew up on) and rtmp2sink."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import Server, decode_png

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 640, 360
CAPS = f"video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=30/1"


def gst(*pipeline: str) -> list[str]:
    return ["gst-launch-1.0", "-q", *" ! ".join(pipeline).split()]


@pytest.fixture(scope="module")
def smpte_reference(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The test pattern as GStreamer renders it, straight to PNG (no encoder in between)."""
    out = tmp_path_factory.mktemp("gst") / "ref.png"
    subprocess.run(
        gst(
            "videotestsrc pattern=smpte num-buffers=1",
            CAPS,
            "videoconvert",
            "video/x-raw,format=RGB",
            "pngenc",
            f"filesink location={out}",
        ),
        check=True,
        timeout=60,
    )
    return np.asarray(Image.open(io.BytesIO(Path(out).read_bytes())).convert("RGB"))


@contextlib.contextmanager
def gst_publishing(server: Server, name: str, sink: str, bframes: int) -> Iterator[None]:
    url = server.rtmp(name)
    # One argv element: gst-launch quotes it, so librtmp gets its "URL live=1" option string.
    location = f"location={url} live=1" if sink == "rtmpsink" else f"location={url}"
    pipeline = [
        "videotestsrc pattern=smpte is-live=true",
        CAPS,
        f"x264enc key-int-max=60 bframes={bframes} speed-preset=veryfast",
        "h264parse",
        "flvmux streamable=true",
        sink,
    ]
    cmd = [*gst(*pipeline), location]
    mark = server.log_mark()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        server.wait_for_log(rf"publishing {re.escape(name)} ", start=mark)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of the SMPTE pattern without its bottom-right corner, which videotestsrc fills with
    noise that differs from frame to frame (the reference is the first frame; a snapshot taken
    a frame later is just as right)."""
    keep = np.ones(a.shape[:2], dtype=bool)
    keep[a.shape[0] * 3 // 4 :, a.shape[1] * 3 // 4 - 16 :] = False
    diff = a.astype(np.float64)[keep] - b.astype(np.float64)[keep]
    mse = float((diff**2).mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-9))


@pytest.mark.parametrize(("sink", "bframes"), [("rtmpsink", 0), ("rtmp2sink", 2)])
def test_gstreamer_publish_snapshot_matches_pattern(
    server: Server, smpte_reference: np.ndarray, sink: str, bframes: int
) -> None:
    name = f"gst_{sink}"
    with gst_publishing(server, name, sink, bframes):
        server.wait_for_log(rf"{name} video H.264 {WIDTH}x{HEIGHT}")
        status, body = server.snapshot(name)
        assert status == 200, body
        assert isinstance(body, dict)
        rgb = decode_png(body["data"])
        assert rgb.shape == (HEIGHT, WIDTH, 3)
        assert psnr(rgb, smpte_reference) > 30
