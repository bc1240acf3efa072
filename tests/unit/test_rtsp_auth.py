"""Tests for RTSP Basic/Digest authentication helpers and URL credentials."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent

from wcs.rtsp.auth import (
    NONCE_LIFETIME,
    AuthError,
    Challenge,
    RtspAuthenticator,
    authorization_header,
    check_basic,
    choose_challenge,
    parse_challenges,
    split_userinfo,
)


def fields(header: str) -> dict[str, str]:
    """The parameters of an Authorization header, parsed with the challenge parser."""
    (parsed,) = parse_challenges(header)
    return dict(parsed.params)


# --- published test vectors ---------------------------------------------------------------------


def test_rfc2617_section_3_5() -> None:
    (challenge,) = parse_challenges(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge.qop == ("auth", "auth-int")
    header = authorization_header(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", 1, "0a4f113b"
    )
    assert header == (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
        'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41", '
        'qop=auth, cnonce="0a4f113b", nc=00000001'
    )


RFC7616_CHALLENGES = [
    # Two headers as in RFC 7616 3.9.1, with the line breaks of the RFC's layout.
    """Digest
       realm="http-auth@example.org",
       qop="auth, auth-int",
       algorithm=SHA-256,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"""",
    """Digest
       realm="http-auth@example.org",
       qop="auth, auth-int",
       algorithm=MD5,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"""",
]


@pytest.mark.parametrize(
    ("index", "response"),
    [
        (0, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        (1, "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_section_3_9_1(index: int, response: str) -> None:
    challenges = parse_challenges(RFC7616_CHALLENGES)
    assert [c.algorithm for c in challenges] == ["SHA-256", "MD5"]
    header = authorization_header(
        challenges[index],
        "GET",
        "/dir/index.html",
        "Mufasa",
        "Circle of Life",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    got = fields(header)
    assert got["response"] == response
    assert got["algorithm"] == ("SHA-256", "MD5")[index]
    assert got["opaque"] == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    assert (got["qop"], got["nc"]) == ("auth", "00000001")


def test_matches_ffmpeg_digest() -> None:
    # Lavf59.27.100 pulling rtsp://cam%40user:p%3Ass%20w@127.0.0.1:32859/cam/realmonitor?...
    # from a capturing server that sent the challenge below; ffmpeg answered with cnonce
    # 6e31d81eb4b3a346 and this response.
    url = "rtsp://cam%40user:p%3Ass%20w@127.0.0.1:32859/cam/realmonitor?channel=1&subtype=0"
    clean, user, password = split_userinfo(url)
    assert (user, password) == ("cam@user", "p:ss w")
    assert user is not None and password is not None
    (challenge,) = parse_challenges(
        'Digest realm="wcs test", nonce="3f2a9c1e7b", qop="auth", opaque="op4q"'
    )
    header = authorization_header(
        challenge, "DESCRIBE", clean, user, password, 1, "6e31d81eb4b3a346"
    )
    assert fields(header) == {
        "username": "cam@user",
        "realm": "wcs test",
        "nonce": "3f2a9c1e7b",
        "uri": "rtsp://127.0.0.1:32859/cam/realmonitor?channel=1&subtype=0",
        "response": "7f0f2e3ddd91f8da9c5c112b0da97a91",
        "opaque": "op4q",
        "qop": "auth",
        "cnonce": "6e31d81eb4b3a346",
        "nc": "00000001",
    }


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_rfc2069_digest_without_qop_like_dahua() -> None:
    challenge = Challenge(
        "digest",
        {"realm": "Login to be8c87b7ecbc1c2c89f8b4da109a4f78", "nonce": "1ae117ce84194f06"},
    )
    uri = "rtsp://192.168.0.141:554/cam/realmonitor?channel=1&subtype=0"
    header = authorization_header(challenge, "OPTIONS", uri, "admin", "secret")
    ha1 = md5("admin:Login to be8c87b7ecbc1c2c89f8b4da109a4f78:secret")
    expected = md5(f"{ha1}:1ae117ce84194f06:{md5('OPTIONS:' + uri)}")
    assert header == (
        'Digest username="admin", realm="Login to be8c87b7ecbc1c2c89f8b4da109a4f78", '
        f'nonce="1ae117ce84194f06", uri="{uri}", response="{expected}"'
    )


def test_md5_sess_and_nonce_count() -> None:
    (challenge,) = parse_challenges('Digest realm="r", nonce="n", algorithm="MD5-sess", qop=auth')
    got = fields(authorization_header(challenge, "PLAY", "rtsp://h/s", "u", "p", 26, "c"))
    ha1 = md5(f"{md5('u:r:p')}:n:c")
    assert got["response"] == md5(f"{ha1}:n:0000001a:c:auth:{md5('PLAY:rtsp://h/s')}")
    assert got["nc"] == "0000001a"
    assert got["algorithm"] == "MD5-sess"


def test_userhash_and_escaping() -> None:
    challenge = Challenge(
        "digest", {"realm": 'a "q" realm', "nonce": "n", "userhash": "true", "qop": "auth"}
    )
    header = authorization_header(challenge, "DESCRIBE", "rtsp://h/", 'us"er', "p", cnonce="c")
    got = fields(header)
    assert got["realm"] == 'a "q" realm'
    assert got["username"] == md5('us"er:a "q" realm')
    assert got["userhash"] == "true"
    assert '\\"q\\"' in header


def test_random_cnonce() -> None:
    (challenge,) = parse_challenges('Digest realm="r", nonce="n", qop="auth"')
    one = fields(authorization_header(challenge, "OPTIONS", "*", "u", "p"))
    two = fields(authorization_header(challenge, "OPTIONS", "*", "u", "p"))
    assert one["cnonce"] != two["cnonce"] and len(one["cnonce"]) == 16


def test_basic_header() -> None:
    (challenge,) = parse_challenges('Basic realm="IP Camera"')
    header = authorization_header(challenge, "DESCRIBE", "rtsp://h/", "admin", "pä:ss")
    assert header == "Basic " + base64.b64encode("admin:pä:ss".encode()).decode()
    assert check_basic(header, "admin", "pä:ss")


@pytest.mark.parametrize(
    ("challenge", "message"),
    [
        (Challenge("digest", {"algorithm": "SHA-512-256"}), "unsupported Digest algorithm"),
        (Challenge("digest", {"qop": "auth-int"}), "unsupported qop"),
        (Challenge("negotiate", {}), "unsupported authentication scheme"),
    ],
)
def test_unanswerable_challenges(challenge: Challenge, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        authorization_header(challenge, "DESCRIBE", "rtsp://h/", "u", "p")


def test_nonce_count_range() -> None:
    with pytest.raises(AuthError, match="nonce count 0 out of range"):
        authorization_header(Challenge("digest", {}), "OPTIONS", "*", "u", "p", nc=0)


# --- challenge parsing --------------------------------------------------------------------------


def test_several_challenges_in_one_header() -> None:
    challenges = parse_challenges(
        'Digest realm="cam", nonce="abc", stale=TRUE, qop="auth", Basic realm="cam", '
        "Negotiate dG9rZW4=="
    )
    assert [c.scheme for c in challenges] == ["digest", "basic", "negotiate"]
    assert challenges[0].stale and challenges[0].nonce == "abc"
    assert challenges[1].realm == "cam" and not challenges[1].stale
    assert challenges[2].params == {"token68": "dG9rZW4=="}


def test_challenge_values() -> None:
    (c,) = parse_challenges(r'DIGEST Realm="a\"b\\c", NONCE=tok/en+1, Opaque=""')
    assert c.scheme == "digest"
    assert c.realm == 'a"b\\c'
    assert c.nonce == "tok/en+1"
    assert c.opaque == ""
    assert c.algorithm == "MD5" and c.qop == ()
    assert parse_challenges("") == []
    assert parse_challenges(["", " , "]) == []


@pytest.mark.parametrize(
    "value",
    ['Digest realm="a" junk', '"quoted"', 'Digest realm="a", =b', "Digest realm=a b=c"],
)
def test_bad_challenges(value: str) -> None:
    with pytest.raises(AuthError, match="bad WWW-Authenticate"):
        parse_challenges(value)


def test_challenge_limits() -> None:
    with pytest.raises(AuthError, match="longer than 8192"):
        parse_challenges('Basic realm="' + "r" * 8200 + '"')
    with pytest.raises(AuthError, match="more than 16 challenges"):
        parse_challenges(", ".join(['Basic realm="r"'] * 17))
    with pytest.raises(AuthError, match="more than 32 parameters"):
        parse_challenges("Digest " + ", ".join(f"p{i}=v" for i in range(33)))


def test_choose_challenge() -> None:
    basic, md5c, sha, weird, intonly = parse_challenges(
        [
            'Basic realm="r"',
            'Digest realm="r", nonce="n"',
            'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth,auth-int"',
            'Digest realm="r", nonce="n", algorithm=SHA-512-256',
            'Digest realm="r", nonce="n", qop="auth-int"',
        ]
    )
    assert choose_challenge([basic, md5c, sha, weird]) is sha
    assert choose_challenge([basic, md5c]) is md5c
    assert choose_challenge([weird, basic]) is basic
    assert choose_challenge([weird, intonly]) is None
    assert choose_challenge([]) is None


# --- URLs and the server side -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://host/a", ("rtsp://host/a", None, None)),
        (
            "rtsp://admin:12345@10.0.0.5:554/Streaming/Channels/101",
            (
                "rtsp://10.0.0.5:554/Streaming/Channels/101",
                "admin",
                "12345",
            ),
        ),
        ("rtsp://admin@cam/x?y=1", ("rtsp://cam/x?y=1", "admin", "")),
        ("rtsp://:pw@cam", ("rtsp://cam", "", "pw")),
        ("rtsps://u%C3%A9:p%2Fw@[::1]:8322/s", ("rtsps://[::1]:8322/s", "ué", "p/w")),
        ("RTSP://u:p@w@cam/x", ("RTSP://cam/x", "u", "p@w")),
    ],
)
def test_split_userinfo(url: str, expected: tuple[str, str | None, str | None]) -> None:
    assert split_userinfo(url) == expected


@pytest.mark.parametrize("url", ["http://u:p@h/", "rtsp:/h/x", "cam/x", "rtsp://u:p@/x"])
def test_split_userinfo_refuses(url: str) -> None:
    with pytest.raises(AuthError):
        split_userinfo(url)


def test_check_basic() -> None:
    good = "Basic " + base64.b64encode(b"pub:s3cret").decode()
    assert check_basic(good, "pub", "s3cret")
    assert check_basic("basic  " + good[6:], "pub", "s3cret")
    assert not check_basic(good, "pub", "s3cret!")
    assert not check_basic(good, "pub2", "s3cret")
    assert not check_basic(None, "pub", "s3cret")
    assert not check_basic("", "pub", "s3cret")
    assert not check_basic("Basic !!!", "pub", "s3cret")
    assert not check_basic("Digest " + good[6:], "pub", "s3cret")
    assert not check_basic("Basic " + base64.b64encode(b"pubs3cret").decode(), "pub", "s3cret")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('Digest Basic realm="\\,= nonce'), max_size=120))
def test_arbitrary_challenges_only_raise_auth_errors(value: str) -> None:
    try:
        challenges = parse_challenges(value)
    except AuthError:
        return
    for challenge in challenges:
        with contextlib.suppress(AuthError):
            authorization_header(challenge, "OPTIONS", "*", "u", "p")


# --- the server side: RtspAuthenticator ----------------------------------------------------------

URI = "rtsp://127.0.0.1:8554/live/cam"


def authenticator(clock: Clock | None = None) -> RtspAuthenticator:
    return RtspAuthenticator("admin", 's3:cr"et', clock or Clock(), realm="wcs")


def offered(auth: RtspAuthenticator, **kwargs: bool) -> list[Challenge]:
    headers = auth.challenges(**kwargs)
    assert {name for name, _ in headers} == {"WWW-Authenticate"}
    return parse_challenges([value for _, value in headers])


def test_server_offers_digest_sha256_then_md5_then_basic() -> None:
    challenges = offered(authenticator())
    assert [(c.scheme, c.algorithm if c.scheme == "digest" else "") for c in challenges] == [
        ("digest", "SHA-256"),
        ("digest", "MD5"),
        ("basic", ""),
    ]
    assert all(c.realm == "wcs" for c in challenges)
    assert challenges[0].qop == ("auth",) and not challenges[0].stale
    assert choose_challenge(challenges) is challenges[0]
    assert all(c.stale for c in offered(authenticator(), stale=True)[:2])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_server_accepts_each_offered_scheme(index: int) -> None:
    auth = authenticator()
    challenge = offered(auth)[index]
    for method in ("DESCRIBE", "SETUP", "PLAY"):
        header = authorization_header(challenge, method, URI, "admin", 's3:cr"et', nc=3)
        assert auth.check(method, URI, header).ok
        # Another method, URI or password than the response was made for: refused.
        if challenge.scheme == "digest":
            assert auth.check("ANNOUNCE" if method != "ANNOUNCE" else "PLAY", URI, header).failed
            assert auth.check(method, URI + "/other", header).failed
        wrong = authorization_header(challenge, method, URI, "admin", "guess", nc=3)
        outcome = auth.check(method, URI, wrong)
        assert not outcome.ok and outcome.failed and not outcome.stale
        wrong_user = authorization_header(challenge, method, URI, "root", 's3:cr"et', nc=3)
        assert auth.check(method, URI, wrong_user).failed


def test_server_checks_ffmpegs_digest_computed_independently() -> None:
    """The header exactly as libavformat/httpauth.c writes it (MD5, qop quoted, nc bare),
    with the response computed here with hashlib, not with the module's own code."""
    auth = authenticator()
    (md5,) = [c for c in offered(auth) if c.scheme == "digest" and c.algorithm == "MD5"]

    def md5hex(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5hex('admin:wcs:s3:cr"et')
    ha2 = md5hex(f"SETUP:{URI}/trackID=0")
    response = md5hex(f"{ha1}:{md5.nonce}:00000001:0a1b2c3d4e5f6789:auth:{ha2}")
    header = (
        f'Digest username="admin",realm="wcs",nonce="{md5.nonce}",uri="{URI}/trackID=0",'
        f'response="{response}",algorithm=MD5,qop="auth",cnonce="0a1b2c3d4e5f6789",nc=00000001'
    )
    assert auth.check("SETUP", URI + "/trackID=0", header).ok
    # RFC 2069 form (no qop), as live555 (VLC) answers.
    old = md5hex(f"{ha1}:{md5.nonce}:{ha2}")
    header = (
        f'Digest username="admin", realm="wcs", nonce="{md5.nonce}", '
        f'uri="{URI}/trackID=0", response="{old}"'
    )
    assert auth.check("SETUP", URI + "/trackID=0", header).ok
    # The host spelled otherwise in the request line: the same resource.
    assert auth.check("SETUP", "rtsp://localhost/live/cam/trackID=0", header).ok


def test_server_nonces_expire_with_stale_and_cannot_be_forged() -> None:
    clock = Clock()
    auth = authenticator(clock)
    challenge = offered(auth)[0]
    clock.advance(NONCE_LIFETIME + 1)
    good = authorization_header(challenge, "PLAY", URI, "admin", 's3:cr"et')
    outcome = auth.check("PLAY", URI, good)
    assert (outcome.ok, outcome.failed, outcome.stale) == (False, False, True)
    # An old nonce with a wrong password is a failed guess, not a stale one.
    bad = authorization_header(challenge, "PLAY", URI, "admin", "guess")
    assert auth.check("PLAY", URI, bad).failed
    # A nonce from another server (or process) or edited by the client fails its HMAC.
    other = offered(authenticator(clock))[0]
    assert auth.check(
        "PLAY", URI, authorization_header(other, "PLAY", URI, "admin", 's3:cr"et')
    ).failed
    issued, _, mac = offered(auth)[0].nonce.partition(".")
    forged = Challenge("digest", {**challenge.params, "nonce": f"{int(issued, 16) + 1:x}.{mac}"})
    assert auth.check(
        "PLAY", URI, authorization_header(forged, "PLAY", URI, "admin", 's3:cr"et')
    ).failed


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        "Digest",
        "Digest garbage",
        'Digest username="admin"',
        "Basic !!!",
        "Basic " + base64.b64encode(b"admin").decode(),
        'Digest username="admin", realm="wcs", nonce="1.2", uri="x", response="y", '
        "algorithm=MD5-sess",
        'Digest username="admin", realm="other", nonce="1.2", uri="x", response="y"',
        'Digest username="admin", realm="wcs", nonce="\u00b2.2", uri="x", response="y"',
        # Found by the rtsp_auth fuzz target: compare_digest raised TypeError on non-ASCII str.
        'Digest username="admin", realm="wcs", nonce="0.\u00e9", uri="x", response="y"',
        'Digest username="\u00e9", realm="wcs", nonce="0.0", uri="x", response="'
        + "\u00e9" * 32
        + '"',
    ],
)
def test_server_refuses_malformed_credentials(header: str) -> None:
    outcome = authenticator().check("DESCRIBE", URI, header)
    assert not outcome.ok and outcome.failed


