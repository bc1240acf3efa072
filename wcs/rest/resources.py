"""REST API resources (`/rest-api/...`) on twisted.web: JSON in, JSON out, WCS error shapes."""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource, Resource

from wcs.config import Settings
from wcs.rest.errors import RestError, error_body
from wcs.rtsp.pull import PullManager, PullUriError
from wcs.snapshot.service import SnapshotService, SnapshotTimeout
from wcs.streams import InvalidName, NameInUse, Stream, StreamNotFound, StreamRegistry
from wcs.web.resources import build_demo

log = Logger(namespace="wcs.rest")

MAX_BODY = 64 * 1024
REST_PREFIX = b"rest-api"

Handler = Callable[[server.Request, dict[str, Any]], Any]


class LimitedRequest(server.Request):
    """A Request that keeps at most MAX_BODY bytes of body in memory and remembers the excess."""

    body_too_large = False
    _body_bytes = 0

    def gotLength(self, length: int | None) -> None:
        super().gotLength(0)  # always an in-memory buffer: we never keep more than MAX_BODY
        if length is not None and length > MAX_BODY:
            self.body_too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class JsonEndpoint(Resource):
    """One REST method: CORS, optional Basic auth, method and body checks, JSON errors."""

    isLeaf = True

    def __init__(self, settings: Settings, handler: Handler, methods: tuple[str, ...] = ("POST",)):
        super().__init__()
        self.settings = settings
        self.handler = handler
        self.methods = methods

    def render(self, request: server.Request) -> bytes | int:
        set_cors(request, self.settings, self.methods)
        method = (request.method or b"").decode("ascii", "replace")
        if request.postpath and any(request.postpath):
            return self._error(request, 404, "Not found")
        if method == "OPTIONS":
            request.setResponseCode(http.OK)
            return b""
        try:
            self._check_auth(request)
            if method not in self.methods:
                request.setHeader(b"Allow", ", ".join(self.methods).encode())
                raise RestError(405, f"Request method '{method}' is not supported")
            body = self._body(request) if method == "POST" else {}
            result = maybeDeferred(self.handler, request, body)
        except RestError as err:
            return self._error(request, err.status, err.message)
        result.addCallbacks(
            self._respond, self._respond_error, callbackArgs=(request,), errbackArgs=(request,)
        )
        return server.NOT_DONE_YET

    def _check_auth(self, request: server.Request) -> None:
        if self.settings.disable_rest_auth:
            return
        expected_user = self.settings.rest_auth_user.encode()
        expected_password = (self.settings.rest_auth_password or "").encode()
        user = request.getUser()
        password = request.getPassword()
        if not (
            hmac.compare_digest(user, expected_user)
            and hmac.compare_digest(password, expected_password)
        ):
            request.setHeader(b"WWW-Authenticate", b'Basic realm="wcs"')
            raise RestError(401, "Unauthorized")

    def _body(self, request: server.Request) -> dict[str, Any]:
        if getattr(request, "body_too_large", False):
            raise RestError(413, f"Request body larger than {MAX_BODY} bytes")
        assert request.content is not None
        raw = request.content.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as err:
            raise RestError(400, f"Malformed JSON: {err}") from None
        if not isinstance(body, dict):
            raise RestError(400, "Request body must be a JSON object")
        return body

    def _respond(self, result: object, request: server.Request) -> None:
        if request.finished or request.channel is None:
            return
        request.setResponseCode(http.OK)
        request.setHeader(b"Content-Type", b"application/json")
        request.write(_json_bytes(result))
        request.finish()

    def _respond_error(self, failure: Failure, request: server.Request) -> None:
        if failure.check(RestError):
            err = failure.value
            assert isinstance(err, RestError)
            status, message = err.status, err.message
        else:
            log.failure("REST {path} failed", failure, path=request.path)
            status, message = 500, "Internal Server Error"
        if request.finished or request.channel is None:
            return
        request.write(self._error(request, status, message))
        request.finish()

    @staticmethod
    def _error(request: server.Request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        path = (request.path or b"").decode("utf-8", "replace")
        return _json_bytes(error_body(status, message, path))


def set_cors(request: server.Request, settings: Settings, methods: tuple[str, ...]) -> None:
    origin = settings.rest_access_control_allow_origin
    if origin:
        request.setHeader(b"Access-Control-Allow-Origin", origin.encode())
        request.setHeader(b"Access-Control-Allow-Headers", b"Content-Type, Authorization")
        request.setHeader(b"Access-Control-Allow-Methods", ", ".join(methods).encode())


class JsonNotFound(Resource):
    """Any unknown path under /rest-api: a JSON 404 (with CORS headers), never an HTML page."""

    isLeaf = True

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def render(self, request: server.Request) -> bytes:
        set_cors(request, self.settings, ("GET", "POST"))
        return JsonEndpoint._error(request, 404, "Not found")


class Branch(JsonNotFound):
    """A path segment whose unknown children answer with a JSON 404."""

    isLeaf = False

    def getChild(self, path: bytes, request: server.Request) -> IResource:
        return JsonNotFound(self.settings)


def _required_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise RestError(400, f"'{key}' is required and must be a non-empty string")
    return value


class StreamApi:
    """Handlers of /rest-api/stream/*."""

    def __init__(
        self,
        registry: StreamRegistry,
        snapshots: SnapshotService,
        pulls: PullManager | None = None,
    ) -> None:
        self.registry = registry
        self.snapshots = snapshots
        self.pulls = pulls

    def snapshot(self, request: server.Request, body: dict[str, Any]) -> Deferred[dict[str, str]]:
        name = _required_str(body, "streamName")
        if self.pulls is not None:
            # As in WCS, a pulled camera's stream may be named by its rtsp:// URI.
            name = self.pulls.resolve(name)
        d = self.snapshots.take(name)

        def encoded(png: bytes) -> dict[str, str]:
            return {"data": base64.b64encode(png).decode("ascii")}

        def translate(failure: Failure) -> NoReturn:
            if failure.check(StreamNotFound):
                raise RestError(404, "Stream not found")
            if failure.check(SnapshotTimeout):
                raise RestError(500, SnapshotTimeout.message)
            failure.raiseException()

        return d.addCallbacks(encoded, translate)

    def _matching(self, body: dict[str, Any]) -> list[Stream]:
        streams = self.registry.all()
        name = body.get("name")
        if name is not None:
            streams = [s for s in streams if s.name == name]
        msid = body.get("mediaSessionId")
        if msid is not None:
            streams = [s for s in streams if s.media_session_id == msid]
        published = body.get("published")
        if published is not None:
            want = published is True or str(published).lower() == "true"
            streams = [s for s in streams if (not s.ended) == want]
        status = body.get("status")
        if status is not None:
            streams = [s for s in streams if s.status == status]
        return streams

    def find(self, request: server.Request, body: dict[str, Any]) -> list[dict[str, object]]:
        found = self._matching(body)
        if not found:
            raise RestError(404, "Stream not found")
        return [s.to_json() for s in found]

    def find_all(self, request: server.Request, body: dict[str, Any]) -> list[dict[str, object]]:
        found = self.registry.all()
        if not found:
            raise RestError(404, "Streams not found")
        return [s.to_json() for s in found]

    def terminate(self, request: server.Request, body: dict[str, Any]) -> dict[str, object]:
        if "mediaSessionId" not in body and "name" not in body:
            raise RestError(400, "'mediaSessionId' or 'name' is required")
        found = self._matching(body)
        if not found:
            raise RestError(404, "Stream not found")
        for stream in found:
            log.info("stream {stream_name} terminated over REST", stream_name=stream.name)
            stream.terminate()
        return {}


class RtspApi:
    """Handlers of /rest-api/rtsp/*: camera pulls."""

    def __init__(self, pulls: PullManager) -> None:
        self.pulls = pulls

    def startup(self, request: server.Request, body: dict[str, Any]) -> dict[str, object]:
        uri = _required_str(body, "uri")
        to_stream = body.get("toStream")
        if to_stream is not None and not isinstance(to_stream, str):
            raise RestError(400, "'toStream' must be a string")
        try:
            pull = self.pulls.startup(uri, to_stream or None)
        except PullUriError as err:
            raise RestError(400, str(err)) from None
        except InvalidName as err:
            raise RestError(400, f"Invalid stream name: {err}") from None
        except NameInUse:
            raise RestError(409, NameInUse.info) from None
        return pull.to_json()

    def find_all(self, request: server.Request, body: dict[str, Any]) -> list[dict[str, object]]:
        pulls = self.pulls.find_all()
        if not pulls:
            raise RestError(404, "Streams not found")
        return [p.to_json() for p in pulls]

    def terminate(self, request: server.Request, body: dict[str, Any]) -> dict[str, object]:
        key = next(
            (body[k] for k in ("uri", "toStream", "localStreamName", "name") if body.get(k)), None
        )
        if not isinstance(key, str):
            raise RestError(400, "'uri' (or 'toStream') is required and must be a string")
        pull = self.pulls.terminate(key)
        if pull is None:
            raise RestError(404, "Stream not found")
        log.info("RTSP pull {stream_name} terminated over REST", stream_name=pull.name)
        return {}


def build_rest_tree(
    settings: Settings,
    registry: StreamRegistry,
    snapshots: SnapshotService,
    pulls: PullManager | None = None,
) -> Resource:
    """The `/rest-api` resource; `/rtsp/*` only with a PullManager."""
    api = StreamApi(registry, snapshots, pulls)
    rest = Branch(settings)
    stream = Branch(settings)
    rest.putChild(b"stream", stream)
    stream.putChild(b"snapshot", JsonEndpoint(settings, api.snapshot))
    stream.putChild(b"find", JsonEndpoint(settings, api.find))
    stream.putChild(b"find_all", JsonEndpoint(settings, api.find_all, ("GET", "POST")))
    stream.putChild(b"terminate", JsonEndpoint(settings, api.terminate))
    if pulls is not None:
        rtsp_api = RtspApi(pulls)
        rtsp = Branch(settings)
        rest.putChild(b"rtsp", rtsp)
        rtsp.putChild(b"startup", JsonEndpoint(settings, rtsp_api.startup))
        rtsp.putChild(b"find_all", JsonEndpoint(settings, rtsp_api.find_all, ("GET", "POST")))
        rtsp.putChild(b"terminate", JsonEndpoint(settings, rtsp_api.terminate))
    return rest


def build_site(
    settings: Settings,
    registry: StreamRegistry,
    snapshots: SnapshotService,
    reactor: Any = None,
    pulls: PullManager | None = None,
) -> server.Site:
    """The HTTP(S) site; idle connections are closed after 60 s on `reactor`'s clock."""
    root = Resource()
    root.putChild(REST_PREFIX, build_rest_tree(settings, registry, snapshots, pulls))
    root.putChild(b"demo", build_demo(settings))
    site = server.Site(root, timeout=60, reactor=reactor)
    site.requestFactory = LimitedRequest
    site.displayTracebacks = False
    return site
