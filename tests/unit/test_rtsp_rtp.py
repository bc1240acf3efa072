"""Tests for wcs.rtsp.rtp: RTP packets, RTCP compound packets and reception statistics.

aiortc's RTP/RTCP code (a maintained implementation) cross-checks our bytes both ways.
"""

from __future__ import annotations

import struct

import pytest
from aiortc import rtp as aiortc_rtp
from hypothesis import given
from hypothesis import strategies as st

from wcs.rtsp.rtp import (
    RTCP_APP,
    SDES_CNAME,
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    RtcpError,
    RtcpUnknown,
    RtpError,
    RtpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    build_receiver_report,
    is_rtcp,
    parse_rtcp,
    seq_diff,
)

# ---------------------------------------------------------------------------
# RTP
# ---------------------------------------------------------------------------

BASIC = bytes.fromhex("80e01234deadbeef01020304") + b"payload"


def test_parse_basic_header() -> None:
    p = RtpPacket.parse(BASIC)
    assert p == RtpPacket(
        pt=96, seq=0x1234, timestamp=0xDEADBEEF, ssrc=0x01020304, payload=b"payload", marker=True
    )
    assert p.serialize() == BASIC


def test_parse_padding_csrc_and_extension() -> None:
    header = bytes([0x80 | 0x20 | 0x10 | 2, 97]) + struct.pack("!HII", 7, 9000, 42)
    csrc = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 2) + b"\x10\xff\x00\x00" + b"abcd"
    data = header + csrc + extension + b"NAL" + b"\x00\x00\x03"
    p = RtpPacket.parse(data)
    assert p.payload == b"NAL"
    assert p.csrc == (1, 2)
    assert p.extension_profile == 0xBEDE
    assert p.extension == b"\x10\xff\x00\x00abcd"
    assert not p.marker and p.pt == 97 and p.seq == 7 and p.timestamp == 9000 and p.ssrc == 42
    assert p.serialize(padding=3) == data
    assert RtpPacket.parse(p.serialize()) == p


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x60\x00", "shorter than the 12-byte header"),
        (bytes.fromhex("40600001000000000000000a") + b"x", "RTP version 1"),
        (bytes.fromhex("a0600001000000000000000a") + b"x\x00", "padding count is 0"),
        (bytes.fromhex("a0600001000000000000000a") + b"x\x20", "overlaps the header"),
        (bytes.fromhex("82600001000000000000000a") + b"\x00\x00\x00\x01", "2 CSRCs"),
        (bytes.fromhex("90600001000000000000000a") + b"\xbe\xde", "extension header past"),
        (bytes.fromhex("90600001000000000000000a") + b"\xbe\xde\x00\x02abcd", "exceeds the"),
        (bytes(12) + bytes(65536), "exceeds 65535"),
    ],
)
def test_parse_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)
    assert issubclass(RtcpError, RtpError)


@pytest.mark.parametrize(
    "packet",
    [
        RtpPacket(pt=128, seq=0, timestamp=0, ssrc=0, payload=b""),
        RtpPacket(pt=96, seq=65536, timestamp=0, ssrc=0, payload=b""),
        RtpPacket(pt=96, seq=0, timestamp=1 << 32, ssrc=0, payload=b""),
        RtpPacket(pt=96, seq=0, timestamp=0, ssrc=0, payload=b"", csrc=tuple(range(16))),
        RtpPacket(
            pt=96, seq=0, timestamp=0, ssrc=0, payload=b"", extension_profile=1, extension=b"x"
        ),
    ],
)
def test_serialize_rejects_out_of_range_fields(packet: RtpPacket) -> None:
    with pytest.raises(RtpError):
        packet.serialize()


rtp_packets = st.builds(
    RtpPacket,
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=64),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension_profile=st.none() | st.integers(0, 0xFFFF),
    extension=st.just(b""),
)


@given(rtp_packets, st.integers(0, 255))
def test_serialize_parse_round_trip(packet: RtpPacket, padding: int) -> None:
    data = packet.serialize(padding)
    assert RtpPacket.parse(data) == packet
    theirs = aiortc_rtp.RtpPacket.parse(data)
    assert (theirs.payload_type, theirs.sequence_number, theirs.timestamp) == (
        packet.pt,
        packet.seq,
        packet.timestamp,
    )
    assert (theirs.ssrc, theirs.marker, theirs.payload) == (
        packet.ssrc,
        int(packet.marker),
        packet.payload,
    )
    assert theirs.csrc == list(packet.csrc)


