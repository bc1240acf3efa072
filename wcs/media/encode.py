"""One decoded frame -> PNG, JPEG or WebP at the size a request asks for (`ImageSpec`, `encode`).

PNG is fpng as in `wcs.media.image`; JPEG and WebP are Pillow's (bench/image_formats.py, camera-like
720p/1080p): its JPEG is 1.1-2.5x faster than PyAV's mjpeg at the same PSNR (up to 20 % more bytes),
its WebP 10-45 % slower than PyAV's libwebp for 25 % fewer bytes. Both JPEGs hold the GIL.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

# Imported with the server, not by the first request's pool thread (~0.2 s, under the import lock).
from PIL import Image

from wcs.media.image import frame_to_rgb, rgb_to_png

if TYPE_CHECKING:
    from av.video.frame import VideoFrame

Format = Literal["png", "jpeg", "webp"]
FORMATS: tuple[Format, ...] = ("png", "jpeg", "webp")
CONTENT_TYPES: dict[Format, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# `format=` spellings; "jpg" because everybody types it.
_FORMAT_NAMES: dict[str, Format] = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_ACCEPT_TYPES: dict[str, Format] = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
# On equal q in an Accept header: the smaller pictures first.
_ACCEPT_ORDER: tuple[Format, ...] = ("webp", "jpeg", "png")
MIN_SIDE = 16
DEFAULT_QUALITY = 80
# libwebp's method 0..6: 0 is 3.5x faster than the default 4 at 720p for ~8 % more bytes.
WEBP_METHOD = 0
_INT = re.compile(r"[0-9]{1,6}")


class BadImageParam(ValueError):
    """A query parameter of an image request is invalid; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def _int_param(
    query: Mapping[str, str | None], name: str, low: int, high: int | None
) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    text = raw.strip()
    value = int(text) if _INT.fullmatch(text) else None
    if value is None or value < low or (high is not None and value > high):
        upper = str(high) if high is not None else f"the source {name}"
        raise BadImageParam(name, f"{name} must be an integer from {low} to {upper}, not {raw!r}")
    return value


def accepted_format(accept: str | None) -> Format | None:
    """The image format an HTTP Accept header names with the highest q (on a tie: webp, jpeg,
    png); None when it names none of them (wildcards such as image/* choose nothing)."""
    chosen: Format | None = None
    best = (0.0, 0)
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        fmt = _ACCEPT_TYPES.get(media.lower())
        if fmt is None:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # malformed: not a preference to honour
        rank = (q, len(_ACCEPT_ORDER) - _ACCEPT_ORDER.index(fmt))
        if q > 0 and rank > best:
            best, chosen = rank, fmt
    return chosen


@dataclass(frozen=True)
class ImageSpec:
    """What a request wants: format, a width and/or height (None: the source's; one side keeps the
    aspect ratio) and a quality for JPEG/WebP (PNG ignores it)."""

    format: Format = "png"
    width: int | None = None
    height: int | None = None
    quality: int = DEFAULT_QUALITY

    @classmethod
    def parse(cls, query: Mapping[str, str | None], accept: str | None = None) -> ImageSpec:
        """From query parameters `format`, `width`, `height`, `quality` (None: absent) and the
        Accept header. Raises BadImageParam; the upper size limit is `size_for`'s to check."""
        raw_format = query.get("format")
        if raw_format is None:
            fmt: Format = accepted_format(accept) or "png"
        else:
            found = _FORMAT_NAMES.get(raw_format.strip().lower())
            if found is None:
                raise BadImageParam(
                    "format", f"format must be one of png, jpeg, webp, not {raw_format!r}"
                )
            fmt = found
        width = _int_param(query, "width", MIN_SIDE, None)
        height = _int_param(query, "height", MIN_SIDE, None)
        quality = _int_param(query, "quality", 1, 100)
        return cls(fmt, width, height, DEFAULT_QUALITY if quality is None else quality)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def size_for(self, src_width: int, src_height: int) -> tuple[int, int]:
        """The output size for a source of that size: one side given keeps the aspect ratio (the
        other side rounded to an even number); never larger than the source (BadImageParam)."""
        for name, value, limit in (
            ("width", self.width, src_width),
            ("height", self.height, src_height),
        ):
            if value is not None and value > limit:
                raise BadImageParam(
                    name, f"{name} must be an integer from {MIN_SIDE} to the source {name} "
                    f"({limit}), not {value}",
                )  # fmt: skip
        width, height = self.width, self.height
        if width is None and height is None:
            return src_width, src_height
        if width is not None and height is not None:
            return width, height
        if width is not None:
            return width, _scaled(src_height, width, src_width)
        assert height is not None
        return _scaled(src_width, height, src_height), height


def _scaled(side: int, num: int, den: int) -> int:
    if num == den:
        return side
    return min(side, max(2, 2 * int(side * num / den / 2 + 0.5)))  # half up: 9 -> 10


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    content_type: str
    width: int
    height: int


# -- encoders ------------------------------------------------------------------------------------
def rgb_to_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG (4:2:0, baseline) with Pillow's libjpeg-turbo. Holds the GIL while it compresses."""
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def rgb_to_webp(rgb: np.ndarray, quality: int) -> bytes:
    """Lossy WebP with Pillow's libwebp (releases the GIL while it compresses)."""
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="WEBP", quality=quality, method=WEBP_METHOD)
    return out.getvalue()


def encode(
    frame: VideoFrame,
    spec: ImageSpec,
    *,
    png: Callable[[np.ndarray], bytes] = rgb_to_png,
    jpeg: Callable[[np.ndarray, int], bytes] = rgb_to_jpeg,
    webp: Callable[[np.ndarray, int], bytes] = rgb_to_webp,
) -> EncodedImage:
    """The frame as `spec` asks (blocking: call it in a pool thread). Raises BadImageParam for a
    size above the frame's. `png` may be `shared_encoders().rgb_to_png` (fpng in helper
    processes, same bytes); a full-size PNG is byte for byte `frame_to_png(frame)`."""
    width, height = spec.size_for(frame.width, frame.height)
    rgb = frame_to_rgb(frame, width, height)
    if spec.format == "png":
        data = png(rgb)
    elif spec.format == "jpeg":
        data = jpeg(rgb, spec.quality)
    else:
        data = webp(rgb, spec.quality)
    return EncodedImage(data, spec.content_type, width, height)


__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "BadImageParam",
    "EncodedImage",
    "Format",
    "ImageSpec",
    "accepted_format",
    "encode",
    "rgb_to_jpeg",
    "rgb_to_webp",
]
