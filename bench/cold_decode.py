"""Cold snapshot decode cost in-process: the newest picture at a random point of a GOP, decoded
from its keyframe by a fresh decoder, as a cold REST request does. Prints a table, writes JSON.

720p30 H.264 main with B-frames (x264 -bf 3, B-pyramid), GOP 2 s, 3 Mbit/s, made once with
ffmpeg. For the same random targets (same run, so ratios hold on a noisy machine):
- full: every unit decoded, one thread (the baseline the issue's ratio is against);
- skip: pictures nothing references skipped but for the last few, one thread;
- full+drain: every unit, one thread, flushed at the end, so its picture is the newest in
  display order (the two above return the newest one output without a flush);
- wcs: what a cold request does (StreamDecoder().newest): skipping, on a context of its own
  with frame threads, flushed at the end (its picture is full+drain's).
Each picture is checked against the one-thread full decode's of the same kind (same pixels).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wcs.media import h264  # noqa: E402
from wcs.media.decoder import COLD_MIN_UNITS, StreamDecoder, keep_tail_of  # noqa: E402
from wcs.media.gop import Gop  # noqa: E402
from wcs.media.image import frame_to_rgb  # noqa: E402
from wcs.media.units import MediaUnit, VideoParams  # noqa: E402


def make_units(seconds: int) -> list[MediaUnit]:
    ts = subprocess.run(
        [
            "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main",
            "-bf", "3", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
            "-b:v", "3M", "-maxrate", "3M", "-bufsize", "6M", "-pix_fmt", "yuv420p",
            "-f", "mpegts", "-",
        ],
        check=True,
        capture_output=True,
    ).stdout  # fmt: skip
    units = []
    with av.open(io.BytesIO(ts), "r", format="mpegts") as container:
        stream = container.streams.video[0]
        tb = Fraction(stream.time_base or Fraction(1, 90000))
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None and packet.dts is not None:
                units.append(
                    MediaUnit("video", "H264", packet.pts, packet.dts, packet.is_keyframe,
                              bytes(packet), tb)
                )  # fmt: skip
    return units


def gops_of(units: list[MediaUnit]) -> list[Gop]:
    gops: list[Gop] = []
    for unit in units:
        if unit.keyframe:
            gops.append(Gop(len(gops) + 1, VideoParams("H264")))
        if gops:
            gops[-1].units.append(unit)
    return [g for g in gops if len(g.units) >= 60]


def newest(decoder: StreamDecoder, gop: Gop, end: int) -> Any:
    picture = decoder.newest(gop, end)
    return None if picture is None else picture.frame


def full_drain(gop: Gop, end: int) -> Any:
    decoder = StreamDecoder(skip_disposable=False, cold_threads=1)
    decoder.catch_up(gop, end)
    decoder.drain()
    return None if decoder.latest is None else decoder.latest.frame


VARIANTS = {
    "full": lambda gop, end: newest(StreamDecoder(skip_disposable=False, cold_threads=1), gop, end),
    "skip": lambda gop, end: newest(StreamDecoder(cold_threads=1), gop, end),
    "full+drain": full_drain,
    "wcs": lambda gop, end: newest(StreamDecoder(), gop, end),
}
# The picture each variant must equal.
REFERENCE = {
    "full": "full",
    "skip": "full",
    "full+drain": "full+drain",
    "wcs": "full+drain",
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--seconds", type=int, default=20, help="length of the clip")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cold_decode.json")
    args = parser.parse_args()
    gops = gops_of(make_units(args.seconds))
    rng = random.Random(args.seed)
    targets = [(rng.choice(gops), rng.randint(1, 60)) for _ in range(args.samples)]
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    mismatches = {name: 0 for name in VARIANTS}
    skipped = decoded = 0
    for gop, end in targets:
        order = list(VARIANTS.items())
        rng.shuffle(order)  # no variant always runs first (caches, the machine's other load)
        pictures = {}
        for name, decode in order:
            t0 = time.perf_counter()
            pictures[name] = decode(gop, end)
            times[name].append((time.perf_counter() - t0) * 1000)
        for name, picture in pictures.items():
            # Below COLD_MIN_UNITS a cold request decodes on one thread, unflushed.
            kind = REFERENCE[name] if end >= COLD_MIN_UNITS else "full"
            reference = pictures[kind if name != "full+drain" else name]
            same = (picture is None) == (reference is None) and (
                picture is None or np.array_equal(frame_to_rgb(picture), frame_to_rgb(reference))
            )
            mismatches[name] += not same
        below = end - keep_tail_of(gop.params, gop.units[0])
        skipped += sum(
            1
            for pos, u in enumerate(gop.units[:end])
            if pos < below and not u.keyframe and h264.is_disposable(u.data)
        )
        decoded += end
    base = statistics.median(times["full"])
    rows = {}
    print(f"cold decode, 720p30 main B-frames GOP 60, {args.samples} random targets")
    print(f"{'variant':<14}{'median ms':>10}{'p90 ms':>9}{'x full':>8}{'wrong':>7}")
    for name, values in times.items():
        median, p90 = statistics.median(values), pct(values, 0.9)
        rows[name] = {
            "median_ms": round(median, 2),
            "p90_ms": round(p90, 2),
            "ratio_to_full": round(median / base, 3),
            "wrong_pictures": mismatches[name],
        }
        print(f"{name:<14}{median:>10.1f}{p90:>9.1f}{median / base:>8.2f}{mismatches[name]:>7}")
    print(f"units skipped: {skipped} of {decoded} ({100 * skipped / decoded:.0f} %)")
    result = {
        "samples": args.samples,
        "keep_tail": keep_tail_of(gops[0].params, gops[0].units[0]),
        "skipped_units_share": round(skipped / decoded, 3),
        "variants": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
