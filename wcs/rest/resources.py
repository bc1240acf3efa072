"""REST API resources (`/rest-api/...`) on twisted.web: JSON in, JSON out, WCS error shapes."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource, Resource

from wcs import __version__
from wcs.config import Settings
from wcs.directory import InvalidName, NameInUse
from wcs.guard import describe
from wcs.limits import LogThrottle
from wcs.rest.errors import RestError, error_json
from wcs.rest.forward import Forwarded, Remote
from wcs.rest.health import Health, Readiness, Ready
from wcs.rest.images import ImageAnswer, ImageApi, json_error, local_name, query_of
from wcs.rest.views import StreamViews, pull_json
from wcs.rtsp.pull import PullManager, PullUriError
from wcs.snapshot.service import SnapshotService
from wcs.streams import Stream, StreamHub
from wcs.web import jsonin
from wcs.web.channel import GuardedSite, peer_of
from wcs.web.origin import OriginPolicy
from wcs.web.resources import build_demo
from wcs.web.spliced import Base64Json, SplicedBodyProducer, base64_json

log = Logger(namespace="wcs.rest")

MAX_BODY = 64 * 1024
REST_PREFIX = b"rest-api"
# The OpenAPI 3.1 document of this API, package data beside this module.
OPENAPI_FILE = "openapi.json"
# A wrong password is answered after this long (the reactor serves others meanwhile), so one
# connection guesses at most once a second; failures are logged at most once per interval.
LOGIN_FAILURE_DELAY = 1.0
LOGIN_FAILURE_LOG_INTERVAL = 10.0

Handler = Callable[[server.Request, dict[str, Any]], Any]


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _send(request: server.Request, status: int, body: bytes) -> None:
    """Finish a NOT_DONE_YET request with a JSON body, unless its client has gone."""
    if request.finished or request.channel is None:
        return
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


class LoginThrottle:
    """Failed REST logins of one server: each answered late, logged rate-limited."""

    def __init__(
        self,
        clock: IReactorTime,
        delay: float = LOGIN_FAILURE_DELAY,
        log_interval: float = LOGIN_FAILURE_LOG_INTERVAL,
    ) -> None:
        self.clock = clock
        self.delay = delay
        self.failures = 0
        self._log = LogThrottle(clock, log, log_interval)

    def answer_later(self, request: server.Request, answer: Callable[[], None]) -> int:
        """Count and log the failure; run `answer` after the delay (not if the client left)."""
        self._failed(request)
        call = self.clock.callLater(self.delay, answer)

        def gone(_: object) -> None:
            if call.active():
                call.cancel()

        request.notifyFinish().addErrback(gone)
        return server.NOT_DONE_YET

    def _failed(self, request: server.Request) -> None:
        self.failures += 1
        self._log.warn(
            "REST: failed login from {peer} (user {user!r})",
            peer=peer_of(request.channel.transport if request.channel else None),
            user=request.getUser().decode("utf-8", "replace")[:100],
        )


class BadLogin(RestError):
    """Credentials were sent and are wrong: answered after LoginThrottle's delay."""

    def __init__(self) -> None:
        super().__init__(401, "Unauthorized")


class Doors:
    """What every endpoint of one server shares: the login throttle and the origin rule."""

    def __init__(self, settings: Settings, clock: IReactorTime) -> None:
        self.logins = LoginThrottle(clock)
        self.origins = OriginPolicy.from_settings(settings)


