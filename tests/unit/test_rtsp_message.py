"""Tests for the RTSP message parser, builders and Transport/Session header helpers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wcs.rtsp.message import (
    STATUS_REASONS,
    Headers,
    InterleavedFrame,
    RtspEvent,
    RtspParseError,
    RtspParser,
    RtspRequest,
    RtspResponse,
    TransportSpec,
    build_interleaved,
    build_request,
    build_response,
    parse_session,
    parse_transport,
)
from wcs.rtsp.numbers import ascii_hex, ascii_uint

# What `ffmpeg -f rtsp -rtsp_transport tcp` (Lavf59.27.100) sent to a capturing socket server,
# byte for byte (testsrc 320x240 libx264 + sine AAC).
FFMPEG_PUBLISH = (
    b"OPTIONS rtsp://127.0.0.1:35543/live/test RTSP/1.0\r\nCSeq: 1\r\n"
    b"User-Agent: Lavf59.27.100\r\n\r\n"
    b"ANNOUNCE rtsp://127.0.0.1:35543/live/test RTSP/1.0\r\nContent-Type: application/sdp\r\n"
    b"CSeq: 2\r\nUser-Agent: Lavf59.27.100\r\nContent-Length: 495\r\n\r\n"
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"a=tool:libavformat LIBAVFORMAT_VERSION\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    b"a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z0LADdoFB+wEQAAAAwBAAAAMo8UKqA==,"
    b"aM4PyA==; profile-level-id=42C00D\r\na=control:streamid=0\r\nm=audio 0 RTP/AVP 97\r\n"
    b"b=AS:69\r\na=rtpmap:97 MPEG4-GENERIC/44100/1\r\na=fmtp:97 profile-level-id=1;mode=AAC-hbr;"
    b"sizelength=13;indexlength=3;indexdeltalength=3; config=120856E500\r\n"
    b"a=control:streamid=1\r\n"
    b"SETUP rtsp://127.0.0.1:35543/live/test/streamid=0 RTSP/1.0\r\n"
    b"Transport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record\r\nCSeq: 3\r\n"
    b"User-Agent: Lavf59.27.100\r\n\r\n"
    b"SETUP rtsp://127.0.0.1:35543/live/test/streamid=1 RTSP/1.0\r\n"
    b"Transport: RTP/AVP/TCP;unicast;interleaved=2-3;mode=record\r\nCSeq: 4\r\n"
    b"User-Agent: Lavf59.27.100\r\nSession: 12345678\r\n\r\n"
    b"RECORD rtsp://127.0.0.1:35543/live/test RTSP/1.0\r\nRange: npt=0.000-\r\nCSeq: 5\r\n"
    b"User-Agent: Lavf59.27.100\r\nSession: 12345678\r\n\r\n"
)

# gst-rtsp-server 1.22 answering DESCRIBE (videotestsrc/x264 + audiotestsrc/AAC), as received.
GST_DESCRIBE_RESPONSE = (
    b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\n"
    b"Content-Base: rtsp://127.0.0.1:35257/test/\r\nServer: GStreamer RTSP server\r\n"
    b"Date: Wed, 25 Nov 2026 16:27:51 GMT\r\nContent-Length: 836\r\n\r\n"
    b"v=0\r\no=- 9600584209504840598 1 IN IP4 127.0.0.1\r\ns=Session streamed with GStreamer\r\n"
    b"i=rtsp-server\r\nt=0 0\r\na=tool:GStreamer\r\na=type:broadcast\r\na=control:*\r\n"
    b"a=range:npt=now-\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 0.0.0.0\r\nb=AS:2097\r\n"
    b"a=rtpmap:96 H264/90000\r\na=framerate:30\r\na=fmtp:96 packetization-mode=1;"
    b"sprop-parameter-sets=Z0LAFdkBQfsBagwMDUoAAAMAAgAAAwB5HixckA==,aMuMsg==;"
    b"profile-level-id=42c015;level-asymmetry-allowed=1\r\na=control:stream=0\r\n"
    b"a=ts-refclk:local\r\na=mediaclk:sender\r\n"
    b"a=ssrc:743624587 cname:user3566043325@host-ea99c687\r\nm=audio 0 RTP/AVP 97\r\n"
    b"c=IN IP4 0.0.0.0\r\na=rtpmap:97 MPEG4-GENERIC/44100/1\r\na=fmtp:97 streamtype=5;"
    b"profile-level-id=2;mode=AAC-hbr;config=120856e500;sizelength=13;indexlength=3;"
    b"indexdeltalength=3\r\na=control:stream=1\r\na=ts-refclk:local\r\na=mediaclk:sender\r\n"
    b"a=ssrc:3057714757 cname:user3566043325@host-ea99c687\r\n"
)


def feed_all(data: bytes, **limits: int) -> list[RtspEvent]:
    return RtspParser(**limits).feed(data)


def feed_bytewise(data: bytes, **limits: int) -> list[RtspEvent]:
    parser = RtspParser(**limits)
    events: list[RtspEvent] = []
    for i in range(len(data)):
        events += parser.feed(data[i : i + 1])
    return events


def feed_both(data: bytes, **limits: int) -> list[RtspEvent]:
    whole = feed_all(data, **limits)
    assert feed_bytewise(data, **limits) == whole
    return whole


def error_both(data: bytes, **limits: int) -> RtspParseError:
    """Feed whole and byte by byte; both must fail with the same reason and status."""
    with pytest.raises(RtspParseError) as whole:
        feed_all(data, **limits)
    with pytest.raises(RtspParseError) as bytewise:
        feed_bytewise(data, **limits)
    assert (whole.value.reason, whole.value.status) == (
        bytewise.value.reason,
        bytewise.value.status,
    )
    return whole.value


# --- real peers -----------------------------------------------------------------------------------


def test_ffmpeg_publish_session() -> None:
    events = feed_both(FFMPEG_PUBLISH)
    assert [(e.method, e.uri) for e in events if isinstance(e, RtspRequest)] == [
        ("OPTIONS", "rtsp://127.0.0.1:35543/live/test"),
        ("ANNOUNCE", "rtsp://127.0.0.1:35543/live/test"),
        ("SETUP", "rtsp://127.0.0.1:35543/live/test/streamid=0"),
        ("SETUP", "rtsp://127.0.0.1:35543/live/test/streamid=1"),
        ("RECORD", "rtsp://127.0.0.1:35543/live/test"),
    ]
    assert len(events) == 5
    announce = events[1]
    assert isinstance(announce, RtspRequest)
    assert announce.version == "RTSP/1.0"
    assert announce.headers.get("content-type") == "application/sdp"
    assert announce.headers["CSEQ"] == "2"
    assert len(announce.body) == 495
    assert announce.body.startswith(b"v=0\r\n") and announce.body.endswith(b"streamid=1\r\n")
    setup = events[3]
    assert isinstance(setup, RtspRequest)
    assert setup.headers.get("Session") == "12345678"
    assert setup.body == b""


def test_gst_server_describe_response() -> None:
    (response,) = feed_both(GST_DESCRIBE_RESPONSE)
    assert isinstance(response, RtspResponse)
    assert (response.version, response.status, response.reason) == ("RTSP/1.0", 200, "OK")
    assert response.headers.get("Content-Base") == "rtsp://127.0.0.1:35257/test/"
    assert len(response.body) == 836
    assert response.body.endswith(b"host-ea99c687\r\n")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(FFMPEG_PUBLISH)), max_size=30))
def test_random_splits_give_the_same_events(cuts: list[int]) -> None:
    parser = RtspParser()
    events: list[RtspEvent] = []
    bounds = [0, *sorted(cuts), len(FFMPEG_PUBLISH)]
    for a, b in itertools.pairwise(bounds):
        events += parser.feed(FFMPEG_PUBLISH[a:b])
    assert events == feed_all(FFMPEG_PUBLISH)


def _mixed_stream() -> tuple[bytes, list[RtspEvent]]:
    """A camera's view: a PLAY response, RTP, a GET_PARAMETER keep-alive answer, more RTP."""
    rtp = bytes(range(256)) * 3
    data = (
        build_response(200, "OK", [("CSeq", "5"), ("Session", "abc")])
        + build_interleaved(0, rtp)
        + build_interleaved(1, b"\x81\xc9\x00\x01rtcp")
        + GST_DESCRIBE_RESPONSE
        + build_interleaved(2, b"")
        + build_request("GET_PARAMETER", "rtsp://h/x", {"CSeq": 6}, b"position\r\n")
        + build_interleaved(255, b"$$$$")
    )
    expected: list[RtspEvent] = [
        RtspResponse("RTSP/1.0", 200, "OK", Headers([("CSeq", "5"), ("Session", "abc")])),
        InterleavedFrame(0, rtp),
        InterleavedFrame(1, b"\x81\xc9\x00\x01rtcp"),
        feed_all(GST_DESCRIBE_RESPONSE)[0],
        InterleavedFrame(2, b""),
        RtspRequest(
            "GET_PARAMETER",
            "rtsp://h/x",
            "RTSP/1.0",
            Headers([("CSeq", "6"), ("Content-Length", "10")]),
            b"position\r\n",
        ),
        InterleavedFrame(255, b"$$$$"),
    ]
    return data, expected


