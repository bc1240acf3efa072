"""Tests for SDP parsing/building, control URL resolution and H.264 sprop decoding."""

# The camera samples are verbatim, long lines included.
# ruff: noqa: E501

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wcs.media.h264 import parse_sps
from wcs.rtsp.sdp import (
    MediaDescription,
    RtpMap,
    SdpError,
    build_sdp,
    h264_fmtp,
    h264_sprop,
    parse_sdp,
    resolve_control,
)

# ANNOUNCE body of `ffmpeg -f rtsp` (Lavf59.27.100; testsrc 320x240 libx264 + AAC), captured.
FFMPEG_ANNOUNCE = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "a=tool:libavformat LIBAVFORMAT_VERSION\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    "a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z0LADdoFB+wEQAAAAwBAAAAMo8UKqA==,"
    "aM4PyA==; profile-level-id=42C00D\r\na=control:streamid=0\r\nm=audio 0 RTP/AVP 97\r\n"
    "b=AS:69\r\na=rtpmap:97 MPEG4-GENERIC/44100/1\r\na=fmtp:97 profile-level-id=1;mode=AAC-hbr;"
    "sizelength=13;indexlength=3;indexdeltalength=3; config=120856E500\r\na=control:streamid=1\r\n"
)

# ANNOUNCE body of GStreamer 1.22 rtspclientsink (videotestsrc I420 320x240, x264enc), captured.
GST_CLIENTSINK_ANNOUNCE = (
    "v=0\r\no=- 1652700333 1 IN IP4 127.0.0.1\r\ns=Session streamed with GStreamer\r\n"
    "i=rtspclientsink\r\nt=0 0\r\na=tool:GStreamer\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 0.0.0.0\r\n"
    "b=AS:2097\r\na=rtpmap:96 H264/90000\r\na=framerate:30\r\na=fmtp:96 packetization-mode=1;"
    "sprop-parameter-sets=Z2QAFKyyAoP2AtQYGBqUAAADAAQAAAMA8jxQqSA=,aOvMsiw=\r\n"
    "a=control:stream=0\r\na=ts-refclk:local\r\na=mediaclk:sender\r\n"
    "a=ssrc:751761223 cname:user3308514617@host-d2c235f8\r\n"
)

# gst-rtsp-server 1.22 DESCRIBE answer (Content-Base: rtsp://127.0.0.1:35257/test/), captured.
GST_SERVER_DESCRIBE = (
    "v=0\r\no=- 9600584209504840598 1 IN IP4 127.0.0.1\r\ns=Session streamed with GStreamer\r\n"
    "i=rtsp-server\r\nt=0 0\r\na=tool:GStreamer\r\na=type:broadcast\r\na=control:*\r\n"
    "a=range:npt=now-\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 0.0.0.0\r\nb=AS:2097\r\n"
    "a=rtpmap:96 H264/90000\r\na=framerate:30\r\na=fmtp:96 packetization-mode=1;"
    "sprop-parameter-sets=Z0LAFdkBQfsBagwMDUoAAAMAAgAAAwB5HixckA==,aMuMsg==;"
    "profile-level-id=42c015;level-asymmetry-allowed=1\r\na=control:stream=0\r\n"
    "a=ts-refclk:local\r\na=mediaclk:sender\r\n"
    "a=ssrc:743624587 cname:user3566043325@host-ea99c687\r\nm=audio 0 RTP/AVP 97\r\n"
    "c=IN IP4 0.0.0.0\r\na=rtpmap:97 MPEG4-GENERIC/44100/1\r\na=fmtp:97 streamtype=5;"
    "profile-level-id=2;mode=AAC-hbr;config=120856e500;sizelength=13;indexlength=3;"
    "indexdeltalength=3\r\na=control:stream=1\r\na=ts-refclk:local\r\na=mediaclk:sender\r\n"
    "a=ssrc:3057714757 cname:user3566043325@host-ea99c687\r\n"
)

