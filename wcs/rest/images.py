"""Snapshots at an image URL (`GET /rest-api/stream/snapshot`, go2rtc's `GET /api/frame.jpeg`)
and the image fields of the WCS `POST /rest-api/stream/snapshot` (its plain answer unchanged)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web import http, server

from wcs.directory import StreamNotFound
from wcs.media.encode import BadImageParam, ImageSpec
from wcs.rest.errors import RestError
from wcs.rtsp.pull import PullManager
from wcs.snapshot.service import (
    AWAITING_KEYFRAME,
    DECODE_FAILED,
    NO_VIDEO,
    TIMEOUT,
    UNSUPPORTED_CODEC,
    Snapshot,
    SnapshotService,
    SnapshotTimeout,
)
from wcs.web.spliced import Base64Json, RawBody, SplicedBodyProducer, base64_json

# GET answers by reason (X-Snapshot-Error), and when to try again.
STATUS = {NO_VIDEO: 409, UNSUPPORTED_CODEC: 415, AWAITING_KEYFRAME: 503, DECODE_FAILED: 503}
RETRY_AFTER = {AWAITING_KEYFRAME: b"1", DECODE_FAILED: b"5", TIMEOUT: b"1"}
NOT_FOUND = "stream_not_found"
# The longest maxAge accepted: a day.
MAX_AGE_LIMIT_MS = 86_400_000
# Headers a page of another origin may read (the CORS default lets any page fetch snapshots).
EXPOSED = b"ETag, Last-Modified, X-Frame-Timestamp, X-Frame-Age-Ms, X-Snapshot-Error, Retry-After"
# The POST fields that ask for the image answer (with frameTimestamp).
IMAGE_FIELDS = ("format", "width", "height", "quality", "maxAge")


def local_name(pulls: PullManager | None, name: object) -> object:
    """The stream a request names: as in WCS, a pulled camera's stream may be named by its
    rtsp:// URI. Anything but a non-empty string is passed on for its handler to refuse."""
    if isinstance(name, str) and name and pulls is not None:
        return pulls.resolve(name)
    return name


def query_of(request: server.Request) -> dict[str, str | None]:
    """The first value of each query parameter, as text (400 naming one that is not UTF-8)."""
    out: dict[str, str | None] = {}
    for raw_key, values in (request.args or {}).items():
        try:
            key = raw_key.decode("utf-8")
            out[key] = values[0].decode("utf-8") if values else ""
        except UnicodeDecodeError:
            name = raw_key.decode("utf-8", "replace")
            raise RestError(400, f"{name} is not valid UTF-8") from None
    return out


def max_age_of(value: object) -> int:
    """maxAge in ms (absent: 0, the newest picture at request time)."""
    if value is None:
        return 0
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) > MAX_AGE_LIMIT_MS:
        raise BadImageParam(
            "maxAge", f"maxAge must be an integer from 0 to {MAX_AGE_LIMIT_MS} ms, not {value!r}"
        )
    return int(text)


