"""CPU of automatic snapshots per 720p30 main-profile stream (rate 30), and how many such streams
the machine keeps decoding in real time without dropped GOPs: a table and JSON.

N ffmpeg publishers (-re -c copy of one pre-encoded clip, looped) run against a server with
snapshot_auto_enabled; the server's CPU is sampled every second. The same is measured with auto
snapshots off (ingest only) and for the usual alternative, an `ffmpeg -vf fps=1` thumbnailer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, looped_publisher, make_clip, pct  # noqa: E402
from tests.integration.conftest import Server, start_server  # noqa: E402

AUTO = "snapshot_auto_enabled=true\nsnapshot_auto_dir=auto\nsnapshot_auto_rate=30\n"


def sample_cpu(pids: list[int], seconds: int) -> list[float]:
    """Percent of one core used by `pids` together, per one-second interval."""
    samples = []
    before = sum(cpu_seconds(p) for p in pids)
    t0 = time.monotonic()
    for _ in range(seconds):
        threading.Event().wait(1.0)
        now = sum(cpu_seconds(p) for p in pids)
        t1 = time.monotonic()
        samples.append(100 * (now - before) / (t1 - t0))
        before, t0 = now, t1
    return samples


def auto_counters(server: Server) -> list[dict[str, int]]:
    status, found = server.rest("/rest-api/stream/find_all", None, method="GET")
    assert status == 200 and isinstance(found, list), found
    return [s["autoSnapshot"] for s in found if "autoSnapshot" in s]


def server_run(
    workdir: Path, clip: Path, n: int, auto: bool, seconds: int, warmup: float
) -> dict[str, object]:
    server = start_server(workdir, AUTO if auto else "")
    procs = []
    try:
        mark = server.log_mark()
        for i in range(n):
            procs.append(looped_publisher(server.rtmp(f"s{i}"), clip))
        for i in range(n):
            server.wait_for_log(rf"publishing s{i} ", start=mark)
        threading.Event().wait(warmup)
        before = auto_counters(server) if auto else []
        # The reactor's responsiveness under load (fpng holds the GIL while it encodes): a
        # trivial REST call every 100 ms while the CPU is sampled.
        rest_ms: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.1):
                t = time.perf_counter()
                server.rest("/rest-api/stream/find_all", None, method="GET")
                rest_ms.append((time.perf_counter() - t) * 1000)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            samples = sample_cpu([server.proc.pid], seconds)
        finally:
            stop.set()
            poller.join()
        after = auto_counters(server) if auto else []
        per_stream = [s / n for s in samples]
        row: dict[str, object] = {
            "streams": n,
            "auto": auto,
            "server_cpu_pct_median": statistics.median(samples),
            "per_stream_cpu_pct_median": statistics.median(per_stream),
            "per_stream_cpu_pct_p90": pct(per_stream, 0.9),
            "rest_ms_median": statistics.median(rest_ms),
            "rest_ms_p90": pct(rest_ms, 0.9),
        }
        if auto:
            written = sum(a["written"] for a in after) - sum(b["written"] for b in before)
            files_per_s = written / n / seconds
            dropped = sum(a["droppedGops"] for a in after)
            row["files_per_stream_per_s"] = files_per_s
            row["dropped_gops"] = dropped
            row["errors"] = sum(a["errors"] for a in after)
            # 30 fps at rate 30: one file per stream per second when decoding keeps up
            row["keeps_up"] = dropped == 0 and files_per_s >= 0.9
        return row
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        server.stop()


def thumbnailer_run(workdir: Path, clip: Path, seconds: int, warmup: float) -> dict[str, object]:
    """What users run today: one ffmpeg per stream decoding it and writing a PNG per second."""
    out = workdir / "thumbs"
    out.mkdir()
    cmd = ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-an"]
    cmd += ["-vf", "fps=1", "-f", "image2", str(out / "%06d.png")]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        threading.Event().wait(warmup)
        samples = sample_cpu([proc.pid], seconds)
        return {
            "streams": 1,
            "per_stream_cpu_pct_median": statistics.median(samples),
            "per_stream_cpu_pct_p90": pct(samples, 0.9),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def decode_only(clip: Path) -> dict[str, object]:
    """The floor: PyAV decoding the same clip in this process, one thread, as the server does."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        extradata = stream.codec_context.extradata
        packets = [bytes(p) for p in container.demux(stream) if p.size]
    per_frame = []
    for _ in range(3):
        ctx = av.CodecContext.create("h264", "r")
        ctx.extradata = extradata
        ctx.thread_count = 1
        t = time.process_time()
        for data in packets:
            ctx.decode(av.Packet(data))
        per_frame.append((time.process_time() - t) * 1000 / len(packets))
    ms = statistics.median(per_frame)
    return {"cpu_ms_per_frame": ms, "per_stream_cpu_pct_at_30fps": ms * 30 / 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=12, help="measured seconds per step")
    parser.add_argument("--steps", default="1,4,8,12,16,20", help="stream counts with auto on")
    parser.add_argument("--baseline", default="1,8", help="stream counts with auto off")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "auto_snapshot.json"))
    args = parser.parse_args()
    warmup = 4.0
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.flv"
        make_clip(clip, 20)
        thumb = thumbnailer_run(Path(tmp), clip, args.seconds, warmup)
        floor = decode_only(clip)
        for n in (int(x) for x in args.baseline.split(",")):
            with tempfile.TemporaryDirectory() as work:
                rows.append(server_run(Path(work), clip, n, False, args.seconds, warmup))
        for n in (int(x) for x in args.steps.split(",")):
            with tempfile.TemporaryDirectory() as work:
                rows.append(server_run(Path(work), clip, n, True, args.seconds, warmup))

    cpus = os.cpu_count()
    print(f"\nauto snapshots, 720p30 main, rate 30, {args.seconds} s per step, {cpus} CPUs")
    print(f"{'streams':>7} {'auto':>5} {'cpu/stream med':>15} {'p90':>6} {'files/s':>8} "
          f"{'dropped GOPs':>13} {'keeps up':>9} {'REST ms med/p90':>16}")  # fmt: skip
    for r in rows:
        files = f"{r['files_per_stream_per_s']:.2f}" if r["auto"] else "-"
        print(
            f"{r['streams']:>7} {('on' if r['auto'] else 'off'):>5} "
            f"{r['per_stream_cpu_pct_median']:>14.1f}% {r['per_stream_cpu_pct_p90']:>5.1f}% "
            f"{files:>8} {r.get('dropped_gops', '-')!s:>13} {r.get('keeps_up', '-')!s:>9} "
            f"{r['rest_ms_median']:>8.1f}/{r['rest_ms_p90']:.1f}"
        )
    print(
        f"ffmpeg -vf fps=1 thumbnailer: {thumb['per_stream_cpu_pct_median']:.1f}% "
        f"(p90 {thumb['per_stream_cpu_pct_p90']:.1f}%) of a core per stream"
    )
    print(
        f"PyAV decode alone (1 thread, same clip): {floor['cpu_ms_per_frame']:.2f} ms/frame = "
        f"{floor['per_stream_cpu_pct_at_30fps']:.1f}% of a core per 30 fps stream"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "thumbnailer": thumb, "decode_only": floor}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
