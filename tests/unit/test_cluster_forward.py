"""wcs.rest.forward: requests for another node's stream go to that node and its answer comes back
unchanged; a fake agent on a Clock stands for the other nodes (no sockets)."""

from __future__ import annotations

import base64
import json
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from tests.unit.fakes import publish_now
from tests.unit.rest_client import CREATED_MS, Api, FakeSnapshots, assert_wcs_error
from wcs.config import Settings
from wcs.directory import (
    DirectoryUnavailable,
    LocalDirectory,
    NodeRecord,
    StreamError,
    StreamNotFound,
)
from wcs.rest.forward import (
    HOP_HEADER,
    MAX_ANSWER_BYTES,
    ClusterSnapshots,
    Forwarder,
    OwnerUnavailable,
    Remote,
)
from wcs.rest.resources import build_site
from wcs.snapshot.service import SnapshotService
from wcs.streams import StreamHub

TIMEOUT = 2.0


def record(url: str) -> NodeRecord:
    return NodeRecord(url=url, version="t", started_ms=0, streams=1, load=0.0)


class ClusterDirectory(LocalDirectory):
    """The in-process directory plus a node table, as a Redis directory would give it."""

    def __init__(self, nodes: dict[str, NodeRecord]) -> None:
        super().__init__()
        self.table = nodes
        self.node_reads = 0

    def nodes(self) -> Deferred[dict[str, NodeRecord]]:
        self.node_reads += 1
        return succeed(dict(self.table))


class FakeResponse:
    def __init__(
        self, code: int, body: bytes, headers: dict[bytes, list[bytes]] | None = None
    ) -> None:
        self.code = code
        self.body = body
        self.headers = Headers(headers or {b"Content-Type": [b"application/json"]})

    def deliverBody(self, protocol: Any) -> None:
        for i in range(0, len(self.body), 1 << 20):
            protocol.dataReceived(self.body[i : i + (1 << 20)])
        protocol.connectionLost(Failure(ResponseDone()))


@implementer(IAgent)
class FakeAgent:
    """Answers each URL prefix with an outcome: a response, an exception, or a Deferred; a list of
    outcomes is used one per request."""

    def __init__(self) -> None:
        self.outcomes: dict[bytes, Any] = {}
        self.requests: list[tuple[bytes, bytes, Headers, bytes | None]] = []

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        body = bodyProducer._inputFile.read() if bodyProducer is not None else None
        self.requests.append((method, uri, headers or Headers(), body))
        for prefix, outcome in self.outcomes.items():
            if uri.startswith(prefix):
                if isinstance(outcome, list):
                    outcome = outcome.pop(0)
                if isinstance(outcome, Deferred):
                    return outcome
                if isinstance(outcome, Exception):
                    return fail(outcome)
                return succeed(outcome)
        raise AssertionError(f"unexpected request to {uri!r}")


