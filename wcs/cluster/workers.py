"""`twistd wcs --workers N`: a supervisor that holds the shared ports, runs the Redis, spawns N
full wcs workers (SO_REUSEPORT on every port), relays their logs and restarts the ones that die."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from wcs import __version__
from wcs.cluster.placement import (
    ENV,
    PORT_FIELDS,
    Placement,
    node_base,
    reuseport_socket,
    split_udp_range,
    worker_argv,
)
from wcs.cluster.redisproc import PrivateRedis, run_dir
from wcs.config import Settings
from wcs.logs import LevelFilter
from wcs.tls import ensure_self_signed

log = Logger(namespace="wcs.cluster")

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
# A worker that stayed up this long after its ready line restarts after FIRST_DELAY again.
STABLE_AFTER = 60.0
# SIGTERM, then SIGKILL after this many seconds (a worker's own shutdown is bounded well below).
KILL_AFTER = 10.0
# A line longer than this is relayed in pieces.
MAX_LINE = 65536
WORKER_READY = re.compile(r"wcs ready: (.*) \(pid (\d+)\)")


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker that died `failures` times in a row before (0: 1 s,
    doubling to MAX_DELAY)."""
    return min(MAX_DELAY, FIRST_DELAY * 2 ** min(failures, 16))


def exit_status(reason: Failure) -> str:
    """ "exit status N" or "signal NAME" for a process that ended with `reason`."""
    code = getattr(reason.value, "exitCode", None)
    sig = getattr(reason.value, "signal", None)
    if sig is not None:
        try:
            return f"signal {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    return f"exit status {code}"


def ports_text(ports: dict[str, int]) -> str:
    return ", ".join(f"{label}={port}" for label, port in ports.items()) or "no listeners"


