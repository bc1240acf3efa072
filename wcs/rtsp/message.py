"""RTSP/1.0 wire format: an incremental parser for one TCP stream, builders, and header helpers.

One :class:`RtspParser` reads everything a peer sends on the RTSP connection: requests, responses
and ``$``-framed interleaved RTP/RTCP (RFC 2326 10.12), mixed in any order.

Leniency decisions (what real peers send):

* Lines end with CRLF; a bare LF is accepted too (as live555, GStreamer and nginx do). A bare CR
  inside a line is an error.
* CR/LF bytes between messages are skipped (some clients send a keep-alive CRLF).
* Only ``RTSP/1.0`` is accepted. ``RTSP/1.1`` does not exist and RTSP 2.0 (RFC 7826) is not
  wire-compatible; other well-formed ``RTSP/x.y`` versions raise :class:`RtspParseError` with
  ``status`` 505 so a server can still answer before closing.
* Header values are decoded as UTF-8, falling back to Latin-1 (some cameras put Latin-1 in realms).
* Obsolete header line folding is rejected, as RFC 7230 3.2.4 recommends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from wcs.rtsp.numbers import ascii_hex, ascii_uint

__all__ = [
    "STATUS_REASONS",
    "Headers",
    "InterleavedFrame",
    "RtspEvent",
    "RtspParseError",
    "RtspParser",
    "RtspRequest",
    "RtspResponse",
    "TransportSpec",
    "build_interleaved",
    "build_request",
    "build_response",
    "is_request_uri",
    "parse_session",
    "parse_transport",
]

VERSION: Final = "RTSP/1.0"

STATUS_REASONS: Final[Mapping[int, str]] = {
    100: "Continue",
    200: "OK",
    201: "Created",
    250: "Low on Storage Space",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    415: "Unsupported Media Type",
    451: "Parameter Not Understood",
    453: "Not Enough Bandwidth",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    457: "Invalid Range",
    459: "Aggregate Operation Not Allowed",
    460: "Only Aggregate Operation Allowed",
    461: "Unsupported Transport",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "RTSP Version Not Supported",
    551: "Option not supported",
}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"RTSP/[0-9]\.[0-9]")
# Bytes allowed in a request URI: visible ASCII and anything >= 0x80 (raw UTF-8 stream names).
_BAD_URI = re.compile(r"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CRLF_BYTES: Final = b"\r\n"
_INTERLEAVED_MAGIC: Final = 0x24  # '$'


class RtspParseError(ValueError):
    """The peer sent something this parser refuses; the connection should be closed.

    ``status`` is the RTSP status a server may answer with before closing (400, 413, 414, 505, ...).
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Headers:
    """RTSP headers in arrival order with case-insensitive lookup; names keep their spelling."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: list[tuple[str, str]] = [(str(k), str(v)) for k, v in pairs]

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of ``name``, or ``default``."""
        key = name.lower()
        for k, v in self._items:
            if k.lower() == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order (e.g. several WWW-Authenticate challenges)."""
        key = name.lower()
        return [v for k, v in self._items if k.lower() == key]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True)
class RtspRequest:
    method: str
    uri: str
    version: str
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True)
class RtspResponse:
    version: str
    status: int
    reason: str
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True)
class InterleavedFrame:
    """One ``$``-framed packet on the RTSP connection (usually RTP on even channels, RTCP odd)."""

    channel: int
    payload: bytes


RtspEvent = RtspRequest | RtspResponse | InterleavedFrame


class RtspParser:
    """Feed it the bytes of one RTSP connection; it returns complete requests, responses and frames.

    After :class:`RtspParseError` the parser is dead: every later :meth:`feed` raises again.
    Memory is bounded by ``max_header_bytes + max(max_body, max_interleaved + 4)``.
    """

    def __init__(
        self,
        *,
        max_line: int = 4096,
        max_header_bytes: int = 16384,
        max_headers: int = 64,
        max_body: int = 65536,
        max_interleaved: int = 65535,
    ) -> None:
        if min(max_line, max_header_bytes, max_headers) < 1 or min(max_body, max_interleaved) < 0:
            raise ValueError("parser limits must be positive")
        self.max_line = max_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body
        self.max_interleaved = max_interleaved
        self._buf = bytearray()
        self._scanned = 0  # bytes of the current header block already searched for its end
        self._head: RtspRequest | RtspResponse | None = None  # parsed head waiting for its body
        self._body_len = 0
        self._error: RtspParseError | None = None

    @property
    def in_message(self) -> bool:
        """True while a request or response has begun to arrive and is not complete (its head
        or its body); False between messages and inside interleaved frames."""
        # After feed() the buffer never starts with the CR/LF skipped between messages.
        return self._head is not None or (bool(self._buf) and self._buf[0] != _INTERLEAVED_MAGIC)

    def feed(self, data: bytes) -> list[RtspEvent]:
        if self._error is not None:
            raise RtspParseError(
                f"parser is closed after: {self._error.reason}", self._error.status
            )
        self._buf += data
        events: list[RtspEvent] = []
        try:
            while self._step(events):
                pass
        except RtspParseError as exc:
            self._error = exc
            self._buf.clear()
            raise
        return events

    def _step(self, events: list[RtspEvent]) -> bool:
        """Consume one complete item from the buffer; return False when more bytes are needed."""
        buf = self._buf
        if self._head is not None:
            if len(buf) < self._body_len:
                return False
            body = bytes(buf[: self._body_len])
            del buf[: self._body_len]
            events.append(replace(self._head, body=body))
            self._head = None
            return True
        skip = 0
        while skip < len(buf) and buf[skip] in _CRLF_BYTES:
            skip += 1
        if skip:
            del buf[:skip]
            self._scanned = 0
        if not buf:
            return False
        if buf[0] == _INTERLEAVED_MAGIC:
            return self._interleaved(events)
        return self._header_block(events)

    def _interleaved(self, events: list[RtspEvent]) -> bool:
        buf = self._buf
        if len(buf) < 4:
            return False
        channel = buf[1]
        length = (buf[2] << 8) | buf[3]
        if length > self.max_interleaved:
            raise RtspParseError(
                f"interleaved frame of {length} bytes on channel {channel} exceeds the limit "
                f"of {self.max_interleaved}"
            )
        if len(buf) < 4 + length:
            return False
        events.append(InterleavedFrame(channel, bytes(buf[4 : 4 + length])))
        del buf[: 4 + length]
        return True

    def _header_block(self, events: list[RtspEvent]) -> bool:
        buf = self._buf
        # Resume the search a little before where the last one stopped: the terminator may
        # straddle two feeds.
        start = max(0, self._scanned - 2)
        end = _find_blank_line(buf, start)
        if end < 0:
            self._scanned = len(buf)
            if buf.find(b"\n") < 0:
                # A trailing CR may be the first half of the CRLF: it is not part of the line.
                pending = len(buf) - (buf[-1] == 0x0D)
                if pending > self.max_line:
                    raise _line_too_long(self.max_line)
            if len(buf) > self.max_header_bytes:
                raise RtspParseError(f"header block exceeds {self.max_header_bytes} bytes")
            return False
        if end > self.max_header_bytes:
            raise RtspParseError(f"header block exceeds {self.max_header_bytes} bytes")
        block = bytes(buf[:end])
        del buf[:end]
        self._scanned = 0
        head, length = self._parse_head(block)
        self._head = head
        self._body_len = length
        return True

    def _parse_head(self, block: bytes) -> tuple[RtspRequest | RtspResponse, int]:
        lines = block.split(b"\n")
        # The block ends with the blank line: drop the empty tail produced by the split.
        while lines and lines[-1] in (b"", b"\r"):
            lines.pop()
        first = _strip_cr(lines[0])
        if len(first) > self.max_line:
            raise _line_too_long(self.max_line)
        if len(lines) - 1 > self.max_headers:
            raise RtspParseError(f"more than {self.max_headers} headers")
        start = _decode(first)
        headers = Headers(self._parse_header_line(line) for line in lines[1:])
        length = self._content_length(headers)
        if start.startswith("RTSP/"):
            version, status, reason = _parse_status_line(start)
            return RtspResponse(version, status, reason, headers), length
        method, uri, version = _parse_request_line(start)
        return RtspRequest(method, uri, version, headers), length

    def _parse_header_line(self, raw: bytes) -> tuple[str, str]:
        line = _strip_cr(raw)
        if len(line) > self.max_line:
            raise RtspParseError(f"header line longer than {self.max_line} bytes")
        if line[:1] in (b" ", b"\t"):
            raise RtspParseError("obsolete header line folding is not supported")
        text = _decode(line)
        name, sep, value = text.partition(":")
        if not sep:
            raise RtspParseError(f"header line without a colon: {text[:64]!r}")
        if not _TOKEN.fullmatch(name):
            raise RtspParseError(f"bad header name {name[:64]!r}")
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise RtspParseError(f"control character in header {name!r}")
        return name, value

    def _content_length(self, headers: Headers) -> int:
        values = headers.get_all("Content-Length")
        if not values:
            return 0
        lengths = set()
        for value in values:
            # Only plain ASCII digits: no sign, no spaces, no "5, 5" lists; anything above
            # 10**12 is far past any limit.
            length = ascii_uint(value, 10**12)
            if length is None:
                raise RtspParseError(f"bad Content-Length {value[:32]!r}")
            lengths.add(length)
        if len(lengths) > 1:
            raise RtspParseError(f"conflicting Content-Length values {sorted(lengths)}")
        length = lengths.pop()
        if length > self.max_body:
            raise RtspParseError(
                f"body of {length} bytes exceeds the limit of {self.max_body}", status=413
            )
        return length


def _find_blank_line(buf: bytearray, start: int) -> int:
    """Offset just past the first empty line (LF LF or LF CR LF) from ``start``; -1 if none."""
    a = buf.find(b"\n\n", start)
    b = buf.find(b"\n\r\n", start)
    if a < 0 and b < 0:
        return -1
    if b < 0 or (0 <= a < b):
        return a + 2
    return b + 3


def _strip_cr(line: bytes) -> bytes:
    line = line.removesuffix(b"\r")
    if b"\r" in line:
        raise RtspParseError("bare CR inside a line")
    return line


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _line_too_long(limit: int) -> RtspParseError:
    return RtspParseError(f"start line longer than {limit} bytes", status=414)


def _check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise RtspParseError(f"not an RTSP version: {version[:32]!r}")
    if version != VERSION:
        raise RtspParseError(f"unsupported version {version}", status=505)
    return version


def _parse_request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise RtspParseError(f"bad request line {line[:80]!r}")
    method, uri, version = parts
    if not _TOKEN.fullmatch(method):
        raise RtspParseError(f"bad method {method[:32]!r}")
    if not uri or _BAD_URI.search(uri):
        raise RtspParseError(f"bad request URI {uri[:80]!r}")
    return method, uri, _check_version(version)


def _parse_status_line(line: str) -> tuple[str, int, str]:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    _check_version(version)
    status = ascii_uint(code, 999)
    if len(code) != 3 or status is None or status < 100:
        raise RtspParseError(f"bad status line {line[:80]!r}")
    if _BAD_VALUE.search(reason):
        raise RtspParseError("control character in reason phrase")
    return version, status, reason


# --- builders -----------------------------------------------------------------------------------

HeaderArg = Mapping[str, str | int] | Sequence[tuple[str, str | int]] | Headers


def _header_lines(headers: HeaderArg, body: bytes) -> bytes:
    pairs: Iterable[tuple[str, str | int]]
    pairs = headers.items() if isinstance(headers, Mapping | Headers) else headers
    out: list[str] = []
    has_length = False
    for name, value in pairs:
        text = str(value)
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"bad header name {name!r}")
        if _BAD_VALUE.search(text) or "\r" in text:
            raise ValueError(f"header {name!r} value contains a control character")
        if name.lower() == "content-length":
            if ascii_uint(text, 10**12) != len(body):
                raise ValueError(f"Content-Length {text} does not match a {len(body)}-byte body")
            has_length = True
        out.append(f"{name}: {text}\r\n")
    if body and not has_length:
        out.append(f"Content-Length: {len(body)}\r\n")
    return "".join(out).encode("utf-8")


def is_request_uri(uri: str) -> bool:
    """Whether ``uri`` can be sent as a request URI (no spaces or control characters)."""
    return bool(uri) and _BAD_URI.search(uri) is None


def build_request(method: str, uri: str, headers: HeaderArg = (), body: bytes = b"") -> bytes:
    """Serialize one request; Content-Length is added when there is a body."""
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"bad method {method!r}")
    if not is_request_uri(uri):
        raise ValueError(f"bad request URI {uri[:80]!r}")
    start = f"{method} {uri} {VERSION}\r\n".encode()
    return start + _header_lines(headers, body) + b"\r\n" + body


def build_response(
    status: int, reason: str | None = None, headers: HeaderArg = (), body: bytes = b""
) -> bytes:
    """Serialize one response; ``reason`` defaults to :data:`STATUS_REASONS`."""
    if not 100 <= status <= 999:
        raise ValueError(f"bad status {status}")
    if reason is None:
        reason = STATUS_REASONS.get(status, "Unknown")
    if _BAD_VALUE.search(reason) or "\r" in reason:
        raise ValueError("reason contains a control character")
    start = f"{VERSION} {status} {reason}\r\n".encode()
    return start + _header_lines(headers, body) + b"\r\n" + body


def build_interleaved(channel: int, payload: bytes) -> bytes:
    if not 0 <= channel <= 255:
        raise ValueError(f"interleaved channel {channel} out of range")
    if len(payload) > 0xFFFF:
        raise ValueError(f"interleaved payload of {len(payload)} bytes exceeds 65535")
    return bytes((_INTERLEAVED_MAGIC, channel)) + len(payload).to_bytes(2, "big") + payload


# --- header values ------------------------------------------------------------------------------

_MAX_TRANSPORT_SPECS: Final = 16
_MAX_TRANSPORT_PARAMS: Final = 32


@dataclass(frozen=True)
class TransportSpec:
    """One alternative of a Transport header (RFC 2326 12.39).

    ``protocol`` is the transport/profile without the lower transport ("RTP/AVP"); ``lower`` is
    "UDP" or "TCP" (UDP when absent). ``mode`` is upper-cased without quotes ("RECORD", "PLAY").
    Parameters this class does not model are kept in ``extra`` for :meth:`to_header`.
    """

    protocol: str = "RTP/AVP"
    lower: str = "UDP"
    multicast: bool = False
    interleaved: tuple[int, int] | None = None
    client_port: tuple[int, int] | None = None
    server_port: tuple[int, int] | None = None
    mode: str | None = None
    ssrc: int | None = None
    extra: tuple[tuple[str, str | None], ...] = field(default=())

    def to_header(self) -> str:
        parts = [f"{self.protocol}/{self.lower}" if self.lower == "TCP" else self.protocol]
        parts.append("multicast" if self.multicast else "unicast")
        for name, pair in (
            ("interleaved", self.interleaved),
            ("client_port", self.client_port),
            ("server_port", self.server_port),
        ):
            if pair is not None:
                parts.append(f"{name}={pair[0]}-{pair[1]}")
        if self.ssrc is not None:
            parts.append(f"ssrc={self.ssrc:08X}")
        if self.mode is not None:
            parts.append(f"mode={self.mode.lower()}")
        parts.extend(name if value is None else f"{name}={value}" for name, value in self.extra)
        return ";".join(parts)


def _transport_error(reason: str) -> RtspParseError:
    return RtspParseError(reason, status=461)


def _pair(name: str, value: str, maximum: int) -> tuple[int, int]:
    first, dash, second = value.partition("-")
    a = ascii_uint(first, 1 << 32)
    # A single number means the pair (n, n + 1): RTP then RTCP.
    b = ascii_uint(second, 1 << 32) if dash else None if a is None else a + 1
    if a is None or b is None:
        raise _transport_error(f"bad {name} {value[:32]!r}")
    if a > maximum or b > maximum:
        raise _transport_error(f"{name} {value[:32]!r} out of range")
    return a, b


def parse_transport(value: str) -> list[TransportSpec]:
    """Parse a Transport header into its comma-separated alternatives, in preference order."""
    specs: list[TransportSpec] = []
    for raw_spec in value.split(","):
        raw_spec = raw_spec.strip()
        if not raw_spec:
            continue
        if len(specs) == _MAX_TRANSPORT_SPECS:
            raise _transport_error(f"more than {_MAX_TRANSPORT_SPECS} transport specs")
        specs.append(_parse_transport_spec(raw_spec))
    if not specs:
        raise _transport_error("empty Transport header")
    return specs


def _parse_transport_spec(raw: str) -> TransportSpec:
    params = [p.strip() for p in raw.split(";")]
    if len(params) > _MAX_TRANSPORT_PARAMS:
        raise _transport_error(f"more than {_MAX_TRANSPORT_PARAMS} transport parameters")
    ident = params[0].upper().split("/")
    if len(ident) not in (2, 3) or not all(_TOKEN.fullmatch(p) for p in ident):
        raise _transport_error(f"bad transport {params[0]!r}")
    lower = ident[2] if len(ident) == 3 else "UDP"
    if lower not in ("UDP", "TCP"):
        raise _transport_error(f"unknown lower transport {lower!r}")
    multicast = False
    interleaved = client_port = server_port = None
    mode: str | None = None
    ssrc: int | None = None
    extra: list[tuple[str, str | None]] = []
    for param in params[1:]:
        if not param:
            continue
        name, eq, val = param.partition("=")
        name = name.strip().lower()
        val = val.strip()
        if name in ("unicast", "multicast"):
            multicast = name == "multicast"
        elif name == "interleaved":
            interleaved = _pair(name, val, 255)
        elif name == "client_port":
            client_port = _pair(name, val, 65535)
        elif name == "server_port":
            server_port = _pair(name, val, 65535)
        elif name == "mode":
            mode = val.strip('"').upper()
            if not _TOKEN.fullmatch(mode):
                raise _transport_error(f"bad mode {val!r}")
        elif name == "ssrc":
            ssrc = ascii_hex(val, 8)
            if ssrc is None:
                raise _transport_error(f"bad ssrc {val[:32]!r}")
        elif _TOKEN.fullmatch(name):
            extra.append((name, val if eq else None))
        else:
            raise _transport_error(f"bad transport parameter {param!r}")
    return TransportSpec(
        protocol="/".join(ident[:2]),
        lower=lower,
        multicast=multicast,
        interleaved=interleaved,
        client_port=client_port,
        server_port=server_port,
        mode=mode,
        ssrc=ssrc,
        extra=tuple(extra),
    )


def parse_session(value: str) -> tuple[str, int | None]:
    """Split a Session header into (session id, timeout seconds or None)."""
    sid, *params = (p.strip() for p in value.split(";"))
    if not sid or len(sid) > 256 or _BAD_URI.search(sid):
        raise RtspParseError(f"bad session id {sid[:64]!r}", status=454)
    timeout = None
    for param in params:
        name, _, val = param.partition("=")
        if name.strip().lower() == "timeout":
            timeout = ascii_uint(val.strip(), 999_999_999)
            if timeout is None:
                raise RtspParseError(f"bad session timeout {val.strip()[:32]!r}")
    return sid, timeout