# Dahua camera DESCRIBE answer as published in a VLC session capture
# (blog.csdn.net/BeanGuohui/article/details/121969076); Content-Base ends in "?...=0/".
DAHUA_BASE = "rtsp://192.168.0.141:554/cam/realmonitor?channel=1&subtype=0/"
DAHUA = """v=0
o=- 2251938508 2251938508 IN IP4 0.0.0.0
s=Media Server
c=IN IP4 0.0.0.0
t=0 0
a=control:*
a=packetization-supported:DH
a=rtppayload-supported:DH
a=range:npt=now-
m=video 0 RTP/AVP 96
a=control:trackID=0
a=framerate:10.000000
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1;profile-level-id=4D4028;sprop-parameter-sets=Z01AKKaAeAIn5UAA,aO48gAA=
a=recvonly
m=audio 0 RTP/AVP 8
a=control:trackID=1
a=rtpmap:8 PCMA/8000
a=recvonly
"""

# Hikvision-firmware camera (realm "IP Camera(G8735)"), absolute controls with a query after the
# track (codetds.com/article/15006012). Trailing spaces on the last line are as published.
HIKVISION = """v=0
o=- 1656081731594734 1656081731594734 IN IP4 192.168.1.65
s=Media Presentation
e=NONE
b=AS:5050
t=0 0
a=control:rtsp://192.168.1.65:554/cam/realmonitor/?channel=1&subtype=0
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
b=AS:5000
a=recvonly
a=x-dimensions:1920,1080
a=control:rtsp://192.168.1.65:554/cam/realmonitor/trackID=1?channel=1&subtype=0
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=420029; packetization-mode=1; sprop-parameter-sets=Z00AKpY1QPAET8s3AQEBQAABwgAAV+QB,aO4xsg==
a=Media_header:MEDIAINFO=494D4B48010300000400000100000000000000000000000000000000000000000000000000000000;
a=appversion:1.0    
"""  # noqa: W291

# Hikvision NVR playback (github.com/bluenviron/gortsplib/issues/88): no sprop, named tracks,
# AAC rtpmap without a channel count.
HIKVISION_NVR = """v=0
o=- 1109162014219182 0 IN IP4 0.0.0.0
s=HIK Media Server V3.5.43
i=HIK Media Server Session Description : standard
e=NONE
c=IN IP4 0.0.0.0
t=0 0
a=control:*
b=AS:2176
a=range:npt=now-
m=video 0 RTP/AVP 96
i=Video Media
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=4D0014;packetization-mode=0
a=control:trackID=video
b=AS:2048
m=audio 0 RTP/AVP 104
i=Audio Media
a=rtpmap:104 MPEG4-GENERIC/48000
a=control:trackID=audio
a=fmtp:104 streamtype=5;profile-level-id=15;mode=AAC-hbr;config=1190;SizeLength=13;IndexLength=3;IndexDeltaLength=3;Profile=1;
b=AS:128
"""

# Axis camera (github.com/meetecho/janus-gateway/issues/849), Content-Base .../media.amp/.
AXIS_BASE = "rtsp://217.17.220.110/axis-media/media.amp/"
AXIS = """v=0
o=- 1491517855921810 1491517855921810 IN IP4 217.17.220.110
s=Media Presentation
e=NONE
b=AS:50000
t=0 0
a=control:*
a=range:npt=0.000000-
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
b=AS:50000
a=framerate:30.0
a=transform:-1,0,0;0,-1,0;0,0,1
a=control:trackID=1
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1; profile-level-id=420029; sprop-parameter-sets=Z0IAKeKQCgDLYC3AQEBpB4kRUA==,aM48gA==
"""


def sps_size(sdp: str, index: int = 0) -> tuple[int, int]:
    media = parse_sdp(sdp).media[index]
    pt = media.payload_types[0]
    sps, pps, _ = h264_sprop(media.fmtp[pt])
    assert sps is not None and pps
    info = parse_sps(sps)
    return info.width, info.height


