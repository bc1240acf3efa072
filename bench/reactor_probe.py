"""How long the reactor makes a trivial REST request wait while 16 streams are auto-snapshotted
(issue #11, item 3): a table and JSON.

One ffmpeg process (`-f tee`, `-c copy`, looped) publishes a pre-encoded 720p30 main/B-frame clip
as 16 RTMP streams (the client stays cheap). A fresh server per phase: auto snapshots off (the
baseline: ingest only), then on at `--rate`. In each phase a probe thread POSTs
/rest-api/stream/find of a stream that does not exist every 50 ms for `--seconds`, on one kept-alive
connection; its latency is how long the reactor kept that request waiting (a thread of the server
holding the GIL stalls it). The CPU of the server and of its PNG helper processes over the same
window is read from /proc.

`--before DIR` adds servers "on, before" run from another checkout (e.g. `git archive` of the
commit before a change), alternating with the current code, so before/after come from one run.
`--nice N` measures each auto-on server a second time with every thread but the reactor's
reniced to N (what yielding the CPU to the reactor would buy; -1 skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, make_clip, pct  # noqa: E402
from tests.integration.conftest import BIN, Server, start_server  # noqa: E402

PROBE_EVERY = 0.05
FIND = json.dumps({"name": "no-such-stream"}).encode()


def tee_publisher(server: Server, clip: Path, names: list[str]) -> subprocess.Popen[bytes]:
    """One ffmpeg sending `clip` (looped, real time, no re-encoding) to every name."""
    outputs = "|".join(f"[f=flv:onfail=ignore]{server.rtmp(n)}" for n in names)
    cmd = ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip)]
    cmd += ["-map", "0", "-c", "copy", "-flvflags", "no_duration_filesize", "-f", "tee", outputs]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def probe(server: Server, seconds: float) -> list[float]:
    """Latency (ms) of /stream/find every PROBE_EVERY s, on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=10)
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    try:
        start = time.monotonic()
        next_at = start
        while next_at - start < seconds:
            threading.Event().wait(max(0.0, next_at - time.monotonic()))
            t = time.perf_counter()
            conn.request("POST", "/rest-api/stream/find", FIND, headers)
            resp = conn.getresponse()
            resp.read()
            latencies.append((time.perf_counter() - t) * 1000)
            next_at += PROBE_EVERY
    finally:
        conn.close()
    return latencies


def auto_written(server: Server) -> tuple[int, int]:
    """(files written, GOPs dropped) by the auto-snapshotter over all streams so far."""
    status, found = server.rest("/rest-api/stream/find_all", None, method="GET")
    assert status == 200 and isinstance(found, list), found
    autos = [s["autoSnapshot"] for s in found if s.get("autoSnapshot")]
    return sum(a["written"] for a in autos), sum(a["droppedGops"] for a in autos)


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the server's PNG helper processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def server_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the server process and of its helper processes so far."""
    helpers = 0.0
    for child in children(pid):
        with contextlib.suppress(OSError):  # gone meanwhile
            helpers += cpu_seconds(child)
    return cpu_seconds(pid), helpers


def renice_workers(pid: int, nice: int) -> int:
    """Give every thread of `pid` but the reactor's (the main thread) niceness `nice`: what
    the server's pool threads would look like if they yielded the CPU to the reactor. Returns
    how many threads were changed."""
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    for tid in tids:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    return len(tids)


