"""RTP into a Stream: the tracks of one RTSP session (published or pulled) as media units.

Shared by the server (ANNOUNCE/RECORD) and the camera client (DESCRIBE/PLAY), so both feed the
registry exactly as RTMP does and the snapshot code never knows which protocol it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from wcs.media.units import MediaUnit, VideoParams
from wcs.rtsp.h264rtp import REORDER_WINDOW, H264Depacketizer, h264_video_params
from wcs.rtsp.rtp import Bye, RtcpError, RtpError, RtpPacket, parse_rtcp
from wcs.rtsp.sdp import MediaDescription, SdpError, SessionDescription, h264_sprop
from wcs.streams import Stream

# Codec names as the REST stream object reports them where they differ from the SDP encoding
# name (upper-case: H264, H265, VP8, ... are reported as they are).
AUDIO_NAMES = {"MPEG4-GENERIC": "AAC", "MP4A-LATM": "AAC", "OPUS": "opus"}
VIDEO_NAMES = {"JPEG": "MJPEG"}


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


def describe_tracks(sdp: SessionDescription) -> list[Track]:
    """A Track per m= section, in SDP order (the index is the track number used by SETUP)."""
    tracks = []
    for index, media in enumerate(sdp.media):
        pts = media.payload_types
        pt = pts[0] if pts else None
        rtpmap = media.encoding(pt) if pt is not None else None
        encoding = rtpmap.encoding if rtpmap else "unknown"
        clock = rtpmap.clock_rate if rtpmap else 90000
        names = {"video": VIDEO_NAMES, "audio": AUDIO_NAMES}.get(media.media, {})
        codec = names.get(encoding, encoding)
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
        reorder = 0 if reliable else REORDER_WINDOW
        for track in tracks:
            if track.kind == "video" and track.codec == "H264":
                sps, pps = _sprop(track.media)
                dep = track.depacketizer = H264Depacketizer(
                    clock_rate=track.clock_rate,
                    sprop_sps=sps,
                    sprop_pps=pps,
                    reorder_window=reorder,
                )
                # Width and height known before the first keyframe, as with RTMP's sequence
                # header; the depacketizer keeps the sprop SPS only if it is readable.
                params = dep.params()
                if params is not None:
                    stream.set_video_params(h264_video_params(*params))
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
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self.tracks[index].bad_packets += 1
            return
        self.rtp_packet(index, packet)

    def rtp_packet(self, index: int, packet: RtpPacket) -> None:
        """Like rtp(), for a packet the caller has parsed already (the camera client)."""
        if not 0 <= index < len(self.tracks):
            return
        track = self.tracks[index]
        if track.payload_type is not None and packet.pt != track.payload_type:
            track.bad_packets += 1  # e.g. a stray RTCP or another sender's packet on the port
            return
        track.packets += 1
        if track.depacketizer is not None:
            for au in track.depacketizer.push(packet):
                if au.params_changed:
                    self.stream.set_video_params(au.video_params())
                self.stream.push(au.media_unit())
        elif track.kind == "audio":
            ts = packet.timestamp
            self.stream.push(
                MediaUnit("audio", track.codec, ts, ts, True, b"", Fraction(1, track.clock_rate))
            )

    def rtcp(self, index: int, data: bytes) -> bool:
        """One RTCP compound packet; returns True when it says the sender is leaving (BYE)."""
        if not 0 <= index < len(self.tracks):
            return False
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            return False
        return any(isinstance(p, Bye) for p in packets)

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


def _sprop(media: MediaDescription) -> tuple[bytes | None, bytes | None]:
    """The first SPS and PPS of the track's sprop-parameter-sets (None when absent or bad)."""
    pt = media.payload_types[0] if media.payload_types else None
    fmtp = media.fmtp.get(pt, {}) if pt is not None else {}
    try:
        sps, pps, _ = h264_sprop(fmtp)
    except SdpError:
        return None, None
    return sps, (pps[0] if pps else None)
