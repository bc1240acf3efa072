"""Tests for the AMF0 codec: wire bytes per marker, round trips, limits and malformed input."""

from __future__ import annotations

import contextlib
import copy
import pickle
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wcs.rtmp.amf0 import (
    UNDEFINED,
    AMF0Date,
    AMF0Error,
    ECMAArray,
    TypedObject,
    Undefined,
    decode,
    decode_one,
    encode,
)


def s16(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def num(x: float) -> bytes:
    return b"\x00" + struct.pack(">d", x)


END = b"\x00\x00\x09"


# -- decoding each marker ---------------------------------------------------------------------


def test_decode_scalars() -> None:
    data = (
        num(1.5)
        + b"\x01\x01"
        + b"\x01\x00"
        + b"\x02"
        + s16("héllo")
        + b"\x05"
        + b"\x06"
        + b"\x0d"
        + b"\x0c\x00\x00\x00\x03abc"
        + b"\x0f\x00\x00\x00\x04<a/>"
        + b"\x0b"
        + struct.pack(">dh", 1.7e12, -60)
    )
    assert decode(data) == [
        1.5,
        True,
        False,
        "héllo",
        None,
        UNDEFINED,
        UNDEFINED,
        "abc",
        "<a/>",
        AMF0Date(1.7e12, -60),
    ]


def test_decode_one_returns_end_offset_and_honours_start_offset() -> None:
    data = b"\xff" + num(2.0) + b"\x05"
    assert decode_one(data, 1) == (2.0, 10)
    assert decode_one(data, 10) == (None, 11)


def test_decode_connect_command_as_ffmpeg_sends_it() -> None:
    body = (
        b"\x02"
        + s16("connect")
        + num(1.0)
        + b"\x03"
        + s16("app")
        + b"\x02"
        + s16("live")
        + s16("type")
        + b"\x02"
        + s16("nonprivate")
        + s16("flashVer")
        + b"\x02"
        + s16("FMLE/3.0 (compatible; Lavf61.7.100)")
        + s16("tcUrl")
        + b"\x02"
        + s16("rtmp://127.0.0.1:1935/live")
        + END
    )
    assert decode(body) == [
        "connect",
        1.0,
        {
            "app": "live",
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)",
            "tcUrl": "rtmp://127.0.0.1:1935/live",
        },
    ]


def test_ecma_array_count_is_ignored() -> None:
    # OBS-style onMetaData with a count that disagrees with the real number of entries.
    data = b"\x08\x00\x00\x00\x07" + s16("width") + num(1280.0) + s16("height") + num(720) + END
    (value,) = decode(data)
    assert type(value) is ECMAArray
    assert value == {"width": 1280.0, "height": 720.0}


def test_strict_array_and_typed_object() -> None:
    data = (
        b"\x0a\x00\x00\x00\x02"
        + num(1.0)
        + b"\x02"
        + s16("x")
        + b"\x10"
        + s16("flex.Foo")
        + s16("a")
        + b"\x05"
        + END
    )
    assert decode(data) == [[1.0, "x"], TypedObject("flex.Foo", {"a": None})]


def test_empty_key_with_a_value_is_a_property_not_the_end() -> None:
    data = b"\x03" + s16("") + num(3.0) + END
    assert decode(data) == [{"": 3.0}]


def test_references_point_at_complex_values_in_order_of_appearance() -> None:
    inner = b"\x03" + s16("k") + num(1.0) + END  # ref 1 (the outer array is ref 0)
    ecma = b"\x08\x00\x00\x00\x00" + END  # ref 2
    data = b"\x0a\x00\x00\x00\x04" + inner + ecma + b"\x07\x00\x01" + b"\x07\x00\x02"
    (value,) = decode(data)
    assert isinstance(value, list)
    assert value == [{"k": 1.0}, {}, {"k": 1.0}, {}]
    assert value[2] is value[0]
    assert value[3] is value[1]
    assert type(value[3]) is ECMAArray


def test_reference_table_spans_the_values_of_one_decode_call() -> None:
    data = b"\x03" + s16("a") + b"\x05" + END + b"\x07\x00\x00"
    first, second = decode(data)
    assert first is second


