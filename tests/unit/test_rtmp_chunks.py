"""Tests for the RTMP chunk stream decoder/encoder and the protocol control message helpers."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wcs.rtmp import amf0
from wcs.rtmp.chunks import (
    ABORT,
    ACKNOWLEDGEMENT,
    AUDIO,
    COMMAND_AMF0,
    DATA_AMF0,
    MIN_CHUNK_SIZE,
    PING_REQUEST,
    SET_BUFFER_LENGTH,
    SET_CHUNK_SIZE,
    SET_PEER_BANDWIDTH,
    STREAM_BEGIN,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK_SIZE,
    BufferBudget,
    ChunkDecoder,
    ChunkEncoder,
    ChunkError,
    Message,
    TooManyMessages,
    acknowledgement_message,
    parse_uint32,
    parse_user_control,
    set_chunk_size_message,
    set_peer_bandwidth_message,
    user_control_message,
    window_ack_size_message,
)


def basic(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    return bytes(((fmt << 6) | 1,)) + (csid - 64).to_bytes(2, "little")


def header(
    fmt: int,
    csid: int,
    ts: int = 0,
    length: int = 0,
    type_id: int = 0,
    stream_id: int = 0,
    ext: int | None = None,
) -> bytes:
    """A chunk header built by hand, independently of ChunkEncoder."""
    out = basic(fmt, csid)
    if fmt <= 2:
        out += (0xFFFFFF if ext is not None else ts).to_bytes(3, "big")
    if fmt <= 1:
        out += length.to_bytes(3, "big") + bytes((type_id,))
    if fmt == 0:
        out += stream_id.to_bytes(4, "little")
    if ext is not None:
        out += ext.to_bytes(4, "big")
    return out


def feed_bytewise(data: bytes, **limits: Any) -> list[Message]:
    decoder = ChunkDecoder(**limits)
    messages: list[Message] = []
    for i in range(len(data)):
        messages += decoder.feed(data[i : i + 1])
    return messages


def feed_all(data: bytes, **limits: Any) -> list[Message]:
    return ChunkDecoder(**limits).feed(data)


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 256 for i in range(n))


# -- a captured-style ffmpeg publish ----------------------------------------------------------

CONNECT = amf0.encode(
    "connect",
    1,
    {
        "app": "live",
        "type": "nonprivate",
        "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)",
        "tcUrl": "rtmp://127.0.0.1:1935/live",
    },
)
AVC_CONFIG = b"\x17\x00\x00\x00\x00" + bytes.fromhex("01640028ffe1001b67640028acd940780227e5c0")
NALU = b"\x17\x01\x00\x00\x50" + payload(5000, 3)


def ffmpeg_capture() -> bytes:
    """What ffmpeg writes after the handshake, chunked by hand as it chunks it."""
    assert 128 < len(CONNECT) <= 256
    data = header(0, 3, 0, len(CONNECT), COMMAND_AMF0, 0) + CONNECT[:128]
    data += bytes((0xC3,)) + CONNECT[128:]
    data += header(0, 2, 0, 4, SET_CHUNK_SIZE, 0) + struct.pack(">I", 4096)
    # Video on csid 6, stream 1: the sequence header with fmt 0, then a frame 40 ms later with
    # fmt 1, split at the new chunk size of 4096.
    data += header(0, 6, 0, len(AVC_CONFIG), VIDEO, 1) + AVC_CONFIG
    data += header(1, 6, 40, len(NALU), VIDEO) + NALU[:4096]
    data += bytes((0xC6,)) + NALU[4096:]
    return data


FFMPEG_MESSAGES = [
    Message(3, COMMAND_AMF0, 0, 0, CONNECT),
    Message(2, SET_CHUNK_SIZE, 0, 0, b"\x00\x00\x10\x00"),
    Message(6, VIDEO, 1, 0, AVC_CONFIG),
    Message(6, VIDEO, 1, 40, NALU),
]


def test_ffmpeg_capture_one_shot_and_byte_by_byte() -> None:
    decoder = ChunkDecoder()
    data = ffmpeg_capture()
    assert decoder.feed(data) == FFMPEG_MESSAGES
    assert decoder.chunk_size == 4096
    assert decoder.bytes_received == len(data)
    assert feed_bytewise(data) == FFMPEG_MESSAGES
    assert amf0.decode(FFMPEG_MESSAGES[0].payload)[0] == "connect"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 6000), max_size=8))
def test_ffmpeg_capture_random_splits(cuts: list[int]) -> None:
    data = ffmpeg_capture()
    points = sorted({min(c, len(data)) for c in cuts})
    decoder = ChunkDecoder()
    messages: list[Message] = []
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        messages += decoder.feed(data[a:b])
    assert messages == FFMPEG_MESSAGES
    assert decoder.bytes_received == len(data)


# -- header formats and timestamps ------------------------------------------------------------


def test_every_fmt_and_its_timestamp_rule() -> None:
    data = (
        header(0, 4, 1000, 3, AUDIO, 1) + b"abc"  # absolute 1000
        + header(1, 4, 40, 2, VIDEO) + b"de"  # delta 40, new length and type
        + header(2, 4, 33) + b"fg"  # delta 33, same length and type
        + header(3, 4) + b"hi"  # new message: repeats delta 33
        + header(3, 4) + b"jk"  # and again
    )  # fmt: skip
    expected = [
        Message(4, AUDIO, 1, 1000, b"abc"),
        Message(4, VIDEO, 1, 1040, b"de"),
        Message(4, VIDEO, 1, 1073, b"fg"),
        Message(4, VIDEO, 1, 1106, b"hi"),
        Message(4, VIDEO, 1, 1139, b"jk"),
    ]
    assert feed_all(data) == expected
    assert feed_bytewise(data) == expected


def test_fmt3_new_message_after_fmt0_uses_the_absolute_timestamp_as_delta() -> None:
    # RTMP spec 5.3.1.2.4 and FFmpeg: the fmt 0 timestamp field is the delta fmt 3 repeats.
    data = header(0, 5, 40, 1, AUDIO, 1) + b"a" + header(3, 5) + b"b"
    assert [m.timestamp for m in feed_all(data)] == [40, 80]


def test_fmt0_resets_the_timestamp_and_stream_id() -> None:
    data = (
        header(0, 5, 500, 1, AUDIO, 1) + b"a"
        + header(0, 5, 20, 1, AUDIO, 7) + b"b"
        + header(2, 5, 5) + b"c"
    )  # fmt: skip
    assert [(m.timestamp, m.stream_id) for m in feed_all(data)] == [(500, 1), (20, 7), (25, 7)]


def test_continuation_chunks_do_not_change_the_timestamp() -> None:
    body = payload(300)
    data = header(0, 4, 10, 300, VIDEO, 1) + body[:128]
    data += header(3, 4) + body[128:256] + header(3, 4) + body[256:]
    data += header(1, 4, 5, 1, VIDEO) + payload(1)
    assert feed_all(data) == [
        Message(4, VIDEO, 1, 10, body),
        Message(4, VIDEO, 1, 15, payload(1)),
    ]


def test_timestamps_wrap_modulo_2_32() -> None:
    data = (
        header(0, 4, ext=0xFFFFFFF0, length=1, type_id=AUDIO) + b"a"
        + header(1, 4, 0x20, 1, AUDIO) + b"b"
        + header(3, 4) + b"c"
    )  # fmt: skip
    assert [m.timestamp for m in feed_all(data)] == [0xFFFFFFF0, 0x10, 0x30]


def test_zero_length_message() -> None:
    data = header(0, 3, 7, 0, DATA_AMF0, 1) + header(2, 3, 1)
    assert feed_all(data) == [Message(3, DATA_AMF0, 1, 7, b""), Message(3, DATA_AMF0, 1, 8, b"")]


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_compressed_header_on_unknown_chunk_stream(fmt: int) -> None:
    data = header(fmt, 9, 0, 1, AUDIO) + b"x"
    with pytest.raises(
        ChunkError, match=f"^fmt {fmt} chunk on chunk stream 9 before any fmt 0 chunk$"
    ):
        feed_all(data)


@pytest.mark.parametrize("csid", [2, 3, 63, 64, 65, 319, 320, 321, 65599])
def test_basic_header_forms(csid: int) -> None:
    msg = Message(csid, AUDIO, 1, 5, payload(200))
    encoded = ChunkEncoder().encode(msg)
    prefix = basic(0, csid)
    assert encoded.startswith(prefix)
    assert len(prefix) == (1 if csid < 64 else 2 if csid < 320 else 3)
    # The continuation chunk has the same basic header form with fmt 3.
    assert basic(3, csid) + msg.payload[128:] == encoded[-(len(basic(3, csid)) + 72) :]
    assert feed_all(encoded) == [msg]
    assert feed_bytewise(encoded) == [msg]


def test_interleaved_chunk_streams() -> None:
    a, b = payload(300, 1), payload(200, 2)
    data = (
        header(0, 4, 100, 300, AUDIO, 1) + a[:128]
        + header(0, 6, 200, 200, VIDEO, 1) + b[:128]
        + header(3, 4) + a[128:256]
        + header(3, 6) + b[128:]
        + header(3, 4) + a[256:]
    )  # fmt: skip
    expected = [Message(6, VIDEO, 1, 200, b), Message(4, AUDIO, 1, 100, a)]
    assert feed_all(data) == expected
    assert feed_bytewise(data) == expected


def test_full_header_mid_message_is_a_continuation_when_it_agrees() -> None:
    body = payload(200)
    data = header(0, 5, 10, 200, VIDEO, 1) + body[:128] + header(1, 5, 99, 200, VIDEO) + body[128:]
    assert feed_all(data) == [Message(5, VIDEO, 1, 10, body)]


def test_full_header_mid_message_that_disagrees_is_an_error() -> None:
    data = header(0, 5, 10, 200, VIDEO, 1) + payload(128) + header(1, 5, 99, 150, VIDEO)
    with pytest.raises(ChunkError, match=r"^chunk stream 5 changed message header mid-message$"):
        feed_all(data)


# -- extended timestamps ----------------------------------------------------------------------

BIG = 0x01234567


def test_extended_timestamp_repeated_on_continuation_chunks() -> None:
    body = payload(300)
    ext = BIG.to_bytes(4, "big")
    data = header(0, 4, ext=BIG, length=300, type_id=VIDEO, stream_id=1) + body[:128]
    data += header(3, 4) + ext + body[128:256] + header(3, 4) + ext + body[256:]
    expected = [Message(4, VIDEO, 1, BIG, body)]
    assert feed_all(data) == expected
    assert feed_bytewise(data) == expected


def test_extended_timestamp_not_repeated_on_continuation_chunks() -> None:
    body = payload(300)
    data = header(0, 4, ext=BIG, length=300, type_id=VIDEO, stream_id=1) + body[:128]
    data += header(3, 4) + body[128:256] + header(3, 4) + body[256:]
    expected = [Message(4, VIDEO, 1, BIG, body)]
    assert feed_all(data) == expected
    assert feed_bytewise(data) == expected


def test_extended_delta_on_fmt1_and_fmt3_new_message() -> None:
    delta = 0x01000000
    data = (
        header(0, 4, 1000, 1, VIDEO, 1) + b"a"
        + header(1, 4, ext=delta, length=1, type_id=VIDEO) + b"b"
        + header(3, 4) + delta.to_bytes(4, "big") + b"c"  # with the repetition
        + header(3, 4) + b"d"  # without it
    )  # fmt: skip
    # Whether "d" is preceded by a repetition is known only once 4 bytes follow its header.
    assert len(feed_all(data)) == 3
    data += header(0, 3, 0, 0, AUDIO)
    expected = [1000, 1000 + delta, 1000 + 2 * delta, 1000 + 3 * delta, 0]
    assert [m.timestamp for m in feed_all(data)] == expected
    assert [m.payload for m in feed_bytewise(data)] == [b"a", b"b", b"c", b"d", b""]


def test_no_extended_context_after_a_plain_header() -> None:
    # The bytes after this fmt 3 header equal the old extended value, but the latest fmt 0/1/2
    # header had a plain timestamp, so they are payload.
    ext = BIG.to_bytes(4, "big")
    data = (
        header(0, 4, ext=BIG, length=4, type_id=AUDIO) + b"aaaa"
        + header(1, 4, 1, 4, AUDIO) + b"bbbb"
        + header(3, 4) + ext
    )  # fmt: skip
    assert [m.payload for m in feed_all(data)] == [b"aaaa", b"bbbb", ext]


def test_decoder_waits_for_four_bytes_before_deciding_on_the_repetition() -> None:
    body = payload(130)
    decoder = ChunkDecoder()
    assert decoder.feed(header(0, 4, ext=BIG, length=130, type_id=VIDEO) + body[:128]) == []
    assert decoder.feed(header(3, 4) + body[128:129]) == []
    assert decoder.feed(body[129:] + header(0, 3, 0, 2, AUDIO)) == [Message(4, VIDEO, 0, BIG, body)]


# -- control messages inside the stream -------------------------------------------------------


def test_chunk_size_change_applies_to_the_rest_of_the_same_feed() -> None:
    body = payload(1000)
    data = header(0, 2, 0, 4, SET_CHUNK_SIZE) + struct.pack(">I", 1000)
    data += header(0, 6, 0, 1000, VIDEO, 1) + body
    decoder = ChunkDecoder()
    assert decoder.feed(data) == [
        Message(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 1000)),
        Message(6, VIDEO, 1, 0, body),
    ]
    assert decoder.chunk_size == 1000
    assert feed_bytewise(data)[1].payload == body


def test_chunk_size_change_between_chunks_of_another_message() -> None:
    body = payload(300)
    data = (
        header(0, 6, 0, 300, VIDEO, 1) + body[:128]
        + header(0, 2, 0, 4, SET_CHUNK_SIZE) + struct.pack(">I", 4096)
        + header(3, 6) + body[128:]  # the remaining 172 bytes now fit in one chunk
    )  # fmt: skip
    assert feed_all(data)[-1] == Message(6, VIDEO, 1, 0, body)


def test_abort_drops_the_partial_message() -> None:
    data = (
        header(0, 5, 0, 300, VIDEO, 1) + payload(128)
        + header(0, 2, 0, 4, ABORT) + struct.pack(">I", 5)
        + header(0, 5, 40, 3, VIDEO, 1) + b"new"
        + header(0, 2, 0, 4, ABORT) + struct.pack(">I", 77)  # unknown csid: nothing to drop
    )  # fmt: skip
    abort5 = Message(2, ABORT, 0, 0, struct.pack(">I", 5))
    abort77 = Message(2, ABORT, 0, 0, struct.pack(">I", 77))
    expected = [abort5, Message(5, VIDEO, 1, 40, b"new"), abort77]
    assert feed_all(data) == expected
    assert feed_bytewise(data) == expected


@pytest.mark.parametrize("value", [0, 0x80000000, 0x80000080, 65537])
def test_invalid_chunk_size(value: int) -> None:
    data = header(0, 2, 0, 4, SET_CHUNK_SIZE) + struct.pack(">I", value)
    with pytest.raises(ChunkError, match=f"^invalid chunk size {value}$"):
        feed_all(data, max_chunk_size=65536)


@pytest.mark.parametrize("value", [1, 2, 64, 127])
def test_chunk_sizes_below_128_are_refused(value: int) -> None:
    # A 1-byte chunk costs a header per payload byte: 4 MB at chunk size 1 took 1.6 s of CPU.
    data = header(0, 2, 0, 4, SET_CHUNK_SIZE) + struct.pack(">I", value)
    with pytest.raises(ChunkError, match=f"^invalid chunk size {value}: below the minimum of 128$"):
        feed_all(data)
    assert MIN_CHUNK_SIZE == 128
    decoder = ChunkDecoder()
    decoder.feed(header(0, 2, 0, 4, SET_CHUNK_SIZE) + struct.pack(">I", 128))
    assert decoder.chunk_size == 128


def test_largest_allowed_chunk_size() -> None:
    data = header(0, 2, 0, 4, SET_CHUNK_SIZE) + struct.pack(">I", 65536)
    decoder = ChunkDecoder(max_chunk_size=65536)
    decoder.feed(data)
    assert decoder.chunk_size == 65536


def test_short_set_chunk_size_payload() -> None:
    with pytest.raises(ChunkError, match=r"^expected a 4-byte value, got 2 bytes$"):
        feed_all(header(0, 2, 0, 2, SET_CHUNK_SIZE) + b"\x00\x10")


# -- limits -----------------------------------------------------------------------------------


def test_message_size_limit() -> None:
    assert feed_all(header(0, 3, 0, 100, AUDIO) + payload(100), max_message_size=100)
    with pytest.raises(ChunkError, match=r"^message of 101 bytes exceeds limit of 100$"):
        feed_all(header(0, 3, 0, 101, AUDIO), max_message_size=100)
    # A fmt 1 header declaring a new length is checked too.
    data = header(0, 3, 0, 1, AUDIO) + b"a" + header(1, 3, 0, 5000, AUDIO)
    with pytest.raises(ChunkError, match=r"^message of 5000 bytes exceeds limit of 100$"):
        feed_all(data, max_message_size=100)


def test_chunk_stream_limit() -> None:
    data = b"".join(header(0, csid, 0, 1, AUDIO) + b"x" for csid in (3, 4, 5))
    assert len(feed_all(data, max_chunk_streams=3)) == 3
    # Reusing a known chunk stream is fine; a fourth distinct one is not.
    again = data + header(0, 3, 0, 1, AUDIO) + b"y"
    assert len(feed_all(again, max_chunk_streams=3)) == 4
    with pytest.raises(ChunkError, match=r"^too many chunk streams \(limit 3\)$"):
        feed_all(data + header(0, 64, 0, 1, AUDIO) + b"z", max_chunk_streams=3)


def test_bytes_received_counts_everything_fed() -> None:
    decoder = ChunkDecoder()
    decoder.feed(b"\x03\x00")
    decoder.feed(b"")
    decoder.feed(b"\x00\x00")
    assert decoder.bytes_received == 4


def test_decoder_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match=r"^decoder limits must be positive$"):
        ChunkDecoder(max_chunk_streams=0)
    with pytest.raises(ValueError, match=r"^minimum chunk size 0 out of range$"):
        ChunkDecoder(min_chunk_size=0)
    with pytest.raises(ValueError, match=r"^buffer budget must not be negative, got -1$"):
        BufferBudget(-1)


# -- what a decoder holds: per decoder and shared ---------------------------------------------


def partial_on(csid: int, declared: int, sent: int) -> bytes:
    """A message of `declared` bytes on `csid`, of which the first `sent` (< 128) bytes come."""
    return header(0, csid, 0, declared, VIDEO, 1) + payload(sent)


def test_buffered_counts_the_bytes_that_came_not_the_declared_length() -> None:
    decoder = ChunkDecoder(max_buffered=1000)
    data = partial_on(4, 5_000_000, 100)
    assert decoder.feed(data) == []
    # The incomplete first chunk, header included, is all that is held.
    assert decoder.buffered == len(data)
    decoder.feed(payload(28))  # the first chunk completes: 128 bytes of partial message
    assert decoder.buffered == 128


def test_partial_messages_of_all_chunk_streams_share_one_cap() -> None:
    # Each chunk stream alone is far below the message size limit; together they are not.
    data = b"".join(header(0, csid, 0, 10_000, VIDEO, 1) + payload(128) for csid in (3, 4, 5))
    decoder = ChunkDecoder(max_buffered=300)
    with pytest.raises(
        ChunkError, match=r"^384 bytes of partial messages exceed the limit of 300 per connection$"
    ):
        decoder.feed(data)
    ok = ChunkDecoder(max_buffered=384)
    assert ok.feed(data) == []
    assert ok.buffered == 384


def test_completed_and_aborted_messages_release_their_bytes() -> None:
    budget = BufferBudget(10_000)
    decoder = ChunkDecoder(budget=budget)
    decoder.feed(header(0, 4, 0, 300, VIDEO, 1) + payload(128) + header(3, 4) + payload(128))
    decoder.feed(header(0, 5, 0, 300, AUDIO, 1) + payload(128))
    assert decoder.buffered == budget.used == 384
    decoder.feed(header(3, 4) + payload(44))  # csid 4 completes
    assert decoder.buffered == budget.used == 128
    decoder.feed(header(0, 2, 0, 4, ABORT) + struct.pack(">I", 5))
    assert decoder.buffered == budget.used == 0


def test_decoders_sharing_a_budget() -> None:
    budget = BufferBudget(1000)
    first, second = ChunkDecoder(budget=budget), ChunkDecoder(budget=budget)
    held = b"".join(header(0, csid, 0, 10_000, VIDEO, 1) + payload(128) for csid in range(3, 8))
    first.feed(held)
    assert budget.used == first.buffered == 640
    with pytest.raises(
        ChunkError, match=r"^server-wide buffer for partial messages \(1000 bytes\) is used up$"
    ):
        second.feed(held)
    # What the failed claim would have taken was not taken; closing gives the rest back.
    second.close()
    assert budget.used == 640
    first.close()
    assert budget.used == first.buffered == 0
    third = ChunkDecoder(budget=budget)
    third.feed(held)
    assert budget.used == 640


def test_close_releases_unparsed_input_too() -> None:
    budget = BufferBudget(1000)
    decoder = ChunkDecoder(budget=budget)
    decoder.feed(header(0, 4, 0, 5000, VIDEO, 1) + payload(50))
    assert budget.used == decoder.buffered == 12 + 50
    decoder.close()
    assert budget.used == decoder.buffered == 0


def test_max_messages_per_feed() -> None:
    empty = header(0, 4, 0, 0, AUDIO, 1) + bytes((0xC4,)) * 9  # ten empty messages
    assert len(ChunkDecoder().feed(empty, max_messages=10)) == 10
    with pytest.raises(TooManyMessages, match=r"^more than 9 messages in one read$"):
        ChunkDecoder().feed(empty, max_messages=9)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_chunk_error(data: bytes) -> None:
    with contextlib.suppress(ChunkError):
        feed_all(data, max_message_size=4096)


# -- encoder ----------------------------------------------------------------------------------


def test_encoder_exact_bytes() -> None:
    msg = Message(3, COMMAND_AMF0, 1, 0x1234, payload(130))
    assert ChunkEncoder().encode(msg) == (
        b"\x03\x00\x12\x34\x00\x00\x82\x14\x01\x00\x00\x00" + payload(130)[:128]
        + b"\xc3" + payload(130)[128:]
    )  # fmt: skip


def test_encoder_repeats_extended_timestamp_on_continuation_chunks() -> None:
    msg = Message(4, VIDEO, 1, 0xFFFFFF, payload(20))
    encoded = ChunkEncoder(chunk_size=10).encode(msg)
    ext = b"\x00\xff\xff\xff"
    assert encoded == (
        b"\x04\xff\xff\xff\x00\x00\x14\x09\x01\x00\x00\x00" + ext + payload(20)[:10]
        + b"\xc4" + ext + payload(20)[10:]
    )  # fmt: skip


def test_encoder_chunk_size() -> None:
    encoder = ChunkEncoder()
    msg = Message(3, AUDIO, 1, 0, payload(300))
    p = msg.payload
    assert encoder.encode(msg) == (
        header(0, 3, 0, 300, AUDIO, 1) + p[:128] + b"\xc3" + p[128:256] + b"\xc3" + p[256:]
    )
    encoder.set_chunk_size(4096)
    assert encoder.chunk_size == 4096
    assert encoder.encode(msg) == header(0, 3, 0, 300, AUDIO, 1) + msg.payload
    with pytest.raises(ValueError, match=r"^invalid chunk size 0$"):
        encoder.set_chunk_size(0)
    with pytest.raises(ValueError, match=r"^invalid chunk size 2147483648$"):
        ChunkEncoder(0x80000000)


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        (Message(1, AUDIO, 0, 0, b""), r"chunk stream id 1 out of range 2..65599"),
        (Message(65600, AUDIO, 0, 0, b""), r"chunk stream id 65600 out of range 2..65599"),
        (Message(3, 256, 0, 0, b""), r"message type 256 out of range"),
        (Message(3, AUDIO, 2**32, 0, b""), r"message stream id 4294967296 out of range"),
        (Message(3, AUDIO, 0, -1, b""), r"timestamp -1 out of range"),
        (Message(3, AUDIO, 0, 0, bytes(2**24)), r"message of 16777216 bytes is too long for RTMP"),
    ],
)
def test_encoder_rejects_unencodable_messages(msg: Message, error: str) -> None:
    with pytest.raises(ValueError, match=f"^{error}$"):
        ChunkEncoder().encode(msg)


message_strategy = st.builds(
    Message,
    csid=st.sampled_from([2, 3, 4, 5, 6, 8, 63, 64, 100, 319, 320, 1000, 65599]),
    type_id=st.integers(0, 255).filter(lambda t: t not in (SET_CHUNK_SIZE, ABORT)),
    stream_id=st.integers(0, 2**32 - 1),
    timestamp=st.integers(0, 2**32 - 1) | st.integers(0xFFFFF0, 0x100000F),
    payload=st.binary(max_size=600),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(message_strategy, max_size=6),
    st.integers(1, 300),
    st.lists(st.integers(0, 4000), max_size=6),
)
def test_encoder_decoder_round_trip(
    messages: list[Message], chunk_size: int, cuts: list[int]
) -> None:
    encoder = ChunkEncoder()
    announce = set_chunk_size_message(chunk_size)
    data = encoder.encode(announce)
    encoder.set_chunk_size(chunk_size)
    data += b"".join(encoder.encode(m) for m in messages)

    # Tiny chunks are refused from peers, but the parser must handle every size correctly.
    assert feed_all(data, min_chunk_size=1) == [announce, *messages]
    points = sorted({min(c, len(data)) for c in cuts})
    decoder = ChunkDecoder(min_chunk_size=1)
    split: list[Message] = []
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        split += decoder.feed(data[a:b])
    assert split == [announce, *messages]
    assert decoder.chunk_size == chunk_size


@settings(max_examples=50, deadline=None)
@given(st.lists(message_strategy, max_size=3), st.integers(1, 40))
def test_round_trip_byte_by_byte(messages: list[Message], chunk_size: int) -> None:
    encoder = ChunkEncoder()
    announce = set_chunk_size_message(chunk_size)
    data = encoder.encode(announce)
    encoder.set_chunk_size(chunk_size)
    data += b"".join(encoder.encode(m) for m in messages)
    assert feed_bytewise(data, min_chunk_size=1) == [announce, *messages]


# -- control message helpers ------------------------------------------------------------------


def test_control_message_helpers() -> None:
    assert set_chunk_size_message(4096) == Message(2, SET_CHUNK_SIZE, 0, 0, b"\x00\x00\x10\x00")
    assert window_ack_size_message(2_500_000) == Message(
        2, WINDOW_ACK_SIZE, 0, 0, struct.pack(">I", 2_500_000)
    )
    assert set_peer_bandwidth_message(2_500_000) == Message(
        2, SET_PEER_BANDWIDTH, 0, 0, struct.pack(">IB", 2_500_000, 2)
    )
    assert set_peer_bandwidth_message(1, 0).payload == b"\x00\x00\x00\x01\x00"
    assert acknowledgement_message(5000) == Message(2, ACKNOWLEDGEMENT, 0, 0, b"\x00\x00\x13\x88")
    assert acknowledgement_message(2**32 + 1).payload == b"\x00\x00\x00\x01"
    assert user_control_message(STREAM_BEGIN, 1) == Message(
        2, USER_CONTROL, 0, 0, b"\x00\x00\x00\x00\x00\x01"
    )
    assert user_control_message(SET_BUFFER_LENGTH, 1, 3000).payload == (
        b"\x00\x03\x00\x00\x00\x01\x00\x00\x0b\xb8"
    )


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: set_chunk_size_message(0), r"invalid chunk size 0"),
        (lambda: set_chunk_size_message(2**31), r"invalid chunk size 2147483648"),
        (lambda: window_ack_size_message(-1), r"window size -1 out of range"),
        (lambda: set_peer_bandwidth_message(1, 3), r"invalid peer bandwidth limit type 3"),
        (lambda: user_control_message(0x10000), r"user control event 65536 out of range"),
        (lambda: user_control_message(0, 2**32), r"argument 4294967296 out of range"),
    ],
)
def test_control_helpers_reject_bad_values(call: Callable[[], object], error: str) -> None:
    with pytest.raises(ValueError, match=f"^{error}$"):
        call()


def test_parse_user_control() -> None:
    assert parse_user_control(user_control_message(PING_REQUEST, 123456).payload) == (
        PING_REQUEST,
        (123456,),
    )
    assert parse_user_control(b"\x00\x03\x00\x00\x00\x01\x00\x00\x0b\xb8") == (3, (1, 3000))
    assert parse_user_control(b"\x00\x1a") == (26, ())
    assert parse_user_control(b"\x00\x00\x00\x00\x00\x01\xff") == (0, (1,))  # stray byte ignored
    with pytest.raises(ChunkError, match=r"^truncated user control message of 1 bytes$"):
        parse_user_control(b"\x00")


def test_parse_uint32() -> None:
    assert parse_uint32(b"\x00\x00\x10\x00") == 4096
    assert parse_uint32(b"\xff\xff\xff\xff\x02") == 0xFFFFFFFF
    with pytest.raises(ChunkError, match=r"^expected a 4-byte value, got 3 bytes$"):
        parse_uint32(b"\x00\x00\x10")
