"""Fakes shared by the unit tests: hooks answered by hand and a protocol that records."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from wcs.directory import LocalDirectory, NameInUse
from wcs.hooks import Refused
from wcs.media.units import MediaUnit
from wcs.rtsp.pull import Pull, PullManager
from wcs.streams import Reader, Stream, StreamHub

T = TypeVar("T")

CLOSED = Failure(ConnectionDone())


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