@given(st.binary(max_size=80))
def test_parse_random_bytes_raises_only_rtp_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert len(packet.payload) <= len(data) - 12


def test_aiortc_packet_parses_the_same() -> None:
    theirs = aiortc_rtp.RtpPacket(
        payload_type=100, marker=1, sequence_number=65535, timestamp=123456, ssrc=99
    )
    theirs.payload = b"\x65abc"
    p = RtpPacket.parse(theirs.serialize())
    assert (p.pt, p.marker, p.seq, p.timestamp, p.ssrc, p.payload) == (
        100,
        True,
        65535,
        123456,
        99,
        b"\x65abc",
    )


@pytest.mark.parametrize(
    ("a", "b", "diff"),
    [(5, 3, 2), (3, 5, -2), (0, 65535, 1), (65535, 0, -1), (32767, 0, 32767), (32768, 0, -32768)],
)
def test_seq_diff(a: int, b: int, diff: int) -> None:
    assert seq_diff(a, b) == diff


def test_is_rtcp_demultiplexes_by_packet_type() -> None:
    assert is_rtcp(ReceiverReport(1).serialize())
    assert is_rtcp(Bye((1,)).serialize())
    assert not is_rtcp(BASIC)  # pt 96 with marker: second byte 224
    assert not is_rtcp(RtpPacket(pt=96, seq=0, timestamp=0, ssrc=0, payload=b"").serialize())
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"\x00\xc8\x00\x00")  # version 0


# ---------------------------------------------------------------------------
# RTCP
# ---------------------------------------------------------------------------

NTP = (3_900_000_000 << 32) | (1 << 31)  # 3.9e9 s after 1900, plus half a second


def test_sender_report_from_aiortc() -> None:
    theirs = aiortc_rtp.RtcpSrPacket(
        ssrc=0x11223344,
        sender_info=aiortc_rtp.RtcpSenderInfo(
            ntp_timestamp=NTP, rtp_timestamp=90000, packet_count=10, octet_count=12000
        ),
        reports=[aiortc_rtp.RtcpReceiverInfo(7, 25, -3, 70000, 12, 0xABCD, 65536)],
    )
    [sr] = parse_rtcp(bytes(theirs))
    assert sr == SenderReport(
        0x11223344, NTP, 90000, 10, 12000, (ReportBlock(7, 25, -3, 70000, 12, 0xABCD, 65536),)
    )
    assert isinstance(sr, SenderReport)
    assert sr.unix_time == 3_900_000_000 - 2_208_988_800 + 0.5
    assert sr.lsr == ((3_900_000_000 & 0xFFFF) << 16) | 0x8000
    assert sr.serialize() == bytes(theirs)


def test_compound_sr_sdes_bye() -> None:
    data = (
        SenderReport(5, NTP, 1, 2, 3).serialize()
        + SourceDescription((SdesChunk(5, ((SDES_CNAME, b"cam@host"), (6, b"tool"))),)).serialize()
        + Bye((5, 6), "camera going away").serialize()
    )
    sr, sdes, bye = parse_rtcp(data)
    assert sr == SenderReport(5, NTP, 1, 2, 3)
    assert isinstance(sdes, SourceDescription)
    assert sdes.chunks[0].cname == "cam@host"
    assert sdes.chunks[0].items == ((1, b"cam@host"), (6, b"tool"))
    assert bye == Bye((5, 6), "camera going away")
    # aiortc reads our compound packet the same way.
    their_sr, their_sdes, their_bye = aiortc_rtp.RtcpPacket.parse(data)
    assert isinstance(their_sr, aiortc_rtp.RtcpSrPacket)
    assert isinstance(their_sdes, aiortc_rtp.RtcpSdesPacket)
    assert isinstance(their_bye, aiortc_rtp.RtcpByePacket)
    assert their_sdes.chunks[0].items[0] == (1, b"cam@host")
    assert their_bye.sources == [5, 6]


