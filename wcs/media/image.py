"""Decoded frame -> PNG bytes (8-bit RGB, full resolution), with fpng: the fastest lossless encoder
measured on this kind of machine (PERF.md: 1.5-3.3 ms at 720p against 24-167 ms for Pillow)."""

from __future__ import annotations

import fpng
import numpy as np
from av.video.frame import VideoFrame


def frame_to_rgb(frame: VideoFrame) -> np.ndarray:
    """The frame as a contiguous HxWx3 uint8 array, honouring its colour matrix and range."""
    rgb = frame.reformat(
        format="rgb24",
        src_color_range=frame.color_range or None,
        threads=1,
    )
    return np.ascontiguousarray(rgb.to_ndarray())


def rgb_to_png(rgb: np.ndarray) -> bytes:
    return bytes(fpng.from_ndarray(rgb))


def frame_to_png(frame: VideoFrame) -> bytes:
    return rgb_to_png(frame_to_rgb(frame))
