"""StreamDecoder's catch-up for the newest picture: pictures nothing references are skipped,
and the picture it returns is exactly the one a decode of every unit returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pytest

import wcs.media.decoder as decoder_mod
from tests.unit.media_fixtures import Sample, h264_sample, pts_of
from wcs.media import h264
from wcs.media.decoder import COLD_MIN_UNITS, KEEP_TAIL, StreamDecoder
from wcs.media.gop import Gop
from wcs.media.image import frame_to_rgb
from wcs.media.units import MediaUnit, VideoParams


@pytest.fixture(scope="module")
def sample() -> Sample:
    return h264_sample(bframes=True, seconds=3)  # GOPs of 30, B-frames (some referenced)


def gops_of(sample: Sample) -> list[Gop]:
    gops: list[Gop] = []
    for unit in sample.units:
        if unit.keyframe:
            gops.append(Gop(len(gops) + 1, VideoParams("H264")))
        gops[-1].units.append(unit)
    return gops


def slice_nal(ref_idc: int, kind: int = 1) -> bytes:
    return bytes([ref_idc << 5 | kind]) + b"\x88\x84\x00"


def test_a_picture_is_disposable_when_its_slices_have_nal_ref_idc_0(sample: Sample) -> None:
    aud, sei = bytes([0x09, 0xF0]), bytes([0x06, 0x05, 0x01, 0x00, 0x80])
    assert h264.is_disposable(h264.to_annexb([aud, sei, slice_nal(0)]))
    assert not h264.is_disposable(h264.to_annexb([aud, slice_nal(2)]))
    assert not h264.is_disposable(h264.to_annexb([slice_nal(3, kind=5)]))  # IDR
    assert not h264.is_disposable(h264.to_annexb([aud, sei]))  # no slice: keep it
    assert not h264.is_disposable(b"")
    assert not h264.is_disposable(b"\x00\x00\x01")
    # 3-byte start codes too.
    assert h264.is_disposable(b"\x00\x00\x01" + slice_nal(0))
    flags = [h264.is_disposable(u.data) for u in sample.units]
    assert not any(f for f, u in zip(flags, sample.units, strict=True) if u.keyframe)
    # x264's B-pyramid: some B-frames are references, the others are not.
    assert 0.2 < sum(flags) / len(flags) < 0.6


@pytest.mark.parametrize("sps_says", [True, False])
def test_skipping_returns_the_picture_a_full_decode_returns_for_every_target(
    sample: Sample, sps_says: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the SPS's max_num_reorder_frames (x264 writes it) and without (KEEP_TAIL)."""
    if not sps_says:
        monkeypatch.setattr(decoder_mod, "keep_tail_of", lambda params, keyframe: KEEP_TAIL)
    gop = gops_of(sample)[1]
    assert len(gop.units) > KEEP_TAIL + 8
    assert decoder_mod.keep_tail_of(gop.params, gop.units[0]) == (4 if sps_says else KEEP_TAIL)
    skipped = 0
    for end in range(1, len(gop.units) + 1):
        full = StreamDecoder(skip_disposable=False, cold_threads=1).newest(gop, end)
        decoder = StreamDecoder(cold_threads=1)
        got = decoder.newest(gop, end)
        skipped += decoder.skipped_units
        assert (got is None) == (full is None), end
        if got is not None and full is not None:
            assert np.array_equal(frame_to_rgb(got.frame), frame_to_rgb(full.frame)), end
            assert got.after_key and got.gop_seq == gop.seq
    assert skipped > 0


def test_a_decoder_that_must_see_every_frame_skips_nothing(sample: Sample) -> None:
    gop = gops_of(sample)[1]
    seen: list[object] = []
    decoder = StreamDecoder()
    decoder.on_frame = seen.append
    decoder.catch_up(gop, len(gop.units))
    decoder.drain()
    assert decoder.skipped_units == 0 and len(seen) == len(gop.units)


def test_a_hot_decoder_following_the_stream_skips_nothing(sample: Sample) -> None:
    gop = gops_of(sample)[1]
    decoder = StreamDecoder()
    for end in range(1, len(gop.units) + 1):
        decoder.catch_up(gop, end)  # one new unit per job: always within the tail
    assert decoder.skipped_units == 0


