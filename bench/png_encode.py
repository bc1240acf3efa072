"""PNG encoders on a decoded 720p frame (synthetic and noisy): why wcs uses fpng.

Prints median/p90 ms and size per encoder and writes JSON; every output is decoded back and
checked to be lossless.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from wcs.media.image import frame_to_rgb, rgb_to_png

ROOT = Path(__file__).resolve().parent.parent


def source_frame(noisy: bool) -> np.ndarray:
    vf = "testsrc2=size=1280x720:rate=30"
    if noisy:
        vf += ",noise=alls=12:allf=t"
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", vf, "-frames:v", "1", "-c:v", "libx264",
         "-preset", "veryfast", "-f", "h264", "-"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with av.open(io.BytesIO(raw), "r", format="h264") as container:
        frame = next(container.decode(video=0))
    return frame_to_rgb(frame)


def pyav_png(rgb: np.ndarray) -> bytes:
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
    ctx.time_base = Fraction(1, 30)
    ctx.options = {"compression_level": "1"}
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return b"".join(bytes(p) for p in ctx.encode(frame))


def pillow(level: int) -> Callable[[np.ndarray], bytes]:
    def encode(rgb: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, format="PNG", compress_level=level)
        return out.getvalue()

    return encode


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "fpng (wcs)": rgb_to_png,
    "PyAV png level 1": pyav_png,
    "Pillow level 1": pillow(1),
    "Pillow level 6 (default)": pillow(6),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "png_encode.json")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"{'encoder':<26}{'image':<13}{'median ms':>10}{'p90 ms':>9}{'KB':>8}")
    for label, noisy in (("synthetic", False), ("noisy", True)):
        rgb = source_frame(noisy)
        for name, encode in ENCODERS.items():
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                png = encode(rgb)
                times.append((time.perf_counter() - t) * 1000)
            back = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            assert np.array_equal(back, rgb), f"{name} is not lossless"
            times.sort()
            row = {
                "median_ms": round(statistics.median(times), 2),
                "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
                "kb": round(len(png) / 1024, 1),
            }
            results.setdefault(name, {})[label] = row
            print(f"{name:<26}{label:<13}{row['median_ms']:>10}{row['p90_ms']:>9}{row['kb']:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
