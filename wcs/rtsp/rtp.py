"""RTP packets, RTCP compound packets (SR, RR, SDES, BYE) and receiver statistics (RFC 3550).

Pure functions and small classes over bytes; time is passed in by the caller (seconds, float).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "RTCP_APP",
    "RTCP_BYE",
    "RTCP_PSFB",
    "RTCP_RR",
    "RTCP_RTPFB",
    "RTCP_SDES",
    "RTCP_SR",
    "SDES_CNAME",
    "Bye",
    "ReceiverReport",
    "ReceptionStats",
    "ReportBlock",
    "RtcpError",
    "RtcpPacket",
    "RtcpUnknown",
    "RtpError",
    "RtpPacket",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "build_receiver_report",
    "is_rtcp",
    "parse_rtcp",
    "seq_diff",
]

RTP_VERSION: Final = 2
RTP_HEADER_SIZE: Final = 12
# Interleaved frames carry a 16-bit length and UDP datagrams are smaller still.
MAX_PACKET_SIZE: Final = 65535

RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203
RTCP_APP: Final = 204
RTCP_RTPFB: Final = 205
RTCP_PSFB: Final = 206
SDES_CNAME: Final = 1

# Seconds between the NTP epoch (1900) and the Unix epoch (1970).
NTP_UNIX_OFFSET: Final = 2_208_988_800

_RTP_HEADER = struct.Struct("!BBHII")
_RTCP_HEADER = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc, NTP timestamp, RTP timestamp, packets, octets
_REPORT_BLOCK = struct.Struct("!IIIIII")
_U32 = struct.Struct("!I")
_MASK32: Final = 0xFFFFFFFF


class RtpError(ValueError):
    """A malformed RTP or RTCP packet, or a field out of range."""


class RtcpError(RtpError):
    """A malformed RTCP packet."""


def seq_diff(a: int, b: int) -> int:
    """How far 16-bit sequence number `a` is ahead of `b`, in -32768..32767 (negative: behind)."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def is_rtcp(data: bytes) -> bool:
    """Demultiplex RTP and RTCP sharing one channel (RFC 5761 4): RTCP types are 192..223."""
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


