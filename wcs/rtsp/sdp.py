"""SDP (RFC 4566) as RTSP uses it: parse ANNOUNCE/DESCRIBE bodies, resolve controls, build offers.

Lenient where cameras are sloppy (missing ``v=``/``o=``/``t=`` lines, blank lines, trailing spaces,
LF line ends), strict where a mistake would mislead us (a bad ``m=``, ``a=rtpmap`` or ``a=fmtp``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from wcs.media.h264 import NAL_PPS, NAL_SPS, nal_type
from wcs.rtsp.numbers import ascii_uint

__all__ = [
    "STATIC_PAYLOAD_TYPES",
    "MediaDescription",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "build_sdp",
    "h264_fmtp",
    "h264_sprop",
    "parse_sdp",
    "resolve_control",
]

MAX_SDP_BYTES: Final = 65536
MAX_MEDIA: Final = 16
MAX_LINE: Final = 8192
MAX_SPROP_CHARS: Final = 8192
MAX_SPROP_SETS: Final = 16
# RTP clocks in use stop at 192 kHz audio; a 32-bit timestamp per second is the hard ceiling.
MAX_CLOCK_RATE: Final = 0xFFFFFFFF

_LINE = re.compile(r"([a-z])=(.*)")
_ATTR_NAME = re.compile(r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+")
_HEX6 = re.compile(r"[0-9A-Fa-f]{6}")


class SdpError(ValueError):
    """The SDP is malformed or exceeds a limit."""


class RtpMap(NamedTuple):
    """``a=rtpmap``: encoding name (upper-case), clock rate, channel count (audio, if given)."""

    encoding: str
    clock_rate: int
    channels: int | None = None


# RFC 3551 static payload types that a camera may use without an a=rtpmap line.
STATIC_PAYLOAD_TYPES: Final[Mapping[int, RtpMap]] = {
    0: RtpMap("PCMU", 8000, 1),
    8: RtpMap("PCMA", 8000, 1),
    14: RtpMap("MPA", 90000),
    26: RtpMap("JPEG", 90000),
    32: RtpMap("MPV", 90000),
    33: RtpMap("MP2T", 90000),
}


@dataclass
class MediaDescription:
    """One ``m=`` section.

    ``attributes`` holds every ``a=`` line in order; ``rtpmap``, ``fmtp`` (parameter names
    lower-cased) and ``control`` are parsed views of some of them. :func:`build_sdp` writes the
    views and skips ``rtpmap``/``fmtp``/``control`` entries of ``attributes``.
    """

    media: str
    port: int = 0
    proto: str = "RTP/AVP"
    formats: list[str] = field(default_factory=list)
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)
    fmtp: dict[int, dict[str, str]] = field(default_factory=dict)
    control: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    connection: str | None = None
    bandwidth: list[str] = field(default_factory=list)

    @property
    def payload_types(self) -> list[int]:
        """The formats that are RTP payload types (0..127), in order."""
        return [pt for pt in (ascii_uint(f, 127) for f in self.formats) if pt is not None]

    def encoding(self, pt: int) -> RtpMap | None:
        """The codec of payload type ``pt``: its rtpmap, else the RFC 3551 static assignment."""
        if pt in self.rtpmap:
            return self.rtpmap[pt]
        return STATIC_PAYLOAD_TYPES.get(pt) if pt < 96 else None

    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name`` line ("" for a flag), or None."""
        return _attribute(self.attributes, name)


@dataclass
class SessionDescription:
    version: str = "0"
    origin: str = "- 0 0 IN IP4 127.0.0.1"
    session_name: str = "-"
    connection: str | None = None
    timing: str = "0 0"
    control: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    def attribute(self, name: str) -> str | None:
        return _attribute(self.attributes, name)


def _attribute(attributes: Iterable[tuple[str, str | None]], name: str) -> str | None:
    for key, value in attributes:
        if key == name:
            return "" if value is None else value
    return None