def test_reference_out_of_range() -> None:
    with pytest.raises(AMF0Error, match=r"^AMF0 reference 0 out of range at offset 0$"):
        decode(b"\x07\x00\x00")
    with pytest.raises(AMF0Error, match=r"^AMF0 reference 1 out of range at offset 8$"):
        decode(b"\x03" + s16("a") + b"\x05" + END + b"\x07\x00\x01")


def test_reference_to_unfinished_object_is_rejected() -> None:
    # {"self": <ref 0>} would be a cycle.
    with pytest.raises(AMF0Error, match=r"^AMF0 reference 0 to an unfinished object at offset 7$"):
        decode(b"\x03" + s16("self") + b"\x07\x00\x00" + END)


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated AMF0 marker at offset 0"),
        (b"\x00\x3f\xf0", "truncated AMF0 number at offset 1"),
        (b"\x01", "truncated AMF0 boolean at offset 1"),
        (b"\x02\x00", "truncated AMF0 string length at offset 1"),
        (b"\x02\x00\x05abc", "truncated AMF0 string at offset 3"),
        (b"\x0c\x00\x00\x01\x00ab", "truncated AMF0 long string at offset 5"),
        (b"\x0f\x00\x00", "truncated AMF0 XML document length at offset 1"),
        (b"\x0b" + b"\x00" * 9, "truncated AMF0 date at offset 1"),
        (b"\x07\x00", "truncated AMF0 reference at offset 1"),
        (b"\x08\x00\x00", "truncated AMF0 ECMA array count at offset 1"),
        (b"\x0a\x00\x00\x00\x02" + num(1.0), "truncated AMF0 marker at offset 14"),
        (b"\x03" + s16("a"), "truncated AMF0 marker at offset 4"),
        (b"\x03\x00", "truncated AMF0 property name length at offset 1"),
        (b"\x03\x00\x00", "truncated AMF0 object end marker at offset 3"),
        (b"\x10\x00\x03ab", "truncated AMF0 typed object class name at offset 3"),
    ],
)
def test_truncated_input(data: bytes, message: str) -> None:
    with pytest.raises(AMF0Error, match=f"^{message}$"):
        decode_one(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x12", "unknown AMF0 marker 0x12 at offset 0"),
        (b"\x05\xff", "unknown AMF0 marker 0xff at offset 1"),
        (b"\x04", "unsupported AMF0 movieclip marker at offset 0"),
        (b"\x0e", "unsupported AMF0 recordset marker at offset 0"),
        (b"\x09", "unexpected AMF0 object end marker at offset 0"),
        (b"\x03" + s16("a") + b"\x09", "unexpected AMF0 object end marker at offset 4"),
        (b"\x11\x06", "AMF3 values are not supported"),
        (b"\x02\x00\x02\xc3\x28", "invalid UTF-8 in AMF0 string at offset 3"),
        (b"\x03\x00\x01\xff\x05" + END, "invalid UTF-8 in AMF0 string at offset 3"),
    ],
)
def test_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(AMF0Error, match=f"^{message}$"):
        decode(data)


def nested_arrays(depth: int) -> bytes:
    return b"\x0a\x00\x00\x00\x01" * depth + b"\x05"


def test_depth_limit() -> None:
    expected: object = None
    for _ in range(32):
        expected = [expected]
    assert decode(nested_arrays(32)) == [expected]
    with pytest.raises(AMF0Error, match=r"^AMF0 nesting deeper than 32 levels at offset 165$"):
        decode(nested_arrays(33))
    with pytest.raises(AMF0Error, match=r"nesting deeper than 2 levels"):
        decode_one(nested_arrays(3), max_depth=2)
    with pytest.raises(AMF0Error, match=r"nesting deeper than 2 levels"):
        decode(b"\x03" + s16("a") + b"\x03" + s16("b") + b"\x03" + s16("c") + b"\x05", max_depth=2)


def test_item_limit_counts_every_value_across_the_call() -> None:
    four_nulls = b"\x05" * 4
    assert decode(four_nulls, max_items=4) == [None] * 4
    with pytest.raises(AMF0Error, match=r"^more than 3 AMF0 values at offset 3$"):
        decode(four_nulls, max_items=3)
    # An array of three items is four values.
    array = b"\x0a\x00\x00\x00\x03" + b"\x05" * 3
    with pytest.raises(AMF0Error, match=r"^more than 3 AMF0 values at offset 7$"):
        decode_one(array, max_items=3)


