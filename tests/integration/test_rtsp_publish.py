"""RTSP publish (ANNOUNCE/SETUP/RECORD) by real ffmpeg and GStreamer -> REST snapshots of it."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import (
    FPS,
    Clip,
    Server,
    best_match,
    check_fresh,
    decode_png,
    make_clip,
    read_until_closed,
    wait_until,
)

pytestmark = pytest.mark.integration


def ffmpeg_rtsp(url: str, clip: Path, transport: str) -> subprocess.Popen[bytes]:
    """ffmpeg as an RTSP encoder (ANNOUNCE/RECORD) sending `clip` in real time, not re-encoded."""
    cmd = ["ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy"]
    cmd += ["-f", "rtsp", "-rtsp_transport", transport, url]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def gst_rtsp(url: str, clip: Path, protocols: str) -> subprocess.Popen[bytes]:
    """GStreamer's rtspclientsink publishing the clip's H.264 (paced by the pipeline clock)."""
    cmd = ["gst-launch-1.0", "-q", "filesrc", f"location={clip}", "!", "flvdemux", "name=d"]
    cmd += ["d.video", "!", "queue", "!", "h264parse", "!", "rtspclientsink"]
    cmd += [f"protocols={protocols}", f"location={url}"]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@contextlib.contextmanager
def rtsp_publishing(
    server: Server, name: str, proc: subprocess.Popen[bytes], transport: str
) -> Iterator[float]:
    """Wait until the server records `name` over `transport`; yields that monotonic time."""
    mark = server.log_mark()
    try:
        server.wait_for_log(
            rf"RTSP [\d.]+:\d+: publishing {re.escape(name)} \(app live\) over {transport}",
            start=mark,
        )
        yield time.monotonic()
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


def check_stream(server: Server, name: str, clip: Clip, audio: bool) -> None:
    status, found = server.rest("/rest-api/stream/find", {"name": name})
    assert status == 200 and isinstance(found, list) and len(found) == 1
    stream = found[0]
    assert stream["mediaProvider"] == "RTSP" and stream["published"] is True
    assert (stream["width"], stream["height"]) == (clip.width, clip.height)
    assert stream["videoCodec"] == "H264"
    assert stream["hasAudio"] is audio
    if audio:
        assert stream["audioCodec"] == "AAC"


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_ffmpeg_publish_snapshot_is_live_frame(
    server: Server, clips: dict[str, Clip], transport: str
) -> None:
    clip = clips["bframes_audio"]
    proc = ffmpeg_rtsp(server.rtsp("cam2"), clip.path, transport)
    with rtsp_publishing(server, "cam2", proc, transport.upper()) as t0:
        check_fresh(server, clip, "cam2", t0, [1.0, 3.1, 4.6])
        check_stream(server, "cam2", clip, audio=True)
        assert proc.poll() is None


@pytest.mark.parametrize("protocols", ["tcp", "udp"])
def test_gstreamer_rtspclientsink_snapshot(
    server: Server, clips: dict[str, Clip], protocols: str
) -> None:
    check = subprocess.run(["gst-inspect-1.0", "rtspclientsink"], capture_output=True)
    assert check.returncode == 0, "rtspclientsink missing: install gstreamer1.0-rtsp"
    clip = clips["baseline"]
    proc = gst_rtsp(server.rtsp("gst"), clip.path, protocols)
    with rtsp_publishing(server, "gst", proc, protocols.upper()) as t0:
        # Pixels and liveness; how fresh a snapshot is is the ffmpeg tests' business (GStreamer's
        # own start-up time varies too much on a busy machine to check it to half a second).
        seen = []
        for offset in (1.0, 3.0):
            wait_until(t0 + offset)
            status, body = server.snapshot("gst")
            assert status == 200 and isinstance(body, dict)
            rgb = decode_png(body["data"])
            assert rgb.shape == (clip.height, clip.width, 3)
            index, psnr = best_match(clip, rgb)
            assert psnr > 30, f"snapshot matches no source frame well (best {index}, {psnr:.1f})"
            seen.append(index)
        assert seen[1] >= seen[0] + FPS, f"the picture does not move on: frames {seen}"
        check_stream(server, "gst", clip, audio=False)


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    path = tmp_path_factory.mktemp("rtsp") / "short.flv"
    return make_clip(path, bframes=False, audio=False, size="640x360", seconds=3)


def test_second_publisher_is_refused_first_keeps_working(
    server: Server, clips: dict[str, Clip]
) -> None:
    clip = clips["baseline"]
    first = ffmpeg_rtsp(server.rtsp("taken"), clip.path, "tcp")
    with rtsp_publishing(server, "taken", first, "TCP"):
        mark = server.log_mark()
        second = ffmpeg_rtsp(server.rtsp("taken", app="other"), clip.path, "udp")
        _, err = second.communicate(timeout=20)
        assert second.returncode != 0
        assert b"403" in err and b"Stream name is already in use" in err
        server.wait_for_log(
            r"RTSP [\d.]+:\d+: publish of 'taken' refused: Stream name is already in use",
            start=mark,
        )
        assert first.poll() is None, "the first publisher must keep streaming"
        status, body = server.snapshot("taken")
        assert status == 200 and isinstance(body, dict)
        rgb = decode_png(body["data"])
        assert best_match(clip, rgb)[1] > 30


def test_teardown_at_end_of_clip_ends_the_stream(server: Server, short_clip: Clip) -> None:
    mark = server.log_mark()
    proc = ffmpeg_rtsp(server.rtsp("short"), short_clip.path, "tcp")
    server.wait_for_log(r"publishing short \(app live\) over TCP", start=mark)
    status, body = server.snapshot("short")
    assert status == 200 and isinstance(body, dict)
    assert decode_png(body["data"]).shape == (360, 640, 3)
    assert proc.wait(timeout=20) == 0
    server.wait_for_log(r"RTSP [\d.]+:\d+: TEARDOWN of short", start=mark)
    server.wait_for_log(r"stream short ended: Stopped by publisher stop", start=mark)
    status, _ = server.snapshot("short")
    assert status == 404
    status, found = server.rest("/rest-api/stream/find", {"name": "short"})
    assert status == 404 or found == []


def test_killed_encoder_ends_the_stream(server: Server, clips: dict[str, Clip]) -> None:
    mark = server.log_mark()
    proc = ffmpeg_rtsp(server.rtsp("killed"), clips["baseline"].path, "udp")
    try:
        server.wait_for_log(r"publishing killed \(app live\) over UDP", start=mark)
        status, _ = server.snapshot("killed")
        assert status == 200
    finally:
        proc.send_signal(signal.SIGKILL)  # no TEARDOWN: only the TCP connection closes
        proc.wait(timeout=10)
    server.wait_for_log(r"stream killed ended: Stopped by publisher stop", start=mark)
    status, _ = server.snapshot("killed")
    assert status == 404


def test_garbage_clients_are_disconnected_others_keep_working(
    server: Server, clips: dict[str, Clip]
) -> None:
    clip = clips["baseline"]
    proc = ffmpeg_rtsp(server.rtsp("healthy"), clip.path, "tcp")
    with rtsp_publishing(server, "healthy", proc, "TCP"):
        cases = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"RTSP/1.0 400 ", "not an RTSP version"),
            (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX: " + b"a" * 17000, b"RTSP/1.0 4", "exceeds"),
            (b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", b"RTSP/1.0 505 ", "unsupported version"),
        ]
        for garbage, answer, reason in cases:
            mark = server.log_mark()
            with socket.create_connection(("127.0.0.1", server.ports["rtsp"]), timeout=10) as s:
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    s.sendall(garbage)
                got = read_until_closed(s)
            assert got.startswith(answer), got[:80]
            server.wait_for_log(
                rf"RTSP 127\.0\.0\.1:\d+: closing connection: bad RTSP message: .*{reason}",
                start=mark,
            )
        # A well-formed client in the wrong state gets status codes, not a disconnect.
        with socket.create_connection(("127.0.0.1", server.ports["rtsp"]), timeout=10) as s:
            s.sendall(b"RECORD rtsp://127.0.0.1/live/healthy RTSP/1.0\r\nCSeq: 7\r\n\r\n")
            reply = s.recv(4096)
            assert reply.startswith(b"RTSP/1.0 455 ") and b"CSeq: 7\r\n" in reply
        assert proc.poll() is None
        status, body = server.snapshot("healthy")
        assert status == 200 and isinstance(body, dict)
        assert best_match(clip, decode_png(body["data"]))[1] > 30


def test_ffmpeg_plays_a_live_stream_over_rtsp(server: Server, clips: dict[str, Clip]) -> None:
    """DESCRIBE/SETUP/PLAY: ffmpeg (UDP first, then TCP after our 461) decodes the live picture."""
    clip = clips["bframes_audio"]
    proc = ffmpeg_rtsp(server.rtsp("show"), clip.path, "tcp")
    with rtsp_publishing(server, "show", proc, "TCP"):
        out = server.workdir / "played.png"
        mark = server.log_mark()
        player = subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", server.rtsp("show"), "-frames:v", "1", str(out)],
            capture_output=True,
            timeout=30,
        )
        assert player.returncode == 0, player.stderr
        server.wait_for_log(r"RTSP [\d.]+:\d+: playing show over TCP", start=mark)
        rgb = np.asarray(Image.open(out).convert("RGB"))
        assert rgb.shape == (clip.height, clip.width, 3)
        assert best_match(clip, rgb)[1] > 30
        server.wait_for_log(r"RTSP [\d.]+:\d+: TEARDOWN of show", start=mark)
        assert proc.poll() is None, "a player leaving does not stop the publisher"


def test_player_ends_when_the_stream_ends(server: Server, short_clip: Clip) -> None:
    mark = server.log_mark()
    proc = ffmpeg_rtsp(server.rtsp("brief"), short_clip.path, "tcp")
    server.wait_for_log(r"publishing brief \(app live\) over TCP", start=mark)
    cmd = ["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i", server.rtsp("brief")]
    player = subprocess.Popen(
        [*cmd, "-f", "null", "-"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server.wait_for_log(r"playing brief over TCP", start=mark)
        assert proc.wait(timeout=20) == 0
        server.wait_for_log(r"RTSP [\d.]+:\d+: brief ended, closing the player", start=mark)
        player.wait(timeout=20)
    finally:
        if player.poll() is None:
            player.kill()
            player.wait()