class _WorkerOutput(ProcessProtocol):
    """A worker's stdout and stderr, line by line, to the supervisor."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self._partial: dict[int, bytes] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._partial.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial[childFD] = rest
        for line in lines:
            self.supervisor.worker_line(self.index, line.decode("utf-8", "replace").rstrip("\r"))

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            if rest:
                self.supervisor.worker_line(self.index, rest.decode("utf-8", "replace"))
        self._partial.clear()
        self.supervisor.worker_ended(self.index, reason)


@dataclass
class Worker:
    """One worker slot: its placement is fixed; the process in it changes on restart."""

    placement: Placement
    process: Any = None  # the IProcessTransport while one runs
    pid: int | None = None
    ready_at: float | None = None
    failures: int = 0
    restart: IDelayedCall | None = None
    ended: Deferred[None] | None = None
    ports: dict[str, int] = field(default_factory=dict)


# spawn(protocol, executable, argv, env, path) -> IProcessTransport
Spawn = Callable[[ProcessProtocol, str, list[str], dict[str, str], str], Any]


class Supervisor(Service):
    """Holds the shared listening ports, starts the Redis and N workers, keeps them running."""

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        count: int,
        config: str | None,
        *,
        spawn: Spawn | None = None,
        redis: PrivateRedis | None = None,
        hostname: str | None = None,
    ) -> None:
        self.settings = settings
        self.reactor = reactor
        self.count = count
        self.config = config
        self._spawn = spawn or self._reactor_spawn
        # Raises ValueError (a start-up error) when the range is too small for `count` slices.
        self.udp_slices = split_udp_range(settings.rtsp_udp_port_range, count)
        self.node_base = node_base(settings, hostname or socket.gethostname())
        self.redis = redis
        if settings.cluster_redis_url is None and self.redis is None:
            self.redis = PrivateRedis(reactor, run_dir())
            self.redis.check()  # no redis-server binary: SystemExit before anything starts
        self.ports: dict[str, int] = {}
        self._held: list[socket.socket] = []
        self.workers: list[Worker] = []
        self.all_ready = False
        self.stopping = False
        # Set by wcs.tap under twistd, as for WCSService.
        self.log_filter: LevelFilter | None = None
        self.log_observer: ILogObserver | None = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)

    # -- start ----------------------------------------------------------------------------------
    def hold_ports(self) -> dict[str, int]:
        """Bind every enabled listener's port (0: one the OS picks) with SO_REUSEPORT and keep
        the socket, not listening, until the workers listen on it: the number is known and
        nobody else can take the port meanwhile. A port that cannot be bound stops start-up."""
        s = self.settings
        family = socket.AF_INET6 if ":" in s.ip else socket.AF_INET
        for label, attr in PORT_FIELDS.items():
            wanted = getattr(s, attr)
            if wanted is None:
                continue
            try:
                sock = reuseport_socket(family, s.ip, wanted)
            except OSError as err:
                self.release_ports()
                raise SystemExit(
                    f"wcs: cannot listen on {label} port {s.ip}:{wanted}: {err.strerror or err}"
                ) from None
            self._held.append(sock)
            self.ports[label] = sock.getsockname()[1]
        return self.ports

    def release_ports(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()

    def placements(self, redis_url: str) -> list[Placement]:
        return [
            Placement(
                index=i,
                count=self.count,
                redis_url=redis_url,
                ports=dict(self.ports),
                udp_range=self.udp_slices[i],
                node_base=self.node_base,
                supervisor_pid=os.getpid(),
            )
            for i in range(self.count)
        ]

    def prepare_tls(self) -> None:
        """Make the self-signed pair once, here: N workers making it at once would race on
        the same files."""
        s = self.settings
        if (s.https_port is None and s.wss_port is None) or (s.https_cert and s.https_key):
            return
        try:
            ensure_self_signed()
        except OSError as err:
            raise SystemExit(f"wcs: cannot make the self-signed TLS pair: {err}") from None

    def startService(self) -> None:
        super().startService()
        # Here, not in __init__: twistd has changed into --rundir, where tls/ belongs.
        self.prepare_tls()
        self.hold_ports()
        self.reactor.callWhenRunning(self._handle_signals)
        self.reactor.callWhenRunning(self._start)

    def _start(self) -> None:
        if self.settings.cluster_redis_url is not None:
            redis_url: Deferred[str] = succeed(self.settings.cluster_redis_url)
        else:
            assert self.redis is not None
            redis_url = self.redis.start()

        def spawn_all(url: str) -> None:
            if self.stopping:
                return
            self.workers = [Worker(p) for p in self.placements(url)]
            for worker in self.workers:
                self.spawn(worker)

        def failed(reason: Failure) -> None:
            log.critical(
                "wcs: cannot start the private redis-server: {reason}",
                reason=reason.getErrorMessage(),
            )
            self.reactor.stop()

        redis_url.addCallbacks(spawn_all, failed)

    def spawn(self, worker: Worker) -> None:
        worker.restart = None
        if self.stopping:
            return
        index = worker.placement.index
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env[ENV] = worker.placement.to_json()
        argv = worker_argv(self.config)
        worker.ready_at = None
        worker.ended = Deferred()
        worker.process = self._spawn(_WorkerOutput(self, index), argv[0], argv, env, os.getcwd())
        worker.pid = worker.process.pid
        log.info(
            "worker {index} started (pid {pid}, node {node})",
            index=index,
            pid=worker.pid,
            node=worker.placement.node_id,
        )

    def _reactor_spawn(
        self,
        protocol: ProcessProtocol,
        executable: str,
        argv: list[str],
        env: dict[str, str],
        path: str,
    ) -> Any:
        transport = self.reactor.spawnProcess(
            protocol, executable, argv, env=env, path=path, childFDs={0: "w", 1: "r", 2: "r"}
        )
        transport.closeStdin()
        return transport

    # -- what workers say -----------------------------------------------------------------------
    def worker_line(self, index: int, line: str) -> None:
        ready = WORKER_READY.search(line)
        # Scripts wait for the supervisor's own "wcs ready:" line: a worker's must not look like it.
        relayed = line.replace("wcs ready:", "wcs worker ready:")
        log.info("w{index}| {line}", index=index, line=relayed, log_always=True)
        if ready is not None and index < len(self.workers):
            self._worker_ready(self.workers[index], ready)

    def _worker_ready(self, worker: Worker, ready: re.Match[str]) -> None:
        worker.ready_at = self.reactor.seconds()
        worker.ports = {
            label: int(port)
            for label, port in (p.split("=", 1) for p in ready[1].split(", ") if "=" in p)
        }
        if self.all_ready:
            log.info(
                "worker {index} ready again (pid {pid})",
                index=worker.placement.index,
                pid=worker.pid,
            )
            return
        if all(w.ready_at is not None for w in self.workers):
            self.all_ready = True
            # Every worker listens on every port now: the placeholders can go.
            self.release_ports()
            log.info(
                "wcs ready: {ports} (pid {pid}) version {version} workers {count}",
                ports=ports_text(self.ports),
                pid=os.getpid(),
                version=__version__,
                count=self.count,
                log_always=True,
            )

    def worker_ended(self, index: int, reason: Failure) -> None:
        worker = self.workers[index]
        status = exit_status(reason)
        pid, worker.process, worker.pid = worker.pid, None, None
        ended, worker.ended = worker.ended, None
        if self.stopping:
            log.info(
                "worker {index} (pid {pid}) stopped: {status}", index=index, pid=pid, status=status
            )
        else:
            now = self.reactor.seconds()
            if worker.ready_at is not None and now - worker.ready_at >= STABLE_AFTER:
                worker.failures = 0
            delay = restart_delay(worker.failures)
            worker.failures += 1
            log.error(
                "worker {index} (pid {pid}) exited with {status}; restarting it in {delay:g} s",
                index=index,
                pid=pid,
                status=status,
                delay=delay,
            )
            worker.restart = self.reactor.callLater(delay, self.spawn, worker)
        worker.ready_at = None
        if ended is not None:
            ended.callback(None)

    # -- signals and stop -----------------------------------------------------------------------
    def _handle_signals(self) -> None:
        # A normal stop exits 0 (twistd would re-raise SIGTERM at exit): stop the reactor here.
        def on_stop(signum: int, frame: object) -> None:
            log.info("{signal} received, stopping the workers", signal=signal.Signals(signum).name)
            self.reactor.callFromThread(self.reactor.stop)

        def on_hup(signum: int, frame: object) -> None:
            self.reactor.callFromThread(self.signal_workers, signal.SIGHUP)

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None:
                with contextlib.suppress(ProcessExitedAlready):
                    worker.process.signalProcess(signum)

    def stopService(self) -> Deferred[None]:
        """Every worker (SIGTERM, SIGKILL after KILL_AFTER), then the private Redis."""
        super().stopService()
        self.stopping = True
        waiting: list[Deferred[None]] = []
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
            if worker.ended is not None:
                waiting.append(worker.ended)
        self.signal_workers(signal.SIGTERM)
        kill = self.reactor.callLater(KILL_AFTER, self.signal_workers, signal.SIGKILL)

        def workers_gone(_: object) -> Deferred[None]:
            if kill.active():
                kill.cancel()
            self.release_ports()
            return self.redis.stop() if self.redis is not None else succeed(None)

        gone = DeferredList(waiting, consumeErrors=True).addCallback(workers_gone)
        return gone.addCallback(lambda _: None)
