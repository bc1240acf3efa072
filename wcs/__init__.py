"""wcs: a WCS-compatible streaming server with snapshots (see docs/)."""

from __future__ import annotations

from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("wcs")
    except metadata.PackageNotFoundError:
        # Run from a checkout that was never installed (no .dist-info): say so, not a guess.
        return "0+unknown"


__version__ = _version()
