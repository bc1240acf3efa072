"""Fakes shared by the unit tests: hooks answered by hand and a protocol that records."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from wcs.hooks import Refused

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
