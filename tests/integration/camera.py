"""Test helpers for RTSP camera pull: a real gst-rtsp-server camera process and picture comparisons.

The camera runs `rtsp_camera.py` under the system python (PyGObject); these helpers run in the venv.
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("rtsp_camera.py")
READY_TIMEOUT = 20.0
GRAB_TIMEOUT = 20.0
STDERR_LINES = 200


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    return int(width), int(height)


@dataclass
class Camera:
    """A running camera process; `stop()` (or leaving the `with` block) ends it."""

    proc: subprocess.Popen[str]
    path: str
    size: tuple[int, int]
    pattern: str
    user: str | None = None
    password: str | None = None
    url: str = ""
    stderr: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_LINES)
    )
    stderr_count: int = 0  # lines seen in all, so marks stay valid once the deque drops old ones
    _ready: threading.Event = field(default_factory=threading.Event)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _eof: bool = False

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 554

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    @property
    def url_with_auth(self) -> str:
        """The URL with `user:password@`, percent-encoded, as a user would paste it into WCS."""
        if self.user is None or self.password is None:
            return self.url
        return self.url_with_credentials(self.user, self.password)

    def url_with_credentials(self, user: str, password: str) -> str:
        parts = urllib.parse.urlsplit(self.url)
        cred = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{cred}@{parts.netloc}"))

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(list(self.stderr)[-n:])

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.fullmatch(r"READY (rtsp://\S+)", line.strip())
            if m and not self._ready.is_set():
                self.url = m[1]
                self._ready.set()
        self._ready.set()  # EOF: wake the waiter, which then sees no URL

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.stderr.append(line.rstrip("\n"))
                self.stderr_count += 1
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def log_mark(self) -> int:
        with self._cond:
            return self.stderr_count

    def wait_for_log(self, pattern: str, *, start: int = 0, timeout: float = 20.0) -> str:
        """Block until a camera log line after mark `start` matches, e.g. "client connected"."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                first = self.stderr_count - len(self.stderr)
                for line in list(self.stderr)[max(0, start - first) :]:
                    if rx.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError(
                        f"no camera log line matching {pattern!r}:\n" + self.log_tail()
                    )
                self._cond.wait(remaining)

    def _wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout) or not self.url:
            self.stop()
            with self._cond:  # the reason is in the stderr still being read
                self._cond.wait_for(lambda: self._eof, timeout=5)
            raise RuntimeError(
                f"RTSP camera not ready within {timeout}s (exit {self.proc.returncode}):\n"
                + self.log_tail()
            )

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_camera(
    *,
    port: int = 0,
    path: str = "/stream1",
    size: str = "1280x720",
    fps: int = 30,
    user: str | None = None,
    password: str | None = None,
    digest: bool = True,
    pattern: str = "smpte",
    gop: int = 30,
    overlay: bool = False,
    timeout: float = READY_TIMEOUT,
) -> Camera:
    """Start a camera and return once it listens (its READY line, not a sleep)."""
    cmd = [SYSTEM_PYTHON, str(SCRIPT), f"--port={port}", f"--path={path}", f"--size={size}"]
    cmd += [f"--fps={fps}", f"--gop={gop}", f"--pattern={pattern}"]
    if overlay:
        cmd.append("--overlay")
    if user is not None:
        if password is None:
            raise ValueError("a camera user needs a password")
        cmd += [f"--user={user}", f"--password={password}", "--digest" if digest else "--basic"]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    cam = Camera(proc, path, parse_size(size), pattern, user, password)
    threading.Thread(target=cam._read_stdout, name="camera-stdout", daemon=True).start()
    threading.Thread(target=cam._read_stderr, name="camera-stderr", daemon=True).start()
    cam._wait_ready(timeout)
    return cam


# -- an independent client: ffmpeg ----------------------------------------------------------------


@dataclass
class Grab:
    """What `ffmpeg_grab` got: the first keyframe as RGB (or None) and ffmpeg's own words."""

    returncode: int
    stderr: str
    rgb: np.ndarray | None


_OUTPUT_SIZE = re.compile(r"Video: rawvideo\b.*?, (\d{2,5})x(\d{2,5})\b")