def measure(server: Server, label: str, seconds: float) -> dict[str, object]:
    written0, dropped0 = auto_written(server)
    pid = server.proc.pid
    (cpu0, helpers0), wall0 = server_cpu(pid), time.monotonic()
    latencies = probe(server, seconds)
    wall = time.monotonic() - wall0
    cpu1, helpers1 = server_cpu(pid)
    written1, dropped1 = auto_written(server)
    return {
        "phase": label,
        "probes": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p90_ms": round(pct(latencies, 0.9), 2),
        "p99_ms": round(pct(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "over_10ms": sum(v > 10 for v in latencies),
        "server_cpu_pct_of_core": round((cpu1 - cpu0) / wall * 100, 1),
        "helpers_cpu_pct_of_core": round((helpers1 - helpers0) / wall * 100, 1),
        "auto_files_per_s": round((written1 - written0) / wall, 1),
        "dropped_gops": dropped1 - dropped0,
    }


def phase(
    label: str,
    clip: Path,
    streams: int,
    extra: str,
    seconds: float,
    warmup: float,
    *,
    tree: Path | None = None,
    nice: int | None = None,
) -> list[dict[str, object]]:
    """One server: `seconds` probed as it runs, then (`nice`) as many with its worker threads
    reniced."""
    with tempfile.TemporaryDirectory() as tmp:
        launcher = None
        if tree is not None:  # the other checkout's wcs comes first on the server's sys.path
            launcher = ["env", f"PYTHONPATH={tree}", str(BIN / "twistd")]
        server = start_server(Path(tmp), extra, launcher=launcher)
        names = [f"s{i}" for i in range(streams)]
        pub: subprocess.Popen[bytes] | None = None
        try:
            mark = server.log_mark()
            pub = tee_publisher(server, clip, names)
            for name in names:
                server.wait_for_log(rf"publishing {name} ", start=mark)
            threading.Event().wait(warmup)
            rows = [measure(server, label, seconds)]
            if nice is not None:
                renice_workers(server.proc.pid, nice)
                rows.append(measure(server, f"{label}, pool nice {nice}", seconds))
            alive = pub.poll() is None
        finally:
            if pub is not None:
                pub.terminate()
                try:
                    pub.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pub.kill()
                    pub.wait()
            server.stop()
    rate = re.search(r"snapshot_auto_rate=(\d+)", extra) if "enabled=true" in extra else None
    for row in rows:
        row |= {
            "streams": streams,
            "rate": int(rate[1]) if rate else None,
            "publisher_alive_at_end": alive,
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--loads",
        default="16x30,4x3",
        help="STREAMSxRATE,...: streams published and snapshot_auto_rate when on; 16x30 is the "
        "issue's case, 4x3 writes more PNGs (40/s) with a box that keeps up with the decoding",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="probed seconds per row")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2, help="auto-on servers per variant")
    parser.add_argument("--before", type=Path, help="another checkout, served as 'before'")
    parser.add_argument(
        "--nice", type=int, default=10, help="renice worker threads for a second row (-1: no)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "reactor_probe.json"
    )
    args = parser.parse_args()
    loads = [tuple(int(n) for n in load.split("x")) for load in args.loads.split(",")]
    nice = args.nice if args.nice >= 0 else None
    timing = (args.seconds, args.warmup)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip720p_main_bf.flv"
        make_clip(clip, 20)
        for streams, rate in loads:
            auto_on = "snapshot_auto_enabled=true\nsnapshot_auto_dir=auto\n"
            auto_on += f"snapshot_auto_rate={rate}\n"
            run = (clip, streams)
            rows += phase("auto off", *run, "snapshot_auto_enabled=false\n", *timing)
            # Before and after alternate, so that load from elsewhere on the box hits both.
            for _ in range(args.rounds):
                if args.before is not None:
                    rows += phase("on, before", *run, auto_on, *timing, tree=args.before, nice=nice)
                rows += phase("auto on", *run, auto_on, *timing, nice=nice)

    keys = ["p50_ms", "p90_ms", "p99_ms", "max_ms", "over_10ms"]
    keys += ["server_cpu_pct_of_core", "helpers_cpu_pct_of_core"]
    heads = ("p50", "p90", "p99", "max", ">10ms", "CPU %", "helpers")
    print(
        f"\nreactor probe: /stream/find every {PROBE_EVERY * 1000:.0f} ms,"
        f" {args.seconds:.0f} s a row, 720p30 main streams from one tee publisher,"
        f" {os.cpu_count()} CPUs"
    )
    print(
        f"{'streams x rate':<15}{'phase':<26}"
        + "".join(f"{h:>8}" for h in heads)
        + f"{'files/s':>9}{'drops':>7}"
    )
    for r in rows:
        print(
            f"{str(r['streams']) + ' x ' + str(r['rate'] or '-'):<15}{r['phase']:<26}"
            + "".join(f"{r[k]!s:>8}" for k in keys)
            + f"{r['auto_files_per_s']!s:>9}{r['dropped_gops']!s:>7}"
        )
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "stream": "720p30 H.264 main, B-frames, GOP 2 s + AAC, RTMP from one ffmpeg -f tee",
        "probe_every_ms": PROBE_EVERY * 1000,
        "loads": args.loads,
        "before": str(args.before) if args.before else None,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