class JsonEndpoint(Resource):
    """One REST method: CORS, optional Basic auth, method and body checks, JSON errors.

    `changes_state` endpoints also refuse a browser page of a foreign origin (see OriginPolicy):
    with the default CORS `*`, any page could otherwise POST to them as a simple request.
    `public` endpoints need no credentials even with REST auth on.
    """

    isLeaf = True

    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        methods: tuple[str, ...] = ("POST",),
        *,
        doors: Doors,
        changes_state: bool = False,
        public: bool = False,
    ):
        super().__init__()
        self.settings = settings
        self.handler = handler
        self.methods = methods
        self.doors = doors
        self.changes_state = changes_state
        self.public = public

    def render(self, request: server.Request) -> bytes | int:
        set_cors(request, self.settings, self.methods)
        method = (request.method or b"").decode("ascii", "replace")
        if request.postpath and any(request.postpath):
            return self._error(request, 404, "Not found")
        if method == "OPTIONS":
            request.setResponseCode(http.OK)
            return b""
        try:
            self._check_origin(request)
            self._check_auth(request)
            if method not in self.methods:
                request.setHeader(b"Allow", ", ".join(self.methods).encode())
                raise RestError(405, f"Request method '{method}' is not supported")
            body = self._body(request) if method == "POST" else {}
            result = maybeDeferred(self.handler, request, body)
        except BadLogin:
            return self.doors.logins.answer_later(
                request, lambda: _send(request, 401, self._error(request, 401, "Unauthorized"))
            )
        except RestError as err:
            return self._rest_error(request, err)
        except Exception:
            # A bug, whatever the input: the WCS 500 JSON, never Twisted's HTML page.
            log.failure("REST {path} failed", path=request.path)
            return self._error(request, 500, "Internal Server Error")
        result.addCallbacks(
            self._respond, self._respond_error, callbackArgs=(request,), errbackArgs=(request,)
        )
        return server.NOT_DONE_YET

    def _check_origin(self, request: server.Request) -> None:
        if not self.changes_state:
            return
        host = request.getHeader(b"host")
        for origin in request.requestHeaders.getRawHeaders(b"origin") or []:
            refusal = self.doors.origins.refusal(origin, host)
            if refusal is not None:
                log.warn(
                    "REST {path}: refused a request from {peer}: {refusal}",
                    path=(request.path or b"").decode("utf-8", "replace"),
                    peer=peer_of(request.channel.transport if request.channel else None),
                    refusal=refusal,
                )
                raise RestError(403, f"{refusal} for this method (see ws_allowed_origins)")

    def _check_auth(self, request: server.Request) -> None:
        if not self.public:
            check_rest_auth(self.settings, request)

    def _body(self, request: server.Request) -> dict[str, Any]:
        # The channel has refused any body over MAX_BODY before reading it.
        assert request.content is not None
        raw = request.content.read()
        if not raw.strip():
            return {}
        try:
            body = jsonin.loads(raw)
        except ValueError as err:
            raise RestError(400, f"Malformed JSON: {err}") from None
        if not isinstance(body, dict):
            raise RestError(400, "Request body must be a JSON object")
        return body

    def _respond(self, result: object, request: server.Request) -> None:
        if request.finished or request.channel is None:
            return
        if isinstance(result, Base64Json):
            SplicedBodyProducer(request, result).start()
            return
        if isinstance(result, ImageAnswer | Forwarded):
            result.write(request)
            return
        _send(request, http.OK, _json_bytes(result))

    def _respond_error(self, failure: Failure, request: server.Request) -> None:
        if failure.check(RestError):
            err = failure.value
            assert isinstance(err, RestError)
            if request.finished or request.channel is None:
                return
            _send(request, err.status, self._rest_error(request, err))
            return
        if isinstance(failure.value, ValueError):
            # A parser refused something of the request (as wcs.guard has it: expected, and
            # specific): the client's error, not ours.
            status, message = 400, str(failure.value) or "Bad request"
            log.warn(
                "REST {path}: bad request: {reason}",
                path=(request.path or b"").decode("utf-8", "replace"),
                reason=describe(failure.value),
            )
        else:
            log.failure("REST {path} failed", failure, path=request.path)
            status, message = 500, "Internal Server Error"
        if request.finished or request.channel is None:
            return
        _send(request, status, self._error(request, status, message))

    @staticmethod
    def _error(
        request: server.Request, status: int, message: str, code: str | None = None
    ) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        path = (request.path or b"").decode("utf-8", "replace")
        return error_json(status, message, path, code)

    @classmethod
    def _rest_error(cls, request: server.Request, err: RestError) -> bytes:
        for name, value in err.headers.items():
            request.setHeader(name, value)
        return cls._error(request, err.status, err.message, err.code)


def check_rest_auth(settings: Settings, request: server.Request) -> None:
    """The REST API's Basic auth (when on): raises BadLogin for wrong credentials, a 401
    RestError (with the challenge header set) for none."""
    if settings.disable_rest_auth:
        return
    expected_user = settings.rest_auth_user.encode()
    expected_password = (settings.rest_auth_password or "").encode()
    user = request.getUser()
    password = request.getPassword()
    if not (
        hmac.compare_digest(user, expected_user)
        and hmac.compare_digest(password, expected_password)
    ):
        request.setHeader(b"WWW-Authenticate", b'Basic realm="wcs"')
        if request.getHeader(b"authorization") is not None:
            raise BadLogin()  # a guess: answered late
        raise RestError(401, "Unauthorized")  # no credentials yet: the usual challenge