def test_ffmpeg_announce() -> None:
    sd = parse_sdp(FFMPEG_ANNOUNCE.encode())
    assert sd.session_name == "No Name"
    assert sd.connection == "IN IP4 127.0.0.1"
    assert sd.control is None
    assert sd.attribute("tool") == "libavformat LIBAVFORMAT_VERSION"
    video, audio = sd.media
    assert (video.media, video.port, video.proto, video.formats) == ("video", 0, "RTP/AVP", ["96"])
    assert video.rtpmap == {96: RtpMap("H264", 90000, None)}
    assert video.fmtp[96]["packetization-mode"] == "1"
    assert video.control == "streamid=0"
    assert audio.rtpmap[97] == RtpMap("MPEG4-GENERIC", 44100, 1)
    assert audio.fmtp[97]["config"] == "120856E500"
    assert audio.bandwidth == ["AS:69"]
    base = "rtsp://127.0.0.1:35543/live/test"  # the ANNOUNCE request URL, no Content-Base
    assert [resolve_control(base, m.control) for m in sd.media] == [
        base + "/streamid=0",
        base + "/streamid=1",
    ]
    sps, pps, profile = h264_sprop(video.fmtp[96])
    assert sps is not None and sps[0] & 0x1F == 7
    assert [p[0] & 0x1F for p in pps] == [8]
    assert profile == "42C00D"
    assert sps_size(FFMPEG_ANNOUNCE) == (320, 240)


def test_gstreamer_rtspclientsink_announce() -> None:
    sd = parse_sdp(GST_CLIENTSINK_ANNOUNCE)
    (video,) = sd.media
    assert video.connection == "IN IP4 0.0.0.0"
    assert video.attribute("framerate") == "30"
    assert video.attribute("ssrc") == "751761223 cname:user3308514617@host-d2c235f8"
    assert resolve_control("rtsp://h:1/live/gst", video.control) == "rtsp://h:1/live/gst/stream=0"
    sps, _, profile = h264_sprop(video.fmtp[96])
    assert profile is None  # rtspclientsink leaves it out; the SPS has it
    assert sps is not None and sps[1] == 100  # High profile
    assert sps_size(GST_CLIENTSINK_ANNOUNCE) == (320, 240)


def test_gst_rtsp_server_describe() -> None:
    sd = parse_sdp(GST_SERVER_DESCRIBE)
    base = "rtsp://127.0.0.1:35257/test/"
    assert sd.control == "*"
    assert resolve_control(base, sd.control) == base
    assert [resolve_control(base, m.control) for m in sd.media] == [
        base + "stream=0",
        base + "stream=1",
    ]
    assert sd.media[0].fmtp[96]["level-asymmetry-allowed"] == "1"
    assert h264_sprop(sd.media[0].fmtp[96])[2] == "42C015"
    assert sps_size(GST_SERVER_DESCRIBE) == (320, 240)


def test_dahua_relative_controls_under_a_query_base() -> None:
    sd = parse_sdp(DAHUA)
    assert sd.attribute("packetization-supported") == "DH"
    video, audio = sd.media
    assert resolve_control(DAHUA_BASE, video.control) == DAHUA_BASE + "trackID=0"
    assert resolve_control(DAHUA_BASE, audio.control) == DAHUA_BASE + "trackID=1"
    assert audio.formats == ["8"] and audio.encoding(8) == RtpMap("PCMA", 8000, None)
    assert video.attribute("recvonly") == ""
    assert sps_size(DAHUA) == (1920, 1080)


def test_hikvision_absolute_controls() -> None:
    sd = parse_sdp(HIKVISION)
    (video,) = sd.media
    base = "rtsp://192.168.1.65:554/cam/realmonitor/"
    assert resolve_control(base, sd.control) == (
        "rtsp://192.168.1.65:554/cam/realmonitor/?channel=1&subtype=0"
    )
    assert resolve_control(base, video.control) == (
        "rtsp://192.168.1.65:554/cam/realmonitor/trackID=1?channel=1&subtype=0"
    )
    assert video.attribute("appversion") == "1.0"  # trailing spaces dropped
    assert video.attribute("x-dimensions") == "1920,1080"
    assert sps_size(HIKVISION) == (1920, 1080)


