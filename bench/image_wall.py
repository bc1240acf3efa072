"""A wall of live streams polled through the image URLs, against the same wall polling the WCS
PNG endpoint; and go2rtc's frame URL on a cold and a hot stream. Prints a table, writes JSON.

N streams of bench/scale.py's 720p30 clip (H.264 main with B-frames, GOP 2 s, ~3 Mbit/s + AAC)
are published by ffmpeg tee processes with drifting keyframes. Each stream is polled once per
`--period` seconds, the polls spread evenly over the period (as a wall page's tiles are):

- `jpeg wall`: `GET /rest-api/stream/snapshot?format=jpeg&width=320&maxAge=<period>`;
- `png wall`: today's `POST /rest-api/stream/snapshot` (a full-size PNG in base64 JSON).

Per phase: server CPU (% of one core, total and above ingest alone), request latency median /
p90, bytes per answer, failures. Then `GET /api/frame.jpeg?src=` (no maxAge: the newest
picture) on streams nobody asked for 15 s (cold) and again 1-2 s later (hot). go2rtc's published
behaviour for that URL is to wait for the next keyframe: 0-2 s at GOP 2 s, median ~1 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, make_clip, pct  # noqa: E402
from bench.scale import CLIP_SECONDS, feed, wait_published  # noqa: E402
from tests.integration.conftest import Server, start_server  # noqa: E402

COLD_AFTER_S = 16.0  # longer than the server's 15 s hot window

_local = threading.local()


def connection(server: Server) -> http.client.HTTPConnection:
    """A keep-alive connection per polling thread, as a browser keeps per host."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = http.client.HTTPConnection(
            "127.0.0.1", server.ports["http"], timeout=30
        )
    return conn


def timed(
    server: Server, method: str, path: str, body: bytes | None = None
) -> tuple[float, int, int]:
    """(ms, status, bytes) of one request."""
    conn = connection(server)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    t0 = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        _local.conn = None
        return (time.perf_counter() - t0) * 1000, 0, 0
    return (time.perf_counter() - t0) * 1000, response.status, len(data)


def poll_phase(
    server: Server, names: list[str], period: float, seconds: float, kind: str
) -> dict[str, object]:
    """Poll every stream once per period for `seconds`; CPU of the server meanwhile."""
    results: list[tuple[float, int, int]] = []
    lock = threading.Lock()

    def one(name: str) -> None:
        if kind == "jpeg":
            path = f"/rest-api/stream/snapshot?streamName={name}&format=jpeg&width=320"
            got = timed(server, "GET", path + f"&maxAge={int(period * 1000)}")
        else:
            body = json.dumps({"streamName": name}).encode()
            got = timed(server, "POST", "/rest-api/stream/snapshot", body)
        with lock:
            results.append(got)

    step = period / len(names)
    pid = server.proc.pid
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        i = 0
        while time.monotonic() - t0 < seconds:
            due = t0 + i * step
            threading.Event().wait(max(0.0, due - time.monotonic()))
            pool.submit(one, names[i % len(names)])
            i += 1
    cpu = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    ok = [r for r in results if r[1] == 200]
    ms = [r[0] for r in ok]
    return {
        "requests": len(results),
        "failed": len(results) - len(ok),
        "cpu_pct": round(cpu, 1),
        "median_ms": round(statistics.median(ms), 1) if ms else None,
        "p90_ms": round(pct(ms, 90), 1) if ms else None,
        "bytes": int(statistics.median([r[2] for r in ok])) if ok else None,
    }


def idle_cpu(server: Server, seconds: float) -> float:
    pid = server.proc.pid
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    threading.Event().wait(seconds)
    return 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


def frame_phase(server: Server, names: list[str], rng: random.Random) -> dict[str, object]:
    """go2rtc's URL, newest picture: cold (nobody asked for 15 s), then hot 1-2 s later."""
    cold: list[float] = []
    hot: list[float] = []
    for name in rng.sample(names, min(10, len(names))):
        ms, status, _ = timed(server, "GET", f"/api/frame.jpeg?src={name}")
        if status == 200:
            cold.append(ms)
        threading.Event().wait(rng.uniform(1.0, 2.0))
        ms, status, _ = timed(server, "GET", f"/api/frame.jpeg?src={name}")
        if status == 200:
            hot.append(ms)
    return {
        "cold_median_ms": round(statistics.median(cold), 1) if cold else None,
        "cold_p90_ms": round(pct(cold, 90), 1) if cold else None,
        "hot_median_ms": round(statistics.median(hot), 1) if hot else None,
        "hot_p90_ms": round(pct(hot, 90), 1) if hot else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--period", type=float, default=2.0, help="seconds between polls of a tile")
    parser.add_argument("--seconds", type=float, default=30.0, help="per polling phase")
    parser.add_argument("--groups", type=int, default=5, help="ffmpeg feeders (drifting keyframes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "image_wall.json")
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="wcs-wall-") as tmp:
        work = Path(tmp)
        clip = work / "clip.flv"
        make_clip(clip, CLIP_SECONDS, 3000)
        server = start_server(work, "")
        try:
            names = [f"tile{i}" for i in range(args.streams)]
            mark = server.log_mark()
            with feed(server, clip, names, args.groups, rng, work / "ffmpeg.log"):
                live = wait_published(server, names, mark, timeout=60)
                threading.Event().wait(3.0)  # every stream past its first keyframe
                ingest = idle_cpu(server, 10.0)
                jpeg = poll_phase(server, live, args.period, args.seconds, "jpeg")
                threading.Event().wait(COLD_AFTER_S)
                frame = frame_phase(server, live, rng)
                png = poll_phase(server, live, args.period, args.seconds, "png")
        finally:
            server.stop()
    print(
        f"wall of {len(live)} streams (720p30, GOP 2 s), one poll per tile every {args.period} s; "
        f"ingest alone {ingest:.1f} % of a core"
    )
    head = ("phase", "req", "fail", "cpu%", "+cpu%", "med ms", "p90 ms", "bytes")
    print("{:<12}{:>6}{:>6}{:>8}{:>8}{:>9}{:>9}{:>10}".format(*head))
    for name, row in (("jpeg wall", jpeg), ("png wall", png)):
        above = float(str(row["cpu_pct"])) - ingest
        print(
            f"{name:<12}{row['requests']:>6}{row['failed']:>6}{row['cpu_pct']:>8}{above:>8.1f}"
            f"{row['median_ms']!s:>9}{row['p90_ms']!s:>9}{row['bytes']!s:>10}"
        )
    cold = f"{frame['cold_median_ms']}/{frame['cold_p90_ms']}"
    hot = f"{frame['hot_median_ms']}/{frame['hot_p90_ms']}"
    print(
        f"/api/frame.jpeg newest picture: cold {cold} ms, hot {hot} ms (median/p90); "
        "go2rtc waits for the next keyframe: ~1000/1800 ms at GOP 2 s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"streams": len(live), "period_s": args.period, "ingest_cpu_pct": round(ingest, 1),
             "jpeg_wall": jpeg, "png_wall": png, "frame_jpeg": frame},
            indent=2,
        )
        + "\n"
    )  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