# ---------------------------------------------------------------------------
# RTP (RFC 3550 5.1)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet; padding is removed by `parse`, a header extension is kept but not read."""

    pt: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension: bytes = b""  # a multiple of 4 bytes, without the 4-byte extension header

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; raises RtpError on anything malformed."""
        size = len(data)
        if size < RTP_HEADER_SIZE:
            raise RtpError(f"RTP packet of {size} bytes is shorter than the 12-byte header")
        if size > MAX_PACKET_SIZE:
            raise RtpError(f"RTP packet of {size} bytes exceeds {MAX_PACKET_SIZE}")
        b0, b1, seq, timestamp, ssrc = _RTP_HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {b0 >> 6}, expected {RTP_VERSION}")
        end = size
        if b0 & 0x20:
            pad = data[-1]
            if pad == 0:
                raise RtpError("RTP padding bit set but padding count is 0")
            end -= pad
        pos = RTP_HEADER_SIZE
        csrc: tuple[int, ...] = ()
        cc = b0 & 0x0F
        if cc:
            if pos + 4 * cc > end:
                raise RtpError(f"RTP packet of {size} bytes too short for {cc} CSRCs")
            csrc = struct.unpack_from(f"!{cc}I", data, pos)
            pos += 4 * cc
        profile: int | None = None
        extension = b""
        if b0 & 0x10:
            if pos + 4 > end:
                raise RtpError(f"RTP header extension header past the end at offset {pos}")
            profile, words = struct.unpack_from("!HH", data, pos)
            pos += 4
            if pos + 4 * words > end:
                raise RtpError(
                    f"RTP header extension of {4 * words} bytes at offset {pos} exceeds the "
                    f"{end - pos} bytes left"
                )
            extension = bytes(data[pos : pos + 4 * words])
            pos += 4 * words
        if pos > end:
            raise RtpError(f"RTP padding of {size - end} bytes overlaps the header")
        return cls(
            pt=b1 & 0x7F,
            seq=seq,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[pos:end]),
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension_profile=profile,
            extension=extension,
        )

    def serialize(self, padding: int = 0) -> bytes:
        """The packet's bytes; `padding` (0..255) appends that many padding bytes."""
        if not 0 <= self.pt <= 127:
            raise RtpError(f"RTP payload type {self.pt} out of range 0..127")
        if not 0 <= self.seq <= 0xFFFF:
            raise RtpError(f"RTP sequence number {self.seq} out of range 0..65535")
        if not 0 <= self.timestamp <= _MASK32 or not 0 <= self.ssrc <= _MASK32:
            raise RtpError("RTP timestamp and SSRC must be 32-bit unsigned")
        if len(self.csrc) > 15:
            raise RtpError(f"RTP carries at most 15 CSRCs, not {len(self.csrc)}")
        if len(self.extension) % 4 or len(self.extension) > 4 * 0xFFFF:
            raise RtpError(
                f"RTP header extension of {len(self.extension)} bytes is not whole words"
            )
        if not 0 <= padding <= 255:
            raise RtpError(f"RTP padding {padding} out of range 0..255")
        b0 = RTP_VERSION << 6 | len(self.csrc)
        if padding:
            b0 |= 0x20
        if self.extension_profile is not None:
            b0 |= 0x10
        out = bytearray(
            _RTP_HEADER.pack(
                b0, self.pt | (0x80 if self.marker else 0), self.seq, self.timestamp, self.ssrc
            )
        )
        for source in self.csrc:
            out += _U32.pack(source)
        if self.extension_profile is not None:
            out += struct.pack("!HH", self.extension_profile, len(self.extension) // 4)
            out += self.extension
        out += self.payload
        if padding:
            out += bytes(padding - 1) + bytes([padding])
        return bytes(out)


# ---------------------------------------------------------------------------
# RTCP (RFC 3550 6.4 - 6.6)
# ---------------------------------------------------------------------------


def _rtcp_header(packet_type: int, count: int, body_len: int) -> bytes:
    if body_len % 4:
        raise RtcpError(f"RTCP body of {body_len} bytes is not whole words")
    if count > 31:
        raise RtcpError(f"RTCP item count {count} exceeds 31")
    words = (body_len + 4) // 4 - 1
    if words > 0xFFFF:
        raise RtcpError(f"RTCP packet of {body_len + 4} bytes is too long")
    return _RTCP_HEADER.pack(RTP_VERSION << 6 | count, packet_type, words)


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """Reception report about one source (RFC 3550 6.4.1)."""

    ssrc: int
    fraction_lost: int  # 0..255, fixed point /256
    cumulative_lost: int  # signed 24-bit
    highest_seq: int  # extended highest sequence number received
    jitter: int  # in RTP timestamp units
    lsr: int = 0  # middle 32 bits of the last SR's NTP timestamp
    dlsr: int = 0  # delay since that SR, 1/65536 s

    def serialize(self) -> bytes:
        lost = max(-(1 << 23), min((1 << 23) - 1, self.cumulative_lost)) & 0xFFFFFF
        return _REPORT_BLOCK.pack(
            self.ssrc,
            (self.fraction_lost & 0xFF) << 24 | lost,
            self.highest_seq & _MASK32,
            min(self.jitter, _MASK32),
            self.lsr & _MASK32,
            min(self.dlsr, _MASK32),
        )

    @classmethod
    def parse(cls, data: bytes, pos: int) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, pos)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)