def test_hikvision_nvr_without_sprop() -> None:
    sd = parse_sdp(HIKVISION_NVR)
    video, audio = sd.media
    assert h264_sprop(video.fmtp[96]) == (None, [], "4D0014")
    assert video.fmtp[96]["packetization-mode"] == "0"
    assert audio.rtpmap[104] == RtpMap("MPEG4-GENERIC", 48000, None)
    assert audio.fmtp[104]["sizelength"] == "13"  # parameter names are case-insensitive
    base = "rtsp://10.0.0.2:554/Streaming/tracks/101"
    assert resolve_control(base, audio.control) == base + "/trackID=audio"


def test_axis() -> None:
    sd = parse_sdp(AXIS)
    (video,) = sd.media
    assert resolve_control(AXIS_BASE, video.control) == AXIS_BASE + "trackID=1"
    assert video.attribute("transform") == "-1,0,0;0,-1,0;0,0,1"
    assert sps_size(AXIS) == (1280, 800)


@pytest.mark.parametrize(
    ("base", "control", "expected"),
    [
        ("rtsp://h/a", None, "rtsp://h/a"),
        ("rtsp://h/a", "", "rtsp://h/a"),
        ("rtsp://h/a/", "*", "rtsp://h/a/"),
        ("rtsp://h/a", "trackID=0", "rtsp://h/a/trackID=0"),
        ("rtsp://h/a/", "trackID=0", "rtsp://h/a/trackID=0"),
        ("rtsp://h/a", "streamid=1", "rtsp://h/a/streamid=1"),
        ("rtsp://h/a?x=1", "?ctype=video", "rtsp://h/a?x=1?ctype=video"),
        ("rtsp://h:554/a/b", "/other/track1", "rtsp://h:554/other/track1"),
        ("rtsp://h:554/a/b?q=1", "/t?x=2", "rtsp://h:554/t?x=2"),
        ("rtsp://h/a", "rtsp://cam/x/trackID=1", "rtsp://cam/x/trackID=1"),
        ("rtsp://h/a", "RTSPS://cam/x", "RTSPS://cam/x"),
    ],
)
def test_resolve_control(base: str, control: str | None, expected: str) -> None:
    assert resolve_control(base, control) == expected


def test_static_payload_types_without_rtpmap() -> None:
    sd = parse_sdp("v=0\nm=audio 0 RTP/AVP 0 8 96\n")
    (audio,) = sd.media
    assert audio.encoding(0) == RtpMap("PCMU", 8000, 1)
    assert audio.encoding(8) == RtpMap("PCMA", 8000, 1)
    assert audio.encoding(96) is None
    assert audio.payload_types == [0, 8, 96]


