"""Many streams into one server: CPU, memory, real-time ingest and snapshot latency per step.

N RTMP streams of one pre-encoded clip (720p30 H.264 main with B-frames, GOP 2 s, ~3 Mbit/s,
+ AAC, FLV made once) are published by ffmpeg's tee muxer (`-re -stream_loop -1 -c copy -f tee`
to N URLs): the load costs the client little, so the server is what is measured.

- `aligned`: one ffmpeg feeds every stream, so every stream's keyframes arrive at the same
  instant (the worst case for bursts).
- `drift`: the streams are split over `--groups` ffmpeg processes started at random moments
  within one GOP, so keyframes arrive in that many phases (as cameras drift).

Each step (`--steps`, default 25 50 100 150 200) starts the feed afresh, waits until every
stream is published, then runs two phases of `--seconds` / 2 each:

1. *idle*: nobody asks for a snapshot. Server CPU (% of one core: total, per stream) and RSS
   (VmRSS) per stream above the same server before the step (each step starts a fresh
   server, so no step inherits what an earlier one left in the heap).
2. *snapshots*: random streams are asked cold (not asked in the last 15 s), then hot (asked
   again 1-2 s later), one request at a time; the same CPU and RSS figures.

With `--cooled`, a third reading follows once every asked stream has left the server's 15 s
hot window: what the server still holds for streams asked once, while nobody asks.

Throughout, a reactor probe (a REST `/stream/find` of an unknown name, answered 404 without
touching a stream) is sent every 50 ms; its latency is counted from the moment it was due (a
late probe counts its wait). What the probe alone costs the server is measured first (no
stream) and taken off the per-stream CPU.

"Kept in real time": the server exposes no per-stream counters (`/stream/find_all` lists a
stream's codecs and size, not its units), so it is measured from outside. A stream is kept when
(1) its feeder's `-progress` output time kept pace with the wall clock over the step (lag growth
<= LAG_LIMIT_S; a tee muxer writes every output in turn, so a stream the server reads too slowly
holds back its whole group), (2) the bytes the server has not yet read from its connection
(Recv-Q, from `ss`, sampled each second) stayed under one second of the stream (median), (3) it
is still listed by `/stream/find_all` at the end, and (4) the server logged no warning or
`ended` line naming it during the step.

Client CPU (the ffmpeg feeders, and this script's own probe/snapshot threads) is reported apart.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, make_clip, pct, rss_kb  # noqa: E402
from tests.integration.conftest import Server, start_server  # noqa: E402

GOP_S = 2.0
CLIP_SECONDS = 20
HOT_GAP_S = (1.0, 2.0)  # a hot request follows its cold one this long after
COLD_AFTER_S = 15.0  # a stream not asked for this long is cold (the server's hot window)
PROBE_EVERY_S = 0.05
LAG_LIMIT_S = 0.5
# After the streams of a step end: the server hands decoders' freed memory back 10 s later.
TRIM_WAIT_S = 12.0
PNG_B64 = "iVBORw0KGgo"  # the PNG signature, base64-encoded


# -- the feed: ffmpeg tee processes ------------------------------------------------------------
@dataclass
class Group:
    """One ffmpeg process publishing `names` with its tee muxer; its progress (wall, out_time)."""

    proc: subprocess.Popen[str]
    names: list[str]
    points: list[tuple[float, float]] = field(default_factory=list)

    def read_progress(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("out_time_us="):
                value = line.split("=", 1)[1].strip()
                if value.lstrip("-").isdigit():
                    self.points.append((time.monotonic(), int(value) / 1e6))

    def lag(self, at: float) -> float | None:
        """How far the output is behind the wall clock at `at`, up to a constant (start-up)."""
        before = [p for p in self.points if p[0] <= at]
        if not before:
            return None
        wall, out = before[-1]
        return wall - out


def tee_process(urls: list[str], clip: Path, log: Path) -> subprocess.Popen[str]:
    outputs = "|".join(f"[f=flv:onfail=ignore]{url}" for url in urls)
    cmd = ["ffmpeg", "-v", "error", "-nostats", "-progress", "pipe:1", "-stats_period", "0.5"]
    cmd += ["-re", "-stream_loop", "-1", "-i", str(clip), "-map", "0:v", "-map", "0:a"]
    cmd += ["-c", "copy", "-f", "tee", outputs]
    with log.open("ab") as err:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True
        )


@contextmanager
def feed(
    server: Server, clip: Path, names: list[str], groups: int, rng: random.Random, log: Path
) -> Iterator[list[Group]]:
    """Publish `names` from `groups` ffmpeg processes (the first now, the others at random
    moments within one GOP); stop them all however the block ends."""
    chunks = [names[i::groups] for i in range(groups)]
    started: list[Group] = []
    try:
        offsets = sorted(rng.uniform(0, GOP_S) for _ in chunks[1:])
        t0 = time.monotonic()
        for chunk, offset in zip(chunks, [0.0, *offsets], strict=True):
            threading.Event().wait(max(0.0, t0 + offset - time.monotonic()))
            group = Group(tee_process([server.rtmp(n) for n in chunk], clip, log), chunk)
            started.append(group)
            threading.Thread(target=group.read_progress, daemon=True).start()
        yield started
    finally:
        for group in started:
            if group.proc.poll() is None:
                group.proc.send_signal(signal.SIGTERM)
        for group in started:
            try:
                group.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                group.proc.kill()
                group.proc.wait()


def wait_published(server: Server, names: list[str], mark: int, timeout: float) -> list[str]:
    """The streams of `names` published within `timeout` (all of them, unless the server or
    the feeders could not keep up)."""
    rx = re.compile(r"stream (\S+) published")
    deadline = time.monotonic() + timeout
    want = set(names)
    while True:
        with server.cond:
            seen = {m[1] for line in server.lines[mark:] if (m := rx.search(line))}
        if want <= seen or time.monotonic() > deadline or server.proc.poll() is not None:
            return [n for n in names if n in seen]
        threading.Event().wait(0.2)


def live_streams(server: Server) -> set[str]:
    status, body = server.rest("/rest-api/stream/find_all", timeout=30)
    if status != 200 or not isinstance(body, list):
        return set()
    return {str(s["name"]) for s in body}


def wait_all_ended(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while live_streams(server) and time.monotonic() < deadline:
        threading.Event().wait(0.5)


# -- what runs alongside: the reactor probe and an RSS sampler -----------------------------------
class Probe(threading.Thread):
    """A REST call every 50 ms over one keep-alive connection; (due time, latency ms) each."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        body = json.dumps({"name": "no-such-stream"})
        headers = {"Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        due = time.monotonic()
        while not self.stop.is_set():
            due += PROBE_EVERY_S
            if self.stop.wait(max(0.0, due - time.monotonic())):
                break
            try:
                conn.request("POST", "/rest-api/stream/find", body, headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 404
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            done = time.monotonic()
            if ok:
                self.samples.append((due, (done - due) * 1000))
            else:
                self.errors += 1
            if done - due > PROBE_EVERY_S:
                due = done  # one late probe stands for the ones it held up; do not burst
        conn.close()

    def between(self, start: float, end: float) -> list[float]:
        return [ms for t, ms in self.samples if start <= t < end]


class Sampler(threading.Thread):
    """Every second: the server's RSS, and the bytes each RTMP connection has received that the
    server has not read yet (its socket's Recv-Q, from `ss`): a stream the server keeps up with
    has at most a burst (a keyframe) waiting."""

    def __init__(self, pid: int, rtmp_port: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.rtmp_port = rtmp_port
        self.rss: list[tuple[float, int]] = []
        self.backlog: dict[str, list[int]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.rss.append((time.monotonic(), rss_kb(self.pid)))
            except (OSError, RuntimeError):
                return
            for peer, queued in self.recv_queues().items():
                self.backlog.setdefault(peer, []).append(queued)

    def recv_queues(self) -> dict[str, int]:
        out = subprocess.run(
            ["ss", "-tnH", "state", "established", f"( sport = :{self.rtmp_port} )"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        queues = {}
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[0].isdigit():
                queues[fields[3]] = int(fields[0])
        return queues

    def rss_between(self, start: float, end: float) -> list[int]:
        return [kb for t, kb in self.rss if start <= t < end]


# -- one phase ----------------------------------------------------------------------------------
def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def reactor_schedstat(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of the server's main thread, the
    reactor: a reactor slow to answer while neither is high waits on the GIL or on I/O."""
    run_ns, wait_ns = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[:2]
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


@dataclass
class Meter:
    """CPU of the server (and of its reactor thread), the feeders and this script over a phase;
    the machine's load average at the end (others share this machine)."""

    server_pid: int
    feeder_pids: list[int]
    start: float = 0.0
    server0: float = 0.0
    feeders0: float = 0.0
    own0: float = 0.0
    reactor0: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        self.start = time.monotonic()
        self.server0 = cpu_seconds(self.server_pid)
        self.feeders0 = self._feeders()
        self.own0 = own_cpu_seconds()
        self.reactor0 = reactor_schedstat(self.server_pid)

    def _feeders(self) -> float:
        total = 0.0
        for pid in self.feeder_pids:
            with suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.start
        run, wait = reactor_schedstat(self.server_pid)
        return {
            "server_cpu_pct": (cpu_seconds(self.server_pid) - self.server0) / wall * 100,
            "reactor_cpu_pct": (run - self.reactor0[0]) / wall * 100,
            "reactor_runqueue_wait_pct": (wait - self.reactor0[1]) / wall * 100,
            "load_average_1min": os.getloadavg()[0],
            "client_ffmpeg_cpu_pct": (self._feeders() - self.feeders0) / wall * 100,
            "client_bench_cpu_pct": (own_cpu_seconds() - self.own0) / wall * 100,
        }


def timed_snapshot(server: Server, name: str) -> float | None:
    t = time.perf_counter()
    status, body = server.snapshot(name, timeout=30)
    ms = (time.perf_counter() - t) * 1000
    ok = status == 200 and isinstance(body, dict) and str(body.get("data", "")).startswith(PNG_B64)
    return ms if ok else None


def snapshot_phase(
    server: Server, names: list[str], until: float, rng: random.Random, hot_repeats: int = 1
) -> tuple[list[float], list[float], int, int]:
    """Cold then hot requests (`hot_repeats` of them, 0.1-0.3 s apart) of random streams, one
    at a time, until `until`."""
    asked: dict[str, float] = {}
    cold: list[float] = []
    hot: list[float] = []
    failed = 0
    while time.monotonic() < until:
        now = time.monotonic()
        candidates = [n for n in names if now - asked.get(n, -1e9) >= COLD_AFTER_S]
        if not candidates:
            threading.Event().wait(0.5)
            continue
        name = rng.choice(candidates)
        for bucket, gap in ((cold, HOT_GAP_S), *[(hot, (0.1, 0.3))] * hot_repeats):
            ms = timed_snapshot(server, name)
            asked[name] = time.monotonic()
            if ms is None:
                failed += 1
            else:
                bucket.append(ms)
            threading.Event().wait(rng.uniform(*gap))
    return cold, hot, failed, len(asked)


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 1),
        "p90_ms": round(pct(values, 0.9), 1),
        "p99_ms": round(pct(values, 0.99), 1),
        "max_ms": round(max(values), 1),
    }


def phase_figures(
    meter: Meter,
    rss: Sampler,
    probe: Probe,
    start: float,
    idle_kb: int,
    streams: int,
    probe_cpu: float,
) -> dict[str, object]:
    end = time.monotonic()
    cpu = meter.read()
    kbs = rss.rss_between(start, end) or [rss_kb(rss.pid)]
    rss_mb = statistics.median(kbs) / 1024
    return {
        "server_cpu_pct": round(cpu["server_cpu_pct"], 1),
        # Net of what answering the probe costs the server with no stream (measured first).
        "server_cpu_pct_per_stream": round((cpu["server_cpu_pct"] - probe_cpu) / streams, 3),
        "reactor_cpu_pct": round(cpu["reactor_cpu_pct"], 1),
        "reactor_runqueue_wait_pct": round(cpu["reactor_runqueue_wait_pct"], 1),
        "load_average_1min": round(cpu["load_average_1min"], 2),
        "server_rss_mb_median": round(rss_mb, 1),
        "server_rss_mb_max": round(max(kbs) / 1024, 1),
        "rss_mb_per_stream_above_idle": round((rss_mb - idle_kb / 1024) / streams, 2),
        "client_ffmpeg_cpu_pct": round(cpu["client_ffmpeg_cpu_pct"], 1),
        "client_bench_cpu_pct": round(cpu["client_bench_cpu_pct"], 1),
        "probe": summary(probe.between(start, end)),
    }


def probe_cost(server: Server, seconds: float = 5.0) -> float:
    """The server's CPU (% of a core) while only the probe runs, no stream."""
    probe = Probe(server.ports["http"])
    probe.start()
    cpu0 = cpu_seconds(server.proc.pid)
    threading.Event().wait(seconds)
    cpu = (cpu_seconds(server.proc.pid) - cpu0) / seconds * 100
    probe.stop.set()
    probe.join(timeout=15)
    return cpu


# -- one step -----------------------------------------------------------------------------------
def warnings_since(server: Server, mark: int) -> list[str]:
    with server.cond:
        lines = server.lines[mark:]
    return [ln for ln in lines if "#warn]" in ln or "#error]" in ln or " ended: " in ln]


def run_step(
    server: Server,
    clip: Path,
    mode: str,
    n: int,
    seconds: float,
    groups: int,
    idle_kb: int,
    rng: random.Random,
    workdir: Path,
    bytes_per_s: float,
    probe_cpu: float,
    cooled_phase: bool,
    hot_repeats: int = 1,
) -> dict[str, object]:
    names = [f"s{n}_{i}" for i in range(n)]
    probe = Probe(server.ports["http"])
    rss = Sampler(server.proc.pid, server.ports["rtmp"])
    mark = server.log_mark()
    ngroups = 1 if mode == "aligned" else max(1, min(groups, n))
    with feed(server, clip, names, ngroups, rng, workdir / "ffmpeg.log") as feeders:
        published = wait_published(server, names, mark, timeout=30 + n * 0.3)
        if not published:
            raise RuntimeError(f"none of {n} streams published")
        threading.Event().wait(GOP_S + 1)  # every stream has a GOP cached
        probe.start()
        rss.start()
        try:
            pids = [g.proc.pid for g in feeders]
            step_start = time.monotonic()
            lags0 = [g.lag(step_start) for g in feeders]
            watch_mark = server.log_mark()
            meter = Meter(server.proc.pid, pids)
            threading.Event().wait(seconds / 2)
            idle = phase_figures(meter, rss, probe, step_start, idle_kb, n, probe_cpu)
            snap_start = time.monotonic()
            meter = Meter(server.proc.pid, pids)
            cold, hot, failed, asked = snapshot_phase(
                server, published, snap_start + seconds / 2, rng, hot_repeats
            )
            snaps = phase_figures(meter, rss, probe, snap_start, idle_kb, n, probe_cpu)
            step_end = time.monotonic()
            cooled: dict[str, object] | None = None
            if cooled_phase:
                # Every asked stream has left the hot window: what stays is held while nobody asks.
                threading.Event().wait(COLD_AFTER_S + 2)
                meter, cooled_start = Meter(server.proc.pid, pids), time.monotonic()
                threading.Event().wait(4.0)
                cooled = phase_figures(meter, rss, probe, cooled_start, idle_kb, n, probe_cpu)
            lags1 = [g.lag(step_end) for g in feeders]
            live = live_streams(server)
            warnings = warnings_since(server, watch_mark)
            alive = [g.proc.poll() is None for g in feeders]
        finally:
            probe.stop.set()
            rss.stop.set()
            probe.join(timeout=15)
            rss.join(timeout=5)
    idle_kbs = rss.rss_between(step_start, snap_start) or [0]
    snap_kbs = rss.rss_between(snap_start, step_end) or [0]
    extra_kb = statistics.median(snap_kbs) - statistics.median(idle_kbs)
    warned = {name for name in names if any(re.search(rf"\b{name}\b", w) for w in warnings)}
    by_feeder = 0
    lag_growth = []
    for group, l0, l1, running in zip(feeders, lags0, lags1, alive, strict=True):
        growth = None if l0 is None or l1 is None else l1 - l0
        lag_growth.append(None if growth is None else round(growth, 2))
        if growth is not None and growth <= LAG_LIMIT_S and running:
            by_feeder += sum(name in live and name not in warned for name in group.names)
    # A connection whose unread bytes stay above one second of the stream is behind.
    medians = [statistics.median(q) for q in rss.backlog.values() if q]
    behind = sum(m > bytes_per_s for m in medians)
    kept = min(by_feeder, len(live & set(names) - warned) - behind)
    after_kb: int | None = None
    if cooled_phase:
        wait_all_ended(server)
        threading.Event().wait(TRIM_WAIT_S)
        after_kb = rss_kb(server.proc.pid)
    return {
        "mode": mode,
        "streams": n,
        "feeders": ngroups,
        "published": len(published),
        "kept_real_time": kept,
        "live_at_end": len(live & set(names)),
        "feeder_lag_growth_s": lag_growth,
        "connections_behind": behind,
        "recv_q_kb_median_max": round(max(medians, default=0) / 1024, 1),
        "recv_q_kb_max": round(max(map(max, rss.backlog.values()), default=0) / 1024, 1),
        "server_warnings": warnings[:20],
        "idle": idle,
        "snapshots": snaps,
        "cooled_after_snapshots": cooled,
        "cold": summary(cold),
        "hot": summary(hot),
        "snapshot_failures": failed,
        "streams_asked": asked,
        # What the server holds more while snapshots are asked, per stream asked at least once
        # (its decoder stays open until the stream ends).
        "extra_rss_mb_per_asked_stream": round(extra_kb / 1024 / asked, 1) if asked else None,
        "probe_all": summary(probe.between(step_start, step_end)),
        "probe_errors": probe.errors,
        "server_rss_mb_before": round(idle_kb / 1024, 1),
        "server_rss_mb_after_streams_ended": None
        if after_kb is None
        else round(after_kb / 1024, 1),
    }


# -- the table ----------------------------------------------------------------------------------
COLUMNS = [
    ("mode", 8), ("N", 5), ("kept", 5), ("cpu%", 6), ("cpu%/s", 7), ("MB/s", 6),
    ("snap cpu%", 10), ("snap MB/s", 10), ("cooled MB/s", 12), ("cold med/p90", 14),
    ("hot med/p90", 13), ("probe p50/p99", 14), ("reactor%/rq%", 13), ("ffmpeg%", 8),
    ("load", 6),
]  # fmt: skip


LEGEND = """\
cpu%: server CPU, % of one core, nobody asking (cpu%/s: per stream, net of the probe's own cost);
MB/s: server RSS per stream above the same server before the step (fresh, no stream); snap: the
same while cold and hot snapshots are asked; cooled: MB/s once every asked stream left the hot
window; cold / hot / probe: ms; kept: streams kept in real time (feeder lag growth <= 0.5 s,
Recv-Q under 1 s of data, still live, no warning); reactor%/rq%: the server's main thread on a CPU /
runnable but waiting for one, % of the idle phase; ffmpeg%: CPU of the feeding ffmpeg processes;
load: the machine's 1-min load average at the end of the step (2 cores, shared)."""


def row(step: dict[str, object]) -> str:
    idle, snaps = step["idle"], step["snapshots"]
    cold, hot, probe = step["cold"], step["hot"], step["probe_all"]
    cooled = step["cooled_after_snapshots"]
    assert isinstance(idle, dict) and isinstance(snaps, dict)
    assert isinstance(cold, dict) and isinstance(hot, dict) and isinstance(probe, dict)

    def pair(s: dict[str, object], a: str = "median_ms", b: str = "p90_ms") -> str:
        return f"{s[a]}/{s[b]}" if s["n"] else "-"

    cells = [
        step["mode"], step["streams"], step["kept_real_time"], idle["server_cpu_pct"],
        idle["server_cpu_pct_per_stream"], idle["rss_mb_per_stream_above_idle"],
        snaps["server_cpu_pct"], snaps["rss_mb_per_stream_above_idle"],
        cooled["rss_mb_per_stream_above_idle"] if isinstance(cooled, dict) else "-",
        pair(cold), pair(hot),
        pair(probe, "median_ms", "p99_ms"),
        f"{idle['reactor_cpu_pct']}/{idle['reactor_runqueue_wait_pct']}",
        idle["client_ffmpeg_cpu_pct"], snaps["load_average_1min"],
    ]  # fmt: skip
    return "".join(f"{c!s:>{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True))


def write_json(
    path: Path, clip_mbit: float, seconds: float, steps: list[dict[str, object]]
) -> None:
    out = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "clip": f"720p30 H.264 main, B-frames, GOP 2 s, {clip_mbit:.2f} Mbit/s with AAC, FLV",
        "seconds_per_step": seconds,
        "steps": steps,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", default="25,50,100,150,200", help="stream counts")
    parser.add_argument("--seconds", type=float, default=40.0, help="per step (two phases)")
    parser.add_argument("--modes", default="aligned,drift", help="aligned, drift or both")
    parser.add_argument("--groups", type=int, default=8, help="ffmpeg processes in drift mode")
    parser.add_argument(
        "--cooled",
        action="store_true",
        help="after the snapshots, wait out the hot window and read RSS and CPU again",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"aligned", "drift"}:
        parser.error("--modes takes aligned and/or drift")
    # SIGTERM unwinds like Ctrl-C, so every feeder and server this run started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rng = random.Random(args.seed)
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clip = workdir / "clip720p_main_bf_3M.flv"
        make_clip(clip, CLIP_SECONDS, video_kbps=3000)
        clip_mbit = clip.stat().st_size * 8 / CLIP_SECONDS / 1e6
        print(f"clip {clip_mbit:.2f} Mbit/s")
        print("".join(f"{h:>{w}}" for h, w in COLUMNS))
        for mode in modes:
            for n in steps:
                # A fresh server per step: what one step's streams and decoders leave in the
                # heap is not the next step's baseline.
                stepdir = workdir / f"{mode}{n}"
                stepdir.mkdir(exist_ok=True)
                server = start_server(stepdir)
                try:
                    threading.Event().wait(2.0)
                    idle_kb = rss_kb(server.proc.pid)
                    probe_cpu = probe_cost(server)
                    step = run_step(
                        server,
                        clip,
                        mode,
                        n,
                        args.seconds,
                        args.groups,
                        idle_kb,
                        rng,
                        stepdir,
                        bytes_per_s=clip.stat().st_size / CLIP_SECONDS,
                        probe_cpu=probe_cpu,
                        cooled_phase=args.cooled,
                    )
                finally:
                    server.stop()
                step["probe_only_server_cpu_pct"] = round(probe_cpu, 1)
                results.append(step)
                print(row(step), flush=True)
                write_json(args.out, clip_mbit, args.seconds, results)  # a partial run survives
    print(LEGEND)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
