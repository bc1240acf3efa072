"""Tests for wcs.rtsp.h264rtp: RFC 6184 depacketizing (exact outcomes under loss, reordering,
duplicates, wraparound) and packetizing, round-tripped through real x264 output and PyAV."""

from __future__ import annotations

import functools
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264PayloadDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.media_fixtures import Sample, h264_sample, parameter_sets
from wcs.media.h264 import (
    codec_string,
    h264_video_params,
    parse_sps,
    split_annexb,
    to_annexb,
)
from wcs.media.image import frame_to_rgb
from wcs.media.units import MediaUnit, VideoParams
from wcs.rtsp.h264rtp import (
    H264AccessUnit,
    H264Depacketizer,
    H264Packetizer,
)
from wcs.rtsp.rtp import RtpPacket

# ---------------------------------------------------------------------------
# Helpers: real parameter sets, synthetic slices (first_mb_in_slice = 0: top bit of byte 1)
# ---------------------------------------------------------------------------


@functools.cache
def params() -> tuple[bytes, bytes]:
    return parameter_sets(h264_sample())


@functools.cache
def small_params() -> tuple[bytes, bytes]:
    return parameter_sets(h264_sample(bframes=False, seconds=1, size="160x120"))


IDR = b"\x65\x88" + bytes(range(1, 250)) * 8  # ~2 KB, NRI 3
IDR_B = b"\x65\x40" + b"\x77" * 100  # second slice of a picture: first_mb_in_slice = 1
P = b"\x41\x9a" + b"\x55" * 60  # NRI 2
P2 = b"\x41\x9b" + b"\x66" * 40
AUD = b"\x09\xf0"
SEI = b"\x06\x05\x01\x80"


def rtp(seq: int, ts: int, payload: bytes, marker: bool = False, ssrc: int = 1) -> RtpPacket:
    return RtpPacket(
        pt=96,
        seq=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=payload,
        marker=marker,
    )