@pytest.mark.parametrize(
    "nc", ["\u0660" * 7 + "\u0661", "0000000\u00b9", "+0000001", "000000001", ""]
)
def test_server_reads_the_nonce_count_in_ascii_hex_only(nc: str) -> None:
    """A response computed correctly over a nonce count that is not 1-8 ASCII hex digits
    (int(nc, 16) would read the Arabic-Indic one) is refused."""
    auth = authenticator()
    (md5,) = [c for c in offered(auth) if c.scheme == "digest" and c.algorithm == "MD5"]

    def md5hex(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    def header(count: str) -> str:
        ha1, ha2 = md5hex('admin:wcs:s3:cr"et'), md5hex(f"PLAY:{URI}")
        response = md5hex(f"{ha1}:{md5.nonce}:{count}:ab:auth:{ha2}")
        return (
            f'Digest username="admin", realm="wcs", nonce="{md5.nonce}", uri="{URI}", '
            f'response="{response}", qop=auth, nc="{count}", cnonce="ab"'
        )

    assert auth.check("PLAY", URI, header("00000001")).ok
    assert auth.check("PLAY", URI, header(nc)).failed


def test_no_credentials_is_a_challenge_not_a_failure(log_events: list[LogEvent]) -> None:
    outcome = authenticator().check("DESCRIBE", URI, None)
    assert (outcome.ok, outcome.failed) == (False, False)
    assert log_events == []


def test_failures_are_logged_rate_limited(log_events: list[LogEvent]) -> None:
    clock = Clock()
    auth = authenticator(clock)
    basic = "Basic " + base64.b64encode(b"admin:guess").decode()
    for _ in range(100):
        assert auth.check("DESCRIBE", URI, basic, "10.0.0.9:4000").failed
        clock.advance(0.1)
    lines = [formatEvent(e) for e in log_events]
    assert len(lines) == 1 and "10.0.0.9:4000: wrong Basic credentials" in lines[0]
    clock.advance(60)
    lines = [formatEvent(e) for e in log_events]
    assert len(lines) == 2 and "[99 such events in the last 60 s]" in lines[1]
    auth.check("DESCRIBE", URI, basic, "10.0.0.8:4000")
    clock.advance(60)
    lines = [formatEvent(e) for e in log_events]
    assert len(lines) == 3 and "10.0.0.8:4000" in lines[2] and "[1 such events" in lines[2]
    assert "guess" not in " ".join(lines)


@pytest.mark.parametrize("index", range(3))
def test_a_password_only_authenticator_takes_any_user_name(index: int) -> None:
    """The publish password: whoever the client says it is, the password decides."""
    auth = RtspAuthenticator(None, "pub-secret", Clock())
    challenge = offered(auth)[index]
    for user in ("admin", "encoder-7", "\u00e9"):
        header = authorization_header(challenge, "ANNOUNCE", URI, user, "pub-secret", nc=1)
        assert auth.check("ANNOUNCE", URI, header).ok
        wrong = authorization_header(challenge, "ANNOUNCE", URI, user, "guess", nc=1)
        assert auth.check("ANNOUNCE", URI, wrong).failed
