"""Tests for wcs.media.h264: framing, avcC, RBSP escapes, SPS parsing (also of real x264
streams) and VideoParams from parameter sets."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass, field
from fractions import Fraction

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wcs.media import h264
from wcs.media.h264 import (
    NAL_AUD,
    NAL_FU_A,
    NAL_IDR,
    NAL_PPS,
    NAL_SEI,
    NAL_SLICE,
    NAL_SPS,
    NAL_STAP_A,
    AvcConfig,
    H264Error,
    SpsInfo,
    build_avcc,
    codec_string,
    contains_idr,
    escape_rbsp,
    h264_video_params,
    h264_video_params_of,
    nal_type,
    parse_avcc,
    parse_sps,
    split_annexb,
    split_avcc,
    to_annexb,
    unescape_rbsp,
)
from wcs.media.units import VideoParams

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed")


# ---------------------------------------------------------------------------
# A bit writer, to build SPS NAL units field by field
# ---------------------------------------------------------------------------


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        assert 0 <= value < (1 << n) or n == 0
        self.bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))

    def flag(self, value: bool) -> None:
        self.u(1, int(value))

    def ue(self, value: int) -> None:
        code = value + 1
        length = code.bit_length()
        self.u(length - 1, 0)
        self.u(length, code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        """With rbsp_trailing_bits: a stop bit, then zeros to the byte boundary."""
        bits = [*self.bits, 1]
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


@dataclass
class Hrd:
    cpb: list[tuple[int, int, bool]] = field(default_factory=lambda: [(1000, 2000, False)])

    def write(self, w: BitWriter) -> None:
        w.ue(len(self.cpb) - 1)
        w.u(4, 3)
        w.u(4, 5)
        for rate, size, cbr in self.cpb:
            w.ue(rate)
            w.ue(size)
            w.flag(cbr)
        for _ in range(4):
            w.u(5, 23)


@dataclass
class Vui:
    aspect_ratio_idc: int | None = None  # 255: Extended_SAR follows
    overscan: bool | None = None
    signal_type: bool = False
    colour_description: bool = False
    chroma_loc: bool = False
    timing: bool = False
    nal_hrd: Hrd | None = None
    vcl_hrd: Hrd | None = None
    pic_struct: bool = False
    reorder: int | None = None

    def write(self, w: BitWriter) -> None:
        w.flag(self.aspect_ratio_idc is not None)
        if self.aspect_ratio_idc is not None:
            w.u(8, self.aspect_ratio_idc)
            if self.aspect_ratio_idc == 255:
                w.u(16, 7)
                w.u(16, 5)
        w.flag(self.overscan is not None)
        if self.overscan is not None:
            w.flag(self.overscan)
        w.flag(self.signal_type)
        if self.signal_type:
            w.u(3, 5)
            w.flag(True)
            w.flag(self.colour_description)
            if self.colour_description:
                w.u(24, 0x010101)
        w.flag(self.chroma_loc)
        if self.chroma_loc:
            w.ue(1)
            w.ue(2)
        w.flag(self.timing)
        if self.timing:
            w.u(32, 1)
            w.u(32, 60)
            w.flag(True)
        for hrd in (self.nal_hrd, self.vcl_hrd):
            w.flag(hrd is not None)
            if hrd is not None:
                hrd.write(w)
        if self.nal_hrd or self.vcl_hrd:
            w.flag(False)
        w.flag(self.pic_struct)
        w.flag(self.reorder is not None)
        if self.reorder is not None:
            w.flag(True)
            w.ue(2)
            w.ue(1)
            w.ue(16)
            w.ue(16)
            w.ue(self.reorder)
            w.ue(self.reorder + 1)


@dataclass
class SpsFields:
    profile_idc: int = 100
    constraint_flags: int = 0
    level_idc: int = 31
    sps_id: int = 0
    chroma_format_idc: int = 1
    separate_colour_plane: bool = False
    bit_depth_luma: int = 8
    bit_depth_chroma: int = 8
    # None: no seq_scaling_matrix; otherwise one entry per list: None (absent) or its deltas.
    scaling_lists: list[list[int] | None] | None = None
    log2_max_frame_num_minus4: int = 0
    poc_type: int = 0
    poc_cycle: list[int] = field(default_factory=list)
    max_num_ref_frames: int = 1
    width_mbs: int = 20
    height_map_units: int = 15
    frame_mbs_only: bool = True
    crop: tuple[int, int, int, int] | None = None
    vui: Vui | None = None

    def nal(self) -> bytes:
        return b"\x67" + escape_rbsp(self.writer().rbsp())

    def size_fields_bits(self) -> int:
        """Bits up to and including vui_parameters_present_flag."""
        return len(SpsFields(**{**self.__dict__, "vui": None}).writer().bits)

    def writer(self) -> BitWriter:
        w = BitWriter()
        w.u(8, self.profile_idc)
        w.u(8, self.constraint_flags)
        w.u(8, self.level_idc)
        w.ue(self.sps_id)
        if self.profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
            w.ue(self.chroma_format_idc)
            if self.chroma_format_idc == 3:
                w.flag(self.separate_colour_plane)
            w.ue(self.bit_depth_luma - 8)
            w.ue(self.bit_depth_chroma - 8)
            w.flag(False)
            w.flag(self.scaling_lists is not None)
            if self.scaling_lists is not None:
                for deltas in self.scaling_lists:
                    w.flag(deltas is not None)
                    for delta in deltas or []:
                        w.se(delta)
        w.ue(self.log2_max_frame_num_minus4)
        w.ue(self.poc_type)
        if self.poc_type == 0:
            w.ue(2)
        elif self.poc_type == 1:
            w.flag(False)
            w.se(-3)
            w.se(4)
            w.ue(len(self.poc_cycle))
            for offset in self.poc_cycle:
                w.se(offset)
        w.ue(self.max_num_ref_frames)
        w.flag(False)
        w.ue(self.width_mbs - 1)
        w.ue(self.height_map_units - 1)
        w.flag(self.frame_mbs_only)
        if not self.frame_mbs_only:
            w.flag(True)
        w.flag(True)
        w.flag(self.crop is not None)
        if self.crop is not None:
            for value in self.crop:
                w.ue(value)
        w.flag(self.vui is not None)
        if self.vui is not None:
            self.vui.write(w)
        return w


def flat_list(size: int) -> list[int]:
    """Deltas for a scaling list of all 16s: +8 from the initial 8, then zeros."""
    return [8] + [0] * (size - 1)


def early_end_list() -> list[int]:
    """A delta that makes nextScale 0: the rest of the list repeats and is not coded."""
    return [-8]


# ---------------------------------------------------------------------------
# NAL types and framing
# ---------------------------------------------------------------------------


def test_nal_type_constants_and_header() -> None:
    assert (NAL_SLICE, NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD, NAL_STAP_A, NAL_FU_A) == (
        1,
        5,
        6,
        7,
        8,
        9,
        24,
        28,
    )
    assert nal_type(b"\x67\x42") == NAL_SPS
    assert nal_type(b"\x65") == NAL_IDR
    assert nal_type(b"\x7c\x85") == NAL_FU_A  # nal_ref_idc bits are masked off
    with pytest.raises(H264Error, match="empty NAL unit has no type"):
        nal_type(b"")


def test_split_annexb_start_codes_and_padding() -> None:
    data = (
        b"\x00\x00\x00\x00\x01\x67\x42"  # leading zeros before a 4-byte start code
        + b"\x00\x00\x01\x68\xce"  # 3-byte start code
        + b"\x00\x00\x00\x01"  # empty NAL: dropped
        + b"\x00\x00\x00\x01\x65\x88\x00\x00"  # trailing_zero_8bits stripped
    )
    assert split_annexb(data) == [b"\x67\x42", b"\x68\xce", b"\x65\x88"]


def test_split_annexb_drops_bytes_before_first_start_code() -> None:
    assert split_annexb(b"\xff\xee\x00\x00\x01\x09\xf0") == [b"\x09\xf0"]
    assert split_annexb(b"\x67\x42\x00") == []
    assert split_annexb(b"") == []


def test_to_annexb_uses_four_byte_start_codes() -> None:
    assert to_annexb([b"\x67\x42", b"\x68"]) == b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x68"
    assert to_annexb([]) == b""


# A valid NAL: a header byte (forbidden bit 0, non-zero type) and an escaped payload whose
# RBSP ends in a stop bit, so the last byte is never zero.
valid_nal = st.builds(
    lambda header, payload, last: bytes([header]) + escape_rbsp(payload + bytes([last])),
    st.integers(0x01, 0x7F),
    # Mostly small bytes, so that runs needing emulation prevention are common.
    st.lists(st.sampled_from([0, 0, 0, 1, 2, 3, 0x42, 0xFF]), max_size=64).map(bytes),
    st.integers(1, 255),
)


@given(st.lists(valid_nal, max_size=8))
def test_annexb_round_trip(nals: list[bytes]) -> None:
    assert split_annexb(to_annexb(nals)) == nals


@given(st.lists(valid_nal, max_size=8), st.sampled_from([1, 2, 4]))
def test_avcc_framing_round_trip(nals: list[bytes], length_size: int) -> None:
    assert all(len(nal) < 256 for nal in nals)  # so that every length fits one byte
    data = b"".join(len(n).to_bytes(length_size, "big") + n for n in nals)
    assert split_avcc(data, length_size) == nals


def test_split_avcc_drops_empty_and_reports_overrun() -> None:
    assert split_avcc(b"\x00\x00\x00\x00\x00\x00\x00\x02\x65\x88") == [b"\x65\x88"]
    assert split_avcc(b"\x00\x01\x09\x00\x02\x67\x42", 2) == [b"\x09", b"\x67\x42"]
    with pytest.raises(H264Error, match="NAL length 9 at offset 3 exceeds remaining 2 bytes"):
        split_avcc(b"\x00\x01\x09\x00\x09\x67\x42", 2)
    with pytest.raises(H264Error, match="NAL length 4294967295 at offset 0 exceeds remaining 1"):
        split_avcc(b"\xff\xff\xff\xff\x65")


def test_split_avcc_nal_count_limit() -> None:
    # Zero-length NAL units count: a frame of zeros is one loop turn per byte otherwise.
    frame = b"\x00" * 3 + b"\x02\x65\x88"
    assert split_avcc(frame, 1, max_nals=4) == [b"\x65\x88"]
    with pytest.raises(H264Error, match=r"^more than 3 NAL units in one access unit$"):
        split_avcc(frame, 1, max_nals=3)
    with pytest.raises(H264Error, match=r"^more than 1000 NAL units in one access unit$"):
        split_avcc(bytes(4 * 1001), max_nals=1000)


def test_split_avcc_truncated_length_prefix() -> None:
    with pytest.raises(H264Error, match="truncated NAL length at offset 5: need 4 bytes, 2 remain"):
        split_avcc(b"\x00\x00\x00\x01\x65\x00\x00")


def test_split_avcc_rejects_bad_length_size() -> None:
    with pytest.raises(H264Error, match="NAL length size must be 1, 2 or 4 bytes, not 3"):
        split_avcc(b"\x00\x00\x01\x65", 3)


def test_contains_idr() -> None:
    assert contains_idr([b"\x09\xf0", b"\x67\x42", b"\x65\x88"])
    assert not contains_idr([b"\x41\x9a", b"\x06\x05", b""])
    assert not contains_idr([])


# ---------------------------------------------------------------------------
# Emulation prevention
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "rbsp"),
    [
        (b"", b""),
        (b"\x42\xc0\x1e", b"\x42\xc0\x1e"),
        (b"\x00\x00\x03\x01", b"\x00\x00\x01"),
        (b"\x00\x00\x03\x00\x00\x03", b"\x00\x00\x00\x00"),
        (b"\x10\x00\x00\x03\x03\x00\x00\x03\x02", b"\x10\x00\x00\x03\x00\x00\x02"),
        (b"\x00\x03\x00", b"\x00\x03\x00"),  # only 00 00 03 is an escape
        (b"\x00\x00\x03", b"\x00\x00"),  # cabac_zero_word at the end
    ],
)
def test_unescape_rbsp(escaped: bytes, rbsp: bytes) -> None:
    assert unescape_rbsp(escaped) == rbsp
    assert escape_rbsp(rbsp) == escaped


# An RBSP ends in its stop bit, maybe followed by cabac_zero_words (00 00).
rbsp_data = st.builds(
    lambda data, zero_words: data + b"\x80" + b"\x00\x00" * zero_words,
    st.binary(max_size=200),
    st.integers(0, 3),
)


@given(rbsp_data)
def test_escape_round_trip_and_no_start_code(rbsp: bytes) -> None:
    escaped = escape_rbsp(rbsp)
    assert unescape_rbsp(escaped) == rbsp
    for prefix in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"):
        assert prefix not in escaped
    assert not escaped.endswith(b"\x00")


# ---------------------------------------------------------------------------
# avcC
# ---------------------------------------------------------------------------

SPS_BASELINE = bytes.fromhex("6742c00dd90141fb0110000003001000000303c0f142a480")
PPS_BASELINE = bytes.fromhex("68cb83cb20")


def test_build_and_parse_avcc() -> None:
    record = build_avcc([SPS_BASELINE], [PPS_BASELINE])
    assert (
        record == bytes.fromhex("0142c00dffe10018") + SPS_BASELINE + b"\x01\x00\x05" + PPS_BASELINE
    )
    assert parse_avcc(record) == AvcConfig(
        profile=0x42,
        compatibility=0xC0,
        level=0x0D,
        length_size=4,
        sps=(SPS_BASELINE,),
        pps=(PPS_BASELINE,),
    )


@given(
    st.lists(st.binary(min_size=4, max_size=40), min_size=1, max_size=3),
    st.lists(st.binary(min_size=1, max_size=20), max_size=3),
    st.sampled_from([1, 2, 4]),
)
def test_avcc_round_trip(sps: list[bytes], pps: list[bytes], length_size: int) -> None:
    config = parse_avcc(build_avcc(sps, pps, length_size))
    assert config.sps == tuple(sps)
    assert config.pps == tuple(pps)
    assert config.length_size == length_size
    assert (config.profile, config.compatibility, config.level) == tuple(sps[0][1:4])


def test_parse_avcc_ignores_high_profile_trailer() -> None:
    record = build_avcc([b"\x67\x64\x00\x1f"], [b"\x68\xeb"]) + b"\xfd\xf8\xf8\x00"
    assert parse_avcc(record).pps == (b"\x68\xeb",)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"\x01\x42\xc0", "avcC record truncated: 3 bytes, need at least 7"),
        (b"\x02\x42\xc0\x0d\xff\xe1\x00\x00", "unsupported avcC configurationVersion 2"),
        (b"\x01\x42\xc0\x0d\xfe\xe0\x00", r"invalid avcC lengthSizeMinusOne 2"),
        (b"\x01\x42\xc0\x0d\xff\xe1\x00", "avcC record truncated in SPS 0 length at offset 6"),
        (
            b"\x01\x42\xc0\x0d\xff\xe1\x00\x05\x67\x42",
            "avcC SPS 0 length 5 at offset 6 exceeds remaining 2 bytes",
        ),
        (
            b"\x01\x42\xc0\x0d\xff\xe1\x00\x01\x67",
            "avcC record truncated before numOfPictureParameterSets at offset 9",
        ),
        (
            b"\x01\x42\xc0\x0d\xff\xe1\x00\x01\x67\x02\x00\x01\x68",
            "avcC record truncated in PPS 1 length at offset 13",
        ),
    ],
)
def test_parse_avcc_errors(record: bytes, message: str) -> None:
    with pytest.raises(H264Error, match=message):
        parse_avcc(record)


def test_build_avcc_errors() -> None:
    with pytest.raises(H264Error, match="avcC needs at least one SPS"):
        build_avcc([], [PPS_BASELINE])
    with pytest.raises(H264Error, match="SPS too short for avcC: 2 bytes"):
        build_avcc([b"\x67\x42"], [])
    with pytest.raises(H264Error, match="avcC holds at most 31 SPS, got 32"):
        build_avcc([SPS_BASELINE] * 32, [])
    with pytest.raises(H264Error, match="PPS of 65536 bytes does not fit avcC's 16-bit length"):
        build_avcc([SPS_BASELINE], [b"\x68" * 65536])
    with pytest.raises(H264Error, match="NAL length size must be 1, 2 or 4 bytes, not 3"):
        build_avcc([SPS_BASELINE], [], 3)


# ---------------------------------------------------------------------------
# SPS: synthetic, field by field
# ---------------------------------------------------------------------------


def test_parse_sps_known_baseline() -> None:
    assert parse_sps(SPS_BASELINE) == SpsInfo(
        profile_idc=66,
        constraint_flags=0xC0,
        level_idc=13,
        sps_id=0,
        chroma_format_idc=1,
        bit_depth_luma=8,
        width=320,
        height=240,
        frame_mbs_only=True,
        max_num_reorder_frames=0,
    )
    assert codec_string(parse_sps(SPS_BASELINE)) == "avc1.42c00d"


def test_parse_sps_minimal_synthetic() -> None:
    info = parse_sps(SpsFields(sps_id=31, level_idc=40, constraint_flags=0x0C).nal())
    assert (info.width, info.height, info.sps_id) == (320, 240, 31)
    assert info.max_num_reorder_frames is None  # no VUI: the caller decides
    assert codec_string(info) == "avc1.640c28"


def test_parse_sps_poc_type_1_with_cycle() -> None:
    fields = SpsFields(poc_type=1, poc_cycle=[1, -2, 3] * 85, width_mbs=45, height_map_units=36)
    info = parse_sps(fields.nal())
    assert (info.width, info.height) == (720, 576)


def test_parse_sps_poc_cycle_over_255_is_rejected() -> None:
    with pytest.raises(
        H264Error, match=r"SPS num_ref_frames_in_pic_order_cnt_cycle 256 out of range \(max 255\)"
    ):
        parse_sps(SpsFields(poc_type=1, poc_cycle=[1] * 256).nal())


def test_parse_sps_poc_type_2() -> None:
    info = parse_sps(SpsFields(profile_idc=66, poc_type=2, width_mbs=11, height_map_units=9).nal())
    assert (info.width, info.height, info.chroma_format_idc) == (176, 144, 1)


def test_parse_sps_scaling_lists_420() -> None:
    lists: list[list[int] | None] = [
        flat_list(16),
        None,
        early_end_list(),
        [1, -1] * 8,
        None,
        None,
        flat_list(64),
        early_end_list(),
    ]
    info = parse_sps(SpsFields(scaling_lists=lists, crop=(0, 0, 0, 4), height_map_units=68).nal())
    assert (info.width, info.height) == (320, 1080)


def test_parse_sps_scaling_lists_444_has_twelve() -> None:
    lists: list[list[int] | None] = [*[flat_list(16)] * 6, *[flat_list(64)] * 6]
    fields = SpsFields(profile_idc=244, chroma_format_idc=3, scaling_lists=lists, crop=(0, 1, 0, 3))
    info = parse_sps(fields.nal())
    # 4:4:4 crops in single pixels.
    assert (info.width, info.height, info.chroma_format_idc) == (319, 237, 3)


def test_parse_sps_separate_colour_planes_crop_in_pixels() -> None:
    fields = SpsFields(
        profile_idc=244,
        chroma_format_idc=3,
        separate_colour_plane=True,
        frame_mbs_only=False,
        height_map_units=8,
        crop=(1, 2, 1, 1),
    )
    info = parse_sps(fields.nal())
    # ChromaArrayType 0: one pixel across, two lines (a field pair) down.
    assert (info.width, info.height, info.frame_mbs_only) == (317, 252, False)


@pytest.mark.parametrize(
    ("chroma", "frame_mbs_only", "expected"),
    [
        (0, True, (318, 238)),
        (1, True, (316, 236)),
        (2, True, (316, 238)),
        (3, True, (318, 238)),
        (0, False, (318, 476)),
        (1, False, (316, 472)),
        (2, False, (316, 476)),
        (3, False, (318, 476)),
    ],
)
def test_parse_sps_crop_units(chroma: int, frame_mbs_only: bool, expected: tuple[int, int]) -> None:
    fields = SpsFields(chroma_format_idc=chroma, frame_mbs_only=frame_mbs_only, crop=(1, 1, 1, 1))
    info = parse_sps(fields.nal())
    assert (info.width, info.height) == expected
    assert info.chroma_format_idc == chroma


def test_parse_sps_bit_depth() -> None:
    info = parse_sps(SpsFields(profile_idc=110, bit_depth_luma=10, bit_depth_chroma=10).nal())
    assert info.bit_depth_luma == 10
    with pytest.raises(H264Error, match=r"SPS bit_depth_luma_minus8 7 out of range \(max 6\)"):
        parse_sps(SpsFields(bit_depth_luma=15).nal())


def test_parse_sps_main_profile_ignores_high_fields() -> None:
    # Profile 77 codes no chroma_format_idc: it is 4:2:0 whatever the writer was told.
    info = parse_sps(SpsFields(profile_idc=77, chroma_format_idc=3, crop=(0, 0, 0, 8)).nal())
    assert (info.chroma_format_idc, info.height) == (1, 224)


FULL_VUI = Vui(
    aspect_ratio_idc=255,
    overscan=True,
    signal_type=True,
    colour_description=True,
    chroma_loc=True,
    timing=True,
    nal_hrd=Hrd(cpb=[(1000, 2000, False), (3000, 6000, True)]),
    vcl_hrd=Hrd(),
    pic_struct=True,
    reorder=3,
)


@pytest.mark.parametrize(
    ("vui", "reorder"),
    [
        (FULL_VUI, 3),
        (Vui(reorder=0), 0),
        (Vui(aspect_ratio_idc=1, reorder=4), 4),
        (Vui(signal_type=True, reorder=1), 1),
        (Vui(timing=True, vcl_hrd=Hrd(), reorder=2), 2),
        (Vui(timing=True), None),  # no bitstream_restriction
        (Vui(reorder=17), None),  # more than a DPB can hold
    ],
)
def test_parse_sps_vui_reorder(vui: Vui, reorder: int | None) -> None:
    assert parse_sps(SpsFields(vui=vui).nal()).max_num_reorder_frames == reorder


def test_parse_sps_truncated_vui_gives_none() -> None:
    fields = SpsFields(vui=FULL_VUI)
    rbsp = fields.writer().rbsp()
    assert parse_sps(fields.nal()).max_num_reorder_frames == 3
    first_vui_byte = fields.size_fields_bits() // 8 + 1
    # Up to len - 3 the cut always lands before max_num_reorder_frames is complete.
    for end in range(first_vui_byte, len(rbsp) - 2):
        info = parse_sps(b"\x67" + escape_rbsp(rbsp[:end]))
        assert (info.width, info.height, info.max_num_reorder_frames) == (320, 240, None)


def test_parse_sps_truncated_before_size_fields() -> None:
    fields = SpsFields(crop=(0, 0, 0, 8), vui=Vui(reorder=1))
    rbsp = fields.writer().rbsp()
    # Every cut that loses a bit of the header, size or cropping fields is an error.
    last = (fields.size_fields_bits() + 7) // 8
    for end in range(last):
        with pytest.raises(H264Error, match="SPS truncated before the end of its picture size"):
            parse_sps(b"\x67" + escape_rbsp(rbsp[:end]))
    assert parse_sps(b"\x67" + escape_rbsp(rbsp[:last])).height == 224


def test_parse_sps_rejects_wrong_nal_and_garbage() -> None:
    with pytest.raises(H264Error, match="not an SPS: NAL unit type 8"):
        parse_sps(PPS_BASELINE)
    with pytest.raises(H264Error, match="empty NAL unit is not an SPS"):
        parse_sps(b"")
    # sps_id as 32 zero bits then a one: more leading zeros than a 32-bit ue(v) allows.
    with pytest.raises(H264Error, match="exp-Golomb code with more than 31 leading zeros"):
        parse_sps(b"\x67\x64\x00\x1f" + escape_rbsp(b"\x00\x00\x00\x00\x80"))
    with pytest.raises(H264Error, match=r"SPS seq_parameter_set_id 32 out of range \(max 31\)"):
        parse_sps(SpsFields(sps_id=32).nal())
    with pytest.raises(H264Error, match=r"SPS chroma_format_idc 4 out of range \(max 3\)"):
        parse_sps(SpsFields(chroma_format_idc=4).nal())
    with pytest.raises(H264Error, match=r"SPS pic_order_cnt_type 3 out of range \(max 2\)"):
        parse_sps(SpsFields(poc_type=3).nal())


def test_parse_sps_rejects_absurd_sizes() -> None:
    with pytest.raises(H264Error, match="SPS picture size 16400x240 exceeds 16384 pixels"):
        parse_sps(SpsFields(width_mbs=1025).nal())
    with pytest.raises(H264Error, match="SPS picture size 320x16896 exceeds 16384 pixels"):
        parse_sps(SpsFields(height_map_units=528, frame_mbs_only=False).nal())
    with pytest.raises(H264Error, match=r"SPS cropping \(0, 0, 60, 60\) leaves no picture"):
        parse_sps(SpsFields(crop=(0, 0, 60, 60)).nal())


@given(
    profile=st.sampled_from([66, 77, 88, 100, 110, 122, 244, 44]),
    chroma=st.integers(0, 3),
    frame_mbs_only=st.booleans(),
    width_mbs=st.integers(1, 120),
    height_map_units=st.integers(1, 68),
    crop=st.tuples(*[st.integers(0, 7)] * 4),
    poc_type=st.integers(0, 2),
    scaling=st.booleans(),
    reorder=st.none() | st.integers(0, 16),
    sps_id=st.integers(0, 31),
)
def test_parse_sps_synthetic_property(
    profile: int,
    chroma: int,
    frame_mbs_only: bool,
    width_mbs: int,
    height_map_units: int,
    crop: tuple[int, int, int, int],
    poc_type: int,
    scaling: bool,
    reorder: int | None,
    sps_id: int,
) -> None:
    high = profile in (100, 110, 122, 244, 44)
    effective_chroma = chroma if high else 1
    lists: list[list[int] | None] = [
        flat_list(16 if i < 6 else 64) if i % 2 else None
        for i in range(12 if effective_chroma == 3 else 8)
    ]
    fields = SpsFields(
        profile_idc=profile,
        chroma_format_idc=chroma,
        frame_mbs_only=frame_mbs_only,
        width_mbs=width_mbs,
        height_map_units=height_map_units,
        crop=crop,
        poc_type=poc_type,
        poc_cycle=[5, -5],
        scaling_lists=lists if scaling and high else None,
        vui=Vui(timing=True, reorder=reorder),
        sps_id=sps_id,
    )
    sub_w, sub_h = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[effective_chroma]
    field_factor = 1 if frame_mbs_only else 2
    width = width_mbs * 16 - (crop[0] + crop[1]) * sub_w
    height = height_map_units * 16 * field_factor - (crop[2] + crop[3]) * sub_h * field_factor
    if width <= 0 or height <= 0:
        with pytest.raises(H264Error, match="leaves no picture"):
            parse_sps(fields.nal())
        return
    info = parse_sps(fields.nal())
    assert info == SpsInfo(
        profile_idc=profile,
        constraint_flags=0,
        level_idc=31,
        sps_id=sps_id,
        chroma_format_idc=effective_chroma,
        bit_depth_luma=8,
        width=width,
        height=height,
        frame_mbs_only=frame_mbs_only,
        max_num_reorder_frames=reorder,
    )


# ---------------------------------------------------------------------------
# Real streams from ffmpeg/x264, checked against the request and against PyAV
# ---------------------------------------------------------------------------


def encode(size: str, args: list[str], source: str = "testsrc2", fmt: str = "h264") -> bytes:
    assert FFMPEG is not None
    cmd = [
        FFMPEG,
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        f"{source}=size={size}:rate=30",
        "-frames:v",
        "3",
        "-c:v",
        "libx264",
        *args,
    ]
    if fmt == "mp4":
        cmd += ["-f", "mp4", "-movflags", "frag_keyframe+empty_moov", "-"]
    else:
        cmd += ["-f", "h264", "-"]
    return subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout


def pyav_size_and_sar(data: bytes) -> tuple[int, int, Fraction]:
    with av.open(io.BytesIO(data), mode="r", format="h264") as container:
        context = container.streams.video[0].codec_context
        return context.width, context.height, Fraction(context.sample_aspect_ratio or 0)


INTERLACED = ["-flags", "+ildct+ilme", "-x264-params", "interlaced=1"]


@needs_ffmpeg
@pytest.mark.parametrize(
    ("size", "args", "source", "codec", "chroma", "frame_mbs_only", "reorder"),
    [
        ("1280x720", ["-profile:v", "high", "-level", "3.1"], "testsrc2", "avc1.64001f", 1, 1, 2),
        ("1920x1080", ["-profile:v", "main", "-level", "4.0"], "testsrc2", "avc1.4d4028", 1, 1, 2),
        ("176x144", ["-profile:v", "baseline", "-level", "1.1"], "testsrc2", "avc1.42c00b", 1, 1,
         0),
        ("642x362", ["-profile:v", "high", "-level", "3.0", "-bf", "1"], "testsrc2",
         "avc1.64001e", 1, 1, 1),
        ("321x241", ["-pix_fmt", "yuv444p", "-profile:v", "high444", "-level", "1.3"], "testsrc",
         "avc1.f4000d", 3, 1, 2),
        ("322x241", ["-pix_fmt", "yuv422p", "-profile:v", "high422", "-level", "1.3"], "testsrc",
         "avc1.7a000d", 2, 1, 2),
        ("321x241", ["-pix_fmt", "gray", "-profile:v", "high", "-level", "1.3"], "testsrc",
         "avc1.64000d", 0, 1, 2),
        ("320x240", ["-pix_fmt", "yuv420p10le", "-profile:v", "high10", "-level", "1.3"],
         "testsrc2", "avc1.6e000d", 1, 1, 2),
        ("720x576", [*INTERLACED, "-level", "3.1"], "testsrc2", "avc1.64001f", 1, 0, 2),
        ("720x484", [*INTERLACED, "-pix_fmt", "yuv420p", "-level", "3.0"], "testsrc",
         "avc1.64001e", 1, 0, 2),
        ("722x486", [*INTERLACED, "-pix_fmt", "yuv422p", "-level", "3.1"], "testsrc",
         "avc1.7a001f", 2, 0, 2),
        # VUI with Extended_SAR, signal type, chroma location, timing and NAL HRD before the
        # bitstream restriction. (x264 puts custom scaling matrices in the PPS, not the SPS.)
        ("320x240", ["-vf", "setsar=7/5", "-level", "2.0", "-x264-params",
                     "nal-hrd=vbr:vbv-maxrate=1000:vbv-bufsize=2000:colorprim=bt709:"
                     "transfer=bt709:colormatrix=bt709:chromaloc=1"],
         "testsrc2", "avc1.640014", 1, 1, 2),
    ],
)  # fmt: skip
def test_parse_sps_of_x264_streams(
    size: str,
    args: list[str],
    source: str,
    codec: str,
    chroma: int,
    frame_mbs_only: int,
    reorder: int,
) -> None:
    data = encode(size, args, source)
    nals = split_annexb(data)
    types = [nal_type(nal) for nal in nals]
    assert types[:2] == [NAL_SPS, NAL_PPS]
    assert contains_idr(nals)
    info = parse_sps(nals[0])
    width, height = (int(v) for v in size.split("x"))
    assert (info.width, info.height) == (width, height)
    pyav_width, pyav_height, sar = pyav_size_and_sar(data)
    assert (info.width, info.height) == (pyav_width, pyav_height)
    # The Extended_SAR case must really carry one, or it would not test that branch.
    assert sar == (Fraction(7, 5) if "setsar=7/5" in args else Fraction(1))
    assert codec_string(info) == codec
    assert info.chroma_format_idc == chroma
    assert info.frame_mbs_only == bool(frame_mbs_only)
    assert info.max_num_reorder_frames == reorder
    assert info.bit_depth_luma == (10 if "yuv420p10le" in args else 8)
    assert split_annexb(to_annexb(nals)) == nals


@needs_ffmpeg
@pytest.mark.parametrize("profile", ["baseline", "high"])
def test_avcc_from_mp4(profile: str) -> None:
    data = encode("320x240", ["-profile:v", profile], fmt="mp4")
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        extradata = bytes(stream.codec_context.extradata or b"")
        packets = [bytes(packet) for packet in container.demux(stream) if packet.size]
    config = parse_avcc(extradata)
    assert config.length_size == 4
    assert len(config.sps) == 1
    assert len(config.pps) == 1
    info = parse_sps(config.sps[0])
    assert (info.width, info.height) == (320, 240)
    assert (config.profile, config.level) == (info.profile_idc, info.level_idc)
    rebuilt = build_avcc(config.sps, config.pps)
    # ffmpeg adds the chroma/bit-depth trailer for high profiles; the rest is byte-identical.
    assert extradata == rebuilt if profile == "baseline" else extradata.startswith(rebuilt)
    assert len(extradata) > len(rebuilt) or profile == "baseline"
    units = [split_avcc(packet) for packet in packets]
    assert len(units) == 3
    assert contains_idr(units[0])
    assert not any(contains_idr(unit) for unit in units[1:])


def test_with_parameter_sets_only_adds_what_is_missing() -> None:
    sps, pps, idr = b"\x67\x42\x00\x1e", b"\x68\xce", b"\x65\x88\x84"
    extradata = h264.to_annexb([sps, pps])
    bare = h264.to_annexb([idr])
    assert h264.with_parameter_sets(bare, extradata) == extradata + bare
    full = h264.to_annexb([sps, pps, idr])
    assert h264.with_parameter_sets(full, extradata) == full
    assert h264.with_parameter_sets(bare, b"") == bare


def test_sps_larger_than_the_pixel_limit_is_refused() -> None:
    # 16000x16000 fits the format's own bound but not the default max_picture_pixels.
    huge = SpsFields(profile_idc=66, width_mbs=1000, height_map_units=1000).nal()
    with pytest.raises(H264Error, match=r"16000x16000 is larger than the limit of 35651584"):
        parse_sps(huge)
    assert parse_sps(huge, max_pixels=16000 * 16000).width == 16000
    sps = SpsFields(profile_idc=66, width_mbs=80, height_map_units=45).nal()
    assert parse_sps(sps, max_pixels=1280 * 720).width == 1280
    with pytest.raises(H264Error, match=r"1280x720 is larger than the limit of 921599 pixels"):
        parse_sps(sps, max_pixels=1280 * 720 - 1)


# ---------------------------------------------------------------------------
# VideoParams from parameter sets
# ---------------------------------------------------------------------------


def test_h264_video_params_from_one_sps_and_pps() -> None:
    assert h264_video_params(SPS_BASELINE, PPS_BASELINE) == VideoParams(
        codec="H264",
        width=320,
        height=240,
        extradata=to_annexb([SPS_BASELINE, PPS_BASELINE]),
        profile="avc1.42c00d",
    )


def test_h264_video_params_refuses_what_parse_sps_refuses() -> None:
    huge = SpsFields(profile_idc=66, width_mbs=1000, height_map_units=1000).nal()
    with pytest.raises(H264Error, match=r"16000x16000 is larger than the limit of 35651584"):
        h264_video_params(huge, PPS_BASELINE)
    assert h264_video_params(huge, PPS_BASELINE, max_pixels=16000 * 16000).width == 16000
    with pytest.raises(H264Error):
        h264_video_params(PPS_BASELINE, PPS_BASELINE)  # not an SPS


def test_h264_video_params_of_keeps_every_parameter_set() -> None:
    # An avcC record (RTMP) or a browser's access unit may carry several SPS and PPS: the
    # picture is the first SPS's, the extradata all of them, SPS first.
    sps2 = SpsFields(profile_idc=66, sps_id=1).nal()
    pps2 = b"\x68\xce\x38\x80"
    info = parse_sps(SPS_BASELINE)
    params = h264_video_params_of(info, [SPS_BASELINE, sps2], [PPS_BASELINE, pps2])
    assert params == VideoParams(
        codec="H264",
        width=320,
        height=240,
        extradata=to_annexb([SPS_BASELINE, sps2, PPS_BASELINE, pps2]),
        profile=codec_string(info),
    )
    assert h264_video_params_of(info, [SPS_BASELINE], [PPS_BASELINE]) == h264_video_params(
        SPS_BASELINE, PPS_BASELINE
    )