def stap_a(*nals: bytes) -> bytes:
    return b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def fu_a(nal: bytes, pieces: int) -> list[bytes]:
    data = nal[1:]
    step = -(-len(data) // pieces)
    out = []
    for i in range(pieces):
        header = nal[0] & 0x1F
        header |= 0x80 if i == 0 else 0
        header |= 0x40 if i == pieces - 1 else 0
        out.append(bytes([(nal[0] & 0xE0) | 28, header]) + data[i * step : (i + 1) * step])
    return out


def dep(window: int = 0, **kwargs: object) -> H264Depacketizer:
    sps, pps = params()
    return H264Depacketizer(sprop_sps=sps, sprop_pps=pps, reorder_window=window, **kwargs)  # type: ignore[arg-type]


def push_all(d: H264Depacketizer, packets: list[RtpPacket]) -> list[H264AccessUnit]:
    out: list[H264AccessUnit] = []
    for p in packets:
        out += d.push(p)
    return out


def nals_of(aus: list[H264AccessUnit]) -> list[tuple[bytes, ...]]:
    return [au.nals for au in aus]


# ---------------------------------------------------------------------------
# Packet types
# ---------------------------------------------------------------------------


def test_single_nal_units() -> None:
    sps, pps = params()
    d = dep()
    [idr] = d.push(rtp(0, 1000, IDR, marker=True))
    assert idr == H264AccessUnit(
        nals=(IDR,),
        annexb=to_annexb([sps, pps, IDR]),  # the decoder restarts here: SPS/PPS prepended
        keyframe=True,
        pts=0,
        rtp_timestamp=1000,
        sps=sps,
        pps=pps,
        params_changed=True,
        sps_info=parse_sps(sps),
    )
    [p] = d.push(rtp(1, 4000, P, marker=True))
    assert (p.nals, p.annexb, p.keyframe, p.pts, p.params_changed) == (
        (P,),
        to_annexb([P]),
        False,
        3000,
        False,
    )
    assert p.media_unit() == MediaUnit(
        "video", "H264", 3000, 3000, False, to_annexb([P]), Fraction(1, 90000)
    )
    info = parse_sps(sps)
    assert (
        idr.video_params()
        == h264_video_params(sps, pps)
        == VideoParams(
            codec="H264",
            width=320,
            height=240,
            extradata=to_annexb([sps, pps]),
            profile=codec_string(info),
        )
    )
    assert d.stats() == {
        "packets": 2,
        "lost_packets": 0,
        "duplicates": 0,
        "reordered": 0,
        "dropped_aus": 0,
        "skipped_aus": 0,
        "emitted_aus": 2,
        "unsupported": 0,
        "malformed": 0,
        "oversized": 0,
        "bad_sps": 0,
        "bad_pps": 0,
        "rejected": 0,
    }


def test_stap_a_carries_in_band_parameter_sets() -> None:
    sps, pps = params()
    d = H264Depacketizer(reorder_window=0)
    assert d.params() is None and d.sps_info is None
    assert d.push(rtp(0, 0, stap_a(AUD, sps, pps))) == []
    [au] = d.push(rtp(1, 0, IDR, marker=True))
    assert au.nals == (AUD, sps, pps, IDR)
    assert au.annexb == to_annexb([AUD, sps, pps, IDR])  # nothing to prepend
    assert d.params() == (sps, pps)
    assert d.sps_info is not None and (d.sps_info.width, d.sps_info.height) == (320, 240)


def test_keyframe_without_parameter_sets_gets_them_after_its_aud() -> None:
    sps, pps = params()
    d = dep()
    [au] = d.push(rtp(0, 0, stap_a(AUD, SEI, IDR[:300]), marker=True))
    assert au.nals == (AUD, SEI, IDR[:300])
    assert au.annexb == to_annexb([AUD, sps, pps, SEI, IDR[:300]])
    # An IDR AU carrying only its SPS gets the PPS after it.
    [au] = d.push(rtp(1, 3000, stap_a(sps, IDR[:300]), marker=True))
    assert au.annexb == to_annexb([sps, pps, IDR[:300]])


def test_fu_a_reassembles_with_the_original_header() -> None:
    d = dep()
    packets = [rtp(i, 0, frag, marker=i == 2) for i, frag in enumerate(fu_a(IDR, 3))]
    packets += [rtp(3 + i, 3000, frag, marker=i == 1) for i, frag in enumerate(fu_a(P, 2))]
    aus = push_all(d, packets)
    assert nals_of(aus) == [(IDR,), (P,)]
    assert [au.pts for au in aus] == [0, 3000]


def test_multi_slice_picture_in_one_au() -> None:
    d = dep()
    packets = [rtp(0, 0, IDR[:500]), rtp(1, 0, IDR_B, marker=True)]
    assert nals_of(push_all(d, packets)) == [(IDR[:500], IDR_B)]


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------


def test_loss_in_the_middle_of_fu_a_drops_until_next_idr() -> None:
    d = dep()
    frags = fu_a(IDR, 3)
    assert d.push(rtp(0, 0, frags[0])) == []
    assert d.push(rtp(2, 0, frags[2], marker=True)) == []  # seq 1 lost
    assert (d.lost_packets, d.dropped_aus) == (1, 1)
    assert d.push(rtp(3, 3000, P, marker=True)) == []  # predicted from the lost picture
    assert d.skipped_aus == 1
    [au] = d.push(rtp(4, 6000, IDR, marker=True))
    assert au.keyframe and au.pts == 6000
    [au] = d.push(rtp(5, 9000, P, marker=True))
    assert au.nals == (P,)


def test_lost_first_fragment_at_stream_start() -> None:
    d = dep()
    frags = fu_a(IDR, 3)
    # seq 0 (the FU-A start) never arrives: the receiver starts at seq 1, mid-NAL.
    assert push_all(d, [rtp(1, 0, frags[1]), rtp(2, 0, frags[2], marker=True)]) == []
    assert (d.lost_packets, d.dropped_aus, d.malformed) == (0, 1, 0)
    assert nals_of(push_all(d, [rtp(3, 3000, IDR, marker=True)])) == [(IDR,)]


def test_lost_last_fragment_drops_both_sides_of_the_gap() -> None:
    d = dep()
    frags = fu_a(IDR, 3)
    # seq 2 (end + marker) lost: the next AU might have lost its head too, so it goes.
    packets = [rtp(0, 0, frags[0]), rtp(1, 0, frags[1]), rtp(3, 3000, P, marker=True)]
    assert push_all(d, packets) == []
    assert (d.lost_packets, d.dropped_aus) == (1, 2)
    assert nals_of(push_all(d, [rtp(4, 6000, IDR, marker=True)])) == [(IDR,)]


def test_fu_a_without_end_is_dropped_even_without_a_gap() -> None:
    d = dep()
    frags = fu_a(IDR, 3)
    packets = [rtp(0, 0, frags[0]), rtp(1, 0, frags[1]), rtp(2, 3000, IDR, marker=True)]
    aus = push_all(d, packets)
    assert nals_of(aus) == [(IDR,)]
    assert aus[0].pts == 3000
    assert (d.lost_packets, d.dropped_aus) == (0, 1)


@pytest.mark.parametrize(
    "payloads",
    [
        [fu_a(IDR, 3)[0], fu_a(IDR, 3)[0], fu_a(IDR, 3)[2]],  # start twice
        [fu_a(IDR, 3)[0], P, fu_a(IDR, 3)[2]],  # single NAL inside an FU-A
        [fu_a(IDR, 3)[0], stap_a(SEI), fu_a(IDR, 3)[2]],  # STAP-A inside an FU-A
        [b"\x7c"],  # FU-A with no FU header
        [b"\x7c\x98" + b"x" * 10],  # FU-A wrapping an aggregation type
    ],
)
def test_broken_fu_a_sequences_drop_the_au(payloads: list[bytes]) -> None:
    d = dep()
    packets = [rtp(i, 0, p, marker=i == len(payloads) - 1) for i, p in enumerate(payloads)]
    assert push_all(d, packets) == []
    assert d.dropped_aus == 1
    assert nals_of(push_all(d, [rtp(len(payloads), 3000, IDR, marker=True)])) == [(IDR,)]


def test_joining_in_the_middle_of_a_picture_drops_it() -> None:
    d = dep()
    # The first packet seen is the second slice of an IDR picture.
    assert d.push(rtp(7, 0, IDR_B, marker=True)) == []
    assert d.dropped_aus == 1
    assert nals_of(push_all(d, [rtp(8, 3000, IDR, marker=True)])) == [(IDR,)]


def test_waits_for_an_idr_and_for_parameter_sets() -> None:
    sps, pps = params()
    d = H264Depacketizer(reorder_window=0)
    assert d.push(rtp(0, 0, P, marker=True)) == []  # no IDR yet
    assert d.push(rtp(1, 3000, IDR, marker=True)) == []  # no SPS/PPS known
    assert d.skipped_aus == 2
    [au] = d.push(rtp(2, 6000, stap_a(sps, pps, IDR[:400]), marker=True))
    assert au.nals == (sps, pps, IDR[:400])


def test_parameter_set_only_aus_are_not_emitted() -> None:
    sps, pps = params()
    d = H264Depacketizer(reorder_window=0)
    assert d.push(rtp(0, 0, stap_a(sps, pps, SEI), marker=True)) == []
    assert (d.skipped_aus, d.dropped_aus) == (0, 0)
    [au] = d.push(rtp(1, 0 + 3000, IDR, marker=True))
    assert au.annexb == to_annexb([sps, pps, IDR])


def test_empty_payload_packets_do_not_split_an_au() -> None:
    d = dep()
    frags = fu_a(IDR, 2)
    packets = [rtp(0, 0, frags[0]), rtp(1, 123456, b""), rtp(2, 0, frags[1], marker=True)]
    assert nals_of(push_all(d, packets)) == [(IDR,)]


# ---------------------------------------------------------------------------
# Reordering and duplicates
# ---------------------------------------------------------------------------


def test_reordered_within_window_is_put_back_in_place() -> None:
    d = dep(window=8)
    frags = fu_a(IDR, 3)
    assert d.push(rtp(0, 0, frags[0])) == []
    assert d.push(rtp(2, 0, frags[2], marker=True)) == []
    [au] = d.push(rtp(1, 0, frags[1]))
    assert au.nals == (IDR,)
    assert (d.reordered, d.lost_packets, d.dropped_aus) == (1, 0, 0)


def test_reordered_beyond_window_is_a_loss() -> None:
    d = dep(window=2)
    [idr] = d.push(rtp(0, 0, IDR, marker=True))
    assert idr.keyframe
    p_frames = [rtp(seq, 3000 * seq, P, marker=True) for seq in range(1, 5)]
    # Arrival order 2, 3, 4, 1: three held > window 2, so seq 1 is declared lost.
    assert push_all(d, [p_frames[1], p_frames[2], p_frames[3], p_frames[0]]) == []
    assert d.lost_packets == 1
    assert d.dropped_aus == 1  # seq 2 may have lost its head (it did not, but who knows)
    assert d.skipped_aus == 2  # seq 3, 4: predicted from lost pictures
    assert d.duplicates == 1  # seq 1, arriving after it was given up
    assert nals_of(push_all(d, [rtp(5, 15000, IDR, marker=True)])) == [(IDR,)]


def test_duplicates_are_discarded() -> None:
    d = dep(window=4)
    frags = fu_a(IDR, 3)
    packets = [rtp(0, 0, frags[0]), rtp(1, 0, frags[1]), rtp(1, 0, frags[1])]
    packets += [rtp(2, 0, frags[2], marker=True), rtp(2, 0, frags[2], marker=True)]
    packets += [rtp(0, 0, frags[0])]
    assert nals_of(push_all(d, packets)) == [(IDR,)]
    assert d.duplicates == 3
    # A duplicate still held in the reorder buffer is discarded too.
    assert push_all(d, [rtp(4, 3000, P, marker=True), rtp(4, 3000, P, marker=True)]) == []
    assert d.duplicates == 4
    assert nals_of(push_all(d, [rtp(3, 1500, P2, marker=True)])) == [(P2,), (P,)]


def test_flush_gives_up_on_missing_packets() -> None:
    d = dep(window=8)
    assert push_all(d, [rtp(0, 0, IDR, marker=True)]) != []
    assert push_all(d, [rtp(2, 6000, P, marker=True)]) == []  # held: seq 1 missing
    assert d.flush() == []  # seq 1 lost: seq 2 may be predicted from it
    assert (d.lost_packets, d.dropped_aus) == (1, 1)


# ---------------------------------------------------------------------------
# Malformed and unsupported packets, limits
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\x78" + (100).to_bytes(2, "big") + P[:10],  # length past the end
        stap_a(SEI, P) + b"\x00",  # one stray byte where a length belongs
        stap_a(SEI, fu_a(P, 2)[0]),  # aggregated FU-A
    ],
)
def test_truncated_or_invalid_stap_a_drops_the_au(payload: bytes) -> None:
    d = dep()
    assert len(d.push(rtp(0, 0, IDR, marker=True))) == 1
    assert d.push(rtp(1, 3000, payload, marker=True)) == []
    assert (d.malformed, d.dropped_aus) == (1, 1)
    assert d.push(rtp(2, 6000, P, marker=True)) == []
    assert d.skipped_aus == 1


