"""wcs.webrtc.peer without sockets: encoded-frame ingest (real H.264 and VP8), the receiver tap,
codec choice, the play track's relay/transcode, and the ICE timeout."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.video.frame import VideoFrame
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent

from tests.unit.media_fixtures import h264_sample
from wcs.media import h264
from wcs.media.decoder import StreamDecoder
from wcs.media.image import frame_to_rgb
from wcs.media.units import MS, MediaUnit, VideoParams
from wcs.streams import Stream
from wcs.webrtc import peer as peer_mod
from wcs.webrtc.peer import (
    ICE_TIMEOUT,
    KEYFRAME_INTERVAL,
    MAX_PLAY_QUEUE,
    PLI_MIN_GAP,
    VIDEO_CLOCK,
    VIDEO_TIME_BASE,
    EncodedFrameTap,
    EncodedIngest,
    PeerError,
    PlayPeer,
    PublishPeer,
    StreamTrack,
    choose_play_codec,
    offered_video_codecs,
    tap_receiver,
    vp8_frame_info,
)

CHROME_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:0",
        "a=recvonly",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 102",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:1",
        "a=recvonly",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:98 VP9/90000",
        "a=rtpmap:99 rtx/90000",
        "a=fmtp:99 apt=98",
        "a=rtpmap:102 H264/90000",
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "",
    ]
)


def vp8_frames(n: int = 6, size: tuple[int, int] = (160, 96)) -> list[bytes]:
    """Real VP8 frames from libvpx: a keyframe, then inter frames."""
    width, height = size
    ctx: Any = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    out: list[bytes] = []
    for i in range(n):
        frame = VideoFrame.from_ndarray(
            np.full((height, width, 3), 30 + i * 30, np.uint8), format="rgb24"
        )
        frame.pts = i
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return out


class Plis:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def ingest_for(stream: Stream, clock: Clock) -> tuple[EncodedIngest, Plis]:
    plis = Plis()
    return EncodedIngest(stream, plis, clock.seconds), plis


# -- pure helpers ---------------------------------------------------------------------------------
def test_vp8_frame_info() -> None:
    frames = vp8_frames()
    assert vp8_frame_info(frames[0]) == (True, 160, 96)
    assert all(vp8_frame_info(f) == (False, 0, 0) for f in frames[1:])
    for bad in (b"", b"\x00\x00", b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", frames[0][:8]):
        with pytest.raises(ValueError):
            vp8_frame_info(bad)


def test_offered_codecs_and_choice() -> None:
    offered = offered_video_codecs(CHROME_OFFER)
    assert offered == ["VP8", "RTX", "VP9", "H264"]
    assert choose_play_codec(offered, "H264") == "H264"  # relay beats the browser's preference
    assert choose_play_codec(offered, "VP8") == "VP8"
    assert choose_play_codec(offered, None) == "VP8"  # unknown source: the browser's first
    assert choose_play_codec(["H264"], "VP8") == "H264"  # transcode
    assert choose_play_codec(["VP9", "AV1"], "H264") is None


# -- ingest ---------------------------------------------------------------------------------------
def test_h264_ingest_gives_decodable_annexb_units() -> None:
    sample = h264_sample(bframes=False)
    clock = Clock()
    stream = Stream("cam", "WebRTC")
    ingest, plis = ingest_for(stream, clock)
    pushed: list[MediaUnit] = []
    stream.add_reader(pushed.append)
    for unit in sample.units:
        ts = int(unit.pts * unit.time_base * VIDEO_CLOCK)
        ingest.video("H264", unit.data, ts)
        clock.advance(1 / 30)
    assert stream.video is not None
    assert (stream.video.codec, stream.video.width, stream.video.height) == ("H264", 320, 240)
    assert h264.split_annexb(stream.video.extradata)[0][0] & 0x1F == h264.NAL_SPS
    assert [u.keyframe for u in pushed] == [u.keyframe for u in sample.units]
    assert all(u.time_base == VIDEO_TIME_BASE and u.pts == u.dts for u in pushed)
    assert plis.count == 0  # a keyframe every second: nothing to ask for
    # The snapshot decoder decodes the cached GOP to the exact source picture.
    assert stream.gop is not None
    frame = StreamDecoder().newest(stream.gop, len(stream.gop.units))
    assert frame is not None
    last = sample.units[-1]
    assert np.array_equal(frame_to_rgb(frame.frame), sample.frames[last.pts])


def test_h264_without_parameter_sets_is_dropped_and_a_keyframe_requested() -> None:
    sample = h264_sample(bframes=False)
    clock = Clock()
    stream = Stream("cam", "WebRTC")
    ingest, plis = ingest_for(stream, clock)
    inter = next(u for u in sample.units if not u.keyframe)
    ingest.video("H264", inter.data, 0)
    ingest.video("H264", inter.data, 3000)  # within PLI_MIN_GAP: not asked again
    assert stream.video_units == 0 and plis.count == 1 and ingest.dropped == 2
    clock.advance(PLI_MIN_GAP)
    ingest.video("H264", b"\x00\x00\x00\x01", 6000)  # nothing in it
    assert plis.count == 2


def test_long_gop_asks_for_a_keyframe_spaced_by_the_min_gap() -> None:
    frames = vp8_frames(3)
    clock = Clock()
    stream = Stream("cam", "WebRTC")
    ingest, plis = ingest_for(stream, clock)
    ingest.video("VP8", frames[0], 0)
    step = VIDEO_CLOCK // 30
    ts = 0
    while ts + step <= KEYFRAME_INTERVAL * VIDEO_CLOCK:
        ts += step
        ingest.video("VP8", frames[1], ts)
        clock.advance(1 / 30)
    assert plis.count == 0
    for _ in range(60):  # two more seconds of a GOP that is too long
        ts += step
        ingest.video("VP8", frames[1], ts)
        clock.advance(1 / 30)
    assert plis.count == int(2 / PLI_MIN_GAP)
    ingest.video("VP8", frames[0], ts + step)  # the keyframe arrives: no more asking
    clock.advance(PLI_MIN_GAP)
    ingest.video("VP8", frames[1], ts + 2 * step)
    assert plis.count == int(2 / PLI_MIN_GAP)


def test_vp8_ingest_and_decode() -> None:
    frames = vp8_frames()
    stream = Stream("cam", "WebRTC")
    ingest, _ = ingest_for(stream, Clock())
    ingest.video("VP8", frames[1], 0)  # an inter frame first: nothing to decode it from
    assert stream.video is None and stream.gop is None
    for i, data in enumerate(frames):
        ingest.video("VP8", data, i * 3000)
    assert stream.video == VideoParams(codec="VP8", width=160, height=96)
    assert stream.gop is not None and len(stream.gop.units) == len(frames)
    frame = StreamDecoder().newest(stream.gop, len(stream.gop.units))
    assert frame is not None and (frame.frame.width, frame.frame.height) == (160, 96)


def test_ingest_bounds_and_other_codecs(log_events: list[LogEvent]) -> None:
    stream = Stream("cam", "WebRTC")
    ingest, plis = ingest_for(stream, Clock())
    ingest.video("VP8", b"\x00" * (peer_mod.MAX_FRAME_BYTES + 1), 0)
    assert stream.video_units == 0 and plis.count == 1
    ingest.video("VP8", b"\x00\x00\x00garbage-not-vp8", 0)  # a 'keyframe' without start code
    assert stream.video_units == 0
    ingest.video("VP9", b"\x01\x02", 0)
    assert stream.video == VideoParams(codec="VP9") and stream.video_units == 0
    ingest.audio("opus", b"\xfc\x01", 960)
    assert stream.audio_codec == "OPUS" and stream.audio_units == 1


# -- the receiver tap -----------------------------------------------------------------------------
def test_tap_delivers_encoded_frames_and_survives_errors(log_events: list[LogEvent]) -> None:
    got: list[tuple[str, bytes, int]] = []
    tap = EncodedFrameTap(lambda c, d, t: got.append((c, d, t)))
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    tap.put((codec, JitterFrame(b"abc", 1234)))
    assert got == [("VP8", b"abc", 1234)]

    def boom(c: str, d: bytes, t: int) -> None:
        raise RuntimeError("bug")

    EncodedFrameTap(boom).put((codec, JitterFrame(b"x", 1)))
    assert any(e.get("log_failure") is not None for e in log_events)
    tap.put(None)
    tap.get()  # returns (rather than blocks): the idle decoder thread would exit here


def test_tap_receiver_replaces_aiortcs_decoder_queue() -> None:
    async def main() -> None:
        transport = RTCDtlsTransport(
            RTCIceTransport(RTCIceGatherer(iceServers=[])), [RTCCertificate.generateCertificate()]
        )
        receiver = RTCRtpReceiver("video", transport)
        tap_receiver(receiver, lambda c, d, t: None)
        assert isinstance(getattr(receiver, peer_mod._RECEIVER_QUEUE), EncodedFrameTap)
        with pytest.raises(PeerError):
            tap_receiver(object(), lambda c, d, t: None)  # type: ignore[arg-type]

    asyncio.run(main())


# -- the play track -------------------------------------------------------------------------------
def rtmp_like_units(bframes: bool = False) -> tuple[VideoParams, list[MediaUnit]]:
    """The H.264 sample as RTMP delivers it: SPS/PPS out of band, AUs without them, ms times."""
    sample = h264_sample(bframes=bframes)
    first = h264.split_annexb(sample.units[0].data)
    ps = [n for n in first if h264.nal_type(n) in (h264.NAL_SPS, h264.NAL_PPS)]
    params = VideoParams("H264", 320, 240, h264.to_annexb(ps))
    units = []
    for u in sample.units:
        nals = [n for n in h264.split_annexb(u.data) if h264.nal_type(n) not in (7, 8)]
        pts, dts = int(u.pts * u.time_base * 1000), int(u.dts * u.time_base * 1000)
        units.append(MediaUnit("video", "H264", pts, dts, u.keyframe, h264.to_annexb(nals), MS))
    return params, units


def run_track(body: Callable[[], Any]) -> None:
    asyncio.run(body())


def rtmp_like_stream(
    bframes: bool = False,
) -> tuple[VideoParams, list[MediaUnit], Stream, Plis]:
    """A stream with the RTMP-like units' parameters whose publisher counts keyframe requests."""
    params, units = rtmp_like_units(bframes)
    stream = Stream("cam", "Flash")
    stream.set_video_params(params)
    asked = Plis()
    stream.keyframe_requester = asked
    return params, units, stream, asked