def parse_sdp(
    text: str | bytes,
    *,
    max_bytes: int = MAX_SDP_BYTES,
    max_media: int = MAX_MEDIA,
    max_line: int = MAX_LINE,
) -> SessionDescription:
    if len(text) > max_bytes:
        raise SdpError(f"SDP of {len(text)} bytes exceeds the limit of {max_bytes}")
    if isinstance(text, bytes):
        raw_bytes = text
        try:
            text = raw_bytes.decode("utf-8")
        except UnicodeDecodeError:
            text = raw_bytes.decode("latin-1")
    session = SessionDescription()
    current: MediaDescription | None = None
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r \t")
        if not line:
            continue
        if len(line) > max_line:
            raise SdpError(f"line {number} is longer than {max_line} characters")
        match = _LINE.fullmatch(line)
        if match is None:
            raise SdpError(f"line {number} is not <type>=<value>: {line[:64]!r}")
        kind, value = match.groups()
        if kind == "m":
            if len(session.media) == max_media:
                raise SdpError(f"more than {max_media} media descriptions")
            current = _parse_media_line(value, number)
            session.media.append(current)
        elif kind == "a":
            name, _, attr_value = value.partition(":")
            if not _ATTR_NAME.fullmatch(name):
                raise SdpError(f"line {number}: bad attribute name {name[:32]!r}")
            attr: str | None = attr_value if ":" in value else None
            if current is None:
                session.attributes.append((name, attr))
                if name == "control":
                    session.control = (attr or "").strip()
            else:
                current.attributes.append((name, attr))
                _media_attribute(current, name, (attr or "").strip(), number)
        elif current is not None:
            if kind == "c":
                current.connection = value
            elif kind == "b":
                current.bandwidth.append(value)
        elif kind == "v":
            session.version = value
        elif kind == "o":
            session.origin = value
        elif kind == "s":
            session.session_name = value
        elif kind == "c":
            session.connection = value
        elif kind == "t":
            session.timing = value
    return session


def _parse_media_line(value: str, number: int) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"line {number}: bad m= line {value[:64]!r}")
    media, port_text, proto, *formats = parts
    port_text, slash, count_text = port_text.partition("/")  # "<port>/<number of ports>"
    port = ascii_uint(port_text, 65535)
    if port is None:
        raise SdpError(f"line {number}: bad port {port_text[:16]!r}")
    if slash and ascii_uint(count_text, 65535) is None:
        raise SdpError(f"line {number}: bad number of ports {count_text[:16]!r}")
    if proto.upper().startswith("RTP/"):
        for fmt in formats:
            if ascii_uint(fmt, 127) is None:
                raise SdpError(f"line {number}: bad RTP payload type {fmt[:16]!r}")
    return MediaDescription(media=media, port=port, proto=proto, formats=formats)


def _payload_type(text: str, number: int) -> int:
    pt = ascii_uint(text, 127)
    if pt is None:
        raise SdpError(f"line {number}: bad payload type {text[:16]!r}")
    return pt


def _media_attribute(media: MediaDescription, name: str, value: str, number: int) -> None:
    if name == "control":
        media.control = value
    elif name == "rtpmap":
        pt_text, _, desc = value.partition(" ")
        pt = _payload_type(pt_text, number)
        enc, *rest = desc.strip().split("/")
        numbers = [ascii_uint(r, MAX_CLOCK_RATE) for r in rest]
        if not enc or not rest or len(rest) > 2 or None in numbers:
            raise SdpError(f"line {number}: bad rtpmap {value[:64]!r}")
        clock = numbers[0]
        if not clock:
            raise SdpError(f"line {number}: zero clock rate in rtpmap")
        channels = numbers[1] if len(numbers) == 2 else None
        media.rtpmap[pt] = RtpMap(enc.upper(), clock, channels)
    elif name == "fmtp":
        pt_text, _, params = value.partition(" ")
        media.fmtp[_payload_type(pt_text, number)] = _parse_fmtp_params(params)


