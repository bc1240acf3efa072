"""A worker's placement (the `WCS_WORKER` JSON the supervisor hands it) and what the worker
does with it: fixed shared ports bound with SO_REUSEPORT, its node id, its RTSP UDP slice."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

from wcs.config import Settings

ENV = "WCS_WORKER"
MAX_WORKERS = 64
# Each worker's share of rtsp_udp_port_range: at least two RTP/RTCP pairs.
MIN_SLICE_PORTS = 4
_NODE_ID_BAD = re.compile(r"[^A-Za-z0-9._-]+")
# Room left in a 64-character node id for "-w63".
_NODE_BASE_MAX = 60
# The Settings field of each shared listener, by label (the order of wcs.service's listeners).
PORT_FIELDS = {
    "http": "http_port",
    "https": "https_port",
    "rtmp": "rtmp_port",
    "rtsp": "rtsp_port",
    "ws": "ws_port",
    "wss": "wss_port",
}


class PlacementError(ValueError):
    """A WCS_WORKER value that is not a placement."""


@dataclass(frozen=True)
class Placement:
    """Where worker `index` of `count` runs: the shared ports, the Redis, its UDP slice."""

    index: int
    count: int
    redis_url: str
    ports: dict[str, int]  # label -> the shared port number every worker binds
    udp_range: tuple[int, int] | None  # this worker's slice of rtsp_udp_port_range
    node_base: str  # the node id is f"{node_base}-w{index}"
    supervisor_pid: int

    @property
    def node_id(self) -> str:
        return f"{self.node_base}-w{self.index}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Placement:
        try:
            raw = json.loads(text)
            udp = raw["udp_range"]
            placement = cls(
                index=int(raw["index"]),
                count=int(raw["count"]),
                redis_url=str(raw["redis_url"]),
                ports={str(k): int(v) for k, v in raw["ports"].items()},
                udp_range=None if udp is None else (int(udp[0]), int(udp[1])),
                node_base=str(raw["node_base"]),
                supervisor_pid=int(raw["supervisor_pid"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
            raise PlacementError(f"{ENV} is not a worker placement: {err!r}") from None
        if not 0 <= placement.index < placement.count <= MAX_WORKERS:
            raise PlacementError(f"{ENV}: worker index {placement.index} of {placement.count}")
        unknown = set(placement.ports) - set(PORT_FIELDS)
        if unknown:
            raise PlacementError(f"{ENV}: unknown listeners {sorted(unknown)}")
        return placement

    def apply(self, settings: Settings) -> Settings:
        """`settings` as this worker runs them: the supervisor's port numbers (a listener it
        did not list stays disabled), its Redis, its node id and its UDP slice."""
        ports: dict[str, Any] = {
            field: self.ports.get(label) for label, field in PORT_FIELDS.items()
        }
        return dataclasses.replace(
            settings,
            **ports,
            cluster_redis_url=self.redis_url,
            cluster_node_id=self.node_id,
            rtsp_udp_port_range=self.udp_range,
        )


def parse_workers(value: str, cpu_count: int | None) -> int:
    """`--workers`: 1..64 or `auto` (the number of cores); raises ValueError with the usage."""
    if value.strip().lower() == "auto":
        return max(1, min(cpu_count or 1, MAX_WORKERS))
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"--workers: expected 1 to {MAX_WORKERS} or auto, not {value!r}")
    return n


def split_udp_range(port_range: tuple[int, int] | None, count: int) -> list[tuple[int, int] | None]:
    """`rtsp_udp_port_range` (LOW-HIGH, inclusive) cut into `count` disjoint slices, slice i for
    worker i; no range: every worker picks ephemeral ports. Raises ValueError when a slice would
    hold fewer than MIN_SLICE_PORTS ports."""
    if port_range is None:
        return [None] * count
    low, high = port_range
    total = high - low + 1
    # An even size from an even start keeps each RTP/RTCP pair inside one slice.
    start = low + (low & 1)
    size = ((high + 1 - start) // count) & ~1
    if size < MIN_SLICE_PORTS:
        raise ValueError(
            f"rtsp_udp_port_range {low}-{high} ({total} ports) is too small for {count} "
            f"workers: each needs at least {MIN_SLICE_PORTS} ports"
        )
    slices: list[tuple[int, int] | None] = []
    for i in range(count):
        first = start + i * size
        # The last slice takes the remainder.
        last = high if i == count - 1 else first + size - 1
        slices.append((first, last))
    return slices


def node_base(settings: Settings, hostname: str) -> str:
    """The part of every worker's node id before "-w<index>": cluster_node_id or the host name,
    reduced to the characters a node id may hold."""
    base = settings.cluster_node_id or _NODE_ID_BAD.sub("-", hostname).strip("-") or "wcs"
    return base[:_NODE_BASE_MAX]


def worker_argv(config: str | None, extra: list[str] | None = None) -> list[str]:
    """The command line of one worker: twistd in the foreground, logging to stdout (which the
    supervisor reads), no pid file (the supervisor's is the service's)."""
    argv = [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "--logfile=-",
        "wcs",
    ]
    if config:
        argv += ["--config", config]
    return argv + (extra or [])


def die_with_parent(expected_parent: int) -> None:
    """Have the kernel SIGTERM this process when its parent (the supervisor) dies (Linux); if
    the parent is already gone (it died before this ran), stop now."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != expected_parent:
        raise SystemExit(f"wcs worker: the supervisor (pid {expected_parent}) is gone")


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """A TCP listener on a port other processes bind too (SO_REUSEPORT): the kernel spreads
    the incoming connections over every worker listening on it."""

    def __init__(self, reactor: Any, interface: str, port: int, backlog: int = 50) -> None:
        self.reactor = reactor
        self.interface = interface
        self.port = port
        self.backlog = backlog

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        try:
            sock = reuseport_socket(family, self.interface, self.port)
        except OSError as err:
            return fail(err)
        try:
            sock.listen(self.backlog)
            sock.setblocking(False)
            # adoptStreamPort duplicates the descriptor: ours is closed below.
            port: IListeningPort = self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        except Exception as err:
            return fail(err)
        finally:
            sock.close()
        return succeed(port)


def reuseport_socket(family: int, interface: str, port: int) -> socket.socket:
    """A TCP socket bound to `interface`:`port` with SO_REUSEADDR and SO_REUSEPORT, not yet
    listening (the supervisor keeps one like this to hold a port for its workers)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
    except BaseException:
        sock.close()
        raise
    return sock