def test_lenient_input() -> None:
    # A camera that sends only media lines, LF line ends, blank lines, lower-case codec names.
    sd = parse_sdp("\n\nm=video 5000/2 RTP/AVP 96\n\na=rtpmap:96 h264/90000 \na=control:track0\n")
    (video,) = sd.media
    assert video.port == 5000
    assert video.rtpmap[96].encoding == "H264"
    assert video.control == "track0"
    # Non-RTP media keep arbitrary formats.
    assert parse_sdp("m=application 0 udp wb\n").media[0].formats == ["wb"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("v=0\nbogus\n", "line 2 is not <type>=<value>: 'bogus'"),
        ("v=0\nV=0\n", "line 2 is not <type>=<value>: 'V=0'"),
        ("m=video\n", "line 1: bad m= line 'video'"),
        ("m=video x RTP/AVP 96\n", "line 1: bad port 'x'"),
        ("m=video 70000 RTP/AVP 96\n", "line 1: bad port '70000'"),
        ("m=video 0 RTP/AVP h264\n", "line 1: bad RTP payload type 'h264'"),
        ("m=video 0 RTP/AVP 128\n", "line 1: bad RTP payload type '128'"),
        ("m=video 0 RTP/AVP 96\na=rtpmap:96 H264\n", "line 2: bad rtpmap '96 H264'"),
        ("m=video 0 RTP/AVP 96\na=rtpmap:96 H264/x\n", "line 2: bad rtpmap '96 H264/x'"),
        ("m=video 0 RTP/AVP 96\na=rtpmap:96 H264/0\n", "line 2: zero clock rate in rtpmap"),
        ("m=video 0 RTP/AVP 96\na=rtpmap:x H264/90000\n", "line 2: bad payload type 'x'"),
        ("m=video 0 RTP/AVP 96\na=fmtp:200 a=b\n", "line 2: bad payload type '200'"),
        ("a=bad name:1\n", "line 1: bad attribute name 'bad name'"),
        # Finding 6: isdigit() accepts "²" and other scripts' digits, int() refuses or reads them.
        ("m=video ² RTP/AVP 96\n", "line 1: bad port '²'"),
        ("m=video 5\u0660\u0660\u0660 RTP/AVP 96\n", "line 1: bad port '5\u0660\u0660\u0660'"),
        ("m=video 0/² RTP/AVP 96\n", "line 1: bad number of ports '²'"),
        ("m=video 0 RTP/AVP ²\n", "line 1: bad RTP payload type '²'"),
        ("m=video 0 RTP/AVP 9\u0666\n", "line 1: bad RTP payload type '9\u0666'"),
        ("m=video 0 RTP/AVP 96\na=rtpmap:² H264/90000\n", "line 2: bad payload type '²'"),
        ("m=video 0 RTP/AVP 96\na=rtpmap:96 H264/²\n", "line 2: bad rtpmap '96 H264/²'"),
        ("m=video 0 RTP/AVP 96\na=rtpmap:96 L16/8000/²\n", "line 2: bad rtpmap '96 L16/8000/²'"),
        ("m=video 0 RTP/AVP 96\na=fmtp:² a=b\n", "line 2: bad payload type '²'"),
    ],
)
def test_sdp_errors(text: str, message: str) -> None:
    with pytest.raises(SdpError) as exc:
        parse_sdp(text)
    assert str(exc.value) == message


def test_sdp_limits_are_exact() -> None:
    text = FFMPEG_ANNOUNCE
    assert parse_sdp(text, max_bytes=len(text)).media
    with pytest.raises(SdpError, match=f"exceeds the limit of {len(text) - 1}"):
        parse_sdp(text, max_bytes=len(text) - 1)
    assert len(parse_sdp(text, max_media=2).media) == 2
    with pytest.raises(SdpError, match="more than 1 media descriptions"):
        parse_sdp(text, max_media=1)
    line = "a=x:" + "y" * 96
    assert parse_sdp(line, max_line=100).attribute("x") == "y" * 96
    with pytest.raises(SdpError, match="line 1 is longer than 99 characters"):
        parse_sdp(line, max_line=99)


def test_sprop_decoding_edge_cases() -> None:
    sps = base64.b64decode("Z0LADdoFB+wEQAAAAwBAAAAMo8UKqA==")
    unpadded = {"sprop-parameter-sets": "Z0LADdoFB+wEQAAAAwBAAAAMo8UKqA,aM4PyA"}
    assert h264_sprop(unpadded)[0] == sps
    assert h264_sprop({"sprop-parameter-sets": ""}) == (None, [], None)
    assert h264_sprop({"sprop-parameter-sets": " , "}) == (None, [], None)
    assert h264_sprop({"profile-level-id": "42C0"}) == (None, [], None)
    two_pps = {"sprop-parameter-sets": "aM4PyA==,Z0LADdoFB+wEQAAAAwBAAAAMo8UKqA==,aM48gA=="}
    got_sps, pps, _ = h264_sprop(two_pps)
    assert got_sps == sps and len(pps) == 2
    with pytest.raises(SdpError, match="bad base64 in sprop-parameter-sets: 'Z0L!'"):
        h264_sprop({"sprop-parameter-sets": "Z0L!,aM4PyA=="})
    with pytest.raises(SdpError, match="longer than 8192 characters"):
        h264_sprop({"sprop-parameter-sets": "A" * 8193})
    with pytest.raises(SdpError, match="more than 16 sprop-parameter-sets"):
        h264_sprop({"sprop-parameter-sets": ",".join(["aM4PyA=="] * 17)})