def test_bye_without_reason_and_unknown_packets() -> None:
    app = struct.pack("!BBHI4s", 0x80 | 1, RTCP_APP, 2, 9, b"NAME")
    packets = parse_rtcp(Bye((9,)).serialize() + app)
    assert packets == [Bye((9,), ""), RtcpUnknown(RTCP_APP, 1, struct.pack("!I4s", 9, b"NAME"))]


def test_padding_on_last_packet_is_removed() -> None:
    rr = ReceiverReport(3).serialize()
    padded = bytes([rr[0] | 0x20, rr[1]]) + struct.pack("!H", 2) + rr[4:] + b"\x00\x00\x00\x04"
    assert parse_rtcp(padded) == [ReceiverReport(3)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\xc9", "shorter than its 4-byte header"),
        (b"\x40\xc9\x00\x01\x00\x00\x00\x01", "RTCP version 1"),
        (b"\x80\xc9\x00\x05\x00\x00\x00\x01", "claims 24 bytes, 8 remain"),
        (ReceiverReport(1).serialize() + b"\x80", "1 stray bytes"),
        (b"\x81\xc9\x00\x01\x00\x00\x00\x01", "too short for 1 report blocks"),
        (b"\x80\xc8\x00\x01\x00\x00\x00\x01", "SR too short"),
        (b"\x80\xc9\x00\x00", "RR too short"),
        (b"\x81\xca\x00\x01\x00\x00\x00\x01", "no terminating null item"),
        (b"\x81\xca\x00\x02\x00\x00\x00\x01\x01\x09ab", "runs past the packet"),
        (b"\x81\xcb\x00\x02\x00\x00\x00\x01\x09abc", "BYE reason of 9 bytes"),
        (b"\x82\xcb\x00\x01\x00\x00\x00\x01", "BYE too short for 2 SSRCs"),
        (b"\xa0\xc9\x00\x01\x00\x00\x00\x09", "padding count 9 invalid"),
    ],
)
def test_parse_rtcp_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RtcpError, match=message):
        parse_rtcp(data)


@given(st.binary(max_size=120))
def test_parse_rtcp_random_bytes_raises_only_rtcp_error(data: bytes) -> None:
    try:
        packets = parse_rtcp(data)
    except RtcpError:
        return
    assert packets  # at least one packet, and only known shapes
    kinds = (SenderReport, ReceiverReport, SourceDescription, Bye, RtcpUnknown)
    assert all(isinstance(p, kinds) for p in packets)


def test_build_receiver_report_is_rr_then_cname() -> None:
    block = ReportBlock(0xCAFE, 64, 10, 65546, 300, 0x12345678, 32768)
    data = build_receiver_report(0xBEEF, [block], "wcs@example")
    rr, sdes = parse_rtcp(data)
    assert rr == ReceiverReport(0xBEEF, (block,))
    assert sdes == SourceDescription((SdesChunk(0xBEEF, ((SDES_CNAME, b"wcs@example"),)),))
    theirs_rr, theirs_sdes = aiortc_rtp.RtcpPacket.parse(data)
    assert isinstance(theirs_rr, aiortc_rtp.RtcpRrPacket)
    assert isinstance(theirs_sdes, aiortc_rtp.RtcpSdesPacket)
    [info] = theirs_rr.reports
    assert (info.ssrc, info.fraction_lost, info.packets_lost) == (0xCAFE, 64, 10)
    assert (info.highest_sequence, info.jitter, info.lsr, info.dlsr) == (
        65546,
        300,
        0x12345678,
        32768,
    )
    assert theirs_sdes.chunks[0].items == [(1, b"wcs@example")]


def test_report_block_clamps_cumulative_lost_to_24_bits() -> None:
    data = ReceiverReport(1, (ReportBlock(2, 0, -(1 << 30), 0, 0),)).serialize()
    [rr] = parse_rtcp(data)
    assert isinstance(rr, ReceiverReport)
    assert rr.reports[0].cumulative_lost == -(1 << 23)


# ---------------------------------------------------------------------------
# ReceptionStats
# ---------------------------------------------------------------------------


