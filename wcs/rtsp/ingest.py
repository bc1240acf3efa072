"""RTP into a Stream: the tracks of one RTSP session (published or pulled) as media units.

Shared by the server (ANNOUNCE/RECORD) and the camera client (DESCRIBE/PLAY), so both feed the
registry exactly as RTMP does and the snapshot code never knows which protocol it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.logger import Logger

from wcs.media import h264
from wcs.media.h264 import H264Error
from wcs.media.units import MediaUnit, VideoParams
from wcs.rtsp.h264rtp import H264Depacketizer
from wcs.rtsp.rtp import Bye, RtcpError, RtpError, RtpPacket, parse_rtcp
from wcs.rtsp.sdp import MediaDescription, SessionDescription, h264_sprop
from wcs.streams import Stream

log = Logger(namespace="wcs.rtsp.ingest")

# Codec names as the REST stream object reports them (SDP encoding names are upper-case).
AUDIO_NAMES = {"MPEG4-GENERIC": "AAC", "MP4A-LATM": "AAC", "OPUS": "opus"}
VIDEO_NAMES = {"H265": "H265", "JPEG": "MJPEG", "VP8": "VP8", "VP9": "VP9", "AV1": "AV1"}


@dataclass
class Track:
    """One m= section being received: its kind, codec, payload type and (H.264) depacketizer."""

    index: int
    kind: str  # "video", "audio" or the m= media name of anything else
    codec: str
    payload_type: int | None
    clock_rate: int
    media: MediaDescription
    depacketizer: H264Depacketizer | None = None
    packets: int = 0
    bad_packets: int = 0
    ssrc: int | None = None
    rtcp_bye: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def describe_tracks(sdp: SessionDescription) -> list[Track]:
    """A Track per m= section, in SDP order (the index is the track number used by SETUP)."""
    tracks = []
    for index, media in enumerate(sdp.media):
        pts = media.payload_types
        pt = pts[0] if pts else None
        rtpmap = media.encoding(pt) if pt is not None else None
        encoding = rtpmap.encoding if rtpmap else "unknown"
        clock = rtpmap.clock_rate if rtpmap else 90000
        if media.media == "video":
            codec = "H264" if encoding == "H264" else VIDEO_NAMES.get(encoding, encoding)
        elif media.media == "audio":
            codec = AUDIO_NAMES.get(encoding, encoding)
        else:
            codec = encoding
        tracks.append(Track(index, media.media, codec, pt, clock, media))
    return tracks


class RtpIngest:
    """Turns the RTP and RTCP of a session's tracks into pushes on one Stream.

    H.264 video is depacketized (RFC 6184) into Annex B access units; other video codecs make
    the stream report their codec (snapshots then answer that they cannot decode it); audio is
    passed through as opaque units, so the stream reports `hasAudio` and its codec.
    """

    def __init__(self, stream: Stream, tracks: list[Track], *, reliable: bool) -> None:
        self.stream = stream
        self.tracks = tracks
        # Over TCP a gap is a real loss: don't hold packets waiting for a reordered one.
        reorder = 0 if reliable else 8
        for track in tracks:
            if track.kind == "video" and track.codec == "H264":
                sps, pps, _ = _sprop(track.media)
                track.depacketizer = H264Depacketizer(
                    clock_rate=track.clock_rate,
                    sprop_sps=sps,
                    sprop_pps=pps,
                    reorder_window=reorder,
                )
                if sps is not None and pps is not None:
                    _set_params_from_sprop(stream, sps, pps)
                elif stream.video is None:
                    stream.set_video_params(VideoParams(codec="H264"))
            elif track.kind == "video":
                stream.set_video_params(VideoParams(codec=track.codec))
            elif track.kind == "audio":
                stream.set_audio_codec(track.codec)

    def rtp(self, index: int, data: bytes) -> None:
        """One RTP packet of track `index` (anything malformed is counted and dropped)."""
        if not 0 <= index < len(self.tracks):
            return
        track = self.tracks[index]
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            track.bad_packets += 1
            return
        if track.payload_type is not None and packet.pt != track.payload_type:
            track.bad_packets += 1  # e.g. a stray RTCP or another sender's packet on the port
            return
        track.packets += 1
        track.ssrc = packet.ssrc
        if track.depacketizer is not None:
            self._h264(track, track.depacketizer, packet)
        elif track.kind == "audio":
            self.stream.push(
                MediaUnit("audio", track.codec, packet.timestamp, packet.timestamp, True, b"")
            )

    def _h264(self, track: Track, dep: H264Depacketizer, packet: RtpPacket) -> None:
        for au in dep.push(packet):
            if au.params_changed:
                try:
                    self.stream.set_video_params(au.video_params())
                except H264Error as err:
                    log.warn(
                        "stream {stream_name}: unusable SPS/PPS ({error})",
                        stream_name=self.stream.name,
                        error=err,
                    )
                    continue
            self.stream.push(au.media_unit())

    def rtcp(self, index: int, data: bytes) -> bool:
        """One RTCP compound packet; returns True when it says the sender is leaving (BYE)."""
        if not 0 <= index < len(self.tracks):
            return False
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            return False
        bye = any(isinstance(p, Bye) for p in packets)
        if bye:
            self.tracks[index].rtcp_bye = True
        return bye

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for track in self.tracks:
            entry: dict[str, object] = {
                "codec": track.codec,
                "packets": track.packets,
                "badPackets": track.bad_packets,
            }
            if track.depacketizer is not None:
                entry.update(track.depacketizer.stats())
            out[f"{track.kind}{track.index}"] = entry
        return out


def _sprop(media: MediaDescription) -> tuple[bytes | None, bytes | None, str | None]:
    pt = media.payload_types[0] if media.payload_types else None
    fmtp = media.fmtp.get(pt, {}) if pt is not None else {}
    try:
        sps, pps, profile = h264_sprop(fmtp)
    except ValueError:
        return None, None, None
    return sps, (pps[0] if pps else None), profile


def _set_params_from_sprop(stream: Stream, sps: bytes, pps: bytes) -> None:
    # Width and height known before the first keyframe, as with RTMP's sequence header.
    try:
        info = h264.parse_sps(sps)
    except H264Error:
        stream.set_video_params(VideoParams(codec="H264"))
        return
    stream.set_video_params(
        VideoParams(
            codec="H264",
            width=info.width,
            height=info.height,
            extradata=h264.to_annexb([sps, pps]),
            profile=h264.codec_string(info),
        )
    )
