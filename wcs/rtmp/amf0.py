"""AMF0 encoding and decoding (Action Message Format 0) for RTMP commands and metadata.

Pure functions over bytes; every malformed or oversized input raises :class:`AMF0Error`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "UNDEFINED",
    "AMF0Date",
    "AMF0Error",
    "ECMAArray",
    "TypedObject",
    "Undefined",
    "decode",
    "decode_one",
    "encode",
]

NUMBER: Final = 0x00
BOOLEAN: Final = 0x01
STRING: Final = 0x02
OBJECT: Final = 0x03
MOVIECLIP: Final = 0x04
NULL: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
REFERENCE: Final = 0x07
ECMA_ARRAY: Final = 0x08
OBJECT_END: Final = 0x09
STRICT_ARRAY: Final = 0x0A
DATE: Final = 0x0B
LONG_STRING: Final = 0x0C
UNSUPPORTED: Final = 0x0D
RECORDSET: Final = 0x0E
XML_DOCUMENT: Final = 0x0F
TYPED_OBJECT: Final = 0x10
AVMPLUS: Final = 0x11

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE = struct.Struct(">dh")


class AMF0Error(ValueError):
    """Malformed, unsupported or oversized AMF0 data."""


class Undefined:
    """The AMF0 ``undefined`` value; use the :data:`UNDEFINED` singleton."""

    _instance: Undefined | None = None

    def __new__(cls) -> Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        # Pickling and copying must not create a second "undefined".
        return "UNDEFINED"


UNDEFINED: Final = Undefined()


@dataclass(frozen=True)
class TypedObject:
    """An object with a class name (AMF0 typed object, marker 0x10)."""

    class_name: str
    fields: dict[str, object]


class ECMAArray(dict[str, object]):
    """An AMF0 ECMA array (associative array); a dict that encodes back as marker 0x08."""


@dataclass(frozen=True)
class AMF0Date:
    """An AMF0 date: milliseconds since the Unix epoch and a time zone (sent as 0 by encoders)."""

    ms: float
    tz: int


class _Decoder:
    """One decoding pass: the reference table and the item budget span all values it reads."""

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.max_depth = max_depth
        self.max_items = max_items
        self.items = 0
        # Complex values in order of appearance, for marker 0x07. A container is registered
        # before its children are read (the AMF0 numbering), but may only be referenced once
        # complete: a self-reference would build a cyclic structure that later code (logging,
        # JSON) cannot handle, and no real encoder sends one.
        self.refs: list[object] = []
        self.complete: list[bool] = []

    def _take(self, offset: int, n: int, what: str) -> bytes:
        end = offset + n
        if end > len(self.data):
            raise AMF0Error(f"truncated AMF0 {what} at offset {offset}")
        return self.data[offset:end]

    def _utf8(self, raw: bytes, offset: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AMF0Error(f"invalid UTF-8 in AMF0 string at offset {offset}") from None

    def _short_string(self, offset: int, what: str) -> tuple[str, int]:
        (n,) = _U16.unpack(self._take(offset, 2, what + " length"))
        return self._utf8(self._take(offset + 2, n, what), offset + 2), offset + 2 + n

    def _long_string(self, offset: int, what: str) -> tuple[str, int]:
        (n,) = _U32.unpack(self._take(offset, 4, what + " length"))
        return self._utf8(self._take(offset + 4, n, what), offset + 4), offset + 4 + n

    def _register(self, value: object) -> int:
        self.refs.append(value)
        self.complete.append(False)
        return len(self.refs) - 1

    def _properties(self, target: dict[str, object], offset: int, depth: int) -> int:
        """Read key/value pairs into ``target`` up to the empty key + object-end marker."""
        while True:
            key, offset = self._short_string(offset, "property name")
            if key == "":
                marker = self._take(offset, 1, "object end marker")[0]
                if marker == OBJECT_END:
                    return offset + 1
                # An empty key is legal for a normal property; only empty key + 0x09 ends.
            value, offset = self.value(offset, depth + 1)
            target[key] = value

    def value(self, offset: int, depth: int) -> tuple[object, int]:
        if depth > self.max_depth:
            raise AMF0Error(f"AMF0 nesting deeper than {self.max_depth} levels at offset {offset}")
        self.items += 1
        if self.items > self.max_items:
            raise AMF0Error(f"more than {self.max_items} AMF0 values at offset {offset}")
        marker = self._take(offset, 1, "marker")[0]
        pos = offset + 1
        if marker == NUMBER:
            return _DOUBLE.unpack(self._take(pos, 8, "number"))[0], pos + 8
        if marker == BOOLEAN:
            return self._take(pos, 1, "boolean")[0] != 0, pos + 1
        if marker == STRING:
            return self._short_string(pos, "string")
        if marker == LONG_STRING:
            return self._long_string(pos, "long string")
        if marker == XML_DOCUMENT:
            return self._long_string(pos, "XML document")
        if marker == NULL:
            return None, pos
        if marker in (UNDEFINED_MARKER, UNSUPPORTED):
            return UNDEFINED, pos
        if marker == OBJECT:
            obj: dict[str, object] = {}
            index = self._register(obj)
            pos = self._properties(obj, pos, depth)
            self.complete[index] = True
            return obj, pos
        if marker == ECMA_ARRAY:
            # The count is only a hint: encoders are known to send wrong values, so the
            # object-end marker alone decides where the array stops.
            self._take(pos, 4, "ECMA array count")
            arr = ECMAArray()
            index = self._register(arr)
            pos = self._properties(arr, pos + 4, depth)
            self.complete[index] = True
            return arr, pos
        if marker == STRICT_ARRAY:
            (count,) = _U32.unpack(self._take(pos, 4, "strict array count"))
            pos += 4
            items: list[object] = []
            index = self._register(items)
            # No preallocation: the count is attacker-controlled; each item costs at least a byte.
            for _ in range(count):
                item, pos = self.value(pos, depth + 1)
                items.append(item)
            self.complete[index] = True
            return items, pos
        if marker == TYPED_OBJECT:
            class_name, pos = self._short_string(pos, "typed object class name")
            fields: dict[str, object] = {}
            index = self._register(TypedObject(class_name, fields))
            pos = self._properties(fields, pos, depth)
            self.complete[index] = True
            return self.refs[index], pos
        if marker == DATE:
            ms, tz = _DATE.unpack(self._take(pos, 10, "date"))
            return AMF0Date(ms, tz), pos + 10
        if marker == REFERENCE:
            (ref,) = _U16.unpack(self._take(pos, 2, "reference"))
            if ref >= len(self.refs):
                raise AMF0Error(f"AMF0 reference {ref} out of range at offset {offset}")
            if not self.complete[ref]:
                raise AMF0Error(f"AMF0 reference {ref} to an unfinished object at offset {offset}")
            return self.refs[ref], pos + 2
        if marker == OBJECT_END:
            raise AMF0Error(f"unexpected AMF0 object end marker at offset {offset}")
        if marker == MOVIECLIP:
            raise AMF0Error(f"unsupported AMF0 movieclip marker at offset {offset}")
        if marker == RECORDSET:
            raise AMF0Error(f"unsupported AMF0 recordset marker at offset {offset}")
        if marker == AVMPLUS:
            raise AMF0Error("AMF3 values are not supported")
        raise AMF0Error(f"unknown AMF0 marker 0x{marker:02x} at offset {offset}")


def decode_one(
    data: bytes, offset: int = 0, *, max_depth: int = 32, max_items: int = 10000
) -> tuple[object, int]:
    """Decode one value at ``offset``; return it and the offset just past it."""
    return _Decoder(bytes(data), max_depth, max_items).value(offset, 0)


def decode(data: bytes, *, max_depth: int = 32, max_items: int = 10000) -> list[object]:
    """Decode every value in ``data`` (e.g. a command: name, transaction id, arguments)."""
    decoder = _Decoder(bytes(data), max_depth, max_items)
    values: list[object] = []
    offset = 0
    while offset < len(data):
        value, offset = decoder.value(offset, 0)
        values.append(value)
    return values


def _encode_short_string(s: str, out: bytearray) -> None:
    raw = s.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"AMF0 property name of {len(raw)} bytes exceeds 65535")
    out += _U16.pack(len(raw))
    out += raw


def _encode_properties(fields: dict[str, object], out: bytearray, active: set[int]) -> None:
    for key, value in fields.items():
        if not isinstance(key, str):
            raise TypeError(f"AMF0 object keys must be str, not {type(key).__name__}")
        _encode_short_string(key, out)
        _encode_value(value, out, active)
    out += b"\x00\x00\x09"


def _encode_value(value: object, out: bytearray, active: set[int]) -> None:
    # bool before int: bool is an int subclass but has its own marker.
    if isinstance(value, bool):
        out += bytes((BOOLEAN, 1 if value else 0))
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"integer {value} does not fit an AMF0 number") from None
        out.append(NUMBER)
        out += _DOUBLE.pack(number)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            out.append(LONG_STRING)
            out += _U32.pack(len(raw))
        else:
            out.append(STRING)
            out += _U16.pack(len(raw))
        out += raw
    elif value is None:
        out.append(NULL)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, AMF0Date):
        if not -0x8000 <= value.tz <= 0x7FFF:
            raise ValueError(f"AMF0 date time zone {value.tz} out of range")
        out.append(DATE)
        out += _DATE.pack(value.ms, value.tz)
    elif isinstance(value, dict | list | tuple | TypedObject):
        # Containers are written out in full (no references), so a cycle would never end.
        if id(value) in active:
            raise ValueError("cannot encode a cyclic structure as AMF0")
        active.add(id(value))
        if isinstance(value, ECMAArray):
            out.append(ECMA_ARRAY)
            out += _U32.pack(len(value))
            _encode_properties(value, out, active)
        elif isinstance(value, dict):
            out.append(OBJECT)
            _encode_properties(value, out, active)
        elif isinstance(value, TypedObject):
            out.append(TYPED_OBJECT)
            _encode_short_string(value.class_name, out)
            _encode_properties(value.fields, out, active)
        else:
            out.append(STRICT_ARRAY)
            out += _U32.pack(len(value))
            for item in value:
                _encode_value(item, out, active)
        active.discard(id(value))
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def encode(*values: object) -> bytes:
    """Encode values one after another, as an RTMP command or data message body."""
    out = bytearray()
    for value in values:
        _encode_value(value, out, set())
    return bytes(out)
