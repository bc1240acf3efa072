"""/rest-api/rtsp/* through the real Site: startup, find_all, terminate over a PullManager whose
connections are faked (no sockets), and the WCS shapes of answers and errors."""

from __future__ import annotations

from typing import cast

import pytest
from twisted.internet.error import ConnectionRefusedError, NoRouteError, TCPTimedOutError

from tests.unit.camera import camera_sdp, video_rtp
from tests.unit.fakes import FakeConnector, publish_now
from tests.unit.rest_client import CREATED_MS, Api, assert_wcs_error
from wcs.rest.resources import build_site
from wcs.rtsp.pull import PullManager
from wcs.snapshot.service import SnapshotService
from wcs.streams import PROVIDER_RTMP

STARTUP = "/rest-api/rtsp/startup"
FIND_ALL = "/rest-api/rtsp/find_all"
TERMINATE = "/rest-api/rtsp/terminate"
CAMERA = "rtsp://admin:s3cret@10.0.0.2:554/stream1"
CLEAN = "rtsp://10.0.0.2:554/stream1"


class RtspApi(Api):
    """test_rest's Api with a PullManager whose connections are faked."""

    def __init__(self, with_pulls: bool = True) -> None:
        super().__init__()
        self.connector = FakeConnector()
        self.pulls = PullManager(self.hub, self.clock, connector=self.connector)
        if with_pulls:
            self.site = build_site(
                self.settings,
                self.hub,
                cast(SnapshotService, self.snapshots),
                self.clock,
                pulls=self.pulls,
            )


@pytest.fixture
def api() -> RtspApi:
    return RtspApi()


def test_startup_answers_the_pull_object(api: RtspApi) -> None:
    response = api.call("POST", STARTUP, {"uri": CAMERA, "toStream": "door"})
    assert response.status == 200 and response.header("Content-Type") == "application/json"
    pull = response.json()
    stream = api.hub.get("door")
    assert stream is not None
    assert pull == {
        "uri": CLEAN,
        "toStream": "door",
        "localStreamName": "door",
        "mediaSessionId": stream.media_session_id,
        "status": "PENDING",
        "info": "",
        "hasVideo": False,
        "hasAudio": False,
        "videoCodec": None,
        "audioCodec": None,
        "width": 0,
        "height": 0,
        "reconnects": 0,
        "createDate": CREATED_MS,
        "mediaProvider": "RTSP",
    }
    assert b"s3cret" not in response.body
    assert [(a.host, a.port) for a in api.connector.attempts] == [("10.0.0.2", 554)]
    # The stream is an ordinary live stream of the hub.
    found = api.call("POST", "/rest-api/stream/find", {"name": "door"}).json()
    assert [(s["name"], s["mediaProvider"], s["status"]) for s in found] == [
        ("door", "RTSP", "PENDING")
    ]


def test_startup_without_to_stream_names_the_stream_by_uri(api: RtspApi) -> None:
    for body in ({"uri": CAMERA}, {"uri": CAMERA, "toStream": ""}):
        response = api.call("POST", STARTUP, body)
        assert response.status == 200
        assert response.json()["localStreamName"] == "10.0.0.2:554_stream1"
        api.pulls.terminate(CLEAN)


def test_startup_into_a_taken_name_is_409(api: RtspApi) -> None:
    assert api.call("POST", STARTUP, {"uri": CAMERA, "toStream": "door"}).status == 200
    response = api.call("POST", STARTUP, {"uri": "rtsp://other/x", "toStream": "door"})
    assert_wcs_error(response, 409, "Stream name is already in use", STARTUP)
    publish_now(api.hub, "rtmp1", PROVIDER_RTMP)
    response = api.call("POST", STARTUP, {"uri": "rtsp://other/x", "toStream": "rtmp1"})
    assert response.status == 409
    assert len(api.connector.attempts) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "'uri' is required and must be a non-empty string"),
        ({"uri": 5}, "'uri' is required and must be a non-empty string"),
        ({"uri": "http://cam/x"}, "uri must start with rtsp://"),
        ({"uri": "rtsp://cam/" + "x" * 3000}, "uri longer than 2048 characters"),
        ({"uri": "rtsp://a:b@c@cam/x"}, "malformed credentials in uri"),
        ({"uri": CAMERA, "toStream": 7}, "'toStream' must be a string"),
        ({"uri": CAMERA, "toStream": "a/b"}, "Invalid stream name"),
    ],
)
def test_startup_bad_requests_are_400(api: RtspApi, body: object, message: str) -> None:
    response = api.call("POST", STARTUP, body)
    error = assert_wcs_error(response, 400, response.json()["message"], STARTUP)
    assert error["message"].startswith(message)
    assert api.connector.attempts == [] and len(api.hub) == 0


def test_find_all(api: RtspApi) -> None:
    for method in ("GET", "POST"):
        assert_wcs_error(api.call(method, FIND_ALL), 404, "Streams not found", FIND_ALL)
    api.call("POST", STARTUP, {"uri": CAMERA, "toStream": "door"})
    api.call("POST", STARTUP, {"uri": "rtsp://10.0.0.3/live", "toStream": "gate"})
    _, cam = api.connector.accept()  # the gate camera plays
    cam.handshake(sdp=camera_sdp(audio=False))
    cam.rtp(0, video_rtp())
    for method in ("GET", "POST"):
        response = api.call(method, FIND_ALL)
        assert response.status == 200
        pulls = response.json()
        assert [(p["localStreamName"], p["uri"], p["status"]) for p in pulls] == [
            ("door", CLEAN, "PENDING"),
            ("gate", "rtsp://10.0.0.3/live", "PLAYING"),
        ]
        gate = pulls[1]
        assert (gate["width"], gate["height"], gate["videoCodec"]) == (160, 120, "H264")