def drained_newest(gop: Gop, end: int) -> np.ndarray | None:
    """The newest picture in display order of gop.units[:end]: every unit, one thread, flushed."""
    decoder = StreamDecoder(skip_disposable=False, cold_threads=1)
    decoder.catch_up(gop, end)
    decoder.drain()
    latest = decoder.latest
    return None if latest is None else frame_to_rgb(latest.frame)


def test_a_cold_request_decodes_with_frame_threads_and_gets_the_newest_picture(
    sample: Sample,
) -> None:
    gops = gops_of(sample)
    gop = gops[1]
    for end in (COLD_MIN_UNITS, 13, len(gop.units) - 1, len(gop.units)):
        decoder = StreamDecoder()
        got = decoder.newest(gop, end)
        assert got is not None and got.gop_seq == gop.seq and got.after_key
        reference = drained_newest(gop, end)
        assert reference is not None
        assert np.array_equal(frame_to_rgb(got.frame), reference), end
        assert decoder.skipped_units > 0 or end <= KEEP_TAIL
        # The one-thread context starts the GOP again at the next catch-up, and keeps up.
        follow = decoder.catch_up(gop, len(gop.units))
        fresh = StreamDecoder(cold_threads=1).catch_up(gop, len(gop.units))
        assert follow is not None and fresh is not None
        assert np.array_equal(frame_to_rgb(follow.frame), frame_to_rgb(fresh.frame))


def test_short_prefixes_and_decoders_already_in_the_gop_decode_on_one_thread(
    sample: Sample,
) -> None:
    gop = gops_of(sample)[1]
    decoder = StreamDecoder()
    first = decoder.newest(gop, COLD_MIN_UNITS - 1)  # too short to be worth threads
    assert first is not None and decoder._gop_seq == gop.seq
    later = decoder.newest(gop, len(gop.units))  # in the GOP already: incremental
    one_thread = StreamDecoder(cold_threads=1).newest(gop, len(gop.units))
    assert later is not None and one_thread is not None
    assert np.array_equal(frame_to_rgb(later.frame), frame_to_rgb(one_thread.frame))


def test_an_auto_snapshot_decoder_never_takes_the_threaded_path(sample: Sample) -> None:
    gop = gops_of(sample)[1]
    decoder = StreamDecoder()
    seen: list[object] = []
    decoder.on_frame = seen.append
    decoder.newest(gop, len(gop.units))
    assert decoder._gop_seq == gop.seq  # the incremental context did the work
    assert len(seen) >= len(gop.units) - 4


def follow(
    sample: Sample,
    rate: int,
    *,
    units: Sequence[MediaUnit] | None = None,
    defer: Callable[[int], bool],
    request_at: Callable[[int], bool] = lambda i: False,
    params_change_at: int = -1,
) -> tuple[StreamDecoder, list[tuple[int, int]]]:
    """A listener's decoder following the stream unit by unit (one job per unit): `defer(i)`
    says whether nobody asked lately at unit i, `request_at(i)` makes a request there.
    Returns the decoder and the (number, source pts) of every picture delivered."""
    decoder = StreamDecoder()
    got: list[tuple[int, int]] = []
    decoder.on_frame = lambda f: got.append((f.number, pts_of(sample, frame_to_rgb(f.frame))))
    decoder.want = lambda n: n % rate == 0
    gop: Gop | None = None
    params = VideoParams("H264")
    for i, unit in enumerate(sample.units if units is None else units):
        if unit.keyframe:
            if i == params_change_at:
                params = dataclasses.replace(params, profile="changed")
            gop = Gop(gop.seq + 1 if gop else 1, params)
        assert gop is not None
        gop.units.append(unit)
        if request_at(i):
            newest = decoder.newest(gop, len(gop.units))
            assert newest is not None
            assert pts_of(sample, frame_to_rgb(newest.frame)) in sample.frames
        else:
            decoder.catch_up(gop, len(gop.units), defer=defer(i))
    assert gop is not None
    decoder.finish(gop, len(gop.units))
    return decoder, got