def test_interleaved_frames_mixed_with_messages() -> None:
    data, expected = _mixed_stream()
    assert feed_both(data) == expected


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mixed_stream_random_splits(data: st.DataObject) -> None:
    stream, expected = _mixed_stream()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    parser = RtspParser()
    events: list[RtspEvent] = []
    bounds = [0, *sorted(cuts), len(stream)]
    for a, b in itertools.pairwise(bounds):
        events += parser.feed(stream[a:b])
    assert events == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_only_raises_parse_errors(data: bytes) -> None:
    parser = RtspParser(max_body=100, max_interleaved=100)
    try:
        parser.feed(data)
    except RtspParseError:
        with pytest.raises(RtspParseError, match="parser is closed"):
            parser.feed(b"OPTIONS * RTSP/1.0\r\n\r\n")


# --- framing ------------------------------------------------------------------------------------


def test_pipelined_messages_in_one_feed() -> None:
    data = b"".join(
        build_request("OPTIONS", "*", [("CSeq", str(n))]) for n in range(1, 6)
    ) + build_request("SET_PARAMETER", "rtsp://h/s", [("CSeq", "6")], b"a: b\r\n")
    events = RtspParser().feed(data)
    assert [e.headers.get("cseq") for e in events if isinstance(e, RtspRequest)] == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
    ]
    last = events[-1]
    assert isinstance(last, RtspRequest) and last.body == b"a: b\r\n"