def test_nals_of_a_truncated_stap_a_are_not_trusted() -> None:
    sps, _ = small_params()
    d = dep()
    bad = b"\x78" + len(sps).to_bytes(2, "big") + sps + (50).to_bytes(2, "big") + b"xx"
    assert d.push(rtp(0, 0, bad, marker=True)) == []
    assert d.params() == params()  # the SPS in the corrupt packet was not learned


@pytest.mark.parametrize("nal_type", [0, 25, 26, 27, 29, 30, 31])
def test_unsupported_packet_types_drop_the_au(nal_type: int) -> None:
    d = dep()
    packets = [rtp(0, 0, IDR[:300]), rtp(1, 0, bytes([0x60 | nal_type]) + b"\x00" * 20, True)]
    assert push_all(d, packets) == []
    assert (d.unsupported, d.dropped_aus) == (1, 1)
    assert nals_of(push_all(d, [rtp(2, 3000, IDR, marker=True)])) == [(IDR,)]


def test_oversized_au_is_dropped_until_next_idr() -> None:
    d = dep(max_au_bytes=1000)
    big = IDR[:1500]
    packets = [rtp(i, 0, f, marker=i == 2) for i, f in enumerate(fu_a(big, 3))]
    packets.append(rtp(3, 3000, P, marker=True))
    assert push_all(d, packets) == []
    assert (d.oversized, d.dropped_aus, d.skipped_aus) == (1, 1, 1)
    # Single NAL units adding up past the limit.
    assert push_all(d, [rtp(4, 6000, IDR[:600]), rtp(5, 6000, IDR[:600], True)]) == []
    assert (d.oversized, d.dropped_aus) == (2, 2)
    assert nals_of(push_all(d, [rtp(6, 9000, IDR[:900], marker=True)])) == [(IDR[:900],)]


