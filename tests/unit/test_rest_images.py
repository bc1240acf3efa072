"""The image endpoints over a real SnapshotService (decoding in the test's thread, no sockets):
GET /rest-api/stream/snapshot, /api/frame.jpeg, the POST image fields, validators and reasons."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image
from twisted.internet.task import Clock

import wcs.snapshot.service as service_mod
from tests.unit.fakes import ManualPool, publish_now, sync_pool
from tests.unit.media_fixtures import Sample, h264_sample, png_rgb, pts_of
from tests.unit.rest_client import Connection, Response, assert_wcs_error, raw_request
from wcs.config import Settings
from wcs.media.units import MediaUnit, VideoParams
from wcs.rest.resources import build_site
from wcs.rest.views import StreamViews
from wcs.snapshot.service import SnapshotService
from wcs.streams import PROVIDER_RTMP, Stream, StreamHub

GET = "/rest-api/stream/snapshot"
T0 = 1_700_000_000_000  # the streams' wall clock at the first keyframe, ms


class Env:
    def __init__(self, settings: Settings | None = None, pool: Any = sync_pool) -> None:
        self.now = [T0]
        self.clock = Clock()
        self.hub = StreamHub(clock_ms=lambda: self.now[0])
        self.snapshots = SnapshotService(self.hub, pool, self.clock, interval_ms=3000)
        views = StreamViews(self.hub)
        views.describe("video", self.snapshots.video_json)
        self.site = build_site(
            settings or Settings(), self.hub, self.snapshots, self.clock, views=views
        )

    def publish(self, sample: Sample, units: int, name: str = "cam") -> Stream:
        stream = publish_now(self.hub, name, PROVIDER_RTMP)
        for unit in sample.units[:units]:
            stream.push(unit)
        return stream

    def start(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> Connection:
        conn = Connection(self.site)
        raw = None if body is None else json.dumps(body).encode()
        conn.send(raw_request(method, path, raw, headers))
        return conn

    def call(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> Response:
        response = self.start(method, path, body, headers).response()
        assert response is not None, "no complete response"
        return response


@pytest.fixture(scope="module")
def sample() -> Sample:
    return h264_sample(bframes=False)  # 320x240, GOPs of 30 at 30 fps


def image(response: Response) -> Image.Image:
    return Image.open(io.BytesIO(response.body))


def test_get_answers_the_png_the_post_answers_with_frame_headers(sample: Sample) -> None:
    env = Env()
    env.publish(sample, 10)
    env.now[0] = T0 + 1000
    got = env.call("GET", f"{GET}?streamName=cam")
    assert got.status == 200
    assert got.header("Content-Type") == "image/png"
    assert got.header("Cache-Control") == "no-store"
    assert pts_of(sample, png_rgb(got.body)) == sample.units[9].pts
    posted = env.call("POST", GET, {"streamName": "cam"})
    assert posted.json() == {"data": base64.b64encode(got.body).decode()}  # WCS's own answer
    # Unit 9 was taken 9 frames (300 ms) after the keyframe, which arrived at T0.
    assert got.header("X-Frame-Timestamp") == str(T0 + 300)
    assert got.header("X-Frame-Age-Ms") is not None
    assert got.header("Last-Modified") == "Tue, 14 Nov 2023 22:13:20 GMT"
    etag = got.header("ETag")
    assert etag is not None and etag.startswith('"') and etag.endswith('"')


def test_formats_sizes_and_accept(sample: Sample) -> None:
    env = Env()
    env.publish(sample, 5)
    jpeg = env.call("GET", f"{GET}?streamName=cam&format=jpeg&width=160&quality=60")
    assert jpeg.status == 200 and jpeg.header("Content-Type") == "image/jpeg"
    assert image(jpeg).format == "JPEG" and image(jpeg).size == (160, 120)
    tall = env.call("GET", f"{GET}?streamName=cam&format=webp&height=60")
    assert tall.header("Content-Type") == "image/webp" and image(tall).size == (80, 60)
    both = env.call("GET", f"{GET}?streamName=cam&format=png&width=100&height=50")
    assert image(both).size == (100, 50)
    accepted = env.call("GET", f"{GET}?streamName=cam", headers={"Accept": "image/webp,*/*"})
    assert accepted.header("Content-Type") == "image/webp"
    # Different encodings of one picture: different validators.
    tags = {r.header("ETag") for r in (jpeg, tall, both, accepted)}
    assert len(tags) == 4


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("width=abc", "width"),
        ("width=15", "width"),
        ("width=321", "width"),  # larger than the picture: no upscaling
        ("height=241", "height"),
        ("quality=0", "quality"),
        ("quality=101", "quality"),
        ("format=gif", "format"),
        ("maxAge=-1", "maxAge"),
        ("maxAge=soon", "maxAge"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_parameter(
    sample: Sample, query: str, param: str
) -> None:
    env = Env()
    env.publish(sample, 5)
    got = env.call("GET", f"{GET}?streamName=cam&{query}")
    body = assert_wcs_error(got, 400, got.json()["message"], GET)
    assert body["message"].startswith(param)


def test_if_none_match_is_a_304_until_a_new_picture_exists(sample: Sample) -> None:
    env = Env()
    stream = env.publish(sample, 5)
    first = env.call("GET", f"{GET}?streamName=cam&format=jpeg")
    etag = first.header("ETag")
    assert etag is not None
    same = env.call("GET", f"{GET}?streamName=cam&format=jpeg", headers={"If-None-Match": etag})
    assert same.status == 304 and same.body == b"" and same.header("ETag") == etag
    stream.push(sample.units[5])
    newer = env.call("GET", f"{GET}?streamName=cam&format=jpeg", headers={"If-None-Match": etag})
    assert newer.status == 200 and newer.header("ETag") != etag


def test_max_age_answers_a_recent_picture_without_decoding(
    sample: Sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes: list[object] = []
    real = service_mod.encode

    def counting(frame: Any, spec: Any) -> Any:
        encodes.append(spec)
        return real(frame, spec)

    monkeypatch.setattr(service_mod, "encode", counting)
    pool = ManualPool()
    env = Env(pool=pool)
    stream = env.publish(sample, 5)
    tile = f"{GET}?streamName=cam&format=jpeg&width=160&maxAge=2000"
    conn = env.start("GET", tile)
    pool.run_all()
    first = conn.response()
    assert first is not None and first.status == 200 and len(encodes) == 1
    for unit in sample.units[5:10]:
        stream.push(unit)
    env.now[0] += 1500
    ran = pool.ran
    again = env.call("GET", tile)  # answered at once: no job, no encode
    assert again.status == 200 and again.header("ETag") == first.header("ETag")
    assert pool.ran == ran and len(encodes) == 1
    env.now[0] += 1000  # older than 2 s now: a newer picture is decoded
    conn = env.start("GET", tile)
    pool.run_all()
    newer = conn.response()
    assert newer is not None and newer.header("ETag") != first.header("ETag")


def test_requests_for_one_picture_share_its_decode_and_each_encoding(
    sample: Sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes: list[str] = []
    real = service_mod.encode

    def counting(frame: Any, spec: Any) -> Any:
        encodes.append(spec.format)
        return real(frame, spec)

    monkeypatch.setattr(service_mod, "encode", counting)
    pool = ManualPool()
    env = Env(pool=pool)
    env.publish(sample, 5)
    conns = [env.start("GET", f"{GET}?streamName=cam&format={f}") for f in ("jpeg", "jpeg", "png")]
    pool.run_all()
    responses = [c.response() for c in conns]
    assert all(r is not None and r.status == 200 for r in responses)
    assert sorted(encodes) == ["jpeg", "png"]  # one job, one encode per format


def test_go2rtc_frame_url(sample: Sample) -> None:
    env = Env()
    env.publish(sample, 5)
    got = env.call("GET", "/api/frame.jpeg?src=cam&width=160")
    assert got.status == 200 and got.header("Content-Type") == "image/jpeg"
    assert image(got).size == (160, 120)
    assert env.call("GET", "/api/frame.jpeg?src=cam&format=png").header("Content-Type") == (
        "image/jpeg"
    )
    missing = env.call("GET", "/api/frame.jpeg")
    assert_wcs_error(
        missing, 400, "'src' is required and must be a non-empty string", "/api/frame.jpeg"
    )
    assert env.call("GET", "/api/nope").status == 404


def test_why_there_is_no_picture(sample: Sample) -> None:
    env = Env()
    gone = env.call("GET", f"{GET}?streamName=nobody")
    assert_wcs_error(gone, 404, "Stream not found", GET, "stream_not_found")
    assert gone.header("X-Snapshot-Error") == "stream_not_found"

    hevc = publish_now(env.hub, "hevc", PROVIDER_RTMP)
    hevc.set_video_params(VideoParams("H265", 320, 240))
    refused = env.call("GET", f"{GET}?streamName=hevc")  # at once: waiting would not help
    assert refused.status == 415 and refused.header("X-Snapshot-Error") == "unsupported_codec"
    assert "H265" in refused.json()["message"]

    radio = publish_now(env.hub, "radio", PROVIDER_RTMP)
    radio.push(MediaUnit("audio", "AAC", 0, 0, True, b"\x21\x00"))
    waiting = publish_now(env.hub, "waiting", PROVIDER_RTMP)
    waiting.set_video_params(VideoParams("H264", 320, 240))
    waiting.push(sample.units[1])  # not a keyframe: nothing decodable yet
    conns = {name: env.start("GET", f"{GET}?streamName={name}") for name in ("radio", "waiting")}
    posted = env.start("POST", GET, {"streamName": "radio"})
    env.clock.pump([0.1] * 31)
    radio_got, waiting_got = (conns[n].response() for n in ("radio", "waiting"))
    assert radio_got is not None and radio_got.status == 409
    assert radio_got.header("X-Snapshot-Error") == "no_video"
    assert waiting_got is not None and waiting_got.status == 503
    assert waiting_got.header("X-Snapshot-Error") == "awaiting_keyframe"
    assert waiting_got.header("Retry-After") == "1"
    # The WCS endpoint keeps its 500 and message, and says why in "code".
    post_got = posted.response()
    assert post_got is not None
    assert_wcs_error(post_got, 500, "Snapshot response timeout", GET, "no_video")


def test_post_image_fields_add_the_frame_timestamp(sample: Sample) -> None:
    env = Env()
    env.publish(sample, 4)
    got = env.call("POST", GET, {"streamName": "cam", "format": "jpeg", "width": 160})
    body = got.json()
    assert set(body) == {"data", "format", "width", "height", "frameTimestamp"}
    assert (body["format"], body["width"], body["height"]) == ("jpeg", 160, 120)
    assert body["frameTimestamp"] == T0 + 100
    assert Image.open(io.BytesIO(base64.b64decode(body["data"]))).size == (160, 120)
    bad = env.call("POST", GET, {"streamName": "cam", "width": True})
    assert bad.status == 400 and bad.json()["message"].startswith("width")


def test_find_says_whether_a_snapshot_can_be_taken(sample: Sample) -> None:
    env = Env()
    env.publish(sample, 4)
    env.now[0] = T0 + 250
    found = env.call("POST", "/rest-api/stream/find", {"name": "cam"}).json()
    assert found[0]["video"] == {"state": "ok", "lastKeyframeAgeMs": 250}


def test_image_endpoints_need_the_rest_credentials(sample: Sample) -> None:
    env = Env(Settings(disable_rest_auth=False, rest_auth_user="u", rest_auth_password="p"))
    env.publish(sample, 4)
    assert env.call("GET", f"{GET}?streamName=cam").status == 401
    assert env.call("GET", "/api/frame.jpeg?src=cam").status == 401
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    assert env.call("GET", "/api/frame.jpeg?src=cam", headers=auth).status == 200


def test_max_age_on_a_cold_stream_decodes_the_keyframe_only_and_keeps_it_cold(
    sample: Sample,
) -> None:
    env = Env()
    stream = env.publish(sample, 20)
    env.now[0] = T0 + 900  # the keyframe arrived at T0: 0.9 s old
    got = env.call("GET", f"{GET}?streamName=cam&format=jpeg&width=160&maxAge=1000")
    assert got.status == 200 and got.header("X-Frame-Timestamp") == str(T0)
    source = env.snapshots.source(stream)
    assert source.decoder.frames_decoded == 1 and not source.requested
    env.now[0] = T0 + 1100  # older than the keyframe's picture: the newest is decoded
    newer = env.call("GET", f"{GET}?streamName=cam&format=jpeg&width=160&maxAge=1000")
    assert newer.header("X-Frame-Timestamp") == str(T0 + 19 * 100 // 3)
    assert not source.requested
