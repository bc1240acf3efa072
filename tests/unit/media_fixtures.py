"""Media for unit tests: real H.264 and FLV encoded once by ffmpeg and demuxed with PyAV (no
sockets), their parameter sets, and FLV tags built by hand."""

from __future__ import annotations

import functools
import io
import subprocess
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from wcs.media.h264 import NAL_PPS, NAL_SPS, nal_type, split_annexb
from wcs.media.image import frame_to_rgb
from wcs.media.units import MediaUnit

GOP = 30


@dataclass(frozen=True)
class Sample:
    units: tuple[MediaUnit, ...]  # decode order
    frames: dict[int, np.ndarray]  # pts -> reference RGB
    width: int
    height: int

    def gop_starts(self) -> list[int]:
        return [i for i, u in enumerate(self.units) if u.keyframe]


@functools.cache
def h264_sample(bframes: bool = True, seconds: int = 3, size: str = "320x240") -> Sample:
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30"]
    cmd += ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", str(GOP)]
    cmd += ["-keyint_min", str(GOP), "-sc_threshold", "0", "-pix_fmt", "yuv420p"]
    cmd += ["-bf", "3" if bframes else "0", "-f", "mpegts", "-"]
    ts = subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout
    units = []
    with av.open(io.BytesIO(ts), "r", format="mpegts") as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        assert tb is not None
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None or packet.dts is None:
                continue
            units.append(
                MediaUnit(
                    "video",
                    "H264",
                    packet.pts,
                    packet.dts,
                    packet.is_keyframe,
                    bytes(packet),
                    Fraction(tb),
                )
            )
    frames: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(ts), "r", format="mpegts") as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            assert frame.pts is not None
            frames[frame.pts] = frame_to_rgb(frame)
    width, height = (int(x) for x in size.split("x"))
    return Sample(tuple(units), frames, width, height)


def parameter_sets(sample: Sample) -> tuple[bytes, bytes]:
    """The SPS and PPS of the sample's first (IDR) access unit."""
    nals = split_annexb(sample.units[0].data)
    return (
        next(n for n in nals if nal_type(n) == NAL_SPS),
        next(n for n in nals if nal_type(n) == NAL_PPS),
    )


def png_rgb(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    assert img.mode == "RGB"
    return np.asarray(img)


def pts_of(sample: Sample, rgb: np.ndarray) -> int:
    """The pts of the reference frame that `rgb` is exactly equal to."""
    for pts, ref in sample.frames.items():
        if ref.shape == rgb.shape and np.array_equal(ref, rgb):
            return pts
    raise AssertionError("picture equals no decoded frame of the source")


def flv_tag(type_byte: int, timestamp: int, data: bytes, back_pointer: bool = True) -> bytes:
    """One FLV tag as an RTMP aggregate message carries it: header, data, back pointer."""
    out = bytes((type_byte,)) + len(data).to_bytes(3, "big")
    out += (timestamp & 0xFFFFFF).to_bytes(3, "big") + bytes((timestamp >> 24,))
    out += b"\x00\x00\x00" + data
    if back_pointer:
        out += (11 + len(data)).to_bytes(4, "big")
    return out


@dataclass(frozen=True)
class FlvTag:
    kind: int  # 8 audio, 9 video, 18 data
    timestamp: int  # ms
    payload: bytes


@functools.cache
def flv_clip(seconds: float = 1.0, size: str = "320x240") -> tuple[FlvTag, ...]:
    """The tags of an FLV file made by ffmpeg (H.264 main with B-frames, AAC): what an RTMP
    encoder sends, tag by tag."""
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30"]
    cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(seconds)]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-bf", "2"]
    cmd += ["-g", "15", "-keyint_min", "15", "-sc_threshold", "0", "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac", "-b:a", "64k", "-f", "flv", "-"]
    data = subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout
    assert data[:3] == b"FLV"
    pos = int.from_bytes(data[5:9], "big") + 4  # the header, then PreviousTagSize0
    tags = []
    while pos + 11 <= len(data):
        size_ = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | data[pos + 7] << 24
        tags.append(FlvTag(data[pos], ts, data[pos + 11 : pos + 11 + size_]))
        pos += 11 + size_ + 4
    return tuple(tags)
