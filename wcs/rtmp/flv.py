"""FLV tag headers inside RTMP audio/video messages (legacy and Enhanced RTMP), and aggregates.

Pure parsers: they split headers from codec data and never look inside the codec data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "AudioTag",
    "FLVError",
    "VideoTag",
    "audio_codec_name",
    "parse_audio",
    "parse_video",
    "split_aggregate",
    "video_codec_name",
]

# Legacy video codec ids.
CODEC_JPEG: Final = 1
CODEC_H263: Final = 2
CODEC_SCREEN: Final = 3
CODEC_VP6: Final = 4
CODEC_VP6A: Final = 5
CODEC_SCREEN2: Final = 6
CODEC_AVC: Final = 7
CODEC_HEVC: Final = 12  # not in Adobe's spec; Chinese CDNs and some muxers use it
CODEC_AV1_LEGACY: Final = 13  # likewise, for AV1

FRAME_KEY: Final = 1
FRAME_INTER: Final = 2
FRAME_DISPOSABLE: Final = 3
FRAME_GENERATED_KEY: Final = 4
FRAME_COMMAND: Final = 5

# AVC packet types (legacy) and what enhanced packet types are mapped onto.
AVC_SEQUENCE_HEADER: Final = 0
AVC_NALU: Final = 1
AVC_END_OF_SEQUENCE: Final = 2

# Enhanced RTMP video packet types.
PACKET_SEQUENCE_START: Final = 0
PACKET_CODED_FRAMES: Final = 1
PACKET_SEQUENCE_END: Final = 2
PACKET_CODED_FRAMES_X: Final = 3
PACKET_METADATA: Final = 4
PACKET_MPEG2TS_SEQUENCE_START: Final = 5
PACKET_MULTITRACK: Final = 6
PACKET_MODEX: Final = 7

SOUND_AAC: Final = 10
SOUND_EX_HEADER: Final = 9  # Enhanced RTMP v2: a FourCC follows
AAC_SEQUENCE_HEADER: Final = 0
AAC_RAW: Final = 1

AUDIO_TAG: Final = 8
VIDEO_TAG: Final = 9
SCRIPT_TAG: Final = 18

_VIDEO_CODECS: Final = {
    CODEC_JPEG: "JPEG",
    CODEC_H263: "H263",
    CODEC_SCREEN: "SCREEN",
    CODEC_VP6: "VP6",
    CODEC_VP6A: "VP6A",
    CODEC_SCREEN2: "SCREEN2",
    CODEC_AVC: "H264",
    CODEC_HEVC: "HEVC",
    CODEC_AV1_LEGACY: "AV1",
}
_VIDEO_FOURCCS: Final = {
    "avc1": "H264",
    "hvc1": "HEVC",
    "av01": "AV1",
    "vp09": "VP9",
    "vp08": "VP8",
}
# Enhanced packet type -> the legacy AVCPacketType with the same meaning.
_ENHANCED_TO_AVC: Final = {
    PACKET_SEQUENCE_START: AVC_SEQUENCE_HEADER,
    PACKET_CODED_FRAMES: AVC_NALU,
    PACKET_CODED_FRAMES_X: AVC_NALU,
    PACKET_SEQUENCE_END: AVC_END_OF_SEQUENCE,
}
# Only these FourCCs carry a composition time in CodedFrames (Enhanced RTMP spec).
_CTS_FOURCCS: Final = frozenset({"avc1", "hvc1"})

_AUDIO_CODECS: Final = {
    0: "PCM",
    1: "ADPCM",
    2: "MP3",
    3: "PCM",
    4: "Nellymoser",
    5: "Nellymoser",
    6: "Nellymoser",
    7: "PCMA",
    8: "PCMU",
    10: "AAC",
    11: "Speex",
    14: "MP3",
    15: "DeviceSpecific",
}
_AUDIO_FOURCCS: Final = {
    "mp4a": "AAC",
    "Opus": "Opus",
    "fLaC": "FLAC",
    "ac-3": "AC3",
    "ec-3": "EAC3",
    ".mp3": "MP3",
}
_SOUND_RATES: Final = (5512, 11025, 22050, 44100)


class FLVError(ValueError):
    """A malformed audio, video or aggregate payload."""


@dataclass(frozen=True)
class VideoTag:
    """A parsed video message header.

    ``avc_packet_type`` is 0 (decoder configuration), 1 (frames) or 2 (end of sequence) for
    legacy AVC/HEVC and for Enhanced RTMP tags of any FourCC, None otherwise. Enhanced tags have
    ``codec_id`` 0, their FourCC and their raw ``packet_type``.
    """

    frame_type: int
    codec_id: int
    avc_packet_type: int | None
    composition_time: int
    data: bytes
    fourcc: str | None = None
    packet_type: int | None = None

    @property
    def is_keyframe(self) -> bool:
        return self.frame_type == FRAME_KEY

    @property
    def is_sequence_header(self) -> bool:
        return self.avc_packet_type == AVC_SEQUENCE_HEADER


@dataclass(frozen=True)
class AudioTag:
    """A parsed audio message header.

    ``sound_rate`` is in Hz, ``sound_size`` in bits and ``channels`` a count (1 or 2), decoded
    from the legacy flags (for AAC these are fixed and the real values are in the AAC config);
    they are 0 for Enhanced RTMP tags, which carry a FourCC and a raw ``packet_type`` instead.
    """

    sound_format: int
    sound_rate: int
    sound_size: int
    channels: int
    aac_packet_type: int | None
    data: bytes
    fourcc: str | None = None
    packet_type: int | None = None

    @property
    def is_sequence_header(self) -> bool:
        return self.aac_packet_type == AAC_SEQUENCE_HEADER


def _signed24(raw: bytes) -> int:
    value = int.from_bytes(raw, "big")
    return value - 0x1000000 if value & 0x800000 else value


def _fourcc(raw: bytes) -> str:
    # FourCCs are ASCII; latin-1 never fails, so an odd one still reaches the "unknown" path.
    return raw.decode("latin-1")


def parse_video(payload: bytes) -> VideoTag:
    """Parse the header of an RTMP video message (type 9)."""
    if not payload:
        raise FLVError("empty video message")
    first = payload[0]
    if first & 0x80:
        return _parse_enhanced_video(payload)
    frame_type = first >> 4
    codec_id = first & 0x0F
    # A command frame carries one command byte instead of a packet header.
    if codec_id in (CODEC_AVC, CODEC_HEVC) and frame_type != FRAME_COMMAND:
        if len(payload) < 5:
            raise FLVError(f"truncated AVC video header: {len(payload)} of 5 bytes")
        return VideoTag(frame_type, codec_id, payload[1], _signed24(payload[2:5]), payload[5:])
    return VideoTag(frame_type, codec_id, None, 0, payload[1:])


def _parse_enhanced_video(payload: bytes) -> VideoTag:
    frame_type = (payload[0] >> 4) & 0x07
    packet_type = payload[0] & 0x0F
    if frame_type == FRAME_COMMAND and packet_type != PACKET_METADATA:
        return VideoTag(frame_type, 0, None, 0, payload[1:], None, packet_type)
    if packet_type in (PACKET_MULTITRACK, PACKET_MODEX):
        # Enhanced RTMP v2 multitrack/ModEx layouts are not parsed; the caller can skip them.
        return VideoTag(frame_type, 0, None, 0, payload[1:], None, packet_type)
    if len(payload) < 5:
        raise FLVError(f"truncated enhanced video header: {len(payload)} of 5 bytes")
    fourcc = _fourcc(payload[1:5])
    avc_packet_type = _ENHANCED_TO_AVC.get(packet_type)
    if packet_type == PACKET_CODED_FRAMES and fourcc in _CTS_FOURCCS:
        if len(payload) < 8:
            raise FLVError(f"truncated enhanced video header: {len(payload)} of 8 bytes")
        cts = _signed24(payload[5:8])
        return VideoTag(frame_type, 0, avc_packet_type, cts, payload[8:], fourcc, packet_type)
    return VideoTag(frame_type, 0, avc_packet_type, 0, payload[5:], fourcc, packet_type)


def video_codec_name(tag: VideoTag) -> str:
    """A short codec name ("H264", "HEVC", "AV1", ...) or "unknown(...)"."""
    if tag.fourcc is not None:
        return _VIDEO_FOURCCS.get(tag.fourcc, f"unknown({tag.fourcc!r})")
    if tag.packet_type is not None:
        return "unknown(enhanced)"
    return _VIDEO_CODECS.get(tag.codec_id, f"unknown({tag.codec_id})")


def parse_audio(payload: bytes) -> AudioTag:
    """Parse the header of an RTMP audio message (type 8)."""
    if not payload:
        raise FLVError("empty audio message")
    first = payload[0]
    sound_format = first >> 4
    if sound_format == SOUND_EX_HEADER:
        packet_type = first & 0x0F
        if len(payload) < 5:
            raise FLVError(f"truncated enhanced audio header: {len(payload)} of 5 bytes")
        # Sequence start and coded frames mean what AAC's packet types 0 and 1 mean.
        mapped = packet_type if packet_type in (AAC_SEQUENCE_HEADER, AAC_RAW) else None
        fourcc = _fourcc(payload[1:5])
        return AudioTag(sound_format, 0, 0, 0, mapped, payload[5:], fourcc, packet_type)
    rate = _SOUND_RATES[(first >> 2) & 0x03]
    bits = 16 if first & 0x02 else 8
    channels = 2 if first & 0x01 else 1
    if sound_format == SOUND_AAC:
        if len(payload) < 2:
            raise FLVError("truncated AAC audio header: 1 of 2 bytes")
        return AudioTag(sound_format, rate, bits, channels, payload[1], payload[2:])
    return AudioTag(sound_format, rate, bits, channels, None, payload[1:])


def audio_codec_name(tag: AudioTag) -> str:
    """A short codec name ("AAC", "MP3", "PCMA", ...) or "unknown(...)"."""
    if tag.fourcc is not None:
        return _AUDIO_FOURCCS.get(tag.fourcc, f"unknown({tag.fourcc!r})")
    return _AUDIO_CODECS.get(tag.sound_format, f"unknown({tag.sound_format})")


def split_aggregate(payload: bytes, *, max_tags: int | None = None) -> list[tuple[int, int, bytes]]:
    """Split an aggregate message (type 22) into (type id, timestamp as in the tag, data).

    More than ``max_tags`` tags is an FLVError (each costs its caller a dispatch).
    """
    tags: list[tuple[int, int, bytes]] = []
    pos = 0
    size = len(payload)
    while pos < size:
        if max_tags is not None and len(tags) >= max_tags:
            raise FLVError(f"aggregate message of more than {max_tags} tags")
        if size - pos < 11:
            raise FLVError(f"truncated FLV tag header at offset {pos}")
        # The top three bits of the type byte are reserved/filter flags.
        type_id = payload[pos] & 0x1F
        length = int.from_bytes(payload[pos + 1 : pos + 4], "big")
        timestamp = int.from_bytes(payload[pos + 4 : pos + 7], "big") | (payload[pos + 7] << 24)
        start = pos + 11
        end = start + length
        if end > size:
            have = size - start
            raise FLVError(f"truncated FLV tag body at offset {start}: need {length}, have {have}")
        tags.append((type_id, timestamp, payload[start:end]))
        # The back pointer's value is not checked (encoders get it wrong); some omit the last one.
        if end == size:
            break
        if size - end < 4:
            raise FLVError(f"truncated FLV previous tag size at offset {end}")
        pos = end + 4
    return tags
