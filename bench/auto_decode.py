"""Decode cost of automatic snapshots in-process: what a decoder pinned by the auto-snapshotter
decodes at rate N while nobody requests snapshots, against decoding every frame. Prints a table,
writes JSON.

The 720p30 main/B-frame clip of bench/cold_decode.py is fed unit by unit. The baseline decodes
every frame in jobs of 8 units (the service before GOP-at-a-time decoding); rate N runs a job at
each keyframe, as a pinned FrameSource nobody asks does (the previous GOP, complete, decoded for
its wanted pictures). The pictures handed over are checked against the frames N, 2N, ... of the
baseline (same pixels). CPU time of this process, same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cold_decode import gops_of, make_units  # noqa: E402
from wcs.media.decoder import DecodedFrame, StreamDecoder  # noqa: E402
from wcs.media.gop import Gop  # noqa: E402
from wcs.media.image import frame_to_rgb  # noqa: E402

BATCH = 8  # the baseline's job size


def run(gops: list[Gop], rate: int | None, *, check: dict[int, np.ndarray] | None) -> float:
    """CPU seconds to decode `gops` as a pinned decoder at `rate` (None: every frame wanted,
    nothing skipped: the baseline). Frames handed over are compared with `check`."""
    decoder = StreamDecoder(skip_disposable=rate is not None)
    got: dict[int, np.ndarray] = {}

    def on_frame(frame: DecodedFrame) -> None:
        if check is not None and (rate is None or frame.number % rate == 0):
            got[frame.number] = frame_to_rgb(frame.frame)

    decoder.on_frame = on_frame
    if rate is not None:
        decoder.want = lambda number: number % rate == 0
    t0 = time.process_time()
    feed: Gop | None = None
    for gop in gops:
        feed = Gop(gop.seq, gop.params)
        for unit in gop.units:
            feed.units.append(unit)
            if rate is not None and len(feed.units) == 1:
                decoder.catch_up(feed, 1, defer=True)
            elif rate is None and len(feed.units) % BATCH == 0:
                decoder.catch_up(feed, len(feed.units))
    assert feed is not None
    decoder.finish(feed, len(feed.units))
    spent = time.process_time() - t0
    if check is not None and rate is not None:
        wanted = {n: rgb for n, rgb in check.items() if n % rate == 0}
        assert got.keys() == wanted.keys(), (sorted(got)[:5], sorted(wanted)[:5])
        for n, rgb in wanted.items():
            assert np.array_equal(got[n], rgb), f"frame {n} differs"
    elif check is not None:
        check.update(got)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of the clip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "auto_decode.json")
    args = parser.parse_args()
    gops = gops_of(make_units(args.seconds))
    frames = sum(len(g.units) for g in gops)
    reference: dict[int, np.ndarray] = {}
    run(gops, None, check=reference)  # every frame, kept to check the others against
    rates = [1, 7, 30]
    for rate in rates:
        run(gops, rate, check=reference)  # exactness first, outside the timing rounds
    times: dict[str, list[float]] = {"all": [], **{f"rate {r}": [] for r in rates}}
    for _ in range(args.rounds):  # interleaved, so the machine's other load hits all alike
        times["all"].append(run(gops, None, check=None))
        for rate in rates:
            times[f"rate {rate}"].append(run(gops, rate, check=None))
    base = statistics.median(times["all"])
    print(f"auto-snapshot decoding, 720p30 main B-frames, {frames} frames, {args.rounds} rounds")
    print(f"{'decoder':<10}{'CPU s':>8}{'ms/frame':>10}{'x all':>8}")
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        rows[name] = {
            "cpu_s": round(median, 3),
            "ms_per_frame": round(1000 * median / frames, 3),
            "ratio_to_all": round(median / base, 3),
        }
        print(f"{name:<10}{median:>8.2f}{1000 * median / frames:>10.2f}{median / base:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"frames": frames, "decoders": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