def test_body_split_across_feeds() -> None:
    parser = RtspParser()
    head = b"ANNOUNCE rtsp://h/live/s RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 10\r\n\r\n"
    assert parser.feed(head + b"01234") == []
    assert parser.feed(b"567") == []
    (event,) = parser.feed(b"89OPTIONS * RTSP/1.0\r\nCSeq: 3\r\n")
    assert isinstance(event, RtspRequest) and event.body == b"0123456789"
    (options,) = parser.feed(b"\r\n")
    assert isinstance(options, RtspRequest) and options.method == "OPTIONS"


def test_leading_crlfs_between_messages_are_skipped() -> None:
    one = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n"
    events = feed_both(b"\r\n\r\n" + one + b"\r\n\n\r" + one + b"\r\n")
    assert len(events) == 2
    assert events[0] == events[1]


def test_bare_lf_line_endings_are_accepted() -> None:
    lf = b"ANNOUNCE rtsp://h/a RTSP/1.0\nCSeq: 7\nContent-Length: 3\n\nabc"
    crlf = b"ANNOUNCE rtsp://h/a RTSP/1.0\r\nCSeq: 7\r\nContent-Length: 3\r\n\r\nabc"
    assert feed_both(lf) == feed_both(crlf)
    mixed = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\n\r\n"
    (event,) = feed_both(mixed)
    assert isinstance(event, RtspRequest) and event.headers.get("CSeq") == "1"


def test_response_without_reason_and_without_body() -> None:
    (event,) = feed_both(b"RTSP/1.0 454\r\nCSeq: 9\r\n\r\n")
    assert isinstance(event, RtspResponse)
    assert (event.status, event.reason, event.body) == (454, "", b"")


def test_headers_lookup_is_case_insensitive_and_ordered() -> None:
    (event,) = feed_both(
        b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\n"
        b'WWW-Authenticate: Digest realm="r", nonce="n"\r\n'
        b'www-authenticate: Basic realm="r"\r\n'
        b"X-Empty:\r\n"
        b"X-Spaced:   v  \t\r\n\r\n"
    )
    assert isinstance(event, RtspResponse)
    headers = event.headers
    assert headers.get_all("WWW-AUTHENTICATE") == ['Digest realm="r", nonce="n"', 'Basic realm="r"']
    assert headers.get("www-authenticate") == 'Digest realm="r", nonce="n"'
    assert headers.get("x-empty") == ""
    assert headers.get("X-SPACED") == "v"
    assert headers.get("missing") is None
    assert headers.get("missing", "d") == "d"
    assert "cseq" in headers and "nope" not in headers
    with pytest.raises(KeyError):
        headers["nope"]
    assert [name for name, _ in headers][:2] == ["CSeq", "WWW-Authenticate"]
    assert len(headers) == 5


