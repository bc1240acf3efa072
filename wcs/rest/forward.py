"""Requests for a stream another node of the cluster owns: forwarded to that node over HTTP, its
answer passed through unchanged (SRS's proxy, WCS's CDN: any node answers for any stream)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    PotentialDataLoss,
    ResponseDone,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from wcs.directory import (
    DirectoryUnavailable,
    NodeRecord,
    StreamDirectory,
    StreamError,
    StreamNotFound,
    split_owner,
)
from wcs.rest.errors import RestError
from wcs.rest.images import error_headers
from wcs.web.client import stale_connection

log = Logger(namespace="wcs.cluster")

# Set on every node-to-node request: a request carrying it is answered locally, never forwarded
# again (two nodes that disagree about an owner cannot bounce a request between them).
HOP_HEADER = b"X-WCS-Forwarded-By"
# The largest answer passed through: a 4K PNG in base64 JSON is ~30 MB.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# Requests in flight to one node at once (the rest wait their turn, within the timeout): the
# owner's per-address connection cap must not refuse a busy neighbour.
MAX_IN_FLIGHT_PER_NODE = 32
# How long the node table (node id -> URL) read from the directory is trusted.
NODE_TABLE_SECONDS = 2.0
# The `code` (and X-Snapshot-Error) of a 503 for an owner that did not answer, as a snapshot's
# own 503s carry theirs: one retry rule for a dashboard.
OWNER_UNAVAILABLE = "owner_unavailable"
# Request headers passed on. Not Origin: the forwarding node checked it against its own host.
PASSED_REQUEST_HEADERS = (b"authorization", b"content-type", b"accept", b"if-none-match")
# Answer headers not passed through: hop-by-hop, set by our own server, or our own CORS.
DROPPED_ANSWER_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"date",
        b"server",
        b"access-control-allow-origin",
        b"access-control-allow-headers",
        b"access-control-allow-methods",
    }
)


class AnswerTooLarge(Exception):
    pass


def _unavailable(message: str) -> RestError:
    return RestError(
        503, message, code=OWNER_UNAVAILABLE, headers=error_headers(OWNER_UNAVAILABLE, b"1")
    )


class Forwarded:
    """A node's answer to a forwarded request, written out to our client as it came."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def write(self, request: server.Request) -> None:
        if request.finished or request.channel is None:
            return
        request.setResponseCode(self.status)
        for name, value in self.headers:
            request.responseHeaders.addRawHeader(name, value)
        request.setHeader(b"Content-Length", b"%d" % len(self.body))
        request.write(self.body)
        request.finish()


class _Body(Protocol):
    """Collects an answer's body, at most MAX_ANSWER_BYTES; a cut answer is an error (half a
    picture is never passed on)."""

    def __init__(self, done: Deferred[bytes], limit: int) -> None:
        self.done = done
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return  # over the bound already: the rest is dropped
        self.size += len(data)
        if self.size > self.limit:
            self.chunks = []
            self.done.errback(AnswerTooLarge(f"answer larger than {self.limit} bytes"))
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def read_body(response: IResponse, limit: int = MAX_ANSWER_BYTES) -> Deferred[bytes]:
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Body(done, limit))
    return done


def _why(failure: Failure) -> str:
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return failure.getErrorMessage() or type(failure.value).__name__


class OwnerUnavailable(StreamError):
    """A snapshot the owner node did not give (WebSDK snapshot): `info` says why, as the owner
    or the forwarding put it."""

    def __init__(self, info: str) -> None:
        super().__init__(info)
        self.info = info