def test_track_relays_from_a_keyframe_with_parameter_sets_in_band() -> None:
    params, units, stream, asked = rtmp_like_stream()

    async def body() -> None:
        track = StreamTrack(stream, "H264")
        assert asked.count == 1  # a new player asks for a keyframe
        stream.push(units[1])  # mid-GOP: skipped
        for u in units[30:33]:  # a keyframe and two more
            stream.push(u)
        packets = [await track.recv() for _ in range(3)]
        assert all(isinstance(p, av.Packet) for p in packets)
        key = bytes(packets[0])
        assert key.startswith(params.extradata) and key.endswith(units[30].data)
        assert bytes(packets[1]) == units[31].data
        assert packets[1].pts == units[31].pts and packets[1].time_base == MS
        assert track.relayed == 3 and track.transcoded == 0
        stream.end()
        with pytest.raises(MediaStreamError):
            await track.recv()

    run_track(body)


def test_track_skips_to_a_keyframe_when_the_player_lags() -> None:
    _, units, stream, asked = rtmp_like_stream()

    async def body() -> None:
        track = StreamTrack(stream, "H264")
        gop = units[30:60]
        for i in range(MAX_PLAY_QUEUE + 5):
            stream.push(gop[i % len(gop)] if i else units[30])
        assert asked.count == 2  # overflow: the queue is dropped and a keyframe asked for
        stream.push(units[60])  # the next keyframe restarts the flow
        packet = await track.recv()
        assert bytes(packet).endswith(units[60].data)
        track.stop()
        assert stream.readers == []

    run_track(body)