def set_cors(request: server.Request, settings: Settings, methods: tuple[str, ...]) -> None:
    origin = settings.rest_access_control_allow_origin
    if origin:
        request.setHeader(b"Access-Control-Allow-Origin", origin.encode())
        request.setHeader(
            b"Access-Control-Allow-Headers", b"Content-Type, Authorization, If-None-Match"
        )
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
        hub: StreamHub,
        snapshots: SnapshotService,
        pulls: PullManager | None = None,
        views: StreamViews | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        remote: Remote | None = None,
    ) -> None:
        self.hub = hub
        self.snapshots = snapshots
        self.pulls = pulls
        self.views = views if views is not None else StreamViews()
        self.images = ImageApi(snapshots, pulls, now_ms)
        # A stream another node of the cluster owns: its requests go there.
        self.remote = remote if remote is not None else Remote.local_only()

    def snapshot(self, request: server.Request, body: dict[str, Any]) -> Any:
        """POST: the WCS snapshot (with image fields: see ImageApi.post_snapshot); GET: the
        picture itself (ImageApi.get_snapshot). Of another node's stream: that node's answer."""
        if request.method == b"GET":
            name = query_of(request).get("streamName")
        else:
            name = body.get("streamName")
        return self.remote.serve(
            request, local_name(self.pulls, name), lambda: self._snapshot(request, body)
        )

    def _snapshot(
        self, request: server.Request, body: dict[str, Any]
    ) -> Deferred[Base64Json] | Deferred[ImageAnswer]:
        if request.method == b"GET":
            return self.images.get_snapshot(request, body)
        posted = self.images.post_snapshot(request, body)
        if posted is not None:
            return posted
        name = _required_str(body, "streamName")
        if self.pulls is not None:
            # As in WCS, a pulled camera's stream may be named by its rtsp:// URI.
            name = self.pulls.resolve(name)
        d = self.snapshots.take(name, endpoint="rest")

        def encoded(png: bytes) -> Base64Json:
            # {"data": "<base64>"}, streamed from the shared PNG rather than joined here.
            return base64_json(lambda data: json.dumps({"data": data}, separators=(",", ":")), png)

        return d.addCallbacks(encoded, json_error)

    def _matching(self, body: dict[str, Any]) -> list[Stream]:
        streams = self.hub.all()
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

    def _here_or_owner(
        self, request: server.Request, body: dict[str, Any], local: Callable[[], Any]
    ) -> Any:
        """`local()` when a stream here matches; else the owner's answer (by name, or by
        mediaSessionId), else `local()` again (its 404)."""
        if self._matching(body):
            return local()
        if "name" in body:
            return self.remote.serve(request, body["name"], local)
        return self.remote.serve_session(request, body.get("mediaSessionId"), local)

    def find(self, request: server.Request, body: dict[str, Any]) -> Any:
        return self._here_or_owner(request, body, lambda: self._find(body))

    def _find(self, body: dict[str, Any]) -> list[dict[str, object]]:
        found = self._matching(body)
        if not found:
            raise RestError(404, "Stream not found")
        return [self.views.stream_json(s) for s in found]

    def find_all(self, request: server.Request, body: dict[str, Any]) -> Any:
        here = [self.views.stream_json(s) for s in self.hub.all()]
        forwarder = self.remote.applies(request)
        if forwarder is None:
            return self._all_found(here, [])
        d = forwarder.gather("/rest-api/stream/find_all", {})
        return d.addCallback(lambda others: self._all_found(here, others))

    @staticmethod
    def _all_found(here: list[dict[str, object]], others: list[object]) -> list[dict[str, object]]:
        """This node's streams, then the other nodes' (each once, by mediaSessionId)."""
        seen = {s.get("mediaSessionId") for s in here}
        merged = list(here)
        for item in others:
            if isinstance(item, dict) and item.get("mediaSessionId") not in seen:
                seen.add(item.get("mediaSessionId"))
                merged.append(item)
        if not merged:
            raise RestError(404, "Streams not found")
        return merged

    def terminate(self, request: server.Request, body: dict[str, Any]) -> Any:
        if "mediaSessionId" not in body and "name" not in body:
            raise RestError(400, "'mediaSessionId' or 'name' is required")
        return self._here_or_owner(request, body, lambda: self._terminate(body))

    def _terminate(self, body: dict[str, Any]) -> dict[str, object]:
        found = self._matching(body)
        if not found:
            raise RestError(404, "Stream not found")
        for stream in found:
            log.info("stream {stream_name} terminated over REST", stream_name=stream.name)
            stream.terminate()
        return {}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the REST API (`wcs/rest/openapi.json`)."""
    raw = resources.files(__package__).joinpath(OPENAPI_FILE).read_bytes()
    document: dict[str, Any] = json.loads(raw)
    return document


class RtspApi:
    """Handlers of /rest-api/rtsp/*: camera pulls."""

    def __init__(self, pulls: PullManager) -> None:
        self.pulls = pulls

    def startup(self, request: server.Request, body: dict[str, Any]) -> Deferred[dict[str, object]]:
        uri = _required_str(body, "uri")
        to_stream = body.get("toStream")
        if to_stream is not None and not isinstance(to_stream, str):
            raise RestError(400, "'toStream' must be a string")

        def refused(failure: Failure) -> dict[str, object]:
            err = failure.trap(PullUriError, InvalidName, NameInUse)
            if err is PullUriError:
                raise RestError(400, failure.getErrorMessage())
            if err is InvalidName:
                raise RestError(400, f"Invalid stream name: {failure.getErrorMessage()}")
            raise RestError(409, NameInUse.info)

        started = self.pulls.startup(uri, to_stream or None)
        return started.addCallbacks(pull_json, refused)

    def find_all(self, request: server.Request, body: dict[str, Any]) -> list[dict[str, object]]:
        pulls = self.pulls.find_all()
        if not pulls:
            raise RestError(404, "Streams not found")
        return [pull_json(p) for p in pulls]

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
    hub: StreamHub,
    snapshots: SnapshotService,
    clock: IReactorTime,
    pulls: PullManager | None = None,
    views: StreamViews | None = None,
    doors: Doors | None = None,
    remote: Remote | None = None,
) -> Resource:
    """The `/rest-api` resource; `/rtsp/*` only with a PullManager; with `remote`, requests
    for another node's stream are forwarded there."""
    doors = doors if doors is not None else Doors(settings, clock)
    api = StreamApi(hub, snapshots, pulls, views, remote=remote)

    def endpoint(
        handler: Handler, methods: tuple[str, ...] = ("POST",), changes_state: bool = False
    ) -> JsonEndpoint:
        return JsonEndpoint(settings, handler, methods, doors=doors, changes_state=changes_state)

    rest = Branch(settings)
    stream = Branch(settings)
    rest.putChild(b"stream", stream)
    stream.putChild(b"snapshot", endpoint(api.snapshot, ("GET", "POST")))
    stream.putChild(b"find", endpoint(api.find))
    stream.putChild(b"find_all", endpoint(api.find_all, ("GET", "POST")))
    stream.putChild(b"terminate", endpoint(api.terminate, changes_state=True))
    if pulls is not None:
        rtsp_api = RtspApi(pulls)
        rtsp = Branch(settings)
        rest.putChild(b"rtsp", rtsp)
        rtsp.putChild(b"startup", endpoint(rtsp_api.startup, changes_state=True))
        rtsp.putChild(b"find_all", endpoint(rtsp_api.find_all, ("GET", "POST")))
        rtsp.putChild(b"terminate", endpoint(rtsp_api.terminate, changes_state=True))
    rest.putChild(b"version", endpoint(lambda request, body: {"version": __version__}, ("GET",)))
    # The document names no secret and tools read it before they have credentials: no auth.
    document = openapi_document()
    rest.putChild(
        OPENAPI_FILE.encode(),
        JsonEndpoint(settings, lambda request, body: document, ("GET",), doors=doors, public=True),
    )
    return rest


def build_api_tree(
    settings: Settings,
    snapshots: SnapshotService,
    doors: Doors,
    pulls: PullManager | None = None,
    remote: Remote | None = None,
) -> Resource:
    """`/api`: go2rtc's frame URL (`/api/frame.jpeg?src=NAME`), under the REST API's auth."""
    images = ImageApi(snapshots, pulls, lambda: int(time.time() * 1000))
    routes = remote if remote is not None else Remote.local_only()

    def frame_jpeg(request: server.Request, body: dict[str, Any]) -> Any:
        name = local_name(pulls, query_of(request).get("src"))
        return routes.serve(request, name, lambda: images.frame_jpeg(request, body))

    api = Branch(settings)
    api.putChild(b"frame.jpeg", JsonEndpoint(settings, frame_jpeg, ("GET",), doors=doors))
    return api


def build_site(
    settings: Settings,
    hub: StreamHub,
    snapshots: SnapshotService,
    reactor: Any = None,
    pulls: PullManager | None = None,
    bound_ports: Callable[[], dict[str, int]] | None = None,
    views: StreamViews | None = None,
    readiness: Readiness | None = None,
    remote: Remote | None = None,
) -> server.Site:
    """The HTTP(S) site, its limits and deadlines on `reactor`'s clock (see wcs.web.channel).

    `bound_ports()` gives the listening ports by label (the demo links name the WebSocket
    port actually bound); without it, the configured ones. `readiness()` answers `/ready`
    (None: ready); without it, the site is always ready."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    root = Resource()
    doors = Doors(settings, reactor)
    rest = build_rest_tree(settings, hub, snapshots, reactor, pulls, views, doors, remote)
    root.putChild(REST_PREFIX, rest)
    root.putChild(b"api", build_api_tree(settings, snapshots, doors, pulls, remote))
    root.putChild(b"demo", build_demo(settings, bound_ports))
    root.putChild(b"health", Health())
    root.putChild(b"ready", Ready(readiness or (lambda: None)))
    cors = settings.rest_access_control_allow_origin
    return GuardedSite(
        root,
        reactor=reactor,
        max_body=MAX_BODY,
        refusal_headers=[(b"Access-Control-Allow-Origin", cors.encode())] if cors else [],
    )
