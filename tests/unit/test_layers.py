"""Layering: wcs/media/ is the bottom layer, and none of its modules imports a layer above it."""

from __future__ import annotations

import ast
from pathlib import Path

import wcs.media

MEDIA_DIR = Path(wcs.media.__file__).parent
# Everything built on top of the media layer (each one with its submodules).
UPPER_LAYERS = (
    "wcs.streams",
    "wcs.snapshot",
    "wcs.rtmp",
    "wcs.rtsp",
    "wcs.webrtc",
    "wcs.rest",
    "wcs.service",
    "wcs.web",
)


def imported_modules(source: str, package: str) -> list[str]:
    """Every module an import statement anywhere in `source` (also inside a function or an
    `if TYPE_CHECKING:` block) may load, relative imports resolved against `package`.

    `from X import y` counts as both X and X.y, since y may be a submodule (`from wcs import
    streams`)."""
    modules: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            modules.append(base)
            modules.extend(f"{base}.{alias.name}" for alias in node.names)
    return modules


def upward_imports(source: str, package: str) -> list[str]:
    """The imports in `source` of a layer above wcs.media, sorted."""
    return sorted(
        {
            module
            for module in imported_modules(source, package)
            for layer in UPPER_LAYERS
            if module == layer or module.startswith(layer + ".")
        }
    )


def media_modules() -> dict[str, Path]:
    """Dotted name -> path of every module of the wcs.media package."""
    modules = {}
    for path in sorted(MEDIA_DIR.rglob("*.py")):
        parts = ["wcs", "media", *path.relative_to(MEDIA_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def test_media_modules_import_no_upper_layer() -> None:
    modules = media_modules()
    # Not vacuous: the files this test is about were found.
    assert {"wcs.media", "wcs.media.units", "wcs.media.h264", "wcs.media.decoder"} <= set(modules)
    violations = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = upward_imports(path.read_text(encoding="utf-8"), package)
        if found:
            violations[name] = found
    assert violations == {}


def test_checker_flags_upward_imports() -> None:
    source = """
import os
import wcs.streams
import wcs.webrtc.peer as peer
from wcs.rtmp.protocol import RTMPServerProtocol
from wcs import snapshot, media
from ..rest import resources
from .. import service
from ..web.channel import GuardedSite
from . import h264
from .units import VideoParams
from wcs.media.units import MediaUnit

def later():
    from wcs.rtsp import server

if TYPE_CHECKING:
    from wcs.streams import Stream
"""
    assert upward_imports(source, "wcs.media") == [
        "wcs.rest",
        "wcs.rest.resources",
        "wcs.rtmp.protocol",
        "wcs.rtmp.protocol.RTMPServerProtocol",
        "wcs.rtsp",
        "wcs.rtsp.server",
        "wcs.service",
        "wcs.snapshot",
        "wcs.streams",
        "wcs.streams.Stream",
        "wcs.web.channel",
        "wcs.web.channel.GuardedSite",
        "wcs.webrtc.peer",
    ]


def test_checker_allows_the_media_layer_and_lookalike_names() -> None:
    source = """
import wcs
import wcs.media.h264
import wcs.websocket_free
from wcs.media import units
from wcs.config import Settings
from . import gop
from .decoder import open_codec
from ..guard import describe
"""
    assert upward_imports(source, "wcs.media") == []
    # A module of a subpackage resolves `..` to wcs.media, not to wcs.
    assert upward_imports("from ..units import MediaUnit", "wcs.media.sub") == []
    assert upward_imports("from ...streams import Stream", "wcs.media.sub") == [
        "wcs.streams",
        "wcs.streams.Stream",
    ]
