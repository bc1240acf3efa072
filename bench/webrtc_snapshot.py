"""WebRTC publish -> first snapshot, and snapshot latency of WebRTC-published streams: table, JSON.

Headless Debian Chromium (Playwright) runs the official WebSDK from the demo page the server serves,
with a 1280x720 30 fps fake camera (a looped Y4M of testsrc2) asked for with publish constraints
{width: 1280, height: 720, frameRate: 30, minBitrate: 2500, maxBitrate: 5000} and the video sender's
degradationPreference "maintain-resolution", so Chromium sends 1280x720 at 30 fps from the start
(--min-kbps 0 --max-kbps 0 --degradation browser: Chromium's own choice, 640x360 or less here).
VP8 or H.264 is forced with setCodecPreferences.

1. Publish -> first snapshot: for each of N publishes (a fresh page and stream name each), the page
   takes performance.now() just before the SDK's stream.publish() and polls both an SDK snapshot
   (WebSocket) and a REST snapshot (fetch from the page, same origin) until each first succeeds; a
   failed attempt is retried after 20 ms. Python measures the same from its side (its own REST
   poller, and when it sees the page's SDK success); the table shows the page-side figures.
2. Snapshot latency: one stream per codec, REST snapshots from Python and SDK snapshots in the page
   (timed in the page), interleaved, at random moments 0.1-2.1 s apart (as latency_run in
   bench/snapshot_latency.py); the first request of each kind is reported apart (cold).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import BrowserContext  # noqa: E402

from bench.common import cpu_seconds, pct  # noqa: E402
from tests.integration.browser import (  # noqa: E402
    SdkPage,
    launch_chromium,
    new_context,
    write_camera,
)
from tests.integration.conftest import Server, start_server  # noqa: E402

# The tests' camera is 320x240 15 fps (the SDK's default constraints); the bench's is 720p30.
# 4 s of raw 720p is 166 MB in a temp dir.
CAMERA_SIZE = (1280, 720)
CAMERA_FPS = 30
CAMERA_SECONDS = 4
CODECS = ("VP8", "H264")
# Without these Chromium sends this camera at 640x360 or less (its bandwidth estimate starts near
# 300 kbps and climbs slowly; seen: still 640x360 after 12 s), or at 720p and 3-6 fps if only the
# resolution is kept. The SDK's minBitrate/maxBitrate constraints (kbps, as a WCS user publishes
# HD) plus "maintain-resolution" give 1280x720 at 30 fps from the start.
MIN_KBPS = 2500
MAX_KBPS = 5000
DEGRADATION = "maintain-resolution"

RETRY_MS = 20
FIRST_TIMEOUT_MS = 20_000

# Installed after tests/integration/browser.HARNESS (it uses wcsTest.session and wcsTest.record):
# a publish that timestamps every status (the SDK keeps one handler per event, so the harness's own
# publish cannot be given a second one), SDK and REST snapshots timed in the page, and the
# publish -> first snapshot run.
BENCH_JS = """
(() => {
  const C = Flashphoner.constants;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  // Chromium's default ("balanced") answers its low starting bandwidth estimate by sending
  // 640x360 or less; with wcsBenchDegradation set, each video sender gets that
  // degradationPreference before the SDK's createOffer (so from its first frame).
  const P = RTCPeerConnection.prototype;
  const createOffer = P.createOffer;
  P.createOffer = async function (...args) {
    const pref = window.wcsBenchDegradation;
    if (pref) {
      for (const t of this.getTransceivers()) {
        const s = t.sender;
        if (s.track && s.track.kind === "video") {
          const p = s.getParameters();
          p.degradationPreference = pref;
          await s.setParameters(p);
        }
      }
    }
    return createOffer.apply(this, args);
  };
  const b = {
    times: {}, first: {}, run: null,
    publish(key, name, options) {
      const t = b.times[key] = {};
      const stream = wcsTest.session.createStream(Object.assign({
        name: name, display: document.getElementById("localVideo"),
        cacheLocalResources: false, receiveVideo: false, receiveAudio: false}, options));
      wcsTest.streams[key] = stream;
      for (const s of Object.values(C.STREAM_STATUS)) {
        stream.on(s, () => {
          if (!(s in t)) { t[s] = performance.now(); }
          wcsTest.record(key, s, null);
        });
      }
      t.call = performance.now();
      stream.publish();
      return t.call;
    },
    // One SDK snapshot: a new stream object of that name, settled by whichever of the two forms
    // (STREAM_EVENT or the deprecated status) comes first. Only the PNG's head is kept (its size).
    snapshotSdk(name) {
      return new Promise((resolve) => {
        const s = wcsTest.session.createStream({name: name});
        const t0 = performance.now();
        let done = false;
        const finish = (ok, data, info) => {
          if (done) { return; }
          done = true;
          const end = performance.now();
          resolve({ok: ok, ms: end - t0, end: end, head: data ? data.slice(0, 44) : null,
                   b64len: data ? data.length : 0, info: info || null});
        };
        s.on(C.STREAM_EVENT, (e) => {
          if (e.type === "snapshotCompleted") { finish(true, e.payload.snapshot, null); }
          else if (e.type === "snapshotFailed") { finish(false, null, e.payload.info); }
        });
        s.on(C.STREAM_STATUS.SNAPSHOT_COMPLETE, (st) => finish(true, st.getInfo(), null));
        s.on(C.STREAM_STATUS.FAILED, (st) => finish(false, null, st.getInfo()));
        setTimeout(() => finish(false, null, "no answer in 15 s"), 15000);
        s.snapshot();
      });
    },
    async snapshotRest(name) {
      const t0 = performance.now();
      try {
        const r = await fetch("/rest-api/stream/snapshot", {
          method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify({streamName: name})});
        const j = await r.json().catch(() => null);
        const end = performance.now();
        const ok = r.status === 200 && j !== null && typeof j.data === "string";
        return {ok: ok, ms: end - t0, end: end, head: ok ? j.data.slice(0, 44) : null,
                b64len: ok ? j.data.length : 0, info: ok ? null : r.status};
      } catch (e) {
        const end = performance.now();
        return {ok: false, ms: end - t0, end: end, head: null, b64len: 0, info: String(e)};
      }
    },
    startFirst(name, options, retryMs, timeoutMs) {
      b.first = {};
      const t0 = b.publish("pub", name, options);
      const until = async (label, take) => {
        let attempts = 0;
        for (;;) {
          attempts += 1;
          const r = await take(name);
          if (r.ok) {
            b.first[label] = r.end - t0;
            return {ms: r.end - t0, attempts: attempts, head: r.head};
          }
          if (performance.now() - t0 > timeoutMs) {
            b.first[label] = null;
            return {ms: null, attempts: attempts, info: r.info};
          }
          await sleep(retryMs);
        }
      };
      b.run = Promise.all([until("sdk", b.snapshotSdk), until("rest", b.snapshotRest)]).then(
        ([sdk, rest]) => {
          const t = b.times.pub;
          return {sdk: sdk, rest: rest,
                  publishing_ms: "PUBLISHING" in t ? t.PUBLISHING - t0 : null};
        });
    },
  };
  window.wcsBench = b;
})();
"""


def png_size(head_b64: str | None) -> tuple[int, int] | None:
    """Width and height from the first 33 bytes of a base64 PNG (the IHDR chunk)."""
    if not head_b64:
        return None
    head = base64.b64decode(head_b64[:44])
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 24:
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def stream_name() -> str:
    return "w" + uuid.uuid4().hex[:10]


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 1),
        "p90_ms": round(pct(values, 0.9), 1),
        "max_ms": round(max(values), 1),
        "min_ms": round(min(values), 1),
    }


@dataclass
class Publish:
    """How each stream is published: the SDK's constraints and Chromium's degradationPreference."""

    min_kbps: int
    max_kbps: int
    degradation: str | None

    def options(self) -> dict[str, Any]:
        video: dict[str, Any] = {
            "width": CAMERA_SIZE[0],
            "height": CAMERA_SIZE[1],
            "frameRate": CAMERA_FPS,
        }
        if self.min_kbps:
            video["minBitrate"] = self.min_kbps
        if self.max_kbps:
            video["maxBitrate"] = self.max_kbps
        return {"constraints": {"audio": True, "video": video}}


def open_page(context: BrowserContext, server: Server, codec: str, how: Publish) -> SdkPage:
    sdk = SdkPage.open(context, server)
    sdk.js(BENCH_JS)
    sdk.js("(d) => { window.wcsBenchDegradation = d; }", how.degradation)
    sdk.connect()
    sdk.force_video_codec(codec)
    return sdk


def sent_video(sdk: SdkPage) -> dict[str, Any]:
    """What Chromium encodes now (waiting up to 10 s for the first encoded frame)."""
    stats: dict[str, Any] | None = sdk.js("(ms) => wcsTest.waitVideoStats(ms)", 10_000)
    assert stats is not None, f"no video was sent\n{sdk.explain()}"
    return stats


def unpublish(sdk: SdkPage) -> None:
    sdk.stop("pub")
    sdk.wait_status("pub", "UNPUBLISHED")
    sdk.page.close()


def python_rest_poller(server: Server, name: str, t0: float, out: dict[str, float]) -> None:
    """Python's own view: REST snapshots from t0 until the first 200 (or the page's timeout)."""
    deadline = t0 + FIRST_TIMEOUT_MS / 1000
    while time.perf_counter() < deadline:
        status, _ = server.snapshot(name, timeout=10.0)
        if status == 200:
            out["rest"] = (time.perf_counter() - t0) * 1000
            return
        threading.Event().wait(RETRY_MS / 1000)


def first_snapshot_trial(
    context: BrowserContext, server: Server, codec: str, how: Publish
) -> dict[str, Any]:
    name = stream_name()
    sdk = open_page(context, server, codec, how)
    py: dict[str, float] = {}
    t0 = time.perf_counter()
    poller = threading.Thread(target=python_rest_poller, args=(server, name, t0, py), daemon=True)
    poller.start()
    sdk.js(
        "([n, o, r, t]) => wcsBench.startFirst(n, o, r, t)",
        [name, how.options(), RETRY_MS, FIRST_TIMEOUT_MS],
    )
    sdk.page.wait_for_function(
        "() => 'sdk' in wcsBench.first", polling=10, timeout=FIRST_TIMEOUT_MS + 5000
    )
    py["sdk"] = (time.perf_counter() - t0) * 1000
    page: dict[str, Any] = sdk.js("wcsBench.run")
    poller.join(timeout=FIRST_TIMEOUT_MS / 1000 + 10)
    stats = sent_video(sdk)
    unpublish(sdk)
    for kind in ("sdk", "rest"):
        assert page[kind]["ms"] is not None, f"{codec} {kind}: no snapshot: {page[kind]}"
    assert stats["mimeType"] == f"video/{codec}", stats
    return {
        "name": name,
        "page_sdk_ms": round(page["sdk"]["ms"], 1),
        "page_rest_ms": round(page["rest"]["ms"], 1),
        "page_publishing_ms": (
            round(page["publishing_ms"], 1) if page["publishing_ms"] is not None else None
        ),
        "sdk_attempts": page["sdk"]["attempts"],
        "rest_attempts": page["rest"]["attempts"],
        "python_sdk_seen_ms": round(py["sdk"], 1),
        "python_rest_ms": round(py["rest"], 1) if "rest" in py else None,
        "first_sdk_png": png_size(page["sdk"]["head"]),
        "first_rest_png": png_size(page["rest"]["head"]),
        "sent_after": f"{stats['frameWidth']}x{stats['frameHeight']}",
    }


def first_snapshot_run(
    context: BrowserContext, server: Server, codec: str, how: Publish, publishes: int
) -> dict[str, Any]:
    trials = [first_snapshot_trial(context, server, codec, how) for _ in range(publishes)]

    def column(key: str) -> dict[str, float]:
        return summarize([t[key] for t in trials if t[key] is not None])

    return {
        "publishes": publishes,
        "page_sdk": column("page_sdk_ms"),
        "page_rest": column("page_rest_ms"),
        "page_publishing_status": column("page_publishing_ms"),
        "python_sdk_seen": column("python_sdk_seen_ms"),
        "python_rest": column("python_rest_ms"),
        "trials": trials,
    }


def latency_run(
    context: BrowserContext,
    server: Server,
    codec: str,
    how: Publish,
    samples: int,
    rng: random.Random,
) -> dict[str, Any]:
    name = stream_name()
    sdk = open_page(context, server, codec, how)
    sdk.js("([n, o]) => wcsBench.publish('pub', n, o)", [name, how.options()])
    sdk.wait_status("pub", "PUBLISHING")
    stats0 = sent_video(sdk)
    threading.Event().wait(3.0)  # let the first frames arrive before the first (cold) request
    pid = server.proc.pid
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    stats_a = sent_video(sdk)
    rest: list[float] = []
    sdk_page: list[float] = []
    sdk_python: list[float] = []
    sizes: set[tuple[int, int] | None] = set()
    png_bytes: list[int] = []
    kinds = ["rest", "sdk"] * samples
    try:
        for kind in kinds:
            threading.Event().wait(rng.uniform(0.1, 2.1))
            t = time.perf_counter()
            if kind == "rest":
                status, body = server.snapshot(name)
                rest.append((time.perf_counter() - t) * 1000)
                assert status == 200 and isinstance(body, dict), (status, body)
                sizes.add(png_size(body["data"][:44]))
                png_bytes.append(len(body["data"]) * 3 // 4)
            else:
                r = sdk.js("(n) => wcsBench.snapshotSdk(n)", name)
                sdk_python.append((time.perf_counter() - t) * 1000)
                assert r["ok"], r
                sdk_page.append(r["ms"])
                sizes.add(png_size(r["head"]))
        wall = time.monotonic() - wall0
        cpu = (cpu_seconds(pid) - cpu0) / wall * 100
        stats_b = sent_video(sdk)
    finally:
        unpublish(sdk)
    assert stats_b["mimeType"] == f"video/{codec}", stats_b
    sent_fps = (stats_b["framesEncoded"] - stats_a["framesEncoded"]) / wall

    def timed(values: list[float]) -> dict[str, float]:
        return {"first_request_ms": round(values[0], 1), **summarize(values[1:])}

    return {
        "samples_per_kind": samples,
        "rest": timed(rest),
        "sdk": timed(sdk_page),
        "sdk_python_roundtrip": timed(sdk_python),
        "png_sizes": sorted(f"{s[0]}x{s[1]}" for s in sizes if s is not None),
        "png_kb_median": round(statistics.median(png_bytes) / 1024, 1),
        "sent_at_publish": f"{stats0['frameWidth']}x{stats0['frameHeight']}",
        "sent_at_end": f"{stats_b['frameWidth']}x{stats_b['frameHeight']}",
        "sent_fps": round(sent_fps, 1),
        "sent_encoder": stats_b["encoder"],
        "sent_limited_by": stats_b["limitedBy"],
        "sent_target_kbps": stats_b["targetBitrate"] and round(stats_b["targetBitrate"] / 1000),
        "server_cpu_pct_of_core": round(cpu, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--publishes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-kbps", type=int, default=MIN_KBPS, help="SDK minBitrate, 0: none")
    parser.add_argument("--max-kbps", type=int, default=MAX_KBPS, help="SDK maxBitrate, 0: none")
    parser.add_argument(
        "--degradation",
        default=DEGRADATION,
        help="RTCRtpSender degradationPreference, or 'browser' for Chromium's default",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "webrtc_snapshot.json"
    )
    args = parser.parse_args()
    codecs = [c.strip().upper() for c in args.codecs.split(",") if c.strip()]
    rng = random.Random(args.seed)
    how = Publish(
        args.min_kbps, args.max_kbps, None if args.degradation == "browser" else args.degradation
    )
    first: dict[str, Any] = {}
    latency: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        camera = workdir / "camera720p30.y4m"
        write_camera(camera, CAMERA_SIZE, CAMERA_FPS, CAMERA_SECONDS)
        server = start_server(workdir)
        try:
            with launch_chromium(camera) as browser:
                version = browser.version
                context = new_context(browser)
                try:
                    for codec in codecs:
                        first[codec] = first_snapshot_run(
                            context, server, codec, how, args.publishes
                        )
                    for codec in codecs:
                        latency[codec] = latency_run(context, server, codec, how, args.samples, rng)
                finally:
                    context.close()
        finally:
            server.stop()
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "browser": f"Chromium {version} (headless, Debian), official WebSDK, Playwright",
        "camera": f"{CAMERA_SIZE[0]}x{CAMERA_SIZE[1]} {CAMERA_FPS} fps fake camera (Y4M testsrc2)",
        "publish_options": how.options(),
        "degradation_preference": how.degradation or "browser default",
        "retry_ms": RETRY_MS,
        "publish_to_first_snapshot": first,
        "webrtc_snapshot_latency": latency,
    }
    print(
        f"Publish -> first snapshot, page side (ms)  {'median':>8}{'p90':>8}{'max':>8}{'py med':>8}"
    )
    for codec, run in first.items():
        rows = [
            ("SDK snapshot (WebSocket)", "page_sdk", "python_sdk_seen"),
            ("REST snapshot", "page_rest", "python_rest"),
            ("PUBLISHING status", "page_publishing_status", None),
        ]
        for label, key, py in rows:
            s = run[key]
            py_med = run[py]["median_ms"] if py else ""
            print(
                f"  {codec + ' ' + label:<40}{s['median_ms']:>8}{s['p90_ms']:>8}{s['max_ms']:>8}"
                f"{py_med:>8}"
            )
        firsts = [t["first_sdk_png"] for t in run["trials"] if t["first_sdk_png"]]
        pngs = sorted({f"{w}x{h}" for w, h in firsts})
        print(f"    first SDK snapshot PNG {', '.join(pngs)}")
    print(
        f"Snapshot latency of a WebRTC stream (ms)  "
        f"{'first':>8}{'median':>8}{'p90':>8}{'max':>8}{'min':>8}"
    )
    for codec, run in latency.items():
        for label, key in (("REST", "rest"), ("SDK (WebSocket)", "sdk")):
            s = run[key]
            print(
                f"  {codec + ' ' + label:<40}{s['first_request_ms']:>8}{s['median_ms']:>8}"
                f"{s['p90_ms']:>8}{s['max_ms']:>8}{s['min_ms']:>8}"
            )
        print(
            f"    sent {run['sent_at_publish']} -> {run['sent_at_end']} at {run['sent_fps']} fps"
            f" ({run['sent_encoder']}, limited by {run['sent_limited_by']});"
            f" PNG {', '.join(run['png_sizes'])} ({run['png_kb_median']} KB);"
            f" server CPU {run['server_cpu_pct_of_core']}% of a core"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
