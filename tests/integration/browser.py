"""Headless Debian Chromium driven by Playwright, with a fake camera, running the official WebSDK.

`SdkPage` opens a demo page served by the wcs under test (so the SDK is the one it serves) and
records every session/stream status and stream event into `window.wcsTest`; tests wait on those
records (page.wait_for_function), never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av
import numpy as np
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.integration.conftest import Clip, Server, _thumb

CHROMIUM = "/usr/bin/chromium"  # Debian's package: a test never downloads a browser of its own
WAIT_MS = 20_000
CAMERA_SIZE = (320, 240)  # the WebSDK's default publish constraints in Chromium
CAMERA_FPS = 15
CAMERA_SECONDS = 8

# --no-sandbox (root) and the closed-network flags as in the machine notes; the media flags give a
# camera and microphone without a prompt. The SDK never sends the browser's ICE candidates: the
# browser checks the server's (from the answer), so it must be allowed to use loopback, and any
# address it shows is a plain IP (no mDNS name, which aioice cannot resolve).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

# Before any page script: remember every RTCPeerConnection the SDK makes (for getStats), and when
# `wcsForceVideoCodec` is set, restrict the video transceivers to that codec (plus RTX) just before
# the SDK's createOffer, so the offer the server sees carries only that codec.
INIT_SCRIPT = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native) { return; }
  window.wcsPeers = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Native(...args);
    window.wcsPeers.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
  Object.setPrototypeOf(window.RTCPeerConnection, Native);
  const createOffer = Native.prototype.createOffer;
  Native.prototype.createOffer = function (...args) {
    const want = window.wcsForceVideoCodec;
    if (want) {
      const codecs = RTCRtpSender.getCapabilities("video").codecs;
      const keep = codecs.filter((c) => c.mimeType.toLowerCase() === "video/" + want.toLowerCase());
      const rtx = codecs.filter((c) => c.mimeType.toLowerCase() === "video/rtx");
      if (!keep.length) { throw new Error("this Chromium cannot send " + want); }
      for (const t of this.getTransceivers()) {
        if (t.sender.track && t.sender.track.kind === "video") {
          t.setCodecPreferences(keep.concat(rtx));
        }
      }
    }
    return createOffer.apply(this, args);
  };
})();
"""

# The recorder: one WebSDK session, streams by a test-chosen key, every status/event kept in order.
HARNESS = """
(() => {
  const C = Flashphoner.constants;
  const t = {
    session: null, sessionStatus: null, streams: {}, log: {}, events: {},
    record(key, status, info) {
      (t.log[key] = t.log[key] || []).push({status: status, info: info || null});
    },
    last(key) { const l = t.log[key]; return l && l.length ? l[l.length - 1] : null; },
    connect(url) {
      t.session = Flashphoner.createSession({urlServer: url});
      for (const s of Object.values(C.SESSION_STATUS)) {
        t.session.on(s, (session) => { t.sessionStatus = session.status(); });
      }
    },
    watch(key, stream) {
      t.streams[key] = stream;
      for (const s of Object.values(C.STREAM_STATUS)) {
        stream.on(s, (st) => t.record(key, s, st.getInfo()));
      }
      stream.on(C.STREAM_EVENT, (e) => {
        (t.events[key] = t.events[key] || []).push({type: e.type, payload: e.payload || null});
      });
      return stream;
    },
    publish(key, options) {
      t.watch(key, t.session.createStream(Object.assign({
        display: document.getElementById("localVideo"), cacheLocalResources: true,
        receiveVideo: false, receiveAudio: false}, options))).publish();
    },
    play(key, options) {
      t.watch(key, t.session.createStream(Object.assign({
        display: document.getElementById("remoteVideo")}, options))).play();
    },
    snapshot(key, name) { t.watch(key, t.session.createStream({name: name})).snapshot(); },
    stop(key) { t.streams[key].stop(); },
    // The first video RTP stats record of `type` that has counted `frames`, with its codec.
    async rtpVideo(type, frames) {
      for (const pc of window.wcsPeers) {
        const stats = await pc.getStats();
        for (const r of stats.values()) {
          if (r.type === type && r.kind === "video" && r.codecId && r[frames]) {
            const codec = stats.get(r.codecId);
            return {r: r, mimeType: codec ? codec.mimeType : null};
          }
        }
      }
      return null;
    },
    async videoStats() {
      const found = await t.rtpVideo("outbound-rtp", "framesEncoded");
      if (!found) { return null; }
      const r = found.r;
      return {mimeType: found.mimeType, frameWidth: r.frameWidth, frameHeight: r.frameHeight,
              framesEncoded: r.framesEncoded, encoder: r.encoderImplementation || null,
              limitedBy: r.qualityLimitationReason || null,
              targetBitrate: r.targetBitrate || null};
    },
    async inboundVideoStats() {
      const found = await t.rtpVideo("inbound-rtp", "framesDecoded");
      if (!found) { return null; }
      const r = found.r;
      return {mimeType: found.mimeType, frameWidth: r.frameWidth, frameHeight: r.frameHeight,
              framesDecoded: r.framesDecoded, packetsLost: r.packetsLost,
              freezeCount: r.freezeCount, keyFramesDecoded: r.keyFramesDecoded};
    },
    async waitVideoStats(timeoutMs) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const stats = await t.videoStats();
        if (stats || Date.now() > end) { return stats; }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    },
    // The picture a <video> shows right now, as a PNG data URL.
    grab(selector) {
      const v = document.querySelector(selector);
      const c = document.createElement("canvas");
      c.width = v.videoWidth; c.height = v.videoHeight;
      c.getContext("2d").drawImage(v, 0, 0);
      return c.toDataURL("image/png");
    },
  };
  window.wcsTest = t;
})();
"""

