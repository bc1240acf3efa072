"""The Stream Wall demo page (/demo/wall.html) in Debian's headless Chromium against a real server
and ffmpeg publishers: streams appear as tiles without a reload, each tile shows its own source's
picture (tile-sized, refreshed, with If-None-Match and no leaked object URLs), a stream without a
picture shows why, and an ended stream's tile goes while the others stay."""

from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page

from tests.integration.browser import WAIT_MS, launch_chromium
from tests.integration.conftest import FPS, Clip, Server, _thumb, best_match, publish

SIZE = (640, 360)
TILE = (320, 180)  # the wall asks for 320-wide JPEGs, aspect ratio kept
# Two sources nobody could mistake for each other: moving testsrc2 and static SMPTE bars.
SOURCES = {"moving": "testsrc2", "bars": "smptebars"}

# Before the page's script: every object URL made and not yet revoked, and each picture request's
# If-None-Match, so the test sees what the page holds and sends.
INIT_SCRIPT = """
(() => {
  const create = URL.createObjectURL, revoke = URL.revokeObjectURL;
  window.wallUrls = new Set();
  URL.createObjectURL = (blob) => { const u = create(blob); wallUrls.add(u); return u; };
  URL.revokeObjectURL = (u) => { wallUrls.delete(u); revoke(u); };
  const nativeFetch = window.fetch;
  window.wallRequests = [];
  window.fetch = (url, init) => {
    const headers = (init && init.headers) || {};
    wallRequests.push({url: String(url), ifNoneMatch: headers["If-None-Match"] || null});
    return nativeFetch(url, init);
  };
})();
"""

# The picture a tile shows, read back through a canvas (what the page drew, not a new request).
GRAB = """
(name) => {
  const tile = [...document.querySelectorAll('.tile')].find((t) => t.dataset.stream === name);
  const img = tile && tile.querySelector('img');
  if (!img || img.hidden || !img.complete || !img.naturalWidth) { return null; }
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  c.getContext('2d').drawImage(img, 0, 0);
  return {png: c.toDataURL('image/png'), src: img.src,
          frame: Number(tile.dataset.frameTimestamp || 0),
          meta: tile.querySelector('.meta').textContent,
          age: tile.querySelector('.age').textContent,
          href: tile.querySelector('a').getAttribute('href')};
}
"""

SHOWN = """
(names) => names.every((name) => {
  const tile = [...document.querySelectorAll('.tile')].find((t) => t.dataset.stream === name);
  const img = tile && tile.querySelector('img');
  return img && !img.hidden && img.complete && img.naturalWidth > 0;
})
"""

# The tiles are exactly these, in this order.
TILES_ARE = """(names) => JSON.stringify(
    [...document.querySelectorAll('.tile')].map((t) => t.dataset.stream)) === JSON.stringify(names)
"""


def make_source(path: Path, lavfi: str) -> Clip:
    """A 4 s H.264 FLV of a lavfi source (looped when published) and its decoded frames."""
    width, height = SIZE
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{lavfi}=size={width}x{height}"]
    cmd += ["-r", str(FPS), "-t", "4", "-c:v", "libx264", "-preset", "veryfast"]
    cmd += ["-profile:v", "baseline", "-g", str(FPS), "-pix_fmt", "yuv420p", "-f", "flv", str(path)]
    subprocess.run(cmd, check=True, timeout=120)
    with av.open(str(path)) as container:
        thumbs = [_thumb(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return Clip(path, width, height, np.stack(thumbs))


def looped(server: Server, name: str, clip: Path) -> subprocess.Popen[bytes]:
    mark = server.log_mark()
    loop = ["-stream_loop", "-1", "-i", str(clip), "-c", "copy"]
    proc = publish(server.rtmp(name), extra_input=loop)
    server.wait_for_log(rf"publishing {re.escape(name)} ", start=mark)
    return proc


def png_rgb(data_url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix), data_url[:40]
    img = Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix) :])))
    return np.asarray(img.convert("RGB"))


class Wall:
    """wall.html open in Chromium, with what it said kept for assertion messages."""

    def __init__(self, page: Page, server: Server) -> None:
        self.page = page
        self.server = server
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def explain(self) -> str:
        tiles = self.page.evaluate(
            "() => [...document.querySelectorAll('.tile')].map((t) => t.outerHTML.slice(0, 400))"
        )
        return (
            f"status: {self.page.inner_text('#wallStatus')!r} {self.page.inner_text('#wallInfo')!r}"
            f"\ntiles: {tiles}\nconsole: {self.console[-10:]}\nserver log (last 15):\n"
            + "\n".join(self.server.lines[-15:])
        )

    def wait(self, expression: str, arg: Any = None, what: str = "") -> None:
        try:
            self.page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)
        except Exception as err:
            raise AssertionError(f"never {what or expression}: {err}\n{self.explain()}") from None

    def grab(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] | None = self.page.evaluate(GRAB, name)
        assert got is not None, f"{name}: no picture\n{self.explain()}"
        return got


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Clip]:
    return {name: make_source(tmp_path / f"{name}.flv", src) for name, src in SOURCES.items()}