def test_huge_strict_array_count_fails_fast_as_truncated() -> None:
    with pytest.raises(AMF0Error, match=r"^truncated AMF0 marker at offset 6$"):
        decode(b"\x0a\xff\xff\xff\xff\x05")


# -- encoding ---------------------------------------------------------------------------------


def test_encode_exact_bytes() -> None:
    assert encode("_result", 1, None) == b"\x02" + s16("_result") + num(1.0) + b"\x05"
    assert encode(True, False, UNDEFINED) == b"\x01\x01\x01\x00\x06"
    assert encode({"a": 1.0}) == b"\x03" + s16("a") + num(1.0) + END
    assert encode(ECMAArray(a=None)) == b"\x08\x00\x00\x00\x01" + s16("a") + b"\x05" + END
    assert encode((1, "b")) == b"\x0a\x00\x00\x00\x02" + num(1.0) + b"\x02" + s16("b")
    assert encode(AMF0Date(5.0, 0)) == b"\x0b" + struct.pack(">dh", 5.0, 0)
    assert encode(TypedObject("T", {})) == b"\x10" + s16("T") + END


def test_long_strings_switch_marker_at_65536_bytes() -> None:
    short = "x" * 0xFFFF
    long = "x" * 0x10000
    assert encode(short)[:3] == b"\x02\xff\xff"
    assert encode(long)[:5] == b"\x0c\x00\x01\x00\x00"
    assert decode(encode(short, long)) == [short, long]


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object(), 1j])
def test_encode_rejects_other_types(value: object) -> None:
    with pytest.raises(TypeError, match=r"^cannot encode \w+ as AMF0$"):
        encode(value)


def test_encode_rejects_non_str_keys_cycles_and_out_of_range_values() -> None:
    with pytest.raises(TypeError, match=r"^AMF0 object keys must be str, not int$"):
        encode({1: 2})
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match=r"^cannot encode a cyclic structure as AMF0$"):
        encode(cyclic)
    with pytest.raises(ValueError, match=r"^integer \d+ does not fit an AMF0 number$"):
        encode(10**400)
    with pytest.raises(ValueError, match=r"^AMF0 date time zone 40000 out of range$"):
        encode(AMF0Date(0.0, 40000))
    with pytest.raises(ValueError, match=r"^AMF0 property name of 65536 bytes exceeds 65535$"):
        encode({"k" * 0x10000: None})


def test_shared_value_is_not_a_cycle() -> None:
    shared = {"a": 1.0}
    assert decode(encode([shared, shared])) == [[shared, shared]]


def test_undefined_is_a_falsy_singleton_that_survives_copy_and_pickle() -> None:
    assert Undefined() is UNDEFINED
    assert not UNDEFINED
    assert repr(UNDEFINED) == "UNDEFINED"
    assert copy.deepcopy(UNDEFINED) is UNDEFINED
    assert pickle.loads(pickle.dumps(UNDEFINED)) is UNDEFINED


# -- properties -------------------------------------------------------------------------------

keys = st.text(max_size=8)
scalars = (
    st.floats(allow_nan=False)
    | st.booleans()
    | st.text(max_size=20)
    | st.none()
    | st.just(UNDEFINED)
    | st.builds(AMF0Date, st.floats(allow_nan=False), st.integers(-0x8000, 0x7FFF))
)
amf_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(keys, children, max_size=4)
        | st.dictionaries(keys, children, max_size=4).map(ECMAArray)
        | st.builds(TypedObject, keys, st.dictionaries(keys, children, max_size=3))
    ),
    max_leaves=12,
)


def same_types(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return all(same_types(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return all(same_types(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, TypedObject):
        assert isinstance(b, TypedObject)
        return same_types(a.fields, b.fields)
    return True


@settings(max_examples=100, deadline=None)
@given(st.lists(amf_values, max_size=4))
def test_round_trip(values: list[object]) -> None:
    decoded = decode(encode(*values))
    assert decoded == values
    assert same_types(decoded, values)


@settings(max_examples=100, deadline=None)
@given(amf_values)
def test_every_proper_prefix_is_reported_as_truncated(value: object) -> None:
    data = encode(value)
    for end in range(len(data)):
        with pytest.raises(AMF0Error, match=r"^truncated AMF0 .* at offset \d+$"):
            decode_one(data[:end])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_only_raise_amf0_error(data: bytes) -> None:
    with contextlib.suppress(AMF0Error):
        decode(data)
