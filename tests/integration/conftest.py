"""Integration fixtures: a real `twistd -n wcs` on loopback ports the OS picks, real ffmpeg
encoders."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

# The real redis-server fixture of the cluster tests.
from tests.integration.redis_server import redis_server  # noqa: F401

BIN = Path(sys.executable).parent
READY_TIMEOUT = 30.0
# twistd options for `wcs`: every enabled listener on a port the OS picks, read back from the
# `wcs ready:` line (nothing to race, unlike ports found free beforehand and released).
TWISTD = ["-n", "--pidfile=", "--logfile=-"]
WCS_EPHEMERAL = ["wcs", "--ephemeral-ports"]
READY = re.compile(r"wcs ready: (.*) \(pid \d+\)")


def free_ports(n: int) -> list[int]:
    """Ports the kernel picks as free (bound to port 0 together, then released), for a port
    nothing listens on; a server's own ports come from `ready_ports` instead."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ready_ports(line: str) -> dict[str, int]:
    """The bound ports listed by a `wcs ready: http=..., rtmp=... (pid N)` line."""
    m = READY.search(line)
    assert m, f"not a ready line: {line!r}"
    if m[1] == "no listeners":
        return {}
    return {label: int(port) for label, port in (p.split("=") for p in m[1].split(", "))}