def test_utf8_uri_and_latin1_header_values() -> None:
    data = "OPTIONS rtsp://h/live/поток RTSP/1.0\r\nCSeq: 1\r\n".encode() + (
        b'WWW-Authenticate: Basic realm="caf\xe9"\r\n\r\n'
    )
    (event,) = feed_both(data)
    assert isinstance(event, RtspRequest)
    assert event.uri == "rtsp://h/live/поток"
    assert event.headers.get("WWW-Authenticate") == 'Basic realm="café"'


def test_same_content_length_twice_is_accepted() -> None:
    (event,) = feed_both(
        b"ANNOUNCE rtsp://h/a RTSP/1.0\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
    )
    assert isinstance(event, RtspRequest) and event.body == b"ok"


# --- errors and limits --------------------------------------------------------------------------

MIN_REQUEST = b"OPTIONS * RTSP/1.0\r\n"


@pytest.mark.parametrize(
    "value",
    [
        b"-1",
        b"+5",
        b"5a",
        b"5 x",
        b"0x10",
        b"",
        b"5, 5",
        b"1e3",
        b"\xef\xbc\x95",
        b"1.0",
        b"1_0",
        "²".encode(),
        "\u0665".encode(),
    ],
)
def test_bad_content_length_forms(value: bytes) -> None:
    error = error_both(MIN_REQUEST + b"Content-Length: " + value + b"\r\n\r\n12345")
    assert error.reason.startswith("bad Content-Length")
    assert error.status == 400


def test_conflicting_content_lengths() -> None:
    error = error_both(MIN_REQUEST + b"Content-Length: 2\r\nContent-length: 3\r\n\r\nabc")
    assert error.reason == "conflicting Content-Length values [2, 3]"


def test_huge_content_length_digits() -> None:
    error = error_both(MIN_REQUEST + b"Content-Length: " + b"9" * 13 + b"\r\n\r\n")
    assert error.reason.startswith("bad Content-Length")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"OPTIONS rtsp://h/a", "bad request line 'OPTIONS rtsp://h/a'"),
        (b"OPTIONS  rtsp://h/a RTSP/1.0", "bad request line 'OPTIONS  rtsp://h/a RTSP/1.0'"),
        (b"OPTIONS rtsp://h/a RTSP/1.0 x", "bad request line 'OPTIONS rtsp://h/a RTSP/1.0 x'"),
        (b"OPT(ONS rtsp://h/a RTSP/1.0", "bad method 'OPT(ONS'"),
        (b"OPTIONS rtsp://h/\x01 RTSP/1.0", "bad request URI 'rtsp://h/\\x01'"),
        (b"GET / HTTP/1.1", "not an RTSP version: 'HTTP/1.1'"),
        (b"OPTIONS * rtsp/1.0", "not an RTSP version: 'rtsp/1.0'"),
        (b"RTSP/1.0 20 OK", "bad status line 'RTSP/1.0 20 OK'"),
        (b"RTSP/1.0 abc OK", "bad status line 'RTSP/1.0 abc OK'"),
        (b"RTSP/1.0 099 Low", "bad status line 'RTSP/1.0 099 Low'"),
        # isdigit() says yes to "²" and int() says no: a ValueError that is not a parse error.
        ("RTSP/1.0 ²00 OK".encode(), "bad status line 'RTSP/1.0 ²00 OK'"),
        ("RTSP/1.0 2\u06600 OK".encode(), "bad status line 'RTSP/1.0 2\u06600 OK'"),
        (b"RTSP/x 200 OK", "not an RTSP version: 'RTSP/x'"),
        (b"OPTIONS * RTSP/1.0\rCSeq: 1", "bare CR inside a line"),
    ],
)
def test_bad_start_lines(line: bytes, reason: str) -> None:
    error = error_both(line + b"\r\nCSeq: 1\r\n\r\n")
    assert error.reason == reason
    assert error.status == 400


