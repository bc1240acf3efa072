"""Snapshots and auto snapshots of streams whose publisher clock jumps backwards (issue #6,
finding 19): freshness and exact frame numbering must not depend on monotonic timestamps."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from tests.unit.fakes import ManualPool, publish_now, result_now
from tests.unit.media_fixtures import Sample, h264_sample, png_rgb, pts_of
from tests.unit.snapshot_env import Env
from wcs.media.units import MediaUnit
from wcs.snapshot.service import SnapshotService
from wcs.streams import PROVIDER_RTMP, StreamHub

FRAME = 3000  # 90 kHz ticks per frame at 30 fps
JUMP = 90_000 * 3600  # the publisher's clock steps back an hour


def shifted(unit: MediaUnit, by: int) -> MediaUnit:
    return dataclasses.replace(unit, pts=unit.pts + by, dts=unit.dts + by)


def between_gops(sample: Sample) -> list[MediaUnit]:
    """Every GOP starts an hour before the previous one (an encoder whose clock resets)."""
    out: list[MediaUnit] = []
    gop = -1
    for unit in sample.units:
        gop += unit.keyframe
        out.append(shifted(unit, 10 * JUMP - gop * JUMP))
    return out


def within_gop(sample: Sample) -> list[MediaUnit]:
    """The clock steps back an hour in the middle of every GOP (ten units after its keyframe)."""
    out: list[MediaUnit] = []
    steps = 0
    since_key = 0
    for unit in sample.units:
        since_key = 0 if unit.keyframe else since_key + 1
        steps += since_key == 10
        out.append(shifted(unit, 10 * JUMP - steps * JUMP))
    return out


JUMPS = {"between_gops": between_gops, "within_gop": within_gop}


def original_pts(sample: Sample, i: int) -> int:
    return sample.units[i].pts


@pytest.mark.parametrize("bframes", [False, True], ids=["no_bframes", "bframes"])
@pytest.mark.parametrize("jump", sorted(JUMPS))
def test_every_request_gets_a_fresh_picture_of_the_newest_gop(jump: str, bframes: bool) -> None:
    sample = h264_sample(bframes=bframes)
    units = JUMPS[jump](sample)
    hub, pool, clock = StreamHub(), ManualPool(), Clock()
    service = SnapshotService(hub, pool, clock, hot_seconds=10)
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    key_pts = -1  # original pts of the newest keyframe pushed
    checked = 0
    for i, unit in enumerate(units):
        stream.push(unit)
        if unit.keyframe:
            key_pts = original_pts(sample, i)
        if i % 4 and not unit.keyframe and i != 1:
            continue
        clock.advance(11)  # cold: each request decodes on its own, drains included
        d = service.take("cam")
        pool.run_all()
        got = pts_of(sample, png_rgb(result_now(d)))
        newest = max(original_pts(sample, j) for j in range(i + 1))
        assert got >= key_pts, f"unit {i}: picture older than the newest keyframe"
        assert got >= newest - 5 * FRAME, f"unit {i}: stale picture"
        checked += 1
    assert checked > 20


@pytest.mark.parametrize("bframes", [False, True], ids=["no_bframes", "bframes"])
@pytest.mark.parametrize("jump", sorted(JUMPS))
def test_auto_snapshots_count_every_picture_once(tmp_path: Path, jump: str, bframes: bool) -> None:
    sample = h264_sample(bframes=bframes)
    env = Env(tmp_path, rate=10, retention=0)
    stream = publish_now(env.hub, "cam", PROVIDER_RTMP)
    requests = []
    for i, unit in enumerate(JUMPS[jump](sample)):
        stream.push(unit)
        if unit.keyframe or i % 7 == 0:
            requests.append(env.snapshots.take("cam"))
    for d in requests:
        png_rgb(result_now(d))
    auto = env.auto.streams[stream]
    stream.end()
    assert auto.frames == len(sample.frames) == 90
    order = sorted(sample.frames)
    assert sorted(os.listdir(tmp_path / "cam")) == [f"{n:06d}.png" for n in range(1, 10)]
    for n in range(1, 10):
        rgb = png_rgb((tmp_path / "cam" / f"{n:06d}.png").read_bytes())
        assert pts_of(sample, rgb) == order[10 * n - 1]