def test_too_many_nal_units_is_dropped() -> None:
    d = dep(max_nals=2)
    assert d.push(rtp(0, 0, stap_a(AUD, SEI, IDR[:100]), marker=True)) == []
    assert (d.oversized, d.dropped_aus) == (1, 1)
    assert nals_of(push_all(d, [rtp(1, 3000, stap_a(AUD, IDR[:100]), True)])) == [(AUD, IDR[:100])]


@pytest.mark.parametrize(
    ("packets", "reason"),
    [
        ([b"\xe5\x88" + IDR[2:200]], "NAL unit with its forbidden_zero_bit set"),
        ([stap_a(SEI, b"\xc1\x9a" + P[2:])], "STAP-A holding a NAL unit of type 1"),
        ([b"\x7c"], "FU-A with a bad header"),
        ([fu_a(P, 3)[1], fu_a(P, 3)[2]], "FU-A without its start"),
        ([fu_a(P, 3)[0], fu_a(P, 3)[0]], "FU-A without its end"),
        ([fu_a(P, 3)[0], P], "FU-A without its end"),
        ([fu_a(P, 3)[0]], "access unit ending inside an FU-A"),
        ([b"\x79" + b"\x00" * 10], "unsupported RTP packet type 25"),
    ],
)
def test_malformed_aus_are_rejected_and_counted_in_a_run(packets: list[bytes], reason: str) -> None:
    """Finding 17: each malformed AU is dropped and counted with its reason; the run of them
    ends at the next AU emitted."""
    d = dep()
    assert len(d.push(rtp(0, 0, IDR, marker=True))) == 1
    seq = 1
    for n in range(1, 4):
        push_all(d, [rtp(seq + i, 3000 * n, pl) for i, pl in enumerate(packets)])
        seq += len(packets)
        assert d.push(rtp(seq, 3000 * n + 1, P, marker=False)) == []  # new timestamp: AU ends
        seq += 1
        assert (d.rejected, d.bad_run, d.last_rejection) == (n, n, reason)
    # Back to a decodable stream: the next IDR is emitted and the run is over.
    assert len(push_all(d, [rtp(seq, 99000, IDR, marker=True)])) == 1
    assert d.bad_run == 0 and d.rejected == 3


