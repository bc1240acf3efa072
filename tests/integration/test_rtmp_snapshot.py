"""RTMP publish by real ffmpeg -> REST snapshots of the live picture, over HTTP and HTTPS."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    Clip,
    Server,
    check_fresh,
    decode_png,
    publish,
    publishing,
    read_until_closed,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_bframes_with_audio_snapshot_is_live_frame(server: Server, clips: dict[str, Clip]) -> None:
    clip = clips["bframes_audio"]
    with publishing(server, "cam1", clip.path) as (_, t0):
        check_fresh(server, clip, "cam1", t0, [1.0, 3.1, 3.5, 5.2, 6.7, 6.8])
        status, found = server.rest("/rest-api/stream/find", {"name": "cam1"})
        assert status == 200 and isinstance(found, list) and len(found) == 1
        stream = found[0]
        assert stream["width"] == 1280 and stream["height"] == 720
        assert stream["videoCodec"] == "H264" and stream["audioCodec"] == "AAC"
        assert stream["hasAudio"] is True and stream["mediaProvider"] == "Flash"
        assert stream["published"] is True and stream["status"] == "PUBLISHING"


def test_baseline_snapshot_is_live_frame(server: Server, clips: dict[str, Clip]) -> None:
    clip = clips["baseline"]
    with publishing(server, "cam2", clip.path) as (_, t0):
        check_fresh(server, clip, "cam2", t0, [0.8, 2.9, 4.5])


def test_https_snapshot_through_real_tls(server: Server, clips: dict[str, Clip]) -> None:
    clip = clips["baseline"]
    context = ssl.create_default_context(cafile=str(server.workdir / "tls" / "server.crt"))
    with publishing(server, "secure", clip.path) as (_, _t0):
        status, body = server.snapshot("secure", base=server.https, context=context)
        assert status == 200
        assert isinstance(body, dict)
        assert decode_png(body["data"]).shape == (720, 1280, 3)
    # The same certificate is reused, not regenerated, by the next start in this directory.
    assert (server.workdir / "tls" / "server.key").stat().st_mode & 0o077 == 0


def test_unknown_stream_is_404_in_wcs_shape(server: Server) -> None:
    status, body = server.snapshot("nosuchstream")
    assert status == 404
    assert isinstance(body, dict)
    assert body["status"] == 404 and body["message"] == "Stream not found"
    assert body["error"] == "Not Found" and body["path"] == "/rest-api/stream/snapshot"
    assert body["exception"].startswith("com.flashphoner.rest.server.exception.")
    assert f"ts: {body['timestamp']}, path: /rest-api/stream/snapshot" in body["reason"]


def test_audio_only_times_out_with_500(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, "snapshot_taking_interval_ms=1200\nsnapshot_taking_attempts=6\n"
    )
    try:
        mark = server.log_mark()
        proc = publish(
            server.rtmp("radio"),
            extra_input=["-f", "lavfi", "-i", "sine=frequency=440", "-c:a", "aac"],
        )
        try:
            server.wait_for_log(r"publishing radio ", start=mark)
            started = time.monotonic()
            status, body = server.snapshot("radio")
            elapsed = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        assert status == 500
        assert body == {
            "exception": "com.flashphoner.rest.server.exception.InternalErrorException",
            "reason": "com.flashphoner.rest.server.exception.InternalErrorException, "
            f"Internal Server Error, Snapshot response timeout, ts: {body['timestamp']}, "  # type: ignore[index]
            "path: /rest-api/stream/snapshot",
            "path": "/rest-api/stream/snapshot",
            "error": "Internal Server Error",
            "message": "Snapshot response timeout",
            "timestamp": body["timestamp"],  # type: ignore[index]
            "status": 500,
            "code": "no_video",  # why, machine-readable: the one field WCS does not send
        }
        assert 1.1 <= elapsed < 3.0
    finally:
        assert server.stop() == 0


def test_second_publisher_of_live_name_is_refused(server: Server, clips: dict[str, Clip]) -> None:
    clip = clips["baseline"]
    with publishing(server, "taken", clip.path) as (first, _t0):
        mark = server.log_mark()
        second = publish(server.rtmp("taken"), clip.path)
        second.communicate(timeout=20)
        assert second.returncode != 0
        server.wait_for_log(
            r"publish of 'taken' refused: Stream name is already in use", start=mark
        )
        assert first.poll() is None, "the first publisher must keep streaming"
        status, _ = server.snapshot("taken")
        assert status == 200


def test_garbage_on_rtmp_port_closes_only_that_connection(
    server: Server, clips: dict[str, Clip]
) -> None:
    clip = clips["baseline"]
    with publishing(server, "healthy", clip.path) as (first, _t0):
        for garbage in (b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 8, b"GET / HTTP/1.1\r\n\r\n"):
            mark = server.log_mark()
            with socket.create_connection(("127.0.0.1", server.ports["rtmp"]), timeout=10) as s:
                s.sendall(garbage)
                assert read_until_closed(s) == b""  # closed by the server, nothing sent back
            server.wait_for_log(
                r"closing connection: bad handshake: unsupported RTMP version", start=mark
            )
        # A valid handshake followed by a broken chunk stream.
        mark = server.log_mark()
        with socket.create_connection(("127.0.0.1", server.ports["rtmp"]), timeout=10) as s:
            s.sendall(b"\x03" + bytes(1536))
            got = b""
            while len(got) < 3073:
                chunk = s.recv(65536)
                assert chunk
                got += chunk
            s.sendall(bytes(1536) + b"\x43\x00\x00\x00\x00\x00\x10\x14")  # fmt1 on an unknown csid
            read_until_closed(s)
        server.wait_for_log(r"closing connection: ChunkError", start=mark)
        assert first.poll() is None
        status, body = server.snapshot("healthy")
        assert status == 200 and isinstance(body, dict)


def test_terminate_disconnects_the_publisher(server: Server, clips: dict[str, Clip]) -> None:
    clip = clips["baseline"]
    with publishing(server, "bye", clip.path) as (proc, _):
        status, found = server.rest("/rest-api/stream/find", {"name": "bye"})
        assert status == 200 and isinstance(found, list)
        status, _ = server.rest(
            "/rest-api/stream/terminate", {"mediaSessionId": found[0]["mediaSessionId"]}
        )
        assert status == 200
        proc.wait(timeout=15)  # ffmpeg notices the closed connection and exits
        status, _ = server.rest("/rest-api/stream/find", {"name": "bye"})
        assert status == 404
        status, _ = server.snapshot("bye")
        assert status == 404


def test_sigterm_stops_cleanly_with_a_live_publisher(
    tmp_path: Path, clips: dict[str, Clip]
) -> None:
    server = start_server(tmp_path)
    with publishing(server, "live", clips["baseline"].path) as (proc, _):
        assert server.stop() == 0
        proc.wait(timeout=15)
    server.wait_for_log(r"stream live ended")


def test_rest_errors_are_json(server: Server) -> None:
    status, body = server.rest("/rest-api/stream/snapshot", raw=b"{not json")
    assert status == 400 and isinstance(body, dict) and body["status"] == 400
    status, body = server.rest("/rest-api/stream/snapshot", {"name": "x"})
    assert status == 400 and isinstance(body, dict) and "streamName" in body["message"]
    status, body = server.rest("/rest-api/stream/snapshot", method="PUT")
    assert status == 405 and isinstance(body, dict) and body["error"] == "Method Not Allowed"
    status, body = server.rest("/rest-api/stream/snapshot", method="GET")  # the image URL
    assert status == 400 and isinstance(body, dict) and "streamName" in body["message"]
    status, body = server.rest("/rest-api/stream/snapshot", raw=b" " * (65 * 1024))
    assert status == 413 and isinstance(body, dict) and body["status"] == 413
    status, body = server.rest("/rest-api/no/such/thing", {})
    assert status == 404 and isinstance(body, dict) and body["status"] == 404
    status, body = server.rest("/rest-api/stream/find_all", method="GET")
    assert status == 404 and isinstance(body, dict)


def test_ffmpeg_reads_nothing_back_it_cannot_parse(server: Server) -> None:
    """ffmpeg as a client is strict about our replies: a clean publish and unpublish, no errors."""
    proc = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-f",
            "flv",
            server.rtmp("short"),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr.decode().strip() == ""
    server.wait_for_log(r"stream short ended: Stopped by publisher stop")


def rtmp_handshake(s: socket.socket) -> None:
    s.sendall(b"\x03" + bytes(1536))
    got = b""
    while len(got) < 3073:
        chunk = s.recv(65536)
        assert chunk, "server closed during the handshake"
        got += chunk
    s.sendall(got[1:1537])  # C2 echoes S1


def test_hostile_rtmp_clients_leave_no_traceback(server: Server, clips: dict[str, Clip]) -> None:
    """Random chunk-stream bytes after a valid handshake, and an oversized message: those
    connections are closed or ignored, no handler crashes, and a healthy stream keeps working."""
    import random

    rng = random.Random(20261124)
    clip = clips["baseline"]
    with publishing(server, "steady", clip.path) as (first, _t0):
        mark = server.log_mark()
        for _ in range(16):
            with socket.create_connection(("127.0.0.1", server.ports["rtmp"]), timeout=10) as s:
                rtmp_handshake(s)
                with contextlib.suppress(OSError):
                    s.sendall(rng.randbytes(rng.randint(1, 8192)))
        with socket.create_connection(("127.0.0.1", server.ports["rtmp"]), timeout=10) as s:
            rtmp_handshake(s)
            # fmt 0 header on csid 3 announcing a 16 MiB command message (the limit is 6 MiB).
            s.sendall(b"\x03\x00\x00\x00\xff\xff\xff\x14\x00\x00\x00\x00")
            read_until_closed(s)
        server.wait_for_log(
            r"closing connection: ChunkError: message of 16777215 bytes", start=mark
        )
        assert first.poll() is None
        status, _ = server.snapshot("steady")
        assert status == 200
        log = "\n".join(server.lines[mark:])
        assert "Traceback" not in log and "Unhandled" not in log, log


def test_colour_change_mid_gop_is_seen_before_the_next_keyframe(
    server: Server, tmp_path: Path
) -> None:
    """Red for 2 s then blue, keyframes every 4 s: at 3 s the picture must already be blue."""
    clip = tmp_path / "red_blue.flv"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", "color=c=red:size=640x360:rate=30:duration=2",
            "-f", "lavfi", "-i", "color=c=blue:size=640x360:rate=30:duration=6",
            "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]",
            "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-bf", "3",
            "-g", "120", "-keyint_min", "120", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
            "-f", "flv", str(clip),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    with publishing(server, "colour", clip) as (_, t0):
        for at, expected in ((1.0, (255, 0, 0)), (3.0, (0, 0, 255))):
            wait_until(t0 + at)
            status, body = server.snapshot("colour")
            assert status == 200 and isinstance(body, dict)
            rgb = decode_png(body["data"])
            mean = rgb.reshape(-1, 3).mean(axis=0)
            assert all(abs(m - e) < 24 for m, e in zip(mean, expected, strict=True)), (at, mean)
