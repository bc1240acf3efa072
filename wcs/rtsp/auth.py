"""RTSP authentication, Basic and Digest (RFC 2617 / RFC 7616): the client side (a camera pull
answers a 401 with :func:`parse_challenges`, :func:`choose_challenge` and
:func:`authorization_header`) and the server side (:class:`RtspAuthenticator` challenges and
checks one credential set), sharing one digest computation.
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

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from wcs.limits import LogThrottle
from wcs.rtsp.numbers import ascii_hex

__all__ = [
    "AuthError",
    "AuthOutcome",
    "Challenge",
    "RtspAuthenticator",
    "authorization_header",
    "check_basic",
    "choose_challenge",
    "parse_challenges",
    "split_userinfo",
]

MAX_CHALLENGE_CHARS: Final = 8192
MAX_CHALLENGES: Final = 16
MAX_PARAMS: Final = 32
# How long a server nonce is good for; an older one is answered with stale=true, which clients
# retry with the new nonce without asking for the password again.
NONCE_LIFETIME: Final = 300.0
# Failed logins are logged once per interval (a count and the last one), not once per guess.
FAILURE_LOG_INTERVAL: Final = 60.0

log = Logger(namespace="wcs.rtsp.auth")

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

    realm, nonce = challenge.realm, challenge.nonce
    qop = "auth" if challenge.qop else None
    sess = algorithm.endswith("-SESS")
    if cnonce is None and (qop or sess):
        cnonce = secrets.token_hex(8)
    nc_text = f"{nc:08x}"
    response = _digest_response(
        hash_name, sess, user, realm, password, nonce, method, uri, qop, nc_text, cnonce or ""
    )
    username = _hash(hash_name, f"{user}:{realm}") if challenge.userhash else user
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


def _hash(hash_name: str, text: str) -> str:
    return hashlib.new(hash_name, text.encode("utf-8")).hexdigest()


def _digest_response(
    hash_name: str,
    sess: bool,
    user: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str,
    cnonce: str,
) -> str:
    """The Digest ``response`` value (RFC 7616 3.4.1; RFC 2069 form without qop)."""
    ha1 = _hash(hash_name, f"{user}:{realm}:{password}")
    if sess:
        ha1 = _hash(hash_name, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _hash(hash_name, f"{method}:{uri}")
    if qop:
        return _hash(hash_name, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _hash(hash_name, f"{ha1}:{nonce}:{ha2}")


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


def check_basic(header: str | None, user: str | None, password: str) -> bool:
    """True when an Authorization header carries exactly these Basic credentials (any user
    name when `user` is None)."""
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
    user_ok = user is None or hmac.compare_digest(got_user, user.encode())
    password_ok = hmac.compare_digest(got_password, password.encode())
    return bool(sep) and user_ok and password_ok


# --- the server side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthOutcome:
    """What :meth:`RtspAuthenticator.check` decided. ``failed`` is a wrong guess (delay it,
    count it); a request without credentials or with an expired nonce is neither ok nor failed:
    it just gets the challenges (``stale`` tells the client its password was right)."""

    ok: bool
    failed: bool = False
    stale: bool = False
    reason: str = ""


_OK = AuthOutcome(True)
_SERVER_ALGORITHMS: Final = ("SHA-256", "MD5")  # RFC 7616 3.7: the preferred one first
_HEX_RESPONSE = {"MD5": 32, "SHA-256": 64}


class RtspAuthenticator:
    """One credential set guarding some RTSP methods: REST's user for playback, and the publish
    password (``user=None``: any user name, the password decides) for ANNOUNCE.

    Challenges are Digest SHA-256, Digest MD5 (in that order: RFC 7616 clients take the first
    they support, ffmpeg the last Digest one, and it knows only MD5) and Basic (cameras, VLC,
    ffmpeg with a URL password). Nonces are ``<time>.<HMAC(secret, time)>``: nothing is stored
    per client, they expire after ``nonce_lifetime`` (stale=true), and a forged one fails the
    HMAC. Every comparison is constant-time. Failed guesses are logged rate-limited: the first
    at once, then a count at most every FAILURE_LOG_INTERVAL.
    """

    def __init__(
        self,
        user: str | None,
        password: str,
        clock: IReactorTime,
        *,
        realm: str = "wcs",
        nonce_lifetime: float = NONCE_LIFETIME,
        secret: bytes | None = None,
    ) -> None:
        if '"' in realm or "\\" in realm:
            raise ValueError("the realm must not need quoting")
        self.user = user
        self.password = password
        self.clock = clock
        self.realm = realm
        self.nonce_lifetime = nonce_lifetime
        self._secret = secret or secrets.token_bytes(32)
        self._failures = LogThrottle(clock, log, FAILURE_LOG_INTERVAL)

    # -- challenges --------------------------------------------------------------------------
    def nonce(self) -> str:
        issued = f"{int(self.clock.seconds()):x}"
        return f"{issued}.{self._mac(issued)}"

    def _mac(self, issued: str) -> str:
        return hmac.new(self._secret, issued.encode("ascii"), hashlib.sha256).hexdigest()[:32]

    def challenges(self, *, stale: bool = False) -> list[tuple[str, str]]:
        """The WWW-Authenticate headers of a 401."""
        nonce = self.nonce()
        extra = ", stale=true" if stale else ""
        headers = [
            (
                "WWW-Authenticate",
                f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={algorithm}, '
                f'qop="auth"{extra}',
            )
            for algorithm in _SERVER_ALGORITHMS
        ]
        headers.append(("WWW-Authenticate", f'Basic realm="{self.realm}"'))
        return headers

    # -- checking ----------------------------------------------------------------------------
    def check(self, method: str, uri: str, header: str | None, peer: str = "") -> AuthOutcome:
        """Check a request's Authorization header; a failure is counted and logged (rarely)."""
        outcome = self._check(method, uri, header)
        if outcome.failed:
            self._failed(peer, outcome.reason)
        return outcome

    def _check(self, method: str, uri: str, header: str | None) -> AuthOutcome:
        if not header:
            return AuthOutcome(False, reason="no credentials")
        scheme, _, rest = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            if check_basic(header, self.user, self.password):
                return _OK
            return AuthOutcome(False, failed=True, reason="wrong Basic credentials")
        if scheme != "digest":
            return AuthOutcome(False, failed=True, reason=f"unsupported scheme {scheme[:32]!r}")
        try:
            params: dict[str, str] = {}
            pos = _parse_params(rest, 0, params)
        except AuthError as err:
            return AuthOutcome(False, failed=True, reason=f"bad Digest header: {err}")
        if rest[pos:].strip():
            return AuthOutcome(False, failed=True, reason="bad Digest header")
        return self._check_digest(method, uri, params)

    def _check_digest(self, method: str, uri: str, p: Mapping[str, str]) -> AuthOutcome:
        def failed(reason: str) -> AuthOutcome:
            return AuthOutcome(False, failed=True, reason=reason)

        algorithm = p.get("algorithm", "MD5").upper()
        if algorithm not in _SERVER_ALGORITHMS:
            return failed(f"unsupported Digest algorithm {algorithm[:32]!r}")
        missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
        if missing:
            return failed(f"Digest without {', '.join(missing)}")
        if p["realm"] != self.realm:
            return failed("Digest for another realm")
        issued, dot, mac = p["nonce"].partition(".")
        when = ascii_hex(issued, 12)
        # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError).
        if (
            not dot
            or when is None
            or not hmac.compare_digest(mac.encode(), self._mac(issued).encode())
        ):
            return failed("a nonce this server did not issue")
        if not _same_resource(p["uri"], uri):
            return failed("Digest for another URI")
        qop = p.get("qop")
        nc = p.get("nc", "")
        cnonce = p.get("cnonce", "")
        if qop is not None and (qop != "auth" or ascii_hex(nc, 8) is None or not cnonce):
            return failed("Digest with a bad qop, nc or cnonce")
        response = p["response"].lower()
        if len(response) != _HEX_RESPONSE[algorithm]:
            return failed("Digest response of the wrong length")
        user = p["username"] if self.user is None else self.user
        expected = _digest_response(
            _DIGESTS[algorithm],
            False,
            user,
            self.realm,
            self.password,
            p["nonce"],
            method,
            p["uri"],
            qop,
            nc,
            cnonce,
        )
        # Both comparisons always run, so timing does not tell which part was wrong.
        user_ok = hmac.compare_digest(
            p["username"].encode("utf-8", "surrogatepass"), user.encode("utf-8", "surrogatepass")
        )
        response_ok = hmac.compare_digest(response.encode(), expected.encode())
        if not (user_ok and response_ok):
            return failed("wrong Digest credentials")
        age = self.clock.seconds() - when
        if not -5 <= age <= self.nonce_lifetime:
            # Right password, old nonce: the client retries with the new one (RFC 7616 3.3).
            return AuthOutcome(False, stale=True, reason="stale nonce")
        return _OK

    def _failed(self, peer: str, reason: str) -> None:
        self._failures.warn(
            "RTSP authentication failed (realm {realm}): {peer}: {reason}",
            realm=self.realm,
            peer=peer or "?",
            reason=reason,
        )


def _same_resource(digest_uri: str, request_uri: str) -> bool:
    """Whether a Digest ``uri`` names the request's resource: the same text, or the same path
    and query (clients spell the host as they please)."""
    if digest_uri == request_uri:
        return True
    try:
        a, b = urlsplit(digest_uri), urlsplit(request_uri)
    except ValueError:
        return False
    return (a.path.rstrip("/"), a.query) == (b.path.rstrip("/"), b.query) and bool(a.path)
