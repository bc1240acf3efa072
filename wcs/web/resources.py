"""`/demo/...`: the WebSDK demo pages (wcs/web/demo) and the official SDK bundle from node_modules.

The SDK is never copied into the repository: `make node-deps` installs the pinned npm package.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from twisted.logger import Logger
from twisted.web import http, server, static
from twisted.web.resource import IResource, Resource

from wcs.config import Settings

log = Logger(namespace="wcs.web")

DEMO_DIR = Path(__file__).resolve().parent / "demo"
# The checkout that holds the `wcs` package: `make node-deps` runs `npm ci` there.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
WEBSDK_PACKAGE = Path("node_modules") / "@flashphoner" / "websdk"
WEBSDK_ENV = "WCS_WEBSDK_DIR"
SDK_SEGMENT = b"sdk"
# Only the SDK's prebuilt browser bundles at the package top level (flashphoner.js,
# flashphoner-webrtc-only.min.js, ...), never its sources, examples or package.json.
SDK_BUNDLE = re.compile(r"flashphoner(-[a-z0-9]+)*(\.min)?\.js")
DEMO_FILE = re.compile(r"[a-z0-9][a-z0-9_-]*\.(html|js|css)")
SDK_MISSING = (
    "The Flashphoner WebSDK (npm @flashphoner/websdk) is not installed: run `make node-deps` "
    f"(npm ci) in the wcs checkout, or set {WEBSDK_ENV} to the package's folder."
)


def websdk_dir() -> Path | None:
    """The installed @flashphoner/websdk package folder, or None.

    Looked up on each use (a few stat calls) so that installing the SDK needs no restart. Order:
    $WCS_WEBSDK_DIR, the source checkout's node_modules, then the working directory's (twistd's
    --rundir), so a server run from elsewhere still finds the SDK of its own checkout.
    """
    candidates: list[Path] = []
    env = os.environ.get(WEBSDK_ENV)
    if env:
        candidates.append(Path(env))
    candidates += [SOURCE_ROOT / WEBSDK_PACKAGE, Path.cwd() / WEBSDK_PACKAGE]
    for candidate in candidates:
        if (candidate / "package.json").is_file():
            return candidate
    return None


def websdk_version(package: Path) -> str | None:
    try:
        version = json.loads((package / "package.json").read_text("utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


def demo_files() -> dict[str, Path]:
    """Files of the demo folder by name: flat, plain names, .html/.js/.css only."""
    if not DEMO_DIR.is_dir():
        return {}
    return {p.name: p for p in DEMO_DIR.iterdir() if p.is_file() and DEMO_FILE.fullmatch(p.name)}


def _page_title(path: Path) -> str:
    try:
        m = re.search(r"<title>(.*?)</title>", path.read_text("utf-8"), re.S | re.I)
    except OSError:
        return path.stem
    return html.unescape(m.group(1).strip()) if m else path.stem


class TextResource(Resource):
    """A plain-text answer with a status code (a 404 that says why, never Twisted's HTML page)."""

    isLeaf = True

    def __init__(self, code: int, text: str) -> None:
        super().__init__()
        self.code = code
        self.text = text

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return (self.text + "\n").encode("utf-8")


def not_found() -> TextResource:
    return TextResource(http.NOT_FOUND, "Not found.")


class WebSdkResource(Resource):
    """`/demo/sdk/<bundle>.js`: a prebuilt SDK bundle, or a 404 that says how to install it."""

    def getChild(self, path: bytes, request: server.Request) -> IResource:
        name = path.decode("ascii", "replace")
        if not SDK_BUNDLE.fullmatch(name):
            return not_found()
        package = websdk_dir()
        if package is None:
            return TextResource(http.NOT_FOUND, SDK_MISSING)
        bundle = package / name
        if not bundle.is_file():
            return not_found()
        return _static(bundle)

    def render(self, request: server.Request) -> bytes:
        return not_found().render(request)


def _static(path: Path) -> static.File:
    f = static.File(str(path), defaultType="application/octet-stream")
    f.childNotFound = not_found()  # type: ignore[assignment]  # any IResource will do
    return f


class DemoResource(Resource):
    """`/demo/`: an index of the pages, the pages themselves and the SDK under `/demo/sdk/`."""

    def __init__(
        self, settings: Settings, bound_ports: Callable[[], dict[str, int]] | None = None
    ) -> None:
        super().__init__()
        self.settings = settings
        self.bound_ports = bound_ports
        self.sdk = WebSdkResource()

    def getChild(self, path: bytes, request: server.Request) -> IResource:
        if path == b"":
            return DemoIndex(self.settings, self.bound_ports)
        if path == SDK_SEGMENT:
            return self.sdk
        # Only names listed from the folder itself: no `..`, no other folder, no hidden file.
        found = demo_files().get(path.decode("utf-8", "replace"))
        return _static(found) if found is not None else not_found()

    def render(self, request: server.Request) -> bytes:
        # `/demo` -> `/demo/`, so relative links in the pages resolve under /demo/.
        request.redirect(b"/demo/")
        return b""


class DemoIndex(Resource):
    """The list of demo pages; each link carries `?urlServer=` of this server's WebSocket port."""

    isLeaf = True

    def __init__(
        self, settings: Settings, bound_ports: Callable[[], dict[str, int]] | None = None
    ) -> None:
        super().__init__()
        self.settings = settings
        self.bound_ports = bound_ports

    def _url_server(self, request: server.Request) -> str | None:
        secure = request.isSecure()
        if self.bound_ports is not None:
            port: int | None = self.bound_ports().get("wss" if secure else "ws")
        else:
            port = self.settings.wss_port if secure else self.settings.ws_port
        if not port:
            return None
        host = request.getRequestHostname().decode("ascii", "replace")
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return f"{'wss' if secure else 'ws'}://{host}:{port}"

    def render_GET(self, request: server.Request) -> bytes:
        url_server = self._url_server(request)
        query = f"?urlServer={quote(url_server, safe='')}" if url_server else ""
        items = "".join(
            f'<li><a href="{html.escape(name + query)}">{html.escape(_page_title(path))}</a></li>\n'
            for name, path in sorted(demo_files().items())
            if name.endswith(".html")
        )
        package = websdk_dir()
        if package is None:
            sdk = f'<p class="error">{html.escape(SDK_MISSING)}</p>'
        else:
            version = websdk_version(package) or "unknown version"
            sdk = f"<p>Flashphoner WebSDK {html.escape(version)} is installed.</p>"
        ws = html.escape(url_server or "no WebSocket port is configured")
        body = (
            '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
            '<title>wcs demo pages</title><link rel="stylesheet" href="demo.css"></head>\n'
            "<body>\n<h1>wcs demo pages</h1>\n"
            f"{sdk}\n<p>WebSocket API: <code>{ws}</code></p>\n"
            f"<ul>\n{items}</ul>\n</body>\n</html>\n"
        )
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return body.encode("utf-8")


def build_demo(
    settings: Settings, bound_ports: Callable[[], dict[str, int]] | None = None
) -> DemoResource:
    """The `/demo` tree; `build_site` puts it beside `/rest-api`."""
    return DemoResource(settings, bound_ports)