def expected(sample: Sample, rate: int) -> list[tuple[int, int]]:
    order = sorted(sample.frames)
    return [(n, order[n - 1]) for n in range(rate, len(order) + 1, rate)]


@pytest.mark.parametrize("rate", [1, 7, 13, 30])
def test_a_listener_gets_exactly_the_wanted_pictures_in_display_order(
    sample: Sample, rate: int
) -> None:
    """Nobody asking (whole GOPs, wanted pictures only) and hot (every picture decoded)."""
    lazy, got = follow(sample, rate, defer=lambda i: True)
    assert got == expected(sample, rate)
    assert lazy.selective_gops == 3
    hot, got_hot = follow(sample, rate, defer=lambda i: False)
    assert got_hot == expected(sample, rate)
    assert hot.selective_gops == 0 and hot.skipped_units == 0
    if rate > 1:  # B-frames nothing references, and whatever follows a GOP's last wanted one
        assert lazy.frames_decoded < hot.frames_decoded
        assert lazy.skipped_units == len(sample.units) - lazy.frames_decoded
    assert lazy.frames_seen == hot.frames_seen == len(sample.units)
    for decoder in (lazy, hot):  # numbering keeps the newest GOP's units only, not older GOPs'
        assert sum(n.gop is not None for n in decoder._numberings.values()) <= 1


@pytest.mark.parametrize("rate", [1, 7, 30])
def test_requests_and_changes_of_mode_neither_repeat_nor_miss_a_picture(
    sample: Sample, rate: int
) -> None:
    """Requests right after keyframes (the decoder drains, outputting a GOP's first pictures
    before those displayed between them arrived), mid-GOP, and hot/lazy switching."""
    starts = sample.gop_starts()
    schedules = [
        set(starts) | set(range(3, 90, 11)),
        {s + 1 for s in starts} | {s + 2 for s in starts},  # drains with P pictures held
    ]
    for asked in schedules:
        for defer in (lambda i: i not in range(25, 65), lambda i: i % 40 < 20, lambda i: True):
            _, got = follow(sample, rate, defer=defer, request_at=asked.__contains__)
            assert got == expected(sample, rate)


@pytest.mark.parametrize("lazy", [True, False])
def test_a_parameter_change_first_outputs_the_pictures_held_for_reordering(
    sample: Sample, lazy: bool
) -> None:
    _, got = follow(sample, 1, defer=lambda i: lazy, params_change_at=sample.gop_starts()[1])
    assert got == expected(sample, 1)


def test_gops_a_lazy_listener_never_saw_are_counted_and_numbering_goes_on(sample: Sample) -> None:
    gops = gops_of(sample)
    decoder = StreamDecoder()
    got: list[int] = []
    decoder.on_frame = lambda f: got.append(f.number)
    decoder.want = lambda n: n % 10 == 0
    decoder.catch_up(gops[0], 1, defer=True)  # GOP 1 left for later ...
    decoder.finish(gops[2], len(gops[2].units))  # ... and GOP 2 was gone by the next job
    assert decoder.dropped_gops == 1
    assert got == [10, 20, 30, 40, 50, 60]  # GOP 3 numbered right after GOP 1


def test_a_clock_that_jumps_within_a_gop_gets_the_gop_decoded_whole_and_counted(
    sample: Sample,
) -> None:
    """Presentation times that step back an hour ten units after each keyframe cannot order a
    GOP: such a GOP is decoded whole, numbered in output order, and nothing is missed."""
    jumped: list[MediaUnit] = []
    since_key = steps = 0
    for unit in sample.units:
        since_key = 0 if unit.keyframe else since_key + 1
        steps += since_key == 10
        back = -steps * 90_000 * 3600
        jumped.append(dataclasses.replace(unit, pts=unit.pts + back, dts=unit.dts + back))
    lazy, got = follow(sample, 7, units=jumped, defer=lambda i: True)
    assert got == expected(sample, 7)
    assert lazy.skipped_units == 0
