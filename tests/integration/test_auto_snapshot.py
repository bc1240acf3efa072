"""Automatic snapshots with real ffmpeg publishing over RTMP: count, numbering across publishes,
naming by mediaSessionId, valid PNGs of the source size, nothing half-written."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import Clip, Server, best_match, make_clip, publish, start_server

SECONDS = 6


@pytest.fixture(scope="module")
def clip6(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    # main profile with B-frames: the last frames leave the decoder only when the publish ends
    path = tmp_path_factory.mktemp("auto") / "six.flv"
    return make_clip(path, bframes=True, audio=True, size="640x360", seconds=SECONDS)


def publish_whole(server: Server, name: str, clip: Clip) -> str:
    """Publish the clip in real time until ffmpeg ends; returns the final auto-snapshot log line."""
    mark = server.log_mark()
    proc = publish(server.rtmp(name), clip.path)
    try:
        assert proc.wait(timeout=SECONDS + 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = server.wait_for_log(
        rf"stream {re.escape(name)}: auto snapshots done: .*", start=mark, timeout=20
    )
    return done.group(0)


def numbers(folder: Path) -> list[int]:
    names = os.listdir(folder)
    assert all(re.fullmatch(r"\d{6}\.png", n) for n in names), names  # no temp files left
    return sorted(int(n[:6]) for n in names)


def check_pngs(folder: Path, clip: Clip) -> None:
    for name in os.listdir(folder):
        data = (folder / name).read_bytes()
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.mode == "RGB"
        assert img.size == (clip.width, clip.height)
        _, psnr = best_match(clip, np.asarray(img))
        assert psnr > 30, f"{name} does not look like a frame of the source"


def test_rate_retention_and_numbering_across_publishes(tmp_path: Path, clip6: Clip) -> None:
    server = start_server(
        tmp_path,
        "snapshot_auto_enabled=true\nsnapshot_auto_dir=auto\nsnapshot_auto_naming=streamName\n"
        "snapshot_auto_rate=15\nsnapshot_auto_retention=5\n",
    )
    try:
        folder = tmp_path / "auto" / "cam1"
        line = publish_whole(server, "cam1", clip6)
        first = numbers(folder)
        # 180 frames at rate 15: files 1..12, the newest 5 kept
        assert len(first) == 5, line
        assert first == list(range(first[-1] - 4, first[-1] + 1))
        assert 11 <= first[-1] <= 13, first
        check_pngs(folder, clip6)

        publish_whole(server, "cam1", clip6)
        second = numbers(folder)
        assert len(second) == 5
        assert second[-1] - first[-1] in (11, 12, 13), (first, second)
    finally:
        assert server.stop() == 0


def test_media_session_id_naming_matches_stream_find(tmp_path: Path, clip6: Clip) -> None:
    server = start_server(
        tmp_path, "snapshot_auto_enabled=true\nsnapshot_auto_dir=snaps\nsnapshot_auto_rate=30\n"
    )
    try:
        mark = server.log_mark()
        proc = publish(server.rtmp("door"), clip6.path)
        try:
            server.wait_for_log(r"publishing door ", start=mark)
            status, found = server.rest("/rest-api/stream/find", {"name": "door"})
            assert status == 200
            assert isinstance(found, list) and len(found) == 1
            stream = found[0]
            msid = stream["mediaSessionId"]
            assert stream["autoSnapshot"]["folder"] == str(tmp_path / "snaps" / msid)
            assert proc.wait(timeout=SECONDS + 20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.wait_for_log(r"stream door: auto snapshots done: 6 written", start=mark)
        assert os.listdir(tmp_path / "snaps") == [msid]
        assert numbers(tmp_path / "snaps" / msid) == [1, 2, 3, 4, 5, 6]
        check_pngs(tmp_path / "snaps" / msid, clip6)
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("rate", [1, 7, 30])
def test_written_files_are_exactly_display_frames_n_2n_3n(
    tmp_path: Path, clip6: Clip, rate: int
) -> None:
    """The files are exactly frames N, 2N, 3N, ... of the source in display order (B-frames),
    each the same picture as ffmpeg's own decode of that frame."""
    server = start_server(
        tmp_path,
        "snapshot_auto_enabled=true\nsnapshot_auto_dir=auto\nsnapshot_auto_naming=streamName\n"
        f"snapshot_auto_rate={rate}\nsnapshot_auto_retention=0\n",
    )
    try:
        line = publish_whole(server, "cam", clip6)
        folder = tmp_path / "auto" / "cam"
        written = numbers(folder)
        total = len(clip6.thumbs)
        assert written == list(range(1, total // rate + 1)), line
        for n in written:
            img = Image.open(folder / f"{n:06d}.png")
            index, psnr = best_match(clip6, np.asarray(img.convert("RGB")))
            assert (index, n) == (n * rate - 1, n), f"file {n}: frame {index} ({psnr:.1f} dB)"
            assert psnr > 40, f"file {n}: {psnr:.1f} dB"
    finally:
        assert server.stop() == 0
