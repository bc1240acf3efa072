"""RTSP authentication: client-side Basic and Digest (RFC 2617 / RFC 7616), URL credentials.

The server side only needs :func:`check_basic`; a camera pull uses :func:`parse_challenges`,
:func:`choose_challenge` and :func:`authorization_header` after a 401.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = [
    "AuthError",
    "Challenge",
    "authorization_header",
    "check_basic",
    "choose_challenge",
    "parse_challenges",
    "split_userinfo",
]

MAX_CHALLENGE_CHARS: Final = 8192
MAX_CHALLENGES: Final = 16
MAX_PARAMS: Final = 32

_SCHEME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PARAM = re.compile(
    r"\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*"
    r"(\"(?:[^\"\\]|\\.)*\"|[^\s,\"]*)\s*",
    re.DOTALL,
)
_TOKEN68 = re.compile(r"\s+([A-Za-z0-9\-._~+/]+=*)\s*(?=,|$)")
_COMMA = re.compile(r"\s*,")
_SEPARATORS = re.compile(r"[\s,]*")
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)

# Digest algorithm name -> hashlib name; "-sess" variants hash the nonce pair into HA1.
_DIGESTS: Final[Mapping[str, str]] = {
    "MD5": "md5",
    "MD5-SESS": "md5",
    "SHA-256": "sha256",
    "SHA-256-SESS": "sha256",
}


class AuthError(ValueError):
    """A challenge or credential this module cannot parse or answer."""


@dataclass(frozen=True)
class Challenge:
    """One challenge of a WWW-Authenticate header; ``scheme`` is lower-case, param names too."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def nonce(self) -> str:
        return self.params.get("nonce", "")

    @property
    def opaque(self) -> str | None:
        return self.params.get("opaque")

    @property
    def algorithm(self) -> str:
        """Upper-case Digest algorithm; MD5 when the challenge names none."""
        return self.params.get("algorithm", "MD5").upper()

    @property
    def qop(self) -> tuple[str, ...]:
        """Offered qop values ("auth", "auth-int"); empty for an RFC 2069 challenge."""
        raw = self.params.get("qop", "")
        return tuple(q.strip().lower() for q in raw.split(",") if q.strip())

    @property
    def stale(self) -> bool:
        """True when the server says only the nonce expired: retry without asking for a password."""
        return self.params.get("stale", "").lower() == "true"

    @property
    def userhash(self) -> bool:
        return self.params.get("userhash", "").lower() == "true"


def _skip_separators(value: str, pos: int) -> int:
    match = _SEPARATORS.match(value, pos)
    return match.end() if match else pos


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return _UNESCAPE.sub(r"\1", value[1:-1])
    return value


def parse_challenges(values: str | Iterable[str]) -> list[Challenge]:
    """Parse every WWW-Authenticate header value (each may hold several challenges)."""
    challenges: list[Challenge] = []
    for value in [values] if isinstance(values, str) else values:
        if len(value) > MAX_CHALLENGE_CHARS:
            raise AuthError(f"WWW-Authenticate longer than {MAX_CHALLENGE_CHARS} characters")
        pos = 0
        while True:
            pos = _skip_separators(value, pos)
            if pos >= len(value):
                break
            scheme = _SCHEME.match(value, pos)
            if scheme is None:
                raise AuthError(f"bad WWW-Authenticate at {value[pos : pos + 32]!r}")
            pos = scheme.end()
            params: dict[str, str] = {}
            token68 = _TOKEN68.match(value, pos)
            if token68 is not None:
                params["token68"] = token68.group(1)
                pos = token68.end()
            else:
                pos = _parse_params(value, pos, params)
            if len(challenges) == MAX_CHALLENGES:
                raise AuthError(f"more than {MAX_CHALLENGES} challenges")
            challenges.append(Challenge(scheme.group(0).lower(), params))
    return challenges


def _parse_params(value: str, pos: int, params: dict[str, str]) -> int:
    after_comma = False
    while True:
        param = _PARAM.match(value, pos)
        if param is None:
            break
        if len(params) == MAX_PARAMS:
            raise AuthError(f"more than {MAX_PARAMS} parameters in a challenge")
        params[param.group(1).lower()] = _unquote(param.group(2))
        pos = param.end()
        after_comma = False
        comma = _COMMA.match(value, pos)
        if comma is None:
            break
        pos = comma.end()
        after_comma = True
    # After a parameter comes a comma (then a parameter or the next challenge) or the end.
    if params and not after_comma and value[pos:].strip():
        raise AuthError(f"bad WWW-Authenticate at {value[pos : pos + 32]!r}")
    return pos


