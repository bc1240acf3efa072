"""Auto snapshots with a synchronous pool, a Clock and a temp dir: numbering, retention,
continuation, naming, unsafe folders, atomic writes, disk errors, resolution change, drops."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

import wcs.snapshot.auto as auto_mod
from tests.unit.fakes import ManualPool, publish_now, result_now, sync_pool
from tests.unit.media_fixtures import Sample, h264_sample, png_rgb, pts_of
from tests.unit.snapshot_env import Env
from wcs.media.image import frame_to_png, shared_encoders
from wcs.media.units import MediaUnit, VideoParams
from wcs.snapshot.auto import (
    AutoSnapshotter,
    SnapshotFolder,
    clean_leftovers,
    scan_numbers,
    write_numbered,
)
from wcs.snapshot.service import SnapshotService
from wcs.streams import PROVIDER_RTMP, StreamHub


def display_order(sample: Sample) -> list[int]:
    return sorted(sample.frames)


def files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_every_rate_th_frame_numbered_from_one_newest_kept(tmp_path: Path) -> None:
    sample = h264_sample(bframes=False)  # 90 frames, no reorder delay: every frame comes out
    env = Env(tmp_path / "snaps", rate=15, retention=5)
    stream = env.publish("cam", sample)
    folder = tmp_path / "snaps" / "cam"
    assert files(folder) == [f"{n:06d}.png" for n in range(2, 7)]
    order = display_order(sample)
    for n in range(2, 7):
        rgb = png_rgb((folder / f"{n:06d}.png").read_bytes())
        assert pts_of(sample, rgb) == order[15 * n - 1]
    info = env.views.stream_json(stream)["autoSnapshot"]
    assert isinstance(info, dict)
    assert info["written"] == 6
    assert info["frames"] == 90
    assert info["framesDecoded"] == 90  # no B-frames: each picture is referenced by the next
    assert info["lastFile"] == "000006.png"
    assert info["errors"] == 0
    assert info["folder"] == str(folder)


def test_an_unrequested_stream_is_decoded_a_gop_at_a_time_once_the_next_starts(
    tmp_path: Path,
) -> None:
    sample = h264_sample(bframes=False)  # GOPs of 30
    env = Env(tmp_path, rate=15, retention=0)
    stream = env.publish("cam", sample, next_gop=False)
    assert files(tmp_path / "cam") == [f"{n:06d}.png" for n in range(1, 5)]
    stream.end()  # the last GOP is complete now
    assert files(tmp_path / "cam") == [f"{n:06d}.png" for n in range(1, 7)]


def test_files_are_fpng_bytes_made_in_helper_processes_by_default(tmp_path: Path) -> None:
    sample = h264_sample(bframes=True)
    helpers = Env(tmp_path / "helpers", rate=7, retention=0)
    assert helpers.auto.encode == shared_encoders().frame_to_png
    failures = shared_encoders().failures
    helpers.publish("cam", sample)
    in_process = Env(tmp_path / "inline", rate=7, retention=0, encode=frame_to_png)
    in_process.publish("cam", sample)
    written = files(tmp_path / "helpers" / "cam")
    assert len(written) >= 10 and written == files(tmp_path / "inline" / "cam")
    for name in written:
        png = (tmp_path / "helpers" / "cam" / name).read_bytes()
        assert png == (tmp_path / "inline" / "cam" / name).read_bytes()
    assert shared_encoders().failures == failures


def test_bframes_frames_counted_in_display_order_once_even_with_drains(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    sample = h264_sample(bframes=True)
    env = Env(tmp_path, rate=10, retention=0)
    stream = publish_now(env.hub, "cam", PROVIDER_RTMP)
    requests = []
    for i, unit in enumerate(sample.units):
        stream.push(unit)
        if unit.keyframe or i % 7 == 0:
            # A request right after a keyframe makes the decoder drain and decode again.
            requests.append(env.snapshots.take("cam"))
    for d in requests:
        png_rgb(result_now(d))
    auto = env.auto.streams[stream]
    # The last pictures are still held for reordering until the publish ends.
    assert len(sample.frames) - 4 <= auto.frames < len(sample.frames)
    stream.end()
    assert auto.frames == len(sample.frames) == 90  # every picture once, none twice
    done = [e for e in log_events if "auto snapshots done" in e.get("log_format", "")]
    assert len(done) == 1 and done[0]["written"] == 9 and done[0]["file"] == "000009.png"
    assert files(tmp_path / "cam") == [f"{n:06d}.png" for n in range(1, 10)]
    order = display_order(sample)
    for n in range(1, 10):
        rgb = png_rgb((tmp_path / "cam" / f"{n:06d}.png").read_bytes())
        assert pts_of(sample, rgb) == order[10 * n - 1]


@pytest.mark.parametrize("how", ["audio_only", "after_clear_video"])
def test_a_stream_ending_with_no_video_cached_still_reports_done(
    tmp_path: Path, how: str, log_events: list[dict[str, Any]]
) -> None:
    env = Env(tmp_path, rate=30, retention=0)
    if how == "audio_only":
        stream = publish_now(env.hub, "cam", PROVIDER_RTMP)
        stream.push(MediaUnit("audio", "AAC", 0, 0, True, b"\x21\x00"))
    else:
        stream = env.publish("cam", h264_sample(bframes=False))
        stream.clear_video()  # the source dropped: no GOP left to drain
    source = env.snapshots.source(stream)
    stream.end()
    done = [e for e in log_events if "auto snapshots done" in e.get("log_format", "")]
    assert len(done) == 1 and done[0]["stream_name"] == "cam"
    assert done[0]["written"] == (0 if how == "audio_only" else 3)
    assert source.decoder.on_frame is None  # released


def test_republish_continues_numbering_after_highest_file(tmp_path: Path) -> None:
    sample = h264_sample(bframes=False)
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / "000041.png").write_bytes(b"old")
    (folder / "notes.txt").write_text("not a snapshot")
    env = Env(tmp_path, rate=30, retention=0)
    first = env.publish("cam", sample)
    first.end()
    assert scan_numbers(folder) == [41, 42, 43, 44]
    env.publish("cam", sample)
    assert scan_numbers(folder) == [41, 42, 43, 44, 45, 46, 47]
    assert (folder / "notes.txt").exists()


def test_a_restarted_server_continues_too(tmp_path: Path) -> None:
    sample = h264_sample(bframes=False)
    Env(tmp_path, rate=45, retention=3).publish("cam", sample)
    assert scan_numbers(tmp_path / "cam") == [1, 2]
    Env(tmp_path, rate=45, retention=3).publish("cam", sample)
    assert scan_numbers(tmp_path / "cam") == [2, 3, 4]


def test_media_session_id_naming_gives_a_folder_per_publish(tmp_path: Path) -> None:
    sample = h264_sample(bframes=False)
    env = Env(tmp_path, naming="mediaSessionId", rate=30, retention=0)
    a = env.publish("cam", sample)
    a.end()
    b = env.publish("cam", sample)
    assert sorted(os.listdir(tmp_path)) == sorted([a.media_session_id, b.media_session_id])
    assert files(tmp_path / b.media_session_id) == ["000001.png", "000002.png", "000003.png"]


def test_folder_symlinked_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "snaps"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "cam").symlink_to(outside)
    env = Env(root, rate=30, retention=0)
    stream = env.publish("cam", h264_sample(bframes=False))
    assert os.listdir(outside) == []
    info = env.views.stream_json(stream)["autoSnapshot"]
    assert isinstance(info, dict)
    assert info["written"] == 0
    assert info["errors"] == 3
    assert "outside snapshot_auto_dir" in str(info["lastError"])


def test_file_is_invisible_until_complete_and_failed_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = auto_mod._write_file
    seen: list[list[str]] = []

    def watching_write(path: Path, data: bytes) -> None:
        seen.append(files(tmp_path))  # what a reader would see while the data is written
        real_write(path, data)

    monkeypatch.setattr(auto_mod, "_write_file", watching_write)
    assert write_numbered(tmp_path, 1, b"png") == 1
    assert seen == [[]]
    assert files(tmp_path) == ["000001.png"]

    def failing_os_write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(auto_mod, "_write_file", real_write)
    monkeypatch.setattr(auto_mod.os, "write", failing_os_write)
    with pytest.raises(OSError) as info:
        write_numbered(tmp_path, 2, b"png")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert files(tmp_path) == ["000001.png"]


def test_taken_number_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "000005.png").write_bytes(b"keep")
    assert write_numbered(tmp_path, 5, b"new") == 6
    assert (tmp_path / "000005.png").read_bytes() == b"keep"
    assert (tmp_path / "000006.png").read_bytes() == b"new"


def test_disk_full_is_counted_and_logged_once_then_writing_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_events: list[dict[str, Any]]
) -> None:
    sample = h264_sample(bframes=False)
    env = Env(tmp_path, rate=10, retention=0)
    stream = publish_now(env.hub, "cam", PROVIDER_RTMP)

    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    real_write = auto_mod._write_file
    monkeypatch.setattr(auto_mod, "_write_file", disk_full)
    for unit in sample.units[:61]:  # GOPs of 30: the first two are complete
        stream.push(unit)
    auto = env.auto.streams[stream]
    assert (auto.written, auto.errors) == (0, 6)
    assert "No space left on device" in str(auto.last_error)
    errors = [e for e in log_events if "not written" in e.get("log_format", "")]
    assert len(errors) == 1
    monkeypatch.setattr(auto_mod, "_write_file", real_write)
    for unit in sample.units[61:]:
        stream.push(unit)
    env.next_gop(stream, sample.units)
    assert not stream.ended
    assert (auto.written, auto.errors) == (3, 6)
    assert files(tmp_path / "cam") == [f"{n:06d}.png" for n in range(1, 4)]
    assert any("written again" in e.get("log_format", "") for e in log_events)


def test_folder_deleted_while_running_is_made_again(tmp_path: Path) -> None:
    sample = h264_sample(bframes=False)
    env = Env(tmp_path, rate=30, retention=0)
    stream = env.publish("cam", sample, units=31, next_gop=False)
    (tmp_path / "cam" / "000001.png").unlink()
    (tmp_path / "cam").rmdir()
    for unit in sample.units[31:]:
        stream.push(unit)
    env.next_gop(stream, sample.units)
    assert files(tmp_path / "cam") == ["000002.png", "000003.png"]


def test_resolution_change_resets_decoder_and_files_continue(tmp_path: Path) -> None:
    small = h264_sample(bframes=False)
    large = h264_sample(bframes=False, seconds=2, size="640x360")
    env = Env(tmp_path, rate=30, retention=0)
    stream = env.publish("cam", small, next_gop=False)
    stream.set_video_params(VideoParams("H264", 640, 360))
    base = max(small.units, key=lambda u: u.pts).pts + 3000
    shifted = [dataclasses.replace(u, pts=u.pts + base, dts=u.dts + base) for u in large.units]
    for unit in shifted:
        stream.push(unit)
    env.next_gop(stream, shifted)
    sizes = [png_rgb(p.read_bytes()).shape for p in sorted((tmp_path / "cam").iterdir())]
    assert sizes == [(240, 320, 3)] * 3 + [(360, 640, 3)] * 2


def test_decoder_behind_real_time_drops_whole_gops_and_logs_once(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    sample = h264_sample(bframes=False)  # 3 GOPs of 30
    pool = ManualPool()
    env = Env(tmp_path, rate=1, retention=0, pool=pool)
    stream = publish_now(env.hub, "cam", PROVIDER_RTMP)
    stream.push(sample.units[0])  # the first job starts on the keyframe ...
    for unit in sample.units[1:]:
        stream.push(unit)  # ... and the whole stream arrives before it runs
    pool.run_all()
    auto = env.auto.streams[stream]
    info = env.views.stream_json(stream)["autoSnapshot"]
    assert isinstance(info, dict)
    # GOP 1 was held until complete and decoded whole; GOP 2 was gone by then.
    assert info["droppedGops"] == 1
    assert auto.frames == 30 and auto.written == 30
    stream.end()
    pool.run_all()
    assert auto.frames == 60 and auto.written == 60  # GOP 3 numbered after GOP 1
    drops = [e for e in log_events if "fell behind" in e.get("log_format", "")]
    assert len(drops) == 1


def test_leftover_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / ".000007.png.123-456.tmp").write_bytes(b"half")
    (tmp_path / "cam" / "000006.png").write_bytes(b"whole")
    (tmp_path / "cam" / ".hidden").write_bytes(b"not ours")
    assert clean_leftovers(tmp_path) == 1
    assert files(tmp_path / "cam") == [".hidden", "000006.png"]
    (tmp_path / "cam" / ".000008.png.9-9.tmp").write_bytes(b"half")
    env = Env(tmp_path)  # start-up cleans too
    assert env.auto.root == tmp_path
    assert files(tmp_path / "cam") == [".hidden", "000006.png"]


def test_unwritable_root_is_logged_and_streaming_goes_on(
    tmp_path: Path, log_events: list[dict[str, Any]]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the root should be")
    env = Env(blocker / "snaps", rate=30)
    stream = env.publish("cam", h264_sample(bframes=False))
    assert any("not usable" in e.get("log_format", "") for e in log_events)
    info = env.views.stream_json(stream)["autoSnapshot"]
    assert isinstance(info, dict)
    assert (info["written"], info["errors"]) == (0, 3)
    png_rgb(result_now(env.snapshots.take("cam")))  # on-demand snapshots unaffected


def test_retention_counts_only_snapshot_files(tmp_path: Path) -> None:
    folder = SnapshotFolder(tmp_path, "cam", retention=2)
    for _ in range(4):
        folder.write(b"x")
        folder.prune()
    (tmp_path / "cam" / "readme").write_text("kept")
    folder.prune()
    assert files(tmp_path / "cam") == ["000003.png", "000004.png", "readme"]


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    hub = StreamHub()
    snaps = SnapshotService(hub, sync_pool, Clock())
    with pytest.raises(ValueError):
        AutoSnapshotter(hub, snaps, root=tmp_path, naming="other")
    with pytest.raises(ValueError):
        AutoSnapshotter(hub, snaps, root=tmp_path, rate=0)


def test_unrequested_stream_decodes_a_gop_per_job_and_requests_get_the_newest(
    tmp_path: Path,
) -> None:
    sample = h264_sample(bframes=False)  # GOPs of 30
    pool = ManualPool()
    env = Env(tmp_path, rate=1, retention=0, pool=pool)
    stream = publish_now(env.hub, "cam", PROVIDER_RTMP)
    for unit in sample.units[:31]:
        stream.push(unit)
        pool.run_all()
    # One job on each keyframe: the first leaves its GOP for later, the second decodes it.
    assert pool.ran == 2
    assert env.auto.streams[stream].frames == 30
    assert len(os.listdir(tmp_path / "cam")) == 30
    for unit in sample.units[31:40]:
        stream.push(unit)
        pool.run_all()
    assert pool.ran == 2
    d = env.snapshots.take("cam")
    pool.run_all()
    assert pts_of(sample, png_rgb(result_now(d))) == sample.units[39].pts
    for unit in sample.units[40:]:
        stream.push(unit)
        pool.run_all()
    stream.end()
    pool.run_all()
    assert env.auto.streams.get(stream) is None
    assert len(os.listdir(tmp_path / "cam")) == 90
