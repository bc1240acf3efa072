"""WebRTC through the WebSDK WebSocket API with aiortc as the browser: publish, snapshot, play.

The client speaks the SDK's messages (connection, publishStream, playStream, snapshot, ...)
over a real WebSocket (wsproto on asyncio streams) to a real `twistd wcs`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from av.video.frame import VideoFrame
from PIL import Image
from wsproto.events import TextMessage

from tests.integration.camera import assert_same_picture, reference_rgb, start_camera
from tests.integration.conftest import HookApp, Server, decode_png, start_server
from tests.integration.websdk_client import TIMEOUT, WSClient, session, ws_snapshot

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 640, 360
LEFT = (220, 40, 40)  # the synthetic picture: red left half, blue right half
RIGHT = (30, 60, 220)


class PatternTrack(MediaStreamTrack):
    """Synthetic camera: a two-colour picture at 30 fps."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        rgb = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        rgb[:, : WIDTH // 2] = LEFT
        rgb[:, WIDTH // 2 :] = RIGHT
        self.rgb = rgb
        self.pts = 0

    async def recv(self) -> VideoFrame:
        await asyncio.sleep(1 / 30)
        frame = VideoFrame.from_ndarray(self.rgb, format="rgb24")
        frame.pts = self.pts
        frame.time_base = Fraction(1, 90000)
        self.pts += 3000
        return frame


def only(kind: str, codec: str) -> list[Any]:
    caps = RTCRtpSender.getCapabilities(kind)
    assert caps is not None
    return [c for c in caps.codecs if c.name.upper() in (codec, "RTX")]


def assert_pattern(rgb: np.ndarray) -> None:
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    left = rgb[:, : WIDTH // 2 - 16].reshape(-1, 3).mean(axis=0)
    right = rgb[:, WIDTH // 2 + 16 :].reshape(-1, 3).mean(axis=0)
    assert np.abs(left - LEFT).max() < 20, left
    assert np.abs(right - RIGHT).max() < 20, right


@asynccontextmanager
async def publishing(
    client: WSClient, name: str, codec: str, custom: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, Any]]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver(PatternTrack(), direction="sendonly")
        transceiver.setCodecPreferences(only("video", codec))
        await pc.setLocalDescription(await pc.createOffer())
        msid = str(uuid.uuid4())
        client.send(
            "publishStream",
            {"mediaSessionId": msid, "name": name, "published": True, "hasVideo": True,
             "hasAudio": False, "status": "PENDING", "record": False,
             "mediaProvider": "WebRTC", "sdp": pc.localDescription.sdp,
             "custom": custom or {}},
        )  # fmt: skip
        remote_msid, answer = await client.expect("setRemoteSDP")
        assert remote_msid == msid
        assert "a=candidate:" in answer, "the answer must carry the server's candidates"
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        (status,) = await client.expect("notifyStreamStatusEvent", mediaSessionId=msid)
        assert status["status"] == "PUBLISHING", status
        assert status["name"] == name
        yield msid, pc
    finally:
        await pc.close()


def rest_snapshot(server: Server, name: str) -> np.ndarray:
    status, body = server.snapshot(name)
    assert status == 200, body
    assert isinstance(body, dict)
    return decode_png(body["data"])


@pytest.mark.parametrize("codec", ["H264", "VP8"])
def test_publish_snapshot_unpublish(server: Server, codec: str) -> None:
    name = f"pub{codec.lower()}"

    async def scenario() -> None:
        async with session(server) as client, publishing(client, name, codec) as (msid, _):
            # REST: the stream is listed as a WebRTC publish with the right codec and size.
            status, found = await asyncio.to_thread(
                server.rest, "/rest-api/stream/find", {"name": name}
            )
            assert status == 200, found
            assert isinstance(found, list) and found[0]["mediaProvider"] == "WebRTC"
            assert found[0]["mediaSessionId"] == msid

            rgb = await asyncio.to_thread(rest_snapshot, server, name)
            assert_pattern(rgb)

            event, st = await ws_snapshot(client, name)
            assert event["type"] == "snapshotCompleted"
            png = base64.b64decode(event["payload"]["snapshot"])
            assert_pattern(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
            assert (
                st["status"] == "SNAPSHOT_COMPLETE" and st["info"] == event["payload"]["snapshot"]
            )

            status, found = await asyncio.to_thread(
                server.rest, "/rest-api/stream/find", {"name": name}
            )
            assert found[0]["videoCodec"] == codec  # type: ignore[index]
            assert (found[0]["width"], found[0]["height"]) == (WIDTH, HEIGHT)  # type: ignore[index]

            client.send("unPublishStream", {"mediaSessionId": msid, "name": name})
            (st,) = await client.expect("notifyStreamStatusEvent", mediaSessionId=msid)
            assert st["status"] == "UNPUBLISHED"
            assert st["info"] == "Stopped by publisher stop"

        status, body = await asyncio.to_thread(server.snapshot, name)
        assert status == 404, body

    asyncio.run(scenario())


def test_name_in_use_and_disconnect_ends_stream(server: Server) -> None:
    async def scenario() -> None:
        async with session(server) as first:
            async with publishing(first, "taken", "VP8"):
                async with session(server) as second:
                    msid = str(uuid.uuid4())
                    second.send(
                        "publishStream",
                        {"mediaSessionId": msid, "name": "taken", "sdp": "v=0\r\n"},
                    )
                    (st,) = await second.expect("notifyStreamStatusEvent", mediaSessionId=msid)
                    assert st["status"] == "FAILED"
                    assert st["info"] == "Stream name is already in use"

                    # Snapshot of a missing stream: event and status both say why.
                    event, st = await ws_snapshot(second, "nosuch")
                    assert event["type"] == "snapshotFailed"
                    assert event["payload"]["info"] == "Stream not found"
                    assert st["status"] == "FAILED" and st["info"] == "Stream not found"

                    # Unknown messages are answered, the socket stays.
                    second.send("noSuchMessage", {})
                    (f,) = await second.expect("fail")
                    assert f["apiMethod"] == "noSuchMessage"
                    second.send("availableStream", {"mediaSessionId": "a1", "name": "taken"})
                    (av_,) = await second.expect("availableStream")
                    assert av_ == {**av_, "id": "a1", "status": "true"}
                mark = server.log_mark()
            # The publisher's socket closes without unpublishing: the stream ends with it.
            await first.close()
            await asyncio.to_thread(
                server.wait_for_log,
                r"stream taken ended: Stopped by session disconnect",
                20.0,
                mark,
            )
        status, _ = await asyncio.to_thread(server.snapshot, "taken")
        assert status == 404

    asyncio.run(scenario())


class FirstFrames:
    """Reads decoded frames of a received track until one is complete."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track

    async def picture(self) -> np.ndarray:
        while True:
            frame = await asyncio.wait_for(self.track.recv(), TIMEOUT)
            assert isinstance(frame, VideoFrame)
            return frame.to_ndarray(format="rgb24")


@asynccontextmanager
async def playing(
    client: WSClient, name: str, codec: str
) -> AsyncIterator[tuple[str, str, MediaStreamTrack]]:
    """playStream `name` into an aiortc peer that only accepts `codec`; yields (mediaSessionId,
    answer SDP, received track) once the server says PLAYING."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    got: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if not got.done():
            got.set_result(track)

    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        transceiver.setCodecPreferences(only("video", codec))
        await pc.setLocalDescription(await pc.createOffer())
        msid = str(uuid.uuid4())
        offer = pc.localDescription.sdp
        client.send("playStream", {"mediaSessionId": msid, "name": name, "sdp": offer})
        _, answer = await client.expect("setRemoteSDP")
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        (st,) = await client.expect("notifyStreamStatusEvent", mediaSessionId=msid)
        assert st["status"] == "PLAYING", st
        yield msid, answer, await asyncio.wait_for(got, TIMEOUT)
    finally:
        await pc.close()


@pytest.mark.parametrize(("source", "player"), [("H264", "H264"), ("VP8", "VP8"), ("VP8", "H264")])
def test_play(server: Server, source: str, player: str) -> None:
    name = f"play{source.lower()}{player.lower()}"

    async def scenario() -> None:
        async with (
            session(server) as pub,
            publishing(pub, name, source),
            session(server) as client,
        ):
            mark = server.log_mark()
            async with playing(client, name, player) as (msid, answer, track):
                assert f"{player}/90000" in answer
                mode = "relaying" if source == player else f"transcoding {source} to"
                await asyncio.to_thread(
                    server.wait_for_log, rf"player of {name}: {mode} {player}", 5.0, mark
                )
                assert_pattern(await FirstFrames(track).picture())
                client.send("stopStream", {"mediaSessionId": msid, "name": name})
                (st,) = await client.expect("notifyStreamStatusEvent", mediaSessionId=msid)
                assert st["status"] == "STOPPED"

    asyncio.run(scenario())


def test_play_missing_and_unreachable_rtsp(server: Server, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with session(server) as client:
            for name, info in (
                ("missing", "Stream not found"),
                (
                    "rtsp://127.0.0.1:1/cam",
                    "Failed to play RTSP stream: Cannot connect to the camera",
                ),
                ("rtsp://", "Rtsp has wrong format"),
            ):
                msid = str(uuid.uuid4())
                client.send("playStream", {"mediaSessionId": msid, "name": name, "sdp": "v=0"})
                (st,) = await client.expect("notifyStreamStatusEvent", mediaSessionId=msid)
                assert st["status"] == "FAILED" and st["info"].startswith(info), st
        # A pull started for a player that could not play is not left running.
        status, _ = await asyncio.to_thread(server.rest, "/rest-api/rtsp/find_all", {})
        assert status == 404

    asyncio.run(scenario())


def test_play_rtsp_camera_in_webrtc(server: Server) -> None:
    """playStream with an rtsp:// name pulls that camera and plays it (H.264 relayed)."""
    with start_camera(size="640x360", pattern="smpte") as camera:

        async def scenario() -> None:
            async with session(server) as client, playing(client, camera.url, "H264") as played:
                picture = await FirstFrames(played[2]).picture()
                assert picture.shape == (360, 640, 3)
                assert_same_picture(picture, reference_rgb("smpte", "640x360"))
                status, found = await asyncio.to_thread(server.rest, "/rest-api/rtsp/find_all", {})
                assert status == 200 and isinstance(found, list)
                assert [p["status"] for p in found] == ["PLAYING"]
                # The SDK snapshots a played camera by the name it played: the URI.
                event, snap_status = await ws_snapshot(client, camera.url)
                rgb = decode_png(event["payload"]["snapshot"])
                assert rgb.shape == (360, 640, 3)
                assert snap_status["status"] == "SNAPSHOT_COMPLETE"

        asyncio.run(scenario())


async def raw_ws(server: Server) -> tuple[WSClient, asyncio.StreamReader]:
    client = await WSClient.connect(server.ws + "/any/path")
    assert client._task is not None
    client._task.cancel()  # read the raw bytes here instead
    return client, client.reader


async def closed(reader: asyncio.StreamReader) -> None:
    """Reads until the server closes the connection (a reset counts)."""
    try:
        while await asyncio.wait_for(reader.read(65536), TIMEOUT):
            pass
    except ConnectionResetError:
        pass


@pytest.mark.parametrize(
    ("what", "log"),
    [
        ("oversized", r"more than \d+ bytes without a complete message"),
        ("json", r"closing session: malformed JSON"),
        ("binary", r"closing session: binary frame"),
        ("badframe", r"session closed"),
    ],
)
def test_bad_frames_close_only_that_socket(server: Server, what: str, log: str) -> None:
    async def scenario() -> None:
        async with session(server) as healthy:
            bad, reader = await raw_ws(server)
            mark = server.log_mark()
            if what == "oversized":
                # One 400 KiB message, sent in pieces: the server must not wait for the end.
                text = json.dumps({"message": "connection", "data": [{"x": "a" * 400_000}]})
                bad.writer.write(bad.ws.send(TextMessage(data=text)))
            elif what == "json":
                bad.writer.write(bad.ws.send(TextMessage(data="{not json")))
            elif what == "binary":
                from wsproto.events import BytesMessage

                bad.writer.write(bad.ws.send(BytesMessage(data=b"\x00\x01")))
            else:
                bad.writer.write(b"\x8f\x80\x00\x00\x00\x00")  # reserved opcode 0xF, masked
            await closed(reader)
            await asyncio.to_thread(server.wait_for_log, log, 10.0, mark)
            await bad.close()
            # The other session is untouched.
            healthy.send("availableStream", {"mediaSessionId": "x", "name": "none"})
            (answer,) = await healthy.expect("availableStream")
            assert answer["status"] == "false" and answer["info"] == "Stream not found"

    asyncio.run(scenario())


def test_hooks_and_the_publish_password_guard_websdk_sessions(
    tmp_path: Path, hook_app: HookApp
) -> None:
    """Finding 9: with a hook app, a WebSDK session, its publishes and plays are asked for; the
    publish password comes in the stream's custom object."""
    server = start_server(tmp_path, f"rest_hook_url={hook_app.url}\npublish_password=pw\n")

    async def scenario() -> None:
        refused = await WSClient.connect(server.ws + "/x")
        refused.send("connection", {"appKey": "defaultApp", "custom": {"key": "deny-1"}})
        (fail,) = await refused.expect("fail", apiMethod="connection")
        assert fail["info"] == "Denied by test app (connect)"
        assert await asyncio.wait_for(refused.inbox.get(), TIMEOUT) is None  # closed
        await refused.close()

        async with session(server) as client:
            msid = str(uuid.uuid4())
            client.send("publishStream", {"mediaSessionId": msid, "name": "cam", "sdp": "v=0"})
            (st,) = await client.expect("notifyStreamStatusEvent", mediaSessionId=msid)
            assert (st["status"], st["info"]) == ("FAILED", "Invalid publish password")

            msid = str(uuid.uuid4())
            client.send(
                "publishStream",
                {"mediaSessionId": msid, "name": "deny-cam", "sdp": "v=0",
                 "custom": {"password": "pw"}},
            )  # fmt: skip
            (st,) = await client.expect("notifyStreamStatusEvent", mediaSessionId=msid)
            assert (st["status"], st["info"]) == ("FAILED", "Denied by test app (publishStream)")

            async with publishing(client, "cam", "VP8", custom={"password": "pw", "key": "k"}):
                body = hook_app.body("publishStream")
                assert (body["name"], body["custom"]) == ("cam", {"key": "k"})
                assert body["mediaProvider"] == "WebRTC"
                msid = str(uuid.uuid4())
                client.send("playStream", {"mediaSessionId": msid, "name": "cam", "sdp": "v=0",
                                           "custom": {"key": "deny-play"}})  # fmt: skip
                (st,) = await client.expect("notifyStreamStatusEvent", mediaSessionId=msid)
                assert (st["status"], st["info"]) == ("FAILED", "Denied by test app (playStream)")

    try:
        asyncio.run(scenario())
    finally:
        assert server.stop() == 0
