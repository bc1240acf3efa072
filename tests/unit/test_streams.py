"""The stream hub and Stream: name checks, lifecycle, sinks, GOP cache, REST JSON."""

from __future__ import annotations

import functools

import pytest
from twisted.logger import LogEvent

from tests.unit.fakes import RecordingReader, publish_now
from wcs import directory
from wcs.directory import InvalidName, NameInUse, StreamError, check_stream_name
from wcs.media.gop import MAX_GOP_BYTES, MAX_GOP_UNITS
from wcs.media.units import MediaUnit, VideoParams
from wcs.rest.views import StreamViews, stream_json
from wcs.streams import PROVIDER_RTMP, PROVIDER_WEBRTC, Reader, Stream, StreamHub

H264 = VideoParams(codec="H264", width=320, height=240, extradata=b"\0\0\0\1gsps\0\0\0\1hpps")


def video(dts: int, keyframe: bool = False, data: bytes = b"v", codec: str = "H264") -> MediaUnit:
    return MediaUnit("video", codec, dts, dts, keyframe, data)


def audio(dts: int, data: bytes = b"a") -> MediaUnit:
    return MediaUnit("audio", "AAC", dts, dts, True, data)


# -- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "cam1",
        "my.stream",
        "64966f33",
        "...",
        "a b",
        "камера-1",
        "日本語ストリーム",
        "emoji-\U0001f3a5",
        "a" * 255,
        "é" * 127 + "a",  # 255 UTF-8 bytes
        "日" * 85,  # 255 UTF-8 bytes
    ],
)
def test_check_stream_name_accepts(name: str) -> None:
    assert check_stream_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/b",
        "/cam1",
        "cam1/",
        "../etc",
        "a\\b",
        "..\\x",
        "a\x00b",
        "a\nb",
        "a\rb",
        "a\tb",
        "\x01",
        "a\x1f",
        "a\x7f",
        "a" * 256,
        "é" * 128,  # 256 UTF-8 bytes in 128 characters
        "日" * 85 + "a",  # 256 UTF-8 bytes
    ],
)
def test_check_stream_name_refuses(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        check_stream_name(name)
    assert isinstance(info.value, StreamError)
    assert info.value.info == "Invalid stream name"


def test_error_infos_are_the_websdk_texts() -> None:
    assert NameInUse.info == "Stream name is already in use"
    assert directory.StreamNotFound.info == "Stream not found"


# -- hub -----------------------------------------------------------------------------------


def test_publish_get_and_end_forgets() -> None:
    hub = StreamHub(clock_ms=lambda: 1234)
    stream = publish_now(hub, "cam1", PROVIDER_RTMP)
    assert hub.get("cam1") is stream
    assert hub.all() == [stream]
    assert len(hub) == 1
    assert hub.by_media_session_id(stream.media_session_id) is stream
    assert stream.name == "cam1"
    assert stream.provider == "Flash"
    assert stream.status == "PUBLISHING"
    assert stream.created_ms == 1234
    assert not stream.ended

    stream.end("Stopped by publisher stop")
    assert stream.ended
    assert stream.status == "UNPUBLISHED"
    assert stream.end_reason == "Stopped by publisher stop"
    assert hub.get("cam1") is None
    assert hub.by_media_session_id(stream.media_session_id) is None
    assert hub.all() == []
    assert len(hub) == 0


def test_name_in_use_is_refused_and_first_stream_untouched() -> None:
    hub = StreamHub()
    first = publish_now(hub, "cam1", PROVIDER_RTMP)
    with pytest.raises(NameInUse) as info:
        publish_now(hub, "cam1", PROVIDER_WEBRTC)
    assert info.value.info == "Stream name is already in use"
    assert hub.get("cam1") is first
    assert not first.ended
    assert len(hub) == 1


def test_invalid_name_is_refused_before_registration() -> None:
    hub = StreamHub()
    seen: list[Stream] = []
    hub.add_observer(seen.append)
    for bad in ("", "..", "a/b", "x" * 256):
        with pytest.raises(InvalidName):
            publish_now(hub, bad, PROVIDER_RTMP)
    assert len(hub) == 0
    assert seen == []


def test_republish_gives_a_new_stream_with_a_new_media_session_id() -> None:
    hub = StreamHub()
    old = publish_now(hub, "cam1", PROVIDER_RTMP)
    old.push(video(0, keyframe=True))
    old.end()
    new = publish_now(hub, "cam1", PROVIDER_RTMP)
    assert new is not old
    assert new.media_session_id != old.media_session_id
    assert hub.get("cam1") is new
    assert new.gop is None and new.video_units == 0
    # The old publish ending (again) never evicts the new one.
    old.end("late")
    old.terminate()
    assert hub.get("cam1") is new
    assert not new.ended


def test_given_media_session_id_is_kept() -> None:
    hub = StreamHub()
    stream = publish_now(hub, "cam1", PROVIDER_WEBRTC, media_session_id="abc-123")
    assert stream.media_session_id == "abc-123"
    assert hub.by_media_session_id("abc-123") is stream
    assert hub.by_media_session_id("other") is None


def test_media_session_ids_are_unique() -> None:
    hub = StreamHub()
    ids = {publish_now(hub, f"s{i}", PROVIDER_RTMP).media_session_id for i in range(50)}
    assert len(ids) == 50


def test_observers_are_called_for_each_publish() -> None:
    hub = StreamHub()
    seen: list[Stream] = []
    hub.add_observer(seen.append)
    a = publish_now(hub, "a", PROVIDER_RTMP)
    with pytest.raises(NameInUse):
        publish_now(hub, "a", PROVIDER_RTMP)
    b = publish_now(hub, "b", PROVIDER_RTMP)
    a.end()
    a2 = publish_now(hub, "a", PROVIDER_RTMP)
    assert seen == [a, b, a2]


def test_terminate_all_ends_every_stream_through_its_publisher() -> None:
    hub = StreamHub()
    calls: list[str] = []
    for name in ("a", "b", "c"):
        publish_now(hub, name, PROVIDER_RTMP, on_terminate=functools.partial(calls.append, name))
    everything = hub.all()
    hub.terminate_all()
    assert sorted(calls) == ["a", "b", "c"]
    assert all(s.ended and s.end_reason == "Stopped by server" for s in everything)
    assert len(hub) == 0


# -- readers and lifecycle ----------------------------------------------------------------------


def test_readers_get_units_in_order_and_the_end_once() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    sink1, sink2 = RecordingReader(), RecordingReader()
    sink1.attach(stream)
    sink2.attach(stream)
    units = [video(0, keyframe=True), audio(5), video(33), audio(26)]
    for unit in units:
        stream.push(unit)
    for sink in (sink1, sink2):
        assert sink.units == units
        assert sink.reader is not None and sink.reader.delivered == 4
    stream.end()
    stream.end("again")
    assert sink1.ended == [stream]
    assert sink2.ended == [stream]
    assert stream.end_reason == "Stopped by publisher stop"
    # After the end nothing is delivered or accepted; a late reader is told the end at once.
    stream.push(video(66, keyframe=True))
    late = RecordingReader()
    late.attach(stream)
    stream.end()
    assert len(sink1.units) == 4
    assert late.units == [] and late.ended == [stream]
    assert late.reader is not None and late.reader.closed
    assert stream.video_units == 2
    assert stream.readers == []


def test_closing_a_reader_stops_delivery() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    sink = RecordingReader()
    reader = sink.attach(stream)
    stream.push(audio(0))
    reader.close()
    reader.close()  # closing twice is harmless
    stream.push(audio(1))
    stream.end()
    assert [u.dts for u in sink.units] == [0]
    assert sink.ended == []


def test_a_reader_may_close_itself_while_receiving() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    other = RecordingReader()
    once: list[MediaUnit] = []

    def one_shot(unit: MediaUnit) -> None:
        once.append(unit)
        reader.close()

    reader = stream.add_reader(one_shot)
    other.attach(stream)
    stream.push(audio(0))
    stream.push(audio(1))
    assert len(once) == 1
    assert len(other.units) == 2


def test_a_raising_reader_is_detached_and_counted_and_the_others_carry_on(
    log_events: list[LogEvent],
) -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    before, after = RecordingReader(), RecordingReader()
    before.attach(stream)
    errors: list[Reader] = []

    def broken(unit: MediaUnit) -> None:
        raise ValueError("a player's bug")

    bad = stream.add_reader(broken, on_error=errors.append)
    after.attach(stream)
    units = [video(0, keyframe=True), video(33), audio(40)]
    for unit in units:
        stream.push(unit)  # nothing escapes into the publisher
    assert before.units == units and after.units == units
    assert (bad.errors, bad.delivered, bad.closed) == (1, 0, True)
    assert errors == [bad] and stream.readers == [before.reader, after.reader]
    failures = [e for e in log_events if "log_failure" in e]
    assert len(failures) == 1  # logged once, with its traceback
    assert "a reader failed" in failures[0]["log_format"]


def test_a_slow_reader_skips_to_the_next_keyframe_and_counts_what_it_skipped() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    sink = RecordingReader()
    overflows: list[Reader] = []
    reader = sink.attach(stream, max_queue=3, on_overflow=overflows.append)
    stream.push(video(0, keyframe=True))
    reader.pause()
    for dts in (33, 66, 99):
        stream.push(video(dts))  # queued
    assert reader.queued == 3 and sink.units == [video(0, keyframe=True)]
    stream.push(video(133))  # the fourth overflows: the queue and this unit go
    stream.push(video(166))  # and video up to the next keyframe
    stream.push(audio(170))
    assert overflows == [reader] and reader.queued == 0
    assert reader.discarded == 6
    key = video(200, keyframe=True)
    stream.push(key)  # the flow starts again here, queued while paused
    stream.push(video(233))
    reader.resume()
    assert sink.units == [video(0, keyframe=True), key, video(233)]
    assert (reader.delivered, reader.discarded) == (3, 6)


def test_a_paused_audio_only_reader_starts_again_at_once_after_an_overflow() -> None:
    stream = Stream("radio", PROVIDER_RTMP)
    sink = RecordingReader()
    reader = sink.attach(stream, max_queue=2)
    reader.pause()
    for dts in range(4):
        stream.push(audio(dts))
    assert reader.discarded == 2 and reader.queued == 2  # no keyframe to wait for
    reader.resume()
    assert [u.dts for u in sink.units] == [2, 3]


def test_replay_gop_starts_a_reader_at_the_cached_keyframe() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    stream.push(video(0))  # before any keyframe: not cached
    gop = [video(33, keyframe=True), video(66), audio(70), video(99)]
    for unit in gop:
        stream.push(unit)
    player, live = RecordingReader(), RecordingReader()
    player.attach(stream, replay_gop=True, kind="video")
    live.attach(stream, from_keyframe=True)  # no replay: waits for the next keyframe
    stream.push(video(133))
    stream.push(audio(140))
    assert player.units == [gop[0], gop[1], gop[3], video(133)]
    assert live.units == [audio(140)]
    stream.push(video(166, keyframe=True))
    assert live.units[-1] == video(166, keyframe=True)


def test_a_paused_reader_gets_what_it_holds_before_the_end() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    sink = RecordingReader()
    reader = sink.attach(stream)
    reader.pause()
    stream.push(video(0, keyframe=True))
    stream.push(video(33))
    stream.end()
    assert [u.dts for u in sink.units] == [0, 33] and sink.ended == [stream]


def test_on_end_callbacks() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    calls: list[tuple[str, Stream]] = []
    stream.on_end(lambda s: calls.append(("before", s)))
    stream.end("gone")
    assert calls == [("before", stream)]
    stream.on_end(lambda s: calls.append(("after", s)))  # already ended: called at once
    assert calls == [("before", stream), ("after", stream)]
    stream.end()
    assert len(calls) == 2


def test_counters_and_flags() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    assert not stream.has_video and not stream.has_audio
    stream.push(audio(0, b"xyz"))
    assert stream.has_audio and not stream.has_video
    stream.push(video(0, True, b"12345"))
    assert stream.has_video
    assert (stream.audio_units, stream.video_units, stream.bytes_in) == (1, 1, 8)
    stream.set_audio_codec("AAC")
    assert stream.audio_codec == "AAC"


def test_set_video_params_marks_has_video() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    stream.set_video_params(H264)
    assert stream.has_video and stream.video is H264


# -- GOP cache ----------------------------------------------------------------------------------


def test_nothing_is_cached_before_the_first_keyframe() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    stream.set_video_params(H264)
    stream.push(video(0))
    stream.push(video(33))
    stream.push(audio(40))
    assert stream.gop is None


def test_keyframe_starts_a_gop_and_others_are_appended() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    stream.set_video_params(H264)
    k1 = video(0, True, b"K" * 10)
    p1 = video(33, False, b"p" * 3)
    stream.push(k1)
    gop1 = stream.gop
    assert gop1 is not None
    assert gop1.units == [k1] and gop1.size == 10 and gop1.params is H264
    stream.push(p1)
    stream.push(audio(35, b"audio is not cached"))
    assert stream.gop is gop1
    assert gop1.units == [k1, p1] and gop1.size == 13

    new_params = VideoParams(codec="H264", width=640, height=480, extradata=b"other")
    stream.set_video_params(new_params)
    k2 = video(66, True, b"K2")
    stream.push(k2)
    gop2 = stream.gop
    assert gop2 is not None and gop2 is not gop1
    assert gop2.seq > gop1.seq
    assert gop2.units == [k2] and gop2.size == 2
    assert gop2.params is new_params
    # The old GOP object is left as it was (a pool thread may still be reading it).
    assert gop1.units == [k1, p1] and gop1.params is H264


def test_unit_of_another_codec_replaces_the_params() -> None:
    stream = Stream("cam1", PROVIDER_WEBRTC)
    stream.push(video(0, True, codec="VP8"))
    assert stream.video == VideoParams(codec="VP8")
    assert stream.gop is not None and stream.gop.params.codec == "VP8"


def test_gop_overflow_by_unit_count_drops_the_cache_until_the_next_keyframe() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    stream.set_video_params(H264)
    stream.push(video(0, True))
    for i in range(1, MAX_GOP_UNITS):
        stream.push(video(i))
    gop = stream.gop
    assert gop is not None and len(gop.units) == MAX_GOP_UNITS
    stream.push(video(MAX_GOP_UNITS))
    assert stream.gop is None
    stream.push(video(MAX_GOP_UNITS + 1))
    assert stream.gop is None
    key = video(MAX_GOP_UNITS + 2, True)
    stream.push(key)
    assert stream.gop is not None and stream.gop.units == [key]


def test_gop_overflow_by_bytes_drops_the_cache_until_the_next_keyframe() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    stream.set_video_params(H264)
    stream.push(video(0, True, bytes(MAX_GOP_BYTES - 10)))
    stream.push(video(1, False, bytes(10)))  # exactly at the limit: still cached
    gop = stream.gop
    assert gop is not None and gop.size == MAX_GOP_BYTES and len(gop.units) == 2
    stream.push(video(2, False, b"x"))
    assert stream.gop is None
    stream.push(video(3, False, b"x"))
    assert stream.gop is None
    stream.push(video(4, True, b"k"))
    assert stream.gop is not None and stream.gop.size == 1


def test_end_drops_the_gop() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    stream.push(video(0, True))
    stream.end()
    assert stream.gop is None


# -- REST JSON and terminate --------------------------------------------------------------------


def test_to_json_fields() -> None:
    hub = StreamHub(clock_ms=lambda: 1640836780816)
    stream = publish_now(hub, "cam1", PROVIDER_RTMP)
    fresh = stream_json(stream)
    assert fresh == fresh | {
        "mediaSessionId": stream.media_session_id,
        "name": "cam1",
        "published": True,
        "hasVideo": False,
        "hasAudio": False,
        "status": "PUBLISHING",
        "videoCodec": None,
        "audioCodec": None,
        "width": 0,
        "height": 0,
        "createDate": 1640836780816,
        "mediaProvider": "Flash",
    }
    stream.set_video_params(H264)
    stream.set_audio_codec("AAC")
    body = stream_json(stream)
    expected = {
        "mediaSessionId": stream.media_session_id,
        "name": "cam1",
        "published": True,
        "hasVideo": True,
        "hasAudio": True,
        "status": "PUBLISHING",
        "videoCodec": "H264",
        "audioCodec": "AAC",
        "width": 320,
        "height": 240,
        "createDate": 1640836780816,
        "mediaProvider": "Flash",
    }
    assert {k: body[k] for k in expected} == expected
    stream.end()
    ended = stream_json(stream)
    assert ended["published"] is False
    assert ended["status"] == "UNPUBLISHED"


def test_terminate_calls_on_terminate_then_ends() -> None:
    hub = StreamHub()
    seen: list[tuple[bool, Stream | None]] = []
    holder: list[Stream] = []

    def on_terminate() -> None:
        # The publisher is asked to leave while the stream is still live and registered.
        seen.append((holder[0].ended, hub.get("cam1")))

    stream = publish_now(hub, "cam1", PROVIDER_RTMP, on_terminate=on_terminate)
    holder.append(stream)
    sink = RecordingReader()
    sink.attach(stream)
    stream.terminate()
    assert seen == [(False, stream)]
    assert stream.ended
    assert stream.end_reason == "Stopped by server"
    assert sink.ended == [stream]
    assert hub.get("cam1") is None


def test_terminate_without_callback_still_ends() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    stream.terminate()
    assert stream.ended and stream.end_reason == "Stopped by server"


def test_rejected_units_are_counted_and_logged_once(log_events: list[LogEvent]) -> None:
    stream = publish_now(StreamHub(), "cam", "Flash")
    stream.reject_unit("truncated avcC")
    stream.reject_unit("bad NAL")
    assert stream.rejected_units == 2
    warnings = [e for e in log_events if "dropping malformed media" in e.get("log_format", "")]
    assert [e["reason"] for e in warnings] == ["truncated avcC"]


def test_terminate_lets_the_end_reason_through() -> None:
    hub = StreamHub()
    called: list[int] = []
    stream = publish_now(hub, "cam1", PROVIDER_RTMP, on_terminate=lambda: called.append(1))
    stream.terminate("Failed by RTP activity")
    stream.terminate()  # already ended: the publisher is not asked twice, the reason stays
    assert called == [1]
    assert stream.end_reason == "Failed by RTP activity"


# -- max_picture_pixels at the hub (finding 2) -------------------------------------------------


def test_video_over_max_picture_pixels_is_refused_and_logged_once(
    log_events: list[LogEvent],
) -> None:
    hub = StreamHub(max_picture_pixels=1920 * 1080)
    stream = publish_now(hub, "big", PROVIDER_RTMP)
    assert stream.max_picture_pixels == 1920 * 1080
    stream.set_video_params(H264)
    stream.push(video(0, keyframe=True))
    assert stream.gop is not None and stream.video_refused is None
    huge = VideoParams(codec="H264", width=16000, height=16000, extradata=b"huge")
    stream.set_video_params(huge)
    assert stream.gop is None, "a GOP of the refused video must not stay cached"
    assert stream.video_refused is not None and "16000x16000" in stream.video_refused
    stream.push(video(33, keyframe=True))
    stream.push(video(66))
    stream.set_video_params(huge)
    stream.push(video(99, keyframe=True))
    assert stream.gop is None
    assert stream.has_video and stream.video_units == 4
    refusals = [e for e in log_events if "video refused" in e.get("log_format", "")]
    assert len(refusals) == 1 and refusals[0]["stream_name"] == "big"
    # Parameters within the limit again (the encoder changed its resolution): cached again.
    stream.set_video_params(VideoParams(codec="H264", width=1920, height=1080))
    stream.push(video(132, keyframe=True))
    assert stream.gop is not None and stream.video_refused is None


def test_picture_at_the_limit_is_accepted() -> None:
    stream = Stream("cam1", PROVIDER_RTMP, max_picture_pixels=320 * 240)
    stream.set_video_params(H264)
    stream.push(video(0, keyframe=True))
    assert stream.gop is not None and stream.video_refused is None


def test_remove_on_end_forgets_a_callback() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    calls: list[str] = []

    def player(s: Stream) -> None:
        calls.append("player")

    stream.on_end(player)
    stream.on_end(lambda s: calls.append("other"))
    stream.remove_on_end(player)
    stream.remove_on_end(player)  # absent: harmless
    stream.end()
    assert calls == ["other"]


def test_end_lets_go_of_front_end_and_consumers_and_keeps_extras_as_values() -> None:
    """An ended stream must hold nothing that refers back to its publisher or consumers (such
    cycles kept whole decoders alive until a full garbage collection)."""
    counter = {"n": 1}
    stream = publish_now(StreamHub(), "cam1", PROVIDER_RTMP, on_terminate=lambda: None)
    stream.keyframe_requester = lambda: None
    views = StreamViews()
    views.watch(stream)
    views.describe("autoSnapshot", lambda s: dict(counter))
    RecordingReader().attach(stream)
    stream.on_end(lambda s: None)
    stream.end()
    counter["n"] = 2
    assert stream._on_terminate is None and stream.keyframe_requester is None
    assert stream._readers == [] and stream._on_end == []
    # The REST view keeps the extra fields as they were at the end.
    assert views.stream_json(stream)["autoSnapshot"] == {"n": 1}


def test_an_audio_reader_and_a_camera_without_video_start_again_after_an_overflow() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    stream.push(video(0, keyframe=True))
    sound = RecordingReader()
    reader = sound.attach(stream, kind="audio", max_queue=2)
    reader.pause()
    for dts in range(1, 5):
        stream.push(audio(dts))  # the third overflows: no video keyframe is for this reader
    reader.resume()
    assert [u.dts for u in sound.units] == [3, 4]
    every = RecordingReader()
    reader = every.attach(stream, max_queue=1)
    stream.clear_video()  # the camera's video dropped: no keyframe is coming
    reader.pause()
    for dts in range(10, 13):
        stream.push(audio(dts))
    reader.resume()
    assert [u.dts for u in every.units] == [12]  # a queue of one keeps the newest


def test_a_reader_closed_by_another_during_a_push_takes_nothing_more() -> None:
    stream = Stream("cam1", PROVIDER_RTMP)
    victim = RecordingReader()

    def closer(unit: MediaUnit) -> None:
        assert victim.reader is not None
        victim.reader.close()

    stream.add_reader(closer)
    victim.attach(stream)
    victim.reader.pause()  # type: ignore[union-attr]
    stream.push(audio(0))
    assert victim.units == [] and victim.reader is not None and victim.reader.queued == 0


def test_a_failing_end_callback_or_observer_stops_neither_the_others_nor_the_publish(
    log_events: list[LogEvent],
) -> None:
    hub = StreamHub()
    seen: list[str] = []

    def broken(stream: Stream) -> None:
        raise RuntimeError("a consumer's bug")

    hub.add_observer(broken)
    hub.add_observer(lambda s: seen.append(f"published {s.name}"))
    stream = publish_now(hub, "cam1", PROVIDER_RTMP)
    stream.on_end(broken)
    stream.on_end(lambda s: seen.append("ended"))
    stream.end()
    assert seen == ["published cam1", "ended"] and hub.get("cam1") is None
    assert len([e for e in log_events if "log_failure" in e]) == 2