def _report_blocks(data: bytes, pos: int, end: int, count: int) -> tuple[ReportBlock, ...]:
    if pos + count * _REPORT_BLOCK.size > end:
        raise RtcpError(f"RTCP packet too short for {count} report blocks")
    return tuple(ReportBlock.parse(data, pos + i * _REPORT_BLOCK.size) for i in range(count))


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR: the sender's wallclock (NTP) to RTP timestamp mapping and counters."""

    ssrc: int
    ntp_timestamp: int  # 64-bit NTP format: seconds since 1900 << 32 | fraction
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    @property
    def unix_time(self) -> float:
        """The NTP timestamp as Unix time in seconds."""
        return (self.ntp_timestamp >> 32) - NTP_UNIX_OFFSET + (self.ntp_timestamp & _MASK32) / 2**32

    @property
    def lsr(self) -> int:
        """The middle 32 bits of the NTP timestamp, echoed as LSR in reception reports."""
        return (self.ntp_timestamp >> 16) & _MASK32

    def serialize(self) -> bytes:
        body = _SENDER_INFO.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        ) + b"".join(block.serialize() for block in self.reports)
        return _rtcp_header(RTCP_SR, len(self.reports), len(body)) + body


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR: reception reports from a receiver that does not send."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def serialize(self) -> bytes:
        body = _U32.pack(self.ssrc) + b"".join(block.serialize() for block in self.reports)
        return _rtcp_header(RTCP_RR, len(self.reports), len(body)) + body


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """The SDES items (type, value) of one source."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @property
    def cname(self) -> str | None:
        for item_type, value in self.items:
            if item_type == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES: source descriptions, CNAME first of all."""

    chunks: tuple[SdesChunk, ...] = ()

    def serialize(self) -> bytes:
        body = bytearray()
        for chunk in self.chunks:
            body += _U32.pack(chunk.ssrc)
            for item_type, value in chunk.items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise RtcpError(f"SDES item type {item_type} or length {len(value)} invalid")
                body += bytes([item_type, len(value)]) + value
            # The item list ends with a null octet, then pads to a word boundary.
            body += bytes(4 - len(body) % 4)
        return _rtcp_header(RTCP_SDES, len(self.chunks), len(body)) + bytes(body)


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE: the listed sources are leaving the session."""

    ssrcs: tuple[int, ...]
    reason: str = ""

    def serialize(self) -> bytes:
        body = b"".join(_U32.pack(s) for s in self.ssrcs)
        if self.reason:
            text = self.reason.encode("utf-8")[:255]
            body += bytes([len(text)]) + text
            body += bytes(-len(body) % 4)
        return _rtcp_header(RTCP_BYE, len(self.ssrcs), len(body)) + body


@dataclass(frozen=True, slots=True)
class RtcpUnknown:
    """An RTCP packet we do not interpret (APP, feedback, XR, ...)."""

    packet_type: int
    count: int
    body: bytes


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | RtcpUnknown


def _parse_sdes(data: bytes, pos: int, end: int, count: int) -> SourceDescription:
    chunks: list[SdesChunk] = []
    for index in range(count):
        if pos + 4 > end:
            raise RtcpError(f"SDES chunk {index} truncated at offset {pos}")
        (ssrc,) = _U32.unpack_from(data, pos)
        pos += 4
        items: list[tuple[int, bytes]] = []
        while True:
            if pos >= end:
                raise RtcpError(f"SDES chunk {index} has no terminating null item")
            item_type = data[pos]
            if item_type == 0:
                pos += 1
                break
            if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                raise RtcpError(f"SDES item at offset {pos} runs past the packet")
            length = data[pos + 1]
            items.append((item_type, bytes(data[pos + 2 : pos + 2 + length])))
            pos += 2 + length
        pos += -pos % 4  # chunks start on a word boundary
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return SourceDescription(tuple(chunks))


def _parse_bye(data: bytes, pos: int, end: int, count: int) -> Bye:
    if pos + 4 * count > end:
        raise RtcpError(f"BYE too short for {count} SSRCs")
    ssrcs = struct.unpack_from(f"!{count}I", data, pos)
    pos += 4 * count
    reason = ""
    if pos < end:
        length = data[pos]
        if pos + 1 + length > end:
            raise RtcpError(f"BYE reason of {length} bytes runs past the packet")
        reason = data[pos + 1 : pos + 1 + length].decode("utf-8", "replace")
    return Bye(tuple(ssrcs), reason)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet; raises RtcpError on anything malformed."""
    if len(data) > MAX_PACKET_SIZE:
        raise RtcpError(f"RTCP packet of {len(data)} bytes exceeds {MAX_PACKET_SIZE}")
    packets: list[RtcpPacket] = []
    pos = 0
    total = len(data)
    if total < 4:
        raise RtcpError(f"RTCP packet of {total} bytes is shorter than its 4-byte header")
    while pos < total:
        if total - pos < 4:
            raise RtcpError(f"{total - pos} stray bytes after the RTCP packets at offset {pos}")
        b0, packet_type, words = _RTCP_HEADER.unpack_from(data, pos)
        if b0 >> 6 != RTP_VERSION:
            raise RtcpError(f"RTCP version {b0 >> 6} at offset {pos}, expected {RTP_VERSION}")
        end = pos + 4 + 4 * words
        if end > total:
            raise RtcpError(
                f"RTCP packet at offset {pos} claims {4 + 4 * words} bytes, {total - pos} remain"
            )
        count = b0 & 0x1F
        body_end = end
        if b0 & 0x20:
            pad = data[end - 1]
            if pad == 0 or pad > 4 * words:
                raise RtcpError(f"RTCP padding count {pad} invalid at offset {pos}")
            body_end -= pad
        body = pos + 4
        if packet_type == RTCP_SR:
            if body + _SENDER_INFO.size > body_end:
                raise RtcpError("SR too short for its sender info")
            ssrc, ntp, rtp_ts, packets_sent, octets = _SENDER_INFO.unpack_from(data, body)
            blocks = _report_blocks(data, body + _SENDER_INFO.size, body_end, count)
            packets.append(SenderReport(ssrc, ntp, rtp_ts, packets_sent, octets, blocks))
        elif packet_type == RTCP_RR:
            if body + 4 > body_end:
                raise RtcpError("RR too short for its SSRC")
            (ssrc,) = _U32.unpack_from(data, body)
            packets.append(ReceiverReport(ssrc, _report_blocks(data, body + 4, body_end, count)))
        elif packet_type == RTCP_SDES:
            packets.append(_parse_sdes(data, body, body_end, count))
        elif packet_type == RTCP_BYE:
            packets.append(_parse_bye(data, body, body_end, count))
        else:
            packets.append(RtcpUnknown(packet_type, count, bytes(data[body:body_end])))
        pos = end
    return packets