class Forwarder:
    """Finds a stream's owner node in the directory and sends it the request.

    `local(name)` says whether this process serves the name itself (a live stream of its hub, a
    camera pull of its own); those requests never leave.
    """

    def __init__(
        self,
        node_id: str,
        directory: StreamDirectory,
        reactor: IReactorTime,
        timeout: float,
        *,
        auth: tuple[str, str] | None = None,
        agent: IAgent | None = None,
    ) -> None:
        self.node_id = node_id
        self.directory = directory
        self.reactor = reactor
        self.timeout = timeout
        self.auth = auth  # this cluster's REST credentials, for requests it makes itself
        if agent is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = MAX_IN_FLIGHT_PER_NODE
            # Below the servers' keep-alive idle timeout (60 s): a pooled connection is dropped
            # by us before the other end closes it under a request.
            pool.cachedConnectionTimeout = 30
            agent = Agent(reactor, pool=pool, connectTimeout=timeout)
        self.agent = agent
        self._nodes: dict[str, NodeRecord] = {}
        self._nodes_at = float("-inf")
        self._slots: dict[str, DeferredSemaphore] = {}
        self.forwarded = 0  # requests sent to other nodes
        self.failed = 0  # of which the owner did not answer

    # -- who owns what --------------------------------------------------------------------------
    def node_table(self, fresh: bool = False) -> Deferred[dict[str, NodeRecord]]:
        """The cluster's nodes (cached NODE_TABLE_SECONDS)."""
        now = self.reactor.seconds()
        if not fresh and now - self._nodes_at < NODE_TABLE_SECONDS:
            return succeed(self._nodes)

        def keep(nodes: dict[str, NodeRecord]) -> dict[str, NodeRecord]:
            self._nodes, self._nodes_at = nodes, self.reactor.seconds()
            return nodes

        return self.directory.nodes().addCallback(keep)

    def node_url(self, node: str) -> Deferred[str | None]:
        def url(nodes: dict[str, NodeRecord], retry: bool) -> Any:
            record = nodes.get(node)
            if record is None and retry:
                # A node that started since the table was read.
                return self.node_table(fresh=True).addCallback(url, False)
            return record["url"] if record is not None else None

        return self.node_table().addCallback(url, True)

    def owner_of(self, name: str) -> Deferred[str | None]:
        """The node (other than this one) that owns stream `name`, or None. Fails with
        DirectoryUnavailable while the directory cannot be asked."""

        def node_of(owner: str | None) -> str | None:
            if owner is None:
                return None
            node, _ = split_owner(owner)
            return None if node == self.node_id else node

        return self.directory.lookup(name).addCallback(node_of)

    def owner_of_session(self, media_session_id: str) -> Deferred[str | None]:
        """The node (other than this one) whose publish has this mediaSessionId, or None."""

        def node_of(owners: dict[str, str]) -> str | None:
            for owner in owners.values():
                node, msid = split_owner(owner)
                if msid == media_session_id and node != self.node_id:
                    return node
            return None

        return self.directory.list().addCallback(node_of)

    def routed(self, found: Deferred[str | None]) -> Deferred[str | None]:
        """`found` (an owner lookup) for a REST answer: a directory that cannot be asked is a
        503 in the WCS shape (this node cannot tell where the stream lives)."""

        def unknown(failure: Failure) -> str | None:
            failure.trap(DirectoryUnavailable)
            raise _unavailable(
                "The cluster directory is unreachable: "
                "the node that owns the stream cannot be found"
            )

        return found.addErrback(unknown)

    # -- sending --------------------------------------------------------------------------------
    def _send(
        self, node: str, method: bytes, path: bytes, headers: Headers, body: bytes | None
    ) -> Deferred[tuple[IResponse, bytes]]:
        """`method path` to `node`; fails with RestError 503 naming the node when it does not
        answer within the timeout (or is not in the directory any more)."""
        self.forwarded += 1
        headers.setRawHeaders(HOP_HEADER, [self.node_id.encode()])
        agent = self.agent

        def with_url(url: str | None) -> Deferred[tuple[IResponse, bytes]]:
            if url is None:
                raise _Unreachable("not in the cluster directory")
            target = url.encode() + path

            def send() -> Deferred[IResponse]:
                producer = None if body is None else FileBodyProducer(BytesIO(body))
                return agent.request(method, target, headers, producer)

            def again(failure: Failure) -> Deferred[IResponse]:
                if not stale_connection(failure):
                    return failure  # type: ignore[return-value]
                return send()

            def read(response: IResponse) -> Deferred[tuple[IResponse, bytes]]:
                return read_body(response).addCallback(lambda raw: (response, raw))

            return send().addErrback(again).addCallback(read)

        slot = self._slots.setdefault(node, DeferredSemaphore(MAX_IN_FLIGHT_PER_NODE))
        d: Deferred[tuple[IResponse, bytes]] = slot.run(
            lambda: self.node_url(node).addCallback(with_url)
        )
        d.addTimeout(self.timeout, self.reactor)

        def unreachable(failure: Failure) -> Failure:
            if failure.check(RestError):
                return failure
            self.failed += 1
            why = _why(failure)
            if failure.check(Exception) and "Timeout" in type(failure.value).__name__:
                why = f"no answer within {self.timeout * 1000:.0f} ms"
            log.warn(
                "cluster: node {node} did not answer a forwarded {method} {path}: {why}",
                node=node,
                method=method.decode(),
                path=path.decode("utf-8", "replace"),
                why=why,
            )
            raise _unavailable(f"Node {node} that owns the stream did not answer: {why}")

        return d.addErrback(unreachable)

    def forward(self, request: server.Request, node: str) -> Deferred[Forwarded]:
        """Our client's request, sent to `node` as it came (method, path and query, body, auth),
        and its answer."""
        headers = Headers()
        for name in PASSED_REQUEST_HEADERS:
            values = request.requestHeaders.getRawHeaders(name)
            if values:
                headers.setRawHeaders(name, values)
        body = None
        if request.method == b"POST" and request.content is not None:
            request.content.seek(0)
            body = request.content.read()
        path = request.uri or b"/"

        def answer(result: tuple[IResponse, bytes]) -> Forwarded:
            response, raw = result
            passed = [
                (name, value)
                for name, values in response.headers.getAllRawHeaders()
                if name.lower() not in DROPPED_ANSWER_HEADERS
                for value in values
            ]
            return Forwarded(response.code, passed, raw)

        return self._send(node, request.method or b"GET", path, headers, body).addCallback(answer)

    def post_json(self, node: str, path: str, body: dict[str, Any]) -> Deferred[tuple[int, Any]]:
        """A JSON POST of our own (find_all, the WebSDK snapshot) with this cluster's REST
        credentials: (status, decoded JSON or None)."""
        headers = Headers({b"Content-Type": [b"application/json"]})
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            headers.setRawHeaders(b"Authorization", [f"Basic {token}".encode()])
        payload = json.dumps(body, separators=(",", ":")).encode()

        def decoded(result: tuple[IResponse, bytes]) -> tuple[int, Any]:
            response, raw = result
            try:
                return response.code, json.loads(raw) if raw.strip() else None
            except ValueError:
                return response.code, None

        return self._send(node, b"POST", path.encode(), headers, payload).addCallback(decoded)

    def take_png(self, node: str, name: str) -> Deferred[bytes]:
        """The WCS PNG snapshot of `name` from its owner `node` (the WebSDK's snapshot message)."""

        def png(result: tuple[int, Any]) -> bytes:
            status, answer = result
            if status == 404:
                raise StreamNotFound(name)
            data = answer.get("data") if isinstance(answer, dict) else None
            if status != 200 or not isinstance(data, str):
                message = answer.get("message") if isinstance(answer, dict) else None
                raise OwnerUnavailable(str(message or f"HTTP {status} from node {node}"))
            return base64.b64decode(data)

        def unavailable(failure: Failure) -> bytes:
            if failure.check(RestError):
                raise OwnerUnavailable(failure.getErrorMessage())
            return failure  # type: ignore[return-value]

        d = self.post_json(node, "/rest-api/stream/snapshot", {"streamName": name})
        return d.addCallbacks(png, unavailable)

    def gather(self, path: str, body: dict[str, Any]) -> Deferred[list[Any]]:
        """POST `path` to every other node; the JSON lists they answer, concatenated. A node that
        does not answer is left out (and logged)."""

        def ask_all(nodes: dict[str, NodeRecord]) -> Deferred[list[Any]]:
            asks = []
            for node in sorted(nodes):
                if node == self.node_id:
                    continue
                d = self.post_json(node, path, body)
                d.addCallbacks(
                    lambda result: result[1] if result[0] == 200 else [],
                    lambda failure: [],  # _send logged it
                )
                asks.append(d)
            return gatherResults(asks).addCallback(
                lambda lists: [
                    item for answer in lists if isinstance(answer, list) for item in answer
                ]
            )

        def alone(failure: Failure) -> list[Any]:
            failure.trap(DirectoryUnavailable)
            log.warn(
                "cluster: {path} answered with this node's streams only: {why}",
                path=path,
                why=failure.getErrorMessage(),
            )
            return []

        return self.node_table(fresh=True).addCallbacks(ask_all, alone)


