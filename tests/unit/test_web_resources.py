"""`/demo/...`: the demo pages and the WebSDK bundle are served, a missing SDK is explained, and no
path leaves the demo folder or the SDK package. Routing goes through the real Site from build_site
(raw HTTP over a StringTransport); file bodies through twisted.web's DummyRequest, which pumps the
static file producer without a reactor. Also wcs.web's small parsers: the Origin rule and client
JSON."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import unquote

import pytest
from twisted.web import server
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from tests.unit.rest_client import Api, Response
from wcs.config import Settings
from wcs.web import jsonin, resources
from wcs.web.origin import Origin, OriginPolicy, host_of, parse_origin
from wcs.web.resources import SDK_MISSING, WEBSDK_ENV, websdk_dir

PAGES = ("two-way-streaming.html", "stream-snapshot.html")
SDK_JS = b"/* fake WebSDK bundle */ window.Flashphoner = {};\n"


def get(api: Api, path: str, host: str = "localhost:8081") -> Response:
    conn = api.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1"))
    response = conn.response()
    assert response is not None, f"no complete response to {path}"
    return response


@dataclasses.dataclass
class Rendered:
    code: int
    content_type: str
    body: bytes


def render(root: IResource, path: str) -> Rendered:
    """GET `path` (already split and unquoted, as twisted.web does) through the resource tree."""
    request = DummyRequest([unquote(seg).encode() for seg in path.lstrip("/").split("/")])
    resource = getChildForRequest(root, request)
    out = resource.render(request)
    if out is not server.NOT_DONE_YET:
        assert isinstance(out, bytes)
        request.write(out)
        request.finish()
    assert request.finished, f"{path}: the response never finished"
    ctype = request.responseHeaders.getRawHeaders(b"content-type", [b""])[0].decode()
    return Rendered(request.responseCode or 200, ctype, b"".join(request.written))


@pytest.fixture
def no_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No WebSDK anywhere the server looks: env unset, an empty checkout, an empty cwd."""
    monkeypatch.delenv(WEBSDK_ENV, raising=False)
    monkeypatch.setattr(resources, "SOURCE_ROOT", tmp_path / "checkout")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fake_sdk(folder: Path, version: str = "9.9.9") -> Path:
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(
        f'{{"name": "@flashphoner/websdk", "version": "{version}"}}'
    )
    (folder / "flashphoner.js").write_bytes(SDK_JS)
    (folder / "flashphoner-webrtc-only.min.js").write_bytes(b"/* min */")
    (folder / "src").mkdir()
    (folder / "src" / "flashphoner-core.js").write_bytes(b"/* source */")
    return folder


