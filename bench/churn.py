"""Publish/disconnect churn with auto snapshots on: server RSS and open fds at start, end and after
a minute idle (issue #6, finding 1: ended publishes must be freed, so both stay flat).

A real `twistd -n wcs` on free loopback ports; N light RTMP publishers (asyncio, in this process,
not N ffmpeg processes) each loop: handshake, connect, createStream, publish, the FLV tags of a
short H.264 clip (made once by ffmpeg) paced at real time, disconnect. The server decodes every
frame of every publish for the auto-snapshotter. RSS and fds are read at start (after a warm-up
churn, once the server has settled: the first publishes allocate the pool threads' arenas and
FFmpeg's tables once), at the end of the churn (under load) and after `--idle` seconds with no
client; flat means the idle figures within 10 % of the start. A leak climbs with every publish;
what the end shows beyond the start is the working set of the publishes in flight then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, rss_kb  # noqa: E402
from tests.integration.conftest import Server, start_server  # noqa: E402
from wcs.rtmp import amf0, chunks  # noqa: E402
from wcs.rtmp.chunks import ChunkEncoder, Message  # noqa: E402

OUT_CHUNK_SIZE = 4096
# The server hands decoders' freed memory back this long after they are released.
TRIM_AFTER_S = 10.0
# Give up on one publish cycle after this long (a stuck server counts as a failed cycle).
CYCLE_TIMEOUT = 20.0


def make_clip(path: Path, seconds: float, size: str) -> None:
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main",
            "-bf", "2", "-g", "15", "-keyint_min", "15", "-sc_threshold", "0",
            "-pix_fmt", "yuv420p", "-an", "-f", "flv", str(path),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip


def flv_tags(path: Path) -> list[tuple[int, int, bytes]]:
    """(type, timestamp ms, payload) of each audio/video/data tag of an FLV file."""
    data = path.read_bytes()
    if data[:3] != b"FLV":
        raise ValueError(f"{path} is not FLV")
    pos = struct.unpack(">I", data[5:9])[0] + 4  # header, then PreviousTagSize0
    tags = []
    while pos + 11 <= len(data):
        kind = data[pos]
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | data[pos + 7] << 24
        payload = data[pos + 11 : pos + 11 + size]
        if kind in (chunks.AUDIO, chunks.VIDEO, chunks.DATA_AMF0):
            tags.append((kind, ts, payload))
        pos += 11 + size + 4
    return tags


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Publisher:
    """One RTMP publish over an asyncio connection, written with the project's chunk encoder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = ChunkEncoder()
        self.received = bytearray()

    def send(self, csid: int, type_id: int, stream_id: int, ts: int, payload: bytes) -> None:
        self.writer.write(self.encoder.encode(Message(csid, type_id, stream_id, ts, payload)))

    def command(self, stream_id: int, *values: object) -> None:
        self.send(3, chunks.COMMAND_AMF0, stream_id, 0, amf0.encode(*values))

    async def expect(self, marker: bytes) -> None:
        # Replies are searched as raw bytes: the server's messages fit one 4096-byte chunk.
        while marker not in self.received:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError(f"closed before {marker!r}")
            self.received += data
        del self.received[: self.received.index(marker) + len(marker)]

    async def handshake(self) -> None:
        self.writer.write(b"\x03" + bytes(8) + random.randbytes(1528))
        s0s1s2 = await self.reader.readexactly(1 + 1536 * 2)
        self.writer.write(s0s1s2[1:1537])  # C2 echoes S1

    async def publish(self, name: str, tags: list[tuple[int, int, bytes]], speed: float) -> None:
        await self.handshake()
        self.send(2, chunks.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", OUT_CHUNK_SIZE))
        self.encoder.set_chunk_size(OUT_CHUNK_SIZE)
        self.command(0, "connect", 1.0, {"app": "live", "type": "nonprivate", "tcUrl": "rtmp"})
        await self.expect(b"NetConnection.Connect.Success")
        self.command(0, "createStream", 2.0, None)
        self.command(1, "publish", 3.0, None, name, "live")
        await self.expect(b"NetStream.Publish.Start")
        start = time.monotonic()
        for kind, ts, payload in tags:
            delay = start + ts / 1000 / speed - time.monotonic()
            if delay > 0:
                await self.writer.drain()
                await asyncio.sleep(delay)
            self.send(4 if kind == chunks.DATA_AMF0 else 6, kind, 1, ts, payload)
        await self.writer.drain()


async def client_loop(
    index: int, port: int, tags: list[tuple[int, int, bytes]], until: float, speed: float,
    stats: dict[str, int],
) -> None:  # fmt: skip
    rng = random.Random(index)
    await asyncio.sleep(rng.uniform(0, 1.0))  # spread the first connects
    while time.monotonic() < until:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(CYCLE_TIMEOUT):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await Publisher(reader, writer).publish(f"churn{index}", tags, speed)
            stats["publishes"] += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
            stats["failed"] += 1
            stats.setdefault(type(err).__name__, 0)
            stats[type(err).__name__] += 1
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        await asyncio.sleep(rng.uniform(0.05, 0.3))


async def churn(
    port: int, tags: list[tuple[int, int, bytes]], clients: int, seconds: float, speed: float
) -> dict[str, int]:
    stats = {"publishes": 0, "failed": 0}
    until = time.monotonic() + seconds
    await asyncio.gather(*(client_loop(i, port, tags, until, speed, stats) for i in range(clients)))
    return stats


def sample(server: Server) -> dict[str, float]:
    pid = server.proc.pid
    return {"rss_mb": round(rss_kb(pid) / 1024, 1), "fds": fd_count(pid)}


def settle(server: Server, limit: float) -> float:
    """Wait until the server is quiet (the publishes' last decode jobs done: under 5 % of a core
    for 2 s), then long enough for it to hand freed memory back; at most `limit` seconds."""
    pid = server.proc.pid
    start = time.monotonic()
    while time.monotonic() - start < limit:
        cpu0 = cpu_seconds(pid)
        threading.Event().wait(2.0)
        if (cpu_seconds(pid) - cpu0) / 2.0 < 0.05:
            break
    threading.Event().wait(max(0.0, min(TRIM_AFTER_S + 2, limit - (time.monotonic() - start))))
    return round(time.monotonic() - start, 1)


def record_series(
    server: Server, series: list[list[float]], stop: threading.Event, t0: float
) -> None:
    """RSS every 5 s for the JSON: a leak climbs steadily, a working set levels off."""
    while not stop.wait(5.0) and server.proc.poll() is None:
        point = sample(server)
        series.append([round(time.monotonic() - t0), point["rss_mb"], point["fds"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    # Long enough for the number of live streams (and so decoders) to reach its steady state.
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--clip-seconds", type=float, default=1.0)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "churn.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clip = workdir / "clip.flv"
        make_clip(clip, args.clip_seconds, args.size)
        tags = flv_tags(clip)
        server = start_server(
            workdir,
            "snapshot_auto_enabled=true\nsnapshot_auto_dir=auto\n"
            "snapshot_auto_naming=streamName\nsnapshot_auto_rate=10\n"
            "snapshot_auto_retention=3\n",
        )
        # The server's log is read by a thread into memory: keep only what the checks need.
        threading.Thread(target=_trim_log, args=(server,), daemon=True).start()
        series: list[list[float]] = []
        stop_series = threading.Event()
        t0 = time.monotonic()
        threading.Thread(target=record_series, args=(server, series, stop_series, t0)).start()
        try:
            points = {"ready": sample(server)}
            port = server.ports["rtmp"]
            warm_from = time.monotonic() - t0
            warm = asyncio.run(churn(port, tags, args.clients, args.warmup, args.speed))
            warm_to = time.monotonic() - t0
            settled = settle(server, args.idle)
            points["start"] = sample(server)
            churn_from = time.monotonic() - t0
            stats = asyncio.run(churn(port, tags, args.clients, args.seconds, args.speed))
            points["end"] = sample(server)
            churn_to = time.monotonic() - t0
            cpu0 = cpu_seconds(server.proc.pid)
            threading.Event().wait(args.idle)
            points["idle"] = sample(server)
            idle_cpu = (cpu_seconds(server.proc.pid) - cpu0) / args.idle * 100
            alive = server.proc.poll() is None
        finally:
            stop_series.set()
            code = server.stop()
    base = points["start"]
    growth = {
        f"{key}_{at}_pct": round((points[at][key] / base[key] - 1) * 100, 1)
        for at in ("end", "idle")
        for key in ("rss_mb", "fds")
    }
    # "end" is taken under load: the publishes in flight and the decode jobs queued behind them
    # (their working set); a leak shows after the idle minute, and a backlog that grows without
    # a cap as a climb under the same load: the warm-up churn against the last half of the
    # measured one (the first half ramps up again from the settled server).
    warm_rss = [p[1] for p in series if warm_from <= p[0] <= warm_to]
    churn_rss = [p[1] for p in series if churn_from <= p[0] <= churn_to]
    first = statistics.median(warm_rss or [float("nan")])
    second = statistics.median(churn_rss[len(churn_rss) // 2 :] or [float("nan")])
    load_trend = {
        "warmup_median_rss_mb": first,
        "churn_last_half_median_rss_mb": second,
        "change_pct": round((second / first - 1) * 100, 1),
    }
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "clients": args.clients,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "idle_seconds": args.idle,
        "clip": f"{args.size} H.264 main, B-frames, GOP 0.5 s, {args.clip_seconds} s",
        "auto_snapshots": "every 10th frame, streamName folders, 3 kept",
        "warmup_publishes": warm["publishes"],
        "settled_after_warmup_s": settled,
        "publishes": stats["publishes"],
        "failed_cycles": stats["failed"],
        "errors": {k: v for k, v in stats.items() if k not in ("publishes", "failed")},
        "server_alive_at_end": alive,
        "server_cpu_pct_while_idle": round(idle_cpu, 1),
        "server_exit_code": code,
        "points": points,
        "growth_from_start": growth,
        "under_load": load_trend,
        "rss_series_s_mb_fds": series,
        "flat_within_10_pct": growth["rss_mb_idle_pct"] <= 10 and growth["fds_idle_pct"] <= 10,
    }
    print(f"churn: {args.clients} clients, {args.seconds:.0f} s, {stats['publishes']} publishes")
    print(f"  ({stats['failed']} failed cycles; warm-up {args.warmup:.0f} s, {warm['publishes']})")
    print(f"  {'':<26}{'RSS (MB)':>10}{'fds':>8}")
    labels = {
        "ready": "ready, no client",
        "start": "start (warm-up, settled)",
        "end": f"end (+{args.seconds:.0f} s churn)",
        "idle": f"idle (+{args.idle:.0f} s)",
    }
    for at, label in labels.items():
        print(f"  {label:<26}{points[at]['rss_mb']:>10}{points[at]['fds']:>8}")
    print(f"  growth from start: {growth}")
    print(
        f"  under load: median RSS {first:.0f} MB in the warm-up churn, {second:.0f} MB in the "
        f"last half of the measured churn ({load_trend['change_pct']:+.1f} %)"
    )
    print(f"  server CPU while idle: {idle_cpu:.1f} % of a core")
    print(f"  flat within 10 %: {result['flat_within_10_pct']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _trim_log(server: Server) -> None:
    while server.proc.poll() is None:
        with server.cond:
            if len(server.lines) > 10_000:
                del server.lines[:-1000]
        threading.Event().wait(1.0)


if __name__ == "__main__":
    main()
