"""Layering: media <- hub/directory <- snapshot and front-ends <- service <- tap; no module
imports a layer above its own (wcs/media/ is checked on its own as well)."""

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


# The layers of wcs, bottom first. Helpers every layer may use (wcs.guard, wcs.limits,
# wcs.config, wcs.tls) sit outside them.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("wcs.media",),
    ("wcs.directory", "wcs.streams"),
    (
        "wcs.snapshot",
        "wcs.access",
        "wcs.hooks",
        "wcs.rtmp",
        "wcs.rtsp",
        "wcs.webrtc",
        "wcs.rest",
        "wcs.web",
    ),
    ("wcs.service",),
    ("wcs.tap",),
)
# Within the consumers' layer, snapshots know no protocol (the front-ends use snapshots).
FRONT_ENDS = ("wcs.rtmp", "wcs.rtsp", "wcs.webrtc", "wcs.rest", "wcs.web", "wcs.access")
WCS_DIR = MEDIA_DIR.parent


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def layer_of(module: str) -> int | None:
    for index, packages in enumerate(LAYERS):
        if _within(module, packages):
            return index
    return None


def wcs_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(WCS_DIR.rglob("*.py")):
        parts = ["wcs", *path.relative_to(WCS_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def layering_violations(modules: dict[str, str]) -> dict[str, list[str]]:
    """Module -> the imports it makes of a layer above its own (or of a front-end, for
    wcs.snapshot); `modules` maps each module's name to its source."""
    violations: dict[str, list[str]] = {}
    for name, source in modules.items():
        own = layer_of(name)
        if own is None:
            continue
        is_package = WCS_DIR.joinpath(*name.split(".")[1:], "__init__.py").exists()
        package = name if is_package else name.rpartition(".")[0]
        bad = sorted(
            {
                module
                for module in imported_modules(source, package)
                if (layer := layer_of(module)) is not None
                and (
                    layer > own
                    or (_within(name, ("wcs.snapshot",)) and _within(module, FRONT_ENDS))
                )
            }
        )
        if bad:
            violations[name] = bad
    return violations


def test_no_module_imports_a_layer_above_its_own() -> None:
    modules = {name: path.read_text(encoding="utf-8") for name, path in wcs_modules().items()}
    assert {"wcs.streams", "wcs.directory", "wcs.service", "wcs.rtsp.session"} <= set(modules)
    assert layering_violations(modules) == {}


def test_layering_check_flags_what_runs_up() -> None:
    modules = {
        "wcs.streams": (
            "from wcs.snapshot.service import SnapshotService\nfrom wcs.media import gop"
        ),
        "wcs.directory": "import wcs.service",
        "wcs.snapshot.auto": (
            "from wcs.rest.views import StreamViews\nfrom wcs.streams import Stream"
        ),
        "wcs.rtsp.server": "from wcs.tap import makeService\nfrom wcs.snapshot import service",
        "wcs.rest.views": "from wcs.rtsp.pull import Pull\nfrom wcs.guard import describe",
        "wcs.service": "from wcs.tap import Options",
    }
    assert layering_violations(modules) == {
        "wcs.streams": ["wcs.snapshot.service", "wcs.snapshot.service.SnapshotService"],
        "wcs.directory": ["wcs.service"],
        "wcs.snapshot.auto": ["wcs.rest.views", "wcs.rest.views.StreamViews"],
        "wcs.rtsp.server": ["wcs.tap", "wcs.tap.makeService"],
        "wcs.service": ["wcs.tap", "wcs.tap.Options"],
    }
