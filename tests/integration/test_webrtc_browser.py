"""End to end in headless Chromium with the official WebSDK served by wcs: publish, play, snapshot
(SDK and REST), stop, refusals, VP8 and H.264 publishing, and an RTMP stream played in the browser.

The fake camera is a known clip, so every picture (snapshot or played frame) is checked against it.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, BrowserContext

from tests.integration.browser import (
    CAMERA_SIZE,
    SdkPage,
    as_bt709,
    launch_chromium,
    make_camera,
    new_context,
)
from tests.integration.conftest import Clip, Server, best_match, decode_png, publishing
from wcs.web.resources import SDK_MISSING

pytestmark = pytest.mark.integration

# WebRTC at the browser's starting bitrate is far from lossless (seen: 33-40 dB); a wrong picture
# (grey, green, colour bars, the clip shifted by 20 px) scores under 10 dB against the clip.
MIN_PSNR = 25.0
# H.264 relayed as published (no re-encoding) is the encoder's own picture (seen: 45 dB).
RELAY_PSNR = 38.0


@pytest.fixture(scope="session")
def camera(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    return make_camera(tmp_path_factory.mktemp("camera") / "camera.y4m")


@pytest.fixture(scope="module")  # Playwright's sync API holds this thread's loop while it runs
def chromium(camera: Clip) -> Iterator[Browser]:
    with launch_chromium(camera.path) as browser:
        yield browser


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    ctx = new_context(chromium)
    try:
        yield ctx
    finally:
        ctx.close()


def stream_name() -> str:
    return "b" + uuid.uuid4().hex[:10]


def assert_shows(clip: Clip, png: bytes | str, what: str, min_psnr: float = MIN_PSNR) -> np.ndarray:
    """`png` (bytes, or base64 as the APIs send it) is an RGB PNG of `clip`'s size showing it."""
    if isinstance(png, bytes):
        assert png[:8] == b"\x89PNG\r\n\x1a\n", f"{what}: not a PNG"
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    else:
        rgb = decode_png(png)
    assert (rgb.shape[1], rgb.shape[0]) == (clip.width, clip.height), f"{what}: size {rgb.shape}"
    index, psnr = best_match(clip, rgb)
    assert psnr > min_psnr, f"{what} matches no camera frame (best {index}, {psnr:.1f} dB)"
    return rgb


def published(sdk: SdkPage, name: str, **options: Any) -> None:
    sdk.publish("pub", name, **options)
    sdk.wait_status("pub", "PUBLISHING")


# -- the demo pages, clicked as a user would ---------------------------------------------------
def test_demo_index_links_pages_with_the_ws_url(server: Server, context: BrowserContext) -> None:
    page = context.new_page()
    page.goto(f"{server.http}/demo/")
    page.click("text=Two Way Streaming")
    page.wait_for_function("typeof Flashphoner !== 'undefined'")
    assert page.input_value("#urlServer") == server.ws
    assert page.is_hidden("#sdkError")


@pytest.mark.parametrize("page_name", ["two-way-streaming.html", "stream-snapshot.html"])
def test_page_without_the_sdk_says_so(
    page_name: str, server: Server, context: BrowserContext
) -> None:
    """The server's answer when node_modules has no SDK (see the unit tests), seen by a browser."""
    page = context.new_page()
    page.route(
        "**/demo/sdk/flashphoner.js",
        lambda route: route.fulfill(status=404, content_type="text/plain", body=SDK_MISSING),
    )
    page.goto(f"{server.http}/demo/{page_name}")
    page.wait_for_selector("#sdkError:visible")
    assert "WebSDK is not installed" in page.inner_text("#sdkError")
    assert page.evaluate("typeof Flashphoner") == "undefined"
    assert page.is_disabled("#publishBtn")