def test_terminate(api: RtspApi) -> None:
    api.call("POST", STARTUP, {"uri": CAMERA, "toStream": "door"})
    api.call("POST", STARTUP, {"uri": "rtsp://10.0.0.3/live", "toStream": "gate"})
    missing = "'uri' (or 'toStream') is required and must be a string"
    assert_wcs_error(api.call("POST", TERMINATE, {}), 400, missing, TERMINATE)
    unknown = api.call("POST", TERMINATE, {"uri": "rtsp://nope/x"})
    assert_wcs_error(unknown, 404, "Stream not found", TERMINATE)
    # By URI (with or without the credentials) or by the local name.
    response = api.call("POST", TERMINATE, {"uri": CAMERA})
    assert response.status == 200 and response.json() == {}
    assert api.hub.get("door") is None
    assert api.call("POST", TERMINATE, {"toStream": "gate"}).status == 200
    assert len(api.hub) == 0
    assert_wcs_error(api.call("POST", FIND_ALL), 404, "Streams not found", FIND_ALL)


def test_snapshot_by_camera_uri(api: RtspApi) -> None:
    api.call("POST", STARTUP, {"uri": CAMERA, "toStream": "door"})
    for name in (CLEAN, CAMERA, "door", "rtsp://unknown/x"):
        api.start("POST", "/rest-api/stream/snapshot", {"streamName": name})
    assert api.snapshots.names == ["door", "door", "door", "rtsp://unknown/x"]


def test_methods(api: RtspApi) -> None:
    response = api.call("GET", STARTUP)
    assert_wcs_error(response, 405, "Request method 'GET' is not supported", STARTUP)
    assert api.call("GET", TERMINATE).status == 405


def test_no_rtsp_endpoints_without_a_pull_manager() -> None:
    api = RtspApi(with_pulls=False)
    response = api.call("POST", STARTUP, {"uri": CAMERA})
    assert_wcs_error(response, 404, "Not found", STARTUP)
    assert api.connector.attempts == []


def test_refused_and_unreachable_cameras_look_the_same_over_rest(api: RtspApi) -> None:
    """Finding 12: /rtsp/startup and /rtsp/find_all must not tell a refused port from a
    filtered or unreachable one (an internal port scanner)."""
    answers = [
        api.call("POST", STARTUP, {"uri": f"rtsp://10.0.0.{n}:{port}/x", "toStream": name}).json()
        for n, port, name in ((5, 22, "closed"), (6, 8554, "filtered"), (7, 80, "unreachable"))
    ]
    assert {a["status"] for a in answers} == {"PENDING"} and {a["info"] for a in answers} == {""}
    closed, filtered, unreachable = api.connector.attempts
    closed.deferred.errback(ConnectionRefusedError())
    filtered.deferred.errback(TCPTimedOutError())
    unreachable.deferred.errback(NoRouteError())
    pulls = api.call("POST", FIND_ALL).json()
    assert [(p["status"], p["info"]) for p in pulls] == [
        ("RECONNECTING", "Cannot connect to the camera")
    ] * 3
    streams = api.call("POST", "/rest-api/stream/find_all").json()
    assert {s["status"] for s in streams} == {"RECONNECTING"}


@pytest.mark.parametrize("uri", ["rtsp://[fd00::1/x", "rtsp://cam:\u0665\u0665\u0664/x"])
def test_startup_with_a_url_urlsplit_refuses_is_400(api: RtspApi, uri: str) -> None:
    response = api.call("POST", STARTUP, {"uri": uri})
    assert_wcs_error(response, 400, response.json()["message"], STARTUP)
    assert api.connector.attempts == []


@pytest.mark.parametrize(
    ("path", "body"),
    [(STARTUP, {"uri": CAMERA, "toStream": "door"}), (TERMINATE, {"uri": CAMERA})],
)
def test_pull_methods_refuse_a_foreign_page(api: RtspApi, path: str, body: dict[str, str]) -> None:
    if path == TERMINATE:
        assert api.call("POST", STARTUP, {"uri": CAMERA, "toStream": "door"}).status == 200
    headers = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    response = api.call("POST", path, body, headers)
    assert_wcs_error(response, 403, response.json()["message"], path)
    assert len(api.pulls.find_all()) == (1 if path == TERMINATE else 0)
    # The same request from the server's own page, or without a page (curl), is served.
    same_host = {"Origin": "http://localhost:8081"}
    assert api.call("POST", path, body, same_host).status == 200


@pytest.mark.parametrize("path", [STARTUP, TERMINATE])
def test_uri_the_url_parser_refuses_is_a_400(api: RtspApi, path: str) -> None:
    """Found by the fuzz target http_request: urlsplit's own ValueError ("Invalid IPv6 URL")
    escaped the URI check and was answered 500 with a traceback."""
    uri = "rtsp://10[0.0.225=4/stream1"
    response = api.call("POST", path, {"uri": uri, "toStream": "door"})
    if path == STARTUP or response.status != 404:
        assert_wcs_error(response, 400, response.json()["message"], path)
    assert api.hub.get("door") is None
