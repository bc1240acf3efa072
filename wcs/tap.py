"""`twistd wcs`: command-line options and makeService (installs the asyncio reactor)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

log = Logger(namespace="wcs")

# The Settings fields of the listeners' ports, for --ephemeral-ports.
PORT_FIELDS = ("http_port", "https_port", "rtmp_port", "rtsp_port", "ws_port", "wss_port")


class Options(usage.Options):
    synopsis = "[--config PATH] [--ephemeral-ports]"
    longdesc = "WCS-compatible streaming server: RTMP ingest, PNG snapshots over REST."
    optParameters = [
        ["config", "c", None, "Path to flashphoner.properties (default: built-in defaults)."],
    ]
    optFlags = [
        [
            "ephemeral-ports",
            None,
            "Bind every enabled listener to a port the OS picks (for tests); "
            "the 'wcs ready:' line lists them.",
        ],
    ]

    def opt_version(self) -> None:
        """Display the wcs and Twisted versions and exit."""
        from twisted import copyright
        from wcs import __version__

        print(f"wcs {__version__} (Twisted {copyright.version})")
        sys.exit(0)


def install_reactor() -> object:
    """Install the asyncio reactor (aiortc shares its loop) unless one is already running.

    A different reactor chosen beforehand (e.g. `twistd --reactor=epoll`) is refused.
    """
    if "twisted.internet.reactor" not in sys.modules:
        import uvloop
        from twisted.internet import asyncioreactor

        # libuv's loop under Twisted's asyncio reactor: the loop's own turn costs less than
        # asyncio's, which is a share of every read at hundreds of streams.
        asyncioreactor.install(uvloop.new_event_loop())
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise SystemExit(
            f"wcs needs the asyncio reactor, but {type(reactor).__name__} is installed; "
            "run without --reactor or with --reactor=asyncio"
        )
    return reactor


def makeService(options: Options) -> IService:
    reactor = install_reactor()

    from wcs.config import ConfigError, Settings, load_settings
    from wcs.service import WCSService

    try:
        if options["config"]:
            settings, unknown = load_settings(options["config"])
        else:
            settings, unknown = Settings(), []
    except ConfigError as err:
        raise SystemExit(f"wcs: configuration error: {err}") from None
    for key in unknown:
        log.warn("unknown configuration key {key} ignored", key=key)
    if options["ephemeral-ports"]:
        # Port 0 in Settings is a port the OS picks (a 0 in the file disables the listener).
        enabled: dict[str, Any] = {f: 0 for f in PORT_FIELDS if getattr(settings, f) is not None}
        settings = dataclasses.replace(settings, **enabled)
    return WCSService(settings, reactor)
