"""The REST site as unit tests drive it: `Api` (build_site with a fake snapshot service, a Clock
and a hub) takes raw HTTP bytes, `parse_response` reads the answer; the WCS error shape; and a
transport that reads slowly."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import server

from wcs.config import Settings
from wcs.rest.resources import build_site
from wcs.snapshot.service import SnapshotService
from wcs.streams import StreamHub

ERROR_KEYS = ["exception", "reason", "path", "error", "message", "timestamp", "status"]
EXCEPTION = "com.flashphoner.rest.server.exception."
CREATED_MS = 1640836780816


class FakeSnapshots:
    """take(name) returns a Deferred that the test fires."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[bytes]]] = []
        self.raise_now: Exception | None = None

    def take(self, name: str, *, endpoint: str = "other") -> Deferred[bytes]:
        if self.raise_now is not None:
            raise self.raise_now
        d: Deferred[bytes] = Deferred()
        self.calls.append((name, d))
        return d

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def last(self) -> Deferred[bytes]:
        assert self.calls, "take() was not called"
        return self.calls[-1][1]


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(raw: bytes) -> Response | None:
    """One HTTP/1.1 response, or None while it is incomplete."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    version, code, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers.setdefault(key.strip().lower(), []).append(value.strip())
    if headers.get("transfer-encoding") == ["chunked"]:
        body = b""
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return None
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return None
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    else:
        length = int(headers.get("content-length", ["0"])[0])
        if len(rest) < length:
            return None
        body = rest[:length]
    return Response(int(code), headers, body)


class Connection:
    def __init__(self, site: server.Site) -> None:
        self.transport = StringTransport()
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert self.channel is not None
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes, *, bytewise: bool = False) -> None:
        assert self.channel is not None
        if bytewise:
            for i in range(len(data)):
                self.channel.dataReceived(data[i : i + 1])
        else:
            self.channel.dataReceived(data)

    def response(self) -> Response | None:
        return parse_response(self.transport.value())

    def disconnect(self) -> None:
        assert self.channel is not None
        self.channel.connectionLost(Failure(ConnectionDone()))


def raw_request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost:8081"]
    all_headers = dict(headers or {})
    if body is not None:
        all_headers.setdefault("Content-Type", "application/json")
        all_headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Api:
    """build_site() with a fake snapshot service, a Clock and a hub."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.clock = Clock()
        self.hub = StreamHub(clock_ms=lambda: CREATED_MS)
        self.snapshots = FakeSnapshots()
        self.terminated: list[tuple[str, bool]] = []
        self.site = build_site(
            self.settings, self.hub, cast(SnapshotService, self.snapshots), self.clock
        )
        assert self.site.reactor is self.clock

    def send(self, data: bytes, *, bytewise: bool = False) -> Connection:
        conn = Connection(self.site)
        conn.send(data, bytewise=bytewise)
        return conn

    def start(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> Connection:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        return self.send(raw_request(method, path, raw, headers))

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        response = self.start(method, path, body, headers).response()
        assert response is not None, "no complete response"
        return response


def assert_wcs_error(
    response: Response, status: int, message: str, path: str, code: str | None = None
) -> dict[str, Any]:
    """The WCS error JSON: exactly these keys in this order, reason built from the others; a
    snapshot's machine-readable reason `code` last, when given."""
    assert response.status == status
    assert response.header("Content-Type") == "application/json"
    body = response.json()
    assert isinstance(body, dict)
    assert list(body) == (ERROR_KEYS if code is None else [*ERROR_KEYS, "code"])
    assert body.get("code") == code
    assert body["status"] == status
    assert body["message"] == message
    assert body["path"] == path
    assert body["exception"].startswith(EXCEPTION)
    assert isinstance(body["timestamp"], int)
    assert abs(body["timestamp"] - time.time() * 1000) < 600_000
    assert body["reason"] == (
        f"{body['exception']}, {body['error']}, {body['message']}, "
        f"ts: {body['timestamp']}, path: {body['path']}"
    )
    return body


class SlowReader(StringTransport):
    """A transport with a 64 KiB send buffer: pauses its producer when full, as Twisted's TCP
    transport does, and resumes it when the client has read everything."""

    BUFFER = 65536

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.paused = False
        self.most_buffered = 0
        self.received = b""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.most_buffered = max(self.most_buffered, len(self.value()))
        if self.producer is not None and len(self.value()) > self.BUFFER and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def read_all(self) -> None:
        self.received += self.value()
        self.clear()
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()