@pytest.fixture
def sdk(no_sdk: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = fake_sdk(no_sdk / "elsewhere" / "websdk")
    monkeypatch.setenv(WEBSDK_ENV, str(package))
    return package


# -- the index --------------------------------------------------------------------------------
def test_demo_redirects_to_the_folder() -> None:
    response = get(Api(), "/demo")
    assert response.status == 302
    assert response.header("location") == "/demo/"


def test_index_links_every_page_with_this_servers_ws_port(sdk: Path) -> None:
    api = Api(dataclasses.replace(Settings(), ws_port=18080))
    response = get(api, "/demo/", host="cam.example:8081")
    assert response.status == 200
    assert response.header("content-type") == "text/html; charset=utf-8"
    body = response.body.decode()
    for page in PAGES:
        assert f'href="{page}?urlServer=ws%3A%2F%2Fcam.example%3A18080"' in body
    assert ">Two Way Streaming</a>" in body
    assert ">Stream Snapshot</a>" in body
    assert ">Stream Wall</a>" in body
    assert "WebSDK 9.9.9 is installed" in body


def test_index_links_the_ws_port_actually_bound(sdk: Path) -> None:
    """With port 0 (--ephemeral-ports) the configured port is not the one to link."""
    index = resources.DemoIndex(Settings(), bound_ports=lambda: {"http": 1, "ws": 43210})
    request = DummyRequest([b""])
    request.isSecure = lambda: False  # type: ignore[attr-defined]
    body = index.render_GET(request).decode()  # type: ignore[arg-type]
    assert "?urlServer=ws%3A%2F%2Fdummy%3A43210" in body
    assert "%3A8080" not in body


def test_index_without_ws_port_links_plain_pages(sdk: Path) -> None:
    api = Api(dataclasses.replace(Settings(), ws_port=None))
    body = get(api, "/demo/").body.decode()
    assert 'href="two-way-streaming.html"' in body
    assert "no WebSocket port is configured" in body


def test_index_escapes_a_hostile_host_header(sdk: Path) -> None:
    body = get(Api(), "/demo/", host='x"><script>alert(1)</script>').body.decode()
    assert "<script>" not in body


# -- pages and the SDK --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("two-way-streaming.html", "text/html"),
        ("two-way-streaming.js", "javascript"),
        ("stream-snapshot.html", "text/html"),
        ("stream-snapshot.js", "javascript"),
        ("common.js", "javascript"),
        ("demo.css", "text/css"),
        ("wall.html", "text/html"),
        ("wall.js", "javascript"),
        ("wall.css", "text/css"),
    ],
)
def test_demo_files_are_served_as_on_disk(name: str, ctype: str, sdk: Path) -> None:
    got = render(Api().site.resource, f"/demo/{name}")
    assert got.code == 200
    assert ctype in got.content_type
    assert got.body == (resources.DEMO_DIR / name).read_bytes()


@pytest.mark.parametrize("page", PAGES)
def test_pages_load_the_sdk_from_the_server_not_a_copy(page: str) -> None:
    text = (resources.DEMO_DIR / page).read_text()
    assert '<script src="sdk/flashphoner.js"></script>' in text
    assert 'id="sdkError"' in text
    # The SDK itself is never in the repository.
    assert all(p.stat().st_size < 20_000 for p in resources.DEMO_DIR.iterdir())


def test_sdk_bundle_is_served_from_the_package(sdk: Path) -> None:
    root = Api().site.resource
    got = render(root, "/demo/sdk/flashphoner.js")
    assert got.code == 200
    assert "javascript" in got.content_type
    assert got.body == SDK_JS
    assert render(root, "/demo/sdk/flashphoner-webrtc-only.min.js").body == b"/* min */"


