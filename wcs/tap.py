"""`twistd wcs`: command-line options and makeService (installs the asyncio reactor)."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

if TYPE_CHECKING:
    from wcs.cluster.placement import Placement
    from wcs.config import Settings

log = Logger(namespace="wcs")

# The Settings fields of the listeners' ports, for --ephemeral-ports.
PORT_FIELDS = ("http_port", "https_port", "rtmp_port", "rtsp_port", "ws_port", "wss_port")


class Options(usage.Options):
    synopsis = "[--config PATH] [--ephemeral-ports] [--workers N|auto]"
    longdesc = "WCS-compatible streaming server: RTMP ingest, PNG snapshots over REST."
    optParameters = [
        ["config", "c", None, "Path to flashphoner.properties (default: built-in defaults)."],
        [
            "workers",
            None,
            "1",
            "Worker processes sharing the listening ports (1-64, or auto: one per core); "
            "more than 1 needs a Redis (cluster_redis_url, else a private redis-server).",
        ],
    ]
    optFlags = [
        [
            "ephemeral-ports",
            None,
            "Bind every enabled listener to a port the OS picks (for tests); "
            "the 'wcs ready:' line lists them.",
        ],
    ]

    def postOptions(self) -> None:
        from wcs.cluster.placement import parse_workers

        try:
            self["workers"] = parse_workers(str(self["workers"]), os.cpu_count())
        except ValueError as err:
            raise usage.UsageError(str(err)) from None

    def opt_version(self) -> None:
        """Display the wcs and Twisted versions and exit."""
        from twisted import copyright
        from wcs import __version__

        print(f"wcs {__version__} (Twisted {copyright.version})")
        sys.exit(0)


def install_reactor(fast_loop: bool = True) -> object:
    """Install the asyncio reactor (aiortc shares its loop) unless one is already running;
    on uvloop unless `fast_loop` is false (asyncio's own loop).

    A different reactor chosen beforehand (e.g. `twistd --reactor=epoll`) is refused.
    """
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        if fast_loop:
            import uvloop

            # libuv's loop under Twisted's asyncio reactor: the loop's own turn costs less than
            # asyncio's, which is a share of every read at hundreds of streams.
            asyncioreactor.install(uvloop.new_event_loop())
        else:
            asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise SystemExit(
            f"wcs needs the asyncio reactor, but {type(reactor).__name__} is installed; "
            "run without --reactor or with --reactor=asyncio"
        )
    return reactor


def warn_unknown_keys(unknown: list[str], suggest: Any) -> None:
    """One warning per unknown key; a likely misspelling of ours says which key was meant."""
    for key in unknown:
        meant = suggest(key)
        if meant is None:
            log.warn("unknown configuration key {key} ignored", key=key)
        else:
            log.warn(
                "unknown configuration key {key} ignored (did you mean {suggestion}?)",
                key=key,
                suggestion=meant,
            )


def read_settings(path: str | None, ephemeral_ports: bool) -> Settings:
    """The settings of the file at `path` (built-in defaults without one), unknown keys warned
    about; at start-up and on SIGHUP. Raises ConfigError."""
    from wcs.config import Settings, load_settings, suggest_key

    if path:
        settings, unknown = load_settings(path)
    else:
        settings, unknown = Settings(), []
    warn_unknown_keys(unknown, suggest_key)
    if ephemeral_ports:
        # Port 0 in Settings is a port the OS picks (a 0 in the file disables the listener).
        enabled: dict[str, Any] = {f: 0 for f in PORT_FIELDS if getattr(settings, f) is not None}
        settings = dataclasses.replace(settings, **enabled)
    return settings


def makeService(options: Options) -> IService:
    placement = worker_placement()
    supervising = placement is None and int(options["workers"]) > 1
    # The supervisor runs processes: uvloop, running, takes over the signal wakeup fd through
    # which Twisted learns of SIGCHLD, and dead workers would go unnoticed. It moves no media.
    reactor = install_reactor(fast_loop=not supervising)

    from wcs.config import ConfigError
    from wcs.logs import LEVELS, LevelFilter, build_observer
    from wcs.service import WCSService

    path, ephemeral = options["config"], bool(options["ephemeral-ports"])
    if placement is not None:
        # A worker of `--workers N`: the supervisor's ports, Redis, node id and UDP slice.
        def worker_settings() -> Settings:
            return placement.apply(read_settings(path, False))

        source: Callable[[], Settings] = worker_settings
    else:

        def own_settings() -> Settings:
            return read_settings(path, ephemeral)

        source = own_settings
    try:
        settings = source()
    except ConfigError as err:
        raise SystemExit(f"wcs: configuration error: {err}") from None
    service: Any
    if supervising:
        service = make_supervisor(settings, reactor, int(options["workers"]), path)
    else:
        service = WCSService(settings, reactor, worker=placement)
        if path:
            service.reload_source = source
    twistd = options.parent
    # Under twistd (not when a test calls makeService): the level filter and the format in
    # front of twistd's log destination, unless --logger chose an observer of its own.
    if twistd is not None and not twistd.get("logger"):
        service.log_filter = LevelFilter(LEVELS[settings.log_level])
        service.log_observer = build_observer(twistd, settings.log_format, service.log_filter)
    return cast(IService, service)


def worker_placement() -> Placement | None:
    """This process's placement when a `--workers` supervisor started it (WCS_WORKER), else None.
    A worker dies with its supervisor."""
    from wcs.cluster.placement import ENV, Placement, PlacementError, die_with_parent

    raw = os.environ.get(ENV)
    if not raw:
        return None
    try:
        placement = Placement.from_json(raw)
    except PlacementError as err:
        raise SystemExit(f"wcs: {err}") from None
    die_with_parent(placement.supervisor_pid)
    return placement


def make_supervisor(settings: Settings, reactor: Any, workers: int, path: str | None) -> IService:
    """The `--workers N` supervisor; start-up errors (UDP range, no redis-server) exit here."""
    from wcs.cluster.workers import Supervisor

    try:
        # Workers start in twistd's --rundir: the file's path must not depend on it.
        return Supervisor(settings, reactor, workers, os.path.abspath(path) if path else None)
    except ValueError as err:
        raise SystemExit(f"wcs: {err}") from None
