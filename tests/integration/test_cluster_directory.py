"""Real `twistd wcs` nodes on one real redis-server: a name is held cluster-wide, a dead node's
names free within the TTL, a Redis outage degrades a node without stopping its streams."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Clip, Server, publish, start_server
from tests.integration.redis_server import Expiries, RedisServer

pytestmark = pytest.mark.integration

TTL_MS = 2000


def node(tmp_path: Path, name: str, redis: RedisServer, extra: str = "") -> Server:
    workdir = tmp_path / name
    workdir.mkdir()
    config = f"cluster_redis_url={redis.url}\ncluster_ttl_ms={TTL_MS}\ncluster_node_id={name}\n"
    srv = start_server(workdir, config + extra)
    # A node is ready once its first refresh has written its record (no wait needed).
    assert redis.client().exists(f"wcs:node:{name}") == 1, f"{name}'s node record is missing"
    return srv


def looping(srv: Server, name: str, clip: Clip) -> subprocess.Popen[bytes]:
    """ffmpeg publishing `clip` over RTMP in a loop (the stream outlives the 12 s clip)."""
    mark = srv.log_mark()
    proc = publish(
        srv.rtmp(name),
        extra_input=["-stream_loop", "-1", "-i", str(clip.path), "-c", "copy"],
    )
    srv.wait_for_log(rf"publishing {re.escape(name)} ", start=mark)
    return proc


def refused(srv: Server, name: str, clip: Clip, info: str) -> None:
    mark = srv.log_mark()
    proc = publish(srv.rtmp(name), clip.path)
    try:
        srv.wait_for_log(rf"publish of '{re.escape(name)}' refused: {re.escape(info)}", start=mark)
        assert proc.wait(timeout=15) != 0, "ffmpeg did not see the refusal"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def ready(srv: Server) -> tuple[int, object]:
    return srv.rest("/ready", method="GET")


def owner(redis: RedisServer, name: str) -> str | None:
    value = redis.client().get(f"wcs:stream:{name}")
    if value is None:
        return None
    assert isinstance(value, bytes)
    return value.decode().rpartition(" ")[0]


@pytest.fixture
def stop_all() -> Iterator[list[subprocess.Popen[bytes] | Server]]:
    running: list[subprocess.Popen[bytes] | Server] = []
    yield running
    for thing in running:
        if isinstance(thing, Server):
            if thing.proc.poll() is None:
                thing.proc.kill()
                thing.proc.wait()
        elif thing.poll() is None:
            thing.kill()
            thing.wait()


def test_a_name_is_held_cluster_wide_survives_an_outage_and_frees_when_its_node_dies(
    tmp_path: Path,
    redis_server: RedisServer,
    clips: dict[str, Clip],
    stop_all: list[subprocess.Popen[bytes] | Server],
) -> None:
    clip = clips["baseline"]
    a = node(tmp_path, "a", redis_server)
    stop_all.append(a)
    b = node(tmp_path, "b", redis_server)
    stop_all.append(b)
    record = json.loads(redis_server.client().get("wcs:node:a") or b"")
    assert record["url"] == a.http and record["streams"] == 0

    stop_all.append(looping(a, "cam", clip))
    assert (owner(redis_server, "cam") or "").startswith("a/")
    # The same name on the other node: refused as a second publish on one node would be.
    refused(b, "cam", clip, "Stream name is already in use")

    # Redis goes away: a keeps its stream and its snapshots, says degraded, refuses new names.
    mark = a.log_mark()
    redis_server.stop()
    a.wait_for_log(r"cluster directory unreachable at unix://", start=mark)
    status, body = ready(a)
    assert status == 503 and isinstance(body, dict) and body["status"] == "degraded"
    assert str(body["reason"]).startswith("cluster directory unreachable: ")
    status, body = a.snapshot("cam")
    assert status == 200 and isinstance(body, dict) and body["data"]
    refused(a, "cam2", clip, "Stream directory unavailable")
    assert len(re.findall("cluster directory unreachable at", "\n".join(a.lines[mark:]))) == 1

    # Redis is back (empty): a's claim is made again and a is ready.
    mark = a.log_mark()
    redis_server.start()
    a.wait_for_log(r"cluster directory reachable again at .*: 1 claims re-made, 0 lost", start=mark)
    assert (owner(redis_server, "cam") or "").startswith("a/")
    assert ready(a)[0] == 200

    # Node a dies without a word: within the TTL the name is free, and b takes it.
    expiries = Expiries(redis_server)
    a.proc.kill()
    killed = time.monotonic()
    a.proc.wait()
    expiries.wait_gone("wcs:stream:cam", killed + TTL_MS / 1000 + 1.0)
    expiries.close()
    assert redis_server.client().exists("wcs:node:a") == 0
    stop_all.append(looping(b, "cam", clip))
    assert (owner(redis_server, "cam") or "").startswith("b/")

    # A clean stop gives the names and the node record back at once.
    assert b.stop() == 0
    assert redis_server.client().keys("wcs:*") == []


def test_fail_open_accepts_a_publish_during_the_outage_and_claims_it_afterwards(
    tmp_path: Path,
    redis_server: RedisServer,
    clips: dict[str, Clip],
    stop_all: list[subprocess.Popen[bytes] | Server],
) -> None:
    c = node(tmp_path, "c", redis_server, "cluster_fail_open=true\n")
    stop_all.append(c)
    mark = c.log_mark()
    redis_server.stop()
    c.wait_for_log(r"cluster directory unreachable at .*new publishes are accepted", start=mark)
    stop_all.append(looping(c, "cam", clips["baseline"]))
    mark = c.log_mark()
    redis_server.start()
    c.wait_for_log(r"cluster directory reachable again at .*: 1 claims re-made, 0 lost", start=mark)
    assert (owner(redis_server, "cam") or "").startswith("c/")
    assert ready(c)[0] == 200
    assert c.stop() == 0
