"""The metrics collector on a real hub and snapshot service (synchronous pool, Clock), scraped
through prometheus_client's exposition and parsed back with its own parser; GET /metrics and
its auth on a site fed bytes (no sockets)."""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from tests.unit.fakes import publish_now, sync_pool
from tests.unit.media_fixtures import h264_sample
from tests.unit.rest_client import Connection, raw_request
from tests.unit.snapshot_env import Env
from wcs.config import ConfigError, Settings, settings_from_properties
from wcs.limits import ConnectionLimiter
from wcs.media.units import MediaUnit
from wcs.metrics import MetricsResource, ServerCollector, SnapshotMetrics, new_registry
from wcs.rest.resources import LoginThrottle
from wcs.rtsp.pull import PullManager
from wcs.snapshot.service import SnapshotService
from wcs.streams import PROVIDER_RTMP, PROVIDER_WEBRTC, StreamHub

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> tuple[Samples, str]:
    text = generate_latest(registry).decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP text"
        assert family.name.startswith(("wcs_", "process_", "python_")), family.name
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {key}"
    return samples[key]


def audio(size: int) -> MediaUnit:
    return MediaUnit("audio", "AAC", 0, 0, False, b"\x00" * size)


class FakePulls:
    def __init__(self) -> None:
        self.pulls: list[Any] = []
        self.ended_reconnects = 0

    def find_all(self) -> list[Any]:
        return list(self.pulls)


class Pull:
    def __init__(self, status: str, reconnects: int) -> None:
        self.status = status
        self.reconnects = reconnects


def collector_env(per_stream: bool = False) -> tuple[StreamHub, CollectorRegistry, FakePulls]:
    hub = StreamHub()
    snapshots = SnapshotService(hub, sync_pool, Clock())
    pulls = FakePulls()
    collector = ServerCollector(
        hub, snapshots, pulls=cast(PullManager, pulls), per_stream=per_stream
    )
    return hub, new_registry(collector), pulls


def test_live_streams_ingest_and_readers_and_totals_that_survive_the_end() -> None:
    hub, registry, _ = collector_env()
    samples, _ = scrape(registry)
    assert value(samples, "wcs_streams_live", provider="Flash", video_codec="none") == 0
    assert value(samples, "wcs_ingest_bytes_total", provider="WebRTC") == 0

    stream = publish_now(hub, "cam-secret-name", PROVIDER_RTMP)
    delivered: list[MediaUnit] = []
    reader = stream.add_reader(delivered.append)
    stream.push(audio(100))
    stream.push(audio(50))
    samples, text = scrape(registry)
    assert value(samples, "wcs_streams_live", provider="Flash", video_codec="none") == 1
    assert value(samples, "wcs_streams_published_total", provider="Flash") == 1
    assert value(samples, "wcs_ingest_bytes_total", provider="Flash") == 150
    assert value(samples, "wcs_ingest_frames_total", provider="Flash", kind="audio") == 2
    assert value(samples, "wcs_readers") == 1
    assert value(samples, "wcs_reader_units_delivered_total") == 2
    assert "secret-name" not in text  # no stream names by default

    reader.close()  # a player leaves: what it was delivered stays counted
    stream.push(audio(10))
    samples, _ = scrape(registry)
    assert value(samples, "wcs_readers") == 0
    assert value(samples, "wcs_reader_units_delivered_total") == 2

    stream.end()
    other = publish_now(hub, "two", PROVIDER_WEBRTC)
    other.push(audio(7))
    samples, _ = scrape(registry)
    assert value(samples, "wcs_streams_live", provider="Flash", video_codec="none") == 0
    assert value(samples, "wcs_ingest_bytes_total", provider="Flash") == 160
    assert value(samples, "wcs_ingest_frames_total", provider="Flash", kind="audio") == 3
    assert value(samples, "wcs_ingest_bytes_total", provider="WebRTC") == 7
    assert value(samples, "wcs_reader_units_delivered_total") == 2


def test_a_reader_that_falls_behind_counts_its_discards() -> None:
    hub, registry, _ = collector_env()
    sample = h264_sample(bframes=False)
    stream = publish_now(hub, "slow", PROVIDER_RTMP)
    reader = stream.add_reader(lambda unit: None, max_queue=2)
    reader.pause()
    for unit in sample.units[:10]:
        stream.push(unit)
    samples, _ = scrape(registry)
    discarded = value(samples, "wcs_reader_units_discarded_total")
    assert discarded > 0
    assert value(samples, "wcs_streams_live", provider="Flash", video_codec="H264") == 1
    stream.end()
    samples, _ = scrape(registry)
    assert value(samples, "wcs_reader_units_discarded_total") == discarded


def test_stream_names_only_with_metrics_per_stream() -> None:
    hub, registry, _ = collector_env(per_stream=True)
    stream = publish_now(hub, "lobby", PROVIDER_RTMP)
    stream.push(audio(30))
    samples, _ = scrape(registry)
    assert value(samples, "wcs_stream_ingest_bytes_total", stream="lobby", provider="Flash") == 30
    labels = {"stream": "lobby", "provider": "Flash", "kind": "audio"}
    assert value(samples, "wcs_stream_ingest_frames_total", **labels) == 1
    stream.end()
    samples, text = scrape(registry)
    assert "lobby" not in text  # an ended stream's own series go with it


