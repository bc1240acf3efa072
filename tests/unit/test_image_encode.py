"""wcs.media.encode: request parameters (errors name the parameter), Accept negotiation, sizes
(aspect ratio, no upscaling), every format decoding back, and colour kept (PSNR)."""

from __future__ import annotations

import functools
import io
import subprocess
import threading

import av
import numpy as np
import pytest
from av.video.frame import VideoFrame
from PIL import Image

from wcs.media.encode import (
    BadImageParam,
    ImageSpec,
    accepted_format,
    encode,
)
from wcs.media.image import frame_to_png, frame_to_rgb


@functools.cache
def decoded_frame(size: str = "640x360") -> VideoFrame:
    """A testsrc2 picture through x264 and back: yuv420p, limited range, as a camera's frames."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
         "-frames:v", "1", "-c:v", "libx264", "-preset", "veryfast", "-qp", "10",
         "-pix_fmt", "yuv420p", "-f", "h264", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    with av.open(io.BytesIO(raw), "r", format="h264") as container:
        return next(container.decode(video=0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def opened(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# -- parse -----------------------------------------------------------------------------------------
def test_defaults_are_full_size_png_quality_80() -> None:
    assert ImageSpec.parse({}, None) == ImageSpec("png", None, None, 80)
    assert ImageSpec.parse({"streamName": "x", "width": None}, "*/*") == ImageSpec()


def test_parses_each_parameter() -> None:
    spec = ImageSpec.parse({"format": "JPG", "width": "320", "height": "180", "quality": "55"})
    assert spec == ImageSpec("jpeg", 320, 180, 55)
    assert spec.content_type == "image/jpeg"
    assert ImageSpec.parse({"format": "webp"}).content_type == "image/webp"
    assert ImageSpec.parse({"quality": "1"}).quality == 1
    assert ImageSpec.parse({"quality": "100", "width": "16"}) == ImageSpec("png", 16, None, 100)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"format": "gif"}, "format"),
        ({"format": ""}, "format"),
        ({"width": "abc"}, "width"),
        ({"width": ""}, "width"),
        ({"width": "-20"}, "width"),
        ({"width": "15"}, "width"),
        ({"width": "1e3"}, "width"),
        ({"width": "320.5"}, "width"),
        ({"height": "0"}, "height"),
        ({"height": "99999999"}, "height"),
        ({"quality": "0"}, "quality"),
        ({"quality": "101"}, "quality"),
        ({"quality": "high"}, "quality"),
        ({"width": "320", "quality": "x"}, "quality"),
    ],
)
def test_invalid_parameters_are_named(query: dict[str, str | None], param: str) -> None:
    with pytest.raises(BadImageParam) as err:
        ImageSpec.parse(query, "image/webp")
    assert err.value.param == param
    assert str(err.value).startswith(param)
    assert repr(query[param]) in err.value.message


# -- Accept --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (None, None),
        ("", None),
        ("*/*", None),
        ("image/*", None),
        ("image/avif", None),
        ("image/png", "png"),
        ("image/jpeg", "jpeg"),
        ("IMAGE/WEBP", "webp"),
        # Chromium's <img> Accept header
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "webp"),
        ("image/png;q=0.9, image/jpeg;q=0.5", "png"),
        ("image/png, image/jpeg", "jpeg"),  # equal q: the smaller kind
        ("image/webp;q=0, image/jpeg;q=0.1", "jpeg"),  # q=0: not acceptable
        ("image/webp;q=oops, image/png", "png"),
        ("text/html, image/jpeg ; q=0.7 , image/png;level=1;q=0.6", "jpeg"),
    ],
)
def test_accept_header(accept: str | None, fmt: str | None) -> None:
    assert accepted_format(accept) == fmt
    assert ImageSpec.parse({}, accept).format == (fmt or "png")


def test_an_explicit_format_wins_over_accept() -> None:
    assert ImageSpec.parse({"format": "png"}, "image/webp").format == "png"


# -- sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (None, None, (1280, 720)),
        (320, None, (320, 180)),
        (None, 180, (320, 180)),
        (100, None, (100, 56)),  # 56.25 -> even
        (None, 100, (178, 100)),  # 177.8 -> even
        (1280, None, (1280, 720)),
        (16, None, (16, 10)),  # 9 -> even
        (640, 640, (640, 640)),  # both given: exactly that
    ],
)
def test_size_keeps_the_aspect_ratio(
    width: int | None, height: int | None, size: tuple[int, int]
) -> None:
    assert ImageSpec("jpeg", width, height).size_for(1280, 720) == size


def test_an_odd_source_side_is_never_exceeded() -> None:
    assert ImageSpec("png", 1279).size_for(1279, 719) == (1279, 719)
    assert ImageSpec("png", None, 719).size_for(1279, 719) == (1279, 719)


@pytest.mark.parametrize(
    ("width", "height", "param"),
    [(1281, None, "width"), (None, 721, "height"), (640, 800, "height")],
)
def test_no_upscaling(width: int | None, height: int | None, param: str) -> None:
    with pytest.raises(BadImageParam) as err:
        ImageSpec("jpeg", width, height).size_for(1280, 720)
    assert err.value.param == param
    assert "(720)" in err.value.message or "(1280)" in err.value.message


def test_encode_refuses_a_size_above_the_frame() -> None:
    with pytest.raises(BadImageParam) as err:
        encode(decoded_frame(), ImageSpec("jpeg", 641))
    assert err.value.param == "width"


# -- encode --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "mime", "pil_format"),
    [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")],
)
@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (None, None, (640, 360)),
        (320, None, (320, 180)),
        (None, 90, (160, 90)),
        (100, 100, (100, 100)),
    ],
)
def test_each_format_decodes_back_at_its_size(
    fmt: str,
    mime: str,
    pil_format: str,
    width: int | None,
    height: int | None,
    size: tuple[int, int],
) -> None:
    frame = decoded_frame()
    out = encode(frame, ImageSpec(fmt, width, height))  # type: ignore[arg-type]
    img = opened(out.data)
    assert (out.content_type, img.format, img.mode) == (mime, pil_format, "RGB")
    assert img.size == (out.width, out.height) == size
    # the picture, not just a picture: close to the source scaled by libswscale (luma: testsrc2's
    # saturated colour edges cost chroma a lot in any 4:2:0 codec)
    assert psnr(luma(np.asarray(img)), luma(frame_to_rgb(frame, *size))) > 38


def test_full_size_png_is_todays_snapshot_byte_for_byte() -> None:
    frame = decoded_frame()
    assert encode(frame, ImageSpec()).data == frame_to_png(frame)
    assert encode(frame, ImageSpec("png", 640, 360)).data == frame_to_png(frame)


def test_png_goes_through_the_encoder_given() -> None:
    seen: list[tuple[int, ...]] = []

    def png(rgb: np.ndarray) -> bytes:
        seen.append(rgb.shape)
        return b"png"

    assert encode(decoded_frame(), ImageSpec("png", 320), png=png).data == b"png"
    assert seen == [(180, 320, 3)]


def test_jpeg_q80_keeps_the_colours() -> None:
    """Matrix and range honoured: a limited-range BT.601 frame comes back neither washed out nor
    crushed (a range mistake costs ~14 % contrast)."""
    frame = decoded_frame("1280x720")
    assert frame.format.name == "yuv420p"
    source = frame_to_rgb(frame)
    back = np.asarray(opened(encode(frame, ImageSpec("jpeg", quality=80)).data))
    assert psnr(back, source) > 30
    assert psnr(luma(back), luma(source)) > 38
    assert abs(float(back.mean()) - float(source.mean())) < 2
    assert abs(float(back.std()) - float(source.std())) < 3
    # a lower quality costs bytes and fidelity in that order
    low = encode(frame, ImageSpec("jpeg", quality=20)).data
    assert len(low) < len(encode(frame, ImageSpec("jpeg", quality=80)).data)


def test_full_range_frames_are_not_crushed() -> None:
    """A full-range (yuvj / color_range JPEG) frame converts as full range."""
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = 255
    full = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuvj420p", dst_color_range="JPEG"
    )
    back = np.asarray(opened(encode(full, ImageSpec("png")).data))
    assert back[:, :28].min() >= 250 and back[:, 36:].max() <= 5
    assert np.array_equal(frame_to_rgb(full, 64, 64), frame_to_rgb(full))


def test_threads_encoding_one_frame_at_once() -> None:
    """Different formats of one decoded frame in pool threads at the same time (a frame's own
    reformatter is not safe for that)."""
    frame = decoded_frame()
    specs = [ImageSpec(f, w) for f in ("png", "jpeg", "webp") for w in (None, 320)] * 3
    want = {spec: encode(frame, spec).data for spec in set(specs)}
    errors: list[BaseException] = []

    def run(spec: ImageSpec) -> None:
        try:
            for _ in range(3):
                assert encode(frame, spec).data == want[spec]
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(spec,)) for spec in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
