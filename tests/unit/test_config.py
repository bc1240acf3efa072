"""Tests for wcs.config: the .properties parser, validation into Settings, and the shipped file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wcs.config import (
    MAX_FILE_SIZE,
    MAX_LINE_LENGTH,
    NAMING_VALUES,
    PROPERTY_FIELDS,
    ConfigError,
    Settings,
    load_settings,
    parse_properties,
    settings_from_properties,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "etc" / "flashphoner.properties"


# ---------------------------------------------------------------------------
# parse_properties
# ---------------------------------------------------------------------------


def test_separators_comments_and_blank_lines() -> None:
    text = (
        "# a comment\n"
        "! another comment\n"
        "\n"
        "   \t\n"
        "a=1\n"
        "b: 2\n"
        "c 3\n"
        "  d = 4  \n"
        "e\t:\t5\n"
        "f=\n"
        "g\n"
        "h==x\n"
        "i:=y\n"
    )
    assert parse_properties(text) == {
        "a": "1",
        "b": "2",
        "c": "3",
        "d": "4",
        "e": "5",
        "f": "",
        "g": "",
        "h": "=x",
        "i": "=y",
    }


def test_no_inline_comments() -> None:
    assert parse_properties("http.port=8081 # REST\n") == {"http.port": "8081 # REST"}


def test_later_duplicates_win() -> None:
    assert parse_properties("a=1\nb=2\na=3\n") == {"a": "3", "b": "2"}


def test_line_endings() -> None:
    assert parse_properties("a=1\r\nb=2\rc=3\nd=4") == {"a": "1", "b": "2", "c": "3", "d": "4"}


def test_continuation_lines() -> None:
    text = "list=one, \\\n    two, \\\n\tthree\nnext=x\n"
    assert parse_properties(text) == {"list": "one, two, three", "next": "x"}


def test_even_backslashes_do_not_continue() -> None:
    assert parse_properties("path=C:\\\\\nnext=x\n") == {"path": "C:\\", "next": "x"}


def test_continued_line_may_look_like_a_comment() -> None:
    # Only the first line of a logical line can be a comment (Java).
    assert parse_properties("a=x\\\n# not a comment\n") == {"a": "x# not a comment"}


def test_comment_lines_do_not_continue() -> None:
    assert parse_properties("# comment \\\na=1\n") == {"a": "1"}


def test_continuation_at_end_of_file() -> None:
    assert parse_properties("a=1\\") == {"a": "1"}


def test_escapes_in_values() -> None:
    text = "v=tab\\there\\nnl\\rcr\\fff\\\\bs\\u00e9\\u20AC\\q\n"
    assert parse_properties(text) == {"v": "tab\there\nnl\rcr\fff\\bs\u00e9\u20acq"}


def test_escapes_in_keys() -> None:
    text = "a\\=b=1\nc\\:d:2\ne\\ f 3\n\\#g=4\n"
    assert parse_properties(text) == {"a=b": "1", "c:d": "2", "e f": "3", "#g": "4"}


def test_trailing_whitespace_stripped_unless_escaped() -> None:
    assert parse_properties("a=x \t \nb=y\\ \nc=\\  \n") == {"a": "x", "b": "y ", "c": " "}


def test_leading_whitespace_of_value_escaped() -> None:
    assert parse_properties("a=\\  x\n") == {"a": "  x"}


def test_bom_is_ignored() -> None:
    assert parse_properties("\ufeffa=1\n") == {"a": "1"}


@pytest.mark.parametrize("bad", ["a=\\u12", "a=\\u12G4", "a=\\uXYZW"])
def test_malformed_unicode_escape(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"line 2: malformed \\uXXXX escape"):
        parse_properties("ok=1\n" + bad + "\n")


def test_line_length_limit() -> None:
    ok = "a=" + "x" * (MAX_LINE_LENGTH - 2)
    assert parse_properties(ok)["a"] == "x" * (MAX_LINE_LENGTH - 2)
    with pytest.raises(ConfigError, match="line 2: line longer than 65536 characters"):
        parse_properties("b=1\n" + ok + "x\n")


def test_line_length_limit_applies_to_continued_lines() -> None:
    part = "x" * 40_000
    with pytest.raises(ConfigError, match="line 1: line longer than 65536 characters"):
        parse_properties(f"a={part}\\\n{part}\\\n{part}\n")


def test_file_size_limit() -> None:
    with pytest.raises(ConfigError, match="configuration larger than 1048576 bytes"):
        parse_properties("#" * (MAX_FILE_SIZE + 1))


keys = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1, max_size=20
)
values = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


def java_escape(text: str, is_key: bool) -> str:
    """Write text the way java.util.Properties.store does (escape everything special)."""
    out = []
    for index, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[ch])
        elif ch in "=:#!":
            out.append("\\" + ch)
        elif ch == " " and (is_key or index == 0 or index == len(text) - 1):
            out.append("\\ ")
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else ch)
        else:
            out.append(ch)
    return "".join(out)


@given(st.dictionaries(keys, values, max_size=8))
def test_round_trip_of_java_style_output(props: dict[str, str]) -> None:
    text = "# generated\n" + "".join(
        f"{java_escape(k, True)}={java_escape(v, False)}\n" for k, v in props.items()
    )
    # Only unescaped trailing blanks are stripped; java_escape escapes the last space and
    # other blanks (tab, form feed) are escaped by name, so nothing is lost.
    assert parse_properties(text) == props


@given(st.text(max_size=300))
def test_parser_never_fails_except_with_config_error(text: str) -> None:
    try:
        result = parse_properties(text)
    except ConfigError as e:
        assert "malformed \\uXXXX escape" in str(e)
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


# ---------------------------------------------------------------------------
# settings_from_properties
# ---------------------------------------------------------------------------


def test_empty_properties_give_defaults() -> None:
    assert settings_from_properties({}) == (Settings(), [])


def test_defaults_match_the_spec() -> None:
    s = Settings()
    assert (s.http_port, s.https_port, s.ws_port, s.wss_port) == (8081, 8444, 8080, 8443)
    assert (s.rtmp_port, s.rtsp_port, s.ip) == (1935, 554, "0.0.0.0")
    assert (s.https_cert, s.https_key) == (None, None)
    assert (s.snapshot_taking_interval_ms, s.snapshot_taking_attempts) == (3000, 30)
    assert (s.snapshot_auto_enabled, s.snapshot_auto_dir) == (False, "snapshots")
    assert (s.snapshot_auto_naming, s.snapshot_auto_rate) == ("mediaSessionId", 30)
    assert s.snapshot_auto_retention == 20
    assert (s.disable_rest_auth, s.rest_auth_user, s.rest_auth_password) == (True, "admin", None)
    assert s.rest_access_control_allow_origin == "*"
    assert (s.max_picture_pixels, s.publish_idle_timeout_ms) == (8192 * 4352, 10_000)
    assert (s.max_connections, s.max_connections_per_ip) == (4000, 128)
    assert (s.ws_allowed_origins, s.rtsp_pull_allowed_networks) == ((), ())
    assert (s.rtsp_udp_max_pairs, s.rtsp_udp_port_range) == (256, None)
    assert (s.rest_hook_url, s.rest_hook_timeout_ms, s.rest_hook_fail_open) == (None, 3000, False)
    assert s.publish_password is None


def test_property_fields_cover_every_setting() -> None:
    assert sorted(PROPERTY_FIELDS.values()) == sorted(f.name for f in dataclasses.fields(Settings))
    assert PROPERTY_FIELDS["http.port"] == "http_port"
    assert PROPERTY_FIELDS["https.cert"] == "https_cert"
    assert PROPERTY_FIELDS["snapshot_auto_rate"] == "snapshot_auto_rate"


def test_every_value_parsed() -> None:
    props = {
        "http.port": "1",
        "https.port": "65535",
        "ws.port": "0",
        "wss.port": "",
        "rtmp.port": "+1936",
        "rtsp.port": "8554",
        "ip": "::1",
        "https.cert": "tls/cert.pem",
        "https.key": "/etc/wcs/key.pem",
        "snapshot_taking_interval_ms": "600000",
        "snapshot_taking_attempts": "1",
        "snapshot_auto_enabled": "YES",
        "snapshot_auto_dir": "/var/lib/wcs/snap shots",
        "snapshot_auto_naming": "streamName",
        "snapshot_auto_rate": "1",
        "snapshot_auto_retention": "0",
        "disable_rest_auth": "Off",
        "rest_auth_user": "operator",
        "rest_auth_password": "s3cret: with spaces",
        "rest_access_control_allow_origin": "https://example.com",
        "max_picture_pixels": "3840X2160",
        "publish_idle_timeout_ms": "0",
        "max_connections": "16",
        "max_connections_per_ip": "1",
        "ws_allowed_origins": "https://App.Example.com:8443, http://[::1]:8081 http://localhost",
        "rtsp_pull_allowed_networks": "192.168.1.7/16,10.1.2.3 ::1",
        "rtsp_udp_max_pairs": "2",
        "rtsp_udp_port_range": "30000-30003",
        "rest_hook_url": "http://127.0.0.1:8090/rest/",
        "rest_hook_timeout_ms": "100",
        "rest_hook_fail_open": "true",
        "publish_password": "pa ss",
    }
    settings, unknown = settings_from_properties(props)
    assert unknown == []
    assert settings == Settings(
        http_port=1,
        https_port=65535,
        ws_port=None,
        wss_port=None,
        rtmp_port=1936,
        rtsp_port=8554,
        ip="::1",
        https_cert="tls/cert.pem",
        https_key="/etc/wcs/key.pem",
        snapshot_taking_interval_ms=600000,
        snapshot_taking_attempts=1,
        snapshot_auto_enabled=True,
        snapshot_auto_dir="/var/lib/wcs/snap shots",
        snapshot_auto_naming="streamName",
        snapshot_auto_rate=1,
        snapshot_auto_retention=0,
        disable_rest_auth=False,
        rest_auth_user="operator",
        rest_auth_password="s3cret: with spaces",
        rest_access_control_allow_origin="https://example.com",
        max_picture_pixels=3840 * 2160,
        publish_idle_timeout_ms=0,
        max_connections=16,
        max_connections_per_ip=1,
        ws_allowed_origins=(
            "https://app.example.com:8443",
            "http://[::1]:8081",
            "http://localhost",
        ),
        rtsp_pull_allowed_networks=("192.168.0.0/16", "10.1.2.3/32", "::1/128"),
        rtsp_udp_max_pairs=2,
        rtsp_udp_port_range=(30000, 30003),
        rest_hook_url="http://127.0.0.1:8090/rest",
        rest_hook_timeout_ms=100,
        rest_hook_fail_open=True,
        publish_password="pa ss",
    )


@pytest.mark.parametrize(
    ("value", "pixels"), [("8192x4352", 8192 * 4352), ("35651584", 35651584), ("16x16", 256)]
)
def test_max_picture_pixels(value: str, pixels: int) -> None:
    assert settings_from_properties({"max_picture_pixels": value})[0].max_picture_pixels == pixels


def test_any_origin_wins_over_a_list() -> None:
    settings, _ = settings_from_properties({"ws_allowed_origins": "https://a.example, *"})
    assert settings.ws_allowed_origins == ("*",)


def test_unknown_keys_sorted_and_ignored() -> None:
    settings, unknown = settings_from_properties(
        {"z.key": "1", "http.port": "9000", "a_key": "x", "HTTP.PORT": "1"}
    )
    assert settings == Settings(http_port=9000)
    assert unknown == ["HTTP.PORT", "a_key", "z.key"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
        ("0", False),
    ],
)
def test_booleans(text: str, expected: bool) -> None:
    settings, _ = settings_from_properties({"snapshot_auto_enabled": text})
    assert settings.snapshot_auto_enabled is expected


@pytest.mark.parametrize("value", ["", "0"])
@pytest.mark.parametrize(
    "key", ["http.port", "https.port", "ws.port", "wss.port", "rtmp.port", "rtsp.port"]
)
def test_port_zero_or_empty_disables(key: str, value: str) -> None:
    settings, _ = settings_from_properties({key: value})
    assert getattr(settings, PROPERTY_FIELDS[key]) is None


@pytest.mark.parametrize(
    ("value", "normalised"),
    [("0.0.0.0", "0.0.0.0"), ("127.0.0.1", "127.0.0.1"), ("::", "::"), ("0:0::1", "::1")],
)
def test_ip_literals(value: str, normalised: str) -> None:
    assert settings_from_properties({"ip": value})[0].ip == normalised


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("mediaSessionId", "mediaSessionId"),
        ("streamName", "streamName"),
        ("MEDIASESSIONID", "mediaSessionId"),
        ("streamname", "streamName"),
    ],
)
def test_naming_is_case_insensitive_and_canonical(value: str, canonical: str) -> None:
    assert settings_from_properties({"snapshot_auto_naming": value})[0].snapshot_auto_naming == (
        canonical
    )
    assert canonical in NAMING_VALUES


def test_optional_strings_empty_means_unset() -> None:
    settings, _ = settings_from_properties(
        {"https.cert": "", "https.key": "", "rest_auth_password": ""}
    )
    assert (settings.https_cert, settings.https_key, settings.rest_auth_password) == (
        None,
        None,
        None,
    )


def test_values_from_other_sources_are_stripped() -> None:
    settings, _ = settings_from_properties({"http.port": " 9000\t", "ip": " ::1 "})
    assert (settings.http_port, settings.ip) == (9000, "::1")


def _bad_new_keys() -> list[tuple[str, str, str]]:
    return [
        ("max_picture_pixels", "8192\u00b2", r"bad value for max_picture_pixels: '8192\u00b2'"),
        ("max_picture_pixels", "15x16", r"expected a picture size WIDTHxHEIGHT .* at least 16x16"),
        ("max_picture_pixels", "1x", r"bad value for max_picture_pixels: '1x'"),
        ("publish_idle_timeout_ms", "-1", r"publish_idle_timeout_ms: '-1' \(expected an int"),
        ("publish_idle_timeout_ms", "\u00b2", r"bad value for publish_idle_timeout_ms"),
        ("max_connections", "15", r"bad value for max_connections: '15' \(expected an integer 16"),
        ("max_connections_per_ip", "0", r"bad value for max_connections_per_ip: '0'"),
        (
            "ws_allowed_origins",
            "example.com",
            r"ws_allowed_origins: 'example\.com' \(expected '\*'",
        ),
        ("ws_allowed_origins", "https://a.b/path", r"bad value for ws_allowed_origins"),
        ("ws_allowed_origins", "https://a\r\n.b", r"bad value for ws_allowed_origins"),
        ("rtsp_pull_allowed_networks", "10.0.0.0/33", r"rtsp_pull_allowed_networks: '10\.0\.0"),
        ("rtsp_pull_allowed_networks", "camera.local", r"expected networks in CIDR form"),
        ("rtsp_udp_max_pairs", "0", r"bad value for rtsp_udp_max_pairs: '0'"),
        ("rtsp_udp_port_range", "30000", r"expected a UDP port range LOW-HIGH"),
        ("rtsp_udp_port_range", "30000-30002", r"rtsp_udp_port_range: '30000-30002'"),
        ("rtsp_udp_port_range", "80-1000", r"within 1024\.\.65535"),
        ("rtsp_udp_port_range", "40000-30000", r"bad value for rtsp_udp_port_range"),
        ("rtsp_udp_port_range", "3\u00b2000-40000", r"bad value for rtsp_udp_port_range"),
        ("rest_hook_url", "ftp://x", r"rest_hook_url: 'ftp://x' \(expected an http:// or https://"),
        ("rest_hook_url", "http://h/p?q=1", r"bad value for rest_hook_url: 'http://h/p\?q=1'"),
        ("rest_hook_url", "http://h/a b", r"bad value for rest_hook_url"),
        ("rest_hook_timeout_ms", "99", r"rest_hook_timeout_ms: '99' \(expected an integer 100"),
        ("rest_hook_fail_open", "maybe", r"bad value for rest_hook_fail_open"),
    ]


@pytest.mark.parametrize(("key", "value", "message"), _bad_new_keys())
def test_bad_limit_and_door_values(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_properties({key: value})


PORT_EXPECTED = r"\(expected a port number 0\.\.65535; 0 or empty disables\)"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("http.port", "65536", r"bad value for http\.port: '65536' " + PORT_EXPECTED),
        ("rtsp.port", "-1", r"bad value for rtsp\.port: '-1' " + PORT_EXPECTED),
        ("ws.port", "80a", r"bad value for ws\.port: '80a' " + PORT_EXPECTED),
        ("wss.port", "8_443", r"bad value for wss\.port: '8_443' " + PORT_EXPECTED),
        ("rtmp.port", "\uff11\uff19", r"bad value for rtmp\.port: '\uff11\uff19' " + PORT_EXPECTED),
        ("https.port", "9" * 5000, r"bad value for https\.port: '9999"),
        (
            "ip",
            "localhost",
            r"bad value for ip: 'localhost' \(expected an IPv4 or IPv6 address such as 0\.0\.0\.0",
        ),
        ("ip", "", r"bad value for ip: '' \(expected an IPv4 or IPv6 address"),
        ("ip", "256.1.1.1", r"bad value for ip: '256\.1\.1\.1'"),
        (
            "snapshot_auto_rate",
            "abc",
            r"bad value for snapshot_auto_rate: 'abc' \(expected an integer >= 1\)",
        ),
        (
            "snapshot_auto_rate",
            "0",
            r"bad value for snapshot_auto_rate: '0' \(expected an integer >= 1\)",
        ),
        ("snapshot_auto_rate", "", r"bad value for snapshot_auto_rate: '' \(expected an integer"),
        (
            "snapshot_auto_rate",
            "2147483648",
            r"bad value for snapshot_auto_rate: '2147483648' \(expected an integer >= 1\)",
        ),
        ("snapshot_auto_rate", "1.5", r"bad value for snapshot_auto_rate: '1\.5'"),
        (
            "snapshot_auto_retention",
            "-1",
            r"bad value for snapshot_auto_retention: '-1' \(expected an integer >= 0\)",
        ),
        (
            "snapshot_taking_interval_ms",
            "0",
            r"bad value for snapshot_taking_interval_ms: '0' \(expected an integer 1\.\.600000\)",
        ),
        (
            "snapshot_taking_interval_ms",
            "600001",
            r"bad value for snapshot_taking_interval_ms: '600001' \(expected an integer 1\.\.6",
        ),
        (
            "snapshot_taking_attempts",
            "10001",
            r"bad value for snapshot_taking_attempts: '10001' \(expected an integer 1\.\.10000\)",
        ),
        (
            "snapshot_taking_attempts",
            "0",
            r"bad value for snapshot_taking_attempts: '0' \(expected an integer 1\.\.10000\)",
        ),
        (
            "snapshot_auto_enabled",
            "maybe",
            r"bad value for snapshot_auto_enabled: 'maybe' \(expected true or false",
        ),
        ("disable_rest_auth", "", r"bad value for disable_rest_auth: '' \(expected true or false"),
        (
            "snapshot_auto_naming",
            "name",
            r"bad value for snapshot_auto_naming: 'name' \(expected mediaSessionId or streamName\)",
        ),
        (
            "snapshot_auto_naming",
            "",
            r"bad value for snapshot_auto_naming: '' \(expected mediaSessionId or streamName\)",
        ),
        (
            "snapshot_auto_dir",
            "",
            r"bad value for snapshot_auto_dir: '' \(expected a non-empty path",
        ),
        ("snapshot_auto_dir", "a\x00b", r"bad value for snapshot_auto_dir: 'a\\x00b'"),
        ("https.cert", "c\nd", r"bad value for https\.cert: 'c\\nd' \(expected a file path"),
        (
            "rest_auth_user",
            "a:b",
            r"bad value for rest_auth_user: 'a:b' \(expected a non-empty user name without ':'",
        ),
        ("rest_auth_user", "", r"bad value for rest_auth_user: ''"),
        (
            "rest_access_control_allow_origin",
            "*\r\nSet-Cookie: x",
            r"bad value for rest_access_control_allow_origin: '\*\\r\\nSet-Cookie: x'",
        ),
        (
            "rest_access_control_allow_origin",
            "",
            r"bad value for rest_access_control_allow_origin: '' \(expected '\*' or an origin",
        ),
    ],
)
def test_bad_values_name_key_and_value(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_properties({key: value})


def test_bad_password_is_not_echoed() -> None:
    with pytest.raises(ConfigError, match=r"bad value for rest_auth_password: \(hidden\)") as info:
        settings_from_properties({"rest_auth_password": "top\nsecret"})
    assert "secret" not in str(info.value)


def test_password_not_in_repr() -> None:
    settings, _ = settings_from_properties(
        {"rest_auth_password": "hunter2", "publish_password": "swordfish"}
    )
    assert (settings.rest_auth_password, settings.publish_password) == ("hunter2", "swordfish")
    assert "hunter2" not in repr(settings)
    assert "swordfish" not in repr(settings)


def test_bad_publish_password_is_not_echoed() -> None:
    with pytest.raises(ConfigError, match=r"bad value for publish_password: \(hidden\)") as info:
        settings_from_properties({"publish_password": "hunt\x00er2"})
    assert "hunt" not in str(info.value)


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"https.cert": "c.pem"}, "https.cert is set but https.key is not: set both or neither"),
        ({"https.key": "k.pem"}, "https.key is set but https.cert is not: set both or neither"),
        (
            {"https.cert": "c.pem", "https.key": ""},
            "https.cert is set but https.key is not: set both or neither",
        ),
    ],
)
def test_cert_and_key_come_in_pairs(props: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_properties(props)


def test_rest_auth_needs_a_password() -> None:
    with pytest.raises(
        ConfigError, match="rest_auth_password must be set when disable_rest_auth is false"
    ):
        settings_from_properties({"disable_rest_auth": "false"})
    with pytest.raises(ConfigError, match="rest_auth_password must be set"):
        settings_from_properties({"disable_rest_auth": "false", "rest_auth_password": ""})
    settings, _ = settings_from_properties(
        {"disable_rest_auth": "false", "rest_auth_password": "p"}
    )
    assert (settings.disable_rest_auth, settings.rest_auth_password) == (False, "p")


def test_settings_are_frozen_and_replace_does_not_validate() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.http_port = 1  # type: ignore[misc]
    # Tests ask the OS for a free port with 0; replace() leaves that to the caller.
    assert dataclasses.replace(settings, http_port=0).http_port == 0


# ---------------------------------------------------------------------------
# load_settings and the shipped file
# ---------------------------------------------------------------------------


def test_shipped_file_parses_to_defaults() -> None:
    props = parse_properties(SHIPPED.read_text(encoding="utf-8"))
    assert sorted(props) == sorted(PROPERTY_FIELDS)
    assert load_settings(str(SHIPPED)) == (Settings(), [])


def test_shipped_file_documents_every_key() -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for key in PROPERTY_FIELDS:
        index = next(i for i, line in enumerate(lines) if line.startswith(key + "="))
        comment_block = []
        for line in reversed(lines[:index]):
            if not line.startswith("#"):
                break
            comment_block.append(line)
        assert comment_block, f"{key} has no comment"


def test_docs_list_every_key() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for key in PROPERTY_FIELDS:
        assert f"| `{key}` |" in doc, key


def test_load_settings_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "wcs.properties"
    path.write_text("http.port=9000\nsnapshot_auto_naming=streamName\nfoo=bar\n", encoding="utf-8")
    settings, unknown = load_settings(str(path))
    assert settings == Settings(http_port=9000, snapshot_auto_naming="streamName")
    assert unknown == ["foo"]


def test_load_settings_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.properties"
    path.write_bytes(b"")
    assert load_settings(str(path)) == (Settings(), [])


def test_load_settings_utf8_with_bom_and_latin1(tmp_path: Path) -> None:
    utf8 = tmp_path / "utf8.properties"
    utf8.write_bytes("\ufeffsnapshot_auto_dir=caf\u00e9\n".encode())
    assert load_settings(str(utf8))[0].snapshot_auto_dir == "caf\u00e9"
    latin1 = tmp_path / "latin1.properties"
    latin1.write_bytes("snapshot_auto_dir=caf\u00e9\n".encode("latin-1"))
    assert load_settings(str(latin1))[0].snapshot_auto_dir == "caf\u00e9"


def test_load_settings_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.properties"
    with pytest.raises(
        ConfigError,
        match=rf"cannot read configuration file '{path}': No such file or directory",
    ):
        load_settings(str(path))


def test_load_settings_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"cannot read configuration file '{tmp_path}': Is a"):
        load_settings(str(tmp_path))


def test_load_settings_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.properties"
    path.write_bytes(b"#" * (MAX_FILE_SIZE + 1))
    with pytest.raises(ConfigError, match=rf"{path}: configuration larger than 1048576 bytes"):
        load_settings(str(path))


def test_load_settings_prefixes_path_to_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.properties"
    path.write_text("# ok\nsnapshot_auto_rate = abc\n", encoding="utf-8")
    with pytest.raises(
        ConfigError,
        match=rf"^{path}: bad value for snapshot_auto_rate: 'abc' \(expected an integer >= 1\)$",
    ):
        load_settings(str(path))