@pytest.mark.parametrize("version", [b"RTSP/2.0", b"RTSP/1.1"])
def test_other_rtsp_versions_are_505(version: bytes) -> None:
    error = error_both(b"OPTIONS * " + version + b"\r\nCSeq: 1\r\n\r\n")
    assert error.reason == f"unsupported version {version.decode()}"
    assert error.status == 505
    response = error_both(version + b" 200 OK\r\n\r\n")
    assert response.status == 505


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"NoColon", "header line without a colon: 'NoColon'"),
        (b"CSeq : 1", "bad header name 'CSeq '"),
        (b": empty", "bad header name ''"),
        (b" folded", "obsolete header line folding is not supported"),
        (b"\tfolded", "obsolete header line folding is not supported"),
        (b"X-A: a\x00b", "control character in header 'X-A'"),
        (b"X-A: a\rb", "bare CR inside a line"),
    ],
)
def test_bad_header_lines(header: bytes, reason: str) -> None:
    error = error_both(MIN_REQUEST + b"CSeq: 1\r\n" + header + b"\r\n\r\n")
    assert error.reason == reason


def test_start_line_limit_is_exact() -> None:
    uri = b"rtsp://h/" + b"a" * 100
    line = b"OPTIONS " + uri + b" RTSP/1.0"
    ok = line + b"\r\nCSeq: 1\r\n\r\n"
    assert len(feed_both(ok, max_line=len(line))) == 1
    error = error_both(ok, max_line=len(line) - 1)
    assert error.reason == f"start line longer than {len(line) - 1} bytes"
    assert error.status == 414


def test_endless_start_line_fails_before_the_header_limit() -> None:
    parser = RtspParser(max_line=50, max_header_bytes=10_000)
    assert parser.feed(b"O" * 50 + b"\r") == []
    with pytest.raises(RtspParseError, match="start line longer than 50 bytes"):
        parser.feed(b"P")


def test_header_line_limit() -> None:
    header = b"X-Long: " + b"v" * 60
    ok = MIN_REQUEST + header + b"\r\n\r\n"
    assert len(feed_both(ok, max_line=len(header))) == 1
    error = error_both(ok, max_line=len(header) - 1)
    assert error.reason == f"header line longer than {len(header) - 1} bytes"


def test_header_block_limit_is_exact() -> None:
    block = MIN_REQUEST + b"CSeq: 1\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
    assert len(feed_both(block, max_header_bytes=len(block))) == 1
    error = error_both(block, max_header_bytes=len(block) - 1)
    assert error.reason == f"header block exceeds {len(block) - 1} bytes"
    # Without an end in sight, the parser gives up as soon as the limit is passed.
    parser = RtspParser(max_header_bytes=100)
    assert parser.feed(MIN_REQUEST + b"X: " + b"y" * 77) == []
    with pytest.raises(RtspParseError, match="header block exceeds 100 bytes"):
        parser.feed(b"y")


def test_header_count_limit_is_exact() -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(10))
    data = MIN_REQUEST + headers + b"\r\n"
    assert len(feed_both(data, max_headers=10)[0].headers) == 10  # type: ignore[union-attr]
    error = error_both(data, max_headers=9)
    assert error.reason == "more than 9 headers"


def test_body_limit_is_exact() -> None:
    data = b"ANNOUNCE rtsp://h/a RTSP/1.0\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    assert feed_both(data, max_body=100)[0].body == b"x" * 100  # type: ignore[union-attr]
    error = error_both(data, max_body=99)
    assert error.reason == "body of 100 bytes exceeds the limit of 99"
    assert error.status == 413


def test_interleaved_limit_is_exact() -> None:
    frame = build_interleaved(3, b"r" * 1000)
    assert feed_both(frame, max_interleaved=1000) == [InterleavedFrame(3, b"r" * 1000)]
    error = error_both(frame, max_interleaved=999)
    assert error.reason == "interleaved frame of 1000 bytes on channel 3 exceeds the limit of 999"


def test_parser_is_dead_after_an_error() -> None:
    parser = RtspParser()
    with pytest.raises(RtspParseError):
        parser.feed(b"GARBAGE\r\n\r\n")
    with pytest.raises(RtspParseError) as again:
        parser.feed(b"OPTIONS * RTSP/1.0\r\n\r\n")
    assert again.value.reason == "parser is closed after: bad request line 'GARBAGE'"


def test_bad_limits() -> None:
    with pytest.raises(ValueError):
        RtspParser(max_line=0)
    with pytest.raises(ValueError):
        RtspParser(max_body=-1)