@dataclass
class Server:
    proc: subprocess.Popen[str]
    workdir: Path
    ports: dict[str, int]
    lines: list[str] = field(default_factory=list)
    eof: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def _reader(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        """Block until a log line matching `pattern` appears (an event, not a sleep)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.eof:
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"no log line matching {pattern!r}; log tail:\n{tail}")
                self.cond.wait(remaining)

    def log_mark(self) -> int:
        with self.cond:
            return len(self.lines)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.ports['https']}"

    def rtmp(self, name: str, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.ports['rtmp']}/{app}/{name}"

    def rtsp(self, name: str, app: str = "live") -> str:
        return f"rtsp://127.0.0.1:{self.ports['rtsp']}/{app}/{name}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ports['ws']}"

    def rest(
        self,
        path: str,
        body: object = None,
        *,
        method: str = "POST",
        base: str | None = None,
        context: ssl.SSLContext | None = None,
        raw: bytes | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, object]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(
            (base or self.http) + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def snapshot(self, name: str, **kw: object) -> tuple[int, object]:
        return self.rest("/rest-api/stream/snapshot", {"streamName": name}, **kw)  # type: ignore[arg-type]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def start_server(
    workdir: Path,
    extra: str = "",
    *,
    nofile: tuple[int, int] | None = None,
    launcher: list[str] | None = None,
    wcs_args: list[str] | None = None,
) -> Server:
    """A real `twistd -n wcs` on loopback ports the OS picks (every listener, unless `extra`
    disables one); `nofile` = (soft, hard) RLIMIT_NOFILE; `launcher` = the command run instead
    of twistd, with twistd's arguments (e.g. one that injects a fault first); `wcs_args` = more
    options of `wcs` (e.g. `--workers 2`)."""
    config = workdir / "flashphoner.properties"
    config.write_text("ip=127.0.0.1\n" + extra)

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    proc = subprocess.Popen(
        [
            *(launcher or [str(BIN / "twistd")]),
            *TWISTD,
            *WCS_EPHEMERAL,
            *(wcs_args or []),
            "--config",
            str(config),
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        preexec_fn=limit if nofile is not None else None,
    )
    server = Server(proc, workdir, {})
    threading.Thread(target=server._reader, daemon=True).start()
    try:
        ready = server.wait_for_log(READY.pattern, timeout=READY_TIMEOUT)
    except BaseException:
        server.stop()
        raise
    server.ports.update(ready_ports(ready[0]))
    return server


def http_get(
    server: Server, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET `path` of the server's HTTP port as a dashboard does: (status, headers lower-cased,
    body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=20)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# -- a REST hook app ------------------------------------------------------------------------------
HOOK_APP = Path(__file__).with_name("hook_app.py")


@dataclass
class HookApp:
    proc: subprocess.Popen[str]
    log: Path
    url: str

    def requests(self) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def methods(self) -> list[str]:
        return [str(r["method"]) for r in self.requests()]

    def body(self, method: str) -> dict[str, object]:
        found = [r["body"] for r in self.requests() if r["method"] == method]
        assert found, f"the app was never asked {method}: {self.methods()}"
        body = found[-1]
        assert isinstance(body, dict)
        return body


@pytest.fixture
def hook_app(tmp_path: Path) -> Iterator[HookApp]:
    log = tmp_path / "hooks.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(HOOK_APP), str(log)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=20)
    assert line and line[0].startswith("READY "), "the hook app did not start"
    try:
        yield HookApp(proc, log, f"http://127.0.0.1:{int(line[0].split()[1])}/rest")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path)
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, "server did not exit cleanly on SIGTERM:\n" + "\n".join(srv.lines[-30:])


# -- clips and encoders ------------------------------------------------------------------------
CLIP_SECONDS = 12
FPS = 30
THUMB = (160, 90)


@dataclass
class Clip:
    path: Path
    width: int
    height: int
    thumbs: np.ndarray  # (frames, h, w, 3) float32, in presentation order


def _thumb(rgb: np.ndarray) -> np.ndarray:
    img = Image.fromarray(rgb).resize(THUMB, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def make_clip(
    path: Path, *, bframes: bool, audio: bool, size: str = "1280x720", seconds: int = CLIP_SECONDS
) -> Clip:
    video = ["-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-keyint_min", "60"]
    video += ["-sc_threshold", "0"]
    video += (
        ["-profile:v", "main", "-bf", "3"] if bframes else ["-profile:v", "baseline", "-bf", "0"]
    )
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    cmd += ["-t", str(seconds), *video, "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac", "-b:a", "64k"] if audio else []
    cmd += ["-f", "flv", str(path)]
    subprocess.run(cmd, check=True, timeout=120)
    thumbs = []
    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        width, height = vs.codec_context.width, vs.codec_context.height
        for frame in container.decode(vs):
            thumbs.append(_thumb(frame.to_ndarray(format="rgb24")))
    return Clip(path, width, height, np.stack(thumbs))


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    d = tmp_path_factory.mktemp("clips")
    return {
        "bframes_audio": make_clip(d / "bframes_audio.flv", bframes=True, audio=True),
        "baseline": make_clip(d / "baseline.flv", bframes=False, audio=False),
    }


def publish(
    url: str, clip: Path | None = None, *, extra_input: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """ffmpeg as an RTMP encoder, sending `clip` in real time (-re) without re-encoding."""
    if clip is not None:
        cmd = ["ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv", url]
    else:
        cmd = ["ffmpeg", "-v", "error", "-re", *(extra_input or []), "-f", "flv", url]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@contextlib.contextmanager
def publishing(
    server: Server, name: str, clip: Path
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Publish `clip` as `name`; yields (process, monotonic time the server accepted it)."""
    mark = server.log_mark()
    proc = publish(server.rtmp(name), clip)
    try:
        server.wait_for_log(rf"publishing {re.escape(name)} ", start=mark)
        yield proc, time.monotonic()
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


def decode_png(b64: str) -> np.ndarray:
    data = base64.b64decode(b64, validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    assert img.mode == "RGB"
    return np.asarray(img)


def best_match(clip: Clip, rgb: np.ndarray) -> tuple[int, float]:
    """Index of the clip frame the picture shows, and the PSNR (dB) of that match."""
    t = _thumb(rgb)
    mse = ((clip.thumbs - t) ** 2).mean(axis=(1, 2, 3))
    idx = int(mse.argmin())
    psnr = 10 * np.log10(255.0**2 / max(float(mse[idx]), 1e-9))
    return idx, psnr


# -- shared checks ---------------------------------------------------------------------------
def wait_until(t: float) -> None:
    """Sample at a chosen moment of the stream's timeline (not a synchronisation sleep)."""
    threading.Event().wait(max(0.0, t - time.monotonic()))


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closing)."""
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def check_fresh(
    server: Server, clip: Clip, name: str, published_at: float, at: list[float]
) -> None:
    """Snapshots taken `at` seconds into the stream show the frame live then (not a stale keyframe).

    ffmpeg -re sends frame n at about n/FPS seconds after publishing; keyframes are 2 s apart,
    so a keyframe-only or cached-GOP server would be up to 60 frames behind mid-GOP.
    """
    for offset in at:
        wait_until(published_at + offset)
        sent = time.monotonic() - published_at
        status, body = server.snapshot(name)
        received = time.monotonic() - published_at
        assert status == 200, body
        assert isinstance(body, dict) and set(body) == {"data"}
        rgb = decode_png(body["data"])
        assert rgb.shape == (clip.height, clip.width, 3)
        index, psnr = best_match(clip, rgb)
        assert psnr > 30, f"snapshot matches no source frame well (best {index}, {psnr:.1f} dB)"
        # 0.5 s of slack for process start-up and scheduling noise, far below a GOP (2 s).
        assert index >= FPS * sent - 15, f"stale: frame {index} at {sent:.2f} s"
        assert index <= FPS * received + 15, f"frame {index} from the future at {received:.2f} s"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
