"""WCS-style REST hooks: before a client connects, publishes or plays, the server POSTs JSON to the
operator's web app (`<rest_hook_url>/<method>`) and goes on only on a 2xx answer."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from wcs.limits import LogThrottle
from wcs.web.client import stale_connection

log = Logger(namespace="wcs.hooks")

# What we read of a hook app's answer: a JSON object with a reason, never a large document.
MAX_ANSWER_BYTES = 64 * 1024
MAX_REASON_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
USER_AGENT = b"wcs-rest-hook"


class Refused(Exception):
    """A connect, publish or play was refused; `info` is the text the client is told."""

    def __init__(self, info: str) -> None:
        super().__init__(info)
        self.info = info


class Hooks(Protocol):
    def ask(self, method: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """Fires with the app's answer (a dict) when allowed; fails with Refused otherwise."""

    def tell(self, method: str, body: dict[str, Any]) -> None:
        """Notify the app without waiting (StreamStatusEvent, unPublishStream)."""


class NoHooks:
    """No `rest_hook_url`: everything is allowed and nobody is told."""

    def ask(self, method: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return succeed({})

    def tell(self, method: str, body: dict[str, Any]) -> None:
        pass


class _BoundedBody(TwistedProtocol):
    """Collects at most MAX_ANSWER_BYTES of a response body; the rest is not kept."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.size < MAX_ANSWER_BYTES:
            self.chunks.append(data[: MAX_ANSWER_BYTES - self.size])
        self.size += len(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        # ResponseDone or a cut connection alike: what arrived is the answer (JSON or not).
        self.done.callback(b"".join(self.chunks))


def _read_body(response: IResponse) -> Deferred[bytes]:
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_BoundedBody(done))
    return done


def _answer_object(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):
        return {}
    return answer if isinstance(answer, dict) else {}


def _reason(answer: dict[str, Any], status: int) -> str:
    for key in ("info", "reason", "message"):
        value = answer.get(key)
        if isinstance(value, str) and value.strip():
            text = _CONTROL.sub(" ", value).strip()
            return text[:MAX_REASON_CHARS]
    return f"Refused by the REST hook (HTTP {status})"


@dataclass
class RestHooks:
    """Asks `<base_url>/<method>` with a JSON POST; a 2xx answer allows.

    An app that cannot be reached or does not answer within `timeout` seconds refuses, unless
    `fail_open`. Connections to the app are pooled (one app serves every request).
    """

    reactor: IReactorTime
    base_url: str
    timeout: float
    fail_open: bool = False
    agent: IAgent | None = None
    _notify_failures: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        # An app that is down fails every request: its warnings are rate-limited.
        self._unavailable = LogThrottle(self.reactor, log)
        if self.agent is None:
            pool = HTTPConnectionPool(self.reactor, persistent=True)
            pool.maxPersistentPerHost = 8
            self.agent = Agent(self.reactor, pool=pool, connectTimeout=self.timeout)

    def _post(self, method: str, body: dict[str, Any]) -> Deferred[tuple[int, dict[str, Any]]]:
        assert self.agent is not None
        payload = json.dumps(body, separators=(",", ":"), default=str).encode("utf-8")
        headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [USER_AGENT]})
        url = f"{self.base_url}/{method}".encode()
        agent = self.agent

        def send() -> Deferred[IResponse]:
            return agent.request(b"POST", url, headers, FileBodyProducer(BytesIO(payload)))

        def again(failure: Failure) -> Deferred[IResponse]:
            # A pooled connection the app had closed: the request never reached the app.
            if not stale_connection(failure):
                failure.raiseException()  # cancelled by the timeout, or another fault
            return send()

        d = send().addErrback(again)

        def read(response: IResponse) -> Deferred[tuple[int, dict[str, Any]]]:
            code = response.code
            return _read_body(response).addCallback(lambda raw: (code, _answer_object(raw)))

        answered = d.addCallback(read)
        answered.addTimeout(self.timeout, self.reactor)
        return answered

    def ask(self, method: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        def decided(result: tuple[int, dict[str, Any]]) -> dict[str, Any]:
            status, answer = result
            if 200 <= status < 300:
                return answer
            reason = _reason(answer, status)
            log.info(
                "REST hook {method} refused {name}: {reason}",
                method=method,
                name=body.get("name", body.get("sessionId", "")),
                reason=reason,
            )
            raise Refused(reason)

        def unreachable(failure: Failure) -> dict[str, Any]:
            self._unavailable.warn(
                "REST hook {method} unavailable ({why}); {outcome}",
                method=method,
                why=_why(failure),
                outcome="allowed (rest_hook_fail_open)" if self.fail_open else "refused",
            )
            if self.fail_open:
                return {}
            raise Refused("REST hook unavailable")

        return self._post(method, body).addCallbacks(decided, unreachable)

    def tell(self, method: str, body: dict[str, Any]) -> None:
        def failed(failure: Failure) -> None:
            self._notify_failures += 1
            self._unavailable.warn(
                "REST hook {method} notification failed: {why} ({count} failed so far)",
                method=method,
                why=_why(failure),
                count=self._notify_failures,
            )

        self._post(method, body).addErrback(failed)


def _why(failure: Failure) -> str:
    """Why the app gave no answer, for the log (addTimeout fails with defer.TimeoutError)."""
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return "timed out"
    return failure.getErrorMessage() or type(failure.value).__name__
