"""wcs.hooks: the REST hook client's decisions, with a fake agent on a Clock (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from tests.unit.fakes import refused_info
from wcs.hooks import MAX_ANSWER_BYTES, MAX_REASON_CHARS, NoHooks, Refused, RestHooks


class FakeResponse:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body

    def deliverBody(self, protocol: Any) -> None:
        for i in range(0, len(self.body), 1000):
            protocol.dataReceived(self.body[i : i + 1000])
        protocol.connectionLost(Failure(ResponseDone()))


@implementer(IAgent)
class FakeAgent:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.requests: list[tuple[bytes, bytes, dict[str, Any]]] = []

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        payload = bodyProducer._inputFile.read() if bodyProducer is not None else b""
        self.requests.append((method, uri, json.loads(payload)))
        if isinstance(self.outcome, Deferred):
            return self.outcome
        if isinstance(self.outcome, Exception):
            return fail(self.outcome)
        return succeed(self.outcome)


def hooks(outcome: Any, *, fail_open: bool = False) -> tuple[RestHooks, FakeAgent, Clock]:
    clock = Clock()
    agent = FakeAgent(outcome)
    return RestHooks(clock, "http://hooks.test/app", 2.0, fail_open, agent=agent), agent, clock


def refusal(d: Deferred[Any]) -> str:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures, "expected a refusal"
    assert failures[0].check(Refused)
    return refused_info(failures[0])


def test_no_hooks_allow_everything() -> None:
    result: list[Any] = []
    NoHooks().ask("publishStream", {"name": "a"}).addCallback(result.append)
    assert result == [{}]


@pytest.mark.parametrize("code", [200, 201, 204])
def test_a_2xx_answer_allows_and_returns_the_app_object(code: int) -> None:
    h, agent, _ = hooks(FakeResponse(code, b'{"restClientConfig": {}}'))
    result: list[Any] = []
    h.ask("connect", {"sessionId": "/1.2.3.4:5/6.7.8.9:10"}).addCallback(result.append)
    assert result == [{"restClientConfig": {}}]
    assert agent.requests == [
        (b"POST", b"http://hooks.test/app/connect", {"sessionId": "/1.2.3.4:5/6.7.8.9:10"})
    ]


def test_a_refusal_passes_the_apps_reason_on() -> None:
    h, _, _ = hooks(FakeResponse(403, b'{"info": "Bad\\r\\ntoken"}'))
    assert refusal(h.ask("publishStream", {"name": "cam"})) == "Bad token"


def test_a_refusal_without_a_reason_names_the_status() -> None:
    h, _, _ = hooks(FakeResponse(500, b"<html>oops</html>"))
    assert refusal(h.ask("playStream", {})) == "Refused by the REST hook (HTTP 500)"


def test_reasons_and_answers_are_bounded() -> None:
    h, _, _ = hooks(FakeResponse(403, json.dumps({"reason": "x" * 5000}).encode()))
    assert refusal(h.ask("connect", {})) == "x" * MAX_REASON_CHARS
    # An answer larger than the bound is cut, so it is no JSON object: an allow with {}.
    big = b'{"a": "' + b"y" * (2 * MAX_ANSWER_BYTES) + b'"}'
    h, _, _ = hooks(FakeResponse(200, big))
    result: list[Any] = []
    h.ask("connect", {}).addCallback(result.append)
    assert result == [{}]


@pytest.mark.parametrize("fail_open", [False, True])
def test_an_app_that_is_down(fail_open: bool) -> None:
    h, _, _ = hooks(ConnectionRefusedError(), fail_open=fail_open)
    d = h.ask("publishStream", {"name": "cam"})
    if fail_open:
        result: list[Any] = []
        d.addCallback(result.append)
        assert result == [{}]
    else:
        assert refusal(d) == "REST hook unavailable"


@pytest.mark.parametrize("fail_open", [False, True])
def test_an_app_that_is_too_slow(fail_open: bool, log_events: list[Any]) -> None:
    pending: Deferred[Any] = Deferred()
    h, _, clock = hooks(pending, fail_open=fail_open)
    d = h.ask("publishStream", {"name": "cam"})
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    clock.advance(1.9)
    assert outcome == []
    clock.advance(0.2)
    assert len(outcome) == 1
    if fail_open:
        assert outcome == [{}]
    else:
        assert isinstance(outcome[0], Failure) and outcome[0].check(Refused)
        assert refused_info(outcome[0]) == "REST hook unavailable"
    lines = [e for e in log_events if "unavailable" in e.get("log_format", "")]
    assert [e["why"] for e in lines] == ["timed out"]


def test_a_notification_that_times_out_says_so(log_events: list[Any]) -> None:
    h, _, clock = hooks(Deferred())
    h.tell("unPublishStream", {"name": "cam"})
    clock.advance(2.1)
    lines = [e for e in log_events if "notification failed" in e.get("log_format", "")]
    assert [e["why"] for e in lines] == ["timed out"]


def test_tell_does_not_wait_and_logs_failures_rate_limited(log_events: list[Any]) -> None:
    h, agent, clock = hooks(ConnectionRefusedError())
    for _ in range(5):
        h.tell("unPublishStream", {"name": "cam"})
    assert len(agent.requests) == 5
    lines = [e for e in log_events if "notification failed" in e.get("log_format", "")]
    assert [e["count"] for e in lines] == [1]  # the first at once, the rest counted
    clock.advance(11)
    lines = [e for e in log_events if "notification failed" in e.get("log_format", "")]
    assert [(e["count"], e.get("throttled")) for e in lines] == [(1, None), (5, 4)]


def test_an_app_that_is_down_is_logged_rate_limited(log_events: list[Any]) -> None:
    h, _, clock = hooks(ConnectionRefusedError())
    for _ in range(20):
        h.ask("publishStream", {"name": "cam"}).addErrback(lambda f: None)
    lines = [e for e in log_events if "unavailable" in e.get("log_format", "")]
    assert len(lines) == 1 and lines[0]["outcome"] == "refused"
    clock.advance(11)
    lines = [e for e in log_events if "unavailable" in e.get("log_format", "")]
    assert len(lines) == 2 and lines[1]["throttled"] == 19


def test_a_pooled_connection_the_app_closed_is_retried_once_on_a_new_one() -> None:
    """An HTTP/1.0 app (Python's http.server) closes after each answer; Twisted's pool keeps
    the connection, and the next POST on it fails before reaching the app."""
    closed = ResponseNeverReceived([Failure(ConnectionDone())])
    outcomes: list[Any] = [closed, FakeResponse(200, b"{}")]
    h, agent, _ = hooks(None)
    agent.request = lambda *a, **k: (  # type: ignore[method-assign]
        fail(o) if isinstance(o := outcomes.pop(0), Exception) else succeed(o)
    )
    result: list[Any] = []
    h.ask("publishStream", {"name": "cam"}).addCallback(result.append)
    assert result == [{}] and outcomes == []
    # Twice in a row: the app is gone, and the ask is refused (no endless retrying).
    outcomes[:] = [closed, closed, FakeResponse(200, b"{}")]
    assert refusal(h.ask("publishStream", {"name": "cam"})) == "REST hook unavailable"
    assert len(outcomes) == 1


def test_an_app_too_slow_is_not_asked_twice() -> None:
    def cancel(d: Deferred[Any]) -> None:
        # As Twisted's HTTP client fails a request cancelled before its answer.
        d.errback(ResponseNeverReceived([Failure(CancelledError())]))

    h, agent, clock = hooks(Deferred(cancel))  # never answers
    d = h.ask("publishStream", {"name": "cam"})
    clock.advance(2.0)
    assert refusal(d) == "REST hook unavailable"
    assert len(agent.requests) == 1