def _packet(seq: int, ts: int = 0, ssrc: int = 77) -> RtpPacket:
    return RtpPacket(pt=96, seq=seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF, ssrc=ssrc, payload=b"")


def test_stats_before_any_packet() -> None:
    stats = ReceptionStats()
    assert stats.report_block(0.0) is None
    assert stats.expected == 0


def test_stats_in_order_then_losses_give_fraction_and_cumulative() -> None:
    stats = ReceptionStats()
    for seq in range(1000, 1100):
        stats.update(_packet(seq), 0.0)
    block = stats.report_block(1.0)
    assert block is not None
    assert (block.ssrc, block.fraction_lost, block.cumulative_lost) == (77, 0, 0)
    assert block.highest_seq == 1099
    # Next interval: 100 expected, 75 received -> fraction 25% = 64/256.
    for seq in range(1100, 1200):
        if seq % 4:
            stats.update(_packet(seq), 0.0)
    # seq 1100 was lost too (1100 % 4 == 0), the highest is 1199
    block = stats.report_block(2.0)
    assert block is not None
    assert block.fraction_lost == 64
    assert block.cumulative_lost == 25
    assert block.highest_seq == 1199


def test_stats_sequence_wraparound_extends_highest_seq() -> None:
    stats = ReceptionStats()
    for seq in range(65530, 65536 + 10):
        stats.update(_packet(seq), 0.0)
    assert stats.extended_highest_seq == 65536 + 9
    assert stats.lost == 0
    block = stats.report_block(0.0)
    assert block is not None and block.highest_seq == 65536 + 9


def test_stats_duplicates_make_lost_negative_and_reorder_is_not_loss() -> None:
    stats = ReceptionStats()
    for seq in (1, 3, 2, 3, 4):
        stats.update(_packet(seq), 0.0)
    assert stats.expected == 4
    assert stats.received == 5
    assert stats.lost == -1
    assert stats.extended_highest_seq == 4


def test_stats_restart_needs_two_sequential_packets() -> None:
    stats = ReceptionStats()
    for seq in range(10, 20):
        stats.update(_packet(seq), 0.0)
    stats.update(_packet(40000), 0.0)  # a stray: ignored
    assert stats.extended_highest_seq == 19
    assert stats.received == 10
    stats.update(_packet(40001), 0.0)  # sequential to the stray: the sender restarted
    assert stats.extended_highest_seq == 40001
    assert stats.received == 1
    assert stats.lost == 0


def test_stats_new_ssrc_starts_over() -> None:
    stats = ReceptionStats()
    stats.update(_packet(5, ssrc=1), 0.0)
    stats.update(_packet(900, ssrc=2), 0.0)
    assert stats.ssrc == 2
    assert stats.expected == 1 and stats.received == 1


def test_stats_jitter() -> None:
    stats = ReceptionStats(clock_rate=90000)
    # Constant transit: no jitter, even across the 32-bit timestamp wrap.
    for i in range(20):
        stats.update(_packet(i, ts=0xFFFFFF00 + 3000 * i), 1.0 + i / 30)
    assert stats.jitter == 0
    # One packet 10 ms late then back on time: J += (900 - J)/16, then J += (900 - J)/16.
    stats.update(_packet(20, ts=0xFFFFFF00 + 3000 * 20), 1.0 + 20 / 30 + 0.010)
    assert stats.jitter == 900 // 16
    stats.update(_packet(21, ts=0xFFFFFF00 + 3000 * 21), 1.0 + 21 / 30)
    assert stats.jitter == int(900 / 16 + (900 - 900 / 16) / 16)


def test_stats_lsr_and_dlsr_from_sender_report() -> None:
    stats = ReceptionStats()
    stats.update(_packet(1), 10.0)
    stats.on_sender_report(SenderReport(99, NTP, 0, 0, 0), 10.0)  # another source: ignored
    block = stats.report_block(11.0)
    assert block is not None and (block.lsr, block.dlsr) == (0, 0)
    sr = SenderReport(77, NTP, 0, 0, 0)
    stats.on_sender_report(sr, 10.0)
    block = stats.report_block(11.5)
    assert block is not None
    assert block.lsr == sr.lsr
    assert block.dlsr == 65536 + 32768
