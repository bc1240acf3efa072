"""Codec-neutral media units: what every ingest front-end hands to a Stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

MS = Fraction(1, 1000)
# Default of max_picture_pixels: the largest picture a stream may declare (8K DCI-ish, 8192x4352).
MAX_PICTURE_PIXELS = 8192 * 4352


@dataclass(frozen=True, slots=True)
class MediaUnit:
    """One access unit. Video H.264 is an Annex B access unit; timestamps are in `time_base`."""

    kind: str  # "video" or "audio"
    codec: str  # "H264", "VP8", "AAC", ...
    pts: int
    dts: int
    keyframe: bool
    data: bytes
    time_base: Fraction = MS


@dataclass(frozen=True, slots=True)
class VideoParams:
    """What a decoder needs before the first keyframe; a new object when the encoder changes it."""

    codec: str
    width: int = 0
    height: int = 0
    extradata: bytes = b""  # Annex B SPS+PPS for H.264
    profile: str = ""
    extra: dict[str, object] = field(default_factory=dict, compare=False)