def test_h264_fmtp_is_the_inverse_of_h264_sprop() -> None:
    sps = base64.b64decode("Z0LAFdkBQfsBagwMDUoAAAMAAgAAAwB5HixckA==")
    pps = base64.b64decode("aMuMsg==")
    fmtp = h264_fmtp(sps, [pps])
    assert fmtp["profile-level-id"] == "42C015"
    assert fmtp["packetization-mode"] == "1"
    assert h264_sprop(fmtp) == (sps, [pps], "42C015")
    with pytest.raises(SdpError):
        h264_fmtp(b"\x67", [pps])


def test_build_sdp_round_trip() -> None:
    sps = base64.b64decode("Z0LADdoFB+wEQAAAAwBAAAAMo8UKqA==")
    pps = base64.b64decode("aM4PyA==")
    video = MediaDescription(
        "video",
        formats=["96"],
        rtpmap={96: RtpMap("H264", 90000)},
        fmtp={96: h264_fmtp(sps, [pps])},
        control="trackID=0",
        attributes=[("recvonly", None), ("control", "ignored"), ("framerate", "25")],
    )
    audio = MediaDescription(
        "audio",
        formats=["97"],
        rtpmap={97: RtpMap("MPEG4-GENERIC", 44100, 2)},
        fmtp={97: {"mode": "AAC-hbr", "config": "1210"}},
        control="trackID=1",
    )
    text = build_sdp([video, audio], session_name="live/s", attributes=[("range", "npt=now-")])
    assert text.startswith("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=live/s\r\nc=IN IP4 0.0.0.0\r\n")
    assert "a=control:ignored" not in text
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    sd = parse_sdp(text)
    assert sd.control == "*"
    assert sd.attribute("range") == "npt=now-"
    assert sd.session_name == "live/s"
    for built, parsed in zip([video, audio], sd.media, strict=True):
        assert (parsed.rtpmap, parsed.fmtp, parsed.control) == (
            built.rtpmap,
            built.fmtp,
            built.control,
        )
    assert sd.media[0].attribute("recvonly") == ""
    assert sd.media[0].attribute("framerate") == "25"
    assert h264_sprop(sd.media[0].fmtp[96]) == (sps, [pps], "42C00D")


def test_build_sdp_refuses_line_breaks() -> None:
    with pytest.raises(SdpError, match="line break"):
        build_sdp([], session_name="a\r\nm=video 0 RTP/AVP 96")


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("vmac=:/ 0123456789\r\nRTP/AVPH264rtpmapfmtp;,"), max_size=200)
)
def test_arbitrary_text_only_raises_sdp_errors(text: str) -> None:
    try:
        sd = parse_sdp(text)
    except SdpError:
        return
    for media in sd.media:
        for params in media.fmtp.values():
            with contextlib.suppress(SdpError):
                h264_sprop(params)


def test_non_rtp_formats_are_not_payload_types() -> None:
    """An m= line of another protocol keeps its formats as text; none of them is a payload type
    unless written in ASCII digits (a "²" format used to raise ValueError from int())."""
    sdp = parse_sdp("m=application 0 udp ² wb 7 \u0663 200\n")
    assert sdp.media[0].formats == ["²", "wb", "7", "\u0663", "200"]
    assert sdp.media[0].payload_types == [7]


def test_unresolvable_control_is_an_sdp_error() -> None:
    with pytest.raises(SdpError, match="cannot resolve control"):
        resolve_control("rtsp://[::1/live", "/track1")