def choose_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The strongest challenge we can answer: Digest SHA-256, then Digest MD5, then Basic."""

    def rank(c: Challenge) -> int:
        if c.scheme == "digest" and c.algorithm in _DIGESTS and (not c.qop or "auth" in c.qop):
            return 3 if c.algorithm.startswith("SHA-256") else 2
        return 1 if c.scheme == "basic" else 0

    best = max(challenges, key=rank, default=None)
    return best if best is not None and rank(best) > 0 else None


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization_header(
    challenge: Challenge,
    method: str,
    uri: str,
    user: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The Authorization header value answering ``challenge`` for one request.

    ``uri`` is the request URI exactly as sent. ``nc`` counts requests made with this nonce
    (start at 1, reset when the server sends a new nonce). ``cnonce`` is random unless given.
    """
    if challenge.scheme == "basic":
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return f"Basic {token}"
    if challenge.scheme != "digest":
        raise AuthError(f"unsupported authentication scheme {challenge.scheme!r}")
    algorithm = challenge.algorithm
    hash_name = _DIGESTS.get(algorithm)
    if hash_name is None:
        raise AuthError(f"unsupported Digest algorithm {algorithm!r}")
    if challenge.qop and "auth" not in challenge.qop:
        raise AuthError(f"unsupported qop {','.join(challenge.qop)!r}")
    if not 0 < nc <= 0xFFFFFFFF:
        raise AuthError(f"nonce count {nc} out of range")

    def h(text: str) -> str:
        return hashlib.new(hash_name, text.encode("utf-8")).hexdigest()

    realm, nonce = challenge.realm, challenge.nonce
    qop = "auth" if challenge.qop else None
    sess = algorithm.endswith("-SESS")
    if cnonce is None and (qop or sess):
        cnonce = secrets.token_hex(8)
    ha1 = h(f"{user}:{realm}:{password}")
    if sess:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    nc_text = f"{nc:08x}"
    if qop:
        response = h(f"{ha1}:{nonce}:{nc_text}:{cnonce}:{qop}:{ha2}")
    else:
        response = h(f"{ha1}:{nonce}:{ha2}")
    username = h(f"{user}:{realm}") if challenge.userhash else user
    parts = [
        f"username={_quoted(username)}",
        f"realm={_quoted(realm)}",
        f"nonce={_quoted(nonce)}",
        f"uri={_quoted(uri)}",
        f"response={_quoted(response)}",
    ]
    if "algorithm" in challenge.params:
        parts.append(f"algorithm={challenge.params['algorithm']}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quoted(challenge.opaque)}")
    if qop:
        parts.append(f"qop={qop}")
    if qop or sess:
        parts.append(f"cnonce={_quoted(cnonce or '')}")
    if qop:
        parts.append(f"nc={nc_text}")
    if challenge.userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``rtsp://user:pass@host:port/path`` -> (URL without userinfo, user, password).

    User and password are percent-decoded (UTF-8); both are None when the URL has no userinfo,
    and the password is "" when only a user is given.
    """
    try:
        parts = urlsplit(url)
    except ValueError as err:  # "Invalid IPv6 URL", NFKC-normalised separators in the host
        raise AuthError(f"not a usable URL: {err}") from None
    if parts.scheme.lower() not in ("rtsp", "rtsps") or not parts.netloc:
        raise AuthError(f"not an rtsp:// URL: {url[:80]!r}")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None, None
    if not hostport:
        raise AuthError("URL has credentials but no host")
    start = url.index("//") + 2
    clean = url[:start] + hostport + url[start + len(parts.netloc) :]
    user, _, password = userinfo.partition(":")
    return clean, unquote(user), unquote(password)


def check_basic(header: str | None, user: str, password: str) -> bool:
    """True when an Authorization header carries exactly these Basic credentials."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    got_user, sep, got_password = decoded.partition(b":")
    # Both comparisons always run so timing does not tell which part was wrong.
    user_ok = hmac.compare_digest(got_user, user.encode())
    password_ok = hmac.compare_digest(got_password, password.encode())
    return bool(sep) and user_ok and password_ok
