"""Connection limits for every listener: the open-file limit, one global cap and a per-address cap,
enforced by one wrapping factory that refuses a connection before reading a byte of it."""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    ILoggingContext,
    IProtocolFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

log = Logger(namespace="wcs.limits")

# Descriptors kept out of the connection cap whatever the limit: the process itself (listeners,
# the event loop, pipes, log: under 20 at start, measured) and the pool's snapshot files.
MIN_RESERVE = 64
# When larger, a quarter of the limit: camera pulls, RTSP UDP pairs, WebRTC UDP sockets and files
# grow with the load as connections do, and none of them goes through a listener.
RESERVE_FRACTION = 4
# Where the kernel has no finite hard limit, ask for this many (Linux's default fs.nr_open).
UNLIMITED_TARGET = 1 << 20
LOG_INTERVAL = 10.0


def transparent_prefix(inner: object, wrapper: object) -> str:
    """The log prefix of what a wrapper wraps, so a wrapper leaves log lines as they were."""
    if inner is None:
        return type(wrapper).__name__
    if ILoggingContext.providedBy(inner):
        return str(inner.logPrefix())
    return type(inner).__name__


def raise_open_file_limit(
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as err:
            log.warn(
                "cannot raise the open-file limit from {soft} to {target}: {error}",
                soft=soft,
                target=target,
                error=err,
            )
        soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


def connection_cap(max_connections: int, open_files: int) -> int:
    """The connections all listeners may hold together: `max_connections`, lowered to leave a
    reserve of descriptors (a quarter of the limit, at least MIN_RESERVE) for everything else."""
    reserve = max(MIN_RESERVE, open_files // RESERVE_FRACTION)
    return max(1, min(max_connections, open_files - reserve))


class LogThrottle:
    """Logs the first event at once, then at most one line per `interval` seconds: the latest
    event with the count of events since the previous line. Bounds a flood's log volume."""

    def __init__(self, clock: IReactorTime, logger: Logger, interval: float = LOG_INTERVAL) -> None:
        self.clock = clock
        self.logger = logger
        self.interval = interval
        self._window: IDelayedCall | None = None
        self._held = 0
        self._latest: tuple[str, dict[str, Any]] = ("", {})

    def warn(self, fmt: str, **fields: Any) -> None:
        if self._window is None:
            self.logger.warn(fmt, **fields)
            self._window = self.clock.callLater(self.interval, self._flush)
        else:
            self._held += 1
            self._latest = (fmt, fields)

    def _flush(self) -> None:
        if not self._held:
            self._window = None
            return
        fmt, fields = self._latest
        self.logger.warn(
            fmt + " [{throttled} such events in the last {interval:g} s]",
            **fields,
            throttled=self._held,
            interval=self.interval,
        )
        self._held = 0
        self._window = self.clock.callLater(self.interval, self._flush)


class ConnectionLimiter:
    """The counts all listeners share: connections in total and per client address.

    Only listeners wrapped with `per_ip=True` (HTTP, HTTPS, WS, WSS) count against and are held
    to the per-address cap: many encoders may publish from behind one NAT address.
    """

    def __init__(self, clock: IReactorTime, max_connections: int, max_per_ip: int) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self.refused = 0
        # One throttle per cap, so reaching the global cap is logged at once even while a
        # single address is being refused.
        self._total_log = LogThrottle(clock, log)
        self._per_ip_log = LogThrottle(clock, log)

    def wrap(self, factory: IProtocolFactory, label: str, *, per_ip: bool) -> LimitedFactory:
        return LimitedFactory(self, factory, label, per_ip=per_ip)

    def admit(self, label: str, host: str, per_ip: bool) -> bool:
        """Whether a new connection on listener `label` from `host` may open; logs a refusal."""
        if self.total >= self.max_connections:
            throttle = self._total_log
            reason = f"{self.total} connections open (max_connections {self.max_connections})"
        elif per_ip and self.per_ip.get(host, 0) >= self.max_per_ip:
            throttle = self._per_ip_log
            reason = (
                f"{self.per_ip[host]} connections open from this address "
                f"(max_connections_per_ip {self.max_per_ip})"
            )
        else:
            return True
        self.refused += 1
        throttle.warn(
            "refused a connection on {label} from {peer}: {reason}",
            label=label,
            peer=host,
            reason=reason,
        )
        return False

    def acquire(self, host: str, per_ip: bool) -> None:
        self.total += 1
        if per_ip:
            self.per_ip[host] = self.per_ip.get(host, 0) + 1

    def release(self, host: str, per_ip: bool) -> None:
        self.total -= 1
        if per_ip:
            left = self.per_ip[host] - 1
            if left:
                self.per_ip[host] = left
            else:
                del self.per_ip[host]


class LimitedConnection(ProtocolWrapper):
    """Counts one accepted connection from makeConnection until connectionLost."""

    factory: LimitedFactory

    def __init__(self, factory: LimitedFactory, wrapped: Any, host: str) -> None:
        super().__init__(factory, wrapped)
        self.host = host
        self.counted = False

    def logPrefix(self) -> str:
        return transparent_prefix(self.wrappedProtocol, self)


class LimitedFactory(WrappingFactory[LimitedConnection]):
    """Wraps one listener's factory (outermost, so nothing runs for a refused connection: no
    TLS handshake, no read). A refused connection gets no protocol: the listening port closes
    its socket at once and it was never counted."""

    protocol = LimitedConnection
    noisy = False

    def __init__(
        self, limiter: ConnectionLimiter, wrapped: IProtocolFactory, label: str, *, per_ip: bool
    ) -> None:
        super().__init__(wrapped)
        self.limiter = limiter
        self.label = label
        self.per_ip = per_ip
        self.open = 0  # connections of this listener open now
        self.accepted = 0  # and since start

    def logPrefix(self) -> str:
        return transparent_prefix(self.wrappedFactory, self)

    def buildProtocol(self, addr: IAddress | None) -> LimitedConnection | None:  # type: ignore[override]
        host = str(getattr(addr, "host", "?"))
        if not self.limiter.admit(self.label, host, self.per_ip):
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return LimitedConnection(self, wrapped, host)

    def registerProtocol(self, p: LimitedConnection) -> None:
        # Called from makeConnection, right after buildProtocol on the same reactor turn.
        if not p.counted:
            p.counted = True
            self.open += 1
            self.accepted += 1
            self.limiter.acquire(p.host, self.per_ip)

    def unregisterProtocol(self, p: LimitedConnection) -> None:
        if p.counted:
            p.counted = False
            self.open -= 1
            self.limiter.release(p.host, self.per_ip)
