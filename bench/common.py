"""Helpers more than one bench script uses: a process's CPU time and RSS, percentiles, the
pre-encoded 720p30 main-profile clip and a looped ffmpeg publisher of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.conftest import publish  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def make_clip(path: Path, seconds: int, video_kbps: int | None = None) -> None:
    """720p30 H.264 main profile with B-frames, GOP 2 s, + AAC, as FLV; `video_kbps` caps the
    video at that rate (x264 ABR, VBV buffer of 2 s), else x264's default quality."""
    rate: list[str] = []
    if video_kbps:
        rate = ["-b:v", f"{video_kbps}k", "-maxrate", f"{video_kbps}k"]
        rate += ["-bufsize", f"{2 * video_kbps}k"]
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(seconds),
            "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main", "-bf", "3",
            "-g", "60", "-keyint_min", "60", "-sc_threshold", "0", "-pix_fmt", "yuv420p", *rate,
            "-c:a", "aac", "-b:a", "64k", "-f", "flv", str(path),
        ],
        check=True,
    )  # fmt: skip


def looped_publisher(url: str, clip: Path) -> subprocess.Popen[bytes]:
    return publish(url, None, extra_input=["-stream_loop", "-1", "-i", str(clip), "-c", "copy"])