def test_a_loss_is_not_the_senders_fault() -> None:
    d = dep(window=2)
    assert len(d.push(rtp(0, 0, IDR, marker=True))) == 1
    first, _middle, last = fu_a(P, 3)
    push_all(d, [rtp(1, 3000, first), rtp(3, 3000, last, True), rtp(4, 6000, P), rtp(5, 9000, P)])
    assert d.lost_packets == 1 and d.dropped_aus >= 1
    assert (d.rejected, d.bad_run) == (0, 0)


@pytest.mark.parametrize("pps", [b"\x68", b"\x68\x00\x00"])
def test_unusable_pps_is_dropped_and_counted(pps: bytes) -> None:
    sps, good_pps = params()
    d = dep()
    [au] = d.push(rtp(0, 0, stap_a(sps, pps, IDR[:100]), marker=True))
    assert (d.bad_pps, d.rejected, d.bad_run) == (1, 1, 0)
    assert d.last_rejection == f"unusable PPS of {len(pps)} bytes"
    assert au.pps == good_pps and au.annexb == to_annexb([sps, good_pps, IDR[:100]])
    # A bad PPS in sprop is not kept either.
    d = H264Depacketizer(sprop_sps=sps, sprop_pps=pps, reorder_window=0)
    assert d.params() is None and d.rejected == 1


def test_picture_over_max_pixels_is_never_emitted() -> None:
    """Finding 2 at the RTP ingest: the SPS of a picture larger than max_pixels (sprop or
    in-band) is refused, so no AU of it reaches a decoder; smaller pictures still pass."""
    sps, pps = params()  # 320x240
    small_sps, small_pps = small_params()  # 160x120
    d = H264Depacketizer(sprop_sps=sps, sprop_pps=pps, reorder_window=0, max_pixels=320 * 240 - 1)
    assert d.params() is None and d.video_params() is None
    assert d.rejected == 1 and "larger than the limit of 76799 pixels" in d.last_rejection
    assert d.push(rtp(0, 0, stap_a(sps, pps, IDR[:100]), marker=True)) == []
    assert d.push(rtp(1, 3000, P, marker=True)) == []
    assert (d.rejected, d.bad_run, d.skipped_aus) == (2, 0, 2)
    # The encoder drops to a size within the limit: pictures flow again.
    [au] = d.push(rtp(2, 6000, stap_a(small_sps, small_pps, IDR[:100]), marker=True))
    assert au.video_params().width == 160


def test_constructor_limits() -> None:
    with pytest.raises(ValueError, match="reorder window"):
        H264Depacketizer(reorder_window=100)
    with pytest.raises(ValueError, match="clock rate"):
        H264Depacketizer(clock_rate=0)


# ---------------------------------------------------------------------------
# Wraparound, timestamps, sources
# ---------------------------------------------------------------------------


def test_sequence_number_wraparound() -> None:
    d = dep(window=4)
    frags = fu_a(IDR, 3)
    packets = [rtp(65534, 0, frags[0]), rtp(65535, 0, frags[1]), rtp(0, 0, frags[2], True)]
    packets.append(rtp(1, 3000, P, marker=True))
    assert nals_of(push_all(d, packets)) == [(IDR,), (P,)]
    assert (d.lost_packets, d.reordered, d.duplicates) == (0, 0, 0)


def test_timestamp_wraparound_and_b_frame_order() -> None:
    d = dep()
    base = (1 << 32) - 3000
    packets = [
        rtp(0, base, IDR, marker=True),
        rtp(1, base + 9000, P, marker=True),  # wrapped to 6000
        rtp(2, base + 3000, P2, marker=True),  # a B-frame: presented earlier, wrapped to 0
        rtp(3, base + 6000, P2, marker=True),
    ]
    aus = push_all(d, packets)
    assert [au.pts for au in aus] == [0, 9000, 3000, 6000]
    assert [au.rtp_timestamp for au in aus] == [base, 6000, 0, 3000]


def test_clock_rate_other_than_90k_is_rescaled() -> None:
    d = dep(clock_rate=45000)
    aus = push_all(d, [rtp(0, 100, IDR, marker=True), rtp(1, 1600, P, marker=True)])
    assert [au.pts for au in aus] == [0, 3000]