def ffmpeg_grab(url: str, *, transport: str = "tcp", timeout: float = GRAB_TIMEOUT) -> Grab:
    """Pull one frame from an RTSP URL with ffmpeg; the size comes from ffmpeg, not from us."""
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "info"]
    # socket I/O timeout (microseconds) so a silent server fails fast instead of hanging.
    cmd += ["-rtsp_transport", transport, "-timeout", str(int(timeout * 1e6) // 2)]
    # Decode keyframes only: a client joining the shared stream mid-GOP would otherwise get a
    # grey, half-reconstructed first picture (ffmpeg outputs corrupt h264 frames by default).
    cmd += ["-skip_frame", "nokey"]
    # The size is in the SDP's SPS already; ffmpeg's default 5 s of probing only adds waiting.
    cmd += ["-analyzeduration", "500000", "-i", url]
    cmd += ["-an", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # run() has killed ffmpeg already
        err = exc.stderr.decode(errors="replace") if exc.stderr else ""
        return Grab(-1, err + f"\n[timed out after {timeout}s]", None)
    stderr = done.stderr.decode(errors="replace")
    sizes = _OUTPUT_SIZE.findall(stderr)
    if done.returncode != 0 or not sizes:
        return Grab(done.returncode, stderr, None)
    width, height = int(sizes[-1][0]), int(sizes[-1][1])
    if len(done.stdout) != width * height * 3:
        return Grab(done.returncode, stderr + f"\n[got {len(done.stdout)} bytes]", None)
    rgb = np.frombuffer(done.stdout, dtype=np.uint8).reshape(height, width, 3)
    return Grab(done.returncode, stderr, rgb)


def grab_frame(url: str, *, transport: str = "tcp", timeout: float = GRAB_TIMEOUT) -> np.ndarray:
    """The camera's picture as ffmpeg (a real, independent RTSP client) decodes it."""
    grab = ffmpeg_grab(url, transport=transport, timeout=timeout)
    if grab.rgb is None:
        raise AssertionError(f"ffmpeg could not pull a frame from {url}:\n{grab.stderr[-3000:]}")
    return grab.rgb


def reference_rgb(pattern: str, size: str | tuple[int, int]) -> np.ndarray:
    """The camera's source picture rendered by GStreamer straight to RGB (no encoder, no RTSP)."""
    width, height = parse_size(size) if isinstance(size, str) else size
    # Same path as the camera up to the encoder: the pattern drawn in I420, then converted.
    pipeline = (
        f"videotestsrc pattern={pattern} num-buffers=1 ! "
        f"video/x-raw,format=I420,width={width},height={height} ! videoconvert ! "
        "video/x-raw,format=RGB ! fdsink fd=1"
    )
    done = subprocess.run(
        ["gst-launch-1.0", "-q", *pipeline.split()], capture_output=True, timeout=60, check=True
    )
    # RGB rows are padded to 4 bytes in GStreamer buffers.
    stride = (width * 3 + 3) & ~3
    if len(done.stdout) != stride * height:
        raise AssertionError(f"gst-launch gave {len(done.stdout)} bytes for {width}x{height}")
    rows = np.frombuffer(done.stdout, dtype=np.uint8).reshape(height, stride)
    return np.ascontiguousarray(rows[:, : width * 3].reshape(height, width, 3))


# -- comparing pictures ---------------------------------------------------------------------------


def region_means(rgb: np.ndarray, grid: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Mean R, G, B of each cell of a rows x cols grid: shape (rows, cols, 3), float."""
    rows, cols = grid
    height, width = rgb.shape[:2]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or height < rows or width < cols:
        raise ValueError(f"need an RGB picture of at least {rows}x{cols}, got {rgb.shape}")
    ys = np.linspace(0, height, rows + 1).astype(int)
    xs = np.linspace(0, width, cols + 1).astype(int)
    out = np.empty((rows, cols, 3))
    for r in range(rows):
        for c in range(cols):
            out[r, c] = rgb[ys[r] : ys[r + 1], xs[c] : xs[c + 1]].reshape(-1, 3).mean(axis=0)
    return out


def assert_same_picture(
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    grid: tuple[int, int] = (4, 4),
    tolerance: float = 12.0,
) -> None:
    """Same size, and every grid cell's mean colour within `tolerance` (0-255) per channel.

    Region means ride over codec noise and colour-matrix rounding yet still tell apart patterns,
    a black or grey frame, a shifted or a scaled picture.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"picture is {actual.shape}, expected {expected.shape}")
    diff = np.abs(region_means(actual, grid) - region_means(expected, grid))
    worst = float(diff.max())
    if worst > tolerance:
        r, c, ch = np.unravel_index(int(diff.argmax()), diff.shape)
        raise AssertionError(
            f"pictures differ: cell ({r},{c}) channel {'RGB'[ch]} off by {worst:.1f} "
            f"> {tolerance}; per-cell max differences:\n{np.round(diff.max(axis=2), 1)}"
        )