def test_sdk_found_in_the_source_checkout_whatever_the_cwd(
    no_sdk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = no_sdk / "checkout"
    fake_sdk(checkout / "node_modules" / "@flashphoner" / "websdk", version="1.2.3")
    monkeypatch.chdir(no_sdk / "checkout" / "node_modules")  # a --rundir elsewhere
    assert websdk_dir() == checkout / "node_modules" / "@flashphoner" / "websdk"
    assert render(Api().site.resource, "/demo/sdk/flashphoner.js").body == SDK_JS


def test_sdk_lookup_order(no_sdk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_cwd = fake_sdk(no_sdk / "node_modules" / "@flashphoner" / "websdk")
    assert websdk_dir() == in_cwd
    in_checkout = fake_sdk(no_sdk / "checkout" / "node_modules" / "@flashphoner" / "websdk")
    assert websdk_dir() == in_checkout
    monkeypatch.setenv(WEBSDK_ENV, str(no_sdk / "missing"))
    assert websdk_dir() == in_checkout, "a wrong WCS_WEBSDK_DIR falls through"
    from_env = fake_sdk(no_sdk / "env")
    monkeypatch.setenv(WEBSDK_ENV, str(from_env))
    assert websdk_dir() == from_env


def test_the_real_checkout_resolves_to_its_node_modules() -> None:
    assert Path(resources.__file__) == resources.SOURCE_ROOT / "wcs" / "web" / "resources.py"


@pytest.mark.parametrize(
    "path",
    [
        "/demo/sdk/package.json",
        "/demo/sdk/src",
        "/demo/sdk/src/flashphoner-core.js",
        "/demo/sdk/flashphoner.js/x",
        "/demo/sdk/",
        "/demo/sdk",
        "/demo/sdk/other.js",
    ],
)
def test_only_the_sdk_bundles_are_served(path: str, sdk: Path) -> None:
    got = render(Api().site.resource, path)
    assert got.code == 404
    assert b"source" not in got.body and b"websdk" not in got.body


# -- a missing SDK --------------------------------------------------------------------------------
def test_missing_sdk_is_a_404_that_says_how_to_install(no_sdk: Path) -> None:
    assert websdk_dir() is None
    response = get(Api(), "/demo/sdk/flashphoner.js")
    assert response.status == 404
    assert response.header("content-type") == "text/plain; charset=utf-8"
    assert response.body.decode().strip() == SDK_MISSING
    assert "make node-deps" in SDK_MISSING


def test_pages_still_load_without_the_sdk(no_sdk: Path) -> None:
    root = Api().site.resource
    for page in PAGES:
        assert render(root, f"/demo/{page}").code == 200
    index = get(Api(), "/demo/").body.decode()
    assert "is not installed" in index and "make node-deps" in index


def test_the_wall_needs_no_sdk(no_sdk: Path) -> None:
    """The Stream Wall uses only the REST API's image URLs: no SDK bundle, no WebSocket."""
    page = (resources.DEMO_DIR / "wall.html").read_text()
    assert "sdk/" not in page
    assert '<script src="wall.js"></script>' in page
    assert render(Api().site.resource, "/demo/wall.html").code == 200


def test_pages_explain_a_missing_sdk() -> None:
    common = (resources.DEMO_DIR / "common.js").read_text()
    assert 'typeof Flashphoner !== "undefined"' in common
    assert "WebSDK is not installed" in common
    for script in ("two-way-streaming.js", "stream-snapshot.js"):
        assert "if (!Demo.sdkLoaded())" in (resources.DEMO_DIR / script).read_text()


# -- nothing outside the demo folder ---------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/demo/../rest-api",
        "/demo/%2e%2e/resources.py",
        "/demo/..%2fresources.py",
        "/demo/..%2f..%2fconfig.py",
        "/demo/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/demo/%2fetc%2fpasswd",
        "/demo/./two-way-streaming.html/..",
        "/demo/sdk/..%2fpackage.json",
        "/demo/sdk/..%2f..%2f..%2f..%2fpyproject.toml",
        "/demo/sdk/%2e%2e",
        "/demo/two-way-streaming.html%00.py",
        "/demo/__init__.py",
    ],
)
def test_no_path_leaves_the_demo_folder(path: str, sdk: Path) -> None:
    response = get(Api(), path)
    assert response.status == 404
    assert b"import" not in response.body and b"[project]" not in response.body
    assert b"root:" not in response.body


def test_only_plain_demo_files_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "page.html").write_text("<title>A page</title>")
    (tmp_path / ".hidden.html").write_text("hidden")
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.html").write_text("inner")
    monkeypatch.setattr(resources, "DEMO_DIR", tmp_path)
    assert set(resources.demo_files()) == {"page.html"}
    root = Api().site.resource
    assert render(root, "/demo/page.html").code == 200
    for name in (".hidden.html", "notes.txt", "sub", "sub/inner.html"):
        assert render(root, f"/demo/{name}").code == 404, name


