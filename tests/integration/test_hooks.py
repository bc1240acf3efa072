"""Publish authorization with real peers: a real twisted.web hook app (hook_app.py) deciding RTMP
(ffmpeg, `?key=`) and RTSP (ffmpeg) publishes, slow and down apps failing closed or open, and the
publish password over RTMP (`?password=`) and RTSP (Digest)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import HookApp, Server, free_ports, start_server

pytestmark = pytest.mark.integration

CLIP = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "30"]
ENCODE = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", "-pix_fmt", "yuv420p"]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[object]:
    servers: list[Server] = []

    def make(extra: str) -> Server:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = start_server(workdir, extra)
        servers.append(server)
        return server

    yield make
    for server in servers:
        assert server.stop() == 0


def ffmpeg_publish(url: str, rtsp: bool = False) -> subprocess.Popen[str]:
    out = ["-f", "rtsp", "-rtsp_transport", "tcp"] if rtsp else ["-f", "flv"]
    cmd = ["ffmpeg", "-v", "error", "-re", *CLIP, *ENCODE, *out, url]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def refused(proc: subprocess.Popen[str]) -> str:
    """ffmpeg's stderr once it gave up (it must, and soon)."""
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0, err
    return err


def published(server: Server, proc: subprocess.Popen[str], name: str, mark: int) -> None:
    try:
        server.wait_for_log(rf"publishing {name} ", start=mark)
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()[1]) from None


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=10)


def test_hook_app_decides_rtmp_and_rtsp_publishes(make_server, hook_app: HookApp) -> None:
    server: Server = make_server(f"rest_hook_url={hook_app.url}\n")
    mark = server.log_mark()
    ok = ffmpeg_publish(server.rtmp("cam") + "?key=k1")
    try:
        published(server, ok, "cam", mark)
        connect, publish = hook_app.body("connect"), hook_app.body("publishStream")
        assert connect["mediaProvider"] == "Flash" and connect["appKey"] == "live"
        assert publish["name"] == "cam" and publish["custom"] == {"key": "k1"}
        assert publish["clientAddress"] == "127.0.0.1"
        assert server.snapshot("cam")[0] == 200
    finally:
        stop(ok)
    server.wait_for_log(r"stream cam ended", start=mark)

    err = refused(ffmpeg_publish(server.rtmp("cam2") + "?key=deny-me"))
    assert "Denied by test app (publishStream)" in err
    assert server.rest("/rest-api/stream/find", {"name": "cam2"})[0] == 404

    mark = server.log_mark()
    ok = ffmpeg_publish(server.rtsp("door") + "?key=k2", rtsp=True)
    try:
        published(server, ok, "door", mark)
        publish = hook_app.body("publishStream")
        assert (publish["custom"], publish["mediaProvider"]) == ({"key": "k2"}, "RTSP")
    finally:
        stop(ok)
    err = refused(ffmpeg_publish(server.rtsp("deny-door"), rtsp=True))
    assert "403" in err
    assert server.rest("/rest-api/stream/find", {"name": "deny-door"})[0] == 404
    # Told after the fact (not awaited): the first publish's end reached the app by now.
    assert {"unPublishStream", "StreamStatusEvent"} <= set(hook_app.methods())


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_slow_or_down_hook_app_fails_closed_or_open(
    make_server, hook_app: HookApp, fail_open: bool
) -> None:
    (unused,) = free_ports(1)
    for url, name in ((hook_app.url, "slowcam"), (f"http://127.0.0.1:{unused}/rest", "cam")):
        extra = f"rest_hook_url={url}\nrest_hook_timeout_ms=500\n"
        server: Server = make_server(extra + f"rest_hook_fail_open={str(fail_open).lower()}\n")
        mark = server.log_mark()
        proc = ffmpeg_publish(server.rtmp(name))
        if fail_open:
            try:
                published(server, proc, name, mark)
                server.wait_for_log(r"REST hook \w+ unavailable .*allowed", start=mark)
            finally:
                stop(proc)
        else:
            err = refused(proc)
            assert "REST hook unavailable" in err
            server.wait_for_log(r"REST hook \w+ unavailable .*refused", start=mark)


def test_the_publish_password_guards_rtmp_and_rtsp(make_server) -> None:
    server: Server = make_server("publish_password=pa ss:w@rd\n")
    err = refused(ffmpeg_publish(server.rtmp("cam") + "?password=guess"))
    assert "Invalid publish password" in err
    assert "Invalid publish password" in refused(ffmpeg_publish(server.rtmp("cam")))
    mark = server.log_mark()
    ok = ffmpeg_publish(server.rtmp("cam") + "?password=pa%20ss%3Aw%40rd")
    try:
        published(server, ok, "cam", mark)
    finally:
        stop(ok)
    assert "401" in refused(ffmpeg_publish(server.rtsp("door"), rtsp=True))
    url = server.rtsp("door").replace("rtsp://", "rtsp://encoder:guess@")
    assert "401" in refused(ffmpeg_publish(url, rtsp=True))
    mark = server.log_mark()
    url = server.rtsp("door").replace("rtsp://", "rtsp://encoder:pa%20ss%3Aw%40rd@")
    ok = ffmpeg_publish(url, rtsp=True)
    try:
        published(server, ok, "door", mark)
    finally:
        stop(ok)
    assert not any("guess" in line or "w@rd" in line for line in server.lines)


EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "hook_app.py"


def test_the_documented_example_hook_app_checks_stream_keys(make_server, tmp_path: Path) -> None:
    """docs/examples/hook_app.py as an operator runs it: RTMP `?key=` and RTSP URL query."""
    keys = tmp_path / "keys.json"
    keys.write_text('{"cam1": "s3cret", "door": "k2"}')
    app = subprocess.Popen(
        ["python3", str(EXAMPLE), "--port", "0", "--keys", str(keys)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stderr is not None
        line = app.stderr.readline()  # "... hook app on http://127.0.0.1:PORT/ (2 stream keys)"
        url = line.split("hook app on ", 1)[1].split()[0].rstrip("/")
        server: Server = make_server(f"rest_hook_url={url}/hook\n")
        assert "Wrong or missing stream key" in refused(
            ffmpeg_publish(server.rtmp("cam1") + "?key=guess")
        )
        refused(ffmpeg_publish(server.rtmp("nobody") + "?key=s3cret"))
        refused(ffmpeg_publish(server.rtsp("door") + "?key=s3cret", rtsp=True))
        for name, url_, rtsp in (
            ("cam1", server.rtmp("cam1") + "?key=s3cret", False),
            ("door", server.rtsp("door") + "?key=k2", True),
        ):
            mark = server.log_mark()
            proc = ffmpeg_publish(url_, rtsp=rtsp)
            try:
                published(server, proc, name, mark)
            finally:
                stop(proc)
    finally:
        app.terminate()
        app.wait(timeout=10)