def build_receiver_report(ssrc: int, blocks: Sequence[ReportBlock], cname: str) -> bytes:
    """A compound RTCP packet: RR with up to 31 report blocks, then SDES with our CNAME."""
    rr = ReceiverReport(ssrc, tuple(blocks[:31]))
    sdes = SourceDescription((SdesChunk(ssrc, ((SDES_CNAME, cname.encode("utf-8")[:255]),)),))
    return rr.serialize() + sdes.serialize()


# ---------------------------------------------------------------------------
# Reception statistics (RFC 3550 A.1, A.3, A.8)
# ---------------------------------------------------------------------------

_SEQ_MOD: Final = 1 << 16
MAX_DROPOUT: Final = 3000
MAX_MISORDER: Final = 100


class ReceptionStats:
    """What a receiver knows about one source, for its reception report block.

    Follows RFC 3550 A.1 without the probation period: a sequence jump of more than
    MAX_DROPOUT is taken as a restart of the sender once two consecutive packets confirm it.
    """

    def __init__(self, clock_rate: int = 90000) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate must be positive, not {clock_rate}")
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self._base_seq = 0
        self._max_seq = 0
        self._bad_seq = _SEQ_MOD + 1
        self._cycles = 0
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: int | None = None
        self._jitter = 0.0
        self._last_sr = 0
        self._last_sr_time: float | None = None

    def _init_seq(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = _SEQ_MOD + 1
        self._cycles = 0
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0

    def update(self, packet: RtpPacket, arrival: float) -> None:
        """Account for one received packet; `arrival` is the receive time in seconds."""
        if packet.ssrc != self.ssrc:
            # A new source (or the first one): its numbering starts afresh.
            self.ssrc = packet.ssrc
            self._init_seq(packet.seq)
            self._transit = None
            self._jitter = 0.0
            self._last_sr_time = None
        else:
            seq = packet.seq
            udelta = (seq - self._max_seq) & 0xFFFF
            if udelta < MAX_DROPOUT:
                if seq < self._max_seq:
                    self._cycles += _SEQ_MOD
                self._max_seq = seq
            elif udelta <= _SEQ_MOD - MAX_MISORDER:
                if seq != self._bad_seq:
                    self._bad_seq = (seq + 1) & 0xFFFF
                    return
                self._init_seq(seq)  # two sequential packets: the sender restarted
            # else: a duplicate or a reordered packet, counted as received (A.3)
        self.received += 1
        # Interarrival jitter (A.8), in timestamp units; the difference is taken modulo 2**32.
        arrival_ts = round(arrival * self.clock_rate)
        transit = arrival_ts - packet.timestamp
        if self._transit is not None:
            d = ((transit - self._transit + 0x80000000) & _MASK32) - 0x80000000
            self._jitter += (abs(d) - self._jitter) / 16
        self._transit = transit

    def on_sender_report(self, report: SenderReport, arrival: float) -> None:
        """Remember the source's latest SR for the LSR/DLSR fields."""
        if report.ssrc == self.ssrc:
            self._last_sr = report.lsr
            self._last_sr_time = arrival

    @property
    def extended_highest_seq(self) -> int:
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        return self.extended_highest_seq - self._base_seq + 1 if self.ssrc is not None else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost (negative with duplicates), clamped to signed 24 bits."""
        return max(-(1 << 23), min((1 << 23) - 1, self.expected - self.received))

    @property
    def jitter(self) -> int:
        return int(self._jitter)

    def report_block(self, now: float) -> ReportBlock | None:
        """The report block for this source (None before any packet); starts a new interval."""
        if self.ssrc is None:
            return None
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self._last_sr_time is not None:
            dlsr = max(0, int((now - self._last_sr_time) * 65536))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            cumulative_lost=self.lost,
            highest_seq=self.extended_highest_seq & _MASK32,
            jitter=self.jitter,
            lsr=self._last_sr if self._last_sr_time is not None else 0,
            dlsr=dlsr,
        )