def test_wall_shows_each_stream_and_follows_the_list(
    server: Server, sources: dict[str, Clip]
) -> None:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with launch_chromium() as browser:
            context = browser.new_context()
            context.add_init_script(INIT_SCRIPT)
            wall = Wall(context.new_page(), server)
            wall.page.goto(f"{server.http}/demo/wall.html")
            # No stream yet: find_all's 404 is an empty wall, not an error.
            wall.wait(
                "() => document.getElementById('wallStatus').textContent === 'No live streams'",
                what="an empty wall",
            )
            assert wall.page.inner_text("#wallInfo") == ""

            # Streams published after the page loaded appear without a reload.
            for name, clip in sources.items():
                procs[name] = looped(server, name, clip.path)
            mark = server.log_mark()
            procs["radio"] = publish(
                server.rtmp("radio"),
                extra_input=["-f", "lavfi", "-i", "sine=frequency=440", "-c:a", "aac"],
            )
            server.wait_for_log(r"publishing radio ", start=mark)
            wall.wait(TILES_ARE, ["bars", "moving", "radio"], "three tiles in name order")
            wall.wait(SHOWN, list(sources), "a picture in both video tiles")

            first = {name: wall.grab(name) for name in sources}
            for name, clip in sources.items():
                got = first[name]
                rgb = png_rgb(got["png"])
                _, own = best_match(clip, rgb)
                (other,) = [c for n, c in sources.items() if n != name]
                _, foreign = best_match(other, rgb)
                assert own > 25, f"{name}: the tile is not its source ({own:.1f} dB)"
                assert foreign < own - 10, f"{name}: the tile looks like the other source too"
                assert got["meta"] == "640x360, H264, Flash", got["meta"]
                assert re.fullmatch(r"frame \d+\.\d s old \(.+\)", got["age"]), got["age"]
                assert got["href"] == f"../rest-api/stream/snapshot?streamName={name}&format=png"

            # The audio-only stream's tile says why it has no picture.
            wall.wait(
                """() => {
                    const t = [...document.querySelectorAll('.tile')]
                        .find((t) => t.dataset.stream === 'radio');
                    return t && (t.dataset.reason || '').startsWith('no_video: ');
                }""",
                what="the reason on the audio-only tile",
            )
            radio = wall.page.evaluate(
                """() => {
                    const t = document.querySelector('.tile[data-stream=radio]');
                    return {hidden: t.querySelector('img').hidden,
                            meta: t.querySelector('.meta').textContent};
                }"""
            )
            assert radio == {"hidden": True, "meta": "no video, Flash"}, radio

            # Tiles refresh: a newer frame, asked for with the shown picture's ETag.
            wall.wait(
                """(before) => Object.entries(before).every(([name, frame]) => {
                    const t = [...document.querySelectorAll('.tile')]
                        .find((t) => t.dataset.stream === name);
                    return t && Number(t.dataset.frameTimestamp) > frame;
                })""",
                {name: got["frame"] for name, got in first.items()},
                "a newer frame in both video tiles",
            )
            for name in sources:
                # Tile-sized (the very first request may precede the stream's size in find_all).
                shape = png_rgb(wall.grab(name)["png"]).shape
                assert shape[:2] == (TILE[1], TILE[0]), f"{name}: not tile-sized: {shape}"
            requests = wall.page.evaluate("() => wallRequests")
            moving = [r for r in requests if "streamName=moving" in r["url"]]
            assert all("format=jpeg&maxAge=2000" in r["url"] for r in moving), moving
            assert "width=320" in moving[-1]["url"], moving
            assert moving[0]["ifNoneMatch"] is None
            assert all(r["ifNoneMatch"] for r in moving[1:]), moving
            # Every replaced picture's object URL was revoked: one per shown picture.
            assert wall.page.evaluate("() => wallUrls.size") == 2

            # The bars' encoder goes: its tile goes, the others stay and keep refreshing.
            bars = procs["bars"]
            bars.kill()
            bars.wait(timeout=10)
            wall.wait(TILES_ARE, ["moving", "radio"], "the bars tile gone")
            assert wall.page.inner_text("#wallStatus") == "2 live streams"
            before = wall.grab("moving")["frame"]
            wall.wait(
                """(before) => Number(document.querySelector('.tile[data-stream=moving]')
                    .dataset.frameTimestamp) > before""",
                before,
                "a newer frame in the remaining tile",
            )
            assert wall.page.evaluate("() => wallUrls.size") == 1, wall.explain()
            _, psnr = best_match(sources["moving"], png_rgb(wall.grab("moving")["png"]))
            assert psnr > 25, f"the remaining tile is no longer its source ({psnr:.1f} dB)"
            context.close()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=10)