TERMINAL = ("FAILED", "STOPPED", "UNPUBLISHED")


def write_camera(
    path: Path,
    size: tuple[int, int] = CAMERA_SIZE,
    fps: int = CAMERA_FPS,
    seconds: int = CAMERA_SECONDS,
) -> None:
    """A Y4M clip of testsrc2 for Chromium to loop as its fake camera."""
    width, height = size
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi"]
    cmd += ["-i", f"testsrc2=size={width}x{height}:rate={fps}", "-t", str(seconds)]
    cmd += ["-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True, timeout=120)


def make_camera(path: Path) -> Clip:
    """The tests' fake camera; its frames tell what a picture shows."""
    width, height = CAMERA_SIZE
    write_camera(path)
    with av.open(str(path)) as container:
        thumbs = [_thumb(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return Clip(path, width, height, np.stack(thumbs))


def as_bt709(clip: Clip) -> Clip:
    """`clip` turned to RGB with the BT.709 matrix, as Chromium shows untagged HD video (PyAV
    assumes BT.601: the two differ by about 24 dB on testsrc2, which would hide a real error)."""
    with av.open(str(clip.path)) as container:
        thumbs = [
            _thumb(f.reformat(format="rgb24", src_colorspace="ITU709").to_ndarray())
            for f in container.decode(video=0)
        ]
    return Clip(clip.path, clip.width, clip.height, np.stack(thumbs))


@contextlib.contextmanager
def launch_chromium(camera: Path | None = None) -> Iterator[Browser]:
    """Debian's Chromium, headless, with `camera` as the fake video device (None: Chromium's
    own fake device, for pages that use no camera)."""
    camera_args = [f"--use-file-for-fake-video-capture={camera}"] if camera is not None else []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[*CHROMIUM_ARGS, *camera_args],
            )
            try:
                yield browser
            finally:
                browser.close()
    finally:
        # Playwright's sync API leaves its (closed) loop marked as running in this thread, and
        # every later asyncio.run() in the test session would refuse to start.
        asyncio.events._set_running_loop(None)


def new_context(browser: Browser) -> BrowserContext:
    context = browser.new_context()
    context.add_init_script(INIT_SCRIPT)
    context.set_default_timeout(WAIT_MS)
    return context


def data_url_bytes(url: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    return base64.b64decode(url[len(prefix) :], validate=True)


@dataclass
class SdkPage:
    """A demo page of `server` in Chromium, with the WebSDK recorder installed."""

    page: Page
    server: Server
    console: list[str]

    @classmethod
    def open(
        cls, context: BrowserContext, server: Server, path: str = "/demo/two-way-streaming.html"
    ) -> SdkPage:
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.goto(f"{server.http}{path}?urlServer={quote(server.ws, safe='')}")
        page.wait_for_function("typeof Flashphoner !== 'undefined'")
        page.evaluate(HARNESS)
        return cls(page, server, console)

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def explain(self) -> str:
        """What the page and the server said, for an assertion message."""
        records = self.js("JSON.stringify({session: wcsTest.sessionStatus, log: wcsTest.log})")
        return (
            f"page records: {records}\nbrowser console (last 15):\n"
            + "\n".join(self.console[-15:])
            + "\nserver log (last 20):\n"
            + "\n".join(self.server.lines[-20:])
        )

    def wait_text(self, selector: str, text: str) -> None:
        """Wait until the element's text is exactly `text` (a demo page's status field)."""
        try:
            self.page.wait_for_selector(f"{selector}:text-is({text!r})")
        except Exception as err:
            shown = self.page.inner_text(selector)
            raise AssertionError(
                f"{selector} shows {shown!r}, never {text!r}: {err}\n{self.explain()}"
            ) from None

    def force_video_codec(self, codec: str | None) -> None:
        self.js("(c) => { window.wcsForceVideoCodec = c; }", codec)

    def connect(self) -> None:
        self.js("(url) => wcsTest.connect(url)", self.server.ws)
        self.wait_session("ESTABLISHED")

    def wait_session(self, status: str) -> None:
        try:
            self.page.wait_for_function(
                "(want) => wcsTest.sessionStatus === want || wcsTest.sessionStatus === 'FAILED'",
                arg=status,
            )
        except Exception as err:
            raise AssertionError(f"session never {status}: {err}\n{self.explain()}") from None
        got = self.js("wcsTest.sessionStatus")
        assert got == status, f"session {got}, expected {status}\n{self.explain()}"

    def wait_status(self, key: str, status: str, timeout_ms: int = WAIT_MS) -> str | None:
        """Wait until stream `key` reaches `status` (or ends otherwise: that fails); its info."""
        try:
            self.page.wait_for_function(
                """([key, want, terminal]) => {
                    const l = wcsTest.log[key] || [];
                    return l.some((r) => r.status === want || terminal.includes(r.status));
                }""",
                arg=[key, status, list(TERMINAL)],
                timeout=timeout_ms,
            )
        except Exception as err:
            raise AssertionError(f"{key}: never {status}: {err}\n{self.explain()}") from None
        log = self.js("(key) => wcsTest.log[key]", key)
        reached = [r for r in log if r["status"] == status]
        assert reached, f"{key}: ended as {log[-1]} before {status}\n{self.explain()}"
        info = reached[0]["info"]
        return str(info) if info is not None else None

    def wait_event(self, key: str, timeout_ms: int = WAIT_MS) -> dict[str, Any]:
        """The first STREAM_EVENT of stream `key`."""
        try:
            self.page.wait_for_function(
                "(key) => (wcsTest.events[key] || []).length > 0", arg=key, timeout=timeout_ms
            )
        except Exception as err:
            raise AssertionError(f"{key}: no stream event: {err}\n{self.explain()}") from None
        event: dict[str, Any] = self.js("(key) => wcsTest.events[key][0]", key)
        return event

    def publish(self, key: str, name: str, **options: Any) -> None:
        self.js("([k, o]) => wcsTest.publish(k, o)", [key, {"name": name, **options}])

    def play(self, key: str, name: str, **options: Any) -> None:
        self.js("([k, o]) => wcsTest.play(k, o)", [key, {"name": name, **options}])

    def snapshot(self, key: str, name: str) -> None:
        self.js("([k, n]) => wcsTest.snapshot(k, n)", [key, name])

    def stop(self, key: str) -> None:
        self.js("(k) => wcsTest.stop(k)", key)

    def video_stats(self) -> dict[str, Any]:
        """The outbound video of this page once it has encoded frames: codec mimeType, frame size,
        frames encoded."""
        stats: dict[str, Any] | None = self.js("(ms) => wcsTest.waitVideoStats(ms)", WAIT_MS)
        assert stats is not None, f"no video was sent\n{self.explain()}"
        return stats

    def inbound_video_stats(self) -> dict[str, Any] | None:
        """The video this page receives: codec mimeType, frame size, frames decoded, losses."""
        stats: dict[str, Any] | None = self.js("wcsTest.inboundVideoStats()")
        return stats

    def wait_video(self, selector: str) -> tuple[int, int]:
        """Wait until the <video> under `selector` shows decoded frames; its size."""
        video = f"{selector} video"
        try:
            self.page.wait_for_function(
                """(sel) => {
                    const v = document.querySelector(sel);
                    return v && v.videoWidth > 0 && v.readyState >= 2 && !v.paused;
                }""",
                arg=video,
            )
        except Exception as err:
            raise AssertionError(f"{video} shows no picture: {err}\n{self.explain()}") from None
        size = self.js(
            "(s) => { const v = document.querySelector(s); return [v.videoWidth, v.videoHeight]; }",
            video,
        )
        return int(size[0]), int(size[1])

    def grab(self, selector: str) -> bytes:
        """A PNG of what the <video> under `selector` shows now."""
        return data_url_bytes(self.js("(sel) => wcsTest.grab(sel)", f"{selector} video"))
