"""Snapshot formats on decoded camera-like frames (testsrc2 + noise through x264) at 720p and
1080p: encode ms (median, p90), bytes and PSNR per encoder, and how long each holds the GIL.

The candidates for JPEG and WebP are Pillow's (wcs.media.encode) and PyAV's (mjpeg, libwebp).
GIL: while one thread encodes in a loop, a ticker thread sleeps 1 ms at a time and records the
gaps (p99/max; idle ~1-4 ms on this machine); "2 thr" is the throughput of two encoding threads
over one (2.0: no GIL held, 1.0: the GIL serialises them). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame
from av.video.reformatter import Colorspace, VideoReformatter
from PIL import Image

from wcs.media.encode import ImageSpec, encode
from wcs.media.image import frame_to_rgb

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"720p": "1280x720", "1080p": "1920x1080"}
MJPEG_QSCALE = 6  # the bytes and PSNR of Pillow's q80 on this content (measured)


def camera_frames(size: str, count: int) -> list[VideoFrame]:
    """Decoded frames of a noisy testsrc2 clip (x264 main, B-frames), as a camera stream gives."""
    ts = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
         f"testsrc2=size={size}:rate=30,noise=alls=12:allf=t", "-frames:v", str(count),
         "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-bf", "3",
         "-pix_fmt", "yuv420p", "-f", "mpegts", "-"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with av.open(io.BytesIO(ts), "r", format="mpegts") as container:
        return list(container.decode(video=0))


def pyav_encoder(
    codec: str, pix_fmt: str, options: dict[str, str], dst_color_range: str
) -> Callable[[VideoFrame], bytes]:
    def run(frame: VideoFrame) -> bytes:
        yuv = VideoReformatter().reformat(
            frame,
            format=pix_fmt,
            src_color_range=frame.color_range or None,
            dst_colorspace=Colorspace.ITU601,  # what JPEG and WebP decoders assume
            dst_color_range=dst_color_range,
            threads=1,
        )
        ctx = cast(VideoCodecContext, av.CodecContext.create(codec, "w"))
        ctx.width, ctx.height, ctx.pix_fmt = frame.width, frame.height, pix_fmt
        ctx.time_base = Fraction(1, 30)
        ctx.options = options
        packets = [*ctx.encode(yuv), *ctx.encode(None)]
        return b"".join(bytes(p) for p in packets)

    return run


def wcs_encoder(spec: ImageSpec) -> Callable[[VideoFrame], bytes]:
    return lambda frame: encode(frame, spec).data


ENCODERS: dict[str, Callable[[VideoFrame], bytes]] = {
    "PNG fpng (wcs)": wcs_encoder(ImageSpec("png")),
    "JPEG q80 Pillow (wcs)": wcs_encoder(ImageSpec("jpeg", quality=80)),
    f"JPEG PyAV mjpeg qs{MJPEG_QSCALE}": pyav_encoder(
        "mjpeg",
        "yuvj420p",
        {"qmin": str(MJPEG_QSCALE), "qmax": str(MJPEG_QSCALE)},
        dst_color_range="JPEG",
    ),
    "WebP q80 Pillow m0 (wcs)": wcs_encoder(ImageSpec("webp", quality=80)),
    "WebP q80 PyAV libwebp m0": pyav_encoder(
        "libwebp",
        "yuv420p",
        {"quality": "80", "compression_level": "0"},
        dst_color_range="MPEG",
    ),
    "JPEG q80 320 wide (wcs)": wcs_encoder(ImageSpec("jpeg", 320, quality=80)),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def gil_gaps(work: Callable[[], object], seconds: float) -> tuple[float, float]:
    """p99 and max gap (ms) of a 1 ms sleep loop while `work` runs in a loop in another thread."""
    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append((now - last) * 1000)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        work()
    stop.set()
    ticker.join()
    gaps.sort()
    return gaps[int(0.99 * (len(gaps) - 1))], gaps[-1]


def two_thread_speedup(work: Callable[[], object], runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        work()
    one = time.perf_counter() - start
    threads = [
        threading.Thread(target=lambda: [work() for _ in range(runs // 2)]) for _ in range(2)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return one / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--gil-seconds", type=float, default=1.0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "image_formats.json"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    head = f"{'encoder':<28}{'size':<7}{'median ms':>10}{'p90 ms':>8}{'KB':>8}{'PSNR':>7}"
    print(head + f"{'tick p99':>10}{'tick max':>10}{'2 thr':>7}")
    for label, size in SIZES.items():
        frames = camera_frames(size, args.frames)
        for name, run in ENCODERS.items():
            times, sizes = [], []
            for i in range(args.runs):
                frame = frames[i % len(frames)]
                t = time.perf_counter()
                data = run(frame)
                times.append((time.perf_counter() - t) * 1000)
                sizes.append(len(data))
            frame = frames[0]
            back = Image.open(io.BytesIO(run(frame))).convert("RGB")
            ref = frame_to_rgb(frame)
            if back.size != (frame.width, frame.height):  # the resized one: against swscale's
                ref = frame_to_rgb(frame.reformat(width=back.width, height=back.height))
            times.sort()
            work = functools.partial(run, frame)
            p99, worst = gil_gaps(work, args.gil_seconds)
            row = {
                "median_ms": round(statistics.median(times), 2),
                "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
                "kb": round(statistics.median(sizes) / 1024, 1),
                "psnr_db": round(psnr(np.asarray(back), ref), 2),
                "ticker_p99_ms": round(p99, 2),
                "ticker_max_ms": round(worst, 2),
                "two_thread_speedup": round(two_thread_speedup(work, 8), 2),
            }
            results.setdefault(name, {})[label] = row
            print(
                f"{name:<28}{label:<7}{row['median_ms']:>10}{row['p90_ms']:>8}{row['kb']:>8}"
                f"{row['psnr_db']:>7}{row['ticker_p99_ms']:>10}{row['ticker_max_ms']:>10}"
                f"{row['two_thread_speedup']:>7}"
            )
    p99, worst = gil_gaps(lambda: time.sleep(0.01), args.gil_seconds)
    results["idle (ticker alone)"] = {
        "-": {"ticker_p99_ms": round(p99, 2), "ticker_max_ms": round(worst, 2)}
    }
    print(f"{'idle (ticker alone)':<68}{p99:>10.2f}{worst:>10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