# -- wcs.web.origin: the one Origin rule of WebSocket upgrades and state-changing REST ----------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://App.Example.com", Origin("https", "app.example.com", 443)),
        ("https://app.example.com:443", Origin("https", "app.example.com", 443)),
        ("http://127.0.0.1:8081", Origin("http", "127.0.0.1", 8081)),
        ("http://[::1]:8081", Origin("http", "::1", 8081)),
        ("http://example.com.", Origin("http", "example.com", 80)),
        (b"http://a.example", Origin("http", "a.example", 80)),
        ("null", None),
        ("https://a.example/", None),  # an origin has no path
        ("https://a.example:99999", None),
        ("https://a.example:0", None),
        ("https://a.example:²", None),  # ASCII digits only
        ("https://a.example:8²", None),
        ("https://user@a.example", None),
        ("http://.:1", None),  # found by the fuzz target `origin`: an empty host
        ("http://[]", None),
        ("", None),
        ("a.example", None),
    ],
)
def test_parse_origin(value: str | bytes, expected: Origin | None) -> None:
    assert parse_origin(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost:8081", "localhost"),
        ("LOCALHOST", "localhost"),
        ("[::1]:8080", "::1"),
        ("10.0.0.1", "10.0.0.1"),
        ("a.example:²", None),
        ("a.example:123456", None),
        ("a b", None),
        (".", None),
        ("[]:80", None),
        (None, None),
        ("", None),
    ],
)
def test_host_of(value: str | None, expected: str | None) -> None:
    assert host_of(value) == expected


@pytest.mark.parametrize(
    ("allowed", "cors", "origin", "host", "ok"),
    [
        ((), "*", None, "a.example", True),  # not a browser page
        ((), "*", "http://a.example:8081", "a.example:8080", True),  # same host, other port
        ((), "*", "https://a.example", "a.example:8080", True),  # and other scheme
        ((), "*", "https://b.example", "a.example:8080", False),
        ((), "*", "https://a.example.b.example", "a.example", False),
        ((), "*", "http://a.example", None, False),  # no Host: nothing to be the same as
        ((), "*", "null", "a.example", False),
        ((), "https://app.example", "https://app.example:443", "a.example", True),
        ((), "https://app.example", "http://app.example", "a.example", False),
        (("*",), "*", "https://anything.example", "a.example", True),
        (("*",), "*", "null", "a.example", True),
        (("https://app.example:8443",), "*", "https://app.example:8443", "a.example", True),
        (("https://app.example:8443",), "*", "https://app.example", "a.example", False),
        (("https://app.example:8443",), "*", "http://a.example", "a.example", False),  # listed only
        (("http://app.example:80",), "*", "http://app.example", "x", True),
    ],
)
def test_origin_policy(
    allowed: tuple[str, ...], cors: str, origin: str | None, host: str | None, ok: bool
) -> None:
    refusal = OriginPolicy(allowed, cors).refusal(origin, host)
    assert (refusal is None) == ok
    if not ok:
        assert refusal is not None and "not an allowed origin" in refusal


# -- wcs.web.jsonin: client JSON with bounded nesting -------------------------------------------
@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('{"a": "[[[[{{{{"}', 1),  # brackets in strings do not count
        ('["\\"[[["]', 1),  # nor after an escaped quote
        ('"unterminated [[[', 0),
        ("[[[[", 4),  # invalid JSON: never less than a parser would reach
        ('"\\' * 50_000, 0),  # linear, not a regex blow-up
    ],
)
def test_nesting_depth(text: str, depth: int) -> None:
    assert jsonin.nesting_depth(text) == depth


def test_loads_bounds_nesting_and_names_every_failure() -> None:
    assert jsonin.loads(b'{"a": [1]}') == {"a": [1]}
    assert jsonin.loads("[" * 64 + "]" * 64) is not None
    assert jsonin.loads('{"a": "\\u00e9"}'.encode("utf-16")) == {"a": "é"}
    for bad, reason in (
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
        ("[" * 200_000, "nested deeper than 64 levels"),
        ("[1" + "0" * 5000 + "]", "Exceeds the limit"),
        (b"\xff\xfe\xfd", "undecodable"),
        ("{", "Expecting property name"),
    ):
        with pytest.raises(jsonin.JsonInputError, match=reason):
            jsonin.loads(bad)
