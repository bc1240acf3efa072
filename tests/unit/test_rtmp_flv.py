"""Tests for FLV audio/video tag headers (legacy and Enhanced RTMP) and aggregate messages."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.media_fixtures import flv_tag
from wcs.rtmp.flv import (
    AudioTag,
    FLVError,
    VideoTag,
    audio_codec_name,
    parse_audio,
    parse_video,
    split_aggregate,
    video_codec_name,
)

AVCC = bytes.fromhex("01640028ffe1001b67640028acd940780227e5c0")
NALUS = bytes.fromhex("0000000565888400ff")


# -- video ------------------------------------------------------------------------------------


def test_legacy_avc_sequence_header() -> None:
    tag = parse_video(b"\x17\x00\x00\x00\x00" + AVCC)
    assert tag == VideoTag(1, 7, 0, 0, AVCC)
    assert tag.is_keyframe
    assert tag.is_sequence_header
    assert tag.fourcc is None
    assert video_codec_name(tag) == "H264"


def test_legacy_avc_frames_with_signed_composition_time() -> None:
    assert parse_video(b"\x27\x01\x00\x00\x50" + NALUS) == VideoTag(2, 7, 1, 80, NALUS)
    tag = parse_video(b"\x27\x01\xff\xff\xd8" + NALUS)
    assert tag.composition_time == -40
    assert not tag.is_keyframe
    assert not tag.is_sequence_header
    assert parse_video(b"\x17\x02\x00\x00\x00") == VideoTag(1, 7, 2, 0, b"")


def test_legacy_hevc_codec_12() -> None:
    tag = parse_video(b"\x1c\x01\x00\x00\x21" + NALUS)
    assert tag == VideoTag(1, 12, 1, 0x21, NALUS)
    assert video_codec_name(tag) == "HEVC"


def test_legacy_command_frame_has_no_packet_header() -> None:
    assert parse_video(b"\x57\x01") == VideoTag(5, 7, None, 0, b"\x01")


@pytest.mark.parametrize(
    ("first", "name"),
    [(0x22, "H263"), (0x13, "SCREEN"), (0x14, "VP6"), (0x25, "VP6A"), (0x16, "SCREEN2")],
)
def test_legacy_codecs_without_packet_type(first: int, name: str) -> None:
    tag = parse_video(bytes((first,)) + b"frame")
    assert tag == VideoTag(first >> 4, first & 0x0F, None, 0, b"frame")
    assert video_codec_name(tag) == name


def test_unknown_legacy_codec_name() -> None:
    assert video_codec_name(parse_video(b"\x1f")) == "unknown(15)"


def test_enhanced_avc1_maps_onto_the_avc_fields() -> None:
    start = parse_video(b"\x90avc1" + AVCC)
    assert start == VideoTag(1, 0, 0, 0, AVCC, "avc1", 0)
    assert start.is_sequence_header
    frames = parse_video(b"\x91avc1\xff\xff\xd8" + NALUS)
    assert frames == VideoTag(1, 0, 1, -40, NALUS, "avc1", 1)
    frames_x = parse_video(b"\xa3avc1" + NALUS)
    assert frames_x == VideoTag(2, 0, 1, 0, NALUS, "avc1", 3)
    assert parse_video(b"\x92avc1") == VideoTag(1, 0, 2, 0, b"", "avc1", 2)
    assert video_codec_name(frames) == "H264"


def test_enhanced_hevc_has_composition_time_and_av1_does_not() -> None:
    hevc = parse_video(b"\x91hvc1\x00\x00\x10" + NALUS)
    assert (hevc.composition_time, hevc.data, video_codec_name(hevc)) == (16, NALUS, "HEVC")
    av1 = parse_video(b"\x91av01\x12\x00\x0a")
    assert av1 == VideoTag(1, 0, 1, 0, b"\x12\x00\x0a", "av01", 1)
    assert video_codec_name(av1) == "AV1"
    assert video_codec_name(parse_video(b"\x90vp09")) == "VP9"
    assert video_codec_name(parse_video(b"\x90abcd")) == "unknown('abcd')"


def test_enhanced_packet_types_without_avc_meaning() -> None:
    metadata = parse_video(b"\x94avc1\x02\x00\x0acolorInfo")
    assert (metadata.avc_packet_type, metadata.packet_type, metadata.fourcc) == (None, 4, "avc1")
    assert metadata.data == b"\x02\x00\x0acolorInfo"
    # A command frame carries a command byte instead of a FourCC.
    assert parse_video(b"\xd1\x01") == VideoTag(5, 0, None, 0, b"\x01", None, 1)
    # Enhanced RTMP v2 multitrack is not parsed: passed on for the caller to skip.
    multitrack = parse_video(b"\x96\x00avc1...")
    assert (multitrack.packet_type, multitrack.fourcc, multitrack.avc_packet_type) == (
        6,
        None,
        None,
    )
    assert video_codec_name(multitrack) == "unknown(enhanced)"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty video message"),
        (b"\x17", "truncated AVC video header: 1 of 5 bytes"),
        (b"\x27\x01\x00\x00", "truncated AVC video header: 4 of 5 bytes"),
        (b"\x1c\x00", "truncated AVC video header: 2 of 5 bytes"),
        (b"\x90avc", "truncated enhanced video header: 4 of 5 bytes"),
        (b"\x91avc1\x00", "truncated enhanced video header: 6 of 8 bytes"),
    ],
)
def test_truncated_video(payload: bytes, message: str) -> None:
    with pytest.raises(FLVError, match=f"^{message}$"):
        parse_video(payload)


# -- audio ------------------------------------------------------------------------------------


def test_aac() -> None:
    config = parse_audio(b"\xaf\x00\x12\x10")
    assert config == AudioTag(10, 44100, 16, 2, 0, b"\x12\x10")
    assert config.is_sequence_header
    raw = parse_audio(b"\xaf\x01\x21\x00")
    assert (raw.aac_packet_type, raw.data, raw.is_sequence_header) == (1, b"\x21\x00", False)
    assert audio_codec_name(raw) == "AAC"


@pytest.mark.parametrize(
    ("first", "expected", "name"),
    [
        (0x2E, (2, 44100, 16, 1), "MP3"),
        (0x72, (7, 5512, 16, 1), "PCMA"),
        (0x82, (8, 5512, 16, 1), "PCMU"),
        (0xB6, (11, 11025, 16, 1), "Speex"),
        (0x6C, (6, 44100, 8, 1), "Nellymoser"),
        (0x3F, (3, 44100, 16, 2), "PCM"),
        (0xE9, (14, 22050, 8, 2), "MP3"),
        (0xD0, (13, 5512, 8, 1), "unknown(13)"),
    ],
)
def test_legacy_audio_flags(first: int, expected: tuple[int, int, int, int], name: str) -> None:
    tag = parse_audio(bytes((first,)) + b"data")
    assert (tag.sound_format, tag.sound_rate, tag.sound_size, tag.channels) == expected
    assert (tag.aac_packet_type, tag.data, tag.fourcc) == (None, b"data", None)
    assert audio_codec_name(tag) == name


def test_enhanced_audio() -> None:
    opus = parse_audio(b"\x90Opus" + b"OpusHead")
    assert opus == AudioTag(9, 0, 0, 0, 0, b"OpusHead", "Opus", 0)
    assert audio_codec_name(opus) == "Opus"
    aac = parse_audio(b"\x91mp4a\x21\x00")
    assert (aac.aac_packet_type, aac.data, audio_codec_name(aac)) == (1, b"\x21\x00", "AAC")
    multichannel = parse_audio(b"\x94fLaC\x00")
    assert (multichannel.aac_packet_type, multichannel.packet_type) == (None, 4)
    assert audio_codec_name(multichannel) == "FLAC"
    assert audio_codec_name(parse_audio(b"\x90wxyz")) == "unknown('wxyz')"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty audio message"),
        (b"\xaf", "truncated AAC audio header: 1 of 2 bytes"),
        (b"\x90Opu", "truncated enhanced audio header: 4 of 5 bytes"),
    ],
)
def test_truncated_audio(payload: bytes, message: str) -> None:
    with pytest.raises(FLVError, match=f"^{message}$"):
        parse_audio(payload)


# -- aggregate --------------------------------------------------------------------------------


def test_split_aggregate() -> None:
    payload = (
        flv_tag(9, 1000, b"\x17\x01\x00\x00\x00" + NALUS)
        + flv_tag(8, 1010, b"\xaf\x01\x21")
        + flv_tag(9, 0x12345678, b"")  # uses the timestamp extension byte
    )
    assert split_aggregate(payload) == [
        (9, 1000, b"\x17\x01\x00\x00\x00" + NALUS),
        (8, 1010, b"\xaf\x01\x21"),
        (9, 0x12345678, b""),
    ]


def test_split_aggregate_masks_flag_bits_and_tolerates_missing_last_back_pointer() -> None:
    payload = flv_tag(0x20 | 8, 5, b"a") + flv_tag(9, 6, b"b", back_pointer=False)
    assert split_aggregate(payload) == [(8, 5, b"a"), (9, 6, b"b")]
    assert split_aggregate(b"") == []


def test_split_aggregate_tag_limit() -> None:
    # An empty tag is 15 bytes: a 6 MiB aggregate could hold 400,000 of them.
    payload = flv_tag(8, 0, b"") * 5
    assert len(split_aggregate(payload, max_tags=5)) == 5
    with pytest.raises(FLVError, match=r"^aggregate message of more than 4 tags$"):
        split_aggregate(payload, max_tags=4)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (flv_tag(9, 0, b"abc")[:10], "truncated FLV tag header at offset 0"),
        (flv_tag(9, 0, b"abc")[:13], "truncated FLV tag body at offset 11: need 3, have 2"),
        (flv_tag(9, 0, b"abc")[:16], "truncated FLV previous tag size at offset 14"),
        (flv_tag(9, 0, b"abc") + b"\x09\x00", "truncated FLV tag header at offset 18"),
    ],
)
def test_truncated_aggregate(payload: bytes, message: str) -> None:
    with pytest.raises(FLVError, match=f"^{message}$"):
        split_aggregate(payload)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([8, 9, 18]), st.integers(0, 2**32 - 1), st.binary(max_size=40))
    )
)
def test_aggregate_round_trip(tags: list[tuple[int, int, bytes]]) -> None:
    payload = b"".join(flv_tag(t, ts, data) for t, ts, data in tags)
    assert split_aggregate(payload) == tags


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_arbitrary_bytes_only_raise_flv_error(data: bytes) -> None:
    for parse in (parse_video, parse_audio, split_aggregate):
        with contextlib.suppress(FLVError):
            parse(data)
