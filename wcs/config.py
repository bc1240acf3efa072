"""Configuration: a Java-properties parser and the frozen ``Settings`` built from it.

Pure code; the only I/O is ``load_settings``, which reads the file it is given.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_FILE_SIZE",
    "MAX_LINE_LENGTH",
    "NAMING_VALUES",
    "PROPERTY_FIELDS",
    "ConfigError",
    "Settings",
    "load_settings",
    "parse_properties",
    "settings_from_properties",
    "suggest_key",
]

MAX_LINE_LENGTH = 64 * 1024
MAX_FILE_SIZE = 1024 * 1024

# Canonical spellings of snapshot_auto_naming, as WCS writes them.
NAMING_VALUES = ("mediaSessionId", "streamName")


class ConfigError(ValueError):
    """A configuration file or value that the server cannot run with."""


# ---------------------------------------------------------------------------
# Java .properties syntax
# ---------------------------------------------------------------------------

# Java's whitespace for properties is only these three; other Unicode spaces are content.
_WHITESPACE = " \t\f"
_SEPARATORS = "=:"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_NEWLINE = re.compile(r"\r\n|\r|\n")


def _ends_with_continuation(line: str) -> bool:
    """True if the line ends in an odd number of backslashes (the last one escapes the newline)."""
    count = len(line) - len(line.rstrip("\\"))
    return count % 2 == 1


def _unescape(raw: str, lineno: int) -> list[tuple[str, bool]]:
    """Decode escapes, pairing each character with whether it was escaped (`\\ ` survives strip)."""
    out: list[tuple[str, bool]] = []
    i = 0
    n = len(raw)
    while i < n:
        ch = raw[i]
        if ch != "\\":
            out.append((ch, False))
            i += 1
            continue
        if i + 1 >= n:
            # A lone trailing backslash (continuation at end of file): Java drops it.
            break
        nxt = raw[i + 1]
        if nxt == "u":
            digits = raw[i + 2 : i + 6]
            if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ConfigError(f"line {lineno}: malformed \\uXXXX escape: {raw[i : i + 6]!r}")
            out.append((chr(int(digits, 16)), True))
            i += 6
            continue
        # Java maps any other escaped character to itself (\\, \=, \:, \ , \#, ...).
        out.append((_ESCAPES.get(nxt, nxt), True))
        i += 2
    return out


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continuation lines; return (first line number, logical line) without comments/blanks."""
    natural = _NEWLINE.split(text)
    result: list[tuple[int, str]] = []
    i = 0
    while i < len(natural):
        line = natural[i]
        lineno = i + 1
        i += 1
        stripped = line.lstrip(_WHITESPACE)
        # Comment and blank lines are never continued, even if they end in a backslash (Java).
        if not stripped or stripped[0] in "#!":
            continue
        parts = [stripped]
        length = len(stripped)
        while _ends_with_continuation(parts[-1]):
            parts[-1] = parts[-1][:-1]
            if i >= len(natural):
                break
            cont = natural[i].lstrip(_WHITESPACE)
            i += 1
            parts.append(cont)
            length += len(cont)
            if length > MAX_LINE_LENGTH:
                break
        logical = "".join(parts)
        if len(logical) > MAX_LINE_LENGTH:
            raise ConfigError(f"line {lineno}: line longer than {MAX_LINE_LENGTH} characters")
        result.append((lineno, logical))
    return result


def _split_key_value(line: str) -> tuple[str, str]:
    """Split a logical line at the first unescaped '=', ':' or whitespace (Java rules)."""
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        if ch == "\\":
            i += 2
            continue
        if ch in _SEPARATORS or ch in _WHITESPACE:
            break
        i += 1
    key = line[: min(i, n)]
    rest = line[min(i, n) :].lstrip(_WHITESPACE)
    # One '=' or ':' may follow the key's whitespace ("key = value", "key value", "key=value").
    if rest and rest[0] in _SEPARATORS:
        rest = rest[1:].lstrip(_WHITESPACE)
    return key, rest


