"""Prometheus metrics of one server: a collector that reads the hub, the snapshot service, the
camera pulls and the listeners at scrape time, and the few counters that have no state to read
(snapshot requests and their latency, decode time). Each WCSService has its own registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web import server
from twisted.web.resource import Resource

from wcs.config import Settings
from wcs.rest.errors import RestError
from wcs.rest.resources import BadLogin, LoginThrottle, check_rest_auth
from wcs.rtsp.pull import FAILED, PENDING, PLAYING, RECONNECTING, PullManager
from wcs.snapshot.auto import AutoSnapshotter
from wcs.snapshot.service import SnapshotService
from wcs.streams import PROVIDER_RTMP, PROVIDER_RTSP, PROVIDER_WEBRTC, Stream, StreamHub

PROVIDERS = (PROVIDER_RTMP, PROVIDER_RTSP, PROVIDER_WEBRTC)
PULL_STATES = (PENDING, PLAYING, RECONNECTING, FAILED)
# A snapshot request takes from a few ms (hot, PNG cached) to snapshot_taking_interval_ms.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One decode job: a picture or two when hot, a GOP's worth when cold.
DECODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class SnapshotMetrics:
    """The snapshot service's SnapshotStats: requests by endpoint and result, their latency
    split hot/cold, and the time of each decode job (observed from pool threads)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "wcs_snapshot_requests",
            "Snapshot requests answered, by endpoint (rest, image, frame, websdk) and result "
            "(ok, not_found, timeout, no_video, awaiting_keyframe, unsupported_codec, "
            "decode_failed, bad_param, error).",
            ["endpoint", "result"],
            registry=registry,
        )
        self.latency = Histogram(
            "wcs_snapshot_request_seconds",
            "Time to answer a snapshot request; decoder=hot: the stream was being decoded "
            "ahead when asked, cold: it was not.",
            ["decoder"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.decode = Histogram(
            "wcs_decode_seconds",
            "Time of one decode job in the pool (a catch-up, a newest picture or a drain).",
            buckets=DECODE_BUCKETS,
            registry=registry,
        )

    def answered(self, endpoint: str, result: str, seconds: float, hot: bool) -> None:
        self.requests.labels(endpoint, result).inc()
        self.latency.labels("hot" if hot else "cold").observe(seconds)

    def decoded(self, seconds: float) -> None:
        self.decode.observe(seconds)


class _ProviderTotals:
    """What ended streams of one provider received (kept so totals never go backwards)."""

    __slots__ = ("audio_units", "bytes_in", "published", "rejected_units", "video_units")

    def __init__(self) -> None:
        self.published = 0
        self.bytes_in = 0
        self.video_units = 0
        self.audio_units = 0
        self.rejected_units = 0


class ServerCollector(Collector):
    """Reads the server's state at each scrape. Made before anything is published: it counts
    ended streams from the hub's publish observer on, so that totals include them."""

    def __init__(
        self,
        hub: StreamHub,
        snapshots: SnapshotService,
        *,
        pulls: PullManager | None = None,
        auto: Callable[[], AutoSnapshotter | None] = lambda: None,
        factories: Callable[[], Mapping[str, Any]] = dict,
        refused: Callable[[], int] = lambda: 0,
        per_stream: bool = False,
        cluster: Callable[[], Any] = lambda: None,
        forwarder: Callable[[], Any] = lambda: None,
    ) -> None:
        self.hub = hub
        self.snapshots = snapshots
        self.pulls = pulls
        self.auto = auto
        self.factories = factories
        self.refused = refused
        self.per_stream = per_stream
        # The Redis directory and the forwarder, when this node is part of a cluster.
        self.cluster = cluster
        self.forwarder = forwarder
        self._ended: dict[str, _ProviderTotals] = {p: _ProviderTotals() for p in PROVIDERS}
        self._ended_readers = [0, 0, 0]  # delivered, discarded, errors
        hub.add_observer(self._published)

    def _totals(self, provider: str) -> _ProviderTotals:
        totals = self._ended.get(provider)
        if totals is None:
            totals = self._ended[provider] = _ProviderTotals()
        return totals

    def _published(self, stream: Stream) -> None:
        self._totals(stream.provider).published += 1
        stream.on_end(self._retire)

    def _retire(self, stream: Stream) -> None:
        # Runs after the stream's readers were closed: reader_counts() is final.
        totals = self._totals(stream.provider)
        totals.bytes_in += stream.bytes_in
        totals.video_units += stream.video_units
        totals.audio_units += stream.audio_units
        totals.rejected_units += stream.rejected_units
        for i, count in enumerate(stream.reader_counts()):
            self._ended_readers[i] += count

    def collect(self) -> Iterable[Metric]:
        yield from self._streams()
        yield from self._snapshots()
        yield from self._auto()
        yield from self._pulls()
        yield from self._connections()
        yield from self._cluster()
        if self.per_stream:
            yield from self._per_stream()

    def _streams(self) -> Iterable[Metric]:
        streams = self.hub.all()
        live = GaugeMetricFamily(
            "wcs_streams_live",
            "Streams published now, by provider (Flash: RTMP, RTSP, WebRTC) and video codec "
            "(none: no video yet or audio only).",
            labels=["provider", "video_codec"],
        )
        by_kind: dict[tuple[str, str], int] = {}
        totals = {p: _copy(t) for p, t in self._ended.items()}
        delivered, discarded, errors = self._ended_readers
        readers = 0
        for stream in streams:
            codec = stream.video.codec if stream.video is not None else "none"
            key = (stream.provider, codec)
            by_kind[key] = by_kind.get(key, 0) + 1
            t = totals.get(stream.provider)
            if t is None:
                t = totals[stream.provider] = _ProviderTotals()
            t.bytes_in += stream.bytes_in
            t.video_units += stream.video_units
            t.audio_units += stream.audio_units
            t.rejected_units += stream.rejected_units
            d, x, e = stream.reader_counts()
            delivered, discarded, errors = delivered + d, discarded + x, errors + e
            readers += len(stream.readers)
        for provider in PROVIDERS:
            if not any(p == provider for p, _ in by_kind):
                live.add_metric([provider, "none"], 0)
        for (provider, codec), count in sorted(by_kind.items()):
            live.add_metric([provider, codec], count)
        yield live

        published = CounterMetricFamily(
            "wcs_streams_published",
            "Publishes accepted since start, by provider.",
            labels=["provider"],
        )
        ingest = CounterMetricFamily(
            "wcs_ingest_bytes",
            "Media payload bytes received from publishers, by provider.",
            labels=["provider"],
        )
        frames = CounterMetricFamily(
            "wcs_ingest_frames",
            "Media units (video access units, audio frames) received, by provider and kind.",
            labels=["provider", "kind"],
        )
        rejected = CounterMetricFamily(
            "wcs_ingest_rejected_units",
            "Malformed units and sequence headers dropped by the front-ends, by provider.",
            labels=["provider"],
        )
        for provider, t in sorted(totals.items()):
            published.add_metric([provider], t.published)
            ingest.add_metric([provider], t.bytes_in)
            frames.add_metric([provider, "video"], t.video_units)
            frames.add_metric([provider, "audio"], t.audio_units)
            rejected.add_metric([provider], t.rejected_units)
        yield from (published, ingest, frames, rejected)

        yield GaugeMetricFamily(
            "wcs_readers", "Readers attached to live streams now (players, decoders).", readers
        )
        yield CounterMetricFamily(
            "wcs_reader_units_delivered", "Media units delivered to readers.", delivered
        )
        yield CounterMetricFamily(
            "wcs_reader_units_discarded",
            "Media units readers skipped because they fell behind (skip to the next keyframe).",
            discarded,
        )
        yield CounterMetricFamily(
            "wcs_reader_errors", "Readers detached because their callback raised.", errors
        )

    def _snapshots(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "wcs_snapshot_hot_streams",
            "Streams decoded ahead of requests now (asked for lately, within the hot budget).",
            self.snapshots.hot_streams,
        )
        totals = self.snapshots.decoder_totals()
        for name, value, text in (
            ("frames_decoded", totals.frames_decoded, "Pictures decoded."),
            (
                "skipped_units",
                totals.skipped_units,
                "Video units not decoded because no wanted picture needed them.",
            ),
            (
                "dropped_units",
                totals.dropped_units,
                "Video units never decoded because the decoder fell behind.",
            ),
            ("dropped_gops", totals.dropped_gops, "Whole GOPs among the dropped units."),
            ("errors", totals.errors, "Packets the decoder refused."),
        ):
            yield CounterMetricFamily(f"wcs_decoder_{name}", text, value)

    def _auto(self) -> Iterable[Metric]:
        auto = self.auto()
        written, errors = auto.totals() if auto is not None else (0, 0)
        yield GaugeMetricFamily(
            "wcs_auto_snapshot_streams",
            "Live streams being auto-snapshotted now.",
            len(auto.streams) if auto is not None else 0,
        )
        yield CounterMetricFamily(
            "wcs_auto_snapshots_written", "Auto snapshot files written.", written
        )
        yield CounterMetricFamily(
            "wcs_auto_snapshot_errors", "Auto snapshots not written (disk errors).", errors
        )

    def _pulls(self) -> Iterable[Metric]:
        pulls = self.pulls.find_all() if self.pulls is not None else []
        states = GaugeMetricFamily(
            "wcs_pulls", "Camera pulls (RTSP) now, by status.", labels=["status"]
        )
        for state in PULL_STATES:
            states.add_metric([state], sum(1 for p in pulls if p.status == state))
        yield states
        ended = self.pulls.ended_reconnects if self.pulls is not None else 0
        yield CounterMetricFamily(
            "wcs_pull_reconnects",
            "Camera pull reconnect attempts after a drop or a failure.",
            ended + sum(p.reconnects for p in pulls),
        )

    def _connections(self) -> Iterable[Metric]:
        open_now = GaugeMetricFamily(
            "wcs_connections", "Connections open now, by listener.", labels=["listener"]
        )
        accepted = CounterMetricFamily(
            "wcs_connections_accepted", "Connections accepted, by listener.", labels=["listener"]
        )
        for label, factory in sorted(self.factories().items()):
            open_now.add_metric([label], getattr(factory, "open", 0))
            accepted.add_metric([label], getattr(factory, "accepted", 0))
        yield open_now
        yield accepted
        yield CounterMetricFamily(
            "wcs_connections_refused",
            "Connections refused by max_connections or max_connections_per_ip.",
            self.refused(),
        )

    def _cluster(self) -> Iterable[Metric]:
        directory, forwarder = self.cluster(), self.forwarder()
        if directory is None:
            return  # one process: no cluster series at all
        yield GaugeMetricFamily(
            "wcs_cluster_directory_up",
            "1 while the Redis stream directory answers, 0 during an outage.",
            0 if directory.degraded() else 1,
        )
        yield GaugeMetricFamily(
            "wcs_cluster_claims", "Stream names this node holds in the directory.",
            len(directory.claims),
        )  # fmt: skip
        yield CounterMetricFamily(
            "wcs_cluster_refresh_round_trips",
            "Round trips to Redis that renewed this node's claims and record.",
            directory.refresh_calls,
        )
        if forwarder is not None:
            yield CounterMetricFamily(
                "wcs_cluster_forwarded_requests",
                "Requests this node sent to the node that owns a stream.",
                forwarder.forwarded,
            )
            yield CounterMetricFamily(
                "wcs_cluster_forward_failures",
                "Forwarded requests the owner node did not answer (answered 503).",
                forwarder.failed,
            )

    def _per_stream(self) -> Iterable[Metric]:
        ingest = CounterMetricFamily(
            "wcs_stream_ingest_bytes",
            "Media payload bytes received, per live stream (metrics_per_stream=true).",
            labels=["stream", "provider"],
        )
        frames = CounterMetricFamily(
            "wcs_stream_ingest_frames",
            "Media units received, per live stream and kind (metrics_per_stream=true).",
            labels=["stream", "provider", "kind"],
        )
        readers = GaugeMetricFamily(
            "wcs_stream_readers",
            "Readers attached now, per live stream (metrics_per_stream=true).",
            labels=["stream", "provider"],
        )
        discarded = CounterMetricFamily(
            "wcs_stream_reader_units_discarded",
            "Media units its readers skipped, per live stream (metrics_per_stream=true).",
            labels=["stream", "provider"],
        )
        decoded = CounterMetricFamily(
            "wcs_stream_frames_decoded",
            "Pictures decoded, per live stream (metrics_per_stream=true).",
            labels=["stream", "provider"],
        )
        decoders = self.snapshots.decoders()
        for stream in self.hub.all():
            labels = [stream.name, stream.provider]
            ingest.add_metric(labels, stream.bytes_in)
            frames.add_metric([*labels, "video"], stream.video_units)
            frames.add_metric([*labels, "audio"], stream.audio_units)
            readers.add_metric(labels, len(stream.readers))
            discarded.add_metric(labels, stream.reader_counts()[1])
            decoder = decoders.get(stream)
            decoded.add_metric(labels, decoder.frames_decoded if decoder is not None else 0)
        yield from (ingest, frames, readers, discarded, decoded)


def _copy(totals: _ProviderTotals) -> _ProviderTotals:
    copy = _ProviderTotals()
    for name in _ProviderTotals.__slots__:
        setattr(copy, name, getattr(totals, name))
    return copy


def new_registry(collector: ServerCollector | None = None) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one: a process may hold several
    services, tests do), with the process's CPU, memory and descriptors and the Python version."""
    # No `_created` series beside each counter and histogram: noise in the text format (the
    # setting is prometheus_client's, process-wide).
    disable_created_metrics()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if collector is not None:
        registry.register(collector)
    return registry


class MetricsResource(Resource):
    """GET /metrics: the Prometheus text exposition of `registry`, under the REST API's Basic
    auth unless metrics_auth=false."""

    isLeaf = True

    def __init__(
        self, registry: CollectorRegistry, settings: Settings, logins: LoginThrottle
    ) -> None:
        super().__init__()
        self.registry = registry
        self.settings = settings
        self.logins = logins

    def render_GET(self, request: server.Request) -> bytes | int:
        if request.postpath and any(request.postpath):
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Not found\n"
        if self.settings.metrics_auth:
            try:
                check_rest_auth(self.settings, request)
            except BadLogin:
                return self.logins.answer_later(request, lambda: _refuse(request))
            except RestError:
                return _unauthorized(request)
        body = generate_latest(self.registry)
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    def render_HEAD(self, request: server.Request) -> bytes | int:
        return self.render_GET(request)


def _unauthorized(request: server.Request) -> bytes:
    request.setResponseCode(401)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"Unauthorized\n"


def _refuse(request: server.Request) -> None:
    if request.finished or request.channel is None:
        return
    body = _unauthorized(request)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()
