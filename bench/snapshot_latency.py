"""Snapshot latency of a live RTMP stream and server CPU per ingested stream: a table and JSON.

One 720p30 main-profile H.264 stream with B-frames (GOP 2 s) is published by ffmpeg (-re -c copy
of a pre-encoded clip, looped); REST snapshots are taken at random moments 0.1-2.1 s apart.
The same is measured for the clip published over RTSP (TCP and UDP) and pulled as an RTSP camera
(from the server's own RTSP PLAY, and from gst-rtsp-server). Then N publishers of the same clip
run at once with no snapshots, and the server's CPU is read;
then the same N streams are polled round-robin like a monitoring dashboard.
"""

from __future__ import annotations

import argparse
import base64
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

from bench.common import cpu_seconds, looped_publisher, make_clip, pct  # noqa: E402
from tests.integration.camera import start_camera  # noqa: E402
from tests.integration.conftest import Server, start_server  # noqa: E402


def wait_published(server: Server, name: str, mark: int) -> float:
    server.wait_for_log(rf"publishing {name} ", start=mark)
    return time.monotonic()


def latency_run(server: Server, clip: Path, samples: int, rng: random.Random) -> dict[str, object]:
    mark = server.log_mark()
    proc = looped_publisher(server.rtmp("bench"), clip)
    try:
        wait_published(server, "bench", mark)
        return sample_latency(server, "bench", samples, rng)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def rtsp_publish_run(
    server: Server, clip: Path, samples: int, rng: random.Random, transport: str
) -> dict[str, object]:
    """The same clip published by ffmpeg over RTSP (ANNOUNCE/RECORD)."""
    name = f"rtsp{transport}"
    mark = server.log_mark()
    cmd = ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy"]
    cmd += ["-f", "rtsp", "-rtsp_transport", transport, server.rtsp(name)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_published(server, name, mark)
        return sample_latency(server, name, samples, rng)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def camera_pull_run(
    server: Server, uri: str, name: str, samples: int, rng: random.Random
) -> dict[str, object]:
    """An RTSP camera pulled with /rtsp/startup."""
    mark = server.log_mark()
    status, body = server.rest("/rest-api/rtsp/startup", {"uri": uri, "toStream": name})
    assert status == 200, body
    try:
        server.wait_for_log(rf"RTSP pull {name}: media flowing", start=mark)
        return sample_latency(server, name, samples, rng)
    finally:
        server.rest("/rest-api/rtsp/terminate", {"uri": uri})


def sample_latency(
    server: Server, name: str, samples: int, rng: random.Random
) -> dict[str, object]:
    """REST snapshots of a live stream at random moments 0.1-2.1 s apart."""
    threading.Event().wait(2.5)  # let the first GOP arrive before the first (cold) request
    pid = server.proc.pid
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    latencies: list[float] = []
    sizes: list[int] = []
    for _ in range(samples):
        threading.Event().wait(rng.uniform(0.1, 2.1))
        t = time.perf_counter()
        status, body = server.snapshot(name)
        latencies.append((time.perf_counter() - t) * 1000)
        assert status == 200 and isinstance(body, dict), body
        sizes.append(len(base64.b64decode(body["data"])))
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0) * 100
    warm = latencies[1:]
    return {
        "samples": samples,
        "first_request_ms": round(latencies[0], 1),
        "median_ms": round(statistics.median(warm), 1),
        "p90_ms": round(pct(warm, 0.9), 1),
        "max_ms": round(max(warm), 1),
        "min_ms": round(min(warm), 1),
        "png_kb_median": round(statistics.median(sizes) / 1024, 1),
        "server_cpu_pct_of_core": round(cpu, 1),
    }


def summarize(latencies: list[float]) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "median_ms": round(statistics.median(latencies), 1),
        "p90_ms": round(pct(latencies, 0.9), 1),
        "max_ms": round(max(latencies), 1),
    }


