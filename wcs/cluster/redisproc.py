"""The private `redis-server` of `--workers N` without cluster_redis_url: one Unix socket under
the run directory, no persistence, no TCP port, stopped (and its socket removed) on exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="wcs.cluster.redis")

START_TIMEOUT = 10.0
PING_INTERVAL = 0.05
STOP_TIMEOUT = 5.0
# Unix socket paths are limited to 108 bytes; beyond this, the socket goes to the temp dir.
MAX_SOCKET_PATH = 100
# Sets the parent-death signal, checks the parent is still there, then becomes redis-server: a
# supervisor killed with SIGKILL takes its Redis with it.
TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
MISSING = (
    "wcs: --workers needs a Redis: set cluster_redis_url, or install redis-server "
    "(Debian/Ubuntu: apt-get install redis-server) for the private one"
)


def socket_path(run_dir: Path, pid: int) -> Path:
    """`<run dir>/wcs-redis.<pid>.sock`, or the same name in the temp dir if that is too long."""
    path = run_dir / f"wcs-redis.{pid}.sock"
    if len(str(path)) > MAX_SOCKET_PATH:
        path = Path(tempfile.gettempdir()) / path.name
    return path


def run_dir() -> Path:
    """systemd's RuntimeDirectory= when there is one, else the working directory (--rundir)."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime) if runtime else Path.cwd()


def redis_argv(binary: str, sock: Path, workdir: Path) -> list[str]:
    return [
        binary,
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--loglevel",
        "warning",
    ]


def asyncio_ping(reactor: Any, sock: Path) -> Deferred[bool]:
    """Whether a Redis answers PING on `sock` (redis.asyncio on the asyncio reactor's loop)."""
    import redis.asyncio
    from redis.exceptions import RedisError

    async def ping() -> bool:
        client = redis.asyncio.Redis(unix_socket_path=str(sock), socket_timeout=1.0)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()

    # The reactor's own loop: asyncio's current loop is another one under twistd.
    loop = reactor._asyncioEventloop
    return Deferred.fromFuture(asyncio.ensure_future(ping(), loop=loop))


class _RedisOutput(ProcessProtocol):
    def __init__(self, owner: PrivateRedis) -> None:
        self.owner = owner
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        self._partial = self._partial[-4096:]
        for line in lines:
            if line.strip():
                log.info("redis-server: {line}", line=line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.owner.exited(reason)
        self.ended.callback(None)


class PrivateRedis:
    """One redis-server child of this process on a Unix socket; `url` once `start()` fired."""

    def __init__(
        self,
        reactor: Any,
        directory: Path,
        *,
        binary: str | None = None,
        ping: Callable[[Any, Path], Deferred[bool]] = asyncio_ping,
    ) -> None:
        self.reactor = reactor
        self.socket = socket_path(directory, os.getpid())
        self.directory = directory
        self.binary = binary if binary is not None else shutil.which("redis-server")
        self.ping = ping
        self.pid: int | None = None
        self._transport: Any = None
        self._output: _RedisOutput | None = None
        self._running = False

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def check(self) -> None:
        """Raise SystemExit now (before the reactor runs) if there is no redis-server."""
        if not self.binary:
            raise SystemExit(MISSING)

    def start(self) -> Deferred[str]:
        """Spawn it and fire with its URL once it answers PING; fails if it exits or stays
        silent for START_TIMEOUT."""
        self.check()
        assert self.binary is not None
        self.socket.unlink(missing_ok=True)
        self._output = _RedisOutput(self)
        argv = redis_argv(self.binary, self.socket, self.directory)
        self._transport = self.reactor.spawnProcess(
            self._output,
            sys.executable,
            [sys.executable, "-c", TRAMPOLINE, str(os.getpid()), *argv],
            env=None,
            path=str(self.directory),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        self._transport.closeStdin()
        self.pid = self._transport.pid
        self._running = True
        log.info("private redis-server (pid {pid}) starting on {url}", pid=self.pid, url=self.url)
        deadline = self.reactor.seconds() + START_TIMEOUT
        started: Deferred[str] = Deferred()

        def attempt() -> None:
            if not self._running:
                started.errback(RuntimeError("redis-server exited during start-up"))
                return
            self.ping(self.reactor, self.socket).addCallback(answered)

        def answered(ok: bool) -> None:
            if ok:
                started.callback(self.url)
            elif self.reactor.seconds() >= deadline:
                started.errback(
                    RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT:g} s")
                )
            else:
                self.reactor.callLater(PING_INTERVAL, attempt)

        attempt()
        return started

    def exited(self, reason: Failure) -> None:
        was_running, self._running = self._running, False
        if was_running:
            log.info(
                "private redis-server (pid {pid}) exited: {reason}",
                pid=self.pid,
                reason=reason.getErrorMessage(),
            )
        self.socket.unlink(missing_ok=True)

    def stop(self) -> Deferred[None]:
        """SIGTERM, SIGKILL after STOP_TIMEOUT; fires once it is gone and its socket removed."""
        if self._output is None or not self._running:
            self.socket.unlink(missing_ok=True)
            return succeed(None)
        ended = self._output.ended
        self._signal(signal.SIGTERM)
        kill = self.reactor.callLater(STOP_TIMEOUT, self._signal, signal.SIGKILL)

        def done(_: object) -> None:
            if kill.active():
                kill.cancel()
            self.socket.unlink(missing_ok=True)

        return ended.addCallback(done)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessExitedAlready):
            self._transport.signalProcess(signum)
