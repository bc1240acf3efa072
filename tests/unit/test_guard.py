"""wcs.guard: input that makes a protocol raise closes that connection with one logged reason."""

from __future__ import annotations

import pytest
from twisted.logger import LogEvent, LogLevel

from wcs.guard import MAX_REASON_CHARS, describe, guarded


class Proto:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.dropped: list[str] = []
        self.received: list[bytes] = []

    def drop(self, reason: str) -> None:
        self.dropped.append(reason)

    @guarded
    def dataReceived(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.received.append(data)


def test_no_error_passes_through() -> None:
    proto = Proto(None)
    proto.dataReceived(b"x")
    assert (proto.received, proto.dropped) == ([b"x"], [])


def test_parse_error_drops_with_its_reason_and_no_traceback(log_events: list[LogEvent]) -> None:
    proto = Proto(ValueError("bad chunk header"))
    proto.dataReceived(b"x")
    assert proto.dropped == ["ValueError: bad chunk header"]
    assert not [e for e in log_events if "log_failure" in e]


@pytest.mark.parametrize(
    "error", [RecursionError("maximum recursion depth exceeded"), IndexError("list index")]
)
def test_unexpected_error_drops_and_logs_traceback_at_debug(
    error: Exception, log_events: list[LogEvent]
) -> None:
    proto = Proto(error)
    proto.dataReceived(b"x")
    assert proto.dropped == [f"{type(error).__name__}: {error}"]
    failures = [e for e in log_events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_level"] is LogLevel.debug


def test_reason_is_one_short_line() -> None:
    reason = describe(ValueError("a\nb " + "x" * 5000))
    assert "\n" not in reason
    assert reason.startswith("ValueError: a b x")
    assert len(reason) <= len("ValueError: ") + MAX_REASON_CHARS + 3
    assert describe(KeyError()) == "KeyError"