def test_track_transcodes_another_codec() -> None:
    frames = vp8_frames()
    stream = Stream("cam", "WebRTC")
    ingest, _ = ingest_for(stream, Clock())

    pool_jobs: list[object] = []

    def run_in_pool(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        pool_jobs.append(f)  # the service's pool, not asyncio's default executor
        return maybeDeferred(f, *args)

    async def body() -> None:
        track = StreamTrack(stream, "H264", run_in_pool)
        for i, data in enumerate(frames):
            ingest.video("VP8", data, i * 3000)
        frame = await asyncio.wait_for(track.recv(), 10)
        assert isinstance(frame, VideoFrame) and (frame.width, frame.height) == (160, 96)
        assert frame.time_base == VIDEO_TIME_BASE
        assert track.transcoded == 1 and track.relayed == 0
        assert pool_jobs == [track._decode]
        track.stop()

    run_track(body)


# -- the peer's ICE timeout -----------------------------------------------------------------------
def test_bad_offer_fails_and_a_peer_that_never_connects_times_out() -> None:
    clock = Clock()
    stream = Stream("cam", "WebRTC")
    failed: list[str] = []
    connected: list[int] = []

    async def body() -> None:
        peer = PublishPeer(stream, clock, lambda: connected.append(1), failed.append)
        assert stream.keyframe_requester == peer.ingest.request_keyframe
        with pytest.raises(PeerError) as err:
            await peer.answer("this is not SDP").asFuture(asyncio.get_running_loop())
        assert err.value.info == "Unusable SDP offer"
        clock.advance(ICE_TIMEOUT)
        assert failed == ["Failed by ICE timeout"] and connected == []
        await peer.close().asFuture(asyncio.get_running_loop())
        assert stream.keyframe_requester is None

    run_track(body)


def test_closing_cancels_the_ice_timer() -> None:
    clock = Clock()
    failed: list[str] = []

    async def body() -> None:
        peer = PublishPeer(Stream("cam", "WebRTC"), clock, lambda: None, failed.append)
        d = peer.answer("bad")
        d.addErrback(lambda f: None)
        await peer.close().asFuture(asyncio.get_running_loop())
        clock.advance(ICE_TIMEOUT)
        assert failed == [] and not clock.getDelayedCalls()

    run_track(body)


def test_track_transcodes_h264_with_bframes() -> None:
    _, units, stream, _ = rtmp_like_stream(bframes=True)
    assert any(u.pts != u.dts for u in units)

    async def body() -> None:
        track = StreamTrack(stream, "H264")
        for u in units[:30]:
            stream.push(u)
        frame = await asyncio.wait_for(track.recv(), 10)
        assert isinstance(frame, VideoFrame) and (frame.width, frame.height) == (320, 240)
        assert track.reordered and track.relayed == 0
        track.stop()

    run_track(body)


# -- hostile offers and pictures (#6) -------------------------------------------------------------
def _without(prefix: str) -> str:
    return "\r\n".join(line for line in CHROME_OFFER.split("\r\n") if not line.startswith(prefix))


_NO_VIDEO_CODECS = "\r\n".join(
    line
    for line in CHROME_OFFER.replace(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 102", "m=video 9 UDP/TLS/RTP/SAVPF"
    ).split("\r\n")
    if not line.startswith(("a=rtpmap:9", "a=rtpmap:102", "a=fmtp:"))
)

# Real offers aiortc meets with an AssertionError, IndexError, AttributeError or KeyError (found by
# mutating Chromium's offer; see the fuzz target websdk_frame), and the plain bad ones.
BAD_OFFERS = {
    "m=video without codecs (AssertionError)": _NO_VIDEO_CODECS,
    "c= line without address (AssertionError)": CHROME_OFFER.replace(
        "c=IN IP4 0.0.0.0", "c=IN IP4"
    ),
    "a=candidate cut short (AssertionError)": CHROME_OFFER.replace(
        "a=rtcp-mux", "a=rtcp-mux\r\na=candidate:1 1 udp"
    ),
    "a=rtpmap without clock rate (IndexError)": CHROME_OFFER.replace(
        "a=rtpmap:96 VP8/90000", "a=rtpmap:96 VP8"
    ),
    "a=rtcp-fb without value (IndexError)": CHROME_OFFER.replace(
        "a=rtcp-mux", "a=rtcp-mux\r\na=rtcp-fb:96"
    ),
    "no a=setup (AttributeError)": _without("a=setup"),
    "a=setup:holdconn (KeyError)": CHROME_OFFER.replace("a=setup:actpass", "a=setup:holdconn"),
    "m=text (AttributeError, also on close)": CHROME_OFFER.replace(
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=text 9 UDP/TLS/RTP/SAVPF 111"
    ),
    "no ice-ufrag (ValueError)": _without("a=ice-ufrag"),
    "no media at all": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n",
    "payload type U+00B2 (ValueError)": CHROME_OFFER.replace("a=rtpmap:96 ", "a=rtpmap:9\u00b2 "),
}


@pytest.mark.parametrize("kind", ["publish", "play"])
@pytest.mark.parametrize("offer", list(BAD_OFFERS.values()), ids=list(BAD_OFFERS))
def test_unusable_offer_is_a_peer_error_with_a_reason(
    kind: str, offer: str, log_events: list[LogEvent]
) -> None:
    clock = Clock()
    stream = Stream("cam", "WebRTC")
    if kind == "play":
        stream.set_video_params(VideoParams("VP8", 160, 96))
    cls = PublishPeer if kind == "publish" else PlayPeer

    async def body() -> None:
        peer = cls(stream, clock, lambda: None, lambda info: None)
        loop = asyncio.get_running_loop()
        with pytest.raises(PeerError) as err:
            await peer.answer(offer).asFuture(loop)
        if err.value.info != "No common codecs":  # a play offer without video says that
            assert err.value.info == "Unusable SDP offer"
        assert str(err.value)  # the reason, for the warning
        await peer.close().asFuture(loop)  # never raises, even when aiortc's close does

    run_track(body)
    # Nothing above debug carries a traceback: an unusable offer is the client's fault.
    assert not [e for e in log_events if e.get("log_failure") and e["log_level"] > LogLevel.debug]


def test_h264_picture_above_the_limit_is_refused_until_parameters_fit(
    log_events: list[LogEvent],
) -> None:
    big = h264_sample(bframes=False, seconds=1, size="640x480")
    small = h264_sample(bframes=False, seconds=1)
    clock = Clock()
    stream = Stream("cam", "WebRTC", max_picture_pixels=320 * 240)
    ingest, _ = ingest_for(stream, clock)
    for unit in big.units:
        ingest.video("H264", unit.data, int(unit.pts * unit.time_base * VIDEO_CLOCK))
    # Nothing of it reached the stream: no parameters, no GOP, so no decoder is ever opened.
    assert stream.video is None and stream.gop is None and stream.video_units == 0
    assert stream.rejected_units == len(big.units)
    refusals = [formatEvent(e) for e in log_events if "dropping malformed media" in formatEvent(e)]
    assert len(refusals) == 1 and "640x480" in refusals[0] and "larger than" in refusals[0]
    for unit in small.units:  # the publisher goes down to an acceptable size: accepted again
        ingest.video("H264", unit.data, int(unit.pts * unit.time_base * VIDEO_CLOCK))
    assert stream.video is not None and (stream.video.width, stream.video.height) == (320, 240)
    assert stream.video_units == len(small.units)


def test_vp8_picture_above_the_limit_is_refused() -> None:
    frames = vp8_frames()
    stream = Stream("cam", "WebRTC", max_picture_pixels=160 * 96 - 1)
    ingest, _ = ingest_for(stream, Clock())
    for i, data in enumerate(frames):
        ingest.video("VP8", data, i * 3000)
    assert stream.video is None and stream.gop is None and stream.video_units == 0
    assert stream.rejected_units == len(frames)
    with pytest.raises(ValueError, match="larger than"):
        vp8_frame_info(frames[0], 160 * 96 - 1)


def test_malformed_frame_is_dropped_and_the_publish_goes_on(log_events: list[LogEvent]) -> None:
    frames = vp8_frames()
    stream = Stream("cam", "WebRTC")
    ingest, plis = ingest_for(stream, Clock())
    ingest.video("VP8", frames[0], 0)
    ingest.video("VP8", b"\x00\x00\x00not-a-keyframe", 3000)  # a keyframe tag, no start code
    ingest.video("VP8", b"\x00" * (peer_mod.MAX_FRAME_BYTES + 1), 6000)
    for i, data in enumerate(frames[1:], start=3):
        ingest.video("VP8", data, i * 3000)
    assert stream.rejected_units == 2 and plis.count >= 1
    assert stream.video_units == len(frames) and not stream.ended
    assert len([e for e in log_events if "dropping malformed media" in formatEvent(e)]) == 1
