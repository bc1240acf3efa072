"""Hot snapshot latency over REST against a baseline commit, in one run: a table and JSON.

One 720p30 main/B-frame H.264 stream (bench/snapshot_latency.py's clip, looped, -c copy) is
published by ffmpeg to a server of this tree and, alternately, to a server of `--baseline`
(checked out in a temporary git worktree and run with it first on PYTHONPATH). After a first
request makes the stream hot, requests come at random moments 0.1-0.6 s apart; the latency is
the time to the last byte of the HTTP answer (the JSON is decoded after the clock stops); the
time to its first byte is the server's work before it starts sending.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import looped_publisher, make_clip, pct  # noqa: E402
from tests.integration.conftest import Server, start_server  # noqa: E402


def timed_snapshot(server: Server, name: str) -> tuple[float, float]:
    """Milliseconds to the last byte of one REST snapshot, and to its first (the headers: the
    server's decode and PNG; the rest is the transfer)."""
    host, port = server.http.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"streamName": name})
    t0 = time.perf_counter()
    conn.request("POST", "/rest-api/stream/snapshot", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = (time.perf_counter() - t0) * 1000
    data = response.read()
    elapsed = (time.perf_counter() - t0) * 1000
    conn.close()
    assert response.status == 200, data[:200]
    assert base64.b64decode(json.loads(data)["data"]).startswith(b"\x89PNG")
    return elapsed, first


def run(workdir: Path, clip: Path, samples: int, rng: random.Random) -> list[tuple[float, float]]:
    server = start_server(workdir, "")
    try:
        mark = server.log_mark()
        publisher = looped_publisher(server.rtmp("hot"), clip)
        try:
            server.wait_for_log(r"publishing hot ", start=mark)
            threading.Event().wait(2.5)  # the first GOP is in
            timed_snapshot(server, "hot")  # the cold request that makes it hot
            latencies = []
            for _ in range(samples):
                threading.Event().wait(rng.uniform(0.1, 0.6))
                latencies.append(timed_snapshot(server, "hot"))
            return latencies
        finally:
            publisher.terminate()
            publisher.wait(timeout=10)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD~1", help="git revision to compare with")
    parser.add_argument("--samples", type=int, default=60, help="requests per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "hot_snapshot.json"
    )
    args = parser.parse_args()
    rng = random.Random(11)
    with tempfile.TemporaryDirectory(prefix="wcs-hot-") as tmp:
        tmpdir = Path(tmp)
        clip = tmpdir / "clip.flv"
        make_clip(clip, 20)
        base_tree = tmpdir / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.baseline],
            check=True,
            capture_output=True,
        )
        results: dict[str, list[tuple[float, float]]] = {"baseline": [], "this tree": []}
        try:
            for index in range(args.rounds):
                for name in ("baseline", "this tree"):
                    workdir = tmpdir / f"{name.replace(' ', '-')}-{index}"
                    workdir.mkdir()
                    saved = os.environ.get("PYTHONPATH")
                    if name == "baseline":
                        os.environ["PYTHONPATH"] = str(base_tree)
                    try:
                        results[name] += run(workdir, clip, args.samples, rng)
                    finally:
                        if saved is None:
                            os.environ.pop("PYTHONPATH", None)
                        else:
                            os.environ["PYTHONPATH"] = saved
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
                check=False,
                capture_output=True,
            )
    base = statistics.median(last for last, _ in results["baseline"])
    print(f"hot REST snapshot, 720p30 main B-frames; baseline {args.baseline}")
    print(f"{'server':<12}{'median ms':>10}{'p90 ms':>9}{'max ms':>9}{'x base':>8}{'TTFB ms':>9}")
    rows = {}
    for name, pairs in results.items():
        values = [last for last, _ in pairs]
        ttfb = statistics.median(first for _, first in pairs)
        median, p90 = statistics.median(values), pct(values, 0.9)
        rows[name] = {
            "requests": len(values),
            "median_ms": round(median, 1),
            "p90_ms": round(p90, 1),
            "max_ms": round(max(values), 1),
            "ratio_to_baseline": round(median / base, 3),
            "first_byte_median_ms": round(ttfb, 1),
        }
        print(
            f"{name:<12}{median:>10.1f}{p90:>9.1f}{max(values):>9.1f}{median / base:>8.2f}"
            f"{ttfb:>9.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"baseline": args.baseline, "servers": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