def test_marker_less_stream_ends_aus_on_timestamp_change() -> None:
    d = dep()
    frags = fu_a(IDR, 2)
    assert push_all(d, [rtp(0, 0, frags[0]), rtp(1, 0, frags[1])]) == []
    assert nals_of(d.push(rtp(2, 3000, P))) == [(IDR,)]
    assert nals_of(d.push(rtp(3, 6000, P2))) == [(P,)]
    # The last AU is never known to be complete.
    assert d.flush() == []
    assert d.emitted_aus == 2


def test_marker_inside_an_au_switches_to_timestamps() -> None:
    d = dep()
    # A sender setting the marker on every slice: the first slice alone was emitted.
    [first] = d.push(rtp(0, 0, IDR[:500], marker=True))
    assert first.nals == (IDR[:500],)
    assert d.push(rtp(1, 0, IDR_B, marker=True)) == []  # same timestamp: markers are wrong
    assert d.push(rtp(2, 3000, P, marker=True)) == []  # the AU with the second slice is gone
    assert d.dropped_aus == 1
    # The P-frame (predicted from a half picture) ends at the next timestamp and is skipped.
    assert push_all(d, [rtp(3, 6000, IDR[:500], True), rtp(4, 6000, IDR_B, True)]) == []
    assert d.skipped_aus == 1
    assert nals_of(d.push(rtp(5, 9000, P, marker=True))) == [(IDR[:500], IDR_B)]


def test_ssrc_change_resyncs_at_the_next_idr() -> None:
    d = dep()
    [a] = d.push(rtp(0, 5000, IDR, marker=True, ssrc=1))
    assert d.push(rtp(500, 777777, P, marker=True, ssrc=2)) == []  # head unknown: dropped
    assert d.push(rtp(501, 780777, P, marker=True, ssrc=2)) == []  # no IDR yet: skipped
    [b] = d.push(rtp(502, 783777, IDR, marker=True, ssrc=2))
    assert (d.dropped_aus, d.skipped_aus) == (1, 1)
    assert a.pts == 0 and b.pts == 1 + 6000  # the timeline continues across sources


def test_sequence_restart_needs_two_packets() -> None:
    d = dep()
    assert len(d.push(rtp(1000, 0, IDR, marker=True))) == 1
    assert d.push(rtp(10, 3000, P, marker=True)) == []  # far behind: a stray until confirmed
    assert d.duplicates == 1
    # seq 11 follows the stray: the sender restarted. Its AU may have lost its head.
    assert d.push(rtp(11, 6000, IDR, marker=True)) == []
    assert d.dropped_aus == 1
    assert nals_of(push_all(d, [rtp(12, 9000, IDR, True), rtp(13, 12000, P, True)])) == [
        (IDR,),
        (P,),
    ]


def test_sprop_and_in_band_parameter_sets() -> None:
    sps, pps = params()
    sps2, pps2 = small_params()
    d = dep()
    [a] = d.push(rtp(0, 0, IDR, marker=True))
    assert (a.sps, a.pps, a.params_changed) == (sps, pps, True)
    # The encoder changes resolution: new SPS/PPS in-band with the next IDR.
    [b] = d.push(rtp(1, 3000, stap_a(sps2, pps2, IDR[:200]), marker=True))
    assert (b.sps, b.pps, b.params_changed) == (sps2, pps2, True)
    assert (b.video_params().width, b.video_params().height) == (160, 120)
    assert d.sps_info is not None and d.sps_info.width == 160
    [c] = d.push(rtp(2, 6000, P, marker=True))
    assert (c.sps, c.params_changed) == (sps2, False)
    [e] = d.push(rtp(3, 9000, IDR, marker=True))
    assert e.annexb == to_annexb([sps2, pps2, IDR])
    assert not e.params_changed


def test_unreadable_sps_is_dropped_and_the_last_good_one_used() -> None:
    sps, pps = params()
    d = dep()
    [au] = d.push(rtp(0, 0, stap_a(b"\x67\x64", IDR[:100]), marker=True))
    assert (d.bad_sps, d.rejected, d.bad_run) == (1, 1, 0)
    assert d.last_rejection.startswith("unusable SPS: ")
    assert au.sps == sps
    assert au.nals == (IDR[:100],)
    assert au.annexb == to_annexb([sps, pps, IDR[:100]])  # the readable ones replace it
    # Repeated with every IDR: counted each time, parsed once.
    [au] = d.push(rtp(1, 3000, stap_a(b"\x67\x64", IDR[:100]), marker=True))
    assert (d.bad_sps, d.rejected) == (2, 2) and au.annexb == to_annexb([sps, pps, IDR[:100]])


