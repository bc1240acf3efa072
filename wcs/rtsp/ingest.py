"""RTP into a Stream: the tracks of one RTSP session (published or pulled) as media units.

Shared by the server (ANNOUNCE/RECORD) and the camera client (DESCRIBE/PLAY), so both feed the
hub exactly as RTMP does and the snapshot code never knows which protocol it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from wcs.media.units import MediaUnit, VideoParams
from wcs.rtsp.h264rtp import REORDER_WINDOW, H264Depacketizer
from wcs.rtsp.rtp import Bye, RtcpError, RtpError, RtpPacket, parse_rtcp
from wcs.rtsp.sdp import MediaDescription, SdpError, SessionDescription, h264_sprop
from wcs.streams import Stream

# Malformed video access units in a row (no good one between) after which the publisher or
# camera is dropped: ~10 s of 25 fps video. Fewer are counted (Stream.reject_unit) and skipped.
MAX_BAD_RUN = 250


class MediaRejected(ValueError):
    """The track's media has been unusable for too long: close the connection."""


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

    A malformed access unit or parameter set (in-band or sprop) is dropped and reported with
    `Stream.reject_unit`; the session goes on. Only MAX_BAD_RUN malformed access units in a
    row make :meth:`rtp` raise MediaRejected (the protocol's input guard closes the
    connection with that reason). A picture over the stream's max_picture_pixels is never
    emitted: the stream keeps no usable video, the rest of the session stays.
    """

    def __init__(self, stream: Stream, tracks: list[Track], *, reliable: bool) -> None:
        self.stream = stream
        self.tracks = tracks
        # Over TCP a gap is a real loss: don't hold packets waiting for a reordered one.
        reorder = 0 if reliable else REORDER_WINDOW
        for track in tracks:
            if track.kind == "video" and track.codec == "H264":
                sps, pps = self._sprop(track.media)
                dep = track.depacketizer = H264Depacketizer(
                    clock_rate=track.clock_rate,
                    sprop_sps=sps,
                    sprop_pps=pps,
                    reorder_window=reorder,
                    max_pixels=stream.max_picture_pixels,
                )
                self._report(dep, 0)
                # Width and height known before the first keyframe, as with RTMP's sequence
                # header; the depacketizer keeps the sprop SPS only if it is usable.
                params = dep.video_params()
                if params is not None:
                    stream.set_video_params(params)
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
        dep = track.depacketizer
        if dep is not None:
            rejected = dep.rejected
            aus = dep.push(packet)
            self._report(dep, rejected)
            for au in aus:
                if au.params_changed:
                    self.stream.set_video_params(au.video_params())
                self.stream.push(au.media_unit())
            if dep.bad_run >= MAX_BAD_RUN:
                raise MediaRejected(
                    f"{dep.bad_run} malformed video access units in a row "
                    f"(last: {dep.last_rejection})"
                )
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

    def _report(self, dep: H264Depacketizer, before: int) -> None:
        """Tell the stream about each unit or parameter set the depacketizer dropped."""
        for _ in range(dep.rejected - before):
            self.stream.reject_unit(dep.last_rejection)

    def _sprop(self, media: MediaDescription) -> tuple[bytes | None, bytes | None]:
        """The first SPS and PPS of the track's sprop-parameter-sets (None when absent or
        bad; bad ones are reported to the stream)."""
        pt = media.payload_types[0] if media.payload_types else None
        fmtp = media.fmtp.get(pt, {}) if pt is not None else {}
        try:
            sps, pps, _ = h264_sprop(fmtp)
        except SdpError as err:
            self.stream.reject_unit(f"sprop-parameter-sets: {err}")
            return None, None
        return sps, (pps[0] if pps else None)
