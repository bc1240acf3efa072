"""Which web pages may drive this server: the `Origin` check of WebSocket upgrades and of the
state-changing REST methods (`ws_allowed_origins`), one rule for both."""

from __future__ import annotations

import re
from dataclasses import dataclass

from wcs.config import Settings

ANY = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# ASCII only: `str.isdigit()` would take "²" and `int()` then refuse it.
_PORT = r"(?::([0-9]{1,5}))?"
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)"
_ORIGIN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://" + _HOST + _PORT)
_HOST_HEADER = re.compile(_HOST + _PORT)


@dataclass(frozen=True)
class Origin:
    """A serialized origin (RFC 6454): scheme, host and port, compared case-insensitively."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        default = _DEFAULT_PORTS.get(self.scheme)
        port = "" if self.port == default else f":{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}{port}"


def _port(text: str | None, default: int | None) -> int | None:
    if text is None:
        return default
    port = int(text)
    return port if 0 < port <= 65535 else None


def _host(text: str) -> str:
    # "[::1]" and "::1" are the same host; "Example.COM." and "example.com" too.
    return text.lower().strip("[]").rstrip(".")


def parse_origin(value: str | bytes) -> Origin | None:
    """The origin of an `Origin` header (or of a configured origin); None if it names none
    (`null`, a path, garbage)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    m = _ORIGIN.fullmatch(text.strip())
    if m is None:
        return None
    scheme = m.group(1).lower()
    port = _port(m.group(3), _DEFAULT_PORTS.get(scheme))
    host = _host(m.group(2))
    if port is None or not host:
        return None
    return Origin(scheme, host, port)


def host_of(value: str | bytes | None) -> str | None:
    """The host part of a `Host` header (without the port), or None if it is not one."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    m = _HOST_HEADER.fullmatch(text.strip())
    if m is None or (m.group(2) is not None and _port(m.group(2), None) is None):
        return None
    return _host(m.group(1)) or None


class OriginPolicy:
    """`ws_allowed_origins` as a decision on one request's `Origin` and `Host` headers.

    - No `Origin` header: allowed (not a browser page: curl, ffmpeg, aiortc, server code).
    - `("*",)`: any origin.
    - `()` (the default): a page from the same host as the request's `Host` header (any scheme
      or port: the demo pages come from http.port and connect to ws.port), and the CORS origin
      `rest_access_control_allow_origin` when it names one origin (`*` allows nothing here).
    - Otherwise exactly the listed origins (a default port may be written or left out).
    """

    def __init__(self, allowed: tuple[str, ...], cors_origin: str = ANY) -> None:
        self.any = ANY in allowed
        self.same_host = not allowed
        listed = list(allowed) if allowed else [cors_origin]
        self.origins = frozenset(o for o in map(parse_origin, listed) if o is not None)

    @classmethod
    def from_settings(cls, settings: Settings) -> OriginPolicy:
        return cls(settings.ws_allowed_origins, settings.rest_access_control_allow_origin)

    def refusal(self, origin: bytes | str | None, host: bytes | str | None) -> str | None:
        """None when a request with these headers is allowed, else the reason it is not."""
        if origin is None or self.any:
            return None
        parsed = parse_origin(origin)
        shown = origin.decode("latin-1") if isinstance(origin, bytes) else origin
        shown = shown[:200].encode("ascii", "backslashreplace").decode("ascii")
        if parsed is None:
            return f"Origin {shown} is not an allowed origin"
        if parsed in self.origins:
            return None
        if self.same_host and parsed.host == host_of(host):
            return None
        return f"Origin {shown} is not an allowed origin"