class _Unreachable(Exception):
    pass


def hop_of(request: server.Request) -> bytes | None:
    """The node a request was forwarded by, or None for a client's own request."""
    return request.getHeader(HOP_HEADER)


class Remote:
    """What the REST handlers ask: serve a request here, or pass it to the stream's owner.

    `here(name)` says whether this process serves the name itself (a live stream of its hub);
    those requests never leave, and neither does one another node forwarded already.
    """

    def __init__(self, here: Callable[[str], bool], forwarder: Forwarder | None) -> None:
        self.here = here
        self.forwarder = forwarder

    @classmethod
    def local_only(cls) -> Remote:
        """One process, no cluster: every request is served here."""
        return cls(lambda name: True, None)

    def applies(self, request: server.Request) -> Forwarder | None:
        """The forwarder, when this request may be forwarded at all."""
        if self.forwarder is None or hop_of(request) is not None:
            return None
        return self.forwarder

    def serve(self, request: server.Request, name: object, local: Callable[[], Any]) -> Any:
        """`local()` when `name` is served here or nowhere else; else the owner's answer."""
        forwarder = self.applies(request)
        if forwarder is None or not isinstance(name, str) or not name or self.here(name):
            return local()
        return self._route(request, forwarder, forwarder.owner_of(name), local)

    def serve_session(
        self, request: server.Request, media_session_id: object, local: Callable[[], Any]
    ) -> Any:
        """As `serve`, for a request naming a mediaSessionId only."""
        forwarder = self.applies(request)
        if forwarder is None or not isinstance(media_session_id, str) or not media_session_id:
            return local()
        return self._route(request, forwarder, forwarder.owner_of_session(media_session_id), local)

    @staticmethod
    def _route(
        request: server.Request,
        forwarder: Forwarder,
        owner: Deferred[str | None],
        local: Callable[[], Any],
    ) -> Deferred[Any]:
        def route(node: str | None) -> Any:
            return local() if node is None else forwarder.forward(request, node)

        return forwarder.routed(owner).addCallback(route)


class ClusterSnapshots:
    """The WebSDK's snapshot taker: this process's streams from its own snapshot service, a
    stream another node owns as that node's PNG."""

    def __init__(self, snapshots: Any, here: Callable[[str], bool], forwarder: Forwarder) -> None:
        self.snapshots = snapshots
        self.here = here
        self.forwarder = forwarder

    def take(self, name: str, *, endpoint: str = "websdk") -> Deferred[bytes]:
        if self.here(name):
            d: Deferred[bytes] = self.snapshots.take(name, endpoint=endpoint)
            return d

        def route(node: str | None) -> Deferred[bytes]:
            if node is None:
                return self.snapshots.take(name, endpoint=endpoint)
            return self.forwarder.take_png(node, name)

        return self.forwarder.owner_of(name).addCallback(route)
