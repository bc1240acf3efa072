"""Decoded frame -> PNG bytes (8-bit RGB, full resolution), with fpng: the fastest lossless encoder
measured on this kind of machine (bench/png_encode.py, 720p: 4-5 ms against 11 ms for FFmpeg's PNG
encoder at level 1 and 24-40 ms for Pillow; on a noisy picture 4 ms against 48 ms and 87-342 ms).

fpng's binding holds the GIL for the whole encode (4-7 ms per 720p frame), so a pool thread
encoding stalls the reactor that long. `PngEncoders` runs fpng in helper processes instead: the
pool thread converts the frame to RGB (PyAV releases the GIL there), writes the raw pixels into a
pipe and reads the PNG back, waiting with the GIL released. Same encoder, same bytes.
"""

from __future__ import annotations

import io
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import fpng
import numpy as np

if TYPE_CHECKING:  # the helper processes import this module without PyAV
    from av.video.frame import VideoFrame

# Helper processes per server (started on first use): one encode at a time each.
ENCODER_PROCESSES = 2
# After a helper process fails (died, pipe broken), encode in-process for this long.
RETRY_AFTER_S = 10.0
# To the helper: height, width, channels, then the pixels. From it: the PNG's length, then the
# PNG; length 0 means fpng refused the image.
_HEADER = struct.Struct("<III")
_LENGTH = struct.Struct("<Q")
_HELPER = "from wcs.media.image import serve; serve()"


# One reformatter per thread: a frame's own (frame.reformat) is shared by every thread using that
# frame, and two pool threads converting one frame at once through it crash libswscale.
_local = threading.local()


def frame_to_rgb(
    frame: VideoFrame, width: int | None = None, height: int | None = None
) -> np.ndarray:
    """The frame as a contiguous HxWx3 uint8 array, honouring its colour matrix and range;
    scaled by libswscale in the same pass when a size is given (default: the frame's)."""
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter  # the helper processes lack PyAV

        reformatter = _local.reformatter = VideoReformatter()
    rgb = reformatter.reformat(
        frame,
        width=width or frame.width,
        height=height or frame.height,
        format="rgb24",
        src_color_range=frame.color_range or None,
        threads=1,
    )
    return np.ascontiguousarray(rgb.to_ndarray())


def rgb_to_png(rgb: np.ndarray) -> bytes:
    return bytes(fpng.from_ndarray(rgb))


def frame_to_png(frame: VideoFrame) -> bytes:
    return rgb_to_png(frame_to_rgb(frame))


# -- helper processes -----------------------------------------------------------------------------
def _read_into(stream: io.RawIOBase, buf: memoryview) -> bool:
    """Fill `buf` from `stream`; False on end of file."""
    while buf:
        n = stream.readinto(buf)
        if not n:
            return False
        buf = buf[n:]
    return True


def _write_all(stream: io.RawIOBase, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        n = stream.write(view)
        if n is None:  # not a non-blocking pipe, but the type allows it
            raise BlockingIOError("pipe not writable")
        view = view[n:]


def serve(inp: io.RawIOBase | None = None, out: io.RawIOBase | None = None) -> None:
    """The helper process: encode each image read from `inp` (stdin), write the PNG to `out`
    (stdout); return at end of input (the server closed the pipe or died)."""
    if inp is None or out is None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of the server's terminal
        inp = open(os.dup(0), "rb", buffering=0)  # noqa: SIM115 (lives as long as the process)
        out = open(os.dup(1), "wb", buffering=0)  # noqa: SIM115
        os.dup2(2, 1)  # a stray print must not corrupt the answers
    header = bytearray(_HEADER.size)
    pixels = bytearray()
    while _read_into(inp, memoryview(header)):
        height, width, channels = _HEADER.unpack(header)
        size = height * width * channels
        if len(pixels) != size:
            pixels = bytearray(size)
        if not _read_into(inp, memoryview(pixels)):
            return
        try:
            png = rgb_to_png(np.frombuffer(pixels, np.uint8).reshape(height, width, channels))
        except Exception:  # the server encodes it itself and gets the error there
            png = b""
        _write_all(out, _LENGTH.pack(len(png)))
        _write_all(out, png)


class EncoderRefused(Exception):
    """The helper's fpng refused the image."""


class EncoderProcess:
    """One helper process and its two pipes; used by one thread at a time."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # The helper imports this very package, wherever the server found it.
        root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HELPER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )

    def encode(self, rgb: np.ndarray) -> bytes:
        """PNG of a contiguous HxWxC uint8 array. Raises EncoderRefused, or OSError/EOFError
        when the process is gone."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        height, width, channels = rgb.shape
        _write_all(stdin, _HEADER.pack(height, width, channels))  # type: ignore[arg-type]
        _write_all(stdin, memoryview(rgb).cast("B"))  # type: ignore[arg-type]
        head = bytearray(_LENGTH.size)
        if not _read_into(stdout, memoryview(head)):  # type: ignore[arg-type]
            raise EOFError("PNG encoder process exited")
        (length,) = _LENGTH.unpack(head)
        if not length:
            raise EncoderRefused()
        png = bytearray(length)
        if not _read_into(stdout, memoryview(png)):  # type: ignore[arg-type]
            raise EOFError("PNG encoder process exited")
        return bytes(png)

    def close(self) -> None:
        """End of input: the process exits; killed if it does not within a second."""
        proc = self.proc
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class PngEncoders:
    """fpng in up to `processes` helper processes, started on first use, for pool threads: a
    thread waits (GIL released) for a free process. When a process fails it is dropped and
    frames are encoded in-process for `retry_after` seconds, then a new one is started."""

    def __init__(
        self,
        processes: int = ENCODER_PROCESSES,
        *,
        retry_after: float = RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        start: Callable[[], EncoderProcess] = EncoderProcess,
    ) -> None:
        self._clock = clock
        self._start = start
        self._retry_after = retry_after
        self._free: queue.SimpleQueue[EncoderProcess | None] = queue.SimpleQueue()
        for _ in range(processes):
            self._free.put(None)  # a slot whose process is not started yet
        self._slots = processes
        self._inline_until = float("-inf")
        self.failures = 0
        self.last_error: str | None = None

    def frame_to_png(self, frame: VideoFrame) -> bytes:
        return self.rgb_to_png(frame_to_rgb(frame))

    def rgb_to_png(self, rgb: np.ndarray) -> bytes:
        if self._clock() < self._inline_until:
            return rgb_to_png(rgb)
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if rgb.ndim != 3:
            return rgb_to_png(rgb)  # fpng's own error
        worker = self._free.get()
        try:
            if worker is None:
                worker = self._start()
            return worker.encode(rgb)
        except EncoderRefused:
            return rgb_to_png(rgb)  # raises fpng's error here, as without helpers
        except (OSError, EOFError, ValueError) as err:
            self.failures += 1
            self.last_error = f"{type(err).__name__}: {err}"
            self._inline_until = self._clock() + self._retry_after
            if worker is not None:
                worker.close()
                worker = None
            return rgb_to_png(rgb)
        finally:
            self._free.put(worker)

    def close(self) -> None:
        """Stop every helper process (waits for those encoding now)."""
        for _ in range(self._slots):
            worker = self._free.get()
            if worker is not None:
                worker.close()
        for _ in range(self._slots):
            self._free.put(None)


_shared: PngEncoders | None = None
_shared_lock = threading.Lock()


def shared_encoders() -> PngEncoders:
    """The process's PngEncoders (auto snapshots and requests share the helpers); the helpers
    exit with the server: their input pipes close with it."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = PngEncoders()
        return _shared