def test_two_way_streaming_page(server: Server, context: BrowserContext, camera: Clip) -> None:
    """Connect, publish, play the same name in a second page, stop: the page's own buttons."""
    name = stream_name()
    publisher = SdkPage.open(context, server)
    publisher.page.click("#connectBtn")
    publisher.wait_text("#connectStatus", "ESTABLISHED")
    publisher.page.fill("#publishName", name)
    publisher.page.click("#publishBtn")
    publisher.wait_text("#publishStatus", "PUBLISHING")
    assert publisher.wait_video("#localVideo") == CAMERA_SIZE

    player = SdkPage.open(context, server)
    player.page.click("#connectBtn")
    player.wait_text("#connectStatus", "ESTABLISHED")
    player.page.fill("#playName", name)
    player.page.click("#playBtn")
    player.wait_text("#playStatus", "PLAYING")
    assert player.wait_video("#remoteVideo") == CAMERA_SIZE
    assert_shows(camera, player.grab("#remoteVideo"), "the played video")

    publisher.page.click("#publishBtn")  # now "Stop"
    publisher.wait_text("#publishStatus", "UNPUBLISHED")
    player.wait_text("#playStatus", "STOPPED")
    status, _ = server.snapshot(name)
    assert status == 404


def test_stream_snapshot_page(server: Server, context: BrowserContext, camera: Clip) -> None:
    sdk = SdkPage.open(context, server, "/demo/stream-snapshot.html")
    sdk.page.click("#publishBtn")
    sdk.wait_text("#publishStatus", "PUBLISHING")
    sdk.page.click("#snapshotBtn")
    sdk.wait_text("#snapshotStatus", "SNAPSHOT_COMPLETE")
    src = sdk.page.get_attribute("#snapshotImg", "src")
    assert src is not None and src.startswith("data:image/png;base64,")
    assert_shows(camera, src.split(",", 1)[1], "the page's snapshot")
    assert sdk.page.is_visible("#snapshotImg")


# -- the SDK API -------------------------------------------------------------------------------
def test_publish_play_snapshot_stop(server: Server, context: BrowserContext, camera: Clip) -> None:
    name = stream_name()
    sdk = SdkPage.open(context, server)
    sdk.connect()
    published(sdk, name)

    # STREAM_EVENT form (current SDK): snapshotCompleted with payload.snapshot.
    sdk.snapshot("snap-event", name)
    event = sdk.wait_event("snap-event")
    assert event["type"] == "snapshotCompleted", event
    assert_shows(camera, event["payload"]["snapshot"], "snapshotCompleted payload")

    # Older form: STREAM_STATUS.SNAPSHOT_COMPLETE, the PNG in stream.getInfo().
    sdk.snapshot("snap-status", name)
    info = sdk.wait_status("snap-status", "SNAPSHOT_COMPLETE")
    assert info is not None
    assert_shows(camera, info, "SNAPSHOT_COMPLETE info")

    # The same stream over REST, as any other stream.
    status, body = server.snapshot(name)
    assert status == 200, body
    assert isinstance(body, dict)
    assert_shows(camera, body["data"], "REST snapshot")
    status, found = server.rest("/rest-api/stream/find", {"name": name})
    assert status == 200, found
    assert isinstance(found, list) and len(found) == 1
    assert found[0]["mediaProvider"] == "WebRTC"
    assert found[0]["published"] is True
    assert (found[0]["width"], found[0]["height"]) == CAMERA_SIZE

    sdk.play("play", name)
    sdk.wait_status("play", "PLAYING")
    assert sdk.wait_video("#remoteVideo") == CAMERA_SIZE

    sdk.stop("pub")
    sdk.wait_status("pub", "UNPUBLISHED")
    status, _ = server.snapshot(name)
    assert status == 404


