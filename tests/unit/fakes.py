"""Fakes shared by the unit tests (and the fuzz targets): hooks and pools answered by hand, a
camera connector, a reactor that binds UDP ports, recorders; Deferred and log helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure

from tests.unit.camera import Cam
from wcs import tap
from wcs.directory import LocalDirectory, NameInUse
from wcs.hooks import Refused
from wcs.media.units import MediaUnit
from wcs.rtsp.client import RTSPClientProtocol
from wcs.rtsp.pull import Pull, PullManager
from wcs.streams import Reader, Stream, StreamHub

T = TypeVar("T")

CLOSED = Failure(ConnectionDone())

# What a fake snapshot service answers: a PNG signature, then bytes no decoder is asked to read.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
BIG_PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8192  # 2 MiB


class PendingHooks:
    """Hooks whose answers the test gives by hand (`answer`), recording what was told."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, object], Deferred[dict[str, object]]]] = []
        self.told: list[tuple[str, dict[str, object]]] = []

    def ask(self, method: str, body: dict[str, object]) -> Deferred[dict[str, object]]:
        d: Deferred[dict[str, object]] = Deferred()
        self.asked.append((method, body, d))
        return d

    def tell(self, method: str, body: dict[str, object]) -> None:
        self.told.append((method, body))

    def answer(self, method: str, refuse: str | None = None) -> dict[str, object]:
        """Allow (or refuse with `refuse`) the oldest pending `method`; returns its body."""
        for asked_method, body, d in self.asked:
            if asked_method == method and not d.called:
                if refuse is None:
                    d.callback({})
                else:
                    d.errback(Refused(refuse))
                return body
        raise AssertionError(f"{method} was not asked")


class RecordingProtocol(Protocol):
    """Records the bytes it receives and how its connection was lost."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = CLOSED) -> None:
        self.lost.append(reason)


def publish_now(hub: StreamHub, name: str, provider: str, **kwargs: Any) -> Stream:
    """`hub.publish`, answered at once by the in-process directory: the new Stream, or the
    refusal (InvalidName, NameInUse) raised."""
    results: list[Stream | Failure] = []
    hub.publish(name, provider, **kwargs).addBoth(results.append)
    assert results, "the directory did not answer at once"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, Stream)
    return result


def result_now(d: Deferred[T]) -> T:
    """The result of a Deferred that must have fired already; its failure raised."""
    results: list[object] = []
    d.addBoth(results.append)
    assert results, "not answered at once"
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[return-value]


def refused_info(failure: Failure) -> str:
    """The info of a hook's refusal (the failure must be one)."""
    assert isinstance(failure.value, Refused)
    return failure.value.info


def warnings(events: list[LogEvent]) -> list[str]:
    """The warnings among logged events, formatted."""
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]


def startup_now(pulls: PullManager, uri: str, to_stream: str | None = None) -> Pull:
    """`pulls.startup`, answered at once by the in-process directory (its refusal raised)."""
    return result_now(pulls.startup(uri, to_stream))


class RecordingReader:
    """Reads a stream (`attach`), recording every unit it gets and the end."""

    def __init__(self) -> None:
        self.units: list[MediaUnit] = []
        self.ended: list[Stream] = []
        self.reader: Reader | None = None

    def attach(self, stream: Stream, **options: Any) -> Reader:
        self.reader = stream.add_reader(self.units.append, on_end=self.ended.append, **options)
        return self.reader


class PendingDirectory(LocalDirectory):
    """A stream directory whose claims the test answers by hand (`grant`, `refuse`), as a
    shared directory answers later."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[str, str, Deferred[None]]] = []

    def claim(self, name: str, owner: str) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.pending.append((name, owner, d))
        return d

    def _take(self, name: str) -> tuple[str, Deferred[None]]:
        for entry in self.pending:
            if entry[0] == name:
                self.pending.remove(entry)
                return entry[1], entry[2]
        raise AssertionError(f"no pending claim of {name!r}")

    def grant(self, name: str) -> None:
        owner, d = self._take(name)
        LocalDirectory.claim(self, name, owner).chainDeferred(d)

    def refuse(self, name: str) -> None:
        _, d = self._take(name)
        d.errback(NameInUse(name))


class ManualPool:
    """A pool whose jobs run only when the test says so, in the test's thread."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.ran = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((f, args, d))
        return d

    def run_next(self) -> None:
        f, args, d = self.jobs.pop(0)
        self.ran += 1
        try:
            result = f(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_all(self) -> None:
        while self.jobs:
            self.run_next()


def sync_pool(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


@dataclass
class Attempt:
    host: str
    port: int
    client: RTSPClientProtocol
    deferred: Deferred[object]


class FakeConnector:
    """Records connection attempts; the test accepts or refuses each."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def __call__(self, host: str, port: int, client: RTSPClientProtocol) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.attempts.append(Attempt(host, port, client, d))
        return d

    def accept(self) -> tuple[RTSPClientProtocol, Cam]:
        attempt = self.attempts[-1]
        transport = StringTransport()
        attempt.client.makeConnection(transport)
        attempt.deferred.callback(attempt.client)
        return attempt.client, Cam(attempt.client, transport)

    def refuse(self) -> None:
        self.attempts[-1].deferred.errback(ConnectionRefusedError())


class FakeUdpPort:
    def __init__(self, reactor: FakeReactor, port: int, protocol: Any, interface: str) -> None:
        self.reactor = reactor
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface, self.port)

    def stopListening(self) -> None:
        self.listening = False
        del self.reactor.udp[self.port]

    def deliver(self, data: bytes, host: str = "10.0.0.7", port: int = 40000) -> None:
        self.protocol.datagramReceived(data, (host, port))


class FakeReactor(Clock):
    """A Clock that can "bind" UDP ports: ephemeral ones count up from `next_port`."""

    def __init__(self, next_port: int = 40000) -> None:
        super().__init__()
        self.udp: dict[int, FakeUdpPort] = {}
        self.taken: set[int] = set()  # ports something else holds
        self.next_port = next_port
        self.binds = 0

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUdpPort:
        self.binds += 1
        if port == 0:
            port = self.next_port
            self.next_port += 1
        if port in self.udp or port in self.taken:
            raise CannotListenError(interface, port, OSError("in use"))
        bound = self.udp[port] = FakeUdpPort(self, port, protocol, interface)
        return bound


# A config enabling no listener: makeService builds a service that binds nothing.
NO_LISTENERS = "http.port=0\nhttps.port=0\nws.port=0\nwss.port=0\nrtmp.port=\nrtsp.port=0\n"


def tap_options(*argv: str) -> tap.Options:
    """`twistd wcs` options as parsed from `argv`."""
    opts = tap.Options()
    opts.parseOptions(list(argv))
    return opts