# ---------------------------------------------------------------------------
# Packetizer
# ---------------------------------------------------------------------------


def test_packetizer_stap_a_single_and_fu_a() -> None:
    sps, pps = params()
    big = (IDR * 2)[:3000]
    pk = H264Packetizer(96, 0xABC, mtu=1200, initial_seq=100, timestamp_offset=1000)
    packets = pk.packetize(to_annexb([AUD, sps, pps, big, P]), 3000)
    assert [p.seq for p in packets] == [100, 101, 102, 103, 104]
    assert [p.marker for p in packets] == [False, False, False, False, True]
    assert {p.timestamp for p in packets} == {4000}
    assert {(p.pt, p.ssrc) for p in packets} == {(96, 0xABC)}
    assert all(len(p.serialize()) <= 1200 for p in packets)
    assert packets[0].payload == bytes([0x60 | 24]) + b"".join(
        len(n).to_bytes(2, "big") + n for n in (AUD, sps, pps)
    )
    fu_headers = [p.payload[:2] for p in packets[1:4]]
    assert fu_headers == [b"\x7c\x85", b"\x7c\x05", b"\x7c\x45"]
    assert b"".join(p.payload[2:] for p in packets[1:4]) == big[1:]
    assert packets[4].payload == P  # alone: nothing after it to aggregate
    assert pk.packet_count == 5
    assert pk.octet_count == sum(len(p.payload) for p in packets)
    assert pk.seq == 105


def test_packetizer_without_aggregation_and_wraparound() -> None:
    pk = H264Packetizer(97, 1, initial_seq=65535, timestamp_offset=(1 << 32) - 1, aggregate=False)
    packets = pk.packetize(to_annexb([SEI, P]), 2)
    assert [(p.seq, p.timestamp, p.payload) for p in packets] == [(65535, 1, SEI), (0, 1, P)]
    assert pk.packetize(b"", 5) == []  # no NAL unit, no packet
    assert pk.seq == 1


def test_packetizer_defaults_are_random_and_checked() -> None:
    pk = H264Packetizer(96, 5)
    assert 0 <= pk.seq <= 0xFFFF and 0 <= pk.timestamp_offset <= 0xFFFFFFFF
    with pytest.raises(ValueError, match="payload type"):
        H264Packetizer(128, 5)
    with pytest.raises(ValueError, match="MTU"):
        H264Packetizer(96, 5, mtu=20)


def test_packetizer_output_reads_back_with_aiortc() -> None:
    """aiortc's RFC 6184 depacketizer rebuilds the same Annex B access unit."""
    sample = h264_sample()
    pk = H264Packetizer(96, 5, mtu=600)
    for unit in sample.units[:10]:
        rebuilt = b"".join(
            H264PayloadDescriptor.parse(p.payload)[1] for p in pk.packetize(unit.data, 0)
        )
        assert split_annexb(rebuilt) == split_annexb(unit.data)


# ---------------------------------------------------------------------------
# Round trips with real x264 output, decoded by PyAV
# ---------------------------------------------------------------------------


def decode(
    sample: Sample, aus: list[H264AccessUnit], base_pts: int
) -> list[tuple[int, np.ndarray]]:
    ctx = av.CodecContext.create("h264", "r")
    frames = []
    packets: list[av.Packet | None] = []
    for au in aus:
        unit = au.media_unit()
        packet = av.Packet(unit.data)
        packet.pts = packet.dts = unit.pts + base_pts
        packets.append(packet)
    for pending in [*packets, None]:
        for frame in ctx.decode(pending):
            assert (frame.width, frame.height) == (sample.width, sample.height)
            assert frame.pts is not None
            frames.append((frame.pts, frame_to_rgb(frame)))
    return frames


def packetized(
    sample: Sample, mtu: int, initial_seq: int | None = None, timestamp_offset: int | None = None
) -> list[list[RtpPacket]]:
    pk = H264Packetizer(
        96, 0x1234, mtu=mtu, initial_seq=initial_seq, timestamp_offset=timestamp_offset
    )
    return [pk.packetize(u.data, u.pts) for u in sample.units]


@pytest.mark.parametrize("bframes", [True, False])
def test_round_trip_real_stream_decodes_every_frame(bframes: bool) -> None:
    sample = h264_sample(bframes=bframes)
    base = sample.units[0].pts
    d = H264Depacketizer(reorder_window=0)  # in-band SPS/PPS only, like ffmpeg's RTSP output
    aus = push_all(d, [p for group in packetized(sample, 1200) for p in group])
    assert len(aus) == len(sample.units)
    for au, unit in zip(aus, sample.units, strict=True):
        assert au.nals == tuple(split_annexb(unit.data))
        assert au.keyframe == unit.keyframe
        assert au.pts == unit.pts - base
    frames = decode(sample, aus, base)
    assert len(frames) == len(sample.units)
    for pts, rgb in frames:
        assert np.array_equal(rgb, sample.frames[pts])  # bit-exact: nothing lost or reordered


