"""H.264 bitstream helpers: NAL framing (Annex B, AVCC), avcC records, SPS parsing, VideoParams.

Pure functions over bytes; references are to ITU-T H.264 (2021) and ISO/IEC 14496-15.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from wcs.media.units import MAX_PICTURE_PIXELS, VideoParams

__all__ = [
    "NAL_AUD",
    "NAL_FU_A",
    "NAL_IDR",
    "NAL_PPS",
    "NAL_SEI",
    "NAL_SLICE",
    "NAL_SPS",
    "NAL_STAP_A",
    "AvcConfig",
    "H264Error",
    "SpsInfo",
    "build_avcc",
    "codec_string",
    "contains_idr",
    "escape_rbsp",
    "h264_video_params",
    "h264_video_params_of",
    "nal_type",
    "parse_avcc",
    "parse_sps",
    "split_annexb",
    "split_avcc",
    "to_annexb",
    "unescape_rbsp",
]

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_STAP_A = 24
NAL_FU_A = 28

START_CODE = b"\x00\x00\x00\x01"

# Largest coded picture side we accept (16384 px covers 8K and the level 6.2 limits) so a
# hostile SPS cannot make a consumer allocate absurd frame buffers.
MAX_DIMENSION = 16384

# profile_idc values whose SPS carries chroma_format_idc, bit depths, scaling lists (7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class H264Error(ValueError):
    """Malformed or unsupported H.264 data."""


def nal_type(nal: bytes) -> int:
    """nal_unit_type: the low five bits of the NAL header byte."""
    if not nal:
        raise H264Error("empty NAL unit has no type")
    return nal[0] & 0x1F


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream into NAL units without start codes.

    Accepts 3- and 4-byte start codes and any run of zeros before one (trailing_zero_8bits);
    bytes before the first start code are not a NAL unit and are dropped, as are empty NALs.
    """
    nals: list[bytes] = []
    pos = data.find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        nxt = data.find(b"\x00\x00\x01", start)
        end = len(data) if nxt < 0 else nxt
        # A NAL ends with rbsp_stop_one_bit, so trailing zero bytes belong to the next start
        # code (the 4-byte form) or are trailing_zero_8bits padding.
        nal = data[start:end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
        pos = nxt
    return nals


def is_disposable(annexb: bytes) -> bool:
    """Whether an Annex B access unit is a picture no other picture references: its slices'
    nal_ref_idc is 0 (H.264 7.4.1; every slice of a picture has the same). A decoder that only
    wants a later picture may skip it. A unit without a slice counts as needed.

    Only the NAL header bytes are read: emulation prevention keeps start codes out of payloads.
    """
    pos = annexb.find(b"\x00\x00\x01")
    last = len(annexb) - 3
    while 0 <= pos < last:
        header = annexb[pos + 3]
        if 1 <= header & 0x1F <= 5:  # a slice or slice data partition (5: IDR)
            return header & 0x60 == 0
        pos = annexb.find(b"\x00\x00\x01", pos + 4)
    return False


def to_annexb(nals: Iterable[bytes]) -> bytes:
    """Join NAL units into an Annex B stream with 4-byte start codes."""
    return b"".join(START_CODE + nal for nal in nals)


def with_parameter_sets(annexb: bytes, extradata: bytes) -> bytes:
    """A keyframe access unit with the Annex B SPS/PPS of `extradata` in front, unless it carries
    an SPS already (RTMP sends them out of band; RTP and WebRTC players need them in-band)."""
    if not extradata or any(nal_type(n) == NAL_SPS for n in split_annexb(annexb)):
        return annexb
    return extradata + annexb


def split_avcc(data: bytes, length_size: int = 4, *, max_nals: int | None = None) -> list[bytes]:
    """Split length-prefixed (AVCC / MP4 / FLV) NAL units; empty ones are dropped.

    More than ``max_nals`` length prefixes (empty NAL units included: each costs a loop turn, and
    a frame of zero bytes is one per byte) is an H264Error.
    """
    if length_size not in (1, 2, 4):
        raise H264Error(f"NAL length size must be 1, 2 or 4 bytes, not {length_size}")
    nals: list[bytes] = []
    pos = 0
    total = len(data)
    count = 0
    while pos < total:
        count += 1
        if max_nals is not None and count > max_nals:
            raise H264Error(f"more than {max_nals} NAL units in one access unit")
        if total - pos < length_size:
            raise H264Error(
                f"truncated NAL length at offset {pos}: need {length_size} bytes, "
                f"{total - pos} remain"
            )
        length = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if length > total - pos:
            raise H264Error(
                f"NAL length {length} at offset {pos - length_size} exceeds remaining "
                f"{total - pos} bytes"
            )
        if length:
            nals.append(data[pos : pos + length])
        pos += length
    return nals


def contains_idr(nals: Iterable[bytes]) -> bool:
    """True if any NAL unit is an IDR slice."""
    return any(nal and nal[0] & 0x1F == NAL_IDR for nal in nals)


# ---------------------------------------------------------------------------
# Emulation prevention (7.4.1)
# ---------------------------------------------------------------------------


def unescape_rbsp(nal_payload: bytes) -> bytes:
    """Remove emulation_prevention_three_byte: every 0x03 that follows 0x00 0x00."""
    if b"\x00\x00\x03" not in nal_payload:
        return bytes(nal_payload)
    out = bytearray()
    pos = 0
    while True:
        idx = nal_payload.find(b"\x00\x00\x03", pos)
        if idx < 0:
            out += nal_payload[pos:]
            return bytes(out)
        out += nal_payload[pos : idx + 2]
        # Resume after the 0x03, so "00 00 03 00 00 03" loses both escape bytes.
        pos = idx + 3


def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation prevention bytes so no start code prefix appears (inverse of unescape)."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    if zeros >= 2:
        # A payload ending in 00 00 would merge with the next start code (cabac_zero_word rule).
        out.append(3)
    return bytes(out)


# ---------------------------------------------------------------------------
# avcC: AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AvcConfig:
    """The fields of an avcC record that a consumer needs."""

    profile: int
    compatibility: int
    level: int
    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]