def parse_properties(text: str) -> dict[str, str]:
    """Parse Java .properties text into a dict; later duplicates win.

    Differs from Java only in stripping unescaped trailing whitespace from values (operators
    leave it by accident; an escaped ``\\ `` is kept). There are no inline comments.
    """
    if len(text) > MAX_FILE_SIZE:
        raise ConfigError(f"configuration larger than {MAX_FILE_SIZE} bytes")
    if text.startswith("\ufeff"):
        text = text[1:]
    props: dict[str, str] = {}
    for lineno, line in _logical_lines(text):
        raw_key, raw_value = _split_key_value(line)
        key = "".join(c for c, _ in _unescape(raw_key, lineno))
        value_chars = _unescape(raw_value, lineno)
        while value_chars and not value_chars[-1][1] and value_chars[-1][0] in _WHITESPACE:
            value_chars.pop()
        props[key] = "".join(c for c, _ in value_chars)
    return props


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Every server setting, typed. Ports are None when the listener is disabled.

    Built by ``settings_from_properties`` (which validates). ``dataclasses.replace`` does not
    validate, so tests may set e.g. ``http_port=0`` to ask the OS for a free port.
    """

    http_port: int | None = 8081
    https_port: int | None = 8444
    ws_port: int | None = 8080
    wss_port: int | None = 8443
    rtmp_port: int | None = 1935
    rtsp_port: int | None = 554
    ip: str = "0.0.0.0"
    https_cert: str | None = None
    https_key: str | None = None
    snapshot_taking_interval_ms: int = 3000
    snapshot_taking_attempts: int = 30
    snapshot_auto_enabled: bool = False
    snapshot_auto_dir: str = "snapshots"
    snapshot_auto_naming: str = "mediaSessionId"
    snapshot_auto_rate: int = 30
    snapshot_auto_retention: int = 20
    disable_rest_auth: bool = True
    rest_auth_user: str = "admin"
    # repr=False so that logging the settings never prints the password.
    rest_auth_password: str | None = field(default=None, repr=False)
    rest_access_control_allow_origin: str = "*"
    # -- limits and doors --------------------------------------------------------------------
    # Largest picture (width x height) a stream may declare; larger video is refused.
    max_picture_pixels: int = 8192 * 4352
    # A publisher that sends no media for this long is dropped (0: never).
    publish_idle_timeout_ms: int = 10_000
    # Connections over all listeners; lowered at start to fit the open-file limit.
    max_connections: int = 4000
    # Connections from one client address to the HTTP, HTTPS, WS and WSS listeners.
    max_connections_per_ip: int = 128
    # Browser origins allowed to open a WebSocket session; empty: the page's own host and the
    # CORS origin; ("*",): any.
    ws_allowed_origins: tuple[str, ...] = ()
    # Networks camera pulls may connect to (CIDR, normalised); empty: any.
    rtsp_pull_allowed_networks: tuple[str, ...] = ()
    # UDP port pairs (RTP + RTCP) the RTSP server may hold at once, and where: None = ephemeral.
    rtsp_udp_max_pairs: int = 256
    rtsp_udp_port_range: tuple[int, int] | None = None
    # WCS-style REST hooks: connect/publishStream/playStream are asked before they happen.
    rest_hook_url: str | None = None
    rest_hook_timeout_ms: int = 3000
    rest_hook_fail_open: bool = False
    # A shared secret every publisher must present (RTMP ?password=, RTSP auth, WebSDK custom).
    publish_password: str | None = field(default=None, repr=False)
    # Lowest level logged (debug, info, warn, error) and text or one JSON object per line.
    log_level: str = "info"
    log_format: str = "text"
    # GET /metrics (Prometheus) needs the REST credentials when REST auth is on; false: never.
    metrics_auth: bool = True
    # Series per stream name too (one set per live stream: mind the cardinality).
    metrics_per_stream: bool = False
    # -- cluster (docs/cluster.md) -----------------------------------------------------------
    # The shared stream directory (redis://, rediss://, unix://); None: one process, in-process
    # directory.
    cluster_redis_url: str | None = field(default=None, repr=False)
    # This node's REST base URL as other nodes reach it; None: derived from ip and the HTTP port.
    cluster_advertise_url: str | None = None
    # This node's name in the directory; None: generated at start (host name, pid, random).
    cluster_node_id: str | None = None
    # Redis unreachable: true accepts new publishes (claimed once Redis returns), false refuses.
    cluster_fail_open: bool = False
    # A node's claims and record live this long unless refreshed (a dead node's names free).
    cluster_ttl_ms: int = 10_000
    # How long a request forwarded to the owner's node may take.
    cluster_forward_timeout_ms: int = 5_000


# Property key (as written in flashphoner.properties) -> Settings field.
PROPERTY_FIELDS: Mapping[str, str] = {
    "http.port": "http_port",
    "https.port": "https_port",
    "ws.port": "ws_port",
    "wss.port": "wss_port",
    "rtmp.port": "rtmp_port",
    "rtsp.port": "rtsp_port",
    "ip": "ip",
    "https.cert": "https_cert",
    "https.key": "https_key",
    "snapshot_taking_interval_ms": "snapshot_taking_interval_ms",
    "snapshot_taking_attempts": "snapshot_taking_attempts",
    "snapshot_auto_enabled": "snapshot_auto_enabled",
    "snapshot_auto_dir": "snapshot_auto_dir",
    "snapshot_auto_naming": "snapshot_auto_naming",
    "snapshot_auto_rate": "snapshot_auto_rate",
    "snapshot_auto_retention": "snapshot_auto_retention",
    "disable_rest_auth": "disable_rest_auth",
    "rest_auth_user": "rest_auth_user",
    "rest_auth_password": "rest_auth_password",
    "rest_access_control_allow_origin": "rest_access_control_allow_origin",
    "max_picture_pixels": "max_picture_pixels",
    "publish_idle_timeout_ms": "publish_idle_timeout_ms",
    "max_connections": "max_connections",
    "max_connections_per_ip": "max_connections_per_ip",
    "ws_allowed_origins": "ws_allowed_origins",
    "rtsp_pull_allowed_networks": "rtsp_pull_allowed_networks",
    "rtsp_udp_max_pairs": "rtsp_udp_max_pairs",
    "rtsp_udp_port_range": "rtsp_udp_port_range",
    "rest_hook_url": "rest_hook_url",
    "rest_hook_timeout_ms": "rest_hook_timeout_ms",
    "rest_hook_fail_open": "rest_hook_fail_open",
    "publish_password": "publish_password",
    "log_level": "log_level",
    "log_format": "log_format",
    "metrics_auth": "metrics_auth",
    "metrics_per_stream": "metrics_per_stream",
    "cluster_redis_url": "cluster_redis_url",
    "cluster_advertise_url": "cluster_advertise_url",
    "cluster_node_id": "cluster_node_id",
    "cluster_fail_open": "cluster_fail_open",
    "cluster_ttl_ms": "cluster_ttl_ms",
    "cluster_forward_timeout_ms": "cluster_forward_timeout_ms",
}

# Generous ceiling for counts without a natural one, so nothing downstream sees absurd values.
_INT_MAX = 2**31 - 1
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
# Values that end up in HTTP headers (CORS, Basic auth) must not smuggle CR/LF or other controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _bad(key: str, value: str, expected: str) -> ConfigError:
    return ConfigError(f"bad value for {key}: {value!r} (expected {expected})")


def _parse_int(key: str, value: str, lo: int, hi: int, expected: str) -> int:
    if not _INTEGER.fullmatch(value):
        raise _bad(key, value, expected)
    number = int(value)
    if not lo <= number <= hi:
        raise _bad(key, value, expected)
    return number


def _port(key: str, value: str) -> int | None:
    if value == "":
        return None
    port = _parse_int(key, value, 0, 65535, "a port number 0..65535; 0 or empty disables")
    return port or None


def _int_range(lo: int, hi: int) -> Callable[[str, str], int]:
    expected = f"an integer >= {lo}" if hi == _INT_MAX else f"an integer {lo}..{hi}"

    def parse(key: str, value: str) -> int:
        return _parse_int(key, value, lo, hi, expected)

    return parse


def _bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _bad(key, value, "true or false (also yes/no, on/off, 1/0)")


def _ip(key: str, value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _bad(key, value, "an IPv4 or IPv6 address such as 0.0.0.0 or ::") from None


def _optional_path(key: str, value: str) -> str | None:
    if _CONTROL.search(value):
        raise _bad(key, value, "a file path without control characters")
    return value or None


def _path(key: str, value: str) -> str:
    if value == "" or _CONTROL.search(value):
        raise _bad(key, value, "a non-empty path without control characters")
    return value


def _naming(key: str, value: str) -> str:
    # Case-insensitive, normalised to WCS's spelling: a case slip is unambiguous and should not
    # stop start-up, and downstream code can compare against the canonical names exactly.
    for name in NAMING_VALUES:
        if value.lower() == name.lower():
            return name
    raise _bad(key, value, " or ".join(NAMING_VALUES))


def _user(key: str, value: str) -> str:
    # Basic auth splits "user:password" at the first colon, so a user name cannot hold one.
    if value == "" or ":" in value or _CONTROL.search(value):
        raise _bad(key, value, "a non-empty user name without ':' or control characters")
    return value


def _password(key: str, value: str) -> str | None:
    if _CONTROL.search(value):
        # The value itself is not echoed: it is a secret.
        raise ConfigError(f"bad value for {key}: (hidden) (expected no control characters)")
    return value or None


def _origin(key: str, value: str) -> str:
    if value == "" or _CONTROL.search(value):
        raise _bad(key, value, "'*' or an origin such as https://example.com")
    return value


_PIXELS = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")
# A list value: items separated by commas and/or blanks.
_LIST_SEPARATOR = re.compile(r"[,\s]+")
_ORIGIN = re.compile(r"(https?)://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")
_PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")


def _items(value: str) -> list[str]:
    return [item for item in _LIST_SEPARATOR.split(value) if item]


def _pixels(key: str, value: str) -> int:
    expected = "a picture size WIDTHxHEIGHT such as 8192x4352, or a pixel count"
    m = _PIXELS.fullmatch(value.lower())
    if m:
        pixels = int(m.group(1)) * int(m.group(2))
    elif _INTEGER.fullmatch(value):
        pixels = int(value)
    else:
        raise _bad(key, value, expected)
    if not 16 * 16 <= pixels <= _INT_MAX:
        raise _bad(key, value, expected + " of at least 16x16")
    return pixels


def _origins(key: str, value: str) -> tuple[str, ...]:
    items = _items(value)
    if "*" in items:
        return ("*",)
    for item in items:
        if not _ORIGIN.fullmatch(item):
            raise _bad(
                key, value, "'*' or origins such as https://example.com:8444, comma-separated"
            )
    # Origins compare case-insensitively (scheme and host); a trailing default port is kept as is.
    return tuple(item.lower() for item in items)


def _networks(key: str, value: str) -> tuple[str, ...]:
    networks = []
    for item in _items(value):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise _bad(
                key, value, "networks in CIDR form such as 192.168.0.0/16, 10.1.2.3"
            ) from None
    return tuple(networks)


def _port_range(key: str, value: str) -> tuple[int, int] | None:
    if value == "":
        return None
    m = _PORT_RANGE.fullmatch(value)
    expected = "a UDP port range LOW-HIGH such as 30000-30999 (at least 4 ports), or empty"
    if not m:
        raise _bad(key, value, expected)
    low, high = int(m.group(1)), int(m.group(2))
    if not 1024 <= low < high <= 65535 or high - low < 3:
        raise _bad(key, value, expected + " within 1024..65535")
    return low, high


_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?", re.IGNORECASE)


def _hook_url(key: str, value: str) -> str | None:
    if value == "":
        return None
    if not _URL.fullmatch(value) or _CONTROL.search(value):
        raise _bad(key, value, "an http:// or https:// base URL without query, or empty")
    return value.rstrip("/")


_REDIS_URL = re.compile(
    r"(redis|rediss)://[^\s/?#]*(/[0-9]{0,2})?|unix://(/[^\s?#]+)(\?db=[0-9]{1,2})?"
)
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _redis_url(key: str, value: str) -> str | None:
    if value == "":
        return None
    if not _REDIS_URL.fullmatch(value) or _CONTROL.search(value):
        # The value may carry a password: never echoed.
        raise ConfigError(
            f"{key}: expected redis://[:password@]host[:port][/db], rediss://... or "
            "unix:///path/to/redis.sock[?db=N], or empty"
        )
    return value


def _advertise_url(key: str, value: str) -> str | None:
    if value == "":
        return None
    if not _URL.fullmatch(value) or _CONTROL.search(value):
        raise _bad(
            key, value, "this node's http:// or https:// base URL such as http://10.0.0.5:8081"
        )
    return value.rstrip("/")


def _node_id(key: str, value: str) -> str | None:
    if value == "":
        return None
    if not _NODE_ID.fullmatch(value):
        raise _bad(key, value, "1 to 64 characters of A-Z a-z 0-9 . _ -, or empty")
    return value


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(key: str, value: str) -> str:
        if value.lower() not in choices:
            raise _bad(key, value, " or ".join(choices))
        return value.lower()

    return parse


_PARSERS: Mapping[str, Callable[[str, str], Any]] = {
    "http.port": _port,
    "https.port": _port,
    "ws.port": _port,
    "wss.port": _port,
    "rtmp.port": _port,
    "rtsp.port": _port,
    "ip": _ip,
    "https.cert": _optional_path,
    "https.key": _optional_path,
    "snapshot_taking_interval_ms": _int_range(1, 600_000),
    "snapshot_taking_attempts": _int_range(1, 10_000),
    "snapshot_auto_enabled": _bool,
    "snapshot_auto_dir": _path,
    "snapshot_auto_naming": _naming,
    "snapshot_auto_rate": _int_range(1, _INT_MAX),
    "snapshot_auto_retention": _int_range(0, _INT_MAX),
    "disable_rest_auth": _bool,
    "rest_auth_user": _user,
    "rest_auth_password": _password,
    "rest_access_control_allow_origin": _origin,
    "max_picture_pixels": _pixels,
    "publish_idle_timeout_ms": _int_range(0, 86_400_000),
    "max_connections": _int_range(16, 1_000_000),
    "max_connections_per_ip": _int_range(1, 1_000_000),
    "ws_allowed_origins": _origins,
    "rtsp_pull_allowed_networks": _networks,
    "rtsp_udp_max_pairs": _int_range(1, 32_768),
    "rtsp_udp_port_range": _port_range,
    "rest_hook_url": _hook_url,
    "rest_hook_timeout_ms": _int_range(100, 60_000),
    "rest_hook_fail_open": _bool,
    "publish_password": _password,
    "log_level": _choice("debug", "info", "warn", "error"),
    "log_format": _choice("text", "json"),
    "metrics_auth": _bool,
    "metrics_per_stream": _bool,
    "cluster_redis_url": _redis_url,
    "cluster_advertise_url": _advertise_url,
    "cluster_node_id": _node_id,
    "cluster_fail_open": _bool,
    "cluster_ttl_ms": _int_range(1_000, 600_000),
    "cluster_forward_timeout_ms": _int_range(100, 120_000),
}


def _distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def suggest_key(key: str) -> str | None:
    """The key of ours an unknown `key` is probably a misspelling of (within 2 edits, fewer for
    short keys so that a foreign key is not taken for ours), or None."""
    if len(key) > 200:
        return None
    best: tuple[int, str] | None = None
    for known in _PARSERS:
        limit = min(2, len(known) // 4)
        d = _distance(key.lower(), known.lower())
        if d <= limit and (best is None or d < best[0]):
            best = (d, known)
    return best[1] if best else None


def settings_from_properties(props: Mapping[str, str]) -> tuple[Settings, list[str]]:
    """Validate properties into ``Settings``; also return the sorted unknown keys.

    Raises ConfigError naming the key (and the value, except for the password).
    """
    values: dict[str, Any] = {}
    for key, raw in props.items():
        parser = _PARSERS.get(key)
        if parser is None:
            continue
        values[PROPERTY_FIELDS[key]] = parser(key, raw.strip(_WHITESPACE))
    unknown = sorted(key for key in props if key not in _PARSERS)
    settings = Settings(**values)

    if (settings.https_cert is None) != (settings.https_key is None):
        present, missing = (
            ("https.cert", "https.key") if settings.https_cert else ("https.key", "https.cert")
        )
        raise ConfigError(f"{present} is set but {missing} is not: set both or neither")
    if not settings.disable_rest_auth and settings.rest_auth_password is None:
        raise ConfigError(
            "rest_auth_password must be set when disable_rest_auth is false "
            "(REST Basic auth needs a password)"
        )
    return settings, unknown


def load_settings(path: str) -> tuple[Settings, list[str]]:
    """Read and validate a properties file (UTF-8, falling back to Latin-1 like Java's loader)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path!r}: {e.strerror or e}") from e
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(f"{path}: configuration larger than {MAX_FILE_SIZE} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    try:
        return settings_from_properties(parse_properties(text))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