# --- builders -----------------------------------------------------------------------------------


def test_build_request_round_trip() -> None:
    data = build_request(
        "SETUP",
        "rtsp://h/live/s/streamid=0",
        [("CSeq", 3), ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
    )
    assert data == (
        b"SETUP rtsp://h/live/s/streamid=0 RTSP/1.0\r\nCSeq: 3\r\n"
        b"Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
    )
    (event,) = RtspParser().feed(data)
    assert isinstance(event, RtspRequest) and event.method == "SETUP"


def test_build_response_adds_content_length_and_reason() -> None:
    data = build_response(200, None, {"CSeq": "2", "Content-Type": "application/sdp"}, b"v=0\r\n")
    assert data == (
        b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\n"
        b"Content-Length: 5\r\n\r\nv=0\r\n"
    )
    assert build_response(461, None, [("CSeq", "4")]).startswith(
        b"RTSP/1.0 461 Unsupported Transport\r\n"
    )
    assert (
        build_response(200, "OK", Headers([("Content-Length", "2")]), b"ab").count(
            b"Content-Length"
        )
        == 1
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_request("BAD METHOD", "*"),
        lambda: build_request("OPTIONS", "has space"),
        lambda: build_request("OPTIONS", ""),
        lambda: build_request("OPTIONS", "*", {"X": "a\r\nInjected: 1"}),
        lambda: build_request("OPTIONS", "*", {"Bad Name": "v"}),
        lambda: build_response(200, "OK", {"Content-Length": "3"}, b"ab"),
        lambda: build_response(99, "Low"),
        lambda: build_response(200, "O\nK"),
        lambda: build_interleaved(256, b""),
        lambda: build_interleaved(-1, b""),
        lambda: build_interleaved(0, b"x" * 65536),
    ],
)
def test_builders_refuse_bad_input(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_build_interleaved() -> None:
    assert build_interleaved(1, b"ab") == b"$\x01\x00\x02ab"
    assert build_interleaved(0, b"x" * 65535)[:4] == b"$\x00\xff\xff"


def test_status_reasons() -> None:
    required = {200, 400, 401, 404, 405, 406, 451, 453, 454, 455, 459, 461, 500, 501, 503, 505}
    assert required <= STATUS_REASONS.keys()
    assert STATUS_REASONS[454] == "Session Not Found"


# --- Transport and Session ----------------------------------------------------------------------


def test_transport_ffmpeg_tcp_and_udp() -> None:
    (tcp,) = parse_transport("RTP/AVP/TCP;unicast;interleaved=2-3;mode=record")
    assert tcp == TransportSpec(lower="TCP", interleaved=(2, 3), mode="RECORD")
    assert tcp.to_header() == "RTP/AVP/TCP;unicast;interleaved=2-3;mode=record"
    (udp,) = parse_transport("RTP/AVP/UDP;unicast;client_port=16522-16523;mode=record")
    assert (udp.protocol, udp.lower, udp.client_port, udp.mode) == (
        "RTP/AVP",
        "UDP",
        (16522, 16523),
        "RECORD",
    )


def test_transport_gstreamer_forms() -> None:
    (record,) = parse_transport("RTP/AVP/TCP;unicast;interleaved=0-1;mode=RECORD")
    assert record.mode == "RECORD"
    (quoted,) = parse_transport('RTP/AVP;unicast;client_port=5000-5001;mode="PLAY"')
    assert quoted.mode == "PLAY" and quoted.lower == "UDP"
    alternatives = parse_transport(
        "RTP/AVP/UDP;unicast;client_port=5000-5001,RTP/AVP/UDP;multicast,RTP/AVP/TCP"
    )
    assert [(t.lower, t.multicast) for t in alternatives] == [
        ("UDP", False),
        ("UDP", True),
        ("TCP", False),
    ]


def test_transport_server_answer_with_ssrc_and_extras() -> None:
    (spec,) = parse_transport(
        "RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;ssrc=1A2b3C4d;"
        "source=10.0.0.1;x-dynamic-rate"
    )
    assert spec.server_port == (6000, 6001)
    assert spec.ssrc == 0x1A2B3C4D
    assert spec.extra == (("source", "10.0.0.1"), ("x-dynamic-rate", None))
    assert spec.to_header() == (
        "RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;ssrc=1A2B3C4D;"
        "source=10.0.0.1;x-dynamic-rate"
    )
    assert parse_transport(spec.to_header()) == [spec]


def test_transport_single_port_means_a_pair() -> None:
    (spec,) = parse_transport("RTP/AVP/TCP;interleaved=4")
    assert spec.interleaved == (4, 5)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty Transport header"),
        ("RTP", "bad transport 'RTP'"),
        ("RTP/AVP/SCTP", "unknown lower transport 'SCTP'"),
        ("RTP/AVP/TCP;interleaved=0-256", "interleaved '0-256' out of range"),
        ("RTP/AVP;client_port=70000-70001", "client_port '70000-70001' out of range"),
        ("RTP/AVP;client_port=a-b", "bad client_port 'a-b'"),
        ("RTP/AVP;client_port=-5", "bad client_port '-5'"),
        ("RTP/AVP;client_port=²-³", "bad client_port '²-³'"),
        (
            "RTP/AVP;client_port=\u0665\u0660\u0660\u0660",
            "bad client_port '\u0665\u0660\u0660\u0660'",
        ),
        ("RTP/AVP/TCP;interleaved=0-²", "bad interleaved '0-²'"),
        ("RTP/AVP/TCP;interleaved=1_0", "bad interleaved '1_0'"),
        ("RTP/AVP;ssrc=\u0661\u0662", "bad ssrc '\u0661\u0662'"),
        ("RTP/AVP;ssrc=123456789", "bad ssrc '123456789'"),
        ("RTP/AVP;mode=", "bad mode ''"),
        ("RTP/AVP;bad param=1", "bad transport parameter 'bad param=1'"),
    ],
)
def test_bad_transports(value: str, reason: str) -> None:
    with pytest.raises(RtspParseError) as exc:
        parse_transport(value)
    assert exc.value.reason == reason
    assert exc.value.status == 461