def parse_avcc(data: bytes) -> AvcConfig:
    """Parse an avcC record; the high-profile chroma/bit-depth trailer is ignored."""
    if len(data) < 7:
        raise H264Error(f"avcC record truncated: {len(data)} bytes, need at least 7")
    if data[0] != 1:
        raise H264Error(f"unsupported avcC configurationVersion {data[0]} (expected 1)")
    length_size = (data[4] & 0x03) + 1
    if length_size == 3:
        raise H264Error("invalid avcC lengthSizeMinusOne 2 (NAL length size 3)")
    pos = 6

    def read_sets(count: int, what: str) -> tuple[bytes, ...]:
        nonlocal pos
        sets: list[bytes] = []
        for index in range(count):
            if len(data) - pos < 2:
                raise H264Error(f"avcC record truncated in {what} {index} length at offset {pos}")
            length = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
            if length > len(data) - pos:
                raise H264Error(
                    f"avcC {what} {index} length {length} at offset {pos - 2} exceeds "
                    f"remaining {len(data) - pos} bytes"
                )
            sets.append(bytes(data[pos : pos + length]))
            pos += length
        return tuple(sets)

    sps = read_sets(data[5] & 0x1F, "SPS")
    if pos >= len(data):
        raise H264Error(f"avcC record truncated before numOfPictureParameterSets at offset {pos}")
    num_pps = data[pos]
    pos += 1
    pps = read_sets(num_pps, "PPS")
    return AvcConfig(
        profile=data[1],
        compatibility=data[2],
        level=data[3],
        length_size=length_size,
        sps=sps,
        pps=pps,
    )