def test_round_trip_with_loss_never_gives_a_damaged_picture() -> None:
    sample = h264_sample()
    base = sample.units[0].pts
    groups = packetized(sample, 400)
    victim = next(i for i in range(5, len(groups)) if len(groups[i]) >= 3)
    assert victim < 30 and not sample.units[victim].keyframe
    del groups[victim][1]  # a middle FU-A fragment of one P/B picture
    d = H264Depacketizer(reorder_window=8)
    aus = push_all(d, [p for group in groups for p in group])
    emitted = [u.pts for u in sample.units]
    indices = [emitted.index(au.pts + base) for au in aus]
    # Everything before the loss, then nothing until the next IDR (unit 30), then all.
    assert indices == [*range(victim), *range(30, len(sample.units))]
    assert (d.lost_packets, d.dropped_aus, d.skipped_aus) == (1, 1, 30 - victim - 1)
    frames = decode(sample, aus, base)
    assert len(frames) == len(aus)
    for pts, rgb in frames:
        assert np.array_equal(rgb, sample.frames[pts])


# ---------------------------------------------------------------------------
# Property: random loss, reordering and duplication
# ---------------------------------------------------------------------------


@functools.cache
def fuzz_stream() -> tuple[Sample, list[list[RtpPacket]]]:
    sample = h264_sample()
    units = Sample(sample.units[:45], {}, sample.width, sample.height)
    # Start close to both wraparounds so every run crosses them.
    groups = packetized(units, 500, initial_seq=65480, timestamp_offset=(1 << 32) - 40000)
    return units, groups


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # (unit, packet within it): losses at the head of an AU are the tricky ones, so aim there.
    # Units 29/30 end the first GOP and start the second (the IDR).
    drops=st.sets(
        st.tuples(st.sampled_from([29, 30]) | st.integers(0, 44), st.integers(0, 3)), max_size=8
    ),
    moves=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 12)), max_size=6),
    dups=st.sets(st.integers(0, 400), max_size=5),
    window=st.integers(0, 8),
    markers=st.booleans(),
)
def test_random_loss_reorder_duplication(
    drops: set[tuple[int, int]],
    moves: list[tuple[int, int]],
    dups: set[int],
    window: int,
    markers: bool,
) -> None:
    sample, groups = fuzz_stream()
    sent = [p for group in groups for p in group]
    starts = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]
    dropped = {starts[u] + min(k, len(groups[u]) - 1) for u, k in drops} - {0}
    if not markers:
        sent = [RtpPacket(p.pt, p.seq, p.timestamp, p.ssrc, p.payload) for p in sent]
    n = len(sent)
    # The stream starts at the first packet received: packet 0 always arrives first.
    order = list(range(n))
    for index, distance in moves:
        if 0 < index < n:
            order.remove(index)
            order.insert(min(order.index(index - 1) + 1 + distance, len(order)), index)
    arrivals = []
    for index in order:
        if index in dropped:
            continue
        arrivals.append(sent[index])
        if index in dups:
            arrivals.append(sent[index])

    d = H264Depacketizer(reorder_window=window)
    aus = push_all(d, arrivals) + d.flush()

    by_pts = {u.pts - sample.units[0].pts: i for i, u in enumerate(sample.units)}
    indices = [by_pts[au.pts] for au in aus]
    assert indices == sorted(set(indices))  # decode order, each AU once
    emitted = set(indices)
    for au, i in zip(aus, indices, strict=True):
        unit = sample.units[i]
        assert au.nals == tuple(split_annexb(unit.data))  # sent, and received, in full
        assert au.keyframe == unit.keyframe
        if not au.keyframe:
            last_idr = max(k for k in range(i + 1) if sample.units[k].keyframe)
            assert set(range(last_idr, i)) <= emitted  # an unbroken chain since the IDR
    if not dropped and not moves:
        expected = len(sample.units) - (0 if markers else 1)
        assert indices == list(range(expected))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40),
            st.integers(0, 5),
            st.binary(max_size=30),
            st.booleans(),
            st.integers(1, 2),
        ),
        max_size=40,
    ),
)
def test_garbage_packets_never_raise(packets: list[tuple[int, int, bytes, bool, int]]) -> None:
    d = dep(window=3)
    for seq, ts, payload, marker, ssrc in packets:
        for au in d.push(rtp(seq, ts * 3000, payload, marker, ssrc)):
            assert au.nals and au.annexb.startswith(b"\x00\x00\x00\x01")
    d.flush()