def test_publish_of_a_taken_name_fails(server: Server, context: BrowserContext) -> None:
    name = stream_name()
    first = SdkPage.open(context, server)
    first.connect()
    published(first, name)
    second = SdkPage.open(context, server)
    second.connect()
    second.publish("again", name)
    second.wait_status("again", "FAILED")
    info = second.js("() => wcsTest.streams['again'].getInfo()")
    assert info == "Stream name is already in use"
    # The first publisher is untouched.
    assert first.js("() => wcsTest.streams['pub'].status()") == "PUBLISHING"
    assert server.snapshot(name)[0] == 200


def test_snapshot_of_an_unknown_name_fails(server: Server, context: BrowserContext) -> None:
    sdk = SdkPage.open(context, server)
    sdk.connect()
    name = stream_name()
    sdk.snapshot("snap", name)
    event = sdk.wait_event("snap")
    assert event["type"] == "snapshotFailed", event
    assert event["payload"]["info"] == "Stream not found"
    assert sdk.wait_status("snap", "FAILED") == "Stream not found"
    assert sdk.js("() => wcsTest.sessionStatus") == "ESTABLISHED"


def test_closing_the_page_ends_the_stream(server: Server, context: BrowserContext) -> None:
    name = stream_name()
    sdk = SdkPage.open(context, server)
    sdk.connect()
    published(sdk, name)
    assert server.snapshot(name)[0] == 200
    mark = server.log_mark()
    sdk.page.close()
    server.wait_for_log(r"session closed \(1 streams ended\)", 15.0, mark)
    assert server.snapshot(name)[0] == 404, f"{name} did not end with its session"


@pytest.mark.parametrize(
    ("codec", "how"),
    [("VP8", "codec preferences"), ("H264", "codec preferences"), ("H264", "stripCodecs")],
)
def test_publish_codec(
    codec: str, how: str, server: Server, context: BrowserContext, camera: Clip
) -> None:
    """Chromium publishes `codec` (forced with setCodecPreferences, or with the SDK's own
    `stripCodecs` option as a WCS user would); the stream snapshots the camera's picture."""
    name = stream_name()
    sdk = SdkPage.open(context, server)
    sdk.connect()
    if how == "stripCodecs":
        published(sdk, name, stripCodecs="VP8,VP9,AV1")
    else:
        sdk.force_video_codec(codec)
        published(sdk, name)
    stats = sdk.video_stats()
    assert stats["mimeType"] == f"video/{codec}", stats

    status, body = server.snapshot(name)
    assert status == 200, body
    assert isinstance(body, dict)
    assert_shows(camera, body["data"], f"REST snapshot of a {codec} publish")
    # Once a frame has been decoded, the stream says what it carries.
    status, found = server.rest("/rest-api/stream/find", {"name": name})
    assert status == 200 and isinstance(found, list), found
    assert found[0]["hasVideo"] is True, found[0]
    assert str(found[0]["videoCodec"]).upper().replace(".", "") == codec, found[0]
    sdk.snapshot("snap", name)
    event = sdk.wait_event("snap")
    assert event["type"] == "snapshotCompleted", event
    assert_shows(camera, event["payload"]["snapshot"], f"SDK snapshot of a {codec} publish")


# -- RTMP in, browser out ----------------------------------------------------------------------
def test_rtmp_stream_played_in_browser(
    server: Server, context: BrowserContext, clips: dict[str, Clip]
) -> None:
    """ffmpeg publishes H.264 over RTMP; Chromium plays it as H.264, relayed, not re-encoded."""
    clip = clips["baseline"]
    name = stream_name()
    with publishing(server, name, clip.path):
        sdk = SdkPage.open(context, server)
        sdk.connect()
        sdk.play("play", name)
        sdk.wait_status("play", "PLAYING")
        assert sdk.wait_video("#remoteVideo") == (clip.width, clip.height)
        stats = sdk.inbound_video_stats()
        assert stats is not None and stats["mimeType"] == "video/H264", stats
        shown = sdk.grab("#remoteVideo")
        assert_shows(as_bt709(clip), shown, "the RTMP stream played in Chromium", RELAY_PSNR)