def _parse_fmtp_params(params: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in params.split(";"):
        key, _, val = item.strip().partition("=")
        key = key.strip().lower()
        if key:
            out[key] = val.strip()
    return out


def resolve_control(base: str, control: str | None) -> str:
    """Absolute URL of a session or media ``a=control``.

    ``base`` is the Content-Base header, else Content-Location, else the request URL. Absent or
    ``*`` controls mean the base itself; ``rtsp://...`` is used as is; a path starting with "/"
    replaces the base path; anything else is appended after a "/" (what ffmpeg, live555 and
    gortsplib do, rather than RFC 3986 resolution, which would drop the last path segment of a
    base without a trailing slash: SETUP of ``rtsp://h/live/cam`` + ``streamid=0`` must go to
    ``rtsp://h/live/cam/streamid=0``). Raises SdpError when the base cannot be parsed.
    """
    control = (control or "").strip()
    if not control or control == "*":
        return base
    if re.match(r"(?i)rtsps?://", control):
        return control
    if control.startswith("/"):
        try:
            parts = urlsplit(base)
        except ValueError as err:  # e.g. "Invalid IPv6 URL"
            raise SdpError(f"cannot resolve control {control[:64]!r}: {err}") from None
        path, _, query = control.partition("?")
        return urlunsplit((parts.scheme, parts.netloc, path, query, ""))
    if base.endswith("/") or control.startswith("?"):
        return base + control
    return base + "/" + control


def h264_sprop(fmtp: Mapping[str, str]) -> tuple[bytes | None, list[bytes], str | None]:
    """(SPS, PPS list, profile-level-id) from an H.264 fmtp; absent parts are None / empty.

    Reads ``sprop-parameter-sets`` (RFC 6184 8.1): comma-separated base64 NAL units.
    """
    profile = fmtp.get("profile-level-id")
    profile_level_id = profile.upper() if profile and _HEX6.fullmatch(profile) else None
    sprop = fmtp.get("sprop-parameter-sets", "").strip()
    if len(sprop) > MAX_SPROP_CHARS:
        raise SdpError(f"sprop-parameter-sets longer than {MAX_SPROP_CHARS} characters")
    sets = [s.strip() for s in sprop.split(",") if s.strip()]
    if len(sets) > MAX_SPROP_SETS:
        raise SdpError(f"more than {MAX_SPROP_SETS} sprop-parameter-sets")
    sps: bytes | None = None
    pps: list[bytes] = []
    for item in sets:
        try:
            # Some encoders drop the "=" padding.
            nal = base64.b64decode(item + "=" * (-len(item) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SdpError(f"bad base64 in sprop-parameter-sets: {item[:32]!r}") from exc
        if not nal:
            continue
        kind = nal_type(nal)
        if kind == NAL_SPS and sps is None:
            sps = nal
        elif kind == NAL_PPS:
            pps.append(nal)
    return sps, pps, profile_level_id


def h264_fmtp(sps: bytes, pps: Sequence[bytes], packetization_mode: int = 1) -> dict[str, str]:
    """fmtp parameters describing an H.264 stream with these parameter sets (for DESCRIBE)."""
    if len(sps) < 4:
        raise SdpError("SPS too short to carry profile-level-id")
    sets = ",".join(base64.b64encode(n).decode("ascii") for n in (sps, *pps))
    return {
        "packetization-mode": str(packetization_mode),
        "profile-level-id": sps[1:4].hex().upper(),
        "sprop-parameter-sets": sets,
    }


_VIEW_ATTRIBUTES: Final = frozenset({"rtpmap", "fmtp", "control"})


def _attr_line(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def build_sdp(
    media: Sequence[MediaDescription],
    *,
    origin: str = "- 0 0 IN IP4 127.0.0.1",
    session_name: str = "wcs",
    connection: str | None = "IN IP4 0.0.0.0",
    control: str | None = "*",
    attributes: Sequence[tuple[str, str | None]] = (),
) -> str:
    """Serialize a session with these media (CRLF line ends), e.g. the body of a DESCRIBE answer."""
    lines = ["v=0", f"o={origin}", f"s={session_name}"]
    if connection is not None:
        lines.append(f"c={connection}")
    lines.append("t=0 0")
    if control is not None:
        lines.append(f"a=control:{control}")
    lines.extend(_attr_line(n, v) for n, v in attributes if n != "control")
    for m in media:
        lines.append("m=" + " ".join([m.media, str(m.port), m.proto, *m.formats]))
        if m.connection is not None:
            lines.append(f"c={m.connection}")
        lines.extend(f"b={b}" for b in m.bandwidth)
        for pt, rtpmap in m.rtpmap.items():
            channels = f"/{rtpmap.channels}" if rtpmap.channels is not None else ""
            lines.append(f"a=rtpmap:{pt} {rtpmap.encoding}/{rtpmap.clock_rate}{channels}")
        for pt, params in m.fmtp.items():
            text = ";".join(f"{k}={v}" if v else k for k, v in params.items())
            lines.append(f"a=fmtp:{pt} {text}")
        if m.control is not None:
            lines.append(f"a=control:{m.control}")
        lines.extend(_attr_line(n, v) for n, v in m.attributes if n not in _VIEW_ATTRIBUTES)
    for line in lines:
        if "\r" in line or "\n" in line:
            raise SdpError(f"line break inside an SDP field: {line[:64]!r}")
    return "\r\n".join(lines) + "\r\n"
