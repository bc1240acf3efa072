"""Three real `twistd wcs` nodes on one real redis-server: ffmpeg publishes to one node, any node
answers for the stream (snapshots, image URLs, find, find_all, terminate); a node killed with
SIGKILL gives its names back within the TTL."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    Clip,
    Server,
    best_match,
    check_fresh,
    publish,
    publishing,
    start_server,
    wait_until,
)
from tests.integration.conftest import (
    http_get as get,
)
from tests.integration.redis_server import Expiries, RedisServer
from tests.integration.websdk_client import session, ws_snapshot

pytestmark = pytest.mark.integration

TTL_MS = 2000


def cluster_config(redis: RedisServer, node: str) -> str:
    return f"cluster_redis_url={redis.url}\ncluster_node_id={node}\ncluster_ttl_ms={TTL_MS}\n"


def start_nodes(tmp_path: Path, redis: RedisServer, names: str) -> list[Server]:
    nodes: list[Server] = []
    try:
        for name in names:
            workdir = tmp_path / f"node-{name}"
            workdir.mkdir()
            nodes.append(start_server(workdir, cluster_config(redis, f"node-{name}")))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


@pytest.fixture
def three_nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Server]]:
    nodes = start_nodes(tmp_path, redis_server, "abc")
    try:
        yield nodes
    finally:
        codes = [node.stop() for node in nodes]
        assert codes == [0, 0, 0], "a node did not exit cleanly on SIGTERM"


def test_any_node_answers_for_a_stream_published_to_one(
    three_nodes: list[Server], clips: dict[str, Clip], redis_server: RedisServer
) -> None:
    a, b, c = three_nodes
    clip = clips["bframes_audio"]
    with publishing(a, "cam", clip.path) as (encoder, t0):
        owner = redis_server.client().get("wcs:stream:cam")
        assert isinstance(owner, bytes) and owner.decode().startswith("node-a/")

        # The WCS PNG via the two other nodes: the frame live now on A.
        check_fresh(b, clip, "cam", t0, at=[1.5])
        check_fresh(c, clip, "cam", t0, at=[2.5])

        # The same picture: a small JPEG taken through B, then asked of C and A with a maxAge
        # that picture satisfies: byte for byte the one A made for B, with the same ETag.
        path = "/rest-api/stream/snapshot?streamName=cam&format=jpeg&width=320&maxAge=60000"
        status, headers, body = get(b, path)
        assert status == 200, body[:300]
        assert headers["content-type"] == "image/jpeg"
        for node in (c, a):
            s, h, again = get(node, path)
            assert s == 200, again[:300]
            assert again == body
            assert h["etag"] == headers["etag"]
            assert h["x-frame-timestamp"] == headers["x-frame-timestamp"]
        s, h, frame = get(c, "/api/frame.jpeg?src=cam&width=160")
        assert s == 200 and h["content-type"] == "image/jpeg" and frame[:2] == b"\xff\xd8"

        # The name is taken cluster-wide: a second encoder on C is refused.
        mark = c.log_mark()
        second = publish(c.rtmp("cam"), clip.path)
        assert second.wait(timeout=30) != 0
        c.wait_for_log(r"publish of 'cam' refused: Stream name is already in use", start=mark)

        # Every node lists it once, with A's mediaSessionId.
        status, found = a.rest("/rest-api/stream/find", {"name": "cam"})
        assert status == 200 and isinstance(found, list)
        msid = found[0]["mediaSessionId"]
        for node in three_nodes:
            status, listed = node.rest("/rest-api/stream/find_all", {})
            assert status == 200, listed
            assert isinstance(listed, list)
            assert [(s["name"], s["mediaSessionId"]) for s in listed] == [("cam", msid)]
            status, by_session = node.rest("/rest-api/stream/find", {"mediaSessionId": msid})
            assert status == 200 and isinstance(by_session, list)
            assert [s["name"] for s in by_session] == ["cam"]

        # Terminated through B: ended on A, the encoder is dropped, the name is free.
        wait_until(t0 + 4.0)
        mark = a.log_mark()
        status, answer = b.rest("/rest-api/stream/terminate", {"name": "cam"})
        assert (status, answer) == (200, {})
        a.wait_for_log(r"stream cam ended", start=mark)
        assert encoder.wait(timeout=20) is not None
    for node in three_nodes:
        status, error = node.snapshot("cam")
        assert status == 404, error
    assert redis_server.client().get("wcs:stream:cam") is None

    # B's metrics (Prometheus's own parser) count what it forwarded; the directory is up.
    status, _, text = get(b, "/metrics")
    assert status == 200
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    assert samples["wcs_cluster_directory_up"] == 1
    assert samples["wcs_cluster_forwarded_requests_total"] >= 4
    assert samples["wcs_cluster_forward_failures_total"] == 0
    assert samples["wcs_cluster_refresh_round_trips_total"] >= 1


def test_a_websdk_page_on_one_node_snapshots_a_stream_on_another(
    three_nodes: list[Server], clips: dict[str, Clip]
) -> None:
    a, b, _ = three_nodes
    clip = clips["bframes_audio"]

    async def snapshots() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with session(b) as client:
            event, status = await ws_snapshot(client, "cam")
            missing, _ = await ws_snapshot(client, "nobody")
            return event, status, missing

    with publishing(a, "cam", clip.path) as (_, t0):
        wait_until(t0 + 1.5)
        event, status, missing = asyncio.run(snapshots())
    assert event["type"] == "snapshotCompleted", event
    assert status["status"] == "SNAPSHOT_COMPLETE"
    png = base64.b64decode(event["payload"]["snapshot"])
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert rgb.shape == (clip.height, clip.width, 3)
    index, psnr = best_match(clip, rgb)
    assert psnr > 30, f"the PNG matches no frame of the clip (best {index}, {psnr:.1f} dB)"
    assert missing["type"] == "snapshotFailed"
    assert missing["payload"]["info"] == "Stream not found"


def test_a_killed_nodes_names_are_free_again_within_the_ttl(
    tmp_path: Path, clips: dict[str, Clip], redis_server: RedisServer
) -> None:
    a, b = start_nodes(tmp_path, redis_server, "ab")
    try:
        clip = clips["baseline"]
        encoder = publish(a.rtmp("cam"), clip.path)
        a.wait_for_log(r"publishing cam ")
        redis = redis_server.client()
        assert redis.get("wcs:stream:cam") is not None
        expiries = Expiries(redis_server)
        a.proc.kill()  # SIGKILL: no release, no goodbye
        killed = time.monotonic()
        a.proc.wait(timeout=10)

        # Until the claim expires, B knows the owner but it does not answer: a 503 naming it.
        # (Refreshed at most TTL/3 before the kill, the claim has over a second left here.)
        assert redis.pttl("wcs:stream:cam") > 300
        status, body = b.snapshot("cam")
        assert status == 503, body
        assert isinstance(body, dict) and "node-a" in str(body["message"])
        encoder.wait(timeout=20)
        expiries.wait_gone("wcs:stream:cam", killed + TTL_MS / 1000 + 1.0)
        expiries.close()

        # The encoder reconnects to B and gets its name back.
        with publishing(b, "cam", clip.path) as (_, t0):
            check_fresh(b, clip, "cam", t0, at=[1.0])
            owner = redis.get("wcs:stream:cam")
            assert isinstance(owner, bytes) and owner.decode().startswith("node-b/")
    finally:
        a.stop()
        assert b.stop() == 0


def test_find_all_on_an_empty_cluster_is_the_wcs_404(three_nodes: list[Server]) -> None:
    for node in three_nodes:
        status, body = node.rest("/rest-api/stream/find_all", {})
        assert status == 404, body
        assert isinstance(body, dict) and body["message"] == "Streams not found"
    status, body = three_nodes[0].rest("/rest-api/stream/terminate", {"name": "nobody"})
    assert status == 404, body


def test_node_records_name_each_nodes_url(
    three_nodes: list[Server], redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    for name, node in zip("abc", three_nodes, strict=True):
        raw = redis.get(f"wcs:node:node-{name}")
        assert isinstance(raw, bytes)
        record = json.loads(raw)
        assert record["url"] == f"http://127.0.0.1:{node.ports['http']}"
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", record["version"])
