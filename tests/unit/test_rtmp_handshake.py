"""Tests for the server side of the plain RTMP handshake."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wcs.rtmp.handshake import HANDSHAKE_SIZE, HandshakeError, ServerHandshake

RANDOM = bytes(range(256)) * 5 + bytes(range(248))  # 1528 recognisable bytes
C1 = struct.pack(">I", 0x01020304) + b"\x00\x00\x00\x00" + bytes(i % 251 for i in range(1528))
C2 = b"\xee" * HANDSHAKE_SIZE  # garbage: C2 is not validated
CHUNKS = b"\x03\x00\x00\x00\x00\x00\x05\x14\x00\x00\x00\x00"


def make(uptime: int = 7000) -> ServerHandshake:
    return ServerHandshake(random_bytes=lambda n: RANDOM[:n], uptime_ms=lambda: uptime)


def expected_reply(uptime: int = 7000) -> bytes:
    now = struct.pack(">I", uptime & 0xFFFFFFFF)
    s1 = now + b"\x00" * 4 + RANDOM
    s2 = C1[:4] + now + C1[8:]
    return b"\x03" + s1 + s2


def test_reply_layout() -> None:
    out, done, leftover = make().feed(b"\x03" + C1)
    assert (done, leftover) == (False, b"")
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE
    assert out[0] == 3
    s1, s2 = out[1 : 1 + HANDSHAKE_SIZE], out[1 + HANDSHAKE_SIZE :]
    assert s1[:4] == struct.pack(">I", 7000)
    assert s1[4:8] == b"\x00\x00\x00\x00"
    assert s1[8:] == RANDOM
    assert s2[:4] == C1[:4]  # the client's time, echoed
    assert s2[4:8] == struct.pack(">I", 7000)  # when we read C1
    assert s2[8:] == C1[8:]  # the client's random data, echoed
    assert out == expected_reply()


def test_full_exchange_with_leftover_chunk_bytes() -> None:
    hs = make()
    out, done, leftover = hs.feed(b"\x03" + C1)
    assert out == expected_reply()
    assert not done
    assert not hs.done
    out, done, leftover = hs.feed(C2[:1000])
    assert (out, done, leftover) == (b"", False, b"")
    out, done, leftover = hs.feed(C2[1000:] + CHUNKS)
    assert (out, done, leftover) == (b"", True, CHUNKS)
    assert hs.done


def test_everything_in_one_feed() -> None:
    assert make().feed(b"\x03" + C1 + C2 + CHUNKS) == (expected_reply(), True, CHUNKS)


def test_feeding_after_done_is_all_leftover() -> None:
    hs = make()
    hs.feed(b"\x03" + C1 + C2)
    assert hs.feed(CHUNKS) == (b"", True, CHUNKS)
    assert hs.feed(b"") == (b"", True, b"")


def test_byte_by_byte() -> None:
    hs = make()
    data = b"\x03" + C1 + C2 + CHUNKS
    sent = b""
    results = []
    for i in range(len(data)):
        out, done, leftover = hs.feed(data[i : i + 1])
        sent += out
        results.append((done, leftover))
        if out:
            # The reply goes out as soon as the last byte of C1 arrives, not before.
            assert i == HANDSHAKE_SIZE
    assert sent == expected_reply()
    done_at = [i for i, (done, _) in enumerate(results) if done]
    assert done_at[0] == 1 + 2 * HANDSHAKE_SIZE - 1
    assert b"".join(leftover for _, leftover in results) == CHUNKS


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3200), max_size=6))
def test_random_splits_give_the_same_result(cuts: list[int]) -> None:
    data = b"\x03" + C1 + C2 + CHUNKS
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    hs = make()
    sent = b""
    leftover = b""
    done = False
    for piece in pieces:
        out, done, rest = hs.feed(piece)
        sent += out
        leftover += rest
    assert (sent, done, leftover) == (expected_reply(), True, CHUNKS)


@pytest.mark.parametrize("version", [0, 6, 0x16, 0x47])
def test_unsupported_version_is_refused_from_the_first_byte(version: int) -> None:
    # 6 is RTMPE, 0x16 a TLS ClientHello, 0x47 "GET" from an HTTP client.
    with pytest.raises(HandshakeError, match=f"^unsupported RTMP version {version}$"):
        make().feed(bytes((version,)))


def test_uptime_is_sent_modulo_2_32() -> None:
    out, _, _ = make(uptime=2**32 + 5).feed(b"\x03" + C1)
    assert out[1:5] == b"\x00\x00\x00\x05"


def test_default_sources_work() -> None:
    out, done, _ = ServerHandshake().feed(b"\x03" + C1 + C2)
    assert done
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE
    assert out[1 + HANDSHAKE_SIZE + 8 :] == C1[8:]


def test_short_random_source_is_a_programming_error() -> None:
    hs = ServerHandshake(random_bytes=lambda n: b"x", uptime_ms=lambda: 0)
    with pytest.raises(ValueError, match=r"^random_bytes returned 1 bytes, not 1528$"):
        hs.feed(b"\x03" + C1)