class Cluster(Api):
    """The REST site of node "b" in a cluster of "a" (http://a.test), "b" and "c" (http://c.test)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.clock = Clock()
        self.directory = ClusterDirectory(
            {
                "a": record("http://a.test:8081"),
                "b": record("http://b.test:8081"),
                "c": record("http://c.test:8081"),
            }
        )
        self.hub = StreamHub(clock_ms=lambda: CREATED_MS, directory=self.directory, node="b")
        self.snapshots = FakeSnapshots()
        self.agent = FakeAgent()
        self.forwarder = Forwarder(
            "b", self.directory, self.clock, TIMEOUT, auth=("admin", "pw"), agent=self.agent
        )
        remote = Remote(lambda name: self.hub.get(name) is not None, self.forwarder)
        self.site = build_site(
            self.settings,
            self.hub,
            cast(SnapshotService, self.snapshots),
            self.clock,
            remote=remote,
        )

    def owned_by(self, node: str, name: str, msid: str = "m1") -> None:
        self.directory.claim(name, f"{node}/{msid}")


PNG_JSON = b'{"data":"iVBORw0KGgo="}'


def test_a_snapshot_of_another_nodes_stream_is_that_nodes_answer() -> None:
    api = Cluster()
    api.owned_by("a", "cam")
    api.agent.outcomes[b"http://a.test"] = FakeResponse(
        200,
        PNG_JSON,
        {
            b"Content-Type": [b"application/json"],
            b"X-Custom": [b"1"],
            b"Access-Control-Allow-Origin": [b"https://elsewhere"],
            b"Connection": [b"close"],
        },
    )
    response = api.call(
        "POST",
        "/rest-api/stream/snapshot",
        {"streamName": "cam"},
        headers={"Authorization": "Basic eDp5", "Origin": "http://b.test:8081"},
    )
    assert response.status == 200
    assert response.body == PNG_JSON
    assert response.header("X-Custom") == "1"
    # Our own CORS header, once; the owner's hop-by-hop headers stay behind.
    assert response.headers["access-control-allow-origin"] == ["*"]
    assert response.header("Connection") != "close"
    assert api.snapshots.calls == []
    [(method, uri, headers, body)] = api.agent.requests
    assert (method, uri) == (b"POST", b"http://a.test:8081/rest-api/stream/snapshot")
    assert json.loads(body or b"") == {"streamName": "cam"}
    assert headers.getRawHeaders(b"authorization") == [b"Basic eDp5"]
    assert headers.getRawHeaders(HOP_HEADER) == [b"b"]
    assert headers.getRawHeaders(b"origin") is None
    assert api.forwarder.forwarded == 1


def test_the_image_urls_keep_their_query_and_pass_status_and_headers() -> None:
    api = Cluster()
    api.owned_by("c", "cam")
    jpeg = b"\xff\xd8jpeg\xff\xd9"
    api.agent.outcomes[b"http://c.test"] = FakeResponse(
        200, jpeg, {b"Content-Type": [b"image/jpeg"], b"ETag": [b'"e1"']}
    )
    response = api.call("GET", "/rest-api/stream/snapshot?streamName=cam&format=jpeg&width=320")
    assert (response.status, response.body) == (200, jpeg)
    assert response.header("Content-Type") == "image/jpeg"
    assert response.header("ETag") == '"e1"'
    api.agent.outcomes[b"http://c.test"] = FakeResponse(304, b"", {b"ETag": [b'"e1"']})
    response = api.call("GET", "/api/frame.jpeg?src=cam", headers={"If-None-Match": '"e1"'})
    assert response.status == 304
    uris = [uri for _, uri, _, _ in api.agent.requests]
    assert uris == [
        b"http://c.test:8081/rest-api/stream/snapshot?streamName=cam&format=jpeg&width=320",
        b"http://c.test:8081/api/frame.jpeg?src=cam",
    ]
    assert api.agent.requests[1][2].getRawHeaders(b"if-none-match") == [b'"e1"']


def test_local_streams_unknown_names_and_forwarded_requests_stay_here() -> None:
    api = Cluster()
    publish_now(api.hub, "mine", "RTMP")
    api.owned_by("a", "theirs")
    api.start("POST", "/rest-api/stream/snapshot", {"streamName": "mine"})
    assert api.snapshots.names == ["mine"]
    api.start("POST", "/rest-api/stream/snapshot", {"streamName": "nobody"})
    assert api.snapshots.names == ["mine", "nobody"]  # the local service's own 404 path
    # Forwarded once already: answered here whatever the directory says (never twice).
    response = api.call(
        "POST",
        "/rest-api/stream/find",
        {"name": "theirs"},
        headers={HOP_HEADER.decode(): "a"},
    )
    assert_wcs_error(response, 404, "Stream not found", "/rest-api/stream/find")
    assert api.agent.requests == []


def test_an_owner_that_does_not_answer_is_a_503_naming_it() -> None:
    api = Cluster()
    api.owned_by("a", "cam")
    api.agent.outcomes[b"http://a.test"] = Deferred()
    conn = api.start("POST", "/rest-api/stream/snapshot", {"streamName": "cam"})
    assert conn.response() is None
    api.clock.advance(TIMEOUT)
    response = conn.response()
    assert response is not None
    assert_wcs_error(
        response,
        503,
        "Node a that owns the stream did not answer: no answer within 2000 ms",
        "/rest-api/stream/snapshot",
        code="owner_unavailable",
    )
    # As a snapshot's own 503s: a dashboard retries them all alike.
    assert response.header("X-Snapshot-Error") == "owner_unavailable"
    assert response.header("Retry-After") == "1"
    assert response.header("Cache-Control") == "no-store"
    assert "X-Snapshot-Error" in (response.header("Access-Control-Expose-Headers") or "")
    assert api.forwarder.failed == 1


def test_a_refused_connection_is_a_503_at_once() -> None:
    api = Cluster()
    api.owned_by("a", "cam")
    api.agent.outcomes[b"http://a.test"] = ConnectionRefusedError()
    response = api.call("POST", "/rest-api/stream/find", {"name": "cam"})
    assert response.status == 503
    assert response.json()["message"].startswith("Node a that owns the stream did not answer")


def test_a_node_missing_from_the_table_is_looked_up_again_then_a_503() -> None:
    api = Cluster()
    api.owned_by("d", "cam")
    response = api.call("POST", "/rest-api/stream/snapshot", {"streamName": "cam"})
    assert response.status == 503
    assert "Node d" in response.json()["message"]
    assert api.directory.node_reads == 2  # the cached table, then a fresh one


def test_a_stale_pooled_connection_is_tried_once_more_other_faults_never() -> None:
    api = Cluster()
    api.owned_by("a", "cam")
    stale = ResponseNeverReceived([Failure(ConnectionDone())])
    api.agent.outcomes[b"http://a.test"] = [stale, FakeResponse(200, PNG_JSON)]
    response = api.call("POST", "/rest-api/stream/snapshot", {"streamName": "cam"})
    assert response.status == 200
    assert len(api.agent.requests) == 2
    api.agent.outcomes[b"http://a.test"] = [ConnectionRefusedError(), FakeResponse(200, b"")]
    response = api.call("POST", "/rest-api/stream/snapshot", {"streamName": "cam"})
    assert response.status == 503
    assert len(api.agent.requests) == 3


def test_an_answer_over_the_bound_is_not_passed_on() -> None:
    api = Cluster()
    api.owned_by("a", "cam")
    api.agent.outcomes[b"http://a.test"] = FakeResponse(200, b"x" * (MAX_ANSWER_BYTES + 1))
    response = api.call("POST", "/rest-api/stream/snapshot", {"streamName": "cam"})
    assert response.status == 503
    assert "larger than" in response.json()["message"]


def test_find_and_terminate_go_to_the_owner_by_name_or_by_session() -> None:
    api = Cluster()
    api.owned_by("a", "cam", msid="m-a")
    api.owned_by("c", "door", msid="m-c")
    api.agent.outcomes[b"http://a.test"] = FakeResponse(200, b'[{"name":"cam"}]')
    api.agent.outcomes[b"http://c.test"] = FakeResponse(200, b"{}")
    assert api.call("POST", "/rest-api/stream/find", {"name": "cam"}).json() == [{"name": "cam"}]
    assert api.call("POST", "/rest-api/stream/terminate", {"mediaSessionId": "m-c"}).status == 200
    assert [uri for _, uri, _, _ in api.agent.requests] == [
        b"http://a.test:8081/rest-api/stream/find",
        b"http://c.test:8081/rest-api/stream/terminate",
    ]
    assert json.loads(api.agent.requests[1][3] or b"") == {"mediaSessionId": "m-c"}


def test_terminate_from_a_foreign_page_is_refused_before_any_forwarding() -> None:
    api = Cluster()
    api.owned_by("a", "cam")
    response = api.call(
        "POST", "/rest-api/stream/terminate", {"name": "cam"}, headers={"Origin": "https://evil"}
    )
    assert response.status == 403
    assert api.agent.requests == []


def test_find_all_merges_every_nodes_list_once_and_skips_a_silent_node() -> None:
    api = Cluster()
    publish_now(api.hub, "here", "RTMP", media_session_id="m-b")
    api.agent.outcomes[b"http://a.test"] = FakeResponse(
        200, b'[{"name":"cam","mediaSessionId":"m-a"},{"name":"here","mediaSessionId":"m-b"}]'
    )
    api.agent.outcomes[b"http://c.test"] = Deferred()  # never answers
    conn = api.start("POST", "/rest-api/stream/find_all", {})
    api.clock.advance(TIMEOUT)
    response = conn.response()
    assert response is not None and response.status == 200
    assert [(s["name"], s["mediaSessionId"]) for s in response.json()] == [
        ("here", "m-b"),
        ("cam", "m-a"),
    ]
    # Node-to-node requests carry this cluster's credentials and the hop header.
    headers = api.agent.requests[0][2]
    assert headers.getRawHeaders(b"authorization") == [b"Basic " + base64.b64encode(b"admin:pw")]
    assert headers.getRawHeaders(HOP_HEADER) == [b"b"]


def test_find_all_with_nothing_anywhere_is_the_wcs_404() -> None:
    api = Cluster()
    api.agent.outcomes[b"http://a.test"] = FakeResponse(404, b"{}")
    api.agent.outcomes[b"http://c.test"] = FakeResponse(200, b"[]")
    response = api.call("POST", "/rest-api/stream/find_all", {})
    assert_wcs_error(response, 404, "Streams not found", "/rest-api/stream/find_all")


def test_the_node_table_is_read_once_per_interval() -> None:
    api = Cluster()
    api.owned_by("a", "cam")
    api.agent.outcomes[b"http://a.test"] = FakeResponse(200, PNG_JSON)
    for _ in range(3):
        api.call("POST", "/rest-api/stream/snapshot", {"streamName": "cam"})
    assert api.directory.node_reads == 1
    api.clock.advance(5)
    api.call("POST", "/rest-api/stream/snapshot", {"streamName": "cam"})
    assert api.directory.node_reads == 2


def websdk(api: Cluster) -> ClusterSnapshots:
    return ClusterSnapshots(api.snapshots, lambda n: api.hub.get(n) is not None, api.forwarder)


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not fired"
    return results[0]


def test_the_websdk_snapshot_of_another_nodes_stream_is_its_png() -> None:
    api = Cluster()
    api.owned_by("a", "cam")
    api.agent.outcomes[b"http://a.test"] = FakeResponse(200, PNG_JSON)
    assert outcome(websdk(api).take("cam")) == base64.b64decode("iVBORw0KGgo=")
    [(method, uri, _, body)] = api.agent.requests
    assert (method, uri) == (b"POST", b"http://a.test:8081/rest-api/stream/snapshot")
    assert json.loads(body or b"") == {"streamName": "cam"}


@pytest.mark.parametrize(
    ("answer", "error", "info"),
    [
        (FakeResponse(404, b"{}"), StreamNotFound, "Stream not found"),
        (
            FakeResponse(500, b'{"message":"Snapshot timeout","code":"timeout"}'),
            OwnerUnavailable,
            "Snapshot timeout",
        ),
        (ConnectionRefusedError(), OwnerUnavailable, "Node a that owns the stream did not"),
    ],
)
def test_a_websdk_snapshot_the_owner_does_not_give(answer: Any, error: type, info: str) -> None:
    api = Cluster()
    api.owned_by("a", "cam")
    api.agent.outcomes[b"http://a.test"] = answer
    failure = outcome(websdk(api).take("cam"))
    assert isinstance(failure, Failure) and failure.check(error)
    assert isinstance(failure.value, StreamError)
    assert failure.value.info.startswith(info)


def test_the_websdk_snapshot_of_a_local_or_unknown_stream_is_taken_here() -> None:
    api = Cluster()
    publish_now(api.hub, "mine", "RTMP")
    websdk(api).take("mine")
    websdk(api).take("nobody")
    assert api.snapshots.names == ["mine", "nobody"]
    assert api.agent.requests == []


class Unreachable(ClusterDirectory):
    """A cluster directory whose Redis is down: lookups fail, as RedisStreamDirectory's do."""

    def lookup(self, name: str) -> Deferred[str | None]:
        return fail(DirectoryUnavailable("cluster directory unreachable: refused"))

    def list(self) -> Deferred[dict[str, str]]:
        return fail(DirectoryUnavailable("cluster directory unreachable: refused"))

    def nodes(self) -> Deferred[dict[str, NodeRecord]]:
        return fail(DirectoryUnavailable("cluster directory unreachable: refused"))


