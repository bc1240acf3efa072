"""PNG encoding in helper processes (wcs.media.image.PngEncoders): the same bytes as fpng in
process, the pipe protocol, and falling back to in-process encoding while a helper is broken."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from wcs.media.image import (
    _HEADER,
    _LENGTH,
    EncoderProcess,
    EncoderRefused,
    PngEncoders,
    rgb_to_png,
    serve,
)


def image(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, :, 0] = np.arange(width, dtype=np.uint8)  # compressible, and some noise
    rgb[::3] = rng.integers(0, 256, (len(rgb[::3]), width, 3), np.uint8)
    return rgb


@pytest.fixture
def encoders() -> Iterator[PngEncoders]:
    enc = PngEncoders(processes=2)
    yield enc
    enc.close()


def test_helpers_write_the_bytes_fpng_writes_in_process(encoders: PngEncoders) -> None:
    images = [image(i, 40 + i, 60 + 2 * i) for i in range(6)]  # sizes change between calls
    assert [encoders.rgb_to_png(rgb) for rgb in images] == [rgb_to_png(rgb) for rgb in images]
    assert encoders.failures == 0


def test_threads_share_the_helpers(encoders: PngEncoders) -> None:
    images = [image(i) for i in range(8)]
    out: dict[int, bytes] = {}

    def run(i: int) -> None:
        out[i] = encoders.rgb_to_png(images[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {i: rgb_to_png(rgb) for i, rgb in enumerate(images)}
    assert encoders.failures == 0


def test_a_strided_array_is_sent_contiguous(encoders: PngEncoders) -> None:
    rgb = image(1, 48, 128)[:, ::2]
    assert not rgb.flags.c_contiguous
    assert encoders.rgb_to_png(rgb) == rgb_to_png(np.ascontiguousarray(rgb))


def test_what_fpng_refuses_gives_what_it_gives_in_process(encoders: PngEncoders) -> None:
    bad = np.zeros((4, 4, 2), np.uint8)  # two channels: this fpng binding answers b""
    assert encoders.rgb_to_png(bad) == rgb_to_png(bad)
    with pytest.raises(AttributeError):  # not HxWxC: fpng's own error, raised in process
        encoders.rgb_to_png(np.zeros((4, 4), np.uint8))
    assert encoders.failures == 0  # the helper stays in use
    assert encoders.rgb_to_png(image(2)) == rgb_to_png(image(2))


def test_serve_answers_each_image_then_returns_at_end_of_input() -> None:
    child_in, parent_out = os.pipe()
    parent_in, child_out = os.pipe()
    rgb, bad = image(3), np.zeros((2, 2, 2), np.uint8)
    with open(parent_out, "wb", buffering=0) as w:  # both fit in the pipe
        for a in (rgb, bad):
            w.write(_HEADER.pack(*a.shape) + a.tobytes())
    # the write end is closed: serve() sees the end after two images
    with open(child_in, "rb", buffering=0) as inp, open(child_out, "wb", buffering=0) as out:
        serve(inp, out)
    with open(parent_in, "rb") as r:
        answers = r.read()
    (n,) = _LENGTH.unpack_from(answers)
    assert answers[_LENGTH.size : _LENGTH.size + n] == rgb_to_png(rgb)
    assert answers[_LENGTH.size + n :] == _LENGTH.pack(0)  # refused: length 0


def test_a_refusal_is_reported_by_the_process() -> None:
    proc = EncoderProcess()
    try:
        with pytest.raises(EncoderRefused):
            proc.encode(np.zeros((2, 2, 2), np.uint8))
        assert proc.encode(image(4)) == rgb_to_png(image(4))
    finally:
        proc.close()
    assert proc.proc.returncode == 0


class BrokenProcess(EncoderProcess):
    def __init__(self) -> None:  # no process
        pass

    def encode(self, rgb: np.ndarray) -> bytes:
        raise BrokenPipeError(32, "Broken pipe")

    def close(self) -> None:
        pass


def test_a_failing_helper_is_dropped_and_frames_encoded_in_process_for_a_while() -> None:
    now = [0.0]
    started: list[str] = []

    def start() -> EncoderProcess:
        started.append("broken" if len(started) == 0 else "real")
        return BrokenProcess() if len(started) == 1 else EncoderProcess()

    enc = PngEncoders(processes=1, retry_after=10.0, clock=lambda: now[0], start=start)
    try:
        rgb = image(5)
        assert enc.rgb_to_png(rgb) == rgb_to_png(rgb)  # answered in process
        assert enc.failures == 1 and "BrokenPipeError" in (enc.last_error or "")
        now[0] = 9.0
        assert enc.rgb_to_png(rgb) == rgb_to_png(rgb)
        assert started == ["broken"]  # in process meanwhile, nothing restarted
        now[0] = 10.5
        assert enc.rgb_to_png(rgb) == rgb_to_png(rgb)
        assert started == ["broken", "real"] and enc.failures == 1
    finally:
        enc.close()


def test_a_killed_helper_is_replaced_after_the_pause() -> None:
    now = [0.0]
    procs: list[EncoderProcess] = []

    def start() -> EncoderProcess:
        procs.append(EncoderProcess())
        return procs[-1]

    enc = PngEncoders(processes=1, retry_after=10.0, clock=lambda: now[0], start=start)
    try:
        rgb = image(6)
        assert enc.rgb_to_png(rgb) == rgb_to_png(rgb)
        procs[0].proc.kill()
        procs[0].proc.wait()
        assert enc.rgb_to_png(rgb) == rgb_to_png(rgb)
        assert enc.failures == 1
        now[0] = 11.0
        assert enc.rgb_to_png(rgb) == rgb_to_png(rgb)
        assert len(procs) == 2 and procs[1].proc.poll() is None
    finally:
        enc.close()
    assert procs[1].proc.returncode == 0


def test_close_ends_the_helpers_and_a_later_use_starts_them_again() -> None:
    procs: list[EncoderProcess] = []

    def start() -> EncoderProcess:
        procs.append(EncoderProcess())
        return procs[-1]

    enc = PngEncoders(processes=2, start=start)
    enc.rgb_to_png(image(7))
    enc.close()
    assert [p.proc.returncode for p in procs] == [0]
    assert enc.rgb_to_png(image(7)) == rgb_to_png(image(7))
    enc.close()
    assert len(procs) == 2 and procs[1].proc.returncode == 0
