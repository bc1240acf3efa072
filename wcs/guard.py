"""One guard for every protocol's input path: whatever a peer's bytes make our code raise closes
that one connection with a logged reason; nothing reaches the reactor as a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.logger import Logger, LogLevel

log = Logger(namespace="wcs.guard")

MAX_REASON_CHARS = 300

F = TypeVar("F", bound=Callable[..., Any])


class Droppable(Protocol):
    def drop(self, reason: str) -> None:
        """Close this connection (and only this one), logging `reason` once."""


def describe(err: BaseException) -> str:
    """A one-line reason for the log: the exception's type and (shortened) message."""
    text = " ".join(str(err).split())
    if len(text) > MAX_REASON_CHARS:
        text = text[:MAX_REASON_CHARS] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def guarded(method: F) -> F:
    """Wrap a protocol's `dataReceived` (or any handler of peer input) on an object with `drop`.

    Parse errors are expected and already specific; anything else is a bug that input
    triggered, so its traceback goes to the debug log, and the connection is closed either way.
    """

    @functools.wraps(method)
    def wrapper(self: Droppable, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as err:
            if not isinstance(err, ValueError):
                log.failure(
                    "unexpected error handling input on {protocol}",
                    protocol=type(self).__name__,
                    level=LogLevel.debug,
                )
            self.drop(describe(err))
            return None

    return wrapper  # type: ignore[return-value]
