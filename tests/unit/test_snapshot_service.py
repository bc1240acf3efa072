"""SnapshotService with an injected Clock and a hand-driven pool: attempts, timeout, coalescing,
freshness, hot decoding, stream end and republish."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.python.failure import Failure

from tests.unit.fakes import ManualPool, publish_now, result_now
from tests.unit.media_fixtures import Sample, h264_sample, png_rgb, pts_of
from wcs.directory import StreamNotFound
from wcs.media.encode import ImageSpec
from wcs.media.units import MediaUnit, VideoParams
from wcs.snapshot.service import Snapshot, SnapshotService, SnapshotTimeout
from wcs.streams import PROVIDER_RTMP, Stream, StreamHub
from wcs.webrtc.peer import StreamTrack

FRAME = 3000  # 90 kHz ticks per frame at 30 fps


def failure_of(d: Deferred[Any]) -> Failure:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box and isinstance(box[0], Failure), f"expected a failure, got {box}"
    return box[0]


@pytest.fixture
def env() -> tuple[StreamHub, ManualPool, Clock, SnapshotService]:
    hub = StreamHub()
    pool = ManualPool()
    clock = Clock()
    service = SnapshotService(hub, pool, clock, interval_ms=3000, attempts=30, hot_seconds=10)
    return hub, pool, clock, service


def push(stream: Stream, units: tuple[MediaUnit, ...] | list[MediaUnit]) -> None:
    for unit in units:
        stream.push(unit)


def test_unknown_stream_fails_not_found(env: Any) -> None:
    _, _, _, service = env
    failure_of(service.take("nope")).trap(StreamNotFound)


def test_audio_only_times_out_after_all_attempts(env: Any) -> None:
    hub, pool, clock, service = env
    stream = publish_now(hub, "radio", PROVIDER_RTMP)
    stream.push(MediaUnit("audio", "AAC", 0, 0, True, b"\x21\x00"))
    source = service.source(stream)
    calls: list[float] = []
    original = source.request

    def counting_request(spec: ImageSpec, max_age_ms: int) -> Deferred[Snapshot | None]:
        calls.append(clock.seconds())
        return original(spec, max_age_ms)

    source.request = counting_request
    d = service.take("radio")
    clock.pump([0.1] * 29)
    assert not d.called
    clock.advance(0.1)
    failure = failure_of(d)
    failure.trap(SnapshotTimeout)
    timeout = failure.value
    assert isinstance(timeout, SnapshotTimeout)
    assert timeout.code == "no_video" and "audio only" in timeout.detail
    assert len(calls) == 30
    assert calls[0] == 0 and calls[-1] == pytest.approx(2.9)
    assert pool.jobs == []


def test_snapshot_is_newest_frame_and_concurrent_requests_share_one_decode(env: Any) -> None:
    hub, pool, _, service = env
    sample = h264_sample()
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    push(stream, sample.units[:20])
    first, second = service.take("cam"), service.take("cam")
    assert len(pool.jobs) == 1
    pool.run_next()
    png1, png2 = result_now(first), result_now(second)
    assert png1 is png2
    rgb = png_rgb(png1)
    assert rgb.shape == (sample.height, sample.width, 3)
    pts = pts_of(sample, rgb)
    newest_pts = max(u.pts for u in sample.units[:20])
    # The newest P-frame may be up to 4 frames ahead of B-frames not yet received, and the decoder
    # holds its reorder depth (2) back: never more than 5 frames behind the newest pts.
    assert newest_pts - 5 * FRAME <= pts <= newest_pts


def test_request_after_new_keyframe_never_returns_older_gop(env: Any) -> None:
    hub, pool, clock, service = env
    sample = h264_sample()
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    starts = sample.gop_starts()
    push(stream, sample.units[: starts[1] - 1])
    d = service.take("cam")
    pool.run_all()
    result_now(d)
    # Only the next keyframe has arrived: the picture must be that keyframe, not the old GOP.
    clock.advance(60)  # not hot any more
    push(stream, sample.units[starts[1] - 1 : starts[1] + 1])
    d = service.take("cam")
    pool.run_all()
    pts = pts_of(sample, png_rgb(result_now(d)))
    assert pts >= sample.units[starts[1]].pts


def test_hot_stream_decodes_as_frames_arrive_then_cools(env: Any) -> None:
    hub, pool, clock, service = env
    sample = h264_sample()
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    push(stream, sample.units[:5])
    d = service.take("cam")
    pool.run_all()
    result_now(d)
    for unit in sample.units[5:15]:
        stream.push(unit)
        pool.run_all()
    source = service.source(stream)
    assert source.decoder.frames_decoded >= 10  # decoded as they came, not at the next request
    jobs_before = pool.ran
    d = service.take("cam")
    pool.run_all()
    assert pool.ran == jobs_before + 1
    pts = pts_of(sample, png_rgb(result_now(d)))
    assert pts >= max(u.pts for u in sample.units[:15]) - 5 * FRAME
    clock.advance(11)
    decoded = source.decoder.frames_decoded
    push(stream, sample.units[15:25])
    pool.run_all()
    assert source.decoder.frames_decoded == decoded, "a cold stream must not be decoded"


def hot_with_a_job_queued(
    hub: StreamHub, pool: ManualPool, service: SnapshotService
) -> tuple[Sample, Stream]:
    """A stream asked once (so hot), and one more unit: a job decoding ahead is queued."""
    sample = h264_sample()
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    push(stream, sample.units[:5])
    first = service.take("cam")
    pool.run_all()
    result_now(first)
    stream.push(sample.units[5])
    return sample, stream


def test_a_frame_source_whose_reader_failed_reads_again_at_the_next_request(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, pool, _clock, service = env
    sample = h264_sample()
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    push(stream, sample.units[:5])
    source = service.source(stream)

    def broken(unit: MediaUnit) -> None:
        raise RuntimeError("a bug in the snapshot reader")

    monkeypatch.setattr(source, "_unit", broken)
    first = service.take("cam")
    pool.run_all()
    result_now(first)
    stream.push(sample.units[5])  # the reader raises: the stream detaches it
    assert stream.readers == [] and source._reader is None
    monkeypatch.undo()
    d = service.take("cam")  # attaches a new reader
    assert len(stream.readers) == 1
    pool.run_all()
    png_rgb(result_now(d))


def test_a_request_joins_the_job_decoding_ahead_of_it(env: Any) -> None:
    """A hot stream decodes as units come; a request arriving while such a job waits or runs
    gets its PNG from that job instead of waiting for it and then for one more."""
    hub, pool, _clock, service = env
    sample, _ = hot_with_a_job_queued(hub, pool, service)
    assert len(pool.jobs) == 1
    d = service.take("cam")  # nothing newer since that job was queued: it joins
    assert len(pool.jobs) == 1
    jobs_before = pool.ran
    pool.run_next()
    assert pool.ran == jobs_before + 1 and pool.jobs == []
    pts = pts_of(sample, png_rgb(result_now(d)))
    assert pts >= max(u.pts for u in sample.units[:6]) - 5 * FRAME


def test_a_request_after_the_job_decided_gets_a_job_of_its_own(env: Any) -> None:
    hub, pool, _clock, service = env
    sample, stream = hot_with_a_job_queued(hub, pool, service)
    source = service.source(stream)
    running = source._running
    assert running is not None and not running.png_wanted
    assert running.close() is False  # as the pool does when its decode is done
    d = service.take("cam")  # too late to join: waits for the next job
    pool.run_all()
    assert pool.ran >= 3
    pts = pts_of(sample, png_rgb(result_now(d)))
    assert pts >= max(u.pts for u in sample.units[:6]) - 5 * FRAME


def test_stream_end_fails_waiting_request_and_republish_is_fresh(env: Any) -> None:
    hub, pool, clock, service = env
    sample = h264_sample()
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    push(stream, sample.units[:10])
    d = service.take("cam")
    stream.end()
    pool.run_all()
    failure_of(d).trap(StreamNotFound)
    # Same name again, no video yet: never the previous publish's picture.
    again = publish_now(hub, "cam", PROVIDER_RTMP)
    assert again is not stream
    d = service.take("cam")
    clock.pump([0.1] * 30)
    failure_of(d).trap(SnapshotTimeout)


def test_waits_for_first_keyframe_within_interval(env: Any) -> None:
    hub, pool, clock, service = env
    sample = h264_sample()
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    push(stream, sample.units[1:5])  # joined mid-GOP: nothing decodable yet
    d = service.take("cam")
    clock.advance(0.5)
    assert not d.called and pool.jobs == []
    start = sample.gop_starts()[1]
    push(stream, sample.units[start : start + 3])
    clock.advance(0.1)  # next attempt finds the keyframe
    pool.run_all()
    pts = pts_of(sample, png_rgb(result_now(d)))
    assert pts >= sample.units[start].pts


def test_decoder_failure_is_retried_then_times_out(env: Any) -> None:
    hub, pool, clock, service = env
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    stream.push(MediaUnit("video", "H264", 0, 0, True, b"\x00\x00\x00\x01\x65garbage"))
    d = service.take("cam")
    for _ in range(40):
        pool.run_all()
        clock.advance(0.1)
    failure_of(d).trap(SnapshotTimeout)
    assert pool.ran >= 2


def test_unsupported_codec_times_out_without_decoding(env: Any) -> None:
    hub, pool, clock, service = env
    stream = publish_now(hub, "old", PROVIDER_RTMP)
    stream.push(MediaUnit("video", "H263", 0, 0, True, b"\x00" * 10))
    d = service.take("old")
    clock.pump([0.1] * 30)
    failure_of(d).trap(SnapshotTimeout)
    assert pool.ran == 0 and pool.jobs == []


def test_hot_streams_are_bounded_and_never_evicted_by_newer_ones() -> None:
    hub, pool, clock = StreamHub(), ManualPool(), Clock()
    service = SnapshotService(hub, pool, clock, hot_seconds=10, max_hot=2)
    sample = h264_sample()
    streams = [publish_now(hub, f"cam{i}", PROVIDER_RTMP) for i in range(3)]
    for stream in streams:
        push(stream, sample.units[:5])
        d = service.take(stream.name)
        pool.run_all()
        result_now(d)
    assert service.hot_streams == 2
    assert [service.source(s).hot for s in streams] == [True, True, False]
    decoded = [service.source(s).decoder.frames_decoded for s in streams]
    for stream in streams:
        push(stream, sample.units[5:15])
    pool.run_all()
    after = [service.source(s).decoder.frames_decoded for s in streams]
    assert after[0] > decoded[0] and after[1] > decoded[1]
    assert after[2] == decoded[2], "a stream over the budget is decoded only on request"
    # The cold stream is still served, from where its decoder stopped.
    d = service.take("cam2")
    pool.run_all()
    pts = pts_of(sample, png_rgb(result_now(d)))
    assert pts >= max(u.pts for u in sample.units[:15]) - 5 * FRAME
    assert [service.source(s).hot for s in streams] == [True, True, False]
    # Once the hot ones are no longer asked for, the budget frees up.
    clock.advance(11)
    d = service.take("cam2")
    pool.run_all()
    result_now(d)
    assert [service.source(s).hot for s in streams] == [False, False, True]


def test_stream_ending_between_attempts_is_not_found_not_a_timeout(env: Any) -> None:
    hub, pool, clock, service = env
    stream = publish_now(hub, "radio", PROVIDER_RTMP)
    stream.push(MediaUnit("audio", "AAC", 0, 0, True, b"\x21\x00"))
    d = service.take("radio")
    clock.pump([0.1] * 5)
    assert not d.called
    stream.end()
    clock.advance(0.1)  # the next attempt, long before the 3 s interval is over
    failure_of(d).trap(StreamNotFound)
    assert pool.jobs == []


def test_no_cached_keyframe_asks_the_publisher_once(env: Any) -> None:
    hub, pool, clock, service = env
    stream = publish_now(hub, "webrtc", PROVIDER_RTMP)
    asked: list[int] = []
    stream.keyframe_requester = lambda: asked.append(1)
    d = service.take("webrtc")
    pool.run_all()
    for _ in range(5):
        clock.advance(0.1)
        pool.run_all()
    assert asked == [1]
    sample = h264_sample()
    push(stream, sample.units[:3])
    clock.advance(0.1)
    pool.run_all()
    png_rgb(result_now(d))


def test_cold_request_jumps_to_the_newest_gop_without_decoding_the_old_tail(env: Any) -> None:
    hub, pool, clock, service = env
    sample = h264_sample(bframes=False)  # GOPs of 30
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    push(stream, sample.units[:5])
    d = service.take("cam")
    pool.run_all()
    assert pts_of(sample, png_rgb(result_now(d))) == sample.units[4].pts
    clock.advance(11)  # no longer hot: nothing is decoded ahead of requests
    push(stream, sample.units[5:33])
    pool.run_all()
    decoder = service.source(stream).decoder
    before = decoder.frames_decoded
    d = service.take("cam")
    pool.run_all()
    assert pts_of(sample, png_rgb(result_now(d))) == sample.units[32].pts
    assert decoder.frames_decoded - before == 3  # units 30..32 only, not the old GOP's tail


# -- max_picture_pixels (finding 2) -------------------------------------------------------------


def test_refused_video_answers_as_no_video_without_decoding() -> None:
    hub, pool, clock = StreamHub(max_picture_pixels=320 * 240), ManualPool(), Clock()
    service = SnapshotService(hub, pool, clock)
    sample = h264_sample()
    stream = publish_now(hub, "big", PROVIDER_RTMP)
    stream.set_video_params(VideoParams("H264", 16000, 16000, extradata=b"\0\0\0\1g"))
    push(stream, sample.units[:10])
    d = service.take("big")
    clock.pump([0.1] * 30)
    failure_of(d).trap(SnapshotTimeout)
    assert pool.ran == 0 and pool.jobs == []


@pytest.mark.parametrize("limit", [320 * 240 - 1, 100 * 100])
def test_decoder_refuses_an_in_band_sps_over_the_limit_and_logs_once(
    limit: int, log_events: list[LogEvent]
) -> None:
    """The declared parameters are small; the SPS inside the stream says 320x240: FFmpeg's
    max_pixels makes the decoder refuse it, without a traceback, and the stream lives on."""
    hub, pool, clock = StreamHub(max_picture_pixels=limit), ManualPool(), Clock()
    service = SnapshotService(hub, pool, clock, hot_seconds=10)
    sample = h264_sample()
    stream = publish_now(hub, "sneaky", PROVIDER_RTMP)
    stream.set_video_params(VideoParams("H264", 64, 64))
    push(stream, sample.units[:10])
    d = service.take("sneaky")
    for _ in range(35):
        pool.run_all()
        clock.advance(0.1)
    failure_of(d).trap(SnapshotTimeout)
    assert pool.ran >= 2
    assert service.source(stream).decoder.frames_decoded == 0
    warnings = [e for e in log_events if "decoding failed" in e.get("log_format", "")]
    assert len(warnings) == 1 and "Invalid data" in warnings[0]["reason"]
    assert not [e for e in log_events if e.get("log_failure") is not None]
    assert not stream.ended


@pytest.mark.parametrize("limit", [320 * 240 - 1, None], ids=["over", "within"])
def test_webrtc_transcoding_refuses_an_in_band_sps_over_the_limit_too(limit: int | None) -> None:
    """The WebRTC player that re-encodes a B-frame stream decodes with the same context set-up
    (open_codec): the picture limit the snapshot decoder applies holds there too."""
    stream = Stream("sneaky", PROVIDER_RTMP, max_picture_pixels=limit or 320 * 240)
    stream.set_video_params(VideoParams("H264", 64, 64))
    track = StreamTrack(stream, "H264")
    frames = [track._decode(unit) for unit in h264_sample().units[:10]]
    decoded = [f for f in frames if f is not None]
    if limit is None:
        assert decoded and (decoded[0].width, decoded[0].height) == (320, 240)
    else:
        assert decoded == []


def test_decoder_within_the_limit_decodes() -> None:
    hub, pool, clock = StreamHub(max_picture_pixels=320 * 240), ManualPool(), Clock()
    service = SnapshotService(hub, pool, clock)
    sample = h264_sample()
    stream = publish_now(hub, "ok", PROVIDER_RTMP)
    push(stream, sample.units[:10])
    d = service.take("ok")
    pool.run_all()
    assert png_rgb(result_now(d)).shape == (240, 320, 3)


def test_a_stream_that_cools_lets_go_of_its_decoder_and_again_when_it_ends() -> None:
    """An asked stream's decoder holds its codec context, pictures and PNG (megabytes at 720p);
    once nobody asks, they go, and the memory is handed back; a cooled stream that ends, which
    no reader tells any more, is released too."""
    hub, pool, clock = StreamHub(), ManualPool(), Clock()
    trims: list[float] = []
    service = SnapshotService(
        hub,
        pool,
        clock,
        hot_seconds=10,
        trim_after_s=5,
        release_memory=lambda: trims.append(clock.seconds()),
    )
    sample = h264_sample()
    stream = publish_now(hub, "cam", PROVIDER_RTMP)
    push(stream, sample.units[:5])
    d = service.take("cam")
    pool.run_all()
    result_now(d)
    source = service.source(stream)
    assert source.decoder.latest is not None and source._images is not None
    clock.advance(11)  # cold now
    stream.push(sample.units[5])  # the first unit after: the source stops reading
    assert stream.readers == [] and pool.jobs == []
    assert source.decoder.latest is None and source.decoder._ctx is None
    assert source._images is None
    clock.advance(5)
    pool.run_all()
    assert trims == [16.0]
    # Asked again: decoded from the keyframe, a fresh picture.
    d = service.take("cam")
    pool.run_all()
    pts = pts_of(sample, png_rgb(result_now(d)))
    assert pts >= max(u.pts for u in sample.units[:6]) - 5 * FRAME
    clock.advance(11)
    stream.push(sample.units[6])  # cooled again
    clock.advance(5)
    pool.run_all()
    assert len(trims) == 2
    released: list[object] = []
    source._on_release = released.append
    stream.end()  # no reader tells the cooled source: the service does
    assert released == [source] and source.decoder.on_frame is None


def test_freed_decoder_memory_is_returned_once_per_interval_after_streams_end() -> None:
    hub, pool, clock = StreamHub(), ManualPool(), Clock()
    trims: list[float] = []
    service = SnapshotService(
        hub, pool, clock, trim_after_s=10, release_memory=lambda: trims.append(clock.seconds())
    )
    sample = h264_sample()
    for i in range(3):
        stream = publish_now(hub, f"cam{i}", PROVIDER_RTMP)
        push(stream, sample.units[:5])
        d = service.take(f"cam{i}")
        pool.run_all()
        result_now(d)
        stream.end()
        clock.advance(1)
    clock.advance(6.9)
    pool.run_all()
    assert trims == []
    clock.advance(0.1)
    pool.run_all()
    assert trims == [10.0]  # one trim for the three streams
    clock.advance(60)
    pool.run_all()
    assert trims == [10.0], "nothing ended since: no trim"
    stream = publish_now(hub, "late", PROVIDER_RTMP)
    push(stream, sample.units[:5])
    d = service.take("late")
    stream.end()  # while its job waits in the pool: the decoder is released after the job
    clock.advance(2)
    assert trims == [10.0] and pool.jobs
    pool.run_all()
    failure_of(d).trap(StreamNotFound)
    clock.advance(10)
    pool.run_all()
    assert trims == [10.0, 82.0]


def test_ended_streams_waiting_for_the_pool_are_bounded() -> None:
    """Under overload more auto-snapshotted streams end than the pool drains: past the backlog
    cap an ended stream's last frames are dropped (counted) and its decoder freed at once, so
    memory does not grow with the backlog."""
    hub, pool, clock = StreamHub(), ManualPool(), Clock()
    service = SnapshotService(hub, pool, clock, max_ended_backlog=2)
    sample = h264_sample()
    frames: dict[str, int] = {}
    finals: dict[str, list[bool]] = {}
    sources = []
    for i in range(4):
        name = f"cam{i}"
        stream = publish_now(hub, name, PROVIDER_RTMP)
        frames[name] = 0

        def count(frame: Any, name: str = name) -> None:
            frames[name] += 1

        source = service.pin(stream, count)
        finals[name] = []
        source.after_job(finals[name].append)
        sources.append(source)
        push(stream, sample.units[:10])
    for source in sources:
        source.stream.end()  # all four end while their jobs wait in the pool
    assert service.abandoned_ends == 2
    pool.run_all()
    assert frames["cam0"] == frames["cam1"] == 10  # drained to their last frame
    assert frames["cam2"] == frames["cam3"] == 0  # their queued jobs did no work
    for name, source in zip(frames, sources, strict=True):
        assert finals[name][-1] is True, "the last job of every stream is reported as final"
        assert source.decoder.dropped_gops == (1 if name in ("cam2", "cam3") else 0)
    assert service._ended_backlog == set()
    # Once the pool has caught up, an ending stream is drained again.
    stream = publish_now(hub, "late", PROVIDER_RTMP)
    late: list[Any] = []
    service.pin(stream, late.append)
    push(stream, sample.units[:10])
    stream.end()
    pool.run_all()
    assert len(late) == 10 and service.abandoned_ends == 2