def build_avcc(sps: Sequence[bytes], pps: Sequence[bytes], length_size: int = 4) -> bytes:
    """Build an avcC record; profile, compatibility and level come from the first SPS.

    No high-profile trailer is written (decoders take those values from the SPS itself).
    """
    if length_size not in (1, 2, 4):
        raise H264Error(f"NAL length size must be 1, 2 or 4 bytes, not {length_size}")
    if not sps:
        raise H264Error("avcC needs at least one SPS")
    if len(sps) > 31:
        raise H264Error(f"avcC holds at most 31 SPS, got {len(sps)}")
    if len(pps) > 255:
        raise H264Error(f"avcC holds at most 255 PPS, got {len(pps)}")
    if len(sps[0]) < 4:
        raise H264Error(f"SPS too short for avcC: {len(sps[0])} bytes")
    out = bytearray([1, sps[0][1], sps[0][2], sps[0][3], 0xFC | (length_size - 1)])
    out.append(0xE0 | len(sps))
    for nal in sps:
        out += _length16(nal, "SPS")
    out.append(len(pps))
    for nal in pps:
        out += _length16(nal, "PPS")
    return bytes(out)


def _length16(nal: bytes, what: str) -> bytes:
    if len(nal) > 0xFFFF:
        raise H264Error(f"{what} of {len(nal)} bytes does not fit avcC's 16-bit length")
    return len(nal).to_bytes(2, "big") + nal


# ---------------------------------------------------------------------------
# SPS (7.3.2.1.1) and VUI (E.1.1)
# ---------------------------------------------------------------------------


class _Truncated(H264Error):
    """The bit reader ran off the end of the RBSP."""


