"""The REST API through the real Site from build_site: raw HTTP bytes into an HTTPChannel over a
StringTransport, responses parsed back. The snapshot service is a fake whose Deferreds the tests
fire by hand."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import _producer_helpers
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Cooperator
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure

from tests.unit.fakes import BIG_PNG, PNG, publish_now
from tests.unit.rest_client import (
    CREATED_MS,
    ERROR_KEYS,
    EXCEPTION,
    Api,
    Connection,
    Response,
    SlowReader,
    assert_wcs_error,
    parse_response,
    raw_request,
)
from wcs.config import Settings
from wcs.directory import StreamNotFound
from wcs.rest.resources import MAX_BODY
from wcs.rest.views import stream_json
from wcs.snapshot.service import SnapshotTimeout
from wcs.streams import PROVIDER_RTMP, PROVIDER_WEBRTC
from wcs.web import resources as web_resources

SNAPSHOT = "/rest-api/stream/snapshot"
FIND = "/rest-api/stream/find"
FIND_ALL = "/rest-api/stream/find_all"
TERMINATE = "/rest-api/stream/terminate"
# The limits the hardening issue (#6) sets; the tests hold the code to them.
LOGIN_FAILURE_DELAY = 1.0
LOGIN_LOG_INTERVAL = 10.0
HEADER_DEADLINE = 10.0
BODY_DEADLINE = 30.0
DRAIN_DEADLINE = 30.0
IDLE_TIMEOUT = 60.0
REFUSAL_LINGER = 5.0


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def api() -> Api:
    return Api()


# -- snapshot -----------------------------------------------------------------------------------


def test_snapshot_200_with_base64_png(api: Api) -> None:
    conn = api.start("POST", SNAPSHOT, {"streamName": "64966f33"})
    assert api.snapshots.names == ["64966f33"]
    assert conn.response() is None  # waits for the snapshot
    api.snapshots.last().callback(PNG)
    response = conn.response()
    assert response is not None
    assert response.status == 200
    assert response.header("Content-Type") == "application/json"
    assert response.json() == {"data": base64.b64encode(PNG).decode("ascii")}
    assert base64.b64decode(response.json()["data"]) == PNG


def test_snapshot_request_fed_byte_by_byte(api: Api) -> None:
    body = json.dumps({"streamName": "cam1"}).encode()
    conn = api.send(raw_request("POST", SNAPSHOT, body), bytewise=True)
    assert api.snapshots.names == ["cam1"]
    api.snapshots.last().callback(PNG)
    response = conn.response()
    assert response is not None and response.status == 200


def test_snapshot_404_when_stream_not_found(api: Api) -> None:
    conn = api.start("POST", SNAPSHOT, {"streamName": "nope"})
    api.snapshots.last().errback(StreamNotFound("nope"))
    response = conn.response()
    assert response is not None
    body = assert_wcs_error(response, 404, "Stream not found", SNAPSHOT)
    assert body["exception"] == EXCEPTION + "NotFoundException"
    assert body["error"] == "Not Found"


def test_snapshot_500_timeout_has_the_exact_wcs_shape(api: Api) -> None:
    conn = api.start("POST", SNAPSHOT, {"streamName": "cam1"})
    api.snapshots.last().errback(SnapshotTimeout())
    response = conn.response()
    assert response is not None
    body = assert_wcs_error(response, 500, "Snapshot response timeout", SNAPSHOT, "timeout")
    ts = body["timestamp"]
    assert body == {
        "exception": "com.flashphoner.rest.server.exception.InternalErrorException",
        "reason": "com.flashphoner.rest.server.exception.InternalErrorException, "
        f"Internal Server Error, Snapshot response timeout, ts: {ts}, "
        "path: /rest-api/stream/snapshot",
        "path": "/rest-api/stream/snapshot",
        "error": "Internal Server Error",
        "message": "Snapshot response timeout",
        "timestamp": ts,
        "status": 500,
        "code": "timeout",  # why, machine-readable: the one field WCS does not send
    }


def test_snapshot_unexpected_failure_is_a_logged_500(api: Api, log_events: list[LogEvent]) -> None:
    conn = api.start("POST", SNAPSHOT, {"streamName": "cam1"})
    api.snapshots.last().errback(RuntimeError("decoder exploded"))
    response = conn.response()
    assert response is not None
    assert_wcs_error(response, 500, "Internal Server Error", SNAPSHOT)
    failures = [e for e in log_events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)


def test_snapshot_synchronous_exception_is_a_500(api: Api, log_events: list[LogEvent]) -> None:
    api.snapshots.raise_now = RuntimeError("boom")
    response = api.call("POST", SNAPSHOT, {"streamName": "cam1"})
    assert_wcs_error(response, 500, "Internal Server Error", SNAPSHOT)


@pytest.mark.parametrize(
    "body",
    [b"{", b"{'streamName': 'cam1'}", b"streamName=cam1", b"\xff\xfe\xfd", b'{"streamName": "a"}x'],
)
def test_bad_json_is_400(api: Api, body: bytes) -> None:
    response = api.call("POST", SNAPSHOT, body)
    err = assert_wcs_error(response, 400, response.json()["message"], SNAPSHOT)
    assert err["message"].startswith("Malformed JSON")
    assert err["exception"] == EXCEPTION + "BadRequestException"
    assert err["error"] == "Bad Request"
    assert api.snapshots.calls == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "cam1"},
        {"streamName": None},
        {"streamName": 5},
        {"streamName": ""},
        {"streamName": ["cam1"]},
        {"streamName": {"name": "cam1"}},
        {"streamName": True},
        b"",
    ],
)
def test_missing_or_non_string_stream_name_is_400(api: Api, body: object) -> None:
    response = api.call("POST", SNAPSHOT, body)
    assert_wcs_error(
        response, 400, "'streamName' is required and must be a non-empty string", SNAPSHOT
    )
    assert api.snapshots.calls == []


@pytest.mark.parametrize("body", [["cam1"], [{"streamName": "cam1"}], "cam1", 42, None])
def test_json_body_that_is_not_an_object_is_400(api: Api, body: object) -> None:
    response = api.call("POST", SNAPSHOT, json.dumps(body).encode())
    assert_wcs_error(response, 400, "Request body must be a JSON object", SNAPSHOT)
    assert api.snapshots.calls == []


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405_with_allow(api: Api, method: str) -> None:
    response = api.call(method, SNAPSHOT)
    body = assert_wcs_error(response, 405, f"Request method '{method}' is not supported", SNAPSHOT)
    assert body["exception"] == EXCEPTION + "MethodNotAllowedException"
    assert body["error"] == "Method Not Allowed"
    assert response.header("Allow") == "GET, POST"  # GET: the picture itself
    assert api.snapshots.calls == []


def test_find_all_allows_get_and_post(api: Api) -> None:
    response = api.call("PUT", FIND_ALL, {})
    assert_wcs_error(response, 405, "Request method 'PUT' is not supported", FIND_ALL)
    assert response.header("Allow") == "GET, POST"


def test_content_length_over_64k_is_413(api: Api) -> None:
    body = json.dumps({"streamName": "cam1", "pad": "x" * MAX_BODY}).encode()
    assert len(body) > MAX_BODY
    response = api.call("POST", SNAPSHOT, body)
    err = assert_wcs_error(response, 413, f"Request body larger than {MAX_BODY} bytes", SNAPSHOT)
    assert err["exception"] == EXCEPTION + "PayloadTooLargeException"
    assert api.snapshots.calls == []


def test_chunked_body_over_64k_is_413(api: Api) -> None:
    body = json.dumps({"streamName": "cam1", "pad": "x" * MAX_BODY}).encode()
    head = raw_request(
        "POST",
        SNAPSHOT,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000])
        for i in range(0, len(body), 1000)
    )
    conn = api.send(head + chunked + b"0\r\n\r\n")
    response = conn.response()
    assert response is not None
    assert_wcs_error(response, 413, f"Request body larger than {MAX_BODY} bytes", SNAPSHOT)
    assert api.snapshots.calls == []


def test_body_of_exactly_64k_is_accepted(api: Api) -> None:
    prefix = json.dumps({"streamName": "cam1", "pad": ""}).encode()
    body = prefix[:-2] + b"x" * (MAX_BODY - len(prefix)) + b'"}'
    assert len(body) == MAX_BODY
    conn = api.start("POST", SNAPSHOT, body)
    assert api.snapshots.names == ["cam1"]
    api.snapshots.last().callback(PNG)
    response = conn.response()
    assert response is not None and response.status == 200


def test_chunked_body_under_the_limit_is_read(api: Api) -> None:
    body = json.dumps({"streamName": "cam1"}).encode()
    head = raw_request("POST", SNAPSHOT, headers={"Transfer-Encoding": "chunked"})
    conn = api.send(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), bytewise=True)
    assert api.snapshots.names == ["cam1"]
    api.snapshots.last().callback(PNG)
    response = conn.response()
    assert response is not None and response.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/rest-api/nope",
        "/rest-api/stream/nope",
        "/rest-api/stream/",
        "/rest-api/stream",
        "/rest-api",
        "/rest-api/",
        "/rest-api/rtsp/nope/deeper",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_path_under_rest_api_is_a_json_404(api: Api, path: str, method: str) -> None:
    response = api.call(method, path, {} if method == "POST" else None)
    body = assert_wcs_error(response, 404, "Not found", path)
    assert body["exception"] == EXCEPTION + "NotFoundException"
    assert response.header("Access-Control-Allow-Origin") == "*"  # a browser can read it


# -- CORS and auth ------------------------------------------------------------------------------


def test_cors_header_with_the_configured_origin() -> None:
    api = Api(dataclasses.replace(Settings(), rest_access_control_allow_origin="https://a.example"))
    conn = api.start("POST", SNAPSHOT, {"streamName": "cam1"})
    api.snapshots.last().callback(PNG)
    ok = conn.response()
    assert ok is not None and ok.status == 200
    assert ok.header("Access-Control-Allow-Origin") == "https://a.example"
    error = api.call("POST", SNAPSHOT, b"{")
    assert error.status == 400
    assert error.header("Access-Control-Allow-Origin") == "https://a.example"


def test_cors_default_origin_is_star(api: Api) -> None:
    response = api.call("GET", FIND_ALL)
    assert response.header("Access-Control-Allow-Origin") == "*"


def test_options_preflight(api: Api) -> None:
    response = api.call(
        "OPTIONS",
        SNAPSHOT,
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status == 200
    assert response.header("Access-Control-Allow-Origin") == "*"
    assert response.header("Access-Control-Allow-Methods") == "GET, POST"
    allowed = {
        h.strip().lower()
        for h in (response.header("Access-Control-Allow-Headers") or "").split(",")
    }
    assert {"content-type", "authorization"} <= allowed
    assert response.body == b""
    assert api.snapshots.calls == []
    find_all = api.call("OPTIONS", FIND_ALL)
    assert find_all.header("Access-Control-Allow-Methods") == "GET, POST"


AUTH = dataclasses.replace(Settings(), disable_rest_auth=False, rest_auth_password="pw")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("admin", "wrong"),
        basic("root", "pw"),
        basic("admin", ""),
        {"Authorization": "Bearer pw"},
        {"Authorization": "Basic !!!not-base64"},
    ],
    ids=["none", "wrong-password", "wrong-user", "empty-password", "bearer", "garbage"],
)
def test_basic_auth_refuses(headers: dict[str, str]) -> None:
    api = Api(AUTH)
    conn = api.start("POST", SNAPSHOT, {"streamName": "cam1"}, headers)
    if headers:  # a wrong credential is answered late (see test_failed_login_...)
        api.clock.advance(LOGIN_FAILURE_DELAY)
    response = conn.response()
    assert response is not None
    body = assert_wcs_error(response, 401, "Unauthorized", SNAPSHOT)
    assert body["exception"] == EXCEPTION + "UnauthorizedException"
    assert response.header("WWW-Authenticate") == 'Basic realm="wcs"'
    assert api.snapshots.calls == []


def test_basic_auth_accepts_the_right_credentials() -> None:
    api = Api(AUTH)
    conn = api.start("POST", SNAPSHOT, {"streamName": "cam1"}, basic("admin", "pw"))
    assert api.snapshots.names == ["cam1"]
    api.snapshots.last().callback(PNG)
    response = conn.response()
    assert response is not None and response.status == 200
    publish_now(api.hub, "cam1", PROVIDER_RTMP)
    assert api.call("GET", FIND_ALL, headers=basic("admin", "pw")).status == 200
    assert api.call("GET", FIND_ALL).status == 401


def test_basic_auth_leaves_preflight_alone() -> None:
    api = Api(AUTH)
    response = api.call("OPTIONS", SNAPSHOT)
    assert response.status == 200
    assert response.header("WWW-Authenticate") is None


def test_auth_disabled_by_default(api: Api) -> None:
    conn = api.start("POST", SNAPSHOT, {"streamName": "cam1"})
    assert api.snapshots.names == ["cam1"]
    api.snapshots.last().callback(PNG)
    response = conn.response()
    assert response is not None and response.status == 200


# -- find, find_all, terminate ------------------------------------------------------------------


@pytest.fixture
def two(api: Api) -> Api:
    def on_terminate(name: str) -> None:
        # Whether the stream was still registered when its publisher was asked to leave.
        api.terminated.append((name, api.hub.get(name) is not None))

    publish_now(
        api.hub,
        "cam1",
        PROVIDER_RTMP,
        media_session_id="msid-1",
        on_terminate=functools.partial(on_terminate, "cam1"),
    )
    cam2 = publish_now(
        api.hub,
        "cam2",
        PROVIDER_WEBRTC,
        media_session_id="msid-2",
        on_terminate=functools.partial(on_terminate, "cam2"),
    )
    cam2.status = "PLAYING"  # a status other than PUBLISHING, to filter on
    return api


def names_of(response: Response) -> list[str]:
    assert response.status == 200, response.body
    assert response.header("Content-Type") == "application/json"
    return [s["name"] for s in response.json()]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["cam1", "cam2"]),
        ({"name": "cam1"}, ["cam1"]),
        ({"name": "cam2"}, ["cam2"]),
        ({"mediaSessionId": "msid-2"}, ["cam2"]),
        ({"name": "cam1", "mediaSessionId": "msid-1"}, ["cam1"]),
        ({"published": True}, ["cam1", "cam2"]),
        ({"published": "true"}, ["cam1", "cam2"]),
        ({"status": "PUBLISHING"}, ["cam1"]),
        ({"status": "PLAYING", "published": True}, ["cam2"]),
    ],
)
def test_find_filters(two: Api, query: dict[str, object], expected: list[str]) -> None:
    assert names_of(two.call("POST", FIND, query)) == expected


@pytest.mark.parametrize(
    "query",
    [
        {"name": "nope"},
        {"mediaSessionId": "msid-3"},
        {"name": "cam1", "mediaSessionId": "msid-2"},
        {"published": False},
        {"published": "false"},
        {"status": "FAILED"},
    ],
)
def test_find_404_when_nothing_matches(two: Api, query: dict[str, object]) -> None:
    assert_wcs_error(two.call("POST", FIND, query), 404, "Stream not found", FIND)


def test_find_returns_the_stream_objects(two: Api) -> None:
    response = two.call("POST", FIND, {"name": "cam1"})
    cam1 = two.hub.get("cam1")
    assert cam1 is not None
    assert response.json() == [stream_json(cam1)]
    obj = response.json()[0]
    assert obj["mediaSessionId"] == "msid-1"
    assert obj["mediaProvider"] == "Flash"
    assert obj["createDate"] == CREATED_MS
    assert obj["published"] is True


def test_find_all_get_and_post(two: Api) -> None:
    assert names_of(two.call("GET", FIND_ALL)) == ["cam1", "cam2"]
    assert names_of(two.call("POST", FIND_ALL, {})) == ["cam1", "cam2"]
    assert names_of(two.call("POST", FIND_ALL)) == ["cam1", "cam2"]


def test_find_all_404_without_streams(api: Api) -> None:
    response = api.call("GET", FIND_ALL)
    assert response.status == 404
    assert list(response.json()) == ERROR_KEYS


@pytest.mark.parametrize("query", [{"mediaSessionId": "msid-1"}, {"name": "cam1"}])
def test_terminate(two: Api, query: dict[str, object]) -> None:
    cam1 = two.hub.get("cam1")
    assert cam1 is not None
    response = two.call("POST", TERMINATE, query)
    assert response.status == 200
    assert response.json() == {}
    assert two.terminated == [("cam1", True)]  # asked to leave, then the stream ended
    assert cam1.ended and cam1.end_reason == "Stopped by server"
    assert two.hub.get("cam1") is None
    cam2 = two.hub.get("cam2")
    assert cam2 is not None and not cam2.ended


def test_terminate_calls_the_publishers_callback() -> None:
    api = Api()
    called: list[str] = []
    stream = publish_now(api.hub, "cam1", PROVIDER_RTMP, on_terminate=lambda: called.append("bye"))
    assert api.call("POST", TERMINATE, {"name": "cam1"}).status == 200
    assert called == ["bye"]
    assert stream.ended


@pytest.mark.parametrize("query", [{}, {"status": "PUBLISHING"}, {"published": True}])
def test_terminate_without_name_or_id_is_400(two: Api, query: dict[str, object]) -> None:
    response = two.call("POST", TERMINATE, query)
    assert_wcs_error(response, 400, "'mediaSessionId' or 'name' is required", TERMINATE)
    assert len(two.hub) == 2
    assert two.terminated == []


def test_terminate_unknown_is_404(two: Api) -> None:
    response = two.call("POST", TERMINATE, {"name": "nope"})
    assert_wcs_error(response, 404, "Stream not found", TERMINATE)
    assert len(two.hub) == 2


# -- client going away --------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["png", "not-found", "timeout", "crash"])
def test_client_disconnecting_before_the_snapshot_completes(
    api: Api, log_events: list[LogEvent], outcome: str
) -> None:
    conn = api.start("POST", SNAPSHOT, {"streamName": "cam1"})
    d = api.snapshots.last()
    conn.disconnect()
    written = conn.transport.value()
    if outcome == "png":
        d.callback(PNG)
    elif outcome == "not-found":
        d.errback(StreamNotFound("cam1"))
    elif outcome == "timeout":
        d.errback(SnapshotTimeout())
    else:
        d.errback(RuntimeError("decoder exploded"))
    results: list[object] = []
    d.addBoth(results.append)
    assert results == [None]  # the chain ended cleanly, no unhandled failure left behind
    assert conn.transport.value() == written  # nothing written to the closed connection
    unexpected = [
        e for e in log_events if "log_failure" in e and not e["log_failure"].check(RuntimeError)
    ]
    assert unexpected == []


# -- failed logins (finding 10) -----------------------------------------------------------------


def test_failed_login_is_answered_only_after_the_delay() -> None:
    api = Api(AUTH)
    bad = api.start("GET", FIND_ALL, headers=basic("admin", "guess"))
    assert bad.response() is None
    publish_now(api.hub, "cam1", PROVIDER_RTMP)
    # Meanwhile the reactor serves everyone else at once.
    assert api.call("GET", FIND_ALL, headers=basic("admin", "pw")).status == 200
    api.clock.advance(LOGIN_FAILURE_DELAY - 0.01)
    assert bad.response() is None
    api.clock.advance(0.01)
    response = bad.response()
    assert response is not None
    assert_wcs_error(response, 401, "Unauthorized", FIND_ALL)
    assert response.header("WWW-Authenticate") == 'Basic realm="wcs"'


def test_request_without_credentials_gets_the_challenge_at_once() -> None:
    api = Api(AUTH)
    response = api.call("GET", FIND_ALL)  # a browser's first try: no guess was made
    assert response.status == 401 and response.header("WWW-Authenticate")


def test_failed_login_of_a_client_that_left_leaves_no_timer() -> None:
    api = Api(AUTH)
    conn = api.start("GET", FIND_ALL, headers=basic("admin", "guess"))
    written = conn.transport.value()
    conn.disconnect()
    api.clock.advance(LOGIN_FAILURE_DELAY)
    assert conn.transport.value() == written
    api.clock.advance(LOGIN_LOG_INTERVAL)
    assert api.clock.getDelayedCalls() == []


def test_failed_logins_are_logged_rate_limited(log_events: list[LogEvent]) -> None:
    api = Api(AUTH)
    for _ in range(50):
        api.start("GET", FIND_ALL, headers=basic("admin", "guess"))
    lines = [formatEvent(e) for e in log_events if "failed login" in formatEvent(e)]
    assert len(lines) == 1 and "192.168.1.1" in lines[0] and "'admin'" in lines[0]
    api.clock.advance(LOGIN_LOG_INTERVAL)
    lines = [formatEvent(e) for e in log_events if "failed login" in formatEvent(e)]
    assert len(lines) == 2 and "[49 such events in the last 10 s]" in lines[1]
    api.clock.advance(LOGIN_LOG_INTERVAL)  # quiet: no more lines, no timer of the log left
    assert len([e for e in log_events if "failed login" in formatEvent(e)]) == 2
    assert all("TimeoutMixin" in repr(call) for call in api.clock.getDelayedCalls())


# -- hostile JSON and numbers (findings 7, 6) ---------------------------------------------------


@pytest.mark.parametrize("depth", [65, 5000, 100_000])
def test_deeply_nested_json_is_the_wcs_400(api: Api, depth: int) -> None:
    body = b'{"streamName": ' + b"[" * depth + b"]" * depth + b"}"
    response = api.call("POST", SNAPSHOT, body[:MAX_BODY])
    err = assert_wcs_error(response, 400, response.json()["message"], SNAPSHOT)
    assert err["message"].startswith("Malformed JSON")
    assert api.snapshots.calls == []


def test_json_nested_64_deep_is_read(api: Api) -> None:
    body = b'{"streamName": "cam1", "x": ' + b"[" * 63 + b"]" * 63 + b"}"
    api.start("POST", SNAPSHOT, body)
    assert api.snapshots.names == ["cam1"]


@pytest.mark.parametrize("value", ["1" * 5000, "²", "1²", "+12", "-1", "0x10", "1 2"])
def test_content_length_that_is_not_a_plain_ascii_number(api: Api, value: str) -> None:
    head = raw_request("POST", SNAPSHOT, headers={"Content-Length": value})
    conn = api.send(head + b'{"streamName": "cam1"}')
    response = conn.response()
    assert response is not None, "no answer"
    assert response.status in (400, 413)
    assert_wcs_error(response, response.status, response.json()["message"], SNAPSHOT)
    assert conn.transport.disconnecting and api.snapshots.calls == []


def test_content_length_with_leading_zeros_is_its_value(api: Api) -> None:
    body = b'{"streamName": "cam1"}'
    head = raw_request("POST", SNAPSHOT, headers={"Content-Length": "0" * 5000 + str(len(body))})
    api.send(head + body)
    assert api.snapshots.names == ["cam1"]


# -- bodies refused at the headers (finding 14) -------------------------------------------------


def test_huge_content_length_is_413_before_the_body(api: Api) -> None:
    head = raw_request(
        "POST", SNAPSHOT, headers={"Content-Length": "1000000000", "Expect": "100-continue"}
    )
    conn = api.send(head)  # not a byte of body sent: the answer must not wait for it
    response = conn.response()
    assert response is not None
    assert b"100 Continue" not in conn.transport.value()
    assert_wcs_error(response, 413, f"Request body larger than {MAX_BODY} bytes", SNAPSHOT)
    assert response.header("Connection") == "close"
    assert response.header("Access-Control-Allow-Origin") == "*"  # a page can read it
    assert conn.transport.disconnecting
    before = conn.transport.value()
    conn.send(b"x" * 1_000_000)  # whatever still arrives is not read into memory
    assert conn.transport.value() == before and api.snapshots.calls == []
    # Reading stops (over TLS a close waits for the client, who may keep sending), and a
    # connection that does not close within a few seconds is aborted.
    assert conn.transport.producerState == "paused"
    api.clock.advance(REFUSAL_LINGER)
    assert conn.transport.disconnected


def test_endless_chunked_body_is_413_once_past_the_limit(api: Api) -> None:
    head = raw_request("POST", SNAPSHOT, headers={"Transfer-Encoding": "chunked"})
    conn = api.send(head)
    chunk = b"%x\r\n%s\r\n" % (4096, b"a" * 4096)
    sent = 0
    while not conn.transport.disconnecting and sent < 4 * MAX_BODY:
        conn.send(chunk)
        sent += 4096
    assert sent <= MAX_BODY + 4096  # refused as soon as the body passed the limit
    response = conn.response()
    assert response is not None
    assert_wcs_error(response, 413, f"Request body larger than {MAX_BODY} bytes", SNAPSHOT)
    request = conn.channel.requests[0]
    assert request.content.tell() <= MAX_BODY  # what was kept of the body


def test_too_many_or_too_large_headers_are_the_wcs_400(api: Api) -> None:
    many = {f"X-H{i}": "v" for i in range(101)}
    response = api.call("POST", SNAPSHOT, b"{}", many)
    assert_wcs_error(response, 400, "More than 100 request header fields", SNAPSHOT)
    large = {f"X-H{i}": "v" * 1000 for i in range(17)}
    response = api.call("POST", SNAPSHOT, b"{}", large)
    assert_wcs_error(response, 400, "Request headers larger than 16384 bytes", SNAPSHOT)
    conn = api.send(b"GET /" + b"a" * 20000)  # one line longer than the header limit
    long_line = conn.response()
    assert long_line is not None and long_line.status == 400 and conn.transport.disconnecting
    assert long_line.json()["message"] == "Request header line longer than 16384 bytes"


def test_malformed_request_is_the_wcs_400(api: Api) -> None:
    conn = api.send(b"POST /rest-api/stream/snapshot HTTP/1.1\r\nno colon here\r\n\r\n")
    response = conn.response()
    assert response is not None
    assert_wcs_error(response, 400, "Malformed HTTP request", SNAPSHOT)


# -- deadlines (finding 13) ---------------------------------------------------------------------


def trickle(api: Api, conn: Connection, data: bytes, every: float = 1.0) -> int:
    """Send `data` one byte per `every` seconds of the clock until the server closes."""
    for i, byte in enumerate(data):
        if conn.transport.disconnecting:
            return i
        conn.send(bytes([byte]))
        api.clock.advance(every)
    return len(data)


def test_headers_trickling_in_are_cut_off_at_the_deadline(
    api: Api, log_events: list[LogEvent]
) -> None:
    conn = api.send(b"G")
    head = raw_request("GET", FIND_ALL, headers={"X-Pad": "p" * 100})[1:]
    sent = trickle(api, conn, head)
    assert conn.transport.disconnected  # aborted: nothing to say to a half request
    assert sent == HEADER_DEADLINE  # one byte a second: closed at the 10 s deadline
    assert any("request headers not complete within 10 s" in formatEvent(e) for e in log_events)
    conn.disconnect()
    assert api.clock.getDelayedCalls() == []


def test_body_trickling_in_is_cut_off_at_the_deadline(api: Api) -> None:
    body = json.dumps({"streamName": "cam1", "pad": "p" * 100}).encode()
    conn = api.send(raw_request("POST", SNAPSHOT, headers={"Content-Length": str(len(body))}))
    sent = trickle(api, conn, body)
    assert conn.transport.disconnected and sent == BODY_DEADLINE
    assert api.snapshots.calls == []


def test_each_request_of_a_keep_alive_connection_has_its_own_deadline(api: Api) -> None:
    publish_now(api.hub, "cam1", PROVIDER_RTMP)
    conn = api.send(raw_request("GET", FIND_ALL))
    for _ in range(5):  # requests keep coming, each in time: the connection stays
        api.clock.advance(HEADER_DEADLINE - 1)
        conn.transport.clear()
        conn.send(raw_request("GET", FIND_ALL))
        response = conn.response()
        assert response is not None and response.status == 200
    assert not conn.transport.disconnecting


def test_idle_keep_alive_connection_still_closes_after_the_idle_timeout(api: Api) -> None:
    conn = api.send(raw_request("GET", FIND_ALL))
    assert conn.response() is not None
    api.clock.advance(IDLE_TIMEOUT - 1)
    assert not conn.transport.disconnecting
    api.clock.advance(1)
    assert conn.transport.disconnecting


# -- output a client does not read (finding 4) --------------------------------------------------


def slow_connection(api: Api) -> tuple[SlowReader, Any]:
    transport = SlowReader()
    channel = api.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert channel is not None
    channel.makeConnection(transport)
    return transport, channel


def test_snapshot_answer_is_produced_as_the_client_reads(api: Api) -> None:
    transport, channel = slow_connection(api)
    channel.dataReceived(raw_request("POST", SNAPSHOT, json.dumps({"streamName": "c"}).encode()))
    api.snapshots.last().callback(BIG_PNG)
    # Only about one buffer's worth is queued, however large the answer.
    assert transport.paused and len(transport.value()) < 3 * SlowReader.BUFFER
    while transport.paused:
        transport.read_all()
    transport.read_all()
    assert transport.most_buffered < 3 * SlowReader.BUFFER
    response = parse_response(transport.received)
    assert response is not None and response.status == 200
    # Byte for byte what json.dumps of the whole answer gives.
    expected = json.dumps({"data": base64.b64encode(BIG_PNG).decode()}, separators=(",", ":"))
    assert response.body == expected.encode()
    assert response.header("Content-Length") == str(len(response.body))


def test_client_that_stops_reading_is_dropped_after_the_drain_deadline(
    api: Api, log_events: list[LogEvent]
) -> None:
    transport, channel = slow_connection(api)
    channel.dataReceived(raw_request("POST", SNAPSHOT, json.dumps({"streamName": "c"}).encode()))
    api.snapshots.last().callback(BIG_PNG)
    assert transport.paused
    api.clock.advance(DRAIN_DEADLINE - 1)
    transport.read_all()  # it read once: the deadline starts over
    assert transport.paused
    api.clock.advance(DRAIN_DEADLINE - 1)
    assert not transport.disconnected
    api.clock.advance(1)
    assert transport.disconnected
    assert any("output not read by the client for 30 s" in formatEvent(e) for e in log_events)
    channel.connectionLost(Failure(ConnectionDone()))
    assert api.clock.getDelayedCalls() == []


# -- the origin of state-changing requests (finding 12) -----------------------------------------


def test_terminate_from_a_foreign_page_is_403(two: Api, log_events: list[LogEvent]) -> None:
    # A simple request (text/plain, no preflight) from any page the browser has open.
    headers = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    response = two.call("POST", TERMINATE, {"name": "cam1"}, headers)
    err = assert_wcs_error(response, 403, response.json()["message"], TERMINATE)
    assert "https://evil.example is not an allowed origin" in err["message"]
    assert err["exception"] == EXCEPTION + "ForbiddenException"
    assert response.header("Access-Control-Allow-Origin") == "*"
    assert two.hub.get("cam1") is not None and two.terminated == []
    assert any("evil.example" in formatEvent(e) for e in log_events)


CORS_APP = Settings(rest_access_control_allow_origin="https://app.example")
LISTED = Settings(ws_allowed_origins=("https://app.example:8443",))


@pytest.mark.parametrize(
    ("settings", "origin", "status"),
    [
        (Settings(), None, 200),  # curl, scripts: no Origin
        (Settings(), "http://localhost:8081", 200),  # the server's own pages
        (Settings(), "https://localhost", 200),  # same host, any scheme and port
        (Settings(), "null", 403),
        (Settings(), "http://localhost.evil.example", 403),
        (CORS_APP, "https://app.example", 200),
        (CORS_APP, "https://b.example", 403),
        (Settings(ws_allowed_origins=("*",)), "https://evil.example", 200),
        (LISTED, "https://app.example:8443", 200),
        (LISTED, "http://localhost:8081", 403),
    ],
)  # fmt: skip
def test_state_changing_request_origin_rule(
    settings: Settings, origin: str | None, status: int
) -> None:
    api = Api(settings)
    publish_now(api.hub, "cam1", PROVIDER_RTMP)
    headers = {"Origin": origin} if origin else {}
    assert api.call("POST", TERMINATE, {"name": "cam1"}, headers).status == status
    assert (api.hub.get("cam1") is None) == (status == 200)


def test_read_only_requests_from_any_page_are_unchanged(two: Api) -> None:
    headers = {"Origin": "https://evil.example"}
    assert two.call("POST", FIND, {"name": "cam1"}, headers).status == 200
    assert two.call("GET", FIND_ALL, headers=headers).status == 200
    conn = two.start("POST", SNAPSHOT, {"streamName": "cam1"}, headers)
    two.snapshots.last().callback(PNG)
    response = conn.response()
    assert response is not None and response.status == 200


# -- one guard over the layer -------------------------------------------------------------------


def test_a_bug_anywhere_in_rendering_is_the_wcs_500_not_an_html_page(
    api: Api, monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr("wcs.web.resources.demo_files", broken)
    response = api.call("GET", "/demo/page.html")
    assert_wcs_error(response, 500, "Internal Server Error", "/demo/page.html")
    assert any(e.get("log_failure") is not None for e in log_events)  # a bug: its traceback


def test_answer_to_a_client_already_not_reading_starts_paused(api: Api) -> None:
    """Over TLS the transport says "pause" once: an answer produced while the client is still
    not reading an earlier one (keep-alive) must not be written whole into the buffer."""
    transport, channel = slow_connection(api)
    transport.paused = True
    channel.pauseProducing()  # what the transport said about the earlier answer
    channel.dataReceived(raw_request("POST", SNAPSHOT, json.dumps({"streamName": "c"}).encode()))
    api.snapshots.last().callback(BIG_PNG)
    assert len(transport.value()) < 2 * SlowReader.BUFFER  # the headers, not 2.7 MB
    transport.read_all()
    while transport.paused:
        transport.read_all()
    transport.read_all()
    response = parse_response(transport.received)
    assert response is not None and response.status == 200
    assert len(response.body) == len(base64.b64encode(BIG_PNG)) + len('{"data":""}')


def test_static_file_to_a_client_already_not_reading_starts_paused(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a pull producer (a /demo file): Twisted drives it through a cooperator task
    that must start paused too, not write the whole file into the buffer."""
    content = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "big.js").write_bytes(content)
    monkeypatch.setattr(web_resources, "DEMO_DIR", tmp_path)
    cooperator = Cooperator(scheduler=lambda work: api.clock.callLater(0, work))
    monkeypatch.setattr(_producer_helpers, "cooperate", cooperator.cooperate)
    transport, channel = slow_connection(api)
    transport.paused = True
    channel.pauseProducing()
    channel.dataReceived(b"GET /demo/big.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
    for _ in range(20):
        api.clock.advance(0)
    assert len(transport.value()) < 2 * SlowReader.BUFFER  # the headers, not 1 MiB
    response = None
    for _ in range(1000):  # the client reads; the file follows a buffer at a time
        transport.read_all()
        api.clock.advance(0)
        if (response := parse_response(transport.received + transport.value())) is not None:
            break
    assert transport.most_buffered < 3 * SlowReader.BUFFER
    assert response is not None and response.status == 200 and response.body == content