def spec_of_body(body: Mapping[str, Any]) -> ImageSpec:
    """The image fields of a POST body (numbers or strings)."""
    query: dict[str, str | None] = {}
    for key in ("format", "width", "height", "quality"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise BadImageParam(key, f"{key} must be a string or an integer, not {value!r}")
        query[key] = str(value)
    return ImageSpec.parse(query)


class ImageAnswer:
    """A snapshot answered as an image: validators, frame times, 304 for a known ETag."""

    def __init__(self, snapshot: Snapshot, now_ms: int) -> None:
        self.snapshot = snapshot
        self.now_ms = now_ms

    def write(self, request: server.Request) -> None:
        snap = self.snapshot
        etag = b'"' + snap.tag.encode("ascii") + b'"'
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"ETag", etag)
        request.setHeader(b"Last-Modified", http.datetimeToString(snap.captured_ms // 1000))
        request.setHeader(b"X-Frame-Timestamp", b"%d" % snap.captured_ms)
        request.setHeader(b"X-Frame-Age-Ms", b"%d" % max(0, self.now_ms - snap.captured_ms))
        request.setHeader(b"Access-Control-Expose-Headers", EXPOSED)
        if _matches(request.getHeader(b"if-none-match"), etag):
            request.setResponseCode(http.NOT_MODIFIED)
            request.finish()
            return
        content_type = snap.image.content_type.encode("ascii")
        SplicedBodyProducer(request, RawBody(snap.data), content_type).start()


def _matches(if_none_match: bytes | None, etag: bytes) -> bool:
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix(b"W/") for tag in if_none_match.split(b",")]
    return b"*" in tags or etag in tags


class ImageApi:
    """Handlers of the image endpoints (given to JsonEndpoint, which does CORS, auth, errors)."""

    def __init__(
        self,
        snapshots: SnapshotService,
        pulls: PullManager | None,
        now_ms: Callable[[], int],
    ) -> None:
        self.snapshots = snapshots
        self.pulls = pulls
        self.now_ms = now_ms

    def _name(self, name: str | None, param: str) -> str:
        if not name:
            raise RestError(400, f"'{param}' is required and must be a non-empty string")
        resolved = local_name(self.pulls, name)
        assert isinstance(resolved, str)
        return resolved

    def get_snapshot(self, request: server.Request, body: dict[str, Any]) -> Deferred[ImageAnswer]:
        """GET /rest-api/stream/snapshot?streamName=...&format=&width=&height=&quality=&maxAge="""
        query = query_of(request)
        accept = request.getHeader(b"accept")
        spec = ImageSpec.parse(query, accept.decode("latin-1") if accept is not None else None)
        name = self._name(query.get("streamName"), "streamName")
        return self._image(name, spec, max_age_of(query.get("maxAge")), "image")

    def frame_jpeg(self, request: server.Request, body: dict[str, Any]) -> Deferred[ImageAnswer]:
        """GET /api/frame.jpeg?src=NAME[&width=W][&height=H] (go2rtc's frame URL): a JPEG."""
        query = query_of(request)
        query["format"] = "jpeg"
        spec = ImageSpec.parse(query)
        name = self._name(query.get("src"), "src")
        return self._image(name, spec, max_age_of(query.get("maxAge")), "frame")

    def _image(
        self, name: str, spec: ImageSpec, max_age_ms: int, endpoint: str
    ) -> Deferred[ImageAnswer]:
        d = self.snapshots.take_image(name, spec, max_age_ms, fail_fast=True, endpoint=endpoint)
        return d.addCallbacks(lambda snap: ImageAnswer(snap, self.now_ms()), _image_error)

    def post_snapshot(
        self, request: server.Request, body: dict[str, Any]
    ) -> Deferred[Base64Json] | None:
        """The image fields of POST /rest-api/stream/snapshot; None when it has none (the WCS
        answer, unchanged, is then the caller's)."""
        if not any(body.get(key) is not None for key in IMAGE_FIELDS):
            return None
        spec = spec_of_body(body)
        max_age = max_age_of(body.get("maxAge"))
        raw_name = body.get("streamName")
        name = self._name(raw_name if isinstance(raw_name, str) else None, "streamName")
        d = self.snapshots.take_image(name, spec, max_age, endpoint="rest")

        def encoded(snap: Snapshot) -> Base64Json:
            image = snap.image
            fields = {
                "format": spec.format,
                "width": image.width,
                "height": image.height,
                "frameTimestamp": snap.captured_ms,
            }

            def build(data: str) -> str:
                return json.dumps({"data": data, **fields}, separators=(",", ":"))

            return base64_json(build, image.data)

        return d.addCallbacks(encoded, json_error)


def json_error(failure: Failure) -> NoReturn:
    """The WCS POST snapshot's errors: 404, and its 500 with the reason as "code"."""
    if failure.check(StreamNotFound):
        raise RestError(404, "Stream not found")
    if failure.check(SnapshotTimeout):
        err = failure.value
        assert isinstance(err, SnapshotTimeout)
        raise RestError(500, SnapshotTimeout.message, code=err.code)
    failure.raiseException()


def error_headers(code: str, retry_after: bytes | None = None) -> dict[bytes, bytes]:
    """The headers of an image endpoint's error: why (X-Snapshot-Error, readable by a page of
    another origin), never cached, and when to try again."""
    headers = {
        b"X-Snapshot-Error": code.encode(),
        b"Cache-Control": b"no-store",
        b"Access-Control-Expose-Headers": EXPOSED,
    }
    if retry_after is not None:
        headers[b"Retry-After"] = retry_after
    return headers


def _image_error(failure: Failure) -> NoReturn:
    """The GET endpoints' errors: the status says what to do, X-Snapshot-Error why."""
    if failure.check(StreamNotFound):
        headers = {b"X-Snapshot-Error": NOT_FOUND.encode(), b"Cache-Control": b"no-store"}
        raise RestError(404, "Stream not found", code=NOT_FOUND, headers=headers)
    if failure.check(SnapshotTimeout):
        err = failure.value
        assert isinstance(err, SnapshotTimeout)
        headers = error_headers(err.code, RETRY_AFTER.get(err.code))
        message = SnapshotTimeout.message + (f": {err.detail}" if err.detail else "")
        raise RestError(STATUS.get(err.code, 503), message, code=err.code, headers=headers)
    failure.raiseException()