def test_transport_limits() -> None:
    with pytest.raises(RtspParseError, match="more than 16 transport specs"):
        parse_transport(",".join(["RTP/AVP"] * 17))
    with pytest.raises(RtspParseError, match="more than 32 transport parameters"):
        parse_transport("RTP/AVP" + ";unicast" * 32)


def test_parse_session() -> None:
    assert parse_session("12345678;timeout=60") == ("12345678", 60)
    assert parse_session("4bE9a0") == ("4bE9a0", None)
    assert parse_session(" abc ; Timeout = 30 ") == ("abc", 30)
    with pytest.raises(RtspParseError) as bad_id:
        parse_session(";timeout=5")
    assert bad_id.value.status == 454
    with pytest.raises(RtspParseError, match="bad session timeout"):
        parse_session("abc;timeout=-1")
    for timeout in ("²", "\u06660", "6_0", "60.5"):
        with pytest.raises(RtspParseError, match="bad session timeout"):
            parse_session(f"abc;timeout={timeout}")
    with pytest.raises(RtspParseError, match="bad session id"):
        parse_session("a b")


@pytest.mark.parametrize(
    ("text", "maximum", "expected"),
    [
        ("0", 10, 0),
        ("007", 10, 7),
        ("10", 10, 10),
        ("11", 10, None),
        ("", 10, None),
        (" 1", 10, None),
        ("+1", 10, None),
        ("1_0", 100, None),
        ("²", 10, None),
        ("\u0663", 10, None),
        ("\uff11", 10, None),
        ("9" * 33, 10**40, None),
    ],
)
def test_ascii_uint(text: str, maximum: int, expected: int | None) -> None:
    assert ascii_uint(text, maximum) == expected


def test_ascii_hex() -> None:
    assert ascii_hex("00000001", 8) == 1 and ascii_hex("fF", 2) == 255
    for bad in ("", "123456789", "g", "\u0663", "0x1", " 1"):
        assert ascii_hex(bad, 8) is None


def test_in_message_tracks_requests_not_frames() -> None:
    parser = RtspParser()
    assert not parser.in_message
    assert parser.feed(b"\r\n") == [] and not parser.in_message
    assert parser.feed(b"$\x00\x00\x04ab") == []  # half an interleaved frame
    assert not parser.in_message
    assert parser.feed(b"cdOPT") == [InterleavedFrame(0, b"abcd")]
    assert parser.in_message
    parser.feed(b"IONS * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 2\r\n\r\n")
    assert parser.in_message  # the head is complete, the body is not
    (request,) = parser.feed(b"hi")
    assert isinstance(request, RtspRequest) and request.body == b"hi"
    assert not parser.in_message