class _BitReader:
    """MSB-first bit reader with Exp-Golomb codes (9.1)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._end = len(data) * 8

    def u(self, n: int) -> int:
        if self._pos + n > self._end:
            raise _Truncated(f"SPS truncated: needed {n} bits at bit {self._pos} of {self._end}")
        value = 0
        data = self._data
        pos = self._pos
        for _ in range(n):
            value = (value << 1) | ((data[pos >> 3] >> (7 - (pos & 7))) & 1)
            pos += 1
        self._pos = pos
        return value

    def flag(self) -> bool:
        return self.u(1) == 1

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            # 31 leading zeros is the most a 32-bit ue(v) needs; more is garbage.
            if zeros > 31:
                raise H264Error("exp-Golomb code with more than 31 leading zeros")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _ue_max(reader: _BitReader, name: str, maximum: int) -> int:
    value = reader.ue()
    if value > maximum:
        raise H264Error(f"SPS {name} {value} out of range (max {maximum})")
    return value


@dataclass(frozen=True)
class SpsInfo:
    """What consumers need from a sequence parameter set; width/height are after cropping.

    max_num_reorder_frames is None when the VUI has no bitstream_restriction (or is cut short).
    """

    profile_idc: int
    constraint_flags: int
    level_idc: int
    sps_id: int
    chroma_format_idc: int
    bit_depth_luma: int
    width: int
    height: int
    frame_mbs_only: bool
    max_num_reorder_frames: int | None


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    last_scale = 8
    next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            delta = reader.se()
            if not -128 <= delta <= 127:
                raise H264Error(f"SPS delta_scale {delta} out of range (-128..127)")
            next_scale = (last_scale + delta + 256) % 256
        last_scale = last_scale if next_scale == 0 else next_scale


def _skip_hrd(reader: _BitReader) -> None:
    cpb_cnt = _ue_max(reader, "cpb_cnt_minus1", 31) + 1
    reader.u(4)  # bit_rate_scale
    reader.u(4)  # cpb_size_scale
    for _ in range(cpb_cnt):
        reader.ue()  # bit_rate_value_minus1
        reader.ue()  # cpb_size_value_minus1
        reader.u(1)  # cbr_flag
    reader.u(5)  # initial_cpb_removal_delay_length_minus1
    reader.u(5)  # cpb_removal_delay_length_minus1
    reader.u(5)  # dpb_output_delay_length_minus1
    reader.u(5)  # time_offset_length


def _vui_max_num_reorder_frames(reader: _BitReader) -> int | None:
    # aspect_ratio_info_present_flag, then aspect_ratio_idc; 255 is Extended_SAR.
    if reader.flag() and reader.u(8) == 255:
        reader.u(16)  # sar_width
        reader.u(16)  # sar_height
    if reader.flag():  # overscan_info_present_flag
        reader.u(1)  # overscan_appropriate_flag
    if reader.flag():  # video_signal_type_present_flag
        reader.u(3)  # video_format
        reader.u(1)  # video_full_range_flag
        if reader.flag():  # colour_description_present_flag
            reader.u(24)  # colour_primaries, transfer_characteristics, matrix_coefficients
    if reader.flag():  # chroma_loc_info_present_flag
        reader.ue()
        reader.ue()
    if reader.flag():  # timing_info_present_flag
        reader.u(32)  # num_units_in_tick
        reader.u(32)  # time_scale
        reader.u(1)  # fixed_frame_rate_flag
    nal_hrd = reader.flag()
    if nal_hrd:
        _skip_hrd(reader)
    vcl_hrd = reader.flag()
    if vcl_hrd:
        _skip_hrd(reader)
    if nal_hrd or vcl_hrd:
        reader.u(1)  # low_delay_hrd_flag
    reader.u(1)  # pic_struct_present_flag
    if not reader.flag():  # bitstream_restriction_flag
        return None
    reader.u(1)  # motion_vectors_over_pic_boundaries_flag
    reader.ue()  # max_bytes_per_pic_denom
    reader.ue()  # max_bits_per_mb_denom
    reader.ue()  # log2_max_mv_length_horizontal
    reader.ue()  # log2_max_mv_length_vertical
    reorder = reader.ue()  # max_num_reorder_frames (max_dec_frame_buffering follows)
    # The DPB holds at most 16 frames (A.3.1), so a larger value is a broken VUI, not a hint.
    return reorder if reorder <= 16 else None


def parse_sps(nal: bytes, max_pixels: int = MAX_PICTURE_PIXELS) -> SpsInfo:
    """Parse an SPS NAL unit (with its header byte, without start code).

    A picture larger than `max_pixels` (coded size, before cropping) is refused with H264Error:
    the decoder would allocate frames of that size for every reference picture.
    """
    if not nal:
        raise H264Error("empty NAL unit is not an SPS")
    if nal[0] & 0x1F != NAL_SPS:
        raise H264Error(f"not an SPS: NAL unit type {nal[0] & 0x1F}")
    reader = _BitReader(unescape_rbsp(nal[1:]))
    try:
        profile_idc = reader.u(8)
        constraint_flags = reader.u(8)
        level_idc = reader.u(8)
        sps_id = _ue_max(reader, "seq_parameter_set_id", 31)

        chroma_format_idc = 1
        separate_colour_plane = False
        bit_depth_luma = 8
        if profile_idc in _HIGH_PROFILES:
            chroma_format_idc = _ue_max(reader, "chroma_format_idc", 3)
            if chroma_format_idc == 3:
                separate_colour_plane = reader.flag()
            bit_depth_luma = _ue_max(reader, "bit_depth_luma_minus8", 6) + 8
            _ue_max(reader, "bit_depth_chroma_minus8", 6)
            reader.u(1)  # qpprime_y_zero_transform_bypass_flag
            if reader.flag():  # seq_scaling_matrix_present_flag
                for i in range(12 if chroma_format_idc == 3 else 8):
                    if reader.flag():  # seq_scaling_list_present_flag[i]
                        _skip_scaling_list(reader, 16 if i < 6 else 64)

        _ue_max(reader, "log2_max_frame_num_minus4", 12)
        poc_type = _ue_max(reader, "pic_order_cnt_type", 2)
        if poc_type == 0:
            _ue_max(reader, "log2_max_pic_order_cnt_lsb_minus4", 12)
        elif poc_type == 1:
            reader.u(1)  # delta_pic_order_always_zero_flag
            reader.se()  # offset_for_non_ref_pic
            reader.se()  # offset_for_top_to_bottom_field
            cycle = _ue_max(reader, "num_ref_frames_in_pic_order_cnt_cycle", 255)
            for _ in range(cycle):
                reader.se()  # offset_for_ref_frame[i]
        reader.ue()  # max_num_ref_frames
        reader.u(1)  # gaps_in_frame_num_value_allowed_flag
        width_mbs = reader.ue() + 1
        height_map_units = reader.ue() + 1
        frame_mbs_only = reader.flag()
        if not frame_mbs_only:
            reader.u(1)  # mb_adaptive_frame_field_flag
        reader.u(1)  # direct_8x8_inference_flag
        crop_left = crop_right = crop_top = crop_bottom = 0
        if reader.flag():  # frame_cropping_flag
            crop_left = reader.ue()
            crop_right = reader.ue()
            crop_top = reader.ue()
            crop_bottom = reader.ue()
        vui_present = reader.flag()
    except _Truncated as e:
        raise H264Error(f"SPS truncated before the end of its picture size fields: {e}") from e

    coded_width = width_mbs * 16
    # Interlaced streams count map units in field pairs (7.4.2.1.1, FrameHeightInMbs).
    coded_height = height_map_units * 16 * (1 if frame_mbs_only else 2)
    if coded_width > MAX_DIMENSION or coded_height > MAX_DIMENSION:
        raise H264Error(
            f"SPS picture size {coded_width}x{coded_height} exceeds {MAX_DIMENSION} pixels"
        )
    if coded_width * coded_height > max_pixels:
        raise H264Error(
            f"SPS picture size {coded_width}x{coded_height} is larger than the limit of "
            f"{max_pixels} pixels (max_picture_pixels)"
        )

    # Crop units (7.4.2.1.1, Table 6-1): chroma subsampling, doubled vertically for fields.
    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    if chroma_array_type == 0:
        crop_unit_x, crop_unit_y = 1, 1
    else:
        crop_unit_x = 1 if chroma_array_type == 3 else 2
        crop_unit_y = 2 if chroma_array_type == 1 else 1
    if not frame_mbs_only:
        crop_unit_y *= 2
    width = coded_width - (crop_left + crop_right) * crop_unit_x
    height = coded_height - (crop_top + crop_bottom) * crop_unit_y
    if width <= 0 or height <= 0:
        raise H264Error(
            f"SPS cropping ({crop_left}, {crop_right}, {crop_top}, {crop_bottom}) leaves no "
            f"picture of the coded {coded_width}x{coded_height}"
        )

    max_num_reorder_frames: int | None = None
    if vui_present:
        try:
            max_num_reorder_frames = _vui_max_num_reorder_frames(reader)
        except H264Error:
            # Encoders do cut or botch the VUI; the picture size is already known, and the
            # reorder depth is only a hint (callers fall back to a safe default).
            max_num_reorder_frames = None

    return SpsInfo(
        profile_idc=profile_idc,
        constraint_flags=constraint_flags,
        level_idc=level_idc,
        sps_id=sps_id,
        chroma_format_idc=chroma_format_idc,
        bit_depth_luma=bit_depth_luma,
        width=width,
        height=height,
        frame_mbs_only=frame_mbs_only,
        max_num_reorder_frames=max_num_reorder_frames,
    )


def codec_string(sps: SpsInfo) -> str:
    """RFC 6381 codec string, e.g. ``avc1.64001f`` (profile, constraint flags, level in hex)."""
    return f"avc1.{sps.profile_idc:02x}{sps.constraint_flags:02x}{sps.level_idc:02x}"


# ---------------------------------------------------------------------------
# Stream parameters
# ---------------------------------------------------------------------------


def h264_video_params(sps: bytes, pps: bytes, max_pixels: int = MAX_PICTURE_PIXELS) -> VideoParams:
    """VideoParams for Stream.set_video_params from one SPS and PPS; raises H264Error for an
    unreadable SPS or a picture larger than `max_pixels`."""
    return h264_video_params_of(parse_sps(sps, max_pixels), [sps], [pps])


def h264_video_params_of(info: SpsInfo, sps: Sequence[bytes], pps: Sequence[bytes]) -> VideoParams:
    """VideoParams from parameter sets whose (first) SPS the caller already parsed as `info`:
    the extradata is every SPS then every PPS, in Annex B."""
    return VideoParams(
        codec="H264",
        width=info.width,
        height=info.height,
        extradata=to_annexb([*sps, *pps]),
        profile=codec_string(info),
    )