def test_pulls_by_status_and_reconnects_of_ended_pulls() -> None:
    _, registry, pulls = collector_env()
    pulls.pulls = [Pull("PLAYING", 2), Pull("RECONNECTING", 5)]
    pulls.ended_reconnects = 4
    samples, _ = scrape(registry)
    assert value(samples, "wcs_pulls", status="PLAYING") == 1
    assert value(samples, "wcs_pulls", status="RECONNECTING") == 1
    assert value(samples, "wcs_pulls", status="FAILED") == 0
    assert value(samples, "wcs_pull_reconnects_total") == 11


def test_connections_by_listener_from_the_factories() -> None:
    limiter = ConnectionLimiter(Clock(), max_connections=16, max_per_ip=1)
    rtmp = limiter.wrap(Factory.forProtocol(Protocol), "rtmp", per_ip=False)
    http = limiter.wrap(Factory.forProtocol(Protocol), "http", per_ip=True)
    hub = StreamHub()
    registry = new_registry(
        ServerCollector(
            hub,
            SnapshotService(hub, sync_pool, Clock()),
            factories=lambda: {"rtmp": rtmp, "http": http},
            refused=lambda: limiter.refused,
        )
    )
    peer = IPv4Address("TCP", "10.0.0.1", 4000)
    first = rtmp.buildProtocol(peer)
    assert first is not None
    first.makeConnection(StringTransport())
    kept = http.buildProtocol(peer)
    assert kept is not None
    kept.makeConnection(StringTransport())
    assert http.buildProtocol(peer) is None  # over max_connections_per_ip
    samples, _ = scrape(registry)
    assert value(samples, "wcs_connections", listener="rtmp") == 1
    assert value(samples, "wcs_connections", listener="http") == 1
    assert value(samples, "wcs_connections_refused_total") == 1
    first.connectionLost(Failure(ConnectionDone()))
    samples, _ = scrape(registry)
    assert value(samples, "wcs_connections", listener="rtmp") == 0
    assert value(samples, "wcs_connections_accepted_total", listener="rtmp") == 1


def test_snapshot_requests_by_endpoint_and_result_and_latency_hot_and_cold() -> None:
    hub = StreamHub()
    clock = Clock()
    registry = CollectorRegistry()
    snapshots = SnapshotService(
        hub, sync_pool, clock, interval_ms=1000, stats=SnapshotMetrics(registry)
    )
    missing = snapshots.take_image("nobody", endpoint="image")
    missing.addErrback(lambda f: None)
    stream = publish_now(hub, "mute", PROVIDER_RTMP)
    stream.push(audio(10))
    no_video: Deferred[bytes] = snapshots.take("mute", endpoint="rest")
    failures: list[Any] = []
    no_video.addErrback(failures.append)
    clock.advance(1.0)  # snapshot_taking_interval_ms passes
    assert failures
    samples, _ = scrape(registry)
    assert value(samples, "wcs_snapshot_requests_total", endpoint="image", result="not_found") == 1
    assert value(samples, "wcs_snapshot_requests_total", endpoint="rest", result="no_video") == 1
    assert value(samples, "wcs_snapshot_request_seconds_count", decoder="cold") == 2
    assert value(samples, "wcs_snapshot_request_seconds_sum", decoder="cold") == 1.0

    sample = h264_sample(bframes=False)
    video = publish_now(hub, "cam", PROVIDER_RTMP)
    for unit in sample.units[:5]:
        video.push(unit)
    first: list[bytes] = []
    snapshots.take("cam", endpoint="websdk").addCallback(first.append)
    second: list[bytes] = []
    snapshots.take("cam", endpoint="websdk").addCallback(second.append)  # decoded ahead now
    assert first and second
    samples, _ = scrape(registry)
    assert value(samples, "wcs_snapshot_requests_total", endpoint="websdk", result="ok") == 2
    assert value(samples, "wcs_snapshot_request_seconds_count", decoder="hot") == 1
    assert value(samples, "wcs_decode_seconds_count") >= 2


def test_decoder_and_auto_snapshot_totals_never_go_backwards(tmp_path: Path) -> None:
    env = Env(tmp_path / "snaps", rate=15, retention=0)
    registry = new_registry(ServerCollector(env.hub, env.snapshots, auto=lambda: env.auto))
    sample = h264_sample(bframes=False)
    stream = env.publish("auto", sample)
    samples, _ = scrape(registry)
    decoded = value(samples, "wcs_decoder_frames_decoded_total")
    written = value(samples, "wcs_auto_snapshots_written_total")
    assert decoded > 0 and written > 0
    assert value(samples, "wcs_auto_snapshot_streams") == 1
    stream.end()
    samples, _ = scrape(registry)
    assert value(samples, "wcs_auto_snapshot_streams") == 0
    assert value(samples, "wcs_decoder_frames_decoded_total") >= decoded
    assert value(samples, "wcs_auto_snapshots_written_total") >= written
    assert value(samples, "wcs_auto_snapshots_written_total") == len(
        list((tmp_path / "snaps" / "auto").glob("*.png"))
    )
    assert not env.snapshots._ending and not env.auto.ending  # nothing held after the end


DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


class FakeCluster:
    """What the collector reads of a RedisStreamDirectory and a Forwarder."""

    def __init__(self, outage: str | None = None) -> None:
        self.outage = outage
        self.claims = {"a": "n1/m1", "b": "n1/m2"}
        self.refresh_calls = 7
        self.forwarded = 5
        self.failed = 1

    def degraded(self) -> str | None:
        return self.outage


def test_cluster_series_only_in_a_cluster() -> None:
    hub = StreamHub()
    snapshots = SnapshotService(hub, sync_pool, Clock())
    samples, _ = scrape(new_registry(ServerCollector(hub, snapshots)))
    assert not [name for name, _ in samples if name.startswith("wcs_cluster")]
    for outage, up in ((None, 1.0), ("cluster directory unreachable: refused", 0.0)):
        fake = FakeCluster(outage)

        def read(fake: FakeCluster = fake) -> FakeCluster:
            return fake

        collector = ServerCollector(hub, snapshots, cluster=read, forwarder=read)
        samples, _ = scrape(new_registry(collector))
        assert value(samples, "wcs_cluster_directory_up") == up
        assert value(samples, "wcs_cluster_claims") == 2
        assert value(samples, "wcs_cluster_refresh_round_trips_total") == 7
        assert value(samples, "wcs_cluster_forwarded_requests_total") == 5
        assert value(samples, "wcs_cluster_forward_failures_total") == 1


def test_every_metric_is_in_the_operations_table() -> None:
    hub = StreamHub()
    registry = new_registry()
    snapshots = SnapshotService(hub, sync_pool, Clock(), stats=SnapshotMetrics(registry))
    cluster = FakeCluster()
    registry.register(
        ServerCollector(
            hub,
            snapshots,
            per_stream=True,
            cluster=lambda: cluster,
            forwarder=lambda: cluster,
        )
    )
    publish_now(hub, "x", PROVIDER_RTMP)
    snapshots.take("nobody").addErrback(lambda f: None)
    text = generate_latest(registry).decode("utf-8")
    exposed = {f.name for f in text_string_to_metric_families(text) if f.name.startswith("wcs_")}
    row = re.compile(r"^\| `(wcs_[a-z_]+)` \| (?:counter|gauge|histogram) \|", re.M)
    rows = row.findall(DOCS.read_text())
    documented = {name.removesuffix("_total") for name in rows}
    assert exposed == documented


def site_with_metrics(settings: Settings) -> tuple[server.Site, Clock]:
    clock = Clock()
    root = Resource()
    root.putChild(b"metrics", MetricsResource(new_registry(), settings, LoginThrottle(clock)))
    site = server.Site(root)
    site.reactor = clock
    return site, clock


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = Settings(disable_rest_auth=False, rest_auth_user="ops", rest_auth_password="pw")


def test_metrics_need_the_rest_credentials_when_rest_auth_is_on() -> None:
    site, clock = site_with_metrics(AUTH)
    conn = Connection(site)
    conn.send(raw_request("GET", "/metrics"))
    response = conn.response()
    assert response is not None and response.status == 401
    assert response.header("WWW-Authenticate") == 'Basic realm="wcs"'

    conn = Connection(site)
    conn.send(raw_request("GET", "/metrics", headers=basic("ops", "nope")))
    assert conn.response() is None  # a wrong guess is answered late
    clock.advance(1.0)
    response = conn.response()
    assert response is not None and response.status == 401 and b"process_" not in response.body

    conn = Connection(site)
    conn.send(raw_request("GET", "/metrics", headers=basic("ops", "pw")))
    response = conn.response()
    assert response is not None and response.status == 200
    families = {f.name for f in text_string_to_metric_families(response.body.decode())}
    assert "process_cpu_seconds" in families


@pytest.mark.parametrize(
    "settings",
    [Settings(), dataclasses.replace(AUTH, metrics_auth=False)],
    ids=["rest-auth-off", "metrics_auth=false"],
)
def test_metrics_open_without_credentials(settings: Settings) -> None:
    site, _ = site_with_metrics(settings)
    conn = Connection(site)
    conn.send(raw_request("GET", "/metrics"))
    response = conn.response()
    assert response is not None and response.status == 200
    assert (response.header("Content-Type") or "").startswith("text/plain; version=")
    conn = Connection(site)
    conn.send(raw_request("GET", "/metrics/more"))
    response = conn.response()
    assert response is not None and response.status == 404


def test_metrics_config_keys() -> None:
    settings, unknown = settings_from_properties({})
    assert settings.metrics_auth is True and settings.metrics_per_stream is False
    settings, unknown = settings_from_properties(
        {"metrics_auth": "false", "metrics_per_stream": "true"}
    )
    assert not unknown
    assert settings.metrics_auth is False and settings.metrics_per_stream is True
    with pytest.raises(ConfigError, match="metrics_per_stream"):
        settings_from_properties({"metrics_per_stream": "sometimes"})
