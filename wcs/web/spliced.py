"""A JSON text whose one large string is the base64 of shared bytes (a snapshot's PNG), produced
in chunks: a slow reader holds a reference to the bytes and one chunk, never a private copy of
the whole text. The chunks joined are exactly what `json.dumps` of the whole object gives.
`SplicedBodyProducer` writes such a body (or raw image bytes) as the client reads."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IPushProducer
from twisted.web import http, server
from zope.interface import implementer

# Raw bytes per chunk (a multiple of 3, so chunks encode without padding): 64 KiB of base64,
# the size of a transport's write buffer.
CHUNK_RAW = 48 * 1024


@dataclass(frozen=True, eq=False)
class Base64Json:
    """`prefix` + base64(`data`) + `suffix`: one JSON text, never joined in memory."""

    prefix: bytes
    data: bytes
    suffix: bytes

    def __len__(self) -> int:
        return len(self.prefix) + 4 * ((len(self.data) + 2) // 3) + len(self.suffix)

    def chunks(self, size: int = CHUNK_RAW) -> Iterator[bytes]:
        assert size % 3 == 0, "base64 chunks must not need padding"
        if self.prefix:
            yield self.prefix
        view = memoryview(self.data)
        for start in range(0, len(view), size):
            yield base64.b64encode(view[start : start + size])
        if self.suffix:
            yield self.suffix

    def joined(self) -> bytes:
        """The whole text at once (tests, and peers that cannot take it in pieces)."""
        return b"".join(self.chunks())


def base64_json(build: Callable[[str], str], data: bytes) -> Base64Json:
    """Splice base64(`data`) into the JSON text `build(placeholder)` where the string
    `placeholder` stands (`build` is e.g. `lambda p: json.dumps({"data": p})`).

    The placeholder is random and starts with a control character, so no client-supplied
    string elsewhere in the object can be mistaken for it.
    """
    placeholder = "\x00" + secrets.token_hex(16)
    quoted = json.dumps(placeholder)
    text = build(placeholder)
    before, found, after = text.partition(quoted)
    if not found or quoted in after:
        raise ValueError("the JSON text must hold the placeholder string exactly once")
    return Base64Json((before + '"').encode("utf-8"), data, ('"' + after).encode("utf-8"))


class ChunkedBody(Protocol):
    """A response body written a chunk at a time (Base64Json, RawBody)."""

    def __len__(self) -> int: ...

    def chunks(self) -> Iterator[bytes]: ...


class RawBody:
    """Bytes written as they are (an image), in chunks."""

    CHUNK = 64 * 1024

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def chunks(self) -> Iterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), self.CHUNK):
            yield bytes(view[start : start + self.CHUNK])


@implementer(IPushProducer)
class SplicedBodyProducer:
    """Writes a response chunk by chunk while the client reads: a slow client holds the shared
    picture and one chunk, and the channel's drain deadline drops one that stops."""

    def __init__(
        self,
        request: server.Request,
        body: ChunkedBody,
        content_type: bytes = b"application/json",
        status: int = http.OK,
    ) -> None:
        self.request = request
        self._chunks = body.chunks()
        self._length = len(body)
        self._content_type = content_type
        self._status = status
        self._paused = False
        self._done = False

    def start(self) -> None:
        request = self.request
        request.setResponseCode(self._status)
        request.setHeader(b"Content-Type", self._content_type)
        request.setHeader(b"Content-Length", b"%d" % self._length)
        request.notifyFinish().addErrback(lambda _: self.stopProducing())
        request.registerProducer(self, True)  # may pause us at once: the client is not reading
        self._produce()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def _produce(self) -> None:
        # A write may pause us at once (the transport's buffer is full): check every time.
        while not self._paused and not self._done:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
                self.request.unregisterProducer()
                self.request.finish()
                return
            self.request.write(chunk)

    def stopProducing(self) -> None:
        self._done = True
        self._chunks = iter(())