def ingest_and_dashboard_run(
    server: Server, clip: Path, publishers: int, seconds: float, poll_every: float
) -> tuple[dict[str, object], dict[str, object]]:
    """N publishers with no snapshots (ingest CPU), then the same N polled round-robin, each
    stream every `poll_every` seconds, as a monitoring dashboard would."""
    procs = []
    try:
        for i in range(publishers):
            mark = server.log_mark()
            procs.append(looped_publisher(server.rtmp(f"load{i}"), clip))
            wait_published(server, f"load{i}", mark)
        threading.Event().wait(2.0)
        pid = server.proc.pid
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        threading.Event().wait(seconds)
        ingest_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0) * 100
        latencies: list[float] = []
        gap = poll_every / publishers
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        next_at = wall0
        while time.monotonic() - wall0 < seconds:
            for i in range(publishers):
                next_at += gap
                threading.Event().wait(max(0.0, next_at - time.monotonic()))
                t = time.perf_counter()
                status, body = server.snapshot(f"load{i}")
                latencies.append((time.perf_counter() - t) * 1000)
                assert status == 200, body
        dashboard_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0) * 100
        alive = sum(p.poll() is None for p in procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    ingest: dict[str, object] = {
        "publishers": publishers,
        "publishers_alive_at_end": alive,
        "server_cpu_pct_of_core": round(ingest_cpu, 1),
        "cpu_pct_per_stream": round(ingest_cpu / publishers, 2),
    }
    dashboard: dict[str, object] = {
        "streams": publishers,
        "each_stream_polled_every_s": poll_every,
        **summarize(latencies),
        "server_cpu_pct_of_core": round(dashboard_cpu, 1),
    }
    return ingest, dashboard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--publishers", type=int, default=20)
    parser.add_argument("--ingest-seconds", type=float, default=20.0)
    parser.add_argument("--poll-every", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "snapshot_latency.json"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clip = workdir / "clip720p_main_bf.flv"
        make_clip(clip, 20)
        server = start_server(workdir)
        rtsp: dict[str, dict[str, object]] = {}
        try:
            latency = latency_run(server, clip, args.samples, rng)
            for transport in ("tcp", "udp"):
                rtsp[f"publish_{transport}"] = rtsp_publish_run(
                    server, clip, args.samples, rng, transport
                )
            # The same 720p main stream pulled as from a camera: published over RTMP, pulled
            # back from the server's own RTSP PLAY by its camera client.
            mark = server.log_mark()
            relay = looped_publisher(server.rtmp("source"), clip)
            try:
                wait_published(server, "source", mark)
                rtsp["pull_same_stream"] = camera_pull_run(
                    server, server.rtsp("source"), "pulled", args.samples, rng
                )
            finally:
                relay.terminate()
                relay.wait(timeout=10)
            # A real RTSP server as the camera: gst-rtsp-server, x264 720p30 baseline, GOP 2 s.
            with start_camera(size="1280x720", gop=60) as camera:
                rtsp["pull_gst_camera"] = camera_pull_run(
                    server, camera.url, "camera", args.samples, rng
                )
            ingest, dashboard = ingest_and_dashboard_run(
                server, clip, args.publishers, args.ingest_seconds, args.poll_every
            )
        finally:
            server.stop()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "stream": "720p30 H.264 main, B-frames, GOP 2 s, RTMP (ffmpeg -re -c copy)",
        "rtmp_snapshot_latency": latency,
        "rtsp_snapshot_latency": rtsp,
        "rtmp_ingest_cpu": ingest,
        "dashboard_polling": dashboard,
    }
    keys = ("first_request_ms", "median_ms", "p90_ms", "max_ms", "min_ms")
    rows = {"RTMP publish": latency} | {
        {
            "publish_tcp": "RTSP publish TCP",
            "publish_udp": "RTSP publish UDP",
            "pull_same_stream": "RTSP pull (same)",
            "pull_gst_camera": "RTSP pull (gst)",
        }[k]: v
        for k, v in rtsp.items()
    }
    print(f"{'snapshot latency (ms)':<20}" + "".join(f"{k.removesuffix('_ms'):>14}" for k in keys))
    for label, row in rows.items():
        print(f"  {label:<18}" + "".join(f"{row[k]!s:>14}" for k in keys))
    print(f"  {'server CPU during RTMP run (% core)':<32}{latency['server_cpu_pct_of_core']:>10}")
    print(f"  {'PNG size median (KB)':<32}{latency['png_kb_median']:>10}")
    print(f"{'Ingest, ' + str(args.publishers) + ' publishers':<34}")
    print(f"  {'server CPU (% of one core)':<32}{ingest['server_cpu_pct_of_core']:>10}")
    print(f"  {'per stream (% of one core)':<32}{ingest['cpu_pct_per_stream']:>10}")
    print(f"  {'publishers alive at end':<32}{ingest['publishers_alive_at_end']:>10}")
    print(f"{'Dashboard: each stream every ' + str(args.poll_every) + ' s':<34}")
    for key in ("requests", "median_ms", "p90_ms", "max_ms", "server_cpu_pct_of_core"):
        print(f"  {key:<32}{dashboard[key]:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
