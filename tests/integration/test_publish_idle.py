"""The publish idle timeout with real encoders (issue #6, finding 18): an ffmpeg publisher frozen
with SIGSTOP (its connection stays open, nothing more arrives) is dropped after
publish_idle_timeout_ms (default 10 s), and a new publisher of the same name is accepted."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.integration.conftest import Clip, Server, publish

TIMEOUT_S = 10.0  # the default publish_idle_timeout_ms
# The watchdog looks once a second; the rest is process scheduling on a loaded machine.
SLACK_S = 4.0


def rtmp_publisher(server: Server, name: str, clip: Clip) -> subprocess.Popen[bytes]:
    return publish(server.rtmp(name), clip.path)


def rtsp_publisher(server: Server, name: str, clip: Clip) -> subprocess.Popen[bytes]:
    cmd = ["ffmpeg", "-v", "error", "-re", "-i", str(clip.path), "-c", "copy"]
    cmd += ["-f", "rtsp", "-rtsp_transport", "tcp", server.rtsp(name)]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()  # SIGKILL ends a stopped process too
    proc.wait(timeout=10)


@pytest.mark.parametrize("start", [rtmp_publisher, rtsp_publisher], ids=["rtmp", "rtsp_tcp"])
def test_frozen_publisher_is_dropped_and_its_name_freed(
    server: Server,
    clips: dict[str, Clip],
    start: Callable[[Server, str, Clip], subprocess.Popen[bytes]],
) -> None:
    clip = clips["baseline"]
    mark = server.log_mark()
    frozen = start(server, "cam", clip)
    again: subprocess.Popen[bytes] | None = None
    try:
        server.wait_for_log(r"publishing cam ", start=mark)
        status, body = server.snapshot("cam")  # media is flowing
        assert status == 200, body
        mark = server.log_mark()
        frozen.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        server.wait_for_log(
            r"stream cam: no media for 10000 ms", start=mark, timeout=TIMEOUT_S + SLACK_S + 5
        )
        waited = time.monotonic() - frozen_at
        assert TIMEOUT_S - 1.5 <= waited <= TIMEOUT_S + SLACK_S, f"dropped after {waited:.1f} s"
        server.wait_for_log(r"stream cam ended: Failed by RTP activity", start=mark)
        assert frozen.poll() is None, "the encoder itself is only frozen, not gone"

        mark = server.log_mark()
        again = start(server, "cam", clip)
        server.wait_for_log(r"publishing cam ", start=mark)
        status, body = server.snapshot("cam")
        assert status == 200, body
        assert not re.search(r"already in use", "\n".join(server.lines[mark:]))
    finally:
        stop(frozen)
        if again is not None:
            stop(again)
