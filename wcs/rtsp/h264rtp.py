"""H.264 over RTP (RFC 6184, non-interleaved mode): RTP packets to whole access units and back.

The depacketizer only emits access units a decoder can decode cleanly (see H264Depacketizer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from twisted.logger import Logger

from wcs.media.h264 import (
    NAL_AUD,
    NAL_FU_A,
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    NAL_STAP_A,
    H264Error,
    SpsInfo,
    h264_video_params_of,
    parse_sps,
    split_annexb,
    to_annexb,
)
from wcs.media.units import MAX_PICTURE_PIXELS, MediaUnit, VideoParams
from wcs.rtsp.rtp import MAX_DROPOUT, MAX_MISORDER, RTP_HEADER_SIZE, RtpPacket, seq_diff

__all__ = [
    "CLOCK_RATE",
    "MAX_AU_BYTES",
    "MAX_NALS",
    "REORDER_WINDOW",
    "TIME_BASE",
    "H264AccessUnit",
    "H264Depacketizer",
    "H264Packetizer",
]

log = Logger(namespace="wcs.rtsp.h264rtp")

CLOCK_RATE: Final = 90000  # RFC 6184 8.2.1: H.264 always uses a 90 kHz RTP clock
TIME_BASE: Final = Fraction(1, CLOCK_RATE)
# A 4K IDR picture at high quality is 1-2 MB; anything past this is broken or hostile.
MAX_AU_BYTES: Final = 4 * 1024 * 1024
# 4K with one slice per macroblock row has 135 slices; x264 and cameras use far fewer.
MAX_NALS: Final = 1024
# Packets held back waiting for a missing sequence number before it is declared lost.
# A sequence number MAX_MISORDER behind / MAX_DROPOUT ahead is a sender restart (RFC 3550 A.1).
REORDER_WINDOW: Final = 8

_COUNTERS: Final = (
    "packets",
    "lost_packets",
    "duplicates",
    "reordered",
    "dropped_aus",
    "skipped_aus",
    "emitted_aus",
    "unsupported",
    "malformed",
    "oversized",
    "bad_sps",
    "bad_pps",
    "rejected",
)
_MASK32: Final = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class H264AccessUnit:
    """One complete, decodable access unit.

    `nals` are the NAL units as received; `annexb` is what to decode: for a keyframe lacking
    SPS/PPS in-band it starts with the current ones. `pts` is in 90 kHz units relative to the
    first RTP packet of the session (it can go backwards between AUs when B-frames are used).
    """

    nals: tuple[bytes, ...]
    annexb: bytes
    keyframe: bool
    pts: int
    rtp_timestamp: int
    sps: bytes
    pps: bytes
    params_changed: bool  # first AU, or SPS/PPS differ from those of the previous emitted AU
    sps_info: SpsInfo

    def media_unit(self) -> MediaUnit:
        """The unit for Stream.push. RTP has no decode timestamps, so dts = pts (see module doc)."""
        return MediaUnit(
            kind="video",
            codec="H264",
            pts=self.pts,
            dts=self.pts,
            keyframe=self.keyframe,
            data=self.annexb,
            time_base=TIME_BASE,
        )

    def video_params(self) -> VideoParams:
        """VideoParams for Stream.set_video_params, from the SPS the depacketizer accepted."""
        return h264_video_params_of(self.sps_info, [self.sps], [self.pps])


class _Au:
    """An access unit being assembled from packets with one RTP timestamp."""

    __slots__ = ("broken", "fu", "lost", "malformed", "nals", "pts", "rtp_ts", "size")

    def __init__(self, rtp_ts: int, pts: int, lost: bool) -> None:
        self.rtp_ts = rtp_ts
        self.pts = pts
        self.broken = lost  # nothing of it is used
        self.lost = lost  # packets of it were lost: its defects may be the network's
        self.malformed: str | None = None  # why the sender's packets make no AU
        self.nals: list[bytes] = []
        self.size = 0
        self.fu: bytearray | None = None  # FU-A NAL unit being reassembled


class H264Depacketizer:
    """RTP packets of one H.264 stream in, complete access units out (RFC 6184 modes 0 and 1).

    Decisions, all in favour of "never a grey picture":

    * Access units end on the marker bit, or when a packet with a new RTP timestamp arrives
      (streams without markers cost one packet of latency). If a sender is seen setting the
      marker before the end of an AU, markers are ignored from then on.
    * Reordering: up to `reorder_window` packets are held while a sequence number is missing;
      a packet arriving in time is put back in place. When more are held, the missing ones
      are lost. 0 (right for TCP interleaved, which cannot reorder) means any gap is a loss.
      Duplicates and packets arriving after being declared lost are discarded.
    * A loss drops the AU it falls into, and the next one if the loss fell between AUs (its
      head may be gone), and then every AU until one that contains an IDR: frames predicted
      from a lost one decode to grey smears. The stream also waits for an IDR at the start.
    * An AU whose first slice does not start at macroblock 0 lost its head (a receiver
      joining mid-AU) and is dropped; the stream is taken to start at the first packet.
    * A truncated STAP-A, an FU-A without its start, middle or end, an STAP-B/MTAP/FU-B
      packet (interleaved mode, unsupported), a NAL unit with its forbidden_zero_bit set, or
      an AU over `max_au_bytes` / `max_nals` drops the AU likewise. Without a loss to blame,
      such an AU is the sender's fault: it counts in `rejected` (reason in `last_rejection`)
      and in `bad_run`, the malformed AUs since the last one emitted.
    * SPS/PPS come from sprop-parameter-sets and from any complete in-band NAL unit; one that
      cannot be used (an SPS parse_sps cannot read or whose picture is over `max_pixels`, a
      PPS too short to be one) is dropped and counted in `rejected`, and the last good ones
      stay in use: a picture too large for `max_pixels` is never emitted. An IDR AU without
      both known is skipped.
    * Only the latest SPS and PPS are kept and prepended: a stream using several PPS ids
      decodes only if it repeats them in-band with its IDRs.
    * pts = the RTP timestamp unwrapped (signed 32-bit steps) relative to the first packet;
      RTP carries no decode timestamp, so callers use dts = pts: FFmpeg's H.264 decoder
      orders output by POC, not by dts, so B-frame streams still decode every frame.
    """

    def __init__(
        self,
        clock_rate: int = CLOCK_RATE,
        sprop_sps: bytes | None = None,
        sprop_pps: bytes | None = None,
        max_au_bytes: int = MAX_AU_BYTES,
        max_nals: int = MAX_NALS,
        reorder_window: int = REORDER_WINDOW,
        max_pixels: int = MAX_PICTURE_PIXELS,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate must be positive, not {clock_rate}")
        if not 0 <= reorder_window < MAX_MISORDER:
            raise ValueError(f"reorder window must be 0..{MAX_MISORDER - 1}, not {reorder_window}")
        self.clock_rate = clock_rate
        self.max_au_bytes = max_au_bytes
        self.max_nals = max_nals
        self.reorder_window = reorder_window
        self.max_pixels = max_pixels
        # counters
        self.packets = 0
        self.lost_packets = 0
        self.duplicates = 0  # duplicate or too late to use
        self.reordered = 0  # arrived out of order, in time to be used
        self.dropped_aus = 0  # damaged: loss, truncation, unsupported packets, over the limits
        self.skipped_aus = 0  # whole, but undecodable: no IDR since a loss, or no SPS/PPS
        self.emitted_aus = 0
        self.unsupported = 0
        self.malformed = 0
        self.oversized = 0
        self.bad_sps = 0
        self.bad_pps = 0
        self.rejected = 0  # malformed AUs and unusable parameter sets dropped
        self.last_rejection = ""
        self.bad_run = 0  # malformed AUs since the last emitted one

        self._sps: bytes | None = None
        self._pps: bytes | None = None
        self._sps_info: SpsInfo | None = None
        # The last SPS refused and why: encoders repeat theirs with every IDR.
        self._refused: tuple[bytes, str] | None = None
        self._sps_logged = False
        if sprop_sps:
            self._learn_sps(sprop_sps)
        if sprop_pps:
            self._learn_pps(sprop_pps)
        self._emitted_params: tuple[bytes, bytes] | None = None

        self._ssrc: int | None = None
        self._expected: int | None = None  # next sequence number to process
        self._pending: dict[int, RtpPacket] = {}
        self._highest: int | None = None  # highest sequence number accepted
        self._restart_seq: int | None = None
        self._last_rtp: int | None = None
        self._ext = 0  # unwrapped timestamp of the last packet, relative to the first
        self._au: _Au | None = None
        self._head_lost = False
        self._need_idr = True
        self._last_marker_ts: int | None = None
        self._markers_reliable = True

    # -- public -------------------------------------------------------------------------------
    @property
    def sps_info(self) -> SpsInfo | None:
        return self._sps_info

    def params(self) -> tuple[bytes, bytes] | None:
        """The current (SPS, PPS), once both are known."""
        if self._sps is None or self._pps is None:
            return None
        return self._sps, self._pps

    def video_params(self) -> VideoParams | None:
        """VideoParams of the current SPS and PPS, once both are known."""
        if self._sps is None or self._pps is None or self._sps_info is None:
            return None
        return h264_video_params_of(self._sps_info, [self._sps], [self._pps])

    def stats(self) -> dict[str, int]:
        """The counters, for logging."""
        return {name: getattr(self, name) for name in _COUNTERS}

    def push(self, packet: RtpPacket) -> list[H264AccessUnit]:
        """Take one RTP packet; returns the access units it completed (usually 0 or 1)."""
        self.packets += 1
        out: list[H264AccessUnit] = []
        if self._ssrc != packet.ssrc:
            if self._ssrc is not None:
                log.info(
                    "H.264 RTP: SSRC changed {old:08x} -> {new:08x}",
                    old=self._ssrc,
                    new=packet.ssrc,
                )
                self._restart(out)
                # A new source has its own random timestamp base: continue the timeline.
                self._last_rtp = None
                self._ext += 1
            self._ssrc = packet.ssrc
        seq = packet.seq
        if self._expected is None:
            self._expected = seq
        ahead = seq_diff(seq, self._expected)
        if ahead < -MAX_MISORDER or ahead > MAX_DROPOUT:
            # Far outside any reordering: the sender restarted its numbering, or a stray
            # packet. Only a second packet continuing from this one confirms a restart.
            if seq != self._restart_seq:
                self._restart_seq = (seq + 1) & 0xFFFF
                self.duplicates += 1
                return out
            self._restart(out)
            self._expected = seq
        elif ahead < 0 or seq in self._pending:
            self.duplicates += 1
            return out
        self._restart_seq = None
        if self._highest is not None and seq_diff(seq, self._highest) < 0:
            self.reordered += 1  # fills a hole behind a later packet, in time
        else:
            self._highest = seq
        self._pending[seq] = packet
        self._drain(out)
        while len(self._pending) > self.reorder_window:
            self._skip_gap(out)
        return out

    def flush(self) -> list[H264AccessUnit]:
        """Give up on missing packets (end of stream): process everything held back."""
        out: list[H264AccessUnit] = []
        while self._pending:
            self._skip_gap(out)
        return out

    # -- sequencing ---------------------------------------------------------------------------
    def _drain(self, out: list[H264AccessUnit]) -> None:
        pending = self._pending
        while self._expected in pending:
            packet = pending.pop(self._expected)
            self._expected = (self._expected + 1) & 0xFFFF
            self._process(packet, out)

    def _skip_gap(self, out: list[H264AccessUnit]) -> None:
        expected = self._expected
        assert expected is not None
        nearest = min(self._pending, key=lambda s: seq_diff(s, expected))
        gap = seq_diff(nearest, expected)
        self.lost_packets += gap
        self._on_loss()
        self._expected = nearest
        self._drain(out)

    def _restart(self, out: list[H264AccessUnit]) -> None:
        """A discontinuity in numbering: use what is held, then start over at the next IDR."""
        while self._pending:
            self._skip_gap(out)
        self._on_loss()
        self._expected = None
        self._highest = None
        self._last_marker_ts = None

    def _on_loss(self) -> None:
        if self._au is not None:
            self._au.broken = self._au.lost = True
        # If the loss fell between AUs, the next AU may have lost its head.
        self._head_lost = True
        self._need_idr = True

    # -- depacketization ----------------------------------------------------------------------
    def _unwrap(self, rtp_ts: int) -> int:
        if self._last_rtp is not None:
            self._ext += ((rtp_ts - self._last_rtp + 0x80000000) & _MASK32) - 0x80000000
        self._last_rtp = rtp_ts
        return self._ext

    def _process(self, packet: RtpPacket, out: list[H264AccessUnit]) -> None:
        payload = packet.payload
        if not payload:
            return  # keepalive or padding-only packet: carries no NAL and no AU boundary
        ts = packet.timestamp
        ext = self._unwrap(ts)
        au = self._au
        if au is not None and au.rtp_ts != ts:
            self._finish(out)
            au = None
        if au is None:
            if self._markers_reliable and ts == self._last_marker_ts:
                # The marker ended an AU that continues: the sender misplaces markers, and the
                # AU just emitted was partial. Rely on timestamps alone from now on.
                log.warn("H.264 RTP: marker bit set inside an access unit; ignoring markers")
                self._markers_reliable = False
                self._head_lost = True
                self._need_idr = True
            pts = ext if self.clock_rate == CLOCK_RATE else ext * CLOCK_RATE // self.clock_rate
            au = self._au = _Au(ts, pts, self._head_lost)
        self._head_lost = False
        self._depacketize(au, payload)
        if packet.marker and self._markers_reliable:
            self._last_marker_ts = ts
            self._finish(out)

    def _malformed(self, au: _Au, reason: str) -> None:
        """The sender's packets cannot make this AU: drop it, and blame the sender unless a
        loss explains it."""
        if not au.broken and not au.lost and au.malformed is None:
            au.malformed = reason
        au.broken = True
        au.fu = None
        au.nals.clear()  # nothing of a broken AU is used: free it
        au.size = 0

    def _depacketize(self, au: _Au, payload: bytes) -> None:
        kind = payload[0] & 0x1F
        if payload[0] & 0x80:
            # forbidden_zero_bit (RFC 6184 5.3): a syntax violation; decoders skip the unit.
            self.malformed += 1
            self._malformed(au, "NAL unit with its forbidden_zero_bit set")
        elif 1 <= kind <= 23:
            if au.fu is not None:
                self._malformed(au, "FU-A without its end")
            self._add_nal(au, payload)
        elif kind == NAL_STAP_A:
            if au.fu is not None:
                self._malformed(au, "FU-A without its end")
            self._stap_a(au, payload)
        elif kind == NAL_FU_A:
            self._fu_a(au, payload)
        else:
            # STAP-B, MTAP16/24, FU-B (interleaved mode) or reserved types: their contents
            # are missing from the AU, so it cannot be decoded whole.
            if self.unsupported == 0:
                log.warn("H.264 RTP: unsupported packet type {kind} (interleaved mode?)", kind=kind)
            self.unsupported += 1
            self._malformed(au, f"unsupported RTP packet type {kind}")

    def _stap_a(self, au: _Au, payload: bytes) -> None:
        nals: list[bytes] = []
        pos = 1
        end = len(payload)
        while pos < end:
            size = int.from_bytes(payload[pos : pos + 2], "big")
            pos += 2
            if pos > end or pos + size > end:
                # Truncated: the packet is corrupt, trust none of it.
                self.malformed += 1
                self._malformed(au, "truncated STAP-A")
                return
            if size == 0:
                continue
            nal = payload[pos : pos + size]
            pos += size
            if not 1 <= nal[0] & 0x1F <= 23 or nal[0] & 0x80:
                self.malformed += 1
                self._malformed(au, f"STAP-A holding a NAL unit of type {nal[0] & 0x1F}")
                return
            nals.append(nal)
        for nal in nals:
            self._add_nal(au, nal)

    def _fu_a(self, au: _Au, payload: bytes) -> None:
        if au.broken:
            au.fu = None  # nothing of a broken AU is used: do not reassemble it
            return
        if len(payload) < 2 or not 1 <= payload[1] & 0x1F <= 23:
            self.malformed += 1
            self._malformed(au, "FU-A with a bad header")
            return
        header = payload[1]
        if header & 0x80:  # start
            if au.fu is not None:
                self._malformed(au, "FU-A without its end")
                return
            au.fu = bytearray([(payload[0] & 0xE0) | (header & 0x1F)])
        elif au.fu is None:
            self._malformed(au, "FU-A without its start")
            return
        au.fu += payload[2:]
        if au.size + len(au.fu) > self.max_au_bytes:
            self._oversized(au)
            return
        if header & 0x40:  # end (RFC 6184 forbids start+end together; accepted as one NAL)
            nal = bytes(au.fu)
            au.fu = None
            self._add_nal(au, nal)

    def _oversized(self, au: _Au) -> None:
        if not au.broken:
            self.oversized += 1
            if self.oversized == 1:
                log.warn(
                    "H.264 RTP: access unit over {limit} bytes or {nals} NAL units dropped",
                    limit=self.max_au_bytes,
                    nals=self.max_nals,
                )
        self._malformed(au, f"access unit over {self.max_au_bytes} bytes or {self.max_nals} NALs")

    def _add_nal(self, au: _Au, nal: bytes) -> None:
        kind = nal[0] & 0x1F
        # Parameter sets are whole NAL units whatever happened to the rest of the AU; one
        # that cannot be used is dropped, and the AU goes on with the last good ones.
        if kind == NAL_SPS and not self._learn_sps(nal):
            return
        if kind == NAL_PPS and not self._learn_pps(nal):
            return
        if au.broken:
            au.nals.clear()  # nothing of a broken AU is used: free it
            return
        if len(au.nals) >= self.max_nals or au.size + len(nal) > self.max_au_bytes:
            self._oversized(au)
            return
        au.nals.append(bytes(nal))
        au.size += len(nal)

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self.last_rejection = reason

    def _learn_sps(self, nal: bytes) -> bool:
        """Take an SPS; False (counted) when it cannot be used."""
        if nal == self._sps:
            return True
        if self._refused is not None and nal == self._refused[0]:  # parsed once
            self.bad_sps += 1
            self._reject(self._refused[1])
            return False
        try:
            info = parse_sps(nal, self.max_pixels)
        except H264Error as err:
            self.bad_sps += 1
            self._refused = (bytes(nal), f"unusable SPS: {err}")
            self._reject(self._refused[1])
            if not self._sps_logged:
                self._sps_logged = True
                log.warn("H.264 RTP: ignoring unusable SPS: {error}", error=str(err))
            return False
        self._sps = bytes(nal)
        self._sps_info = info
        return True

    def _learn_pps(self, nal: bytes) -> bool:
        """Take a PPS; False (counted) when it cannot be one: pic_parameter_set_id,
        seq_parameter_set_id and the RBSP stop bit need a byte after the header."""
        if len(nal) < 2 or not any(nal[1:]):
            self.bad_pps += 1
            self._reject(f"unusable PPS of {len(nal)} bytes")
            return False
        self._pps = bytes(nal)
        return True

    def _finish(self, out: list[H264AccessUnit]) -> None:
        au, self._au = self._au, None
        if au is None:
            return
        if au.fu is not None and not au.broken:
            self._malformed(au, "access unit ending inside an FU-A")
        if au.broken:
            self.dropped_aus += 1
            self._need_idr = True
            if au.malformed is not None:
                self.bad_run += 1
                self._reject(au.malformed)
            return
        kinds = [nal[0] & 0x1F for nal in au.nals]
        first_slice = next((n for n in au.nals if 1 <= n[0] & 0x1F <= NAL_IDR), None)
        if first_slice is None:
            return  # no picture (parameter sets or SEI alone): nothing to decode
        if len(first_slice) < 2 or not first_slice[1] & 0x80:
            # first_mb_in_slice (the slice header's first ue(v)) is not 0: the picture's first
            # slice is missing, as when a receiver joins in the middle of an AU.
            self.dropped_aus += 1
            self._need_idr = True
            return

        keyframe = NAL_IDR in kinds
        if not keyframe and self._need_idr:
            self.skipped_aus += 1
            return
        sps, pps, info = self._sps, self._pps, self._sps_info
        if sps is None or pps is None or info is None:
            self.skipped_aus += 1
            return
        nals = au.nals
        if keyframe and (NAL_SPS not in kinds or NAL_PPS not in kinds):
            # Prepend what is missing in the order a decoder needs (AUD, SPS, PPS, rest).
            head = [nals[0]] if kinds[0] == NAL_AUD else []
            rest = nals[len(head) :]
            decode = [*head, sps, pps, *(n for n in rest if n[0] & 0x1F not in (NAL_SPS, NAL_PPS))]
        else:
            decode = nals
        if keyframe:
            self._need_idr = False
        changed = self._emitted_params != (sps, pps)
        self._emitted_params = (sps, pps)
        self.emitted_aus += 1
        self.bad_run = 0
        out.append(
            H264AccessUnit(
                nals=tuple(nals),
                annexb=to_annexb(decode),
                keyframe=keyframe,
                pts=au.pts,
                rtp_timestamp=au.rtp_ts,
                sps=sps,
                pps=pps,
                params_changed=changed,
                sps_info=info,
            )
        )


class H264Packetizer:
    """Annex B access units to RTP packets: single NAL, STAP-A for runs of small NAL units,
    FU-A for large ones; marker on the last packet of each AU. Non-interleaved mode (1).
    """

    def __init__(
        self,
        payload_type: int,
        ssrc: int,
        mtu: int = 1200,
        clock_rate: int = CLOCK_RATE,
        *,
        initial_seq: int | None = None,
        timestamp_offset: int | None = None,
        aggregate: bool = True,
    ) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type {payload_type} out of range 0..127")
        if mtu < RTP_HEADER_SIZE + 16:
            raise ValueError(f"MTU {mtu} too small for RTP")
        if clock_rate <= 0:
            raise ValueError(f"clock rate must be positive, not {clock_rate}")
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.mtu = mtu  # largest RTP packet (header + payload), without lower layers
        self.clock_rate = clock_rate
        # RFC 3550 5.1: random initial sequence number and timestamp.
        self.seq = random.randrange(1 << 16) if initial_seq is None else initial_seq & 0xFFFF
        self.timestamp_offset = (
            random.randrange(1 << 32) if timestamp_offset is None else timestamp_offset & _MASK32
        )
        self.aggregate = aggregate
        self.packet_count = 0
        self.octet_count = 0  # payload octets, for sender reports

    def packetize(self, annexb_au: bytes, pts_90k: int) -> list[RtpPacket]:
        """Packets for one access unit; `pts_90k` is in units of the clock rate (90 kHz)."""
        nals = split_annexb(annexb_au)
        max_payload = self.mtu - RTP_HEADER_SIZE
        payloads: list[bytes] = []
        i = 0
        while i < len(nals):
            nal = nals[i]
            if len(nal) > max_payload:
                payloads.extend(self._fragment(nal, max_payload))
                i += 1
                continue
            group = [nal]
            size = 1 + 2 + len(nal)
            while (
                self.aggregate
                and i + len(group) < len(nals)
                and size + 2 + len(nals[i + len(group)]) <= max_payload
            ):
                size += 2 + len(nals[i + len(group)])
                group.append(nals[i + len(group)])
            payloads.append(nal if len(group) == 1 else _stap_a(group))
            i += len(group)
        timestamp = (self.timestamp_offset + pts_90k) & _MASK32
        packets: list[RtpPacket] = []
        for index, payload in enumerate(payloads):
            packets.append(
                RtpPacket(
                    pt=self.payload_type,
                    seq=self.seq,
                    timestamp=timestamp,
                    ssrc=self.ssrc,
                    payload=payload,
                    marker=index == len(payloads) - 1,
                )
            )
            self.seq = (self.seq + 1) & 0xFFFF
            self.octet_count += len(payload)
        self.packet_count += len(packets)
        return packets

    @staticmethod
    def _fragment(nal: bytes, max_payload: int) -> list[bytes]:
        indicator = (nal[0] & 0xE0) | NAL_FU_A
        kind = nal[0] & 0x1F
        data = memoryview(nal)[1:]
        step = max_payload - 2
        fragments: list[bytes] = []
        for start in range(0, len(data), step):
            header = kind
            if start == 0:
                header |= 0x80
            if start + step >= len(data):
                header |= 0x40
            fragments.append(bytes([indicator, header]) + data[start : start + step])
        return fragments


def _stap_a(nals: list[bytes]) -> bytes:
    # The STAP-A header carries the highest NRI and any F bit of what it aggregates (5.7.1).
    f_bit = max(nal[0] & 0x80 for nal in nals)
    nri = max(nal[0] & 0x60 for nal in nals)
    out = bytearray([f_bit | nri | NAL_STAP_A])
    for nal in nals:
        out += len(nal).to_bytes(2, "big") + nal
    return bytes(out)
