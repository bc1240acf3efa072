"""The HTTP layer under the REST API and the WebSocket upgrade: a request's headers and body each
have a deadline however slowly they trickle in, a body too large is refused at the headers, a
connection whose output does not drain is dropped, and whatever a client's bytes make the parser
raise closes that connection with a logged reason.

Limits (Twisted's own defaults where they were already sound):
- request line plus headers: at most 16 KiB (`totalHeadersSize`, also the longest line), at most
  100 header fields (Twisted allows 500; browsers send about 20);
- body: at most `max_body` bytes (REST: 64 KiB; the WebSocket upgrade: none at all), refused
  with a 413 as soon as the headers announce more, or as soon as a chunked body grows past it;
- the headers must be complete 10 s after the request's first byte, the body 30 s after the
  headers; an idle keep-alive connection still closes after the site's idle timeout;
- output the client does not read: a connection whose send buffer stays full for 30 s is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from wcs import __version__
from wcs.guard import guarded
from wcs.rest.errors import error_json

log = Logger(namespace="wcs.http")

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
DRAIN_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
# A refused request's answer is small: time enough to deliver it before the connection goes.
REFUSAL_LINGER = 5.0
MAX_HEADER_FIELDS = 100
MAX_HEADER_BYTES = 16384
# No real body length has more digits; `int()` of thousands of digits raises.
_MAX_LENGTH_DIGITS = 18


def peer_of(transport: Any) -> str:
    try:
        address = transport.getPeer()
    except Exception:
        return "?"
    return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"


def error_response(
    status: int, message: str, path: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """A complete `Connection: close` HTTP/1.1 response carrying the WCS error JSON."""
    body = error_json(status, message, path)
    reason = http.RESPONSES.get(status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        *(name + b": " + value for name, value in headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class GuardedChannel(http.HTTPChannel):
    """HTTPChannel with per-request deadlines, body limits and an output drain deadline."""

    site: GuardedSite
    maxHeaders = MAX_HEADER_FIELDS
    totalHeadersSize = MAX_HEADER_BYTES
    MAX_LENGTH = MAX_HEADER_BYTES

    def __init__(self) -> None:
        super().__init__()
        self._request_timer: IDelayedCall | None = None
        self._drain_timer: IDelayedCall | None = None
        self._refused = False
        self._closing = False
        self._peer = "?"

    def connectionMade(self) -> None:
        self._peer = peer_of(self.transport)
        super().connectionMade()

    # -- input -----------------------------------------------------------------------------------
    @guarded
    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if data and self._request_timer is None and not self._handlingRequest:
            # The first byte of a request: its headers must be complete in time, however
            # slowly the rest trickles in (the idle timeout restarts with every byte).
            self._start_request_timer(self.site.header_timeout, "request headers")
        super().dataReceived(data)

    def drop(self, reason: str) -> None:
        """Close this connection at once with a logged reason (the guard's and the timers')."""
        self._refused = True
        self._cancel_timers()
        log.warn("HTTP {peer}: closing connection: {reason}", peer=self._peer, reason=reason)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(400, f"Request headers larger than {self.totalHeadersSize} bytes")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(400, f"Request header line longer than {self.MAX_LENGTH} bytes")

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse(400, f"More than {self.maxHeaders} request header fields")
            return False
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            value = value.strip(b" \t")
            # ASCII digits only; leading zeros do not make a body larger.
            digits = value.lstrip(b"0") or b"0"
            if value.isdigit() and value.isascii() and len(digits) > _MAX_LENGTH_DIGITS:
                self.refuse_body()
                return False
            if value.isdigit() and value.isascii():
                line = name + b": " + digits
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        if self._refused:
            return
        length = self.length  # None: chunked
        if (length is None and self.site.max_body == 0) or (
            length is not None and length > self.site.max_body
        ):
            # Before `100 Continue` and before a byte of the body is read.
            self.refuse_body()
            return
        super().allHeadersReceived()
        if length != 0:
            self._start_request_timer(self.site.body_timeout, "request body")

    def allContentReceived(self) -> None:
        self._cancel_request_timer()
        super().allContentReceived()

    def refuse_body(self) -> None:
        limit = self.site.max_body
        message = f"Request body larger than {limit} bytes" if limit else "Request body not allowed"
        self.refuse(413, message)

    def refuse(self, status: int, message: str) -> None:
        """Answer this request with the WCS error JSON and close; read nothing more."""
        if self._refused:
            return
        self._refused = True
        self._cancel_request_timer()
        path = self._request_path()
        log.warn(
            "HTTP {peer}: refusing request for {path}: {status} {message}",
            peer=self._peer,
            path=path,
            status=status,
            message=message,
        )
        assert self.transport is not None
        self.transport.write(error_response(status, message, path, self.site.refusal_headers))
        # Read nothing more: over TLS the close waits for the client's close_notify, and a
        # client streaming a body would be read (and decrypted) all that while.
        self._networkProducer.pauseProducing()
        self.loseConnection()
        self._cancel_drain_timer()
        self._drain_timer = self.callLater(  # type: ignore[call-arg]
            REFUSAL_LINGER, self.drop, f"refused request not closed within {REFUSAL_LINGER:g} s"
        )

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's one answer to a malformed request line, header or chunk: an empty 400.
        self.refuse(400, "Malformed HTTP request")

    def _request_path(self) -> str:
        target = getattr(self, "_path", None)
        if not isinstance(target, bytes) or not target:
            return "/"
        return target.split(b"?", 1)[0].decode("utf-8", "replace")[:1000]

    # -- deadlines ---------------------------------------------------------------------------------
    def _start_request_timer(self, seconds: float, what: str) -> None:
        self._cancel_request_timer()
        self._request_timer = self.callLater(  # type: ignore[call-arg]
            seconds, self._request_timed_out, seconds, what
        )

    def _request_timed_out(self, seconds: float, what: str) -> None:
        self._request_timer = None
        self.drop(f"{what} not complete within {seconds:g} s")

    def _cancel_request_timer(self) -> None:
        if self._request_timer is not None and self._request_timer.active():
            self._request_timer.cancel()
        self._request_timer = None

    def pauseProducing(self) -> None:
        # The transport's send buffer is full: the client is not reading what we sent.
        if self._drain_timer is None and not self._refused:
            self._drain_timer = self.callLater(self.site.drain_timeout, self._drain_timed_out)
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._cancel_drain_timer()
        super().resumeProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        # Twisted tells a producer to pause only when the transport next says so; over TLS it
        # says so once. A producer that arrives while the client is not reading (the next
        # request of a keep-alive connection, a WebSocket session) starts paused; a pull
        # producer (a static file) through the push adapter Twisted wrapped it in.
        if self._waitingForTransport and self._requestProducer is not None:
            self._requestProducer.pauseProducing()

    def loseConnection(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)  # the drain deadline bounds the close from here
        # A close waits for the send buffer to empty: bounded like any other output.
        super().loseConnection()
        if self._drain_timer is None:
            self._drain_timer = self.callLater(self.site.drain_timeout, self._drain_timed_out)

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        self.drop(f"output not read by the client for {self.site.drain_timeout:g} s")

    def _cancel_drain_timer(self) -> None:
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_request_timer()
        self._cancel_drain_timer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timers()
        super().connectionLost(reason)

    def _protocolUpgradeForWebsockets(self, protocol: IProtocol) -> None:
        # twisted.web.websocket hands the connection over by replacing this channel's
        # dataReceived and connectionLost; the drain deadline stays (the channel is still the
        # transport's producer), so its timer must still be cancelled when the socket closes.
        self._cancel_request_timer()
        super()._protocolUpgradeForWebsockets(protocol)
        websocket_lost = self.connectionLost

        def lost(reason: Failure = connectionDone) -> None:
            self._cancel_timers()
            websocket_lost(reason)

        self.connectionLost = lost  # type: ignore[method-assign]


# The `Server:` header of every answer: ours first, then twisted.web's own.
SERVER_VERSION = b"wcs/" + __version__.encode("ascii", "replace") + b" " + server.version


class LimitedRequest(server.Request):
    """A Request whose body stays in memory within the site's limit, and whose unexpected
    failures answer with the WCS error JSON, never Twisted's HTML page."""

    channel: GuardedChannel
    _body_bytes = 0

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        # process() names the server (twisted.web's module-wide `version`) before any resource
        # runs: ours replaces it for this site alone.
        if isinstance(name, bytes) and name.lower() == b"server":
            value = SERVER_VERSION
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        super().gotLength(0)  # always an in-memory buffer: never more than max_body in it

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > self.channel.site.max_body:
            self.channel.refuse_body()  # a chunked body growing past the limit
            return
        super().handleContentChunk(data)

    def processingFailed(self, reason: Failure) -> Failure:
        log.failure("HTTP {path} failed", reason, path=self.path)
        if self.finished or self._disconnected:
            return reason
        if self.startedWriting:
            self.channel.loseConnection()
            return reason
        path = (self.path or b"").decode("utf-8", "replace")
        body = error_json(500, "Internal Server Error", path)
        self.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()
        return reason


class GuardedSite(server.Site):
    """A Site whose connections are GuardedChannels with these limits."""

    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: IReactorTime | None,
        max_body: int,
        idle_timeout: float = IDLE_TIMEOUT,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        drain_timeout: float = DRAIN_TIMEOUT,
        refusal_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.drain_timeout = drain_timeout
        # Sent with the answers the channel gives itself (e.g. CORS, so a page can read a 413).
        self.refusal_headers = tuple(refusal_headers)
        self.displayTracebacks = False
        self.noisy = False
