"""RTSP playback credentials with real clients: ffmpeg and GStreamer play a stream ffmpeg
publishes with the right password (Digest), and are refused with a wrong one or none;
publishing stays open.

The server is this module run as a script (`python -m tests.integration.test_rtsp_auth`): the
RTSP front-end with playback credentials on a real socket and reactor, the way WCSService
builds it when REST auth is on (disable_rest_auth=false).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "admin", "s3:cr@t"
READY_TIMEOUT = 20.0


def serve(argv: list[str] | None = None) -> None:
    """The server process: an RTSPServerFactory with play_auth on a free loopback port."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.interfaces import IListeningPort
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from wcs.rtsp.auth import RtspAuthenticator
    from wcs.rtsp.server import RTSPServerFactory
    from wcs.streams import StreamRegistry

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    auth = RtspAuthenticator(args.user, args.password, reactor)
    factory = RTSPServerFactory(StreamRegistry(), reactor, ip="127.0.0.1", play_auth=auth)

    def ready(port: IListeningPort) -> None:
        print(f"READY {port.getHost().port}", flush=True)  # type: ignore[attr-defined]

    TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(ready)
    reactor.run()


@dataclass
class AuthServer:
    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if m := rx.search(line):
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"no line matching {pattern!r}; tail:\n{tail}")
                self.cond.wait(remaining)

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def url(self, name: str, credentials: str = "") -> str:
        return f"rtsp://{credentials}127.0.0.1:{self.port}/live/{name}"


@pytest.fixture
def auth_server() -> Iterator[AuthServer]:
    cmd = [sys.executable, "-m", "tests.integration.test_rtsp_auth"]
    cmd += ["--user", USER, "--password", PASSWORD]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    server = AuthServer(proc)
    threading.Thread(target=server.read, daemon=True).start()
    try:
        server.port = int(server.wait_for(r"^READY (\d+)$", READY_TIMEOUT)[1])
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def publisher(auth_server: AuthServer) -> Iterator[str]:
    """ffmpeg publishing over RTSP without credentials (ANNOUNCE stays open)."""
    mark = auth_server.mark()
    cmd = ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"]
    cmd += ["-t", "60", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0"]
    cmd += ["-pix_fmt", "yuv420p", "-f", "rtsp", "-rtsp_transport", "tcp"]
    proc = subprocess.Popen(
        [*cmd, auth_server.url("cam")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        auth_server.wait_for(r"publishing cam \(app live\) over TCP", start=mark)
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
    auth_server: AuthServer, publisher: str
) -> None:
    """Finding 9: with REST auth on, RTSP playback needed nothing."""
    credentials = f"{USER}:{quoted(PASSWORD)}@"
    mark = auth_server.mark()
    done = play(auth_server.url(publisher, credentials))
    assert done.returncode == 0, done.stderr
    auth_server.wait_for(r"playing cam over TCP", start=mark)

    mark = auth_server.mark()
    refused = play(auth_server.url(publisher))
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr
    wrong = play(auth_server.url(publisher, f"{USER}:guess@"))
    assert wrong.returncode != 0 and "401" in wrong.stderr, wrong.stderr
    auth_server.wait_for(r"RTSP authentication failed 1 time\(s\)", start=mark)
    assert not any("playing cam" in line for line in auth_server.lines[mark:])
    # The refusals cost the publisher nothing.
    done = play(auth_server.url(publisher, credentials))
    assert done.returncode == 0, done.stderr


def gst_play(url: str, user: str, password: str) -> subprocess.CompletedProcess[str]:
    cmd = ["gst-launch-1.0", "-q", "rtspsrc", f"location={url}", "protocols=tcp"]
    cmd += [f"user-id={user}", f"user-pw={password}", "!", "rtph264depay", "!", "h264parse"]
    cmd += ["!", "identity", "eos-after=10", "!", "fakesink"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_gstreamer_plays_with_the_password_and_is_refused_without(
    auth_server: AuthServer, publisher: str
) -> None:
    mark = auth_server.mark()
    done = gst_play(auth_server.url(publisher), USER, PASSWORD)
    assert done.returncode == 0, done.stderr
    auth_server.wait_for(r"playing cam over TCP", start=mark)
    mark = auth_server.mark()
    wrong = gst_play(auth_server.url(publisher), USER, "guess")
    assert wrong.returncode != 0 and "Unauthorized" in wrong.stderr + wrong.stdout
    # rtspsrc answers every challenge with the same wrong password: a few, then it is closed.
    auth_server.wait_for(r"closing connection: 5 failed logins on this connection", start=mark)
    assert not any("playing cam" in line for line in auth_server.lines[mark:])


if __name__ == "__main__":
    serve()