def outage() -> Cluster:
    api = Cluster()
    api.directory.__class__ = Unreachable
    return api


def test_during_an_outage_local_streams_answer_and_others_are_a_clear_503() -> None:
    api = outage()
    publish_now(api.hub, "mine", "RTMP", media_session_id="m-b")
    api.start("POST", "/rest-api/stream/snapshot", {"streamName": "mine"})
    assert api.snapshots.names == ["mine"]
    response = api.call("POST", "/rest-api/stream/snapshot", {"streamName": "elsewhere"})
    assert_wcs_error(
        response,
        503,
        "The cluster directory is unreachable: the node that owns the stream cannot be found",
        "/rest-api/stream/snapshot",
        code="owner_unavailable",
    )
    response = api.call("POST", "/rest-api/stream/terminate", {"mediaSessionId": "m-x"})
    assert response.status == 503
    # find_all answers with this node's streams.
    response = api.call("POST", "/rest-api/stream/find_all", {})
    assert response.status == 200
    assert [s["name"] for s in response.json()] == ["mine"]
    assert api.agent.requests == []


def test_during_an_outage_a_websdk_snapshot_of_another_stream_fails_with_the_reason() -> None:
    api = outage()
    failure = outcome(websdk(api).take("elsewhere"))
    assert isinstance(failure, Failure) and failure.check(DirectoryUnavailable)
    assert isinstance(failure.value, DirectoryUnavailable)
    assert failure.value.info == "Stream directory unavailable"
